-- Threshold and soft-limit events of meter quotas (doc/metering.md §7):
-- quota_set(meter => ...) takes thresholds and soft_limit like a units
-- quota; meter_consume (counters) and gauge_adjust (gauges) emit a row of
-- quota_events, NOTIFY quota_ext_events and an outbox event when a charge
-- crosses one, once per quota, period, kind and threshold, and nothing
-- when it does not, when it is denied or when it rolls back.  The NOTIFY
-- payload and two concurrent crossings: test/specs/meter_events.spec.
-- Every event assertion here fails on main (meter quotas had no events).
BEGIN;
\ir metering_helpers.psql
\i test/invariant.sql
SELECT plan(61);

\o /dev/null
SELECT quota_ext.tenant_create('me-a', 'enterprise') AS ta \gset
SELECT quota_ext.meter_create('ev_gpu', 'hours');
SELECT quota_ext.meter_create('ev_req');
SELECT quota_ext.meter_create('ev_burst');
SELECT quota_ext.meter_create('ev_disk', 'GB', 'gauge');
SELECT quota_ext.model_register('me-model');
SELECT quota_ext.policy_set(:ta, 'me-model', true);
\o
SELECT (quota_ext.period_bounds('month', 'UTC', clock_timestamp())).period_start AS month_start \gset

-- ---------------------------------------------------------------------------
-- quota_set(meter => ...): thresholds and soft_limit, checked as for any quota
-- ---------------------------------------------------------------------------
SELECT quota_ext.quota_set(:ta, 'monthly', 100, meter => 'ev_gpu') AS qgpu \gset
SELECT results_eq(format($$SELECT thresholds, soft_limit FROM quota_ext.meter_quotas WHERE tenant_id = %s AND quota_id = %s$$, :ta, :qgpu),
	$$VALUES ('{80,100}'::integer[], NULL::bigint)$$, 'a meter quota''s thresholds default to 80 and 100, no soft limit');
SELECT quota_ext.quota_set(:ta, 'daily', 10, meter => 'ev_req', on_exceed => 'alert', soft_limit => 5,
                           thresholds => '{50}') AS qreq \gset
SELECT results_eq(format($$SELECT thresholds, soft_limit FROM quota_ext.meter_quotas WHERE tenant_id = %s AND quota_id = %s$$, :ta, :qreq),
	$$VALUES ('{50}'::integer[], 5::bigint)$$, 'quota_set stores a meter quota''s thresholds and soft_limit');
SELECT pg_temp.mx_snap();
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.quota_set(%s, 'daily', 10, meter => 'ev_req', thresholds => NULL)$$, :ta),
	'22004', 'argument "thresholds" must not be null', 'meter quota: NULL thresholds');
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.quota_set(%s, 'daily', 10, meter => 'ev_req', thresholds => '{0}')$$, :ta),
	'22023', 'thresholds must be percentages from 1 to 1000', 'meter quota: a threshold of 0');
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.quota_set(%s, 'daily', 10, meter => 'ev_req', thresholds => '{1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17}')$$, :ta),
	'22023', 'thresholds must be a list of at most 16 percentages', 'meter quota: 17 thresholds');
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.quota_set(%s, 'daily', 10, meter => 'ev_req', soft_limit => 11)$$, :ta),
	'22023', 'soft_limit must not exceed max_units', 'meter quota: a soft limit over the limit');
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.quota_set(%s, 'daily', 10, meter => 'ev_req', soft_limit => -1)$$, :ta),
	'22023', 'max_units and soft_limit must not be negative', 'meter quota: a negative soft limit');

-- ---------------------------------------------------------------------------
-- a counter meter: 80 and 100 percent of a monthly quota of 100
-- ---------------------------------------------------------------------------
SELECT results_eq(format($$SELECT allowed FROM quota_ext.meter_consume(%s, 'ev_gpu', 79)$$, :ta), $$VALUES (true)$$,
	'79 of 100 charged');
SELECT is((SELECT count(*) FROM quota_ext.quota_events WHERE tenant_id = :ta AND quota_id = :qgpu), 0::bigint,
	'below 80 percent: no event');
