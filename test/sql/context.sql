--
-- The tenant context: set only by authenticate() (or set_tenant() for
-- admins), held in backend memory, cleared at transaction end.
-- Issue 2: "context cannot be spoofed by SET/set_config/RESET/DISCARD",
-- "context cleared at COMMIT and ROLLBACK".
-- Checklist: I4 (context integrity, pooled transactions never mix
-- tenants), I8 (plan reuse, CVE-2023-2455 / CVE-2024-10976 pattern),
-- I1 (COPY), L10 (parallel plans), C3 (spoofable GUCs).
--
-- Tenants show up by name: :who prints the name of the context's tenant and
-- every tenant the role can see.  Expected errors are followed by :err,
-- which prints their SQLSTATE.
--
\set err '\\echo SQLSTATE :LAST_ERROR_SQLSTATE'
\set SHOW_CONTEXT never
\set who 'SELECT coalesce((SELECT name FROM quota_ext.tenants WHERE tenant_id = quota_ext.current_tenant_id()), ''(none)'') AS context, coalesce((SELECT string_agg(name, '','' ORDER BY name) FROM quota_ext.tenants), ''(none)'') AS visible;'
SET client_min_messages = warning;
-- fixtures, as the superuser
CREATE ROLE qx_ctx_app LOGIN IN ROLE quota_ext_app;
CREATE ROLE qx_ctx_owner NOLOGIN IN ROLE quota_ext_app;
SELECT quota_ext.tenant_create('ctx-a') AS ta \gset
SELECT quota_ext.tenant_create('ctx-b') AS tb \gset
SELECT api_key AS ka FROM quota_ext.user_create(:ta, 'a@a.example', 'admin') \gset
SELECT api_key AS kb FROM quota_ext.user_create(:tb, 'b@b.example', 'member') \gset
-- a SECURITY DEFINER function owned by a non-superuser app role, as an
-- application might install (I8: plans cached inside it must not leak)
CREATE FUNCTION public.ctx_list_tenants() RETURNS SETOF text
	LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
	AS $$ BEGIN RETURN QUERY SELECT name FROM quota_ext.tenants ORDER BY name; END $$;
