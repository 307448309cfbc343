# quota_ext without shared_preload_libraries: CREATE EXTENSION works, and
# tenants, keys and authenticate() work, the library loading on first use.
#
# Issue 2: "CREATE EXTENSION must still work without it".  Checklist I4:
# a quota_ext.* placeholder set before the library loads does not become a
# context, and the transaction callbacks registered on first use (even in
# the middle of a transaction or subtransaction) still clear the context.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('not_preloaded');
$node->init;
$node->start;

is($node->safe_psql('postgres', 'SHOW shared_preload_libraries'), '',
	'the library is not preloaded');
$node->safe_psql('postgres', 'CREATE EXTENSION quota_ext');
is( $node->safe_psql(
		'postgres',
		q{SELECT count(*) FROM pg_extension WHERE extname = 'quota_ext'}),
	'1',
	'CREATE EXTENSION quota_ext works without preloading');

# admin work in a fresh session (the library loads on the first call)
my $ids = $node->safe_psql(
	'postgres', q{
	SELECT quota_ext.tenant_create('np-a') AS a \gset
	SELECT quota_ext.tenant_create('np-b') AS b \gset
	SELECT :a || ' ' || :b || ' ' || u.user_id || ' ' || u.api_key || ' ' || w.api_key
	  FROM quota_ext.user_create(:a, 'alice@a.example', 'admin') u,
	       quota_ext.user_create(:b, 'bob@b.example', 'member') w;
});
my ($ta, $tb, $ua, $ka, $kb) = split / /, $ids;
like($ka, qr/^qxk_${ta}_\d+_[0-9A-Za-z]{38}$/, 'user_create makes a key');

# authenticate() in a fresh session: loads the library, sets the context
is( $node->safe_psql(
		'postgres', qq{
	BEGIN;
	SELECT tenant_id || ',' || user_id || ',' || role FROM quota_ext.authenticate('$ka');
	SELECT quota_ext.current_tenant_id();
	COMMIT;
	SELECT coalesce(quota_ext.current_tenant_id()::text, 'none');
}),
	"$ta,$ua,admin\n$ta\nnone",
	'authenticate works when the library loads on first use, and the context ends with the transaction');

# loaded in the middle of a transaction: the callbacks still fire at ROLLBACK
is( $node->safe_psql(
		'postgres', qq{
	BEGIN;
	SELECT 1;
	SELECT tenant_id FROM quota_ext.authenticate('$ka');
	ROLLBACK;
	SELECT coalesce(quota_ext.current_tenant_id()::text, 'none');
}),
	"1\n$ta\nnone",
	'library loaded inside a transaction: context cleared at its ROLLBACK');

# loaded inside a subtransaction: ROLLBACK TO clears the context
is( $node->safe_psql(
		'postgres', qq{
	BEGIN;
	SAVEPOINT s;
	SELECT tenant_id FROM quota_ext.authenticate('$ka');
	ROLLBACK TO SAVEPOINT s;
	SELECT coalesce(quota_ext.current_tenant_id()::text, 'none');
	COMMIT;
}),
	"$ta\nnone",
	'library loaded inside a savepoint: context cleared by ROLLBACK TO');

# a placeholder set before the library loads is dropped, not adopted
my ($ret, $out, $err) = $node->psql(
	'postgres', qq{
	SET quota_ext.tenant_id = '$tb';
	SET quota_ext.current_tenant = '$tb';
	SHOW quota_ext.tenant_id;
	SELECT 'context: ' || coalesce(quota_ext.current_tenant_id()::text, 'none');
	SHOW quota_ext.tenant_id;
	SELECT 'touch interval: ' || current_setting('quota_ext.key_touch_interval');
},
	on_error_stop => 0);
like($out, qr/^$tb$/m, 'before the library loads, quota_ext.tenant_id is just a placeholder');
like($out, qr/^context: none$/m, 'loading the library does not turn the placeholder into a context');
like($err, qr/invalid configuration parameter name "quota_ext.tenant_id", removing it/,
	'loading the library removes quota_ext.* placeholders');
like($err, qr/unrecognized configuration parameter "quota_ext.tenant_id"/,
	'... so it is gone afterwards');
like($out, qr/^touch interval: 1min$/m, 'the library defines quota_ext.key_touch_interval when it loads');

# the application role, in its own login session
$node->safe_psql('postgres', 'CREATE ROLE np_app LOGIN IN ROLE quota_ext_app');
is( $node->safe_psql(
		'postgres', qq{
	BEGIN;
	SELECT tenant_id FROM quota_ext.authenticate('$kb');
	SELECT string_agg(name, ',') FROM quota_ext.tenants;
	COMMIT;
	SELECT count(*) FROM quota_ext.tenants;
},
		extra_params => [ '-U', 'np_app' ]),
	"$tb\nnp-b\n0",
	'quota_ext_app: authenticate, RLS shows only its tenant, nothing without a context');
($ret, $out, $err) = $node->psql('postgres', qq{SELECT quota_ext.authenticate('${ka}x')},
	extra_params => [ '-U', 'np_app' ]);
like($err, qr/invalid API key/, 'a bad key is refused without preloading too');

# revocation and suspension work the same way
$node->safe_psql('postgres', "SELECT quota_ext.tenant_suspend($tb)");
($ret, $out, $err) = $node->psql('postgres', qq{SELECT quota_ext.authenticate('$kb')});
like($err, qr/invalid API key/, 'a suspended tenant is refused');

$node->stop;
done_testing();
