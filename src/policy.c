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
 * The answer for (tenant, model) is kept in the backend's configuration
 * cache (cache.c) until the configuration changes or the next price version
 * takes effect; the role is checked against it on every call.  Only when
 * the name means a model: a name that matches none is answered by the query
 * every time, so made-up names cannot fill the cache (nor its shared level).  A policy
 * change committed before a request starts is seen by it, as with a query
 * (READ COMMITTED), so a revoke takes effect for the next request.
 *
 *-------------------------------------------------------------------------
 */
#include "quota_ext.h"
#include "spi.h"
#include "context.h"
#include "cache.h"
#include "args.h"
#include "metering.h"
#include "policy.h"

#include "catalog/pg_type.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(quota_ext_policy_check);

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

/* run plan; its first row and *desc, or NULL when it returned none */
static HeapTuple
policy_first_row(QuotaPlan *plan, Datum *values, TupleDesc *desc)
{
	QuotaSpiExec(plan, values, NULL, false, 1);
	if (SPI_processed == 0)
		return NULL;
	*desc = SPI_tuptable->tupdesc;
	return SPI_tuptable->vals[0];
}

/*
 * quota_policy_read
 *		Run the queries: everything but the role check, which is left in
 *		*policy_allows (a policy allows the model) and *roles (NULL = any
 *		role; else the roles it names, in SPI memory).
 *
 *		One statement per table kind, each statement on a per-tenant table
 *		naming tenant_id = $1 (doc/design.md): on Citus each is routed to the
 *		one shard that holds the tenant, or reads a reference table (issue
 *		16).  Runs on a cache miss only.
 */
static void
quota_policy_read(int64 tenant_id, const char *model, QuotaPolicyResult *out,
				  bool *policy_allows, ArrayType **roles)
{
	/* the tenant and the model its name means (reference tables; model_shares by tenant_id) */
	static QuotaPlan tenant_plan = {
		"SELECT t.status OPERATOR(pg_catalog.=) 'active', t.timezone, "
		"       r.model_id, r.via_public "
		"FROM quota_ext.tenants t, quota_ext._model_resolution(t.tenant_id, $2) r "
		"WHERE t.tenant_id OPERATOR(pg_catalog.=) $1",
		2, {INT8OID, TEXTOID}
	};
	/*
	 * the price in force at $3 and when it may change: the rule lives in
	 * SQL only (50_metering.sql's _price_at: tenant+model, model list,
	 * tenant default, list default), called here as the owner in the kept
	 * plan
	 */
	static QuotaPlan price_plan = {
		"SELECT (a.price).price_id, (a.price).currency, (a.price).unit_price, "
		"       (a.price).input_per_1k, (a.price).output_per_1k, a.next_change "
		"FROM quota_ext._price_at($1, $2, $3) a",
		3, {INT8OID, INT8OID, TIMESTAMPTZOID}
	};
	/*
	 * $3 (via_public): another tenant's public model not shared with this
	 * one, which only an exact policy allows (a "prefix*" pattern written
	 * for other models must not let anyone's newly published model in)
	 */
	static QuotaPlan policy_plan = {
		"SELECT p.allowed, p.roles_allowed FROM quota_ext.policies p "
		"WHERE p.tenant_id OPERATOR(pg_catalog.=) $1 "
		"  AND (p.model_pattern OPERATOR(pg_catalog.=) $2 "
		"       OR (p.is_prefix AND NOT $3 AND pg_catalog.starts_with($2, "
		"             pg_catalog.rtrim(p.model_pattern, '*')))) "
		"ORDER BY p.is_prefix, pg_catalog.length(p.model_pattern) DESC "
		"LIMIT 1",
		3, {INT8OID, TEXTOID, BOOLOID}
	};
	Datum		values[3];
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	bool		via_public;
	Datum		d;

	memset(out, 0, sizeof(*out));
	*policy_allows = false;
	*roles = NULL;
	values[0] = Int64GetDatum(tenant_id);
	values[1] = CStringGetTextDatum(model);
	if ((tup = policy_first_row(&tenant_plan, values, &desc)) == NULL)
		return;
	out->tenant_found = true;
	out->tenant_active = DatumGetBool(SPI_getbinval(tup, desc, 1, &isnull));
	out->timezone = SPI_getvalue(tup, desc, 2);
	d = SPI_getbinval(tup, desc, 3, &isnull);
	out->model_id = isnull ? 0 : DatumGetInt64(d);
	d = SPI_getbinval(tup, desc, 4, &isnull);
	via_public = !isnull && DatumGetBool(d);

	if (out->model_id == 0)
	{
		TIMESTAMP_NOEND(out->price.valid_until);
		return;
	}
	values[1] = Int64GetDatum(out->model_id);
	values[2] = TimestampTzGetDatum(GetCurrentTimestamp());
	QuotaSpiExec(&price_plan, values, NULL, false, 1);
	QuotaPriceFromTuple(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &out->price);

	values[1] = CStringGetTextDatum(model);
	values[2] = BoolGetDatum(via_public);
	if ((tup = policy_first_row(&policy_plan, values, &desc)) == NULL)
		return;
	d = SPI_getbinval(tup, desc, 1, &isnull);
	if (isnull || !DatumGetBool(d))
		return;
	*policy_allows = true;
	d = SPI_getbinval(tup, desc, 2, &isnull);
	if (!isnull)
		*roles = DatumGetArrayTypeP(d);
}

