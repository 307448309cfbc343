-- Billing from rollups: billing_close reads usage_billing_daily for the rows
-- written before the rollup watermark's UTC midnight, the ledger for the
-- rest and for the day of the previous close's watermark.  The same period
-- closed with rollups up to date, stale, or none gives the same,
-- hand-computed invoices.  The January close is made to look as if it had
-- run on 2025-02-01 at 06:00 (its covered_until), so that late rows can be
-- written on that day (read from the ledger) and on later days (placed by
-- the rollup's days).
BEGIN;
\ir metering_helpers.psql
SELECT plan(9);

\o /dev/null
SELECT quota_ext.tenant_create('br-a') AS ta \gset
SELECT quota_ext.tenant_create('br-b') AS tb \gset
UPDATE quota_ext.tenants SET created_at = '2024-12-01' WHERE tenant_id IN (:ta, :tb);
SELECT quota_ext.model_register('br-m') AS m \gset
INSERT INTO quota_ext.prices (price_id, model_id, tenant_id, currency, unit_price, overage_unit_price, effective_from) VALUES
	(9201, :m, NULL, 'USD', 0.01, 0.001, '2025-01-01 00:00+00'),
	(9202, :m, NULL, 'USD', 0.02, 0.001, '2025-01-20 00:00+00');
\o

-- January's rows, written in January
CREATE FUNCTION pg_temp.br_january(ta bigint, tb bigint, m bigint) RETURNS void LANGUAGE sql AS $$
	SELECT pg_temp.mx_usage(ta, m, '2025-01-10 10:00+00', 100, 1.00, 9201);
	SELECT pg_temp.mx_usage(ta, m, '2025-01-25 10:00+00', 50, 1.00, 9202, overage => 20);
	SELECT pg_temp.mx_usage(tb, m, '2025-01-12 10:00+00', 200, 2.00, 9201);
$$;
-- the January close, as if at 2025-02-01 06:00
CREATE FUNCTION pg_temp.br_close_january() RETURNS void LANGUAGE sql AS $$
	SELECT count(*) FROM quota_ext.billing_close('2025-01-01 00:00+00', '2025-02-01 00:00+00');
	UPDATE quota_ext.billing_closes SET covered_until = '2025-02-01 06:00+00' WHERE period_start = '2025-01-01 00:00+00';
	UPDATE quota_ext.invoices SET covered_until = '2025-02-01 06:00+00' WHERE period_start = '2025-01-01 00:00+00';
$$;
-- rows written after the January close
CREATE FUNCTION pg_temp.br_later(ta bigint, tb bigint, m bigint) RETURNS void LANGUAGE sql AS $$
	-- February usage
	SELECT pg_temp.mx_usage(ta, m, '2025-02-05 10:00+00', 10, 0.20, 9202);
	-- late for January, on the day of the January close (ledger)
	SELECT pg_temp.mx_usage(ta, m, '2025-01-31 10:00+00', 5, 0.10, 9202, created => '2025-02-01 08:00+00');
	-- late for January, days later (rollup): a refund
	SELECT pg_temp.mx_usage(tb, m, '2025-01-20 10:00+00', -7, -0.07, 9201, kind => 'refund', calls => -1,
	                        created => '2025-02-10 09:00+00');
	-- February's last hour, written in March: February usage
	SELECT pg_temp.mx_usage(ta, m, '2025-02-28 23:00+00', 3, 0.06, 9202, created => '2025-03-01 01:00+00');
	-- March: not February's
	SELECT pg_temp.mx_usage(ta, m, '2025-03-02 10:00+00', 1, 0.02, 9202);
$$;
CREATE FUNCTION pg_temp.br_february() RETURNS text LANGUAGE sql AS $$
	SELECT count(*) FROM quota_ext.billing_close('2025-02-01 00:00+00', '2025-03-01 00:00+00');
	SELECT string_agg(format('%s %s %s %s %s %s %s %s', i.tenant_id, i.total, l.line_no, l.kind, l.price_id,
	                         l.calls, l.units, l.amount), '; ' ORDER BY i.tenant_id, l.line_no)
	  FROM quota_ext.invoices i JOIN quota_ext.invoice_lines l USING (tenant_id, invoice_id)
	 WHERE i.period_start = '2025-02-01 00:00+00';
$$;

-- no rollup: the ledger only
SAVEPOINT variant;
\o /dev/null
SELECT pg_temp.br_january(:ta, :tb, :m);
SELECT pg_temp.br_close_january();
SELECT pg_temp.br_later(:ta, :tb, :m);
\o
SELECT pg_temp.br_february() AS feb_none \gset
SELECT is((SELECT count(*) FROM quota_ext.rollup_state)::int, 0, 'no rollup yet');
SELECT results_eq(format($$SELECT i.tenant_id, i.total, l.line_no, l.kind, l.price_id, l.calls, l.units, l.amount
                            FROM quota_ext.invoices i JOIN quota_ext.invoice_lines l USING (tenant_id, invoice_id)
                           WHERE i.period_start = '2025-02-01 00:00+00' ORDER BY i.tenant_id, l.line_no$$),
	format($$VALUES (%s::bigint, 0.36::numeric, 1, 'usage'::text, 9202::bigint, 2::bigint, 13::numeric, 0.26::numeric),
	                (%s, 0.36, 2, 'adjustment', 9202, 1, 5, 0.10),
	                (%s, -0.07, 1, 'adjustment', 9201, -1, -7, -0.07)$$, :ta, :ta, :tb),
	'February from the ledger: usage written in March, late rows of the close''s day and later as adjustments');
ROLLBACK TO variant;

-- rollups up to date (one rollup after every row is written: the rows carry
-- past instants, so a rollup in between would have passed them already)
\o /dev/null
SELECT pg_temp.br_january(:ta, :tb, :m);
SELECT pg_temp.br_close_january();
SELECT pg_temp.br_later(:ta, :tb, :m);
SELECT quota_ext.usage_rollup();
\o
SELECT ok((SELECT count(*) FROM quota_ext.usage_billing_daily WHERE created_day = '2025-02-10') = 1,
	'the rollup holds the refund by its UTC days');
SAVEPOINT tampered;
UPDATE quota_ext.usage_billing_daily SET cost = cost - 1000 WHERE created_day = '2025-02-10';
SELECT is((SELECT total FROM quota_ext.billing_close(:tb, '2025-02-01 00:00+00', '2025-03-01 00:00+00')), -1000.07::numeric,
	'the close reads the rollup (a tampered rollup row shows)');
ROLLBACK TO tampered;
SELECT is(pg_temp.br_february(), :'feb_none', 'rollups up to date: the same invoices');
ROLLBACK TO variant;

-- a stale rollup: rows written up to 2025-02-01 00:00 only
\o /dev/null
SELECT pg_temp.br_january(:ta, :tb, :m);
SELECT quota_ext.usage_rollup();
UPDATE quota_ext.rollup_state SET watermark = '2025-02-01 00:00+00';
SELECT pg_temp.br_close_january();
SELECT pg_temp.br_later(:ta, :tb, :m);
\o
SELECT is(pg_temp.br_february(), :'feb_none', 'a stale rollup: the same invoices');
SELECT is((SELECT count(*) FROM quota_ext.usage u
            WHERE u.price_id IS NOT NULL
              AND (SELECT count(*) FROM quota_ext.billing_closes c
                    WHERE c.tenant_id = u.tenant_id AND u.occurred_at < c.period_end AND u.created_at < c.covered_until
                      AND NOT (u.occurred_at < c.prev_end AND u.created_at < c.prev_covered)) <> 1
              AND u.occurred_at < '2025-03-01')::int,
	0, 'each priced row before March is covered by exactly one close');
SELECT is((SELECT sum(total) FROM quota_ext.invoices),
	(SELECT sum(u.cost) + coalesce(sum(u.overage_units * p.overage_unit_price), 0)
	   FROM quota_ext.usage u JOIN quota_ext.prices p USING (price_id) WHERE u.occurred_at < '2025-03-01'),
	'invoiced money equals the ledger''s');

-- a period that does not start at UTC midnight: the ledger, same result
ROLLBACK TO variant;
\o /dev/null
SELECT pg_temp.br_january(:ta, :tb, :m);
SELECT quota_ext.usage_rollup();
SELECT count(*) FROM quota_ext.billing_close('2025-01-01 00:00+00', '2025-02-01 00:00+00');
SELECT pg_temp.mx_usage(:ta, :m, '2025-02-05 10:00+00', 10, 0.20, 9202);
SELECT pg_temp.mx_usage(:ta, :m, '2025-02-20 10:00+00', 1, 0.02, 9202);
SELECT quota_ext.usage_rollup();
\o
SELECT results_eq($$SELECT tenant_id, total FROM quota_ext.billing_close('2025-02-01 00:00+00', '2025-02-15 12:00+00') ORDER BY tenant_id$$,
	format($$VALUES (%s::bigint, 0.20::numeric)$$, :ta),
	'a period ending at noon is closed from the ledger');

SELECT * FROM finish();
ROLLBACK;
