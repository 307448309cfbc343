/*-------------------------------------------------------------------------
 *
 * storage.c
 *		The hot path's counter rows and usage row, read and written through
 *		the table and index access methods instead of SQL (the storage
 *		module, storage.h).
 *
 * A charge locks its counters by primary key, updates them and appends one
 * usage row.  As SQL statements (SPI), most of that time went into starting
 * the executor for each statement: plan-tree copies, CTE and ModifyTable
 * nodes, partition routing set up from scratch (doc/performance.md, "Why
 * consume is at 0.3x the ceiling").  Here the same rows are touched the way
 * logical replication's apply worker touches them: an index probe, a tuple
 * lock that follows the update chain (table_tuple_lock with
 * TUPLE_LOCK_FLAG_FIND_LAST_VERSION, as SELECT ... FOR NO KEY UPDATE does in
 * READ COMMITTED), ExecSimpleRelationUpdate/Insert (constraints, index
 * entries, triggers; the insert without the partition check when no
 * trigger could change the routed row, as ExecInsert), and
 * ExecFindPartition for the ledger's monthly partitions.
 *
 * The semantics are those of the statements they replace:
 *	- the lock is FOR NO KEY UPDATE, waits (lock_timeout and the deadlock
 *	  detector apply) and, under REPEATABLE READ or SERIALIZABLE, raises
 *	  40001 when the row changed after the snapshot, as nodeLockRows does;
 *	  a deleted row is skipped (its quota no longer applies);
 *	- each call starts with CommandCounterIncrement and a new snapshot, as a
 *	  non-read-only SPI statement does, so the transaction's own earlier
 *	  changes are seen;
 *	- CHECK and NOT NULL constraints, index entries (unique checks), row
 *	  triggers (the foreign key's) and the statistics counters are all the
 *	  executor's own code;
 *	- the rows are touched as the extension's owner, as SPI does here
 *	  (spi.c): the caller's rights were checked before (consume.c, adjust.c).
 * Every usage row and its counter writes go through here (charges,
 * reservations, settlements, releases, refunds; escrow slots too).  The
 * locks without SQL are for single-slot counters of a new charge and for
 * the escrow single-slot charge (QuotaStorageChargeSlot, the SKIP LOCKED
 * statement of storage_slots.c done through the table AM); the exact path's
 * escrow statements are storage_slots.c's.  Where Citus manages the
 * counters, the entry points hand over to storage_spi.c (the slot charge to
 * storage_slots.c's statement).
 *
 *-------------------------------------------------------------------------
 */
#include "quota_ext.h"
#include "storage.h"

#include "access/genam.h"
#include "access/relscan.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_namespace.h"
#include "catalog/pg_type.h"
#include "commands/sequence.h"
#include "commands/trigger.h"
#include "common/int.h"
#include "executor/executor.h"
#include "executor/execPartition.h"
#include "nodes/makefuncs.h"
#include "storage/lmgr.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

/* the relations, found by name once (reset by any relcache invalidation of them) */
static Oid	counters_relid = InvalidOid;
static Oid	usage_relid = InvalidOid;
static Oid	usage_seqid = InvalidOid;
static bool callback_registered = false;
/* Citus manages quota_counters: go through SQL (storage_spi.c); set with the OIDs */
static bool counters_on_citus = false;

/* attribute numbers, by name (the ledger's columns may be in any order) */
enum
{
	U_TENANT, U_USAGE_ID, U_CREATED_AT, U_OCCURRED_AT, U_MODEL, U_USER, U_KEY,
	U_UNITS, U_OVERAGE, U_INPUT, U_OUTPUT, U_PRICE, U_REF, U_RESERVATION,
	U_CALLS, U_KIND, U_COST, U_IDEM, U_METADATA, U_NCOLS
};
static const char *const usage_cols[U_NCOLS] = {
	"tenant_id", "usage_id", "created_at", "occurred_at", "model_id", "user_id",
	"key_id", "units", "overage_units", "input_tokens", "output_tokens",
	"price_id", "ref_usage_id", "reservation_id", "calls", "kind", "cost",
	"idempotency_key", "metadata"
};
static AttrNumber usage_att[U_NCOLS];

