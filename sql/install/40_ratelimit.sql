
-- ---------------------------------------------------------------------------
-- 40 rate limits: GCRA buckets in shared memory (src/gcra.c, src/ratelimit.c)
-- ---------------------------------------------------------------------------
-- The buckets are not in any table: no WAL, no row lock, not undone by a
-- rollback, empty after a restart (doc/rate-limits.md).  Configured
-- per-tenant limits are rows of quota_ext.rate_limits; a tenant without a
-- tenant-wide rule gets its tier's rate_limit_per_minute/rate_limit_burst.

-- The arithmetic with the clock passed in (for tests and for checking
-- parameters).  Pure: IMMUTABLE.
CREATE FUNCTION quota_ext.gcra_eval(tat_ns bigint, now_ns bigint, max_burst integer,
	count integer, period_seconds integer, quantity integer,
	OUT limited boolean, OUT "limit" bigint, OUT remaining bigint,
	OUT retry_after bigint, OUT reset_after bigint,
	OUT new_tat_ns bigint, OUT retry_after_ns bigint, OUT reset_after_ns bigint)
	LANGUAGE C IMMUTABLE PARALLEL SAFE AS 'MODULE_PATHNAME', 'quota_ext_gcra_eval';
COMMENT ON FUNCTION quota_ext.gcra_eval(bigint, bigint, integer, integer, integer, integer) IS
	'GCRA arithmetic of one CL.THROTTLE given the stored TAT and now (ns); new_tat_ns is the TAT to store';

-- The answer of rate_limit_check and tenant_rate_limit_check: redis-cell's
-- five numbers.  A named row type rather than OUT parameters: the executor
-- then finds the result shape in the type cache instead of rebuilding it
-- from pg_proc at every call (doc/performance.md).
CREATE TYPE quota_ext.rate_limit_result AS (
	limited     boolean,
	"limit"     bigint,
	remaining   bigint,
	retry_after bigint,
	reset_after bigint
);
COMMENT ON TYPE quota_ext.rate_limit_result IS
	'CL.THROTTLE''s answer: limited; limit = max_burst + 1; remaining; retry_after (-1 when allowed) and reset_after in whole seconds';

CREATE FUNCTION quota_ext.rate_limit_check(key text, max_burst integer, count integer,
	period_seconds integer, quantity integer DEFAULT 1)
	RETURNS quota_ext.rate_limit_result
	LANGUAGE C VOLATILE PARALLEL RESTRICTED AS 'MODULE_PATHNAME', 'quota_ext_rate_limit_check';
COMMENT ON FUNCTION quota_ext.rate_limit_check(text, integer, integer, integer, integer) IS
	'redis-cell CL.THROTTLE: count per period_seconds with max_burst, in one namespace shared by all callers; quantity 0 peeks';

CREATE FUNCTION quota_ext.tenant_rate_limit_check(key text, max_burst integer, count integer,
	period_seconds integer, quantity integer DEFAULT 1)
	RETURNS quota_ext.rate_limit_result
	LANGUAGE C VOLATILE PARALLEL RESTRICTED AS 'MODULE_PATHNAME', 'quota_ext_tenant_rate_limit_check';
COMMENT ON FUNCTION quota_ext.tenant_rate_limit_check(text, integer, integer, integer, integer) IS
	'rate_limit_check in the current tenant''s own namespace (needs a tenant context)';

CREATE FUNCTION quota_ext.rate_limit_status(OUT slots integer, OUT in_use bigint,
	OUT partitions integer, OUT tenant_entries integer)
	LANGUAGE C VOLATILE PARALLEL RESTRICTED AS 'MODULE_PATHNAME', 'quota_ext_rate_limit_status';
COMMENT ON FUNCTION quota_ext.rate_limit_status() IS
	'Size of the shared rate-limit table, how many slots hold a bucket, and the most buckets one tenant''s (or rate_limit_check''s) keys may hold';

-- The capped namespaces (src/ratelimit.c): the keys of rate_limit_check()
-- (tenant_id NULL) and each tenant's keys of tenant_rate_limit_check() may
-- hold at most quota_ext.rate_limit_tenant_entries buckets each.
CREATE FUNCTION quota_ext.rate_limit_namespaces(OUT tenant_id bigint, OUT buckets integer)
	RETURNS SETOF record
	LANGUAGE C VOLATILE PARALLEL RESTRICTED AS 'MODULE_PATHNAME', 'quota_ext_rate_limit_namespaces';
COMMENT ON FUNCTION quota_ext.rate_limit_namespaces() IS
	'Buckets held by the keys of rate_limit_check() (tenant_id NULL) and by each tenant''s keys of tenant_rate_limit_check(), in this database';

-- ---------------------------------------------------------------------------
-- configured per-tenant limits
-- ---------------------------------------------------------------------------

CREATE SEQUENCE quota_ext.rate_limit_id_seq;

