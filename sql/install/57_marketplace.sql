
-- ---------------------------------------------------------------------------
-- 57 the model marketplace (issue 18; doc/billing.md §8)
-- ---------------------------------------------------------------------------
-- A tenant-owned model has a visibility (models.visibility, 10_tenants.sql):
--   private      its owner only (shares are kept but do not apply)
--   tenant       the owner and the tenants it shares the model with (model_share)
--   marketplace  listed (model_listing); a tenant asks (model_access_request),
--                the owner approves (model_access_decide): an approved request
--                is a share
--   public       listed; every tenant with an exact allow policy for it
-- The owner sets a list price (model_price_set), which a consumer pays unless
-- it has a price of its own; quota_ext_admin sets the platform's share of a
-- model's revenue (model_revenue_share_set).  billing_close turns the
-- consumers' invoice lines on an owner's models into the owner's payout
-- statement (payouts, payout_lines): per line, gross = payout + platform
-- share, to the micro-unit, and the gross of a period's statements is what
-- the consumers were invoiced for those models, except that per consumer
-- and model the owner's gross over all statements never goes below zero: a
-- refund after a close takes back at most what was paid, the rest is
-- carried against later charges (_payout_floor).
--
-- Isolation: the consumer sees of the owner only the listing; the owner sees
-- of the consumer its tenant id, its requests, and per model the aggregated
-- use (model_usage_by_consumer) and charges (payout_lines) — no users, keys,
-- invoices or other models.

CREATE SEQUENCE quota_ext.model_access_request_id_seq;
CREATE SEQUENCE quota_ext.payout_id_seq;

-- Access requests, the consumer's rows (tenant_id = the consumer).
CREATE TABLE quota_ext.model_access_requests (
	tenant_id        bigint NOT NULL REFERENCES quota_ext.tenants (tenant_id),
	request_id       bigint NOT NULL DEFAULT pg_catalog.nextval('quota_ext.model_access_request_id_seq'),
	model_id         bigint NOT NULL REFERENCES quota_ext.models (model_id),
	owner_tenant_id  bigint NOT NULL REFERENCES quota_ext.tenants (tenant_id),
	status           text NOT NULL DEFAULT 'pending'
	                 CHECK (status OPERATOR(pg_catalog.=) ANY (ARRAY['pending', 'approved', 'denied'])),
	note             text,
	requested_at     timestamptz NOT NULL DEFAULT pg_catalog.now(),
	decided_at       timestamptz,
	reason           text,
	PRIMARY KEY (tenant_id, request_id)
);
COMMENT ON TABLE quota_ext.model_access_requests IS
	'Requests of a tenant (tenant_id, the consumer) to use a marketplace model: pending, then approved (a model share) or denied by the owner';
-- one pending request per consumer and model
CREATE UNIQUE INDEX model_access_requests_pending ON quota_ext.model_access_requests (tenant_id, model_id)
	WHERE status OPERATOR(pg_catalog.=) 'pending';

