-- comparator: hand-written PL/pgSQL consume on a random tenant of the first 100
\set t random(1, 100)
SELECT bench.pl_consume(:t, 'bench-model', 1);
