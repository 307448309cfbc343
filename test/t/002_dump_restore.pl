# pg_dump and restore of a database using quota_ext.
#
# Issue 2: "Every object is dumped by pg_dump (pg_extension_config_dump)".
# Checklist F9: config and tenant data survive, sequences continue (new ids
# do not collide), policies and FORCE flags are restored; custom tiers
# survive and the built-in tiers are not duplicated; keys still
# authenticate.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $tempdir = PostgreSQL::Test::Utils::tempdir;

my $old = PostgreSQL::Test::Cluster->new('dump_source');
$old->init;
$old->append_conf('postgresql.conf', "shared_preload_libraries = 'quota_ext'");
$old->start;
$old->safe_psql('postgres', 'CREATE DATABASE app');
$old->safe_psql('app', 'CREATE EXTENSION quota_ext');

# a custom tier (data), tenants in several states, users, keys in several
# states, global and owned models, and the audit rows all of that writes
my $keys = $old->safe_psql(
	'app', q{
	INSERT INTO quota_ext.tiers (tier, description, monthly_calls, rate_limit_per_minute,
	                             rate_limit_burst, audit_retention)
	VALUES ('gold', 'Custom gold tier', 25000, 1200, 200, '60 days');
	SELECT quota_ext.tenant_create('acme', 'gold', 'Europe/Berlin', '{"plan": "annual"}') AS acme \gset
	SELECT quota_ext.tenant_create('globex', 'pro', 'America/New_York') AS globex \gset
	SELECT quota_ext.tenant_create('initech') AS initech \gset
	SELECT quota_ext.tenant_update(:acme, features => '{"beta": true}');
	SELECT user_id AS alice, api_key AS k_alice FROM quota_ext.user_create(:acme, 'alice@acme.example', 'admin') \gset
	SELECT user_id AS bob, api_key AS k_bob FROM quota_ext.user_create(:acme, 'bob@acme.example', 'member') \gset
	SELECT api_key AS k_gina FROM quota_ext.user_create(:globex, 'gina@globex.example', 'billing-ops') \gset
	SELECT api_key AS k_ian FROM quota_ext.user_create(:initech, 'ian@initech.example', 'viewer') \gset
	SELECT key_id AS k2, api_key AS k_ci FROM quota_ext.api_key_create(:acme, :alice, 'ci', now() + interval '30 days') \gset
	SELECT api_key AS k_rotated FROM quota_ext.api_key_rotate(:acme, :k2, interval '2 days') \gset
	SELECT key_id AS k3, api_key AS k_revoked FROM quota_ext.api_key_create(:acme, :bob, 'old') \gset
	SELECT quota_ext.api_key_revoke(:acme, :k3);
	SELECT quota_ext.tenant_suspend(:initech);
	SELECT quota_ext.model_register('gpt-4o', 'openai');
	SELECT quota_ext.model_register('embedding-1', 'openai', metadata => '{"dims": 1536}');
	SELECT quota_ext.model_register('acme-private', owner_tenant_id => :acme);
	SELECT quota_ext.authenticate(:'k_alice') IS NOT NULL;
	SELECT :'k_alice', :'k_ci', :'k_rotated', :'k_gina', :'k_revoked', :'k_ian';
});
my @k = split /\|/, (split /\n/, $keys)[-1];
my %key;
@key{qw(alice ci rotated gina revoked ian)} = @k;
is(scalar(@k), 6, 'fixtures made six keys');

