/*-------------------------------------------------------------------------
 *
 * cache_citus.c
 *		The configuration cache's generation on Citus: this node's placement
 *		of the reference table quota_ext.config_generation, read without SQL
 *		(QuotaCitusGeneration), the generation where a tenant's shards are
 *		(QuotaCitusFillGeneration), the fill's reads kept on this node
 *		(QuotaCitusLocalReads) and config_changed()'s bump
 *		(QuotaCitusGenerationBump).  Why and how: cache.c's header and
 *		doc/scaling.md, "The configuration cache on Citus".  Also, from the
 *		same placement catalogs, whether a tenant's counters are on this
 *		node (QuotaCitusCountersLocal, for consume.c).
 *
 *-------------------------------------------------------------------------
 */
#include "quota_ext.h"
#include "cache_citus.h"
#include "storage.h"
#include "spi.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_namespace.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/fmgrprotos.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

/* this node's placement of config_generation, found once per invalidation */
static Oid	citus_gen_logical = InvalidOid;
static Oid	citus_gen_shard = InvalidOid;	/* none: the cache stays off */
static AttrNumber citus_gen_att = InvalidAttrNumber;
static bool citus_gen_known = false;
static bool citus_gen_callback = false;

static void
citus_gen_invalidate(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == citus_gen_logical || relid == citus_gen_shard)
		citus_gen_known = false;
}

/*
 * citus_gen_find
 *		This node's placement of the reference table config_generation: the
 *		local shard config_generation_<shard id>, from pg_dist_shard, if
 *		pg_dist_placement has an active placement of it in this node's group
 *		(pg_dist_local_group).  None (no such shard here, e.g. a coordinator
 *		that is not in the metadata; the table is not a Citus table; a node
 *		removed or disabled, whose local shard table Citus leaves behind but
 *		no longer writes): the cache stays off.
 */
/*
 * citus_placement_here
 *		Has this node's group (pg_dist_local_group) an active placement
 *		(shardstate 1) of shard shardid?  Citus's catalogs, read by column
 *		number: pg_dist_local_group (groupid), pg_dist_placement
 *		(placementid, shardid, shardstate, shardlength, groupid).
 */
