/*-------------------------------------------------------------------------
 *
 * cache.c
 *		Per-backend cache of the configuration the hot path reads: API keys
 *		(auth.c), tenant + model + policy + price (policy.c) and rate-limit
 *		rules (ratelimit.c).
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
 *	  or quota_ext.config_cache is off.
 * Likewise a database that receives quota_ext's tables through logical
 * replication must turn quota_ext.config_cache off: the apply worker's
 * plain DML does not call config_changed().
 * A transaction that changed the configuration cannot be prepared (two-
 * phase commit): the generation would have to move at COMMIT PREPARED in
 * another backend, which runs no callback of ours (0A000, as PostgreSQL
 * does for NOTIFY).
 *
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
 *-------------------------------------------------------------------------
 */
#include "quota_ext.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/memutils.h"
#include "utils/syscache.h"

PG_FUNCTION_INFO_V1(config_changed);

typedef struct QuotaCacheShared
{
	pg_atomic_uint64 generation;
	/* the shared level was full of this generation's entries (see Put) */
	pg_atomic_uint64 full_generation;
} QuotaCacheShared;

static QuotaCacheShared *cache_shared = NULL;

/* the shared second level: flat copies of entries, by kind, database and key */
#define QUOTA_SHARED_KEY		80
#define QUOTA_SHARED_PARTITIONS 16
#define QUOTA_SHARED_TRANCHE	"quota_ext config cache"

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

static HTAB *shared_hash = NULL;
static LWLockPadded *shared_locks = NULL;
static int	quota_shared_cache_entries = 8192;
static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static bool quota_config_cache = true;
static int	quota_config_cache_entries = 20000;

static MemoryContext cache_cxt = NULL;
static HTAB *cache_tables[QUOTA_CACHE_NKINDS];
static uint64 cache_generation = 0;
static bool cache_reset_pending = true;

/* this transaction wrote to a table the cache is built from */
static bool cache_dirty = false;

/*
 * Kinds whose entries are flat (no pointers): QuotaCacheLookup itself fills
 * a new one from the shared level when it holds a copy; the others
 * serialize their entries (QuotaSharedCacheGet/Put).
 */
static const bool cache_flat[QUOTA_CACHE_NKINDS] = {
	true,						/* keys */
	false,						/* policy answers: time zone, prices, roles */
	true,						/* rate-limit rules */
	false						/* quota definitions: a row array */
};

static const char *const cache_names[QUOTA_CACHE_NKINDS] = {
	"quota_ext key cache",
	"quota_ext policy cache",
	"quota_ext rate-limit rule cache",
	"quota_ext quota definition cache"
};

static void
quota_cache_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(QuotaCacheShared)));
	if (quota_shared_cache_entries > 0)
	{
		RequestAddinShmemSpace(hash_estimate_size(quota_shared_cache_entries,
												  sizeof(QuotaSharedEntry)));
		RequestNamedLWLockTranche(QUOTA_SHARED_TRANCHE, QUOTA_SHARED_PARTITIONS);
	}
}

static void
quota_cache_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	cache_shared = ShmemInitStruct("quota_ext config generation",
								   sizeof(QuotaCacheShared), &found);
	if (!found)
	{
		pg_atomic_init_u64(&cache_shared->generation, 1);
		pg_atomic_init_u64(&cache_shared->full_generation, 0);
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
		shared_locks = GetNamedLWLockTranche(QUOTA_SHARED_TRANCHE);
	}
	LWLockRelease(AddinShmemInitLock);
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
		prev_shmem_request_hook = shmem_request_hook;
		shmem_request_hook = quota_cache_shmem_request;
		prev_shmem_startup_hook = shmem_startup_hook;
		shmem_startup_hook = quota_cache_shmem_startup;
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
	generation = pg_atomic_read_u64(&cache_shared->generation);
	/* the generation is read before any snapshot a filling query takes */
	pg_memory_barrier();
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
 */
bool
QuotaConfigUnchanged(uint64 stamp)
{
	uint64		generation;

	if (stamp == 0 || cache_shared == NULL || cache_dirty || cache_reset_pending)
		return false;
	/* read after the lock this request waited for was granted */
	pg_memory_barrier();
	generation = pg_atomic_read_u64(&cache_shared->generation);
	return generation == stamp;
}

/*
 * QuotaCacheLookup
 *		The entry for key in one kind's table (after QuotaCacheBegin returned
 *		true), created when missing: *found false means the caller fills it
 *		(every entry starts with its key, then a bool "valid" the caller sets
 *		last, so an entry left half-filled by an error is filled again).  A
 *		new entry of a flat kind is first copied from the shared level when it
 *		holds one (*found true); the caller files what it fills there with
 *		QuotaSharedCachePut.
 */
