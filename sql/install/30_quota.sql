
-- ---------------------------------------------------------------------------
-- 30 quotas, counters, the usage ledger, idempotency, reservations, events
-- (src/period.c computes periods; src/consume.c is the hot path)
-- ---------------------------------------------------------------------------

CREATE SEQUENCE quota_ext.quota_id_seq;
CREATE SEQUENCE quota_ext.usage_id_seq;
CREATE SEQUENCE quota_ext.reservation_id_seq;
CREATE SEQUENCE quota_ext.event_id_seq;

-- Quota definitions.  Scope: the whole tenant, or one model, user or key
-- (NULL = any).  period is normalized (minute .. year, lifetime);
-- period_label keeps the word it was set with ('daily', 'monthly', ...).
-- origin 'tier' rows are the tier's default and follow the tenant's tier;
-- a quota_set() on the same scope makes the row the tenant's own.
CREATE TABLE quota_ext.quotas (
	tenant_id     bigint NOT NULL REFERENCES quota_ext.tenants (tenant_id),
	quota_id      bigint NOT NULL DEFAULT pg_catalog.nextval('quota_ext.quota_id_seq'),
	period        text NOT NULL
	              CHECK (period OPERATOR(pg_catalog.=) ANY
	                     (ARRAY['minute', 'hour', 'day', 'week', 'month', 'year', 'lifetime'])),
	period_label  text NOT NULL,
	metric        text NOT NULL
	              CHECK (metric OPERATOR(pg_catalog.=) ANY (ARRAY['calls', 'units', 'cost'])),
	model_id      bigint REFERENCES quota_ext.models (model_id),
	user_id       bigint,
	key_id        bigint,
	max_units     bigint NOT NULL CHECK (max_units OPERATOR(pg_catalog.>=) 0),
	soft_limit    bigint CHECK (soft_limit OPERATOR(pg_catalog.>=) 0),
	on_exceed     text NOT NULL DEFAULT 'block'
	              CHECK (on_exceed OPERATOR(pg_catalog.=) ANY (ARRAY['block', 'alert', 'overage', 'throttle'])),
	thresholds    integer[] NOT NULL DEFAULT '{80,100}',
	origin        text NOT NULL DEFAULT 'tenant'
	              CHECK (origin OPERATOR(pg_catalog.=) ANY (ARRAY['tenant', 'tier'])),
	created_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
	updated_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
	-- money budgets (metric 'cost'): max_units, soft_limit and the counter
	-- are micro-units (1e-6) of this ISO 4217 currency; see doc/metering.md
	currency      char(3)
	              CHECK (currency OPERATOR(pg_catalog.~) '^[A-Z]{3}$'),
	CHECK ((metric OPERATOR(pg_catalog.=) 'cost') OPERATOR(pg_catalog.=) (currency IS NOT NULL)),
	-- escrow slots for hot tenants (doc/design.md §5): 1 = one counter row
	slots         integer NOT NULL DEFAULT 1
	              CHECK (slots OPERATOR(pg_catalog.>=) 1 AND slots OPERATOR(pg_catalog.<=) 64),
	-- automatic escrow (blocking quotas only): the extension sets slots
	-- itself from the contention it sees; false once quota_set(slots => N)
	-- fixed the number
	slots_auto    boolean NOT NULL DEFAULT true,
	CHECK (slots OPERATOR(pg_catalog.=) 1 OR on_exceed OPERATOR(pg_catalog.=) 'block'),
	-- on_exceed 'throttle': past the limit, calls pass at this rate (GCRA in
	-- the rate limiter's shared memory, keyed by the quota: src/ratelimit_rules.c)
	throttle_per_minute integer CHECK (throttle_per_minute OPERATOR(pg_catalog.>) 0),
	throttle_burst integer CHECK (throttle_burst OPERATOR(pg_catalog.>=) 0),
	CHECK ((on_exceed OPERATOR(pg_catalog.=) 'throttle') OPERATOR(pg_catalog.=) (throttle_per_minute IS NOT NULL)),
	PRIMARY KEY (tenant_id, quota_id),
	UNIQUE NULLS NOT DISTINCT (tenant_id, period, metric, model_id, user_id, key_id),
	FOREIGN KEY (tenant_id, user_id) REFERENCES quota_ext.users (tenant_id, user_id),
	FOREIGN KEY (tenant_id, key_id) REFERENCES quota_ext.api_keys (tenant_id, key_id)
);
COMMENT ON TABLE quota_ext.quotas IS
	'Quota definitions: scope, metric (calls, units or cost in a currency), calendar period, limits and action on exceed';

-- The counter of a quota for its current period.  One row per quota and
-- slot (slot 0 only for now; see doc/design.md, "hot tenants").  Updated in
-- place (HOT: no indexed column changes), so the table stays small.
CREATE TABLE quota_ext.quota_counters (
	tenant_id     bigint NOT NULL,
	quota_id      bigint NOT NULL,
	slot          integer NOT NULL DEFAULT 0,
	period_start  timestamptz NOT NULL DEFAULT '-infinity',
	used          bigint NOT NULL DEFAULT 0 CHECK (used OPERATOR(pg_catalog.>=) 0),
	-- escrow (slots > 1 only): this slot's share of the limit in its period,
	-- and the thresholds this slot has seen emitted (bit i = thresholds[i+1],
	-- bit 30 = soft limit)
	allowance     bigint,
	events_mask   integer NOT NULL DEFAULT 0,
	PRIMARY KEY (tenant_id, quota_id, slot),
	FOREIGN KEY (tenant_id, quota_id) REFERENCES quota_ext.quotas (tenant_id, quota_id)
		ON DELETE CASCADE
) WITH (fillfactor = 50);
COMMENT ON TABLE quota_ext.quota_counters IS
	'Units used in the current period of each quota (period_start says which period); one row per escrow slot';

-- The slot-share rule, in one place (src/storage_slots.c): slot i of n gets
-- limit / n, plus 1 for the first limit % n slots.
CREATE FUNCTION quota_ext._slot_share(lim bigint, n integer, i integer) RETURNS bigint
	LANGUAGE C IMMUTABLE PARALLEL SAFE AS 'MODULE_PATHNAME', 'quota_ext_slot_share';
COMMENT ON FUNCTION quota_ext._slot_share(bigint, integer, integer) IS
	'Internal: the default share of a limit of escrow slot i of n';

-- The one writer of counter rows for PL/pgSQL (the storage module,
-- src/storage_slots.c, which the C paths write through too): lay a quota's
-- counters out over n rows in the period that starts at period_start.  The
-- slack is shared by the slot-share rule over the slots of keep (existing
-- rows below first, which keep their used) and then first .. n-1 (first
-- gets total and mask, the later ones 0); allowances are NULL when only one
-- slot shares (a plain counter); rows of slot n and above are deleted
-- first; a row that exists is updated in place, so that a call waiting for
-- it follows the update.  The rows must be locked by the caller (or new).
CREATE FUNCTION quota_ext._counters_lay_out(tenant_id bigint, quota_id bigint,
	period_start timestamptz, n integer, first integer, keep integer[], total bigint,
	mask integer, slack bigint) RETURNS void
	LANGUAGE C VOLATILE AS 'MODULE_PATHNAME', 'quota_ext_counters_lay_out';
COMMENT ON FUNCTION quota_ext._counters_lay_out(bigint, bigint, timestamptz, integer, integer,
	integer[], bigint, integer, bigint) IS
	'Internal: write a quota''s counter rows laid out over n slots (the only SQL way to write them)';

-- Rebuild the counters of a quota with its current number of slots: the
-- current period's total goes to slot 0, and the limit is split into
-- allowances so that slot 0 holds what it used plus its share of the slack.
-- Called by quota_set when slots or the limit of a multi-slot quota change.
CREATE FUNCTION quota_ext._counters_rebuild(tenant_id bigint, quota_id bigint) RETURNS void
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
	q quota_ext.quotas;
	tz text;
	cur timestamptz;
	total bigint;
BEGIN
	SELECT * INTO q FROM quota_ext.quotas
	 WHERE tenant_id = _counters_rebuild.tenant_id AND quota_id = _counters_rebuild.quota_id;
	SELECT t.timezone INTO tz FROM quota_ext.tenants t WHERE t.tenant_id = q.tenant_id;
	cur := (quota_ext.period_bounds(q.period, tz, clock_timestamp())).period_start;
	-- every slot, in slot order, like the hot path
	PERFORM 1 FROM quota_ext.quota_counters c
	 WHERE c.tenant_id = q.tenant_id AND c.quota_id = q.quota_id
	 ORDER BY c.slot FOR UPDATE;
	SELECT coalesce(sum(c.used) FILTER (WHERE c.period_start = cur), 0) INTO total
	  FROM quota_ext.quota_counters c WHERE c.tenant_id = q.tenant_id AND c.quota_id = q.quota_id;
	-- The rows that stay are updated in place, never deleted and inserted
	-- again: a call waiting for one follows the update to the new version,
	-- where a deleted row would tell it that the quota is gone (its charge
	-- would go uncounted: the ledger mismatch of test/t/070_load_mix.pl).
	PERFORM quota_ext._counters_lay_out(q.tenant_id, q.quota_id, cur, q.slots, 0, '{}', total, 0,
	                                    greatest(q.max_units - total, 0));
END
$$;
COMMENT ON FUNCTION quota_ext._counters_rebuild(bigint, bigint) IS
	'Internal: lay out a quota''s counter rows for its number of escrow slots';

-- Automatic escrow (src/escrow_adapt.c, doc/design.md §5): lay a blocking
-- quota with slots_auto out over n counter rows, in one transaction.  More
-- slots for a quota that has slots: see below (only free slots are locked).
-- Otherwise the quota row first (as quota_set), then every counter row in slot order (the
-- order of the hot path, which never waits for a quota row), the current
-- period's total to slot 0 with the thresholds already emitted, the slack
-- split into allowances (none with n = 1: a plain counter), slot 0 updated
-- in place so that a call waiting for it follows the update, and the
-- configuration generation moved so that every backend reads the new
-- slot count.  Returns false, changing nothing, when the quota is gone, is
-- no longer automatic, already has n slots, or one of its slots is in a
-- later period than now.
CREATE FUNCTION quota_ext._escrow_relayout(tenant_id bigint, quota_id bigint, n integer)
	RETURNS boolean
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
	q quota_ext.quotas;
	tz text;
	cur timestamptz;
	total bigint;
	mask integer;
	slack bigint;
	free integer[];
BEGIN
	-- On Citus a write first: Citus holds a shard move off for the rest of a
	-- transaction that wrote to the shard group, not for one that only
	-- locked rows with SELECT ... FOR UPDATE, so everything locked, read and
	-- written below is on one placement (doc/scaling.md, the compare-and-set)
	IF quota_ext._on_citus() THEN
		UPDATE quota_ext.quotas SET slots = slots
		 WHERE tenant_id = _escrow_relayout.tenant_id AND quota_id = _escrow_relayout.quota_id;
	END IF;
	SELECT * INTO q FROM quota_ext.quotas
	 WHERE tenant_id = _escrow_relayout.tenant_id AND quota_id = _escrow_relayout.quota_id
	   FOR NO KEY UPDATE;
	IF NOT FOUND OR NOT q.slots_auto OR q.on_exceed <> 'block' THEN
		RETURN false;
	END IF;
	n := least(greatest(n, 1), 64, greatest(q.max_units, 1));
	IF n = q.slots THEN
		RETURN false;
	END IF;
	SELECT t.timezone INTO tz FROM quota_ext.tenants t WHERE t.tenant_id = q.tenant_id;
	IF q.slots > 1 AND n > q.slots THEN
		-- More slots for a quota that has slots: waiting for every slot in
		-- turn would hold the ones already locked while callers keep taking
		-- the others (seconds under load).  Instead the new slots get
		-- allowance from the slots free right now (SKIP LOCKED: never waits),
		-- when every row is in the current period (a row's period only moves
		-- forward, so the rows not locked stay in it, and no row rolls over
		-- with a default share computed for another count).
		cur := (quota_ext.period_bounds(q.period, tz, clock_timestamp())).period_start;
		IF EXISTS (SELECT FROM quota_ext.quota_counters c
		            WHERE c.tenant_id = q.tenant_id AND c.quota_id = q.quota_id
		              AND c.period_start <> cur) THEN
			RETURN false;
		END IF;
		SELECT array_agg(f.slot ORDER BY f.slot), coalesce(sum(f.allowance - f.used), 0)
		  INTO free, slack
		  FROM (SELECT c.slot, c.used, c.allowance FROM quota_ext.quota_counters c
		         WHERE c.tenant_id = q.tenant_id AND c.quota_id = q.quota_id
		           AND c.period_start = cur
		         ORDER BY c.slot FOR NO KEY UPDATE SKIP LOCKED) f;
		IF free IS NULL THEN
			RETURN false;
		END IF;
		-- the free slots keep their used; slots q.slots .. n-1 are new
		PERFORM quota_ext._counters_lay_out(q.tenant_id, q.quota_id, cur, n, q.slots, free, 0, 0,
		                                    slack);
		UPDATE quota_ext.quotas SET slots = n
		 WHERE tenant_id = q.tenant_id AND quota_id = q.quota_id;
		PERFORM quota_ext.config_changed();
		RETURN true;
	END IF;
	PERFORM 1 FROM quota_ext.quota_counters c
	 WHERE c.tenant_id = q.tenant_id AND c.quota_id = q.quota_id
	 ORDER BY c.slot FOR NO KEY UPDATE;
	cur := (quota_ext.period_bounds(q.period, tz, clock_timestamp())).period_start;
	IF EXISTS (SELECT FROM quota_ext.quota_counters c
	            WHERE c.tenant_id = q.tenant_id AND c.quota_id = q.quota_id
	              AND c.period_start > cur) THEN
		RETURN false;
	END IF;
	SELECT coalesce(sum(c.used) FILTER (WHERE c.period_start = cur), 0),
	       coalesce(bit_or(c.events_mask) FILTER (WHERE c.period_start = cur), 0)
	  INTO total, mask
	  FROM quota_ext.quota_counters c WHERE c.tenant_id = q.tenant_id AND c.quota_id = q.quota_id;
	-- slot 0 (updated in place) gets the total and the thresholds emitted
	PERFORM quota_ext._counters_lay_out(q.tenant_id, q.quota_id, cur, n, 0, '{}', total, mask,
	                                    greatest(q.max_units - total, 0));
	UPDATE quota_ext.quotas SET slots = n
	 WHERE tenant_id = q.tenant_id AND quota_id = q.quota_id;
	PERFORM quota_ext.config_changed();
	RETURN true;
END
$$;
COMMENT ON FUNCTION quota_ext._escrow_relayout(bigint, bigint, integer) IS
	'Internal: automatic escrow lays a quota out over n counter rows';

CREATE FUNCTION quota_ext.escrow_adapt() RETURNS integer
	LANGUAGE C VOLATILE AS 'MODULE_PATHNAME', 'quota_ext_escrow_adapt';
COMMENT ON FUNCTION quota_ext.escrow_adapt() IS
	'One automatic escrow pass over this database in the current transaction (the background worker runs them on its own): the number of quotas laid out again';

CREATE FUNCTION quota_ext.escrow_status(OUT tenant_id bigint, OUT quota_id bigint,
	OUT waits bigint, OUT calls bigint, OUT backends integer, OUT quiet_passes integer)
	RETURNS SETOF record
	LANGUAGE C VOLATILE AS 'MODULE_PATHNAME', 'quota_ext_escrow_status';
COMMENT ON FUNCTION quota_ext.escrow_status() IS
	'Automatic escrow''s entries of this database as the next pass will read them: waits (or calls that found no free slot), escrow calls, distinct backends, quiet passes in a row';

-- The usage ledger: append-only.  occurred_at is the instant the row counts
-- in (its periods); created_at when it was written.  A refund or settlement
-- carries the occurred_at of the row it adjusts, so every period's sum stays
-- equal to its counter.  No foreign keys: nothing on the hot path locks
-- shared parent rows.
-- A domain, not a CHECK constraint: a table's CHECK is re-read from its text
-- (stringToNode) at every INSERT, a domain's check is kept parsed in the type
-- cache — on the ledger that is ~6% of a consume (doc/performance.md).
CREATE DOMAIN quota_ext.usage_kind AS text
	CHECK (VALUE OPERATOR(pg_catalog.=) ANY
	       (ARRAY['consume', 'refund', 'reserve', 'settle', 'release']));
COMMENT ON DOMAIN quota_ext.usage_kind IS 'What a usage row records';

CREATE TABLE quota_ext.usage (
	tenant_id       bigint NOT NULL,
	usage_id        bigint NOT NULL DEFAULT pg_catalog.nextval('quota_ext.usage_id_seq'),
	created_at      timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
	occurred_at     timestamptz NOT NULL,
	model_id        bigint NOT NULL,
	user_id         bigint,
	key_id          bigint,
	units           bigint NOT NULL,
	overage_units   bigint NOT NULL DEFAULT 0,
	input_tokens    bigint,
	output_tokens   bigint,
	price_id        bigint,
	ref_usage_id    bigint,
	reservation_id  bigint,
	calls           integer NOT NULL,
	kind            quota_ext.usage_kind NOT NULL,
	cost            numeric NOT NULL DEFAULT 0,
	idempotency_key text,
	metadata        jsonb
) PARTITION BY RANGE (created_at);
COMMENT ON TABLE quota_ext.usage IS
	'Append-only usage ledger (monthly partitions by created_at); calls, units, tokens and cost are signed; price_id is the price version used';
COMMENT ON COLUMN quota_ext.usage.cost IS
	'Money charged by this row in the currency of its price (exact, micro-unit precision); 0 without a price';
CREATE TABLE quota_ext.usage_default PARTITION OF quota_ext.usage DEFAULT;
-- Indexes live on each partition, not on the partitioned table: monthly
-- partitions are made at run time (usage_partitions_maintain(), with the
-- same three indexes) and are not extension members, so pg_dump dumps them
-- with their own indexes; a partitioned index, created by CREATE EXTENSION
-- on restore, would clone itself onto them at ATTACH and collide with the
-- dumped ones.  Per partition:
--   (tenant_id, usage_id, created_at) unique: the key (created_at is the
--     partition key);
--   (tenant_id, created_at): the tail of a tenant's rows since a rollup or
--     billing watermark; created_at >= occurred_at always, so a created_at
--     range also bounds every occurred_at query;
--   BRIN (created_at): the cross-tenant scans of usage_rollup() and
--     billing_close(), nearly free to maintain on an append-only table.
ALTER TABLE quota_ext.usage_default ADD PRIMARY KEY (tenant_id, usage_id, created_at);
CREATE INDEX usage_default_tenant_created ON quota_ext.usage_default (tenant_id, created_at);
CREATE INDEX usage_default_created_brin ON quota_ext.usage_default USING brin (created_at);

-- One row per (tenant, idempotency key): the request's parameters and the
-- decision it got.  A replay returns the decision; other parameters raise.
CREATE TABLE quota_ext.idempotency_keys (
	tenant_id       bigint NOT NULL,
	idempotency_key text NOT NULL
	                CHECK (pg_catalog.length(idempotency_key) OPERATOR(pg_catalog.<=) 255),
	op              text NOT NULL,
	model           text NOT NULL,
	units           bigint NOT NULL,
	created_at      timestamptz NOT NULL DEFAULT pg_catalog.now(),
	allowed         boolean,
	denied_by       text,
	quota_id        bigint,
	period          text,
	"limit"         bigint,
	remaining       bigint,
	resets_at       timestamptz,
	retry_after     bigint,
	usage_id        bigint,
	reservation_id  bigint,
	cost            numeric,
	remaining_cost  numeric,
	currency        char(3),
	denied_metric   text,
	overage         bigint,
	PRIMARY KEY (tenant_id, idempotency_key)
);
COMMENT ON TABLE quota_ext.idempotency_keys IS
	'Idempotency keys per tenant with the original request and decision';
-- idempotency_purge() (12_tiers.sql) deletes a tenant's old keys by this
CREATE INDEX idempotency_keys_created ON quota_ext.idempotency_keys (tenant_id, created_at);

CREATE TABLE quota_ext.reservations (
	tenant_id       bigint NOT NULL,
	reservation_id  bigint NOT NULL DEFAULT pg_catalog.nextval('quota_ext.reservation_id_seq'),
	usage_id        bigint NOT NULL,
	occurred_at     timestamptz NOT NULL,
	model_id        bigint NOT NULL,
	user_id         bigint,
	key_id          bigint,
	estimate        bigint NOT NULL,
	price_id        bigint,
	cost            numeric NOT NULL DEFAULT 0,
	input_tokens    bigint,
	output_tokens   bigint,
	actual          bigint,
	unbilled        bigint NOT NULL DEFAULT 0,
	status          text NOT NULL DEFAULT 'open'
	                CHECK (status OPERATOR(pg_catalog.=) ANY
	                       (ARRAY['open', 'settled', 'cancelled', 'expired'])),
	expires_at      timestamptz NOT NULL,
	created_at      timestamptz NOT NULL DEFAULT pg_catalog.now(),
	closed_at       timestamptz,
	PRIMARY KEY (tenant_id, reservation_id)
);
COMMENT ON TABLE quota_ext.reservations IS
	'Reserved estimates awaiting settle, cancel or expiry (unbilled = excess a settle could not charge)';
CREATE INDEX reservations_open_expiry ON quota_ext.reservations (expires_at)
	WHERE status OPERATOR(pg_catalog.=) 'open';

-- A consumption refunded (once).
CREATE TABLE quota_ext.refunds (
	tenant_id        bigint NOT NULL,
	usage_id         bigint NOT NULL,
	refund_usage_id  bigint NOT NULL,
	created_at       timestamptz NOT NULL DEFAULT pg_catalog.now(),
	PRIMARY KEY (tenant_id, usage_id)
);
COMMENT ON TABLE quota_ext.refunds IS 'Consumptions given back with quota_refund()';

-- Threshold crossings, at most one per quota, period, kind and threshold.
CREATE TABLE quota_ext.quota_events (
	tenant_id     bigint NOT NULL,
	event_id      bigint NOT NULL DEFAULT pg_catalog.nextval('quota_ext.event_id_seq'),
	quota_id      bigint NOT NULL,
	period_start  timestamptz NOT NULL,
	kind          text NOT NULL
	              CHECK (kind OPERATOR(pg_catalog.=) ANY (ARRAY['threshold', 'soft_limit'])),
	threshold     integer NOT NULL,
	used          bigint NOT NULL,
	"limit"       bigint NOT NULL,
	created_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
	PRIMARY KEY (tenant_id, event_id),
	UNIQUE (tenant_id, quota_id, period_start, kind, threshold)
);
COMMENT ON TABLE quota_ext.quota_events IS
	'Quota threshold crossings (percent of the limit, or the soft limit); also sent on NOTIFY channel quota_ext_events';

-- The answer of quota_consume / invoke / quota_reserve.
CREATE TYPE quota_ext.decision AS (
	allowed        boolean,
	denied_by      text,
	quota_id       bigint,
	period         text,
	"limit"        bigint,
	remaining      bigint,
	resets_at      timestamptz,
	retry_after    bigint,
	usage_id       bigint,
	reservation_id bigint,
	replayed       boolean,
	cost           numeric,
	remaining_cost numeric,
	currency       text,
	denied_metric  text,
	tenant_id      bigint,
	user_id        bigint,
	key_id         bigint,
	overage        bigint
);
COMMENT ON TYPE quota_ext.decision IS
	'allowed; denied_by (tenant, policy, rate_limit, quota or NULL); the tightest or denying limit with remaining, resets_at and retry_after (seconds); the usage row; replayed = answered from an idempotency key; cost of the call, money left in the tightest (or denying) cost quota and its currency; denied_metric = the denying quota''s metric (calls, units, cost; NULL unless denied_by = quota); the tenant, user and key of the call; overage = units of an allowed call past the limit of overage or throttled quotas (0 within every limit, NULL when denied); denied_by throttle = a throttled quota past its limit admits no more calls yet (retry_after)';

-- ---------------------------------------------------------------------------
-- periods (src/period.c)
-- ---------------------------------------------------------------------------

CREATE FUNCTION quota_ext.period_bounds(period text, timezone text, at timestamptz,
	OUT period_start timestamptz, OUT period_end timestamptz)
	LANGUAGE C STABLE PARALLEL SAFE AS 'MODULE_PATHNAME', 'quota_ext_period_bounds';
COMMENT ON FUNCTION quota_ext.period_bounds(text, text, timestamptz) IS
	'The calendar period (minute .. year, lifetime; or daily, monthly, ...) containing at, in a time zone';

-- ---------------------------------------------------------------------------
-- quota administration
-- ---------------------------------------------------------------------------

CREATE FUNCTION quota_ext._normalize_period(period text) RETURNS text
	LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	IF period IS NULL THEN PERFORM quota_ext._null_arg('period'); END IF;
	RETURN CASE WHEN lower(period) = ANY (ARRAY['minute', 'minutely']) THEN 'minute'
	            WHEN lower(period) = ANY (ARRAY['hour', 'hourly']) THEN 'hour'
	            WHEN lower(period) = ANY (ARRAY['day', 'daily']) THEN 'day'
	            WHEN lower(period) = ANY (ARRAY['week', 'weekly']) THEN 'week'
	            WHEN lower(period) = ANY (ARRAY['month', 'monthly']) THEN 'month'
	            WHEN lower(period) = ANY (ARRAY['year', 'yearly', 'annual', 'annually']) THEN 'year'
	            WHEN lower(period) = ANY (ARRAY['lifetime', 'never', 'total']) THEN 'lifetime'
	       END;
END
$$;
COMMENT ON FUNCTION quota_ext._normalize_period(text) IS 'Internal: period word to period';

-- The tier quota of a metric (tenant-wide, monthly; origin tier or tenant)
-- of a tenant, locked; all NULL when there is none.
CREATE FUNCTION quota_ext._tier_quota_row(tenant_id bigint, metric text) RETURNS quota_ext.quotas
	LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
	q quota_ext.quotas;
BEGIN
	SELECT * INTO q FROM quota_ext.quotas
	 WHERE tenant_id = _tier_quota_row.tenant_id AND period = 'month' AND metric = _tier_quota_row.metric
	   AND model_id IS NULL AND user_id IS NULL AND key_id IS NULL
	 FOR UPDATE;
	RETURN q;
END
$$;
COMMENT ON FUNCTION quota_ext._tier_quota_row(bigint, text) IS
	'Internal: a tenant''s tenant-wide monthly quota of a metric, locked (the tier syncs'' row)';

-- Create the tier quota (q has no quota_id) or bring its limit to lim.
CREATE FUNCTION quota_ext._tier_quota_put(tenant_id bigint, q quota_ext.quotas, metric text,
	lim bigint, currency text) RETURNS void
	LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
	IF q.quota_id IS NULL THEN
		INSERT INTO quota_ext.quotas (tenant_id, period, period_label, metric, max_units, currency, origin)
		VALUES (_tier_quota_put.tenant_id, 'month', 'monthly', _tier_quota_put.metric, lim,
		        _tier_quota_put.currency, 'tier')
		RETURNING * INTO q;
		PERFORM quota_ext._counters_lay_out(q.tenant_id, q.quota_id, '-infinity', 1, 0, '{}', 0, 0, 0);
	ELSIF q.max_units <> lim THEN
		UPDATE quota_ext.quotas SET max_units = lim, updated_at = now()
		 WHERE tenant_id = q.tenant_id AND quota_id = q.quota_id;
	END IF;
END
$$;
COMMENT ON FUNCTION quota_ext._tier_quota_put(bigint, quota_ext.quotas, text, bigint, text) IS
	'Internal: create a tenant''s tier quota of a metric, or set its limit (the tier syncs'' write)';

-- Make the tenant's tier defaults (origin 'tier') match its tier: a
-- tenant-wide monthly calls quota of tiers.monthly_calls, unless the tenant
-- set its own quota of that scope.
CREATE FUNCTION quota_ext._tier_quotas_sync(tenant_id bigint) RETURNS void
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
	lim bigint;
	q quota_ext.quotas;
BEGIN
	SELECT tr.monthly_calls INTO lim FROM quota_ext.tenants t
	  JOIN quota_ext.tiers tr ON tr.tier = t.tier
	 WHERE t.tenant_id = _tier_quotas_sync.tenant_id;
	q := quota_ext._tier_quota_row(_tier_quotas_sync.tenant_id, 'calls');
	PERFORM quota_ext._tier_budget_sync(_tier_quotas_sync.tenant_id);
	IF q.quota_id IS NOT NULL AND q.origin = 'tenant' THEN
		RETURN;
	ELSIF lim IS NULL THEN
		DELETE FROM quota_ext.quotas WHERE tenant_id = q.tenant_id AND quota_id = q.quota_id;
	ELSE
		PERFORM quota_ext._tier_quota_put(_tier_quotas_sync.tenant_id, q, 'calls', lim, NULL);
	END IF;
END
$$;
COMMENT ON FUNCTION quota_ext._tier_quotas_sync(bigint) IS
	'Internal: keep a tenant''s tier default quota in line with its tier';

-- The same for the tier's monthly money budget (issue 17): a tenant-wide
-- monthly cost quota of origin 'tier', unless the tenant set its own.  A
-- change of the tier's currency replaces the tier quota (a cost quota counts
-- one currency).
CREATE FUNCTION quota_ext._tier_budget_sync(tenant_id bigint) RETURNS void
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
	b numeric;
	cur text;
	lim bigint;
	q quota_ext.quotas;
