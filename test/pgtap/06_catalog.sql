-- Catalog audit of the extension's members.
-- Checklist: B9 (search_path pinned on every SECURITY DEFINER function, no
-- function executable by PUBLIC, proleakproof false, relrowsecurity and
-- relforcerowsecurity, policies_are per table, quota_ext_app lacks
-- TRUNCATE/REFERENCES/TRIGGER and CREATE on the schema), I5 (role
-- attributes, roles own nothing), B8 (script hygiene, control file),
-- L10/C3 (context functions not parallel safe), F9 (every table and
-- sequence is dumped), PRODUCT.md capability 10 (tenant_id leads every key
-- of per-tenant tables, no triggers on them).
--
-- Checks that are about "every table" or "every function" read the catalog,
-- so tables and functions added by later issues are covered without
-- editing this file.  A per-tenant table is one with a tenant_id column.
BEGIN;
\ir helpers.psql
SELECT plan(73);

CREATE TEMP VIEW qx_tables AS
	SELECT c.oid, c.relname, c.relrowsecurity, c.relforcerowsecurity,
	       EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'tenant_id'
	                  AND NOT a.attisdropped) AS per_tenant
	  FROM pg_class c
	 WHERE c.relnamespace = 'quota_ext'::regnamespace AND c.relkind IN ('r', 'p');
CREATE TEMP VIEW qx_functions AS
	SELECT p.oid, p.oid::regprocedure AS f, p.proname, p.prosecdef, p.proleakproof, p.proconfig,
	       p.proparallel, l.lanname
	  FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
	 WHERE p.pronamespace = 'quota_ext'::regnamespace;

-- ---------------------------------------------------------------------------
-- the extension
-- ---------------------------------------------------------------------------
SELECT has_extension('quota_ext', 'quota_ext', 'quota_ext is installed in schema quota_ext');
SELECT results_eq($$SELECT superuser, trusted, relocatable, schema = 'quota_ext' FROM pg_available_extension_versions
                     WHERE name = 'quota_ext' AND version = (SELECT extversion FROM pg_extension WHERE extname = 'quota_ext')$$,
                  $$VALUES (true, false, false, true)$$,
                  'control file: superuser, not trusted, not relocatable, fixed schema');
SELECT is_empty($$SELECT c.oid::regclass::text FROM pg_class c
                   WHERE c.relnamespace = 'quota_ext'::regnamespace AND c.relkind IN ('r', 'p', 'S', 'v', 'm', 'f')
                     AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                                        AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'quota_ext')
                                        AND d.deptype = 'e')
                  UNION ALL
                  SELECT f::text FROM qx_functions WHERE NOT EXISTS (
                       SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = qx_functions.oid
                          AND d.deptype = 'e')$$,
                'every relation and function in schema quota_ext belongs to the extension');
-- (a partitioned table holds no rows itself: its partitions are registered)
SELECT is_empty($$SELECT c.oid::regclass FROM pg_class c
                   WHERE c.relnamespace = 'quota_ext'::regnamespace AND c.relkind IN ('r', 'S')
                     AND c.oid <> ALL ((SELECT extconfig FROM pg_extension WHERE extname = 'quota_ext')::oid[])$$,
                'every table and sequence is registered with pg_extension_config_dump (pg_dump keeps the data)');

-- the installed script (B8): no OR REPLACE, no IF NOT EXISTS, no quoted substitutions
SELECT setting || '/extension/quota_ext--' || (SELECT extversion FROM pg_extension WHERE extname = 'quota_ext') || '.sql' AS script
  FROM pg_config WHERE name = 'SHAREDIR' \gset
-- comments stripped: they may name what the code must not contain
CREATE TEMP TABLE script AS SELECT regexp_replace(pg_read_file(:'script'), '--[^\n]*', '', 'g') AS body;
SELECT cmp_ok(length((SELECT body FROM script)), '>', 1000, 'the install script was read');
SELECT is((SELECT body ~* 'or\s+replace' FROM script), false, 'the install script has no OR REPLACE');
SELECT is((SELECT body ~* 'if\s+not\s+exists' FROM script), false, 'the install script has no IF NOT EXISTS');
SELECT is((SELECT body ~ '[''"$]@ext(schema|owner)' FROM script), false, 'no quoted @extschema@ or @extowner@');

