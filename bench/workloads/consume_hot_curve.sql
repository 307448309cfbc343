-- quota_ext.quota_consume, every client on tenant 3, cold (default
-- configuration, never contended before): the throughput per second over
-- the first seconds shows how fast automatic escrow adapts
SELECT quota_ext.quota_consume(3, 'bench-model', 1);
