/*-------------------------------------------------------------------------
 *
 * quota_ext.c
 *		Module entry point: _PG_init delegates to each subsystem.
 *
 * The library is meant to be listed in shared_preload_libraries, because
 * the rate limiter keeps its buckets in shared memory.  Everything else also
 * works when the library is loaded on first use; functions that need the
 * shared memory say so with SQLSTATE 55000.
 *
 *-------------------------------------------------------------------------
 */
#include "quota_ext.h"
#include "context.h"
#include "cache.h"
#include "auth.h"
#include "policy.h"
#include "ratelimit.h"
#include "stats.h"
#include "escrow_adapt.h"
#include "audit.h"
#include "shmem.h"

#include "utils/guc.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

void
_PG_init(void)
{
	QuotaContextInit();
	QuotaCacheInit();
	QuotaAuthInit();
	QuotaRateLimitInit();
	QuotaAuditInit();
	QuotaStatsInit();
	QuotaEscrowInit();
	QuotaShmemInit();

	MarkGUCPrefixReserved("quota_ext");
}