# everything, as rows, for comparison before and after (superuser: no RLS)
my $snapshot_sql = q{
	SELECT 'tier', tier, description, monthly_calls, audit_retention, builtin FROM quota_ext.tiers ORDER BY tier;
	SELECT 'tenant', tenant_id, name, tier, status, timezone, settings, features, created_at, updated_at FROM quota_ext.tenants ORDER BY tenant_id;
	SELECT 'user', tenant_id, user_id, email, role, status, created_at FROM quota_ext.users ORDER BY tenant_id, user_id;
	SELECT 'key', tenant_id, key_id, user_id, name, key_prefix, key_hash, created_at, expires_at, revoked_at, last_used_at, rotated_to FROM quota_ext.api_keys ORDER BY tenant_id, key_id;
	SELECT 'model', model_id, name, owner_tenant_id, provider, metadata, status, created_at FROM quota_ext.models ORDER BY model_id;
	SELECT 'audit', tenant_id, audit_id, at, actor, actor_tenant_id, action, object_type, object_id, before, after FROM quota_ext.audit_log ORDER BY tenant_id, audit_id;
};
my $catalog_sql = q{
	SELECT relname, relrowsecurity, relforcerowsecurity FROM pg_class
	 WHERE relnamespace = 'quota_ext'::regnamespace AND relkind = 'r' ORDER BY 1;
	SELECT tablename, policyname, roles, cmd, qual, with_check FROM pg_policies WHERE schemaname = 'quota_ext' ORDER BY 1, 2;
	SELECT p.oid::regprocedure, r.rolname FROM pg_proc p, pg_roles r
	 WHERE p.pronamespace = 'quota_ext'::regnamespace AND r.rolname IN ('quota_ext_app', 'quota_ext_admin', 'public')
	   AND has_function_privilege(r.oid, p.oid, 'EXECUTE') ORDER BY 1, 2;
	SELECT c.relname, a.attname, r.rolname FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid, pg_roles r
	 WHERE c.relnamespace = 'quota_ext'::regnamespace AND c.relkind = 'r' AND a.attnum > 0
	   AND r.rolname IN ('quota_ext_app', 'quota_ext_admin')
	   AND has_column_privilege(r.oid, c.oid, a.attnum, 'SELECT') ORDER BY 1, 2, 3;
};
my $before = $old->safe_psql('app', $snapshot_sql);
my $catalog_before = $old->safe_psql('app', $catalog_sql);
my $max_before = $old->safe_psql(
	'app', q{
	SELECT (SELECT max(tenant_id) FROM quota_ext.tenants), (SELECT max(user_id) FROM quota_ext.users),
	       (SELECT max(key_id) FROM quota_ext.api_keys), (SELECT max(model_id) FROM quota_ext.models),
	       (SELECT max(audit_id) FROM quota_ext.audit_log)});
my ($max_tenant, $max_user, $max_key, $max_model, $max_audit) = split /\|/, $max_before;

# dump in both formats
$old->command_ok([ 'pg_dump', '--no-password', '-Fc', '-f', "$tempdir/app.dump", '-d', $old->connstr('app') ],
	'pg_dump -Fc');
$old->command_ok([ 'pg_dump', '--no-password', '-f', "$tempdir/app.sql", '-d', $old->connstr('app') ],
	'pg_dump (plain)');
my $plain = slurp_file("$tempdir/app.sql");
unlike($plain, qr/\Q$key{alice}\E/, 'the dump holds no key in plaintext');
like($plain, qr/COPY quota_ext\.tiers .*\ngold\t/s, 'the custom tier is in the dump');
unlike($plain, qr/^free\t/m, 'the built-in tiers are not in the dump');

# restore into a fresh cluster, where the roles do not exist yet
my $new = PostgreSQL::Test::Cluster->new('dump_target');
$new->init;
$new->append_conf('postgresql.conf', "shared_preload_libraries = 'quota_ext'");
$new->start;
is($new->safe_psql('postgres', q{SELECT count(*) FROM pg_roles WHERE rolname LIKE 'quota_ext_%'}),
	'0', 'the new cluster has no quota_ext roles before the restore');
$new->safe_psql('postgres', 'CREATE DATABASE app');
$new->command_ok(
	[ 'pg_restore', '--no-password', '--exit-on-error', '-d', $new->connstr('app'), "$tempdir/app.dump" ],
	'pg_restore --exit-on-error');
