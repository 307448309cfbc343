-- Admin functions: tenant_create/update/suspend/activate/close, user_create,
-- user_update, model_register: contracts and bad inputs.
-- Issue 2: "bad inputs (NULL, empty, huge, injection strings) give
-- documented SQLSTATEs"; unknown tenant gives the same text whether it does
-- not exist or is hidden by another tenant's context.
-- Checklist: B1 (NULL in each argument: 22004), B3 (unknown ids, no
-- existence oracle), B5 (injection through names stored verbatim).
-- Every error is followed by a check that nothing changed.
BEGIN;
\ir helpers.psql
SELECT plan(213);

-- ---------------------------------------------------------------------------
-- tenant_create
-- ---------------------------------------------------------------------------
SELECT has_function('quota_ext', 'tenant_create', ARRAY['text', 'text', 'text', 'jsonb'], 'tenant_create exists');
SELECT function_returns('quota_ext', 'tenant_create', ARRAY['text', 'text', 'text', 'jsonb'], 'bigint',
                        'tenant_create returns bigint');
SELECT quota_ext.tenant_create('tap-admin-a') AS ta \gset
SELECT quota_ext.tenant_create('tap-admin-b', 'enterprise', 'America/New_York', '{"region": "us"}') AS tb \gset
SELECT cmp_ok(:ta::bigint, '>', 0::bigint, 'tenant_create returns a positive id');
SELECT results_eq(format('SELECT name, tier, status, timezone, settings, features FROM quota_ext.tenants WHERE tenant_id = %s', :ta),
                  $$VALUES ('tap-admin-a'::text, 'free'::text, 'active'::text, 'UTC'::text, '{}'::jsonb, '{}'::jsonb)$$,
                  'defaults: tier free, status active, UTC, empty settings and features');
SELECT results_eq(format('SELECT tier, timezone, settings FROM quota_ext.tenants WHERE tenant_id = %s', :tb),
                  $$VALUES ('enterprise'::text, 'America/New_York'::text, '{"region": "us"}'::jsonb)$$,
                  'tier, time zone and settings are stored');
SELECT is((SELECT created_at FROM quota_ext.tenants WHERE tenant_id = :ta), now(), 'created_at is set');

-- names are data: stored and returned verbatim, never executed
CREATE TEMP TABLE odd (ord serial, name text, id bigint);
INSERT INTO odd (name) VALUES
	('x''); DROP TABLE quota_ext.tenants; --'), ('"quoted"'), ('$$dollar$$'), ('back\slash'),
	('%s %d %n'), ('Ａｃｍｅ (full-width)'), ('acme'), ('ACME'), (repeat('n', 200)), ('名前');
UPDATE odd SET id = quota_ext.tenant_create(name);
SELECT is(t.name, o.name, 'name stored verbatim: ' || left(o.name, 30))
  FROM odd o LEFT JOIN quota_ext.tenants t ON t.tenant_id = o.id
 ORDER BY o.ord;
SELECT has_table('quota_ext', 'tenants', 'quota_ext.tenants is still there');

SELECT pg_temp.qx_snap();
SELECT pg_temp.throws_clean('SELECT quota_ext.tenant_create(NULL)', '22004', 'argument "name" must not be null',
	'tenant_create: NULL name');
SELECT pg_temp.throws_clean('SELECT quota_ext.tenant_create(''n1'', NULL)', '22004', 'argument "tier" must not be null',
	'tenant_create: NULL tier');
SELECT pg_temp.throws_clean('SELECT quota_ext.tenant_create(''n1'', ''free'', NULL)', '22004', 'argument "timezone" must not be null',
	'tenant_create: NULL timezone');
SELECT pg_temp.throws_clean('SELECT quota_ext.tenant_create(''n1'', ''free'', ''UTC'', NULL)', '22004', 'argument "settings" must not be null',
	'tenant_create: NULL settings');
