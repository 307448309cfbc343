-- quota_ext.quota_consume on a random tenant of N (daily + monthly quota)
\set t random(1, :ntenants)
SELECT quota_ext.quota_consume(:t, 'bench-model', 1);
