/*-------------------------------------------------------------------------
 *
 * storage_spi.c
 *		storage.c's counter locks and writes as SQL statements, for a
 *		database where Citus manages quota_counters (issue 16).
 *
 * storage.c touches the relations it finds by name: on a Citus coordinator
 * that is the empty shell of a distributed table, on a worker the
 * extension's local table, never the tenant's shard.  Here the same rows
 * are read and written by statements that name tenant_id, which Citus
 * routes to the one shard holding the tenant (locally in a call delegated
 * to the worker that holds it, doc/scaling.md).  The semantics are those of
 * storage.c: SELECT ... FOR NO KEY UPDATE in the caller's order (a deleted
 * counter is not found), one UPDATE per counter row, one INSERT of the
 * usage row; all as the extension's owner in the caller's SPI connection.
 * Each UPDATE of a locked counter is a compare-and-set against the values
 * read under the lock (QuotaSpiWriteCounter says why: shard moves).
 *
 * Usage ids are unique across nodes: the node's own usage_id_seq gives n
 * and the id is group * 2^48 + n, group being the node's Citus group id
 * (0 on the coordinator, so its ids, and every id made before distribute(),
 * are the sequence's own).  A sequence Citus already moved into the node's
 * block (n >= 2^48 in that block) is used as it is.
 *
 *-------------------------------------------------------------------------
 */
#include "quota_ext.h"
#include "storage.h"
#include "spi.h"

#include "access/genam.h"
#include "access/table.h"
#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_namespace.h"
#include "catalog/pg_type.h"
#include "commands/sequence.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"

#define USAGE_ID_GROUP_SHIFT 48

/*
 * This node's Citus group id (pg_dist_local_group.groupid, its only row;
 * 0 on the coordinator).
 */
static int32
citus_local_group(void)
{
	Oid			relid = get_relname_relid("pg_dist_local_group", PG_CATALOG_NAMESPACE);
	Relation	rel;
	SysScanDesc scan;
	HeapTuple	tup;
	int32		group = 0;

	if (!OidIsValid(relid))
		return 0;
	rel = table_open(relid, AccessShareLock);
	scan = systable_beginscan(rel, InvalidOid, false, NULL, 0, NULL);
	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup))
	{
		bool		isnull;
		Datum		d = heap_getattr(tup, 1, RelationGetDescr(rel), &isnull);

		if (!isnull)
			group = DatumGetInt32(d);
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return group;
}

/* the next usage id of this node (see the file header) */
static int64
spi_usage_id(Oid usage_seq)
{
	int64		n = nextval_internal(usage_seq, false);
	int64		group = citus_local_group();

	if ((n >> USAGE_ID_GROUP_SHIFT) == group)
		return n;
	if ((n >> USAGE_ID_GROUP_SHIFT) == 0)
		return (group << USAGE_ID_GROUP_SHIFT) | n;
	ereport(ERROR,
			(errcode(ERRCODE_SEQUENCE_GENERATOR_LIMIT_EXCEEDED),
			 errmsg("quota_ext.usage_id_seq on this node is past its block of usage ids"),
			 errdetail("Usage ids on Citus are group * 2^48 + n; this node (group " INT64_FORMAT
					   ") got n = " INT64_FORMAT ".", group, n)));
	return 0;					/* keep compiler quiet */
}

int
QuotaSpiLockCounters(int64 tenant_id, const int64 *qids, int n, bool *found,
					 TimestampTz *starts, int64 *used, ItemPointerData *tids,
					 bool *escrow)
{
	static QuotaPlan lock = {
		"SELECT c.period_start, c.used, c.allowance IS NOT NULL "
		"FROM quota_ext.quota_counters c "
		"WHERE c.tenant_id OPERATOR(pg_catalog.=) $1 "
		"  AND c.quota_id OPERATOR(pg_catalog.=) $2 "
		"  AND c.slot OPERATOR(pg_catalog.=) 0 "
		"FOR NO KEY UPDATE",
		2, {INT8OID, INT8OID}
	};
	Datum		values[2];
	int			i;

	values[0] = Int64GetDatum(tenant_id);
	for (i = 0; i < n; i++)
	{
		HeapTuple	tup;
		TupleDesc	desc;
		bool		isnull;

		values[1] = Int64GetDatum(qids[i]);
		QuotaSpiExec(&lock, values, NULL, false, 1);
		escrow[i] = false;
		ItemPointerSetInvalid(&tids[i]);
		found[i] = SPI_processed > 0;
		if (!found[i])
			continue;
		tup = SPI_tuptable->vals[0];
		desc = SPI_tuptable->tupdesc;
		starts[i] = DatumGetTimestampTz(SPI_getbinval(tup, desc, 1, &isnull));
		used[i] = DatumGetInt64(SPI_getbinval(tup, desc, 2, &isnull));
		if (DatumGetBool(SPI_getbinval(tup, desc, 3, &isnull)))
		{
			/* laid out over escrow slots since: stop here, as storage.c */
			escrow[i] = true;
			return i + 1;
		}
	}
	return n;
}

