# Many clients on one key: exactly the GCRA bound is admitted.
#
# max_burst B = 10 at 10 per second (interval I = 100 ms).  GCRA admits at
# most B + 1 + floor(span / I) requests whose checks lie span apart.  With
# clients asking all the time, each slot is taken as soon as it opens, so
# admission k (after the burst) comes at T1 + (k - 1 - B) * I plus a lag
# well under I / 2: the count is B + 1 + round(span / I).  Each admission
# is stamped with clock_timestamp() right after its check; a stamp can lag
# its check by scheduling delay, so we allow one interval either way.
# Independently of stamps, the count can never exceed the bound over the
# wall-clock window around the whole pgbench run.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use POSIX qw(floor);

my ($burst, $count, $period, $seconds, $clients) = (10, 10, 1, 5, 8);
my $interval = $period / $count;

my $node = PostgreSQL::Test::Cluster->new('pgbench');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'quota_ext'");
$node->append_conf('postgresql.conf', "max_connections = 40");
$node->start;
$node->safe_psql('postgres',
	'CREATE EXTENSION quota_ext; CREATE UNLOGGED TABLE admitted (at timestamptz NOT NULL);'
	  . ' CREATE SEQUENCE attempts');

my $t0 = time();
$node->pgbench(
	"--no-vacuum --client=$clients --jobs=2 --time=$seconds",
	0,
	[qr{processed: \d+}],
	[],
	'pgbench hammers one key',
	{
		'hot' => qq{SELECT nextval('attempts');
INSERT INTO admitted
  SELECT clock_timestamp() FROM quota_ext.rate_limit_check('hot', $burst, $count, $period)
   WHERE NOT limited;
}
	});
my $t1 = time();

my ($n, $span) = split /\|/, $node->safe_psql('postgres',
	'SELECT count(*), extract(epoch FROM max(at) - min(at)) FROM admitted');
my $expected = $burst + 1 + floor($span / $interval + 0.5);
my $ceiling = $burst + 1 + floor(($t1 - $t0) / $interval);
note("admitted $n over $span s (expected $expected); wall window "
	  . sprintf('%.3f', $t1 - $t0) . " s allows at most $ceiling");

cmp_ok($n, '<=', $ceiling, 'never more than the GCRA bound over the whole run');
cmp_ok(abs($n - $expected), '<=', 1,
	'the GCRA bound over the admitted span, within one interval');
cmp_ok($span, '>=', $seconds - 1, 'admissions continued for the whole run');

# and the key was really contended: far more checks than admissions
my $attempts = $node->safe_psql('postgres', 'SELECT last_value FROM attempts');
note("$attempts checks");
cmp_ok($attempts, '>', 2 * $n, 'most checks were limited');

# Configured rules through rate_limit_apply: a tenant-wide rule (burst 5,
# 20 per second) and a model rule (burst 2, 5 per second) checked all or
# nothing under both partition locks.  Half the calls name the model.
# Total admissions follow the tenant-wide bound, model ones never exceed
# theirs, and nothing deadlocks.
$node->safe_psql(
	'postgres', q{
	CREATE UNLOGGED TABLE applied (with_model boolean NOT NULL, at timestamptz NOT NULL);
	SELECT quota_ext.tenant_create('bench', 'free');
	SELECT quota_ext.model_register('m');
	SELECT quota_ext.rate_limit_set((SELECT tenant_id FROM quota_ext.tenants WHERE name = 'bench'), 20, 1, 5);
	SELECT quota_ext.rate_limit_set((SELECT tenant_id FROM quota_ext.tenants WHERE name = 'bench'), 5, 1, 2, 'm');
});
my $tenant = $node->safe_psql('postgres',
	q{SELECT tenant_id FROM quota_ext.tenants WHERE name = 'bench'});
$t0 = time();
$node->pgbench(
	"--no-vacuum --client=$clients --jobs=2 --time=3",
	0,
	[qr{processed: \d+}],
	[],
	'pgbench applies two rules',
	{
		'apply' => qq{\\set r random(0, 1)
INSERT INTO applied
  SELECT :r = 1, clock_timestamp()
    FROM quota_ext.rate_limit_apply($tenant, CASE WHEN :r = 1 THEN 'm' END)
   WHERE NOT limited;
}
	});
$t1 = time();
my ($total, $with_model, $span2) = split /\|/, $node->safe_psql('postgres',
	q{SELECT count(*), count(*) FILTER (WHERE with_model),
	         extract(epoch FROM max(at) - min(at)) FROM applied});
my $expected2 = 5 + 1 + floor($span2 / 0.05 + 0.5);
note("applied $total ($with_model with the model) over $span2 s (expected $expected2)");
cmp_ok($total, '<=', 5 + 1 + floor(($t1 - $t0) / 0.05),
	'tenant-wide rule: never more than its bound');
cmp_ok(abs($total - $expected2), '<=', 1,
	'tenant-wide rule: its bound over the admitted span, within one interval');
cmp_ok($with_model, '<=', 2 + 1 + floor(($t1 - $t0) / 0.2),
	'model rule: never more than its bound');
cmp_ok($with_model, '>', 0, 'model rule: some admitted');

$node->stop;
done_testing();
