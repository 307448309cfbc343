# ALTER EXTENSION quota_ext UPDATE from every earlier version to the current
# one (reliability checklist F10; the pg_cron / pg_stat_statements
# "oldextversions" pattern).
#
# Starting versions: $UPGRADE_FROM (space separated), else the oldest
# version installed (pg_available_extension_versions).  For each one, in a
# database of its own:
#   1. CREATE EXTENSION quota_ext VERSION 'old', and some data;
#   2. walk ALTER EXTENSION quota_ext UPDATE TO each later available version
#      in order, ending at the control file's default_version (and, in a
#      second database, one ALTER EXTENSION UPDATE straight to it);
#   3. compare pg_dump --schema-only --binary-upgrade (which, unlike a plain
#      dump, lists every member object of the extension) with a fresh
#      CREATE EXTENSION of the current version, after masking OIDs and the
#      per-dump \restrict key; also the config-dump registrations, RLS and
#      FORCE flags;
#   4. the rows made before the update are all still there, and the
#      invariants hold.
# With one version (0.1.0 so far) the start is the current version: the
# "update" is a no-op and the comparison still runs, so the machinery is
# tested now and guards 0.1.0 -> 0.2.0 as soon as that script exists.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use QuotaReliab;

my $node = quota_node('upgrade');
my $tempdir = PostgreSQL::Test::Utils::tempdir;

