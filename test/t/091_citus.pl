# quota_ext on Citus (issue 16): a coordinator and two workers on loopback.
#
# Skips unless Citus is installed (citus.so in pg_config --pkglibdir): CI
# machines have none, and the repository builds none.  What this checks is
# what works on Citus today; what does not yet is listed in doc/scaling.md
# and noted (not counted) below with the error it raises.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;

my $pkglibdir = `pg_config --pkglibdir`;
chomp $pkglibdir;
plan skip_all => "Citus is not installed (no citus.so in $pkglibdir): the Citus tests need it"
	unless -e "$pkglibdir/citus.so";

my @nodes;
for my $name (qw(coord worker1 worker2))
{
	my $n = PostgreSQL::Test::Cluster->new($name);
	$n->init(allows_streaming => 0);
	$n->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'citus,quota_ext'
max_connections = 60
listen_addresses = '127.0.0.1'
max_worker_processes = 20
citus.log_remote_commands = off
});
	$n->start;
	$n->safe_psql('postgres', 'CREATE EXTENSION citus');
	push @nodes, $n;
}
my ($coord, $w1, $w2) = @nodes;
$coord->safe_psql('postgres', q{SELECT citus_set_coordinator_host('127.0.0.1', } . $coord->port . ')');
for my $w ($w1, $w2)
{
	$coord->safe_psql('postgres', q{SELECT citus_add_node('127.0.0.1', } . $w->port . ')');
}
is($coord->safe_psql('postgres', 'SELECT count(*) FROM citus_get_active_worker_nodes()'), '2', 'two active workers');

# quota_ext: created on the coordinator, Citus propagates it to the workers
$coord->safe_psql('postgres', 'CREATE EXTENSION quota_ext');
for my $w ($w1, $w2)
{
	is($w->safe_psql('postgres', q{SELECT count(*) FROM pg_extension WHERE extname = 'quota_ext'}), '1',
		'CREATE EXTENSION quota_ext reached ' . $w->name);
}

# a superuser-less admin cannot, a server without Citus refuses (55000)
my ($rc, $out, $err) = $coord->psql('postgres', 'SET ROLE quota_ext_app; CALL quota_ext.distribute()');
like($err, qr/permission denied/, 'the app role cannot call distribute()');
{
	# a database without Citus
	$coord->safe_psql('postgres', 'CREATE DATABASE plain');
	$coord->safe_psql('plain', 'CREATE EXTENSION quota_ext');
	($rc, $out, $err) = $coord->psql('plain', "\\set VERBOSITY verbose\nCALL quota_ext.distribute()");
	like($err, qr/55000: distribute: Citus is not installed in this database/, 'without Citus distribute() refuses with 55000');
}

# distribute(), twice
($rc, $out, $err) = $coord->psql('postgres', 'CALL quota_ext.distribute()');
is($rc, 0, 'distribute() succeeds') or diag($err);
note($err);
($rc, $out, $err) = $coord->psql('postgres', 'CALL quota_ext.distribute()');
is($rc, 0, 'distribute() again succeeds') or diag($err);
like($err, qr/distribute: 0 change\(s\)/, 'the second run changes nothing');

my $status = $coord->safe_psql('postgres', 'SELECT kind, object, detail FROM quota_ext.distribution_status()');
note($status);
like($status, qr/^reference\|quota_ext\.tenants\|$/m, 'tenants is a reference table');
like($status, qr/^reference\|quota_ext\.models\|$/m, 'models is a reference table');
like($status, qr/^distributed\|quota_ext\.usage\|by tenant_id/m, 'usage is distributed by tenant_id');
is($coord->safe_psql('postgres', q{
	SELECT count(DISTINCT colocationid) FROM pg_dist_partition d JOIN pg_class c ON c.oid = d.logicalrelid
	 WHERE c.relnamespace = 'quota_ext'::regnamespace AND d.partmethod = 'h'}), '1',
	'every per-tenant table is in one co-location group');
is($coord->safe_psql('postgres', q{
	SELECT count(*) FROM pg_class c
	 WHERE c.relnamespace = 'quota_ext'::regnamespace AND c.relkind IN ('r', 'p') AND NOT c.relispartition
	   AND NOT EXISTS (SELECT 1 FROM pg_dist_partition d WHERE d.logicalrelid = c.oid)}), '0',
	'no table of the extension is left local to the coordinator');
like($status, qr/^delegated function\|quota_ext\.quota_consume\(/m, 'quota_consume is delegated');

# usage_partitions_maintain() on Citus: the months' partitions are made on
# the coordinator and distributed with the ledger (co-located), every shard
# secured as a partition is on a single node: RLS enabled and forced, the
# two policies, the three indexes, no grant to the app
my $this_month = $coord->safe_psql('postgres', q{SELECT 'usage_p' || to_char(now() AT TIME ZONE 'UTC', 'YYYYMM')});
($rc, $out, $err) = $coord->psql('postgres', q{
	SELECT string_agg(partition || ' ' || action, ',' ORDER BY partition) FROM quota_ext.usage_partitions_maintain(1)});
is($rc, 0, 'usage_partitions_maintain(1) runs on the coordinator') or diag($err);
like($out, qr/^\Q$this_month\E created,usage_p\d{6} created$/, "this month's and next month's partitions are made ($out)");
is($coord->safe_psql('postgres', q{SELECT count(*) FROM quota_ext.usage_partitions_maintain(1)}), '0',
	'usage_partitions_maintain(1) again makes nothing');
is($coord->safe_psql('postgres', qq{
	SELECT count(*) FROM pg_dist_partition d
	 WHERE d.logicalrelid IN ('quota_ext.$this_month'::regclass, 'quota_ext.usage'::regclass)
	   AND d.partmethod = 'h'
	 GROUP BY d.colocationid}), '2', "$this_month is distributed, co-located with the ledger");
for my $w ($w1, $w2)
{
	# (Citus hides shards from pg_class unless told not to)
	is($w->safe_psql('postgres', qq{
		SET citus.override_table_visibility = off;
		SELECT count(*) > 0,
		       count(*) FILTER (WHERE NOT (c.relrowsecurity AND c.relforcerowsecurity)),
		       count(*) FILTER (WHERE (SELECT string_agg(p.polname, ',' ORDER BY p.polname) FROM pg_policy p
		                                WHERE p.polrelid = c.oid) IS DISTINCT FROM 'admin_read,tenant_isolation'),
		       count(*) FILTER (WHERE (SELECT count(*) FROM pg_index i WHERE i.indrelid = c.oid) <> 3),
		       count(*) FILTER (WHERE has_table_privilege('quota_ext_app', c.oid, 'SELECT'))
		  FROM pg_class c
		 WHERE c.relnamespace = 'quota_ext'::regnamespace AND c.relname ~ '^${this_month}_[0-9]+\$'}), 't|0|0|0|0',
		'on ' . $w->name . ": every shard of $this_month has RLS forced, both policies, its 3 indexes, no grant to the app");
}

# the demo flow through the coordinator: what works today
my @works = (
	[ 'tenant_create', q{SELECT quota_ext.tenant_create('acme') > 0} ],
	[ 'tenant_create (second)', q{SELECT quota_ext.tenant_create('globex') > 0} ],
	[ 'user_create', q{SELECT user_id > 0 FROM quota_ext.user_create(1, 'alice@acme.test')} ],
	[ 'model_register', q{SELECT quota_ext.model_register('gpt-x') > 0} ],
	[ 'policy_set', q{SELECT quota_ext.policy_set(1, 'gpt-x', true) > 0} ],
	[ 'policy_check (delegated to the worker holding tenant 1)', q{SELECT quota_ext.policy_check(1, 'gpt-x')} ],
	[ 'quota_set', q{SELECT quota_ext.quota_set(1, 'month', 1000, model => 'gpt-x') > 0} ],
);
for my $step (@works)
{
	($rc, $out, $err) = $coord->psql('postgres', $step->[1]);
	is($rc, 0, "through the coordinator: $step->[0]") or diag($err);
}

# the admin deletes (one DELETE naming tenant_id, built by _row_delete and
# routed to the tenant's shard) remove the row and audit it
is($coord->safe_psql('postgres', q{
	SELECT quota_ext.policy_set(2, 'gpt-*', true) > 0;
	SELECT quota_ext.rate_limit_set(2, 10, 60) AS rule \gset
	SELECT quota_ext.quota_set(2, 'day', 5, model => 'gpt-x') AS q \gset
	SELECT quota_ext.policy_delete(2, 'gpt-*'), quota_ext.rate_limit_delete(2, :rule),
	       quota_ext.quota_delete(2, :q);
	SELECT (SELECT count(*) FROM quota_ext.policies WHERE tenant_id = 2) || ' '
	    || (SELECT count(*) FROM quota_ext.rate_limits WHERE tenant_id = 2) || ' '
	    || (SELECT count(*) FROM quota_ext.quotas WHERE tenant_id = 2 AND quota_id = :q) || ' '
	    || (SELECT string_agg(action || ':' || (before IS NOT NULL), ',' ORDER BY action)
	          FROM quota_ext.audit_log WHERE tenant_id = 2 AND action LIKE '%_delete')}),
	"t\n||\n0 0 0 policy_delete:true,quota_delete:true,rate_limit_delete:true",
	'policy_delete, rate_limit_delete and quota_delete through the coordinator delete and audit');

# charges (issue 16): on Citus the storage module (storage.c) goes through SQL naming tenant_id
# (storage_spi.c); through the coordinator and
# delegated (SELECT f(...) runs on the worker that holds the tenant)
# (a field of the call's result, `(f(...)).allowed`, is not a call Citus
# delegates: it runs on the coordinator, and its usage row's id carries group
# 0; the call alone in the select list, or alone in FROM, is delegated; the
# decision's text starts with its allowed flag)
is($coord->safe_psql('postgres', q{SELECT (quota_ext.quota_consume(1, 'gpt-x', 1)).allowed}), 't',
	'quota_consume run on the coordinator charges');
like($coord->safe_psql('postgres', q{SELECT quota_ext.quota_consume(1, 'gpt-x', 2)}), qr/^\(t,/,
	'quota_consume delegated to the worker charges');
like($coord->safe_psql('postgres', q{SELECT quota_ext.quota_reserve(1, 'gpt-x', 1)}), qr/^\(t,/,
	'quota_reserve delegated charges');
# (tenant 1 has two quotas: its tier's monthly calls and the one set above)
is($coord->safe_psql('postgres', q{
	SELECT string_agg(c.used || ' ' || (SELECT sum(u.calls) FROM quota_ext.usage u WHERE u.tenant_id = 1), ',')
	  FROM quota_ext.quota_counters c WHERE c.tenant_id = 1}), '3 3,3 3',
	'tenant 1: each counter equals the ledger, seen through the coordinator');
# where a charge for tenant 1 runs its counter statements in its own backend
# (and so sees its own waits): only on the worker holding the tenant's shard;
# elsewhere recheck_after_wait asks anyway (QuotaCitusCountersLocal)
{
	my $holder = $coord->safe_psql('postgres', q{
		SELECT p.nodeport FROM pg_dist_shard_placement p
		 WHERE p.shardid = get_shard_id_for_distribution_column('quota_ext.quota_counters', 1)});
	is(join(' ', map { $_->safe_psql('postgres', 'SELECT quota_ext._citus_counters_local(1)') } ($coord, $w1, $w2)),
		join(' ', 'f', map { $_->port == $holder ? 't' : 'f' } ($w1, $w2)),
		'tenant 1\'s counters are local on the worker holding them only (coordinator, worker1, worker2)');
}
# reservations settled and cancelled through the coordinator (the reservation's
# lock names the tenant argument for every table it reads, so Citus routes it):
# a settle delegated, a cancel run on the coordinator; each counter equals the
# ledger after; the replays of both (run on the coordinator) answer the rows
# the first calls wrote (the closing row read in a statement of its own)
like($coord->safe_psql('postgres', q{
	SELECT quota_ext.policy_set(2, 'gpt-x', true) > 0;
	SELECT (quota_ext.quota_reserve(2, 'gpt-x', 5)).reservation_id AS r1 \gset
	SELECT (quota_ext.quota_reserve(2, 'gpt-x', 4)).reservation_id AS r2 \gset
	SELECT quota_ext.quota_settle(2, :r1, 3);
	SELECT (quota_ext.quota_cancel(2, :r2)).allowed;
	SELECT string_agg(r.status, ',' ORDER BY r.reservation_id) FROM quota_ext.reservations r
	 WHERE r.tenant_id = 2;
	SELECT bool_and(c.used = (SELECT sum(u.calls) FROM quota_ext.usage u WHERE u.tenant_id = 2))
	  FROM quota_ext.quota_counters c WHERE c.tenant_id = 2;
	SELECT (quota_ext.quota_settle(2, :r1, 3)).usage_id AS s1 \gset
	SELECT (quota_ext.quota_cancel(2, :r2)).usage_id AS c1 \gset
	SELECT string_agg(u.kind, ',' ORDER BY u.kind) FROM quota_ext.usage u
	 WHERE u.tenant_id = 2 AND u.usage_id IN (:s1, :c1)}),
	qr/^t\n\(t,[^\n]*\nt\nsettled,cancelled\nt\nrelease,settle$/,
	'quota_settle (delegated) and quota_cancel (on the coordinator) through the coordinator; counters equal the ledger; '
	  . 'their replays answer the settle and release rows');
for my $n (@nodes)
{
	# (a query would go through Citus to the shards: the local heap's size)
	is($n->safe_psql('postgres', q{SELECT pg_relation_size('quota_ext.usage_default')}), '0',
		'nothing written to the extension\'s local (shell) ledger on ' . $n->name);
}
is($coord->safe_psql('postgres', qq{
	SELECT (SELECT count(*) FROM quota_ext.$this_month) = (SELECT count(*) FROM quota_ext.usage)
	       AND (SELECT count(*) FROM quota_ext.$this_month WHERE tenant_id = 1) > 0}), 't',
	"the charges landed in $this_month, the partition usage_partitions_maintain() made");
for my $n (@nodes)
{
	is($n->safe_psql('postgres', qq{SELECT pg_relation_size('quota_ext.$this_month')}), '0',
		"nothing written to the local (shell) $this_month on " . $n->name);
}
my $groups = $coord->safe_psql('postgres', q{SELECT string_agg(DISTINCT (usage_id >> 48)::text, ',' ORDER BY (usage_id >> 48)::text) FROM quota_ext.usage});
like($groups, qr/^0,[12]$/, "usage ids carry the Citus group of the node that wrote them in their high bits ($groups)");

# delegated consume under pgbench: 4 tenants (on both workers), 16 clients,
# every call through the coordinator, 50 calls allowed per tenant and month
# (enterprise: no tier quota and no rate limit, whose buckets are per node)
my @t = map { $coord->safe_psql('postgres', "SELECT quota_ext.tenant_create('bench$_', 'enterprise')") } 1 .. 4;
my @q;
for my $tid (@t)
{
	$coord->safe_psql('postgres', "SELECT quota_ext.policy_set($tid, 'gpt-x', true)");
	push @q, $coord->safe_psql('postgres', "SELECT quota_ext.quota_set($tid, 'month', 50, model => 'gpt-x')");
}
is($coord->safe_psql('postgres', qq{
	SELECT count(DISTINCT p.nodeport) FROM pg_dist_shard_placement p
	 WHERE p.shardid IN (SELECT get_shard_id_for_distribution_column('quota_ext.quota_counters', t)
	                       FROM unnest(ARRAY[@{[ join(',', @t) ]}]::bigint[]) t)}), '2',
	'the pgbench tenants live on both workers');
$coord->pgbench(
	"--no-vacuum --client=16 --jobs=4 --transactions=25 --define=tmin=$t[0] --define=tmax=$t[3]",
	0,
	[qr{number of transactions actually processed: 400/400}],
	[qr{^$}],
	'pgbench: 400 delegated quota_consume calls through the coordinator without error',
	{ '090_citus_consume' => q{
\set t random(:tmin, :tmax)
SELECT quota_ext.quota_consume(:t, 'gpt-x', 1);
} });
is($coord->safe_psql('postgres', qq{
	SELECT string_agg(format('%s: used %s ledger %s', c.tenant_id, c.used, coalesce(l.calls, 0)), '; ')
	  FROM (SELECT tenant_id, sum(used) AS used FROM quota_ext.quota_counters
	         WHERE tenant_id BETWEEN $t[0] AND $t[3] GROUP BY tenant_id) c
	  LEFT JOIN (SELECT tenant_id, sum(calls) AS calls FROM quota_ext.usage GROUP BY tenant_id) l USING (tenant_id)
	 WHERE c.used <> coalesce(l.calls, 0) OR c.used > 50}), '',
	'after pgbench every tenant\'s counters (summed over the escrow slots automatic escrow laid out) equal its ledger and none is over its limit');
# automatic escrow grows no quota on Citus (a re-layout is a cluster-wide
# configuration change; doc/scaling.md): 16 clients on 4 tenants queued on
# their counters, and neither the workers' passes nor one run here spread them
is(join(' ', map { $_->safe_psql('postgres', 'SELECT quota_ext.escrow_adapt()') } ($w1, $w2)) . ' '
   . $coord->safe_psql('postgres', qq{SELECT count(*) FROM quota_ext.quotas WHERE tenant_id BETWEEN $t[0] AND $t[3] AND slots > 1}),
	'0 0 0', 'after pgbench: an escrow pass on each worker lays nothing out, and no quota of the pgbench tenants has slots');
is($coord->safe_psql('postgres', qq{
	SELECT count(DISTINCT quota_id) || ' ' || sum(used) FROM quota_ext.quota_counters WHERE tenant_id BETWEEN $t[0] AND $t[3]}), '4 200',
	'400 calls for 4 x 50 allowed: exactly 200 charged');
is($coord->safe_psql('postgres', 'SELECT count(*) - count(DISTINCT usage_id) FROM quota_ext.usage'), '0',
	'usage ids are unique across the nodes');
# a re-layout by hand, automatic escrow's own path (on Citus it writes the
# quota row first, which holds a shard move off): a pgbench tenant's quota
# out to 4 slots and back to one, its count kept
is($coord->safe_psql('postgres', qq{
	SELECT quota_ext._escrow_relayout($t[0], $q[0], 4);
	SELECT q.slots || ' ' || (SELECT sum(c.used) FROM quota_ext.quota_counters c
	                           WHERE c.tenant_id = $t[0] AND c.quota_id = $q[0])
	  FROM quota_ext.quotas q WHERE q.tenant_id = $t[0] AND q.quota_id = $q[0];
	SELECT quota_ext._escrow_relayout($t[0], $q[0], 1);
	SELECT q.slots || ' ' || (SELECT sum(c.used) FROM quota_ext.quota_counters c
	                           WHERE c.tenant_id = $t[0] AND c.quota_id = $q[0])
	  FROM quota_ext.quotas q WHERE q.tenant_id = $t[0] AND q.quota_id = $q[0]}),
	"t\n4 50\nt\n1 50", 'a re-layout through the coordinator: 4 slots and back to one, the 50 calls kept');

# invoke through the coordinator: the key is read there, the charge goes to
# the tenant's shard
my $bob_key = $coord->safe_psql('postgres', q{SELECT api_key FROM quota_ext.user_create(1, 'bob@acme.test')});
my $bob_kid = $coord->safe_psql('postgres', q{SELECT max(key_id) FROM quota_ext.api_keys WHERE tenant_id = 1});
is($coord->safe_psql('postgres', qq{SELECT allowed FROM quota_ext.invoke('$bob_key', 'gpt-x')}), 't',
	'invoke through the coordinator charges');
is($coord->safe_psql('postgres', q{
	SELECT count(DISTINCT c.used::text || '=' || (SELECT sum(u.calls) FROM quota_ext.usage u WHERE u.tenant_id = 1))
	  FROM quota_ext.quota_counters c WHERE c.tenant_id = 1}) . ' '
   . $coord->safe_psql('postgres', q{SELECT min(used) FROM quota_ext.quota_counters WHERE tenant_id = 1}), '1 4',
	'tenant 1 after invoke: 4 calls on each counter and in the ledger');

# The configuration cache is on under Citus (src/cache.c, doc/scaling.md):
# every node compares its entries with its placement of the reference table
# quota_ext.config_generation, which every change moves in its own
# transaction.  The shared level's counters show it is used: a second
# session on a node finds the key the first one filed (a hit), which cannot
# happen with the cache off.
my $cache_counts = sub {
	my ($node) = @_;
	return split /\|/, $node->safe_psql('postgres', 'SELECT hits, filed FROM quota_ext.shared_cache_status()');
};
is($coord->safe_psql('postgres', q{
	SELECT count(*) FROM pg_dist_partition WHERE logicalrelid = 'quota_ext.config_generation'::regclass AND partmethod = 'n'}), '1',
	'config_generation is a reference table');
my $gen_shard = 'config_generation_' . $coord->safe_psql('postgres', q{
	SELECT shardid FROM pg_dist_shard WHERE logicalrelid = 'quota_ext.config_generation'::regclass});
for my $n (@nodes)
{
	is($n->safe_psql('postgres', "SELECT to_regclass('quota_ext.$gen_shard') IS NOT NULL"), 't',
		$n->name . ' has a placement of config_generation (its cache reads it)');
}

# a key revoked on the coordinator is refused at once on every worker:
# sessions on both workers authenticate with it twice (the second call is a
# hit of the session's own cache), a second session on each worker once (a
# hit of the worker's shared level), then it is revoked through the
# coordinator and every session is refused at its next call
my @sess = map { $_->background_psql('postgres', on_error_stop => 0) } ($w1, $w2, $w1, $w2);
for my $i (0, 1)
{
	my ($hits0, $filed0) = $cache_counts->($nodes[ $i + 1 ]);
	for my $round (1, 2)
	{
		is($sess[$i]->query_safe(qq{SELECT (quota_ext.authenticate('$bob_key')).tenant_id}), '1',
			"worker" . ($i + 1) . ": the key authenticates (call $round)");
	}
	my ($hits1, $filed1) = $cache_counts->($nodes[ $i + 1 ]);
	cmp_ok($filed1, '>', $filed0, 'worker' . ($i + 1) . ': the key was filed in the shared cache');
	is($sess[ $i + 2 ]->query_safe(qq{SELECT (quota_ext.authenticate('$bob_key')).tenant_id}), '1',
		"worker" . ($i + 1) . ": a second session authenticates with the key");
	my ($hits2) = $cache_counts->($nodes[ $i + 1 ]);
	cmp_ok($hits2, '>', $hits1, 'worker' . ($i + 1) . ': the second session found the key in the shared cache (a hit)');
}
$coord->safe_psql('postgres', "SELECT quota_ext.api_key_revoke(1, $bob_kid)");
for my $i (0 .. 3)
{
	my $w = 'worker' . ($i % 2 + 1) . ($i > 1 ? ', second session' : '');
	my $res = $sess[$i]->query(qq{\\set VERBOSITY verbose\nSELECT (quota_ext.authenticate('$bob_key')).tenant_id});
	is($res, '', "$w: right after the revoke the key gives no tenant");
	like($sess[$i]->{stderr}, qr/28000/, "$w: the revoked key is refused (28000)");
	$sess[$i]->quit;
}

# a policy changed through the coordinator is applied at once by
# policy_check on both workers (run there: in a transaction block Citus
# does not delegate the call), each session having its answer cached first
{
	my $pc = q{BEGIN; SELECT x FROM quota_ext.policy_check(1, 'gpt-x') x; COMMIT;};
	my @ps = map { $_->background_psql('postgres', on_error_stop => 0) } ($w1, $w2);
	for my $i (0, 1)
	{
		is($ps[$i]->query_safe($pc), 't', 'worker' . ($i + 1) . ": policy_check allows (call $_)") for 1 .. 2;
	}
	$coord->safe_psql('postgres', q{SELECT quota_ext.policy_set(1, 'gpt-x', false)});
	is($ps[$_]->query_safe($pc), 'f', 'worker' . ($_ + 1) . ': right after policy_set(..., false) policy_check refuses')
		for 0, 1;
	$coord->safe_psql('postgres', q{SELECT quota_ext.policy_set(1, 'gpt-x', true)});
	is($ps[$_]->query_safe($pc), 't', 'worker' . ($_ + 1) . ': allowed again right after policy_set(..., true)')
		for 0, 1;
	$_->quit for @ps;
}

# new tenants until one lives on each worker: port => tenant id
my $tenant_on_each_worker = sub {
	my ($prefix) = @_;
	my %on;
	while (keys %on < 2)
	{
		my $tid = $coord->safe_psql('postgres', qq{SELECT quota_ext.tenant_create('$prefix' || (random() * 1e9)::bigint, 'enterprise')});
		my $port = $coord->safe_psql('postgres', qq{
			SELECT p.nodeport FROM pg_dist_shard_placement p
			 WHERE p.shardid = get_shard_id_for_distribution_column('quota_ext.quota_counters', $tid)});
		$on{$port} //= $tid;
	}
	return %on;
};

# a limit lowered through the coordinator is applied at once by delegated
# quota_consume on both workers: one tenant on each, its definitions cached
# by the calls before (filed in the shared level of the worker holding it)
{
	my %on = $tenant_on_each_worker->('lower');
	for my $w ($w1, $w2)
	{
		my $tid = $on{ $w->port };
		$coord->safe_psql('postgres', "SELECT quota_ext.policy_set($tid, 'gpt-x', true)");
		$coord->safe_psql('postgres', "SELECT quota_ext.quota_set($tid, 'month', 10, model => 'gpt-x')");
		# (the function alone in the select list: Citus delegates it; the
		# result row's first field is allowed)
		my $consume = qq{SELECT quota_ext.quota_consume($tid, 'gpt-x', 1)};
		my (undef, $filed0) = $cache_counts->($w);
		like($coord->safe_psql('postgres', $consume), qr/^\(t,/,
			'tenant ' . $tid . ' on ' . $w->name . ": delegated consume allowed (call $_)") for 1 .. 3;
		my (undef, $filed1) = $cache_counts->($w);
		cmp_ok($filed1, '>', $filed0, $w->name . ': the delegated calls filed their configuration in its shared cache');
		$coord->safe_psql('postgres', "SELECT quota_ext.quota_set($tid, 'month', 3, model => 'gpt-x')");
		like($coord->safe_psql('postgres', $consume), qr/^\(f,/,
			'tenant ' . $tid . ' on ' . $w->name . ': right after the limit was lowered to 3, the fourth delegated call is denied');
	}
}

# A delegated consume that waited for its tenant's counter asks whether the
# configuration changed meanwhile by reading the generation where the
# tenant's shards are (QuotaConfigUnchanged), instead of reading it all
# again: a charge that waited behind a plain charge goes through; one that
# waited behind a transaction that also revoked the model's policy is denied
# (admin_race.spec's case, on Citus).  The holder runs on the coordinator in
# a transaction block; the waiter is delegated to the worker holding the
# tenant, where its configuration is cached.
{
	my %on = $tenant_on_each_worker->('waiter');
	for my $w ($w1, $w2)
	{
		my $tid = $on{ $w->port };
		$coord->safe_psql('postgres', "SELECT quota_ext.policy_set($tid, 'gpt-x', true)");
		$coord->safe_psql('postgres', "SELECT quota_ext.quota_set($tid, 'month', 100, model => 'gpt-x', slots => 1)");
		my %consume = (
			# alone in the select list: delegated to the worker
			delegated => qq{SELECT quota_ext.quota_consume($tid, 'gpt-x', 1)},
			# a field of the result: runs on the coordinator, its counter
			# statements (and their waits) on the worker
			coordinator => qq{SELECT (quota_ext.quota_consume($tid, 'gpt-x', 1)).allowed});
		like($coord->safe_psql('postgres', $consume{delegated}), qr/^\(t,/, "tenant $tid on " . $w->name . ': delegated consume allowed (cached)');
		for my $case ([ 'delegated', 0 ], [ 'delegated', 1 ], [ 'coordinator', 0 ], [ 'coordinator', 1 ])
		{
			my ($where, $revoke) = @$case;
			my $consume = $consume{$where};
			my $what = $revoke ? 'a charge and a policy revoke' : 'a plain charge';
			my $holder = $coord->background_psql('postgres');
			$holder->query_safe('BEGIN');
			is($holder->query_safe(qq{SELECT (quota_ext.quota_consume($tid, 'gpt-x', 1)).allowed}), 't',
				"tenant $tid: $what on the coordinator, its transaction left open");
			$holder->query_safe(qq{SELECT quota_ext.policy_set($tid, 'gpt-x', false)}) if $revoke;
			my ($wout, $werr) = ('', '');
			my $waiter = IPC::Run::start([ 'psql', '-X', '-At', '-h', $coord->host, '-p', $coord->port,
				'-d', 'postgres', '-c', $consume ], '>', \$wout, '2>', \$werr);
			ok($w->poll_query_until('postgres', q{
				SELECT count(*) > 0 FROM pg_stat_activity
				 WHERE wait_event_type = 'Lock' AND (query LIKE '%quota_consume%' OR query LIKE '%quota_counters%')}),
				"tenant $tid: the $where consume waits on " . $w->name . " behind $what");
			$holder->query_safe('COMMIT');
			$holder->quit;
			$waiter->finish;
			if ($revoke)
			{
				like($wout, $where eq 'delegated' ? qr/^\(f,/ : qr/^f$/,
					"tenant $tid: the $where waiter is denied once the revoke committed (it read the change)")
					or diag("$wout $werr");
				$coord->safe_psql('postgres', "SELECT quota_ext.policy_set($tid, 'gpt-x', true)");
			}
			else
			{
				like($wout, $where eq 'delegated' ? qr/^\(t,/ : qr/^t$/,
					"tenant $tid: the $where waiter is allowed after the plain charge committed")
					or diag("$wout $werr");
			}
		}
		is($coord->safe_psql('postgres', qq{
			SELECT sum(c.used) || ' ' || (SELECT sum(u.calls) FROM quota_ext.usage u WHERE u.tenant_id = $tid)
			  FROM quota_ext.quota_counters c WHERE c.tenant_id = $tid}), '7 7',
			"tenant $tid: 7 charges, the counter equals the ledger");
	}
}

# The two-phase-commit window: a change through the coordinator commits
# there first, then COMMIT PREPARED on each worker in turn.  Held here by
# hand, deterministically: on the worker holding tenant 1 its policy row and
# that worker's placement of the generation change in a transaction left
# PREPAREd, while the coordinator's and the other worker's placements already
# moved (as after their commits).  Requests on those nodes read the new
# generation, miss, and fill from the holding worker, where the change is
# not committed: the answer they get then must not be kept, so right after
# COMMIT PREPARED every node refuses.
{
	my $hold = $coord->safe_psql('postgres', q{
		SELECT p.nodeport FROM pg_dist_shard_placement p
		 WHERE p.shardid = get_shard_id_for_distribution_column('quota_ext.policies', 1)});
	my ($dw, $ow) = $hold == $w1->port ? ($w1, $w2) : ($w2, $w1);
	my $pol_shard = 'policies_' . $coord->safe_psql('postgres', q{SELECT get_shard_id_for_distribution_column('quota_ext.policies', 1)});
	# (in a transaction block: run on the node itself, not delegated)
	my $pc = q{BEGIN; SELECT x FROM quota_ext.policy_check(1, 'gpt-x') x; COMMIT;};
	my @s = map { $_->background_psql('postgres', on_error_stop => 0) } ($coord, $ow, $dw);
	my @names = ('coordinator', 'the other worker (' . $ow->name . ')', 'the holding worker (' . $dw->name . ')');
	is($s[$_]->query_safe($pc), 't', "2PC window: $names[$_] allows before the change (cached)") for 0 .. 2;
	$dw->safe_psql('postgres', qq{
		SET citus.enable_manual_changes_to_shards = on;
		BEGIN;
		UPDATE quota_ext.$pol_shard SET allowed = false WHERE tenant_id = 1 AND model_pattern = 'gpt-x';
		UPDATE quota_ext.$gen_shard SET generation = generation + 1;
		PREPARE TRANSACTION 'quota_cache_window';});
	for my $n ($coord, $ow)
	{
		$n->safe_psql('postgres', qq{
			SET citus.enable_manual_changes_to_shards = on;
			UPDATE quota_ext.$gen_shard SET generation = generation + 1;});
	}
	# in the window either answer is allowed (the change's COMMIT has not
	# returned); these are the answers filled from the uncommitted side
	note("2PC window: $names[$_] answers " . $s[$_]->query_safe($pc)) for 0 .. 2;
	$dw->safe_psql('postgres', q{COMMIT PREPARED 'quota_cache_window'});
	is($s[$_]->query_safe($pc), 'f', "2PC window: right after COMMIT PREPARED $names[$_] refuses (no stale entry kept)")
		for 0 .. 2;
	is($ow->safe_psql('postgres', $pc), 'f', '2PC window: a new session on the other worker refuses too (shared level)');
	$_->quit for @s;
	$coord->safe_psql('postgres', q{SELECT quota_ext.policy_set(1, 'gpt-x', true)});
	is($coord->safe_psql('postgres', $pc), 't', 'tenant 1 allowed again');
}

# a tenant's shards moved to the other worker (citus_move_shard_placement,
# block_writes: no logical replication needed) while pgbench charges it:
# nothing lost, nothing counted twice.  A charge whose counter was locked on
# the old placement and is written after the switch gets 40001 from the
# compare-and-set of its UPDATE (storage_spi.c); pgbench retries those
# (--max-tries), as a client should, and every round succeeds in the end.
# $move_under_load: run `script` $rounds times on each of 4 clients while
# the tenant's shards move; checks the move, the rounds and the placement.
my $move_under_load = sub {
	my ($tenant, $what, $script, $rounds) = @_;
	my ($shard, $from) = split /\|/, $coord->safe_psql('postgres', qq{
		SELECT s, p.nodeport FROM get_shard_id_for_distribution_column('quota_ext.quota_counters', $tenant) s
		  JOIN pg_dist_shard_placement p ON p.shardid = s});
	my $to = $from == $w1->port ? $w2->port : $w1->port;
	my $dir = PostgreSQL::Test::Utils::tempdir();
	PostgreSQL::Test::Utils::append_to_file("$dir/move.sql", $script);
	my ($bout, $berr) = ('', '');
	my $bench = IPC::Run::start([ 'pgbench', '-n', '-c', 4, '-j', 2, '-t', $rounds, '--max-tries=100',
		'-f', "$dir/move.sql", '-h', $coord->host, '-p', $coord->port, 'postgres' ],
		'>', \$bout, '2>', \$berr);
	my ($rc, $out, $err) = $coord->psql('postgres', qq{
		SELECT citus_move_shard_placement($shard, '127.0.0.1', $from, '127.0.0.1', $to,
		                                  shard_transfer_mode => 'block_writes')});
	is($rc, 0, "tenant ${tenant}'s shards moved from port $from to $to under $what") or diag($err);
	$bench->finish;
	my $total = 4 * $rounds;
	like($bout, qr{number of transactions actually processed: $total/$total},
		"pgbench: $total rounds of $what during the move, none failed") or diag($berr);
	my ($retried) = $bout =~ /^(number of transactions retried: .*)$/m;
	note("$what during the move: " . ($retried // 'no retry line'));
	is($coord->safe_psql('postgres', qq{
		SELECT p.nodeport FROM pg_dist_shard_placement p
		 WHERE p.shardid = get_shard_id_for_distribution_column('quota_ext.quota_counters', $tenant)}), $to,
		"tenant $tenant now lives on the other worker");
};
{
	my $mt = $coord->safe_psql('postgres', "SELECT quota_ext.tenant_create('mover', 'enterprise')");
	$coord->safe_psql('postgres', "SELECT quota_ext.policy_set($mt, 'gpt-x', true)");
	$coord->safe_psql('postgres', "SELECT quota_ext.quota_set($mt, 'month', 1000000, model => 'gpt-x')");
	$move_under_load->($mt, 'delegated consume', "SELECT quota_ext.quota_consume($mt, 'gpt-x', 1);\n", 150);
	is($coord->safe_psql('postgres', qq{
		SELECT sum(c.used) || ' ' || (SELECT count(*) || ' ' || sum(u.calls) FROM quota_ext.usage u WHERE u.tenant_id = $mt)
		  FROM quota_ext.quota_counters c WHERE c.tenant_id = $mt}), '600 600 600',
		'after the move: 600 charged, 600 usage rows, the counter equals the ledger');
}

# a counter meter during a move: meter_consume runs on the coordinator, its
# counter locked by a routed SELECT ... FOR NO KEY UPDATE and written with a
# compare-and-set (40001 and a retry if the move switched in between); the
# counter equals the meter's ledger after
{
	my $gt = $coord->safe_psql('postgres', "SELECT quota_ext.tenant_create('metered', 'enterprise')");
	$coord->safe_psql('postgres', qq{
		SELECT quota_ext.meter_create('gpu_seconds', 's');
		SELECT quota_ext.quota_set($gt, 'month', 1000000, meter => 'gpu_seconds');});
	$move_under_load->($gt, 'meter_consume', "SELECT quota_ext.meter_consume($gt, 'gpu_seconds', 2);\n", 100);
	is($coord->safe_psql('postgres', qq{
		SELECT sum(c.used) || ' ' || (SELECT count(*) || ' ' || sum(u.amount) FROM quota_ext.meter_usage u
		                              WHERE u.tenant_id = $gt)
		  FROM quota_ext.meter_counters c WHERE c.tenant_id = $gt}), '800 400 800',
		'after the move: 400 meter charges of 2, the meter counter equals its ledger');
}

# gauges through the coordinator and during a move: gauge_adjust locks the
# level row by a routed SELECT ... FOR NO KEY UPDATE and writes it with a
# compare-and-set (40001 and a retry if the move switched in between); past a
# blocking quota it answers allowed = false, below 0 it raises 22003;
# user_create moves the built-in gauge 'users', and the tenant's quota on it
# refuses a third user (53400).  Each pgbench round moves the gauge up and
# down in one transaction, so a round retried after a 40001 redoes both; the
# level equals the sum of its ledger after, and is back where it was.
{
	my $gg = $coord->safe_psql('postgres', "SELECT quota_ext.tenant_create('gauged', 'enterprise')");
	$coord->safe_psql('postgres', qq{
		SELECT quota_ext.meter_create('seats', 'seat', 'gauge');
		SELECT quota_ext.quota_set($gg, 'lifetime', 10, meter => 'seats');});
	is($coord->safe_psql('postgres', qq{
		SELECT string_agg(x, ' ' ORDER BY n) FROM (
		  SELECT 1 AS n, (SELECT allowed || '/' || remaining FROM quota_ext.gauge_adjust($gg, 'seats', 7)) AS x
		  UNION ALL SELECT 2, (SELECT allowed || '/' || denied_metric FROM quota_ext.gauge_adjust($gg, 'seats', 4))
		  UNION ALL SELECT 3, (SELECT allowed || '/' || remaining FROM quota_ext.gauge_adjust($gg, 'seats', -5))) s}),
		'true/3 false/gauge true/8',
		'gauge_adjust through the coordinator: up, refused past the cap, down');
	my ($rc, $out, $err) = $coord->psql('postgres',
		"\\set VERBOSITY verbose\nSELECT quota_ext.gauge_adjust($gg, 'seats', -3)");
	like($err, qr/22003: gauge "seats" of tenant $gg cannot go below 0/,
		'gauge_adjust below 0 is refused (22003) on Citus too');
	$coord->safe_psql('postgres', "SELECT quota_ext.quota_set($gg, 'lifetime', 2, meter => 'users')");
	$coord->safe_psql('postgres', qq{
		SELECT quota_ext.user_create($gg, 'a\@x', 'member');
		SELECT quota_ext.user_create($gg, 'b\@x', 'member');});
	($rc, $out, $err) = $coord->psql('postgres',
		"\\set VERBOSITY verbose\nSELECT quota_ext.user_create($gg, 'c\@x', 'member')");
	like($err, qr/53400: tenant $gg has 2 users, the most its quota on users allows/,
		"user_create past the tenant's quota on 'users' is refused (53400)");
	is($coord->safe_psql('postgres', "SELECT count(*) FROM quota_ext.users u WHERE u.tenant_id = $gg"), '2',
		'...and created no user');
	$move_under_load->($gg, 'gauge_adjust',
		"BEGIN;\nSELECT quota_ext.gauge_adjust($gg, 'seats', 1);\nSELECT quota_ext.gauge_adjust($gg, 'seats', -1);\nCOMMIT;\n",
		100);
	is($coord->safe_psql('postgres', qq{
		SELECT string_agg(m.name || '=' || l.level || '/' || coalesce(
		         (SELECT sum(u.amount) FROM quota_ext.meter_usage u
		           WHERE u.tenant_id = $gg AND u.meter_id = l.meter_id), 0), ' ' ORDER BY m.name)
		  FROM quota_ext.meter_levels l JOIN quota_ext.meters m ON m.meter_id = l.meter_id
		 WHERE l.tenant_id = $gg}), 'seats=2/2 users=2/2',
		'after the move: 800 gauge moves, every level equals its ledger');
}

# adjustments and escrow slots during a move: a tenant with a single-row
# calls quota, a single-row units quota and a units quota over 4 escrow
# slots; pgbench consumes and refunds (the refund runs on the coordinator,
# statement by statement) while its shards move.  Every counter equals the ledger
# after.
{
	my $at = $coord->safe_psql('postgres', "SELECT quota_ext.tenant_create('adjuster', 'enterprise')");
	$coord->safe_psql('postgres', qq{
		SELECT quota_ext.policy_set($at, 'gpt-x', true);
		SELECT quota_ext.quota_set($at, 'month', 1000000000, model => 'gpt-x');
		SELECT quota_ext.quota_set($at, 'month', 1000000000, model => 'gpt-x', metric => 'units');
		SELECT quota_ext.quota_set($at, 'month', 1000000000, metric => 'units', slots => 4);});
	is($coord->safe_psql('postgres', qq{
		SELECT string_agg(q.metric || ' ' || q.slots || ' ' || (SELECT count(*) FROM quota_ext.quota_counters c
		                                                        WHERE c.tenant_id = $at AND c.quota_id = q.quota_id),
		                  ',' ORDER BY q.quota_id)
		  FROM quota_ext.quotas q WHERE q.tenant_id = $at}), 'calls 1 1,units 1 1,units 4 4',
		"tenant $at: a calls and a units quota on one row each, a units quota over 4 slots");
	$move_under_load->($at, 'consume, refund and consume', qq{\\set u random(1, 5)
SELECT usage_id AS uid FROM quota_ext.quota_consume($at, 'gpt-x', :u) \\gset
SELECT quota_ext.quota_refund($at, :uid);
SELECT quota_ext.quota_consume($at, 'gpt-x', 2);
}, 40);
	my ($calls, $units, $rows) = split /\|/, $coord->safe_psql('postgres', qq{
		SELECT sum(u.calls), sum(u.units), count(*) FROM quota_ext.usage u WHERE u.tenant_id = $at});
	# each round nets 1 call and 2 units (its first consume is refunded); a
	# round retried after a step committed keeps what that step did
	cmp_ok($calls, '>=', 160, "the ledger: $calls calls, $units units in $rows rows");
	is($coord->safe_psql('postgres', qq{
		SELECT string_agg(q.metric || ' ' || q.slots || ': ' || c.used, ',' ORDER BY q.quota_id)
		  FROM quota_ext.quotas q
		  JOIN (SELECT quota_id, sum(used) AS used FROM quota_ext.quota_counters
		         WHERE tenant_id = $at GROUP BY quota_id) c USING (quota_id)
		 WHERE q.tenant_id = $at}), "calls 1: $calls,units 1: $units,units 4: $units",
		'after the move every counter (summed over the slots) equals the ledger');
}

my ($as_app, $isolation_key);
# Isolation through the coordinator and on the workers (issue 16): the
# context set on the coordinator reaches the workers' RLS as a signed token
# bound to the distributed transaction and the login (src/context_citus.c)
{
	$coord->safe_psql('postgres', q{
		CREATE ROLE app_login LOGIN IN ROLE quota_ext_app;
		CREATE ROLE admin_login LOGIN IN ROLE quota_ext_admin;});
	my $k1 = $coord->safe_psql('postgres', q{SELECT api_key FROM quota_ext.user_create(1, 'carol@acme.test')});
	my $k2 = $coord->safe_psql('postgres', q{SELECT api_key FROM quota_ext.user_create(2, 'dave@globex.test')});
	my $as = sub {
		my ($node, $login, $sql) = @_;
		my ($rc, $out, $err) = $node->psql('postgres', $sql, extra_params => [ '-U', $login ]);
		return $rc == 0 ? $out : "error: $err";
	};
	$as_app = sub { $as->($coord, 'app_login', $_[0]) };
	$isolation_key = $k1;
	is($as->($coord, 'app_login', qq{
		BEGIN;
		SELECT FROM quota_ext.authenticate('$k1');
		SELECT string_agg(DISTINCT tenant_id::text, ',') FROM quota_ext.users;
		COMMIT;}), '1',
		'app through the coordinator, tenant 1\'s key: it sees its own users and only those');
	is($as->($coord, 'app_login', qq{
		BEGIN;
		SELECT FROM quota_ext.authenticate('$k2');
		SELECT count(*) FILTER (WHERE tenant_id = 2) > 0, count(*) FILTER (WHERE tenant_id <> 2) FROM quota_ext.users;
		COMMIT;}), 't|0',
		'app through the coordinator, tenant 2\'s key: own rows visible, none of tenant 1');
	is($as->($coord, 'app_login', qq{
		BEGIN;
		SELECT FROM quota_ext.authenticate('$k1');
		SELECT string_agg(DISTINCT quota_ext.current_tenant_id()::text, ',') FROM quota_ext.users;
		COMMIT;}), '1',
		'current_tenant_id() evaluated on the workers\' shards is the coordinator\'s tenant');
	# the ledger's rows are all in the partition maintenance made on Citus
	is($as->($coord, 'app_login', qq{
		BEGIN;
		SELECT FROM quota_ext.authenticate('$k1');
		SELECT string_agg(DISTINCT tenant_id::text, ',') || ' ' || count(*) FROM quota_ext.usage;
		COMMIT;}), '1 ' . $coord->safe_psql('postgres', "SELECT count(*) FROM quota_ext.$this_month WHERE tenant_id = 1"),
		"app, tenant 1's key: in $this_month it sees tenant 1's rows, all of them, and no other tenant's");
	like($as->($coord, 'app_login', qq{
		BEGIN;
		SELECT FROM quota_ext.authenticate('$k1');
		SELECT count(*) FROM quota_ext.$this_month;
		COMMIT;}), qr/permission denied/, "app: $this_month itself is not readable (as on a single node)");
	{
		my $shard = $w1->safe_psql('postgres', qq{
			SET citus.override_table_visibility = off;
			SELECT c.relname FROM pg_class c
			 WHERE c.relnamespace = 'quota_ext'::regnamespace AND c.relname ~ '^${this_month}_[0-9]+\$' LIMIT 1});
		like($as->($w1, 'app_login', qq{SELECT count(*) FROM quota_ext.$shard}), qr/permission denied/,
			"app on worker1 directly: a shard of $this_month is not readable");
	}
	is($as->($coord, 'app_login', q{SELECT count(*) FROM quota_ext.users}), '0',
		'app through the coordinator without a context: no rows');
	is($as->($coord, 'app_login', qq{
		BEGIN;
		SELECT FROM quota_ext.authenticate('$k1');
		SAVEPOINT s;
		SELECT FROM quota_ext.authenticate('$k2');
		ROLLBACK TO SAVEPOINT s;
		SELECT string_agg(DISTINCT tenant_id::text, ',') FROM quota_ext.users;
		COMMIT;}), '1',
		'ROLLBACK TO SAVEPOINT undoes a later authenticate on the workers too');

	# a genuine token, seen in its own transaction
	my $tok = $as->($coord, 'app_login', qq{
		BEGIN;
		SELECT FROM quota_ext.authenticate('$k2');
		SELECT count(*) FROM quota_ext.users;
		SHOW quota_ext.context_token;
		COMMIT;});
	$tok = (split /\n/, $tok)[-1];
	like($tok, qr/^v2\.2\.\d+\.\d+\.[0-9a-f]*\.[0-9a-f]{64}$/, 'the coordinator published a signed token for tenant 2');
	for my $w ($w1, $w2)
	{
		my $forged = $tok =~ s/^v2\.2\./v2.1./r;
		for my $case ([ $tok, 'a replayed genuine token gives no context and no rows' ],
			[ $forged, 'a forged SET of the token (tenant changed) is ignored' ])
		{
			is($as->($w, 'app_login', qq{
				BEGIN;
				SET LOCAL quota_ext.context_token = '$case->[0]';
				SELECT coalesce(quota_ext.current_tenant_id()::text, 'none'), count(*) FROM quota_ext.users;
				COMMIT;}), 'none|0', 'on ' . $w->name . " directly: $case->[1]");
		}
		like($as->($w, 'app_login', qq{
			BEGIN;
			SET LOCAL quota_ext.context_token = '$forged';
			SELECT quota_ext.quota_consume(1, 'gpt-x', 1);
			COMMIT;}), qr/no tenant context/,
			'on ' . $w->name . ' directly: a forged token does not let the app charge tenant 1');
		like($as->($w, 'app_login', q{SELECT secret FROM quota_ext.citus_secret}), qr/permission denied/,
			'on ' . $w->name . ': the app cannot read the cluster secret');
	}
	# the same forged value SET on the coordinator and sent on by Citus
	is($as->($coord, 'app_login', qq{
		BEGIN;
		SET LOCAL citus.propagate_set_commands = 'local';
		SET LOCAL quota_ext.context_token = '$tok';
		SELECT coalesce(string_agg(DISTINCT tenant_id::text, ','), 'none') FROM quota_ext.users;
		COMMIT;}), 'none',
		'a replayed token SET on the coordinator and propagated by Citus shows no rows');

	# a context switched within one transaction reaches the workers: each
	# query between the switches sees the tenant of the latest call
	is($as->($coord, 'admin_login', q{
		BEGIN;
		SELECT FROM quota_ext.set_tenant(1);
		SELECT string_agg(DISTINCT tenant_id::text, ',') FROM quota_ext.users;
		SELECT FROM quota_ext.set_tenant(2);
		SELECT string_agg(DISTINCT tenant_id::text, ',') FROM quota_ext.users;
		SELECT FROM quota_ext.clear_tenant();
		SELECT string_agg(DISTINCT tenant_id::text, ',' ORDER BY tenant_id::text) FROM quota_ext.users WHERE tenant_id IN (1, 2);
		COMMIT;}), "1\n2\n1,2",
		'admin through the coordinator: after set_tenant(1) only tenant 1, after set_tenant(2) in the same transaction only 2, after clear_tenant() every tenant again');
	is($as->($coord, 'app_login', qq{
		BEGIN;
		SELECT FROM quota_ext.authenticate('$k1');
		SELECT string_agg(DISTINCT tenant_id::text, ',') FROM quota_ext.users;
		SELECT FROM quota_ext.authenticate('$k2');
		SELECT string_agg(DISTINCT tenant_id::text, ',') FROM quota_ext.users;
		COMMIT;}), "1\n2",
		'app: authenticate with A\'s key, then B\'s, in one transaction: B is answered with B\'s rows');

	# the replay of another transaction's token (review finding): the token,
	# the distributed transaction id and the originator's global PID are all
	# readable by the same login (citus_stat_activity); read here in the
	# victim's own transaction
	my ($vtok, $vinit, $vnum, $vts, $vgpid) = split /\|/, (split /\n/, $as->($coord, 'app_login', qq{
		BEGIN;
		SELECT FROM quota_ext.authenticate('$k2');
		SELECT count(*) FROM quota_ext.users;
		SELECT current_setting('quota_ext.context_token'), t.initiator_node_identifier, t.transaction_number,
		       t.transaction_stamp, citus_backend_gpid()
		  FROM get_current_transaction_id() t;
		COMMIT;}))[-1];
	like($vtok, qr/^v2\.2\./, 'the victim\'s token and transaction id were read');
	my $replay = qq{
		SELECT assign_distributed_transaction_id($vinit, $vnum, '$vts');
		SET LOCAL citus.propagate_set_commands = 'local';
		SET LOCAL quota_ext.context_token = '$vtok';};
	is($as->($coord, 'app_login', qq{
		BEGIN;
		$replay
		SELECT coalesce(quota_ext.current_tenant_id()::text, 'none');
		COMMIT;}), "\nnone",
		'replay on the coordinator under the victim\'s transaction id: the initiating node adopts no token');
	is($as->($coord, 'app_login', qq{
		BEGIN;
		$replay
		SELECT count(*) FROM quota_ext.api_keys;
		SELECT count(*) FROM quota_ext.users;
		SELECT coalesce(string_agg(DISTINCT quota_ext.current_tenant_id()::text, ','), 'none') FROM quota_ext.tenants;
		COMMIT;}), "\n0\n0\nnone",
		'replay through the coordinator: the workers get the attacker\'s global PID, adopt nothing, show no rows');
	for my $w ($w1, $w2)
	{
		is($as->($w, 'app_login', qq{
			BEGIN;
			$replay
			SELECT coalesce(quota_ext.current_tenant_id()::text, 'none'), count(*) FROM quota_ext.users;
			COMMIT;}), "\nnone|0",
			'replay on ' . $w->name . ' directly under the victim\'s transaction id: no context, no rows');
	}
	# a worker refuses a good token once its transaction is older than
	# quota_ext.citus_context_max_age (55000), even on a connection that
	# claims the victim's global PID in its application_name; waits until
	# the transaction is old enough (no timing assertion)
	$w1->safe_psql('postgres', q{ALTER SYSTEM SET quota_ext.citus_context_max_age = 1; SELECT pg_reload_conf()});
	$w1->poll_query_until('postgres', qq{SELECT clock_timestamp() > '$vts'::timestamptz + interval '1.5 s'});
	{
		local $ENV{PGAPPNAME} = "citus_internal gpid=$vgpid";
		like($as->($w1, 'app_login', qq{
			\\set VERBOSITY verbose
			BEGIN;
			$replay
			SELECT count(*) FROM quota_ext.users;
			COMMIT;}), qr/55000: the tenant context token of this Citus transaction is older than quota_ext.citus_context_max_age/,
			'worker1: the victim\'s token past citus_context_max_age raises 55000, even under its global PID');
	}
	$w1->safe_psql('postgres', q{ALTER SYSTEM RESET quota_ext.citus_context_max_age; SELECT pg_reload_conf()});

	# delegated calls (Citus delegates a call alone in its statement, outside
	# a transaction block): the app cannot charge another tenant on any node
	like($as->($coord, 'app_login', q{SELECT quota_ext.quota_consume(2, 'gpt-x', 1)}), qr/no tenant context/,
		'delegated quota_consume by the app without a context is refused on the worker');
	like($as->($coord, 'app_login', qq{
		BEGIN;
		SELECT FROM quota_ext.authenticate('$k1');
		SELECT quota_ext.quota_consume(2, 'gpt-x', 1);
		COMMIT;}), qr/tenant 2 does not exist/,
		'in tenant 1\'s transaction the app cannot charge tenant 2');
	is($as->($coord, 'app_login', qq{
		BEGIN;
		SELECT FROM quota_ext.authenticate('$k1');
		SELECT (quota_ext.quota_consume(1, 'gpt-x', 1)).allowed;
		COMMIT;}), 't',
		'in tenant 1\'s transaction the app charges tenant 1');

	# last_used_at on Citus: authenticate() touches the key as the owner at
	# COMMIT, so the app's reads after it in the transaction still run, and
	# the touch commits or rolls back with the transaction
	my %fresh;
	for my $who (qw(erin frank gina))
	{
		my $key = $coord->safe_psql('postgres', qq{SELECT api_key FROM quota_ext.user_create(1, '$who\@acme.test')});
		my ($kid) = $key =~ /^qxk_1_(\d+)_/;
		$fresh{$who} = [ $key, $kid ];
	}
	my $used_at = sub {
		$coord->safe_psql('postgres', qq{
			SELECT coalesce(last_used_at::text, 'never') FROM quota_ext.api_keys WHERE tenant_id = 1 AND key_id = $_[0]});
	};
	is($as->($coord, 'app_login', qq{
		BEGIN;
		SELECT FROM quota_ext.authenticate('$fresh{erin}[0]');
		SELECT string_agg(DISTINCT tenant_id::text, ',') FROM quota_ext.users;
		SELECT count(*) > 0 FROM quota_ext.api_keys;
		COMMIT;}), "1\nt", 'app: authenticate, then reads of the tenant\'s shards in the same transaction');
	my $touched = $used_at->($fresh{erin}[1]);
	isnt($touched, 'never', "last_used_at is set by that transaction's commit ($touched)");
	is($as->($coord, 'app_login', qq{
		BEGIN;
		SELECT FROM quota_ext.authenticate('$fresh{erin}[0]');
		SELECT count(*) > 0 FROM quota_ext.users;
		COMMIT;}), 't', 'app: the key again');
	is($used_at->($fresh{erin}[1]), $touched,
		'within quota_ext.key_touch_interval (60 s) a second use leaves last_used_at as it was');
	$as->($coord, 'app_login', qq{
		BEGIN;
		SELECT FROM quota_ext.authenticate('$fresh{frank}[0]');
		SELECT count(*) FROM quota_ext.users;
		ROLLBACK;});
	is($used_at->($fresh{frank}[1]), 'never', 'a rolled back transaction touches nothing');
	is($as->($coord, 'app_login', qq{
		BEGIN;
		SAVEPOINT s;
		SELECT FROM quota_ext.authenticate('$fresh{frank}[0]');
		ROLLBACK TO SAVEPOINT s;
		SELECT FROM quota_ext.authenticate('$fresh{gina}[0]');
		SELECT count(*) > 0 FROM quota_ext.users;
		COMMIT;}), 't', 'app: authenticate in a savepoint rolled back, then with another key');
	is($used_at->($fresh{frank}[1]) . ' ' . ($used_at->($fresh{gina}[1]) ne 'never' ? 'touched' : 'never'), 'never touched',
		'ROLLBACK TO SAVEPOINT drops the touch of the key used inside it; the key used after it is touched');
	is($as->($coord, 'app_login', qq{SELECT (quota_ext.authenticate('$fresh{frank}[0]')).tenant_id}), '1',
		'authenticate alone in an autocommit statement');
	isnt($used_at->($fresh{frank}[1]), 'never', 'and its key is touched');

	# (review finding) a ROLLBACK TO SAVEPOINT, or a PL/pgSQL EXCEPTION
	# block, after the authenticate: the touch asked for before it stays
	# asked for (its list lives in the transaction's memory, not the abort's)
	for my $who (qw(hank ivy jo kim lou))
	{
		my $key = $coord->safe_psql('postgres', qq{SELECT api_key FROM quota_ext.user_create(1, '$who\@acme.test')});
		my ($kid) = $key =~ /^qxk_1_(\d+)_/;
		$fresh{$who} = [ $key, $kid ];
	}
	($rc, $out, $err) = $coord->psql('postgres', qq{
		BEGIN;
		SELECT FROM quota_ext.authenticate('$fresh{hank}[0]');
		SAVEPOINT s;
		SELECT 1/0;
		ROLLBACK TO SAVEPOINT s;
		SELECT count(*) > 0 FROM quota_ext.users;
		COMMIT;}, on_error_stop => 0, extra_params => [ '-U', 'app_login' ]);
	is($out . ' ' . scalar(() = $err =~ /ERROR:/g), 't 1',
		'app: authenticate, then an error rolled back to a savepoint, then COMMIT (the one error is the division)');
	like($err, qr/division by zero/, 'that error is the division by zero');
	isnt($used_at->($fresh{hank}[1]), 'never', 'the key used before the savepoint is touched at COMMIT');
	is($as->($coord, 'app_login', qq{
		BEGIN;
		SELECT FROM quota_ext.authenticate('$fresh{ivy}[0]');
		DO \$do\$ BEGIN FOR i IN 1 .. 50 LOOP
			BEGIN PERFORM 1 / (i - i); EXCEPTION WHEN division_by_zero THEN NULL; END;
		END LOOP; END \$do\$;
		SELECT count(*) > 0 FROM quota_ext.users;
		COMMIT;}), 't', 'app: authenticate, then 50 PL/pgSQL EXCEPTION blocks that catch an error, then COMMIT');
	isnt($used_at->($fresh{ivy}[1]), 'never', 'and the key is touched at COMMIT');

	# (review finding) the touch is best effort and never fails the COMMIT:
	# the app's own table co-located with the extension's (distributed by
	# tenant_id in api_keys' group), written by the app after authenticate;
	# Citus then refuses the owner's UPDATE of api_keys over another
	# connection, and the touch is skipped (doc/scaling.md)
	$coord->safe_psql('postgres', q{
		CREATE TABLE public.app_orders (tenant_id bigint NOT NULL, order_id bigint NOT NULL, note text);
		SELECT create_distributed_table('public.app_orders', 'tenant_id', colocate_with => 'quota_ext.api_keys');
		GRANT SELECT, INSERT ON public.app_orders TO app_login;});
	is($as->($coord, 'app_login', qq{
		BEGIN;
		SELECT FROM quota_ext.authenticate('$fresh{jo}[0]');
		INSERT INTO public.app_orders (tenant_id, order_id, note) VALUES (1, 1, 'jo');
		COMMIT;
		SELECT count(*) FROM public.app_orders WHERE tenant_id = 1 AND order_id = 1;}), '1',
		'app: authenticate, INSERT into its co-located table, COMMIT: succeeds and the row is there');
	my $jo_touch = $used_at->($fresh{jo}[1]);
	note("last_used_at after authenticate + co-located INSERT: $jo_touch");
	is($jo_touch eq 'never' ? 'skipped' : 'written', 'skipped',
		'the touch of that transaction is skipped (Citus refuses it; doc/scaling.md)');
	is($as->($coord, 'app_login', qq{
		BEGIN;
		SELECT FROM quota_ext.authenticate('$fresh{kim}[0]');
		SET transaction_read_only = on;
		SELECT count(*) > 0 FROM quota_ext.users;
		COMMIT;}), 't', 'app: authenticate, then SET transaction_read_only = on: COMMIT succeeds');
	is($used_at->($fresh{kim}[1]), 'never', 'a transaction made read-only touches nothing');
	is($as->($coord, 'app_login', qq{
		BEGIN;
		SELECT FROM quota_ext.authenticate('$fresh{lou}[0]');
		SELECT count(*) FROM public.app_orders WHERE tenant_id = 1;
		COMMIT;}), '1', 'app: authenticate, then a read of its co-located table');
	isnt($used_at->($fresh{lou}[1]), 'never', 'after reads only the key is touched at COMMIT');
}

# Figures for doc/scaling.md (not checks; only with QUOTA_CITUS_BENCH=1):
# delegated consume through the coordinator, the same call run on the
# coordinator, and in a database of the coordinator without Citus the cost
# of the configuration cache being off (as it is under Citus)
if ($ENV{QUOTA_CITUS_BENCH})
{
	my $secs = $ENV{QUOTA_CITUS_BENCH_SECONDS} // 15;
	my @p = map { $coord->safe_psql('postgres', "SELECT quota_ext.tenant_create('perf$_', 'enterprise')") } 1 .. 8;
	$coord->safe_psql('postgres', "SELECT quota_ext.policy_set(t, 'gpt-x', true), quota_ext.quota_set(t, 'month', 1000000000, model => 'gpt-x') FROM unnest(ARRAY[@{[ join(',', @p) ]}]::bigint[]) t");
	$coord->safe_psql('plain', q{SELECT quota_ext.model_register('gpt-x')});
	my @pp = map { $coord->safe_psql('plain', "SELECT quota_ext.tenant_create('perf$_', 'enterprise')") } 1 .. 8;
	$coord->safe_psql('plain', "SELECT quota_ext.policy_set(t, 'gpt-x', true), quota_ext.quota_set(t, 'month', 1000000000, model => 'gpt-x') FROM unnest(ARRAY[@{[ join(',', @pp) ]}]::bigint[]) t");
	my $dir = PostgreSQL::Test::Utils::tempdir();
	my %scripts = (
		delegated => "\\set t random($p[0], $p[7])\nSELECT quota_ext.quota_consume(:t, 'gpt-x', 1);\n",
		on_coordinator => "\\set t random($p[0], $p[7])\nSELECT allowed FROM quota_ext.quota_consume(:t, 'gpt-x', 1);\n",
		single_node => "\\set t random($pp[0], $pp[7])\nSELECT quota_ext.quota_consume(:t, 'gpt-x', 1);\n");
	for my $run ([ 'delegated', 'postgres', '' ], [ 'on_coordinator', 'postgres', '' ],
		[ 'single_node', 'plain', 'quota_ext.config_cache=on' ], [ 'single_node', 'plain', 'quota_ext.config_cache=off' ])
	{
		my ($name, $db, $opt) = @$run;
		my $f = "$dir/$name.sql";
		PostgreSQL::Test::Utils::append_to_file($f, $scripts{$name}) unless -e $f;
		local $ENV{PGOPTIONS} = $opt ? "-c $opt" : '';
		my ($out, $err) = run_command([ 'pgbench', '-n', '-T', $secs, '-c', 8, '-j', 2, '-f', $f,
			'-h', $coord->host, '-p', $coord->port, $db ]);
		my ($tps) = $out =~ /tps = ([0-9.]+)/;
		diag(sprintf('bench %-15s %-28s 8 clients %ss: %s tps', $name, $opt || '(Citus)', $secs, $tps // "failed: $err"));
	}
}

# quota_status: one statement naming the tenant on every per-tenant table,
# routed to the tenant's shards; its figures are the counters and the ledger
($rc, $out, $err) = $coord->psql('postgres', q{
	SELECT string_agg(format('%s %s %s', q.metric, q.used, q.requests), ',' ORDER BY q.quota_id)
	  FROM quota_ext.quota_status(1) q});
is($rc, 0, 'quota_status runs through the coordinator') or diag($err);
is($out, $coord->safe_psql('postgres', q{
	SELECT string_agg(format('%s %s %s', q.metric, c.used, (SELECT sum(u.calls) FROM quota_ext.usage u WHERE u.tenant_id = 1)), ',' ORDER BY q.quota_id)
	  FROM quota_ext.quotas q
	  JOIN (SELECT quota_id, sum(used) AS used FROM quota_ext.quota_counters WHERE tenant_id = 1 GROUP BY quota_id) c USING (quota_id)
	 WHERE q.tenant_id = 1}),
	'quota_status(1) through the coordinator: used = the counters, requests = the ledger, per quota');
like($out, qr/^calls \d+ \d+/, "quota_status(1) reports tenant 1's calls quota ($out)");
is($as_app->(qq{
	BEGIN;
	SELECT FROM quota_ext.authenticate('$isolation_key');
	SELECT count(*) > 0 FROM quota_ext.quota_status(1);
	COMMIT;}), 't', 'quota_status as the app in tenant 1\'s context');
like($as_app->(qq{
	BEGIN;
	SELECT FROM quota_ext.authenticate('$isolation_key');
	SELECT count(*) FROM quota_ext.quota_status(2);
	COMMIT;}), qr/tenant 2 does not exist/, 'quota_status of another tenant: "does not exist"');

# rows of a month without a partition (written before maintenance ran, or
# restored) sit in the default partition: usage_partitions_maintain() moves
# them into the month's new partition, distributed, and leaves no copy in
# the coordinator's shell (Citus keeps the local data of a table it
# distributes until told otherwise)
{
	my ($old_month, $old_at) = split /\|/, $coord->safe_psql('postgres', q{
		SELECT 'usage_p' || to_char(m, 'YYYYMM'), (m + interval '14 days') AT TIME ZONE 'UTC'
		  FROM (SELECT date_trunc('month', now() AT TIME ZONE 'UTC') - interval '2 months' AS m) x});
	$coord->safe_psql('postgres', qq{
		INSERT INTO quota_ext.usage (tenant_id, usage_id, created_at, occurred_at, model_id, units, calls, kind)
		SELECT 2, 900000000 + g, '$old_at', '$old_at', m.model_id, 5, 1, 'consume'
		  FROM generate_series(1, 3) g, quota_ext.models m WHERE m.name = 'gpt-x'});
	is($coord->safe_psql('postgres', q{SELECT count(*) FROM quota_ext.usage_default}), '3',
		'three rows of an earlier month in the default partition');
	($rc, $out, $err) = $coord->psql('postgres', q{
		SELECT string_agg(partition || ' ' || action, ',') FROM quota_ext.usage_partitions_maintain(1)});
	is($out, "$old_month created", "usage_partitions_maintain makes $old_month for them") or diag($err);
	is($coord->safe_psql('postgres', qq{
		SELECT (SELECT count(*) FROM quota_ext.usage_default) || ' ' || (SELECT count(*) FROM quota_ext.$old_month WHERE tenant_id = 2)}),
		'0 3', "the rows moved from the default partition into $old_month");
	for my $n (@nodes)
	{
		is($n->safe_psql('postgres', qq{SELECT pg_relation_size('quota_ext.$old_month')}), '0',
			"no copy of the moved rows left in the local (shell) $old_month on " . $n->name);
	}
	is($as_app->(qq{
		BEGIN;
		SELECT FROM quota_ext.authenticate('$isolation_key');
		SELECT count(*) FROM quota_ext.usage WHERE tenant_id = 2 OR created_at < '$old_at'::timestamptz + interval '1 day';
		COMMIT;}), '0', "app in tenant 1's context: none of tenant 2's moved rows");
}

# tenant_summary through the coordinator: its usage is the ledger's (before
# and after a rollup), its quotas those of quota_status
{
	my $ledger = $coord->safe_psql('postgres', q{
		SELECT sum(calls) || ' ' || sum(units) FROM quota_ext.usage
		 WHERE tenant_id = 1 AND occurred_at >= date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'});
	my $nquotas = $coord->safe_psql('postgres', q{SELECT count(*) FROM quota_ext.quota_status(1)});
	my $summary = q{
		SELECT (s->'usage'->>'calls_this_month') || ' ' || (s->'usage'->>'units_this_month') || '|'
		       || jsonb_array_length(s->'quotas') || '|' || (s->'tenant'->>'name')
		  FROM quota_ext.tenant_summary(1) s};
	($rc, $out, $err) = $coord->psql('postgres', $summary);
	is($rc, 0, 'tenant_summary runs through the coordinator') or diag($err);
	is($out, "$ledger|$nquotas|acme", "tenant_summary(1): this month's calls and units are the ledger's ($ledger), its quotas quota_status's");
	is($coord->safe_psql('postgres', q{SELECT quota_ext.usage_rollup() > 0}), 't', 'usage_rollup through the coordinator');
	is($coord->safe_psql('postgres', $summary), "$ledger|$nquotas|acme", 'tenant_summary(1) after the rollup: the same figures');
	is($as_app->(qq{
		BEGIN;
		SELECT FROM quota_ext.authenticate('$isolation_key');
		SELECT (s->'usage'->>'calls_this_month') || ' ' || (s->'usage'->>'units_this_month') FROM quota_ext.tenant_summary(1) s;
		COMMIT;}), $ledger, 'tenant_summary(1) as the app in tenant 1\'s context');
}

# billing_close through the coordinator: for one tenant, then for every
# tenant (tenant by tenant on Citus); every tenant's invoiced calls are its
# ledger's calls of the period
{
	my $ps = $coord->safe_psql('postgres', q{SELECT date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'});
	my $pe = $coord->safe_psql('postgres', q{SELECT clock_timestamp()});
	my $invoiced = sub {
		$coord->safe_psql('postgres', qq{
			SELECT string_agg(x.tenant_id || ':' || x.calls, ' ' ORDER BY x.tenant_id)
			  FROM (SELECT i.tenant_id, sum(l.calls) AS calls
			          FROM quota_ext.invoices i
			          JOIN quota_ext.invoice_lines l ON l.tenant_id = i.tenant_id AND l.invoice_id = i.invoice_id
			         WHERE i.period_start = '$ps' AND i.period_end = '$pe' $_[0]
			         GROUP BY i.tenant_id) x});
	};
	my $ledger = sub {
		$coord->safe_psql('postgres', qq{
			SELECT string_agg(x.tenant_id || ':' || x.calls, ' ' ORDER BY x.tenant_id)
			  FROM (SELECT u.tenant_id, sum(u.calls) AS calls FROM quota_ext.usage u
			         WHERE u.occurred_at < '$pe' $_[0]
			         GROUP BY u.tenant_id) x});
	};
	($rc, $out, $err) = $coord->psql('postgres', qq{SELECT count(*) FROM quota_ext.billing_close(1, '$ps', '$pe')});
	is($rc, 0, 'billing_close for tenant 1 runs through the coordinator') or diag($err);
	is($out, '1', 'tenant 1 gets one invoice (its usage is unpriced: currency XXX)');
	my $l1 = $ledger->('AND u.tenant_id = 1');
	like($l1, qr/^1:\d+$/, "tenant 1 has calls in the period ($l1)");
	is($invoiced->('AND i.tenant_id = 1'), $l1, 'tenant 1: the invoiced calls are the ledger\'s');
	($rc, $out, $err) = $coord->psql('postgres', qq{SELECT count(DISTINCT tenant_id) FROM quota_ext.billing_close('$ps', '$pe')});
	is($rc, 0, 'billing_close for every tenant runs through the coordinator') or diag($err);
	my $all = $ledger->('');
	is($out, scalar(split / /, $all), 'every tenant with usage in the period has its invoice');
	is($invoiced->(''), $all, "every tenant: the invoiced calls are the ledger's ($all)");
	is($coord->safe_psql('postgres', qq{SELECT count(*) FROM quota_ext.billing_close('$ps', '$pe')}), $out,
		'billing_close again: the same invoices, none added');
	is($coord->safe_psql('postgres', qq{SELECT count(*) FROM quota_ext.billing_closes WHERE period_start = '$ps'}),
		$coord->safe_psql('postgres', qq{SELECT count(*) FROM quota_ext.tenants WHERE created_at < '$pe'}),
		'a close is recorded for every tenant');

	# (review finding) the Citus close, tenant by tenant in one transaction,
	# holds a constant number of AccessExclusiveLocks whatever the number of
	# tenants: its temporary table is made once and emptied per tenant (one
	# made and dropped per tenant held three locks each until COMMIT, and
	# some thousand tenants ran the lock table out: 53200).  The next
	# period, for tenant 1 alone and then for every other tenant, each in a
	# transaction that reads its own locks before COMMIT.
	my $pe2 = $coord->safe_psql('postgres', q{SELECT clock_timestamp()});
	my $locks = sub {
		my $r = $coord->safe_psql('postgres', qq{
			BEGIN;
			SELECT count(*) FROM $_[0];
			SELECT count(*) FROM pg_locks
			 WHERE pid = pg_backend_pid() AND locktype = 'relation' AND mode = 'AccessExclusiveLock';
			COMMIT;});
		return [ split /\n/, $r ];
	};
	my $one = $locks->("quota_ext.billing_close(1, '$pe', '$pe2')");
	my $ntenants = $coord->safe_psql('postgres', qq{SELECT count(*) FROM quota_ext.tenants WHERE created_at < '$pe2' AND tenant_id <> 1});
	cmp_ok($ntenants, '>=', 6, "$ntenants other tenants to close");
	my $every = $locks->("quota_ext.billing_close('$pe', '$pe2')");
	is($coord->safe_psql('postgres', qq{SELECT count(*) FROM quota_ext.billing_closes WHERE period_start = '$pe'}),
		$ntenants + 1, 'the next period is closed for every tenant');
	cmp_ok($one->[1], '>', 0, "closing one tenant holds $one->[1] AccessExclusiveLock(s) (its temporary table)");
	is($every->[1], $one->[1], "closing $ntenants tenants in one transaction holds as many ($every->[1]), not one set per tenant");
	is($invoiced->(''), $all, 'the invoices of the first period are unchanged');
}

my $totals_all;
# The rollup watermark on Citus (issue 16): charges still open on a worker
# and on the coordinator while usage_rollup() reads the watermark.  The
# watermark must stay below both open rows (they commit after it was read),
# else that rollup passes them and the next one never adds them: the
# rolled-up totals would fall short of the ledger.  One charge runs on the
# worker that holds its tenant, in a transaction of its own there (as a
# delegated call does); the other runs on the coordinator in a transaction
# block, the worker holding the shard being written from the coordinator.
{
	my $lt = $coord->safe_psql('postgres', "SELECT quota_ext.tenant_create('late', 'enterprise')");
	$coord->safe_psql('postgres', "SELECT quota_ext.policy_set($lt, 'gpt-x', true)");
	$coord->safe_psql('postgres', "SELECT quota_ext.quota_set($lt, 'month', 1000, model => 'gpt-x')");
	my $holder_port = $coord->safe_psql('postgres', q{
		SELECT p.nodeport FROM pg_dist_shard_placement p
		 WHERE p.shardid = get_shard_id_for_distribution_column('quota_ext.usage', 1)});
	my ($holder) = grep { $_->port == $holder_port } ($w1, $w2);
	my $totals = $totals_all = sub {
		# per tenant: rolled-up calls and units (usage_daily and
		# usage_billing_daily) against the ledger's
		$coord->safe_psql('postgres', q{
			SELECT coalesce(string_agg(format('tenant %s: ledger %s/%s, usage_daily %s/%s, usage_billing_daily %s/%s',
			                                  l.tenant_id, l.calls, l.units, d.calls, d.units, b.calls, b.units), '; '
			                           ORDER BY l.tenant_id), 'equal')
			  FROM (SELECT tenant_id, sum(calls) AS calls, sum(units) AS units FROM quota_ext.usage GROUP BY 1) l
			  LEFT JOIN (SELECT tenant_id, sum(calls) AS calls, sum(units) AS units FROM quota_ext.usage_daily GROUP BY 1) d USING (tenant_id)
			  LEFT JOIN (SELECT tenant_id, sum(calls) AS calls, sum(units) AS units FROM quota_ext.usage_billing_daily GROUP BY 1) b USING (tenant_id)
			 WHERE (l.calls, l.units) IS DISTINCT FROM (d.calls, d.units)
			    OR (l.calls, l.units) IS DISTINCT FROM (b.calls, b.units)});
	};
	$coord->safe_psql('postgres', 'SELECT quota_ext.usage_rollup()');
	is($totals->(), 'equal', 'before: the rolled-up totals equal the ledger');
	my $on_worker = $holder->background_psql('postgres');
	$on_worker->query_safe('BEGIN');
	is($on_worker->query_safe(q{SELECT allowed FROM quota_ext.quota_consume(1, 'gpt-x', 1)}), 't',
		'a charge of tenant 1 on ' . $holder->name . ' (which holds it), its transaction left open');
	my $on_coord = $coord->background_psql('postgres');
	$on_coord->query_safe('BEGIN');
	is($on_coord->query_safe(qq{SELECT allowed FROM quota_ext.quota_consume($lt, 'gpt-x', 3)}), 't',
		"a charge of tenant $lt on the coordinator, its transaction left open");
	# the open rows were stamped before this rollup reads the watermark
	$coord->safe_psql('postgres', 'SELECT quota_ext.usage_rollup()');
	my $wm = $coord->safe_psql('postgres', q{SELECT watermark FROM quota_ext.rollup_state WHERE name = 'usage_daily'});
	$on_worker->query_safe('COMMIT');
	$on_coord->query_safe('COMMIT');
	$on_worker->quit;
	$on_coord->quit;
	is($coord->safe_psql('postgres', qq{
		SELECT count(*) FROM quota_ext.usage
		 WHERE tenant_id IN (1, $lt) AND created_at >= '$wm' AND created_at > now() - interval '1 hour'}), '2',
		"the watermark that rollup stored ($wm) is at or below both open rows' created_at");
	$coord->safe_psql('postgres', 'SELECT quota_ext.usage_rollup()');
	is($totals->(), 'equal',
		'after both committed and another rollup: the rolled-up totals of every tenant equal the ledger (none missed)');

	# a ledger row prepared (two-phase) on the worker: invisible until
	# COMMIT PREPARED, and no backend holds it; the lock it keeps on the
	# ledger's shard stops the watermark (the rollup adds nothing).  (Written
	# into tenant 1's shard directly: Citus refuses to PREPARE a call of
	# quota_consume, which involved other nodes; its own two-phase commits
	# leave the same lock between PREPARE and COMMIT PREPARED.)
	my $shard = $coord->safe_psql('postgres', q{
		SELECT shard_name('quota_ext.usage'::regclass, get_shard_id_for_distribution_column('quota_ext.usage', 1))});
	my $model = $coord->safe_psql('postgres', q{SELECT model_id FROM quota_ext.models WHERE name = 'gpt-x'});
	my $prep = $holder->background_psql('postgres');
	$prep->query_safe('BEGIN');
	# (no Citus table in this transaction, or Citus refuses the PREPARE)
	$prep->query_safe(qq{
		INSERT INTO $shard (tenant_id, usage_id, created_at, occurred_at, model_id, units, calls, kind)
		VALUES (1, 950000001, clock_timestamp(), clock_timestamp(), $model, 2, 1, 'consume')});
	$prep->query_safe(q{PREPARE TRANSACTION 'qx_watermark'});
	my $wm_before = $coord->safe_psql('postgres', q{SELECT watermark FROM quota_ext.rollup_state WHERE name = 'usage_daily'});
	is($coord->safe_psql('postgres', q{SELECT quota_ext.usage_rollup()}) . ' '
	   . $coord->safe_psql('postgres', q{SELECT watermark FROM quota_ext.rollup_state WHERE name = 'usage_daily'}),
		"0 $wm_before", 'a charge prepared on ' . $holder->name . ': usage_rollup() does not move the watermark');
	$holder->safe_psql('postgres', q{COMMIT PREPARED 'qx_watermark'});
	$prep->quit;
	$coord->safe_psql('postgres', 'SELECT quota_ext.usage_rollup()');
	is($totals->(), 'equal', 'after COMMIT PREPARED and another rollup: the rolled-up totals equal the ledger');
}

# A login that claims the Citus transaction number the rollup's transaction
# has (any login may call assign_distributed_transaction_id()) does not hide
# its open charge from that rollup: the watermark leaves out only the calling
# backend (the attacker's review, session 6; before, every backend of the
# caller's transaction number on every node was left out).
{
	my $forger = $coord->background_psql('postgres');
	$forger->query_safe('BEGIN');
	$forger->query_safe(q{SELECT assign_distributed_transaction_id(0, 987654321, now())});
	is($forger->query_safe(q{SELECT allowed FROM quota_ext.quota_consume(1, 'gpt-x', 1)}), 't',
		'a charge under a claimed Citus transaction number, its transaction left open');
	my $row = $forger->query_safe(q{SELECT max(created_at) FROM quota_ext.usage WHERE tenant_id = 1});
	$coord->safe_psql('postgres', q{
		BEGIN;
		SELECT assign_distributed_transaction_id(0, 987654321, now());
		SELECT quota_ext.usage_rollup();
		COMMIT;});
	my $wm = $coord->safe_psql('postgres', q{SELECT watermark FROM quota_ext.rollup_state WHERE name = 'usage_daily'});
	is($coord->safe_psql('postgres', qq{SELECT '$wm'::timestamptz <= '$row'::timestamptz}), 't',
		"a rollup under the same number stops its watermark ($wm) at or below the open row ($row)");
	$forger->query_safe('COMMIT');
	$forger->quit;
	$coord->safe_psql('postgres', 'SELECT quota_ext.usage_rollup()');
	is($totals_all->(), 'equal', 'after it committed and another rollup: the rolled-up totals equal the ledger');
}

$_->stop for @nodes;
done_testing();
