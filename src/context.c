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
#include "spi.h"
#include "context.h"
#include "args.h"
#include "storage.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

PG_FUNCTION_INFO_V1(quota_ext_current_tenant_id);
PG_FUNCTION_INFO_V1(quota_ext_current_context);
PG_FUNCTION_INFO_V1(quota_ext_set_tenant);
PG_FUNCTION_INFO_V1(quota_ext_clear_tenant);
PG_FUNCTION_INFO_V1(quota_ext_check_tenant_access);
PG_FUNCTION_INFO_V1(quota_ext_identity_resolve);
PG_FUNCTION_INFO_V1(quota_ext_admin_only);

static QuotaContext quota_ctx;

/* the text of the token quota_ctx was adopted from (when from_token) */
static char *adopted_token = NULL;

/*
 * quota_ctx_adopt
 *		On a Citus worker, the context a coordinator's transaction sent in its
 *		signed token (context_citus.c); nothing without a token, so a single
 *		node pays one pointer test.  Every reader of quota_ctx calls it first.
 *
 *		A context adopted from a token follows the setting: when the
 *		coordinator publishes another token in the same transaction
 *		(set_tenant to another tenant, a second authenticate) or an empty one
 *		(clear_tenant), the old context is dropped and the new token, if any,
 *		checked.  A context set in this backend's memory always wins.
 */
static inline void
quota_ctx_adopt(void)
{
	const char *tok = quota_context_token;
	bool		empty = (tok == NULL || tok[0] == '\0');
	QuotaContext c;

	if (quota_ctx.valid && !quota_ctx.from_token)
		return;
	if (quota_ctx.valid)
	{
		if (!empty && strcmp(adopted_token, tok) == 0)
			return;
		memset(&quota_ctx, 0, sizeof(quota_ctx));
	}
	if (empty)
		return;
	if (QuotaContextAdopt(&c))
	{
		if (adopted_token)
			pfree(adopted_token);
		adopted_token = MemoryContextStrdup(TopMemoryContext, tok);
		quota_ctx = c;
		quota_ctx.nest_level = GetCurrentTransactionNestLevel();
		quota_ctx.from_token = true;
		quota_ctx.valid = true;
	}
}

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
	QuotaContextCitusInit();
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
	/* on Citus, the workers of this transaction get it too */
	QuotaContextPublish(&quota_ctx);
}

const QuotaContext *
QuotaContextGet(void)
{
	quota_ctx_adopt();
	return quota_ctx.valid ? &quota_ctx : NULL;
}

/*
 * quota_role_is_admin
 *		Whether role has the privileges of quota_ext_admin (superusers do).
 */
static bool
quota_role_is_admin(Oid role, Oid admin)
{
	if (superuser_arg(role))
		return true;
	return OidIsValid(admin) && has_privs_of_role(role, admin);
}

