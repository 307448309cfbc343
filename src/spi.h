/*-------------------------------------------------------------------------
 *
 * spi.h
 *		Privileged SPI with plans prepared once (spi.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef QUOTA_SPI_H
#define QUOTA_SPI_H

#include "quota_ext.h"

#include "executor/spi.h"
#include "utils/resowner.h"

/* spi.c: privileged SPI with plans prepared once */
typedef struct QuotaPlan
{
	const char *sql;			/* fully qualified query text */
	int			nargs;
	Oid			argtypes[24];
	SPIPlanPtr	plan;			/* kept plan, prepared on first use */
} QuotaPlan;

typedef struct QuotaSpiState
{
	Oid			save_userid;
	int			save_sec_context;
	int			guc_nest_level; /* 0: the path was already pinned */
} QuotaSpiState;

extern void QuotaSpiBegin(QuotaSpiState *state);
extern void QuotaSpiEnd(QuotaSpiState *state);
extern int	QuotaSpiExec(QuotaPlan *plan, Datum *values, const char *nulls,
						 bool read_only, long tcount);
/* a plan of QuotaSpiRow(Value): $1 tenant_id, $2 the row's id, both int8 */
#define QUOTA_ROW_PLAN(query)	{query, 2, {INT8OID, INT8OID}, NULL}

extern HeapTuple QuotaSpiRow(QuotaPlan *plan, int64 tenant_id, int64 id);
extern bool QuotaSpiRowValue(QuotaPlan *plan, int64 tenant_id, int64 id, Datum *value);
extern ErrorData *QuotaSubxactAbort(MemoryContext cxt, ResourceOwner owner);
extern Oid	QuotaOwnerId(void);
extern Oid	QuotaSchemaOid(void);

#endif							/* QUOTA_SPI_H */
