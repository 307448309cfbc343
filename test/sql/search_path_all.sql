--
-- search_path attacks at call time on every function a role may execute.
-- Checklist: B6 (test/sql/search_path.sql covers authenticate and the
-- foundation's admin functions; this file covers all of them, the hot path
-- included, and fails when a new function is not covered).
--
-- Three identical fixture sets (tenants spa-1-*, spa-2-*, spa-3-*).  The
-- same calls run on set 1 with a normal search_path, on set 2 with
-- search_path = evil, pg_catalog, public and on set 3 with
-- search_path = pg_temp, evil, pg_catalog, each in a fresh session (so the
-- extension prepares its plans under that path).  evil holds, made by the
-- application role itself:
--   * a copy of every pg_catalog operator on the types the extension uses,
--   * every overload of the pg_catalog functions the extension (or careless
--     code) calls, and a few aggregates,
--   * views named like every table of the extension and a few catalogs,
--   * domains named like every base type of pg_catalog and every type of
--     the extension, whose CHECK raises (a cast to a captured type name
--     runs it: the attack of issue 12, finding 1),
-- and pg_temp holds views and domains with the same names, in the sessions
-- of sets 2 and 3 (pg_temp is searched first for relations and types even
-- when the path does not name it).  Every hostile object bumps
-- the sequence evil.calls and raises.  Pass: every call's outcome (result
-- or SQLSTATE and message, with digits and API keys masked) is the same
-- on all three sets, the data the calls leave behind is the same, and
-- evil.calls was never used.
--
-- Calls live in public.spa_calls, written by hand so each one succeeds (or
-- fails) meaningfully; being the application's own SQL, they spell their
-- operators OPERATOR(pg_catalog.=) like the extension does.  A function that a role may execute and that has no
-- call gets one generated from the catalog (arguments by name and type),
-- so it is still attacked; it is listed below under "generated", which
-- changes this file's output: add a real call for it.
--
\set SHOW_CONTEXT never
SET client_min_messages = warning;
CREATE ROLE qx_spa_app LOGIN IN ROLE quota_ext_app;
CREATE ROLE qx_spa_admin LOGIN IN ROLE quota_ext_admin;
SELECT current_database() AS db \gset
GRANT CREATE ON DATABASE :"db" TO qx_spa_app, qx_spa_admin;
--
-- fixtures: three identical sets, their ids in public.spa_fix
--
CREATE TABLE public.spa_fix (s int, k text, v text, PRIMARY KEY (s, k));
CREATE FUNCTION pg_temp.fixture(s int) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
	p text := 'spa-' || s || '-';
	a bigint; b bigint; c bigint; u bigint; kid bigint; kid2 bigint; kid3 bigint;
	key text; q bigint; qd bigint; rule bigint; ruled bigint; r1 bigint; r2 bigint; r3 bigint; u1 bigint;
	e1 timestamptz; e2 timestamptz; inv bigint; inv2 bigint;
BEGIN
	a := quota_ext.tenant_create(p || 'a', 'enterprise', 'Europe/Berlin');
	b := quota_ext.tenant_create(p || 'b', 'enterprise');
	c := quota_ext.tenant_create(p || 'c', 'pro');
	PERFORM quota_ext.model_register(p || 'g', 'acme');
	PERFORM quota_ext.model_register(p || 'own', owner_tenant_id => a);
	PERFORM quota_ext.policy_set(a, p || 'g', true);
	PERFORM quota_ext.policy_set(a, p || 'own', true, ARRAY['admin']);
	SELECT x.user_id, x.api_key INTO u, key FROM quota_ext.user_create(a, 'spa' || s || '@a.example', 'admin') x;
	SELECT k.key_id INTO kid FROM quota_ext.api_keys k WHERE k.tenant_id = a;
	kid2 := (quota_ext.api_key_create(a, u, 'to-rotate')).key_id;
	kid3 := (quota_ext.api_key_create(a, u, 'to-revoke')).key_id;
	q := quota_ext.quota_set(a, 'day', 1000, p || 'g');
	qd := quota_ext.quota_set(a, 'month', 100000, p || 'g', 'units');
	rule := quota_ext.rate_limit_set(a, 1000, 60, 100);
	ruled := quota_ext.rate_limit_set(a, 500, 60, 100, p || 'g');
	r1 := (quota_ext.quota_reserve(a, p || 'g', 10)).reservation_id;
	r2 := (quota_ext.quota_reserve(a, p || 'g', 4)).reservation_id;
	PERFORM quota_ext.policy_set(b, p || 'g', true);
	u1 := (quota_ext.quota_consume(a, p || 'g', 6)).usage_id;
	-- a list price, priced usage and two closed periods with an invoice each
	PERFORM quota_ext.price_set(p || 'g', 'EUR', 0.01);
	PERFORM quota_ext.quota_consume(a, p || 'g', 2);
	-- a reservation at a price: its settlement reads the price by id
	r3 := (quota_ext.quota_reserve(a, p || 'g', 3)).reservation_id;
	-- periods close once they have ended (by the transaction's start): the
	-- tenant and its usage are moved just before it
	UPDATE quota_ext.tenants t SET created_at = now() - interval '1 day' WHERE t.tenant_id = a;
	UPDATE quota_ext.usage x SET occurred_at = now() - interval '3 microseconds' WHERE x.tenant_id = a;
	e1 := now() - interval '2 microseconds';
	inv := (SELECT i.invoice_id FROM quota_ext.billing_close(a, now() - interval '1 day', e1) i WHERE i.currency = 'EUR');
	PERFORM quota_ext.quota_consume(a, p || 'g', 4);
	UPDATE quota_ext.usage x SET occurred_at = e1 WHERE x.tenant_id = a AND x.occurred_at >= now();
	e2 := now() - interval '1 microsecond';
	inv2 := (SELECT i.invoice_id FROM quota_ext.billing_close(a, e1, e2) i WHERE i.currency = 'EUR');
	-- meters (issue 17): a counter and a gauge with a quota each; the calls
	-- below cross the counter's threshold and the gauge's soft limit, so
	-- their events (_meter_event) run under the hostile paths too
	PERFORM quota_ext.meter_create(p || 'gpu', 'hours');
	PERFORM quota_ext.meter_create(p || 'disk', 'GB', 'gauge');
	PERFORM quota_ext.quota_set(a, 'day', 100, meter => p || 'gpu', thresholds => '{3}');
	PERFORM quota_ext.quota_set(a, 'lifetime', 10, meter => p || 'disk', soft_limit => 4);
	INSERT INTO public.spa_fix VALUES (s, 'a', a), (s, 'b', b), (s, 'c', c), (s, 'u', u), (s, 'kid', kid),
		(s, 'kid2', kid2), (s, 'kid3', kid3), (s, 'key', key), (s, 'q', q), (s, 'qd', qd), (s, 'rule', rule),
		(s, 'ruled', ruled), (s, 'r1', r1), (s, 'r2', r2), (s, 'r3', r3), (s, 'u1', u1), (s, 'g', p || 'g'),
		(s, 'own', p || 'own'), (s, 'p', p), (s, 'e2', e2), (s, 'inv', inv), (s, 'inv2', inv2);
END
$$;
SELECT pg_temp.fixture(s) FROM generate_series(1, 3) s;
-- the ledger's monthly partitions exist before the calls (so that
-- usage_partitions_maintain() has nothing to do in every set)
SELECT count(*) >= 0 AS partitions FROM quota_ext.usage_partitions_maintain(3);
-- the fixtures' usage is in the daily rollup before the calls (so that
-- metrics() shows the same token and cost series in every set)
SELECT quota_ext.usage_rollup() > 0 AS rolled_up;
--
-- the calls: {name} is replaced by the set's value of name
--
CREATE TABLE public.spa_calls (ord int PRIMARY KEY, fn name NOT NULL, role text NOT NULL, sql text NOT NULL,
	generated boolean NOT NULL DEFAULT false);
