-- Tenant isolation through the functions (07_isolation.sql covers the
-- tables).  Checklist:
--   I1  in A's context, nothing of B comes back from any function or view:
--       every function quota_ext_app may execute that takes a tenant, called
--       for A, returns none of B's names; quota_status, tenant_summary and
--       rate-limit answers are A's; every view shows no other tenant;
--   I3  A calling any function with B's ids (tenant, user, key, quota,
--       reservation, usage, rate-limit rule, model owned by B) gets exactly
--       what an unknown id gets (same SQLSTATE and text, ids masked), as
--       quota_ext_app after authenticate() and as quota_ext_admin after
--       set_tenant(A) — generated from the catalog, so new functions are
--       covered;
--   I7  unique keys are per tenant (B's idempotency key, model name, user
--       e-mail are free for A, not an oracle); a foreign key to B's row is
--       refused with the unknown-id error, not 23503 naming B's values; a
--       non-LEAKPROOF function in a WHERE clause sees only A's rows;
--   I8  prepared statements and a SECURITY DEFINER function that call the
--       extension's functions, reused after the context switches from A to
--       B, answer for B only (also as a generic plan).
BEGIN;
\ir helpers.psql

\o /dev/null
SELECT quota_ext.model_register('x-g') AS mg \gset
SELECT quota_ext.tenant_create('x-a', 'enterprise') AS ta \gset
SELECT quota_ext.tenant_create('xb-marker-tenant', 'enterprise') AS tb \gset
SELECT quota_ext.tenant_create('x-c', 'enterprise') AS tc \gset
SELECT quota_ext.model_register('x-a-own', owner_tenant_id => :ta);
SELECT quota_ext.model_register('xb-marker-model', owner_tenant_id => :tb);
SELECT quota_ext.model_share(:tb, 'xb-marker-model', :tc);
SELECT quota_ext.model_share(:ta, 'x-a-own', :tb);
SELECT quota_ext.policy_set(t, 'x-g', true) FROM unnest(ARRAY[:ta, :tb, :tc]) t;
SELECT quota_ext.policy_set(:ta, 'x-a-own', true);
SELECT quota_ext.policy_set(:tb, 'xb-marker-model', true, ARRAY['admin']);
SELECT user_id AS ua, api_key AS ka FROM quota_ext.user_create(:ta, 'alice@x-a.example', 'admin') \gset
SELECT user_id AS ub, api_key AS kb FROM quota_ext.user_create(:tb, 'bob@xb-marker.example', 'admin') \gset
SELECT key_id AS kida FROM quota_ext.api_keys WHERE tenant_id = :ta \gset
SELECT key_id AS kidb FROM quota_ext.api_keys WHERE tenant_id = :tb \gset
SELECT quota_ext.quota_set(:ta, 'day', 1000, 'x-g') AS qa \gset
SELECT quota_ext.quota_set(:tb, 'day', 10, 'xb-marker-model') AS qb \gset
SELECT quota_ext.quota_set(:tb, 'month', 500, user_id => :ub) AS qb2 \gset
SELECT quota_ext.rate_limit_set(:ta, 1000, 60, 100) AS rla \gset
SELECT quota_ext.rate_limit_set(:tb, 1000, 60, 100, 'xb-marker-model') AS rlb \gset
SELECT reservation_id AS ra FROM quota_ext.quota_reserve(:ta, 'x-g', 5) \gset
SELECT reservation_id AS rb FROM quota_ext.quota_reserve(:tb, 'xb-marker-model', 5, role => 'admin') \gset
SELECT usage_id AS usa FROM quota_ext.quota_consume(:ta, 'x-g', 3) \gset
SELECT usage_id AS usb FROM quota_ext.quota_consume(:tb, 'xb-marker-model', 3, 'xb-marker-idem', role => 'admin') \gset
SELECT quota_ext.quota_consume(:tb, 'xb-marker-model', 1, role => 'admin') FROM generate_series(1, 7);	-- 8 of 10: an event
SELECT usage_id AS usb2 FROM quota_ext.quota_consume(:tb, 'x-g', 2) \gset
SELECT quota_ext.quota_refund(:tb, :usb2);
-- per-request records (issue 17)
SELECT quota_ext.request_log_write(:ta, 'POST /v1/a', 200);
SELECT quota_ext.request_log_write(:tb, 'POST /v1/xb-marker', 200, request_excerpt => 'xb-marker');
-- meters (issue 17): B's quota, counter and ledger row on a global meter
SELECT quota_ext.meter_create('x-meter');
SELECT quota_ext.quota_set(:tb, 'day', 10, meter => 'x-meter') AS qbm \gset
SELECT quota_ext.meter_consume(:tb, 'x-meter', 1, 'xb-marker-meter-idem');
-- money: B's own price, priced usage, a closed period with its invoice,
-- rollups (cross-tenant tables the app reads its own rows of)
SELECT quota_ext.price_set('x-g', 'EUR', 0.01);
SELECT quota_ext.price_set('xb-marker-model', 'EUR', 0.02, tenant_id => :tb);
SELECT quota_ext.quota_consume(:tb, 'xb-marker-model', 1, role => 'admin');
SELECT quota_ext.quota_consume(:ta, 'x-g', 1);
-- the marketplace (issue 18): B asks for A's listed model; C uses B's model
-- at B's list price, so that B's payout statement has a line; the platform
-- keeps a share of B's model
SELECT quota_ext.model_register('x-a-mkt', owner_tenant_id => :ta) AS mkta \gset
SELECT quota_ext.model_visibility_set(:ta, 'x-a-mkt', 'marketplace');
SELECT quota_ext.model_access_request(:tb, :mkta, 'xb-marker-note');
-- and C asks for B's listed model (B's row in model_access_inbox; the
-- listing publishes its name to every tenant: no marker)
SELECT quota_ext.model_register('x-b-mkt', owner_tenant_id => :tb) AS mktb \gset
SELECT quota_ext.model_visibility_set(:tb, 'x-b-mkt', 'marketplace');
SELECT quota_ext.model_access_request(:tc, :mktb, 'xb-marker-inbox-note');
SELECT quota_ext.model_price_set(:tb, 'xb-marker-model', 'EUR', 0.03);
SELECT quota_ext.model_revenue_share_set(:tb, 'xb-marker-model', 10);
SELECT quota_ext.policy_set(:tc, 'xb-marker-model', true);
SELECT quota_ext.quota_consume(:tc, 'xb-marker-model', 1);
-- billing_close closes only periods that have ended (by this transaction's
-- start): the tenants and their usage are moved just before it
UPDATE quota_ext.tenants SET created_at = now() - interval '1 day' WHERE tenant_id IN (:ta, :tb, :tc);
UPDATE quota_ext.usage SET occurred_at = now() - interval '2 microseconds' WHERE tenant_id IN (:ta, :tb, :tc);
SELECT now() - interval '1 microsecond' AS close_end \gset
SELECT count(*) FROM quota_ext.billing_close(:tb, now() - interval '1 day', :'close_end');
SELECT count(*) FROM quota_ext.billing_close(:ta, now() - interval '1 day', :'close_end');
SELECT count(*) FROM quota_ext.billing_close(:tc, now() - interval '1 day', :'close_end');
-- an outbox consumer of B's (the close wrote B's outbox events)
SELECT quota_ext.set_tenant(:tb);
SELECT count(*) FROM quota_ext.event_poll('xb-marker-relay');
SELECT quota_ext.clear_tenant();
SELECT quota_ext.usage_rollup();
\o
CREATE ROLE qx_tap_x_app LOGIN IN ROLE quota_ext_app;
CREATE ROLE qx_tap_x_admin LOGIN IN ROLE quota_ext_admin;
CREATE ROLE qx_tap_x_owner NOLOGIN IN ROLE quota_ext_app;

