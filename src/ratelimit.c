/*-------------------------------------------------------------------------
 *
 * ratelimit.c
 *		Rate limits: GCRA buckets in shared memory, the SQL functions that
 *		check them, and the per-tenant rules that invoke() applies.
 *
 * Each bucket is one theoretical arrival time (TAT, see gcra.c) in a
 * fixed-size table in shared memory, requested in shmem_request_hook and
 * set up in shmem_startup_hook, so the library must be in
 * shared_preload_libraries (otherwise the functions that need the table
 * raise 55000).  Nothing is written to WAL and no row is locked: a check
 * is not undone when the caller's transaction rolls back (a client cannot
 * get its budget back by aborting), and the table starts empty at every
 * server start, like Redis without persistence.
 *
 * Keys.  A bucket is named by a 128-bit SipHash-2-4 tag over a namespace
 * and the key: 'g' for quota_ext.rate_limit_check() (one namespace for
 * every caller), 't' plus the tenant id for tenant_rate_limit_check(), 'r'
 * plus the tenant id and rule id for configured rules, each also with the
 * database OID (the table is cluster-wide; tenant 1 of one database is not
 * tenant 1 of another).  The fields before the key have fixed widths, so
 * two different (namespace, key) pairs never hash the same input.  SipHash
 * is a keyed pseudo-random function; its 128-bit key is drawn with
 * pg_strong_random() at every server start and lives only in this shared
 * memory.  Without it nobody can compute a tag, so a collision cannot be
 * crafted, and an accidental one among n live keys has probability about
 * n^2 / 2^129 (below 10^-22 for 10^8 keys): no practical concern.  The key
 * text itself is not stored.  (Until 0.1.0 was benchmarked this was
 * SHA-256 through pg_cryptohash, whose per-call OpenSSL context set-up
 * cost more than the rest of the check; the table is rebuilt at every
 * start, so the digest can change between builds.)
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
 * buckets (by default a quarter of the slots): rate_limit_check's keys plus
 * one tenant's keys can never take more than half the table, and what is
 * left serves every other tenant and the configured rules.  The buckets of
 * configured rules ('r') are not capped: there is one per rule (and one
 * per tenant for the tier default), so the configuration bounds them.
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

PG_FUNCTION_INFO_V1(rate_limit_check);
PG_FUNCTION_INFO_V1(tenant_rate_limit_check);
PG_FUNCTION_INFO_V1(rate_limit_apply);
PG_FUNCTION_INFO_V1(rate_limit_status);
PG_FUNCTION_INFO_V1(rate_limit_namespaces);
PG_FUNCTION_INFO_V1(rate_limit_reset_buckets);

#define QUOTA_RL_PARTITIONS		64
#define QUOTA_RL_TRANCHE		"quota_ext_ratelimit"
#define QUOTA_RL_NONE			(-1)
#define QUOTA_RL_MAX_KEY		1024
#define QUOTA_RL_HEAD			(1 + sizeof(Oid) + 2 * sizeof(int64))
#define QUOTA_RL_MAX_RULES		8	/* at most 4 scopes + the tier default */
#define QUOTA_RL_REFILL_BATCH	32
#define QUOTA_RL_ATTEMPTS		4
#define QUOTA_RL_NS_LOCK		QUOTA_RL_PARTITIONS /* the namespace lock */
#define QUOTA_RL_NS_SPARE		64	/* records beyond one per slot */
#define NS_PER_SEC				INT64CONST(1000000000)

/* one bucket: 32 bytes */
typedef struct QuotaRlEntry
{
	pg_atomic_uint64 tat;		/* ns on CLOCK_MONOTONIC; 0 = none */
	uint64		key[2];			/* SipHash-2-4-128(namespace, key) */
	int32		next;			/* chain or free list; QUOTA_RL_NONE ends */
	int32		ns;				/* namespace record, or QUOTA_RL_NONE (a rule) */
} QuotaRlEntry;

/* a capped namespace: 32 bytes */
typedef struct QuotaRlNs
{
	Oid			dbid;
	int32		next;			/* chain or free list (namespace lock) */
	int64		tenant_id;		/* 0: the keys of rate_limit_check() */
	pg_atomic_uint32 count;		/* linked buckets + reservations */
	int32		unused;
	pg_atomic_uint64 full_until;	/* at the cap: no bucket idle before (ns) */
} QuotaRlNs;

/* per-partition state, protected by the partition's lock */
typedef struct QuotaRlPartition
{
	int32		free_head;
	int32		nfree;
	char		pad[PG_CACHE_LINE_SIZE - 2 * sizeof(int32)];
} QuotaRlPartition;

typedef struct QuotaRlShared
{
	uint64		secret[2];		/* SipHash key, drawn at server start */
	int32		nentries;
	int32		nbuckets;		/* chain heads per partition, power of 2 */
	int32		nns;			/* namespace records */
	int32		ns_nbuckets;	/* their chain heads, power of 2 */
	int32		ns_free;		/* free list of records (namespace lock) */
	QuotaRlPartition parts[QUOTA_RL_PARTITIONS];
	/*
	 * then int32 heads[QUOTA_RL_PARTITIONS * nbuckets], QuotaRlEntry[],
	 * int32 ns_heads[ns_nbuckets], QuotaRlNs[nns]
	 */
} QuotaRlShared;

