-- Issue 17, "Wrong answers found on the way": the answers of quota_settle and
-- quota_refund (first and replayed), the money-budget example of
-- doc/metering.md, the period error's hint and quota_set's defaults.
-- Every test here failed on main before the fix it names.
BEGIN;
\ir metering_helpers.psql
SELECT plan(22);

\o /dev/null
-- pro: a monthly calls quota of 10,000 from the tier, a burst of 100
SELECT quota_ext.tenant_create('aa-a', 'pro') AS ta \gset
SELECT quota_ext.model_register('aa-chat') AS m1 \gset
SELECT quota_ext.policy_set(:ta, 'aa-chat', true);
SELECT quota_ext.price_set('aa-chat', 'USD', unit_price => 0.01);
\o

-- ---------------------------------------------------------------------------
-- doc/metering.md §3: a money budget is quota_set(..., max_cost =>, currency =>)
-- (42883 before: max_units had no default)
-- ---------------------------------------------------------------------------
SELECT lives_ok(format($$SELECT quota_ext.quota_set(%s, 'monthly', max_cost => 10.00, currency => 'USD')$$, :ta),
	'doc/metering.md: quota_set(tenant, ''monthly'', max_cost => 10.00, currency => ''USD'') runs');
SELECT quota_id AS qcost FROM quota_ext.quotas WHERE tenant_id = :ta AND metric = 'cost' \gset
SELECT quota_id AS qcalls FROM quota_ext.quotas WHERE tenant_id = :ta AND metric = 'calls' \gset
SELECT results_eq(format('SELECT metric, currency::text, max_units FROM quota_ext.quotas WHERE tenant_id = %s AND quota_id = %s', :ta, :qcost),
	$$VALUES ('cost'::text, 'USD'::text, 10000000::bigint)$$, '... and makes a USD budget of 10.00');
SELECT pg_temp.mx_snap();
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.quota_set(%s, 'daily')$$, :ta), '22004',
	'argument "max_units" must not be null', 'quota_set without max_units nor max_cost');

-- ---------------------------------------------------------------------------
-- quota_settle with a monthly USD budget: the decision describes the quotas
-- like a consume's (remaining_cost, quota_id, limit, remaining were NULL)
-- ---------------------------------------------------------------------------
SELECT (quota_ext.quota_reserve(:ta, 'aa-chat', 10)).reservation_id AS r1 \gset
SELECT results_eq(format('SELECT allowed, quota_id, period, "limit", remaining, resets_at IS NOT NULL, cost, remaining_cost, currency FROM quota_ext.quota_settle(%s, %s, 8)', :ta, :r1),
	format($$VALUES (true, %s::bigint, 'monthly'::text, 10000::bigint, 9999::bigint, true, 0.080000::numeric, 9.920000::numeric, 'USD'::text)$$, :qcalls),
	'quota_settle: quota_id, limit, remaining, resets_at of the calls quota; the final cost; the budget left');
SELECT results_eq(format('SELECT replayed, cost, currency FROM quota_ext.quota_settle(%s, %s, 8)', :ta, :r1),
	$$VALUES (true, 0.080000::numeric, 'USD'::text)$$,
	'a replayed quota_settle returns the stored cost and currency (NULL before)');

-- settling at the estimate writes nothing and still answers the quotas
SELECT (quota_ext.quota_reserve(:ta, 'aa-chat', 5)).reservation_id AS r2 \gset
SELECT results_eq(format('SELECT allowed, quota_id, remaining, cost, remaining_cost, currency FROM quota_ext.quota_settle(%s, %s, 5)', :ta, :r2),
	format($$VALUES (true, %s::bigint, 9998::bigint, 0.050000::numeric, 9.870000::numeric, 'USD'::text)$$, :qcalls),
	'quota_settle at the estimate: the same description');
SELECT results_eq(format('SELECT replayed, cost, currency FROM quota_ext.quota_settle(%s, %s, 5)', :ta, :r2),
	$$VALUES (true, 0.050000::numeric, 'USD'::text)$$, '... and its replay the same money');

-- a settle whose excess a budget cannot take: the estimate's cost, replayed alike
SELECT quota_ext.quota_set(:ta, 'daily', max_cost => 0.20, currency => 'USD') AS qday \gset
SELECT (quota_ext.quota_reserve(:ta, 'aa-chat', 2)).reservation_id AS r3 \gset
SELECT results_eq(format('SELECT allowed, denied_by, quota_id, cost, remaining_cost, currency FROM quota_ext.quota_settle(%s, %s, 100)', :ta, :r3),
	format($$VALUES (false, 'quota'::text, %s::bigint, 0.020000::numeric, 0.180000::numeric, 'USD'::text)$$, :qday),
	'quota_settle denied by a daily budget: the estimate''s cost stays charged');
SELECT results_eq(format('SELECT allowed, replayed, cost, currency FROM quota_ext.quota_settle(%s, %s, 100)', :ta, :r3),
	$$VALUES (false, true, 0.020000::numeric, 'USD'::text)$$, '... replayed: the same money');
