-- The model marketplace (issue 18; sql/install/57_marketplace.sql,
-- doc/billing.md §8): visibility of a tenant-owned model (private, tenant,
-- marketplace, public), the listing, access requests and the owner's
-- decision (audited, outbox events), the owner's list price, the platform's
-- revenue share and the owner's payout statement at billing_close
-- (consumer invoice lines on its models = payout + platform share, exact
-- to the micro-unit), and the cross-tenant reads all this adds.
BEGIN;
\ir metering_helpers.psql
SELECT plan(122);

\o /dev/null
SELECT quota_ext.tenant_create('mk-owner') AS tw \gset
SELECT quota_ext.tenant_create('mk-c1') AS tc \gset
SELECT quota_ext.tenant_create('mk-c2') AS td \gset
SELECT quota_ext.tenant_create('mk-x') AS tx \gset
UPDATE quota_ext.tenants SET created_at = '2024-12-01' WHERE tenant_id IN (:tw, :tc, :td, :tx);
SELECT quota_ext.model_register('mk-m', owner_tenant_id => :tw, description => 'fine-tuned') AS mm \gset
SELECT quota_ext.model_register('mk-p', owner_tenant_id => :tw) AS mp \gset
SELECT quota_ext.model_register('mk-priv', owner_tenant_id => :tw, metadata => '{"secret": 1}') AS mv \gset
SELECT quota_ext.model_register('mk-shared', owner_tenant_id => :tw) AS ms \gset
SELECT quota_ext.model_register('mk-x-own', owner_tenant_id => :tx) AS mxo \gset
\o

-- ---------------------------------------------------------------------------
-- visibility
-- ---------------------------------------------------------------------------
SELECT is((SELECT visibility FROM quota_ext.models WHERE model_id = :mm), 'tenant',
	'a tenant-owned model starts as "tenant" (shared with named grantees, as before)');
SELECT is(quota_ext.model_visibility_set(:tw, 'mk-m', 'marketplace'), 'tenant', 'model_visibility_set returns the previous visibility');
SELECT is(quota_ext.model_visibility_set(:tw, 'mk-p', 'public'), 'tenant', 'mk-p is public');
SELECT is(quota_ext.model_visibility_set(:tw, 'mk-priv', 'private'), 'tenant', 'mk-priv is private');
SELECT is((SELECT after->>'visibility' FROM quota_ext.audit_log WHERE tenant_id = :tw AND action = 'model_visibility_set'
             AND object_id = :'mm'), 'marketplace', 'the change is audited');
SELECT pg_temp.mx_snap();
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.model_visibility_set(%s, 'mk-m', 'everyone')$$, :tw),
	'22023', 'invalid visibility "everyone"', 'an unknown visibility: 22023');
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.model_visibility_set(%s, 'mk-x-own', 'public')$$, :tw),
	'42704', 'model "mk-x-own" does not exist', 'another tenant''s model is not the owner''s: 42704');
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.model_share(%s, 'mk-priv', %s)$$, :tw, :tc),
	'55000', 'model "mk-priv" is private', 'a private model cannot be shared: 55000');

-- ---------------------------------------------------------------------------
-- the listing and the owner's list price
-- ---------------------------------------------------------------------------
SELECT * FROM pg_temp.mx_throws($$SELECT quota_ext.price_set('mk-m', 'EUR', 0.002)$$,
	'42704', NULL, 'price_set''s list price is for global models only (unchanged)');
SELECT ok(quota_ext.model_price_set(:tw, 'mk-m', 'EUR', 0.002) > 0, 'the owner sets its model''s list price');
SELECT pg_temp.mx_snap();
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.model_price_set(%s, 'mk-m', 'EUR')$$, :tw),
	'22004', NULL, 'a list price needs an amount');
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.model_price_set(%s, 'mk-m', 'EUR', -1)$$, :tw),
	'22023', NULL, 'a negative list price: 22023');
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.model_price_set(%s, 'mk-x-own', 'EUR', 1)$$, :tw),
	'42704', NULL, 'no list price for another tenant''s model');
