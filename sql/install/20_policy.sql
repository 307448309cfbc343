
-- ---------------------------------------------------------------------------
-- 20 policies: which models a tenant (and which of its roles) may use
-- (src/policy.c evaluates them)
-- ---------------------------------------------------------------------------

CREATE SEQUENCE quota_ext.policy_id_seq;

CREATE INDEX models_name ON quota_ext.models (name);

-- A tenant-owned model shared with another tenant.  The owner grants; the
-- grantee still needs its own allow policy.
CREATE TABLE quota_ext.model_shares (
	tenant_id   bigint NOT NULL REFERENCES quota_ext.tenants (tenant_id),
	model_id    bigint NOT NULL REFERENCES quota_ext.models (model_id),
	granted_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
	PRIMARY KEY (tenant_id, model_id)
);
COMMENT ON TABLE quota_ext.model_shares IS
	'Models owned by one tenant and shared with another (tenant_id is the grantee)';

-- model_pattern is a model name, or a prefix ending in "*" ("gpt-4*").
-- An exact policy wins over patterns; among patterns the longest wins.
CREATE TABLE quota_ext.policies (
	tenant_id     bigint NOT NULL REFERENCES quota_ext.tenants (tenant_id),
	policy_id     bigint NOT NULL DEFAULT pg_catalog.nextval('quota_ext.policy_id_seq'),
	model_pattern text NOT NULL,
	is_prefix     boolean NOT NULL,
	allowed       boolean NOT NULL,
	roles_allowed text[],
	created_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
	updated_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
	PRIMARY KEY (tenant_id, policy_id),
	UNIQUE (tenant_id, model_pattern)
);
COMMENT ON TABLE quota_ext.policies IS
	'Per-tenant model access policies; no matching policy means deny';

-- Resolve a model name for a tenant: its own model of that name, else the
-- global one, else another tenant's that it may use: one shared with it (by
-- model_share or an approved access request) unless the owner made it
-- private, else a public one.  A global name is never taken by another
-- tenant's model (an attacker's review: a squatter's shared or public model
-- of a global model's name took the tenant's calls and their billing).
-- Among other tenants' models of one name shared with it the first
-- registered wins; at most one is public (model_visibility_set: 23505).
-- via_public: the answer is another tenant's public model not shared with
-- this one, which only an exact policy allows (src/policy.c).  One statement
-- per table kind, each per-tenant one naming tenant_id, PL/pgSQL rather than
-- a parameterised SQL function: routable on Citus (issue 16).
CREATE FUNCTION quota_ext._model_resolution(tenant_id bigint, model text,
	OUT model_id bigint, OUT via_public boolean)
	LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	shared bigint[];
BEGIN
	via_public := false;
	-- the tenant's own model
	SELECT m.model_id INTO model_id FROM quota_ext.models m
	 WHERE m.name OPERATOR(pg_catalog.=) $2 AND m.status OPERATOR(pg_catalog.=) 'active'
	   AND m.owner_tenant_id OPERATOR(pg_catalog.=) $1
	 ORDER BY m.model_id LIMIT 1;
	IF FOUND THEN
		RETURN;
	END IF;
	-- then the global one
	SELECT m.model_id INTO model_id FROM quota_ext.models m
	 WHERE m.name OPERATOR(pg_catalog.=) $2 AND m.status OPERATOR(pg_catalog.=) 'active'
	   AND m.owner_tenant_id IS NULL
	 ORDER BY m.model_id LIMIT 1;
	IF FOUND THEN
		RETURN;
	END IF;
	-- then one another tenant shared with it, unless made private
	SELECT pg_catalog.array_agg(s.model_id) INTO shared FROM quota_ext.model_shares s
	 WHERE s.tenant_id OPERATOR(pg_catalog.=) $1;
	IF shared IS NOT NULL THEN
		SELECT m.model_id INTO model_id FROM quota_ext.models m
		 WHERE m.name OPERATOR(pg_catalog.=) $2 AND m.status OPERATOR(pg_catalog.=) 'active'
		   AND m.owner_tenant_id IS NOT NULL AND m.visibility OPERATOR(pg_catalog.<>) 'private'
		   AND m.model_id OPERATOR(pg_catalog.=) ANY (shared)
		 ORDER BY m.model_id LIMIT 1;
		IF FOUND THEN
			RETURN;
		END IF;
	END IF;
	-- then another tenant's public model
	SELECT m.model_id INTO model_id FROM quota_ext.models m
	 WHERE m.name OPERATOR(pg_catalog.=) $2 AND m.status OPERATOR(pg_catalog.=) 'active'
	   AND m.owner_tenant_id IS NOT NULL AND m.visibility OPERATOR(pg_catalog.=) 'public'
	 ORDER BY m.model_id LIMIT 1;
	via_public := FOUND;
