/*-------------------------------------------------------------------------
 *
 * ratelimit_shmem.c
 *		Rate limits: the table of GCRA buckets in shared memory, its
 *		partitions and capped namespaces, and the check of buckets.
 *
 * The SQL functions are in ratelimit.c, the configured rules that
 * invoke() applies in ratelimit_rules.c; ratelimit_internal.h joins them.
 *
 * Each bucket is one theoretical arrival time (TAT, see gcra.c) in a
 * fixed-size table in shared memory, set up at server start (shmem.c), so
 * the library must be in shared_preload_libraries (otherwise the functions
 * that need the table raise 55000).  Nothing is written to WAL and no row is locked: a check
 * is not undone when the caller's transaction rolls back (a client cannot
 * get its budget back by aborting), and the table starts empty at every
 * server start, like Redis without persistence.
 *
 * Keys.  A bucket is named by a 128-bit keyed digest of its namespace and
 * key (quota_rl_digest, SipHash-2-4 of ratelimit_hash.c, whose header
 * describes the keys); the key text itself is not stored.
 *
 * Layout.  quota_ext.rate_limit_slots entries of 32 bytes (the TAT as a
 * pg_atomic_uint64, the digest, a chain link), a header per partition, and
 * per partition a power-of-two array of chain heads (int32), about 36-40
 * bytes per slot in all.  The digest picks one of QUOTA_RL_PARTITIONS (64)
 * partitions and a chain within it.  Entries are storage only: each
 * partition owns a free list, the free entries are dealt out evenly at
 * start, and they move between partitions when one runs out.
 *
 * Locking protocol.  Each partition has one LWLock of the named tranche
 * "quota_ext_ratelimit".  It protects the partition's chains and free list
 * and the identity (digest, link) of every entry on them; it does not by
 * itself serialize TAT updates:
 *
 *	- Checking a key that has an entry takes the partition lock SHARED,
 *	  finds the entry, then reads the TAT, evaluates GCRA and stores the new
 *	  TAT with one compare-and-swap, retrying (with a fresh clock reading)
 *	  when another backend changed the TAT in between.  So many backends can
 *	  check keys of one partition, even one hot key, at the same time; the
 *	  successful CAS order is the order of the decisions.  The clock
 *	  (CLOCK_MONOTONIC) is read after the TAT, inside the lock.
 *	- A key without an entry is answered from "no TAT"; only when the
 *	  answer consumes something is the lock released and retaken EXCLUSIVE
 *	  to link a new entry (looking again first: another backend may have
 *	  linked it meanwhile).  An entry is never unlinked under a shared
 *	  lock, so a shared holder's entry cannot be recycled under it.
 *	- Reclaiming: when a partition's free list is empty, its holder
 *	  (EXCLUSIVE) unlinks every idle entry, one whose TAT is in the past:
 *	  such a bucket is full again and equals a missing key, so nothing is
 *	  lost.  When that frees nothing, it releases its lock and visits every
 *	  partition in turn, one lock at a time (EXCLUSIVE), reclaiming idle
 *	  entries there and taking up to half of each free list, then puts the
 *	  batch on its own free list and tries again.  Only when no partition
 *	  has a free or idle entry is the table full: 53200 with a hint to raise
 *	  quota_ext.rate_limit_slots.
 *	- Applying several rules at once (QuotaRateLimitApply) takes the
 *	  partitions of all of them EXCLUSIVE in ascending partition order (so
 *	  two such callers cannot deadlock, and one-lock holders never wait for
 *	  a second lock), evaluates every rule at one clock reading and stores
 *	  the new TATs only when none is limited: all or nothing.  No shared
 *	  holder can CAS meanwhile.  A partition that must give an entry but
 *	  has an empty free list is reclaimed before the other entries found
 *	  there are relied on (a reclaim unlinks every idle entry), and a rule
 *	  whose partition still has none releases all locks, refills as above
 *	  and starts over.
 *
 * Namespaces and their caps.  The keys of rate_limit_check() (one
 * namespace per database, for every caller) and of each tenant's
 * tenant_rate_limit_check() (one namespace per tenant) are chosen by
 * callers, so without a bound one statement could fill every slot with
 * live buckets and lock every tenant out (53200) until a restart.  So
 * each such namespace may hold at most quota_ext.rate_limit_tenant_entries
 * buckets (by default a quarter of the slots), and all capped namespaces
 * together at most half the slots, or one cap if that is set higher (the
 * share, counted in quota_rl_shared->capped): whoever controls several namespaces (the keys
 * of rate_limit_check in several databases, the keys of several tenants)
 * can fill the share, and then every capped namespace gets 53200, but the
 * other half stays for the buckets of configured rules ('r'), which are
 * not capped: there is one per rule (and one per tenant for the tier
 * default), so the configuration bounds them, and invoke() keeps working.
 *
 *	- A namespace is a record (database, tenant id; 0 = rate_limit_check's
 *	  keys) in a second chained table of the same shared memory, with as many
 *	  records as there are slots (a capped namespace holds at least one
 *	  bucket or reservation while it is counted, so this never runs out
 *	  first).  Its count of buckets is an atomic; the entry of each capped
 *	  bucket holds its record's index.  One more LWLock of the tranche, the
 *	  namespace lock, guards the records' identities and free list; it is
 *	  always taken last (with or without a partition lock held), so it
 *	  cannot be part of a deadlock.
 *	- A bucket is counted before it is linked: under the namespace lock
 *	  SHARED, the count is raised by compare-and-swap only while it is
 *	  below the cap (a reservation), and given back when the entry then
 *	  turns out to exist or no slot is free.  Unlinking an entry (reclaim,
 *	  reset) lowers its namespace's count after the entry left its chain.
 *	  So a count is never below the number of its linked buckets and never
 *	  above the cap: exact, and nothing of this runs when a key that has a
 *	  bucket is checked (the hot path).
 *	- A record whose count is 0 is freed (under the namespace lock
 *	  EXCLUSIVE, when a new namespace needs a record): no reservation can
 *	  be in flight then, and no entry points to it.
 *	- A namespace at its cap first reclaims: one pass over every partition
 *	  (one lock at a time) unlinks every idle entry, whoever's, and notes
 *	  the earliest TAT among the namespace's live buckets.  If the count is
 *	  still at the cap, the namespace alone gets 53200 naming the setting,
 *	  and until that earliest TAT no call of it passes over the table again
 *	  (none of its buckets can be idle before: a TAT never moves back).
 *	  Unlinking any of its buckets clears that mark.
 *
 * Resetting (quota_ext.rate_limit_reset, for quota_ext_admin): one key's
 * bucket is found by its digest; a whole namespace by visiting every
 * partition (EXCLUSIVE, one at a time) and unlinking the entries that
 * point to its record, which a reservation held meanwhile keeps from being
 * freed; a tenant's rule buckets by the digests of its rules.
 *
 * No lock is held across anything that can wait for another lock or raise
 * an error, except that an ERROR raised by the code here first releases
 * what it holds (and transaction abort would release LWLocks anyway).
 *
 *-------------------------------------------------------------------------
 */
