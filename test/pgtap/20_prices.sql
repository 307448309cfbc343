-- The price book: price_set, price_clear, price_lookup; the cost, tokens,
-- price version and metadata on usage rows written by the hot path.
-- Issue 5: "per-model price book with currency and effective dates; the
-- price in force is stored on each usage row (by reference) so history is
-- never repriced".
BEGIN;
\ir metering_helpers.psql
SELECT plan(59);

\o /dev/null
SELECT quota_ext.tenant_create('px-a') AS ta \gset
SELECT quota_ext.tenant_create('px-b') AS tb \gset
SELECT quota_ext.model_register('px-chat') AS m1 \gset
SELECT quota_ext.model_register('px-free') AS m2 \gset
SELECT quota_ext.model_register('px-own', owner_tenant_id => :ta) AS m3 \gset
SELECT quota_ext.policy_set(:ta, 'px-*', true);
SELECT quota_ext.policy_set(:tb, 'px-*', true);
\o

-- ---------------------------------------------------------------------------
-- price_set / price_clear contract
-- ---------------------------------------------------------------------------
SELECT has_function('quota_ext', 'price_set',
	ARRAY['text', 'text', 'numeric', 'numeric', 'numeric', 'timestamp with time zone', 'bigint', 'numeric'],
	'price_set(model, currency, unit_price, input_per_1k, output_per_1k, effective_from, tenant_id, overage_unit_price)');
SELECT quota_ext.price_set('px-chat', 'usd', unit_price => 0.002, input_per_1k => 0.5, output_per_1k => 1.5) AS p1 \gset
SELECT results_eq(format('SELECT model_id, tenant_id, currency::text, unit_price, input_per_1k, output_per_1k, effective_from = now() FROM quota_ext.prices WHERE price_id = %s', :p1),
	format('VALUES (%s::bigint, NULL::bigint, %L, 0.002, 0.5, 1.5, true)', :m1, 'USD'),
	'a list price: currency upper-cased, effective now by default');
SELECT results_eq(format($$SELECT action, object_id, tenant_id FROM quota_ext.audit_log WHERE object_type = 'price' ORDER BY audit_id$$),
	format($$VALUES ('price_set'::text, %L::text, 0::bigint)$$, :p1), 'price_set is audited (global: tenant 0)');
SELECT quota_ext.price_set('px-chat', 'EUR', unit_price => 0.001, tenant_id => :tb) AS pb \gset
SELECT is((SELECT tenant_id FROM quota_ext.audit_log WHERE object_type = 'price' AND object_id = :'pb'), :tb::bigint,
	'a tenant''s own price is audited in that tenant');
SELECT quota_ext.price_set('px-chat', 'USD', unit_price => 0.004, effective_from => now() + interval '1 day') AS p2 \gset

SELECT pg_temp.mx_snap();
SELECT * FROM pg_temp.mx_throws($$SELECT quota_ext.price_set(NULL, 'USD', 1)$$, '22004', 'argument "model" must not be null', 'price_set: NULL model');
SELECT * FROM pg_temp.mx_throws($$SELECT quota_ext.price_set('px-chat', NULL, 1)$$, '22004', 'argument "currency" must not be null', 'price_set: NULL currency');
SELECT * FROM pg_temp.mx_throws($$SELECT quota_ext.price_set('px-chat', 'US', 1)$$, '22023', 'invalid currency "US"', 'price_set: bad currency');
SELECT * FROM pg_temp.mx_throws($$SELECT quota_ext.price_set('px-chat', 'USD')$$, '22004', 'a price needs unit_price, input_per_1k or output_per_1k', 'price_set: no price');
SELECT * FROM pg_temp.mx_throws($$SELECT quota_ext.price_set('px-chat', 'USD', -1)$$, '22023', 'unit_price must not be negative', 'price_set: negative price');
SELECT * FROM pg_temp.mx_throws($$SELECT quota_ext.price_set('px-chat', 'USD', 1, effective_from => now() - interval '1 second')$$, '22023', 'effective_from must not be in the past', 'price_set: back-dated');
SELECT * FROM pg_temp.mx_throws($$SELECT quota_ext.price_set('px-nope', 'USD', 1)$$, '42704', 'model "px-nope" does not exist', 'price_set: unknown model');
SELECT * FROM pg_temp.mx_throws($$SELECT quota_ext.price_set('px-own', 'USD', 1)$$, '42704', 'model "px-own" does not exist', 'price_set: a tenant''s model has no list price');
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.price_set('px-chat', 'USD', 1, effective_from => now() + interval '1 day')$$), '23505', NULL, 'price_set: two versions at one instant');
SELECT * FROM pg_temp.mx_throws($$SELECT quota_ext.price_set('px-chat', 'USD', 1, tenant_id => 999999)$$, '42704', 'tenant 999999 does not exist', 'price_set: unknown tenant');