-- ---------------------------------------------------------------------------
-- functions
-- ---------------------------------------------------------------------------
SELECT cmp_ok((SELECT count(*) FROM qx_functions WHERE prosecdef), '>', 5::bigint, 'there are SECURITY DEFINER functions to check');
\set q_definer 'SELECT f FROM qx_functions WHERE prosecdef AND NOT coalesce(proconfig, ''{}'') @> ARRAY[''search_path=pg_catalog, pg_temp'']'
SELECT is_empty(:'q_definer', 'every SECURITY DEFINER function has SET search_path = pg_catalog, pg_temp');
SELECT is_empty($$SELECT f FROM qx_functions WHERE lanname NOT IN ('c', 'internal')
                   AND NOT coalesce(proconfig, '{}') @> ARRAY['search_path=pg_catalog, pg_temp']$$,
                'every SQL and PL/pgSQL function pins search_path too');
\set q_public 'SELECT f FROM qx_functions WHERE has_function_privilege(''public'', oid, ''EXECUTE'')'
SELECT is_empty(:'q_public', 'no function is executable by PUBLIC');
SELECT is_empty($$SELECT f FROM qx_functions WHERE proleakproof$$, 'no function is LEAKPROOF');
SELECT is_empty($$SELECT f FROM qx_functions WHERE proname LIKE '\_%'
                   AND (has_function_privilege('quota_ext_app', oid, 'EXECUTE')
                        OR has_function_privilege('quota_ext_admin', oid, 'EXECUTE'))$$,
                'internal functions (_name) are executable by neither role');
SELECT is_empty($$SELECT f FROM qx_functions WHERE has_function_privilege('quota_ext_app', oid, 'EXECUTE')
                   AND NOT has_function_privilege('quota_ext_admin', oid, 'EXECUTE')$$,
                'quota_ext_admin can execute whatever quota_ext_app can');
SELECT ok(NOT has_function_privilege('quota_ext_app', 'quota_ext.set_tenant(bigint)', 'EXECUTE'),
          'quota_ext_app cannot execute set_tenant');
SELECT is_empty($$SELECT f FROM qx_functions
                   WHERE proname IN ('current_tenant_id', 'current_context', 'set_tenant', 'clear_tenant',
                                     'authenticate', '_check_tenant_access')
                     AND proparallel = 's'$$,
                'functions that read or write the backend-local context are not PARALLEL SAFE');
SELECT volatility_is('quota_ext', 'current_tenant_id', ARRAY[]::text[], 'stable',
                     'current_tenant_id() is STABLE (evaluated at execution, never folded into a plan)');
SELECT is((SELECT prosecdef FROM qx_functions WHERE proname = 'authenticate'), false,
          'authenticate is not SECURITY DEFINER (it switches user only around its own SPI)');

-- ---------------------------------------------------------------------------
-- tables: RLS, policies, keys, triggers
-- ---------------------------------------------------------------------------
SELECT cmp_ok((SELECT count(*) FROM qx_tables WHERE per_tenant), '>=', 4::bigint, 'there are per-tenant tables to check');
\set q_force 'SELECT relname FROM qx_tables WHERE per_tenant AND NOT (relrowsecurity AND relforcerowsecurity)'
SELECT is_empty(:'q_force', 'every per-tenant table has ENABLE and FORCE ROW LEVEL SECURITY');
SELECT is_empty($$SELECT relname FROM qx_tables t WHERE per_tenant AND NOT EXISTS (
                     SELECT 1 FROM pg_policy p WHERE p.polrelid = t.oid AND p.polname = 'tenant_isolation'
                        AND p.polroles = ARRAY['quota_ext_app'::regrole::oid])$$,
                'every per-tenant table has a tenant_isolation policy for quota_ext_app');
SELECT is_empty($$SELECT relname FROM qx_tables t WHERE relrowsecurity AND EXISTS (
                     SELECT 1 FROM pg_policy p WHERE p.polrelid = t.oid AND NOT p.polpermissive)$$,
                'no restrictive policies (the model is default deny plus permissive grants)');
SELECT is_empty($$SELECT p.polrelid::regclass, p.polname FROM pg_policy p JOIN qx_tables t ON t.oid = p.polrelid
                   WHERE 0 = ANY (p.polroles)$$,
                'no policy applies to PUBLIC');
SELECT is_empty($$SELECT relname FROM qx_tables WHERE NOT relrowsecurity AND relname NOT IN ('tiers', 'meters')$$,
                'only the global catalogs tiers and meters are without RLS');
SELECT is((SELECT relrowsecurity AND relforcerowsecurity FROM qx_tables WHERE relname = 'models'), true,
          'models (global and tenant-owned rows) has FORCE RLS');

SELECT policies_are('quota_ext', t, ARRAY['tenant_isolation', 'admin_read'], t || ': exactly tenant_isolation and admin_read')
  FROM unnest(ARRAY['tenants', 'users', 'api_keys', 'audit_log']) AS t;
SELECT policies_are('quota_ext', 'models', ARRAY['tenant_isolation', 'admin_read', 'shared_models'],
                    'models: tenant_isolation, admin_read and shared_models (models shared with the tenant)');