INSERT INTO public.spa_calls (ord, fn, role, sql) VALUES
	(10, 'authenticate', 'app', $q$SELECT tenant_id OPERATOR(pg_catalog.=) {a} AND user_id OPERATOR(pg_catalog.=) {u}, role FROM quota_ext.authenticate('{key}')$q$),
	(11, 'current_tenant_id', 'app', $q$SELECT quota_ext.current_tenant_id() OPERATOR(pg_catalog.=) {a}$q$),
	(12, 'current_context', 'app', $q$SELECT * FROM quota_ext.current_context()$q$),
	(13, 'policy_check', 'app', $q$SELECT quota_ext.policy_check({a}, '{g}'), quota_ext.policy_check({a}, '{own}', 'member')$q$),
	(14, 'period_bounds', 'app', $q$SELECT * FROM quota_ext.period_bounds('day', 'Europe/Berlin', '2026-03-29 12:00+00')$q$),
	(15, 'quota_consume', 'app', $q$SELECT allowed, denied_by, period, "limit", remaining, replayed FROM quota_ext.quota_consume({a}, '{g}', 2, 'idem-1')$q$),
	(16, 'quota_consume', 'app', $q$SELECT allowed, replayed FROM quota_ext.quota_consume({a}, '{g}', 2, 'idem-1')$q$),
	(17, 'quota_consume_or_raise', 'app', $q$SELECT allowed, remaining FROM quota_ext.quota_consume_or_raise({a}, '{g}', 1)$q$),
	(18, 'invoke', 'app', $q$SELECT allowed, remaining, replayed FROM quota_ext.invoke('{key}', '{g}', 3, 'idem-2')$q$),
	(19, 'quota_reserve', 'app', $q$SELECT allowed, reservation_id IS NOT NULL FROM quota_ext.quota_reserve({a}, '{g}', 5, '1 hour', 'idem-3')$q$),
	(20, 'quota_settle', 'app', $q$SELECT allowed, replayed FROM quota_ext.quota_settle({a}, {r1}, 3)$q$),
	(21, 'quota_cancel', 'app', $q$SELECT allowed, replayed FROM quota_ext.quota_cancel({a}, {r2})$q$),
	(22, 'quota_refund', 'app', $q$SELECT allowed, replayed FROM quota_ext.quota_refund({a}, {u1})$q$),
	(23, 'quota_status', 'app', $q$SELECT period, metric, model_name, "limit", used, remaining, on_exceed, origin FROM quota_ext.quota_status({a})$q$),
	(24, 'tenant_summary', 'app', $q$SELECT quota_ext.tenant_summary({a}) OPERATOR(pg_catalog.-) 'tenant'$q$),
	(25, 'gcra_eval', 'app', $q$SELECT * FROM quota_ext.gcra_eval(0, 1000000000, 5, 10, 60, 1)$q$),
	(26, 'rate_limit_check', 'app', $q$SELECT limited, "limit", remaining FROM quota_ext.rate_limit_check('{p}key', 5, 10, 60)$q$),
	(27, 'tenant_rate_limit_check', 'app', $q$SELECT limited, "limit", remaining FROM quota_ext.tenant_rate_limit_check('key', 5, 10, 60)$q$),
	(28, 'rate_limit_apply', 'app', $q$SELECT limited, "limit", remaining FROM quota_ext.rate_limit_apply({a}, '{g}')$q$),
	(29, 'clear_tenant', 'app', $q$SELECT quota_ext.clear_tenant()$q$),
	-- error paths
	(30, 'quota_consume', 'app', $q$SELECT * FROM quota_ext.quota_consume({a}, 'no-such-model', 1)$q$),
	(31, 'quota_consume', 'app', $q$SELECT * FROM quota_ext.quota_consume({b}, '{g}', 1)$q$),
	(32, 'invoke', 'app', $q$SELECT * FROM quota_ext.invoke('{key}x', '{g}')$q$),
	(33, 'quota_consume', 'app', $q$SELECT * FROM quota_ext.quota_consume({a}, '{g}', 1, 'idem-1')$q$),
	(34, 'quota_settle', 'app', $q$SELECT * FROM quota_ext.quota_settle({a}, {r1}, 4)$q$),
	(35, 'price_lookup', 'app', $q$SELECT currency, unit_price FROM quota_ext.price_lookup({a}, '{g}')$q$),
	(36, 'usage_report', 'app', $q$SELECT model, calls, units, currency, cost FROM quota_ext.usage_report({a}, '2026-01-01', '2100-01-01')$q$),
	(37, 'request_stats', 'app', $q$SELECT tenant_id OPERATOR(pg_catalog.=) {a} FROM quota_ext.request_stats()$q$),
	(38, 'metrics', 'app', $q$SELECT quota_ext.metrics()$q$),
	(40, 'quota_settle', 'app', $q$SELECT allowed, cost, currency FROM quota_ext.quota_settle({a}, {r3}, 2)$q$),
	(39, 'quota_consume', 'app', $q$SELECT allowed, cost, currency FROM quota_ext.quota_consume({a}, '{g}', 1, input_tokens => 10, output_tokens => 5, metadata => '{"req": "x"}')$q$),
	(42, 'feature_enabled', 'app', $q$SELECT quota_ext.feature_enabled({a}, 'beta') IS NOT NULL$q$),
	(43, 'request_log_write', 'app', $q$SELECT quota_ext.request_log_write({a}, 'POST /v1/x', 200, 12, request_excerpt => 'x') OPERATOR(pg_catalog.>) 0$q$),
	(44, 'meter_consume', 'app', $q$SELECT allowed, remaining, replayed FROM quota_ext.meter_consume({a}, '{p}gpu', 3, 'mk-1', metadata => '{"job": "x"}')$q$),
	(45, 'gauge_adjust', 'app', $q$SELECT allowed, remaining FROM quota_ext.gauge_adjust({a}, '{p}disk', 4)$q$),
	(46, 'meter_status', 'app', $q$SELECT meter, kind, "limit", used, remaining FROM quota_ext.meter_status({a})$q$),
	(41, 'quota_check', 'app', $q$SELECT allowed, usage_id IS NULL, cost, currency FROM quota_ext.quota_check({a}, '{g}', 1, input_tokens => 10, output_tokens => 5)$q$),
	-- admin
	(50, 'set_tenant', 'admin', $q$SELECT quota_ext.set_tenant({a}), quota_ext.current_tenant_id() OPERATOR(pg_catalog.=) {a}$q$),
	(51, 'tenant_create', 'admin', $q$SELECT quota_ext.tenant_create('{p}new', 'pro', 'Asia/Tokyo', '{"plan": "x"}') OPERATOR(pg_catalog.>) {a}$q$),
	(52, 'tenant_update', 'admin', $q$SELECT quota_ext.tenant_update({b}, tier => 'premium', settings => '{"x": 1}', features => '{"f": true}')$q$),
	(53, 'tenant_suspend', 'admin', $q$SELECT quota_ext.tenant_suspend({b})$q$),
	(54, 'tenant_activate', 'admin', $q$SELECT quota_ext.tenant_activate({b})$q$),
	(55, 'user_create', 'admin', $q$SELECT user_id OPERATOR(pg_catalog.>) {u}, api_key FROM quota_ext.user_create({b}, 'New@Spa.example', 'viewer')$q$),
	(56, 'user_update', 'admin', $q$SELECT quota_ext.user_update({a}, {u}, role => 'admin', status => 'active')$q$),
	(57, 'api_key_create', 'admin', $q$SELECT key_id OPERATOR(pg_catalog.>) {kid3}, api_key FROM quota_ext.api_key_create({a}, {u}, 'ci', '2999-01-01')$q$),
	(58, 'api_key_rotate', 'admin', $q$SELECT new_key_id OPERATOR(pg_catalog.>) {kid3}, api_key FROM quota_ext.api_key_rotate({a}, {kid2}, '1 hour')$q$),
	(59, 'api_key_revoke', 'admin', $q$SELECT quota_ext.api_key_revoke({a}, {kid3})$q$),
	(60, 'model_register', 'admin', $q$SELECT quota_ext.model_register('{p}new-model', 'acme', {b}, 'd', '{"ctx": 8}') OPERATOR(pg_catalog.>) 0$q$),
	(61, 'policy_set', 'admin', $q$SELECT quota_ext.policy_set({b}, '{p}*', true, ARRAY['admin', 'viewer']) OPERATOR(pg_catalog.>) 0$q$),
	(62, 'policy_delete', 'admin', $q$SELECT quota_ext.policy_delete({b}, '{g}')$q$),
	(63, 'model_share', 'admin', $q$SELECT quota_ext.model_share({a}, '{own}', {b})$q$),
	(64, 'model_unshare', 'admin', $q$SELECT quota_ext.model_unshare({a}, '{own}', {b})$q$),
	(65, 'quota_set', 'admin', $q$SELECT quota_ext.quota_set({a}, 'weekly', 50, '{g}', 'units', soft_limit => 40, thresholds => '{50,90}') OPERATOR(pg_catalog.>) {qd}$q$),
	(66, 'quota_delete', 'admin', $q$SELECT quota_ext.quota_delete({a}, {qd})$q$),
	(67, 'quota_expire_reservations', 'admin', $q$SELECT quota_ext.quota_expire_reservations(1)$q$),
	(68, 'rate_limit_status', 'admin', $q$SELECT slots OPERATOR(pg_catalog.>) 0, partitions OPERATOR(pg_catalog.>) 0 FROM quota_ext.rate_limit_status()$q$),
	(69, 'rate_limit_set', 'admin', $q$SELECT quota_ext.rate_limit_set({a}, 100, 60, 5, key_id => {kid}) OPERATOR(pg_catalog.>) {ruled}$q$),
	(70, 'rate_limit_delete', 'admin', $q$SELECT quota_ext.rate_limit_delete({a}, {ruled})$q$),
	(71, 'tenant_close', 'admin', $q$SELECT quota_ext.tenant_close({c})$q$),
	(72, 'tenant_create', 'admin', $q$SELECT quota_ext.tenant_create('{p}a')$q$),
	(73, 'tenant_create', 'admin', $q$SELECT quota_ext.tenant_create('{p}x', 'free', 'Mars/Base')$q$),
	(74, 'quota_set', 'admin', $q$SELECT quota_ext.quota_set({a}, 'fortnight', 5)$q$),
	(75, 'policy_set', 'admin', $q$SELECT quota_ext.policy_set({a}, 'no-such-model', true)$q$),
	(76, 'price_set', 'admin', $q$SELECT quota_ext.price_set('{g}', 'EUR', 0.02, effective_from => pg_catalog.now() OPERATOR(pg_catalog.+) interval '1 day') IS NOT NULL$q$),
	(77, 'price_clear', 'admin', $q$SELECT quota_ext.price_clear('{g}', pg_catalog.now() OPERATOR(pg_catalog.+) interval '2 days') IS NOT NULL$q$),
	(78, 'billing_close', 'admin', $q$SELECT * FROM quota_ext.billing_close('2001-01-01', '2001-01-02')$q$),
	(79, 'billing_close', 'admin', $q$SELECT status, currency, total FROM quota_ext.billing_close({a}, '{e2}', '{e2}'::pg_catalog.timestamptz OPERATOR(pg_catalog.+) interval '1 microsecond')$q$),
	(80, 'invoice_issue', 'admin', $q$SELECT status, invoice_number IS NOT NULL, total FROM quota_ext.invoice_issue({a}, {inv})$q$),
	(81, 'invoice_void', 'admin', $q$SELECT status, void_reason FROM quota_ext.invoice_void({a}, {inv2}, 'spa test')$q$),
	(82, 'usage_partitions_maintain', 'admin', $q$SELECT * FROM quota_ext.usage_partitions_maintain(3)$q$),
	(83, 'usage_partition_detach', 'admin', $q$SELECT * FROM quota_ext.usage_partition_detach('2000-01-01')$q$),
	(84, 'usage_rollup', 'admin', $q$SELECT quota_ext.usage_rollup() IS NOT NULL$q$),
	(85, 'audit_purge', 'admin', $q$SELECT quota_ext.audit_purge() IS NOT NULL$q$),
	(86, 'request_stats_reset', 'admin', $q$SELECT quota_ext.request_stats_reset()$q$),
	(87, 'rate_limit_namespaces', 'admin', $q$SELECT pg_catalog.count(*) OPERATOR(pg_catalog.>=) 0 FROM quota_ext.rate_limit_namespaces()$q$),
	(88, 'rate_limit_reset', 'admin', $q$SELECT quota_ext.rate_limit_reset({a}) OPERATOR(pg_catalog.>=) 0, quota_ext.rate_limit_reset(key => '{p}no-key') OPERATOR(pg_catalog.=) 0$q$),
	(89, 'shared_cache_status', 'admin', $q$SELECT capacity OPERATOR(pg_catalog.>) 0, tenant_entries OPERATOR(pg_catalog.>) 0 FROM quota_ext.shared_cache_status()$q$),
	(90, 'shared_cache_tenants', 'admin', $q$SELECT pg_catalog.count(*) OPERATOR(pg_catalog.>=) 0 FROM quota_ext.shared_cache_tenants()$q$),
	(91, 'escrow_adapt', 'admin', $q$SELECT quota_ext.escrow_adapt() OPERATOR(pg_catalog.>=) 0$q$),
	(92, 'escrow_status', 'admin', $q$SELECT pg_catalog.count(*) OPERATOR(pg_catalog.>=) 0 FROM quota_ext.escrow_status()$q$),
	(93, 'tier_set', 'admin', $q$SELECT quota_ext.tier_set('{p}tier', monthly_calls => 10, features => '{"beta": true}')$q$),
	(94, 'idempotency_purge', 'admin', $q$SELECT quota_ext.idempotency_purge('1 day') OPERATOR(pg_catalog.>=) 0$q$),
	(95, 'api_key_import', 'admin', $q$SELECT quota_ext.api_key_import({a}, {u}, 'sk-{p}0123456789abcdefgh') OPERATOR(pg_catalog.>) 0$q$),
	(96, 'user_remove', 'admin', $q$SELECT quota_ext.user_remove({a}, {u})$q$),
	(97, 'request_log_purge', 'admin', $q$SELECT quota_ext.request_log_purge() OPERATOR(pg_catalog.>=) 0$q$),
	(98, 'invoice_mark_paid', 'admin', $q$SELECT status, payment_reference FROM quota_ext.invoice_mark_paid({a}, {inv}, '2026-01-02', 'spa ref')$q$),
	(99, 'event_poll', 'admin', $q$SELECT pg_catalog.count(*) OPERATOR(pg_catalog.>=) 0 FROM quota_ext.event_poll('{p}relay', 10)$q$),
	(100, 'event_ack', 'admin', $q$SELECT quota_ext.event_ack('{p}relay', 0)$q$),
	(101, 'event_purge', 'admin', $q$SELECT quota_ext.event_purge('2000-01-01') OPERATOR(pg_catalog.>=) 0$q$),
	(102, 'event_consumer_drop', 'admin', $q$SELECT quota_ext.event_consumer_drop(0, '{p}relay')$q$),
	(103, 'model_usage_by_consumer', 'admin', $q$SELECT model, calls FROM quota_ext.model_usage_by_consumer({a}, '2026-01-01', '2026-03-01')$q$),
	-- the marketplace (57_marketplace.sql)
	(104, 'model_visibility_set', 'admin', $q$SELECT quota_ext.model_visibility_set({a}, '{own}', 'marketplace')$q$),
	(105, 'model_price_set', 'admin', $q$SELECT quota_ext.model_price_set({a}, '{own}', 'EUR', 0.03, effective_from => '2099-01-01') OPERATOR(pg_catalog.>) 0$q$),
	(106, 'model_price_set', 'admin', $q$SELECT quota_ext.model_price_set({a}, '{own}', 'EUR', 0.02) OPERATOR(pg_catalog.>) 0$q$),
	(107, 'model_price_clear', 'admin', $q$SELECT quota_ext.model_price_clear({a}, '{own}', '2100-01-01') OPERATOR(pg_catalog.>) 0$q$),
	(108, 'model_revenue_share_set', 'admin', $q$SELECT quota_ext.model_revenue_share_set({a}, '{own}', 20)$q$),
	(109, 'model_access_request', 'admin', $q$SELECT quota_ext.model_access_request({b}, (SELECT m.model_id FROM quota_ext.models m WHERE m.name OPERATOR(pg_catalog.=) '{own}')) OPERATOR(pg_catalog.>) 0$q$),
	(110, 'model_access_requests_received', 'admin', $q$SELECT consumer_tenant_id OPERATOR(pg_catalog.=) {b}, model, status FROM quota_ext.model_access_requests_received({a})$q$),
	(111, 'model_access_decide', 'admin', $q$SELECT status FROM quota_ext.model_access_decide({a}, {b}, (SELECT r.request_id FROM quota_ext.model_access_requests r WHERE r.tenant_id OPERATOR(pg_catalog.=) {b}), true)$q$),
	-- (after 104 and 106: listed, with a price)
	(112, 'model_listing', 'admin', $q$SELECT model, visibility, currency, unit_price FROM quota_ext.model_listing() WHERE model OPERATOR(pg_catalog.=) '{own}'$q$),
	(113, 'meter_create', 'admin', $q$SELECT quota_ext.meter_create('{p}new-meter', 'units', 'counter') OPERATOR(pg_catalog.>) 0$q$),
	(116, 'meter_usage_purge', 'admin', $q$SELECT quota_ext.meter_usage_purge() OPERATOR(pg_catalog.>=) 0$q$),
	-- (a procedure: run with CALL, not wrapped; 55000 here, without Citus)
	(114, 'distribute', 'admin', $q$CALL quota_ext.distribute()$q$),
	(115, 'distribution_status', 'admin', $q$SELECT pg_catalog.count(*) OPERATOR(pg_catalog.=) 0 FROM quota_ext.distribution_status()$q$),
	-- (the prices policies call it: a read of prices, and the call itself)
	(117, 'price_list_visible', 'admin', $q$SELECT quota_ext.price_list_visible(NULL), quota_ext.price_list_visible((SELECT m.model_id FROM quota_ext.models m WHERE m.name OPERATOR(pg_catalog.=) '{own}')), pg_catalog.count(*) OPERATOR(pg_catalog.>) 0 FROM quota_ext.prices p WHERE p.tenant_id IS NULL$q$);
