/*-------------------------------------------------------------------------
 *
 * policy.c
 *		Model resolution and access policies: quota_ext.policy_check().
 *
 * One kept plan answers everything the hot path needs to know before it
 * touches a counter: does the tenant exist and is it active, what is its
 * time zone, which model does the name mean for this tenant (its own model,
 * else a global one, else one shared with it), and which policy applies
 * (the exact name first, else the longest "prefix*" pattern), and which
 * price version is in force (metering.c).  No matching policy means deny,
 * as does an unknown or retired model.
 *
 * Nothing is cached across transactions: a policy change committed before a
 * statement starts is seen by it (READ COMMITTED), so a revoke takes effect
 * for the next transaction at the latest.
 *
 *-------------------------------------------------------------------------
 */
#include "quota_ext.h"

#include "catalog/pg_type.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(policy_check);

static bool
quota_role_listed(ArrayType *roles, const char *role)
{
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	int			i;

	if (role == NULL || role[0] == '\0')
		return false;
	deconstruct_array(roles, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);
	for (i = 0; i < n; i++)
	{
		if (nulls[i])
			continue;
		if (strcmp(TextDatumGetCString(elems[i]), role) == 0)
			return true;
	}
	return false;
}

/*
 * QuotaPolicyEvaluate
 *		Tenant, model and policy for one request.  Call between QuotaSpiBegin
 *		and QuotaSpiEnd; out->timezone lives until QuotaSpiEnd.
 */
void
QuotaPolicyEvaluate(int64 tenant_id, const char *model, const char *role,
					QuotaPolicyResult *out)
{
	static QuotaPlan plan = {
		"SELECT t.status OPERATOR(pg_catalog.=) 'active', t.timezone, m.model_id, "
		"       p.allowed, p.roles_allowed, "
		"       pr.price_id, pr.currency, pr.unit_price, pr.input_per_1k, pr.output_per_1k, "
		"       pv.valid_until, "
	/* does the tenant have escrow (multi-slot) quotas?  (quota.c) */
		"       EXISTS (SELECT 1 FROM quota_ext.quotas q "
		"               WHERE q.tenant_id OPERATOR(pg_catalog.=) t.tenant_id "
		"                 AND q.slots OPERATOR(pg_catalog.>) 1) "
		"FROM quota_ext.tenants t "
		"LEFT JOIN LATERAL ("
		"  SELECT m.model_id FROM quota_ext.models m "
		"  WHERE m.name OPERATOR(pg_catalog.=) $2 "
		"    AND m.status OPERATOR(pg_catalog.=) 'active' "
		"    AND (m.owner_tenant_id IS NULL "
		"         OR m.owner_tenant_id OPERATOR(pg_catalog.=) t.tenant_id "
		"         OR EXISTS (SELECT 1 FROM quota_ext.model_shares s "
		"                    WHERE s.tenant_id OPERATOR(pg_catalog.=) t.tenant_id "
		"                      AND s.model_id OPERATOR(pg_catalog.=) m.model_id)) "
		"  ORDER BY (m.owner_tenant_id OPERATOR(pg_catalog.=) t.tenant_id) DESC NULLS LAST, "
		"           m.owner_tenant_id NULLS FIRST, m.model_id "
		"  LIMIT 1) m ON true "
		"LEFT JOIN LATERAL ("
		"  SELECT p.allowed, p.roles_allowed FROM quota_ext.policies p "
		"  WHERE p.tenant_id OPERATOR(pg_catalog.=) t.tenant_id "
		"    AND (p.model_pattern OPERATOR(pg_catalog.=) $2 "
		"         OR (p.is_prefix AND pg_catalog.starts_with($2, "
		"               pg_catalog.rtrim(p.model_pattern, '*')))) "
		"  ORDER BY p.is_prefix, pg_catalog.length(p.model_pattern) DESC "
		"  LIMIT 1) p ON m.model_id IS NOT NULL "
	/* the price in force at $3 (metering.c; same rule as _price_in_force) */
		"LEFT JOIN LATERAL ("
		"  SELECT c.price_id, c.currency, c.unit_price, c.input_per_1k, c.output_per_1k "
		"  FROM ((SELECT o.price_id, o.currency, o.unit_price, o.input_per_1k, o.output_per_1k, "
		"                0 AS rank FROM quota_ext.prices o "
		"          WHERE o.model_id OPERATOR(pg_catalog.=) m.model_id "
		"            AND o.tenant_id OPERATOR(pg_catalog.=) t.tenant_id "
		"            AND o.effective_from OPERATOR(pg_catalog.<=) $3 "
		"          ORDER BY o.effective_from DESC LIMIT 1) "
		"        UNION ALL "
		"        (SELECT g.price_id, g.currency, g.unit_price, g.input_per_1k, g.output_per_1k, "
		"                1 FROM quota_ext.prices g "
		"          WHERE g.model_id OPERATOR(pg_catalog.=) m.model_id AND g.tenant_id IS NULL "
		"            AND g.effective_from OPERATOR(pg_catalog.<=) $3 "
		"          ORDER BY g.effective_from DESC LIMIT 1)) c "
		"  WHERE c.unit_price IS NOT NULL OR c.input_per_1k IS NOT NULL "
		"     OR c.output_per_1k IS NOT NULL "
		"  ORDER BY c.rank LIMIT 1) pr ON m.model_id IS NOT NULL "
		"LEFT JOIN LATERAL ("
		"  SELECT LEAST((SELECT n.effective_from FROM quota_ext.prices n "
		"                 WHERE n.model_id OPERATOR(pg_catalog.=) m.model_id "
		"                   AND n.tenant_id OPERATOR(pg_catalog.=) t.tenant_id "
		"                   AND n.effective_from OPERATOR(pg_catalog.>) $3 "
		"                 ORDER BY n.effective_from LIMIT 1), "
		"               (SELECT n.effective_from FROM quota_ext.prices n "
		"                 WHERE n.model_id OPERATOR(pg_catalog.=) m.model_id "
		"                   AND n.tenant_id IS NULL "
		"                   AND n.effective_from OPERATOR(pg_catalog.>) $3 "
		"                 ORDER BY n.effective_from LIMIT 1)) AS valid_until) pv "
		"  ON m.model_id IS NOT NULL "
		"WHERE t.tenant_id OPERATOR(pg_catalog.=) $1",
		3, {INT8OID, TEXTOID, TIMESTAMPTZOID}
	};
	Datum		values[3];
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	Datum		d;

	memset(out, 0, sizeof(*out));
	values[0] = Int64GetDatum(tenant_id);
	values[1] = CStringGetTextDatum(model);
	values[2] = TimestampTzGetDatum(GetCurrentTimestamp());
	QuotaSpiExec(&plan, values, NULL, false, 1);
	if (SPI_processed == 0)
		return;
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	out->tenant_found = true;
	out->tenant_active = DatumGetBool(SPI_getbinval(tup, desc, 1, &isnull));
	out->timezone = SPI_getvalue(tup, desc, 2);
	d = SPI_getbinval(tup, desc, 3, &isnull);
	out->model_id = isnull ? 0 : DatumGetInt64(d);
	QuotaPriceFromTuple(tup, desc, 6, &out->price);
	out->has_slots = DatumGetBool(SPI_getbinval(tup, desc, 12, &isnull));
	d = SPI_getbinval(tup, desc, 4, &isnull);
	if (isnull || !DatumGetBool(d))
		return;
	d = SPI_getbinval(tup, desc, 5, &isnull);
	out->allowed = isnull || quota_role_listed(DatumGetArrayTypeP(d), role);
}

