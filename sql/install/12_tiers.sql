
-- ---------------------------------------------------------------------------
-- 12 tiers, feature flags, members (issue 17)
-- ---------------------------------------------------------------------------

-- A tier's name as stored: 'professional' is the built-in 'pro' (the seeds
-- call it both).  Names stay case-sensitive (test/pgtap/04_admin.sql).
CREATE FUNCTION quota_ext._tier_name(tier text) RETURNS text
	LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$ SELECT CASE WHEN $1 OPERATOR(pg_catalog.=) 'professional' THEN 'pro' ELSE $1 END $$;
COMMENT ON FUNCTION quota_ext._tier_name(text) IS
	'Internal: a tier name as stored (professional = pro)';

-- The restore of a changed built-in tier (see 10_tenants.sql): pg_dump's
-- row updates the built-in row CREATE EXTENSION made, instead of failing on
-- its primary key.  Only rows that say builtin = true are merged: nobody
-- but a restore inserts those (tier_set never does, and only a superuser
-- can write the table).
CREATE FUNCTION quota_ext._tier_restore() RETURNS trigger
	LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	IF NEW.builtin THEN
		UPDATE quota_ext.tiers
		   SET description = NEW.description, monthly_calls = NEW.monthly_calls,
		       rate_limit_per_minute = NEW.rate_limit_per_minute,
		       rate_limit_burst = NEW.rate_limit_burst, audit_retention = NEW.audit_retention,
		       features = NEW.features, max_users = NEW.max_users, monthly_budget = NEW.monthly_budget,
		       budget_currency = NEW.budget_currency, modified = NEW.modified,
		       updated_at = NEW.updated_at
		 WHERE tier = NEW.tier AND builtin;
		IF FOUND THEN
			RETURN NULL;
		END IF;
	END IF;
	RETURN NEW;
END
$$;
COMMENT ON FUNCTION quota_ext._tier_restore() IS
	'Internal: a dumped built-in tier updates the one CREATE EXTENSION made';
CREATE TRIGGER tier_restore BEFORE INSERT ON quota_ext.tiers
	FOR EACH ROW EXECUTE FUNCTION quota_ext._tier_restore();

CREATE FUNCTION quota_ext.tier_set(tier text, description text DEFAULT NULL,
	monthly_calls bigint DEFAULT NULL, rate_limit_per_minute integer DEFAULT NULL,
	rate_limit_burst integer DEFAULT NULL, audit_retention interval DEFAULT NULL,
	features jsonb DEFAULT NULL, max_users integer DEFAULT NULL,
	unlimited text[] DEFAULT '{}', monthly_budget numeric DEFAULT NULL,
	budget_currency text DEFAULT NULL) RETURNS text
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
	name text := quota_ext._tier_name(tier_set.tier);
	old quota_ext.tiers;
	new quota_ext.tiers;
	u text;
	f record;
	t bigint;
	cur text;
