/*-------------------------------------------------------------------------
 *
 * quota.c
 *		Exact enforcement: quota_consume, invoke, reservations, refunds.
 *
 * One request is one pass through this file, inside the caller's
 * transaction (privileged SPI, see spi.c):
 *
 *	 1. policy.c: tenant active?  which model?  policy allows?
 *	 2. idempotency claim: INSERT ... ON CONFLICT DO NOTHING on
 *		(tenant_id, idempotency_key).  A second session with the same key
 *		waits here on the first one's uncommitted row, holding no quota
 *		lock; once the first commits it finds the row and returns the stored
 *		decision (a replay charges nothing); if the first rolls back, it
 *		goes on as if alone.
 *	 3. rate limits (ratelimit.c), before any quota: a limited request
 *		charges no quota.  Buckets live in shared memory and are not given
 *		back if the transaction rolls back (anti-abuse).
 *	 4. lock the counters of every applicable quota with one
 *		SELECT ... ORDER BY quota_id FOR NO KEY UPDATE.  The sort happens
 *		below the lock step, so every transaction takes its locks in
 *		ascending quota_id order and concurrent consumes never deadlock.
 *		Escrow quotas (slots > 1, for hot tenants) come after those, in
 *		quota_id order: one free slot that can hold the amount is taken with
 *		SKIP LOCKED (never waits); if all that could are busy, the call waits
 *		for one of them; only if no single slot can hold it is every slot
 *		locked in slot order and the limit re-split (acquire_slots).  A
 *		transaction waits on a slot only while holding no slot of that quota,
 *		or lower slots in the all-slots path, and holders of its slots wait
 *		only on later quotas, so the order stays acyclic.
 *	 4a. a request that waited for a lock in 2 or 4 reads the policy, the
 *		tenant's status and its quotas again before deciding (invoke() also
 *		its key) if a configuration change committed while it waited: that
 *		change applies to it (recheck_after_wait).  One that did not wait,
 *		or whose configuration generation did not move, reads nothing more.
 *	 5. decide in C: the period of each quota is computed from one instant
 *		taken after the locks (so under a counter's lock time never goes
 *		backwards), a counter whose period_start is older is read as 0, and
 *		if any blocking quota would exceed its limit nothing is charged.
 *	 6. one statement writes the usage row and every counter (a data-
 *		modifying CTE), then threshold events (INSERT ... ON CONFLICT DO
 *		NOTHING on their unique key, and a NOTIFY) and the idempotency row.
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
 *-------------------------------------------------------------------------
 */
#include "quota_ext.h"

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

PG_FUNCTION_INFO_V1(quota_consume);
PG_FUNCTION_INFO_V1(quota_consume_or_raise);
PG_FUNCTION_INFO_V1(invoke);
PG_FUNCTION_INFO_V1(quota_reserve);
PG_FUNCTION_INFO_V1(quota_settle);
PG_FUNCTION_INFO_V1(quota_cancel);
PG_FUNCTION_INFO_V1(quota_refund);
PG_FUNCTION_INFO_V1(quota_expire_reservations);

#define QUOTA_MAX_QUOTAS		64	/* applicable quotas per request */
#define QUOTA_MAX_THRESHOLDS	16
#define QUOTA_IDEM_MAX_LEN		255
#define QUOTA_METADATA_MAX_BYTES 1024	/* jsonb on a usage row */
#define QUOTA_EVENT_CHANNEL		"quota_ext_events"

/* optional token counts of a call (metering) */
typedef struct UsageTokens
{
	bool		has_input;
	bool		has_output;
	int64		input;
	int64		output;
} UsageTokens;

/* what a usage row carries beyond units: tokens, price version, cost */
typedef struct UsageExtra
{
	UsageTokens tokens;
	int64		price_id;		/* 0: unpriced */
	int64		cost_micro;
	Datum		metadata;		/* jsonb, or 0 */
} UsageExtra;

/* one request to charge */
typedef struct ConsumeRequest
{
	int64		tenant_id;
	const char *model;
	int64		units;
	const char *idem_key;		/* NULL: none */
	int64		user_id;		/* 0: unknown */
	int64		key_id;			/* 0: unknown */
	const char *role;			/* NULL: none */
	bool		key_authenticated;	/* invoke(): key_id was checked by this call */
	uint64		config_stamp;	/* invoke(): QuotaConfigStamp() before the key */
	bool		reserve;
	Interval   *ttl;			/* reserve only */
	UsageTokens tokens;			/* optional input/output tokens */
	Datum		metadata;		/* jsonb, or 0 */
} ConsumeRequest;

/* the answer, as the composite quota_ext.decision */
typedef struct Decision
{
	bool		allowed;
	const char *denied_by;		/* static string or NULL */
	int64		quota_id;		/* 0: none */
	char		period[32];
	bool		has_limit;
	int64		limit;
	int64		remaining;
	bool		has_resets;
	TimestampTz resets_at;
	bool		has_retry;
	int64		retry_after;
	int64		usage_id;		/* 0: none */
	int64		reservation_id; /* 0: none */
	bool		replayed;
	bool		has_cost;		/* the call is priced */
	int64		cost_micro;
	bool		has_remaining_cost; /* a cost quota applies */
	int64		remaining_cost_micro;
	char		currency[4];	/* of the cost, else of the cost quota */
} Decision;

/* one counter row to write: (quota, slot) <- used, period, allowance, mask */
typedef struct CounterUpdate
{
	int64		quota_id;
	int32		slot;
	int64		used;
	TimestampTz start;
	bool		has_allowance;
	int64		allowance;
	int32		mask;
} CounterUpdate;

/* a locked counter and its quota */
typedef struct QuotaRow
{
	int64		quota_id;
	QuotaPeriod period;
	char		label[32];
	bool		metric_calls;
	bool		metric_cost;	/* max_units, used: micro-units of currency */
	char		currency[4];
	int64		max_units;
	bool		has_soft;
	int64		soft_limit;
	char		on_exceed;		/* 'b'lock, 'a'lert, 'o'verage */
	int			nthresholds;
	int			thresholds[QUOTA_MAX_THRESHOLDS];
	TimestampTz counter_start;
	int64		used;
	ItemPointerData counter_tid;	/* where it was locked (direct.c), or invalid */
	/* computed */
	TimestampTz start;
	TimestampTz end;
	int64		old_used;		/* in the current period */
	int64		new_used;
	bool		touched;		/* counter is written */
	/* escrow quotas (slots > 1): see acquire_slots */
	int			slots;
	bool		multi_deny;		/* even all slots together cannot take it */
	int			nupd;
	CounterUpdate *upd;			/* the slot rows to write */
	int			charged;		/* index in upd of the charged slot */
	bool		slot_written;	/* upd[0] charged and written by acquire_slots */
	int64		slot_amount;	/* ... by this much */
	int32		written_mask;	/* ... with this events_mask */
} QuotaRow;

static const char *const denied_tenant = "tenant";
static const char *const denied_policy = "policy";
static const char *const denied_rate = "rate_limit";
static const char *const denied_quota = "quota";

static void emit_event(int64 tenant_id, QuotaRow *r, const char *kind, int threshold,
					   int64 limit);

/* ----------------------------------------------------------------------
 * plans
 * ---------------------------------------------------------------------- */

/*
 * Counters of the quotas that apply to (tenant, model, user, key), locked in
 * quota_id order.  $5 bounds the quota's creation time: adjustments of old
 * usage skip quotas created after it (their counters never included it).
 */
