-- enforcement.sql (pgTAP): the contract of the enforcement API under bad
-- input — NULLs, amounts, unknown and foreign ids, idempotency misuse —
-- and the access rules: policy patterns, model sharing, the raising
-- variant's SQLSTATEs, and what quota_ext_app may do.
-- Checklist: B1 (NULLs), B2 (amounts), B3 (unknown ids), B10 (idempotency),
-- I3 (functions as the boundary).  Runs in one transaction, rolled back.
\set ECHO none
\set QUIET 1
\pset format unaligned
\pset tuples_only true
\pset pager off
\set ON_ERROR_STOP true
BEGIN;
\i test/invariant.sql
SET LOCAL TimeZone = 'UTC';
SET LOCAL datestyle = 'ISO, YMD';
SELECT plan(166);

-- ---------------------------------------------------------------------
-- helpers: run a statement (optionally as another role) and report
-- 'SQLSTATE: message' or 'ok'; the DETAIL of its error
-- ---------------------------------------------------------------------
CREATE FUNCTION pg_temp.err(sql text, as_role text DEFAULT NULL) RETURNS text
	LANGUAGE plpgsql AS $$
DECLARE
	r text;
BEGIN
	IF as_role IS NOT NULL THEN
		EXECUTE format('SET LOCAL ROLE %I', as_role);
	END IF;
	BEGIN
		EXECUTE sql;
		r := 'ok';
	EXCEPTION WHEN OTHERS THEN
		r := SQLSTATE || ': ' || SQLERRM;
	END;
	IF as_role IS NOT NULL THEN
		RESET ROLE;
	END IF;
	RETURN r;
