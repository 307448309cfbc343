
-- ---------------------------------------------------------------------------
-- 65 Citus: distribute the extension's tables (issue 16, first steps)
-- ---------------------------------------------------------------------------
-- quota_ext.distribute() turns an installed quota_ext on a Citus coordinator
-- into reference tables (what is global: tiers, tenants, models, prices,
-- rollup_state) and tables distributed by tenant_id, all in one co-location
-- group, and delegates the functions that take a tenant to the node that
-- holds it.  quota_ext.distribution_status() shows the result.  What works
-- on Citus and what does not yet: doc/scaling.md (test/t/091_citus.pl).

-- The cluster secret of the tenant context on Citus (src/context_citus.c):
-- 32 random bytes that distribute() writes once, a reference table after it,
-- so every node signs and checks the same tokens.  Only the extension owner
-- reads it (nothing is granted; the C code reads it as the owner).
CREATE TABLE quota_ext.citus_secret (
	id     integer PRIMARY KEY CHECK (id OPERATOR(pg_catalog.=) 1),
	secret bytea NOT NULL CHECK (pg_catalog.length(secret) OPERATOR(pg_catalog.=) 32)
);
COMMENT ON TABLE quota_ext.citus_secret IS
	'Internal, owner only: the HMAC key of the tenant context carried to Citus workers (filled by distribute())';
REVOKE ALL ON quota_ext.citus_secret FROM PUBLIC;
-- row-level security, forced, without a policy: no row for anyone but a
-- superuser (the owner: quota_ext.control says superuser = true) even if a
-- grant slips in; pg_dump keeps it (a restored cluster signs with the same key)
ALTER TABLE quota_ext.citus_secret ENABLE ROW LEVEL SECURITY;
ALTER TABLE quota_ext.citus_secret FORCE ROW LEVEL SECURITY;
SELECT pg_catalog.pg_extension_config_dump('quota_ext.citus_secret', '');

