-- Issue 17: tiers editable by quota_ext_admin (tier_set, audited, the
-- configuration cache told), the built-in tiers of both seeds, feature
-- flags evaluated (feature_enabled), members removed (user_remove), a
-- tier's cap on members (user_create) and idempotency keys purged
-- (idempotency_purge).  Dump and restore of edited tiers:
-- test/t/019_tier_dump_restore.pl.  Every test here failed on main.
BEGIN;
\ir metering_helpers.psql
SELECT plan(59);

-- ---------------------------------------------------------------------------
-- built-in tiers
-- ---------------------------------------------------------------------------
SELECT results_eq($$SELECT tier, monthly_calls, rate_limit_per_minute, rate_limit_burst, audit_retention, max_users, features
                      FROM quota_ext.tiers WHERE builtin ORDER BY monthly_calls NULLS LAST$$,
	$$VALUES ('free'::text, 1000::bigint, 60, 10, interval '7 days', NULL::integer, '{}'::jsonb),
	         ('starter', 5000, 120, 20, interval '30 days', NULL, '{}'),
	         ('pro', 10000, 600, 100, interval '30 days', NULL, '{}'),
	         ('premium', 50000, 3000, 500, interval '90 days', NULL, '{}'),
	         ('enterprise', NULL, NULL, NULL, interval '365 days', NULL, '{}')$$,
	'five built-in tiers: free, starter, pro, premium, enterprise (README, section Tiers)');
SELECT quota_ext.tenant_create('tm-prof', 'professional') AS tprof \gset
SELECT is((SELECT tier FROM quota_ext.tenants WHERE tenant_id = :tprof), 'pro', 'tier professional is pro');

-- ---------------------------------------------------------------------------
-- tier_set
-- ---------------------------------------------------------------------------
SELECT quota_ext.tenant_create('tm-a', 'starter') AS ta \gset
SELECT is((SELECT max_units FROM quota_ext.quotas WHERE tenant_id = :ta AND origin = 'tier'), 5000::bigint,
	'a starter tenant gets the tier''s 5,000 monthly calls');
SELECT is(quota_ext.tier_set('starter', monthly_calls => 6000, rate_limit_per_minute => 240, rate_limit_burst => 40,
                             features => '{"sso": false, "export": true}', max_users => 2), 'starter',
	'tier_set changes a built-in tier');
SELECT results_eq($$SELECT monthly_calls, rate_limit_per_minute, rate_limit_burst, features, max_users, builtin, modified
                      FROM quota_ext.tiers WHERE tier = 'starter'$$,
	$$VALUES (6000::bigint, 240, 40, '{"sso": false, "export": true}'::jsonb, 2, true, true)$$,
	'... stored, and marked modified (so it is dumped)');
SELECT is((SELECT max_units FROM quota_ext.quotas WHERE tenant_id = :ta AND origin = 'tier'), 6000::bigint,
	'... and the tier''s tenants follow its monthly calls at once');
SELECT results_eq($$SELECT action, object_type, object_id, tenant_id, (before ->> 'monthly_calls'), (after ->> 'monthly_calls')
                      FROM quota_ext.audit_log WHERE action = 'tier_set' ORDER BY audit_id DESC LIMIT 1$$,
	$$VALUES ('tier_set'::text, 'tier'::text, 'starter'::text, 0::bigint, '5000'::text, '6000'::text)$$,
	'tier_set is audited (global row, before and after)');
SELECT is(quota_ext.tier_set('gold', description => 'Gold', monthly_calls => 20000, rate_limit_per_minute => 100,
                             audit_retention => '60 days'), 'gold', 'tier_set creates a tier');
SELECT results_eq($$SELECT description, monthly_calls, rate_limit_per_minute, rate_limit_burst, audit_retention, builtin, modified
                      FROM quota_ext.tiers WHERE tier = 'gold'$$,
	$$VALUES ('Gold'::text, 20000::bigint, 100, 0, interval '60 days', false, false)$$,
	'... a custom tier (burst 0 when only the rate is given)');
\o /dev/null
SELECT quota_ext.tier_set('gold', unlimited => '{monthly_calls,rate_limit}');
\o
SELECT results_eq($$SELECT monthly_calls, rate_limit_per_minute, rate_limit_burst FROM quota_ext.tiers WHERE tier = 'gold'$$,
	$$VALUES (NULL::bigint, NULL::integer, NULL::integer)$$, 'unlimited lifts limits');
\o /dev/null
SELECT quota_ext.tier_set('gold', description => 'Gold plan');
\o
SELECT is((SELECT monthly_calls FROM quota_ext.tiers WHERE tier = 'gold'), NULL::bigint, 'NULL arguments keep the values');

