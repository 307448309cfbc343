
-- ---------------------------------------------------------------------------
-- 50 metering: the price book, ledger partitions, the watermark, rollups
-- and usage reports (src/metering.c computes a call's cost; doc/metering.md)
-- ---------------------------------------------------------------------------

-- An ISO 4217 code: three upper-case letters.
CREATE FUNCTION quota_ext._check_currency(currency text) RETURNS text
	LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	IF currency IS NULL THEN PERFORM quota_ext._null_arg('currency'); END IF;
	IF upper(currency) !~ '^[A-Z]{3}$' THEN
		RAISE EXCEPTION 'invalid currency "%"', quota_ext._quote_input(currency)
			USING ERRCODE = 'invalid_parameter_value',
			      HINT = 'Use a three-letter ISO 4217 code such as USD or EUR.';
	END IF;
	RETURN upper(currency);
END
$$;
COMMENT ON FUNCTION quota_ext._check_currency(text) IS 'Internal: validate an ISO 4217 currency code';

-- An amount of money or a price from a caller: a finite number (numeric
-- also holds NaN and +-Infinity, which poison every sum and every cost
-- computed from them), not negative, at most 10^12 (a money limit) or 10^9
-- (a price per unit or per 1,000 tokens).  NULL passes: the caller decides
-- whether the argument is optional.
CREATE FUNCTION quota_ext._check_money(amount numeric, what text, max numeric) RETURNS numeric
	LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	IF amount IS NULL THEN
		RETURN NULL;
	END IF;
	IF amount = 'NaN'::numeric OR amount = 'Infinity'::numeric OR amount = '-Infinity'::numeric THEN
		RAISE EXCEPTION '% must be a finite number', what
			USING ERRCODE = 'invalid_parameter_value', DETAIL = format('Got %s.', amount);
	END IF;
	IF amount < 0 THEN
		RAISE EXCEPTION '% must not be negative', what USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF amount > max THEN
		RAISE EXCEPTION '% is out of range', what
			USING ERRCODE = 'numeric_value_out_of_range',
			      DETAIL = format('At most %s.', max);
	END IF;
	RETURN amount;
END
$$;
COMMENT ON FUNCTION quota_ext._check_money(numeric, text, numeric) IS
	'Internal: refuse NaN, Infinity, negative and too large amounts of money (22023, 22003)';

-- Money to micro-units (1e-6) of its currency, exactly: cost quota limits
-- and counters are kept in micro-units (see doc/metering.md).
CREATE FUNCTION quota_ext._money_to_micro(amount numeric, what text) RETURNS bigint
	LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	micro numeric := amount * 1000000;
BEGIN
	IF amount IS NULL THEN PERFORM quota_ext._null_arg(what); END IF;
	PERFORM quota_ext._check_money(amount, what, 1000000000000);
	IF micro <> trunc(micro) THEN
		RAISE EXCEPTION '% has more than 6 decimal places', what
			USING ERRCODE = 'invalid_parameter_value',
			      DETAIL = format('Got %s.', quota_ext._quote_input(amount::text)),
			      HINT = 'Money budgets count micro-units (0.000001) of their currency.';
	END IF;
	RETURN micro::bigint;
END
$$;
COMMENT ON FUNCTION quota_ext._money_to_micro(numeric, text) IS
	'Internal: an amount of money as micro-units of its currency (exact, else 22023)';

-- ---------------------------------------------------------------------------
-- the price book
-- ---------------------------------------------------------------------------

CREATE SEQUENCE quota_ext.price_id_seq;

-- Price versions.  A row is never changed: a new price is a new row with a
-- later effective_from.  tenant_id NULL is the list price of the model;
-- otherwise a tenant's own price, which wins over the list price while it is
-- in force.  A row without any price (all three NULL) ends what came before:
-- for a tenant, its own price (the list price applies again); for the list
-- price, the model is unpriced from then on.  Global catalog, like models:
-- Citus would make it a reference table.
CREATE TABLE quota_ext.prices (
	price_id            bigint PRIMARY KEY DEFAULT pg_catalog.nextval('quota_ext.price_id_seq'),
	-- NULL: a default price, for every model without a price of its own
	model_id            bigint REFERENCES quota_ext.models (model_id),
	tenant_id           bigint REFERENCES quota_ext.tenants (tenant_id),
	currency            char(3) NOT NULL CHECK (currency OPERATOR(pg_catalog.~) '^[A-Z]{3}$'),
	unit_price          numeric CHECK (unit_price OPERATOR(pg_catalog.>=) 0),
	input_per_1k        numeric CHECK (input_per_1k OPERATOR(pg_catalog.>=) 0),
	output_per_1k       numeric CHECK (output_per_1k OPERATOR(pg_catalog.>=) 0),
	overage_unit_price  numeric CHECK (overage_unit_price OPERATOR(pg_catalog.>=) 0),
	effective_from      timestamptz NOT NULL,
	created_at          timestamptz NOT NULL DEFAULT pg_catalog.now(),
	UNIQUE NULLS NOT DISTINCT (model_id, tenant_id, effective_from)
);
COMMENT ON TABLE quota_ext.prices IS
	'Versioned prices per model (model_id NULL = default price of every model without one; tenant_id NULL = list price) per unit and per 1000 input/output tokens, in an ISO 4217 currency, from effective_from; never updated';

-- The price in force for a tenant's use of a model at an instant (NULL
-- fields when unpriced) and the next instant after it when that may change:
-- at each of four levels the latest version from before the instant, the
-- first level whose version has an amount wins:
--   1 the tenant's own price of the model, 2 the model's list price,
--   3 the tenant's default price (model_id NULL), 4 the list default price.
-- A version without amounts (price_clear) ends its level: the next applies.
-- next_change is the first later version at any level (NULL: none).
-- The one place of this rule: src/policy.c calls it in its kept plan,
-- _price_in_force is its first half for the other callers.  One statement
-- reads the versions of the four levels, newest first (a level's first row
-- not after the instant is its latest); PL/pgSQL, not SQL: a SQL function
-- that is SECURITY DEFINER with a SET clause cannot be inlined, so it was
-- parsed and planned again at every call, and the four-branch statements
-- it had cost most of a configuration-cache fill to start (doc/performance.md).
CREATE FUNCTION quota_ext._price_at(tenant_id bigint, model_id bigint, at timestamptz,
	OUT price quota_ext.prices, OUT next_change timestamptz)
	LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	v quota_ext.prices;
	lvl integer;
	best integer := 5;					-- levels 1 to 4; 5: none yet
	seen boolean[] := ARRAY[false, false, false, false];