static QuotaPlan lock_plan = {
	"SELECT c.quota_id, q.period, q.period_label, "
	"       q.metric OPERATOR(pg_catalog.=) 'calls', q.max_units, q.soft_limit, "
	"       q.on_exceed, q.thresholds, c.period_start, c.used, "
	"       q.metric OPERATOR(pg_catalog.=) 'cost', q.currency "
	"FROM quota_ext.quota_counters c "
	"JOIN quota_ext.quotas q ON q.tenant_id OPERATOR(pg_catalog.=) c.tenant_id "
	"                       AND q.quota_id OPERATOR(pg_catalog.=) c.quota_id "
	"WHERE c.tenant_id OPERATOR(pg_catalog.=) $1 AND c.slot OPERATOR(pg_catalog.=) 0 "
	"  AND q.slots OPERATOR(pg_catalog.=) 1 "
	"  AND (q.model_id IS NULL OR q.model_id OPERATOR(pg_catalog.=) $2) "
	"  AND (q.user_id IS NULL OR q.user_id OPERATOR(pg_catalog.=) $3) "
	"  AND (q.key_id IS NULL OR q.key_id OPERATOR(pg_catalog.=) $4) "
	"  AND q.created_at OPERATOR(pg_catalog.<=) $5 "
	"ORDER BY c.quota_id "
	"FOR NO KEY UPDATE OF c",
	5, {INT8OID, INT8OID, INT8OID, INT8OID, TIMESTAMPTZOID}
};

/* the escrow quotas that apply (definitions only; slots are taken one by one) */
static QuotaPlan multi_plan = {
	"SELECT q.quota_id, q.period, q.period_label, "
	"       q.metric OPERATOR(pg_catalog.=) 'calls', q.max_units, q.soft_limit, "
	"       q.on_exceed, q.thresholds, '-infinity'::pg_catalog.timestamptz, 0::pg_catalog.int8, "
	"       q.metric OPERATOR(pg_catalog.=) 'cost', q.currency, q.slots "
	"FROM quota_ext.quotas q "
	"WHERE q.tenant_id OPERATOR(pg_catalog.=) $1 AND q.slots OPERATOR(pg_catalog.>) 1 "
	"  AND (q.model_id IS NULL OR q.model_id OPERATOR(pg_catalog.=) $2) "
	"  AND (q.user_id IS NULL OR q.user_id OPERATOR(pg_catalog.=) $3) "
	"  AND (q.key_id IS NULL OR q.key_id OPERATOR(pg_catalog.=) $4) "
	"  AND q.created_at OPERATOR(pg_catalog.<=) $5 "
	"ORDER BY q.quota_id",
	5, {INT8OID, INT8OID, INT8OID, INT8OID, TIMESTAMPTZOID}
};

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

/* ----------------------------------------------------------------------
 * argument checks
 * ---------------------------------------------------------------------- */

static void
check_positive(int64 v, const char *name)
{
	if (v <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be positive", name),
				 errdetail("Got %lld.", (long long) v)));
}

/*
 * check_bounded
 *		Units, tokens: at most QUOTA_MAX_UNITS per call (quota_ext.h).  Sums
 *		over the ledger are numeric, but one call's numbers must stay far
 *		from the int64 range of a counter and of the ledger's columns.
 */
static void
check_bounded(int64 v, const char *name)
{
	if (v > QUOTA_MAX_UNITS)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("%s must be at most %lld", name, (long long) QUOTA_MAX_UNITS),
				 errdetail("Got %lld.", (long long) v)));
}

/*
 * check_ttl
 *		A reservation's ttl as a duration: every field counts (a month as 30
 *		days, a day as 24 hours, as EXTRACT(epoch) does), the whole must be
 *		positive and at most 7 days.  Returns it as an interval of time only,
 *		so that expires_at is exactly that long after the charge instant
 *		whatever the session's time zone.  (Only the days were bounded
 *		before: '1000000 hours' passed, issue 12 finding 9.)
 */
#define QUOTA_MAX_TTL_USECS		(INT64CONST(7) * USECS_PER_DAY)

static Interval *
check_ttl(const Interval *ttl)
{
	int64		usecs;
	int64		part;
	Interval   *out;

	bool		overflow;

	overflow = pg_mul_s64_overflow((int64) ttl->month, (int64) DAYS_PER_MONTH * USECS_PER_DAY, &part) ||
		pg_add_s64_overflow(ttl->time, part, &usecs) ||
		pg_mul_s64_overflow((int64) ttl->day, USECS_PER_DAY, &part) ||
		pg_add_s64_overflow(usecs, part, &usecs);
	if (overflow || usecs <= 0 || usecs > QUOTA_MAX_TTL_USECS)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("ttl must be positive and at most 7 days"),
				 overflow ? 0 :
				 errdetail("Got %s seconds; the most is %lld.",
						   DatumGetCString(DirectFunctionCall1(numeric_out,
															   DirectFunctionCall1(numeric_trim_scale,
																				   NumericGetDatum(int64_div_fast_to_numeric(usecs, 6))))),
						   (long long) (QUOTA_MAX_TTL_USECS / USECS_PER_SEC))));
	out = palloc0(sizeof(Interval));
	out->time = usecs;
	return out;
}

/* a call's cost: at most QUOTA_MAX_COST_MICRO micro-units */
static void
check_cost_bounded(int64 micro)
{
	if (micro > QUOTA_MAX_COST_MICRO || micro < -QUOTA_MAX_COST_MICRO)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("the cost of one call must be at most %lld",
						(long long) (QUOTA_MAX_COST_MICRO / 1000000)),
				 errdetail("Got %s.",
						   DatumGetCString(DirectFunctionCall1(numeric_out,
															   QuotaMicroToNumeric(micro))))));
}

/*
 * check_writable
 *		Every function below writes.  In a read-only transaction (or on a
 *		standby) say so first, with PostgreSQL's own SQLSTATE and wording
 *		(25006), rather than failing inside whichever internal statement
 *		writes first, with that statement as CONTEXT.  (Found by
 *		test/sql/consume.sql, checklist F11.)
 */
static void
check_writable(const char *fn)
{
	PreventCommandIfReadOnly(fn);
}

static const char *
check_idem_key(FunctionCallInfo fcinfo, int argno)
{
	text	   *t;
	int			len;

	if (PG_ARGISNULL(argno))
		return NULL;
	t = PG_GETARG_TEXT_PP(argno);
	len = VARSIZE_ANY_EXHDR(t);
	if (len == 0 || len > QUOTA_IDEM_MAX_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("idempotency_key must be 1 to %d bytes", QUOTA_IDEM_MAX_LEN),
				 errdetail("Got %d bytes.", len)));
	return text_to_cstring(t);
}

/* optional input_tokens, output_tokens (argno, argno + 1), metadata (argno + 2) */
static void
check_metering_args(FunctionCallInfo fcinfo, int argno, UsageTokens *tokens, Datum *metadata)
{
	memset(tokens, 0, sizeof(*tokens));
	if (PG_NARGS() > argno && !PG_ARGISNULL(argno))
	{
		tokens->has_input = true;
		tokens->input = PG_GETARG_INT64(argno);
	}
	if (PG_NARGS() > argno + 1 && !PG_ARGISNULL(argno + 1))
	{
		tokens->has_output = true;
		tokens->output = PG_GETARG_INT64(argno + 1);
	}
	if (tokens->input < 0 || tokens->output < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("input_tokens and output_tokens must not be negative")));
	check_bounded(tokens->input, "input_tokens");
	check_bounded(tokens->output, "output_tokens");
	if (metadata == NULL)
		return;
	*metadata = (Datum) 0;
	if (PG_NARGS() > argno + 2 && !PG_ARGISNULL(argno + 2))
	{
		Jsonb	   *j = PG_GETARG_JSONB_P(argno + 2);

		if (!JB_ROOT_IS_OBJECT(j) || JB_ROOT_IS_SCALAR(j))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("metadata must be a JSON object")));
		if (VARSIZE(j) > QUOTA_METADATA_MAX_BYTES)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("metadata must be at most %d bytes", QUOTA_METADATA_MAX_BYTES),
					 errdetail("Got %d bytes.", (int) VARSIZE(j)),
					 errhint("Keep static data out of the ledger: reference it by id.")));
		*metadata = PointerGetDatum(j);
	}
}

static void
raise_unknown_model(const char *model)
{
	ereport(ERROR,
			(errcode(ERRCODE_UNDEFINED_OBJECT),
			 errmsg("model \"%s\" does not exist", QuotaQuoteInput(model))));
}

