/*-------------------------------------------------------------------------
 *
 * auth.c
 *		API keys: minting, hashing and quota_ext.authenticate().
 *
 * A key reads  qxk_<tenant_id>_<key_id>_<secret>  where <secret> is 32
 * base62 characters from pg_strong_random (about 190 bits) followed by a
 * 6-character base62 CRC-32C of everything before it.  The visible part
 * (qxk_<tenant_id>_<key_id>) is the lookup key and is stored as key_prefix;
 * the table holds only the SHA-256 of the whole key (PostgreSQL's
 * cryptohash), compared with timingsafe_bcmp.  The checksum lets malformed
 * or mistyped keys be refused before any table is read, and lets leaked
 * strings be recognised by scanners, as GitHub's tokens do.
 *
 * Carrying the tenant id in the key means authenticate() reads the key row
 * by its primary key (tenant_id, key_id): one index probe, and on Citus a
 * router query to the tenant's shard.
 *
 * Every failure (malformed, unknown, wrong secret, revoked, expired, user
 * disabled, tenant suspended or closed) raises the same error, SQLSTATE
 * 28000, with the same text, so a caller learns nothing about which case it
 * was.
 *
 * A key must not reach the server log: from the moment a statement hands a
 * key to QuotaAuthenticate until that call (authenticate() or invoke())
 * returns, an error's STATEMENT line is suppressed (emit_log_hook), so a
 * failing invoke('qxk_...', ...) logs its error but not the key.  What the
 * extension cannot reach (log_statement = 'all', pg_stat_activity.query)
 * is kept clean by passing keys as bind parameters (SECURITY.md).
 *
 * last_used_at is refreshed at most once per quota_ext.key_touch_interval
 * per key, with SKIP LOCKED so a busy key never queues on its own row, and
 * never in a read-only, REPEATABLE READ or SERIALIZABLE transaction:
 * authenticate() is a read on all other calls.
 *
 *-------------------------------------------------------------------------
 */
#include "quota_ext.h"
#include "spi.h"
#include "context.h"
#include "storage.h"
#include "cache.h"
#include "args.h"
#include "auth.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "common/cryptohash.h"
#include "common/sha2.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "port/pg_crc32c.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(quota_ext_authenticate);
PG_FUNCTION_INFO_V1(quota_ext_api_key_mint);

#define QUOTA_KEY_PREFIX		"qxk_"
#define QUOTA_KEY_SECRET_LEN	32
#define QUOTA_KEY_CRC_LEN		6
#define QUOTA_KEY_MAX_LEN		255

static const char base62[] =
"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

static int	quota_key_touch_interval = 60;

/* a statement's key argument is being used (see the header) */
static bool quota_key_in_flight = false;
static emit_log_hook_type prev_emit_log_hook = NULL;

static void
quota_auth_emit_log(ErrorData *edata)
{
	if (quota_key_in_flight && edata->elevel >= ERROR)
		edata->hide_stmt = true;
	if (prev_emit_log_hook)
		prev_emit_log_hook(edata);
}

static void
quota_auth_xact_callback(XactEvent event, void *arg)
{
	/* after the error was reported, or a caught one's transaction ended */
	quota_key_in_flight = false;
}

/* last_used_at of one key (see the file header): $1 tenant_id, $2 key_id */
static QuotaPlan touch = {
	"UPDATE quota_ext.api_keys k SET last_used_at = pg_catalog.now() "
	"FROM (SELECT tenant_id, key_id FROM quota_ext.api_keys "
	"      WHERE tenant_id OPERATOR(pg_catalog.=) $1 "
	"        AND key_id OPERATOR(pg_catalog.=) $2 "
	"      FOR NO KEY UPDATE SKIP LOCKED) s "
	"WHERE k.tenant_id OPERATOR(pg_catalog.=) s.tenant_id "
	"  AND k.key_id OPERATOR(pg_catalog.=) s.key_id",
	2, {INT8OID, INT8OID}
};

/*
 * On Citus the touch waits for the transaction's commit (see
 * quota_touch_defer): the keys to touch then, each with the subtransaction
 * that asked, in TopTransactionContext.
 */
typedef struct PendingTouch
{
	int64		tenant_id;
	int64		key_id;
	SubTransactionId subxid;
} PendingTouch;

static List *pending_touches = NIL;
static bool pending_callbacks_registered = false;