#include "quota_ext.h"
#include "gcra.h"
#include "ratelimit.h"

#include <time.h>

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "port/pg_bswap.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/tuplestore.h"
#include "utils/typcache.h"

#include "ratelimit_internal.h"

static int	quota_rl_slots = 100000;
static int	quota_rl_tenant_entries = 0;	/* 0: a quarter of the slots */

QuotaRlShared *quota_rl_shared = NULL;
static LWLockPadded *rl_locks = NULL;
static int32 *rl_heads = NULL;
static QuotaRlEntry *rl_entries = NULL;
int32 *quota_rl_ns_heads = NULL;
QuotaRlNs *quota_rl_ns_records = NULL;

/* ----------------------------------------------------------------------
 * shared memory
 * ----------------------------------------------------------------------
 */

static int32
quota_rl_nbuckets(int nentries)
{
	int32		per_part = (nentries + QUOTA_RL_PARTITIONS - 1) / QUOTA_RL_PARTITIONS;
	int32		n = 16;

	while (n < per_part)
		n <<= 1;
	return n;
}

static Size
quota_rl_heads_offset(void)
{
	return MAXALIGN(sizeof(QuotaRlShared));
}

static Size
quota_rl_entries_offset(int nentries)
{
	Size		heads = mul_size(sizeof(int32),
								 mul_size(QUOTA_RL_PARTITIONS,
										  quota_rl_nbuckets(nentries)));

	return TYPEALIGN(PG_CACHE_LINE_SIZE,
					 add_size(quota_rl_heads_offset(), heads));
}

static int32
quota_rl_ns_count(int nentries)
{
	return nentries + QUOTA_RL_NS_SPARE;
}

/* chain heads of the namespace table: a power of 2, about one per 4 records */
static int32
quota_rl_ns_nbuckets(int nentries)
{
	int32		n = 16;

	while (n < quota_rl_ns_count(nentries) / 4)
		n <<= 1;
	return n;
}

static Size
quota_rl_ns_heads_offset(int nentries)
{
	return MAXALIGN(add_size(quota_rl_entries_offset(nentries),
							 mul_size(sizeof(QuotaRlEntry), nentries)));
}

static Size
quota_rl_ns_offset(int nentries)
{
	return MAXALIGN(add_size(quota_rl_ns_heads_offset(nentries),
							 mul_size(sizeof(int32), quota_rl_ns_nbuckets(nentries))));
}

static Size
quota_rl_shmem_size(void)
{
	return add_size(add_size(quota_rl_ns_offset(quota_rl_slots),
							 mul_size(sizeof(QuotaRlNs),
									  quota_rl_ns_count(quota_rl_slots))),
					PG_CACHE_LINE_SIZE);
}

/*
 * QuotaRateLimitShmemRequest
 *		The table's memory and locks (shmem.c, when preloaded).
 */
void
QuotaRateLimitShmemRequest(void)
{
	RequestAddinShmemSpace(quota_rl_shmem_size());
	RequestNamedLWLockTranche(QUOTA_RL_TRANCHE, QUOTA_RL_PARTITIONS + 1);
}

/*
 * QuotaRateLimitShmemStartup
 *		Attach the table, and set it up in the postmaster (shmem.c, under
 *		AddinShmemInitLock).
 */
void
QuotaRateLimitShmemStartup(void)
{
	bool		found;
	char	   *base;

	base = ShmemInitStruct("quota_ext rate limits", quota_rl_shmem_size(), &found);
	base = (char *) TYPEALIGN(PG_CACHE_LINE_SIZE, base);
	quota_rl_shared = (QuotaRlShared *) base;
	rl_heads = (int32 *) (base + quota_rl_heads_offset());
	rl_entries = (QuotaRlEntry *) (base + quota_rl_entries_offset(quota_rl_slots));
	quota_rl_ns_heads = (int32 *) (base + quota_rl_ns_heads_offset(quota_rl_slots));
	quota_rl_ns_records = (QuotaRlNs *) (base + quota_rl_ns_offset(quota_rl_slots));
	rl_locks = GetNamedLWLockTranche(QUOTA_RL_TRANCHE);
	if (!found)
	{
		int			i;

		if (!pg_strong_random(quota_rl_shared->secret, sizeof(quota_rl_shared->secret)))
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("could not generate a random key for the rate-limit table")));
#ifdef USE_ASSERT_CHECKING
		quota_rl_siphash_selftest();