BEGIN
	SELECT tr.monthly_budget, tr.budget_currency INTO b, cur FROM quota_ext.tenants t
	  JOIN quota_ext.tiers tr ON tr.tier = t.tier
	 WHERE t.tenant_id = _tier_budget_sync.tenant_id;
	q := quota_ext._tier_quota_row(_tier_budget_sync.tenant_id, 'cost');
	IF q.quota_id IS NOT NULL AND q.origin = 'tenant' THEN
		RETURN;
	END IF;
	IF q.quota_id IS NOT NULL AND (b IS NULL OR q.currency IS DISTINCT FROM cur) THEN
		PERFORM quota_ext._counters_lay_out(q.tenant_id, q.quota_id, '-infinity', 0, 0, '{}', 0, 0, 0);
		DELETE FROM quota_ext.quotas WHERE tenant_id = q.tenant_id AND quota_id = q.quota_id;
		q.quota_id := NULL;
	END IF;
	IF b IS NULL THEN
		RETURN;
	END IF;
	lim := quota_ext._money_to_micro(b, 'monthly_budget');
	PERFORM quota_ext._tier_quota_put(_tier_budget_sync.tenant_id, q, 'cost', lim, cur);
END
$$;
COMMENT ON FUNCTION quota_ext._tier_budget_sync(bigint) IS
	'Internal: keep a tenant''s tier default money budget in line with its tier';

