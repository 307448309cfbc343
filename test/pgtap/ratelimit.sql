-- pgTAP: the rate-limit contract (functions, privileges, SQLSTATEs, rules,
-- tier defaults, RLS on quota_ext.rate_limits).
BEGIN;
SELECT plan(70);

-- Buckets outlive the transaction: fresh keys for every run.
SELECT pg_catalog.md5(pg_catalog.random()::text) AS run \gset

-- ---------------------------------------------------------------------------
-- shape
-- ---------------------------------------------------------------------------
SELECT has_function('quota_ext', 'rate_limit_check', ARRAY['text', 'integer', 'integer', 'integer', 'integer']);
SELECT has_function('quota_ext', 'tenant_rate_limit_check', ARRAY['text', 'integer', 'integer', 'integer', 'integer']);
SELECT has_function('quota_ext', 'gcra_eval', ARRAY['bigint', 'bigint', 'integer', 'integer', 'integer', 'integer']);
SELECT has_function('quota_ext', 'rate_limit_set', ARRAY['bigint', 'integer', 'integer', 'integer', 'text', 'bigint']);
SELECT has_function('quota_ext', 'rate_limit_delete', ARRAY['bigint', 'bigint']);
SELECT has_function('quota_ext', 'rate_limit_apply', ARRAY['bigint', 'text', 'integer', 'bigint']);
SELECT has_function('quota_ext', 'rate_limit_status', ARRAY[]::text[]);
SELECT volatility_is('quota_ext', 'gcra_eval', ARRAY['bigint', 'bigint', 'integer', 'integer', 'integer', 'integer'], 'immutable');
SELECT volatility_is('quota_ext', 'rate_limit_check', ARRAY['text', 'integer', 'integer', 'integer', 'integer'], 'volatile');
-- both checks answer the named row type (the executor then takes its shape
-- from the type cache), with redis-cell's five columns in order
SELECT is((SELECT array_agg(DISTINCT p.prorettype::regtype::text)
             FROM pg_catalog.pg_proc p
            WHERE p.oid IN ('quota_ext.rate_limit_check(text,integer,integer,integer,integer)'::regprocedure,
                            'quota_ext.tenant_rate_limit_check(text,integer,integer,integer,integer)'::regprocedure)),
	ARRAY['quota_ext.rate_limit_result'], 'the checks return quota_ext.rate_limit_result');
SELECT is((SELECT array_agg(a.attname::text ORDER BY a.attnum)
             FROM pg_catalog.pg_attribute a
            WHERE a.attrelid = (SELECT typrelid FROM pg_catalog.pg_type
                                 WHERE oid = 'quota_ext.rate_limit_result'::regtype)
              AND a.attnum > 0 AND NOT a.attisdropped),
	ARRAY['limited', 'limit', 'remaining', 'retry_after', 'reset_after'], 'rate_limit_result columns');

SELECT function_privs_are('quota_ext', 'rate_limit_check', ARRAY['text', 'integer', 'integer', 'integer', 'integer'],
	'quota_ext_app', ARRAY['EXECUTE'], 'the app role may check keys');
SELECT function_privs_are('quota_ext', 'tenant_rate_limit_check', ARRAY['text', 'integer', 'integer', 'integer', 'integer'],
	'quota_ext_app', ARRAY['EXECUTE'], 'the app role may check tenant keys');
SELECT function_privs_are('quota_ext', 'rate_limit_apply', ARRAY['bigint', 'text', 'integer', 'bigint'],
	'quota_ext_app', ARRAY['EXECUTE'], 'the app role may apply configured limits');
SELECT function_privs_are('quota_ext', 'rate_limit_set', ARRAY['bigint', 'integer', 'integer', 'integer', 'text', 'bigint'],
	'quota_ext_app', ARRAY[]::text[], 'the app role may not configure limits');
SELECT function_privs_are('quota_ext', 'rate_limit_set', ARRAY['bigint', 'integer', 'integer', 'integer', 'text', 'bigint'],
	'quota_ext_admin', ARRAY['EXECUTE'], 'the admin role configures limits');
