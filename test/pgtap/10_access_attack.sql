-- The access attack suite (issue 12): every function of schema quota_ext
-- that quota_ext_app or quota_ext_admin may EXECUTE, read from pg_proc and
-- has_function_privilege, so a function added later is attacked without
-- editing this file.  Arguments are built from the catalog, by parameter
-- name (tenant_id -> a tenant's id, key_id -> one of its keys, model -> one
-- of its models, ...) and else by type.
--
--   A1  a login that is only in quota_ext_app, with NO tenant context,
--       naming tenant B and B's objects: 42501 and no data.  The functions
--       that are legitimately callable without a context are listed below
--       (a_open), each with its reason; a function neither refused nor
--       listed fails the test, and a listed one must not answer with
--       anything of B.
--   A2  in tenant A's context (the app after authenticate() with A's key;
--       for a function only quota_ext_admin may execute, an admin login
--       after set_tenant(A)), naming tenant B: 42704 with exactly the text
--       of a tenant id that does not exist (no existence oracle); naming one
--       of B's objects under tenant A: exactly what an unknown id gets.
--   A3  a quota_ext_admin login with no context, naming B and B's objects:
--       works (so the generated calls are meaningful and A1 refuses for the
--       right reason, not for a bad argument).  Functions that need a
--       context by design are listed (a_needs_context), and those that need
--       Citus (a_needs_citus: 55000 in a database without it).  Procedures
--       (distribute) are attacked with CALL.
--   A4  the pieces the checks rest on: the roles' grants (nothing of the
--       internal checks executable by a role), and why the check judges the
--       session's role: an app login through the extension's SECURITY
--       DEFINER functions, through its own SECURITY DEFINER wrapper owned
--       by the admin, and with SET ROLE.
--
-- test/t/072_access_mutation.pl removes each access check in turn and
-- asserts that this file then fails.
BEGIN;
\ir helpers.psql

\o /dev/null
SELECT quota_ext.model_register('aa-g') AS mg \gset
SELECT quota_ext.tenant_create('aa-a', 'enterprise') AS ta \gset
SELECT quota_ext.tenant_create('xb-marker-tenant', 'enterprise') AS tb \gset
SELECT quota_ext.tenant_create('aa-c', 'enterprise') AS tc \gset
SELECT quota_ext.model_register('aa-a-own', owner_tenant_id => :ta);
SELECT quota_ext.model_register('xb-marker-model', owner_tenant_id => :tb);
SELECT quota_ext.policy_set(t, 'aa-g', true) FROM unnest(ARRAY[:ta, :tb, :tc]) t;
SELECT quota_ext.policy_set(:ta, 'aa-a-own', true);
SELECT quota_ext.policy_set(:tb, 'xb-marker-model', true);
SELECT quota_ext.model_share(:tb, 'xb-marker-model', :tc);
SELECT user_id AS ua, api_key AS ka FROM quota_ext.user_create(:ta, 'alice@aa-a.example', 'admin') \gset
SELECT user_id AS ub, api_key AS kb FROM quota_ext.user_create(:tb, 'bob@xb-marker.example', 'admin') \gset
SELECT key_id AS kida FROM quota_ext.api_keys WHERE tenant_id = :ta \gset
SELECT key_id AS kidb FROM quota_ext.api_keys WHERE tenant_id = :tb \gset
SELECT quota_ext.quota_set(:ta, 'day', 1000, 'aa-g') AS qa \gset
SELECT quota_ext.quota_set(:tb, 'day', 1000, 'xb-marker-model') AS qb \gset
SELECT quota_ext.rate_limit_set(:ta, 1000, 60, 100) AS rla \gset
SELECT quota_ext.rate_limit_set(:tb, 1000, 60, 100, 'xb-marker-model') AS rlb \gset
SELECT quota_ext.rate_limit_set(:tb, 1000, 60, 100, key_id => :kidb) AS rlbk \gset
SELECT reservation_id AS ra FROM quota_ext.quota_reserve(:ta, 'aa-g', 5) \gset
SELECT reservation_id AS rb FROM quota_ext.quota_reserve(:tb, 'xb-marker-model', 5) \gset
SELECT usage_id AS usa FROM quota_ext.quota_consume(:ta, 'aa-g', 3) \gset
SELECT usage_id AS usb FROM quota_ext.quota_consume(:tb, 'xb-marker-model', 3) \gset
SELECT quota_ext.price_set('aa-g', 'EUR', 0.01);
SELECT quota_ext.price_set('xb-marker-model', 'EUR', 0.02, tenant_id => :tb);
SELECT quota_ext.quota_consume(:ta, 'aa-g', 1);
SELECT quota_ext.quota_consume(:tb, 'xb-marker-model', 1);
-- billing_close closes only periods that have ended (by this transaction's
-- start): the tenants and their usage are moved just before it
UPDATE quota_ext.tenants SET created_at = now() - interval '1 day' WHERE tenant_id IN (:ta, :tb);
UPDATE quota_ext.usage SET occurred_at = now() - interval '2 microseconds' WHERE tenant_id IN (:ta, :tb);
SELECT now() - interval '1 microsecond' AS close_end \gset
SELECT min(invoice_id) AS inva FROM quota_ext.billing_close(:ta, now() - interval '1 day', :'close_end') \gset
SELECT min(invoice_id) AS invb FROM quota_ext.billing_close(:tb, now() - interval '1 day', :'close_end') \gset
-- the marketplace (issue 18): A's and B's listed models, each with a
-- pending request of C's (request_id), and C's listed model for A and B to
-- ask for (model_id).  B's listed model has no marker name: the listing
-- publishes it to every tenant by design
SELECT quota_ext.model_register('aa-a-mkt', owner_tenant_id => :ta) AS mkta \gset
SELECT quota_ext.model_register('aa-b-mkt', owner_tenant_id => :tb) AS mktb \gset
SELECT quota_ext.model_register('aa-c-mkt', owner_tenant_id => :tc) AS mktc \gset
SELECT quota_ext.model_visibility_set(o, m, 'marketplace')
  FROM (VALUES (:ta, 'aa-a-mkt'), (:tb, 'aa-b-mkt'), (:tc, 'aa-c-mkt')) v (o, m);
