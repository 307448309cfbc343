-- rate_limit_check, every client on one key
SELECT * FROM quota_ext.rate_limit_check('rl:hot', 100, 1000000, 1, 1);
