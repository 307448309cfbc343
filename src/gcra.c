/*-------------------------------------------------------------------------
 *
 * gcra.c
 *		The generic cell rate algorithm (GCRA), with the answers of
 *		redis-cell's CL.THROTTLE, as pure integer arithmetic.
 *
 * Nothing here touches shared memory, tables or the clock: the caller
 * passes the stored theoretical arrival time (TAT) and "now", both in
 * nanoseconds on one clock, and gets back the decision and the TAT to
 * store.  ratelimit.c supplies the clock and the storage;
 * quota_ext.gcra_eval() exposes the arithmetic to SQL so that it can be
 * tested with hand-computed sequences.
 *
 * The algorithm is redis-cell's (brandur/redis-cell, redis-cell-impl
 * src/lib.rs, RateLimiter::rate_limit, and the reply built in
 * redis-cell/src/lib.rs), step by step:
 *
 *	emission_interval = period / count, truncated to whole nanoseconds
 *	tolerance (DVT)   = emission_interval * (max_burst + 1)
 *	increment         = emission_interval * quantity
 *	tat               = stored TAT, or now when there is none
 *	new_tat           = max(tat, now) + increment
 *	allow_at          = new_tat - tolerance
 *	limited           = now < allow_at
 *	  limited:  retry_after = allow_at - now (or -1 s when increment >
 *	            tolerance: such a request can never succeed)
 *	            ttl = tat - now; nothing is stored
 *	  allowed:  retry_after = -1 s; ttl = new_tat - now; new_tat is stored
 *	            (a quantity of 0 stores nothing new: a peek)
 *	remaining = trunc(us(tolerance - ttl) / us(emission_interval)), or 0
 *	            when tolerance - ttl <= -emission_interval
 *	limit     = max_burst + 1
 *
 * and the reply rounds retry_after and reset_after (= ttl) to whole
 * seconds: truncate, then add one when the sub-second part has at least a
 * whole millisecond (redis-cell: whole_seconds() + (subsec_milliseconds() >
 * 0)).  So 1.5 s is 2, 2.0004 s is 2, and -1 s stays -1.  "us()" truncates
 * nanoseconds to microseconds toward zero, as redis-cell's
 * whole_microseconds() does before its floating-point division; we divide
 * integers, which agrees with the float division for every value below
 * 2^53 microseconds (285 years).
 *
 * Two deliberate differences, both where redis-cell has no defined answer:
 *	- A stored TAT in the past counts as no TAT.  Redis expires the key
 *	  exactly when its TAT passes, so redis-cell sees "no key" there too
 *	  (it would only differ within Redis's expiry granularity, answering a
 *	  negative ttl).
 *	- An emission interval under one microsecond (more than a million per
 *	  second) makes redis-cell divide by zero when computing remaining; we
 *	  divide the nanoseconds instead.  An interval of zero nanoseconds
 *	  (count > period in ns) is refused, as redis-cell refuses "zero
 *	  rates".
 *
 * Every sum and product is checked with the pg_*_overflow helpers: a
 * combination of parameters whose tolerance or TAT does not fit in 64-bit
 * nanoseconds is refused (22003), never wrapped.
 *
 * Bounds (a third difference from redis-cell, which takes any period):
 * period_seconds is at most QUOTA_RL_MAX_SECONDS (one day), and so is the
 * tolerance, the time an empty bucket takes to become full again, which is
 * also the longest a bucket's TAT can lie ahead of now and so the longest a
 * bucket occupies a slot of the shared table (ratelimit.c).  Both are
 * refused with 22023 beyond.  Without them one call with a period of 2^31
 * seconds pinned a slot for 68 years; a limit over days, weeks or months is
 * what quotas are for (persistent and by calendar period), while the
 * bucket table is emptied by every restart.
 *
 * A clock that goes backwards cannot grant capacity: the TAT never moves
 * back, so an earlier "now" only sees a fuller bucket (a larger ttl, fewer
 * remaining) until the clock catches up.
 *
 *-------------------------------------------------------------------------
 */
#include "quota_ext.h"
#include "args.h"
#include "gcra.h"

#include "access/htup_details.h"
#include "common/int.h"
#include "funcapi.h"

PG_FUNCTION_INFO_V1(quota_ext_gcra_eval);

#define NS_PER_SEC	INT64CONST(1000000000)
#define NS_PER_MS	INT64CONST(1000000)
#define NS_PER_US	INT64CONST(1000)

/*
 * quota_gcra_seconds
 *		A duration in nanoseconds as redis-cell replies it: whole seconds,
 *		plus one when the fraction holds at least one whole millisecond.
 *		C's / and % truncate toward zero like whole_seconds() and
 *		subsec_milliseconds().
 */
