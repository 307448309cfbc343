-- Issue 17: the decision says which metric denied (denied_metric: calls,
-- units, cost) and carries the tenant, user and key of the call; the raising
-- variant's money denial has its own message; quota_status gains the period
-- start and the request count.  Every test here failed on main.
BEGIN;
\ir metering_helpers.psql
SELECT plan(25);

\o /dev/null
SELECT quota_ext.tenant_create('dm-a', 'pro') AS ta \gset
SELECT quota_ext.model_register('dm-chat') AS m1 \gset
SELECT quota_ext.model_register('dm-other');
SELECT quota_ext.policy_set(:ta, 'dm-chat', true);
SELECT quota_ext.price_set('dm-chat', 'USD', unit_price => 0.01);
SELECT user_id AS ua, api_key AS ka FROM quota_ext.user_create(:ta, 'a@dm.example', 'admin') \gset
SELECT key_id AS kida FROM quota_ext.api_keys WHERE tenant_id = :ta AND user_id = :ua \gset
\o

SELECT has_column('quota_ext', 'decision', 'denied_metric', 'decision.denied_metric');
SELECT is((SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ' ORDER BY attnum) FROM pg_attribute
            WHERE attrelid = 'quota_ext.decision'::regclass AND attnum > 14),
	'denied_metric text, tenant_id bigint, user_id bigint, key_id bigint, overage bigint',
	'the new columns come after the old ones (existing columns keep their places)');

-- ---------------------------------------------------------------------------
-- the identity of the call
-- ---------------------------------------------------------------------------
SELECT results_eq(format($$SELECT tenant_id, user_id, key_id FROM quota_ext.quota_consume(%s, 'dm-chat')$$, :ta),
	format('VALUES (%s::bigint, NULL::bigint, NULL::bigint)', :ta),
	'quota_consume without user or key: the tenant only');
SELECT results_eq(format($$SELECT tenant_id, user_id, key_id FROM quota_ext.quota_consume(%s, 'dm-chat', user_id => %s, key_id => %s)$$, :ta, :ua, :kida),
	format('VALUES (%s::bigint, %s::bigint, %s::bigint)', :ta, :ua, :kida),
	'quota_consume with user and key: all three');
SELECT (quota_ext.quota_reserve(:ta, 'dm-chat', 2, user_id => :ua)).reservation_id AS r1 \gset
SELECT results_eq(format('SELECT tenant_id, user_id, key_id FROM quota_ext.quota_settle(%s, %s, 1)', :ta, :r1),
	format('VALUES (%s::bigint, %s::bigint, NULL::bigint)', :ta, :ua), 'quota_settle: the reservation''s tenant and user');
SELECT (quota_ext.quota_reserve(:ta, 'dm-chat', 2, user_id => :ua)).reservation_id AS r2 \gset
SELECT results_eq(format('SELECT tenant_id, user_id FROM quota_ext.quota_cancel(%s, %s)', :ta, :r2),
	format('VALUES (%s::bigint, %s::bigint)', :ta, :ua), 'quota_cancel: the same');
SELECT (quota_ext.quota_consume(:ta, 'dm-chat', key_id => :kida)).usage_id AS u1 \gset
SELECT results_eq(format('SELECT tenant_id, key_id FROM quota_ext.quota_refund(%s, %s)', :ta, :u1),
	format('VALUES (%s::bigint, %s::bigint)', :ta, :kida), 'quota_refund: the consumption''s tenant and key');
SELECT results_eq(format('SELECT tenant_id, key_id, replayed FROM quota_ext.quota_refund(%s, %s)', :ta, :u1),
	format('VALUES (%s::bigint, %s::bigint, true)', :ta, :kida), '... replayed too');

-- invoke sets the context (user and key) for the rest of the transaction
SELECT results_eq(format($$SELECT tenant_id, user_id, key_id, denied_metric IS NULL FROM quota_ext.invoke(%L, 'dm-chat')$$, :'ka'),
	format('VALUES (%s::bigint, %s::bigint, %s::bigint, true)', :ta, :ua, :kida),
	'invoke returns the key''s tenant, user and key');
