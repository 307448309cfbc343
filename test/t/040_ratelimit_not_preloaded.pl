# Without shared_preload_libraries: the extension installs and everything
# but the shared bucket table works; the rate-limit functions that need it
# raise 55000 with a hint naming shared_preload_libraries.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('not_preloaded');
$node->init;
$node->start;

$node->safe_psql('postgres', 'CREATE EXTENSION quota_ext');
pass('CREATE EXTENSION works without shared_preload_libraries');

sub fails_with
{
	my ($sql, $state, $hint, $name) = @_;
	my ($ret, $out, $err) = $node->psql('postgres', $sql,
		extra_params => [ '-v', 'VERBOSITY=verbose' ]);
	isnt($ret, 0, "$name: fails");
	like($err, qr/ERROR:\s+$state:/, "$name: SQLSTATE $state");
	like($err, $hint, "$name: hint") if $hint;
}

fails_with(q{SELECT * FROM quota_ext.rate_limit_check('k', 1, 1, 1)},
	'55000', qr/HINT:\s+Add quota_ext to shared_preload_libraries/,
	'rate_limit_check');
$node->safe_psql('postgres',
	q{SELECT quota_ext.tenant_create('t-free', 'free')});
fails_with(q{BEGIN;
             SELECT quota_ext.set_tenant(
               (SELECT tenant_id FROM quota_ext.tenants WHERE name = 't-free'));
             SELECT * FROM quota_ext.tenant_rate_limit_check('k', 1, 1, 1);},
	'55000', qr/shared_preload_libraries/, 'tenant_rate_limit_check');
fails_with(q{SELECT * FROM quota_ext.rate_limit_status()},
	'55000', qr/shared_preload_libraries/, 'rate_limit_status');
# bad input is still reported as such
fails_with(q{SELECT * FROM quota_ext.rate_limit_check('k', -1, 1, 1)},
	'22023', undef, 'bad input');

# The arithmetic needs no shared memory.
is( $node->safe_psql(
		'postgres',
		'SELECT remaining FROM quota_ext.gcra_eval(0, 0, 15, 30, 60, 1)'),
	'15',
	'gcra_eval works');

# A tenant without any rate limit (enterprise tier: unlimited) is served;
# one with a limit (the free tier's default) gets 55000.
$node->safe_psql('postgres',
	q{SELECT quota_ext.tenant_create('t-ent', 'enterprise')});
is( $node->safe_psql(
		'postgres',
		q{SELECT limited, rule_id IS NULL FROM quota_ext.rate_limit_apply(
		    (SELECT tenant_id FROM quota_ext.tenants WHERE name = 't-ent'))}),
	'f|t',
	'rate_limit_apply without rules needs no shared memory');
fails_with(
	q{SELECT * FROM quota_ext.rate_limit_apply(
	    (SELECT tenant_id FROM quota_ext.tenants WHERE name = 't-free'))},
	'55000', qr/shared_preload_libraries/,
	'rate_limit_apply with a tier default');

# Issue 17: the README said only the rate-limit functions refuse without
# preloading, but quota_consume, invoke and quota_reserve refuse (55000) for
# every tenant a rate limit applies to.  What they do, and that the README
# says so.
$node->safe_psql('postgres', q{
	SELECT quota_ext.model_register('np-model');
	SELECT quota_ext.policy_set(tenant_id, 'np-model', true) FROM quota_ext.tenants
	 WHERE name IN ('t-free', 't-ent');
});
fails_with(
	q{SELECT * FROM quota_ext.quota_consume(
	    (SELECT tenant_id FROM quota_ext.tenants WHERE name = 't-free'), 'np-model')},
	'55000', qr/shared_preload_libraries/,
	'quota_consume for a tenant of a tier with a rate limit');
is( $node->safe_psql(
		'postgres',
		q{SELECT allowed FROM quota_ext.quota_consume(
		    (SELECT tenant_id FROM quota_ext.tenants WHERE name = 't-ent'), 'np-model')}),
	't',
	'quota_consume for a tenant without a rate limit works without preloading');

sub slurp
{
	my ($f) = @_;
	open my $fh, '<', $f or die "$f: $!";
	local $/;
	my $s = <$fh>;
	close $fh;
	return $s;
}
my $readme = slurp('README.md');
my ($install) = $readme =~ /^## Install\n(.*?)^## /ms;
like($install, qr/without preloading.*`quota_consume`, `invoke` and\s+`quota_reserve`/s,
	'README (Install): charging refuses without preloading where a rate limit applies');

# The README's tier table is the catalog's built-in tiers, value for value.
my ($tiers) = $readme =~ /^## Tiers\n(.*?)^## /ms;
ok(defined $tiers, 'README has a section Tiers');
my @documented;
for my $line (split /\n/, $tiers // '')
{
	next unless $line =~ /^\| `(\w+)`/;
	my @cells = map { s/^\s+|\s+$//gr } (split /\|/, $line)[ 1 .. 5 ];
	$cells[0] =~ s/^`(\w+)`.*/$1/;
	s/,//g for @cells;
	push @documented, join('|', map { /^(unlimited|none)$/ ? '' : $_ } @cells);
}
is( join("\n", @documented),
	$node->safe_psql(
		'postgres',
		q{SELECT tier || '|' || coalesce(monthly_calls::text, '') || '|'
		      || coalesce(rate_limit_per_minute::text, '') || '|'
		      || coalesce(rate_limit_burst::text, '') || '|' || audit_retention::text
		    FROM quota_ext.tiers WHERE builtin ORDER BY monthly_calls NULLS LAST}),
	'README (Tiers) shows every built-in tier with its catalog defaults');

$node->stop;
done_testing();
