/*-------------------------------------------------------------------------
 *
 * spi.c
 *		Privileged SPI: how every C function of quota_ext reads and writes
 *		its tables.
 *
 * The SQL-callable C functions are not SECURITY DEFINER.  Callers get
 * EXECUTE through the two roles (quota_ext_app, quota_ext_admin) and never
 * any privilege on the tables themselves beyond SELECT under row-level
 * security.  Around each use of SPI the function switches the current user
 * to the owner of the quota_ext schema (the superuser who ran CREATE
 * EXTENSION) with SECURITY_LOCAL_USERID_CHANGE, exactly as SECURITY DEFINER
 * would, but without the per-call GUC save/restore of a SET clause and
 * keeping GetUserId() equal to the real caller for privilege checks made
 * before the switch.  An ERROR restores the user through (sub)transaction
 * abort, so no PG_TRY is needed.
 *
 * Name capture is made impossible twice over (doc/design.md §2):
 *
 * 1. The path is pinned.  Between QuotaSpiBegin and QuotaSpiEnd the
 *    search_path is "pg_catalog, pg_temp", exactly as the SET clause of a
 *    SECURITY DEFINER function would make it: pg_catalog first for every
 *    kind of name, pg_temp last (it is searched first for relations and
 *    types unless the path names it), no schema of the caller's at all.
 *    The plan cache re-plans a kept plan whenever the current path differs
 *    from the one it was planned under, so the pin holds at planning *and*
 *    at every re-plan; and since every call pins the same path, kept plans
 *    stay valid.  A caller that already runs under this path (the SQL
 *    functions of the extension, which SET it) pays nothing.
 * 2. The texts are qualified: tables as quota_ext.t, types and casts as
 *    pg_catalog.int8 or quota_ext.t, functions as pg_catalog.f(), every
 *    operator as OPERATOR(pg_catalog.=), no IN lists and no CASE x WHEN
 *    (both pick operators by path).  test/t/000_script_hygiene.pl checks
 *    the texts statically; test/sql/search_path_all.sql runs the whole API
 *    under hostile paths with pg_temp shadowing every name the extension
 *    uses.
 *
 * Plans are prepared once per backend and kept with SPI_keepplan.  Only SQL
 * text in this file's callers' static QuotaPlan structs is ever executed:
 * nothing is built from strings.
 *
 *-------------------------------------------------------------------------
 */
#include "quota_ext.h"
#include "spi.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_namespace.h"
#include "miscadmin.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/resowner.h"
#include "utils/syscache.h"

static Oid	quota_owner = InvalidOid;
static Oid	quota_schema = InvalidOid;
static bool quota_owner_callback_registered = false;

static void
quota_owner_invalidate(Datum arg, int cacheid, uint32 hashvalue)
{
	quota_owner = InvalidOid;
}

/*
 * QuotaOwnerId
 *		The owner of the quota_ext schema, cached until pg_namespace changes.
 */
Oid
QuotaOwnerId(void)
{
	if (!OidIsValid(quota_owner))
	{
		Oid			nsp;
		HeapTuple	tup;

		if (!quota_owner_callback_registered)
		{
			CacheRegisterSyscacheCallback(NAMESPACEOID, quota_owner_invalidate,
										  (Datum) 0);
			quota_owner_callback_registered = true;
		}
		nsp = get_namespace_oid(QUOTA_SCHEMA, true);
		if (!OidIsValid(nsp))
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("extension \"quota_ext\" is not installed in this database"),
					 errhint("Run CREATE EXTENSION quota_ext.")));
		tup = SearchSysCache1(NAMESPACEOID, ObjectIdGetDatum(nsp));
		if (!HeapTupleIsValid(tup))
			elog(ERROR, "cache lookup failed for namespace %u", nsp);
		quota_owner = ((Form_pg_namespace) GETSTRUCT(tup))->nspowner;
		quota_schema = nsp;
		ReleaseSysCache(tup);
	}
	return quota_owner;
}

/*
 * QuotaSchemaOid
 *		The quota_ext schema, cached with its owner: a new one at every
 *		CREATE EXTENSION (automatic escrow keys its shared notes with it).
 */
Oid
QuotaSchemaOid(void)
{
	(void) QuotaOwnerId();
	return quota_schema;
}

/* the path everything the extension runs as its owner resolves names in */
#define QUOTA_PINNED_PATH "pg_catalog, pg_temp"

/*
 * QuotaSpiBegin
 *		Connect to SPI, pin the search_path and become the extension owner.
 */
