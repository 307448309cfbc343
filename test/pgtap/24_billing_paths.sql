-- Billing: the two ways billing_close aggregates the ledger give the same,
-- hand-computed invoices.
--   * tenants last closed together (or never): one pass, "covered by the
--     previous close" as a group key, tenants matched afterwards;
--   * tenants last closed at different times (per-tenant closes): each row
--     against its own tenant's previous close.
-- Late rows of a closed period go to the next invoice as adjustments; a
-- tenant's first close bills its earlier rows as adjustments (with their
-- overage); every priced row is on exactly one close.
BEGIN;
\ir metering_helpers.psql
SELECT plan(12);

\o /dev/null
SELECT quota_ext.tenant_create('bp-a') AS ta \gset
SELECT quota_ext.tenant_create('bp-b') AS tb \gset
SELECT quota_ext.tenant_create('bp-c') AS tc \gset
SELECT quota_ext.tenant_create('bp-d') AS td \gset
UPDATE quota_ext.tenants SET created_at = '2024-12-01' WHERE tenant_id IN (:ta, :tb, :tc);
-- D exists from March 10: February closes skip it
UPDATE quota_ext.tenants SET created_at = '2025-03-10' WHERE tenant_id = :td;
SELECT quota_ext.model_register('bp-m') AS m \gset
INSERT INTO quota_ext.prices (price_id, model_id, tenant_id, currency, unit_price, overage_unit_price, effective_from)
VALUES (9101, :m, NULL, 'USD', 0.01, 0.001, '2025-01-01 00:00+00');
SELECT pg_temp.mx_usage(:ta, :m, '2025-01-10 10:00+00', 100, 1.00, 9101);
SELECT pg_temp.mx_usage(:ta, :m, '2025-02-05 10:00+00', 10, 0.10, 9101);
SELECT pg_temp.mx_usage(:ta, :m, '2025-03-03 10:00+00', 30, 0.30, 9101);
SELECT pg_temp.mx_usage(:tb, :m, '2025-01-12 10:00+00', 200, 2.00, 9101);
SELECT pg_temp.mx_usage(:tb, :m, '2025-02-06 10:00+00', 20, 0.20, 9101);
SELECT pg_temp.mx_usage(:tc, :m, '2025-01-15 10:00+00', 300, 3.00, 9101, overage => 50);
SELECT pg_temp.mx_usage(:td, :m, '2025-02-28 10:00+00', 40, 0.40, 9101);
SELECT pg_temp.mx_usage(:td, :m, '2025-03-12 10:00+00', 60, 0.60, 9101, overage => 10);

-- January: A alone, then a late row for A and one for B, then B alone
SELECT quota_ext.billing_close(:ta, '2025-01-01 00:00+00', '2025-02-01 00:00+00');
SELECT pg_temp.mx_usage(:ta, :m, '2025-01-20 10:00+00', 5, 0.05, 9101, created => clock_timestamp());
SELECT pg_temp.mx_usage(:tb, :m, '2025-01-25 10:00+00', 7, 0.07, 9101, created => clock_timestamp());
SELECT quota_ext.billing_close(:tb, '2025-01-01 00:00+00', '2025-02-01 00:00+00');
\o

CREATE TEMP VIEW bp_lines AS
SELECT i.period_start, i.tenant_id, i.total, l.line_no, l.kind, l.calls, l.units, l.amount
  FROM quota_ext.invoices i JOIN quota_ext.invoice_lines l USING (tenant_id, invoice_id);

SELECT results_eq(format($$SELECT tenant_id, total, line_no, kind, calls, units, amount FROM bp_lines
                            WHERE period_start = '2025-01-01 00:00+00' ORDER BY tenant_id, line_no$$),
	format($$VALUES (%s::bigint, 1.00::numeric, 1, 'usage'::text, 1::bigint, 100::numeric, 1.00::numeric),
	                (%s, 2.07, 1, 'usage', 2, 207, 2.07)$$, :ta, :tb),
	'January: A before its late row, B after its own (per-tenant closes)');

-- February for A, B and C together: A and B were last closed at different
-- times, C never (the per-row path).  The same, closed one tenant at a time
-- (the one-pass path), must give the same invoices.
SELECT $$SELECT string_agg(format('%s %s %s %s %s %s %s', tenant_id, total, line_no, kind, calls, units, amount), '; '
                           ORDER BY tenant_id, line_no)
           FROM bp_lines WHERE period_start = '2025-02-01 00:00+00'$$ AS feb_lines \gset
SAVEPOINT one_by_one;
\o /dev/null
SELECT quota_ext.billing_close(:ta, '2025-02-01 00:00+00', '2025-03-01 00:00+00');
SELECT quota_ext.billing_close(:tb, '2025-02-01 00:00+00', '2025-03-01 00:00+00');
SELECT quota_ext.billing_close(:tc, '2025-02-01 00:00+00', '2025-03-01 00:00+00');
\o
:feb_lines \gset feb_one_by_one_
ROLLBACK TO one_by_one;