ALTER FUNCTION public.ctx_list_tenants() OWNER TO qx_ctx_owner;
GRANT EXECUTE ON FUNCTION public.ctx_list_tenants() TO qx_ctx_app;
\c - qx_ctx_app
SET client_min_messages = warning;
-- no context: nothing is visible (no context means deny)
:who
--
-- spoofing: SET and set_config cannot make a context
--
SET quota_ext.tenant_id = 1;
:err
SELECT set_config('quota_ext.tenant_id', :'tb', false);
:err
SELECT set_config('quota_ext.current_tenant', :'tb', true);
:err
SET app.tenant_id = :tb;
SET app.current_tenant = :tb;
SELECT set_config('app.tenant', :'tb', false) = :'tb' AS placeholder_set;
SET quota.tenant_id = :tb;
SELECT current_setting('app.tenant_id') = :'tb' AS placeholder_set;
:who
ALTER ROLE CURRENT_USER SET quota_ext.tenant_id = 1;
:err
ALTER ROLE CURRENT_USER SET app.tenant_id = 1;
:err
-- a per-role default set by a superuser is only a string too
\c - postgres
ALTER ROLE qx_ctx_app SET quota_ext.tenant_id = 1;
:err
ALTER ROLE qx_ctx_app SET app.tenant_id = :tb;
\c - qx_ctx_app
SET client_min_messages = warning;
SELECT current_setting('app.tenant_id') = :'tb' AS placeholder_set;
:who
-- the superuser-only setting of the extension
SET quota_ext.key_touch_interval = 0;
:err
--
-- inside a transaction the context cannot be changed except by authenticate
--
BEGIN;
SELECT tenant_id = :ta AS is_a FROM quota_ext.authenticate(:'ka');
:who
SET app.tenant_id = :tb;
SELECT set_config('app.tenant_id', :'tb', true) = :'tb' AS placeholder_set;
SET LOCAL app.tenant = :tb;
RESET ALL;
SET SESSION AUTHORIZATION DEFAULT;
RESET ROLE;
:who
SET quota_ext.tenant_id = :tb;
:err
ROLLBACK;
:who
-- DISCARD ALL cannot run inside a transaction (the context could not be
-- carried past it anyway)
BEGIN;
SELECT tenant_id = :ta AS is_a FROM quota_ext.authenticate(:'ka');
DISCARD ALL;
:err
ROLLBACK;
SELECT tenant_id = :ta AS is_a FROM quota_ext.authenticate(:'ka');
DISCARD ALL;
:who
--
-- lifetime: one transaction
--
-- autocommit: the statement's own transaction ends, and so does the context
SELECT tenant_id = :ta AS is_a FROM quota_ext.authenticate(:'ka');
:who
-- several statements in one query string share one implicit transaction
SELECT tenant_id = :ta AS is_a FROM quota_ext.authenticate(:'ka') \; SELECT name AS same_query FROM quota_ext.tenants;
:who
-- COMMIT
BEGIN;
SELECT tenant_id = :ta AS is_a FROM quota_ext.authenticate(:'ka');
:who
COMMIT;
:who
-- ROLLBACK
BEGIN;
SELECT tenant_id = :ta AS is_a FROM quota_ext.authenticate(:'ka');
ROLLBACK;
:who
-- an error aborts the transaction; the context goes with it
BEGIN;
SELECT tenant_id = :ta AS is_a FROM quota_ext.authenticate(:'ka');
SELECT 1 / 0;
:err
:who
ROLLBACK;
:who
-- PREPARE TRANSACTION ends the transaction in this session
BEGIN;
SELECT tenant_id = :ta AS is_a FROM quota_ext.authenticate(:'ka');
PREPARE TRANSACTION 'qx_ctx_prepared';
:who
COMMIT PREPARED 'qx_ctx_prepared';
:who
--
-- savepoints
--
-- set inside a savepoint that is rolled back: gone
BEGIN;
SAVEPOINT s1;
SELECT tenant_id = :ta AS is_a FROM quota_ext.authenticate(:'ka');
ROLLBACK TO SAVEPOINT s1;
:who
COMMIT;
-- set before a savepoint that is rolled back: kept
BEGIN;
SELECT tenant_id = :ta AS is_a FROM quota_ext.authenticate(:'ka');
SAVEPOINT s1;
SELECT 1 / 0;
ROLLBACK TO SAVEPOINT s1;
:who
COMMIT;
-- set inside a savepoint that is released, then a later savepoint is rolled
-- back: kept (the released savepoint handed the context to its parent)
BEGIN;
SAVEPOINT s1;
SELECT tenant_id = :ta AS is_a FROM quota_ext.authenticate(:'ka');
RELEASE SAVEPOINT s1;
SAVEPOINT s2;
SELECT 1 / 0;
ROLLBACK TO SAVEPOINT s2;
:who
-- ... but rolling back an enclosing savepoint removes it
SAVEPOINT s3;
SAVEPOINT s4;
SELECT tenant_id = :tb AS is_b FROM quota_ext.authenticate(:'kb');
RELEASE SAVEPOINT s4;
:who
ROLLBACK TO SAVEPOINT s3;
:who
COMMIT;
-- switching tenants inside a savepoint that is rolled back does not fall
-- back to the earlier tenant: it fails closed, with no context
BEGIN;
SELECT tenant_id = :ta AS is_a FROM quota_ext.authenticate(:'ka');
SAVEPOINT s1;
SELECT tenant_id = :tb AS is_b FROM quota_ext.authenticate(:'kb');
:who
ROLLBACK TO SAVEPOINT s1;
:who
COMMIT;
-- PL/pgSQL exception blocks are subtransactions too: psql's
-- ON_ERROR_ROLLBACK and driver "autosave" use the same mechanism
BEGIN;
SELECT set_config('qx.ka', :'ka', true) IS NOT NULL AS ok, set_config('qx.ta', :'ta', true) IS NOT NULL AS ok;
DO $$
BEGIN
	BEGIN
		PERFORM quota_ext.authenticate(current_setting('qx.ka'));
		RAISE EXCEPTION 'give up';
	EXCEPTION WHEN raise_exception THEN
		NULL;
	END;
	RAISE WARNING 'after a failed block: context %', coalesce(quota_ext.current_tenant_id()::text, 'none');
	BEGIN
		PERFORM quota_ext.authenticate(current_setting('qx.ka'));
	EXCEPTION WHEN OTHERS THEN
		NULL;
	END;
	BEGIN
		PERFORM 1 / 0;
	EXCEPTION WHEN division_by_zero THEN
		NULL;
	END;
	RAISE WARNING 'after a good block and a failed one: context is tenant A: %',
		quota_ext.current_tenant_id() = current_setting('qx.ta')::bigint;
