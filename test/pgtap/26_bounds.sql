-- Bounds of one call, and sums that one tenant cannot overflow for all
-- (issue 12, findings 5, 9, 11 and 13).
--   5: a call carries at most 10^15 units, estimate, actual, input_tokens,
--      output_tokens (22003 beyond, nothing changed) and costs at most
--      10^12; rollups, invoices, reports and summaries sum in numeric, so
--      one tenant's 10,000 maximal calls (10^19 units and tokens, past the
--      bigint range) leave usage_rollup() and billing_close() working for
--      every tenant, with exact totals.
--   9: a reservation's ttl is bounded as a whole duration (7 days).
--  11: NaN, +-Infinity, negative and too large prices and money limits: 22023 / 22003.
--  13: an error quotes at most 64 characters of a caller's text.
BEGIN;
\ir metering_helpers.psql
SELECT plan(111);

\o /dev/null
SELECT quota_ext.tenant_create('bd-a', 'enterprise') AS ta \gset
SELECT quota_ext.tenant_create('bd-b', 'enterprise') AS tb \gset
SELECT quota_ext.model_register('bd-m') AS m \gset
SELECT quota_ext.model_register('bd-dear') AS md \gset
SELECT quota_ext.policy_set(t, 'bd-*', true) FROM unnest(ARRAY[:ta, :tb]::bigint[]) t;
SELECT quota_ext.price_set('bd-m', 'USD', unit_price => 0.000001, input_per_1k => 0.000001,
                           output_per_1k => 0.000001);
SELECT quota_ext.price_set('bd-dear', 'USD', unit_price => 1000);
SELECT quota_ext.quota_set(:ta, 'monthly', 100000);
SELECT quota_ext.quota_set(:tb, 'monthly', 100000);
SELECT api_key AS ka FROM quota_ext.user_create(:ta, 'bd@example.com') \gset
\o

-- ---------------------------------------------------------------------------
-- finding 5: the maximum, 10,000 times, for one tenant
-- ---------------------------------------------------------------------------
SELECT is((SELECT count(*) FROM generate_series(1, 10000) g,
                  -- (g in an argument: an uncorrelated function scan is run once)
                  LATERAL quota_ext.quota_consume(:ta, 'bd-m', 1000000000000000 + 0 * g,
                                                  input_tokens => 1000000000000000,
                                                  output_tokens => 1000000000000000) c
            WHERE c.allowed),
          10000::bigint, 'tenant A: 10,000 calls of 10^15 units, input and output tokens are allowed');
SELECT is((quota_ext.quota_consume(:tb, 'bd-m', 7, input_tokens => 11000, output_tokens => 13000)).cost,
          0.000031::numeric, 'tenant B: one small call');
SELECT ok((SELECT sum(units) FROM quota_ext.usage WHERE tenant_id = :ta) > 9223372036854775807,
          'A''s ledger alone sums past the bigint range');
