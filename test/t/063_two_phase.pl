# Two-phase commit holding a consume across a restart (reliability
# checklist F6).
#
# fsync = on, max_prepared_transactions = 10.  Two transactions consume
# with keys P1 and P2 and are prepared; the server restarts (immediate
# mode).  The prepared transactions survive and still hold the counter's
# row lock and their keys: a consume from another session with lock_timeout
# gets 55P03, while another tenant is not blocked.  COMMIT PREPARED of the
# first counts it once (a retry of P1 is a replay); ROLLBACK PREPARED of
# the second counts nothing and frees P2.
#
# A limitation, asserted so it stays documented: a consume that crosses a
# threshold sends a NOTIFY, and PostgreSQL cannot PREPARE a transaction that
# has notified (0A000); such a transaction rolls back and charges nothing.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use QuotaReliab;

# Automatic escrow off: the cases are about the row locks a prepared
# transaction keeps; a re-layout of the waited-for quota would queue behind it.
my $node = quota_node('twophase', durable => 1,
	conf => ['max_prepared_transactions = 10', 'quota_ext.escrow_adapt_interval = 0']);
$node->safe_psql('postgres', fixture_sql(2, calls => 100) . q{
	SELECT quota_ext.model_register('other');
	SELECT quota_ext.policy_set(tenant_id, 'other', true) FROM quota_ext.tenants;
	SELECT quota_ext.quota_set(tenant_id, 'day', 100, 'other') FROM quota_ext.tenants;});
my ($t, $t2) = split /\n/, $node->safe_psql('postgres',
	q{SELECT tenant_id FROM quota_ext.tenants ORDER BY tenant_id});
my $counters_sql = qq{SELECT string_agg(quota_id || ':' || used, ',' ORDER BY quota_id)
	FROM quota_ext.quota_counters WHERE tenant_id = $t};
my $before = $node->safe_psql('postgres', $counters_sql);

$node->safe_psql('postgres', qq{BEGIN;
	SELECT quota_ext.quota_consume($t, 'm', 5, 'P1');
	PREPARE TRANSACTION 'p1';
	BEGIN;
	SELECT quota_ext.quota_consume($t, 'other', 6, 'P2');
	PREPARE TRANSACTION 'p2';});
is($node->safe_psql('postgres', 'SELECT count(*) FROM pg_prepared_xacts'), '2', 'two transactions prepared');
is($node->safe_psql('postgres', $counters_sql), $before, 'prepared consumes are not visible yet');

$node->stop('immediate');
$node->start;
is($node->safe_psql('postgres', 'SELECT gid FROM pg_prepared_xacts ORDER BY gid'), "p1\np2",
	'both prepared transactions survived the restart');

my $try = sub {
	my ($sql) = @_;
	my ($ret, $out, $err) = $node->psql('postgres', "SET lock_timeout = '100ms'; $sql",
		extra_params => [ '-v', 'VERBOSITY=verbose' ]);
	return $ret == 0 ? "ok $out" : $err;
};
like($try->(qq{SELECT quota_ext.quota_consume($t, 'm', 1)}), qr/55P03/,
	'the counter row is still locked after the restart: 55P03');
like($try->(qq{SELECT quota_ext.quota_consume($t, 'other', 1)}), qr/55P03/,
	'... both prepared transactions\' counters');
like($try->(qq{SELECT quota_ext.quota_consume($t, 'm', 5, 'P1')}), qr/55P03/,
	'the prepared key is still held: 55P03');
like($try->(qq{SELECT allowed FROM quota_ext.quota_consume($t2, 'm', 1)}), qr/^ok t/,
	'another tenant is not blocked');
is($node->safe_psql('postgres', $counters_sql), $before, 'nothing of the prepared work is visible');

$node->safe_psql('postgres', q{COMMIT PREPARED 'p1'});
my ($q_day) = $node->safe_psql('postgres',
	qq{SELECT quota_id FROM quota_ext.quotas WHERE tenant_id = $t AND period = 'day'
	      AND model_id = (SELECT model_id FROM quota_ext.models WHERE name = 'm')});
is( $node->safe_psql('postgres',
		qq{SELECT used FROM quota_ext.quota_counters WHERE tenant_id = $t AND quota_id = $q_day}),
	'1', 'COMMIT PREPARED counted the call once');
like($try->(qq{SELECT allowed, replayed FROM quota_ext.quota_consume($t, 'm', 5, 'P1')}), qr/^ok t\|t/,
	'P1 is now a replay');
# p2 still holds the counter
like($try->(qq{SELECT quota_ext.quota_consume($t, 'other', 1)}), qr/55P03/,
	'the other prepared consume still holds its counter');
$node->safe_psql('postgres', q{ROLLBACK PREPARED 'p2'});
is( $node->safe_psql('postgres',
		qq{SELECT count(*) FROM quota_ext.usage WHERE tenant_id = $t AND idempotency_key = 'P2'}),
	'0', 'ROLLBACK PREPARED counted nothing');
like($try->(qq{SELECT allowed, replayed FROM quota_ext.quota_consume($t, 'other', 6, 'P2')}), qr/^ok t\|f/,
	'P2 is free again and counts once');
is( $node->safe_psql('postgres',
		qq{SELECT count(*) FROM quota_ext.usage WHERE tenant_id = $t}),
	'2', 'the ledger has P1 and the new P2, nothing else');
invariants_ok($node, 'postgres', 'after COMMIT PREPARED and ROLLBACK PREPARED');

# the documented limitation: a threshold crossing notifies, and a
# transaction that notified cannot be prepared
$node->safe_psql('postgres', qq{SELECT quota_ext.quota_consume($t, 'm', 1) FROM generate_series(1, 78)});  # used: 79 of 100
$before = $node->safe_psql('postgres', $counters_sql);
my ($ret, $out, $err) = $node->psql('postgres',
	qq{BEGIN; SELECT quota_ext.quota_consume($t, 'm', 1, 'P3'); PREPARE TRANSACTION 'p3';},
	extra_params => [ '-v', 'VERBOSITY=verbose' ]);
like($err, qr/0A000: cannot PREPARE a transaction that has executed LISTEN, UNLISTEN, or NOTIFY/,
	'a consume that crosses a threshold (NOTIFY) cannot be prepared: 0A000');
is($node->safe_psql('postgres', $counters_sql), $before, '... and the transaction charged nothing');
is($node->safe_psql('postgres', 'SELECT count(*) FROM pg_prepared_xacts'), '0', 'nothing left prepared');
invariants_ok($node, 'postgres', 'at the end');

$node->stop;
done_testing();