#endif
		quota_rl_shared->nentries = quota_rl_slots;
		quota_rl_shared->nbuckets = quota_rl_nbuckets(quota_rl_slots);
		for (i = 0; i < QUOTA_RL_PARTITIONS * quota_rl_shared->nbuckets; i++)
			rl_heads[i] = QUOTA_RL_NONE;
		for (i = 0; i < QUOTA_RL_PARTITIONS; i++)
		{
			quota_rl_shared->parts[i].free_head = QUOTA_RL_NONE;
			quota_rl_shared->parts[i].nfree = 0;
		}
		/* deal the entries out to the partitions' free lists */
		for (i = quota_rl_shared->nentries - 1; i >= 0; i--)
		{
			QuotaRlPartition *p = &quota_rl_shared->parts[i % QUOTA_RL_PARTITIONS];

			pg_atomic_init_u64(&rl_entries[i].tat, 0);
			rl_entries[i].key[0] = rl_entries[i].key[1] = 0;
			rl_entries[i].ns = QUOTA_RL_NONE;
			rl_entries[i].next = p->free_head;
			p->free_head = i;
			p->nfree++;
		}
		/* the namespace records, all free */
		quota_rl_shared->nns = quota_rl_ns_count(quota_rl_slots);
		quota_rl_shared->ns_nbuckets = quota_rl_ns_nbuckets(quota_rl_slots);
		for (i = 0; i < quota_rl_shared->ns_nbuckets; i++)
			quota_rl_ns_heads[i] = QUOTA_RL_NONE;
		quota_rl_shared->ns_free = QUOTA_RL_NONE;
		pg_atomic_init_u32(&quota_rl_shared->capped, 0);
		for (i = quota_rl_shared->nns - 1; i >= 0; i--)
		{
			quota_rl_ns_records[i].dbid = InvalidOid;
			quota_rl_ns_records[i].tenant_id = 0;
			pg_atomic_init_u32(&quota_rl_ns_records[i].count, 0);
			pg_atomic_init_u64(&quota_rl_ns_records[i].full_until, 0);
			quota_rl_ns_records[i].next = quota_rl_shared->ns_free;
			quota_rl_shared->ns_free = i;
		}
	}
}

/*
 * QuotaRateLimitInit
 *		Called by _PG_init.  Only a preloading postmaster defines the
 *		PGC_POSTMASTER setting (and shmem.c asks for shared memory).
 */
void
QuotaRateLimitInit(void)
{
	if (!process_shared_preload_libraries_in_progress)
		return;

	DefineCustomIntVariable("quota_ext.rate_limit_slots",
							"Number of rate-limit buckets kept in shared memory.",
							"Each slot takes about 40 bytes; idle buckets are reclaimed when the table is full.",
							&quota_rl_slots,
							100000, 1024, 100000000,
							PGC_POSTMASTER, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("quota_ext.rate_limit_tenant_entries",
							"Most rate-limit buckets one tenant's ad-hoc keys, or the keys of rate_limit_check(), may hold.",
							"0 means a quarter of quota_ext.rate_limit_slots.  Buckets of configured rules are not counted.",
							&quota_rl_tenant_entries,
							0, 0, 100000000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);
}

/* raise 55000 unless the table exists */
void
quota_rl_require(void)
{
	if (quota_rl_shared == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("quota_ext rate limits need the library to be preloaded"),
				 errdetail("Rate-limit buckets live in shared memory, which is set up only at server start."),
				 errhint("Add quota_ext to shared_preload_libraries in postgresql.conf and restart the server.")));
}

pg_noreturn static void quota_rl_raise_full(void);

static void
quota_rl_raise_full(void)
{
	ereport(ERROR,
			(errcode(ERRCODE_OUT_OF_MEMORY),
			 errmsg("rate-limit table is full"),
			 errdetail("All %d slots hold buckets that are not idle.", quota_rl_shared->nentries),
			 errhint("Raise quota_ext.rate_limit_slots and restart the server.")));
}

/* ----------------------------------------------------------------------
 * the table
 * ----------------------------------------------------------------------
 */

static int64
quota_rl_now(void)
{
	struct timespec ts;

	if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
		elog(PANIC, "clock_gettime(CLOCK_MONOTONIC) failed: %m");
	return (int64) ts.tv_sec * NS_PER_SEC + ts.tv_nsec;
}

/*
 * quota_rl_digest
 *		128 bits of keyed SipHash over kind, the database, a, b (fixed
 *		width) and the key.  The secret is drawn at server start and never
 *		leaves shared memory, so nobody outside the server can compute
 *		digests, let alone choose keys that collide; and every start has a
 *		new one, which is harmless because the table starts empty.
 */
void
quota_rl_digest(char kind, int64 a, int64 b, const char *key, size_t keylen,
				uint64 *out)
{
	uint8		buf[QUOTA_RL_HEAD + QUOTA_RL_MAX_KEY];

	Assert(keylen <= QUOTA_RL_MAX_KEY);
	buf[0] = (uint8) kind;
	memcpy(buf + 1, &MyDatabaseId, sizeof(Oid));
	memcpy(buf + 1 + sizeof(Oid), &a, sizeof(int64));
	memcpy(buf + 1 + sizeof(Oid) + sizeof(int64), &b, sizeof(int64));
	if (keylen > 0)
		memcpy(buf + QUOTA_RL_HEAD, key, keylen);
	quota_rl_siphash(buf, QUOTA_RL_HEAD + keylen, quota_rl_shared->secret, out);
}

