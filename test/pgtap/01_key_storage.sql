-- API keys are never stored in plaintext.
-- Issue 2: "key never stored in plaintext (scan every column)".
-- Checklist: F1-F3 (hash only, shown once, checksum), I9 (no plaintext
-- column, create returns the secret once).
--
-- Every key made here (user_create, api_key_create, api_key_rotate) is
-- searched for in every column of every quota_ext table, audit_log
-- included, cast to text, as the secret, as both of its 16-character halves
-- and as the hex of its bytes (a bytea column cast to text prints hex).
BEGIN;
\ir helpers.psql
SELECT plan(18);

CREATE TEMP TABLE made (label text, api_key text);

SELECT quota_ext.tenant_create('tap-plain-a') AS ta \gset
SELECT quota_ext.tenant_create('tap-plain-b', 'pro', 'Europe/Berlin') AS tb \gset
INSERT INTO made SELECT 'user_create a', api_key FROM quota_ext.user_create(:ta, 'alice@a.example', 'admin');
SELECT user_id AS ua FROM quota_ext.users WHERE tenant_id = :ta \gset
INSERT INTO made SELECT 'user_create b', api_key FROM quota_ext.user_create(:tb, 'bob@b.example', 'member');
SELECT key_id AS k2, api_key AS k2key FROM quota_ext.api_key_create(:ta, :ua, 'ci', now() + interval '30 days') \gset
INSERT INTO made VALUES ('api_key_create', :'k2key');
INSERT INTO made SELECT 'api_key_rotate', api_key FROM quota_ext.api_key_rotate(:ta, :k2, interval '1 hour');
-- use and revoke some, so last_used_at, revoked_at and the audit rows exist
\o /dev/null
SELECT quota_ext.authenticate(api_key) FROM made WHERE label = 'user_create a';
SELECT quota_ext.clear_tenant();
\o
SELECT quota_ext.api_key_revoke(:ta, :k2);
SELECT quota_ext.tenant_update(:ta, settings => '{"note": "rotated"}');

-- every column of every table, every representation of every secret
CREATE FUNCTION pg_temp.plaintext_hits() RETURNS SETOF text
	LANGUAGE plpgsql AS $$
DECLARE
	c record;
	k record;
	n bigint;
BEGIN
	FOR c IN SELECT a.attrelid::regclass AS rel, a.attname
	           FROM pg_attribute a JOIN pg_class r ON r.oid = a.attrelid
	          WHERE r.relnamespace = 'quota_ext'::regnamespace AND r.relkind IN ('r', 'p', 'm')
	            AND a.attnum > 0 AND NOT a.attisdropped LOOP
		FOR k IN SELECT label, pg_temp.qx_secret(api_key) AS s FROM made LOOP
			EXECUTE format(
				'SELECT count(*) FROM %s t WHERE strpos(t.%I::text, $1) > 0 OR strpos(t.%I::text, $2) > 0 '
				'OR strpos(t.%I::text, $3) > 0 OR strpos(t.%I::text, $4) > 0',
				c.rel, c.attname, c.attname, c.attname, c.attname)
			INTO n USING k.s, left(k.s, 16), right(k.s, 16), encode(convert_to(k.s, 'UTF8'), 'hex');
			IF n > 0 THEN
				RETURN NEXT c.rel::text || '.' || c.attname || ' holds the secret of ' || k.label;
			END IF;
		END LOOP;
	END LOOP;
END
$$;

SELECT is((SELECT count(*) FROM made), 4::bigint, 'four keys were made');
SELECT is((SELECT count(DISTINCT pg_temp.qx_secret(api_key)) FROM made), 4::bigint, 'every secret is different');
SELECT is((SELECT count(*) FROM made WHERE api_key ~ '^qxk_[1-9][0-9]*_[1-9][0-9]*_[0-9A-Za-z]{38}$'),
          4::bigint, 'keys read qxk_<tenant>_<key>_<32 secret + 6 checksum base62 characters>');
SELECT is((SELECT count(*) FROM made WHERE pg_temp.qx_forge(left(api_key, -6)) = api_key),
          4::bigint, 'the last 6 characters are the base62 CRC-32C of the rest (and qx_forge agrees with src/auth.c)');
SELECT cmp_ok((SELECT count(*) FROM pg_attribute a JOIN pg_class r ON r.oid = a.attrelid
                WHERE r.relnamespace = 'quota_ext'::regnamespace AND r.relkind IN ('r', 'p') AND a.attnum > 0),
              '>', 40::bigint, 'the scan covers every column of every table (sanity: there are many)');
SELECT is_empty('SELECT * FROM pg_temp.plaintext_hits()',
                'no column of any quota_ext table holds a secret, half a secret or its hex');
