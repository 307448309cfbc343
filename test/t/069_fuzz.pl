# Fuzzing every public function with generated arguments (reliability
# checklist B1-B5 by machine; issue 7 "fuzz test").
#
# A PL/pgSQL generator picks a function of schema quota_ext (every one the
# calling role may execute: new functions are included automatically) and
# fills each argument from a pool of values of its type: NULL, 0, -1, the
# int64/int32 extremes, real ids of the fixtures and random ones, empty,
# huge (100 kB) and control-character text, SQL and format-string
# injection, ±infinity timestamps, negative, zero and huge intervals, NaN
# and ±Infinity numerics, odd arrays and JSON.  (Invalid UTF-8 cannot reach
# a function in a UTF8 database, so it is not tried.)  Each call runs in a
# subtransaction; its SQLSTATE is tallied per function.  Three roles
# call: a superuser without a context, quota_ext_admin (with and without
# set_tenant) and quota_ext_app in a tenant's context.  Seeds are fixed, so
# a failure reproduces.  usage_partition_detach() is left out: taking
# months of rows out of the ledger is its purpose, and the invariants are
# checked afterwards (test/pgtap/23_metering_ops.sql tests it).
#
# Pass: the server never crashed (it stayed up, the fuzzing sessions were
# never cut, the log shows no crash or PANIC), every SQLSTATE is one that
# doc/reference.md documents for that function (the allow-list below), no
# call failed with XX000 (internal error), and the invariants hold
# afterwards.  15,000 calls (a few seconds); QUOTA_SOAK=1 makes 60,000.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use QuotaReliab;

my $node = quota_node('fuzz', quiet => 1, conf => [ 'log_min_messages = warning', 'log_min_error_statement = panic' ]);
my $batches = soak() ? 20 : 5;
my $per_batch = 1000;

