-- bench/setup.sql — the benchmark's data (run by bench/run as a superuser,
-- psql variables: tenants, deny_limit, escrow_slots).  Not part of the
-- extension.
--
--   tenants 1..N       tier enterprise (no tier default quota, no tier rate
--                      limit), one user with one API key, policy allowing
--                      'bench-model', quotas: daily calls and monthly units,
--                      both far above what a run can use;
--   tenant N+1         'bench-deny': the same, but a daily limit of
--                      :deny_limit calls, for the over-subscription check;
--   tenant N+2         'bench-summary': no quota; bench/run loads usage rows
--                      into its current month for the tenant_summary runs;
--   tenant N+3         'bench-hot-escrow': like 1..N, with both quotas spread
--                      over :escrow_slots escrow slots (quota_set(...,
--                      slots => N); 16 unless bench/run --escrow-slots says
--                      otherwise), when the extension has them;
--   tenant N+4         'bench-deny-escrow': like N+1, with as many slots.
-- The same tenants and quotas are mirrored in the PL/pgSQL comparator's
-- tables (bench/plpgsql_consume.sql) and in the ceiling's bench.counters.
\set ON_ERROR_STOP on
SET client_min_messages = warning;
\if :{?escrow_slots}
\else
\set escrow_slots 16
\endif

CREATE EXTENSION quota_ext;
CREATE SCHEMA bench;

-- the application's login role for the API-key paths (invoke, authenticate)
DO $$
BEGIN
	IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'bench_app') THEN
		CREATE ROLE bench_app LOGIN;
	END IF;
END
$$;
GRANT quota_ext_app TO bench_app;
GRANT USAGE ON SCHEMA bench TO bench_app;

SELECT quota_ext.model_register('bench-model') AS model_id \gset

-- tenants, users and keys through the public API
CREATE TABLE bench.keys (
	i         integer PRIMARY KEY,
	tenant_id bigint NOT NULL,
	user_id   bigint NOT NULL,
	api_key   text NOT NULL
);
GRANT SELECT ON bench.keys TO bench_app;

INSERT INTO bench.keys (i, tenant_id, user_id, api_key)
SELECT g, t.id, u.user_id, u.api_key
  FROM generate_series(1, :tenants + 1) g
 CROSS JOIN LATERAL quota_ext.tenant_create(
	CASE WHEN g <= :tenants THEN 'bench-' || g ELSE 'bench-deny' END, 'enterprise') AS t(id)
 CROSS JOIN LATERAL quota_ext.user_create(t.id, 'user' || g || '@bench.example', 'member') AS u;
SELECT quota_ext.tenant_create('bench-summary', 'enterprise') AS summary_tenant \gset
SELECT EXISTS (SELECT 1 FROM pg_proc WHERE pronamespace = 'quota_ext'::regnamespace
                 AND proname = 'quota_set' AND 'slots' = ANY (proargnames)) AS has_slots \gset
\if :has_slots
SELECT quota_ext.tenant_create('bench-hot-escrow', 'enterprise') AS hot_escrow_tenant \gset
SELECT quota_ext.tenant_create('bench-deny-escrow', 'enterprise') AS deny_escrow_tenant \gset
SELECT count(*) AS escrow_quotas FROM (
SELECT quota_ext.policy_set(t, 'bench-model', true),
       quota_ext.quota_set(t, 'daily', CASE WHEN t = :deny_escrow_tenant THEN :deny_limit ELSE 1000000000000 END,
                           metric => 'calls', slots => :escrow_slots),
       quota_ext.quota_set(t, 'monthly', 1000000000000, metric => 'units', slots => :escrow_slots)
  FROM unnest(ARRAY[:hot_escrow_tenant, :deny_escrow_tenant]::bigint[]) t) s \gset
\endif

DO $$
BEGIN
	IF EXISTS (SELECT 1 FROM bench.keys WHERE tenant_id <> i) THEN
		RAISE EXCEPTION 'bench: tenant ids are not 1..N (was the database fresh?)';
	END IF;
END
$$;

SELECT count(quota_ext.policy_set(i, 'bench-model', true)) AS policies
  FROM generate_series(1, :tenants + 2) i \gset
SELECT count(quota_ext.quota_set(i, 'daily',
	CASE WHEN i <= :tenants THEN 1000000000000 ELSE :deny_limit END, metric => 'calls'))
     + count(quota_ext.quota_set(i, 'monthly', 1000000000000, metric => 'units')) AS quotas
  FROM generate_series(1, :tenants + 1) i \gset

-- price book and ledger partitions, when the extension has them: a consume
-- then computes the cost of its usage row, and writes into this month's
-- partition, as in production
DO $$
BEGIN
	-- written straight into the price book (price_set() refuses a past
	-- effective_from), so that last month's billing rows have a price too
	IF to_regclass('quota_ext.prices') IS NOT NULL THEN
		EXECUTE $p$INSERT INTO quota_ext.prices (model_id, currency, unit_price, effective_from)
			SELECT model_id, 'USD', 0.002, now() - interval '90 days'
			  FROM quota_ext.models WHERE name = 'bench-model'$p$;
	END IF;
	IF to_regprocedure('quota_ext.usage_partitions_maintain(integer)') IS NOT NULL THEN
		PERFORM quota_ext.usage_partitions_maintain(1);
	END IF;
END
$$;

