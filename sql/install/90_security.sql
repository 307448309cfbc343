
-- ---------------------------------------------------------------------------
-- 90 security: row-level security, privileges, pg_dump registration
-- ---------------------------------------------------------------------------
-- Kept in one place so a reviewer reads the whole boundary at once.

-- Per-tenant tables: FORCE RLS (even the owner is filtered unless superuser);
-- quota_ext_app sees and could touch only the current tenant's rows (no
-- context = no rows); quota_ext_admin reads every tenant without a context
-- and one tenant after set_tenant().  Writes go through functions only: no
-- role has INSERT/UPDATE/DELETE/TRUNCATE on any table.
DO $rls$
DECLARE
	t text;
BEGIN
	FOREACH t IN ARRAY ARRAY['tenants', 'users', 'api_keys', 'audit_log'] LOOP
		EXECUTE pg_catalog.format('ALTER TABLE quota_ext.%I ENABLE ROW LEVEL SECURITY', t);
		EXECUTE pg_catalog.format('ALTER TABLE quota_ext.%I FORCE ROW LEVEL SECURITY', t);
		EXECUTE pg_catalog.format(
			'CREATE POLICY tenant_isolation ON quota_ext.%I TO quota_ext_app '
			'USING (tenant_id OPERATOR(pg_catalog.=) quota_ext.current_tenant_id()) '
			'WITH CHECK (tenant_id OPERATOR(pg_catalog.=) quota_ext.current_tenant_id())', t);
		EXECUTE pg_catalog.format(
			'CREATE POLICY admin_read ON quota_ext.%I FOR SELECT TO quota_ext_admin '
			'USING (quota_ext.current_tenant_id() IS NULL '
			'       OR tenant_id OPERATOR(pg_catalog.=) quota_ext.current_tenant_id())', t);
	END LOOP;
END
$rls$;

-- models: a global catalog with tenant-owned rows.  A tenant sees global
-- models and its own.
ALTER TABLE quota_ext.models ENABLE ROW LEVEL SECURITY;
ALTER TABLE quota_ext.models FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON quota_ext.models TO quota_ext_app
	USING (owner_tenant_id IS NULL
	       OR owner_tenant_id OPERATOR(pg_catalog.=) quota_ext.current_tenant_id());
CREATE POLICY admin_read ON quota_ext.models FOR SELECT TO quota_ext_admin
	USING (quota_ext.current_tenant_id() IS NULL
	       OR owner_tenant_id IS NULL
	       OR owner_tenant_id OPERATOR(pg_catalog.=) quota_ext.current_tenant_id());

-- tiers: global, readable by both roles, no RLS needed (no tenant data).

-- Read access.  api_keys.key_hash is readable by nobody but the owner.
GRANT SELECT ON quota_ext.tiers, quota_ext.tenants, quota_ext.users, quota_ext.models,
                quota_ext.audit_log TO quota_ext_app;
GRANT SELECT (tenant_id, key_id, user_id, name, key_prefix, created_at, expires_at,
              revoked_at, last_used_at, rotated_to) ON quota_ext.api_keys TO quota_ext_app;

-- Functions: nothing for PUBLIC; the hot path for quota_ext_app; management
-- for quota_ext_admin.  Internal functions (_name) are for the owner only.
DO $grants$
DECLARE
	f regprocedure;
BEGIN
	FOR f IN SELECT p.oid FROM pg_catalog.pg_proc p
	          WHERE p.pronamespace OPERATOR(pg_catalog.=) 'quota_ext'::regnamespace LOOP
		EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
	END LOOP;
END
$grants$;

GRANT EXECUTE ON FUNCTION
	quota_ext.current_tenant_id(),
	quota_ext.current_context(),
	quota_ext.clear_tenant(),
	quota_ext.authenticate(text)
	TO quota_ext_app;

GRANT EXECUTE ON FUNCTION
	quota_ext.set_tenant(bigint),
	quota_ext.tenant_create(text, text, text, jsonb),
	quota_ext.tenant_update(bigint, text, text, text, jsonb, jsonb),
	quota_ext.tenant_suspend(bigint),
	quota_ext.tenant_activate(bigint),
	quota_ext.tenant_close(bigint),
	quota_ext.user_create(bigint, text, text),
	quota_ext.user_update(bigint, bigint, text, text),
	quota_ext.api_key_create(bigint, bigint, text, timestamptz),
	quota_ext.api_key_revoke(bigint, bigint),
	quota_ext.api_key_rotate(bigint, bigint, interval),
	quota_ext.model_register(text, text, bigint, text, jsonb)
	TO quota_ext_admin;

-- pg_dump: every table and sequence is configuration/data of the extension.
SELECT pg_catalog.pg_extension_config_dump('quota_ext.tiers', 'WHERE NOT builtin');
SELECT pg_catalog.pg_extension_config_dump('quota_ext.tenants', '');
SELECT pg_catalog.pg_extension_config_dump('quota_ext.users', '');
SELECT pg_catalog.pg_extension_config_dump('quota_ext.api_keys', '');
SELECT pg_catalog.pg_extension_config_dump('quota_ext.models', '');
SELECT pg_catalog.pg_extension_config_dump('quota_ext.audit_log', '');
SELECT pg_catalog.pg_extension_config_dump('quota_ext.tenant_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('quota_ext.user_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('quota_ext.key_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('quota_ext.model_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('quota_ext.audit_id_seq', '');
