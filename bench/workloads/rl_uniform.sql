-- rate_limit_check (redis-cell CL.THROTTLE) on a random key of N
\set k random(0, :rlkeys - 1)
SELECT * FROM quota_ext.rate_limit_check('rl.' || :k::text, 100, 1000000, 1, 1);
