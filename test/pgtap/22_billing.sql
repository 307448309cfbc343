-- Billing: billing_close into invoices and lines (hand-computed cases:
-- several prices over time, overage, late usage, two currencies),
-- idempotency, ordering errors, invoice_issue / invoice_void with NOTIFY
-- and audit.
-- History is written directly into the ledger (as the hot path would have,
-- with past instants) so that periods can be in the past.
BEGIN;
\ir metering_helpers.psql
SELECT plan(46);

\o /dev/null
SELECT quota_ext.tenant_create('bl-a') AS ta \gset
SELECT quota_ext.tenant_create('bl-b') AS tb \gset
SELECT quota_ext.tenant_create('bl-idle') AS tc \gset
UPDATE quota_ext.tenants SET created_at = '2024-12-01' WHERE tenant_id IN (:ta, :tb, :tc);
SELECT quota_ext.model_register('bl-chat') AS m1 \gset
SELECT quota_ext.model_register('bl-tok') AS m2 \gset
-- price history, written directly (price_set refuses back-dated versions)
INSERT INTO quota_ext.prices (price_id, model_id, tenant_id, currency, unit_price, input_per_1k, output_per_1k, overage_unit_price, effective_from) VALUES
	(9001, :m1, NULL, 'USD', 0.01, NULL, NULL, NULL, '2025-01-01 00:00+00'),
	(9002, :m1, NULL, 'USD', 0.02, NULL, NULL, NULL, '2025-01-16 00:00+00'),
	(9003, :m2, NULL, 'USD', 1.00, 0.5, 1.5, 0.001, '2025-01-01 00:00+00'),
	(9004, :m1, :tb, 'EUR', 0.015, NULL, NULL, NULL, '2025-01-01 00:00+00');