int
quota_rl_partition(const uint64 *key)
{
	return (int) (key[0] % QUOTA_RL_PARTITIONS);
}

static inline int32 *
quota_rl_head(int part, const uint64 *key)
{
	uint64		b = (key[0] / QUOTA_RL_PARTITIONS) & (uint64) (quota_rl_shared->nbuckets - 1);

	return &rl_heads[(Size) part * quota_rl_shared->nbuckets + b];
}

LWLock *
quota_rl_lock(int part)
{
	return &rl_locks[part].lock;
}

/* find a key's entry; the partition lock is held in either mode */
static QuotaRlEntry *
quota_rl_lookup(int part, const uint64 *key)
{
	int32		i = *quota_rl_head(part, key);

	while (i != QUOTA_RL_NONE)
	{
		QuotaRlEntry *e = &rl_entries[i];

		if (e->key[0] == key[0] && e->key[1] == key[1])
			return e;
		i = e->next;
	}
	return NULL;
}

/*
 * quota_rl_unlinked
 *		An entry just left its chain (partition lock held EXCLUSIVE): it no
 *		longer counts in its namespace, which may reclaim again.
 */
static inline void
quota_rl_unlinked(QuotaRlEntry *e)
{
	if (e->ns != QUOTA_RL_NONE)
	{
		QuotaRlNs  *n = &quota_rl_ns_records[e->ns];

		/* before the count drops: at 0 the record may be reused */
		pg_atomic_write_u64(&n->full_until, 0);
		pg_atomic_fetch_sub_u32(&n->count, 1);
		pg_atomic_fetch_sub_u32(&quota_rl_shared->capped, 1);
		e->ns = QUOTA_RL_NONE;
	}
}

/*
 * quota_rl_free
 *		Put entry i, just unlinked from its chain, on its partition's free
 *		list (lock held EXCLUSIVE).
 */
static inline void
quota_rl_free(QuotaRlPartition *p, int32 i)
{
	QuotaRlEntry *e = &rl_entries[i];

	quota_rl_unlinked(e);
	e->next = p->free_head;
	p->free_head = i;
	p->nfree++;
}

/*
 * quota_rl_reclaim
 *		Unlink every idle entry of a partition (lock held EXCLUSIVE) and put
 *		it on the partition's free list.  Returns how many.  With watch a
 *		namespace record, also lowers *watch_min to the earliest TAT of its
 *		live entries there.
 */
static int
quota_rl_reclaim(int part, int64 now, int32 watch, int64 *watch_min)
{
	QuotaRlPartition *p = &quota_rl_shared->parts[part];
	int32	   *heads = &rl_heads[(Size) part * quota_rl_shared->nbuckets];
	int			n = 0;
	int32		b;

	for (b = 0; b < quota_rl_shared->nbuckets; b++)
	{
		int32	   *link = &heads[b];

		while (*link != QUOTA_RL_NONE)
		{
			int32		i = *link;
			QuotaRlEntry *e = &rl_entries[i];
			int64		tat = (int64) pg_atomic_read_u64(&e->tat);

			if (tat <= now)
			{
				*link = e->next;
				quota_rl_free(p, i);
				n++;
			}
			else
			{
				if (watch != QUOTA_RL_NONE && e->ns == watch && tat < *watch_min)
					*watch_min = tat;
				link = &e->next;
			}
		}
	}
	return n;
}

/*
 * quota_rl_link
 *		Link a new entry for key into its partition (lock held EXCLUSIVE)
 *		from the partition's free list.  NULL when the list is empty: the
 *		caller reclaims (before it looks up entries it means to keep: a
 *		reclaim unlinks every idle entry) or refills.
 */
static QuotaRlEntry *
quota_rl_link(int part, const uint64 *key, int32 ns)
{
	QuotaRlPartition *p = &quota_rl_shared->parts[part];
	int32	   *head;
	int32		i;
	QuotaRlEntry *e;

	if (p->free_head == QUOTA_RL_NONE)
		return NULL;
	i = p->free_head;
	e = &rl_entries[i];
	p->free_head = e->next;
	p->nfree--;

	pg_atomic_write_u64(&e->tat, 0);
	e->key[0] = key[0];
	e->key[1] = key[1];
	e->ns = ns;
	head = quota_rl_head(part, key);
	e->next = *head;
	*head = i;
	return e;
}

/*
 * quota_rl_refill
 *		Move free entries to partition `part` from the others (no lock held
 *		on entry): visit every partition, one lock at a time, reclaim its
 *		idle entries when it has no free one, and take up to half of its
 *		free list.  Raises 53200 when no partition has anything.
 */
