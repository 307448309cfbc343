# SIGKILL under a pgbench load of consumes, then restart; several cycles
# (reliability checklist F4).
#
# fsync = on.  Each cycle runs pgbench (8 clients consuming, reserving and
# settling for 20 tenants, idempotency keys drawn from a small space so
# many are replays), and meanwhile:
#   * a witness session commits consumes one by one and remembers every
#     key whose commit was acknowledged;
#   * another session holds a consume uncommitted;
# then the server dies, by turns: SIGKILL of one backend (crash restart,
# restart_after_crash = on), immediate shutdown (SIGQUIT), SIGKILL of the
# postmaster.  After the restart:
#   * every acknowledged key is present once, with its usage row, and a
#     replay of it is answered from the key and charges nothing;
#   * the uncommitted consume left nothing;
#   * the invariants hold for every quota (used = sum(usage), no overshoot
#     of the one tight quota, one usage row per key, reservations add up);
#   * amcheck finds every btree of the extension consistent with its heap.
# 3 cycles normally; 9 with QUOTA_SOAK=1.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Time::HiRes qw(usleep);
use QuotaReliab;

my $cycles = soak() ? 9 : 3;
my $node = quota_node('crash', durable => 1, quiet => 1,
	conf => [ 'restart_after_crash = on', 'max_connections = 40' ]);
$node->safe_psql('postgres', fixture_sql(20) . q{
	-- tenant t1 has a tight daily quota: the load runs into it every cycle
	SELECT quota_ext.quota_set(tenant_id, 'day', 100, 'm') FROM quota_ext.tenants WHERE name = 't1';
	CREATE EXTENSION amcheck;
});
my ($t1, $tw, $ti) = split /\n/, $node->safe_psql('postgres',
	q{SELECT tenant_id FROM quota_ext.tenants WHERE name IN ('t1', 't2', 't3') ORDER BY tenant_id});
my ($tmin, $tmax) = split /\|/, $node->safe_psql('postgres',
	q{SELECT min(tenant_id), max(tenant_id) FROM quota_ext.tenants});

my $script = "$PostgreSQL::Test::Utils::tmp_check/061_load.sql";
open my $fh, '>', $script or die $!;
print $fh qq{\\set t random($tmin, $tmax)
\\set k random(1, 3000)
\\set u (:k % 10) + 1
\\set op random(1, 10)
BEGIN;
SELECT quota_ext.quota_consume(:t, 'm', :u, 'p-' || :t || '-' || :k) WHERE :op <= 7;
SELECT quota_ext.quota_settle(:t, r.reservation_id, :u + 2)
  FROM quota_ext.quota_reserve(:t, 'm', :u, '1 hour', 'r-' || :t || '-' || :k) r
 WHERE :op > 7 AND r.allowed AND NOT r.replayed;
COMMIT;
};
close $fh;

my $amcheck_sql = q{
	SELECT count(*) FROM (
	  SELECT bt_index_check(i.indexrelid, true)
	    FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam
	   WHERE c.relnamespace = 'quota_ext'::regnamespace AND a.amname = 'btree' AND c.relkind = 'i') x};
my $n_btree = $node->safe_psql('postgres', $amcheck_sql);
cmp_ok($n_btree, '>', 10, "amcheck sees the extension's btree indexes ($n_btree)");