-- One rule per scope: tenant-wide (model and key NULL), per model, per API
-- key, or per model and key.  rule_id 0 is never used: it names the tier
-- default in answers.
CREATE TABLE quota_ext.rate_limits (
	tenant_id      bigint NOT NULL REFERENCES quota_ext.tenants (tenant_id),
	rule_id        bigint NOT NULL DEFAULT pg_catalog.nextval('quota_ext.rate_limit_id_seq')
	               CHECK (rule_id OPERATOR(pg_catalog.>) 0),
	model_id       bigint REFERENCES quota_ext.models (model_id),
	key_id         bigint,
	max_burst      integer NOT NULL CHECK (max_burst OPERATOR(pg_catalog.>=) 0),
	count          integer NOT NULL CHECK (count OPERATOR(pg_catalog.>) 0),
	period_seconds integer NOT NULL CHECK (period_seconds OPERATOR(pg_catalog.>) 0
	                                       AND period_seconds OPERATOR(pg_catalog.<=) 86400),
	created_at     timestamptz NOT NULL DEFAULT pg_catalog.now(),
	updated_at     timestamptz NOT NULL DEFAULT pg_catalog.now(),
	PRIMARY KEY (tenant_id, rule_id),
	UNIQUE NULLS NOT DISTINCT (tenant_id, model_id, key_id),
	FOREIGN KEY (tenant_id, key_id) REFERENCES quota_ext.api_keys (tenant_id, key_id)
);
COMMENT ON TABLE quota_ext.rate_limits IS
	'Per-tenant rate limits (GCRA: count per period_seconds, max_burst), tenant-wide or per model and/or API key';

SELECT quota_ext._secure_tenant_table('quota_ext.rate_limits');

CREATE FUNCTION quota_ext.rate_limit_set(tenant_id bigint, count integer,
	period_seconds integer, max_burst integer DEFAULT 0, model text DEFAULT NULL,
	key_id bigint DEFAULT NULL) RETURNS bigint
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
	t quota_ext.tenants := quota_ext._tenant_for_update(rate_limit_set.tenant_id);
	mid bigint;
	old quota_ext.rate_limits;
	new quota_ext.rate_limits;
BEGIN
	IF rate_limit_set.count IS NULL THEN PERFORM quota_ext._null_arg('count'); END IF;
	IF rate_limit_set.period_seconds IS NULL THEN PERFORM quota_ext._null_arg('period_seconds'); END IF;
	IF rate_limit_set.max_burst IS NULL THEN PERFORM quota_ext._null_arg('max_burst'); END IF;
	-- the same checks (22023, 22003) as every rate-limit check will make
	PERFORM quota_ext.gcra_eval(0, 0, rate_limit_set.max_burst, rate_limit_set.count,
	                            rate_limit_set.period_seconds, 1);
	IF rate_limit_set.model IS NOT NULL THEN
		mid := quota_ext._model_for(t.tenant_id, rate_limit_set.model);
	END IF;
	PERFORM quota_ext._check_user(t.tenant_id, NULL, rate_limit_set.key_id);
	SELECT * INTO old FROM quota_ext.rate_limits
	 WHERE tenant_id = t.tenant_id
	   AND model_id IS NOT DISTINCT FROM mid
	   AND key_id IS NOT DISTINCT FROM rate_limit_set.key_id
	 FOR UPDATE;
	IF FOUND THEN
		UPDATE quota_ext.rate_limits
		   SET max_burst = rate_limit_set.max_burst, count = rate_limit_set.count,
		       period_seconds = rate_limit_set.period_seconds, updated_at = now()
		 WHERE tenant_id = t.tenant_id AND rule_id = old.rule_id
		RETURNING * INTO new;
		PERFORM quota_ext._audit(t.tenant_id, 'rate_limit_update', 'rate_limit',
		                         new.rule_id::text, to_jsonb(old), to_jsonb(new));
	ELSE
		INSERT INTO quota_ext.rate_limits (tenant_id, model_id, key_id, max_burst, count,
		                                   period_seconds)
		VALUES (t.tenant_id, mid, rate_limit_set.key_id, rate_limit_set.max_burst,
		        rate_limit_set.count, rate_limit_set.period_seconds)
		RETURNING * INTO new;
		PERFORM quota_ext._audit(t.tenant_id, 'rate_limit_set', 'rate_limit',
		                         new.rule_id::text, NULL, to_jsonb(new));
	END IF;
	RETURN new.rule_id;
END
$$;
COMMENT ON FUNCTION quota_ext.rate_limit_set(bigint, integer, integer, integer, text, bigint) IS
	'Create or change the rate limit of one scope (tenant-wide, a model, an API key, or both); returns its rule_id';

