/*-------------------------------------------------------------------------
 *
 * consume_internal.h
 *		Private declarations of the request path: consume, escrow,
 *		idempotency, events, adjustments and argument handling.
 *
 * The request path is split by phase, one file each:
 *
 *	 consume.c		orchestration: QuotaConsume and the SQL functions
 *					quota_consume, quota_consume_or_raise, invoke, quota_reserve;
 *					locking the counters, deciding, writing the usage row
 *	 escrow.c		escrow quotas (slots > 1): taking, laying out and
 *					releasing slots (their statements: storage_slots.c)
 *	 idempotency.c	claiming and storing an idempotency key's decision
 *	 events.c		threshold and soft-limit events and their NOTIFY
 *	 adjust.c		quota_settle, quota_cancel, quota_refund,
 *					quota_expire_reservations and the counter adjustments
 *	 decision.c		the one argument parser of the charging functions, the
 *					decision composite and the denial errors
 *	 args.c			argument checks (and QuotaArgNotNull, QuotaQuoteInput
 *					for every module)
 *	 check.c		quota_check (consume's decision, nothing charged or
 *					locked) and read_counters, the unlocked read of counters
 *
 * Calls go one way: consume.c and adjust.c call the others; check.c calls
 * consume.c's decision helpers and is called by adjust.c; escrow.c calls
 * events.c; decision.c calls args.c and context.c; every file may call
 * args.c, which calls no other file of the extension; events.c and
 * idempotency.c call none of the request path's files.  Nothing here is part of the library's
 * interface: the functions are hidden from the dynamic symbol table, as
 * they were when they were static in one file.
 *
 *-------------------------------------------------------------------------
 */
#ifndef CONSUME_INTERNAL_H
#define CONSUME_INTERNAL_H

#include "quota_ext.h"
#include "period.h"
#include "policy.h"
#include "spi.h"
#include "storage.h"

#include "executor/tuptable.h"
#include "utils/timestamp.h"

#define QUOTA_MAX_QUOTAS		64	/* applicable quotas per request */
#define QUOTA_MAX_THRESHOLDS	16
#define QUOTA_IDEM_MAX_LEN		255
#define QUOTA_METADATA_MAX_BYTES 1024	/* jsonb on a usage row */
#define QUOTA_EVENT_CHANNEL		"quota_ext_events"

/* optional token counts of a call (metering) */
typedef struct UsageTokens
{
	bool		has_input;
	bool		has_output;
	int64		input;
	int64		output;
} UsageTokens;

/* what a usage row carries beyond units: tokens, price version, cost */
typedef struct UsageExtra
{
	UsageTokens tokens;
	int64		price_id;		/* 0: unpriced */
	int64		cost_micro;
	Datum		metadata;		/* jsonb, or 0 */
} UsageExtra;

/* one request to charge */
typedef struct ConsumeRequest
{
	int64		tenant_id;
	const char *model;
	int64		units;
	const char *idem_key;		/* NULL: none */
	int64		user_id;		/* 0: unknown */
	int64		key_id;			/* 0: unknown */
	const char *role;			/* NULL: none */
	bool		key_authenticated;	/* invoke(): key_id was checked by this call */
	uint64		config_stamp;	/* invoke(): QuotaConfigStamp() before the key */
	bool		reserve;
	Interval   *ttl;			/* reserve only */
	UsageTokens tokens;			/* optional input/output tokens */
	Datum		metadata;		/* jsonb, or 0 */
} ConsumeRequest;

/* the answer, as the composite quota_ext.decision */
typedef struct Decision
{
	bool		allowed;
	const char *denied_by;		/* static string or NULL */
	int64		quota_id;		/* 0: none */
	char		period[32];
	bool		has_limit;
	int64		limit;
	int64		remaining;
	bool		has_resets;
	TimestampTz resets_at;
	bool		has_retry;
	int64		retry_after;
	int64		usage_id;		/* 0: none */
	int64		reservation_id; /* 0: none */
	bool		replayed;
	bool		has_cost;		/* the call is priced */
	int64		cost_micro;
	bool		has_remaining_cost; /* a cost quota applies */
	int64		remaining_cost_micro;
	char		currency[4];	/* of the cost, else of the cost quota */
	const char *denied_metric;	/* the denying quota's metric (static), or NULL */
	int64		tenant_id;		/* the call's tenant, user and key; 0: none */
	int64		user_id;
	int64		key_id;
	bool		has_overage;	/* allowed: units past non-blocking limits */
	int64		overage;
} Decision;