/* the cached answer for (tenant, model) */
#define QUOTA_POLICY_CACHE_NAME 64

typedef struct QuotaPolicyCacheKey
{
	int64		tenant_id;
	char		model[QUOTA_POLICY_CACHE_NAME];
} QuotaPolicyCacheKey;

typedef struct QuotaPolicyCacheEntry
{
	QuotaPolicyCacheKey key;
	bool		valid;
	QuotaPolicyResult res;		/* allowed unused; pointers into the cache */
	bool		policy_allows;
	ArrayType  *roles;			/* NULL: any role */
} QuotaPolicyCacheEntry;

static Datum
quota_copy_numeric(bool has, Datum d)
{
	return has ? datumCopy(d, false, -1) : (Datum) 0;
}

/* copy the pointed-to parts of res into the current memory context */
static void
quota_policy_copy(QuotaPolicyResult *res)
{
	if (res->timezone)
		res->timezone = pstrdup(res->timezone);
	res->price.unit_price = quota_copy_numeric(res->price.has_unit, res->price.unit_price);
	res->price.input_per_1k = quota_copy_numeric(res->price.has_input, res->price.input_per_1k);
	res->price.output_per_1k = quota_copy_numeric(res->price.has_output, res->price.output_per_1k);
}

/* the policy cache (cache.h): fill reads the tables, arg is the caller's answer */
static bool
policy_cache_fill(void *entry, void *arg)
{
	QuotaPolicyCacheEntry *e = entry;
	QuotaPolicyResult *out = arg;
	QuotaPolicyResult res;
	bool		policy_allows;
	ArrayType  *roles;
	MemoryContext old;

	quota_policy_read(e->key.tenant_id, e->key.model, &res, &policy_allows, &roles);
	if (!res.tenant_found || res.model_id == 0)
	{
		/*
		 * Unknown tenants are not cached, nor names that match no model (the
		 * caller makes those up: caching them would let a flood of junk
		 * names fill the cache).  No model: no policy allows.
		 */
		*out = res;
		out->allowed = false;
		return false;
	}
	old = MemoryContextSwitchTo(QuotaCacheContext());
	quota_policy_copy(&res);
	e->roles = roles ? DatumGetArrayTypePCopy(PointerGetDatum(roles)) : NULL;
	MemoryContextSwitchTo(old);
	e->res = res;
	e->policy_allows = policy_allows;
	return true;
}

/* a numeric price: its varlena bytes, or nothing */
static void
policy_flat_numeric(QuotaFlat *f, bool has, Datum *d)
{
	void	   *p = has ? DatumGetPointer(*d) : NULL;

	QuotaFlatBytes(f, &p, p ? VARSIZE_ANY(p) : 0);
	*d = PointerGetDatum(p);
	/* a price that went missing would be read as present */
	if (has && p == NULL)
		f->bad = true;
}

static void
policy_cache_flat(void *entry, QuotaFlat *f)
{
	QuotaPolicyCacheEntry *e = entry;
	QuotaPolicyResult *r = &e->res;
	void	   *p;

	/* reading, only what was written counts (and nothing to measure) */
	if (f->reading)
	{
		memset(r, 0, sizeof(*r));
		e->roles = NULL;
	}
	QUOTA_FLAT(f, r->tenant_found);
	QUOTA_FLAT(f, r->tenant_active);
	p = r->timezone;
	QuotaFlatBytes(f, &p, p ? strlen(p) + 1 : 0);
	r->timezone = p;
	QUOTA_FLAT(f, r->model_id);
	QUOTA_FLAT(f, r->price.found);
	QUOTA_FLAT(f, r->price.price_id);
	QUOTA_FLAT(f, r->price.currency);
	QUOTA_FLAT(f, r->price.has_unit);
	QUOTA_FLAT(f, r->price.has_input);
	QUOTA_FLAT(f, r->price.has_output);
	policy_flat_numeric(f, r->price.has_unit, &r->price.unit_price);
	policy_flat_numeric(f, r->price.has_input, &r->price.input_per_1k);
	policy_flat_numeric(f, r->price.has_output, &r->price.output_per_1k);
	QUOTA_FLAT(f, r->price.valid_until);
	QUOTA_FLAT(f, e->policy_allows);
	p = e->roles;
	QuotaFlatBytes(f, &p, p ? VARSIZE(p) : 0);
	e->roles = p;
}

