-- Rate limits through SQL: rate_limit_check (redis-cell's CL.THROTTLE),
-- tenant_rate_limit_check, configured rules and rate_limit_apply.  Periods
-- are long so that the answers do not depend on how fast this runs.
SET client_min_messages = warning;

CREATE FUNCTION pg_temp.err(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE q;
	RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
	RETURN SQLSTATE || ': ' || SQLERRM;
END
$$;

-- The README example of redis-cell, then the same key again.
SELECT * FROM quota_ext.rate_limit_check('user123', 15, 30, 60);
SELECT * FROM quota_ext.rate_limit_check('user123', 15, 30, 60);

-- 2 + 1 per hour: the burst, then limited with retry in one interval.
SELECT * FROM quota_ext.rate_limit_check('rl:burst', 2, 1, 3600);
SELECT * FROM quota_ext.rate_limit_check('rl:burst', 2, 1, 3600);
SELECT * FROM quota_ext.rate_limit_check('rl:burst', 2, 1, 3600);
SELECT * FROM quota_ext.rate_limit_check('rl:burst', 2, 1, 3600);
-- quantity 0 peeks: the same answer again, nothing consumed
SELECT * FROM quota_ext.rate_limit_check('rl:burst', 2, 1, 3600, 0);

-- A peek at a new key shows the whole limit and creates nothing.
SELECT in_use AS before FROM quota_ext.rate_limit_status() \gset
SELECT * FROM quota_ext.rate_limit_check('rl:peek', 4, 1, 3600, 0);
SELECT in_use - :before AS new_buckets FROM quota_ext.rate_limit_status();
-- a limited check creates nothing either
SELECT * FROM quota_ext.rate_limit_check('rl:peek', 4, 1, 3600, 6);
SELECT in_use - :before AS new_buckets FROM quota_ext.rate_limit_status();

-- quantity > 1; more than the limit is never possible (retry_after -1)
SELECT * FROM quota_ext.rate_limit_check('rl:qty', 9, 10, 3600, 4);
SELECT * FROM quota_ext.rate_limit_check('rl:qty', 9, 10, 3600, 11);
SELECT * FROM quota_ext.rate_limit_check('rl:qty', 9, 10, 3600, 7);
SELECT * FROM quota_ext.rate_limit_check('rl:qty', 9, 10, 3600, 6);

-- max_burst 0: one at a time
SELECT * FROM quota_ext.rate_limit_check('rl:noburst', 0, 1, 3600);
SELECT * FROM quota_ext.rate_limit_check('rl:noburst', 0, 1, 3600);

-- Parameters may change between calls (as in redis-cell): the TAT stays,
-- a larger burst admits more at once.
SELECT * FROM quota_ext.rate_limit_check('rl:noburst', 5, 1, 3600);

-- Not undone by a rollback (anti-abuse).
BEGIN;
SELECT limited FROM quota_ext.rate_limit_check('rl:rollback', 0, 1, 3600);
ROLLBACK;
SELECT limited, retry_after FROM quota_ext.rate_limit_check('rl:rollback', 0, 1, 3600);

-- Keys are bytes: 1 to 1024 of them, any text.
SELECT limited FROM quota_ext.rate_limit_check(repeat('k', 1024), 0, 1, 3600);
SELECT limited FROM quota_ext.rate_limit_check('ключ 🔑', 0, 1, 3600);

-- Bad input: a clear error and nothing consumed.
SELECT pg_temp.err($$SELECT quota_ext.rate_limit_check(NULL, 1, 1, 1)$$);
SELECT pg_temp.err($$SELECT quota_ext.rate_limit_check('rl:bad', NULL, 1, 1)$$);
SELECT pg_temp.err($$SELECT quota_ext.rate_limit_check('rl:bad', 1, NULL, 1)$$);
SELECT pg_temp.err($$SELECT quota_ext.rate_limit_check('rl:bad', 1, 1, NULL)$$);
SELECT pg_temp.err($$SELECT quota_ext.rate_limit_check('rl:bad', 1, 1, 1, NULL)$$);
SELECT pg_temp.err($$SELECT quota_ext.rate_limit_check('rl:bad', -1, 1, 1)$$);
SELECT pg_temp.err($$SELECT quota_ext.rate_limit_check('rl:bad', 1, 0, 1)$$);
SELECT pg_temp.err($$SELECT quota_ext.rate_limit_check('rl:bad', 1, -3, 1)$$);
SELECT pg_temp.err($$SELECT quota_ext.rate_limit_check('rl:bad', 1, 1, 0)$$);
SELECT pg_temp.err($$SELECT quota_ext.rate_limit_check('rl:bad', 1, 1, -60)$$);
SELECT pg_temp.err($$SELECT quota_ext.rate_limit_check('rl:bad', 1, 1, 1, -1)$$);
SELECT pg_temp.err($$SELECT quota_ext.rate_limit_check('', 1, 1, 1)$$);
SELECT pg_temp.err($$SELECT quota_ext.rate_limit_check(repeat('k', 1025), 1, 1, 1)$$);
SELECT pg_temp.err($$SELECT quota_ext.rate_limit_check('rl:bad', 2147483647, 1, 2147483647)$$);
SELECT pg_temp.err($$SELECT quota_ext.rate_limit_check('rl:bad', 0, 1, 86401)$$);
SELECT pg_temp.err($$SELECT quota_ext.rate_limit_check('rl:bad', 1440, 1440, 86400)$$);
SELECT pg_temp.err($$SELECT quota_ext.rate_limit_check('rl:bad', 0, 1, 86400, 2147483647)$$);
SELECT pg_temp.err($$SELECT quota_ext.rate_limit_check('rl:bad', 0, 2000000000, 1)$$);
SELECT * FROM quota_ext.rate_limit_check('rl:bad', 1, 1, 3600, 0);

-- ---------------------------------------------------------------------------
-- Tenant-scoped keys: the same key in two tenants is two buckets, and
-- neither is the global one.
-- ---------------------------------------------------------------------------
SELECT quota_ext.tenant_create('rl-acme', 'free') AS acme \gset
SELECT quota_ext.tenant_create('rl-globex', 'pro') AS globex \gset

SELECT pg_temp.err($$SELECT quota_ext.tenant_rate_limit_check('shared', 0, 1, 3600)$$);

BEGIN;
SELECT quota_ext.set_tenant(:acme);
SELECT limited, remaining FROM quota_ext.tenant_rate_limit_check('shared', 0, 1, 3600);
SELECT limited, remaining FROM quota_ext.tenant_rate_limit_check('shared', 0, 1, 3600);
COMMIT;
BEGIN;
SELECT quota_ext.set_tenant(:globex);
SELECT limited, remaining FROM quota_ext.tenant_rate_limit_check('shared', 0, 1, 3600);
COMMIT;
SELECT limited, remaining FROM quota_ext.rate_limit_check('shared', 0, 1, 3600);

-- ---------------------------------------------------------------------------
-- Configured limits: tier default, tenant-wide, per model, per key.
-- ---------------------------------------------------------------------------
SELECT quota_ext.model_register('rl-model') AS model_id \gset
SELECT user_id AS acme_user FROM quota_ext.user_create(:acme, 'rl@acme.test', 'member') \gset
SELECT key_id AS acme_key FROM quota_ext.api_keys WHERE tenant_id = :acme AND user_id = :acme_user \gset

-- free tier: 60 per minute, burst 10 -> rule 0, limit 11
SELECT * FROM quota_ext.rate_limit_apply(:acme);
SELECT * FROM quota_ext.rate_limit_apply(:acme, quantity => 0);
-- enterprise tier: unlimited, no rule at all
SELECT quota_ext.tenant_create('rl-initech', 'enterprise') AS initech \gset
SELECT * FROM quota_ext.rate_limit_apply(:initech);

-- A tenant-wide rule replaces the tier default; per-model and per-key
-- rules add to it.  All or nothing: the limiting rule is reported and no
-- rule is charged.  When allowed, the tightest rule is reported.
SELECT quota_ext.rate_limit_set(:acme, 3, 3600, 1) AS wide \gset
SELECT quota_ext.rate_limit_set(:acme, 1, 3600, 0, 'rl-model') AS per_model \gset
SELECT quota_ext.rate_limit_set(:acme, 1, 3600, 0, key_id => :acme_key) AS per_key \gset
SELECT tenant_id = :acme AS own, rule_id = :wide AS wide, model_id = :model_id AS the_model,
       key_id = :acme_key AS the_key, max_burst, count, period_seconds
  FROM quota_ext.rate_limits WHERE tenant_id = :acme ORDER BY rule_id;
-- updating a scope keeps its rule_id
SELECT quota_ext.rate_limit_set(:acme, 3, 3600, 2) = :wide AS same_rule;

SELECT limited, rule_id = :wide AS wide, "limit", remaining, retry_after, reset_after
  FROM quota_ext.rate_limit_apply(:acme);
SELECT limited, rule_id = :per_model AS per_model, "limit", remaining, retry_after, reset_after
  FROM quota_ext.rate_limit_apply(:acme, 'rl-model');
-- the model rule is spent: limited by it, and the tenant-wide rule is not charged
SELECT limited, rule_id = :per_model AS per_model, "limit", remaining, retry_after
  FROM quota_ext.rate_limit_apply(:acme, 'rl-model');
SELECT limited, rule_id = :wide AS wide, remaining
  FROM quota_ext.rate_limit_apply(:acme, quantity => 0);

-- Deleting the tenant-wide rule brings the tier default back.
SELECT quota_ext.rate_limit_delete(:acme, :wide);
SELECT limited, rule_id, "limit" FROM quota_ext.rate_limit_apply(:acme, quantity => 0);
-- the key's rule applies to calls with that key, beside the tier default
SELECT limited, rule_id = :per_key AS per_key, "limit", remaining, retry_after
  FROM quota_ext.rate_limit_apply(:acme, key_id => :acme_key);
SELECT limited, rule_id = :per_key AS per_key, "limit", remaining, retry_after
  FROM quota_ext.rate_limit_apply(:acme, key_id => :acme_key);

-- Every change is audited.
SELECT action, object_type, before IS NOT NULL AS has_before, after IS NOT NULL AS has_after
  FROM quota_ext.audit_log WHERE tenant_id = :acme AND object_type = 'rate_limit'
 ORDER BY audit_id;

-- Errors of the admin functions and of rate_limit_apply.
SELECT pg_temp.err($$SELECT quota_ext.rate_limit_set(NULL, 1, 1)$$);
SELECT pg_temp.err($$SELECT quota_ext.rate_limit_set($$ || :acme || $$, NULL, 1)$$);
SELECT pg_temp.err($$SELECT quota_ext.rate_limit_set($$ || :acme || $$, 0, 1)$$);
SELECT pg_temp.err($$SELECT quota_ext.rate_limit_set($$ || :acme || $$, 1, 0)$$);
SELECT pg_temp.err($$SELECT quota_ext.rate_limit_set($$ || :acme || $$, 1, 1, -1)$$);
SELECT pg_temp.err($$SELECT quota_ext.rate_limit_set($$ || :acme || $$, 1, 2147483647, 2147483647)$$);
SELECT pg_temp.err($$SELECT quota_ext.rate_limit_set($$ || :acme || $$, 1, 1, 0, 'no-such-model')$$);
SELECT pg_temp.err($$SELECT quota_ext.rate_limit_set($$ || :acme || $$, 1, 1, 0, NULL, 999999999)$$);
SELECT pg_temp.err($$SELECT quota_ext.rate_limit_set(999999999, 1, 1)$$);
SELECT pg_temp.err($$SELECT quota_ext.rate_limit_delete($$ || :acme || $$, 999999999)$$);
SELECT pg_temp.err($$SELECT quota_ext.rate_limit_apply(NULL)$$);
SELECT pg_temp.err($$SELECT quota_ext.rate_limit_apply(999999999)$$);
SELECT pg_temp.err($$SELECT quota_ext.rate_limit_apply($$ || :acme || $$, 'no-such-model')$$);
SELECT pg_temp.err($$SELECT quota_ext.rate_limit_apply($$ || :acme || $$, quantity => -1)$$);
-- a tenant context reaches only its own tenant ("does not exist")
BEGIN;
SELECT quota_ext.set_tenant(:globex);
SELECT left(pg_temp.err($$SELECT quota_ext.rate_limit_apply($$ || :acme || $$)$$), 5) AS sqlstate;
SELECT left(pg_temp.err($$SELECT quota_ext.rate_limit_set($$ || :acme || $$, 1, 1)$$), 5) AS sqlstate;
ROLLBACK;

-- Resetting buckets (quota_ext_admin; not undone by a rollback): one key
-- of rate_limit_check, one key of a tenant, then the rest of the tenant's
-- (its rules' buckets and its tier default's).  A reset bucket is full.
SELECT quota_ext.rate_limit_reset(key => 'rl:noburst') AS one_key;
SELECT quota_ext.rate_limit_reset(key => 'rl:noburst') AS again;
SELECT limited, remaining FROM quota_ext.rate_limit_check('rl:noburst', 0, 1, 3600);
SELECT quota_ext.rate_limit_reset(:acme, 'shared') AS acme_key;
SELECT quota_ext.rate_limit_reset(:acme) AS acme_rules;
SELECT limited, rule_id = :per_key AS per_key, remaining
  FROM quota_ext.rate_limit_apply(:acme, key_id => :acme_key);
SELECT tenant_id = :globex AS globex, buckets FROM quota_ext.rate_limit_namespaces()
 WHERE tenant_id IN (:acme, :globex);
SELECT tenant_id = :acme AS acme, action, object_type, after
  FROM quota_ext.audit_log
 WHERE tenant_id IN (0, :acme) AND action = 'rate_limit_reset' ORDER BY audit_id;
SELECT pg_temp.err($$SELECT quota_ext.rate_limit_reset(999999999)$$);
SELECT pg_temp.err($$SELECT quota_ext.rate_limit_reset(key => '')$$);
BEGIN;
SELECT quota_ext.set_tenant(:globex);
SELECT left(pg_temp.err($$SELECT quota_ext.rate_limit_reset()$$), 5) AS sqlstate;
SELECT left(pg_temp.err($$SELECT quota_ext.rate_limit_reset($$ || :acme || $$)$$), 5) AS sqlstate;
ROLLBACK;
-- a rule over one day is refused before it is stored
SELECT pg_temp.err($$SELECT quota_ext.rate_limit_set($$ || :acme || $$, 1, 86401)$$);
SELECT pg_temp.err($$SELECT quota_ext.rate_limit_set($$ || :acme || $$, 1, 60, 1440)$$);

-- The app role: checks yes, management no.
SET ROLE quota_ext_app;
SELECT limited FROM quota_ext.rate_limit_check('rl:app', 0, 1, 3600);
SELECT pg_temp.err($$SELECT quota_ext.rate_limit_set($$ || :acme || $$, 1, 1)$$);
SELECT pg_temp.err($$SELECT quota_ext.rate_limit_status()$$);
SELECT pg_temp.err($$SELECT quota_ext.rate_limit_namespaces()$$);
SELECT pg_temp.err($$SELECT quota_ext.rate_limit_reset()$$);
SELECT pg_temp.err($$SELECT quota_ext.rate_limit_apply($$ || :acme || $$)$$);
SELECT count(*) AS visible_rules FROM quota_ext.rate_limits;
RESET ROLE;

SELECT slots, in_use > 0 AS some_in_use, partitions, tenant_entries = slots / 4 AS quarter
  FROM quota_ext.rate_limit_status();
