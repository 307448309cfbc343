# Automatic escrow (doc/design.md section 5) under crashes and under load.
#
# Part 1, a crash in the middle of a re-layout (fsync = on, no background
# pass: quota_ext.escrow_adapt_interval = 0).  Two consumes of tenant t1
# meet on its counters, so automatic escrow has seen contention; a session
# holds the monthly quota's counter, and quota_ext.escrow_adapt() lays the
# daily quota out again and then waits for that counter, its transaction
# open.  The server is killed (SIGKILL of the postmaster) and restarted:
# nothing of the re-layout is left (one row per quota, slots = 1) and the
# counters equal the ledger.  Then a re-layout that commits, a second
# SIGKILL: the new layout is there and still equals the ledger, and
# consumes after the restart (the shared table starts empty) stay exact.
#
# Part 2, the background worker (quota_ext.escrow_adapt_interval = 50ms):
# 16 pgbench clients on one default-configured tenant whose daily limit
# they over-subscribe.  Awaited, never slept on: the quotas grow (slots > 1)
# while the load runs; after it, one client alone makes them fold back
# (slots = 1).  Exactly the limit is charged, the invariants hold, and
# pg_stat_database counts no deadlock.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Time::HiRes qw(usleep);
use QuotaReliab;

# SIGKILL of the postmaster, then a start once the orphaned backends are
# gone (until then a start fails: shared memory still in use)
sub kill9_restart
{
	my ($node, @sessions) = @_;
	my $postmaster = $node->{_pid};
	$node->kill9;
	for (1 .. 100) { last unless kill 0, $postmaster; usleep(100_000); }
	eval { $_->quit } for @sessions;
	for (1 .. 60)
	{
		return 1 if $node->start(fail_ok => 1);
		$node->{_pid} = undef;
		sleep 1;
	}
	return 0;
}

# ---------------------------------------------------------------------------
# part 1: SIGKILL during a re-layout
# ---------------------------------------------------------------------------
my $node = quota_node('escrow_crash', durable => 1,
	conf => [ 'quota_ext.escrow_adapt_interval = 0' ]);
$node->safe_psql('postgres', fixture_sql(2));
my $t1 = $node->safe_psql('postgres', q{SELECT tenant_id FROM quota_ext.tenants WHERE name = 't1'});
my ($qday, $qmonth) = split /\n/, $node->safe_psql('postgres',
	qq{SELECT quota_id FROM quota_ext.quotas WHERE tenant_id = $t1 ORDER BY quota_id});
my $slots_sql = qq{SELECT string_agg(q.slots || '/' || (SELECT count(*) FROM quota_ext.quota_counters c
	WHERE c.tenant_id = q.tenant_id AND c.quota_id = q.quota_id), ' ' ORDER BY q.quota_id)
	FROM quota_ext.quotas q WHERE q.tenant_id = $t1};

# contention: b's consume waits for a's counter (the first calls of the
# quotas since the server started: one of two waited, so a pass grows them;
# a wait among many calls would not)
sub contend
{
	my ($hold) = @_;    # seconds the waiter waits at least (default: a moment)
	my $a = $node->background_psql('postgres');
	my $b = $node->background_psql('postgres');
	$a->query_safe(qq{BEGIN; SELECT quota_ext.quota_consume($t1, 'm', 1)});
	$b->query_until(qr/go/, qq{\\echo go\nSELECT quota_ext.quota_consume($t1, 'm', 1);\n});
	$node->poll_query_until('postgres',
		q{SELECT count(*) > 0 FROM pg_stat_activity WHERE wait_event_type = 'Lock'
		   AND query LIKE '%quota_consume%'})
	  or die 'the second consume never waited';
	sleep($hold) if $hold;
	$a->query_safe('COMMIT');
	$a->quit;
	$b->quit;
}
contend();

# the monthly counter held, the pass lays out the daily quota and waits
my $holder = $node->background_psql('postgres');
$holder->query_safe(qq{BEGIN; SELECT 1 FROM quota_ext.quota_counters
	WHERE tenant_id = $t1 AND quota_id = $qmonth FOR UPDATE});
my $pass = $node->background_psql('postgres', on_error_stop => 0);
$pass->query_until(qr/go/, "\\echo go\nSELECT quota_ext.escrow_adapt();\n");
$node->poll_query_until('postgres',
	q{SELECT count(*) > 0 FROM pg_stat_activity WHERE wait_event_type = 'Lock'
	   AND query LIKE '%escrow_adapt%'})
  or die 'the pass never waited';
is($node->safe_psql('postgres', $slots_sql), '1/1 1/1', 'mid re-layout: nothing visible yet');
ok(kill9_restart($node, $holder, $pass), 'restarted after SIGKILL mid re-layout');
is($node->safe_psql('postgres', $slots_sql), '1/1 1/1', 'after SIGKILL mid re-layout: the old layout');
invariants_ok($node, 'postgres', 'after SIGKILL mid re-layout');

