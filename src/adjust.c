/*-------------------------------------------------------------------------
 *
 * adjust.c
 *		Adjustments: quota_settle, quota_cancel, quota_refund,
 *		quota_expire_reservations.
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
#include "args.h"
#include "period.h"
#include "metering.h"
#include "consume_internal.h"
#include "storage.h"

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

PG_FUNCTION_INFO_V1(quota_ext_quota_settle);
PG_FUNCTION_INFO_V1(quota_ext_quota_cancel);
PG_FUNCTION_INFO_V1(quota_ext_quota_refund);
PG_FUNCTION_INFO_V1(quota_ext_quota_expire_reservations);

/* ----------------------------------------------------------------------
 * adjustments: refund, settle, release
 * ---------------------------------------------------------------------- */

/* the tenant's time zone (inside SPI) */
static text *
tenant_timezone(int64 tenant_id)
{
	static QuotaPlan plan = {
		"SELECT timezone FROM quota_ext.tenants WHERE tenant_id OPERATOR(pg_catalog.=) $1",
		1, {INT8OID}
	};
	Datum		values[1];

	values[0] = Int64GetDatum(tenant_id);
	QuotaSpiExec(&plan, values, NULL, false, 1);
	if (SPI_processed != 1)
		QuotaRaiseUnknownTenant(tenant_id);
	return cstring_to_text(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1));
}

/*
 * adjust_counters
 *		Add (calls, units) to the counters that counted a row of
 *		occurred_at: those still in that period.  With check, a positive
 *		change that a blocking quota cannot take changes nothing and
 *		returns false with *d describing the quota.
 */
static bool
adjust_counters(int64 tenant_id, TimestampTz occurred_at, int64 model_id, int64 user_id,
				int64 key_id, int64 calls, int64 units, int64 cost, bool check, QuotaRow *rows,
				int *nrows, Decision *d)
{
	text	   *tz = tenant_timezone(tenant_id);
	int			n;
	int			i;
	TimestampTz clock = GetCurrentTimestamp();

	int			next;

	n = lock_counters(tenant_id, model_id, user_id, key_id, occurred_at, true, rows, &next);
	*nrows = n;
	for (i = 0; i < n; i++)
	{
		QuotaRow   *r = &rows[i];
		int64		delta;
		bool		fits = true;

		/* single-row quotas after an escrow one are locked in order here */
		if (r->slots == 1 && !r->locked)
		{
			(void) lock_run(tenant_id, rows, &n, i);
			*nrows = n;
			if (i >= n)
				break;			/* the rest were deleted meanwhile */
			r = &rows[i];
		}
		delta = r->metric_cost ? cost : r->metric_calls ? calls : units;

		QuotaPeriodBounds(r->period, tz, occurred_at, &r->start, &r->end);
		if (r->slots > 1)
		{
			/* escrow: adjust_slots says which slots, unless it moved on */
			bool		moved_on = false;

			r->touched = false;
			if (delta == 0)
				continue;
			fits = adjust_slots(tenant_id, r, delta, check && r->on_exceed == 'b', &moved_on);
			if (moved_on)
				continue;
			r->used = r->old_used;
			r->touched = fits;
		}
		else
		{
			r->touched = (r->counter_start == r->start && delta != 0);
			if (!r->touched)
				continue;
			r->old_used = r->used;
			if (pg_add_s64_overflow(r->used, delta, &r->new_used))
				ereport(ERROR,
						(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
						 errmsg("quota %lld would overflow", (long long) r->quota_id)));
			if (r->new_used < 0)
				r->new_used = 0;
			fits = !(check && delta > 0 && r->on_exceed == 'b' && r->new_used > r->max_units);
		}
		if (!fits)
		{
			d->allowed = false;
			d->denied_by = denied_quota;
			decision_quota(d, r, r->used, true, clock);
			d->denied_metric = quota_row_metric(r);
			if (r->metric_cost)
				strlcpy(d->currency, r->currency, sizeof(d->currency));
			return false;
		}
	}
	return true;
}

/*
 * describe_after
 *		Fill an allowed adjustment's decision like quota_consume fills an
 *		allowed call's: the tightest calls/units quota (quota_id, period,
 *		limit, remaining, resets_at) and the money left in the tightest cost
 *		quota (remaining_cost, and its currency when the call has none), as
 *		the counters of the adjusted period stand after the adjustment
 *		(rows from adjust_counters, or from read_counters, whose escrow
 *		quotas come as one row with their total).
 *		(Settle and refund left them NULL before: issue 17.)  Counters that
 *		moved on to a later period, and escrow quotas the adjustment did not
 *		touch (only their slot 0 is loaded), are not described.
 */
