-- GCRA arithmetic (src/gcra.c) through quota_ext.gcra_eval, with the clock
-- passed in.  Times are nanoseconds; the helper folds the TAT through a
-- sequence of (now, quantity) steps as the shared table would.
SET client_min_messages = warning;

CREATE FUNCTION pg_temp.seq(max_burst int, count int, period int, steps bigint[])
RETURNS TABLE (step int, at_ms numeric, qty int, limited boolean, "limit" bigint,
               remaining bigint, retry_after bigint, reset_after bigint,
               retry_ms numeric, reset_ms numeric)
LANGUAGE plpgsql AS $$
DECLARE
	tat bigint := 0;
	r record;
	i int;
BEGIN
	FOR i IN 1 .. array_length(steps, 1) LOOP
		r := quota_ext.gcra_eval(tat, steps[i][1], max_burst, count, period, steps[i][2]::int);
		tat := r.new_tat_ns;
		step := i - 1;
		at_ms := round(steps[i][1] / 1e6, 4);
		qty := steps[i][2];
		limited := r.limited;
		"limit" := r."limit";
		remaining := r.remaining;
		retry_after := r.retry_after;
		reset_after := r.reset_after;
		retry_ms := round(r.retry_after_ns / 1e6, 4);
		reset_ms := round(r.reset_after_ns / 1e6, 4);
		RETURN NEXT;
	END LOOP;
END
$$;