-- ---------------------------------------------------------------------------
-- price_lookup: the version in force, override first, clear
-- ---------------------------------------------------------------------------
SELECT is((SELECT price_id FROM quota_ext.price_lookup(:ta, 'px-chat')), :p1::bigint, 'list price in force now');
SELECT is((SELECT price_id FROM quota_ext.price_lookup(:ta, 'px-chat', now() + interval '2 days')), :p2::bigint, 'the next version from its effective_from');
SELECT is((SELECT price_id FROM quota_ext.price_lookup(:tb, 'px-chat', now() + interval '2 days')), :pb::bigint, 'a tenant''s own price wins over a newer list price');
SELECT is((SELECT count(*) FROM quota_ext.price_lookup(:ta, 'px-chat', now() - interval '1 day'))::int, 0, 'before any version: unpriced');
SELECT is((SELECT count(*) FROM quota_ext.price_lookup(:ta, 'px-free'))::int, 0, 'a model without a price: unpriced');
SELECT quota_ext.price_clear('px-chat', now() + interval '3 days', tenant_id => :tb) AS pclr \gset
SELECT is((SELECT price_id FROM quota_ext.price_lookup(:tb, 'px-chat', now() + interval '3 days')), :p2::bigint, 'price_clear of an override: the list price applies again');
SELECT is((SELECT price_id FROM quota_ext.price_lookup(:tb, 'px-chat')), :pb::bigint, '... but not before its instant');
SELECT is((SELECT action FROM quota_ext.audit_log WHERE object_type = 'price' AND object_id = :'pclr'), 'price_clear', 'price_clear is audited');
SELECT pg_temp.mx_snap();
SELECT * FROM pg_temp.mx_throws(format('SELECT quota_ext.price_lookup(%s, %L)', :ta, 'px-nope'), '42704', 'model "px-nope" does not exist', 'price_lookup: unknown model');
SELECT * FROM pg_temp.mx_throws(format('SELECT quota_ext.price_lookup(NULL, %L)', 'px-chat'), '22004', 'argument "tenant_id" must not be null', 'price_lookup: NULL tenant');

-- ---------------------------------------------------------------------------
-- the hot path: cost, price_id, tokens, metadata on the usage row
-- ---------------------------------------------------------------------------
-- 10 units * 0.002 + 1000 in * 0.5/1k + 200 out * 1.5/1k = 0.02 + 0.5 + 0.3
SELECT * INTO TEMP d1 FROM quota_ext.quota_consume(:ta, 'px-chat', 10, input_tokens => 1000, output_tokens => 200,
                                                   metadata => '{"request": "r-1"}');
SELECT results_eq('SELECT allowed, cost, currency FROM d1', $$VALUES (true, 0.820000::numeric, 'USD'::text)$$,
	'the decision carries the call''s cost and currency');
SELECT results_eq('SELECT u.units, u.input_tokens, u.output_tokens, u.price_id, u.cost, u.metadata FROM quota_ext.usage u JOIN d1 USING (usage_id)',
	format($$VALUES (10::bigint, 1000::bigint, 200::bigint, %s::bigint, 0.820000::numeric, '{"request": "r-1"}'::jsonb)$$, :p1),
	'the usage row references the price version and carries the cost, tokens and metadata');
SELECT * INTO TEMP d2 FROM quota_ext.quota_consume(:tb, 'px-chat', 3);
SELECT results_eq('SELECT cost, currency FROM d2', $$VALUES (0.003000::numeric, 'EUR'::text)$$, 'a tenant''s own price in its currency');
SELECT * INTO TEMP d3 FROM quota_ext.quota_consume(:ta, 'px-free', 3);
SELECT results_eq('SELECT allowed, cost, currency FROM d3', $$VALUES (true, NULL::numeric, NULL::text)$$, 'unpriced: no cost in the decision');
SELECT results_eq('SELECT u.price_id, u.cost FROM quota_ext.usage u JOIN d3 USING (usage_id)', $$VALUES (NULL::bigint, 0::numeric)$$,
	'unpriced: cost 0 and no price on the row');
