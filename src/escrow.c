/*-------------------------------------------------------------------------
 *
 * escrow.c
 *		Escrow quotas (slots > 1): one counter row per slot, so that a hot
 *		tenant's concurrent charges do not queue on one row.
 *
 * See consume_internal.h for how the request path is split.
 *
 *-------------------------------------------------------------------------
 */
#include "spi.h"
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

/*
 * Escrow single-slot charge (acquire_slots): take one slot of the quota that
 * can hold $4 and charge it, in one statement.  Two ways to choose the slot:
 *
 *	 SKIP LOCKED: the first slot in this backend's rotation ($6) that fits
 *	 and that nobody holds; never waits.
 *	 WAIT: the first slot in the rotation that fits as of the statement's
 *	 snapshot, locked by key (waiting for its holder); after the wait the
 *	 lock step's recheck (EvalPlanQual) tests the fit again on the newest
 *	 version.
 *
 * Either way the subquery's lock step has already checked the fit on the
 * version it locked, so the UPDATE charges only a slot that fits.  A row
 * whose recheck failed stays locked (heap_lock_tuple locks before the
 * recheck): acquire_slots runs these in a subtransaction and rolls it back
 * when nothing was charged, which releases such a row.  A slot of an older
 * period counts as empty with its default share ($8, plus 1 for slots below
 * $9; the choice tests against the smallest share, $5); a slot of a newer
 * period is never taken.
 *
 * One row comes back either way: the slot as written (all NULL when nothing
 * was charged), the quota's committed total in the period as of the
 * statement (for reporting and events; the statement does not see its own
 * change), and whether any slot could hold $4 as of the statement (if none,
 * waiting for one is pointless).
 */
#define SLOT_FITS(x) \
	"CASE WHEN " x ".period_start OPERATOR(pg_catalog.=) $3 " \
	"     THEN " x ".allowance OPERATOR(pg_catalog.-) " x ".used OPERATOR(pg_catalog.>=) $4 " \
	"     WHEN " x ".period_start OPERATOR(pg_catalog.<) $3 " \
	"     THEN $5 OPERATOR(pg_catalog.>=) $4 " \
	"     ELSE false END "
#define SLOT_KEY(x) \
	x ".tenant_id OPERATOR(pg_catalog.=) $1 AND " x ".quota_id OPERATOR(pg_catalog.=) $2 "
#define SLOT_ROTATION(x) \
	"ORDER BY (" x ".slot OPERATOR(pg_catalog.+) $6) OPERATOR(pg_catalog.%) $7 LIMIT 1 "
#define SLOT_CHARGE(choose) \
	"WITH charged AS (" \
	"  UPDATE quota_ext.quota_counters c SET " \
	"    used = CASE WHEN c.period_start OPERATOR(pg_catalog.<) $3 THEN $4 " \
	"           ELSE c.used OPERATOR(pg_catalog.+) $4 END, " \
	"    allowance = CASE WHEN c.period_start OPERATOR(pg_catalog.<) $3 " \
	"                THEN $8 OPERATOR(pg_catalog.+) " \
	"                     CASE WHEN c.slot OPERATOR(pg_catalog.<) $9 THEN 1 ELSE 0 END " \
	"                ELSE c.allowance END, " \
	"    events_mask = CASE WHEN c.period_start OPERATOR(pg_catalog.<) $3 THEN 0 " \
	"                  ELSE c.events_mask END, " \
	"    period_start = CASE WHEN c.period_start OPERATOR(pg_catalog.<) $3 THEN $3 " \
	"                   ELSE c.period_start END " \
	"  WHERE " SLOT_KEY("c") "AND c.slot OPERATOR(pg_catalog.=) (" choose ") " \
	"  RETURNING c.slot, c.period_start, c.used, c.allowance, c.events_mask) " \
	"SELECT charged.slot, charged.period_start, charged.used, charged.allowance, " \
	"       charged.events_mask, " \
	"       (SELECT pg_catalog.sum(x.used) FROM quota_ext.quota_counters x " \
	"         WHERE " SLOT_KEY("x") "AND x.period_start OPERATOR(pg_catalog.=) $3), " \
	"       EXISTS (SELECT FROM quota_ext.quota_counters f " \
	"                WHERE " SLOT_KEY("f") "AND " SLOT_FITS("f") ") " \
	"FROM (VALUES (1)) one LEFT JOIN charged ON true"
