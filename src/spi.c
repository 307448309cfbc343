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
 * Queries are written fully qualified: tables as quota_ext.t, functions as
 * pg_catalog.f(), every operator as OPERATOR(pg_catalog.=), no IN lists and
 * no CASE x WHEN (both pick operators by search_path).  This matters because
 * since PostgreSQL 9.3 the plan cache re-plans a kept plan under the
 * caller's *current* search_path whenever that path changes; with nothing
 * left to resolve by path, a hostile path (an evil schema or pg_temp first)
 * cannot capture anything, and ordinary callers, whose path does not
 * change, keep one plan.  Plans are prepared once per backend and kept with
 * SPI_keepplan.  Only SQL text in this file's
 * callers' static QuotaPlan structs is ever executed: nothing is built from
 * strings.
 *
 *-------------------------------------------------------------------------
 */
#include "quota_ext.h"

#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "catalog/pg_namespace.h"
#include "miscadmin.h"
#include "utils/inval.h"
#include "utils/syscache.h"

static Oid	quota_owner = InvalidOid;
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
		ReleaseSysCache(tup);
	}
	return quota_owner;
}

/*
 * QuotaSpiBegin
 *		Connect to SPI and become the extension owner.
 */
void
QuotaSpiBegin(QuotaSpiState *state)
{
	Oid			owner = QuotaOwnerId();

	GetUserIdAndSecContext(&state->save_userid, &state->save_sec_context);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	SetUserIdAndSecContext(owner,
						   state->save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
}

/*
 * QuotaSpiEnd
 *		Become the caller again and disconnect from SPI.  Memory returned by
 *		SPI must have been copied out before.
 */
void
QuotaSpiEnd(QuotaSpiState *state)
{
	SetUserIdAndSecContext(state->save_userid, state->save_sec_context);
	if (SPI_finish() != SPI_OK_FINISH)
		elog(ERROR, "SPI_finish failed");
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