BEGIN
	PERFORM quota_ext._admin_only('tier_set');
	IF tier_set.tier IS NULL THEN PERFORM quota_ext._null_arg('tier'); END IF;
	IF tier_set.unlimited IS NULL THEN PERFORM quota_ext._null_arg('unlimited'); END IF;
	IF name !~ '^[a-z][a-z0-9_-]{0,62}$' THEN
		RAISE EXCEPTION 'invalid tier name "%"', quota_ext._quote_input(tier_set.tier)
			USING ERRCODE = 'invalid_parameter_value',
			      HINT = 'A letter, then up to 62 letters, digits, _ or -.';
	END IF;
	IF tier_set.description IS NOT NULL THEN
		PERFORM quota_ext._check_label('description', tier_set.description, 200);
	END IF;
	FOREACH u IN ARRAY tier_set.unlimited LOOP
		IF u IS NULL OR u NOT IN ('monthly_calls', 'rate_limit', 'max_users', 'monthly_budget') THEN
			RAISE EXCEPTION 'invalid entry "%" in unlimited', quota_ext._quote_input(u)
				USING ERRCODE = 'invalid_parameter_value',
				      HINT = 'Use monthly_calls, rate_limit, max_users or monthly_budget.';
		END IF;
	END LOOP;
	IF tier_set.monthly_calls < 0 OR tier_set.rate_limit_per_minute <= 0
	   OR tier_set.rate_limit_burst < 0 OR tier_set.max_users < 0 THEN
		RAISE EXCEPTION 'monthly_calls, rate_limit_burst and max_users must not be negative, rate_limit_per_minute must be positive'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF (tier_set.monthly_calls IS NOT NULL AND 'monthly_calls' = ANY (tier_set.unlimited))
	   OR ((tier_set.rate_limit_per_minute IS NOT NULL OR tier_set.rate_limit_burst IS NOT NULL)
	       AND 'rate_limit' = ANY (tier_set.unlimited))
	   OR (tier_set.max_users IS NOT NULL AND 'max_users' = ANY (tier_set.unlimited)) THEN
		RAISE EXCEPTION 'a limit cannot be set and unlimited at once' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF (tier_set.monthly_budget IS NULL) <> (tier_set.budget_currency IS NULL) THEN
		RAISE EXCEPTION 'monthly_budget and budget_currency go together' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF tier_set.monthly_budget IS NOT NULL THEN
		IF 'monthly_budget' = ANY (tier_set.unlimited) THEN
			RAISE EXCEPTION 'a limit cannot be set and unlimited at once' USING ERRCODE = 'invalid_parameter_value';
		END IF;
		cur := quota_ext._check_currency(upper(tier_set.budget_currency));
		PERFORM quota_ext._money_to_micro(tier_set.monthly_budget, 'monthly_budget');
	END IF;
	IF tier_set.audit_retention IS NOT NULL AND NOT (tier_set.audit_retention > interval '0') THEN
		RAISE EXCEPTION 'audit_retention must be positive' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF tier_set.features IS NOT NULL THEN
		IF jsonb_typeof(tier_set.features) <> 'object' THEN
			RAISE EXCEPTION 'features must be a JSON object of booleans' USING ERRCODE = 'invalid_parameter_value';
		END IF;
		FOR f IN SELECT * FROM jsonb_each(tier_set.features) LOOP
			IF jsonb_typeof(f.value) <> 'boolean' OR f.key !~ '^[A-Za-z][A-Za-z0-9_.:-]{0,62}$' THEN
				RAISE EXCEPTION 'invalid feature "%"', quota_ext._quote_input(f.key)
					USING ERRCODE = 'invalid_parameter_value',
					      HINT = 'Features map a name (a letter, then letters, digits, _ . : -) to true or false.';
			END IF;
		END LOOP;
	END IF;

	SELECT * INTO old FROM quota_ext.tiers WHERE tier = name FOR UPDATE;
	BEGIN
	IF old.tier IS NULL THEN
		INSERT INTO quota_ext.tiers (tier, description, monthly_calls, rate_limit_per_minute,
		                             rate_limit_burst, audit_retention, features, max_users,
		                             monthly_budget, budget_currency)
		VALUES (name, coalesce(tier_set.description, ''), tier_set.monthly_calls,
		        tier_set.rate_limit_per_minute,
		        CASE WHEN tier_set.rate_limit_per_minute IS NOT NULL
		             THEN coalesce(tier_set.rate_limit_burst, 0) END,
		        coalesce(tier_set.audit_retention, interval '30 days'),
		        coalesce(tier_set.features, '{}'), tier_set.max_users, tier_set.monthly_budget, cur)
		RETURNING * INTO new;
	ELSE
		UPDATE quota_ext.tiers SET
			description = coalesce(tier_set.description, description),
			-- NULL keeps a value; a limit named in unlimited is lifted (NULL)
			monthly_calls = CASE WHEN 'monthly_calls' <> ALL (tier_set.unlimited) THEN coalesce(tier_set.monthly_calls, monthly_calls) END,
			rate_limit_per_minute = CASE WHEN 'rate_limit' <> ALL (tier_set.unlimited) THEN coalesce(tier_set.rate_limit_per_minute, rate_limit_per_minute) END,
			rate_limit_burst = CASE WHEN 'rate_limit' <> ALL (tier_set.unlimited) THEN coalesce(tier_set.rate_limit_burst, rate_limit_burst,
			                                      CASE WHEN tier_set.rate_limit_per_minute IS NOT NULL THEN 0 END) END,
			audit_retention = coalesce(tier_set.audit_retention, audit_retention),
			features = coalesce(tier_set.features, features),
			max_users = CASE WHEN 'max_users' <> ALL (tier_set.unlimited) THEN coalesce(tier_set.max_users, max_users) END,
			monthly_budget = CASE WHEN 'monthly_budget' <> ALL (tier_set.unlimited) THEN coalesce(tier_set.monthly_budget, monthly_budget) END,
			budget_currency = CASE WHEN 'monthly_budget' <> ALL (tier_set.unlimited) THEN coalesce(cur, budget_currency) END,
			modified = modified OR builtin,
			updated_at = now()
		 WHERE tier = old.tier
		RETURNING * INTO new;
	END IF;
	EXCEPTION WHEN check_violation THEN
		RAISE EXCEPTION 'a tier''s burst must refill within a day: (burst + 1) <= 1440 * rate_limit_per_minute'
			USING ERRCODE = 'invalid_parameter_value';
	END;
	-- a burst without a rate, or a rate without a burst, is no rate limit
	IF (new.rate_limit_per_minute IS NULL) <> (new.rate_limit_burst IS NULL) THEN
		RAISE EXCEPTION 'rate_limit_per_minute and rate_limit_burst go together'
			USING ERRCODE = 'invalid_parameter_value',
			      HINT = 'Set rate_limit_per_minute (and rate_limit_burst), or pass unlimited => ''{rate_limit}''.';
	END IF;
	PERFORM quota_ext._audit(0, 'tier_set', 'tier', new.tier, to_jsonb(old), to_jsonb(new));
	-- the tenants of the tier follow its monthly calls and budget at once
	IF old.monthly_calls IS DISTINCT FROM new.monthly_calls
	   OR old.monthly_budget IS DISTINCT FROM new.monthly_budget
	   OR old.budget_currency IS DISTINCT FROM new.budget_currency THEN
		FOR t IN SELECT tn.tenant_id FROM quota_ext.tenants tn WHERE tn.tier = new.tier
		          ORDER BY tn.tenant_id LOOP
			PERFORM quota_ext._tier_quotas_sync(t);
		END LOOP;
	END IF;
	RETURN new.tier;
