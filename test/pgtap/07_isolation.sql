-- Tenant isolation as the application role.
-- Issue 2: "tenant A sees none of tenant B's rows in any table as
-- quota_ext_app", "quota_ext_app cannot call admin functions or disable
-- RLS", no context means no rows.
-- Checklist: I1 (cross-tenant reads: count 0 everywhere), I2 (cross-tenant
-- writes: 42501), I5 (row_security = off raises), I6 (escalation attempts
-- by quota_ext_app: 42501), I9 (B cannot list A's keys), I10 (a broken
-- policy makes these checks fail), C2 (no context = deny).
--
-- The login roles are created inside this file's transaction and rolled
-- back with it.  Tables and functions are read from the catalog, so those
-- added by later issues are covered too.
BEGIN;
\ir helpers.psql

\o /dev/null
SELECT quota_ext.tenant_create('tap-iso-a') AS ta \gset
SELECT quota_ext.tenant_create('tap-iso-b') AS tb \gset
SELECT user_id AS ua, api_key AS ka FROM quota_ext.user_create(:ta, 'alice@a.example', 'admin') \gset
SELECT user_id AS ub, api_key AS kb FROM quota_ext.user_create(:tb, 'bob@b.example', 'admin') \gset
SELECT quota_ext.user_create(:tb, 'bea@b.example', 'member');
SELECT quota_ext.api_key_create(:tb, :ub, 'second');
SELECT quota_ext.model_register('tap-iso-global');
SELECT quota_ext.model_register('tap-iso-a-model', owner_tenant_id => :ta) AS ma \gset
SELECT quota_ext.model_register('tap-iso-b-model', owner_tenant_id => :tb) AS mb \gset
SELECT quota_ext.tenant_update(:tb, settings => '{"secret": "b"}');
\o
CREATE ROLE qx_tap_iso_app LOGIN IN ROLE quota_ext_app;
CREATE ROLE qx_tap_iso_admin LOGIN IN ROLE quota_ext_admin;

-- the per-tenant tables (tenant_id column) and what the app may read of them
CREATE TEMP VIEW qx_per_tenant AS
	SELECT c.oid::regclass AS rel, c.relname,
	       has_column_privilege('quota_ext_app', c.oid, 'tenant_id', 'SELECT') AS readable
	  FROM pg_class c
	 WHERE c.relnamespace = 'quota_ext'::regnamespace AND c.relkind IN ('r', 'p')
	   AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped);
GRANT SELECT ON qx_per_tenant TO PUBLIC;
CREATE TEMP VIEW qx_all_tables AS
	SELECT c.oid::regclass AS rel, c.relname FROM pg_class c
	 WHERE c.relnamespace = 'quota_ext'::regnamespace AND c.relkind IN ('r', 'p');
GRANT SELECT ON qx_all_tables TO PUBLIC;
-- functions quota_ext_app may not execute, with a call of the right arity
CREATE TEMP VIEW qx_denied AS
	-- (a procedure, distribute, is called with CALL and named "procedure")
	SELECT p.proname, CASE p.prokind WHEN 'p' THEN 'procedure' ELSE 'function' END AS kind,
	       format(CASE p.prokind WHEN 'p' THEN 'CALL quota_ext.%I(%s)' ELSE 'SELECT quota_ext.%I(%s)' END, p.proname,
	              (SELECT string_agg('NULL::' || format_type(t, NULL), ', ' ORDER BY i)
	                 FROM unnest(p.proargtypes::oid[]) WITH ORDINALITY AS a(t, i))) AS call
	  FROM pg_proc p
	 WHERE p.pronamespace = 'quota_ext'::regnamespace
	   AND NOT has_function_privilege('quota_ext_app', p.oid, 'EXECUTE');
GRANT SELECT ON qx_denied TO PUBLIC;

-- rows that a role sees in table rel with tenant_id other than t (NULL t: any)
CREATE FUNCTION pg_temp.foreign_rows(rel regclass, t bigint) RETURNS bigint
	LANGUAGE plpgsql AS $$
DECLARE
	n bigint;
BEGIN
	EXECUTE format('SELECT count(*) FROM %s WHERE $1 IS NULL OR tenant_id IS DISTINCT FROM $1', rel) INTO n USING t;
	RETURN n;
END
$$;
CREATE FUNCTION pg_temp.own_rows(rel regclass, t bigint) RETURNS bigint
	LANGUAGE plpgsql AS $$
DECLARE
	n bigint;
BEGIN
	EXECUTE format('SELECT count(*) FROM %s WHERE tenant_id = $1', rel) INTO n USING t;
	RETURN n;
END
$$;

SELECT count(*) AS n_tables FROM qx_per_tenant \gset
SELECT count(*) AS n_all FROM qx_all_tables \gset
SELECT count(*) AS n_denied FROM qx_denied \gset
SELECT plan(62 + 4 * :n_tables + 3 * :n_all + :n_denied);

