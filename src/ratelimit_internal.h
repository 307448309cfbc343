/*-------------------------------------------------------------------------
 *
 * ratelimit_internal.h
 *		What the rate-limit files share: the layout of the bucket table in
 *		shared memory (ratelimit_shmem.c) and the calls that check and
 *		remove buckets, used by the SQL functions (ratelimit.c) and the
 *		configured rules (ratelimit_rules.c).  Not for other modules: they
 *		use QuotaRateLimitApply and QuotaRateLimitInit from ratelimit.h, and
 *		everything here is hidden from the dynamic symbol table.
 *
 *-------------------------------------------------------------------------
 */
#ifndef QUOTA_RATELIMIT_INTERNAL_H
#define QUOTA_RATELIMIT_INTERNAL_H

#include "quota_ext.h"
#include "gcra.h"

#include "port/atomics.h"
#include "storage/lwlock.h"

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
	pg_atomic_uint32 capped;	/* buckets (and reservations) of all capped
								 * namespaces together: at most half the
								 * slots, the rest is kept for rules */
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

/* ratelimit_shmem.c: the table, NULL unless the library was preloaded */
extern QUOTA_PRIVATE QuotaRlShared *quota_rl_shared;
extern QUOTA_PRIVATE int32 *quota_rl_ns_heads;
extern QUOTA_PRIVATE QuotaRlNs *quota_rl_ns_records;

/* ratelimit_hash.c */
extern QUOTA_PRIVATE void quota_rl_siphash(const uint8 *in, size_t len,
										   const uint64 *k, uint64 *out);
#ifdef USE_ASSERT_CHECKING
extern QUOTA_PRIVATE void quota_rl_siphash_selftest(void);
#endif

/* ratelimit_shmem.c */
extern QUOTA_PRIVATE void quota_rl_digest(char kind, int64 a, int64 b,
										  const char *key, size_t keylen,
										  uint64 *out);
extern QUOTA_PRIVATE void quota_rl_require(void);
extern QUOTA_PRIVATE int	quota_rl_partition(const uint64 *key);
extern QUOTA_PRIVATE LWLock *quota_rl_lock(int part);
extern QUOTA_PRIVATE uint32 quota_rl_cap(void);
extern QUOTA_PRIVATE uint32 quota_rl_share(void);
extern QUOTA_PRIVATE void quota_rl_check_one(QuotaRlBucket *b, int64 quantity);
extern QUOTA_PRIVATE bool quota_rl_check_all(QuotaRlBucket *buckets, int n, int64 quantity);
extern QUOTA_PRIVATE bool quota_rl_peek_all(QuotaRlBucket *buckets, int n, int64 quantity);
extern QUOTA_PRIVATE int32 quota_rl_ns_hold(int64 tenant_id);
extern QUOTA_PRIVATE void quota_rl_ns_release(int32 ns);
extern QUOTA_PRIVATE void quota_rl_ns_unhold(int32 ns);
extern QUOTA_PRIVATE int64 quota_rl_remove_key(const uint64 *key);
extern QUOTA_PRIVATE int64 quota_rl_remove_ns(int32 ns);

#endif							/* QUOTA_RATELIMIT_INTERNAL_H */
