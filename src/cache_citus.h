/*-------------------------------------------------------------------------
 *
 * cache_citus.h
 *		The configuration cache's generation on Citus (cache_citus.c),
 *		called by cache.c; and whether a tenant's counters are on this node
 *		(consume.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef QUOTA_CACHE_CITUS_H
#define QUOTA_CACHE_CITUS_H

#include "postgres.h"

/*
 * On Citus the generation is quota_ext.config_generation's number, read from
 * this node's placement, with this bit set: it never equals a number of the
 * shared-memory counter, so entries of one are never taken for the other's.
 */
#define QUOTA_CITUS_GENERATION	(UINT64CONST(1) << 63)

extern bool QuotaCitusGeneration(uint64 *generation);
extern uint64 QuotaCitusFillGeneration(int64 tenant_id);
extern int	QuotaCitusLocalReads(void);
extern void QuotaCitusGenerationBump(void);
extern bool QuotaCitusCountersLocal(int64 tenant_id, uint64 epoch);

#endif							/* QUOTA_CACHE_CITUS_H */
