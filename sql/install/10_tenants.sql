
-- ---------------------------------------------------------------------------
-- 10 tenants, users, API keys, models (src/auth.c for keys)
-- ---------------------------------------------------------------------------

CREATE SEQUENCE quota_ext.tenant_id_seq;
CREATE SEQUENCE quota_ext.user_id_seq;
CREATE SEQUENCE quota_ext.key_id_seq;
CREATE SEQUENCE quota_ext.model_id_seq;

-- Global catalog: tiers.  The five built-in tiers ship with the release
-- (builtin = true); quota_ext_admin changes them and makes new ones with
-- tier_set() (12_tiers.sql).  pg_dump dumps the custom tiers and the
-- built-in ones an admin changed (modified = true); on restore, CREATE
-- EXTENSION has made the built-in rows again, and the trigger below turns
-- the dumped row of a changed built-in tier into an update of it instead of
-- a duplicate key (issue 17: an edit of a built-in tier vanished in
-- pg_dump).
CREATE TABLE quota_ext.tiers (
	tier                   text PRIMARY KEY
	                       CHECK (tier OPERATOR(pg_catalog.~) '^[a-z][a-z0-9_-]{0,62}$'),
	description            text NOT NULL DEFAULT '',
	monthly_calls          bigint CHECK (monthly_calls OPERATOR(pg_catalog.>=) 0),
	rate_limit_per_minute  integer CHECK (rate_limit_per_minute OPERATOR(pg_catalog.>) 0),
	rate_limit_burst       integer CHECK (rate_limit_burst OPERATOR(pg_catalog.>=) 0),
	audit_retention        interval NOT NULL,
	-- a tier default may take at most one day to refill (src/gcra.c):
	-- (burst + 1) * 60 s / per_minute <= 86400 s
	CHECK ((rate_limit_burst::pg_catalog.int8 OPERATOR(pg_catalog.+) 1)
	       OPERATOR(pg_catalog.<=) (1440 OPERATOR(pg_catalog.*) rate_limit_per_minute::pg_catalog.int8)),
	builtin                boolean NOT NULL DEFAULT false,
	created_at             timestamptz NOT NULL DEFAULT pg_catalog.now(),
	-- issue 17: feature flags (name -> boolean), a cap on members, and
	-- whether an admin changed a built-in tier (then it is dumped)
	features               jsonb NOT NULL DEFAULT '{}'
	                       CHECK (pg_catalog.jsonb_typeof(features) OPERATOR(pg_catalog.=) 'object'),
	max_users              integer CHECK (max_users OPERATOR(pg_catalog.>=) 0),
	-- a default money budget per month (enzu's DEFAULT_BUDGET_USD): a
	-- tenant-wide monthly cost quota of origin 'tier', like monthly_calls
	monthly_budget         numeric CHECK (monthly_budget OPERATOR(pg_catalog.>=) 0),
	budget_currency        char(3),
	CHECK ((monthly_budget IS NULL) OPERATOR(pg_catalog.=) (budget_currency IS NULL)),
	modified               boolean NOT NULL DEFAULT false,
	updated_at             timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE quota_ext.tiers IS
	'Service tiers and the defaults they give tenants (monthly_calls NULL = unlimited)';
INSERT INTO quota_ext.tiers (tier, description, monthly_calls, rate_limit_per_minute,
                             rate_limit_burst, audit_retention, builtin) VALUES
	('free',       'Free tier',        1000,  60,    10,   '7 days',   true),
	('starter',    'Starter',          5000,  120,   20,   '30 days',  true),
	('pro',        'Professional',     10000, 600,   100,  '30 days',  true),
	('premium',    'Premium',          50000, 3000,  500,  '90 days',  true),
	('enterprise', 'Enterprise',       NULL,  NULL,  NULL, '365 days', true);

CREATE TABLE quota_ext.tenants (
	tenant_id   bigint PRIMARY KEY DEFAULT pg_catalog.nextval('quota_ext.tenant_id_seq'),
	name        text NOT NULL UNIQUE,
	tier        text NOT NULL REFERENCES quota_ext.tiers (tier),
	status      text NOT NULL DEFAULT 'active'
	            CHECK (status OPERATOR(pg_catalog.=) 'active'
	                   OR status OPERATOR(pg_catalog.=) 'suspended'
	                   OR status OPERATOR(pg_catalog.=) 'closed'),
	timezone    text NOT NULL DEFAULT 'UTC',
	settings    jsonb NOT NULL DEFAULT '{}'
	            CHECK (pg_catalog.jsonb_typeof(settings) OPERATOR(pg_catalog.=) 'object'),
	features    jsonb NOT NULL DEFAULT '{}'
	            CHECK (pg_catalog.jsonb_typeof(features) OPERATOR(pg_catalog.=) 'object'),
	created_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
	updated_at  timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE quota_ext.tenants IS
	'Tenants: name, tier, status (active/suspended/closed), IANA time zone, settings and feature flags';

CREATE TABLE quota_ext.users (
	tenant_id   bigint NOT NULL REFERENCES quota_ext.tenants (tenant_id),
	user_id     bigint NOT NULL DEFAULT pg_catalog.nextval('quota_ext.user_id_seq'),
	email       text NOT NULL,
	role        text NOT NULL CHECK (role OPERATOR(pg_catalog.~) '^[a-z][a-z0-9_-]{0,62}$'),
	status      text NOT NULL DEFAULT 'active'
	            CHECK (status OPERATOR(pg_catalog.=) 'active'
	                   OR status OPERATOR(pg_catalog.=) 'disabled'
	                   OR status OPERATOR(pg_catalog.=) 'removed'),
	created_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
	PRIMARY KEY (tenant_id, user_id),
	UNIQUE (tenant_id, email)
);
COMMENT ON TABLE quota_ext.users IS
	'Members of a tenant with a role (admin, member, viewer or a custom name); status active, disabled or removed (user_remove: kept for history)';

CREATE TABLE quota_ext.api_keys (
	tenant_id    bigint NOT NULL,
	key_id       bigint NOT NULL DEFAULT pg_catalog.nextval('quota_ext.key_id_seq'),
	user_id      bigint NOT NULL,
	name         text,
	key_prefix   text NOT NULL,
	key_hash     bytea NOT NULL CHECK (pg_catalog.length(key_hash) OPERATOR(pg_catalog.=) 32),
	created_at   timestamptz NOT NULL DEFAULT pg_catalog.now(),
	expires_at   timestamptz,
	revoked_at   timestamptz,
	last_used_at timestamptz,
	rotated_to   bigint,
	PRIMARY KEY (tenant_id, key_id),
	FOREIGN KEY (tenant_id, user_id) REFERENCES quota_ext.users (tenant_id, user_id)
);
COMMENT ON TABLE quota_ext.api_keys IS
	'API keys: visible prefix qxk_<tenant>_<key>, SHA-256 of the whole key; the secret is never stored';
COMMENT ON COLUMN quota_ext.api_keys.key_hash IS 'SHA-256 of the whole key string';

-- Global catalog: models.  owner_tenant_id NULL = offered to every tenant;
-- otherwise private to its owner (sharing: see 20_policy.sql).
CREATE TABLE quota_ext.models (
	model_id        bigint PRIMARY KEY DEFAULT pg_catalog.nextval('quota_ext.model_id_seq'),
	name            text NOT NULL,
	owner_tenant_id bigint REFERENCES quota_ext.tenants (tenant_id),
	provider        text,
	description     text,
	metadata        jsonb NOT NULL DEFAULT '{}',
	status          text NOT NULL DEFAULT 'active'
	                CHECK (status OPERATOR(pg_catalog.=) 'active'
	                       OR status OPERATOR(pg_catalog.=) 'retired'),
	created_at      timestamptz NOT NULL DEFAULT pg_catalog.now(),
	-- who may use a tenant-owned model besides its owner (20_policy.sql,
	-- doc/billing.md §8): private (nobody), tenant (the tenants it is
	-- shared with), marketplace (listed; shared by an approved access
	-- request), public (listed; every tenant with an allowing policy).
	-- Global models (owner_tenant_id NULL) are every tenant's: 'tenant'.
	visibility      text NOT NULL DEFAULT 'tenant'
	                CHECK (visibility OPERATOR(pg_catalog.=) ANY (ARRAY['private', 'tenant', 'marketplace', 'public'])),
	UNIQUE NULLS NOT DISTINCT (owner_tenant_id, name)
);
COMMENT ON TABLE quota_ext.models IS
	'Model registry: global models (owner_tenant_id NULL) and models owned by one tenant';

-- ---------------------------------------------------------------------------
-- internal argument checks (raise; never return NULL)
-- ---------------------------------------------------------------------------

CREATE FUNCTION quota_ext._null_arg(arg text) RETURNS void
	LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	RAISE EXCEPTION 'argument "%" must not be null', arg USING ERRCODE = 'null_value_not_allowed';
END
$$;
COMMENT ON FUNCTION quota_ext._null_arg(text) IS 'Internal: raise 22004 for a NULL argument';

-- A caller's text as an error message may quote it: at most 64 characters,
-- marked with "..." when cut, so that an error never echoes a megabyte of
-- input into the log and back (src/args.c QuotaQuoteInput() is the
-- same rule in C).
CREATE FUNCTION quota_ext._quote_input(value text) RETURNS text
	LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
	SELECT CASE WHEN pg_catalog.length($1) OPERATOR(pg_catalog.<=) 64 THEN $1
	            ELSE pg_catalog.left($1, 64) OPERATOR(pg_catalog.||) '...' END
	$$;
COMMENT ON FUNCTION quota_ext._quote_input(text) IS
	'Internal: at most 64 characters of a caller''s text for an error message ("..." when cut)';

-- A display name: 1..maxlen characters, no control characters, no
-- surrounding white space.
CREATE FUNCTION quota_ext._check_label(what text, value text, maxlen integer) RETURNS text
	LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	IF value IS NULL THEN
		PERFORM quota_ext._null_arg(what);
	END IF;
	IF length(value) = 0 OR length(value) > maxlen
	   OR value ~ '[[:cntrl:]]' OR value <> btrim(value) THEN
		RAISE EXCEPTION 'invalid %: must be 1 to % characters without control characters or surrounding spaces', what, maxlen
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	RETURN value;
END
$$;
COMMENT ON FUNCTION quota_ext._check_label(text, text, integer) IS 'Internal: validate a name';

CREATE FUNCTION quota_ext._check_timezone(tz text) RETURNS text
	LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	IF tz IS NULL THEN
		PERFORM quota_ext._null_arg('timezone');
	END IF;
	IF tz = 'UTC' THEN
		RETURN tz;
	END IF;
	IF length(tz) > 64
	   OR NOT EXISTS (SELECT 1 FROM pg_catalog.pg_timezone_names z WHERE z.name = tz) THEN
		RAISE EXCEPTION 'time zone "%" is not an IANA time zone name', quota_ext._quote_input(tz)
			USING ERRCODE = 'invalid_parameter_value',
			      HINT = 'Use a name from pg_timezone_names, such as Europe/Berlin.';
	END IF;
	RETURN tz;
END
$$;
COMMENT ON FUNCTION quota_ext._check_timezone(text) IS 'Internal: validate an IANA time zone name';

CREATE FUNCTION quota_ext._check_role(role text) RETURNS text
	LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	IF role IS NULL THEN
		PERFORM quota_ext._null_arg('role');
	END IF;
	IF role !~ '^[a-z][a-z0-9_-]{0,62}$' THEN
		RAISE EXCEPTION 'invalid role name "%"', quota_ext._quote_input(role)
			USING ERRCODE = 'invalid_parameter_value',
			      HINT = 'Role names are 1 to 63 lower-case letters, digits, "_" or "-", starting with a letter.';
	END IF;
	RETURN role;
END
$$;
COMMENT ON FUNCTION quota_ext._check_role(text) IS 'Internal: validate a user role name';

-- The tenant row for an admin change: checks access, existence, and that
-- the tenant is not closed; locks the row against concurrent status changes.
CREATE FUNCTION quota_ext._tenant_for_update(tenant_id bigint) RETURNS quota_ext.tenants
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
	t quota_ext.tenants;
BEGIN
	IF _tenant_for_update.tenant_id IS NULL THEN
		PERFORM quota_ext._null_arg('tenant_id');
	END IF;
	PERFORM quota_ext._check_tenant_access(_tenant_for_update.tenant_id);
	-- FOR NO KEY UPDATE: admin changes of a tenant still queue on each
	-- other, but not on the calls in flight, whose ledger and key inserts
	-- take FOR KEY SHARE on this row (the foreign keys) while they hold
	-- counters: FOR UPDATE here, then a counter (quota_set of an escrow
	-- quota re-lays its slots), closed a cycle with them
	-- (test/t/070_load_mix.pl, doc/design.md section 5).
	SELECT * INTO t FROM quota_ext.tenants
	 WHERE tenant_id = _tenant_for_update.tenant_id FOR NO KEY UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'tenant % does not exist', _tenant_for_update.tenant_id
			USING ERRCODE = 'undefined_object';
	END IF;
	RETURN t;
END
$$;
COMMENT ON FUNCTION quota_ext._tenant_for_update(bigint) IS 'Internal: lock a tenant row for an admin change';

-- A change of global rows (a tenant, a global model, a list price) is refused
-- inside a tenant context; what names it ("create a tenant").
CREATE FUNCTION quota_ext._no_tenant_context(what text) RETURNS void
	LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	IF quota_ext.current_tenant_id() IS NOT NULL THEN
		RAISE EXCEPTION 'cannot % inside a tenant context', what
			USING ERRCODE = 'insufficient_privilege';
	END IF;
END
$$;
COMMENT ON FUNCTION quota_ext._no_tenant_context(text) IS
	'Internal: raise 42501 inside a tenant context';

-- The tenant must exist (its row visible to the owner: callers check access
-- first with _check_tenant_access).
CREATE FUNCTION quota_ext._tenant_exists(tenant_id bigint) RETURNS void
	LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	PERFORM 1 FROM quota_ext.tenants t WHERE t.tenant_id = _tenant_exists.tenant_id;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'tenant % does not exist', _tenant_exists.tenant_id USING ERRCODE = 'undefined_object';
	END IF;
END
$$;
COMMENT ON FUNCTION quota_ext._tenant_exists(bigint) IS
	'Internal: raise 42704 for a tenant that does not exist';

-- A user and an API key of the tenant, or 42704 (the same text whether the
-- id is another tenant's or nobody's); NULL passes.  SECURITY INVOKER: the
-- definer functions that call it read as the owner; a caller that is not
-- sees only its own tenant's rows, so learns nothing of another's.
CREATE FUNCTION quota_ext._check_user(tenant_id bigint, user_id bigint, key_id bigint DEFAULT NULL)
	RETURNS void
	LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	IF $2 IS NOT NULL AND NOT EXISTS (SELECT FROM quota_ext.users u
	                                   WHERE u.tenant_id = $1 AND u.user_id = $2) THEN
		RAISE EXCEPTION 'user % does not exist', $2 USING ERRCODE = 'undefined_object';
	END IF;
	IF $3 IS NOT NULL AND NOT EXISTS (SELECT FROM quota_ext.api_keys k
	                                   WHERE k.tenant_id = $1 AND k.key_id = $3) THEN
		RAISE EXCEPTION 'API key % does not exist', $3 USING ERRCODE = 'undefined_object';
	END IF;
END
$$;
COMMENT ON FUNCTION quota_ext._check_user(bigint, bigint, bigint) IS
	'Internal: raise 42704 unless the user and the API key (each if not NULL) are the tenant''s';

-- The row of a user (or of an API key) of the tenant, locked FOR UPDATE for
-- an admin change, or 42704 (the same text whether the id is another
-- tenant's or nobody's).  The callers are definer functions that locked the
-- tenant with _tenant_for_update; these read as they do.
CREATE FUNCTION quota_ext._user_for_update(tenant_id bigint, user_id bigint)
	RETURNS quota_ext.users
	LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
	u quota_ext.users;
BEGIN
	SELECT * INTO u FROM quota_ext.users
	 WHERE tenant_id = _user_for_update.tenant_id AND user_id = _user_for_update.user_id FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'user % does not exist', _user_for_update.user_id USING ERRCODE = 'undefined_object';
	END IF;
	RETURN u;
END
$$;
COMMENT ON FUNCTION quota_ext._user_for_update(bigint, bigint) IS
	'Internal: lock a user of the tenant (42704 if it has none of that id)';

CREATE FUNCTION quota_ext._api_key_for_update(tenant_id bigint, key_id bigint)
	RETURNS quota_ext.api_keys
	LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
	k quota_ext.api_keys;
BEGIN
	SELECT * INTO k FROM quota_ext.api_keys
	 WHERE tenant_id = _api_key_for_update.tenant_id AND key_id = _api_key_for_update.key_id FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'API key % does not exist', _api_key_for_update.key_id USING ERRCODE = 'undefined_object';
	END IF;
	RETURN k;
END
$$;
COMMENT ON FUNCTION quota_ext._api_key_for_update(bigint, bigint) IS
	'Internal: lock an API key of the tenant (42704 if it has none of that id)';

-- An admin delete of one configuration row: lock the tenant
-- (_tenant_for_update), refuse a NULL key (22004, named arg), delete the
-- tenant's row of tbl whose key_col is key, audit it (action, object_type,
-- the row's id_col as its id) and answer it as jsonb.  No row: 42704 with
-- the text missing, or NULL (changing nothing) when missing is NULL.
CREATE FUNCTION quota_ext._row_delete(tenant_id bigint, tbl regclass, key_col name, key text,
	object_type text, missing text, arg text DEFAULT NULL, id_col name DEFAULT NULL,
	action text DEFAULT NULL) RETURNS jsonb
	LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	t quota_ext.tenants := quota_ext._tenant_for_update($1);
	r record;
	n bigint;
BEGIN
	IF $4 IS NULL THEN PERFORM quota_ext._null_arg(coalesce($7, $3)); END IF;
	-- the key as text, cast to its column's type (a polymorphic argument
	-- would make a call with NULLs fail before the privilege check); the
	-- row RETURNING, not to_jsonb of it: Citus takes only immutable
	-- functions there
	EXECUTE pg_catalog.format('DELETE FROM %s r WHERE r.tenant_id OPERATOR(pg_catalog.=) $1 '
	                          'AND r.%I OPERATOR(pg_catalog.=) $2::%s RETURNING r.*', $2, $3,
	                          (SELECT a.atttypid::regtype FROM pg_catalog.pg_attribute a
	                            WHERE a.attrelid = $2 AND a.attname = $3))
	   INTO r USING t.tenant_id, $4;
	GET DIAGNOSTICS n = ROW_COUNT;	-- EXECUTE leaves FOUND alone
	IF n = 0 THEN
		IF $6 IS NOT NULL THEN
			RAISE EXCEPTION '%', $6 USING ERRCODE = 'undefined_object';
		END IF;
		RETURN NULL;
	END IF;
	PERFORM quota_ext._audit(t.tenant_id, coalesce($9, $5 || '_delete'), $5,
	                         to_jsonb(r) ->> coalesce($8, $3), to_jsonb(r), NULL);
	RETURN to_jsonb(r);
END
$$;
COMMENT ON FUNCTION quota_ext._row_delete(bigint, regclass, name, text, text, text, text, name, text) IS
	'Internal: delete and audit one configuration row of a tenant (42704 with the text missing when there is none)';

-- The tenant (a row from _tenant_for_update) must not be closed.
CREATE FUNCTION quota_ext._tenant_open(t quota_ext.tenants) RETURNS void
	LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	IF t.status = 'closed' THEN
		RAISE EXCEPTION 'tenant % is closed', t.tenant_id
			USING ERRCODE = 'object_not_in_prerequisite_state';
	END IF;
END
$$;
COMMENT ON FUNCTION quota_ext._tenant_open(quota_ext.tenants) IS
	'Internal: raise 55000 for a closed tenant';

CREATE FUNCTION quota_ext._api_key_mint(tenant_id bigint, key_id bigint,
	OUT api_key text, OUT key_prefix text, OUT key_hash bytea)
	LANGUAGE C VOLATILE AS 'MODULE_PATHNAME', 'quota_ext_api_key_mint';
COMMENT ON FUNCTION quota_ext._api_key_mint(bigint, bigint) IS
	'Internal: make a new random API key for the given ids and return it with its hash';

-- ---------------------------------------------------------------------------
-- tenants
-- ---------------------------------------------------------------------------

CREATE FUNCTION quota_ext.tenant_create(name text, tier text DEFAULT 'free',
	timezone text DEFAULT 'UTC', settings jsonb DEFAULT '{}') RETURNS bigint
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
	t quota_ext.tenants;
BEGIN
	PERFORM quota_ext._check_label('name', tenant_create.name, 200);
	IF tenant_create.tier IS NULL THEN PERFORM quota_ext._null_arg('tier'); END IF;
	IF tenant_create.settings IS NULL THEN PERFORM quota_ext._null_arg('settings'); END IF;
	PERFORM quota_ext._check_timezone(tenant_create.timezone);
	IF jsonb_typeof(tenant_create.settings) <> 'object' THEN
		RAISE EXCEPTION 'settings must be a JSON object' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	PERFORM quota_ext._no_tenant_context('create a tenant');
	PERFORM 1 FROM quota_ext.tiers WHERE tier = quota_ext._tier_name(tenant_create.tier);
	IF NOT FOUND THEN
		RAISE EXCEPTION 'tier "%" does not exist', quota_ext._quote_input(tenant_create.tier)
			USING ERRCODE = 'undefined_object';
	END IF;
	BEGIN
		INSERT INTO quota_ext.tenants (name, tier, timezone, settings)
		VALUES (tenant_create.name, quota_ext._tier_name(tenant_create.tier), tenant_create.timezone,
		        tenant_create.settings)
		RETURNING * INTO t;
	EXCEPTION WHEN unique_violation THEN
		RAISE EXCEPTION 'tenant "%" already exists', quota_ext._quote_input(tenant_create.name)
			USING ERRCODE = 'unique_violation';
	END;
	PERFORM quota_ext._audit(t.tenant_id, 'tenant_create', 'tenant', t.tenant_id::text,
	                         NULL, to_jsonb(t));
	PERFORM quota_ext._tier_quotas_sync(t.tenant_id);
	RETURN t.tenant_id;
END
$$;
COMMENT ON FUNCTION quota_ext.tenant_create(text, text, text, jsonb) IS
	'Create a tenant (status active) and return its id';

CREATE FUNCTION quota_ext.tenant_update(tenant_id bigint, name text DEFAULT NULL,
	tier text DEFAULT NULL, timezone text DEFAULT NULL, settings jsonb DEFAULT NULL,
	features jsonb DEFAULT NULL) RETURNS void
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
	old quota_ext.tenants := quota_ext._tenant_for_update(tenant_update.tenant_id);
	new quota_ext.tenants;
BEGIN
	PERFORM quota_ext._tenant_open(old);
	IF tenant_update.name IS NOT NULL THEN
		PERFORM quota_ext._check_label('name', tenant_update.name, 200);
	END IF;
	IF tenant_update.timezone IS NOT NULL THEN
		PERFORM quota_ext._check_timezone(tenant_update.timezone);
	END IF;
	IF tenant_update.tier IS NOT NULL THEN
		PERFORM 1 FROM quota_ext.tiers WHERE tier = quota_ext._tier_name(tenant_update.tier);
		IF NOT FOUND THEN
			RAISE EXCEPTION 'tier "%" does not exist', quota_ext._quote_input(tenant_update.tier)
				USING ERRCODE = 'undefined_object';
		END IF;
	END IF;
	IF jsonb_typeof(coalesce(tenant_update.settings, '{}')) <> 'object'
	   OR jsonb_typeof(coalesce(tenant_update.features, '{}')) <> 'object' THEN
		RAISE EXCEPTION 'settings and features must be JSON objects'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	BEGIN
		UPDATE quota_ext.tenants SET
			name = coalesce(tenant_update.name, name),
			tier = coalesce(quota_ext._tier_name(tenant_update.tier), tier),
			timezone = coalesce(tenant_update.timezone, timezone),
			settings = coalesce(tenant_update.settings, settings),
			features = coalesce(tenant_update.features, features),
			updated_at = now()
		WHERE tenant_id = old.tenant_id
		RETURNING * INTO new;
	EXCEPTION WHEN unique_violation THEN
		RAISE EXCEPTION 'tenant "%" already exists', quota_ext._quote_input(tenant_update.name)
			USING ERRCODE = 'unique_violation';
	END;
	PERFORM quota_ext._audit(old.tenant_id, 'tenant_update', 'tenant', old.tenant_id::text,
	                         to_jsonb(old), to_jsonb(new));
	IF new.tier <> old.tier THEN
		PERFORM quota_ext._tier_quotas_sync(old.tenant_id);
	END IF;
END
$$;
COMMENT ON FUNCTION quota_ext.tenant_update(bigint, text, text, text, jsonb, jsonb) IS
	'Change a tenant''s name, tier, time zone, settings or feature flags (NULL keeps the value)';

-- Status changes.  closed is final; suspended tenants cannot authenticate.
CREATE FUNCTION quota_ext._tenant_set_status(tenant_id bigint, status text) RETURNS void
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
	old quota_ext.tenants := quota_ext._tenant_for_update(_tenant_set_status.tenant_id);
	new quota_ext.tenants;
BEGIN
	IF old.status = 'closed' THEN
		RAISE EXCEPTION 'tenant % is closed', old.tenant_id
			USING ERRCODE = 'object_not_in_prerequisite_state',
			      HINT = 'Closing a tenant is final.';
	END IF;
	IF old.status = _tenant_set_status.status THEN
		RETURN;
	END IF;
	UPDATE quota_ext.tenants SET status = _tenant_set_status.status, updated_at = now()
	 WHERE tenant_id = old.tenant_id RETURNING * INTO new;
	PERFORM quota_ext._audit(old.tenant_id, 'tenant_' || _tenant_set_status.status, 'tenant',
	                         old.tenant_id::text, to_jsonb(old), to_jsonb(new));
END
$$;
COMMENT ON FUNCTION quota_ext._tenant_set_status(bigint, text) IS 'Internal: change a tenant''s status';

CREATE FUNCTION quota_ext.tenant_suspend(tenant_id bigint) RETURNS void
	LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$ SELECT quota_ext._tenant_set_status($1, 'suspended') $$;
COMMENT ON FUNCTION quota_ext.tenant_suspend(bigint) IS
	'Suspend a tenant: its keys stop authenticating until tenant_activate';

CREATE FUNCTION quota_ext.tenant_activate(tenant_id bigint) RETURNS void
	LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$ SELECT quota_ext._tenant_set_status($1, 'active') $$;
COMMENT ON FUNCTION quota_ext.tenant_activate(bigint) IS 'Reactivate a suspended tenant';

CREATE FUNCTION quota_ext.tenant_close(tenant_id bigint) RETURNS void
	LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$ SELECT quota_ext._tenant_set_status($1, 'closed') $$;
COMMENT ON FUNCTION quota_ext.tenant_close(bigint) IS
	'Close a tenant for good: keys stop working, the rows stay for billing and audit';

-- ---------------------------------------------------------------------------
-- users and API keys
-- ---------------------------------------------------------------------------

CREATE FUNCTION quota_ext._key_insert(tenant_id bigint, user_id bigint, name text,
	expires_at timestamptz, OUT key_id bigint, OUT api_key text)
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
	m record;
BEGIN
	key_id := nextval('quota_ext.key_id_seq');
	m := quota_ext._api_key_mint(_key_insert.tenant_id, key_id);
	INSERT INTO quota_ext.api_keys (tenant_id, key_id, user_id, name, key_prefix, key_hash, expires_at)
	VALUES (_key_insert.tenant_id, key_id, _key_insert.user_id, _key_insert.name,
	        m.key_prefix, m.key_hash, _key_insert.expires_at);
	api_key := m.api_key;
	PERFORM quota_ext._audit(_key_insert.tenant_id, 'api_key_create', 'api_key', key_id::text, NULL,
		jsonb_build_object('key_id', key_id, 'user_id', _key_insert.user_id,
		                   'key_prefix', m.key_prefix, 'name', _key_insert.name,
		                   'expires_at', _key_insert.expires_at));
END
$$;
COMMENT ON FUNCTION quota_ext._key_insert(bigint, bigint, text, timestamptz) IS
	'Internal: mint and store a key; returns the secret once';

CREATE FUNCTION quota_ext.user_create(tenant_id bigint, email text, role text DEFAULT 'member',
	OUT user_id bigint, OUT api_key text)
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
	t quota_ext.tenants := quota_ext._tenant_for_update(user_create.tenant_id);
	u quota_ext.users;
	e text := lower(quota_ext._check_label('email', user_create.email, 320));
	cap integer;
	members bigint;
BEGIN
	PERFORM quota_ext._check_role(user_create.role);
	PERFORM quota_ext._tenant_open(t);
	IF e !~ '^[^@[:space:]]+@[^@[:space:]]+$' THEN
		RAISE EXCEPTION 'invalid email address' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	-- the tier's cap on members (issue 17); the tenant row is locked, so
	-- concurrent user_create calls of one tenant count one after the other
	SELECT tr.max_users INTO cap FROM quota_ext.tiers tr WHERE tr.tier = t.tier;
	IF cap IS NOT NULL THEN
		SELECT count(*) INTO members FROM quota_ext.users
		 WHERE tenant_id = t.tenant_id AND status <> 'removed';
		IF members >= cap THEN
			RAISE EXCEPTION 'tenant % has % users, the most its tier "%" allows', t.tenant_id, members, t.tier
				USING ERRCODE = 'configuration_limit_exceeded',
				      HINT = 'Remove a user with quota_ext.user_remove(), or raise the tier''s max_users with quota_ext.tier_set().';
		END IF;
	END IF;
	BEGIN
		INSERT INTO quota_ext.users (tenant_id, email, role)
		VALUES (t.tenant_id, e, user_create.role) RETURNING * INTO u;
	EXCEPTION WHEN unique_violation THEN
		RAISE EXCEPTION 'user "%" already exists in tenant %', quota_ext._quote_input(e), t.tenant_id
			USING ERRCODE = 'unique_violation';
	END;
	-- the built-in gauge users (32_meters.sql): 53400 past a quota on it
	PERFORM quota_ext._users_gauge(t.tenant_id, 1, u.user_id);
	PERFORM quota_ext._audit(t.tenant_id, 'user_create', 'user', u.user_id::text, NULL, to_jsonb(u));
	user_id := u.user_id;
	SELECT k.api_key INTO api_key FROM quota_ext._key_insert(t.tenant_id, u.user_id, NULL, NULL) k;
END
$$;
COMMENT ON FUNCTION quota_ext.user_create(bigint, text, text) IS
	'Create a user of a tenant with a role and a first API key; the key is shown only here';

CREATE FUNCTION quota_ext.user_update(tenant_id bigint, user_id bigint,
	role text DEFAULT NULL, status text DEFAULT NULL) RETURNS void
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
	t quota_ext.tenants := quota_ext._tenant_for_update(user_update.tenant_id);
	old quota_ext.users;
	new quota_ext.users;
BEGIN
	IF user_update.user_id IS NULL THEN PERFORM quota_ext._null_arg('user_id'); END IF;
	IF user_update.role IS NOT NULL THEN PERFORM quota_ext._check_role(user_update.role); END IF;
	IF user_update.status IS NOT NULL AND user_update.status NOT IN ('active', 'disabled') THEN
		RAISE EXCEPTION 'invalid user status "%"', quota_ext._quote_input(user_update.status)
			USING ERRCODE = 'invalid_parameter_value', HINT = 'Use active or disabled.';
	END IF;
	old := quota_ext._user_for_update(t.tenant_id, user_update.user_id);
	IF old.status = 'removed' THEN
		RAISE EXCEPTION 'user % was removed', old.user_id
			USING ERRCODE = 'object_not_in_prerequisite_state';
	END IF;
	UPDATE quota_ext.users SET role = coalesce(user_update.role, role),
	                           status = coalesce(user_update.status, status)
	 WHERE tenant_id = t.tenant_id AND user_id = old.user_id RETURNING * INTO new;
	PERFORM quota_ext._audit(t.tenant_id, 'user_update', 'user', old.user_id::text,
	                         to_jsonb(old), to_jsonb(new));
END
$$;
COMMENT ON FUNCTION quota_ext.user_update(bigint, bigint, text, text) IS
	'Change a user''s role or status (active/disabled); a disabled user''s keys stop authenticating';

-- What a new key (api_key_create, api_key_import) asks of its holder: an
-- expiry in the future, an open tenant (t, locked by _tenant_for_update),
-- a user of the tenant that was not removed (locked FOR SHARE).
CREATE FUNCTION quota_ext._key_holder_check(t quota_ext.tenants, user_id bigint,
	expires_at timestamptz) RETURNS void
	LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	st text;
BEGIN
	IF _key_holder_check.expires_at IS NOT NULL AND NOT (_key_holder_check.expires_at > now()) THEN
		RAISE EXCEPTION 'expires_at must be in the future' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	PERFORM quota_ext._tenant_open(t);
	SELECT u.status INTO st FROM quota_ext.users u
	 WHERE u.tenant_id = t.tenant_id AND u.user_id = _key_holder_check.user_id FOR SHARE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'user % does not exist', _key_holder_check.user_id USING ERRCODE = 'undefined_object';
	ELSIF st = 'removed' THEN
		RAISE EXCEPTION 'user % was removed', _key_holder_check.user_id
			USING ERRCODE = 'object_not_in_prerequisite_state';
	END IF;
END
$$;
COMMENT ON FUNCTION quota_ext._key_holder_check(quota_ext.tenants, bigint, timestamptz) IS
	'Internal: raise unless a new key''s expiry, tenant and user allow it';

CREATE FUNCTION quota_ext.api_key_create(tenant_id bigint, user_id bigint,
	name text DEFAULT NULL, expires_at timestamptz DEFAULT NULL,
	OUT key_id bigint, OUT api_key text)
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
	t quota_ext.tenants := quota_ext._tenant_for_update(api_key_create.tenant_id);
	k record;
BEGIN
	IF api_key_create.user_id IS NULL THEN PERFORM quota_ext._null_arg('user_id'); END IF;
	IF api_key_create.name IS NOT NULL THEN
		PERFORM quota_ext._check_label('name', api_key_create.name, 200);
	END IF;
	PERFORM quota_ext._key_holder_check(t, api_key_create.user_id, api_key_create.expires_at);
	k := quota_ext._key_insert(t.tenant_id, api_key_create.user_id, api_key_create.name,
	                           api_key_create.expires_at);
	key_id := k.key_id;
	api_key := k.api_key;
END
$$;
COMMENT ON FUNCTION quota_ext.api_key_create(bigint, bigint, text, timestamptz) IS
	'Create another API key for a user; the key is shown only here';

CREATE FUNCTION quota_ext.api_key_revoke(tenant_id bigint, key_id bigint) RETURNS void
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
	t quota_ext.tenants := quota_ext._tenant_for_update(api_key_revoke.tenant_id);
	old quota_ext.api_keys;
BEGIN
	IF api_key_revoke.key_id IS NULL THEN PERFORM quota_ext._null_arg('key_id'); END IF;
	old := quota_ext._api_key_for_update(t.tenant_id, api_key_revoke.key_id);
	IF old.revoked_at IS NOT NULL THEN
		RETURN;
	END IF;
	UPDATE quota_ext.api_keys SET revoked_at = now()
	 WHERE tenant_id = t.tenant_id AND key_id = old.key_id;
	PERFORM quota_ext._audit(t.tenant_id, 'api_key_revoke', 'api_key', old.key_id::text,
		jsonb_build_object('revoked_at', NULL), jsonb_build_object('revoked_at', now()));
END
$$;
COMMENT ON FUNCTION quota_ext.api_key_revoke(bigint, bigint) IS
	'Revoke an API key at once (idempotent)';

CREATE FUNCTION quota_ext.api_key_rotate(tenant_id bigint, key_id bigint,
	grace interval DEFAULT '1 day', OUT new_key_id bigint, OUT api_key text)
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
	t quota_ext.tenants := quota_ext._tenant_for_update(api_key_rotate.tenant_id);
	old quota_ext.api_keys;
	k record;
	old_expiry timestamptz;
BEGIN
	IF api_key_rotate.key_id IS NULL THEN PERFORM quota_ext._null_arg('key_id'); END IF;
	IF api_key_rotate.grace IS NULL THEN PERFORM quota_ext._null_arg('grace'); END IF;
	IF api_key_rotate.grace < interval '0' THEN
		RAISE EXCEPTION 'grace must not be negative' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	-- the old key's new expiry must be a timestamp (the fuzz found 22008
	-- for a grace of 2147483647 days)
	IF api_key_rotate.grace > interval '100 years' THEN
		RAISE EXCEPTION 'grace must be at most 100 years' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	-- Like api_key_create: a closed tenant gets no new credential (rotating
	-- used to mint one; test/pgtap/03_api_keys.sql).
	PERFORM quota_ext._tenant_open(t);
	old := quota_ext._api_key_for_update(t.tenant_id, api_key_rotate.key_id);
	IF old.revoked_at IS NOT NULL OR old.rotated_to IS NOT NULL
	   OR (old.expires_at IS NOT NULL AND old.expires_at <= now()) THEN
		RAISE EXCEPTION 'API key % is revoked, expired or already rotated', old.key_id
			USING ERRCODE = 'object_not_in_prerequisite_state';
	END IF;
	k := quota_ext._key_insert(t.tenant_id, old.user_id, old.name, old.expires_at);
	old_expiry := least(coalesce(old.expires_at, 'infinity'), now() + api_key_rotate.grace);
	UPDATE quota_ext.api_keys SET expires_at = old_expiry, rotated_to = k.key_id
	 WHERE tenant_id = t.tenant_id AND key_id = old.key_id;
	PERFORM quota_ext._audit(t.tenant_id, 'api_key_rotate', 'api_key', old.key_id::text,
		jsonb_build_object('expires_at', old.expires_at),
		jsonb_build_object('expires_at', old_expiry, 'rotated_to', k.key_id));
	new_key_id := k.key_id;
	api_key := k.api_key;
END
$$;
COMMENT ON FUNCTION quota_ext.api_key_rotate(bigint, bigint, interval) IS
	'Replace a key: the new key is shown once; the old one keeps working for the grace period';

-- ---------------------------------------------------------------------------
-- models
-- ---------------------------------------------------------------------------

CREATE FUNCTION quota_ext.model_register(name text, provider text DEFAULT NULL,
	owner_tenant_id bigint DEFAULT NULL, description text DEFAULT NULL,
	metadata jsonb DEFAULT '{}') RETURNS bigint
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
	m quota_ext.models;
BEGIN
	PERFORM quota_ext._check_label('name', model_register.name, 200);
	IF model_register.metadata IS NULL THEN PERFORM quota_ext._null_arg('metadata'); END IF;
	IF model_register.provider IS NOT NULL THEN
		PERFORM quota_ext._check_label('provider', model_register.provider, 200);
	END IF;
	IF model_register.owner_tenant_id IS NOT NULL THEN
		PERFORM quota_ext._tenant_for_update(model_register.owner_tenant_id);
	ELSE
		PERFORM quota_ext._no_tenant_context('register a global model');
	END IF;
	BEGIN
		INSERT INTO quota_ext.models (name, owner_tenant_id, provider, description, metadata)
		VALUES (model_register.name, model_register.owner_tenant_id, model_register.provider,
		        model_register.description, model_register.metadata)
		RETURNING * INTO m;
	EXCEPTION WHEN unique_violation THEN
		RAISE EXCEPTION 'model "%" already exists', quota_ext._quote_input(model_register.name)
			USING ERRCODE = 'unique_violation';
	END;
	PERFORM quota_ext._audit(coalesce(m.owner_tenant_id, 0), 'model_register', 'model',
	                         m.model_id::text, NULL, to_jsonb(m));
	RETURN m.model_id;
END
$$;
COMMENT ON FUNCTION quota_ext.model_register(text, text, bigint, text, jsonb) IS
	'Register a model: global (owner_tenant_id NULL) or owned by one tenant; returns its id';

-- ---------------------------------------------------------------------------
-- authentication (src/auth.c)
-- ---------------------------------------------------------------------------

-- The answer of authenticate().  A named row type rather than OUT parameters,
-- as rate_limit_result: the executor then finds the result shape in the
-- type cache instead of rebuilding it from pg_proc at every execution of a
-- statement that calls authenticate() in FROM (~12k instructions;
-- doc/performance.md).
CREATE TYPE quota_ext.auth_result AS (
	tenant_id bigint,
	user_id   bigint,
	role      text
);
COMMENT ON TYPE quota_ext.auth_result IS
	'authenticate()''s answer: the key''s tenant, user and the user''s role';

CREATE FUNCTION quota_ext.authenticate(api_key text)
	RETURNS quota_ext.auth_result
	LANGUAGE C VOLATILE PARALLEL RESTRICTED AS 'MODULE_PATHNAME', 'quota_ext_authenticate';
COMMENT ON FUNCTION quota_ext.authenticate(text) IS
	'Check an API key and make its tenant the context of this transaction; one error (28000) for every failure';

-- ---------------------------------------------------------------------------
-- security of this section (see 99_finish.sql for the PUBLIC revoke)
-- ---------------------------------------------------------------------------

-- Per-tenant tables: row-level security and read access
-- (_secure_tenant_table, 00_core.sql).
SELECT quota_ext._secure_tenant_table('quota_ext.tenants');
SELECT quota_ext._secure_tenant_table('quota_ext.users');
-- api_keys.key_hash is readable by nobody but the owner: a column grant.
SELECT quota_ext._secure_tenant_table('quota_ext.api_keys', app_select => false);
-- models: a global catalog with tenant-owned rows.  A tenant sees global
-- models and its own.
SELECT quota_ext._secure_tenant_table('quota_ext.models', 'owner_tenant_id', shared_rows => true);

-- tiers: global, readable by both roles, no RLS needed (no tenant data).
GRANT SELECT ON quota_ext.tiers TO quota_ext_app;
GRANT SELECT (tenant_id, key_id, user_id, name, key_prefix, created_at, expires_at,
              revoked_at, last_used_at, rotated_to) ON quota_ext.api_keys TO quota_ext_app;

GRANT EXECUTE ON FUNCTION
	quota_ext.current_tenant_id(),
	quota_ext.current_context(),
	quota_ext.clear_tenant(),
	quota_ext.authenticate(text)
	TO quota_ext_app;

GRANT EXECUTE ON FUNCTION
	quota_ext.set_tenant(bigint),
	quota_ext.tenant_create(text, text, text, jsonb),
	quota_ext.tenant_update(bigint, text, text, text, jsonb, jsonb),
	quota_ext.tenant_suspend(bigint),
	quota_ext.tenant_activate(bigint),
	quota_ext.tenant_close(bigint),
	quota_ext.user_create(bigint, text, text),
	quota_ext.user_update(bigint, bigint, text, text),
	quota_ext.api_key_create(bigint, bigint, text, timestamptz),
	quota_ext.api_key_revoke(bigint, bigint),
	quota_ext.api_key_rotate(bigint, bigint, interval),
	quota_ext.model_register(text, text, bigint, text, jsonb)
	TO quota_ext_admin;

-- pg_dump: the built-in tiers are dumped only once changed (every other
-- table and sequence: 99_finish.sql).
SELECT pg_catalog.pg_extension_config_dump('quota_ext.tiers', 'WHERE NOT builtin OR modified');