-- B's values and unknown ones, per argument name; A's valid values; the
-- strings that must never come back to A
CREATE TEMP TABLE x_ids (arg text PRIMARY KEY, a_val text, b_val text, unknown_val text);
INSERT INTO x_ids VALUES
	('tenant_id', :ta, :tb, 987654321),
	('owner_tenant_id', :ta, :tb, 987654321),
	('user_id', :ua, :ub, 987654321),
	('key_id', :kida, :kidb, 987654321),
	('quota_id', :qa, :qb, 987654321),
	('reservation_id', :ra, :rb, 987654321),
	('usage_id', :usa, :usb, 987654321),
	('rule_id', :rla, :rlb, 987654321),
	('model', quote_literal('x-g'), quote_literal('xb-marker-model'), quote_literal('x-no-such-model'));
CREATE TEMP TABLE x_vals (arg text PRIMARY KEY, val text);
INSERT INTO x_vals VALUES ('grantee_tenant_id', :tc), ('api_key', quote_literal(:'ka')), ('period', '''day'''),
	('name', '''x-new'''), ('email', '''new@x-a.example'''), ('role', '''admin'''), ('allowed', 'true'),
	('max_units', '100'), ('units', '1'), ('estimate', '2'), ('actual', '1'), ('quantity', '1'),
	('count', '100'), ('period_seconds', '60'), ('max_burst', '10'), ('batch', '1'),
	('ttl', '''1 hour'''), ('grace', '''1 hour'''), ('key', '''x-key'''), ('meter', '''x-meter''');
