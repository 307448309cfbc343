
-- ---------------------------------------------------------------------------
-- 60 audit retention and observability: dashboards views, request counters
-- (src/stats.c) and Prometheus metrics
-- ---------------------------------------------------------------------------

-- Audit retention per tier (tiers.audit_retention); global rows (tenant 0)
-- are kept for quota_ext.audit_retention_global, by default the longest
-- tier retention.
CREATE FUNCTION quota_ext.audit_purge() RETURNS bigint
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	g_text text := nullif(current_setting('quota_ext.audit_retention_global', true), '');
	g interval;
	n_tenants bigint;
	n_global bigint;
BEGIN
	PERFORM quota_ext._admin_only('audit_purge');
	IF g_text IS NOT NULL THEN
		BEGIN
			g := g_text::interval;
		EXCEPTION WHEN OTHERS THEN
			RAISE EXCEPTION 'invalid quota_ext.audit_retention_global "%"', quota_ext._quote_input(g_text)
				USING ERRCODE = 'invalid_parameter_value', HINT = 'Use an interval such as ''400 days''.';
		END;
		IF g < interval '0' THEN
			RAISE EXCEPTION 'quota_ext.audit_retention_global must not be negative'
				USING ERRCODE = 'invalid_parameter_value';
		END IF;
	ELSE
		SELECT max(tr.audit_retention) INTO g FROM quota_ext.tiers tr;
	END IF;
	DELETE FROM quota_ext.audit_log a
	 USING quota_ext.tenants t JOIN quota_ext.tiers tr ON tr.tier = t.tier
	 WHERE a.tenant_id = t.tenant_id AND a.at < now() - tr.audit_retention;
	GET DIAGNOSTICS n_tenants = ROW_COUNT;
	DELETE FROM quota_ext.audit_log a WHERE a.tenant_id = 0 AND a.at < now() - g;
	GET DIAGNOSTICS n_global = ROW_COUNT;
	PERFORM quota_ext._audit(0, 'audit_purge', 'audit_log', NULL, NULL,
	                         jsonb_build_object('deleted_tenant_rows', n_tenants,
	                                            'deleted_global_rows', n_global,
	                                            'global_retention', g));
	RETURN n_tenants + n_global;
END
$$;
COMMENT ON FUNCTION quota_ext.audit_purge() IS
	'Delete audit rows older than their tenant''s tier retention (global rows: quota_ext.audit_retention_global or the longest tier retention); returns how many';

-- Request counters since server start, per tenant, kept in shared memory
-- (src/stats.c): outcomes of quota_consume/invoke/quota_reserve counted
-- when the decision is made, so they survive the caller's ROLLBACK.  A
-- tenant context sees its own tenant only; without one, quota_ext_admin
-- sees all.
CREATE FUNCTION quota_ext.request_stats(
	OUT tenant_id bigint, OUT allowed bigint, OUT denied_quota bigint,
	OUT denied_rate_limit bigint, OUT denied_policy bigint, OUT denied_tenant bigint,
	OUT replayed bigint)
	RETURNS SETOF record
	LANGUAGE C VOLATILE PARALLEL RESTRICTED AS 'MODULE_PATHNAME', 'quota_ext_request_stats';
COMMENT ON FUNCTION quota_ext.request_stats() IS
	'Decisions per tenant since server start (shared memory; empty when the library is not preloaded)';

CREATE FUNCTION quota_ext.request_stats_reset() RETURNS void
	LANGUAGE C VOLATILE PARALLEL RESTRICTED AS 'MODULE_PATHNAME', 'quota_ext_request_stats_reset';
COMMENT ON FUNCTION quota_ext.request_stats_reset() IS
	'Zero the request counters of every tenant';