SELECT pg_temp.throws_clean(format('SELECT quota_ext.tenant_create(%L)', n), '22023', NULL, 'tenant_create: name ' || d)
  FROM (VALUES ('', 'empty'), (' ', 'a space'), (' lead', 'with a leading space'), ('trail ', 'with a trailing space'),
               (E'a\nb', 'with a newline'), (E'a\tb', 'with a tab'), (E'a\x01b', 'with \x01'), (E'a\x7fb', 'with DEL'),
               (repeat('n', 201), 'of 201 characters'), (repeat('n', 10240), 'of 10 kB')) AS v(n, d);
SELECT pg_temp.throws_clean('SELECT quota_ext.tenant_create(''tap-admin-a'')', '23505', 'tenant "tap-admin-a" already exists',
	'tenant_create: duplicate name');
SELECT pg_temp.throws_clean('SELECT quota_ext.tenant_create(''n1'', ''gold'')', '42704', 'tier "gold" does not exist',
	'tenant_create: unknown tier');
SELECT pg_temp.throws_clean('SELECT quota_ext.tenant_create(''n1'', ''Free'')', '42704', 'tier "Free" does not exist',
	'tenant_create: tier names are case-sensitive');
SELECT pg_temp.throws_clean(format('SELECT quota_ext.tenant_create(''n1'', %L)', repeat('t', 10240)), '42704',
	format('tier "%s..." does not exist', repeat('t', 64)), 'tenant_create: huge tier name (message cut at 64)');
SELECT pg_temp.throws_clean(format('SELECT quota_ext.tenant_create(''n1'', ''free'', %L)', z), '22023', NULL,
	'tenant_create: time zone ' || d)
  FROM (VALUES ('Mars/Olympus_Mons', 'Mars/Olympus_Mons'), ('', 'empty'), ('utc', 'utc (lower case)'),
               ('Europe/Berlin ', 'with a trailing space'), ('+05:00', '+05:00 (offset, not a name)'),
               ('../../etc/passwd', 'a path'), (repeat('Z', 10240), 'of 10 kB')) AS v(z, d);
SELECT pg_temp.throws_clean('SELECT quota_ext.tenant_create(''n1'', ''free'', ''UTC'', ''[]'')', '22023',
	'settings must be a JSON object', 'tenant_create: settings an array');
SELECT pg_temp.throws_clean('SELECT quota_ext.tenant_create(''n1'', ''free'', ''UTC'', ''"x"'')', '22023',
	'settings must be a JSON object', 'tenant_create: settings a string');
SELECT lives_ok('SELECT quota_ext.tenant_create(''tz'', ''free'', ''Asia/Kathmandu'')', 'an IANA zone with a 45-minute offset is accepted');

-- inside a tenant context an admin cannot create tenants
SELECT quota_ext.set_tenant(:ta);
SELECT pg_temp.qx_snap();
SELECT pg_temp.throws_clean('SELECT quota_ext.tenant_create(''n2'')', '42501', 'cannot create a tenant inside a tenant context',
	'tenant_create inside a tenant context');
SELECT quota_ext.clear_tenant();

-- ---------------------------------------------------------------------------
-- tenant_update
-- ---------------------------------------------------------------------------
SELECT quota_ext.tenant_update(:ta, name => 'tap-admin-a2', tier => 'pro', timezone => 'Europe/Berlin',
                               settings => '{"a": 1}', features => '{"beta": true}');
SELECT results_eq(format('SELECT name, tier, timezone, settings, features, updated_at FROM quota_ext.tenants WHERE tenant_id = %s', :ta),
                  $$VALUES ('tap-admin-a2'::text, 'pro'::text, 'Europe/Berlin'::text, '{"a": 1}'::jsonb, '{"beta": true}'::jsonb, now())$$,
                  'tenant_update changes every field it is given');
