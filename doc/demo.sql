-- doc/demo.sql — the quota_ext walkthrough (`make demo` runs it on a throwaway
-- cluster with the library preloaded, as the superuser, in database "demo").
--
-- It follows the Flask service of seed 000 (tenants, users with roles and
-- API keys, a model registry, per-tenant access, quotas) step by step, with
-- SQL in place of HTTP: every admin endpoint becomes a function call, and
-- the app's "authenticate the Bearer key, then act for its tenant" becomes
-- authenticate() inside the app's own transaction.
--
-- Later issues extend it at the places marked "-- next:".
\set QUIET on
\pset pager off
\pset null '(null)'
\set SHOW_CONTEXT never
\set VERBOSITY terse
\set ON_ERROR_STOP on
-- an expected error inside a transaction rolls back only its own statement
-- (psql wraps each statement in a savepoint); the tenant context survives
\set ON_ERROR_ROLLBACK on

\echo
\echo '=== 1. Install: one CREATE EXTENSION, two roles ==========================='
\echo 'The DBA creates the extension; it makes the roles quota_ext_admin (manage) and'
\echo 'quota_ext_app (the hot path).  Logins get one of them.'
CREATE EXTENSION quota_ext;
CREATE ROLE demo_admin LOGIN IN ROLE quota_ext_admin;
CREATE ROLE demo_app LOGIN IN ROLE quota_ext_app;
SELECT extname, extversion FROM pg_extension WHERE extname = 'quota_ext';
-- from here on every query is shown before its result
\set ECHO queries

\echo
\echo '=== 2. Admin: tenants (POST /admin/tenants) ==============================='
SET ROLE demo_admin;
SELECT quota_ext.tenant_create('acme') AS acme \gset
SELECT quota_ext.tenant_create('globex', 'pro', 'America/New_York') AS globex \gset
SELECT tenant_id, name, tier, status, timezone FROM quota_ext.tenants ORDER BY tenant_id;

\echo
\echo '=== 3. Admin: users with roles, and their API keys (POST /admin/users) ======'
\echo 'Each key is shown exactly once; only its SHA-256 is stored.'
SELECT user_id AS alice, api_key AS alice_key FROM quota_ext.user_create(:acme, 'alice@acme.com', 'admin') \gset
SELECT user_id AS bob, api_key AS bob_key FROM quota_ext.user_create(:acme, 'bob@acme.com', 'member') \gset
SELECT user_id AS gina, api_key AS gina_key FROM quota_ext.user_create(:globex, 'gina@globex.com', 'admin') \gset
\echo 'alice (acme, admin)  ' :alice_key
\echo 'bob   (acme, member) ' :bob_key
\echo 'gina  (globex, admin)' :gina_key
\echo 'What the database keeps instead (the secret is not there):'
SELECT t.name AS tenant, u.email, u.role, k.key_prefix
  FROM quota_ext.users u JOIN quota_ext.tenants t USING (tenant_id)
  JOIN quota_ext.api_keys k USING (tenant_id, user_id)
 ORDER BY u.user_id;

\echo
\echo '=== 4. Admin: the model registry (POST /admin/models) ======================'
SELECT quota_ext.model_register('gpt-4o', 'openai') AS gpt4o \gset
SELECT quota_ext.model_register('embedding-1', 'openai') AS embedding \gset
SELECT model_id, name, provider, owner_tenant_id FROM quota_ext.models ORDER BY model_id;

\echo
\echo '=== 4b. Admin: access policies and quotas (POST /admin/policies, /admin/quotas) ==='
\echo 'Default deny: acme may use gpt-4o, and only as admin or member.  The daily'
\echo 'quota is 3 calls here so the walkthrough reaches it; monthly 10,000.'
SELECT quota_ext.policy_set(:acme, 'gpt-4o', true, ARRAY['admin', 'member']);
SELECT quota_ext.quota_set(:acme, 'daily', 3) AS acme_daily \gset
SELECT quota_ext.quota_set(:acme, 'monthly', 10000);
SELECT quota_ext.policy_check(:acme, 'gpt-4o', 'member') AS member_gpt4o,
       quota_ext.policy_check(:acme, 'gpt-4o', 'viewer') AS viewer_gpt4o,
       quota_ext.policy_check(:acme, 'embedding-1', 'admin') AS admin_embedding;
\echo 'globex (tier pro) has no quota of its own yet: its tier gives it 10,000 calls a month.'
SELECT period, metric, "limit", used, remaining, resets_at, origin FROM quota_ext.quota_status(:globex);
RESET ROLE;

