-- authenticate + policy_check in one statement; the answer is asserted
-- (a wrong tenant or a denial divides by zero and aborts the client)
\set i random(1, :ntenants)
SELECT 1 / (a.tenant_id = k.tenant_id AND quota_ext.policy_check(a.tenant_id, 'bench-model'))::int
  FROM bench.keys k, quota_ext.authenticate(k.api_key) a
 WHERE k.i = :i;
