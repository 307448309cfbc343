/*-------------------------------------------------------------------------
 *
 * quota_ext.h
 *		Declarations shared between the subsystems of quota_ext.
 *
 * One section per C file; each file's header comment explains its part.
 * See doc/design.md for the map of the whole extension.
 *
 *-------------------------------------------------------------------------
 */
#ifndef QUOTA_EXT_H
#define QUOTA_EXT_H

#include "compat.h"

#include "executor/spi.h"
#include "fmgr.h"
#include "datatype/timestamp.h"

#define QUOTA_SCHEMA		"quota_ext"
#define QUOTA_ADMIN_ROLE	"quota_ext_admin"
#define QUOTA_APP_ROLE		"quota_ext_app"
#define QUOTA_MAX_ROLE_LEN	63

/* quota_ext.c */
extern bool QuotaPreloaded;

/* spi.c: privileged SPI with plans prepared once */
typedef struct QuotaPlan
{
	const char *sql;			/* fully qualified query text */
	int			nargs;
	Oid			argtypes[16];
	SPIPlanPtr	plan;			/* kept plan, prepared on first use */
} QuotaPlan;

typedef struct QuotaSpiState
{
	Oid			save_userid;
	int			save_sec_context;
} QuotaSpiState;

extern void QuotaSpiBegin(QuotaSpiState *state);
extern void QuotaSpiEnd(QuotaSpiState *state);
extern int	QuotaSpiExec(QuotaPlan *plan, Datum *values, const char *nulls,
						 bool read_only, long tcount);
extern Oid	QuotaOwnerId(void);

/* context.c: the tenant context held in backend memory */
typedef struct QuotaContext
{
	bool		valid;
	int64		tenant_id;
	int64		user_id;		/* 0 when set by set_tenant() */
	int64		key_id;			/* 0 when set by set_tenant() */
	char		role[QUOTA_MAX_ROLE_LEN + 1];
	int			nest_level;		/* transaction nest level it was set at */
} QuotaContext;

extern void QuotaContextInit(void);
extern void QuotaContextSet(int64 tenant_id, int64 user_id, int64 key_id,
							const char *role);
extern const QuotaContext *QuotaContextGet(void);
extern bool QuotaCallerIsAdmin(void);
extern void QuotaCheckTenantAccess(int64 tenant_id);
extern void QuotaRaiseUnknownTenant(int64 tenant_id) pg_attribute_noreturn();

/* auth.c: API keys */
extern void QuotaAuthInit(void);
extern void QuotaAuthenticate(text *api_key);

/* ratelimit.c / gcra.c: rate limits (GCRA in shared memory) */

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

/* policy.c: model resolution and access policies */
typedef struct QuotaPolicyResult
{
	bool		tenant_found;
	bool		tenant_active;
	char	   *timezone;		/* valid until QuotaSpiEnd */
	int64		model_id;		/* 0 when the name means no model */
	bool		allowed;
} QuotaPolicyResult;

extern void QuotaPolicyEvaluate(int64 tenant_id, const char *model,
								const char *role, QuotaPolicyResult *out);

/* quota.c: quotas, consumption, reservations */

/* argument helpers (quota_ext.c) */
extern void QuotaArgNotNull(FunctionCallInfo fcinfo, int argno, const char *name);

#endif							/* QUOTA_EXT_H */
