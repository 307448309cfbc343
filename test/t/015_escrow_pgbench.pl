# Hot tenant with escrow slots under pgbench (reliability L8 for the escrow
# path, doc/design.md section 5): clients consume random amounts from one
# tenant whose daily units quota is split over escrow slots, plus a monthly
# calls quota on one row, until well past the daily limit.  Two cases: 16
# clients on 8 slots, and 32 clients on 16 slots (more clients than slots:
# calls wait for one slot, and near the limit fall back to locking every
# slot).  Afterwards, per tenant: the slots' sum equals the ledger, never
# exceeds the limit, the allowances add up to the limit, each idempotency key
# has one usage row, the 80 % and 100 % events happened once each, and the
# quota was used up to within the largest request (so denials only came near
# the limit); and no deadlock anywhere.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('escrow');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'quota_ext'
fsync = on
max_connections = 50
});
$node->start;
$node->safe_psql('postgres', q{
	CREATE EXTENSION quota_ext;
	SELECT quota_ext.model_register('m');
});

# escrow_case(name, clients, slots, limit, transactions per client)
sub escrow_case
{
	my ($name, $clients, $slots, $limit, $txns) = @_;
	my $t = $node->safe_psql('postgres', qq{
		SELECT quota_ext.tenant_create('$name', 'enterprise')});
	$node->safe_psql('postgres', qq{
		SELECT quota_ext.policy_set($t, 'm', true);
		SELECT quota_ext.quota_set($t, 'daily', $limit, metric => 'units', slots => $slots);
		SELECT quota_ext.quota_set($t, 'monthly', 1000000);
	});
	my $total = $clients * $txns;

	$node->pgbench(
		"--no-vacuum --client=$clients --jobs=2 --transactions=$txns",
		0,
		[qr{processed: $total/$total}],
		[qr{^$}],
		"$clients clients consume from one tenant with $slots escrow slots",
		{
			"escrow_consume_$name" => qq{
\\set u random(1, 10)
\\set k random(1, 1200)
SELECT allowed FROM quota_ext.quota_consume($t, 'm', :u, 'k' || :k || '-' || :u);
}
		});

	my $r = $node->safe_psql('postgres', qq{
		SELECT sum(c.used), sum(c.allowance),
		       (SELECT sum(u.units) FROM quota_ext.usage u WHERE u.tenant_id = $t)
		  FROM quota_ext.quota_counters c JOIN quota_ext.quotas q USING (tenant_id, quota_id)
		 WHERE q.tenant_id = $t AND q.period = 'day'});
	my ($used, $allow, $ledger) = split /\|/, $r;
	is($used, $ledger, "$name: slots' sum ($used) equals the ledger");
	cmp_ok($used, '<=', $limit, "$name: never above the limit");
	is($allow, $limit, "$name: allowances add up to the limit");
	cmp_ok($used, '>=', $limit - 10, "$name: used up to within the largest request");

	is($node->safe_psql('postgres', qq{
		SELECT count(*) FROM (SELECT idempotency_key FROM quota_ext.usage
		                       WHERE tenant_id = $t AND idempotency_key IS NOT NULL
		                       GROUP BY 1 HAVING count(*) > 1) d}), '0',
		"$name: one usage row per idempotency key");
	is($node->safe_psql('postgres', qq{
		SELECT c.used = (SELECT count(*) FROM quota_ext.usage u WHERE u.tenant_id = $t)
		  FROM quota_ext.quota_counters c JOIN quota_ext.quotas q USING (tenant_id, quota_id)
		 WHERE q.tenant_id = $t AND q.period = 'month'}), 't',
		"$name: the one-row monthly quota counted every call");
	is($node->safe_psql('postgres', qq{
		SELECT count(*) FROM quota_ext.quota_events WHERE tenant_id = $t AND quota_id =
		  (SELECT quota_id FROM quota_ext.quotas WHERE tenant_id = $t AND period = 'day')}), '2',
		"$name: 80 % and 100 % events once each");
}

escrow_case('hot16', 16, 8, 4000, 150);
escrow_case('hot32', 32, 16, 6000, 100);

is($node->safe_psql('postgres',
	"SELECT deadlocks FROM pg_stat_database WHERE datname = 'postgres'"), '0',
	'no deadlocks');

$node->stop;
done_testing();