/* ----------------------------------------------------------------------
 * helpers
 * ---------------------------------------------------------------------- */

static int64
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
 *		Load SPI's rows (lock_plan or multi_plan columns) into rows[first..].
 */
static int
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
		r->slots = desc->natts >= 13 ?
			DatumGetInt32(SPI_getbinval(tup, desc, 13, &isnull)) : 1;
		r->charged = -1;
	}
	return first + (int) SPI_processed;
}

/* the single-slot quotas that apply to (tenant, model, user, key), cached */
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

/* the definitions of the single-slot quotas that apply (no lock) */
static QuotaPlan defs_plan = {
	"SELECT q.quota_id, q.period, q.period_label, "
	"       q.metric OPERATOR(pg_catalog.=) 'calls', q.max_units, q.soft_limit, "
	"       q.on_exceed, q.thresholds, '-infinity'::pg_catalog.timestamptz, 0::pg_catalog.int8, "
	"       q.metric OPERATOR(pg_catalog.=) 'cost', q.currency "
	"FROM quota_ext.quotas q "
	"WHERE q.tenant_id OPERATOR(pg_catalog.=) $1 AND q.slots OPERATOR(pg_catalog.=) 1 "
	"  AND (q.model_id IS NULL OR q.model_id OPERATOR(pg_catalog.=) $2) "
	"  AND (q.user_id IS NULL OR q.user_id OPERATOR(pg_catalog.=) $3) "
	"  AND (q.key_id IS NULL OR q.key_id OPERATOR(pg_catalog.=) $4) "
	"ORDER BY q.quota_id",
	4, {INT8OID, INT8OID, INT8OID, INT8OID}
};

/*
 * lock_cached_counters
 *		lock_counters for a new charge when the configuration cache may be
 *		used (cache.c): the quota definitions come from the cache, and only
 *		the counters are read, by primary key, and locked.  A quota deleted
 *		since (its counter went with it) no longer applies.  Returns -1
 *		when the cache may not be used.
 */
static int
lock_cached_counters(int64 tenant_id, int64 model_id, int64 user_id, int64 key_id,
					 QuotaRow *rows)
{
	QuotaDefsKey key;
	QuotaDefsEntry *e;
	bool		found;
	Datum		values[4];
	char		nulls[4] = {' ', ' ', ' ', ' '};
	int64	   *ids;
	bool	   *found_ids;
	TimestampTz *starts;
	int64	   *used;
	ItemPointerData *tids;
	int			n = 0;
	int			i;

	if (!QuotaCacheBegin())
		return -1;
	memset(&key, 0, sizeof(key));
	key.tenant_id = tenant_id;
	key.model_id = model_id;
	key.user_id = user_id;
	key.key_id = key_id;
	e = QuotaCacheLookup(QUOTA_CACHE_QUOTAS, &key, sizeof(key),
						 sizeof(QuotaDefsEntry), &found);
	if (!found)
		e->valid = false;
	if (!e->valid)
	{
		char		shared[QUOTA_SHARED_DATA];
		Size		len;

		/* the level shared by all backends (cache.c): the count, then the rows */
		len = QuotaSharedCacheGet(QUOTA_CACHE_QUOTAS, &key, sizeof(key), shared);
		if (len >= sizeof(int) && len == sizeof(int) + sizeof(QuotaRow) * *(int *) shared)
		{
			e->n = *(int *) shared;
			e->rows = e->n > 0 ?
				MemoryContextAlloc(QuotaCacheContext(), sizeof(QuotaRow) * e->n) : NULL;
			if (e->n > 0)
				memcpy(e->rows, shared + sizeof(int), sizeof(QuotaRow) * e->n);
			e->valid = true;
		}
	}
	if (!e->valid)
	{
		int			nd;
		char		shared[QUOTA_SHARED_DATA];

		e->valid = false;
		values[0] = Int64GetDatum(tenant_id);
		values[1] = Int64GetDatum(model_id);
		values[2] = Int64GetDatum(user_id);
		values[3] = Int64GetDatum(key_id);
		if (user_id == 0)
			nulls[2] = 'n';
		if (key_id == 0)
			nulls[3] = 'n';
		/* not read-only: a fresh snapshot, taken after the cache's generation */
		QuotaSpiExec(&defs_plan, values, nulls, false, 0);
		nd = parse_quota_rows(rows, 0);
		e->rows = nd > 0 ?
			MemoryContextAlloc(QuotaCacheContext(), sizeof(QuotaRow) * nd) : NULL;
		if (nd > 0)
			memcpy(e->rows, rows, sizeof(QuotaRow) * nd);
		e->n = nd;
		e->valid = true;
		if (sizeof(int) + sizeof(QuotaRow) * nd <= QUOTA_SHARED_DATA)
		{
			memcpy(shared, &nd, sizeof(int));
			if (nd > 0)
				memcpy(shared + sizeof(int), rows, sizeof(QuotaRow) * nd);
			QuotaSharedCachePut(QUOTA_CACHE_QUOTAS, &key, sizeof(key), shared,
								sizeof(int) + sizeof(QuotaRow) * nd);
		}
	}
	if (e->n == 0)
		return 0;

	ids = palloc(sizeof(int64) * e->n);
	found_ids = palloc(sizeof(bool) * e->n);
	starts = palloc(sizeof(TimestampTz) * e->n);
	used = palloc(sizeof(int64) * e->n);
	tids = palloc(sizeof(ItemPointerData) * e->n);
	for (i = 0; i < e->n; i++)
		ids[i] = e->rows[i].quota_id;
	/* by primary key, in quota_id order (direct.c); a deleted quota's is gone */
	QuotaDirectLockCounters(tenant_id, ids, e->n, found_ids, starts, used, tids);
	for (i = 0; i < e->n; i++)
	{
		if (!found_ids[i])
			continue;
		rows[n] = e->rows[i];
		rows[n].counter_start = starts[i];
		rows[n].used = used[i];
		rows[n].counter_tid = tids[i];
		n++;
	}
	return n;
}

/*
 * lock_counters
 *		Lock the counters of the single-row quotas that apply, in quota_id
 *		order, and load them; with escrow quotas (has_slots), append their
 *		definitions (their slots are taken later, see acquire_slots).
 *		created_before is +infinity for a new charge, which may take the
 *		definitions from the configuration cache unless fresh is set (a
 *		request that waited decides on what the tables say now).
 */
static int
lock_counters(int64 tenant_id, int64 model_id, int64 user_id, int64 key_id,
			  TimestampTz created_before, bool has_slots, bool fresh, QuotaRow *rows)
{
	Datum		values[5];
	char		nulls[5] = {' ', ' ', ' ', ' ', ' '};
	int			n = -1;

	if (!fresh && TIMESTAMP_IS_NOEND(created_before))
		n = lock_cached_counters(tenant_id, model_id, user_id, key_id, rows);
	values[0] = Int64GetDatum(tenant_id);
	values[1] = Int64GetDatum(model_id);
	values[2] = Int64GetDatum(user_id);
	values[3] = Int64GetDatum(key_id);
	values[4] = TimestampTzGetDatum(created_before);
	if (user_id == 0)
		nulls[2] = 'n';
	if (key_id == 0)
		nulls[3] = 'n';
	if (n < 0)
	{
		QuotaSpiExec(&lock_plan, values, nulls, false, 0);
		n = parse_quota_rows(rows, 0);
	}
	if (has_slots)
	{
		QuotaSpiExec(&multi_plan, values, nulls, false, 0);
		n = parse_quota_rows(rows, n);
	}
	return n;
}

/* the default share of the limit of slot i of n */
static int64
slot_share(int64 limit, int slots, int i)
{
	return limit / slots + (i < limit % slots ? 1 : 0);
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
static bool
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
		r->upd[i].allowance = r->upd[i].used + slot_share(slack, r->nupd, i);
	r->charged = k;
	r->touched = true;
	return true;
}

