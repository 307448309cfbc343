-- Billing (issue 18): the invoice lifecycle draft -> issued -> paid, or
-- -> void; invoice_mark_paid(); the view of unpaid invoices (row-level
-- security of the caller); every transition audited; a bad transition gets
-- 55000 and changes nothing.  And the outbox side of it (52_outbox.sql):
-- every billing and quota event is a row of quota_ext.outbox written in the
-- transaction of the change, append-only, per tenant under row-level
-- security.  (Delivery with event_poll/event_ack needs committed
-- transactions: test/specs/outbox.spec and test/t/081_webhook_relay.pl.)
BEGIN;
\ir metering_helpers.psql
SELECT plan(65);

\o /dev/null
SELECT quota_ext.tenant_create('il-a') AS ta \gset
SELECT quota_ext.tenant_create('il-b') AS tb \gset
UPDATE quota_ext.tenants SET created_at = '2024-12-01' WHERE tenant_id IN (:ta, :tb);
SELECT quota_ext.model_register('il-m') AS m \gset
INSERT INTO quota_ext.prices (price_id, model_id, tenant_id, currency, unit_price, effective_from) VALUES
	(9801, :m, NULL, 'EUR', 0.000005, '2025-01-01 00:00+00');
SELECT pg_temp.mx_usage(:ta, :m, '2025-01-10 10:00+00', 4, 0.000020, 9801);
SELECT pg_temp.mx_usage(:tb, :m, '2025-01-11 10:00+00', 2, 0.000010, 9801);
\o
CREATE TEMP TABLE jan AS SELECT * FROM quota_ext.billing_close('2025-01-01 00:00+00', '2025-02-01 00:00+00');
SELECT invoice_id AS ia FROM jan WHERE tenant_id = :ta \gset
SELECT invoice_id AS ib FROM jan WHERE tenant_id = :tb \gset
SELECT is((SELECT status FROM quota_ext.invoices WHERE tenant_id = :ta AND invoice_id = :ia), 'draft', 'a closed invoice is a draft');

-- ---------------------------------------------------------------------------
-- bad transitions and arguments: 55000 / 22xxx, nothing changes
-- ---------------------------------------------------------------------------
SELECT pg_temp.mx_snap();
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.invoice_mark_paid(%s, %s, now(), 'TX-1')$$, :ta, :ia),
	'55000', format('invoice %s is draft', :ia), 'a draft cannot be paid');
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.invoice_mark_paid(%s, %s, NULL, 'TX-1')$$, :ta, :ia),
	'22004', NULL, 'paid_at must not be null');
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.invoice_mark_paid(%s, %s, now(), ' ')$$, :ta, :ia),
	'22023', NULL, 'a blank reference is refused');
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.invoice_mark_paid(%s, %s, now(), 'TX-1')$$, :ta, 987654321),
	'42704', NULL, 'an unknown invoice');
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.invoice_mark_paid(%s, %s, now(), 'TX-1')$$, :ta, :ib),
	'42704', NULL, 'tenant B''s invoice under tenant A is unknown');

-- ---------------------------------------------------------------------------
-- issued: unpaid
-- ---------------------------------------------------------------------------
SELECT is((quota_ext.invoice_issue(:ta, :ia)).status, 'issued', 'A''s invoice is issued');
SELECT is((quota_ext.invoice_issue(:tb, :ib)).status, 'issued', 'B''s invoice is issued');
SELECT results_eq(format('SELECT tenant_id, invoice_id, currency::text, total FROM quota_ext.invoices_unpaid WHERE tenant_id IN (%s, %s) ORDER BY tenant_id', :ta, :tb),
	format('VALUES (%s::bigint, %s::bigint, %L::text, 0.000020::numeric), (%s, %s, %L, 0.000010)', :ta, :ia, 'EUR', :tb, :ib, 'EUR'),
	'the unpaid view lists issued invoices');
SELECT pg_temp.mx_snap();
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.invoice_mark_paid(%s, %s, now() + interval '1 day', 'TX-1')$$, :ta, :ia),
	'22023', NULL, 'a payment in the future is refused');

