-- metrics() (issue 18): tokens and cost per tenant for the tenant's current
-- month, from the daily rollup (usage_rollup), so the hot path writes
-- nothing more; a tenant's context sees its own series only.
BEGIN;
\ir metering_helpers.psql
SELECT plan(9);

\o /dev/null
SELECT quota_ext.tenant_create('mc-a') AS ta \gset
SELECT quota_ext.tenant_create('mc-b') AS tb \gset
SELECT quota_ext.model_register('mc-m') AS m \gset
INSERT INTO quota_ext.prices (price_id, model_id, tenant_id, currency, unit_price, effective_from) VALUES
	(9901, :m, NULL, 'EUR', 0.000005, '2025-01-01 00:00+00');
SELECT pg_temp.mx_usage(:ta, :m, now(), 4, 0.000020, 9901, input_tokens => 1200, output_tokens => 30);
SELECT pg_temp.mx_usage(:ta, :m, now(), 1, 0.000005, 9901, input_tokens => 800, output_tokens => 70);
SELECT pg_temp.mx_usage(:ta, :m, now(), 9, 0, NULL, input_tokens => 5);
SELECT pg_temp.mx_usage(:tb, :m, now(), 2, 0.000010, 9901, input_tokens => 10, output_tokens => 20);
-- last month: not in the current month's series
SELECT pg_temp.mx_usage(:ta, :m, date_trunc('month', now()) - interval '2 days', 7, 0.000035, 9901, input_tokens => 100000);
\o
SELECT doesnt_match(quota_ext.metrics(), format('quota_ext_tenant_(tokens|cost)\{tenant_id="%s"', :ta),
	'before usage_rollup there are no token or cost series: they come from the rollup, not the hot path');
SELECT ok(quota_ext.usage_rollup() > 0, 'usage_rollup');
SELECT matches(quota_ext.metrics(), format(E'quota_ext_tenant_tokens\\{tenant_id="%s",direction="input"\\} 2005\n', :ta),
	'input tokens of the current month (priced and unpriced)');
SELECT matches(quota_ext.metrics(), format(E'quota_ext_tenant_tokens\\{tenant_id="%s",direction="output"\\} 100\n', :ta),
	'output tokens of the current month');
SELECT matches(quota_ext.metrics(), format(E'quota_ext_tenant_cost\\{tenant_id="%s",currency="EUR"\\} 0.000025\n', :ta),
	'cost of the current month, exact');
SELECT doesnt_match(quota_ext.metrics(), format('quota_ext_tenant_cost\{tenant_id="%s",currency="XXX"', :ta),
	'unpriced usage has no cost series');
SELECT matches(quota_ext.metrics(), format(E'quota_ext_tenant_cost\\{tenant_id="%s",currency="EUR"\\} 0.000010\n', :tb),
	'an admin without a context sees every tenant');

CREATE ROLE qx_tap_mc_admin LOGIN IN ROLE quota_ext_admin;
SET ROLE qx_tap_mc_admin;
SELECT quota_ext.set_tenant(:ta);
SELECT matches(quota_ext.metrics(), format('quota_ext_tenant_cost\{tenant_id="%s"', :ta), 'in A''s context: A''s cost');
SELECT doesnt_match(quota_ext.metrics(), format('tenant_id="%s"', :tb), 'and no series of B');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;
