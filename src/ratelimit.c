/*-------------------------------------------------------------------------
 *
 * ratelimit.c
 *		The SQL functions of rate limits: ad-hoc keys (rate_limit_check,
 *		tenant_rate_limit_check), configured rules (rate_limit_apply), the
 *		state of the table (rate_limit_status, rate_limit_namespaces) and
 *		resets (_rate_limit_reset).  The table and how a bucket is checked
 *		are described in ratelimit_shmem.c; the rules in ratelimit_rules.c.
 *
 *-------------------------------------------------------------------------
 */
#include "quota_ext.h"
#include "spi.h"
#include "context.h"
#include "args.h"
#include "gcra.h"
#include "ratelimit.h"

#include <time.h>

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "port/pg_bswap.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/tuplestore.h"
#include "utils/typcache.h"

#include "ratelimit_internal.h"

PG_FUNCTION_INFO_V1(quota_ext_rate_limit_check);
PG_FUNCTION_INFO_V1(quota_ext_tenant_rate_limit_check);
PG_FUNCTION_INFO_V1(quota_ext_rate_limit_apply);
PG_FUNCTION_INFO_V1(quota_ext_rate_limit_status);
PG_FUNCTION_INFO_V1(quota_ext_rate_limit_namespaces);
PG_FUNCTION_INFO_V1(quota_ext_rate_limit_reset_buckets);

/* ----------------------------------------------------------------------
 * SQL: ad-hoc keys
 * ----------------------------------------------------------------------
 */

/*
 * quota_rl_result
 *		One answer as a quota_ext.rate_limit_result datum.  The descriptor
 *		comes from the type cache, which follows ALTER TYPE and DROP, found
 *		by the result type recorded in the call expression: a lookup in a
 *		hash table, where get_call_result_type would read pg_proc and build
 *		a descriptor at every call.  A call without an expression (from C)
 *		takes the slow way.
 */
static Datum
quota_rl_result(FunctionCallInfo fcinfo, const QuotaGcraResult *r)
{
	Oid			rettype = get_fn_expr_rettype(fcinfo->flinfo);
	TupleDesc	tupdesc;
	HeapTuple	tuple;
	Datum		values[5];
	bool		nulls[5] = {0};

	QuotaGcraValues(r, values);
	if (OidIsValid(rettype) && rettype != RECORDOID)
	{
		tupdesc = lookup_rowtype_tupdesc(rettype, -1);
		if (tupdesc->natts != 5)
			elog(ERROR, "return type must be a row type with 5 columns");
		tuple = heap_form_tuple(tupdesc, values, nulls);
		ReleaseTupleDesc(tupdesc);
	}
	else
	{
		if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
			elog(ERROR, "return type must be a row type");
		tuple = heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls);
	}
	return HeapTupleGetDatum(tuple);
}

/*
 * quota_rl_keyed
 *		Shared body of rate_limit_check and tenant_rate_limit_check.
 */
static Datum
quota_rl_keyed(FunctionCallInfo fcinfo, char kind, int64 ns)
{
	QuotaRlBucket b;
	text	   *key;
	int64		quantity;

	QuotaArgNotNull(fcinfo, 0, "key");
	key = PG_GETARG_TEXT_PP(0);
	QuotaGcraGetArgs(fcinfo, 1, &b.max_burst, &b.count, &b.period, &quantity);
	if (VARSIZE_ANY_EXHDR(key) == 0 || VARSIZE_ANY_EXHDR(key) > QUOTA_RL_MAX_KEY)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("rate-limit key must be 1 to %d bytes long", QUOTA_RL_MAX_KEY),
				 errdetail("The key is %zu bytes long.", (size_t) VARSIZE_ANY_EXHDR(key))));
	quota_rl_require();

	b.rule_id = 0;
	quota_rl_digest(kind, ns, 0, VARDATA_ANY(key), VARSIZE_ANY_EXHDR(key), b.key);
	b.part = quota_rl_partition(b.key);
	b.capped = true;
	b.ns_tenant = ns;
	b.entry = NULL;
	quota_rl_check_one(&b, quantity);

	PG_RETURN_DATUM(quota_rl_result(fcinfo, &b.r));
}

/*
 * quota_ext.rate_limit_check(key text, max_burst int, count int,
 *		period_seconds int, quantity int DEFAULT 1)
 *	RETURNS (limited boolean, "limit" bigint, remaining bigint,
 *		retry_after bigint, reset_after bigint)
 *
 *		redis-cell's CL.THROTTLE key max_burst count period quantity, in the
 *		one namespace shared by every caller.
 */
Datum
quota_ext_rate_limit_check(PG_FUNCTION_ARGS)
{
	return quota_rl_keyed(fcinfo, 'g', 0);
}