SELECT quota_ext.tenant_update(:ta);
SELECT results_eq(format('SELECT name, tier, timezone, settings, features FROM quota_ext.tenants WHERE tenant_id = %s', :ta),
                  $$VALUES ('tap-admin-a2'::text, 'pro'::text, 'Europe/Berlin'::text, '{"a": 1}'::jsonb, '{"beta": true}'::jsonb)$$,
                  'NULL arguments keep the values');
SELECT pg_temp.qx_snap();
SELECT pg_temp.throws_clean('SELECT quota_ext.tenant_update(NULL)', '22004', 'argument "tenant_id" must not be null',
	'tenant_update: NULL tenant_id');
SELECT pg_temp.throws_clean('SELECT quota_ext.tenant_update(999999999, name => ''x'')', '42704', 'tenant 999999999 does not exist',
	'tenant_update: unknown tenant');
SELECT pg_temp.throws_clean(format('SELECT quota_ext.tenant_update(%s, name => %L)', :ta, ''), '22023', NULL,
	'tenant_update: empty name');
SELECT pg_temp.throws_clean(format('SELECT quota_ext.tenant_update(%s, name => %L)', :ta, E'x\ny'), '22023', NULL,
	'tenant_update: control character in the name');
SELECT pg_temp.throws_clean(format('SELECT quota_ext.tenant_update(%s, name => %L)', :ta, repeat('n', 201)), '22023', NULL,
	'tenant_update: name of 201 characters');
SELECT pg_temp.throws_clean(format('SELECT quota_ext.tenant_update(%s, name => ''tap-admin-b'')', :ta), '23505',
	'tenant "tap-admin-b" already exists', 'tenant_update: another tenant''s name');
SELECT pg_temp.throws_clean(format('SELECT quota_ext.tenant_update(%s, tier => ''gold'')', :ta), '42704',
	'tier "gold" does not exist', 'tenant_update: unknown tier');
SELECT pg_temp.throws_clean(format('SELECT quota_ext.tenant_update(%s, timezone => ''Mars/Base'')', :ta), '22023', NULL,
	'tenant_update: invalid time zone');
SELECT pg_temp.throws_clean(format('SELECT quota_ext.tenant_update(%s, settings => ''[1]'')', :ta), '22023',
	'settings and features must be JSON objects', 'tenant_update: settings not an object');
SELECT pg_temp.throws_clean(format('SELECT quota_ext.tenant_update(%s, features => ''true'')', :ta), '22023',
	'settings and features must be JSON objects', 'tenant_update: features not an object');

-- the same text for a tenant hidden by another context as for no tenant
SELECT quota_ext.set_tenant(:tb);
SELECT pg_temp.qx_snap();
SELECT pg_temp.throws_clean(format('SELECT quota_ext.tenant_update(%s, name => ''stolen'')', :ta), '42704',
	format('tenant %s does not exist', :ta), 'tenant_update of tenant A in tenant B''s context: "does not exist"');
SELECT pg_temp.throws_clean(format('SELECT quota_ext.tenant_suspend(%s)', :ta), '42704',
	format('tenant %s does not exist', :ta), 'tenant_suspend of tenant A in tenant B''s context');
SELECT pg_temp.throws_clean(format('SELECT quota_ext.user_create(%s, ''eve@b.example'')', :ta), '42704',
	format('tenant %s does not exist', :ta), 'user_create for tenant A in tenant B''s context');
SELECT pg_temp.throws_clean(format('SELECT quota_ext.model_register(''private'', owner_tenant_id => %s)', :ta), '42704',
	format('tenant %s does not exist', :ta), 'model_register owned by tenant A in tenant B''s context');
SELECT pg_temp.throws_clean('SELECT quota_ext.tenant_update(999999999, name => ''x'')', '42704',
	'tenant 999999999 does not exist', 'tenant_update of a tenant that does not exist, in a context: same text');
SELECT lives_ok(format('SELECT quota_ext.tenant_update(%s, settings => ''{"b": 2}'')', :tb),
                'tenant_update of the context''s own tenant works');
SELECT quota_ext.clear_tenant();