static void quota_touch_cached(int64 tenant_id, int64 key_id);

static void
quota_touch_run(int64 tenant_id, int64 key_id)
{
	Datum		values[2];

	values[0] = Int64GetDatum(tenant_id);
	values[1] = Int64GetDatum(key_id);
	QuotaSpiExec(&touch, values, NULL, false, 0);
}

/*
 * quota_touch_one_best_effort
 *		One deferred touch in an internal subtransaction: an error (Citus
 *		refusing the owner's statement on a placement the app modified over
 *		its own connection, a lock or serialization failure) rolls the
 *		subtransaction back and skips the touch.  last_used_at is a hint; it
 *		never fails the app's COMMIT.  Citus sends SAVEPOINT / ROLLBACK TO
 *		SAVEPOINT / RELEASE SAVEPOINT for it to the workers the transaction
 *		has open, so a skipped touch leaves them as they were.
 */
static void
quota_touch_one_best_effort(PendingTouch *t)
{
	MemoryContext oldcontext = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;
	QuotaSpiState spi;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(oldcontext);
	PG_TRY();
	{
		PushActiveSnapshot(GetTransactionSnapshot());
		QuotaSpiBegin(&spi);
		quota_touch_run(t->tenant_id, t->key_id);
		QuotaSpiEnd(&spi);
		quota_touch_cached(t->tenant_id, t->key_id);
		PopActiveSnapshot();
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcontext);
		CurrentResourceOwner = oldowner;
	}
	PG_CATCH();
	{
		ErrorData  *edata = QuotaSubxactAbort(oldcontext, oldowner);

		ereport(DEBUG1,
				(errmsg_internal("quota_ext: last_used_at of key %lld of tenant %lld not written at commit: %s",
								 (long long) t->key_id, (long long) t->tenant_id,
								 edata->message)));
		FreeErrorData(edata);
	}
	PG_END_TRY();
}

/*
 * quota_touch_xact_callback
 *		Just before COMMIT (or PREPARE TRANSACTION), the touches deferred in
 *		this transaction, as the owner, each best effort; at any end, forget
 *		them.  A transaction made read-only after the authenticate
 *		(SET transaction_read_only) writes none.  Registered at the first
 *		deferral, so after Citus's own callback, and called before it
 *		(PostgreSQL calls the latest first): the UPDATEs go out while the
 *		transaction's worker connections are still open, and commit with it.
 */
static void
quota_touch_xact_callback(XactEvent event, void *arg)
{
	List	   *todo = pending_touches;
	ListCell   *lc;

	pending_touches = NIL;
	if (todo == NIL || (event != XACT_EVENT_PRE_COMMIT && event != XACT_EVENT_PRE_PREPARE))
		return;
	if (XactReadOnly)
		return;
	foreach(lc, todo)
		quota_touch_one_best_effort((PendingTouch *) lfirst(lc));
}

/* ROLLBACK TO SAVEPOINT forgets the touches asked for since the savepoint */
static void
quota_touch_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
							 SubTransactionId parentSubid, void *arg)
{
	ListCell   *lc;

	if (event != SUBXACT_EVENT_ABORT_SUB || pending_touches == NIL)
		return;

	/*
	 * Deleted in place: this runs in TransactionAbortContext, which is reset
	 * right after, so nothing may be allocated here (a new list built with
	 * lappend would be freed under pending_touches).
	 */
	foreach(lc, pending_touches)
	{
		PendingTouch *t = (PendingTouch *) lfirst(lc);

		/* (ids grow: mySubid's children were started after it) */
		if (t->subxid >= mySubid)
			pending_touches = foreach_delete_current(pending_touches, lc);
	}
}

/*
 * quota_touch_defer
 *		On Citus, last_used_at is written just before COMMIT rather than at
 *		once.  The UPDATE runs as the owner; run at once, it modified the
 *		tenant's placements over the owner's worker connection, and Citus
 *		then refused every later statement of the transaction that reads
 *		them as the app ("cannot perform query on placements that were
 *		modified in this transaction by a different user").  At COMMIT no
 *		statement of the app follows.  The write is the same (same row,
 *		value now(), same transaction: a rollback, or a ROLLBACK TO a
 *		savepoint before the authenticate, undoes it), so
 *		key_touch_interval means what it means on a single node.
 */