#define SLOT_CHARGE_TYPES \
	9, {INT8OID, INT8OID, TIMESTAMPTZOID, INT8OID, INT8OID, INT4OID, INT4OID, INT8OID, INT4OID}

static QuotaPlan slot_skip_plan = {
	SLOT_CHARGE("SELECT s.slot FROM quota_ext.quota_counters s "
				"WHERE " SLOT_KEY("s") "AND " SLOT_FITS("s")
				SLOT_ROTATION("s")
				"FOR NO KEY UPDATE OF s SKIP LOCKED"),
	SLOT_CHARGE_TYPES
};

static QuotaPlan slot_wait_plan = {
	SLOT_CHARGE("SELECT s.slot FROM quota_ext.quota_counters s "
				"WHERE " SLOT_KEY("s") "AND " SLOT_FITS("s")
				"  AND s.slot OPERATOR(pg_catalog.=) ("
				"    SELECT w.slot FROM quota_ext.quota_counters w "
				"    WHERE " SLOT_KEY("w") "AND " SLOT_FITS("w")
				SLOT_ROTATION("w") ") "
				"FOR NO KEY UPDATE OF s"),
	SLOT_CHARGE_TYPES
};

/*
 * Probe (the call is denied already by an earlier escrow quota): could any
 * slot hold $4 as of the statement, and the committed total.  Locks nothing.
 */
static QuotaPlan slot_probe_plan = {
	"SELECT EXISTS (SELECT FROM quota_ext.quota_counters f "
	"                WHERE " SLOT_KEY("f") "AND " SLOT_FITS("f") "), "
	"       (SELECT pg_catalog.sum(x.used) FROM quota_ext.quota_counters x "
	"         WHERE " SLOT_KEY("x") "AND x.period_start OPERATOR(pg_catalog.=) $3)",
	5, {INT8OID, INT8OID, TIMESTAMPTZOID, INT8OID, INT8OID}
};

/* One slot row as the exact path laid it out (a denial that emitted events). */
static QuotaPlan slot_write_plan = {
	"UPDATE quota_ext.quota_counters c SET used = $4, period_start = $5, allowance = $6, "
	"       events_mask = $7 "
	"WHERE " SLOT_KEY("c") "AND c.slot OPERATOR(pg_catalog.=) $3",
	7, {INT8OID, INT8OID, INT4OID, INT8OID, TIMESTAMPTZOID, INT8OID, INT4OID}
};

/* Give back a single-slot charge of $4 when the call ends up not writing. */
static QuotaPlan slot_undo_plan = {
	"UPDATE quota_ext.quota_counters c SET used = c.used OPERATOR(pg_catalog.-) $4 "
	"WHERE " SLOT_KEY("c") "AND c.slot OPERATOR(pg_catalog.=) $3",
	4, {INT8OID, INT8OID, INT4OID, INT8OID}
};

/* Escrow exact path: every slot of the quota, locked in slot order. */
static QuotaPlan slot_all_plan = {
	"SELECT c.slot, c.period_start, c.used, c.allowance, c.events_mask "
	"FROM quota_ext.quota_counters c "
	"WHERE c.tenant_id OPERATOR(pg_catalog.=) $1 AND c.quota_id OPERATOR(pg_catalog.=) $2 "
	"ORDER BY c.slot "
	"FOR NO KEY UPDATE",
	2, {INT8OID, INT8OID}
};

/*
 * Adjustments by a transaction that holds slots of the quota already
 * (adjust_slots): the slots as they stand (which of them this transaction
 * wrote), one slot it holds, and one more slot that can take the change
 * ($4 < 0: one that holds usage; $4 > 0: one with room for $4), not among
 * $6 and above slot $5, without waiting (SKIP LOCKED) or waiting for it.
 */
static QuotaPlan slot_seen_plan = {
	"SELECT c.slot, c.xmin, c.period_start "
	"FROM quota_ext.quota_counters c "
	"WHERE " SLOT_KEY("c") "ORDER BY c.slot",
	2, {INT8OID, INT8OID}
};

static QuotaPlan slot_held_plan = {
	"SELECT c.slot, c.period_start, c.used, c.allowance, c.events_mask "
	"FROM quota_ext.quota_counters c "
	"WHERE " SLOT_KEY("c") "AND c.slot OPERATOR(pg_catalog.=) $3 "
	"FOR NO KEY UPDATE",
	3, {INT8OID, INT8OID, INT4OID}
};

