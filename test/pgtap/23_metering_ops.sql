-- Ledger partitions, rollups and reports, audit retention, dashboards and
-- metrics.  Issue 5: partitions created ahead and detachable; rollups so
-- that summaries do not scan the ledger; usage_report by model/day/user;
-- audit retention per tier with a purge; views and Prometheus metrics that
-- respect tenant isolation.
BEGIN;
\ir metering_helpers.psql
SELECT plan(51);

\o /dev/null
SELECT quota_ext.tenant_create('op-a', 'free', 'Europe/Berlin') AS ta \gset
SELECT quota_ext.tenant_create('op-b', 'enterprise') AS tb \gset
SELECT quota_ext.model_register('op-chat') AS m1 \gset
SELECT quota_ext.model_register('op-img') AS m2 \gset
SELECT quota_ext.policy_set(:ta, 'op-*', true);
SELECT quota_ext.policy_set(:tb, 'op-*', true);
SELECT user_id AS ua, api_key AS ka FROM quota_ext.user_create(:ta, 'ops@a.example') \gset
SELECT quota_ext.price_set('op-chat', 'USD', unit_price => 0.1);
\o

-- ---------------------------------------------------------------------------
-- partitions
-- ---------------------------------------------------------------------------
-- old rows sitting in the default partition (written before maintenance ran)
SELECT pg_temp.mx_usage(:ta, :m1, '2025-01-05 10:00+00', 5, 0, NULL);
SELECT pg_temp.mx_usage(:ta, :m1, '2025-01-31 23:30+00', 6, 0, NULL);
SELECT pg_temp.mx_usage(:tb, :m2, '2025-02-01 00:10+00', 7, 0, NULL);
SELECT set_eq($$SELECT * FROM quota_ext.usage_partitions_maintain(2)$$,
	format($$SELECT 'usage_p' || to_char(g, 'YYYYMM') AS p, 'created' AS a FROM generate_series(date_trunc('month', now() AT TIME ZONE 'UTC'),
	         date_trunc('month', now() AT TIME ZONE 'UTC') + interval '2 months', interval '1 month') g
	         UNION ALL VALUES ('usage_p202501', 'created'), ('usage_p202502', 'created')$$),
	'maintain: this month and two ahead, plus the months found in the default partition');
SELECT is((SELECT count(*) FROM ONLY quota_ext.usage_default)::int, 0, 'their rows moved out of the default partition');
SELECT is((SELECT sum(units) FROM quota_ext.usage_p202501)::int, 11, 'into their month''s partition');
SELECT is((SELECT count(*) FROM quota_ext.usage_partitions_maintain(2))::int, 0, 'maintain is idempotent');
SELECT results_eq($$SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = 'quota_ext.usage_p202501'::regclass$$,
	$$VALUES (true, true)$$, 'a partition has FORCE row-level security');
SELECT set_eq($$SELECT policyname::text FROM pg_policies WHERE schemaname = 'quota_ext' AND tablename = 'usage_p202501'$$,
	$$VALUES ('tenant_isolation'), ('admin_read')$$, 'and the two policies');
SELECT is((SELECT count(*) FROM quota_ext.audit_log WHERE action = 'usage_partition_create')::int, 5, 'each new partition is audited');
SELECT lives_ok(format($$SELECT quota_ext.quota_consume(%s, 'op-chat', 2)$$, :ta), 'the hot path writes into this month''s partition');
SELECT is((SELECT count(*) FROM ONLY quota_ext.usage_default)::int, 0, 'not into the default one');
SELECT pg_temp.mx_snap();
SELECT * FROM pg_temp.mx_throws('SELECT quota_ext.usage_partitions_maintain(-1)', '22023', 'months_ahead must be between 0 and 120', 'maintain: negative months');
SELECT * FROM pg_temp.mx_throws('SELECT quota_ext.usage_partitions_maintain(NULL)', '22004', 'argument "months_ahead" must not be null', 'maintain: NULL');
SELECT * FROM pg_temp.mx_throws($$SELECT quota_ext.usage_partition_detach('2025-02-01')$$, '55000', 'partition quota_ext.usage_p202501 holds rows not yet rolled up', 'detach before the rollup');

