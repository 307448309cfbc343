-- rate_limit_check (redis-cell CL.THROTTLE) on a random key of N.  The client
-- builds the key, a 12-digit decimal, and sends it as the parameter: as
-- redis-benchmark builds __rand_int__ for redis_uniform (doc/performance.md)
\set k 100000000000 + random(0, :rlkeys - 1)
SELECT * FROM quota_ext.rate_limit_check(:k, 100, 1000000, 1, 1);