END
$$;
COMMENT ON FUNCTION quota_ext.tier_set(text, text, bigint, integer, integer, interval, jsonb, integer, text[], numeric, text) IS
	'Create or change a tier (NULL keeps a value; unlimited lists the limits to lift); its tenants follow at once';

-- tenant override, else the tier's, else false
CREATE FUNCTION quota_ext.feature_enabled(tenant_id bigint, feature text) RETURNS boolean
	LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	tf jsonb;
	rf jsonb;
BEGIN
	IF feature_enabled.tenant_id IS NULL THEN PERFORM quota_ext._null_arg('tenant_id'); END IF;
	IF feature_enabled.feature IS NULL THEN PERFORM quota_ext._null_arg('feature'); END IF;
	PERFORM quota_ext._check_tenant_access(feature_enabled.tenant_id);
	SELECT t.features -> feature_enabled.feature, tr.features -> feature_enabled.feature INTO tf, rf
	  FROM quota_ext.tenants t JOIN quota_ext.tiers tr ON tr.tier = t.tier
	 WHERE t.tenant_id = feature_enabled.tenant_id;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'tenant % does not exist', feature_enabled.tenant_id USING ERRCODE = 'undefined_object';
	END IF;
	IF jsonb_typeof(tf) = 'boolean' THEN
		RETURN tf::text::boolean;
	ELSIF jsonb_typeof(rf) = 'boolean' THEN
		RETURN rf::text::boolean;
	END IF;
	RETURN false;
END
$$;
COMMENT ON FUNCTION quota_ext.feature_enabled(bigint, text) IS
	'Whether a feature is on for a tenant: its own flag (tenant_update(features =>)), else its tier''s, else false';

-- A member leaves: the user row stays (usage and audit history name it),
-- marked removed; every key of the user is revoked; idempotent.
CREATE FUNCTION quota_ext.user_remove(tenant_id bigint, user_id bigint) RETURNS void
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
	t quota_ext.tenants := quota_ext._tenant_for_update(user_remove.tenant_id);
	old quota_ext.users;
	new quota_ext.users;
	keys bigint[];