GRANT SELECT ON x_ids, x_vals TO PUBLIC;

-- the functions a role may execute, with a call for tenant A in which
-- argument "swap" (if any) gets the value "v"; named notation, required
-- arguments plus the swapped one
CREATE FUNCTION pg_temp.x_call(f regprocedure, swap text, v text) RETURNS text
	LANGUAGE sql STABLE AS $$
	SELECT format('SELECT quota_ext.%I(%s)', p.proname,
	              string_agg(format('%I => %s', a.n,
	                                CASE WHEN a.n = swap THEN v
	                                     ELSE coalesce((SELECT i.a_val FROM x_ids i WHERE i.arg = a.n),
	                                                   (SELECT x.val FROM x_vals x WHERE x.arg = a.n),
	                                                   CASE WHEN a.t IN ('bigint', 'integer', 'numeric') THEN '1'
	                                                        WHEN a.t = 'boolean' THEN 'true'
	                                                        WHEN a.t = 'text' THEN '''x'''
	                                                        WHEN a.t = 'interval' THEN '''1 hour'''
	                                                        WHEN a.t = 'jsonb' THEN '''{}'''
	                                                        ELSE 'NULL' END) || '::' || a.t END),
	                         ', ' ORDER BY a.i))
	  FROM pg_proc p,
	       LATERAL (SELECT i, p.proargnames[i] AS n, format_type(p.proargtypes[i - 1], NULL) AS t
	                  FROM generate_series(1, p.pronargs) i) a
	 WHERE p.oid = f AND (a.i <= p.pronargs - p.pronargdefaults OR a.n = swap)
	 GROUP BY p.proname
$$;
-- I3 cases: one per function and id argument
CREATE TEMP VIEW x_cases AS
	SELECT p.oid::regprocedure AS f, i.arg,
	       CASE WHEN has_function_privilege('quota_ext_app', p.oid, 'EXECUTE') THEN 'app' ELSE 'admin' END AS role
	  FROM pg_proc p, LATERAL unnest(p.proargnames[1:p.pronargs]) AS n(arg) JOIN x_ids i ON i.arg = n.arg
	 WHERE p.pronamespace = 'quota_ext'::regnamespace
	   AND (has_function_privilege('quota_ext_app', p.oid, 'EXECUTE')
	        OR has_function_privilege('quota_ext_admin', p.oid, 'EXECUTE'))
	   -- set_tenant is the admin's way to switch tenants: it must accept B
	   AND p.proname <> 'set_tenant';
GRANT SELECT ON x_cases TO PUBLIC;

