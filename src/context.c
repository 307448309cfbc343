/*-------------------------------------------------------------------------
 *
 * context.c
 *		The tenant context: which tenant the current transaction acts for.
 *
 * The context is a plain struct in backend memory.  It is not a GUC, so
 * SET, set_config(), RESET, ALTER ROLE ... SET and DISCARD cannot touch it.
 * Only two functions write it: quota_ext.authenticate() after checking an
 * API key (auth.c), and quota_ext.set_tenant(), which only quota_ext_admin
 * may execute.
 *
 * Lifetime: the context belongs to one transaction.  A transaction callback
 * clears it at COMMIT, ROLLBACK and PREPARE TRANSACTION, so a pooled
 * connection never carries one tenant's context into the next transaction.
 * A subtransaction callback clears it when the subtransaction that set it
 * (or an enclosing one that is being rolled back) aborts: ROLLBACK TO
 * SAVEPOINT undoes an authenticate() made after the savepoint.  Clearing
 * fails closed: no context means no rows (the RLS policies compare
 * tenant_id with quota_ext.current_tenant_id(), which is NULL then).
 *
 * Parallel workers do not inherit backend memory, so every function that
 * reads the context is PARALLEL RESTRICTED.
 *
 *-------------------------------------------------------------------------
 */
#include "quota_ext.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"

PG_FUNCTION_INFO_V1(current_tenant_id);
PG_FUNCTION_INFO_V1(current_context);
PG_FUNCTION_INFO_V1(set_tenant);
PG_FUNCTION_INFO_V1(clear_tenant);
PG_FUNCTION_INFO_V1(check_tenant_access);

static QuotaContext quota_ctx;

static void
quota_context_clear(void)
{
	memset(&quota_ctx, 0, sizeof(quota_ctx));
}

static void
quota_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			quota_context_clear();
			break;
		default:
			break;
	}
}

static void
quota_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
					   SubTransactionId parentSubid, void *arg)
{
	if (!quota_ctx.valid || quota_ctx.nest_level < GetCurrentTransactionNestLevel())
		return;
	if (event == SUBXACT_EVENT_ABORT_SUB)
		quota_context_clear();

	/*
	 * RELEASE SAVEPOINT (or the normal end of a PL/pgSQL exception block)
	 * hands a context set inside the subtransaction to its parent.  Without
	 * this, the context kept the child's nest level and the rollback of any
	 * later, unrelated savepoint at that level cleared it (test/sql/context).
	 */
	else if (event == SUBXACT_EVENT_COMMIT_SUB)
		quota_ctx.nest_level = GetCurrentTransactionNestLevel() - 1;
}

void
QuotaContextInit(void)
{
	quota_context_clear();
	RegisterXactCallback(quota_xact_callback, NULL);
	RegisterSubXactCallback(quota_subxact_callback, NULL);
}

/*
 * QuotaContextSet
 *		Make tenant_id the context of the current transaction.
 */
void
QuotaContextSet(int64 tenant_id, int64 user_id, int64 key_id, const char *role)
{
	if (!IsTransactionState())
		elog(ERROR, "tenant context can only be set inside a transaction");
	quota_context_clear();
	quota_ctx.tenant_id = tenant_id;
	quota_ctx.user_id = user_id;
	quota_ctx.key_id = key_id;
	if (role)
		strlcpy(quota_ctx.role, role, sizeof(quota_ctx.role));
	quota_ctx.nest_level = GetCurrentTransactionNestLevel();
	quota_ctx.valid = true;
}

const QuotaContext *
QuotaContextGet(void)
{
	return quota_ctx.valid ? &quota_ctx : NULL;
}

/*
 * QuotaCallerIsAdmin
 *		Whether the calling role has the privileges of quota_ext_admin
 *		(superusers do).
 */
bool
QuotaCallerIsAdmin(void)
{
	Oid			admin = get_role_oid(QUOTA_ADMIN_ROLE, true);

	if (superuser())
		return true;
	return OidIsValid(admin) && has_privs_of_role(GetUserId(), admin);
}

/*
 * QuotaRaiseUnknownTenant
 *		The one error for a tenant the caller may not see: the same text
 *		whether the tenant exists (in another context) or not.
 */