CREATE FUNCTION quota_ext.rate_limit_delete(tenant_id bigint, rule_id bigint) RETURNS void
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	PERFORM quota_ext._row_delete($1, 'quota_ext.rate_limits', 'rule_id', $2::text, 'rate_limit',
		pg_catalog.format('rate limit %s does not exist', $2));
END
$$;
COMMENT ON FUNCTION quota_ext.rate_limit_delete(bigint, bigint) IS
	'Remove a rate-limit rule (a tenant-wide one brings the tier default back)';

CREATE FUNCTION quota_ext.rate_limit_apply(tenant_id bigint, model text DEFAULT NULL,
	quantity integer DEFAULT 1, key_id bigint DEFAULT NULL,
	OUT limited boolean, OUT rule_id bigint, OUT "limit" bigint, OUT remaining bigint,
	OUT retry_after bigint, OUT reset_after bigint)
	LANGUAGE C VOLATILE PARALLEL RESTRICTED AS 'MODULE_PATHNAME', 'quota_ext_rate_limit_apply';
COMMENT ON FUNCTION quota_ext.rate_limit_apply(bigint, text, integer, bigint) IS
	'Check and charge every configured rate limit of a tenant (model, key; tier default) all or nothing, as invoke() does';

-- Emptying buckets (quota_ext_admin): a removed bucket is full again.  Not
-- undone by a rollback, like every bucket change; the audit row is.  The
-- row is written here rather than by _audit(), which would also mark the
-- configuration changed and empty every backend's cache for nothing.
CREATE FUNCTION quota_ext._rate_limit_reset(tenant_id bigint, key text, rule_ids bigint[])
	RETURNS bigint
	LANGUAGE C VOLATILE AS 'MODULE_PATHNAME', 'quota_ext_rate_limit_reset_buckets';
COMMENT ON FUNCTION quota_ext._rate_limit_reset(bigint, text, bigint[]) IS
	'Internal: remove rate-limit buckets (see rate_limit_reset)';
REVOKE ALL ON FUNCTION quota_ext._rate_limit_reset(bigint, text, bigint[]) FROM PUBLIC;

CREATE FUNCTION quota_ext.rate_limit_reset(tenant_id bigint DEFAULT NULL, key text DEFAULT NULL)
	RETURNS bigint
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
	t quota_ext.tenants;
	ids bigint[];
	n bigint;
BEGIN
	IF rate_limit_reset.tenant_id IS NULL THEN
		PERFORM quota_ext._admin_only('rate_limit_reset of the keys of rate_limit_check()');
	ELSE
		t := quota_ext._tenant_for_update(rate_limit_reset.tenant_id);
		IF rate_limit_reset.key IS NULL THEN
			-- the tenant's rules and its tier default (rule 0)
			ids := ARRAY(SELECT r.rule_id FROM quota_ext.rate_limits r
			              WHERE r.tenant_id OPERATOR(pg_catalog.=) t.tenant_id)
			       OPERATOR(pg_catalog.||) 0::pg_catalog.int8;
		END IF;
	END IF;
	n := quota_ext._rate_limit_reset(t.tenant_id, rate_limit_reset.key, ids);
	INSERT INTO quota_ext.audit_log (tenant_id, actor_tenant_id, action, object_type,
	                                 object_id, before, after)
	VALUES (coalesce(t.tenant_id, 0), quota_ext.current_tenant_id(), 'rate_limit_reset',
	        'rate_limit_bucket', NULL, NULL,
	        pg_catalog.jsonb_build_object('key', pg_catalog.left(rate_limit_reset.key, 200),
	                                      'removed', n));
	RETURN n;
END
$$;
COMMENT ON FUNCTION quota_ext.rate_limit_reset(bigint, text) IS
	'Empty rate-limit buckets: the keys of rate_limit_check() (tenant_id NULL) or a tenant''s (its keys of tenant_rate_limit_check() and, without a key, its configured rules); one key or all; returns how many were removed';

-- Who may call what.  rate_limit_check is the hot path of app servers,
-- also before authentication (per IP address, per login name), so it is
-- quota_ext_app's; its keys are shared by every holder of that role.
-- Keys private to a tenant go through tenant_rate_limit_check.
GRANT EXECUTE ON FUNCTION
	quota_ext.gcra_eval(bigint, bigint, integer, integer, integer, integer),
	quota_ext.rate_limit_check(text, integer, integer, integer, integer),
	quota_ext.tenant_rate_limit_check(text, integer, integer, integer, integer),
	quota_ext.rate_limit_apply(bigint, text, integer, bigint)
	TO quota_ext_app;
GRANT EXECUTE ON FUNCTION
	quota_ext.rate_limit_status(),
	quota_ext.rate_limit_namespaces(),
	quota_ext.rate_limit_reset(bigint, text),
	quota_ext.rate_limit_set(bigint, integer, integer, integer, text, bigint),
	quota_ext.rate_limit_delete(bigint, bigint)
	TO quota_ext_admin;
