/*-------------------------------------------------------------------------
 *
 * period.h
 *		Calendar periods in the tenant's time zone (period.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef QUOTA_PERIOD_H
#define QUOTA_PERIOD_H

#include "quota_ext.h"
#include "datatype/timestamp.h"

/* period.c: calendar periods in the tenant's time zone */
typedef enum QuotaPeriod
{
	QUOTA_PERIOD_MINUTE,
	QUOTA_PERIOD_HOUR,
	QUOTA_PERIOD_DAY,
	QUOTA_PERIOD_WEEK,
	QUOTA_PERIOD_MONTH,
	QUOTA_PERIOD_YEAR,
	QUOTA_PERIOD_LIFETIME
} QuotaPeriod;

extern int	QuotaPeriodParse(const char *s);
extern const char *QuotaPeriodName(QuotaPeriod p);
extern void QuotaPeriodBounds(QuotaPeriod p, text *tz, TimestampTz at,
							  TimestampTz *start, TimestampTz *end);

#endif							/* QUOTA_PERIOD_H */
