-- comparator: over-subscription of tenant N+1 (daily limit far below demand)
SELECT bench.pl_consume(:denytenant, 'bench-model', 1);
