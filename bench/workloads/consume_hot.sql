-- quota_ext.quota_consume, every client on tenant 1
SELECT quota_ext.quota_consume(1, 'bench-model', 1);