static bool
citus_placement_here(int64 shardid)
{
	Oid			local = get_relname_relid("pg_dist_local_group", PG_CATALOG_NAMESPACE);
	Oid			placement = get_relname_relid("pg_dist_placement", PG_CATALOG_NAMESPACE);
	Relation	rel;
	SysScanDesc scan;
	ScanKeyData key;
	HeapTuple	tup;
	bool		isnull;
	int32		group = -1;
	bool		found = false;

	if (!OidIsValid(local) || !OidIsValid(placement))
		return false;
	rel = table_open(local, AccessShareLock);
	scan = systable_beginscan(rel, InvalidOid, false, NULL, 0, NULL);
	if (HeapTupleIsValid(tup = systable_getnext(scan)))
	{
		Datum		d = heap_getattr(tup, 1, RelationGetDescr(rel), &isnull);

		if (!isnull)
			group = DatumGetInt32(d);
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	if (group < 0)
		return false;

	rel = table_open(placement, AccessShareLock);
	ScanKeyInit(&key, 2, BTEqualStrategyNumber, F_INT8EQ, Int64GetDatum(shardid));
	scan = systable_beginscan(rel, InvalidOid, false, NULL, 1, &key);
	while (!found && HeapTupleIsValid(tup = systable_getnext(scan)))
	{
		Datum		state = heap_getattr(tup, 3, RelationGetDescr(rel), &isnull);
		Datum		g;

		if (isnull || DatumGetInt32(state) != 1)
			continue;
		g = heap_getattr(tup, 5, RelationGetDescr(rel), &isnull);
		found = !isnull && DatumGetInt32(g) == group;
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return found;
}

/*
 * citus_shards
 *		The shards of relid (pg_dist_shard: logicalrelid first, shardid,
 *		shardminvalue, shardmaxvalue), palloc'd, *n of them: a
 *		hash-distributed table's with their range of hashes, a reference
 *		table's one without.
 */
typedef struct CitusShard
{
	int64		shardid;
	bool		has_range;
	int32		lo;
	int32		hi;
} CitusShard;

static CitusShard *
citus_shards(Oid relid, int *n)
{
	Oid			dist = get_relname_relid("pg_dist_shard", PG_CATALOG_NAMESPACE);
	Relation	rel;
	SysScanDesc scan;
	ScanKeyData key;
	HeapTuple	tup;
	int			cap = 32;
	CitusShard *shards = palloc(sizeof(CitusShard) * cap);
	AttrNumber	id_att;
	AttrNumber	lo_att;
	AttrNumber	hi_att;

	*n = 0;
	if (!OidIsValid(relid) || !OidIsValid(dist))
		return shards;
	/* by name: the table keeps a dropped column (shardalias) before the bounds */
	id_att = get_attnum(dist, "shardid");
	lo_att = get_attnum(dist, "shardminvalue");
	hi_att = get_attnum(dist, "shardmaxvalue");
	if (id_att == InvalidAttrNumber || lo_att == InvalidAttrNumber || hi_att == InvalidAttrNumber)
		return shards;
	rel = table_open(dist, AccessShareLock);
	ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_OIDEQ, ObjectIdGetDatum(relid));
	scan = systable_beginscan(rel, InvalidOid, false, NULL, 1, &key);
	while (HeapTupleIsValid(tup = systable_getnext(scan)))
	{
		TupleDesc	desc = RelationGetDescr(rel);
		bool		isnull;
		bool		nomin;
		bool		nomax;
		Datum		id = heap_getattr(tup, id_att, desc, &isnull);
		Datum		lo = heap_getattr(tup, lo_att, desc, &nomin);
		Datum		hi = heap_getattr(tup, hi_att, desc, &nomax);
		CitusShard *sh;

		if (isnull)
			continue;
		if (*n == cap)
			shards = repalloc(shards, sizeof(CitusShard) * (cap *= 2));
		sh = &shards[(*n)++];
		sh->shardid = DatumGetInt64(id);
		sh->has_range = !nomin && !nomax;
		sh->lo = sh->has_range ? pg_strtoint32(TextDatumGetCString(lo)) : 0;
		sh->hi = sh->has_range ? pg_strtoint32(TextDatumGetCString(hi)) : 0;
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return shards;
}

static void
citus_gen_find(void)
{
	Oid			nsp = get_namespace_oid(QUOTA_SCHEMA, true);
	Oid			logical = InvalidOid;
	Oid			shard = InvalidOid;
	int			nshards;
	int64		shardid;
	CitusShard *shards;

	if (!citus_gen_callback)
	{
		CacheRegisterRelcacheCallback(citus_gen_invalidate, (Datum) 0);
		citus_gen_callback = true;
	}
	if (OidIsValid(nsp))
		logical = get_relname_relid("config_generation", nsp);
	shards = citus_shards(logical, &nshards);
	shardid = nshards == 1 ? shards[0].shardid : 0;
	pfree(shards);
	/* a reference table has exactly one shard */
	if (nshards == 1 && citus_placement_here(shardid))
	{
		char		name[NAMEDATALEN];

		snprintf(name, sizeof(name), "config_generation_" INT64_FORMAT, shardid);
		shard = get_relname_relid(name, nsp);
	}
	citus_gen_logical = logical;
	citus_gen_shard = shard;
	citus_gen_att = OidIsValid(shard) ? get_attnum(shard, "generation") : InvalidAttrNumber;
	citus_gen_known = true;
}

/*
 * QuotaCitusCountersLocal
 *		Does a statement on tenant_id's counters run, and wait, in this
 *		backend: is the quota_counters shard that holds the tenant placed on
 *		this node, and is Citus's local execution on?  Yes for a call
 *		delegated to the tenant's worker; no for a charge run on the
 *		coordinator, whose statements (and waits) run on the worker
 *		(consume.c, recheck_after_wait).  Citus hashes a bigint distribution
 *		column with hashint8 and gives each shard a range of hashes; the
 *		ranges and whether each shard is placed here are read once per epoch
 *		(quota_counters' relcache invalidations, which a placement change
 *		moves).  False when not known.  A transaction that has already
 *		reached a local placement over a connection (Citus then turns local
 *		execution off for it) is not seen (doc/scaling.md).
 */
typedef struct CountersShard
{
	int32		lo;
	int32		hi;
	bool		here;
} CountersShard;

static CountersShard *counters_shards = NULL;
static int	ncounters_shards = 0;
static uint64 counters_shards_epoch = 0;
static bool counters_shards_known = false;

bool
QuotaCitusCountersLocal(int64 tenant_id, uint64 epoch)
{
	int32		hash = DatumGetInt32(DirectFunctionCall1(hashint8, Int64GetDatum(tenant_id)));
	const char *local = GetConfigOption("citus.enable_local_execution", true, false);
	int			i;

	if (local == NULL || strcmp(local, "on") != 0)
		return false;
	if (!counters_shards_known || counters_shards_epoch != epoch)
	{
		Oid			nsp = get_namespace_oid(QUOTA_SCHEMA, true);
		int			n;
		CitusShard *shards = citus_shards(OidIsValid(nsp) ?
										  get_relname_relid("quota_counters", nsp) : InvalidOid,
										  &n);
		CountersShard *kept = MemoryContextAlloc(TopMemoryContext,
												 sizeof(CountersShard) * Max(n, 1));

		ncounters_shards = 0;
		for (i = 0; i < n; i++)
			if (shards[i].has_range)
				kept[ncounters_shards++] = (CountersShard) {
					.lo = shards[i].lo, .hi = shards[i].hi,
					.here = citus_placement_here(shards[i].shardid)
				};
		pfree(shards);
		if (counters_shards)
			pfree(counters_shards);
		counters_shards = kept;
		counters_shards_epoch = epoch;
		counters_shards_known = true;
	}
	for (i = 0; i < ncounters_shards; i++)
		if (hash >= counters_shards[i].lo && hash <= counters_shards[i].hi)
			return counters_shards[i].here;
	return false;
}

/*
 * quota_ext._citus_counters_local(tenant_id bigint) RETURNS boolean
 *		QuotaCitusCountersLocal at the current invalidation count (owner
 *		only; 091_citus asks it on every node).
 */
PG_FUNCTION_INFO_V1(quota_ext_citus_counters_local);

Datum
quota_ext_citus_counters_local(PG_FUNCTION_ARGS)
{
	/* not STRICT: a call with NULL would be folded away before the privilege check */
	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	PG_RETURN_BOOL(QuotaOnCitus() &&
				   QuotaCitusCountersLocal(PG_GETARG_INT64(0), QuotaCountersInvalidations()));
}

/*
 * QuotaCitusGeneration
 *		The generation in this node's placement of config_generation, read
 *		in a snapshot taken now (before the snapshot of any statement that
 *		fills an entry after it); false when there is no placement here or
 *		this transaction moved it.
 */
bool
QuotaCitusGeneration(uint64 *generation)
{
	Relation	rel;
	Snapshot	snapshot;
	TableScanDesc scan;
	HeapTuple	tup;
	AttrNumber	att;
	bool		ok = false;

	if (!citus_gen_known)
		citus_gen_find();
	att = citus_gen_att;
	if (!OidIsValid(citus_gen_shard) || att == InvalidAttrNumber)
		return false;
	rel = try_table_open(citus_gen_shard, AccessShareLock);
	if (rel == NULL)
		return false;
	snapshot = RegisterSnapshot(GetLatestSnapshot());
	scan = table_beginscan(rel, snapshot, 0, NULL);
	tup = heap_getnext(scan, ForwardScanDirection);
	/*
	 * A row this transaction wrote (a change made through another node in
	 * the distributed transaction this backend serves, e.g. a call delegated
	 * with force_delegation after a change in the same transaction block):
	 * its own uncommitted configuration must not be cached, as cache_dirty
	 * says on a single node.
	 */
	if (tup != NULL &&
		!TransactionIdIsCurrentTransactionId(HeapTupleHeaderGetXmin(tup->t_data)))
	{
		bool		isnull;
		Datum		d = heap_getattr(tup, att, RelationGetDescr(rel), &isnull);

		if (!isnull && DatumGetInt64(d) > 0)
		{
			*generation = (uint64) DatumGetInt64(d);
			ok = true;
		}
	}
	table_endscan(scan);
	UnregisterSnapshot(snapshot);
	table_close(rel, AccessShareLock);
	return ok;
}

/*
 * QuotaCitusLocalReads
 *		Make the fill's reads of reference tables (tenant, model, price,
 *		tier) go to this node's own placement, which the request's
 *		generation was read from: Citus may send a read of a reference table
 *		to any placement, and one on another node could still hold a change
 *		that committed here (prepared there), to be filed under the new
 *		generation.  Local execution on (the default, which a session may
 *		turn off) and the greedy task assignment (round-robin passes over
 *		the local placement).  Returns the GUC nest level to pop.  A
 *		transaction in which Citus already reached a local shard through a
 *		connection executes nothing locally any more: doc/scaling.md names
 *		that limit.
 */
int
QuotaCitusLocalReads(void)
{
	int			nest = NewGUCNestLevel();

	if (GetConfigOption("citus.enable_local_execution", true, false) != NULL)
		(void) set_config_option("citus.enable_local_execution", "on",
								 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	if (GetConfigOption("citus.task_assignment_policy", true, false) != NULL)
		(void) set_config_option("citus.task_assignment_policy", "greedy",
								 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	return nest;
}

/*
 * QuotaCitusFillGeneration
 *		The generation as the node holding the tenant's shards sees it, read
 *		there by a statement Citus routes to them (reference table placement
 *		of that node), before the fill's own statements; 0 when unknown.
 */
uint64
QuotaCitusFillGeneration(int64 tenant_id)
{
	static QuotaPlan plan = {
		"SELECT (SELECT g.generation FROM quota_ext.config_generation g), pg_catalog.count(*) "
		"FROM quota_ext.quotas q "
		"WHERE q.tenant_id OPERATOR(pg_catalog.=) $1 AND q.quota_id OPERATOR(pg_catalog.<) 0",
		1, {INT8OID}
	};
	QuotaSpiState spi;
	Datum		values[1];
	uint64		generation = 0;

	values[0] = Int64GetDatum(tenant_id);
	QuotaSpiBegin(&spi);
	/* not read-only: a fresh snapshot, after QuotaCacheBegin's read */
	QuotaSpiExec(&plan, values, NULL, false, 1);
	if (SPI_processed == 1)
	{
		bool		isnull;
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

		if (!isnull && DatumGetInt64(d) > 0)
			generation = (uint64) DatumGetInt64(d) | QUOTA_CITUS_GENERATION;
	}
	QuotaSpiEnd(&spi);
	return generation;
}

/* config_changed() on Citus: the number moves where and when the change commits */
void
QuotaCitusGenerationBump(void)
{
	static QuotaPlan plan = {
		"UPDATE quota_ext.config_generation "
		"SET generation = generation OPERATOR(pg_catalog.+) 1",
		0, {InvalidOid}
	};
	QuotaSpiState spi;

	QuotaSpiBegin(&spi);
	QuotaSpiExec(&plan, NULL, NULL, false, 0);
	QuotaSpiEnd(&spi);
}
