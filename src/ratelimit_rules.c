/*-------------------------------------------------------------------------
 *
 * ratelimit_rules.c
 *		Rate limits configured per tenant: the rules of quota_ext.rate_limits
 *		and the tier default, read through the configuration cache (cache.c),
 *		and QuotaRateLimitApply, which checks their buckets (ratelimit_shmem.c)
 *		for invoke() and quota_ext.rate_limit_apply().
 *
 *-------------------------------------------------------------------------
 */
#include "quota_ext.h"
#include "spi.h"
#include "context.h"
#include "cache.h"
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

/* the rule cache (cache.h) */
static bool
rules_cache_fill(void *entry, void *arg)
{
	QuotaRlRulesEntry *e = entry;

	return quota_rl_rules_read(e->key.tenant_id, e->key.model_id, e->key.key_id,
							   e->rules, &e->n);
}

static void
rules_cache_flat(void *entry, QuotaFlat *f)
{
	QuotaRlRulesEntry *e = entry;
	int			i;

	QuotaFlatCount(f, &e->n, QUOTA_RL_MAX_RULES);
	for (i = 0; i < e->n; i++)
	{
		QUOTA_FLAT(f, e->rules[i].rule_id);
		QUOTA_FLAT(f, e->rules[i].max_burst);
		QUOTA_FLAT(f, e->rules[i].count);
		QUOTA_FLAT(f, e->rules[i].period);
	}
}

static const QuotaCacheKind rules_cache_kind =
	QUOTA_CACHE_KIND(QuotaRlRulesEntry, 3, "quota_ext rate-limit rule cache",
					 rules_cache_fill, rules_cache_flat, NULL);

/*
 * quota_rl_rules
 *		quota_rl_rules_read through the configuration cache.
 */
static void
quota_rl_rules(int64 tenant_id, int64 model_id, int64 key_id,
			   QuotaRlRule *rules, int *nrules)
{
	QuotaRlRulesKey key;
	QuotaRlRulesEntry *e;

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
	e = QuotaCacheGet(&rules_cache_kind, &key, NULL);
	if (e == NULL)
		QuotaRaiseUnknownTenant(tenant_id);
	memcpy(rules, e->rules, sizeof(QuotaRlRule) * e->n);
	*nrules = e->n;
}

static bool rl_run(int64 tenant_id, char kind, QuotaRlBucket *buckets, int n,
				   int64 quantity, QuotaRateDecision *out, bool peek);

/*
 * QuotaRateLimitApply
 *		See ratelimit.h.  The rules come from the backend's configuration
 *		cache (cache.c), else from a kept plan, so a change committed before
 *		a request starts is seen by it, as with every other table of
 *		quota_ext.  The tier row is always read for an existing tenant and
 *		used only when the tenant has no tenant-wide rule.
 */
static bool
rate_limit_eval(int64 tenant_id, int64 model_id, int64 key_id,
				int64 quantity, QuotaRateDecision *out, bool peek)
{
	QuotaRlBucket buckets[QUOTA_RL_MAX_RULES];
	QuotaRlRule rules[QUOTA_RL_MAX_RULES];
	int			n;
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

	return rl_run(tenant_id, 'r', buckets, n, quantity, out, peek);
}

/*
 * rl_run
 *		Check (or peek at) the buckets of one tenant: kind 'r' a rule's
 *		(rule_id), 't' a throttled quota's (rule_id = its quota_id), all or
 *		nothing; *out as QuotaRateLimitApply's.
 */
static bool
rl_run(int64 tenant_id, char kind, QuotaRlBucket *buckets, int n,
	   int64 quantity, QuotaRateDecision *out, bool peek)
{
	bool		allowed;
	int			best;
	int			i;

	quota_rl_require();
	for (i = 0; i < n; i++)
	{
		quota_rl_digest(kind, tenant_id, buckets[i].rule_id, NULL, 0,
						buckets[i].key);
		buckets[i].part = quota_rl_partition(buckets[i].key);
		buckets[i].capped = false;
		buckets[i].ns_tenant = tenant_id;
		buckets[i].entry = NULL;
	}
	allowed = peek ? quota_rl_peek_all(buckets, n, quantity) :
		quota_rl_check_all(buckets, n, quantity);

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

bool
QuotaRateLimitApply(int64 tenant_id, int64 model_id, int64 key_id,
					int64 quantity, QuotaRateDecision *out)
{
	return rate_limit_eval(tenant_id, model_id, key_id, quantity, out, false);
}

/*
 * QuotaRateLimitPeek
 *		See quota_ext.h.
 */
bool
QuotaRateLimitPeek(int64 tenant_id, int64 model_id, int64 key_id,
				   int64 quantity, QuotaRateDecision *out)
{
	return rate_limit_eval(tenant_id, model_id, key_id, quantity, out, true);
}

/*
 * QuotaThrottleApply
 *		See ratelimit.h: one GCRA bucket per throttled quota past its
 *		limit, in the rate limiter's table, keyed by (tenant, quota).
 */
bool
QuotaThrottleApply(int64 tenant_id, const QuotaThrottle *throttles, int n,
				   bool peek, QuotaRateDecision *out)
{
	QuotaRlBucket buckets[QUOTA_RL_MAX_RULES];
	int			i;

	/* quota_set allows a tenant no more (30_quota.sql) */
	if (n > QUOTA_RL_MAX_RULES)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("more than %d throttled quotas apply to one request",
						QUOTA_RL_MAX_RULES)));
	for (i = 0; i < n; i++)
	{
		buckets[i].rule_id = throttles[i].quota_id;
		buckets[i].max_burst = throttles[i].burst;
		buckets[i].count = throttles[i].per_minute;
		buckets[i].period = 60;
	}
	return rl_run(tenant_id, 't', buckets, n, 1, out, peek);
}
