/*-------------------------------------------------------------------------
 *
 * consume.c
 *		Exact enforcement: quota_consume, quota_consume_or_raise, invoke,
 *		quota_reserve.
 *
 * One request is one pass through QuotaConsume here, which calls the
 * other phases' files (consume_internal.h), inside the caller's
 * transaction (privileged SPI, see spi.c):
 *
 *	 1. policy.c: tenant active?  which model?  policy allows?
 *	 2. idempotency claim (idempotency.c): INSERT ... ON CONFLICT DO NOTHING on
 *		(tenant_id, idempotency_key).  A second session with the same key
 *		waits here on the first one's uncommitted row, holding no quota
 *		lock; once the first commits it finds the row and returns the stored
 *		decision (a replay charges nothing); if the first rolls back, it
 *		goes on as if alone.
 *	 3. rate limits (ratelimit.c), before any quota: a limited request
 *		charges no quota.  Buckets live in shared memory and are not given
 *		back if the transaction rolls back (anti-abuse).
 *	 4. lock the counters of every applicable quota in quota_id order, so
 *		concurrent consumes never deadlock: the definitions come from the
 *		configuration cache (cache.c) or one query, and storage.c locks each
 *		run of single-row counters by primary key (lock_run).  Escrow quotas
 *		(slots > 1, for hot tenants; set by hand or by automatic escrow,
 *		escrow_adapt.c) take their slots in the same order: one free slot
 *		that can hold the amount is taken with SKIP LOCKED (never waits); if
 *		all that could are busy, the call waits for one of them; only if no
 *		single slot can hold it is every slot locked in slot order and the
 *		limit re-split (acquire_slots).  Every wait is for a lock ranked
 *		(quota_id, slot) above all the call holds (doc/design.md section 5).
 *	 4a. a request that waited for a lock in 2 or 4 reads the policy, the
 *		tenant's status and its quotas again before deciding (invoke() also
 *		its key) if a configuration change committed while it waited: that
 *		change applies to it (recheck_after_wait).  One that did not wait,
 *		or whose configuration generation did not move, reads nothing more.
 *	 5. decide in C: the period of each quota is computed from one instant
 *		taken after the locks (so under a counter's lock time never goes
 *		backwards), a counter whose period_start is older is read as 0, and
 *		if any blocking quota would exceed its limit nothing is charged.
 *	 6. write_usage writes the usage row and every touched counter without
 *		SQL (storage.c: table access method and executor, no statement is
 *		planned), then threshold events (events.c: INSERT ... ON CONFLICT
 *		DO NOTHING on their unique key, and a NOTIFY) and the idempotency
 *		row (idempotency.c).
 *
 * Everything is in the caller's transaction: ROLLBACK (or ROLLBACK TO
 * SAVEPOINT) takes back counters, usage, events and the idempotency claim
 * together, and a NOTIFY is only delivered on commit.
 *
 * Refunds, settlements and releases adjust the counters of the period the
 * original row counted in (its occurred_at): a counter that has moved on to
 * a later period is left alone, and the adjusting row carries the original
 * occurred_at, so every period's sum(usage) keeps equal to its counter.
 *
 * See consume_internal.h for how the request path is split.
 *
 *-------------------------------------------------------------------------
 */
#include "spi.h"
#include "context.h"
#include "cache.h"
#include "cache_citus.h"
#include "args.h"
#include "auth.h"
#include "period.h"
#include "metering.h"
#include "policy.h"
#include "ratelimit.h"
#include "stats.h"
#include "storage.h"
#include "consume_internal.h"
#include "escrow_adapt.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/async.h"
#include "common/int.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "storage/proc.h"
#include "utils/array.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/builtins.h"
#include "utils/numeric.h"
#include "utils/timeout.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(quota_ext_quota_consume);
PG_FUNCTION_INFO_V1(quota_ext_quota_consume_or_raise);
PG_FUNCTION_INFO_V1(quota_ext_invoke);
PG_FUNCTION_INFO_V1(quota_ext_quota_reserve);

/* ----------------------------------------------------------------------
 * plans
 * ---------------------------------------------------------------------- */

/* ----------------------------------------------------------------------
 * helpers
 * ---------------------------------------------------------------------- */

int64
seconds_until(TimestampTz when, TimestampTz now)
{
	int64		us;

	if (when <= now)
		return 0;
	us = when - now;
	return (us + USECS_PER_SEC - 1) / USECS_PER_SEC;
}

/*
 * parse_quota_rows
 *		Load SPI's rows (defs_plan columns) into rows[first..].
 */
