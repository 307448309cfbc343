
-- ---------------------------------------------------------------------------
-- 52 outbox: billing and quota events as rows, read with a cursor
-- ---------------------------------------------------------------------------
-- Every billing and quota event (threshold crossed, invoice created at
-- close, issued, paid, voided) is a row of quota_ext.outbox, written in the
-- transaction that makes the change: it exists exactly when the change
-- committed.  NOTIFY quota_ext_outbox (ids only) only wakes consumers; a
-- consumer reads the rows with a cursor of its own (event_poll /
-- event_ack), so one that was down misses nothing (doc/billing.md).
--
-- Order and the cursor.  Event ids come from a sequence, so a transaction
-- can commit an event with a lower id after another one's higher id has
-- been read: a cursor on event_id alone would skip it.  Each row records
-- its writer's transaction id (xid8, assigned before the event id is
-- drawn), and a consumer reads only events whose writer is below the
-- oldest transaction still running (pg_snapshot_xmin of the current
-- snapshot): those writers have all ended, so the set of such events is
-- final.  Events are delivered in (xid, event_id) order and the cursor is
-- that pair: an event that commits later has a writer at or above the
-- horizon the cursor was read under, so it sorts after the cursor and is
-- never skipped, and nothing is delivered twice.  The price: a long
-- transaction (any that holds a transaction id) delays delivery until it
-- ends.

CREATE SEQUENCE quota_ext.outbox_id_seq;

CREATE TABLE quota_ext.outbox (
	tenant_id     bigint NOT NULL,
	event_id      bigint NOT NULL,
	xid           xid8 NOT NULL,
	event_type    text NOT NULL
	              CHECK (event_type OPERATOR(pg_catalog.=) ANY (ARRAY[
	                     'quota.threshold', 'quota.soft_limit', 'invoice.created',
	                     'invoice.issued', 'invoice.paid', 'invoice.void',
	                     -- the marketplace (57_marketplace.sql)
	                     'model_access.requested', 'model_access.approved',
	                     'model_access.denied', 'payout.created', 'payout.updated'])),
	object_type   text NOT NULL,
	object_id     text NOT NULL,
	payload       jsonb NOT NULL,
	created_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
	PRIMARY KEY (tenant_id, event_id)
);
COMMENT ON TABLE quota_ext.outbox IS
	'Billing and quota events, one row each, written in the transaction of the change (append-only; read with event_poll/event_ack, removed by event_purge)';