-- ---------------------------------------------------------------------------
-- denied_metric: calls, units, cost
-- ---------------------------------------------------------------------------
SELECT quota_ext.quota_set(:ta, 'daily', 10, metric => 'units') AS qunits \gset
SELECT results_eq(format($$SELECT allowed, denied_by, denied_metric, quota_id FROM quota_ext.quota_consume(%s, 'dm-chat', 11)$$, :ta),
	format($$VALUES (false, 'quota'::text, 'units'::text, %s::bigint)$$, :qunits), 'a units quota denies: denied_metric units');
\o /dev/null
SELECT quota_ext.quota_delete(:ta, :qunits);
\o
SELECT quota_ext.quota_set(:ta, 'hourly', 0) AS qcalls \gset
SELECT results_eq(format($$SELECT allowed, denied_metric, quota_id FROM quota_ext.quota_consume(%s, 'dm-chat')$$, :ta),
	format($$VALUES (false, 'calls'::text, %s::bigint)$$, :qcalls), 'a calls quota denies: denied_metric calls');
\o /dev/null
SELECT quota_ext.quota_delete(:ta, :qcalls);
\o
SELECT quota_ext.quota_set(:ta, 'monthly', max_cost => 0.10, currency => 'USD') AS qcost \gset
SELECT results_eq(format($$SELECT allowed, denied_by, denied_metric, quota_id, "limit" IS NULL FROM quota_ext.quota_consume(%s, 'dm-chat', 50, 'dm-idem')$$, :ta),
	format($$VALUES (false, 'quota'::text, 'cost'::text, %s::bigint, true)$$, :qcost), 'a money budget denies: denied_metric cost');
SELECT results_eq(format($$SELECT replayed, denied_metric FROM quota_ext.quota_consume(%s, 'dm-chat', 50, 'dm-idem')$$, :ta),
	$$VALUES (true, 'cost'::text)$$, 'a replay keeps denied_metric');
SELECT (quota_ext.quota_reserve(:ta, 'dm-chat', 1)).reservation_id AS r3 \gset
SELECT results_eq(format('SELECT allowed, denied_metric, quota_id FROM quota_ext.quota_settle(%s, %s, 100)', :ta, :r3),
	format($$VALUES (false, 'cost'::text, %s::bigint)$$, :qcost), 'a settle whose excess the budget cannot take: denied_metric cost');
SELECT results_eq(format($$SELECT allowed, denied_by, denied_metric FROM quota_ext.quota_consume(%s, 'dm-chat')$$, :ta),
	$$VALUES (true, NULL::text, NULL::text)$$, 'an allowed call: denied_metric NULL');

-- ---------------------------------------------------------------------------
-- the raising variant: 53400 both, the money denial has its own message
-- ---------------------------------------------------------------------------
SELECT throws_ok(format($$SELECT quota_ext.quota_consume_or_raise(%s, 'dm-chat', 50)$$, :ta), '53400',
	format('monthly cost quota exceeded for tenant %s', :ta), 'money denial: 53400, "cost quota exceeded"');
SELECT quota_ext.quota_set(:ta, 'hourly', 0) AS qcalls2 \gset
\o /dev/null
SELECT quota_ext.quota_delete(:ta, :qcost);
\o
SELECT throws_ok(format($$SELECT quota_ext.quota_consume_or_raise(%s, 'dm-chat')$$, :ta), '53400',
	format('hourly quota exceeded for tenant %s', :ta), 'calls denial: 53400, "quota exceeded"');
\o /dev/null
SELECT quota_ext.quota_delete(:ta, :qcalls2);
\o