CREATE FUNCTION pg_temp.err(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE q;
	RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
	RETURN SQLSTATE || ': ' || SQLERRM;
END
$$;

-- redis-cell's README: CL.THROTTLE user123 15 30 60 on a new key
-- answers 0, 16, 15, -1, 2.
SELECT limited, "limit", remaining, retry_after, reset_after
  FROM quota_ext.gcra_eval(0, 1000000000000, 15, 30, 60, 1);

-- redis-cell's own test (redis-cell-impl, it_rate_limits): limit 5
-- (max_burst 4), 1 per second, start at t = 0 (here 1000 s).  The *_ms
-- columns are redis-cell's Durations; retry_after/reset_after are what
-- CL.THROTTLE replies (whole seconds, rounded up at >= 1 ms).
SELECT * FROM pg_temp.seq(4, 1, 1, ARRAY[
	[1000000000000, 6],   -- 0: larger than the limit: never, nothing stored
	[1000000000000, 1],   -- 1..5: the burst
	[1000000000000, 1],
	[1000000000000, 1],
	[1000000000000, 1],
	[1000000000000, 1],
	[1000000000000, 1],   -- 6: limited, retry in 1 s
	[1003000000000, 1],   -- 7: +3000 ms
	[1003100000000, 1],   -- 8: +3100 ms
	[1004000000000, 1],   -- 9: +4000 ms
	[1008000000000, 1],   -- 10: +8000 ms
	[1009500000000, 1],   -- 11: +9500 ms
	[1009500000000, 0],   -- 12: quantity 0 peeks
	[1009500000000, 2],   -- 13: quantity 2
	[1009500000000, 5]]); -- 14: 5 > what is left: limited, retry 3 s

-- Steady rate without burst: 10 per second (one per 100 ms), max_burst 0.
-- A check 500 ns early is limited with retry_after 0 (under 1 ms rounds
-- down, as in redis-cell).
SELECT * FROM pg_temp.seq(0, 10, 1, ARRAY[
	[0, 1],
	[50000000, 1],        -- 50 ms: too early, retry 50 ms -> 1 s
	[100000000, 1],       -- on time
	[199999500, 1],       -- 500 ns early
	[200000000, 1],
	[250000000, 0],       -- peek: nothing left, reset 50 ms
	[1000000000, 1],      -- idle for 700 ms: still only one (no burst)
	[1000000000, 1]]);

-- Burst: max_burst 2 at 1 per minute, then the steady rate.
SELECT * FROM pg_temp.seq(2, 1, 60, ARRAY[
	[1, 1], [1, 1], [1, 1], [1, 1],
	[59000000001, 1],     -- 59 s later: retry 1 s
	[60000000001, 1],     -- 60 s: one more
	[60000000001, 1],
	[240000000001, 0]]);  -- 180 s idle: a peek at a full bucket shows the whole limit

-- Quantity > 1 and quantity larger than the burst.
SELECT * FROM pg_temp.seq(9, 10, 1, ARRAY[
	[0, 5], [0, 5], [0, 1],
	[100000000, 1],       -- one interval later: one
	[100000000, 11],      -- more than the limit: retry_after -1 (never)
	[100000000, 10],      -- exactly the limit, but the bucket is not full: 1 s
	[1200000000, 10]]);   -- full again: the whole limit at once

-- Clock going backwards: the TAT never moves back, so an earlier "now"
-- sees a fuller bucket and gets nothing extra.  max_burst 2, 1 per second.
SELECT * FROM pg_temp.seq(2, 1, 1, ARRAY[
	[10000000000, 3],     -- t = 10 s: the whole burst
	[5000000000, 1],      -- t = 5 s: limited, retry 6 s
	[5000000000, 0],      -- even a peek is limited: the TAT is beyond now + tolerance
	[0, 1],               -- t = 0: limited
	[11000000000, 1],     -- back at 11 s: one interval has passed: one
	[11000000000, 1]]);

-- Sub-second rounding: 2.0004 s is 2, 2.001 s is 3; reset_after likewise.
SELECT retry_after_ns, retry_after, reset_after_ns, reset_after
  FROM quota_ext.gcra_eval(4000000000, 1999600000, 0, 1, 2, 1);
SELECT retry_after_ns, retry_after, reset_after_ns, reset_after
  FROM quota_ext.gcra_eval(4000000000, 1999000000, 0, 1, 2, 1);

-- max_burst 0 is valid: limit 1.
SELECT limited, "limit", remaining, reset_after FROM quota_ext.gcra_eval(0, 5, 0, 1, 1, 1);

-- Emission intervals below 1 us (10^9 per second: 1 ns) count remaining in
-- nanoseconds (redis-cell would divide by zero there).
SELECT limited, "limit", remaining, reset_after_ns
  FROM quota_ext.gcra_eval(0, 1000, 999, 1000000000, 1, 10);
-- 1.5 us interval: remaining counted in whole microseconds, as redis-cell.
SELECT limited, remaining, reset_after_ns
  FROM quota_ext.gcra_eval(0, 0, 10, 2000000000, 3, 1);

-- The longest buckets (src/gcra.c, "Bounds"): a period of one day, and a
-- refill time (tolerance) of one day: 3 per day with a burst of 2 takes
-- exactly 86400 s to refill; 8 hours later there is one more.
SELECT * FROM pg_temp.seq(2, 3, 86400, ARRAY[
	[1, 1], [1, 1], [1, 1], [1, 1], [28800000000001, 1], [28800000000001, 0]]);
-- One second more is refused (22023), as is a period over one day or a
-- burst that takes longer than one day to refill (the 68-year bucket).
SELECT pg_temp.err('SELECT quota_ext.gcra_eval(0, 0, 0, 1, 86401, 1)');
SELECT pg_temp.err('SELECT quota_ext.gcra_eval(0, 0, 3, 3, 86400, 1)');
SELECT pg_temp.err('SELECT quota_ext.gcra_eval(0, 0, 86400, 1, 1, 1)');
SELECT pg_temp.err('SELECT quota_ext.gcra_eval(0, 0, 0, 1, 2147483647, 1)');
SELECT pg_temp.err('SELECT quota_ext.gcra_eval(0, 0, 2147483647, 1, 86400, 1)');
SELECT limited, "limit" FROM quota_ext.gcra_eval(0, 0, 86399, 1, 1, 1);

-- Overflow is an error (22003), never a wrapped answer: an increment of
-- 2^31 days, a TAT past 2262, an allow-at time below 1677.
SELECT pg_temp.err('SELECT quota_ext.gcra_eval(0, 0, 0, 1, 86400, 2147483647)');
SELECT pg_temp.err('SELECT quota_ext.gcra_eval(0, 9223372036854775000, 0, 1, 1, 1)');
SELECT pg_temp.err('SELECT quota_ext.gcra_eval(-9223372036854775000, -9223372036854775000, 0, 1, 1, 0)');
-- ... and a rate above 10^9 per second has no interval (22023).
SELECT pg_temp.err('SELECT quota_ext.gcra_eval(0, 0, 0, 2000000000, 1, 1)');

-- Bad input.
SELECT pg_temp.err('SELECT quota_ext.gcra_eval(NULL, 0, 0, 1, 1, 1)');
SELECT pg_temp.err('SELECT quota_ext.gcra_eval(0, NULL, 0, 1, 1, 1)');
SELECT pg_temp.err('SELECT quota_ext.gcra_eval(0, 0, NULL, 1, 1, 1)');
SELECT pg_temp.err('SELECT quota_ext.gcra_eval(0, 0, 0, 1, 1, NULL)');
SELECT pg_temp.err('SELECT quota_ext.gcra_eval(0, 0, -1, 1, 1, 1)');
SELECT pg_temp.err('SELECT quota_ext.gcra_eval(0, 0, 0, 0, 1, 1)');
SELECT pg_temp.err('SELECT quota_ext.gcra_eval(0, 0, 0, -5, 1, 1)');
SELECT pg_temp.err('SELECT quota_ext.gcra_eval(0, 0, 0, 1, 0, 1)');
SELECT pg_temp.err('SELECT quota_ext.gcra_eval(0, 0, 0, 1, -1, 1)');
SELECT pg_temp.err('SELECT quota_ext.gcra_eval(0, 0, 0, 1, 1, -1)');
