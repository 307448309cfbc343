-- Audit: every administrative change writes one audit_log row, in the same
-- transaction, with who (session user, tenant context), what, before, after.
-- Issue 2 and PRODUCT.md capability 8; checklist I9 (no secret in the trail;
-- see also 01_key_storage.sql, which scans audit_log for secrets).
BEGIN;
\ir helpers.psql
SELECT plan(28);

CREATE FUNCTION pg_temp.mark() RETURNS bigint
	LANGUAGE sql AS $$ SELECT coalesce(max(audit_id), 0) FROM quota_ext.audit_log $$;
-- the audit rows written since mark m, in order
CREATE FUNCTION pg_temp.since(m bigint) RETURNS SETOF quota_ext.audit_log
	LANGUAGE sql AS $$ SELECT * FROM quota_ext.audit_log WHERE audit_id > m ORDER BY audit_id $$;

SELECT has_table('quota_ext', 'audit_log', 'quota_ext.audit_log exists');
SELECT columns_are('quota_ext', 'audit_log',
                   ARRAY['tenant_id', 'audit_id', 'at', 'actor', 'actor_tenant_id', 'action', 'object_type',
                         'object_id', 'before', 'after'],
                   'audit_log columns: who, when, what, before, after');

-- tenant_create
SELECT pg_temp.mark() AS m \gset
SELECT quota_ext.tenant_create('tap-audit-a', 'pro', 'Europe/Paris') AS ta \gset
SELECT results_eq(format('SELECT tenant_id, action, object_type, object_id, before, after->>''name'', after->>''tier'',
                                 after->>''status'', at, actor::text, actor_tenant_id FROM pg_temp.since(%s)', :m),
                  format($$VALUES (%s::bigint, 'tenant_create'::text, 'tenant'::text, %L::text, NULL::jsonb,
                                   'tap-audit-a'::text, 'pro'::text, 'active'::text, now(), session_user::text, NULL::bigint)$$,
                         :ta, :ta),
                  'tenant_create: one row, no before, the new tenant after, session user, no context');

-- tenant_update
SELECT pg_temp.mark() AS m \gset
SELECT quota_ext.tenant_update(:ta, name => 'tap-audit-a2', features => '{"beta": true}');
SELECT results_eq(format('SELECT action, object_id, before->>''name'', after->>''name'', before->''features'', after->''features''
                            FROM pg_temp.since(%s)', :m),
                  format($$VALUES ('tenant_update'::text, %L::text, 'tap-audit-a'::text, 'tap-audit-a2'::text,
                                   '{}'::jsonb, '{"beta": true}'::jsonb)$$, :ta),
                  'tenant_update: before and after');

-- status changes, and no row for a change that changes nothing
SELECT pg_temp.mark() AS m \gset
SELECT quota_ext.tenant_suspend(:ta);
SELECT quota_ext.tenant_suspend(:ta);
SELECT quota_ext.tenant_activate(:ta);
SELECT results_eq(format('SELECT action, before->>''status'', after->>''status'' FROM pg_temp.since(%s)', :m),
                  $$VALUES ('tenant_suspended'::text, 'active'::text, 'suspended'::text),
                           ('tenant_active', 'suspended', 'active')$$,
                  'suspend, suspend again (no row), activate');

-- user_create: the user and its first key
SELECT pg_temp.mark() AS m \gset
SELECT user_id AS u, api_key AS k FROM quota_ext.user_create(:ta, 'alice@a.example', 'admin') \gset
SELECT key_id AS k_id FROM quota_ext.api_keys WHERE tenant_id = :ta AND user_id = :u \gset
SELECT results_eq(format('SELECT tenant_id, action, object_type, object_id, before FROM pg_temp.since(%s)', :m),
                  format($$VALUES (%s::bigint, 'user_create'::text, 'user'::text, %L::text, NULL::jsonb),
                                  (%s, 'api_key_create', 'api_key', %L, NULL)$$, :ta, :u, :ta, :k_id),
                  'user_create: a user row and an api_key row');
SELECT results_eq(format('SELECT after->>''email'', after->>''role'', after->>''status'' FROM pg_temp.since(%s) WHERE action = ''user_create''', :m),
                  $$VALUES ('alice@a.example'::text, 'admin'::text, 'active'::text)$$,
                  'user_create: the user after');
SELECT results_eq(format('SELECT after->>''key_prefix'', (after->>''user_id'')::bigint, after ? ''key_hash'', after ? ''api_key''
                            FROM pg_temp.since(%s) WHERE action = ''api_key_create''', :m),
                  format($$VALUES (%L::text, %s::bigint, false, false)$$, 'qxk_' || :ta || '_' || :k_id, :u),
                  'api_key_create: the visible prefix and user, neither hash nor key');

-- user_update
SELECT pg_temp.mark() AS m \gset
SELECT quota_ext.user_update(:ta, :u, role => 'viewer', status => 'disabled');
SELECT results_eq(format('SELECT action, object_id, before->>''role'', after->>''role'', before->>''status'', after->>''status''
                            FROM pg_temp.since(%s)', :m),
                  format($$VALUES ('user_update'::text, %L::text, 'admin'::text, 'viewer'::text, 'active'::text, 'disabled'::text)$$, :u),
                  'user_update: before and after');

-- api_key_create with name and expiry, rotate, revoke (twice)
SELECT pg_temp.mark() AS m \gset
SELECT key_id AS k2_id FROM quota_ext.api_key_create(:ta, :u, 'ci', now() + interval '10 days') \gset
SELECT new_key_id AS k3_id FROM quota_ext.api_key_rotate(:ta, :k2_id, interval '1 hour') \gset
SELECT quota_ext.api_key_revoke(:ta, :k_id);
SELECT quota_ext.api_key_revoke(:ta, :k_id);
SELECT results_eq(format('SELECT action, object_id, before, after - ''key_prefix'' - ''user_id'' - ''key_id'' FROM pg_temp.since(%s)', :m),
                  format($$VALUES ('api_key_create'::text, %L::text, NULL::jsonb,
                                   jsonb_build_object('name', 'ci', 'expires_at', now() + interval '10 days')),
                                  ('api_key_create', %L, NULL,
                                   jsonb_build_object('name', 'ci', 'expires_at', now() + interval '10 days')),
                                  ('api_key_rotate', %L, jsonb_build_object('expires_at', now() + interval '10 days'),
                                   jsonb_build_object('expires_at', now() + interval '1 hour', 'rotated_to', %s)),
                                  ('api_key_revoke', %L, '{"revoked_at": null}', jsonb_build_object('revoked_at', now()))$$,
                         :k2_id, :k3_id, :k2_id, :k3_id, :k_id),
                  'api_key_create, api_key_rotate (new key, then the old one), api_key_revoke once');

-- model_register: global models audit under tenant 0, owned ones under their tenant
SELECT pg_temp.mark() AS m \gset
SELECT quota_ext.model_register('tap-audit-gpt', 'openai') AS mg \gset
SELECT quota_ext.model_register('tap-audit-own', owner_tenant_id => :ta) AS mo \gset
SELECT results_eq(format('SELECT tenant_id, action, object_type, object_id, after->>''name'', after->>''provider'' FROM pg_temp.since(%s)', :m),
                  format($$VALUES (0::bigint, 'model_register'::text, 'model'::text, %L::text, 'tap-audit-gpt'::text, 'openai'::text),
                                  (%s, 'model_register', 'model', %L, 'tap-audit-own', NULL)$$, :mg, :ta, :mo),
                  'model_register: global under tenant 0, owned under the owner');

-- actor_tenant_id records the context an admin acted in
SELECT pg_temp.mark() AS m \gset
SELECT quota_ext.set_tenant(:ta);
SELECT quota_ext.tenant_update(:ta, settings => '{"x": 1}');
SELECT quota_ext.clear_tenant();
SELECT results_eq(format('SELECT action, actor_tenant_id FROM pg_temp.since(%s)', :m),
                  format($$VALUES ('tenant_update'::text, %s::bigint)$$, :ta),
                  'a change made in a tenant context records that tenant as actor_tenant_id');

-- close
SELECT pg_temp.mark() AS m \gset
SELECT quota_ext.tenant_close(:ta);
SELECT results_eq(format('SELECT action, before->>''status'', after->>''status'' FROM pg_temp.since(%s)', :m),
                  $$VALUES ('tenant_closed'::text, 'active'::text, 'closed'::text)$$, 'tenant_close');

-- failed changes and rolled-back changes leave no audit row
SELECT pg_temp.mark() AS m \gset
SELECT throws_ok(format('SELECT quota_ext.tenant_update(%s, name => ''x'')', :ta), '55000', NULL, 'a failing change ...');
SELECT throws_ok('SELECT quota_ext.tenant_create(''tap-audit-a2'')', '23505', NULL, 'another failing change ...');
SELECT is_empty(format('SELECT * FROM pg_temp.since(%s)', :m), '... writes no audit row');
SAVEPOINT s;
\o /dev/null
SELECT quota_ext.tenant_create('tap-audit-rolled-back');
\o
ROLLBACK TO s;
SELECT is_empty(format('SELECT * FROM pg_temp.since(%s)', :m), 'a rolled-back change leaves no audit row');

-- the audit trail is written only through the admin functions
SELECT ok(NOT has_function_privilege('quota_ext_admin', 'quota_ext._audit(bigint,text,text,text,jsonb,jsonb)', 'EXECUTE'),
          'quota_ext_admin cannot call _audit directly');
SELECT ok(NOT has_function_privilege('quota_ext_app', 'quota_ext._audit(bigint,text,text,text,jsonb,jsonb)', 'EXECUTE'),
          'quota_ext_app cannot call _audit');
SELECT ok(NOT has_table_privilege(r, 'quota_ext.audit_log', p), format('%s has no %s on audit_log', r, p))
  FROM unnest(ARRAY['quota_ext_admin', 'quota_ext_app']) AS r,
       unnest(ARRAY['INSERT', 'UPDATE', 'DELETE', 'TRUNCATE']) AS p;
SELECT ok(has_table_privilege('quota_ext_admin', 'quota_ext.audit_log', 'SELECT'), 'quota_ext_admin can read audit_log');

SELECT * FROM finish();
ROLLBACK;
