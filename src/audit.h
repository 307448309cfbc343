/*-------------------------------------------------------------------------
 *
 * audit.h
 *		Settings of the audit trail (audit.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef QUOTA_AUDIT_H
#define QUOTA_AUDIT_H

#include "quota_ext.h"

extern void QuotaAuditInit(void);

#endif							/* QUOTA_AUDIT_H */
