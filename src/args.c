/*-------------------------------------------------------------------------
 *
 * args.c
 *		Arguments and results of the request path's SQL functions: checks,
 *		the shared argument parser, the decision composite, the denial
 *		errors; and QuotaArgNotNull/QuotaQuoteInput for every module.
 *
 * See consume_internal.h for how the request path is split.
 *
 *-------------------------------------------------------------------------
 */
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

const char *const denied_tenant = "tenant";
const char *const denied_policy = "policy";
const char *const denied_rate = "rate_limit";
const char *const denied_quota = "quota";

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
 *		Units, tokens: at most QUOTA_MAX_UNITS per call (quota_ext.h).  Sums
 *		over the ledger are numeric, but one call's numbers must stay far
 *		from the int64 range of a counter and of the ledger's columns.
 */
void
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

/* ----------------------------------------------------------------------
 * result and SQL-callable functions
 * ---------------------------------------------------------------------- */

Datum
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

/*
 * charge_args
 *		The arguments of a charging function, one parser for all three:
 *
 *		quota_consume[_or_raise](tenant_id, model, units, idempotency_key,
 *			user_id, key_id, role, input_tokens, output_tokens, metadata)
 *		quota_reserve(tenant_id, model, estimate, ttl, idempotency_key,
 *			user_id, key_id, role, input_tokens, output_tokens, metadata)
 *		invoke(api_key, model, units, idempotency_key,
 *			input_tokens, output_tokens, metadata)
 *
 *		names[] are the first nnames arguments, which must not be NULL
 *		(names[2] also names the amount in errors); nnames 4 is a
 *		reservation (argument 3 its ttl).  by_tenant: argument 0 is the
 *		tenant, whose access is checked before the identity arguments that
 *		follow the key; otherwise (invoke) the metering arguments follow
 *		the key directly and the caller authenticates afterwards.
 */
void
charge_args(FunctionCallInfo fcinfo, ConsumeRequest *req, const char *const *names,
			int nnames, bool by_tenant)
{
	int			argno;

	memset(req, 0, sizeof(*req));
	for (argno = 0; argno < nnames; argno++)
		QuotaArgNotNull(fcinfo, argno, names[argno]);
	if (by_tenant)
		req->tenant_id = PG_GETARG_INT64(0);
	req->model = text_to_cstring(PG_GETARG_TEXT_PP(1));
	req->units = PG_GETARG_INT64(2);
	check_positive(req->units, names[2]);
	check_bounded(req->units, names[2]);
	argno = 3;
	if (nnames == 4)
	{
		req->ttl = check_ttl(PG_GETARG_INTERVAL_P(3));
		req->reserve = true;
		argno = 4;
	}
	req->idem_key = check_idem_key(fcinfo, argno++);
	if (by_tenant)
	{
		QuotaCheckTenantAccess(req->tenant_id);
		request_identity(fcinfo, argno, req);
		argno += 3;
	}
	check_metering_args(fcinfo, argno, &req->tokens, &req->metadata);
}

/*
 * raise_denial
 *		The raising variant's errors.
 */
void
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