\o /dev/null
SELECT quota_ext.quota_delete(:ta, :qday);
\o

-- ---------------------------------------------------------------------------
-- quota_refund: currency with the (negative) cost, the quotas after it, and
-- a replay with the stored money
-- ---------------------------------------------------------------------------
SELECT (quota_ext.quota_consume(:ta, 'aa-chat', 3)).usage_id AS u1 \gset
SELECT results_eq(format('SELECT allowed, quota_id, "limit", remaining, cost, remaining_cost, currency FROM quota_ext.quota_refund(%s, %s)', :ta, :u1),
	format($$VALUES (true, %s::bigint, 10000::bigint, 9997::bigint, -0.030000::numeric, 9.850000::numeric, 'USD'::text)$$, :qcalls),
	'quota_refund: the negative cost with its currency (NULL before), the quotas after the refund');
SELECT results_eq(format('SELECT replayed, cost, currency FROM quota_ext.quota_refund(%s, %s)', :ta, :u1),
	$$VALUES (true, -0.030000::numeric, 'USD'::text)$$,
	'a replayed quota_refund returns the stored cost and currency (NULL before)');
SELECT is((SELECT sum(cost) FROM quota_ext.usage WHERE tenant_id = :ta), 0.150000::numeric,
	'the ledger: 0.08 + 0.05 + 0.02 + 0.03 - 0.03');
SELECT is((SELECT used FROM quota_ext.quota_counters WHERE tenant_id = :ta AND quota_id = :qcost), 150000::bigint,
	'the budget''s counter is the ledger''s sum');

-- an unpriced refund: no money columns
\o /dev/null
SELECT quota_ext.model_register('aa-free') AS m2 \gset
SELECT quota_ext.policy_set(:ta, 'aa-free', true);
\o
SELECT (quota_ext.quota_consume(:ta, 'aa-free', 1)).usage_id AS u2 \gset
SELECT results_eq(format('SELECT cost IS NULL, remaining_cost, currency FROM quota_ext.quota_refund(%s, %s)', :ta, :u2),
	$$VALUES (true, 9.850000::numeric, 'USD'::text)$$,
	'an unpriced refund: no cost; the budget left and its currency');
SELECT results_eq(format('SELECT replayed, cost IS NULL, remaining_cost, currency FROM quota_ext.quota_refund(%s, %s)', :ta, :u2),
	$$VALUES (true, true, 9.850000::numeric, 'USD'::text)$$, '... replayed: the same answer (no cost; the budget left and its currency)');

-- ---------------------------------------------------------------------------
-- the period error's hint names every word quota_set accepts
-- ---------------------------------------------------------------------------
SELECT pg_temp.mx_snap();
CREATE FUNCTION pg_temp.hint_of(sql text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE h text;
BEGIN
	EXECUTE sql;
	RETURN NULL;
EXCEPTION WHEN invalid_parameter_value THEN
	GET STACKED DIAGNOSTICS h = PG_EXCEPTION_HINT;
	RETURN h;
END
$$;
SELECT is(pg_temp.hint_of(format($$SELECT quota_ext.quota_set(%s, 'fortnight', 5)$$, :ta)),
	'Use minute, hour, day, week, month, year or lifetime (or minutely, hourly, daily, weekly, monthly, yearly, annual, annually, never, total).',
	'the period hint lists annual, annually, total and minutely too');
SELECT is(pg_temp.mx_state(), (SELECT s FROM pg_temp.mx_snapshot), '... and nothing changed');
SELECT lives_ok(format($$SELECT quota_ext.quota_set(%s, w, 5) FROM unnest(ARRAY['minutely', 'annual', 'annually', 'total']) w$$, :ta),
	'every word of the hint is accepted');

-- ---------------------------------------------------------------------------
-- slots: DEFAULT NULL means 1 for a new quota and "keep" for an existing one
-- (doc/reference.md said "default 1")
-- ---------------------------------------------------------------------------
SELECT quota_ext.quota_set(:ta, 'hourly', 100, slots => 4) AS qh \gset
\o /dev/null
SELECT quota_ext.quota_set(:ta, 'hourly', 200);
\o
SELECT is((SELECT slots FROM quota_ext.quotas WHERE tenant_id = :ta AND quota_id = :qh), 4,
	'quota_set without slots keeps an existing quota''s slots');
SELECT quota_ext.quota_set(:ta, 'weekly', 100) AS qw \gset
SELECT is((SELECT slots FROM quota_ext.quotas WHERE tenant_id = :ta AND quota_id = :qw), 1,
	'... and gives a new quota one');
SELECT is((SELECT pg_get_function_arguments('quota_ext.quota_set(bigint, text, bigint, text, text, bigint, text, bigint, bigint, integer[], numeric, text, integer)'::regprocedure)
             ~ 'max_units bigint DEFAULT NULL::bigint.*slots integer DEFAULT NULL::integer'), true,
	'quota_set: max_units and slots default to NULL');

SELECT * FROM finish();
ROLLBACK;