/* a bucket to check: its parameters, where it lives, its answer */
typedef struct QuotaRlBucket
{
	int64		rule_id;
	int64		max_burst;
	int64		count;
	int64		period;
	uint64		key[2];
	int			part;
	bool		capped;			/* an ad-hoc key: counted in its namespace */
	int64		ns_tenant;		/* which (0: rate_limit_check's) */
	QuotaRlEntry *entry;
	QuotaGcraResult r;
} QuotaRlBucket;

static int	quota_rl_slots = 100000;
static int	quota_rl_tenant_entries = 0;	/* 0: a quarter of the slots */

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static QuotaRlShared *rl = NULL;
static LWLockPadded *rl_locks = NULL;
static int32 *rl_heads = NULL;
static QuotaRlEntry *rl_entries = NULL;
static int32 *rl_ns_heads = NULL;
static QuotaRlNs *rl_ns = NULL;

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

static void
quota_rl_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(quota_rl_shmem_size());
	RequestNamedLWLockTranche(QUOTA_RL_TRANCHE, QUOTA_RL_PARTITIONS + 1);
}

static void
quota_rl_shmem_startup(void)
{
	bool		found;
	char	   *base;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	base = ShmemInitStruct("quota_ext rate limits", quota_rl_shmem_size(), &found);
	base = (char *) TYPEALIGN(PG_CACHE_LINE_SIZE, base);
	rl = (QuotaRlShared *) base;
	rl_heads = (int32 *) (base + quota_rl_heads_offset());
	rl_entries = (QuotaRlEntry *) (base + quota_rl_entries_offset(quota_rl_slots));
	rl_ns_heads = (int32 *) (base + quota_rl_ns_heads_offset(quota_rl_slots));
	rl_ns = (QuotaRlNs *) (base + quota_rl_ns_offset(quota_rl_slots));
	rl_locks = GetNamedLWLockTranche(QUOTA_RL_TRANCHE);
	if (!found)
	{
		int			i;

		if (!pg_strong_random(rl->secret, sizeof(rl->secret)))
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("could not generate a random key for the rate-limit table")));
#ifdef USE_ASSERT_CHECKING
		quota_rl_siphash_selftest();
#endif
		rl->nentries = quota_rl_slots;
		rl->nbuckets = quota_rl_nbuckets(quota_rl_slots);
		for (i = 0; i < QUOTA_RL_PARTITIONS * rl->nbuckets; i++)
			rl_heads[i] = QUOTA_RL_NONE;
		for (i = 0; i < QUOTA_RL_PARTITIONS; i++)
		{
			rl->parts[i].free_head = QUOTA_RL_NONE;
			rl->parts[i].nfree = 0;
		}
		/* deal the entries out to the partitions' free lists */
		for (i = rl->nentries - 1; i >= 0; i--)
		{
			QuotaRlPartition *p = &rl->parts[i % QUOTA_RL_PARTITIONS];

			pg_atomic_init_u64(&rl_entries[i].tat, 0);
			rl_entries[i].key[0] = rl_entries[i].key[1] = 0;
			rl_entries[i].ns = QUOTA_RL_NONE;
			rl_entries[i].next = p->free_head;
			p->free_head = i;
			p->nfree++;
		}
		/* the namespace records, all free */
		rl->nns = quota_rl_ns_count(quota_rl_slots);
		rl->ns_nbuckets = quota_rl_ns_nbuckets(quota_rl_slots);
		for (i = 0; i < rl->ns_nbuckets; i++)
			rl_ns_heads[i] = QUOTA_RL_NONE;
		rl->ns_free = QUOTA_RL_NONE;
		for (i = rl->nns - 1; i >= 0; i--)
		{
			rl_ns[i].dbid = InvalidOid;
			rl_ns[i].tenant_id = 0;
			pg_atomic_init_u32(&rl_ns[i].count, 0);
			pg_atomic_init_u64(&rl_ns[i].full_until, 0);
			rl_ns[i].next = rl->ns_free;
			rl->ns_free = i;
		}
	}
	LWLockRelease(AddinShmemInitLock);
}

