-- comparator: hand-written PL/pgSQL consume, every client on tenant 1
SELECT bench.pl_consume(1, 'bench-model', 1);