static void
quota_touch_defer(int64 tenant_id, int64 key_id)
{
	MemoryContext old;
	PendingTouch *t;
	ListCell   *lc;

	foreach(lc, pending_touches)
	{
		t = (PendingTouch *) lfirst(lc);
		if (t->tenant_id == tenant_id && t->key_id == key_id)
			return;
	}
	if (!pending_callbacks_registered)
	{
		RegisterXactCallback(quota_touch_xact_callback, NULL);
		RegisterSubXactCallback(quota_touch_subxact_callback, NULL);
		pending_callbacks_registered = true;
	}
	old = MemoryContextSwitchTo(TopTransactionContext);
	t = palloc(sizeof(PendingTouch));
	t->tenant_id = tenant_id;
	t->key_id = key_id;
	t->subxid = GetCurrentSubTransactionId();
	pending_touches = lappend(pending_touches, t);
	MemoryContextSwitchTo(old);
}

/*
 * QuotaKeyArgBegin, QuotaKeyArgDone
 *		A function that takes an API key argument calls Begin first thing
 *		and Done before it returns: errors in between hide their statement.
 */
void
QuotaKeyArgBegin(void)
{
	quota_key_in_flight = true;
}

void
QuotaKeyArgDone(void)
{
	quota_key_in_flight = false;
}

void
QuotaAuthInit(void)
{
	DefineCustomIntVariable("quota_ext.key_touch_interval",
							"Seconds between updates of an API key's last_used_at.",
							"0 updates it on every authenticate().",
							&quota_key_touch_interval,
							60, 0, 86400,
							PGC_SUSET, GUC_UNIT_S,
							NULL, NULL, NULL);
	prev_emit_log_hook = emit_log_hook;
	emit_log_hook = quota_auth_emit_log;
	RegisterXactCallback(quota_auth_xact_callback, NULL);
}

static void
quota_key_crc(const char *s, size_t len, char *out)
{
	pg_crc32c	crc;
	int			i;

	INIT_CRC32C(crc);
	COMP_CRC32C(crc, s, len);
	FIN_CRC32C(crc);
	for (i = QUOTA_KEY_CRC_LEN - 1; i >= 0; i--)
	{
		out[i] = base62[crc % 62];
		crc /= 62;
	}
}

static void
quota_sha256(const char *s, size_t len, uint8 *out)
{
	pg_cryptohash_ctx *ctx = pg_cryptohash_create(PG_SHA256);

	if (ctx == NULL ||
		pg_cryptohash_init(ctx) < 0 ||
		pg_cryptohash_update(ctx, (const uint8 *) s, len) < 0 ||
		pg_cryptohash_final(ctx, out, PG_SHA256_DIGEST_LENGTH) < 0)
	{
		pg_cryptohash_free(ctx);
		elog(ERROR, "could not compute SHA-256");
	}
	pg_cryptohash_free(ctx);
}

pg_noreturn static void
quota_invalid_key(void);

static void
quota_invalid_key(void)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
			 errmsg("invalid API key"),
			 errhidestmt(true)));
}

/* parse 1..18 decimal digits without a leading zero; advance *p */
static bool
quota_parse_id(const char **p, const char *end, int64 *out)
{
	const char *s = *p;
	int64		v = 0;
	int			n = 0;

	while (s < end && *s >= '0' && *s <= '9' && n < 19)
	{
		v = v * 10 + (*s - '0');
		s++;
		n++;
	}
	if (n == 0 || n > 18 || **p == '0')
		return false;
	*p = s;
	*out = v;
	return true;
}

/*
 * quota_parse_key
 *		Check the shape and checksum of a key; on success return the tenant
 *		and key ids.  Reads no table.
 */
static bool
quota_parse_key(const char *key, size_t len, int64 *tenant_id, int64 *key_id)
{
	const char *p = key;
	const char *end = key + len;
	const char *secret;
	char		crc[QUOTA_KEY_CRC_LEN];
	size_t		i;

	if (len > QUOTA_KEY_MAX_LEN || len < strlen(QUOTA_KEY_PREFIX))
		return false;
	if (memcmp(p, QUOTA_KEY_PREFIX, strlen(QUOTA_KEY_PREFIX)) != 0)
		return false;
	p += strlen(QUOTA_KEY_PREFIX);
	if (!quota_parse_id(&p, end, tenant_id) || p >= end || *p++ != '_')
		return false;
	if (!quota_parse_id(&p, end, key_id) || p >= end || *p++ != '_')
		return false;
	secret = p;
	if (end - secret != QUOTA_KEY_SECRET_LEN + QUOTA_KEY_CRC_LEN)
		return false;
	for (i = 0; i < QUOTA_KEY_SECRET_LEN + QUOTA_KEY_CRC_LEN; i++)
		if (strchr(base62, secret[i]) == NULL || secret[i] == '\0')
			return false;
	quota_key_crc(key, len - QUOTA_KEY_CRC_LEN, crc);
	return memcmp(crc, end - QUOTA_KEY_CRC_LEN, QUOTA_KEY_CRC_LEN) == 0;
}