sub vcmp
{
	my @a = split /\./, $_[0];
	my @b = split /\./, $_[1];
	while (@a || @b)
	{
		my ($x, $y) = (shift(@a) // 0, shift(@b) // 0);
		my $c = ($x =~ /^\d+$/ && $y =~ /^\d+$/) ? $x <=> $y : $x cmp $y;
		return $c if $c;
	}
	return 0;
}

my $current = $node->safe_psql('postgres',
	q{SELECT default_version FROM pg_available_extensions WHERE name = 'quota_ext'});
my @available = sort { vcmp($a, $b) } split /\n/, $node->safe_psql('postgres',
	q{SELECT version FROM pg_available_extension_versions WHERE name = 'quota_ext'});
note("current: $current; available: @available");
ok((grep { $_ eq $current } @available), "the default version $current is installable");
my @from = $ENV{UPGRADE_FROM} ? split(' ', $ENV{UPGRADE_FROM}) : ($available[0]);
note("upgrading from: @from");

# the schema as pg_dump sees it, with what differs between any two
# databases masked
sub schema_dump
{
	my ($db) = @_;
	my $file = "$tempdir/$db.sql";
	$node->command_ok(
		[ 'pg_dump', '--schema-only', '--binary-upgrade', '--no-password', '-f', $file, '-d', $node->connstr($db) ],
		"pg_dump --schema-only --binary-upgrade of $db");
	my $dump = slurp_file($file);
	$dump =~ s/^\\(un)?restrict .*$//mg;
	# OIDs, relfilenodes, xids and LSNs that binary upgrade preserves
	$dump =~ s/^SELECT pg_catalog\.binary_upgrade_set_\w+\(.*\);$//mg;
	$dump =~ s/SET relfrozenxid = '\d+', relminmxid = '\d+'/SET relfrozenxid = XID, relminmxid = XID/g;
	$dump =~ s/WHERE oid = '\d+';/WHERE oid = OID;/g;
	# sequence positions: the updated databases hold data
	$dump =~ s/(SELECT pg_catalog\.setval\('[\w.]+', )\d+, (true|false)\);/$1N\);/g;
	# the extension's config tables as OIDs (compared by name below)
	$dump =~ s/(binary_upgrade_create_empty_extension\('quota_ext', 'quota_ext', \w+, '[^']*', )'\{[\d,]*\}'/$1'{OIDS}'/g;
	$dump =~ s/\n{3,}/\n\n/g;
	open my $fh, '>', "$file.masked" or die $!;
	print $fh $dump;
	close $fh;
	return $dump;
}
my $catalog_sql = q{
	SELECT c.oid::regclass, x.cond FROM pg_extension e,
	       unnest(e.extconfig, e.extcondition) AS x(oid, cond) JOIN pg_class c ON c.oid = x.oid
	 WHERE e.extname = 'quota_ext' ORDER BY 1;
	SELECT relname, relrowsecurity, relforcerowsecurity FROM pg_class
	 WHERE relnamespace = 'quota_ext'::regnamespace AND relkind IN ('r', 'p') ORDER BY 1;
	SELECT extversion FROM pg_extension WHERE extname = 'quota_ext'};

$node->safe_psql('postgres', 'CREATE DATABASE fresh');
$node->safe_psql('fresh', 'CREATE EXTENSION quota_ext');
my $fresh_dump = schema_dump('fresh');
my $fresh_catalog = $node->safe_psql('fresh', $catalog_sql);
like($fresh_dump, qr/CREATE TABLE quota_ext\.usage /, 'the binary-upgrade dump lists the extension\'s members');

my $n = 0;
for my $old (@from)
{
	ok((grep { $_ eq $old } @available), "version $old is installable");
	for my $how ('walk', 'direct')
	{
		my $db = 'from_' . ++$n;
		$node->safe_psql('postgres', "CREATE DATABASE $db");
		$node->safe_psql($db, "CREATE EXTENSION quota_ext VERSION '$old'");
		# data made by the old version
		$node->safe_psql($db, q{
			SELECT quota_ext.model_register('m');
			SELECT quota_ext.tenant_create('t' || i, 'enterprise') FROM generate_series(1, 3) i;
			SELECT quota_ext.policy_set(tenant_id, 'm', true) FROM quota_ext.tenants;
			SELECT quota_ext.user_create(tenant_id, 'u' || tenant_id || '@x.example') FROM quota_ext.tenants;
			SELECT quota_ext.quota_set(tenant_id, 'day', 100, 'm') FROM quota_ext.tenants;
			SELECT quota_ext.quota_consume(tenant_id, 'm', 3, 'k' || tenant_id) FROM quota_ext.tenants;
			SELECT quota_ext.quota_reserve(tenant_id, 'm', 5) FROM quota_ext.tenants;});
		my $counts_sql = q{SELECT string_agg(format('%s=%s', relname,
			(xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM %s', oid::regclass), false, true, '')))[1]),
			',' ORDER BY relname)
			FROM pg_class WHERE relnamespace = 'quota_ext'::regnamespace AND relkind IN ('r', 'p')};
		my $rows_before = $node->safe_psql($db, $counts_sql);

		if ($how eq 'walk')
		{
			for my $v (grep { vcmp($_, $old) > 0 && vcmp($_, $current) <= 0 } @available)
			{
				$node->safe_psql($db, "ALTER EXTENSION quota_ext UPDATE TO '$v'");
				note("$db: updated to $v");
			}
		}
		else
		{
			$node->safe_psql($db, 'ALTER EXTENSION quota_ext UPDATE');
		}
		is($node->safe_psql($db, q{SELECT extversion FROM pg_extension WHERE extname = 'quota_ext'}),
			$current, "$old -> $current ($how): at the current version");
		my $dump = schema_dump($db);
		is($dump, $fresh_dump, "$old -> $current ($how): the schema equals a fresh install's (pg_dump)")
		  or diag(`diff -u '$tempdir/fresh.sql.masked' '$tempdir/$db.sql.masked' | head -60`);
		is($node->safe_psql($db, $catalog_sql), $fresh_catalog,
			"$old -> $current ($how): config dumps, RLS and FORCE equal a fresh install's");
		# every old table still has its rows (new tables may start empty)
		my %after = map { split /=/ } split /,/, $node->safe_psql($db, $counts_sql);
		my @lost = grep { my ($t, $c) = split /=/; ($after{$t} // -1) != $c } split /,/, $rows_before;
		is("@lost", '', "$old -> $current ($how): every row made before the update is kept");
		invariants_ok($node, $db, "$old -> $current ($how)");
		is($node->safe_psql($db, q{SELECT count(*) FILTER (WHERE d.replayed)
			FROM quota_ext.tenants t, quota_ext.quota_consume(t.tenant_id, 'm', 3, 'k' || t.tenant_id) d}),
			'3', "$old -> $current ($how): keys made by the old version still replay");
	}
}

$node->stop;
done_testing();
