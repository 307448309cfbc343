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
 * by all backends and read it back.  It registers once (its module's Init),
 * and asks for an answer with QuotaCacheGet, which runs the protocol:
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
 * Flat data for the shared level: a kind's fields written one after the
 * other, each as its own bytes (no pointers, no struct padding), and read
 * back in the same order.  Writing past cap or reading past len sets bad.
 */
typedef struct QuotaFlat
{
	char	   *buf;
	Size		len;			/* written, or readable */
	Size		pos;			/* read so far */
	Size		cap;
	bool		bad;
} QuotaFlat;

extern void QuotaFlatPut(QuotaFlat *f, const void *p, Size n);
extern void QuotaFlatGet(QuotaFlat *f, void *p, Size n);
extern void QuotaFlatPutBytes(QuotaFlat *f, const void *p, Size n);
extern void *QuotaFlatGetBytes(QuotaFlat *f);

/* one scalar or fixed-size array field */
#define QUOTA_FLAT_PUT(f, field)	QuotaFlatPut((f), &(field), sizeof(field))
#define QUOTA_FLAT_GET(f, field)	QuotaFlatGet((f), &(field), sizeof(field))

/*
 * One kind of cached answer.  An entry is entrysize bytes that start with
 * the key (keysize bytes, zero-padded, starting with the tenant id: the
 * shared level counts each tenant's entries by it) and hold a bool at
 * valid_offset that cache.c sets.
 *
 * fill: read the answer for entry's key from the tables into entry (what
 *	it points to in QuotaCacheContext()); false when it must not be cached
 *	(unknown tenant, made-up name): the entry is forgotten and the caller's
 *	answer is whatever fill left in arg.
 * pack: write the entry as flat data (too long: nothing is shared).
 * unpack: the inverse, into a new entry (pointed-to parts in
 *	QuotaCacheContext()).
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
	void		(*pack) (const void *entry, QuotaFlat *out);
	void		(*unpack) (void *entry, QuotaFlat *in);
	bool		(*current) (const void *entry);
} QuotaCacheKind;

extern void QuotaCacheInit(void);
extern void QuotaCacheShmemRequest(void);
extern void QuotaCacheShmemStartup(void);
extern void QuotaCacheRegister(const QuotaCacheKind *kind);
extern bool QuotaCacheBegin(void);
extern void *QuotaCacheGet(const QuotaCacheKind *kind, const void *key, void *arg);
extern void *QuotaCachePeek(const QuotaCacheKind *kind, const void *key);
extern void QuotaCacheShare(const QuotaCacheKind *kind, const void *entry);
extern MemoryContext QuotaCacheContext(void);
extern uint64 QuotaConfigStamp(void);
extern bool QuotaConfigUnchanged(uint64 stamp);

#endif							/* QUOTA_CACHE_H */
