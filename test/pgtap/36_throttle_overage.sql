-- Issue 17: on_exceed => 'throttle' on ordinary quotas (calls and units of
-- a tenant, model, user or key): past the limit, calls pass at
-- throttle_per_minute (burst throttle_burst) by GCRA, charged as overage,
-- and above that rate are denied with denied_by 'throttle'.  And the
-- decision's overage column: how many units of an allowed call went past a
-- non-blocking limit (quota_consume, quota_check, meter_consume,
-- gauge_adjust, replays).  Every assertion here failed on main (quota_set
-- refused throttle with 22023; the decision had no overage).
BEGIN;
\ir metering_helpers.psql
\i test/invariant.sql
SELECT plan(60);

\o /dev/null
SELECT quota_ext.tenant_create('th-a', 'enterprise') AS ta \gset
SELECT quota_ext.tenant_create('th-b', 'enterprise') AS tb \gset
SELECT quota_ext.model_register('th-chat');
SELECT quota_ext.policy_set(:ta, 'th-chat', true);
SELECT quota_ext.policy_set(:tb, 'th-chat', true);
\o

-- ---------------------------------------------------------------------------
-- quota_set
-- ---------------------------------------------------------------------------
SELECT quota_ext.quota_set(:ta, 'monthly', 2, 'th-chat', on_exceed => 'throttle',
                           throttle_per_minute => 1, throttle_burst => 1) AS qt \gset
SELECT results_eq(format($$SELECT on_exceed, throttle_per_minute, throttle_burst, slots FROM quota_ext.quotas WHERE tenant_id = %s AND quota_id = %s$$, :ta, :qt),
	$$VALUES ('throttle'::text, 1, 1, 1)$$, 'quota_set: a model-call quota throttled past its limit (main: 22023)');
SELECT pg_temp.mx_snap();
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.quota_set(%s, 'daily', 5, on_exceed => 'throttle')$$, :ta), '22004',
	'argument "throttle_per_minute" must not be null', 'quota_set: throttle without a rate');
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.quota_set(%s, 'daily', 5, throttle_per_minute => 10)$$, :ta), '22023',
	'throttle_per_minute and throttle_burst apply only to on_exceed => ''throttle''', 'quota_set: a rate without throttle');
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.quota_set(%s, 'daily', 5, on_exceed => 'throttle', throttle_per_minute => 0)$$, :ta), '22023',
	'throttle_per_minute must be positive, throttle_burst not negative and refilled within a day', 'quota_set: a zero rate');
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.quota_set(%s, 'daily', 5, on_exceed => 'throttle', throttle_per_minute => 1, throttle_burst => 1440)$$, :ta), '22023',
	'throttle_per_minute must be positive, throttle_burst not negative and refilled within a day', 'quota_set: a burst that takes over a day to refill');
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.quota_set(%s, 'daily', max_cost => 5, currency => 'USD', on_exceed => 'throttle', throttle_per_minute => 1)$$, :ta), '22023',
	'a cost quota cannot be throttled', 'quota_set: a throttled money budget');
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.quota_set(%s, 'daily', 5, on_exceed => 'throttle', throttle_per_minute => 1, slots => 4)$$, :ta), '22023',
	'only blocking quotas can have escrow slots', 'quota_set: a throttled quota takes no escrow slots');

-- ---------------------------------------------------------------------------
-- consuming past the limit
-- ---------------------------------------------------------------------------
SELECT results_eq(format($$SELECT d.allowed, d.overage FROM generate_series(1, 2) g, LATERAL quota_ext.quota_consume(%s, 'th-chat', 1 + 0 * g) d$$, :ta),
	$$VALUES (true, 0::bigint), (true, 0::bigint)$$, 'up to the limit at full speed, overage 0');
SELECT results_eq(format($$SELECT d.allowed, d.denied_by, d.overage, d.remaining FROM generate_series(1, 2) g, LATERAL quota_ext.quota_consume(%s, 'th-chat', 1 + 0 * g) d$$, :ta),
	$$VALUES (true, NULL::text, 1::bigint, 0::bigint), (true, NULL, 1, 0)$$,
	'past it: admitted at the throttled rate (burst 1: two at once), each marked as 1 unit of overage');
