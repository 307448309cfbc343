# test/t/QuotaReliab.pm — shared by the reliability TAP tests (06x_*.pl).
#
#   quota_node(name, %opts)      a started node with quota_ext preloaded and
#                                created in database postgres.  Options:
#                                durable => 1 (fsync = on: Cluster->init
#                                turns it off), quiet => 1 (log_statement =
#                                none, for pgbench runs), conf => [lines],
#                                init => {Cluster->init params}, db => name
#   invariant_sql()              the query behind violations()
#   violations(node, db)         the enforcement invariants, as a list of
#                                "problem tenant object expected actual"
#                                lines; empty when all hold
#   invariants_ok(node, db, what) TAP: no violations (prints them if any)
#   soak()                       true under QUOTA_SOAK=1 (long variants)
#   fixture_sql(n, %opts)        SQL making n enterprise tenants t1..tn
#                                (no tier rate limit, no tier quota), each
#                                with a user, model "m" allowed, and quotas
#
# The invariants (reliability-anchors.md §2 "INV", doc/design.md §4), read
# as a superuser (RLS does not apply); the same rules as the enforcement
# suite's test/invariant.sql (issue 3).  For every quota q and its counter
# rows (one, or one per escrow slot), ledger(a, b) = sum of usage.calls
# (metric calls), usage.units (units) or usage.cost in micro-units (cost)
# over the rows in q's scope with a <= occurred_at < b and occurred_at >=
# q.created_at:
#   counter_rows     q has quotas.slots counter rows
#   counter_period   when all rows are in one period: sum(used) =
#                    ledger(that period)
#   current_period   used now (rows in the current period) = ledger(it)
#   never_charged    a calendar quota's counters still at -infinity are 0
#   alignment        every period_start starts the period containing it
#   over_limit       0 <= used now <= max_units for on_exceed = 'block'
# and across the ledger:
#   idem_dup         at most one consume/reserve row per idempotency key
#   idem_allowed     a key whose stored decision is allowed has exactly its
#                    usage row; a denied one has none
#   idem_orphan      every consume/reserve row with a key has its key row
#                    (unless idempotency_purge deleted it: older than its horizon)
#   reservation      a reservation's rows add up to what its status says
#                    (open: estimate; settled: actual - unbilled;
#                    cancelled, expired: 0)
#   refund           each refund's row negates the refunded row
package QuotaReliab;

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Exporter 'import';

our @EXPORT = qw(quota_node violations invariants_ok soak fixture_sql invariant_sql);

