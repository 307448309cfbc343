-- doc/demo-seeds.sql — migration walkthroughs, one per system quota_ext replaces
-- (`make demo-seeds` runs it on a throwaway cluster with the library preloaded,
-- as the superuser, in database "demo"; test/t/082_demo_seeds.pl runs it in
-- `make test`).
--
-- doc/demo.sql follows the Flask service (flask-model-policies-quotas) step by
-- step.  This file does the same for the other seeds of ../shared/seeds: for
-- each feature of the seed, what its call becomes in SQL.  Every section
-- checks what it shows (\if on a boolean, or ASSERT): a walkthrough that stops
-- matching the code fails the test.
\set QUIET on
\pset pager off
\pset null '(null)'
\set SHOW_CONTEXT never
\set VERBOSITY terse
\set ON_ERROR_STOP on
\set ON_ERROR_ROLLBACK on

CREATE EXTENSION quota_ext;
CREATE ROLE seeds_admin LOGIN IN ROLE quota_ext_admin;
CREATE ROLE seeds_app LOGIN IN ROLE quota_ext_app;
\set ECHO queries

-- ---------------------------------------------------------------------------
\echo
\echo '=== A. aegis-ratelimit-metering-billing ==================================='
\echo 'Redis token bucket per tenant, tenant_quotas.daily_quota_units,'
\echo 'usage_records, a Celery task that writes invoices, BILLING_UNIT_COST,'
\echo 'BILLING_WEBHOOK_URL, "unpaid invoices" for the admin.'
SET ROLE seeds_admin;
\echo 'DEFAULT_RATE_LIMIT_PER_MIN and RATE_LIMIT_BURST become the tier''s rate limit'
\echo '(no superuser SQL: quota_ext_admin edits built-in tiers, and pg_dump keeps the edit):'
SELECT quota_ext.tier_set('starter', rate_limit_per_minute => 120, rate_limit_burst => 20);
SELECT tier, rate_limit_per_minute, rate_limit_burst FROM quota_ext.tiers WHERE tier = 'starter';
SELECT quota_ext.tenant_create('aegis-co', 'starter') AS aegis \gset
SELECT quota_ext.model_register('summarize-v2', 'aegis') \g /dev/null
SELECT quota_ext.policy_set(:aegis, 'summarize-v2', true) \g /dev/null
\echo 'tenant_quotas.daily_quota_units: a daily quota on units (the tenant''s time zone):'
SELECT quota_ext.quota_set(:aegis, 'daily', 1000, metric => 'units') \g /dev/null
\echo 'BILLING_UNIT_COST: the default price, for every model without a price of its own:'
SELECT quota_ext.price_set('*', 'USD', unit_price => 0.002) \g /dev/null
SELECT model_id IS NULL AS default_price, currency, unit_price FROM quota_ext.price_lookup(:aegis, 'summarize-v2');
\echo 'record_usage() + "check sum(today) + units <= daily_quota_units" is one call, exact'
\echo 'under concurrency and inside the caller''s transaction:'
SELECT allowed, denied_by, remaining, cost, currency FROM quota_ext.quota_consume(:aegis, 'summarize-v2', 400) \gset aegis1_
SELECT allowed, denied_by, denied_metric, remaining FROM quota_ext.quota_consume(:aegis, 'summarize-v2', 700) \gset aegis2_
SELECT :'aegis1_allowed'::boolean AND :aegis1_cost = 0.8 AND NOT :'aegis2_allowed'::boolean AND :'aegis2_denied_metric' = 'units' AS aegis_quota_ok \gset
\if :aegis_quota_ok
\echo 'ok: 400 units charged at the default price (0.80 USD); 700 more denied (units), nothing charged'
\else
\echo 'FAILED: the daily units quota of aegis'
\quit 3
\endif
\echo 'enforce_rate_limit(tenant_id, route_key): a GCRA bucket per tenant and key,'
\echo 'in shared memory (no Redis); 2 per minute with a burst of 1 here:'
BEGIN;
SELECT quota_ext.set_tenant(:aegis) \g /dev/null
SELECT limited, remaining FROM quota_ext.tenant_rate_limit_check('/v1/summarize', 1, 2, 60);
SELECT limited, remaining FROM quota_ext.tenant_rate_limit_check('/v1/summarize', 1, 2, 60);
SELECT limited, retry_after > 0 AS must_wait FROM quota_ext.tenant_rate_limit_check('/v1/summarize', 1, 2, 60) \gset rl_
COMMIT;
\if :rl_limited
\echo 'ok: the third call within the burst is limited'
\else
\echo 'FAILED: tenant_rate_limit_check'
\quit 3
\endif
RESET ROLE;
\echo 'aggregate_and_invoice (Celery beat): billing_close() for a period that has ended'
\echo '(from pg_cron in production).  For the walkthrough, last month''s usage is'
\echo 'written by hand as the superuser: the ledger of a month that has ended.'
UPDATE quota_ext.tenants SET created_at = date_trunc('month', now()) - interval '2 months' WHERE tenant_id = :aegis;
INSERT INTO quota_ext.usage (tenant_id, created_at, occurred_at, kind, model_id, calls, units)
SELECT :aegis, date_trunc('month', now()) - interval '10 days', date_trunc('month', now()) - interval '10 days',
       'consume', model_id, 1, 2500
  FROM quota_ext.models WHERE name = 'summarize-v2';
