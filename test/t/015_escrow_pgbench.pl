# Hot tenant with escrow slots under pgbench (reliability L8 for the escrow
# path, doc/design.md section 5): 16 clients consume random amounts from one
# tenant whose daily units quota is split over 8 slots, plus a monthly calls
# quota on one row.  Afterwards: the slots' sum equals the ledger, never
# exceeds the limit, the allowances add up to the limit, each idempotency key
# has one usage row, no deadlocks, and the quota was used up to within the
# largest request (so denials only came near the limit).
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
max_connections = 40
});
$node->start;

my $limit = 4000;
$node->safe_psql('postgres', qq{
	CREATE EXTENSION quota_ext;
	SELECT quota_ext.tenant_create('hot', 'enterprise');
	SELECT quota_ext.model_register('m');
	SELECT quota_ext.policy_set(1, 'm', true);
	SELECT quota_ext.quota_set(1, 'daily', $limit, metric => 'units', slots => 8);
	SELECT quota_ext.quota_set(1, 'monthly', 1000000);
});

$node->pgbench(
	'--no-vacuum --client=16 --jobs=2 --transactions=150',
	0,
	[qr{processed: 2400/2400}],
	[qr{^$}],
	'16 clients consume from one tenant with 8 escrow slots',
	{
		'escrow_consume' => q{
\set u random(1, 10)
\set k random(1, 1200)
SELECT allowed FROM quota_ext.quota_consume(1, 'm', :u, 'k' || :k || '-' || :u);
}
	});

my $r = $node->safe_psql('postgres', q{
	SELECT sum(c.used), sum(c.allowance),
	       (SELECT sum(u.units) FROM quota_ext.usage u WHERE u.tenant_id = 1)
	  FROM quota_ext.quota_counters c JOIN quota_ext.quotas q USING (tenant_id, quota_id)
	 WHERE q.period = 'day'});
my ($used, $allow, $ledger) = split /\|/, $r;
is($used, $ledger, "slots' sum ($used) equals the ledger");
cmp_ok($used, '<=', $limit, 'never above the limit');
is($allow, $limit, 'allowances add up to the limit');
cmp_ok($used, '>=', $limit - 10, 'used up to within the largest request');

is($node->safe_psql('postgres', q{
	SELECT count(*) FROM (SELECT idempotency_key FROM quota_ext.usage
	                       WHERE idempotency_key IS NOT NULL
	                       GROUP BY 1 HAVING count(*) > 1) d}), '0',
	'one usage row per idempotency key');
is($node->safe_psql('postgres', q{
	SELECT c.used = (SELECT count(*) FROM quota_ext.usage u WHERE u.tenant_id = 1)
	  FROM quota_ext.quota_counters c JOIN quota_ext.quotas q USING (tenant_id, quota_id)
	 WHERE q.period = 'month'}), 't', 'the one-row monthly quota counted every call');
is($node->safe_psql('postgres',
	"SELECT deadlocks FROM pg_stat_database WHERE datname = 'postgres'"), '0',
	'no deadlocks');
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM quota_ext.quota_events WHERE quota_id =
	  (SELECT quota_id FROM quota_ext.quotas WHERE period = 'day')}), '2',
	'80 % and 100 % events once each');

$node->stop;
done_testing();
