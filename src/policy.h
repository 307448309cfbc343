/*-------------------------------------------------------------------------
 *
 * policy.h
 *		Model resolution and access policies (policy.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef QUOTA_POLICY_H
#define QUOTA_POLICY_H

#include "quota_ext.h"
#include "metering.h"

/* policy.c: model resolution and access policies */
typedef struct QuotaPolicyResult
{
	bool		tenant_found;
	bool		tenant_active;
	char	   *timezone;		/* valid until QuotaSpiEnd */
	int64		model_id;		/* 0 when the name means no model */
	bool		allowed;
	QuotaPrice	price;			/* in force when the request started */
} QuotaPolicyResult;

extern void QuotaPolicyEvaluate(int64 tenant_id, const char *model,
								const char *role, QuotaPolicyResult *out);
extern void QuotaPolicyEvaluateFresh(int64 tenant_id, const char *model,
									 const char *role, QuotaPolicyResult *out);
extern bool QuotaPolicyFromCache(int64 tenant_id, const char *model,
								 const char *role, QuotaPolicyResult *out);


#endif							/* QUOTA_POLICY_H */
