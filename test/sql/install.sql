-- The installed shape: objects, flags, privileges.  (--load-extension made it.)
SELECT extname, extversion, extrelocatable, extnamespace::regnamespace
  FROM pg_extension WHERE extname = 'quota_ext';

-- every table of the extension, with its RLS flags
SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity
  FROM pg_class c
 WHERE c.relnamespace = 'quota_ext'::regnamespace AND c.relkind IN ('r', 'p')
 ORDER BY 1;

-- policies
SELECT tablename, policyname, roles, cmd FROM pg_policies
 WHERE schemaname = 'quota_ext' ORDER BY 1, 2;

-- no function is executable by PUBLIC
SELECT p.oid::regprocedure AS public_executable
  FROM pg_proc p
 WHERE p.pronamespace = 'quota_ext'::regnamespace
   AND has_function_privilege('public', p.oid, 'EXECUTE')
 ORDER BY 1;

-- every SECURITY DEFINER function pins search_path
SELECT p.oid::regprocedure AS definer_without_search_path
  FROM pg_proc p
 WHERE p.pronamespace = 'quota_ext'::regnamespace AND p.prosecdef
   AND NOT coalesce(p.proconfig, '{}') @> ARRAY['search_path=pg_catalog, pg_temp']
 ORDER BY 1;

-- what each role may execute
SELECT r.rolname, p.oid::regprocedure::text AS function
  FROM pg_proc p, pg_roles r
 WHERE p.pronamespace = 'quota_ext'::regnamespace
   AND r.rolname IN ('quota_ext_app', 'quota_ext_admin')
   AND has_function_privilege(r.oid, p.oid, 'EXECUTE')
   AND (r.rolname = 'quota_ext_app'
        OR NOT has_function_privilege('quota_ext_app', p.oid, 'EXECUTE'))
 ORDER BY 1, 2;

-- role attributes
SELECT rolname, rolsuper, rolbypassrls, rolcanlogin FROM pg_roles
 WHERE rolname IN ('quota_ext_app', 'quota_ext_admin') ORDER BY 1;

-- built-in tiers
SELECT tier, monthly_calls, rate_limit_per_minute, rate_limit_burst, audit_retention
  FROM quota_ext.tiers ORDER BY monthly_calls NULLS LAST;