static int64
quota_gcra_seconds(int64 ns)
{
	int64		s = ns / NS_PER_SEC;

	if ((ns % NS_PER_SEC) / NS_PER_MS > 0)
		s++;
	return s;
}

/*
 * QuotaGcraEval
 *		One CL.THROTTLE against a stored TAT (0 or anything <= now = none).
 *		Parameters must have passed QuotaGcraCheckArgs.  Returns
 *		QUOTA_GCRA_OK and fills *out, or the reason there is no answer.
 */
QuotaGcraStatus
QuotaGcraEval(int64 tat, int64 now, int64 max_burst, int64 count,
			  int64 period_s, int64 quantity, QuotaGcraResult *out)
{
	int64		period_ns;
	int64		interval;
	int64		tolerance;
	int64		increment;
	int64		new_tat;
	int64		allow_at;
	int64		ttl;
	int64		next;
	int64		neg_interval;

	Assert(max_burst >= 0 && count > 0 && period_s > 0 && quantity >= 0);

	if (pg_mul_s64_overflow(period_s, NS_PER_SEC, &period_ns))
		return QUOTA_GCRA_TOO_LONG;
	interval = period_ns / count;
	if (interval <= 0)
		return QUOTA_GCRA_ZERO_RATE;
	if (pg_mul_s64_overflow(interval, max_burst + 1, &tolerance))
		return QUOTA_GCRA_TOO_LONG;
	if (period_s > QUOTA_RL_MAX_SECONDS ||
		tolerance > QUOTA_RL_MAX_SECONDS * NS_PER_SEC)
		return QUOTA_GCRA_TOO_LONG;
	if (pg_mul_s64_overflow(interval, quantity, &increment))
		return QUOTA_GCRA_OVERFLOW;

	if (tat < now)
		tat = now;
	if (pg_add_s64_overflow(tat, increment, &new_tat) ||
		pg_sub_s64_overflow(new_tat, tolerance, &allow_at))
		return QUOTA_GCRA_OVERFLOW;

	out->limit = max_burst + 1;
	out->retry_after_ns = -NS_PER_SEC;
	if (now < allow_at)
	{
		out->limited = true;
		if (increment <= tolerance &&
			pg_sub_s64_overflow(allow_at, now, &out->retry_after_ns))
			return QUOTA_GCRA_OVERFLOW;
		if (pg_sub_s64_overflow(tat, now, &ttl))
			return QUOTA_GCRA_OVERFLOW;
		out->new_tat = tat;
	}
	else
	{
		out->limited = false;
		if (pg_sub_s64_overflow(new_tat, now, &ttl))
			return QUOTA_GCRA_OVERFLOW;
		out->new_tat = new_tat;
	}

	/* ttl >= 0 and tolerance >= 0, so tolerance - ttl cannot overflow */
	next = tolerance - ttl;
	neg_interval = -interval;
	out->remaining = 0;
	if (next > neg_interval)
	{
		int64		interval_us = interval / NS_PER_US;

		if (interval_us > 0)
			out->remaining = (next / NS_PER_US) / interval_us;
		else
			out->remaining = next / interval;
	}
	out->reset_after_ns = ttl;
	out->retry_after = quota_gcra_seconds(out->retry_after_ns);
	out->reset_after = quota_gcra_seconds(ttl);
	return QUOTA_GCRA_OK;
}

/*
 * QuotaGcraGetArgs
 *		The arguments max_burst, count, period_seconds and quantity of a SQL
 *		function, at positions first to first + 3: none may be NULL, and
 *		QuotaGcraCheckArgs must take them.
 */
void
QuotaGcraGetArgs(FunctionCallInfo fcinfo, int first, int64 *max_burst,
				 int64 *count, int64 *period_s, int64 *quantity)
{
	static const char *const names[] = {
		"max_burst", "count", "period_seconds", "quantity"
	};
	int			i;

	for (i = 0; i < 4; i++)
		QuotaArgNotNull(fcinfo, first + i, names[i]);
	*max_burst = PG_GETARG_INT32(first);
	*count = PG_GETARG_INT32(first + 1);
	*period_s = PG_GETARG_INT32(first + 2);
	*quantity = PG_GETARG_INT32(first + 3);
	QuotaGcraCheckArgs(*max_burst, *count, *period_s, *quantity);
}

/*
 * QuotaGcraValues
 *		The first five columns of a rate-limit answer: limited, limit,
 *		remaining, retry_after, reset_after (rate_limit_check, gcra_eval).
 */
