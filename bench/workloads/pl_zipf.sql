-- comparator: hand-written PL/pgSQL consume on the zipf tenant mix
\set t random_zipfian(1, :ntenants, 1.1)
SELECT bench.pl_consume(:t, 'bench-model', 1);
