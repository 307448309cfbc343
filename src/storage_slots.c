/*-------------------------------------------------------------------------
 *
 * storage_slots.c
 *		The statements over escrow slot rows, the slot-share rule, and the
 *		one SQL-callable writer of laid-out counter rows (the storage
 *		module, storage.h).
 *
 * escrow.c holds the escrow algorithm (which slot to take, how to lay a
 * change out over slots, the lock order); it runs the statements here, each
 * a function that binds its parameters and returns the rows it read or
 * wrote as QuotaCounterWrite.  The single-slot charge below is run only
 * where Citus manages the counters: on a single node storage.c does the
 * same through the table AM (QuotaStorageChargeSlot), and the statement's
 * comment is the specification of both.  The slot-share rule (QuotaSlotShare) is
 * written once: the statements below pass its two parts to SQL, and
 * PL/pgSQL (_counters_rebuild, _escrow_relayout, quota_set, the tier syncs)
 * writes counter rows only through quota_ext._counters_lay_out, which
 * applies it.
 *
 *-------------------------------------------------------------------------
 */
#include "storage.h"
#include "spi.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/numeric.h"
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
#define SLOT_SUM(x) \
	"(SELECT pg_catalog.sum(" x ".used) FROM quota_ext.quota_counters " x \
	"  WHERE " SLOT_KEY(x) "AND " x ".period_start OPERATOR(pg_catalog.=) $3)"
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
	"       charged.events_mask, " SLOT_SUM("x") ", " \
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

/* the columns of a slot row, first in every statement that returns one */
#define SLOT_COLUMNS "c.slot, c.period_start, c.used, c.allowance, c.events_mask "

/*
 * QuotaSlotShare
 *		The slot-share rule: the default share of the limit of slot i of n.
 *		The one definition: the charge statements above get its two parts
 *		($8, $9), escrow.c lays slack out with it, quota_ext._slot_share()
 *		gives it to SQL and _counters_lay_out writes rows with it.
 */
int64
QuotaSlotShare(int64 limit, int slots, int i)
{
	return limit / slots + (i < limit % slots ? 1 : 0);
}

/* a numeric sum (NULL: 0) as int8 */
static int64
sum_value(HeapTuple tup, TupleDesc desc, int col)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tup, desc, col, &isnull);

	return isnull ? 0 : DatumGetInt64(DirectFunctionCall1(numeric_int8, d));
}

/* one slot row from SPI (SLOT_COLUMNS, from column 1) into *row */
static void
slot_row(HeapTuple tup, TupleDesc desc, int64 quota_id, QuotaCounterWrite *row)
{
	bool		isnull;
	Datum		d;

	memset(row, 0, sizeof(*row));
	row->quota_id = quota_id;
	row->slot = DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull));
	row->start = DatumGetTimestampTz(SPI_getbinval(tup, desc, 2, &isnull));
	row->used = DatumGetInt64(SPI_getbinval(tup, desc, 3, &isnull));
	d = SPI_getbinval(tup, desc, 4, &isnull);
	row->has_allowance = !isnull;
	row->allowance = isnull ? 0 : DatumGetInt64(d);
	row->mask = DatumGetInt32(SPI_getbinval(tup, desc, 5, &isnull));
	ItemPointerSetInvalid(&row->tid);
	/* as read: a later write of it compares against this (QuotaSpiWriteCounter) */
	row->seen = true;
	row->seen_whole = true;
	row->seen_start = row->start;
	row->seen_used = row->used;
	row->seen_has_allowance = row->has_allowance;
	row->seen_allowance = row->allowance;
}

/* the rows of the last statement (SLOT_COLUMNS) into a palloc'd array */
static int
slot_rows(SPITupleTable *tt, uint64 nrows, int64 quota_id, QuotaCounterWrite **rows)
{
	uint64		i;

	*rows = palloc0(sizeof(QuotaCounterWrite) * Max(nrows, 1));
	for (i = 0; i < nrows; i++)
		slot_row(tt->vals[i], tt->tupdesc, quota_id, &(*rows)[i]);
	return (int) nrows;
}

/* $1 tenant_id, $2 quota_id */
static void
slot_key(Datum *values, int64 tenant_id, int64 quota_id)
{
	values[0] = Int64GetDatum(tenant_id);
	values[1] = Int64GetDatum(quota_id);
}

