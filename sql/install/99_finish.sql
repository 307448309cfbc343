
-- ---------------------------------------------------------------------------
-- 99 finish: nothing is executable by PUBLIC
-- ---------------------------------------------------------------------------
-- Each section grants its own functions to quota_ext_app (hot path) or
-- quota_ext_admin (management); internal functions (_name) stay with the
-- owner.  This catch-all runs last so no section can forget the revoke.
DO $grants$
DECLARE
	f regprocedure;
BEGIN
	FOR f IN SELECT p.oid FROM pg_catalog.pg_proc p
	          WHERE p.pronamespace OPERATOR(pg_catalog.=) 'quota_ext'::regnamespace LOOP
		EXECUTE pg_catalog.format('REVOKE ALL ON ROUTINE %s FROM PUBLIC', f);
	END LOOP;
END
$grants$;