SELECT results_eq($$SELECT model, visibility, description, currency, unit_price FROM quota_ext.model_marketplace
                     WHERE model LIKE 'mk-%'$$,
	$$VALUES ('mk-m'::text, 'marketplace'::text, 'fine-tuned'::text, 'EUR'::text, 0.002::numeric),
	         ('mk-p', 'public', NULL, NULL, NULL)$$,
	'the listing: marketplace and public models with their list price; not private or tenant ones');
SELECT is((SELECT array_agg(n ORDER BY i)::text FROM pg_proc p, unnest(p.proargnames, p.proargmodes::text[]) WITH ORDINALITY a(n, mode, i)
             WHERE p.proname = 'model_listing' AND mode = 't'),
	'{model_id,model,provider,description,visibility,currency,unit_price,input_per_1k,output_per_1k,overage_unit_price}',
	'the listing''s columns: nothing of the owner (no owner id, metadata, status)');

-- ---------------------------------------------------------------------------
-- access requests
-- ---------------------------------------------------------------------------
SELECT pg_temp.mx_snap();
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.model_access_request(%s, %s)$$, :tc, :mv),
	'42704', format('model %s is not in the marketplace', :mv), 'a private model cannot be asked for: 42704');
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.model_access_request(%s, %s)$$, :tc, :ms),
	'42704', format('model %s is not in the marketplace', :ms), 'nor a "tenant" model: same 42704');
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.model_access_request(%s, %s)$$, :tc, :mp),
	'55000', format('model %s is public', :mp), 'a public model needs no request: 55000');
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.model_access_request(%s, %s)$$, :tw, :mm),
	'55000', format('tenant %s owns model %s', :tw, :mm), 'the owner does not ask for its own model: 55000');
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.model_access_request(%s, %s, E'a\nb')$$, :tc, :mm),
	'22023', NULL, 'a note with control characters: 22023');
SELECT is(quota_ext._model_resolve(:tc, 'mk-m'), NULL, 'before approval the consumer cannot resolve mk-m');
SELECT quota_ext.model_access_request(:tc, :mm, 'for our chatbot') AS r1 \gset
SELECT is(quota_ext.model_access_request(:tc, :mm), :r1::bigint, 'asking again while pending: the same request');
SELECT results_eq(format($$SELECT event_type, (payload->>'consumer_tenant_id')::bigint, payload->>'model'
                            FROM quota_ext.outbox WHERE tenant_id = %s AND event_type LIKE 'model_access.%%'$$, :tw),
	format($$VALUES ('model_access.requested'::text, %s::bigint, 'mk-m'::text)$$, :tc),
	'the owner''s outbox has one model_access.requested event');
SELECT results_eq(format('SELECT request_id, consumer_tenant_id, model, status, note FROM quota_ext.model_access_requests_received(%s)', :tw),
	format($$VALUES (%s::bigint, %s::bigint, 'mk-m'::text, 'pending'::text, 'for our chatbot'::text)$$, :r1, :tc),
	'the owner lists the requests for its models');
SELECT quota_ext.model_access_request(:td, :mm) AS r2 \gset
SELECT quota_ext.model_access_request(:tx, :mm) AS r3 \gset

SELECT pg_temp.mx_snap();
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.model_access_decide(%s, %s, %s, true)$$, :tx, :tc, :r1),
	'42704', format('access request %s does not exist', :r1), 'only the model''s owner decides: another tenant gets 42704');
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.model_access_decide(%s, %s, %s, true)$$, :tc, :tc, :r1),
	'42704', format('access request %s does not exist', :r1), 'the consumer cannot approve its own request');
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.model_access_decide(%s, %s, %s, true)$$, :tw, :td, :r1),
	'42704', NULL, 'a request under the wrong consumer: 42704');
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.model_access_decide(%s, %s, %s, NULL)$$, :tw, :tc, :r1),
	'22004', NULL, 'approve must not be null');
