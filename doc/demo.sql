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
\echo '=== done ================================================================='