-- run sql in tenant A's context and roll it back; the outcome with ids and
-- model names masked
CREATE FUNCTION pg_temp.x_outcome(sql text, role text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
	res text;
	st text;
	k text := (SELECT val FROM x_vals WHERE arg = 'api_key');
BEGIN
	BEGIN
		IF role = 'app' THEN
			EXECUTE format('SELECT quota_ext.authenticate(%s)', k);
		ELSE
			EXECUTE format('SELECT quota_ext.set_tenant(%s)', (SELECT a_val FROM x_ids WHERE arg = 'tenant_id'));
		END IF;
		EXECUTE format('SELECT string_agg(x::text, '' '') FROM (%s) x', sql) INTO res;
		res := 'ok ' || coalesce(res, '');
		RAISE EXCEPTION USING ERRCODE = 'QX999', MESSAGE = res;
	EXCEPTION
		WHEN SQLSTATE 'QX999' THEN res := SQLERRM;
		WHEN OTHERS THEN st := SQLSTATE; res := SQLERRM;
	END;
	res := regexp_replace(res, 'xb-marker-model|x-no-such-model', 'MODEL', 'g');
	RETURN coalesce(st || ' ', '') || regexp_replace(res, '[0-9]+', 'N', 'g');
END
$$;

-- does quota_ext_app read the tenant_id column of a relation?
CREATE FUNCTION pg_temp.app_reads_tenant(rel oid) RETURNS boolean LANGUAGE sql STABLE AS $$
	SELECT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = rel AND a.attname = 'tenant_id'
	                  AND NOT a.attisdropped AND has_column_privilege('quota_ext_app', rel, a.attnum, 'SELECT'))
$$;
-- rows of rel of a tenant other than t, as the calling role
CREATE FUNCTION pg_temp.foreign_rows_x(rel regclass, t bigint) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
	n bigint;
BEGIN
	-- rows of no tenant (list prices) are global, not another tenant's
	EXECUTE format('SELECT count(*) FROM %s WHERE tenant_id <> $1', rel) INTO n USING t;
	RETURN n;
END
$$;
-- every table the app may read, filtered by a leaky function
CREATE FUNCTION pg_temp.x_peek_all() RETURNS void LANGUAGE plpgsql AS $$
DECLARE
	r record;
BEGIN
	FOR r IN SELECT c.oid::regclass AS rel FROM pg_class c
	          WHERE c.relnamespace = 'quota_ext'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm')
	            AND pg_temp.app_reads_tenant(c.oid) LOOP
		EXECUTE format('SELECT count(*) FROM %s t WHERE pg_temp.x_peek(%L, t.tenant_id)', r.rel, r.rel);
	END LOOP;
END
$$;

-- the per-tenant tables (a tenant_id column), as 07_isolation.sql defines them
CREATE TEMP VIEW x_tables AS
	SELECT c.oid::regclass AS rel, c.relname FROM pg_class c
	 WHERE c.relnamespace = 'quota_ext'::regnamespace AND c.relkind IN ('r', 'p')
	   AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped);
GRANT SELECT ON x_tables TO PUBLIC;
-- rows of rel of tenant t, as the calling role
CREATE FUNCTION pg_temp.own_rows_x(rel regclass, t bigint) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
	n bigint;
BEGIN
	EXECUTE format('SELECT count(*) FROM %s WHERE tenant_id = $1', rel) INTO n USING t;
	RETURN n;
END
$$;

SELECT count(*) AS n_cases FROM x_cases \gset
SELECT count(*) AS n_tables FROM pg_class c
 WHERE c.relnamespace = 'quota_ext'::regnamespace AND c.relkind IN ('r', 'p')
   AND pg_temp.app_reads_tenant(c.oid) \gset
SELECT count(*) AS n_views FROM pg_class c
 WHERE c.relnamespace = 'quota_ext'::regnamespace AND c.relkind IN ('v', 'm') \gset
SELECT count(*) AS n_readers FROM pg_proc p
 WHERE p.pronamespace = 'quota_ext'::regnamespace AND has_function_privilege('quota_ext_app', p.oid, 'EXECUTE')
   AND 'tenant_id' = ANY (p.proargnames[1:p.pronargs]) \gset
SELECT count(*) AS n_pt FROM x_tables \gset
SELECT plan(:n_cases + :n_views + :n_readers + 5 * :n_pt + 33);

-- ---------------------------------------------------------------------------
-- I3: B's ids answer exactly like unknown ids
-- ---------------------------------------------------------------------------
SELECT cmp_ok(:n_cases, '>=', 40, 'cross-tenant cases generated from the catalog: ' || :n_cases);
SET ROLE qx_tap_x_admin;
SELECT is(pg_temp.x_outcome(pg_temp.x_call(f, arg, (SELECT b_val FROM x_ids i WHERE i.arg = c.arg)), role),
          pg_temp.x_outcome(pg_temp.x_call(f, arg, (SELECT unknown_val FROM x_ids i WHERE i.arg = c.arg)), role),
          format('%s as %s in A''s context: B''s %s answers like an unknown one', f, role, arg))
  FROM x_cases c ORDER BY f::text, arg;