SELECT is((quota_ext.model_access_decide(:tw, :tc, :r1, true, 'welcome')).status, 'approved', 'the owner approves');
SELECT is(quota_ext._model_resolve(:tc, 'mk-m'), :mm::bigint, 'an approved request makes the model usable like a grant');
SELECT ok(EXISTS (SELECT 1 FROM quota_ext.model_shares WHERE tenant_id = :tc AND model_id = :mm), 'it is a model share');
SELECT is((quota_ext.model_access_decide(:tw, :tc, :r1, true)).status, 'approved', 'approving again: unchanged');
SELECT pg_temp.mx_snap();
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.model_access_decide(%s, %s, %s, false)$$, :tw, :tc, :r1),
	'55000', format('access request %s is approved', :r1), 'a decision is final: 55000');
SELECT is((quota_ext.model_access_decide(:tw, :td, :r2, true)).status, 'approved', 'the second consumer is approved');
SELECT is((quota_ext.model_access_decide(:tw, :tx, :r3, false, 'no')).status, 'denied', 'the third is denied');
SELECT is(quota_ext._model_resolve(:tx, 'mk-m'), NULL, 'a denied tenant still cannot use the model');
SELECT results_eq(format($$SELECT tenant_id, event_type FROM quota_ext.outbox WHERE tenant_id IN (%s, %s, %s)
                            AND event_type LIKE 'model_access.%%' ORDER BY event_id$$, :tc, :td, :tx),
	format($$VALUES (%s::bigint, 'model_access.approved'::text), (%s, 'model_access.approved'), (%s, 'model_access.denied')$$, :tc, :td, :tx),
	'each decision is an event in the consumer''s outbox (once)');
SELECT is((SELECT count(*) FROM quota_ext.audit_log WHERE tenant_id = :tw AND action = 'model_access_decide')::int, 3,
	'each decision is audited under the owner');
-- asking again after a denial (an attacker's review: without a limit,
-- each one a row and an event in the owner's outbox; failed before)
SELECT pg_temp.mx_snap();
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.model_access_request(%s, %s)$$, :tx, :mm),
	'54000', format('tenant %s''s request for model %s was denied less than a day ago', :tx, :mm),
	'asking again right after a denial: 54000 (failed before)');
UPDATE quota_ext.model_access_requests SET decided_at = decided_at - interval '25 hours' WHERE tenant_id = :tx;
SELECT quota_ext.model_access_request(:tx, :mm) AS r4 \gset
SELECT ok(:r4 NOT IN (:r3), 'a day after the denial a denied tenant may ask again (a new request)');
\o /dev/null
SELECT quota_ext.model_access_decide(:tw, :tx, :r4, false);
UPDATE quota_ext.model_access_requests SET decided_at = decided_at - interval '25 hours' WHERE tenant_id = :tx;
SELECT quota_ext.model_access_request(:tx, :mm) AS r5 \gset
SELECT quota_ext.model_access_decide(:tw, :tx, :r5, false);
UPDATE quota_ext.model_access_requests SET decided_at = decided_at - interval '25 hours' WHERE tenant_id = :tx;
\o
SELECT pg_temp.mx_snap();
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.model_access_request(%s, %s)$$, :tx, :mm),
	'54000', format('model %s denied tenant %s access 3 times', :mm, :tx),
	'after three denials no more requests for the model, however long ago (failed before)');
SELECT is((SELECT count(*) FROM quota_ext.outbox WHERE tenant_id = :tw AND event_type = 'model_access.requested'
             AND (payload->>'consumer_tenant_id')::bigint = :tx)::int, 3,
	'the owner''s outbox has the three requests, not the refused ones');
SELECT results_eq(format('SELECT request_id, status FROM quota_ext.model_access_requests_received(%s) WHERE consumer_tenant_id = %s', :tw, :tx),
	format($$VALUES (%s::bigint, 'denied'::text), (%s, 'denied'), (%s, 'denied')$$, :r3, :r4, :r5),
	'the owner''s list has each decision');