\echo
\echo '=== 5. App: authenticate the caller''s key inside its own transaction ======'
\echo 'The app connects as demo_app (a member of quota_ext_app).  authenticate()'
\echo 'returns (tenant_id, user_id, role) and makes the tenant the context of this'
\echo 'transaction; row-level security then shows that tenant''s rows only.'
\echo '(psql 15 sends :''alice_key'' as a literal in the SQL text; an application sends'
\echo 'the key as a bind parameter, invoke($1, ...), so it appears in no log and in no'
\echo 'pg_stat_activity.query: see SECURITY.md.)'
SET ROLE demo_app;
BEGIN;
SELECT * FROM quota_ext.authenticate(:'alice_key');
SELECT quota_ext.current_tenant_id();
SELECT tenant_id, name, tier FROM quota_ext.tenants;
SELECT user_id, email, role FROM quota_ext.users ORDER BY user_id;
SELECT key_id, key_prefix, last_used_at IS NOT NULL AS used FROM quota_ext.api_keys;
SELECT name FROM quota_ext.models ORDER BY model_id;
\echo 'globex''s rows are simply not there, even when asked for by id:'
SELECT count(*) AS globex_users FROM quota_ext.users WHERE tenant_id = :globex;

\echo
\echo '=== 6. App: the context cannot be spoofed ================================='
\echo 'It lives in the extension''s memory, not in a setting.  SET and set_config'
\echo 'of any name leave it alone, and quota_ext.* names are reserved:'
SET app.tenant_id = :globex;
SELECT set_config('app.current_tenant', :'globex', true);
\set ON_ERROR_STOP off
SET quota_ext.tenant_id = :globex;
\set ON_ERROR_STOP on
SELECT quota_ext.current_tenant_id(), (SELECT string_agg(name, ',') FROM quota_ext.tenants) AS visible;
\echo 'Nor can the app write the tables or call admin functions:'
\set ON_ERROR_STOP off
UPDATE quota_ext.tenants SET tier = 'enterprise';
SELECT quota_ext.set_tenant(:globex);
\set ON_ERROR_STOP on
COMMIT;
\echo 'After COMMIT the context is gone: no context, no rows.'
SELECT quota_ext.current_tenant_id(), (SELECT count(*) FROM quota_ext.tenants) AS visible_tenants;
\echo 'The next transaction on the same (pooled) connection authenticates again:'
BEGIN;
SELECT * FROM quota_ext.authenticate(:'gina_key');
SELECT name FROM quota_ext.tenants;
COMMIT;

\echo
\echo '=== 6b. App: invoke (POST /invoke) ========================================'
\echo 'invoke(key, model, units, idempotency_key) = authenticate + policy + rate limit'
\echo '+ every quota + the usage row, in the caller''s transaction.  A denial is an'
\echo 'answer, not an error.'
SELECT allowed, denied_by, period, "limit", remaining, resets_at FROM quota_ext.invoke(:'alice_key', 'gpt-4o', 1, 'req-1');
\echo 'The client retries req-1 (timeout on its side): same answer, charged once.'
SELECT allowed, remaining, replayed FROM quota_ext.invoke(:'alice_key', 'gpt-4o', 1, 'req-1');
SELECT allowed, denied_by, remaining FROM quota_ext.invoke(:'bob_key', 'gpt-4o');
\echo 'A model without a policy is denied:'
SELECT allowed, denied_by FROM quota_ext.invoke(:'alice_key', 'embedding-1');
\echo 'A rolled-back transaction charges nothing:'
BEGIN;
SELECT allowed, remaining FROM quota_ext.invoke(:'alice_key', 'gpt-4o');
ROLLBACK;
SELECT allowed, remaining FROM quota_ext.invoke(:'alice_key', 'gpt-4o');
\echo 'The daily quota is used up: denied, with when it resets and how long to wait.'
SELECT allowed, denied_by, period, "limit", remaining, resets_at, retry_after FROM quota_ext.invoke(:'bob_key', 'gpt-4o');
\echo 'Reading the state is tenant-scoped too: authenticate, then look.'
BEGIN;
SELECT tenant_id FROM quota_ext.authenticate(:'alice_key');
\echo 'Both quotas were checked together: the monthly one was not charged by the denial.'
SELECT period, "limit", used, remaining FROM quota_ext.quota_status(:acme) ORDER BY quota_id;
\echo 'Crossing 80 % and 100 % of the daily quota left one event each (and a NOTIFY):'
SELECT kind, threshold, used, "limit" FROM quota_ext.quota_events ORDER BY event_id;
\echo 'The downstream call failed: refund it, once.'
SELECT usage_id AS last_usage FROM quota_ext.usage WHERE kind = 'consume' ORDER BY usage_id DESC LIMIT 1 \gset
SELECT allowed, replayed FROM quota_ext.quota_refund(:acme, :last_usage);
SELECT allowed, replayed FROM quota_ext.quota_refund(:acme, :last_usage);
SELECT period, used, remaining FROM quota_ext.quota_status(:acme) ORDER BY quota_id;
COMMIT;