my @modes = qw(backend immediate postmaster);
my %acked;
for my $cycle (1 .. $cycles)
{
	my $mode = $modes[ ($cycle - 1) % @modes ];
	note("cycle $cycle: $mode");

	my ($pgb_out, $pgb_err) = ('', '');
	local $ENV{PGAPPNAME} = 'pgbench';
	my $pgb = IPC::Run::start(
		[
			'pgbench', '--no-vacuum', '--client=8', '--jobs=2', '--time=120',
			"--file=$script", '-h', $node->host, '-p', $node->port, 'postgres'
		],
		'>', \$pgb_out, '2>', \$pgb_err);
	# let the load build up
	$node->poll_query_until('postgres',
		q{SELECT count(*) >= 8 FROM pg_stat_activity WHERE application_name = 'pgbench'})
	  or do { $pgb->pump_nb; BAIL_OUT("pgbench did not start: $pgb_err"); };
	sleep 2;

	# the witness: consumes committed and acknowledged one at a time
	my $witness = $node->background_psql('postgres', on_error_stop => 0);
	for my $i (1 .. 15)
	{
		my $key = "w-$cycle-$i";
		my ($out, $failed) = $witness->query(
			qq{SELECT allowed FROM quota_ext.quota_consume($tw, 'm', 3, '$key')});
		$acked{$key} = 1 if !$failed && $out eq 't';
	}
	$witness->quit;
	# in flight: consumed, never committed
	my $inflight = $node->background_psql('postgres', on_error_stop => 0);
	$inflight->query_safe(qq{BEGIN; SELECT quota_ext.quota_consume($ti, 'm', 1, 'inflight-$cycle')});

	my $processed = $node->safe_psql('postgres', q{SELECT count(*) FROM quota_ext.usage});
	note("cycle $cycle: $processed usage rows before the crash");

	if ($mode eq 'backend')
	{
		my $victim = $node->safe_psql('postgres',
			q{SELECT pid FROM pg_stat_activity WHERE application_name = 'pgbench' LIMIT 1});
		my $offset = -s $node->logfile;
		kill 'KILL', $victim;
		# the postmaster reinitializes, then accepts connections again
		ok($node->wait_for_log(qr/all server processes terminated; reinitializing/, $offset),
			"cycle $cycle: a backend was killed, the server reinitialized");
		$node->poll_query_until('postgres', 'SELECT 1', '1');
	}
	elsif ($mode eq 'immediate')
	{
		$node->stop('immediate');
		$node->start;
	}
	else
	{
		my $postmaster = $node->{_pid};
		$node->kill9;
		for (1 .. 100) { last unless kill 0, $postmaster; usleep(100_000); }
		# orphaned backends exit when they notice the postmaster is gone;
		# until then a start fails (shared memory still in use)
		my $started = 0;
		for (1 .. 60)
		{
			if ($node->start(fail_ok => 1)) { $started = 1; last; }
			$node->{_pid} = undef;    # start() took the stale postmaster.pid
			sleep 1;
		}
		ok($started, "cycle $cycle: restarted after SIGKILL of the postmaster");
	}
	$pgb->finish;
	eval { $inflight->quit };

	# the database recovered and the promises held
	is($node->safe_psql('postgres', 'SELECT 1'), '1', "cycle $cycle ($mode): the server is back");
	my @keys = sort keys %acked;
	my $list = join(',', map { "'$_'" } @keys);
	is( $node->safe_psql('postgres',
			qq{SELECT count(*) FROM quota_ext.idempotency_keys k JOIN quota_ext.usage u
			     ON u.tenant_id = k.tenant_id AND u.usage_id = k.usage_id
			    WHERE k.tenant_id = $tw AND k.idempotency_key IN ($list) AND k.allowed}),
		scalar(@keys),
		"cycle $cycle ($mode): all " . scalar(@keys) . ' acknowledged consumes survived, with their usage rows');
	is( $node->safe_psql('postgres',
			qq{SELECT count(*) FROM quota_ext.idempotency_keys WHERE idempotency_key LIKE 'inflight-%'}),
		'0', "cycle $cycle ($mode): the uncommitted consume left no key");
	invariants_ok($node, 'postgres', "cycle $cycle ($mode)");
	is($node->safe_psql('postgres', $amcheck_sql), $n_btree, "cycle $cycle ($mode): amcheck passes on every btree");
	# replays of acknowledged keys are answered from the key
	my $used = $node->safe_psql('postgres',
		qq{SELECT sum(used) FROM quota_ext.quota_counters WHERE tenant_id = $tw});
	is( $node->safe_psql('postgres',
			qq{SELECT count(*) FILTER (WHERE d.replayed AND d.allowed)
			     FROM unnest(ARRAY[$list]) k, quota_ext.quota_consume($tw, 'm', 3, k) d}),
		scalar(@keys), "cycle $cycle ($mode): every acknowledged key replays");
	is( $node->safe_psql('postgres', qq{SELECT sum(used) FROM quota_ext.quota_counters WHERE tenant_id = $tw}),
		$used, "cycle $cycle ($mode): replays charged nothing");
}

# the tight quota was really contended: it is full, never over (summed over
# its escrow slots: automatic escrow lays a contended quota out over slots)
is( $node->safe_psql('postgres',
		qq{SELECT sum(used) FROM quota_ext.quota_counters c JOIN quota_ext.quotas q USING (tenant_id, quota_id)
		    WHERE q.tenant_id = $t1 AND q.period = 'day' AND q.metric = 'calls'}),
	'100', 'the tight quota filled up exactly to its limit');
ok(!$node->log_contains('deadlock detected'), 'no deadlocks in any cycle');

$node->stop;
done_testing();
