-- authenticate + policy_check (as auth_policy) on the keys of the first 100
-- tenants: a pooled backend with its keys and policies cached
\set i random(1, 100)
SELECT 1 / (a.tenant_id = k.tenant_id AND quota_ext.policy_check(a.tenant_id, 'bench-model'))::int
  FROM bench.keys k, quota_ext.authenticate(k.api_key) a
 WHERE k.i = :i;
