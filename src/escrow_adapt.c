/*-------------------------------------------------------------------------
 *
 * escrow_adapt.c
 *		Automatic escrow: a blocking quota whose callers wait for its
 *		counter spreads itself over escrow slots without anyone setting
 *		`slots`, grows the number of slots with the callers it sees, and
 *		folds back to one row when they are gone (doc/design.md section 5).
 *
 * Three parts:
 *
 *	 - the calls note what they see (QuotaEscrowNote): a call that waited
 *	   for a single-row counter (lock_run), and every escrow acquisition
 *	   (acquire_slots, with whether it found no free slot), into a small
 *	   table in shared memory, one entry per (database, tenant, quota).  The
 *	   table has QUOTA_ESCROW_ENTRIES entries and one tenant may hold at
 *	   most QUOTA_ESCROW_TENANT_ENTRIES of them, so no tenant can fill it
 *	   for the others; when there is no room, nothing is recorded and the
 *	   quota stays as it is (exact, only slower).  A call that neither
 *	   waited nor uses escrow touches nothing here.
 *	 - a pass (QuotaEscrowAdaptPass) reads and resets the entries of its
 *	   database and decides: a quota whose callers wait (a single-row
 *	   counter with half a caller waiting on average, decide_one; an escrow
 *	   quota whose calls found no free slot a quarter of the time) grows to the
 *	   next power of two at least the number of backends seen (at least 2,
 *	   at most quota_ext.escrow_max_slots and what its limit allows), or to
 *	   twice its slots when it has that many already; the pass after
 *	   a re-layout does not count waits (the re-layout held every slot, so
 *	   they say nothing about the slot count); an escrow quota that saw at
 *	   most one backend and no wait in QUOTA_ESCROW_QUIET_PASSES passes in a
 *	   row folds back to one row.
 *	   Each change is quota_ext._escrow_relayout(), which locks the quota
 *	   row and then every counter row in slot order (the callers' order),
 *	   moves the period's total to slot 0 and splits the slack into
 *	   allowances, changes quotas.slots and moves the configuration
 *	   generation (config_changed), all in one transaction.
 *	 - a launcher background worker (registered in _PG_init when the
 *	   library is preloaded) wakes every quota_ext.escrow_adapt_interval
 *	   milliseconds and, for each database with entries and no worker,
 *	   starts a worker that connects to it and runs a pass every interval,
 *	   each re-layout in its own short transaction, until a pass finds no
 *	   entries.  quota_ext.escrow_adapt() runs one pass in the
 *	   caller's transaction (admin; tests and pg_cron).
 *
 *-------------------------------------------------------------------------
 */
#include "quota_ext.h"
#include "escrow_adapt.h"
#include "storage.h"
#include "spi.h"
#include "context.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "port/pg_bitutils.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "funcapi.h"
#include "utils/snapmgr.h"
#include "utils/tuplestore.h"

PG_FUNCTION_INFO_V1(quota_ext_escrow_adapt);
PG_FUNCTION_INFO_V1(quota_ext_escrow_status);

#define QUOTA_ESCROW_ENTRIES		256
#define QUOTA_ESCROW_TENANT_ENTRIES	8
#define QUOTA_ESCROW_QUIET_PASSES	3
#define QUOTA_ESCROW_CAP_PASSES		50
#define QUOTA_ESCROW_QUEUE			0.5		/* callers waiting on average */
#define QUOTA_ESCROW_MIN_WINDOW		(100 * 1000)	/* us: a shorter one tells nothing */
#define QUOTA_ESCROW_TRANCHE		"quota_ext_escrow"
#define QUOTA_ESCROW_MAX_DBS		16
#define QUOTA_ESCROW_CALL_BUCKETS	4096
#define QUOTA_ESCROW_WORKER_PASSES	3000	/* passes of one worker (10 min at 200 ms) */