RESET ROLE;
-- and a few of them, spelled out: the error is the unknown-id one
SET ROLE qx_tap_x_app;
SELECT quota_ext.authenticate(:'ka') IS NOT NULL AS ok \gset
SELECT throws_ok(format('SELECT quota_ext.quota_consume(%s, %L)', :tb, 'x-g'), '42704',
                 format('tenant %s does not exist', :tb), 'consume for B in A''s context: "does not exist"');
SELECT throws_ok(format('SELECT quota_ext.quota_consume(%s, %L)', :ta, 'xb-marker-model'), '42704',
                 'model "xb-marker-model" does not exist', 'A consuming B''s private model: "does not exist"');
SELECT throws_ok(format('SELECT quota_ext.quota_refund(%s, %s)', :ta, :usb), '42704', NULL,
                 'A refunding B''s usage row by id: 42704');
SELECT throws_ok(format('SELECT quota_ext.quota_settle(%s, %s, 1)', :ta, :rb), '42704', NULL,
                 'A settling B''s reservation by id: 42704');
SELECT is(quota_ext.policy_check(:ta, 'xb-marker-model'), false, 'policy_check of B''s private model for A: false');
RESET ROLE;

-- ---------------------------------------------------------------------------
-- I1: functions and views return nothing of B
-- ---------------------------------------------------------------------------
SET ROLE qx_tap_x_app;
SELECT quota_ext.authenticate(:'ka') IS NOT NULL AS ok \gset
SELECT unalike(pg_temp.x_outcome(pg_temp.x_call(p.oid, NULL, NULL), 'app'), '%xb-marker%',
              format('%s for A returns none of B''s names', p.oid::regprocedure))
  FROM pg_proc p
 WHERE p.pronamespace = 'quota_ext'::regnamespace AND has_function_privilege('quota_ext_app', p.oid, 'EXECUTE')
   AND 'tenant_id' = ANY (p.proargnames[1:p.pronargs])
 ORDER BY p.oid::regprocedure::text;
-- (x_outcome's rolled-back authenticate took the context with it)
SELECT quota_ext.authenticate(:'ka') IS NOT NULL AS ok \gset
SELECT is((SELECT array_agg(quota_id ORDER BY quota_id) FROM quota_ext.quota_status(:ta)), ARRAY[:qa::bigint],
          'quota_status(A) lists A''s quota only');
SELECT is((SELECT count(*) FROM jsonb_array_elements(quota_ext.tenant_summary(:ta) -> 'quotas')), 1::bigint,
          'tenant_summary(A) has A''s quota only');
SELECT is((quota_ext.tenant_summary(:ta) -> 'usage' ->> 'calls_this_month')::int, 3,
          'tenant_summary(A) counts A''s usage only');
SELECT is((SELECT rule_id FROM quota_ext.rate_limit_apply(:ta, 'x-g')), :rla::bigint,
          'rate_limit_apply(A) applies A''s rule');
-- tenant-private buckets: B exhausting "k" does not limit A's "k"
RESET ROLE;
\o /dev/null
SELECT quota_ext.set_tenant(:tb);
SELECT quota_ext.tenant_rate_limit_check('x-shared-name', 0, 1, 3600);
\o
SELECT is((SELECT limited FROM quota_ext.tenant_rate_limit_check('x-shared-name', 0, 1, 3600)), true,
          'B''s private bucket "x-shared-name" is empty');
SELECT quota_ext.clear_tenant() IS NULL AS ok \gset
SET ROLE qx_tap_x_app;
SELECT quota_ext.authenticate(:'ka') IS NOT NULL AS ok \gset
SELECT is((SELECT limited FROM quota_ext.tenant_rate_limit_check('x-shared-name', 0, 1, 3600)), false,
          'A''s bucket of the same name is its own');
-- decision counters and metrics: A's only
SELECT is((SELECT array_agg(DISTINCT tenant_id) FROM quota_ext.request_stats()), ARRAY[:ta::bigint],
          'request_stats() in A''s context: A''s row only');
SELECT unalike(quota_ext.metrics(), format('%%tenant_id="%s"%%', :tb), 'metrics() in A''s context: no series of B');
-- views: none of B's rows (every view of the extension, from the catalog)
SELECT CASE WHEN pg_temp.app_reads_tenant(c.oid)
            THEN is(pg_temp.foreign_rows_x(c.oid::regclass, :ta), 0::bigint, 'view ' || c.relname || ': no other tenant''s rows')
            WHEN EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'tenant_id')
            THEN fail('view ' || c.relname || ' has tenant_id but quota_ext_app cannot read it: check by hand')
            ELSE pass('view ' || c.relname || ' has no tenant_id column') END
  FROM pg_class c WHERE c.relnamespace = 'quota_ext'::regnamespace AND c.relkind IN ('v', 'm') ORDER BY c.relname;
