-- periods: quota_ext.period_bounds(period, timezone, at), the calendar
-- arithmetic behind every quota (src/period.c).
--
-- Each block sets TimeZone to the zone under test, so instants are written
-- and shown in local time with their UTC offset.  Columns:
--   length  period_end - period_start (23 or 25 hours on DST days; none for
--           lifetime, which is (-infinity, infinity))
--   ok      the period contains at, and it tiles: the next period starts
--           exactly at period_end and the previous one ends at period_start
-- The zones under test are POSIX TZ strings that spell their rules out (the
-- rules of the named zone in the comment, as tzdata 2025b has them for 2026),
-- so the results do not depend on the machine's time-zone database (tzdata
-- 2026f, for one, drops Cuba's November 2026 fall-back).  Expected results
-- were checked by hand against these rules (2026):
--   Europe/Berlin      CET-1CEST,M3.5.0,M10.5.0/3
--                      CET +01, CEST +02; 29 Mar 02:00 -> 03:00; 25 Oct 03:00 -> 02:00
--   America/New_York   EST5EDT,M3.2.0,M11.1.0
--                      EST -05, EDT -04;  8 Mar 02:00 -> 03:00; 1 Nov 02:00 -> 01:00
--   Australia/Sydney   AEST-10AEDT,M10.1.0,M4.1.0/3
--                      AEDT +11 until 5 Apr 03:00 -> 02:00 AEST +10; 4 Oct 02:00 -> 03:00
--   Asia/Kolkata       IST-5:30
--                      IST +05:30 all year
--   Pacific/Chatham    <+1245>-12:45<+1345>,M9.5.0/2:45,M4.1.0/3:45
--                      +13:45 until 5 Apr 03:45 -> 02:45 +12:45; 27 Sep 02:45 -> 03:45
--   America/Santiago   <-04>4<-03>,M9.1.6/24,M4.1.6/24
--                      -03 until 5 Apr 00:00 -> 4 Apr 23:00 -04; 6 Sep 00:00 -> 01:00 -03
--                      (local midnight does not exist on 6 Sep)
--   America/Havana     CST5CDT,M3.2.0/0,M11.1.0/1
--                      CDT -04 until 1 Nov 01:00 -> 00:00 CST -05
--                      (local midnight happens twice on 1 Nov)
-- The named zones themselves are used by the tiling check at the end, whose
-- results hold under any rules.
SET datestyle = 'ISO, YMD';
SET intervalstyle = 'postgres';

CREATE FUNCTION pg_temp.bounds(kinds text[], instants timestamptz[])
	RETURNS TABLE (kind text, at timestamptz, period_start timestamptz,
	               period_end timestamptz, length interval, ok boolean)
	LANGUAGE sql AS $$
	SELECT k, a, b.period_start, b.period_end,
	       CASE WHEN isfinite(b.period_start) THEN b.period_end - b.period_start END,
	       a >= b.period_start AND a < b.period_end
	       AND (NOT isfinite(b.period_end) OR
	            (quota_ext.period_bounds(k, current_setting('TimeZone'), b.period_end)).period_start
	              = b.period_end)
	       AND (NOT isfinite(b.period_start) OR
	            (quota_ext.period_bounds(k, current_setting('TimeZone'),
	                                     b.period_start - interval '1 microsecond')).period_end
	              = b.period_start)
	  FROM unnest(kinds) WITH ORDINALITY AS kk(k, kn),
	       unnest(instants) WITH ORDINALITY AS aa(a, an),
	       quota_ext.period_bounds(k, current_setting('TimeZone'), a) b
	 ORDER BY kn, an
$$;

-- UTC: month and year ends, leap day, ISO weeks (1 Jan 2026 is a Thursday;
-- 28 Dec 2026 is the Monday of ISO week 53)
SET TimeZone = 'UTC';
SELECT * FROM pg_temp.bounds('{minute,hour,day,week,month,year,lifetime}',
	'{2026-12-31 23:59:59.999999, 2027-01-01 00:00:00}');
SELECT * FROM pg_temp.bounds('{day,week,month}',
	'{2028-02-28 23:59:59.999999, 2028-02-29 12:00, 2028-03-01 00:00, 2026-01-01 00:00, 2025-12-28 23:59:59.999999}');
-- the words the seeds use mean the same periods
SELECT p, (quota_ext.period_bounds(p, 'UTC', '2026-06-15 12:34:56')).*
  FROM unnest('{minutely,hourly,daily,weekly,monthly,yearly,annual,annually,never,total,Daily,MONTHLY}'::text[]) p;

-- Europe/Berlin: spring forward (23-hour day, hour 02:00 does not exist),
-- fall back (25-hour day, hour 02:00 happens twice), month and year ends
SET TimeZone = 'CET-1CEST,M3.5.0,M10.5.0/3';  -- Europe/Berlin
SELECT * FROM pg_temp.bounds('{hour,day,week,month}',
	'{2026-03-28 23:59:59.999999, 2026-03-29 00:00, 2026-03-29 01:59:59.999999, 2026-03-29 03:00}');
SELECT * FROM pg_temp.bounds('{hour,day}',
	'{2026-10-25 02:30+02, 2026-10-25 02:30+01, 2026-10-25 23:59:59.999999}');
