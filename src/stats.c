/*-------------------------------------------------------------------------
 *
 * stats.c
 *		Decision counters per tenant in shared memory: quota_ext.request_stats(),
 *		the denials view and quota_ext.metrics().
 *
 * Why shared memory: a denial is usually followed by the caller's ROLLBACK
 * (or an error), which would take back any row written for it; the
 * counters must count what happened, not what committed.  They are reset
 * by a server restart (as Prometheus counters may be) and by
 * quota_ext.request_stats_reset().
 *
 * Protocol: one hash table keyed by (database, tenant_id), at most
 * quota_ext.stats_max_tenants entries (tenants beyond that are counted under
 * tenant 0, "other"), guarded by one LWLock of the tranche quota_ext_stats.
 * Counting takes the lock in shared mode to find the tenant's entry and
 * adds to its counter with an atomic fetch-add, so concurrent requests of
 * one or many tenants never wait for each other; only the first request of
 * a tenant since startup takes the lock exclusively to insert the entry.
 * Reset takes it exclusively.  Shared memory is requested and attached by
 * shmem.c (QuotaStatsShmemRequest, QuotaStatsShmemStartup); without
 * shared_preload_libraries nothing is counted and request_stats() is empty.
 *
 *-------------------------------------------------------------------------
 */
#include "quota_ext.h"
#include "context.h"
#include "stats.h"

#include "funcapi.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/tuplestore.h"

PG_FUNCTION_INFO_V1(quota_ext_request_stats);
PG_FUNCTION_INFO_V1(quota_ext_request_stats_reset);

#define QUOTA_STATS_TRANCHE	"quota_ext_stats"

typedef struct StatsKey
{
	Oid			dbid;			/* tenant ids are per database */
	int64		tenant_id;		/* 0 = tenants beyond the limit */
} StatsKey;

typedef struct StatsEntry
{
	StatsKey	key;			/* hash key */
	pg_atomic_uint64 counts[QUOTA_NUM_OUTCOMES];
} StatsEntry;

typedef struct StatsShared
{
	LWLock	   *lock;
} StatsShared;

static int	stats_max_tenants = 10000;
static StatsShared *stats_shared = NULL;
static HTAB *stats_hash = NULL;

/*
 * QuotaStatsShmemRequest
 *		The counters' memory and lock (shmem.c, when preloaded).
 */
void
QuotaStatsShmemRequest(void)
{
	RequestAddinShmemSpace(add_size(MAXALIGN(sizeof(StatsShared)),
									hash_estimate_size(stats_max_tenants + 1,
													   sizeof(StatsEntry))));
	RequestNamedLWLockTranche(QUOTA_STATS_TRANCHE, 1);
}

/*
 * QuotaStatsShmemStartup
 *		Attach the counters (shmem.c, under AddinShmemInitLock).
 */
void
QuotaStatsShmemStartup(void)
{
	bool		found;
	HASHCTL		info;

	stats_shared = ShmemInitStruct("quota_ext stats", sizeof(StatsShared), &found);
	if (!found)
		stats_shared->lock = &(GetNamedLWLockTranche(QUOTA_STATS_TRANCHE))->lock;
	memset(&info, 0, sizeof(info));
	info.keysize = sizeof(StatsKey);
	info.entrysize = sizeof(StatsEntry);
	stats_hash = ShmemInitHash("quota_ext stats hash", stats_max_tenants + 1,
							   stats_max_tenants + 1, &info, HASH_ELEM | HASH_BLOBS);
}

/*
 * QuotaStatsInit
 *		From _PG_init: the GUC when preloaded (the shared memory is
 *		requested and attached by shmem.c).
 */
void
QuotaStatsInit(void)
{
	/* a PGC_POSTMASTER variable can only be defined at server start */
	if (!process_shared_preload_libraries_in_progress)
		return;
	DefineCustomIntVariable("quota_ext.stats_max_tenants",
							"Tenants with their own decision counters (the rest count as tenant 0).",
							NULL,
							&stats_max_tenants,
							10000, 16, 1000000,
							PGC_POSTMASTER,
							0,
							NULL, NULL, NULL);
}