RESET ROLE;

-- ---------------------------------------------------------------------------
-- I7: unique keys are per tenant, foreign keys do not reveal B, and a
-- leaky function sees only A's rows
-- ---------------------------------------------------------------------------
SET ROLE qx_tap_x_app;
SELECT quota_ext.authenticate(:'ka') IS NOT NULL AS ok \gset
SELECT results_eq(format('SELECT allowed, replayed FROM quota_ext.quota_consume(%s, %L, 1, %L)', :ta, 'x-g', 'xb-marker-idem'),
                  $$VALUES (true, false)$$, 'B''s idempotency key is a fresh key for A (no cross-tenant replay)');
RESET ROLE;
SELECT quota_ext.set_tenant(:ta) IS NULL AS ok \gset
SET ROLE qx_tap_x_admin;
SELECT lives_ok(format('SELECT quota_ext.model_register(%L, owner_tenant_id => %s)', 'xb-marker-model', :ta),
                'A may own a model named like B''s private one (names are unique per owner)');
SELECT lives_ok(format('SELECT quota_ext.user_create(%s, %L)', :ta, 'bob@xb-marker.example'),
                'A may have a user with B''s user''s e-mail (unique per tenant)');
SELECT throws_ok(format('SELECT quota_ext.quota_set(%s, %L, 5, user_id => %s)', :ta, 'day', :ub), '42704',
                 format('user %s does not exist', :ub), 'a quota of A for B''s user: "does not exist", not a 23503 naming B');
SELECT throws_ok(format('SELECT quota_ext.rate_limit_set(%s, 5, 60, key_id => %s)', :ta, :kidb), '42704', NULL,
                 'a rate limit of A for B''s key: 42704');
SELECT throws_ok(format('SELECT quota_ext.api_key_create(%s, %s)', :ta, :ub), '42704', NULL,
                 'a key of A for B''s user: 42704');
RESET ROLE;
SELECT quota_ext.clear_tenant() IS NULL AS ok \gset
-- a non-LEAKPROOF function in a WHERE clause, on every table the app reads
CREATE TEMP TABLE x_seen (rel text, tenant_id bigint);
GRANT ALL ON x_seen TO PUBLIC;
CREATE FUNCTION pg_temp.x_peek(rel text, t bigint) RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
BEGIN
	INSERT INTO pg_temp.x_seen VALUES (rel, t);
	RAISE NOTICE 'saw % of tenant %', rel, t;
	RETURN true;
END
$$;
SET ROLE qx_tap_x_app;
SELECT quota_ext.authenticate(:'ka') IS NOT NULL AS ok \gset
SET client_min_messages = warning;
SELECT pg_temp.x_peek_all() IS NULL AS ok \gset
RESET client_min_messages;
RESET ROLE;
-- (rows of no tenant, list prices, are global)
SELECT is((SELECT array_agg(DISTINCT rel ORDER BY rel) FROM x_seen WHERE tenant_id <> :ta), NULL,
          format('a leaky WHERE function on %s tables saw no other tenant''s row', :n_tables));

