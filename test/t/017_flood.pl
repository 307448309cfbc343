# Flood: one tenant fills what it can of every table in shared memory, and
# another tenant is not affected (issue 12, findings 3 and 8; doc/design.md
# §2 and §4a).  The flooder is an app login: with its own key in context
# (tenant_rate_limit_check, policy_check on made-up model names) and without
# one (rate_limit_check, whose keys every caller shares), plus what an API
# server may do on the flooder's behalf (rate_limit_apply for made-up key
# ids, consumes for unknown tenants).  Afterwards the victim's invoke()
# succeeds, its configured rate limits still find slots, its answers are
# filed in the shared configuration cache and a new connection is served
# from there (no miss: shared_cache_status() counts them), and the admin
# reset frees the flooder's buckets.  Deterministic: nothing depends on
# timing (the flood's buckets live an hour).
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use QuotaReliab;
use Test::More;

my $node = quota_node(
	'flood',
	conf => [
		'quota_ext.rate_limit_slots = 4096',
		'quota_ext.shared_cache_entries = 256'
	]);

# the caps default to a quarter of each table
is( $node->safe_psql(
		'postgres',
		q{SELECT slots || ',' || tenant_entries FROM quota_ext.rate_limit_status()}),
	'4096,1024',
	'rate limits: 4096 slots, at most 1024 per namespace');
is( $node->safe_psql(
		'postgres',
		q{SELECT capacity || ',' || tenant_entries FROM quota_ext.shared_cache_status()}),
	'256,64',
	'shared cache: 256 entries, at most 64 per tenant');

# victim: pro tier (a tier default rule) and two configured rules, so its
# invoke applies three rate limits; flooder: enterprise, no rule
$node->safe_psql(
	'postgres', q{
	SELECT quota_ext.model_register('m');
	SELECT quota_ext.tenant_create('victim', 'pro');
	SELECT quota_ext.tenant_create('flooder', 'enterprise');
	SELECT quota_ext.tenant_create('flooder2', 'enterprise');
	SELECT quota_ext.policy_set(tenant_id, 'm', true) FROM quota_ext.tenants;
	SELECT quota_ext.quota_set(tenant_id, 'day', 1000000, 'm') FROM quota_ext.tenants;
	SELECT quota_ext.rate_limit_set(tenant_id, 1000, 60, 100) FROM quota_ext.tenants WHERE name = 'victim';
	SELECT quota_ext.rate_limit_set(tenant_id, 1000, 60, 100, 'm') FROM quota_ext.tenants WHERE name = 'victim';
	CREATE ROLE flood_app LOGIN IN ROLE quota_ext_app;
});
my $victim = $node->safe_psql('postgres', q{SELECT tenant_id FROM quota_ext.tenants WHERE name = 'victim'});
my $flooder = $node->safe_psql('postgres', q{SELECT tenant_id FROM quota_ext.tenants WHERE name = 'flooder'});
my $vkey = $node->safe_psql('postgres', qq{SELECT api_key FROM quota_ext.user_create($victim, 'v\@victim.example')});
my $fkey = $node->safe_psql('postgres', qq{SELECT api_key FROM quota_ext.user_create($flooder, 'f\@flooder.example')});
my $flooder2 = $node->safe_psql('postgres', q{SELECT tenant_id FROM quota_ext.tenants WHERE name = 'flooder2'});
my $f2key = $node->safe_psql('postgres', qq{SELECT api_key FROM quota_ext.user_create($flooder2, 'f\@flooder2.example')});

# run SQL as the app login; returns (exit code, stdout, stderr)
sub as_app
{
	my ($sql) = @_;
	my ($ret, $out, $err) = $node->psql('postgres', $sql,
		extra_params => [ '-U', 'flood_app', '-v', 'VERBOSITY=verbose' ]);
	return ($ret, $out, $err);
}

# ---- the reported attack: buckets that would live 68 years are refused ----
my ($ret, $out, $err) = as_app(
	q{SELECT count(*) FROM generate_series(1, 100000) g,
	         LATERAL quota_ext.rate_limit_check('flood-' || g, 0, 1, 2147483647) r});
like($err, qr/ERROR:\s+22023: period must be at most 86400 seconds/,
	'a period of 2^31 seconds: 22023');
($ret, $out, $err) = as_app(
	q{SELECT quota_ext.rate_limit_check('flood-long', 2000000, 1, 60)});
