# Issue 17: tiers edited by quota_ext_admin survive pg_dump and restore.
#
# On main an edit of a built-in tier vanished in pg_dump (the tiers table
# was dumped 'WHERE NOT builtin').  Now the built-in tiers an admin changed
# are dumped too (modified = true), and on restore the dumped row updates
# the one CREATE EXTENSION made (trigger tier_restore) instead of failing
# on the primary key.  A real round trip: pg_dump | psql, and pg_dump -Fc |
# pg_restore, into a fresh cluster.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $tempdir = PostgreSQL::Test::Utils::tempdir;

my $old = PostgreSQL::Test::Cluster->new('tier_source');
$old->init;
$old->append_conf('postgresql.conf', "shared_preload_libraries = 'quota_ext'");
$old->start;
$old->safe_psql('postgres', 'CREATE DATABASE app');
$old->safe_psql('app', 'CREATE EXTENSION quota_ext');
$old->safe_psql('app', 'CREATE ROLE tier_admin LOGIN IN ROLE quota_ext_admin');

# edits by quota_ext_admin (not a superuser): a built-in tier changed, one
# left alone, a custom tier, and a tenant on the changed tier
$old->safe_psql(
	'app', q{
	SELECT quota_ext.tier_set('free', monthly_calls => 2500, rate_limit_per_minute => 120,
	                          rate_limit_burst => 30, features => '{"export": true}', max_users => 3,
	                          monthly_budget => 5, budget_currency => 'USD');
	SELECT quota_ext.tier_set('enterprise', description => 'Enterprise (contract)');
	SELECT quota_ext.tier_set('gold', description => 'Gold', monthly_calls => 20000,
	                          rate_limit_per_minute => 600, rate_limit_burst => 60,
	                          audit_retention => '60 days', features => '{"sso": true}');
	SELECT quota_ext.tenant_create('acme', 'free');
	SELECT quota_ext.tenant_create('globex', 'gold');
},
	extra_params => [ '-U', 'tier_admin' ]);

my $tiers_sql = q{
	SELECT tier, description, monthly_calls, rate_limit_per_minute, rate_limit_burst,
	       audit_retention, features, max_users, monthly_budget, budget_currency, builtin, modified,
	       -- an unchanged built-in row is made anew by CREATE EXTENSION
	       CASE WHEN modified OR NOT builtin THEN updated_at END
	  FROM quota_ext.tiers ORDER BY tier};
my $state_sql = q{
	SELECT t.name, t.tier, q.max_units, q.origin FROM quota_ext.tenants t
	  JOIN quota_ext.quotas q USING (tenant_id) ORDER BY t.name, q.max_units};
my $tiers_before = $old->safe_psql('app', $tiers_sql);
my $state_before = $old->safe_psql('app', $state_sql);
like($tiers_before, qr/^free\|Free tier\|2500\|120\|30\|7 days\|\{"export": true\}\|3\|5\|USD\|t\|t\|\d/m,
	'the edit of the built-in free tier is stored, marked modified');
is($state_before, "acme|free|2500|tier\nacme|free|5000000|tier\nglobex|gold|20000|tier", 'tenants follow their tiers (calls and budget)');

$old->command_ok([ 'pg_dump', '--no-password', '-f', "$tempdir/app.sql", '-d', $old->connstr('app') ],
	'pg_dump (plain)');
$old->command_ok([ 'pg_dump', '--no-password', '-Fc', '-f', "$tempdir/app.dump", '-d', $old->connstr('app') ],
	'pg_dump -Fc');
my $plain = slurp_file("$tempdir/app.sql");
like($plain, qr/^free\t/m, 'the changed built-in tier is in the dump');
like($plain, qr/^enterprise\t/m, '... each of them');
unlike($plain, qr/^(starter|pro|premium)\t/m, 'the unchanged built-in tiers are not');

my $new = PostgreSQL::Test::Cluster->new('tier_target');
$new->init;
$new->append_conf('postgresql.conf', "shared_preload_libraries = 'quota_ext'");
$new->start;
$new->safe_psql('postgres', 'CREATE DATABASE app_plain');
$new->command_ok(
	[ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $new->connstr('app_plain'), '-f', "$tempdir/app.sql" ],
	'pg_dump | psql restores with ON_ERROR_STOP (no duplicate built-in tier)');
$new->safe_psql('postgres', 'CREATE DATABASE app_fc');
$new->command_ok(
	[ 'pg_restore', '--no-password', '--exit-on-error', '-d', $new->connstr('app_fc'), "$tempdir/app.dump" ],
	'pg_restore --exit-on-error');

for my $db ('app_plain', 'app_fc')
{
	is($new->safe_psql($db, $tiers_sql), $tiers_before, "$db: every tier as before, the edits included");
	is($new->safe_psql($db, $state_sql), $state_before, "$db: the tenants' tier quotas as before");
	is($new->safe_psql($db, q{SELECT quota_ext.feature_enabled(tenant_id, 'export') FROM quota_ext.tenants WHERE name = 'acme'}),
		't', "$db: the restored tier's features are evaluated");
	# a second dump of the restored database carries the edits again
	$new->command_ok([ 'pg_dump', '--no-password', '-f', "$tempdir/$db.again.sql", '-d', $new->connstr($db) ],
		"$db: dumps again");
	like(slurp_file("$tempdir/$db.again.sql"), qr/^free\t/m, "$db: ... with the changed built-in tier");
}

$old->stop;
$new->stop;
done_testing();
