/*-------------------------------------------------------------------------
 *
 * escrow.c
 *		Escrow quotas (slots > 1): one counter row per slot, so that a hot
 *		tenant's concurrent charges do not queue on one row.
 *
 * This file is the escrow algorithm: which slot a charge takes, how a
 * change is laid out over slots, the lock order.  Its reads and writes of
 * slot rows are the storage module's (the single-slot charge storage.c's,
 * the other statements storage_slots.c's); see consume_internal.h
 * for how the request path is split.
 *
 *-------------------------------------------------------------------------
 */
#include "spi.h"
#include "consume_internal.h"
#include "escrow_adapt.h"
#include "storage.h"

#include "access/xact.h"
#include "common/int.h"
#include "miscadmin.h"
#include "storage/proc.h"
#include "utils/timestamp.h"

/*
 * slot_in_period
 *		A slot row as read (storage_slots.c) in r->start's period: a slot of
 *		an older period is empty, with its default share.
 */
static void
slot_in_period(QuotaRow *r, QuotaCounterWrite *u)
{
	u->has_allowance = true;
	if (u->start < r->start)
	{
		u->start = r->start;
		u->used = 0;
		u->allowance = QuotaSlotShare(r->max_units, r->slots, u->slot);
		u->mask = 0;
	}
}

/*
 * lay_out_slots
 *		All slots of r are in r->upd (locked, in r->start's period): give
 *		`delta` to slot k and share the limit's remaining slack among all
 *		slots as allowances.  Returns false, changing nothing, when a
 *		positive delta does not fit (check) in the whole quota.
 */
bool
lay_out_slots(QuotaRow *r, int k, int64 delta, bool check)
{
	int64		total = 0;
	int64		slack;
	int			i;

	for (i = 0; i < r->nupd; i++)
		total += r->upd[i].used;
	r->old_used = total;
	if (pg_add_s64_overflow(total, delta, &r->new_used))
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("quota %lld would overflow", (long long) r->quota_id)));
	if (check && delta > 0 && r->new_used > r->max_units)
		return false;
	/* a negative delta comes out of the slots that hold usage */
	if (delta < 0)
	{
		int64		left = -delta;

		for (i = 0; i < r->nupd && left > 0; i++)
		{
			int64		take = Min(left, r->upd[i].used);

			r->upd[i].used -= take;
			left -= take;
		}
		if (r->new_used < 0)
			r->new_used = 0;
	}
	else
		r->upd[k].used += delta;
	slack = Max(r->max_units - r->new_used, 0);
	for (i = 0; i < r->nupd; i++)
	{
		r->upd[i].allowance = r->upd[i].used + QuotaSlotShare(slack, r->nupd, i);
		/* one row left (automatic escrow folded it back): a plain counter */
		r->upd[i].has_allowance = r->nupd > 1;
	}
	r->charged = k;
	r->touched = true;
	return true;
}

/*
 * lock_all_slots
 *		Lock every slot of r in slot order into r->upd.  A slot already in a
 *		newer period than start means the quota has moved on: for an
 *		adjustment of older usage (moved_on given) that is reported; for a
 *		new charge it means the period turned over during this call and
 *		another transaction counted in the new one: 40001, retry.
 */
void
lock_all_slots(int64 tenant_id, QuotaRow *r, bool *moved_on)
{
	int			i;

	/*
	 * A relayout (_escrow_relayout, _counters_rebuild) that committed while
	 * this statement waited may have added rows its snapshot cannot see:
	 * every row of the quota is locked (QuotaSlotLockAll locks again, with
	 * a new snapshot, until it has them all).  Laying the limit out over
	 * only some of the rows would give out more allowance than the limit,
	 * and charging none of them (all deleted and inserted again) would lose
	 * the charge.
	 */
	r->nupd = QuotaSlotLockAll(tenant_id, r->quota_id, &r->upd);
	for (i = 0; i < r->nupd; i++)
	{
		slot_in_period(r, &r->upd[i]);
		if (r->upd[i].start > r->start && moved_on)
			*moved_on = true;
		else if (r->upd[i].start > r->start)
			ereport(ERROR,
					(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
					 errmsg("quota %lld entered a new period during this call",
							(long long) r->quota_id),
					 errhint("Retry the transaction.")));
	}
}

/* a slot row just locked (*u, the next of r->upd) is taken: note it */
static QuotaCounterWrite *
take_slot_row(QuotaRow *r, int32 *taken, int *ntaken)
{
	QuotaCounterWrite *u = &r->upd[r->nupd++];

	slot_in_period(r, u);
	taken[(*ntaken)++] = u->slot;
	return u;
}