SELECT is((SELECT count(*) FROM quota_ext.outbox WHERE tenant_id = :ta), 0::bigint, '... and no outbox event');
-- a crossing rolled back emits nothing
SAVEPOINT s;
SELECT results_eq(format($$SELECT allowed FROM quota_ext.meter_consume(%s, 'ev_gpu', 21)$$, :ta), $$VALUES (true)$$,
	'a charge to 100 (crossing 80 and 100) ...');
ROLLBACK TO SAVEPOINT s;
SELECT is((SELECT count(*) FROM quota_ext.quota_events WHERE tenant_id = :ta), 0::bigint,
	'... rolled back: no event');
SELECT is((SELECT count(*) FROM quota_ext.outbox WHERE tenant_id = :ta), 0::bigint, '... and no outbox event');
SELECT results_eq(format($$SELECT allowed, replayed FROM quota_ext.meter_consume(%s, 'ev_gpu', 1, 'me-idem')$$, :ta),
	$$VALUES (true, false)$$, 'to 80 of 100 (with an idempotency key)');
SELECT results_eq(format($$SELECT kind, threshold, used, "limit", period_start FROM quota_ext.quota_events WHERE tenant_id = %s AND quota_id = %s ORDER BY event_id$$, :ta, :qgpu),
	format($$VALUES ('threshold'::text, 80, 80::bigint, 100::bigint, %L::timestamptz)$$, :'month_start'),
	'crossing 80 percent: one event in the quota''s current period');
SELECT results_eq(format($$SELECT allowed, replayed FROM quota_ext.meter_consume(%s, 'ev_gpu', 1, 'me-idem')$$, :ta),
	$$VALUES (true, true)$$, 'the same call again: replayed');
SELECT is((SELECT count(*) FROM quota_ext.quota_events WHERE tenant_id = :ta AND quota_id = :qgpu), 1::bigint,
	'... charges nothing and emits nothing');
SELECT results_eq(format($$SELECT allowed FROM quota_ext.meter_consume(%s, 'ev_gpu', 19)$$, :ta), $$VALUES (true)$$,
	'to 99 of 100');
SELECT is((SELECT count(*) FROM quota_ext.quota_events WHERE tenant_id = :ta AND quota_id = :qgpu), 1::bigint,
	'between 80 and 100: no new event');
SELECT results_eq(format($$SELECT allowed FROM quota_ext.meter_consume(%s, 'ev_gpu', 1)$$, :ta), $$VALUES (true)$$,
	'to 100 of 100');
SELECT results_eq(format($$SELECT kind, threshold, used, "limit" FROM quota_ext.quota_events WHERE tenant_id = %s AND quota_id = %s ORDER BY event_id$$, :ta, :qgpu),
	$$VALUES ('threshold'::text, 80, 80::bigint, 100::bigint), ('threshold', 100, 100, 100)$$,
	'crossing 100 percent: a second event');
SELECT results_eq(format($$SELECT allowed FROM quota_ext.meter_consume(%s, 'ev_gpu', 1)$$, :ta), $$VALUES (false)$$,
	'past the blocking limit: denied');
SELECT results_eq(format($$SELECT allowed FROM quota_ext.meter_consume(%s, 'ev_gpu', 0)$$, :ta), $$VALUES (true)$$,
	'an amount of 0 at the limit');
SELECT is((SELECT count(*) FROM quota_ext.quota_events WHERE tenant_id = :ta AND quota_id = :qgpu), 2::bigint,
	'a denied call and an amount of 0 emit nothing');

-- the view and the outbox, as for a model-call quota, with the meter
SELECT results_eq(format($$SELECT quota_id, period, metric, model, kind, threshold, used, "limit", meter FROM quota_ext.threshold_events WHERE tenant_id = %s ORDER BY event_id$$, :ta),
	format($$VALUES (%1$s::bigint, 'monthly'::text, 'units'::text, NULL::text, 'threshold'::text, 80, 80::bigint, 100::bigint, 'ev_gpu'::text),
	                (%1$s, 'monthly', 'units', NULL, 'threshold', 100, 100, 100, 'ev_gpu')$$, :qgpu),
	'threshold_events shows a meter quota''s crossings with its period, metric and meter');