/*
 * QuotaSpiWriteCounter
 *		Write one counter row of tenant_id: the Citus path of QuotaSpiWrite,
 *		a slot row escrow.c lays out, and a row _counters_lay_out writes.  A
 *		row that exists is updated in place (a call waiting for it follows
 *		the update to the new version, where a deleted row would tell it
 *		that the quota is gone).
 *
 *		Without insert the caller locked the row and read it (w->seen), and
 *		the write is a compare-and-set: the row must still be as read (used
 *		and period_start, and the allowance of a slot row read whole), else
 *		40001.  On Citus the lock is a SELECT ... FOR NO KEY UPDATE, which
 *		Citus runs as a read, taking no shard metadata lock: a shard move
 *		(block_writes) may copy the shard and switch its placement between
 *		that lock and this UPDATE, which Citus then routes to the new
 *		placement, where another transaction may have counted meanwhile.
 *		Writing the absolute value there would lose that count (the session
 *		8 review's H2 and M1, doc/scaling.md); the comparison finds it.  Once
 *		the UPDATE has run, Citus holds the shard's metadata lock until the
 *		transaction ends, so a later write of the same transaction cannot be
 *		moved under.  Equal values are safe to overwrite: used is a sum, and
 *		the new value was computed from the old one in the same period.
 *		The events mask is not compared (a lost bit repeats one event).
 *
 *		With insert (_counters_lay_out, PL/pgSQL re-layouts, which pass no
 *		values read) the row is written as it is, or inserted when missing.
 */
void
QuotaSpiWriteCounter(int64 tenant_id, const QuotaCounterWrite *w, bool insert)
{
	static QuotaPlan update = {
		"UPDATE quota_ext.quota_counters "
		"SET used = $4, period_start = $5, allowance = $6, events_mask = $7 "
		"WHERE tenant_id OPERATOR(pg_catalog.=) $1 AND quota_id OPERATOR(pg_catalog.=) $2 "
		"  AND slot OPERATOR(pg_catalog.=) $3",
		7, {INT8OID, INT8OID, INT4OID, INT8OID, TIMESTAMPTZOID, INT8OID, INT4OID}
	};
	static QuotaPlan compare_and_set = {
		"UPDATE quota_ext.quota_counters c "
		"SET used = $4, period_start = $5, allowance = $6, events_mask = $7 "
		"WHERE c.tenant_id OPERATOR(pg_catalog.=) $1 AND c.quota_id OPERATOR(pg_catalog.=) $2 "
		"  AND c.slot OPERATOR(pg_catalog.=) $3 "
		"  AND c.used OPERATOR(pg_catalog.=) $8 "
		"  AND c.period_start OPERATOR(pg_catalog.=) $9 "
		"  AND (NOT $10 OR c.allowance OPERATOR(pg_catalog.=) $11 "
		"       OR (c.allowance IS NULL AND $11 IS NULL))",
		11, {INT8OID, INT8OID, INT4OID, INT8OID, TIMESTAMPTZOID, INT8OID, INT4OID,
			 INT8OID, TIMESTAMPTZOID, BOOLOID, INT8OID}
	};
	static QuotaPlan upsert = {
		"INSERT INTO quota_ext.quota_counters AS c "
		"       (tenant_id, quota_id, slot, period_start, used, allowance, events_mask) "
		"VALUES ($1, $2, $3, $5, $4, $6, $7) "
		"ON CONFLICT (tenant_id, quota_id, slot) DO UPDATE "
		"   SET period_start = excluded.period_start, used = excluded.used, "
		"       allowance = excluded.allowance, events_mask = excluded.events_mask",
		7, {INT8OID, INT8OID, INT4OID, INT8OID, TIMESTAMPTZOID, INT8OID, INT4OID}
	};
	Datum		values[11];
	char		nulls[11] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};

	values[0] = Int64GetDatum(tenant_id);
	values[1] = Int64GetDatum(w->quota_id);
	values[2] = Int32GetDatum(w->slot);
	values[3] = Int64GetDatum(w->used);
	values[4] = TimestampTzGetDatum(w->start);
	values[5] = Int64GetDatum(w->allowance);
	nulls[5] = w->has_allowance ? ' ' : 'n';
	values[6] = Int32GetDatum(w->mask);
	if (!insert)
	{
		if (!w->seen)
			elog(ERROR, "counter of quota " INT64_FORMAT " slot %d written without its locked values",
				 w->quota_id, w->slot);
		values[7] = Int64GetDatum(w->seen_used);
		values[8] = TimestampTzGetDatum(w->seen_start);
		values[9] = BoolGetDatum(w->seen_whole);
		values[10] = Int64GetDatum(w->seen_allowance);
		nulls[10] = w->seen_has_allowance ? ' ' : 'n';
		QuotaSpiExec(&compare_and_set, values, nulls, false, 0);
		if (SPI_processed == 0)
			ereport(ERROR,
					(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
					 errmsg("counter of quota %lld changed after this transaction locked it",
							(long long) w->quota_id),
					 errdetail("Slot %d no longer holds the values read under the lock (used %lld): "
							   "on Citus a shard move can switch the row's placement between the "
							   "lock and the update.",
							   w->slot, (long long) w->seen_used),
					 errhint("Retry the statement: it locks the counter again where it is now.")));
		return;
	}
	QuotaSpiExec(&update, values, nulls, false, 0);
	if (SPI_processed > 0)
		return;
	/* ON CONFLICT: a row of that slot committed since this statement's snapshot */
	QuotaSpiExec(&upsert, values, nulls, false, 0);
}

