-- Which model a name means for a tenant (doc/reference.md, "Policies"): its
-- own model of that name, else the global one, else one shared with it.
-- An attacker's review found the order was own, shared, global: a tenant B
-- that registered a model under a global model's name and shared it with A
-- (no consent from A needed) took A's calls to that name, and A's billing
-- with them (B's price, B's payout, B's view of A's usage).  Every test
-- marked "(failed before)" failed on main before the fix.
BEGIN;
\ir metering_helpers.psql
SELECT plan(14);

\o /dev/null
SELECT quota_ext.tenant_create('mr-victim', 'enterprise') AS ta \gset
SELECT quota_ext.tenant_create('mr-squatter', 'enterprise') AS tb \gset
SELECT api_key AS ka FROM quota_ext.user_create(:ta, 'a@mr.example', 'admin') \gset
SELECT quota_ext.model_register('mr-gpt') AS mg \gset
SELECT quota_ext.policy_set(:ta, 'mr-gpt', true);
SELECT quota_ext.price_set('mr-gpt', 'USD', unit_price => 0.5);
-- B registers the same name and shares it with A
SELECT quota_ext.model_register('mr-gpt', owner_tenant_id => :tb) AS mb \gset
SELECT quota_ext.model_share(:tb, 'mr-gpt', :ta);
SELECT quota_ext.price_set('mr-gpt', 'USD', unit_price => 99, tenant_id => :tb);
-- a name only B has, shared with A: resolves to B's
SELECT quota_ext.model_register('mr-only-b', owner_tenant_id => :tb) AS mob \gset
SELECT quota_ext.model_share(:tb, 'mr-only-b', :ta);
-- A's own model of a global name wins over the global one
SELECT quota_ext.model_register('mr-own') AS mog \gset
SELECT quota_ext.model_register('mr-own', owner_tenant_id => :ta) AS moa \gset
\o

SELECT is(quota_ext._model_resolve(:ta, 'mr-gpt'), :mg::bigint,
	'a global name is not taken by another tenant''s shared model (failed before)');
SELECT is(quota_ext._model_resolve(:ta, 'mr-only-b'), :mob::bigint, 'a name only a share gives resolves to the share');
SELECT is(quota_ext._model_resolve(:ta, 'mr-own'), :moa::bigint, 'the tenant''s own model comes first');
SELECT is(quota_ext._model_resolve(:tb, 'mr-gpt'), :mb::bigint, 'the owner still means its own');

-- the hot path resolves the same way (src/policy.c's statement)
SELECT usage_id AS inv_usage FROM quota_ext.invoke(:'ka', 'mr-gpt') \gset
SELECT results_eq(format($$SELECT model_id, cost FROM quota_ext.usage WHERE tenant_id = %s AND usage_id = %s$$, :ta, :inv_usage),
	format($$VALUES (%s::bigint, 0.5::numeric)$$, :mg),
	'invoke charges the global model at its list price, not the squatter''s (failed before)');
\o /dev/null
SELECT quota_ext.clear_tenant();
\o
SELECT is((SELECT count(*) FROM quota_ext.model_usage_by_consumer(:tb, now() - interval '1 day', now() + interval '1 day')),
	0::bigint, 'the squatter sees none of A''s usage (failed before)');
SELECT ok(quota_ext.policy_check(:ta, 'mr-gpt'), 'policy_check: A''s policy on the global name');
SELECT is((SELECT d.cost FROM quota_ext.quota_check(:ta, 'mr-gpt') d), 0.5::numeric, 'quota_check prices the global model');

-- Two tenants' public models of one name (an attacker's review: the first
-- registered won silently): the second owner is refused when it makes its
-- model public (23505), and the name keeps resolving to the first.
\o /dev/null
SELECT quota_ext.tenant_create('mr-pub-first') AS tp1 \gset
SELECT quota_ext.tenant_create('mr-pub-second') AS tp2 \gset
SELECT quota_ext.model_register('mr-pub', owner_tenant_id => :tp1) AS mp1 \gset
SELECT quota_ext.model_register('mr-pub', owner_tenant_id => :tp2) AS mp2 \gset
SELECT quota_ext.model_visibility_set(:tp1, 'mr-pub', 'public');
\o
SELECT pg_temp.mx_snap();
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.model_visibility_set(%s, 'mr-pub', 'public')$$, :tp2),
	'23505', 'another tenant''s model named "mr-pub" is public',
	'a second public model of a name another tenant''s public model has: 23505 (failed before)');
SELECT is(quota_ext.model_visibility_set(:tp2, 'mr-pub', 'marketplace'), 'tenant',
	'the second owner may still list it as marketplace');
SELECT is((quota_ext._model_resolution(:ta, 'mr-pub')).model_id, :mp1::bigint,
	'a third tenant''s name resolves to the one public model');
SELECT is((quota_ext._model_resolution(:tp2, 'mr-pub')).model_id, :mp2::bigint,
	'the second owner still means its own');
\o /dev/null
SELECT quota_ext.model_visibility_set(:tp1, 'mr-pub', 'private');
\o
SELECT is(quota_ext.model_visibility_set(:tp2, 'mr-pub', 'public'), 'marketplace',
	'once the first is no longer public, the name is free');

SELECT * FROM finish();
ROLLBACK;
