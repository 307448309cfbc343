/*-------------------------------------------------------------------------
 *
 * context_citus.c
 *		The tenant context on Citus workers (issue 16): a signed token that
 *		travels with the coordinator's distributed transaction.
 *
 * The context lives in the memory of the backend that called authenticate()
 * or set_tenant() (context.c).  On Citus a query through the coordinator is
 * run on the workers by other backends, whose row-level security calls
 * current_tenant_id() there: without help they see no context (the app sees
 * none of its rows) and an admin is judged as having none (it sees every
 * tenant).  So the backend that sets the context also publishes it as a
 * token in the setting quota_ext.context_token, with SET LOCAL, which
 * Citus replays on every connection of the transaction to a worker
 * (citus.propagate_set_commands = local, switched on only for that
 * statement).  A worker believes the token only when
 *
 *   - its HMAC-SHA256, under the cluster's secret, is right: the secret is
 *     a random 256-bit value in the reference table quota_ext.citus_secret
 *     that distribute() fills and only the extension owner can read, so no
 *     login can write a token for a tenant of its choosing;
 *   - it names the Citus distributed transaction this backend takes part
 *     in (initiator node, transaction number and timestamp, which Citus
 *     assigns on the coordinator and sends to each worker connection), this
 *     backend is not that transaction's originator and this node is not its
 *     initiator: the node that began it never adopts a token (its context
 *     in memory counts there), whatever assign_distributed_transaction_id()
 *     claimed;
 *   - it names the Citus global PID of the backend that made it, and this
 *     backend's own global PID (on a connection Citus opened: the
 *     originator's, from its application_name "citus_internal gpid=N") is
 *     that one, so a token replayed through another coordinator session is
 *     worthless there;
 *   - the role this backend acts as (GetOuterUserId: the login of the
 *     connection Citus opened, or a SET ROLE) is the one that held the
 *     context when the token was made;
 *   - the transaction began at most quota_ext.citus_context_max_age ago; a
 *     good but older token raises 55000 (no context would read, for an
 *     admin, as every tenant).
 *
 * The signed fields are each length-prefixed.  Anything else is ignored: no
 * context, which fails closed (RLS shows no rows, the functions raise "no
 * tenant context").  What is left (doc/scaling.md, SECURITY.md): all tenants
 * share the app login, which can read any token with its transaction id and
 * global PID (citus_stat_activity); Citus lets any role call
 * assign_distributed_transaction_id() and a client choose its
 * application_name, so on a direct worker connection that login can claim
 * the victim's transaction and global PID and gets its context until the
 * age bound passes.  The workers' pg_hba.conf must keep the app login off.
 *
 * A single node never publishes (QuotaOnCitus is false) and never adopts:
 * without a token the cost is one pointer test.
 *
 *-------------------------------------------------------------------------
 */
#include "quota_ext.h"
#include "spi.h"
#include "context.h"
#include "storage.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "common/hmac.h"
#include "common/cryptohash.h"
#include "miscadmin.h"
#include "storage/proc.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"
#include "utils/guc.h"
#include "utils/memutils.h"

#define TOKEN_GUC		"quota_ext.context_token"
#define SECRET_LEN		32
#define MAC_LEN			32		/* SHA-256 */

char	   *quota_context_token = NULL;

/*
 * Citus's DistributedTransactionId (distributed/transaction_identifier.h,
 * Citus 9 to 13): found in citus.so by name, the extension links no Citus
 * code.
 */
typedef struct CitusTxnId
{
	int			initiatorNodeIdentifier;
	bool		transactionOriginator;
	uint64		transactionNumber;
	TimestampTz timestamp;
} CitusTxnId;

typedef CitusTxnId *(*citus_txn_fn) (void);
typedef void (*citus_void_fn) (void);
typedef uint64 (*citus_gpid_fn) (void);
typedef int32 (*citus_group_fn) (void);