END
$$;
ROLLBACK;
\set ON_ERROR_ROLLBACK on
BEGIN;
SELECT tenant_id = :ta AS is_a FROM quota_ext.authenticate(:'ka');
SELECT 1 / 0;
:who
COMMIT;
\set ON_ERROR_ROLLBACK off
--
-- two transactions on one connection (a pooled connection) never mix
--
BEGIN;
SELECT tenant_id = :ta AS is_a FROM quota_ext.authenticate(:'ka');
SELECT name FROM quota_ext.tenants;
COMMIT;
BEGIN;
SELECT tenant_id = :tb AS is_b FROM quota_ext.authenticate(:'kb');
SELECT name FROM quota_ext.tenants;
COMMIT;
BEGIN;
SELECT name FROM quota_ext.tenants;
COMMIT;
-- switching keys inside one transaction replaces the context
BEGIN;
SELECT tenant_id = :ta AS is_a FROM quota_ext.authenticate(:'ka');
SELECT tenant_id = :tb AS is_b FROM quota_ext.authenticate(:'kb');
:who
SELECT quota_ext.clear_tenant();
:who
COMMIT;
--
-- plan reuse: a generic plan made under tenant A shows only B's rows under B
--
SET plan_cache_mode = force_generic_plan;
PREPARE q_names AS SELECT name FROM quota_ext.tenants ORDER BY name;
PREPARE q_by_id(bigint) AS SELECT name FROM quota_ext.tenants WHERE tenant_id = $1;
PREPARE q_users AS SELECT u.email FROM quota_ext.users u JOIN quota_ext.tenants t USING (tenant_id) ORDER BY 1;
BEGIN;
SELECT tenant_id = :ta AS is_a FROM quota_ext.authenticate(:'ka');
EXECUTE q_names;
EXECUTE q_by_id(:ta);
EXECUTE q_users;
SELECT * FROM public.ctx_list_tenants();
COMMIT;
BEGIN;
SELECT tenant_id = :tb AS is_b FROM quota_ext.authenticate(:'kb');
EXECUTE q_names;
EXECUTE q_by_id(:ta);
EXECUTE q_users;
SELECT * FROM public.ctx_list_tenants();
COMMIT;
-- the same, switching inside one transaction
BEGIN;
SELECT tenant_id = :ta AS is_a FROM quota_ext.authenticate(:'ka');
EXECUTE q_names;
SELECT tenant_id = :tb AS is_b FROM quota_ext.authenticate(:'kb');
EXECUTE q_names;
SELECT * FROM public.ctx_list_tenants();
COMMIT;
-- and with no context at all
EXECUTE q_names;
SELECT * FROM public.ctx_list_tenants();
SELECT generic_plans > 0 AS generic FROM pg_prepared_statements WHERE name = 'q_names';
DEALLOCATE ALL;
RESET plan_cache_mode;
--
-- COPY and parallel plans see what SELECT sees
--
BEGIN;
SELECT tenant_id = :ta AS is_a FROM quota_ext.authenticate(:'ka');
COPY (SELECT name FROM quota_ext.tenants) TO STDOUT;
COPY quota_ext.users (email, role) TO STDOUT;
SELECT set_config(CASE WHEN current_setting('server_version_num')::int >= 160000
                  THEN 'debug_parallel_query' ELSE 'force_parallel_mode' END, 'on', true) IS NOT NULL AS parallel_forced;
SET LOCAL parallel_setup_cost = 0;
SET LOCAL parallel_tuple_cost = 0;
SET LOCAL min_parallel_table_scan_size = 0;
SELECT name FROM quota_ext.tenants;
SELECT count(*) AS users_seen FROM quota_ext.users;
COMMIT;
-- cleanup
\c - postgres
DROP FUNCTION public.ctx_list_tenants();
DROP ROLE qx_ctx_app;
DROP ROLE qx_ctx_owner;
