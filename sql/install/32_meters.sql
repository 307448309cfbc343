
-- ---------------------------------------------------------------------------
-- 32 meters: quotas on named meters, counters and gauges (issue 17)
-- ---------------------------------------------------------------------------
-- A meter is a global name (like a global model) that an admin creates with
-- meter_create(): 'gpu_hours', 'storage_gb', 'services'.  Its name is the
-- same for every tenant; its quotas, counters, levels and ledger rows are
-- per tenant (tenant_id first, row-level security, routable by tenant_id).
-- A counter meter counts what meter_consume() charges, per period; a gauge
-- is a level (storage in use, seats) that gauge_adjust() moves up and down,
-- never below 0, and never resets.  The built-in gauge 'users' follows
-- user_create()/user_remove().
--
-- Nothing here is on the model-call path: quota_consume/invoke read
-- quota_ext.quotas only, so a tenant without meter quotas pays nothing for
-- them (doc/metering.md §7).  meter_consume locks the counters of every
-- meter quota it charges in quota_id order, checks them all, then charges
-- them all or none; gauge_adjust locks the tenant's level row of the gauge.
-- A charge that moves a meter quota's count across one of its thresholds
-- (percent of the limit) or its soft limit emits the event a model-call
-- quota would (quota_events, NOTIFY quota_ext_events, the outbox), once
-- per quota, period and threshold (_meter_event).

CREATE SEQUENCE quota_ext.meter_id_seq;