/*
 * lock_all_slots
 *		Lock every slot of r in slot order into r->upd.  A slot already in a
 *		newer period than start means the quota has moved on: for an
 *		adjustment of older usage (moved_on given) that is reported; for a
 *		new charge it means the period turned over during this call and
 *		another transaction counted in the new one: 40001, retry.
 */
static void
lock_all_slots(int64 tenant_id, QuotaRow *r, bool *moved_on)
{
	Datum		values[2];
	uint64		i;

	values[0] = Int64GetDatum(tenant_id);
	values[1] = Int64GetDatum(r->quota_id);
	QuotaSpiExec(&slot_all_plan, values, NULL, false, 0);
	r->nupd = (int) SPI_processed;
	r->upd = palloc0(sizeof(CounterUpdate) * Max(r->nupd, 1));
	for (i = 0; i < SPI_processed; i++)
	{
		parse_slot(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, r, r->start, &r->upd[i]);
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
static void
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
 * release_slots
 *		The call charges nothing after all (another quota denies, or the
 *		recheck after a wait does): give back what acquire_slots' single-slot
 *		steps already wrote.  The slot stays locked until the transaction
 *		ends, as every counter a denied call locked does.
 */
static void
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

/*
 * write_usage
 *		The usage row plus the touched counters (direct.c).  Returns the
 *		usage id.
 */
static int64
write_usage(int64 tenant_id, int64 usage_id, TimestampTz occurred_at, const char *kind,
			int64 model_id, int64 user_id, int64 key_id, int32 calls, int64 units,
			int64 overage, int64 ref_usage_id, int64 reservation_id, const char *idem_key,
			QuotaRow *rows, int nrows, const UsageExtra *extra)
{
	QuotaUsageRow u;
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
			w[n].quota_id = r->quota_id;
			w[n].used = r->new_used;
			w[n].start = r->start;
			w[n].tid = r->counter_tid;
			n++;
			continue;
		}
		for (j = 0; j < r->nupd; j++)
		{
			CounterUpdate *cu = &r->upd[j];

			/* charged by acquire_slots already: again only for new events */
			if (r->slot_written && cu->mask == r->written_mask)
				continue;
			w[n].quota_id = cu->quota_id;
			w[n].slot = cu->slot;
			w[n].used = cu->used;
			w[n].start = cu->start;
			w[n].has_allowance = cu->has_allowance;
			w[n].allowance = cu->allowance;
			w[n].mask = cu->mask;
			n++;
		}
	}

	memset(&u, 0, sizeof(u));
	u.tenant_id = tenant_id;
	u.usage_id = usage_id;
	u.occurred_at = occurred_at;
	u.kind = kind;
	u.model_id = model_id;
	u.user_id = user_id;
	u.key_id = key_id;
	u.calls = calls;
	u.units = units;
	u.overage = overage;
	u.ref_usage_id = ref_usage_id;
	u.reservation_id = reservation_id;
	u.idem_key = idem_key;
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
	return QuotaDirectWrite(&u, w, n);
}

/*
 * crossing
 *		Did used go from below to at-or-above pct percent of limit?
 */
static bool
crossing(int64 old_used, int64 new_used, int64 limit, int pct)
{
	int128		mark = (int128) limit * pct;

	return (int128) old_used * 100 < mark && (int128) new_used * 100 >= mark;
}

static void
emit_event(int64 tenant_id, QuotaRow *r, const char *kind, int threshold, int64 limit)
{
	static QuotaPlan plan = {
		"INSERT INTO quota_ext.quota_events (tenant_id, quota_id, period_start, kind, "
		"    threshold, used, \"limit\") "
		"VALUES ($1, $2, $3, $4, $5, $6, $7) "
		"ON CONFLICT (tenant_id, quota_id, period_start, kind, threshold) DO NOTHING "
		"RETURNING event_id",
		7, {INT8OID, INT8OID, TIMESTAMPTZOID, TEXTOID, INT4OID, INT8OID, INT8OID}
	};
	Datum		values[7];
	bool		isnull;
	int64		event_id;
	StringInfoData payload;

	values[0] = Int64GetDatum(tenant_id);
	values[1] = Int64GetDatum(r->quota_id);
	values[2] = TimestampTzGetDatum(r->start);
	values[3] = CStringGetTextDatum(kind);
	values[4] = Int32GetDatum(threshold);
	values[5] = Int64GetDatum(r->new_used);
	values[6] = Int64GetDatum(limit);
	QuotaSpiExec(&plan, values, NULL, false, 0);
	if (SPI_processed == 0)
		return;					/* already emitted in this period */
	event_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1,
										   &isnull));
	/*
	 * Ids only: any login may LISTEN on any channel (PostgreSQL has no
	 * privilege for it) and NOTIFY a forged payload, so the payload is a
	 * hint that says which row to read, and the listener reads it through
	 * row-level security (SECURITY.md, doc/design.md §2).
	 */
	initStringInfo(&payload);
	appendStringInfo(&payload, "{\"event_id\": %lld, \"tenant_id\": %lld}",
					 (long long) event_id, (long long) tenant_id);
	Async_Notify(QUOTA_EVENT_CHANNEL, payload.data);
}

/* threshold and soft-limit events of one counter change */
static void
emit_events(int64 tenant_id, QuotaRow *r)
{
	int			i;

	if (r->slots > 1)
	{
		/*
		 * Escrow: no call sees the exact total, so a threshold is emitted by
		 * the first call of each slot that sees the committed total past it,
		 * and the slot remembers it in its events_mask: exactly once per
		 * period (the unique key), at the latest one call per slot late.
		 */
		CounterUpdate *u;

		if (!r->touched || r->charged < 0)
			return;
		u = &r->upd[r->charged];
		for (i = 0; i < r->nthresholds; i++)
			if (!(u->mask & (1 << i)) &&
				(int128) r->new_used * 100 >= (int128) r->max_units * r->thresholds[i])
			{
				emit_event(tenant_id, r, "threshold", r->thresholds[i], r->max_units);
				u->mask |= (1 << i);
			}
		if (r->has_soft && !(u->mask & (1 << 30)) && r->new_used >= r->soft_limit)
		{
			emit_event(tenant_id, r, "soft_limit", 0, r->soft_limit);
			u->mask |= (1 << 30);
		}
		return;
	}
	if (r->new_used <= r->old_used)
		return;
	for (i = 0; i < r->nthresholds; i++)
		if (crossing(r->old_used, r->new_used, r->max_units, r->thresholds[i]))
			emit_event(tenant_id, r, "threshold", r->thresholds[i], r->max_units);
	if (r->has_soft && r->old_used < r->soft_limit && r->new_used >= r->soft_limit)
		emit_event(tenant_id, r, "soft_limit", 0, r->soft_limit);
}

/* ----------------------------------------------------------------------
 * idempotency
 * ---------------------------------------------------------------------- */

/*
 * idem_claim
 *		Claim (tenant, key) for this request.  Returns true when claimed;
 *		false when the key was used before, with *d set to the stored
 *		decision.  The same key with other parameters raises 22023.
 */