typedef struct EscrowEntry
{
	bool		used;
	Oid			dbid;
	Oid			schema;			/* quota_ext's schema: its ids restart with it */
	int64		tenant_id;
	int64		quota_id;
	uint32		waits;			/* calls that waited, or found no free slot */
	uint32		calls;			/* escrow acquisitions */
	uint32		calls_mark[2];	/* its call buckets as the last pass read them */
	uint64		procs;			/* bit (PGPROC number % 64) of each caller */
	int			slots;			/* the quota's slots as the last call saw them */
	int			quiet;			/* passes in a row without concurrency */
	bool		cooldown;		/* re-laid by the last pass: its waits are ours */
	bool		fresh;			/* no pass has read it yet */
	uint64		wait_us;		/* single-row: time its calls waited */
	TimestampTz since;			/* ... since then (made, or the last pass) */
	int			cap;			/* slots its limit allows at most (0: unknown) */
	int			cap_passes;		/* passes until the cap is asked again */
} EscrowEntry;

typedef struct EscrowShared
{
	LWLock	   *lock;
	EscrowEntry entries[QUOTA_ESCROW_ENTRIES];
	/*
	 * Calls of single-row automatic quotas: a count-min sketch, two rows of
	 * buckets under two hashes of (db, tenant, quota); a quota's calls are
	 * at most the smaller of its two buckets (others' calls only add).
	 */
	pg_atomic_uint32 call_buckets[2][QUOTA_ESCROW_CALL_BUCKETS];
} EscrowShared;

static EscrowShared *escrow_shared = NULL;

/* settings */
static int	escrow_adapt_interval = 200;	/* ms; 0: no passes */

/*
 * Citus manages the counters (set by each pass): quotas are not grown, only
 * folded back.  A re-layout is a configuration change, which on Citus is a
 * two-phase commit over every node that empties every node's caches
 * (doc/scaling.md): at 32 clients over 32 tenants the passes re-laid quotas
 * out 3.5 times a second, growing and folding back, and the delegated
 * consume ran at 0.45x the comparator, against 1.0x without them.
 */
static bool escrow_on_citus = false;
static int	escrow_max_slots = 32;

PGDLLEXPORT void QuotaEscrowLauncherMain(Datum arg);
PGDLLEXPORT void QuotaEscrowWorkerMain(Datum arg);

/* ----------------------------------------------------------------------
 * shared memory
 * ---------------------------------------------------------------------- */

void
QuotaEscrowShmemRequest(void)
{
	RequestAddinShmemSpace(MAXALIGN(sizeof(EscrowShared)));
	RequestNamedLWLockTranche(QUOTA_ESCROW_TRANCHE, 1);
}

void
QuotaEscrowShmemStartup(void)
{
	bool		found;

	escrow_shared = ShmemInitStruct("quota_ext escrow", sizeof(EscrowShared), &found);
	if (!found)
	{
		int			i;

		memset(escrow_shared, 0, sizeof(EscrowShared));
		escrow_shared->lock = &(GetNamedLWLockTranche(QUOTA_ESCROW_TRANCHE))->lock;
		for (i = 0; i < QUOTA_ESCROW_CALL_BUCKETS; i++)
		{
			pg_atomic_init_u32(&escrow_shared->call_buckets[0][i], 0);
			pg_atomic_init_u32(&escrow_shared->call_buckets[1][i], 0);
		}
	}
}

static uint64
key_hash(Oid dbid, Oid schema, int64 tenant_id, int64 quota_id)
{
	uint64		h = (uint64) quota_id * UINT64CONST(0x9E3779B97F4A7C15);

	h ^= (uint64) tenant_id * UINT64CONST(0xC2B2AE3D27D4EB4F);
	h ^= (uint64) dbid * UINT64CONST(0x165667B19E3779F9);
	h ^= (uint64) schema * UINT64CONST(0xD6E8FEB86659FD93);
	return h;
}

#define entry_hash(dbid, schema, tenant_id, quota_id) \
	((uint32) (key_hash(dbid, schema, tenant_id, quota_id) >> 32) % QUOTA_ESCROW_ENTRIES)

/* the quota's bucket in row 0 or 1 of the sketch */
static pg_atomic_uint32 *
call_bucket(int row, Oid dbid, Oid schema, int64 tenant_id, int64 quota_id)
{
	uint64		h = key_hash(dbid, schema, tenant_id, quota_id);
	uint32		i = row == 0 ? (uint32) (h >> 32) : murmurhash32((uint32) h ^ (uint32) (h >> 32));

	return &escrow_shared->call_buckets[row][i % QUOTA_ESCROW_CALL_BUCKETS];
}