SELECT results_eq(format($$SELECT o.event_type, o.object_type, o.object_id, o.payload FROM quota_ext.outbox o WHERE o.tenant_id = %s ORDER BY o.event_id$$, :ta),
	format($$SELECT 'quota.threshold'::text, 'quota'::text, e.quota_id::text,
	                jsonb_build_object('quota_event_id', e.event_id, 'quota_id', e.quota_id, 'period_start', e.period_start,
	                                   'kind', 'threshold', 'threshold', e.threshold, 'used', e.used, 'limit', e."limit",
	                                   'meter', 'ev_gpu')
	           FROM quota_ext.quota_events e WHERE e.tenant_id = %s ORDER BY e.event_id$$, :ta),
	'one outbox event quota.threshold per crossing, its payload naming the event, the numbers and the meter');

-- the same outbox payload as a model-call quota's, plus the meter
\o /dev/null
SELECT quota_ext.quota_set(:ta, 'monthly', 10, 'me-model', 'units');
SELECT quota_ext.quota_consume(:ta, 'me-model', 8);
\o
SELECT is((SELECT array_agg(k ORDER BY k) FROM quota_ext.outbox o, jsonb_object_keys(o.payload) k
            WHERE o.tenant_id = :ta AND o.object_id = :'qgpu' AND o.payload->>'threshold' = '80'),
          (SELECT array_agg(k ORDER BY k) FROM quota_ext.outbox o, jsonb_object_keys(o.payload || '{"meter": ""}') k
            WHERE o.tenant_id = :ta AND o.object_id <> :'qgpu'),
	'a meter quota''s outbox payload has the keys of a model-call quota''s, and meter');
SELECT is((SELECT payload->>'meter' FROM quota_ext.outbox WHERE tenant_id = :ta AND object_id <> :'qgpu'), NULL,
	'... (a model-call quota''s has no meter)');

-- a new period emits again: the quota's count and events moved back to
-- last month, as if they had happened then
UPDATE quota_ext.meter_counters SET period_start = :'month_start'::timestamptz - interval '1 month'
 WHERE tenant_id = :ta AND quota_id = :qgpu;
UPDATE quota_ext.quota_events SET period_start = :'month_start'::timestamptz - interval '1 month'
 WHERE tenant_id = :ta AND quota_id = :qgpu;
UPDATE quota_ext.meter_usage SET occurred_at = occurred_at - interval '1 month'
 WHERE tenant_id = :ta AND meter_id = (SELECT meter_id FROM quota_ext.meters WHERE name = 'ev_gpu');
SELECT results_eq(format($$SELECT allowed, remaining FROM quota_ext.meter_consume(%s, 'ev_gpu', 85)$$, :ta), $$VALUES (true, 15::bigint)$$,
	'in a new period the count starts at 0: 85 of 100');
SELECT results_eq(format($$SELECT threshold, used, period_start FROM quota_ext.quota_events WHERE tenant_id = %s AND quota_id = %s AND period_start = %L ORDER BY event_id$$, :ta, :qgpu, :'month_start'),
	format($$VALUES (80, 85::bigint, %L::timestamptz)$$, :'month_start'),
	'... crossing 80 percent again: an event of the new period');

-- ---------------------------------------------------------------------------
-- soft limit, custom thresholds, several crossings in one call
-- ---------------------------------------------------------------------------
SELECT results_eq(format($$SELECT allowed FROM quota_ext.meter_consume(%s, 'ev_req', 6)$$, :ta), $$VALUES (true)$$,
	'6 of 10 (thresholds {50}, soft limit 5)');
SELECT results_eq(format($$SELECT kind, threshold, used, "limit" FROM quota_ext.quota_events WHERE tenant_id = %s AND quota_id = %s ORDER BY event_id$$, :ta, :qreq),
	$$VALUES ('threshold'::text, 50, 6::bigint, 10::bigint), ('soft_limit', 0, 6, 5)$$,
	'one call crossing 50 percent and the soft limit: both events, the threshold first (as src/events.c)');