-- a tenant sees its own unpaid invoices only (the view is security_invoker)
CREATE ROLE qx_tap_il_admin LOGIN IN ROLE quota_ext_admin;
SET ROLE qx_tap_il_admin;
SELECT quota_ext.set_tenant(:tb);
SELECT results_eq('SELECT tenant_id FROM quota_ext.invoices_unpaid', format('VALUES (%s::bigint)', :tb),
	'in B''s context the unpaid view shows B''s invoice only');
SELECT results_eq('SELECT DISTINCT tenant_id FROM quota_ext.outbox', format('VALUES (%s::bigint)', :tb),
	'in B''s context the outbox shows B''s events only');
SELECT quota_ext.clear_tenant();
RESET ROLE;

-- ---------------------------------------------------------------------------
-- paid
-- ---------------------------------------------------------------------------
CREATE TEMP TABLE paid AS SELECT * FROM quota_ext.invoice_mark_paid(:ta, :ia, '2025-02-03 12:00+00', 'SEPA-4711');
SELECT results_eq('SELECT status, paid_at, payment_reference FROM paid',
	$$VALUES ('paid'::text, '2025-02-03 12:00+00'::timestamptz, 'SEPA-4711'::text)$$,
	'an issued invoice is paid, with its date and reference');
SELECT is_empty(format('SELECT 1 FROM quota_ext.invoices_unpaid WHERE tenant_id = %s', :ta), 'a paid invoice is not unpaid');
SELECT results_eq(format($$SELECT before->>'status', after->>'status', after->>'reference', actor_tenant_id IS NULL
                             FROM quota_ext.audit_log WHERE tenant_id = %s AND action = 'invoice_paid' AND object_id = '%s'$$, :ta, :ia),
	$$VALUES ('issued'::text, 'paid'::text, 'SEPA-4711'::text, true)$$,
	'the payment is audited');
SELECT is((SELECT count(*) FROM quota_ext.audit_log WHERE tenant_id = :ta AND object_type = 'invoice' AND object_id = :ia::text)::int, 3,
	'every transition of the invoice is audited: created, issued, paid');
SELECT is((quota_ext.invoice_mark_paid(:ta, :ia, '2025-02-03 12:00+00', 'SEPA-4711')).status, 'paid',
	'the same payment again is a no-op');
SELECT is((SELECT count(*) FROM quota_ext.audit_log WHERE tenant_id = :ta AND action = 'invoice_paid')::int, 1,
	'and audits nothing');
SELECT pg_temp.mx_snap();
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.invoice_mark_paid(%s, %s, now(), 'SEPA-4712')$$, :ta, :ia),
	'55000', NULL, 'another payment of a paid invoice is refused');
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.invoice_void(%s, %s, 'oops')$$, :ta, :ia),
	'55000', format('invoice %s is paid', :ia), 'a paid invoice cannot be voided');
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.invoice_issue(%s, %s)$$, :ta, :ia),
	'55000', NULL, 'a paid invoice cannot be issued again');

-- void: issued -> void, then no payment
SELECT is((quota_ext.invoice_void(:tb, :ib, 'duplicate')).status, 'void', 'B''s issued invoice is voided');
SELECT pg_temp.mx_snap();
SELECT * FROM pg_temp.mx_throws(format($$SELECT quota_ext.invoice_mark_paid(%s, %s, now(), 'TX-9')$$, :tb, :ib),
	'55000', format('invoice %s is void', :ib), 'a void invoice cannot be paid');

-- ---------------------------------------------------------------------------
-- the outbox: one row per event, in the transaction of the change
-- ---------------------------------------------------------------------------
SELECT results_eq(format($$SELECT tenant_id, event_type, object_id, payload->>'status'
                             FROM quota_ext.outbox WHERE tenant_id IN (%s, %s) ORDER BY event_id$$, :ta, :tb),
	format($$VALUES (%1$s::bigint, 'invoice.created'::text, '%3$s'::text, 'draft'::text),
	                (%2$s, 'invoice.created', '%4$s', 'draft'),
	                (%1$s, 'invoice.issued', '%3$s', 'issued'),
	                (%2$s, 'invoice.issued', '%4$s', 'issued'),
	                (%1$s, 'invoice.paid', '%3$s', 'paid'),
	                (%2$s, 'invoice.void', '%4$s', 'void')$$, :ta, :tb, :ia, :ib),
	'invoice created (at close), issued, paid and voided: one outbox event each, nothing for the no-ops');