-- The throttle arguments of quota_set (model-call and meter quotas alike):
-- throttle_per_minute is required with on_exceed 'throttle' and refused
-- otherwise; the same bound as a tier's rate limit (refilled within a day).
-- Returns the burst to store (0 by default; NULL unless throttled).
CREATE FUNCTION quota_ext._check_throttle(on_exceed text, per_minute integer, burst integer)
	RETURNS integer
	LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	IF $1 = 'throttle' THEN
		IF $2 IS NULL THEN PERFORM quota_ext._null_arg('throttle_per_minute'); END IF;
		IF $2 <= 0 OR coalesce($3, 0) < 0 OR (coalesce($3, 0)::bigint + 1) > 1440::bigint * $2 THEN
			RAISE EXCEPTION 'throttle_per_minute must be positive, throttle_burst not negative and refilled within a day'
				USING ERRCODE = 'invalid_parameter_value';
		END IF;
		RETURN coalesce($3, 0);
	END IF;
	IF $2 IS NOT NULL OR $3 IS NOT NULL THEN
		RAISE EXCEPTION 'throttle_per_minute and throttle_burst apply only to on_exceed => ''throttle'''
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	RETURN NULL;
END
$$;
COMMENT ON FUNCTION quota_ext._check_throttle(text, integer, integer) IS
	'Internal: check quota_set''s throttle arguments; the burst to store';