#define SLOT_ADJUST(lock) \
	"SELECT c.slot, c.period_start, c.used, c.allowance, c.events_mask " \
	"FROM quota_ext.quota_counters c " \
	"WHERE " SLOT_KEY("c") "AND c.period_start OPERATOR(pg_catalog.=) $3 " \
	"  AND c.slot OPERATOR(pg_catalog.>) $5 " \
	"  AND NOT (c.slot OPERATOR(pg_catalog.=) ANY ($6)) " \
	"  AND CASE WHEN $4 OPERATOR(pg_catalog.<) 0 THEN c.used OPERATOR(pg_catalog.>) 0 " \
	"           ELSE c.allowance OPERATOR(pg_catalog.-) c.used OPERATOR(pg_catalog.>=) $4 END " \
	"ORDER BY c.slot LIMIT 1 FOR NO KEY UPDATE OF c" lock

static QuotaPlan slot_adjust_skip_plan = {
	SLOT_ADJUST(" SKIP LOCKED"),
	6, {INT8OID, INT8OID, TIMESTAMPTZOID, INT8OID, INT4OID, INT4ARRAYOID}
};

static QuotaPlan slot_adjust_wait_plan = {
	SLOT_ADJUST(""),
	6, {INT8OID, INT8OID, TIMESTAMPTZOID, INT8OID, INT4OID, INT4ARRAYOID}
};

/* the number of counter rows of a quota now (a new snapshot) */
static QuotaPlan slot_count_plan = {
	"SELECT pg_catalog.count(*) FROM quota_ext.quota_counters c WHERE " SLOT_KEY("c"),
	2, {INT8OID, INT8OID}
};

PG_FUNCTION_INFO_V1(quota_ext_slot_share);

/*
 * slot_share
 *		The slot-share rule: the default share of the limit of slot i of n.
 *		The one definition; PL/pgSQL (_counters_rebuild, _escrow_relayout)
 *		calls it as quota_ext._slot_share(), and the single-slot statements
 *		below pass its two parts ($8, $9) to SQL.
 */
static int64
slot_share(int64 limit, int slots, int i)
{
	return limit / slots + (i < limit % slots ? 1 : 0);
}

/* quota_ext._slot_share(lim bigint, n integer, i integer) RETURNS bigint */
Datum
quota_ext_slot_share(PG_FUNCTION_ARGS)
{
	int64		limit;
	int32		n;
	int32		i;

	/* not STRICT: a constant NULL call would be folded away before the ACL check */
	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("_slot_share() takes no NULL argument")));
	limit = PG_GETARG_INT64(0);
	n = PG_GETARG_INT32(1);
	i = PG_GETARG_INT32(2);
	if (n < 1 || i < 0 || i >= n || limit < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("slot %d of %d of limit %lld does not exist", i, n, (long long) limit)));
	PG_RETURN_INT64(slot_share(limit, n, i));
}

/* load one slot row from SPI (columns slot, period_start, used, allowance, mask) */
static void
parse_slot(HeapTuple tup, TupleDesc desc, QuotaRow *r, TimestampTz start,
		   CounterUpdate *u)
{
	bool		isnull;
	Datum		d;

	u->quota_id = r->quota_id;
	u->slot = DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull));
	u->start = DatumGetTimestampTz(SPI_getbinval(tup, desc, 2, &isnull));
	u->used = DatumGetInt64(SPI_getbinval(tup, desc, 3, &isnull));
	d = SPI_getbinval(tup, desc, 4, &isnull);
	u->has_allowance = true;
	u->allowance = isnull ? 0 : DatumGetInt64(d);
	u->mask = DatumGetInt32(SPI_getbinval(tup, desc, 5, &isnull));
	if (u->start < start)
	{
		/* a slot of an older period: empty, with its default share */
		u->start = start;
		u->used = 0;
		u->allowance = slot_share(r->max_units, r->slots, u->slot);
		u->mask = 0;
	}
}

/*
 * lay_out_slots
 *		All slots of r are in r->upd (locked, in r->start's period): give
 *		`delta` to slot k and share the limit's remaining slack among all
 *		slots as allowances.  Returns false, changing nothing, when a
 *		positive delta does not fit (check) in the whole quota.
 */