/*
 * QuotaEscrowCount
 *		A call is about to lock the counter of a single-row automatic quota:
 *		two atomic increments, no lock.  A pass compares the waits of the
 *		quota with these calls (a quota that shares both its buckets with
 *		others only makes its waits look rarer).
 */
void
QuotaEscrowCount(int64 tenant_id, int64 quota_id)
{
	if (escrow_shared)
	{
		Oid			schema = QuotaSchemaOid();

		pg_atomic_fetch_add_u32(call_bucket(0, MyDatabaseId, schema, tenant_id, quota_id), 1);
		pg_atomic_fetch_add_u32(call_bucket(1, MyDatabaseId, schema, tenant_id, quota_id), 1);
	}
}

/*
 * The entry of (db, tenant, quota), or with create a new one if there is
 * room.  One of an earlier install of the extension (schema) starts again.
 */
static EscrowEntry *
entry_find(Oid dbid, Oid schema, int64 tenant_id, int64 quota_id, bool create)
{
	uint32		start = entry_hash(dbid, schema, tenant_id, quota_id);
	EscrowEntry *free_entry = NULL;
	int			tenant_count = 0;
	int			i;

	for (i = 0; i < QUOTA_ESCROW_ENTRIES; i++)
	{
		EscrowEntry *e = &escrow_shared->entries[(start + i) % QUOTA_ESCROW_ENTRIES];

		if (!e->used)
		{
			if (!free_entry)
				free_entry = e;
			continue;
		}
		if (e->dbid == dbid && e->tenant_id == tenant_id)
		{
			if (e->quota_id == quota_id && e->schema == schema)
				return e;
			if (e->quota_id == quota_id)
			{
				if (!create)
					return NULL;
				free_entry = e;
				break;
			}
			tenant_count++;
		}
	}
	if (!create || !free_entry || tenant_count >= QUOTA_ESCROW_TENANT_ENTRIES)
		return NULL;
	memset(free_entry, 0, sizeof(EscrowEntry));
	free_entry->used = true;
	free_entry->dbid = dbid;
	free_entry->schema = schema;
	free_entry->tenant_id = tenant_id;
	free_entry->quota_id = quota_id;
	free_entry->fresh = true;
	free_entry->since = GetCurrentTimestamp();
	return free_entry;
}

/*
 * QuotaEscrowNote
 *		A call met quota_id of tenant_id under contention (waited: it waited
 *		wait_us for the counter, or found no free escrow slot), or took an
 *		escrow slot (waited false): only quotas under contention or laid out
 *		over slots get here, so only they take entries.
 */
void
QuotaEscrowNote(int64 tenant_id, int64 quota_id, bool waited, int slots, int64 wait_us)
{
	EscrowEntry *e;
	Oid			schema;

	if (!escrow_shared)
		return;
	schema = QuotaSchemaOid();
	LWLockAcquire(escrow_shared->lock, LW_EXCLUSIVE);
	e = entry_find(MyDatabaseId, schema, tenant_id, quota_id, true);
	if (e)
	{
		if (waited)
			e->waits++;
		else
			e->calls++;
		if (wait_us > 0)
		{
			/* a wait longer than the window counts as the whole window */
			TimestampTz now = GetCurrentTimestamp();

			e->wait_us += (uint64) Min(wait_us, Max(now - e->since, 0));
		}
		e->procs |= UINT64CONST(1) << (QuotaMyProcNumber() % 64);
		e->slots = slots;
	}
	LWLockRelease(escrow_shared->lock);
}

/* ----------------------------------------------------------------------
 * the pass
 * ---------------------------------------------------------------------- */

/* what a pass read of one entry */
typedef struct EscrowSeen
{
	Oid			schema;
	int64		tenant_id;
	int64		quota_id;
	uint32		waits;
	uint32		calls;
	bool		fresh;			/* its first pass: calls since the start */
	double		waiters;		/* single-row: callers waiting, on average */
	int			backends;
	int			slots;
	int			quiet;
	int			cap;
} EscrowSeen;

