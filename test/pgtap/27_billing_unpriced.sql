-- Billing (issue 18): a period that has not ended is not closed; usage
-- charged while a model had no price is invoiced as 'unpriced' lines with
-- its calls, units and tokens and a zero amount (on the tenant's invoice in
-- XXX), never silently dropped; a default price (price_set('*', ...), list
-- or per tenant) prices models without their own; invoices stay exact to
-- the micro-unit.
BEGIN;
\ir metering_helpers.psql
SELECT plan(28);

\o /dev/null
SELECT quota_ext.tenant_create('up-a') AS ta \gset
SELECT quota_ext.tenant_create('up-b') AS tb \gset
UPDATE quota_ext.tenants SET created_at = '2024-12-01' WHERE tenant_id IN (:ta, :tb);
SELECT quota_ext.model_register('up-chat') AS m1 \gset
SELECT quota_ext.model_register('up-tok') AS m2 \gset
\o

-- ---------------------------------------------------------------------------
-- an open period is refused, by every overload, and nothing is written
-- ---------------------------------------------------------------------------
SELECT pg_temp.mx_usage(:ta, :m1, now() - interval '1 hour', 5, 0, NULL) IS NOT NULL AS wrote \gset
SELECT pg_temp.mx_snap();
SELECT * FROM pg_temp.mx_throws($$SELECT quota_ext.billing_close(now() - interval '1 day', now() + interval '1 day')$$,
	'22023', NULL, 'billing_close(period_start, period_end) refuses a period ending tomorrow');
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.billing_close(%s, now() - interval '1 day', now() + interval '1 microsecond')$$, :ta),
	'22023', NULL, 'billing_close(tenant_id, ...) refuses a period ending a microsecond after the transaction''s start');
CREATE FUNCTION pg_temp.close_hint() RETURNS text LANGUAGE plpgsql AS $$
DECLARE h text;
BEGIN
	PERFORM quota_ext.billing_close(now() - interval '1 day', now() + interval '1 day');
	RETURN NULL;
EXCEPTION WHEN invalid_parameter_value THEN
	GET STACKED DIAGNOSTICS h = PG_EXCEPTION_HINT;
	RETURN h;
END $$;
SELECT is(pg_temp.close_hint(), 'Close a period once it has ended (period_end <= now()).', 'the error hints at closing once the period has ended');
SELECT is((SELECT count(*) FROM quota_ext.billing_closes)::int, 0, 'no period is closed');

-- ---------------------------------------------------------------------------
-- the hot path: 60 units before any price, then priced ones
-- ---------------------------------------------------------------------------
\o /dev/null
SELECT quota_ext.policy_set(:tb, 'up-chat', true);
SELECT quota_ext.quota_consume(:tb, 'up-chat', 60);
SELECT quota_ext.price_set('up-chat', 'USD', unit_price => 0.000001);
SELECT quota_ext.quota_consume(:tb, 'up-chat', 7);
SELECT quota_ext.quota_consume(:tb, 'up-chat', 3);
-- (the rows are moved just before the transaction's start, so that the
-- period ends before it)
UPDATE quota_ext.usage SET occurred_at = now() - interval '1 microsecond' WHERE tenant_id = :tb;
\o
CREATE TEMP TABLE cur AS SELECT * FROM quota_ext.billing_close(:tb, now() - interval '1 day', now());
SELECT results_eq('SELECT currency::text, total FROM cur ORDER BY currency',
	$$VALUES ('USD'::text, 0.000010::numeric), ('XXX', 0::numeric)$$,
	'a period ending at the transaction''s start closes: the priced invoice, exact to the micro-unit, and one for the unpriced usage');
SELECT results_eq($$SELECT l.kind, l.model, l.price_id IS NULL, l.calls, l.units, l.unit_price, l.amount
                      FROM quota_ext.invoice_lines l JOIN cur i USING (tenant_id, invoice_id) ORDER BY i.currency, l.line_no$$,
	$$VALUES ('usage'::text, 'up-chat'::text, false, 2::bigint, 10::numeric, 0.000001::numeric, 0.000010::numeric),
	         ('unpriced', 'up-chat', true, 1, 60, NULL, 0)$$,
	'the 60 units consumed before any price are on the invoice, with a zero amount');
SELECT is((SELECT sum(total) FROM cur), (SELECT sum(cost) FROM quota_ext.usage WHERE tenant_id = :tb),
	'the invoices add up to the ledger''s money');