static void
describe_after(const QuotaRow *rows, int n, Decision *d)
{
	int			tight = -1;
	int			tight_cost = -1;
	int64		left[QUOTA_MAX_QUOTAS];
	int			i;

	for (i = 0; i < n; i++)
	{
		const QuotaRow *r = &rows[i];
		int64		after;

		if (r->touched)
			after = r->new_used;
		else if (r->slots <= 1 && r->counter_start == r->start)
			after = r->used;
		else
			continue;
		left[i] = Max(r->max_units - after, 0);
		if (r->metric_cost)
		{
			if (tight_cost < 0 || left[i] < left[tight_cost])
				tight_cost = i;
		}
		else if (tight < 0 || left[i] < left[tight])
			tight = i;
	}
	if (tight_cost >= 0)
	{
		d->has_remaining_cost = true;
		d->remaining_cost_micro = left[tight_cost];
		if (!d->currency[0])
			strlcpy(d->currency, rows[tight_cost].currency, sizeof(d->currency));
	}
	if (tight >= 0)
	{
		const QuotaRow *r = &rows[tight];

		d->quota_id = r->quota_id;
		strlcpy(d->period, r->label, sizeof(d->period));
		d->has_limit = true;
		d->limit = r->max_units;
		d->remaining = left[tight];
		if (r->period != QUOTA_PERIOD_LIFETIME)
		{
			d->has_resets = true;
			d->resets_at = r->end;
		}
	}
}

/*
 * describe_unlocked
 *		describe_after from an unlocked read of the counters (as quota_check
 *		reads them), for an adjustment that locks none: a settle that changes
 *		nothing, and the replay of a settle or refund, which answers as the
 *		first call did (test/t/062_commit_crash_replay.pl).
 */
static void
describe_unlocked(int64 tenant_id, int64 model_id, int64 user_id, int64 key_id,
				  TimestampTz occurred_at, Decision *d)
{
	QuotaRow	rows[QUOTA_MAX_QUOTAS];
	text	   *tz = tenant_timezone(tenant_id);
	int			n;
	int			i;

	n = read_counters(tenant_id, model_id, user_id, key_id, occurred_at, rows);
	for (i = 0; i < n; i++)
		QuotaPeriodBounds(rows[i].period, tz, occurred_at, &rows[i].start, &rows[i].end);
	describe_after(rows, n, d);
}

/* the money of one usage row (inside SPI): micro-units, 0 when unpriced */
static int64
usage_cost(int64 tenant_id, int64 usage_id)
{
	static QuotaPlan plan = QUOTA_ROW_PLAN(
		"SELECT cost FROM quota_ext.usage "
		"WHERE tenant_id OPERATOR(pg_catalog.=) $1 AND usage_id OPERATOR(pg_catalog.=) $2");
	Datum		v;

	return QuotaSpiRowValue(&plan, tenant_id, usage_id, &v) ? QuotaNumericToMicro(v) : 0;
}

/* the call's money columns from a price version (inside SPI) */
static void
decision_money(int64 price_id, int64 cost_micro, Decision *d)
{
	QuotaPrice	price;

	QuotaPriceById(price_id, &price);
	if (!price.found)
		return;
	d->has_cost = true;
	d->cost_micro = cost_micro;
	strlcpy(d->currency, price.currency, sizeof(d->currency));
}

/*
 * overage_change
 *		The overage_units of an adjusting usage row (settle, refund,
 *		release): the change in units beyond the limit of the overage
 *		quotas it touched (the largest), negative when units are given back.
 *		So sum(overage_units) over the ledger stays the overage a period
 *		owes, as quota_consume marks it.  (Adjustments wrote 0 before: a
 *		settle above the estimate went past an overage limit unmarked, and a
 *		refund or cancel left the original overage billed; found by
 *		test/sql/consume.sql.)  Cost quotas count money, not units: skipped.
 */
static int64
overage_change(const QuotaRow *rows, int n)
{
	int64		change = 0;
	int			i;

	for (i = 0; i < n; i++)
	{
		const QuotaRow *r = &rows[i];
		int64		c;

		if (!r->touched || (r->on_exceed != 'o' && r->on_exceed != 't') || r->metric_cost)
			continue;
		c = Max(r->new_used - r->max_units, 0) - Max(r->old_used - r->max_units, 0);
		if ((c < 0 ? -c : c) > (change < 0 ? -change : change))
			change = c;
	}
	return change;
}