CREATE FUNCTION quota_ext.quota_set(tenant_id bigint, period text, max_units bigint DEFAULT NULL,
	model text DEFAULT NULL, metric text DEFAULT 'calls', soft_limit bigint DEFAULT NULL,
	on_exceed text DEFAULT 'block', user_id bigint DEFAULT NULL, key_id bigint DEFAULT NULL,
	thresholds integer[] DEFAULT '{80,100}', max_cost numeric DEFAULT NULL,
	currency text DEFAULT NULL, slots integer DEFAULT NULL, meter text DEFAULT NULL,
	throttle_per_minute integer DEFAULT NULL, throttle_burst integer DEFAULT NULL) RETURNS bigint
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
	t quota_ext.tenants := quota_ext._tenant_for_update(quota_set.tenant_id);
	p text := quota_ext._normalize_period(quota_set.period);
	m text := quota_set.metric;
	cur text := upper(quota_set.currency);
	lim bigint := quota_set.max_units;
	mid bigint;
	old quota_ext.quotas;
	new quota_ext.quotas;
	th integer;
	pc text;
	burst integer;
BEGIN
	IF p IS NULL THEN
		RAISE EXCEPTION 'invalid period "%"', quota_ext._quote_input(quota_set.period)
			USING ERRCODE = 'invalid_parameter_value',
			      HINT = 'Use minute, hour, day, week, month, year or lifetime (or minutely, hourly, daily, weekly, monthly, yearly, annual, annually, never, total).';
	END IF;
	IF m IS NULL THEN PERFORM quota_ext._null_arg('metric'); END IF;
	-- a quota on a named meter (32_meters.sql): units of the meter, per
	-- tenant or user, many meters per scope; limit, soft limit, on_exceed,
	-- throttle and thresholds are checked below as for any units quota
	IF quota_set.meter IS NOT NULL
	   AND (quota_set.model IS NOT NULL OR quota_set.key_id IS NOT NULL OR m NOT IN ('calls', 'units')
	        OR quota_set.max_cost IS NOT NULL OR cur IS NOT NULL OR quota_set.slots IS NOT NULL) THEN
		RAISE EXCEPTION 'a meter quota counts units of its meter, tenant-wide or for one user'
			USING ERRCODE = 'invalid_parameter_value',
			      HINT = 'Leave model, key_id, metric, max_cost, currency and slots out.';
	END IF;
	-- a money budget: max_cost (and currency) instead of max_units
	IF quota_set.max_cost IS NOT NULL AND m = 'calls' THEN
		m := 'cost';
	END IF;
	IF m = 'cost' THEN
		IF quota_set.max_cost IS NULL THEN PERFORM quota_ext._null_arg('max_cost'); END IF;
		IF cur IS NULL THEN PERFORM quota_ext._null_arg('currency'); END IF;
		IF quota_set.max_units IS NOT NULL OR quota_set.soft_limit IS NOT NULL THEN
			RAISE EXCEPTION 'a cost quota is limited by max_cost, not max_units or soft_limit'
				USING ERRCODE = 'invalid_parameter_value',
				      HINT = 'Pass max_units => NULL and use thresholds for early alerts.';
		END IF;
		cur := quota_ext._check_currency(cur);
		lim := quota_ext._money_to_micro(quota_set.max_cost, 'max_cost');
	ELSIF quota_set.max_cost IS NOT NULL OR cur IS NOT NULL THEN
		RAISE EXCEPTION 'max_cost and currency apply only to cost quotas'
			USING ERRCODE = 'invalid_parameter_value', HINT = 'Use metric => ''cost''.';
	END IF;
	IF lim IS NULL THEN PERFORM quota_ext._null_arg('max_units'); END IF;
	IF quota_set.on_exceed IS NULL THEN PERFORM quota_ext._null_arg('on_exceed'); END IF;
	IF quota_set.thresholds IS NULL THEN PERFORM quota_ext._null_arg('thresholds'); END IF;
	IF lim < 0 OR quota_set.soft_limit < 0 THEN
		RAISE EXCEPTION 'max_units and soft_limit must not be negative' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF quota_set.soft_limit > lim THEN
		RAISE EXCEPTION 'soft_limit must not exceed max_units' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF m <> ALL (ARRAY['calls', 'units', 'cost']) THEN
		RAISE EXCEPTION 'invalid metric "%"', quota_ext._quote_input(m)
			USING ERRCODE = 'invalid_parameter_value', HINT = 'Use calls, units or cost.';
	END IF;
	IF quota_set.slots IS NOT NULL AND (quota_set.slots < 1 OR quota_set.slots > 64) THEN
		RAISE EXCEPTION 'slots must be between 1 and 64' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF quota_set.slots > 1 AND quota_set.on_exceed <> 'block' THEN
		RAISE EXCEPTION 'only blocking quotas can have escrow slots'
			USING ERRCODE = 'invalid_parameter_value',
			      HINT = 'Alert and overage quotas never deny, so one counter row does not serialize them more than the usage insert.';
	END IF;
	IF quota_set.on_exceed <> ALL (ARRAY['block', 'alert', 'overage', 'throttle']) THEN
		RAISE EXCEPTION 'invalid on_exceed "%"', quota_ext._quote_input(quota_set.on_exceed)
			USING ERRCODE = 'invalid_parameter_value', HINT = 'Use block, alert, overage or throttle.';
	END IF;
	IF m = 'cost' AND quota_set.on_exceed = 'throttle' THEN
		RAISE EXCEPTION 'a cost quota cannot be throttled' USING ERRCODE = 'invalid_parameter_value',
			HINT = 'Throttle a calls or units quota; a money budget blocks, alerts or takes overage.';
	END IF;
	burst := quota_ext._check_throttle(quota_set.on_exceed, quota_set.throttle_per_minute, quota_set.throttle_burst);
	IF array_ndims(quota_set.thresholds) > 1 OR cardinality(quota_set.thresholds) > 16 THEN
		RAISE EXCEPTION 'thresholds must be a list of at most 16 percentages'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	FOREACH th IN ARRAY quota_set.thresholds LOOP
		IF th IS NULL OR th < 1 OR th > 1000 THEN
			RAISE EXCEPTION 'thresholds must be percentages from 1 to 1000'
				USING ERRCODE = 'invalid_parameter_value';
		END IF;
	END LOOP;
	IF quota_set.meter IS NOT NULL THEN
		RETURN quota_ext._meter_quota_set(t.tenant_id, quota_set.meter, p, lower(quota_set.period), lim,
		                                  quota_set.on_exceed, quota_set.user_id,
		                                  quota_set.throttle_per_minute, burst, quota_set.soft_limit,
		                                  quota_set.thresholds);
	END IF;
	IF quota_set.model IS NOT NULL THEN
		mid := quota_ext._model_for(t.tenant_id, quota_set.model);
		-- a model's cost quota must count in the currency of its price now
		IF m = 'cost' THEN
			SELECT pr.currency INTO pc FROM quota_ext._price_in_force(t.tenant_id, mid, now()) pr;
			IF pc IS NOT NULL AND pc <> cur THEN
				RAISE EXCEPTION 'model "%" is priced in %, not %', quota_ext._quote_input(quota_set.model), pc, cur
					USING ERRCODE = 'invalid_parameter_value',
					      HINT = 'A cost quota counts the currency of the prices it applies to.';
			END IF;
		END IF;
	END IF;
	PERFORM quota_ext._check_user(t.tenant_id, quota_set.user_id, quota_set.key_id);

	-- FOR NO KEY UPDATE, not FOR UPDATE: a call that writes a counter row
	-- its own transaction wrote before (a refund after its consume) checks
	-- the counter's foreign key, FOR KEY SHARE on this row, while it holds
	-- the counter that _counters_rebuild below waits for (doc/design.md 5)
	SELECT * INTO old FROM quota_ext.quotas
	 WHERE tenant_id = t.tenant_id AND period = p AND metric = m
	   AND model_id IS NOT DISTINCT FROM mid AND user_id IS NOT DISTINCT FROM quota_set.user_id
	   AND key_id IS NOT DISTINCT FROM quota_set.key_id
	 FOR NO KEY UPDATE;
	-- a call checks the throttles of all its quotas past their limits at
	-- once, at most QUOTA_RL_MAX_RULES (src/ratelimit_internal.h) of them;
	-- the tenant's row lock (_tenant_for_update) makes the count exact
	IF quota_set.on_exceed = 'throttle' AND old.on_exceed IS DISTINCT FROM 'throttle'
	   AND (SELECT count(*) FROM quota_ext.quotas q
	         WHERE q.tenant_id = t.tenant_id AND q.on_exceed = 'throttle') >= 8 THEN
		RAISE EXCEPTION 'tenant % has 8 throttled quotas already', t.tenant_id
			USING ERRCODE = 'program_limit_exceeded',
			      HINT = 'Make another throttled quota block, alert or take overage first.';
	END IF;
	IF old.quota_id IS NOT NULL AND old.currency IS DISTINCT FROM cur THEN
		RAISE EXCEPTION 'quota % counts %, not %', old.quota_id, old.currency, cur
			USING ERRCODE = 'invalid_parameter_value',
			      HINT = 'Delete the quota with quota_ext.quota_delete() to change its currency.';
	END IF;
	IF old.quota_id IS NULL THEN
		INSERT INTO quota_ext.quotas (tenant_id, period, period_label, metric, model_id, user_id, key_id,
		                              max_units, soft_limit, on_exceed, thresholds, currency, slots,
		                              throttle_per_minute, throttle_burst)
		VALUES (t.tenant_id, p, lower(quota_set.period), m, mid, quota_set.user_id,
		        quota_set.key_id, lim, quota_set.soft_limit, quota_set.on_exceed,
		        quota_set.thresholds, cur, coalesce(quota_set.slots, 1),
		        quota_set.throttle_per_minute, burst)
		RETURNING * INTO new;
		IF quota_set.slots IS NOT NULL THEN
			UPDATE quota_ext.quotas SET slots_auto = false
			 WHERE tenant_id = t.tenant_id AND quota_id = new.quota_id
			RETURNING * INTO new;
		END IF;
		IF new.slots = 1 THEN
			PERFORM quota_ext._counters_lay_out(t.tenant_id, new.quota_id, '-infinity', 1, 0, '{}',
			                                    0, 0, 0);
		ELSE
			PERFORM quota_ext._counters_rebuild(t.tenant_id, new.quota_id);
		END IF;
	ELSE
		UPDATE quota_ext.quotas SET period_label = lower(quota_set.period),
		       max_units = lim, soft_limit = quota_set.soft_limit,
		       on_exceed = quota_set.on_exceed, thresholds = quota_set.thresholds,
		       throttle_per_minute = quota_set.throttle_per_minute, throttle_burst = burst,
		       slots = CASE WHEN quota_set.slots IS NOT NULL THEN quota_set.slots
		                    WHEN quota_set.on_exceed <> 'block' THEN 1 ELSE slots END,
		       slots_auto = slots_auto AND quota_set.slots IS NULL,
		       origin = 'tenant', updated_at = now()
		 WHERE tenant_id = t.tenant_id AND quota_id = old.quota_id
		RETURNING * INTO new;
		-- escrow allowances follow the limit; a change of slots re-lays the rows
		IF new.slots > 1 OR old.slots > 1 THEN
			PERFORM quota_ext._counters_rebuild(t.tenant_id, new.quota_id);
		END IF;
	END IF;
	PERFORM quota_ext._audit(t.tenant_id, 'quota_set', 'quota', new.quota_id::text,
	                         to_jsonb(old), to_jsonb(new));
	RETURN new.quota_id;
