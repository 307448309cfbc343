# pg_dump and restore of the enforcement state (reliability checklist F9).
#
# test/t/002_dump_restore.pl covers tenants, users, keys, models, tiers and
# audit.  This one fills everything enforcement keeps — quotas of every
# scope with used counts, usage rows of every kind, idempotency keys
# (allowed and denied), reservations (open, settled, cancelled, one about
# to expire), refunds, threshold events, policies, model shares, rate-limit
# rules, prices, a closed billing period with issued invoices — dumps it
# with pg_dump -Fc, restores it into a fresh cluster and checks:
#   * every row of every table of the extension is back unchanged (tiers:
#     002), and so
#     is quota_status() of every tenant (used, remaining);
#   * every sequence continues: for every column fed by nextval(), the next
#     value is above every restored one (usage, reservation, event, rule
#     ids, and invoice numbers once billing has them);
#   * a replay is still a replay (stored decision, nothing charged), the
#     same key with other units is still 22023, a denied key stays denied;
#   * the open reservation settles, the expired one is released by
#     quota_expire_reservations(), a second refund is a replay;
#   * the next billing period closes, and its invoices are numbered above
#     every restored one (no duplicate invoice number);
#   * threshold events stay once per period: crossing 80 % again emits
#     nothing, crossing 100 % emits one;
#   * rate-limit rules are enforced (buckets start empty: they live in
#     shared memory, doc/rate-limits.md);
#   * RLS and FORCE on every table; the invariants hold.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use QuotaReliab;

my $tempdir = PostgreSQL::Test::Utils::tempdir;

# The fixtures hold hourly, daily and weekly quotas in zones whose period
# ends fall on the hour (UTC, Europe/Berlin, America/New_York), and the
# checks after the restore compare counts of the current period.  A run
# that crossed an hour would see a period end between the dump and the
# checks (a count reset: seen on a loaded machine).  Start early enough in
# an hour: within 5 minutes of its end, wait for the next one.
{
	my $left = 3600 - (time() % 3600);
	if ($left < 300)
	{
		note "waiting ${left}s for the next hour, so that no period ends during the test";
		sleep($left + 2);
	}
}
my $old = quota_node('enf_source', db => 'app');