SELECT quota_ext.model_access_request(:tc, :mkta) AS reqa \gset
SELECT quota_ext.model_access_request(:tc, :mktb) AS reqb \gset
-- issued, so that invoice_mark_paid (issued -> paid) works for an admin
SELECT quota_ext.invoice_issue(:ta, :inva), quota_ext.invoice_issue(:tb, :invb);
SELECT quota_ext.usage_rollup();
SELECT quota_ext.meter_create('aa-counter'), quota_ext.meter_create('aa-gauge', kind => 'gauge');
\o
CREATE ROLE qx_tap_aa_app LOGIN IN ROLE quota_ext_app;
CREATE ROLE qx_tap_aa_admin LOGIN IN ROLE quota_ext_admin;

-- values per argument name: A's, B's and one that exists nowhere
CREATE TEMP TABLE a_ids (arg text PRIMARY KEY, a_val text, b_val text, unknown_val text);
INSERT INTO a_ids VALUES
	('tenant_id', :ta, :tb, 987654321),
	('owner_tenant_id', :ta, :tb, 987654321),
	('user_id', :ua, :ub, 987654321),
	('key_id', :kida, :kidb, 987654321),
	('quota_id', :qa, :qb, 987654321),
	('reservation_id', :ra, :rb, 987654321),
	('usage_id', :usa, :usb, 987654321),
	('rule_id', :rla, :rlb, 987654321),
	('invoice_id', :inva, :invb, 987654321),
	('request_id', :reqa, :reqb, 987654321),
	('model', quote_literal('aa-g'), quote_literal('xb-marker-model'), quote_literal('aa-no-such-model')),
	('api_key', quote_literal(:'ka'), quote_literal(:'kb'), NULL);
-- values of the other arguments (the same for everyone), by name; opt:
-- also passed where the argument has a default
CREATE TEMP TABLE a_vals (arg text PRIMARY KEY, val text, opt boolean NOT NULL DEFAULT false);
INSERT INTO a_vals (arg, val) VALUES ('grantee_tenant_id', :tc), ('period', '''day'''),
	('name', '''aa-new'''), ('email', '''new@aa.example'''), ('role', '''admin'''), ('allowed', 'true'),
	('units', '1'), ('estimate', '2'), ('actual', '1'), ('quantity', '1'),
	('count', '100'), ('period_seconds', '60'), ('max_burst', '10'), ('batch', '1'),
	('ttl', '''1 hour'''), ('grace', '''1 hour'''), ('key', '''aa-key'''), ('currency', '''EUR'''),
	('timezone', '''UTC'''),
	('period_start', quote_literal(:'close_end')),
	('period_end', quote_literal((:'close_end'::timestamptz + interval '1 microsecond')::text)),
	('from', '''2000-01-01'''), ('to', '''2100-01-01'''), ('before', '''2000-01-01'''),
	('consumer', '''aa-relay'''), ('upto', '0'),
	('visibility', '''tenant'''), ('model_id', :mktc), ('consumer_tenant_id', :tc);
