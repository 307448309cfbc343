/*-------------------------------------------------------------------------
 *
 * cache.c
 *		Per-backend cache of the configuration the hot path reads, and the
 *		one protocol every kind of cached answer goes through (cache.h).
 *
 * The kinds are registered by their owners (API keys: auth.c; tenant +
 * model + policy + price: policy.c; rate-limit rules: ratelimit_rules.c;
 * quota definitions: consume.c); this file knows none of them, only their
 * QuotaCacheKind: QuotaCacheGet checks the generation's entry in the
 * backend, then the shared level, then runs the kind's fill, forgets an
 * answer fill declines, marks the entry valid and files its flat copy.
 *
 * Configuration changes rarely and is read on every request, so each
 * backend keeps what it read in hash tables in its own memory and asks
 * PostgreSQL again only when something may have changed.  "May have
 * changed" is one 64-bit generation counter in shared memory:
 *
 *	- every administrative function records its change with _audit()
 *	  (sql/install/05_audit.sql), which calls quota_ext.config_changed():
 *	  that marks the writing transaction dirty.  Not a trigger: per-tenant
 *	  tables carry none, so that they can be distributed with Citus
 *	  (PRODUCT.md, capability 10).  Whoever changes the tables directly
 *	  calls config_changed() in the same transaction (doc/reference.md);
 *	- when a dirty transaction commits, its XACT_EVENT_COMMIT callback
 *	  increments the generation.  That callback runs after the commit became
 *	  visible (ProcArrayEndTransaction) and before the transaction's locks
 *	  are released and before COMMIT returns to the client, so a request
 *	  that starts after the change committed, or that waited for a row the
 *	  changing transaction had locked, sees the new generation;
 *	- a backend reads the generation before it looks anything up, and throws
 *	  its whole cache away when the generation moved.  Entries are loaded by
 *	  queries that take a fresh snapshot (READ COMMITTED, non-read-only SPI)
 *	  after that read, so an entry never holds data older than the
 *	  generation it is filed under.
 *
 * The cache is not used (neither read nor filled) when it could give an
 * answer a plain query would not:
 *	- under REPEATABLE READ or SERIALIZABLE, whose queries see the
 *	  transaction's snapshot (and take predicate locks) — these callers read
 *	  the tables as before;
 *	- in a transaction that itself changed the configuration (it must see
 *	  its own uncommitted changes);
 *	- on a hot standby: replayed commits run no callback, so nothing would
 *	  move the counter;
 *	- when the library is not preloaded (no shared memory for the counter),
 *	  or quota_ext.config_cache is off;
 *	- on Citus, on a node without a placement of the reference table
 *	  quota_ext.config_generation (below).
 * Likewise a database that receives quota_ext's tables through logical
 * replication must turn quota_ext.config_cache off: the apply worker's
 * plain DML does not call config_changed().
 * A transaction that changed the configuration cannot be prepared (two-
 * phase commit): the generation would have to move at COMMIT PREPARED in
 * another backend, which runs no callback of ours (0A000, as PostgreSQL
 * does for NOTIFY).
 *
 * On Citus (QuotaOnCitus: quota_ext.distribute() made the tables Citus
 * tables) a change committed through one node moves no counter of another,
 * so there the generation is a row instead (doc/scaling.md, "The
 * configuration cache on Citus"):
 *	- quota_ext.config_generation, a reference table: config_changed() adds
 *	  1 to it in the changing transaction, so on every node the number moves
 *	  exactly when the change commits there (one prepared transaction of
 *	  Citus's two-phase commit holds both on each worker);
 *	- QuotaCacheBegin reads this node's placement (a heap read of the local
 *	  shard, found once per relcache invalidation) in a snapshot taken then,
 *	  with the top bit set, so its numbers never meet the counter's; no
 *	  placement here, or a row this transaction wrote: no cache;
 *	- the two-phase commit leaves a window: the coordinator commits first,
 *	  then each worker in turn, so a node may already read g+1 while the
 *	  worker holding the tenant's shards still has the change prepared, not
 *	  committed.  A fill there would read the old rows and file them under
 *	  g+1, stale until the next change.  So before a fill runs its queries,
 *	  one statement routed to the tenant's shards reads the generation on the
 *	  node that holds them (cache_citus.c, QuotaCitusFillGeneration), and the answer is kept
 *	  (and shared) only when that equals the request's generation; otherwise
 *	  it is used for this request only and the cache is emptied at the next
 *	  QuotaCacheBegin.  Every per-tenant table is co-located, so the fill's
 *	  statements read the same node afterwards, in later snapshots: what they
 *	  read includes every change up to the request's generation.  A fill's
 *	  reads of reference tables on this node come after Begin's read here;
 *	- QuotaConfigUnchanged (a request that waited for a lock: has anything
 *	  it read changed?) reads the generation where the tenant's shards are
 *	  with the same routed statement, in a new snapshot.
 *	After a change's COMMIT returns, every node's placement holds the new
 *	number, so no request started later uses an older entry; an entry of
 *	the new number was read on the tenant's node after the change committed
 *	there.
 * Time-dependent facts are kept with their deadline and checked on every
 * use: a key's expiry, the instant the next price version takes effect.
 * Negative answers (unknown tenant, unknown key) are never cached, so
 * unknown ids cost a query as before and cannot fill the cache.  Dropping
 * the extension or its schema resets the cache (pg_namespace invalidation).
 * Each kind of entry has its own hash table in one memory context; when a
 * table reaches quota_ext.config_cache_entries the whole cache is reset.
 *
 * Under the backends' caches is one shared by all of them, in shared
 * memory: a backend that misses its own cache looks there before it runs
 * the query, and files what the query returned there too.  Without it a
 * new connection, or a backend of a pool that serves thousands of tenants,
 * would run the configuration queries for every tenant it meets (about
 * three quarters of a consume's cost when it misses; doc/performance.md).
 * Shared entries are flat copies (a kind's entry serialized by its owner,
 * at most QUOTA_SHARED_DATA bytes, else it is not shared) filed under the
 * generation that was current when the filling query started, and an entry
 * of another generation is never returned: the same rule as the backends'
 * caches.  The table has quota_ext.shared_cache_entries entries (set at
 * server start, 0 = none) in 16 partitions, each with its own lock; when it
 * is full the entries of past generations are removed (once per
 * generation: the whole table is scanned with every partition locked), and
 * if that frees nothing, the generation's new answers stay in the backends'
 * caches only.
 *
 * No tenant can fill the shared level for the others.  Every kind's key
 * starts with the tenant id, and one tenant's entries (per database) may be
 * at most quota_ext.shared_cache_tenant_entries (by default a quarter of
 * the table); a tenant at its share gets its past generations' entries
 * swept as for a full table, and then its new answers stay in the
 * backends' caches, while every other tenant's still find room.  The
 * counts live in a second shared hash table keyed by (database, tenant),
 * guarded by one more lock of the tranche, taken after a partition lock
 * (filing) or after all of them (sweeping), never before: a count changes
 * together with the entry it counts, so it is exact, and only filing and
 * sweeping touch it, never a lookup.  Answers that exist only because the
 * caller made up a name (a model name that matches no model) are not
 * cached at all (policy.c), like unknown tenants and keys.  Counters of
 * the shared level's hits, misses, filed and refused answers, kept per
 * partition, are read with quota_ext.shared_cache_status().
 *
 *-------------------------------------------------------------------------
 */