-- rounding: 1 input token at 0.5/1k = 0.0005 exactly; 1 at 0.0000005/unit rounds to micro-units
SELECT quota_ext.price_set('px-free', 'USD', unit_price => 0.0000005, tenant_id => :ta);
SELECT is((SELECT cost FROM quota_ext.quota_consume(:ta, 'px-free', 1)), 0.000001::numeric, 'half a micro-unit rounds away from zero');
SELECT is((SELECT cost FROM quota_ext.quota_consume(:ta, 'px-free', 3)), 0.000002::numeric, '1.5 micro-units round to 2');
SELECT is((SELECT cost FROM quota_ext.quota_consume(:ta, 'px-chat', 1, input_tokens => 1)), 0.002500::numeric, 'one token at a price per 1000');
-- a later price version does not reprice history
SELECT is((SELECT cost FROM quota_ext.usage WHERE usage_id = (SELECT usage_id FROM d1)), 0.820000::numeric, 'history keeps its cost');

-- invoke and reserve take tokens too
\o /dev/null
SELECT api_key AS ka FROM quota_ext.user_create(:ta, 'px@a.example') \gset
\o
SELECT is((SELECT cost FROM quota_ext.invoke(:'ka', 'px-chat', 1, NULL, 2000, 0, '{"k": 1}')), 1.002000::numeric, 'invoke: tokens and metadata');
SELECT quota_ext.clear_tenant();
SELECT * INTO TEMP r1 FROM quota_ext.quota_reserve(:ta, 'px-chat', 100, input_tokens => 1000);
SELECT results_eq('SELECT cost FROM r1', $$VALUES (0.700000::numeric)$$, 'reserve: the estimate''s cost');
SELECT * INTO TEMP s1 FROM quota_ext.quota_settle(:ta, (SELECT reservation_id FROM r1), 50, input_tokens => 3000, output_tokens => 100);
-- actual: 50 * 0.002 + 3000 * 0.0005 + 100 * 0.0015 = 0.1 + 1.5 + 0.15
SELECT results_eq('SELECT allowed, cost FROM s1', $$VALUES (true, 1.750000::numeric)$$, 'settle: the call''s final cost at the reservation''s price');
SELECT results_eq('SELECT u.units, u.input_tokens, u.output_tokens, u.cost FROM quota_ext.usage u JOIN s1 USING (usage_id)',
	$$VALUES (-50::bigint, 2000::bigint, 100::bigint, 1.050000::numeric)$$, 'the settle row carries the differences');
SELECT * INTO TEMP f1 FROM quota_ext.quota_refund(:ta, (SELECT usage_id FROM d1));
SELECT results_eq('SELECT u.units, u.input_tokens, u.output_tokens, u.price_id, u.cost FROM quota_ext.usage u JOIN f1 USING (usage_id)',
	format($$VALUES (-10::bigint, -1000::bigint, -200::bigint, %s::bigint, -0.820000::numeric)$$, :p1),
	'a refund negates units, tokens and cost at the original price');
SELECT * INTO TEMP r2 FROM quota_ext.quota_reserve(:ta, 'px-chat', 10);
SELECT * INTO TEMP c2 FROM quota_ext.quota_cancel(:ta, (SELECT reservation_id FROM r2));
SELECT is((SELECT u.cost FROM quota_ext.usage u JOIN c2 USING (usage_id)), -0.020000::numeric, 'a release gives the estimate''s cost back');

-- argument errors change nothing
SELECT pg_temp.mx_snap();
SELECT * FROM pg_temp.mx_throws(format('SELECT quota_ext.quota_consume(%s, %L, 1, input_tokens => -1)', :ta, 'px-chat'), '22023',
	'input_tokens and output_tokens must not be negative', 'consume: negative tokens');
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.quota_consume(%s, 'px-chat', 1, metadata => '[1]')$$, :ta), '22023',
	'metadata must be a JSON object', 'consume: metadata not an object');
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.quota_consume(%s, 'px-chat', 1, metadata => jsonb_build_object('x', repeat('y', 2000)))$$, :ta), '22023',
	'metadata must be at most 1024 bytes', 'consume: metadata too big');
SELECT * FROM pg_temp.mx_throws(format('SELECT quota_ext.quota_settle(%s, %s, 1, output_tokens => -5)', :ta, (SELECT reservation_id FROM r2)), '22023',
	'input_tokens and output_tokens must not be negative', 'settle: negative tokens');

SELECT * FROM finish();
ROLLBACK;