static int
seen_cmp(const void *a, const void *b)
{
	const EscrowSeen *x = a;
	const EscrowSeen *y = b;

	if (x->tenant_id != y->tenant_id)
		return x->tenant_id < y->tenant_id ? -1 : 1;
	if (x->quota_id != y->quota_id)
		return x->quota_id < y->quota_id ? -1 : 1;
	return 0;
}

/*
 * sketch_calls
 *		A single-row entry's calls since the last pass (the smaller of its
 *		two buckets' growth); advance moves the marks (the pass).
 */
static uint32
sketch_calls(EscrowEntry *e, bool advance)
{
	uint32		v0 = pg_atomic_read_u32(call_bucket(0, e->dbid, e->schema, e->tenant_id, e->quota_id));
	uint32		v1 = pg_atomic_read_u32(call_bucket(1, e->dbid, e->schema, e->tenant_id, e->quota_id));
	uint32		calls = Min(v0 - e->calls_mark[0], v1 - e->calls_mark[1]);

	if (advance)
	{
		e->calls_mark[0] = v0;
		e->calls_mark[1] = v1;
	}
	return calls;
}

/* read and reset the entries of this database; returns how many */
static int
collect(EscrowSeen *seen, Oid schema)
{
	int			n = 0;
	int			i;
	TimestampTz now = GetCurrentTimestamp();

	LWLockAcquire(escrow_shared->lock, LW_EXCLUSIVE);
	for (i = 0; i < QUOTA_ESCROW_ENTRIES; i++)
	{
		EscrowEntry *e = &escrow_shared->entries[i];

		if (!e->used || e->dbid != MyDatabaseId)
			continue;
		memset(&seen[n], 0, sizeof(EscrowSeen));
		/* of an earlier install of the extension (or none now): dropped */
		if (e->schema != schema)
		{
			e->used = false;
			continue;
		}
		seen[n].schema = e->schema;
		seen[n].tenant_id = e->tenant_id;
		seen[n].quota_id = e->quota_id;
		seen[n].waits = e->waits;
		seen[n].backends = pg_popcount64(e->procs);
		seen[n].slots = e->slots;
		seen[n].fresh = e->fresh;
		if (e->cap > 0 && --e->cap_passes <= 0)
			e->cap = 0;			/* its limit may have changed: ask again */
		seen[n].cap = e->cap;
		if (e->slots <= 1)
		{
			/*
			 * A single-row quota's calls since the last pass; for a new
			 * entry, since the server started (or the extension was
			 * created): a chance wait of a quota that has been called many
			 * times is no contention.  And how many of its callers waited
			 * at a time, on average, since the last pass (the time they
			 * waited over the time that passed).
			 */
			seen[n].calls = sketch_calls(e, true);
			if (now - e->since >= QUOTA_ESCROW_MIN_WINDOW)
			{
				seen[n].waiters = (double) e->wait_us / (double) (now - e->since);
				e->wait_us = 0;
				e->since = now;
			}
			/* else too short a time to tell (a pass just ran): keep adding */
		}
		else
			seen[n].calls = (uint32) Min((uint64) e->calls + e->waits, PG_UINT32_MAX);
		e->fresh = false;

		/*
		 * A re-layout holds every slot while it lays them out, so the calls
		 * of that moment found no free slot: not a sign of too few slots.
		 */
		if (e->cooldown)
		{
			seen[n].waits = 0;
			e->cooldown = false;
		}
		/*
		 * concurrency: a wait, or two backends in one pass; for a single-row
		 * quota after its first pass, a queue (decide_one's rule), so that
		 * the entries of quotas that only meet a caller now and then are
		 * forgotten and leave their room in the table to hot ones
		 */
		if ((e->slots <= 1 && !seen[n].fresh) ?
			seen[n].waiters < QUOTA_ESCROW_QUEUE :
			(seen[n].waits == 0 && seen[n].backends <= 1))
			e->quiet++;
		else
			e->quiet = 0;
		seen[n].quiet = e->quiet;
		e->waits = 0;
		e->calls = 0;
		e->procs = 0;
		n++;
	}
	LWLockRelease(escrow_shared->lock);
	qsort(seen, n, sizeof(EscrowSeen), seen_cmp);
	return n;
}