SET ROLE seeds_admin;
\echo 'A period that has not ended yet is refused (22023): usage is not billed early.'
\set ON_ERROR_STOP off
SELECT count(*) FROM quota_ext.billing_close(date_trunc('month', now()), date_trunc('month', now()) + interval '1 month');
\set ON_ERROR_STOP on
SELECT invoice_id AS aegis_invoice, total AS aegis_total, status FROM quota_ext.billing_close(
         :aegis, date_trunc('month', now()) - interval '1 month', date_trunc('month', now())) \gset
\echo 'invoice' :aegis_invoice 'total' :aegis_total '(2,500 units, unpriced last month: listed with amount 0)'
SELECT kind, units, amount, currency FROM quota_ext.invoice_lines WHERE tenant_id = :aegis AND invoice_id = :aegis_invoice;
SELECT quota_ext.invoice_issue(:aegis, :aegis_invoice) \g /dev/null
\echo '"unpaid invoices" (the admin view aegis planned):'
SELECT tenant_id, invoice_number, total, currency FROM quota_ext.invoices_unpaid WHERE tenant_id = :aegis;
SELECT quota_ext.invoice_mark_paid(:aegis, :aegis_invoice, now(), 'wire-2026-001') \g /dev/null
SELECT count(*) = 0 AS aegis_paid FROM quota_ext.invoices_unpaid WHERE tenant_id = :aegis \gset
\if :aegis_paid
\echo 'ok: issued, then paid; the unpaid view is empty again'
\else
\echo 'FAILED: invoice lifecycle'
\quit 3
\endif
\echo 'BILLING_WEBHOOK_URL: every invoice event is an outbox row written in the same'
\echo 'transaction; examples/webhook-relay/relay.py POSTs them with an HMAC signature'
\echo 'and acknowledges after a 2xx.  What a relay reads (consumer "billing-webhook"):'
SELECT event_type, object_type, payload ->> 'status' AS status
  FROM quota_ext.event_poll('billing-webhook', 10) WHERE tenant_id = :aegis ORDER BY event_id;
RESET ROLE;

-- ---------------------------------------------------------------------------
\echo
\echo '=== B. arf-usage-tracker ================================================'
\echo 'Tiers FREE/PRO/PREMIUM/ENTERPRISE with monthly evaluation limits and audit'
\echo 'retention, existing API keys, get_tier/update_api_key_tier, consume_quota_and_log'
\echo 'with idempotency keys (Redis TTL), per-request records.'
SET ROLE seeds_admin;
\echo 'The built-in tiers carry arf''s defaults (README: "Tiers"):'
SELECT tier, monthly_calls, audit_retention, rate_limit_per_minute, rate_limit_burst
  FROM quota_ext.tiers WHERE tier IN ('free', 'pro', 'premium', 'enterprise') ORDER BY monthly_calls NULLS LAST;
SELECT quota_ext.tenant_create('arf-customer', 'free') AS arf \gset
SELECT (quota_ext.user_create(:arf, 'ops@arf.example')).user_id AS arf_user \gset
\echo 'get_or_create_api_key(key): the customer''s existing key is imported (stored as'
\echo 'its SHA-256 only), so clients keep their keys:'
SELECT quota_ext.api_key_import(:arf, :arf_user, 'arf_live_7Qm2x9Lk4Pz8Vw3Rt6Yb') AS arf_key_id \gset
SELECT quota_ext.model_register('evaluate', 'arf') \g /dev/null
SELECT quota_ext.policy_set(:arf, 'evaluate', true) \g /dev/null
RESET ROLE;
SET ROLE seeds_app;
\echo 'get_tier(api_key): authenticate, then read the tenant (its own row only):'
BEGIN;
SELECT t.tier FROM quota_ext.authenticate('arf_live_7Qm2x9Lk4Pz8Vw3Rt6Yb') a
  JOIN quota_ext.tenants t USING (tenant_id);