static bool
idem_claim(const ConsumeRequest *req, Decision *d)
{
	static QuotaPlan claim = {
		"INSERT INTO quota_ext.idempotency_keys (tenant_id, idempotency_key, op, model, units) "
		"VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant_id, idempotency_key) DO NOTHING",
		5, {INT8OID, TEXTOID, TEXTOID, TEXTOID, INT8OID}
	};
	static QuotaPlan fetch = {
		"SELECT op, model, units, allowed, denied_by, quota_id, period, \"limit\", "
		"       remaining, resets_at, retry_after, usage_id, reservation_id, "
		"       cost, remaining_cost, currency "
		"FROM quota_ext.idempotency_keys "
		"WHERE tenant_id OPERATOR(pg_catalog.=) $1 "
		"  AND idempotency_key OPERATOR(pg_catalog.=) $2",
		2, {INT8OID, TEXTOID}
	};
	Datum		values[5];
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	Datum		v;
	const char *op = req->reserve ? "reserve" : "consume";
	char	   *s;

	values[0] = Int64GetDatum(req->tenant_id);
	values[1] = CStringGetTextDatum(req->idem_key);
	values[2] = CStringGetTextDatum(op);
	values[3] = CStringGetTextDatum(req->model);
	values[4] = Int64GetDatum(req->units);
	QuotaSpiExec(&claim, values, NULL, false, 0);
	if (SPI_processed == 1)
		return true;

	QuotaSpiExec(&fetch, values, NULL, false, 1);
	if (SPI_processed != 1)
		elog(ERROR, "idempotency key vanished");
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	if (strcmp(SPI_getvalue(tup, desc, 1), op) != 0 ||
		strcmp(SPI_getvalue(tup, desc, 2), req->model) != 0 ||
		DatumGetInt64(SPI_getbinval(tup, desc, 3, &isnull)) != req->units)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("idempotency key \"%s\" was used with other parameters",
						QuotaQuoteInput(req->idem_key)),
				 errhint("Use a new key for a different request.")));

	memset(d, 0, sizeof(*d));
	d->replayed = true;
	d->allowed = DatumGetBool(SPI_getbinval(tup, desc, 4, &isnull));
	s = SPI_getvalue(tup, desc, 5);
	if (s == NULL)
		d->denied_by = NULL;
	else if (strcmp(s, denied_tenant) == 0)
		d->denied_by = denied_tenant;
	else if (strcmp(s, denied_policy) == 0)
		d->denied_by = denied_policy;
	else if (strcmp(s, denied_rate) == 0)
		d->denied_by = denied_rate;
	else
		d->denied_by = denied_quota;
	v = SPI_getbinval(tup, desc, 6, &isnull);
	d->quota_id = isnull ? 0 : DatumGetInt64(v);
	s = SPI_getvalue(tup, desc, 7);
	if (s)
		strlcpy(d->period, s, sizeof(d->period));
	v = SPI_getbinval(tup, desc, 8, &isnull);
	d->has_limit = !isnull;
	d->limit = isnull ? 0 : DatumGetInt64(v);
	v = SPI_getbinval(tup, desc, 9, &isnull);
	d->remaining = isnull ? 0 : DatumGetInt64(v);
	v = SPI_getbinval(tup, desc, 10, &isnull);
	d->has_resets = !isnull;
	d->resets_at = isnull ? 0 : DatumGetTimestampTz(v);
	v = SPI_getbinval(tup, desc, 11, &isnull);
	d->has_retry = !isnull;
	d->retry_after = isnull ? 0 : DatumGetInt64(v);
	v = SPI_getbinval(tup, desc, 12, &isnull);
	d->usage_id = isnull ? 0 : DatumGetInt64(v);
	v = SPI_getbinval(tup, desc, 13, &isnull);
	d->reservation_id = isnull ? 0 : DatumGetInt64(v);
	v = SPI_getbinval(tup, desc, 14, &isnull);
	d->has_cost = !isnull;
	d->cost_micro = isnull ? 0 : QuotaNumericToMicro(v);
	v = SPI_getbinval(tup, desc, 15, &isnull);
	d->has_remaining_cost = !isnull;
	d->remaining_cost_micro = isnull ? 0 : QuotaNumericToMicro(v);
	s = SPI_getvalue(tup, desc, 16);
	if (s)
		strlcpy(d->currency, s, sizeof(d->currency));
	return false;
}

static void
idem_store(const ConsumeRequest *req, const Decision *d)
{
	static QuotaPlan plan = {
		"UPDATE quota_ext.idempotency_keys SET allowed = $3, denied_by = $4, quota_id = $5, "
		"       period = $6, \"limit\" = $7, remaining = $8, resets_at = $9, "
		"       retry_after = $10, usage_id = $11, reservation_id = $12, "
		"       cost = $13, remaining_cost = $14, currency = $15 "
		"WHERE tenant_id OPERATOR(pg_catalog.=) $1 "
		"  AND idempotency_key OPERATOR(pg_catalog.=) $2",
		15, {INT8OID, TEXTOID, BOOLOID, TEXTOID, INT8OID, TEXTOID, INT8OID, INT8OID,
		TIMESTAMPTZOID, INT8OID, INT8OID, INT8OID, NUMERICOID, NUMERICOID, TEXTOID}
	};
	Datum		values[15];
	char		nulls[15];

	memset(nulls, ' ', sizeof(nulls));
	values[0] = Int64GetDatum(req->tenant_id);
	values[1] = CStringGetTextDatum(req->idem_key);
	values[2] = BoolGetDatum(d->allowed);
	if (d->denied_by)
		values[3] = CStringGetTextDatum(d->denied_by);
	else
		nulls[3] = 'n';
	values[4] = Int64GetDatum(d->quota_id);
	if (d->quota_id == 0)
		nulls[4] = 'n';
	if (d->period[0])
		values[5] = CStringGetTextDatum(d->period);
	else
		nulls[5] = 'n';
	values[6] = Int64GetDatum(d->limit);
	values[7] = Int64GetDatum(d->remaining);
	if (!d->has_limit)
		nulls[6] = nulls[7] = 'n';
	values[8] = TimestampTzGetDatum(d->resets_at);
	if (!d->has_resets)
		nulls[8] = 'n';
	values[9] = Int64GetDatum(d->retry_after);
	if (!d->has_retry)
		nulls[9] = 'n';
	values[10] = Int64GetDatum(d->usage_id);
	if (d->usage_id == 0)
		nulls[10] = 'n';
	values[11] = Int64GetDatum(d->reservation_id);
	if (d->reservation_id == 0)
		nulls[11] = 'n';
	values[12] = QuotaMicroToNumeric(d->cost_micro);
	if (!d->has_cost)
		nulls[12] = 'n';
	values[13] = QuotaMicroToNumeric(d->remaining_cost_micro);
	if (!d->has_remaining_cost)
		nulls[13] = 'n';
	if (d->currency[0])
		values[14] = CStringGetTextDatum(d->currency);
	else
		nulls[14] = 'n';
	QuotaSpiExec(&plan, values, nulls, false, 0);
}

/* ----------------------------------------------------------------------
 * the charge
 * ---------------------------------------------------------------------- */

/*
 * decide_quotas
 *		Compute periods and new counts for a charge of `calls` calls,
 *		`units` units and `cost` micro-units of money at `at`; fill *d.
 *		Returns false (nothing to write) when a blocking quota denies.
 *		*overage gets the units beyond the limit of overage quotas (a cost
 *		quota with on_exceed overage lets the call through like alert: its
 *		money is on the usage row already).
 */
static bool
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
			else if (r->on_exceed == 'o' && !r->metric_cost)
			{
				int64		over = r->new_used - Max(r->old_used, r->max_units);

				*overage = Max(*overage, Min(over, amount));
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
		d->quota_id = r->quota_id;
		strlcpy(d->period, r->label, sizeof(d->period));
		if (r->metric_cost)
		{
			/* money: in remaining_cost, not in the integer columns */
			d->has_remaining_cost = true;
			d->remaining_cost_micro = Max(r->max_units - r->old_used, 0);
		}
		else
		{
			d->has_limit = true;
			d->limit = r->max_units;
			d->remaining = Max(r->max_units - r->old_used, 0);
		}
		if (r->period != QUOTA_PERIOD_LIFETIME)
		{
			d->has_resets = true;
			d->resets_at = r->end;
			d->has_retry = true;
			d->retry_after = seconds_until(r->end, clock);
		}
		return false;
	}
	d->allowed = true;
	if (tight >= 0)
	{
		QuotaRow   *r = &rows[tight];

		d->quota_id = r->quota_id;
		strlcpy(d->period, r->label, sizeof(d->period));
		d->has_limit = true;
		d->limit = r->max_units;
		d->remaining = Max(r->max_units - r->new_used, 0);
		if (r->period != QUOTA_PERIOD_LIFETIME)
		{
			d->has_resets = true;
			d->resets_at = r->end;
		}
	}
	return true;
}

/*
 * charge_instant
 *		Now, after the locks; never before a locked counter's period.
 */