SELECT results_eq(format($$SELECT allowed, denied_by, denied_metric, quota_id, period, "limit", remaining, retry_after > 0, usage_id, overage FROM quota_ext.quota_consume(%s, 'th-chat')$$, :ta),
	format($$VALUES (false, 'throttle'::text, 'calls'::text, %s::bigint, 'monthly'::text, 2::bigint, 0::bigint, true, NULL::bigint, NULL::bigint)$$, :qt),
	'then denied by the throttle, with a retry_after until it lets the next call through');
SELECT results_eq(format($$SELECT allowed, denied_by FROM quota_ext.quota_check(%s, 'th-chat')$$, :ta),
	$$VALUES (false, 'throttle'::text)$$, 'quota_check answers the same');
SELECT results_eq(format($$SELECT units, overage_units FROM quota_ext.usage WHERE tenant_id = %s ORDER BY usage_id$$, :ta),
	$$VALUES (1::bigint, 0::bigint), (1, 0), (1, 1), (1, 1)$$, 'the ledger: the calls past the limit carry their overage');
SELECT results_eq(format($$SELECT used FROM quota_ext.quota_counters WHERE tenant_id = %s AND quota_id = %s$$, :ta, :qt),
	$$VALUES (4::bigint)$$, 'the counter counts every admitted call, past the limit too');
SELECT results_eq(format($$SELECT on_exceed, "limit", used, remaining FROM quota_ext.quota_status(%s) WHERE quota_id = %s$$, :ta, :qt),
	$$VALUES ('throttle'::text, 2::bigint, 4::bigint, 0::bigint)$$, 'quota_status shows the throttled quota past its limit');
SELECT is((SELECT count(*) FROM quota_test.violations()), 0::bigint, 'used = sum(usage): the invariant holds');
SELECT throws_ok(format($$SELECT quota_ext.quota_consume_or_raise(%s, 'th-chat')$$, :ta), '53400',
	'monthly quota of tenant ' || :ta || ' is past its limit and throttled', 'the raising variant: 53400, its own message');
SELECT is((SELECT count(*) FROM quota_ext.usage WHERE tenant_id = :ta), 4::bigint, 'a throttled call charges nothing');

-- a denial by a blocking quota of the same call takes no throttle token
\o /dev/null
SELECT quota_ext.quota_set(:tb, 'monthly', 1, on_exceed => 'throttle', throttle_per_minute => 1, throttle_burst => 0) AS qtb \gset
SELECT quota_ext.quota_set(:tb, 'daily', 3, 'th-chat', 'units') AS qbl \gset
\o
SELECT results_eq(format($$SELECT allowed, overage FROM quota_ext.quota_consume(%s, 'th-chat')$$, :tb),
	$$VALUES (true, 0::bigint)$$, 'B: the first call within both limits');
SELECT results_eq(format($$SELECT allowed, denied_by, quota_id FROM quota_ext.quota_consume(%s, 'th-chat', 5)$$, :tb),
	format($$VALUES (false, 'quota'::text, %s::bigint)$$, :qbl), 'B: past the throttled quota but denied by a blocking one');
SELECT results_eq(format($$SELECT allowed, overage FROM quota_ext.quota_consume(%s, 'th-chat')$$, :tb),
	$$VALUES (true, 1::bigint)$$, '... which took no throttle token: the next call past the limit still passes (burst 0: one)');
SELECT results_eq(format($$SELECT allowed, denied_by, quota_id FROM quota_ext.quota_consume(%s, 'th-chat')$$, :tb),
	format($$VALUES (false, 'throttle'::text, %s::bigint)$$, :qtb), '... and the one after it is throttled');

-- ---------------------------------------------------------------------------
-- the decision's overage
-- ---------------------------------------------------------------------------
SELECT is((SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ' ORDER BY attnum) FROM pg_attribute
            WHERE attrelid = 'quota_ext.decision'::regclass AND attnum > 18),
	'overage bigint', 'decision.overage comes last (the other columns keep their places)');