COMMIT;
\echo 'consume_quota_and_log(record, idempotency_key): invoke() with the key; a retry'
\echo 'with the same idempotency key is answered from the first call, charged once:'
SELECT allowed, remaining, replayed, usage_id FROM quota_ext.invoke('arf_live_7Qm2x9Lk4Pz8Vw3Rt6Yb', 'evaluate', 1, 'eval-0001') \gset arf1_
SELECT allowed, remaining, replayed, usage_id FROM quota_ext.invoke('arf_live_7Qm2x9Lk4Pz8Vw3Rt6Yb', 'evaluate', 1, 'eval-0001') \gset arf2_
SELECT :'arf1_allowed'::boolean AND :'arf2_replayed'::boolean AND :arf1_usage_id = :arf2_usage_id AND :arf1_remaining = 999 AS arf_idem_ok \gset
\if :arf_idem_ok
\echo 'ok: one usage row for eval-0001, 999 evaluations left this month (free: 1,000)'
\else
\echo 'FAILED: idempotent invoke'
\quit 3
\endif
\echo 'The per-request record (endpoint, status, timing, bounded excerpts), kept for'
\echo 'the tier''s retention:'
BEGIN;
SELECT quota_ext.authenticate('arf_live_7Qm2x9Lk4Pz8Vw3Rt6Yb') \g /dev/null
SELECT quota_ext.request_log_write(:arf, '/v1/evaluate', 200, 42, usage_id => :arf1_usage_id,
                                   request_excerpt => '{"text": "..."}') \g /dev/null
SELECT endpoint, status, duration_ms FROM quota_ext.request_log;
COMMIT;
RESET ROLE;
SET ROLE seeds_admin;
\echo 'update_api_key_tier(key, tier): the tenant''s tier changes, and its monthly'
\echo 'allowance with it (pro: 10,000):'
SELECT quota_ext.tenant_update(:arf, tier => 'pro') \g /dev/null
SELECT period, "limit", used, origin FROM quota_ext.quota_status(:arf);
\echo 'The Redis TTL of idempotency keys and the audit retention become purges, for pg_cron:'
SELECT quota_ext.idempotency_purge('7 days') AS idempotency_keys_purged,
       quota_ext.request_log_purge() AS request_records_purged,
       quota_ext.audit_purge() AS audit_rows_purged;
RESET ROLE;

-- ---------------------------------------------------------------------------
\echo
\echo '=== C. enzu-multitenant-api-service ======================================'
\echo 'Per-customer money budgets (DEFAULT_BUDGET_USD = 10), GET /budget, 402 when the'
\echo 'budget is exceeded, Prometheus metrics of tokens and cost.'
SET ROLE seeds_admin;
\echo 'DEFAULT_BUDGET_USD: a tier whose tenants all get a 10 USD monthly budget:'
SELECT quota_ext.tier_set('enzu-default', description => 'enzu customers', monthly_budget => 10,
                          budget_currency => 'USD', rate_limit_per_minute => 600, rate_limit_burst => 50) \g /dev/null
SELECT quota_ext.tenant_create('customer-123', 'enzu-default') AS enzu \gset
\echo 'X-Customer-ID becomes an API key of the customer (the seed''s "replace with proper auth"):'
SELECT api_key AS enzu_key FROM quota_ext.user_create(:enzu, 'api@customer-123.example', 'member') \gset
SELECT quota_ext.model_register('gpt-4o-mini', 'openai') \g /dev/null
SELECT quota_ext.policy_set(:enzu, 'gpt-4o-mini', true) \g /dev/null
SELECT quota_ext.price_set('gpt-4o-mini', 'USD', input_per_1k => 0.5, output_per_1k => 1.5) \g /dev/null
RESET ROLE;
SET ROLE seeds_app;
\echo 'POST /analyze: one job of 2,000 input and 1,000 output tokens costs 2.50 USD:'
BEGIN;
SELECT tenant_id FROM quota_ext.authenticate(:'enzu_key') \g /dev/null
SELECT job, d.allowed, d.cost, d.remaining_cost, d.currency
  FROM generate_series(1, 4) job,
       LATERAL quota_ext.quota_consume(:enzu, 'gpt-4o-mini', 1, 'job-' || job,
                                       input_tokens => 2000, output_tokens => 1000) d;
\echo 'The fifth job does not fit the budget: denied_metric says cost, so the API'
\echo 'answers 402 (a calls or units denial would be 429):'
SELECT allowed, denied_by, denied_metric, remaining_cost FROM quota_ext.quota_consume(:enzu, 'gpt-4o-mini', 1,
       input_tokens => 2000, output_tokens => 1000) \gset enzu_
\echo 'GET /budget: limit, used, remaining, requests, period start and end:'
SELECT currency, limit_cost AS budget_limit_usd, used_cost AS budget_used_usd,
       remaining_cost AS budget_remaining_usd, requests AS requests_count,
       period_start, resets_at AS period_end
  FROM quota_ext.quota_status(:enzu) WHERE metric = 'cost' \gset budget_
