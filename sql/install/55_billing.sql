
-- ---------------------------------------------------------------------------
-- 55 billing: closing periods into invoices (doc/billing.md)
-- ---------------------------------------------------------------------------
-- What an invoice covers, without marking ledger rows (the ledger is
-- append-only): closing [period_start, period_end) for a tenant takes the
-- watermark W (_usage_watermark(): every usage row with created_at < W is
-- final) and records it as covered_until.  The close covers the rows with
--     occurred_at < period_end AND created_at < covered_until
-- that the tenant's previous close (prev_end, prev_covered) did not:
--     NOT (occurred_at < prev_end AND created_at < prev_covered).
-- Rows that occurred inside the period are its usage (and overage) lines;
-- rows that occurred earlier but were written after the previous close
-- (refunds, settlements, a transaction that was still open) are adjustment
-- lines.  Periods close in order, so each row lands on exactly one close.

CREATE SEQUENCE quota_ext.invoice_id_seq;
CREATE SEQUENCE quota_ext.invoice_number_seq;

CREATE TABLE quota_ext.billing_closes (
	tenant_id      bigint NOT NULL,
	period_start   timestamptz NOT NULL,
	period_end     timestamptz NOT NULL,
	covered_until  timestamptz NOT NULL,
	prev_end       timestamptz NOT NULL,
	prev_covered   timestamptz NOT NULL,
	closed_at      timestamptz NOT NULL DEFAULT pg_catalog.now(),
	PRIMARY KEY (tenant_id, period_start),
	CHECK (period_start OPERATOR(pg_catalog.<) period_end)
);
COMMENT ON TABLE quota_ext.billing_closes IS
	'Closed billing periods per tenant: the close covers usage with occurred_at < period_end and created_at < covered_until not covered by the previous close';

CREATE TABLE quota_ext.invoices (
	tenant_id       bigint NOT NULL,
	invoice_id      bigint NOT NULL DEFAULT pg_catalog.nextval('quota_ext.invoice_id_seq'),
	period_start    timestamptz NOT NULL,
	period_end      timestamptz NOT NULL,
	currency        char(3) NOT NULL,
	status          text NOT NULL DEFAULT 'draft'
	                CHECK (status OPERATOR(pg_catalog.=) ANY (ARRAY['draft', 'issued', 'paid', 'void'])),
	invoice_number  bigint,
	total           numeric NOT NULL DEFAULT 0,
	covered_until   timestamptz NOT NULL,
	created_at      timestamptz NOT NULL DEFAULT pg_catalog.now(),
	issued_at       timestamptz,
	voided_at       timestamptz,
	void_reason     text,
	paid_at         timestamptz,
	payment_reference text,
	PRIMARY KEY (tenant_id, invoice_id),
	UNIQUE (tenant_id, period_start, currency),
	UNIQUE (tenant_id, invoice_number)
);
COMMENT ON TABLE quota_ext.invoices IS
	'Invoices per tenant, billing period and currency: draft, then issued (numbered from invoice_number_seq, NOTIFY quota_ext_invoices), then paid; or void (from draft or issued)';

CREATE TABLE quota_ext.invoice_lines (
	tenant_id       bigint NOT NULL,
	invoice_id      bigint NOT NULL,
	line_no         integer NOT NULL,
	kind            text NOT NULL
	                CHECK (kind OPERATOR(pg_catalog.=) ANY (ARRAY['usage', 'overage', 'unpriced', 'adjustment'])),
	model_id        bigint NOT NULL,
	model           text NOT NULL,
	price_id        bigint,
	currency        char(3) NOT NULL,
	calls           bigint NOT NULL,
	units           numeric NOT NULL,
	input_tokens    numeric NOT NULL,
	output_tokens   numeric NOT NULL,
	unit_price      numeric,
	input_per_1k    numeric,
	output_per_1k   numeric,
	amount          numeric NOT NULL,
	PRIMARY KEY (tenant_id, invoice_id, line_no)
);
COMMENT ON TABLE quota_ext.invoice_lines IS
	'Invoice lines per model and price version: usage of the period, overage units at the overage price, unpriced usage (no price in force when charged: price_id NULL, amount 0, on the invoice in currency XXX), adjustments for earlier periods written after their close';

CREATE FUNCTION quota_ext._billing_close(period_start timestamptz, period_end timestamptz,
	only_tenant bigint, given_watermark timestamptz DEFAULT NULL) RETURNS SETOF quota_ext.invoices
	-- SET work_mem: the aggregate of a close holds a group per tenant, model, price
	-- version and kind: in memory, not spilled, for some 10^5 groups
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET work_mem = '64MB' AS $$
#variable_conflict use_column
DECLARE
	ps timestamptz := _billing_close.period_start;
	pe timestamptz := _billing_close.period_end;
	w timestamptz;
	lb timestamptz;
	tids bigint[];
	prev_ends timestamptz[];
	prev_covs timestamptz[];
	n_prev bigint;
	p_end timestamptz;
	p_cov timestamptz;
	r timestamptz;
	xl timestamptz;
	xd date;
	ya timestamptz;
	yb timestamptz;
	new_ids bigint[];
	ni quota_ext.invoices;
	bad record;
	tid bigint;
