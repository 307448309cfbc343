-- Issue 17: quotas on named meters (counters and gauges), several per
-- scope, charged all-or-nothing; the built-in gauge users; throttling past
-- a limit; idempotency and the ledger invariant; security of the meter
-- functions.  Every assertion here fails on main (no meter_create, and a
-- second units quota on one scope replaced the first).
BEGIN;
\ir metering_helpers.psql
\i test/invariant.sql
SELECT plan(92);

\o /dev/null
SELECT quota_ext.tenant_create('mt-a', 'enterprise') AS ta \gset
SELECT quota_ext.tenant_create('mt-b', 'enterprise') AS tb \gset
\o

-- ---------------------------------------------------------------------------
-- meter_create
-- ---------------------------------------------------------------------------
SELECT isnt(quota_ext.meter_create('gpu_hours', 'hours'), NULL, 'meter_create: a counter meter');
SELECT isnt(quota_ext.meter_create('storage_gb', 'GB', 'gauge'), NULL, 'meter_create: a gauge');
SELECT isnt(quota_ext.meter_create('api_requests'), NULL, 'meter_create: unit and kind default (counter)');
SELECT results_eq($$SELECT name, unit, kind, builtin FROM quota_ext.meters ORDER BY name$$,
	$$VALUES ('api_requests'::text, NULL::text, 'counter'::text, false),
	         ('gpu_hours', 'hours', 'counter', false),
	         ('storage_gb', 'GB', 'gauge', false),
	         ('users', 'users', 'gauge', true)$$,
	'the meters, with the built-in gauge users');
SELECT pg_temp.mx_snap();
SELECT * FROM pg_temp.mx_throws($$SELECT quota_ext.meter_create('gpu_hours')$$, '23505',
	'meter "gpu_hours" already exists', 'meter_create: a name taken');
SELECT * FROM pg_temp.mx_throws($$SELECT quota_ext.meter_create('GPU Hours')$$, '22023',
	'invalid meter name "GPU Hours"', 'meter_create: a bad name');
SELECT * FROM pg_temp.mx_throws($$SELECT quota_ext.meter_create('seats', kind => 'level')$$, '22023',
	'invalid meter kind "level"', 'meter_create: a bad kind');
SELECT * FROM pg_temp.mx_throws($$SELECT quota_ext.meter_create(NULL)$$, '22004',
	'argument "name" must not be null', 'meter_create: NULL name');

-- ---------------------------------------------------------------------------
-- several quotas per scope, on different meters
-- ---------------------------------------------------------------------------
\o /dev/null
SELECT quota_ext.model_register('mt-model');
SELECT quota_ext.policy_set(:ta, 'mt-model', true);
\o
SELECT quota_ext.quota_set(:ta, 'monthly', 100, meter => 'gpu_hours') AS qgpu \gset
SELECT quota_ext.quota_set(:ta, 'monthly', 50, meter => 'api_requests') AS qreq \gset
SELECT quota_ext.quota_set(:ta, 'daily', 30, meter => 'gpu_hours') AS qgpud \gset
SELECT quota_ext.quota_set(:ta, 'monthly', 1000, 'mt-model', 'units') AS qunits \gset
SELECT is((SELECT count(DISTINCT x) FROM unnest(ARRAY[:qgpu, :qreq, :qgpud, :qunits]) x), 4::bigint,
	'a second units quota of the same scope on another meter is a quota of its own (main replaced the first)');
SELECT results_eq(format($$SELECT meter, quota_id, period, "limit", used FROM quota_ext.meter_status(%s) WHERE kind = 'counter'$$, :ta),
	format($$VALUES ('api_requests'::text, %s::bigint, 'monthly'::text, 50::bigint, 0::bigint),
	                ('gpu_hours', %s, 'monthly', 100, 0), ('gpu_hours', %s, 'daily', 30, 0)$$, :qreq, :qgpu, :qgpud),
	'meter_status lists each meter quota');
SELECT is(quota_ext.quota_set(:ta, 'monthly', 120, meter => 'gpu_hours'), :qgpu::bigint,
	'quota_set again on the same meter, period and scope changes that quota');
SELECT is((SELECT max_units FROM quota_ext.quotas WHERE tenant_id = :ta AND quota_id = :qunits), 1000::bigint,
	'... and leaves the model quota alone');

