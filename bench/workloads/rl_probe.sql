-- exactness probe (not timed): a tight limit on one key, every answer kept;
-- afterwards allowed <= max_burst + 1 + rate * elapsed
INSERT INTO bench.rl_probe (limited)
SELECT limited FROM quota_ext.rate_limit_check('rl.probe', 9, 100, 1, 1);