-- ---------------------------------------------------------------------------
-- as quota_ext_app without a context: no tenant rows at all
-- ---------------------------------------------------------------------------
SET ROLE qx_tap_iso_app;
SELECT is(quota_ext.current_tenant_id(), NULL, 'app: no context at first');
SELECT CASE WHEN readable THEN is(pg_temp.foreign_rows(rel, NULL), 0::bigint, 'app, no context: no rows in ' || relname)
            ELSE pass('app, no context: ' || relname || ' is not readable at all') END
  FROM qx_per_tenant ORDER BY relname;
SELECT is((SELECT count(*) FROM quota_ext.models WHERE owner_tenant_id IS NOT NULL), 0::bigint,
          'app, no context: no tenant-owned models');
SELECT cmp_ok((SELECT count(*) FROM quota_ext.models WHERE owner_tenant_id IS NULL), '>=', 1::bigint,
          'app, no context: global models are visible (a global catalog)');

-- ---------------------------------------------------------------------------
-- as quota_ext_app in tenant A's context: none of B's rows anywhere
-- ---------------------------------------------------------------------------
SELECT results_eq(format('SELECT tenant_id FROM quota_ext.authenticate(%L)', :'ka'), format('VALUES (%s::bigint)', :ta),
                  'app authenticates as tenant A');
SELECT CASE WHEN readable THEN is(pg_temp.foreign_rows(rel, :ta), 0::bigint, 'app as A: no other tenant''s rows in ' || relname)
            ELSE pass('app as A: ' || relname || ' is not readable at all') END
  FROM qx_per_tenant ORDER BY relname;
SELECT CASE WHEN readable THEN is(pg_temp.own_rows(rel, :tb), 0::bigint, 'app as A: none of B''s rows in ' || relname)
            ELSE pass('app as A: ' || relname || ' is not readable at all') END
  FROM qx_per_tenant ORDER BY relname;
SELECT cmp_ok(pg_temp.own_rows(rel, :ta), '>', 0::bigint, 'app as A: A''s own rows are visible in ' || relname)
  FROM qx_per_tenant WHERE relname IN ('tenants', 'users', 'api_keys', 'audit_log') ORDER BY relname;
SELECT is((SELECT count(*) FROM quota_ext.models WHERE owner_tenant_id = :tb), 0::bigint, 'app as A: none of B''s models');
SELECT is((SELECT count(*) FROM quota_ext.models WHERE model_id = :mb), 0::bigint, 'app as A: B''s model not even by id');
SELECT is((SELECT count(*) FROM quota_ext.models WHERE model_id = :ma), 1::bigint, 'app as A: A''s own model');
SELECT is((SELECT count(*) FROM quota_ext.tenants WHERE name = 'tap-iso-b'), 0::bigint, 'app as A: B not found by name');
SELECT is((SELECT count(*) FROM quota_ext.api_keys WHERE key_prefix LIKE 'qxk_' || :tb || '_%'), 0::bigint,
          'app as A: cannot list B''s keys (I9)');
SELECT is((SELECT count(*) FROM quota_ext.audit_log WHERE after::text LIKE '%"secret"%'), 0::bigint,
          'app as A: B''s audit trail is invisible');
SELECT is((SELECT count(*) FROM quota_ext.users u JOIN quota_ext.api_keys k USING (tenant_id, user_id) WHERE u.tenant_id = :tb),
          0::bigint, 'app as A: joins do not reach B either');
SELECT throws_ok('SELECT key_hash FROM quota_ext.api_keys', '42501', 'permission denied for table api_keys',
                 'app as A: key_hash cannot be read, not even A''s own');

-- writes: no write privilege on any table, for B's rows and A's alike
SELECT throws_ok(format('INSERT INTO %s DEFAULT VALUES', rel), '42501', NULL, 'app as A: INSERT into ' || relname)
  FROM qx_all_tables ORDER BY relname;
SELECT throws_ok(format('UPDATE %s SET %I = %I', rel,
                        (SELECT attname FROM pg_attribute WHERE attrelid = rel AND attnum = 1),
                        (SELECT attname FROM pg_attribute WHERE attrelid = rel AND attnum = 1)),
                 '42501', NULL, 'app as A: UPDATE of ' || relname)
  FROM qx_all_tables ORDER BY relname;
SELECT throws_ok(format('DELETE FROM %s', rel), '42501', NULL, 'app as A: DELETE from ' || relname)
  FROM qx_all_tables ORDER BY relname;
SELECT throws_ok(format('INSERT INTO quota_ext.users (tenant_id, email, role) VALUES (%s, ''eve@b.example'', ''admin'')', :tb),
                 '42501', 'permission denied for table users', 'app as A: INSERT a user into B');
