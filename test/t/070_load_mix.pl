# The load test: 64 clients mixing everything at once (issue 7 "load test").
#
# Two pgbench runs side by side for $seconds (60 s; 300 s with
# QUOTA_SOAK=1):
#   * 56 clients as a quota_ext_app login role, each transaction
#     authenticating with one of 40 API keys of 20 tenants: quota_consume
#     (idempotency keys from a small space, so many are replays), invoke,
#     consume-then-refund of the same row, refunds of older rows, reserve
#     then settle (below or above the estimate) or cancel, reservations
#     abandoned with a 1-second TTL, ad-hoc and tenant rate-limit checks and
#     rate_limit_apply;
#   * 8 clients as a quota_ext_admin login role, one tenant each: quota_set
#     flipping a tight daily units limit (1000 / 1050), policy flips on a
#     second model, API key rotation, rate-limit rule changes,
#     quota_expire_reservations, and (one of them) billing_close of the last
#     complete 5-second window, when the extension has it (skipped
#     otherwise).
# Denials (quota, rate limit, policy) are answers, not errors.  Pass:
#   * no pgbench client aborted and no transaction failed (no error of any
#     kind: every call is single-lock-set or known deadlock-free);
#   * pg_stat_database.deadlocks did not move;
#   * after quota_expire_reservations(): no open reservation is past its
#     TTL, and the invariants hold (used = sum(usage) per quota and period,
#     used <= limit for block quotas — the tight ones checked against 1050,
#     the higher of their two limits — one usage row per idempotency key,
#     reservations and refunds add up).
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use QuotaReliab;

my $seconds = soak() ? 300 : 60;
my $node = quota_node('load', quiet => 1,
	conf => [ 'max_connections = 100', 'quota_ext.rate_limit_slots = 65536' ]);
$node->safe_psql('postgres', fixture_sql(20) . q{
	SELECT quota_ext.model_register('m2');
	SELECT quota_ext.policy_set(tenant_id, 'm2', true) FROM quota_ext.tenants;
	SELECT quota_ext.user_create(tenant_id, 'v@t' || tenant_id || '.example', 'admin') FROM quota_ext.tenants;
	-- the tight quota the admin clients flip (1000 / 1050), on t1..t8
	SELECT quota_ext.quota_set(tenant_id, 'day', 1000, 'm', 'units') FROM quota_ext.tenants
	 WHERE substr(name, 2)::int <= 8;
	-- tenant-wide, user and key scopes, overage and alert quotas
	SELECT quota_ext.quota_set(tenant_id, 'month', 10000000) FROM quota_ext.tenants;
	SELECT quota_ext.quota_set(u.tenant_id, 'hour', 1000000, user_id => min(u.user_id))
	  FROM quota_ext.users u GROUP BY u.tenant_id;
	SELECT quota_ext.quota_set(k.tenant_id, 'day', 100000000, metric => 'units', key_id => min(k.key_id))
	  FROM quota_ext.api_keys k GROUP BY k.tenant_id;
	SELECT quota_ext.quota_set(tenant_id, 'day', 100, 'm2', on_exceed => 'overage') FROM quota_ext.tenants WHERE name = 't9';
	SELECT quota_ext.quota_set(tenant_id, 'day', 100, 'm2', on_exceed => 'alert') FROM quota_ext.tenants WHERE name = 't10';
	-- generous tenant-wide rate limits; t5 tight (rate-limit denials)
	SELECT quota_ext.rate_limit_set(tenant_id, 100000, 60, 1000) FROM quota_ext.tenants;
	SELECT quota_ext.rate_limit_set(tenant_id, 10, 1, 5, 'm') FROM quota_ext.tenants WHERE name = 't5';
	CREATE ROLE load_app LOGIN IN ROLE quota_ext_app;
	CREATE ROLE load_admin LOGIN IN ROLE quota_ext_admin;
	-- what the clients pick from (the keys were shown once, at creation)
	CREATE TABLE public.loadkeys (id serial PRIMARY KEY, tenant_id bigint, api_key text);
	CREATE TABLE public.loadtenants (n int PRIMARY KEY, tenant_id bigint);
	INSERT INTO public.loadtenants SELECT substr(name, 2)::int, tenant_id FROM quota_ext.tenants;
	GRANT SELECT ON public.loadkeys, public.loadtenants TO load_app, load_admin;
});
# the API keys (only user_create shows them): mint one more per user
$node->safe_psql('postgres', q{
	INSERT INTO public.loadkeys (tenant_id, api_key)
	SELECT u.tenant_id, (quota_ext.api_key_create(u.tenant_id, u.user_id, 'load')).api_key
	  FROM quota_ext.users u ORDER BY u.tenant_id, u.user_id});