-- The owner's copy of the requests for its models (tenant_id = the owner),
-- written with the request and updated with the decision, so that the
-- owner's list (model_access_requests_received()) reads its own tenant's
-- rows: every statement on a per-tenant table names tenant_id (on Citus one
-- shard, not every one; an attacker's review).
CREATE TABLE quota_ext.model_access_inbox (
	tenant_id           bigint NOT NULL REFERENCES quota_ext.tenants (tenant_id),
	request_id          bigint NOT NULL,
	consumer_tenant_id  bigint NOT NULL REFERENCES quota_ext.tenants (tenant_id),
	model_id            bigint NOT NULL REFERENCES quota_ext.models (model_id),
	status              text NOT NULL DEFAULT 'pending'
	                    CHECK (status OPERATOR(pg_catalog.=) ANY (ARRAY['pending', 'approved', 'denied'])),
	note                text,
	requested_at        timestamptz NOT NULL,
	decided_at          timestamptz,
	PRIMARY KEY (tenant_id, request_id)
);
COMMENT ON TABLE quota_ext.model_access_inbox IS
	'The access requests for a tenant''s models (tenant_id = the owner): the owner''s copy of model_access_requests, for its list';

-- The platform's share of a model's revenue, in percent (tenant_id = the
-- owner).  No row: 0.
CREATE TABLE quota_ext.model_revenue_shares (
	tenant_id     bigint NOT NULL REFERENCES quota_ext.tenants (tenant_id),
	model_id      bigint NOT NULL REFERENCES quota_ext.models (model_id),
	platform_pct  numeric NOT NULL
	              CHECK (platform_pct OPERATOR(pg_catalog.>=) 0 AND platform_pct OPERATOR(pg_catalog.<=) 100),
	updated_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
	PRIMARY KEY (tenant_id, model_id)
);
COMMENT ON TABLE quota_ext.model_revenue_shares IS
	'The platform''s percentage of the revenue of an owner''s model (tenant_id = the owner); none: 0';

-- Payout statements per owner (tenant_id), billing period and currency.
CREATE TABLE quota_ext.payouts (
	tenant_id       bigint NOT NULL,
	payout_id       bigint NOT NULL DEFAULT pg_catalog.nextval('quota_ext.payout_id_seq'),
	period_start    timestamptz NOT NULL,
	period_end      timestamptz NOT NULL,
	currency        char(3) NOT NULL,
	gross           numeric NOT NULL DEFAULT 0,
	platform_share  numeric NOT NULL DEFAULT 0,
	payout          numeric NOT NULL DEFAULT 0,
	created_at      timestamptz NOT NULL DEFAULT pg_catalog.now(),
	updated_at      timestamptz NOT NULL DEFAULT pg_catalog.now(),
	PRIMARY KEY (tenant_id, payout_id),
	UNIQUE (tenant_id, period_start, period_end, currency),
	CHECK (gross OPERATOR(pg_catalog.=) (payout OPERATOR(pg_catalog.+) platform_share))
);
COMMENT ON TABLE quota_ext.payouts IS
	'A model owner''s payout statement per billing period and currency: its consumers'' charges on its models (gross) = payout + platform_share';

CREATE TABLE quota_ext.payout_lines (
	tenant_id           bigint NOT NULL,
	payout_id           bigint NOT NULL,
	line_no             integer NOT NULL,
	consumer_tenant_id  bigint NOT NULL,
	model_id            bigint NOT NULL,
	model               text NOT NULL,
	calls               bigint NOT NULL,
	-- what the consumer's invoice lines on the model came to (negated
	-- at a void); gross is what the statement takes of it: the owner's
	-- gross per consumer and model, over all its statements, is never
	-- below zero (_payout_floor)
	invoiced            numeric NOT NULL,
	gross               numeric NOT NULL,
	platform_pct        numeric NOT NULL,
	platform_share      numeric NOT NULL,
	payout              numeric NOT NULL,
	PRIMARY KEY (tenant_id, payout_id, line_no),
	CHECK (gross OPERATOR(pg_catalog.=) (payout OPERATOR(pg_catalog.+) platform_share))
);
COMMENT ON TABLE quota_ext.payout_lines IS
	'Payout statement lines: per consumer tenant and model, the sum of one close''s invoice lines (invoiced), what the statement takes of it (gross: never more back than was paid, _payout_floor), the platform''s share (rounded to micro-units) and the owner''s payout (gross - share)';

CREATE FUNCTION quota_ext.model_visibility_set(owner_tenant_id bigint, model text, visibility text)
	RETURNS text
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	m quota_ext.models;
BEGIN
	IF $3 IS NULL THEN PERFORM quota_ext._null_arg('visibility'); END IF;
	IF NOT ($3 = ANY (ARRAY['private', 'tenant', 'marketplace', 'public'])) THEN
		RAISE EXCEPTION 'invalid visibility "%"', quota_ext._quote_input($3)
			USING ERRCODE = 'invalid_parameter_value',
			      HINT = 'One of private, tenant, marketplace, public.';
	END IF;
	-- one public model per name (an attacker's review: of two tenants'
	-- public models of one name the first registered won silently).  Two
	-- owners making a model public at once wait for each other here, and
	-- the later one reads the winner's row (READ COMMITTED): no unique index
	-- can say "one public row per name" and stay distributable.  They wait
	-- on the rows of every model of that name, locked in model_id order
	-- after the owner's tenant row, the order of every writer of models (a
	-- public row only comes from here: model_register writes 'tenant').  An
	-- advisory lock per name, used first, could be held by any login; a
	-- table lock, used next, deadlocked with model_register and let one
	-- tenant's admin hold up every tenant's model writes (reviews).  NO KEY:
	-- charges that reference a model (FOR KEY SHARE) do not wait on it.
	IF $3 = 'public' THEN
		PERFORM quota_ext._tenant_for_update($1);
		PERFORM 1 FROM quota_ext.models x WHERE x.name = $2 ORDER BY x.model_id FOR NO KEY UPDATE;
	END IF;
	m := quota_ext._owned_model($1, $2);
	IF m.visibility = $3 THEN
		RETURN m.visibility;
	END IF;
	IF $3 = 'public' THEN
		PERFORM 1 FROM quota_ext.models x
		 WHERE x.name = m.name AND x.visibility = 'public' AND x.owner_tenant_id IS NOT NULL
		   AND x.owner_tenant_id <> m.owner_tenant_id;
		IF FOUND THEN
			RAISE EXCEPTION 'another tenant''s model named "%" is public', quota_ext._quote_input(m.name)
				USING ERRCODE = 'unique_violation',
				      HINT = 'A public model''s name must be unique among public models: rename it (register it under another name) or list it as marketplace.';
		END IF;
	END IF;
	UPDATE quota_ext.models x SET visibility = $3
	 WHERE x.owner_tenant_id = m.owner_tenant_id AND x.model_id = m.model_id;
	PERFORM quota_ext._audit(m.owner_tenant_id, 'model_visibility_set', 'model', m.model_id::text,
	                         jsonb_build_object('visibility', m.visibility),
	                         jsonb_build_object('visibility', $3));
	RETURN m.visibility;
