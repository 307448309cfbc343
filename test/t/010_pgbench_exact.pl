
# Copyright: quota_ext contributors
#
# 010_pgbench_exact.pl — checklist L8: a storm of concurrent consumes is
# counted exactly.
#
# A durable node (fsync = on, quota_ext preloaded) takes pgbench load from
# 8 clients: each transaction of the script is one logical request with a
# fresh idempotency key and a random 1..10 units, sent twice (the retry a
# client makes when it did not see the answer).  The limits are small, so
# they are exhausted well before the run ends.  First one hot tenant (every
# call locks the same three counters), then the same with the units quota
# in 4 escrow slots (quota_set(..., slots => 4)), then 20 tenants.
# Afterwards:
#   - pgbench saw no error;
#   - quota_test.violations() (test/invariant.sql) is empty: every counter
#     equals the ledger and no blocking quota is over its limit;
#   - every logical request has exactly one idempotency key, and one usage
#     row when it was allowed, none when denied;
#   - some requests were denied (the limits were reached);
#   - pg_stat_database shows no deadlock.

use strict;
use warnings;
use FindBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $clients = 8;
my $transactions = 250;

my $node = PostgreSQL::Test::Cluster->new('pgbench_exact');
$node->init;
$node->append_conf(
	'postgresql.conf', qq{
shared_preload_libraries = 'quota_ext'
fsync = on
max_connections = 40
log_lock_waits = off
});
$node->start;
is($node->safe_psql('postgres', 'SHOW fsync'), 'on', 'the node is durable (fsync on)');

my $invariant = slurp_file("$FindBin::RealBin/../invariant.sql");

# One logical request = one pgbench transaction of the script: a key from a
# sequence (unique per run) prefixed with the client id, and the same
# consume sent twice.  Each SELECT is its own transaction (autocommit).
my $script = q{
\set units random(1, 10)
\set t random(:tmin, :tmax)
SELECT nextval('quota_test.request_seq') AS k \gset
SELECT allowed FROM quota_ext.quota_consume(:t, 'm', :units, :client_id || '-' || :k, :t * 100 + :client_id % 2 + 1);
SELECT allowed FROM quota_ext.quota_consume(:t, 'm', :units, :client_id || '-' || :k, :t * 100 + :client_id % 2 + 1);
};

# Tenants 1..n, each with two users (ids t*100+1, t*100+2 are passed as
# user_id, to exercise per-user counters) and three quotas per call: the
# tenant's units per month, its calls per day, and the user's units per day.
sub setup_db
{
	my ($db, $ntenants, $units, $calls, $user_units, $slots) = @_;
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	$node->safe_psql($db, 'CREATE EXTENSION quota_ext');
	$node->safe_psql($db, $invariant);
	$node->safe_psql(
		$db, qq{
		CREATE SEQUENCE quota_test.request_seq;
		SELECT quota_ext.model_register('m');
		DO \$\$
		DECLARE
			t bigint;
		BEGIN
			FOR i IN 1..$ntenants LOOP
				t := quota_ext.tenant_create('t' || i, 'enterprise');
				-- user ids chosen by the test: t*100 + 1 and t*100 + 2
				PERFORM setval('quota_ext.user_id_seq', t * 100);
				PERFORM quota_ext.user_create(t, 'a' || i || '\@t.test', 'member');
				PERFORM quota_ext.user_create(t, 'b' || i || '\@t.test', 'member');
				PERFORM quota_ext.policy_set(t, 'm', true);
				PERFORM quota_ext.quota_set(t, 'monthly', $units, metric => 'units', slots => $slots);
				PERFORM quota_ext.quota_set(t, 'daily', $calls);
				PERFORM quota_ext.quota_set(t, 'daily', $user_units, metric => 'units', user_id => t * 100 + 1);
				PERFORM quota_ext.quota_set(t, 'daily', $user_units, metric => 'units', user_id => t * 100 + 2);
			END LOOP;
		END
		\$\$;
	});
	is($node->safe_psql($db, 'SELECT max(tenant_id) FROM quota_ext.tenants'),
		$ntenants, "$db: $ntenants tenants, ids 1..$ntenants");
	return;
}

sub run_and_check
{
	my ($db, $ntenants, $name) = @_;
	my $requests = $clients * $transactions;

	$node->pgbench(
		"--no-vacuum --client=$clients --jobs=2 --transactions=$transactions"
		  . " --define=tmin=1 --define=tmax=$ntenants",
		0,
		[qr{number of transactions actually processed: $requests/$requests}],
		[qr{^$}],
		"$name: pgbench ran $requests requests, each sent twice, without error",
		{ "010_pgbench_exact_$db" => $script },
		$db);

	my $violations = $node->safe_psql($db, 'SELECT * FROM quota_test.violations()');
	is($violations, '', "$name: every counter equals the ledger, none over its limit");

	is( $node->safe_psql(
			$db, q{
			SELECT count(*) FILTER (WHERE q.on_exceed = 'block' AND s.used > s."limit")
			  FROM quota_ext.quotas q
			  CROSS JOIN LATERAL quota_ext.quota_status(q.tenant_id) s
			 WHERE s.quota_id = q.quota_id}),
		'0',
		"$name: used <= limit for every quota");

	is( $node->safe_psql(
			$db, q{
			SELECT count(*) || ' keys, ' ||
			       count(*) FILTER (WHERE allowed IS NULL) || ' undecided, ' ||
			       count(*) FILTER (WHERE allowed AND n <> 1) || ' allowed without one row, ' ||
			       count(*) FILTER (WHERE NOT allowed AND n <> 0) || ' denied with rows'
			  FROM (SELECT k.allowed,
			               (SELECT count(*) FROM quota_ext.usage u
			                 WHERE u.tenant_id = k.tenant_id
			                   AND u.idempotency_key = k.idempotency_key) AS n
			          FROM quota_ext.idempotency_keys k) s}),
		"$requests keys, 0 undecided, 0 allowed without one row, 0 denied with rows",
		"$name: one key per request, one usage row per allowed key");

	is( $node->safe_psql(
			$db, q{
			SELECT count(*) = count(DISTINCT (tenant_id, idempotency_key))
			       AND count(*) = count(idempotency_key)
			  FROM quota_ext.usage}),
		't',
		"$name: no idempotency key has two usage rows");

	my ($allowed, $denied) = split /\|/,
	  $node->safe_psql($db,
		'SELECT count(*) FILTER (WHERE allowed), count(*) FILTER (WHERE NOT allowed) FROM quota_ext.idempotency_keys');
	ok($allowed > 0 && $denied > 0,
		"$name: limits reached ($allowed requests allowed, $denied denied)");

	is($node->safe_psql('postgres', 'SELECT sum(deadlocks) FROM pg_stat_database'),
		'0', "$name: no deadlock");
	return;
}

# one hot tenant: every request locks the same three counters (and one of
# two per-user counters); 2,000 requests of 5.5 units on average exhaust
# the 5,000 units
setup_db('hot', 1, 5000, 1500, 3000, 1);
run_and_check('hot', 1, 'one tenant');

# the same hot tenant with its units quota spread over 4 escrow slots
setup_db('escrow', 1, 5000, 1500, 3000, 4);
run_and_check('escrow', 1, 'one tenant, escrow slots');

# 20 tenants with small limits: most of them run out
setup_db('many', 20, 300, 80, 200, 1);
run_and_check('many', 20, '20 tenants');

$node->stop;
done_testing();