SELECT function_privs_are('quota_ext', 'rate_limit_delete', ARRAY['bigint', 'bigint'],
	'quota_ext_app', ARRAY[]::text[], 'the app role may not delete limits');
SELECT function_privs_are('quota_ext', 'rate_limit_check', ARRAY['text', 'integer', 'integer', 'integer', 'integer'],
	'public', ARRAY[]::text[], 'PUBLIC may not check');
SELECT function_privs_are('quota_ext', 'rate_limit_reset', ARRAY['bigint', 'text'],
	'quota_ext_app', ARRAY[]::text[], 'the app role may not reset buckets');
SELECT function_privs_are('quota_ext', 'rate_limit_reset', ARRAY['bigint', 'text'],
	'quota_ext_admin', ARRAY['EXECUTE'], 'the admin role resets buckets');
SELECT function_privs_are('quota_ext', '_rate_limit_reset', ARRAY['bigint', 'text', 'bigint[]'],
	'quota_ext_admin', ARRAY[]::text[], 'the internal reset is for nobody but its wrapper');

SELECT has_table('quota_ext', 'rate_limits', 'rate_limits exists');
SELECT col_is_pk('quota_ext', 'rate_limits', ARRAY['tenant_id', 'rule_id'], 'PK leads with tenant_id');
SELECT policies_are('quota_ext', 'rate_limits', ARRAY['tenant_isolation', 'admin_read']);
SELECT ok((SELECT relrowsecurity AND relforcerowsecurity FROM pg_class
            WHERE oid = 'quota_ext.rate_limits'::regclass), 'rate_limits has FORCE ROW LEVEL SECURITY');
SELECT ok((SELECT 'quota_ext.rate_limits'::regclass = ANY (extconfig) FROM pg_extension
            WHERE extname = 'quota_ext'), 'rate_limits is dumped by pg_dump');
SELECT is((SELECT count(*)::int FROM pg_trigger WHERE tgrelid = 'quota_ext.rate_limits'::regclass AND NOT tgisinternal),
	0, 'rate_limits has no triggers');
SELECT is((SELECT count(*)::int FROM pg_index i JOIN pg_attribute a
             ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
            WHERE i.indrelid = 'quota_ext.rate_limits'::regclass AND i.indisunique
              AND a.attname <> 'tenant_id'),
	0, 'every unique index of rate_limits leads with tenant_id');

-- ---------------------------------------------------------------------------
-- redis-cell answers through the shared table
-- ---------------------------------------------------------------------------
SELECT results_eq(
	format($$SELECT limited, "limit", remaining, retry_after, reset_after FROM quota_ext.rate_limit_check(%L, 15, 30, 60)$$, 'tap:readme:' || :'run'),
	$$VALUES (false, 16::bigint, 15::bigint, -1::bigint, 2::bigint)$$,
	'CL.THROTTLE user123 15 30 60 on a new key');
SELECT results_eq(
	format($$SELECT limited, remaining FROM quota_ext.rate_limit_check(%L, 0, 1, 3600)$$, 'tap:one:' || :'run'),
	$$VALUES (false, 0::bigint)$$, 'max_burst 0: one admitted');
SELECT results_eq(
	format($$SELECT limited, remaining, retry_after FROM quota_ext.rate_limit_check(%L, 0, 1, 3600)$$, 'tap:one:' || :'run'),
	$$VALUES (true, 0::bigint, 3600::bigint)$$, 'then limited for one interval');
SELECT results_eq(
	format($$SELECT limited, remaining FROM quota_ext.rate_limit_check(%L, 3, 1, 3600, 0)$$, 'tap:peek:' || :'run'),
	$$VALUES (false, 4::bigint)$$, 'quantity 0 peeks at a full bucket');

-- ---------------------------------------------------------------------------
-- bad input: SQLSTATEs
-- ---------------------------------------------------------------------------
-- called as a value (not in FROM) the row has the named type too
SELECT is((SELECT (quota_ext.rate_limit_check('tap:value:' || :'run', 4, 1, 3600)).remaining), 4::bigint,
	'rate_limit_check as a value: a fresh bucket of 5 leaves 4');