/*
 * adjust_slots
 *		Add delta to escrow quota r for an adjustment (refund, release,
 *		settle) of usage counted in r->start's period.  Sets *moved_on, and
 *		changes nothing, when a slot is in a later period already.  Returns
 *		false, changing nothing, when a positive delta does not fit (check).
 *
 *		A transaction that holds no slot of r locks them all in slot order
 *		(lock_all_slots) and lays the change out as a charge's exact path
 *		does.  One that holds slots of r already (it charged one earlier,
 *		typically the consume whose row it now refunds) must not: waiting
 *		for a lower slot while holding a higher one is the deadlock of two
 *		such transactions (doc/design.md section 5).  It puts the change in
 *		the slots it holds, else in other slots that can take it, first
 *		those free now (SKIP LOCKED: no wait), then, in slot order, those
 *		above every slot it holds (a wait ranked above all it holds).  A
 *		refund comes out of slots that hold usage (a slot never goes below
 *		0); a settle above the estimate goes into one slot with room for it
 *		(or into a held slot whatever its room, when not checked).  Either
 *		way each slot stays within its allowance and the slots' total
 *		changes by exactly delta.  What none of those slots can take is
 *		held by transactions this one may not wait for: 40001, retry the
 *		transaction (it then holds nothing of r).
 *
 *		The slots a transaction holds are the rows of r it wrote (xmin is
 *		one of its transaction ids): every slot it locks it also writes,
 *		except that the exact path (lock_all_slots) of a denied call leaves
 *		all of them locked, which only ever makes this path wait less.
 */
bool
adjust_slots(int64 tenant_id, QuotaRow *r, int64 delta, bool check, bool *moved_on)
{
	QuotaCounterWrite *seen;
	bool	   *mine;
	int32	   *held;
	int32	   *taken;
	int			nheld = 0;
	int			ntaken = 0;
	int			nrows;
	int32		top = -1;
	int64		left;
	int64		total;
	int			i;

	nrows = QuotaSlotsSeen(tenant_id, r->quota_id, &seen, &mine);
	held = palloc(sizeof(int32) * Max(nrows, 1));
	for (i = 0; i < nrows; i++)
	{
		if (seen[i].start > r->start)
		{
			*moved_on = true;
			return true;
		}
		if (mine[i])
			held[nheld++] = seen[i].slot;
	}
	if (nheld == 0 || nrows <= 1)
	{
		lock_all_slots(tenant_id, r, moved_on);
		if (*moved_on)
			return true;
		return lay_out_slots(r, 0, delta, check);
	}

	/* room for slots a re-layout adds meanwhile too (at most 64 in all) */
	r->nupd = 0;
	r->upd = palloc0(sizeof(QuotaCounterWrite) * (nrows + 64));
	taken = palloc(sizeof(int32) * (nrows + 64));
	r->charged = -1;
	left = delta < 0 ? -delta : delta;

	/* 1. the slots it holds (no wait), in slot order */
	for (i = 0; i < nheld && left > 0; i++)
	{
		QuotaCounterWrite *u;

		if (!QuotaSlotLockHeld(tenant_id, r->quota_id, held[i], &r->upd[r->nupd]))
			continue;
		top = Max(top, held[i]);
		if (r->upd[r->nupd].start != r->start)
			continue;			/* an older period's slot holds none of it */
		u = take_slot_row(r, taken, &ntaken);
		if (delta < 0)
		{
			int64		take = Min(left, u->used);

			u->used -= take;
			left -= take;
		}
		else if (!check || u->allowance - u->used >= delta)
		{
			u->used += delta;
			r->charged = r->nupd - 1;
			left = 0;
		}
	}

	/* 2. free slots that can take it (SKIP LOCKED), 3. higher ones (wait) */
	for (i = 0; i < 2 && left > 0; i++)
	{
		while (left > 0 &&
			   QuotaSlotLockFor(i == 1, tenant_id, r->quota_id, r->start,
								delta < 0 ? delta : left, i == 0 ? -1 : top,
								taken, ntaken, &r->upd[r->nupd]))
		{
			QuotaCounterWrite *u = take_slot_row(r, taken, &ntaken);

			/* held now, whether it had to wait for it or not */
			top = Max(top, u->slot);
			if (delta < 0)
			{
				int64		take = Min(left, u->used);

				u->used -= take;
				left -= take;
			}
			else
			{
				u->used += delta;
				r->charged = r->nupd - 1;
				left = 0;
			}
		}
	}

	/* the quota's total in the period as this transaction sees it */
	total = QuotaSlotSum(tenant_id, r->quota_id, r->start);
	if (left > 0 && delta > 0 && check && total + delta > r->max_units)
	{
		/* it does not fit in the whole quota either: an exact denial */
		r->nupd = 0;
		r->old_used = total;
		r->new_used = total;
		r->touched = false;
		return false;
	}
	if (left > 0)
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("could not adjust quota %lld without waiting out of lock order",
						(long long) r->quota_id),
				 errdetail("This transaction holds escrow slots of the quota; %lld units of the change are in slots other transactions hold.",
						   (long long) left),
				 errhint("Retry the transaction.")));
	r->old_used = total;
	r->new_used = Max(total + delta, 0);
	if (r->charged < 0)
		r->charged = 0;
	for (i = 0; i < r->nupd; i++)
		r->upd[i].has_allowance = true;
	r->touched = r->nupd > 0;
	return true;
}