-- use: the policy decides as for any model
SELECT ok(quota_ext.policy_set(:tc, 'mk-m', true) > 0, 'the consumer allows mk-m');
SELECT is(quota_ext.policy_check(:tc, 'mk-m'), true, 'and may use it');
SELECT is((SELECT unit_price FROM quota_ext.price_lookup(:tc, 'mk-m')), 0.002::numeric,
	'the consumer pays the owner''s list price (no price of its own)');
SELECT ok(quota_ext.price_set('mk-m', 'EUR', 0.001, tenant_id => :td) > 0, 'a per-consumer price for the second consumer');
SELECT is((SELECT unit_price FROM quota_ext.price_lookup(:td, 'mk-m')), 0.001::numeric, 'which wins over the list price');
SELECT quota_ext.model_visibility_set(:tw, 'mk-m', 'private') \gset
SELECT is(quota_ext.policy_check(:tc, 'mk-m'), false, 'a private model: the share does not apply');
SELECT quota_ext.model_visibility_set(:tw, 'mk-m', 'marketplace') \gset
SELECT is(quota_ext.policy_check(:tc, 'mk-m'), true, 'listed again: it does');

-- public: every tenant with an exact allow policy
SELECT ok(quota_ext.policy_set(:tx, 'mk-*', true) > 0, 'tenant x allows "mk-*"');
SELECT is(quota_ext.policy_check(:tx, 'mk-p'), false, 'a prefix pattern does not let another tenant''s public model in');
SELECT ok(quota_ext.policy_set(:tx, 'mk-p', true) > 0, 'tenant x allows mk-p by name');
SELECT is(quota_ext.policy_check(:tx, 'mk-p'), true, 'a public model with an exact allow policy: usable');
SELECT is(quota_ext.policy_check(:tc, 'mk-p'), false, 'without a policy: not (default deny)');
SELECT is(quota_ext.policy_check(:tx, 'mk-x-own'), true, 'tenant x''s own models still match its pattern');

-- ---------------------------------------------------------------------------
-- revenue share and the payout statement
-- ---------------------------------------------------------------------------
SELECT pg_temp.mx_snap();
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.model_revenue_share_set(%s, 'mk-m', 100.5)$$, :tw),
	'22023', NULL, 'a share over 100 %: 22023');
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.model_revenue_share_set(%s, 'mk-m', 1.00001)$$, :tw),
	'22023', NULL, 'more than 4 decimals: 22023');
SELECT lives_ok(format($$SELECT quota_ext.model_revenue_share_set(%s, 'mk-m', 30)$$, :tw), 'the platform keeps 30 %% of mk-m');
\o /dev/null
-- January 2025, as the hot path would have written it: list price 9901, c2's own price 9902
INSERT INTO quota_ext.prices (price_id, model_id, tenant_id, currency, unit_price, effective_from) VALUES
	(9901, :mm, NULL, 'EUR', 0.002, '2025-01-01 00:00+00'),
	(9902, :mm, :td, 'EUR', 0.001, '2025-01-01 00:00+00'),
	(9903, :mp, NULL, 'EUR', 0.000333, '2025-01-01 00:00+00');
SELECT pg_temp.mx_usage(:tc, :mm, '2025-01-05 10:00+00', 3, 0.006, 9901);
SELECT pg_temp.mx_usage(:tc, :mm, '2025-01-06 10:00+00', 1, 0.002, 9901);
SELECT pg_temp.mx_usage(:td, :mm, '2025-01-07 10:00+00', 7, 0.007, 9902);
SELECT pg_temp.mx_usage(:tx, :mp, '2025-01-08 10:00+00', 5, 0.001665, 9903);
SELECT pg_temp.mx_usage(:tw, :mm, '2025-01-09 10:00+00', 2, 0.004, 9901);
\o
CREATE TEMP TABLE jan AS SELECT * FROM quota_ext.billing_close('2025-01-01 00:00+00', '2025-02-01 00:00+00');
SELECT results_eq(format('SELECT currency::text, gross, platform_share, payout FROM quota_ext.payouts WHERE tenant_id = %s', :tw),
	$$VALUES ('EUR'::text, 0.016665::numeric, 0.004500::numeric, 0.012165::numeric)$$,
	'the owner''s statement: its consumers'' charges (not its own use), 30 %% of mk-m to the platform, 0 %% of mk-p');