/*
 * QuotaRateLimitInit
 *		Called by _PG_init.  Only a preloading postmaster defines the
 *		PGC_POSTMASTER setting and asks for shared memory.
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

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = quota_rl_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = quota_rl_shmem_startup;
}

/* raise 55000 unless the table exists */
static void
quota_rl_require(void)
{
	if (rl == NULL)
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
			 errdetail("All %d slots hold buckets that are not idle.", rl->nentries),
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
 * quota_rl_siphash
 *		SipHash-2-4 with a 128-bit tag (Aumasson and Bernstein, "SipHash: a
 *		fast short-input PRF", and the reference siphash.c with outlen 16),
 *		under the 128-bit secret k.  Checked against the reference
 *		vectors_sip128 in assert-enabled builds (quota_rl_siphash_selftest).
 */
#define QUOTA_ROTL64(x, b)	(((x) << (b)) | ((x) >> (64 - (b))))
#define QUOTA_SIPROUND \
	do { \
		v0 += v1; v1 = QUOTA_ROTL64(v1, 13); v1 ^= v0; v0 = QUOTA_ROTL64(v0, 32); \
		v2 += v3; v3 = QUOTA_ROTL64(v3, 16); v3 ^= v2; \
		v0 += v3; v3 = QUOTA_ROTL64(v3, 21); v3 ^= v0; \
		v2 += v1; v1 = QUOTA_ROTL64(v1, 17); v1 ^= v2; v2 = QUOTA_ROTL64(v2, 32); \
	} while (0)

static inline uint64
quota_rl_le64(const uint8 *p)
{
	uint64		x;

	memcpy(&x, p, sizeof(x));
#ifdef WORDS_BIGENDIAN
	x = pg_bswap64(x);
#endif
	return x;
}

static void
quota_rl_siphash(const uint8 *in, size_t len, const uint64 *k, uint64 *out)
{
	uint64		v0 = UINT64CONST(0x736f6d6570736575) ^ k[0];
	uint64		v1 = UINT64CONST(0x646f72616e646f6d) ^ k[1] ^ 0xee;
	uint64		v2 = UINT64CONST(0x6c7967656e657261) ^ k[0];
	uint64		v3 = UINT64CONST(0x7465646279746573) ^ k[1];
	uint64		b = ((uint64) len) << 56;
	const uint8 *end = in + (len & ~(size_t) 7);
	uint64		m;

	for (; in != end; in += 8)
	{
		m = quota_rl_le64(in);
		v3 ^= m;
		QUOTA_SIPROUND;
		QUOTA_SIPROUND;
		v0 ^= m;
	}
	switch (len & 7)
	{
		case 7:
			b |= ((uint64) in[6]) << 48;
			/* FALLTHROUGH */
		case 6:
			b |= ((uint64) in[5]) << 40;
			/* FALLTHROUGH */
		case 5:
			b |= ((uint64) in[4]) << 32;
			/* FALLTHROUGH */
		case 4:
			b |= ((uint64) in[3]) << 24;
			/* FALLTHROUGH */
		case 3:
			b |= ((uint64) in[2]) << 16;
			/* FALLTHROUGH */
		case 2:
			b |= ((uint64) in[1]) << 8;
			/* FALLTHROUGH */
		case 1:
			b |= (uint64) in[0];
	}
	v3 ^= b;
	QUOTA_SIPROUND;
	QUOTA_SIPROUND;
	v0 ^= b;
	v2 ^= 0xee;
	QUOTA_SIPROUND;
	QUOTA_SIPROUND;
	QUOTA_SIPROUND;
	QUOTA_SIPROUND;
	out[0] = v0 ^ v1 ^ v2 ^ v3;
	v1 ^= 0xdd;
	QUOTA_SIPROUND;
	QUOTA_SIPROUND;
	QUOTA_SIPROUND;
	QUOTA_SIPROUND;
	out[1] = v0 ^ v1 ^ v2 ^ v3;
}

#ifdef USE_ASSERT_CHECKING
/*
 * quota_rl_siphash_selftest
 *		The reference vectors_sip128 for messages 00 01 .. (n-1) under the
 *		key 00 01 .. 0f, n = 0, 7, 8 and 9 (each tag as two little-endian
 *		words).
 */
static void
quota_rl_siphash_selftest(void)
{
	static const struct
	{
		int			len;
		uint64		tag[2];
	}			v[] = {
		{0, {UINT64CONST(0xe6a825ba047f81a3), UINT64CONST(0x930255c71472f66d)}},
		{7, {UINT64CONST(0x53c1dbd8beebf1a1), UINT64CONST(0x3982f01fa64ab8c0)}},
		{8, {UINT64CONST(0x61f55862baa9623b), UINT64CONST(0xb49714f364e2830f)}},
		{9, {UINT64CONST(0xabbad90a06994426), UINT64CONST(0xed716dbb028b7fc4)}},
	};
	uint8		msg[16];
	uint64		key[2];
	uint64		out[2];
	int			i;

	for (i = 0; i < 16; i++)
		msg[i] = (uint8) i;
	key[0] = quota_rl_le64(msg);
	key[1] = quota_rl_le64(msg + 8);
	for (i = 0; i < lengthof(v); i++)
	{
		quota_rl_siphash(msg, v[i].len, key, out);
		Assert(out[0] == v[i].tag[0] && out[1] == v[i].tag[1]);
	}
}
#endif

/*
 * quota_rl_digest
 *		128 bits of keyed SipHash over kind, the database, a, b (fixed
 *		width) and the key.  The secret is drawn at server start and never
 *		leaves shared memory, so nobody outside the server can compute
 *		digests, let alone choose keys that collide; and every start has a
 *		new one, which is harmless because the table starts empty.
 */
static void
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
	quota_rl_siphash(buf, QUOTA_RL_HEAD + keylen, rl->secret, out);
}

static inline int
quota_rl_partition(const uint64 *key)
{
	return (int) (key[0] % QUOTA_RL_PARTITIONS);
}

static inline int32 *
quota_rl_head(int part, const uint64 *key)
{
	uint64		b = (key[0] / QUOTA_RL_PARTITIONS) & (uint64) (rl->nbuckets - 1);

	return &rl_heads[(Size) part * rl->nbuckets + b];
}

static inline LWLock *
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
		QuotaRlNs  *n = &rl_ns[e->ns];

		/* before the count drops: at 0 the record may be reused */
		pg_atomic_write_u64(&n->full_until, 0);
		pg_atomic_fetch_sub_u32(&n->count, 1);
		e->ns = QUOTA_RL_NONE;
	}
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
	QuotaRlPartition *p = &rl->parts[part];
	int32	   *heads = &rl_heads[(Size) part * rl->nbuckets];
	int			n = 0;
	int32		b;

	for (b = 0; b < rl->nbuckets; b++)
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
				quota_rl_unlinked(e);
				e->next = p->free_head;
				p->free_head = i;
				p->nfree++;
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
	QuotaRlPartition *p = &rl->parts[part];
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
		QuotaRlPartition *p = &rl->parts[v];
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
		QuotaRlPartition *p = &rl->parts[part];
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