END
$$;
COMMENT ON FUNCTION quota_ext.quota_set(bigint, text, bigint, text, text, bigint, text, bigint, bigint, integer[], numeric, text, integer, text, integer, integer) IS
	'Create or change the quota of a scope (tenant, or one model, user or key); a money budget with max_cost and currency; slots > 1 spreads a hot quota over escrow rows; on_exceed throttle: past the limit calls pass at throttle_per_minute (burst throttle_burst) as overage; meter => a quota on a named meter; the count of the current period is kept';

CREATE FUNCTION quota_ext.quota_delete(tenant_id bigint, quota_id bigint) RETURNS void
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	IF quota_ext._row_delete($1, 'quota_ext.quotas', 'quota_id', $2::text, 'quota', NULL) IS NULL THEN
		-- a meter quota (its counter goes with it)
		PERFORM quota_ext._row_delete($1, 'quota_ext.meter_quotas', 'quota_id', $2::text, 'meter_quota',
			pg_catalog.format('quota %s does not exist', $2), action => 'quota_delete');
	ELSE
		-- a deleted tenant-wide monthly quota gives the tier default back
		PERFORM quota_ext._tier_quotas_sync($1);
	END IF;
END
$$;
COMMENT ON FUNCTION quota_ext.quota_delete(bigint, bigint) IS 'Remove a quota (its counter goes with it)';