-- ---------------------------------------------------------------------------
-- tenant_suspend / tenant_activate / tenant_close
-- ---------------------------------------------------------------------------
SELECT quota_ext.tenant_create('tap-admin-s') AS ts \gset
SELECT quota_ext.tenant_suspend(:ts);
SELECT is((SELECT status FROM quota_ext.tenants WHERE tenant_id = :ts), 'suspended', 'tenant_suspend');
SELECT pg_temp.qx_snap();
SELECT lives_ok(format('SELECT quota_ext.tenant_suspend(%s)', :ts), 'suspending twice is not an error');
SELECT pg_temp.qx_unchanged('suspending twice');
SELECT quota_ext.tenant_activate(:ts);
SELECT is((SELECT status FROM quota_ext.tenants WHERE tenant_id = :ts), 'active', 'tenant_activate');
SELECT quota_ext.tenant_close(:ts);
SELECT is((SELECT status FROM quota_ext.tenants WHERE tenant_id = :ts), 'closed', 'tenant_close');
SELECT pg_temp.qx_snap();
SELECT pg_temp.throws_clean(format('SELECT quota_ext.%s(%s)', f, :ts), '55000', format('tenant %s is closed', :ts),
	f || ' of a closed tenant (closing is final)')
  FROM unnest(ARRAY['tenant_activate', 'tenant_suspend', 'tenant_close']) AS f;
SELECT pg_temp.throws_clean(format('SELECT quota_ext.tenant_update(%s, name => ''reopened'')', :ts), '55000',
	format('tenant %s is closed', :ts), 'tenant_update of a closed tenant');
SELECT pg_temp.throws_clean(format('SELECT quota_ext.user_create(%s, ''late@s.example'')', :ts), '55000',
	format('tenant %s is closed', :ts), 'user_create in a closed tenant');
SELECT pg_temp.throws_clean(format('SELECT quota_ext.%s(NULL)', f), '22004', 'argument "tenant_id" must not be null',
	f || ': NULL tenant_id')
  FROM unnest(ARRAY['tenant_activate', 'tenant_suspend', 'tenant_close']) AS f;
SELECT pg_temp.throws_clean(format('SELECT quota_ext.%s(999999999)', f), '42704', 'tenant 999999999 does not exist',
	f || ': unknown tenant')
  FROM unnest(ARRAY['tenant_activate', 'tenant_suspend', 'tenant_close']) AS f;
SELECT is((SELECT name FROM quota_ext.tenants WHERE tenant_id = :ts), 'tap-admin-s', 'a closed tenant keeps its row');

-- ---------------------------------------------------------------------------
-- user_create / user_update
-- ---------------------------------------------------------------------------
SELECT has_function('quota_ext', 'user_create', ARRAY['bigint', 'text', 'text'], 'user_create(tenant_id, email, role) exists');
SELECT user_id AS u1, api_key AS u1key FROM quota_ext.user_create(:ta, 'Alice@A.Example', 'admin') \gset
SELECT user_id AS u2 FROM quota_ext.user_create(:ta, 'bob@a.example') \gset
SELECT user_id AS u3 FROM quota_ext.user_create(:ta, 'carol@a.example', 'billing-ops') \gset
SELECT results_eq(format('SELECT user_id, email, role, status FROM quota_ext.users WHERE tenant_id = %s ORDER BY user_id', :ta),
                  format($$VALUES (%s::bigint, 'alice@a.example'::text, 'admin'::text, 'active'::text),
                                  (%s, 'bob@a.example', 'member', 'active'),
                                  (%s, 'carol@a.example', 'billing-ops', 'active')$$, :u1, :u2, :u3),
                  'users: email lower-cased, default role member, custom role names, active');
SELECT results_eq(format('SELECT tenant_id, user_id, role FROM quota_ext.authenticate(%L)', :'u1key'),
                  format($$VALUES (%s::bigint, %s::bigint, 'admin'::text)$$, :ta, :u1),
                  'user_create returns the user''s first API key');
