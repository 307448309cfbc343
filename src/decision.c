/*-------------------------------------------------------------------------
 *
 * decision.c
 *		The charging functions' arguments and answer: the one argument
 *		parser of quota_consume, quota_consume_or_raise, invoke and
 *		quota_reserve (charge_args), the decision composite
 *		(decision_datum) and the denial errors of the raising variant.
 *
 * See consume_internal.h for how the request path is split.
 *
 *-------------------------------------------------------------------------
 */
#include "context.h"
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

const char *const denied_tenant = "tenant";
const char *const denied_policy = "policy";
const char *const denied_rate = "rate_limit";
const char *const denied_quota = "quota";
const char *const denied_throttle = "throttle";
const char *const metric_calls = "calls";
const char *const metric_units = "units";
const char *const metric_cost = "cost";

/* the metric of a quota row, as Decision.denied_metric */
const char *
quota_row_metric(const QuotaRow *r)
{
	return r->metric_cost ? metric_cost : r->metric_calls ? metric_calls : metric_units;
}

/* ----------------------------------------------------------------------
 * result and SQL-callable functions
 * ---------------------------------------------------------------------- */

/* column i: the text s, NULL when s is NULL or empty */
static void
put_text(Datum *values, bool *nulls, int i, const char *s)
{
	nulls[i] = s == NULL || s[0] == '\0';
	if (!nulls[i])
		values[i] = CStringGetTextDatum(s);
}

/* column i: the value v, NULL unless present */
static void
put_value(Datum *values, bool *nulls, int i, Datum v, bool present)
{
	values[i] = v;
	nulls[i] = !present;
}

/* column i: an id, NULL when 0 (none) */
static void
put_id(Datum *values, bool *nulls, int i, int64 id)
{
	put_value(values, nulls, i, Int64GetDatum(id), id != 0);
}

/*
 * decision_values
 *		The DECISION_NATTS columns of a decision (quota_ext.decision), with
 *		their NULLs; idem_store stores most of them.
 */
void
decision_values(const Decision *d, Datum *values, bool *nulls)
{
	memset(nulls, 0, sizeof(bool) * DECISION_NATTS);
	values[0] = BoolGetDatum(d->allowed);
	put_text(values, nulls, 1, d->denied_by);
	put_id(values, nulls, 2, d->quota_id);
	put_text(values, nulls, 3, d->period);
	put_value(values, nulls, 4, Int64GetDatum(d->limit), d->has_limit);
	put_value(values, nulls, 5, Int64GetDatum(d->remaining), d->has_limit);
	put_value(values, nulls, 6, TimestampTzGetDatum(d->resets_at), d->has_resets);
	put_value(values, nulls, 7, Int64GetDatum(d->retry_after), d->has_retry);
	put_id(values, nulls, 8, d->usage_id);
	put_id(values, nulls, 9, d->reservation_id);
	values[10] = BoolGetDatum(d->replayed);
	put_value(values, nulls, 11, QuotaMicroToNumeric(d->cost_micro), d->has_cost);
	put_value(values, nulls, 12, QuotaMicroToNumeric(d->remaining_cost_micro),
			  d->has_remaining_cost);
	put_text(values, nulls, 13, d->currency);
	/* issue 17: which metric denied, and whose call it was */
	put_text(values, nulls, 14, d->denied_metric);
	put_id(values, nulls, 15, d->tenant_id);
	put_id(values, nulls, 16, d->user_id);
	put_id(values, nulls, 17, d->key_id);
	/* units past non-blocking limits (overage, throttle): NULL when denied */
	put_value(values, nulls, 18, Int64GetDatum(d->overage), d->has_overage);
}

Datum
decision_datum(FunctionCallInfo fcinfo, const Decision *d)
{
	TupleDesc	tupdesc;
	Datum		values[DECISION_NATTS];
	bool		nulls[DECISION_NATTS];

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	decision_values(d, values, nulls);
	return HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls));
}

/*
 * request_decision_datum
 *		The decision of a charging call, with the call's tenant, user and
 *		key (invoke: the key's), so the application needs no second round
 *		trip to current_context().
 */
Datum
request_decision_datum(FunctionCallInfo fcinfo, const ConsumeRequest *req, Decision *d)
{
	d->tenant_id = req->tenant_id;
	d->user_id = req->user_id;
	d->key_id = req->key_id;
	return decision_datum(fcinfo, d);
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
	if (d->denied_by == denied_throttle)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("%s quota of tenant %lld is past its limit and throttled", d->period,
						(long long) req->tenant_id),
				 d->has_retry ?
				 errdetail("Quota %lld: %lld of %lld used; past the limit calls pass at the throttle rate; retry after %lld seconds.",
						   (long long) d->quota_id, (long long) (d->limit - d->remaining),
						   (long long) d->limit, (long long) d->retry_after) :
				 errdetail("Quota %lld: %lld of %lld used; past the limit calls pass at the throttle rate.",
						   (long long) d->quota_id, (long long) (d->limit - d->remaining),
						   (long long) d->limit),
				 errhint("Slow down, wait for the period to reset, or raise the limit or the throttle with quota_ext.quota_set().")));
	if (d->denied_metric == metric_cost || (!d->has_limit && d->has_remaining_cost))
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
