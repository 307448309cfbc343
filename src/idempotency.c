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
 * idem_static
 *		The static string of a stored column (Decision points at static
 *		strings): NULL for NULL, else the one of known (NULL-terminated)
 *		that equals s, else the last of known.
 */
static const char *
idem_static(const char *s, const char *const *known)
{
	int			i;

	if (s == NULL)
		return NULL;
	for (i = 0; known[i + 1] != NULL; i++)
		if (strcmp(s, known[i]) == 0)
			break;
	return known[i];
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
		"       cost, remaining_cost, currency, denied_metric, overage "
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
	const char *const denied[] = {denied_tenant, denied_policy, denied_rate, denied_throttle,
	denied_quota, NULL};
	const char *const metrics[] = {metric_calls, metric_units, metric_cost, NULL};
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
	d->denied_by = idem_static(SPI_getvalue(tup, desc, 5), denied);
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
	d->denied_metric = idem_static(SPI_getvalue(tup, desc, 17), metrics);
	d->overage = idem_column(tup, desc, 18, false, &d->has_overage);
	return false;
}

void
idem_store(const ConsumeRequest *req, const Decision *d)
{
	static QuotaPlan plan = {
		"UPDATE quota_ext.idempotency_keys SET allowed = $3, denied_by = $4, quota_id = $5, "
		"       period = $6, \"limit\" = $7, remaining = $8, resets_at = $9, "
		"       retry_after = $10, usage_id = $11, reservation_id = $12, "
		"       cost = $13, remaining_cost = $14, currency = $15, denied_metric = $16, "
		"       overage = $17 "
		"WHERE tenant_id OPERATOR(pg_catalog.=) $1 "
		"  AND idempotency_key OPERATOR(pg_catalog.=) $2",
		17, {INT8OID, TEXTOID, BOOLOID, TEXTOID, INT8OID, TEXTOID, INT8OID, INT8OID,
		TIMESTAMPTZOID, INT8OID, INT8OID, INT8OID, NUMERICOID, NUMERICOID, TEXTOID, TEXTOID,
		INT8OID}
	};
	Datum		values[17];
	char		nulls[17];
	Datum		dv[DECISION_NATTS];
	bool		dn[DECISION_NATTS];
	int			i;
	int			j = 2;

	values[0] = Int64GetDatum(req->tenant_id);
	values[1] = CStringGetTextDatum(req->idem_key);
	nulls[0] = nulls[1] = ' ';
	/* the decision's columns up to denied_metric, but replayed ($3 to $16) */
	decision_values(d, dv, dn);
	for (i = 0; i <= 14; i++)
	{
		if (i == 10)
			continue;
		values[j] = dv[i];
		nulls[j++] = dn[i] ? 'n' : ' ';
	}
	values[16] = dv[18];
	nulls[16] = dn[18] ? 'n' : ' ';
	QuotaSpiExec(&plan, values, nulls, false, 0);
}