-- ---------------------------------------------------------------------------
-- quota_status: period_start and requests
-- ---------------------------------------------------------------------------
SELECT quota_ext.quota_set(:ta, 'daily', 1000, metric => 'units') AS qd \gset
\o /dev/null
SELECT quota_ext.quota_consume(:ta, 'dm-chat', 7);
\o
\o /dev/null
SELECT quota_ext.quota_consume(:ta, 'dm-chat', 5);
\o
SELECT results_eq(format('SELECT period_start, requests, used FROM quota_ext.quota_status(%s) WHERE quota_id = %s', :ta, :qd),
	format($$SELECT period_start, (SELECT sum(calls)::bigint FROM quota_ext.usage WHERE tenant_id = %s), 12::bigint FROM quota_ext.period_bounds('day', 'UTC', clock_timestamp())$$, :ta),
	'a units quota: period_start of today, requests = the calls of the day in the ledger (also those before the quota), used = its units');
SELECT quota_id AS qtier FROM quota_ext.quotas WHERE tenant_id = :ta AND origin = 'tier' \gset
SELECT results_eq(format('SELECT period_start, requests, requests = used FROM quota_ext.quota_status(%s) WHERE quota_id = %s', :ta, :qtier),
	format($$SELECT period_start, (SELECT sum(calls)::bigint FROM quota_ext.usage WHERE tenant_id = %s), true FROM quota_ext.period_bounds('month', 'UTC', clock_timestamp())$$, :ta),
	'the tier''s monthly calls quota: requests = used = the ledger''s calls (refunds and releases net)');
SELECT quota_ext.quota_set(:ta, 'total', 1000, metric => 'units') AS ql \gset
SELECT results_eq(format('SELECT period_start IS NULL, resets_at IS NULL, requests FROM quota_ext.quota_status(%s) WHERE quota_id = %s', :ta, :ql),
	format($$VALUES (true, true, (SELECT sum(calls)::bigint FROM quota_ext.usage WHERE tenant_id = %s))$$, :ta),
	'a lifetime quota: no period start, requests of all time');
SELECT quota_ext.quota_set(:ta, 'daily', 0, model => 'dm-other') AS qm \gset
SELECT quota_ext.quota_set(:ta, 'daily', 0, model => 'dm-chat', metric => 'units') AS qblock \gset
SELECT requests AS before FROM quota_ext.quota_status(:ta) WHERE quota_id = :qd \gset
\o /dev/null
SELECT quota_ext.quota_consume(:ta, 'dm-chat');
\o
SELECT results_eq(format($$SELECT requests FROM quota_ext.quota_status(%s) WHERE quota_id = %s$$, :ta, :qd),
	format('VALUES (%s::bigint)', :before), 'requests do not count denied calls');
SELECT results_eq(format($$SELECT requests FROM quota_ext.quota_status(%s) WHERE quota_id = %s$$, :ta, :qm),
	$$VALUES (0::bigint)$$, 'a quota of another model counts none of these calls');
SELECT is((SELECT jsonb_path_query_array(quota_ext.tenant_summary(:ta), '$.quotas[*].requests')), '[]'::jsonb,
	'tenant_summary does not read the ledger for requests (it has none)');
SELECT has_function('quota_ext', 'quota_status', ARRAY['bigint', 'text', 'bigint', 'bigint'], 'quota_status keeps its arguments');
SELECT is((SELECT array_agg(a ORDER BY n) FROM (SELECT n, a FROM unnest((SELECT proargnames FROM pg_proc WHERE oid = 'quota_ext.quota_status(bigint, text, bigint, bigint)'::regprocedure)) WITH ORDINALITY AS x(a, n)) s WHERE n > 4),
	ARRAY['quota_id', 'period', 'metric', 'model_name', 'scope_user_id', 'scope_key_id', 'limit', 'used', 'remaining', 'resets_at', 'on_exceed', 'origin', 'currency', 'limit_cost', 'used_cost', 'remaining_cost', 'period_start', 'requests', 'meter', 'meter_kind']::text[],
	'quota_status: period_start and requests added at the end (then the meter columns)');

SELECT * FROM finish();
ROLLBACK;