-- ---------------------------------------------------------------------------
-- rollups: exact, once
-- ---------------------------------------------------------------------------
SELECT ok(quota_ext.usage_rollup() > 0, 'usage_rollup aggregates the ledger');
SELECT results_eq(format('SELECT day, calls, units FROM quota_ext.usage_daily WHERE tenant_id = %s AND day < %L ORDER BY day', :ta, '2025-12-31'),
	$$VALUES ('2025-01-05'::date, 1::bigint, 5::numeric), ('2025-02-01', 1, 6)$$,
	'days are the tenant''s local days (Europe/Berlin: 23:30 UTC on Jan 31 is Feb 1)');
SELECT is(quota_ext.usage_rollup(), 0::bigint, 'a second run finds nothing new');
SELECT is((SELECT sum(calls) FROM quota_ext.usage_daily)::bigint, (SELECT sum(calls) FROM quota_ext.usage)::bigint, 'every row counted exactly once');
SELECT ok((SELECT watermark FROM quota_ext.rollup_state WHERE name = 'usage_daily') <= clock_timestamp(), 'the watermark is recorded');
SELECT quota_ext.quota_consume(:ta, 'op-chat', 3);
SELECT quota_ext.quota_consume(:ta, 'op-img', 4, user_id => :ua);
SELECT results_eq(format($$SELECT model, currency, calls, units, cost FROM quota_ext.usage_report(%s, now() - interval '1 day', now() + interval '1 day', 'model')$$, :ta),
	$$VALUES ('op-chat'::text, 'USD'::text, 2::bigint, 5::numeric, 0.500000::numeric), ('op-img', NULL, 1, 4, 0)$$,
	'usage_report by model: rollups plus the rows since the watermark');
SELECT results_eq(format($$SELECT user_id, calls FROM quota_ext.usage_report(%s, now() - interval '1 day', now() + interval '1 day', 'user') WHERE currency IS NULL$$, :ta),
	format('VALUES (%s::bigint, 1::bigint)', :ua), 'usage_report by user');
SELECT results_eq(format($$SELECT day, sum(calls)::bigint FROM quota_ext.usage_report(%s, '2025-01-01', '2025-03-01', 'day') GROUP BY day ORDER BY day$$, :ta),
	$$VALUES ('2025-01-05'::date, 1::bigint), ('2025-02-01', 1)$$, 'usage_report by day');
SELECT pg_temp.mx_snap();
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.usage_report(%s, now(), now() - interval '1 day')$$, :ta), '22023', '"from" must be before "to"', 'report: empty range');
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.usage_report(%s, now(), now() + interval '1 day', 'key')$$, :ta), '22023', 'invalid group_by "key"', 'report: unknown group_by');
SELECT * FROM pg_temp.mx_throws($$SELECT quota_ext.usage_report(999999, now(), now() + interval '1 day')$$, '42704', 'tenant 999999 does not exist', 'report: unknown tenant');

-- tenant_summary reads the rollup: a change there shows (the ledger is not summed)
SELECT is((quota_ext.tenant_summary(:ta)->'usage'->>'calls_this_month')::int, 3, 'tenant_summary: calls this month');
SELECT is((quota_ext.tenant_summary(:ta)->'usage'->'cost_this_month'->>'USD')::numeric, 0.5, 'tenant_summary: cost this month per currency');
SELECT quota_ext.usage_rollup();
UPDATE quota_ext.usage_daily SET calls = calls + 1000 WHERE tenant_id = :ta AND day = (now() AT TIME ZONE 'Europe/Berlin')::date AND model_id = :m1;
SELECT is((quota_ext.tenant_summary(:ta)->'usage'->>'calls_this_month')::int, 1003, 'tenant_summary takes whole days from usage_daily');
UPDATE quota_ext.usage_daily SET calls = calls - 1000 WHERE tenant_id = :ta AND day = (now() AT TIME ZONE 'Europe/Berlin')::date AND model_id = :m1;

-- detach after the rollup
SELECT results_eq($$SELECT * FROM quota_ext.usage_partition_detach('2025-02-01 00:00+00')$$, $$VALUES ('usage_p202501'::text, 'detached'::text)$$,
	'detach: the partitions that end by then');