# and the plain format into a second database
$new->safe_psql('postgres', 'CREATE DATABASE app_plain');
$new->command_ok(
	[ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $new->connstr('app_plain'), '-f', "$tempdir/app.sql" ],
	'plain dump restores with ON_ERROR_STOP');

for my $db ('app', 'app_plain')
{
	is($new->safe_psql($db, $snapshot_sql), $before, "$db: every row of every table is back, unchanged");
	is($new->safe_psql($db, $catalog_sql), $catalog_before, "$db: RLS, FORCE, policies and grants are as before");
}
is($new->safe_psql('app', q{SELECT tier, builtin FROM quota_ext.tiers ORDER BY tier}),
	"enterprise|t\nfree|t\ngold|f\npremium|t\npro|t\nstarter|t",
	'built-in tiers once each, the custom tier once');

# keys authenticate exactly as before
my $auth = sub {
	my ($node, $k) = @_;
	my ($ret, $out, $err) = $node->psql('app',
		qq{SELECT t.name || ',' || a.role FROM quota_ext.authenticate('$k') a JOIN quota_ext.tenants t USING (tenant_id)});
	return $ret == 0 ? $out : ($err =~ /invalid API key/ ? 'refused' : $err);
};
my %expect = (
	alice   => 'acme,admin',
	ci      => 'acme,admin',
	rotated => 'acme,admin',
	gina    => 'globex,billing-ops',
	revoked => 'refused',
	ian     => 'refused');
for my $who (sort keys %expect)
{
	is($auth->($new, $key{$who}), $expect{$who}, "restored: key $who -> $expect{$who}");
}

# sequences continue: new rows get ids above every restored one
my $next = $new->safe_psql(
	'app', q{
	SELECT quota_ext.tenant_create('hooli') AS t \gset
	SELECT user_id AS u FROM quota_ext.user_create(:t, 'hank@hooli.example') \gset
	SELECT :t, :u, (SELECT max(key_id) FROM quota_ext.api_keys WHERE tenant_id = :t),
	       quota_ext.model_register('hooli-model'), (SELECT max(audit_id) FROM quota_ext.audit_log);
});
my ($t, $u, $kk, $m, $a) = split /\|/, $next;
cmp_ok($t, '>', $max_tenant, 'new tenant id continues the sequence');
cmp_ok($u, '>', $max_user,   'new user id continues the sequence');
cmp_ok($kk, '>', $max_key,   'new key id continues the sequence');
cmp_ok($m, '>', $max_model,  'new model id continues the sequence');
cmp_ok($a, '>', $max_audit,  'new audit id continues the sequence');

# isolation still holds for the application role on the restored database
$new->safe_psql('postgres', 'CREATE ROLE app_user LOGIN IN ROLE quota_ext_app');
is( $new->safe_psql(
		'app', qq{
	BEGIN;
	SELECT 1 FROM quota_ext.authenticate('$key{gina}');
	SELECT string_agg(name, ',') FROM quota_ext.tenants;
	SELECT count(*) FROM quota_ext.users;
	COMMIT;
	SELECT count(*) FROM quota_ext.api_keys;
},
		extra_params => [ '-U', 'app_user' ]),
	"1\nglobex\n1\n0",
	'restored: quota_ext_app sees only its tenant, and nothing without a context');

# a second dump of the restored database equals the first (round trip)
$new->command_ok([ 'pg_dump', '--no-password', '-f', "$tempdir/app2.sql", '-d', $new->connstr('app_plain') ],
	'pg_dump of the restored database');
my $plain2 = slurp_file("$tempdir/app2.sql");
# (\restrict lines carry a random key per dump, since 15.14)
s/^\\(un)?restrict .*$//mg for ($plain, $plain2);
is($plain2, $plain, 'dump -> restore -> dump gives the same dump');

$old->stop;
$new->stop;
done_testing();