/*
 * QuotaSlotChargeOne
 *		Run one single-slot charge statement (SKIP LOCKED, or wait) for
 *		`amount` in an escrow quota of `slots` slots over `limit`, in the
 *		period that starts at `start`, trying the slots in rotation from
 *		`first`.  The caller runs it in a subtransaction (escrow.c,
 *		charge_one_slot, says why).
 */
void
QuotaSlotChargeOne(bool wait, int64 tenant_id, int64 quota_id, TimestampTz start,
				   int64 amount, int64 limit, int slots, int first, QuotaSlotCharge *res)
{
	Datum		values[9];
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	bool		none;

	slot_key(values, tenant_id, quota_id);
	values[2] = TimestampTzGetDatum(start);
	values[3] = Int64GetDatum(amount);
	/* the smallest share, and the rule's two parts (QuotaSlotShare) */
	values[4] = Int64GetDatum(limit / slots);
	values[5] = Int32GetDatum(first);
	values[6] = Int32GetDatum(slots);
	values[7] = Int64GetDatum(limit / slots);
	values[8] = Int32GetDatum((int32) (limit % slots));
	QuotaSpiExec(wait ? &slot_wait_plan : &slot_skip_plan, values, NULL, false, 0);
	if (SPI_processed != 1)
		elog(ERROR, "escrow slot statement returned %llu rows",
			 (unsigned long long) SPI_processed);
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	res->before = sum_value(tup, desc, 6);
	res->any_fits = DatumGetBool(SPI_getbinval(tup, desc, 7, &isnull));
	(void) SPI_getbinval(tup, desc, 1, &none);
	res->charged = !none;
	if (res->charged)
		slot_row(tup, desc, quota_id, &res->row);
}

/*
 * QuotaSlotProbe
 *		Could any slot hold `amount` as of the statement (a slot of an older
 *		period counts as empty with the smallest share)?  *before gets the
 *		quota's committed total in the period.  Locks nothing.
 */
bool
QuotaSlotProbe(int64 tenant_id, int64 quota_id, TimestampTz start, int64 amount,
			   int64 limit, int slots, int64 *before)
{
	static QuotaPlan probe = {
		"SELECT EXISTS (SELECT FROM quota_ext.quota_counters f "
		"                WHERE " SLOT_KEY("f") "AND " SLOT_FITS("f") "), "
		SLOT_SUM("x"),
		5, {INT8OID, INT8OID, TIMESTAMPTZOID, INT8OID, INT8OID}
	};
	Datum		values[5];
	bool		isnull;

	slot_key(values, tenant_id, quota_id);
	values[2] = TimestampTzGetDatum(start);
	values[3] = Int64GetDatum(amount);
	values[4] = Int64GetDatum(limit / slots);
	QuotaSpiExec(&probe, values, NULL, false, 0);
	*before = sum_value(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
	return DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1,
									  &isnull));
}