-- every function a role may execute whose name no call above has gets a
-- generated call: arguments without a default, by name, else by type
INSERT INTO public.spa_calls (ord, fn, role, sql, generated)
SELECT 1000 + row_number() OVER (ORDER BY p.oid::regprocedure::text), p.proname,
       CASE WHEN has_function_privilege('quota_ext_app', p.oid, 'EXECUTE') THEN 'app' ELSE 'admin' END,
       format('SELECT * FROM quota_ext.%I(%s)', p.proname,
              (SELECT string_agg(CASE
                         WHEN n IN ('tenant_id', 'owner_tenant_id') THEN '{a}'
                         WHEN n = 'grantee_tenant_id' THEN '{b}'
                         WHEN n = 'user_id' THEN '{u}'
                         WHEN n = 'key_id' THEN '{kid}'
                         WHEN n = 'quota_id' THEN '{q}'
                         WHEN n = 'reservation_id' THEN '{r1}'
                         WHEN n = 'usage_id' THEN '{u1}'
                         WHEN n = 'rule_id' THEN '{rule}'
                         WHEN n = 'model' THEN quote_literal('{g}')
                         WHEN n = 'api_key' THEN quote_literal('{key}')
                         WHEN t IN ('bigint', 'integer', 'smallint', 'numeric') THEN '1'
                         WHEN t = 'boolean' THEN 'true'
                         WHEN t = 'interval' THEN '''1 hour'''
                         WHEN t IN ('timestamp with time zone', 'date') THEN '''2026-01-01'''
                         WHEN t = 'jsonb' THEN '''{}'''
                         WHEN t = 'text' THEN '''x'''
                         ELSE 'NULL' END || '::' || qt, ', ' ORDER BY i)
                 FROM unnest(p.proargtypes::oid[]) WITH ORDINALITY AS a(typ, i),
                      LATERAL (SELECT format_type(a.typ, NULL) AS t,
                                      (SELECT format('%I.%I', tn.nspname, ty.typname) FROM pg_type ty
                                         JOIN pg_namespace tn ON tn.oid = ty.typnamespace
                                        WHERE ty.oid = a.typ) AS qt,
                                      coalesce(p.proargnames[i], '') AS n) x
                WHERE i <= p.pronargs - p.pronargdefaults)),
       true
  FROM pg_proc p
 WHERE p.pronamespace = 'quota_ext'::regnamespace
   AND (has_function_privilege('quota_ext_app', p.oid, 'EXECUTE')
        OR has_function_privilege('quota_ext_admin', p.oid, 'EXECUTE'))
   AND p.proname NOT IN (SELECT fn FROM public.spa_calls);