-- ---------------------------------------------------------------------------
-- meter_consume: every quota of the meter, all or nothing
-- ---------------------------------------------------------------------------
SELECT results_eq(format($$SELECT allowed, denied_by, quota_id, "limit", remaining, tenant_id FROM quota_ext.meter_consume(%s, 'gpu_hours', 25)$$, :ta),
	format($$VALUES (true, NULL::text, %s::bigint, 30::bigint, 5::bigint, %s::bigint)$$, :qgpud, :ta),
	'meter_consume charges the meter; the tightest quota (daily 30) answers');
SELECT results_eq(format($$SELECT allowed, denied_by, denied_metric, quota_id, remaining, usage_id FROM quota_ext.meter_consume(%s, 'gpu_hours', 6)$$, :ta),
	format($$VALUES (false, 'quota'::text, 'units'::text, %s::bigint, 5::bigint, NULL::bigint)$$, :qgpud),
	'past the daily quota: denied by it');
SELECT results_eq(format($$SELECT meter, used FROM quota_ext.meter_status(%s) WHERE meter = 'gpu_hours' ORDER BY quota_id$$, :ta),
	$$VALUES ('gpu_hours'::text, 25::bigint), ('gpu_hours', 25)$$,
	'... and the monthly quota, which had room, was not charged either (all or nothing)');
SELECT is((SELECT sum(amount) FROM quota_ext.meter_usage WHERE tenant_id = :ta), 25::numeric, 'one ledger row: used = sum(usage)');
SELECT results_eq(format($$SELECT allowed, remaining FROM quota_ext.meter_consume(%s, 'api_requests', 50)$$, :ta),
	$$VALUES (true, 0::bigint)$$, 'another meter has its own quota: exactly the limit is admitted');
SELECT results_eq(format($$SELECT allowed, remaining FROM quota_ext.meter_consume(%s, 'api_requests', 1)$$, :ta),
	$$VALUES (false, 0::bigint)$$, '... and one more is not');
SELECT results_eq(format($$SELECT allowed FROM quota_ext.meter_consume(%s, 'api_requests', 0)$$, :ta),
	$$VALUES (true)$$, 'an amount of 0 at the limit passes');
SELECT results_eq(format($$SELECT allowed, remaining FROM quota_ext.quota_consume(%s, 'mt-model', 7)$$, :ta),
	$$VALUES (true, 993::bigint)$$, 'the model-call quota is untouched by the meters');
SELECT is((SELECT count(*) FROM quota_test.violations()), 0::bigint, 'the invariant holds (counters = ledger, levels = ledger)');

-- per user
SELECT user_id AS u1 FROM quota_ext.user_create(:ta, 'u1@mt.example') \gset
\o /dev/null
SELECT quota_ext.quota_set(:ta, 'monthly', 3, meter => 'gpu_hours', user_id => :u1);
\o
SELECT results_eq(format($$SELECT allowed, "limit", remaining, user_id FROM quota_ext.meter_consume(%s, 'gpu_hours', 2, user_id => %s)$$, :ta, :u1),
	format($$VALUES (true, 3::bigint, 1::bigint, %s::bigint)$$, :u1), 'a user''s meter quota');
SELECT results_eq(format($$SELECT allowed, "limit" FROM quota_ext.meter_consume(%s, 'gpu_hours', 2, user_id => %s)$$, :ta, :u1),
	$$VALUES (false, 3::bigint)$$, '... denies that user past it');
SELECT results_eq(format($$SELECT allowed FROM quota_ext.meter_consume(%s, 'gpu_hours', 2)$$, :ta),
	$$VALUES (true)$$, '... and not the tenant''s other calls');

-- idempotency: one ledger row per key, the replay answers the same
SELECT results_eq(format($$SELECT allowed, replayed FROM quota_ext.meter_consume(%s, 'gpu_hours', 1, 'idem-1')$$, :ta),
	$$VALUES (true, false)$$, 'meter_consume with an idempotency key');
SELECT results_eq(format($$SELECT allowed, replayed FROM quota_ext.meter_consume(%s, 'gpu_hours', 1, 'idem-1')$$, :ta),
	$$VALUES (true, true)$$, '... replayed');
SELECT is((SELECT count(*) FROM quota_ext.meter_usage WHERE tenant_id = :ta AND idempotency_key = 'idem-1'), 1::bigint,
	'... one ledger row for the key');
SELECT pg_temp.mx_snap();
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.meter_consume(%s, 'gpu_hours', 2, 'idem-1')$$, :ta), '22023',
	'idempotency key "idem-1" was used with other parameters', 'meter_consume: a key reused for another amount');