bool
lay_out_slots(QuotaRow *r, int k, int64 delta, bool check)
{
	int64		total = 0;
	int64		slack;
	int			i;

	for (i = 0; i < r->nupd; i++)
		total += r->upd[i].used;
	r->old_used = total;
	if (pg_add_s64_overflow(total, delta, &r->new_used))
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("quota %lld would overflow", (long long) r->quota_id)));
	if (check && delta > 0 && r->new_used > r->max_units)
		return false;
	/* a negative delta comes out of the slots that hold usage */
	if (delta < 0)
	{
		int64		left = -delta;

		for (i = 0; i < r->nupd && left > 0; i++)
		{
			int64		take = Min(left, r->upd[i].used);

			r->upd[i].used -= take;
			left -= take;
		}
		if (r->new_used < 0)
			r->new_used = 0;
	}
	else
		r->upd[k].used += delta;
	slack = Max(r->max_units - r->new_used, 0);
	for (i = 0; i < r->nupd; i++)
	{
		r->upd[i].allowance = r->upd[i].used + slot_share(slack, r->nupd, i);
		/* one row left (automatic escrow folded it back): a plain counter */
		r->upd[i].has_allowance = r->nupd > 1;
	}
	r->charged = k;
	r->touched = true;
	return true;
}

/*
 * lock_complete
 *		Run `lock` (a SELECT ... ORDER BY ... FOR NO KEY UPDATE over counter
 *		rows) until it has locked as many rows as `count` (a plain count of
 *		the same rows, a new snapshot) says there are now, and return its
 *		rows.  A re-layout (_escrow_relayout, _counters_rebuild) that
 *		committed while the lock waited may have added rows that the lock's
 *		snapshot cannot see; they are locked by the next round.  Rows
 *		already locked are not waited for again, and a re-layout cannot add
 *		rows while every row is held (it grows only from free slots).
 */
SPITupleTable *
lock_complete(QuotaPlan *lock, QuotaPlan *count, Datum *values)
{
	for (;;)
	{
		SPITupleTable *rows;
		uint64		nrows;
		bool		isnull;

		QuotaSpiExec(lock, values, NULL, false, 0);
		rows = SPI_tuptable;
		nrows = SPI_processed;
		QuotaSpiExec(count, values, NULL, false, 1);
		if ((int64) nrows == DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
														 SPI_tuptable->tupdesc, 1, &isnull)))
			return rows;		/* rows->numvals == nrows */
	}
}

/*
 * lock_all_slots
 *		Lock every slot of r in slot order into r->upd.  A slot already in a
 *		newer period than start means the quota has moved on: for an
 *		adjustment of older usage (moved_on given) that is reported; for a
 *		new charge it means the period turned over during this call and
 *		another transaction counted in the new one: 40001, retry.
 */
void
lock_all_slots(int64 tenant_id, QuotaRow *r, bool *moved_on)
{
	Datum		values[2];
	uint64		i;
	SPITupleTable *rows;
	uint64		nrows;

	values[0] = Int64GetDatum(tenant_id);
	values[1] = Int64GetDatum(r->quota_id);

	/*
	 * A relayout (_escrow_relayout, _counters_rebuild) that committed while
	 * this statement waited may have added rows its snapshot cannot see:
	 * lock again, with a new snapshot, until every row of the quota is
	 * locked.  Laying the limit out over only some of the rows would give
	 * out more allowance than the limit, and charging none of them (all
	 * deleted and inserted again) would lose the charge.
	 */
	rows = lock_complete(&slot_all_plan, &slot_count_plan, values);
	nrows = rows->numvals;
	r->nupd = (int) nrows;
	r->upd = palloc0(sizeof(CounterUpdate) * Max(r->nupd, 1));
	for (i = 0; i < nrows; i++)
	{
		parse_slot(rows->vals[i], rows->tupdesc, r, r->start, &r->upd[i]);
		if (r->upd[i].start > r->start && moved_on)
			*moved_on = true;
		else if (r->upd[i].start > r->start)
			ereport(ERROR,
					(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
					 errmsg("quota %lld entered a new period during this call",
							(long long) r->quota_id),
					 errhint("Retry the transaction.")));
	}
}

/* load one locked slot row (from an adjustment statement) into r->upd */
static CounterUpdate *
take_slot_row(QuotaRow *r, int32 *taken, int *ntaken)
{
	CounterUpdate *u = &r->upd[r->nupd++];

	parse_slot(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, r, r->start, u);
	taken[(*ntaken)++] = u->slot;
	return u;
}

