-- pgbench: rate_limit_check on one hot key (benchmark W5).
--   pgbench -n -M prepared -j 2 -c 32 -T 60 -f bench/ratelimit_hot.sql
SELECT * FROM quota_ext.rate_limit_check('rl.hot', 15, 30, 60);