BEGIN
	IF $3 IS NULL THEN
		RETURN;							-- no instant: unpriced, as the rule said
	END IF;
	-- the four levels spelled out, so that each is an index probe of
	-- (model_id, tenant_id, effective_from): "tenant_id = $1 OR tenant_id IS
	-- NULL" read every tenant's versions of the model (a review measured
	-- 110 ms a fill over 210,000 price rows, against 1.6 ms)
	FOR v IN SELECT p.* FROM quota_ext.prices p
	          WHERE (p.model_id OPERATOR(pg_catalog.=) $2 AND p.tenant_id OPERATOR(pg_catalog.=) $1)
	             OR (p.model_id OPERATOR(pg_catalog.=) $2 AND p.tenant_id IS NULL)
	             OR (p.model_id IS NULL AND p.tenant_id OPERATOR(pg_catalog.=) $1)
	             OR (p.model_id IS NULL AND p.tenant_id IS NULL)
	          ORDER BY p.effective_from DESC
	LOOP
		IF v.effective_from OPERATOR(pg_catalog.>) $3 THEN
			next_change := v.effective_from;	-- newest first: the last one is the first after
			CONTINUE;
		END IF;
		lvl := CASE WHEN v.model_id IS NOT NULL AND v.tenant_id IS NOT NULL THEN 1
		            WHEN v.model_id IS NOT NULL THEN 2
		            WHEN v.tenant_id IS NOT NULL THEN 3 ELSE 4 END;
		IF seen[lvl] THEN
			CONTINUE;						-- an older version of a level already met
		END IF;
		seen[lvl] := true;
		IF lvl OPERATOR(pg_catalog.<) best AND (v.unit_price IS NOT NULL
		   OR v.input_per_1k IS NOT NULL OR v.output_per_1k IS NOT NULL) THEN
			best := lvl;
			price := v;
		END IF;
	END LOOP;
END
$$;
COMMENT ON FUNCTION quota_ext._price_at(bigint, bigint, timestamptz) IS
	'Internal: the price version a tenant pays for a model at an instant (its own, the list price, its default, the list default) and when that may next change';

CREATE FUNCTION quota_ext._price_in_force(tenant_id bigint, model_id bigint, at timestamptz)
	RETURNS quota_ext.prices
	LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	RETURN (quota_ext._price_at($1, $2, $3)).price;	-- unpriced: a row of NULLs
END
$$;
COMMENT ON FUNCTION quota_ext._price_in_force(bigint, bigint, timestamptz) IS
	'Internal: the price version a tenant pays for a model at an instant (_price_at)';

-- Internal: check, insert and audit one price version of model mid (NULL:
-- the default price) for tenant_id (NULL: list); label names the model in
-- errors; the audit row goes to audit_tenant.  _price_insert resolves a
-- model name for it, model_price_set (57_marketplace.sql) an owner's model.
CREATE FUNCTION quota_ext._price_version_add(mid bigint, tenant_id bigint, label text,
	currency text, unit_price numeric, input_per_1k numeric, output_per_1k numeric,
	effective_from timestamptz, overage_unit_price numeric, audit_tenant bigint) RETURNS bigint
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
	p quota_ext.prices;
BEGIN
	IF _price_version_add.effective_from IS NULL THEN PERFORM quota_ext._null_arg('effective_from'); END IF;
	PERFORM quota_ext._check_money(_price_version_add.unit_price, 'unit_price', 1000000000),
	        quota_ext._check_money(_price_version_add.input_per_1k, 'input_per_1k', 1000000000),
	        quota_ext._check_money(_price_version_add.output_per_1k, 'output_per_1k', 1000000000),
	        quota_ext._check_money(_price_version_add.overage_unit_price, 'overage_unit_price', 1000000000);
	-- history is never repriced: a version starts now or later
	IF _price_version_add.effective_from < now() THEN
		RAISE EXCEPTION 'effective_from must not be in the past'
			USING ERRCODE = 'invalid_parameter_value',
			      DETAIL = format('Got %s; the transaction started at %s.', _price_version_add.effective_from, now()),
			      HINT = 'Prices are versioned: usage already recorded keeps the price it was charged.';
	END IF;
	BEGIN
		INSERT INTO quota_ext.prices (model_id, tenant_id, currency, unit_price, input_per_1k,
		                              output_per_1k, overage_unit_price, effective_from)
		VALUES (_price_version_add.mid, _price_version_add.tenant_id,
		        quota_ext._check_currency(_price_version_add.currency),
		        _price_version_add.unit_price, _price_version_add.input_per_1k,
		        _price_version_add.output_per_1k, _price_version_add.overage_unit_price,
		        _price_version_add.effective_from)
		RETURNING * INTO p;
	EXCEPTION WHEN unique_violation THEN
		RAISE EXCEPTION 'a price of model "%" already starts at %', quota_ext._quote_input(_price_version_add.label),
		                _price_version_add.effective_from
			USING ERRCODE = 'unique_violation';
	END;
	PERFORM quota_ext._audit(_price_version_add.audit_tenant,
	                         CASE WHEN p.currency = 'XXX' AND p.unit_price IS NULL
	                                   AND p.input_per_1k IS NULL AND p.output_per_1k IS NULL
	                              THEN 'price_clear' ELSE 'price_set' END,
	                         'price', p.price_id::text, NULL, to_jsonb(p));
	RETURN p.price_id;
END
$$;
COMMENT ON FUNCTION quota_ext._price_version_add(bigint, bigint, text, text, numeric, numeric, numeric, timestamptz, numeric, bigint) IS
	'Internal: check, insert and audit a price version of a model id';

CREATE FUNCTION quota_ext._price_insert(model text, currency text, unit_price numeric,
	input_per_1k numeric, output_per_1k numeric, effective_from timestamptz, tenant_id bigint,
	overage_unit_price numeric) RETURNS bigint
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	mid bigint;
BEGIN
	PERFORM quota_ext._check_label('model', _price_insert.model, 200);
	IF _price_insert.effective_from IS NULL THEN PERFORM quota_ext._null_arg('effective_from'); END IF;
	IF _price_insert.tenant_id IS NOT NULL THEN
		PERFORM quota_ext._tenant_for_update(_price_insert.tenant_id);
		IF _price_insert.model <> '*' THEN
			mid := quota_ext._model_resolve(_price_insert.tenant_id, _price_insert.model);
		END IF;
	ELSE
		PERFORM quota_ext._no_tenant_context('set a list price');
		SELECT m.model_id INTO mid FROM quota_ext.models m
		 WHERE m.name = _price_insert.model AND m.owner_tenant_id IS NULL;
	END IF;
	-- '*': the default price, of every model without a price of its own
	IF mid IS NULL AND _price_insert.model <> '*' THEN
		RAISE EXCEPTION 'model "%" does not exist', quota_ext._quote_input(_price_insert.model) USING ERRCODE = 'undefined_object';
	END IF;
	RETURN quota_ext._price_version_add(mid, _price_insert.tenant_id, _price_insert.model,
		_price_insert.currency, _price_insert.unit_price, _price_insert.input_per_1k,
		_price_insert.output_per_1k, _price_insert.effective_from, _price_insert.overage_unit_price,
		coalesce(_price_insert.tenant_id, 0));