SELECT throws_ok(format('UPDATE quota_ext.api_keys SET revoked_at = now() WHERE tenant_id = %s', :tb),
                 '42501', 'permission denied for table api_keys', 'app as A: revoke B''s keys by UPDATE');
SELECT throws_ok(format('UPDATE quota_ext.tenants SET tenant_id = %s WHERE tenant_id = %s', :tb, :ta),
                 '42501', 'permission denied for table tenants', 'app as A: move A''s row to B');
SELECT throws_ok(format('SELECT * FROM quota_ext.tenants WHERE tenant_id = %s FOR UPDATE', :ta),
                 '42501', 'permission denied for table tenants', 'app as A: cannot lock rows (FOR UPDATE)');
SELECT throws_ok('LOCK TABLE quota_ext.api_keys IN ACCESS EXCLUSIVE MODE', '42501', NULL,
                 'app as A: cannot lock a table against everyone');

-- ---------------------------------------------------------------------------
-- escalation attempts by quota_ext_app (I6): all 42501
-- ---------------------------------------------------------------------------
SELECT throws_ok(call, '42501', format('permission denied for %s %s', kind, proname),
                 'app cannot call ' || proname)
  FROM qx_denied ORDER BY proname;
SELECT throws_ok(format('SELECT quota_ext.set_tenant(%s)', :tb), '42501', 'permission denied for function set_tenant',
                 'app cannot set_tenant to B');
SELECT is(quota_ext.current_tenant_id(), :ta::bigint, '... and the context is still A');
SELECT throws_ok(format('ALTER TABLE quota_ext.%I DISABLE ROW LEVEL SECURITY', t), '42501', NULL,
                 'app cannot DISABLE ROW LEVEL SECURITY on ' || t)
  FROM unnest(ARRAY['tenants', 'users', 'api_keys', 'models', 'audit_log']) AS t;
SELECT throws_ok(format('ALTER TABLE quota_ext.%I NO FORCE ROW LEVEL SECURITY', t), '42501', NULL,
                 'app cannot NO FORCE ROW LEVEL SECURITY on ' || t)
  FROM unnest(ARRAY['tenants', 'users', 'api_keys', 'models', 'audit_log']) AS t;
SELECT throws_ok('CREATE POLICY open ON quota_ext.users TO quota_ext_app USING (true)', '42501', NULL,
                 'app cannot CREATE POLICY');
SELECT throws_ok('DROP POLICY tenant_isolation ON quota_ext.users', '42501', NULL, 'app cannot DROP POLICY');
SELECT throws_ok('ALTER POLICY tenant_isolation ON quota_ext.users USING (true)', '42501', NULL, 'app cannot ALTER POLICY');
SELECT throws_ok('TRUNCATE quota_ext.users', '42501', 'permission denied for table users', 'app cannot TRUNCATE');
-- SET ROLE and SET SESSION AUTHORIZATION are checked against the session
-- user, here the superuser running pg_prove: they are tested in a real
-- login session in test/sql/escalation.sql.
SELECT throws_ok('CREATE TABLE quota_ext.evil (tenant_id bigint)', '42501', 'permission denied for schema quota_ext',
                 'app cannot CREATE TABLE in schema quota_ext');
SELECT throws_ok('CREATE FUNCTION quota_ext.current_tenant_id(int) RETURNS bigint LANGUAGE sql AS ''SELECT 1::bigint''',
                 '42501', 'permission denied for schema quota_ext', 'app cannot CREATE FUNCTION in schema quota_ext');
SELECT throws_ok('CREATE TRIGGER t BEFORE INSERT ON quota_ext.users FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger()',
                 '42501', NULL, 'app cannot CREATE TRIGGER on a table');
SELECT throws_ok('ALTER FUNCTION quota_ext.current_tenant_id() SECURITY DEFINER', '42501', NULL,
                 'app cannot ALTER an extension function');
SELECT throws_ok('ALTER EXTENSION quota_ext UPDATE', '42501', NULL, 'app cannot ALTER EXTENSION');
SELECT throws_ok('DROP EXTENSION quota_ext', '42501', NULL, 'app cannot DROP EXTENSION');
SELECT throws_ok('COMMENT ON TABLE quota_ext.users IS ''mine''', '42501', NULL, 'app cannot COMMENT ON a table');
SELECT throws_ok('GRANT quota_ext_admin TO qx_tap_iso_app', '42501', NULL, 'app cannot grant itself quota_ext_admin');
SELECT throws_ok('SET quota_ext.key_touch_interval = 0', '42501', NULL, 'app cannot change a superuser setting');
SELECT throws_ok('SET row_security = off; SELECT count(*) FROM quota_ext.users', '42501',
                 'query would be affected by row-level security policy for table "users"',
                 'app with row_security = off gets an error, not a bypass (I5)');
