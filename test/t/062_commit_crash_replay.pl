# Commit, then an immediate crash, then the replay (reliability checklist F5).
#
# fsync = on.  A consume with key K commits; the server is stopped in
# immediate mode (SIGQUIT: no shutdown checkpoint, recovery from WAL) right
# after the commit was acknowledged.  After the restart a retry with K gets
# the stored decision, marked replayed, and charges nothing; K with other
# units, another model or as a reservation is an error (22023).  The same
# for invoke() with its key, and for the follow-ups that answer repeats:
# a second refund and a second settle with the same amount are replayed;
# a settle with another amount is 55000.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use QuotaReliab;

my $node = quota_node('replay', durable => 1);
$node->safe_psql('postgres', fixture_sql(1, calls => 100));
$node->safe_psql('postgres', q{SELECT quota_ext.model_register('other');
	SELECT quota_ext.policy_set(tenant_id, 'other', true) FROM quota_ext.tenants});
my $t = $node->safe_psql('postgres', q{SELECT tenant_id FROM quota_ext.tenants WHERE name = 't1'});
my $key = $node->safe_psql('postgres',
	qq{SELECT api_key FROM quota_ext.user_create($t, 'inv\@t1.example', 'member')});

my $cols = q{allowed, denied_by, quota_id, period, "limit", remaining, resets_at, retry_after, usage_id, reservation_id};
my $counters_sql = qq{SELECT string_agg(quota_id || ':' || used, ',' ORDER BY quota_id)
	FROM quota_ext.quota_counters WHERE tenant_id = $t};

# committed and acknowledged, then the crash
my $first = $node->safe_psql('postgres', qq{SELECT $cols FROM quota_ext.quota_consume($t, 'm', 7, 'K')});
my $first_invoke = $node->safe_psql('postgres', qq{SELECT $cols FROM quota_ext.invoke('$key', 'm', 2, 'KI')});
my $res = $node->safe_psql('postgres',
	qq{SELECT reservation_id FROM quota_ext.quota_reserve($t, 'm', 10, '1 hour', 'KR')});
my $settled = $node->safe_psql('postgres', qq{SELECT $cols FROM quota_ext.quota_settle($t, $res, 6)});
my $consumed = $node->safe_psql('postgres', qq{SELECT usage_id FROM quota_ext.quota_consume($t, 'm', 4)});
my $refund = $node->safe_psql('postgres', qq{SELECT $cols FROM quota_ext.quota_refund($t, $consumed)});
my $counters = $node->safe_psql('postgres', $counters_sql);
my $usage_rows = $node->safe_psql('postgres', 'SELECT count(*) FROM quota_ext.usage');
like($first, qr/^t\|/, 'K was allowed and committed');
$node->stop('immediate');
$node->start;
ok($node->log_contains('database system was interrupted|was not properly shut down'),
	'the restart recovered from WAL (no shutdown checkpoint)');

is($node->safe_psql('postgres', $counters_sql), $counters, 'counters survived the crash');
is($node->safe_psql('postgres', 'SELECT count(*) FROM quota_ext.usage'), $usage_rows, 'usage rows survived');
is($node->safe_psql('postgres', qq{SELECT $cols, replayed FROM quota_ext.quota_consume($t, 'm', 7, 'K')}),
	"$first|t", 'the retry of K returns the stored decision, marked replayed');
is($node->safe_psql('postgres', qq{SELECT $cols, replayed FROM quota_ext.invoke('$key', 'm', 2, 'KI')}),
	"$first_invoke|t", 'the retry of an invoke() key is replayed too');
is($node->safe_psql('postgres', $counters_sql), $counters, '... and charged nothing');
is( $node->safe_psql('postgres',
		qq{SELECT count(*) FROM quota_ext.usage WHERE idempotency_key IN ('K', 'KI', 'KR')}),
	'3', 'one usage row per key');

my @misuse = (
	[ qq{SELECT quota_ext.quota_consume($t, 'm', 8, 'K')},      'K with other units' ],
	[ qq{SELECT quota_ext.quota_consume($t, 'other', 7, 'K')},  'K with another model' ],
	[ qq{SELECT quota_ext.quota_reserve($t, 'm', 7, '1 hour', 'K')}, 'K as a reservation' ],
	[ qq{SELECT quota_ext.invoke('$key', 'm', 3, 'KI')},        'an invoke() key with other units' ],);
for my $m (@misuse)
{
	my ($ret, $out, $err) = $node->psql('postgres', $m->[0], extra_params => [ '-v', 'VERBOSITY=verbose' ]);
	like($err, qr/22023: idempotency key "\w+" was used with other parameters/, "$m->[1]: 22023");
}
is($node->safe_psql('postgres', $counters_sql), $counters, 'the misuses charged nothing');

# follow-ups answer repeats the same way after the crash
is($node->safe_psql('postgres', qq{SELECT $cols, replayed FROM quota_ext.quota_settle($t, $res, 6)}),
	"$settled|t", 'a second settle with the same amount is replayed');
my ($ret, $out, $err) = $node->psql('postgres', qq{SELECT quota_ext.quota_settle($t, $res, 9)},
	extra_params => [ '-v', 'VERBOSITY=verbose' ]);
like($err, qr/55000/, 'a settle with another amount: 55000');
is($node->safe_psql('postgres', qq{SELECT $cols, replayed FROM quota_ext.quota_refund($t, $consumed)}),
	"$refund|t", 'a second refund is replayed');
is($node->safe_psql('postgres', $counters_sql), $counters, 'none of the repeats charged anything');
invariants_ok($node, 'postgres', 'after the crash and the replays');

$node->stop;
done_testing();