-- ---------------------------------------------------------------------------
-- every per-tenant table, with B's rows in all of them (so that the suite
-- fails when one policy or FORCE flag is broken: test/t/071_rls_mutation.pl)
-- ---------------------------------------------------------------------------
SELECT cmp_ok(pg_temp.own_rows_x(rel, :tb), '>', 0::bigint, relname || ': the fixtures give B rows here')
  FROM x_tables ORDER BY relname;
SELECT results_eq(
	format($q$SELECT p.polname::text COLLATE "default", p.polcmd::text COLLATE "default", p.polpermissive,
	                 ARRAY(SELECT r::regrole::text FROM unnest(p.polroles) r ORDER BY 1),
	                 pg_get_expr(p.polqual, p.polrelid) COLLATE "default", pg_get_expr(p.polwithcheck, p.polrelid) COLLATE "default"
	            FROM pg_policy p WHERE p.polrelid = %s ORDER BY 1$q$, rel::oid),
	-- prices is a global catalog with tenant rows: its list prices
	-- (tenant_id NULL) are the list prices of the models a tenant may see
	-- (price_list_visible)
	CASE WHEN relname = 'prices' THEN
	$$VALUES ('admin_read', 'r', true, ARRAY['quota_ext_admin'],
	          '((quota_ext.current_tenant_id() IS NULL) OR ((tenant_id IS NULL) AND quota_ext.price_list_visible(model_id)) OR (tenant_id = quota_ext.current_tenant_id()))', NULL::text),
	         ('tenant_isolation', '*', true, ARRAY['quota_ext_app'],
	          '(((tenant_id IS NULL) AND quota_ext.price_list_visible(model_id)) OR (tenant_id = quota_ext.current_tenant_id()))', NULL::text)$$
	ELSE
	$$VALUES ('admin_read', 'r', true, ARRAY['quota_ext_admin'],
	          '((quota_ext.current_tenant_id() IS NULL) OR (tenant_id = quota_ext.current_tenant_id()))', NULL::text),
	         ('tenant_isolation', '*', true, ARRAY['quota_ext_app'],
	          '(tenant_id = quota_ext.current_tenant_id())', '(tenant_id = quota_ext.current_tenant_id())')$$
	END,
	relname || ': exactly tenant_isolation (app, all commands) and admin_read (admin, SELECT), as written')
  FROM x_tables ORDER BY relname;
SELECT ok(c.relrowsecurity AND c.relforcerowsecurity, t.relname || ': ENABLE and FORCE ROW LEVEL SECURITY')
  FROM x_tables t JOIN pg_class c ON c.oid = t.rel ORDER BY t.relname;
SELECT is_empty($$SELECT c.relname FROM pg_class c WHERE c.relnamespace = 'quota_ext'::regnamespace
                     AND c.relkind IN ('r', 'p') AND c.relrowsecurity AND NOT c.relforcerowsecurity$$,
                'every table with row-level security forces it (global ones such as rollup_state too)');
-- as the app in A's context and the admin after set_tenant(A): no row of B
-- anywhere (for tables a role cannot read, that is the check)
SET ROLE qx_tap_x_app;
SELECT quota_ext.authenticate(:'ka') IS NOT NULL AS ok \gset
SELECT CASE WHEN pg_temp.app_reads_tenant(rel) THEN is(pg_temp.foreign_rows_x(rel, :ta), 0::bigint, 'app as A: no other tenant''s rows in ' || relname)
            ELSE pass('app: ' || relname || ' is not readable') END
  FROM x_tables ORDER BY relname;
RESET ROLE;
SELECT quota_ext.set_tenant(:ta) IS NULL AS ok \gset
SET ROLE qx_tap_x_admin;
SELECT CASE WHEN has_table_privilege('quota_ext_admin', rel, 'SELECT')
            THEN is(pg_temp.foreign_rows_x(rel, :ta), 0::bigint, 'admin after set_tenant(A): no other tenant''s rows in ' || relname)
            ELSE pass('admin: ' || relname || ' is not readable as a whole') END
  FROM x_tables ORDER BY relname;
RESET ROLE;
SELECT quota_ext.clear_tenant() IS NULL AS ok \gset
SET ROLE qx_tap_x_admin;
SELECT cmp_ok(pg_temp.own_rows_x('quota_ext.usage', :tb) + pg_temp.own_rows_x('quota_ext.quotas', :tb), '>', 0::bigint,
              'admin without a context reads every tenant (B''s usage and quotas)');