END
$$;
COMMENT ON FUNCTION quota_ext._price_insert(text, text, numeric, numeric, numeric, timestamptz, bigint, numeric) IS
	'Internal: insert and audit a price version';

CREATE FUNCTION quota_ext.price_set(model text, currency text, unit_price numeric DEFAULT NULL,
	input_per_1k numeric DEFAULT NULL, output_per_1k numeric DEFAULT NULL,
	effective_from timestamptz DEFAULT now(), tenant_id bigint DEFAULT NULL,
	overage_unit_price numeric DEFAULT NULL) RETURNS bigint
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	IF currency IS NULL THEN PERFORM quota_ext._null_arg('currency'); END IF;
	IF unit_price IS NULL AND input_per_1k IS NULL AND output_per_1k IS NULL THEN
		RAISE EXCEPTION 'a price needs unit_price, input_per_1k or output_per_1k'
			USING ERRCODE = 'null_value_not_allowed',
			      HINT = 'To stop charging for a model, use quota_ext.price_clear().';
	END IF;
	RETURN quota_ext._price_insert(model, currency, unit_price, input_per_1k, output_per_1k,
	                               effective_from, tenant_id, overage_unit_price);
END
$$;
COMMENT ON FUNCTION quota_ext.price_set(text, text, numeric, numeric, numeric, timestamptz, bigint, numeric) IS
	'Add a price version of a model, or with model ''*'' the default price of every model without one (list price, or a tenant''s own with tenant_id) from effective_from; returns its price_id';

CREATE FUNCTION quota_ext.price_clear(model text, effective_from timestamptz DEFAULT now(),
	tenant_id bigint DEFAULT NULL) RETURNS bigint
	LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$ SELECT quota_ext._price_insert($1, 'XXX', NULL, NULL, NULL, $2, $3, NULL) $$;
COMMENT ON FUNCTION quota_ext.price_clear(text, timestamptz, bigint) IS
	'From effective_from: end a tenant''s own price (the list price applies again), or with tenant_id NULL the list price (a default price applies, else the model is unpriced); model ''*'': end a default price';

CREATE FUNCTION quota_ext.price_lookup(tenant_id bigint, model text, at timestamptz DEFAULT now())
	RETURNS SETOF quota_ext.prices
	LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	mid bigint;
BEGIN
	IF price_lookup.tenant_id IS NULL THEN PERFORM quota_ext._null_arg('tenant_id'); END IF;
	IF price_lookup.model IS NULL THEN PERFORM quota_ext._null_arg('model'); END IF;
	IF price_lookup.at IS NULL THEN PERFORM quota_ext._null_arg('at'); END IF;
	PERFORM quota_ext._check_tenant_access(price_lookup.tenant_id);
	PERFORM quota_ext._tenant_exists(price_lookup.tenant_id);
	mid := quota_ext._model_for(price_lookup.tenant_id, price_lookup.model);
	RETURN QUERY SELECT p.* FROM quota_ext._price_in_force(price_lookup.tenant_id, mid, price_lookup.at) p
	              WHERE p.price_id IS NOT NULL;
END
$$;
COMMENT ON FUNCTION quota_ext.price_lookup(bigint, text, timestamptz) IS
	'The price version a tenant pays for a model at an instant (no row: unpriced)';

-- ---------------------------------------------------------------------------
-- the ledger watermark
-- ---------------------------------------------------------------------------
-- The instant W before which the ledger is final: no transaction still
-- running can add a usage row with created_at < W.  A row's created_at is
-- the clock of the backend that writes it (storage.c, storage_spi.c), read
-- after that transaction got its xid (the storage code takes one first) and
-- so after the transaction's start.  So W = least(now, start of the oldest
-- other transaction that has an xid) — read from the live proc array
-- through pg_stat_activity, after pg_stat_clear_snapshot() — bounds every
-- row still to commit; a transaction without an xid yet writes rows later
-- than now.  The caller's own transaction is left out: its rows are visible
-- to it and commit (or roll back) with whatever it writes from them.
-- Prepared transactions are not in pg_stat_activity: while one holds a lock
-- on the ledger (it inserted usage) the answer is NULL, "cannot advance".
-- They are looked for after the proc array was read: a transaction that
-- prepares in between is then found either way.
-- Readers must use READ COMMITTED, so that their next statement's snapshot
-- sees every transaction that ended before W was taken.
-- On Citus (after distribute()) the rows are written on the workers, and
-- the bound is taken on every node: _usage_watermark_citus() (65_citus.sql).
CREATE FUNCTION quota_ext._usage_watermark() RETURNS timestamptz
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	IF current_setting('transaction_isolation') <> 'read committed' THEN
		RAISE EXCEPTION 'metering and billing functions need READ COMMITTED isolation'
			USING ERRCODE = 'invalid_transaction_state',
			      HINT = 'Their exactness relies on a new snapshot per statement.';
	END IF;
	IF quota_ext._on_citus() THEN
		RETURN quota_ext._usage_watermark_citus();
	END IF;
	RETURN quota_ext._usage_watermark_local(false);
END
$$;
COMMENT ON FUNCTION quota_ext._usage_watermark() IS
	'Internal: the instant before which no usage row can still appear (NULL while a prepared transaction holds ledger rows)';

-- The bound of this node (above), from the backends of this database.
-- on_citus false: a single node, whose ledger is quota_ext.usage.
-- Otherwise a node of a Citus cluster, called by _usage_watermark_citus():
-- the ledger is also each shard of it and of its partitions
-- (quota_ext.usage_<shard id>, usage_p<month>_<shard id>, usage_default_<shard id>).
-- Only the calling backend is left out: a backend that serves the caller's
-- distributed transaction on a worker is not (any login can claim a Citus
-- transaction number with assign_distributed_transaction_id(), and so hide
-- its open charge; review, session 6); it only holds W back by the moment
-- since that backend's transaction began.  A backend reporting no
-- transaction start (track_activities off) counts from its own start.
CREATE FUNCTION quota_ext._usage_watermark_local(on_citus boolean)
	RETURNS timestamptz
	LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	now0 timestamptz := clock_timestamp();
	oldest timestamptz;