static TimestampTz
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
static void
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
				   QuotaPolicyResult *pol, QuotaRow *rows, int *n)
{
	int64		model_id = pol->model_id;
	TimestampTz infinity;

	TIMESTAMP_NOEND(infinity);
	while (lock_wait_mark() != *mark)
	{
		*mark = lock_wait_mark();
		if (QuotaConfigUnchanged(*stamp))
			continue;
		*stamp = QuotaConfigStamp();
		if (req->key_authenticated)
			QuotaKeyRecheck(req->tenant_id, req->key_id);
		QuotaPolicyEvaluateFresh(req->tenant_id, req->model, req->role, pol);
		if (!pol->tenant_found || !pol->tenant_active || !pol->allowed)
			return false;
		/* the counters locked are the model's that was resolved first */
		pol->model_id = model_id;
		if (rows)
			*n = lock_counters(req->tenant_id, model_id, req->user_id, req->key_id,
							   infinity, pol->has_slots, true, rows);
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
		n = lock_counters(req->tenant_id, pol.model_id, req->user_id, req->key_id,
						  infinity, pol.has_slots, false, rows);
		if (!recheck_after_wait(req, &wait_mark, &config_stamp, &pol, rows, &n))
		{
			d->allowed = false;
			d->denied_by = pol.tenant_active ? denied_policy : denied_tenant;
			goto done;
		}
		at = charge_instant(rows, n);
		clock = at;
		charge_cost(req, &pol, at, rows, n, &extra, d);
		/* escrow quotas come after the single-row ones, in quota_id order */
		for (i = 0; i < n; i++)
		{
			QuotaRow   *r = &rows[i];

			if (r->slots == 1)
				continue;
			QuotaPeriodBounds(r->period, tz, at, &r->start, &r->end);
			acquire_slots(req->tenant_id, r,
						  r->metric_cost ? extra.cost_micro : r->metric_calls ? 1 : req->units,
						  escrow_denied);
			escrow_denied |= r->multi_deny;
		}
		/* taking every slot of an escrow quota may have waited too */
		if (!recheck_after_wait(req, &wait_mark, &config_stamp, &pol, NULL, NULL))
		{
			release_slots(req->tenant_id, rows, n);
			d->allowed = false;
			d->denied_by = pol.tenant_active ? denied_policy : denied_tenant;
			goto done;
		}
		if (decide_quotas(rows, n, tz, at, clock, 1,
						  req->units, extra.cost_micro, d, &overage))
		{
			/* events first: escrow slots record theirs in the row written below */
			for (i = 0; i < n; i++)
				emit_events(req->tenant_id, &rows[i]);
			if (req->reserve)
				reservation_id = next_reservation_id();
			d->usage_id = write_usage(req->tenant_id, 0, at,
									  req->reserve ? "reserve" : "consume",
									  pol.model_id, req->user_id, req->key_id, 1,
									  req->units, overage, 0, reservation_id,
									  req->idem_key, rows, n, &extra);
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

	n = lock_counters(tenant_id, model_id, user_id, key_id, occurred_at, true, true, rows);
	*nrows = n;
	for (i = 0; i < n; i++)
	{
		QuotaRow   *r = &rows[i];
		int64		delta = r->metric_cost ? cost : r->metric_calls ? calls : units;
		bool		fits = true;

		QuotaPeriodBounds(r->period, tz, occurred_at, &r->start, &r->end);
		if (r->slots > 1)
		{
			/* escrow: all slots, in slot order, unless it moved on */
			bool		moved_on = false;

			r->touched = false;
			if (delta == 0)
				continue;
			lock_all_slots(tenant_id, r, &moved_on);
			if (moved_on)
				continue;
			fits = lay_out_slots(r, 0, delta, check && r->on_exceed == 'b');
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
			d->quota_id = r->quota_id;
			strlcpy(d->period, r->label, sizeof(d->period));
			if (r->metric_cost)
			{
				d->has_remaining_cost = true;
				d->remaining_cost_micro = Max(r->max_units - r->used, 0);
				strlcpy(d->currency, r->currency, sizeof(d->currency));
			}
			else
			{
				d->has_limit = true;
				d->limit = r->max_units;
				d->remaining = Max(r->max_units - r->used, 0);
			}
			if (r->period != QUOTA_PERIOD_LIFETIME)
			{
				d->has_resets = d->has_retry = true;
				d->resets_at = r->end;
				d->retry_after = seconds_until(r->end, clock);
			}
			return false;
		}
	}
	return true;
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

		if (!r->touched || r->on_exceed != 'o' || r->metric_cost)
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
	int64		closing_usage_id;
	int64		unbilled;
	int64		price_id;		/* 0: unpriced */
	int64		cost_micro;		/* of the estimate */
	UsageTokens tokens;			/* estimated */
} Reservation;

/* lock and load a reservation (inside SPI); false when not found */
static bool
reservation_lock(int64 tenant_id, int64 reservation_id, Reservation *res)
{
	/*
	 * pg_catalog.max: this runs as the extension owner but is planned under
	 * the caller's search_path, so an unqualified max() let a hostile
	 * max(bigint) run as the owner (test/sql/search_path_all.sql).
	 */
	static QuotaPlan plan = {
		"SELECT r.usage_id, r.occurred_at, r.model_id, r.user_id, r.key_id, r.estimate, "
		"       r.actual, r.status, "
		"       (SELECT pg_catalog.max(u.usage_id) FROM quota_ext.usage u "
		"         WHERE u.tenant_id OPERATOR(pg_catalog.=) r.tenant_id "
		"           AND u.reservation_id OPERATOR(pg_catalog.=) r.reservation_id "
		"           AND u.kind OPERATOR(pg_catalog.<>) 'reserve'), "
		"       r.price_id, r.cost, r.input_tokens, r.output_tokens, r.unbilled "
		"FROM quota_ext.reservations r "
		"WHERE r.tenant_id OPERATOR(pg_catalog.=) $1 "
		"  AND r.reservation_id OPERATOR(pg_catalog.=) $2 "
		"FOR NO KEY UPDATE",
		2, {INT8OID, INT8OID}
	};
	Datum		values[2];
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	Datum		v;

	values[0] = Int64GetDatum(tenant_id);
	values[1] = Int64GetDatum(reservation_id);
	QuotaSpiExec(&plan, values, NULL, false, 1);
	if (SPI_processed != 1)
		return false;
	tup = SPI_tuptable->vals[0];
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
	res->closing_usage_id = isnull ? 0 : DatumGetInt64(v);
	v = SPI_getbinval(tup, desc, 10, &isnull);
	res->price_id = isnull ? 0 : DatumGetInt64(v);
	res->cost_micro = QuotaNumericToMicro(SPI_getbinval(tup, desc, 11, &isnull));
	memset(&res->tokens, 0, sizeof(res->tokens));
	v = SPI_getbinval(tup, desc, 12, &isnull);
	res->tokens.has_input = !isnull;
	res->tokens.input = isnull ? 0 : DatumGetInt64(v);
	v = SPI_getbinval(tup, desc, 13, &isnull);
	res->tokens.has_output = !isnull;
	res->tokens.output = isnull ? 0 : DatumGetInt64(v);
	res->unbilled = DatumGetInt64(SPI_getbinval(tup, desc, 14, &isnull));
	return true;
}

static void
reservation_close(int64 tenant_id, int64 reservation_id, const char *status,
				  bool has_actual, int64 actual, int64 unbilled)
{
	static QuotaPlan plan = {
		"UPDATE quota_ext.reservations SET status = $3, actual = $4, unbilled = $5, "
		"       closed_at = pg_catalog.now() "
		"WHERE tenant_id OPERATOR(pg_catalog.=) $1 "
		"  AND reservation_id OPERATOR(pg_catalog.=) $2",
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

	memset(&ignored, 0, sizeof(ignored));
	memset(&extra, 0, sizeof(extra));
	extra.price_id = res->price_id;
	extra.cost_micro = -res->cost_micro;
	extra.tokens = res->tokens;
	extra.tokens.input = -extra.tokens.input;
	extra.tokens.output = -extra.tokens.output;
	adjust_counters(tenant_id, res->occurred_at, res->model_id, res->user_id, res->key_id,
					-1, -res->estimate, -res->cost_micro, false, rows, &n, &ignored);
	usage_id = write_usage(tenant_id, 0, res->occurred_at, "release", res->model_id,
						   res->user_id, res->key_id, -1, -res->estimate,
						   overage_change(rows, n), res->usage_id,
						   reservation_id, NULL, rows, n, &extra);
	reservation_close(tenant_id, reservation_id, status, false, 0, 0);
	return usage_id;
}

/* ----------------------------------------------------------------------
 * result and SQL-callable functions
 * ---------------------------------------------------------------------- */

static Datum
decision_datum(FunctionCallInfo fcinfo, const Decision *d)
{
	TupleDesc	tupdesc;
	Datum		values[14];
	bool		nulls[14];

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	memset(nulls, 0, sizeof(nulls));
	values[0] = BoolGetDatum(d->allowed);
	if (d->denied_by)
		values[1] = CStringGetTextDatum(d->denied_by);
	else
		nulls[1] = true;
	values[2] = Int64GetDatum(d->quota_id);
	nulls[2] = d->quota_id == 0;
	if (d->period[0])
		values[3] = CStringGetTextDatum(d->period);
	else
		nulls[3] = true;
	values[4] = Int64GetDatum(d->limit);
	values[5] = Int64GetDatum(d->remaining);
	nulls[4] = nulls[5] = !d->has_limit;
	values[6] = TimestampTzGetDatum(d->resets_at);
	nulls[6] = !d->has_resets;
	values[7] = Int64GetDatum(d->retry_after);
	nulls[7] = !d->has_retry;
	values[8] = Int64GetDatum(d->usage_id);
	nulls[8] = d->usage_id == 0;
	values[9] = Int64GetDatum(d->reservation_id);
	nulls[9] = d->reservation_id == 0;
	values[10] = BoolGetDatum(d->replayed);
	values[11] = QuotaMicroToNumeric(d->cost_micro);
	nulls[11] = !d->has_cost;
	values[12] = QuotaMicroToNumeric(d->remaining_cost_micro);
	nulls[12] = !d->has_remaining_cost;
	if (d->currency[0])
		values[13] = CStringGetTextDatum(d->currency);
	else
		nulls[13] = true;
	return HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls));
}

/*
 * request_identity
 *		User, key and role of a request (QuotaIdentityResolve): arguments
 *		user_arg, user_arg+1 (key) and user_arg+2 (role).
 */
static void
request_identity(FunctionCallInfo fcinfo, int user_arg, ConsumeRequest *req)
{
	QuotaIdentity id;

	QuotaIdentityResolve(fcinfo, req->tenant_id, user_arg, user_arg + 1,
						 user_arg + 2, &id);
	req->user_id = id.user_id;
	req->key_id = id.key_id;
	req->role = id.role;
}

/* arguments (tenant_id, model, units, idempotency_key, user_id, key_id, role) */
static void
consume_args(FunctionCallInfo fcinfo, ConsumeRequest *req)
{

	memset(req, 0, sizeof(*req));
	QuotaArgNotNull(fcinfo, 0, "tenant_id");
	QuotaArgNotNull(fcinfo, 1, "model");
	QuotaArgNotNull(fcinfo, 2, "units");
	req->tenant_id = PG_GETARG_INT64(0);
	req->model = text_to_cstring(PG_GETARG_TEXT_PP(1));
	req->units = PG_GETARG_INT64(2);
	check_positive(req->units, "units");
	check_bounded(req->units, "units");
	req->idem_key = check_idem_key(fcinfo, 3);
	QuotaCheckTenantAccess(req->tenant_id);
	request_identity(fcinfo, 4, req);
	check_metering_args(fcinfo, 7, &req->tokens, &req->metadata);
}

/*
 * quota_ext.quota_consume(tenant_id bigint, model text, units bigint DEFAULT 1,
 *		idempotency_key text DEFAULT NULL, user_id bigint DEFAULT NULL,
 *		key_id bigint DEFAULT NULL, role text DEFAULT NULL)
 *		RETURNS quota_ext.decision
 */
Datum
quota_consume(PG_FUNCTION_ARGS)
{
	ConsumeRequest req;
	Decision	d;

	check_writable("quota_consume()");
	consume_args(fcinfo, &req);
	QuotaConsume(&req, &d);
	PG_RETURN_DATUM(decision_datum(fcinfo, &d));
}

/*
 * raise_denial
 *		The raising variant's errors.
 */
static void
raise_denial(const ConsumeRequest *req, const Decision *d)
{
	if (d->denied_by == denied_tenant)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("tenant %lld is not active", (long long) req->tenant_id)));
	if (d->denied_by == denied_policy)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("model \"%s\" is not allowed for tenant %lld",
						QuotaQuoteInput(req->model), (long long) req->tenant_id),
				 errhint("Allow it with quota_ext.policy_set().")));
	if (d->denied_by == denied_rate)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("rate limit exceeded for tenant %lld", (long long) req->tenant_id),
				 errdetail("Limit %lld; retry after %lld seconds.",
						   (long long) d->limit, (long long) d->retry_after)));
	if (!d->has_limit && d->has_remaining_cost)
	{
		char	   *cost = d->has_cost ?
			numeric_normalize(DatumGetNumeric(QuotaMicroToNumeric(d->cost_micro))) : "0";
		char	   *left = numeric_normalize(DatumGetNumeric(QuotaMicroToNumeric(d->remaining_cost_micro)));

		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("%s cost quota exceeded for tenant %lld", d->period,
						(long long) req->tenant_id),
				 d->has_resets ?
				 errdetail("Quota %lld: the call costs %s %s; %s %s remain until %s.",
						   (long long) d->quota_id, cost, d->currency, left, d->currency,
						   timestamptz_to_str(d->resets_at)) :
				 errdetail("Quota %lld: the call costs %s %s; %s %s remain.",
						   (long long) d->quota_id, cost, d->currency, left, d->currency),
				 errhint("Wait for the period to reset, or raise the budget with quota_ext.quota_set().")));
	}
	ereport(ERROR,
			(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
			 errmsg("%s quota exceeded for tenant %lld", d->period, (long long) req->tenant_id),
			 d->has_resets ?
			 errdetail("Quota %lld: requested %lld units; %lld of %lld remain until %s.",
					   (long long) d->quota_id, (long long) req->units,
					   (long long) d->remaining, (long long) d->limit,
					   timestamptz_to_str(d->resets_at)) :
			 errdetail("Quota %lld: requested %lld units; %lld of %lld remain.",
					   (long long) d->quota_id, (long long) req->units,
					   (long long) d->remaining, (long long) d->limit),
			 errhint("Wait for the period to reset, or raise the limit with quota_ext.quota_set().")));
}