SELECT results_eq(format($$SELECT consumer_tenant_id, model, calls, gross, platform_pct, platform_share, payout
                            FROM quota_ext.payout_lines WHERE tenant_id = %s ORDER BY line_no$$, :tw),
	format($$VALUES (%s::bigint, 'mk-m'::text, 2::bigint, 0.008::numeric, 30::numeric, 0.0024::numeric, 0.0056::numeric),
	                (%s, 'mk-m', 1, 0.007, 30, 0.0021, 0.0049),
	                (%s, 'mk-p', 1, 0.001665, 0, 0, 0.001665)$$, :tc, :td, :tx),
	'one line per consumer and model');
SELECT is((SELECT sum(l.amount) FROM quota_ext.invoice_lines l JOIN jan i USING (tenant_id, invoice_id)
            JOIN quota_ext.models m USING (model_id) WHERE m.owner_tenant_id = :tw AND l.tenant_id <> :tw),
	(SELECT payout + platform_share FROM quota_ext.payouts WHERE tenant_id = :tw),
	'sum of consumer invoice lines on the owner''s models = payout + platform share');
SELECT is((SELECT l.price_id FROM quota_ext.invoice_lines l JOIN jan i USING (tenant_id, invoice_id)
            WHERE l.tenant_id = :tc AND l.model_id = :mm), 9901::bigint,
	'the consumer''s invoice line is at the owner''s list price');
SELECT is((SELECT count(*) FROM quota_ext.outbox WHERE tenant_id = :tw AND event_type = 'payout.created'
             AND (payload->>'payout')::numeric = 0.012165)::int, 1,
	'payout statement created: one outbox event in the owner''s outbox');
SELECT is((SELECT count(*) FROM quota_ext.audit_log WHERE tenant_id = :tw AND action = 'payout_create')::int, 1, 'and audited');
SELECT is((SELECT count(*) FROM quota_ext.billing_close('2025-01-01 00:00+00', '2025-02-01 00:00+00'))::int,
	(SELECT count(*) FROM jan)::int, 'closing again is idempotent');
SELECT is((SELECT count(*) FROM quota_ext.payout_lines WHERE tenant_id = :tw)::int, 3, 'and adds no payout line');

-- February, consumers closed one at a time: one statement, lines added, exact
-- to the micro-unit where the share rounds (30 % of 0.000007 = 0.0000021)
\o /dev/null
SELECT pg_temp.mx_usage(:tc, :mm, '2025-02-03 10:00+00', 1, 0.000007, 9901);
SELECT pg_temp.mx_usage(:td, :mm, '2025-02-04 10:00+00', 1, 0.000005, 9902);
SELECT quota_ext.billing_close(:tc, '2025-02-01 00:00+00', '2025-03-01 00:00+00');
SELECT quota_ext.billing_close(:td, '2025-02-01 00:00+00', '2025-03-01 00:00+00');
\o
SELECT results_eq(format($$SELECT l.gross, l.platform_share, l.payout FROM quota_ext.payout_lines l JOIN quota_ext.payouts p USING (tenant_id, payout_id)
                            WHERE p.tenant_id = %s AND p.period_start = '2025-02-01 00:00+00' ORDER BY line_no$$, :tw),
	$$VALUES (0.000007::numeric, 0.000002::numeric, 0.000005::numeric), (0.000005, 0.000002, 0.000003)$$,
	'the platform''s share is rounded to micro-units and the payout is the rest');
SELECT is((SELECT sum(l.amount) FROM quota_ext.invoice_lines l JOIN quota_ext.invoices i USING (tenant_id, invoice_id)
            WHERE i.period_start = '2025-02-01 00:00+00' AND l.model_id = :mm AND l.tenant_id <> :tw),
	(SELECT payout + platform_share FROM quota_ext.payouts WHERE tenant_id = :tw AND period_start = '2025-02-01 00:00+00'),
	'two closes, one statement: still invoice lines = payout + platform share');