enum
{
	C_TENANT, C_QUOTA, C_SLOT, C_PERIOD_START, C_USED, C_ALLOWANCE, C_MASK, C_NCOLS
};
static const char *const counter_cols[C_NCOLS] = {
	"tenant_id", "quota_id", "slot", "period_start", "used", "allowance", "events_mask"
};
static AttrNumber counter_att[C_NCOLS];

/*
 * relcache invalidations of quota_counters seen (QuotaCountersInvalidations):
 * matched against the OID last found, which an invalidation does not reset
 */
static uint64 counters_invalidations = 0;
static Oid	counters_seen = InvalidOid;

static void
storage_invalidate(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == counters_seen)
		counters_invalidations++;
	if (relid == InvalidOid || relid == counters_relid || relid == usage_relid ||
		relid == usage_seqid)
	{
		counters_relid = InvalidOid;
		usage_relid = InvalidOid;
		usage_seqid = InvalidOid;
	}
}

static void
find_columns(Relation rel, const char *const *names, AttrNumber *atts, int n)
{
	TupleDesc	desc = RelationGetDescr(rel);
	int			i;

	for (i = 0; i < n; i++)
	{
		atts[i] = get_attnum(RelationGetRelid(rel), names[i]);
		if (atts[i] == InvalidAttrNumber || atts[i] > desc->natts)
			elog(ERROR, "column \"%s\" of \"%s\" not found", names[i],
				 RelationGetRelationName(rel));
	}
}

/*
 * The relations' OIDs, into *rels: the caller uses its copy, because opening
 * a relation processes invalidations, which may reset the statics.
 */
typedef struct StorageRels
{
	Oid			counters;
	Oid			usage;
	Oid			usage_seq;
} StorageRels;

/*
 * Is relid in Citus's pg_dist_partition (a reference or distributed table, on
 * the coordinator its shell)?  Read when the OIDs are found again, that is
 * once per relcache invalidation of the relations, not per call: without
 * Citus it is one failed name lookup.
 */
static bool
citus_managed(Oid relid)
{
	Oid			dist = get_relname_relid("pg_dist_partition", PG_CATALOG_NAMESPACE);
	Relation	rel;
	SysScanDesc scan;
	ScanKeyData key;
	bool		found;

	if (!OidIsValid(dist))
		return false;
	rel = table_open(dist, AccessShareLock);
	/* logicalrelid is its first column */
	ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_OIDEQ, ObjectIdGetDatum(relid));
	scan = systable_beginscan(rel, InvalidOid, false, NULL, 1, &key);
	found = HeapTupleIsValid(systable_getnext(scan));
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return found;
}

static void
find_relations(StorageRels *rels)
{
	Oid			nsp;
	Relation	rel;

	if (OidIsValid(counters_relid) && OidIsValid(usage_relid) && OidIsValid(usage_seqid))
	{
		rels->counters = counters_relid;
		rels->usage = usage_relid;
		rels->usage_seq = usage_seqid;
		return;
	}
	if (!callback_registered)
	{
		CacheRegisterRelcacheCallback(storage_invalidate, (Datum) 0);
		callback_registered = true;
	}
	nsp = get_namespace_oid(QUOTA_SCHEMA, false);
	counters_relid = get_relname_relid("quota_counters", nsp);
	usage_relid = get_relname_relid("usage", nsp);
	usage_seqid = get_relname_relid("usage_id_seq", nsp);
	if (!OidIsValid(counters_relid) || !OidIsValid(usage_relid) || !OidIsValid(usage_seqid))
		elog(ERROR, "quota_ext's counters or ledger not found");
	counters_seen = counters_relid;
	counters_on_citus = citus_managed(counters_relid);
	rels->counters = counters_relid;
	rels->usage = usage_relid;
	rels->usage_seq = usage_seqid;
	rel = table_open(rels->counters, AccessShareLock);
	find_columns(rel, counter_cols, counter_att, C_NCOLS);
	table_close(rel, AccessShareLock);
	rel = table_open(rels->usage, AccessShareLock);
	find_columns(rel, usage_cols, usage_att, U_NCOLS);
	table_close(rel, AccessShareLock);
}

/*
 * QuotaOnCitus
 *		Does Citus manage quota_ext's counters in this database (after
 *		quota_ext.distribute())?  Known once per relcache invalidation of
 *		the relations, so a cheap test on every call.
 */
bool
QuotaOnCitus(void)
{
	StorageRels	rels;

	find_relations(&rels);
	return counters_on_citus;
}