COMMIT;
SELECT NOT :'enzu_allowed'::boolean AND :'enzu_denied_metric' = 'cost' AND :budget_budget_used_usd = 10
       AND :budget_budget_remaining_usd = 0 AND :budget_requests_count = 4 AS enzu_ok \gset
\if :enzu_ok
\echo 'ok: four jobs used the 10 USD budget; the fifth was a cost (402) denial'
\else
\echo 'FAILED: enzu budget'
\quit 3
\endif
RESET ROLE;
\echo 'GET /metrics: tokens and cost per tenant for the current month (from the rollups):'
SELECT quota_ext.usage_rollup() \g /dev/null
SELECT line FROM regexp_split_to_table(quota_ext.metrics(), E'\n') line
 WHERE line ~ ('^quota_ext_tenant_(tokens|cost)[a-z_]*\{[^}]*tenant_id="' || :enzu || '"');

-- ---------------------------------------------------------------------------
\echo
\echo '=== D. llm-marketplace-tenant-management (tenants, tiers, members, features)'
\echo 'Tiers FREE/STARTER/PROFESSIONAL/ENTERPRISE, upgrade, members with roles and'
\echo 'a tier''s user limit, feature flags per tenant, checkQuota without charging.'
SET ROLE seeds_admin;
SELECT quota_ext.tier_set('professional', features => '{"sso": true, "white_label": false}', max_users => 3) \g /dev/null
SELECT quota_ext.tenant_create('Acme Corp', 'professional', 'America/New_York') AS mkt \gset
\echo 'Add Member (POST /tenants/:id/members):'
SELECT (quota_ext.user_create(:mkt, 'owner@acme.example', 'admin')).user_id AS mkt_owner \gset
SELECT (quota_ext.user_create(:mkt, 'dev1@acme.example', 'member')).user_id AS mkt_dev1 \gset
SELECT (quota_ext.user_create(:mkt, 'dev2@acme.example', 'member')).user_id AS mkt_dev2 \gset
\echo 'The tier allows 3 users: a fourth is refused (53400), nothing is created:'
\set ON_ERROR_STOP off
SELECT quota_ext.user_create(:mkt, 'dev3@acme.example', 'member');
\set ON_ERROR_STOP on
\echo 'Remove Member (DELETE /tenants/:id/members/:userId): keys revoked, history kept;'
\echo 'the seat is free again:'
SELECT quota_ext.user_remove(:mkt, :mkt_dev2) \g /dev/null
SELECT (quota_ext.user_create(:mkt, 'dev3@acme.example', 'member')).user_id IS NOT NULL AS seat_reused \gset
\if :seat_reused
\echo 'ok: the removed member''s seat was given to dev3'
\else
\echo 'FAILED: members'
\quit 3
\endif
\echo 'Feature flags: the tenant''s override, else the tier''s, else false:'
SELECT quota_ext.tenant_update(:mkt, features => '{"white_label": true}') \g /dev/null
SELECT quota_ext.feature_enabled(:mkt, 'sso') AS sso, quota_ext.feature_enabled(:mkt, 'white_label') AS white_label,
       quota_ext.feature_enabled(:mkt, 'custom_domain') AS custom_domain;
\echo 'Upgrade Tier (POST /tenants/:id/upgrade):'
SELECT quota_ext.tenant_update(:mkt, tier => 'enterprise') \g /dev/null
SELECT name, tier FROM quota_ext.tenants WHERE tenant_id = :mkt;
\echo 'Quota api_requests with a soft limit (PUT /quotas/api_requests {limit, softLimit}):'
SELECT quota_ext.model_register('llama-3-70b', 'meta') \g /dev/null
SELECT quota_ext.policy_set(:mkt, 'llama-3-70b', true) \g /dev/null
SELECT quota_ext.quota_set(:mkt, 'monthly', 2000000, soft_limit => 1800000) \g /dev/null
\echo 'checkQuota: what a consume would answer, charging nothing and locking nothing:'
SELECT allowed, remaining FROM quota_ext.quota_check(:mkt, 'llama-3-70b', 10) \gset chk_
SELECT used = 0 AS nothing_charged FROM quota_ext.quota_status(:mkt) WHERE "limit" = 2000000 \gset
\if :nothing_charged
\echo 'ok: quota_check answered allowed with' :chk_remaining 'left and charged nothing'
\else
\echo 'FAILED: quota_check'
\quit 3
\endif
\echo 'GET /tenants/:id/quotas: limit, usage, percentage, remaining, resetAt:'
SELECT period, metric, "limit", used, used_pct, resets_at FROM quota_ext.quota_usage WHERE tenant_id = :mkt;
RESET ROLE;

\echo
\echo '=== done ================================================================='