/*
 * quota_ext._api_key_mint(tenant_id bigint, key_id bigint)
 *		RETURNS (api_key text, key_prefix text, key_hash bytea)
 *
 * Internal (no EXECUTE for anyone but the owner): make a new key for the
 * given ids.  The caller stores prefix and hash and shows api_key once.
 */
Datum
quota_ext_api_key_mint(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[3];
	bool		nulls[3] = {false, false, false};
	char		prefix[64];
	char		key[QUOTA_KEY_MAX_LEN + 1];
	size_t		plen;
	size_t		len;
	uint8		digest[PG_SHA256_DIGEST_LENGTH];
	bytea	   *hash;
	int			i;

	QuotaArgNotNull(fcinfo, 0, "tenant_id");
	QuotaArgNotNull(fcinfo, 1, "key_id");
	if (PG_GETARG_INT64(0) <= 0 || PG_GETARG_INT64(1) <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("tenant and key ids must be positive")));
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");

	plen = snprintf(prefix, sizeof(prefix), QUOTA_KEY_PREFIX "%lld_%lld",
					(long long) PG_GETARG_INT64(0), (long long) PG_GETARG_INT64(1));
	memcpy(key, prefix, plen);
	key[plen] = '_';
	len = plen + 1;
	for (i = 0; i < QUOTA_KEY_SECRET_LEN;)
	{
		uint8		buf[64];
		int			j;

		if (!pg_strong_random(buf, sizeof(buf)))
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("could not generate random API key")));
		/* rejection sampling keeps the alphabet uniform */
		for (j = 0; j < (int) sizeof(buf) && i < QUOTA_KEY_SECRET_LEN; j++)
			if (buf[j] < 248)
				key[len + i++] = base62[buf[j] % 62];
	}
	len += QUOTA_KEY_SECRET_LEN;
	quota_key_crc(key, len, key + len);
	len += QUOTA_KEY_CRC_LEN;
	key[len] = '\0';

	quota_sha256(key, len, digest);
	hash = (bytea *) palloc(VARHDRSZ + PG_SHA256_DIGEST_LENGTH);
	SET_VARSIZE(hash, VARHDRSZ + PG_SHA256_DIGEST_LENGTH);
	memcpy(VARDATA(hash), digest, PG_SHA256_DIGEST_LENGTH);

	values[0] = CStringGetTextDatum(key);
	values[1] = CStringGetTextDatum(prefix);
	values[2] = PointerGetDatum(hash);
	explicit_bzero(key, sizeof(key));
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

/* the cached facts about a good key (cache.c) */
typedef struct QuotaKeyCacheKey
{
	int64		tenant_id;
	int64		key_id;
} QuotaKeyCacheKey;

typedef struct QuotaKeyCacheEntry
{
	QuotaKeyCacheKey key;
	bool		valid;
	uint8		hash[PG_SHA256_DIGEST_LENGTH];
	int64		user_id;
	char		role[QUOTA_MAX_ROLE_LEN + 1];
	TimestampTz expires_at;		/* +infinity: never */
	TimestampTz last_used_at;	/* -infinity: never; as last seen or set */
} QuotaKeyCacheEntry;

/*
 * quota_key_read
 *		Read a key that is good now (not revoked or expired, user and tenant
 *		active) into *e; false when there is none.
 */
