# The webhook relay of examples/webhook-relay (Python, Debian's
# python3-psycopg) end to end: the outbox's events POSTed to a receiver on
# loopback, which checks each HMAC-SHA256 signature.  The relay is killed
# mid-stream and started again; every event arrives (is answered 2xx)
# exactly once, each tenant's in delivery order, with a valid signature.
#
# Deterministic: the receiver holds one request unanswered and the relay is
# killed (SIGKILL) while it waits for the answer, so that event was neither
# accepted nor acknowledged, and the one before it was both (the relay acks
# before it POSTs the next).  One other event is answered 500 once, so the
# relay's retry is exercised.  Every wait is on a condition with a timeout.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IO::Socket::INET;
use IO::Handle;
use Digest::SHA qw(hmac_sha256_hex);
use Time::HiRes qw(usleep);
use POSIX ();
use lib 'test/t';
use QuotaReliab;

my $python = '/usr/bin/python3';
my $relay = 'examples/webhook-relay/relay.py';
# test/run installs python3-psycopg (test/lib.sh); without it this fails
# rather than skips, so that a run cannot pass without the relay
BAIL_OUT("$python with psycopg is not installed (Debian: python3-psycopg; test/run installs it)")
  if system($python, '-c', 'import psycopg') != 0;

my $secret = 'relay-test-secret';
my $node = quota_node('relay');

# three tenants, last month's usage, quotas with thresholds
$node->safe_psql('postgres', q{
	SELECT quota_ext.model_register('m');
	SELECT quota_ext.tenant_create('r' || i, 'enterprise') FROM generate_series(1, 3) i;
	UPDATE quota_ext.tenants SET created_at = now() - interval '70 days';
	SELECT quota_ext.policy_set(tenant_id, 'm', true) FROM quota_ext.tenants;
	SELECT quota_ext.price_set('m', 'EUR', unit_price => 0.000007);
	INSERT INTO quota_ext.usage (tenant_id, created_at, occurred_at, kind, model_id, calls, units, price_id, cost)
	SELECT t.tenant_id, date_trunc('month', now()) - interval '10 days', date_trunc('month', now()) - interval '10 days',
	       'consume', 1, 1, 3 * t.tenant_id, 1, 0.000021 * t.tenant_id
	  FROM quota_ext.tenants t;
	SELECT quota_ext.quota_set(tenant_id, 'never', 10, metric => 'units', thresholds => ARRAY[20, 40, 60, 80, 100])
	  FROM quota_ext.tenants;
	CREATE ROLE relay LOGIN IN ROLE quota_ext_admin;
});

# batch 1: invoices created at close and issued, threshold crossings
$node->safe_psql('postgres', q{
	SELECT count(*) FROM quota_ext.billing_close(date_trunc('month', now()) - interval '1 month', date_trunc('month', now()));
	SELECT quota_ext.invoice_issue(tenant_id, invoice_id) FROM quota_ext.invoices ORDER BY tenant_id;
});
for my $round (1 .. 5)
{
	$node->safe_psql('postgres',
		"SELECT quota_ext.quota_consume(tenant_id, 'm', 2) FROM quota_ext.tenants ORDER BY tenant_id");
}
my $n1 = $node->safe_psql('postgres', 'SELECT count(*) FROM quota_ext.outbox');
cmp_ok($n1, '>=', 20, "batch 1: $n1 events in the outbox");

# ---------------------------------------------------------------------------
# the receiver: logs every request; the 3rd new event is answered 500 once,
# the 10th is held unanswered (once) until its connection closes
# ---------------------------------------------------------------------------
my $log = "${PostgreSQL::Test::Utils::tmp_check}/receiver.log";
my $srv = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0, Listen => 16, ReuseAddr => 1)
  or die "listen: $!";
