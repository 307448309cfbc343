-- consume: quota_consume / invoke / refunds / reservations / tier defaults,
-- one session at a time (two sessions: test/specs/).  After every section
-- quota_test.violations() (test/invariant.sql) must return no rows: every
-- counter equals the sum of the usage ledger for its period and scope.
--
-- Output avoids values that change from run to run: ids (errors go through
-- pg_temp.try, which masks numbers), and timestamps other than checks
-- against an independent computation.  Tenant names start with "c-" and
-- global models are looked up before they are registered, because every
-- pg_regress file shares one database.
\set ECHO none
\i test/invariant.sql
\set ECHO all
SET datestyle = 'ISO, YMD';
SET TimeZone = 'UTC';
-- the decision columns that are stable between runs
\set d 'allowed, denied_by, period, "limit", remaining, replayed'
-- SQLSTATE and message of a failing statement, numbers masked
CREATE FUNCTION pg_temp.try(sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE sql;
	RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
	RETURN SQLSTATE || ': ' || regexp_replace(SQLERRM, '[0-9]+', 'N', 'g');
END
$$;
-- a global model, registered unless another test did
CREATE FUNCTION pg_temp.model(name text) RETURNS boolean LANGUAGE sql AS $$
	SELECT coalesce((SELECT m.model_id FROM quota_ext.models m
	                  WHERE m.name = $1 AND m.owner_tenant_id IS NULL),
	                quota_ext.model_register($1)) > 0
$$;

-- ---------------------------------------------------------------------
-- seed 000: tenant, users with roles, two models, a policy, daily and
-- monthly call quotas; invoke until the daily quota denies
-- ---------------------------------------------------------------------
SELECT quota_ext.tenant_create('c-acme', 'free', 'Asia/Kolkata') AS acme \gset
SELECT user_id AS alice, api_key AS alice_key
  FROM quota_ext.user_create(:acme, 'alice@acme.com', 'admin') \gset
SELECT user_id AS vera, api_key AS vera_key
  FROM quota_ext.user_create(:acme, 'vera@acme.com', 'viewer') \gset
SELECT pg_temp.model('gpt-4o') AS registered;
SELECT pg_temp.model('embedding-1') AS registered;
SELECT quota_ext.policy_set(:acme, 'gpt-4o', true, ARRAY['admin', 'member']) > 0 AS policy_set;
SELECT quota_ext.quota_set(:acme, 'daily', 3) > 0 AS quota_set;
SELECT quota_ext.quota_set(:acme, 'monthly', 10000) > 0 AS quota_set;
SELECT period, metric, model_name, "limit", used, remaining, on_exceed, origin
  FROM quota_ext.quota_status(:acme);

SELECT :d FROM quota_ext.invoke(:'alice_key', 'gpt-4o');
SELECT :d FROM quota_ext.invoke(:'alice_key', 'gpt-4o');
SELECT :d FROM quota_ext.invoke(:'alice_key', 'gpt-4o');
-- the fourth call: denied by the daily quota, nothing left, and it resets
-- at the next midnight in the tenant's zone (Asia/Kolkata, +05:30)
SELECT :d, usage_id IS NULL AS no_usage,
       resets_at = (date_trunc('day', now() AT TIME ZONE 'Asia/Kolkata') + interval '1 day')
                   AT TIME ZONE 'Asia/Kolkata' AS resets_at_local_midnight,
       retry_after BETWEEN 1 AND 86400 AS retry_after_ok
  FROM quota_ext.invoke(:'alice_key', 'gpt-4o');
-- policy: a role not listed, a model without policy (default deny), an
-- unknown model
SELECT :d FROM quota_ext.invoke(:'vera_key', 'gpt-4o');
SELECT :d FROM quota_ext.invoke(:'alice_key', 'embedding-1');
SELECT pg_temp.try(format('SELECT quota_ext.invoke(%L, %L)', :'alice_key', 'no-such-model'));
SELECT period, "limit", used, remaining FROM quota_ext.quota_status(:acme);
-- the summary, as seed 000 shows it (varying fields left out)
SELECT jsonb_object_keys(quota_ext.tenant_summary(:acme)) AS key ORDER BY 1;
SELECT (s->'tenant') - 'tenant_id'::text - 'created_at'::text AS tenant,
       s->'policies' AS policies,
       (SELECT jsonb_agg(q - 'quota_id'::text - 'resets_at'::text) FROM jsonb_array_elements(s->'quotas') q) AS quotas,
       (SELECT bool_and((q->>'resets_at')::timestamptz > now()) FROM jsonb_array_elements(s->'quotas') q)
         AS resets_in_future,
       s->'usage' AS usage
  FROM quota_ext.tenant_summary(:acme) s \gx
SELECT * FROM quota_test.violations();

-- ---------------------------------------------------------------------
-- all or nothing: when the monthly quota denies, the daily one is not
-- charged; when both deny, the one that frees up last is reported
-- ---------------------------------------------------------------------
SELECT quota_ext.tenant_create('c-aon', 'enterprise') AS aon \gset
SELECT quota_ext.policy_set(:aon, 'gpt-4o', true) > 0 AS policy_set;
SELECT quota_ext.quota_set(:aon, 'monthly', 2) > 0 AS quota_set;
SELECT quota_ext.quota_set(:aon, 'daily', 10) > 0 AS quota_set;
SELECT :d FROM quota_ext.quota_consume(:aon, 'gpt-4o');
SELECT :d FROM quota_ext.quota_consume(:aon, 'gpt-4o');
SELECT :d FROM quota_ext.quota_consume(:aon, 'gpt-4o');
SELECT period, "limit", used FROM quota_ext.quota_status(:aon);
SELECT quota_ext.quota_set(:aon, 'daily', 2) > 0 AS daily_cut_to_2;
SELECT :d FROM quota_ext.quota_consume(:aon, 'gpt-4o');
SELECT count(*) AS usage_rows FROM quota_ext.usage WHERE tenant_id = :aon;
SELECT * FROM quota_test.violations();

-- ---------------------------------------------------------------------
-- F1: ROLLBACK, ROLLBACK TO SAVEPOINT and a later error charge nothing and
-- do not burn the idempotency key
-- ---------------------------------------------------------------------
SELECT quota_ext.tenant_create('c-f1', 'enterprise') AS f1 \gset
SELECT quota_ext.policy_set(:f1, 'gpt-4o', true) > 0 AS policy_set;
SELECT quota_ext.quota_set(:f1, 'monthly', 100, metric => 'units') > 0 AS quota_set;
BEGIN;
SELECT :d FROM quota_ext.quota_consume(:f1, 'gpt-4o', 10, 'f1-a');
ROLLBACK;
BEGIN;
SAVEPOINT s;
SELECT :d FROM quota_ext.quota_consume(:f1, 'gpt-4o', 10, 'f1-b');
ROLLBACK TO SAVEPOINT s;
SELECT used FROM quota_ext.quota_status(:f1);
COMMIT;
BEGIN;
SELECT :d FROM quota_ext.quota_consume(:f1, 'gpt-4o', 10, 'f1-c');
SELECT 1 / 0;
ROLLBACK;
SELECT used FROM quota_ext.quota_status(:f1);
SELECT count(*) AS usage_rows, (SELECT count(*) FROM quota_ext.idempotency_keys WHERE tenant_id = :f1) AS keys
  FROM quota_ext.usage WHERE tenant_id = :f1;
-- the keys are still free: each counts once now, and a replay counts nothing
SELECT :d FROM quota_ext.quota_consume(:f1, 'gpt-4o', 10, 'f1-a');
SELECT :d FROM quota_ext.quota_consume(:f1, 'gpt-4o', 10, 'f1-b');
SELECT :d FROM quota_ext.quota_consume(:f1, 'gpt-4o', 10, 'f1-c');
SELECT :d FROM quota_ext.quota_consume(:f1, 'gpt-4o', 10, 'f1-c');
SELECT a.usage_id = b.usage_id AS same_usage_row
  FROM quota_ext.quota_consume(:f1, 'gpt-4o', 10, 'f1-a') a,
       quota_ext.quota_consume(:f1, 'gpt-4o', 10, 'f1-a') b;
SELECT used FROM quota_ext.quota_status(:f1);
SELECT * FROM quota_test.violations();

-- ---------------------------------------------------------------------
-- F2: statement_timeout in the middle of a batch leaves nothing, and no
-- tenant context survives into the next transaction
-- ---------------------------------------------------------------------
SELECT user_id AS f1u, api_key AS f1_key FROM quota_ext.user_create(:f1, 'ops@f1.test', 'member') \gset
SET statement_timeout = '300ms';
SELECT (quota_ext.invoke(:'f1_key', 'gpt-4o', 1, 'f2-' || i)).allowed, pg_sleep(0.05)
  FROM generate_series(1, 40) i;
RESET statement_timeout;
SELECT quota_ext.current_tenant_id() AS context_after_timeout;
SELECT used FROM quota_ext.quota_status(:f1);
SELECT count(*) AS f2_rows FROM quota_ext.usage WHERE tenant_id = :f1 AND idempotency_key LIKE 'f2-%';
SELECT count(*) AS f2_keys FROM quota_ext.idempotency_keys WHERE tenant_id = :f1 AND idempotency_key LIKE 'f2-%';
SELECT * FROM quota_test.violations();

-- ---------------------------------------------------------------------
-- F11: a read-only transaction cannot consume (25006); policy_check and
-- authenticate still answer
-- ---------------------------------------------------------------------
BEGIN READ ONLY;
SELECT pg_temp.try(format('SELECT quota_ext.quota_consume(%s, %L, 1)', :f1, 'gpt-4o'));
SELECT pg_temp.try(format('SELECT quota_ext.quota_reserve(%s, %L, 1)', :f1, 'gpt-4o'));
SELECT pg_temp.try(format('SELECT quota_ext.quota_refund(%s, 1)', :f1));
SELECT pg_temp.try('SELECT quota_ext.quota_expire_reservations()');
ROLLBACK;
SET default_transaction_read_only = on;
SELECT pg_temp.try(format('SELECT quota_ext.invoke(%L, %L, 1, %L)', :'f1_key', 'gpt-4o', 'ro-1'));
SELECT quota_ext.policy_check(:f1, 'gpt-4o') AS policy_check_read_only;
SELECT tenant_id = :f1 AS authenticated_read_only FROM quota_ext.authenticate(:'f1_key');
RESET default_transaction_read_only;
SELECT used FROM quota_ext.quota_status(:f1);

-- ---------------------------------------------------------------------
-- on_exceed: alert lets calls through past the limit; overage lets them
-- through and marks the units beyond the limit on the usage row
-- ---------------------------------------------------------------------
SELECT quota_ext.tenant_create('c-exceed', 'enterprise') AS ex \gset
SELECT quota_ext.policy_set(:ex, 'gpt-4o', true) > 0 AS policy_set;
SELECT quota_ext.policy_set(:ex, 'embedding-1', true) > 0 AS policy_set;
SELECT quota_ext.quota_set(:ex, 'monthly', 10, 'gpt-4o', 'units', on_exceed => 'alert') > 0 AS alert_quota;
SELECT quota_ext.quota_set(:ex, 'monthly', 10, 'embedding-1', 'units', on_exceed => 'overage') > 0 AS overage_quota;
SELECT :d FROM quota_ext.quota_consume(:ex, 'gpt-4o', 8);
SELECT :d FROM quota_ext.quota_consume(:ex, 'gpt-4o', 5);
SELECT :d FROM quota_ext.quota_consume(:ex, 'embedding-1', 8);
SELECT :d FROM quota_ext.quota_consume(:ex, 'embedding-1', 5);
SELECT :d FROM quota_ext.quota_consume(:ex, 'embedding-1', 4);
SELECT m.name AS model, u.units, u.overage_units
  FROM quota_ext.usage u JOIN quota_ext.models m USING (model_id)
 WHERE u.tenant_id = :ex ORDER BY u.usage_id;
SELECT model_name, "limit", used, remaining, on_exceed FROM quota_ext.quota_status(:ex);
-- a blocking quota still denies, all or nothing, whatever the others say
SELECT quota_ext.quota_set(:ex, 'monthly', 3, metric => 'units') > 0 AS block_quota;
SELECT :d FROM quota_ext.quota_consume(:ex, 'embedding-1', 5);
SELECT model_name, used FROM quota_ext.quota_status(:ex);
SELECT * FROM quota_test.violations();
-- adjustments carry the change in overage, so sum(overage_units) stays
-- what the period owes: a refund of an overage call gives its overage
-- back; a settle above the estimate marks the excess beyond the limit; a
-- cancelled reservation gives back the overage it was marked with
SELECT quota_ext.tenant_create('c-overage', 'enterprise') AS ov \gset
SELECT quota_ext.policy_set(:ov, 'gpt-4o', true) > 0 AS policy_set;
SELECT quota_ext.quota_set(:ov, 'monthly', 10, metric => 'units', on_exceed => 'overage') > 0 AS overage_quota;
SELECT usage_id AS ov_usage FROM quota_ext.quota_consume(:ov, 'gpt-4o', 12) \gset
SELECT :d FROM quota_ext.quota_refund(:ov, :ov_usage);
SELECT reservation_id AS ov_r1 FROM quota_ext.quota_reserve(:ov, 'gpt-4o', 8) \gset
SELECT :d FROM quota_ext.quota_settle(:ov, :ov_r1, 15);
SELECT reservation_id AS ov_r2 FROM quota_ext.quota_reserve(:ov, 'gpt-4o', 4) \gset
SELECT :d FROM quota_ext.quota_cancel(:ov, :ov_r2);
SELECT reservation_id AS ov_r3 FROM quota_ext.quota_reserve(:ov, 'gpt-4o', 3) \gset
SELECT :d FROM quota_ext.quota_settle(:ov, :ov_r3, 1);
SELECT kind, units, overage_units FROM quota_ext.usage WHERE tenant_id = :ov ORDER BY usage_id;
SELECT used, used - "limit" AS over_limit,
       (SELECT sum(overage_units) FROM quota_ext.usage WHERE tenant_id = :ov) AS sum_overage_units
  FROM quota_ext.quota_status(:ov);
SELECT * FROM quota_test.violations();

-- ---------------------------------------------------------------------
-- threshold and soft-limit events: once per quota, period and threshold;
-- a refund and a re-crossing emit nothing new; a rolled-back crossing
-- emits nothing (the NOTIFY payload is shown by specs/events.spec)
-- ---------------------------------------------------------------------
SELECT quota_ext.tenant_create('c-events', 'enterprise') AS ev \gset
SELECT quota_ext.policy_set(:ev, 'gpt-4o', true) > 0 AS policy_set;
SELECT quota_ext.quota_set(:ev, 'monthly', 10, metric => 'units', soft_limit => 5,
                           thresholds => '{50,80,100}') AS ev_q \gset
CREATE TEMP VIEW ev AS
	SELECT kind, threshold, used, "limit" FROM quota_ext.quota_events
	 WHERE tenant_id = :ev ORDER BY event_id;
SELECT :d FROM quota_ext.quota_consume(:ev, 'gpt-4o', 4);
SELECT * FROM ev;
SELECT usage_id AS ev_usage FROM quota_ext.quota_consume(:ev, 'gpt-4o', 1) \gset
SELECT * FROM ev;
BEGIN;
SELECT :d FROM quota_ext.quota_consume(:ev, 'gpt-4o', 3);
SELECT count(*) AS events_in_transaction FROM quota_ext.quota_events WHERE tenant_id = :ev;
ROLLBACK;
SELECT * FROM ev;
SELECT :d FROM quota_ext.quota_consume(:ev, 'gpt-4o', 5);
SELECT * FROM ev;
SELECT :d FROM quota_ext.quota_consume(:ev, 'gpt-4o', 1);
-- give 1 unit back (10 -> 9) and cross 100% again: no new event
SELECT :d FROM quota_ext.quota_refund(:ev, :ev_usage);
SELECT used FROM quota_ext.quota_status(:ev);
SELECT :d FROM quota_ext.quota_consume(:ev, 'gpt-4o', 1);
SELECT * FROM ev;
SELECT * FROM quota_test.violations();

-- ---------------------------------------------------------------------
-- refunds: once; the counter goes back; a second refund is replayed
-- ---------------------------------------------------------------------
SELECT quota_ext.tenant_create('c-refunds', 'enterprise') AS rf \gset
SELECT quota_ext.policy_set(:rf, 'gpt-4o', true) > 0 AS policy_set;
SELECT quota_ext.quota_set(:rf, 'monthly', 100, metric => 'units') > 0 AS units_quota;
SELECT quota_ext.quota_set(:rf, 'monthly', 10) > 0 AS calls_quota;
SELECT usage_id AS rf_usage FROM quota_ext.quota_consume(:rf, 'gpt-4o', 30) \gset
SELECT metric, used FROM quota_ext.quota_status(:rf);
SELECT allowed, replayed, usage_id <> :rf_usage AS new_row FROM quota_ext.quota_refund(:rf, :rf_usage);
SELECT metric, used FROM quota_ext.quota_status(:rf);
SELECT allowed, replayed FROM quota_ext.quota_refund(:rf, :rf_usage);
SELECT metric, used FROM quota_ext.quota_status(:rf);
SELECT kind, calls, units, ref_usage_id = :rf_usage AS refers FROM quota_ext.usage
 WHERE tenant_id = :rf ORDER BY usage_id;
-- a refund row cannot be refunded; unknown usage; another tenant's usage
SELECT usage_id AS rf_refund FROM quota_ext.usage WHERE tenant_id = :rf AND kind = 'refund' \gset
SELECT pg_temp.try(format('SELECT quota_ext.quota_refund(%s, %s)', :rf, :rf_refund));
SELECT pg_temp.try(format('SELECT quota_ext.quota_refund(%s, %s)', :rf, 999999999));
SELECT pg_temp.try(format('SELECT quota_ext.quota_refund(%s, %s)', :ev, :rf_usage));
SELECT * FROM quota_test.violations();

-- ---------------------------------------------------------------------
-- period rollover: yesterday's counter is read as 0 today; a refund of
-- yesterday's usage leaves today's counter alone and keeps yesterday's
-- ledger right.  (Yesterday is simulated by moving the rows back a day.)
-- ---------------------------------------------------------------------
SELECT quota_ext.tenant_create('c-rollover', 'enterprise', 'Europe/Berlin') AS ro \gset
SELECT quota_ext.policy_set(:ro, 'gpt-4o', true) > 0 AS policy_set;
SELECT quota_ext.quota_set(:ro, 'daily', 2) > 0 AS quota_set;
SELECT usage_id AS ro_usage FROM quota_ext.quota_consume(:ro, 'gpt-4o') \gset
SELECT :d FROM quota_ext.quota_consume(:ro, 'gpt-4o');
SELECT :d FROM quota_ext.quota_consume(:ro, 'gpt-4o');
UPDATE quota_ext.quota_counters SET period_start = period_start - interval '1 day' WHERE tenant_id = :ro;
UPDATE quota_ext.quotas SET created_at = created_at - interval '1 day' WHERE tenant_id = :ro;
UPDATE quota_ext.usage SET occurred_at = occurred_at - interval '1 day' WHERE tenant_id = :ro;
SELECT * FROM quota_test.violations();
SELECT :d FROM quota_ext.quota_consume(:ro, 'gpt-4o');
SELECT :d FROM quota_ext.quota_refund(:ro, :ro_usage);
SELECT used FROM quota_ext.quota_status(:ro);
SELECT * FROM quota_test.violations();

-- ---------------------------------------------------------------------
-- reservations: reserve an estimate, settle below / equal / above within
-- the limit / above beyond it; settle twice; cancel; expire
-- ---------------------------------------------------------------------
SELECT quota_ext.tenant_create('c-reserve', 'enterprise') AS rs \gset
SELECT quota_ext.policy_set(:rs, 'gpt-4o', true) > 0 AS policy_set;
SELECT quota_ext.quota_set(:rs, 'monthly', 100, metric => 'units') > 0 AS quota_set;
-- below the estimate: the difference is given back
SELECT reservation_id AS r1 FROM quota_ext.quota_reserve(:rs, 'gpt-4o', 30) \gset
SELECT used FROM quota_ext.quota_status(:rs);
SELECT :d FROM quota_ext.quota_settle(:rs, :r1, 20);
SELECT used FROM quota_ext.quota_status(:rs);
-- equal
SELECT reservation_id AS r2 FROM quota_ext.quota_reserve(:rs, 'gpt-4o', 30) \gset
SELECT :d FROM quota_ext.quota_settle(:rs, :r2, 30);
SELECT used FROM quota_ext.quota_status(:rs);
-- above, within the limit: the excess is charged
SELECT reservation_id AS r3 FROM quota_ext.quota_reserve(:rs, 'gpt-4o', 10) \gset
SELECT :d FROM quota_ext.quota_settle(:rs, :r3, 25);
SELECT used FROM quota_ext.quota_status(:rs);
-- above, beyond the limit: the estimate stays charged, the excess is
-- recorded as unbilled, and the answer is allowed = false
SELECT reservation_id AS r4 FROM quota_ext.quota_reserve(:rs, 'gpt-4o', 10) \gset
SELECT used FROM quota_ext.quota_status(:rs);
SELECT :d FROM quota_ext.quota_settle(:rs, :r4, 30);
SELECT used FROM quota_ext.quota_status(:rs);
-- settling again with the same amount is replayed; with another is an error
SELECT :d FROM quota_ext.quota_settle(:rs, :r1, 20);
SELECT :d FROM quota_ext.quota_settle(:rs, :r4, 30);
SELECT pg_temp.try(format('SELECT quota_ext.quota_settle(%s, %s, 21)', :rs, :r1));
SELECT estimate, actual, unbilled, status FROM quota_ext.reservations
 WHERE tenant_id = :rs ORDER BY reservation_id;
-- a reservation the quota cannot take is denied and reserves nothing
SELECT :d, reservation_id IS NULL AS no_reservation FROM quota_ext.quota_reserve(:rs, 'gpt-4o', 50);
-- cancel gives the estimate back, once
SELECT used FROM quota_ext.quota_status(:rs);
SELECT reservation_id AS r5 FROM quota_ext.quota_reserve(:rs, 'gpt-4o', 5) \gset
SELECT used FROM quota_ext.quota_status(:rs);
SELECT allowed, replayed FROM quota_ext.quota_cancel(:rs, :r5);
SELECT allowed, replayed FROM quota_ext.quota_cancel(:rs, :r5);
SELECT used FROM quota_ext.quota_status(:rs);
SELECT pg_temp.try(format('SELECT quota_ext.quota_settle(%s, %s, 5)', :rs, :r5));
SELECT pg_temp.try(format('SELECT quota_ext.quota_cancel(%s, %s)', :rs, :r1));
-- expiry, by the sweep meant for pg_cron
SELECT reservation_id AS r6 FROM quota_ext.quota_reserve(:rs, 'gpt-4o', 7, ttl => '10 milliseconds') \gset
SELECT used FROM quota_ext.quota_status(:rs);
SELECT pg_sleep(0.05);
SELECT quota_ext.quota_expire_reservations() >= 1 AS expired_some;
SELECT status FROM quota_ext.reservations WHERE tenant_id = :rs AND reservation_id = :r6;
SELECT used FROM quota_ext.quota_status(:rs);
SELECT pg_temp.try(format('SELECT quota_ext.quota_settle(%s, %s, 7)', :rs, :r6));
SELECT pg_temp.try(format('SELECT quota_ext.quota_cancel(%s, %s)', :rs, :r6));
SELECT kind, calls, units FROM quota_ext.usage WHERE tenant_id = :rs ORDER BY usage_id;
-- idempotent reserve
SELECT a.reservation_id = b.reservation_id AS same_reservation, b.replayed
  FROM quota_ext.quota_reserve(:rs, 'gpt-4o', 3, idempotency_key => 'rs-1') a,
       quota_ext.quota_reserve(:rs, 'gpt-4o', 3, idempotency_key => 'rs-1') b;
-- bad arguments
SELECT * FROM quota_ext.quota_reserve(:rs, 'gpt-4o', 0);
SELECT * FROM quota_ext.quota_reserve(:rs, 'gpt-4o', 1, ttl => '0');
SELECT * FROM quota_ext.quota_reserve(:rs, 'gpt-4o', 1, ttl => '-1 minute');
SELECT * FROM quota_ext.quota_reserve(:rs, 'gpt-4o', 1, ttl => '8 days');
SELECT * FROM quota_ext.quota_reserve(:rs, 'gpt-4o', 1, ttl => '1 month');
SELECT * FROM quota_ext.quota_settle(:rs, :r3, -1);
SELECT * FROM quota_ext.quota_settle(:rs, 999999999, 1);
SELECT pg_temp.try(format('SELECT quota_ext.quota_cancel(%s, %s)', :ev, :r3));
SELECT * FROM quota_test.violations();

-- ---------------------------------------------------------------------
-- tier defaults: a free tenant gets 1,000 calls a month; its own monthly
-- quota replaces the default; a tier change moves the default; enterprise
-- has none
-- ---------------------------------------------------------------------
SELECT quota_ext.tenant_create('c-tiers') AS ti \gset
SELECT period, metric, "limit", origin FROM quota_ext.quota_status(:ti);
SELECT quota_ext.tenant_update(:ti, tier => 'pro');
SELECT period, metric, "limit", origin FROM quota_ext.quota_status(:ti);
SELECT quota_ext.tenant_update(:ti, tier => 'premium');
SELECT period, metric, "limit", origin FROM quota_ext.quota_status(:ti);
SELECT quota_ext.tenant_update(:ti, tier => 'enterprise');
SELECT count(*) AS enterprise_quotas FROM quota_ext.quota_status(:ti);
SELECT quota_ext.tenant_update(:ti, tier => 'free');
SELECT quota_ext.policy_set(:ti, 'gpt-4o', true) > 0 AS policy_set;
SELECT :d FROM quota_ext.quota_consume(:ti, 'gpt-4o');
SELECT quota_ext.quota_set(:ti, 'monthly', 2) AS own_quota \gset
SELECT period, metric, "limit", used, origin FROM quota_ext.quota_status(:ti);
SELECT quota_ext.tenant_update(:ti, tier => 'pro');
SELECT period, metric, "limit", used, origin FROM quota_ext.quota_status(:ti);
SELECT :d FROM quota_ext.quota_consume(:ti, 'gpt-4o');
SELECT :d FROM quota_ext.quota_consume(:ti, 'gpt-4o');
SELECT quota_ext.quota_delete(:ti, :own_quota);
SELECT period, metric, "limit", used, origin FROM quota_ext.quota_status(:ti);
SELECT :d FROM quota_ext.quota_consume(:ti, 'gpt-4o');
SELECT * FROM quota_test.violations();

-- ---------------------------------------------------------------------
-- scopes: per user, per key, per model (units)
-- ---------------------------------------------------------------------
SELECT quota_ext.tenant_create('c-scopes', 'enterprise') AS sc \gset
SELECT pg_temp.model('gpt-4o-mini') AS registered;
SELECT quota_ext.policy_set(:sc, 'gpt-*', true) > 0 AS policy_set;
SELECT quota_ext.policy_set(:sc, 'embedding-1', true) > 0 AS policy_set;
SELECT user_id AS u1, api_key AS u1_key FROM quota_ext.user_create(:sc, 'u1@sc.test', 'member') \gset
SELECT user_id AS u2, api_key AS u2_key FROM quota_ext.user_create(:sc, 'u2@sc.test', 'member') \gset
SELECT key_id AS u2k2, api_key AS u2_key2 FROM quota_ext.api_key_create(:sc, :u2) \gset
SELECT quota_ext.quota_set(:sc, 'daily', 2, user_id => :u1) > 0 AS user_quota;
SELECT quota_ext.quota_set(:sc, 'daily', 1, key_id => :u2k2) > 0 AS key_quota;
SELECT quota_ext.quota_set(:sc, 'monthly', 1000, 'gpt-4o', 'units') > 0 AS model_quota;
-- u1: two calls, then its own quota denies; u2 is not limited by it
SELECT :d FROM quota_ext.invoke(:'u1_key', 'embedding-1');
SELECT :d FROM quota_ext.invoke(:'u1_key', 'embedding-1');
SELECT :d FROM quota_ext.invoke(:'u1_key', 'embedding-1');
SELECT :d FROM quota_ext.invoke(:'u2_key', 'embedding-1');
-- u2's second key: one call; its first key is not limited by it
SELECT :d FROM quota_ext.invoke(:'u2_key2', 'embedding-1');
SELECT :d FROM quota_ext.invoke(:'u2_key2', 'embedding-1');
SELECT :d FROM quota_ext.invoke(:'u2_key', 'embedding-1');
-- the same scopes by id, as an admin would pass them
SELECT :d FROM quota_ext.quota_consume(:sc, 'embedding-1', user_id => :u1);
SELECT :d FROM quota_ext.quota_consume(:sc, 'embedding-1', key_id => :u2k2);
-- gpt-4o units: 600 + 500 > 1000 denies; another model is not in scope
SELECT :d FROM quota_ext.quota_consume(:sc, 'gpt-4o', 600);
SELECT :d FROM quota_ext.quota_consume(:sc, 'gpt-4o', 500);
SELECT :d FROM quota_ext.quota_consume(:sc, 'gpt-4o-mini', 500);
SELECT :d FROM quota_ext.quota_consume(:sc, 'embedding-1', 500);
SELECT period, metric, model_name, scope_user_id = :u1 AS u1, scope_key_id = :u2k2 AS k2,
       "limit", used
  FROM quota_ext.quota_status(:sc);
SELECT * FROM quota_test.violations();

RESET TimeZone;
RESET datestyle;