#include "quota_ext.h"
#include "args.h"
#include "context.h"
#include "cache.h"
#include "cache_citus.h"
#include "spi.h"
#include "storage.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/namespace.h"
#include "catalog/pg_namespace.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/guc.h"
#include "utils/fmgroids.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/tuplestore.h"

PG_FUNCTION_INFO_V1(quota_ext_config_changed);
PG_FUNCTION_INFO_V1(quota_ext_shared_cache_status);
PG_FUNCTION_INFO_V1(quota_ext_shared_cache_tenants);

#define QUOTA_SHARED_PARTITIONS 16

/* what the shared level did, per partition (one cache line each) */
typedef union QuotaSharedCounters
{
	struct
	{
		pg_atomic_uint64 hits;
		pg_atomic_uint64 misses;
		pg_atomic_uint64 filed;
		pg_atomic_uint64 refused;
	}			c;
	char		pad[PG_CACHE_LINE_SIZE];
} QuotaSharedCounters;

typedef struct QuotaCacheShared
{
	pg_atomic_uint64 generation;
	/* the entries of past generations were swept at this generation */
	pg_atomic_uint64 swept_generation;
	QuotaSharedCounters counters[QUOTA_SHARED_PARTITIONS];
} QuotaCacheShared;

static QuotaCacheShared *cache_shared = NULL;

/* the shared second level: flat copies of entries, by kind, database and key */
#define QUOTA_SHARED_KEY		80
#define QUOTA_SHARED_TRANCHE	"quota_ext config cache"
#define QUOTA_SHARED_TENANT_LOCK QUOTA_SHARED_PARTITIONS	/* the counts' lock */

typedef struct QuotaSharedKey
{
	Oid			dbid;
	int32		kind;
	char		key[QUOTA_SHARED_KEY];	/* zero-padded */
} QuotaSharedKey;

typedef struct QuotaSharedEntry
{
	QuotaSharedKey key;
	uint64		generation;
	Size		len;
	char		data[QUOTA_SHARED_DATA];
} QuotaSharedEntry;

/* how many entries of the shared level a tenant has */
typedef struct QuotaSharedTenantKey
{
	Oid			dbid;
	int64		tenant_id;
} QuotaSharedTenantKey;

typedef struct QuotaSharedTenant
{
	QuotaSharedTenantKey key;
	int32		n;
} QuotaSharedTenant;