/*
 * charge_one_slot
 *		Run one single-slot charge (QuotaStorageChargeSlot: SKIP LOCKED
 *		or wait) for `amount` in escrow quota r, in a subtransaction.
 *		When it charged a slot, keep it (release the subtransaction into
 *		ours), load the slot into r and return SLOT_CHARGED.  Otherwise roll
 *		the subtransaction back, which also releases any slot row the
 *		statement locked and then rejected on recheck, so that this
 *		transaction holds no slot of r that it did not hold before (see
 *		acquire_slots for why that matters); return SLOT_AGAIN if a slot
 *		it locked had been filled meanwhile (the charge stopped there: a
 *		new snapshot may find another), SLOT_NONE_FITS if no slot could
 *		hold `amount` as of the statement, else SLOT_BUSY.
 *		r->old_used and r->new_used get the committed total as of the
 *		statement in every case.
 *
 *		The charge is written here, in the subtransaction that locked the
 *		row: an update of it by the parent transaction would have to keep
 *		the subtransaction's lock too and make a MultiXact of every hot slot
 *		row, which costs more than all the rest (measured: 6.5x slower).
 */
typedef enum SlotCharge
{
	SLOT_CHARGED,
	SLOT_BUSY,
	SLOT_AGAIN,
	SLOT_NONE_FITS
} SlotCharge;

static SlotCharge
charge_one_slot(bool wait, int64 tenant_id, QuotaRow *r, int64 amount)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	volatile SlotCharge result = SLOT_BUSY;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		QuotaSlotCharge c;

		/*
		 * The rotation starts at the backend's PGPROC number: concurrent
		 * backends have distinct, mostly consecutive ones, where pids modulo
		 * the slots collide by chance (and two backends starting at one slot
		 * wait).  Slot 0 is ours already when lock_run found it re-laid: try
		 * it first.
		 */
		int			first = r->held_slot0 ? 0 : QuotaMyProcNumber() % r->slots;

		QuotaStorageChargeSlot(wait, tenant_id, r->quota_id, r->start, amount, r->max_units,
							   r->slots, first, &c);
		/* committed total as of the statement: for reporting and events */
		r->old_used = Min(c.before, r->max_units);
		/* old_used <= max_units: the difference cannot overflow, a sum could */
		r->new_used = (amount > r->max_units - r->old_used) ? r->max_units : r->old_used + amount;
		if (!c.charged && c.stopped)
			result = SLOT_AGAIN;
		else if (!c.charged && !c.any_fits)
			result = SLOT_NONE_FITS;
		else if (c.charged)
		{
			QuotaCounterWrite *u;

			r->nupd = 1;
			r->upd = u = palloc(sizeof(QuotaCounterWrite));
			*u = c.row;
			slot_in_period(r, u);
			r->charged = 0;
			r->touched = true;
			r->slot_written = true;
			r->slot_amount = amount;
			r->written_mask = u->mask;
			result = SLOT_CHARGED;
		}
	}
	PG_CATCH();
	{
		ReThrowError(QuotaSubxactAbort(cxt, owner));
	}
	PG_END_TRY();
	if (result == SLOT_CHARGED)
		ReleaseCurrentSubTransaction();
	else
		RollbackAndReleaseCurrentSubTransaction();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;
	return result;
}

/*
 * acquire_slots
 *		Take room for `amount` in escrow quota r (r->start set), in three
 *		steps (doc/design.md, "hot tenants"):
 *
 *		 1. one free slot that can hold it (SKIP LOCKED: never waits);
 *		 2. else, if some slot could hold it, wait for that one slot (the
 *			first in this backend's rotation, so waiters spread over the
 *			slots) and charge it if it still can;
 *		 3. else every slot in slot order, exactly, moving allowance between
 *			them; sets r->multi_deny when even all slots together cannot
 *			take it.
 *
 *		Steps 1 and 2 charge the slot row at once (charge_one_slot, which
 *		says why); step 3 leaves the rows to write_usage.  When an earlier
 *		escrow quota already denies the call (`denied`), only whether this
 *		one could take the amount matters (for the quota the decision
 *		names): a slot that could, as of a plain read, is enough; else
 *		step 3 as usual.
 *
 *		Deadlocks: a transaction waits on a slot of r only in step 2, holding
 *		no slot of r, or in step 3, holding only lower slots of r (the
 *		subtransactions of steps 1 and 2 were rolled back).  Once it leaves
 *		here it waits only on later quotas.  So every wait is on a lock
 *		ranked above all it holds, in the order (single-row quotas by id,
 *		then escrow quotas by id, then slot): no cycle.
 *
 *		A transaction near the 64 subtransactions a backend advertises
 *		(a long batch of calls) goes straight to step 3: past that, every
 *		snapshot in the cluster would have to read pg_subtrans.
 */