typedef struct Reservation
{
	int64		usage_id;
	TimestampTz occurred_at;
	int64		model_id;
	int64		user_id;
	int64		key_id;
	int64		estimate;
	bool		has_actual;
	int64		actual;
	char		status[16];
	int64		unbilled;
	int64		price_id;		/* 0: unpriced */
	int64		cost_micro;		/* of the estimate */
	UsageTokens tokens;			/* estimated */
} Reservation;

/* lock and load a reservation (inside SPI); false when not found */
static bool
reservation_lock(int64 tenant_id, int64 reservation_id, Reservation *res)
{
	static QuotaPlan plan = QUOTA_ROW_PLAN(
		"SELECT r.usage_id, r.occurred_at, r.model_id, r.user_id, r.key_id, r.estimate, "
		"       r.actual, r.status, r.price_id, r.cost, r.input_tokens, r.output_tokens, "
		"       r.unbilled "
		"FROM quota_ext.reservations r "
		"WHERE r.tenant_id OPERATOR(pg_catalog.=) $1 "
		"  AND r.reservation_id OPERATOR(pg_catalog.=) $2 "
		"FOR NO KEY UPDATE");
	HeapTuple	tup = QuotaSpiRow(&plan, tenant_id, reservation_id);
	TupleDesc	desc;
	bool		isnull;
	Datum		v;

	if (tup == NULL)
		return false;
	desc = SPI_tuptable->tupdesc;
	res->usage_id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
	res->occurred_at = DatumGetTimestampTz(SPI_getbinval(tup, desc, 2, &isnull));
	res->model_id = DatumGetInt64(SPI_getbinval(tup, desc, 3, &isnull));
	v = SPI_getbinval(tup, desc, 4, &isnull);
	res->user_id = isnull ? 0 : DatumGetInt64(v);
	v = SPI_getbinval(tup, desc, 5, &isnull);
	res->key_id = isnull ? 0 : DatumGetInt64(v);
	res->estimate = DatumGetInt64(SPI_getbinval(tup, desc, 6, &isnull));
	v = SPI_getbinval(tup, desc, 7, &isnull);
	res->has_actual = !isnull;
	res->actual = isnull ? 0 : DatumGetInt64(v);
	strlcpy(res->status, SPI_getvalue(tup, desc, 8), sizeof(res->status));
	v = SPI_getbinval(tup, desc, 9, &isnull);
	res->price_id = isnull ? 0 : DatumGetInt64(v);
	res->cost_micro = QuotaNumericToMicro(SPI_getbinval(tup, desc, 10, &isnull));
	memset(&res->tokens, 0, sizeof(res->tokens));
	v = SPI_getbinval(tup, desc, 11, &isnull);
	res->tokens.has_input = !isnull;
	res->tokens.input = isnull ? 0 : DatumGetInt64(v);
	v = SPI_getbinval(tup, desc, 12, &isnull);
	res->tokens.has_output = !isnull;
	res->tokens.output = isnull ? 0 : DatumGetInt64(v);
	res->unbilled = DatumGetInt64(SPI_getbinval(tup, desc, 13, &isnull));
	return true;
}

/*
 * The ledger row that closed a locked reservation (its settle or release
 * row); 0 when none (a settle that changed nothing).  A statement of its
 * own, for the replays only: as a subquery of reservation_lock it was read
 * with the snapshot taken before the row lock's wait, so a replay that
 * waited for the closing call answered the reserve row (test/specs/
 * reservation_race.spec).  The closing row was written in the transaction
 * that set closed_at (now(), its start), so its created_at (the clock, read
 * at the write) is not earlier; ten minutes' margin for a clock stepped back,
 * or two nodes' clocks on Citus; a closed row without closed_at (edited by
 * hand) reads every month.  The bound lets the executor skip the ledger's
 * months before the close (run-time pruning: EXPLAIN ANALYZE shows them
 * "never executed"), where a settle that wrote no row read all of them.
 * Qualified throughout, as every statement the owner runs
 * (test/sql/search_path_all.sql).
 */