SELECT results_eq(format($$SELECT payload->>'payment_reference', (payload->>'total')::numeric, payload->>'currency'
                             FROM quota_ext.outbox WHERE tenant_id = %s AND event_type = 'invoice.paid'$$, :ta),
	$$VALUES ('SEPA-4711'::text, 0.000020::numeric, 'EUR'::text)$$,
	'the event carries the invoice as it is after the change');
SELECT ok((SELECT bool_and(xid = pg_current_xact_id()) FROM quota_ext.outbox WHERE tenant_id IN (:ta, :tb)),
	'each event records its writer''s transaction');

-- a threshold crossing is an outbox event of the consuming transaction
\o /dev/null
SELECT quota_ext.policy_set(:ta, 'il-m', true);
SELECT quota_ext.quota_set(:ta, 'never', 10, metric => 'units', thresholds => ARRAY[50]) AS q \gset
SELECT quota_ext.quota_consume(:ta, 'il-m', 6);
\o
SELECT results_eq(format($$SELECT event_type, object_id, (payload->>'threshold')::int, (payload->>'used')::bigint, (payload->>'limit')::bigint
                             FROM quota_ext.outbox WHERE tenant_id = %s AND object_type = 'quota'$$, :ta),
	format($$VALUES ('quota.threshold'::text, '%s'::text, 50, 6::bigint, 10::bigint)$$, :q),
	'a threshold crossing is an outbox event');

-- append-only: no role may change or remove an event (the extension's
-- functions insert; only event_purge deletes)
SET ROLE qx_tap_il_admin;
SELECT throws_ok($$UPDATE quota_ext.outbox SET payload = '{}'$$, '42501', NULL, 'an admin login cannot UPDATE the outbox');
SELECT throws_ok($$DELETE FROM quota_ext.outbox$$, '42501', NULL, 'nor DELETE from it');
RESET ROLE;
-- an app login cannot write it (no privilege) nor see another tenant's rows
CREATE ROLE qx_tap_il_app LOGIN IN ROLE quota_ext_app;
SET ROLE qx_tap_il_app;
SELECT throws_ok(format($$INSERT INTO quota_ext.outbox VALUES (%s, 1, '1', 'invoice.paid', 'invoice', '1', '{}')$$, :tb), '42501', NULL,
	'an app login cannot forge an event');
SELECT is_empty('SELECT 1 FROM quota_ext.outbox', 'an app login without a context sees no event');
SELECT throws_ok($$SELECT * FROM quota_ext.event_poll('il-relay')$$, '42501', NULL, 'nor may it poll');
RESET ROLE;

-- consumers: a tenant's context reads its own namespace; bad arguments
SET ROLE qx_tap_il_admin;
SELECT quota_ext.set_tenant(:ta);
SELECT is_empty($$SELECT * FROM quota_ext.event_poll('il-relay')$$, 'events of this very transaction are not delivered before it commits');
SELECT throws_ok($$SELECT quota_ext.event_consumer_drop(0, 'il-relay')$$, '42704', 'tenant 0 does not exist',
	'in a tenant context the admin namespace (0) is unknown');
SELECT quota_ext.clear_tenant();
SELECT is_empty($$SELECT * FROM quota_ext.event_poll('il-relay', 5)$$, 'nor to an admin consumer');
SELECT throws_ok($$SELECT * FROM quota_ext.event_poll('il-relay', 0)$$, '22023', NULL, 'limit 0 is refused');
SELECT throws_ok($$SELECT * FROM quota_ext.event_poll('', 1)$$, '22023', NULL, 'an empty consumer name is refused');
SELECT throws_ok(format($$SELECT quota_ext.event_ack('il-relay', %s)$$, (SELECT max(event_id) FROM quota_ext.outbox)), '55000', NULL,
	'an event of a transaction that has not committed cannot be acknowledged');