BEGIN
	IF ps IS NULL THEN PERFORM quota_ext._null_arg('period_start'); END IF;
	IF pe IS NULL THEN PERFORM quota_ext._null_arg('period_end'); END IF;
	IF NOT (ps < pe) OR NOT isfinite(ps) OR NOT isfinite(pe) THEN
		RAISE EXCEPTION 'a billing period needs finite period_start < period_end'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	PERFORM quota_ext._admin_only('billing_close');
	IF only_tenant IS NOT NULL THEN
		PERFORM quota_ext._tenant_exists(only_tenant);
	END IF;
	-- a period still open is not billed early: usage consumed later in it
	-- would become an adjustment on the next invoice
	IF pe > now() THEN
		RAISE EXCEPTION 'the billing period [%, %) has not ended', ps, pe
			USING ERRCODE = 'invalid_parameter_value',
			      DETAIL = format('It ends after the start of this transaction, %s.', now()),
			      HINT = 'Close a period once it has ended (period_end <= now()).';
	END IF;
	-- one close at a time; consumption goes on
	LOCK TABLE quota_ext.billing_closes IN SHARE ROW EXCLUSIVE MODE;

	-- On Citus every tenant is closed by itself, each close's statements
	-- routed to that tenant's shards (doc/design.md §8); one transaction,
	-- so an error closes no tenant, as on a single node
	-- (the watermark taken once for all: it asks every node, twice)
	IF only_tenant IS NULL AND quota_ext._on_citus() THEN
		w := quota_ext._usage_watermark();
		IF w IS NULL THEN
			RAISE EXCEPTION 'a prepared transaction holds usage rows'
				USING ERRCODE = 'object_not_in_prerequisite_state',
				      HINT = 'COMMIT PREPARED or ROLLBACK PREPARED it, then close again.';
		END IF;
		FOR tid IN SELECT t.tenant_id FROM quota_ext.tenants t WHERE t.created_at < pe ORDER BY 1 LOOP
			PERFORM FROM quota_ext._billing_close(ps, pe, tid, w);
		END LOOP;
		RETURN QUERY
		SELECT i.* FROM quota_ext.invoices i
		 WHERE i.period_start = ps AND i.period_end = pe
		 ORDER BY i.tenant_id, i.currency;
		RETURN;
	END IF;

	-- periods close in order and never overlap (the same period again is
	-- the idempotent case)
	SELECT c.tenant_id, c.period_start, c.period_end INTO bad
	  FROM quota_ext.billing_closes c
	 WHERE (only_tenant IS NULL OR c.tenant_id = only_tenant)
	   AND c.period_end > ps
	   AND NOT (c.period_start = ps AND c.period_end = pe)
	 ORDER BY c.tenant_id, c.period_start
	 LIMIT 1;
	IF FOUND THEN
		RAISE EXCEPTION 'tenant % has a closed period [%, %) that overlaps or follows [%, %)',
		                bad.tenant_id, bad.period_start, bad.period_end, ps, pe
			USING ERRCODE = 'object_not_in_prerequisite_state',
			      HINT = 'Billing periods close in order and do not overlap.';
	END IF;

	w := coalesce(_billing_close.given_watermark, quota_ext._usage_watermark());
	IF w IS NULL THEN
		RAISE EXCEPTION 'a prepared transaction holds usage rows'
			USING ERRCODE = 'object_not_in_prerequisite_state',
			      HINT = 'COMMIT PREPARED or ROLLBACK PREPARED it, then close again.';
	END IF;

	-- the tenants this call closes (those not closed for this period yet)
	-- with their previous close, read before any close is written: an
	-- INSERT ... SELECT reading billing_closes row by row (as the planner
	-- likes to when the table was empty at its last analyze) would scan the
	-- rows it has just written again for every tenant
	IF only_tenant IS NULL THEN
		SELECT array_agg(t.tenant_id ORDER BY t.tenant_id),
		       array_agg(coalesce(p.period_end, '-infinity') ORDER BY t.tenant_id),
		       array_agg(coalesce(p.covered_until, '-infinity') ORDER BY t.tenant_id)
		  INTO tids, prev_ends, prev_covs
		  FROM quota_ext.tenants t
		  LEFT JOIN LATERAL (SELECT c.period_end, c.covered_until FROM quota_ext.billing_closes c
		                      WHERE c.tenant_id = t.tenant_id
		                      ORDER BY c.period_start DESC LIMIT 1) p ON true
		 WHERE t.created_at < pe
		   AND NOT EXISTS (SELECT 1 FROM quota_ext.billing_closes c
		                    WHERE c.tenant_id = t.tenant_id AND c.period_start = ps);
	ELSE
		-- one tenant: the reference table and the tenant's closes read by
		-- statements of their own, each routable on Citus (a LATERAL join
		-- from tenants is not)
		PERFORM FROM quota_ext.tenants t WHERE t.tenant_id = only_tenant AND t.created_at < pe;
		IF FOUND AND NOT EXISTS (SELECT 1 FROM quota_ext.billing_closes c
		                          WHERE c.tenant_id = only_tenant AND c.period_start = ps) THEN
			SELECT c.period_end, c.covered_until INTO p_end, p_cov
			  FROM quota_ext.billing_closes c
			 WHERE c.tenant_id = only_tenant
			 ORDER BY c.period_start DESC LIMIT 1;
			tids := ARRAY[only_tenant];
			prev_ends := ARRAY[coalesce(p_end, '-infinity')];
			prev_covs := ARRAY[coalesce(p_cov, '-infinity')];
		END IF;
	END IF;
	INSERT INTO quota_ext.billing_closes (tenant_id, period_start, period_end, covered_until,
	                                      prev_end, prev_covered)
	SELECT n.tenant_id, ps, pe, w, n.prev_end, n.prev_covered
	  FROM unnest(tids, prev_ends, prev_covs) n (tenant_id, prev_end, prev_covered);
	SELECT min(least(n.prev_end, n.prev_covered)),
	       count(DISTINCT (n.prev_end, n.prev_covered)) FILTER (WHERE n.prev_end > '-infinity'),
	       min(n.prev_end) FILTER (WHERE n.prev_end > '-infinity'),
	       min(n.prev_covered) FILTER (WHERE n.prev_end > '-infinity')
	  INTO lb, n_prev, p_end, p_cov
	  FROM unnest(prev_ends, prev_covs) n (prev_end, prev_covered);

	IF tids IS NOT NULL THEN
		-- One tenant (billing_close(tenant, ...), and every close of the
		-- Citus loop above): the table is made once per transaction and
		-- emptied for each tenant.  A table made and dropped per tenant held
		-- its AccessExclusiveLocks (table, TOAST table and index) until
		-- COMMIT, three per tenant: past some thousand tenants the lock
		-- table ran out (53200).  Every tenant: CREATE TABLE AS, below.
		IF only_tenant IS NOT NULL THEN
			-- a table of that name the caller made (with triggers or rules
			-- that would run as the owner) is not ours: dropped, as the
			-- every-tenant path drops it
			IF to_regclass('pg_temp.quota_ext_bill') IS NOT NULL AND NOT EXISTS (
			     SELECT 1 FROM pg_catalog.pg_class c
			      WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass('pg_temp.quota_ext_bill')
			        AND c.relowner OPERATOR(pg_catalog.=)
			            (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) current_user)) THEN
				DROP TABLE pg_temp.quota_ext_bill;
			END IF;
			IF to_regclass('pg_temp.quota_ext_bill') IS NULL THEN
				CREATE TEMP TABLE quota_ext_bill (
					tenant_id bigint, model_id bigint, price_id bigint, kind text,
					calls numeric, units numeric, input_tokens numeric,
					output_tokens numeric, overage_units numeric, cost numeric
				) ON COMMIT DROP;
			ELSE
				TRUNCATE pg_temp.quota_ext_bill;
			END IF;
		ELSIF to_regclass('pg_temp.quota_ext_bill') IS NOT NULL THEN
			DROP TABLE pg_temp.quota_ext_bill;
		END IF;
		-- The covered rows, summed per tenant, model, price version and kind
		-- (usage: occurred in the period; adjustment: earlier).  A read-only
		-- CREATE TABLE AS, so that the ledger scan can run as a parallel plan
		-- (a data-modifying statement cannot).  Rows with created_at < lb
		-- occurred before every previous period_end and were written before
		-- every previous watermark (created_at >= occurred_at): all covered.
		IF n_prev <= 1 THEN
			-- The usual case: the tenants closed now were last closed together
			-- (one previous period_end and watermark, p_end and p_cov) or never
			-- ('-infinity').  Then whether a row was covered before depends on
			-- the row only, so it is a group key, and the tenants are matched
			-- to their closes afterwards, on the few aggregated rows: one scan,
			-- no per-row join.
			p_end := coalesce(p_end, '-infinity');
			p_cov := coalesce(p_cov, '-infinity');
			-- The rollup usage_billing_daily holds every row written before its
			-- watermark r.  When the period (and the previous one) start and
			-- end at UTC midnight, the close reads the rows written before r
			-- from it (its days decide whether a row is in the period or
			-- before it), and the ledger only from xl = r on; should r be
			-- after w, the rollup up to w's day and the ledger from that
			-- midnight.  Whether a row was written before the previous close's
			-- watermark p_cov the rollup tells by its day of writing, except on
			-- the day of p_cov itself, [ya, yb): those rows come from the
			-- ledger.  The rollup state is locked (FOR SHARE) so that no rollup
			-- commits during the close.
			xl := '-infinity';
			xd := '-infinity';
			SELECT s.watermark INTO r FROM quota_ext.rollup_state s
			 WHERE s.name = 'usage_daily' FOR SHARE;
			IF FOUND
			   AND date_trunc('day', ps AT TIME ZONE 'UTC') = ps AT TIME ZONE 'UTC'
			   AND date_trunc('day', pe AT TIME ZONE 'UTC') = pe AT TIME ZONE 'UTC'
			   AND date_trunc('day', p_end AT TIME ZONE 'UTC') = p_end AT TIME ZONE 'UTC' THEN
				IF r <= w THEN
					xl := r;
					xd := (r AT TIME ZONE 'UTC')::date + 1;
				ELSE
					xl := date_trunc('day', w AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
					xd := (w AT TIME ZONE 'UTC')::date;
				END IF;
			END IF;
			ya := date_trunc('day', p_cov AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
			yb := CASE WHEN ya = p_cov THEN ya ELSE ya + interval '1 day' END;
			-- One text for both (the per-tenant and the all-tenant close):
			-- one tenant, into the table made once above; every tenant, a
			-- read-only CREATE TABLE AS, so that the scan can run in parallel.
			-- $1 ps, $2 pe, $3 p_end, $4 p_cov, $5 lb, $6 xl, $7 xd, $8 ya,
			-- $9 yb, $10 w, $11 only_tenant, $12 tids
			EXECUTE CASE WHEN only_tenant IS NULL
			             THEN 'CREATE TEMP TABLE quota_ext_bill ON COMMIT DROP AS '
			             ELSE 'INSERT INTO pg_temp.quota_ext_bill (tenant_id, model_id, price_id, kind, calls, '
			                  'units, input_tokens, output_tokens, overage_units, cost) ' END
			|| $bill$
			SELECT a.tenant_id, a.model_id, a.price_id,
			       CASE WHEN a.in_period THEN 'usage' ELSE 'adjustment' END AS kind,
			       sum(a.calls) AS calls, sum(a.units) AS units,
			       coalesce(sum(a.input_tokens), 0) AS input_tokens,
			       coalesce(sum(a.output_tokens), 0) AS output_tokens,
			       sum(a.overage_units) AS overage_units, sum(a.cost) AS cost
			  FROM (-- the ledger from xl on
			        SELECT u.tenant_id, u.model_id, coalesce(u.price_id, 0) AS price_id,
			               u.occurred_at >= $1 AS in_period,
			               (u.occurred_at < $3 AND u.created_at < $4) AS covered_before,
			               sum(u.calls) AS calls, sum(u.units) AS units,
			               sum(u.input_tokens) AS input_tokens, sum(u.output_tokens) AS output_tokens,
			               sum(u.overage_units) AS overage_units, sum(u.cost) AS cost
			          FROM quota_ext.usage u
			         WHERE u.created_at >= greatest($5, $6) AND u.created_at < $10 AND u.occurred_at < $2
			           AND ($11 IS NULL OR u.tenant_id = $11)
			         GROUP BY 1, 2, 3, 4, 5
			        UNION ALL
			        -- the ledger on the day of p_cov, before xl
			        SELECT u.tenant_id, u.model_id, coalesce(u.price_id, 0), u.occurred_at >= $1,
			               (u.occurred_at < $3 AND u.created_at < $4),
			               sum(u.calls), sum(u.units), sum(u.input_tokens), sum(u.output_tokens),
			               sum(u.overage_units), sum(u.cost)
			          FROM quota_ext.usage u
			         WHERE u.created_at >= greatest($5, $8) AND u.created_at < least($9, $6)
			           AND u.occurred_at < $2
			           AND ($11 IS NULL OR u.tenant_id = $11)
			         GROUP BY 1, 2, 3, 4, 5
			        UNION ALL
			        -- the rollup before xd, but the day of p_cov
			        SELECT b.tenant_id, b.model_id, b.price_id,
			               b.occurred_day >= ($1 AT TIME ZONE 'UTC')::date,
			               (b.occurred_day < ($3 AT TIME ZONE 'UTC')::date
			                AND b.created_day < ($8 AT TIME ZONE 'UTC')::date),
			               sum(b.calls), sum(b.units), sum(b.input_tokens), sum(b.output_tokens),
			               sum(b.overage_units), sum(b.cost)
			          FROM quota_ext.usage_billing_daily b
			         WHERE b.created_day >= (date_trunc('day', $5 AT TIME ZONE 'UTC'))::date
			           AND b.created_day < $7
			           AND NOT (b.created_day >= ($8 AT TIME ZONE 'UTC')::date
			                    AND b.created_day < ($9 AT TIME ZONE 'UTC')::date)
			           AND b.occurred_day < ($2 AT TIME ZONE 'UTC')::date
			           AND ($11 IS NULL OR b.tenant_id = $11)
			         GROUP BY 1, 2, 3, 4, 5) a
			  JOIN quota_ext.billing_closes c ON c.tenant_id = a.tenant_id AND c.period_start = $1
			 WHERE c.tenant_id = ANY ($12)
			   AND NOT (a.covered_before AND c.prev_end > '-infinity')
			 GROUP BY 1, 2, 3, 4
			$bill$
			USING ps, pe, p_end, p_cov, lb, xl, xd, ya, yb, w, only_tenant, tids;
		ELSE
			-- tenants last closed at different times: each row against its
			-- tenant's previous close
			ANALYZE quota_ext.billing_closes;
			CREATE TEMP TABLE quota_ext_bill ON COMMIT DROP AS
			SELECT u.tenant_id, u.model_id, coalesce(u.price_id, 0) AS price_id,
			       CASE WHEN u.occurred_at >= ps THEN 'usage' ELSE 'adjustment' END AS kind,
			       sum(u.calls) AS calls, sum(u.units) AS units,
			       coalesce(sum(u.input_tokens), 0) AS input_tokens,
			       coalesce(sum(u.output_tokens), 0) AS output_tokens,
			       sum(u.overage_units) AS overage_units, sum(u.cost) AS cost
			  FROM quota_ext.usage u
			  JOIN quota_ext.billing_closes c ON c.tenant_id = u.tenant_id AND c.period_start = ps
			 WHERE c.tenant_id = ANY (tids)
			   AND u.created_at >= lb AND u.created_at < w AND u.occurred_at < pe
			   AND u.created_at >= least(c.prev_end, c.prev_covered)
			   AND NOT (u.occurred_at < c.prev_end AND u.created_at < c.prev_covered)
			 GROUP BY 1, 2, 3, 4;
		END IF;
		-- price_id 0: charged while no price was in force (cost 0).  Such
		-- rows are invoiced all the same, as 'unpriced' lines (adjustment
		-- lines without a price for earlier periods) with their calls, units
		-- and tokens and a zero amount, on the tenant's invoice in XXX (ISO
		-- 4217: no currency), so that nothing is billed silently as free
		WITH agg AS (SELECT b.*, coalesce(p.currency, 'XXX') AS currency
		               FROM pg_temp.quota_ext_bill b
		               LEFT JOIN quota_ext.prices p ON p.price_id = b.price_id),
		l AS (
			SELECT a.tenant_id, a.currency, a.model_id, m.name AS model, p.price_id,
			       k.kind, k.ord, p.effective_from, k.calls, k.units, k.input_tokens,
			       k.output_tokens, k.unit_price, p.input_per_1k, p.output_per_1k, k.amount
			  FROM agg a
			  LEFT JOIN quota_ext.prices p ON p.price_id = a.price_id
			  JOIN quota_ext.models m ON m.model_id = a.model_id
			  CROSS JOIN LATERAL (
			        SELECT CASE WHEN a.kind = 'usage' AND p.price_id IS NULL THEN 'unpriced'
			                    ELSE a.kind END,
			               CASE WHEN a.kind = 'usage' THEN 1 ELSE 3 END, a.calls, a.units,
			               a.input_tokens, a.output_tokens, p.unit_price,
			               a.cost + CASE WHEN a.kind = 'adjustment'
			                             THEN coalesce(a.overage_units * p.overage_unit_price, 0)
			                             ELSE 0 END
			        UNION ALL
			        SELECT 'overage', 2, 0, a.overage_units, 0, 0, p.overage_unit_price,
			               a.overage_units * p.overage_unit_price
			         WHERE a.kind = 'usage' AND a.overage_units <> 0
			           AND p.overage_unit_price IS NOT NULL)
			       k (kind, ord, calls, units, input_tokens, output_tokens, unit_price, amount)),
		inv AS (
			INSERT INTO quota_ext.invoices (tenant_id, period_start, period_end, currency, covered_until, total)
			SELECT l.tenant_id, ps, pe, l.currency, w, sum(l.amount)
			  FROM l GROUP BY l.tenant_id, l.currency
			 ORDER BY l.tenant_id, l.currency
			RETURNING *),
		-- one audit row per invoice, as quota_ext._audit() writes them (its
		-- config_changed() is the close's own _audit() call below)
		audit AS (
			INSERT INTO quota_ext.audit_log (tenant_id, actor_tenant_id, action, object_type,
			                                 object_id, before, after)
			SELECT inv.tenant_id, quota_ext.current_tenant_id(), 'invoice_create', 'invoice',
			       inv.invoice_id::text, NULL, to_jsonb(inv)
			  FROM inv ORDER BY inv.tenant_id, inv.invoice_id),
		lines AS (
			INSERT INTO quota_ext.invoice_lines (tenant_id, invoice_id, line_no, kind, model_id, model,
			                                     price_id, currency, calls, units, input_tokens,
			                                     output_tokens, unit_price, input_per_1k,
			                                     output_per_1k, amount)
			SELECT l.tenant_id, inv.invoice_id,
			       row_number() OVER (PARTITION BY inv.invoice_id
			                          ORDER BY l.ord, l.model, l.effective_from, l.price_id),
			       l.kind, l.model_id, l.model, l.price_id, l.currency, l.calls, l.units,
			       l.input_tokens, l.output_tokens, l.unit_price, l.input_per_1k, l.output_per_1k,
			       l.amount
			  FROM l JOIN inv ON inv.tenant_id = l.tenant_id AND inv.currency = l.currency)
		SELECT array_agg(inv.invoice_id) INTO new_ids FROM inv;
		IF only_tenant IS NULL THEN
			DROP TABLE pg_temp.quota_ext_bill;
		END IF;
		-- an outbox event per new invoice, in this transaction
		FOR ni IN SELECT * FROM quota_ext.invoices i
		           WHERE i.tenant_id = ANY (tids) AND i.invoice_id = ANY (new_ids)
		           ORDER BY i.tenant_id, i.invoice_id LOOP
			PERFORM quota_ext._invoice_event(ni, 'invoice.created');
		END LOOP;
		-- the model owners' payout statements of these invoices (57_marketplace.sql)
		IF new_ids IS NOT NULL THEN
			PERFORM quota_ext._payouts_add(ps, pe, tids, new_ids);
		END IF;

		PERFORM quota_ext._audit(0, 'billing_close', 'billing_period', ps || ' .. ' || pe, NULL,
		                         jsonb_build_object('tenants', cardinality(tids),
		                                            'invoices', coalesce(cardinality(new_ids), 0),
		                                            'covered_until', w));
	END IF;

	RETURN QUERY
	SELECT i.* FROM quota_ext.invoices i
	 WHERE i.period_start = ps AND i.period_end = pe
	   AND (only_tenant IS NULL OR i.tenant_id = only_tenant)
	 ORDER BY i.tenant_id, i.currency;
END
$$;
COMMENT ON FUNCTION quota_ext._billing_close(timestamptz, timestamptz, bigint, timestamptz) IS
	'Internal: close a billing period for every tenant or one';

CREATE FUNCTION quota_ext.billing_close(period_start timestamptz, period_end timestamptz)
	RETURNS SETOF quota_ext.invoices
	LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$ SELECT * FROM quota_ext._billing_close($1, $2, NULL) $$;
COMMENT ON FUNCTION quota_ext.billing_close(timestamptz, timestamptz) IS
	'Close a billing period for every tenant: draft invoices per tenant and currency (idempotent; returns the period''s invoices)';

CREATE FUNCTION quota_ext.billing_close(tenant_id bigint, period_start timestamptz,
	period_end timestamptz) RETURNS SETOF quota_ext.invoices
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	IF $1 IS NULL THEN PERFORM quota_ext._null_arg('tenant_id'); END IF;
	RETURN QUERY SELECT * FROM quota_ext._billing_close($2, $3, $1);
END
$$;
COMMENT ON FUNCTION quota_ext.billing_close(bigint, timestamptz, timestamptz) IS
	'Close a billing period for one tenant (idempotent; returns its invoices of the period)';

CREATE FUNCTION quota_ext._invoice_for_update(tenant_id bigint, invoice_id bigint)
	RETURNS quota_ext.invoices
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
	i quota_ext.invoices;
BEGIN
	IF _invoice_for_update.tenant_id IS NULL THEN PERFORM quota_ext._null_arg('tenant_id'); END IF;
	IF _invoice_for_update.invoice_id IS NULL THEN PERFORM quota_ext._null_arg('invoice_id'); END IF;
	PERFORM quota_ext._check_tenant_access(_invoice_for_update.tenant_id);
	SELECT * INTO i FROM quota_ext.invoices
	 WHERE tenant_id = _invoice_for_update.tenant_id AND invoice_id = _invoice_for_update.invoice_id
	 FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'invoice % does not exist', _invoice_for_update.invoice_id
			USING ERRCODE = 'undefined_object';
	END IF;
	RETURN i;
END
$$;
COMMENT ON FUNCTION quota_ext._invoice_for_update(bigint, bigint) IS 'Internal: lock an invoice';

-- The NOTIFY payload of an invoice event (see doc/billing.md): ids only.
-- Any login may LISTEN on any channel and NOTIFY a forged payload, so the
-- payload only says which invoice to read; the listener reads it through
-- row-level security and trusts the row, never the payload (SECURITY.md).
CREATE FUNCTION quota_ext._invoice_notify(i quota_ext.invoices, event text) RETURNS void
	LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
	SELECT pg_catalog.pg_notify('quota_ext_invoices', pg_catalog.jsonb_build_object(
		'event', $2, 'invoice_id', $1.invoice_id, 'tenant_id', $1.tenant_id)::pg_catalog.text)
	$$;
COMMENT ON FUNCTION quota_ext._invoice_notify(quota_ext.invoices, text) IS
	'Internal: send an invoice event on channel quota_ext_invoices';

-- Internal: an invoice event as an outbox row (52_outbox.sql), in the
-- transaction of the change
CREATE FUNCTION quota_ext._invoice_event(i quota_ext.invoices, event text) RETURNS bigint
	LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
	SELECT quota_ext._event_emit($1.tenant_id, $2, 'invoice', $1.invoice_id::pg_catalog.text,
		pg_catalog.jsonb_build_object('invoice_id', $1.invoice_id, 'tenant_id', $1.tenant_id,
			'status', $1.status, 'invoice_number', $1.invoice_number,
			'period_start', $1.period_start, 'period_end', $1.period_end,
			'currency', $1.currency, 'total', $1.total, 'issued_at', $1.issued_at,
			'paid_at', $1.paid_at, 'payment_reference', $1.payment_reference,
			'voided_at', $1.voided_at, 'void_reason', $1.void_reason))
	$$;
COMMENT ON FUNCTION quota_ext._invoice_event(quota_ext.invoices, text) IS
	'Internal: append an invoice event (invoice.created, .issued, .paid, .void) to the outbox';

CREATE FUNCTION quota_ext.invoice_issue(tenant_id bigint, invoice_id bigint)
	RETURNS quota_ext.invoices
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	old quota_ext.invoices := quota_ext._invoice_for_update($1, $2);
	new quota_ext.invoices;
BEGIN
	IF old.status = 'issued' THEN
		RETURN old;
	ELSIF old.status <> 'draft' THEN
		RAISE EXCEPTION 'invoice % is %', old.invoice_id, old.status
			USING ERRCODE = 'object_not_in_prerequisite_state',
			      HINT = 'Only draft invoices can be issued.';
	END IF;
	UPDATE quota_ext.invoices i
	   SET status = 'issued', issued_at = now(),
	       invoice_number = nextval('quota_ext.invoice_number_seq')
	 WHERE i.tenant_id = old.tenant_id AND i.invoice_id = old.invoice_id
	RETURNING * INTO new;
	PERFORM quota_ext._audit(new.tenant_id, 'invoice_issue', 'invoice', new.invoice_id::text,
	                         jsonb_build_object('status', old.status),
	                         jsonb_build_object('status', new.status, 'invoice_number', new.invoice_number));
	PERFORM quota_ext._invoice_notify(new, 'invoice.issued');
	PERFORM quota_ext._invoice_event(new, 'invoice.issued');
	RETURN new;
END
$$;
COMMENT ON FUNCTION quota_ext.invoice_issue(bigint, bigint) IS
	'Issue a draft invoice: give it the next invoice number and announce it on NOTIFY channel quota_ext_invoices (idempotent)';

CREATE FUNCTION quota_ext.invoice_void(tenant_id bigint, invoice_id bigint, reason text DEFAULT NULL)
	RETURNS quota_ext.invoices
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	old quota_ext.invoices := quota_ext._invoice_for_update($1, $2);
	new quota_ext.invoices;
BEGIN
	IF $3 IS NOT NULL THEN
		PERFORM quota_ext._check_label('reason', $3, 500);
	END IF;
	IF old.status = 'void' THEN
		RETURN old;
	ELSIF old.status = 'paid' THEN
		RAISE EXCEPTION 'invoice % is paid', old.invoice_id
			USING ERRCODE = 'object_not_in_prerequisite_state',
			      HINT = 'A paid invoice is final: refund or credit it on a later invoice.';
	END IF;
	UPDATE quota_ext.invoices i SET status = 'void', voided_at = now(), void_reason = $3
	 WHERE i.tenant_id = old.tenant_id AND i.invoice_id = old.invoice_id
	RETURNING * INTO new;
	PERFORM quota_ext._audit(new.tenant_id, 'invoice_void', 'invoice', new.invoice_id::text,
	                         jsonb_build_object('status', old.status),
	                         jsonb_build_object('status', new.status, 'reason', $3));
	PERFORM quota_ext._invoice_notify(new, 'invoice.void');
	PERFORM quota_ext._invoice_event(new, 'invoice.void');
	-- its lines leave the model owners' payout statements (57_marketplace.sql)
	PERFORM quota_ext._payouts_reverse(new);
	RETURN new;
END
$$;
COMMENT ON FUNCTION quota_ext.invoice_void(bigint, bigint, text) IS
	'Void a draft or issued invoice (final; its usage is not billed again; a paid one is refused, 55000); announced on quota_ext_invoices (idempotent)';

-- issued -> paid: the payment as finance records it (when, and its
-- reference, e.g. the bank transfer's).  Idempotent for the same reference;
-- any other transition is refused (55000) and changes nothing.
CREATE FUNCTION quota_ext.invoice_mark_paid(tenant_id bigint, invoice_id bigint,
	paid_at timestamptz, reference text)
	RETURNS quota_ext.invoices
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	old quota_ext.invoices;
	new quota_ext.invoices;
BEGIN
	IF $3 IS NULL THEN PERFORM quota_ext._null_arg('paid_at'); END IF;
	PERFORM quota_ext._check_label('reference', $4, 200);
	old := quota_ext._invoice_for_update($1, $2);
	IF NOT isfinite($3) OR $3 > now() THEN
		RAISE EXCEPTION 'paid_at % must be finite and not in the future', $3
			USING ERRCODE = 'invalid_parameter_value',
			      HINT = 'Record a payment once it has been received (paid_at <= now()).';
	END IF;
	IF old.status = 'paid' THEN
		IF old.payment_reference IS NOT DISTINCT FROM $4 AND old.paid_at = $3 THEN
			RETURN old;
		END IF;
		RAISE EXCEPTION 'invoice % is already paid (reference %)', old.invoice_id,
		                quota_ext._quote_input(old.payment_reference)
			USING ERRCODE = 'object_not_in_prerequisite_state',
			      HINT = 'A payment is recorded once; the same call again is a no-op.';
	ELSIF old.status <> 'issued' THEN
		RAISE EXCEPTION 'invoice % is %', old.invoice_id, old.status
			USING ERRCODE = 'object_not_in_prerequisite_state',
			      HINT = 'Only issued invoices can be paid.';
	END IF;
	UPDATE quota_ext.invoices i SET status = 'paid', paid_at = $3, payment_reference = $4
	 WHERE i.tenant_id = old.tenant_id AND i.invoice_id = old.invoice_id
	RETURNING * INTO new;
	PERFORM quota_ext._audit(new.tenant_id, 'invoice_paid', 'invoice', new.invoice_id::text,
	                         jsonb_build_object('status', old.status),
	                         jsonb_build_object('status', new.status, 'paid_at', new.paid_at,
	                                            'reference', new.payment_reference));
	PERFORM quota_ext._invoice_notify(new, 'invoice.paid');
	PERFORM quota_ext._invoice_event(new, 'invoice.paid');
	RETURN new;
END
$$;
COMMENT ON FUNCTION quota_ext.invoice_mark_paid(bigint, bigint, timestamptz, text) IS
	'Record the payment of an issued invoice (paid_at <= now(), reference): status paid; announced on quota_ext_invoices (idempotent for the same payment; any other transition 55000)';

-- Unpaid invoices: issued, not paid, not void (row-level security of the
-- caller applies: a tenant sees its own)
CREATE VIEW quota_ext.invoices_unpaid WITH (security_invoker = true, security_barrier = true) AS
SELECT i.tenant_id, i.invoice_id, i.invoice_number, i.period_start, i.period_end, i.currency,
       i.total, i.issued_at, now() - i.issued_at AS outstanding_for
  FROM quota_ext.invoices i
 WHERE i.status = 'issued';
COMMENT ON VIEW quota_ext.invoices_unpaid IS
	'Issued invoices not paid yet, per tenant, with how long they have been outstanding';

-- ---------------------------------------------------------------------------
-- security of this section
-- ---------------------------------------------------------------------------

SELECT quota_ext._secure_tenant_table('quota_ext.billing_closes');
SELECT quota_ext._secure_tenant_table('quota_ext.invoices');
SELECT quota_ext._secure_tenant_table('quota_ext.invoice_lines');
GRANT SELECT ON quota_ext.invoices_unpaid TO quota_ext_app;
GRANT EXECUTE ON FUNCTION
	quota_ext.billing_close(timestamptz, timestamptz),
	quota_ext.billing_close(bigint, timestamptz, timestamptz),
	quota_ext.invoice_issue(bigint, bigint),
	quota_ext.invoice_void(bigint, bigint, text),
	quota_ext.invoice_mark_paid(bigint, bigint, timestamptz, text)
	TO quota_ext_admin;