void
QuotaSpiBegin(QuotaSpiState *state)
{
	Oid			owner = QuotaOwnerId();

	GetUserIdAndSecContext(&state->save_userid, &state->save_sec_context);
	state->guc_nest_level = 0;
	if (namespace_search_path == NULL ||
		strcmp(namespace_search_path, QUOTA_PINNED_PATH) != 0)
	{
		/* as fmgr_security_definer does for a SET clause */
		state->guc_nest_level = NewGUCNestLevel();
		(void) set_config_option("search_path", QUOTA_PINNED_PATH,
								 PGC_USERSET, PGC_S_SESSION,
								 GUC_ACTION_SAVE, true, 0, false);
	}
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	SetUserIdAndSecContext(owner,
						   state->save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
}

/*
 * QuotaSpiEnd
 *		Become the caller again, disconnect from SPI and give the caller its
 *		search_path back.  Memory returned by
 *		SPI must have been copied out before.
 */
void
QuotaSpiEnd(QuotaSpiState *state)
{
	SetUserIdAndSecContext(state->save_userid, state->save_sec_context);
	if (SPI_finish() != SPI_OK_FINISH)
		elog(ERROR, "SPI_finish failed");
	/* an ERROR before this point restores the path through (sub)xact abort */
	if (state->guc_nest_level > 0)
		AtEOXact_GUC(true, state->guc_nest_level);
}

/*
 * quota_prepare
 *		Prepare and keep plan->sql (fully qualified, see above).
 */
static void
quota_prepare(QuotaPlan *plan)
{
	SPIPlanPtr	p;

	p = SPI_prepare(plan->sql, plan->nargs, plan->argtypes);
	if (p == NULL)
		elog(ERROR, "SPI_prepare failed for \"%s\": %s",
			 plan->sql, SPI_result_code_string(SPI_result));
	if (SPI_keepplan(p) != 0)
		elog(ERROR, "SPI_keepplan failed");
	plan->plan = p;
}

/*
 * QuotaSpiExec
 *		Execute a kept plan (preparing it on first use).  Returns the SPI
 *		result code; SPI_tuptable and SPI_processed hold the rows.
 */
int
QuotaSpiExec(QuotaPlan *plan, Datum *values, const char *nulls,
			 bool read_only, long tcount)
{
	int			rc;

	if (plan->plan == NULL)
		quota_prepare(plan);
	rc = SPI_execute_plan(plan->plan, values, nulls, read_only, tcount);
	if (rc < 0)
		elog(ERROR, "SPI_execute_plan failed for \"%s\": %s",
			 plan->sql, SPI_result_code_string(rc));
	return rc;
}

/*
 * QuotaSpiRow
 *		Execute a kept plan whose parameters are ($1 tenant_id, $2 id), both
 *		int8, that returns at most one row; the row (its descriptor is
 *		SPI_tuptable->tupdesc), or NULL when there is none.
 */
HeapTuple
QuotaSpiRow(QuotaPlan *plan, int64 tenant_id, int64 id)
{
	Datum		values[2];

	values[0] = Int64GetDatum(tenant_id);
	values[1] = Int64GetDatum(id);
	QuotaSpiExec(plan, values, NULL, false, 1);
	return SPI_processed == 1 ? SPI_tuptable->vals[0] : NULL;
}

/*
 * QuotaSpiRowValue
 *		QuotaSpiRow's row's first column: true with it in *value when there
 *		is a row and that column is not NULL.
 */
bool
QuotaSpiRowValue(QuotaPlan *plan, int64 tenant_id, int64 id, Datum *value)
{
	HeapTuple	tup = QuotaSpiRow(plan, tenant_id, id);
	bool		isnull;

	if (tup == NULL)
		return false;
	*value = SPI_getbinval(tup, SPI_tuptable->tupdesc, 1, &isnull);
	return !isnull;
}

/*
 * QuotaSubxactAbort
 *		In the PG_CATCH of an internal subtransaction begun (with
 *		BeginInternalSubTransaction) in memory context cxt under resource
 *		owner owner: take the error, roll the subtransaction back, and
 *		return to cxt and owner.  Returns the error, copied into cxt, for
 *		the caller to report or rethrow.
 */
ErrorData *
QuotaSubxactAbort(MemoryContext cxt, ResourceOwner owner)
{
	ErrorData  *edata;

	MemoryContextSwitchTo(cxt);
	edata = CopyErrorData();
	FlushErrorState();
	RollbackAndReleaseCurrentSubTransaction();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;
	return edata;
}