BEGIN
	PERFORM pg_stat_clear_snapshot();
	SELECT min(coalesce(a.xact_start, a.backend_start)) INTO oldest
	  FROM pg_stat_activity a
	 WHERE a.backend_xid IS NOT NULL AND a.pid <> pg_backend_pid()
	   AND a.datid = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database());
	-- a prepared transaction that may have written ledger rows (a write
	-- lock on the ledger; a prepared read, which any login can leave behind,
	-- holds none of these and does not stop billing)
	IF EXISTS (SELECT 1 FROM pg_locks l
	            WHERE l.pid IS NULL AND l.locktype = 'relation'
	              AND l.mode NOT IN ('AccessShareLock', 'RowShareLock')
	              AND (l.relation = 'quota_ext.usage'::regclass
	                   OR (on_citus
	                       AND l.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())
	                       AND l.relation IN (SELECT c.oid FROM pg_class c
	                                           WHERE c.relnamespace = 'quota_ext'::regnamespace
	                                             AND c.relname ~ '^usage_(p[0-9]+_|default_)?[0-9]+$')))) THEN
		RETURN NULL;
	END IF;
	RETURN least(now0, oldest);
END
$$;
COMMENT ON FUNCTION quota_ext._usage_watermark_local(boolean) IS
	'Internal: this node''s bound of the usage watermark (NULL while a prepared transaction holds ledger rows); see _usage_watermark()';

-- ---------------------------------------------------------------------------
-- ledger partitions
-- ---------------------------------------------------------------------------
-- Monthly partitions usage_pYYYYMM by created_at (UTC months), created
-- ahead by usage_partitions_maintain() (pg_cron, daily).  They are made at
-- run time, so they are not members of the extension: pg_dump dumps them
-- as ordinary tables attached to quota_ext.usage, with their data and
-- policies, and restore recreates them after CREATE EXTENSION (see
-- doc/operations.md and test/t/002_dump_restore.pl).

-- The indexes of usage_default (see 30_quota.sql), FORCE RLS and the two
-- policies on a new partition (reads through the parent use the parent's
-- policies; these guard direct access).
CREATE FUNCTION quota_ext._usage_partition_secure(part regclass) RETURNS void
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	n text := (SELECT c.relname FROM pg_class c WHERE c.oid = part);
BEGIN
	EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I PRIMARY KEY (tenant_id, usage_id, created_at)',
	               part, n || '_pkey');
	EXECUTE format('CREATE INDEX %I ON %s (tenant_id, created_at)', n || '_tenant_created', part);
	EXECUTE format('CREATE INDEX %I ON %s USING brin (created_at)', n || '_created_brin', part);
	PERFORM quota_ext._secure_tenant_table(part, app_select => false);
END
$$;
COMMENT ON FUNCTION quota_ext._usage_partition_secure(regclass) IS
	'Internal: row-level security of a ledger partition';