static int64
reservation_closing_usage(int64 tenant_id, int64 reservation_id)
{
	static QuotaPlan plan = QUOTA_ROW_PLAN(
		"SELECT pg_catalog.max(u.usage_id) FROM quota_ext.usage u "
		"WHERE u.tenant_id OPERATOR(pg_catalog.=) $1 "
		"  AND u.reservation_id OPERATOR(pg_catalog.=) $2 "
		"  AND u.kind OPERATOR(pg_catalog.<>) 'reserve' "
		"  AND u.created_at OPERATOR(pg_catalog.>=) "
		"      (SELECT COALESCE(r.closed_at OPERATOR(pg_catalog.-) "
		"                       '10 minutes'::pg_catalog.interval, "
		"                       '-infinity'::pg_catalog.timestamptz) "
		"         FROM quota_ext.reservations r "
		"        WHERE r.tenant_id OPERATOR(pg_catalog.=) $1 "
		"          AND r.reservation_id OPERATOR(pg_catalog.=) $2)");
	Datum		v;

	return QuotaSpiRowValue(&plan, tenant_id, reservation_id, &v) ? DatumGetInt64(v) : 0;
}

static void
reservation_close(int64 tenant_id, int64 reservation_id, const char *status,
				  bool has_actual, int64 actual, int64 unbilled)
{
	static QuotaPlan plan = {
		"UPDATE quota_ext.reservations SET status = $3, actual = $4, unbilled = $5, "
		"       closed_at = pg_catalog.now() "
		"WHERE tenant_id OPERATOR(pg_catalog.=) $1 "
		"  AND reservation_id OPERATOR(pg_catalog.=) $2 "
		"  AND status OPERATOR(pg_catalog.=) 'open'",
		5, {INT8OID, INT8OID, TEXTOID, INT8OID, INT8OID}
	};
	Datum		values[5];
	char		nulls[5] = {' ', ' ', ' ', ' ', ' '};

	values[0] = Int64GetDatum(tenant_id);
	values[1] = Int64GetDatum(reservation_id);
	values[2] = CStringGetTextDatum(status);
	values[3] = Int64GetDatum(actual);
	if (!has_actual)
		nulls[3] = 'n';
	values[4] = Int64GetDatum(unbilled);
	QuotaSpiExec(&plan, values, nulls, false, 0);
	/*
	 * The row was locked open (reservation_lock); on Citus that lock is a
	 * read a shard move can switch under, and the open row may then have
	 * been closed on the new placement (doc/scaling.md)
	 */
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("reservation %lld was closed after this transaction locked it",
						(long long) reservation_id),
				 errhint("Retry the statement.")));
}

static void
raise_unknown_reservation(int64 reservation_id)
{
	ereport(ERROR,
			(errcode(ERRCODE_UNDEFINED_OBJECT),
			 errmsg("reservation %lld does not exist", (long long) reservation_id)));
}

/*
 * release_reservation
 *		Give back an open reservation's estimate (cancel or expiry); inside
 *		SPI, reservation locked.  Returns the release row's id.
 */
static int64
release_reservation(int64 tenant_id, int64 reservation_id, Reservation *res,
					const char *status)
{
	QuotaRow	rows[QUOTA_MAX_QUOTAS];
	int			n;
	Decision	ignored;
	int64		usage_id;
	UsageExtra	extra;
	QuotaUsageRow u;

	memset(&ignored, 0, sizeof(ignored));
	memset(&extra, 0, sizeof(extra));
	extra.price_id = res->price_id;
	extra.cost_micro = -res->cost_micro;
	extra.tokens = res->tokens;
	extra.tokens.input = -extra.tokens.input;
	extra.tokens.output = -extra.tokens.output;
	adjust_counters(tenant_id, res->occurred_at, res->model_id, res->user_id, res->key_id,
					-1, -res->estimate, -res->cost_micro, false, rows, &n, &ignored);
	u = (QuotaUsageRow) {
		.tenant_id = tenant_id, .occurred_at = res->occurred_at, .kind = "release",
		.model_id = res->model_id, .user_id = res->user_id, .key_id = res->key_id,
		.calls = -1, .units = -res->estimate, .overage = overage_change(rows, n),
		.ref_usage_id = res->usage_id, .reservation_id = reservation_id
	};
	usage_id = write_usage(&u, rows, n, &extra);
	reservation_close(tenant_id, reservation_id, status, false, 0, 0);
	return usage_id;
}

/* the answer of an adjustment: leave SPI, then build the decision */
static Datum
adjust_answer(FunctionCallInfo fcinfo, QuotaSpiState *spi, const Decision *d)
{
	QuotaSpiEnd(spi);
	return decision_datum(fcinfo, d);
}

