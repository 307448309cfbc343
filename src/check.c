/*-------------------------------------------------------------------------
 *
 * check.c
 *		quota_check: what quota_consume would answer, charging nothing and
 *		locking nothing; and read_counters, the unlocked read of the
 *		counters it (and a settle that changes nothing) describes.
 *
 * quota_check runs quota_consume's decision on what the tables say now,
 * without a row lock: the quota rows and counters are read by a plain
 * SELECT (an escrow quota's slots summed), the rate limits are evaluated
 * without charging a bucket (QuotaRateLimitPeek), and nothing is written —
 * no usage row, no counter, no event, no idempotency key, no statistics.
 * Its answer is a forecast: a consume that runs after it may see other
 * calls' charges, so only the consume's decision admits a call.
 *
 * See consume_internal.h for how the request path is split.
 *
 *-------------------------------------------------------------------------
 */
#include "quota_ext.h"
#include "spi.h"
#include "context.h"
#include "args.h"
#include "policy.h"
#include "ratelimit.h"
#include "consume_internal.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(quota_ext_quota_check);

/*
 * The quotas that apply to (tenant, model, user, key), in quota_id order,
 * with their counters as of the statement's snapshot and no lock: the
 * newest period any slot has reached and the sum of the slots in it (one
 * slot unless the quota is an escrow quota).  The columns are lock_plan's
 * (consume.c), for parse_quota_rows; the order is consume's (quota_id,
 * single-row and escrow quotas alike), so ties between denying quotas are
 * broken alike.
 */
static QuotaPlan read_plan = {
	"SELECT q.quota_id, q.period, q.period_label, "
	"       q.metric OPERATOR(pg_catalog.=) 'calls', q.max_units, q.soft_limit, "
	"       q.on_exceed, q.thresholds, s.start, s.used, "
	"       q.metric OPERATOR(pg_catalog.=) 'cost', q.currency, q.slots, false, "
	"       q.throttle_per_minute, q.throttle_burst "
	"FROM quota_ext.quotas q "
	"CROSS JOIN LATERAL (SELECT pg_catalog.max(c.period_start) AS start "
	"                      FROM quota_ext.quota_counters c "
	"                     WHERE c.tenant_id OPERATOR(pg_catalog.=) q.tenant_id "
	"                       AND c.quota_id OPERATOR(pg_catalog.=) q.quota_id) m "
	"CROSS JOIN LATERAL (SELECT COALESCE(m.start, '-infinity'::pg_catalog.timestamptz) AS start, "
	"                           COALESCE(pg_catalog.sum(c.used), 0)::pg_catalog.int8 AS used "
	"                      FROM quota_ext.quota_counters c "
	"                     WHERE c.tenant_id OPERATOR(pg_catalog.=) q.tenant_id "
	"                       AND c.quota_id OPERATOR(pg_catalog.=) q.quota_id "
	"                       AND c.period_start OPERATOR(pg_catalog.=) m.start) s "
	QUOTA_SCOPE_WHERE,
	5, {INT8OID, INT8OID, INT8OID, INT8OID, TIMESTAMPTZOID}
};

/*
 * read_counters
 *		The quotas that apply and their counters, unlocked (inside SPI).
 *		Every row comes back as a single-slot row (slots = 1) whose used is
 *		the quota's total, so decide_quotas judges escrow quotas as one
 *		counter.
 */
int
read_counters(int64 tenant_id, int64 model_id, int64 user_id, int64 key_id,
			  TimestampTz created_before, QuotaRow *rows)
{
	Datum		values[5];
	char		nulls[5] = {' ', ' ', ' ', ' ', ' '};
	int			n;
	int			i;

	bind_scope(values, nulls, tenant_id, model_id, user_id, key_id);
	values[4] = TimestampTzGetDatum(created_before);
	QuotaSpiExec(&read_plan, values, nulls, true, 0);
	n = parse_quota_rows(rows, 0);
	for (i = 0; i < n; i++)
		rows[i].slots = 1;
	return n;
}

/*
 * quota_ext.quota_check(tenant_id bigint, model text, units bigint DEFAULT 1,
 *		user_id bigint DEFAULT NULL, key_id bigint DEFAULT NULL,
 *		role text DEFAULT NULL, input_tokens bigint DEFAULT NULL,
 *		output_tokens bigint DEFAULT NULL) RETURNS quota_ext.decision
 *
 * The decision quota_consume would return now for the same arguments
 * (without usage_id: nothing is written).  The same argument checks and
 * errors as quota_consume; it also runs in a read-only transaction and on
 * a standby.
 */
Datum
quota_ext_quota_check(PG_FUNCTION_ARGS)
{
	ConsumeRequest req;
	QuotaIdentity id;
	QuotaSpiState spi;
	QuotaPolicyResult pol;
	QuotaRow	rows[QUOTA_MAX_QUOTAS];
	int			n;
	Decision	d;
	UsageExtra	extra;
	TimestampTz at;
	TimestampTz infinity;
	int64		overage;

	memset(&req, 0, sizeof(req));
	QuotaArgNotNull(fcinfo, 0, "tenant_id");
	QuotaArgNotNull(fcinfo, 1, "model");
	QuotaArgNotNull(fcinfo, 2, "units");
	req.tenant_id = PG_GETARG_INT64(0);
	req.model = text_to_cstring(PG_GETARG_TEXT_PP(1));
	req.units = PG_GETARG_INT64(2);
	check_positive(req.units, "units");
	check_bounded(req.units, "units");
	QuotaCheckTenantAccess(req.tenant_id);
	QuotaIdentityResolve(fcinfo, req.tenant_id, 3, 4, 5, &id);
	req.user_id = id.user_id;
	req.key_id = id.key_id;
	req.role = id.role;
	check_metering_args(fcinfo, 6, &req.tokens, NULL);

	memset(&d, 0, sizeof(d));
	memset(&extra, 0, sizeof(extra));
	QuotaSpiBegin(&spi);
	QuotaPolicyEvaluate(req.tenant_id, req.model, req.role, &pol);
	if (!pol.tenant_found)
		QuotaRaiseUnknownTenant(req.tenant_id);
	if (pol.model_id == 0)
		raise_unknown_model(req.model);
	if (!pol.tenant_active || !pol.allowed)
	{
		d.allowed = false;
		d.denied_by = pol.tenant_active ? denied_policy : denied_tenant;
	}
	else
	{
		QuotaRateDecision rd;

		if (!QuotaRateLimitPeek(req.tenant_id, pol.model_id, req.key_id, 1, &rd))
		{
			d.allowed = false;
			d.denied_by = denied_rate;
			d.has_limit = true;
			d.limit = rd.limit;
			d.remaining = rd.remaining;
			d.has_retry = rd.retry_after >= 0;
			d.retry_after = rd.retry_after;
			d.has_resets = true;
			d.resets_at = GetCurrentTimestamp() + rd.reset_after * USECS_PER_SEC;
		}
		else
		{
			TIMESTAMP_NOEND(infinity);
			n = read_counters(req.tenant_id, pol.model_id, req.user_id, req.key_id,
							  infinity, rows);
			at = charge_instant(rows, n);
			charge_cost(&req, &pol, at, rows, n, &extra, &d);
			if (decide_quotas(rows, n, cstring_to_text(pol.timezone), at, at, 1, req.units,
							  extra.cost_micro, &d, &overage))
				throttle_quotas(req.tenant_id, rows, n, true, at, &d);
		}
	}
	QuotaSpiEnd(&spi);
	PG_RETURN_DATUM(request_decision_datum(fcinfo, &req, &d));
}