END
$$;
COMMENT ON FUNCTION quota_ext._model_resolution(bigint, text) IS
	'Internal: the model a name means for a tenant (own, then global, then shared, then public) and whether only its being public makes it usable';

CREATE FUNCTION quota_ext._model_resolve(tenant_id bigint, model text) RETURNS bigint
	LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	RETURN (quota_ext._model_resolution($1, $2)).model_id;
END
$$;
COMMENT ON FUNCTION quota_ext._model_resolve(bigint, text) IS
	'Internal: the model a name means for a tenant (_model_resolution''s model_id)';

CREATE FUNCTION quota_ext._model_for(tenant_id bigint, model text) RETURNS bigint
	LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	mid bigint := quota_ext._model_resolve($1, $2);
BEGIN
	IF mid IS NULL THEN
		RAISE EXCEPTION 'model "%" does not exist', quota_ext._quote_input($2) USING ERRCODE = 'undefined_object';
	END IF;
	RETURN mid;
END
$$;
COMMENT ON FUNCTION quota_ext._model_for(bigint, text) IS
	'Internal: _model_resolve, or 42704 when the name means no model for the tenant';

-- Internal: an owner's model by name, for a change by its owner (the owner
-- is checked and locked like every admin change); 42704 when the owner has
-- no model of that name.  NO KEY: no writer changes a model's key, and the
-- rows that reference it (quotas, prices, policies: FOR KEY SHARE) do not
-- wait on it.
CREATE FUNCTION quota_ext._owned_model(owner_tenant_id bigint, model text) RETURNS quota_ext.models
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	m quota_ext.models;
BEGIN
	IF $2 IS NULL THEN PERFORM quota_ext._null_arg('model'); END IF;
	PERFORM quota_ext._tenant_for_update($1);
	SELECT * INTO m FROM quota_ext.models x
	 WHERE x.owner_tenant_id = $1 AND x.name = $2
	 FOR NO KEY UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'model "%" does not exist', quota_ext._quote_input($2)
			USING ERRCODE = 'undefined_object',
			      HINT = 'The owner names one of its own models.';
	END IF;
	RETURN m;
END
$$;
COMMENT ON FUNCTION quota_ext._owned_model(bigint, text) IS
	'Internal: lock an owner''s model of a name (42704 if it owns none)';

CREATE FUNCTION quota_ext.model_share(owner_tenant_id bigint, model text, grantee_tenant_id bigint)
	RETURNS void
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	m quota_ext.models := quota_ext._owned_model(owner_tenant_id, model);
BEGIN
	IF grantee_tenant_id IS NULL THEN PERFORM quota_ext._null_arg('grantee_tenant_id'); END IF;
	IF m.visibility = 'private' THEN
		RAISE EXCEPTION 'model "%" is private', quota_ext._quote_input(model)
			USING ERRCODE = 'object_not_in_prerequisite_state',
			      HINT = 'A private model is its owner''s only: model_visibility_set(owner, model, ''tenant'') first.';
	END IF;
	PERFORM 1 FROM quota_ext.tenants t WHERE t.tenant_id = grantee_tenant_id;
	IF NOT FOUND OR grantee_tenant_id = owner_tenant_id THEN
		RAISE EXCEPTION 'tenant % does not exist', grantee_tenant_id USING ERRCODE = 'undefined_object';
	END IF;
	INSERT INTO quota_ext.model_shares (tenant_id, model_id) VALUES (grantee_tenant_id, m.model_id)
	ON CONFLICT DO NOTHING;
	IF FOUND THEN
		PERFORM quota_ext._audit(owner_tenant_id, 'model_share', 'model', m.model_id::text, NULL,
		                         jsonb_build_object('grantee_tenant_id', grantee_tenant_id));
	END IF;
END
$$;
COMMENT ON FUNCTION quota_ext.model_share(bigint, text, bigint) IS
	'Share a model owned by one tenant with another; the grantee still needs an allow policy';

CREATE FUNCTION quota_ext.model_unshare(owner_tenant_id bigint, model text, grantee_tenant_id bigint)
	RETURNS void
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	m quota_ext.models := quota_ext._owned_model(owner_tenant_id, model);
BEGIN
	IF grantee_tenant_id IS NULL THEN PERFORM quota_ext._null_arg('grantee_tenant_id'); END IF;
	DELETE FROM quota_ext.model_shares s WHERE s.tenant_id = grantee_tenant_id AND s.model_id = m.model_id;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'model "%" is not shared with tenant %', quota_ext._quote_input(model), grantee_tenant_id
			USING ERRCODE = 'undefined_object';
	END IF;
	PERFORM quota_ext._audit(owner_tenant_id, 'model_unshare', 'model', m.model_id::text,
	                         jsonb_build_object('grantee_tenant_id', grantee_tenant_id), NULL);
END
$$;
COMMENT ON FUNCTION quota_ext.model_unshare(bigint, text, bigint) IS 'Withdraw a model share';