/* QuotaSlotUndo: give back a single-slot charge of `amount` (locked by us) */
void
QuotaSlotUndo(int64 tenant_id, int64 quota_id, int32 slot, int64 amount)
{
	static QuotaPlan undo = {
		"UPDATE quota_ext.quota_counters c SET used = c.used OPERATOR(pg_catalog.-) $4 "
		"WHERE " SLOT_KEY("c") "AND c.slot OPERATOR(pg_catalog.=) $3",
		4, {INT8OID, INT8OID, INT4OID, INT8OID}
	};
	Datum		values[4];

	slot_key(values, tenant_id, quota_id);
	values[2] = Int32GetDatum(slot);
	values[3] = Int64GetDatum(amount);
	QuotaSpiExec(&undo, values, NULL, false, 0);
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
static SPITupleTable *
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
 * QuotaSlotLockAll
 *		Lock every slot row of a quota in slot order, also those a re-layout
 *		added while this waited (lock_complete), into *rows; returns how
 *		many.
 */
int
QuotaSlotLockAll(int64 tenant_id, int64 quota_id, QuotaCounterWrite **rows)
{
	static QuotaPlan lock = {
		"SELECT " SLOT_COLUMNS
		"FROM quota_ext.quota_counters c "
		"WHERE " SLOT_KEY("c") "ORDER BY c.slot FOR NO KEY UPDATE",
		2, {INT8OID, INT8OID}
	};
	static QuotaPlan count = {
		"SELECT pg_catalog.count(*) FROM quota_ext.quota_counters c WHERE " SLOT_KEY("c"),
		2, {INT8OID, INT8OID}
	};
	Datum		values[2];
	SPITupleTable *tt;

	slot_key(values, tenant_id, quota_id);
	tt = lock_complete(&lock, &count, values);
	return slot_rows(tt, tt->numvals, quota_id, rows);
}

/*
 * QuotaStorageLockTenant
 *		Lock every counter row of a tenant in the hot path's order (quota
 *		id, slot; doc/design.md section 5), also those a re-layout added
 *		while this waited.  The caller holds the tenant's quota rows FOR
 *		SHARE, so no re-layout can add rows meanwhile (adjust.c).
 */
void
QuotaStorageLockTenant(int64 tenant_id)
{
	static QuotaPlan lock = {
		"SELECT 1 FROM quota_ext.quota_counters c "
		"WHERE c.tenant_id OPERATOR(pg_catalog.=) $1 "
		"ORDER BY c.quota_id, c.slot "
		"FOR NO KEY UPDATE OF c",
		1, {INT8OID}
	};
	static QuotaPlan count = {
		"SELECT pg_catalog.count(*) FROM quota_ext.quota_counters c "
		"WHERE c.tenant_id OPERATOR(pg_catalog.=) $1",
		1, {INT8OID}
	};
	Datum		values[1] = {Int64GetDatum(tenant_id)};

	(void) lock_complete(&lock, &count, values);
}

/*
 * QuotaSlotsSeen
 *		The slot rows of a quota as they stand, unlocked, in slot order, and
 *		which of them this transaction wrote (mine: xmin is one of its
 *		transaction ids).  Returns how many.
 */
int
QuotaSlotsSeen(int64 tenant_id, int64 quota_id, QuotaCounterWrite **rows, bool **mine)
{
	static QuotaPlan seen = {
		"SELECT " SLOT_COLUMNS ", c.xmin "
		"FROM quota_ext.quota_counters c "
		"WHERE " SLOT_KEY("c") "ORDER BY c.slot",
		2, {INT8OID, INT8OID}
	};
	Datum		values[2];
	int			n;
	int			i;

	slot_key(values, tenant_id, quota_id);
	QuotaSpiExec(&seen, values, NULL, false, 0);
	n = slot_rows(SPI_tuptable, SPI_processed, quota_id, rows);
	*mine = palloc(sizeof(bool) * Max(n, 1));
	for (i = 0; i < n; i++)
	{
		bool		isnull;
		Datum		xmin = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 6,
										 &isnull);

		(*mine)[i] = TransactionIdIsCurrentTransactionId(DatumGetTransactionId(xmin));
	}
	return n;
}

/* QuotaSlotLockHeld: lock one slot row (held by this transaction already) */
bool
QuotaSlotLockHeld(int64 tenant_id, int64 quota_id, int32 slot, QuotaCounterWrite *row)
{
	static QuotaPlan held = {
		"SELECT " SLOT_COLUMNS
		"FROM quota_ext.quota_counters c "
		"WHERE " SLOT_KEY("c") "AND c.slot OPERATOR(pg_catalog.=) $3 "
		"FOR NO KEY UPDATE",
		3, {INT8OID, INT8OID, INT4OID}
	};
	Datum		values[3];

	slot_key(values, tenant_id, quota_id);
	values[2] = Int32GetDatum(slot);
	QuotaSpiExec(&held, values, NULL, false, 0);
	if (SPI_processed != 1)
		return false;
	slot_row(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, quota_id, row);
	return true;
}

/*
 * QuotaSlotLockFor
 *		Lock one more slot row of the period that starts at `start` that
 *		can take a change of delta (< 0: one that holds usage; > 0: one with
 *		room for delta), above slot `above` and not among taken[], the first
 *		in slot order; without waiting (SKIP LOCKED) or waiting for it.
 *		False when there is none.
 */
