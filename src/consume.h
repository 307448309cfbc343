/*-------------------------------------------------------------------------
 *
 * consume.h
 *		The request path's interface to the rest of the extension (consume.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef QUOTA_CONSUME_H
#define QUOTA_CONSUME_H

#include "quota_ext.h"

/* consume.c: the quota definition cache */
extern void QuotaConsumeInit(void);

#endif							/* QUOTA_CONSUME_H */