my $nkeys = $node->safe_psql('postgres', 'SELECT count(*) FROM public.loadkeys');
is($nkeys, '40', '40 API keys of 20 tenants');

# billing_close, when the extension has it (issue 5): the last complete
# 5-second window, closed again and again (idempotent) by one admin client
# (periods must follow each other)
my $has_billing = $node->safe_psql('postgres',
	q{SELECT count(*) FROM pg_proc WHERE pronamespace = 'quota_ext'::regnamespace AND proname = 'billing_close'});
$node->safe_psql('postgres', $has_billing
	? q{CREATE FUNCTION public.load_billing() RETURNS void LANGUAGE sql SECURITY INVOKER AS $$
	      SELECT count(*) FROM quota_ext.billing_close(
	          to_timestamp(floor(extract(epoch FROM now()) / 5) * 5 - 5),
	          to_timestamp(floor(extract(epoch FROM now()) / 5) * 5)) $$ }
	: q{CREATE FUNCTION public.load_billing() RETURNS void LANGUAGE sql AS $$ SELECT $$});
note($has_billing ? 'billing_close is part of the mix' : 'no billing_close in this version: that part is skipped');
$node->safe_psql('postgres', 'GRANT EXECUTE ON FUNCTION public.load_billing() TO load_admin');

my $auth = q{SELECT quota_ext.authenticate(api_key) FROM public.loadkeys WHERE id = :r;};
my %app = (
	'consume' => [ 30, qq{\\set r random(1, $nkeys)
\\set k random(1, 2000)
\\set u (:k % 10) + 1
BEGIN;
$auth
SELECT quota_ext.quota_consume(quota_ext.current_tenant_id(), CASE WHEN :u > 8 THEN 'm2' ELSE 'm' END, :u,
                               'c-' || :r || '-' || :k);
COMMIT;
} ],
	'invoke' => [ 20, qq{\\set r random(1, $nkeys)
\\set k random(1, 2000)
\\set u (:k % 7) + 1
SELECT quota_ext.invoke(api_key, 'm', :u, 'i-' || :r || '-' || :k) FROM public.loadkeys WHERE id = :r;
} ],
	'refund' => [ 8, qq{\\set r random(1, $nkeys)
BEGIN;
$auth
SELECT quota_ext.quota_refund(quota_ext.current_tenant_id(), d.usage_id)
  FROM quota_ext.quota_consume(quota_ext.current_tenant_id(), 'm', 3) d WHERE d.allowed;
COMMIT;
} ],
	'refund_old' => [ 4, qq{\\set r random(1, $nkeys)
\\set o random(0, 50)
BEGIN;
$auth
SELECT quota_ext.quota_refund(quota_ext.current_tenant_id(), u.usage_id)
  FROM (SELECT usage_id FROM quota_ext.usage
         WHERE tenant_id = quota_ext.current_tenant_id() AND kind = 'consume'
         ORDER BY usage_id DESC LIMIT 1 OFFSET :o) u;
COMMIT;
} ],
	'reserve' => [ 10, qq{\\set r random(1, $nkeys)
\\set e random(1, 20)
\\set a random(0, 45)
BEGIN;
$auth
SELECT coalesce(reservation_id, 0) AS rid
  FROM quota_ext.quota_reserve(quota_ext.current_tenant_id(), 'm', :e, '1 hour') \\gset
COMMIT;
\\if :rid > 0
BEGIN;
$auth
\\if :a > 40
SELECT quota_ext.quota_cancel(quota_ext.current_tenant_id(), :rid);
\\else
SELECT quota_ext.quota_settle(quota_ext.current_tenant_id(), :rid, :a);
\\endif
COMMIT;
\\endif
} ],
	'abandon' => [ 3, qq{\\set r random(1, $nkeys)
BEGIN;
$auth
SELECT quota_ext.quota_reserve(quota_ext.current_tenant_id(), 'm', 2, '1 second');
COMMIT;
} ],
	'ratelimit' => [ 10, qq{\\set r random(1, $nkeys)
\\set ip random(1, 50)
SELECT quota_ext.rate_limit_check('ip-' || :ip, 20, 100, 1);
BEGIN;
$auth
SELECT quota_ext.tenant_rate_limit_check('login', 5, 10, 1);
SELECT quota_ext.rate_limit_apply(quota_ext.current_tenant_id(), 'm');
COMMIT;
} ],);
my %admin = (
	'admin' => [ 1, q{\set t (:client_id % 8) + 1
\set op random(1, 10)
\set b random(0, 1)
\if :op <= 3
SELECT quota_ext.quota_set(tenant_id, 'day', 1000 + 50 * :b, 'm', 'units') FROM public.loadtenants WHERE n = :t;
\elif :op <= 5
SELECT quota_ext.policy_set(tenant_id, 'm2', :b = 1) FROM public.loadtenants WHERE n = :t;
\elif :op = 6
SELECT quota_ext.api_key_rotate(t.tenant_id, k.key_id, '1 hour')
  FROM public.loadtenants t,
       LATERAL (SELECT key_id FROM quota_ext.api_keys k
                 WHERE k.tenant_id = t.tenant_id AND k.rotated_to IS NULL AND k.revoked_at IS NULL
                 ORDER BY k.key_id DESC LIMIT 1) k
 WHERE t.n = :t;
\elif :op = 7
SELECT quota_ext.rate_limit_set(tenant_id, 100000 + :b, 60, 1000) FROM public.loadtenants WHERE n = :t;
\elif :op <= 9 or :client_id > 0
SELECT quota_ext.quota_expire_reservations(100);
\else
SELECT public.load_billing();
\endif
\sleep 20 ms
} ],);

