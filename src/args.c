/*-------------------------------------------------------------------------
 *
 * args.c
 *		Argument checks: QuotaArgNotNull and QuotaQuoteInput for every
 *		module, and the checks of the request path's arguments (amounts,
 *		ttl, idempotency key, metering arguments).
 *
 * It calls no other file of the extension, so that any file may call it.
 * See consume_internal.h for how the request path is split.
 *
 *-------------------------------------------------------------------------
 */
#include "args.h"
#include "metering.h"
#include "consume_internal.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/async.h"
#include "common/int.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "storage/proc.h"
#include "utils/array.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/builtins.h"
#include "utils/numeric.h"
#include "utils/timeout.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(quota_ext_check_bounded);

/*
 * QuotaArgNotNull
 *		Raise 22004 when argument argno is NULL.  The functions are not
 *		STRICT: a NULL gets a clear error instead of a silent NULL result.
 */
void
QuotaArgNotNull(FunctionCallInfo fcinfo, int argno, const char *name)
{
	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("argument \"%s\" must not be null", name)));
}

/*
 * QuotaQuoteInput
 *		A caller's text as an error message may quote it: at most
 *		QUOTA_QUOTE_MAX_CHARS characters, cut on a character boundary and
 *		marked with "..." when cut.  An error must not echo a megabyte of
 *		input into the log and back to the client (issue 12, finding 13);
 *		quota_ext._quote_input() is the same rule for PL/pgSQL.
 */
const char *
QuotaQuoteInput(const char *s)
{
	int			len;
	int			cut;

	if (s == NULL)
		return "";
	len = strlen(s);
	if (len <= QUOTA_QUOTE_MAX_CHARS)
		return s;
	/* the byte length of the first QUOTA_QUOTE_MAX_CHARS characters */
	cut = pg_mbcharcliplen(s, len, QUOTA_QUOTE_MAX_CHARS);
	if (cut >= len)
		return s;
	return psprintf("%.*s...", cut, s);
}

/* ----------------------------------------------------------------------
 * argument checks
 * ---------------------------------------------------------------------- */

void
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
 *		Units, tokens, a meter's amount, a gauge's delta: at most
 *		QUOTA_MAX_UNITS per call either way (quota_ext.h).  Sums over the
 *		ledger are numeric, but one call's numbers must stay far from the
 *		int64 range of a counter and of the ledger's columns.  (The C
 *		callers have refused negative numbers already; a gauge's delta may
 *		be negative.)
 */
void
check_bounded(int64 v, const char *name)
{
	if (v > QUOTA_MAX_UNITS || v < -QUOTA_MAX_UNITS)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("%s must be at most %lld", name, (long long) QUOTA_MAX_UNITS),
				 errdetail("Got %lld.", (long long) v)));
}

/*
 * quota_ext._check_bounded(v bigint, what text) RETURNS void
 *		check_bounded for the PL/pgSQL callers (meter_consume, gauge_adjust),
 *		so that the bound and its error are written once.  NULL passes.
 */
Datum
quota_ext_check_bounded(PG_FUNCTION_ARGS)
{
	QuotaArgNotNull(fcinfo, 1, "what");
	if (!PG_ARGISNULL(0))
		check_bounded(PG_GETARG_INT64(0), text_to_cstring(PG_GETARG_TEXT_PP(1)));
	PG_RETURN_VOID();
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

Interval *
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
void
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
void
check_writable(const char *fn)
{
	PreventCommandIfReadOnly(fn);
}

const char *
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
void
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

void
raise_unknown_model(const char *model)
{
	ereport(ERROR,
			(errcode(ERRCODE_UNDEFINED_OBJECT),
			 errmsg("model \"%s\" does not exist", QuotaQuoteInput(model))));
}

/*
 * QuotaResultRow
 *		The composite a SQL function returns, from its values and nulls, in
 *		the row type the function is declared with.
 */
Datum
QuotaResultRow(FunctionCallInfo fcinfo, Datum *values, bool *nulls)
{
	TupleDesc	tupdesc;

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	return HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls));
}