# a re-layout that commits, then SIGKILL
contend();
is($node->safe_psql('postgres', 'SELECT quota_ext.escrow_adapt()'), '2', 'a pass lays out both quotas');
is($node->safe_psql('postgres', $slots_sql), '2/2 2/2', 'two slots each');
ok(kill9_restart($node), 'restarted after SIGKILL');
is($node->safe_psql('postgres', $slots_sql), '2/2 2/2', 'after SIGKILL: the committed layout');
invariants_ok($node, 'postgres', 'after SIGKILL with escrow slots');
$node->safe_psql('postgres', qq{SELECT quota_ext.quota_consume($t1, 'm', 3) FROM generate_series(1, 7)});
invariants_ok($node, 'postgres', 'consumes after the restart');
# one caller and quiet passes: folded back (the table was empty after the restart)
$node->safe_psql('postgres', 'SELECT quota_ext.escrow_adapt()') for 1 .. 3;
is($node->safe_psql('postgres', $slots_sql), '1/1 1/1', 'folded back after quiet passes');
invariants_ok($node, 'postgres', 'after folding back');
# a wait among many calls is no contention: no growth
$node->safe_psql('postgres', qq{SELECT quota_ext.quota_consume($t1, 'm', 1) FROM generate_series(1, 10)});
contend();
is($node->safe_psql('postgres', 'SELECT quota_ext.escrow_adapt()'), '0', 'one wait in many calls: no re-layout');
is($node->safe_psql('postgres', $slots_sql), '1/1 1/1', 'one wait in many calls: still one row each');
# after its first pass a single-row quota grows only when its counter has a
# queue: on average half a caller waiting since the last pass (a spread load
# meets another caller on a counter for a moment, often; doc/design.md §5)
sleep(3);
contend();
is($node->safe_psql('postgres', 'SELECT quota_ext.escrow_adapt()'), '0',
	'a moment of waiting in a pass of seconds: no re-layout');
contend(6);
is($node->safe_psql('postgres', 'SELECT quota_ext.escrow_adapt()'), '2',
	'a caller waiting most of the pass: both quotas laid out');
is($node->safe_psql('postgres', $slots_sql), '2/2 2/2', 'two slots each');
invariants_ok($node, 'postgres', 'after a queue grew the quotas');
$node->stop;

# ---------------------------------------------------------------------------
# part 2: the background worker under an over-subscribing load
# ---------------------------------------------------------------------------
my $limit = 3000;
my $w = quota_node('escrow_worker', quiet => 1,
	conf => [ 'quota_ext.escrow_adapt_interval = 50ms', 'max_connections = 40' ]);
$w->safe_psql('postgres', fixture_sql(1, calls => $limit));
my $tw = $w->safe_psql('postgres', q{SELECT tenant_id FROM quota_ext.tenants WHERE name = 't1'});
my $grown = qq{SELECT min(slots) > 1 FROM quota_ext.quotas WHERE tenant_id = $tw};
my $script = $w->basedir . '/hot.sql';
PostgreSQL::Test::Utils::append_to_file($script, "SELECT quota_ext.quota_consume($tw, 'm', 1);\n");
my $deadlocks0 = $w->safe_psql('postgres',
	q{SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()});
my ($out, $err) = ('', '');
my $pgb = IPC::Run::start(
	[ 'pgbench', '--no-vacuum', '--client=16', '--jobs=2', '--transactions=400',
	  "--file=$script", '-h', $w->host, '-p', $w->port, 'postgres' ],
	'>', \$out, '2>', \$err);
ok($w->poll_query_until('postgres', $grown), 'the worker spread the hot quotas over slots');
$pgb->finish;
is($?, 0, 'pgbench finished without errors') or diag($err);
like($out, qr/number of failed transactions: 0/, 'no failed transaction');
# one client alone: the worker folds the quotas back
my $one = $w->background_psql('postgres');
ok($w->poll_query_until('postgres',
	qq{SELECT count(quota_ext.quota_consume($tw, 'm', 1)) >= 0
	      AND (SELECT max(slots) FROM quota_ext.quotas WHERE tenant_id = $tw) = 1}),
	'one caller: folded back to one row');
$one->quit;
is($w->safe_psql('postgres', qq{SELECT sum(c.used) FROM quota_ext.quota_counters c
	JOIN quota_ext.quotas q USING (tenant_id, quota_id) WHERE q.tenant_id = $tw AND q.period = 'day'}),
	$limit, 'over-subscribed: exactly the limit charged');
invariants_ok($w, 'postgres', 'after the load');
$w->poll_query_until('postgres', 'SELECT pg_stat_force_next_flush() IS NOT NULL');
is($w->safe_psql('postgres',
	q{SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()}) - $deadlocks0,
	0, 'no deadlock');
$w->stop;
done_testing();
