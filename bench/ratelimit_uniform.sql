-- pgbench: rate_limit_check on uniformly spread keys (benchmark W5).
--   pgbench -n -M prepared -j 2 -c 32 -T 60 -D nkeys=100000 -f bench/ratelimit_uniform.sql
\set k random(1, :nkeys)
SELECT * FROM quota_ext.rate_limit_check('rl:' || :k, 15, 30, 60);
