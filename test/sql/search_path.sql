--
-- search_path attack: hostile operators, functions and look-alike tables in
-- a schema ahead of pg_catalog (and in pg_temp) change nothing.
-- Issue 2: "a search_path attack (hostile = operator and functions in a
-- schema earlier in the path) changes nothing".
-- Checklist: B6 (search_path attack), A1/B1 (qualified SQL, pinned
-- search_path), I6.
--
-- Every hostile object bumps the sequence evil.calls and then raises
-- 'evil called', so it is caught even if some code swallowed the error.
-- Results under the hostile path are kept in psql variables and compared
-- after RESET search_path (a comparison typed under the hostile path would
-- itself call the hostile "=").
--
\set err '\\echo SQLSTATE :LAST_ERROR_SQLSTATE'
\set SHOW_CONTEXT never
SET client_min_messages = warning;
CREATE ROLE qx_sp_app LOGIN IN ROLE quota_ext_app;
CREATE ROLE qx_sp_admin LOGIN IN ROLE quota_ext_admin;
-- an attacker needs somewhere to create objects: give both roles a schema
SELECT current_database() AS db \gset
GRANT CREATE ON DATABASE :"db" TO qx_sp_app, qx_sp_admin;
SELECT quota_ext.tenant_create('sp-a') AS ta \gset
SELECT quota_ext.tenant_create('sp-b') AS tb \gset
SELECT user_id AS ua, api_key AS ka FROM quota_ext.user_create(:ta, 'a@a.example', 'admin') \gset
SELECT api_key AS kb FROM quota_ext.user_create(:tb, 'b@b.example', 'member') \gset
SELECT quota_ext.model_register('sp-model', owner_tenant_id => :ta) AS ma \gset
--
-- the hostile schema, made by the application role
--
\c - qx_sp_app
SET client_min_messages = warning;
CREATE SCHEMA evil;
GRANT USAGE ON SCHEMA evil TO PUBLIC;
CREATE SEQUENCE evil.calls;
GRANT USAGE, SELECT, UPDATE ON SEQUENCE evil.calls TO PUBLIC;
DO $evil$
DECLARE
	body text := $b$ BEGIN PERFORM pg_catalog.nextval('evil.calls'); RAISE EXCEPTION 'evil called: %s'; END $b$;
	op record;
	f record;
	t text;
BEGIN
	-- operators on the types the extension compares
	FOR op IN SELECT * FROM (VALUES
			('=', 'bigint', 'bigint'), ('<>', 'bigint', 'bigint'), ('<', 'bigint', 'bigint'), ('>', 'bigint', 'bigint'),
			('<=', 'bigint', 'bigint'), ('>=', 'bigint', 'bigint'), ('+', 'bigint', 'bigint'), ('-', 'bigint', 'bigint'),
			('=', 'text', 'text'), ('<>', 'text', 'text'), ('~', 'text', 'text'), ('!~', 'text', 'text'), ('||', 'text', 'text'),
			('=', 'timestamptz', 'timestamptz'), ('<', 'timestamptz', 'timestamptz'), ('>', 'timestamptz', 'timestamptz'),
			('<=', 'timestamptz', 'timestamptz'), ('-', 'timestamptz', 'interval'), ('+', 'timestamptz', 'interval'),
			('=', 'bytea', 'bytea'), ('=', 'jsonb', 'jsonb'), ('<', 'interval', 'interval'), ('=', 'name', 'name'),
			('=', 'integer', 'integer'), ('=', 'oid', 'oid')) AS v(o, l, r) LOOP
		EXECUTE format('CREATE FUNCTION evil.%I(%s, %s) RETURNS %s LANGUAGE plpgsql AS %L',
		               'op_' || md5(op.o || op.l || op.r), op.l, op.r,
		               CASE WHEN op.o IN ('+', '-') THEN op.l WHEN op.o = '||' THEN 'text' ELSE 'boolean' END,
		               format(body, op.o || ' (' || op.l || ', ' || op.r || ')'));
		EXECUTE format('CREATE OPERATOR evil.%s (LEFTARG = %s, RIGHTARG = %s, FUNCTION = evil.%I)',
		               op.o, op.l, op.r, 'op_' || md5(op.o || op.l || op.r));
	END LOOP;
	-- functions the extension (or code written carelessly) might call unqualified
	FOR f IN SELECT * FROM (VALUES
			('now', '', 'timestamptz'), ('lower', 'text', 'text'), ('upper', 'text', 'text'), ('btrim', 'text', 'text'),
			('length', 'text', 'integer'), ('length', 'bytea', 'integer'), ('left', 'text, integer', 'text'),
			('format', 'text', 'text'), ('jsonb_typeof', 'jsonb', 'text'), ('nextval', 'regclass', 'bigint'),
			('least', 'timestamptz, timestamptz', 'timestamptz'), ('coalesce_', 'text', 'text'),
			('make_interval', 'integer, integer, integer, integer, integer, integer, double precision', 'interval'),
			('sha256', 'bytea', 'bytea'), ('set_config', 'text, text, boolean', 'text'),
			('current_setting', 'text', 'text'), ('current_tenant_id', '', 'bigint'),
			('timingsafe_bcmp', 'bytea, bytea', 'integer'), ('to_jsonb', 'text', 'jsonb'),
			('pg_timezone_names', '', 'SETOF text')) AS v(n, a, r) LOOP
		EXECUTE format('CREATE FUNCTION evil.%I(%s) RETURNS %s LANGUAGE plpgsql AS %L', f.n, f.a, f.r,
		               format(body, f.n || '(' || f.a || ')'));
	END LOOP;
	EXECUTE format('CREATE FUNCTION evil.boom() RETURNS bigint LANGUAGE plpgsql AS %L', format(body, 'a look-alike table'));
	-- look-alike tables (views that raise when read), in evil and in pg_temp
	FOREACH t IN ARRAY ARRAY['tenants', 'users', 'api_keys', 'models', 'tiers', 'audit_log', 'pg_timezone_names'] LOOP
		EXECUTE format('CREATE VIEW evil.%I AS SELECT evil.boom() AS tenant_id', t);
		EXECUTE format('CREATE TEMP VIEW %I AS SELECT evil.boom() AS tenant_id', t);
	END LOOP;