/* the price in force when the answer was read changes at valid_until */
static bool
policy_cache_current(const void *entry)
{
	const QuotaPolicyCacheEntry *e = entry;

	return GetCurrentTimestamp() < e->res.price.valid_until;
}

static const QuotaCacheKind policy_cache_kind =
	QUOTA_CACHE_KIND(QuotaPolicyCacheEntry, 2, "quota_ext policy cache",
					 policy_cache_fill, policy_cache_flat, policy_cache_current);

static void
quota_policy_answer(QuotaPolicyCacheEntry *e, const char *role, QuotaPolicyResult *out)
{
	*out = e->res;
	quota_policy_copy(out);
	out->allowed = e->policy_allows &&
		(e->roles == NULL || quota_role_listed(e->roles, role));
}

/*
 * QuotaPolicyEvaluateFresh
 *		Tenant, model and policy for one request, read from the tables.  Call
 *		between QuotaSpiBegin and QuotaSpiEnd; out->timezone and the prices
 *		live until QuotaSpiEnd.  For a request that waited for a lock and
 *		must decide on what is true now (consume.c).
 */
void
QuotaPolicyEvaluateFresh(int64 tenant_id, const char *model, const char *role,
						 QuotaPolicyResult *out)
{
	bool		policy_allows;
	ArrayType  *roles;

	quota_policy_read(tenant_id, model, out, &policy_allows, &roles);
	out->allowed = policy_allows &&
		(roles == NULL || quota_role_listed(roles, role));
}

/*
 * policy_lookup
 *		The answer from the backend's configuration cache or the shared level
 *		(true); when neither holds it, with may_query, read it (filing it
 *		there when the cache may be used) and return true, else false.
 */
static bool
policy_lookup(int64 tenant_id, const char *model, const char *role,
			  QuotaPolicyResult *out, bool may_query)
{
	QuotaPolicyCacheKey key;
	QuotaPolicyCacheEntry *e;

	if (strlen(model) >= QUOTA_POLICY_CACHE_NAME || !QuotaCacheBegin())
	{
		if (may_query)
			QuotaPolicyEvaluateFresh(tenant_id, model, role, out);
		return may_query;
	}
	memset(&key, 0, sizeof(key));
	key.tenant_id = tenant_id;
	strlcpy(key.model, model, sizeof(key.model));
	if (may_query)
		e = QuotaCacheGet(&policy_cache_kind, &key, out);
	else
		e = QuotaCachePeek(&policy_cache_kind, &key);
	/* NULL after a query: not cached, fill left the answer in out */
	if (e != NULL)
		quota_policy_answer(e, role, out);
	return e != NULL || may_query;
}

/*
 * QuotaPolicyEvaluate
 *		The same, from the backend's configuration cache when it may be used
 *		(cache.c); the answer's pointers are copies in the current memory
 *		context, so a later reset of the cache does not touch them.
 */
void
QuotaPolicyEvaluate(int64 tenant_id, const char *model, const char *role,
					QuotaPolicyResult *out)
{
	(void) policy_lookup(tenant_id, model, role, out, true);
}

/*
 * QuotaPolicyFromCache
 *		The answer when the cache holds it (true), without any query: the
 *		caller need not open SPI.  False: call QuotaPolicyEvaluate.
 */
bool
QuotaPolicyFromCache(int64 tenant_id, const char *model, const char *role,
					 QuotaPolicyResult *out)
{
	return policy_lookup(tenant_id, model, role, out, false);
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
quota_ext_policy_check(PG_FUNCTION_ARGS)
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

	if (!QuotaPolicyFromCache(tenant_id, model, role, &res))
	{
		QuotaSpiBegin(&spi);
		QuotaPolicyEvaluate(tenant_id, model, role, &res);
		QuotaSpiEnd(&spi);
	}
	if (!res.tenant_found)
		QuotaRaiseUnknownTenant(tenant_id);
	PG_RETURN_BOOL(res.tenant_active && res.model_id != 0 && res.allowed);
}