-- The configuration generation on Citus (src/cache.c, doc/scaling.md "The
-- configuration cache on Citus"): one row, a reference table after
-- distribute(), so every node has a placement.  On Citus config_changed()
-- adds 1 in the changing transaction, so the number moves on each node
-- exactly when the change commits there (the same prepared transaction
-- holds both); each node's caches compare their entries with it.  Unused on
-- a single node (the generation is a counter in shared memory there), so it
-- is empty until distribute() writes its one row (an install-time row would
-- be dumped and collide with the next CREATE EXTENSION's on restore).  Only
-- the extension owner writes it; the C code reads it as the owner.
CREATE TABLE quota_ext.config_generation (
	id         integer PRIMARY KEY CHECK (id OPERATOR(pg_catalog.=) 1),
	generation bigint NOT NULL CHECK (generation OPERATOR(pg_catalog.>) 0)
);
COMMENT ON TABLE quota_ext.config_generation IS
	'Internal, owner only: the configuration generation on Citus (config_changed() adds 1; every node''s cache compares with its placement)';
REVOKE ALL ON quota_ext.config_generation FROM PUBLIC;
ALTER TABLE quota_ext.config_generation ENABLE ROW LEVEL SECURITY;
ALTER TABLE quota_ext.config_generation FORCE ROW LEVEL SECURITY;

-- Raise unless Citus is installed in this database: 55000, with a hint.
CREATE FUNCTION quota_ext._citus_required(what text) RETURNS void
	LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	PERFORM FROM pg_catalog.pg_extension e WHERE e.extname OPERATOR(pg_catalog.=) 'citus';
	IF NOT FOUND THEN
		RAISE EXCEPTION '%: Citus is not installed in this database', what
			USING ERRCODE = 'object_not_in_prerequisite_state',
			      HINT = 'Add citus first in shared_preload_libraries, CREATE EXTENSION citus and add the workers; see doc/scaling.md.';
	END IF;
END
$$;
COMMENT ON FUNCTION quota_ext._citus_required(text) IS
	'Internal: raise 55000 unless the citus extension is installed';

-- Does Citus manage the extension's tables here (after distribute())?  For
-- the few SQL paths that take another route on Citus (tenant by tenant,
-- shells left empty); C code asks QuotaOnCitus().  Dynamic: pg_dist_*
-- exist only with Citus.
CREATE FUNCTION quota_ext._on_citus() RETURNS boolean
	LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	r boolean;
BEGIN
	IF pg_catalog.to_regclass('pg_catalog.pg_dist_partition') IS NULL THEN
		RETURN false;
	END IF;
	EXECUTE 'SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition d '
	        'WHERE d.logicalrelid OPERATOR(pg_catalog.=) ''quota_ext.quota_counters''::pg_catalog.regclass)' INTO r;
	RETURN r;
END
$$;
COMMENT ON FUNCTION quota_ext._on_citus() IS
	'Internal: true once distribute() made quota_ext''s tables Citus tables';

-- Whether a charge for the tenant here runs its counter statements, and
-- waits, in its own backend (src/cache_citus.c, QuotaCitusCountersLocal):
-- for 091_citus, which asks it on every node.
CREATE FUNCTION quota_ext._citus_counters_local(tenant_id bigint) RETURNS boolean
	LANGUAGE C VOLATILE AS 'MODULE_PATHNAME', 'quota_ext_citus_counters_local';
COMMENT ON FUNCTION quota_ext._citus_counters_local(bigint) IS
	'Internal: does a charge for the tenant on this node run its counter statements locally (Citus)?';

-- The usage watermark on Citus (doc/scaling.md, "The rollup and billing
-- watermark on Citus").  A usage row is written on the worker holding its
-- tenant, by a call delegated there or by a transaction run on the
-- coordinator (or on another node) that routes its statements there; its
-- created_at is the clock of the node running the storage code, read after
-- that node's transaction took an xid (storage.c, storage_spi.c).  Each
-- node's _usage_watermark_local() bounds, on its own clock, the rows still
-- to be stamped by its transactions, and tells when a prepared transaction
-- there holds ledger rows; W is the least of the bounds.  Two rounds, each
-- this node first and then every worker: for any node A that stamps a row
-- and node B that stores it, A is read (first round) before B (second
-- round).  If A's transaction had ended by then, B's part of it had
-- committed (one-phase commit: before A's end) or was prepared (two-phase
-- commit: seen by B's lock check in the second round, NULL).  No bound is
-- ever compared with another node's clock, so clock skew between machines
-- does not make the answer wrong; it only holds back rows stamped by a
-- fast clock until W passes them.  A worker that cannot be asked stops the
-- caller (55000): without its bound nothing is known.  The caller's own
-- distributed transaction is left out on every node, as the caller is on
-- a single node.
CREATE FUNCTION quota_ext._usage_watermark_citus() RETURNS timestamptz
	LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	w timestamptz := 'infinity';
	cmd text;
	here timestamptz;
	r record;
BEGIN
	-- run_command_on_workers asks the workers only: from a worker the
	-- coordinator's open transactions would go unseen
	IF (SELECT g.groupid FROM pg_catalog.pg_dist_local_group g) <> 0 THEN
		RAISE EXCEPTION 'usage rollups and billing closes run on the Citus coordinator'
			USING ERRCODE = 'object_not_in_prerequisite_state',
			      HINT = 'Connect to the coordinator (and schedule them there).';
	END IF;
	-- the worker's answer as UTC ISO 8601 text (whatever its DateStyle), or 'prepared'
	cmd := pg_catalog.format('SELECT COALESCE(pg_catalog.to_char(pg_catalog.timezone(%L, quota_ext._usage_watermark_local(true)), %L), %L)',
	                         'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"', 'prepared');
	FOR pass IN 1 .. 2 LOOP
		here := quota_ext._usage_watermark_local(true);
		IF here IS NULL THEN
			RETURN NULL;
		END IF;
		w := least(w, here);
		FOR r IN SELECT x.nodename, x.nodeport, x.success, x.result
		           FROM pg_catalog.run_command_on_workers(cmd) x LOOP
			IF NOT r.success THEN
				RAISE EXCEPTION 'the usage watermark needs the open transactions of every node: worker %:% did not answer: %',
				                r.nodename, r.nodeport, r.result
					USING ERRCODE = 'object_not_in_prerequisite_state',
					      HINT = 'Run the rollup or close again when every worker is up.';
			END IF;
			IF r.result = 'prepared' THEN
				RETURN NULL;
			END IF;
			w := least(w, r.result::timestamptz);
		END LOOP;
	END LOOP;
	RETURN w;
END
$$;
COMMENT ON FUNCTION quota_ext._usage_watermark_citus() IS
	'Internal: the usage watermark of a Citus cluster, the least of every node''s bound (NULL while a prepared transaction on any node holds ledger rows)';

-- The functions distribute() delegates (every overload with an argument
-- named tenant_id): the call goes to the worker holding the tenant's shards.
CREATE FUNCTION quota_ext._citus_delegated() RETURNS TABLE (f regprocedure, arg_name text)
	LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
	SELECT p.oid::pg_catalog.regprocedure, 'tenant_id'::pg_catalog.text
	  FROM pg_catalog.pg_proc p
	 WHERE p.pronamespace OPERATOR(pg_catalog.=) 'quota_ext'::pg_catalog.regnamespace
	   AND p.proname OPERATOR(pg_catalog.=) ANY (ARRAY['quota_consume', 'quota_reserve', 'policy_check']::pg_catalog.name[])
	   AND 'tenant_id' OPERATOR(pg_catalog.=) ANY (p.proargnames)
	 ORDER BY p.oid
$$;
COMMENT ON FUNCTION quota_ext._citus_delegated() IS
	'Internal: the functions distribute() delegates by their tenant_id argument';

CREATE PROCEDURE quota_ext.distribute()
	LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	r record;
	w record;
	colocated regclass;
	done integer := 0;
BEGIN
	PERFORM quota_ext._admin_only('distribute');
	PERFORM quota_ext._citus_required('distribute');
	-- Citus would otherwise turn the whole foreign-key graph around a new
	-- reference table into Citus local tables, which the extension's views
	-- and membership forbid
	PERFORM pg_catalog.set_config('citus.enable_local_reference_table_foreign_keys', 'off', true);
	-- tiers has a trigger (tier_restore, which acts in a restore only: 12_tiers)
	PERFORM pg_catalog.set_config('citus.enable_unsafe_triggers', 'on', true);

	-- Citus refuses subqueries in the policies of distributed tables: the
	-- app role no longer sees models shared with its tenant by reading
	-- quota_ext.models directly (the functions, which run as the owner, do)
	IF EXISTS (SELECT 1 FROM pg_catalog.pg_policy p
	            WHERE p.polrelid OPERATOR(pg_catalog.=) 'quota_ext.models'::pg_catalog.regclass
	              AND p.polname OPERATOR(pg_catalog.=) 'shared_models') THEN
		DROP POLICY shared_models ON quota_ext.models;
		RAISE NOTICE 'distribute: dropped policy shared_models on quota_ext.models (Citus refuses subqueries in policies)';
	END IF;

	-- reference tables: the extension's tables without a NOT NULL tenant_id,
	-- in creation order (referenced tables first)
	FOR r IN SELECT c.oid::pg_catalog.regclass AS rel
	           FROM pg_catalog.pg_class c
	          WHERE c.relnamespace OPERATOR(pg_catalog.=) 'quota_ext'::pg_catalog.regnamespace
	            AND c.relkind OPERATOR(pg_catalog.=) ANY (ARRAY['r', 'p']::"char"[])
	            AND NOT c.relispartition
	            AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
	                             WHERE a.attrelid OPERATOR(pg_catalog.=) c.oid
	                               AND a.attname OPERATOR(pg_catalog.=) 'tenant_id'
	                               AND a.attnotnull AND NOT a.attisdropped
	                               AND c.relname OPERATOR(pg_catalog.<>) 'tenants')
	          ORDER BY c.oid LOOP
		IF EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition d WHERE d.logicalrelid OPERATOR(pg_catalog.=) r.rel) THEN
			CONTINUE;
		END IF;
		-- (its rows are copied into the shards: a BEFORE INSERT trigger such as
		-- tier_restore would fire on the copy and write back through Citus
		-- mid-COPY; it is enabled again, on every placement, afterwards)
		EXECUTE format('ALTER TABLE %s DISABLE TRIGGER USER', r.rel);
		PERFORM pg_catalog.create_reference_table(r.rel);
		EXECUTE format('ALTER TABLE %s ENABLE TRIGGER USER', r.rel);
		RAISE NOTICE 'distribute: % is a reference table', r.rel;
		done := done OPERATOR(pg_catalog.+) 1;
	END LOOP;

	-- per-tenant tables: distributed by tenant_id, co-located with the first
	FOR r IN SELECT c.oid::pg_catalog.regclass AS rel
	           FROM pg_catalog.pg_class c
	           JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) c.oid
	          WHERE c.relnamespace OPERATOR(pg_catalog.=) 'quota_ext'::pg_catalog.regnamespace
	            AND c.relkind OPERATOR(pg_catalog.=) ANY (ARRAY['r', 'p']::"char"[])
	            AND NOT c.relispartition
	            AND c.relname OPERATOR(pg_catalog.<>) 'tenants'
	            AND a.attname OPERATOR(pg_catalog.=) 'tenant_id' AND a.attnotnull AND NOT a.attisdropped
	          ORDER BY c.oid LOOP
		IF EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition d WHERE d.logicalrelid OPERATOR(pg_catalog.=) r.rel) THEN
			IF colocated IS NULL THEN
				colocated := r.rel;
			END IF;
			CONTINUE;
		END IF;
		IF colocated IS NULL THEN
			PERFORM pg_catalog.create_distributed_table(r.rel, 'tenant_id');
			colocated := r.rel;
		ELSE
			PERFORM pg_catalog.create_distributed_table(r.rel, 'tenant_id', colocate_with => colocated::pg_catalog.text);
		END IF;
		RAISE NOTICE 'distribute: % is distributed by tenant_id (co-located with %)', r.rel, colocated;
		done := done OPERATOR(pg_catalog.+) 1;
	END LOOP;

	-- ids the extension's code draws from its sequences (outbox events,
	-- reservations, usage rows written by delegated calls on a worker) must
	-- not collide with the coordinator's: each worker's quota_ext sequences
	-- start at its block, group * 2^48, as Citus does for the sequences of
	-- column defaults and as storage_spi.c does for usage ids (a sequence
	-- already in or past its block is left alone; a worker added later is
	-- moved by the next run)
	FOR w IN SELECT x.nodename, x.nodeport, x.success, x.result
	           FROM pg_catalog.run_command_on_workers($c$
	             SELECT pg_catalog.count(pg_catalog.setval(pg_catalog.format('%I.%I', q.schemaname, q.sequencename)::pg_catalog.regclass,
	                                                       g.groupid::pg_catalog.int8 OPERATOR(pg_catalog.<<) 48))
	               FROM pg_catalog.pg_sequences q, pg_catalog.pg_dist_local_group g
	              WHERE q.schemaname OPERATOR(pg_catalog.=) 'quota_ext'
	                AND COALESCE(q.last_value, 0) OPERATOR(pg_catalog.<) (g.groupid::pg_catalog.int8 OPERATOR(pg_catalog.<<) 48)
	           $c$) x ORDER BY x.nodename, x.nodeport LOOP
		IF NOT w.success THEN
			RAISE EXCEPTION 'distribute: could not move the sequences of worker %:% into its block of ids: %',
			                w.nodename, w.nodeport, w.result
				USING ERRCODE = 'object_not_in_prerequisite_state';
		END IF;
		IF w.result::pg_catalog.int8 OPERATOR(pg_catalog.>) 0 THEN
			RAISE NOTICE 'distribute: % sequence(s) of worker %:% start at its block of ids', w.result, w.nodename, w.nodeport;
			done := done OPERATOR(pg_catalog.+) 1;
		END IF;
	END LOOP;

	-- the key the tenant context travels to the workers under (context_citus.c):
	-- 256 random bits (gen_random_uuid draws from pg_strong_random; two v4
	-- uuids carry 244 random bits, hashed to 32 bytes), written once through
	-- the reference table so every node has it
	PERFORM FROM quota_ext.citus_secret;
	IF NOT FOUND THEN
		INSERT INTO quota_ext.citus_secret (id, secret)
		VALUES (1, pg_catalog.sha256(pg_catalog.convert_to(pg_catalog.gen_random_uuid()::pg_catalog.text
		                              OPERATOR(pg_catalog.||) pg_catalog.gen_random_uuid()::pg_catalog.text, 'UTF8')));
		RAISE NOTICE 'distribute: made the cluster secret of the tenant context';
		done := done OPERATOR(pg_catalog.+) 1;
	END IF;

	-- the configuration generation's one row (src/cache.c): it starts at the
	-- clock in microseconds, so that a new distribute() after DROP and CREATE
	-- EXTENSION never gives again a number a running server's shared cache
	-- level filed entries under (a node's caches stay off until it is there)
	PERFORM FROM quota_ext.config_generation;
	IF NOT FOUND THEN
		INSERT INTO quota_ext.config_generation (id, generation)
		VALUES (1, (pg_catalog.date_part('epoch', pg_catalog.clock_timestamp())
		            OPERATOR(pg_catalog.*) 1000000)::pg_catalog.int8);
		RAISE NOTICE 'distribute: started the configuration generation';
		done := done OPERATOR(pg_catalog.+) 1;
	END IF;

	-- the functions that take a tenant run on the node that holds it
	FOR r IN SELECT d.f, d.arg_name FROM quota_ext._citus_delegated() d LOOP
		IF EXISTS (SELECT 1 FROM pg_catalog.pg_dist_object o
		            WHERE o.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass
		              AND o.objid OPERATOR(pg_catalog.=) r.f::pg_catalog.oid
		              AND o.distribution_argument_index IS NOT NULL) THEN
			CONTINUE;
		END IF;
		PERFORM pg_catalog.create_distributed_function(r.f, distribution_arg_name => r.arg_name,
		                                    colocate_with => colocated::pg_catalog.text);
		RAISE NOTICE 'distribute: % is delegated by %', r.f, r.arg_name;
		done := done OPERATOR(pg_catalog.+) 1;
	END LOOP;
	RAISE NOTICE 'distribute: % change(s)', done;
END
$$;
COMMENT ON PROCEDURE quota_ext.distribute() IS
	'On a Citus coordinator: reference tables for what is global, per-tenant tables distributed by tenant_id (co-located), tenant functions delegated; safe to run again';

CREATE FUNCTION quota_ext.distribution_status()
	RETURNS TABLE (object text, kind text, detail text)
	LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	PERFORM quota_ext._admin_only('distribution_status');
	-- without Citus nothing is distributed: no rows (distribute() is the one
	-- that refuses with 55000)
	PERFORM FROM pg_catalog.pg_extension e WHERE e.extname OPERATOR(pg_catalog.=) 'citus';
	IF NOT FOUND THEN
		RETURN;
	END IF;
	-- (dynamic: pg_dist_* exist only with Citus)
	RETURN QUERY EXECUTE $q$
		SELECT d.logicalrelid::pg_catalog.regclass::pg_catalog.text,
		       CASE d.partmethod WHEN 'n' THEN 'reference' WHEN 'h' THEN 'distributed' ELSE 'citus local' END,
		       CASE d.partmethod WHEN 'h' THEN 'by tenant_id, colocation ' OPERATOR(pg_catalog.||) d.colocationid::pg_catalog.text
		                          ELSE NULL END
		  FROM pg_catalog.pg_dist_partition d
		  JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) d.logicalrelid
		 WHERE c.relnamespace OPERATOR(pg_catalog.=) 'quota_ext'::pg_catalog.regnamespace AND NOT c.relispartition
		UNION ALL
		SELECT o.objid::pg_catalog.regprocedure::pg_catalog.text, 'delegated function',
		       'by argument ' OPERATOR(pg_catalog.||) (o.distribution_argument_index OPERATOR(pg_catalog.+) 1)::pg_catalog.text
		         OPERATOR(pg_catalog.||) ', colocation ' OPERATOR(pg_catalog.||) o.colocationid::pg_catalog.text
		  FROM pg_catalog.pg_dist_object o
		  JOIN pg_catalog.pg_proc p ON p.oid OPERATOR(pg_catalog.=) o.objid
		 WHERE o.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass
		   AND p.pronamespace OPERATOR(pg_catalog.=) 'quota_ext'::pg_catalog.regnamespace
		   AND o.distribution_argument_index IS NOT NULL
		 ORDER BY 2, 1
	$q$;
END
$$;
COMMENT ON FUNCTION quota_ext.distribution_status() IS
	'On Citus: which quota_ext tables are reference or distributed tables and which functions are delegated (no rows without Citus)';

GRANT EXECUTE ON PROCEDURE quota_ext.distribute() TO quota_ext_admin;
GRANT EXECUTE ON FUNCTION quota_ext.distribution_status() TO quota_ext_admin;
