/*-------------------------------------------------------------------------
 *
 * audit.c
 *		Settings of the audit trail.
 *
 * The audit trail itself is SQL: _audit() records every administrative
 * change (sql/install/05_audit.sql) and audit_purge() removes old rows
 * (sql/install/60_observability.sql).  The one setting it reads,
 * quota_ext.audit_retention_global, is defined here so that it exists (with
 * its description) as soon as the library is loaded.
 *
 *-------------------------------------------------------------------------
 */
#include "quota_ext.h"
#include "audit.h"

#include "utils/guc.h"

/* quota_ext.audit_retention_global: read by quota_ext.audit_purge() */
static char *audit_retention_global = NULL;

/*
 * QuotaAuditInit
 *		Called by _PG_init.
 */
void
QuotaAuditInit(void)
{
	DefineCustomStringVariable("quota_ext.audit_retention_global",
							   "How long audit rows of global changes (tenant 0) are kept.",
							   "An interval; empty means the longest audit_retention of any tier.",
							   &audit_retention_global,
							   "",
							   PGC_SUSET,
							   0,
							   NULL, NULL, NULL);
}
