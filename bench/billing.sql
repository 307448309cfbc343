-- bench/billing.sql — billing_close and tenant_summary beside a plain GROUP BY
-- over the same usage rows (workload for the benchmark issue; no timing is
-- asserted anywhere).
--
--   createdb qbench && psql -d qbench -c 'CREATE EXTENSION quota_ext'
--   psql -d qbench -v rows=1000000 -f bench/billing.sql     # and rows=10000000
--
-- Rows are written straight into the ledger with INSERT ... SELECT
-- generate_series (the hot path is measured elsewhere): 1000 tenants, 5
-- models with list prices, a month of history ending now, into monthly
-- partitions.  Timings print with \timing.
\set ON_ERROR_STOP 1
\if :{?rows}
\else
\set rows 1000000
\endif
\timing off
SET client_min_messages = warning;

SELECT count(quota_ext.tenant_create('bench-' || g)) AS tenants FROM generate_series(1, 1000) g;
UPDATE quota_ext.tenants SET created_at = now() - interval '90 days';
SELECT count(quota_ext.model_register('bench-m' || g)) AS models FROM generate_series(1, 5) g;
INSERT INTO quota_ext.prices (model_id, currency, unit_price, input_per_1k, output_per_1k, effective_from)
SELECT m.model_id, 'USD', 0.0001 * m.model_id, 0.5, 1.5, now() - interval '90 days'
  FROM quota_ext.models m WHERE m.name LIKE 'bench-m%';
SELECT quota_ext.usage_partitions_maintain(1);
-- last month's partition too
INSERT INTO quota_ext.usage (tenant_id, created_at, occurred_at, kind, model_id, calls, units, cost)
VALUES (1, date_trunc('month', now()) - interval '1 day', date_trunc('month', now()) - interval '1 day',
        'consume', (SELECT min(model_id) FROM quota_ext.models), 0, 0, 0);
SELECT quota_ext.usage_partitions_maintain(1);

\echo == generating :rows usage rows
\timing on
INSERT INTO quota_ext.usage (tenant_id, created_at, occurred_at, kind, model_id, user_id, calls, units,
                             input_tokens, output_tokens, price_id, cost)
SELECT t, at, at, 'consume', p.model_id, NULL, 1, u, 1000 + g % 500, 200 + g % 100, p.price_id,
       round(u * p.unit_price + (1000 + g % 500) * 0.0005 + (200 + g % 100) * 0.0015, 6)
  FROM generate_series(1, :rows) g
 CROSS JOIN LATERAL (SELECT 1 + (g * 7919) % 1000 AS t,
                            now() - interval '30 days' + (g::float8 / :rows) * interval '30 days' - interval '1 minute' AS at,
                            1 + g % 50 AS u,
                            (SELECT min(price_id) FROM quota_ext.prices) + g % 5 AS pid) x
  JOIN quota_ext.prices p ON p.price_id = x.pid;
\timing off
VACUUM ANALYZE quota_ext.usage;

SELECT now() - interval '31 days' AS ps, now() AS pe \gset
\echo == plain GROUP BY over the period (the reference)
\timing on
SELECT count(*) AS groups, sum(c) FROM (
	SELECT u.tenant_id, p.currency, u.model_id, u.price_id, sum(u.calls), sum(u.units) AS c, sum(u.cost)
	  FROM quota_ext.usage u JOIN quota_ext.prices p USING (price_id)
	 WHERE u.occurred_at >= :'ps' AND u.occurred_at < :'pe'
	 GROUP BY 1, 2, 3, 4) s;
\echo == billing_close over the same rows (every tenant)
SELECT count(*) AS invoices, sum(total) FROM quota_ext.billing_close(:'ps', :'pe');
\echo == billing_close again (idempotent: returns the invoices)
SELECT count(*) FROM quota_ext.billing_close(:'ps', :'pe');
\timing off

\echo == tenant_summary: ledger only (no rollup yet) vs after usage_rollup()
\timing on
SELECT sum(calls) FROM quota_ext.usage WHERE tenant_id = 42 AND occurred_at >= date_trunc('month', now());
SELECT length(quota_ext.tenant_summary(42)::text);
SELECT quota_ext.usage_rollup();
SELECT length(quota_ext.tenant_summary(42)::text);
SELECT length(quota_ext.tenant_summary(42)::text);
\timing off

-- billing_close from the rollups needs a period at UTC midnights: the last
-- whole UTC days, closed and rolled back (the period above is closed already)
SELECT date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' - interval '20 days' AS ps2,
       date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS pe2 \gset
\echo == billing_close of UTC days after usage_rollup() (rolled back), and its GROUP BY
BEGIN;
DELETE FROM quota_ext.billing_closes;
\timing on
SELECT count(*) AS invoices, sum(total) FROM quota_ext.billing_close(:'ps2', :'pe2');
\timing off
ROLLBACK;
\timing on
SELECT count(*) AS groups, sum(c) FROM (
	SELECT u.tenant_id, p.currency, u.model_id, u.price_id, sum(u.calls), sum(u.units) AS c, sum(u.cost)
	  FROM quota_ext.usage u JOIN quota_ext.prices p USING (price_id)
	 WHERE u.occurred_at >= :'ps2' AND u.occurred_at < :'pe2'
	 GROUP BY 1, 2, 3, 4) s;
\timing off
