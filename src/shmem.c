/*-------------------------------------------------------------------------
 *
 * shmem.c
 *		Shared memory at server start, in one place: one shmem_request_hook
 *		that asks each module for its memory and locks, and one
 *		shmem_startup_hook that attaches each, under AddinShmemInitLock.
 *
 * The modules: the shared level of the configuration cache (cache.c), the
 * rate-limit table (ratelimit_shmem.c) and the decision counters
 * (stats.c) and automatic escrow's table (escrow_adapt.c), in this order (the order in which their three hook chains ran
 * before).  Each keeps its own sizes and settings; a module with nothing
 * to share adds nothing here.  Only a preloading postmaster installs the
 * hooks; without shared_preload_libraries the modules find their pointers
 * NULL and say so (55000, or an empty result).
 *
 *-------------------------------------------------------------------------
 */
#include "quota_ext.h"
#include "cache.h"
#include "ratelimit.h"
#include "stats.h"
#include "escrow_adapt.h"
#include "shmem.h"

#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static void
quota_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	QuotaCacheShmemRequest();
	QuotaRateLimitShmemRequest();
	QuotaStatsShmemRequest();
	QuotaEscrowShmemRequest();
}

static void
quota_shmem_startup(void)
{
	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	QuotaCacheShmemStartup();
	QuotaRateLimitShmemStartup();
	QuotaStatsShmemStartup();
	QuotaEscrowShmemStartup();
	LWLockRelease(AddinShmemInitLock);
}

/*
 * QuotaShmemInit
 *		Called by _PG_init, after the modules' own Init functions have
 *		defined the settings that size their memory.
 */
void
QuotaShmemInit(void)
{
	if (!process_shared_preload_libraries_in_progress)
		return;
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = quota_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = quota_shmem_startup;
}
