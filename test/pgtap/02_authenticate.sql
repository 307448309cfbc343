-- quota_ext.authenticate(api_key): every way to fail gives one error, and
-- success sets the tenant context.
-- Issue 2: "authenticate for each failure case", uniform error, returns
-- (tenant_id, user_id, role) and sets the context, cheap last_used_at.
-- Checklist: B4 (malformed keys refused before any table access), B3 (no
-- existence oracle), F1/F2 (checksum, uniform NOT_FOUND), I9.
--
-- Every refusal must be exactly "28000 invalid API key" with no detail and
-- no hint, and must change nothing (tables and context, qx_state()).
BEGIN;
\ir helpers.psql
SELECT plan(97);

-- ---------------------------------------------------------------------------
-- fixtures: one tenant per case that needs its own status
-- ---------------------------------------------------------------------------
\o /dev/null
SELECT quota_ext.tenant_create('tap-auth-a') AS ta \gset
SELECT quota_ext.tenant_create('tap-auth-b') AS tb \gset
SELECT quota_ext.tenant_create('tap-auth-suspended') AS ts \gset
SELECT quota_ext.tenant_create('tap-auth-closed') AS tc \gset
SELECT user_id AS ua, api_key AS ka FROM quota_ext.user_create(:ta, 'alice@a.example', 'admin') \gset
SELECT user_id AS ud, api_key AS kdisabled FROM quota_ext.user_create(:ta, 'dora@a.example', 'viewer') \gset
SELECT user_id AS ub, api_key AS kb FROM quota_ext.user_create(:tb, 'bob@b.example', 'billing-ops') \gset
SELECT api_key AS ksusp FROM quota_ext.user_create(:ts, 'sue@s.example', 'member') \gset
SELECT api_key AS kclosed FROM quota_ext.user_create(:tc, 'carl@c.example', 'member') \gset
SELECT key_id AS ka_id FROM quota_ext.api_keys WHERE tenant_id = :ta AND user_id = :ua \gset
SELECT key_id AS krev_id, api_key AS krevoked FROM quota_ext.api_key_create(:ta, :ua, 'revoked') \gset
SELECT key_id AS kexp_id, api_key AS kexpired FROM quota_ext.api_key_create(:ta, :ua, 'expired', now() + interval '1 day') \gset
SELECT key_id AS kgrace_id, api_key AS kgrace_old FROM quota_ext.api_key_create(:ta, :ua, 'grace') \gset
SELECT key_id AS kpast_id, api_key AS kpast_old FROM quota_ext.api_key_create(:ta, :ua, 'past grace') \gset
SELECT new_key_id AS kgrace_new_id, api_key AS kgrace_new FROM quota_ext.api_key_rotate(:ta, :kgrace_id, interval '1 hour') \gset
SELECT api_key AS kpast_new FROM quota_ext.api_key_rotate(:ta, :kpast_id, interval '0') \gset
SELECT quota_ext.api_key_revoke(:ta, :krev_id);
SELECT quota_ext.user_update(:ta, :ud, status => 'disabled');
SELECT quota_ext.tenant_suspend(:ts);
SELECT quota_ext.tenant_close(:tc);
-- time passes: the key's expiry is now behind us
UPDATE quota_ext.api_keys SET expires_at = now() - interval '1 second' WHERE tenant_id = :ta AND key_id = :kexp_id;
\o