void
QuotaRaiseUnknownTenant(int64 tenant_id)
{
	ereport(ERROR,
			(errcode(ERRCODE_UNDEFINED_OBJECT),
			 errmsg("tenant %lld does not exist", (long long) tenant_id)));
}

/*
 * QuotaCheckTenantAccess
 *		May the caller act on tenant_id?  With a context, only on that
 *		tenant (any other id is "does not exist").  Without one, only a
 *		caller with the privileges of quota_ext_admin may name a tenant.
 */
void
QuotaCheckTenantAccess(int64 tenant_id)
{
	if (quota_ctx.valid)
	{
		if (quota_ctx.tenant_id != tenant_id)
			QuotaRaiseUnknownTenant(tenant_id);
		return;
	}
	if (!QuotaCallerIsAdmin())
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("no tenant context in this transaction"),
				 errhint("Call quota_ext.authenticate() in the same transaction first.")));
}

/*
 * quota_ext.current_tenant_id() RETURNS bigint
 *		The tenant of the current transaction, or NULL.  Used by every RLS
 *		policy; STABLE so it is evaluated at execution time, never planned in.
 */
Datum
current_tenant_id(PG_FUNCTION_ARGS)
{
	if (!quota_ctx.valid)
		PG_RETURN_NULL();
	PG_RETURN_INT64(quota_ctx.tenant_id);
}

/*
 * quota_ext.current_context() RETURNS (tenant_id bigint, user_id bigint,
 *		key_id bigint, role text)
 *		The whole context; all NULL without one.
 */
Datum
current_context(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[4];
	bool		nulls[4] = {true, true, true, true};

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	if (quota_ctx.valid)
	{
		values[0] = Int64GetDatum(quota_ctx.tenant_id);
		nulls[0] = false;
		if (quota_ctx.user_id != 0)
		{
			values[1] = Int64GetDatum(quota_ctx.user_id);
			nulls[1] = false;
		}
		if (quota_ctx.key_id != 0)
		{
			values[2] = Int64GetDatum(quota_ctx.key_id);
			nulls[2] = false;
		}
		if (quota_ctx.role[0] != '\0')
		{
			values[3] = CStringGetTextDatum(quota_ctx.role);
			nulls[3] = false;
		}
	}
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc),
													  values, nulls)));
}

/*
 * quota_ext.set_tenant(tenant_id bigint) RETURNS void
 *		Privileged: set the context for admin tools.  EXECUTE is granted to
 *		quota_ext_admin only; the tenant must exist (any status).
 */
Datum
set_tenant(PG_FUNCTION_ARGS)
{
	static QuotaPlan plan = {
		"SELECT 1 FROM quota_ext.tenants "
		"WHERE tenant_id OPERATOR(pg_catalog.=) $1",
		1, {INT8OID}
	};
	QuotaSpiState spi;
	int64		tenant_id;
	Datum		values[1];
	uint64		found;

	QuotaArgNotNull(fcinfo, 0, "tenant_id");
	tenant_id = PG_GETARG_INT64(0);

	QuotaSpiBegin(&spi);
	values[0] = Int64GetDatum(tenant_id);
	QuotaSpiExec(&plan, values, NULL, true, 1);
	found = SPI_processed;
	QuotaSpiEnd(&spi);
	if (found == 0)
		QuotaRaiseUnknownTenant(tenant_id);

	QuotaContextSet(tenant_id, 0, 0, NULL);
	PG_RETURN_VOID();
}

/*
 * quota_ext.clear_tenant() RETURNS void
 *		Drop the context before the transaction ends.
 */
Datum
clear_tenant(PG_FUNCTION_ARGS)
{
	quota_context_clear();
	PG_RETURN_VOID();
}

/*
 * quota_ext._check_tenant_access(tenant_id bigint) RETURNS void
 *		QuotaCheckTenantAccess for the PL/pgSQL admin functions.
 */
Datum
check_tenant_access(PG_FUNCTION_ARGS)
{
	QuotaArgNotNull(fcinfo, 0, "tenant_id");
	QuotaCheckTenantAccess(PG_GETARG_INT64(0));
	PG_RETURN_VOID();
}