END
$$;
COMMENT ON FUNCTION quota_ext.model_visibility_set(bigint, text, text) IS
	'Set the visibility of an owner''s model (private, tenant, marketplace, public); returns the previous one';

-- The marketplace: listed models (marketplace and public) with their list
-- price now, and nothing else of their owners.
CREATE FUNCTION quota_ext.model_listing()
	RETURNS TABLE (model_id bigint, model text, provider text, description text, visibility text,
	               currency text, unit_price numeric, input_per_1k numeric, output_per_1k numeric,
	               overage_unit_price numeric)
	LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
	SELECT m.model_id, m.name, m.provider, m.description, m.visibility,
	       p.currency, p.unit_price, p.input_per_1k, p.output_per_1k, p.overage_unit_price
	  FROM quota_ext.models m
	  LEFT JOIN LATERAL (
	        SELECT v.currency::text AS currency, v.unit_price, v.input_per_1k, v.output_per_1k,
	               v.overage_unit_price
	          FROM (SELECT x.* FROM quota_ext.prices x
	                 WHERE x.model_id = m.model_id AND x.tenant_id IS NULL AND x.effective_from <= now()
	                 ORDER BY x.effective_from DESC LIMIT 1) v
	         WHERE v.currency <> 'XXX') p ON true
	 WHERE m.owner_tenant_id IS NOT NULL
	   AND m.visibility = ANY (ARRAY['marketplace', 'public'])
	   AND m.status = 'active'
	 ORDER BY m.name, m.model_id
	$$;
COMMENT ON FUNCTION quota_ext.model_listing() IS
	'The marketplace: tenant-owned models listed as marketplace or public, with their list price in force (NULL: none); no owner data';

CREATE VIEW quota_ext.model_marketplace AS SELECT * FROM quota_ext.model_listing();
COMMENT ON VIEW quota_ext.model_marketplace IS 'The marketplace listing (model_listing())';

-- The owner's list price of its model: a price version with tenant_id NULL
-- (the level "the model's list price" of _price_in_force), which every
-- consumer without a price of its own pays.
CREATE FUNCTION quota_ext.model_price_set(owner_tenant_id bigint, model text, currency text,
	unit_price numeric DEFAULT NULL, input_per_1k numeric DEFAULT NULL,
	output_per_1k numeric DEFAULT NULL, effective_from timestamptz DEFAULT now(),
	overage_unit_price numeric DEFAULT NULL) RETURNS bigint
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	m quota_ext.models := quota_ext._owned_model($1, $2);
BEGIN
	IF $3 IS NULL THEN PERFORM quota_ext._null_arg('currency'); END IF;
	IF $4 IS NULL AND $5 IS NULL AND $6 IS NULL THEN
		RAISE EXCEPTION 'a price needs unit_price, input_per_1k or output_per_1k'
			USING ERRCODE = 'null_value_not_allowed',
			      HINT = 'To stop charging for a model, use quota_ext.model_price_clear().';
	END IF;
	RETURN quota_ext._price_version_add(m.model_id, NULL, m.name, $3, $4, $5, $6, $7, $8,
	                                    m.owner_tenant_id);
END
$$;
COMMENT ON FUNCTION quota_ext.model_price_set(bigint, text, text, numeric, numeric, numeric, timestamptz, numeric) IS
	'The owner''s list price of its model from effective_from (consumers without a price of their own pay it); returns its price_id';

CREATE FUNCTION quota_ext.model_price_clear(owner_tenant_id bigint, model text,
	effective_from timestamptz DEFAULT now()) RETURNS bigint
	LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
	SELECT quota_ext._price_version_add(m.model_id, NULL, m.name, 'XXX', NULL, NULL, NULL, $3, NULL,
	                                    m.owner_tenant_id)
	  FROM quota_ext._owned_model($1, $2) m
	$$;
COMMENT ON FUNCTION quota_ext.model_price_clear(bigint, text, timestamptz) IS
	'End the owner''s list price of its model from effective_from (default prices apply, else it is unpriced)';

CREATE FUNCTION quota_ext.model_revenue_share_set(owner_tenant_id bigint, model text,
	platform_pct numeric) RETURNS void
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	m quota_ext.models;
	old quota_ext.model_revenue_shares;
	new quota_ext.model_revenue_shares;
BEGIN
	-- the platform's decision, not the owner's
	PERFORM quota_ext._admin_only('model_revenue_share_set');
	m := quota_ext._owned_model($1, $2);
	IF $3 IS NULL THEN PERFORM quota_ext._null_arg('platform_pct'); END IF;
	IF $3 = 'NaN'::numeric OR $3 < 0 OR $3 > 100 OR $3 <> round($3, 4) THEN
		RAISE EXCEPTION 'platform_pct must be a percentage from 0 to 100 with at most 4 decimals'
			USING ERRCODE = 'invalid_parameter_value', DETAIL = format('Got %s.', $3);
	END IF;
	SELECT * INTO old FROM quota_ext.model_revenue_shares s
	 WHERE s.tenant_id = m.owner_tenant_id AND s.model_id = m.model_id FOR UPDATE;
	INSERT INTO quota_ext.model_revenue_shares AS s (tenant_id, model_id, platform_pct)
	VALUES (m.owner_tenant_id, m.model_id, $3)
	ON CONFLICT (tenant_id, model_id) DO UPDATE SET platform_pct = EXCLUDED.platform_pct, updated_at = now()
	RETURNING * INTO new;
	PERFORM quota_ext._audit(m.owner_tenant_id, 'model_revenue_share_set', 'model', m.model_id::text,
	                         to_jsonb(old), to_jsonb(new));