SELECT is((SELECT array_agg(event_type ORDER BY event_id)::text FROM quota_ext.outbox
            WHERE tenant_id = :tw AND event_type LIKE 'payout.%' AND payload->>'period_start' LIKE '2025-02-01%'),
	'{payout.created,payout.updated}', 'created at the first close, updated at the second');

-- a voided consumer invoice leaves the owner's statement (an attacker's
-- review: the owner kept the payout of a voided invoice; failed before)
\o /dev/null
SELECT quota_ext.invoice_void(:td, (SELECT invoice_id FROM quota_ext.invoices
                                     WHERE tenant_id = :td AND period_start = '2025-02-01 00:00+00'), 'credited');
\o
SELECT results_eq(format($$SELECT gross, platform_share, payout FROM quota_ext.payouts
                            WHERE tenant_id = %s AND period_start = '2025-02-01 00:00+00'$$, :tw),
	$$VALUES (0.000007::numeric, 0.000002::numeric, 0.000005::numeric)$$,
	'after the void the statement holds only the invoices not voided');
SELECT results_eq(format($$SELECT l.consumer_tenant_id, l.calls, l.gross, l.platform_share, l.payout FROM quota_ext.payout_lines l
                            JOIN quota_ext.payouts p USING (tenant_id, payout_id)
                            WHERE p.tenant_id = %s AND p.period_start = '2025-02-01 00:00+00' ORDER BY l.line_no DESC LIMIT 1$$, :tw),
	format($$VALUES (%s::bigint, -1::bigint, -0.000005::numeric, -0.000002::numeric, -0.000003::numeric)$$, :td),
	'a line negates the voided consumer''s line, at the share applied then');
SELECT is((SELECT coalesce(sum(l.amount), 0) FROM quota_ext.invoice_lines l JOIN quota_ext.invoices i USING (tenant_id, invoice_id)
            WHERE i.period_start = '2025-02-01 00:00+00' AND i.status <> 'void' AND l.model_id = :mm AND l.tenant_id <> :tw),
	(SELECT payout + platform_share FROM quota_ext.payouts WHERE tenant_id = :tw AND period_start = '2025-02-01 00:00+00'),
	'invoice lines not voided = payout + platform share');
SELECT is((SELECT count(*) FROM quota_ext.outbox WHERE tenant_id = :tw AND event_type = 'payout.updated'
             AND payload->>'period_start' LIKE '2025-02-01%')::int, 2, 'the statement''s change is announced');

-- A refund after a close larger than what the owner was paid for that
-- consumer and model (an attacker's review: negative adjustment lines gave
-- negative payout lines with no floor; failed before): x was invoiced
-- 0.001665 on mk-p in January (paid out), and is refunded 0.002 of January
-- after its close.  The statement takes back what was paid, and carries the
-- rest against x's later charges on mk-p.
\o /dev/null
SELECT pg_temp.mx_usage(:tx, :mp, '2025-01-20 10:00+00', -6, -0.002, 9903, kind => 'refund', created => clock_timestamp(), calls => -1);
SELECT quota_ext.billing_close(:tx, '2025-02-01 00:00+00', '2025-03-01 00:00+00');
\o
SELECT results_eq(format($$SELECT l.invoiced, l.gross, l.platform_share, l.payout FROM quota_ext.payout_lines l
                            JOIN quota_ext.payouts p USING (tenant_id, payout_id)
                            WHERE p.tenant_id = %s AND p.period_start = '2025-02-01 00:00+00' AND l.consumer_tenant_id = %s$$, :tw, :tx),
	$$VALUES (-0.002::numeric, -0.001665::numeric, 0::numeric, -0.001665::numeric)$$,
	'a refund beyond what was paid: the line takes back what was paid, no more (failed before)');
