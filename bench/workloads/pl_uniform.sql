-- comparator: hand-written PL/pgSQL consume on a random tenant of N
\set t random(1, :ntenants)
SELECT bench.pl_consume(:t, 'bench-model', 1);