SELECT is((SELECT sum(l.units) FROM quota_ext.invoice_lines l WHERE tenant_id = :tb), (SELECT sum(units) FROM quota_ext.usage WHERE tenant_id = :tb),
	'every unit of the ledger is on an invoice');

-- ---------------------------------------------------------------------------
-- history at UTC midnights: the close reads the billing rollup, which keeps
-- unpriced rows too (price_id 0)
-- ---------------------------------------------------------------------------
\o /dev/null
INSERT INTO quota_ext.prices (price_id, model_id, tenant_id, currency, unit_price, input_per_1k, output_per_1k, effective_from) VALUES
	(9701, :m2, NULL, 'EUR', 0.000003, 0.001, 0.002, '2025-01-15 00:00+00');
SELECT pg_temp.mx_usage(:ta, :m2, '2025-01-05 10:00+00', 4, 0, NULL, input_tokens => 1000, output_tokens => 10);
SELECT pg_temp.mx_usage(:ta, :m2, '2025-01-06 10:00+00', 6, 0, NULL, calls => 2, input_tokens => 500);
SELECT pg_temp.mx_usage(:ta, :m2, '2025-01-20 10:00+00', 3, 0.001509, 9701, input_tokens => 1, output_tokens => 1);
SELECT quota_ext.usage_rollup();
-- a late unpriced row for January, written after the rollup's watermark
SELECT pg_temp.mx_usage(:ta, :m2, '2025-01-07 10:00+00', 1, 0, NULL, created => clock_timestamp());
\o
SELECT is((SELECT count(*) FROM quota_ext.usage_billing_daily WHERE tenant_id = :ta AND model_id = :m2 AND price_id = 0)::int, 2,
	'the billing rollup keeps unpriced rows, as price_id 0');
CREATE TEMP TABLE jan AS SELECT * FROM quota_ext.billing_close(:ta, '2025-01-01 00:00+00', '2025-02-01 00:00+00');
SELECT results_eq('SELECT currency::text, total FROM jan ORDER BY currency',
	$$VALUES ('EUR'::text, 0.001509::numeric), ('XXX', 0::numeric)$$,
	'a tenant with unpriced usage gets an invoice for it');
SELECT results_eq($$SELECT i.currency::text, l.line_no, l.kind, l.calls, l.units, l.input_tokens, l.output_tokens, l.amount
                      FROM quota_ext.invoice_lines l JOIN jan i USING (tenant_id, invoice_id) ORDER BY i.currency, l.line_no$$,
	$$VALUES ('EUR'::text, 1, 'usage'::text, 1::bigint, 3::numeric, 1::numeric, 1::numeric, 0.001509::numeric),
	         ('XXX', 1, 'unpriced', 4, 11, 1500, 10, 0)$$,
	'unpriced calls, units and tokens from the rollup and the ledger''s tail, zero amount');
SELECT is((SELECT total FROM jan WHERE currency = 'XXX'),
	(SELECT sum(amount) FROM quota_ext.invoice_lines l JOIN jan i USING (tenant_id, invoice_id) WHERE i.currency = 'XXX'),
	'the unpriced invoice''s total is the sum of its lines');
-- an unpriced row of January written after the close: an adjustment line
-- without a price on February's XXX invoice
SELECT pg_temp.mx_usage(:ta, :m2, '2025-01-08 10:00+00', 2, 0, NULL, created => clock_timestamp()) IS NOT NULL AS late \gset
CREATE TEMP TABLE feb AS SELECT * FROM quota_ext.billing_close(:ta, '2025-02-01 00:00+00', '2025-03-01 00:00+00');
SELECT results_eq($$SELECT i.currency::text, i.total, l.kind, l.price_id IS NULL, l.units, l.amount
                      FROM quota_ext.invoice_lines l JOIN feb i USING (tenant_id, invoice_id)$$,
	$$VALUES ('XXX'::text, 0::numeric, 'adjustment'::text, true, 2::numeric, 0::numeric)$$,
	'late unpriced usage of a closed period is an adjustment line with no price and a zero amount');
SELECT is((SELECT sum(units) FROM quota_ext.invoice_lines WHERE tenant_id = :ta), (SELECT sum(units) FROM quota_ext.usage WHERE tenant_id = :ta AND occurred_at < '2025-03-01'),
	'every unit up to the last close is on exactly one invoice');