END
$$;
COMMENT ON FUNCTION quota_ext.model_revenue_share_set(bigint, text, numeric) IS
	'The platform''s percentage of a model''s revenue (0 to 100, 4 decimals), applied at the next billing_close; cross-tenant';

-- Internal: an access request event in a tenant's outbox
CREATE FUNCTION quota_ext._model_access_event(tenant_id bigint, event text,
	r quota_ext.model_access_requests) RETURNS bigint
	LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
	SELECT quota_ext._event_emit($1, $2, 'model_access_request', $3.request_id::pg_catalog.text,
		pg_catalog.jsonb_build_object('request_id', $3.request_id, 'model_id', $3.model_id,
			'model', (SELECT m.name FROM quota_ext.models m
			           WHERE m.owner_tenant_id OPERATOR(pg_catalog.=) $3.owner_tenant_id
			             AND m.model_id OPERATOR(pg_catalog.=) $3.model_id),
			'consumer_tenant_id', $3.tenant_id, 'status', $3.status,
			'requested_at', $3.requested_at, 'decided_at', $3.decided_at))
	$$;
COMMENT ON FUNCTION quota_ext._model_access_event(bigint, text, quota_ext.model_access_requests) IS
	'Internal: append a model_access.* event to a tenant''s outbox';

-- A consumer asks for a marketplace model (by its model_id in the listing).
-- Idempotent while pending: the pending request's id again.
CREATE FUNCTION quota_ext.model_access_request(tenant_id bigint, model_id bigint, note text DEFAULT NULL)
	RETURNS bigint
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	t quota_ext.tenants := quota_ext._tenant_for_update($1);
	m quota_ext.models;
	r quota_ext.model_access_requests;
	denials integer;
	last_denied timestamptz;
BEGIN
	IF $2 IS NULL THEN PERFORM quota_ext._null_arg('model_id'); END IF;
	IF $3 IS NOT NULL THEN PERFORM quota_ext._check_label('note', $3, 500); END IF;
	SELECT * INTO m FROM quota_ext.models x
	 WHERE x.model_id = $2 AND x.owner_tenant_id IS NOT NULL AND x.status = 'active'
	   AND x.visibility = ANY (ARRAY['marketplace', 'public']);
	-- not listed: a model that does not exist, whoever owns it
	IF NOT FOUND THEN
		RAISE EXCEPTION 'model % is not in the marketplace', $2
			USING ERRCODE = 'undefined_object', HINT = 'quota_ext.model_listing() lists the models one may ask for.';
	END IF;
	IF m.owner_tenant_id = t.tenant_id THEN
		RAISE EXCEPTION 'tenant % owns model %', t.tenant_id, m.model_id
			USING ERRCODE = 'object_not_in_prerequisite_state';
	ELSIF m.visibility = 'public' THEN
		RAISE EXCEPTION 'model % is public', m.model_id
			USING ERRCODE = 'object_not_in_prerequisite_state',
			      HINT = 'A public model needs no request: an allow policy for its exact name is enough.';
	END IF;
	PERFORM 1 FROM quota_ext.model_shares s WHERE s.tenant_id = t.tenant_id AND s.model_id = m.model_id;
	IF FOUND THEN
		RAISE EXCEPTION 'tenant % may already use model %', t.tenant_id, m.model_id
			USING ERRCODE = 'object_not_in_prerequisite_state';
	END IF;
	SELECT * INTO r FROM quota_ext.model_access_requests x
	 WHERE x.tenant_id = t.tenant_id AND x.model_id = m.model_id AND x.status = 'pending';
	IF FOUND THEN
		RETURN r.request_id;
	END IF;
	-- after a denial, a day's pause; after three, no more requests for the
	-- model (an attacker's review: each request is a row and an event in
	-- the owner's outbox, and a denied tenant could ask again at once,
	-- without end).  The owner may still share the model.
	SELECT count(*), max(x.decided_at) INTO denials, last_denied
	  FROM quota_ext.model_access_requests x
	 WHERE x.tenant_id = t.tenant_id AND x.model_id = m.model_id AND x.status = 'denied';
	IF denials >= 3 THEN
		RAISE EXCEPTION 'model % denied tenant % access % times', m.model_id, t.tenant_id, denials
			USING ERRCODE = 'program_limit_exceeded',
			      HINT = 'After three denials a tenant may not ask for a model again; its owner may still share it (model_share).';
	ELSIF last_denied > now() - interval '1 day' THEN
		RAISE EXCEPTION 'tenant %''s request for model % was denied less than a day ago', t.tenant_id, m.model_id
			USING ERRCODE = 'program_limit_exceeded',
			      DETAIL = format('Denied at %s.', last_denied),
			      HINT = 'Ask again a day after the denial.';
	END IF;
	INSERT INTO quota_ext.model_access_requests (tenant_id, model_id, owner_tenant_id, note)
	VALUES (t.tenant_id, m.model_id, m.owner_tenant_id, $3)
	RETURNING * INTO r;
	INSERT INTO quota_ext.model_access_inbox (tenant_id, request_id, consumer_tenant_id, model_id,
	                                          note, requested_at)
	VALUES (r.owner_tenant_id, r.request_id, r.tenant_id, r.model_id, r.note, r.requested_at);
	PERFORM quota_ext._audit(t.tenant_id, 'model_access_request', 'model_access_request',
	                         r.request_id::text, NULL,
	                         jsonb_build_object('model_id', r.model_id, 'owner_tenant_id', r.owner_tenant_id));
	-- the owner learns of it from its outbox
	PERFORM quota_ext._model_access_event(m.owner_tenant_id, 'model_access.requested', r);
	RETURN r.request_id;
