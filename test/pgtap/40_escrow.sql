-- Escrow slots (doc/design.md §5) seen from one session: a call charges one
-- slot of each escrow quota and writes it at once; a call that a later
-- escrow quota denies gives the earlier quota's charge back; a transaction
-- with many calls (this file is one) goes to the exact all-slots path once it
-- nears the 64 subtransactions a backend advertises, with the same totals.
-- Concurrency: test/specs/escrow.spec and test/t/015_escrow_pgbench.pl.
BEGIN;
SELECT plan(23);

\o /dev/null
SELECT quota_ext.tenant_create('esc-a', 'enterprise') AS ta \gset
SELECT quota_ext.model_register('esc-m');
SELECT quota_ext.policy_set(:ta, 'esc-m', true);
SELECT quota_ext.quota_set(:ta, 'daily', 100, metric => 'units', slots => 4) AS qu \gset
SELECT quota_ext.quota_set(:ta, 'monthly', 3, metric => 'calls', slots => 2) AS qc \gset
\o

CREATE FUNCTION pg_temp.esc(q bigint) RETURNS text LANGUAGE sql AS $$
	SELECT format('used %s allowance %s', sum(used), sum(allowance))
	  FROM quota_ext.quota_counters WHERE quota_id = q $$;
CREATE FUNCTION pg_temp.ledger(t bigint) RETURNS text LANGUAGE sql AS $$
	SELECT format('units %s calls %s', coalesce(sum(units), 0), count(*))
	  FROM quota_ext.usage WHERE tenant_id = t $$;

SELECT is((SELECT allowed FROM quota_ext.quota_consume(:ta, 'esc-m', 10)), true, 'a call is allowed');
SELECT is(pg_temp.esc(:qu), 'used 10 allowance 100', 'its units are on one slot');
SELECT is((SELECT count(*) FROM quota_ext.quota_counters WHERE quota_id = :qu AND used > 0), 1::bigint,
	'one slot charged');
SELECT is(pg_temp.esc(:qc), 'used 1 allowance 3', 'the calls quota counted it');

SELECT is((SELECT allowed FROM quota_ext.quota_consume(:ta, 'esc-m', 5)), true, 'second call');
SELECT is((SELECT allowed FROM quota_ext.quota_consume(:ta, 'esc-m', 5)), true, 'third call');
SELECT results_eq(format($$SELECT allowed, denied_by, quota_id FROM quota_ext.quota_consume(%s, 'esc-m', 5)$$, :ta),
	format($$VALUES (false, 'quota'::text, %s::bigint)$$, :qc),
	'the fourth call is denied by the calls quota (3 a month)');
SELECT is(pg_temp.esc(:qu), 'used 20 allowance 100',
	'the units slot it had already charged was given back');
SELECT is(pg_temp.esc(:qc), 'used 3 allowance 3', 'the calls quota is exactly full');
SELECT is(pg_temp.ledger(:ta), 'units 20 calls 3', 'the ledger agrees');

-- many calls in this one transaction: past ~28 calls (two escrow quotas) the
-- single-slot steps stop and every call takes the exact path
\o /dev/null
SELECT quota_ext.quota_set(:ta, 'monthly', 1000, metric => 'calls', slots => 2);
\o
SELECT is((SELECT count(*) FILTER (WHERE (quota_ext.quota_consume(:ta, 'esc-m', 1)).allowed)
	FROM generate_series(1, 80)), 80::bigint, '80 calls of one unit in one transaction: all allowed');
SELECT is((SELECT allowed FROM quota_ext.quota_consume(:ta, 'esc-m', 1)), false, 'the 81st does not fit');
SELECT is(pg_temp.esc(:qu), 'used 100 allowance 100', 'the units quota is exactly at its limit');
SELECT is(pg_temp.ledger(:ta), 'units 100 calls 83', 'the ledger agrees');

-- _counters_lay_out, the one SQL writer of counter rows (src/storage_slots.c)
\o /dev/null
SELECT quota_ext.quota_set(:ta, 'weekly', 10, metric => 'units', slots => 3) AS qw \gset
\o
CREATE FUNCTION pg_temp.rows(q bigint) RETURNS text LANGUAGE sql AS $$
	SELECT coalesce(string_agg(format('%s:%s/%s', slot, used, allowance), ' ' ORDER BY slot), 'none')
	  FROM quota_ext.quota_counters WHERE quota_id = q $$;
SELECT is(pg_temp.rows(:qw), '0:0/4 1:0/3 2:0/3',
	'quota_set lays 10 out over 3 slots by the slot-share rule (4, 3, 3)');
SELECT lives_ok(format($$SELECT quota_ext._counters_lay_out(%s, %s,
	(SELECT period_start FROM quota_ext.quota_counters WHERE quota_id = %s AND slot = 0),
	5, 3, '{1,2}', 0, 0, 6)$$, :ta, :qw, :qw), 'two more slots from the slack of slots 1 and 2');
SELECT is(pg_temp.rows(:qw), '0:0/4 1:0/2 2:0/2 3:0/1 4:0/1',
	'slot 0 untouched; 6 shared over the kept slots and the new ones (2, 2, 1, 1)');
SELECT lives_ok(format($$SELECT quota_ext._counters_lay_out(%s, %s, now(), 1, 0, '{}', 7, 3, 3)$$,
	:ta, :qw), 'laid out again over one row');
SELECT is(pg_temp.rows(:qw), '0:7/', 'one plain counter: the total, no allowance, the rest deleted');
SELECT throws_ok(format($$SELECT quota_ext._counters_lay_out(%s, %s, now(), 1, 0, NULL, 0, 0, 0)$$,
	:ta, :qw), '22004', NULL, 'a NULL argument is refused');
SELECT throws_ok(format($$SELECT quota_ext._counters_lay_out(%s, %s, now(), 3, 1, '{1}', 0, 0, 0)$$,
	:ta, :qw), '22023', NULL, 'a kept slot must lie below the first new one');
-- granted by mistake, it still writes for nobody but the owner's functions
CREATE ROLE qx_tap_layout LOGIN IN ROLE quota_ext_app;
GRANT EXECUTE ON FUNCTION quota_ext._counters_lay_out(bigint, bigint, timestamptz, integer, integer,
	integer[], bigint, integer, bigint) TO qx_tap_layout;
SET ROLE qx_tap_layout;
SELECT throws_ok(format($$SELECT quota_ext._counters_lay_out(%s, %s, now(), 1, 0, '{}', 0, 0, 0)$$,
	:ta, :qw), '42501', NULL, 'a role other than the owner is refused even with EXECUTE');
RESET ROLE;
SELECT is(pg_temp.rows(:qw), '0:7/', '... and the counter is as it was');

SELECT * FROM finish();
ROLLBACK;