CREATE TABLE quota_ext.meters (
	meter_id    bigint PRIMARY KEY DEFAULT pg_catalog.nextval('quota_ext.meter_id_seq'),
	name        text NOT NULL UNIQUE
	            CHECK (name OPERATOR(pg_catalog.~) '^[a-z][a-z0-9_.-]{0,62}$'),
	unit        text CHECK (pg_catalog.length(unit) OPERATOR(pg_catalog.<=) 64),
	kind        text NOT NULL
	            CHECK (kind OPERATOR(pg_catalog.=) ANY (ARRAY['counter', 'gauge'])),
	builtin     boolean NOT NULL DEFAULT false,
	created_at  timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE quota_ext.meters IS
	'Named meters (global, created by quota_ext_admin): counters charged by meter_consume, gauges moved by gauge_adjust';
-- built-in meters take ids below 1, outside the sequence (a sequence reset
-- or a restore cannot collide with them), and no install time (CREATE
-- EXTENSION makes them again on restore: the same row)
INSERT INTO quota_ext.meters (meter_id, name, unit, kind, builtin, created_at)
VALUES (0, 'users', 'users', 'gauge', true, '-infinity');

-- A quota on a meter: tenant-wide or one user's; a gauge's quota is
-- tenant-wide and has period 'lifetime'.  Quota ids come from the same
-- sequence as quota_ext.quotas, so a quota_id names one quota of either.
CREATE TABLE quota_ext.meter_quotas (
	tenant_id      bigint NOT NULL REFERENCES quota_ext.tenants (tenant_id),
	quota_id       bigint NOT NULL DEFAULT pg_catalog.nextval('quota_ext.quota_id_seq'),
	meter_id       bigint NOT NULL REFERENCES quota_ext.meters (meter_id),
	period         text NOT NULL
	               CHECK (period OPERATOR(pg_catalog.=) ANY
	                      (ARRAY['minute', 'hour', 'day', 'week', 'month', 'year', 'lifetime'])),
	period_label   text NOT NULL,
	user_id        bigint,
	max_units      bigint NOT NULL CHECK (max_units OPERATOR(pg_catalog.>=) 0),
	soft_limit     bigint CHECK (soft_limit OPERATOR(pg_catalog.>=) 0),
	on_exceed      text NOT NULL DEFAULT 'block'
	               CHECK (on_exceed OPERATOR(pg_catalog.=) ANY (ARRAY['block', 'alert', 'overage', 'throttle'])),
	-- percentages of max_units whose crossing is an event, as in quotas
	thresholds     integer[] NOT NULL DEFAULT '{80,100}',
	-- on_exceed 'throttle': past the limit, calls pass at this rate (GCRA)
	throttle_per_minute integer CHECK (throttle_per_minute OPERATOR(pg_catalog.>) 0),
	throttle_burst integer CHECK (throttle_burst OPERATOR(pg_catalog.>=) 0),
	CHECK ((on_exceed OPERATOR(pg_catalog.=) 'throttle') OPERATOR(pg_catalog.=) (throttle_per_minute IS NOT NULL)),
	created_at     timestamptz NOT NULL DEFAULT pg_catalog.now(),
	updated_at     timestamptz NOT NULL DEFAULT pg_catalog.now(),
	PRIMARY KEY (tenant_id, quota_id),
	UNIQUE NULLS NOT DISTINCT (tenant_id, meter_id, period, user_id),
	FOREIGN KEY (tenant_id, user_id) REFERENCES quota_ext.users (tenant_id, user_id)
);
COMMENT ON TABLE quota_ext.meter_quotas IS
	'Quotas on meters: several per scope (one per meter and period), blocking, alerting, overage or throttled';

-- The counter of a counter meter's quota in its current period, and the
-- GCRA state of a throttled quota (ns, 0 = none yet).
CREATE TABLE quota_ext.meter_counters (
	tenant_id     bigint NOT NULL,
	quota_id      bigint NOT NULL,
	period_start  timestamptz NOT NULL DEFAULT '-infinity',
	used          bigint NOT NULL DEFAULT 0 CHECK (used OPERATOR(pg_catalog.>=) 0),
	tat_ns        bigint NOT NULL DEFAULT 0,
	PRIMARY KEY (tenant_id, quota_id),
	FOREIGN KEY (tenant_id, quota_id) REFERENCES quota_ext.meter_quotas (tenant_id, quota_id)
		ON DELETE CASCADE
);
COMMENT ON TABLE quota_ext.meter_counters IS
	'Units used in the current period of each counter meter quota; GCRA state of throttled ones';

-- A tenant's level of a gauge: the sum of its meter_usage rows, never < 0.
CREATE TABLE quota_ext.meter_levels (
	tenant_id  bigint NOT NULL REFERENCES quota_ext.tenants (tenant_id),
	meter_id   bigint NOT NULL REFERENCES quota_ext.meters (meter_id),
	level      bigint NOT NULL DEFAULT 0 CHECK (level OPERATOR(pg_catalog.>=) 0),
	PRIMARY KEY (tenant_id, meter_id)
);
COMMENT ON TABLE quota_ext.meter_levels IS 'Each tenant''s level of each gauge (never below 0)';

-- The meters' ledger: one row per admitted meter_consume (amount >= 0) or
-- gauge move (signed).  Ids from the usage ledger's sequence.  One row per
-- idempotency key (the key and its decision live in idempotency_keys, op
-- 'meter_consume' or 'gauge_adjust').
CREATE TABLE quota_ext.meter_usage (
	tenant_id       bigint NOT NULL REFERENCES quota_ext.tenants (tenant_id),
	usage_id        bigint NOT NULL DEFAULT pg_catalog.nextval('quota_ext.usage_id_seq'),
	meter_id        bigint NOT NULL,
	created_at      timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
	occurred_at     timestamptz NOT NULL,
	user_id         bigint,
	key_id          bigint,
	amount          bigint NOT NULL,
	overage         bigint NOT NULL DEFAULT 0,
	idempotency_key text,
	metadata        jsonb CHECK (pg_catalog.octet_length(metadata::pg_catalog.text) OPERATOR(pg_catalog.<=) 1024),
	PRIMARY KEY (tenant_id, usage_id),
	UNIQUE (tenant_id, idempotency_key)
);
CREATE INDEX meter_usage_meter ON quota_ext.meter_usage (tenant_id, meter_id, occurred_at);
COMMENT ON TABLE quota_ext.meter_usage IS
	'Meter ledger: amounts charged to counter meters and signed moves of gauges; overage = units past a non-blocking limit';

-- ---------------------------------------------------------------------------
-- administration
-- ---------------------------------------------------------------------------

CREATE FUNCTION quota_ext.meter_create(name text, unit text DEFAULT NULL, kind text DEFAULT 'counter')
	RETURNS bigint
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
	m quota_ext.meters;
BEGIN
	PERFORM quota_ext._admin_only('meter_create');
	IF meter_create.name IS NULL THEN PERFORM quota_ext._null_arg('name'); END IF;
	IF meter_create.kind IS NULL THEN PERFORM quota_ext._null_arg('kind'); END IF;
	IF meter_create.name !~ '^[a-z][a-z0-9_.-]{0,62}$' THEN
		RAISE EXCEPTION 'invalid meter name "%"', quota_ext._quote_input(meter_create.name)
			USING ERRCODE = 'invalid_parameter_value',
			      HINT = 'A meter name is 1 to 63 lower-case letters, digits, _ . or -, starting with a letter.';
	END IF;
	IF meter_create.kind NOT IN ('counter', 'gauge') THEN
		RAISE EXCEPTION 'invalid meter kind "%"', quota_ext._quote_input(meter_create.kind)
			USING ERRCODE = 'invalid_parameter_value', HINT = 'Use counter or gauge.';
	END IF;
	IF meter_create.unit IS NOT NULL THEN
		PERFORM quota_ext._check_label('unit', meter_create.unit, 64);
	END IF;
	BEGIN
		INSERT INTO quota_ext.meters (name, unit, kind)
		VALUES (meter_create.name, meter_create.unit, meter_create.kind) RETURNING * INTO m;
	EXCEPTION WHEN unique_violation THEN
		RAISE EXCEPTION 'meter "%" already exists', meter_create.name USING ERRCODE = 'unique_violation';
	END;
	PERFORM quota_ext._audit(0, 'meter_create', 'meter', m.meter_id::text, NULL, to_jsonb(m));
	RETURN m.meter_id;
END
$$;
COMMENT ON FUNCTION quota_ext.meter_create(text, text, text) IS
	'Create a global meter (admin): counter (charged per period by meter_consume) or gauge (a level moved by gauge_adjust); returns its id';

-- The tenant and meter of a call: the caller's access to the tenant checked
-- (42501/42704 as everywhere), 42704 when the tenant or the meter (unless
-- NULL and not needed) does not exist.  The tenant row is not locked: a
-- call's exactness comes from its counter or level rows.
CREATE FUNCTION quota_ext._meter_lookup(tenant_id bigint, meter text, need_meter boolean DEFAULT true,
	OUT t quota_ext.tenants, OUT m quota_ext.meters)
	LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	IF _meter_lookup.tenant_id IS NULL THEN PERFORM quota_ext._null_arg('tenant_id'); END IF;
	IF _meter_lookup.need_meter AND _meter_lookup.meter IS NULL THEN PERFORM quota_ext._null_arg('meter'); END IF;
	PERFORM quota_ext._check_tenant_access(_meter_lookup.tenant_id);
	SELECT * INTO t FROM quota_ext.tenants tt WHERE tt.tenant_id OPERATOR(pg_catalog.=) _meter_lookup.tenant_id;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'tenant % does not exist', _meter_lookup.tenant_id USING ERRCODE = 'undefined_object';
	END IF;
	IF _meter_lookup.need_meter THEN
		SELECT * INTO m FROM quota_ext.meters mt WHERE mt.name OPERATOR(pg_catalog.=) _meter_lookup.meter;
		IF NOT FOUND THEN
			RAISE EXCEPTION 'meter "%" does not exist', quota_ext._quote_input(_meter_lookup.meter)
				USING ERRCODE = 'undefined_object', HINT = 'Create it with quota_ext.meter_create().';
		END IF;
	END IF;
END
$$;
COMMENT ON FUNCTION quota_ext._meter_lookup(bigint, text, boolean) IS
	'Internal: the tenant (access checked) and the meter of a meter call; 42704 when either does not exist';

-- The user and key a meter call acts as: src/context.c's
-- QuotaIdentityResolve, the rule of quota_consume, for the SQL callers.  The
-- authenticated caller's by default; under a context set from an API key,
-- explicit arguments must name that same user and key (42501) — a key
-- cannot charge another user's quota or escape its own; admin callers (no
-- context, or set_tenant) may name any.
CREATE FUNCTION quota_ext._identity_resolve(tenant_id bigint, user_id bigint, key_id bigint,
	OUT res_user_id bigint, OUT res_key_id bigint)
	LANGUAGE C STABLE PARALLEL RESTRICTED AS 'MODULE_PATHNAME', 'quota_ext_identity_resolve';
COMMENT ON FUNCTION quota_ext._identity_resolve(bigint, bigint, bigint) IS
	'Internal: the user and key a call acts as: the context''s by default; a key-authenticated context cannot name others (42501)';

