-- quota_ext.quota_consume, every client on tenant 2: default configuration
-- (daily and monthly quotas set without slots), so automatic escrow
-- (doc/design.md section 5) decides how many escrow slots it gets
SELECT quota_ext.quota_consume(2, 'bench-model', 1);
