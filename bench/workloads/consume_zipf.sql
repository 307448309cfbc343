-- quota_ext.quota_consume on a skewed tenant mix (zipf s=1.1: tenant 1 takes ~12%)
\set t random_zipfian(1, :ntenants, 1.1)
SELECT quota_ext.quota_consume(:t, 'bench-model', 1);