SELECT * FROM pg_temp.bounds('{week,month,year}',
	'{2026-10-25 12:00, 2026-12-31 23:59:59.999999, 2027-01-01 00:00}');

-- America/New_York
SET TimeZone = 'EST5EDT,M3.2.0,M11.1.0';  -- America/New_York
SELECT * FROM pg_temp.bounds('{hour,day,week,month}',
	'{2026-03-08 01:59:59.999999, 2026-03-08 03:00, 2026-11-01 01:30-04, 2026-11-01 01:30-05}');
SELECT * FROM pg_temp.bounds('{day,month,year}',
	'{2026-12-31 23:59:59.999999, 2027-01-01 00:00}');

-- Australia/Sydney: southern hemisphere, DST over the new year
SET TimeZone = 'AEST-10AEDT,M10.1.0,M4.1.0/3';  -- Australia/Sydney
SELECT * FROM pg_temp.bounds('{hour,day,week,month}',
	'{2026-04-05 02:30+11, 2026-04-05 02:30+10, 2026-10-04 01:59:59.999999, 2026-10-04 03:00}');
SELECT * FROM pg_temp.bounds('{day,month,year}',
	'{2026-12-31 23:59:59.999999, 2027-01-01 00:00}');

-- Asia/Kolkata: +05:30, no DST; hours start at half past the UTC hour
SET TimeZone = 'IST-5:30';  -- Asia/Kolkata
SELECT * FROM pg_temp.bounds('{minute,hour,day,week,month,year}',
	'{2026-12-31 23:59:59.999999, 2027-01-01 00:00}');

-- Pacific/Chatham: +12:45 / +13:45, DST changes at 02:45 / 03:45 local
SET TimeZone = '<+1245>-12:45<+1345>,M9.5.0/2:45,M4.1.0/3:45';  -- Pacific/Chatham
SELECT * FROM pg_temp.bounds('{hour,day,month}',
	'{2026-04-05 03:30+13:45, 2026-04-05 03:30+12:45, 2026-09-27 02:44:59.999999, 2026-09-27 03:45}');
SELECT * FROM pg_temp.bounds('{day,week,month,year}',
	'{2026-12-31 23:59:59.999999, 2027-01-01 00:00}');

-- America/Santiago: on 6 Sep the day starts at 01:00 (midnight is skipped)
-- and lasts 23 hours; on 4 Apr the hour 23:00 happens twice (25 hours)
SET TimeZone = '<-04>4<-03>,M9.1.6/24,M4.1.6/24';  -- America/Santiago
SELECT * FROM pg_temp.bounds('{day,week,month}',
	'{2026-09-05 23:59:59.999999, 2026-09-06 01:00, 2026-09-06 23:59:59.999999, 2026-09-07 00:00}');
SELECT * FROM pg_temp.bounds('{day}',
	'{2026-04-04 23:30-03, 2026-04-04 23:30-04, 2026-04-05 00:00}');

-- America/Havana: on 1 Nov local midnight happens twice (00:00 -04 and
-- 00:00 -05); the first hour after 00:00 -04 still belongs to 31 Oct,
-- whose day then ends at 00:00 -05 (25 hours)
SET TimeZone = 'CST5CDT,M3.2.0/0,M11.1.0/1';  -- America/Havana
SELECT * FROM pg_temp.bounds('{day,week,month}',
	'{2026-10-31 12:00, 2026-11-01 00:30-04, 2026-11-01 00:30-05}');

-- Every zone (named, from the machine's tzdata, whatever its rules; and the
-- two POSIX zones with a skipped and a repeated midnight), every period
-- kind, every 30 minutes of 2026: the period contains the instant and the
-- periods tile (no gap, no overlap).
SELECT z AS timezone, count(*) AS instants,
       count(*) FILTER (WHERE NOT (a >= b.period_start AND a < b.period_end)) AS outside,
       count(*) FILTER (WHERE isfinite(b.period_end) AND
           (quota_ext.period_bounds(k, z, b.period_end)).period_start <> b.period_end) AS gaps
  FROM unnest(ARRAY['UTC','Europe/Berlin','America/New_York','Australia/Sydney','Asia/Kolkata',
                     'Pacific/Chatham','America/Santiago','America/Havana',
                     '<-04>4<-03>,M9.1.6/24,M4.1.6/24','CST5CDT,M3.2.0/0,M11.1.0/1']) z,
       unnest('{minute,hour,day,week,month,year,lifetime}'::text[]) k,
       generate_series(timestamptz '2026-01-01 00:15:00+00', '2026-12-31 23:59:59+00', '30 minutes') a,
       quota_ext.period_bounds(k, z, a) b
 GROUP BY z ORDER BY z;

-- bad input
SELECT * FROM quota_ext.period_bounds('fortnight', 'UTC', now());
SELECT * FROM quota_ext.period_bounds(NULL, 'UTC', now());
SELECT * FROM quota_ext.period_bounds('day', NULL, now());
SELECT * FROM quota_ext.period_bounds('day', 'UTC', NULL);
SELECT * FROM quota_ext.period_bounds('day', 'UTC', 'infinity');
SELECT * FROM quota_ext.period_bounds('day', 'Mars/Olympus_Mons', now());

RESET TimeZone;
RESET datestyle;
RESET intervalstyle;