void
QuotaGcraValues(const QuotaGcraResult *r, Datum *values)
{
	values[0] = BoolGetDatum(r->limited);
	values[1] = Int64GetDatum(r->limit);
	values[2] = Int64GetDatum(r->remaining);
	values[3] = Int64GetDatum(r->retry_after);
	values[4] = Int64GetDatum(r->reset_after);
}

/*
 * QuotaGcraCheckArgs
 *		Raise 22023 for parameters CL.THROTTLE cannot take.
 */
void
QuotaGcraCheckArgs(int64 max_burst, int64 count, int64 period_s, int64 quantity)
{
	if (max_burst < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_burst must not be negative"),
				 errdetail("max_burst is %lld.", (long long) max_burst)));
	if (count <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("count must be positive"),
				 errdetail("count is %lld.", (long long) count)));
	if (period_s <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("period must be positive"),
				 errdetail("period is %lld seconds.", (long long) period_s)));
	if (period_s > QUOTA_RL_MAX_SECONDS)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("period must be at most %d seconds (one day)",
						QUOTA_RL_MAX_SECONDS),
				 errdetail("period is %lld seconds.", (long long) period_s),
				 errhint("Use a quota (quota_ext.quota_set) for limits over longer periods.")));
	if (quantity < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("quantity must not be negative"),
				 errdetail("quantity is %lld.", (long long) quantity)));
}

/*
 * QuotaGcraRaise
 *		The error for a status other than QUOTA_GCRA_OK.
 */
void
QuotaGcraRaise(QuotaGcraStatus status, int64 max_burst, int64 count,
			   int64 period_s, int64 quantity)
{
	if (status == QUOTA_GCRA_TOO_LONG)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("rate limit takes more than one day to refill"),
				 errdetail("max_burst %lld, count %lld, period %lld s: (max_burst + 1) * period / count must be at most %d seconds.",
						   (long long) max_burst, (long long) count,
						   (long long) period_s, QUOTA_RL_MAX_SECONDS),
				 errhint("Use a smaller max_burst or a higher count, or a quota (quota_ext.quota_set) for longer periods.")));
	if (status == QUOTA_GCRA_ZERO_RATE)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("rate of %lld per %lld seconds is too high",
						(long long) count, (long long) period_s),
				 errdetail("The emission interval period / count is shorter than one nanosecond."),
				 errhint("Use at most 1000000000 per second.")));
	ereport(ERROR,
			(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
			 errmsg("rate limit arithmetic out of range"),
			 errdetail("max_burst %lld, count %lld, period %lld s, quantity %lld: the tolerance or the next arrival time does not fit in 64-bit nanoseconds.",
					   (long long) max_burst, (long long) count,
					   (long long) period_s, (long long) quantity),
			 errhint("Use a shorter period, a higher count or a smaller burst or quantity.")));
}

/*
 * quota_ext.gcra_eval(tat_ns bigint, now_ns bigint, max_burst int,
 *		count int, period_seconds int, quantity int)
 *	RETURNS (limited boolean, "limit" bigint, remaining bigint,
 *		retry_after bigint, reset_after bigint, new_tat_ns bigint,
 *		retry_after_ns bigint, reset_after_ns bigint)
 *
 *		The arithmetic of one check with the clock passed in: tat_ns is the
 *		stored TAT (0 for a new key), now_ns the current time, both in
 *		nanoseconds; new_tat_ns is what to store for the next call.
 */
Datum
quota_ext_gcra_eval(PG_FUNCTION_ARGS)
{
	QuotaGcraResult r;
	QuotaGcraStatus st;
	Datum		values[8];
	bool		nulls[8] = {0};
	int64		tat;
	int64		now;
	int64		max_burst;
	int64		count;
	int64		period;
	int64		quantity;

	QuotaArgNotNull(fcinfo, 0, "tat_ns");
	QuotaArgNotNull(fcinfo, 1, "now_ns");
	tat = PG_GETARG_INT64(0);
	now = PG_GETARG_INT64(1);
	QuotaGcraGetArgs(fcinfo, 2, &max_burst, &count, &period, &quantity);

	st = QuotaGcraEval(tat, now, max_burst, count, period, quantity, &r);
	if (st != QUOTA_GCRA_OK)
		QuotaGcraRaise(st, max_burst, count, period, quantity);

	QuotaGcraValues(&r, values);
	values[5] = Int64GetDatum(r.new_tat);
	values[6] = Int64GetDatum(r.retry_after_ns);
	values[7] = Int64GetDatum(r.reset_after_ns);
	PG_RETURN_DATUM(QuotaResultRow(fcinfo, values, nulls));
}