SELECT policy_cmd_is('quota_ext', 'models', 'shared_models', 'SELECT', 'models.shared_models only reads');
SELECT policy_roles_are('quota_ext', t, 'tenant_isolation', ARRAY['quota_ext_app'], t || '.tenant_isolation is for quota_ext_app')
  FROM unnest(ARRAY['tenants', 'users', 'api_keys', 'models', 'audit_log']) AS t;
SELECT policy_roles_are('quota_ext', t, 'admin_read', ARRAY['quota_ext_admin'], t || '.admin_read is for quota_ext_admin')
  FROM unnest(ARRAY['tenants', 'users', 'api_keys', 'models', 'audit_log']) AS t;
SELECT policy_cmd_is('quota_ext', t, 'admin_read', 'SELECT', t || '.admin_read only reads')
  FROM unnest(ARRAY['tenants', 'users', 'api_keys', 'models', 'audit_log']) AS t;
SELECT is_empty($$SELECT p.polrelid::regclass FROM pg_policy p
                   WHERE p.polrelid IN (SELECT oid FROM qx_tables) AND p.polname = 'tenant_isolation'
                     AND p.polrelid NOT IN ('quota_ext.models'::regclass, 'quota_ext.prices'::regclass)
                     AND pg_get_expr(p.polqual, p.polrelid) <> '(tenant_id = quota_ext.current_tenant_id())'$$,
                'tenant_isolation compares tenant_id with current_tenant_id() (NULL without context: no rows)');

-- Citus readiness: tenant_id leads every unique key of per-tenant tables.
-- tenants itself is the directory (a reference table under Citus): its
-- unique name is global by design.  prices is a global catalog like models
-- (list prices, plus rows that are one tenant's own price: tenant_id is
-- nullable there), a reference table too; its policy shows list prices to
-- every tenant.
SELECT is_empty($$SELECT i.indexrelid::regclass FROM pg_index i JOIN qx_tables t ON t.oid = i.indrelid
                   WHERE t.per_tenant AND t.relname NOT IN ('tenants', 'prices') AND i.indisunique
                     AND (SELECT attname FROM pg_attribute WHERE attrelid = i.indrelid AND attnum = i.indkey[0]) <> 'tenant_id'$$,
                'tenant_id leads every primary key and unique constraint of per-tenant tables');
SELECT is_empty($$SELECT tg.tgrelid::regclass, tg.tgname FROM pg_trigger tg JOIN qx_tables t ON t.oid = tg.tgrelid
                   WHERE t.per_tenant AND NOT tg.tgisinternal$$,
                'no triggers on per-tenant tables');

-- ---------------------------------------------------------------------------
-- roles and privileges
-- ---------------------------------------------------------------------------
SELECT results_eq($$SELECT rolname::text COLLATE "default", rolsuper, rolbypassrls, rolcanlogin, rolcreaterole, rolcreatedb
                      FROM pg_roles WHERE rolname IN ('quota_ext_admin', 'quota_ext_app') ORDER BY 1$$,
                  $$VALUES ('quota_ext_admin', false, false, false, false, false),
                           ('quota_ext_app', false, false, false, false, false)$$,
                  'both roles: NOSUPERUSER NOBYPASSRLS NOLOGIN NOCREATEROLE NOCREATEDB');
SELECT is_empty($$SELECT c.oid::regclass::text FROM pg_class c
                   WHERE c.relowner IN ('quota_ext_admin'::regrole, 'quota_ext_app'::regrole)
                  UNION ALL SELECT p.oid::regproc::text FROM pg_proc p
                   WHERE p.proowner IN ('quota_ext_admin'::regrole, 'quota_ext_app'::regrole)
                  UNION ALL SELECT n.oid::regnamespace::text FROM pg_namespace n
                   WHERE n.nspowner IN ('quota_ext_admin'::regrole, 'quota_ext_app'::regrole)$$,
                'neither role owns a table, function or schema (owners would bypass non-FORCE RLS)');
SELECT ok(pg_has_role('quota_ext_admin', 'quota_ext_app', 'MEMBER'), 'quota_ext_admin is a member of quota_ext_app');
SELECT ok(NOT pg_has_role('quota_ext_app', 'quota_ext_admin', 'MEMBER'), 'quota_ext_app is not a member of quota_ext_admin');
\set q_write 'SELECT r, t.relname, p FROM qx_tables t, unnest(ARRAY[''quota_ext_app'', ''quota_ext_admin'']) AS r, unnest(ARRAY[''INSERT'', ''UPDATE'', ''DELETE'', ''TRUNCATE'', ''REFERENCES'', ''TRIGGER'']) AS p WHERE has_table_privilege(r, t.oid, p) OR (p IN (''INSERT'', ''UPDATE'', ''REFERENCES'') AND has_any_column_privilege(r, t.oid, p))'
SELECT is_empty(:'q_write',
                'neither role has INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES or TRIGGER on any table (writes go through functions)');