/*
 * QuotaCallerIsAdmin
 *		The one answer to "may this caller act without a tenant context?":
 *		whether the calling role has the privileges of quota_ext_admin.
 *		Every privilege decision of the extension that is not a plain
 *		EXECUTE grant goes through here (QuotaCheckTenantAccess,
 *		QuotaCheckAdmin and through them the SQL wrappers
 *		_check_tenant_access and _admin_only).
 *
 * Which role is "the caller" (doc/design.md section 2):
 *
 * GetUserId() alone is wrong: inside a SECURITY DEFINER function it is the
 * definer, and quota_status(), tenant_summary(), price_lookup(),
 * usage_report() and the other PL/pgSQL functions of the extension are
 * SECURITY DEFINER, owned by the superuser who ran CREATE EXTENSION.  The
 * check ran there saw a superuser, so any quota_ext_app login without a
 * context passed as admin and read every tenant (issue 12, finding 2).
 *
 * GetOuterUserId() is the role the session acts as: the login, or the role
 * of the last SET ROLE.  SECURITY DEFINER never changes it, and SET ROLE
 * is refused inside a SECURITY DEFINER function, so no function can lend
 * it a role it does not have.  A pg_cron job runs in a session of the
 * job's user (a background worker connected as that user, or a libpq
 * connection as it), so the job is judged as that user, as if the user had
 * typed the statement; cron.schedule() records the scheduling user, so an
 * app login cannot schedule a job as the admin.
 *
 * Both must hold.  Judging the outer role only would let an admin session
 * lend its rights to code written by a less trusted role: a SECURITY
 * DEFINER function owned by an app login, or a security-restricted
 * operation (REFRESH MATERIALIZED VIEW, CREATE INDEX, VACUUM, ANALYZE run
 * an object owner's expressions as that owner), called by the admin.  The
 * current role is that owner in our C functions, so requiring it too closes
 * that path there.  Inside our own SECURITY DEFINER functions the current
 * role is the extension owner and the owner in between is invisible, so a
 * security-restricted operation, whose code always belongs to an object's
 * owner and never to the session, never counts as admin.
 *
 * What this means for SECURITY DEFINER wrappers a deployment writes: a
 * wrapper owned by quota_ext_admin and granted to an app login does not
 * make the app login an admin (the session role is still the app login);
 * a wrapper that is meant to act for one tenant calls
 * quota_ext.set_tenant(), whose EXECUTE grant is checked against the
 * wrapper's owner as PostgreSQL always does, and then runs in that tenant's
 * context.  What remains (doc/design.md): an admin session that calls a
 * SECURITY DEFINER function owned by a less trusted role, which in turn
 * calls one of the extension's SECURITY DEFINER functions, is judged as
 * the admin.  Admin sessions should not call functions owned by roles they
 * do not trust, as with any SECURITY DEFINER code.
 */
bool
QuotaCallerIsAdmin(void)
{
	Oid			admin = get_role_oid(QUOTA_ADMIN_ROLE, true);

	if (InSecurityRestrictedOperation())
		return false;
	return quota_role_is_admin(GetOuterUserId(), admin) &&
		quota_role_is_admin(GetUserId(), admin);
}

/*
 * QuotaCheckAdmin
 *		For operations across tenants (sweeps, rollups, billing runs,
 *		partition maintenance): the caller must be an admin (see
 *		QuotaCallerIsAdmin) and have no tenant context.  what names the
 *		operation in the error.
 */
void
QuotaCheckAdmin(const char *what)
{
	quota_ctx_adopt();
	if (quota_ctx.valid || !QuotaCallerIsAdmin())
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("%s needs quota_ext_admin and no tenant context", what),
				 errhint("It works across tenants: run it as quota_ext_admin outside a tenant context.")));
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
	quota_ctx_adopt();
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
 * QuotaIdentityResolve
 *		User, key and role a request for tenant_id acts as: the
 *		authenticated caller's by default.  Under a context set from an API
 *		key, explicit arguments must name that same user, key and role — a
 *		key cannot act as another user or key or claim another role (42501);
 *		admin callers (no context, or set_tenant) may name any.  user_arg,
 *		key_arg and role_arg are the argument numbers of fcinfo that carry
 *		them, -1 when the function has no such argument.  Every function
 *		that takes a user, key or role next to a tenant resolves it here
 *		(quota_consume, quota_reserve, rate_limit_apply, ...).
 *
 *		Call after QuotaCheckTenantAccess(tenant_id).
 */