static void
quota_rl_refill(int part)
{
	int32		batch[QUOTA_RL_REFILL_BATCH];
	int			n = 0;
	int			k;
	int64		now = quota_rl_now();

	for (k = 1; k <= QUOTA_RL_PARTITIONS && n < QUOTA_RL_REFILL_BATCH; k++)
	{
		int			v = (part + k) % QUOTA_RL_PARTITIONS;
		QuotaRlPartition *p = &quota_rl_shared->parts[v];
		int			take;

		LWLockAcquire(quota_rl_lock(v), LW_EXCLUSIVE);
		if (p->free_head == QUOTA_RL_NONE)
			quota_rl_reclaim(v, now, QUOTA_RL_NONE, NULL);
		take = Max(p->nfree / 2, Min(p->nfree, 1));
		take = Min(take, QUOTA_RL_REFILL_BATCH - n);
		while (take-- > 0)
		{
			int32		i = p->free_head;

			p->free_head = rl_entries[i].next;
			p->nfree--;
			batch[n++] = i;
		}
		LWLockRelease(quota_rl_lock(v));
	}
	if (n == 0)
		quota_rl_raise_full();

	LWLockAcquire(quota_rl_lock(part), LW_EXCLUSIVE);
	while (n > 0)
	{
		QuotaRlPartition *p = &quota_rl_shared->parts[part];
		int32		i = batch[--n];

		rl_entries[i].next = p->free_head;
		p->free_head = i;
		p->nfree++;
	}
	LWLockRelease(quota_rl_lock(part));
}

/* ----------------------------------------------------------------------
 * namespaces (see "Namespaces and their caps" above)
 * ----------------------------------------------------------------------
 */

/*
 * the most buckets all capped namespaces together may hold: half the
 * slots, or one namespace's cap when that is set higher (then the DBA has
 * chosen to let callers' keys fill the table)
 */
uint32
quota_rl_share(void)
{
	uint32		half = (uint32) Max(1, quota_rl_shared->nentries / 2);

	return Max(half, quota_rl_cap());
}

/* the most buckets one capped namespace may hold */
uint32
quota_rl_cap(void)
{
	if (quota_rl_tenant_entries > 0)
		return (uint32) quota_rl_tenant_entries;
	return (uint32) Max(quota_rl_shared->nentries / 4, 1);
}

static int32 *
quota_rl_ns_head(Oid dbid, int64 tenant_id)
{
	uint64		t = (uint64) tenant_id;
	uint32		h = hash_combine(murmurhash32((uint32) dbid),
								 murmurhash32((uint32) (t ^ (t >> 32))));

	return &quota_rl_ns_heads[h & (uint32) (quota_rl_shared->ns_nbuckets - 1)];
}

/* the record of (this database, tenant_id), namespace lock held */
static int32
quota_rl_ns_find(int64 tenant_id)
{
	int32		i = *quota_rl_ns_head(MyDatabaseId, tenant_id);

	while (i != QUOTA_RL_NONE)
	{
		if (quota_rl_ns_records[i].dbid == MyDatabaseId && quota_rl_ns_records[i].tenant_id == tenant_id)
			return i;
		i = quota_rl_ns_records[i].next;
	}
	return QUOTA_RL_NONE;
}

/*
 * quota_rl_ns_create
 *		A new record for (this database, tenant_id), namespace lock held
 *		EXCLUSIVE; when none is free, records whose count is 0 are freed
 *		first.  QUOTA_RL_NONE when every record counts a bucket.
 */
static int32
quota_rl_ns_create(int64 tenant_id)
{
	int32	   *head;
	int32		i;

	if (quota_rl_shared->ns_free == QUOTA_RL_NONE)
	{
		int32		b;

		for (b = 0; b < quota_rl_shared->ns_nbuckets; b++)
		{
			int32	   *link = &quota_rl_ns_heads[b];

			while (*link != QUOTA_RL_NONE)
			{
				QuotaRlNs  *n = &quota_rl_ns_records[*link];

				if (pg_atomic_read_u32(&n->count) == 0)
				{
					int32		j = *link;

					*link = n->next;
					n->dbid = InvalidOid;
					n->next = quota_rl_shared->ns_free;
					quota_rl_shared->ns_free = j;
				}
				else
					link = &n->next;
			}
		}
	}
	if (quota_rl_shared->ns_free == QUOTA_RL_NONE)
		return QUOTA_RL_NONE;
	i = quota_rl_shared->ns_free;
	quota_rl_shared->ns_free = quota_rl_ns_records[i].next;
	quota_rl_ns_records[i].dbid = MyDatabaseId;
	quota_rl_ns_records[i].tenant_id = tenant_id;
	pg_atomic_write_u32(&quota_rl_ns_records[i].count, 0);
	pg_atomic_write_u64(&quota_rl_ns_records[i].full_until, 0);
	head = quota_rl_ns_head(MyDatabaseId, tenant_id);
	quota_rl_ns_records[i].next = *head;
	*head = i;
	return i;
}

/*
 * quota_rl_ns_reserve
 *		Count one more bucket in the namespace of tenant_id while it holds
 *		fewer than cap (no lock held on entry or exit).  True: reserved in
 *		record *ns.  False: at the cap; *ns is its record and *until its
 *		full_until mark.  Creates the record when missing.
 */