-- ---------------------------------------------------------------------------
-- default prices: price_set('*', ...) for every model without its own price;
-- precedence tenant+model, model list, tenant default, list default
-- ---------------------------------------------------------------------------
SELECT quota_ext.tenant_create('up-c') AS tc \gset
SELECT quota_ext.tenant_create('up-d') AS td \gset
SELECT quota_ext.model_register('up-plain') AS m3 \gset
SELECT quota_ext.model_register('up-own') AS m4 \gset
\o /dev/null
SELECT quota_ext.policy_set(t, 'up-*', true) FROM unnest(ARRAY[:tc, :td]::bigint[]) t;
\o
SELECT isnt(quota_ext.price_set('*', 'USD', unit_price => 0.000002), NULL, 'price_set(''*'', ...) sets a list default price');
SELECT is((SELECT count(*) FROM quota_ext.prices WHERE model_id IS NULL AND tenant_id IS NULL)::int, 1,
	'a default price is a price version without a model');
SELECT isnt(quota_ext.price_set('*', 'USD', unit_price => 0.000005, tenant_id => :td), NULL, 'and per tenant');
\o /dev/null
SELECT quota_ext.price_set('up-own', 'USD', unit_price => 0.001);
\o
SELECT is((SELECT unit_price FROM quota_ext.price_lookup(:tc, 'up-plain')), 0.000002, 'a model without a price: the list default');
SELECT is((SELECT unit_price FROM quota_ext.price_lookup(:td, 'up-plain')), 0.000005, 'the tenant''s default beats the list default');
SELECT is((SELECT unit_price FROM quota_ext.price_lookup(:td, 'up-own')), 0.001, 'the model''s list price beats the tenant''s default');
\o /dev/null
SELECT quota_ext.price_set('up-own', 'USD', unit_price => 0.0003, tenant_id => :td);
\o
SELECT is((SELECT unit_price FROM quota_ext.price_lookup(:td, 'up-own')), 0.0003, 'the tenant''s own price of the model beats all');
-- the hot path prices by the same rule (src/policy.c calls _price_at, as _price_in_force does)
SELECT results_eq(format($$SELECT (quota_ext.quota_consume(%s, 'up-plain', 10)).cost
                           UNION ALL SELECT (quota_ext.quota_consume(%s, 'up-plain', 10)).cost
                           UNION ALL SELECT (quota_ext.quota_consume(%s, 'up-own', 2)).cost$$, :tc, :td, :td),
	$$VALUES (0.000020::numeric), (0.000050), (0.000600)$$,
	'consume charges the list default, the tenant default, the tenant''s own price');
SELECT is((SELECT count(*) FROM quota_ext.usage u JOIN quota_ext.prices p USING (price_id)
            WHERE u.tenant_id IN (:tc, :td) AND p.model_id IS NULL)::int, 2,
	'the usage rows name the default price versions they were charged at');
\o /dev/null
UPDATE quota_ext.tenants SET created_at = now() - interval '1 day' WHERE tenant_id IN (:tc, :td);
UPDATE quota_ext.usage SET occurred_at = now() - interval '1 microsecond' WHERE tenant_id IN (:tc, :td);
\o
CREATE TEMP TABLE dflt AS SELECT b.* FROM unnest(ARRAY[:tc, :td]::bigint[]) t,
	LATERAL quota_ext.billing_close(t, now() - interval '1 day', now()) b;
SELECT results_eq(format($$SELECT i.tenant_id, i.currency::text, i.total, l.kind, l.model, l.units, l.unit_price, l.amount
                           FROM dflt i JOIN quota_ext.invoice_lines l USING (tenant_id, invoice_id)
                          ORDER BY i.tenant_id, l.line_no$$),
	format($$VALUES (%s::bigint, 'USD'::text, 0.000020::numeric, 'usage'::text, 'up-plain'::text, 10::numeric, 0.000002::numeric, 0.000020::numeric),
	                (%s, 'USD', 0.000650, 'usage', 'up-own', 2, 0.0003, 0.000600),
	                (%s, 'USD', 0.000650, 'usage', 'up-plain', 10, 0.000005, 0.000050)$$, :tc, :td, :td),
	'default-priced usage is invoiced at its default price, exact to the micro-unit');
-- price_clear('*') ends a default price: the model is unpriced again
\o /dev/null
SELECT quota_ext.price_clear('*', now() + interval '1 day');
\o
SELECT is((SELECT count(*) FROM quota_ext.price_lookup(:tc, 'up-plain', now() + interval '2 days'))::int, 0,
	'after price_clear(''*''), a model without a price is unpriced');
SELECT is((SELECT unit_price FROM quota_ext.price_lookup(:td, 'up-plain', now() + interval '2 days')), 0.000005,
	'and a tenant default still applies');
SELECT * FROM finish();
ROLLBACK;
