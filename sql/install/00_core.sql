-- quota_ext install script, assembled from sql/install/*.sql (one file per
-- subsystem, like src/).  Rules for every part (see doc/design.md):
--   * fixed schema quota_ext; every name schema-qualified; no replacing or conditional
--     CREATE (CVE-2022-2625); SECURITY DEFINER functions pin
--     search_path = pg_catalog, pg_temp;
--   * per-tenant tables lead every key with tenant_id, have FORCE ROW LEVEL
--     SECURITY and no triggers; global catalogs are tiers and models;
--   * every function is revoked from PUBLIC and granted to quota_ext_app
--     (hot path) or quota_ext_admin (management);
--   * every table and sequence is registered with pg_extension_config_dump
--     (99_finish.sql, one statement for all of them).

\echo Use "CREATE EXTENSION quota_ext" to load this file. \quit

-- ---------------------------------------------------------------------------
-- 00 core: install-time checks, roles, the tenant context
-- ---------------------------------------------------------------------------

-- Refuse a schema prepared by someone else (CVE-2020-14350 class): CREATE
-- EXTENSION reuses an existing schema named quota_ext, so it must be ours
-- (owned by the installing superuser) and empty.
DO $check$
DECLARE
	nsp oid := (SELECT n.oid FROM pg_catalog.pg_namespace n
	             WHERE n.nspname OPERATOR(pg_catalog.=) 'quota_ext');
BEGIN
	IF (SELECT n.nspowner FROM pg_catalog.pg_namespace n
	     WHERE n.oid OPERATOR(pg_catalog.=) nsp)
	   OPERATOR(pg_catalog.<>) (SELECT r.oid FROM pg_catalog.pg_roles r
	                             WHERE r.rolname OPERATOR(pg_catalog.=) current_user) THEN
		RAISE EXCEPTION 'schema "quota_ext" exists and is not owned by the installing role'
			USING ERRCODE = 'insufficient_privilege',
			      HINT = 'Drop the schema, or let a superuser own it, before CREATE EXTENSION quota_ext.';
	END IF;
	IF EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.relnamespace OPERATOR(pg_catalog.=) nsp)
	   OR EXISTS (SELECT 1 FROM pg_catalog.pg_proc p WHERE p.pronamespace OPERATOR(pg_catalog.=) nsp)
	   OR EXISTS (SELECT 1 FROM pg_catalog.pg_type t WHERE t.typnamespace OPERATOR(pg_catalog.=) nsp)
	   OR EXISTS (SELECT 1 FROM pg_catalog.pg_operator o WHERE o.oprnamespace OPERATOR(pg_catalog.=) nsp)
	THEN
		RAISE EXCEPTION 'schema "quota_ext" already contains objects'
			USING ERRCODE = 'duplicate_object',
			      HINT = 'CREATE EXTENSION quota_ext needs a new, empty schema.';
	END IF;
END
$check$;

-- The two roles are cluster-wide, so a second database reuses them.  A
-- pre-existing role is accepted only without dangerous attributes.
DO $roles$
DECLARE
	r text;
BEGIN
	FOREACH r IN ARRAY ARRAY['quota_ext_admin', 'quota_ext_app'] LOOP
		IF (SELECT pg_catalog.count(*) FROM pg_catalog.pg_roles a
		     WHERE a.rolname OPERATOR(pg_catalog.=) r) OPERATOR(pg_catalog.=) 0 THEN
			EXECUTE pg_catalog.format('CREATE ROLE %I NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE', r);
		ELSIF EXISTS (SELECT 1 FROM pg_catalog.pg_roles a
		               WHERE a.rolname OPERATOR(pg_catalog.=) r
		                 AND (a.rolsuper OR a.rolbypassrls)) THEN
			RAISE EXCEPTION 'role "%" exists with SUPERUSER or BYPASSRLS', r
				USING ERRCODE = 'insufficient_privilege',
				      HINT = 'quota_ext_admin and quota_ext_app must not bypass row-level security.';
		END IF;
	END LOOP;
END
$roles$;

-- An admin can do everything an app can.
GRANT quota_ext_app TO quota_ext_admin;

GRANT USAGE ON SCHEMA quota_ext TO quota_ext_app, quota_ext_admin;

-- Tenant context (src/context.c).  PARALLEL RESTRICTED: workers do not see
-- backend memory.
CREATE FUNCTION quota_ext.current_tenant_id() RETURNS bigint
	LANGUAGE C STABLE PARALLEL RESTRICTED AS 'MODULE_PATHNAME', 'quota_ext_current_tenant_id';
COMMENT ON FUNCTION quota_ext.current_tenant_id() IS
	'The tenant of the current transaction (set by authenticate or set_tenant), or NULL';

CREATE FUNCTION quota_ext.current_context(
	OUT tenant_id bigint, OUT user_id bigint, OUT key_id bigint, OUT role text)
	LANGUAGE C STABLE PARALLEL RESTRICTED AS 'MODULE_PATHNAME', 'quota_ext_current_context';
COMMENT ON FUNCTION quota_ext.current_context() IS
	'The whole tenant context of the current transaction; all NULL without one';

CREATE FUNCTION quota_ext.set_tenant(tenant_id bigint) RETURNS void
	LANGUAGE C VOLATILE PARALLEL RESTRICTED AS 'MODULE_PATHNAME', 'quota_ext_set_tenant';
COMMENT ON FUNCTION quota_ext.set_tenant(bigint) IS
	'Privileged (quota_ext_admin): make a tenant the context of this transaction';

CREATE FUNCTION quota_ext.clear_tenant() RETURNS void
	LANGUAGE C VOLATILE PARALLEL RESTRICTED AS 'MODULE_PATHNAME', 'quota_ext_clear_tenant';
COMMENT ON FUNCTION quota_ext.clear_tenant() IS
	'Drop the tenant context before the transaction ends';

CREATE FUNCTION quota_ext._check_tenant_access(tenant_id bigint) RETURNS void
	LANGUAGE C VOLATILE PARALLEL RESTRICTED AS 'MODULE_PATHNAME', 'quota_ext_check_tenant_access';
COMMENT ON FUNCTION quota_ext._check_tenant_access(bigint) IS
	'Internal: raise unless the caller may act on this tenant';

-- Internal: refuse a cross-tenant operation to a caller that is not
-- quota_ext_admin or has a tenant context (QuotaCheckAdmin).  Like
-- _check_tenant_access it judges the session's role as well as the current
-- one, so it means the same inside SECURITY DEFINER functions.
CREATE FUNCTION quota_ext._admin_only(what text) RETURNS void
	LANGUAGE C VOLATILE PARALLEL RESTRICTED AS 'MODULE_PATHNAME', 'quota_ext_admin_only';
COMMENT ON FUNCTION quota_ext._admin_only(text) IS
	'Internal: raise unless the caller is quota_ext_admin without a tenant context';


-- Internal: secure a per-tenant table, the one place the pattern is written
-- (every section calls it for its tables, _usage_partition_secure for each
-- new ledger partition).  ENABLE and FORCE row-level security (even the
-- owner is filtered unless superuser); tenant_isolation: quota_ext_app
-- sees and could touch only the current tenant's rows (no context = no
-- rows); admin_read: quota_ext_admin reads every tenant without a context
-- and one tenant after set_tenant(); SELECT for quota_ext_app.  Writes go
-- through functions only: no role gets INSERT/UPDATE/DELETE/TRUNCATE.
--   tenant_column  the column naming the owning tenant;
--   shared_rows    rows whose tenant_column is NULL are global and every
--                  tenant sees them (models, prices); then tenant_isolation
--                  has no WITH CHECK of its own (its USING checks writes);
--   app_select     false: the caller grants (a column list: api_keys) or
--                  nobody reads the table directly (partitions, read
--                  through their parent).
-- Not SECURITY DEFINER: it runs as the owner, at install or inside a
-- SECURITY DEFINER function; EXECUTE is the owner's only (99_finish.sql).
CREATE FUNCTION quota_ext._secure_tenant_table(tbl regclass, tenant_column name DEFAULT 'tenant_id',
                                               shared_rows boolean DEFAULT false,
                                               app_select boolean DEFAULT true) RETURNS void
	LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	own text := format('%I OPERATOR(pg_catalog.=) quota_ext.current_tenant_id()', tenant_column);
	global_or text := CASE WHEN shared_rows THEN format('%I IS NULL OR ', tenant_column) ELSE '' END;
BEGIN
	EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', tbl);
	EXECUTE format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', tbl);
	EXECUTE format('CREATE POLICY tenant_isolation ON %s TO quota_ext_app USING (%s%s)%s',
	               tbl, global_or, own,
	               CASE WHEN shared_rows THEN '' ELSE format(' WITH CHECK (%s)', own) END);
	EXECUTE format('CREATE POLICY admin_read ON %s FOR SELECT TO quota_ext_admin '
	               'USING (quota_ext.current_tenant_id() IS NULL OR %s%s)', tbl, global_or, own);
	IF app_select THEN
		EXECUTE format('GRANT SELECT ON %s TO quota_ext_app', tbl);
	END IF;
END
$$;
COMMENT ON FUNCTION quota_ext._secure_tenant_table(regclass, name, boolean, boolean) IS
	'Internal: row-level security (ENABLE, FORCE, tenant_isolation, admin_read) and SELECT for quota_ext_app on a per-tenant table';
REVOKE ALL ON FUNCTION quota_ext._secure_tenant_table(regclass, name, boolean, boolean) FROM PUBLIC;