SELECT cmp_ok(quota_ext.usage_rollup(), '>', 0::bigint, 'usage_rollup() works');
SELECT results_eq(format('SELECT tenant_id, sum(calls), sum(units), sum(input_tokens), sum(output_tokens), sum(cost)
                            FROM quota_ext.usage_daily WHERE tenant_id IN (%s, %s) GROUP BY 1 ORDER BY 1', :ta, :tb),
	format($$VALUES (%s::bigint, 10000::numeric, 10000000000000000000::numeric, 10000000000000000000::numeric,
	                 10000000000000000000::numeric, 10020000000000::numeric),
	                (%s, 1, 7, 11000, 13000, 0.000031)$$, :ta, :tb),
	'usage_daily: exact totals for both tenants');
SELECT results_eq(format('SELECT tenant_id, sum(units), sum(cost) FROM quota_ext.usage_billing_daily
                           WHERE tenant_id IN (%s, %s) GROUP BY 1 ORDER BY 1', :ta, :tb),
	format($$VALUES (%s::bigint, 10000000000000000000::numeric, 10020000000000::numeric), (%s, 7, 0.000031)$$, :ta, :tb),
	'usage_billing_daily: exact totals');
SELECT results_eq(format($$SELECT model, calls, units, input_tokens, output_tokens, cost
                             FROM quota_ext.usage_report(%s, now() - interval '1 day', now() + interval '1 day')$$, :ta),
	$$VALUES ('bd-m'::text, 10000::bigint, 10000000000000000000::numeric, 10000000000000000000::numeric,
	          10000000000000000000::numeric, 10020000000000::numeric)$$,
	'usage_report: exact');
SELECT is(quota_ext.tenant_summary(:ta)->'usage'->>'units_this_month', '10000000000000000000',
          'tenant_summary: exact');
-- one more maximal call after the rollup: the tail of the ledger adds up too
SELECT is((quota_ext.quota_consume(:ta, 'bd-m', 1000000000000000)).allowed, true, 'a call after the rollup');
SELECT is((SELECT sum(units) FROM quota_ext.usage_report(:ta, now() - interval '1 day', now() + interval '1 day')),
          10001000000000000000::numeric, 'usage_report: rollup plus ledger tail, exact');
-- every tenant's period closes, with exact invoices
-- (a period closes once it has ended, by the transaction's start: the
-- tenants and their rows are moved just before it)
\o /dev/null
UPDATE quota_ext.tenants SET created_at = now() - interval '1 day' WHERE tenant_id IN (:ta, :tb);
UPDATE quota_ext.usage SET occurred_at = now() - interval '1 microsecond' WHERE tenant_id IN (:ta, :tb);
\o
SELECT now() - interval '1 day' AS ps, now() AS pe \gset
SELECT lives_ok(format('CREATE TEMP TABLE bd_inv AS SELECT * FROM quota_ext.billing_close(%L, %L)', :'ps', :'pe'),
                'billing_close() of all tenants works');
SELECT results_eq(format('SELECT tenant_id, currency::text, total FROM bd_inv WHERE tenant_id IN (%s, %s) ORDER BY 1', :ta, :tb),
	format($$VALUES (%s::bigint, 'USD'::text, 10021000000000::numeric), (%s, 'USD', 0.000031)$$, :ta, :tb),
	'the invoices of both tenants are exact');
SELECT results_eq(format('SELECT l.calls, l.units, l.input_tokens, l.output_tokens, l.amount
                            FROM quota_ext.invoice_lines l JOIN bd_inv i USING (tenant_id, invoice_id)
                           WHERE i.tenant_id = %s', :ta),
	$$VALUES (10001::bigint, 10001000000000000000::numeric, 10000000000000000000::numeric,
	          10000000000000000000::numeric, 10021000000000::numeric)$$,
	'A''s invoice line carries the exact sums');

-- over the bounds: 22003, nothing changed
SELECT reservation_id AS rb FROM quota_ext.quota_reserve(:tb, 'bd-m', 5) \gset
SELECT reservation_id AS rd FROM quota_ext.quota_reserve(:tb, 'bd-dear', 5) \gset
SELECT pg_temp.mx_snap();
SELECT * FROM pg_temp.mx_throws(format('SELECT quota_ext.quota_consume(%s, %L, 1000000000000001)', :ta, 'bd-m'),
	'22003', 'units must be at most 1000000000000000', 'consume: units over the maximum');
SELECT * FROM pg_temp.mx_throws(format('SELECT quota_ext.quota_consume(%s, %L, 9223372036854775807)', :ta, 'bd-m'),
	'22003', 'units must be at most 1000000000000000', 'consume: INT64 max units');
SELECT * FROM pg_temp.mx_throws(format('SELECT quota_ext.quota_consume(%s, %L, 1, input_tokens => 1000000000000001)', :ta, 'bd-m'),
	'22003', 'input_tokens must be at most 1000000000000000', 'consume: input_tokens over the maximum');
SELECT * FROM pg_temp.mx_throws(format('SELECT quota_ext.quota_consume(%s, %L, 1, output_tokens => 900000000000000000)', :ta, 'bd-m'),
	'22003', 'output_tokens must be at most 1000000000000000', 'consume: the reported 9 * 10^17 output_tokens');
SELECT * FROM pg_temp.mx_throws(format('SELECT quota_ext.invoke(%L, %L, 1000000000000001)', :'ka', 'bd-m'),
	'22003', 'units must be at most 1000000000000000', 'invoke: units over the maximum');
SELECT * FROM pg_temp.mx_throws(format('SELECT quota_ext.quota_reserve(%s, %L, 1000000000000001)', :ta, 'bd-m'),
	'22003', 'estimate must be at most 1000000000000000', 'reserve: estimate over the maximum');
SELECT * FROM pg_temp.mx_throws(format('SELECT quota_ext.quota_settle(%s, %s, 1000000000000001)', :tb, :rb),
	'22003', 'actual must be at most 1000000000000000', 'settle: actual over the maximum');
SELECT * FROM pg_temp.mx_throws(format('SELECT quota_ext.quota_settle(%s, %s, 5, input_tokens => 1000000000000001)', :tb, :rb),
	'22003', 'input_tokens must be at most 1000000000000000', 'settle: tokens over the maximum');
SELECT * FROM pg_temp.mx_throws(format('SELECT quota_ext.quota_consume(%s, %L, 2000000000)', :ta, 'bd-dear'),
	'22003', 'the cost of one call must be at most 1000000000000', 'consume: a call costing 2 * 10^12');
SELECT * FROM pg_temp.mx_throws(format('SELECT quota_ext.quota_settle(%s, %s, 2000000000)', :tb, :rd),
	'22003', 'the cost of one call must be at most 1000000000000', 'settle: not over the unit maximum, but over the cost maximum');

-- ---------------------------------------------------------------------------
-- finding 9: ttl bounded as a whole
-- ---------------------------------------------------------------------------
SELECT pg_temp.mx_throws(format('SELECT quota_ext.quota_reserve(%s, %L, 1, ttl => %L)', :tb, 'bd-m', t),
	'22023', 'ttl must be positive and at most 7 days', 'reserve: ttl ' || t)
  FROM unnest(ARRAY['1000000 hours', '8 days', '1 mon', '168 hours 1 second', '7 days 00:00:00.000001',
                    '-1 hour', '1 day -25 hours', '0', '-7 days']) t;
CREATE TEMP TABLE bd_ttl AS
SELECT v.t, v.e::interval AS e,
       (quota_ext.quota_reserve(:tb, 'bd-m', 1, ttl => v.t::interval)).reservation_id AS rid
  FROM (VALUES ('7 days', '168 hours'), ('168 hours', '7 days'), ('1 day -1 hour', '23 hours'),
               ('1 mon -23 days', '7 days')) v (t, e);
SELECT is(r.expires_at - r.occurred_at, b.e, 'reserve: ttl ' || b.t || ' is accepted; it expires that long after')
  FROM bd_ttl b LEFT JOIN quota_ext.reservations r ON r.tenant_id = :tb AND r.reservation_id = b.rid
 ORDER BY b.t;

-- ---------------------------------------------------------------------------
-- finding 11: money must be a finite, non-negative, bounded number
-- ---------------------------------------------------------------------------
SELECT pg_temp.mx_snap();
SELECT pg_temp.mx_throws(
	format('SELECT quota_ext.price_set(%L, %L, %s%s => %L::numeric)', 'bd-m', 'USD',
	       CASE WHEN a = 'unit_price' THEN '' ELSE 'unit_price => 1, ' END, a, v),
	'22023', a || ' must be a finite number', format('price_set: %s %s', a, v))
  FROM unnest(ARRAY['unit_price', 'input_per_1k', 'output_per_1k', 'overage_unit_price']) a,
       unnest(ARRAY['NaN', 'Infinity', '-Infinity']) v;
SELECT * FROM pg_temp.mx_throws(format('SELECT quota_ext.price_set(%L, %L, input_per_1k => -0.01)', 'bd-m', 'USD'),
	'22023', 'input_per_1k must not be negative', 'price_set: negative input_per_1k');
SELECT * FROM pg_temp.mx_throws(format('SELECT quota_ext.price_set(%L, %L, unit_price => 1000000000.01)', 'bd-m', 'USD'),
	'22003', 'unit_price is out of range', 'price_set: a price over 10^9');
SELECT pg_temp.mx_throws(
	format('SELECT quota_ext.quota_set(%s, %L, NULL, max_cost => %L::numeric, currency => %L)', :tb, 'daily', v, 'USD'),
	'22023', 'max_cost must be a finite number', 'quota_set: max_cost ' || v)
  FROM unnest(ARRAY['NaN', 'Infinity', '-Infinity']) v;
SELECT * FROM pg_temp.mx_throws(
	format('SELECT quota_ext.quota_set(%s, %L, NULL, max_cost => 1000000000000.01, currency => %L)', :tb, 'daily', 'USD'),
	'22003', 'max_cost is out of range', 'quota_set: max_cost over 10^12');

-- ---------------------------------------------------------------------------
-- finding 13: a megabyte of input gets a short message
-- ---------------------------------------------------------------------------
CREATE FUNCTION pg_temp.bd_err(q text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
	st text;
	m text;
	d text;
	h text;
BEGIN
	EXECUTE q;
	RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
	GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, m = MESSAGE_TEXT,
	                        d = PG_EXCEPTION_DETAIL, h = PG_EXCEPTION_HINT;
	RETURN st || ' ' || m || coalesce(' DETAIL ' || nullif(d, ''), '') || coalesce(' HINT ' || nullif(h, ''), '');
END
$$;
SELECT repeat('x', 1048576) AS big \gset
SELECT results_eq(format('SELECT left(e, %s), length(e) < 400, e LIKE %L FROM pg_temp.bd_err(%L) e',
                         length(expect), '%x..."%', q),
	format('VALUES (%L, true, true)', expect), 'a 1 MB argument is quoted by 64 characters: ' || d)
  FROM (VALUES
	('quota_consume model', format('SELECT quota_ext.quota_consume(%s, %L, 1)', :ta, :'big'), '42704 model "xxxxxxxx'),
	('quota_reserve model', format('SELECT quota_ext.quota_reserve(%s, %L, 1)', :ta, :'big'), '42704 model "xxxxxxxx'),
	('quota_status model', format('SELECT quota_ext.quota_status(%s, %L)', :ta, :'big'), '42704 model "xxxxxxxx'),
	('price_lookup model', format('SELECT quota_ext.price_lookup(%s, %L)', :ta, :'big'), '42704 model "xxxxxxxx'),
	('quota_set model', format('SELECT quota_ext.quota_set(%s, %L, 1, model => %L)', :ta, 'daily', :'big'), '42704 model "xxxxxxxx'),
	('rate_limit_apply model', format('SELECT quota_ext.rate_limit_apply(%s, %L)', :ta, :'big'), '42704 model "xxxxxxxx'),
	('rate_limit_set model', format('SELECT quota_ext.rate_limit_set(%s, 10, 60, model => %L)', :ta, :'big'), '42704 model "xxxxxxxx'),
	('quota_set period', format('SELECT quota_ext.quota_set(%s, %L, 1)', :ta, :'big'), '22023 invalid period "xxxxxxxx'),
	('period_bounds period', format('SELECT quota_ext.period_bounds(%L, %L, now())', :'big', 'UTC'), '22023 invalid period "xxxxxxxx'),
	('usage_report group_by', format('SELECT quota_ext.usage_report(%s, now(), now() + interval %L, %L)', :ta, '1 day', :'big'), '22023 invalid group_by "xxxxxxxx'),
	('price_set currency', format('SELECT quota_ext.price_set(%L, %L, 1)', 'bd-m', :'big'), '22023 invalid currency "xxxxxxxx'),
	('tenant_create tier', format('SELECT quota_ext.tenant_create(%L, %L)', 'bd-c', :'big'), '42704 tier "xxxxxxxx')
  ) v (d, q, expect);
SELECT results_eq(format('SELECT length(e) < 400 FROM pg_temp.bd_err(%L) e', q), 'VALUES (true)',
	'a 1 MB argument gets a short message: ' || d)
  FROM (VALUES
	('idempotency key', format('SELECT quota_ext.quota_consume(%s, %L, 1, %L)', :ta, 'bd-m', :'big')),
	('tenant name', format('SELECT quota_ext.tenant_create(%L)', :'big')),
	('policy model', format('SELECT quota_ext.policy_set(%s, %L, true)', :ta, :'big')),
	('invoke key', format('SELECT quota_ext.invoke(%L, %L)', :'big', 'bd-m')),
	('authenticate', format('SELECT quota_ext.authenticate(%L)', :'big'))
  ) v (d, q);
-- a character cut is never a byte cut
SELECT is(quota_ext._quote_input(repeat('ä', 100)), repeat('ä', 64) || '...', '_quote_input cuts at 64 characters');
SELECT is(quota_ext._quote_input(repeat('ä', 64)), repeat('ä', 64), '_quote_input keeps 64 characters whole');
SELECT is(pg_temp.bd_err(format('SELECT quota_ext.quota_consume(%s, %L, 1)', :ta, repeat('ä', 1000))),
	'42704 model "' || repeat('ä', 64) || '..." does not exist', 'C cuts multibyte text on a character boundary');

SELECT * FROM finish();
ROLLBACK;