int
parse_quota_rows(QuotaRow *rows, int first)
{
	uint64		i;

	if (first + SPI_processed > QUOTA_MAX_QUOTAS)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("more than %d quotas apply to one request", QUOTA_MAX_QUOTAS)));
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		QuotaRow   *r = &rows[first + i];
		bool		isnull;
		Datum		d;
		char	   *s;

		memset(r, 0, sizeof(*r));
		r->quota_id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		s = SPI_getvalue(tup, desc, 2);
		r->period = (QuotaPeriod) QuotaPeriodParse(s);
		s = SPI_getvalue(tup, desc, 3);
		strlcpy(r->label, s, sizeof(r->label));
		r->metric_calls = DatumGetBool(SPI_getbinval(tup, desc, 4, &isnull));
		r->max_units = DatumGetInt64(SPI_getbinval(tup, desc, 5, &isnull));
		d = SPI_getbinval(tup, desc, 6, &isnull);
		r->has_soft = !isnull;
		r->soft_limit = isnull ? 0 : DatumGetInt64(d);
		s = SPI_getvalue(tup, desc, 7);
		r->on_exceed = s[0];
		d = SPI_getbinval(tup, desc, 8, &isnull);
		if (!isnull)
		{
			ArrayType  *a = DatumGetArrayTypeP(d);
			Datum	   *elems;
			bool	   *enulls;
			int			ne;
			int			j;

			deconstruct_array(a, INT4OID, 4, true, TYPALIGN_INT, &elems, &enulls, &ne);
			for (j = 0; j < ne && r->nthresholds < QUOTA_MAX_THRESHOLDS; j++)
				if (!enulls[j])
					r->thresholds[r->nthresholds++] = DatumGetInt32(elems[j]);
		}
		r->counter_start = DatumGetTimestampTz(SPI_getbinval(tup, desc, 9, &isnull));
		r->used = DatumGetInt64(SPI_getbinval(tup, desc, 10, &isnull));
		r->metric_cost = DatumGetBool(SPI_getbinval(tup, desc, 11, &isnull));
		s = SPI_getvalue(tup, desc, 12);
		if (s)
			strlcpy(r->currency, s, sizeof(r->currency));
		r->slots = DatumGetInt32(SPI_getbinval(tup, desc, 13, &isnull));
		r->auto_slots = DatumGetBool(SPI_getbinval(tup, desc, 14, &isnull));
		/* throttled quotas' rate (defs_plan and quota_check's plan only) */
		if (desc->natts >= 16 && r->on_exceed == 't')
		{
			r->throttle_per_minute = DatumGetInt32(SPI_getbinval(tup, desc, 15, &isnull));
			r->throttle_burst = DatumGetInt32(SPI_getbinval(tup, desc, 16, &isnull));
		}
		r->charged = -1;
	}
	return first + (int) SPI_processed;
}

/*
 * bind_scope
 *		The first four parameters of a query about the quotas that apply:
 *		$1 tenant, $2 model, $3 user and $4 key (NULL for 0).
 */
void
bind_scope(Datum *values, char *nulls, int64 tenant_id, int64 model_id,
		   int64 user_id, int64 key_id)
{
	values[0] = Int64GetDatum(tenant_id);
	values[1] = Int64GetDatum(model_id);
	values[2] = Int64GetDatum(user_id);
	values[3] = Int64GetDatum(key_id);
	nulls[2] = user_id == 0 ? 'n' : ' ';
	nulls[3] = key_id == 0 ? 'n' : ' ';
}

/* the quotas that apply to (tenant, model, user, key), cached */
typedef struct QuotaDefsKey
{
	int64		tenant_id;
	int64		model_id;
	int64		user_id;
	int64		key_id;
} QuotaDefsKey;

typedef struct QuotaDefsEntry
{
	QuotaDefsKey key;
	bool		valid;
	int			n;
	QuotaRow   *rows;			/* definitions only, in quota_id order */
} QuotaDefsEntry;

/*
 * The definitions of the quotas that apply (no lock), single-row and escrow
 * alike, in quota_id order: the order every call locks their counters in.
 * $5 bounds the quota's creation time: adjustments of old usage skip quotas
 * created after it (their counters never included it).
 */
static QuotaPlan defs_plan = {
	"SELECT q.quota_id, q.period, q.period_label, "
	"       q.metric OPERATOR(pg_catalog.=) 'calls', q.max_units, q.soft_limit, "
	"       q.on_exceed, q.thresholds, '-infinity'::pg_catalog.timestamptz, 0::pg_catalog.int8, "
	"       q.metric OPERATOR(pg_catalog.=) 'cost', q.currency, q.slots, "
	"       q.slots_auto AND q.on_exceed OPERATOR(pg_catalog.=) 'block', "
	"       q.throttle_per_minute, q.throttle_burst "
	"FROM quota_ext.quotas q "
	QUOTA_SCOPE_WHERE,
	5, {INT8OID, INT8OID, INT8OID, INT8OID, TIMESTAMPTZOID}
};

/* the definitions by query; not read-only: a fresh snapshot */
static int
read_defs(int64 tenant_id, int64 model_id, int64 user_id, int64 key_id,
		  TimestampTz created_before, QuotaRow *rows)
{
	Datum		values[5];
	char		nulls[5] = {' ', ' ', ' ', ' ', ' '};

	bind_scope(values, nulls, tenant_id, model_id, user_id, key_id);
	values[4] = TimestampTzGetDatum(created_before);
	QuotaSpiExec(&defs_plan, values, nulls, false, 0);
	return parse_quota_rows(rows, 0);
}

/*
 * The quota definition cache (cache.h): fill reads the definitions into the
 * caller's rows (arg) and keeps a copy; the flat copy holds the fields
 * parse_quota_rows sets for a definition.
 */
static bool
defs_cache_fill(void *entry, void *arg)
{
	QuotaDefsEntry *e = entry;
	QuotaRow   *rows = arg;
	TimestampTz infinity;
	int			nd;

	/* not read-only: a fresh snapshot, taken after the cache's generation */
	TIMESTAMP_NOEND(infinity);
	nd = read_defs(e->key.tenant_id, e->key.model_id, e->key.user_id,
				   e->key.key_id, infinity, rows);
	e->rows = nd > 0 ?
		MemoryContextAlloc(QuotaCacheContext(), sizeof(QuotaRow) * nd) : NULL;
	if (nd > 0)
		memcpy(e->rows, rows, sizeof(QuotaRow) * nd);
	e->n = nd;
	return true;
}

