-- comparator: hand-written PL/pgSQL consume with idempotency keys
-- (keys carry the client id: see consume_idem)
\set t random(1, :ntenants)
\set k random(1, :idemspace)
SELECT bench.pl_consume(:t, 'bench-model', 1, 'req-' || :client_id::text || '-' || :k::text);