-- the ceilings' tables: one counter per tenant and an append-only log with
-- a bigserial key (like the ledger's sequence and primary key)
CREATE TABLE bench.counters (
	id   integer PRIMARY KEY,
	used bigint NOT NULL DEFAULT 0
) WITH (fillfactor = 50);
INSERT INTO bench.counters (id) SELECT generate_series(1, :tenants);
CREATE TABLE bench.log (
	id         bigserial PRIMARY KEY,
	counter_id integer NOT NULL,
	at         timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- the application's own table for the in-transaction workloads
CREATE TABLE bench.app_events (
	id        bigserial PRIMARY KEY,
	tenant_id bigint NOT NULL,
	note      text NOT NULL,
	at        timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- the rate-limit exactness probe writes each answer here (outside timing)
CREATE UNLOGGED TABLE bench.rl_probe (limited boolean NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp());
GRANT INSERT ON bench.rl_probe TO bench_app;

-- the PL/pgSQL comparator with the same tenants and quotas
\ir plpgsql_consume.sql
INSERT INTO bench.pl_tenants (tenant_id) SELECT generate_series(1, :tenants + 1);
INSERT INTO bench.pl_policies (tenant_id, model, allowed)
SELECT i, 'bench-model', true FROM generate_series(1, :tenants + 1) i;
INSERT INTO bench.pl_quotas (tenant_id, period, metric, max_units)
SELECT i, p.period, p.metric, CASE WHEN p.period = 'day' AND i > :tenants THEN :deny_limit
                                   ELSE 1000000000000 END
  FROM generate_series(1, :tenants + 1) i,
       (VALUES (1, 'day', 'calls'), (2, 'month', 'units')) AS p(o, period, metric)
 ORDER BY i, p.o;

-- Exactness of quota_ext, as bench/run prints it after every write workload:
--   counters      quota counters checked
--   mismatched    counters whose used <> sum(usage) over the counter's own
--                 period and scope (slot rows of an older period count 0)
--   over_limit    blocking quotas with used > max_units
--   duplicate_keys (tenant, idempotency key) charged by more than one row
--   lost_keys     idempotency keys whose recorded usage row is missing
CREATE FUNCTION bench.qx_check(OUT counters bigint, OUT mismatched bigint, OUT over_limit bigint,
	OUT duplicate_keys bigint, OUT lost_keys bigint)
	LANGUAGE sql AS $$
	WITH slots AS (
		SELECT tenant_id, quota_id, max(period_start) AS period_start
		  FROM quota_ext.quota_counters GROUP BY 1, 2
	), c AS (
		SELECT q.tenant_id, q.quota_id, q.metric, q.max_units, q.on_exceed, q.model_id,
		       q.user_id, q.key_id, s.period_start, b.period_end,
		       (SELECT sum(cc.used) FROM quota_ext.quota_counters cc
		         WHERE cc.tenant_id = q.tenant_id AND cc.quota_id = q.quota_id
		           AND cc.period_start = s.period_start) AS used
		  FROM quota_ext.quotas q
		  JOIN slots s USING (tenant_id, quota_id)
		  JOIN quota_ext.tenants t USING (tenant_id)
		  CROSS JOIN LATERAL quota_ext.period_bounds(q.period, t.timezone,
		         CASE WHEN s.period_start > '-infinity' THEN s.period_start ELSE now() END) b
	), v AS (
		SELECT c.*,
		       CASE WHEN c.period_start = '-infinity' THEN 0 ELSE
		       (SELECT coalesce(sum(CASE WHEN c.metric = 'calls' THEN u.calls ELSE u.units END), 0)
		          FROM quota_ext.usage u
		         WHERE u.tenant_id = c.tenant_id
		           AND u.created_at >= c.period_start	-- created_at >= occurred_at (index)
		           AND u.occurred_at >= c.period_start AND u.occurred_at < c.period_end
		           AND (c.model_id IS NULL OR u.model_id = c.model_id)
		           AND (c.user_id IS NULL OR u.user_id = c.user_id)
		           AND (c.key_id IS NULL OR u.key_id = c.key_id)) END AS summed
		  FROM c
	)
	SELECT count(*),
	       count(*) FILTER (WHERE used <> summed),
	       count(*) FILTER (WHERE on_exceed = 'block' AND used > max_units),
	       (SELECT count(*) FROM (SELECT 1 FROM quota_ext.usage
	                               WHERE idempotency_key IS NOT NULL
	                                 AND kind IN ('consume', 'reserve')
	                               GROUP BY tenant_id, idempotency_key HAVING count(*) > 1) d),
	       (SELECT count(*) FROM quota_ext.idempotency_keys k
	         WHERE k.usage_id IS NOT NULL
	           AND NOT EXISTS (SELECT 1 FROM quota_ext.usage u
	                            WHERE u.tenant_id = k.tenant_id AND u.usage_id = k.usage_id))
	  FROM v
$$;

-- the ceilings: every counter increment has its log row
CREATE FUNCTION bench.ceiling_check(OUT counters bigint, OUT mismatched bigint)
	LANGUAGE sql AS $$
	SELECT count(*), count(*) FILTER (WHERE c.used <> coalesce(l.n, 0))
	  FROM bench.counters c
	  LEFT JOIN (SELECT counter_id, count(*) AS n FROM bench.log GROUP BY 1) l ON l.counter_id = c.id
$$;

VACUUM ANALYZE;
CHECKPOINT;
\echo bench setup: :tenants tenants, :policies policies, :quotas quotas, model :model_id, summary tenant :summary_tenant