static bool
quota_rl_ns_reserve(int64 tenant_id, uint32 cap, int32 *ns, int64 *until,
					bool *share_full)
{
	LWLock	   *lock = quota_rl_lock(QUOTA_RL_NS_LOCK);
	int32		i;
	uint32		c;
	bool		ok = true;

	LWLockAcquire(lock, LW_SHARED);
	i = quota_rl_ns_find(tenant_id);
	if (i == QUOTA_RL_NONE)
	{
		LWLockRelease(lock);
		LWLockAcquire(lock, LW_EXCLUSIVE);
		i = quota_rl_ns_find(tenant_id);
		if (i == QUOTA_RL_NONE)
			i = quota_rl_ns_create(tenant_id);
		if (i == QUOTA_RL_NONE)
		{
			LWLockRelease(lock);
			quota_rl_raise_full();
		}
	}
	/* records are freed only under the lock EXCLUSIVE: i stays ours */
	c = pg_atomic_read_u32(&quota_rl_ns_records[i].count);
	for (;;)
	{
		if (c >= cap)
		{
			ok = false;
			*until = (int64) pg_atomic_read_u64(&quota_rl_ns_records[i].full_until);
			break;
		}
		if (pg_atomic_compare_exchange_u32(&quota_rl_ns_records[i].count, &c, c + 1))
			break;
	}
	*share_full = false;
	if (ok)
	{
		/* and one more in the share of all capped namespaces */
		uint32		share = quota_rl_share();
		uint32		t = pg_atomic_read_u32(&quota_rl_shared->capped);

		for (;;)
		{
			if (t >= share)
			{
				/* (the lock is held: the record cannot be freed meanwhile) */
				pg_atomic_fetch_sub_u32(&quota_rl_ns_records[i].count, 1);
				ok = false;
				*share_full = true;
				*until = 0;
				break;
			}
			if (pg_atomic_compare_exchange_u32(&quota_rl_shared->capped, &t, t + 1))
				break;
		}
	}
	LWLockRelease(lock);
	*ns = i;
	return ok;
}

/* give a reservation back (QUOTA_RL_NONE: none) */
void
quota_rl_ns_release(int32 ns)
{
	if (ns != QUOTA_RL_NONE)
	{
		pg_atomic_fetch_sub_u32(&quota_rl_ns_records[ns].count, 1);
		pg_atomic_fetch_sub_u32(&quota_rl_shared->capped, 1);
	}
}

/* give a hold (quota_rl_ns_hold) back (QUOTA_RL_NONE: none) */
void
quota_rl_ns_unhold(int32 ns)
{
	if (ns != QUOTA_RL_NONE)
		pg_atomic_fetch_sub_u32(&quota_rl_ns_records[ns].count, 1);
}

/*
 * quota_rl_ns_hold
 *		Keep the existing record of tenant_id's namespace from being freed
 *		(a reservation beyond the cap): its index, or QUOTA_RL_NONE when the
 *		namespace has none.  Give it back with quota_rl_ns_unhold.
 */
int32
quota_rl_ns_hold(int64 tenant_id)
{
	LWLock	   *lock = quota_rl_lock(QUOTA_RL_NS_LOCK);
	int32		i;

	LWLockAcquire(lock, LW_SHARED);
	i = quota_rl_ns_find(tenant_id);
	if (i != QUOTA_RL_NONE)
		pg_atomic_fetch_add_u32(&quota_rl_ns_records[i].count, 1);
	LWLockRelease(lock);
	return i;
}

pg_noreturn static void quota_rl_raise_share_full(void);

static void
quota_rl_raise_share_full(void)
{
	ereport(ERROR,
			(errcode(ERRCODE_OUT_OF_MEMORY),
			 errmsg("the rate-limit keys of callers fill their share of the table"),
			 errdetail("The keys of rate_limit_check() and of tenants' tenant_rate_limit_check() hold %u live buckets, half the table; the other half is kept for configured rate limits.",
					   quota_rl_share()),
			 errhint("Wait until buckets become idle (at most one day), reset them with quota_ext.rate_limit_reset(), or raise quota_ext.rate_limit_slots.")));
}

pg_noreturn static void quota_rl_raise_ns_full(int64 tenant_id, uint32 cap);

static void
quota_rl_raise_ns_full(int64 tenant_id, uint32 cap)
{
	if (tenant_id == 0)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("too many rate-limit buckets for the keys of rate_limit_check()"),
				 errdetail("The keys of rate_limit_check() in this database hold %u live buckets, the most they may hold (quota_ext.rate_limit_tenant_entries); tenants' own keys and configured rules are not affected.",
						   cap),
				 errhint("Wait until buckets become idle (at most one day), reset them with quota_ext.rate_limit_reset(), or raise quota_ext.rate_limit_tenant_entries.")));
	ereport(ERROR,
			(errcode(ERRCODE_OUT_OF_MEMORY),
			 errmsg("too many rate-limit buckets for tenant %lld", (long long) tenant_id),
			 errdetail("The tenant's keys of tenant_rate_limit_check() hold %u live buckets, the most one tenant may hold (quota_ext.rate_limit_tenant_entries); other tenants and configured rules are not affected.",
					   cap),
			 errhint("Wait until buckets become idle (at most one day), reset them with quota_ext.rate_limit_reset(), or raise quota_ext.rate_limit_tenant_entries.")));
}

/*
 * quota_rl_ns_claim
 *		A reservation for one more bucket in b's namespace (no lock held):
 *		its record.  At the cap, and unless the namespace's earliest live
 *		TAT is still ahead, every partition is reclaimed once (one lock at a
 *		time) and the cap tried again; then 53200 for this namespace only.
 */
static int32
quota_rl_ns_claim(const QuotaRlBucket *b)
{
	uint32		cap = quota_rl_cap();
	int			attempt;

	for (attempt = 0;; attempt++)
	{
		int32		ns;
		int64		until = 0;
		int64		now;
		int64		min_tat = PG_INT64_MAX;
		int			v;
		bool		share_full;

		if (quota_rl_ns_reserve(b->ns_tenant, cap, &ns, &until, &share_full))
			return ns;
		now = quota_rl_now();
		if (attempt > 0 && share_full)
			quota_rl_raise_share_full();
		if (attempt > 0 || now < until)
			quota_rl_raise_ns_full(b->ns_tenant, cap);

		for (v = 0; v < QUOTA_RL_PARTITIONS; v++)
		{
			LWLockAcquire(quota_rl_lock(v), LW_EXCLUSIVE);
			quota_rl_reclaim(v, now, ns, &min_tat);
			LWLockRelease(quota_rl_lock(v));
		}

		/* still at the cap: none of its buckets is idle before min_tat */
		LWLockAcquire(quota_rl_lock(QUOTA_RL_NS_LOCK), LW_SHARED);
		if (quota_rl_ns_records[ns].dbid == MyDatabaseId && quota_rl_ns_records[ns].tenant_id == b->ns_tenant &&
			pg_atomic_read_u32(&quota_rl_ns_records[ns].count) >= cap && min_tat != PG_INT64_MAX)
			pg_atomic_write_u64(&quota_rl_ns_records[ns].full_until, (uint64) min_tat);
		LWLockRelease(quota_rl_lock(QUOTA_RL_NS_LOCK));
	}
}

