# The pg_cron recipes of doc/operations.md, run by pg_cron itself.
#
# A node with shared_preload_libraries = 'quota_ext,pg_cron' schedules the
# five maintenance jobs (every minute here; doc/operations.md gives the
# production schedules), waits until each has succeeded in
# cron.job_run_details, and checks its effect: partitions created, an
# expired reservation released, rollups written, old audit rows purged, the
# previous month closed into an invoice.  pg_cron 1.4 (Debian 12) runs jobs
# on minute boundaries, so this takes up to about a minute.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('cron');
$node->init;
$node->append_conf('postgresql.conf', q{
shared_preload_libraries = 'quota_ext,pg_cron'
cron.database_name = 'postgres'
cron.use_background_workers = on
max_worker_processes = 20
});
$node->start;

$node->safe_psql('postgres', q{
	CREATE EXTENSION quota_ext;
	CREATE EXTENSION pg_cron;
	SELECT quota_ext.tenant_create('cron-a');
	SELECT quota_ext.model_register('cron-m');
	SELECT quota_ext.policy_set(1, 'cron-m', true);
	SELECT quota_ext.price_set('cron-m', 'USD', unit_price => 1);
	SELECT quota_ext.quota_reserve(1, 'cron-m', 5, ttl => '1 second');
	-- last month's usage (as if written then) and an audit row past the free tier's 7 days
	UPDATE quota_ext.tenants SET created_at = now() - interval '70 days';
	INSERT INTO quota_ext.usage (tenant_id, created_at, occurred_at, kind, model_id, calls, units, price_id, cost)
	VALUES (1, date_trunc('month', now()) - interval '10 days', date_trunc('month', now()) - interval '10 days',
	        'consume', 1, 1, 3, 1, 3);
	INSERT INTO quota_ext.audit_log (tenant_id, at, action, object_type)
	VALUES (1, now() - interval '8 days', 'old', 'test');
});

is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_inherits WHERE inhparent = 'quota_ext.usage'::regclass}),
	'1', 'before: only the default partition');

# the recipes (doc/operations.md), every minute for the test
$node->safe_psql('postgres', q{
	SELECT cron.schedule('quota_ext-partitions', '* * * * *', 'SELECT quota_ext.usage_partitions_maintain(3)');
	SELECT cron.schedule('quota_ext-expire', '* * * * *', 'SELECT quota_ext.quota_expire_reservations()');
	SELECT cron.schedule('quota_ext-rollup', '* * * * *', 'SELECT quota_ext.usage_rollup()');
	SELECT cron.schedule('quota_ext-audit', '* * * * *', 'SELECT quota_ext.audit_purge()');
	SELECT cron.schedule('quota_ext-billing', '* * * * *',
		$$SELECT count(*) FROM quota_ext.billing_close(date_trunc('month', now()) - interval '1 month', date_trunc('month', now()))$$);
});

ok($node->poll_query_until('postgres', q{
	SELECT count(DISTINCT d.jobid) = 5 FROM cron.job_run_details d WHERE d.status = 'succeeded'}),
	'every job ran and succeeded under pg_cron');
note($node->safe_psql('postgres', q{
	SELECT string_agg(j.jobname || ': ' || d.status || ' ' || coalesce(d.return_message, ''), E'\n')
	  FROM cron.job_run_details d JOIN cron.job j USING (jobid)}));

is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_inherits WHERE inhparent = 'quota_ext.usage'::regclass}),
	'6', 'partitions: the default plus last month (moved out of the default), this month and three ahead');
is($node->safe_psql('postgres', q{SELECT status FROM quota_ext.reservations}), 'expired', 'the expired reservation was released');
is($node->safe_psql('postgres', q{
	SELECT (SELECT sum(units) FROM quota_ext.usage_daily)
	     = (SELECT sum(units) FROM quota_ext.usage
	         WHERE created_at < (SELECT watermark FROM quota_ext.rollup_state))}),
	't', 'the rollup counted the ledger up to its watermark');
is($node->safe_psql('postgres', q{SELECT count(*) FROM quota_ext.audit_log WHERE action = 'old'}), '0', 'old audit rows were purged');
is($node->safe_psql('postgres', q{SELECT total || ' ' || currency || ' ' || status FROM quota_ext.invoices}), '3 USD draft',
	'last month was closed into a draft invoice');

$node->stop;
done_testing();