static citus_txn_fn citus_get_txn = NULL;
static citus_void_fn citus_use_coordinated = NULL;
static citus_gpid_fn citus_gpid = NULL;
static citus_group_fn citus_group = NULL;

/* quota_ext.citus_context_max_age: seconds a token outlives its transaction's start */
static int	context_max_age = 300;

/* the cluster secret, read once per backend */
static uint8 cluster_secret[SECRET_LEN];
static bool cluster_secret_known = false;

/* this backend's local transaction id (PostgreSQL 17 moved it into vxid) */
#if PG_VERSION_NUM >= 170000
#define MY_LXID		(MyProc->vxid.lxid)
#else
#define MY_LXID		(MyProc->lxid)
#endif

/* a token refused in this transaction is not checked again */
static LocalTransactionId refused_lxid = InvalidLocalTransactionId;
static char *refused_token = NULL;

void
QuotaContextCitusInit(void)
{
	DefineCustomStringVariable(TOKEN_GUC,
							   "Internal: the tenant context carried to Citus workers (signed; see doc/scaling.md).",
							   "Set by authenticate() and set_tenant() on Citus; a value set by hand is ignored.",
							   &quota_context_token,
							   "",
							   PGC_USERSET,
							   GUC_NO_SHOW_ALL | GUC_NOT_IN_SAMPLE | GUC_DISALLOW_IN_FILE,
							   NULL, NULL, NULL);
	DefineCustomIntVariable("quota_ext.citus_context_max_age",
							"Seconds after the start of a Citus distributed transaction that a worker still believes its tenant context token.",
							"An older token raises 55000 on the worker; set it alike on every node.",
							&context_max_age,
							300, 1, 86400,
							PGC_SUSET,
							GUC_UNIT_S,
							NULL, NULL, NULL);
}

static void
citus_functions(void)
{
	if (citus_get_txn == NULL)
	{
		citus_get_txn = (citus_txn_fn)
			load_external_function("citus", "GetCurrentDistributedTransactionId", true, NULL);
		citus_use_coordinated = (citus_void_fn)
			load_external_function("citus", "UseCoordinatedTransaction", true, NULL);
		citus_gpid = (citus_gpid_fn)
			load_external_function("citus", "GetGlobalPID", true, NULL);
		citus_group = (citus_group_fn)
			load_external_function("citus", "GetLocalGroupId", true, NULL);
	}
}

/* false when distribute() has not made a secret yet */
static bool
secret_load(void)
{
	static QuotaPlan plan = {
		"SELECT secret FROM quota_ext.citus_secret "
		"WHERE id OPERATOR(pg_catalog.=) 1", 0, {InvalidOid}
	};
	QuotaSpiState spi;
	int			guc_level;

	if (cluster_secret_known)
		return true;
	QuotaSpiBegin(&spi);

	/*
	 * On a worker this runs inside a query on a shard (an RLS policy calls
	 * current_tenant_id()), where Citus refuses a distributed query: the
	 * read of a reference table, which has a placement on every node and is
	 * written once by distribute(), is safe there.
	 */
	guc_level = NewGUCNestLevel();
	(void) set_config_option("citus.allow_nested_distributed_execution", "on",
							 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE,
							 true, 0, false);
	QuotaSpiExec(&plan, NULL, NULL, true, 1);
	AtEOXact_GUC(true, guc_level);
	if (SPI_processed == 1)
	{
		bool		isnull;
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

		if (!isnull)
		{
			bytea	   *b = DatumGetByteaPP(d);

			if (VARSIZE_ANY_EXHDR(b) == SECRET_LEN)
			{
				memcpy(cluster_secret, VARDATA_ANY(b), SECRET_LEN);
				cluster_secret_known = true;
			}
		}
	}
	QuotaSpiEnd(&spi);
	return cluster_secret_known;
}

/* one field of the signed text: its length, a colon, the text */
static void
field(StringInfo buf, const char *v)
{
	appendStringInfo(buf, "%zu:%s", strlen(v), v);
}