/* the most buckets one capped namespace may hold */
static uint32
quota_rl_cap(void)
{
	if (quota_rl_tenant_entries > 0)
		return (uint32) quota_rl_tenant_entries;
	return (uint32) Max(rl->nentries / 4, 1);
}

static int32 *
quota_rl_ns_head(Oid dbid, int64 tenant_id)
{
	uint64		t = (uint64) tenant_id;
	uint32		h = hash_combine(murmurhash32((uint32) dbid),
								 murmurhash32((uint32) (t ^ (t >> 32))));

	return &rl_ns_heads[h & (uint32) (rl->ns_nbuckets - 1)];
}

/* the record of (this database, tenant_id), namespace lock held */
static int32
quota_rl_ns_find(int64 tenant_id)
{
	int32		i = *quota_rl_ns_head(MyDatabaseId, tenant_id);

	while (i != QUOTA_RL_NONE)
	{
		if (rl_ns[i].dbid == MyDatabaseId && rl_ns[i].tenant_id == tenant_id)
			return i;
		i = rl_ns[i].next;
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

	if (rl->ns_free == QUOTA_RL_NONE)
	{
		int32		b;

		for (b = 0; b < rl->ns_nbuckets; b++)
		{
			int32	   *link = &rl_ns_heads[b];

			while (*link != QUOTA_RL_NONE)
			{
				QuotaRlNs  *n = &rl_ns[*link];

				if (pg_atomic_read_u32(&n->count) == 0)
				{
					int32		j = *link;

					*link = n->next;
					n->dbid = InvalidOid;
					n->next = rl->ns_free;
					rl->ns_free = j;
				}
				else
					link = &n->next;
			}
		}
	}
	if (rl->ns_free == QUOTA_RL_NONE)
		return QUOTA_RL_NONE;
	i = rl->ns_free;
	rl->ns_free = rl_ns[i].next;
	rl_ns[i].dbid = MyDatabaseId;
	rl_ns[i].tenant_id = tenant_id;
	pg_atomic_write_u32(&rl_ns[i].count, 0);
	pg_atomic_write_u64(&rl_ns[i].full_until, 0);
	head = quota_rl_ns_head(MyDatabaseId, tenant_id);
	rl_ns[i].next = *head;
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
quota_rl_ns_reserve(int64 tenant_id, uint32 cap, int32 *ns, int64 *until)
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
	c = pg_atomic_read_u32(&rl_ns[i].count);
	for (;;)
	{
		if (c >= cap)
		{
			ok = false;
			*until = (int64) pg_atomic_read_u64(&rl_ns[i].full_until);
			break;
		}
		if (pg_atomic_compare_exchange_u32(&rl_ns[i].count, &c, c + 1))
			break;
	}
	LWLockRelease(lock);
	*ns = i;
	return ok;
}

/* give a reservation back (QUOTA_RL_NONE: none) */
static inline void
quota_rl_ns_release(int32 ns)
{
	if (ns != QUOTA_RL_NONE)
		pg_atomic_fetch_sub_u32(&rl_ns[ns].count, 1);
}

/*
 * quota_rl_ns_hold
 *		Keep the existing record of tenant_id's namespace from being freed
 *		(a reservation beyond the cap): its index, or QUOTA_RL_NONE when the
 *		namespace has none.  Give it back with quota_rl_ns_release.
 */
static int32
quota_rl_ns_hold(int64 tenant_id)
{
	LWLock	   *lock = quota_rl_lock(QUOTA_RL_NS_LOCK);
	int32		i;

	LWLockAcquire(lock, LW_SHARED);
	i = quota_rl_ns_find(tenant_id);
	if (i != QUOTA_RL_NONE)
		pg_atomic_fetch_add_u32(&rl_ns[i].count, 1);
	LWLockRelease(lock);
	return i;
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

		if (quota_rl_ns_reserve(b->ns_tenant, cap, &ns, &until))
			return ns;
		now = quota_rl_now();
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
		if (rl_ns[ns].dbid == MyDatabaseId && rl_ns[ns].tenant_id == b->ns_tenant &&
			pg_atomic_read_u32(&rl_ns[ns].count) >= cap && min_tat != PG_INT64_MAX)
			pg_atomic_write_u64(&rl_ns[ns].full_until, (uint64) min_tat);
		LWLockRelease(quota_rl_lock(QUOTA_RL_NS_LOCK));
	}
}

/*
 * quota_rl_check_one
 *		One CL.THROTTLE on one bucket (see the locking protocol above).
 */
static void
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
			if (rl->parts[b->part].free_head == QUOTA_RL_NONE)
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
static bool
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
					rl->parts[buckets[i].part].free_head == QUOTA_RL_NONE &&
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

/* ----------------------------------------------------------------------
 * SQL: ad-hoc keys
 * ----------------------------------------------------------------------
 */

/*
 * quota_rl_result
 *		One answer as a quota_ext.rate_limit_result datum.  The descriptor
 *		comes from the type cache, which follows ALTER TYPE and DROP, found
 *		by the result type recorded in the call expression: a lookup in a
 *		hash table, where get_call_result_type would read pg_proc and build
 *		a descriptor at every call.  A call without an expression (from C)
 *		takes the slow way.
 */