CREATE FUNCTION quota_ext.policy_set(tenant_id bigint, model text, allowed boolean,
	roles_allowed text[] DEFAULT NULL) RETURNS bigint
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
	t quota_ext.tenants := quota_ext._tenant_for_update(policy_set.tenant_id);
	old quota_ext.policies;
	new quota_ext.policies;
	prefix boolean;
	r text;
	-- (a value, not now() in DO UPDATE SET: Citus refuses volatile functions there)
	changed_at timestamptz := pg_catalog.now();
BEGIN
	PERFORM quota_ext._check_label('model', policy_set.model, 200);
	IF policy_set.allowed IS NULL THEN PERFORM quota_ext._null_arg('allowed'); END IF;
	prefix := right(policy_set.model, 1) = '*';
	IF prefix AND (length(policy_set.model) = 1 OR strpos(left(policy_set.model, -1), '*') > 0) THEN
		RAISE EXCEPTION 'invalid model pattern "%"', quota_ext._quote_input(policy_set.model)
			USING ERRCODE = 'invalid_parameter_value',
			      HINT = 'A pattern is a model name prefix followed by one "*", as in gpt-4*.';
	END IF;
	IF NOT prefix THEN
		PERFORM quota_ext._model_for(t.tenant_id, policy_set.model);
	END IF;
	IF policy_set.roles_allowed IS NOT NULL THEN
		IF array_ndims(policy_set.roles_allowed) > 1 THEN
			RAISE EXCEPTION 'roles_allowed must be a one-dimensional array' USING ERRCODE = 'invalid_parameter_value';
		END IF;
		FOREACH r IN ARRAY policy_set.roles_allowed LOOP
			PERFORM quota_ext._check_role(r);
		END LOOP;
	END IF;
	SELECT * INTO old FROM quota_ext.policies
	 WHERE tenant_id = t.tenant_id AND model_pattern = policy_set.model FOR UPDATE;
	INSERT INTO quota_ext.policies (tenant_id, model_pattern, is_prefix, allowed, roles_allowed)
	VALUES (t.tenant_id, policy_set.model, prefix, policy_set.allowed, policy_set.roles_allowed)
	ON CONFLICT (tenant_id, model_pattern) DO UPDATE
	   SET allowed = EXCLUDED.allowed, roles_allowed = EXCLUDED.roles_allowed, updated_at = changed_at
	RETURNING * INTO new;
	PERFORM quota_ext._audit(t.tenant_id, 'policy_set', 'policy', new.policy_id::text,
	                         to_jsonb(old), to_jsonb(new));
	RETURN new.policy_id;
END
$$;
COMMENT ON FUNCTION quota_ext.policy_set(bigint, text, boolean, text[]) IS
	'Allow or deny a model (or a "prefix*" pattern) for a tenant, optionally only for some roles';

CREATE FUNCTION quota_ext.policy_delete(tenant_id bigint, model text) RETURNS void
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	PERFORM quota_ext._row_delete($1, 'quota_ext.policies', 'model_pattern', $2, 'policy',
		pg_catalog.format('policy for model "%s" does not exist', quota_ext._quote_input($2)),
		arg => 'model', id_col => 'policy_id');
END
$$;
COMMENT ON FUNCTION quota_ext.policy_delete(bigint, text) IS
	'Remove a policy: the model falls back to a matching pattern, or to deny';

CREATE FUNCTION quota_ext.policy_check(tenant_id bigint, model text, role text DEFAULT NULL)
	RETURNS boolean
	LANGUAGE C VOLATILE PARALLEL RESTRICTED AS 'MODULE_PATHNAME', 'quota_ext_policy_check';
COMMENT ON FUNCTION quota_ext.policy_check(bigint, text, text) IS
	'May this tenant (and role; NULL = the authenticated user''s role) use this model?  Default deny';

-- security of this section
SELECT quota_ext._secure_tenant_table('quota_ext.policies');
SELECT quota_ext._secure_tenant_table('quota_ext.model_shares');
-- a tenant also sees the models shared with it (unless their owner made them private)
CREATE POLICY shared_models ON quota_ext.models FOR SELECT TO quota_ext_app
	USING (models.visibility OPERATOR(pg_catalog.<>) 'private'
	       AND EXISTS (SELECT 1 FROM quota_ext.model_shares s
	                    WHERE s.tenant_id OPERATOR(pg_catalog.=) quota_ext.current_tenant_id()
	                      AND s.model_id OPERATOR(pg_catalog.=) models.model_id));

GRANT EXECUTE ON FUNCTION quota_ext.policy_check(bigint, text, text) TO quota_ext_app;
GRANT EXECUTE ON FUNCTION
	quota_ext.policy_set(bigint, text, boolean, text[]),
	quota_ext.policy_delete(bigint, text),
	quota_ext.model_share(bigint, text, bigint),
	quota_ext.model_unshare(bigint, text, bigint)
	TO quota_ext_admin;
