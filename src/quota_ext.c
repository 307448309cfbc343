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

#include "mb/pg_wchar.h"
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

/*
 * QuotaQuoteInput
 *		A caller's text as an error message may quote it: at most
 *		QUOTA_QUOTE_MAX_CHARS characters, cut on a character boundary and
 *		marked with "..." when cut.  An error must not echo a megabyte of
 *		input into the log and back to the client (issue 12, finding 13);
 *		quota_ext._quote_input() is the same rule for PL/pgSQL.
 */
const char *
QuotaQuoteInput(const char *s)
{
	int			len;
	int			cut;

	if (s == NULL)
		return "";
	len = strlen(s);
	if (len <= QUOTA_QUOTE_MAX_CHARS)
		return s;
	/* the byte length of the first QUOTA_QUOTE_MAX_CHARS characters */
	cut = pg_mbcharcliplen(s, len, QUOTA_QUOTE_MAX_CHARS);
	if (cut >= len)
		return s;
	return psprintf("%.*s...", cut, s);
}