/*
 * quota_ext.quota_consume_or_raise(...) RETURNS quota_ext.decision
 *		As quota_consume, but a denial is an error: 53400 for quotas and
 *		rate limits, 42501 for policy and inactive tenants.
 */
Datum
quota_consume_or_raise(PG_FUNCTION_ARGS)
{
	ConsumeRequest req;
	Decision	d;

	check_writable("quota_consume_or_raise()");
	consume_args(fcinfo, &req);
	QuotaConsume(&req, &d);
	if (!d.allowed)
		raise_denial(&req, &d);
	PG_RETURN_DATUM(decision_datum(fcinfo, &d));
}

/*
 * quota_ext.invoke(api_key text, model text, units bigint DEFAULT 1,
 *		idempotency_key text DEFAULT NULL) RETURNS quota_ext.decision
 *
 * authenticate() then quota_consume() for the key's tenant, user and key,
 * with the key's user's role.
 */
Datum
invoke(PG_FUNCTION_ARGS)
{
	ConsumeRequest req;
	Decision	d;
	const QuotaContext *ctx;

	QuotaKeyArgBegin();
	check_writable("invoke()");
	QuotaArgNotNull(fcinfo, 0, "api_key");
	QuotaArgNotNull(fcinfo, 1, "model");
	QuotaArgNotNull(fcinfo, 2, "units");
	memset(&req, 0, sizeof(req));
	req.model = text_to_cstring(PG_GETARG_TEXT_PP(1));
	req.units = PG_GETARG_INT64(2);
	check_positive(req.units, "units");
	check_bounded(req.units, "units");
	req.idem_key = check_idem_key(fcinfo, 3);
	check_metering_args(fcinfo, 4, &req.tokens, &req.metadata);

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
	PG_RETURN_DATUM(decision_datum(fcinfo, &d));
}