\o /dev/null
SELECT pg_temp.mx_usage(:tx, :mp, '2025-03-05 10:00+00', 3, 0.000999, 9903);
SELECT quota_ext.billing_close(:tx, '2025-03-01 00:00+00', '2025-04-01 00:00+00');
\o
SELECT results_eq(format($$SELECT l.invoiced, l.gross, l.payout FROM quota_ext.payout_lines l
                            JOIN quota_ext.payouts p USING (tenant_id, payout_id)
                            WHERE p.tenant_id = %s AND p.period_start = '2025-03-01 00:00+00'$$, :tw),
	$$VALUES (0.000999::numeric, 0.000664::numeric, 0.000664::numeric)$$,
	'the carried rest is set against the next charges (0.001665 - 0.002 + 0.000999)');
SELECT is((SELECT sum(l.gross) FROM quota_ext.payout_lines l WHERE l.tenant_id = :tw AND l.consumer_tenant_id = :tx),
	(SELECT greatest(sum(l.amount), 0) FROM quota_ext.invoice_lines l WHERE l.tenant_id = :tx AND l.model_id = :mp),
	'per consumer and model: the owner''s gross over its statements = max(0, what the consumer was invoiced)');
\o /dev/null
SELECT quota_ext.invoice_void(:tx, (SELECT invoice_id FROM quota_ext.invoices
                                     WHERE tenant_id = :tx AND period_start = '2025-02-01 00:00+00'), 'refund voided');
\o
SELECT results_eq(format($$SELECT l.invoiced, l.gross FROM quota_ext.payout_lines l JOIN quota_ext.payouts p USING (tenant_id, payout_id)
                            WHERE p.tenant_id = %s AND p.period_start = '2025-02-01 00:00+00' AND l.consumer_tenant_id = %s
                            ORDER BY l.line_no$$, :tw, :tx),
	$$VALUES (-0.002::numeric, -0.001665::numeric), (0.002, 0.002)$$,
	'voiding the refund''s invoice gives back what it took and what it carried');
SELECT is((SELECT sum(l.gross) FROM quota_ext.payout_lines l WHERE l.tenant_id = :tw AND l.consumer_tenant_id = :tx),
	(SELECT sum(l.amount) FROM quota_ext.invoice_lines l JOIN quota_ext.invoices i USING (tenant_id, invoice_id)
	  WHERE l.tenant_id = :tx AND l.model_id = :mp AND i.status <> 'void'),
	'and the owner''s gross is again what the invoices not voided hold');
SELECT ok(NOT EXISTS (SELECT 1 FROM quota_ext.payouts WHERE tenant_id = :tw AND payout < 0), 'no statement is negative');

-- ---------------------------------------------------------------------------
-- cross-tenant reads
-- ---------------------------------------------------------------------------
-- list prices of the owner's private model and of a "tenant" model shared
-- with nobody; a key of the consumer c1
\o /dev/null
SELECT quota_ext.model_price_set(:tw, 'mk-priv', 'EUR', 0.5), quota_ext.model_price_set(:tw, 'mk-shared', 'EUR', 0.25);
\o
SELECT api_key AS kc FROM quota_ext.user_create(:tc, 'c1@mk.example', 'member') \gset
CREATE ROLE qx_tap_mk_admin LOGIN IN ROLE quota_ext_admin;
CREATE ROLE qx_tap_mk_app LOGIN IN ROLE quota_ext_app;
SET ROLE qx_tap_mk_admin;
SELECT quota_ext.set_tenant(:tc);
SELECT is((SELECT count(*) FROM quota_ext.payouts)::int + (SELECT count(*) FROM quota_ext.payout_lines)::int, 0,
	'the consumer sees no payout statement');
SELECT is((SELECT count(*) FROM quota_ext.models WHERE model_id IN (:mp, :mv))::int, 0,
	'nor the owner''s models it was not granted (public or private), beyond the listing');
SELECT is((SELECT count(*) FROM quota_ext.model_listing() WHERE model = 'mk-p')::int, 1, 'the listing it reads');
SELECT is((SELECT array_agg(DISTINCT model_id ORDER BY model_id) FROM quota_ext.prices WHERE tenant_id IS NULL AND model_id IN (:mm, :mp, :mv, :ms)),
	ARRAY[:mm, :mp]::bigint[],
	'list prices: of the listed models it uses or may ask for, not of the owner''s private model or an unshared one (failed before)');