/* a locked counter and its quota */
typedef struct QuotaRow
{
	int64		quota_id;
	QuotaPeriod period;
	char		label[32];
	bool		metric_calls;
	bool		metric_cost;	/* max_units, used: micro-units of currency */
	char		currency[4];
	int64		max_units;
	bool		has_soft;
	int64		soft_limit;
	char		on_exceed;		/* 'b'lock, 'a'lert, 'o'verage, 't'hrottle */
	int64		throttle_per_minute;	/* 't': the rate past the limit */
	int64		throttle_burst;
	int			nthresholds;
	int			thresholds[QUOTA_MAX_THRESHOLDS];
	TimestampTz counter_start;
	int64		used;
	ItemPointerData counter_tid;	/* where it was locked (storage.c), or invalid */
	/* computed */
	TimestampTz start;
	TimestampTz end;
	int64		old_used;		/* in the current period */
	int64		new_used;
	bool		touched;		/* counter is written */
	bool		throttled;		/* 't' past its limit: its GCRA decides */
	/* escrow quotas (slots > 1): see acquire_slots */
	int			slots;
	bool		auto_slots;		/* automatic escrow (escrow_adapt.c) may re-lay it */
	bool		locked;			/* slot 0 locked as a single-row counter */
	bool		held_slot0;		/* slot 0 locked, then found laid out over slots */
	bool		multi_deny;		/* even all slots together cannot take it */
	int			nupd;
	QuotaCounterWrite *upd;			/* the slot rows to write */
	int			charged;		/* index in upd of the charged slot */
	bool		slot_written;	/* upd[0] charged and written by acquire_slots */
	int64		slot_amount;	/* ... by this much */
	int32		written_mask;	/* ... with this events_mask */
} QuotaRow;

/* decision.c: Decision.denied_by points at one of these (compared by address) */
extern QUOTA_PRIVATE const char *const denied_tenant;
extern QUOTA_PRIVATE const char *const denied_policy;
extern QUOTA_PRIVATE const char *const denied_rate;
extern QUOTA_PRIVATE const char *const denied_quota;
extern QUOTA_PRIVATE const char *const denied_throttle;
/* ... and Decision.denied_metric at one of these */
extern QUOTA_PRIVATE const char *const metric_calls;
extern QUOTA_PRIVATE const char *const metric_units;
extern QUOTA_PRIVATE const char *const metric_cost;

/* consume.c */
extern QUOTA_PRIVATE int64 seconds_until(TimestampTz when, TimestampTz now);
extern QUOTA_PRIVATE void decision_quota(Decision *d, const QuotaRow *r, int64 used,
										bool retry, TimestampTz clock);
extern QUOTA_PRIVATE int lock_counters(int64 tenant_id, int64 model_id, int64 user_id, int64 key_id,
			  TimestampTz created_before, bool fresh, QuotaRow *rows, int *next);
extern QUOTA_PRIVATE int lock_run(int64 tenant_id, QuotaRow *rows, int *n, int from);
extern QUOTA_PRIVATE int64 write_usage(const QuotaUsageRow *row, QuotaRow *rows, int nrows,
									  const UsageExtra *extra);
/* ... also read by check.c (quota_check) and adjust.c */
extern QUOTA_PRIVATE int parse_quota_rows(QuotaRow *rows, int first);
extern QUOTA_PRIVATE void bind_scope(Datum *values, char *nulls, int64 tenant_id, int64 model_id,
									 int64 user_id, int64 key_id);

/*
 * The scope of a query about the quotas that apply (alias q): $1 tenant,
 * $2 model, $3 user and $4 key (bind_scope), $5 the latest creation time.
 */
