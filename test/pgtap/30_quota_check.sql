-- Issue 17: quota_check(tenant_id, model, units DEFAULT 1, ...) -> decision:
-- what quota_consume would answer, charging nothing (no usage, counter,
-- event, idempotency key or rate-limit token) and locking nothing
-- (test/specs/quota_check_nolock.spec).  Every test here failed on main
-- (the function did not exist).
BEGIN;
\ir metering_helpers.psql
SELECT plan(24);

\o /dev/null
SELECT quota_ext.tenant_create('qc-a', 'enterprise') AS ta \gset
SELECT quota_ext.model_register('qc-chat') AS m1 \gset
SELECT quota_ext.model_register('qc-closed') AS m2 \gset
SELECT quota_ext.policy_set(:ta, 'qc-chat', true);
SELECT quota_ext.price_set('qc-chat', 'USD', unit_price => 0.10);
SELECT user_id AS ua FROM quota_ext.user_create(:ta, 'a@qc.example', 'member') \gset
SELECT quota_ext.quota_set(:ta, 'daily', 10) AS qcalls \gset
SELECT quota_ext.quota_set(:ta, 'monthly', 100, metric => 'units', slots => 4) AS qunits \gset
SELECT quota_ext.quota_set(:ta, 'monthly', max_cost => 20, currency => 'USD') AS qcost \gset
\o

SELECT has_function('quota_ext', 'quota_check',
	ARRAY['bigint', 'text', 'bigint', 'bigint', 'bigint', 'text', 'bigint', 'bigint'],
	'quota_check(tenant_id, model, units, user_id, key_id, role, input_tokens, output_tokens)');
SELECT function_returns('quota_ext', 'quota_check',
	ARRAY['bigint', 'text', 'bigint', 'bigint', 'bigint', 'text', 'bigint', 'bigint'], 'quota_ext.decision', 'it returns a decision');

-- the answer equals the consume's that follows (but for usage_id)
CREATE TEMP TABLE qc_pairs (label text, chk quota_ext.decision, con quota_ext.decision);
CREATE FUNCTION pg_temp.qc_pair(label text, t bigint, model text, units bigint) RETURNS void
	LANGUAGE plpgsql AS $$
DECLARE c quota_ext.decision; k quota_ext.decision;
BEGIN
	c := quota_ext.quota_check(t, model, units);
	k := quota_ext.quota_consume(t, model, units);
	INSERT INTO qc_pairs VALUES (label, c, k);
END
$$;
CREATE FUNCTION pg_temp.qc_same(l text) RETURNS text LANGUAGE sql AS $$
	SELECT CASE WHEN (p.chk).usage_id IS NULL
	             AND row((p.chk).allowed, (p.chk).denied_by, (p.chk).denied_metric, (p.chk).quota_id, (p.chk).period,
	                     (p.chk)."limit", (p.chk).remaining, (p.chk).resets_at, (p.chk).cost,
	                     (p.chk).remaining_cost, (p.chk).currency, (p.chk).tenant_id)::text
	                 = row((p.con).allowed, (p.con).denied_by, (p.con).denied_metric, (p.con).quota_id, (p.con).period,
	                     (p.con)."limit", (p.con).remaining, (p.con).resets_at, (p.con).cost,
	                     (p.con).remaining_cost, (p.con).currency, (p.con).tenant_id)::text
	            THEN 'same' ELSE format('check %s, consume %s', p.chk, p.con) END
	  FROM qc_pairs p WHERE p.label = l
$$;