-- At most 10^15 per call either way, like units and tokens (src/args.c,
-- check_bounded); NULL passes.
CREATE FUNCTION quota_ext._check_bounded(v bigint, what text) RETURNS void
	LANGUAGE C IMMUTABLE PARALLEL SAFE AS 'MODULE_PATHNAME', 'quota_ext_check_bounded';
COMMENT ON FUNCTION quota_ext._check_bounded(bigint, text) IS 'Internal: 22003 when |v| > 10^15 (the bound of one call)';

-- quota_set(meter => ...)'s work: the caller (quota_set) has locked the
-- tenant and checked period, limit, soft limit, on_exceed, throttle (the
-- burst to store), thresholds and the user.
CREATE FUNCTION quota_ext._meter_quota_set(tenant_id bigint, meter text, period text, period_label text,
	max_units bigint, on_exceed text, user_id bigint, throttle_per_minute integer, throttle_burst integer,
	soft_limit bigint, thresholds integer[])
	RETURNS bigint
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
	m quota_ext.meters := (quota_ext._meter_lookup(_meter_quota_set.tenant_id, _meter_quota_set.meter)).m;
	old quota_ext.meter_quotas;
	new quota_ext.meter_quotas;
BEGIN
	PERFORM quota_ext._check_user(_meter_quota_set.tenant_id, _meter_quota_set.user_id);
	IF m.kind = 'gauge' THEN
		IF _meter_quota_set.period <> 'lifetime' THEN
			RAISE EXCEPTION 'a gauge never resets: its quota has period lifetime'
				USING ERRCODE = 'invalid_parameter_value', HINT = 'Use period => ''lifetime''.';
		END IF;
		IF _meter_quota_set.user_id IS NOT NULL THEN
			RAISE EXCEPTION 'a gauge''s quota is tenant-wide' USING ERRCODE = 'invalid_parameter_value';
		END IF;
		IF _meter_quota_set.on_exceed NOT IN ('block', 'alert') THEN
			RAISE EXCEPTION 'a gauge''s quota blocks or alerts' USING ERRCODE = 'invalid_parameter_value',
				HINT = 'Use on_exceed => ''block'' or ''alert''.';
		END IF;
	END IF;
	SELECT * INTO old FROM quota_ext.meter_quotas q
	 WHERE q.tenant_id = _meter_quota_set.tenant_id AND q.meter_id = m.meter_id
	   AND q.period = _meter_quota_set.period AND q.user_id IS NOT DISTINCT FROM _meter_quota_set.user_id
	 FOR UPDATE;
	IF old.quota_id IS NULL THEN
		INSERT INTO quota_ext.meter_quotas (tenant_id, meter_id, period, period_label, user_id, max_units,
		                                    soft_limit, on_exceed, thresholds, throttle_per_minute,
		                                    throttle_burst)
		VALUES (_meter_quota_set.tenant_id, m.meter_id, _meter_quota_set.period, _meter_quota_set.period_label,
		        _meter_quota_set.user_id, _meter_quota_set.max_units, _meter_quota_set.soft_limit,
		        _meter_quota_set.on_exceed, _meter_quota_set.thresholds, _meter_quota_set.throttle_per_minute,
		        _meter_quota_set.throttle_burst)
		RETURNING * INTO new;
		IF m.kind = 'counter' THEN
			INSERT INTO quota_ext.meter_counters (tenant_id, quota_id) VALUES (new.tenant_id, new.quota_id);
		END IF;
	ELSE
		UPDATE quota_ext.meter_quotas q
		   SET period_label = _meter_quota_set.period_label, max_units = _meter_quota_set.max_units,
		       soft_limit = _meter_quota_set.soft_limit, on_exceed = _meter_quota_set.on_exceed,
		       thresholds = _meter_quota_set.thresholds,
		       throttle_per_minute = _meter_quota_set.throttle_per_minute,
		       throttle_burst = _meter_quota_set.throttle_burst,
		       updated_at = now()
		 WHERE q.tenant_id = old.tenant_id AND q.quota_id = old.quota_id
		RETURNING * INTO new;
	END IF;
	PERFORM quota_ext._audit(new.tenant_id, 'quota_set', 'meter_quota', new.quota_id::text,
	                         to_jsonb(old), to_jsonb(new) || jsonb_build_object('meter', m.name));
	RETURN new.quota_id;
END
$$;
COMMENT ON FUNCTION quota_ext._meter_quota_set(bigint, text, text, text, bigint, text, bigint, integer, integer, bigint, integer[]) IS
	'Internal: quota_set(meter => ...): create or change the quota of a meter, period and scope';

-- ---------------------------------------------------------------------------
-- charging
-- ---------------------------------------------------------------------------


-- Claim an idempotency key for a meter call (one row per tenant and key in
-- idempotency_keys, shared with quota_consume).  NULL when there is no key
-- or the key is new
-- (the caller then stores its decision with _meter_idem_store); the stored
-- decision, replayed, when the key was used by the same request; 22023
-- when it was used by another.
CREATE FUNCTION quota_ext._meter_idem_claim(tenant_id bigint, idempotency_key text, op text,
	meter text, amount bigint) RETURNS quota_ext.decision
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
	k quota_ext.idempotency_keys;
	d quota_ext.decision;
BEGIN
	IF _meter_idem_claim.idempotency_key IS NULL THEN
		RETURN NULL;
	END IF;
	IF pg_catalog.length(_meter_idem_claim.idempotency_key) > 255 THEN
		RAISE EXCEPTION 'idempotency_key must be at most 255 characters' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	INSERT INTO quota_ext.idempotency_keys (tenant_id, idempotency_key, op, model, units)
	VALUES (_meter_idem_claim.tenant_id, _meter_idem_claim.idempotency_key, _meter_idem_claim.op,
	        _meter_idem_claim.meter, _meter_idem_claim.amount)
	ON CONFLICT (tenant_id, idempotency_key) DO NOTHING;
	IF FOUND THEN
		RETURN NULL;
	END IF;
	SELECT * INTO k FROM quota_ext.idempotency_keys ik
	 WHERE ik.tenant_id = _meter_idem_claim.tenant_id AND ik.idempotency_key = _meter_idem_claim.idempotency_key;
	IF k.op <> _meter_idem_claim.op OR k.model <> _meter_idem_claim.meter OR k.units <> _meter_idem_claim.amount THEN
		RAISE EXCEPTION 'idempotency key "%" was used with other parameters',
		                quota_ext._quote_input(_meter_idem_claim.idempotency_key)
			USING ERRCODE = 'invalid_parameter_value', HINT = 'Use a new key for a different request.';
	END IF;
	d := ROW(k.allowed, k.denied_by, k.quota_id, k.period, k."limit", k.remaining, k.resets_at,
	         k.retry_after, k.usage_id, NULL, true, NULL, NULL, NULL, k.denied_metric,
	         k.tenant_id, NULL, NULL, k.overage);
	RETURN d;