#define QUOTA_SCOPE_WHERE \
	"WHERE q.tenant_id OPERATOR(pg_catalog.=) $1 " \
	"  AND (q.model_id IS NULL OR q.model_id OPERATOR(pg_catalog.=) $2) " \
	"  AND (q.user_id IS NULL OR q.user_id OPERATOR(pg_catalog.=) $3) " \
	"  AND (q.key_id IS NULL OR q.key_id OPERATOR(pg_catalog.=) $4) " \
	"  AND q.created_at OPERATOR(pg_catalog.<=) $5 " \
	"ORDER BY q.quota_id"

extern QUOTA_PRIVATE bool decide_quotas(QuotaRow *rows, int n, text *tz, TimestampTz at, TimestampTz clock,
			  int64 calls, int64 units, int64 cost, Decision *d, int64 *overage);
extern QUOTA_PRIVATE bool throttle_quotas(int64 tenant_id, QuotaRow *rows, int n, bool peek,
									   TimestampTz clock, Decision *d);
extern QUOTA_PRIVATE void charge_cost(const ConsumeRequest *req, QuotaPolicyResult *pol, TimestampTz at,
			QuotaRow *rows, int n, UsageExtra *extra, Decision *d);
extern QUOTA_PRIVATE TimestampTz charge_instant(QuotaRow *rows, int n);

/* check.c */
extern QUOTA_PRIVATE int read_counters(int64 tenant_id, int64 model_id, int64 user_id, int64 key_id,
			  TimestampTz created_before, QuotaRow *rows);

/* escrow.c */
extern QUOTA_PRIVATE bool lay_out_slots(QuotaRow *r, int k, int64 delta, bool check);
extern QUOTA_PRIVATE void lock_all_slots(int64 tenant_id, QuotaRow *r, bool *moved_on);
extern QUOTA_PRIVATE bool adjust_slots(int64 tenant_id, QuotaRow *r, int64 delta, bool check,
									   bool *moved_on);
extern QUOTA_PRIVATE void acquire_slots(int64 tenant_id, QuotaRow *r, int64 amount, bool denied);
extern QUOTA_PRIVATE void release_slots(int64 tenant_id, QuotaRow *rows, int n);
extern QUOTA_PRIVATE int escrow_slots_now(int64 tenant_id, int64 quota_id);

/* events.c */
extern QUOTA_PRIVATE void emit_event(int64 tenant_id, QuotaRow *r, const char *kind, int threshold, int64 limit);
extern QUOTA_PRIVATE void emit_events(int64 tenant_id, QuotaRow *r);

/* idempotency.c */
extern QUOTA_PRIVATE bool idem_claim(const ConsumeRequest *req, Decision *d);
extern QUOTA_PRIVATE void idem_store(const ConsumeRequest *req, const Decision *d);

/* args.c */
extern QUOTA_PRIVATE void check_positive(int64 v, const char *name);
extern QUOTA_PRIVATE void check_bounded(int64 v, const char *name);
extern QUOTA_PRIVATE Interval * check_ttl(const Interval *ttl);
extern QUOTA_PRIVATE void check_cost_bounded(int64 micro);
extern QUOTA_PRIVATE void check_writable(const char *fn);
extern QUOTA_PRIVATE const char * check_idem_key(FunctionCallInfo fcinfo, int argno);
extern QUOTA_PRIVATE void check_metering_args(FunctionCallInfo fcinfo, int argno, UsageTokens *tokens, Datum *metadata);
extern QUOTA_PRIVATE void raise_unknown_model(const char *model);

/* decision.c */
#define DECISION_NATTS 19		/* columns of quota_ext.decision */
extern QUOTA_PRIVATE void decision_values(const Decision *d, Datum *values, bool *nulls);
extern QUOTA_PRIVATE Datum decision_datum(FunctionCallInfo fcinfo, const Decision *d);
extern QUOTA_PRIVATE Datum request_decision_datum(FunctionCallInfo fcinfo, const ConsumeRequest *req,
												  Decision *d);
extern QUOTA_PRIVATE const char *quota_row_metric(const QuotaRow *r);
extern QUOTA_PRIVATE void charge_args(FunctionCallInfo fcinfo, ConsumeRequest *req,
									   const char *const *names, int nnames, bool by_tenant);
extern QUOTA_PRIVATE void raise_denial(const ConsumeRequest *req, const Decision *d);

#endif							/* CONSUME_INTERNAL_H */