/*
 * QuotaCountersInvalidations
 *		How many relcache invalidations of quota_counters this backend has
 *		processed, after processing those queued now.  On Citus a change of
 *		a shard's placements (a shard move) invalidates the distributed
 *		table's relcache on every node with metadata, in the transaction
 *		that changes pg_dist_placement (Citus's trigger on it), so a call
 *		that waited for a move's locks sees the number moved (consume.c,
 *		recheck_after_wait).  Any other invalidation moves it too.
 */
uint64
QuotaCountersInvalidations(void)
{
	StorageRels rels;

	find_relations(&rels);
	AcceptInvalidationMessages();
	return counters_invalidations;
}

/* as a non-read-only SPI statement: see earlier changes, a new snapshot */
static Snapshot
storage_snapshot(void)
{
	CommandCounterIncrement();
	PushCopiedSnapshot(GetTransactionSnapshot());
	UpdateActiveSnapshotCommandId();
	return GetActiveSnapshot();
}

/*
 * find_counter
 *		The counter row (tenant, quota, slotno) visible to snapshot, into slot;
 *		with lock, locked FOR NO KEY UPDATE in its latest version (see the
 *		file header).  False when there is none (or it was deleted).
 */
static bool
find_counter(Relation rel, Relation idx, Snapshot snapshot, int64 tenant_id,
			 int64 quota_id, int32 slotno, bool lock, TupleTableSlot *slot)
{
	IndexScanDesc scan;
	ScanKeyData skey[3];
	bool		found;

	ScanKeyInit(&skey[0], 1, BTEqualStrategyNumber, F_INT8EQ, Int64GetDatum(tenant_id));
	ScanKeyInit(&skey[1], 2, BTEqualStrategyNumber, F_INT8EQ, Int64GetDatum(quota_id));
	ScanKeyInit(&skey[2], 3, BTEqualStrategyNumber, F_INT4EQ, Int32GetDatum(slotno));
	scan = QuotaIndexBeginscan(rel, idx, snapshot, 3, 0);
	index_rescan(scan, skey, 3, NULL, 0);
	found = index_getnext_slot(scan, ForwardScanDirection, slot);
	index_endscan(scan);
	if (!found || !lock)
		return found;

	{
		TM_FailureData tmfd;
		TM_Result	res;
		ItemPointerData tid = slot->tts_tid;

		res = table_tuple_lock(rel, &tid, snapshot, slot,
							   GetCurrentCommandId(false),
							   LockTupleNoKeyExclusive, LockWaitBlock,
							   IsolationUsesXactSnapshot() ? 0 :
							   TUPLE_LOCK_FLAG_FIND_LAST_VERSION,
							   &tmfd);
		switch (res)
		{
			case TM_Ok:
				return true;
			case TM_Updated:
				if (IsolationUsesXactSnapshot())
					ereport(ERROR,
							(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
							 errmsg("could not serialize access due to concurrent update")));
				break;
			case TM_Deleted:
				if (IsolationUsesXactSnapshot())
					ereport(ERROR,
							(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
							 errmsg("could not serialize access due to concurrent delete")));
				return false;
			default:
				/* TM_SelfModified: changed by a later command of ours, impossible here */
				break;
		}
		elog(ERROR, "unexpected table_tuple_lock status %u for the counter of quota "
			 INT64_FORMAT, res, quota_id);
		return false;			/* keep compiler quiet */
	}
}

/*
 * QuotaStorageLockCounters
 *		Lock the slot-0 counters of quotas qids[0..n-1] (ascending) of a
 *		tenant, in that order, as SELECT ... FOR NO KEY UPDATE does; found[i]
 *		says whether quota i still has its counter, starts[i] and used[i] are
 *		its values once locked and tids[i] where the locked version is.
 *		escrow[i] says that the row locked carries an allowance: the quota
 *		was laid out over escrow slots since its definition was read
 *		(automatic escrow, escrow_adapt.c).  Locking stops after such a row,
 *		so that the caller can take that quota's other slots before it locks
 *		any later quota (the lock order of doc/design.md section 5).
 *		Returns how many quotas were handled (n unless it stopped early).
 */