static Datum
quota_rl_result(FunctionCallInfo fcinfo, const QuotaGcraResult *r)
{
	Oid			rettype = get_fn_expr_rettype(fcinfo->flinfo);
	TupleDesc	tupdesc;
	HeapTuple	tuple;
	Datum		values[5];
	bool		nulls[5] = {0};

	values[0] = BoolGetDatum(r->limited);
	values[1] = Int64GetDatum(r->limit);
	values[2] = Int64GetDatum(r->remaining);
	values[3] = Int64GetDatum(r->retry_after);
	values[4] = Int64GetDatum(r->reset_after);
	if (OidIsValid(rettype) && rettype != RECORDOID)
	{
		tupdesc = lookup_rowtype_tupdesc(rettype, -1);
		if (tupdesc->natts != 5)
			elog(ERROR, "return type must be a row type with 5 columns");
		tuple = heap_form_tuple(tupdesc, values, nulls);
		ReleaseTupleDesc(tupdesc);
	}
	else
	{
		if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
			elog(ERROR, "return type must be a row type");
		tuple = heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls);
	}
	return HeapTupleGetDatum(tuple);
}

/*
 * quota_rl_keyed
 *		Shared body of rate_limit_check and tenant_rate_limit_check.
 */
static Datum
quota_rl_keyed(FunctionCallInfo fcinfo, char kind, int64 ns)
{
	static const char *const names[] = {
		"key", "max_burst", "count", "period_seconds", "quantity"
	};
	QuotaRlBucket b;
	text	   *key;
	int64		quantity;
	int			i;

	for (i = 0; i < 5; i++)
		QuotaArgNotNull(fcinfo, i, names[i]);
	key = PG_GETARG_TEXT_PP(0);
	b.max_burst = PG_GETARG_INT32(1);
	b.count = PG_GETARG_INT32(2);
	b.period = PG_GETARG_INT32(3);
	quantity = PG_GETARG_INT32(4);
	QuotaGcraCheckArgs(b.max_burst, b.count, b.period, quantity);
	if (VARSIZE_ANY_EXHDR(key) == 0 || VARSIZE_ANY_EXHDR(key) > QUOTA_RL_MAX_KEY)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("rate-limit key must be 1 to %d bytes long", QUOTA_RL_MAX_KEY),
				 errdetail("The key is %zu bytes long.", (size_t) VARSIZE_ANY_EXHDR(key))));
	quota_rl_require();

	b.rule_id = 0;
	quota_rl_digest(kind, ns, 0, VARDATA_ANY(key), VARSIZE_ANY_EXHDR(key), b.key);
	b.part = quota_rl_partition(b.key);
	b.capped = true;
	b.ns_tenant = ns;
	b.entry = NULL;
	quota_rl_check_one(&b, quantity);

	PG_RETURN_DATUM(quota_rl_result(fcinfo, &b.r));
}

/*
 * quota_ext.rate_limit_check(key text, max_burst int, count int,
 *		period_seconds int, quantity int DEFAULT 1)
 *	RETURNS (limited boolean, "limit" bigint, remaining bigint,
 *		retry_after bigint, reset_after bigint)
 *
 *		redis-cell's CL.THROTTLE key max_burst count period quantity, in the
 *		one namespace shared by every caller.
 */
Datum
rate_limit_check(PG_FUNCTION_ARGS)
{
	return quota_rl_keyed(fcinfo, 'g', 0);
}

/*
 * quota_ext.tenant_rate_limit_check(key text, max_burst int, count int,
 *		period_seconds int, quantity int DEFAULT 1)
 *	RETURNS as rate_limit_check
 *
 *		The same in the current tenant's own namespace: tenants cannot reach
 *		each other's buckets.  42501 without a tenant context.
 */
Datum
tenant_rate_limit_check(PG_FUNCTION_ARGS)
{
	const QuotaContext *ctx = QuotaContextGet();

	if (ctx == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("no tenant context in this transaction"),
				 errhint("Call quota_ext.authenticate() in the same transaction first.")));
	return quota_rl_keyed(fcinfo, 't', ctx->tenant_id);
}

/* ----------------------------------------------------------------------
 * configured rules
 * ----------------------------------------------------------------------
 */

/* the rules that apply to (tenant, model, key), as cached (cache.c) */
typedef struct QuotaRlRulesKey
{
	int64		tenant_id;
	int64		model_id;
	int64		key_id;
} QuotaRlRulesKey;

typedef struct QuotaRlRule
{
	int64		rule_id;		/* 0: the tier default */
	int64		max_burst;
	int64		count;
	int64		period;
} QuotaRlRule;

typedef struct QuotaRlRulesEntry
{
	QuotaRlRulesKey key;
	bool		valid;
	int			n;
	QuotaRlRule rules[QUOTA_RL_MAX_RULES];
} QuotaRlRulesEntry;

/*
 * quota_rl_rules_read
 *		The tenant's rules for the model and key, then its tier default
 *		unless a tenant-wide rule replaces it.  False: no such tenant.
 */