-- the catalog check: these need a real call above (expected: none)
SELECT fn AS "generated (add a call)" FROM public.spa_calls WHERE generated ORDER BY ord;
SELECT count(DISTINCT fn) AS functions_called,
       (SELECT count(DISTINCT p.proname) FROM pg_proc p WHERE p.pronamespace = 'quota_ext'::regnamespace
           AND (has_function_privilege('quota_ext_app', p.oid, 'EXECUTE')
                OR has_function_privilege('quota_ext_admin', p.oid, 'EXECUTE'))) AS functions_executable
  FROM public.spa_calls;
--
-- the driver: runs one role's calls on one set with the given search_path.
-- Its own statements run with a pinned path; only the calls (and the
-- authenticate / clear_tenant before each) run under p_path.  An error
-- rolls the subtransaction back, which also restores the pinned path.
--
CREATE TABLE public.spa_res (s int, ord int, fn text, outcome text, PRIMARY KEY (s, ord));
GRANT SELECT ON public.spa_fix, public.spa_calls TO PUBLIC;
GRANT SELECT, INSERT ON public.spa_res TO PUBLIC;
CREATE FUNCTION public.spa_run(p_set int, p_role text, p_path text) RETURNS bigint
	LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	c record;
	f record;
	q text;
	res text;
	st text;
	auth boolean;
	is_call boolean;
	pinned text := current_setting('search_path');
	key text := (SELECT v FROM public.spa_fix WHERE s = p_set AND k = 'key');
	n bigint := 0;
