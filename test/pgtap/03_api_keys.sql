-- API key lifecycle: api_key_create, api_key_revoke, api_key_rotate.
-- Issue 2: "API keys ... expiry, revoke, rotate (old key valid for a grace
-- period)", bad inputs with documented SQLSTATEs that change nothing.
-- Checklist: I9 (create returns the secret once, revoke takes effect),
-- B1 (NULLs), B3 (unknown ids and other tenants' ids: one error text).
BEGIN;
\ir helpers.psql
SELECT plan(84);

\o /dev/null
SELECT quota_ext.tenant_create('tap-keys-a') AS ta \gset
SELECT quota_ext.tenant_create('tap-keys-b') AS tb \gset
SELECT quota_ext.tenant_create('tap-keys-closed') AS tc \gset
SELECT user_id AS ua, api_key AS ka FROM quota_ext.user_create(:ta, 'alice@a.example', 'admin') \gset
SELECT user_id AS ub FROM quota_ext.user_create(:tb, 'bob@b.example') \gset
SELECT user_id AS uc FROM quota_ext.user_create(:tc, 'carl@c.example') \gset
SELECT key_id AS kc_id FROM quota_ext.api_keys WHERE tenant_id = :tc \gset
SELECT key_id AS kb_id FROM quota_ext.api_keys WHERE tenant_id = :tb \gset
SELECT key_id AS kc2_id FROM quota_ext.api_key_create(:tc, :uc, 'second') \gset
SELECT quota_ext.tenant_close(:tc);
\o

-- ---------------------------------------------------------------------------
-- api_key_create
-- ---------------------------------------------------------------------------
SELECT has_function('quota_ext', 'api_key_create', ARRAY['bigint', 'bigint', 'text', 'timestamp with time zone'],
                    'api_key_create(tenant_id, user_id, name, expires_at) exists');
\o /dev/null
SELECT key_id AS k1_id, api_key AS k1 FROM quota_ext.api_key_create(:ta, :ua) \gset
SELECT key_id AS k2_id, api_key AS k2 FROM quota_ext.api_key_create(:ta, :ua, 'ci runner', now() + interval '7 days') \gset
\o
SELECT matches(:'k1'::text, '^qxk_' || :ta || '_' || :k1_id || '_[0-9A-Za-z]{38}$', 'the key names its tenant and key id');
SELECT results_eq(format('SELECT user_id, name, expires_at, revoked_at, last_used_at, rotated_to, key_prefix
                            FROM quota_ext.api_keys WHERE tenant_id = %s AND key_id = %s', :ta, :k1_id),
                  format('VALUES (%s::bigint, NULL::text, NULL::timestamptz, NULL::timestamptz, NULL::timestamptz, NULL::bigint, %L::text)',
                         :ua, 'qxk_' || :ta || '_' || :k1_id),
                  'defaults: no name, no expiry, not revoked, never used');
SELECT results_eq(format('SELECT name, expires_at FROM quota_ext.api_keys WHERE tenant_id = %s AND key_id = %s', :ta, :k2_id),
                  $$VALUES ('ci runner'::text, now() + interval '7 days')$$,
                  'name and expires_at are stored');
SELECT isnt(:'k1'::text, :'k2'::text, 'two keys of one user differ');
SELECT results_eq(format('SELECT tenant_id, user_id FROM quota_ext.authenticate(%L)', :'k2'),
                  format('VALUES (%s::bigint, %s::bigint)', :ta, :ua), 'a new key authenticates');
SELECT lives_ok(format('SELECT quota_ext.authenticate(%L)', :'ka'), 'the user''s first key still works too');
SELECT quota_ext.clear_tenant();

SELECT pg_temp.qx_snap();
SELECT pg_temp.throws_clean(format('SELECT quota_ext.api_key_create(NULL, %s)', :ua),
	'22004', 'argument "tenant_id" must not be null', 'api_key_create: NULL tenant_id');
SELECT pg_temp.throws_clean(format('SELECT quota_ext.api_key_create(%s, NULL)', :ta),
	'22004', 'argument "user_id" must not be null', 'api_key_create: NULL user_id');
SELECT pg_temp.throws_clean(format('SELECT quota_ext.api_key_create(%s, %s, '''')', :ta, :ua),
	'22023', NULL, 'api_key_create: empty name');
SELECT pg_temp.throws_clean(format('SELECT quota_ext.api_key_create(%s, %s, %L)', :ta, :ua, repeat('n', 201)),
	'22023', NULL, 'api_key_create: name over 200 characters');
SELECT pg_temp.throws_clean(format('SELECT quota_ext.api_key_create(%s, %s, %L)', :ta, :ua, E'line\nbreak'),
	'22023', NULL, 'api_key_create: control character in the name');
SELECT pg_temp.throws_clean(format('SELECT quota_ext.api_key_create(%s, %s, NULL, now())', :ta, :ua),
	'22023', 'expires_at must be in the future', 'api_key_create: expires_at = now()');
SELECT pg_temp.throws_clean(format('SELECT quota_ext.api_key_create(%s, %s, NULL, now() - interval ''1 day'')', :ta, :ua),
	'22023', 'expires_at must be in the future', 'api_key_create: expires_at in the past');
SELECT pg_temp.throws_clean(format('SELECT quota_ext.api_key_create(%s, %s, NULL, ''-infinity'')', :ta, :ua),
	'22023', 'expires_at must be in the future', 'api_key_create: expires_at -infinity');
SELECT pg_temp.throws_clean(format('SELECT quota_ext.api_key_create(999999999, %s)', :ua),
	'42704', 'tenant 999999999 does not exist', 'api_key_create: unknown tenant');
SELECT pg_temp.throws_clean(format('SELECT quota_ext.api_key_create(%s, 999999999)', :ta),
	'42704', 'user 999999999 does not exist', 'api_key_create: unknown user');
SELECT pg_temp.throws_clean(format('SELECT quota_ext.api_key_create(%s, %s)', :ta, :ub),
	'42704', format('user %s does not exist', :ub), 'api_key_create: user of another tenant (same text as unknown)');
SELECT pg_temp.throws_clean(format('SELECT quota_ext.api_key_create(%s, %s)', :tc, :uc),
	'55000', format('tenant %s is closed', :tc), 'api_key_create: closed tenant');

-- inside another tenant's context, a real tenant is "does not exist"
SELECT quota_ext.set_tenant(:tb);
SELECT pg_temp.qx_snap();
SELECT pg_temp.throws_clean(format('SELECT quota_ext.api_key_create(%s, %s)', :ta, :ua),
	'42704', format('tenant %s does not exist', :ta), 'api_key_create in tenant B''s context, for tenant A');
SELECT lives_ok(format('SELECT quota_ext.api_key_create(%s, %s)', :tb, :ub), 'api_key_create for the context''s own tenant');
SELECT quota_ext.clear_tenant();

-- ---------------------------------------------------------------------------
-- api_key_revoke
-- ---------------------------------------------------------------------------
SELECT quota_ext.api_key_revoke(:ta, :k1_id);
SELECT is((SELECT revoked_at FROM quota_ext.api_keys WHERE tenant_id = :ta AND key_id = :k1_id), now(),
          'revoke sets revoked_at');
SELECT is(pg_temp.auth_error(:'k1'), '28000 invalid API key', 'a revoked key is refused at once (same transaction)');
SELECT lives_ok(format('SELECT quota_ext.authenticate(%L)', :'k2'), 'the user''s other keys still work');
SELECT quota_ext.clear_tenant();
SELECT pg_temp.qx_snap();
SELECT lives_ok(format('SELECT quota_ext.api_key_revoke(%s, %s)', :ta, :k1_id), 'revoking twice is not an error');
SELECT pg_temp.qx_unchanged('revoking twice (no second audit row, revoked_at kept)');
SELECT pg_temp.throws_clean(format('SELECT quota_ext.api_key_revoke(NULL, %s)', :k2_id),
	'22004', 'argument "tenant_id" must not be null', 'api_key_revoke: NULL tenant_id');
SELECT pg_temp.throws_clean(format('SELECT quota_ext.api_key_revoke(%s, NULL)', :ta),
	'22004', 'argument "key_id" must not be null', 'api_key_revoke: NULL key_id');
SELECT pg_temp.throws_clean(format('SELECT quota_ext.api_key_revoke(%s, 999999999)', :ta),
	'42704', 'API key 999999999 does not exist', 'api_key_revoke: unknown key');
SELECT pg_temp.throws_clean(format('SELECT quota_ext.api_key_revoke(%s, %s)', :ta, :kb_id),
	'42704', format('API key %s does not exist', :kb_id), 'api_key_revoke: key of another tenant (same text as unknown)');
SELECT pg_temp.throws_clean(format('SELECT quota_ext.api_key_revoke(999999999, %s)', :k2_id),
	'42704', 'tenant 999999999 does not exist', 'api_key_revoke: unknown tenant');
SELECT lives_ok(format('SELECT quota_ext.api_key_revoke(%s, %s)', :tc, :kc_id),
                'a closed tenant''s keys can still be revoked');

-- ---------------------------------------------------------------------------
-- api_key_rotate
-- ---------------------------------------------------------------------------
\o /dev/null
SELECT key_id AS r_id, api_key AS r_old FROM quota_ext.api_key_create(:ta, :ua, 'rotating', now() + interval '30 days') \gset
SELECT new_key_id AS r_new_id, api_key AS r_new FROM quota_ext.api_key_rotate(:ta, :r_id, interval '2 hours') \gset
\o
SELECT isnt(:r_new_id::bigint, :r_id::bigint, 'rotate returns a new key id');
SELECT matches(:'r_new'::text, '^qxk_' || :ta || '_' || :r_new_id || '_[0-9A-Za-z]{38}$', '... and a new key for it');
SELECT results_eq(format('SELECT expires_at, rotated_to FROM quota_ext.api_keys WHERE tenant_id = %s AND key_id = %s', :ta, :r_id),
                  format($$VALUES (now() + interval '2 hours', %s::bigint)$$, :r_new_id),
                  'the old key expires after the grace period and points to the new one');
SELECT results_eq(format('SELECT user_id, name, expires_at, rotated_to FROM quota_ext.api_keys WHERE tenant_id = %s AND key_id = %s', :ta, :r_new_id),
                  format($$VALUES (%s::bigint, 'rotating'::text, now() + interval '30 days', NULL::bigint)$$, :ua),
                  'the new key keeps the user, name and expiry of the old one');
SELECT results_eq(format('SELECT tenant_id, user_id FROM quota_ext.authenticate(%L)', :'r_old'),
                  format('VALUES (%s::bigint, %s::bigint)', :ta, :ua), 'the old key works during the grace period');
SELECT results_eq(format('SELECT tenant_id, user_id FROM quota_ext.authenticate(%L)', :'r_new'),
                  format('VALUES (%s::bigint, %s::bigint)', :ta, :ua), 'the new key works');
SELECT quota_ext.clear_tenant();
UPDATE quota_ext.api_keys SET expires_at = now() - interval '1 second' WHERE tenant_id = :ta AND key_id = :r_id;
SELECT is(pg_temp.auth_error(:'r_old'), '28000 invalid API key', 'once the grace period is over the old key is refused');
SELECT lives_ok(format('SELECT quota_ext.authenticate(%L)', :'r_new'), '... and the new one still works');
SELECT quota_ext.clear_tenant();

-- grace longer than the key's remaining life keeps the earlier expiry
\o /dev/null
SELECT key_id AS s_id FROM quota_ext.api_key_create(:ta, :ua, 'short', now() + interval '1 hour') \gset
SELECT new_key_id AS s_new_id FROM quota_ext.api_key_rotate(:ta, :s_id, interval '10 days') \gset
SELECT key_id AS z_id, api_key AS z_old FROM quota_ext.api_key_create(:ta, :ua, 'zero') \gset
SELECT new_key_id AS z_new_id, api_key AS z_new FROM quota_ext.api_key_rotate(:ta, :z_id, interval '0') \gset
SELECT key_id AS d_id, api_key AS d_old FROM quota_ext.api_key_create(:ta, :ua, 'default grace') \gset
SELECT new_key_id AS d_new_id FROM quota_ext.api_key_rotate(:ta, :d_id) \gset
\o
SELECT is((SELECT expires_at FROM quota_ext.api_keys WHERE tenant_id = :ta AND key_id = :s_id), now() + interval '1 hour',
          'a grace period past the old key''s expiry does not extend it');
SELECT is(pg_temp.auth_error(:'z_old'), '28000 invalid API key', 'grace 0: the old key stops at once');
SELECT lives_ok(format('SELECT quota_ext.authenticate(%L)', :'z_new'), 'grace 0: the new key works');
SELECT quota_ext.clear_tenant();
SELECT is((SELECT expires_at FROM quota_ext.api_keys WHERE tenant_id = :ta AND key_id = :d_id), now() + interval '1 day',
          'the default grace period is one day');

SELECT pg_temp.qx_snap();
SELECT pg_temp.throws_clean(format('SELECT quota_ext.api_key_rotate(%s, %s)', :ta, :d_id),
	'55000', format('API key %s is revoked, expired or already rotated', :d_id), 'api_key_rotate: already rotated');
SELECT pg_temp.throws_clean(format('SELECT quota_ext.api_key_rotate(%s, %s)', :ta, :k1_id),
	'55000', format('API key %s is revoked, expired or already rotated', :k1_id), 'api_key_rotate: revoked key');
SELECT pg_temp.throws_clean(format('SELECT quota_ext.api_key_rotate(%s, %s)', :ta, :r_id),
	'55000', format('API key %s is revoked, expired or already rotated', :r_id), 'api_key_rotate: expired key');
SELECT pg_temp.throws_clean(format('SELECT quota_ext.api_key_rotate(%s, %s, interval ''-1 second'')', :ta, :k2_id),
	'22023', 'grace must not be negative', 'api_key_rotate: negative grace');
SELECT pg_temp.throws_clean(format('SELECT quota_ext.api_key_rotate(%s, %s, interval ''2147483647 days'')', :ta, :k2_id),
	'22023', 'grace must be at most 100 years', 'api_key_rotate: a grace past any timestamp (failed before: 22008)');
SELECT pg_temp.throws_clean(format('SELECT quota_ext.api_key_rotate(%s, %s, NULL)', :ta, :k2_id),
	'22004', 'argument "grace" must not be null', 'api_key_rotate: NULL grace');
SELECT pg_temp.throws_clean(format('SELECT quota_ext.api_key_rotate(%s, NULL)', :ta),
	'22004', 'argument "key_id" must not be null', 'api_key_rotate: NULL key_id');
SELECT pg_temp.throws_clean(format('SELECT quota_ext.api_key_rotate(NULL, %s)', :k2_id),
	'22004', 'argument "tenant_id" must not be null', 'api_key_rotate: NULL tenant_id');
SELECT pg_temp.throws_clean(format('SELECT quota_ext.api_key_rotate(%s, 999999999)', :ta),
	'42704', 'API key 999999999 does not exist', 'api_key_rotate: unknown key');
SELECT pg_temp.throws_clean(format('SELECT quota_ext.api_key_rotate(%s, %s)', :ta, :kb_id),
	'42704', format('API key %s does not exist', :kb_id), 'api_key_rotate: key of another tenant (same text as unknown)');
SELECT pg_temp.throws_clean(format('SELECT quota_ext.api_key_rotate(%s, %s)', :tc, :kc2_id),
	'55000', format('tenant %s is closed', :tc), 'api_key_rotate: a closed tenant''s key (no new key is minted)');

SELECT * FROM finish();
ROLLBACK;