static void
defs_cache_flat(void *entry, QuotaFlat *f)
{
	QuotaDefsEntry *e = entry;
	int			i;

	QuotaFlatCount(f, &e->n, QUOTA_MAX_QUOTAS);
	e->rows = QuotaFlatAlloc(f, e->rows, sizeof(QuotaRow) * e->n);
	for (i = 0; i < e->n && !f->bad; i++)
	{
		QuotaRow   *r = &e->rows[i];

		QUOTA_FLAT(f, r->quota_id);
		QUOTA_FLAT(f, r->period);
		QUOTA_FLAT_STR(f, r->label);
		QUOTA_FLAT(f, r->metric_calls);
		QUOTA_FLAT(f, r->metric_cost);
		QUOTA_FLAT_STR(f, r->currency);
		QUOTA_FLAT(f, r->max_units);
		QUOTA_FLAT(f, r->has_soft);
		QUOTA_FLAT(f, r->soft_limit);
		QUOTA_FLAT(f, r->on_exceed);
		QUOTA_FLAT(f, r->throttle_per_minute);
		QUOTA_FLAT(f, r->throttle_burst);
		QuotaFlatCount(f, &r->nthresholds, QUOTA_MAX_THRESHOLDS);
		QuotaFlatField(f, r->thresholds, sizeof(int) * r->nthresholds);
		QUOTA_FLAT(f, r->counter_start);
		QUOTA_FLAT(f, r->used);
		QUOTA_FLAT(f, r->slots);
		QUOTA_FLAT(f, r->auto_slots);
		QUOTA_FLAT(f, r->charged);
	}
}

static const QuotaCacheKind defs_cache_kind =
	QUOTA_CACHE_KIND(QuotaDefsEntry, 4, "quota_ext quota definition cache",
					 defs_cache_fill, defs_cache_flat, NULL);

/*
 * cached_defs
 *		The definitions for a new charge from the configuration cache
 *		(cache.c), filled by read_defs on a miss.  Returns -1 when the cache
 *		may not be used.
 */
static int
cached_defs(int64 tenant_id, int64 model_id, int64 user_id, int64 key_id, QuotaRow *rows)
{
	QuotaDefsKey key;
	QuotaDefsEntry *e;

	if (!QuotaCacheBegin())
		return -1;
	memset(&key, 0, sizeof(key));
	key.tenant_id = tenant_id;
	key.model_id = model_id;
	key.user_id = user_id;
	key.key_id = key_id;
	e = QuotaCacheGet(&defs_cache_kind, &key, rows);
	if (e->n > 0)
		memcpy(rows, e->rows, sizeof(QuotaRow) * e->n);
	return e->n;
}

/*
 * lock_run
 *		Lock, by primary key and in quota_id order (storage.c), the counters
 *		of the run of single-row quotas that starts at rows[from] and ends
 *		before the next escrow quota.  A quota deleted since (its counter
 *		went with it) no longer applies: it is removed from rows (*n
 *		shrinks).  A counter found laid out over escrow slots since the
 *		definitions were read (automatic escrow re-laid it) stops the run:
 *		that quota becomes an escrow quota whose slot 0 this call holds, and
 *		its other slots are taken before any later quota is locked.  A run
 *		that had to wait is reported to automatic escrow (escrow_adapt.c).
 *		Returns the index of the first row not left locked as a single-row
 *		counter.
 */
int
lock_run(int64 tenant_id, QuotaRow *rows, int *n, int from)
{
	int			k = from;
	int			m;
	int			done;
	int			kept = from;
	int			i;
	int64		ids[QUOTA_MAX_QUOTAS];
	bool		found[QUOTA_MAX_QUOTAS];
	bool		escrow[QUOTA_MAX_QUOTAS];
	TimestampTz starts[QUOTA_MAX_QUOTAS];
	int64		used[QUOTA_MAX_QUOTAS];
	ItemPointerData tids[QUOTA_MAX_QUOTAS];
	TimestampTz mark;
	bool		adapt;

	while (k < *n && rows[k].slots == 1 && !rows[k].locked)
		k++;
	m = k - from;
	if (m == 0)
		return from;
	/* no growth on Citus (escrow_adapt.c): its waits need no entry */
	adapt = !QuotaOnCitus();
	for (i = 0; i < m; i++)
	{
		ids[i] = rows[from + i].quota_id;
		if (rows[from + i].auto_slots && adapt)
			QuotaEscrowCount(tenant_id, ids[i]);
	}
	mark = get_timeout_start_time(DEADLOCK_TIMEOUT);
	done = QuotaStorageLockCounters(tenant_id, ids, m, found, starts, used, tids, escrow);
	if (get_timeout_start_time(DEADLOCK_TIMEOUT) != mark)
	{
		/* this call waited for a counter (since its last wait began) */
		int64		wait_us = (int64) (GetCurrentTimestamp() -
									   get_timeout_start_time(DEADLOCK_TIMEOUT));

		for (i = 0; i < done; i++)
			if (rows[from + i].auto_slots && adapt)
				QuotaEscrowNote(tenant_id, rows[from + i].quota_id, true,
								rows[from + i].slots, wait_us);
	}
	for (i = 0; i < done; i++)
	{
		QuotaRow   *r = &rows[from + i];

		if (!found[i])
			continue;
		if (kept != from + i)
			rows[kept] = *r;
		r = &rows[kept++];
		r->counter_start = starts[i];
		r->used = used[i];
		r->counter_tid = tids[i];
		r->locked = true;
		if (escrow[i])
		{
			/* re-laid since read: take it as the escrow quota it is now */
			r->slots = escrow_slots_now(tenant_id, r->quota_id);
			if (r->slots > 1)
			{
				r->locked = false;
				r->held_slot0 = true;
			}
		}
	}
	/* close the gap of the quotas that are gone */
	if (kept != from + done)
	{
		memmove(&rows[kept], &rows[from + done], sizeof(QuotaRow) * (*n - from - done));
		*n -= from + done - kept;
	}
	return (kept > from && rows[kept - 1].slots > 1) ? kept - 1 : kept;
}