/*
 * mark_entry
 *		After a pass over the quota: re-laid over slots (cooldown: the next
 *		pass does not count the waits it caused), or forgotten (no longer
 *		used).
 */
static void
mark_entry(const EscrowSeen *s, bool cooldown, int slots, int cap)
{
	EscrowEntry *e;

	LWLockAcquire(escrow_shared->lock, LW_EXCLUSIVE);
	e = entry_find(MyDatabaseId, s->schema, s->tenant_id, s->quota_id, false);
	if (e && cap > 0)
	{
		e->cap = cap;
		e->cap_passes = QUOTA_ESCROW_CAP_PASSES;
	}
	else if (e && cooldown)
	{
		e->cooldown = true;
		e->slots = slots;
	}
	else if (e)
		e->used = false;
	LWLockRelease(escrow_shared->lock);
}

#define cool_down(s, slots)	mark_entry(s, true, slots, 0)
#define forget(s)			mark_entry(s, false, 0, 0)
/* its limit allows no more than `slots`: not asked again for a while */
#define cap_at(s, slots)	mark_entry(s, false, 0, slots)

static int
pow2_at_least(int x)
{
	int			p = 1;

	while (p < x && p < 64)
		p <<= 1;
	return p;
}

/*
 * decide_one
 *		The slot count one entry asks for, given the quota's current one;
 *		0: forget the entry (quiet single-row quota, or no longer automatic).
 */
static int
decide_one(const EscrowSeen *s, int slots)
{
	int			target = slots;

	/*
	 * A single-row quota grows when its counter has a queue: on average at
	 * least half a caller waited for it since the last pass.  Under a
	 * spread load (32 clients over 100 tenants) four calls in ten meet
	 * another on the same counter, each for a moment (about 0.1 callers
	 * waiting on average); the escrow path costs more per call than such
	 * waits, and spreading those quotas halved the throughput
	 * (doc/performance.md, sessions 5 and 6).  A hot quota has a queue
	 * (16 clients on one quota: many callers waiting at every moment).
	 * An entry's first pass cannot tell the time (it was made after its
	 * first wait): it grows when half its calls since the server started
	 * waited, so a chance wait of a much-called quota is no contention.
	 *
	 * An escrow quota grows when a quarter of its calls found no free slot.
	 */
	bool		contended;

	if (slots <= 1)
		contended = s->waits > 0 &&
			(s->fresh ? (uint64) s->waits * 2 >= s->calls : s->waiters >= QUOTA_ESCROW_QUEUE);
	else
		contended = s->waits > 0 && (uint64) s->waits * 4 >= s->calls;

	if (contended && escrow_on_citus)
		return slots;			/* no growth on Citus (escrow_on_citus) */
	if (contended)
	{
		/* as many slots as backends were seen (a power of two) */
		target = Max(slots, pow2_at_least(Max(s->backends, 2)));

		/*
		 * With that many slots already, a quarter of the calls still found
		 * none free: more callers than the mask of 64 backends shows.
		 */
		if (target == slots && slots > 1)
			target = slots * 2;
	}
	else if (s->quiet >= QUOTA_ESCROW_QUIET_PASSES)
	{
		if (slots == 1)
			return 0;
		target = 1;
	}
	if (s->cap > 0 && target > s->cap)
		target = Max(slots, s->cap);
	return Min(target, escrow_max_slots);
}

/*
 * worth_a_look
 *		Whether an entry may ask for a change, judged by the slots its
 *		callers saw: most entries of a pass ask for none, and those need no
 *		transaction (a pass over the entries of busy tenants ran one each,
 *		five times a second, beside the calls).  A quiet single-row quota is
 *		forgotten here.  adapt_one decides again from the quota's row.
 */
static bool
worth_a_look(const EscrowSeen *s)
{
	int			target = decide_one(s, s->slots);


	if (target == 0)
		forget(s);
	return target != 0 && target != s->slots;
}

/*
 * adapt_one
 *		Decide for one entry and re-lay its quota if needed (SPI connected,
 *		in a transaction).  Returns whether the quota was re-laid.
 */