/*
 * quota_ext.policy_check(tenant_id bigint, model text, role text DEFAULT NULL)
 *		RETURNS boolean
 *
 * role NULL means the role of the authenticated user when the context is
 * this tenant's and came from a key; a policy that lists roles denies a
 * request without a role.  Unknown tenant: 42704 (same text whether it
 * exists outside the caller's context or not).  Unknown model: false.
 */
Datum
policy_check(PG_FUNCTION_ARGS)
{
	int64		tenant_id;
	char	   *model;
	const char *role = NULL;
	const QuotaContext *ctx;
	QuotaPolicyResult res;
	QuotaSpiState spi;

	QuotaArgNotNull(fcinfo, 0, "tenant_id");
	QuotaArgNotNull(fcinfo, 1, "model");
	tenant_id = PG_GETARG_INT64(0);
	model = text_to_cstring(PG_GETARG_TEXT_PP(1));
	QuotaCheckTenantAccess(tenant_id);
	ctx = QuotaContextGet();
	if (!PG_ARGISNULL(2))
		role = text_to_cstring(PG_GETARG_TEXT_PP(2));
	else if (ctx && ctx->tenant_id == tenant_id && ctx->role[0] != '\0')
		role = ctx->role;

	QuotaSpiBegin(&spi);
	QuotaPolicyEvaluate(tenant_id, model, role, &res);
	QuotaSpiEnd(&spi);
	if (!res.tenant_found)
		QuotaRaiseUnknownTenant(tenant_id);
	PG_RETURN_BOOL(res.tenant_active && res.model_id != 0 && res.allowed);
}