BEGIN
	FOR c IN SELECT * FROM public.spa_calls WHERE role = p_role ORDER BY ord LOOP
		q := c.sql;
		FOR f IN SELECT k, v FROM public.spa_fix WHERE s = p_set LOOP
			q := replace(q, '{' || f.k || '}', f.v);
		END LOOP;
		is_call := q LIKE 'CALL %';	-- (a procedure; decided before the path changes)
		IF NOT is_call THEN
			q := format('SELECT pg_catalog.string_agg(x::pg_catalog.text, '' '' ORDER BY x::pg_catalog.text) FROM (%s) x', q);
		END IF;
		auth := p_role = 'app' AND c.fn <> 'clear_tenant';
		BEGIN
			-- from here to the reset, no expression may use an operator or
			-- an unqualified function: they would resolve under p_path
			PERFORM pg_catalog.set_config('search_path', p_path, true);
			IF auth THEN
				EXECUTE 'SELECT quota_ext.authenticate($1)' USING key;
			ELSE
				EXECUTE 'SELECT quota_ext.clear_tenant()';
			END IF;
			IF is_call THEN
				EXECUTE q;
			ELSE
				EXECUTE q INTO res;
			END IF;
			PERFORM pg_catalog.set_config('search_path', pinned, true);
			st := 'ok';
			res := coalesce(res, '(none)');
		EXCEPTION WHEN OTHERS THEN
			st := 'ERROR ' || SQLSTATE;
			res := SQLERRM;
		END;
		-- the set's own numbers, ids and names differ: mask them
		res := regexp_replace(res, 'qxk_[A-Za-z0-9_]+', 'KEY', 'g');
		res := regexp_replace(res, '[0-9]+', 'N', 'g');
		-- and so do the names of today's weekday, month and DST zone
		res := regexp_replace(res, '\m(Mon|Tue|Wed|Thu|Fri|Sat|Sun|Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec|PST|PDT)\M',
		                      'X', 'g');
		INSERT INTO public.spa_res VALUES (p_set, c.ord, c.fn::text, st || ' ' || res);
		n := n + 1;
	END LOOP;
	RETURN n;