/*
 * quota_ext.quota_settle(tenant_id bigint, reservation_id bigint, actual bigint,
 *		input_tokens bigint DEFAULT NULL, output_tokens bigint DEFAULT NULL)
 *		RETURNS quota_ext.decision
 *
 * The actual tokens replace the estimated ones (NULL keeps them).  Money is
 * recomputed at the reservation's price version (never repriced), and the
 * settle row carries the differences in units, tokens and cost; the
 * decision's cost is the call's final cost.
 *
 * actual <= estimate: the difference is given back.  actual > estimate:
 * the excess is charged like a consume, all or nothing; if a blocking quota
 * cannot take it, only the estimate stays charged, the excess is recorded in
 * reservations.unbilled and the decision says allowed = false, denied_by =
 * quota.  Settling again with the same actual returns the same answer
 * (replayed); with another actual, or after cancel/expiry, is an error.
 */
Datum
quota_ext_quota_settle(PG_FUNCTION_ARGS)
{
	int64		tenant_id;
	int64		reservation_id;
	int64		actual;
	Reservation res;
	QuotaSpiState spi;
	QuotaRow	rows[QUOTA_MAX_QUOTAS];
	int			n;
	Decision	d;
	int64		delta;
	int64		unbilled = 0;
	UsageTokens actual_tokens;
	UsageExtra	extra;
	QuotaPrice	price;
	int64		actual_cost;

	check_writable("quota_settle()");
	QuotaArgNotNull(fcinfo, 0, "tenant_id");
	QuotaArgNotNull(fcinfo, 1, "reservation_id");
	QuotaArgNotNull(fcinfo, 2, "actual");
	tenant_id = PG_GETARG_INT64(0);
	reservation_id = PG_GETARG_INT64(1);
	actual = PG_GETARG_INT64(2);
	if (actual < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("actual must not be negative")));
	check_bounded(actual, "actual");
	check_metering_args(fcinfo, 3, &actual_tokens, NULL);
	QuotaCheckTenantAccess(tenant_id);
	memset(&d, 0, sizeof(d));

	QuotaSpiBegin(&spi);
	if (!reservation_lock(tenant_id, reservation_id, &res))
		raise_unknown_reservation(reservation_id);
	d.reservation_id = reservation_id;
	d.tenant_id = tenant_id;
	d.user_id = res.user_id;
	d.key_id = res.key_id;
	if (strcmp(res.status, "settled") == 0 && res.has_actual && res.actual == actual)
	{
		int64		closing = reservation_closing_usage(tenant_id, reservation_id);

		/*
		 * The same answer as the first settle: not allowed when its excess
		 * could not be charged.  (It said allowed = true before; found by
		 * test/sql/consume.sql.)
		 */
		d.allowed = (res.unbilled == 0);
		d.denied_by = d.allowed ? NULL : denied_quota;
		d.replayed = true;
		d.usage_id = closing ? closing : res.usage_id;

		/*
		 * The stored money, as the first settle answered it: the estimate's
		 * cost plus what the settle row added (none when nothing changed or
		 * the excess was not charged).  NULL before (issue 17).
		 */
		decision_money(res.price_id,
					   res.cost_micro + (closing ? usage_cost(tenant_id, closing) : 0),
					   &d);
		if (d.allowed)
			describe_unlocked(tenant_id, res.model_id, res.user_id, res.key_id,
							  res.occurred_at, &d);
		PG_RETURN_DATUM(adjust_answer(fcinfo, &spi, &d));
	}
	if (strcmp(res.status, "open") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("reservation %lld is %s", (long long) reservation_id, res.status)));

	delta = actual - res.estimate;
	d.allowed = true;
	d.usage_id = res.usage_id;

	/* tokens: the actual ones replace the estimate; money at the same price */
	memset(&extra, 0, sizeof(extra));
	extra.price_id = res.price_id;
	if (!actual_tokens.has_input)
		actual_tokens.has_input = res.tokens.has_input, actual_tokens.input = res.tokens.input;
	if (!actual_tokens.has_output)
		actual_tokens.has_output = res.tokens.has_output, actual_tokens.output = res.tokens.output;
	extra.tokens.has_input = actual_tokens.has_input || res.tokens.has_input;
	extra.tokens.input = actual_tokens.input - res.tokens.input;
	extra.tokens.has_output = actual_tokens.has_output || res.tokens.has_output;
	extra.tokens.output = actual_tokens.output - res.tokens.output;
	QuotaPriceById(res.price_id, &price);
	actual_cost = QuotaCostMicro(&price, actual, actual_tokens.input, actual_tokens.output);
	check_cost_bounded(actual_cost);
	extra.cost_micro = actual_cost - res.cost_micro;
	if (price.found)
	{
		d.has_cost = true;
		d.cost_micro = res.cost_micro;
		strlcpy(d.currency, price.currency, sizeof(d.currency));
	}

	if (delta != 0 || extra.cost_micro != 0 || extra.tokens.input != 0 ||
		extra.tokens.output != 0)
	{
		if (adjust_counters(tenant_id, res.occurred_at, res.model_id, res.user_id, res.key_id,
							0, delta, extra.cost_micro, true, rows, &n, &d))
		{
			QuotaUsageRow u = {
				.tenant_id = tenant_id, .occurred_at = res.occurred_at, .kind = "settle",
				.model_id = res.model_id, .user_id = res.user_id, .key_id = res.key_id,
				.units = delta, .overage = overage_change(rows, n),
				.ref_usage_id = res.usage_id, .reservation_id = reservation_id
			};
			int			i;

			for (i = 0; i < n; i++)
				if (rows[i].touched)
					emit_events(tenant_id, &rows[i]);
			d.usage_id = write_usage(&u, rows, n, &extra);
			d.cost_micro = actual_cost;
			describe_after(rows, n, &d);
		}
		else
			unbilled = delta;
	}
	else
	{
		/*
		 * Nothing changes: no counter is locked (the expiry sweep skips a
		 * reservation held by such a settle at once,
		 * test/specs/reservation_race.spec); the quotas are described from
		 * an unlocked read, as quota_check reads them.
		 */
		describe_unlocked(tenant_id, res.model_id, res.user_id, res.key_id,
						  res.occurred_at, &d);
	}
	reservation_close(tenant_id, reservation_id, "settled", true, actual, unbilled);
	PG_RETURN_DATUM(adjust_answer(fcinfo, &spi, &d));
}