like($err, qr/ERROR:\s+22023: rate limit takes more than one day to refill/,
	'a burst that takes longer than a day to refill: 22023');
is($node->safe_psql('postgres', 'SELECT in_use FROM quota_ext.rate_limit_status()'),
	'0', 'refused calls hold no bucket');

# ---- rate limits: the keys of rate_limit_check (no tenant context) ----
($ret, $out, $err) = as_app(
	q{SELECT count(*) FROM generate_series(1, 5000) g,
	         LATERAL quota_ext.rate_limit_check('flood-' || g, 0, 1, 3600) r});
like($err,
	qr/ERROR:\s+53200: too many rate-limit buckets for the keys of rate_limit_check\(\)/,
	'rate_limit_check keys stop at their cap: 53200');
like($err, qr/HINT:\s+.*quota_ext.rate_limit_reset\(\).*quota_ext.rate_limit_tenant_entries/,
	'the hint names the reset and the setting');
is($node->safe_psql('postgres',
		q{SELECT buckets FROM quota_ext.rate_limit_namespaces() WHERE tenant_id IS NULL}),
	'1024', 'the keys of rate_limit_check hold exactly their cap');
($ret, $out, $err) = as_app(
	q{SELECT limited FROM quota_ext.rate_limit_check('flood-1', 0, 1, 3600)});
is($out, 't', 'an existing key still answers at the cap');

# ---- rate limits: the flooder's own keys, its key in context ----
($ret, $out, $err) = as_app(qq{
	BEGIN;
	SELECT tenant_id FROM quota_ext.authenticate('$fkey');
	SELECT count(*) FROM generate_series(1, 5000) g,
	       LATERAL quota_ext.tenant_rate_limit_check('flood-' || g, 0, 1, 3600) r;
	COMMIT;});
like($err, qr/ERROR:\s+53200: too many rate-limit buckets for tenant $flooder/,
	"the flooder's keys stop at its cap: 53200");
is( $node->safe_psql(
		'postgres',
		q{SELECT coalesce(tenant_id::text, 'rate_limit_check') || '=' || buckets
		    FROM quota_ext.rate_limit_namespaces() ORDER BY tenant_id NULLS FIRST}),
	"rate_limit_check=1024\n$flooder=1024",
	'two capped namespaces, 1024 buckets each');

# ---- several namespaces: together they stop at half the table ----
# (an attacker with a second tenant's key, or the keys of rate_limit_check
# in a second database, has a third namespace; the other half of the table
# stays for configured rules, so the victim's invoke below still finds room)
($ret, $out, $err) = as_app(qq{
	BEGIN;
	SELECT tenant_id FROM quota_ext.authenticate('$f2key');
	SELECT count(*) FROM generate_series(1, 10) g,
	       LATERAL quota_ext.tenant_rate_limit_check('more-' || g, 0, 1, 3600) r;
	COMMIT;});
like($err, qr/ERROR:\s+53200: the rate-limit keys of callers fill their share of the table/,
	'a third namespace finds the share of capped namespaces (half the table) full: 53200');

# ---- the shared configuration cache ----
my $entries = sub {
	my ($t) = @_;
	return $node->safe_psql('postgres',
		qq{SELECT coalesce((SELECT entries FROM quota_ext.shared_cache_tenants() WHERE tenant_id = $t), 0)});
};
my $before_junk = $entries->($flooder);
($ret, $out, $err) = as_app(qq{
	BEGIN;
	SELECT tenant_id FROM quota_ext.authenticate('$fkey');
	SELECT count(*) FILTER (WHERE quota_ext.policy_check($flooder, 'junk-' || g))
	  FROM generate_series(1, 9000) g;
	COMMIT;});
is($out, "$flooder\n0", '9000 made-up model names checked: none allowed');
is($entries->($flooder), $before_junk, 'made-up model names file nothing in the shared cache');

# what the API server may do on the flooder's behalf: rate rules for made-up
# key ids (one shared entry each) and consumes for unknown tenants
my $refused0 = $node->safe_psql('postgres', 'SELECT refused FROM quota_ext.shared_cache_status()');
$node->safe_psql('postgres', qq{
	SELECT count(*) FROM generate_series(1, 1000) g,
	       LATERAL quota_ext.rate_limit_apply($flooder, 'm', 0, key_id => g) r;
	DO \$\$
	BEGIN
		FOR g IN 1 .. 500 LOOP
			BEGIN
				PERFORM quota_ext.quota_consume(1000000 + g, 'm', 1);
			EXCEPTION WHEN undefined_object THEN NULL;
			END;
		END LOOP;
	END
	\$\$;});
