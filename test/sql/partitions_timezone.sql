--
-- usage_partitions_maintain() names and bounds the ledger's monthly
-- partitions by UTC month whatever the session's TimeZone.  It stepped
-- months with timestamptz + '1 month', which steps in the session's zone:
-- across a DST change the next boundary landed an hour off, and
-- maintenance failed ("exists but is not a partition") or left gaps.
-- Found by test/sql/search_path_all.sql (pg_regress runs in PST8PDT).
--
SET client_min_messages = warning;
SET TimeZone = 'America/Los_Angeles';
SELECT count(*) >= 0 AS maintained FROM quota_ext.usage_partitions_maintain(3);
SET TimeZone = 'Pacific/Chatham';
SELECT count(*) >= 0 AS maintained FROM quota_ext.usage_partitions_maintain(14);
SET TimeZone = 'UTC';
-- every partition covers exactly the UTC month its name says, and the
-- months from now on are contiguous
WITH p AS (
	SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) AS bound,
	       to_date(substr(c.relname, 8), 'YYYYMM')::timestamp AT TIME ZONE 'UTC' AS lo,
	       (to_date(substr(c.relname, 8), 'YYYYMM') + interval '1 month') AT TIME ZONE 'UTC' AS hi
	  FROM pg_class c JOIN pg_inherits i ON i.inhrelid = c.oid
	 WHERE i.inhparent = 'quota_ext.usage'::regclass AND c.relname ~ '^usage_p[0-9]{6}$')
SELECT count(*) >= 15 AS partitions,
       count(*) FILTER (WHERE bound <> format('FOR VALUES FROM (%L) TO (%L)', lo, hi)) AS misaligned,
       count(*) FILTER (WHERE lo >= date_trunc('month', now())
                          AND NOT EXISTS (SELECT 1 FROM p q WHERE q.lo = p.hi)
                          AND hi < (SELECT max(hi) FROM p)) AS gaps
  FROM p;
RESET TimeZone;