RESET ROLE;

-- ---------------------------------------------------------------------------
-- I8: plans reused across a tenant switch
-- ---------------------------------------------------------------------------
CREATE FUNCTION public.x_my_quotas() RETURNS SETOF bigint
	LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
	AS $$ BEGIN RETURN QUERY SELECT quota_id FROM quota_ext.quota_status(quota_ext.current_tenant_id()); END $$;
ALTER FUNCTION public.x_my_quotas() OWNER TO qx_tap_x_owner;
GRANT EXECUTE ON FUNCTION public.x_my_quotas() TO qx_tap_x_app;
SET ROLE qx_tap_x_app;
SELECT quota_ext.authenticate(:'ka') IS NOT NULL AS ok \gset
PREPARE x_status(bigint) AS SELECT array_agg(quota_id ORDER BY quota_id) FROM quota_ext.quota_status($1);
PREPARE x_mine AS SELECT array_agg(quota_id ORDER BY quota_id) FROM quota_ext.quota_status(quota_ext.current_tenant_id());
PREPARE x_summary AS SELECT quota_ext.tenant_summary(quota_ext.current_tenant_id()) -> 'tenant' ->> 'name';
PREPARE x_consume AS SELECT usage_id FROM quota_ext.quota_consume(quota_ext.current_tenant_id(), 'x-g', 1);
-- five runs as A first: the sixth may use a generic plan
\o /dev/null
EXECUTE x_mine;
EXECUTE x_mine;
EXECUTE x_mine;
EXECUTE x_mine;
EXECUTE x_mine;
\o
SELECT results_eq('EXECUTE x_mine', format('VALUES (ARRAY[%s]::bigint[])', :qa), 'prepared x_mine as A: A''s quota');
SELECT results_eq('EXECUTE x_summary', $$VALUES ('x-a'::text)$$, 'prepared x_summary as A: A');
SELECT results_eq('SELECT array_agg(x ORDER BY x) FROM public.x_my_quotas() x', format('VALUES (ARRAY[%s]::bigint[])', :qa),
                  'SECURITY DEFINER caller as A: A''s quota');
-- switch to B through the API, in the same transaction and session
SELECT quota_ext.authenticate(:'kb') IS NOT NULL AS ok \gset
SELECT results_eq('EXECUTE x_mine', format('VALUES (ARRAY[%s, %s, %s]::bigint[])', :qb, :qb2, :qbm), 'the same prepared x_mine as B: B''s quotas (and its meter quota)');
SELECT results_eq('EXECUTE x_summary', $$VALUES ('xb-marker-tenant'::text)$$, 'the same prepared x_summary as B: B');
SELECT results_eq(format('EXECUTE x_status(%s)', :tb), format('VALUES (ARRAY[%s, %s, %s]::bigint[])', :qb, :qb2, :qbm),
                  'prepared x_status(B) as B: B''s quotas');
SELECT throws_ok(format('EXECUTE x_status(%s)', :ta), '42704', format('tenant %s does not exist', :ta),
                 'prepared x_status(A) as B: A does not exist');
SELECT results_eq('SELECT array_agg(x ORDER BY x) FROM public.x_my_quotas() x', format('VALUES (ARRAY[%s, %s, %s]::bigint[])', :qb, :qb2, :qbm),
                  'the SECURITY DEFINER caller as B: B''s quotas');
RESET ROLE;
SELECT count(*) FILTER (WHERE tenant_id = :ta) AS usage_a, count(*) FILTER (WHERE tenant_id = :tb) AS usage_b
  FROM quota_ext.usage \gset
SET ROLE qx_tap_x_app;
SELECT lives_ok('EXECUTE x_consume', 'the prepared consume as B ...');
RESET ROLE;
SELECT results_eq(format('SELECT count(*) FILTER (WHERE tenant_id = %s), count(*) FILTER (WHERE tenant_id = %s) FROM quota_ext.usage',
                         :ta, :tb),
                  format('VALUES (%s::bigint, %s::bigint)', :usage_a, :usage_b + 1), '... charged B, not A');

SELECT * FROM finish();
ROLLBACK;