SELECT throws_ok($$SELECT quota_ext.rate_limit_check(NULL, 1, 1, 1)$$, '22004', NULL, 'NULL key');
SELECT throws_ok($$SELECT quota_ext.rate_limit_check('tap:x', NULL, 1, 1)$$, '22004', NULL, 'NULL max_burst');
SELECT throws_ok($$SELECT quota_ext.rate_limit_check('tap:x', 1, 1, 1, NULL)$$, '22004', NULL, 'NULL quantity');
SELECT throws_ok($$SELECT quota_ext.rate_limit_check('tap:x', -1, 1, 1)$$, '22023', NULL, 'negative burst');
SELECT throws_ok($$SELECT quota_ext.rate_limit_check('tap:x', 1, 0, 1)$$, '22023', NULL, 'zero count');
SELECT throws_ok($$SELECT quota_ext.rate_limit_check('tap:x', 1, 1, -1)$$, '22023', NULL, 'negative period');
SELECT throws_ok($$SELECT quota_ext.rate_limit_check('tap:x', 1, 1, 1, -2)$$, '22023', NULL, 'negative quantity');
SELECT throws_ok($$SELECT quota_ext.rate_limit_check('', 1, 1, 1)$$, '22023', NULL, 'empty key');
SELECT throws_ok($$SELECT quota_ext.rate_limit_check(repeat('x', 1025), 1, 1, 1)$$, '22023', NULL, 'key over 1024 bytes');
SELECT throws_ok($$SELECT quota_ext.rate_limit_check('tap:x', 0, 1, 86400, 2147483647)$$, '22003', NULL, 'overflow');
SELECT throws_ok($$SELECT quota_ext.rate_limit_check('tap:x', 0, 1, 86401)$$, '22023', NULL, 'period over one day');
SELECT throws_ok($$SELECT quota_ext.rate_limit_check('tap:x', 2147483647, 1, 2147483647)$$, '22023', NULL, 'the 68-year bucket');
SELECT throws_ok($$SELECT quota_ext.rate_limit_check('tap:x', 1440, 1440, 86400)$$, '22023', NULL, 'refill over one day');
SELECT throws_ok($$SELECT quota_ext.tenant_rate_limit_check('tap:x', 1, 1, 1)$$, '42501', NULL, 'tenant check needs a context');

-- ---------------------------------------------------------------------------
-- rules: set, update, delete, tier default
-- ---------------------------------------------------------------------------
SELECT quota_ext.tenant_create('tap-rl-a', 'pro') AS a \gset
SELECT quota_ext.tenant_create('tap-rl-b', 'free') AS b \gset
SELECT quota_ext.model_register('tap-rl-model') AS m \gset

SELECT results_eq(
	format('SELECT limited, rule_id, "limit", remaining FROM quota_ext.rate_limit_apply(%s, quantity => 0)', :a),
	$$VALUES (false, 0::bigint, 101::bigint, 101::bigint)$$,
	'pro tier default: 600/min, burst 100 (rule 0)');

SELECT quota_ext.rate_limit_set(:a, 5, 60, 2) AS wide \gset
SELECT ok(:wide > 0, 'rate_limit_set returns a rule id');
SELECT is(quota_ext.rate_limit_set(:a, 10, 60, 4), :wide::bigint, 'setting the same scope again updates it');
SELECT results_eq(
	format('SELECT max_burst, count, period_seconds FROM quota_ext.rate_limits WHERE tenant_id = %s', :a),
	$$VALUES (4, 10, 60)$$, 'the rule holds the new values');
SELECT results_eq(
	format('SELECT rule_id, "limit" FROM quota_ext.rate_limit_apply(%s, quantity => 0)', :a),
	format('VALUES (%s::bigint, 5::bigint)', :wide),
	'a tenant-wide rule replaces the tier default');
