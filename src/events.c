/*-------------------------------------------------------------------------
 *
 * events.c
 *		Threshold and soft-limit events, and their NOTIFY.
 *
 * See consume_internal.h for how the request path is split.
 *
 *-------------------------------------------------------------------------
 */
#include "spi.h"
#include "consume_internal.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/async.h"
#include "common/int.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "storage/proc.h"
#include "utils/array.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/builtins.h"
#include "utils/numeric.h"
#include "utils/timeout.h"
#include "utils/timestamp.h"

/*
 * crossing
 *		Did used go from below to at-or-above pct percent of limit?
 */
static bool
crossing(int64 old_used, int64 new_used, int64 limit, int pct)
{
	int128		mark = (int128) limit * pct;

	return (int128) old_used * 100 < mark && (int128) new_used * 100 >= mark;
}

/*
 * EVENT_NARGS: the parameters $1..$7 that both statements of a crossing
 * take, in this order (event_values fills them): tenant, quota, period
 * start, kind, threshold, used, limit.
 */
#define EVENT_NARGS 7
#define EVENT_ARGTYPES INT8OID, INT8OID, TIMESTAMPTZOID, TEXTOID, INT4OID, INT8OID, INT8OID

/* the EVENT_NARGS parameters of a crossing */
static void
event_values(Datum *values, int64 tenant_id, QuotaRow *r, const char *kind, int threshold,
			 int64 limit)
{
	values[0] = Int64GetDatum(tenant_id);
	values[1] = Int64GetDatum(r->quota_id);
	values[2] = TimestampTzGetDatum(r->start);
	values[3] = CStringGetTextDatum(kind);
	values[4] = Int32GetDatum(threshold);
	values[5] = Int64GetDatum(r->new_used);
	values[6] = Int64GetDatum(limit);
}

/*
 * emit_outbox
 *		The crossing as an outbox event (sql/install/52_outbox.sql), in this
 *		transaction: the durable record that consumers read with
 *		event_poll/event_ack; _event_emit also wakes them (NOTIFY
 *		quota_ext_outbox, ids only).
 */
static void
emit_outbox(int64 tenant_id, QuotaRow *r, const char *kind, int threshold, int64 limit,
			int64 event_id)
{
	static QuotaPlan plan = {
		"SELECT quota_ext._event_emit($1, $8, 'quota', $2::pg_catalog.text, "
		"    pg_catalog.jsonb_build_object('quota_event_id', $9, 'quota_id', $2, "
		"        'period_start', $3, 'kind', $4, 'threshold', $5, 'used', $6, 'limit', $7))",
		EVENT_NARGS + 2, {EVENT_ARGTYPES, TEXTOID, INT8OID}
	};
	Datum		values[EVENT_NARGS + 2];

	event_values(values, tenant_id, r, kind, threshold, limit);
	values[EVENT_NARGS] = CStringGetTextDatum(strcmp(kind, "threshold") == 0 ? "quota.threshold"
											  : "quota.soft_limit");
	values[EVENT_NARGS + 1] = Int64GetDatum(event_id);
	QuotaSpiExec(&plan, values, NULL, false, 0);
}

void
emit_event(int64 tenant_id, QuotaRow *r, const char *kind, int threshold, int64 limit)
{
	static QuotaPlan plan = {
		"INSERT INTO quota_ext.quota_events (tenant_id, quota_id, period_start, kind, "
		"    threshold, used, \"limit\") "
		"VALUES ($1, $2, $3, $4, $5, $6, $7) "
		"ON CONFLICT (tenant_id, quota_id, period_start, kind, threshold) DO NOTHING "
		"RETURNING event_id",
		EVENT_NARGS, {EVENT_ARGTYPES}
	};
	Datum		values[EVENT_NARGS];
	bool		isnull;
	int64		event_id;
	StringInfoData payload;

	event_values(values, tenant_id, r, kind, threshold, limit);
	QuotaSpiExec(&plan, values, NULL, false, 0);
	if (SPI_processed == 0)
		return;					/* already emitted in this period */
	event_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1,
										   &isnull));
	/*
	 * Ids only: any login may LISTEN on any channel (PostgreSQL has no
	 * privilege for it) and NOTIFY a forged payload, so the payload is a
	 * hint that says which row to read, and the listener reads it through
	 * row-level security (SECURITY.md, doc/design.md §2).
	 */
	initStringInfo(&payload);
	appendStringInfo(&payload, "{\"event_id\": %lld, \"tenant_id\": %lld}",
					 (long long) event_id, (long long) tenant_id);
	Async_Notify(QUOTA_EVENT_CHANNEL, payload.data);
	emit_outbox(tenant_id, r, kind, threshold, limit, event_id);
}

/* threshold and soft-limit events of one counter change */
void
emit_events(int64 tenant_id, QuotaRow *r)
{
	int			i;

	if (r->slots > 1)
	{
		/*
		 * Escrow: no call sees the exact total, so a threshold is emitted by
		 * the first call of each slot that sees the committed total past it,
		 * and the slot remembers it in its events_mask: exactly once per
		 * period (the unique key), at the latest one call per slot late.
		 */
		QuotaCounterWrite *u;

		if (!r->touched || r->charged < 0)
			return;
		u = &r->upd[r->charged];
		for (i = 0; i < r->nthresholds; i++)
			if (!(u->mask & (1 << i)) &&
				(int128) r->new_used * 100 >= (int128) r->max_units * r->thresholds[i])
			{
				emit_event(tenant_id, r, "threshold", r->thresholds[i], r->max_units);
				u->mask |= (1 << i);
			}
		if (r->has_soft && !(u->mask & (1 << 30)) && r->new_used >= r->soft_limit)
		{
			emit_event(tenant_id, r, "soft_limit", 0, r->soft_limit);
			u->mask |= (1 << 30);
		}
		return;
	}
	if (r->new_used <= r->old_used)
		return;
	for (i = 0; i < r->nthresholds; i++)
		if (crossing(r->old_used, r->new_used, r->max_units, r->thresholds[i]))
			emit_event(tenant_id, r, "threshold", r->thresholds[i], r->max_units);
	if (r->has_soft && r->old_used < r->soft_limit && r->new_used >= r->soft_limit)
		emit_event(tenant_id, r, "soft_limit", 0, r->soft_limit);
}