\o /dev/null
SELECT quota_ext.tenant_create('th-c', 'enterprise') AS tc \gset
SELECT quota_ext.policy_set(:tc, 'th-chat', true);
SELECT quota_ext.quota_set(:tc, 'monthly', 10, 'th-chat', 'units', on_exceed => 'overage') AS qov \gset
SELECT quota_ext.quota_set(:tc, 'monthly', 100, on_exceed => 'alert');
\o
SELECT results_eq(format($$SELECT allowed, overage FROM quota_ext.quota_consume(%s, 'th-chat', 8)$$, :tc),
	$$VALUES (true, 0::bigint)$$, 'within the limit: overage 0');
SELECT results_eq(format($$SELECT allowed, overage FROM quota_ext.quota_check(%s, 'th-chat', 5)$$, :tc),
	$$VALUES (true, 3::bigint)$$, 'quota_check: 3 of 5 units would go over');
SELECT results_eq(format($$SELECT allowed, overage FROM quota_ext.quota_consume(%s, 'th-chat', 5, idempotency_key => 'ov-1')$$, :tc),
	$$VALUES (true, 3::bigint)$$, 'quota_consume past an overage limit: 3 of 5 units over');
SELECT results_eq(format($$SELECT allowed, overage, replayed FROM quota_ext.quota_consume(%s, 'th-chat', 5, idempotency_key => 'ov-1')$$, :tc),
	$$VALUES (true, 3::bigint, true)$$, 'a replay answers the same overage');
SELECT results_eq(format($$SELECT allowed, overage FROM quota_ext.quota_consume(%s, 'th-chat', 4)$$, :tc),
	$$VALUES (true, 4::bigint)$$, 'all 4 over once past the limit');
SELECT results_eq(format($$SELECT overage_units FROM quota_ext.usage WHERE tenant_id = %s ORDER BY usage_id$$, :tc),
	$$VALUES (0::bigint), (3), (4)$$, 'the ledger agrees with the decisions');
SELECT results_eq(format($$SELECT allowed, overage FROM quota_ext.quota_consume(%s, 'th-chat', 1000)$$, :ta),
	$$VALUES (false, NULL::bigint)$$, 'a denied call: overage NULL');

-- meters
\o /dev/null
SELECT quota_ext.meter_create('th_gpu', 'hours');
SELECT quota_ext.meter_create('th_disk', 'GB', 'gauge');
SELECT quota_ext.quota_set(:tc, 'monthly', 10, meter => 'th_gpu', on_exceed => 'overage');
SELECT quota_ext.quota_set(:tc, 'lifetime', 10, meter => 'th_disk', on_exceed => 'alert');
\o
SELECT results_eq(format($$SELECT allowed, overage FROM quota_ext.meter_consume(%s, 'th_gpu', 6)$$, :tc),
	$$VALUES (true, 0::bigint)$$, 'meter_consume within the limit: overage 0');
SELECT results_eq(format($$SELECT allowed, overage FROM quota_ext.meter_consume(%s, 'th_gpu', 6, idempotency_key => 'mg-1')$$, :tc),
	$$VALUES (true, 2::bigint)$$, 'meter_consume past an overage limit: 2 of 6 over');
SELECT results_eq(format($$SELECT overage, replayed FROM quota_ext.meter_consume(%s, 'th_gpu', 6, idempotency_key => 'mg-1')$$, :tc),
	$$VALUES (2::bigint, true)$$, '... and its replay');
SELECT results_eq(format($$SELECT allowed, overage FROM quota_ext.gauge_adjust(%s, 'th_disk', 12)$$, :tc),
	$$VALUES (true, 2::bigint)$$, 'gauge_adjust past an alerting limit: 2 over');
SELECT results_eq(format($$SELECT allowed, overage FROM quota_ext.gauge_adjust(%s, 'th_disk', -12)$$, :tc),
	$$VALUES (true, 0::bigint)$$, 'going down: overage 0');

-- a throttled meter quota's denial names the throttle too
\o /dev/null
SELECT quota_ext.meter_create('th_req');
SELECT quota_ext.quota_set(:tc, 'monthly', 0, meter => 'th_req', on_exceed => 'throttle', throttle_per_minute => 1) AS qmt \gset
\o
SELECT results_eq(format($$SELECT d.allowed, d.denied_by, d.overage FROM generate_series(1, 2) g, LATERAL quota_ext.meter_consume(%s, 'th_req', 1 + 0 * g) d$$, :tc),
	$$VALUES (true, NULL::text, 1::bigint), (false, 'throttle', NULL)$$, 'meter_consume: throttled past the limit, then denied_by throttle');
