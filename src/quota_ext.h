/*-------------------------------------------------------------------------
 *
 * quota_ext.h
 *		Declarations shared between the subsystems of quota_ext.
 *
 * One section per C file; each file's header comment explains its part.
 * See doc/design.md for the map of the whole extension.
 *
 *-------------------------------------------------------------------------
 */
#ifndef QUOTA_EXT_H
#define QUOTA_EXT_H

#include "compat.h"

#include "executor/spi.h"
#include "fmgr.h"
#include "datatype/timestamp.h"
#include "access/htup.h"
#include "access/tupdesc.h"

/*
 * A function or variable that several files of one module share and that
 * is not part of the library's interface: hidden from the dynamic symbol
 * table (consume_internal.h, ratelimit_internal.h).
 */
#if defined(__GNUC__)
#define QUOTA_PRIVATE __attribute__((visibility("hidden")))
#else
#define QUOTA_PRIVATE
#endif

#define QUOTA_SCHEMA		"quota_ext"
#define QUOTA_ADMIN_ROLE	"quota_ext_admin"
#define QUOTA_APP_ROLE		"quota_ext_app"
#define QUOTA_MAX_ROLE_LEN	63

/* spi.c: privileged SPI with plans prepared once */
typedef struct QuotaPlan
{
	const char *sql;			/* fully qualified query text */
	int			nargs;
	Oid			argtypes[24];
	SPIPlanPtr	plan;			/* kept plan, prepared on first use */
} QuotaPlan;

typedef struct QuotaSpiState
{
	Oid			save_userid;
	int			save_sec_context;
	int			guc_nest_level; /* 0: the path was already pinned */
} QuotaSpiState;

extern void QuotaSpiBegin(QuotaSpiState *state);
extern void QuotaSpiEnd(QuotaSpiState *state);
extern int	QuotaSpiExec(QuotaPlan *plan, Datum *values, const char *nulls,
						 bool read_only, long tcount);
extern Oid	QuotaOwnerId(void);

/* context.c: the tenant context held in backend memory */
typedef struct QuotaContext
{
	bool		valid;
	int64		tenant_id;
	int64		user_id;		/* 0 when set by set_tenant() */
	int64		key_id;			/* 0 when set by set_tenant() */
	char		role[QUOTA_MAX_ROLE_LEN + 1];
	int			nest_level;		/* transaction nest level it was set at */
} QuotaContext;

extern void QuotaContextInit(void);
extern void QuotaContextSet(int64 tenant_id, int64 user_id, int64 key_id,
							const char *role);
extern const QuotaContext *QuotaContextGet(void);
extern bool QuotaCallerIsAdmin(void);
extern void QuotaCheckAdmin(const char *what);
extern void QuotaCheckTenantAccess(int64 tenant_id);

/* who a request acts as (QuotaIdentityResolve) */
typedef struct QuotaIdentity
{
	int64		user_id;		/* 0: unknown */
	int64		key_id;			/* 0: unknown */
	const char *role;			/* NULL: none */
} QuotaIdentity;

extern void QuotaIdentityResolve(FunctionCallInfo fcinfo, int64 tenant_id,
								 int user_arg, int key_arg, int role_arg,
								 QuotaIdentity *id);
pg_noreturn extern void QuotaRaiseUnknownTenant(int64 tenant_id);

/* cache.c: per-backend cache of the configuration */
typedef enum QuotaCacheKind
{
	QUOTA_CACHE_KEYS,			/* auth.c */
	QUOTA_CACHE_POLICIES,		/* policy.c */
	QUOTA_CACHE_RATE_RULES,		/* ratelimit.c */
	QUOTA_CACHE_QUOTAS,			/* consume.c: quota definitions */
	QUOTA_CACHE_NKINDS
} QuotaCacheKind;

extern void QuotaCacheInit(void);
extern void QuotaCacheShmemRequest(void);
extern void QuotaCacheShmemStartup(void);
extern bool QuotaCacheBegin(void);
extern uint64 QuotaConfigStamp(void);
extern bool QuotaConfigUnchanged(uint64 stamp);
extern void *QuotaCacheLookup(QuotaCacheKind kind, const void *key, Size keysize,
							  Size entrysize, bool *found);
extern void *QuotaCacheFind(QuotaCacheKind kind, const void *key);
extern void QuotaCacheForget(QuotaCacheKind kind, const void *key);
extern MemoryContext QuotaCacheContext(void);

/* the level shared by all backends: flat copies of entries (cache.c) */
#define QUOTA_SHARED_DATA	1024
extern Size QuotaSharedCacheGet(QuotaCacheKind kind, const void *key, Size keysize,
								void *data);
extern void QuotaSharedCachePut(QuotaCacheKind kind, const void *key, Size keysize,
								const void *data, Size len);

/* auth.c: API keys */
extern void QuotaAuthInit(void);
extern void QuotaAuthenticate(text *api_key);
extern void QuotaKeyArgBegin(void);
extern void QuotaKeyArgDone(void);
extern void QuotaKeyRecheck(int64 tenant_id, int64 key_id);