/*
 * adjust_slots
 *		Add delta to escrow quota r for an adjustment (refund, release,
 *		settle) of usage counted in r->start's period.  Sets *moved_on, and
 *		changes nothing, when a slot is in a later period already.  Returns
 *		false, changing nothing, when a positive delta does not fit (check).
 *
 *		A transaction that holds no slot of r locks them all in slot order
 *		(lock_all_slots) and lays the change out as a charge's exact path
 *		does.  One that holds slots of r already (it charged one earlier,
 *		typically the consume whose row it now refunds) must not: waiting
 *		for a lower slot while holding a higher one is the deadlock of two
 *		such transactions (doc/design.md section 5).  It puts the change in
 *		the slots it holds, else in other slots that can take it, first
 *		those free now (SKIP LOCKED: no wait), then, in slot order, those
 *		above every slot it holds (a wait ranked above all it holds).  A
 *		refund comes out of slots that hold usage (a slot never goes below
 *		0); a settle above the estimate goes into one slot with room for it
 *		(or into a held slot whatever its room, when not checked).  Either
 *		way each slot stays within its allowance and the slots' total
 *		changes by exactly delta.  What none of those slots can take is
 *		held by transactions this one may not wait for: 40001, retry the
 *		transaction (it then holds nothing of r).
 *
 *		The slots a transaction holds are the rows of r it wrote (xmin is
 *		one of its transaction ids): every slot it locks it also writes,
 *		except that the exact path (lock_all_slots) of a denied call leaves
 *		all of them locked, which only ever makes this path wait less.
 */
bool
adjust_slots(int64 tenant_id, QuotaRow *r, int64 delta, bool check, bool *moved_on)
{
	Datum		values[6];
	int32	   *held;
	int32	   *taken;
	int			nheld = 0;
	int			ntaken = 0;
	int			nrows;
	int32		top = -1;
	int64		left;
	int64		total;
	int			i;
	bool		isnull;

	values[0] = Int64GetDatum(tenant_id);
	values[1] = Int64GetDatum(r->quota_id);
	QuotaSpiExec(&slot_seen_plan, values, NULL, false, 0);
	nrows = (int) SPI_processed;
	held = palloc(sizeof(int32) * Max(nrows, 1));
	for (i = 0; i < nrows; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		TransactionId xmin = DatumGetTransactionId(SPI_getbinval(tup, desc, 2, &isnull));

		if (DatumGetTimestampTz(SPI_getbinval(tup, desc, 3, &isnull)) > r->start)
		{
			*moved_on = true;
			return true;
		}
		if (TransactionIdIsCurrentTransactionId(xmin))
			held[nheld++] = DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull));
	}
	if (nheld == 0 || nrows <= 1)
	{
		lock_all_slots(tenant_id, r, moved_on);
		if (*moved_on)
			return true;
		return lay_out_slots(r, 0, delta, check);
	}

	/* room for slots a re-layout adds meanwhile too (at most 64 in all) */
	r->nupd = 0;
	r->upd = palloc0(sizeof(CounterUpdate) * (nrows + 64));
	taken = palloc(sizeof(int32) * (nrows + 64));
	r->charged = -1;
	left = delta < 0 ? -delta : delta;

	/* 1. the slots it holds (no wait), in slot order */
	for (i = 0; i < nheld && left > 0; i++)
	{
		CounterUpdate *u;

		values[2] = Int32GetDatum(held[i]);
		QuotaSpiExec(&slot_held_plan, values, NULL, false, 0);
		if (SPI_processed != 1)
			continue;
		top = Max(top, held[i]);
		if (DatumGetTimestampTz(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
											  2, &isnull)) != r->start)
			continue;			/* an older period's slot holds none of it */
		u = take_slot_row(r, taken, &ntaken);
		if (delta < 0)
		{
			int64		take = Min(left, u->used);

			u->used -= take;
			left -= take;
		}
		else if (!check || u->allowance - u->used >= delta)
		{
			u->used += delta;
			r->charged = r->nupd - 1;
			left = 0;
		}
	}

	/* 2. free slots that can take it (SKIP LOCKED), 3. higher ones (wait) */
	for (i = 0; i < 2 && left > 0; i++)
	{
		while (left > 0)
		{
			CounterUpdate *u;
			Datum	   *elems = palloc(sizeof(Datum) * (nrows + 64));
			int			j;

			values[2] = TimestampTzGetDatum(r->start);
			values[3] = Int64GetDatum(delta < 0 ? delta : left);
			values[4] = Int32GetDatum(i == 0 ? -1 : top);
			for (j = 0; j < ntaken; j++)
				elems[j] = Int32GetDatum(taken[j]);
			values[5] = PointerGetDatum(construct_array(elems, ntaken, INT4OID, 4, true,
														TYPALIGN_INT));
			QuotaSpiExec(i == 0 ? &slot_adjust_skip_plan : &slot_adjust_wait_plan,
						 values, NULL, false, 0);
			if (SPI_processed != 1)
				break;
			u = take_slot_row(r, taken, &ntaken);
			/* held now, whether it had to wait for it or not */
			top = Max(top, u->slot);
			if (delta < 0)
			{
				int64		take = Min(left, u->used);

				u->used -= take;
				left -= take;
			}
			else
			{
				u->used += delta;
				r->charged = r->nupd - 1;
				left = 0;
			}
		}
	}

	/* the quota's total in the period as this transaction sees it */
	total = 0;
	values[2] = TimestampTzGetDatum(r->start);
	{
		static QuotaPlan sum_plan = {
			"SELECT pg_catalog.sum(c.used) FROM quota_ext.quota_counters c "
			"WHERE " SLOT_KEY("c") "AND c.period_start OPERATOR(pg_catalog.=) $3",
			3, {INT8OID, INT8OID, TIMESTAMPTZOID}
		};
		Datum		d;

		QuotaSpiExec(&sum_plan, values, NULL, false, 1);
		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
		total = isnull ? 0 : DatumGetInt64(DirectFunctionCall1(numeric_int8, d));
	}
	if (left > 0 && delta > 0 && check && total + delta > r->max_units)
	{
		/* it does not fit in the whole quota either: an exact denial */
		r->nupd = 0;
		r->old_used = total;
		r->new_used = total;
		r->touched = false;
		return false;
	}
	if (left > 0)
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("could not adjust quota %lld without waiting out of lock order",
						(long long) r->quota_id),
				 errdetail("This transaction holds escrow slots of the quota; %lld units of the change are in slots other transactions hold.",
						   (long long) left),
				 errhint("Retry the transaction.")));
	r->old_used = total;
	r->new_used = Max(total + delta, 0);
	if (r->charged < 0)
		r->charged = 0;
	for (i = 0; i < r->nupd; i++)
		r->upd[i].has_allowance = true;
	r->touched = r->nupd > 0;
	return true;
}

