-- quota_ext.quota_consume, every client on one tenant whose quotas are
-- spread over 16 escrow slots (quota_set(..., slots => 16); doc/design.md §5)
SELECT quota_ext.quota_consume(:hotescrow, 'bench-model', 1);
