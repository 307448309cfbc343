# The bucket table: sized by quota_ext.rate_limit_slots, empty after a
# restart (documented: like Redis without persistence), 53200 with a hint
# when every slot holds a live bucket, idle buckets reclaimed; a namespace
# at its cap (quota_ext.rate_limit_tenant_entries) reclaims its idle
# buckets before it is refused.  Until that last part the cap is above the
# table's size, so that one namespace can fill the table.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep);

my $node = PostgreSQL::Test::Cluster->new('restart');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'quota_ext'");
$node->append_conf('postgresql.conf', "quota_ext.rate_limit_slots = 1024");
$node->append_conf('postgresql.conf', "quota_ext.rate_limit_tenant_entries = 2048");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION quota_ext');

is($node->safe_psql('postgres', 'SHOW quota_ext.rate_limit_slots'),
	'1024', 'the slot count is a setting');
is($node->safe_psql('postgres', 'SELECT slots, in_use FROM quota_ext.rate_limit_status()'),
	'1024|0', 'the table starts empty');

my $check = q{SELECT limited FROM quota_ext.rate_limit_check('restart', 0, 1, 3600)};
is($node->safe_psql('postgres', $check), 'f', 'first call admitted');
is($node->safe_psql('postgres', $check), 't', 'second call limited');

# ---- restart: state resets ----
$node->restart;
is($node->safe_psql('postgres', 'SELECT in_use FROM quota_ext.rate_limit_status()'),
	'0', 'no bucket survives a restart');
is($node->safe_psql('postgres', $check), 'f', 'after a restart the key is admitted again');

# ---- full table ----
# 1023 more keys with a 2-second interval fill every slot (buckets move
# between the 64 partitions as each runs out).
is( $node->safe_psql(
		'postgres',
		q{SELECT count(*) FROM generate_series(1, 1023) g,
		         quota_ext.rate_limit_check('fill:' || g, 0, 1, 2) r
		   WHERE NOT r.limited}),
	'1023',
	'1024 live buckets fit in 1024 slots');
my ($ret, $out, $err) = $node->psql('postgres',
	q{SELECT * FROM quota_ext.rate_limit_check('one-too-many', 0, 1, 3600)},
	extra_params => [ '-v', 'VERBOSITY=verbose' ]);
like($err, qr/ERROR:\s+53200: rate-limit table is full/, 'a full table: 53200');
like($err, qr/HINT:\s+Raise quota_ext.rate_limit_slots/, 'the hint names the setting');
is($node->safe_psql('postgres', $check), 't',
	'existing buckets still answer when the table is full');
is($node->safe_psql('postgres',
		q{SELECT limited FROM quota_ext.rate_limit_check('one-too-many', 0, 1, 3600, 0)}),
	'f', 'a peek needs no slot');

# Once the 2-second buckets are idle (TAT in the past) their slots are
# reclaimed for new keys.
sleep(2.2);
is( $node->safe_psql(
		'postgres',
		q{SELECT count(*) FROM generate_series(1, 1000) g,
		         quota_ext.rate_limit_check('new:' || g, 0, 1, 3600) r
		   WHERE NOT r.limited}),
	'1000',
	'idle buckets are reclaimed');
is($node->safe_psql('postgres', $check), 't',
	'a live bucket is never reclaimed');