void
QuotaIdentityResolve(FunctionCallInfo fcinfo, int64 tenant_id, int user_arg,
					 int key_arg, int role_arg, QuotaIdentity *id)
{
	bool		own;
	bool		from_key;

	quota_ctx_adopt();
	own = quota_ctx.valid && quota_ctx.tenant_id == tenant_id;
	from_key = own && quota_ctx.key_id != 0;

	memset(id, 0, sizeof(*id));
	if (own)
	{
		id->user_id = quota_ctx.user_id;
		id->key_id = quota_ctx.key_id;
		if (quota_ctx.role[0])
			id->role = quota_ctx.role;
	}
	if (user_arg >= 0 && !PG_ARGISNULL(user_arg))
	{
		int64		v = PG_GETARG_INT64(user_arg);

		if (from_key && v != id->user_id)
			goto impersonation;
		id->user_id = v;
	}
	if (key_arg >= 0 && !PG_ARGISNULL(key_arg))
	{
		int64		v = PG_GETARG_INT64(key_arg);

		if (from_key && v != id->key_id)
			goto impersonation;
		id->key_id = v;
	}
	if (role_arg >= 0 && !PG_ARGISNULL(role_arg))
	{
		char	   *v = text_to_cstring(PG_GETARG_TEXT_PP(role_arg));

		if (from_key && (id->role == NULL || strcmp(v, id->role) != 0))
			goto impersonation;
		id->role = v;
	}
	if (id->user_id < 0 || id->key_id < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("user_id and key_id must be positive")));
	return;

impersonation:
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("an API key's transaction cannot act as another user, key or role"),
			 errhint("Leave user_id, key_id and role NULL: they come from the authenticated key.")));
}

/*
 * quota_ext._identity_resolve(tenant_id bigint, user_id bigint, key_id bigint,
 *		OUT res_user_id bigint, OUT res_key_id bigint)
 *		QuotaIdentityResolve for the PL/pgSQL callers (meter_consume,
 *		gauge_adjust), so that the rule is written once: NULL where neither
 *		the arguments nor the context name a user or key.
 */
Datum
quota_ext_identity_resolve(PG_FUNCTION_ARGS)
{
	QuotaIdentity id;
	Datum		values[2];
	bool		nulls[2];

	QuotaArgNotNull(fcinfo, 0, "tenant_id");
	QuotaIdentityResolve(fcinfo, PG_GETARG_INT64(0), 1, 2, -1, &id);
	values[0] = Int64GetDatum(id.user_id);
	nulls[0] = id.user_id == 0 && PG_ARGISNULL(1);
	values[1] = Int64GetDatum(id.key_id);
	nulls[1] = id.key_id == 0 && PG_ARGISNULL(2);
	PG_RETURN_DATUM(QuotaResultRow(fcinfo, values, nulls));
}

/*
 * quota_ext.current_tenant_id() RETURNS bigint
 *		The tenant of the current transaction, or NULL.  Used by every RLS
 *		policy; STABLE so it is evaluated at execution time, never planned in.
 */
Datum
quota_ext_current_tenant_id(PG_FUNCTION_ARGS)
{
	quota_ctx_adopt();
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
quota_ext_current_context(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[4];
	bool		nulls[4] = {true, true, true, true};

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	quota_ctx_adopt();
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
quota_ext_set_tenant(PG_FUNCTION_ARGS)
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
quota_ext_clear_tenant(PG_FUNCTION_ARGS)
{
	quota_context_clear();
	/* on Citus: the workers drop it too, and a worker does not adopt it again */
	QuotaContextPublish(NULL);
	PG_RETURN_VOID();
}

/*
 * quota_ext._check_tenant_access(tenant_id bigint) RETURNS void
 *		QuotaCheckTenantAccess for the PL/pgSQL admin functions.
 */
Datum
quota_ext_check_tenant_access(PG_FUNCTION_ARGS)
{
	QuotaArgNotNull(fcinfo, 0, "tenant_id");
	QuotaCheckTenantAccess(PG_GETARG_INT64(0));
	PG_RETURN_VOID();
}

/*
 * quota_ext._admin_only(what text) RETURNS void
 *		QuotaCheckAdmin for the PL/pgSQL functions that work across tenants.
 */
Datum
quota_ext_admin_only(PG_FUNCTION_ARGS)
{
	QuotaArgNotNull(fcinfo, 0, "what");
	QuotaCheckAdmin(text_to_cstring(PG_GETARG_TEXT_PP(0)));
	PG_RETURN_VOID();
}
