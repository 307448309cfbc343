# Read-only transactions and hot standbys (reliability checklist F11).
#
# test/sql/consume.sql (issue 3) checks the 25006 of a read-only
# transaction on the primary.  This test adds what a regression test
# cannot see:
#   * read-only attempts charge nothing, not even the tenant's rate-limit
#     bucket (shared memory, never rolled back): a free-tier tenant that
#     tries 20 consumes read-only can still make its full burst afterwards;
#   * on a streaming hot standby, where every transaction is read-only:
#     quota_consume, quota_reserve, invoke, quota_settle, quota_cancel,
#     quota_refund get 25006 with a clear message; authenticate (no
#     last_used_at refresh), policy_check, quota_status and tenant_summary
#     answer from the replicated data; the ad-hoc rate_limit_check works
#     with the standby's own buckets (doc/rate-limits.md: per node).
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use QuotaReliab;

my $primary = quota_node('primary', init => { allows_streaming => 1 });
$primary->safe_psql('postgres', fixture_sql(1, calls => 100) . q{
	SELECT quota_ext.tenant_create('free-1', 'free');
	SELECT quota_ext.policy_set(tenant_id, 'm', true) FROM quota_ext.tenants WHERE name = 'free-1';});
my ($t, $tf) = split /\n/, $primary->safe_psql('postgres',
	q{SELECT tenant_id FROM quota_ext.tenants WHERE name IN ('t1', 'free-1') ORDER BY name = 'free-1'});
my $key = $primary->safe_psql('postgres', qq{SELECT api_key FROM quota_ext.user_create($t, 'ro\@t1.example', 'admin')});
my ($res, $usage) = split /\|/, $primary->safe_psql('postgres', qq{
	SELECT (quota_ext.quota_reserve($t, 'm', 5)).reservation_id, (quota_ext.quota_consume($t, 'm', 2)).usage_id});

my $try = sub {
	my ($node, $sql) = @_;
	my ($ret, $out, $err) = $node->psql('postgres', $sql, extra_params => [ '-v', 'VERBOSITY=verbose' ]);
	return $ret == 0 ? "ok $out" : ($err =~ /ERROR:\s+(\w+): ([^\n]*)/ ? "$1 $2" : $err);
};
my $counters_sql = q{SELECT string_agg(tenant_id || '/' || quota_id || ':' || used, ',' ORDER BY quota_id)
	FROM quota_ext.quota_counters};
my $state_sql = "SELECT ($counters_sql), (SELECT count(*) FROM quota_ext.usage),
	(SELECT count(*) FROM quota_ext.idempotency_keys), (SELECT count(*) FROM quota_ext.reservations WHERE status = 'open')";
my $before = $primary->safe_psql('postgres', $state_sql);

# ---------------------------------------------------------------------------
# primary, read-only transactions: nothing is charged, rate limits included
# ---------------------------------------------------------------------------
for my $i (1 .. 20)
{
	like($try->($primary, qq{BEGIN READ ONLY; SELECT quota_ext.quota_consume($tf, 'm', 1, 'ro-$i'); COMMIT}),
		qr/^25006 cannot execute quota_consume\(\) in a read-only transaction/, "read-only consume $i: 25006")
	  if $i == 1;
	$try->($primary, qq{BEGIN READ ONLY; SELECT quota_ext.quota_consume($tf, 'm', 1); COMMIT});
}
is($primary->safe_psql('postgres', $state_sql), $before, '20 read-only consumes changed nothing');
# free tier: 60 per minute, burst 10 -> 11 at once; the read-only attempts
# must not have taken any of them
is( $primary->safe_psql('postgres',
		qq{SELECT count(*) FILTER (WHERE allowed) FROM (
		     SELECT (quota_ext.quota_consume($tf, 'm', 1)).allowed FROM generate_series(1, 11)) x}),
	'11', 'the free tenant still has its whole burst (read-only attempts took no rate-limit token)');

# ---------------------------------------------------------------------------
# a hot standby
# ---------------------------------------------------------------------------
$primary->backup('b');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'b', has_streaming => 1);
$standby->start;
$primary->wait_for_catchup($standby);
is($standby->safe_psql('postgres', 'SELECT pg_is_in_recovery()'), 't', 'the standby is in recovery');
$before = $standby->safe_psql('postgres', $state_sql);
is($before, $primary->safe_psql('postgres', $state_sql), 'the standby has the primary\'s state');

my %writers = (
	quota_consume => qq{SELECT quota_ext.quota_consume($t, 'm', 1, 'sb-1')},
	quota_reserve => qq{SELECT quota_ext.quota_reserve($t, 'm', 1)},
	invoke        => qq{SELECT quota_ext.invoke('$key', 'm', 1)},
	quota_settle  => qq{SELECT quota_ext.quota_settle($t, $res, 3)},
	quota_cancel  => qq{SELECT quota_ext.quota_cancel($t, $res)},
	quota_refund  => qq{SELECT quota_ext.quota_refund($t, $usage)},);
for my $f (sort keys %writers)
{
	like($try->($standby, $writers{$f}), qr/^25006 /, "standby: $f gets 25006");
}
like($try->($standby, $writers{quota_consume}), qr/^25006 cannot execute quota_consume\(\) in a read-only transaction/,
	'standby: the consume error names the function');
is($try->($standby, qq{SELECT tenant_id = $t FROM quota_ext.authenticate('$key')}), 'ok t',
	'standby: authenticate works');
is($try->($standby, qq{SELECT quota_ext.policy_check($t, 'm')}), 'ok t', 'standby: policy_check works');
like($try->($standby, qq{SELECT count(*) FROM quota_ext.quota_status($t)}), qr/^ok [1-9]/,
	'standby: quota_status works');
like($try->($standby, qq{SELECT quota_ext.tenant_summary($t) ->> 'usage'}), qr/^ok \{/,
	'standby: tenant_summary works');
is($try->($standby, q{SELECT limited FROM quota_ext.rate_limit_check('standby-key', 1, 10, 60)}), 'ok f',
	'standby: rate_limit_check works (buckets are per node)');
is($standby->safe_psql('postgres', $state_sql), $before, 'the standby\'s state is unchanged');
invariants_ok($standby, 'postgres', 'standby');

$standby->stop;
$primary->stop;
done_testing();