# Churn: far more keys over time than slots, each idle after 1 s, while
# two-rule checks (rate_limit_apply: tenant-wide and model rule, both 1 per
# second) run between them.  Every path that reclaims or moves entries runs
# (link, reclaim before lookup, refill), and the answers stay exact: each
# tenant is admitted again only once a full second has passed.
$node->restart;
$node->safe_psql('postgres', q{SELECT quota_ext.model_register('m')});
my $churn = $node->safe_psql(
	'postgres', q{
	CREATE FUNCTION churn() RETURNS text LANGUAGE plpgsql AS $$
	DECLARE
		t bigint[] := ARRAY[]::bigint[];
		last timestamptz[];
		r record;
		i int;
		g int;
		k int := 0;
		admitted int := 0;
		too_early int := 0;
		now timestamptz;
	BEGIN
		FOR i IN 1 .. 20 LOOP
			t := t || quota_ext.tenant_create('churn-' || i, 'enterprise');
			PERFORM quota_ext.rate_limit_set(t[i], 1, 1, 0);
			PERFORM quota_ext.rate_limit_set(t[i], 1, 1, 0, 'm');
		END LOOP;
		last := array_fill(NULL::timestamptz, ARRAY[20]);
		FOR round IN 1 .. 12 LOOP
			FOR g IN 1 .. 150 LOOP
				k := k + 1;
				PERFORM quota_ext.rate_limit_check('churn:' || k, 0, 1, 1);
			END LOOP;
			FOR i IN 1 .. 20 LOOP
				r := quota_ext.rate_limit_apply(t[i], 'm');
				now := clock_timestamp();
				IF NOT r.limited THEN
					admitted := admitted + 1;
					IF last[i] IS NOT NULL AND now - last[i] < interval '0.99 s' THEN
						too_early := too_early + 1;
					END IF;
					last[i] := now;
				END IF;
			END LOOP;
			PERFORM pg_sleep(0.25);
		END LOOP;
		RETURN k || ' keys, ' || admitted || ' admitted, ' || too_early || ' too early';
	END
	$$;
	SELECT churn();
});
my ($keys, $admitted, $early) = $churn =~ /(\d+) keys, (\d+) admitted, (\d+) too early/;
note($churn);
cmp_ok($keys, '>', 1024, 'more keys than slots went through the table');
is($early, 0, 'no tenant admitted twice within one second');
cmp_ok($admitted, '>=', 20 * 2, 'every tenant admitted about once a second');

# ---- a namespace at its cap ----
# 100 live buckets for the keys of rate_limit_check: the next key is
# refused while the table has free slots.  Then 100 one-second buckets:
# once they are idle the namespace reclaims them first and takes new keys.
$node->restart;
$node->safe_psql('postgres', 'ALTER SYSTEM SET quota_ext.rate_limit_tenant_entries = 100');
$node->reload;
$node->poll_query_until('postgres',
	'SELECT tenant_entries = 100 FROM quota_ext.rate_limit_status()');
is( $node->safe_psql(
		'postgres',
		q{SELECT count(*) FROM generate_series(1, 100) g,
		         quota_ext.rate_limit_check('cap:' || g, 0, 1, 3600) r
		   WHERE NOT r.limited}),
	'100',
	'100 buckets fill the namespace');
($ret, $out, $err) = $node->psql('postgres',
	q{SELECT * FROM quota_ext.rate_limit_check('cap:101', 0, 1, 3600)},
	extra_params => [ '-v', 'VERBOSITY=verbose' ]);
like($err, qr/ERROR:\s+53200: too many rate-limit buckets for the keys of rate_limit_check/,
	'the 101st: 53200 while all 100 are live');
is($node->safe_psql('postgres', 'SELECT in_use FROM quota_ext.rate_limit_status()'),
	'100', 'while the table has free slots');
is($node->safe_psql('postgres', 'SELECT quota_ext.rate_limit_reset()'),
	'100', 'the admin reset empties the namespace');
is( $node->safe_psql(
		'postgres',
		q{SELECT count(*) FROM generate_series(1, 100) g,
		         quota_ext.rate_limit_check('short:' || g, 0, 1, 1) r
		   WHERE NOT r.limited}),
	'100',
	'100 one-second buckets fill it again');
sleep(2.2);
is( $node->safe_psql(
		'postgres',
		q{SELECT count(*) FROM generate_series(101, 200) g,
		         quota_ext.rate_limit_check('short:' || g, 0, 1, 3600) r
		   WHERE NOT r.limited}),
	'100',
	'once idle, the namespace reclaims them and takes 100 new keys');
is($node->safe_psql('postgres', 'SELECT buckets FROM quota_ext.rate_limit_namespaces()'),
	'100', 'and counts exactly 100');

$node->stop;
done_testing();
