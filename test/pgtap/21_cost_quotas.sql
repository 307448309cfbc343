-- Money budgets: quota_set with max_cost and currency; enforcement by
-- quota_consume/invoke all-or-nothing with the other quotas; remaining money
-- in the decision; currency mismatches; adjustments of money.
-- Issue 5: "A quota whose metric is cost, with a currency: limit, used,
-- remaining, period ... all-or-nothing with the others; the decision row
-- carries money remaining."
BEGIN;
\ir metering_helpers.psql
SELECT plan(42);

\o /dev/null
SELECT quota_ext.tenant_create('cq-a', 'enterprise') AS ta \gset
SELECT quota_ext.tenant_create('cq-b', 'enterprise') AS tb \gset
SELECT quota_ext.model_register('cq-chat') AS m1 \gset
SELECT quota_ext.model_register('cq-euro') AS m2 \gset
SELECT quota_ext.policy_set(:ta, 'cq-*', true);
SELECT quota_ext.policy_set(:tb, 'cq-*', true);
SELECT quota_ext.price_set('cq-chat', 'USD', unit_price => 0.25);
SELECT quota_ext.price_set('cq-euro', 'EUR', unit_price => 1);
\o

-- ---------------------------------------------------------------------------
-- quota_set for money
-- ---------------------------------------------------------------------------
SELECT has_function('quota_ext', 'quota_set',
	ARRAY['bigint', 'text', 'bigint', 'text', 'text', 'bigint', 'text', 'bigint', 'bigint', 'integer[]', 'numeric', 'text', 'integer', 'text', 'integer', 'integer'],
	'quota_set gains max_cost and currency (then slots, then meter and throttle) at the end');
SELECT quota_ext.quota_set(:ta, 'monthly', NULL, max_cost => 2.00, currency => 'usd') AS qc \gset
SELECT results_eq(format('SELECT metric, currency::text, max_units FROM quota_ext.quotas WHERE quota_id = %s', :qc),
	$$VALUES ('cost'::text, 'USD'::text, 2000000::bigint)$$, 'max_cost makes a cost quota counted in micro-units');
SELECT results_eq(format('SELECT currency, limit_cost, used_cost, remaining_cost FROM quota_ext.quota_status(%s) WHERE quota_id = %s', :ta, :qc),
	$$VALUES ('USD'::text, 2.000000::numeric, 0.000000::numeric, 2.000000::numeric)$$, 'quota_status shows money');
SELECT is((SELECT action FROM quota_ext.audit_log WHERE object_type = 'quota' AND object_id = :'qc'), 'quota_set', 'audited');
SELECT is(quota_ext.quota_set(:ta, 'monthly', NULL, metric => 'cost', max_cost => 3, currency => 'USD'), :qc::bigint,
	'the same scope again changes the budget');
SELECT quota_ext.quota_set(:ta, 'monthly', NULL, max_cost => 2.00, currency => 'USD');

SELECT pg_temp.mx_snap();
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.quota_set(%s, 'daily', NULL, max_cost => 1)$$, :ta), '22004',
	'argument "currency" must not be null', 'quota_set: cost without currency');
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.quota_set(%s, 'daily', NULL, metric => 'cost', currency => 'USD')$$, :ta), '22004',
	'argument "max_cost" must not be null', 'quota_set: cost without max_cost');
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.quota_set(%s, 'daily', 10, max_cost => 1, currency => 'USD')$$, :ta), '22023',
	'a cost quota is limited by max_cost, not max_units or soft_limit', 'quota_set: max_units with max_cost');
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.quota_set(%s, 'daily', NULL, max_cost => 0.0000001, currency => 'USD')$$, :ta), '22023',
	'max_cost has more than 6 decimal places', 'quota_set: below a micro-unit');
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.quota_set(%s, 'daily', NULL, max_cost => -1, currency => 'USD')$$, :ta), '22023',
	'max_cost must not be negative', 'quota_set: negative budget');
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.quota_set(%s, 'daily', NULL, max_cost => 1, currency => 'DOLLAR')$$, :ta), '22023',
	'invalid currency "DOLLAR"', 'quota_set: bad currency');
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.quota_set(%s, 'daily', 10, currency => 'USD')$$, :ta), '22023',
	'max_cost and currency apply only to cost quotas', 'quota_set: currency on a calls quota');
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.quota_set(%s, 'monthly', NULL, max_cost => 1, currency => 'EUR')$$, :ta), '22023',
	format('quota %s counts USD, not EUR', :qc), 'quota_set: another currency for an existing budget');
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.quota_set(%s, 'monthly', NULL, model => 'cq-euro', max_cost => 1, currency => 'USD')$$, :ta), '22023',
	'model "cq-euro" is priced in EUR, not USD', 'quota_set: a model''s budget in another currency than its price');

-- ---------------------------------------------------------------------------
-- enforcement
-- ---------------------------------------------------------------------------
SELECT quota_ext.quota_set(:ta, 'daily', 100, metric => 'units') AS qu \gset
SELECT * INTO TEMP a1 FROM quota_ext.quota_consume(:ta, 'cq-chat', 4);
SELECT results_eq('SELECT allowed, cost, remaining_cost, currency FROM a1',
	$$VALUES (true, 1.000000::numeric, 1.000000::numeric, 'USD'::text)$$, 'allowed: money left in the budget');