/*
 * lock_counters
 *		The quotas that apply, in quota_id order, with the counters of the
 *		leading run of single-row quotas locked (lock_run); *next is the
 *		first row not locked yet (an escrow quota, or later single-row
 *		quotas behind one), which the caller takes in order.
 *		created_before is +infinity for a new charge, which may take the
 *		definitions from the configuration cache unless fresh is set (a
 *		request that waited decides on what the tables say now).
 */
int
lock_counters(int64 tenant_id, int64 model_id, int64 user_id, int64 key_id,
			  TimestampTz created_before, bool fresh, QuotaRow *rows, int *next)
{
	int			n = -1;

	if (!fresh && TIMESTAMP_IS_NOEND(created_before))
		n = cached_defs(tenant_id, model_id, user_id, key_id, rows);
	if (n < 0)
		n = read_defs(tenant_id, model_id, user_id, key_id, created_before, rows);
	*next = lock_run(tenant_id, rows, &n, 0);
	return n;
}

/*
 * write_usage
 *		The usage row (*row: what the caller knows of it; extra, if any, adds
 *		money, tokens and metadata) plus the touched counters (storage.c).
 *		Returns the usage id.
 */
int64
write_usage(const QuotaUsageRow *row, QuotaRow *rows, int nrows, const UsageExtra *extra)
{
	QuotaUsageRow u = *row;
	QuotaCounterWrite *w;
	int			cap = nrows + 1;
	int			n = 0;
	int			i;
	int			j;

	for (i = 0; i < nrows; i++)
		if (rows[i].touched && rows[i].slots > 1)
			cap += rows[i].nupd;
	w = palloc0(sizeof(QuotaCounterWrite) * cap);
	for (i = 0; i < nrows; i++)
	{
		QuotaRow   *r = &rows[i];

		if (!r->touched)
			continue;
		if (r->slots == 1)
		{
			/* seen_*: as locked (lock_run), what a Citus write compares */
			w[n++] = (QuotaCounterWrite) {
				.quota_id = r->quota_id, .used = r->new_used, .start = r->start,
				.tid = r->counter_tid, .seen = true, .seen_start = r->counter_start,
				.seen_used = r->used
			};
			continue;
		}
		for (j = 0; j < r->nupd; j++)
		{
			/* charged by acquire_slots already: again only for new events */
			if (r->slot_written && r->upd[j].mask == r->written_mask)
				continue;
			w[n] = r->upd[j];
			ItemPointerSetInvalid(&w[n].tid);
			n++;
		}
	}

	u.cost = QuotaMicroToNumeric(extra ? extra->cost_micro : 0);
	if (extra)
	{
		u.has_input = extra->tokens.has_input;
		u.input_tokens = extra->tokens.input;
		u.has_output = extra->tokens.has_output;
		u.output_tokens = extra->tokens.output;
		u.price_id = extra->price_id;
		u.metadata = extra->metadata;
	}
	return QuotaStorageWrite(&u, w, n);
}

/* ----------------------------------------------------------------------
 * the charge
 * ---------------------------------------------------------------------- */

/*
 * decide_quotas
 *		Compute periods and new counts for a charge of `calls` calls,
 *		`units` units and `cost` micro-units of money at `at`; fill *d.
 *		Returns false (nothing to write) when a blocking quota denies.
 *		*overage gets the units beyond the limit of overage and throttled
 *		quotas (a cost quota with on_exceed overage lets the call through
 *		like alert: its money is on the usage row already); d->overage too
 *		when allowed.  A throttled quota past its limit is marked for
 *		throttle_quotas, which the caller runs next when this allows.
 */
bool
decide_quotas(QuotaRow *rows, int n, text *tz, TimestampTz at, TimestampTz clock,
			  int64 calls, int64 units, int64 cost, Decision *d, int64 *overage)
{
	int			i;
	int			deny = -1;
	int			tight = -1;
	int			tight_cost = -1;

	*overage = 0;
	for (i = 0; i < n; i++)
	{
		QuotaRow   *r = &rows[i];
		int64		amount = r->metric_cost ? cost : r->metric_calls ? calls : units;
		bool		over;

		r->throttled = false;
		if (r->slots > 1)
			over = r->multi_deny;	/* acquire_slots decided */
		else
		{
			QuotaPeriodBounds(r->period, tz, at, &r->start, &r->end);
			r->old_used = (r->counter_start == r->start) ? r->used : 0;
			if (pg_add_s64_overflow(r->old_used, amount, &r->new_used))
				ereport(ERROR,
						(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
						 errmsg("quota %lld would overflow", (long long) r->quota_id),
						 errdetail("%lld used, %lld requested.", (long long) r->old_used,
								   (long long) amount)));
			r->touched = true;
			over = r->new_used > r->max_units;
		}
		if (over)
		{
			if (r->on_exceed == 'b')
			{
				/* deny by the blocking quota that frees up last */
				if (deny < 0 || (rows[deny].period != QUOTA_PERIOD_LIFETIME &&
								 (r->period == QUOTA_PERIOD_LIFETIME ||
								  r->end > rows[deny].end)))
					deny = i;
			}
			else if ((r->on_exceed == 'o' || r->on_exceed == 't') && !r->metric_cost)
			{
				int64		over = r->new_used - Max(r->old_used, r->max_units);

				*overage = Max(*overage, Min(over, amount));
				r->throttled = r->on_exceed == 't';
			}
		}
		if (r->metric_cost)
		{
			if (tight_cost < 0 || r->max_units - r->new_used <
				rows[tight_cost].max_units - rows[tight_cost].new_used)
				tight_cost = i;
		}
		else if (tight < 0 ||
				 r->max_units - r->new_used < rows[tight].max_units - rows[tight].new_used)
			tight = i;
	}
	if (tight_cost >= 0)
	{
		d->has_remaining_cost = true;
		d->remaining_cost_micro = Max(rows[tight_cost].max_units -
									  (deny >= 0 ? rows[tight_cost].old_used :
									   rows[tight_cost].new_used), 0);
		if (!d->currency[0])
			strlcpy(d->currency, rows[tight_cost].currency, sizeof(d->currency));
	}

	if (deny >= 0)
	{
		QuotaRow   *r = &rows[deny];

		d->allowed = false;
		d->denied_by = denied_quota;
		decision_quota(d, r, r->old_used, true, clock);
		d->denied_metric = quota_row_metric(r);
		return false;
	}
	d->allowed = true;
	d->has_overage = true;
	d->overage = *overage;
	/* the tightest quota that counts units (never a cost quota) */
	if (tight >= 0)
		decision_quota(d, &rows[tight], rows[tight].new_used, false, clock);
	return true;
}