BEGIN
	IF user_remove.user_id IS NULL THEN PERFORM quota_ext._null_arg('user_id'); END IF;
	old := quota_ext._user_for_update(t.tenant_id, user_remove.user_id);
	IF old.status = 'removed' THEN
		RETURN;
	END IF;
	WITH r AS (
		UPDATE quota_ext.api_keys SET revoked_at = now()
		 WHERE tenant_id = t.tenant_id AND user_id = old.user_id AND revoked_at IS NULL
		RETURNING key_id)
	SELECT coalesce(array_agg(key_id ORDER BY key_id), '{}') INTO keys FROM r;
	UPDATE quota_ext.users SET status = 'removed'
	 WHERE tenant_id = t.tenant_id AND user_id = old.user_id RETURNING * INTO new;
	PERFORM quota_ext._users_gauge(t.tenant_id, -1, old.user_id);
	PERFORM quota_ext._audit(t.tenant_id, 'user_remove', 'user', old.user_id::text,
	                         to_jsonb(old), to_jsonb(new) || jsonb_build_object('revoked_keys', keys));
END
$$;
COMMENT ON FUNCTION quota_ext.user_remove(bigint, bigint) IS
	'Remove a member: status removed, every key revoked, the row and its history kept (idempotent)';

-- Idempotency keys older than older_than are deleted, tenant by tenant; a
-- retry with a purged key is then a new request (doc/reference.md).
CREATE FUNCTION quota_ext.idempotency_purge(older_than interval DEFAULT '7 days') RETURNS bigint
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	t bigint;
	n bigint;
	total bigint := 0;
BEGIN
	PERFORM quota_ext._admin_only('idempotency_purge');
	IF idempotency_purge.older_than IS NULL THEN PERFORM quota_ext._null_arg('older_than'); END IF;
	IF NOT (idempotency_purge.older_than >= interval '0') THEN
		RAISE EXCEPTION 'older_than must not be negative' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF idempotency_purge.older_than > interval '100 years' THEN
		RAISE EXCEPTION 'older_than must be at most 100 years'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	FOR t IN SELECT tn.tenant_id FROM quota_ext.tenants tn ORDER BY tn.tenant_id LOOP
		DELETE FROM quota_ext.idempotency_keys k
		 WHERE k.tenant_id = t AND k.created_at < now() - idempotency_purge.older_than;
		GET DIAGNOSTICS n = ROW_COUNT;
		total := total + n;
	END LOOP;
	PERFORM quota_ext._audit(0, 'idempotency_purge', 'idempotency_keys', NULL, NULL,
	                         jsonb_build_object('older_than', idempotency_purge.older_than,
	                                            'deleted', total));
	RETURN total;
END
$$;
COMMENT ON FUNCTION quota_ext.idempotency_purge(interval) IS
	'Delete idempotency keys older than older_than (default 7 days), every tenant; returns how many';

GRANT EXECUTE ON FUNCTION
	quota_ext.feature_enabled(bigint, text)
	TO quota_ext_app;
GRANT EXECUTE ON FUNCTION
	quota_ext.tier_set(text, text, bigint, integer, integer, interval, jsonb, integer, text[], numeric, text),
	quota_ext.user_remove(bigint, bigint),
	quota_ext.idempotency_purge(interval)
	TO quota_ext_admin;

-- ---------------------------------------------------------------------------
-- existing API keys brought over (issue 17)
-- ---------------------------------------------------------------------------

-- An imported key carries no tenant or key id, so authenticate() finds it
-- by its SHA-256 (src/auth.c, quota_imported_key): the one lookup of the
-- extension not keyed by tenant_id.
CREATE INDEX api_keys_hash ON quota_ext.api_keys (key_hash);