-- ---------------------------------------------------------------------------
-- the hot path (src/consume.c)
-- ---------------------------------------------------------------------------

CREATE FUNCTION quota_ext.quota_consume(tenant_id bigint, model text, units bigint DEFAULT 1,
	idempotency_key text DEFAULT NULL, user_id bigint DEFAULT NULL, key_id bigint DEFAULT NULL,
	role text DEFAULT NULL, input_tokens bigint DEFAULT NULL, output_tokens bigint DEFAULT NULL,
	metadata jsonb DEFAULT NULL)
	RETURNS quota_ext.decision
	LANGUAGE C VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'quota_ext_quota_consume';
COMMENT ON FUNCTION quota_ext.quota_consume(bigint, text, bigint, text, bigint, bigint, text, bigint, bigint, jsonb) IS
	'Check policy, rate limits and every applicable quota as one unit; charge all or none; record usage';

CREATE FUNCTION quota_ext.quota_consume_or_raise(tenant_id bigint, model text, units bigint DEFAULT 1,
	idempotency_key text DEFAULT NULL, user_id bigint DEFAULT NULL, key_id bigint DEFAULT NULL,
	role text DEFAULT NULL, input_tokens bigint DEFAULT NULL, output_tokens bigint DEFAULT NULL,
	metadata jsonb DEFAULT NULL)
	RETURNS quota_ext.decision
	LANGUAGE C VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'quota_ext_quota_consume_or_raise';
COMMENT ON FUNCTION quota_ext.quota_consume_or_raise(bigint, text, bigint, text, bigint, bigint, text, bigint, bigint, jsonb) IS
	'quota_consume that raises on denial: 53400 for quotas and rate limits, 42501 for policy';

-- What quota_consume would answer, charging nothing and locking nothing
-- (src/check.c).
CREATE FUNCTION quota_ext.quota_check(tenant_id bigint, model text, units bigint DEFAULT 1,
	user_id bigint DEFAULT NULL, key_id bigint DEFAULT NULL, role text DEFAULT NULL,
	input_tokens bigint DEFAULT NULL, output_tokens bigint DEFAULT NULL)
	RETURNS quota_ext.decision
	LANGUAGE C VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'quota_ext_quota_check';
COMMENT ON FUNCTION quota_ext.quota_check(bigint, text, bigint, bigint, bigint, text, bigint, bigint) IS
	'The decision quota_consume would return now (policy, rate limits, every quota, money), without charging, writing or locking anything';

CREATE FUNCTION quota_ext.invoke(api_key text, model text, units bigint DEFAULT 1,
	idempotency_key text DEFAULT NULL, input_tokens bigint DEFAULT NULL,
	output_tokens bigint DEFAULT NULL, metadata jsonb DEFAULT NULL)
	RETURNS quota_ext.decision
	LANGUAGE C VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'quota_ext_invoke';
COMMENT ON FUNCTION quota_ext.invoke(text, text, bigint, text, bigint, bigint, jsonb) IS
	'authenticate + policy + rate limits + quotas + usage record in one call';