static bool
quota_key_read(int64 tenant_id, int64 key_id, QuotaKeyCacheEntry *e)
{
	static QuotaPlan lookup = QUOTA_ROW_PLAN(
		"SELECT k.key_hash, k.user_id, u.role, k.expires_at, k.last_used_at "
		"FROM quota_ext.api_keys k "
		"JOIN quota_ext.users u ON u.tenant_id OPERATOR(pg_catalog.=) k.tenant_id "
		"                      AND u.user_id OPERATOR(pg_catalog.=) k.user_id "
		"JOIN quota_ext.tenants t ON t.tenant_id OPERATOR(pg_catalog.=) k.tenant_id "
		"WHERE k.tenant_id OPERATOR(pg_catalog.=) $1 "
		"  AND k.key_id OPERATOR(pg_catalog.=) $2 "
		"  AND k.revoked_at IS NULL "
		"  AND (k.expires_at IS NULL OR k.expires_at OPERATOR(pg_catalog.>) pg_catalog.now()) "
		"  AND u.status OPERATOR(pg_catalog.=) 'active' "
		"  AND t.status OPERATOR(pg_catalog.=) 'active'");
	HeapTuple	tup = QuotaSpiRow(&lookup, tenant_id, key_id);
	TupleDesc	desc;
	bool		isnull;
	bytea	   *h;
	char	   *r;
	Datum		d;

	if (tup == NULL)
		return false;
	desc = SPI_tuptable->tupdesc;
	h = DatumGetByteaPP(SPI_getbinval(tup, desc, 1, &isnull));
	if (isnull || VARSIZE_ANY_EXHDR(h) != PG_SHA256_DIGEST_LENGTH)
		return false;
	memcpy(e->hash, VARDATA_ANY(h), PG_SHA256_DIGEST_LENGTH);
	e->user_id = DatumGetInt64(SPI_getbinval(tup, desc, 2, &isnull));
	r = SPI_getvalue(tup, desc, 3);
	strlcpy(e->role, r ? r : "", sizeof(e->role));
	d = SPI_getbinval(tup, desc, 4, &isnull);
	if (isnull)
		TIMESTAMP_NOEND(e->expires_at);
	else
		e->expires_at = DatumGetTimestampTz(d);
	d = SPI_getbinval(tup, desc, 5, &isnull);
	if (isnull)
		TIMESTAMP_NOBEGIN(e->last_used_at);
	else
		e->last_used_at = DatumGetTimestampTz(d);
	return true;
}

/* the key cache (cache.h): fill reads the key, opening SPI first */
typedef struct QuotaKeyFill
{
	QuotaSpiState *spi;
	bool	   *spi_open;
	bool		queried;		/* the table was read */
} QuotaKeyFill;

static bool
key_cache_fill(void *entry, void *arg)
{
	QuotaKeyCacheEntry *e = entry;
	QuotaKeyFill *f = arg;

	if (!*f->spi_open)
	{
		QuotaSpiBegin(f->spi);
		*f->spi_open = true;
	}
	f->queried = true;
	return quota_key_read(e->key.tenant_id, e->key.key_id, e);
}

static void
key_cache_flat(void *entry, QuotaFlat *f)
{
	QuotaKeyCacheEntry *e = entry;

	QUOTA_FLAT(f, e->hash);
	QUOTA_FLAT(f, e->user_id);
	QUOTA_FLAT_STR(f, e->role);
	QUOTA_FLAT(f, e->expires_at);
	QUOTA_FLAT(f, e->last_used_at);
}

/* a key's expiry is checked against the transaction's start, as the query does */
static bool
key_cache_current(const void *entry)
{
	const QuotaKeyCacheEntry *e = entry;

	return e->expires_at > GetCurrentTransactionStartTimestamp();
}

static const QuotaCacheKind key_cache_kind =
	QUOTA_CACHE_KIND(QuotaKeyCacheEntry, 1, "quota_ext key cache",
					 key_cache_fill, key_cache_flat, key_cache_current);

/*
 * quota_touch_cached
 *		A touch deferred to COMMIT (Citus) was written: the cached key, and
 *		its shared copy, now say so, and other backends need not touch it
 *		again within the interval.  Not before: a touch dropped by a
 *		rollback, a ROLLBACK TO SAVEPOINT or Citus's refusal would otherwise
 *		keep the key from being touched for the interval.
 */
static void
quota_touch_cached(int64 tenant_id, int64 key_id)
{
	QuotaKeyCacheKey ck;
	QuotaKeyCacheEntry *e;
	TimestampTz now = GetCurrentTransactionStartTimestamp();

	if (!QuotaCacheBegin())
		return;
	memset(&ck, 0, sizeof(ck));
	ck.tenant_id = tenant_id;
	ck.key_id = key_id;
	e = QuotaCachePeek(&key_cache_kind, &ck);
	if (e != NULL && e->last_used_at < now)
	{
		e->last_used_at = now;
		QuotaCacheShare(&key_cache_kind, e);
	}
}