-- ---------------------------------------------------------------------------
-- meter quotas in quota_status and tenant_summary
-- ---------------------------------------------------------------------------
SELECT results_eq(format($$SELECT meter, meter_kind, metric, period, "limit", used, period_start IS NOT NULL, requests FROM quota_ext.quota_status(%s) WHERE meter IS NOT NULL$$, :tc),
	$$VALUES ('th_gpu'::text, 'counter'::text, 'units'::text, 'monthly'::text, 10::bigint, 12::bigint, true, 2::bigint),
	         ('th_disk', 'gauge', 'gauge', 'lifetime', 10, 0, false, NULL),
	         ('th_req', 'counter', 'units', 'monthly', 0, 1, true, 1)$$,
	'quota_status lists the meter quotas: meter, kind, used or level, limit, period start, requests (main: none)');
SELECT is((SELECT count(*) FROM quota_ext.quota_status(:tc) WHERE meter IS NULL), 2::bigint, '... after the model-call quotas');
SELECT is((SELECT count(*) FROM quota_ext.quota_status(:tc, 'th-chat') WHERE meter IS NOT NULL), 0::bigint,
	'quota_status for a model: no meter quotas (they do not apply to model calls)');
SELECT results_eq(format($$SELECT e->>'meter', e->>'meter_kind', (e->>'used')::bigint, (e->>'limit')::bigint, e ? 'period_start' FROM jsonb_array_elements(quota_ext.tenant_summary(%s)->'quotas') e WHERE e ? 'meter'$$, :tc),
	$$VALUES ('th_gpu'::text, 'counter'::text, 12::bigint, 10::bigint, true), ('th_disk', 'gauge', 0, 10, false), ('th_req', 'counter', 1, 0, true)$$,
	'tenant_summary lists them too');
-- ---------------------------------------------------------------------------
-- SECURITY.md finding 9: lowering a gauge from a key-authenticated context
-- takes a tenant admin's key
-- ---------------------------------------------------------------------------
\o /dev/null
SELECT quota_ext.gauge_adjust(:tc, 'th_disk', 5);
SELECT api_key AS k_mem FROM quota_ext.user_create(:tc, 'mem@th.example') \gset
SELECT api_key AS k_adm FROM quota_ext.user_create(:tc, 'adm@th.example', 'admin') \gset
\o
SET LOCAL ROLE quota_ext_app;
SELECT is((SELECT tenant_id FROM quota_ext.authenticate(:'k_mem')), :tc::bigint, 'a member authenticates');
SELECT throws_ok(format($$SELECT quota_ext.gauge_adjust(%s, 'th_disk', -1)$$, :tc), '42501',
	'permission denied for gauge_adjust() with a negative delta', 'a member''s key cannot lower a gauge (failed before: allowed)');
SELECT results_eq(format($$SELECT allowed FROM quota_ext.gauge_adjust(%s, 'th_disk', 1)$$, :tc),
	$$VALUES (true)$$, '... but may raise it');
\o /dev/null
SELECT quota_ext.clear_tenant();
SELECT quota_ext.authenticate(:'k_adm');
\o
SELECT results_eq(format($$SELECT allowed FROM quota_ext.gauge_adjust(%s, 'th_disk', -2)$$, :tc),
	$$VALUES (true)$$, 'a tenant admin''s key may lower it');
\o /dev/null
SELECT quota_ext.clear_tenant();
\o
RESET ROLE;
SELECT results_eq(format($$SELECT level FROM quota_ext.meter_levels l JOIN quota_ext.meters m USING (meter_id) WHERE l.tenant_id = %s AND m.name = 'th_disk'$$, :tc),
	$$VALUES (4::bigint)$$, 'the level: 5 + 1 - 2');

-- ---------------------------------------------------------------------------
-- SECURITY.md finding 10: meter_usage_purge, the meters' ledger retention
-- ---------------------------------------------------------------------------
\o /dev/null
SELECT quota_ext.meter_create('th_old');
SELECT quota_ext.meter_create('th_life');
SELECT quota_ext.quota_set(:tc, 'lifetime', 1000, meter => 'th_life');
INSERT INTO quota_ext.meter_usage (tenant_id, meter_id, occurred_at, created_at, amount, idempotency_key)
SELECT :tc, meter_id, now() - interval '400 days', now() - interval '400 days', 3, 'old-' || name
  FROM quota_ext.meters WHERE name IN ('th_old', 'th_life');
