# Dump and restore with run-time ledger partitions.
#
# usage_partitions_maintain() creates monthly partitions at run time; they
# are not members of the extension, so pg_dump dumps them as ordinary
# tables attached to quota_ext.usage, with their data, indexes and policies,
# after CREATE EXTENSION has recreated the partitioned table and its default
# partition.  This test dumps a database with rows in a current, a past and
# the default partition, restores it with --exit-on-error into a new
# database, and checks that every row, invoice, price and sequence came
# back and that consumption goes on into the restored partitions.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('dump');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'quota_ext'");
$node->start;

$node->safe_psql('postgres', q{
	CREATE EXTENSION quota_ext;
	SELECT quota_ext.tenant_create('dump-a');
	SELECT quota_ext.model_register('dump-m');
	SELECT quota_ext.policy_set(1, 'dump-m', true);
	SELECT quota_ext.price_set('dump-m', 'USD', unit_price => 0.5);
	SELECT quota_ext.quota_set(1, 'monthly', NULL, max_cost => 100, currency => 'USD');
	SELECT quota_ext.quota_consume(1, 'dump-m', 3);
	-- a row of an old month, in the default partition until maintenance
	INSERT INTO quota_ext.usage (tenant_id, created_at, occurred_at, kind, model_id, calls, units, price_id, cost)
	VALUES (1, '2025-01-05', '2025-01-05', 'consume', 1, 1, 42, 1, 21);
	SELECT quota_ext.usage_partitions_maintain(1);
	SELECT quota_ext.quota_consume(1, 'dump-m', 4);
	SELECT quota_ext.usage_rollup();
	SELECT count(*) FROM quota_ext.billing_close(date_trunc('month', now()) - interval '1 month', now());
});

my $census = q{
	SELECT string_agg(format('%s=%s', t, n), ' ' ORDER BY t) FROM (
		SELECT tableoid::regclass::text AS t, count(*)::text AS n FROM quota_ext.usage GROUP BY 1
		UNION ALL SELECT 'units', sum(units)::text FROM quota_ext.usage
		UNION ALL SELECT 'cost', sum(cost)::text FROM quota_ext.usage
		UNION ALL SELECT 'invoices', count(*)::text FROM quota_ext.invoices
		UNION ALL SELECT 'prices', count(*)::text FROM quota_ext.prices
		UNION ALL SELECT 'daily', sum(calls)::text FROM quota_ext.usage_daily
		UNION ALL SELECT 'partitions', count(*)::text FROM pg_inherits WHERE inhparent = 'quota_ext.usage'::regclass
	) s};
my $before = $node->safe_psql('postgres', $census);
like($before, qr/quota_ext\.usage_p202501=1/, 'a past month has its own partition');

my $dump = $node->basedir . '/quota.dump';
$node->command_ok(['pg_dump', '-Fc', '-f', $dump, '-d', $node->connstr('postgres')], 'pg_dump');
$node->safe_psql('postgres', 'CREATE DATABASE restored');
$node->command_ok(['pg_restore', '--exit-on-error', '-d', $node->connstr('restored'), $dump],
	'pg_restore --exit-on-error succeeds');

is($node->safe_psql('restored', $census), $before, 'every row, partition, invoice, price and rollup came back');
is($node->safe_psql('restored', q{
	SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
	 WHERE i.inhparent = 'quota_ext.usage'::regclass AND c.relforcerowsecurity
	   AND (SELECT count(*) FROM pg_policies p WHERE p.schemaname = 'quota_ext' AND p.tablename = c.relname) = 2
	   AND (SELECT count(*) FROM pg_index x WHERE x.indrelid = c.oid) = 3}),
	$node->safe_psql('restored', q{SELECT count(*) FROM pg_inherits WHERE inhparent = 'quota_ext.usage'::regclass}),
	'restored partitions keep FORCE RLS, both policies and their three indexes');
my $max_id = $node->safe_psql('postgres', 'SELECT max(usage_id) FROM quota_ext.usage');
cmp_ok($node->safe_psql('restored', q{SELECT usage_id FROM quota_ext.quota_consume(1, 'dump-m', 1)}),
	'>', $max_id, 'consumption goes on after restore with fresh usage ids');
is($node->safe_psql('restored', q{SELECT count(*) FROM ONLY quota_ext.usage_default}), '0',
	'and into the restored partitions, not the default one');
is($node->safe_psql('restored', q{SELECT remaining_cost FROM quota_ext.quota_status(1) WHERE metric = 'cost'}),
	'96.000000', 'the money budget counter came back');
is($node->safe_psql('restored', q{SELECT count(*) FROM quota_ext.usage_partitions_maintain(1)}), '0',
	'maintenance after restore finds the partitions in place');

$node->stop;
done_testing();
