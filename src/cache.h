/*-------------------------------------------------------------------------
 *
 * cache.h
 *		The configuration cache (cache.c): one protocol for every kind of
 *		cached answer.
 *
 * A kind (API keys in auth.c, policy answers in policy.c, rate-limit rules
 * in ratelimit_rules.c, quota definitions in consume.c) describes itself
 * with a QuotaCacheKind: its id, the size of its key and entry, and how to
 * fill an entry from the tables, write it as flat data for the level shared
 * by all backends and read it back.  It asks for an answer with
 * QuotaCacheGet (which registers the kind at its first call), and that
 * runs the protocol:
 * the backend's entry when valid and in force, else the shared copy, else
 * the kind's query (an answer it declines to cache is forgotten), then the
 * entry is marked valid and filed in the shared level.  Callers first ask
 * QuotaCacheBegin whether this request may use the cache at all (it also
 * empties the cache when the configuration generation moved).
 *
 *-------------------------------------------------------------------------
 */
#ifndef QUOTA_CACHE_H
#define QUOTA_CACHE_H

#include "quota_ext.h"

/* most kinds; a kind's id is 1 .. QUOTA_CACHE_MAX_KINDS - 1 */
#define QUOTA_CACHE_MAX_KINDS	8

/* a shared entry holds at most this many bytes of flat data */
#define QUOTA_SHARED_DATA	1024

/*
 * Flat data for the shared level: a kind's fields one after the other, each
 * as its own bytes (no pointers, no struct padding).  One function of the
 * kind lists its fields for both directions: writing (reading false) copies
 * each field into buf, reading copies it back, so the two cannot disagree.
 * Going past cap (writing) or len (reading) sets bad.
 */
typedef struct QuotaFlat
{
	bool		reading;
	char	   *buf;
	Size		len;			/* written, or readable */
	Size		pos;			/* read so far */
	Size		cap;
	bool		bad;
} QuotaFlat;

extern void QuotaFlatField(QuotaFlat *f, void *p, Size n);
extern void QuotaFlatBytes(QuotaFlat *f, void **p, Size n);
extern void *QuotaFlatAlloc(QuotaFlat *f, void *p, Size n);
extern void QuotaFlatCount(QuotaFlat *f, int *n, int max);

/* one scalar or fixed-size array field */
#define QUOTA_FLAT(f, field)	QuotaFlatField((f), &(field), sizeof(field))
/* a fixed-size string field, NUL-terminated however it was read back */
#define QUOTA_FLAT_STR(f, field) \
	do { QUOTA_FLAT(f, field); (field)[sizeof(field) - 1] = '\0'; } while (0)

/*
 * One kind of cached answer.  An entry is entrysize bytes that start with
 * the key (keysize bytes, zero-padded, starting with the tenant id: the
 * shared level counts each tenant's entries by it) and hold a bool at
 * valid_offset that cache.c sets (QUOTA_CACHE_KIND fills in the three).
 *
 * fill: read the answer for entry's key from the tables into entry (what
 *	it points to in QuotaCacheContext()); false when it must not be cached
 *	(unknown tenant, made-up name): the entry is forgotten and the caller's
 *	answer is whatever fill left in arg.
 * flat: write the entry as flat data, or read it back into a new entry
 *	(what it points to in QuotaCacheContext()); too long: not shared.
 * current: is a valid entry still in force (deadlines kept with it)?  NULL:
 *	always, until the configuration changes.
 */
typedef struct QuotaCacheKind
{
	int32		id;				/* names its entries in the shared level */
	const char *name;
	Size		keysize;
	Size		entrysize;
	Size		valid_offset;
	bool		(*fill) (void *entry, void *arg);
	void		(*flat) (void *entry, QuotaFlat *f);
	bool		(*current) (const void *entry);
} QuotaCacheKind;

#define QUOTA_CACHE_KIND(type, kind_id, kind_name, fill_fn, flat_fn, current_fn) \
	{ \
		.id = (kind_id), .name = (kind_name), \
		.keysize = sizeof(((type *) 0)->key), .entrysize = sizeof(type), \
		.valid_offset = offsetof(type, valid), \
		.fill = (fill_fn), .flat = (flat_fn), .current = (current_fn) \
	}

extern void QuotaCacheInit(void);
extern void QuotaCacheShmemRequest(void);
extern void QuotaCacheShmemStartup(void);
extern bool QuotaCacheBegin(void);
extern void *QuotaCacheGet(const QuotaCacheKind *kind, const void *key, void *arg);
extern void *QuotaCachePeek(const QuotaCacheKind *kind, const void *key);
extern void QuotaCacheShare(const QuotaCacheKind *kind, const void *entry);
extern MemoryContext QuotaCacheContext(void);
extern uint64 QuotaConfigStamp(void);
extern bool QuotaConfigUnchanged(uint64 stamp, int64 tenant_id);

#endif							/* QUOTA_CACHE_H */
