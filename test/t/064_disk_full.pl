# The usage ledger on a full disk (reliability checklist F7).
#
# Needs an 8 MB tmpfs owned by this user in $QUOTA_TMPFS: test/run mounts
# one when it runs as root (test/lib.sh tmpfs_setup); skipped otherwise.
# Every partition of quota_ext.usage (with its indexes) moves to a
# tablespace there, a filler table in the same tablespace takes most of the
# space, and consumes run until the ledger cannot grow.  Then:
#   * the failing consume gets 53100 (disk_full), and it changed nothing:
#     counters, usage and idempotency keys are as before it, its key is
#     still free, the invariants hold;
#   * a transaction that consumed before the failing call loses both (all
#     or nothing), and the server stays up (no PANIC: the WAL is elsewhere);
#   * once the filler is dropped, consumes work again (the failed key
#     counts once) and the invariants hold.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use QuotaReliab;

my $fs = $ENV{QUOTA_TMPFS} // '';
plan skip_all => 'QUOTA_TMPFS is not set (needs root to mount a tmpfs; see test/lib.sh tmpfs_setup)'
  if $fs eq '' || !-d $fs || !-w $fs;

use File::Path qw(rmtree);
rmtree($_) for glob("$fs/ts_064_*");    # left by an interrupted run
my $loc = "$fs/ts_064_$$";
mkdir $loc or die "mkdir $loc: $!";
my $node = quota_node('diskfull', quiet => 1);
$node->safe_psql('postgres', fixture_sql(2) . qq{
	CREATE TABLESPACE small LOCATION '$loc';
	CREATE TABLE filler (x text) TABLESPACE small;
	CREATE TABLE spare (x text) TABLESPACE small;});
# every partition of the ledger, and every index on them, into the tablespace
my $moved = $node->safe_psql('postgres',
	q{SELECT count(*) FROM pg_inherits WHERE inhparent = 'quota_ext.usage'::regclass});
$node->safe_psql('postgres', q{
	DO $$
	DECLARE r regclass;
	BEGIN
		FOR r IN SELECT i.inhrelid::regclass FROM pg_inherits i
		          WHERE i.inhparent = 'quota_ext.usage'::regclass LOOP
			EXECUTE format('ALTER TABLE %s SET TABLESPACE small', r);
		END LOOP;
		FOR r IN SELECT x.indexrelid::regclass FROM pg_index x JOIN pg_inherits i ON i.inhrelid = x.indrelid
		          WHERE i.inhparent = 'quota_ext.usage'::regclass LOOP
			EXECUTE format('ALTER INDEX %s SET TABLESPACE small', r);
		END LOOP;
	END $$;});
is( $node->safe_psql('postgres',
		q{SELECT count(*) FROM pg_class c JOIN pg_inherits i ON i.inhrelid = c.oid
		   WHERE i.inhparent = 'quota_ext.usage'::regclass
		     AND c.reltablespace = (SELECT oid FROM pg_tablespace WHERE spcname = 'small')}),
	$moved, "all $moved ledger partitions are on the small tablespace");
my ($t, $t2) = split /\n/, $node->safe_psql('postgres', q{SELECT tenant_id FROM quota_ext.tenants ORDER BY 1});

# take the space: 40 kB of spare, then the filler (incompressible rows)
$node->safe_psql('postgres',
	q{INSERT INTO spare SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 60), generate_series(1, 20) g GROUP BY g});
my $fill_err = '';
for my $i (1 .. 200)
{
	my ($ret, $out, $err) = $node->psql('postgres',
		q{INSERT INTO filler SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 60), generate_series(1, 200) g GROUP BY g},
		extra_params => [ '-v', 'VERBOSITY=verbose' ]);
	if ($ret != 0) { $fill_err = $err; last; }
}
like($fill_err, qr/53100/, 'the filler ran out of space (53100)');
# give about 40 kB back (made before the filler), so the ledger grows a
# little before it fails (DROP: a TRUNCATE would need space for new files)
$node->safe_psql('postgres', 'DROP TABLE spare');

my $counters_sql = qq{SELECT string_agg(tenant_id || '/' || quota_id || ':' || used, ',' ORDER BY quota_id)
	FROM quota_ext.quota_counters};
my $state_sql = qq{SELECT ($counters_sql), (SELECT count(*) FROM quota_ext.usage),
	(SELECT count(*) FROM quota_ext.idempotency_keys)};

# consume until the ledger cannot grow
my ($n_ok, $err, $before, $failed_key) = (0, '', '', '');
for my $i (1 .. 20000)
{
	$before = $node->safe_psql('postgres', $state_sql);
	my $key = "fill-$i";
	my ($ret, $out, $e) = $node->psql('postgres',
		qq{SELECT quota_ext.quota_consume($t, 'm', 1 + $i % 7, '$key')},
		extra_params => [ '-v', 'VERBOSITY=verbose' ]);
	if ($ret != 0) { ($err, $failed_key) = ($e, $key); last; }
	$n_ok++;
}
note("$n_ok consumes fitted");
like($err, qr/53100: could not extend file/, "after $n_ok consumes the ledger is full: 53100 could not extend file");
is($node->safe_psql('postgres', $state_sql), $before, 'the failing consume changed no counter, usage row or key');
invariants_ok($node, 'postgres', 'on the full disk');

# a transaction that consumed first loses everything with the failing call
my ($ret, $out, $e) = $node->psql('postgres',
	qq{BEGIN; SELECT quota_ext.quota_consume($t2, 'm', 3, 'two-1');
	   SELECT quota_ext.quota_consume($t, 'm', 5, '$failed_key'); COMMIT;});
like($e, qr/could not extend file/, 'a transaction with a second consume fails on the full disk ...');
is($node->safe_psql('postgres', qq{SELECT count(*) FROM quota_ext.idempotency_keys WHERE idempotency_key = 'two-1'}),
	'0', '... and its first consume is gone too (all or nothing)');
is($node->safe_psql('postgres', $state_sql), $before, 'state unchanged');
is($node->safe_psql('postgres', 'SELECT 1'), '1', 'the server is up');
ok(!$node->log_contains('PANIC'), 'no PANIC');

# free the space
$node->safe_psql('postgres', 'DROP TABLE filler');
is( $node->safe_psql('postgres',
		qq{SELECT allowed, replayed FROM quota_ext.quota_consume($t, 'm', 1 + ${\ (substr($failed_key, 5) % 7)}, '$failed_key')}),
	't|f', 'after freeing space the failed key counts (once)');
$node->safe_psql('postgres',
	qq{SELECT quota_ext.quota_consume(tenant_id, 'm', 2) FROM quota_ext.tenants, generate_series(1, 500)});
invariants_ok($node, 'postgres', 'after freeing space and 1000 more consumes');

$node->stop;
rmtree($loc);
done_testing();