static bool
quota_rl_rules_read(int64 tenant_id, int64 model_id, int64 key_id,
					QuotaRlRule *rules, int *nrules)
{
	static QuotaPlan plan = {
		"(SELECT r.rule_id, r.max_burst, r.count, r.period_seconds, "
		"        (r.model_id IS NULL AND r.key_id IS NULL) "
		"   FROM quota_ext.rate_limits r "
		"  WHERE r.tenant_id OPERATOR(pg_catalog.=) $1 "
		"    AND (r.model_id IS NULL OR r.model_id OPERATOR(pg_catalog.=) $2) "
		"    AND (r.key_id IS NULL OR r.key_id OPERATOR(pg_catalog.=) $3) "
		"  ORDER BY r.rule_id) "
		"UNION ALL "
		"(SELECT 0, ti.rate_limit_burst, ti.rate_limit_per_minute, 60, NULL "
		"   FROM quota_ext.tenants t "
		"   JOIN quota_ext.tiers ti ON ti.tier OPERATOR(pg_catalog.=) t.tier "
		"  WHERE t.tenant_id OPERATOR(pg_catalog.=) $1)",
		3, {INT8OID, INT8OID, INT8OID}
	};
	Datum		values[3];
	int			n = 0;
	bool		tenant_found = false;
	bool		tenant_wide = false;
	int64		tier_count = 0;
	int64		tier_burst = 0;
	uint64		row;

	values[0] = Int64GetDatum(tenant_id);
	values[1] = Int64GetDatum(model_id);
	values[2] = Int64GetDatum(key_id);
	/* not read-only: a fresh snapshot, taken after the cache's generation */
	QuotaSpiExec(&plan, values, NULL, false, 0);

	for (row = 0; row < SPI_processed; row++)
	{
		HeapTuple	tup = SPI_tuptable->vals[row];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		int64		rule_id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		Datum		burst = SPI_getbinval(tup, desc, 2, &isnull);
		bool		burst_null = isnull;
		Datum		count = SPI_getbinval(tup, desc, 3, &isnull);
		bool		count_null = isnull;
		int64		period = DatumGetInt32(SPI_getbinval(tup, desc, 4, &isnull));

		if (rule_id == 0)
		{
			tenant_found = true;
			if (!count_null)
			{
				tier_count = DatumGetInt32(count);
				tier_burst = burst_null ? 0 : DatumGetInt32(burst);
			}
			continue;
		}
		if (DatumGetBool(SPI_getbinval(tup, desc, 5, &isnull)))
			tenant_wide = true;
		if (n >= QUOTA_RL_MAX_RULES - 1)
			elog(ERROR, "too many rate-limit rules apply to tenant %lld",
				 (long long) tenant_id);
		rules[n].rule_id = rule_id;
		rules[n].max_burst = DatumGetInt32(burst);
		rules[n].count = DatumGetInt32(count);
		rules[n].period = period;
		n++;
	}
	if (!tenant_found)
		return false;
	if (!tenant_wide && tier_count > 0)
	{
		rules[n].rule_id = 0;
		rules[n].max_burst = tier_burst;
		rules[n].count = tier_count;
		rules[n].period = 60;
		n++;
	}
	*nrules = n;
	return true;
}

/*
 * quota_rl_rules
 *		quota_rl_rules_read through the backend's configuration cache.
 */
static void
quota_rl_rules(int64 tenant_id, int64 model_id, int64 key_id,
			   QuotaRlRule *rules, int *nrules)
{
	QuotaRlRulesKey key;
	QuotaRlRulesEntry *e;
	bool		found;

	if (!QuotaCacheBegin())
	{
		if (!quota_rl_rules_read(tenant_id, model_id, key_id, rules, nrules))
			QuotaRaiseUnknownTenant(tenant_id);
		return;
	}
	memset(&key, 0, sizeof(key));
	key.tenant_id = tenant_id;
	key.model_id = model_id;
	key.key_id = key_id;
	e = QuotaCacheLookup(QUOTA_CACHE_RATE_RULES, &key, sizeof(key),
						 sizeof(QuotaRlRulesEntry), &found);
	if (!found || !e->valid)
	{
		e->valid = false;
		if (!quota_rl_rules_read(tenant_id, model_id, key_id, e->rules, &e->n))
		{
			QuotaCacheForget(QUOTA_CACHE_RATE_RULES, &key);
			QuotaRaiseUnknownTenant(tenant_id);
		}
		e->valid = true;
		QuotaSharedCachePut(QUOTA_CACHE_RATE_RULES, &key, sizeof(key), e,
							sizeof(QuotaRlRulesEntry));
	}
	memcpy(rules, e->rules, sizeof(QuotaRlRule) * e->n);
	*nrules = e->n;
}

/*
 * QuotaRateLimitApply
 *		See quota_ext.h.  The rules come from the backend's configuration
 *		cache (cache.c), else from a kept plan, so a change committed before
 *		a request starts is seen by it, as with every other table of
 *		quota_ext.  The tier row is always read for an existing tenant and
 *		used only when the tenant has no tenant-wide rule.
 */