SELECT pg_temp.qc_pair('allowed', :ta, 'qc-chat', 30);
SELECT is(pg_temp.qc_same('allowed'), 'same', 'allowed: the consume''s answer (tightest quota, cost, budget left)');
SELECT is((SELECT (chk).allowed FROM qc_pairs WHERE label = 'allowed'), true, '... which allows');
SELECT pg_temp.qc_pair('units', :ta, 'qc-chat', 71);
SELECT is(pg_temp.qc_same('units'), 'same', 'an escrow units quota denies: the same denial');
SELECT is((SELECT (chk).denied_metric FROM qc_pairs WHERE label = 'units'), 'units', '... denied_metric units');
\o /dev/null
SELECT quota_ext.quota_set(:ta, 'monthly', max_cost => 5, currency => 'USD');
\o
SELECT pg_temp.qc_pair('cost', :ta, 'qc-chat', 21);
SELECT is(pg_temp.qc_same('cost'), 'same', 'the money budget denies: the same denial');
SELECT is((SELECT (chk).denied_metric FROM qc_pairs WHERE label = 'cost'), 'cost', '... denied_metric cost');
SELECT pg_temp.qc_pair('policy', :ta, 'qc-closed', 1);
SELECT is(pg_temp.qc_same('policy'), 'same', 'a model the policy denies: the same denial');
\o /dev/null
SELECT quota_ext.quota_consume(:ta, 'qc-chat') FROM generate_series(1, 9);
\o
SELECT pg_temp.qc_pair('calls', :ta, 'qc-chat', 1);
SELECT is(pg_temp.qc_same('calls'), 'same', 'the daily calls quota denies: the same denial');
SELECT is((SELECT (chk).denied_metric FROM qc_pairs WHERE label = 'calls'), 'calls', '... denied_metric calls');

-- it charges nothing, writes nothing
SELECT pg_temp.mx_snap();
\o /dev/null
SELECT quota_ext.quota_check(:ta, 'qc-chat', 1);
SELECT quota_ext.quota_check(:ta, 'qc-chat', 1000);
\o
SELECT is(pg_temp.mx_state(), (SELECT s FROM pg_temp.mx_snapshot), 'quota_check writes nothing (every table, the context)');

-- identity: the user and the tenant of the call
SELECT results_eq(format('SELECT tenant_id, user_id FROM quota_ext.quota_check(%s, ''qc-chat'', user_id => %s)', :ta, :ua),
	format('VALUES (%s::bigint, %s::bigint)', :ta, :ua), 'the decision carries the tenant and the user');

-- a read-only transaction: quota_consume refuses (25006), quota_check answers
SAVEPOINT ro;
SET TRANSACTION READ ONLY;
SELECT throws_ok(format($$SELECT quota_ext.quota_consume(%s, 'qc-chat')$$, :ta), '25006', NULL, 'quota_consume in a read-only transaction: 25006');
ROLLBACK TO SAVEPOINT ro;
SET TRANSACTION READ ONLY;
SELECT lives_ok(format($$SELECT quota_ext.quota_check(%s, 'qc-chat')$$, :ta), 'quota_check in a read-only transaction');
ROLLBACK TO SAVEPOINT ro;

-- the rate limit: a free tenant's burst is not consumed by checks
\o /dev/null
SELECT quota_ext.tenant_create('qc-free', 'free') AS tf \gset
SELECT quota_ext.policy_set(:tf, 'qc-chat', true);
\o
SELECT is((SELECT count(*) FILTER (WHERE allowed) FROM generate_series(1, 30) g, quota_ext.quota_check(:tf, 'qc-chat', 1 + 0 * g)), 30::bigint,
	'30 checks of a free tenant (burst 10) are all allowed: checks take no token');
SELECT is((SELECT count(*) FILTER (WHERE allowed) FROM generate_series(1, 30) g, quota_ext.quota_consume(:tf, 'qc-chat', 1 + 0 * g)), 11::bigint,
	'... then consumes still get the whole burst (11 at once)');
SELECT results_eq(format($$SELECT allowed, denied_by FROM quota_ext.quota_check(%s, 'qc-chat')$$, :tf),
	$$VALUES (false, 'rate_limit'::text)$$, 'and a check after them says rate_limit, as a consume would');

-- bad input: quota_consume's errors, nothing changed
SELECT pg_temp.mx_snap();
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.quota_check(%s, 'qc-chat', 0)$$, :ta), '22023',
	'units must be positive', 'units 0');
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.quota_check(%s, 'qc-nope')$$, :ta), '42704',
	'model "qc-nope" does not exist', 'an unknown model');
SELECT * FROM pg_temp.mx_throws($$SELECT quota_ext.quota_check(NULL, 'qc-chat')$$, '22004',
	'argument "tenant_id" must not be null', 'tenant_id NULL');

SELECT * FROM finish();
ROLLBACK;