-- bad input
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.meter_consume(%s, 'no_such', 1)$$, :ta), '42704',
	'meter "no_such" does not exist', 'meter_consume: unknown meter');
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.meter_consume(%s, 'gpu_hours', -1)$$, :ta), '22023',
	'amount must not be negative', 'meter_consume: negative amount');
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.meter_consume(%s, 'storage_gb', 1)$$, :ta), '22023',
	'meter "storage_gb" is a gauge', 'meter_consume: a gauge');
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.meter_consume(%s, 'gpu_hours', NULL)$$, :ta), '22004',
	'argument "amount" must not be null', 'meter_consume: NULL amount');
SELECT * FROM pg_temp.mx_throws($$SELECT quota_ext.meter_consume(999999999, 'gpu_hours', 1)$$, '42704',
	'tenant 999999999 does not exist', 'meter_consume: unknown tenant');
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.quota_set(%s, 'monthly', 5, 'mt-model', meter => 'gpu_hours')$$, :ta), '22023',
	'a meter quota counts units of its meter, tenant-wide or for one user', 'quota_set: a meter quota with a model');
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.quota_set(%s, 'monthly', 5, on_exceed => 'throttle')$$, :ta), '22004',
	'argument "throttle_per_minute" must not be null', 'quota_set: a throttled model-call quota needs its rate too');
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.quota_set(%s, 'monthly', 5, meter => 'gpu_hours', on_exceed => 'throttle')$$, :ta), '22004',
	'argument "throttle_per_minute" must not be null', 'quota_set: throttle without a rate');

-- ---------------------------------------------------------------------------
-- gauges: a level, up and down, never below 0 nor above a blocking limit
-- ---------------------------------------------------------------------------
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.quota_set(%s, 'monthly', 5, meter => 'storage_gb')$$, :ta), '22023',
	'a gauge never resets: its quota has period lifetime', 'quota_set: a gauge quota with a period');
SELECT quota_ext.quota_set(:ta, 'lifetime', 10, meter => 'storage_gb') AS qst \gset
SELECT results_eq(format($$SELECT allowed, quota_id, "limit", remaining FROM quota_ext.gauge_adjust(%s, 'storage_gb', 7)$$, :ta),
	format($$VALUES (true, %s::bigint, 10::bigint, 3::bigint)$$, :qst), 'gauge_adjust up');
SELECT results_eq(format($$SELECT allowed, denied_by, denied_metric, remaining FROM quota_ext.gauge_adjust(%s, 'storage_gb', 4)$$, :ta),
	$$VALUES (false, 'quota'::text, 'gauge'::text, 3::bigint)$$, 'past the limit: denied, denied_metric gauge');
SELECT results_eq(format($$SELECT allowed, remaining FROM quota_ext.gauge_adjust(%s, 'storage_gb', 3)$$, :ta),
	$$VALUES (true, 0::bigint)$$, 'exactly to the limit');
SELECT results_eq(format($$SELECT allowed, remaining FROM quota_ext.gauge_adjust(%s, 'storage_gb', -6)$$, :ta),
	$$VALUES (true, 6::bigint)$$, 'down again (a gauge never resets, it goes down)');
SELECT pg_temp.mx_snap();
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.gauge_adjust(%s, 'storage_gb', -5)$$, :ta), '22003',
	format('gauge "storage_gb" of tenant %s cannot go below 0', :ta), 'gauge_adjust below 0');
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.gauge_adjust(%s, 'gpu_hours', 1)$$, :ta), '22023',
	'meter "gpu_hours" is a counter', 'gauge_adjust: a counter');
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.gauge_adjust(%s, 'users', 1)$$, :ta), '22023',
	'gauge "users" follows user_create and user_remove', 'gauge_adjust: the built-in users');
SELECT results_eq(format($$SELECT meter, "limit", used, remaining FROM quota_ext.meter_status(%s) WHERE kind = 'gauge'$$, :ta),
	$$VALUES ('storage_gb'::text, 10::bigint, 4::bigint, 6::bigint), ('users', NULL, 1, NULL)$$,
	'meter_status: the levels of the gauges');
SELECT results_eq(format($$SELECT allowed, replayed FROM quota_ext.gauge_adjust(%s, 'storage_gb', 2, 'g-1') UNION ALL
                           SELECT allowed, replayed FROM quota_ext.gauge_adjust(%s, 'storage_gb', 2, 'g-1')$$, :ta, :ta),
	$$VALUES (true, false), (true, true)$$, 'gauge_adjust with an idempotency key moves once');
SELECT is((SELECT level FROM quota_ext.meter_levels l JOIN quota_ext.meters m USING (meter_id)
            WHERE l.tenant_id = :ta AND m.name = 'storage_gb'), 6::bigint, '... the level is 6');