CREATE FUNCTION quota_ext.quota_reserve(tenant_id bigint, model text, estimate bigint,
	ttl interval DEFAULT '15 minutes', idempotency_key text DEFAULT NULL,
	user_id bigint DEFAULT NULL, key_id bigint DEFAULT NULL, role text DEFAULT NULL,
	input_tokens bigint DEFAULT NULL, output_tokens bigint DEFAULT NULL, metadata jsonb DEFAULT NULL)
	RETURNS quota_ext.decision
	LANGUAGE C VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'quota_ext_quota_reserve';
COMMENT ON FUNCTION quota_ext.quota_reserve(bigint, text, bigint, interval, text, bigint, bigint, text, bigint, bigint, jsonb) IS
	'Charge an estimate now (commit it quickly); settle or cancel it later; it expires after ttl';

CREATE FUNCTION quota_ext.quota_settle(tenant_id bigint, reservation_id bigint, actual bigint,
	input_tokens bigint DEFAULT NULL, output_tokens bigint DEFAULT NULL)
	RETURNS quota_ext.decision
	LANGUAGE C VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'quota_ext_quota_settle';
COMMENT ON FUNCTION quota_ext.quota_settle(bigint, bigint, bigint, bigint, bigint) IS
	'Replace a reservation''s estimate by the actual amount (see doc/reference.md for the rule beyond the estimate)';

CREATE FUNCTION quota_ext.quota_cancel(tenant_id bigint, reservation_id bigint)
	RETURNS quota_ext.decision
	LANGUAGE C VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'quota_ext_quota_cancel';
COMMENT ON FUNCTION quota_ext.quota_cancel(bigint, bigint) IS
	'Release a reservation''s whole estimate';

CREATE FUNCTION quota_ext.quota_refund(tenant_id bigint, usage_id bigint)
	RETURNS quota_ext.decision
	LANGUAGE C VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'quota_ext_quota_refund';
COMMENT ON FUNCTION quota_ext.quota_refund(bigint, bigint) IS
	'Give back a committed consumption, once';

CREATE FUNCTION quota_ext.quota_expire_reservations(batch integer DEFAULT 1000) RETURNS integer
	LANGUAGE C VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'quota_ext_quota_expire_reservations';
COMMENT ON FUNCTION quota_ext.quota_expire_reservations(integer) IS
	'Release reservations past their expiry (for pg_cron); returns how many';

-- ---------------------------------------------------------------------------
-- reading quotas
-- ---------------------------------------------------------------------------

-- quota_status's work; with_requests = false leaves requests NULL and reads
-- no ledger (tenant_summary, which promises not to scan it).  The quotas of
-- model calls first, then the meter quotas (meter_status, 32_meters.sql)
-- unless a model is asked for: metric units (a counter: used in the period)
-- or gauge (the level), with the meter's name and kind; requests = the
-- meter's ledger rows in the period and scope.
CREATE FUNCTION quota_ext._quota_status(tenant_id bigint, model text, user_id bigint, key_id bigint,
	with_requests boolean)
	RETURNS TABLE (quota_id bigint, period text, metric text, model_name text,
	               scope_user_id bigint, scope_key_id bigint, "limit" bigint, used bigint, remaining bigint,
	               resets_at timestamptz, on_exceed text, origin text, currency text,
	               limit_cost numeric, used_cost numeric, remaining_cost numeric,
	               period_start timestamptz, requests bigint, meter text, meter_kind text)
	LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
	mid bigint;
	ms record;
	n bigint;
BEGIN
	IF _quota_status.tenant_id IS NULL THEN PERFORM quota_ext._null_arg('tenant_id'); END IF;
	PERFORM quota_ext._check_tenant_access(_quota_status.tenant_id);
	PERFORM quota_ext._tenant_exists(_quota_status.tenant_id);
	IF _quota_status.model IS NOT NULL THEN
		mid := quota_ext._model_for(_quota_status.tenant_id, _quota_status.model);
	END IF;
	RETURN QUERY
	SELECT q.quota_id, q.period_label, q.metric, m.name, q.user_id, q.key_id, q.max_units,
	       s.used, greatest(q.max_units - s.used, 0),
	       CASE WHEN q.period = 'lifetime' THEN NULL ELSE b.period_end END,
	       q.on_exceed, q.origin, q.currency::text,
	       CASE WHEN q.metric = 'cost' THEN round(q.max_units / 1000000.0, 6) END,
	       CASE WHEN q.metric = 'cost' THEN round(s.used / 1000000.0, 6) END,
	       CASE WHEN q.metric = 'cost' THEN round(greatest(q.max_units - s.used, 0) / 1000000.0, 6) END,
	       CASE WHEN q.period = 'lifetime' THEN NULL ELSE b.period_start END,
	       -- calls admitted in the period and scope, net of refunds, from the
	       -- ledger since the period start (its (tenant_id, created_at)
	       -- index: created_at >= occurred_at).  Every per-tenant table names
	       -- the tenant argument itself, not q.tenant_id: then Citus routes
	       -- the whole statement to the tenant's shards (doc/scaling.md)
	       CASE WHEN _quota_status.with_requests THEN (SELECT coalesce(sum(u.calls), 0)::bigint FROM quota_ext.usage u
	                   WHERE u.tenant_id = _quota_status.tenant_id
	                     AND u.created_at >= b.period_start
	                     AND u.occurred_at >= b.period_start AND u.occurred_at < b.period_end
	                     AND (q.model_id IS NULL OR u.model_id = q.model_id)
	                     AND (q.user_id IS NULL OR u.user_id = q.user_id)
	                     AND (q.key_id IS NULL OR u.key_id = q.key_id)) END,
	       NULL::text, NULL::text
	  FROM quota_ext.quotas q
	  JOIN quota_ext.tenants t ON t.tenant_id = q.tenant_id
	  LEFT JOIN quota_ext.models m ON m.model_id = q.model_id
	  CROSS JOIN LATERAL quota_ext.period_bounds(q.period, t.timezone, clock_timestamp()) b
	  CROSS JOIN LATERAL (SELECT coalesce(sum(c.used) FILTER (WHERE c.period_start = b.period_start), 0)::bigint AS used
	                        FROM quota_ext.quota_counters c
	                       WHERE c.tenant_id = _quota_status.tenant_id AND c.quota_id = q.quota_id) s
	 WHERE q.tenant_id = _quota_status.tenant_id
	   AND (_quota_status.model IS NULL OR q.model_id IS NULL OR q.model_id = mid)
	   AND (_quota_status.user_id IS NULL OR q.user_id IS NULL OR q.user_id = _quota_status.user_id)
	   AND (_quota_status.key_id IS NULL OR q.key_id IS NULL OR q.key_id = _quota_status.key_id)
	 ORDER BY q.quota_id;
	IF _quota_status.model IS NOT NULL THEN
		RETURN;
	END IF;
	-- meter_status first, then each counter quota's ledger count in a
	-- statement of its own: in one statement with the ledger's subquery,
	-- Citus pushed meter_status down to the tenant's shard, where its own
	-- reads are distributed queries it refuses to run (doc/scaling.md)
	FOR ms IN SELECT x.* FROM quota_ext.meter_status(_quota_status.tenant_id) x
	           WHERE x.quota_id IS NOT NULL
	             AND (_quota_status.user_id IS NULL OR x.scope_user_id IS NULL
	                  OR x.scope_user_id = _quota_status.user_id)
	           ORDER BY x.quota_id
	LOOP
		n := NULL;
		IF _quota_status.with_requests AND ms.kind = 'counter' THEN
			SELECT count(*) INTO n
			  FROM quota_ext.meter_usage u JOIN quota_ext.meters mt ON mt.meter_id = u.meter_id
			 WHERE u.tenant_id = _quota_status.tenant_id AND mt.name = ms.meter
			   AND (ms.period_start IS NULL OR u.occurred_at >= ms.period_start)
			   AND (ms.resets_at IS NULL OR u.occurred_at < ms.resets_at)
			   AND (ms.scope_user_id IS NULL OR u.user_id = ms.scope_user_id);
		END IF;
		RETURN QUERY SELECT ms.quota_id, ms.period,
		       CASE WHEN ms.kind = 'gauge' THEN 'gauge' ELSE 'units' END, NULL::text,
		       ms.scope_user_id, NULL::bigint, ms."limit", ms.used, ms.remaining, ms.resets_at,
		       ms.on_exceed, 'tenant'::text, NULL::text, NULL::numeric, NULL::numeric,
		       NULL::numeric, ms.period_start, n, ms.meter, ms.kind;
	END LOOP;