-- The configuration cache's level shared by all backends (src/cache.c):
-- its size, the most entries one tenant may have, what it holds, and since
-- server start its hits, misses (the backend ran the query), answers filed
-- and answers refused (no room in the table or in the tenant's share).
CREATE FUNCTION quota_ext.shared_cache_status(OUT capacity integer,
	OUT tenant_entries integer, OUT entries bigint, OUT hits bigint, OUT misses bigint,
	OUT filed bigint, OUT refused bigint)
	LANGUAGE C VOLATILE PARALLEL RESTRICTED AS 'MODULE_PATHNAME', 'quota_ext_shared_cache_status';
COMMENT ON FUNCTION quota_ext.shared_cache_status() IS
	'The shared configuration cache: capacity, most entries per tenant, entries, and hits, misses, filed and refused answers since server start';

CREATE FUNCTION quota_ext.shared_cache_tenants(OUT tenant_id bigint, OUT entries integer)
	RETURNS SETOF record
	LANGUAGE C VOLATILE PARALLEL RESTRICTED AS 'MODULE_PATHNAME', 'quota_ext_shared_cache_tenants';
COMMENT ON FUNCTION quota_ext.shared_cache_tenants() IS
	'Entries of each tenant of this database in the shared configuration cache';

-- Dashboards.  security_invoker: the caller's row-level security applies
-- (a tenant context sees its own rows; quota_ext_admin without one, all);
-- security_barrier: caller predicates cannot see filtered rows.
CREATE VIEW quota_ext.quota_usage WITH (security_invoker = true, security_barrier = true) AS
SELECT q.tenant_id, q.quota_id, q.period_label AS period, q.metric, m.name AS model,
       q.user_id, q.key_id, q.currency,
       CASE WHEN q.metric = 'cost' THEN round(q.max_units / 1000000.0, 6) ELSE q.max_units END AS "limit",
       CASE WHEN q.metric = 'cost' THEN round(s.used / 1000000.0, 6) ELSE s.used END AS used,
       round(100.0 * s.used / nullif(q.max_units, 0), 2) AS used_pct,
       CASE WHEN q.period = 'lifetime' THEN NULL ELSE b.period_end END AS resets_at,
       q.on_exceed
  FROM quota_ext.quotas q
  JOIN quota_ext.tenants t ON t.tenant_id = q.tenant_id
  LEFT JOIN quota_ext.models m ON m.model_id = q.model_id
 CROSS JOIN LATERAL quota_ext.period_bounds(q.period, t.timezone, clock_timestamp()) b
 CROSS JOIN LATERAL (SELECT coalesce(sum(c.used) FILTER (WHERE c.period_start = b.period_start), 0)::bigint AS used
                       FROM quota_ext.quota_counters c
                      WHERE c.tenant_id = q.tenant_id AND c.quota_id = q.quota_id) s;
COMMENT ON VIEW quota_ext.quota_usage IS
	'Every quota with its use in the current period (money for cost quotas) and percent of the limit';

CREATE VIEW quota_ext.denials WITH (security_invoker = true, security_barrier = true) AS
SELECT s.tenant_id, r.reason, r.denied
  FROM quota_ext.request_stats() s
 CROSS JOIN LATERAL (VALUES ('quota', s.denied_quota), ('rate_limit', s.denied_rate_limit),
                            ('policy', s.denied_policy), ('tenant', s.denied_tenant)) r (reason, denied)
 WHERE r.denied > 0;
COMMENT ON VIEW quota_ext.denials IS
	'Denied requests per tenant and reason since server start';

CREATE VIEW quota_ext.top_tenants_by_cost WITH (security_invoker = true, security_barrier = true) AS
SELECT d.tenant_id, t.name, d.currency::text AS currency, sum(d.cost) AS cost_this_month,
       sum(d.calls) AS calls_this_month,
       rank() OVER (PARTITION BY d.currency ORDER BY sum(d.cost) DESC) AS rank
  FROM quota_ext.usage_daily d
  JOIN quota_ext.tenants t ON t.tenant_id = d.tenant_id
 WHERE d.currency <> 'XXX'
   AND d.day >= date_trunc('month', clock_timestamp() AT TIME ZONE t.timezone)::date
 GROUP BY d.tenant_id, t.name, d.currency;
COMMENT ON VIEW quota_ext.top_tenants_by_cost IS
	'Cost per tenant and currency in the tenant''s current month, ranked (as of the last usage_rollup)';

-- A quota id names a model-call quota or a meter quota (one sequence):
-- a meter quota's crossing shows its meter, and its metric as quota_status
-- shows it (units of a counter, gauge).
CREATE VIEW quota_ext.threshold_events WITH (security_invoker = true, security_barrier = true) AS
SELECT e.tenant_id, e.event_id, e.quota_id, coalesce(q.period_label, mq.period_label) AS period,
       coalesce(q.metric, CASE mt.kind WHEN 'gauge' THEN 'gauge' WHEN 'counter' THEN 'units' END) AS metric,
       m.name AS model, e.kind, e.threshold, e.used, e."limit", e.period_start, e.created_at,
       mt.name AS meter
  FROM quota_ext.quota_events e
  LEFT JOIN quota_ext.quotas q ON q.tenant_id = e.tenant_id AND q.quota_id = e.quota_id
  LEFT JOIN quota_ext.models m ON m.model_id = q.model_id
  LEFT JOIN quota_ext.meter_quotas mq ON mq.tenant_id = e.tenant_id AND mq.quota_id = e.quota_id
  LEFT JOIN quota_ext.meters mt ON mt.meter_id = mq.meter_id;
COMMENT ON VIEW quota_ext.threshold_events IS
	'Threshold and soft-limit crossings with their quota (model-call or meter quota: then its meter)';

-- Prometheus text exposition of what the caller may see (label values
-- escaped as the format asks: backslash, double quote, newline).
CREATE FUNCTION quota_ext.metrics() RETURNS text
	LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
	WITH s AS MATERIALIZED (SELECT * FROM quota_ext.request_stats())
	SELECT concat_ws(E'\n',
		'# HELP quota_ext_tenant_quota_usage Fraction of the limit used in the current period.',
		'# TYPE quota_ext_tenant_quota_usage gauge',
		(SELECT string_agg(format('quota_ext_tenant_quota_usage{tenant_id="%s",quota_id="%s",period="%s",metric="%s",model="%s",currency="%s"} %s',
		                          u.tenant_id, u.quota_id, replace(replace(replace(u.period, E'\\', E'\\\\'), '"', E'\\"'), E'\n', E'\\n'), u.metric,
		                          replace(replace(replace(coalesce(u.model, ''), E'\\', E'\\\\'), '"', E'\\"'), E'\n', E'\\n'), coalesce(u.currency, ''),
		                          coalesce(round(u.used::numeric / nullif(u."limit", 0), 6), 0)),
		                   E'\n' ORDER BY u.tenant_id, u.quota_id)
		   FROM quota_ext.quota_usage u),
		'# HELP quota_ext_quota_exceeded_total Requests denied by a quota since server start.',
		'# TYPE quota_ext_quota_exceeded_total counter',
		(SELECT string_agg(format('quota_ext_quota_exceeded_total{tenant_id="%s"} %s', s.tenant_id, s.denied_quota),
		                   E'\n' ORDER BY s.tenant_id) FROM s),
		'# HELP quota_ext_rate_limited_total Requests denied by a rate limit since server start.',
		'# TYPE quota_ext_rate_limited_total counter',
		(SELECT string_agg(format('quota_ext_rate_limited_total{tenant_id="%s"} %s', s.tenant_id, s.denied_rate_limit),
		                   E'\n' ORDER BY s.tenant_id) FROM s),
		'# HELP quota_ext_invoke_total Decisions of quota_consume, invoke and quota_reserve by outcome since server start.',
		'# TYPE quota_ext_invoke_total counter',
		(SELECT string_agg(format('quota_ext_invoke_total{tenant_id="%s",outcome="%s"} %s', s.tenant_id, o.outcome, o.n),
		                   E'\n' ORDER BY s.tenant_id, o.outcome)
		   FROM s CROSS JOIN LATERAL (VALUES ('allowed', s.allowed), ('denied_quota', s.denied_quota),
		                                     ('denied_rate_limit', s.denied_rate_limit),
		                                     ('denied_policy', s.denied_policy),
		                                     ('denied_tenant', s.denied_tenant),
		                                     ('replayed', s.replayed)) o (outcome, n)),
		-- tokens and cost of the tenant's current month (its time zone),
		-- from the daily rollup: nothing written on the hot path, as of the
		-- last usage_rollup()
		'# HELP quota_ext_tenant_tokens Tokens used in the tenant''s current month, as of the last usage_rollup.',
		'# TYPE quota_ext_tenant_tokens gauge',
		(SELECT string_agg(format('quota_ext_tenant_tokens{tenant_id="%s",direction="%s"} %s', m.tenant_id, k.direction, k.n),
		                   E'\n' ORDER BY m.tenant_id, k.direction)
		   FROM (SELECT d.tenant_id, sum(d.input_tokens) AS input_tokens, sum(d.output_tokens) AS output_tokens
		           FROM quota_ext.usage_daily d
		           JOIN quota_ext.tenants t ON t.tenant_id OPERATOR(pg_catalog.=) d.tenant_id
		          WHERE d.day OPERATOR(pg_catalog.>=) date_trunc('month', clock_timestamp() AT TIME ZONE t.timezone)::pg_catalog.date
		          GROUP BY d.tenant_id) m
		  CROSS JOIN LATERAL (VALUES ('input', m.input_tokens), ('output', m.output_tokens)) k (direction, n)),
		'# HELP quota_ext_tenant_cost Cost charged in the tenant''s current month per currency, as of the last usage_rollup.',
		'# TYPE quota_ext_tenant_cost gauge',
		(SELECT string_agg(format('quota_ext_tenant_cost{tenant_id="%s",currency="%s"} %s', m.tenant_id, m.currency, m.cost),
		                   E'\n' ORDER BY m.tenant_id, m.currency)
		   FROM (SELECT d.tenant_id, d.currency::pg_catalog.text AS currency, sum(d.cost) AS cost
		           FROM quota_ext.usage_daily d
		           JOIN quota_ext.tenants t ON t.tenant_id OPERATOR(pg_catalog.=) d.tenant_id
		          WHERE d.currency OPERATOR(pg_catalog.<>) 'XXX'
		            AND d.day OPERATOR(pg_catalog.>=) date_trunc('month', clock_timestamp() AT TIME ZONE t.timezone)::pg_catalog.date
		          GROUP BY d.tenant_id, d.currency) m)
	) || E'\n'
	$$;
COMMENT ON FUNCTION quota_ext.metrics() IS
	'Prometheus text exposition: quota usage, quota and rate-limit denials, decisions by outcome, tokens and cost of the current month (what the caller may see)';

-- ---------------------------------------------------------------------------
-- security of this section
-- ---------------------------------------------------------------------------

GRANT SELECT ON quota_ext.quota_usage, quota_ext.denials, quota_ext.top_tenants_by_cost,
                quota_ext.threshold_events TO quota_ext_app;
GRANT EXECUTE ON FUNCTION
	quota_ext.request_stats(),
	quota_ext.metrics()
	TO quota_ext_app;
GRANT EXECUTE ON FUNCTION
	quota_ext.audit_purge(),
	quota_ext.request_stats_reset(),
	quota_ext.shared_cache_status(),
	quota_ext.shared_cache_tenants(),
	quota_ext.escrow_adapt(),
	quota_ext.escrow_status()
	TO quota_ext_admin;