SELECT results_eq(format($$SELECT event_type FROM quota_ext.outbox WHERE tenant_id = %s AND object_id = '%s' ORDER BY event_id$$, :ta, :qreq),
	$$VALUES ('quota.threshold'::text), ('quota.soft_limit')$$, '... and the outbox events quota.threshold and quota.soft_limit');
SELECT results_eq(format($$SELECT allowed FROM quota_ext.meter_consume(%s, 'ev_req', 10)$$, :ta), $$VALUES (true)$$,
	'past the alert limit (16 of 10)');
SELECT is((SELECT count(*) FROM quota_ext.quota_events WHERE tenant_id = :ta AND quota_id = :qreq), 2::bigint,
	'... no 100 percent event: the quota''s thresholds are {50}');
SELECT quota_ext.quota_set(:ta, 'monthly', 10, meter => 'ev_burst', on_exceed => 'overage') AS qburst \gset
SELECT results_eq(format($$SELECT allowed, overage FROM quota_ext.meter_consume(%s, 'ev_burst', 12)$$, :ta),
	$$VALUES (true, 2::bigint)$$, 'an overage quota: 0 to 12 of 10 in one call');
SELECT results_eq(format($$SELECT threshold, used FROM quota_ext.quota_events WHERE tenant_id = %s AND quota_id = %s ORDER BY event_id$$, :ta, :qburst),
	$$VALUES (80, 12::bigint), (100, 12)$$, '... crosses 80 and 100: two events');
-- a user's quota: the same
\o /dev/null
SELECT user_id AS uid FROM quota_ext.user_create(:ta, 'carol@me.example') \gset
\o
SELECT quota_ext.quota_set(:ta, 'monthly', 4, meter => 'ev_burst', user_id => :uid, thresholds => '{75}') AS quser \gset
SELECT results_eq(format($$SELECT allowed FROM quota_ext.meter_consume(%s, 'ev_burst', 3, user_id => %s)$$, :ta, :uid),
	$$VALUES (true)$$, 'a user''s charge of 3 of 4');
SELECT results_eq(format($$SELECT quota_id, threshold, used FROM quota_ext.quota_events WHERE tenant_id = %s AND quota_id IN (%s, %s) ORDER BY event_id$$, :ta, :qburst, :quser),
	format($$VALUES (%1$s::bigint, 80, 12::bigint), (%1$s, 100, 12), (%2$s, 75, 3)$$, :qburst, :quser),
	'... crosses the user''s quota''s 75 percent; the tenant-wide one, past its marks, emits nothing more');

-- ---------------------------------------------------------------------------
-- a gauge: its lifetime quota's thresholds, once for good
-- ---------------------------------------------------------------------------
SELECT quota_ext.quota_set(:ta, 'lifetime', 10, meter => 'ev_disk') AS qdisk \gset
SELECT results_eq(format($$SELECT allowed FROM quota_ext.gauge_adjust(%s, 'ev_disk', 7)$$, :ta), $$VALUES (true)$$,
	'a gauge to 7 of 10');
SELECT is((SELECT count(*) FROM quota_ext.quota_events WHERE tenant_id = :ta AND quota_id = :qdisk), 0::bigint,
	'below 80 percent: no event');
SAVEPOINT g;
SELECT results_eq(format($$SELECT allowed FROM quota_ext.gauge_adjust(%s, 'ev_disk', 3)$$, :ta), $$VALUES (true)$$,
	'up to 10 ...');
ROLLBACK TO SAVEPOINT g;
SELECT is((SELECT count(*) FROM quota_ext.quota_events WHERE tenant_id = :ta AND quota_id = :qdisk), 0::bigint,
	'... rolled back: no event');
SELECT results_eq(format($$SELECT allowed FROM quota_ext.gauge_adjust(%s, 'ev_disk', 1)$$, :ta), $$VALUES (true)$$,
	'up to 8');
SELECT results_eq(format($$SELECT allowed FROM quota_ext.gauge_adjust(%s, 'ev_disk', 2)$$, :ta), $$VALUES (true)$$,
	'up to 10');