-- bad input: a specific SQLSTATE, nothing changed
SELECT pg_temp.mx_snap();
SELECT * FROM pg_temp.mx_throws($$SELECT quota_ext.tier_set('Bad Name')$$, '22023', 'invalid tier name "Bad Name"', 'tier_set: bad name');
SELECT * FROM pg_temp.mx_throws($$SELECT quota_ext.tier_set('gold', monthly_calls => -1)$$, '22023',
	'monthly_calls, rate_limit_burst and max_users must not be negative, rate_limit_per_minute must be positive', 'tier_set: negative');
SELECT * FROM pg_temp.mx_throws($$SELECT quota_ext.tier_set('gold', rate_limit_per_minute => 1, rate_limit_burst => 5000)$$, '22023',
	'a tier''s burst must refill within a day: (burst + 1) <= 1440 * rate_limit_per_minute', 'tier_set: a burst that needs more than a day');
SELECT * FROM pg_temp.mx_throws($$SELECT quota_ext.tier_set('gold', rate_limit_burst => 5)$$, '22023',
	'rate_limit_per_minute and rate_limit_burst go together', 'tier_set: a burst without a rate');
SELECT * FROM pg_temp.mx_throws($$SELECT quota_ext.tier_set('gold', features => '{"sso": "yes"}')$$, '22023',
	'invalid feature "sso"', 'tier_set: a feature that is not a boolean');
SELECT * FROM pg_temp.mx_throws($$SELECT quota_ext.tier_set('gold', unlimited => '{calls}')$$, '22023',
	'invalid entry "calls" in unlimited', 'tier_set: unknown unlimited entry');
SELECT * FROM pg_temp.mx_throws($$SELECT quota_ext.tier_set(NULL)$$, '22004', 'argument "tier" must not be null', 'tier_set: NULL tier');

-- ---------------------------------------------------------------------------
-- a tier's default money budget (enzu: DEFAULT_BUDGET_USD)
-- ---------------------------------------------------------------------------
\o /dev/null
SELECT quota_ext.tier_set('gold', monthly_budget => 0.05, budget_currency => 'usd');
SELECT quota_ext.tenant_create('tm-gold', 'gold') AS tg \gset
SELECT quota_ext.model_register('tm-priced');
SELECT quota_ext.price_set('tm-priced', 'USD', unit_price => 0.02);
SELECT quota_ext.policy_set(:tg, 'tm-priced', true);
\o
SELECT results_eq(format($$SELECT metric, period, max_units, currency::text, origin FROM quota_ext.quotas WHERE tenant_id = %s$$, :tg),
	$$VALUES ('cost'::text, 'month'::text, 50000::bigint, 'USD'::text, 'tier'::text)$$,
	'a tenant of a tier with a monthly budget gets it as a monthly USD cost quota');
SELECT results_eq(format($$SELECT allowed, denied_by, denied_metric FROM quota_ext.quota_consume(%s, 'tm-priced', 3)$$, :tg),
	$$VALUES (false, 'quota'::text, 'cost'::text)$$, '... which denies past the budget, as money');
\o /dev/null
SELECT quota_ext.tier_set('gold', monthly_budget => 0.10, budget_currency => 'USD');
\o
SELECT is((SELECT max_units FROM quota_ext.quotas WHERE tenant_id = :tg AND metric = 'cost'), 100000::bigint,
	'the tier''s tenants follow a change of the budget');
\o /dev/null
SELECT quota_ext.quota_set(:tg, 'monthly', max_cost => 1, currency => 'USD');
SELECT quota_ext.tier_set('gold', monthly_budget => 0.20, budget_currency => 'USD');
\o
SELECT results_eq(format($$SELECT max_units, origin FROM quota_ext.quotas WHERE tenant_id = %s AND metric = 'cost'$$, :tg),
	$$VALUES (1000000::bigint, 'tenant'::text)$$, 'a tenant''s own budget is not replaced by the tier''s');
SELECT pg_temp.mx_snap();
SELECT * FROM pg_temp.mx_throws($$SELECT quota_ext.tier_set('gold', monthly_budget => 5)$$, '22023',
	'monthly_budget and budget_currency go together', 'tier_set: a budget without a currency');
SELECT * FROM pg_temp.mx_throws($$SELECT quota_ext.tier_set('gold', monthly_budget => 5, budget_currency => 'DOLLAR')$$, '22023',
	'invalid currency "DOLLAR"', 'tier_set: a bad currency');

-- ---------------------------------------------------------------------------
-- feature_enabled: the tenant's flag, else the tier's, else false
-- ---------------------------------------------------------------------------
SELECT is(quota_ext.feature_enabled(:ta, 'export'), true, 'the tier''s flag (starter: export)');
SELECT is(quota_ext.feature_enabled(:ta, 'sso'), false, 'the tier''s false');
SELECT is(quota_ext.feature_enabled(:ta, 'nothing'), false, 'unknown to both: false');
SELECT quota_ext.tenant_update(:ta, features => '{"sso": true, "export": false}');
SELECT is(quota_ext.feature_enabled(:ta, 'sso'), true, 'the tenant''s flag overrides the tier''s false');
SELECT is(quota_ext.feature_enabled(:ta, 'export'), false, 'the tenant''s false overrides the tier''s true');
SELECT throws_ok($$SELECT quota_ext.feature_enabled(999999999, 'sso')$$, '42704', 'tenant 999999999 does not exist', 'unknown tenant');
SELECT throws_ok(format($$SELECT quota_ext.feature_enabled(%s, NULL)$$, :ta), '22004', 'argument "feature" must not be null', 'NULL feature');