END
$$;
COMMENT ON FUNCTION quota_ext.model_access_request(bigint, bigint, text) IS
	'A tenant asks the owner of a marketplace model for access; returns the request id (the pending one again while it is pending; 54000 within a day of a denial or after three); event model_access.requested in the owner''s outbox';

-- The owner approves (the request becomes a model share) or denies.  The
-- same decision again returns the request unchanged; the other one is 55000.
CREATE FUNCTION quota_ext.model_access_decide(owner_tenant_id bigint, consumer_tenant_id bigint,
	request_id bigint, approve boolean, reason text DEFAULT NULL)
	RETURNS quota_ext.model_access_requests
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	t quota_ext.tenants := quota_ext._tenant_for_update($1);
	r quota_ext.model_access_requests;
	st text;
BEGIN
	IF $2 IS NULL THEN PERFORM quota_ext._null_arg('consumer_tenant_id'); END IF;
	IF $3 IS NULL THEN PERFORM quota_ext._null_arg('request_id'); END IF;
	IF $4 IS NULL THEN PERFORM quota_ext._null_arg('approve'); END IF;
	IF $5 IS NOT NULL THEN PERFORM quota_ext._check_label('reason', $5, 500); END IF;
	st := CASE WHEN $4 THEN 'approved' ELSE 'denied' END;
	SELECT * INTO r FROM quota_ext.model_access_requests x
	 WHERE x.tenant_id = $2 AND x.request_id = $3 AND x.owner_tenant_id = t.tenant_id
	 FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'access request % does not exist', $3 USING ERRCODE = 'undefined_object';
	END IF;
	IF r.status = st THEN
		RETURN r;
	ELSIF r.status <> 'pending' THEN
		RAISE EXCEPTION 'access request % is %', r.request_id, r.status
			USING ERRCODE = 'object_not_in_prerequisite_state',
			      HINT = 'A decision is final: the tenant may ask again, or the owner shares or unshares the model.';
	END IF;
	IF $4 THEN
		-- a share like model_share's (55000 for a private model; audited)
		PERFORM quota_ext.model_share(t.tenant_id, m.name, r.tenant_id)
		   FROM quota_ext.models m WHERE m.owner_tenant_id = t.tenant_id AND m.model_id = r.model_id;
	END IF;
	UPDATE quota_ext.model_access_requests x SET status = st, decided_at = now(), reason = $5
	 WHERE x.tenant_id = r.tenant_id AND x.request_id = r.request_id
	RETURNING * INTO r;
	UPDATE quota_ext.model_access_inbox x SET status = r.status, decided_at = r.decided_at
	 WHERE x.tenant_id = t.tenant_id AND x.request_id = r.request_id;
	PERFORM quota_ext._audit(t.tenant_id, 'model_access_decide', 'model_access_request',
	                         r.request_id::text, jsonb_build_object('status', 'pending'),
	                         jsonb_build_object('status', r.status, 'consumer_tenant_id', r.tenant_id,
	                                            'model_id', r.model_id, 'reason', r.reason));
	-- the consumer learns of it from its outbox
	PERFORM quota_ext._model_access_event(r.tenant_id, 'model_access.' || st, r);
	RETURN r;
END
$$;
COMMENT ON FUNCTION quota_ext.model_access_decide(bigint, bigint, bigint, boolean, text) IS
	'The owner approves (a model share) or denies a pending access request (final; the same decision again is a no-op); event model_access.approved/denied in the consumer''s outbox';

