# A backend terminated in the middle of a transaction that consumed, and
# timeouts while waiting for a counter (reliability checklist F3, F2).
#
# F3: session A runs BEGIN; quota_consume(..., key K) and is terminated
# with pg_terminate_backend before it commits.  Nothing is counted, the
# counter's row lock is freed at once (session B, already waiting on it,
# proceeds), and a retry with K counts once.  The same with B waiting on
# the idempotency key itself rather than on the counter, and with the
# *waiting* session terminated instead of the holder.
# F2 (and L4's timeout, here with a durable node): lock_timeout and
# statement_timeout expiring while a consume waits for a counter leave no
# trace: the error is 55P03 / 57014, counters, usage and idempotency keys
# are unchanged, and the key is still free.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use QuotaReliab;

# Automatic escrow off: these cases are about one counter row's lock (who
# waits for whom); with it on, the background worker spreads a quota whose
# callers waited over escrow slots and a later consume need not wait at all
# (080_escrow_auto.pl tests that).
my $node = quota_node('terminate', durable => 1, conf => ['quota_ext.escrow_adapt_interval = 0']);
$node->safe_psql('postgres', fixture_sql(2, calls => 100));
my $t = $node->safe_psql('postgres', q{SELECT tenant_id FROM quota_ext.tenants WHERE name = 't1'});

# what the tests compare: counters, usage rows and keys of t1
my $state_sql = qq{
	SELECT (SELECT string_agg(quota_id || ':' || used, ',' ORDER BY quota_id)
	          FROM quota_ext.quota_counters WHERE tenant_id = $t),
	       (SELECT count(*) FROM quota_ext.usage WHERE tenant_id = $t),
	       (SELECT coalesce(string_agg(idempotency_key, ',' ORDER BY idempotency_key), '-')
	          FROM quota_ext.idempotency_keys WHERE tenant_id = $t)};
my $state = sub { $node->safe_psql('postgres', $state_sql) };

# the pid of a background session, and whether a backend waits for a lock
sub bg_pid { my ($s) = @_; my $p = $s->query_safe('SELECT pg_backend_pid()'); chomp $p; return $p; }
my $waits = sub {
	my ($pid) = @_;
	return $node->poll_query_until('postgres',
		qq{SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $pid});
};
# run the same error-tolerant query in a throwaway session: (stdout, stderr)
my $try = sub {
	my ($sql) = @_;
	my ($ret, $out, $err) = $node->psql('postgres', $sql);
	return ($out, $err);
};

my $before = $state->();
note("before: $before");

# ---------------------------------------------------------------------------
# F2: timeouts while waiting on a held counter leave no trace
# ---------------------------------------------------------------------------
my $holder = $node->background_psql('postgres', on_error_stop => 0);
$holder->query_safe(qq{BEGIN; SELECT quota_ext.quota_consume($t, 'm', 5, 'held')});
my $held = $state->();
is($held, $before, 'an uncommitted consume is invisible to others');

my (undef, $err) = $try->(qq{SET lock_timeout = '100ms';
	SELECT quota_ext.quota_consume($t, 'm', 1, 'timeout-1')});
like($err, qr/canceling statement due to lock timeout/, 'lock_timeout while waiting for the counter: 55P03');
(undef, $err) = $try->(qq{SET statement_timeout = '200ms';
	SELECT quota_ext.quota_consume($t, 'm', 1, 'timeout-2')});
like($err, qr/canceling statement due to statement timeout/, 'statement_timeout while waiting: 57014');
(undef, $err) = $try->(qq{SET lock_timeout = '100ms';
	SELECT quota_ext.quota_consume($t, 'm', 1, 'held')});
like($err, qr/canceling statement due to lock timeout/,
	'lock_timeout while waiting for the same idempotency key: 55P03');
(undef, $err) = $try->(qq{SET lock_timeout = '100ms'; BEGIN;
	SELECT quota_ext.quota_reserve($t, 'm', 3, idempotency_key => 'timeout-3'); COMMIT});
like($err, qr/canceling statement due to lock timeout/, 'quota_reserve: lock_timeout too');
is($state->(), $before, 'after the timeouts: counters, usage and keys unchanged');
# the keys of the timed-out calls are free: they count once now that the
# holder is gone
$holder->query_safe('ROLLBACK');
is($state->(), $before, 'the holder rolled back: nothing counted');
my $out = $node->safe_psql('postgres',
	qq{SELECT allowed, replayed FROM quota_ext.quota_consume($t, 'm', 1, 'timeout-1');
	   SELECT allowed, replayed FROM quota_ext.quota_consume($t, 'm', 1, 'timeout-1')});
is($out, "t|f\nt|t", 'a timed-out key was not burned: counted once, then replayed');