END
$$;
GRANT EXECUTE ON FUNCTION public.spa_run(int, text, text) TO PUBLIC;
-- look-alike types: a domain for every base type of pg_catalog and every
-- type of the extension, in a schema (evil, and pg_temp in each hostile
-- session); its CHECK calls evil.type_trap, which raises
CREATE FUNCTION public.spa_shadow_types(p_schema text) RETURNS int LANGUAGE plpgsql
	SET search_path = pg_catalog AS $$
DECLARE
	r record;
	made int := 0;
BEGIN
	FOR r IN SELECT DISTINCT t.typname, format('%I.%I', n.nspname, t.typname) AS base
	           FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
	          WHERE ((n.nspname = 'pg_catalog' AND t.typtype = 'b' AND t.typcategory <> 'A'
	                  AND t.typname NOT LIKE 'reg%' AND t.typisdefined)
	                 OR (n.nspname = 'quota_ext' AND t.typtype IN ('b', 'c', 'd', 'e')
	                     AND t.typcategory <> 'A'))
	            AND NOT EXISTS (SELECT 1 FROM pg_type x WHERE x.typname = t.typname
	                               AND x.typnamespace = pg_my_temp_schema() AND p_schema = 'pg_temp')
	            AND NOT EXISTS (SELECT 1 FROM pg_type x WHERE x.typname = t.typname
	                               AND x.typnamespace = 'evil'::regnamespace AND p_schema = 'evil') LOOP
		BEGIN
			EXECUTE format('CREATE DOMAIN %s.%I AS %s CHECK (evil.type_trap(VALUE))',
			               p_schema, r.typname, r.base);
			made := made + 1;
		EXCEPTION WHEN OTHERS THEN NULL;
		END;
	END LOOP;
	RETURN made;
END
$$;
GRANT EXECUTE ON FUNCTION public.spa_shadow_types(text) TO PUBLIC;
--
-- set 1: the normal path
--
\c - qx_spa_app
SET client_min_messages = warning;
SELECT public.spa_run(1, 'app', 'public') IS NOT NULL AS app_calls_ran;
\c - qx_spa_admin
SET client_min_messages = warning;
SELECT public.spa_run(1, 'admin', 'public') IS NOT NULL AS admin_calls_ran;
--
-- the hostile schema, made by the application role
--
\c - qx_spa_app
SET client_min_messages = warning;
CREATE SCHEMA evil;
GRANT USAGE ON SCHEMA evil TO PUBLIC;
CREATE SEQUENCE evil.calls;
GRANT USAGE, SELECT, UPDATE ON SEQUENCE evil.calls TO PUBLIC;
CREATE FUNCTION evil.raise_any() RETURNS void LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_catalog.nextval('evil.calls'); RAISE EXCEPTION 'evil called'; END $$;
DO $evil$
DECLARE
	body text := $b$ BEGIN PERFORM pg_catalog.nextval('evil.calls'); RAISE EXCEPTION 'evil called: %s'; END $b$;
	r record;
	fname text;
	made int := 0;