sub soak { return ($ENV{QUOTA_SOAK} // '') ne '' && $ENV{QUOTA_SOAK} ne '0'; }

sub quota_node
{
	my ($name, %o) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init(%{ $o{init} || {} });
	my @conf = ("shared_preload_libraries = 'quota_ext'");
	push @conf, 'fsync = on', 'synchronous_commit = on' if $o{durable};
	push @conf, 'log_statement = none' if $o{quiet};
	push @conf, @{ $o{conf} } if $o{conf};
	$node->append_conf('postgresql.conf', join("\n", @conf) . "\n");
	$node->start;
	my $db = $o{db} // 'postgres';
	$node->safe_psql('postgres', qq{CREATE DATABASE "$db"}) if $db ne 'postgres';
	$node->safe_psql($db, 'CREATE EXTENSION quota_ext');
	return $node;
}

# n tenants "t1".."tn" (enterprise: no tier rate limit and no tier quota),
# a global model "m" allowed for all, one user each, and per tenant a daily
# calls quota of $o{calls} and a monthly units quota of $o{units} on "m".
# Afterwards psql variables are not needed: look tenants up by name.
sub fixture_sql
{
	my ($n, %o) = @_;
	my $calls = $o{calls} // 1000000;
	my $units = $o{units} // 1000000000;
	return qq{
	SELECT quota_ext.model_register('m');
	SELECT quota_ext.tenant_create('t' || i, 'enterprise') FROM generate_series(1, $n) i;
	SELECT quota_ext.policy_set(tenant_id, 'm', true) FROM quota_ext.tenants;
	SELECT quota_ext.user_create(tenant_id, 'u\@t' || tenant_id || '.example', 'member') FROM quota_ext.tenants;
	SELECT quota_ext.quota_set(tenant_id, 'day', $calls, 'm') FROM quota_ext.tenants;
	SELECT quota_ext.quota_set(tenant_id, 'month', $units, 'm', 'units') FROM quota_ext.tenants;
	};
}

my $invariant_sql = q{
WITH q AS (
	SELECT q.tenant_id, q.quota_id, q.period, q.metric, q.model_id, q.user_id, q.key_id,
	       q.max_units, q.on_exceed, q.created_at, t.timezone,
	       (to_jsonb(q) ->> 'slots')::int AS slots,
	       c.nrows, c.first_start, c.last_start, c.total, c.misaligned,
	       coalesce(c.cur_total, 0) AS used_now,
	       cur.period_start AS cur_start, cur.period_end AS cur_end
	  FROM quota_ext.quotas q
	  JOIN quota_ext.tenants t ON t.tenant_id = q.tenant_id
	  CROSS JOIN LATERAL quota_ext.period_bounds(q.period, t.timezone, clock_timestamp()) cur
	  -- the counter rows: one, or one per escrow slot
	  CROSS JOIN LATERAL (
	        SELECT count(*) AS nrows, min(x.period_start) AS first_start, max(x.period_start) AS last_start,
	               sum(x.used) AS total,
	               sum(x.used) FILTER (WHERE x.period_start = cur.period_start) AS cur_total,
	               count(*) FILTER (WHERE isfinite(x.period_start) AND q.period <> 'lifetime' AND
	                   (quota_ext.period_bounds(q.period, t.timezone, x.period_start)).period_start
	                   <> x.period_start) AS misaligned
	          FROM quota_ext.quota_counters x
	         WHERE x.tenant_id = q.tenant_id AND x.quota_id = q.quota_id) c
), b AS (
	-- the counters' own period when all rows are in one (lifetime, or a
	-- calendar period they were charged in)
	SELECT q.*, (q.first_start = q.last_start AND (isfinite(q.first_start) OR q.period = 'lifetime')) AS charged,
	       own.period_start AS own_start, own.period_end AS own_end
	  FROM q CROSS JOIN LATERAL quota_ext.period_bounds(q.period, q.timezone,
	           CASE WHEN isfinite(q.first_start) THEN q.first_start ELSE clock_timestamp() END) own
), l AS (
	SELECT b.*,
	       (SELECT coalesce(sum(CASE WHEN b.metric = 'calls' THEN u.calls::numeric
	                                 WHEN b.metric = 'units' THEN u.units::numeric
	                                 ELSE (to_jsonb(u) ->> 'cost')::numeric * 1000000 END), 0)
	          FROM quota_ext.usage u
	         WHERE u.tenant_id = b.tenant_id
	           AND (b.model_id IS NULL OR u.model_id = b.model_id)
	           AND (b.user_id IS NULL OR u.user_id = b.user_id)
	           AND (b.key_id IS NULL OR u.key_id = b.key_id)
	           AND u.occurred_at >= greatest(b.own_start, b.created_at)
	           AND u.occurred_at < b.own_end) AS own_ledger,
	       (SELECT coalesce(sum(CASE WHEN b.metric = 'calls' THEN u.calls::numeric
	                                 WHEN b.metric = 'units' THEN u.units::numeric
	                                 ELSE (to_jsonb(u) ->> 'cost')::numeric * 1000000 END), 0)
	          FROM quota_ext.usage u
	         WHERE u.tenant_id = b.tenant_id
	           AND (b.model_id IS NULL OR u.model_id = b.model_id)
	           AND (b.user_id IS NULL OR u.user_id = b.user_id)
	           AND (b.key_id IS NULL OR u.key_id = b.key_id)
	           AND u.occurred_at >= greatest(b.cur_start, b.created_at)
	           AND u.occurred_at < b.cur_end) AS cur_ledger
	  FROM b
), idem AS (
	-- consume/reserve rows per idempotency key (min: the one a key names)
	SELECT u.tenant_id, u.idempotency_key, count(*) AS n, min(u.usage_id) AS usage_id,
	       max(u.occurred_at) AS last_at
	  FROM quota_ext.usage u
	 WHERE u.idempotency_key IS NOT NULL AND u.kind IN ('consume', 'reserve')
	 GROUP BY 1, 2
)
SELECT * FROM (
	SELECT 'counter_rows' AS problem, tenant_id, 'quota ' || quota_id AS object,
	       coalesce(slots, 1)::numeric AS expected, nrows::numeric AS actual
	  FROM l WHERE nrows <> coalesce(slots, 1)
	UNION ALL
	SELECT 'counter_period', tenant_id, 'quota ' || quota_id, own_ledger, total
	  FROM l WHERE charged AND total <> own_ledger
	UNION ALL
	SELECT 'never_charged', tenant_id, 'quota ' || quota_id, 0, total
	  FROM l WHERE nrows > 0 AND first_start = last_start AND NOT charged AND total <> 0
	UNION ALL
	SELECT 'alignment', tenant_id, 'quota ' || quota_id, 0, misaligned
	  FROM l WHERE misaligned > 0
	UNION ALL
	SELECT 'current_period', tenant_id, 'quota ' || quota_id, cur_ledger, used_now
	  FROM l WHERE used_now <> cur_ledger
	UNION ALL
	SELECT 'over_limit', tenant_id, 'quota ' || quota_id, max_units, used_now
	  FROM l WHERE on_exceed = 'block' AND (used_now > max_units OR used_now < 0)
	UNION ALL
	SELECT 'idem_dup', i.tenant_id, 'key ' || i.idempotency_key, 1, i.n
	  FROM idem i WHERE i.n > 1
	UNION ALL
	SELECT 'idem_allowed', k.tenant_id, 'key ' || k.idempotency_key,
	       CASE WHEN k.allowed THEN 1 ELSE 0 END, coalesce(i.n, 0)
	  FROM quota_ext.idempotency_keys k
	  LEFT JOIN idem i ON i.tenant_id = k.tenant_id AND i.idempotency_key = k.idempotency_key
	 WHERE coalesce(i.n, 0) <> CASE WHEN k.allowed THEN 1 ELSE 0 END
	    OR (k.allowed AND k.usage_id IS DISTINCT FROM i.usage_id)
	UNION ALL
	SELECT 'idem_orphan', i.tenant_id, 'key ' || i.idempotency_key, 1, 0
	  FROM idem i
	 WHERE NOT EXISTS (SELECT 1 FROM quota_ext.idempotency_keys k
	                    WHERE k.tenant_id = i.tenant_id AND k.idempotency_key = i.idempotency_key)
	   -- idempotency_purge (audited with its older_than) deletes old key rows
	   AND NOT EXISTS (SELECT 1 FROM quota_ext.audit_log a
	                    WHERE a.action = 'idempotency_purge'
	                      AND i.last_at < a.at - (a.after ->> 'older_than')::interval)
	UNION ALL
	SELECT 'reservation_' || r.status, r.tenant_id, 'reservation ' || r.reservation_id,
	       CASE r.status WHEN 'open' THEN r.estimate WHEN 'settled' THEN r.actual - r.unbilled ELSE 0 END,
	       coalesce(ru.units, 0)
	  FROM quota_ext.reservations r
	  LEFT JOIN (SELECT u.tenant_id, u.reservation_id, sum(u.units) AS units FROM quota_ext.usage u
	              WHERE u.reservation_id IS NOT NULL GROUP BY 1, 2) ru
	         ON ru.tenant_id = r.tenant_id AND ru.reservation_id = r.reservation_id
	 WHERE CASE r.status WHEN 'open' THEN r.estimate WHEN 'settled' THEN r.actual - r.unbilled ELSE 0 END
	       <> coalesce(ru.units, 0)
	UNION ALL
	SELECT 'refund', f.tenant_id, 'usage ' || f.usage_id, o.units, -r.units
	  FROM quota_ext.refunds f
	  LEFT JOIN quota_ext.usage o ON o.tenant_id = f.tenant_id AND o.usage_id = f.usage_id
	  LEFT JOIN quota_ext.usage r ON r.tenant_id = f.tenant_id AND r.usage_id = f.refund_usage_id
	 WHERE o.usage_id IS NULL OR r.usage_id IS NULL OR r.units <> -o.units OR r.calls <> -o.calls
) v ORDER BY 1, 2, 3;
};

sub invariant_sql { return $invariant_sql; }

sub violations
{
	my ($node, $db) = @_;
	my $out = $node->safe_psql($db // 'postgres', $invariant_sql);
	return grep { $_ ne '' } split /\n/, $out;
}

sub invariants_ok
{
	my ($node, $db, $what) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my @v = violations($node, $db);
	my $n = scalar @v;
	splice(@v, 20) if @v > 20;
	is($n, 0, "$what: the invariants hold")
	  or diag(join("\n", 'problem|tenant|object|expected|actual', @v));
	return $n == 0;
}

1;