/*
 * quota_ext.tenant_rate_limit_check(key text, max_burst int, count int,
 *		period_seconds int, quantity int DEFAULT 1)
 *	RETURNS as rate_limit_check
 *
 *		The same in the current tenant's own namespace: tenants cannot reach
 *		each other's buckets.  42501 without a tenant context.
 */
Datum
quota_ext_tenant_rate_limit_check(PG_FUNCTION_ARGS)
{
	const QuotaContext *ctx = QuotaContextGet();

	if (ctx == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("no tenant context in this transaction"),
				 errhint("Call quota_ext.authenticate() in the same transaction first.")));
	return quota_rl_keyed(fcinfo, 't', ctx->tenant_id);
}

/*
 * quota_ext.rate_limit_apply(tenant_id bigint, model text DEFAULT NULL,
 *		quantity int DEFAULT 1, key_id bigint DEFAULT NULL)
 *	RETURNS (limited boolean, rule_id bigint, "limit" bigint,
 *		remaining bigint, retry_after bigint, reset_after bigint)
 *
 *		QuotaRateLimitApply from SQL: the configured rules (and the tier
 *		default) for a tenant, optionally a model, and the API key (by
 *		default the one of the tenant context; a key's transaction may not
 *		name another key, 42501, as in quota_consume: QuotaIdentityResolve).
 *		rule_id, limit and remaining are NULL when no rule applies.
 */
Datum
quota_ext_rate_limit_apply(PG_FUNCTION_ARGS)
{
	static QuotaPlan model_plan = {
		"SELECT quota_ext._model_resolve($1, $2)",
		2, {INT8OID, TEXTOID}
	};
	QuotaSpiState spi;
	QuotaRateDecision d;
	QuotaIdentity id;
	int64		tenant_id;
	int64		model_id = 0;
	int64		key_id = 0;
	int64		quantity;
	Datum		values[6];
	bool		nulls[6] = {0};

	QuotaArgNotNull(fcinfo, 0, "tenant_id");
	QuotaArgNotNull(fcinfo, 2, "quantity");
	tenant_id = PG_GETARG_INT64(0);
	quantity = PG_GETARG_INT32(2);
	if (quantity < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("quantity must not be negative"),
				 errdetail("quantity is %d.", (int) quantity)));
	QuotaCheckTenantAccess(tenant_id);
	/* a key's transaction charges its own key's rules only (as consume) */
	QuotaIdentityResolve(fcinfo, tenant_id, -1, 3, -1, &id);
	key_id = id.key_id;

	QuotaSpiBegin(&spi);
	if (!PG_ARGISNULL(1))
	{
		Datum		mv[2];
		bool		isnull = true;

		mv[0] = Int64GetDatum(tenant_id);
		mv[1] = PG_GETARG_DATUM(1);
		QuotaSpiExec(&model_plan, mv, NULL, true, 1);
		if (SPI_processed == 1)
			model_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
												   SPI_tuptable->tupdesc, 1,
												   &isnull));
		if (isnull)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("model \"%s\" does not exist",
							QuotaQuoteInput(text_to_cstring(PG_GETARG_TEXT_PP(1))))));
	}
	QuotaRateLimitApply(tenant_id, model_id, key_id, quantity, &d);
	QuotaSpiEnd(&spi);

	values[0] = BoolGetDatum(d.limited);
	values[1] = Int64GetDatum(d.rule_id);
	values[2] = Int64GetDatum(d.limit);
	values[3] = Int64GetDatum(d.remaining);
	values[4] = Int64GetDatum(d.retry_after);
	values[5] = Int64GetDatum(d.reset_after);
	if (d.rule_id < 0)
		nulls[1] = nulls[2] = nulls[3] = true;
	PG_RETURN_DATUM(QuotaResultRow(fcinfo, values, nulls));
}

/*
 * quota_ext.rate_limit_status()
 *	RETURNS (slots integer, in_use bigint, partitions integer,
 *		tenant_entries integer)
 *
 *		The size of the bucket table, how many slots hold a bucket (idle
 *		ones included until they are reclaimed), and the cap of each ad-hoc
 *		namespace (quota_ext.rate_limit_tenant_entries in effect).
 */
Datum
quota_ext_rate_limit_status(PG_FUNCTION_ARGS)
{
	Datum		values[4];
	bool		nulls[4] = {0};
	int64		nfree = 0;
	int			i;

	quota_rl_require();
	for (i = 0; i < QUOTA_RL_PARTITIONS; i++)
	{
		LWLockAcquire(quota_rl_lock(i), LW_SHARED);
		nfree += quota_rl_shared->parts[i].nfree;
		LWLockRelease(quota_rl_lock(i));
	}
	values[0] = Int32GetDatum(quota_rl_shared->nentries);
	values[1] = Int64GetDatum((int64) quota_rl_shared->nentries - nfree);
	values[2] = Int32GetDatum(QUOTA_RL_PARTITIONS);
	values[3] = Int32GetDatum((int32) quota_rl_cap());
	PG_RETURN_DATUM(QuotaResultRow(fcinfo, values, nulls));
}