-- The owner's view of the requests for its models
CREATE FUNCTION quota_ext.model_access_requests_received(owner_tenant_id bigint,
	only_status text DEFAULT NULL)
	RETURNS TABLE (request_id bigint, consumer_tenant_id bigint, model text, status text,
	               note text, requested_at timestamptz, decided_at timestamptz)
	LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	IF $1 IS NULL THEN PERFORM quota_ext._null_arg('owner_tenant_id'); END IF;
	PERFORM quota_ext._check_tenant_access($1);
	PERFORM 1 FROM quota_ext.tenants t WHERE t.tenant_id = $1;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'tenant % does not exist', $1 USING ERRCODE = 'undefined_object';
	END IF;
	RETURN QUERY
	SELECT r.request_id, r.consumer_tenant_id, m.name, r.status, r.note, r.requested_at, r.decided_at
	  FROM quota_ext.model_access_inbox r
	  JOIN quota_ext.models m ON m.model_id = r.model_id
	 WHERE r.tenant_id = $1 AND ($2 IS NULL OR r.status = $2)
	 ORDER BY r.requested_at, r.request_id;
END
$$;
COMMENT ON FUNCTION quota_ext.model_access_requests_received(bigint, text) IS
	'The access requests for an owner''s models (optionally of one status): request id, consumer tenant id, model, status, note, when';

-- Internal: an owner's payout statement event
CREATE FUNCTION quota_ext._payout_event(p quota_ext.payouts, event text) RETURNS bigint
	LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
	SELECT quota_ext._event_emit($1.tenant_id, $2, 'payout', $1.payout_id::pg_catalog.text,
	                             pg_catalog.to_jsonb($1))
	$$;
COMMENT ON FUNCTION quota_ext._payout_event(quota_ext.payouts, text) IS
	'Internal: append a payout event (payout.created, payout.updated) to the owner''s outbox';

-- Internal (_billing_close): the owners' side of the invoices a close has
-- just written (inv_ids of the tenants tids).  Every invoice line on a
-- model owned by another tenant, in a currency (not XXX: unpriced), goes
-- to that owner's statement of the period and currency, summed per
-- consumer and model: gross, the platform's share rounded to micro-units,
-- payout = gross - share.  A statement made by this close: payout.created;
-- one that an earlier close of the same period made (consumers closed one
-- at a time) gets lines and payout.updated.
CREATE FUNCTION quota_ext._payouts_add(ps timestamptz, pe timestamptz, tids bigint[], inv_ids bigint[])
	RETURNS void
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	g record;
	p quota_ext.payouts;
	made boolean;
BEGIN
	FOR g IN SELECT m.owner_tenant_id AS owner, l.currency
	           FROM quota_ext.invoice_lines l
	           JOIN quota_ext.models m ON m.model_id = l.model_id
	          WHERE l.tenant_id = ANY ($3) AND l.invoice_id = ANY ($4)
	            AND m.owner_tenant_id <> l.tenant_id AND l.currency <> 'XXX'
	          GROUP BY 1, 2 ORDER BY 1, 2 LOOP
		INSERT INTO quota_ext.payouts (tenant_id, period_start, period_end, currency)
		VALUES (g.owner, $1, $2, g.currency)
		ON CONFLICT (tenant_id, period_start, period_end, currency) DO NOTHING
		RETURNING * INTO p;
		made := FOUND;
		IF NOT made THEN
			SELECT * INTO p FROM quota_ext.payouts x
			 WHERE x.tenant_id = g.owner AND x.period_start = $1 AND x.period_end = $2
			   AND x.currency = g.currency
			 FOR UPDATE;
		END IF;
		INSERT INTO quota_ext.payout_lines (tenant_id, payout_id, line_no, consumer_tenant_id, model_id,
		                                    model, calls, invoiced, gross, platform_pct, platform_share,
		                                    payout)
		SELECT g.owner, p.payout_id,
		       coalesce((SELECT max(y.line_no) FROM quota_ext.payout_lines y
		                  WHERE y.tenant_id = g.owner AND y.payout_id = p.payout_id), 0)
		       + row_number() OVER (ORDER BY a.consumer, a.model, a.model_id)::integer,
		       a.consumer, a.model_id, a.model, a.calls, a.gross, f.gross, a.pct, s.share, f.gross - s.share
		  FROM (SELECT l.tenant_id AS consumer, l.model_id, l.model, sum(l.calls)::bigint AS calls,
		               sum(l.amount) AS gross, coalesce(min(rs.platform_pct), 0) AS pct
		          FROM quota_ext.invoice_lines l
		          JOIN quota_ext.models m ON m.model_id = l.model_id
		          LEFT JOIN quota_ext.model_revenue_shares rs
		                 ON rs.tenant_id = g.owner AND rs.model_id = l.model_id
		         WHERE l.tenant_id = ANY ($3) AND l.invoice_id = ANY ($4)
		           AND m.owner_tenant_id = g.owner AND l.tenant_id <> g.owner
		           AND l.currency = g.currency
		         GROUP BY l.tenant_id, l.model_id, l.model) a
		 CROSS JOIN LATERAL (SELECT quota_ext._payout_floor(g.owner, g.currency, a.consumer, a.model_id,
		                                                    a.gross) AS gross) f
		 CROSS JOIN LATERAL (SELECT round(f.gross * a.pct / 100, 6) AS share) s;
		PERFORM quota_ext._payout_total(g.owner, p.payout_id, made);
	END LOOP;
END
$$;
COMMENT ON FUNCTION quota_ext._payouts_add(timestamptz, timestamptz, bigint[], bigint[]) IS
	'Internal: the model owners'' payout statements of the invoices a close wrote';