bool
QuotaRateLimitApply(int64 tenant_id, int64 model_id, int64 key_id,
					int64 quantity, QuotaRateDecision *out)
{
	QuotaRlBucket buckets[QUOTA_RL_MAX_RULES];
	QuotaRlRule rules[QUOTA_RL_MAX_RULES];
	int			n;
	bool		allowed;
	int			best;
	int			i;

	if (quantity < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("quantity must not be negative"),
				 errdetail("quantity is %lld.", (long long) quantity)));

	quota_rl_rules(tenant_id, model_id, key_id, rules, &n);
	for (i = 0; i < n; i++)
	{
		buckets[i].rule_id = rules[i].rule_id;
		buckets[i].max_burst = rules[i].max_burst;
		buckets[i].count = rules[i].count;
		buckets[i].period = rules[i].period;
	}

	if (n == 0)
	{
		out->limited = false;
		out->rule_id = -1;
		out->limit = -1;
		out->remaining = -1;
		out->retry_after = -1;
		out->reset_after = 0;
		return true;
	}

	quota_rl_require();
	for (i = 0; i < n; i++)
	{
		quota_rl_digest('r', tenant_id, buckets[i].rule_id, NULL, 0,
						buckets[i].key);
		buckets[i].part = quota_rl_partition(buckets[i].key);
		buckets[i].capped = false;
		buckets[i].ns_tenant = tenant_id;
		buckets[i].entry = NULL;
	}
	allowed = quota_rl_check_all(buckets, n, quantity);

	/*
	 * Report the limiting rule that waits longest (one that can never admit
	 * this quantity, retry_after -1, first), or when allowed the tightest:
	 * fewest remaining, then the longest reset.
	 */
	best = -1;
	for (i = 0; i < n; i++)
	{
		QuotaGcraResult *r = &buckets[i].r;
		QuotaGcraResult *b = best >= 0 ? &buckets[best].r : NULL;

		if (allowed)
		{
			if (b == NULL || r->remaining < b->remaining ||
				(r->remaining == b->remaining &&
				 r->reset_after_ns > b->reset_after_ns))
				best = i;
		}
		else if (r->limited)
		{
			if (b == NULL ||
				(b->retry_after_ns >= 0 &&
				 (r->retry_after_ns < 0 || r->retry_after_ns > b->retry_after_ns)))
				best = i;
		}
	}
	out->limited = !allowed;
	out->rule_id = buckets[best].rule_id;
	out->limit = buckets[best].r.limit;
	out->remaining = buckets[best].r.remaining;
	out->retry_after = buckets[best].r.retry_after;
	out->reset_after = buckets[best].r.reset_after;
	return allowed;
}

/*
 * quota_ext.rate_limit_apply(tenant_id bigint, model text DEFAULT NULL,
 *		quantity int DEFAULT 1, key_id bigint DEFAULT NULL)
 *	RETURNS (limited boolean, rule_id bigint, "limit" bigint,
 *		remaining bigint, retry_after bigint, reset_after bigint)
 *
 *		QuotaRateLimitApply from SQL: the configured rules (and the tier
 *		default) for a tenant, optionally a model, and the API key (by
 *		default the one of the tenant context; a key's transaction may not
 *		name another key, 42501, as in quota_consume: QuotaIdentityResolve).
 *		rule_id, limit and remaining are NULL when no rule applies.
 */
Datum
rate_limit_apply(PG_FUNCTION_ARGS)
{
	static QuotaPlan model_plan = {
		"SELECT quota_ext._model_resolve($1, $2)",
		2, {INT8OID, TEXTOID}
	};
	QuotaSpiState spi;
	QuotaRateDecision d;
	QuotaIdentity id;
	int64		tenant_id;
	int64		model_id = 0;
	int64		key_id = 0;
	int64		quantity;
	TupleDesc	tupdesc;
	Datum		values[6];
	bool		nulls[6] = {0};

	QuotaArgNotNull(fcinfo, 0, "tenant_id");
	QuotaArgNotNull(fcinfo, 2, "quantity");
	tenant_id = PG_GETARG_INT64(0);
	quantity = PG_GETARG_INT32(2);
	if (quantity < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("quantity must not be negative"),
				 errdetail("quantity is %d.", (int) quantity)));
	QuotaCheckTenantAccess(tenant_id);
	/* a key's transaction charges its own key's rules only (as consume) */
	QuotaIdentityResolve(fcinfo, tenant_id, -1, 3, -1, &id);
	key_id = id.key_id;

	QuotaSpiBegin(&spi);
	if (!PG_ARGISNULL(1))
	{
		Datum		mv[2];
		bool		isnull = true;

		mv[0] = Int64GetDatum(tenant_id);
		mv[1] = PG_GETARG_DATUM(1);
		QuotaSpiExec(&model_plan, mv, NULL, true, 1);
		if (SPI_processed == 1)
			model_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
												   SPI_tuptable->tupdesc, 1,
												   &isnull));
		if (isnull)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("model \"%s\" does not exist",
							QuotaQuoteInput(text_to_cstring(PG_GETARG_TEXT_PP(1))))));
	}
	QuotaRateLimitApply(tenant_id, model_id, key_id, quantity, &d);
	QuotaSpiEnd(&spi);

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	values[0] = BoolGetDatum(d.limited);
	values[1] = Int64GetDatum(d.rule_id);
	values[2] = Int64GetDatum(d.limit);
	values[3] = Int64GetDatum(d.remaining);
	values[4] = Int64GetDatum(d.retry_after);
	values[5] = Int64GetDatum(d.reset_after);
	if (d.rule_id < 0)
		nulls[1] = nulls[2] = nulls[3] = true;
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc),
													  values, nulls)));
}

/*
 * quota_ext.rate_limit_status()
 *	RETURNS (slots integer, in_use bigint, partitions integer,
 *		tenant_entries integer)
 *
 *		The size of the bucket table, how many slots hold a bucket (idle
 *		ones included until they are reclaimed), and the cap of each ad-hoc
 *		namespace (quota_ext.rate_limit_tenant_entries in effect).
 */
Datum
rate_limit_status(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[4];
	bool		nulls[4] = {0};
	int64		nfree = 0;
	int			i;

	quota_rl_require();
	for (i = 0; i < QUOTA_RL_PARTITIONS; i++)
	{
		LWLockAcquire(quota_rl_lock(i), LW_SHARED);
		nfree += rl->parts[i].nfree;
		LWLockRelease(quota_rl_lock(i));
	}
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	values[0] = Int32GetDatum(rl->nentries);
	values[1] = Int64GetDatum((int64) rl->nentries - nfree);
	values[2] = Int32GetDatum(QUOTA_RL_PARTITIONS);
	values[3] = Int32GetDatum((int32) quota_rl_cap());
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc),
													  values, nulls)));
}