/*
 * throttle_quotas
 *		The throttled quotas that decide_quotas found past their limits
 *		pass the call at their throttle rate, all of them or none (their
 *		GCRA buckets in the rate limiter's shared memory, ratelimit.h):
 *		nothing to do, and nothing read, for a call that passes none.
 *		Otherwise denied_by 'throttle' names the quota that frees up last,
 *		with retry_after until its throttle admits the next call.  peek
 *		charges no bucket (quota_check).  Returns false when denied.
 */
bool
throttle_quotas(int64 tenant_id, QuotaRow *rows, int n, bool peek,
				TimestampTz clock, Decision *d)
{
	QuotaThrottle t[QUOTA_MAX_QUOTAS];
	QuotaRateDecision rd;
	int			nt = 0;
	int			i;

	for (i = 0; i < n; i++)
		if (rows[i].throttled)
		{
			t[nt].quota_id = rows[i].quota_id;
			t[nt].per_minute = rows[i].throttle_per_minute;
			t[nt].burst = rows[i].throttle_burst;
			nt++;
		}
	if (nt == 0 || QuotaThrottleApply(tenant_id, t, nt, peek, &rd))
		return true;
	for (i = 0; i < n; i++)
		if (rows[i].quota_id == rd.rule_id)
			break;
	if (i == n)
		elog(ERROR, "throttled quota %lld not among the call's quotas", (long long) rd.rule_id);
	d->allowed = false;
	d->denied_by = denied_throttle;
	d->denied_metric = quota_row_metric(&rows[i]);
	d->has_overage = false;
	d->overage = 0;
	decision_quota(d, &rows[i], rows[i].old_used, false, clock);
	d->has_retry = rd.retry_after >= 0;
	d->retry_after = rd.retry_after;
	return false;
}

/*
 * decision_quota
 *		Say in d which quota answers (r) and what is left of it after used:
 *		remaining_cost for a cost quota (money is not in the integer
 *		columns), limit and remaining otherwise; when it resets, and with
 *		retry, the seconds until then.
 */
void
decision_quota(Decision *d, const QuotaRow *r, int64 used, bool retry,
			   TimestampTz clock)
{
	d->quota_id = r->quota_id;
	strlcpy(d->period, r->label, sizeof(d->period));
	if (r->metric_cost)
	{
		d->has_remaining_cost = true;
		d->remaining_cost_micro = Max(r->max_units - used, 0);
	}
	else
	{
		d->has_limit = true;
		d->limit = r->max_units;
		d->remaining = Max(r->max_units - used, 0);
	}
	if (r->period != QUOTA_PERIOD_LIFETIME)
	{
		d->has_resets = true;
		d->resets_at = r->end;
		if (retry)
		{
			d->has_retry = true;
			d->retry_after = seconds_until(r->end, clock);
		}
	}
}

/*
 * charge_instant
 *		Now, after the locks; never before a locked counter's period.
 */
TimestampTz
charge_instant(QuotaRow *rows, int n)
{
	TimestampTz at = GetCurrentTimestamp();
	int			i;

	for (i = 0; i < n; i++)
		if (!TIMESTAMP_NOT_FINITE(rows[i].counter_start) && rows[i].counter_start > at)
			at = rows[i].counter_start;
	return at;
}

static int64
next_reservation_id(void)
{
	static QuotaPlan plan = {
		"SELECT pg_catalog.nextval('quota_ext.reservation_id_seq')", 0, {InvalidOid}
	};
	bool		isnull;

	QuotaSpiExec(&plan, NULL, NULL, false, 1);
	return DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
}

static void
insert_reservation(int64 tenant_id, int64 reservation_id, int64 usage_id, TimestampTz at,
				   int64 model_id, int64 user_id, int64 key_id, int64 estimate, Interval *ttl,
				   const UsageExtra *extra)
{
	static QuotaPlan plan = {
		"INSERT INTO quota_ext.reservations (tenant_id, reservation_id, usage_id, occurred_at, "
		"    model_id, user_id, key_id, estimate, expires_at, price_id, cost, input_tokens, "
		"    output_tokens) "
		"VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $4 OPERATOR(pg_catalog.+) $9, $10, $11, $12, $13)",
		13, {INT8OID, INT8OID, INT8OID, TIMESTAMPTZOID, INT8OID, INT8OID, INT8OID, INT8OID,
		INTERVALOID, INT8OID, NUMERICOID, INT8OID, INT8OID}
	};
	Datum		values[13];
	char		nulls[13];

	memset(nulls, ' ', sizeof(nulls));
	values[0] = Int64GetDatum(tenant_id);
	values[1] = Int64GetDatum(reservation_id);
	values[2] = Int64GetDatum(usage_id);
	values[3] = TimestampTzGetDatum(at);
	values[4] = Int64GetDatum(model_id);
	values[5] = Int64GetDatum(user_id);
	if (user_id == 0)
		nulls[5] = 'n';
	values[6] = Int64GetDatum(key_id);
	if (key_id == 0)
		nulls[6] = 'n';
	values[7] = Int64GetDatum(estimate);
	values[8] = IntervalPGetDatum(ttl);
	values[9] = Int64GetDatum(extra->price_id);
	if (extra->price_id == 0)
		nulls[9] = 'n';
	values[10] = QuotaMicroToNumeric(extra->cost_micro);
	values[11] = Int64GetDatum(extra->tokens.input);
	if (!extra->tokens.has_input)
		nulls[11] = 'n';
	values[12] = Int64GetDatum(extra->tokens.output);
	if (!extra->tokens.has_output)
		nulls[12] = 'n';
	QuotaSpiExec(&plan, values, nulls, false, 0);
}

