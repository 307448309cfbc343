-- Issue 17: per-request records (arf-usage-tracker): request_log_write()
-- by the application, the table read under row-level security, purged after
-- the tenant's tier audit_retention (request_log_purge()).  Failed on main.
BEGIN;
\ir metering_helpers.psql
SELECT plan(21);

\o /dev/null
SELECT quota_ext.tenant_create('rl-free', 'free') AS ta \gset
SELECT quota_ext.tenant_create('rl-ent', 'enterprise') AS tb \gset
SELECT user_id AS ua, api_key AS ka FROM quota_ext.user_create(:ta, 'a@rl.example', 'admin') \gset
SELECT key_id AS kida FROM quota_ext.api_keys WHERE tenant_id = :ta AND user_id = :ua \gset
SELECT user_id AS ub FROM quota_ext.user_create(:tb, 'b@rl.example', 'admin') \gset
CREATE ROLE qx_tap_rl_app LOGIN IN ROLE quota_ext_app;
SELECT quota_ext.model_register('rl-m') AS rlm \gset
SELECT pg_temp.mx_usage(:ta, :rlm, now(), 1, 0, NULL) AS usa \gset
SELECT pg_temp.mx_usage(:tb, :rlm, now(), 1, 0, NULL) AS usb \gset
\o

-- the application, in a key's transaction: its user and key are recorded
SET ROLE qx_tap_rl_app;
SELECT tenant_id FROM quota_ext.authenticate(:'ka') \gset
SELECT quota_ext.request_log_write(:ta, 'POST /v1/chat', 200, duration_ms => 41,
	request_excerpt => repeat('q', 5000), response_excerpt => '{"ok": true}') AS r1 \gset
SELECT results_eq(format('SELECT user_id, key_id, endpoint, status, duration_ms, length(request_excerpt), response_excerpt FROM quota_ext.request_log WHERE tenant_id = %s AND request_id = %s', :ta, :r1),
	format($$VALUES (%s::bigint, %s::bigint, 'POST /v1/chat'::text, 200, 41, 1000, '{"ok": true}'::text)$$, :ua, :kida),
	'written with the key''s user and key; the excerpt cut at 1,000 characters');
SELECT throws_ok(format($$SELECT quota_ext.request_log_write(%s, 'GET /x', user_id => %s)$$, :ta, :ua + 1000), '42501', NULL,
	'a key''s transaction cannot log as another user');
SELECT throws_ok(format($$SELECT quota_ext.request_log_write(%s, 'GET /x')$$, :tb), '42704', format('tenant %s does not exist', :tb),
	'nor for another tenant (which it is told does not exist)');
SELECT is((SELECT count(*) FROM quota_ext.request_log WHERE tenant_id = :tb), 0::bigint, 'the app does not see B''s rows');
-- the usage row it names is A's own (an attacker's review: A's key could
-- record B's usage_id in A's log; failed before)
SELECT ok(quota_ext.request_log_write(:ta, 'GET /own', usage_id => :usa) > 0, 'A''s own usage row may be named');
SELECT throws_ok(format($$SELECT quota_ext.request_log_write(%s, 'GET /x', usage_id => %s)$$, :ta, :usb), '42704',
	format('usage row %s does not exist', :usb), 'B''s usage row is a row that does not exist (failed before)');
SELECT throws_ok(format($$SELECT quota_ext.request_log_write(%s, 'GET /x', usage_id => %s)$$, :ta, :usb + 1000000), '42704',
	format('usage row %s does not exist', :usb + 1000000), 'like a missing one: the same answer');
SELECT is((SELECT count(*) FROM quota_ext.request_log WHERE tenant_id = :ta AND usage_id = :usb), 0::bigint, 'nothing was written');
RESET ROLE;
SELECT quota_ext.clear_tenant();

-- the admin (no context) names user and tenant; errors
SELECT quota_ext.request_log_write(:tb, 'POST /v1/embed', 429, error => 'rate limited: ' || repeat('x', 2000), user_id => :ub) AS r2 \gset
SELECT results_eq(format('SELECT user_id, status, length(error) FROM quota_ext.request_log WHERE tenant_id = %s AND request_id = %s', :tb, :r2),
	format('VALUES (%s::bigint, 429, 1000)', :ub), 'an admin names the user; the error cut at 1,000 characters');
SELECT pg_temp.mx_snap();
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.request_log_write(%s, repeat('e', 201))$$, :ta), '22023',
	'invalid endpoint: must be 1 to 200 characters without control characters or surrounding spaces', 'endpoint too long');
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.request_log_write(%s, 'GET /', 700)$$, :ta), '22023',
	'status must be an HTTP status (100 to 599)', 'status 700');
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.request_log_write(%s, 'GET /', duration_ms => -1)$$, :ta), '22023',
	'duration_ms must not be negative', 'negative duration');
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.request_log_write(%s, 'GET /', user_id => 999999999)$$, :ta), '42704',
	'user 999999999 does not exist', 'unknown user');

-- retention: the tier's audit_retention (free 7 days, enterprise 365)
UPDATE quota_ext.request_log SET at = now() - interval '8 days' WHERE tenant_id IN (:ta, :tb);
SELECT is(quota_ext.request_log_purge(), 2::bigint, 'request_log_purge deletes the free tenant''s 8-day-old rows only (two)');
SELECT is((SELECT count(*) FROM quota_ext.request_log WHERE tenant_id = :ta), 0::bigint, '... the free tenant''s is gone');
SELECT is((SELECT count(*) FROM quota_ext.request_log WHERE tenant_id = :tb), 1::bigint, '... the enterprise tenant''s kept');
SELECT is((SELECT action FROM quota_ext.audit_log WHERE action = 'request_log_purge' ORDER BY audit_id DESC LIMIT 1),
	'request_log_purge', 'the purge is audited');

SELECT * FROM finish();
ROLLBACK;