/* ratelimit.c / gcra.c: rate limits (GCRA in shared memory) */
typedef enum QuotaGcraStatus
{
	QUOTA_GCRA_OK,
	QUOTA_GCRA_ZERO_RATE,		/* period / count under one nanosecond */
	QUOTA_GCRA_OVERFLOW,		/* does not fit in int64 nanoseconds */
	QUOTA_GCRA_TOO_LONG			/* a bucket would live longer than a day */
} QuotaGcraStatus;

/*
 * The longest period_seconds, and the longest time a bucket may take to
 * refill completely (its tolerance, (max_burst + 1) * period / count, which
 * is also the longest time it stays in the shared table): one day.  Longer
 * limits are quotas (persistent, per calendar period), not rate limits.
 */
#define QUOTA_RL_MAX_SECONDS	86400

typedef struct QuotaGcraResult
{
	bool		limited;
	int64		limit;			/* max_burst + 1 */
	int64		remaining;
	int64		retry_after;	/* seconds, rounded up as redis-cell; -1 */
	int64		reset_after;	/* seconds, rounded up as redis-cell */
	int64		retry_after_ns; /* -1 s when allowed or never possible */
	int64		reset_after_ns;
	int64		new_tat;		/* TAT to store (ns) */
} QuotaGcraResult;

extern QuotaGcraStatus QuotaGcraEval(int64 tat, int64 now, int64 max_burst,
									 int64 count, int64 period_s,
									 int64 quantity, QuotaGcraResult *out);
extern void QuotaGcraCheckArgs(int64 max_burst, int64 count, int64 period_s,
							   int64 quantity);
pg_noreturn extern void QuotaGcraRaise(QuotaGcraStatus status, int64 max_burst,
									   int64 count, int64 period_s, int64 quantity);

/*
 * The answer of QuotaRateLimitApply.  rule_id 0 is the tier default; when
 * no rule applies at all: limited false, rule_id -1, limit -1, remaining
 * -1, retry_after -1, reset_after 0.  Seconds are rounded as redis-cell.
 */
typedef struct QuotaRateDecision
{
	bool		limited;
	int64		rule_id;		/* 0 = tier default, -1 = no rule applies */
	int64		limit;
	int64		remaining;
	int64		retry_after;
	int64		reset_after;
} QuotaRateDecision;

extern void QuotaRateLimitInit(void);
extern void QuotaRateLimitShmemRequest(void);
extern void QuotaRateLimitShmemStartup(void);

/*
 * Check every rate-limit rule that applies to (tenant, model, key) for
 * `quantity` requests, all-or-nothing (if one rule limits, none is
 * charged); returns true when allowed.  *out describes the limiting rule
 * (the one with the longest retry_after), or the tightest one (fewest
 * remaining) when allowed.  model_id/key_id 0 = unknown: rules for a
 * specific model or key then do not apply.  Must be called inside the
 * caller's SPI session (between QuotaSpiBegin and QuotaSpiEnd); it runs one
 * query, so SPI_tuptable is replaced (copy out earlier results).  Raises
 * 42704 for an unknown tenant and 55000 when the tenant has rules but the
 * library is not in shared_preload_libraries.  Not undone by a rollback.
 */
extern bool QuotaRateLimitApply(int64 tenant_id, int64 model_id, int64 key_id,
								int64 quantity, QuotaRateDecision *out);
/*
 * The same answer without charging any bucket (quota_check): each bucket
 * is read under its partition's shared lock, and nothing is written to
 * shared memory (a bucket without an entry is judged fresh, as
 * QuotaRateLimitApply would).
 */
extern bool QuotaRateLimitPeek(int64 tenant_id, int64 model_id, int64 key_id,
							   int64 quantity, QuotaRateDecision *out);

/* period.c: calendar periods in the tenant's time zone */
typedef enum QuotaPeriod
{
	QUOTA_PERIOD_MINUTE,
	QUOTA_PERIOD_HOUR,
	QUOTA_PERIOD_DAY,
	QUOTA_PERIOD_WEEK,
	QUOTA_PERIOD_MONTH,
	QUOTA_PERIOD_YEAR,
	QUOTA_PERIOD_LIFETIME
} QuotaPeriod;

extern int	QuotaPeriodParse(const char *s);
extern const char *QuotaPeriodName(QuotaPeriod p);
extern void QuotaPeriodBounds(QuotaPeriod p, text *tz, TimestampTz at,
							  TimestampTz *start, TimestampTz *end);

/* metering.c: prices and the cost of a call */
typedef struct QuotaPrice
{
	bool		found;			/* false: unpriced (cost 0) */
	int64		price_id;
	char		currency[4];
	bool		has_unit;
	bool		has_input;
	bool		has_output;
	Datum		unit_price;		/* numeric; valid until QuotaSpiEnd */
	Datum		input_per_1k;
	Datum		output_per_1k;
	TimestampTz valid_until;	/* when the next version starts (or +inf) */
} QuotaPrice;

extern void QuotaMeteringInit(void);
extern void QuotaPriceFromTuple(HeapTuple tup, TupleDesc desc, int first_col,
								QuotaPrice *out);
