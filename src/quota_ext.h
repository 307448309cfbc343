/*-------------------------------------------------------------------------
 *
 * quota_ext.h
 *		Declarations shared between the subsystems of quota_ext.
 *
 * Only what every module shares: names, bounds, QUOTA_PRIVATE.  Each
 * module declares its interface in its own header (spi.h, context.h,
 * cache.h, auth.h, policy.h, metering.h, period.h, gcra.h, ratelimit.h,
 * stats.h, shmem.h, storage.h, consume.h, args.h, audit.h); the request
 * path's and the rate limiter's private ones are consume_internal.h and
 * ratelimit_internal.h.  See doc/design.md for the map.
 *
 *-------------------------------------------------------------------------
 */
#ifndef QUOTA_EXT_H
#define QUOTA_EXT_H

#include "compat.h"

/*
 * A function or variable that several files of one module share and that
 * is not part of the library's interface: hidden from the dynamic symbol
 * table (consume_internal.h, ratelimit_internal.h).
 */
#if defined(__GNUC__)
#define QUOTA_PRIVATE __attribute__((visibility("hidden")))
#else
#define QUOTA_PRIVATE
#endif

#define QUOTA_SCHEMA		"quota_ext"
#define QUOTA_ADMIN_ROLE	"quota_ext_admin"
#define QUOTA_APP_ROLE		"quota_ext_app"
#define QUOTA_MAX_ROLE_LEN	63

/*
 * Bounds of one call (doc/reference.md, "Bounds"): units, an estimate or an
 * actual, input_tokens and output_tokens are at most QUOTA_MAX_UNITS each
 * (10^15: below 2^53, so JSON clients keep them exact), and a call's cost at
 * most QUOTA_MAX_COST_MICRO micro-units (10^12 of its currency).  Beyond:
 * 22003, nothing changed.  Sums of them (rollups, invoices, reports) are
 * numeric; quota counters are int64 and checked (22003 for that quota).
 */
#define QUOTA_MAX_UNITS			INT64CONST(1000000000000000)
#define QUOTA_MAX_COST_MICRO	INT64CONST(1000000000000000000)

/* error messages quote at most this many characters of a caller's text */
#define QUOTA_QUOTE_MAX_CHARS	64

#endif							/* QUOTA_EXT_H */