/*
 * quota_ext.rate_limit_namespaces()
 *	RETURNS SETOF (tenant_id bigint, buckets integer)
 *
 *		The capped namespaces of this database that count buckets: tenant_id
 *		NULL for the keys of rate_limit_check(), else the tenant whose keys
 *		of tenant_rate_limit_check() they are.  buckets counts idle ones
 *		until they are reclaimed (and calls linking one right now).
 */
Datum
quota_ext_rate_limit_namespaces(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	LWLock	   *lock;
	int32		b;

	QuotaCheckAdmin("rate_limit_namespaces");
	quota_rl_require();
	InitMaterializedSRF(fcinfo, 0);
	lock = quota_rl_lock(QUOTA_RL_NS_LOCK);
	LWLockAcquire(lock, LW_SHARED);
	for (b = 0; b < quota_rl_shared->ns_nbuckets; b++)
	{
		int32		i;

		for (i = quota_rl_ns_heads[b]; i != QUOTA_RL_NONE; i = quota_rl_ns_records[i].next)
		{
			Datum		values[2];
			bool		nulls[2] = {0};
			uint32		c = pg_atomic_read_u32(&quota_rl_ns_records[i].count);

			if (quota_rl_ns_records[i].dbid != MyDatabaseId || c == 0)
				continue;
			values[0] = Int64GetDatum(quota_rl_ns_records[i].tenant_id);
			nulls[0] = (quota_rl_ns_records[i].tenant_id == 0);
			values[1] = Int32GetDatum((int32) c);
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
		}
	}
	LWLockRelease(lock);
	return (Datum) 0;
}

/*
 * quota_ext._rate_limit_reset(tenant_id bigint, key text, rule_ids bigint[])
 *	RETURNS bigint
 *
 *		The buckets behind quota_ext.rate_limit_reset() (which checks the
 *		caller, records the reset in the audit log and passes the tenant's
 *		rule ids; EXECUTE for nobody else): removes them and returns how
 *		many there were.  tenant_id NULL: the keys of rate_limit_check(),
 *		else the tenant's keys of tenant_rate_limit_check() and, without a
 *		key, the buckets of rule_ids (0 = the tier default).  key NULL:
 *		every key of the namespace.  A removed bucket is full again.
 */
Datum
quota_ext_rate_limit_reset_buckets(PG_FUNCTION_ARGS)
{
	int64		tenant_id = PG_ARGISNULL(0) ? 0 : PG_GETARG_INT64(0);
	int64		n = 0;
	uint64		digest[2];

	quota_rl_require();
	if (!PG_ARGISNULL(1))
	{
		text	   *key = PG_GETARG_TEXT_PP(1);

		if (VARSIZE_ANY_EXHDR(key) == 0 || VARSIZE_ANY_EXHDR(key) > QUOTA_RL_MAX_KEY)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("rate-limit key must be 1 to %d bytes long", QUOTA_RL_MAX_KEY),
					 errdetail("The key is %zu bytes long.", (size_t) VARSIZE_ANY_EXHDR(key))));
		quota_rl_digest(PG_ARGISNULL(0) ? 'g' : 't', tenant_id, 0,
						VARDATA_ANY(key), VARSIZE_ANY_EXHDR(key), digest);
		PG_RETURN_INT64(quota_rl_remove_key(digest));
	}
	else
	{
		int32		ns = quota_rl_ns_hold(tenant_id);

		if (ns != QUOTA_RL_NONE)
		{
			n = quota_rl_remove_ns(ns);
			quota_rl_ns_unhold(ns);
		}
	}
	if (!PG_ARGISNULL(0) && !PG_ARGISNULL(2))
	{
		ArrayType  *ids = PG_GETARG_ARRAYTYPE_P(2);
		Datum	   *elems;
		bool	   *nulls;
		int			nelems;
		int			i;

		deconstruct_array(ids, INT8OID, sizeof(int64), FLOAT8PASSBYVAL,
						  TYPALIGN_DOUBLE, &elems, &nulls, &nelems);
		for (i = 0; i < nelems; i++)
		{
			if (nulls[i])
				continue;
			quota_rl_digest('r', tenant_id, DatumGetInt64(elems[i]), NULL, 0, digest);
			n += quota_rl_remove_key(digest);
		}
	}
	PG_RETURN_INT64(n);
}