END
$$;
COMMENT ON FUNCTION quota_ext._meter_idem_claim(bigint, text, text, text, bigint) IS
	'Internal: claim an idempotency key for meter_consume/gauge_adjust, or the decision it got';

-- ... and store the decision under it (no key: nothing to store); returns d.
CREATE FUNCTION quota_ext._meter_idem_store(tenant_id bigint, idempotency_key text, d quota_ext.decision)
	RETURNS quota_ext.decision
	LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
	UPDATE quota_ext.idempotency_keys k
	   SET allowed = ($3).allowed, denied_by = ($3).denied_by, quota_id = ($3).quota_id,
	       period = ($3).period, "limit" = ($3)."limit", remaining = ($3).remaining,
	       resets_at = ($3).resets_at, retry_after = ($3).retry_after, usage_id = ($3).usage_id,
	       denied_metric = ($3).denied_metric, overage = ($3).overage
	 WHERE k.tenant_id OPERATOR(pg_catalog.=) $1 AND k.idempotency_key OPERATOR(pg_catalog.=) $2;
	SELECT $3;
$$;
COMMENT ON FUNCTION quota_ext._meter_idem_store(bigint, text, quota_ext.decision) IS
	'Internal: store the decision of a meter call under its idempotency key';

-- An allowed decision of a meter call, not replayed, with its tenant, user
-- and key; the caller fills in the rest.
CREATE FUNCTION quota_ext._meter_decision(tenant_id bigint, user_id bigint, key_id bigint)
	RETURNS quota_ext.decision
	LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
	SELECT ROW(true, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, false, NULL, NULL, NULL, NULL,
	           $1, $2, $3, 0)::quota_ext.decision
$$;
COMMENT ON FUNCTION quota_ext._meter_decision(bigint, bigint, bigint) IS
	'Internal: an allowed decision of a meter call for a tenant, user and key (overage 0)';

-- Threshold and soft-limit events of meter quotas: what src/events.c does
-- for model-call quotas, in the same table, channel and outbox, so a
-- consumer sees no difference between the two kinds.  A charge that moves
-- a quota's period count from old_used (below) to new_used (at or above) a
-- mark crosses it: thresholds[i] percent of max_units, or the soft limit.
-- Listed in the order src/events.c emits them (thresholds as given, then
-- the soft limit); numeric arithmetic: max_units * 1000 may pass bigint.
CREATE FUNCTION quota_ext._meter_crossings(old_used bigint, new_used bigint, max_units bigint,
	soft_limit bigint, thresholds integer[])
	RETURNS TABLE (kind text, threshold integer, "limit" bigint)
	LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
	SELECT x.kind, x.threshold, x."limit"
	  FROM (SELECT 'threshold'::text AS kind, th.pct AS threshold, $3 AS "limit", th.ord
	          FROM unnest($5) WITH ORDINALITY AS th (pct, ord)
	         WHERE $1::numeric * 100 < $3::numeric * th.pct AND $2::numeric * 100 >= $3::numeric * th.pct
	        UNION ALL
	        SELECT 'soft_limit', 0, $4, 1000
	         WHERE $1 < $4 AND $2 >= $4) x
	 ORDER BY x.ord
$$;
COMMENT ON FUNCTION quota_ext._meter_crossings(bigint, bigint, bigint, bigint, integer[]) IS
	'Internal: the thresholds (percent of max_units) and soft limit that a meter quota''s count crosses going from old_used to new_used';