END
$evil$;
SELECT count(*) > 40 AS hostile_objects FROM pg_proc WHERE pronamespace = 'evil'::regnamespace;
-- the trap is live: unqualified SQL under the hostile path calls it
SET search_path = evil, pg_catalog, public;
SELECT 1::bigint = 1::bigint;
SELECT now();
SELECT * FROM tenants;
SET search_path = pg_temp, evil, pg_catalog;
SELECT * FROM api_keys;
RESET search_path;
SELECT pg_catalog.setval('evil.calls', 1, false) AS calls_reset;
--
-- quota_ext_app under the hostile path, in a fresh session (so the
-- extension prepares its plans under it)
--
\c - qx_sp_app
SET client_min_messages = warning;
SET search_path = evil, pg_catalog, public;
BEGIN;
SELECT tenant_id AS h1_tenant, user_id AS h1_user, role AS h1_role FROM quota_ext.authenticate(:'ka') \gset
SELECT quota_ext.current_tenant_id() AS h1_ctx \gset
SELECT tenant_id AS h1_cc_tenant, user_id AS h1_cc_user, role AS h1_cc_role FROM quota_ext.current_context() \gset
SELECT pg_catalog.string_agg(name, ',') AS h1_names FROM quota_ext.tenants \gset
SELECT pg_catalog.count(*) AS h1_users FROM quota_ext.users \gset
SELECT pg_catalog.count(*) AS h1_keys FROM quota_ext.api_keys \gset
SELECT pg_catalog.string_agg(name, ',') AS h1_models FROM quota_ext.models WHERE pg_catalog.starts_with(name, 'sp-') \gset
SELECT quota_ext.clear_tenant();
SELECT quota_ext.current_tenant_id() IS NULL AS h1_cleared \gset
SELECT tenant_id AS h1_tenant_b FROM quota_ext.authenticate(:'kb') \gset
COMMIT;
-- a refused key gives the usual error
SELECT * FROM quota_ext.authenticate(pg_catalog.concat(:'ka', 'x'));
:err
-- the same with pg_temp first
SET search_path = pg_temp, evil, pg_catalog;
BEGIN;
SELECT tenant_id AS h2_tenant, user_id AS h2_user, role AS h2_role FROM quota_ext.authenticate(:'ka') \gset
SELECT pg_catalog.string_agg(name, ',') AS h2_names FROM quota_ext.tenants \gset
COMMIT;
RESET search_path;
-- the same calls with the normal path, in the same session
BEGIN;
SELECT tenant_id AS n_tenant, user_id AS n_user, role AS n_role FROM quota_ext.authenticate(:'ka') \gset
SELECT string_agg(name, ',') AS n_names FROM quota_ext.tenants \gset
COMMIT;
SELECT :h1_tenant = :ta AND :h1_user = :ua AND :'h1_role' = 'admin' AS authenticate_same,
       :h1_tenant = :n_tenant AND :h1_user = :n_user AND :'h1_role' = :'n_role' AS same_as_normal_path,
       :h2_tenant = :n_tenant AND :h2_user = :n_user AND :'h2_role' = :'n_role' AS same_with_pg_temp_first,
       :h1_ctx = :ta AS current_tenant_id_same,
       :h1_cc_tenant = :ta AND :h1_cc_user = :ua AND :'h1_cc_role' = 'admin' AS current_context_same,
       :'h1_cleared'::boolean AS clear_tenant_works,
       :h1_tenant_b = :tb AS second_key_same;