-- January
SELECT pg_temp.mx_usage(:ta, :m1, '2025-01-05 10:00+00', 100, 1.00, 9001) AS a_jan5 \gset
SELECT pg_temp.mx_usage(:ta, :m1, '2025-01-20 10:00+00', 50, 1.00, 9002);
SELECT pg_temp.mx_usage(:ta, :m2, '2025-01-21 10:00+00', 1, 3.50, 9003, overage => 200, input_tokens => 2000, output_tokens => 1000);
SELECT pg_temp.mx_usage(:tb, :m1, '2025-01-10 10:00+00', 200, 3.00, 9004);
SELECT pg_temp.mx_usage(:tb, :m2, '2025-01-11 10:00+00', 0, 0.50, 9003, input_tokens => 1000);
-- unpriced usage is metered and invoiced with a zero amount
SELECT pg_temp.mx_usage(:ta, :m1, '2025-01-06 10:00+00', 7, 0, NULL);
-- February (already written when January closes: not January's)
SELECT pg_temp.mx_usage(:ta, :m1, '2025-02-03 10:00+00', 10, 0.20, 9002);
\o

SELECT has_function('quota_ext', 'billing_close', ARRAY['timestamp with time zone', 'timestamp with time zone'], 'billing_close(period_start, period_end)');
SELECT has_function('quota_ext', 'billing_close', ARRAY['bigint', 'timestamp with time zone', 'timestamp with time zone'], 'billing_close(tenant_id, period_start, period_end)');

-- ---------------------------------------------------------------------------
-- January
-- ---------------------------------------------------------------------------
CREATE TEMP TABLE jan AS SELECT * FROM quota_ext.billing_close('2025-01-01 00:00+00', '2025-02-01 00:00+00');
SELECT results_eq(format('SELECT tenant_id, currency::text, status, total, invoice_number FROM jan ORDER BY tenant_id, currency'),
	format($$VALUES (%s::bigint, 'USD'::text, 'draft'::text, 5.70::numeric, NULL::bigint),
	                (%s, 'XXX', 'draft', 0, NULL),
	                (%s, 'EUR', 'draft', 3.000000, NULL), (%s, 'USD', 'draft', 0.500000, NULL)$$, :ta, :ta, :tb, :tb),
	'one draft invoice per tenant and currency (XXX: unpriced usage); an idle tenant gets none');
SELECT results_eq(format($$SELECT l.line_no, l.kind, l.model, l.price_id, l.calls, l.units, l.input_tokens, l.output_tokens, l.unit_price, l.amount
                            FROM quota_ext.invoice_lines l JOIN jan i USING (tenant_id, invoice_id)
                           WHERE i.tenant_id = %s AND i.currency = 'USD' ORDER BY l.line_no$$, :ta),
	$$VALUES (1, 'usage'::text, 'bl-chat'::text, 9001::bigint, 1::bigint, 100::numeric, 0::numeric, 0::numeric, 0.01::numeric, 1.00::numeric),
	         (2, 'usage', 'bl-chat', 9002, 1, 50, 0, 0, 0.02, 1.00),
	         (3, 'usage', 'bl-tok', 9003, 1, 1, 2000, 1000, 1.00, 3.50),
	         (4, 'overage', 'bl-tok', 9003, 0, 200, 0, 0, 0.001, 0.200)$$,
	'tenant A: a line per price version, token counts, an overage line at the overage price');
SELECT results_eq(format($$SELECT l.currency::text, l.model, l.units, l.amount FROM quota_ext.invoice_lines l JOIN jan i USING (tenant_id, invoice_id)
                           WHERE i.tenant_id = %s ORDER BY l.currency, l.line_no$$, :tb),
	$$VALUES ('EUR'::text, 'bl-chat'::text, 200::numeric, 3.00::numeric), ('USD', 'bl-tok', 0, 0.50)$$,
	'tenant B: its own EUR price and a USD list price give two invoices');
SELECT is((SELECT sum(total) FROM jan WHERE tenant_id = :ta), (SELECT sum(l.amount) FROM quota_ext.invoice_lines l JOIN jan i USING (tenant_id, invoice_id) WHERE i.tenant_id = :ta),
	'the total is the sum of the lines');
SELECT is((SELECT count(*) FROM quota_ext.billing_closes WHERE period_start = '2025-01-01 00:00+00')::int, 3, 'every tenant is closed, invoiced or not');
SELECT is((SELECT count(*) FROM quota_ext.audit_log WHERE action = 'invoice_create')::int, 4, 'each invoice is audited');
SELECT is((SELECT count(*) FROM quota_ext.audit_log WHERE action = 'billing_close' AND tenant_id = 0)::int, 1, 'the close is audited');

-- closing twice: the same invoices
SELECT results_eq($$SELECT invoice_id, total FROM quota_ext.billing_close('2025-01-01 00:00+00', '2025-02-01 00:00+00') ORDER BY invoice_id$$,
	'SELECT invoice_id, total FROM jan ORDER BY invoice_id', 'closing again returns the same invoices');
SELECT is((SELECT count(*) FROM quota_ext.invoices)::int, 4, 'and creates none');
SELECT is((SELECT count(*) FROM quota_ext.invoice_lines)::int, 7, 'nor lines');
SELECT results_eq(format($$SELECT invoice_id FROM quota_ext.billing_close(%s, '2025-01-01 00:00+00', '2025-02-01 00:00+00')$$, :ta),
	format('SELECT invoice_id FROM jan WHERE tenant_id = %s', :ta), 'the per-tenant close of a closed period too');

-- late usage for January: a refund written after the close
SELECT pg_temp.mx_usage(:ta, :m1, '2025-01-05 10:00+00', -100, -1.00, 9001, kind => 'refund', created => clock_timestamp(), calls => -1);

-- ---------------------------------------------------------------------------
-- ordering and argument errors change nothing
-- ---------------------------------------------------------------------------
SELECT pg_temp.mx_snap();
SELECT * FROM pg_temp.mx_throws($$SELECT quota_ext.billing_close('2025-01-15 00:00+00', '2025-02-15 00:00+00')$$, '55000', NULL, 'an overlapping period');
SELECT * FROM pg_temp.mx_throws($$SELECT quota_ext.billing_close('2024-12-01 00:00+00', '2025-01-01 00:00+00')$$, '55000', NULL, 'a period before a closed one');
SELECT * FROM pg_temp.mx_throws($$SELECT quota_ext.billing_close('2025-03-01 00:00+00', '2025-02-01 00:00+00')$$, '22023', 'a billing period needs finite period_start < period_end', 'an empty period');
SELECT * FROM pg_temp.mx_throws($$SELECT quota_ext.billing_close(NULL, '2025-02-01 00:00+00')$$, '22004', 'argument "period_start" must not be null', 'NULL period_start');
SELECT * FROM pg_temp.mx_throws($$SELECT quota_ext.billing_close(NULL::bigint, '2025-02-01 00:00+00', '2025-03-01 00:00+00')$$, '22004', 'argument "tenant_id" must not be null', 'NULL tenant_id');
SELECT * FROM pg_temp.mx_throws($$SELECT quota_ext.billing_close(999999, '2025-02-01 00:00+00', '2025-03-01 00:00+00')$$, '42704', 'tenant 999999 does not exist', 'unknown tenant');

-- ---------------------------------------------------------------------------
-- February: February's usage plus the late January refund as an adjustment
-- ---------------------------------------------------------------------------
CREATE TEMP TABLE feb AS SELECT * FROM quota_ext.billing_close(:ta, '2025-02-01 00:00+00', '2025-03-01 00:00+00');
SELECT results_eq($$SELECT l.kind, l.model, l.price_id, l.calls, l.units, l.amount FROM quota_ext.invoice_lines l JOIN feb i USING (tenant_id, invoice_id) ORDER BY l.line_no$$,
	$$VALUES ('usage'::text, 'bl-chat'::text, 9002::bigint, 1::bigint, 10::numeric, 0.20::numeric),
	         ('adjustment', 'bl-chat', 9001, -1, -100, -1.00)$$,
	'late usage of a closed period lands on the next invoice as an adjustment, at its own price');
SELECT is((SELECT total FROM feb), -0.800000::numeric, 'the adjustment counts in the total');
SELECT is((SELECT count(*) FROM quota_ext.billing_closes WHERE period_start = '2025-02-01 00:00+00')::int, 1, 'the per-tenant close closes only that tenant');
-- every priced ledger row is on exactly one close
SELECT is((SELECT count(*) FROM quota_ext.usage u
            WHERE u.price_id IS NOT NULL
              AND (SELECT count(*) FROM quota_ext.billing_closes c
                    WHERE c.tenant_id = u.tenant_id AND u.occurred_at < c.period_end AND u.created_at < c.covered_until
                      AND NOT (u.occurred_at < c.prev_end AND u.created_at < c.prev_covered)) <> 1
              AND u.tenant_id = :ta)::int, 0, 'each of tenant A''s rows is covered by exactly one close');
SELECT is((SELECT sum(total) FROM quota_ext.invoices WHERE tenant_id = :ta),
	(SELECT sum(u.cost) + sum(u.overage_units * p.overage_unit_price) FILTER (WHERE p.overage_unit_price IS NOT NULL)
	   FROM quota_ext.usage u JOIN quota_ext.prices p USING (price_id) WHERE u.tenant_id = :ta),
	'invoiced money equals the ledger''s, nothing lost, nothing twice');

-- a consumption through the hot path, billed at a current price
SELECT quota_ext.price_set('bl-chat', 'USD', unit_price => 0.05);
SELECT quota_ext.policy_set(:tc, 'bl-chat', true);
SELECT quota_ext.quota_consume(:tc, 'bl-chat', 3);
-- (a period closes once it has ended, by the start of the transaction: the
-- row is moved just before it)
UPDATE quota_ext.usage SET occurred_at = now() - interval '1 microsecond' WHERE tenant_id = :tc AND occurred_at >= now();
CREATE TEMP TABLE cur AS SELECT * FROM quota_ext.billing_close(:tc, now() - interval '1 day', now());
SELECT results_eq('SELECT currency::text, total FROM cur', $$VALUES ('USD'::text, 0.150000::numeric)$$, 'a live consumption is invoiced at the price it was charged');

-- ---------------------------------------------------------------------------
-- issue and void
-- ---------------------------------------------------------------------------
SELECT has_function('quota_ext', 'invoice_issue', ARRAY['bigint', 'bigint'], 'invoice_issue(tenant_id, invoice_id)');
SELECT invoice_id AS inv_a FROM jan WHERE tenant_id = :ta AND currency = 'USD' \gset
SELECT invoice_id AS inv_b FROM jan WHERE tenant_id = :tb AND currency = 'EUR' \gset
SELECT results_eq(format('SELECT status, invoice_number IS NOT NULL, issued_at = now() FROM quota_ext.invoice_issue(%s, %s)', :ta, :inv_a),
	$$VALUES ('issued'::text, true, true)$$, 'issue: numbered, timestamped');
SELECT is((SELECT invoice_number FROM quota_ext.invoice_issue(:tb, :inv_b)),
	(SELECT invoice_number + 1 FROM quota_ext.invoices WHERE invoice_id = :inv_a), 'numbers come from one sequence in issue order');
SELECT is((SELECT invoice_number FROM quota_ext.invoice_issue(:ta, :inv_a)), (SELECT invoice_number FROM quota_ext.invoices WHERE invoice_id = :inv_a),
	'issuing again changes nothing');
SELECT is((SELECT count(*) FROM quota_ext.audit_log WHERE action = 'invoice_issue')::int, 2, 'issue is audited once per invoice');
SELECT ok(pg_notification_queue_usage() >= 0, 'notifications are queued for commit (payloads: test/specs/invoice_notify.spec)');
SELECT results_eq(format($$SELECT status, void_reason FROM quota_ext.invoice_void(%s, %s, 'customer dispute')$$, :tb, :inv_b),
	$$VALUES ('void'::text, 'customer dispute'::text)$$, 'void an issued invoice with a reason');
SELECT is((SELECT count(*) FROM quota_ext.audit_log WHERE action = 'invoice_void')::int, 1, 'void is audited');
SELECT pg_temp.mx_snap();
SELECT * FROM pg_temp.mx_throws(format('SELECT quota_ext.invoice_issue(%s, %s)', :tb, :inv_b), '55000', format('invoice %s is void', :inv_b), 'a void invoice cannot be issued');
SELECT * FROM pg_temp.mx_throws(format('SELECT quota_ext.invoice_issue(%s, %s)', :tb, :inv_a), '42704', format('invoice %s does not exist', :inv_a), 'another tenant''s invoice does not exist');
SELECT * FROM pg_temp.mx_throws(format('SELECT quota_ext.invoice_void(%s, NULL)', :ta), '22004', 'argument "invoice_id" must not be null', 'void: NULL invoice');

-- a temp table of the work table's name, made by the caller with a trigger,
-- is not used (its trigger would run as the extension's owner)
CREATE ROLE qx_tap_bill_admin LOGIN IN ROLE quota_ext_admin;
DROP TABLE IF EXISTS pg_temp.quota_ext_bill;  -- the earlier closes' (this test is one transaction)
SET ROLE qx_tap_bill_admin;
CREATE TEMP TABLE quota_ext_bill (tenant_id bigint, model_id bigint, price_id bigint, kind text,
	calls numeric, units numeric, input_tokens numeric, output_tokens numeric,
	overage_units numeric, cost numeric);
CREATE FUNCTION pg_temp.bill_trap() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'trap fired as %', current_user; END $$;
CREATE TRIGGER trap BEFORE INSERT OR TRUNCATE ON pg_temp.quota_ext_bill
	FOR EACH STATEMENT EXECUTE FUNCTION pg_temp.bill_trap();
SELECT lives_ok(format($$SELECT quota_ext.billing_close(%s, '2025-03-01 00:00+00', '2025-04-01 00:00+00')$$, :ta),
	'billing_close(tenant) drops a work table it did not make instead of filling it');
RESET ROLE;
SELECT * FROM finish();
ROLLBACK;
