# pg_wal on a full disk (reliability checklist F8).
#
# Needs a 96 MB tmpfs owned by this user in $QUOTA_TMPFS_WAL: test/run
# mounts one when it runs as root (test/lib.sh tmpfs_setup); skipped
# otherwise.  The node's pg_wal lives there (initdb --waldir) and a filler
# file leaves about 40 MB free; no checkpoint runs during the test, so WAL
# only grows.  A witness session commits consumes one at a time, between
# bulk inserts that write WAL, until the WAL cannot grow.  PostgreSQL may
# PANIC when it cannot create a WAL segment (that is allowed); then:
#   * after the filler is removed and the server restarted, every consume
#     whose commit was acknowledged is there, once, with its usage row;
#   * nothing is half applied: the invariants hold for every quota;
#   * consumes work again, and a replay of an acknowledged key charges
#     nothing.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use File::Path qw(rmtree);
use QuotaReliab;

my $fs = $ENV{QUOTA_TMPFS_WAL} // '';
plan skip_all => 'QUOTA_TMPFS_WAL is not set (needs root to mount a tmpfs; see test/lib.sh tmpfs_setup)'
  if $fs eq '' || !-d $fs || !-w $fs;
rmtree($_) for glob("$fs/wal_065_*"), glob("$fs/filler_065_*");    # an interrupted run

my $waldir = "$fs/wal_065_$$";
my $node = quota_node('walfull', durable => 1, quiet => 1,
	init => { extra => [ '--waldir', $waldir ] },
	conf => [ 'max_wal_size = 4GB', 'min_wal_size = 32MB', 'checkpoint_timeout = 1h' ]);
ok(-l $node->data_dir . '/pg_wal', 'pg_wal is a link to the small file system');
$node->safe_psql('postgres', fixture_sql(2) . q{
	CREATE TABLE bulk (x text);
	CHECKPOINT;});
my $t = $node->safe_psql('postgres', q{SELECT tenant_id FROM quota_ext.tenants WHERE name = 't1'});

# leave about 40 MB free
my $avail_kb = (split /\n/, `df -k --output=avail '$fs'`)[1] // 0;
$avail_kb =~ s/\D//g;
my $filler = "$fs/filler_065_$$";
my $fill_kb = $avail_kb - 40 * 1024;
if ($fill_kb > 0)
{
	open my $fh, '>', $filler or die "$filler: $!";
	my $block = 'x' x 1024;
	print $fh $block for 1 .. $fill_kb;
	close $fh or die "$filler: $!";
}
note("free on the WAL file system: $avail_kb kB, filler " . ($fill_kb > 0 ? $fill_kb : 0) . ' kB');

my $witness = $node->background_psql('postgres', on_error_stop => 0);
my (%acked, $stop_err);
# one statement; the reason it failed, or undef (psql dies with the server)
my $run = sub {
	my ($sql) = @_;
	my ($out, $failed) = eval { $witness->query($sql) };
	return ($out, $@ ? "psql: $@" : $failed ? $witness->{stderr} : undef);
};
for my $i (1 .. 400)
{
	my $key = "w-$i";
	my ($out, $err) = $run->(qq{SELECT allowed FROM quota_ext.quota_consume($t, 'm', 1 + $i % 5, '$key')});
	if (defined $err || $out ne 't') { $stop_err = $err // "consume answered $out"; last; }
	$acked{$key} = 1;
	($out, $err) = $run->(q{INSERT INTO bulk SELECT repeat(md5(g::text), 30) FROM generate_series(1, 2000) g});
	if (defined $err) { $stop_err = $err; last; }
}
eval { $witness->quit };
ok(defined $stop_err, 'the WAL file system filled up') or note('no failure within 400 rounds');
note('stopped on: ' . ($stop_err // '-'));
my $n_acked = scalar keys %acked;
cmp_ok($n_acked, '>', 0, "$n_acked consumes were acknowledged before");
my $panicked = $node->log_contains('PANIC:');
note($panicked ? 'the server PANICked' : 'the server reported an error and kept running');
ok($node->log_contains('No space left on device'), 'the log names the full device');

# free the space and bring the server back
unlink $filler;
$node->stop('immediate', fail_ok => 1);
$node->start;
is($node->safe_psql('postgres', 'SELECT 1'), '1', 'the server is back after the space was freed');

my $list = join(',', map { "'$_'" } sort keys %acked);
is( $node->safe_psql('postgres',
		qq{SELECT count(*) FROM quota_ext.idempotency_keys k JOIN quota_ext.usage u
		     ON u.tenant_id = k.tenant_id AND u.usage_id = k.usage_id
		    WHERE k.tenant_id = $t AND k.idempotency_key IN ($list) AND k.allowed}),
	$n_acked, 'every acknowledged consume survived, with its usage row');
invariants_ok($node, 'postgres', 'after the WAL disk filled up and the restart');
my $used = $node->safe_psql('postgres', qq{SELECT sum(used) FROM quota_ext.quota_counters WHERE tenant_id = $t});
is( $node->safe_psql('postgres',
		qq{SELECT count(*) FILTER (WHERE d.replayed) FROM unnest(ARRAY[$list]) k,
		          quota_ext.quota_consume($t, 'm', 1 + substr(k, 3)::int % 5, k) d}),
	$n_acked, 'acknowledged keys replay');
is($node->safe_psql('postgres', qq{SELECT sum(used) FROM quota_ext.quota_counters WHERE tenant_id = $t}),
	$used, '... and charge nothing');
is($node->safe_psql('postgres', qq{SELECT allowed FROM quota_ext.quota_consume($t, 'm', 2, 'after')}),
	't', 'consumes work again');
invariants_ok($node, 'postgres', 'at the end');

$node->stop;
rmtree($waldir);
done_testing();