$node->safe_psql('postgres', fixture_sql(3, calls => 50) . q{
	SELECT quota_ext.tenant_create('fz-free', 'free');
	SELECT quota_ext.model_register('fz-own', owner_tenant_id => (SELECT min(tenant_id) FROM quota_ext.tenants));
	SELECT quota_ext.rate_limit_set(tenant_id, 100, 60, 10) FROM quota_ext.tenants WHERE name = 't2';
	SELECT quota_ext.quota_reserve(tenant_id, 'm', 5) FROM quota_ext.tenants WHERE name LIKE 't_';
	SELECT quota_ext.quota_consume(tenant_id, 'm', 3, 'fz-' || tenant_id) FROM quota_ext.tenants WHERE name LIKE 't_';
	CREATE ROLE fz_app LOGIN IN ROLE quota_ext_app;
	CREATE ROLE fz_admin LOGIN IN ROLE quota_ext_admin;
	CREATE SCHEMA fuzz;
	GRANT USAGE ON SCHEMA fuzz TO PUBLIC;
	-- the value pools: text literals of each type
	CREATE TABLE fuzz.pool (typ regtype NOT NULL, val text);
	CREATE TABLE fuzz.results (fn text, mode text, sqlstate text, n int NOT NULL DEFAULT 1,
	                           example text, PRIMARY KEY (fn, mode, sqlstate));
	GRANT SELECT ON fuzz.pool TO PUBLIC;
	GRANT SELECT, INSERT, UPDATE ON fuzz.results TO PUBLIC;
});
# pools: extremes, ids of real rows, random ids, and the nasty strings
$node->safe_psql('postgres', q{
	INSERT INTO fuzz.pool
	SELECT 'bigint'::regtype, v FROM unnest(ARRAY[NULL, '0', '-1', '1', '2', '-9223372036854775808', '9223372036854775807',
	                                    '2147483648', '-2147483649', '999999999', '123456789012']) v
	UNION ALL SELECT 'bigint', x::text FROM (
	    SELECT tenant_id FROM quota_ext.tenants UNION SELECT user_id FROM quota_ext.users
	    UNION SELECT key_id FROM quota_ext.api_keys UNION SELECT quota_id FROM quota_ext.quotas
	    UNION SELECT reservation_id FROM quota_ext.reservations UNION SELECT usage_id FROM quota_ext.usage
	    UNION SELECT rule_id FROM quota_ext.rate_limits UNION SELECT model_id FROM quota_ext.models) ids(x)
	UNION ALL SELECT 'integer', v FROM unnest(ARRAY[NULL, '0', '-1', '1', '2', '10', '60', '3600', '1000000000',
	                                               '2147483647', '-2147483648']) v
	UNION ALL SELECT 'text', v FROM unnest(ARRAY[NULL, '', 'm', 'fz-own', 'x', 'day', 'daily', 'month', 'lifetime', 'never',
	                                            'fortnight', 'minute', 'calls', 'units', 'cost', 'block', 'alert', 'overage',
	                                            'free', 'pro', 'enterprise', 'gold', 'admin', 'member', 'viewer', 'Admin',
	                                            'UTC', 'Europe/Berlin', 'Mars/Base', 'EUR', 'XXX', 'active', 'disabled',
	                                            'a@b.example', 'not-an-email', 'm*', '*', 'gpt-4*',
	                                            repeat('A', 100000), E'\x01\x02\x03\t\r\n', E'name\n', ' padded ',
	                                            'x''); DROP TABLE quota_ext.tenants;--', '"', '$$', '\', '%s%n%x',
	                                            'Ⅿ', '🙂', 'ÄÖÜß', repeat('é', 300), 'qxk_', 'qxk_1_1_',
	                                            'qxk_1_1_' || repeat('a', 38), 'QXK_1_1_' || repeat('A', 38),
	                                            'idem-' || repeat('k', 255), 'idem-' || repeat('k', 251)]) v
	UNION ALL SELECT 'text', api_key FROM (SELECT (quota_ext.user_create(tenant_id, 'fz' || tenant_id || '@x.example')).api_key
	                                         FROM quota_ext.tenants) k
	UNION ALL SELECT 'boolean', v FROM unnest(ARRAY[NULL, 'true', 'false']) v
	UNION ALL SELECT 'interval', v FROM unnest(ARRAY[NULL, '0', '-1 day', '1 microsecond', '1 second', '15 minutes',
	                                                '7 days', '7 days 00:00:01', '8 days', '1 mon', '-1 mon',
	                                                '178000000 years', '-178000000 years', '2147483647 days']) v
	UNION ALL SELECT 'timestamp with time zone', v FROM unnest(ARRAY[NULL, 'infinity', '-infinity', 'now',
	                                                '4713-01-01 00:00 BC', '294276-12-31 23:59:59+00', '2000-01-01',
	                                                '2026-03-29 01:30 Europe/Berlin', '2999-01-01']) v
	UNION ALL SELECT 'jsonb', v FROM unnest(ARRAY[NULL, '{}', '[]', '1', 'null', '"s"', '{"a": 1}',
	                                             repeat('[', 500) || repeat(']', 500),
	                                             '{"k": "' || repeat('v', 10000) || '"}']) v
	UNION ALL SELECT 'integer[]', v FROM unnest(ARRAY[NULL, '{}', '{80,100}', '{0}', '{-1}', '{1001}', '{NULL}',
	                                                 '{50,50}', array_fill(50, ARRAY[40])::text]) v
	UNION ALL SELECT 'text[]', v FROM unnest(ARRAY[NULL, '{}', '{admin}', '{""}', '{NULL}', '{Admin,"x y"}',
	                                              (SELECT array_agg('r' || i)::text FROM generate_series(1, 500) i)]) v
	UNION ALL SELECT 'numeric', v FROM unnest(ARRAY[NULL, '0', '-1', '0.000001', '0.0000001', '1.5', 'NaN', 'Infinity',
	                                               '-Infinity', '1e100', '99999999999999.999999']) v
	UNION ALL SELECT 'date', v FROM unnest(ARRAY[NULL, 'infinity', '-infinity', '2026-01-01', '4713-01-01 BC']) v;
});