static HTAB *shared_hash = NULL;
static HTAB *shared_tenants = NULL;
static LWLockPadded *shared_locks = NULL;
static int	quota_shared_cache_entries = 8192;
static int	quota_shared_tenant_entries = 0;	/* 0: a quarter of the table */

static bool quota_config_cache = true;
static int	quota_config_cache_entries = 20000;

static MemoryContext cache_cxt = NULL;
static uint64 cache_generation = 0;
static bool cache_reset_pending = true;

/* the registered kinds, by id, and each one's table in this backend */
static const QuotaCacheKind *cache_kinds[QUOTA_CACHE_MAX_KINDS];
static HTAB *cache_tables[QUOTA_CACHE_MAX_KINDS];

/* this transaction wrote to a table the cache is built from */
static bool cache_dirty = false;


/* an entry of this request was not kept: empty the cache at the next Begin */
static bool cache_forget = false;

/*
 * QuotaCacheShmemRequest
 *		The shared level's memory and locks (shmem.c, when preloaded).
 */
void
QuotaCacheShmemRequest(void)
{
	RequestAddinShmemSpace(MAXALIGN(sizeof(QuotaCacheShared)));
	if (quota_shared_cache_entries > 0)
	{
		RequestAddinShmemSpace(hash_estimate_size(quota_shared_cache_entries,
												  sizeof(QuotaSharedEntry)));
		RequestAddinShmemSpace(hash_estimate_size(quota_shared_cache_entries,
												  sizeof(QuotaSharedTenant)));
		RequestNamedLWLockTranche(QUOTA_SHARED_TRANCHE, QUOTA_SHARED_PARTITIONS + 1);
	}
}

/*
 * QuotaCacheShmemStartup
 *		Attach the shared level (shmem.c, under AddinShmemInitLock).
 */
void
QuotaCacheShmemStartup(void)
{
	bool		found;

	cache_shared = ShmemInitStruct("quota_ext config generation",
								   sizeof(QuotaCacheShared), &found);
	if (!found)
	{
		int			i;

		pg_atomic_init_u64(&cache_shared->generation, 1);
		pg_atomic_init_u64(&cache_shared->swept_generation, 0);
		for (i = 0; i < QUOTA_SHARED_PARTITIONS; i++)
		{
			pg_atomic_init_u64(&cache_shared->counters[i].c.hits, 0);
			pg_atomic_init_u64(&cache_shared->counters[i].c.misses, 0);
			pg_atomic_init_u64(&cache_shared->counters[i].c.filed, 0);
			pg_atomic_init_u64(&cache_shared->counters[i].c.refused, 0);
		}
	}
	if (quota_shared_cache_entries > 0)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(QuotaSharedKey);
		ctl.entrysize = sizeof(QuotaSharedEntry);
		ctl.num_partitions = QUOTA_SHARED_PARTITIONS;
		shared_hash = ShmemInitHash("quota_ext config cache",
									quota_shared_cache_entries,
									quota_shared_cache_entries, &ctl,
									HASH_ELEM | HASH_BLOBS | HASH_PARTITION);
		/* at most one tenant per entry */
		ctl.keysize = sizeof(QuotaSharedTenantKey);
		ctl.entrysize = sizeof(QuotaSharedTenant);
		shared_tenants = ShmemInitHash("quota_ext config cache tenants",
									   quota_shared_cache_entries,
									   quota_shared_cache_entries, &ctl,
									   HASH_ELEM | HASH_BLOBS);
		shared_locks = GetNamedLWLockTranche(QUOTA_SHARED_TRANCHE);
	}
}

static void
quota_cache_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_PREPARE:
			if (cache_dirty)
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("cannot PREPARE a transaction that changed quota_ext configuration"),
						 errdetail("Backends cache the configuration and learn of a change when the changing transaction commits."),
						 errhint("Commit configuration changes without two-phase commit.")));
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			if (cache_dirty && cache_shared != NULL)
				pg_atomic_fetch_add_u64(&cache_shared->generation, 1);
			cache_dirty = false;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			cache_dirty = false;
			break;
		default:
			break;
	}
}

static void
quota_cache_namespace_callback(Datum arg, int cacheid, uint32 hashvalue)
{
	cache_reset_pending = true;
}

/*
 * QuotaCacheInit
 *		Called by _PG_init.
 */
