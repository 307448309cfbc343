# The configuration cache's shared level when it is far too small
# (doc/design.md §4a): answers stay right when it is full (new ones stay in
# the backends' own caches), a configuration change still reaches every new
# connection, and the next generation's answers get room again because the
# entries of the past generation are swept.  No timing is asserted.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('shared_cache_full');
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'quota_ext'\nquota_ext.shared_cache_entries = 16\n");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION quota_ext');
is($node->safe_psql('postgres', 'SHOW quota_ext.shared_cache_entries'),
	'16', 'a shared level of 16 entries');

# 40 tenants with a policy and a daily quota each: more answers than entries
$node->safe_psql(
	'postgres', q{
	SELECT quota_ext.model_register('m');
	SELECT quota_ext.tenant_create('full-' || i, 'enterprise') FROM generate_series(1, 40) i;
	SELECT quota_ext.policy_set(t.tenant_id, 'm', true) FROM quota_ext.tenants t;
	SELECT quota_ext.quota_set(t.tenant_id, 'daily', 5) FROM quota_ext.tenants t;
});
my @tenants = split /\n/,
  $node->safe_psql('postgres', 'SELECT tenant_id FROM quota_ext.tenants ORDER BY 1');
is(scalar @tenants, 40, '40 tenants');

# every tenant, each from a new connection (an empty cache of its own), twice
my $wrong = 0;
for my $round (1 .. 2)
{
	for my $t (@tenants)
	{
		my $r = $node->safe_psql('postgres',
			"SELECT quota_ext.policy_check($t, 'm') || ',' || (quota_ext.quota_consume($t, 'm', 1)).allowed");
		$wrong++ if $r ne 'true,true';
	}
}
is($wrong, 0, 'a full shared level gives the same answers as the tables');

# a change reaches every new connection, the others keep their answers
my $revoked = $tenants[7];
$node->safe_psql('postgres', "SELECT quota_ext.policy_set($revoked, 'm', false)");
my %seen;
for my $round (1 .. 2)
{
	for my $t (@tenants)
	{
		my $r = $node->safe_psql('postgres',
			"SELECT quota_ext.policy_check($t, 'm') || ',' || (quota_ext.quota_consume($t, 'm', 1)).allowed");
		$seen{ $t == $revoked ? 'revoked' : 'other' }{$r}++;
	}
}
is_deeply(
	\%seen,
	{ revoked => { 'false,false' => 2 }, other => { 'true,true' => 78 } },
	'after a change: the revoked tenant is denied, every other one allowed');

# the ledger and the counters agree, and no blocking limit was passed
is( $node->safe_psql(
		'postgres', q{
	SELECT count(*) FROM quota_ext.quota_counters c
	 WHERE c.used <> (SELECT coalesce(sum(u.calls), 0) FROM quota_ext.usage u
	                   WHERE u.tenant_id = c.tenant_id
	                     AND u.occurred_at >= c.period_start)
	    OR c.used > 5}),
	'0',
	'used = sum(usage) <= limit for every counter');

$node->stop;
done_testing();