/*
 * quota_imported_key
 *		A key brought over from another system (api_key_import(), issue
 *		17) has no ids in it: it is found by its SHA-256 (index api_keys_hash;
 *		one probe, but not routed by tenant), then checked like a minted key
 *		by (tenant_id, key_id).  Only keys of the import's shape are looked
 *		for (and hashed into *digest): 20 to 255 bytes of printable ASCII,
 *		not beginning with qx in any case (reserved for minted keys, so a
 *		malformed minted key still reads no table and is not hashed:
 *		test/pgtap/02_authenticate.sql).  False when there
 *		is none.
 */
static bool
quota_imported_key(const char *key, size_t len, uint8 *digest,
				   int64 *tenant_id, int64 *key_id)
{
	static QuotaPlan find = {
		"SELECT tenant_id, key_id FROM quota_ext.api_keys "
		"WHERE key_hash OPERATOR(pg_catalog.=) $1 "
		"  AND key_prefix OPERATOR(pg_catalog.~~) 'imp\\_%' "
		"ORDER BY tenant_id, key_id LIMIT 1",
		1, {BYTEAOID}
	};
	QuotaSpiState spi;
	bytea	   *hash;
	Datum		values[1];
	bool		found = false;
	bool		isnull;
	size_t		i;

	/* the import's rule (api_key_import), so malformed keys read no table */
	if (len < 20 || len > QUOTA_KEY_MAX_LEN ||
		pg_strncasecmp(key, "qx", 2) == 0)
		return false;
	for (i = 0; i < len; i++)
		if (key[i] < '!' || key[i] > '~')
			return false;
	quota_sha256(key, len, digest);
	hash = (bytea *) palloc(VARHDRSZ + PG_SHA256_DIGEST_LENGTH);
	SET_VARSIZE(hash, VARHDRSZ + PG_SHA256_DIGEST_LENGTH);
	memcpy(VARDATA(hash), digest, PG_SHA256_DIGEST_LENGTH);
	values[0] = PointerGetDatum(hash);
	QuotaSpiBegin(&spi);
	QuotaSpiExec(&find, values, NULL, false, 1);
	if (SPI_processed == 1)
	{
		*tenant_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1,
												 &isnull));
		*key_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2,
											  &isnull));
		found = true;
	}
	QuotaSpiEnd(&spi);
	return found;
}

/*
 * QuotaAuthenticate
 *		Check a key and make its tenant the context of this transaction
 *		(see QuotaContextGet for the result).  Raises 28000 on any failure.
 *
 *		A good key is kept in the backend's configuration cache (cache.c)
 *		until the configuration changes; its expiry is checked on every use
 *		against the transaction's start, as the query does.  Only the hash
 *		is kept, as in the table.
 */