-- ---------------------------------------------------------------------------
-- the built-in gauge users
-- ---------------------------------------------------------------------------
SELECT user_id AS u2 FROM quota_ext.user_create(:ta, 'u2@mt.example') \gset
SELECT is((SELECT used FROM quota_ext.meter_status(:ta) WHERE meter = 'users'), 2::bigint, 'user_create moves the users gauge');
\o /dev/null
SELECT quota_ext.user_remove(:ta, :u1);
SELECT quota_ext.user_remove(:ta, :u1);
\o
SELECT is((SELECT used FROM quota_ext.meter_status(:ta) WHERE meter = 'users'), 1::bigint, 'user_remove moves it back (once)');
\o /dev/null
SELECT quota_ext.quota_set(:ta, 'lifetime', 2, meter => 'users');
SELECT quota_ext.user_create(:ta, 'u3@mt.example');
\o
SELECT pg_temp.mx_snap();
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.user_create(%s, 'u4@mt.example')$$, :ta), '53400',
	format('tenant %s has 2 users, the most its quota on users allows', :ta), 'a quota on users caps user_create');
SELECT results_eq(format($$SELECT "limit", used FROM quota_ext.meter_status(%s) WHERE meter = 'users'$$, :ta),
	$$VALUES (2::bigint, 2::bigint)$$, 'meter_status: users against its quota');
\o /dev/null
SELECT quota_ext.tier_set('mt-tier', max_users => 1);
SELECT quota_ext.tenant_create('mt-c', 'mt-tier') AS tc \gset
SELECT quota_ext.user_create(:tc, 'c1@mt.example');
\o
SELECT results_eq(format($$SELECT "limit", used, remaining FROM quota_ext.meter_status(%s) WHERE meter = 'users'$$, :tc),
	$$VALUES (1::bigint, 1::bigint, 0::bigint)$$, 'the users gauge shows the tier''s max_users as its limit');

-- ---------------------------------------------------------------------------
-- throttle: past the limit, admitted at a slower rate, marked as overage
-- ---------------------------------------------------------------------------
SELECT quota_ext.quota_set(:tb, 'monthly', 2, meter => 'api_requests', on_exceed => 'throttle',
                           throttle_per_minute => 1, throttle_burst => 1) AS qthr \gset
SELECT results_eq(format($$SELECT d.allowed FROM generate_series(1, 2) g, LATERAL quota_ext.meter_consume(%s, 'api_requests', 1 + 0 * g) d$$, :tb),
	$$VALUES (true), (true)$$, 'throttle: up to the limit at full speed');
SELECT results_eq(format($$SELECT d.allowed, d.denied_by, d.remaining FROM generate_series(1, 2) g, LATERAL quota_ext.meter_consume(%s, 'api_requests', 1 + 0 * g) d$$, :tb),
	$$VALUES (true, NULL::text, 0::bigint), (true, NULL, 0)$$, 'past it: admitted at the throttled rate (burst 1: two at once)');
SELECT results_eq(format($$SELECT allowed, denied_by, denied_metric, quota_id, retry_after > 0 FROM quota_ext.meter_consume(%s, 'api_requests', 1)$$, :tb),
	format($$VALUES (false, 'throttle'::text, 'units'::text, %s::bigint, true)$$, :qthr),
	'... then denied with a retry_after until the throttle lets the next one through');
SELECT results_eq(format($$SELECT amount, overage FROM quota_ext.meter_usage WHERE tenant_id = %s ORDER BY usage_id$$, :tb),
	$$VALUES (1::bigint, 0::bigint), (1, 0), (1, 1), (1, 1)$$, 'the calls past the limit are marked as overage in the ledger');

-- alert and overage quotas never deny
\o /dev/null
SELECT quota_ext.quota_set(:tb, 'daily', 1, meter => 'gpu_hours', on_exceed => 'overage');
\o
SELECT results_eq(format($$SELECT allowed, remaining FROM quota_ext.meter_consume(%s, 'gpu_hours', 5)$$, :tb),
	$$VALUES (true, 0::bigint)$$, 'an overage meter quota admits past its limit');

-- quota_delete removes a meter quota
SELECT lives_ok(format('SELECT quota_ext.quota_delete(%s, %s)', :ta, :qreq), 'quota_delete of a meter quota');
SELECT results_eq(format($$SELECT allowed FROM quota_ext.meter_consume(%s, 'api_requests', 1000)$$, :ta),
	$$VALUES (true)$$, '... the meter then has no limit');