-- Store an existing key of any format (hashed only, like a minted one) for
-- a user: key_prefix imp_<tenant>_<key> names it without any of its secret.
-- The rule: 20 to 255 bytes of printable ASCII without spaces, at least 8
-- different characters, not beginning with qx in any case (reserved for
-- the minted keys qxk_..., so a malformed minted key reads no table).
CREATE FUNCTION quota_ext.api_key_import(tenant_id bigint, user_id bigint, api_key text,
	name text DEFAULT NULL, expires_at timestamptz DEFAULT NULL) RETURNS bigint
	LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
	t quota_ext.tenants := quota_ext._tenant_for_update(api_key_import.tenant_id);
	k bigint;
	h bytea;
	pfx text;
BEGIN
	IF api_key_import.user_id IS NULL THEN PERFORM quota_ext._null_arg('user_id'); END IF;
	IF api_key_import.api_key IS NULL THEN PERFORM quota_ext._null_arg('api_key'); END IF;
	IF api_key_import.name IS NOT NULL THEN
		PERFORM quota_ext._check_label('name', api_key_import.name, 200);
	END IF;
	-- the key is never echoed in a message
	IF octet_length(api_key_import.api_key) NOT BETWEEN 20 AND 255
	   OR api_key_import.api_key !~ '^[!-~]+$' THEN
		RAISE EXCEPTION 'an imported API key must be 20 to 255 printable ASCII characters without spaces'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF (SELECT count(DISTINCT c) FROM regexp_split_to_table(api_key_import.api_key, '') c) < 8 THEN
		RAISE EXCEPTION 'an imported API key must have at least 8 different characters'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	-- imported keys are found by hash alone, so one guess is tried against
	-- every tenant's: at least 100 bits by the key's own character
	-- frequencies (length x empirical entropy; a random 24-character
	-- base62 or 32-character hex key passes, a 20-character one does not)
	IF (SELECT sum(-f.n * log(2::numeric, f.n::numeric / octet_length(api_key_import.api_key)))
	      FROM (SELECT count(*) AS n FROM regexp_split_to_table(api_key_import.api_key, '') c GROUP BY c) f)
	   < 100 THEN
		RAISE EXCEPTION 'an imported API key is too easy to guess'
			USING ERRCODE = 'invalid_parameter_value',
			      DETAIL = 'It has less than 100 bits by its character frequencies.',
			      HINT = 'Import keys of at least 24 random characters (or 32 hex digits).';
	END IF;
	IF api_key_import.api_key ILIKE 'qx%' THEN
		RAISE EXCEPTION 'keys beginning with qx are reserved for the keys quota_ext mints'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	PERFORM quota_ext._key_holder_check(t, api_key_import.user_id, api_key_import.expires_at);
	h := sha256(convert_to(api_key_import.api_key, getdatabaseencoding()));
	-- the same key twice (in any tenant) could not tell its tenant; imports
	-- of one hash wait for each other (an index on key_hash alone could not
	-- be distributed by tenant_id), and READ COMMITTED reads the winner's row
	PERFORM pg_advisory_xact_lock(1903520609, ('x' || encode(substr(h, 1, 4), 'hex'))::bit(32)::integer);
	IF EXISTS (SELECT 1 FROM quota_ext.api_keys WHERE key_hash = h) THEN
		RAISE EXCEPTION 'this API key is already stored' USING ERRCODE = 'unique_violation';
	END IF;
	k := nextval('quota_ext.key_id_seq');
	pfx := 'imp_' || t.tenant_id || '_' || k;
	INSERT INTO quota_ext.api_keys (tenant_id, key_id, user_id, name, key_prefix, key_hash, expires_at)
	VALUES (t.tenant_id, k, api_key_import.user_id, api_key_import.name, pfx, h, api_key_import.expires_at);
	PERFORM quota_ext._audit(t.tenant_id, 'api_key_import', 'api_key', k::text, NULL,
		jsonb_build_object('key_id', k, 'user_id', api_key_import.user_id, 'key_prefix', pfx,
		                   'name', api_key_import.name, 'expires_at', api_key_import.expires_at));
	RETURN k;
END
$$;
COMMENT ON FUNCTION quota_ext.api_key_import(bigint, bigint, text, text, timestamptz) IS
	'Bring over an existing API key of any format for a user: stored as its SHA-256 only, authenticated like a minted key';
GRANT EXECUTE ON FUNCTION quota_ext.api_key_import(bigint, bigint, text, text, timestamptz) TO quota_ext_admin;
