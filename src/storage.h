/*-------------------------------------------------------------------------
 *
 * storage.h
 *		The storage module: the only C code that writes quota_counters and
 *		usage rows, and the slot-share rule of escrow quotas.
 *
 * Three files, one concern each:
 *
 *	 storage.c		the hot path's counter locks and writes and the usage row,
 *					through the table and index access methods (no SQL)
 *	 storage_spi.c	the same as SQL statements naming tenant_id, for a
 *					database where Citus manages quota_counters (issue 16);
 *					its write of one counter row serves storage_slots.c and
 *					escrow.c too
 *	 storage_slots.c the statements over escrow slot rows (escrow.c decides
 *					which to run), a tenant's counters locked at once
 *					(quota_expire_reservations), the slot-share rule and the
 *					one SQL-callable writer of laid-out counter rows
 *					(quota_ext._counters_lay_out, for PL/pgSQL)
 *
 * Every function runs inside the caller's SPI connection (QuotaSpiBegin),
 * as the extension's owner; the caller checked the caller's rights.  The
 * storage files call spi.c and nothing else of the extension.
 *
 *-------------------------------------------------------------------------
 */
#ifndef QUOTA_STORAGE_H
#define QUOTA_STORAGE_H

#include "quota_ext.h"
#include "datatype/timestamp.h"
#include "storage/itemptr.h"

/* one usage row to append */
typedef struct QuotaUsageRow
{
	int64		tenant_id;
	int64		usage_id;		/* 0: the next value of usage_id_seq */
	TimestampTz occurred_at;
	const char *kind;			/* a quota_ext.usage_kind */
	int64		model_id;
	int64		user_id;		/* 0: NULL */
	int64		key_id;			/* 0: NULL */
	int32		calls;
	int64		units;
	int64		overage;
	int64		ref_usage_id;	/* 0: NULL */
	int64		reservation_id; /* 0: NULL */
	const char *idem_key;		/* NULL: NULL */
	bool		has_input;
	int64		input_tokens;
	bool		has_output;
	int64		output_tokens;
	int64		price_id;		/* 0: NULL */
	Datum		cost;			/* numeric */
	Datum		metadata;		/* jsonb, or 0: NULL */
} QuotaUsageRow;

/*
 * One counter row: quota, slot (0 unless escrow) and values, as read from a
 * slot statement or to be written.
 */
typedef struct QuotaCounterWrite
{
	int64		quota_id;
	int32		slot;
	int64		used;
	TimestampTz start;			/* period_start */
	bool		has_allowance;	/* else NULL */
	int64		allowance;
	int32		mask;			/* events_mask */
	ItemPointerData tid;		/* where it was locked, if known (else invalid) */

	/*
	 * The row as this transaction read it under its lock: on Citus a write
	 * of a counter the caller locked (QuotaSpiWriteCounter, insert false)
	 * is a compare-and-set against it, because a shard move may switch the
	 * row's placement between the lock and the write (storage_spi.c).  The
	 * allowance is compared only for a slot row read whole (storage_slots.c):
	 * the hot path's lock reads only whether there is one.
	 */
	bool		seen;			/* set: seen_* hold the row as locked */
	bool		seen_whole;		/* the allowance was read too */
	TimestampTz seen_start;
	int64		seen_used;
	bool		seen_has_allowance;
	int64		seen_allowance;
} QuotaCounterWrite;

/* storage.c: the hot path (table access method; storage_spi.c on Citus) */
extern int	QuotaStorageLockCounters(int64 tenant_id, const int64 *qids, int n,
									 bool *found, TimestampTz *starts, int64 *used,
									 ItemPointerData *tids, bool *escrow);
extern int64 QuotaStorageWrite(const QuotaUsageRow *u, const QuotaCounterWrite *w, int n);
extern bool QuotaOnCitus(void);
extern uint64 QuotaCountersInvalidations(void);

/* storage_spi.c: the same as SQL statements naming tenant_id */
extern int	QuotaSpiLockCounters(int64 tenant_id, const int64 *qids, int n,
								 bool *found, TimestampTz *starts, int64 *used,
								 ItemPointerData *tids, bool *escrow);
extern int64 QuotaSpiWrite(const QuotaUsageRow *u, const QuotaCounterWrite *w, int n,
						   Oid usage_seq);
extern void QuotaSpiWriteCounter(int64 tenant_id, const QuotaCounterWrite *w, bool insert);

/* storage_slots.c: the slot-share rule */
extern int64 QuotaSlotShare(int64 limit, int slots, int i);

/* storage_slots.c: escrow slot rows (escrow.c) */
typedef struct QuotaSlotCharge
{
	bool		charged;		/* a slot was charged: row */
	QuotaCounterWrite row;		/* the slot as written */
	int64		before;			/* the quota's committed total as of the statement */
	bool		any_fits;		/* some slot could hold the amount */
	bool		stopped;		/* nothing charged: a slot locked no longer fitted
								 * (storage.c; the caller's rollback releases it) */
} QuotaSlotCharge;

extern void QuotaSlotChargeOne(bool wait, int64 tenant_id, int64 quota_id, TimestampTz start,
							   int64 amount, int64 limit, int slots, int first,
							   QuotaSlotCharge *res);
/* storage.c: the same charge through the table AM (Citus: QuotaSlotChargeOne) */
extern void QuotaStorageChargeSlot(bool wait, int64 tenant_id, int64 quota_id,
								   TimestampTz start, int64 amount, int64 limit, int slots,
								   int first, QuotaSlotCharge *res);
extern bool QuotaSlotProbe(int64 tenant_id, int64 quota_id, TimestampTz start, int64 amount,
						   int64 limit, int slots, int64 *before);
extern void QuotaSlotUndo(int64 tenant_id, int64 quota_id, int32 slot, int64 amount);
extern int	QuotaSlotLockAll(int64 tenant_id, int64 quota_id, QuotaCounterWrite **rows);
extern int	QuotaSlotsSeen(int64 tenant_id, int64 quota_id, QuotaCounterWrite **rows,
						   bool **mine);
extern bool QuotaSlotLockHeld(int64 tenant_id, int64 quota_id, int32 slot,
							  QuotaCounterWrite *row);
extern bool QuotaSlotLockFor(bool wait, int64 tenant_id, int64 quota_id, TimestampTz start,
							 int64 delta, int32 above, const int32 *taken, int ntaken,
							 QuotaCounterWrite *row);
extern int64 QuotaSlotSum(int64 tenant_id, int64 quota_id, TimestampTz start);
extern void QuotaStorageLockTenant(int64 tenant_id);

#endif							/* QUOTA_STORAGE_H */