BEGIN
	-- every pg_catalog operator on the types the extension works with
	FOR r IN SELECT o.oprname, format_type(o.oprleft, NULL) AS l, format_type(o.oprright, NULL) AS rt,
	                format_type(o.oprresult, NULL) AS res, o.oid
	           FROM pg_operator o
	          WHERE o.oprnamespace = 'pg_catalog'::regnamespace AND o.oprkind = 'b'
	            AND o.oprleft IN ('int8'::regtype, 'int4'::regtype, 'int2'::regtype, 'text'::regtype,
	                              'timestamptz'::regtype, 'interval'::regtype, 'numeric'::regtype,
	                              'bool'::regtype, 'jsonb'::regtype, 'bytea'::regtype, 'name'::regtype,
	                              'oid'::regtype, 'anyarray'::regtype, 'anycompatiblearray'::regtype,
	                              'anyelement'::regtype, 'anycompatible'::regtype, 'date'::regtype)
	            AND o.oprright <> 'internal'::regtype LOOP
		fname := 'op_' || r.oid;
		BEGIN
			EXECUTE format('CREATE FUNCTION evil.%I(%s, %s) RETURNS %s LANGUAGE plpgsql AS %L',
			               fname, r.l, r.rt, r.res, format(body, r.oprname || '(' || r.l || ', ' || r.rt || ')'));
			EXECUTE format('CREATE OPERATOR evil.%s (LEFTARG = %s, RIGHTARG = %s, FUNCTION = evil.%I)',
			               r.oprname, r.l, r.rt, fname);
			made := made + 1;
		EXCEPTION WHEN OTHERS THEN NULL;
		END;
	END LOOP;
	-- every overload of functions that SQL commonly calls unqualified
	FOR r IN SELECT p.proname, pg_get_function_arguments(p.oid) AS args, pg_get_function_result(p.oid) AS res
	           FROM pg_proc p
	          WHERE p.pronamespace = 'pg_catalog'::regnamespace AND p.prokind = 'f'
	            AND p.proname IN ('now', 'clock_timestamp', 'statement_timestamp', 'transaction_timestamp',
	                              'lower', 'upper', 'btrim', 'trim', 'length', 'left', 'right', 'substr',
	                              'substring', 'format', 'concat', 'concat_ws', 'nextval', 'currval', 'setval',
	                              'make_interval', 'date_trunc', 'date_part', 'extract', 'to_jsonb', 'to_json',
	                              'jsonb_build_object', 'jsonb_build_array', 'jsonb_typeof', 'jsonb_set',
	                              'jsonb_object_keys', 'jsonb_each', 'jsonb_array_elements', 'jsonb_strip_nulls',
	                              'array_length', 'cardinality', 'array_position', 'unnest', 'generate_series',
	                              'md5', 'sha256', 'encode', 'decode', 'gen_random_uuid', 'random',
	                              'regexp_replace', 'regexp_match', 'regexp_matches', 'split_part', 'strpos',
	                              'replace', 'timezone', 'age', 'to_char', 'to_timestamp', 'abs', 'round',
	                              'floor', 'ceil', 'div', 'mod', 'pg_notify', 'current_setting', 'set_config',
	                              'pg_backend_pid', 'row_to_json', 'quote_ident', 'quote_literal', 'quote_nullable',
	                              'format_type', 'has_function_privilege', 'has_table_privilege', 'pg_has_role',
	                              'txid_current', 'pg_current_xact_id', 'pg_advisory_xact_lock',
	                              'convert_to', 'convert_from', 'octet_length', 'char_length', 'position',
	                              'starts_with', 'translate', 'repeat', 'lpad', 'rpad', 'numeric', 'int8', 'text')
	            AND NOT EXISTS (SELECT 1 FROM unnest(p.proargtypes::oid[] || coalesce(p.proallargtypes, '{}'))
	                             AS t(t) WHERE t.t IN ('internal'::regtype, 'cstring'::regtype))
	            AND p.prorettype NOT IN ('internal'::regtype, 'cstring'::regtype) LOOP
		BEGIN
			EXECUTE format('CREATE FUNCTION evil.%I(%s) RETURNS %s LANGUAGE plpgsql AS %L',
			               r.proname, r.args, r.res, format(body, r.proname || '(' || r.args || ')'));
			made := made + 1;
		EXCEPTION WHEN OTHERS THEN NULL;
		END;
	END LOOP;
	-- aggregates
	EXECUTE format('CREATE FUNCTION evil.agg_sfunc(anycompatible, anycompatible) RETURNS anycompatible LANGUAGE plpgsql AS %L', format(body, 'an aggregate'));
	EXECUTE format('CREATE FUNCTION evil.agg_count(bigint) RETURNS bigint LANGUAGE plpgsql AS %L', format(body, 'count(*)'));
	FOR r IN SELECT * FROM (VALUES ('sum', 'bigint'), ('sum', 'integer'), ('sum', 'numeric'), ('max', 'bigint'),
	                               ('max', 'timestamptz'), ('min', 'timestamptz'), ('min', 'bigint'),
	                               ('max', 'integer')) AS v(n, t) LOOP
		EXECUTE format('CREATE AGGREGATE evil.%I(%s) (SFUNC = evil.agg_sfunc, STYPE = %s)', r.n, r.t, r.t);
		made := made + 1;
	END LOOP;
	CREATE AGGREGATE evil.count(*) (SFUNC = evil.agg_count, STYPE = bigint, INITCOND = '0');
	-- look-alike relations: every table and view of the extension, a few catalogs
	FOR r IN SELECT c.relname FROM pg_class c WHERE c.relnamespace = 'quota_ext'::regnamespace
	                                            AND c.relkind IN ('r', 'p', 'v', 'm')
	         UNION SELECT unnest(ARRAY['pg_timezone_names', 'pg_class', 'pg_roles', 'pg_namespace', 'pg_proc',
	                                   'pg_authid', 'pg_settings', 'pg_extension']) LOOP
		EXECUTE format('CREATE VIEW evil.%I AS SELECT 1 AS tenant_id FROM evil.raise_any()', r.relname);
		made := made + 1;
	END LOOP;
	RAISE NOTICE 'made %', made;