/*
 * charge_one_slot
 *		Run one single-slot charge statement (slot_skip_plan or
 *		slot_wait_plan) for `amount` in escrow quota r, in a subtransaction.
 *		When it charged a slot, keep it (release the subtransaction into
 *		ours), load the slot into r and return SLOT_CHARGED.  Otherwise roll
 *		the subtransaction back, which also releases any slot row the
 *		statement locked and then rejected on recheck, so that this
 *		transaction holds no slot of r that it did not hold before (see
 *		acquire_slots for why that matters); return SLOT_NONE_FITS if no
 *		slot could hold `amount` as of the statement, else SLOT_BUSY.
 *		r->old_used and r->new_used get the committed total as of the
 *		statement in every case.
 *
 *		The charge is written here, in the subtransaction that locked the
 *		row: an update of it by the parent transaction would have to keep
 *		the subtransaction's lock too and make a MultiXact of every hot slot
 *		row, which costs more than all the rest (measured: 6.5x slower).
 */
typedef enum SlotCharge
{
	SLOT_CHARGED,
	SLOT_BUSY,
	SLOT_NONE_FITS
} SlotCharge;

static SlotCharge
charge_one_slot(QuotaPlan *plan, int64 tenant_id, QuotaRow *r, int64 amount)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	Datum		values[9];
	volatile SlotCharge result = SLOT_BUSY;

	values[0] = Int64GetDatum(tenant_id);
	values[1] = Int64GetDatum(r->quota_id);
	values[2] = TimestampTzGetDatum(r->start);
	values[3] = Int64GetDatum(amount);
	values[4] = Int64GetDatum(r->max_units / r->slots);

	/*
	 * The rotation starts at the backend's PGPROC number: concurrent
	 * backends have distinct, mostly consecutive ones, where pids modulo the
	 * slots collide by chance (and two backends starting at one slot wait).
	 */
	values[5] = Int32GetDatum(QuotaMyProcNumber() % r->slots);
	/* slot 0 is ours already (lock_run found it re-laid): try it first */
	if (r->held_slot0)
		values[5] = Int32GetDatum(0);
	values[6] = Int32GetDatum(r->slots);
	values[7] = Int64GetDatum(r->max_units / r->slots);
	values[8] = Int32GetDatum((int32) (r->max_units % r->slots));

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		HeapTuple	tup;
		TupleDesc	desc;
		bool		isnull;
		bool		none;
		Datum		d;
		int64		before;

		QuotaSpiExec(plan, values, NULL, false, 0);
		if (SPI_processed != 1)
			elog(ERROR, "escrow slot statement returned %llu rows",
				 (unsigned long long) SPI_processed);
		tup = SPI_tuptable->vals[0];
		desc = SPI_tuptable->tupdesc;
		d = SPI_getbinval(tup, desc, 6, &isnull);
		before = isnull ? 0 : DatumGetInt64(DirectFunctionCall1(numeric_int8, d));
		/* committed total as of the statement: for reporting and events */
		r->old_used = Min(before, r->max_units);
		/* old_used <= max_units: the difference cannot overflow, a sum could */
		r->new_used = (amount > r->max_units - r->old_used) ? r->max_units : r->old_used + amount;
		(void) SPI_getbinval(tup, desc, 1, &none);
		if (none && !DatumGetBool(SPI_getbinval(tup, desc, 7, &isnull)))
			result = SLOT_NONE_FITS;
		else if (!none)
		{
			CounterUpdate *u;

			r->nupd = 1;
			r->upd = u = palloc0(sizeof(CounterUpdate));
			parse_slot(tup, desc, r, r->start, u);
			r->charged = 0;
			r->touched = true;
			r->slot_written = true;
			r->slot_amount = amount;
			r->written_mask = u->mask;
			result = SLOT_CHARGED;
		}
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
		ReThrowError(edata);
	}
	PG_END_TRY();
	if (result == SLOT_CHARGED)
		ReleaseCurrentSubTransaction();
	else
		RollbackAndReleaseCurrentSubTransaction();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;
	return result;
}