\echo
\echo '=== 7. Revoked keys and suspended tenants: one error for every refusal ======'
RESET ROLE;
SET ROLE demo_admin;
SELECT key_id AS bob_ci, api_key AS bob_ci_key FROM quota_ext.api_key_create(:acme, :bob, 'ci') \gset
SELECT quota_ext.api_key_revoke(:acme, :bob_ci) \g /dev/null
SELECT quota_ext.tenant_suspend(:globex) \g /dev/null
RESET ROLE;
SET ROLE demo_app;
\echo 'bob''s revoked CI key, gina''s key (globex is suspended), a made-up key:'
\set ON_ERROR_STOP off
SELECT * FROM quota_ext.authenticate(:'bob_ci_key');
SELECT * FROM quota_ext.authenticate(:'gina_key');
SELECT * FROM quota_ext.authenticate('qxk_1_1_not-a-real-key');
\set ON_ERROR_STOP on
\echo 'Same SQLSTATE (28000) and text each time: the caller learns nothing more.'
RESET ROLE;
SET ROLE demo_admin;
SELECT quota_ext.tenant_activate(:globex) \g /dev/null
RESET ROLE;

\echo
\echo '=== 8. Key rotation with a grace period ===================================='
\echo 'alice''s key is rotated; the old one keeps working for an hour so deployments'
\echo 'can switch over.'
SET ROLE demo_admin;
SELECT alice_key_id FROM (SELECT key_id AS alice_key_id FROM quota_ext.api_keys
                           WHERE tenant_id = :acme AND user_id = :alice) k \gset
SELECT new_key_id AS alice_new_id, api_key AS alice_new_key
  FROM quota_ext.api_key_rotate(:acme, :alice_key_id, interval '1 hour') \gset
\echo 'new key (shown once):' :alice_new_key
SELECT key_id, key_prefix, expires_at - now() AS old_key_valid_for, rotated_to
  FROM quota_ext.api_keys WHERE tenant_id = :acme AND user_id = :alice ORDER BY key_id;
RESET ROLE;
SET ROLE demo_app;
SELECT tenant_id, user_id, role FROM quota_ext.authenticate(:'alice_key');
SELECT tenant_id, user_id, role FROM quota_ext.authenticate(:'alice_new_key');
RESET ROLE;
\echo 'Rotating with no grace ends the old key at once:'
SET ROLE demo_admin;
SELECT new_key_id AS alice_third_id FROM quota_ext.api_key_rotate(:acme, :alice_new_id, interval '0') \gset
RESET ROLE;
SET ROLE demo_app;
\set ON_ERROR_STOP off
SELECT * FROM quota_ext.authenticate(:'alice_new_key');
\set ON_ERROR_STOP on
RESET ROLE;

\echo
\echo '=== 9. Every admin change is in the audit log =============================='
SET ROLE demo_admin;
SELECT coalesce(t.name, '(global)') AS tenant, a.action, a.object_type, a.object_id,
       a.before ->> 'status' AS status_before, a.after ->> 'status' AS status_after
  FROM quota_ext.audit_log a LEFT JOIN quota_ext.tenants t USING (tenant_id)
 ORDER BY a.audit_id;
RESET ROLE;

\echo
\echo '=== 10. Tenant summary (GET /admin/tenants/ID/summary) ====================='
SET ROLE demo_admin;
SELECT jsonb_pretty(quota_ext.tenant_summary(:acme));
RESET ROLE;

-- next: usage reports, prices, budgets and billing (issue 5)

\echo
\echo '=== 11. The model marketplace (issue 18) =================================='
\echo 'modelhouse owns a fine-tuned model and lists it with a list price; the'
\echo 'platform keeps 20 % of its revenue.'
SET ROLE demo_admin;
SELECT quota_ext.tenant_create('modelhouse') AS mh \gset
SELECT quota_ext.tenant_create('appco') AS appco \gset
SELECT user_id AS ana, api_key AS ana_key FROM quota_ext.user_create(:appco, 'ana@appco.com', 'admin') \gset
SELECT quota_ext.model_register('mh-legal-7b', 'modelhouse', owner_tenant_id => :mh,
                                description => 'contracts, fine-tuned') AS mhm \gset