SELECT results_eq(format($$SELECT allowed FROM quota_ext.gauge_adjust(%s, 'ev_disk', 1)$$, :ta), $$VALUES (false)$$,
	'past the blocking limit: denied');
SELECT results_eq(format($$SELECT quota_id, period, metric, kind, threshold, used, "limit", period_start, meter FROM quota_ext.threshold_events WHERE tenant_id = %s AND quota_id = %s ORDER BY event_id$$, :ta, :qdisk),
	format($$VALUES (%1$s::bigint, 'lifetime'::text, 'gauge'::text, 'threshold'::text, 80, 8::bigint, 10::bigint, '-infinity'::timestamptz, 'ev_disk'::text),
	                (%1$s, 'lifetime', 'gauge', 'threshold', 100, 10, 10, '-infinity', 'ev_disk')$$, :qdisk),
	'crossing 80 and 100 percent of a gauge''s quota: one event each (lifetime: period_start -infinity)');
SELECT results_eq(format($$SELECT d.allowed FROM (VALUES (1, -5), (2, 5)) v (n, delta), LATERAL quota_ext.gauge_adjust(%s, 'ev_disk', v.delta) d ORDER BY v.n$$, :ta),
	$$VALUES (true), (true)$$, 'down to 5 and up to 10 again');
SELECT is((SELECT count(*) FROM quota_ext.quota_events WHERE tenant_id = :ta AND quota_id = :qdisk), 2::bigint,
	'... no new event: once per quota and period, as a model-call quota after a refund');
SELECT is((SELECT count(*) FROM quota_ext.outbox WHERE tenant_id = :ta AND object_id = :'qdisk' AND event_type = 'quota.threshold'
              AND payload->>'meter' = 'ev_disk' AND payload->>'period_start' = '-infinity'), 2::bigint,
	'the gauge''s two outbox events');
-- a gauge's soft limit
\o /dev/null
SELECT quota_ext.meter_create('ev_seats', 'seats', 'gauge');
\o
SELECT quota_ext.quota_set(:ta, 'lifetime', 20, meter => 'ev_seats', on_exceed => 'alert', soft_limit => 3,
                           thresholds => '{200}') AS qseats \gset
SELECT results_eq(format($$SELECT allowed FROM quota_ext.gauge_adjust(%s, 'ev_seats', 3)$$, :ta), $$VALUES (true)$$,
	'a gauge to its soft limit 3');
SELECT results_eq(format($$SELECT o.event_type, o.payload->>'limit', o.payload->>'meter' FROM quota_ext.outbox o WHERE o.tenant_id = %s AND o.object_id = '%s'$$, :ta, :qseats),
	$$VALUES ('quota.soft_limit'::text, '3'::text, 'ev_seats'::text)$$, '... its soft-limit event in the outbox');
SELECT results_eq(format($$SELECT allowed FROM quota_ext.gauge_adjust(%s, 'ev_seats', 37)$$, :ta), $$VALUES (true)$$,
	'up to 40 of 20 (alert)');
SELECT results_eq(format($$SELECT kind, threshold, used FROM quota_ext.quota_events WHERE tenant_id = %s AND quota_id = %s ORDER BY event_id$$, :ta, :qseats),
	$$VALUES ('soft_limit'::text, 0, 3::bigint), ('threshold', 200, 40)$$, '... crosses 200 percent (thresholds up to 1000 percent)');
-- the built-in gauge users
\o /dev/null
SELECT quota_ext.quota_set(:ta, 'lifetime', 5, meter => 'users') AS qusers \gset
SELECT quota_ext.user_create(:ta, 'u' || g || '@me.example') FROM generate_series(1, 3) g;
\o
SELECT results_eq(format($$SELECT threshold, used, meter FROM quota_ext.threshold_events WHERE tenant_id = %s AND quota_id = %s$$, :ta, :qusers),
	$$VALUES (80, 4::bigint, 'users'::text)$$, 'user_create moving the gauge users to 4 of 5 crosses 80 percent');

SELECT is((SELECT count(*) FROM quota_test.violations()), 0::bigint, 'the invariant holds');

SELECT * FROM finish();
ROLLBACK;