static bool
adapt_one(const EscrowSeen *s)
{
	static QuotaPlan quota_plan = {
		"SELECT q.slots, q.slots_auto AND q.on_exceed OPERATOR(pg_catalog.=) 'block', "
		"       LEAST(64::pg_catalog.int8, "
		"             GREATEST(q.max_units, 1::pg_catalog.int8))::pg_catalog.int4 "
		"FROM quota_ext.quotas q "
		"WHERE q.tenant_id OPERATOR(pg_catalog.=) $1 AND q.quota_id OPERATOR(pg_catalog.=) $2",
		2, {INT8OID, INT8OID}
	};
	static QuotaPlan relayout_plan = {
		"SELECT quota_ext._escrow_relayout($1, $2, $3)",
		3, {INT8OID, INT8OID, INT4OID}
	};
	Datum		values[3];
	bool		isnull;
	int			slots;
	int			most;
	int			target;
	bool		relaid;

	values[0] = Int64GetDatum(s->tenant_id);
	values[1] = Int64GetDatum(s->quota_id);
	QuotaSpiExec(&quota_plan, values, NULL, false, 1);
	if (SPI_processed != 1 ||
		!DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull)))
	{
		forget(s);
		return false;
	}
	slots = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	most = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull));
	target = decide_one(s, slots);
	if (target == 0)
	{
		forget(s);
		return false;
	}
	/* its limit allows no more slots (_escrow_relayout's rule): not asked again for a while */
	if (target > most)
	{
		target = Max(most, 1);
		if (target <= slots)
		{
			cap_at(s, slots);
			return false;
		}
	}
	if (target == slots)
		return false;
	values[2] = Int32GetDatum(target);
	QuotaSpiExec(&relayout_plan, values, NULL, false, 1);
	relaid = SPI_processed == 1 &&
		DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	/* not re-laid (a slot busy at that moment, say: asked again), or folded back */
	if (target == 1 || !relaid)
		forget(s);
	else
		cool_down(s, target);
	return relaid;
}

/*
 * quota_ext.escrow_adapt() RETURNS integer
 *		One pass over this database's entries, in the caller's transaction:
 *		the number of quotas re-laid.  Admin.  Without shared memory (not
 *		preloaded) there is nothing to read: 0.
 */
Datum
quota_ext_escrow_adapt(PG_FUNCTION_ARGS)
{
	QuotaSpiState spi;
	EscrowSeen	seen[QUOTA_ESCROW_ENTRIES];
	int			n;
	int			i;
	int			changed = 0;

	QuotaCheckAdmin("escrow_adapt");
	if (!escrow_shared)
		PG_RETURN_INT32(0);
	n = collect(seen, QuotaSchemaOid());
	escrow_on_citus = QuotaOnCitus();
	QuotaSpiBegin(&spi);
	for (i = 0; i < n; i++)
		if (worth_a_look(&seen[i]))
			changed += adapt_one(&seen[i]) ? 1 : 0;
	QuotaSpiEnd(&spi);
	PG_RETURN_INT32(changed);
}

/*
 * quota_ext.escrow_status() RETURNS SETOF (tenant_id, quota_id, waits,
 *		calls, backends, quiet_passes)
 *		This database's entries as the next pass will read them.  Admin.
 */