/*
 * quota_ext.quota_reserve(tenant_id bigint, model text, estimate bigint,
 *		ttl interval DEFAULT '15 minutes', idempotency_key text DEFAULT NULL,
 *		user_id bigint DEFAULT NULL, key_id bigint DEFAULT NULL,
 *		role text DEFAULT NULL) RETURNS quota_ext.decision
 */
Datum
quota_reserve(PG_FUNCTION_ARGS)
{
	ConsumeRequest req;
	Decision	d;
	Interval   *ttl;

	check_writable("quota_reserve()");
	memset(&req, 0, sizeof(req));
	QuotaArgNotNull(fcinfo, 0, "tenant_id");
	QuotaArgNotNull(fcinfo, 1, "model");
	QuotaArgNotNull(fcinfo, 2, "estimate");
	QuotaArgNotNull(fcinfo, 3, "ttl");
	req.tenant_id = PG_GETARG_INT64(0);
	req.model = text_to_cstring(PG_GETARG_TEXT_PP(1));
	req.units = PG_GETARG_INT64(2);
	check_positive(req.units, "estimate");
	check_bounded(req.units, "estimate");
	ttl = PG_GETARG_INTERVAL_P(3);
	req.ttl = check_ttl(ttl);
	req.reserve = true;
	req.idem_key = check_idem_key(fcinfo, 4);
	QuotaCheckTenantAccess(req.tenant_id);
	request_identity(fcinfo, 5, &req);
	check_metering_args(fcinfo, 8, &req.tokens, &req.metadata);
	QuotaConsume(&req, &d);
	PG_RETURN_DATUM(decision_datum(fcinfo, &d));
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
quota_settle(PG_FUNCTION_ARGS)
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
	if (strcmp(res.status, "settled") == 0 && res.has_actual && res.actual == actual)
	{
		/*
		 * The same answer as the first settle: not allowed when its excess
		 * could not be charged.  (It said allowed = true before; found by
		 * test/sql/consume.sql.)
		 */
		d.allowed = (res.unbilled == 0);
		d.denied_by = d.allowed ? NULL : denied_quota;
		d.replayed = true;
		d.usage_id = res.closing_usage_id ? res.closing_usage_id : res.usage_id;
		QuotaSpiEnd(&spi);
		PG_RETURN_DATUM(decision_datum(fcinfo, &d));
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
			int			i;

			for (i = 0; i < n; i++)
				if (rows[i].touched)
					emit_events(tenant_id, &rows[i]);
			d.usage_id = write_usage(tenant_id, 0, res.occurred_at, "settle", res.model_id,
									 res.user_id, res.key_id, 0, delta,
									 overage_change(rows, n), res.usage_id,
									 reservation_id, NULL, rows, n, &extra);
			d.cost_micro = actual_cost;
		}
		else
			unbilled = delta;
	}
	reservation_close(tenant_id, reservation_id, "settled", true, actual, unbilled);
	QuotaSpiEnd(&spi);
	PG_RETURN_DATUM(decision_datum(fcinfo, &d));
}

/*
 * quota_ext.quota_cancel(tenant_id bigint, reservation_id bigint)
 *		RETURNS quota_ext.decision
 *
 * Gives the whole estimate back.  Cancelling twice answers the same
 * (replayed); a settled or expired reservation cannot be cancelled.
 */
Datum
quota_cancel(PG_FUNCTION_ARGS)
{
	int64		tenant_id;
	int64		reservation_id;
	Reservation res;
	QuotaSpiState spi;
	Decision	d;

	check_writable("quota_cancel()");
	QuotaArgNotNull(fcinfo, 0, "tenant_id");
	QuotaArgNotNull(fcinfo, 1, "reservation_id");
	tenant_id = PG_GETARG_INT64(0);
	reservation_id = PG_GETARG_INT64(1);
	QuotaCheckTenantAccess(tenant_id);
	memset(&d, 0, sizeof(d));
	d.allowed = true;
	d.reservation_id = reservation_id;

	QuotaSpiBegin(&spi);
	if (!reservation_lock(tenant_id, reservation_id, &res))
		raise_unknown_reservation(reservation_id);
	if (strcmp(res.status, "cancelled") == 0)
	{
		d.replayed = true;
		d.usage_id = res.closing_usage_id;
	}
	else if (strcmp(res.status, "open") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("reservation %lld is %s", (long long) reservation_id, res.status)));
	else
		d.usage_id = release_reservation(tenant_id, reservation_id, &res, "cancelled");
	QuotaSpiEnd(&spi);
	PG_RETURN_DATUM(decision_datum(fcinfo, &d));
}

/*
 * quota_ext.quota_refund(tenant_id bigint, usage_id bigint)
 *		RETURNS quota_ext.decision
 *
 * Gives back a consumption (kind consume) once: a second refund of the same
 * row answers the first refund's usage row, replayed.
 */
Datum
quota_refund(PG_FUNCTION_ARGS)
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
	static QuotaPlan prior = {
		"SELECT refund_usage_id FROM quota_ext.refunds "
		"WHERE tenant_id OPERATOR(pg_catalog.=) $1 AND usage_id OPERATOR(pg_catalog.=) $2",
		2, {INT8OID, INT8OID}
	};
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

	check_writable("quota_refund()");
	QuotaArgNotNull(fcinfo, 0, "tenant_id");
	QuotaArgNotNull(fcinfo, 1, "usage_id");
	tenant_id = PG_GETARG_INT64(0);
	usage_id = PG_GETARG_INT64(1);
	QuotaCheckTenantAccess(tenant_id);
	memset(&d, 0, sizeof(d));
	d.allowed = true;

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
		QuotaSpiExec(&prior, values, NULL, false, 1);
		d.replayed = true;
		d.usage_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
												 SPI_tuptable->tupdesc, 1, &isnull));
		QuotaSpiEnd(&spi);
		PG_RETURN_DATUM(decision_datum(fcinfo, &d));
	}
	refund_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1,
											&isnull));
	adjust_counters(tenant_id, occurred_at, model_id, user_id, key_id, -1, -units,
					extra.cost_micro, false, rows, &n, &d);
	d.usage_id = write_usage(tenant_id, refund_id, occurred_at, "refund", model_id, user_id,
							 key_id, -1, -units, overage_change(rows, n), usage_id, 0, NULL,
							 rows, n, &extra);
	if (extra.price_id != 0)
	{
		d.has_cost = true;
		d.cost_micro = extra.cost_micro;
	}
	QuotaSpiEnd(&spi);
	PG_RETURN_DATUM(decision_datum(fcinfo, &d));
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
quota_expire_reservations(PG_FUNCTION_ARGS)
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
	static QuotaPlan lock_tenant = {
		/* the hot path's order: single-row quotas, then escrow slots */
		"SELECT 1 FROM quota_ext.quota_counters c "
		"JOIN quota_ext.quotas q ON q.tenant_id OPERATOR(pg_catalog.=) c.tenant_id "
		"                       AND q.quota_id OPERATOR(pg_catalog.=) c.quota_id "
		"WHERE c.tenant_id OPERATOR(pg_catalog.=) $1 "
		"ORDER BY q.slots OPERATOR(pg_catalog.>) 1, c.quota_id, c.slot "
		"FOR NO KEY UPDATE OF c",
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
			QuotaSpiExec(&lock_tenant, values, NULL, false, 0);
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