/*
 * quota_rl_check_one
 *		One CL.THROTTLE on one bucket (see the locking protocol above).
 */
void
quota_rl_check_one(QuotaRlBucket *b, int64 quantity)
{
	LWLock	   *lock = quota_rl_lock(b->part);
	QuotaGcraStatus st;
	int			attempt;

	for (attempt = 0; attempt < QUOTA_RL_ATTEMPTS; attempt++)
	{
		QuotaRlEntry *e;
		int64		now;
		int32		ns;

		LWLockAcquire(lock, LW_SHARED);
		e = quota_rl_lookup(b->part, b->key);
		if (e != NULL)
		{
			uint64		old = pg_atomic_read_u64(&e->tat);

			for (;;)
			{
				now = quota_rl_now();
				st = QuotaGcraEval((int64) old, now, b->max_burst, b->count,
								   b->period, quantity, &b->r);
				if (st != QUOTA_GCRA_OK || b->r.limited || quantity == 0)
					break;
				/* on failure, old is the TAT another backend stored */
				if (pg_atomic_compare_exchange_u64(&e->tat, &old,
												   (uint64) b->r.new_tat))
					break;
			}
			LWLockRelease(lock);
			if (st != QUOTA_GCRA_OK)
				QuotaGcraRaise(st, b->max_burst, b->count, b->period, quantity);
			return;
		}

		/* no entry: the answer for a fresh bucket */
		now = quota_rl_now();
		st = QuotaGcraEval(0, now, b->max_burst, b->count, b->period,
						   quantity, &b->r);
		LWLockRelease(lock);
		if (st != QUOTA_GCRA_OK)
			QuotaGcraRaise(st, b->max_burst, b->count, b->period, quantity);
		if (b->r.limited || quantity == 0)
			return;

		/*
		 * It consumes: count it in its namespace (an ad-hoc key), link an
		 * entry, then decide again under that lock.  The reservation passes
		 * to a new entry, and is given back when the key has one by now.
		 */
		ns = b->capped ? quota_rl_ns_claim(b) : QUOTA_RL_NONE;
		LWLockAcquire(lock, LW_EXCLUSIVE);
		now = quota_rl_now();
		e = quota_rl_lookup(b->part, b->key);
		if (e == NULL)
		{
			if (quota_rl_shared->parts[b->part].free_head == QUOTA_RL_NONE)
				quota_rl_reclaim(b->part, now, QUOTA_RL_NONE, NULL);
			e = quota_rl_link(b->part, b->key, ns);
			if (e != NULL)
				ns = QUOTA_RL_NONE;
		}
		if (e == NULL)
		{
			LWLockRelease(lock);
			quota_rl_ns_release(ns);
			quota_rl_refill(b->part);
			continue;
		}
		st = QuotaGcraEval((int64) pg_atomic_read_u64(&e->tat), now,
						   b->max_burst, b->count, b->period, quantity, &b->r);
		if (st == QUOTA_GCRA_OK && !b->r.limited)
			pg_atomic_write_u64(&e->tat, (uint64) b->r.new_tat);
		LWLockRelease(lock);
		quota_rl_ns_release(ns);
		if (st != QUOTA_GCRA_OK)
			QuotaGcraRaise(st, b->max_burst, b->count, b->period, quantity);
		return;
	}
	quota_rl_raise_full();
}

/*
 * quota_rl_peek_all
 *		What quota_rl_check_all would answer for `quantity`, charging
 *		nothing: each bucket is evaluated under its partition's shared
 *		lock and never written; a bucket without an entry is fresh.
 *		Returns true when every one allows.
 */
bool
quota_rl_peek_all(QuotaRlBucket *buckets, int n, int64 quantity)
{
	bool		allowed = true;
	int			i;

	for (i = 0; i < n; i++)
	{
		QuotaRlBucket *b = &buckets[i];
		LWLock	   *lock = quota_rl_lock(b->part);
		QuotaRlEntry *e;
		QuotaGcraStatus st;

		LWLockAcquire(lock, LW_SHARED);
		e = quota_rl_lookup(b->part, b->key);
		st = QuotaGcraEval(e ? (int64) pg_atomic_read_u64(&e->tat) : 0, quota_rl_now(),
						   b->max_burst, b->count, b->period, quantity, &b->r);
		LWLockRelease(lock);
		if (st != QUOTA_GCRA_OK)
			QuotaGcraRaise(st, b->max_burst, b->count, b->period, quantity);
		allowed &= !b->r.limited;
	}
	return allowed;
}

static int
quota_rl_int_cmp(const void *a, const void *b)
{
	int			x = *(const int *) a;
	int			y = *(const int *) b;

	return (x > y) - (x < y);
}

/*
 * quota_rl_check_all
 *		Several buckets, all or nothing, under their partition locks taken
 *		EXCLUSIVE in ascending order.  Returns true when every one allows.
 */