void *
QuotaCacheLookup(QuotaCacheKind kind, const void *key, Size keysize,
				 Size entrysize, bool *found)
{
	HTAB	   *htab = cache_tables[kind];
	void	   *e;

	if (htab != NULL && hash_get_num_entries(htab) >= quota_config_cache_entries)
	{
		e = hash_search(htab, key, HASH_FIND, NULL);
		if (e != NULL)
		{
			*found = true;
			return e;
		}
		quota_cache_reset(cache_generation);
		htab = NULL;
	}
	if (htab == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = keysize;
		ctl.entrysize = entrysize;
		ctl.hcxt = cache_cxt;
		htab = hash_create(cache_names[kind], 256, &ctl,
						   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
		cache_tables[kind] = htab;
	}
	e = hash_search(htab, key, HASH_ENTER, found);
	/* a flat entry another backend filed in the shared level */
	if (!*found && cache_flat[kind] && entrysize <= QUOTA_SHARED_DATA)
	{
		char		shared[QUOTA_SHARED_DATA];

		if (QuotaSharedCacheGet(kind, key, keysize, shared) == entrysize)
		{
			memcpy(e, shared, entrysize);
			*found = true;
		}
	}
	return e;
}

/* QuotaCacheFind: the entry for key, or NULL (nothing is created) */
void *
QuotaCacheFind(QuotaCacheKind kind, const void *key)
{
	if (cache_tables[kind] == NULL)
		return NULL;
	return hash_search(cache_tables[kind], key, HASH_FIND, NULL);
}

/* QuotaCacheForget: drop an entry (an answer that must not be cached) */
void
QuotaCacheForget(QuotaCacheKind kind, const void *key)
{
	if (cache_tables[kind] != NULL)
		hash_search(cache_tables[kind], key, HASH_REMOVE, NULL);
}

/* QuotaCacheContext: where entries keep what they point to */
MemoryContext
QuotaCacheContext(void)
{
	return cache_cxt;
}

static void
shared_key(QuotaSharedKey *sk, QuotaCacheKind kind, const void *key, Size keysize)
{
	Assert(keysize <= QUOTA_SHARED_KEY);
	memset(sk, 0, sizeof(*sk));
	sk->dbid = MyDatabaseId;
	sk->kind = (int32) kind;
	memcpy(sk->key, key, keysize);
}

/*
 * QuotaSharedCacheGet
 *		Copy the shared entry for key into data (QUOTA_SHARED_DATA bytes) and
 *		return its length, or 0 when there is none of the current generation.
 *		Only after QuotaCacheBegin returned true.
 */
Size
QuotaSharedCacheGet(QuotaCacheKind kind, const void *key, Size keysize, void *data)
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
	return len;
}

/* remove the entries of past generations (every partition locked, in order) */
static void
shared_sweep(void)
{
	HASH_SEQ_STATUS seq;
	QuotaSharedEntry *e;
	uint64		generation = pg_atomic_read_u64(&cache_shared->generation);
	int			i;

	for (i = 0; i < QUOTA_SHARED_PARTITIONS; i++)
		LWLockAcquire(&shared_locks[i].lock, LW_EXCLUSIVE);
	hash_seq_init(&seq, shared_hash);
	while ((e = hash_seq_search(&seq)) != NULL)
		if (e->generation != generation)
			hash_search(shared_hash, &e->key, HASH_REMOVE, NULL);
	for (i = QUOTA_SHARED_PARTITIONS - 1; i >= 0; i--)
		LWLockRelease(&shared_locks[i].lock);
}

/*
 * QuotaSharedCachePut
 *		File len bytes of data for key under the generation QuotaCacheBegin
 *		read (before the query that produced them took its snapshot).
 *		Too long, or no room: not shared.
 */
void
QuotaSharedCachePut(QuotaCacheKind kind, const void *key, Size keysize,
					const void *data, Size len)
{
	QuotaSharedKey sk;
	QuotaSharedEntry *e;
	uint32		hash;
	LWLock	   *lock;
	bool		found;

	if (shared_hash == NULL || keysize > QUOTA_SHARED_KEY || len > QUOTA_SHARED_DATA ||
		len == 0)
		return;
	shared_key(&sk, kind, key, keysize);
	hash = get_hash_value(shared_hash, &sk);
	lock = &shared_locks[hash % QUOTA_SHARED_PARTITIONS].lock;
	/*
	 * Full: remove the entries of past generations, once per generation;
	 * when that freed nothing, this generation's new answers stay local.
	 */
	if (hash_get_num_entries(shared_hash) >= quota_shared_cache_entries &&
		pg_atomic_read_u64(&cache_shared->full_generation) != cache_generation)
	{
		shared_sweep();
		if (hash_get_num_entries(shared_hash) >= quota_shared_cache_entries)
			pg_atomic_write_u64(&cache_shared->full_generation, cache_generation);
	}
	LWLockAcquire(lock, LW_EXCLUSIVE);
	e = hash_search_with_hash_value(shared_hash, &sk, hash,
									hash_get_num_entries(shared_hash) <
									quota_shared_cache_entries ? HASH_ENTER_NULL : HASH_FIND,
									&found);
	/* a newer generation's entry stays */
	if (e != NULL && (!found || e->generation <= cache_generation))
	{
		e->generation = cache_generation;
		e->len = len;
		memcpy(e->data, data, len);
	}
	LWLockRelease(lock);
}

/*
 * quota_ext.config_changed() RETURNS void
 *		The configuration changes in this transaction: when it commits,
 *		every backend empties its cache.  Called by _audit(), i.e. by every
 *		administrative function; for direct changes to the tables.
 */
Datum
config_changed(PG_FUNCTION_ARGS)
{
	cache_dirty = true;
	PG_RETURN_VOID();
}