/*
 * acquire_slots
 *		Take room for `amount` in escrow quota r (r->start set), in three
 *		steps (doc/design.md, "hot tenants"):
 *
 *		 1. one free slot that can hold it (SKIP LOCKED: never waits);
 *		 2. else, if some slot could hold it, wait for that one slot (the
 *			first in this backend's rotation, so waiters spread over the
 *			slots) and charge it if it still can;
 *		 3. else every slot in slot order, exactly, moving allowance between
 *			them; sets r->multi_deny when even all slots together cannot
 *			take it.
 *
 *		Steps 1 and 2 charge the slot row at once (charge_one_slot, which
 *		says why); step 3 leaves the rows to write_usage.  When an earlier
 *		escrow quota already denies the call (`denied`), only whether this
 *		one could take the amount matters (for the quota the decision
 *		names): a slot that could, as of a plain read, is enough; else
 *		step 3 as usual.
 *
 *		Deadlocks: a transaction waits on a slot of r only in step 2, holding
 *		no slot of r, or in step 3, holding only lower slots of r (the
 *		subtransactions of steps 1 and 2 were rolled back).  Once it leaves
 *		here it waits only on later quotas.  So every wait is on a lock
 *		ranked above all it holds, in the order (single-row quotas by id,
 *		then escrow quotas by id, then slot): no cycle.
 *
 *		A transaction near the 64 subtransactions a backend advertises
 *		(a long batch of calls) goes straight to step 3: past that, every
 *		snapshot in the cluster would have to read pg_subtrans.
 */