# the generator: one call per iteration, each in its own subtransaction
$node->safe_psql('postgres', q{
CREATE FUNCTION fuzz.run(p_calls int, p_seed float8, p_mode text, p_key text) RETURNS int LANGUAGE plpgsql AS $$
DECLARE
	fns oid[] := ARRAY(SELECT p.oid FROM pg_proc p
	                    WHERE p.pronamespace = 'quota_ext'::regnamespace AND p.proname !~ '^_'
	                      AND has_function_privilege(current_user, p.oid, 'EXECUTE')
	                      -- procedures (distribute) are called with CALL, not here
	                      AND p.prokind = 'f'
	                      -- detaching takes months of rows out of the ledger by
	                      -- design (retention): the invariants would not hold
	                      AND p.proname <> 'usage_partition_detach'
	                    ORDER BY p.oid::regprocedure::text);
	f oid;
	p record;
	args text;
	v text;
	sql text;
	st text;
	msg text;
	ctx text;
	done int := 0;
BEGIN
	PERFORM setseed(p_seed);
	FOR i IN 1 .. p_calls LOOP
		f := fns[1 + floor(random() * cardinality(fns))::int];
		SELECT * INTO p FROM pg_proc WHERE oid = f;
		args := '';
		-- every argument, or only the required ones (defaults used)
		FOR j IN 1 .. CASE WHEN random() < 0.3 THEN p.pronargs - p.pronargdefaults ELSE p.pronargs END LOOP
			SELECT val INTO v FROM fuzz.pool WHERE typ = p.proargtypes[j - 1] ORDER BY random() LIMIT 1;
			args := args || CASE WHEN j > 1 THEN ', ' ELSE '' END
			        || coalesce(quote_literal(v), 'NULL') || '::' || format_type(p.proargtypes[j - 1], NULL);
		END LOOP;
		sql := format('SELECT count(*) FROM (SELECT quota_ext.%I(%s)) x', p.proname, args);
		ctx := CASE WHEN p_mode = 'app' THEN 'key'
		            WHEN p_mode = 'admin' AND random() < 0.5 THEN 'set'
		            ELSE 'none' END;
		BEGIN
			IF ctx = 'key' THEN
				-- the app's own key, or any real key (some of their tenants
				-- may have been closed by now: then no context)
				BEGIN
					PERFORM quota_ext.authenticate(CASE WHEN random() < 0.5 THEN p_key ELSE
						(SELECT val FROM fuzz.pool WHERE val LIKE 'qxk\_%' AND length(val) > 40
						  ORDER BY random() LIMIT 1) END);
				EXCEPTION WHEN invalid_authorization_specification THEN NULL;
				END;
			ELSIF ctx = 'set' THEN
				PERFORM quota_ext.set_tenant(t.tenant_id) FROM quota_ext.tenants t ORDER BY random() LIMIT 1;
			END IF;
			EXECUTE sql;
			st := 'ok';
			msg := NULL;
		EXCEPTION WHEN OTHERS THEN
			st := SQLSTATE;
			msg := left(SQLERRM, 200);
		END;
		INSERT INTO fuzz.results AS r VALUES (f::regprocedure::text, p_mode, st, 1, left(sql, 300) || ' -> ' || coalesce(msg, 'ok'))
		ON CONFLICT (fn, mode, sqlstate) DO UPDATE SET n = r.n + 1;
		done := done + 1;
	END LOOP;
	RETURN done;
END
$$;
GRANT EXECUTE ON FUNCTION fuzz.run(int, float8, text, text) TO PUBLIC;
});

# fresh tenants for every batch (earlier batches close and suspend some),
# with their ids and keys added to the pools
$node->safe_psql('postgres', q{
CREATE FUNCTION fuzz.refresh(b int) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
	t bigint;
	u bigint;
	k text;
BEGIN
	FOR i IN 1 .. 2 LOOP
		t := quota_ext.tenant_create(format('fz-%s-%s', b, i), CASE WHEN i = 1 THEN 'enterprise' ELSE 'free' END);
		PERFORM quota_ext.policy_set(t, 'm', true);
		SELECT x.user_id, x.api_key INTO u, k FROM quota_ext.user_create(t, format('u%s@fz.example', b), 'admin') x;
		PERFORM quota_ext.quota_set(t, 'hour', 100, 'm');
		INSERT INTO fuzz.pool VALUES ('text', k), ('bigint', t), ('bigint', u),
			('bigint', (quota_ext.quota_reserve(t, 'm', 3)).reservation_id),
			('bigint', (quota_ext.quota_consume(t, 'm', 2)).usage_id);
	END LOOP;
END
$$;
});

my $key = $node->safe_psql('postgres', q{SELECT api_key FROM quota_ext.user_create(
	(SELECT tenant_id FROM quota_ext.tenants WHERE name = 't1'), 'fz-app@x.example', 'admin')});
my $start = $node->safe_psql('postgres', 'SELECT pg_postmaster_start_time()');
my $log_offset = -s $node->logfile;
my $calls = 0;
my $t0 = time();
for my $b (1 .. $batches)
{
	$node->safe_psql('postgres', "SELECT fuzz.refresh($b)");
	for my $m ([ 'super', 'postgres', 1 ], [ 'admin', 'fz_admin', 2 ], [ 'app', 'fz_app', 3 ])
	{
		my ($mode, $user, $k) = @$m;
		my $seed = sprintf('0.%03d', 10 * $b + $k);
		my ($ret, $out, $err) = $node->psql('postgres',
			"SELECT fuzz.run($per_batch, $seed, '$mode', '$key')",
			extra_params => [ '-U', $user ]);
		is($ret, 0, "batch $b as $mode (seed $seed): the session survived $per_batch calls")
		  or diag($err);
		$calls += $out if $ret == 0;
	}
}
note("$calls calls in " . (time() - $t0) . ' s');