extern void QuotaPriceAt(int64 tenant_id, int64 model_id, TimestampTz at,
						 QuotaPrice *out);
extern void QuotaPriceById(int64 price_id, QuotaPrice *out);
extern int64 QuotaCostMicro(const QuotaPrice *price, int64 units,
							int64 input_tokens, int64 output_tokens);
extern Datum QuotaMicroToNumeric(int64 micro);
extern int64 QuotaNumericToMicro(Datum amount);

/* stats.c: decision counters per tenant in shared memory */
typedef enum QuotaOutcome
{
	QUOTA_OUTCOME_ALLOWED,
	QUOTA_OUTCOME_DENIED_QUOTA,
	QUOTA_OUTCOME_DENIED_RATE,
	QUOTA_OUTCOME_DENIED_POLICY,
	QUOTA_OUTCOME_DENIED_TENANT,
	QUOTA_OUTCOME_REPLAYED,
	QUOTA_NUM_OUTCOMES
} QuotaOutcome;

extern void QuotaStatsInit(void);
extern void QuotaStatsShmemRequest(void);
extern void QuotaStatsShmemStartup(void);

/* shmem.c: the one shared-memory request and start-up of the modules */
extern void QuotaShmemInit(void);
extern void QuotaStatsCount(int64 tenant_id, QuotaOutcome outcome);

/* policy.c: model resolution and access policies */
typedef struct QuotaPolicyResult
{
	bool		tenant_found;
	bool		tenant_active;
	char	   *timezone;		/* valid until QuotaSpiEnd */
	int64		model_id;		/* 0 when the name means no model */
	bool		allowed;
	QuotaPrice	price;			/* in force when the request started */
	bool		has_slots;		/* the tenant has multi-slot (escrow) quotas */
} QuotaPolicyResult;

extern void QuotaPolicyEvaluate(int64 tenant_id, const char *model,
								const char *role, QuotaPolicyResult *out);
extern void QuotaPolicyEvaluateFresh(int64 tenant_id, const char *model,
									 const char *role, QuotaPolicyResult *out);
extern bool QuotaPolicyFromCache(int64 tenant_id, const char *model,
								 const char *role, QuotaPolicyResult *out);

/* direct.c: counters and usage rows without the executor (single-slot quotas) */
typedef struct QuotaUsageRow
{
	int64		tenant_id;
	int64		usage_id;		/* 0: the next value of usage_id_seq */
	TimestampTz occurred_at;
	const char *kind;			/* a quota_ext.usage_kind */
	int64		model_id;
	int64		user_id;		/* 0: NULL */
	int64		key_id;			/* 0: NULL */
	int32		calls;
	int64		units;
	int64		overage;
	int64		ref_usage_id;	/* 0: NULL */
	int64		reservation_id; /* 0: NULL */
	const char *idem_key;		/* NULL: NULL */
	bool		has_input;
	int64		input_tokens;
	bool		has_output;
	int64		output_tokens;
	int64		price_id;		/* 0: NULL */
	Datum		cost;			/* numeric */
	Datum		metadata;		/* jsonb, or 0: NULL */
} QuotaUsageRow;

/* one counter row to write: quota, slot (0 unless escrow) and new values */
typedef struct QuotaCounterWrite
{
	int64		quota_id;
	int32		slot;
	int64		used;
	TimestampTz start;			/* period_start */
	bool		has_allowance;	/* else NULL */
	int64		allowance;
	int32		mask;			/* events_mask */
	ItemPointerData tid;		/* where it was locked, if known (else invalid) */
} QuotaCounterWrite;

extern int	QuotaDirectLockCounters(int64 tenant_id, const int64 *qids, int n,
									bool *found, TimestampTz *starts, int64 *used,
									ItemPointerData *tids);
extern int64 QuotaDirectWrite(const QuotaUsageRow *u, const QuotaCounterWrite *w, int n);

/*
 * consume.c, escrow.c, idempotency.c, events.c, adjust.c, args.c: the
 * request path (quotas, consumption, reservations); their private
 * declarations are in consume_internal.h.
 */

/* argument helpers for every module (args.c) */
extern void QuotaArgNotNull(FunctionCallInfo fcinfo, int argno, const char *name);
extern const char *QuotaQuoteInput(const char *s);

/*
 * Bounds of one call (doc/reference.md, "Bounds"): units, an estimate or an
 * actual, input_tokens and output_tokens are at most QUOTA_MAX_UNITS each
 * (10^15: below 2^53, so JSON clients keep them exact), and a call's cost at
 * most QUOTA_MAX_COST_MICRO micro-units (10^12 of its currency).  Beyond:
 * 22003, nothing changed.  Sums of them (rollups, invoices, reports) are
 * numeric; quota counters are int64 and checked (22003 for that quota).
 */
#define QUOTA_MAX_UNITS			INT64CONST(1000000000000000)
#define QUOTA_MAX_COST_MICRO	INT64CONST(1000000000000000000)

/* error messages quote at most this many characters of a caller's text */
#define QUOTA_QUOTE_MAX_CHARS	64

#endif							/* QUOTA_EXT_H */
