-- bench/plpgsql_consume.sql — the hand-written comparator.
--
-- NOT PART OF THE EXTENSION.  This is the consume logic of quota_ext written
-- the way an application developer would write it in PL/pgSQL, on tables of
-- its own in schema bench, so that bench/run can measure quota_ext against
-- it on the same machine in the same run.  It does what
-- quota_ext.quota_consume() does for the benchmark's data:
--   * tenant active and the model allowed by the tenant's policy (one read);
--   * an idempotency key already used: answer "allowed" again, charge nothing;
--   * SELECT ... ORDER BY id FOR UPDATE on the tenant's quota rows (daily and
--     monthly), so concurrent calls lock in one order and never deadlock;
--   * after the locks, the clock; a row whose period_start is older than
--     the current period counts as 0 (period reset, in the tenant's zone);
--   * all-or-nothing: if any quota would exceed its limit, charge none;
--   * UPDATE the quota rows, INSERT the usage row (idempotency key unique
--     per tenant), in the caller's transaction.
-- It has no audit, no threshold events, no reservations: it is the floor of
-- what a hand-written version costs, not a reimplementation of quota_ext.
--
-- Loaded by bench/run as a superuser into a database that has schema bench.

CREATE TABLE bench.pl_tenants (
	tenant_id bigint PRIMARY KEY,
	status    text NOT NULL DEFAULT 'active',
	timezone  text NOT NULL DEFAULT 'UTC'
);

CREATE TABLE bench.pl_policies (
	tenant_id bigint NOT NULL REFERENCES bench.pl_tenants,
	model     text NOT NULL,
	allowed   boolean NOT NULL,
	PRIMARY KEY (tenant_id, model)
);

CREATE TABLE bench.pl_quotas (
	id           bigserial PRIMARY KEY,
	tenant_id    bigint NOT NULL REFERENCES bench.pl_tenants,
	period       text NOT NULL CHECK (period IN ('day', 'month')),
	metric       text NOT NULL CHECK (metric IN ('calls', 'units')),
	max_units    bigint NOT NULL,
	used         bigint NOT NULL DEFAULT 0,
	period_start timestamptz NOT NULL DEFAULT '-infinity'
) WITH (fillfactor = 50);
CREATE INDEX pl_quotas_tenant ON bench.pl_quotas (tenant_id, id);

CREATE TABLE bench.pl_usage (
	id              bigserial PRIMARY KEY,
	tenant_id       bigint NOT NULL,
	model           text NOT NULL,
	calls           integer NOT NULL,
	units           bigint NOT NULL,
	occurred_at     timestamptz NOT NULL,
	idempotency_key text
);
CREATE INDEX pl_usage_tenant_occurred ON bench.pl_usage (tenant_id, occurred_at);
CREATE UNIQUE INDEX pl_usage_idem ON bench.pl_usage (tenant_id, idempotency_key)
	WHERE idempotency_key IS NOT NULL;

CREATE FUNCTION bench.pl_consume(p_tenant bigint, p_model text, p_units bigint DEFAULT 1,
	p_idem text DEFAULT NULL) RETURNS boolean
	LANGUAGE plpgsql AS $$
DECLARE
	v_tz     text;
	v_now    timestamptz;
	v_ids    bigint[] := '{}';
	v_starts timestamptz[] := '{}';
	v_used   bigint[] := '{}';
	v_max    bigint[] := '{}';
	v_per    text[] := '{}';
	v_calls  boolean[] := '{}';
	v_start  timestamptz;
	r        record;
	i        int;
BEGIN
	SELECT t.timezone INTO v_tz
	  FROM bench.pl_tenants t
	  JOIN bench.pl_policies p ON p.tenant_id = t.tenant_id AND p.model = p_model
	 WHERE t.tenant_id = p_tenant AND t.status = 'active' AND p.allowed;
	IF NOT FOUND THEN
		RETURN false;
	END IF;

	IF p_idem IS NOT NULL
	   AND EXISTS (SELECT 1 FROM bench.pl_usage u
	                WHERE u.tenant_id = p_tenant AND u.idempotency_key = p_idem) THEN
		RETURN true;	-- a retry: charged already
	END IF;

	FOR r IN SELECT * FROM bench.pl_quotas WHERE tenant_id = p_tenant ORDER BY id FOR UPDATE LOOP
		v_ids := v_ids || r.id;
		v_starts := v_starts || r.period_start;
		v_used := v_used || r.used;
		v_max := v_max || r.max_units;
		v_per := v_per || r.period;
		v_calls := v_calls || (r.metric = 'calls');
	END LOOP;

	v_now := clock_timestamp();		-- after the locks: time never goes back under a lock
	FOR i IN 1 .. coalesce(array_length(v_ids, 1), 0) LOOP
		v_start := date_trunc(v_per[i], v_now, v_tz);
		IF v_starts[i] <> v_start THEN
			v_used[i] := 0;		-- a new period
		END IF;
		IF v_used[i] + (CASE WHEN v_calls[i] THEN 1 ELSE p_units END) > v_max[i] THEN
			RETURN false;		-- all or nothing
		END IF;
	END LOOP;

	UPDATE bench.pl_quotas q
	   SET used = CASE WHEN q.period_start = date_trunc(q.period, v_now, v_tz) THEN q.used ELSE 0 END
	              + CASE WHEN q.metric = 'calls' THEN 1 ELSE p_units END,
	       period_start = date_trunc(q.period, v_now, v_tz)
	 WHERE q.id = ANY (v_ids);
	INSERT INTO bench.pl_usage (tenant_id, model, calls, units, occurred_at, idempotency_key)
	VALUES (p_tenant, p_model, 1, p_units, v_now, p_idem);
	RETURN true;
END
$$;
COMMENT ON FUNCTION bench.pl_consume(bigint, text, bigint, text) IS
	'Benchmark comparator (not quota_ext): hand-written PL/pgSQL consume';

-- Exactness of the comparator's own tables, as bench/run prints it:
-- every counter equals the sum of its usage in its period, no blocking
-- limit is exceeded, no idempotency key is charged twice.
CREATE FUNCTION bench.pl_check(OUT counters bigint, OUT mismatched bigint, OUT over_limit bigint,
	OUT duplicate_keys bigint)
	LANGUAGE sql AS $$
	WITH c AS (
		SELECT q.*, t.timezone,
		       q.period_start + CASE q.period WHEN 'day' THEN interval '1 day'
		                                      ELSE interval '1 month' END AS period_end
		  FROM bench.pl_quotas q JOIN bench.pl_tenants t USING (tenant_id)
	), s AS (
		SELECT c.*, CASE WHEN c.period_start = '-infinity' THEN 0 ELSE
		         (SELECT coalesce(sum(CASE WHEN c.metric = 'calls' THEN u.calls ELSE u.units END), 0)
		            FROM bench.pl_usage u
		           WHERE u.tenant_id = c.tenant_id
		             AND u.occurred_at >= c.period_start AND u.occurred_at < c.period_end
		             -- period_end is computed in UTC; tenants here are all UTC
		         ) END AS summed
		  FROM c
	)
	SELECT count(*),
	       count(*) FILTER (WHERE used <> summed),
	       count(*) FILTER (WHERE used > max_units),
	       (SELECT count(*) FROM (SELECT 1 FROM bench.pl_usage WHERE idempotency_key IS NOT NULL
	                               GROUP BY tenant_id, idempotency_key HAVING count(*) > 1) d)
	  FROM s
$$;