void
QuotaCacheInit(void)
{
	DefineCustomBoolVariable("quota_ext.config_cache",
							 "Cache keys, policies, prices and rate-limit rules in each backend.",
							 "A committed change is seen by the next request either way; off reads the tables on every request.",
							 &quota_config_cache,
							 true,
							 PGC_USERSET, 0,
							 NULL, NULL, NULL);
	DefineCustomIntVariable("quota_ext.config_cache_entries",
							"Entries per kind kept by the configuration cache of one backend.",
							"When a kind reaches this number the backend's whole cache is emptied.",
							&quota_config_cache_entries,
							20000, 16, 10000000,
							PGC_USERSET, 0,
							NULL, NULL, NULL);
	RegisterXactCallback(quota_cache_xact_callback, NULL);
	CacheRegisterSyscacheCallback(NAMESPACEOID, quota_cache_namespace_callback,
								  (Datum) 0);
	if (process_shared_preload_libraries_in_progress)
	{
		DefineCustomIntVariable("quota_ext.shared_cache_entries",
								"Entries of the configuration cache shared by all backends.",
								"Each takes about 1.2 kB of shared memory; 0 disables the shared level.",
								&quota_shared_cache_entries,
								8192, 0, 1000000,
								PGC_POSTMASTER, 0,
								NULL, NULL, NULL);
		DefineCustomIntVariable("quota_ext.shared_cache_tenant_entries",
								"Most entries one tenant may have in the shared configuration cache.",
								"0 means a quarter of quota_ext.shared_cache_entries.  A tenant's answers beyond it stay in the backends' own caches.",
								&quota_shared_tenant_entries,
								0, 0, 1000000,
								PGC_SIGHUP, 0,
								NULL, NULL, NULL);
	}
}

static void
quota_cache_reset(uint64 generation)
{
	if (cache_cxt == NULL)
		cache_cxt = AllocSetContextCreate(TopMemoryContext,
										  "quota_ext config cache",
										  ALLOCSET_DEFAULT_SIZES);
	else
		MemoryContextReset(cache_cxt);
	memset(cache_tables, 0, sizeof(cache_tables));
	cache_generation = generation;
	cache_reset_pending = false;
	cache_forget = false;
}


/*
 * QuotaCacheBegin
 *		May this request use the cache?  Empties it first when the
 *		configuration changed since it was filled.  Call before the queries
 *		that would fill it (they must take their snapshot after this).
 */
bool
QuotaCacheBegin(void)
{
	uint64		generation;

	if (!quota_config_cache || cache_shared == NULL || cache_dirty ||
		IsolationUsesXactSnapshot() || RecoveryInProgress())
		return false;
	if (unlikely(QuotaOnCitus()))
	{
		/* this node's placement, in a snapshot taken before any fill's */
		if (!QuotaCitusGeneration(&generation))
			return false;
		generation |= QUOTA_CITUS_GENERATION;
	}
	else
	{
		generation = pg_atomic_read_u64(&cache_shared->generation);
		/* the generation is read before any snapshot a filling query takes */
		pg_memory_barrier();
	}
	if (generation != cache_generation || cache_reset_pending || cache_cxt == NULL)
		quota_cache_reset(generation);
	return true;
}

/*
 * QuotaConfigStamp
 *		The configuration generation a request is about to read under, or 0
 *		when it cannot use the cache (then nothing may be inferred from the
 *		generation: see QuotaCacheBegin's conditions).  Take it before the
 *		request reads any configuration.
 */
uint64
QuotaConfigStamp(void)
{
	if (!QuotaCacheBegin())
		return 0;
	return cache_generation;
}

/*
 * QuotaConfigUnchanged
 *		Has no configuration change committed since stamp was taken?  Every
 *		admin change moves the generation when it commits, before it
 *		releases its locks (quota_cache_xact_callback), so a request that
 *		waited for a lock and finds the generation unchanged has nothing new
 *		to read (design §4a).  Always false for stamp 0.
 *
 *		On Citus the generation is read where tenant_id's shards are, by
 *		the statement a fill runs first (QuotaCitusFillGeneration): a change
 *		moves that node's placement in the transaction that changes the
 *		tenant's rows there (or, for a reference table, its copy there), so
 *		the same number means nothing the request read has changed.  A
 *		request that used an answer read at another generation (a fill not
 *		kept, cache_reset_pending) reads again.
 */
bool
QuotaConfigUnchanged(uint64 stamp, int64 tenant_id)
{
	uint64		generation;

	if (stamp == 0 || cache_shared == NULL || cache_dirty || cache_reset_pending)
		return false;
	if (unlikely((stamp & QUOTA_CITUS_GENERATION) != 0))
		return stamp == cache_generation &&
			QuotaCitusFillGeneration(tenant_id) == stamp;
	/* read after the lock this request waited for was granted */
	pg_memory_barrier();
	generation = pg_atomic_read_u64(&cache_shared->generation);
	return generation == stamp;
}

/* QuotaCacheContext: where entries keep what they point to */
MemoryContext
QuotaCacheContext(void)
{
	return cache_cxt;
}

/*
 * cache_register
 *		Make a kind known at its first use.  Ids are the kinds' own and must
 *		differ: they name the shared level's entries.
 */