sub pgbench_start
{
	my ($user, $clients, $scripts, $out, $err) = @_;
	my @files;
	for my $name (sort keys %$scripts)
	{
		my ($weight, $body) = @{ $scripts->{$name} };
		my $file = "$PostgreSQL::Test::Utils::tmp_check/070_$name.sql";
		open my $fh, '>', $file or die "$file: $!";
		print $fh $body;
		close $fh;
		push @files, "--file=$file\@$weight";
	}
	local $ENV{PGAPPNAME} = "load_$user";
	return IPC::Run::start(
		[
			'pgbench', '--no-vacuum', "--client=$clients", '--jobs=2', "--time=$seconds",
			'--failures-detailed', '-U', $user, '-h', $node->host, '-p', $node->port, @files, 'postgres'
		],
		'>', $out, '2>', $err);
}

my $deadlocks = $node->safe_psql('postgres', 'SELECT sum(deadlocks) FROM pg_stat_database');
my ($app_out, $app_err, $adm_out, $adm_err) = ('', '', '', '');
my $t0 = time();
my $app = pgbench_start('load_app', 56, \%app, \$app_out, \$app_err);
my $adm = pgbench_start('load_admin', 8, \%admin, \$adm_out, \$adm_err);
my $app_ok = $app->finish;
my $adm_ok = $adm->finish;
note('pgbench ran ' . (time() - $t0) . " s\napp:\n$app_out\n$app_err\nadmin:\n$adm_out\n$adm_err");