#define SLOT_ADJUST(lock) \
	"SELECT " SLOT_COLUMNS \
	"FROM quota_ext.quota_counters c " \
	"WHERE " SLOT_KEY("c") "AND c.period_start OPERATOR(pg_catalog.=) $3 " \
	"  AND c.slot OPERATOR(pg_catalog.>) $5 " \
	"  AND NOT (c.slot OPERATOR(pg_catalog.=) ANY ($6)) " \
	"  AND CASE WHEN $4 OPERATOR(pg_catalog.<) 0 THEN c.used OPERATOR(pg_catalog.>) 0 " \
	"           ELSE c.allowance OPERATOR(pg_catalog.-) c.used OPERATOR(pg_catalog.>=) $4 END " \
	"ORDER BY c.slot LIMIT 1 FOR NO KEY UPDATE OF c" lock
#define SLOT_ADJUST_TYPES \
	6, {INT8OID, INT8OID, TIMESTAMPTZOID, INT8OID, INT4OID, INT4ARRAYOID}

bool
QuotaSlotLockFor(bool wait, int64 tenant_id, int64 quota_id, TimestampTz start,
				 int64 delta, int32 above, const int32 *taken, int ntaken,
				 QuotaCounterWrite *row)
{
	static QuotaPlan skip = {SLOT_ADJUST(" SKIP LOCKED"), SLOT_ADJUST_TYPES};
	static QuotaPlan block = {SLOT_ADJUST(""), SLOT_ADJUST_TYPES};
	Datum		values[6];
	Datum	   *elems = palloc(sizeof(Datum) * Max(ntaken, 1));
	int			j;

	slot_key(values, tenant_id, quota_id);
	values[2] = TimestampTzGetDatum(start);
	values[3] = Int64GetDatum(delta);
	values[4] = Int32GetDatum(above);
	for (j = 0; j < ntaken; j++)
		elems[j] = Int32GetDatum(taken[j]);
	values[5] = PointerGetDatum(construct_array(elems, ntaken, INT4OID, 4, true,
												TYPALIGN_INT));
	QuotaSpiExec(wait ? &block : &skip, values, NULL, false, 0);
	if (SPI_processed != 1)
		return false;
	slot_row(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, quota_id, row);
	return true;
}

/* QuotaSlotSum: the quota's total in the period at start, as this transaction sees it */
int64
QuotaSlotSum(int64 tenant_id, int64 quota_id, TimestampTz start)
{
	static QuotaPlan sum = {
		"SELECT " SLOT_SUM("c"),
		3, {INT8OID, INT8OID, TIMESTAMPTZOID}
	};
	Datum		values[3];

	slot_key(values, tenant_id, quota_id);
	values[2] = TimestampTzGetDatum(start);
	QuotaSpiExec(&sum, values, NULL, false, 1);
	return sum_value(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
}

PG_FUNCTION_INFO_V1(quota_ext_slot_share);
PG_FUNCTION_INFO_V1(quota_ext_counters_lay_out);

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
	PG_RETURN_INT64(QuotaSlotShare(limit, n, i));
}

/* the lay-out's arguments, checked (internal, but bad input changes nothing) */
static void
lay_out_args(FunctionCallInfo fcinfo, int32 *n, int32 *first, int32 **keep, int *nkeep)
{
	ArrayType  *arr;
	Datum	   *elems;
	bool	   *enulls;
	int			i;

	for (i = 0; i < PG_NARGS(); i++)
		if (PG_ARGISNULL(i))
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("_counters_lay_out() takes no NULL argument")));
	*n = PG_GETARG_INT32(3);
	*first = PG_GETARG_INT32(4);
	if (*n < 0 || *n > 64 || *first < 0 || *first > *n)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("cannot lay slots %d to %d out", *first, *n - 1)));
	if (PG_GETARG_INT64(6) < 0 || PG_GETARG_INT64(8) < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("_counters_lay_out() takes no negative total or slack")));
	arr = PG_GETARG_ARRAYTYPE_P(5);
	if (ARR_NDIM(arr) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("the slots to keep must be a one-dimensional array")));
	deconstruct_array(arr, INT4OID, 4, true, TYPALIGN_INT, &elems, &enulls, nkeep);
	*keep = palloc(sizeof(int32) * Max(*nkeep, 1));
	for (i = 0; i < *nkeep; i++)
	{
		(*keep)[i] = enulls[i] ? -1 : DatumGetInt32(elems[i]);
		if ((*keep)[i] < 0 || (*keep)[i] >= *first || (i > 0 && (*keep)[i] <= (*keep)[i - 1]))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("the slots to keep must ascend below slot %d", *first)));
	}
}

