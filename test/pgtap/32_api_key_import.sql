-- Issue 17: api_key_import(tenant_id, user_id, api_key, ...) brings over an
-- existing key of any format: stored as its SHA-256 only, authenticated by
-- authenticate()/invoke() like a minted key (then by (tenant_id, key_id),
-- the same checks: revoked, expired, user and tenant active).  Failed on
-- main (no such function; a key without the qxk_ shape never authenticated).
BEGIN;
\ir metering_helpers.psql
SELECT plan(28);

\o /dev/null
SELECT quota_ext.tenant_create('ki-a', 'pro') AS ta \gset
SELECT quota_ext.tenant_create('ki-b', 'pro') AS tb \gset
SELECT user_id AS ua FROM quota_ext.user_create(:ta, 'a@ki.example', 'admin') \gset
SELECT user_id AS ub FROM quota_ext.user_create(:tb, 'b@ki.example', 'member') \gset
SELECT quota_ext.model_register('ki-model');
SELECT quota_ext.policy_set(:ta, 'ki-model', true);
\o
\set legacy 'sk-live-4f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c'

SELECT quota_ext.api_key_import(:ta, :ua, :'legacy', 'from arf') AS kid \gset
SELECT results_eq(format('SELECT key_prefix, key_hash = sha256(convert_to(%L, getdatabaseencoding())), name, revoked_at IS NULL FROM quota_ext.api_keys WHERE tenant_id = %s AND key_id = %s', :'legacy', :ta, :kid),
	format($$VALUES ('imp_%s_%s'::text, true, 'from arf'::text, true)$$, :ta, :kid),
	'stored: a prefix without any of the secret, the SHA-256 of the whole key');
SELECT is((SELECT count(*) FROM quota_ext.api_keys k WHERE position(:'legacy' IN k::text) > 0)
          + (SELECT count(*) FROM quota_ext.audit_log a WHERE position(:'legacy' IN a::text) > 0), 0::bigint,
	'the key itself is in no row');
SELECT is((SELECT action FROM quota_ext.audit_log WHERE action = 'api_key_import' AND object_id = :'kid'), 'api_key_import', 'audited');

-- authenticates like a minted key
SELECT results_eq(format('SELECT a.tenant_id, a.user_id, a.role, c.key_id FROM quota_ext.authenticate(%L) a, quota_ext.current_context() c', :'legacy'),
	format($$VALUES (%s::bigint, %s::bigint, 'admin'::text, %s::bigint)$$, :ta, :ua, :kid),
	'authenticate(imported key): its tenant, user, role and key');
SELECT is(quota_ext.current_tenant_id(), :ta::bigint, '... and the context is its tenant');
\o /dev/null
SELECT quota_ext.clear_tenant();
\o
SELECT results_eq(format($$SELECT allowed, tenant_id, user_id, key_id FROM quota_ext.invoke(%L, 'ki-model')$$, :'legacy'),
	format('VALUES (true, %s::bigint, %s::bigint, %s::bigint)', :ta, :ua, :kid), 'invoke with the imported key');
\o /dev/null
SELECT quota_ext.clear_tenant();
\o
SELECT throws_ok(format('SELECT quota_ext.authenticate(%L)', :'legacy' || 'x'), '28000', 'invalid API key', 'another key of the same shape: 28000');
SELECT throws_ok(format('SELECT quota_ext.authenticate(%L)', upper(:'legacy')), '28000', 'invalid API key', 'case matters');

-- bad input: a specific SQLSTATE, nothing changed
SELECT pg_temp.mx_snap();
SELECT * FROM pg_temp.mx_throws(format('SELECT quota_ext.api_key_import(%s, %s, %L)', :ta, :ua, 'short-key-123'), '22023',
	'an imported API key must be 20 to 255 printable ASCII characters without spaces', 'shorter than 20');
SELECT * FROM pg_temp.mx_throws(format('SELECT quota_ext.api_key_import(%s, %s, %L)', :ta, :ua, 'a key with spaces 0123456789'), '22023',
	'an imported API key must be 20 to 255 printable ASCII characters without spaces', 'spaces');
SELECT * FROM pg_temp.mx_throws(format('SELECT quota_ext.api_key_import(%s, %s, %L)', :ta, :ua, repeat('ab', 15)), '22023',
	'an imported API key must have at least 8 different characters', 'too few different characters');
SELECT * FROM pg_temp.mx_throws(format('SELECT quota_ext.api_key_import(%s, %s, %L)', :ta, :ua, 'QXK_1_2_abcdefghijklmnopqrstuvwxyz'), '22023',
	'keys beginning with qx are reserved for the keys quota_ext mints', 'the minted keys'' prefix');
SELECT * FROM pg_temp.mx_throws(format('SELECT quota_ext.api_key_import(%s, %s, %L)', :tb, :ub, :'legacy'), '23505',
	'this API key is already stored', 'the same key again, in another tenant');
SELECT * FROM pg_temp.mx_throws(format('SELECT quota_ext.api_key_import(%s, 999999999, %L)', :ta, 'sk-other-0123456789abcdefgh'), '42704',
	'user 999999999 does not exist', 'unknown user');
SELECT * FROM pg_temp.mx_throws(format('SELECT quota_ext.api_key_import(%s, %s, NULL)', :ta, :ua), '22004',
	'argument "api_key" must not be null', 'NULL key');

-- expiry, revocation and removal apply as to minted keys
SELECT quota_ext.api_key_import(:ta, :ua, 'sk-expiring-0123456789abcdef', expires_at => now() + interval '1 hour') AS kexp \gset
\o /dev/null
UPDATE quota_ext.api_keys SET expires_at = now() - interval '1 second' WHERE tenant_id = :ta AND key_id = :kexp;
\o
SELECT throws_ok($$SELECT quota_ext.authenticate('sk-expiring-0123456789abcdef')$$, '28000', 'invalid API key', 'an expired imported key');
\o /dev/null
SELECT quota_ext.api_key_revoke(:ta, :kid);
\o
SELECT throws_ok(format('SELECT quota_ext.authenticate(%L)', :'legacy'), '28000', 'invalid API key', 'a revoked imported key');
SELECT quota_ext.api_key_import(:ta, :ua, 'sk-second-0123456789abcdefgh') AS k2 \gset
SELECT lives_ok($$SELECT quota_ext.authenticate('sk-second-0123456789abcdefgh')$$, 'a second imported key works');
\o /dev/null
SELECT quota_ext.clear_tenant();
\o
\o /dev/null
SELECT quota_ext.user_remove(:ta, :ua);
\o
SELECT throws_ok($$SELECT quota_ext.authenticate('sk-second-0123456789abcdefgh')$$, '28000', 'invalid API key', 'user_remove revokes imported keys too');
SELECT pg_temp.mx_snap();
SELECT * FROM pg_temp.mx_throws(format('SELECT quota_ext.api_key_import(%s, %s, %L)', :ta, :ua, 'sk-third-0123456789abcdefgh'), '55000',
	format('user %s was removed', :ua), 'no key for a removed user');

SELECT * FROM finish();
ROLLBACK;