SELECT quota_ext.rate_limit_set(:a, 1, 3600, 0, 'tap-rl-model') AS per_model \gset
SELECT isnt(:per_model::bigint, :wide::bigint, 'a model scope is a rule of its own');
SELECT results_eq(
	format($$SELECT limited, rule_id FROM quota_ext.rate_limit_apply(%s, 'tap-rl-model')$$, :a),
	format('VALUES (false, %s::bigint)', :per_model), 'the tightest rule is reported');
SELECT results_eq(
	format($$SELECT limited, rule_id, retry_after FROM quota_ext.rate_limit_apply(%s, 'tap-rl-model')$$, :a),
	format('VALUES (true, %s::bigint, 3600::bigint)', :per_model), 'the model rule limits');
SELECT results_eq(
	format('SELECT remaining FROM quota_ext.rate_limit_apply(%s, quantity => 0)', :a),
	$$VALUES (4::bigint)$$, 'the denied call charged no other rule');
SELECT lives_ok(format('SELECT quota_ext.rate_limit_delete(%s, %s)', :a, :wide), 'rate_limit_delete');
SELECT results_eq(
	format('SELECT rule_id, "limit" FROM quota_ext.rate_limit_apply(%s, quantity => 0)', :a),
	$$VALUES (0::bigint, 101::bigint)$$, 'without the tenant-wide rule the tier default is back');
SELECT is((SELECT count(*)::int FROM quota_ext.audit_log
            WHERE tenant_id = :a AND object_type = 'rate_limit'),
	4, 'set, update, set, delete: four audit rows');

SELECT throws_ok(format('SELECT quota_ext.rate_limit_set(%s, 0, 60)', :a), '22023', NULL, 'count 0 refused');
SELECT throws_ok(format('SELECT quota_ext.rate_limit_set(%s, 1, 60, NULL)', :a), '22004', NULL, 'NULL burst refused');
SELECT throws_ok(format($$SELECT quota_ext.rate_limit_set(%s, 1, 60, 0, 'nope')$$, :a), '42704', NULL, 'unknown model');
SELECT throws_ok(format('SELECT quota_ext.rate_limit_delete(%s, %s)', :a, :wide), '42704', NULL, 'deleting twice');
SELECT throws_ok(format('SELECT quota_ext.rate_limit_apply(%s)', 0), '42704', NULL, 'unknown tenant');

-- ---------------------------------------------------------------------------
-- RLS: a tenant sees only its own rules
-- ---------------------------------------------------------------------------
SELECT quota_ext.rate_limit_set(:b, 1, 60) AS b_rule \gset
SET LOCAL ROLE quota_ext_app;
SELECT is((SELECT count(*)::int FROM quota_ext.rate_limits), 0, 'app without a context sees no rules');
RESET ROLE;
SELECT quota_ext.set_tenant(:b);
SET LOCAL ROLE quota_ext_app;
SELECT results_eq('SELECT tenant_id FROM quota_ext.rate_limits',
	format('VALUES (%s::bigint)', :b), 'app in tenant b sees only b''s rules');
SELECT throws_ok(format('SELECT quota_ext.rate_limit_apply(%s)', :a), '42704', NULL,
	'app in tenant b cannot apply a''s limits');
SELECT throws_ok(format('DELETE FROM quota_ext.rate_limits WHERE tenant_id = %s', :b), '42501', NULL,
	'app cannot write rules directly');
-- the same tenant key in two tenants: two buckets
SELECT results_eq(format($$SELECT limited FROM quota_ext.tenant_rate_limit_check(%L, 0, 1, 3600)$$, 'tap:k:' || :'run'),
	$$VALUES (false)$$, 'tenant b: first');
RESET ROLE;
SELECT quota_ext.clear_tenant();
SELECT quota_ext.set_tenant(:a);
SELECT results_eq(format($$SELECT limited FROM quota_ext.tenant_rate_limit_check(%L, 0, 1, 3600)$$, 'tap:k:' || :'run'),
	$$VALUES (false)$$, 'tenant a: its own bucket for the same key');
SELECT quota_ext.clear_tenant();

SELECT * FROM finish();
ROLLBACK;