SELECT throws_ok('GRANT SELECT ON quota_ext.api_keys TO qx_tap_iso_app', '42501', 'permission denied for table api_keys',
                 'app cannot GRANT itself the whole of api_keys');
SELECT lives_ok('GRANT INSERT, TRUNCATE ON quota_ext.tenants TO qx_tap_iso_app',
                'app GRANT on a table it can read only warns ...');
SELECT ok(NOT has_table_privilege('qx_tap_iso_app', 'quota_ext.tenants', 'INSERT')
          AND NOT has_table_privilege('qx_tap_iso_app', 'quota_ext.tenants', 'TRUNCATE')
          AND NOT has_column_privilege('qx_tap_iso_app', 'quota_ext.api_keys', 'key_hash', 'SELECT'),
          '... and grants nothing');
SELECT ok(NOT pg_has_role('qx_tap_iso_app', 'quota_ext_admin', 'MEMBER'), 'app is still not an admin');
RESET ROLE;

-- ---------------------------------------------------------------------------
-- as quota_ext_admin: all tenants without a context, one with set_tenant
-- ---------------------------------------------------------------------------
SELECT quota_ext.clear_tenant();
SET ROLE qx_tap_iso_admin;
SELECT is((SELECT count(*) FROM quota_ext.tenants WHERE tenant_id IN (:ta, :tb)), 2::bigint,
          'admin without a context reads every tenant');
SELECT is((SELECT count(*) FROM quota_ext.users WHERE tenant_id IN (:ta, :tb)), 3::bigint,
          'admin without a context reads every tenant''s users');
SELECT lives_ok(format('SELECT quota_ext.set_tenant(%s)', :ta), 'admin can set_tenant');
SELECT CASE WHEN has_column_privilege('quota_ext_admin', rel, 'tenant_id', 'SELECT')
            THEN is(pg_temp.foreign_rows(rel, :ta), 0::bigint, 'admin after set_tenant(A): no other tenant''s rows in ' || relname)
            ELSE pass('admin: ' || relname || ' is not readable') END
  FROM qx_per_tenant ORDER BY relname;
SELECT is((SELECT count(*) FROM quota_ext.models WHERE owner_tenant_id = :tb), 0::bigint,
          'admin after set_tenant(A): none of B''s models');
SELECT throws_ok(format('INSERT INTO quota_ext.tenants (name, tier) VALUES (''direct'', ''free'')'), '42501',
                 'permission denied for table tenants', 'admin cannot write tables directly either');
SELECT throws_ok('SELECT quota_ext.set_tenant(999999999)', '42704', 'tenant 999999999 does not exist',
                 'set_tenant of an unknown tenant');
SELECT is(quota_ext.current_tenant_id(), :ta::bigint, '... keeps the context');
SELECT throws_ok('SELECT quota_ext.set_tenant(NULL)', '22004', 'argument "tenant_id" must not be null', 'set_tenant(NULL)');
RESET ROLE;
SELECT quota_ext.clear_tenant();

-- ---------------------------------------------------------------------------
-- the checks fail when the policy is broken (I10).  Findings are kept in
-- psql variables and asserted after ROLLBACK TO (which also undoes pgTAP's
-- bookkeeping).
-- ---------------------------------------------------------------------------
SAVEPOINT mutation;
ALTER POLICY tenant_isolation ON quota_ext.users USING (true);
SET ROLE qx_tap_iso_app;
SELECT quota_ext.authenticate(:'ka') IS NOT NULL AS ok \gset
SELECT pg_temp.own_rows('quota_ext.users', :tb) AS m_open \gset
ROLLBACK TO mutation;
ALTER TABLE quota_ext.api_keys DISABLE ROW LEVEL SECURITY;
SET ROLE qx_tap_iso_app;
SELECT quota_ext.authenticate(:'ka') IS NOT NULL AS ok \gset
SELECT pg_temp.own_rows('quota_ext.api_keys', :tb) AS m_disabled \gset
ROLLBACK TO mutation;
DROP POLICY tenant_isolation ON quota_ext.tenants;
SET ROLE qx_tap_iso_app;
SELECT quota_ext.authenticate(:'ka') IS NOT NULL AS ok \gset
SELECT pg_temp.own_rows('quota_ext.tenants', :ta) AS m_dropped \gset
ROLLBACK TO mutation;
RELEASE mutation;
SELECT is(:m_open::bigint, 2::bigint, 'mutation: a USING (true) policy on users lets A see B''s users (the check catches it)');
SELECT is(:m_disabled::bigint, 3::bigint, 'mutation: DISABLE RLS on api_keys lets A see B''s keys (the check catches it)');
SELECT is(:m_dropped::bigint, 0::bigint, 'mutation: with its policy dropped, tenants fails closed (A sees nothing)');

SELECT * FROM finish();
ROLLBACK;
