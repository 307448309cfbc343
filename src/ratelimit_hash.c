/*-------------------------------------------------------------------------
 *
 * ratelimit_hash.c
 *		Rate limits: keyed SipHash-2-4, with which quota_rl_digest
 *		(ratelimit_shmem.c) names a bucket.  Pure functions: nothing here
 *		reads shared memory or calls another file.
 *
 * Keys.  A bucket is named by a 128-bit SipHash-2-4 tag over a namespace
 * and the key: 'g' for quota_ext.rate_limit_check() (one namespace for
 * every caller), 't' plus the tenant id for tenant_rate_limit_check(), 'r'
 * plus the tenant id and rule id for configured rules, each also with the
 * database OID (the table is cluster-wide; tenant 1 of one database is not
 * tenant 1 of another).  The fields before the key have fixed widths, so
 * two different (namespace, key) pairs never hash the same input.  SipHash
 * is a keyed pseudo-random function; its 128-bit key is drawn with
 * pg_strong_random() at every server start and lives only in this shared
 * memory.  Without it nobody can compute a tag, so a collision cannot be
 * crafted, and an accidental one among n live keys has probability about
 * n^2 / 2^129 (below 10^-22 for 10^8 keys): no practical concern.  The key
 * text itself is not stored.  (Until 0.1.0 was benchmarked this was
 * SHA-256 through pg_cryptohash, whose per-call OpenSSL context set-up
 * cost more than the rest of the check; the table is rebuilt at every
 * start, so the digest can change between builds.)
 *
 *-------------------------------------------------------------------------
 */
#include "quota_ext.h"

#include <time.h>

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "port/pg_bswap.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/tuplestore.h"
#include "utils/typcache.h"

#include "ratelimit_internal.h"

/*
 * quota_rl_siphash
 *		SipHash-2-4 with a 128-bit tag (Aumasson and Bernstein, "SipHash: a
 *		fast short-input PRF", and the reference siphash.c with outlen 16),
 *		under the 128-bit secret k.  Checked against the reference
 *		vectors_sip128 in assert-enabled builds (quota_rl_siphash_selftest).
 */
#define QUOTA_ROTL64(x, b)	(((x) << (b)) | ((x) >> (64 - (b))))

/* n SipRounds over the state v[0..3] */
static inline void
quota_rl_siprounds(uint64 *v, int n)
{
	while (n-- > 0)
	{
		v[0] += v[1];
		v[1] = QUOTA_ROTL64(v[1], 13);
		v[1] ^= v[0];
		v[0] = QUOTA_ROTL64(v[0], 32);
		v[2] += v[3];
		v[3] = QUOTA_ROTL64(v[3], 16);
		v[3] ^= v[2];
		v[0] += v[3];
		v[3] = QUOTA_ROTL64(v[3], 21);
		v[3] ^= v[0];
		v[2] += v[1];
		v[1] = QUOTA_ROTL64(v[1], 17);
		v[1] ^= v[2];
		v[2] = QUOTA_ROTL64(v[2], 32);
	}
}

static inline uint64
quota_rl_le64(const uint8 *p)
{
	uint64		x;

	memcpy(&x, p, sizeof(x));
#ifdef WORDS_BIGENDIAN
	x = pg_bswap64(x);
#endif
	return x;
}

void
quota_rl_siphash(const uint8 *in, size_t len, const uint64 *k, uint64 *out)
{
	uint64		v[4] = {
		UINT64CONST(0x736f6d6570736575) ^ k[0],
		UINT64CONST(0x646f72616e646f6d) ^ k[1] ^ 0xee,
		UINT64CONST(0x6c7967656e657261) ^ k[0],
		UINT64CONST(0x7465646279746573) ^ k[1],
	};
	uint64		b = ((uint64) len) << 56;
	const uint8 *end = in + (len & ~(size_t) 7);
	uint64		m;
	int			i;

	for (; in != end; in += 8)
	{
		m = quota_rl_le64(in);
		v[3] ^= m;
		quota_rl_siprounds(v, 2);
		v[0] ^= m;
	}
	/* the last len % 8 bytes, little-endian, under the length byte */
	for (i = len & 7; i > 0; i--)
		b |= ((uint64) in[i - 1]) << (8 * (i - 1));
	v[3] ^= b;
	quota_rl_siprounds(v, 2);
	v[0] ^= b;
	v[2] ^= 0xee;
	quota_rl_siprounds(v, 4);
	out[0] = v[0] ^ v[1] ^ v[2] ^ v[3];
	v[1] ^= 0xdd;
	quota_rl_siprounds(v, 4);
	out[1] = v[0] ^ v[1] ^ v[2] ^ v[3];
}

#ifdef USE_ASSERT_CHECKING
/*
 * quota_rl_siphash_selftest
 *		The reference vectors_sip128 for messages 00 01 .. (n-1) under the
 *		key 00 01 .. 0f, n = 0, 7, 8 and 9 (each tag as two little-endian
 *		words).
 */
void
quota_rl_siphash_selftest(void)
{
	static const struct
	{
		int			len;
		uint64		tag[2];
	}			v[] = {
		{0, {UINT64CONST(0xe6a825ba047f81a3), UINT64CONST(0x930255c71472f66d)}},
		{7, {UINT64CONST(0x53c1dbd8beebf1a1), UINT64CONST(0x3982f01fa64ab8c0)}},
		{8, {UINT64CONST(0x61f55862baa9623b), UINT64CONST(0xb49714f364e2830f)}},
		{9, {UINT64CONST(0xabbad90a06994426), UINT64CONST(0xed716dbb028b7fc4)}},
	};
	uint8		msg[16];
	uint64		key[2];
	uint64		out[2];
	int			i;

	for (i = 0; i < 16; i++)
		msg[i] = (uint8) i;
	key[0] = quota_rl_le64(msg);
	key[1] = quota_rl_le64(msg + 8);
	for (i = 0; i < lengthof(v); i++)
	{
		quota_rl_siphash(msg, v[i].len, key, out);
		Assert(out[0] == v[i].tag[0] && out[1] == v[i].tag[1]);
	}
}
#endif