int
QuotaStorageLockCounters(int64 tenant_id, const int64 *qids, int n, bool *found,
						TimestampTz *starts, int64 *used, ItemPointerData *tids,
						bool *escrow)
{
	StorageRels	rels;
	Relation	rel;
	Relation	idx;
	TupleTableSlot *slot;
	Snapshot	snapshot;
	int			i;

	find_relations(&rels);
	if (counters_on_citus)
		return QuotaSpiLockCounters(tenant_id, qids, n, found, starts, used, tids, escrow);
	rel = table_open(rels.counters, RowShareLock);
	idx = index_open(QuotaPrimaryKeyIndex(rel), AccessShareLock);
	slot = table_slot_create(rel, NULL);
	snapshot = storage_snapshot();
	for (i = 0; i < n; i++)
	{
		bool		isnull;

		escrow[i] = false;
		found[i] = find_counter(rel, idx, snapshot, tenant_id, qids[i], 0, true, slot);
		if (!found[i])
			continue;
		tids[i] = slot->tts_tid;
		starts[i] = DatumGetTimestampTz(slot_getattr(slot, counter_att[C_PERIOD_START], &isnull));
		used[i] = DatumGetInt64(slot_getattr(slot, counter_att[C_USED], &isnull));
		(void) slot_getattr(slot, counter_att[C_ALLOWANCE], &isnull);
		if (!isnull)
		{
			escrow[i] = true;
			i++;
			break;
		}
	}
	PopActiveSnapshot();
	ExecDropSingleTupleTableSlot(slot);
	index_close(idx, AccessShareLock);
	table_close(rel, NoLock);
	return i;
}

/*
 * The usage row into the partition ExecFindPartition chose: ExecSimple-
 * RelationInsert without its partition check, which ExecInsert also skips
 * for a routed row (the routing proved it), unless before-row triggers
 * could have changed the row; with any trigger or generated column, the
 * whole of ExecSimpleRelationInsert.
 */
static void
storage_insert(ResultRelInfo *rri, EState *estate, TupleTableSlot *slot)
{
	Relation	rel = rri->ri_RelationDesc;
	List	   *recheck = NIL;

	if (rri->ri_TrigDesc != NULL ||
		(rel->rd_att->constr && rel->rd_att->constr->has_generated_stored))
	{
		ExecSimpleRelationInsert(rri, estate, slot);
		return;
	}
	if (rel->rd_att->constr)
		ExecConstraints(rri, slot, estate);
	simple_table_tuple_insert(rel, slot);
	if (rri->ri_NumIndices > 0)
		recheck = QuotaExecInsertIndexTuples(rri, slot, estate, false, false, NULL, NIL);
	list_free(recheck);
}

/* an executor state with the counters (and the ledger, if not NULL) in its range table */
static EState *
storage_estate(Relation counters, Relation usage, Snapshot snapshot)
{
	EState	   *estate = CreateExecutorState();
	RangeTblEntry *c = makeNode(RangeTblEntry);

	c->rtekind = RTE_RELATION;
	c->relid = RelationGetRelid(counters);
	c->relkind = counters->rd_rel->relkind;
	c->rellockmode = RowExclusiveLock;
	if (usage == NULL)
		QuotaExecInitRangeTable(estate, list_make1(c));
	else
	{
		RangeTblEntry *u = makeNode(RangeTblEntry);

		u->rtekind = RTE_RELATION;
		u->relid = RelationGetRelid(usage);
		u->relkind = usage->rd_rel->relkind;
		u->rellockmode = RowExclusiveLock;
		QuotaExecInitRangeTable(estate, list_make2(c, u));
	}
	estate->es_snapshot = snapshot;
	estate->es_output_cid = GetCurrentCommandId(true);
	return estate;
}

/*
 * update_counter
 *		Write *w over the counter version in oldslot (locked by this
 *		transaction): its period, used, allowance and events mask.
 */