/*
 * The signed fields, each length-prefixed (no separator a value could
 * contain): the context, the login (it is not in the token itself), the
 * originating backend's Citus global PID and the distributed transaction.
 */
static char *
token_payload(const QuotaContext *c, uint64 gpid, const CitusTxnId *txn)
{
	StringInfoData buf;

	initStringInfo(&buf);
	field(&buf, "v2");
	field(&buf, psprintf(INT64_FORMAT, c->tenant_id));
	field(&buf, psprintf(INT64_FORMAT, c->user_id));
	field(&buf, psprintf(INT64_FORMAT, c->key_id));
	field(&buf, c->role);
	field(&buf, GetUserNameFromId(GetOuterUserId(), false));
	field(&buf, psprintf(UINT64_FORMAT, gpid));
	field(&buf, psprintf("%d", txn->initiatorNodeIdentifier));
	field(&buf, psprintf(UINT64_FORMAT, txn->transactionNumber));
	field(&buf, psprintf(INT64_FORMAT, (int64) txn->timestamp));
	return buf.data;
}

static void
token_mac(const char *payload, uint8 *mac)
{
	pg_hmac_ctx *h = pg_hmac_create(PG_SHA256);

	if (h == NULL ||
		pg_hmac_init(h, cluster_secret, SECRET_LEN) < 0 ||
		pg_hmac_update(h, (const uint8 *) payload, strlen(payload)) < 0 ||
		pg_hmac_final(h, mac, MAC_LEN) < 0)
	{
		pg_hmac_free(h);
		elog(ERROR, "could not compute the HMAC of a tenant context");
	}
	pg_hmac_free(h);
}

static char *
hex(const uint8 *b, size_t n)
{
	char	   *s = palloc(n * 2 + 1);

	hex_encode((const char *) b, n, s);
	s[n * 2] = '\0';
	return s;
}

/* SET LOCAL, through SPI so Citus sees the statement and sends it on */
static void
set_local(const char *name, const char *value)
{
	char	   *sql = psprintf("SET LOCAL %s TO %s", name, quote_literal_cstr(value));

	if (SPI_execute(sql, false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "could not run %s", sql);
}

static void
publish(const char *token)
{
	char	   *old = GetConfigOptionByName("citus.propagate_set_commands", NULL, true);

	SPI_connect();
	set_local("citus.propagate_set_commands", "local");
	set_local(TOKEN_GUC, token);
	set_local("citus.propagate_set_commands", old ? old : "none");
	SPI_finish();
}

/*
 * QuotaContextPublish
 *		On Citus, make ctx (NULL: no context) what this transaction's worker
 *		connections see.  Raises 55000 when distribute() made no secret.
 */
void
QuotaContextPublish(const QuotaContext *ctx)
{
	CitusTxnId *txn;
	uint8		mac[MAC_LEN];
	char	   *payload;

	if (!QuotaOnCitus())
		return;
	if (ctx == NULL)
	{
		if (quota_context_token != NULL && quota_context_token[0] != '\0')
			publish("");
		return;
	}
	citus_functions();
	if (citus_get_txn == NULL || citus_use_coordinated == NULL ||
		citus_gpid == NULL || citus_group == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("this Citus does not export the distributed transaction functions quota_ext needs")));
	if (!secret_load())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("quota_ext has no cluster secret: the tenant context cannot reach the Citus workers"),
				 errhint("Run CALL quota_ext.distribute() on the coordinator.")));
	/* the transaction gets its distributed id now, before any worker sees it */
	citus_use_coordinated();
	txn = citus_get_txn();
	payload = token_payload(ctx, citus_gpid(), txn);
	token_mac(payload, mac);
	publish(psprintf("v2." INT64_FORMAT "." INT64_FORMAT "." INT64_FORMAT ".%s.%s",
					 ctx->tenant_id, ctx->user_id, ctx->key_id,
					 hex((const uint8 *) ctx->role, strlen(ctx->role)),
					 hex(mac, MAC_LEN)));
}

