-- comparator: hand-written PL/pgSQL consume inside the application's transaction
\set t random(1, :ntenants)
BEGIN;
SELECT bench.pl_consume(:t, 'bench-model', 1);
INSERT INTO bench.app_events (tenant_id, note) VALUES (:t, 'order');
COMMIT;