-- ---------------------------------------------------------------------------
-- malformed keys: refused from their shape alone, before any table is read
-- ---------------------------------------------------------------------------
CREATE TEMP TABLE bad (ord serial, label text, k text);
INSERT INTO bad (label, k) VALUES
	('empty string', ''),
	('one character', 'q'),
	('the prefix alone', 'qxk_'),
	('10 kB of letters', repeat('a', 10240)),
	('a valid key followed by 10 kB', :'ka' || repeat('x', 10240)),
	('wrong prefix', 'qxz' || substr(:'ka', 4)),
	('prefix in upper case', 'QXK' || substr(:'ka', 4)),
	('whole key in upper case', upper(:'ka')),
	('whole key in lower case', lower(:'ka')),
	('one secret character with its case swapped',
	 left(:'ka', length(:'ka') - 20)
	 || CASE WHEN substr(:'ka', length(:'ka') - 19, 1) ~ '[a-z]' THEN upper(substr(:'ka', length(:'ka') - 19, 1))
	         WHEN substr(:'ka', length(:'ka') - 19, 1) ~ '[A-Z]' THEN lower(substr(:'ka', length(:'ka') - 19, 1))
	         ELSE translate(substr(:'ka', length(:'ka') - 19, 1), '0123456789', '1234567890') END
	 || right(:'ka', 19)),
	('bad checksum (last character changed)',
	 left(:'ka', -1) || CASE WHEN right(:'ka', 1) = 'A' THEN 'B' ELSE 'A' END),
	('checksum missing', left(:'ka', -6)),
	('one character short', left(:'ka', -1)),
	('one character too many', :'ka' || 'A'),
	('trailing newline', :'ka' || E'\n'),
	('trailing carriage return and newline', :'ka' || E'\r\n'),
	('leading space', ' ' || :'ka'),
	('trailing space', :'ka' || ' '),
	('tab inside', left(:'ka', 10) || E'\t' || substr(:'ka', 11)),
	('control character \x01 inside', left(:'ka', 20) || E'\x01' || substr(:'ka', 21)),
	('escape character inside', left(:'ka', 20) || E'\x1b' || substr(:'ka', 21)),
	('non-ASCII letter in the secret', left(:'ka', -7) || 'é' || right(:'ka', 6)),
	('SQL injection', ''' OR 1=1; --'),
	('SQL injection after a valid key', :'ka' || '''; --'),
	('SQL injection as the secret', 'qxk_' || :ta || '_' || :ka_id || '_''; DROP TABLE quota_ext.tenants; --'),
	('percent format codes', 'qxk_%s_%d_%n%n%n%n%n%n%n%n%n%n%n%n%n%n%n%n%n%n%n%n%n%n%n%n%n%n%n%n%n%n%n%n%n%n%n%n'),
	-- well-formed apart from the ids, with a correct checksum
	('tenant id with a leading zero', pg_temp.qx_forge('qxk_0' || :ta || '_' || :ka_id || '_' || pg_temp.qx_secret(:'ka'))),
	('tenant id 0', pg_temp.qx_forge('qxk_0_' || :ka_id || '_' || pg_temp.qx_secret(:'ka'))),
	('negative tenant id', pg_temp.qx_forge('qxk_-' || :ta || '_' || :ka_id || '_' || pg_temp.qx_secret(:'ka'))),
	('19-digit key id', pg_temp.qx_forge('qxk_' || :ta || '_1000000000000000000_' || pg_temp.qx_secret(:'ka'))),
	('id separator missing', pg_temp.qx_forge('qxk_' || :ta || :ka_id || '_' || pg_temp.qx_secret(:'ka'))),
	('secret of 31 characters', pg_temp.qx_forge('qxk_' || :ta || '_' || :ka_id || '_' || left(pg_temp.qx_secret(:'ka'), 31))),
	('secret with a dash', pg_temp.qx_forge('qxk_' || :ta || '_' || :ka_id || '_' || left(pg_temp.qx_secret(:'ka'), 31) || '-'));

SELECT pg_temp.qx_snap();
SELECT pg_temp.qx_table_scans() AS scans_before \gset
SELECT is(pg_temp.auth_error(k), '28000 invalid API key', 'malformed, refused: ' || label) FROM bad ORDER BY ord;
SELECT is(pg_temp.qx_table_scans(), :scans_before::bigint,
          'malformed keys were refused before any quota_ext table was read');
SELECT pg_temp.qx_unchanged('malformed keys');
SELECT throws_ok('SELECT quota_ext.authenticate(NULL)', '22004', 'argument "api_key" must not be null',
                 'a NULL key is a null argument (22004), not an authentication failure');

-- ---------------------------------------------------------------------------
-- well-formed keys that must not pass: same error, nothing changed
-- ---------------------------------------------------------------------------
CREATE TEMP TABLE refused (ord serial, label text, k text);
INSERT INTO refused (label, k) VALUES
	('unknown key id',
	 pg_temp.qx_forge('qxk_' || :ta || '_999999999_' || pg_temp.qx_secret(:'ka'))),
	('unknown tenant id',
	 pg_temp.qx_forge('qxk_999999999_' || :ka_id || '_' || pg_temp.qx_secret(:'ka'))),
	('real key id under another real tenant',
	 pg_temp.qx_forge('qxk_' || :tb || '_' || :ka_id || '_' || pg_temp.qx_secret(:'ka'))),
	('wrong secret with a valid checksum',
	 pg_temp.qx_forge('qxk_' || :ta || '_' || :ka_id || '_' || reverse(pg_temp.qx_secret(:'ka')))),
	('secret of another key with a valid checksum',
	 pg_temp.qx_forge('qxk_' || :ta || '_' || :ka_id || '_' || pg_temp.qx_secret(:'kb'))),
	('revoked key', :'krevoked'),
	('expired key', :'kexpired'),
	('rotated key past its grace period', :'kpast_old'),
	('key of a disabled user', :'kdisabled'),
	('key of a suspended tenant', :'ksusp'),
	('key of a closed tenant', :'kclosed');

SELECT pg_temp.qx_table_scans() AS scans_before \gset
SELECT unnest(ARRAY[is(pg_temp.auth_error(k), '28000 invalid API key', 'refused: ' || label),
                    pg_temp.qx_unchanged(label)])
  FROM refused ORDER BY ord;
SELECT cmp_ok(pg_temp.qx_table_scans(), '>', :scans_before::bigint,
              'sanity: well-formed keys are looked up (the scan counter works)');
SELECT throws_ok(format('SELECT quota_ext.authenticate(%L)', :'krevoked'), '28000', 'invalid API key',
                 'throws_ok agrees: revoked key gives SQLSTATE 28000');

-- ---------------------------------------------------------------------------
-- success
-- ---------------------------------------------------------------------------
SELECT is(quota_ext.current_tenant_id(), NULL, 'no context before authenticate');
SELECT results_eq(format('SELECT * FROM quota_ext.authenticate(%L)', :'ka'),
                  format('VALUES (%s::bigint, %s::bigint, %L::text)', :ta, :ua, 'admin'),
                  'authenticate returns (tenant_id, user_id, role)');
SELECT is(quota_ext.current_tenant_id(), :ta::bigint, 'current_tenant_id() is the key''s tenant');
SELECT results_eq('SELECT * FROM quota_ext.current_context()',
                  format('VALUES (%s::bigint, %s::bigint, %s::bigint, %L::text)', :ta, :ua, :ka_id, 'admin'),
                  'current_context() holds tenant, user, key and role');
SELECT is(pg_temp.auth_error(:'kexpired'), '28000 invalid API key', 'a failed authenticate after a good one');
SELECT is(quota_ext.current_tenant_id(), :ta::bigint, '... leaves the context as it was');
SELECT results_eq(format('SELECT * FROM quota_ext.authenticate(%L)', :'kb'),
                  format('VALUES (%s::bigint, %s::bigint, %L::text)', :tb, :ub, 'billing-ops'),
                  'a second key in the same transaction (custom role name returned)');
SELECT is(quota_ext.current_tenant_id(), :tb::bigint, '... replaces the context');
SELECT results_eq(format('SELECT tenant_id, user_id FROM quota_ext.authenticate(%L)', :'kgrace_old'),
                  format('VALUES (%s::bigint, %s::bigint)', :ta, :ua),
                  'a rotated key still works within its grace period');
SELECT results_eq(format('SELECT tenant_id, user_id FROM quota_ext.authenticate(%L)', :'kgrace_new'),
                  format('VALUES (%s::bigint, %s::bigint)', :ta, :ua),
                  'the key it was rotated to works');
SELECT results_eq(format('SELECT tenant_id FROM quota_ext.authenticate(%L)', :'kpast_new'),
                  format('VALUES (%s::bigint)', :ta),
                  'the new key of a zero-grace rotation works at once');
SELECT quota_ext.clear_tenant();
SELECT is(quota_ext.current_tenant_id(), NULL, 'clear_tenant() drops the context');

-- reversible refusals: reactivated tenant, re-enabled user
\o /dev/null
SELECT quota_ext.tenant_activate(:ts);
SELECT quota_ext.user_update(:ta, :ud, status => 'active');
\o
SELECT lives_ok(format('SELECT quota_ext.authenticate(%L)', :'ksusp'), 'a reactivated tenant''s key works again');
SELECT quota_ext.clear_tenant();
SELECT lives_ok(format('SELECT quota_ext.authenticate(%L)', :'kdisabled'), 'a re-enabled user''s key works again');
SELECT quota_ext.clear_tenant();
SELECT is(pg_temp.auth_error(:'kclosed'), '28000 invalid API key', 'closing is final: the key stays refused');

-- ---------------------------------------------------------------------------
-- last_used_at: written once, then not again within key_touch_interval
-- ---------------------------------------------------------------------------
CREATE FUNCTION pg_temp.used_at(t bigint, k bigint) RETURNS timestamptz
	LANGUAGE sql AS $$ SELECT last_used_at FROM quota_ext.api_keys WHERE tenant_id = t AND key_id = k $$;
SELECT key_id AS kb_id FROM quota_ext.api_keys WHERE tenant_id = :tb \gset
\o /dev/null
SELECT key_id AS kt_id, api_key AS kt FROM quota_ext.api_key_create(:ta, :ua, 'touch') \gset
\o
SELECT is(pg_temp.used_at(:ta, :kt_id), NULL, 'a new key has no last_used_at');
SAVEPOINT ro;
SET LOCAL transaction_read_only = on;
SELECT lives_ok(format('SELECT quota_ext.authenticate(%L)', :'kt'), 'authenticate works in a read-only transaction');
SELECT is(pg_temp.used_at(:ta, :kt_id), NULL, '... and does not write last_used_at there');
ROLLBACK TO ro;
SELECT lives_ok(format('SELECT quota_ext.authenticate(%L)', :'kt'), 'first use of the key');
SELECT is(pg_temp.used_at(:ta, :kt_id), now(), '... sets last_used_at');
UPDATE quota_ext.api_keys SET last_used_at = now() - interval '30 seconds' WHERE tenant_id = :ta AND key_id = :kt_id;
SELECT quota_ext.clear_tenant();
SELECT pg_temp.qx_snap();
SELECT lives_ok(format('SELECT quota_ext.authenticate(%L)', :'kt'), 'use 30 s after the last one (interval 60 s)');
SELECT is(pg_temp.used_at(:ta, :kt_id), now() - interval '30 seconds', '... does not rewrite last_used_at');
SELECT quota_ext.clear_tenant();
SELECT pg_temp.qx_unchanged('authenticate within the touch interval');
UPDATE quota_ext.api_keys SET last_used_at = now() - interval '61 seconds' WHERE tenant_id = :ta AND key_id = :kt_id;
SELECT lives_ok(format('SELECT quota_ext.authenticate(%L)', :'kt'), 'use 61 s after the last one');
SELECT is(pg_temp.used_at(:ta, :kt_id), now(), '... refreshes last_used_at');
SET LOCAL quota_ext.key_touch_interval = 3600;
UPDATE quota_ext.api_keys SET last_used_at = now() - interval '30 minutes' WHERE tenant_id = :ta AND key_id = :kt_id;
SELECT lives_ok(format('SELECT quota_ext.authenticate(%L)', :'kt'), 'key_touch_interval = 1h, used 30 min ago');
SELECT is(pg_temp.used_at(:ta, :kt_id), now() - interval '30 minutes', '... not rewritten');
SET LOCAL quota_ext.key_touch_interval = 0;
UPDATE quota_ext.api_keys SET last_used_at = now() - interval '1 millisecond' WHERE tenant_id = :ta AND key_id = :kt_id;
SELECT lives_ok(format('SELECT quota_ext.authenticate(%L)', :'kt'), 'key_touch_interval = 0, used 1 ms ago');
SELECT is(pg_temp.used_at(:ta, :kt_id), now(), '... rewritten on every use');
SELECT is(pg_temp.used_at(:tb, :kb_id), now(), 'other keys keep their own last_used_at');
SELECT is((SELECT count(*) FROM quota_ext.audit_log WHERE action LIKE '%touch%' OR action LIKE '%auth%'),
          0::bigint, 'authenticate writes no audit rows');
SELECT quota_ext.clear_tenant();
SELECT throws_ok('SET quota_ext.key_touch_interval = -1', '22023', NULL, 'key_touch_interval cannot be negative');

-- key_touch_interval is superuser-only (PGC_SUSET)
CREATE ROLE qx_tap_auth_app LOGIN IN ROLE quota_ext_app;
SET ROLE qx_tap_auth_app;
SELECT throws_ok('SET quota_ext.key_touch_interval = 0', '42501', NULL,
                 'quota_ext_app cannot change key_touch_interval');
SELECT results_eq(format('SELECT tenant_id, user_id, role FROM quota_ext.authenticate(%L)', :'ka'),
                  format('VALUES (%s::bigint, %s::bigint, %L::text)', :ta, :ua, 'admin'),
                  'quota_ext_app can authenticate');
SELECT is(pg_temp.auth_error(:'krevoked'), '28000 invalid API key', 'quota_ext_app gets the same refusal');
RESET ROLE;

-- the answer is the named row type (the executor takes its shape from the
-- type cache), with the three columns in order
SELECT is((SELECT p.prorettype::regtype::text FROM pg_catalog.pg_proc p
            WHERE p.oid = 'quota_ext.authenticate(text)'::regprocedure),
	'quota_ext.auth_result', 'authenticate returns quota_ext.auth_result');
SELECT is((SELECT array_agg(a.attname::text || ' ' || format_type(a.atttypid, a.atttypmod) ORDER BY a.attnum)
             FROM pg_catalog.pg_attribute a
            WHERE a.attrelid = (SELECT typrelid FROM pg_catalog.pg_type
                                 WHERE oid = 'quota_ext.auth_result'::regtype)
              AND a.attnum > 0 AND NOT a.attisdropped),
	ARRAY['tenant_id bigint', 'user_id bigint', 'role text'], 'auth_result columns');

SELECT * FROM finish();
ROLLBACK;
