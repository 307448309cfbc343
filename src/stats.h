/*-------------------------------------------------------------------------
 *
 * stats.h
 *		Decision counters per tenant in shared memory (stats.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef QUOTA_STATS_H
#define QUOTA_STATS_H

#include "quota_ext.h"

/* stats.c: decision counters per tenant in shared memory */
typedef enum QuotaOutcome
{
	QUOTA_OUTCOME_ALLOWED,
	QUOTA_OUTCOME_DENIED_QUOTA,
	QUOTA_OUTCOME_DENIED_RATE,
	QUOTA_OUTCOME_DENIED_POLICY,
	QUOTA_OUTCOME_DENIED_TENANT,
	QUOTA_OUTCOME_REPLAYED,
	QUOTA_NUM_OUTCOMES
} QuotaOutcome;

extern void QuotaStatsInit(void);
extern void QuotaStatsShmemRequest(void);
extern void QuotaStatsShmemStartup(void);

extern void QuotaStatsCount(int64 tenant_id, QuotaOutcome outcome);

#endif							/* QUOTA_STATS_H */