INSERT INTO quota_ext.meter_usage (tenant_id, meter_id, occurred_at, created_at, amount)
SELECT :tc, meter_id, now() - interval '10 days', now() - interval '10 days', 4 FROM quota_ext.meters WHERE name = 'th_old';
INSERT INTO quota_ext.idempotency_keys (tenant_id, idempotency_key, op, model, units, allowed, created_at)
VALUES (:tc, 'old-th_old', 'meter_consume', 'th_old', 3, true, now() - interval '400 days'),
       (:tc, 'old-th_life', 'meter_consume', 'th_life', 3, true, now() - interval '400 days');
\o
SELECT is(quota_ext.meter_usage_purge(), 1::bigint,
	'meter_usage_purge: the rows past the tier''s retention (enterprise: 365 days) that no quota counts');
SELECT results_eq(format($$SELECT m.name, u.amount FROM quota_ext.meter_usage u JOIN quota_ext.meters m USING (meter_id) WHERE u.tenant_id = %s AND m.name IN ('th_old', 'th_life') ORDER BY u.usage_id$$, :tc),
	$$VALUES ('th_life'::text, 3::bigint), ('th_old', 4)$$,
	'... kept: a row within the retention, and a row of a meter with a lifetime quota');
SELECT results_eq(format($$SELECT idempotency_key FROM quota_ext.idempotency_keys WHERE tenant_id = %s AND idempotency_key LIKE 'old-%%'$$, :tc),
	$$VALUES ('old-th_life'::text)$$, '... and the purged row''s idempotency key went with it');
SET LOCAL ROLE quota_ext_app;
SELECT throws_ok($$SELECT quota_ext.meter_usage_purge()$$, '42501', NULL, 'the app cannot purge the meters'' ledger');
RESET ROLE;
SELECT is((SELECT count(*) FROM quota_test.violations()), 0::bigint, 'the invariant still holds');

-- changing a throttled quota back to blocking denies past the limit again
-- (after the invariant: B's quota is then a blocking one past its limit)
\o /dev/null
SELECT quota_ext.quota_set(:tb, 'monthly', 1);
\o
SELECT results_eq(format($$SELECT allowed, denied_by, throttle_per_minute FROM quota_ext.quota_consume(%s, 'th-chat'), quota_ext.quotas q WHERE q.tenant_id = %s AND q.quota_id = %s$$, :tb, :tb, :qtb),
	$$VALUES (false, 'quota'::text, NULL::integer)$$, 'quota_set back to block: the throttle is gone');

-- at most 8 throttled quotas per tenant: a call checks all its throttles at
-- once in a fixed array (main: the ninth made every call past the limits fail
-- with an internal error, XX000)
\o /dev/null
SELECT quota_ext.tenant_create('th-many', 'enterprise') AS tm \gset
SELECT quota_ext.quota_set(:tm, p, 1, on_exceed => 'throttle', throttle_per_minute => 1)
  FROM unnest(ARRAY['minute', 'hourly', 'daily', 'weekly', 'monthly', 'annual', 'total']) p;
SELECT quota_ext.quota_set(:tm, 'daily', 1, metric => 'units', on_exceed => 'throttle', throttle_per_minute => 1);
\o
SELECT pg_temp.mx_snap();
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.quota_set(%s, 'monthly', 1, metric => 'units', on_exceed => 'throttle', throttle_per_minute => 1)$$, :tm), '54000',
	format('tenant %s has 8 throttled quotas already', :tm), 'quota_set: a ninth throttled quota of a tenant');
SELECT lives_ok(format($$SELECT quota_ext.quota_set(%s, 'daily', 2, metric => 'units', on_exceed => 'throttle', throttle_per_minute => 2)$$, :tm),
	'... changing one of the eight is allowed');
SELECT is((SELECT count(*) FROM quota_ext.quotas WHERE tenant_id = :tm AND on_exceed = 'throttle'), 8::bigint, '... and the tenant keeps 8');

SELECT * FROM finish();
ROLLBACK;