# the server never crashed
is($node->safe_psql('postgres', 'SELECT pg_postmaster_start_time()'), $start, 'the postmaster never restarted');
ok(!$node->log_contains('terminated by signal|server process .* was terminated|PANIC|TRAP:|all server processes terminated', $log_offset),
	'no backend crashed, no PANIC, no assertion');
is($node->safe_psql('postgres', 'SELECT 1'), '1', 'the server answers');

# documented SQLSTATEs per function (doc/reference.md, doc/rate-limits.md,
# doc/reference-billing.md).
# Every function may raise 22004 (NULL argument), 22023 (invalid argument),
# 22003 (out of range), 42501 (no tenant context, not allowed in a context,
# missing privilege), 42704 (unknown tenant, model, user, key, ...); the
# others are listed per function.  A function that is not listed is
# checked against the common ones only.
my %extra = (
	authenticate             => '28000',
	invoke                   => '28000 55000',
	quota_consume            => '55000',
	quota_consume_or_raise   => '53400 55000',
	tenant_create            => '23505',
	tenant_update            => '23505 55000',
	tenant_suspend           => '55000',
	tenant_activate          => '55000',
	tenant_close             => '55000',
	user_create              => '23505 55000 53400',
	user_update              => '55000',
	api_key_create           => '55000',
	api_key_revoke           => '55000',
	api_key_rotate           => '55000',
	model_register           => '23505',
	meter_create             => '23505',
	model_visibility_set     => '23505',
	model_access_request     => '54000 55000',
	policy_set               => '55000',
	quota_set                => '55000',
	quota_settle             => '55000',
	quota_cancel             => '55000',
	quota_refund             => '55000',
	quota_reserve            => '55000',
	price_set                => '23505',
	price_clear              => '23505',
	billing_close            => '55000 25000',
	invoice_issue            => '55000',
	invoice_void             => '55000',
	usage_partitions_maintain => '55000',
	usage_partition_detach   => '55000',
	usage_rollup             => '25000',
	rate_limit_check         => '53200 55000',
	tenant_rate_limit_check  => '53200 55000',
	rate_limit_apply         => '53200 55000',
	rate_limit_status        => '55000',
	rate_limit_namespaces    => '55000',
	rate_limit_reset         => '55000',
	api_key_import           => '23505 28000 55000',
	user_remove              => '55000',
	invoice_mark_paid        => '55000',
	event_ack                => '55000 54000',
	event_poll               => '54000',
	quota_check              => '55000',
	meter_create             => '23505',);
my $common = '22004 22023 22003 42501 42704';
my @unexpected;
for my $row (split /\n/, $node->safe_psql('postgres',
	q{SELECT fn, mode, sqlstate, n, replace(example, E'\n', ' ') FROM fuzz.results WHERE sqlstate <> 'ok' ORDER BY 1, 2, 3}))
{
	my ($fn, $mode, $st, $n, $example) = split /\|/, $row, 5;
	my ($name) = $fn =~ /^quota_ext\.(\w+)\(/;
	my %ok = map { $_ => 1 } split ' ', $common . ' ' . ($extra{$name} // '');
	push @unexpected, "$fn as $mode: $st ($n times), e.g. $example" unless $ok{$st};
}
is(scalar(@unexpected), 0, 'every SQLSTATE is documented for its function')
  or diag(join("\n", @unexpected));
is($node->safe_psql('postgres', q{SELECT count(*) FROM fuzz.results WHERE sqlstate = 'XX000'}), '0',
	'no internal error (XX000)');
my $summary = $node->safe_psql('postgres',
	q{SELECT string_agg(format('%s %s', sqlstate, s), ', ' ORDER BY sqlstate) FROM
	    (SELECT sqlstate, sum(n) AS s FROM fuzz.results GROUP BY 1) x});
note("outcomes: $summary");
note('functions that never succeeded: ' . $node->safe_psql('postgres',
	q{SELECT coalesce(string_agg(fn, ', ' ORDER BY fn), '(none)') FROM
	    (SELECT fn FROM fuzz.results GROUP BY fn HAVING count(*) FILTER (WHERE sqlstate = 'ok') = 0) x}));
cmp_ok($node->safe_psql('postgres', q{SELECT count(DISTINCT fn) FROM fuzz.results}), '>=', 40,
	'at least 40 functions were called');
cmp_ok($node->safe_psql('postgres', q{SELECT sum(n) FROM fuzz.results WHERE sqlstate = 'ok'}), '>', 100,
	'some calls succeeded (the fuzzer reaches past argument checks)');
invariants_ok($node, 'postgres', 'after fuzzing');

$node->stop;
done_testing();
