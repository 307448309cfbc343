-- quota_ext.quota_consume with an idempotency key per request; the key
-- space is small enough that some requests are retries (answered, not
-- charged).  Keys carry the client id: a retry comes from the client that
-- sent the request (as in pl_idem, whose check-then-insert cannot take two
-- concurrent requests with one key)
\set t random(1, :ntenants)
\set k random(1, :idemspace)
SELECT quota_ext.quota_consume(:t, 'bench-model', 1, 'req-' || :client_id::text || '-' || :k::text);