my $ids = $old->safe_psql('app', q{
	SELECT quota_ext.model_register('m') AS m \gset
	SELECT quota_ext.model_register('other') AS mo \gset
	SELECT quota_ext.tenant_create('acme', 'enterprise', 'Europe/Berlin') AS a \gset
	SELECT quota_ext.tenant_create('globex', 'pro', 'America/New_York') AS g \gset
	SELECT quota_ext.tenant_create('initech', 'enterprise') AS i \gset
	SELECT quota_ext.model_register('acme-private', owner_tenant_id => :a) AS mp \gset
	SELECT quota_ext.model_share(:a, 'acme-private', :i);
	SELECT quota_ext.policy_set(t, 'm', true) FROM unnest(ARRAY[:a, :g, :i]) t;
	SELECT quota_ext.policy_set(:a, 'oth*', true, ARRAY['admin']);
	SELECT quota_ext.policy_set(:i, 'acme-private', true);
	SELECT user_id AS ua, api_key AS ka FROM quota_ext.user_create(:a, 'alice@acme.example', 'admin') \gset
	SELECT user_id AS ub FROM quota_ext.user_create(:a, 'bob@acme.example', 'member') \gset
	SELECT key_id AS kb2 FROM quota_ext.api_key_create(:a, :ub, 'bob-ci') \gset
	-- quotas of every scope and metric
	SELECT quota_ext.quota_set(:a, 'daily', 10, 'm') AS q_day \gset
	SELECT quota_ext.quota_set(:a, 'monthly', 100000, 'm', 'units', soft_limit => 90000) AS q_month \gset
	SELECT quota_ext.quota_set(:a, 'hour', 1000, user_id => :ub) AS q_user \gset
	SELECT quota_ext.quota_set(:a, 'lifetime', 1000000, key_id => :kb2, metric => 'units') AS q_key \gset
	SELECT quota_ext.quota_set(:a, 'week', 5, 'other', on_exceed => 'overage') AS q_over \gset
	SELECT quota_ext.quota_set(:i, 'year', 50, 'acme-private', on_exceed => 'alert') AS q_alert \gset
	-- rate-limit rules
	SELECT quota_ext.rate_limit_set(:g, 2, 3600) AS rl_g \gset
	SELECT quota_ext.rate_limit_set(:a, 1000, 60, 10, 'm') AS rl_am \gset
	SELECT quota_ext.rate_limit_set(:a, 500, 60, 5, key_id => :kb2) AS rl_ak \gset
	-- usage of every kind; 8 of 10 daily calls crosses 80 %
	SELECT quota_ext.quota_consume(:a, 'm', 10 + n, 'a-' || n) FROM generate_series(1, 5) n;
	SELECT quota_ext.quota_consume(:a, 'm', 7, user_id => :ub, key_id => :kb2);
	SELECT quota_ext.quota_consume(:a, 'm', 2, user_id => :ua);
	SELECT quota_ext.quota_consume(:a, 'other', 9, 'a-other', role => 'admin');
	SELECT quota_ext.quota_consume(:a, 'other', 1, role => 'admin') FROM generate_series(1, 6);
	SELECT quota_ext.quota_consume(:i, 'acme-private', 20, 'i-1');
	SELECT quota_ext.quota_consume(:g, 'm', 1, 'g-1');
	SELECT (quota_ext.quota_consume(:g, 'm', 1, 'g-denied')).denied_by AS g_denied \gset
	SELECT reservation_id AS r_open FROM quota_ext.quota_reserve(:a, 'm', 30, '1 day', 'r-open') \gset
	SELECT reservation_id AS r_set FROM quota_ext.quota_reserve(:i, 'm', 30) \gset
	SELECT quota_ext.quota_settle(:i, :r_set, 12);
	SELECT reservation_id AS r_can FROM quota_ext.quota_reserve(:i, 'm', 5) \gset
	SELECT quota_ext.quota_cancel(:i, :r_can);
	SELECT reservation_id AS r_exp FROM quota_ext.quota_reserve(:i, 'm', 4, '1 second') \gset
	SELECT usage_id AS u_ref FROM quota_ext.quota_consume(:i, 'm', 3) \gset
	SELECT quota_ext.quota_refund(:i, :u_ref);
	-- money: a price, priced usage, a closed period, issued invoices
	SELECT quota_ext.price_set('m', 'EUR', 0.01);
	SELECT quota_ext.price_set('other', 'EUR', 0.03);
	SELECT quota_ext.quota_consume(:a, 'other', 7, role => 'admin');
	SELECT quota_ext.quota_consume(:i, 'm', 7);
	SELECT clock_timestamp() AS e1 \gset
	SELECT count(*) FROM quota_ext.billing_close(now() - interval '1 day', :'e1');
	SELECT count(*) FROM quota_ext.invoices i, quota_ext.invoice_issue(i.tenant_id, i.invoice_id) x;
	SELECT :a, :g, :i, :ua, :ub, :kb2, :q_day, :r_open, :r_exp, :u_ref, :'g_denied', :'e1';
});
my ($a, $g, $i, $ua, $ub, $kb2, $q_day, $r_open, $r_exp, $u_ref, $g_denied, $e1) = split /\|/, (split /\n/, $ids)[-1];
is($g_denied, 'rate_limit', 'fixtures: globex is rate-limited (2 per hour, no burst)');
# (the usage before the prices is on the tenants' XXX invoices, at zero)
is($old->safe_psql('app', q{SELECT count(*), count(invoice_number) FROM quota_ext.invoices WHERE currency <> 'XXX'}), '2|2',
	'fixtures: two issued, numbered invoices');
my $max_invoice_number = $old->safe_psql('app', q{SELECT max(invoice_number) FROM quota_ext.invoices});
is($old->safe_psql('app', qq{SELECT count(*) FROM quota_ext.quota_events WHERE tenant_id = $a AND quota_id = $q_day}),
	'1', 'fixtures: the daily quota crossed 80 % (one event)');
invariants_ok($old, 'app', 'source');
sleep 1;    # the one-second reservation is past its expiry (not yet released)

