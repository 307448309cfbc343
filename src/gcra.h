/*-------------------------------------------------------------------------
 *
 * gcra.h
 *		The generic cell rate algorithm (gcra.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef QUOTA_GCRA_H
#define QUOTA_GCRA_H

#include "quota_ext.h"

#include "fmgr.h"

/* gcra.c: the generic cell rate algorithm, pure arithmetic */
typedef enum QuotaGcraStatus
{
	QUOTA_GCRA_OK,
	QUOTA_GCRA_ZERO_RATE,		/* period / count under one nanosecond */
	QUOTA_GCRA_OVERFLOW,		/* does not fit in int64 nanoseconds */
	QUOTA_GCRA_TOO_LONG			/* a bucket would live longer than a day */
} QuotaGcraStatus;

/*
 * The longest period_seconds, and the longest time a bucket may take to
 * refill completely (its tolerance, (max_burst + 1) * period / count, which
 * is also the longest time it stays in the shared table): one day.  Longer
 * limits are quotas (persistent, per calendar period), not rate limits.
 */
#define QUOTA_RL_MAX_SECONDS	86400

typedef struct QuotaGcraResult
{
	bool		limited;
	int64		limit;			/* max_burst + 1 */
	int64		remaining;
	int64		retry_after;	/* seconds, rounded up as redis-cell; -1 */
	int64		reset_after;	/* seconds, rounded up as redis-cell */
	int64		retry_after_ns; /* -1 s when allowed or never possible */
	int64		reset_after_ns;
	int64		new_tat;		/* TAT to store (ns) */
} QuotaGcraResult;

extern QuotaGcraStatus QuotaGcraEval(int64 tat, int64 now, int64 max_burst,
									 int64 count, int64 period_s,
									 int64 quantity, QuotaGcraResult *out);
extern void QuotaGcraCheckArgs(int64 max_burst, int64 count, int64 period_s,
							   int64 quantity);
extern void QuotaGcraGetArgs(FunctionCallInfo fcinfo, int first, int64 *max_burst,
							 int64 *count, int64 *period_s, int64 *quantity);
extern void QuotaGcraValues(const QuotaGcraResult *r, Datum *values);
pg_noreturn extern void QuotaGcraRaise(QuotaGcraStatus status, int64 max_burst,
									   int64 count, int64 period_s, int64 quantity);

#endif							/* QUOTA_GCRA_H */