/*
 * give_back_args
 *		The arguments of quota_cancel and quota_refund (fn): tenant_id and
 *		the id (idname) of what is given back, neither NULL, the tenant one
 *		the caller may act for; returns the id, and d starts allowed.
 */
static int64
give_back_args(FunctionCallInfo fcinfo, const char *fn, const char *idname,
			   int64 *tenant_id, Decision *d)
{
	check_writable(fn);
	QuotaArgNotNull(fcinfo, 0, "tenant_id");
	QuotaArgNotNull(fcinfo, 1, idname);
	*tenant_id = PG_GETARG_INT64(0);
	QuotaCheckTenantAccess(*tenant_id);
	memset(d, 0, sizeof(*d));
	d->allowed = true;
	return PG_GETARG_INT64(1);
}

/*
 * quota_ext.quota_cancel(tenant_id bigint, reservation_id bigint)
 *		RETURNS quota_ext.decision
 *
 * Gives the whole estimate back.  Cancelling twice answers the same
 * (replayed); a settled or expired reservation cannot be cancelled.
 */
Datum
quota_ext_quota_cancel(PG_FUNCTION_ARGS)
{
	int64		tenant_id;
	int64		reservation_id;
	Reservation res;
	QuotaSpiState spi;
	Decision	d;

	reservation_id = give_back_args(fcinfo, "quota_cancel()", "reservation_id",
									&tenant_id, &d);
	d.reservation_id = reservation_id;

	QuotaSpiBegin(&spi);
	if (!reservation_lock(tenant_id, reservation_id, &res))
		raise_unknown_reservation(reservation_id);
	d.tenant_id = tenant_id;
	d.user_id = res.user_id;
	d.key_id = res.key_id;
	if (strcmp(res.status, "cancelled") == 0)
	{
		d.replayed = true;
		d.usage_id = reservation_closing_usage(tenant_id, reservation_id);
	}
	else if (strcmp(res.status, "open") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("reservation %lld is %s", (long long) reservation_id, res.status)));
	else
		d.usage_id = release_reservation(tenant_id, reservation_id, &res, "cancelled");
	PG_RETURN_DATUM(adjust_answer(fcinfo, &spi, &d));
}

/*
 * quota_ext.quota_refund(tenant_id bigint, usage_id bigint)
 *		RETURNS quota_ext.decision
 *
 * Gives back a consumption (kind consume) once: a second refund of the same
 * row answers the first refund's usage row, replayed.
 */