SELECT throws_ok($$SELECT quota_ext.event_ack('il-relay', 987654321)$$, '42704', 'event 987654321 does not exist', 'an unknown event');
SELECT is(quota_ext.event_ack('il-relay', 0), 0::bigint, 'acknowledging 0 acknowledges nothing');
RESET ROLE;
SELECT results_eq($$SELECT tenant_id, consumer FROM quota_ext.event_consumers ORDER BY 1$$,
	format($$VALUES (0::bigint, 'il-relay'::text), (%s, 'il-relay')$$, :ta),
	'a consumer per namespace: 0 (admin without a context) and tenant A''s');
SELECT is(quota_ext.event_purge('infinity'), 0::bigint, 'event_purge keeps events a consumer has not acknowledged');
SELECT ok(quota_ext.event_consumer_drop(0, 'il-relay') AND quota_ext.event_consumer_drop(:ta, 'il-relay'), 'consumers are dropped');
SELECT count(*) AS nout FROM quota_ext.outbox \gset
SELECT is(quota_ext.event_purge('infinity'), :nout::bigint, 'without consumers event_purge removes every event before the time given');

-- at most 16 consumers per namespace (each holds back event_purge)
SET ROLE qx_tap_il_admin;
SELECT quota_ext.set_tenant(:ta);
SELECT is((SELECT count(*) FROM generate_series(1, 16) g, quota_ext.event_poll('il-c' || g, 1)), 0::bigint,
	'sixteen consumers of one tenant');
SELECT throws_ok($$SELECT * FROM quota_ext.event_poll('il-c17', 1)$$, '54000', 'too many outbox consumers',
	'a seventeenth is refused');
SELECT is((SELECT count(*) FROM quota_ext.event_poll('il-c16', 1)), 0::bigint, 'an existing one still polls');
SELECT quota_ext.clear_tenant();
RESET ROLE;

-- SECURITY.md finding 2: consumers are per tenant, so a key of any member
-- of the tenant could move its relay's cursor past undelivered events or
-- hold the consumer row locked.  A key-authenticated context may poll or
-- acknowledge only with the key of a user whose role is admin (failed
-- before: a member's key polled and acknowledged).
\o /dev/null
SELECT api_key AS il_member_key FROM quota_ext.user_create(:tb, 'member@il.example', 'member') \gset
SELECT api_key AS il_owner_key FROM quota_ext.user_create(:tb, 'owner@il.example', 'admin') \gset
-- an event of tenant A's (as a close of A's would write it)
SELECT quota_ext._event_emit(:ta, 'invoice.created', 'invoice', '0', '{}') AS il_a_event \gset
\o
SELECT is((SELECT tenant_id FROM quota_ext.outbox WHERE event_id = :il_a_event), :ta::bigint, 'tenant A has an outbox event (for the attack below)');
SET ROLE qx_tap_il_app;
SELECT is((SELECT tenant_id FROM quota_ext.authenticate(:'il_member_key')), :tb::bigint, 'a member authenticates');
SELECT throws_ok($$SELECT * FROM quota_ext.event_poll('il-b-relay')$$, '42501', NULL, 'a member''s key cannot poll its tenant''s events');
SELECT throws_ok($$SELECT quota_ext.event_ack('il-b-relay', 0)$$, '42501', NULL, 'nor acknowledge them');
\o /dev/null
SELECT quota_ext.clear_tenant();
SELECT quota_ext.authenticate(:'il_owner_key');
\o
SELECT is(quota_ext.event_ack('il-b-relay', 0), 0::bigint, 'a tenant admin''s key can');
-- an attacker's pass over the outbox: B's admin key and A's events
SELECT throws_ok(format($$SELECT quota_ext.event_ack('il-b-relay', %s)$$, :il_a_event), '42704',
	format('event %s does not exist', :il_a_event), 'B''s key cannot acknowledge A''s event: it does not exist for B');
SELECT is((SELECT count(*) FROM quota_ext.outbox WHERE tenant_id <> :tb), 0::bigint, 'nor read A''s events');
SELECT throws_ok(format($$SELECT quota_ext.event_consumer_drop(%s, 'il-relay')$$, :ta), '42501', NULL,
	'nor drop a consumer (admin only)');
\o /dev/null
SELECT quota_ext.clear_tenant();
\o
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;
