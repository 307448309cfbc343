# Mutation test of the isolation suite (reliability checklist I10: "drop one
# policy, or remove FORCE: the suite fails").
#
# For every table of the extension with row-level security (from the
# catalog, so tables added later are covered) and every policy on it, one
# mutation at a time is committed to a database:
#   ALTER TABLE ... NO FORCE ROW LEVEL SECURITY
#   ALTER TABLE ... DISABLE ROW LEVEL SECURITY
#   DROP POLICY p                       (fails closed: a role sees nothing)
#   ALTER POLICY p USING (true) [WITH CHECK (true)]   (fails open)
# then the pgTAP files run against it (06_catalog, 08_cross_tenant,
# 07_isolation first, then every other test/pgtap file) until one fails.
# Pass: every mutation makes at least one file fail, the unmutated database
# passes them all before and after (each mutation is reverted).
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use QuotaReliab;

my $node = quota_node('mutation', quiet => 1);
$node->safe_psql('postgres', 'CREATE EXTENSION pgtap');

# the quick catalog audit first, then the isolation files, then the rest
my %first = ('06_catalog.sql' => 1, '08_cross_tenant.sql' => 2, '07_isolation.sql' => 3);
my @files = sort { ($first{ (split m{/}, $a)[-1] } // 9) <=> ($first{ (split m{/}, $b)[-1] } // 9) || $a cmp $b }
  glob('test/pgtap/*.sql');
ok(@files >= 3, 'pgTAP files: ' . join(' ', map { (split m{/})[-1] } @files));

# the first file that fails, or '' when all pass
sub suite_catches
{
	for my $f (@files)
	{
		my ($out, $err) = ('', '');
		my $ok = IPC::Run::run(
			[ 'pg_prove', '-h', $node->host, '-p', $node->port, '-d', 'postgres', $f ],
			'>', \$out, '2>', \$err);
		return (split m{/}, $f)[-1] unless $ok;
	}
	return '';
}

is(suite_catches(), '', 'the unmutated database passes every pgTAP file');

# tables with RLS, and their policies
my @tables = split /\n/, $node->safe_psql('postgres', q{
	SELECT c.oid::regclass FROM pg_class c
	 WHERE c.relnamespace = 'quota_ext'::regnamespace AND c.relkind IN ('r', 'p') AND c.relrowsecurity
	 ORDER BY 1});
# (fields and records separated by control characters: quals span lines)
my @policies = split /\x1e/, $node->safe_psql('postgres', q{
	SELECT string_agg(format(E'%s\x1f%I\x1f%s\x1f%s\x1f%s\x1f%s\x1f%s', p.polrelid::regclass, p.polname,
	              CASE WHEN p.polpermissive THEN 'PERMISSIVE' ELSE 'RESTRICTIVE' END,
	              CASE p.polcmd WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT' WHEN 'w' THEN 'UPDATE'
	                            WHEN 'd' THEN 'DELETE' ELSE 'ALL' END,
	              (SELECT string_agg(CASE WHEN r = 0 THEN 'PUBLIC' ELSE quote_ident(r::regrole::text) END, ', ')
	                 FROM unnest(p.polroles) r),
	              coalesce(pg_get_expr(p.polqual, p.polrelid), ''), coalesce(pg_get_expr(p.polwithcheck, p.polrelid), '')),
	       E'\x1e' ORDER BY p.polrelid::regclass::text, p.polname)
	  FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid
	 WHERE c.relnamespace = 'quota_ext'::regnamespace});
cmp_ok(scalar(@tables), '>=', 15, scalar(@tables) . ' tables with row-level security');
cmp_ok(scalar(@policies), '>=', 2 * 14, scalar(@policies) . ' policies');

my @mutations;
for my $t (@tables)
{
	push @mutations,
	  [ "$t: NO FORCE", "ALTER TABLE $t NO FORCE ROW LEVEL SECURITY", "ALTER TABLE $t FORCE ROW LEVEL SECURITY" ],
	  [ "$t: DISABLE", "ALTER TABLE $t DISABLE ROW LEVEL SECURITY", "ALTER TABLE $t ENABLE ROW LEVEL SECURITY" ];
}
for my $p (@policies)
{
	my ($t, $name, $perm, $cmd, $roles, $qual, $check) = split /\x1f/, $p, 7;
	my $using = $qual ne '' ? " USING ($qual)" : '';
	my $with = $check ne '' ? " WITH CHECK ($check)" : '';
	push @mutations,
	  [ "$t: DROP POLICY $name", "DROP POLICY $name ON $t",
		"CREATE POLICY $name ON $t AS $perm FOR $cmd TO $roles$using$with" ],
	  [ "$t: $name USING (true)",
		"ALTER POLICY $name ON $t USING (true)" . ($cmd =~ /^(ALL|UPDATE)$/ ? ' WITH CHECK (true)' : ''),
		# (recreated: ALTER POLICY cannot take a WITH CHECK away again)
		"DROP POLICY $name ON $t; CREATE POLICY $name ON $t AS $perm FOR $cmd TO $roles$using$with" ]
	  # a policy that already allows everything cannot fail open further
	  unless $qual eq 'true' && ($check eq '' || $check eq 'true');
}
note(scalar(@mutations) . ' mutations');

my (%caught_by, @survivors);
for my $m (@mutations)
{
	my ($what, $break, $repair) = @$m;
	$node->safe_psql('postgres', $break);
	my $by = suite_catches();
	$node->safe_psql('postgres', $repair);
	if ($by eq '') { push @survivors, $what; }
	else           { $caught_by{$by}++; note("$what: caught by $by"); }
}
is(join("\n", @survivors), '', 'every mutation of RLS makes the suite fail (survivors listed)');
note(join(', ', map { "$_: $caught_by{$_}" } sort keys %caught_by));
is(suite_catches(), '', 'after the mutations were reverted, every pgTAP file passes again');

$node->stop;
done_testing();