-- the scan finds a planted secret: in jsonb (audit_log) and as raw bytes (key_hash)
SAVEPOINT plant;
INSERT INTO quota_ext.audit_log (tenant_id, action, object_type, after)
SELECT :ta, 'planted', 'test', jsonb_build_object('k', api_key) FROM made WHERE label = 'user_create b';
UPDATE quota_ext.api_keys SET key_hash = convert_to(pg_temp.qx_secret((SELECT api_key FROM made WHERE label = 'api_key_rotate')), 'UTF8')
 WHERE tenant_id = :tb;
SELECT set_eq('SELECT * FROM pg_temp.plaintext_hits()',
              ARRAY['quota_ext.audit_log.after holds the secret of user_create b',
                    'quota_ext.api_keys.key_hash holds the secret of api_key_rotate'],
              'sanity: the scan finds a planted key in jsonb and as bytes in bytea');
ROLLBACK TO plant;
SELECT cmp_ok((SELECT count(*) FROM quota_ext.audit_log WHERE tenant_id IN (:ta, :tb)), '>=', 7::bigint,
              'audit_log (scanned above) has the rows of these changes');

-- what is stored instead: the visible prefix and the SHA-256 of the whole key
SELECT is((SELECT count(*) FROM made m JOIN quota_ext.api_keys k
            ON k.key_prefix = substring(m.api_key FROM '^qxk_[0-9]+_[0-9]+')),
          4::bigint, 'each key''s row is found by its visible prefix qxk_<tenant>_<key>');
SELECT is((SELECT count(*) FROM made m JOIN quota_ext.api_keys k
            ON k.key_prefix = substring(m.api_key FROM '^qxk_[0-9]+_[0-9]+')
           WHERE k.key_hash = sha256(convert_to(m.api_key, 'UTF8'))),
          4::bigint, 'key_hash is the SHA-256 of the whole key');
SELECT is((SELECT count(*) FROM made m JOIN quota_ext.api_keys k
            ON k.key_prefix = substring(m.api_key FROM '^qxk_[0-9]+_[0-9]+')
           WHERE k.tenant_id::text = split_part(m.api_key, '_', 2)
             AND k.key_id::text = split_part(m.api_key, '_', 3)),
          4::bigint, 'the ids in the key are the row''s (tenant_id, key_id)');
SELECT col_type_is('quota_ext', 'api_keys', 'key_hash', 'bytea', 'key_hash is bytea');
SELECT is((SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a
            WHERE a.attrelid = 'quota_ext.api_keys'::regclass AND a.attnum > 0 AND NOT a.attisdropped
              AND a.atttypid IN ('text'::regtype, 'bytea'::regtype, 'jsonb'::regtype, 'varchar'::regtype)),
          ARRAY['name', 'key_prefix', 'key_hash'],
          'api_keys has no other text, bytea or jsonb column a key could hide in');

-- the secret is shown once: nothing returns it again
SELECT is((SELECT array_agg(DISTINCT p.proname::text ORDER BY p.proname::text)
             FROM pg_proc p,
                  unnest(p.proargnames, p.proargmodes) AS a(name, mode)
            WHERE p.pronamespace = 'quota_ext'::regnamespace
              AND a.mode IN ('o', 'b', 't') AND a.name = 'api_key'),
          ARRAY['_api_key_mint', '_key_insert', 'api_key_create', 'api_key_rotate', 'user_create'],
          'only the functions that make a key return one');
SELECT ok(NOT has_column_privilege('quota_ext_app', 'quota_ext.api_keys', 'key_hash', 'SELECT'),
          'quota_ext_app cannot read key_hash');
SELECT ok(NOT has_column_privilege('quota_ext_admin', 'quota_ext.api_keys', 'key_hash', 'SELECT'),
          'quota_ext_admin cannot read key_hash');

-- minting is random: 200 keys for one id pair (g - g makes the call per row), no repeat, no shared secret
SELECT is((SELECT count(DISTINCT m.api_key) FROM generate_series(1, 200) g,
           LATERAL quota_ext._api_key_mint(:ta, 424242 + g - g) m),
          200::bigint, '_api_key_mint never repeats a key');
SELECT is((SELECT count(DISTINCT pg_temp.qx_secret(m.api_key)) FROM generate_series(1, 200) g,
           LATERAL quota_ext._api_key_mint(:ta, 424242 + g - g) m
           WHERE m.key_hash = sha256(convert_to(m.api_key, 'UTF8'))),
          200::bigint, '_api_key_mint returns the SHA-256 of the key it made');

SELECT * FROM finish();
ROLLBACK;
