/*-------------------------------------------------------------------------
 *
 * direct.h
 *		Counters and usage rows without the executor (direct.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef QUOTA_DIRECT_H
#define QUOTA_DIRECT_H

#include "quota_ext.h"
#include "datatype/timestamp.h"
#include "storage/itemptr.h"

/* direct.c: counters and usage rows without the executor (single-slot quotas) */
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

/* one counter row to write: quota, slot (0 unless escrow) and new values */
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
} QuotaCounterWrite;

extern int	QuotaDirectLockCounters(int64 tenant_id, const int64 *qids, int n,
									bool *found, TimestampTz *starts, int64 *used,
									ItemPointerData *tids, bool *escrow);
extern int64 QuotaDirectWrite(const QuotaUsageRow *u, const QuotaCounterWrite *w, int n);

extern bool QuotaOnCitus(void);

/* direct_spi.c: the same as SQL statements naming tenant_id, on Citus (issue 16) */
extern int	QuotaSpiLockCounters(int64 tenant_id, const int64 *qids, int n,
								 bool *found, TimestampTz *starts, int64 *used,
								 ItemPointerData *tids, bool *escrow);
extern int64 QuotaSpiWrite(const QuotaUsageRow *u, const QuotaCounterWrite *w, int n,
						   Oid usage_seq);

#endif							/* QUOTA_DIRECT_H */
