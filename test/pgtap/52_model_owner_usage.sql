-- The marketplace owner's view (issue 18): model_usage_by_consumer() shows
-- a model owner how the tenants that use its models use them, aggregated
-- per model and consumer tenant, and nothing else of the consumers; it is
-- a cross-tenant read, so it gets cross-tenant tests: a consumer (or any
-- other tenant) cannot read an owner's view, an owner sees only its own
-- models, and an app login without a context nothing.
BEGIN;
\ir metering_helpers.psql
SELECT plan(11);

\o /dev/null
SELECT quota_ext.tenant_create('mo-owner') AS tb \gset
SELECT quota_ext.tenant_create('mo-c1') AS tc \gset
SELECT quota_ext.tenant_create('mo-c2') AS td \gset
SELECT quota_ext.model_register('mo-x', owner_tenant_id => :tb) AS mx \gset
SELECT quota_ext.model_register('mo-y', owner_tenant_id => :tb) AS my \gset
SELECT quota_ext.model_register('mo-c1-own', owner_tenant_id => :tc) AS mc \gset
SELECT quota_ext.model_register('mo-global') AS mg \gset
SELECT quota_ext.model_share(:tb, 'mo-x', :tc), quota_ext.model_share(:tb, 'mo-x', :td), quota_ext.model_share(:tb, 'mo-y', :tc);
SELECT pg_temp.mx_usage(:tc, :mx, '2025-03-02 10:00+00', 5, 0, NULL, input_tokens => 100, output_tokens => 10);
SELECT pg_temp.mx_usage(:tc, :mx, '2025-03-09 10:00+00', 7, 0, NULL, calls => 2, input_tokens => 50);
SELECT pg_temp.mx_usage(:td, :mx, '2025-03-03 10:00+00', 1, 0, NULL);
SELECT pg_temp.mx_usage(:tc, :my, '2025-03-04 10:00+00', 3, 0, NULL);
SELECT pg_temp.mx_usage(:tb, :mx, '2025-03-05 10:00+00', 2, 0, NULL);
-- not the owner's: the consumer's own model and a global one; and outside the range
SELECT pg_temp.mx_usage(:tc, :mc, '2025-03-05 10:00+00', 40, 0, NULL);
SELECT pg_temp.mx_usage(:tc, :mg, '2025-03-05 10:00+00', 50, 0, NULL);
SELECT pg_temp.mx_usage(:tc, :mx, '2025-04-01 00:00+00', 60, 0, NULL);
\o
SELECT results_eq(format($$SELECT model, consumer_tenant_id, calls, units, input_tokens, output_tokens
                             FROM quota_ext.model_usage_by_consumer(%s, '2025-03-01 00:00+00', '2025-04-01 00:00+00')$$, :tb),
	format($$VALUES ('mo-x'::text, %1$s::bigint, 1::bigint, 2::numeric, 0::numeric, 0::numeric),
	                ('mo-x', %2$s, 3, 12, 150, 10),
	                ('mo-x', %3$s, 1, 1, 0, 0),
	                ('mo-y', %2$s, 1, 3, 0, 0)$$, :tb, :tc, :td),
	'the owner sees each of its models per consumer tenant (and itself), summed exactly, within [from, to)');
SELECT is((SELECT sum(units) FROM quota_ext.model_usage_by_consumer(:tb, '-infinity', 'infinity')),
	(SELECT sum(units) FROM quota_ext.usage WHERE tenant_id IN (:tb, :tc, :td) AND model_id IN (:mx, :my)),
	'over all time it adds up to the ledger''s units on its models');
SELECT is_empty(format($$SELECT 1 FROM quota_ext.model_usage_by_consumer(%s, '-infinity', 'infinity') WHERE model NOT IN ('mo-x', 'mo-y')$$, :tb),
	'nothing of other models (the consumer''s own, global ones)');
SELECT is_empty(format($$SELECT 1 FROM quota_ext.model_usage_by_consumer(%s, '-infinity', 'infinity')$$, :td),
	'a tenant that owns no model sees nothing');
SELECT is((SELECT array_agg(n ORDER BY i)::text FROM pg_proc p, unnest(p.proargnames, p.proargmodes::text[]) WITH ORDINALITY a(n, mode, i)
             WHERE p.proname = 'model_usage_by_consumer' AND mode = 't'),
	'{model,consumer_tenant_id,calls,units,input_tokens,output_tokens}',
	'its columns: model, consumer tenant id and the amounts, nothing else of the consumer');
SELECT throws_ok(format($$SELECT * FROM quota_ext.model_usage_by_consumer(%s, '2025-04-01', '2025-03-01')$$, :tb), '22023', NULL,
	'"from" after "to": 22023');
SELECT throws_ok($$SELECT * FROM quota_ext.model_usage_by_consumer(987654321, '2025-03-01', '2025-04-01')$$, '42704', NULL,
	'an unknown owner: 42704');

-- cross-tenant: a consumer cannot read the owner's view; the owner reads its own
CREATE ROLE qx_tap_mo_admin LOGIN IN ROLE quota_ext_admin;
CREATE ROLE qx_tap_mo_app LOGIN IN ROLE quota_ext_app;
SET ROLE qx_tap_mo_admin;
SELECT quota_ext.set_tenant(:tc);
SELECT throws_ok(format($$SELECT * FROM quota_ext.model_usage_by_consumer(%s, '2025-03-01', '2025-04-01')$$, :tb), '42704',
	format('tenant %s does not exist', :tb), 'in a consumer''s context the owner''s view is a tenant that does not exist');
SELECT results_eq(format($$SELECT model FROM quota_ext.model_usage_by_consumer(%s, '-infinity', 'infinity')$$, :tc),
	$$VALUES ('mo-c1-own'::text)$$, 'the consumer sees the use of its own model only');
SELECT quota_ext.clear_tenant();
SELECT quota_ext.set_tenant(:tb);
SELECT is((SELECT count(*) FROM quota_ext.model_usage_by_consumer(:tb, '2025-03-01', '2025-04-01'))::int, 4,
	'in the owner''s context: its view');
SELECT quota_ext.clear_tenant();
RESET ROLE;
SET ROLE qx_tap_mo_app;
SELECT throws_ok(format($$SELECT * FROM quota_ext.model_usage_by_consumer(%s, '2025-03-01', '2025-04-01')$$, :tb), '42501', NULL,
	'an app login without a context: 42501');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;
