/*-------------------------------------------------------------------------
 *
 * args.h
 *		Argument helpers for every module (args.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef QUOTA_ARGS_H
#define QUOTA_ARGS_H

#include "quota_ext.h"
#include "fmgr.h"

/* argument helpers for every module (args.c) */
extern void QuotaArgNotNull(FunctionCallInfo fcinfo, int argno, const char *name);
extern const char *QuotaQuoteInput(const char *s);
extern Datum QuotaResultRow(FunctionCallInfo fcinfo, Datum *values, bool *nulls);

#endif							/* QUOTA_ARGS_H */