static void
update_counter(ResultRelInfo *crel, EState *estate, EPQState *epqstate,
			   TupleTableSlot *oldslot, TupleTableSlot *newslot, const QuotaCounterWrite *w)
{
	int			natts = crel->ri_RelationDesc->rd_att->natts;

	slot_getallattrs(oldslot);
	ExecClearTuple(newslot);
	memcpy(newslot->tts_values, oldslot->tts_values, sizeof(Datum) * natts);
	memcpy(newslot->tts_isnull, oldslot->tts_isnull, sizeof(bool) * natts);
	newslot->tts_values[counter_att[C_USED] - 1] = Int64GetDatum(w->used);
	newslot->tts_values[counter_att[C_PERIOD_START] - 1] = TimestampTzGetDatum(w->start);
	newslot->tts_values[counter_att[C_ALLOWANCE] - 1] = Int64GetDatum(w->allowance);
	newslot->tts_isnull[counter_att[C_ALLOWANCE] - 1] = !w->has_allowance;
	newslot->tts_values[counter_att[C_MASK] - 1] = Int32GetDatum(w->mask);
	ExecStoreVirtualTuple(newslot);
	ExecSimpleRelationUpdate(crel, estate, epqstate, oldslot, newslot);
	ResetPerTupleExprContext(estate);
}

/*
 * QuotaStorageWrite
 *		Write the counter rows w[0..n-1] (locked by this transaction) and
 *		append the usage row *u.  w[i].tid, when valid, is where
 *		QuotaStorageLockCounters found the locked version (else the row is
 *		looked up again by primary key).  Returns the usage row's id.
 */
int64
QuotaStorageWrite(const QuotaUsageRow *u, const QuotaCounterWrite *w, int n)
{
	StorageRels	rels;
	Relation	counters;
	Relation	idx;
	Relation	usage;
	Snapshot	snapshot;
	EState	   *estate;
	EPQState	epqstate;
	ResultRelInfo *crel;
	ResultRelInfo *urel;
	ResultRelInfo *part;
	ModifyTableState *mtstate;
	PartitionTupleRouting *proute;
	TupleTableSlot *oldslot;
	TupleTableSlot *newslot;
	TupleTableSlot *uslot;
	TupleTableSlot *pslot;
	TupleConversionMap *map;
	Datum	   *values;
	bool	   *nulls;
	int64		usage_id;
	int			i;

	find_relations(&rels);
	if (counters_on_citus)
		return QuotaSpiWrite(u, w, n, rels.usage_seq);
	counters = table_open(rels.counters, RowExclusiveLock);
	usage = table_open(rels.usage, RowExclusiveLock);
	idx = index_open(QuotaPrimaryKeyIndex(counters), AccessShareLock);
	snapshot = storage_snapshot();
	estate = storage_estate(counters, usage, snapshot);
	crel = makeNode(ResultRelInfo);
	InitResultRelInfo(crel, counters, 1, NULL, 0);
	urel = makeNode(ResultRelInfo);
	InitResultRelInfo(urel, usage, 2, NULL, 0);
	/* as the apply worker: lets ExecGetTriggerResultRel find them */
	estate->es_opened_result_relations = list_make2(crel, urel);
	QuotaEvalPlanQualInit(&epqstate, estate, NULL, NIL, -1);
	AfterTriggerBeginQuery();

	/*
	 * The counters: locked by this transaction already, so the version this
	 * snapshot sees is the latest (and the one locked, when its place is known).
	 */
	if (n > 0)
	{
		ExecOpenIndices(crel, false);
		oldslot = table_slot_create(counters, &estate->es_tupleTable);
		newslot = table_slot_create(counters, &estate->es_tupleTable);
		for (i = 0; i < n; i++)
		{
			ItemPointerData tid = w[i].tid;

			if (!(ItemPointerIsValid(&tid) &&
				  table_tuple_fetch_row_version(counters, &tid, snapshot, oldslot)) &&
				!find_counter(counters, idx, snapshot, u->tenant_id, w[i].quota_id,
							  w[i].slot, false, oldslot))
				elog(ERROR, "locked counter of quota " INT64_FORMAT " slot %d not found",
					 w[i].quota_id, w[i].slot);
			update_counter(crel, estate, &epqstate, oldslot, newslot, &w[i]);
		}
		ExecCloseIndices(crel);
	}

	/* the usage row, routed to its partition */
	uslot = table_slot_create(usage, &estate->es_tupleTable);
	values = uslot->tts_values;
	nulls = uslot->tts_isnull;
	ExecClearTuple(uslot);
	for (i = 0; i < usage->rd_att->natts; i++)
		nulls[i] = true;
	usage_id = u->usage_id != 0 ? u->usage_id : nextval_internal(rels.usage_seq, false);
	/*
	 * The row's created_at is read after the transaction has an xid (the
	 * insert would take one just after): a rollup that reads the watermark
	 * in between then sees this transaction (_usage_watermark, 50_metering.sql).
	 */
	(void) GetTopTransactionId();
#define SETCOL(col, datum) \
	do { values[usage_att[col] - 1] = (datum); nulls[usage_att[col] - 1] = false; } while (0)
/* a bigint column whose 0 means none: NULL */
#define SETCOL_ID(col, id) \
	do { if ((id) != 0) SETCOL(col, Int64GetDatum(id)); } while (0)
	SETCOL(U_TENANT, Int64GetDatum(u->tenant_id));
	SETCOL(U_USAGE_ID, Int64GetDatum(usage_id));
	SETCOL(U_CREATED_AT, TimestampTzGetDatum(GetCurrentTimestamp()));
	SETCOL(U_OCCURRED_AT, TimestampTzGetDatum(u->occurred_at));
	SETCOL(U_MODEL, Int64GetDatum(u->model_id));
	SETCOL_ID(U_USER, u->user_id);
	SETCOL_ID(U_KEY, u->key_id);
	SETCOL(U_UNITS, Int64GetDatum(u->units));
	SETCOL(U_OVERAGE, Int64GetDatum(u->overage));
	if (u->has_input)
		SETCOL(U_INPUT, Int64GetDatum(u->input_tokens));
	if (u->has_output)
		SETCOL(U_OUTPUT, Int64GetDatum(u->output_tokens));
	SETCOL_ID(U_PRICE, u->price_id);
	SETCOL_ID(U_REF, u->ref_usage_id);
	SETCOL_ID(U_RESERVATION, u->reservation_id);
	SETCOL(U_CALLS, Int32GetDatum(u->calls));
	SETCOL(U_KIND, CStringGetTextDatum(u->kind));
	SETCOL(U_COST, u->cost);
	if (u->idem_key)
		SETCOL(U_IDEM, CStringGetTextDatum(u->idem_key));
	if (u->metadata != (Datum) 0)
		SETCOL(U_METADATA, u->metadata);
#undef SETCOL_ID
#undef SETCOL
	ExecStoreVirtualTuple(uslot);

	mtstate = makeNode(ModifyTableState);
	mtstate->ps.plan = NULL;
	mtstate->ps.state = estate;
	mtstate->operation = CMD_INSERT;
	mtstate->resultRelInfo = urel;
	proute = ExecSetupPartitionTupleRouting(estate, usage);
	part = ExecFindPartition(mtstate, urel, proute, uslot, estate);
	pslot = uslot;
	map = QuotaRootToChildMap(part, estate);
	if (map != NULL)
		pslot = execute_attr_map_slot(map->attrMap, uslot,
									  table_slot_create(part->ri_RelationDesc,
														&estate->es_tupleTable));
	storage_insert(part, estate, pslot);

	AfterTriggerEndQuery(estate);
	ExecCleanupTupleRouting(mtstate, proute);
	EvalPlanQualEnd(&epqstate);
	ExecResetTupleTable(estate->es_tupleTable, false);
	FreeExecutorState(estate);
	PopActiveSnapshot();
	index_close(idx, AccessShareLock);
	table_close(usage, NoLock);
	table_close(counters, NoLock);
	return usage_id;
}