/*
 * charge_cost
 *		The price and cost of a charge at `at` (metering.c): the price in
 *		force came with the policy plan; look again only when a new version
 *		started between the lookup and `at`.  A cost quota counting another
 *		currency than the price is a configuration error (55000), raised
 *		before anything is written.
 */
void
charge_cost(const ConsumeRequest *req, QuotaPolicyResult *pol, TimestampTz at,
			QuotaRow *rows, int n, UsageExtra *extra, Decision *d)
{
	QuotaPrice *price = &pol->price;
	QuotaPrice	later;
	int			i;

	if (at >= price->valid_until)
	{
		QuotaPriceAt(req->tenant_id, pol->model_id, at, &later);
		price = &later;
	}
	if (!price->found)
		return;
	extra->price_id = price->price_id;
	extra->cost_micro = QuotaCostMicro(price, req->units, req->tokens.input,
									   req->tokens.output);
	check_cost_bounded(extra->cost_micro);
	d->has_cost = true;
	d->cost_micro = extra->cost_micro;
	strlcpy(d->currency, price->currency, sizeof(d->currency));
	for (i = 0; i < n; i++)
		if (rows[i].metric_cost && strcmp(rows[i].currency, price->currency) != 0)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("cost quota %lld counts %s but model \"%s\" is priced in %s",
							(long long) rows[i].quota_id, rows[i].currency,
							QuotaQuoteInput(req->model),
							price->currency),
					 errhint("Give the tenant a price in %s with quota_ext.price_set(), or a cost quota in %s.",
							 rows[i].currency, price->currency)));
}

/* count the decision in shared memory (stats.c) */
static void
count_decision(int64 tenant_id, const Decision *d)
{
	QuotaOutcome o;

	if (d->replayed)
		o = QUOTA_OUTCOME_REPLAYED;
	else if (d->allowed)
		o = QUOTA_OUTCOME_ALLOWED;
	else if (d->denied_by == denied_rate)
		o = QUOTA_OUTCOME_DENIED_RATE;
	else if (d->denied_by == denied_policy)
		o = QUOTA_OUTCOME_DENIED_POLICY;
	else if (d->denied_by == denied_tenant)
		o = QUOTA_OUTCOME_DENIED_TENANT;
	else
		o = QUOTA_OUTCOME_DENIED_QUOTA;
	QuotaStatsCount(tenant_id, o);
}

/*
 * lock_wait_mark
 *		Changes whenever this backend starts to sleep on a heavyweight lock
 *		(a row lock, or another transaction's uncommitted idempotency key):
 *		ProcSleep arms the deadlock timeout each time it goes to sleep, and
 *		the timeout keeps its start time.  Two reads that differ mean "this
 *		request waited in between".
 */
static TimestampTz
lock_wait_mark(void)
{
	return get_timeout_start_time(DEADLOCK_TIMEOUT);
}

/*
 * recheck_after_wait
 *		A request that waited for a counter or an idempotency key decides on
 *		what is true once it holds them, not on what it read before it
 *		waited: a limit cut, policy revoke, key revoke or tenant suspension
 *		that committed in the meantime applies to it.  (Checklist L6; found
 *		by test/specs/admin_race.spec, where a waiting consume used to pass
 *		after each of these had committed.)  READ COMMITTED gives each
 *		statement a new snapshot, and the counters are already locked, so
 *		re-reading the policy and the quota rows sees the change without
 *		waiting again, unless a quota was added meanwhile; then loop.
 *		Uncontended requests never wait and pay nothing.  With rows NULL
 *		(after the escrow slots were taken) only the policy, the tenant and
 *		the key are read again.
 *
 *		The configuration cache's generation moves at every committed admin
 *		change (before that transaction releases its locks): when it has not
 *		moved since *stamp was taken, before the request read its
 *		configuration, nothing it read can have changed and nothing is read
 *		again.  So waiting on a hot tenant's counters costs nothing extra.
 *		Requests that do not use the cache (stamp 0) always read again.
 *
 *		Returns false when the request is now denied by its tenant or
 *		policy (pol says which).  invoke(), which checked its key in this
 *		same statement, also checks it again and raises authenticate()'s
 *		error if it was revoked meanwhile; a context set by an earlier
 *		authenticate() stays valid until its transaction ends, as
 *		documented (test/specs/key_revoke.spec).  Otherwise rows and *n are
 *		fresh.
 */