Datum
quota_ext_quota_refund(PG_FUNCTION_ARGS)
{
	static QuotaPlan find = {
		"SELECT occurred_at, model_id, user_id, key_id, units, kind, "
		"       price_id, cost, input_tokens, output_tokens "
		"FROM quota_ext.usage "
		"WHERE tenant_id OPERATOR(pg_catalog.=) $1 AND usage_id OPERATOR(pg_catalog.=) $2",
		2, {INT8OID, INT8OID}
	};
	static QuotaPlan claim = {
		"INSERT INTO quota_ext.refunds (tenant_id, usage_id, refund_usage_id) "
		"VALUES ($1, $2, pg_catalog.nextval('quota_ext.usage_id_seq')) "
		"ON CONFLICT (tenant_id, usage_id) DO NOTHING RETURNING refund_usage_id",
		2, {INT8OID, INT8OID}
	};
	static QuotaPlan prior = QUOTA_ROW_PLAN(
		"SELECT refund_usage_id FROM quota_ext.refunds "
		"WHERE tenant_id OPERATOR(pg_catalog.=) $1 AND usage_id OPERATOR(pg_catalog.=) $2");
	int64		tenant_id;
	int64		usage_id;
	QuotaSpiState spi;
	Datum		values[2];
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	Datum		v;
	TimestampTz occurred_at;
	int64		model_id;
	int64		user_id;
	int64		key_id;
	int64		units;
	int64		refund_id;
	QuotaRow	rows[QUOTA_MAX_QUOTAS];
	int			n;
	Decision	d;
	UsageExtra	extra;
	QuotaUsageRow u;

	usage_id = give_back_args(fcinfo, "quota_refund()", "usage_id", &tenant_id, &d);

	QuotaSpiBegin(&spi);
	values[0] = Int64GetDatum(tenant_id);
	values[1] = Int64GetDatum(usage_id);
	QuotaSpiExec(&find, values, NULL, false, 1);
	if (SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("usage %lld does not exist", (long long) usage_id)));
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	if (strcmp(SPI_getvalue(tup, desc, 6), "consume") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("usage %lld is not a consumption", (long long) usage_id),
				 errhint("Reservations are given back with quota_cancel() or quota_settle().")));
	occurred_at = DatumGetTimestampTz(SPI_getbinval(tup, desc, 1, &isnull));
	model_id = DatumGetInt64(SPI_getbinval(tup, desc, 2, &isnull));
	v = SPI_getbinval(tup, desc, 3, &isnull);
	user_id = isnull ? 0 : DatumGetInt64(v);
	v = SPI_getbinval(tup, desc, 4, &isnull);
	key_id = isnull ? 0 : DatumGetInt64(v);
	units = DatumGetInt64(SPI_getbinval(tup, desc, 5, &isnull));
	d.tenant_id = tenant_id;
	d.user_id = user_id;
	d.key_id = key_id;
	memset(&extra, 0, sizeof(extra));
	v = SPI_getbinval(tup, desc, 7, &isnull);
	extra.price_id = isnull ? 0 : DatumGetInt64(v);
	extra.cost_micro = -QuotaNumericToMicro(SPI_getbinval(tup, desc, 8, &isnull));
	v = SPI_getbinval(tup, desc, 9, &isnull);
	extra.tokens.has_input = !isnull;
	extra.tokens.input = isnull ? 0 : -DatumGetInt64(v);
	v = SPI_getbinval(tup, desc, 10, &isnull);
	extra.tokens.has_output = !isnull;
	extra.tokens.output = isnull ? 0 : -DatumGetInt64(v);

	QuotaSpiExec(&claim, values, NULL, false, 0);
	if (SPI_processed == 0)
	{
		/* refunded before: answer with the first refund's usage row */
		if (!QuotaSpiRowValue(&prior, tenant_id, usage_id, &v))
			elog(ERROR, "refund of usage %lld not found", (long long) usage_id);
		d.replayed = true;
		d.usage_id = DatumGetInt64(v);
		/* the stored money of the refund row (NULL before: issue 17) */
		decision_money(extra.price_id, usage_cost(tenant_id, d.usage_id), &d);
		describe_unlocked(tenant_id, model_id, user_id, key_id, occurred_at, &d);
		PG_RETURN_DATUM(adjust_answer(fcinfo, &spi, &d));
	}
	refund_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1,
											&isnull));
	adjust_counters(tenant_id, occurred_at, model_id, user_id, key_id, -1, -units,
					extra.cost_micro, false, rows, &n, &d);
	u = (QuotaUsageRow) {
		.tenant_id = tenant_id, .usage_id = refund_id, .occurred_at = occurred_at,
		.kind = "refund", .model_id = model_id, .user_id = user_id, .key_id = key_id,
		.calls = -1, .units = -units, .overage = overage_change(rows, n),
		.ref_usage_id = usage_id
	};
	d.usage_id = write_usage(&u, rows, n, &extra);
	/* with the currency (NULL before: issue 17) and the quotas left */
	decision_money(extra.price_id, extra.cost_micro, &d);
	describe_after(rows, n, &d);
	PG_RETURN_DATUM(adjust_answer(fcinfo, &spi, &d));
}

