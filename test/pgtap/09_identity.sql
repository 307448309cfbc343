-- Under a context set from an API key, quota_consume / quota_reserve take
-- user, key and role from the key: explicit arguments naming another user,
-- key or role are refused (42501), so a viewer's key cannot claim admin.
BEGIN;
SELECT plan(7);

SELECT quota_ext.tenant_create('idn-t', 'enterprise') AS t \gset
SELECT user_id AS viewer, api_key AS viewer_key FROM quota_ext.user_create(:t, 'v@idn', 'viewer') \gset
SELECT user_id AS boss FROM quota_ext.user_create(:t, 'b@idn', 'admin') \gset
SELECT quota_ext.model_register('idn-m');
SELECT quota_ext.policy_set(:t, 'idn-m', true, ARRAY['admin']);

-- without a context (superuser as admin tool) any identity may be named
SELECT is((quota_ext.quota_consume(:t, 'idn-m', role => 'admin')).allowed, true,
	'an admin caller without context may name the role');

SELECT tenant_id FROM quota_ext.authenticate(:'viewer_key');
SELECT is((quota_ext.quota_consume(:t, 'idn-m')).denied_by, 'policy',
	'the viewer''s own role is denied by the policy');
SELECT throws_ok(format('SELECT quota_ext.quota_consume(%s, %L, role => %L)', :t, 'idn-m', 'admin'),
	'42501', 'an API key''s transaction cannot act as another user, key or role',
	'a viewer key cannot claim the admin role');
SELECT throws_ok(format('SELECT quota_ext.quota_consume(%s, %L, user_id => %s)', :t, 'idn-m', :boss),
	'42501', NULL, 'nor another user');
SELECT throws_ok(format('SELECT quota_ext.quota_reserve(%s, %L, 5, role => %L)', :t, 'idn-m', 'admin'),
	'42501', NULL, 'nor in quota_reserve');
SELECT is((quota_ext.quota_consume(:t, 'idn-m', user_id => :viewer, role => 'viewer')).denied_by,
	'policy', 'naming its own user and role is accepted');
SELECT is(count(*), 1::bigint, 'only the admin tool''s call was charged')
  FROM quota_ext.usage WHERE tenant_id = :t;

SELECT * FROM finish();
ROLLBACK;