int64
QuotaSpiWrite(const QuotaUsageRow *u, const QuotaCounterWrite *w, int n, Oid usage_seq)
{
	static QuotaPlan insert = {
		"INSERT INTO quota_ext.usage (tenant_id, usage_id, created_at, occurred_at, model_id, "
		"  user_id, key_id, units, overage_units, input_tokens, output_tokens, price_id, "
		"  ref_usage_id, reservation_id, calls, kind, cost, idempotency_key, metadata) "
		"VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, "
		"  $16::quota_ext.usage_kind, $17, $18, $19)",
		19, {INT8OID, INT8OID, TIMESTAMPTZOID, TIMESTAMPTZOID, INT8OID,
			 INT8OID, INT8OID, INT8OID, INT8OID, INT8OID, INT8OID, INT8OID,
			 INT8OID, INT8OID, INT4OID, TEXTOID, NUMERICOID, TEXTOID, JSONBOID}
	};
	Datum		values[19];
	char		nulls[19];
	int64		usage_id;
	int			i;

	/* each a compare-and-set: 40001 when the row is not as locked */
	for (i = 0; i < n; i++)
		QuotaSpiWriteCounter(u->tenant_id, &w[i], false);

	memset(nulls, ' ', sizeof(nulls));
	usage_id = u->usage_id != 0 ? u->usage_id : spi_usage_id(usage_seq);
	/*
	 * created_at is read after this node's transaction holds an xid, as in
	 * storage.c: the usage watermark counts on it (50_metering.sql).  On a
	 * coordinator writing a worker's shard this is the coordinator's xid,
	 * which keeps its transaction in the coordinator's bound until its
	 * remote part committed (65_citus.sql, _usage_watermark_citus).
	 */
	(void) GetTopTransactionId();
#define SETARG(i, datum, isnull) \
	do { values[i] = (datum); nulls[i] = (isnull) ? 'n' : ' '; } while (0)
	SETARG(0, Int64GetDatum(u->tenant_id), false);
	SETARG(1, Int64GetDatum(usage_id), false);
	SETARG(2, TimestampTzGetDatum(GetCurrentTimestamp()), false);
	SETARG(3, TimestampTzGetDatum(u->occurred_at), false);
	SETARG(4, Int64GetDatum(u->model_id), false);
	SETARG(5, Int64GetDatum(u->user_id), u->user_id == 0);
	SETARG(6, Int64GetDatum(u->key_id), u->key_id == 0);
	SETARG(7, Int64GetDatum(u->units), false);
	SETARG(8, Int64GetDatum(u->overage), false);
	SETARG(9, Int64GetDatum(u->input_tokens), !u->has_input);
	SETARG(10, Int64GetDatum(u->output_tokens), !u->has_output);
	SETARG(11, Int64GetDatum(u->price_id), u->price_id == 0);
	SETARG(12, Int64GetDatum(u->ref_usage_id), u->ref_usage_id == 0);
	SETARG(13, Int64GetDatum(u->reservation_id), u->reservation_id == 0);
	SETARG(14, Int32GetDatum(u->calls), false);
	SETARG(15, CStringGetTextDatum(u->kind), false);
	SETARG(16, u->cost, false);
	SETARG(17, u->idem_key ? CStringGetTextDatum(u->idem_key) : (Datum) 0, u->idem_key == NULL);
	SETARG(18, u->metadata, u->metadata == (Datum) 0);
#undef SETARG
	QuotaSpiExec(&insert, values, nulls, false, 0);
	return usage_id;
}