is($entries->($flooder), '64', 'the flooder holds exactly its share of the shared cache');
cmp_ok($node->safe_psql('postgres', 'SELECT refused FROM quota_ext.shared_cache_status()'),
	'>', $refused0, 'its answers beyond the share were refused');
cmp_ok($node->safe_psql('postgres', 'SELECT entries FROM quota_ext.shared_cache_status()'),
	'<', 256, 'the shared cache still has room');
is($node->safe_psql('postgres', 'SELECT count(*) FROM quota_ext.request_stats()'),
	'0', 'unknown tenants get no decision counters (stats.c)');

# ---- the victim: invoke works, and is then served from the shared cache ----
# first request after the flood: configuration queries, answers filed
($ret, $out, $err) = as_app(
	qq{SELECT allowed || ',' || coalesce(denied_by, '') FROM quota_ext.invoke('$vkey', 'm')});
is($out, 'true,', "the victim's invoke is allowed after the flood");
is($err, '', 'without an error');
is($entries->($victim) > 0 ? 'filed' : 'not filed', 'filed',
	"the victim's answers are filed in the shared cache");
my $st0 = $node->safe_psql('postgres', q{SELECT hits || ',' || misses FROM quota_ext.shared_cache_status()});
# a new connection: an empty backend cache, so every answer comes from the
# shared level or from a query (a miss)
($ret, $out, $err) = as_app(
	qq{SELECT allowed || ',' || coalesce(denied_by, '') FROM quota_ext.invoke('$vkey', 'm')});
is($out, 'true,', "the victim's second invoke is allowed");
my $st1 = $node->safe_psql('postgres', q{SELECT hits || ',' || misses FROM quota_ext.shared_cache_status()});
my ($h0, $m0) = split /,/, $st0;
my ($h1, $m1) = split /,/, $st1;
cmp_ok($h1 - $h0, '>=', 3, 'served from the shared cache (key, policy, rate rules, quotas)');
is($m1 - $m0, 0, 'without a single configuration query');
is($node->safe_psql('postgres',
		qq{SELECT allowed FROM quota_ext.request_stats() WHERE tenant_id = $victim}),
	'2', 'both decisions counted for the victim');

# ---- the admin reset frees the flooder's buckets ----
my $in_use0 = $node->safe_psql('postgres', 'SELECT in_use FROM quota_ext.rate_limit_status()');
is($node->safe_psql('postgres', 'SELECT quota_ext.rate_limit_reset()'),
	'1024', 'rate_limit_reset() empties the keys of rate_limit_check');
is($node->safe_psql('postgres', "SELECT quota_ext.rate_limit_reset($flooder)"),
	'1024', "rate_limit_reset(tenant) empties the flooder's buckets");
is($node->safe_psql('postgres', 'SELECT count(*) FROM quota_ext.rate_limit_namespaces()'),
	'0', 'no capped namespace holds a bucket');
is($node->safe_psql('postgres', 'SELECT in_use FROM quota_ext.rate_limit_status()'),
	$in_use0 - 2048, 'their 2048 slots are free again');
is( $node->safe_psql(
		'postgres',
		q{SELECT string_agg(tenant_id || ':' || (after ->> 'removed'), ',' ORDER BY audit_id)
		    FROM quota_ext.audit_log WHERE action = 'rate_limit_reset'}),
	"0:1024,$flooder:1024",
	'both resets are in the audit log');
($ret, $out, $err) = as_app(qq{
	BEGIN;
	SELECT tenant_id FROM quota_ext.authenticate('$fkey');
	SELECT limited FROM quota_ext.tenant_rate_limit_check('flood-1', 0, 1, 3600);
	SELECT limited FROM quota_ext.rate_limit_check('flood-1', 0, 1, 3600);
	COMMIT;});
is($out, "$flooder\nf\nf", 'reset keys are admitted again');
($ret, $out, $err) = as_app(q{SELECT quota_ext.rate_limit_reset()});
like($err, qr/ERROR:\s+42501: permission denied for function rate_limit_reset/,
	'the reset is for quota_ext_admin only');

$node->stop;
done_testing();