# every row of every table of the extension but tiers, and quota_status of
# everyone
my $tables = $old->safe_psql('app', q{
	SELECT string_agg(format('SELECT %L, t::text FROM %s t', c.relname, c.oid::regclass), ' UNION ALL ' ORDER BY c.relname)
	  FROM pg_class c WHERE c.relnamespace = 'quota_ext'::regnamespace AND c.relkind IN ('r', 'p')
	   -- built-in tiers are release data, made again by CREATE EXTENSION
	   -- (002_dump_restore.pl checks tiers)
	   AND c.relname <> 'tiers'});
my $snapshot_sql = "SELECT * FROM ($tables) x ORDER BY 1, 2;
	SELECT t.tenant_id, s.quota_id, s.used, s.remaining, s.\"limit\"
	  FROM quota_ext.tenants t, quota_ext.quota_status(t.tenant_id) s ORDER BY 1, 2;";
my $before = $old->safe_psql('app', $snapshot_sql);
my $n_rows = () = $before =~ /\n/g;
note("$n_rows rows in the snapshot");
my $seq_sql = q{SELECT c.relname, s.last_value FROM pg_class c, LATERAL (SELECT * FROM pg_sequences q
	WHERE q.schemaname = 'quota_ext' AND q.sequencename = c.relname) s
	WHERE c.relnamespace = 'quota_ext'::regnamespace AND c.relkind = 'S' ORDER BY 1};
my $seq_before = $old->safe_psql('app', $seq_sql);

$old->command_ok([ 'pg_dump', '--no-password', '-Fc', '-f', "$tempdir/app.dump", '-d', $old->connstr('app') ],
	'pg_dump -Fc');
$old->stop;

my $new = quota_node('enf_target');
$new->safe_psql('postgres', 'DROP EXTENSION quota_ext; CREATE DATABASE app');
$new->command_ok(
	[ 'pg_restore', '--no-password', '--exit-on-error', '-d', $new->connstr('app'), "$tempdir/app.dump" ],
	'pg_restore --exit-on-error into a fresh cluster');

is($new->safe_psql('app', $snapshot_sql), $before,
	'every row of every table is back, and quota_status() of every tenant is the same');
is($new->safe_psql('app', $seq_sql), $seq_before, 'every sequence is where it was');
is( $new->safe_psql('app',
		q{SELECT string_agg(relname, ',' ORDER BY relname) FROM pg_class
		   WHERE relnamespace = 'quota_ext'::regnamespace AND relkind IN ('r', 'p')
		     AND relname <> 'tiers' AND NOT (relrowsecurity AND relforcerowsecurity)}),
	'', 'every table but tiers has RLS and FORCE after the restore');
invariants_ok($new, 'app', 'restored');

# every column fed by a sequence: the next value is above every restored one
my @fed = split /\n/, $new->safe_psql('app', q{
	SELECT format('%s|%s|%s', c.oid::regclass, a.attname,
	              substring(pg_get_expr(d.adbin, d.adrelid) FROM 'nextval\(''([^'']+)'''))
	  FROM pg_attrdef d JOIN pg_class c ON c.oid = d.adrelid
	  JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
	 WHERE c.relnamespace = 'quota_ext'::regnamespace AND c.relkind IN ('r', 'p')
	   AND pg_get_expr(d.adbin, d.adrelid) LIKE 'nextval(%'
	 ORDER BY 1});
cmp_ok(scalar(@fed), '>=', 5, 'columns fed by sequences: ' . scalar(@fed));
for my $col (@fed)
{
	my ($rel, $att, $seq) = split /\|/, $col;
	my ($max, $next) = split /\|/,
	  $new->safe_psql('app', qq{SELECT coalesce((SELECT max($att) FROM $rel), 0), nextval('$seq')});
	cmp_ok($next, '>', $max, "$rel.$att: $seq continues above the restored rows");
}

