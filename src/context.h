/*-------------------------------------------------------------------------
 *
 * context.h
 *		The tenant context of a transaction and who a request acts as (context.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef QUOTA_CONTEXT_H
#define QUOTA_CONTEXT_H

#include "quota_ext.h"

#include "fmgr.h"

/* context.c: the tenant context held in backend memory */
typedef struct QuotaContext
{
	bool		valid;
	int64		tenant_id;
	int64		user_id;		/* 0 when set by set_tenant() */
	int64		key_id;			/* 0 when set by set_tenant() */
	char		role[QUOTA_MAX_ROLE_LEN + 1];
	int			nest_level;		/* transaction nest level it was set at */
	bool		from_token;		/* adopted from quota_ext.context_token */
} QuotaContext;

extern void QuotaContextInit(void);
extern void QuotaContextSet(int64 tenant_id, int64 user_id, int64 key_id,
							const char *role);
extern const QuotaContext *QuotaContextGet(void);
extern bool QuotaCallerIsAdmin(void);
extern void QuotaCheckAdmin(const char *what);
extern void QuotaCheckTenantAccess(int64 tenant_id);

/* context_citus.c: the context carried to Citus workers in a signed token */
extern char *quota_context_token;
extern void QuotaContextCitusInit(void);
extern void QuotaContextPublish(const QuotaContext *ctx);
extern bool QuotaContextAdopt(QuotaContext *out);

/* who a request acts as (QuotaIdentityResolve) */
typedef struct QuotaIdentity
{
	int64		user_id;		/* 0: unknown */
	int64		key_id;			/* 0: unknown */
	const char *role;			/* NULL: none */
} QuotaIdentity;

extern void QuotaIdentityResolve(FunctionCallInfo fcinfo, int64 tenant_id,
								 int user_arg, int key_arg, int role_arg,
								 QuotaIdentity *id);
pg_noreturn extern void QuotaRaiseUnknownTenant(int64 tenant_id);

#endif							/* QUOTA_CONTEXT_H */