/*
 * quota_ext.quota_expire_reservations(batch integer DEFAULT 1000) RETURNS integer
 *
 * Releases open reservations past expires_at, oldest first, at most batch
 * of them; for pg_cron.  Needs quota_ext_admin (it works across tenants).
 * Reservations locked by a running settle are skipped (SKIP LOCKED) and
 * taken by the next run.  Tenants are processed in ascending order and all
 * counters of a tenant are locked first, in quota_id order, so the sweep
 * cannot deadlock with consumes or with another sweep.
 */
Datum
quota_ext_quota_expire_reservations(PG_FUNCTION_ARGS)
{
	static QuotaPlan pick = {
		"SELECT tenant_id, reservation_id FROM ("
		"  SELECT tenant_id, reservation_id FROM quota_ext.reservations "
		"  WHERE status OPERATOR(pg_catalog.=) 'open' "
		"    AND expires_at OPERATOR(pg_catalog.<=) pg_catalog.now() "
		"  ORDER BY expires_at LIMIT $1) s "
		"ORDER BY tenant_id, reservation_id",
		1, {INT4OID}
	};
	/*
	 * The tenant's quota rows FOR SHARE first: a re-layout locks its quota
	 * row FOR NO KEY UPDATE before any counter, so none can add slots while
	 * this holds them, and the counters locked next are all the rows there
	 * are (a later round of lock_complete would lock rows ranked below some
	 * it holds).  Calls take only FOR KEY SHARE on quota rows, which this
	 * does not block.
	 */
	static QuotaPlan share_quotas = {
		"SELECT 1 FROM quota_ext.quotas q "
		"WHERE q.tenant_id OPERATOR(pg_catalog.=) $1 "
		"ORDER BY q.quota_id FOR SHARE",
		1, {INT8OID}
	};
	static QuotaPlan relock = {
		"SELECT status FROM quota_ext.reservations "
		"WHERE tenant_id OPERATOR(pg_catalog.=) $1 "
		"  AND reservation_id OPERATOR(pg_catalog.=) $2 "
		"  AND expires_at OPERATOR(pg_catalog.<=) pg_catalog.now() "
		"FOR NO KEY UPDATE SKIP LOCKED",
		2, {INT8OID, INT8OID}
	};
	int32		batch;
	QuotaSpiState spi;
	int64	   *tenants;
	int64	   *ids;
	int			n;
	int			i;
	int			done = 0;
	int64		locked_tenant = 0;

	check_writable("quota_expire_reservations()");
	QuotaArgNotNull(fcinfo, 0, "batch");
	batch = PG_GETARG_INT32(0);
	if (batch <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("batch must be positive")));
	QuotaCheckAdmin("quota_expire_reservations");

	QuotaSpiBegin(&spi);
	{
		Datum		values[1] = {Int32GetDatum(batch)};
		bool		isnull;

		QuotaSpiExec(&pick, values, NULL, false, 0);
		n = (int) SPI_processed;
		tenants = palloc(sizeof(int64) * Max(n, 1));
		ids = palloc(sizeof(int64) * Max(n, 1));
		for (i = 0; i < n; i++)
		{
			tenants[i] = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc,
													 1, &isnull));
			ids[i] = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc,
												 2, &isnull));
		}
	}
	for (i = 0; i < n; i++)
	{
		Datum		values[2];
		Reservation res;

		if (tenants[i] != locked_tenant)
		{
			values[0] = Int64GetDatum(tenants[i]);
			/* then every counter row in the hot path's order (storage_slots.c) */
			QuotaSpiExec(&share_quotas, values, NULL, false, 0);
			QuotaStorageLockTenant(tenants[i]);
			locked_tenant = tenants[i];
		}
		values[0] = Int64GetDatum(tenants[i]);
		values[1] = Int64GetDatum(ids[i]);
		QuotaSpiExec(&relock, values, NULL, false, 1);
		if (SPI_processed != 1 ||
			strcmp(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1), "open") != 0)
			continue;
		if (!reservation_lock(tenants[i], ids[i], &res))
			continue;
		release_reservation(tenants[i], ids[i], &res, "expired");
		done++;
	}
	QuotaSpiEnd(&spi);
	PG_RETURN_INT32(done);
}