SELECT is_empty($$SELECT r, c.oid::regclass FROM pg_class c, unnest(ARRAY['quota_ext_app', 'quota_ext_admin']) AS r
                   WHERE c.relnamespace = 'quota_ext'::regnamespace AND c.relkind = 'S'
                     AND (has_sequence_privilege(r, c.oid, 'UPDATE') OR has_sequence_privilege(r, c.oid, 'USAGE'))$$,
                'neither role can advance a sequence');
SELECT ok(NOT has_schema_privilege('quota_ext_app', 'quota_ext', 'CREATE'), 'quota_ext_app cannot CREATE in schema quota_ext');
SELECT ok(NOT has_schema_privilege('quota_ext_admin', 'quota_ext', 'CREATE'), 'quota_ext_admin cannot CREATE in schema quota_ext');
SELECT ok(NOT has_schema_privilege('public', 'quota_ext', 'USAGE'), 'PUBLIC has no USAGE on schema quota_ext');
SELECT ok(NOT has_column_privilege('quota_ext_app', 'quota_ext.api_keys', 'key_hash', 'SELECT'),
          'quota_ext_app cannot read api_keys.key_hash');
SELECT is_empty($$SELECT t.relname FROM qx_tables t WHERE has_any_column_privilege('public', t.oid, 'SELECT')$$,
                'PUBLIC cannot read any table');
SELECT table_privs_are('quota_ext', t, 'quota_ext_app', ARRAY['SELECT'], 'quota_ext_app may only SELECT from ' || t)
  FROM unnest(ARRAY['tenants', 'users', 'models', 'audit_log', 'tiers']) AS t;
SELECT table_privs_are('quota_ext', 'api_keys', 'quota_ext_app', ARRAY[]::text[],
                       'quota_ext_app has no table-wide privilege on api_keys (column grants only)');
SELECT is((SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a
            WHERE a.attrelid = 'quota_ext.api_keys'::regclass AND a.attnum > 0 AND NOT a.attisdropped
              AND has_column_privilege('quota_ext_app', a.attrelid, a.attnum, 'SELECT')),
          ARRAY['tenant_id', 'key_id', 'user_id', 'name', 'key_prefix', 'created_at', 'expires_at', 'revoked_at',
                'last_used_at', 'rotated_to'],
          'quota_ext_app may read every api_keys column except key_hash');

-- ---------------------------------------------------------------------------
-- the checks above catch what they are meant to (checklist I10): break one
-- thing at a time, inside a savepoint, and see the check report it
-- ---------------------------------------------------------------------------
-- (the findings are kept in psql variables: a ROLLBACK TO would also undo
-- pgTAP's own bookkeeping, so the assertions run after it)
SAVEPOINT mutation;
ALTER TABLE quota_ext.users NO FORCE ROW LEVEL SECURITY;
SELECT string_agg(x::text, ',' ORDER BY x::text) AS found FROM (:q_force) x \gset m_force_
ROLLBACK TO mutation;
ALTER FUNCTION quota_ext.tenant_create(text, text, text, jsonb) RESET search_path;
SELECT string_agg(x::text, ',' ORDER BY x::text) AS found FROM (:q_definer) x \gset m_definer_
ROLLBACK TO mutation;
GRANT EXECUTE ON FUNCTION quota_ext.set_tenant(bigint) TO PUBLIC;
SELECT string_agg(x::text, ',' ORDER BY x::text) AS found FROM (:q_public) x \gset m_public_
ROLLBACK TO mutation;
GRANT TRUNCATE ON quota_ext.users TO quota_ext_app;
SELECT string_agg(x::text, ',' ORDER BY x::text) AS found FROM (:q_write) x \gset m_write_
ROLLBACK TO mutation;
RELEASE mutation;
SELECT is(:'m_force_found'::text, '(users)', 'mutation: NO FORCE on users is reported');
SELECT is(:'m_definer_found'::text, '("quota_ext.tenant_create(text,text,text,jsonb)")',
          'mutation: a SECURITY DEFINER function without search_path is reported');
SELECT is(:'m_public_found'::text, '("quota_ext.set_tenant(bigint)")', 'mutation: a function executable by PUBLIC is reported');
SELECT is(:'m_write_found'::text, '(quota_ext_admin,users,TRUNCATE),(quota_ext_app,users,TRUNCATE)',
          'mutation: TRUNCATE granted to quota_ext_app is reported (for the admin too, a member)');
SELECT is_empty(:'q_force', '... and every mutation was undone');

SELECT * FROM finish();
ROLLBACK;