/* one counter row's columns, from slot */
static void
read_counter(TupleTableSlot *slot, int64 quota_id, QuotaCounterWrite *row)
{
	bool		isnull;
	Datum		d;

	memset(row, 0, sizeof(*row));
	row->quota_id = quota_id;
	row->slot = DatumGetInt32(slot_getattr(slot, counter_att[C_SLOT], &isnull));
	row->start = DatumGetTimestampTz(slot_getattr(slot, counter_att[C_PERIOD_START], &isnull));
	row->used = DatumGetInt64(slot_getattr(slot, counter_att[C_USED], &isnull));
	d = slot_getattr(slot, counter_att[C_ALLOWANCE], &isnull);
	row->has_allowance = !isnull;
	row->allowance = isnull ? 0 : DatumGetInt64(d);
	row->mask = DatumGetInt32(slot_getattr(slot, counter_att[C_MASK], &isnull));
	ItemPointerSetInvalid(&row->tid);
}

static void
bigint_out_of_range(void)
{
	ereport(ERROR,
			(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
			 errmsg("bigint out of range")));
}

/*
 * slot_fits
 *		Can slot row r take amount in the period that starts at start?
 *		storage_slots.c's SLOT_FITS: a slot of that period if its allowance
 *		has room, a slot of an older period (it counts as empty) if the
 *		smallest share can hold it, a slot of a newer period never.
 */
