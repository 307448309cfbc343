/*-------------------------------------------------------------------------
 *
 * idempotency.c
 *		Idempotency keys: one decision per (tenant, key).
 *
 * See consume_internal.h for how the request path is split.
 *
 *-------------------------------------------------------------------------
 */
#include "spi.h"
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
#include "miscadmin.h"
#include "storage/proc.h"
#include "utils/array.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/builtins.h"
#include "utils/numeric.h"
#include "utils/timeout.h"
#include "utils/timestamp.h"

/* ----------------------------------------------------------------------
 * idempotency
 * ---------------------------------------------------------------------- */

/*
 * idem_column
 *		Column col of a stored decision: a bigint or timestamptz, or with
 *		money a numeric amount in micro-units; 0 when NULL (*has, when given,
 *		says whether it was not).
 */
static int64
idem_column(HeapTuple tup, TupleDesc desc, int col, bool money, bool *has)
{
	bool		isnull;
	Datum		v = SPI_getbinval(tup, desc, col, &isnull);

	if (has != NULL)
		*has = !isnull;
	if (isnull)
		return 0;
	return money ? QuotaNumericToMicro(v) : DatumGetInt64(v);
}

/*
 * idem_claim
 *		Claim (tenant, key) for this request.  Returns true when claimed;
 *		false when the key was used before, with *d set to the stored
 *		decision.  The same key with other parameters raises 22023.
 */
bool
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
		"       cost, remaining_cost, currency, denied_metric "
		"FROM quota_ext.idempotency_keys "
		"WHERE tenant_id OPERATOR(pg_catalog.=) $1 "
		"  AND idempotency_key OPERATOR(pg_catalog.=) $2",
		2, {INT8OID, TEXTOID}
	};
	Datum		values[5];
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
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
	d->quota_id = idem_column(tup, desc, 6, false, NULL);
	s = SPI_getvalue(tup, desc, 7);
	if (s)
		strlcpy(d->period, s, sizeof(d->period));
	d->limit = idem_column(tup, desc, 8, false, &d->has_limit);
	d->remaining = idem_column(tup, desc, 9, false, NULL);
	d->resets_at = idem_column(tup, desc, 10, false, &d->has_resets);
	d->retry_after = idem_column(tup, desc, 11, false, &d->has_retry);
	d->usage_id = idem_column(tup, desc, 12, false, NULL);
	d->reservation_id = idem_column(tup, desc, 13, false, NULL);
	d->cost_micro = idem_column(tup, desc, 14, true, &d->has_cost);
	d->remaining_cost_micro = idem_column(tup, desc, 15, true, &d->has_remaining_cost);
	s = SPI_getvalue(tup, desc, 16);
	if (s)
		strlcpy(d->currency, s, sizeof(d->currency));
	s = SPI_getvalue(tup, desc, 17);
	if (s == NULL)
		d->denied_metric = NULL;
	else if (strcmp(s, metric_calls) == 0)
		d->denied_metric = metric_calls;
	else if (strcmp(s, metric_units) == 0)
		d->denied_metric = metric_units;
	else
		d->denied_metric = metric_cost;
	return false;
}

void
idem_store(const ConsumeRequest *req, const Decision *d)
{
	static QuotaPlan plan = {
		"UPDATE quota_ext.idempotency_keys SET allowed = $3, denied_by = $4, quota_id = $5, "
		"       period = $6, \"limit\" = $7, remaining = $8, resets_at = $9, "
		"       retry_after = $10, usage_id = $11, reservation_id = $12, "
		"       cost = $13, remaining_cost = $14, currency = $15, denied_metric = $16 "
		"WHERE tenant_id OPERATOR(pg_catalog.=) $1 "
		"  AND idempotency_key OPERATOR(pg_catalog.=) $2",
		16, {INT8OID, TEXTOID, BOOLOID, TEXTOID, INT8OID, TEXTOID, INT8OID, INT8OID,
		TIMESTAMPTZOID, INT8OID, INT8OID, INT8OID, NUMERICOID, NUMERICOID, TEXTOID, TEXTOID}
	};
	Datum		values[16];
	char		nulls[16];

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
	if (d->denied_metric)
		values[15] = CStringGetTextDatum(d->denied_metric);
	else
		nulls[15] = 'n';
	QuotaSpiExec(&plan, values, nulls, false, 0);
}