/*
 * quota_ext._counters_lay_out(tenant_id bigint, quota_id bigint,
 *		period_start timestamptz, n integer, first integer, keep integer[],
 *		total bigint, mask integer, slack bigint) RETURNS void
 *
 * The one writer of counter rows for PL/pgSQL: lay a quota's counters out
 * over n rows in the period that starts at period_start.  Slack is shared
 * by the slot-share rule over the k = cardinality(keep) + n - first slots
 * keep[0..] then first..n-1: each slot of keep (existing rows, ascending,
 * below first) keeps its used and gets allowance used + its share; slot
 * first gets total and mask, later slots 0 and 0, each with allowance
 * used + its share (NULL when k is 1: a plain counter); rows of slot n and
 * above are deleted first.  The rows written must be locked (or new).
 *
 *	 _counters_rebuild, _escrow_relayout (all rows again): first 0, no keep
 *	 _escrow_relayout (more slots from the free ones): keep the free slots,
 *		first the old slot count, total and mask 0
 *	 a new quota's counter: n 1, period_start '-infinity', all 0
 *	 a quota's counters deleted: n 0
 */
Datum
quota_ext_counters_lay_out(PG_FUNCTION_ARGS)
{
	static QuotaPlan delete_from = {
		"DELETE FROM quota_ext.quota_counters c "
		"WHERE " SLOT_KEY("c") "AND c.slot OPERATOR(pg_catalog.>=) $3",
		3, {INT8OID, INT8OID, INT4OID}
	};
	static QuotaPlan share_kept = {
		"UPDATE quota_ext.quota_counters c SET allowance = c.used OPERATOR(pg_catalog.+) $4 "
		"WHERE " SLOT_KEY("c") "AND c.slot OPERATOR(pg_catalog.=) $3",
		4, {INT8OID, INT8OID, INT4OID, INT8OID}
	};
	int64		tenant_id;
	int64		quota_id;
	TimestampTz start;
	int32		n;
	int32		first;
	int32	   *keep;
	int			nkeep;
	int64		slack;
	int			k;
	int			i;
	Datum		values[4];
	QuotaSpiState spi;

	/*
	 * It writes as the owner, past row security: only the owner's SECURITY
	 * DEFINER functions call it (no grant), and a grant by mistake still
	 * lets nobody else in.
	 */
	if (GetUserId() != QuotaOwnerId() && !superuser())
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("_counters_lay_out() is for quota_ext's own functions")));
	lay_out_args(fcinfo, &n, &first, &keep, &nkeep);
	tenant_id = PG_GETARG_INT64(0);
	quota_id = PG_GETARG_INT64(1);
	start = PG_GETARG_TIMESTAMPTZ(2);
	slack = PG_GETARG_INT64(8);
	k = nkeep + n - first;

	QuotaSpiBegin(&spi);
	slot_key(values, tenant_id, quota_id);
	values[2] = Int32GetDatum(n);
	QuotaSpiExec(&delete_from, values, NULL, false, 0);
	for (i = 0; i < nkeep; i++)
	{
		values[2] = Int32GetDatum(keep[i]);
		values[3] = Int64GetDatum(QuotaSlotShare(slack, k, i));
		QuotaSpiExec(&share_kept, values, NULL, false, 0);
	}
	for (i = first; i < n; i++)
	{
		QuotaCounterWrite w;

		memset(&w, 0, sizeof(w));
		w.quota_id = quota_id;
		w.slot = i;
		w.start = start;
		w.used = i == first ? PG_GETARG_INT64(6) : 0;
		w.mask = i == first ? PG_GETARG_INT32(7) : 0;
		w.has_allowance = k > 1;
		if (w.has_allowance)
			w.allowance = w.used + QuotaSlotShare(slack, k, nkeep + i - first);
		QuotaSpiWriteCounter(tenant_id, &w, true);
	}
	QuotaSpiEnd(&spi);
	PG_RETURN_VOID();
}