-- Internal: the gross a statement takes of a consumer's invoiced amount on
-- an owner's model (invoiced: this close's invoice lines, or their negation
-- at a void).  The owner's gross per consumer, model and currency over all
-- its statements is max(0, all invoiced): a negative adjustment (a refund
-- after a close) takes back at most what was paid for that consumer and
-- model, and the rest is carried against its later charges (an attacker's
-- review: negative lines had no floor, so one consumer's refunds could
-- take an owner's payout for other consumers).  Reads the owner's rows.
CREATE FUNCTION quota_ext._payout_floor(owner bigint, currency text, consumer bigint, model_id bigint,
	invoiced numeric) RETURNS numeric
	LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	so_far numeric;
	paid numeric;
BEGIN
	SELECT coalesce(sum(y.invoiced), 0), coalesce(sum(y.gross), 0) INTO so_far, paid
	  FROM quota_ext.payout_lines y
	  JOIN quota_ext.payouts x ON x.tenant_id = y.tenant_id AND x.payout_id = y.payout_id
	 WHERE y.tenant_id = $1 AND x.tenant_id = $1 AND x.currency = $2
	   AND y.consumer_tenant_id = $3 AND y.model_id = $4;
	RETURN greatest(so_far + $5, 0) - paid;
END
$$;
COMMENT ON FUNCTION quota_ext._payout_floor(bigint, text, bigint, bigint, numeric) IS
	'Internal: the gross a payout statement takes of an invoiced amount: the owner''s gross per consumer and model stays max(0, all invoiced)';

-- A voided consumer invoice takes its lines back out of the owners' payout
-- statements of its period: a line per consumer and model that negates what
-- the statement holds of that consumer (its gross, share and payout at the
-- percentage applied then), so each statement still adds up to what its
-- consumers were invoiced and not voided (an attacker's review: the owner
-- kept the payout of a voided invoice).  invoice_void runs it once.
CREATE FUNCTION quota_ext._payouts_reverse(inv quota_ext.invoices) RETURNS void
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	p quota_ext.payouts;
BEGIN
	FOR p IN SELECT x.* FROM quota_ext.payouts x
	          WHERE x.tenant_id IN (SELECT DISTINCT m.owner_tenant_id
	                                  FROM quota_ext.invoice_lines l
	                                  JOIN quota_ext.models m ON m.model_id = l.model_id
	                                 WHERE l.tenant_id = inv.tenant_id AND l.invoice_id = inv.invoice_id
	                                   AND m.owner_tenant_id <> l.tenant_id)
	            AND x.period_start = inv.period_start AND x.period_end = inv.period_end
	            AND x.currency = inv.currency
	          ORDER BY x.tenant_id, x.payout_id
	            FOR UPDATE LOOP
		INSERT INTO quota_ext.payout_lines (tenant_id, payout_id, line_no, consumer_tenant_id, model_id,
		                                    model, calls, invoiced, gross, platform_pct, platform_share,
		                                    payout)
		SELECT p.tenant_id, p.payout_id,
		       (SELECT max(z.line_no) FROM quota_ext.payout_lines z
		         WHERE z.tenant_id = p.tenant_id AND z.payout_id = p.payout_id)
		       + row_number() OVER (ORDER BY v.model_id)::integer,
		       inv.tenant_id, v.model_id, v.model, -v.calls, -v.invoiced, f.gross, v.pct, sh.share,
		       f.gross - sh.share
		  FROM (SELECT y.model_id, y.model, sum(y.calls)::bigint AS calls, sum(y.invoiced) AS invoiced,
		               sum(y.gross) AS gross, sum(y.platform_share) AS share, max(y.platform_pct) AS pct
		          FROM quota_ext.payout_lines y
		         WHERE y.tenant_id = p.tenant_id AND y.payout_id = p.payout_id
		           AND y.consumer_tenant_id = inv.tenant_id
		         GROUP BY y.model_id, y.model
		        HAVING sum(y.invoiced) <> 0 OR sum(y.calls) <> 0) v
		 CROSS JOIN LATERAL (SELECT quota_ext._payout_floor(p.tenant_id, p.currency, inv.tenant_id, v.model_id,
		                                                    -v.invoiced) AS gross) f
		 -- what the statement took back exactly: its share too; else at the
		 -- percentage applied then
		 CROSS JOIN LATERAL (SELECT CASE WHEN f.gross = -v.gross THEN -v.share
		                                 ELSE round(f.gross * v.pct / 100, 6) END AS share) sh;
		IF FOUND THEN
			PERFORM quota_ext._payout_total(p.tenant_id, p.payout_id, false);
		END IF;
	END LOOP;
END
$$;
COMMENT ON FUNCTION quota_ext._payouts_reverse(quota_ext.invoices) IS
	'Internal: take a voided invoice''s lines back out of the owners'' payout statements of its period';

-- A statement's totals from its lines, audited and announced
CREATE FUNCTION quota_ext._payout_total(owner bigint, payout_id bigint, made boolean) RETURNS void
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	p quota_ext.payouts;
BEGIN
	UPDATE quota_ext.payouts x
	   SET gross = t.gross, platform_share = t.share, payout = t.payout, updated_at = now()
	  FROM (SELECT sum(y.gross) AS gross, sum(y.platform_share) AS share, sum(y.payout) AS payout
	          FROM quota_ext.payout_lines y
	         WHERE y.tenant_id = $1 AND y.payout_id = $2) t
	 WHERE x.tenant_id = $1 AND x.payout_id = $2
	RETURNING x.* INTO p;
	PERFORM quota_ext._audit(p.tenant_id, CASE WHEN $3 THEN 'payout_create' ELSE 'payout_update' END,
	                         'payout', p.payout_id::text, NULL, to_jsonb(p));
	PERFORM quota_ext._payout_event(p, CASE WHEN $3 THEN 'payout.created' ELSE 'payout.updated' END);
END
$$;
COMMENT ON FUNCTION quota_ext._payout_total(bigint, bigint, boolean) IS
	'Internal: a payout statement''s totals from its lines, audited, and its outbox event';

-- May the context's tenant see the list prices (prices rows with tenant_id
-- NULL) of this model?  Those of the models it may use or ask for: the
-- default prices (model_id NULL), global models, its own, listed ones
-- (marketplace, public: model_listing() publishes their list price) and
-- those shared with it unless made private.  An attacker's review: every
-- tenant read every owner's list prices through prices, private models'
-- too.  The policies of prices call it (Citus refuses subqueries in
-- policies); it runs as the owner and reads the tenant's share by
-- tenant_id.  Without a context: global and default prices only.
CREATE FUNCTION quota_ext.price_list_visible(model_id bigint) RETURNS boolean
	LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	m quota_ext.models;
	ct bigint := quota_ext.current_tenant_id();
