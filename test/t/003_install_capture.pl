# Install-time capture (CVE-2020-14350, CVE-2022-2625 class): objects
# prepared by someone else before CREATE EXTENSION cannot be adopted.
#
# Issue 2 (build and install, roles created by the script); checklist B7
# (the postgrespro/rum "security" pattern: pre-create same-named objects,
# then CREATE EXTENSION must fail or leave them unused) and A1 (the script
# does not trust the installer's search_path).
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('install_capture');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'quota_ext'");
$node->start;

$node->safe_psql('postgres', q{
	CREATE ROLE mallory LOGIN;
	CREATE DATABASE app;
	GRANT CREATE ON DATABASE app TO mallory;
});
# as a careless DBA might: the attacker may create objects in public
$node->safe_psql('app', 'GRANT CREATE ON SCHEMA public TO mallory');
my $installed = sub {
	return $node->safe_psql('app', q{SELECT count(*) FROM pg_extension WHERE extname = 'quota_ext'});
};

# 1. a schema quota_ext owned by someone else, with a trojan in it
$node->safe_psql(
	'app', q{
	CREATE SCHEMA quota_ext;
	CREATE FUNCTION quota_ext.current_tenant_id() RETURNS bigint LANGUAGE sql AS 'SELECT 1::bigint';
}, extra_params => [ '-U', 'mallory' ]);
my ($ret, $out, $err) = $node->psql('app', 'CREATE EXTENSION quota_ext');
isnt($ret, 0, 'CREATE EXTENSION fails on a schema quota_ext owned by another role');
like($err, qr/schema "quota_ext" exists and is not owned by the installing role/, '... saying why');
is($installed->(), '0', '... and nothing is installed');
is( $node->safe_psql('app', q{SELECT pg_get_functiondef('quota_ext.current_tenant_id()'::regprocedure) ~ 'SELECT 1'}),
	't', '... the trojan is left as it was, not adopted');
$node->safe_psql('app', 'DROP SCHEMA quota_ext CASCADE');

# 2. a schema owned by the superuser but not empty
$node->safe_psql('app', q{CREATE SCHEMA quota_ext; CREATE TABLE quota_ext.tenants (tenant_id bigint)});
($ret, $out, $err) = $node->psql('app', 'CREATE EXTENSION quota_ext');
isnt($ret, 0, 'CREATE EXTENSION fails on a schema that already holds objects');
like($err, qr/schema "quota_ext" already contains objects/, '... saying why');
$node->safe_psql('app', 'DROP SCHEMA quota_ext CASCADE');

# 3. a pre-existing role with an attribute that bypasses RLS
$node->safe_psql('postgres', 'CREATE ROLE quota_ext_app NOLOGIN BYPASSRLS');
($ret, $out, $err) = $node->psql('app', 'CREATE EXTENSION quota_ext');
isnt($ret, 0, 'CREATE EXTENSION fails when quota_ext_app exists with BYPASSRLS');
like($err, qr/role "quota_ext_app" exists with SUPERUSER or BYPASSRLS/, '... saying why');
is($installed->(), '0', '... and nothing is installed');
$node->safe_psql('postgres', 'ALTER ROLE quota_ext_app NOBYPASSRLS');

# 4. hostile objects ahead of pg_catalog in the installer's search_path
$node->safe_psql(
	'app', q{
	CREATE SEQUENCE public.calls;
	GRANT USAGE, UPDATE ON SEQUENCE public.calls TO PUBLIC;
	CREATE FUNCTION public.evil_eq(bigint, bigint) RETURNS boolean LANGUAGE plpgsql
		AS $$ BEGIN PERFORM pg_catalog.nextval('public.calls'); RETURN true; END $$;
	CREATE OPERATOR public.= (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = public.evil_eq);
	CREATE FUNCTION public.evil_eq(text, text) RETURNS boolean LANGUAGE plpgsql
		AS $$ BEGIN PERFORM pg_catalog.nextval('public.calls'); RETURN true; END $$;
	CREATE OPERATOR public.= (LEFTARG = text, RIGHTARG = text, FUNCTION = public.evil_eq);
	CREATE FUNCTION public.now() RETURNS timestamptz LANGUAGE plpgsql
		AS $$ BEGIN PERFORM pg_catalog.nextval('public.calls'); RETURN 'epoch'; END $$;
	CREATE FUNCTION public.format(text, VARIADIC text[]) RETURNS text LANGUAGE plpgsql
		AS $$ BEGIN PERFORM pg_catalog.nextval('public.calls'); RETURN 'SELECT 1'; END $$;
	CREATE TABLE public.tiers (tier text);
}, extra_params => [ '-U', 'mallory' ]);
$node->safe_psql('app', q{SET search_path = public, pg_catalog; CREATE EXTENSION quota_ext});
is($installed->(), '1', 'CREATE EXTENSION works under a hostile search_path');
is( $node->safe_psql('app', q{SELECT last_value, is_called FROM public.calls}),
	'1|f', '... and calls none of the hostile objects');
is( $node->safe_psql('app', q{SELECT count(*) FROM quota_ext.tiers WHERE builtin}),
	'5', '... the built-in tiers went into quota_ext.tiers');
is( $node->safe_psql('app', q{SELECT count(*) FROM public.tiers}),
	'0', '... not into the look-alike table');
is( $node->safe_psql(
		'app', q{
	SELECT count(*) FROM pg_depend d JOIN pg_operator o ON o.oid = d.refobjid
	 WHERE d.refclassid = 'pg_operator'::regclass AND o.oprnamespace = 'public'::regnamespace}),
	'0',
	'... no installed object depends on a hostile operator');
is( $node->safe_psql(
		'app', q{
	SELECT count(*) FROM pg_depend d JOIN pg_proc p ON p.oid = d.refobjid
	 WHERE d.refclassid = 'pg_proc'::regclass AND p.pronamespace = 'public'::regnamespace
	   AND d.classid <> 'pg_operator'::regclass}),
	'0',
	'... nor on a hostile function (other than the hostile operators)');

# the extension still works for a tenant afterwards
my $key = $node->safe_psql(
	'app', q{
	SELECT quota_ext.tenant_create('cap') AS t \gset
	SELECT api_key FROM quota_ext.user_create(:t, 'a@cap.example');
});
is($node->safe_psql('app', qq{SELECT role FROM quota_ext.authenticate('$key')}),
	'member', 'the installed extension works');

$node->stop;
done_testing();