END
$$;
CREATE FUNCTION pg_temp.detail(sql text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
	d text;
BEGIN
	EXECUTE sql;
	RETURN NULL;
EXCEPTION WHEN OTHERS THEN
	GET STACKED DIAGNOSTICS d = PG_EXCEPTION_DETAIL;
	RETURN d;
END
$$;

-- ---------------------------------------------------------------------
-- fixtures: tenant A (enterprise: no tier quota) with a user and key,
-- tenant B with a private model, global models
-- ---------------------------------------------------------------------
SELECT quota_ext.tenant_create('tap-a', 'enterprise') AS a \gset
SELECT quota_ext.tenant_create('tap-b', 'enterprise') AS b \gset
SELECT user_id AS a_user, api_key AS a_key FROM quota_ext.user_create(:a, 'ann@a.test', 'member') \gset
SELECT user_id AS a_viewer, api_key AS a_viewer_key FROM quota_ext.user_create(:a, 'vic@a.test', 'viewer') \gset
SELECT user_id AS b_user, api_key AS b_key FROM quota_ext.user_create(:b, 'bob@b.test', 'member') \gset
SELECT quota_ext.model_register('tap-m') AS m \gset
SELECT quota_ext.model_register('tap-m2') AS m2 \gset
SELECT quota_ext.model_register('tap-b-private', owner_tenant_id => :b) AS bm \gset
SELECT quota_ext.policy_set(:a, 'tap-m', true) AS a_pol \gset
SELECT quota_ext.policy_set(:a, 'tap-m2', true) AS a_pol2 \gset
SELECT quota_ext.policy_set(:b, 'tap-m', true) AS b_pol \gset
SELECT quota_ext.quota_set(:a, 'lifetime', 1000000, metric => 'units') AS a_q \gset
SELECT usage_id AS a_usage FROM quota_ext.quota_consume(:a, 'tap-m', 1) \gset
SELECT reservation_id AS a_res FROM quota_ext.quota_reserve(:a, 'tap-m', 1) \gset

-- ---------------------------------------------------------------------
-- B1: NULL in each required argument raises 22004 (the functions are
-- not STRICT, so a NULL never comes back as NULL or as "allowed")
-- ---------------------------------------------------------------------
SELECT throws_ok(format(c, VARIADIC args), '22004', NULL, 'NULL argument: ' || format(c, VARIADIC args))
  FROM (VALUES
	('SELECT quota_ext.quota_consume(NULL, %L, 1)', ARRAY['tap-m']),
	('SELECT quota_ext.quota_consume(%s, NULL, 1)', ARRAY[:'a']),
	('SELECT quota_ext.quota_consume(%s, %L, NULL)', ARRAY[:'a', 'tap-m']),
	('SELECT quota_ext.quota_consume_or_raise(NULL, %L, 1)', ARRAY['tap-m']),
	('SELECT quota_ext.quota_consume_or_raise(%s, NULL, 1)', ARRAY[:'a']),
	('SELECT quota_ext.quota_consume_or_raise(%s, %L, NULL)', ARRAY[:'a', 'tap-m']),
	('SELECT quota_ext.invoke(NULL, %L, 1)', ARRAY['tap-m']),
	('SELECT quota_ext.invoke(%L, NULL, 1)', ARRAY[:'a_key']),
	('SELECT quota_ext.invoke(%L, %L, NULL)', ARRAY[:'a_key', 'tap-m']),
	('SELECT quota_ext.quota_reserve(NULL, %L, 1)', ARRAY['tap-m']),
	('SELECT quota_ext.quota_reserve(%s, NULL, 1)', ARRAY[:'a']),
	('SELECT quota_ext.quota_reserve(%s, %L, NULL)', ARRAY[:'a', 'tap-m']),
	('SELECT quota_ext.quota_reserve(%s, %L, 1, NULL)', ARRAY[:'a', 'tap-m']),
	('SELECT quota_ext.quota_settle(NULL, %s, 1)', ARRAY[:'a_res']),
	('SELECT quota_ext.quota_settle(%s, NULL, 1)', ARRAY[:'a']),
	('SELECT quota_ext.quota_settle(%s, %s, NULL)', ARRAY[:'a', :'a_res']),
	('SELECT quota_ext.quota_cancel(NULL, %s)', ARRAY[:'a_res']),
	('SELECT quota_ext.quota_cancel(%s, NULL)', ARRAY[:'a']),
	('SELECT quota_ext.quota_refund(NULL, %s)', ARRAY[:'a_usage']),
	('SELECT quota_ext.quota_refund(%s, NULL)', ARRAY[:'a']),
	('SELECT quota_ext.quota_expire_reservations(NULL)', ARRAY[]::text[]),
	('SELECT quota_ext.policy_set(NULL, %L, true)', ARRAY['tap-m']),
	('SELECT quota_ext.policy_set(%s, NULL, true)', ARRAY[:'a']),
	('SELECT quota_ext.policy_set(%s, %L, NULL)', ARRAY[:'a', 'tap-m']),
	('SELECT quota_ext.policy_delete(NULL, %L)', ARRAY['tap-m']),
	('SELECT quota_ext.policy_delete(%s, NULL)', ARRAY[:'a']),
	('SELECT quota_ext.policy_check(NULL, %L)', ARRAY['tap-m']),
	('SELECT quota_ext.policy_check(%s, NULL)', ARRAY[:'a']),
	('SELECT quota_ext.model_share(NULL, %L, %s)', ARRAY['tap-b-private', :'a']),
	('SELECT quota_ext.model_share(%s, NULL, %s)', ARRAY[:'b', :'a']),
	('SELECT quota_ext.model_share(%s, %L, NULL)', ARRAY[:'b', 'tap-b-private']),
	('SELECT quota_ext.model_unshare(NULL, %L, %s)', ARRAY['tap-b-private', :'a']),
	('SELECT quota_ext.model_unshare(%s, NULL, %s)', ARRAY[:'b', :'a']),
	('SELECT quota_ext.model_unshare(%s, %L, NULL)', ARRAY[:'b', 'tap-b-private']),
	('SELECT quota_ext.quota_set(NULL, %L, 10)', ARRAY['daily']),
	('SELECT quota_ext.quota_set(%s, NULL, 10)', ARRAY[:'a']),
	('SELECT quota_ext.quota_set(%s, %L, NULL)', ARRAY[:'a', 'daily']),
	('SELECT quota_ext.quota_set(%s, %L, 10, metric => NULL)', ARRAY[:'a', 'daily']),
	('SELECT quota_ext.quota_set(%s, %L, 10, on_exceed => NULL)', ARRAY[:'a', 'daily']),
	('SELECT quota_ext.quota_set(%s, %L, 10, thresholds => NULL)', ARRAY[:'a', 'daily']),
	('SELECT quota_ext.quota_delete(NULL, %s)', ARRAY[:'a_q']),
	('SELECT quota_ext.quota_delete(%s, NULL)', ARRAY[:'a']),
	('SELECT quota_ext.quota_status(NULL)', ARRAY[]::text[]),
	('SELECT quota_ext.tenant_summary(NULL)', ARRAY[]::text[]),
	('SELECT quota_ext.period_bounds(NULL, %L, now())', ARRAY['UTC']),
	('SELECT quota_ext.period_bounds(%L, NULL, now())', ARRAY['day']),
	('SELECT quota_ext.period_bounds(%L, %L, NULL)', ARRAY['day', 'UTC']),
	('SELECT quota_ext.authenticate(NULL)', ARRAY[]::text[])
  ) v(c, args);
-- optional arguments: NULL means "not given"
SELECT is((quota_ext.quota_consume(:a, 'tap-m', 1, NULL, NULL, NULL, NULL)).allowed, true,
          'quota_consume: NULL idempotency_key, user_id, key_id, role mean none');
SELECT is(quota_ext.policy_check(:a, 'tap-m', NULL), true, 'policy_check: NULL role means the caller''s');

-- ---------------------------------------------------------------------
-- B2: amounts — zero, negative and INT64 extremes; overflow of used
-- ---------------------------------------------------------------------
SELECT throws_ok(format('SELECT quota_ext.quota_consume(%s, %L, %s)', :a, 'tap-m', u), '22023',
                 'units must be positive', 'units ' || u || ' is refused (22023)')
  FROM unnest(ARRAY['0', '-1', '-9223372036854775808']) u;
SELECT throws_ok(format('SELECT quota_ext.invoke(%L, %L, 0)', :'a_key', 'tap-m'), '22023',
                 'units must be positive', 'invoke: units 0 is refused');
SELECT throws_ok(format('SELECT quota_ext.quota_reserve(%s, %L, -5)', :a, 'tap-m'), '22023',
                 'estimate must be positive', 'reserve: a negative estimate is refused');
SELECT throws_ok(format('SELECT quota_ext.quota_settle(%s, %s, -1)', :a, :a_res), '22023',
                 'actual must not be negative', 'settle: a negative actual is refused');
-- a call carries at most 10^15 units (issue 12, finding 5): INT64 max is 22003
SELECT quota_ext.tenant_create('tap-big', 'enterprise') AS big \gset
SELECT quota_ext.policy_set(:big, 'tap-m', true) > 0 AS ok \gset
SELECT quota_ext.quota_set(:big, 'monthly', 100, metric => 'units') AS big_q \gset
SELECT throws_ok(format('SELECT quota_ext.quota_consume(%s, %L, 9223372036854775807)', :big, 'tap-m'), '22003',
                 'units must be at most 1000000000000000', 'INT64 max units: 22003');
-- the maximum against a blocking quota of 100: denied, nothing charged
SELECT results_eq(
	format('SELECT allowed, denied_by, remaining FROM quota_ext.quota_consume(%s, %L, 1000000000000000)', :big, 'tap-m'),
	$$VALUES (false, 'quota'::text, 100::bigint)$$,
	'10^15 units against a limit of 100: denied, 100 remain');
SELECT is((SELECT used FROM quota_ext.quota_counters WHERE tenant_id = :big), 0::bigint,
          'the denial charged nothing');
-- used near INT64 max (9223 calls of 10^15): the next charge would overflow: 22003, nothing changed
SELECT quota_ext.quota_set(:big, 'monthly', 9223372036854775807, metric => 'units') = :big_q AS ok \gset
SELECT is((SELECT count(*) FROM generate_series(1, 9223) g,
                  LATERAL quota_ext.quota_consume(:big, 'tap-m', 1000000000000000 + 0 * g) c WHERE c.allowed),
          9223::bigint, 'a limit of INT64 max takes 9223 calls of 10^15 units');
SELECT throws_ok(format('SELECT quota_ext.quota_consume(%s, %L, 1000000000000000)', :big, 'tap-m'), '22003',
                 format('quota %s would overflow', :big_q), 'used + units beyond INT64 max: 22003');
SELECT throws_ok(format('SELECT quota_ext.quota_reserve(%s, %L, 1000000000000000)', :big, 'tap-m'), '22003',
                 format('quota %s would overflow', :big_q), 'reserve beyond INT64 max: 22003');
SELECT results_eq(
	format('SELECT used, (SELECT count(*) FROM quota_ext.usage WHERE tenant_id = %s) FROM quota_ext.quota_counters WHERE tenant_id = %s', :big, :big),
	$$VALUES (9223000000000000000::bigint, 9223::bigint)$$,
	'after the overflow errors: counter and ledger unchanged');
-- an alert quota lets used pass its limit, up to the overflow
SELECT quota_ext.tenant_create('tap-alert', 'enterprise') AS al \gset
SELECT quota_ext.policy_set(:al, 'tap-m', true) > 0 AS ok \gset
SELECT quota_ext.quota_set(:al, 'never', 10, metric => 'units', on_exceed => 'alert') AS al_q \gset
SELECT is((SELECT count(*) FROM generate_series(1, 9223) g,
                  LATERAL quota_ext.quota_consume(:al, 'tap-m', 1000000000000000 + 0 * g) c WHERE c.allowed),
          9223::bigint, 'alert quota: 9223 calls of 10^15 units pass a limit of 10');
SELECT throws_ok(format('SELECT quota_ext.quota_consume(%s, %L, 1000000000000000)', :al, 'tap-m'), '22003', NULL,
                 'alert quota near INT64 max: one more call is 22003');
-- a settle whose excess would overflow
SELECT quota_ext.tenant_create('tap-settle', 'enterprise') AS st \gset
SELECT quota_ext.policy_set(:st, 'tap-m', true) > 0 AS ok \gset
SELECT quota_ext.quota_set(:st, 'never', 9223372036854775807, metric => 'units') > 0 AS ok \gset
SELECT count(*) AS st_n FROM generate_series(1, 9222) g,
       LATERAL quota_ext.quota_consume(:st, 'tap-m', 1000000000000000 + 0 * g) c WHERE c.allowed \gset
SELECT reservation_id AS st_res FROM quota_ext.quota_reserve(:st, 'tap-m', 999999999999990) \gset
SELECT is((quota_ext.quota_consume(:st, 'tap-m', 372036854775810)).allowed, true, 'the counter is at INT64 max - 7');
SELECT throws_ok(format('SELECT quota_ext.quota_settle(%s, %s, 1000000000000000)', :st, :st_res), '22003', NULL,
                 'a settle 10 units above the estimate would overflow: 22003');
SELECT results_eq(
	format('SELECT r.status, c.used FROM quota_ext.reservations r, quota_ext.quota_counters c WHERE r.tenant_id = %s AND c.tenant_id = %s', :st, :st),
	$$VALUES ('open'::text, 9223372036854775800::bigint)$$,
	'after it: the reservation is still open, the counter unchanged');
SELECT is((quota_ext.quota_settle(:st, :st_res, 999999999999997)).allowed, true,
          'settling up to exactly INT64 max is charged');

-- ---------------------------------------------------------------------
-- B3 / I3: unknown tenant and another tenant's id give the same 42704,
-- inside a tenant context; without one, only admins may name tenants
-- ---------------------------------------------------------------------
SELECT tenant_id = :a AS ok FROM quota_ext.authenticate(:'a_key') \gset
SELECT throws_ok(format(c, t), '42704', format('tenant %s does not exist', t),
                 format(c, CASE WHEN t = :b THEN 'B' ELSE 'unknown' END) || ' under A''s context')
  FROM (VALUES
	('SELECT quota_ext.quota_consume(%s, ''tap-m'', 1)'),
	('SELECT quota_ext.quota_consume_or_raise(%s, ''tap-m'', 1)'),
	('SELECT quota_ext.quota_reserve(%s, ''tap-m'', 1)'),
	('SELECT quota_ext.quota_settle(%s, 1, 1)'),
	('SELECT quota_ext.quota_cancel(%s, 1)'),
	('SELECT quota_ext.quota_refund(%s, 1)'),
	('SELECT quota_ext.policy_check(%s, ''tap-m'')'),
	('SELECT quota_ext.quota_status(%s)'),
	('SELECT quota_ext.tenant_summary(%s)')
  ) v(c), (VALUES (:b), (999999999)) w(t);
SELECT quota_ext.clear_tenant();
-- as superuser without a context: the unknown id is 42704 too, and a
-- usage or reservation of B named as A's is "does not exist"
SELECT throws_ok(format('SELECT quota_ext.quota_consume(%s, %L, 1)', 999999999, 'tap-m'), '42704',
                 'tenant 999999999 does not exist', 'unknown tenant, no context: 42704');
SELECT throws_ok(format('SELECT quota_ext.quota_refund(%s, %s)', :b, :a_usage), '42704',
                 format('usage %s does not exist', :a_usage), 'A''s usage refunded as B''s: does not exist');
SELECT throws_ok(format('SELECT quota_ext.quota_settle(%s, %s, 1)', :b, :a_res), '42704',
                 format('reservation %s does not exist', :a_res), 'A''s reservation settled as B''s: does not exist');

-- unknown model and another tenant's private model: the same 42704
SELECT throws_ok(format(c, :a, mo), '42704', format('model "%s" does not exist', mo),
                 format(c, 'A', mo))
  FROM (VALUES
	('SELECT quota_ext.quota_consume(%s, %L, 1)'),
	('SELECT quota_ext.quota_reserve(%s, %L, 1)'),
	('SELECT quota_ext.policy_set(%s, %L, true)'),
	('SELECT quota_ext.quota_set(%s, ''daily'', 1, %L)'),
	('SELECT quota_ext.quota_status(%s, %L)')
  ) v(c), (VALUES ('tap-b-private'), ('tap-no-such-model')) w(mo);
SELECT throws_ok(format('SELECT quota_ext.invoke(%L, %L)', :'a_key', mo), '42704',
                 format('model "%s" does not exist', mo), 'invoke with A''s key: ' || mo)
  FROM unnest(ARRAY['tap-b-private', 'tap-no-such-model']) mo;
SELECT quota_ext.clear_tenant();
SELECT is(quota_ext.policy_check(:a, mo), false, 'policy_check: ' || mo || ' is just not allowed')
  FROM unnest(ARRAY['tap-b-private', 'tap-no-such-model']) mo;

-- ---------------------------------------------------------------------
-- B10: idempotency keys — length in bytes 1..255, and one request each
-- ---------------------------------------------------------------------
SELECT throws_ok(format('SELECT quota_ext.quota_consume(%s, %L, 1, %L)', :a, 'tap-m', k), '22023',
                 'idempotency_key must be 1 to 255 bytes', format('idempotency key of %s bytes', octet_length(k)))
  FROM unnest(ARRAY['', repeat('x', 256), repeat('é', 128)]) k;
SELECT throws_ok(format('SELECT quota_ext.invoke(%L, %L, 1, %L)', :'a_key', 'tap-m', ''), '22023',
                 'idempotency_key must be 1 to 255 bytes', 'invoke: empty idempotency key');
SELECT throws_ok(format('SELECT quota_ext.quota_reserve(%s, %L, 1, idempotency_key => %L)', :a, 'tap-m', repeat('x', 256)),
                 '22023', 'idempotency_key must be 1 to 255 bytes', 'reserve: 256-byte idempotency key');
SELECT quota_ext.clear_tenant();
SELECT is((quota_ext.quota_consume(:a, 'tap-m', 5, repeat('k', 255))).replayed, false,
          'a 255-byte key is accepted');
SELECT is((quota_ext.quota_consume(:a, 'tap-m', 5, repeat('k', 255))).replayed, true,
          'and replayed the second time');
SELECT throws_ok(format('SELECT quota_ext.quota_consume(%s, %L, %s, %L)', :a, mo, u, repeat('k', 255)), '22023',
                 format('idempotency key "%s..." was used with other parameters', repeat('k', 64)),
                 format('same key, %s x %s units: 22023', mo, u))
  FROM (VALUES ('tap-m', 6), ('tap-m2', 5)) v(mo, u);
SELECT throws_ok(format('SELECT quota_ext.quota_reserve(%s, %L, 5, idempotency_key => %L)', :a, 'tap-m', repeat('k', 255)),
                 '22023', NULL, 'same key for a reservation instead of a consume: 22023');
SELECT is((quota_ext.quota_consume(:b, 'tap-m', 5, repeat('k', 255))).replayed, false,
          'keys are per tenant: B may use the same key');
SELECT is((SELECT count(*) FROM quota_ext.usage WHERE idempotency_key = repeat('k', 255)), 2::bigint,
          'one usage row per tenant and key');

-- ---------------------------------------------------------------------
-- policies: exact beats pattern, longest pattern wins, roles, default deny
-- ---------------------------------------------------------------------
SELECT quota_ext.tenant_create('tap-pol', 'enterprise') AS p \gset
SELECT count(quota_ext.model_register(x)) AS ok
  FROM unnest(ARRAY['tap-gpt-4o', 'tap-gpt-4-turbo', 'tap-gpt-3.5', 'tap-claude']) x \gset
SELECT is(quota_ext.policy_check(:p, 'tap-gpt-4o'), false, 'no policy: denied');
SELECT quota_ext.policy_set(:p, 'tap-gpt-*', false) > 0 AS ok \gset
SELECT quota_ext.policy_set(:p, 'tap-gpt-4*', true) > 0 AS ok \gset
SELECT quota_ext.policy_set(:p, 'tap-gpt-4o', false) > 0 AS ok \gset
SELECT is(quota_ext.policy_check(:p, 'tap-gpt-4o'), false, 'the exact policy (deny) beats the pattern gpt-4* (allow)');
SELECT is(quota_ext.policy_check(:p, 'tap-gpt-4-turbo'), true, 'the longest pattern gpt-4* (allow) beats gpt-* (deny)');
SELECT is(quota_ext.policy_check(:p, 'tap-gpt-3.5'), false, 'only gpt-* (deny) matches gpt-3.5');
SELECT is(quota_ext.policy_check(:p, 'tap-claude'), false, 'no pattern matches: default deny');
SELECT quota_ext.policy_delete(:p, 'tap-gpt-4o');
SELECT is(quota_ext.policy_check(:p, 'tap-gpt-4o'), true, 'without the exact policy, the pattern decides');
SELECT results_eq(
	format('SELECT allowed, denied_by FROM quota_ext.quota_consume(%s, %L)', :p, 'tap-gpt-3.5'),
	$$VALUES (false, 'policy'::text)$$, 'quota_consume reports the policy denial');
-- roles
SELECT quota_ext.policy_set(:p, 'tap-claude', true, ARRAY['admin', 'member']) > 0 AS ok \gset
SELECT is(quota_ext.policy_check(:p, 'tap-claude', 'member'), true, 'a listed role is allowed');
SELECT is(quota_ext.policy_check(:p, 'tap-claude', 'viewer'), false, 'a role not listed is denied');
SELECT is(quota_ext.policy_check(:p, 'tap-claude'), false, 'no role (admin caller, no context) when roles are listed: denied');
SELECT quota_ext.policy_set(:p, 'tap-claude', true, NULL) > 0 AS ok \gset
SELECT is(quota_ext.policy_check(:p, 'tap-claude', 'viewer'), true, 'roles_allowed NULL: any role');
SELECT is(quota_ext.policy_check(:p, 'tap-claude'), true, 'roles_allowed NULL: no role needed');
-- the authenticated user's role is the default
SELECT quota_ext.policy_set(:a, 'tap-m2', true, ARRAY['member']) > 0 AS ok \gset
SELECT tenant_id = :a AS ok FROM quota_ext.authenticate(:'a_viewer_key') \gset
SELECT is(quota_ext.policy_check(:a, 'tap-m2'), false, 'a viewer''s key: the viewer role is not listed');
SELECT is((quota_ext.quota_consume(:a, 'tap-m2')).denied_by, 'policy', 'and quota_consume denies by policy');
SELECT tenant_id = :a AS ok FROM quota_ext.authenticate(:'a_key') \gset
SELECT is(quota_ext.policy_check(:a, 'tap-m2'), true, 'a member''s key: allowed');
SELECT quota_ext.clear_tenant();
-- bad patterns
SELECT throws_ok(format('SELECT quota_ext.policy_set(%s, %L, true)', :p, x), '22023', format('invalid model pattern "%s"', x),
                 'pattern ' || x || ' is refused')
  FROM unnest(ARRAY['*', 'tap-*gpt*']) x;

-- ---------------------------------------------------------------------
-- model sharing: unknown until shared; shared but no policy: denied; with
-- a policy: allowed; unshared: unknown again
-- ---------------------------------------------------------------------
SELECT throws_ok(format('SELECT quota_ext.quota_consume(%s, %L)', :a, 'tap-b-private'), '42704', NULL,
                 'B''s model before sharing: unknown to A');
SELECT quota_ext.model_share(:b, 'tap-b-private', :a);
SELECT is(quota_ext.policy_check(:a, 'tap-b-private'), false, 'shared, but A has no policy: denied');
SELECT is((quota_ext.quota_consume(:a, 'tap-b-private')).denied_by, 'policy', 'and quota_consume denies by policy');
SELECT quota_ext.policy_set(:a, 'tap-b-private', true) > 0 AS ok \gset
SELECT is(quota_ext.policy_check(:a, 'tap-b-private'), true, 'shared and allowed by A''s policy');
SELECT is((quota_ext.quota_consume(:a, 'tap-b-private')).allowed, true, 'A consumes B''s model');
SELECT quota_ext.model_unshare(:b, 'tap-b-private', :a);
SELECT is(quota_ext.policy_check(:a, 'tap-b-private'), false, 'unshared: denied again');
SELECT throws_ok(format('SELECT quota_ext.quota_consume(%s, %L)', :a, 'tap-b-private'), '42704',
                 'model "tap-b-private" does not exist', 'unshared: unknown to A again');
SELECT throws_ok(format('SELECT quota_ext.model_share(%s, %L, %s)', :b, 'tap-b-private', :b), '42704', NULL,
                 'sharing with oneself: refused');
SELECT throws_ok(format('SELECT quota_ext.model_share(%s, %L, %s)', :a, 'tap-b-private', :b), '42704', NULL,
                 'A cannot share B''s model');
SELECT throws_ok(format('SELECT quota_ext.model_unshare(%s, %L, %s)', :b, 'tap-b-private', :a), '42704', NULL,
                 'unsharing what is not shared: 42704');

-- ---------------------------------------------------------------------
-- quota_consume_or_raise: 53400 with the numbers in DETAIL; 42501 for
-- policy and for an inactive tenant
-- ---------------------------------------------------------------------
-- The tenant's time zone is one where it is about noon now, so that no local
-- midnight (a new daily period) falls while this file runs: with
-- Asia/Kolkata a run at 18:30 UTC failed (the reset time it expected was
-- that of the day before).  Etc/GMT-14 to Etc/GMT+12 cover every hour.
SELECT z.name AS rtz FROM pg_timezone_names z
 WHERE z.name ~ '^Etc/GMT[+-][0-9]+$'
   AND extract(hour FROM clock_timestamp() AT TIME ZONE z.name) = 12
 ORDER BY z.name LIMIT 1 \gset
SELECT quota_ext.tenant_create('tap-raise', 'enterprise', :'rtz') AS r \gset
SELECT quota_ext.policy_set(:r, 'tap-m', true) > 0 AS ok \gset
SELECT quota_ext.quota_set(:r, 'daily', 10, metric => 'units') AS r_q \gset
SELECT is((quota_ext.quota_consume_or_raise(:r, 'tap-m', 7)).remaining, 3::bigint, 'allowed: returns the decision');
SELECT throws_ok(format('SELECT quota_ext.quota_consume_or_raise(%s, %L, 5)', :r, 'tap-m'), '53400',
                 format('daily quota exceeded for tenant %s', :r), 'quota denial: 53400');
SELECT matches(pg_temp.detail(format('SELECT quota_ext.quota_consume_or_raise(%s, %L, 5)', :r, 'tap-m')),
               format('^Quota %s: requested 5 units; 3 of 10 remain until \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\+00\.$', :r_q),
               'DETAIL: quota, units asked, remaining, limit and reset time');
SELECT is(pg_temp.detail(format('SELECT quota_ext.quota_consume_or_raise(%s, %L, 5)', :r, 'tap-m')),
          format('Quota %s: requested 5 units; 3 of 10 remain until %s.', :r_q,
                 (date_trunc('day', clock_timestamp() AT TIME ZONE :'rtz') + interval '1 day') AT TIME ZONE :'rtz'),
          'DETAIL: the reset time is the next local midnight');
SELECT quota_ext.tenant_create('tap-raise2', 'enterprise') AS r2 \gset
SELECT quota_ext.policy_set(:r2, 'tap-m', true) > 0 AS ok \gset
SELECT quota_ext.quota_set(:r2, 'never', 1, metric => 'units') AS r2_q \gset
SELECT is(pg_temp.detail(format('SELECT quota_ext.quota_consume_or_raise(%s, %L, 2)', :r2, 'tap-m')),
          format('Quota %s: requested 2 units; 1 of 1 remain.', :r2_q),
          'DETAIL of a lifetime quota: no reset time');
SELECT throws_ok(format('SELECT quota_ext.quota_consume_or_raise(%s, %L)', :r, 'tap-m2'), '42501',
                 format('model "tap-m2" is not allowed for tenant %s', :r), 'policy denial: 42501');
SELECT quota_ext.tenant_suspend(:r);
SELECT throws_ok(format('SELECT quota_ext.quota_consume_or_raise(%s, %L)', :r, 'tap-m'), '42501',
                 format('tenant %s is not active', :r), 'suspended tenant: 42501');
SELECT is((quota_ext.quota_consume(:r, 'tap-m')).denied_by, 'tenant', 'quota_consume: denied_by tenant');
SELECT quota_ext.tenant_activate(:r);
SELECT is((SELECT sum(units) FROM quota_ext.usage WHERE tenant_id = :r), 7::numeric,
          'the raising calls charged nothing');

-- ---------------------------------------------------------------------
-- quota_ext_app: a login role of the application consumes only for the
-- tenant it authenticated, and manages nothing
-- ---------------------------------------------------------------------
CREATE ROLE tap_app LOGIN IN ROLE quota_ext_app;
SELECT is(pg_temp.err(format('SELECT quota_ext.quota_consume(%s, %L)', :a, 'tap-m'), 'tap_app'),
          '42501: no tenant context in this transaction', 'app without a context: 42501');
SELECT is(pg_temp.err(format('SELECT quota_ext.policy_check(%s, %L)', :a, 'tap-m'), 'tap_app'),
          '42501: no tenant context in this transaction', 'app without a context: policy_check 42501');
SELECT is(pg_temp.err(format('SELECT quota_ext.authenticate(%L)', :'a_key'), 'tap_app'), 'ok',
          'app authenticates with A''s key');
SELECT is(pg_temp.err(format('SELECT quota_ext.quota_consume(%s, %L)', :a, 'tap-m'), 'tap_app'), 'ok',
          'app consumes for A');
SELECT is(pg_temp.err(format('SELECT quota_ext.quota_consume(%s, %L)', :b, 'tap-m'), 'tap_app'),
          format('42704: tenant %s does not exist', :b), 'app names B: does not exist');
SELECT is(pg_temp.err(format('SELECT quota_ext.quota_set(%s, %L, 5)', :a, 'daily'), 'tap_app'),
          '42501: permission denied for function quota_set', 'app cannot set quotas');
SELECT is(pg_temp.err(format('SELECT quota_ext.policy_set(%s, %L, true)', :a, 'tap-m'), 'tap_app'),
          '42501: permission denied for function policy_set', 'app cannot set policies');
SELECT is(pg_temp.err('SELECT quota_ext.quota_expire_reservations()', 'tap_app'),
          '42501: permission denied for function quota_expire_reservations', 'app cannot run the sweep');
SELECT is(pg_temp.err(format('SELECT quota_ext.set_tenant(%s)', :b), 'tap_app'),
          '42501: permission denied for function set_tenant', 'app cannot switch tenants');
SELECT is(pg_temp.err(format('UPDATE quota_ext.quota_counters SET used = 0 WHERE tenant_id = %s', :a), 'tap_app'),
          '42501: permission denied for table quota_counters', 'app cannot write counters');
SELECT is(pg_temp.err(format('SELECT quota_ext.invoke(%L, %L)', :'b_key', 'tap-m'), 'tap_app'), 'ok',
          'invoke with B''s key works: the key names the tenant');
SELECT quota_ext.clear_tenant();
-- an admin role that is not superuser: the sweep needs no context
CREATE ROLE tap_admin LOGIN IN ROLE quota_ext_admin;
SELECT is(pg_temp.err('SELECT quota_ext.quota_expire_reservations()', 'tap_admin'), 'ok',
          'quota_ext_admin runs the sweep');
SELECT is(pg_temp.err(format('SELECT quota_ext.authenticate(%L); SELECT quota_ext.quota_expire_reservations()', :'a_key'), 'tap_admin'),
          '42501: quota_expire_reservations needs quota_ext_admin and no tenant context',
          'but not inside a tenant context');
SELECT quota_ext.clear_tenant();

-- everything above kept the ledger and the counters in step
SELECT is_empty('SELECT * FROM quota_test.violations()', 'invariant: counters equal the ledger');

SELECT * FROM finish();
ROLLBACK;
