/*-------------------------------------------------------------------------
 *
 * ratelimit.h
 *		Rate limits: the rules and the shared bucket table (ratelimit*.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef QUOTA_RATELIMIT_H
#define QUOTA_RATELIMIT_H

#include "quota_ext.h"

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

/*
 * on_exceed 'throttle' (consume.c): a quota past its limit admits calls at
 * per_minute (burst) by GCRA.  QuotaThrottleApply checks the buckets of the
 * throttled quotas a call passes past their limits, one request each, all
 * or nothing, like QuotaRateLimitApply (out->rule_id is the limiting or
 * tightest quota's id); peek charges nothing (quota_check).  Per node, in
 * shared memory, not undone by a rollback; 55000 when not preloaded.
 */
typedef struct QuotaThrottle
{
	int64		quota_id;
	int64		per_minute;
	int64		burst;
} QuotaThrottle;

extern bool QuotaThrottleApply(int64 tenant_id, const QuotaThrottle *throttles, int n,
							   bool peek, QuotaRateDecision *out);

#endif							/* QUOTA_RATELIMIT_H */
