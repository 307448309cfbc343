-- pgbench: rate_limit_check on uniformly spread keys (benchmark W5).
--   pgbench -n -M prepared -j 2 -c 32 -T 60 -D nkeys=100000 -f bench/ratelimit_uniform.sql
-- The client builds the 12-digit key and sends it as the parameter, as
-- redis-benchmark builds __rand_int__ (doc/rate-limits.md, "Benchmark").
\set k 100000000000 + random(0, :nkeys - 1)
SELECT * FROM quota_ext.rate_limit_check(:k, 15, 30, 60);
