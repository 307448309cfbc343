/*-------------------------------------------------------------------------
 *
 * compat.h
 *		The one place where PostgreSQL-version differences are handled.
 *
 * quota_ext supports PostgreSQL 15, 16, 17 and 18 (15, 17 and 18 are built
 * and tested in CI: doc/testing.md; 16 only built for).  Everything that
 * changed between them and that the extension touches is wrapped here, so
 * the other files are written once against the names below.
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

/*
 * pg_noreturn: 18 replaced pg_attribute_noreturn(), written after a
 * declaration, by pg_noreturn, written before it.  Before 18 the same
 * attribute goes before the declaration too (GCC and Clang accept it there).
 * Declarations are written "pg_noreturn extern void f(void);".
 */
#if PG_VERSION_NUM < 180000
#define pg_noreturn pg_attribute_noreturn()
#endif

/*
 * QUOTA_ARG_SINCE_16(x), QUOTA_ARG_SINCE_18(x): ", x" from that version on,
 * nothing before, for the functions to which a version added an argument.
 * The wrappers below are then written once:
 *   index_beginscan: 18 added the instrumentation (EXPLAIN ANALYZE's index
 *     searches counter) argument; the extension's probes count nothing.
 *   RelationGetPrimaryKeyIndex: 18 added deferrable_ok; true keeps the
 *     meaning of the earlier versions (the primary key's index, deferrable or
 *     not; the extension's own primary keys are never deferrable).
 *   ExecInsertIndexTuples: 16 added onlySummarizing (false: every index).
 *   EvalPlanQualInit: 16 added resultRelations (NIL, as the apply worker).
 */
#if PG_VERSION_NUM >= 160000
#define QUOTA_ARG_SINCE_16(x) , x
#else
#define QUOTA_ARG_SINCE_16(x)
#endif
#if PG_VERSION_NUM >= 180000
#define QUOTA_ARG_SINCE_18(x) , x
#else
#define QUOTA_ARG_SINCE_18(x)
#endif

#define QuotaIndexBeginscan(heap, index, snapshot, nkeys, norderbys) \
	index_beginscan(heap, index, snapshot QUOTA_ARG_SINCE_18(NULL), nkeys, norderbys)
#define QuotaPrimaryKeyIndex(rel) RelationGetPrimaryKeyIndex(rel QUOTA_ARG_SINCE_18(true))
#define QuotaExecInsertIndexTuples(rri, slot, estate, update, noDupErr, specConflict, arbiters) \
	ExecInsertIndexTuples(rri, slot, estate, update, noDupErr, specConflict, arbiters \
						  QUOTA_ARG_SINCE_16(false))
#define QuotaEvalPlanQualInit(epq, estate, subplan, rowmarks, param) \
	EvalPlanQualInit(epq, estate, subplan, rowmarks, param QUOTA_ARG_SINCE_16(NIL))

/*
 * QuotaRootToChildMap: the map from a partitioned table's rows to a
 * partition's (NULL when they match).  16 made it lazily built, read through
 * ExecGetRootToChildMap().
 */
#if PG_VERSION_NUM >= 160000
#define QuotaRootToChildMap(rri, estate) ExecGetRootToChildMap(rri, estate)
#else
#define QuotaRootToChildMap(rri, estate) ((rri)->ri_RootToPartitionMap)
#endif

/*
 * QuotaExecInitRangeTable: the executor's range table for relation RTEs
 * built by hand (src/storage.c).  16 moved the permission details out of the
 * RTEs into RTEPermissionInfo entries that each RTE points to (an RTE with
 * perminfoindex 0 fails with "invalid perminfoindex 0 in RTE"): one entry
 * per RTE is added here, as the logical replication apply worker does.  18
 * added the set of unpruned range table indexes: all of them.  The
 * permissions themselves are checked elsewhere (consume.c, adjust.c), not here.
 */
#if PG_VERSION_NUM >= 160000
#define QuotaExecInitRangeTable(estate, rtable) quota_exec_init_range_table(estate, rtable)
#include "executor/executor.h"
#include "parser/parse_relation.h"
static inline void
quota_exec_init_range_table(EState *estate, List *rtable)
{
	List	   *perminfos = NIL;
	ListCell   *lc;

	foreach(lc, rtable)
		addRTEPermissionInfo(&perminfos, (RangeTblEntry *) lfirst(lc));
#if PG_VERSION_NUM >= 180000
	ExecInitRangeTable(estate, rtable, perminfos,
					   bms_add_range(NULL, 1, list_length(rtable)));
#else
	ExecInitRangeTable(estate, rtable, perminfos);
#endif
}
#else
#define QuotaExecInitRangeTable(estate, rtable) ExecInitRangeTable(estate, rtable)
#endif

/*
 * QuotaMyProcNumber: this backend's number among the PGPROCs (0 ..
 * MaxBackends + auxiliary processes).  17 removed PGPROC.pgprocno in favour
 * of MyProcNumber.
 */
#if PG_VERSION_NUM >= 170000
#define QuotaMyProcNumber() ((int) MyProcNumber)
#else
#define QuotaMyProcNumber() (MyProc->pgprocno)
#endif

#endif							/* QUOTA_COMPAT_H */
