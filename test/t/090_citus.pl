# quota_ext on Citus (issue 16): a coordinator and two workers on loopback.
#
# Skips unless Citus is installed (citus.so in pg_config --pkglibdir): CI
# machines have none, and the repository builds none.  What this checks is
# what works on Citus today; what does not yet is listed in doc/scaling.md
# and noted (not counted) below with the error it raises.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $pkglibdir = `pg_config --pkglibdir`;
chomp $pkglibdir;
plan skip_all => "Citus is not installed (no citus.so in $pkglibdir): the Citus tests need it"
	unless -e "$pkglibdir/citus.so";

my @nodes;
for my $name (qw(coord worker1 worker2))
{
	my $n = PostgreSQL::Test::Cluster->new($name);
	$n->init(allows_streaming => 0);
	$n->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'citus,quota_ext'
max_connections = 60
listen_addresses = '127.0.0.1'
max_worker_processes = 20
citus.log_remote_commands = off
});
	$n->start;
	$n->safe_psql('postgres', 'CREATE EXTENSION citus');
	push @nodes, $n;
}
my ($coord, $w1, $w2) = @nodes;
$coord->safe_psql('postgres', q{SELECT citus_set_coordinator_host('127.0.0.1', } . $coord->port . ')');
for my $w ($w1, $w2)
{
	$coord->safe_psql('postgres', q{SELECT citus_add_node('127.0.0.1', } . $w->port . ')');
}
is($coord->safe_psql('postgres', 'SELECT count(*) FROM citus_get_active_worker_nodes()'), '2', 'two active workers');

# quota_ext: created on the coordinator, Citus propagates it to the workers
$coord->safe_psql('postgres', 'CREATE EXTENSION quota_ext');
for my $w ($w1, $w2)
{
	is($w->safe_psql('postgres', q{SELECT count(*) FROM pg_extension WHERE extname = 'quota_ext'}), '1',
		'CREATE EXTENSION quota_ext reached ' . $w->name);
}

# a superuser-less admin cannot, a server without Citus refuses (55000)
my ($rc, $out, $err) = $coord->psql('postgres', 'SET ROLE quota_ext_app; CALL quota_ext.distribute()');
like($err, qr/permission denied/, 'the app role cannot call distribute()');
{
	# a database without Citus
	$coord->safe_psql('postgres', 'CREATE DATABASE plain');
	$coord->safe_psql('plain', 'CREATE EXTENSION quota_ext');
	($rc, $out, $err) = $coord->psql('plain', "\\set VERBOSITY verbose\nCALL quota_ext.distribute()");
	like($err, qr/55000: distribute: Citus is not installed in this database/, 'without Citus distribute() refuses with 55000');
}

# distribute(), twice
($rc, $out, $err) = $coord->psql('postgres', 'CALL quota_ext.distribute()');
is($rc, 0, 'distribute() succeeds') or diag($err);
note($err);
($rc, $out, $err) = $coord->psql('postgres', 'CALL quota_ext.distribute()');
is($rc, 0, 'distribute() again succeeds') or diag($err);
like($err, qr/distribute: 0 change\(s\)/, 'the second run changes nothing');

my $status = $coord->safe_psql('postgres', 'SELECT kind, object, detail FROM quota_ext.distribution_status()');
note($status);
like($status, qr/^reference\|quota_ext\.tenants\|$/m, 'tenants is a reference table');
like($status, qr/^reference\|quota_ext\.models\|$/m, 'models is a reference table');
like($status, qr/^distributed\|quota_ext\.usage\|by tenant_id/m, 'usage is distributed by tenant_id');
is($coord->safe_psql('postgres', q{
	SELECT count(DISTINCT colocationid) FROM pg_dist_partition d JOIN pg_class c ON c.oid = d.logicalrelid
	 WHERE c.relnamespace = 'quota_ext'::regnamespace AND d.partmethod = 'h'}), '1',
	'every per-tenant table is in one co-location group');
is($coord->safe_psql('postgres', q{
	SELECT count(*) FROM pg_class c
	 WHERE c.relnamespace = 'quota_ext'::regnamespace AND c.relkind IN ('r', 'p') AND NOT c.relispartition
	   AND NOT EXISTS (SELECT 1 FROM pg_dist_partition d WHERE d.logicalrelid = c.oid)}), '0',
	'no table of the extension is left local to the coordinator');
like($status, qr/^delegated function\|quota_ext\.quota_consume\(/m, 'quota_consume is delegated');

# the demo flow through the coordinator: what works today
my @works = (
	[ 'tenant_create', q{SELECT quota_ext.tenant_create('acme') > 0} ],
	[ 'tenant_create (second)', q{SELECT quota_ext.tenant_create('globex') > 0} ],
	[ 'user_create', q{SELECT user_id > 0 FROM quota_ext.user_create(1, 'alice@acme.test')} ],
	[ 'model_register', q{SELECT quota_ext.model_register('gpt-x') > 0} ],
	[ 'policy_set', q{SELECT quota_ext.policy_set(1, 'gpt-x', true) > 0} ],
	[ 'policy_check (delegated to the worker holding tenant 1)', q{SELECT quota_ext.policy_check(1, 'gpt-x')} ],
	[ 'quota_set', q{SELECT quota_ext.quota_set(1, 'month', 1000, model => 'gpt-x') > 0} ],
);
for my $step (@works)
{
	($rc, $out, $err) = $coord->psql('postgres', $step->[1]);
	is($rc, 0, "through the coordinator: $step->[0]") or diag($err);
}

# charges are refused, not written to a shell table (direct.c, 0A000)
($rc, $out, $err) = $coord->psql('postgres', "\\set VERBOSITY verbose\nSELECT quota_ext.quota_consume(1, 'gpt-x', 1)");
like($err, qr/0A000: quota_ext cannot charge quotas on Citus-distributed tables yet/,
	'quota_consume refuses on Citus (0A000) instead of writing a shell table');
is($coord->safe_psql('postgres', 'SELECT count(*) FROM quota_ext.usage'), '0', 'no usage row was written');
for my $n (@nodes)
{
	is($n->safe_psql('postgres', 'SELECT count(*) FROM ONLY quota_ext.usage_default'), '0',
		'no usage row in the shell table on ' . $n->name);
}

# known not to work yet (doc/scaling.md): noted with their error, not counted
for my $step (
	[ 'quota_status', q{SELECT * FROM quota_ext.quota_status(1)} ])
{
	($rc, $out, $err) = $coord->psql('postgres', $step->[1]);
	note("not yet on Citus: $step->[0]: " . ($rc == 0 ? "now succeeds: $out" : $err));
}

$_->stop for @nodes;
done_testing();