SELECT is((SELECT count(*) FROM quota_ext.usage WHERE occurred_at < '2025-01-31 23:59+00')::int, 0, 'their rows left the ledger');
SELECT is((SELECT count(*) FROM quota_ext.usage_p202501)::int, 2, 'and stay in the detached table');
SELECT is((SELECT sum(calls) FROM quota_ext.usage_daily WHERE tenant_id = :ta AND day = '2025-01-05')::int, 1, 'the rollups keep them');

-- ---------------------------------------------------------------------------
-- audit retention
-- ---------------------------------------------------------------------------
INSERT INTO quota_ext.audit_log (tenant_id, at, action, object_type) VALUES
	(:ta, now() - interval '8 days', 'old', 'test'), (:ta, now() - interval '6 days', 'recent', 'test'),
	(:tb, now() - interval '300 days', 'recent', 'test'), (:tb, now() - interval '366 days', 'old', 'test'),
	(0, now() - interval '364 days', 'recent', 'test'), (0, now() - interval '400 days', 'old', 'test');
SELECT is(quota_ext.audit_purge(), 3::bigint, 'audit_purge: free keeps 7 days, enterprise 365, global the longest');
SELECT is((SELECT count(*) FROM quota_ext.audit_log WHERE object_type = 'test' AND action = 'old')::int, 0, 'the old rows are gone');
SELECT is((SELECT count(*) FROM quota_ext.audit_log WHERE object_type = 'test' AND action = 'recent')::int, 3, 'the recent ones stay');
SELECT is((SELECT (after->>'deleted_tenant_rows')::int FROM quota_ext.audit_log WHERE action = 'audit_purge'), 2, 'the purge is audited');
SET LOCAL quota_ext.audit_retention_global = '100 days';
SELECT is(quota_ext.audit_purge(), 1::bigint, 'quota_ext.audit_retention_global bounds the global rows');
SET LOCAL quota_ext.audit_retention_global = 'forever';
SELECT throws_ok('SELECT quota_ext.audit_purge()', '22023', 'invalid quota_ext.audit_retention_global "forever"', 'a bad retention is an error');
RESET quota_ext.audit_retention_global;

-- ---------------------------------------------------------------------------
-- counters, views, metrics, isolation
-- ---------------------------------------------------------------------------
SELECT quota_ext.quota_set(:tb, 'daily', 1);
SELECT quota_ext.quota_consume(:tb, 'op-chat');
SELECT quota_ext.quota_consume(:tb, 'op-chat');
SELECT results_eq(format('SELECT allowed, denied_quota FROM quota_ext.request_stats() WHERE tenant_id = %s', :tb),
	$$VALUES (1::bigint, 1::bigint)$$, 'request_stats counts decisions per tenant');
SELECT results_eq(format('SELECT reason, denied FROM quota_ext.denials WHERE tenant_id = %s', :tb),
	$$VALUES ('quota'::text, 1::bigint)$$, 'denials by reason');
SELECT results_eq(format($$SELECT used, used_pct FROM quota_ext.quota_usage WHERE tenant_id = %s AND period = 'daily'$$, :tb),
	$$VALUES (1::numeric, 100.00::numeric)$$, 'quota_usage: percent of the limit');
SELECT matches(quota_ext.metrics(), format('quota_ext_quota_exceeded_total\{tenant_id="%s"\} 1', :tb), 'metrics: quota_exceeded_total');
SELECT matches(quota_ext.metrics(), format('quota_ext_invoke_total\{tenant_id="%s",outcome="allowed"\} 1', :tb), 'metrics: invoke_total by outcome');
-- a tenant sees its own rows only
SET LOCAL ROLE quota_ext_app;
SELECT quota_ext.authenticate(:'ka');
SELECT is((SELECT count(*) FROM quota_ext.request_stats() WHERE tenant_id <> :ta)::int, 0, 'a tenant sees only its own counters');
SELECT is((SELECT count(*) FROM quota_ext.quota_usage WHERE tenant_id <> :ta)::int, 0, 'and only its own quotas');
SELECT is((SELECT count(*) FROM quota_ext.usage_daily WHERE tenant_id <> :ta)::int, 0, 'and only its own rollups');
SELECT doesnt_match(quota_ext.metrics(), format('tenant_id="%s"', :tb), 'metrics show no other tenant');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;