# idempotency keys still answer
my $counters_sql = qq{SELECT string_agg(quota_id || ':' || used, ',' ORDER BY quota_id) FROM quota_ext.quota_counters};
my $counters = $new->safe_psql('app', $counters_sql);
is( $new->safe_psql('app',
		qq{SELECT count(*) FILTER (WHERE d.replayed AND d.allowed)
		     FROM generate_series(1, 5) n, quota_ext.quota_consume($a, 'm', 10 + n, 'a-' || n) d}),
	'5', 'replays after the restore are replays');
is($new->safe_psql('app', qq{SELECT allowed, denied_by, replayed FROM quota_ext.quota_consume($g, 'm', 1, 'g-denied')}),
	'f|rate_limit|t', 'a denied key stays denied (replayed)');
is($new->safe_psql('app', $counters_sql), $counters, 'the replays charged nothing');
my ($ret, $out, $err) = $new->psql('app', qq{SELECT quota_ext.quota_consume($a, 'm', 99, 'a-1')},
	extra_params => [ '-v', 'VERBOSITY=verbose' ]);
like($err, qr/22023/, 'a restored key with other units: 22023');

# reservations and refunds go on
is($new->safe_psql('app', qq{SELECT allowed FROM quota_ext.quota_settle($a, $r_open, 25)}), 't',
	'the open reservation settles');
is($new->safe_psql('app', q{SELECT quota_ext.quota_expire_reservations()}), '1',
	'the reservation past its expiry is released');
is($new->safe_psql('app', qq{SELECT status FROM quota_ext.reservations WHERE reservation_id = $r_exp}), 'expired',
	'... and marked expired');
is($new->safe_psql('app', qq{SELECT replayed FROM quota_ext.quota_refund($i, $u_ref)}), 't',
	'a second refund of a restored refund is a replay');

# events: once per period across the restore
$new->safe_psql('app', qq{SELECT quota_ext.quota_consume($a, 'm', 1)});
is($new->safe_psql('app', qq{SELECT string_agg(threshold::text, ',' ORDER BY threshold) FROM quota_ext.quota_events
	WHERE tenant_id = $a AND quota_id = $q_day}), '80', 'crossing 80 % again emits nothing');
$new->safe_psql('app', qq{SELECT quota_ext.quota_consume($a, 'm', 1)});
is($new->safe_psql('app', qq{SELECT string_agg(threshold::text, ',' ORDER BY threshold) FROM quota_ext.quota_events
	WHERE tenant_id = $a AND quota_id = $q_day}), '80,100', 'crossing 100 % emits one event');
is($new->safe_psql('app', qq{SELECT allowed, denied_by FROM quota_ext.quota_consume($a, 'm', 1)}), 'f|quota',
	'the restored daily count still limits');

# billing goes on: the next period closes, its invoices get new numbers
$new->safe_psql('app', qq{SELECT quota_ext.quota_consume($a, 'other', 2, role => 'admin'), quota_ext.quota_consume($i, 'm', 2)});
is( $new->safe_psql('app', qq{
		SELECT count(*) FROM quota_ext.billing_close('$e1', now()) b,
		       quota_ext.invoice_issue(b.tenant_id, b.invoice_id) x
		 WHERE b.period_start = '$e1' AND b.currency <> 'XXX'}),
	'2', 'the next period closes after the restore, into two invoices, issued');
cmp_ok($new->safe_psql('app', qq{SELECT min(invoice_number) FROM quota_ext.invoices WHERE period_start = '$e1'}),
	'>', $max_invoice_number, 'new invoice numbers continue above the restored ones');
is($new->safe_psql('app', q{SELECT count(*) FROM (SELECT invoice_number FROM quota_ext.invoices
	WHERE invoice_number IS NOT NULL GROUP BY 1 HAVING count(*) > 1) d}), '0', 'no duplicate invoice number');

# rate-limit rules are enforced (from empty buckets)
is( $new->safe_psql('app',
		qq{SELECT string_agg(coalesce(d, 'ok'), ',' ORDER BY n) FROM (
		     SELECT n, (quota_ext.quota_consume($g, 'm', 1)).denied_by AS d FROM generate_series(1, 3) n) x}),
	'ok,rate_limit,rate_limit', 'the restored rate-limit rule applies (a fresh bucket: one, then limited)');
invariants_ok($new, 'app', 'after the follow-ups');

$new->stop;
done_testing();