for my $run ([ 'app (56 clients)', $app_ok, $app_out, $app_err ], [ 'admin (8 clients)', $adm_ok, $adm_out, $adm_err ])
{
	my ($what, $ok, $out, $err) = @$run;
	ok($ok, "$what: pgbench exited normally (no client aborted)");
	like($out, qr/number of failed transactions: 0 \(0\.000%\)/, "$what: no failed transaction");
	unlike($err, qr/ERROR|aborted|FATAL/, "$what: no error at all") or diag($err);
	my ($tx) = $out =~ /number of transactions actually processed: (\d+)/;
	cmp_ok($tx // 0, '>', 100, "$what: " . ($tx // 0) . ' transactions');
}
is($node->safe_psql('postgres', 'SELECT sum(deadlocks) FROM pg_stat_database'), $deadlocks, 'no deadlock');

# the mix did what it should: denials of every kind, replays, refunds,
# settlements, abandoned reservations, events
my $mix = $node->safe_psql('postgres', q{
	SELECT format('usage %s (consume %s, refund %s, reserve %s, settle %s, release %s, overage rows %s); keys %s (denied %s); events %s; rotated keys %s',
	              count(*), count(*) FILTER (WHERE kind = 'consume'), count(*) FILTER (WHERE kind = 'refund'),
	              count(*) FILTER (WHERE kind = 'reserve'), count(*) FILTER (WHERE kind = 'settle'),
	              count(*) FILTER (WHERE kind = 'release'), count(*) FILTER (WHERE overage_units > 0),
	              (SELECT count(*) FROM quota_ext.idempotency_keys),
	              (SELECT count(*) FROM quota_ext.idempotency_keys WHERE NOT allowed),
	              (SELECT count(*) FROM quota_ext.quota_events),
	              (SELECT count(*) FROM quota_ext.api_keys WHERE rotated_to IS NOT NULL))
	  FROM quota_ext.usage});
note($mix);
is( $node->safe_psql('postgres', q{
		SELECT count(DISTINCT denied_by) FROM quota_ext.idempotency_keys WHERE NOT allowed}),
	'3', 'denials by quota, rate limit and policy all happened (as answers)');
cmp_ok($node->safe_psql('postgres', q{SELECT count(*) FROM quota_ext.refunds}), '>', 0, 'refunds happened');
SKIP:
{
	skip 'no billing_close in this version', 1 unless $has_billing;
	cmp_ok($node->safe_psql('postgres', q{SELECT count(*) FROM quota_ext.billing_closes}), '>', 0,
		'billing periods were closed during the load');
}

# clean up after the clients: expire what was abandoned, put the tight
# limits at the higher of their two values, then check everything
# (one transaction: "past its TTL" at the same now())
is( $node->safe_psql('postgres',
		q{BEGIN;
		  SELECT quota_ext.quota_expire_reservations(100000) \gset
		  SELECT count(*) FROM quota_ext.reservations WHERE status = 'open' AND expires_at < now();
		  COMMIT;}),
	'0', 'no open reservation is past its TTL after quota_expire_reservations()');
cmp_ok($node->safe_psql('postgres', q{SELECT count(*) FROM quota_ext.reservations WHERE status = 'expired'}),
	'>', 0, 'abandoned reservations were expired');
$node->safe_psql('postgres', q{
	SELECT quota_ext.quota_set(tenant_id, 'day', 1050, 'm', 'units') FROM quota_ext.tenants
	 WHERE substr(name, 2)::int <= 8});
cmp_ok( $node->safe_psql('postgres', q{
		SELECT count(*) FROM quota_ext.quota_counters c JOIN quota_ext.quotas q USING (tenant_id, quota_id)
		 WHERE q.period = 'day' AND q.metric = 'units' AND q.max_units = 1050 AND c.used >= 1000}),
	'>', 0, 'the tight quotas were driven to their limit');
invariants_ok($node, 'postgres', 'after the load');

$node->stop;
done_testing();