static void
cache_register(const QuotaCacheKind *kind)
{
	if (kind->id <= 0 || kind->id >= QUOTA_CACHE_MAX_KINDS ||
		cache_kinds[kind->id] != NULL)
		elog(ERROR, "cache kind \"%s\" has a bad or taken id %d",
			 kind->name, kind->id);
	Assert(kind->keysize >= sizeof(int64) && kind->keysize <= kind->valid_offset &&
		   kind->valid_offset < kind->entrysize);
	cache_kinds[kind->id] = kind;
}

#define entry_valid(kind, e)	((bool *) ((char *) (e) + (kind)->valid_offset))

/*
 * cache_enter
 *		The backend's entry for key, created (not valid) when missing.  A
 *		table at quota_ext.config_cache_entries empties the whole cache
 *		first.
 */
static void *
cache_enter(const QuotaCacheKind *kind, const void *key)
{
	HTAB	   *htab = cache_tables[kind->id];
	void	   *e;
	bool		found;

	if (htab != NULL && hash_get_num_entries(htab) >= quota_config_cache_entries)
	{
		e = hash_search(htab, key, HASH_FIND, NULL);
		if (e != NULL)
			return e;
		quota_cache_reset(cache_generation);
		htab = NULL;
	}
	if (htab == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = kind->keysize;
		ctl.entrysize = kind->entrysize;
		ctl.hcxt = cache_cxt;
		htab = hash_create(kind->name, 256, &ctl,
						   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
		cache_tables[kind->id] = htab;
	}
	e = hash_search(htab, key, HASH_ENTER, &found);
	/* a new entry: its key, then zeros (not valid, no pointers yet) */
	if (!found)
		memset((char *) e + kind->keysize, 0, kind->entrysize - kind->keysize);
	return e;
}

static Size shared_get(int32 kind, const void *key, Size keysize, void *data);
static void shared_put(int32 kind, const void *key, Size keysize,
					   const void *data, Size len);

/* a valid entry of the generation that is still in force */
static bool
cache_usable(const QuotaCacheKind *kind, void *e)
{
	return e != NULL && *entry_valid(kind, e) &&
		(kind->current == NULL || kind->current(e));
}

/*
 * cache_get
 *		The protocol (after QuotaCacheBegin returned true): the backend's
 *		entry, else the shared level's copy (made the backend's), else, when
 *		arg is not NULL... see QuotaCacheGet and QuotaCachePeek.
 */
static void *
cache_get(const QuotaCacheKind *kind, const void *key, bool may_fill, void *arg)
{
	void	   *e = NULL;
	char		shared[QUOTA_SHARED_DATA];
	QuotaFlat	flat;
	bool		keep = true;
	bool		filled;
	int			nest;

	if (cache_kinds[kind->id] != kind)
		cache_register(kind);
	if (cache_tables[kind->id] != NULL)
		e = hash_search(cache_tables[kind->id], key, HASH_FIND, NULL);
	if (cache_usable(kind, e))
		return e;

	/* an entry another backend filed in the shared level */
	memset(&flat, 0, sizeof(flat));
	flat.buf = shared;
	flat.cap = QUOTA_SHARED_DATA;
	flat.len = shared_get(kind->id, key, kind->keysize, shared);
	if (flat.len > 0)
	{
		e = cache_enter(kind, key);
		*entry_valid(kind, e) = false;
		flat.reading = true;
		kind->flat(e, &flat);
		if (!flat.bad && flat.pos == flat.len)
			*entry_valid(kind, e) = true;
		if (cache_usable(kind, e))
			return e;
	}
	if (!may_fill)
		return NULL;

	/*
	 * On Citus, the generation where the tenant's shards are, read there
	 * before the fill's statements: the answer is kept only when it is the
	 * request's (see the file header).
	 */
	if (unlikely((cache_generation & QUOTA_CITUS_GENERATION) != 0))
	{
		int64		tenant_id;

		memcpy(&tenant_id, key, sizeof(int64));
		keep = QuotaCitusFillGeneration(tenant_id) == cache_generation;
	}

	/* the query; an answer that must not be cached is forgotten */
	e = cache_enter(kind, key);
	*entry_valid(kind, e) = false;
	nest = unlikely((cache_generation & QUOTA_CITUS_GENERATION) != 0) ? QuotaCitusLocalReads() : 0;
	filled = kind->fill(e, arg);
	/* (an ERROR in the fill gives the settings back through the abort) */
	if (nest > 0)
		AtEOXact_GUC(true, nest);
	if (!filled)
	{
		hash_search(cache_tables[kind->id], key, HASH_REMOVE, NULL);
		return NULL;
	}
	*entry_valid(kind, e) = true;
	if (unlikely(!keep))
	{
		/* this request's answer; the next QuotaCacheBegin empties the cache */
		cache_forget = true;
		cache_reset_pending = true;
		return e;
	}
	QuotaCacheShare(kind, e);
	return e;
}

/*
 * QuotaCacheGet
 *		The answer for key (keysize bytes, zero-padded) of one kind, from the
 *		cache or filled by the kind's query, which then files it in the
 *		shared level; NULL when fill declined to cache it (its answer is then
 *		in arg, which is passed to fill).  Only after QuotaCacheBegin
 *		returned true in this request, before the filling query takes its
 *		snapshot (the entry is filed under the generation Begin read).
 */
void *
QuotaCacheGet(const QuotaCacheKind *kind, const void *key, void *arg)
{
	return cache_get(kind, key, true, arg);
}

/*
 * QuotaCachePeek
 *		The same without a query: NULL when neither the backend nor the
 *		shared level holds an answer in force.
 */
void *
QuotaCachePeek(const QuotaCacheKind *kind, const void *key)
{
	return cache_get(kind, key, false, NULL);
}

/*
 * QuotaCacheShare
 *		File a valid entry's flat copy in the shared level (again, after the
 *		owner changed it); one too long for QUOTA_SHARED_DATA is not shared.
 */
void
QuotaCacheShare(const QuotaCacheKind *kind, const void *entry)
{
	char		shared[QUOTA_SHARED_DATA];
	QuotaFlat	flat;

	/* an answer this request may use but not keep (Citus) */
	if (cache_forget)
		return;
	memset(&flat, 0, sizeof(flat));
	flat.buf = shared;
	flat.cap = QUOTA_SHARED_DATA;
	kind->flat((void *) entry, &flat);
	if (!flat.bad)
		shared_put(kind->id, entry, kind->keysize, shared, flat.len);
}

/* QuotaFlatField: one field of n bytes, written or read back */
void
QuotaFlatField(QuotaFlat *f, void *p, Size n)
{
	Size		room = f->reading ? f->len - f->pos : f->cap - f->len;

	if (f->bad || n > room)
	{
		f->bad = true;
		if (f->reading)
			memset(p, 0, n);
		return;
	}
	if (f->reading)
	{
		memcpy(p, f->buf + f->pos, n);
		f->pos += n;
	}
	else
	{
		memcpy(f->buf + f->len, p, n);
		f->len += n;
	}
}

/*
 * QuotaFlatBytes
 *		What *p points to: n bytes (p NULL: none) written as a length and
 *		the bytes; read back, *p is a copy in the cache's memory, or NULL.
 */
void
QuotaFlatBytes(QuotaFlat *f, void **p, Size n)
{
	uint32		len = (!f->reading && *p != NULL) ? (uint32) n : 0;

	QUOTA_FLAT(f, len);
	if (!f->reading)
	{
		if (len > 0)
			QuotaFlatField(f, *p, len);
		return;
	}
	*p = NULL;
	if (f->bad || len == 0)
		return;
	if (len > f->len - f->pos)
	{
		f->bad = true;
		return;
	}
	*p = MemoryContextAlloc(cache_cxt, len);
	QuotaFlatField(f, *p, len);
}

/*
 * QuotaFlatCount
 *		A count of the items that follow, at most max: one read back out of
 *		range sets bad and reads as 0.
 */
void
QuotaFlatCount(QuotaFlat *f, int *n, int max)
{
	QuotaFlatField(f, n, sizeof(int));
	if (*n < 0 || *n > max)
	{
		f->bad = true;
		*n = 0;
	}
}

/*
 * QuotaFlatAlloc
 *		An array of n bytes the entry points to: p when writing; a zeroed
 *		copy in the cache's memory when reading (NULL for n 0).
 */
void *
QuotaFlatAlloc(QuotaFlat *f, void *p, Size n)
{
	if (!f->reading)
		return p;
	return n > 0 ? MemoryContextAllocZero(cache_cxt, n) : NULL;
}

#define shared_counters(hash) \
	(&cache_shared->counters[(hash) % QUOTA_SHARED_PARTITIONS].c)

/* the most entries of one tenant */
static int32
shared_tenant_cap(void)
{
	if (quota_shared_tenant_entries > 0)
		return quota_shared_tenant_entries;
	return Max(quota_shared_cache_entries / 4, 1);
}

/*
 * shared_tenant_add
 *		Count delta (+1 or -1) entries of a tenant, with the lock of the
 *		entry's partition (or every partition) held EXCLUSIVE.  +1 fails
 *		(false) when the tenant has its share already.
 */
static bool
shared_tenant_add(Oid dbid, int64 tenant_id, int32 delta)
{
	LWLock	   *lock = &shared_locks[QUOTA_SHARED_TENANT_LOCK].lock;
	QuotaSharedTenantKey key;
	QuotaSharedTenant *t;
	bool		found;
	bool		ok = true;

	memset(&key, 0, sizeof(key));
	key.dbid = dbid;
	key.tenant_id = tenant_id;
	LWLockAcquire(lock, LW_EXCLUSIVE);
	if (delta > 0)
	{
		t = hash_search(shared_tenants, &key, HASH_ENTER_NULL, &found);
		if (t == NULL)
			ok = false;
		else
		{
			if (!found)
				t->n = 0;
			if (t->n >= shared_tenant_cap())
				ok = false;
			else
				t->n++;
			if (t->n == 0)
				hash_search(shared_tenants, &key, HASH_REMOVE, NULL);
		}
	}
	else
	{
		t = hash_search(shared_tenants, &key, HASH_FIND, NULL);
		Assert(t != NULL && t->n > 0);
		if (t != NULL && --t->n <= 0)
			hash_search(shared_tenants, &key, HASH_REMOVE, NULL);
	}
	LWLockRelease(lock);
	return ok;
}

/* the tenant an entry belongs to: every kind's key starts with it */
static int64
shared_key_tenant(const QuotaSharedKey *sk)
{
	int64		tenant_id;

	memcpy(&tenant_id, sk->key, sizeof(int64));
	return tenant_id;
}

static void
shared_key(QuotaSharedKey *sk, int32 kind, const void *key, Size keysize)
{
	Assert(keysize <= QUOTA_SHARED_KEY);
	memset(sk, 0, sizeof(*sk));
	sk->dbid = MyDatabaseId;
	sk->kind = kind;
	memcpy(sk->key, key, keysize);
}

/*
 * shared_get
 *		Copy the shared entry for key into data (QUOTA_SHARED_DATA bytes) and
 *		return its length, or 0 when there is none of the current generation.
 *		Only after QuotaCacheBegin returned true.
 */
static Size
shared_get(int32 kind, const void *key, Size keysize, void *data)
{
	QuotaSharedKey sk;
	QuotaSharedEntry *e;
	uint32		hash;
	LWLock	   *lock;
	Size		len = 0;

	if (shared_hash == NULL || keysize > QUOTA_SHARED_KEY)
		return 0;
	shared_key(&sk, kind, key, keysize);
	hash = get_hash_value(shared_hash, &sk);
	lock = &shared_locks[hash % QUOTA_SHARED_PARTITIONS].lock;
	LWLockAcquire(lock, LW_SHARED);
	e = hash_search_with_hash_value(shared_hash, &sk, hash, HASH_FIND, NULL);
	if (e != NULL && e->generation == cache_generation)
	{
		len = e->len;
		memcpy(data, e->data, len);
	}
	LWLockRelease(lock);
	if (len > 0)
		pg_atomic_fetch_add_u64(&shared_counters(hash)->hits, 1);
	else
		pg_atomic_fetch_add_u64(&shared_counters(hash)->misses, 1);
	return len;
}

/*
 * shared_generation
 *		The generation in force: the shared counter's, or on Citus the one
 *		this request read (entries of any other are past or not yet known).
 */
static uint64
shared_generation(void)
{
	if ((cache_generation & QUOTA_CITUS_GENERATION) != 0)
		return cache_generation;
	return pg_atomic_read_u64(&cache_shared->generation);
}

/* remove the entries of past generations (every partition locked, in order) */
static void
shared_sweep(void)
{
	HASH_SEQ_STATUS seq;
	QuotaSharedEntry *e;
	uint64		generation;
	int			i;

	for (i = 0; i < QUOTA_SHARED_PARTITIONS; i++)
		LWLockAcquire(&shared_locks[i].lock, LW_EXCLUSIVE);
	generation = shared_generation();
	hash_seq_init(&seq, shared_hash);
	while ((e = hash_seq_search(&seq)) != NULL)
		if (e->generation != generation)
		{
			shared_tenant_add(e->key.dbid, shared_key_tenant(&e->key), -1);
			hash_search(shared_hash, &e->key, HASH_REMOVE, NULL);
		}
	pg_atomic_write_u64(&cache_shared->swept_generation, generation);
	for (i = QUOTA_SHARED_PARTITIONS - 1; i >= 0; i--)
		LWLockRelease(&shared_locks[i].lock);
}

/*
 * shared_put
 *		File len bytes of data for key under the generation QuotaCacheBegin
 *		read (before the query that produced them took its snapshot).  Too
 *		long, or no room in the table or in the tenant's share (after the
 *		entries of past generations were swept, once per generation): not
 *		shared.  The key must start with the tenant id (int64).
 */
static void
shared_put(int32 kind, const void *key, Size keysize,
		   const void *data, Size len)
{
	QuotaSharedKey sk;
	QuotaSharedEntry *e;
	uint32		hash;
	LWLock	   *lock;
	bool		found;
	int64		tenant_id;
	int			attempt;

	if (shared_hash == NULL || keysize > QUOTA_SHARED_KEY ||
		keysize < sizeof(int64) || len > QUOTA_SHARED_DATA || len == 0)
		return;
	shared_key(&sk, kind, key, keysize);
	tenant_id = shared_key_tenant(&sk);
	hash = get_hash_value(shared_hash, &sk);
	lock = &shared_locks[hash % QUOTA_SHARED_PARTITIONS].lock;
	for (attempt = 0;; attempt++)
	{
		LWLockAcquire(lock, LW_EXCLUSIVE);
		e = hash_search_with_hash_value(shared_hash, &sk, hash, HASH_FIND, &found);
		if (e == NULL &&
			hash_get_num_entries(shared_hash) < quota_shared_cache_entries &&
			shared_tenant_add(sk.dbid, tenant_id, 1))
		{
			e = hash_search_with_hash_value(shared_hash, &sk, hash,
											HASH_ENTER_NULL, &found);
			if (e == NULL)
				shared_tenant_add(sk.dbid, tenant_id, -1);
		}
		/* a newer generation's entry stays */
		if (e != NULL && (!found || e->generation <= cache_generation))
		{
			e->generation = cache_generation;
			e->len = len;
			memcpy(e->data, data, len);
		}
		LWLockRelease(lock);
		if (e != NULL)
		{
			pg_atomic_fetch_add_u64(&shared_counters(hash)->filed, 1);
			return;
		}

		/*
		 * The table is full or the tenant has its share: remove the entries
		 * of past generations, once per generation; when that was done
		 * already, this answer stays local.
		 */
		if (attempt > 0 ||
			pg_atomic_read_u64(&cache_shared->swept_generation) ==
			shared_generation())
		{
			pg_atomic_fetch_add_u64(&shared_counters(hash)->refused, 1);
			return;
		}
		shared_sweep();
	}
}

/*
 * quota_ext.config_changed() RETURNS void
 *		The configuration changes in this transaction: when it commits,
 *		every backend empties its cache.  Called by _audit(), i.e. by every
 *		administrative function; for direct changes to the tables.
 */
Datum
quota_ext_config_changed(PG_FUNCTION_ARGS)
{
	cache_dirty = true;
	/* on Citus every node learns of it from the reference table */
	if (!creating_extension && QuotaOnCitus())
		QuotaCitusGenerationBump();
	PG_RETURN_VOID();
}

/*
 * quota_ext.shared_cache_status()
 *	RETURNS (capacity integer, tenant_entries integer, entries bigint,
 *		hits bigint, misses bigint, filed bigint, refused bigint)
 *
 *		The shared level of the configuration cache: its size, the most
 *		entries of one tenant, the entries it holds (every database), and
 *		since server start how many lookups it answered (hits) or not
 *		(misses: the backend then ran the query), how many answers were
 *		filed and how many were not (no room in the table or in the
 *		tenant's share).  Zeros when the library is not preloaded.
 */
Datum
quota_ext_shared_cache_status(PG_FUNCTION_ARGS)
{
	Datum		values[7];
	bool		nulls[7] = {0};
	uint64		sum[4] = {0};
	int			i;

	QuotaCheckAdmin("shared_cache_status");

	if (cache_shared != NULL)
		for (i = 0; i < QUOTA_SHARED_PARTITIONS; i++)
		{
			sum[0] += pg_atomic_read_u64(&cache_shared->counters[i].c.hits);
			sum[1] += pg_atomic_read_u64(&cache_shared->counters[i].c.misses);
			sum[2] += pg_atomic_read_u64(&cache_shared->counters[i].c.filed);
			sum[3] += pg_atomic_read_u64(&cache_shared->counters[i].c.refused);
		}
	values[0] = Int32GetDatum(shared_hash != NULL ? quota_shared_cache_entries : 0);
	values[1] = Int32GetDatum(shared_hash != NULL ? shared_tenant_cap() : 0);
	values[2] = Int64GetDatum(shared_hash != NULL ? (int64) hash_get_num_entries(shared_hash) : 0);
	for (i = 0; i < 4; i++)
		values[3 + i] = Int64GetDatum((int64) sum[i]);
	PG_RETURN_DATUM(QuotaResultRow(fcinfo, values, nulls));
}

/*
 * quota_ext.shared_cache_tenants()
 *	RETURNS SETOF (tenant_id bigint, entries integer)
 *
 *		The tenants of this database with entries in the shared level, and
 *		how many each has (at most shared_cache_status().tenant_entries).
 */
Datum
quota_ext_shared_cache_tenants(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	HASH_SEQ_STATUS seq;
	QuotaSharedTenant *t;
	LWLock	   *lock;

	QuotaCheckAdmin("shared_cache_tenants");

	InitMaterializedSRF(fcinfo, 0);
	if (shared_tenants == NULL)
		return (Datum) 0;
	lock = &shared_locks[QUOTA_SHARED_TENANT_LOCK].lock;
	LWLockAcquire(lock, LW_SHARED);
	hash_seq_init(&seq, shared_tenants);
	while ((t = hash_seq_search(&seq)) != NULL)
	{
		Datum		values[2];
		bool		nulls[2] = {0};

		if (t->key.dbid != MyDatabaseId)
			continue;
		values[0] = Int64GetDatum(t->key.tenant_id);
		values[1] = Int32GetDatum(t->n);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	LWLockRelease(lock);
	return (Datum) 0;
}