CREATE TEMP TABLE feb AS SELECT * FROM quota_ext.billing_close('2025-02-01 00:00+00', '2025-03-01 00:00+00');
SELECT is((SELECT count(DISTINCT (prev_end, prev_covered)) FROM quota_ext.billing_closes
            WHERE period_start = '2025-02-01 00:00+00' AND prev_end > '-infinity')::int, 2,
	'February: A and B had different previous closes');
SELECT results_eq(format($$SELECT tenant_id, total, line_no, kind, calls, units, amount FROM bp_lines
                            WHERE period_start = '2025-02-01 00:00+00' ORDER BY tenant_id, line_no$$),
	format($$VALUES (%s::bigint, 0.15::numeric, 1, 'usage'::text, 1::bigint, 10::numeric, 0.10::numeric),
	                (%s, 0.15, 2, 'adjustment', 1, 5, 0.05),
	                (%s, 0.20, 1, 'usage', 1, 20, 0.20),
	                (%s, 3.050, 1, 'adjustment', 1, 300, 3.050)$$, :ta, :ta, :tb, :tc),
	'February: A''s late January row as an adjustment, B''s not again, C''s first close bills January with its overage');
SELECT is((:feb_lines), :'feb_one_by_one_string_agg', 'closing February one tenant at a time gives the same invoices');
SELECT is((SELECT count(*) FROM feb)::int, 3, 'D, created after February, has no February close');

-- March for everyone: A, B, C last closed together, D never (the one-pass
-- path with both kinds of tenant)
\o /dev/null
SELECT pg_temp.mx_usage(:tc, :m, '2025-02-03 10:00+00', 8, 0.08, 9101, created => clock_timestamp());
\o
SAVEPOINT mar_one_by_one;
\o /dev/null
SELECT quota_ext.billing_close(t, '2025-03-01 00:00+00', '2025-04-01 00:00+00') FROM unnest(ARRAY[:ta, :tb, :tc, :td]::bigint[]) t;
\o
SELECT string_agg(format('%s %s %s %s %s %s %s', tenant_id, total, line_no, kind, calls, units, amount), '; '
                  ORDER BY tenant_id, line_no) AS mar_one_by_one
  FROM bp_lines WHERE period_start = '2025-03-01 00:00+00' \gset
ROLLBACK TO mar_one_by_one;

CREATE TEMP TABLE mar AS SELECT * FROM quota_ext.billing_close('2025-03-01 00:00+00', '2025-04-01 00:00+00');
SELECT is((SELECT count(DISTINCT (prev_end, prev_covered)) FROM quota_ext.billing_closes
            WHERE period_start = '2025-03-01 00:00+00' AND prev_end > '-infinity')::int, 1,
	'March: A, B and C had one previous close, D none');
SELECT results_eq(format($$SELECT tenant_id, total, line_no, kind, calls, units, amount FROM bp_lines
                            WHERE period_start = '2025-03-01 00:00+00' ORDER BY tenant_id, line_no$$),
	format($$VALUES (%s::bigint, 0.30::numeric, 1, 'usage'::text, 1::bigint, 30::numeric, 0.30::numeric),
	                (%s, 0.08, 1, 'adjustment', 1, 8, 0.08),
	                (%s, 1.010, 1, 'usage', 1, 60, 0.60),
	                (%s, 1.010, 2, 'overage', 0, 10, 0.010),
	                (%s, 1.010, 3, 'adjustment', 1, 40, 0.40)$$, :ta, :tc, :td, :td, :td),
	'March: C''s late February row as an adjustment, D''s first close with usage, overage and its February row');
SELECT is((SELECT string_agg(format('%s %s %s %s %s %s %s', tenant_id, total, line_no, kind, calls, units, amount), '; '
                             ORDER BY tenant_id, line_no)
             FROM bp_lines WHERE period_start = '2025-03-01 00:00+00'),
	:'mar_one_by_one', 'closing March one tenant at a time gives the same invoices');
SELECT is((SELECT count(*) FROM quota_ext.billing_closes WHERE period_start = '2025-03-01 00:00+00')::int, 4,
	'every tenant is closed for March, B without an invoice');

-- nothing lost, nothing twice
SELECT is((SELECT count(*) FROM quota_ext.usage u
            WHERE u.price_id IS NOT NULL
              AND (SELECT count(*) FROM quota_ext.billing_closes c
                    WHERE c.tenant_id = u.tenant_id AND u.occurred_at < c.period_end AND u.created_at < c.covered_until
                      AND NOT (u.occurred_at < c.prev_end AND u.created_at < c.prev_covered)) <> 1)::int,
	0, 'each priced row is covered by exactly one close');
SELECT is((SELECT sum(total) FROM quota_ext.invoices), 7.860::numeric, 'the invoices total 7.86 (hand-computed)');
SELECT is((SELECT sum(total) FROM quota_ext.invoices),
	(SELECT sum(u.cost) + coalesce(sum(u.overage_units * p.overage_unit_price), 0)
	   FROM quota_ext.usage u JOIN quota_ext.prices p USING (price_id)),
	'invoiced money equals the ledger''s');

SELECT * FROM finish();
ROLLBACK;
