
-- ---------------------------------------------------------------------------
-- 05 audit: every administrative change, in the same transaction
-- ---------------------------------------------------------------------------
-- tenant_id 0 holds changes to global catalogs (tiers, global models).

CREATE SEQUENCE quota_ext.audit_id_seq;

CREATE TABLE quota_ext.audit_log (
	tenant_id      bigint NOT NULL,
	audit_id       bigint NOT NULL DEFAULT pg_catalog.nextval('quota_ext.audit_id_seq'),
	at             timestamptz NOT NULL DEFAULT pg_catalog.now(),
	actor          name NOT NULL DEFAULT SESSION_USER,
	actor_tenant_id bigint,
	action         text NOT NULL,
	object_type    text NOT NULL,
	object_id      text,
	before         jsonb,
	after          jsonb,
	PRIMARY KEY (tenant_id, audit_id)
);
COMMENT ON TABLE quota_ext.audit_log IS
	'Administrative changes: who (session user and tenant context), what, before, after, when';
CREATE INDEX audit_log_at ON quota_ext.audit_log (tenant_id, at);

-- Internal: append one audit row.  Called only from SECURITY DEFINER admin
-- functions (EXECUTE for nobody else).
-- Every backend caches keys, policy and price answers and rate-limit rules
-- (src/cache.c); a transaction that calls this makes them all re-read the
-- tables once it commits.  _audit() calls it, so every admin function does.
CREATE FUNCTION quota_ext.config_changed() RETURNS void
	LANGUAGE C VOLATILE PARALLEL RESTRICTED AS 'MODULE_PATHNAME', 'quota_ext_config_changed';
COMMENT ON FUNCTION quota_ext.config_changed() IS
	'Mark the configuration changed by this transaction: every backend''s cache is emptied when it commits (for direct changes to the tables; the admin functions do it themselves)';

CREATE FUNCTION quota_ext._audit(tenant_id bigint, action text, object_type text,
	object_id text, before jsonb, after jsonb) RETURNS void
	LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
	SELECT quota_ext.config_changed();
	INSERT INTO quota_ext.audit_log (tenant_id, actor_tenant_id, action, object_type, object_id, before, after)
	VALUES ($1, quota_ext.current_tenant_id(), $2, $3, $4, $5, $6)
	$$;
COMMENT ON FUNCTION quota_ext._audit(bigint, text, text, text, jsonb, jsonb) IS
	'Internal: record one administrative change';
REVOKE ALL ON FUNCTION quota_ext._audit(bigint, text, text, text, jsonb, jsonb) FROM PUBLIC;

SELECT quota_ext._secure_tenant_table('quota_ext.audit_log');
