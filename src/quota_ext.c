/*-------------------------------------------------------------------------
 *
 * quota_ext.c
 *		Module entry point: _PG_init delegates to each subsystem.
 *
 * The library is meant to be listed in shared_preload_libraries, because
 * the rate limiter keeps its buckets in shared memory.  Everything else also
 * works when the library is loaded on first use; functions that need the
 * shared memory say so with SQLSTATE 55000.
 *
 *-------------------------------------------------------------------------
 */
#include "quota_ext.h"

#include "miscadmin.h"
#include "utils/guc.h"

PG_MODULE_MAGIC;

/* true when _PG_init ran in the postmaster (shared_preload_libraries) */
bool		QuotaPreloaded = false;

void		_PG_init(void);

void
_PG_init(void)
{
	QuotaPreloaded = process_shared_preload_libraries_in_progress;

	QuotaContextInit();
	QuotaCacheInit();
	QuotaAuthInit();
	QuotaRateLimitInit();
	QuotaMeteringInit();
	QuotaStatsInit();

	MarkGUCPrefixReserved("quota_ext");
}

/*
 * QuotaArgNotNull
 *		Raise 22004 when argument argno is NULL.  The functions are not
 *		STRICT: a NULL gets a clear error instead of a silent NULL result.
 */
void
QuotaArgNotNull(FunctionCallInfo fcinfo, int argno, const char *name)
{
	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("argument \"%s\" must not be null", name)));
}
