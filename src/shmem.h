/*-------------------------------------------------------------------------
 *
 * shmem.h
 *		The one shared-memory request and start-up (shmem.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef QUOTA_SHMEM_H
#define QUOTA_SHMEM_H

#include "quota_ext.h"

/* shmem.c: the one shared-memory request and start-up of the modules */
extern void QuotaShmemInit(void);

#endif							/* QUOTA_SHMEM_H */