SELECT quota_ext.clear_tenant();
SELECT lives_ok(format('SELECT quota_ext.user_create(%s, ''alice@a.example'')', :tb),
                'the same email in another tenant is another user');

SELECT pg_temp.qx_snap();
SELECT pg_temp.throws_clean('SELECT quota_ext.user_create(NULL, ''x@a.example'')', '22004', 'argument "tenant_id" must not be null',
	'user_create: NULL tenant_id');
SELECT pg_temp.throws_clean(format('SELECT quota_ext.user_create(%s, NULL)', :ta), '22004', 'argument "email" must not be null',
	'user_create: NULL email');
SELECT pg_temp.throws_clean(format('SELECT quota_ext.user_create(%s, ''x@a.example'', NULL)', :ta), '22004',
	'argument "role" must not be null', 'user_create: NULL role');
SELECT pg_temp.throws_clean(format('SELECT quota_ext.user_create(%s, %L)', :ta, e), '22023', NULL, 'user_create: email ' || d)
  FROM (VALUES ('', 'empty'), ('no-at-sign', 'without @'), ('a@b@c', 'with two @'), ('a @b.example', 'with a space'),
               (E'a\n@b.example', 'with a newline'), (repeat('a', 320) || '@b.example', 'of 330 characters')) AS v(e, d);
SELECT pg_temp.throws_clean(format('SELECT quota_ext.user_create(%s, ''x@a.example'', %L)', :ta, r), '22023', NULL,
	'user_create: role ' || d)
  FROM (VALUES ('', 'empty'), ('Admin', 'in upper case'), ('1st', 'starting with a digit'), ('a b', 'with a space'),
               ('x''; DROP ROLE quota_ext_app; --', 'an injection'), (repeat('r', 64), 'of 64 characters')) AS v(r, d);
SELECT pg_temp.throws_clean(format('SELECT quota_ext.user_create(%s, ''ALICE@a.example'')', :ta), '23505',
	'user "alice@a.example" already exists in tenant ' || :ta, 'user_create: duplicate email (case-insensitive)');
SELECT pg_temp.throws_clean('SELECT quota_ext.user_create(999999999, ''x@a.example'')', '42704', 'tenant 999999999 does not exist',
	'user_create: unknown tenant');

SELECT quota_ext.user_update(:ta, :u2, role => 'viewer');
SELECT quota_ext.user_update(:ta, :u2, status => 'disabled');
SELECT results_eq(format('SELECT role, status FROM quota_ext.users WHERE tenant_id = %s AND user_id = %s', :ta, :u2),
                  $$VALUES ('viewer'::text, 'disabled'::text)$$, 'user_update changes role and status, NULL keeps');
SELECT user_id AS ub FROM quota_ext.users WHERE tenant_id = :tb LIMIT 1 \gset
SELECT pg_temp.qx_snap();
SELECT pg_temp.throws_clean(format('SELECT quota_ext.user_update(NULL, %s)', :u2), '22004', 'argument "tenant_id" must not be null',
	'user_update: NULL tenant_id');
SELECT pg_temp.throws_clean(format('SELECT quota_ext.user_update(%s, NULL)', :ta), '22004', 'argument "user_id" must not be null',
	'user_update: NULL user_id');
SELECT pg_temp.throws_clean(format('SELECT quota_ext.user_update(%s, %s, status => ''deleted'')', :ta, :u2), '22023',
	'invalid user status "deleted"', 'user_update: unknown status');
SELECT pg_temp.throws_clean(format('SELECT quota_ext.user_update(%s, %s, role => ''Boss'')', :ta, :u2), '22023',
	'invalid role name "Boss"', 'user_update: invalid role');
SELECT pg_temp.throws_clean(format('SELECT quota_ext.user_update(%s, 999999999, role => ''admin'')', :ta), '42704',
	'user 999999999 does not exist', 'user_update: unknown user');
