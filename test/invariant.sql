-- test/invariant.sql — the enforcement invariant, written once for every suite.
--
-- Loaded by: pg_regress and pgTAP files (\i test/invariant.sql), the
-- isolation specs (test/specs/00_setup.spec carries a copy in its setup,
-- which the Makefile rewrites from this file whenever it changes: a spec
-- cannot include a file), and the Perl TAP tests (read and run on their
-- own nodes).  Plain SQL only (no psql meta-commands), idempotent, run as
-- a superuser (superusers bypass row-level security, so every tenant is
-- seen).  No closing curly brace anywhere, comments included: in a spec it
-- would end the setup block.
--
-- quota_test.violations() returns one row per broken rule, nothing when all
-- hold.  For every quota q, with its counter rows c (one; or one per escrow
-- slot, quotas.slots > 1):
--   ledger(a, b) = sum of usage.calls (metric calls), usage.units (units) or
--                  usage.cost in micro-units (cost) over the usage rows in
--                  q's scope (tenant; model, user, key when set) with
--                  a <= occurred_at < b and occurred_at >= q.created_at (a
--                  quota counts what happened after it was made; adjustments
--                  carry the original occurred_at)
--   counter rows       q has quotas.slots counter rows
--   counter_period     when all rows are in one period: sum(c.used) =
--                      ledger(that period)
--   current_period     used now (sum of c.used over the rows whose
--                      period_start is the current period's) =
--                      ledger(current period)
--   period_alignment   every c.period_start is the start of the period
--                      containing it
--   over_limit         0 <= used now <= max_units for on_exceed = 'block'
-- and across the ledger:
--   idempotency        one usage row per (tenant, idempotency key), and only
--                      for keys whose stored decision is allowed
--   reservation        a reservation's usage rows sum to what its status says
--                      (open: estimate; settled: actual - unbilled;
--                      cancelled/expired: 0), calls to 1 or 0
--   refund             each refund has its usage row, negating the original

CREATE SCHEMA IF NOT EXISTS quota_test;

CREATE OR REPLACE FUNCTION quota_test.violations()
	RETURNS TABLE (tenant_id bigint, object text, problem text, expected numeric, actual numeric)
	LANGUAGE sql VOLATILE
	SET search_path = pg_catalog, pg_temp
AS $$
WITH q AS (
	SELECT q.tenant_id, q.quota_id, q.period, q.metric, q.model_id, q.user_id, q.key_id,
	       q.max_units, q.on_exceed, q.created_at, q.slots, t.timezone,
	       c.nrows, c.first_start, c.last_start, c.total, c.misaligned,
	       cur.period_start AS cur_start, cur.period_end AS cur_end,
	       coalesce(c.cur_total, 0) AS used_now,
	       own.period_start AS own_start, own.period_end AS own_end
	  FROM quota_ext.quotas q
	  JOIN quota_ext.tenants t ON t.tenant_id = q.tenant_id
	  CROSS JOIN LATERAL quota_ext.period_bounds(q.period, t.timezone, clock_timestamp()) cur
	  -- the counter rows: one, or one per escrow slot
	  CROSS JOIN LATERAL (
	        SELECT count(*) AS nrows, min(x.period_start) AS first_start,
	               max(x.period_start) AS last_start, sum(x.used) AS total,
	               sum(x.used) FILTER (WHERE x.period_start = cur.period_start) AS cur_total,
	               count(*) FILTER (WHERE isfinite(x.period_start) AND
	                   (quota_ext.period_bounds(q.period, t.timezone, x.period_start)).period_start
	                   <> x.period_start) AS misaligned
	          FROM quota_ext.quota_counters x
	         WHERE x.tenant_id = q.tenant_id AND x.quota_id = q.quota_id) c
	  -- the counters' own period, when all rows are in one: lifetime, or the
	  -- period their start lies in (never-charged counters of a calendar
	  -- quota have none)
	  LEFT JOIN LATERAL (
	        SELECT b.period_start, b.period_end
	          FROM quota_ext.period_bounds(q.period, t.timezone,
	                                       CASE WHEN isfinite(c.first_start) THEN c.first_start
	                                            ELSE clock_timestamp() END) b
	         WHERE c.first_start = c.last_start
	           AND (isfinite(c.first_start) OR q.period = 'lifetime')) own ON true
),
l AS (
	SELECT q.*,
	       (SELECT coalesce(sum(CASE q.metric WHEN 'calls' THEN u.calls
	                                          WHEN 'units' THEN u.units
	                                          ELSE u.cost * 1000000 END), 0)
	          FROM quota_ext.usage u
	         WHERE u.tenant_id = q.tenant_id
	           AND (q.model_id IS NULL OR u.model_id = q.model_id)
	           AND (q.user_id IS NULL OR u.user_id = q.user_id)
	           AND (q.key_id IS NULL OR u.key_id = q.key_id)
	           AND u.occurred_at >= q.created_at
	           AND u.occurred_at >= q.cur_start AND u.occurred_at < q.cur_end) AS ledger_cur,
	       (SELECT coalesce(sum(CASE q.metric WHEN 'calls' THEN u.calls
	                                          WHEN 'units' THEN u.units
	                                          ELSE u.cost * 1000000 END), 0)
	          FROM quota_ext.usage u
	         WHERE u.tenant_id = q.tenant_id
	           AND (q.model_id IS NULL OR u.model_id = q.model_id)
	           AND (q.user_id IS NULL OR u.user_id = q.user_id)
	           AND (q.key_id IS NULL OR u.key_id = q.key_id)
	           AND u.occurred_at >= q.created_at
	           AND u.occurred_at >= q.own_start AND u.occurred_at < q.own_end) AS ledger_own
	  FROM q
)
SELECT l.tenant_id, 'quota ' || l.quota_id, 'counter rows', l.slots::numeric, l.nrows::numeric
  FROM l WHERE l.nrows <> l.slots
UNION ALL
SELECT l.tenant_id, 'quota ' || l.quota_id, 'period_alignment', 0, l.misaligned
  FROM l WHERE l.misaligned > 0
UNION ALL
SELECT l.tenant_id, 'quota ' || l.quota_id, 'counter_period', l.ledger_own, l.total
  FROM l WHERE l.own_start IS NOT NULL AND l.total <> l.ledger_own
UNION ALL
SELECT l.tenant_id, 'quota ' || l.quota_id, 'counter_period', 0, l.total
  FROM l WHERE l.nrows > 0 AND l.own_start IS NULL AND l.first_start = l.last_start
           AND l.total <> 0
UNION ALL
SELECT l.tenant_id, 'quota ' || l.quota_id, 'current_period', l.ledger_cur, l.used_now
  FROM l WHERE l.used_now <> l.ledger_cur
UNION ALL
SELECT l.tenant_id, 'quota ' || l.quota_id, 'over_limit', l.max_units, l.used_now
  FROM l WHERE l.on_exceed = 'block' AND (l.used_now > l.max_units OR l.used_now < 0)
UNION ALL
-- one usage row per idempotency key, and only for allowed decisions
SELECT k.tenant_id, 'key ' || k.idempotency_key, 'idempotency',
       CASE WHEN k.allowed THEN 1 ELSE 0 END,
       (SELECT count(*) FROM quota_ext.usage u
         WHERE u.tenant_id = k.tenant_id AND u.idempotency_key = k.idempotency_key)
  FROM quota_ext.idempotency_keys k
 WHERE (SELECT count(*) FROM quota_ext.usage u
         WHERE u.tenant_id = k.tenant_id AND u.idempotency_key = k.idempotency_key)
       <> CASE WHEN k.allowed THEN 1 ELSE 0 END
UNION ALL
SELECT u.tenant_id, 'key ' || u.idempotency_key, 'idempotency (no key row)', 0, count(*)
  FROM quota_ext.usage u
 WHERE u.idempotency_key IS NOT NULL
   AND NOT EXISTS (SELECT 1 FROM quota_ext.idempotency_keys k
                    WHERE k.tenant_id = u.tenant_id AND k.idempotency_key = u.idempotency_key)
 GROUP BY u.tenant_id, u.idempotency_key
UNION ALL
-- reservations: units and calls of their usage rows
SELECT r.tenant_id, 'reservation ' || r.reservation_id, 'reservation units',
       CASE r.status WHEN 'open' THEN r.estimate
                     WHEN 'settled' THEN r.actual - r.unbilled
                     ELSE 0 END,
       s.units
  FROM quota_ext.reservations r
  CROSS JOIN LATERAL (SELECT coalesce(sum(u.units), 0) AS units, coalesce(sum(u.calls), 0) AS calls
                        FROM quota_ext.usage u
                       WHERE u.tenant_id = r.tenant_id AND u.reservation_id = r.reservation_id) s
 WHERE s.units <> CASE r.status WHEN 'open' THEN r.estimate
                                WHEN 'settled' THEN r.actual - r.unbilled
                                ELSE 0 END
UNION ALL
SELECT r.tenant_id, 'reservation ' || r.reservation_id, 'reservation calls',
       CASE WHEN r.status IN ('open', 'settled') THEN 1 ELSE 0 END, s.calls
  FROM quota_ext.reservations r
  CROSS JOIN LATERAL (SELECT coalesce(sum(u.calls), 0) AS calls
                        FROM quota_ext.usage u
                       WHERE u.tenant_id = r.tenant_id AND u.reservation_id = r.reservation_id) s
 WHERE s.calls <> CASE WHEN r.status IN ('open', 'settled') THEN 1 ELSE 0 END
UNION ALL
-- refunds: the refund row exists and negates the original
SELECT f.tenant_id, 'refund of usage ' || f.usage_id, 'refund', -o.units, rf.units
  FROM quota_ext.refunds f
  JOIN quota_ext.usage o ON o.tenant_id = f.tenant_id AND o.usage_id = f.usage_id
  LEFT JOIN quota_ext.usage rf ON rf.tenant_id = f.tenant_id AND rf.usage_id = f.refund_usage_id
 WHERE rf.usage_id IS NULL OR rf.kind <> 'refund' OR rf.units <> -o.units
       OR rf.calls <> -o.calls OR rf.ref_usage_id <> f.usage_id
       OR rf.occurred_at <> o.occurred_at
ORDER BY 1, 2, 3
$$;

-- API keys are shown once; tests keep them here by name.
CREATE TABLE IF NOT EXISTS quota_test.keys (name text PRIMARY KEY, api_key text NOT NULL);

-- Empty the extension's tables and restart its sequences, so that every
-- isolation permutation starts from the same state and prints the same ids.
-- (Not for pg_regress files: they share one database.)
CREATE OR REPLACE PROCEDURE quota_test.reset()
	LANGUAGE sql
	SET search_path = pg_catalog, pg_temp
AS $$
	TRUNCATE quota_ext.tenants, quota_ext.models, quota_ext.usage, quota_ext.idempotency_keys,
	         quota_ext.reservations, quota_ext.refunds, quota_ext.quota_events,
	         quota_ext.audit_log, quota_ext.usage_daily, quota_ext.usage_billing_daily,
	         quota_ext.rollup_state,
	         quota_ext.invoices, quota_ext.invoice_lines, quota_ext.billing_closes,
	         quota_ext.outbox, quota_ext.event_consumers CASCADE;
	TRUNCATE quota_test.keys;
	SELECT pg_catalog.setval(c.oid::regclass, 1, false)
	  FROM pg_catalog.pg_class c
	 WHERE c.relkind = 'S' AND c.relnamespace = 'quota_ext'::regnamespace;
$$;

-- Ids by name, so steps need not print or remember them.
CREATE OR REPLACE FUNCTION quota_test.tid(name text) RETURNS bigint
	LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$ SELECT t.tenant_id FROM quota_ext.tenants t WHERE t.name = $1 $$;

CREATE OR REPLACE FUNCTION quota_test.key(name text) RETURNS text
	LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$ SELECT k.api_key FROM quota_test.keys k WHERE k.name = $1 $$;

-- used of a tenant's quotas now, in quota_id order (an array): a compact
-- line for isolation output.
CREATE OR REPLACE FUNCTION quota_test.used(tenant text) RETURNS bigint[]
	LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
	SELECT coalesce(array_agg(s.used ORDER BY s.quota_id), ARRAY[]::bigint[])
	  FROM quota_ext.quota_status(quota_test.tid($1)) s
$$;
