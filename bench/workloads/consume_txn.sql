-- quota_ext.quota_consume inside the application's own transaction
\set t random(1, :ntenants)
BEGIN;
SELECT quota_ext.quota_consume(:t, 'bench-model', 1);
INSERT INTO bench.app_events (tenant_id, note) VALUES (:t, 'order');
COMMIT;
