-- rate_limit_check, every client on one key (no ':' in literals: pgbench would read :name as a variable)
SELECT * FROM quota_ext.rate_limit_check('rl.hot', 100, 1000000, 1, 1);
