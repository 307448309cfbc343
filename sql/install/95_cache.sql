-- 95_cache.sql — invalidation of the per-backend configuration cache
-- (src/cache.c; doc/design.md).
--
-- Each backend caches API keys, tenant + model + policy + price answers and
-- rate-limit rules.  Every table those are read from carries this
-- statement-level trigger: it marks the writing transaction, whose COMMIT
-- then moves a generation counter in shared memory that every backend reads
-- before it uses its cache.  ENABLE ALWAYS: it also fires under
-- session_replication_role = replica (logical replication's apply workers).
-- api_keys: every column but last_used_at, which authenticate() refreshes
-- and no cached answer depends on.

CREATE FUNCTION quota_ext._cache_invalidate() RETURNS trigger
	LANGUAGE C
	AS 'MODULE_PATHNAME', 'cache_invalidate';
COMMENT ON FUNCTION quota_ext._cache_invalidate() IS
	'Internal: a committed change to the configuration empties every backend''s cache';

CREATE TRIGGER cache_invalidate
	AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON quota_ext.tiers
	FOR EACH STATEMENT EXECUTE FUNCTION quota_ext._cache_invalidate();
CREATE TRIGGER cache_invalidate
	AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON quota_ext.tenants
	FOR EACH STATEMENT EXECUTE FUNCTION quota_ext._cache_invalidate();
CREATE TRIGGER cache_invalidate
	AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON quota_ext.users
	FOR EACH STATEMENT EXECUTE FUNCTION quota_ext._cache_invalidate();
CREATE TRIGGER cache_invalidate
	AFTER INSERT OR DELETE OR TRUNCATE
	   OR UPDATE OF tenant_id, key_id, user_id, name, key_prefix, key_hash,
	                created_at, expires_at, revoked_at, rotated_to
	ON quota_ext.api_keys
	FOR EACH STATEMENT EXECUTE FUNCTION quota_ext._cache_invalidate();
CREATE TRIGGER cache_invalidate
	AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON quota_ext.models
	FOR EACH STATEMENT EXECUTE FUNCTION quota_ext._cache_invalidate();
CREATE TRIGGER cache_invalidate
	AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON quota_ext.model_shares
	FOR EACH STATEMENT EXECUTE FUNCTION quota_ext._cache_invalidate();
CREATE TRIGGER cache_invalidate
	AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON quota_ext.policies
	FOR EACH STATEMENT EXECUTE FUNCTION quota_ext._cache_invalidate();
CREATE TRIGGER cache_invalidate
	AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON quota_ext.prices
	FOR EACH STATEMENT EXECUTE FUNCTION quota_ext._cache_invalidate();
CREATE TRIGGER cache_invalidate
	AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON quota_ext.quotas
	FOR EACH STATEMENT EXECUTE FUNCTION quota_ext._cache_invalidate();
CREATE TRIGGER cache_invalidate
	AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON quota_ext.rate_limits
	FOR EACH STATEMENT EXECUTE FUNCTION quota_ext._cache_invalidate();

ALTER TABLE quota_ext.tiers ENABLE ALWAYS TRIGGER cache_invalidate;
ALTER TABLE quota_ext.tenants ENABLE ALWAYS TRIGGER cache_invalidate;
ALTER TABLE quota_ext.users ENABLE ALWAYS TRIGGER cache_invalidate;
ALTER TABLE quota_ext.api_keys ENABLE ALWAYS TRIGGER cache_invalidate;
ALTER TABLE quota_ext.models ENABLE ALWAYS TRIGGER cache_invalidate;
ALTER TABLE quota_ext.model_shares ENABLE ALWAYS TRIGGER cache_invalidate;
ALTER TABLE quota_ext.policies ENABLE ALWAYS TRIGGER cache_invalidate;
ALTER TABLE quota_ext.prices ENABLE ALWAYS TRIGGER cache_invalidate;
ALTER TABLE quota_ext.quotas ENABLE ALWAYS TRIGGER cache_invalidate;
ALTER TABLE quota_ext.rate_limits ENABLE ALWAYS TRIGGER cache_invalidate;