SELECT throws_ok(format($$SELECT * FROM quota_ext.model_access_requests_received(%s)$$, :tw), '42704', NULL,
	'the owner''s requests are a tenant that does not exist in the consumer''s context');
SELECT throws_ok(format($$SELECT quota_ext.model_access_request(%s, %s)$$, :tx, :mm), '42704', NULL,
	'a consumer cannot ask on behalf of another tenant');
SELECT results_eq('SELECT DISTINCT tenant_id FROM quota_ext.model_access_requests', format('VALUES (%s::bigint)', :tc),
	'the consumer reads its own requests only');
SELECT is((SELECT count(*) FROM quota_ext.model_access_inbox)::int, 0, 'and not the owner''s list');
SELECT quota_ext.clear_tenant();
SELECT quota_ext.set_tenant(:tw);
SELECT is((SELECT count(*) FROM quota_ext.invoices WHERE tenant_id <> :tw)::int
          + (SELECT count(*) FROM quota_ext.invoice_lines WHERE tenant_id <> :tw)::int
          + (SELECT count(*) FROM quota_ext.model_access_requests)::int, 0,
	'the owner sees no consumer invoice, invoice line or request row');
SELECT is((SELECT count(*) FROM quota_ext.payouts)::int, 3, 'the owner reads its statements');
SELECT is((SELECT array_agg(DISTINCT model_id ORDER BY model_id) FROM quota_ext.prices WHERE tenant_id IS NULL AND model_id IN (:mm, :mp, :mv, :ms)),
	ARRAY[:mm, :mp, :mv, :ms]::bigint[], 'the owner reads the list prices of all its models');
SELECT is((SELECT count(*) FROM quota_ext.model_access_requests_received(:tw))::int, 5, 'and the requests for its models');
SELECT results_eq('SELECT tenant_id, count(*)::int FROM quota_ext.model_access_inbox GROUP BY 1',
	format('VALUES (%s::bigint, 5)', :tw),
	'which are its own tenant''s rows (model_access_inbox, tenant_id = the owner), read by tenant_id (failed before)');
SELECT throws_ok(format($$SELECT quota_ext.model_revenue_share_set(%s, 'mk-m', 0)$$, :tw), '42501', NULL,
	'the owner cannot set the platform''s share');
SELECT throws_ok(format($$SELECT quota_ext.model_access_decide(%s, %s, %s, true)$$, :tx, :tx, :r3), '42704', NULL,
	'in the owner''s context another owner is a tenant that does not exist');
SELECT quota_ext.clear_tenant();
RESET ROLE;
SET ROLE qx_tap_mk_app;
SELECT throws_ok(format($$SELECT * FROM quota_ext.model_access_requests_received(%s)$$, :tw), '42501', NULL,
	'an app login without a context: 42501');
SELECT throws_ok(format($$SELECT quota_ext.model_access_decide(%s, %s, %s, true)$$, :tw, :tx, :r3), '42501', NULL,
	'the app role cannot decide');
SELECT is((SELECT count(*) FROM quota_ext.prices WHERE model_id IN (:mm, :mp, :mv, :ms))::int, 0,
	'without a context an app login reads no owner''s list price');
SELECT ok(quota_ext.authenticate(:'kc') IS NOT NULL, 'the consumer''s key');
SELECT is((SELECT array_agg(DISTINCT model_id ORDER BY model_id) FROM quota_ext.prices WHERE tenant_id IS NULL AND model_id IN (:mm, :mp, :mv, :ms)),
	ARRAY[:mm, :mp]::bigint[], 'with it: the listed models'' list prices only (failed before)');
SELECT ok(quota_ext.price_list_visible(NULL) AND NOT quota_ext.price_list_visible(:mv)
          AND quota_ext.price_list_visible(:mm),
	'price_list_visible: the default prices and the shared model yes, the private one no');
SELECT quota_ext.clear_tenant();
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;
