
-- ---------------------------------------------------------------------------
-- 99 finish: nothing is executable by PUBLIC; pg_dump keeps every table
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

-- pg_dump: every table and sequence of the extension holds configuration or
-- data, so pg_extension_config_dump registers each one here, at the end,
-- where no section can forget one (pgTAP 06_catalog checks it).  Those with
-- a condition (tiers, meters: built-in rows are not dumped) were registered
-- by their section; the ledger's partitioned parent holds no rows itself
-- (its partitions are tables).
-- (One call a statement: each call rewrites the extension's catalog row.)
DO $dump$
DECLARE
	t regclass;
BEGIN
	FOR t IN SELECT c.oid FROM pg_catalog.pg_class c
	          WHERE c.relnamespace OPERATOR(pg_catalog.=) 'quota_ext'::pg_catalog.regnamespace
	            AND c.relkind OPERATOR(pg_catalog.=) ANY ('{r,S}'::pg_catalog."char"[])
	            AND c.oid OPERATOR(pg_catalog.<>) ALL (SELECT pg_catalog.unnest(e.extconfig)
	                                                   FROM pg_catalog.pg_extension e
	                                                  WHERE e.extname OPERATOR(pg_catalog.=) 'quota_ext')
	          ORDER BY c.oid LOOP
		PERFORM pg_catalog.pg_extension_config_dump(t, '');
	END LOOP;
END
$dump$;