my $port = $srv->sockport;
my $receiver = fork // die "fork: $!";
if ($receiver == 0)
{
	open my $out, '>>', $log or die "$log: $!";
	$out->autoflush(1);
	my (%seen, $new, $rejected, $held);
	while (my $c = $srv->accept)
	{
		my ($len, %h) = (0);
		my $line = <$c>;
		next unless defined $line;
		while (defined(my $l = <$c>))
		{
			last if $l =~ /^\r?\n$/;
			$h{ lc $1 } = $2 if $l =~ /^([^:]+):\s*(.*?)\r?\n$/;
		}
		my $body = '';
		read($c, $body, $h{'content-length'} // 0);
		my $id = $h{'x-quota-event-id'} // 0;
		my ($tenant) = $body =~ /"tenant_id": (\d+)/;
		my $sig_ok = ($h{'x-quota-signature'} // '') eq 'sha256=' . hmac_sha256_hex($body, $secret) ? 1 : 0;
		$new++ unless $seen{$id}++;
		if ($new == 3 && !$rejected)
		{
			$rejected = $id;
			print $out "REJECT $id\n";
			print $c "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
		}
		elsif ($new == 10 && !$held)
		{
			$held = $id;
			print $out "HOLD $id\n";
			1 while read($c, my $buf, 1024);    # until the relay dies
			print $out "DROPPED $id\n";
		}
		else
		{
			print $out "ACCEPT $id $tenant $sig_ok\n";
			print $c "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
		}
		close $c;
	}
	POSIX::_exit(0);
}
close $srv;

sub lines { open my $f, '<', $log or return (); return <$f>; }
sub accepted { return map { [ split ' ', (substr $_, 7) ] } grep { /^ACCEPT / } lines(); }

sub wait_for
{
	my ($what, $cond) = @_;
	my $deadline = time + $PostgreSQL::Test::Utils::timeout_default;
	until ($cond->())
	{
		if (time > $deadline) { fail("timed out waiting for $what"); return 0; }
		usleep(50_000);
	}
	pass($what);
	return 1;
}

sub start_relay
{
	my $pid = fork // die "fork: $!";
	if ($pid == 0)
	{
		$ENV{RELAY_DSN} = $node->connstr('postgres') . ' user=relay';
		$ENV{RELAY_URL} = "http://127.0.0.1:$port/hook";
		$ENV{RELAY_SECRET} = $secret;
		$ENV{RELAY_CONSUMER} = 'test-relay';
		$ENV{RELAY_BATCH} = '4';
		$ENV{RELAY_IDLE} = '1';
		$ENV{RELAY_MAX_BACKOFF} = '1';
		open STDERR, '>>', "${PostgreSQL::Test::Utils::tmp_check}/relay.log";
		exec $python, $relay or POSIX::_exit(127);
	}
	return $pid;
}

my $pid = start_relay();
wait_for('the relay is killed while the receiver holds the 10th event', sub { grep { /^HOLD / } lines() })
  or BAIL_OUT('no HOLD');
kill 'KILL', $pid;
waitpid($pid, 0);
wait_for('the held connection is closed', sub { grep { /^DROPPED / } lines() });
my ($held) = map { /^HOLD (\d+)/ ? $1 : () } lines();
is(scalar(accepted()), 9, 'before the kill: 9 events accepted (one answered 500 first and retried), the 10th held');
is($node->safe_psql('postgres', "SELECT acked_event_id FROM quota_ext.event_consumers WHERE tenant_id = 0 AND consumer = 'test-relay'"),
	(accepted())[-1][0], 'the cursor is at the last accepted event, not at the held one');

# batch 2 while the relay is down: payments
$node->safe_psql('postgres', q{
	SELECT quota_ext.invoice_mark_paid(tenant_id, invoice_id, now(), 'pay-' || invoice_id)
	  FROM quota_ext.invoices ORDER BY tenant_id;
});
$pid = start_relay();
my $n2 = $node->safe_psql('postgres', 'SELECT count(*) FROM quota_ext.outbox');
wait_for("after the restart all $n2 events are accepted", sub { scalar(accepted()) >= $n2 });

# batch 3 while it runs: the NOTIFY wakes it
$node->safe_psql('postgres', q{
	SELECT quota_ext.quota_set(tenant_id, 'never', 20, metric => 'units', thresholds => ARRAY[55, 90])
	  FROM quota_ext.tenants;
	SELECT quota_ext.quota_consume(tenant_id, 'm', 2) FROM quota_ext.tenants, generate_series(1, 5) ORDER BY tenant_id;
});
my $n3 = $node->safe_psql('postgres', 'SELECT count(*) FROM quota_ext.outbox');
cmp_ok($n3, '>', $n2, 'batch 3 wrote events');
wait_for("all $n3 events are accepted", sub { scalar(accepted()) >= $n3 });
kill 'TERM', $pid;
waitpid($pid, 0);

# ---------------------------------------------------------------------------
# exactly once, in order per tenant, signed
# ---------------------------------------------------------------------------
my @acc = accepted();
my %count;
$count{ $_->[0] }++ for @acc;
is(scalar(grep { $count{$_} != 1 } keys %count), 0, 'no event was accepted twice');
my $ids = $node->safe_psql('postgres', 'SELECT string_agg(event_id::text, \' \' ORDER BY event_id) FROM quota_ext.outbox');
is(join(' ', sort { $a <=> $b } keys %count), $ids, 'every event of the outbox was accepted');
is(scalar(grep { !$_->[2] } @acc), 0, 'every signature is valid');
is($count{$held}, 1, "the held event $held arrived once, after the restart");
my ($rejected) = map { /^REJECT (\d+)/ ? $1 : () } lines();
is($count{$rejected}, 1, "the event answered 500 ($rejected) arrived once, retried");
for my $t (1 .. 3)
{
	my $want = $node->safe_psql('postgres',
		"SELECT string_agg(event_id::text, ' ' ORDER BY xid, event_id) FROM quota_ext.outbox WHERE tenant_id = $t");
	is(join(' ', map { $_->[0] } grep { $_->[1] == $t } @acc), $want, "tenant $t: its events in delivery order");
}
is($node->safe_psql('postgres', "SELECT count(*) FROM quota_ext.event_poll('test-relay', 100)"), '0',
	'nothing is left for the relay\'s consumer');
# a tampered body fails the check the receiver makes
isnt('sha256=' . hmac_sha256_hex('{"event_id": 1}', $secret), 'sha256=' . hmac_sha256_hex('{"event_id": 2}', $secret),
	'the signature depends on the body');

kill 'KILL', $receiver;
waitpid($receiver, 0);
$node->stop;
done_testing();