# ---------------------------------------------------------------------------
# F3: the holder of a counter is terminated
# ---------------------------------------------------------------------------
$before = $state->();
$holder->query_safe(qq{BEGIN; SELECT quota_ext.quota_consume($t, 'm', 5, 'k-term')});
my $holder_pid = bg_pid($holder);
my $waiter = $node->background_psql('postgres', on_error_stop => 0);
my $waiter_pid = bg_pid($waiter);
$waiter->query_until(qr/waiting/, qq{\\echo waiting
	SELECT 'waiter', allowed FROM quota_ext.quota_consume($t, 'm', 2);
});
ok($waits->($waiter_pid), 'a second consume waits for the counter');
$node->safe_psql('postgres', "SELECT pg_terminate_backend($holder_pid)");
# the waiter goes on at once (well before any timeout)
my $t0 = time();
my $res = $waiter->query_safe(q{SELECT 'after'});
like($res, qr/waiter\|t/, 'the waiting consume proceeded once the holder was terminated');
cmp_ok(time() - $t0, '<', 10, '... at once');
is( $node->safe_psql('postgres',
		qq{SELECT count(*) FROM quota_ext.usage WHERE tenant_id = $t AND idempotency_key = 'k-term';
		   SELECT count(*) FROM quota_ext.idempotency_keys WHERE tenant_id = $t AND idempotency_key = 'k-term';
		   SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE a.pid = $holder_pid}),
	"0\n0\n0",
	'the terminated transaction left no usage row, no key and no lock');
is( $node->safe_psql('postgres',
		qq{SELECT count(*) FROM quota_ext.usage WHERE tenant_id = $t AND usage_id > 0}),
	($before =~ /\|(\d+)\|/)[0] + 1,
	'only the waiter\'s consume was recorded');
eval { $holder->quit };
# retry with the same key: counted once
$out = $node->safe_psql('postgres',
	qq{SELECT allowed, replayed FROM quota_ext.quota_consume($t, 'm', 5, 'k-term');
	   SELECT allowed, replayed FROM quota_ext.quota_consume($t, 'm', 5, 'k-term');
	   SELECT count(*) FROM quota_ext.usage WHERE tenant_id = $t AND idempotency_key = 'k-term'});
is($out, "t|f\nt|t\n1", 'the retry with the same key counts once (and a second retry is a replay)');
invariants_ok($node, 'postgres', 'after terminating a counter holder');

# ---------------------------------------------------------------------------
# F3 with the second session waiting on the idempotency key itself
# ---------------------------------------------------------------------------
$holder = $node->background_psql('postgres', on_error_stop => 0);
$holder->query_safe(qq{BEGIN; SELECT quota_ext.quota_consume($t, 'm', 4, 'k-same')});
$holder_pid = bg_pid($holder);
$waiter->query_until(qr/waiting/, qq{\\echo waiting
	SELECT 'waiter', allowed, replayed FROM quota_ext.quota_consume($t, 'm', 4, 'k-same');
});
ok($waits->($waiter_pid), 'the same key in a second session waits for the first');
$node->safe_psql('postgres', "SELECT pg_terminate_backend($holder_pid)");
$res = $waiter->query_safe(q{SELECT 'after'});
like($res, qr/waiter\|t\|f/, 'after the first is terminated, the second runs (not a replay)');
is( $node->safe_psql('postgres',
		qq{SELECT count(*) FROM quota_ext.usage WHERE tenant_id = $t AND idempotency_key = 'k-same'}),
	'1', 'the key counted once');
eval { $holder->quit };
invariants_ok($node, 'postgres', 'after terminating the first of two sessions with one key');

# ---------------------------------------------------------------------------
# the waiting session is terminated: the holder commits normally
# ---------------------------------------------------------------------------
$before = $state->();
$holder = $node->background_psql('postgres', on_error_stop => 0);
$holder->query_safe(qq{BEGIN; SELECT quota_ext.quota_consume($t, 'm', 3, 'k-hold')});
$waiter->query_until(qr/waiting/, qq{\\echo waiting
	SELECT quota_ext.quota_consume($t, 'm', 7, 'k-victim');
});
ok($waits->($waiter_pid), 'a consume waits behind the holder');
$node->safe_psql('postgres', "SELECT pg_terminate_backend($waiter_pid)");
$holder->query_safe('COMMIT');
is( $node->safe_psql('postgres',
		qq{SELECT string_agg(idempotency_key, ',' ORDER BY idempotency_key) FROM quota_ext.usage
		    WHERE tenant_id = $t AND idempotency_key IN ('k-hold', 'k-victim')}),
	'k-hold', 'the holder committed; the terminated waiter left nothing');
$out = $node->safe_psql('postgres',
	qq{SELECT allowed, replayed FROM quota_ext.quota_consume($t, 'm', 7, 'k-victim')});
is($out, 't|f', 'the terminated waiter\'s key was not burned');
eval { $waiter->quit };
$holder->quit;
invariants_ok($node, 'postgres', 'after terminating a waiter');

# the server never restarted: no crash, a clean log
ok(!$node->log_contains('terminated by signal|was terminated by|all server processes terminated'),
	'no backend crashed and the server did not reinitialize');

$node->stop;
done_testing();
