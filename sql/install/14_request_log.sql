
-- ---------------------------------------------------------------------------
-- 14 per-request records (issue 17): what the application did with a
-- request (endpoint, status, error, time, bounded excerpts), kept for the
-- tenant's tier audit_retention (7/30/30/90/365 days for the built-in tiers)
-- ---------------------------------------------------------------------------

CREATE SEQUENCE quota_ext.request_id_seq;

CREATE TABLE quota_ext.request_log (
	tenant_id         bigint NOT NULL,
	request_id        bigint NOT NULL DEFAULT pg_catalog.nextval('quota_ext.request_id_seq'),
	at                timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
	user_id           bigint,
	key_id            bigint,
	endpoint          text NOT NULL,
	status            integer,
	error             text,
	duration_ms       integer,
	usage_id          bigint,
	request_excerpt   text,
	response_excerpt  text,
	PRIMARY KEY (tenant_id, request_id)
);
COMMENT ON TABLE quota_ext.request_log IS
	'Per-request records written by request_log_write(): endpoint, status, error, processing time, usage row, excerpts of at most 1,000 characters; purged by request_log_purge() after the tier''s audit_retention';
-- the purge and a tenant's recent requests
CREATE INDEX request_log_at ON quota_ext.request_log (tenant_id, at);

CREATE FUNCTION quota_ext.request_log_write(tenant_id bigint, endpoint text,
	status integer DEFAULT NULL, duration_ms integer DEFAULT NULL, error text DEFAULT NULL,
	request_excerpt text DEFAULT NULL, response_excerpt text DEFAULT NULL,
	usage_id bigint DEFAULT NULL, user_id bigint DEFAULT NULL, key_id bigint DEFAULT NULL)
	RETURNS bigint
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
	ctx record;
	u bigint := request_log_write.user_id;
	k bigint := request_log_write.key_id;
	id bigint;
BEGIN
	IF request_log_write.tenant_id IS NULL THEN PERFORM quota_ext._null_arg('tenant_id'); END IF;
	IF request_log_write.endpoint IS NULL THEN PERFORM quota_ext._null_arg('endpoint'); END IF;
	PERFORM quota_ext._check_tenant_access(request_log_write.tenant_id);
	PERFORM quota_ext._check_label('endpoint', request_log_write.endpoint, 200);
	IF request_log_write.status NOT BETWEEN 100 AND 599 THEN
		RAISE EXCEPTION 'status must be an HTTP status (100 to 599)' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF request_log_write.duration_ms < 0 THEN
		RAISE EXCEPTION 'duration_ms must not be negative' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	PERFORM quota_ext._tenant_exists(request_log_write.tenant_id);
	-- who: the key's user and key in a key's transaction (naming others: 42501)
	SELECT * INTO ctx FROM quota_ext.current_context();
	IF ctx.key_id IS NOT NULL THEN
		IF (u IS NOT NULL AND u <> ctx.user_id) OR (k IS NOT NULL AND k <> ctx.key_id) THEN
			RAISE EXCEPTION 'a request authenticated by an API key is logged as its own user and key'
				USING ERRCODE = 'insufficient_privilege';
		END IF;
		u := ctx.user_id;
		k := ctx.key_id;
	END IF;
	PERFORM quota_ext._check_user(request_log_write.tenant_id, u, k);
	-- the usage row it names is the tenant's own; another tenant's is
	-- answered like a missing one (42704).  An attacker's review found a key
	-- of tenant A could record another tenant's usage_id in A's log, which
	-- anything joining the log to the ledger by usage_id would then show A.
	IF request_log_write.usage_id IS NOT NULL AND NOT EXISTS (
	     SELECT 1 FROM quota_ext.usage x
	      WHERE x.tenant_id = request_log_write.tenant_id AND x.usage_id = request_log_write.usage_id) THEN
		RAISE EXCEPTION 'usage row % does not exist', request_log_write.usage_id USING ERRCODE = 'undefined_object';
	END IF;
	-- bounded: error and excerpts are cut at 1,000 characters
	INSERT INTO quota_ext.request_log (tenant_id, user_id, key_id, endpoint, status, error, duration_ms,
	                                   usage_id, request_excerpt, response_excerpt)
	VALUES (request_log_write.tenant_id, u, k, request_log_write.endpoint, request_log_write.status,
	        left(request_log_write.error, 1000), request_log_write.duration_ms, request_log_write.usage_id,
	        left(request_log_write.request_excerpt, 1000), left(request_log_write.response_excerpt, 1000))
	RETURNING request_id INTO id;
	RETURN id;
END
$$;
COMMENT ON FUNCTION quota_ext.request_log_write(bigint, text, integer, integer, text, text, text, bigint, bigint, bigint) IS
	'Record one request of a tenant (endpoint, HTTP status, error, duration, usage row, excerpts cut at 1,000 characters); returns its id';

-- Tenant by tenant, the rows older than the tenant's tier audit_retention.
CREATE FUNCTION quota_ext.request_log_purge() RETURNS bigint
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
	r record;
	n bigint;
	total bigint := 0;
BEGIN
	PERFORM quota_ext._admin_only('request_log_purge');
	FOR r IN SELECT t.tenant_id, tr.audit_retention FROM quota_ext.tenants t
	           JOIN quota_ext.tiers tr ON tr.tier = t.tier ORDER BY t.tenant_id LOOP
		DELETE FROM quota_ext.request_log l
		 WHERE l.tenant_id = r.tenant_id AND l.at < now() - r.audit_retention;
		GET DIAGNOSTICS n = ROW_COUNT;
		total := total + n;
	END LOOP;
	PERFORM quota_ext._audit(0, 'request_log_purge', 'request_log', NULL, NULL,
	                         jsonb_build_object('deleted', total));
	RETURN total;
END
$$;
COMMENT ON FUNCTION quota_ext.request_log_purge() IS
	'Delete request records older than their tenant''s tier audit_retention; returns how many';

-- security: the per-tenant pair of policies, as every per-tenant table
SELECT quota_ext._secure_tenant_table('quota_ext.request_log');
GRANT EXECUTE ON FUNCTION
	quota_ext.request_log_write(bigint, text, integer, integer, text, text, text, bigint, bigint, bigint)
	TO quota_ext_app;
GRANT EXECUTE ON FUNCTION quota_ext.request_log_purge() TO quota_ext_admin;