static bool
recheck_after_wait(const ConsumeRequest *req, TimestampTz *mark, uint64 *stamp,
				   uint64 *placement_epoch, QuotaPolicyResult *pol, QuotaRow *rows,
				   int *n, int *next)
{
	int64		model_id = pol->model_id;
	TimestampTz infinity;
	bool		remote;

	TIMESTAMP_NOEND(infinity);
	/*
	 * On Citus a charge whose counter statements run elsewhere (on the
	 * coordinator; local execution off) waits there, unseen by the mark.
	 */
	remote = QuotaOnCitus() &&
		(QuotaCountersInvalidations() != *placement_epoch ||
		 !QuotaCitusCountersLocal(req->tenant_id, *placement_epoch));
	while (remote || lock_wait_mark() != *mark)
	{
		bool		unchanged;

		remote = false;
		*mark = lock_wait_mark();
		unchanged = QuotaConfigUnchanged(*stamp, req->tenant_id);
		/*
		 * On Citus a statement that waited for a shard move may have been
		 * routed to the old placement: the move invalidates quota_counters'
		 * relcache, and then the counters are locked again (definitions from
		 * the cache).  The write's compare-and-set (storage_spi.c) would
		 * catch it as 40001; this spares the caller that retry (091_citus
		 * without it: 3 of 600 charges retried per move; with it: none).
		 */
		if (unchanged &&
			(rows == NULL || !QuotaOnCitus() ||
			 QuotaCountersInvalidations() == *placement_epoch))
			continue;
		if (!unchanged)
		{
			*stamp = QuotaConfigStamp();
			if (req->key_authenticated)
				QuotaKeyRecheck(req->tenant_id, req->key_id);
			QuotaPolicyEvaluateFresh(req->tenant_id, req->model, req->role, pol);
			if (!pol->tenant_found || !pol->tenant_active || !pol->allowed)
				return false;
			/* the counters locked are the model's that was resolved first */
			pol->model_id = model_id;
		}
		if (rows)
		{
			int64		held[QUOTA_MAX_QUOTAS];
			int			nheld = 0;
			int			i;
			int			j;

			/* the slot-0 rows this call holds stay held: say so to escrow */
			for (i = 0; i < *n; i++)
				if (rows[i].locked || rows[i].held_slot0)
					held[nheld++] = rows[i].quota_id;
			*placement_epoch = QuotaOnCitus() ? QuotaCountersInvalidations() : 0;
			*n = lock_counters(req->tenant_id, model_id, req->user_id, req->key_id,
							   infinity, !unchanged, rows, next);
			for (i = 0; i < *n; i++)
				for (j = 0; j < nheld; j++)
					if (rows[i].slots > 1 && rows[i].quota_id == held[j])
						rows[i].held_slot0 = true;
		}
	}
	return true;
}

/*
 * QuotaConsume
 *		The whole request: see the file header.  Runs its own SPI session.
 */
static void
QuotaConsume(const ConsumeRequest *req, Decision *d)
{
	QuotaSpiState spi;
	QuotaPolicyResult pol;
	QuotaRow	rows[QUOTA_MAX_QUOTAS];
	int			n;
	int			next;
	TimestampTz at;
	TimestampTz clock;
	int64		overage;
	int64		reservation_id = 0;
	text	   *tz;
	TimestampTz infinity;
	UsageExtra	extra;
	int			i;
	TimestampTz wait_mark = lock_wait_mark();
	/* invoke() took it before it read the key */
	uint64		config_stamp = req->key_authenticated ? req->config_stamp : QuotaConfigStamp();
	bool		escrow_denied = false;
	uint64		placement_epoch = 0;	/* QuotaCountersInvalidations (Citus) */

	memset(d, 0, sizeof(*d));
	memset(&extra, 0, sizeof(extra));
	extra.tokens = req->tokens;
	extra.metadata = req->metadata;
	QuotaSpiBegin(&spi);

	QuotaPolicyEvaluate(req->tenant_id, req->model, req->role, &pol);
	if (!pol.tenant_found)
		QuotaRaiseUnknownTenant(req->tenant_id);
	if (pol.model_id == 0)
		raise_unknown_model(req->model);

	if (req->idem_key && !idem_claim(req, d))
	{
		QuotaSpiEnd(&spi);
		QuotaStatsCount(req->tenant_id, QUOTA_OUTCOME_REPLAYED);
		return;
	}

	if (!pol.tenant_active || !pol.allowed)
	{
		d->allowed = false;
		d->denied_by = pol.tenant_active ? denied_policy : denied_tenant;
	}
	else
	{
		QuotaRateDecision rd;

		/* rate limits first: a limited request charges no quota */
		if (!QuotaRateLimitApply(req->tenant_id, pol.model_id, req->key_id, 1, &rd))
		{
			d->allowed = false;
			d->denied_by = denied_rate;
			d->has_limit = true;
			d->limit = rd.limit;
			d->remaining = rd.remaining;
			d->has_retry = rd.retry_after >= 0;
			d->retry_after = rd.retry_after;
			d->has_resets = true;
			d->resets_at = GetCurrentTimestamp() + rd.reset_after * USECS_PER_SEC;
			goto done;
		}

		tz = cstring_to_text(pol.timezone);
		TIMESTAMP_NOEND(infinity);
		if (QuotaOnCitus())
			placement_epoch = QuotaCountersInvalidations();
		n = lock_counters(req->tenant_id, pol.model_id, req->user_id, req->key_id,
						  infinity, false, rows, &next);
		if (!recheck_after_wait(req, &wait_mark, &config_stamp, &placement_epoch, &pol,
								rows, &n, &next))
		{
			d->allowed = false;
			d->denied_by = pol.tenant_active ? denied_policy : denied_tenant;
			goto done;
		}
		at = charge_instant(rows, n);
		clock = at;
		charge_cost(req, &pol, at, rows, n, &extra, d);

		/*
		 * The rest in quota_id order: escrow quotas take their slots, and
		 * the single-row quotas after one are locked then (lock_run), so
		 * that every call locks in (quota_id, slot) order.
		 */
		for (i = next; i < n;)
		{
			QuotaRow   *r = &rows[i];

			if (r->slots == 1)
			{
				int			from = i;
				int			j;

				if (r->locked)
				{
					i++;
					continue;
				}
				i = lock_run(req->tenant_id, rows, &n, from);
				for (j = from; j < i; j++)
					if (!TIMESTAMP_NOT_FINITE(rows[j].counter_start) &&
						rows[j].counter_start > at)
						ereport(ERROR,
								(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
								 errmsg("quota %lld entered a new period during this call",
										(long long) rows[j].quota_id),
								 errhint("Retry the transaction.")));
				continue;
			}
			QuotaPeriodBounds(r->period, tz, at, &r->start, &r->end);
			acquire_slots(req->tenant_id, r,
						  r->metric_cost ? extra.cost_micro : r->metric_calls ? 1 : req->units,
						  escrow_denied);
			escrow_denied |= r->multi_deny;
			i++;
		}
		/* taking every slot of an escrow quota may have waited too */
		if (!recheck_after_wait(req, &wait_mark, &config_stamp, &placement_epoch, &pol, NULL, NULL, NULL))
		{
			release_slots(req->tenant_id, rows, n);
			d->allowed = false;
			d->denied_by = pol.tenant_active ? denied_policy : denied_tenant;
			goto done;
		}
		if (decide_quotas(rows, n, tz, at, clock, 1,
						  req->units, extra.cost_micro, d, &overage) &&
			throttle_quotas(req->tenant_id, rows, n, false, clock, d))
		{
			QuotaUsageRow u = {
				.tenant_id = req->tenant_id, .occurred_at = at,
				.kind = req->reserve ? "reserve" : "consume", .model_id = pol.model_id,
				.user_id = req->user_id, .key_id = req->key_id, .calls = 1,
				.units = req->units, .overage = overage, .idem_key = req->idem_key
			};

			/* events first: escrow slots record theirs in the row written below */
			for (i = 0; i < n; i++)
				emit_events(req->tenant_id, &rows[i]);
			if (req->reserve)
				u.reservation_id = reservation_id = next_reservation_id();
			d->usage_id = write_usage(&u, rows, n, &extra);
			if (req->reserve)
			{
				insert_reservation(req->tenant_id, reservation_id, d->usage_id, at,
								   pol.model_id, req->user_id, req->key_id, req->units,
								   req->ttl, &extra);
				d->reservation_id = reservation_id;
			}
		}
		else
			release_slots(req->tenant_id, rows, n);
	}
done:
	if (req->idem_key)
		idem_store(req, d);
	QuotaSpiEnd(&spi);
	count_decision(req->tenant_id, d);
}