void
QuotaAuthenticate(text *keytext)
{
	static const uint8 dummy[PG_SHA256_DIGEST_LENGTH];
	const char *key = VARDATA_ANY(keytext);
	size_t		len = VARSIZE_ANY_EXHDR(keytext);
	QuotaKeyCacheKey ck;
	QuotaKeyCacheEntry local;
	QuotaKeyCacheEntry *e = NULL;
	uint8		digest[PG_SHA256_DIGEST_LENGTH];
	const uint8 *stored = dummy;
	TimestampTz now = GetCurrentTransactionStartTimestamp();
	bool		ok = false;
	bool		spi_open = false;
	QuotaSpiState spi;

	memset(&ck, 0, sizeof(ck));
	if (quota_parse_key(key, len, &ck.tenant_id, &ck.key_id))
		quota_sha256(key, len, digest);
	else if (!quota_imported_key(key, len, digest, &ck.tenant_id, &ck.key_id))
		quota_invalid_key();

	if (QuotaCacheBegin())
	{
		QuotaKeyFill fill = {&spi, &spi_open, false};

		e = QuotaCacheGet(&key_cache_kind, &ck, &fill);
		if (e != NULL &&
			timingsafe_bcmp(digest, e->hash, PG_SHA256_DIGEST_LENGTH) == 0)
			ok = true;
		else if (e != NULL && !fill.queried)
		{
			/*
			 * A wrong secret for a cached key does the work of an unknown
			 * key (the table is read), so the time of a refusal does not
			 * tell whether the key id exists (SECURITY.md).  The entry
			 * stays: it is the right key's.
			 */
			QuotaSpiBegin(&spi);
			spi_open = true;
			(void) quota_key_read(ck.tenant_id, ck.key_id, &local);
			e = NULL;
		}
		else
			e = NULL;
	}
	else
	{
		QuotaSpiBegin(&spi);
		spi_open = true;
		if (quota_key_read(ck.tenant_id, ck.key_id, &local))
		{
			e = &local;
			ok = true;
		}
	}
	if (ok)
		stored = e->hash;
	/* always compare, so a missing row costs the same as a wrong secret */
	if (timingsafe_bcmp(digest, stored, PG_SHA256_DIGEST_LENGTH) != 0)
		ok = false;

	/*
	 * Not under REPEATABLE READ or SERIALIZABLE either: the row seen by the
	 * transaction snapshot may have been touched (or revoked) since, and
	 * locking it would then fail with 40001, refusing a valid key because
	 * another session used it (test/specs/key_revoke.spec).  Such callers
	 * leave last_used_at to the next READ COMMITTED use.  The cache keeps
	 * the last value seen or written; the UPDATE (which does not call
	 * config_changed(), so it leaves every backend's cache alone: there is
	 * no trigger, only _audit() marks a change) skips a row another session
	 * is touching right now.
	 */
	/* (on Citus: at COMMIT, quota_touch_defer) */
	if (ok && !XactReadOnly && !IsolationUsesXactSnapshot() &&
		!RecoveryInProgress() &&
		e->last_used_at < now - (int64) quota_key_touch_interval * USECS_PER_SEC)
	{
		/* (the cache learns of a deferred touch when it is written) */
		if (QuotaOnCitus())
			quota_touch_defer(ck.tenant_id, ck.key_id);
		else
		{
			if (!spi_open)
			{
				QuotaSpiBegin(&spi);
				spi_open = true;
			}
			quota_touch_run(ck.tenant_id, ck.key_id);
			e->last_used_at = now;
			/* other backends that take the shared copy need not touch it again */
			if (e != &local)
				QuotaCacheShare(&key_cache_kind, e);
		}
	}
	if (spi_open)
		QuotaSpiEnd(&spi);

	if (!ok)
		quota_invalid_key();

	QuotaContextSet(ck.tenant_id, e->user_id, ck.key_id, e->role);
}

/*
 * QuotaKeyRecheck
 *		Is the key that authenticated this transaction still good: not
 *		revoked or expired, its user and tenant active?  Raises the error of
 *		authenticate() (28000) when not.  For consume.c, which calls it inside
 *		its SPI session after a request waited for a lock, so that a key
 *		revoked meanwhile admits nothing more (checklist L6).
 */
void
QuotaKeyRecheck(int64 tenant_id, int64 key_id)
{
	QuotaKeyCacheEntry e;

	if (!quota_key_read(tenant_id, key_id, &e))
		quota_invalid_key();
}

/*
 * quota_ext.authenticate(api_key text)
 *		RETURNS (tenant_id bigint, user_id bigint, role text)
 *
 * Check the key and make its tenant the context of this transaction.
 */
Datum
quota_ext_authenticate(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[3];
	bool		nulls[3] = {false, false, false};
	const QuotaContext *ctx;

	QuotaKeyArgBegin();
	QuotaArgNotNull(fcinfo, 0, "api_key");
	/* the row type, looked up once per call site */
	tupdesc = (TupleDesc) fcinfo->flinfo->fn_extra;
	if (tupdesc == NULL)
	{
		MemoryContext old;

		if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
			elog(ERROR, "return type must be a row type");
		old = MemoryContextSwitchTo(fcinfo->flinfo->fn_mcxt);
		tupdesc = BlessTupleDesc(CreateTupleDescCopy(tupdesc));
		MemoryContextSwitchTo(old);
		fcinfo->flinfo->fn_extra = tupdesc;
	}
	QuotaAuthenticate(PG_GETARG_TEXT_PP(0));
	QuotaKeyArgDone();
	ctx = QuotaContextGet();
	values[0] = Int64GetDatum(ctx->tenant_id);
	values[1] = Int64GetDatum(ctx->user_id);
	values[2] = CStringGetTextDatum(ctx->role);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}