-- (a price needs one of its amounts; B's price at now() exists already;
-- quota_set's max_units has a default, NULL, for money budgets: issue 17)
INSERT INTO a_vals VALUES ('unit_price', '0.01', true), ('effective_from', '''2100-01-01''', true),
	('max_units', '100', true);
-- values for one function's argument, before a_ids and a_vals: api_key_import
-- takes a key of another system, not one of quota_ext's (issue 17)
CREATE TEMP TABLE a_fn_vals (fn name, arg text, val text, PRIMARY KEY (fn, arg));
INSERT INTO a_fn_vals VALUES ('api_key_import', 'api_key', '''sk-live-Imported0123456789abcdef'''),
	-- meters (issue 17): a counter for meter_consume, a gauge for gauge_adjust
	('meter_consume', 'meter', '''aa-counter'''), ('gauge_adjust', 'meter', '''aa-gauge'''),
	-- a window of at most 93 days (security finding 1)
	('model_usage_by_consumer', 'from', '''2026-01-01'''), ('model_usage_by_consumer', 'to', '''2026-03-01''');
GRANT SELECT ON a_ids, a_vals, a_fn_vals TO PUBLIC;

-- A1: callable by quota_ext_app without a context, and why
CREATE TEMP TABLE a_open (fn name PRIMARY KEY, reason text NOT NULL);
INSERT INTO a_open VALUES
	('authenticate', 'key based: checks the API key and makes the context'),
	('invoke', 'key based: authenticates the API key it is given'),
	('current_tenant_id', 'the session''s own context (NULL without one)'),
	('current_context', 'the session''s own context (all NULL without one)'),
	('clear_tenant', 'drops the session''s own context'),
	('rate_limit_check', 'ad-hoc buckets shared by every quota_ext_app login, before authentication (per IP, per login name); no tenant''s data'),
	('gcra_eval', 'pure GCRA arithmetic on its arguments'),
	('period_bounds', 'pure calendar arithmetic on its arguments'),
	('request_stats', 'rows of the context''s tenant only: none without a context'),
	('metrics', 'per-tenant series of the context''s tenant only: none without a context'),
	('model_listing', 'the marketplace: listed models and their list prices, published by their owners for every tenant; nothing else of them'),
	('price_list_visible', 'the prices policies'' test, about the session''s own context: without one, true for global models and default prices only');
-- A3: need a tenant context by design, also for an admin
CREATE TEMP TABLE a_needs_context (fn name PRIMARY KEY, reason text NOT NULL);
INSERT INTO a_needs_context VALUES
	('tenant_rate_limit_check', 'buckets private to the context''s tenant: there is no tenant without one');
-- A3: need Citus (55000 in a database without the citus extension, as here
-- unless Citus is installed)
CREATE TEMP TABLE a_needs_citus (fn name PRIMARY KEY, reason text NOT NULL);
INSERT INTO a_needs_citus VALUES
	('distribute', 'makes Citus reference and distributed tables: refuses without Citus');
GRANT SELECT ON a_open, a_needs_context, a_needs_citus TO PUBLIC;
-- A2: callable in a tenant context although they name no tenant, and why
CREATE TEMP TABLE a_ctx_ok (fn name PRIMARY KEY, reason text NOT NULL);
INSERT INTO a_ctx_ok VALUES
	('authenticate', 'key based: replaces the context with the key''s'),
	('invoke', 'key based: acts for the key''s own tenant'),
	('current_tenant_id', 'the session''s own context'),
	('current_context', 'the session''s own context'),
	('clear_tenant', 'drops the session''s own context'),
	('gcra_eval', 'pure GCRA arithmetic on its arguments'),
	('period_bounds', 'pure calendar arithmetic on its arguments'),
	('rate_limit_check', 'ad-hoc buckets shared by every quota_ext_app login'),
	('tenant_rate_limit_check', 'buckets private to the context''s tenant'),
	('request_stats', 'the context''s tenant''s rows only'),
	('metrics', 'the context''s tenant''s series only'),
	('rate_limit_status', 'quota_ext_admin only: the size of the shared bucket table, no tenant''s data'),
	('event_poll', 'the context''s tenant''s events and consumers only'),
	('event_ack', 'the context''s tenant''s consumers and events only'),
	('model_listing', 'the marketplace listing, the same for every tenant'),
	('price_list_visible', 'whether the context''s tenant may see a model''s list prices: true only for what it may use or ask for');
GRANT SELECT ON a_ctx_ok TO PUBLIC;

-- the functions under attack
CREATE TEMP VIEW a_funcs AS
	SELECT p.oid, p.oid::regprocedure AS f, p.proname,
	       has_function_privilege('quota_ext_app', p.oid, 'EXECUTE') AS app
	  FROM pg_proc p
	 WHERE p.pronamespace = 'quota_ext'::regnamespace
	   AND (has_function_privilege('quota_ext_app', p.oid, 'EXECUTE')
	        OR has_function_privilege('quota_ext_admin', p.oid, 'EXECUTE'));
GRANT SELECT ON a_funcs TO PUBLIC;

-- a call of f: arguments without a default, and those with a default that
-- are named in a_ids or are a_vals.opt; "who" picks the column of a_ids ('a', 'b',
-- 'unknown'); arguments listed in "swap" take column "swap_who" instead
CREATE FUNCTION pg_temp.a_call(f regprocedure, who text, swap text[] DEFAULT '{}', swap_who text DEFAULT NULL)
	RETURNS text LANGUAGE sql STABLE AS $$
	SELECT format(CASE p.prokind WHEN 'p' THEN 'CALL quota_ext.%I(%s)' ELSE 'SELECT * FROM quota_ext.%I(%s)' END, p.proname,
	              coalesce(string_agg(format('%I => %s::%s', a.n,
	                  coalesce((SELECT v.val FROM a_fn_vals v WHERE v.fn = p.proname AND v.arg = a.n),
	                           (SELECT CASE CASE WHEN a.n = ANY (swap) THEN swap_who ELSE who END
	                                    WHEN 'a' THEN i.a_val WHEN 'b' THEN i.b_val ELSE i.unknown_val END
	                              FROM a_ids i WHERE i.arg = a.n),
	                           (SELECT x.val FROM a_vals x WHERE x.arg = a.n),
	                           CASE WHEN a.t IN ('bigint', 'integer', 'smallint', 'numeric') THEN '1'
	                                WHEN a.t = 'boolean' THEN 'true'
	                                WHEN a.t = 'interval' THEN '''1 hour'''
	                                WHEN a.t IN ('timestamp with time zone', 'date') THEN '''2026-01-01'''
	                                WHEN a.t = 'jsonb' THEN '''{}'''
	                                WHEN a.t = 'text' THEN '''x'''
	                                WHEN a.t = 'text[]' THEN '''{}'''
	                                ELSE 'NULL' END),
	                  a.t), ', ' ORDER BY a.i) FILTER (WHERE a.i IS NOT NULL), ''))
	  FROM pg_proc p
	  LEFT JOIN LATERAL (SELECT i, p.proargnames[i] AS n, format_type(p.proargtypes[i - 1], NULL) AS t
	                       FROM generate_series(1, p.pronargs) i) a
	         ON a.i <= p.pronargs - p.pronargdefaults OR EXISTS (SELECT 1 FROM a_ids x WHERE x.arg = a.n)
	            OR EXISTS (SELECT 1 FROM a_vals x WHERE x.arg = a.n AND x.opt)
	 WHERE p.oid = f
	 GROUP BY p.proname, p.prokind
$$;

-- run sql (a SELECT, or a CALL of a procedure) as the current role, after "ctx" ('' none, 'auth' A's key,
-- 'set' set_tenant(A)), and roll it back; the outcome: 'ok <rows>' or
-- '<SQLSTATE> <message>', raw (a_outcome_raw) or with digits masked
CREATE FUNCTION pg_temp.a_outcome_raw(sql text, ctx text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
	res text;
	st text;
BEGIN
	BEGIN
		IF ctx = 'auth' THEN
			EXECUTE format('SELECT quota_ext.authenticate(%s)', (SELECT a_val FROM a_ids WHERE arg = 'api_key'));
		ELSIF ctx = 'set' THEN
			EXECUTE format('SELECT quota_ext.set_tenant(%s)', (SELECT a_val FROM a_ids WHERE arg = 'tenant_id'));
		END IF;
		IF sql LIKE 'CALL %' THEN
			EXECUTE sql;	-- a procedure (distribute): no rows to show
		ELSE
			EXECUTE format('SELECT string_agg(x::text, '' '') FROM (%s) x', sql) INTO res;
		END IF;
		res := 'ok ' || coalesce(res, '');
		RAISE EXCEPTION USING ERRCODE = 'QX999', MESSAGE = res;
	EXCEPTION
		WHEN SQLSTATE 'QX999' THEN res := SQLERRM;
		WHEN OTHERS THEN st := SQLSTATE; res := SQLERRM;
	END;
	RETURN coalesce(st || ' ', '') || res;
END
$$;
CREATE FUNCTION pg_temp.a_short(s text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
	SELECT left(regexp_replace(s, '\s+', ' ', 'g'), 200)
$$;
CREATE FUNCTION pg_temp.a_mask(s text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
	SELECT regexp_replace(regexp_replace(s, 'xb-marker-model|aa-no-such-model', 'MODEL', 'g'), '[0-9]+', 'N', 'g')
$$;
-- does an outcome carry anything of B?  (its names, its tenant id as a
-- metrics label or a JSON value)
CREATE FUNCTION pg_temp.a_leaks_b(s text) RETURNS boolean LANGUAGE sql STABLE AS $$
	SELECT s LIKE '%xb-marker%' OR s ~ ('(tenant_id="|"tenant_id": )' || (SELECT b_val FROM a_ids WHERE arg = 'tenant_id') || '\M')
$$;
GRANT EXECUTE ON FUNCTION pg_temp.a_call(regprocedure, text, text[], text), pg_temp.a_outcome_raw(text, text),
	pg_temp.a_mask(text), pg_temp.a_short(text), pg_temp.a_leaks_b(text) TO PUBLIC;

-- A2 cases: a function and an object argument other than the tenant
CREATE TEMP VIEW a_swaps AS
	SELECT f.f, n.arg
	  FROM a_funcs f JOIN pg_proc p ON p.oid = f.oid,
	       LATERAL unnest(p.proargnames[1:p.pronargs]) AS n(arg)
	 WHERE n.arg IN (SELECT arg FROM a_ids WHERE arg NOT IN ('tenant_id', 'owner_tenant_id', 'api_key'))
	   AND f.proname <> 'set_tenant';
GRANT SELECT ON a_swaps TO PUBLIC;

SELECT count(*) AS n_funcs FROM a_funcs \gset
SELECT count(*) AS n_tenant FROM a_funcs f JOIN pg_proc p ON p.oid = f.oid
 WHERE p.proargnames[1:p.pronargs] && ARRAY['tenant_id', 'owner_tenant_id'] AND f.proname <> 'set_tenant' \gset
SELECT count(*) AS n_swaps FROM a_swaps \gset
SELECT count(*) AS n_global FROM a_funcs f JOIN pg_proc p ON p.oid = f.oid
 WHERE NOT coalesce(p.proargnames[1:p.pronargs], '{}') && ARRAY['tenant_id', 'owner_tenant_id'] \gset
SELECT count(*) AS n_ctx_ok FROM a_ctx_ok \gset
SELECT count(*) AS n_open FROM a_open \gset
SELECT count(*) AS n_needs FROM a_needs_context \gset
SELECT count(*) AS n_citus FROM a_needs_citus \gset
SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') AS has_citus \gset
SELECT plan(3 * :n_funcs + 2 * :n_tenant + :n_swaps + :n_global + :n_open + :n_needs + :n_citus + :n_ctx_ok + 21);

SELECT cmp_ok(:n_funcs, '>=', 50, 'functions under attack, from the catalog: ' || :n_funcs);

-- ---------------------------------------------------------------------------
-- A1: an app login without a context
-- ---------------------------------------------------------------------------
CREATE TEMP TABLE a1 (f regprocedure, proname name, listed boolean, by_key boolean, outcome text);
GRANT ALL ON a1 TO PUBLIC;
SET ROLE qx_tap_aa_app;
INSERT INTO a1 SELECT f.f, f.proname, f.proname IN (SELECT fn FROM a_open), 'api_key' = ANY (p.proargnames),
       pg_temp.a_outcome_raw(pg_temp.a_call(f.f, 'b'), '')
  FROM a_funcs f JOIN pg_proc p ON p.oid = f.oid;
RESET ROLE;
SELECT CASE WHEN listed THEN ok(NOT pg_temp.a_leaks_b(outcome),
                                format('A1 %s without a context (open: %s): nothing of B', f,
                                       (SELECT reason FROM a_open WHERE fn = proname)))
            ELSE is(left(outcome, 5), '42501',
                    format('A1 %s as app without a context for B: 42501 (got %s)', f, pg_temp.a_short(outcome))) END
  FROM a1 ORDER BY f::text;
-- (a function that takes an API key answers for that key's tenant: B's key
-- is B's credential, so its answer may be B's)
SELECT ok(by_key OR NOT pg_temp.a_leaks_b(outcome), format('A1 %s without a context: the answer has nothing of B', f))
  FROM a1 ORDER BY f::text;
-- the list holds no stale names (every listed function exists and is the app's)
SELECT ok(EXISTS (SELECT 1 FROM a_funcs f WHERE f.proname = o.fn AND f.app),
          format('A1 open list: %s exists and quota_ext_app may execute it', o.fn))
  FROM a_open o ORDER BY o.fn;

-- the four readers of finding 2, spelled out (they are SECURITY DEFINER)
SET ROLE qx_tap_aa_app;
SELECT throws_ok(format('SELECT quota_ext.tenant_summary(%s)', :tb), '42501', 'no tenant context in this transaction',
                 'tenant_summary(B) by an app login without a key: 42501');
SELECT throws_ok(format('SELECT * FROM quota_ext.quota_status(%s)', :tb), '42501', NULL,
                 'quota_status(B) by an app login without a key: 42501');
SELECT throws_ok(format('SELECT * FROM quota_ext.price_lookup(%s, %L)', :tb, 'xb-marker-model'), '42501', NULL,
                 'price_lookup(B) by an app login without a key: 42501');
SELECT throws_ok(format('SELECT * FROM quota_ext.usage_report(%s, %L, %L)', :tb, '2000-01-01', '2100-01-01'), '42501', NULL,
                 'usage_report(B) by an app login without a key: 42501');
RESET ROLE;

-- ---------------------------------------------------------------------------
-- A2: in A's context, for B
-- ---------------------------------------------------------------------------
CREATE TEMP TABLE a2 (f regprocedure, arg text, b_out text, unknown_out text, a_out text);
GRANT ALL ON a2 TO PUBLIC;
-- B as the tenant (tenant_id, owner_tenant_id), everything else A's; and
-- the same call for A itself
CREATE FUNCTION pg_temp.a2_tenant(ctx text) RETURNS void LANGUAGE sql AS $$
	INSERT INTO a2 SELECT f.f, 'tenant',
	       pg_temp.a_outcome_raw(pg_temp.a_call(f.f, 'a', ARRAY['tenant_id', 'owner_tenant_id'], 'b'), ctx),
	       pg_temp.a_outcome_raw(pg_temp.a_call(f.f, 'a', ARRAY['tenant_id', 'owner_tenant_id'], 'unknown'), ctx),
	       pg_temp.a_outcome_raw(pg_temp.a_call(f.f, 'a'), ctx)
	  FROM a_funcs f JOIN pg_proc p ON p.oid = f.oid
	 WHERE f.app = (ctx = 'auth') AND f.proname <> 'set_tenant'
	   AND p.proargnames[1:p.pronargs] && ARRAY['tenant_id', 'owner_tenant_id'];
$$;
-- B's object as one argument, everything else A's
CREATE FUNCTION pg_temp.a2_swaps(ctx text) RETURNS void LANGUAGE sql AS $$
	INSERT INTO a2 SELECT s.f, s.arg,
	       pg_temp.a_outcome_raw(pg_temp.a_call(s.f, 'a', ARRAY[s.arg], 'b'), ctx),
	       pg_temp.a_outcome_raw(pg_temp.a_call(s.f, 'a', ARRAY[s.arg], 'unknown'), ctx)
	  FROM a_swaps s JOIN a_funcs f ON f.f = s.f WHERE f.app = (ctx = 'auth');
$$;
GRANT EXECUTE ON FUNCTION pg_temp.a2_tenant(text), pg_temp.a2_swaps(text) TO PUBLIC;
SET ROLE qx_tap_aa_app;
SELECT pg_temp.a2_tenant('auth'), pg_temp.a2_swaps('auth');
RESET ROLE;
SET ROLE qx_tap_aa_admin;
SELECT pg_temp.a2_tenant('set'), pg_temp.a2_swaps('set');
RESET ROLE;
-- (a function that refuses every tenant context, A's own too, answers B
-- with that refusal: also no oracle)
SELECT CASE WHEN a_out ~ '^42501 ' THEN is(b_out, a_out, format('A2 %s refuses any tenant context, B like A', f))
            ELSE is(b_out, format('42704 tenant %s does not exist', :tb),
                    format('A2 %s in A''s context for tenant B: 42704 "tenant ... does not exist"', f)) END
  FROM a2 WHERE arg = 'tenant' ORDER BY f::text;
SELECT ok(b_out ~ '^4(2704|2501) ' AND pg_temp.a_mask(b_out) = pg_temp.a_mask(unknown_out),
          format('A2 %s in A''s context: tenant B answers exactly like a tenant that does not exist (%s)',
                 f, pg_temp.a_short(b_out)))
  FROM a2 WHERE arg = 'tenant' ORDER BY f::text;
SELECT is(pg_temp.a_mask(b_out), pg_temp.a_mask(unknown_out),
          format('A2 %s in A''s context: B''s %s answers like an unknown one', f, arg))
  FROM a2 WHERE arg <> 'tenant' ORDER BY f::text, arg;

-- Functions that name no tenant, in A's context: the ones that work
-- across tenants refuse a context (42501); the others are listed (a_ctx_ok)
CREATE TEMP TABLE a2x (f regprocedure, proname name, outcome text);
GRANT ALL ON a2x TO PUBLIC;
CREATE FUNCTION pg_temp.a2_global(ctx text) RETURNS void LANGUAGE sql AS $$
	INSERT INTO a2x SELECT f.f, f.proname, pg_temp.a_outcome_raw(pg_temp.a_call(f.f, 'a'), ctx)
	  FROM a_funcs f JOIN pg_proc p ON p.oid = f.oid
	 WHERE f.app = (ctx = 'auth')
	   AND NOT coalesce(p.proargnames[1:p.pronargs], '{}') && ARRAY['tenant_id', 'owner_tenant_id'];
$$;
GRANT EXECUTE ON FUNCTION pg_temp.a2_global(text) TO PUBLIC;
SET ROLE qx_tap_aa_app;
SELECT pg_temp.a2_global('auth');
RESET ROLE;
SET ROLE qx_tap_aa_admin;
SELECT pg_temp.a2_global('set');
RESET ROLE;
SELECT CASE WHEN proname IN (SELECT fn FROM a_ctx_ok)
            THEN pass(format('A2 %s in a tenant context (%s)', f, (SELECT reason FROM a_ctx_ok WHERE fn = proname)))
            ELSE is(left(outcome, 5), '42501', format('A2 %s works across tenants: refused in A''s context (got %s)',
                                                      f, pg_temp.a_short(outcome))) END
  FROM a2x ORDER BY f::text;
SELECT ok(EXISTS (SELECT 1 FROM a_funcs f WHERE f.proname = o.fn),
          format('A2 context-free list: %s exists', o.fn))
  FROM a_ctx_ok o ORDER BY o.fn;

-- ---------------------------------------------------------------------------
-- A3: an admin login without a context: the same calls work
-- ---------------------------------------------------------------------------
CREATE TEMP TABLE a3 (f regprocedure, proname name, outcome text);
GRANT ALL ON a3 TO PUBLIC;
SET ROLE qx_tap_aa_admin;
INSERT INTO a3 SELECT f, proname, pg_temp.a_outcome_raw(pg_temp.a_call(f, 'b'), '') FROM a_funcs;
RESET ROLE;
SELECT CASE WHEN proname IN (SELECT fn FROM a_needs_context)
            THEN is(left(outcome, 5), '42501', format('A3 %s needs a context, also for an admin: 42501', f))
            WHEN proname IN (SELECT fn FROM a_needs_citus) AND NOT :'has_citus'::boolean
            THEN is(left(outcome, 5), '55000', format('A3 %s needs Citus: 55000 without it (got %s)',
                                                      f, pg_temp.a_short(outcome)))
            ELSE is(left(outcome, 3), 'ok ', format('A3 %s for B by quota_ext_admin without a context works (got %s)',
                                                    f, pg_temp.a_short(outcome))) END
  FROM a3 ORDER BY f::text;
SELECT ok(EXISTS (SELECT 1 FROM a_funcs f WHERE f.proname = n.fn),
          format('A3 needs-context list: %s exists (%s)', n.fn, n.reason))
  FROM a_needs_context n ORDER BY n.fn;
SELECT ok(EXISTS (SELECT 1 FROM a_funcs f WHERE f.proname = n.fn),
          format('A3 needs-Citus list: %s exists (%s)', n.fn, n.reason))
  FROM a_needs_citus n ORDER BY n.fn;

-- ---------------------------------------------------------------------------
-- A4: what the checks rest on
-- ---------------------------------------------------------------------------
SELECT is_empty($$SELECT p.oid::regprocedure FROM pg_proc p
                   WHERE p.pronamespace = 'quota_ext'::regnamespace AND p.proname LIKE '\_%'
                     AND (has_function_privilege('quota_ext_app', p.oid, 'EXECUTE')
                          OR has_function_privilege('quota_ext_admin', p.oid, 'EXECUTE'))$$,
                'no internal function (_check_tenant_access, _admin_only, ...) is executable by a role');
SELECT ok(NOT has_function_privilege('quota_ext_app', 'quota_ext.set_tenant(bigint)', 'EXECUTE'),
          'quota_ext_app cannot set_tenant()');
SELECT is((SELECT count(*) FROM pg_roles WHERE rolname IN ('quota_ext_app', 'quota_ext_admin')
             AND (rolsuper OR rolbypassrls)), 0::bigint, 'neither role is superuser or bypasses RLS');
-- the role that is judged: the session's (after SET ROLE), also inside
-- the extension's SECURITY DEFINER functions ...
SELECT ok((SELECT prosecdef FROM pg_proc WHERE oid = 'quota_ext.tenant_summary(bigint)'::regprocedure),
          'tenant_summary is SECURITY DEFINER (so the check runs as its superuser owner)');
SET ROLE qx_tap_aa_admin;
SELECT lives_ok(format('SELECT quota_ext.tenant_summary(%s)', :tb), 'SET ROLE to an admin login: tenant_summary(B) works');
SET ROLE qx_tap_aa_app;
SELECT throws_ok(format('SELECT quota_ext.tenant_summary(%s)', :tb), '42501', NULL,
                 'SET ROLE from there to an app login: refused again');
RESET ROLE;
-- ... and through a wrapper of the deployment, SECURITY DEFINER and owned
-- by an admin, that an app login may call: the session is still the app's
CREATE FUNCTION public.aa_wrapper_summary(t bigint) RETURNS jsonb
	LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
	AS $$ SELECT quota_ext.tenant_summary(t) $$;
CREATE FUNCTION public.aa_wrapper_consume(t bigint) RETURNS boolean
	LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
	AS $$ SELECT allowed FROM quota_ext.quota_consume(t, 'xb-marker-model') $$;
-- the way a wrapper acts for one tenant: set_tenant() (granted to its owner)
CREATE FUNCTION public.aa_wrapper_for(t bigint) RETURNS jsonb
	LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
	AS $$ BEGIN PERFORM quota_ext.set_tenant(t); RETURN quota_ext.tenant_summary(t) -> 'tenant'; END $$;
CREATE FUNCTION public.aa_wrapper_rollup() RETURNS bigint
	LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
	AS $$ SELECT quota_ext.usage_rollup() $$;
CREATE FUNCTION public.aa_wrapper_sweep() RETURNS integer
	LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
	AS $$ SELECT quota_ext.quota_expire_reservations() $$;
ALTER FUNCTION public.aa_wrapper_rollup() OWNER TO qx_tap_aa_admin;
ALTER FUNCTION public.aa_wrapper_sweep() OWNER TO qx_tap_aa_admin;
GRANT EXECUTE ON FUNCTION public.aa_wrapper_rollup(), public.aa_wrapper_sweep() TO qx_tap_aa_app;
ALTER FUNCTION public.aa_wrapper_summary(bigint) OWNER TO qx_tap_aa_admin;
ALTER FUNCTION public.aa_wrapper_consume(bigint) OWNER TO qx_tap_aa_admin;
ALTER FUNCTION public.aa_wrapper_for(bigint) OWNER TO qx_tap_aa_admin;
GRANT EXECUTE ON FUNCTION public.aa_wrapper_summary(bigint), public.aa_wrapper_consume(bigint),
	public.aa_wrapper_for(bigint) TO qx_tap_aa_app;
SET ROLE qx_tap_aa_app;
SELECT throws_ok(format('SELECT public.aa_wrapper_summary(%s)', :tb), '42501', NULL,
                 'an admin-owned SECURITY DEFINER wrapper does not make an app login an admin (PL/pgSQL function)');
SELECT throws_ok(format('SELECT public.aa_wrapper_consume(%s)', :tb), '42501', NULL,
                 'an admin-owned SECURITY DEFINER wrapper does not make an app login an admin (C function)');
SELECT is(public.aa_wrapper_for(:tb) ->> 'name', 'xb-marker-tenant',
          'a wrapper that calls set_tenant() acts for that tenant');
SELECT quota_ext.clear_tenant() IS NULL AS ok \gset
SELECT throws_ok('SELECT public.aa_wrapper_rollup()', '42501', 'usage_rollup needs quota_ext_admin and no tenant context',
                 'an admin-owned wrapper does not make an app login an admin (cross-tenant PL/pgSQL function)');
SELECT throws_ok('SELECT public.aa_wrapper_sweep()', '42501', 'quota_expire_reservations needs quota_ext_admin and no tenant context',
                 'an admin-owned wrapper does not make an app login an admin (cross-tenant C function)');
SELECT quota_ext.clear_tenant() IS NULL AS ok \gset
RESET ROLE;
-- ... and the other way round: a less trusted role's SECURITY DEFINER
-- function, called by an admin, is judged as its owner in the C functions
CREATE FUNCTION public.aa_app_owned_consume(t bigint) RETURNS boolean
	LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
	AS $$ SELECT allowed FROM quota_ext.quota_consume(t, 'xb-marker-model') $$;
ALTER FUNCTION public.aa_app_owned_consume(bigint) OWNER TO qx_tap_aa_app;
SET ROLE qx_tap_aa_admin;
SELECT throws_ok(format('SELECT public.aa_app_owned_consume(%s)', :tb), '42501', NULL,
                 'an app-owned SECURITY DEFINER function called by an admin does not borrow the admin''s rights');
RESET ROLE;
-- ... and code of an object's owner run by a security-restricted operation
-- (here REFRESH MATERIALIZED VIEW, by a superuser session, of a view owned
-- by an app login) is not the session's code: no admin rights in it
CREATE MATERIALIZED VIEW public.aa_mv AS SELECT quota_ext.tenant_summary(:tb) AS s WITH NO DATA;
ALTER MATERIALIZED VIEW public.aa_mv OWNER TO qx_tap_aa_app;
SELECT throws_ok('REFRESH MATERIALIZED VIEW public.aa_mv', '42501', 'no tenant context in this transaction',
                 'REFRESH of an app-owned materialized view by a superuser: the view''s code gets no admin rights');
-- finding 10: a key's transaction cannot charge another key's rules
SET ROLE qx_tap_aa_app;
SELECT quota_ext.authenticate(:'ka') IS NOT NULL AS ok \gset
SELECT throws_ok(format('SELECT * FROM quota_ext.rate_limit_apply(%s, key_id => %s)', :ta, :kida::bigint + 1000000),
                 '42501', 'an API key''s transaction cannot act as another user, key or role',
                 'rate_limit_apply for another key from a key''s transaction: 42501, as quota_consume');
SELECT lives_ok(format('SELECT * FROM quota_ext.rate_limit_apply(%s, key_id => %s)', :ta, :kida),
                'rate_limit_apply naming its own key works');
RESET ROLE;
SELECT quota_ext.clear_tenant() IS NULL AS ok \gset
-- the platform's share of a model's revenue is the platform's decision: an
-- admin login in the owner's own context cannot set it (A2 names another
-- tenant, which any tenant check refuses; 072 removes _admin_only here)
SET ROLE qx_tap_aa_admin;
SELECT quota_ext.set_tenant(:ta) IS NULL AS ok \gset
SELECT throws_ok(format($$SELECT quota_ext.model_revenue_share_set(%s, 'aa-a-own', 5)$$, :ta), '42501', NULL,
                 'model_revenue_share_set in the owner''s own context: 42501 (admin without a context only)');
SELECT quota_ext.clear_tenant() IS NULL AS ok \gset
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;