/*
 * quota_ext.rate_limit_namespaces()
 *	RETURNS SETOF (tenant_id bigint, buckets integer)
 *
 *		The capped namespaces of this database that count buckets: tenant_id
 *		NULL for the keys of rate_limit_check(), else the tenant whose keys
 *		of tenant_rate_limit_check() they are.  buckets counts idle ones
 *		until they are reclaimed (and calls linking one right now).
 */
Datum
rate_limit_namespaces(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	LWLock	   *lock;
	int32		b;

	QuotaCheckAdmin("rate_limit_namespaces");
	quota_rl_require();
	InitMaterializedSRF(fcinfo, 0);
	lock = quota_rl_lock(QUOTA_RL_NS_LOCK);
	LWLockAcquire(lock, LW_SHARED);
	for (b = 0; b < rl->ns_nbuckets; b++)
	{
		int32		i;

		for (i = rl_ns_heads[b]; i != QUOTA_RL_NONE; i = rl_ns[i].next)
		{
			Datum		values[2];
			bool		nulls[2] = {0};
			uint32		c = pg_atomic_read_u32(&rl_ns[i].count);

			if (rl_ns[i].dbid != MyDatabaseId || c == 0)
				continue;
			values[0] = Int64GetDatum(rl_ns[i].tenant_id);
			nulls[0] = (rl_ns[i].tenant_id == 0);
			values[1] = Int32GetDatum((int32) c);
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
		}
	}
	LWLockRelease(lock);
	return (Datum) 0;
}

/* unlink the entry of one digest, if any (no lock held): 1 or 0 */
static int64
quota_rl_remove_key(const uint64 *key)
{
	int			part = quota_rl_partition(key);
	QuotaRlPartition *p = &rl->parts[part];
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
			quota_rl_unlinked(e);
			e->next = p->free_head;
			p->free_head = i;
			p->nfree++;
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
static int64
quota_rl_remove_ns(int32 ns)
{
	int64		n = 0;
	int			part;

	for (part = 0; part < QUOTA_RL_PARTITIONS; part++)
	{
		QuotaRlPartition *p = &rl->parts[part];
		int32	   *heads = &rl_heads[(Size) part * rl->nbuckets];
		int32		b;

		LWLockAcquire(quota_rl_lock(part), LW_EXCLUSIVE);
		for (b = 0; b < rl->nbuckets; b++)
		{
			int32	   *link = &heads[b];

			while (*link != QUOTA_RL_NONE)
			{
				int32		i = *link;
				QuotaRlEntry *e = &rl_entries[i];

				if (e->ns == ns)
				{
					*link = e->next;
					quota_rl_unlinked(e);
					e->next = p->free_head;
					p->free_head = i;
					p->nfree++;
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

/*
 * quota_ext._rate_limit_reset(tenant_id bigint, key text, rule_ids bigint[])
 *	RETURNS bigint
 *
 *		The buckets behind quota_ext.rate_limit_reset() (which checks the
 *		caller, records the reset in the audit log and passes the tenant's
 *		rule ids; EXECUTE for nobody else): removes them and returns how
 *		many there were.  tenant_id NULL: the keys of rate_limit_check(),
 *		else the tenant's keys of tenant_rate_limit_check() and, without a
 *		key, the buckets of rule_ids (0 = the tier default).  key NULL:
 *		every key of the namespace.  A removed bucket is full again.
 */
Datum
rate_limit_reset_buckets(PG_FUNCTION_ARGS)
{
	int64		tenant_id = PG_ARGISNULL(0) ? 0 : PG_GETARG_INT64(0);
	int64		n = 0;
	uint64		digest[2];

	quota_rl_require();
	if (!PG_ARGISNULL(1))
	{
		text	   *key = PG_GETARG_TEXT_PP(1);

		if (VARSIZE_ANY_EXHDR(key) == 0 || VARSIZE_ANY_EXHDR(key) > QUOTA_RL_MAX_KEY)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("rate-limit key must be 1 to %d bytes long", QUOTA_RL_MAX_KEY),
					 errdetail("The key is %zu bytes long.", (size_t) VARSIZE_ANY_EXHDR(key))));
		quota_rl_digest(PG_ARGISNULL(0) ? 'g' : 't', tenant_id, 0,
						VARDATA_ANY(key), VARSIZE_ANY_EXHDR(key), digest);
		PG_RETURN_INT64(quota_rl_remove_key(digest));
	}
	else
	{
		int32		ns = quota_rl_ns_hold(tenant_id);

		if (ns != QUOTA_RL_NONE)
		{
			n = quota_rl_remove_ns(ns);
			quota_rl_ns_release(ns);
		}
	}
	if (!PG_ARGISNULL(0) && !PG_ARGISNULL(2))
	{
		ArrayType  *ids = PG_GETARG_ARRAYTYPE_P(2);
		Datum	   *elems;
		bool	   *nulls;
		int			nelems;
		int			i;

		deconstruct_array(ids, INT8OID, sizeof(int64), FLOAT8PASSBYVAL,
						  TYPALIGN_DOUBLE, &elems, &nulls, &nelems);
		for (i = 0; i < nelems; i++)
		{
			if (nulls[i])
				continue;
			quota_rl_digest('r', tenant_id, DatumGetInt64(elems[i]), NULL, 0, digest);
			n += quota_rl_remove_key(digest);
		}
	}
	PG_RETURN_INT64(n);
}