Datum
quota_ext_escrow_status(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int			i;

	QuotaCheckAdmin("escrow_status");
	InitMaterializedSRF(fcinfo, 0);
	if (!escrow_shared)
		return (Datum) 0;
	LWLockAcquire(escrow_shared->lock, LW_SHARED);
	for (i = 0; i < QUOTA_ESCROW_ENTRIES; i++)
	{
		EscrowEntry *e = &escrow_shared->entries[i];
		Datum		values[6];
		bool		nulls[6] = {false, false, false, false, false, false};

		if (!e->used || e->dbid != MyDatabaseId)
			continue;
		values[0] = Int64GetDatum(e->tenant_id);
		values[1] = Int64GetDatum(e->quota_id);
		values[2] = Int64GetDatum((int64) e->waits);
		values[3] = Int64GetDatum((int64) (e->slots <= 1 ? sketch_calls(e, false) : e->calls));
		values[4] = Int32GetDatum(pg_popcount64(e->procs));
		values[5] = Int32GetDatum(e->quiet);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	LWLockRelease(escrow_shared->lock);
	return (Datum) 0;
}

/* ----------------------------------------------------------------------
 * background workers
 * ---------------------------------------------------------------------- */

/*
 * escrow_pass
 *		One pass in this database, each re-layout in its own short
 *		transaction (locks held only while one quota is laid out again).
 *		Returns the number of entries it read, -1 when the extension is
 *		not installed (its entries are dropped).
 */
static int
escrow_pass(void)
{
	EscrowSeen	seen[QUOTA_ESCROW_ENTRIES];
	int			n;
	volatile int i;				/* read in PG_CATCH */
	bool		present;
	Oid			schema;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	present = OidIsValid(get_extension_oid("quota_ext", true));
	schema = present ? QuotaSchemaOid() : InvalidOid;
	escrow_on_citus = present && QuotaOnCitus();
	CommitTransactionCommand();
	/* without the extension, this drops the database's entries */
	n = collect(seen, schema);
	if (!present)
		return -1;
	for (i = 0; i < n; i++)
	{
		QuotaSpiState spi;

		CHECK_FOR_INTERRUPTS();
		if (!worth_a_look(&seen[i]))
			continue;
		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();

		/*
		 * An error (a tenant holding its counter past the lock timeout)
		 * ends this quota's turn, not the pass: the quotas after it, other
		 * tenants', still get theirs.
		 */
		PG_TRY();
		{
			PushActiveSnapshot(GetTransactionSnapshot());
			QuotaSpiBegin(&spi);
			(void) adapt_one(&seen[i]);
			QuotaSpiEnd(&spi);
			PopActiveSnapshot();
			CommitTransactionCommand();
		}
		PG_CATCH();
		{
			EmitErrorReport();
			FlushErrorState();
			AbortCurrentTransaction();

			/*
			 * Its re-layout failed (a tenant held a counter past the lock
			 * timeout, say): a growth is not asked again for a while, so
			 * that one tenant cannot make every pass wait for it; a quota
			 * that was folding back is forgotten (as before: asked again
			 * only once calls made it an entry and quiet again).
			 */
			if (decide_one(&seen[i], seen[i].slots) > seen[i].slots)
				cap_at(&seen[i], seen[i].slots);
			else
				forget(&seen[i]);
		}
		PG_END_TRY();
	}
	return n;
}

/*
 * QuotaEscrowWorkerMain
 *		The passes of one database, one every
 *		quota_ext.escrow_adapt_interval ms, for as long as it has entries
 *		(at most QUOTA_ESCROW_WORKER_PASSES: then the launcher starts
 *		another).  A worker per pass, as before, was a new process, a new
 *		connection and its caches five times a second on every busy node:
 *		about a fifth of a two-core Citus cluster's CPU under
 *		bench/run --citus.
 */
void
QuotaEscrowWorkerMain(Datum arg)
{
	Oid			dbid = DatumGetObjectId(arg);
	int			passes;

	pqsignal(SIGTERM, die);
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(dbid, InvalidOid, 0);
	pgstat_report_appname("quota_ext escrow");
	/* a re-layout waits for in-flight calls only: one a tenant holds is skipped */
	SetConfigOption("lock_timeout", "500", PGC_SUSET, PGC_S_OVERRIDE);

	for (passes = 0; passes < QUOTA_ESCROW_WORKER_PASSES; passes++)
	{
		if (escrow_pass() <= 0)
			break;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 escrow_adapt_interval > 0 ? escrow_adapt_interval : 1000,
						 PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		if (escrow_adapt_interval <= 0)
			break;
	}
	proc_exit(0);
}

/* the databases with entries */
static int
databases_with_entries(Oid *dbs)
{
	int			n = 0;
	int			i;
	int			j;

	LWLockAcquire(escrow_shared->lock, LW_SHARED);
	for (i = 0; i < QUOTA_ESCROW_ENTRIES && n < QUOTA_ESCROW_MAX_DBS; i++)
	{
		EscrowEntry *e = &escrow_shared->entries[i];

		if (!e->used)
			continue;
		for (j = 0; j < n; j++)
			if (dbs[j] == e->dbid)
				break;
		if (j == n)
			dbs[n++] = e->dbid;
	}
	LWLockRelease(escrow_shared->lock);
	return n;
}

/*
 * QuotaEscrowLauncherMain
 *		Every quota_ext.escrow_adapt_interval ms, start a worker in each
 *		database that has entries and no worker running.
 */
void
QuotaEscrowLauncherMain(Datum arg)
{
	Oid			running_db[QUOTA_ESCROW_MAX_DBS];
	BackgroundWorkerHandle *running[QUOTA_ESCROW_MAX_DBS];
	int			nrunning = 0;

	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	BackgroundWorkerUnblockSignals();

	while (!ShutdownRequestPending)
	{
		Oid			dbs[QUOTA_ESCROW_MAX_DBS];
		int			n;
		int			i;
		int			j;

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 escrow_adapt_interval > 0 ? escrow_adapt_interval : 1000,
						 PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		/* forget the passes that ended */
		for (i = 0; i < nrunning;)
		{
			pid_t		pid;

			if (GetBackgroundWorkerPid(running[i], &pid) == BGWH_STOPPED)
			{
				pfree(running[i]);
				running[i] = running[nrunning - 1];
				running_db[i] = running_db[nrunning - 1];
				nrunning--;
			}
			else
				i++;
		}
		if (escrow_adapt_interval <= 0 || !escrow_shared)
			continue;
		n = databases_with_entries(dbs);
		for (i = 0; i < n; i++)
		{
			BackgroundWorker w;

			for (j = 0; j < nrunning; j++)
				if (running_db[j] == dbs[i])
					break;
			if (j < nrunning || nrunning >= QUOTA_ESCROW_MAX_DBS)
				continue;
			memset(&w, 0, sizeof(w));
			w.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
			w.bgw_start_time = BgWorkerStart_RecoveryFinished;
			w.bgw_restart_time = BGW_NEVER_RESTART;
			strlcpy(w.bgw_library_name, "quota_ext", BGW_MAXLEN);
			strlcpy(w.bgw_function_name, "QuotaEscrowWorkerMain", BGW_MAXLEN);
			snprintf(w.bgw_name, BGW_MAXLEN, "quota_ext escrow worker");
			snprintf(w.bgw_type, BGW_MAXLEN, "quota_ext escrow worker");
			w.bgw_main_arg = ObjectIdGetDatum(dbs[i]);
			w.bgw_notify_pid = MyProcPid;
			if (RegisterDynamicBackgroundWorker(&w, &running[nrunning]))
				running_db[nrunning++] = dbs[i];
		}
	}
	proc_exit(0);
}

/*
 * QuotaEscrowInit
 *		Settings, and the launcher when the library is preloaded.
 */
void
QuotaEscrowInit(void)
{
	BackgroundWorker w;

	DefineCustomIntVariable("quota_ext.escrow_adapt_interval",
							"Milliseconds between automatic escrow passes (0: none).",
							"Blocking quotas whose callers wait for their counter are spread over escrow slots, and folded back when the contention ends.",
							&escrow_adapt_interval, 200, 0, 3600000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("quota_ext.escrow_max_slots",
							"Most escrow slots automatic escrow gives a quota.",
							NULL,
							&escrow_max_slots, 32, 1, 64,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	if (!process_shared_preload_libraries_in_progress)
		return;
	memset(&w, 0, sizeof(w));
	w.bgw_flags = BGWORKER_SHMEM_ACCESS;
	w.bgw_start_time = BgWorkerStart_RecoveryFinished;
	w.bgw_restart_time = 10;
	strlcpy(w.bgw_library_name, "quota_ext", BGW_MAXLEN);
	strlcpy(w.bgw_function_name, "QuotaEscrowLauncherMain", BGW_MAXLEN);
	snprintf(w.bgw_name, BGW_MAXLEN, "quota_ext escrow launcher");
	snprintf(w.bgw_type, BGW_MAXLEN, "quota_ext escrow launcher");
	RegisterBackgroundWorker(&w);
}