/*
 * QuotaStatsCount
 *		Count one decision of a tenant (see the protocol above).
 */
void
QuotaStatsCount(int64 tenant_id, QuotaOutcome outcome)
{
	StatsEntry *e;
	StatsKey	key;
	bool		found;

	if (stats_hash == NULL)
		return;
	memset(&key, 0, sizeof(key));
	key.dbid = MyDatabaseId;
	key.tenant_id = tenant_id;
	LWLockAcquire(stats_shared->lock, LW_SHARED);
	e = hash_search(stats_hash, &key, HASH_FIND, NULL);
	if (e == NULL)
	{
		LWLockRelease(stats_shared->lock);
		LWLockAcquire(stats_shared->lock, LW_EXCLUSIVE);
		if (hash_get_num_entries(stats_hash) >= stats_max_tenants &&
			hash_search(stats_hash, &key, HASH_FIND, NULL) == NULL)
			key.tenant_id = 0;
		e = hash_search(stats_hash, &key, HASH_ENTER_NULL, &found);
		if (e != NULL && !found)
		{
			int			i;

			for (i = 0; i < QUOTA_NUM_OUTCOMES; i++)
				pg_atomic_init_u64(&e->counts[i], 0);
		}
		LWLockRelease(stats_shared->lock);
		if (e == NULL)
			return;				/* out of shared memory: not counted */
		LWLockAcquire(stats_shared->lock, LW_SHARED);
		e = hash_search(stats_hash, &key, HASH_FIND, NULL);
		if (e == NULL)
		{
			/* reset in between */
			LWLockRelease(stats_shared->lock);
			return;
		}
	}
	pg_atomic_fetch_add_u64(&e->counts[outcome], 1);
	LWLockRelease(stats_shared->lock);
}

/*
 * quota_ext.request_stats() RETURNS SETOF (tenant_id bigint, allowed bigint,
 *		denied_quota bigint, denied_rate_limit bigint, denied_policy bigint,
 *		denied_tenant bigint, replayed bigint)
 *
 * With a tenant context: that tenant's row.  Without: every row for
 * quota_ext_admin, none for anyone else (like the RLS policies).
 */
Datum
quota_ext_request_stats(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	const QuotaContext *ctx = QuotaContextGet();
	bool		all;
	HASH_SEQ_STATUS seq;
	StatsEntry *e;

	InitMaterializedSRF(fcinfo, 0);
	if (stats_hash == NULL)
		return (Datum) 0;
	all = (ctx == NULL && QuotaCallerIsAdmin());
	if (ctx == NULL && !all)
		return (Datum) 0;

	LWLockAcquire(stats_shared->lock, LW_SHARED);
	hash_seq_init(&seq, stats_hash);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		Datum		values[1 + QUOTA_NUM_OUTCOMES];
		bool		nulls[1 + QUOTA_NUM_OUTCOMES] = {0};
		int			i;

		if (e->key.dbid != MyDatabaseId || (!all && e->key.tenant_id != ctx->tenant_id))
			continue;
		values[0] = Int64GetDatum(e->key.tenant_id);
		for (i = 0; i < QUOTA_NUM_OUTCOMES; i++)
			values[1 + i] = Int64GetDatum((int64) pg_atomic_read_u64(&e->counts[i]));
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	LWLockRelease(stats_shared->lock);
	return (Datum) 0;
}

/*
 * quota_ext.request_stats_reset() RETURNS void
 *		Forget the counters of every tenant of this database (quota_ext_admin).
 */
Datum
quota_ext_request_stats_reset(PG_FUNCTION_ARGS)
{
	HASH_SEQ_STATUS seq;
	StatsEntry *e;

	QuotaCheckAdmin("request_stats_reset");
	if (stats_hash == NULL)
		PG_RETURN_VOID();
	LWLockAcquire(stats_shared->lock, LW_EXCLUSIVE);
	hash_seq_init(&seq, stats_hash);
	while ((e = hash_seq_search(&seq)) != NULL)
		if (e->key.dbid == MyDatabaseId)
			hash_search(stats_hash, &e->key, HASH_REMOVE, NULL);
	LWLockRelease(stats_shared->lock);
	PG_RETURN_VOID();
}
