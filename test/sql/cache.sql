-- The per-backend configuration cache (src/cache.c) as one session sees it:
-- answers from the cache equal answers from the tables, the role is checked
-- on every call, a transaction sees its own changes, time-dependent facts
-- (a key's expiry, the next price version) take effect on time, a change
-- cannot be prepared, and quota_ext.config_cache = off reads the tables.
-- Other sessions' changes: test/specs/config_cache.spec.
SET client_min_messages = warning;

CREATE FUNCTION pg_temp.err(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE q;
	RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
	RETURN SQLSTATE || ': ' || SQLERRM;
END
$$;

SELECT quota_ext.tenant_create('cache-tenant', 'enterprise') AS t \gset
SELECT user_id AS u, api_key AS k FROM quota_ext.user_create(:t, 'c@cache.example', 'member') \gset
SELECT quota_ext.model_register('cache-model') > 0 AS registered;
SELECT quota_ext.policy_set(:t, 'cache-model', true, ARRAY['admin']) > 0 AS policy;

-- the same answers twice (the second from the cache), per role
SELECT quota_ext.policy_check(:t, 'cache-model', 'member') AS member,
       quota_ext.policy_check(:t, 'cache-model', 'admin') AS admin,
       quota_ext.policy_check(:t, 'cache-model') AS no_role;
SELECT quota_ext.policy_check(:t, 'cache-model', 'member') AS member,
       quota_ext.policy_check(:t, 'cache-model', 'admin') AS admin,
       quota_ext.policy_check(:t, 'cache-model') AS no_role;
-- authenticate() twice: the key's role is the context's role
SELECT role FROM quota_ext.authenticate(:'k');
SELECT role FROM quota_ext.authenticate(:'k');
-- unknown ids are never cached and keep their errors
SELECT pg_temp.err('SELECT quota_ext.policy_check(987654321, ''cache-model'')');
SELECT pg_temp.err('SELECT quota_ext.policy_check(987654321, ''cache-model'')');
SELECT quota_ext.policy_check(:t, 'no-such-model') AS unknown_model;

-- A transaction sees its own uncommitted change, before and after caching.
BEGIN;
SELECT quota_ext.policy_check(:t, 'cache-model', 'admin') AS before;
SELECT quota_ext.policy_set(:t, 'cache-model', false) > 0 AS changed;
SELECT quota_ext.policy_check(:t, 'cache-model', 'admin') AS own_change;
SELECT allowed, denied_by FROM quota_ext.quota_consume(:t, 'cache-model', 1, role => 'admin');
ROLLBACK;
SELECT quota_ext.policy_check(:t, 'cache-model', 'admin') AS after_rollback;

-- A configuration change cannot be prepared (0A000: the transaction ends
-- rolled back, nothing is prepared).
BEGIN;
SELECT quota_ext.policy_set(:t, 'cache-model', true) > 0 AS changed;
\set VERBOSITY sqlstate
PREPARE TRANSACTION 'cache_change';
\set VERBOSITY default
SELECT count(*) AS prepared FROM pg_prepared_xacts WHERE gid = 'cache_change';

-- A cached key stops working when it expires.
SELECT api_key AS k2 FROM quota_ext.api_key_create(:t, :u, 'short', clock_timestamp() + interval '1 second') \gset
SELECT role FROM quota_ext.authenticate(:'k2');
SELECT pg_sleep(1.2);
SELECT pg_temp.err(format('SELECT quota_ext.authenticate(%L)', :'k2'));

-- A cached price is replaced when the next version takes effect.
SELECT quota_ext.price_set('cache-model', 'USD', unit_price => 1) > 0 AS price_now;
SELECT quota_ext.price_set('cache-model', 'USD', unit_price => 3,
       effective_from => clock_timestamp() + interval '1 second') > 0 AS price_later;
SELECT allowed, cost FROM quota_ext.quota_consume(:t, 'cache-model', 1, role => 'admin');
SELECT allowed, cost FROM quota_ext.quota_consume(:t, 'cache-model', 1, role => 'admin');
SELECT pg_sleep(1.2);
SELECT allowed, cost FROM quota_ext.quota_consume(:t, 'cache-model', 1, role => 'admin');

-- Quota definitions are cached too (the counters are always locked and
-- read): a new quota, a limit cut and a deleted quota apply at once.
SELECT quota_ext.quota_set(:t, 'daily', 3, model => 'cache-model') AS q \gset
SELECT allowed, remaining FROM quota_ext.quota_consume(:t, 'cache-model', 1, role => 'admin');
SELECT allowed, remaining FROM quota_ext.quota_consume(:t, 'cache-model', 1, role => 'admin');
SELECT quota_ext.quota_set(:t, 'daily', 2, model => 'cache-model') = :q AS same_quota;
SELECT allowed, denied_by, remaining FROM quota_ext.quota_consume(:t, 'cache-model', 1, role => 'admin');
SELECT quota_ext.quota_delete(:t, :q);
SELECT allowed, denied_by, remaining FROM quota_ext.quota_consume(:t, 'cache-model', 1, role => 'admin');

-- Off: the same answers from the tables.
SET quota_ext.config_cache = off;
SELECT quota_ext.policy_check(:t, 'cache-model', 'member') AS member,
       quota_ext.policy_check(:t, 'cache-model', 'admin') AS admin;
SELECT role FROM quota_ext.authenticate(:'k');
SELECT allowed, cost FROM quota_ext.quota_consume(:t, 'cache-model', 1, role => 'admin');
RESET quota_ext.config_cache;
-- a small cache still answers (it is emptied when a kind is full)
SET quota_ext.config_cache_entries = 16;
SELECT count(*) FILTER (WHERE quota_ext.policy_check(:t, 'm' || i)) AS allowed_unknown,
       count(*) AS checks
  FROM generate_series(1, 50) i;
SELECT quota_ext.policy_check(:t, 'cache-model', 'admin') AS admin;
RESET quota_ext.config_cache_entries;

-- The level shared by all backends (design §4a): a new connection, whose own
-- cache is empty, gets the answers another backend filed there.  Shown by a
-- raw change made without config_changed(): backends keep answering from the
-- cache (as documented) until config_changed() commits.
SELECT quota_ext.policy_check(:t, 'cache-model', 'admin') AS filled,
       allowed AS consume_filled
  FROM quota_ext.quota_consume(:t, 'cache-model', 1, role => 'admin');
SELECT role FROM quota_ext.authenticate(:'k');
UPDATE quota_ext.policies SET allowed = false
 WHERE tenant_id = :t AND model_pattern = 'cache-model';
\c
SELECT quota_ext.policy_check(:t, 'cache-model', 'admin') AS from_shared,
       quota_ext.policy_check(:t, 'cache-model', 'member') AS member_from_shared;
SELECT allowed, denied_by FROM quota_ext.quota_consume(:t, 'cache-model', 1, role => 'admin');
SELECT role FROM quota_ext.authenticate(:'k');
SELECT quota_ext.config_changed();
SELECT quota_ext.policy_check(:t, 'cache-model', 'admin') AS after_change;
\c
SELECT quota_ext.policy_check(:t, 'cache-model', 'admin') AS new_backend,
       allowed, denied_by
  FROM quota_ext.quota_consume(:t, 'cache-model', 1, role => 'admin');