END
$evil$;
-- look-alike types (public.spa_shadow_types)
CREATE FUNCTION evil.type_trap(anyelement) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_catalog.nextval('evil.calls'); RAISE EXCEPTION 'evil type called'; END $$;
SELECT public.spa_shadow_types('evil') > 60 AS hostile_types;
SELECT count(*) > 300 AS hostile_objects FROM pg_proc WHERE pronamespace = 'evil'::regnamespace;
SELECT count(*) > 100 AS hostile_operators FROM pg_operator WHERE oprnamespace = 'evil'::regnamespace;
-- the trap is live: unqualified SQL under the hostile path calls it
SET search_path = evil, pg_catalog, public;
SELECT 1::bigint = 1::bigint;
SELECT now();
SELECT sum(x) FROM (VALUES (1::bigint)) v(x);
SELECT * FROM tenants;
SELECT NULL::timestamptz;
SELECT NULL::decision;
RESET search_path;
SELECT pg_catalog.setval('evil.calls', 1, false) AS calls_reset;
--
-- set 2: evil first, in fresh sessions
--
\c - qx_spa_app
SET client_min_messages = warning;
SELECT public.spa_shadow_types('pg_temp') > 60 AS temp_types;
SET search_path = evil, pg_catalog, public;
SELECT public.spa_run(2, 'app', 'evil, pg_catalog, public') IS NOT NULL AS app_calls_ran;
\c - qx_spa_admin
SET client_min_messages = warning;
SELECT public.spa_shadow_types('pg_temp') > 60 AS temp_types;
SET search_path = evil, pg_catalog, public;
SELECT public.spa_run(2, 'admin', 'evil, pg_catalog, public') IS NOT NULL AS admin_calls_ran;
--
-- set 3: pg_temp first (temporary look-alike views), then evil
--
\c - qx_spa_app
SET client_min_messages = warning;
DO $temp$
DECLARE
	r record;
BEGIN
	FOR r IN SELECT c.relname FROM pg_class c WHERE c.relnamespace = 'quota_ext'::regnamespace
	                                            AND c.relkind IN ('r', 'p', 'v', 'm')
	         UNION SELECT unnest(ARRAY['pg_timezone_names', 'pg_roles', 'pg_settings']) LOOP
		EXECUTE format('CREATE TEMP VIEW %I AS SELECT 1 AS tenant_id FROM evil.raise_any()', r.relname);
	END LOOP;
END
$temp$;
SELECT public.spa_shadow_types('pg_temp') > 60 AS temp_types;
SET search_path = pg_temp, evil, pg_catalog;
SELECT public.spa_run(3, 'app', 'pg_temp, evil, pg_catalog') IS NOT NULL AS app_calls_ran;
\c - qx_spa_admin
SET client_min_messages = warning;
DO $temp$
DECLARE
	r record;
BEGIN
	FOR r IN SELECT c.relname FROM pg_class c WHERE c.relnamespace = 'quota_ext'::regnamespace
	                                            AND c.relkind IN ('r', 'p', 'v', 'm')
	         UNION SELECT unnest(ARRAY['pg_timezone_names', 'pg_roles', 'pg_settings']) LOOP
		EXECUTE format('CREATE TEMP VIEW %I AS SELECT 1 AS tenant_id FROM evil.raise_any()', r.relname);
	END LOOP;
END
$temp$;
SELECT public.spa_shadow_types('pg_temp') > 60 AS temp_types;
SET search_path = pg_temp, evil, pg_catalog;
SELECT public.spa_run(3, 'admin', 'pg_temp, evil, pg_catalog') IS NOT NULL AS admin_calls_ran;
--
-- the verdict, read with a normal path
--
\c - postgres
SET client_min_messages = warning;
SELECT pg_catalog.nextval('evil.calls') = 1 AS evil_never_called;
-- every call, and what it gave on the normal path (ids, numbers and keys masked)
SELECT c.ord, c.fn, c.role, r.outcome FROM public.spa_calls c JOIN public.spa_res r ON r.ord = c.ord AND r.s = 1
 ORDER BY c.ord;
-- calls whose outcome differs under a hostile path (expected: none)
SELECT r.s AS set, r.ord, r.fn, r.outcome AS hostile, n.outcome AS normal
  FROM public.spa_res r JOIN public.spa_res n ON n.ord = r.ord AND n.s = 1
 WHERE r.s > 1 AND r.outcome IS DISTINCT FROM n.outcome
 ORDER BY 1, 2;
SELECT s AS set, count(*) AS calls FROM public.spa_res GROUP BY s ORDER BY s;
-- the data the calls left behind, per set, masked the same way (expected:
-- identical digests)
CREATE FUNCTION pg_temp.set_digest(p_set int) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
	r record;
	d text;
	acc text := '';
	ids bigint[] := (SELECT array_agg(t.tenant_id) FROM quota_ext.tenants t
	                  WHERE t.name LIKE 'spa-' || p_set || '-%');
BEGIN
	FOR r IN SELECT c.oid::regclass AS rel, c.relname FROM pg_class c
	          WHERE c.relnamespace = 'quota_ext'::regnamespace AND c.relkind IN ('r', 'p')
	            AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'tenant_id')
	          ORDER BY c.relname LOOP
		EXECUTE format($f$SELECT md5(coalesce(string_agg(m, E'\n' ORDER BY m), ''))
		                  FROM (SELECT regexp_replace(regexp_replace(
		                                 (to_jsonb(t) - 'key_hash' - 'created_at' - 'updated_at')::text,
		                                 'qxk_[A-Za-z0-9_]+', 'KEY', 'g'), '[0-9]+', 'N', 'g') AS m
		                          FROM %s t WHERE t.tenant_id = ANY ($1)) y$f$, r.rel) INTO d USING ids;
		acc := acc || r.relname || '=' || left(d, 8) || ' ';
	END LOOP;
	RETURN acc;
END
$$;
SELECT count(DISTINCT pg_temp.set_digest(s)) AS distinct_digests FROM generate_series(1, 3) s;
-- cleanup
DROP SCHEMA evil CASCADE;
DROP FUNCTION public.spa_run(int, text, text);
DROP FUNCTION public.spa_shadow_types(text);
DROP TABLE public.spa_res, public.spa_calls, public.spa_fix;
REVOKE CREATE ON DATABASE :"db" FROM qx_spa_app, qx_spa_admin;
DROP ROLE qx_spa_app;
DROP ROLE qx_spa_admin;
