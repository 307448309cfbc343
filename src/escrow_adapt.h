/*-------------------------------------------------------------------------
 *
 * escrow_adapt.h
 *		Automatic escrow (escrow_adapt.c; doc/design.md section 5): calls
 *		note counter waits in shared memory, a background worker re-lays a
 *		contended quota over escrow slots and folds it back.
 *
 *-------------------------------------------------------------------------
 */
#ifndef QUOTA_ESCROW_ADAPT_H
#define QUOTA_ESCROW_ADAPT_H

#include "quota_ext.h"

extern void QuotaEscrowInit(void);
extern void QuotaEscrowShmemRequest(void);
extern void QuotaEscrowShmemStartup(void);
extern void QuotaEscrowCount(int64 tenant_id, int64 quota_id);
extern void QuotaEscrowNote(int64 tenant_id, int64 quota_id, bool waited, int slots,
							int64 wait_us);

#endif							/* QUOTA_ESCROW_ADAPT_H */