SELECT pg_temp.throws_clean(format('SELECT quota_ext.user_update(%s, %s, role => ''admin'')', :ta, :ub), '42704',
	format('user %s does not exist', :ub), 'user_update: user of another tenant (same text as unknown)');

-- ---------------------------------------------------------------------------
-- model_register
-- ---------------------------------------------------------------------------
SELECT has_function('quota_ext', 'model_register', ARRAY['text', 'text', 'bigint', 'text', 'jsonb'], 'model_register exists');
SELECT quota_ext.model_register('tap-gpt-4o', 'openai', description => 'chat', metadata => '{"ctx": 128000}') AS m1 \gset
SELECT quota_ext.model_register('tap-embedding-1') AS m2 \gset
SELECT quota_ext.model_register('tap-gpt-4o', owner_tenant_id => :ta) AS m3 \gset
SELECT quota_ext.model_register('tap-gpt-4o', owner_tenant_id => :tb) AS m4 \gset
SELECT results_eq(format('SELECT model_id, name, owner_tenant_id, provider, description, metadata, status FROM quota_ext.models
                           WHERE model_id IN (%s, %s, %s, %s) ORDER BY model_id', :m1, :m2, :m3, :m4),
                  format($$VALUES (%s::bigint, 'tap-gpt-4o'::text, NULL::bigint, 'openai'::text, 'chat'::text, '{"ctx": 128000}'::jsonb, 'active'::text),
                                  (%s, 'tap-embedding-1', NULL, NULL, NULL, '{}', 'active'),
                                  (%s, 'tap-gpt-4o', %s, NULL, NULL, '{}', 'active'),
                                  (%s, 'tap-gpt-4o', %s, NULL, NULL, '{}', 'active')$$, :m1, :m2, :m3, :ta, :m4, :tb),
                  'global and tenant-owned models; one name may be global and owned by several tenants');
SELECT pg_temp.qx_snap();
SELECT pg_temp.throws_clean('SELECT quota_ext.model_register(NULL)', '22004', 'argument "name" must not be null',
	'model_register: NULL name');
SELECT pg_temp.throws_clean('SELECT quota_ext.model_register(''m'', metadata => NULL)', '22004', 'argument "metadata" must not be null',
	'model_register: NULL metadata');
SELECT pg_temp.throws_clean(format('SELECT quota_ext.model_register(%L)', n), '22023', NULL, 'model_register: name ' || d)
  FROM (VALUES ('', 'empty'), (E'gpt\n4', 'with a newline'), (' gpt', 'with a leading space'),
               (repeat('m', 201), 'of 201 characters'), (repeat('m', 10240), 'of 10 kB')) AS v(n, d);
SELECT pg_temp.throws_clean('SELECT quota_ext.model_register(''m'', '''')', '22023', NULL, 'model_register: empty provider');
SELECT pg_temp.throws_clean('SELECT quota_ext.model_register(''tap-gpt-4o'')', '23505', 'model "tap-gpt-4o" already exists',
	'model_register: duplicate global model');
SELECT pg_temp.throws_clean(format('SELECT quota_ext.model_register(''tap-gpt-4o'', owner_tenant_id => %s)', :ta), '23505',
	'model "tap-gpt-4o" already exists', 'model_register: duplicate model of one tenant');
SELECT pg_temp.throws_clean('SELECT quota_ext.model_register(''m'', owner_tenant_id => 999999999)', '42704',
	'tenant 999999999 does not exist', 'model_register: unknown owner tenant');
SELECT quota_ext.set_tenant(:ta);
SELECT pg_temp.qx_snap();
SELECT pg_temp.throws_clean('SELECT quota_ext.model_register(''global-from-tenant'')', '42501',
	'cannot register a global model inside a tenant context', 'model_register: a global model inside a tenant context');
SELECT lives_ok(format('SELECT quota_ext.model_register(''own-model'', owner_tenant_id => %s)', :ta),
                'model_register of the context''s own model');
SELECT quota_ext.clear_tenant();

SELECT * FROM finish();
ROLLBACK;