static bool
refuse(const char *token)
{
	if (refused_token)
		pfree(refused_token);
	refused_token = MemoryContextStrdup(TopMemoryContext, token);
	refused_lxid = MY_LXID;
	return false;
}

/*
 * QuotaContextAdopt
 *		The context the token in quota_ext.context_token gives this backend,
 *		into *out; false (no context) unless every check in the file header
 *		holds.  Call only when the setting is not empty.
 */
bool
QuotaContextAdopt(QuotaContext *out)
{
	const char *tok = quota_context_token;
	int64		tenant, user, key;
	char		rolehex[2 * QUOTA_MAX_ROLE_LEN + 2];
	char		machex[2 * MAC_LEN + 2];
	int			n = 0;
	CitusTxnId *txn;
	uint8		mac[MAC_LEN], want[MAC_LEN];
	uint8		diff = 0;
	int64		age;

	if (refused_token && refused_lxid == MY_LXID && strcmp(refused_token, tok) == 0)
		return false;
	if (!IsTransactionState() || !QuotaOnCitus())
		return refuse(tok);
	citus_functions();
	if (citus_get_txn == NULL || citus_gpid == NULL || citus_group == NULL)
		return refuse(tok);
	txn = citus_get_txn();

	/*
	 * Never on the node that began the distributed transaction (its context
	 * is the one in memory), whatever assign_distributed_transaction_id()
	 * claimed for this backend.
	 */
	if (txn->transactionNumber == 0 || txn->transactionOriginator ||
		txn->initiatorNodeIdentifier == citus_group())
		return refuse(tok);

	memset(out, 0, sizeof(*out));
	rolehex[0] = '\0';
	if (sscanf(tok, "v2." INT64_FORMAT "." INT64_FORMAT "." INT64_FORMAT ".%n",
			   &tenant, &user, &key, &n) != 3 || n == 0)
		return refuse(tok);
	{
		const char *rest = tok + n;
		const char *dot = strchr(rest, '.');

		if (dot == NULL || dot - rest > (int) sizeof(rolehex) - 1 ||
			strlen(dot + 1) != 2 * MAC_LEN || (dot - rest) % 2 != 0)
			return refuse(tok);
		memcpy(rolehex, rest, dot - rest);
		rolehex[dot - rest] = '\0';
		strlcpy(machex, dot + 1, sizeof(machex));
	}
	if (strspn(rolehex, "0123456789abcdef") != strlen(rolehex) ||
		strspn(machex, "0123456789abcdef") != strlen(machex))
		return refuse(tok);
	hex_decode(rolehex, strlen(rolehex), out->role);
	out->role[strlen(rolehex) / 2] = '\0';
	if (strlen(out->role) != strlen(rolehex) / 2)
		return refuse(tok);
	hex_decode(machex, 2 * MAC_LEN, (char *) mac);
	out->tenant_id = tenant;
	out->user_id = user;
	out->key_id = key;

	if (!secret_load())
		return refuse(tok);
	/*
	 * Signed with this backend's own global PID: on a connection Citus
	 * opened, the originator's (its application_name "citus_internal
	 * gpid=N"); a token replayed through another coordinator session
	 * arrives with that session's.
	 */
	token_mac(token_payload(out, citus_gpid(), txn), want);
	for (int i = 0; i < MAC_LEN; i++)
		diff |= mac[i] ^ want[i];
	if (diff != 0)
		return refuse(tok);

	/*
	 * A good token of an old transaction (or of a clock far ahead): loudly,
	 * not as "no context", which an admin's RLS reads as every tenant.
	 */
	age = GetCurrentTimestamp() - txn->timestamp;
	if (age > (int64) context_max_age * USECS_PER_SEC ||
		age < -(int64) context_max_age * USECS_PER_SEC)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the tenant context token of this Citus transaction is older than quota_ext.citus_context_max_age"),
				 errhint("Run the work in shorter transactions, or raise quota_ext.citus_context_max_age on every node.")));
	return true;
}