SELECT :'h1_names' AS tenants_seen, :'h2_names' AS tenants_seen_pg_temp_first, :'n_names' AS tenants_seen_normally,
       :h1_users AS users_seen, :h1_keys AS keys_seen, :'h1_models' AS models_seen;
SELECT pg_catalog.nextval('evil.calls') = 1 AS evil_never_called;
SELECT pg_catalog.setval('evil.calls', 1, false) AS calls_reset;
--
-- quota_ext_admin under the hostile path: every admin function
--
\c - qx_sp_admin
SET client_min_messages = warning;
CREATE TEMP VIEW tenants AS SELECT evil.boom() AS tenant_id;
CREATE TEMP VIEW api_keys AS SELECT evil.boom() AS tenant_id;
CREATE TEMP VIEW users AS SELECT evil.boom() AS tenant_id;
SET search_path = evil, pg_catalog, public;
BEGIN;
SELECT quota_ext.tenant_create('sp-c', 'pro', 'Europe/Berlin', '{"k": "v"}') AS tc \gset
SELECT quota_ext.tenant_update(:tc, name => 'sp-c2', tier => 'premium', timezone => 'Asia/Tokyo', features => '{"f": true}');
SELECT user_id AS uc, api_key AS kc FROM quota_ext.user_create(:tc, 'Carol@C.example', 'billing-ops') \gset
SELECT quota_ext.user_update(:tc, :uc, role => 'viewer');
SELECT key_id AS kc2_id, api_key AS kc2 FROM quota_ext.api_key_create(:tc, :uc, 'ci', '2999-01-01') \gset
SELECT new_key_id AS kc3_id, api_key AS kc3 FROM quota_ext.api_key_rotate(:tc, :kc2_id, '1 hour') \gset
SELECT quota_ext.model_register('sp-global-model', 'acme', description => 'd') AS mg \gset
SELECT quota_ext.model_register('sp-c-model', owner_tenant_id => :tc) AS mc \gset
SELECT quota_ext.set_tenant(:tc);
SELECT quota_ext.current_tenant_id() AS h3_ctx \gset
SELECT pg_catalog.string_agg(name, ',') AS h3_names FROM quota_ext.tenants \gset
SELECT quota_ext.clear_tenant();
SELECT tenant_id AS h3_auth FROM quota_ext.authenticate(:'kc3') \gset
SELECT quota_ext.clear_tenant();
SELECT quota_ext.api_key_revoke(:tc, :kc2_id);
SELECT quota_ext.tenant_suspend(:tc);
SELECT quota_ext.tenant_activate(:tc);
COMMIT;
-- errors come out the same too
SELECT quota_ext.tenant_create('sp-c2');
:err
SELECT quota_ext.tenant_create('sp-x', 'gold');
:err
SELECT quota_ext.tenant_create('sp-x', 'free', 'Mars/Base');
:err
SET search_path = pg_temp, evil, pg_catalog;
BEGIN;
SELECT quota_ext.tenant_create('sp-d', 'free', 'America/Chicago') AS td \gset
SELECT quota_ext.user_create(:td, 'dan@d.example', 'member') IS NOT NULL AS created;
SELECT quota_ext.tenant_close(:td);
COMMIT;
RESET search_path;
-- what the hostile path produced, read with the normal path
SELECT name, tier, status, timezone, settings, features FROM quota_ext.tenants WHERE tenant_id IN (:tc, :td) ORDER BY name;
SELECT email, role, status FROM quota_ext.users WHERE tenant_id IN (:tc, :td) ORDER BY email;
SELECT key_id = :kc2_id AS old_key, key_id = :kc3_id AS new_key, name, expires_at = '2999-01-01' AS kept_expiry,
       revoked_at IS NOT NULL AS revoked, rotated_to = :kc3_id AS rotated
  FROM quota_ext.api_keys WHERE tenant_id = :tc AND name = 'ci' ORDER BY key_id;
SELECT name, owner_tenant_id = :tc AS owned_by_c, provider, description FROM quota_ext.models
 WHERE model_id IN (:mg, :mc) ORDER BY name;
SELECT action, object_type FROM quota_ext.audit_log WHERE tenant_id IN (:tc, :td) ORDER BY audit_id;
SELECT :h3_ctx = :tc AS set_tenant_same, :'h3_names' AS seen_after_set_tenant, :h3_auth = :tc AS rotated_key_authenticates;
SELECT pg_catalog.nextval('evil.calls') = 1 AS evil_never_called;
-- cleanup
\c - postgres
SET client_min_messages = warning;
DROP SCHEMA evil CASCADE;
REVOKE CREATE ON DATABASE :"db" FROM qx_sp_app, qx_sp_admin;
DROP ROLE qx_sp_app;
DROP ROLE qx_sp_admin;