SELECT results_eq('SELECT quota_id, remaining FROM a1', format('VALUES (%s::bigint, 96::bigint)', :qu),
	'the integer columns describe the tightest calls/units quota');
SELECT * INTO TEMP a2 FROM quota_ext.quota_consume(:ta, 'cq-chat', 5);
SELECT results_eq('SELECT allowed, denied_by, quota_id, "limit", remaining, cost, remaining_cost, currency FROM a2',
	format($$VALUES (false, 'quota'::text, %s::bigint, NULL::bigint, NULL::bigint, 1.250000::numeric, 1.000000::numeric, 'USD'::text)$$, :qc),
	'denied by the budget: money in remaining_cost');
SELECT results_eq(format('SELECT used FROM quota_ext.quota_status(%s) WHERE quota_id IN (%s, %s) ORDER BY quota_id', :ta, :qc, :qu),
	$$VALUES (1000000::bigint), (4::bigint)$$, 'all or nothing: the units quota was not charged either');
SELECT * INTO TEMP a3 FROM quota_ext.quota_consume(:ta, 'cq-chat', 4);
SELECT results_eq('SELECT allowed, remaining_cost FROM a3', $$VALUES (true, 0.000000::numeric)$$, 'exactly the budget');
SELECT is((SELECT allowed FROM quota_ext.quota_consume(:ta, 'cq-chat', 1)), false, 'not a micro-unit more');
SELECT throws_ok(format($$SELECT quota_ext.quota_consume_or_raise(%s, 'cq-chat', 1)$$, :ta), '53400',
	'monthly cost quota exceeded for tenant ' || :ta, 'the raising variant: 53400');
-- unpriced calls do not spend money
SELECT quota_ext.model_register('cq-free');
SELECT quota_ext.policy_set(:ta, 'cq-free', true);
SELECT is((SELECT allowed FROM quota_ext.quota_consume(:ta, 'cq-free', 1)), true, 'an unpriced model passes an exhausted budget');
-- a refund gives the money back
SELECT quota_ext.quota_refund(:ta, (SELECT usage_id FROM a3));
SELECT results_eq(format('SELECT used_cost, remaining_cost FROM quota_ext.quota_status(%s) WHERE quota_id = %s', :ta, :qc),
	$$VALUES (1.000000::numeric, 1.000000::numeric)$$, 'refund: the budget gets the money back');
-- the counter equals the ledger
SELECT is((SELECT (sum(cost) * 1000000)::bigint FROM quota_ext.usage WHERE tenant_id = :ta),
	(SELECT used FROM quota_ext.quota_counters WHERE tenant_id = :ta AND quota_id = :qc), 'the budget counter is the sum of ledger costs');
-- reservations and settle beyond the budget
SELECT * INTO TEMP r1 FROM quota_ext.quota_reserve(:ta, 'cq-chat', 2);
SELECT results_eq('SELECT allowed, cost, remaining_cost FROM r1', $$VALUES (true, 0.500000::numeric, 0.500000::numeric)$$, 'reserve spends the estimate');
SELECT * INTO TEMP s1 FROM quota_ext.quota_settle(:ta, (SELECT reservation_id FROM r1), 5);
SELECT results_eq('SELECT allowed, denied_by, quota_id, remaining_cost FROM s1', format($$VALUES (false, 'quota'::text, %s::bigint, 0.500000::numeric)$$, :qc),
	'settle beyond the budget: the excess is not charged');
SELECT is((SELECT unbilled FROM quota_ext.reservations WHERE tenant_id = :ta AND reservation_id = (SELECT reservation_id FROM r1)), 3::bigint,
	'... and recorded as unbilled');
-- idempotent replay returns the money columns
SELECT * INTO TEMP i1 FROM quota_ext.quota_consume(:ta, 'cq-chat', 1, 'idem-1');
SELECT * INTO TEMP i2 FROM quota_ext.quota_consume(:ta, 'cq-chat', 1, 'idem-1');
SELECT results_eq('SELECT replayed, cost, remaining_cost, currency FROM i2', 'SELECT true, cost, remaining_cost, currency FROM i1',
	'a replay answers the same money');
-- thresholds of a budget fire as events
SELECT ok((SELECT count(*) FROM quota_ext.quota_events WHERE tenant_id = :ta AND quota_id = :qc AND threshold = 100) = 1,
	'the 100% threshold of the budget fired once');

-- ---------------------------------------------------------------------------
-- currency mismatch at consume time
-- ---------------------------------------------------------------------------
SELECT quota_ext.quota_set(:tb, 'monthly', NULL, max_cost => 10, currency => 'USD') AS qb \gset
SELECT pg_temp.mx_snap();
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.quota_consume(%s, 'cq-euro', 1)$$, :tb), '55000',
	format('cost quota %s counts USD but model "cq-euro" is priced in EUR', :qb), 'consume: budget and price in different currencies');
SELECT lives_ok(format($$SELECT quota_ext.quota_consume(%s, 'cq-chat', 1)$$, :tb), 'the same budget with a USD model works');
-- a tenant's own price in the budget's currency resolves it
SELECT quota_ext.price_set('cq-euro', 'USD', unit_price => 1.1, tenant_id => :tb);
SELECT is((SELECT cost FROM quota_ext.quota_consume(:tb, 'cq-euro', 1)), 1.100000::numeric, 'with an own USD price the model is charged in USD');

SELECT * FROM finish();
ROLLBACK;