-- One crossing of a meter quota, emitted at most once per quota, period
-- (period_start; -infinity for a gauge's lifetime quota), kind and
-- threshold: the row of quota_events (its unique key: a concurrent or
-- later crossing of the same mark in the period inserts nothing, like
-- src/events.c's INSERT ... ON CONFLICT DO NOTHING), then NOTIFY
-- quota_ext_events with the same ids-only payload and the outbox event
-- quota.threshold or quota.soft_limit with the payload of src/events.c's
-- plus the meter's name.  All in the caller's transaction: a rolled-back
-- charge emits nothing.
CREATE FUNCTION quota_ext._meter_event(tenant_id bigint, quota_id bigint, meter_id bigint,
	period_start timestamptz, kind text, threshold integer, used bigint, "limit" bigint) RETURNS void
	LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
	id bigint;
	nm text;
BEGIN
	INSERT INTO quota_ext.quota_events (tenant_id, quota_id, period_start, kind, threshold, used, "limit")
	VALUES (_meter_event.tenant_id, _meter_event.quota_id, _meter_event.period_start, _meter_event.kind,
	        _meter_event.threshold, _meter_event.used, _meter_event."limit")
	ON CONFLICT (tenant_id, quota_id, period_start, kind, threshold) DO NOTHING
	RETURNING event_id INTO id;
	IF id IS NULL THEN
		RETURN;  -- already emitted in this period
	END IF;
	SELECT mt.name INTO nm FROM quota_ext.meters mt WHERE mt.meter_id = _meter_event.meter_id;
	-- ids only, as src/events.c: the listener reads the row (SECURITY.md)
	PERFORM pg_notify('quota_ext_events',
	                  jsonb_build_object('event_id', id, 'tenant_id', _meter_event.tenant_id)::text);
	PERFORM quota_ext._event_emit(_meter_event.tenant_id, 'quota.' || _meter_event.kind, 'quota',
	                              _meter_event.quota_id::text,
	                              jsonb_build_object('quota_event_id', id, 'quota_id', _meter_event.quota_id,
	                                                 'period_start', _meter_event.period_start,
	                                                 'kind', _meter_event.kind,
	                                                 'threshold', _meter_event.threshold,
	                                                 'used', _meter_event.used, 'limit', _meter_event."limit",
	                                                 'meter', nm));
END
$$;
COMMENT ON FUNCTION quota_ext._meter_event(bigint, bigint, bigint, timestamptz, text, integer, bigint, bigint) IS
	'Internal: emit one threshold or soft-limit crossing of a meter quota (quota_events, NOTIFY quota_ext_events, outbox) once per quota, period, kind and threshold';

CREATE FUNCTION quota_ext.meter_consume(tenant_id bigint, meter text, amount bigint,
	idempotency_key text DEFAULT NULL, user_id bigint DEFAULT NULL, key_id bigint DEFAULT NULL,
	metadata jsonb DEFAULT NULL)
	RETURNS quota_ext.decision
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
	lk record := quota_ext._meter_lookup(meter_consume.tenant_id, meter_consume.meter);
	t quota_ext.tenants := lk.t;
	m quota_ext.meters := lk.m;
	d quota_ext.decision;
	r record;
	b record;
	g record;
	now_ts timestamptz := clock_timestamp();
	now_ns bigint;
	cur timestamptz;
	used_now bigint;
	over bigint := 0;
	best_rem bigint;
	qids bigint[] := '{}';
	starts timestamptz[] := '{}';
	uses bigint[] := '{}';
	tats bigint[] := '{}';
	-- each counter as locked: its write is a compare-and-set against it
	seen_starts timestamptz[] := '{}';
	seen_uses bigint[] := '{}';
	w record;
	-- the crossings the charge makes, emitted once it is charged: quota
	-- (index into qids), kind, threshold, limit
	ev_q integer[] := '{}';
	ev_kind text[] := '{}';
	ev_th integer[] := '{}';
	ev_lim bigint[] := '{}';
	e record;
	uid bigint;
	kid bigint;
	kuid bigint;
	pass boolean;
	retry bigint;
	i integer;
BEGIN
	IF meter_consume.amount IS NULL THEN PERFORM quota_ext._null_arg('amount'); END IF;
	IF m.kind <> 'counter' THEN
		RAISE EXCEPTION 'meter "%" is a gauge', m.name
			USING ERRCODE = 'invalid_parameter_value', HINT = 'Move a gauge with quota_ext.gauge_adjust().';
	END IF;
	IF meter_consume.amount < 0 THEN
		RAISE EXCEPTION 'amount must not be negative' USING ERRCODE = 'invalid_parameter_value',
			HINT = 'A counter meter only counts up; use a gauge for levels that go down.';
	END IF;
	PERFORM quota_ext._check_bounded(meter_consume.amount, 'amount');
	SELECT x.res_user_id, x.res_key_id INTO uid, kid
	  FROM quota_ext._identity_resolve(t.tenant_id, meter_consume.user_id, meter_consume.key_id) x;
	PERFORM quota_ext._check_user(t.tenant_id, uid);
	IF kid IS NOT NULL THEN
		SELECT k.user_id INTO kuid FROM quota_ext.api_keys k
		 WHERE k.tenant_id = t.tenant_id AND k.key_id = kid;
		IF NOT FOUND THEN
			RAISE EXCEPTION 'API key % does not exist', kid USING ERRCODE = 'undefined_object';
		END IF;
		IF uid IS NOT NULL AND kuid IS DISTINCT FROM uid THEN
			RAISE EXCEPTION 'API key % is not user %''s', kid, uid USING ERRCODE = 'invalid_parameter_value';
		END IF;
		uid := coalesce(uid, kuid);
	END IF;
	d := quota_ext._meter_idem_claim(t.tenant_id, meter_consume.idempotency_key, 'meter_consume',
	                                 m.name, meter_consume.amount);
	IF d.replayed THEN
		d.user_id := uid;
		d.key_id := kid;
		RETURN d;
	END IF;
	d := quota_ext._meter_decision(t.tenant_id, uid, kid);
	IF t.status <> 'active' THEN
		d.allowed := false;
		d.overage := NULL;
		d.denied_by := 'tenant';
	ELSE
		now_ns := ((extract(epoch FROM now_ts) * 1000000)::bigint) * 1000;
		-- every quota of the meter in the call's scope, counters locked in
		-- quota_id order (the same order in every call: no deadlock)
		FOR r IN SELECT q.quota_id, q.period, q.period_label, q.max_units, q.on_exceed,
		                q.throttle_per_minute, q.throttle_burst, q.soft_limit, q.thresholds,
		                c.period_start, c.used, c.tat_ns
		           FROM quota_ext.meter_quotas q
		           JOIN quota_ext.meter_counters c ON c.tenant_id = q.tenant_id AND c.quota_id = q.quota_id
		          WHERE q.tenant_id = t.tenant_id AND q.meter_id = m.meter_id
		            AND (q.user_id IS NULL OR q.user_id = uid)
		          ORDER BY q.quota_id
		            FOR NO KEY UPDATE OF c LOOP
			SELECT * INTO b FROM quota_ext.period_bounds(r.period, t.timezone, now_ts);
			cur := b.period_start;
			used_now := CASE WHEN r.period_start = cur THEN r.used ELSE 0 END;
			qids := qids || r.quota_id;
			starts := starts || cur;
			uses := uses || (used_now + meter_consume.amount);
			tats := tats || r.tat_ns;
			seen_starts := seen_starts || r.period_start;
			seen_uses := seen_uses || r.used;
			IF meter_consume.amount > 0 THEN
				FOR e IN SELECT x.* FROM quota_ext._meter_crossings(used_now, used_now + meter_consume.amount,
				                                                   r.max_units, r.soft_limit, r.thresholds) x LOOP
					ev_q := ev_q || cardinality(qids);
					ev_kind := ev_kind || e.kind;
					ev_th := ev_th || e.threshold;
					ev_lim := ev_lim || e."limit";
				END LOOP;
			END IF;
			IF used_now + meter_consume.amount > r.max_units THEN
				-- past the limit: a blocking quota denies; a throttled one
				-- passes at its GCRA rate (the new TAT stored only if the
				-- whole call is charged); alert and overage pass
				pass := r.on_exceed <> 'block';
				retry := CASE WHEN r.period <> 'lifetime' THEN ceil(extract(epoch FROM b.period_end - now_ts))::bigint END;
				IF r.on_exceed = 'throttle' THEN
					SELECT * INTO g FROM quota_ext.gcra_eval(r.tat_ns, now_ns, r.throttle_burst,
					                                         r.throttle_per_minute, 60, 1);
					pass := NOT g.limited;
					retry := g.retry_after;
					tats[cardinality(tats)] := g.new_tat_ns;
				END IF;
				IF NOT pass THEN
					IF d.allowed THEN
						d.allowed := false;
						d.overage := NULL;
						d.denied_by := CASE WHEN r.on_exceed = 'throttle' THEN 'throttle' ELSE 'quota' END;
						d.denied_metric := 'units';
						d.quota_id := r.quota_id;
						d.period := r.period_label;
						d."limit" := r.max_units;
						d.remaining := greatest(r.max_units - used_now, 0);
						d.resets_at := CASE WHEN r.period <> 'lifetime' THEN b.period_end END;
						d.retry_after := retry;
					END IF;
					CONTINUE;
				END IF;
				over := greatest(over, least(meter_consume.amount, used_now + meter_consume.amount - r.max_units));
			END IF;
			IF d.allowed AND (best_rem IS NULL OR r.max_units - used_now - meter_consume.amount < best_rem) THEN
				best_rem := r.max_units - used_now - meter_consume.amount;
				d.quota_id := r.quota_id;
				d.period := r.period_label;
				d."limit" := r.max_units;
				d.remaining := greatest(best_rem, 0);
				d.resets_at := CASE WHEN r.period <> 'lifetime' THEN b.period_end END;
			END IF;
		END LOOP;
		IF d.allowed THEN
			d.overage := over;
			-- all or nothing: every counter charged, one ledger row.  Each
			-- write requires the row as locked: on Citus the lock above is a
			-- read that holds no shard move off, and a move may switch the
			-- placement before this write, where another call counted
			-- (doc/scaling.md, "Every counter UPDATE is a compare-and-set")
			-- (scalars in the statement: Citus 13.2's deparser crashes the
			-- backend on an array subscript there, bench/citus says the same)
			FOR i IN 1 .. cardinality(qids) LOOP
				SELECT qids[i] AS quota_id, starts[i] AS start, uses[i] AS used, tats[i] AS tat,
				       seen_starts[i] AS seen_start, seen_uses[i] AS seen_used INTO w;
				UPDATE quota_ext.meter_counters c
				   SET period_start = w.start, used = w.used, tat_ns = w.tat
				 WHERE c.tenant_id = t.tenant_id AND c.quota_id = w.quota_id
				   AND c.used = w.seen_used AND c.period_start = w.seen_start;
				IF NOT FOUND THEN
					RAISE EXCEPTION 'counter of meter quota % changed after this transaction locked it', w.quota_id
						USING ERRCODE = 'serialization_failure',
						      HINT = 'Retry the statement: it locks the counter again where it is now.';
				END IF;
			END LOOP;
			INSERT INTO quota_ext.meter_usage (tenant_id, meter_id, occurred_at, user_id, key_id, amount,
			                                   overage, idempotency_key, metadata)
			VALUES (t.tenant_id, m.meter_id, now_ts, uid, kid, meter_consume.amount,
			        over, meter_consume.idempotency_key, meter_consume.metadata)
			RETURNING usage_id INTO d.usage_id;
			FOR i IN 1 .. cardinality(ev_q) LOOP
				PERFORM quota_ext._meter_event(t.tenant_id, qids[ev_q[i]], m.meter_id, starts[ev_q[i]], ev_kind[i],
				                               ev_th[i], uses[ev_q[i]], ev_lim[i]);
			END LOOP;
		END IF;
	END IF;
	RETURN quota_ext._meter_idem_store(t.tenant_id, meter_consume.idempotency_key, d);
END
$$;
COMMENT ON FUNCTION quota_ext.meter_consume(bigint, text, bigint, text, bigint, bigint, jsonb) IS
	'Charge an amount to a counter meter: every quota of the meter in scope (tenant, user) checked and charged all-or-nothing; one ledger row per call (and per idempotency key)';

-- Move a tenant's gauge by delta: the one writer of meter_levels.  Locks
-- the level row; below 0 raises 22003; above a blocking quota's limit
-- (only when going up) answers allowed = false, denied_metric 'gauge'.
-- Going up across its quota's thresholds or soft limit: their events.
CREATE FUNCTION quota_ext._gauge_move(tenant_id bigint, meter_id bigint, delta bigint,
	idempotency_key text DEFAULT NULL, user_id bigint DEFAULT NULL)
	RETURNS quota_ext.decision
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
	d quota_ext.decision;
	lvl bigint;
	q quota_ext.meter_quotas;
	cap bigint;
	nm text;
BEGIN
	INSERT INTO quota_ext.meter_levels (tenant_id, meter_id)
	VALUES (_gauge_move.tenant_id, _gauge_move.meter_id) ON CONFLICT (tenant_id, meter_id) DO NOTHING;
	SELECT l.level INTO lvl FROM quota_ext.meter_levels l
	 WHERE l.tenant_id = _gauge_move.tenant_id AND l.meter_id = _gauge_move.meter_id FOR NO KEY UPDATE;
	SELECT * INTO q FROM quota_ext.meter_quotas mq
	 WHERE mq.tenant_id = _gauge_move.tenant_id AND mq.meter_id = _gauge_move.meter_id;
	cap := q.max_units;
	d := quota_ext._meter_decision(_gauge_move.tenant_id, _gauge_move.user_id, NULL);
	d.quota_id := q.quota_id;
	d.period := q.period_label;
	d."limit" := cap;
	IF lvl + _gauge_move.delta < 0 THEN
		SELECT mt.name INTO nm FROM quota_ext.meters mt WHERE mt.meter_id = _gauge_move.meter_id;
		RAISE EXCEPTION 'gauge "%" of tenant % cannot go below 0', nm, _gauge_move.tenant_id
			USING ERRCODE = 'numeric_value_out_of_range',
			      DETAIL = format('The level is %s; the change is %s.', lvl, _gauge_move.delta),
			      HINT = 'Give back at most what the tenant holds.';
	END IF;
	IF _gauge_move.delta > 0 AND q.on_exceed = 'block' AND lvl + _gauge_move.delta > cap THEN
		d.allowed := false;
		d.overage := NULL;
		d.denied_by := 'quota';
		d.denied_metric := 'gauge';
		d.remaining := greatest(cap - lvl, 0);
		RETURN d;
	END IF;
	-- compare-and-set, as every counter write after a lock: on Citus the
	-- lock above is a read a shard move can switch under (doc/scaling.md)
	UPDATE quota_ext.meter_levels l SET level = lvl + _gauge_move.delta
	 WHERE l.tenant_id = _gauge_move.tenant_id AND l.meter_id = _gauge_move.meter_id
	   AND l.level = lvl;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'gauge level of meter % changed after this transaction locked it', _gauge_move.meter_id
			USING ERRCODE = 'serialization_failure', HINT = 'Retry the statement.';
	END IF;
	d.overage := CASE WHEN cap IS NOT NULL AND _gauge_move.delta > 0
	                  THEN greatest(0, least(_gauge_move.delta, lvl + _gauge_move.delta - cap)) ELSE 0 END;
	INSERT INTO quota_ext.meter_usage (tenant_id, meter_id, occurred_at, user_id, amount, overage, idempotency_key)
	VALUES (_gauge_move.tenant_id, _gauge_move.meter_id, clock_timestamp(), _gauge_move.user_id, _gauge_move.delta,
	        d.overage, _gauge_move.idempotency_key)
	RETURNING usage_id INTO d.usage_id;
	d.remaining := CASE WHEN cap IS NOT NULL THEN greatest(cap - lvl - _gauge_move.delta, 0) END;
	-- going up across a threshold or the soft limit of its (lifetime) quota
	IF _gauge_move.delta > 0 AND q.quota_id IS NOT NULL THEN
		PERFORM quota_ext._meter_event(_gauge_move.tenant_id, q.quota_id, _gauge_move.meter_id, '-infinity',
		                               x.kind, x.threshold, lvl + _gauge_move.delta, x."limit")
		   FROM quota_ext._meter_crossings(lvl, lvl + _gauge_move.delta, q.max_units, q.soft_limit, q.thresholds) x;
	END IF;
	RETURN d;
END
$$;
COMMENT ON FUNCTION quota_ext._gauge_move(bigint, bigint, bigint, text, bigint) IS
	'Internal: move a tenant''s gauge level (the one writer of meter_levels), checked against 0 and its quota';

CREATE FUNCTION quota_ext.gauge_adjust(tenant_id bigint, meter text, delta bigint,
	idempotency_key text DEFAULT NULL)
	RETURNS quota_ext.decision
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	d quota_ext.decision;
	lk record := quota_ext._meter_lookup(gauge_adjust.tenant_id, gauge_adjust.meter);
	t quota_ext.tenants := lk.t;
	m quota_ext.meters := lk.m;
	uid bigint;
BEGIN
	IF gauge_adjust.delta IS NULL THEN PERFORM quota_ext._null_arg('delta'); END IF;
	PERFORM quota_ext._check_bounded(gauge_adjust.delta, 'delta');
	-- the ledger row names who moved the level (the key's user)
	uid := (quota_ext._identity_resolve(t.tenant_id, NULL, NULL)).res_user_id;
	IF m.kind <> 'gauge' THEN
		RAISE EXCEPTION 'meter "%" is a counter', m.name
			USING ERRCODE = 'invalid_parameter_value', HINT = 'Charge a counter with quota_ext.meter_consume().';
	END IF;
	IF m.builtin THEN
		RAISE EXCEPTION 'gauge "%" follows user_create and user_remove', m.name
			USING ERRCODE = 'invalid_parameter_value',
			      HINT = 'Create or remove users; limit them with quota_set(meter => ''users'') or the tier''s max_users.';
	END IF;
	-- lowering a gauge frees room under its quota: from a key-authenticated
	-- context only a tenant admin's key may (SECURITY.md finding 9; the
	-- rule of _event_scope, 52_outbox.sql)
	IF gauge_adjust.delta < 0
	   AND EXISTS (SELECT 1 FROM quota_ext.current_context() c
	                WHERE c.key_id IS NOT NULL AND c.role IS DISTINCT FROM 'admin') THEN
		RAISE EXCEPTION 'permission denied for gauge_adjust() with a negative delta'
			USING ERRCODE = 'insufficient_privilege',
			      DETAIL = 'Only a key of a user with role admin may lower a gauge.',
			      HINT = 'Lower it from the application''s admin login, or with a tenant admin''s key.';
	END IF;
	d := quota_ext._meter_idem_claim(t.tenant_id, gauge_adjust.idempotency_key, 'gauge_adjust',
	                                 m.name, gauge_adjust.delta);
	IF d.replayed THEN
		RETURN d;
	END IF;
	IF t.status <> 'active' AND gauge_adjust.delta > 0 THEN
		d := quota_ext._meter_decision(t.tenant_id, NULL, NULL);
		d.allowed := false;
		d.overage := NULL;
		d.denied_by := 'tenant';
	ELSE
		d := quota_ext._gauge_move(t.tenant_id, m.meter_id, gauge_adjust.delta, gauge_adjust.idempotency_key, uid);
	END IF;
	RETURN quota_ext._meter_idem_store(t.tenant_id, gauge_adjust.idempotency_key, d);
END
$$;
COMMENT ON FUNCTION quota_ext.gauge_adjust(bigint, text, bigint, text) IS
	'Move a tenant''s gauge up or down by delta: never below 0 (22003), not above a blocking quota (allowed = false, denied_metric gauge); a suspended or closed tenant may only go down; down from a key-authenticated context only with a tenant admin''s key (42501)';

-- Retention of the meters' ledger (SECURITY.md finding 10): one tenant's
-- counter meter rows that occurred before cutoff, except those a quota
-- still counts (in the current period of a quota of the meter, or any row
-- of a meter with a lifetime quota), with their idempotency keys (one ledger
-- row per key).  Gauge rows stay: a gauge's level is the sum of its rows,
-- and they move rarely.  Returns how many rows went.
CREATE FUNCTION quota_ext._meter_usage_purge_tenant(tenant_id bigint, timezone text, cutoff timestamptz)
	RETURNS bigint
	LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
	WITH gone AS (
		DELETE FROM quota_ext.meter_usage u
		 USING quota_ext.meters mt
		 WHERE u.tenant_id = $1 AND mt.meter_id = u.meter_id AND mt.kind = 'counter'
		   AND u.occurred_at < $3
		   AND NOT EXISTS (SELECT 1 FROM quota_ext.meter_quotas q
		                    WHERE q.tenant_id = $1 AND q.meter_id = u.meter_id
		                      AND (q.period = 'lifetime'
		                           OR u.occurred_at >= (quota_ext.period_bounds(q.period, $2, clock_timestamp())).period_start))
		RETURNING u.idempotency_key),
	keys AS (
		DELETE FROM quota_ext.idempotency_keys k USING gone g
		 WHERE k.tenant_id = $1 AND k.idempotency_key = g.idempotency_key)
	SELECT count(*) FROM gone
$$;
COMMENT ON FUNCTION quota_ext._meter_usage_purge_tenant(bigint, text, timestamptz) IS
	'Internal: one tenant''s counter meter rows before cutoff that no quota counts any more, and their idempotency keys';

-- ... tenant by tenant (each statement routable by tenant_id), with the
-- tier's audit_retention, as request_log_purge (14_request_log.sql).
CREATE FUNCTION quota_ext.meter_usage_purge() RETURNS bigint
	LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
	SELECT quota_ext._admin_only('meter_usage_purge');
	WITH n AS (
		SELECT coalesce(sum(quota_ext._meter_usage_purge_tenant(t.tenant_id, t.timezone,
		                                                         now() - tr.audit_retention)), 0)::bigint AS total
		  FROM quota_ext.tenants t JOIN quota_ext.tiers tr ON tr.tier = t.tier)
	SELECT n.total
	  FROM n, LATERAL quota_ext._audit(0, 'meter_usage_purge', 'meter_usage', NULL, NULL,
	                                   jsonb_build_object('deleted', n.total)) a
$$;
COMMENT ON FUNCTION quota_ext.meter_usage_purge() IS
	'Delete counter meters'' ledger rows older than their tenant''s tier audit_retention that no quota counts any more (with their idempotency keys); returns how many';

-- The built-in gauge 'users' for user_create (+1) and user_remove (-1):
-- 53400 past the tenant's quota on 'users'.
CREATE FUNCTION quota_ext._users_gauge(tenant_id bigint, delta bigint, user_id bigint) RETURNS void
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	d quota_ext.decision;
BEGIN
	d := quota_ext._gauge_move(_users_gauge.tenant_id,
	                           (SELECT mt.meter_id FROM quota_ext.meters mt WHERE mt.name = 'users' AND mt.builtin),
	                           _users_gauge.delta, NULL, _users_gauge.user_id);
	IF NOT d.allowed THEN
		RAISE EXCEPTION 'tenant % has % users, the most its quota on users allows', _users_gauge.tenant_id, d."limit"
			USING ERRCODE = 'configuration_limit_exceeded',
			      HINT = 'Remove a user with quota_ext.user_remove(), or raise the quota with quota_ext.quota_set(meter => ''users'').';
	END IF;
END
$$;
COMMENT ON FUNCTION quota_ext._users_gauge(bigint, bigint, bigint) IS
	'Internal: the built-in gauge users follows user_create and user_remove';

-- ---------------------------------------------------------------------------
-- reading
-- ---------------------------------------------------------------------------

CREATE FUNCTION quota_ext.meter_status(tenant_id bigint)
	RETURNS TABLE (meter text, kind text, unit text, quota_id bigint, period text, scope_user_id bigint,
	               "limit" bigint, used bigint, remaining bigint, period_start timestamptz,
	               resets_at timestamptz, on_exceed text)
	LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
	t quota_ext.tenants := (quota_ext._meter_lookup(meter_status.tenant_id, NULL, false)).t;
BEGIN
	RETURN QUERY
	-- counter meters: one row per quota
	SELECT mt.name, mt.kind, mt.unit, q.quota_id, q.period_label, q.user_id, q.max_units, s.used,
	       greatest(q.max_units - s.used, 0),
	       CASE WHEN q.period <> 'lifetime' THEN b.period_start END,
	       CASE WHEN q.period <> 'lifetime' THEN b.period_end END, q.on_exceed
	  FROM quota_ext.meter_quotas q
	  JOIN quota_ext.meters mt ON mt.meter_id = q.meter_id AND mt.kind = 'counter'
	  JOIN quota_ext.meter_counters c ON c.tenant_id = q.tenant_id AND c.quota_id = q.quota_id
	  CROSS JOIN LATERAL quota_ext.period_bounds(q.period, t.timezone, clock_timestamp()) b
	  CROSS JOIN LATERAL (SELECT CASE WHEN c.period_start = b.period_start THEN c.used ELSE 0 END AS used) s
	 WHERE q.tenant_id = t.tenant_id
	UNION ALL
	-- gauges: the level, and the limit of its quota ('users': and the tier's max_users)
	SELECT mt.name, mt.kind, mt.unit, q.quota_id, coalesce(q.period_label, 'lifetime'), NULL::bigint,
	       lim.l, coalesce(l.level, 0), CASE WHEN lim.l IS NOT NULL THEN greatest(lim.l - coalesce(l.level, 0), 0) END,
	       NULL::timestamptz, NULL::timestamptz, q.on_exceed
	  FROM quota_ext.meters mt
	  LEFT JOIN quota_ext.meter_levels l ON l.tenant_id = t.tenant_id AND l.meter_id = mt.meter_id
	  LEFT JOIN quota_ext.meter_quotas q ON q.tenant_id = t.tenant_id AND q.meter_id = mt.meter_id
	  CROSS JOIN LATERAL (SELECT CASE WHEN mt.builtin
	                                  THEN least(q.max_units, (SELECT tr.max_users FROM quota_ext.tiers tr
	                                                            WHERE tr.tier = t.tier))
	                                  ELSE q.max_units END AS l) lim
	 WHERE mt.kind = 'gauge' AND (l.level IS NOT NULL OR q.quota_id IS NOT NULL OR mt.builtin)
	 ORDER BY 1, 4;
END
$$;
COMMENT ON FUNCTION quota_ext.meter_status(bigint) IS
	'A tenant''s meters now: each counter meter quota with used and remaining in its period, each gauge with its level and limit';

-- ---------------------------------------------------------------------------
-- security of this section
-- ---------------------------------------------------------------------------

-- meters is a global catalog like tiers: no tenant's data, readable by the
-- app, written only by meter_create (quota_ext_admin).
GRANT SELECT ON quota_ext.meters TO quota_ext_app;
SELECT quota_ext._secure_tenant_table('quota_ext.meter_quotas');
SELECT quota_ext._secure_tenant_table('quota_ext.meter_counters');
SELECT quota_ext._secure_tenant_table('quota_ext.meter_levels');
SELECT quota_ext._secure_tenant_table('quota_ext.meter_usage');

GRANT EXECUTE ON FUNCTION
	quota_ext.meter_consume(bigint, text, bigint, text, bigint, bigint, jsonb),
	quota_ext.gauge_adjust(bigint, text, bigint, text),
	quota_ext.meter_status(bigint)
	TO quota_ext_app;
GRANT EXECUTE ON FUNCTION
	quota_ext.meter_create(text, text, text),
	quota_ext.meter_usage_purge()
	TO quota_ext_admin;

-- pg_dump: the built-in meters are not dumped (every other table and
-- sequence: 99_finish.sql)
SELECT pg_catalog.pg_extension_config_dump('quota_ext.meters', 'WHERE NOT builtin');
