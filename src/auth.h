/*-------------------------------------------------------------------------
 *
 * auth.h
 *		API keys (auth.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef QUOTA_AUTH_H
#define QUOTA_AUTH_H

#include "quota_ext.h"


/* auth.c: API keys */
extern void QuotaAuthInit(void);
extern void QuotaAuthenticate(text *api_key);
extern void QuotaKeyArgBegin(void);
extern void QuotaKeyArgDone(void);
extern void QuotaKeyRecheck(int64 tenant_id, int64 key_id);

#endif							/* QUOTA_AUTH_H */