END
$$;
COMMENT ON FUNCTION quota_ext._quota_status(bigint, text, bigint, bigint, boolean) IS
	'Internal: quota_status, with or without the request counts';

CREATE FUNCTION quota_ext.quota_status(tenant_id bigint, model text DEFAULT NULL,
	user_id bigint DEFAULT NULL, key_id bigint DEFAULT NULL)
	RETURNS TABLE (quota_id bigint, period text, metric text, model_name text,
	               scope_user_id bigint, scope_key_id bigint, "limit" bigint, used bigint, remaining bigint,
	               resets_at timestamptz, on_exceed text, origin text, currency text,
	               limit_cost numeric, used_cost numeric, remaining_cost numeric,
	               period_start timestamptz, requests bigint, meter text, meter_kind text)
	LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$ SELECT * FROM quota_ext._quota_status($1, $2, $3, $4, true) $$;
COMMENT ON FUNCTION quota_ext.quota_status(bigint, text, bigint, bigint) IS
	'Every quota of a tenant (or those that apply to a model, user, key) with used, remaining, period_start and resets_at now (cost quotas: in micro-units, and as money in limit_cost, used_cost, remaining_cost) and the requests admitted in the period; then its meter quotas (meter, meter_kind; a gauge''s used is its level) unless a model is asked for';

-- tenant_summary never scans the ledger beyond the rollup watermark: whole
-- days come from quota_ext.usage_daily (usage_rollup(), 50_metering.sql)
-- and the rows written since the last rollup from the ledger's
-- (tenant_id, created_at) index.  Its cost depends on the days in the month
-- and the rollup lag, not on the number of usage rows.
CREATE FUNCTION quota_ext.tenant_summary(tenant_id bigint) RETURNS jsonb
	LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
	t quota_ext.tenants;
	today date;
	month_first date;
	usage jsonb;
	policies_j jsonb;
	quotas_j jsonb;
BEGIN
	IF tenant_summary.tenant_id IS NULL THEN PERFORM quota_ext._null_arg('tenant_id'); END IF;
	PERFORM quota_ext._check_tenant_access(tenant_summary.tenant_id);
	SELECT * INTO t FROM quota_ext.tenants WHERE tenant_id = tenant_summary.tenant_id;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'tenant % does not exist', tenant_summary.tenant_id USING ERRCODE = 'undefined_object';
	END IF;
	today := (clock_timestamp() AT TIME ZONE t.timezone)::date;
	month_first := date_trunc('month', today)::date;
	WITH d AS MATERIALIZED (
		SELECT * FROM quota_ext._usage_days(t.tenant_id, month_first, today))
	SELECT jsonb_build_object(
	           'calls_today', coalesce((SELECT sum(d.calls) FROM d WHERE d.day = today), 0),
	           'units_today', coalesce((SELECT sum(d.units) FROM d WHERE d.day = today), 0),
	           'calls_this_month', coalesce((SELECT sum(d.calls) FROM d), 0),
	           'units_this_month', coalesce((SELECT sum(d.units) FROM d), 0),
	           'input_tokens_this_month', coalesce((SELECT sum(d.input_tokens) FROM d), 0),
	           'output_tokens_this_month', coalesce((SELECT sum(d.output_tokens) FROM d), 0),
	           'cost_today', coalesce((SELECT jsonb_object_agg(c.currency, c.cost)
	                                     FROM (SELECT d.currency, sum(d.cost) AS cost FROM d
	                                            WHERE d.day = today AND d.currency <> 'XXX'
	                                            GROUP BY d.currency) c), '{}'),
	           'cost_this_month', coalesce((SELECT jsonb_object_agg(c.currency, c.cost)
	                                          FROM (SELECT d.currency, sum(d.cost) AS cost FROM d
	                                                 WHERE d.currency <> 'XXX'
	                                                 GROUP BY d.currency) c), '{}'))
	  INTO usage;
	-- policies and quotas in statements of their own: on Citus a statement
	-- naming one tenant's policies is pushed whole to its worker, and
	-- _quota_status, called there, could not route its own statements
	SELECT jsonb_agg(jsonb_build_object('model', p.model_pattern,
	                 'allowed', p.allowed, 'roles_allowed', p.roles_allowed)
	                 ORDER BY p.model_pattern)
	  INTO policies_j
	  FROM quota_ext.policies p WHERE p.tenant_id = t.tenant_id;
	SELECT jsonb_agg(jsonb_strip_nulls(jsonb_build_object('quota_id', s.quota_id,
	                 'period', s.period, 'model', s.model_name, 'metric', s.metric,
	                 'limit', s."limit", 'used', s.used, 'remaining', s.remaining,
	                 'resets_at', s.resets_at, 'on_exceed', s.on_exceed,
	                 'currency', s.currency, 'limit_cost', s.limit_cost,
	                 'used_cost', s.used_cost, 'remaining_cost', s.remaining_cost,
	                 'meter', s.meter, 'meter_kind', s.meter_kind,
	                 'period_start', CASE WHEN s.meter IS NOT NULL THEN s.period_start END))
	                 ORDER BY s.meter IS NOT NULL, s.quota_id)
	  INTO quotas_j
	  FROM quota_ext._quota_status(t.tenant_id, NULL, NULL, NULL, false) s;
	RETURN jsonb_build_object(
		'tenant', jsonb_build_object('tenant_id', t.tenant_id, 'name', t.name, 'tier', t.tier,
		                             'status', t.status, 'timezone', t.timezone,
		                             'features', t.features, 'created_at', t.created_at),
		'policies', coalesce(policies_j, '[]'),
		'quotas', coalesce(quotas_j, '[]'),
		'usage', usage);
END
$$;
COMMENT ON FUNCTION quota_ext.tenant_summary(bigint) IS
	'A tenant at a glance: tenant, policies, quotas with used/remaining/resets_at, usage and cost today and this month (from rollups plus the ledger tail)';

-- ---------------------------------------------------------------------------
-- security of this section
-- ---------------------------------------------------------------------------

SELECT quota_ext._secure_tenant_table('quota_ext.quotas');
SELECT quota_ext._secure_tenant_table('quota_ext.quota_counters');
SELECT quota_ext._secure_tenant_table('quota_ext.usage');
-- the default partition (like the monthly ones) is read through the parent
SELECT quota_ext._secure_tenant_table('quota_ext.usage_default', app_select => false);
SELECT quota_ext._secure_tenant_table('quota_ext.idempotency_keys');
SELECT quota_ext._secure_tenant_table('quota_ext.reservations');
SELECT quota_ext._secure_tenant_table('quota_ext.refunds');
SELECT quota_ext._secure_tenant_table('quota_ext.quota_events');

GRANT EXECUTE ON FUNCTION
	quota_ext.period_bounds(text, text, timestamptz),
	quota_ext.quota_consume(bigint, text, bigint, text, bigint, bigint, text, bigint, bigint, jsonb),
	quota_ext.quota_consume_or_raise(bigint, text, bigint, text, bigint, bigint, text, bigint, bigint, jsonb),
	quota_ext.quota_check(bigint, text, bigint, bigint, bigint, text, bigint, bigint),
	quota_ext.invoke(text, text, bigint, text, bigint, bigint, jsonb),
	quota_ext.quota_reserve(bigint, text, bigint, interval, text, bigint, bigint, text, bigint, bigint, jsonb),
	quota_ext.quota_settle(bigint, bigint, bigint, bigint, bigint),
	quota_ext.quota_cancel(bigint, bigint),
	quota_ext.quota_refund(bigint, bigint),
	quota_ext.quota_status(bigint, text, bigint, bigint),
	quota_ext.tenant_summary(bigint)
	TO quota_ext_app;
GRANT EXECUTE ON FUNCTION
	quota_ext.quota_set(bigint, text, bigint, text, text, bigint, text, bigint, bigint, integer[], numeric, text, integer, text, integer, integer),
	quota_ext.quota_delete(bigint, bigint),
	quota_ext.quota_expire_reservations(integer)
	TO quota_ext_admin;