/* the arguments that must not be NULL (charge_args) */
static const char *const consume_names[] = {"tenant_id", "model", "units"};
static const char *const invoke_names[] = {"api_key", "model", "units"};
static const char *const reserve_names[] = {"tenant_id", "model", "estimate", "ttl"};

/*
 * charge_call
 *		The body of quota_consume, quota_consume_or_raise and quota_reserve
 *		(fn names the caller in errors): a denial is an error when raise.
 */
static Datum
charge_call(FunctionCallInfo fcinfo, const char *fn, const char *const *names,
			int nnames, bool raise)
{
	ConsumeRequest req;
	Decision	d;

	check_writable(fn);
	charge_args(fcinfo, &req, names, nnames, true);
	QuotaConsume(&req, &d);
	if (raise && !d.allowed)
		raise_denial(&req, &d);
	PG_RETURN_DATUM(request_decision_datum(fcinfo, &req, &d));
}

/*
 * quota_ext.quota_consume(tenant_id bigint, model text, units bigint DEFAULT 1,
 *		idempotency_key text DEFAULT NULL, user_id bigint DEFAULT NULL,
 *		key_id bigint DEFAULT NULL, role text DEFAULT NULL)
 *		RETURNS quota_ext.decision
 */
Datum
quota_ext_quota_consume(PG_FUNCTION_ARGS)
{
	return charge_call(fcinfo, "quota_consume()", consume_names, 3, false);
}

/*
 * quota_ext.quota_consume_or_raise(...) RETURNS quota_ext.decision
 *		As quota_consume, but a denial is an error: 53400 for quotas and
 *		rate limits, 42501 for policy and inactive tenants.
 */
Datum
quota_ext_quota_consume_or_raise(PG_FUNCTION_ARGS)
{
	return charge_call(fcinfo, "quota_consume_or_raise()", consume_names, 3, true);
}

/*
 * quota_ext.invoke(api_key text, model text, units bigint DEFAULT 1,
 *		idempotency_key text DEFAULT NULL) RETURNS quota_ext.decision
 *
 * authenticate() then quota_consume() for the key's tenant, user and key,
 * with the key's user's role.
 */
Datum
quota_ext_invoke(PG_FUNCTION_ARGS)
{
	ConsumeRequest req;
	Decision	d;
	const QuotaContext *ctx;

	QuotaKeyArgBegin();
	check_writable("invoke()");
	charge_args(fcinfo, &req, invoke_names, 3, false);

	req.config_stamp = QuotaConfigStamp();
	QuotaAuthenticate(PG_GETARG_TEXT_PP(0));
	ctx = QuotaContextGet();
	req.tenant_id = ctx->tenant_id;
	req.user_id = ctx->user_id;
	req.key_id = ctx->key_id;
	req.key_authenticated = true;
	req.role = ctx->role[0] ? pstrdup(ctx->role) : NULL;
	QuotaConsume(&req, &d);
	QuotaKeyArgDone();
	PG_RETURN_DATUM(request_decision_datum(fcinfo, &req, &d));
}

/*
 * quota_ext.quota_reserve(tenant_id bigint, model text, estimate bigint,
 *		ttl interval DEFAULT '15 minutes', idempotency_key text DEFAULT NULL,
 *		user_id bigint DEFAULT NULL, key_id bigint DEFAULT NULL,
 *		role text DEFAULT NULL) RETURNS quota_ext.decision
 */
Datum
quota_ext_quota_reserve(PG_FUNCTION_ARGS)
{
	return charge_call(fcinfo, "quota_reserve()", reserve_names, 4, false);
}
