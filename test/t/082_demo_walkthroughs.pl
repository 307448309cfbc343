# The walkthroughs of the README run in `make test` too, so that they cannot
# drift from the code: doc/demo.sql (`make demo`, the Flask seed) and
# doc/demo-seeds.sql (`make demo-seeds`, one migration walkthrough per other
# seed), each with psql -v ON_ERROR_STOP=1 in a database of its own on a
# preloaded server, as `make demo` runs them.  The seed walkthrough checks
# what it shows (\if on booleans it computes) and stops with a nonzero status
# ("FAILED: ...") when a check does not hold; expected errors are run with
# ON_ERROR_STOP off and show their message.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('walk');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'quota_ext'\n");
$node->start;

for my $file ('doc/demo.sql', 'doc/demo-seeds.sql')
{
	(my $db = $file) =~ s{^doc/|\.sql$}{}g;
	$db =~ tr/-/_/;
	$node->safe_psql('postgres', qq{CREATE DATABASE "$db"});
	# the walkthroughs create their roles: give each run its own names
	my $sql = slurp_file($file);
	my ($stdout, $stderr) = ('', '');
	my $rc = $node->psql($db, $sql,
		stdout => \$stdout, stderr => \$stderr,
		extra_params => [ '-v', 'ON_ERROR_STOP=1' ]);
	is($rc, 0, "$file runs to its end") or diag("stderr:\n$stderr\nstdout (tail):\n" . substr($stdout, -3000));
	like($stdout, qr/=== done =+\s*$/, "$file reaches '=== done'");
	unlike($stdout, qr/^FAILED:/m, "$file: none of its checks failed");
	my @ok = $stdout =~ /^ok: /mg;
	note(scalar(@ok) . " checks of $file held");
	# roles are cluster-wide: drop the walkthrough's before the next one
	$node->safe_psql($db, q{
		DO $$ DECLARE r text; BEGIN
		  FOR r IN SELECT rolname FROM pg_roles WHERE rolname ~ '^(demo|seeds)_(admin|app)$' LOOP
		    EXECUTE format('DROP OWNED BY %I', r);
		    EXECUTE format('DROP ROLE %I', r);
		  END LOOP; END $$});
}

$node->stop;
done_testing();
