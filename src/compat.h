/*-------------------------------------------------------------------------
 *
 * compat.h
 *		The one place where PostgreSQL-version differences are handled.
 *
 * quota_ext targets PostgreSQL 15 first.  Everything that changed in 16 or
 * 17 and that the extension touches is wrapped here, so the other files are
 * written once against the names below.
 *
 *-------------------------------------------------------------------------
 */
#ifndef QUOTA_COMPAT_H
#define QUOTA_COMPAT_H

#include "postgres.h"

#if PG_VERSION_NUM < 150000
#error "quota_ext requires PostgreSQL 15 or later"
#endif

/* 16 moved the varlena helpers for text into varatt.h */
#if PG_VERSION_NUM >= 160000
#include "varatt.h"
#endif

/* 15 calls the forced-parallel setting force_parallel_mode, 16 renamed it */
#if PG_VERSION_NUM >= 160000
#define QUOTA_GUC_DEBUG_PARALLEL "debug_parallel_query"
#else
#define QUOTA_GUC_DEBUG_PARALLEL "force_parallel_mode"
#endif

/* 16 added the permission infos to the executor's range table */
#if PG_VERSION_NUM >= 160000
#define QuotaExecInitRangeTable(estate, rtable) ExecInitRangeTable(estate, rtable, NIL)
#else
#define QuotaExecInitRangeTable(estate, rtable) ExecInitRangeTable(estate, rtable)
#endif

#endif							/* QUOTA_COMPAT_H */