bool
quota_rl_check_all(QuotaRlBucket *buckets, int n, int64 quantity)
{
	int			parts[QUOTA_RL_MAX_RULES];
	int			nparts = 0;
	int			attempt;
	int			i;

	if (n == 1)
	{
		quota_rl_check_one(&buckets[0], quantity);
		return !buckets[0].r.limited;
	}

	for (i = 0; i < n; i++)
	{
		int			j;

		for (j = 0; j < nparts; j++)
			if (parts[j] == buckets[i].part)
				break;
		if (j == nparts)
			parts[nparts++] = buckets[i].part;
	}
	qsort(parts, nparts, sizeof(int), quota_rl_int_cmp);

	for (attempt = 0; attempt < QUOTA_RL_ATTEMPTS; attempt++)
	{
		int64		now;
		bool		limited = false;
		int			missing = -1;
		int			failed = -1;
		QuotaGcraStatus st = QUOTA_GCRA_OK;

		for (i = 0; i < nparts; i++)
			LWLockAcquire(quota_rl_lock(parts[i]), LW_EXCLUSIVE);
		now = quota_rl_now();

		for (i = 0; i < n; i++)
			buckets[i].entry = quota_rl_lookup(buckets[i].part, buckets[i].key);

		/*
		 * A bucket without an entry may need one from a partition whose free
		 * list is empty: reclaim that partition now, before any entry is
		 * relied on (a reclaim unlinks every idle entry, which is then
		 * looked up again as missing; its answer is the same, an idle TAT
		 * counting as none).
		 */
		if (quantity > 0)
		{
			bool		reclaimed = false;

			for (i = 0; i < n; i++)
				if (buckets[i].entry == NULL &&
					quota_rl_shared->parts[buckets[i].part].free_head == QUOTA_RL_NONE &&
					quota_rl_reclaim(buckets[i].part, now, QUOTA_RL_NONE, NULL) > 0)
					reclaimed = true;
			if (reclaimed)
				for (i = 0; i < n; i++)
					buckets[i].entry = quota_rl_lookup(buckets[i].part, buckets[i].key);
		}

		for (i = 0; i < n && st == QUOTA_GCRA_OK; i++)
		{
			QuotaRlBucket *b = &buckets[i];

			st = QuotaGcraEval(b->entry ? (int64) pg_atomic_read_u64(&b->entry->tat) : 0,
							   now, b->max_burst, b->count, b->period,
							   quantity, &b->r);
			if (st != QUOTA_GCRA_OK)
				failed = i;
			else if (b->r.limited)
				limited = true;
		}

		if (st == QUOTA_GCRA_OK && !limited && quantity > 0)
		{
			/* link every missing entry before storing anything */
			for (i = 0; i < n && missing < 0; i++)
			{
				QuotaRlBucket *b = &buckets[i];

				if (b->entry == NULL)
					b->entry = quota_rl_link(b->part, b->key, QUOTA_RL_NONE);
				if (b->entry == NULL)
					missing = i;
			}
			if (missing < 0)
				for (i = 0; i < n; i++)
					pg_atomic_write_u64(&buckets[i].entry->tat,
										(uint64) buckets[i].r.new_tat);
		}

		for (i = nparts - 1; i >= 0; i--)
			LWLockRelease(quota_rl_lock(parts[i]));

		if (failed >= 0)
			QuotaGcraRaise(st, buckets[failed].max_burst, buckets[failed].count,
						   buckets[failed].period, quantity);
		if (missing < 0)
			return !limited;
		quota_rl_refill(buckets[missing].part);
	}
	quota_rl_raise_full();
}

/* unlink the entry of one digest, if any (no lock held): 1 or 0 */
int64
quota_rl_remove_key(const uint64 *key)
{
	int			part = quota_rl_partition(key);
	QuotaRlPartition *p = &quota_rl_shared->parts[part];
	int32	   *link;
	int64		n = 0;

	LWLockAcquire(quota_rl_lock(part), LW_EXCLUSIVE);
	for (link = quota_rl_head(part, key); *link != QUOTA_RL_NONE;
		 link = &rl_entries[*link].next)
	{
		int32		i = *link;
		QuotaRlEntry *e = &rl_entries[i];

		if (e->key[0] == key[0] && e->key[1] == key[1])
		{
			*link = e->next;
			quota_rl_free(p, i);
			n = 1;
			break;
		}
	}
	LWLockRelease(quota_rl_lock(part));
	return n;
}

/*
 * quota_rl_remove_ns
 *		Unlink every entry of namespace record ns (held by the caller, so
 *		that it is not reused meanwhile), one partition at a time.
 */
int64
quota_rl_remove_ns(int32 ns)
{
	int64		n = 0;
	int			part;

	for (part = 0; part < QUOTA_RL_PARTITIONS; part++)
	{
		QuotaRlPartition *p = &quota_rl_shared->parts[part];
		int32	   *heads = &rl_heads[(Size) part * quota_rl_shared->nbuckets];
		int32		b;

		LWLockAcquire(quota_rl_lock(part), LW_EXCLUSIVE);
		for (b = 0; b < quota_rl_shared->nbuckets; b++)
		{
			int32	   *link = &heads[b];

			while (*link != QUOTA_RL_NONE)
			{
				int32		i = *link;
				QuotaRlEntry *e = &rl_entries[i];

				if (e->ns == ns)
				{
					*link = e->next;
					quota_rl_free(p, i);
					n++;
				}
				else
					link = &e->next;
			}
		}
		LWLockRelease(quota_rl_lock(part));
	}
	return n;
}