-- delivery order: every tenant (a consumer without a tenant context), one
-- tenant (a tenant's consumer)
CREATE INDEX outbox_order ON quota_ext.outbox (xid, event_id);
CREATE INDEX outbox_tenant_order ON quota_ext.outbox (tenant_id, xid, event_id);

-- Consumers and their cursors.  tenant_id 0: a consumer without a tenant
-- context (quota_ext_admin), which reads every tenant's events; otherwise
-- the tenant whose context it reads in, and it reads that tenant's only.
CREATE TABLE quota_ext.event_consumers (
	tenant_id     bigint NOT NULL,
	consumer      text NOT NULL,
	acked_xid     xid8 NOT NULL DEFAULT '0',
	acked_event_id bigint NOT NULL DEFAULT 0,
	acked_at      timestamptz,
	created_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
	PRIMARY KEY (tenant_id, consumer)
);
COMMENT ON TABLE quota_ext.event_consumers IS
	'Outbox consumers per tenant (0: every tenant) and their cursors: the last acknowledged event''s (xid, event_id)';

-- Append-only: no role may write the outbox (SELECT only, under row-level
-- security); the extension's functions insert (_event_emit) and only
-- event_purge() deletes.  (No trigger: per-tenant tables have none, so
-- that they can be distributed, doc/design.md.)

-- Internal: append one event in the current transaction, and wake the
-- consumers at commit (payload: ids only, see SECURITY.md).  The
-- transaction id is taken before the event id is drawn (see above).
CREATE FUNCTION quota_ext._event_emit(tenant_id bigint, event_type text, object_type text,
	object_id text, payload jsonb) RETURNS bigint
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	x xid8 := pg_current_xact_id();
	id bigint := nextval('quota_ext.outbox_id_seq');
BEGIN
	INSERT INTO quota_ext.outbox (tenant_id, event_id, xid, event_type, object_type, object_id, payload)
	VALUES ($1, id, x, $2, $3, $4, $5);
	PERFORM pg_notify('quota_ext_outbox',
	                  jsonb_build_object('event_id', id, 'tenant_id', $1)::text);
	RETURN id;
END
$$;
COMMENT ON FUNCTION quota_ext._event_emit(bigint, text, text, text, jsonb) IS
	'Internal: append an event to the outbox and NOTIFY quota_ext_outbox at commit';
REVOKE ALL ON FUNCTION quota_ext._event_emit(bigint, text, text, text, jsonb) FROM PUBLIC;

-- Quota events: src/events.c appends an outbox event for every row of
-- quota_events it writes (a threshold crossing, at most one per quota,
-- period and threshold: not the hot path of an ordinary call).

-- Internal: the caller's consumer namespace: the tenant context's tenant
-- (a key-authenticated context: only a tenant admin's key), or 0 for
-- quota_ext_admin without a context (anyone else: 42501)
CREATE FUNCTION quota_ext._event_scope(what text) RETURNS bigint
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	t bigint := quota_ext.current_tenant_id();
BEGIN
	IF t IS NULL THEN
		PERFORM quota_ext._admin_only(what);
		RETURN 0;
	END IF;
	-- consumers are per tenant: a key may move or hold the tenant's relay
	-- cursor only if its user is a tenant admin (SECURITY.md finding 2)
	IF EXISTS (SELECT 1 FROM quota_ext.current_context() c
	            WHERE c.key_id IS NOT NULL AND c.role IS DISTINCT FROM 'admin') THEN
		RAISE EXCEPTION 'permission denied for %()', what
			USING ERRCODE = 'insufficient_privilege',
			      DETAIL = 'Outbox consumers belong to the tenant: only a key of a user with role admin may use them.',
			      HINT = 'Relay events from an admin login, or with a tenant admin''s key.';
	END IF;
	RETURN t;
END
$$;
COMMENT ON FUNCTION quota_ext._event_scope(text) IS
	'Internal: the consumer namespace of the caller (its tenant context, or 0 for an admin without one)';

-- Internal: the consumer row, locked (created on first use)
CREATE FUNCTION quota_ext._event_consumer(scope bigint, consumer text)
	RETURNS quota_ext.event_consumers
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	c quota_ext.event_consumers;
BEGIN
	PERFORM quota_ext._check_label('consumer', $2, 63);
	-- at most 16 consumers per namespace: each keeps event_purge from
	-- deleting the events it has not acknowledged
	PERFORM 1 FROM quota_ext.event_consumers e WHERE e.tenant_id = $1 AND e.consumer = $2;
	IF NOT FOUND
	   AND (SELECT count(*) FROM quota_ext.event_consumers e WHERE e.tenant_id = $1) >= 16 THEN
		RAISE EXCEPTION 'too many outbox consumers'
			USING ERRCODE = 'program_limit_exceeded',
			      DETAIL = 'A tenant (or the admin namespace) has at most 16 consumers.',
			      HINT = 'Drop one with event_consumer_drop().';
	END IF;
	INSERT INTO quota_ext.event_consumers AS e (tenant_id, consumer) VALUES ($1, $2)
	ON CONFLICT ON CONSTRAINT event_consumers_pkey DO NOTHING;
	SELECT * INTO STRICT c FROM quota_ext.event_consumers e
	 WHERE e.tenant_id = $1 AND e.consumer = $2 FOR UPDATE;
	RETURN c;
END
$$;
COMMENT ON FUNCTION quota_ext._event_consumer(bigint, text) IS 'Internal: a consumer''s row, locked';

-- Internal: the delivery horizon: events whose writer is below it are
-- final (every transaction below it has ended, and this one is not below it)
CREATE FUNCTION quota_ext._event_horizon() RETURNS xid8
	LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
	SELECT CASE WHEN x.own IS NOT NULL AND x.own OPERATOR(pg_catalog.<) x.xmin THEN x.own ELSE x.xmin END
	  FROM (SELECT pg_catalog.pg_snapshot_xmin(pg_catalog.pg_current_snapshot()) AS xmin,
	               pg_catalog.pg_current_xact_id_if_assigned() AS own) x
	$$;
COMMENT ON FUNCTION quota_ext._event_horizon() IS
	'Internal: the oldest transaction still running (or this one): outbox rows of writers below it are final';

CREATE FUNCTION quota_ext.event_poll(consumer text, "limit" integer DEFAULT 100)
	RETURNS TABLE (event_id bigint, tenant_id bigint, event_type text, object_type text,
	               object_id text, payload jsonb, created_at timestamptz)
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	scope bigint := quota_ext._event_scope('event_poll');
	c quota_ext.event_consumers;
	h xid8;
BEGIN
	IF $2 IS NULL THEN PERFORM quota_ext._null_arg('limit'); END IF;
	IF $2 < 1 OR $2 > 10000 THEN
		RAISE EXCEPTION 'limit must be between 1 and 10000' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	c := quota_ext._event_consumer(scope, $1);
	h := quota_ext._event_horizon();
	IF scope = 0 THEN
		RETURN QUERY
		SELECT o.event_id, o.tenant_id, o.event_type, o.object_type, o.object_id, o.payload, o.created_at
		  FROM quota_ext.outbox o
		 WHERE o.tenant_id IS NOT NULL
		   AND (o.xid, o.event_id) > (c.acked_xid, c.acked_event_id) AND o.xid < h
		 ORDER BY o.xid, o.event_id
		 LIMIT $2;
	ELSE
		RETURN QUERY
		SELECT o.event_id, o.tenant_id, o.event_type, o.object_type, o.object_id, o.payload, o.created_at
		  FROM quota_ext.outbox o
		 WHERE o.tenant_id = scope
		   AND (o.xid, o.event_id) > (c.acked_xid, c.acked_event_id) AND o.xid < h
		 ORDER BY o.xid, o.event_id
		 LIMIT $2;
	END IF;
END
$$;
COMMENT ON FUNCTION quota_ext.event_poll(text, integer) IS
	'The next events (at most limit) after the consumer''s cursor, in delivery order; does not move the cursor (event_ack does).  In a tenant context: that tenant''s events and consumers; quota_ext_admin without one: every tenant''s';

CREATE FUNCTION quota_ext.event_ack(consumer text, upto bigint) RETURNS bigint
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	scope bigint := quota_ext._event_scope('event_ack');
	c quota_ext.event_consumers;
	e record;
BEGIN
	IF $2 IS NULL THEN PERFORM quota_ext._null_arg('upto'); END IF;
	c := quota_ext._event_consumer(scope, $1);
	-- 0: before every event (acknowledges nothing)
	IF $2 = 0 THEN
		RETURN c.acked_event_id;
	END IF;
	SELECT o.xid, o.event_id INTO e FROM quota_ext.outbox o
	 WHERE (scope = 0 OR o.tenant_id = scope) AND o.event_id = $2;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'event % does not exist', $2 USING ERRCODE = 'undefined_object';
	END IF;
	IF NOT e.xid < quota_ext._event_horizon() THEN
		RAISE EXCEPTION 'event % has not been delivered yet', $2
			USING ERRCODE = 'object_not_in_prerequisite_state',
			      HINT = 'Acknowledge events that event_poll returned.';
	END IF;
	-- the cursor only moves forward (an older or repeated ack is a no-op)
	IF (e.xid, e.event_id) > (c.acked_xid, c.acked_event_id) THEN
		UPDATE quota_ext.event_consumers k
		   SET acked_xid = e.xid, acked_event_id = e.event_id, acked_at = now()
		 WHERE k.tenant_id = scope AND k.consumer = $1;
		RETURN e.event_id;
	END IF;
	RETURN c.acked_event_id;
END
$$;
COMMENT ON FUNCTION quota_ext.event_ack(text, bigint) IS
	'Acknowledge the consumer''s events up to and including upto (an event_id event_poll returned; 0: none): the cursor moves forward only; returns the last acknowledged event_id';

-- Retention: events older than "before" that every consumer able to see
-- them has acknowledged.  A consumer that is gone must be dropped, or it
-- keeps every event after its cursor.
CREATE FUNCTION quota_ext.event_purge(before timestamptz) RETURNS bigint
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	n bigint;
BEGIN
	IF $1 IS NULL THEN PERFORM quota_ext._null_arg('before'); END IF;
	PERFORM quota_ext._admin_only('event_purge');
	DELETE FROM quota_ext.outbox o
	 WHERE o.tenant_id IS NOT NULL AND o.created_at < $1
	   AND NOT EXISTS (SELECT 1 FROM quota_ext.event_consumers c
	                    WHERE (c.tenant_id = 0 OR c.tenant_id = o.tenant_id)
	                      AND (o.xid, o.event_id) > (c.acked_xid, c.acked_event_id));
	GET DIAGNOSTICS n = ROW_COUNT;
	PERFORM quota_ext._audit(0, 'event_purge', 'outbox', NULL, NULL,
	                         jsonb_build_object('before', $1, 'deleted', n));
	RETURN n;
END
$$;
COMMENT ON FUNCTION quota_ext.event_purge(timestamptz) IS
	'Delete outbox events created before "before" that every consumer able to see them has acknowledged; returns how many';

CREATE FUNCTION quota_ext.event_consumer_drop(tenant_id bigint, consumer text) RETURNS boolean
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	IF $1 IS NULL THEN PERFORM quota_ext._null_arg('tenant_id'); END IF;
	IF $2 IS NULL THEN PERFORM quota_ext._null_arg('consumer'); END IF;
	-- tenant 0 (namespace of an admin without a context): the check lets
	-- only an admin without a context through, as for any tenant it does not
	-- know (in a context: 42704, an app without one: 42501)
	PERFORM quota_ext._check_tenant_access($1);
	IF $1 <> 0 THEN
		PERFORM quota_ext._tenant_exists($1);
	END IF;
	DELETE FROM quota_ext.event_consumers c WHERE c.tenant_id = $1 AND c.consumer = $2;
	IF NOT FOUND THEN
		RETURN false;
	END IF;
	PERFORM quota_ext._audit($1, 'event_consumer_drop', 'event_consumer', $2, NULL, NULL);
	RETURN true;
END
$$;
COMMENT ON FUNCTION quota_ext.event_consumer_drop(bigint, text) IS
	'Forget an outbox consumer and its cursor (tenant_id 0: a consumer without a tenant context), so that event_purge no longer keeps events for it';

-- ---------------------------------------------------------------------------
-- security of this section
-- ---------------------------------------------------------------------------

SELECT quota_ext._secure_tenant_table('quota_ext.outbox');
SELECT quota_ext._secure_tenant_table('quota_ext.event_consumers');
GRANT EXECUTE ON FUNCTION
	quota_ext.event_poll(text, integer),
	quota_ext.event_ack(text, bigint)
	TO quota_ext_app;
GRANT EXECUTE ON FUNCTION
	quota_ext.event_purge(timestamptz),
	quota_ext.event_consumer_drop(bigint, text)
	TO quota_ext_admin;