BEGIN
	IF $1 IS NULL THEN
		RETURN true;
	END IF;
	SELECT * INTO m FROM quota_ext.models x WHERE x.model_id = $1;
	IF NOT FOUND THEN
		RETURN false;
	ELSIF m.owner_tenant_id IS NULL THEN
		RETURN true;
	ELSIF ct IS NULL THEN
		RETURN false;
	ELSIF m.owner_tenant_id = ct THEN
		RETURN true;
	ELSIF m.status = 'active' AND m.visibility = ANY (ARRAY['marketplace', 'public']) THEN
		RETURN true;
	ELSIF m.visibility = 'private' THEN
		RETURN false;
	END IF;
	PERFORM 1 FROM quota_ext.model_shares s WHERE s.tenant_id = ct AND s.model_id = m.model_id;
	RETURN FOUND;
END
$$;
COMMENT ON FUNCTION quota_ext.price_list_visible(bigint) IS
	'May the context''s tenant see this model''s list prices (global, its own, listed, or shared with it and not private)?  The prices policies use it';

-- ---------------------------------------------------------------------------
-- security of this section
-- ---------------------------------------------------------------------------

SELECT quota_ext._secure_tenant_table('quota_ext.model_access_requests');
SELECT quota_ext._secure_tenant_table('quota_ext.model_access_inbox');
SELECT quota_ext._secure_tenant_table('quota_ext.model_revenue_shares');
SELECT quota_ext._secure_tenant_table('quota_ext.payouts');
SELECT quota_ext._secure_tenant_table('quota_ext.payout_lines');
-- prices (50_metering.sql): a list price row (tenant_id NULL) only of a
-- model the tenant may see (price_list_visible), not of every model
ALTER POLICY tenant_isolation ON quota_ext.prices
	USING ((tenant_id IS NULL AND quota_ext.price_list_visible(model_id))
	       OR tenant_id OPERATOR(pg_catalog.=) quota_ext.current_tenant_id());
ALTER POLICY admin_read ON quota_ext.prices
	USING (quota_ext.current_tenant_id() IS NULL
	       OR (tenant_id IS NULL AND quota_ext.price_list_visible(model_id))
	       OR tenant_id OPERATOR(pg_catalog.=) quota_ext.current_tenant_id());

GRANT SELECT ON quota_ext.model_marketplace TO quota_ext_app;
GRANT EXECUTE ON FUNCTION
	quota_ext.model_listing(),
	quota_ext.price_list_visible(bigint),
	quota_ext.model_access_requests_received(bigint, text)
	TO quota_ext_app;
-- (the prices policies call it as the reading role)
GRANT EXECUTE ON FUNCTION quota_ext.price_list_visible(bigint) TO quota_ext_admin;
GRANT EXECUTE ON FUNCTION
	quota_ext.model_visibility_set(bigint, text, text),
	quota_ext.model_price_set(bigint, text, text, numeric, numeric, numeric, timestamptz, numeric),
	quota_ext.model_price_clear(bigint, text, timestamptz),
	quota_ext.model_revenue_share_set(bigint, text, numeric),
	quota_ext.model_access_request(bigint, bigint, text),
	quota_ext.model_access_decide(bigint, bigint, bigint, boolean, text)
	TO quota_ext_admin;