void
acquire_slots(int64 tenant_id, QuotaRow *r, int64 amount, bool denied)
{
	if (denied)
	{
		/* denied anyway: a slot that could hold it is enough to know */
		Datum		values[5];
		bool		isnull;
		Datum		d;
		int64		before;

		values[0] = Int64GetDatum(tenant_id);
		values[1] = Int64GetDatum(r->quota_id);
		values[2] = TimestampTzGetDatum(r->start);
		values[3] = Int64GetDatum(amount);
		values[4] = Int64GetDatum(r->max_units / r->slots);
		QuotaSpiExec(&slot_probe_plan, values, NULL, false, 0);
		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);
		before = isnull ? 0 : DatumGetInt64(DirectFunctionCall1(numeric_int8, d));
		r->old_used = Min(before, r->max_units);
		r->new_used = (amount > r->max_units - r->old_used) ? r->max_units : r->old_used + amount;
		if (DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1,
									   &isnull)))
			return;
	}
	else if (MyProc->subxidStatus.count < PGPROC_MAX_CACHED_SUBXIDS - 8)
	{
		SlotCharge	c = charge_one_slot(&slot_skip_plan, tenant_id, r, amount);

		/* automatic escrow counts its callers, and those that found no free slot */
		if (r->auto_slots)
			QuotaEscrowNote(tenant_id, r->quota_id, c == SLOT_BUSY, r->slots);
		if (c == SLOT_CHARGED)
			return;
		if (c == SLOT_BUSY &&
			charge_one_slot(&slot_wait_plan, tenant_id, r, amount) == SLOT_CHARGED)
			return;
	}
	lock_all_slots(tenant_id, r, NULL);
	if (!lay_out_slots(r, 0, amount, true))
	{
		int			i;
		int32		seen = 0;
		int32		due = 0;

		r->multi_deny = true;
		r->touched = false;

		/*
		 * The exact total is known here: a threshold it has reached is
		 * emitted now if no earlier call did (the single-slot steps see only
		 * committed totals and may have filled the last slot unseen).  A bit
		 * in any slot's events_mask means it was; what is emitted here is
		 * recorded in the first slot, so that the denials that follow (an
		 * over-subscribed tenant is denied over and over, every slot locked)
		 * do not try again.
		 */
		r->new_used = r->old_used;
		for (i = 0; i < r->nupd; i++)
			seen |= r->upd[i].mask;
		for (i = 0; i < r->nthresholds; i++)
			if (!(seen & (1 << i)) &&
				(int128) r->old_used * 100 >= (int128) r->max_units * r->thresholds[i])
			{
				emit_event(tenant_id, r, "threshold", r->thresholds[i], r->max_units);
				due |= 1 << i;
			}
		if (r->has_soft && !(seen & (1 << 30)) && r->old_used >= r->soft_limit)
		{
			emit_event(tenant_id, r, "soft_limit", 0, r->soft_limit);
			due |= 1 << 30;
		}
		if (due && r->nupd > 0)
		{
			CounterUpdate *u = &r->upd[0];
			Datum		values[7];

			u->mask |= due;
			values[0] = Int64GetDatum(tenant_id);
			values[1] = Int64GetDatum(r->quota_id);
			values[2] = Int32GetDatum(u->slot);
			values[3] = Int64GetDatum(u->used);
			values[4] = TimestampTzGetDatum(u->start);
			values[5] = Int64GetDatum(u->allowance);
			values[6] = Int32GetDatum(u->mask);
			QuotaSpiExec(&slot_write_plan, values, NULL, false, 0);
		}
	}
}

/*
 * escrow_slots_now
 *		The number of slots quota_id is laid out over now (automatic escrow
 *		re-laid it since its definition was read; escrow_adapt.c).
 */
int
escrow_slots_now(int64 tenant_id, int64 quota_id)
{
	static QuotaPlan plan = QUOTA_ROW_PLAN(
		"SELECT q.slots FROM quota_ext.quotas q "
		"WHERE q.tenant_id OPERATOR(pg_catalog.=) $1 AND q.quota_id OPERATOR(pg_catalog.=) $2");
	Datum		v;

	/* slots is NOT NULL; no row (the quota is gone): one slot */
	return QuotaSpiRowValue(&plan, tenant_id, quota_id, &v) ? DatumGetInt32(v) : 1;
}

/*
 * release_slots
 *		The call charges nothing after all (another quota denies, or the
 *		recheck after a wait does): give back what acquire_slots' single-slot
 *		steps already wrote.  The slot stays locked until the transaction
 *		ends, as every counter a denied call locked does.
 */
void
release_slots(int64 tenant_id, QuotaRow *rows, int n)
{
	int			i;

	for (i = 0; i < n; i++)
	{
		QuotaRow   *r = &rows[i];
		Datum		values[4];

		if (!r->slot_written)
			continue;
		values[0] = Int64GetDatum(tenant_id);
		values[1] = Int64GetDatum(r->quota_id);
		values[2] = Int32GetDatum(r->upd[0].slot);
		values[3] = Int64GetDatum(r->slot_amount);
		QuotaSpiExec(&slot_undo_plan, values, NULL, false, 0);
		r->slot_written = false;
		r->touched = false;
	}
}