-- ---------------------------------------------------------------------------
-- security: the app's context sees its own rows; the admin creates meters
-- ---------------------------------------------------------------------------
SELECT is((SELECT count(*) FROM quota_test.violations()), 0::bigint, 'the invariant still holds');
SET LOCAL ROLE quota_ext_admin;
SELECT quota_ext.set_tenant(:tb) \gset
SELECT is((SELECT count(*) FROM quota_ext.meter_usage WHERE tenant_id <> :tb), 0::bigint, 'RLS: in B''s context no other tenant''s meter rows');
SELECT is((SELECT count(*) FROM quota_ext.meter_quotas WHERE tenant_id <> :tb), 0::bigint, '... nor meter quotas');
SELECT throws_ok($$SELECT quota_ext.meter_create('x_meter')$$, '42501', NULL, 'meter_create is refused inside a tenant context');
SELECT throws_ok(format($$SELECT quota_ext.meter_consume(%s, 'gpu_hours', 1)$$, :ta), '42704', NULL,
	'B''s context cannot charge A''s meter');
RESET ROLE;
SET LOCAL ROLE quota_ext_app;
SELECT throws_ok($$SELECT quota_ext.meter_create('x_meter')$$, '42501', NULL, 'the app cannot create meters');
RESET ROLE;

-- an API key acts as its own user only (an attacker's review: a member's key
-- charged another user's quota, or escaped its own by leaving user_id NULL)
\o /dev/null
SELECT quota_ext.clear_tenant();
SELECT quota_ext.quota_set(:ta, 'lifetime', 100, meter => 'users');
SELECT quota_ext.meter_create('mt_seat_hours', 'hours');
SELECT api_key AS k_alice, user_id AS alice FROM quota_ext.user_create(:ta, 'alice@mt.example') \gset
SELECT user_id AS bob FROM quota_ext.user_create(:ta, 'bob@mt.example') \gset
SELECT quota_ext.quota_set(:ta, 'monthly', 10, meter => 'mt_seat_hours', user_id => :alice);
SELECT quota_ext.quota_set(:ta, 'monthly', 10, meter => 'mt_seat_hours', user_id => :bob);
\o
SET LOCAL ROLE quota_ext_app;
SELECT is((SELECT tenant_id FROM quota_ext.authenticate(:'k_alice')), :ta::bigint, 'alice authenticates');
SELECT results_eq(format($$SELECT allowed, user_id, "limit" FROM quota_ext.meter_consume(%s, 'mt_seat_hours', 1000)$$, :ta),
	format($$VALUES (false, %s::bigint, 10::bigint)$$, :alice),
	'without user_id the key''s user is charged: its own quota applies (failed before: allowed, no user)');
SELECT throws_ok(format($$SELECT quota_ext.meter_consume(%s, 'mt_seat_hours', 10, user_id => %s)$$, :ta, :bob), '42501',
	'an API key''s transaction cannot act as another user, key or role', 'a key cannot charge another user''s quota (failed before)');
SELECT throws_ok(format($$SELECT quota_ext.meter_consume(%s, 'mt_seat_hours', 1, key_id => 987654321)$$, :ta), '42501',
	'an API key''s transaction cannot act as another user, key or role', 'nor name another key');
SELECT results_eq(format($$SELECT allowed, user_id FROM quota_ext.meter_consume(%s, 'mt_seat_hours', 1, user_id => %s)$$, :ta, :alice),
	format($$VALUES (true, %s::bigint)$$, :alice), 'naming its own user is fine');
SELECT is((SELECT user_id FROM quota_ext.meter_usage WHERE tenant_id = :ta ORDER BY usage_id DESC LIMIT 1), :alice::bigint,
	'the ledger row names the key''s user');
SELECT throws_ok(format($$SELECT quota_ext.meter_consume(%s, 'mt_seat_hours', 1000000000000001)$$, :ta), '22003', NULL,
	'an amount over 10^15 is refused (22003)');
SELECT results_eq(format($$SELECT allowed FROM quota_ext.gauge_adjust(%s, 'storage_gb', 0)$$, :ta), $$VALUES (true)$$, 'gauge_adjust by a key');
\o /dev/null
SELECT quota_ext.clear_tenant();
\o
RESET ROLE;
SELECT is((SELECT user_id FROM quota_ext.meter_usage WHERE tenant_id = :ta ORDER BY usage_id DESC LIMIT 1), :alice::bigint,
	'gauge_adjust''s ledger row names the key''s user (failed before: NULL)');

SELECT * FROM finish();
ROLLBACK;