void
acquire_slots(int64 tenant_id, QuotaRow *r, int64 amount, bool denied)
{
	if (denied)
	{
		/* denied anyway: a slot that could hold it is enough to know */
		int64		before;
		bool		fits = QuotaSlotProbe(tenant_id, r->quota_id, r->start, amount,
										  r->max_units, r->slots, &before);

		r->old_used = Min(before, r->max_units);
		r->new_used = (amount > r->max_units - r->old_used) ? r->max_units : r->old_used + amount;
		if (fits)
			return;
	}
	else if (MyProc->subxidStatus.count < PGPROC_MAX_CACHED_SUBXIDS - 8)
	{
		SlotCharge	c = charge_one_slot(false, tenant_id, r, amount);

		/* a free slot filled between the snapshot and its lock: once more */
		if (c == SLOT_AGAIN)
			c = charge_one_slot(false, tenant_id, r, amount);
		if (c == SLOT_AGAIN)
			c = SLOT_BUSY;
		/* automatic escrow counts its callers, and those that found no free slot */
		if (r->auto_slots)
			QuotaEscrowNote(tenant_id, r->quota_id, c == SLOT_BUSY, r->slots, 0);
		if (c == SLOT_CHARGED)
			return;
		if (c == SLOT_BUSY &&
			charge_one_slot(true, tenant_id, r, amount) == SLOT_CHARGED)
			return;
	}
	lock_all_slots(tenant_id, r, NULL);
	if (!lay_out_slots(r, 0, amount, true))
	{
		int			i;
		int32		seen = 0;
		int32		due = 0;

		r->multi_deny = true;
		r->touched = false;

		/*
		 * The exact total is known here: a threshold it has reached is
		 * emitted now if no earlier call did (the single-slot steps see only
		 * committed totals and may have filled the last slot unseen).  A bit
		 * in any slot's events_mask means it was; what is emitted here is
		 * recorded in the first slot, so that the denials that follow (an
		 * over-subscribed tenant is denied over and over, every slot locked)
		 * do not try again.
		 */
		r->new_used = r->old_used;
		for (i = 0; i < r->nupd; i++)
			seen |= r->upd[i].mask;
		for (i = 0; i < r->nthresholds; i++)
			if (!(seen & (1 << i)) &&
				(int128) r->old_used * 100 >= (int128) r->max_units * r->thresholds[i])
			{
				emit_event(tenant_id, r, "threshold", r->thresholds[i], r->max_units);
				due |= 1 << i;
			}
		if (r->has_soft && !(seen & (1 << 30)) && r->old_used >= r->soft_limit)
		{
			emit_event(tenant_id, r, "soft_limit", 0, r->soft_limit);
			due |= 1 << 30;
		}
		if (due && r->nupd > 0)
		{
			/* the slot row as the exact path laid it out, with the events */
			r->upd[0].mask |= due;
			QuotaSpiWriteCounter(tenant_id, &r->upd[0], false);
		}
	}
}

/*
 * escrow_slots_now
 *		The number of slots quota_id is laid out over now (automatic escrow
 *		re-laid it since its definition was read; escrow_adapt.c).
 */
int
escrow_slots_now(int64 tenant_id, int64 quota_id)
{
	static QuotaPlan plan = QUOTA_ROW_PLAN(
		"SELECT q.slots FROM quota_ext.quotas q "
		"WHERE q.tenant_id OPERATOR(pg_catalog.=) $1 AND q.quota_id OPERATOR(pg_catalog.=) $2");
	Datum		v;

	/* slots is NOT NULL; no row (the quota is gone): one slot */
	return QuotaSpiRowValue(&plan, tenant_id, quota_id, &v) ? DatumGetInt32(v) : 1;
}

/*
 * release_slots
 *		The call charges nothing after all (another quota denies, or the
 *		recheck after a wait does): give back what acquire_slots' single-slot
 *		steps already wrote.  The slot stays locked until the transaction
 *		ends, as every counter a denied call locked does.
 */
void
release_slots(int64 tenant_id, QuotaRow *rows, int n)
{
	int			i;

	for (i = 0; i < n; i++)
	{
		QuotaRow   *r = &rows[i];

		if (!r->slot_written)
			continue;
		QuotaSlotUndo(tenant_id, r->quota_id, r->upd[0].slot, r->slot_amount);
		r->slot_written = false;
		r->touched = false;
	}
}