-- ACCESS EXCLUSIVE on the ledger (and on one partition, and the default
-- partition), as detaching a partition or moving rows out of the default
-- one needs it, without ever making charges wait long behind it: each try
-- waits at most 100 ms (this function's lock_timeout), so the charges
-- queued behind the request wait no longer; up to three tries, with a
-- pause between them in which the queue drains.  false: not granted, and
-- nothing is held.
CREATE FUNCTION quota_ext._usage_lock_briefly(part regclass) RETURNS boolean
	LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp SET lock_timeout = '100ms' AS $$
BEGIN
	FOR i IN 1 .. 3 LOOP
		BEGIN
			LOCK TABLE ONLY quota_ext.usage IN ACCESS EXCLUSIVE MODE;
			IF part IS NOT NULL THEN
				EXECUTE format('LOCK TABLE ONLY %s IN ACCESS EXCLUSIVE MODE', part);
			END IF;
			LOCK TABLE ONLY quota_ext.usage_default IN ACCESS EXCLUSIVE MODE;
			RETURN true;
		EXCEPTION WHEN lock_not_available THEN
			-- (the subtransaction's rollback released what it had taken)
			IF i < 3 THEN
				PERFORM pg_sleep(0.1 * i);
			END IF;
		END;
	END LOOP;
	RETURN false;
END
$$;
COMMENT ON FUNCTION quota_ext._usage_lock_briefly(regclass) IS
	'Internal: ACCESS EXCLUSIVE on the ledger (a partition, the default partition) within 3 tries of 100 ms, else false';

-- Maintenance never queues a lock that the hot path would then queue
-- behind for long (issue 12, finding 12).  A month ahead (the daily case:
-- partitions are made three months ahead) is made as a standalone table
-- (LIKE the ledger, with the indexes, FORCE RLS and policies of
-- _usage_partition_secure) and then ATTACHed: ATTACH PARTITION takes SHARE
-- UPDATE EXCLUSIVE on the ledger, which no reader or writer conflicts with,
-- where CREATE TABLE ... PARTITION OF took ACCESS EXCLUSIVE and so queued
-- every invoke behind any transaction left open on the ledger.  ATTACH also
-- takes ACCESS EXCLUSIVE on the default partition (its constraint changes);
-- charges never touch it, but settlements, refunds and readers of the whole
-- ledger do, so maintenance asks for it NOWAIT.  A statement planned before
-- the ATTACH commits does not see the new partition; that is harmless for a
-- month that has not begun: it holds no rows and no charge routes there.
-- This month or an earlier one (maintenance started late; rows to move out
-- of the default partition) is different: a reader planned before the move
-- and running after it would miss the moved rows (a rollup would skip them
-- for good), and a charge could be routed by the old partitions.  Those
-- months are made under ACCESS EXCLUSIVE on the ledger, which every
-- statement takes in order before planning, taken by _usage_lock_briefly().
-- Months whose lock is not granted are skipped with a WARNING and returned
-- as 'skipped'; the next scheduled run makes them.
CREATE FUNCTION quota_ext.usage_partitions_maintain(months_ahead integer DEFAULT 3)
	RETURNS TABLE (partition text, action text)
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
	first timestamptz := date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
	m timestamptz;
	months timestamptz[];
	begun timestamptz[];
	ahead timestamptz[];
	skipped timestamptz[] := '{}';
	hi timestamptz;
	part text;
	moved bigint;
BEGIN
	IF months_ahead IS NULL THEN PERFORM quota_ext._null_arg('months_ahead'); END IF;
	IF months_ahead < 0 OR months_ahead > 120 THEN
		RAISE EXCEPTION 'months_ahead must be between 0 and 120'
			USING ERRCODE = 'invalid_parameter_value', DETAIL = format('Got %s.', months_ahead);
	END IF;
	PERFORM quota_ext._admin_only('usage_partitions_maintain');
	-- serialize maintenance runs
	-- one run at a time: SHARE UPDATE EXCLUSIVE conflicts with itself, not
	-- with charges (ROW EXCLUSIVE) or readers, and needs a privilege no role
	-- but the owner has (an advisory lock, used before, was open to every
	-- login: one with no grants held it for as long as its session lived)
	LOCK TABLE ONLY quota_ext.usage IN SHARE UPDATE EXCLUSIVE MODE;
	-- the months ahead, and any month whose rows sit in the default partition
	-- (written before maintenance ran, or restored), that have no partition
	SELECT array_agg(x.m ORDER BY x.m) INTO months
	  -- (months stepped as UTC timestamps: timestamptz + '1 month' steps in the
	  -- session's TimeZone, and across a DST change lands an hour off the
	  -- month boundary, so partitions were misnamed or refused)
	  FROM (SELECT g AT TIME ZONE 'UTC' AS m
	          FROM generate_series(first AT TIME ZONE 'UTC',
	                               (first AT TIME ZONE 'UTC') + make_interval(months => months_ahead),
	                               interval '1 month') g
	        UNION
	        SELECT DISTINCT date_trunc('month', d.created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
	          FROM ONLY quota_ext.usage_default d) x
	 WHERE NOT EXISTS (SELECT 1 FROM pg_class c
	                    WHERE c.relnamespace = 'quota_ext'::regnamespace
	                      AND c.relname = 'usage_p' || to_char(x.m AT TIME ZONE 'UTC', 'YYYYMM')
	                      AND EXISTS (SELECT 1 FROM pg_inherits i
	                                   WHERE i.inhparent = 'quota_ext.usage'::regclass
	                                     AND i.inhrelid = c.oid));
	IF months IS NULL THEN
		RETURN;
	END IF;
	-- (a row's created_at is never in the future: months ahead hold no rows)
	SELECT coalesce(array_agg(x ORDER BY x) FILTER (WHERE x <= clock_timestamp()), '{}'),
	       coalesce(array_agg(x ORDER BY x) FILTER (WHERE x > clock_timestamp()), '{}')
	  INTO begun, ahead
	  FROM unnest(months) x;
	IF cardinality(begun) > 0 THEN
		IF NOT quota_ext._usage_lock_briefly(NULL) THEN
			skipped := begun;
			begun := '{}';
		END IF;
	END IF;
	IF cardinality(ahead) > 0 AND cardinality(begun) = 0 THEN
		-- the ledger in the mode ATTACH takes (readers and writers go on),
		-- then the default partition without ever waiting for it
		LOCK TABLE ONLY quota_ext.usage IN SHARE UPDATE EXCLUSIVE MODE;
		BEGIN
			LOCK TABLE ONLY quota_ext.usage_default IN ACCESS EXCLUSIVE MODE NOWAIT;
		EXCEPTION WHEN lock_not_available THEN
			skipped := skipped || ahead;
			ahead := '{}';
		END;
	END IF;
	IF cardinality(skipped) > 0 THEN
		RAISE WARNING 'usage_partitions_maintain skipped % month(s): other transactions are using quota_ext.usage',
		              cardinality(skipped)
			USING DETAIL = 'Making a partition locks the default partition (and, for a month that has begun, the ledger); waiting for that would make charges, settlements and refunds wait behind those transactions.',
			      HINT = 'The next scheduled run makes them; long transactions on quota_ext.usage delay it.';
		RETURN QUERY SELECT 'usage_p' || to_char(x AT TIME ZONE 'UTC', 'YYYYMM'), 'skipped'
		               FROM unnest(skipped) x ORDER BY 1;
	END IF;
	FOREACH m IN ARRAY begun || ahead
	LOOP
		part := 'usage_p' || to_char(m AT TIME ZONE 'UTC', 'YYYYMM');
		hi := ((m AT TIME ZONE 'UTC') + interval '1 month') AT TIME ZONE 'UTC';
		IF EXISTS (SELECT 1 FROM pg_class c
		            WHERE c.relnamespace = 'quota_ext'::regnamespace AND c.relname = part) THEN
			RAISE EXCEPTION 'table quota_ext.% exists but is not a partition of quota_ext.usage', part
				USING ERRCODE = 'object_not_in_prerequisite_state',
				      HINT = 'Rename or drop the detached table, then run maintenance again.';
		END IF;
		EXECUTE format('CREATE TABLE quota_ext.%I (LIKE quota_ext.usage INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', part);
		-- rows of that month already in the default partition move in
		EXECUTE format('INSERT INTO quota_ext.%I SELECT * FROM ONLY quota_ext.usage_default d '
		               'WHERE d.created_at >= $1 AND d.created_at < $2', part) USING m, hi;
		GET DIAGNOSTICS moved = ROW_COUNT;
		IF moved > 0 THEN
			DELETE FROM ONLY quota_ext.usage_default d WHERE d.created_at >= m AND d.created_at < hi;
		END IF;
		PERFORM quota_ext._usage_partition_secure(format('quota_ext.%I', part)::regclass);
		EXECUTE format('ALTER TABLE quota_ext.usage ATTACH PARTITION quota_ext.%I FOR VALUES FROM (%L) TO (%L)',
		               part, m, hi);
		-- On Citus the ATTACH distributed the new table with the ledger
		-- (co-located; its shards get the indexes, RLS, policies and grants
		-- made above) and copied the moved rows into its shards: the local
		-- copy left in the coordinator's shell goes (doc/scaling.md)
		IF moved > 0 AND quota_ext._on_citus() THEN
			EXECUTE format('SELECT pg_catalog.truncate_local_data_after_distributing_table(%L)',
			               format('quota_ext.%I', part));
		END IF;
		PERFORM quota_ext._audit(0, 'usage_partition_create', 'table', 'quota_ext.' || part, NULL,
		                         jsonb_build_object('from', m, 'to', hi, 'rows_moved', moved));
		partition := part;
		action := 'created';
		RETURN NEXT;
	END LOOP;
END
$$;
COMMENT ON FUNCTION quota_ext.usage_partitions_maintain(integer) IS
	'Create the monthly ledger partitions from this month to months_ahead (idempotent; moves rows out of the default partition; never queues behind a transaction on the ledger: skipped months are returned and made by the next run)';

-- Detaching needs ACCESS EXCLUSIVE on the ledger, which every invoke queues
-- behind while it is waited for: _usage_lock_briefly() bounds each wait to
-- 100 ms, and partitions whose lock is not granted are skipped (WARNING,
-- returned as 'skipped') for the next scheduled run.
CREATE FUNCTION quota_ext.usage_partition_detach(before timestamptz)
	RETURNS TABLE (partition text, action text)
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	r record;
	w timestamptz;
	skipping boolean := false;
BEGIN
	IF before IS NULL THEN PERFORM quota_ext._null_arg('before'); END IF;
	PERFORM quota_ext._admin_only('usage_partition_detach');
	-- one run at a time: SHARE UPDATE EXCLUSIVE conflicts with itself, not
	-- with charges (ROW EXCLUSIVE) or readers, and needs a privilege no role
	-- but the owner has (an advisory lock, used before, was open to every
	-- login: one with no grants held it for as long as its session lived)
	LOCK TABLE ONLY quota_ext.usage IN SHARE UPDATE EXCLUSIVE MODE;
	SELECT s.watermark INTO w FROM quota_ext.rollup_state s WHERE s.name = 'usage_daily';
	FOR r IN
		SELECT c.relname,
		       to_date(substr(c.relname, 8), 'YYYYMM')::timestamp AT TIME ZONE 'UTC' AS lo,
		       (to_date(substr(c.relname, 8), 'YYYYMM') + interval '1 month') AT TIME ZONE 'UTC' AS hi
		  FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
		 WHERE i.inhparent = 'quota_ext.usage'::regclass AND c.relname ~ '^usage_p[0-9]{6}$'
		 ORDER BY c.relname
	LOOP
		CONTINUE WHEN r.hi > before;
		-- only what the rollups have counted leaves the ledger
		IF w IS NULL OR r.hi > w THEN
			RAISE EXCEPTION 'partition quota_ext.% holds rows not yet rolled up', r.relname
				USING ERRCODE = 'object_not_in_prerequisite_state',
				      HINT = 'Run quota_ext.usage_rollup() first.';
		END IF;
		IF NOT skipping AND NOT quota_ext._usage_lock_briefly(format('quota_ext.%I', r.relname)::regclass) THEN
			skipping := true;
			RAISE WARNING 'usage_partition_detach skipped: other transactions kept quota_ext.usage locked'
				USING DETAIL = 'Three tries of 100 ms each; waiting longer would make charges wait behind those transactions.',
				      HINT = 'The next scheduled run detaches the partitions left; long transactions on quota_ext.usage delay it.';
		END IF;
		IF skipping THEN
			partition := r.relname::text;
			action := 'skipped';
			RETURN NEXT;
			CONTINUE;
		END IF;
		EXECUTE format('ALTER TABLE quota_ext.usage DETACH PARTITION quota_ext.%I', r.relname);
		PERFORM quota_ext._audit(0, 'usage_partition_detach', 'table', 'quota_ext.' || r.relname,
		                         jsonb_build_object('from', r.lo, 'to', r.hi), NULL);
		partition := r.relname::text;
		action := 'detached';
		RETURN NEXT;
	END LOOP;
END
$$;
COMMENT ON FUNCTION quota_ext.usage_partition_detach(timestamptz) IS
	'Detach the monthly ledger partitions that end at or before an instant (they stay as plain tables to archive or drop); waits at most 100 ms at a time for the ledger''s lock, else skips them (returned as skipped) for the next run';

-- ---------------------------------------------------------------------------
-- rollups
-- ---------------------------------------------------------------------------
-- usage_daily: per tenant, local day (the tenant's time zone when rolled
-- up), model, user (0 = none) and currency ('XXX' = unpriced).  Maintained
-- by usage_rollup() (pg_cron, every minute), never by the hot path: a
-- per-call upsert would put a second contended row in front of every call
-- of a hot tenant.  usage_rollup() adds the ledger rows with created_at in
-- [previous watermark, new watermark) — see _usage_watermark() — so every
-- row is counted exactly once; readers add the rows since the watermark.
-- Sums are numeric (issue 12, finding 5): a call carries up to 10^15 units
-- and tokens, so one tenant's ten thousand calls pass the bigint range, and
-- one overflowing group would fail the rollup of every tenant.  calls stay
-- bigint: a ledger row counts -1, 0 or 1 calls, and no table holds 2^63 rows.
CREATE TABLE quota_ext.usage_daily (
	tenant_id      bigint NOT NULL,
	day            date NOT NULL,
	model_id       bigint NOT NULL,
	user_id        bigint NOT NULL,
	currency       char(3) NOT NULL,
	calls          bigint NOT NULL,
	units          numeric NOT NULL,
	input_tokens   numeric NOT NULL,
	output_tokens  numeric NOT NULL,
	overage_units  numeric NOT NULL,
	cost           numeric NOT NULL,
	PRIMARY KEY (tenant_id, day, model_id, user_id, currency)
);
COMMENT ON TABLE quota_ext.usage_daily IS
	'Usage per tenant, local day, model, user (0 = none) and currency (XXX = unpriced), up to quota_ext.rollup_state''s watermark';

-- usage_billing_daily: the rows per tenant, UTC day of occurrence, UTC day
-- of writing, model and price version (0 = charged without a price: those
-- are invoiced too, as unpriced lines), for billing_close()
-- (doc/billing.md §5): with both days, a close decides from the rollup
-- alone, for every row written before the day of the previous close's
-- watermark or after it, whether the row is in the period, an adjustment,
-- or billed before.  Kept by usage_rollup() with usage_daily, up to the
-- same watermark.
CREATE TABLE quota_ext.usage_billing_daily (
	tenant_id      bigint NOT NULL,
	created_day    date NOT NULL,
	occurred_day   date NOT NULL,
	model_id       bigint NOT NULL,
	price_id       bigint NOT NULL,
	calls          bigint NOT NULL,
	units          numeric NOT NULL,
	input_tokens   numeric NOT NULL,
	output_tokens  numeric NOT NULL,
	overage_units  numeric NOT NULL,
	cost           numeric NOT NULL,
	PRIMARY KEY (tenant_id, created_day, occurred_day, model_id, price_id)
);
-- a close reads the days written since the previous close's watermark
CREATE INDEX usage_billing_daily_created ON quota_ext.usage_billing_daily (created_day);
COMMENT ON TABLE quota_ext.usage_billing_daily IS
	'Usage per UTC day written, tenant, UTC day of occurrence, model and price version (0 = unpriced), up to quota_ext.rollup_state''s watermark (for billing_close)';

-- Global maintenance state (no row until the first rollup).
CREATE TABLE quota_ext.rollup_state (
	name        text PRIMARY KEY,
	watermark   timestamptz NOT NULL,
	rows_total  bigint NOT NULL DEFAULT 0,
	updated_at  timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE quota_ext.rollup_state IS
	'Rollup watermarks: every usage row with created_at before watermark is in usage_daily';

CREATE FUNCTION quota_ext.usage_rollup() RETURNS bigint
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	w_old timestamptz;
	w_new timestamptz;
	n bigint;
	nb bigint;
BEGIN
	PERFORM quota_ext._admin_only('usage_rollup');
	INSERT INTO quota_ext.rollup_state (name, watermark) VALUES ('usage_daily', '-infinity')
	ON CONFLICT (name) DO NOTHING;
	SELECT s.watermark INTO w_old FROM quota_ext.rollup_state s
	 WHERE s.name = 'usage_daily' FOR UPDATE;
	w_new := quota_ext._usage_watermark();
	IF w_new IS NULL OR w_new <= w_old THEN
		RETURN 0;
	END IF;
	INSERT INTO quota_ext.usage_daily AS d (tenant_id, day, model_id, user_id, currency, calls,
	                                         units, input_tokens, output_tokens, overage_units, cost)
	SELECT u.tenant_id, (u.occurred_at AT TIME ZONE t.timezone)::date, u.model_id,
	       coalesce(u.user_id, 0), coalesce(p.currency, 'XXX'),
	       sum(u.calls), sum(u.units), coalesce(sum(u.input_tokens), 0),
	       coalesce(sum(u.output_tokens), 0), sum(u.overage_units), sum(u.cost)
	  FROM quota_ext.usage u
	  JOIN quota_ext.tenants t ON t.tenant_id = u.tenant_id
	  LEFT JOIN quota_ext.prices p ON p.price_id = u.price_id
	 WHERE u.created_at >= w_old AND u.created_at < w_new
	 GROUP BY 1, 2, 3, 4, 5
	ON CONFLICT (tenant_id, day, model_id, user_id, currency) DO UPDATE
	   SET calls = d.calls + EXCLUDED.calls, units = d.units + EXCLUDED.units,
	       input_tokens = d.input_tokens + EXCLUDED.input_tokens,
	       output_tokens = d.output_tokens + EXCLUDED.output_tokens,
	       overage_units = d.overage_units + EXCLUDED.overage_units,
	       cost = d.cost + EXCLUDED.cost;
	GET DIAGNOSTICS n = ROW_COUNT;
	INSERT INTO quota_ext.usage_billing_daily AS b (tenant_id, created_day, occurred_day, model_id,
	                                                 price_id, calls, units, input_tokens,
	                                                 output_tokens, overage_units, cost)
	SELECT u.tenant_id, (u.created_at AT TIME ZONE 'UTC')::date,
	       (u.occurred_at AT TIME ZONE 'UTC')::date, u.model_id, coalesce(u.price_id, 0),
	       sum(u.calls), sum(u.units), coalesce(sum(u.input_tokens), 0),
	       coalesce(sum(u.output_tokens), 0), sum(u.overage_units), sum(u.cost)
	  FROM quota_ext.usage u
	 WHERE u.created_at >= w_old AND u.created_at < w_new
	 GROUP BY 1, 2, 3, 4, 5
	ON CONFLICT (tenant_id, created_day, occurred_day, model_id, price_id) DO UPDATE
	   SET calls = b.calls + EXCLUDED.calls, units = b.units + EXCLUDED.units,
	       input_tokens = b.input_tokens + EXCLUDED.input_tokens,
	       output_tokens = b.output_tokens + EXCLUDED.output_tokens,
	       overage_units = b.overage_units + EXCLUDED.overage_units,
	       cost = b.cost + EXCLUDED.cost;
	-- fresh statistics once the billing rollup has grown by a tenth (the
	-- first run after a load, a backlog), so that billing_close plans its
	-- aggregate by them rather than by an empty table's
	GET DIAGNOSTICS nb = ROW_COUNT;
	IF nb > 1000 AND nb > 0.1 * (SELECT c.reltuples FROM pg_class c
	                              WHERE c.oid = 'quota_ext.usage_billing_daily'::regclass) THEN
		ANALYZE quota_ext.usage_billing_daily;
	END IF;
	UPDATE quota_ext.rollup_state SET watermark = w_new, rows_total = rows_total + n,
	       updated_at = now()
	 WHERE name = 'usage_daily';
	RETURN n;
END
$$;
COMMENT ON FUNCTION quota_ext.usage_rollup() IS
	'Add the usage rows that became final since the last run to usage_daily and usage_billing_daily (for pg_cron, every minute); returns the usage_daily rows touched';

-- Usage of one tenant per local day, model, user and currency for the days
-- [from_day, to_day]: usage_daily up to the watermark plus the ledger rows
-- written since (through the (tenant_id, created_at) index).  All read in
-- the caller's snapshot (a STABLE function's statements take no new one),
-- in which a rollup is all or nothing.  PL/pgSQL, the tenant named on each
-- per-tenant table and the reference tables (tenants, rollup_state) read by
-- statements of their own: on Citus the ledger statement then routes to the
-- tenant's shard (doc/design.md §8); as a parameterised SQL function Citus
-- could not plan it.
CREATE FUNCTION quota_ext._usage_days(tenant_id bigint, from_day date, to_day date)
	RETURNS TABLE (day date, model_id bigint, user_id bigint, currency text, calls bigint,
	               units numeric, input_tokens numeric, output_tokens numeric,
	               overage_units numeric, cost numeric)
	-- SET jit = off: the ledger tail's bound is known only at run time, so its plan is
	-- costed for a third of the ledger: past ~5M rows that crosses
	-- jit_above_cost and every summary paid ~18 ms of JIT compilation for
	-- a handful of rows.
	LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET jit = off AS $$
#variable_conflict use_column
DECLARE
	tid bigint := _usage_days.tenant_id;
	tz text;
	w timestamptz;
BEGIN
	SELECT t.timezone INTO tz FROM quota_ext.tenants t WHERE t.tenant_id = tid;
	IF NOT FOUND THEN
		RETURN;
	END IF;
	SELECT s.watermark INTO w FROM quota_ext.rollup_state s WHERE s.name = 'usage_daily';
	RETURN QUERY
	SELECT x.day, x.model_id, x.user_id, x.currency, sum(x.calls)::bigint, sum(x.units),
	       sum(x.input_tokens), sum(x.output_tokens), sum(x.overage_units), sum(x.cost)
	  FROM (SELECT d.day, d.model_id, d.user_id, d.currency::text AS currency, d.calls, d.units,
	               d.input_tokens, d.output_tokens, d.overage_units, d.cost
	          FROM quota_ext.usage_daily d
	         WHERE d.tenant_id = tid AND d.day >= from_day AND d.day <= to_day
	        UNION ALL
	        SELECT (u.occurred_at AT TIME ZONE tz)::date, u.model_id, coalesce(u.user_id, 0),
	               coalesce(p.currency, 'XXX'), u.calls, u.units, coalesce(u.input_tokens, 0),
	               coalesce(u.output_tokens, 0), u.overage_units, u.cost
	          FROM quota_ext.usage u
	          LEFT JOIN quota_ext.prices p ON p.price_id = u.price_id
	         WHERE u.tenant_id = tid
	           AND u.created_at >= coalesce(w, '-infinity')
	           AND (u.occurred_at AT TIME ZONE tz)::date >= from_day
	           AND (u.occurred_at AT TIME ZONE tz)::date <= to_day) x
	 GROUP BY 1, 2, 3, 4;
END
$$;
COMMENT ON FUNCTION quota_ext._usage_days(bigint, date, date) IS
	'Internal: a tenant''s usage per local day, model, user and currency from rollups plus the ledger tail';

CREATE FUNCTION quota_ext.usage_report(tenant_id bigint, "from" timestamptz, "to" timestamptz,
	group_by text DEFAULT 'model')
	RETURNS TABLE (model text, day date, user_id bigint, currency text, calls bigint, units numeric,
	               input_tokens numeric, output_tokens numeric, overage_units numeric, cost numeric)
	LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	tz text;
	d0 date;
	d1 date;
BEGIN
	IF usage_report.tenant_id IS NULL THEN PERFORM quota_ext._null_arg('tenant_id'); END IF;
	IF usage_report."from" IS NULL THEN PERFORM quota_ext._null_arg('from'); END IF;
	IF usage_report."to" IS NULL THEN PERFORM quota_ext._null_arg('to'); END IF;
	IF usage_report.group_by IS NULL THEN PERFORM quota_ext._null_arg('group_by'); END IF;
	IF usage_report.group_by <> ALL (ARRAY['model', 'day', 'user']) THEN
		RAISE EXCEPTION 'invalid group_by "%"', quota_ext._quote_input(usage_report.group_by)
			USING ERRCODE = 'invalid_parameter_value', HINT = 'Use model, day or user.';
	END IF;
	IF NOT (usage_report."from" < usage_report."to") THEN
		RAISE EXCEPTION '"from" must be before "to"' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	PERFORM quota_ext._check_tenant_access(usage_report.tenant_id);
	SELECT t.timezone INTO tz FROM quota_ext.tenants t WHERE t.tenant_id = usage_report.tenant_id;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'tenant % does not exist', usage_report.tenant_id USING ERRCODE = 'undefined_object';
	END IF;
	-- day resolution: every local day that [from, to) touches
	d0 := (usage_report."from" AT TIME ZONE tz)::date;
	d1 := ((usage_report."to" - interval '1 microsecond') AT TIME ZONE tz)::date;
	RETURN QUERY
	SELECT CASE WHEN usage_report.group_by = 'model' THEN m.name END,
	       CASE WHEN usage_report.group_by = 'day' THEN x.day END,
	       CASE WHEN usage_report.group_by = 'user' THEN nullif(x.user_id, 0) END,
	       nullif(x.currency, 'XXX'),
	       sum(x.calls)::bigint, sum(x.units), sum(x.input_tokens),
	       sum(x.output_tokens), sum(x.overage_units), sum(x.cost)
	  FROM quota_ext._usage_days(usage_report.tenant_id, d0, d1) x
	  JOIN quota_ext.models m ON m.model_id = x.model_id
	 GROUP BY 1, 2, 3, 4
	 ORDER BY 1, 2, 3, 4;
END
$$;
COMMENT ON FUNCTION quota_ext.usage_report(bigint, timestamptz, timestamptz, text) IS
	'A tenant''s usage and cost per model, local day or user (and currency) over the local days [from, to) touches; reads rollups, not the ledger';

-- The marketplace owner's view (issue 18): how the tenants that use an
-- owner's models use them, aggregated per model and consumer tenant, and
-- nothing else of the consumer (no users, keys, prices paid, other models).
-- Reads the ledger (exact to the row, [from, to) by occurred_at).
CREATE FUNCTION quota_ext.model_usage_by_consumer(owner_tenant_id bigint, "from" timestamptz,
	"to" timestamptz)
	RETURNS TABLE (model text, consumer_tenant_id bigint, calls bigint, units numeric,
	               input_tokens numeric, output_tokens numeric)
	LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	IF $1 IS NULL THEN PERFORM quota_ext._null_arg('owner_tenant_id'); END IF;
	IF $2 IS NULL THEN PERFORM quota_ext._null_arg('from'); END IF;
	IF $3 IS NULL THEN PERFORM quota_ext._null_arg('to'); END IF;
	IF NOT ($2 < $3) THEN
		RAISE EXCEPTION '"from" must be before "to"' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	-- the ledger of every consumer tenant is read: a bounded window
	-- (SECURITY.md finding 1)
	IF NOT (isfinite($2) AND isfinite($3))
	   OR extract(epoch FROM $3) - extract(epoch FROM $2) > 93 * 86400 THEN
		RAISE EXCEPTION 'the window of model_usage_by_consumer may span at most 93 days'
			USING ERRCODE = 'invalid_parameter_value',
			      HINT = 'Ask month by month.';
	END IF;
	PERFORM quota_ext._check_tenant_access($1);
	PERFORM quota_ext._tenant_exists($1);
	RETURN QUERY
	SELECT m.name, u.tenant_id, sum(u.calls)::bigint, sum(u.units),
	       coalesce(sum(u.input_tokens), 0), coalesce(sum(u.output_tokens), 0)
	  FROM quota_ext.models m
	  JOIN quota_ext.usage u ON u.model_id = m.model_id
	 WHERE m.owner_tenant_id = $1
	   AND u.tenant_id IS NOT NULL
	   AND u.occurred_at >= $2 AND u.occurred_at < $3
	   -- created_at >= occurred_at always: prunes the ledger's partitions
	   -- and uses its indexes (without it every call read every tenant's ledger)
	   AND u.created_at >= $2
	 GROUP BY m.name, u.tenant_id
	 ORDER BY m.name, u.tenant_id;
END
$$;
COMMENT ON FUNCTION quota_ext.model_usage_by_consumer(bigint, timestamptz, timestamptz) IS
	'A model owner''s view: calls, units and tokens on its models per model and consumer tenant over [from, to) (occurred_at), from the ledger; nothing else of the consumers';

-- ---------------------------------------------------------------------------
-- security of this section
-- ---------------------------------------------------------------------------

SELECT quota_ext._secure_tenant_table('quota_ext.usage_daily');
SELECT quota_ext._secure_tenant_table('quota_ext.usage_billing_daily');
-- prices: like models, a tenant sees the list prices and its own
SELECT quota_ext._secure_tenant_table('quota_ext.prices', shared_rows => true);

-- rollup_state: global maintenance state, read by quota_ext_admin only
ALTER TABLE quota_ext.rollup_state ENABLE ROW LEVEL SECURITY;
ALTER TABLE quota_ext.rollup_state FORCE ROW LEVEL SECURITY;
CREATE POLICY admin_read ON quota_ext.rollup_state FOR SELECT TO quota_ext_admin USING (true);

GRANT EXECUTE ON FUNCTION quota_ext.model_usage_by_consumer(bigint, timestamptz, timestamptz) TO quota_ext_app;
GRANT SELECT ON quota_ext.rollup_state TO quota_ext_admin;

GRANT EXECUTE ON FUNCTION
	quota_ext.price_lookup(bigint, text, timestamptz),
	quota_ext.usage_report(bigint, timestamptz, timestamptz, text)
	TO quota_ext_app;
GRANT EXECUTE ON FUNCTION
	quota_ext.price_set(text, text, numeric, numeric, numeric, timestamptz, bigint, numeric),
	quota_ext.price_clear(text, timestamptz, bigint),
	quota_ext.usage_partitions_maintain(integer),
	quota_ext.usage_partition_detach(timestamptz),
	quota_ext.usage_rollup()
	TO quota_ext_admin;