SELECT quota_ext.model_visibility_set(:mh, 'mh-legal-7b', 'marketplace') AS was;
SELECT quota_ext.model_price_set(:mh, 'mh-legal-7b', 'EUR', input_per_1k => 0.0004,
                                 output_per_1k => 0.0016) > 0 AS list_price_set;
SELECT quota_ext.model_revenue_share_set(:mh, 'mh-legal-7b', 20);
RESET ROLE;
\echo 'appco (its app, its own context) sees the listing, and nothing else of modelhouse:'
SET ROLE demo_app;
BEGIN;
SELECT tenant_id = :appco AS is_appco FROM quota_ext.authenticate(:'ana_key');
SELECT model_id, model, description, visibility, currency, input_per_1k, output_per_1k
  FROM quota_ext.model_marketplace;
SELECT count(*) AS modelhouse_rows_visible FROM quota_ext.models WHERE model_id = :mhm;
\echo 'Not usable before the owner approves (for appco the name means no model yet):'
SELECT quota_ext.policy_check(:appco, 'mh-legal-7b') AS usable;
COMMIT;
RESET ROLE;
\echo 'appco asks; modelhouse (in its own context) sees the request and approves it:'
SET ROLE demo_admin;
SELECT quota_ext.model_access_request(:appco, :mhm, 'for contract review') AS req \gset
BEGIN;
SELECT quota_ext.set_tenant(:mh);
SELECT consumer_tenant_id = :appco AS from_appco, model, status, note
  FROM quota_ext.model_access_requests_received(:mh);
SELECT status FROM quota_ext.model_access_decide(:mh, :appco, :req, true, 'welcome');
COMMIT;
\echo 'Both sides got an outbox event:'
SELECT t.name AS tenant, o.event_type, o.payload ->> 'model' AS model
  FROM quota_ext.outbox o JOIN quota_ext.tenants t USING (tenant_id)
 WHERE o.event_type LIKE 'model_access.%' ORDER BY o.event_id;
\echo 'appco allows the model like any other, and uses it at the owner''s list price:'
SELECT quota_ext.policy_set(:appco, 'mh-legal-7b', true) > 0 AS allowed;
RESET ROLE;
SET ROLE demo_app;
BEGIN;
SELECT allowed, cost, currency FROM quota_ext.invoke(:'ana_key', 'mh-legal-7b', 1, 'mk-1', 1200, 300);
SELECT allowed, cost, currency FROM quota_ext.invoke(:'ana_key', 'mh-legal-7b', 1, 'mk-2', 2500, 800);
COMMIT;
RESET ROLE;
\echo 'The month so far is closed (a period ends before the close starts): appco gets'
\echo 'its invoice, modelhouse its payout statement (its consumers'' charges minus the'
\echo 'platform''s share).'
SET ROLE demo_admin;
SELECT count(*) > 0 AS closed FROM quota_ext.billing_close(date_trunc('month', now()), now());
\echo 'appco''s invoice line for the model:'
SELECT l.model, l.calls, l.input_tokens, l.output_tokens, l.amount, l.currency
  FROM quota_ext.invoice_lines l WHERE l.tenant_id = :appco AND l.model_id = :mhm;
\echo 'modelhouse''s payout statement, read in its own context (aggregated per consumer):'
BEGIN;
SELECT quota_ext.set_tenant(:mh);
SELECT currency, gross, platform_share, payout FROM quota_ext.payouts;
SELECT consumer_tenant_id = :appco AS appco, model, calls, gross, platform_pct, platform_share, payout
  FROM quota_ext.payout_lines;
SELECT count(*) AS consumer_invoices_visible FROM quota_ext.invoices WHERE tenant_id <> :mh;
COMMIT;
\echo 'The books balance to the micro-unit: what appco was invoiced for the model ='
\echo 'modelhouse''s payout + the platform''s share (asserted: the demo stops otherwise).'
CREATE TEMP TABLE demo_balance AS
SELECT (SELECT sum(l.amount) FROM quota_ext.invoice_lines l
         WHERE l.tenant_id = :appco AND l.model_id = :mhm) AS invoiced,
       p.payout, p.platform_share
  FROM quota_ext.payouts p WHERE p.tenant_id = :mh;
SELECT invoiced, payout, platform_share, invoiced = payout + platform_share AS balanced FROM demo_balance;
DO $$
BEGIN
	IF (SELECT count(*) FROM demo_balance WHERE invoiced = payout + platform_share AND invoiced > 0) <> 1 THEN
		RAISE EXCEPTION 'marketplace books do not balance';
	END IF;
END
$$;
RESET ROLE;

\echo
\echo '=== done ================================================================='