-- ---------------------------------------------------------------------------
-- max users (starter: 2 now), counted by user_create
-- ---------------------------------------------------------------------------
SELECT user_id AS u1, api_key AS k1 FROM quota_ext.user_create(:ta, 'one@tm.example', 'admin') \gset
SELECT user_id AS u2 FROM quota_ext.user_create(:ta, 'two@tm.example') \gset
SELECT pg_temp.mx_snap();
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.user_create(%s, 'three@tm.example')$$, :ta), '53400',
	format('tenant %s has 2 users, the most its tier "starter" allows', :ta), 'a third user on a tier of 2');

-- ---------------------------------------------------------------------------
-- user_remove: keys revoked, history kept, audited, idempotent
-- ---------------------------------------------------------------------------
\o /dev/null
SELECT quota_ext.model_register('tm-model');
SELECT quota_ext.policy_set(:ta, 'tm-model', true);
SELECT quota_ext.quota_consume(:ta, 'tm-model', user_id => :u1);
SELECT quota_ext.api_key_create(:ta, :u1, 'second');
\o
SELECT lives_ok(format('SELECT quota_ext.user_remove(%s, %s)', :ta, :u1), 'user_remove');
SELECT is((SELECT status FROM quota_ext.users WHERE tenant_id = :ta AND user_id = :u1), 'removed', 'the user row stays, removed');
SELECT is((SELECT count(*) FROM quota_ext.api_keys WHERE tenant_id = :ta AND user_id = :u1 AND revoked_at IS NULL), 0::bigint,
	'every key of the user is revoked');
SELECT is((SELECT count(*) FROM quota_ext.usage WHERE tenant_id = :ta AND user_id = :u1), 1::bigint, 'its usage is kept');
SELECT throws_ok(format('SELECT quota_ext.authenticate(%L)', :'k1'), '28000', NULL, 'its key no longer authenticates');
SELECT is((SELECT jsonb_array_length(after -> 'revoked_keys') FROM quota_ext.audit_log WHERE action = 'user_remove'
            AND object_id = :'u1'), 2, 'audited with the revoked keys');
SELECT pg_temp.mx_snap();
SELECT lives_ok(format('SELECT quota_ext.user_remove(%s, %s)', :ta, :u1), 'user_remove again');
SELECT is(pg_temp.mx_state(), (SELECT s FROM pg_temp.mx_snapshot), '... changes nothing');
SELECT * FROM pg_temp.mx_throws(format('SELECT quota_ext.user_update(%s, %s, status => ''active'')', :ta, :u1), '55000',
	format('user %s was removed', :u1), 'a removed user cannot be made active again');
SELECT * FROM pg_temp.mx_throws(format('SELECT quota_ext.user_remove(%s, 999999999)', :ta), '42704',
	'user 999999999 does not exist', 'user_remove: unknown user');
SELECT lives_ok(format($$SELECT quota_ext.user_create(%s, 'three@tm.example')$$, :ta),
	'a removed user frees its place under the cap');

-- ---------------------------------------------------------------------------
-- idempotency_purge
-- ---------------------------------------------------------------------------
\o /dev/null
SELECT quota_ext.quota_consume(:ta, 'tm-model', 1, 'tm-old');
SELECT quota_ext.quota_consume(:ta, 'tm-model', 1, 'tm-new');
\o
UPDATE quota_ext.idempotency_keys SET created_at = now() - interval '8 days'
 WHERE tenant_id = :ta AND idempotency_key = 'tm-old';
SELECT is(quota_ext.idempotency_purge(), 1::bigint, 'idempotency_purge() deletes keys older than 7 days');
SELECT is((SELECT array_agg(idempotency_key) FROM quota_ext.idempotency_keys WHERE tenant_id = :ta), ARRAY['tm-new'],
	'... and keeps the newer ones');
UPDATE quota_ext.idempotency_keys SET created_at = now() - interval '1 hour'
 WHERE tenant_id = :ta AND idempotency_key = 'tm-new';
SELECT is(quota_ext.idempotency_purge('30 minutes'), 1::bigint, 'older_than => ''30 minutes'' deletes a key of an hour ago');
SELECT throws_ok($$SELECT quota_ext.idempotency_purge('-1 day')$$, '22023', 'older_than must not be negative', 'negative older_than');

SELECT * FROM finish();
ROLLBACK;