static bool
slot_fits(const QuotaCounterWrite *r, TimestampTz start, int64 amount, int64 share)
{
	int64		room;

	if (r->start == start)
	{
		if (!r->has_allowance)
			return false;		/* NULL in SQL: not a slot that fits */
		if (pg_sub_s64_overflow(r->allowance, r->used, &room))
			bigint_out_of_range();
		return room >= amount;
	}
	if (r->start < start)
		return share >= amount;
	return false;
}

/* a slot that fits, with its place in this backend's rotation */
typedef struct SlotCandidate
{
	int64		rank;			/* (slot + first) % slots, then index order */
	ItemPointerData tid;
} SlotCandidate;

static int
candidate_cmp(const void *a, const void *b)
{
	int64		d = ((const SlotCandidate *) a)->rank - ((const SlotCandidate *) b)->rank;

	return d < 0 ? -1 : (d > 0 ? 1 : 0);
}

/*
 * QuotaStorageChargeSlot
 *		The escrow single-slot charge (escrow.c's charge_one_slot): take one
 *		slot of quota_id (of `slots` over `limit`) that can hold amount in
 *		the period that starts at start, trying the slots in rotation from
 *		`first`, and charge it; without waiting (SKIP LOCKED) or, with wait,
 *		waiting for the first slot of the rotation that fits.  What it does is
 *		what storage_slots.c's SLOT_CHARGE statements do (their comment is
 *		the specification; Citus runs them, QuotaSlotChargeOne); here it is
 *		done through the table and index access methods, as the other
 *		counter writes of this file, at a sixth of the statement's cost
 *		(doc/performance.md, "The escrow slot charge without SQL"):
 *
 *		 1. one index scan over the quota's slot rows in a new snapshot (as
 *			the statement's) gives the committed total in the period
 *			(res->before), whether any slot fits (res->any_fits) and the
 *			slots that fit;
 *		 2. they are locked FOR NO KEY UPDATE in rotation order, as the
 *			statement's LockRows does: SKIP LOCKED passes over a slot
 *			another transaction holds; with wait, only the first slot is
 *			tried.  A slot whose latest version (the lock follows the update
 *			chain) no longer fits stops the charge (res->stopped): it stays
 *			locked until the caller's subtransaction rolls back, so it must
 *			not be kept by a charge of a later slot (the statement's
 *			LockRows passes over it and does keep it: a slot held but not
 *			written, which design §5's adjustments do not expect);
 *		 3. the first slot locked that fits is charged: used + amount, or
 *			in a newer period used = amount with its default share
 *			(QuotaSlotShare) and no events yet.
 */
void
QuotaStorageChargeSlot(bool wait, int64 tenant_id, int64 quota_id, TimestampTz start,
					   int64 amount, int64 limit, int slots, int first,
					   QuotaSlotCharge *res)
{
	StorageRels	rels;
	Relation	rel;
	Relation	idx;
	Snapshot	snapshot;
	TupleTableSlot *slot;
	IndexScanDesc scan;
	ScanKeyData skey[2];
	SlotCandidate *cands;
	int			ncands = 0;
	int			cap = 16;
	int			nseen = 0;
	int64		share;
	int			i;

	find_relations(&rels);
	if (counters_on_citus)
	{
		QuotaSlotChargeOne(wait, tenant_id, quota_id, start, amount, limit, slots, first, res);
		return;
	}
	if (slots < 1)
		elog(ERROR, "escrow quota " INT64_FORMAT " has %d slots", quota_id, slots);
	share = limit / slots;		/* the smallest share */
	memset(res, 0, sizeof(*res));
	rel = table_open(rels.counters, RowExclusiveLock);
	idx = index_open(QuotaPrimaryKeyIndex(rel), AccessShareLock);
	slot = table_slot_create(rel, NULL);
	snapshot = storage_snapshot();

	/* 1. the slots as of the snapshot */
	cands = palloc(sizeof(SlotCandidate) * cap);
	ScanKeyInit(&skey[0], 1, BTEqualStrategyNumber, F_INT8EQ, Int64GetDatum(tenant_id));
	ScanKeyInit(&skey[1], 2, BTEqualStrategyNumber, F_INT8EQ, Int64GetDatum(quota_id));
	scan = QuotaIndexBeginscan(rel, idx, snapshot, 2, 0);
	index_rescan(scan, skey, 2, NULL, 0);
	while (index_getnext_slot(scan, ForwardScanDirection, slot))
	{
		QuotaCounterWrite r;

		read_counter(slot, quota_id, &r);
		if (r.start == start && pg_add_s64_overflow(res->before, r.used, &res->before))
			bigint_out_of_range();
		if (!slot_fits(&r, start, amount, share))
			continue;
		res->any_fits = true;
		if (ncands == cap)
		{
			cap *= 2;
			cands = repalloc(cands, sizeof(SlotCandidate) * cap);
		}
		cands[ncands].rank = ((((int64) r.slot + first) % slots) << 32) + nseen++;
		cands[ncands].tid = slot->tts_tid;
		ncands++;
	}
	index_endscan(scan);
	qsort(cands, ncands, sizeof(SlotCandidate), candidate_cmp);
	if (wait && ncands > 1)
		ncands = 1;

	/* 2. lock them in rotation order until one still fits */
	for (i = 0; i < ncands && !res->charged && !res->stopped; i++)
	{
		TM_FailureData tmfd;
		TM_Result	lockres;
		ItemPointerData tid = cands[i].tid;
		QuotaCounterWrite r;

		lockres = table_tuple_lock(rel, &tid, snapshot, slot,
								   GetCurrentCommandId(false),
								   LockTupleNoKeyExclusive,
								   wait ? LockWaitBlock : LockWaitSkip,
								   IsolationUsesXactSnapshot() ? 0 :
								   TUPLE_LOCK_FLAG_FIND_LAST_VERSION,
								   &tmfd);
		switch (lockres)
		{
			case TM_Ok:
				break;
			case TM_WouldBlock:
			case TM_SelfModified:
				continue;		/* held by another; or changed by us: as LockRows */
			case TM_Updated:
			case TM_Deleted:
				if (IsolationUsesXactSnapshot())
					ereport(ERROR,
							(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
							 errmsg("could not serialize access due to concurrent %s",
									lockres == TM_Updated ? "update" : "delete")));
				if (lockres == TM_Deleted)
					continue;	/* a re-layout removed it */
				/* FALLTHROUGH */
			default:
				elog(ERROR, "unexpected table_tuple_lock status %u for a slot of quota "
					 INT64_FORMAT, lockres, quota_id);
		}
		/* the locked version: the latest (a newer one when tmfd.traversed) */
		read_counter(slot, quota_id, &r);
		if (!slot_fits(&r, start, amount, share))
		{
			res->stopped = true;
			break;
		}

		/* 3. charge it */
		if (r.start < start)
		{
			r.used = amount;
			r.has_allowance = true;
			r.allowance = QuotaSlotShare(limit, slots, r.slot);
			r.mask = 0;
			r.start = start;
		}
		else if (pg_add_s64_overflow(r.used, amount, &r.used))
			bigint_out_of_range();
		{
			EState	   *estate = storage_estate(rel, NULL, snapshot);
			ResultRelInfo *crel = makeNode(ResultRelInfo);
			EPQState	epqstate;
			TupleTableSlot *newslot = table_slot_create(rel, &estate->es_tupleTable);

			InitResultRelInfo(crel, rel, 1, NULL, 0);
			estate->es_opened_result_relations = list_make1(crel);
			QuotaEvalPlanQualInit(&epqstate, estate, NULL, NIL, -1);
			AfterTriggerBeginQuery();
			ExecOpenIndices(crel, false);
			update_counter(crel, estate, &epqstate, slot, newslot, &r);
			ExecCloseIndices(crel);
			AfterTriggerEndQuery(estate);
			EvalPlanQualEnd(&epqstate);
			ExecResetTupleTable(estate->es_tupleTable, false);
			FreeExecutorState(estate);
		}
		res->charged = true;
		res->row = r;
	}
	pfree(cands);
	PopActiveSnapshot();
	ExecDropSingleTupleTableSlot(slot);
	index_close(idx, AccessShareLock);
	table_close(rel, NoLock);
}
