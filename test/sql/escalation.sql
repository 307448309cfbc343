--
-- Escalation attempts by a login role that is a member of quota_ext_app
-- only, in its own session (so SET ROLE and SET SESSION AUTHORIZATION are
-- checked against it, not against a superuser session as in pgTAP).
-- Issue 2: "quota_ext_app cannot call admin functions or disable RLS".
-- Checklist: I6 (each attempt gives 42501), I5 (row_security = off).
-- test/pgtap/07_isolation.sql covers the same ground table by table and
-- function by function.
--
\set err '\\echo SQLSTATE :LAST_ERROR_SQLSTATE'
\set SHOW_CONTEXT never
SET client_min_messages = warning;
CREATE ROLE qx_esc_app LOGIN IN ROLE quota_ext_app;
SELECT quota_ext.tenant_create('esc-a') AS ta \gset
SELECT api_key AS ka FROM quota_ext.user_create(:ta, 'a@a.example', 'admin') \gset
\c - qx_esc_app
SET client_min_messages = warning;
BEGIN;
SELECT tenant_id = :ta AS is_a FROM quota_ext.authenticate(:'ka');
SAVEPOINT s;
SET ROLE quota_ext_admin;
:err
ROLLBACK TO s;
SET ROLE postgres;
:err
ROLLBACK TO s;
SET SESSION AUTHORIZATION postgres;
:err
ROLLBACK TO s;
SELECT quota_ext.set_tenant(:ta);
:err
ROLLBACK TO s;
SELECT quota_ext.tenant_create('esc-mine');
:err
ROLLBACK TO s;
SELECT quota_ext.user_create(:ta, 'eve@a.example', 'admin');
:err
ROLLBACK TO s;
SELECT quota_ext.api_key_create(:ta, 1);
:err
ROLLBACK TO s;
SELECT quota_ext._api_key_mint(:ta, 1);
:err
ROLLBACK TO s;
SELECT quota_ext._audit(:ta, 'x', 'y', NULL, NULL, NULL);
:err
ROLLBACK TO s;
ALTER TABLE quota_ext.api_keys DISABLE ROW LEVEL SECURITY;
:err
ROLLBACK TO s;
ALTER TABLE quota_ext.api_keys NO FORCE ROW LEVEL SECURITY;
:err
ROLLBACK TO s;
CREATE POLICY open ON quota_ext.api_keys USING (true);
:err
ROLLBACK TO s;
DROP POLICY tenant_isolation ON quota_ext.api_keys;
:err
ROLLBACK TO s;
TRUNCATE quota_ext.audit_log;
:err
ROLLBACK TO s;
CREATE TABLE quota_ext.mine (x int);
:err
ROLLBACK TO s;
SET LOCAL row_security = off;
SELECT count(*) FROM quota_ext.users;
:err
ROLLBACK TO s;
-- nothing above changed the context
SELECT quota_ext.current_tenant_id() = :ta AS still_a;
COMMIT;
-- cleanup
\c - postgres
DROP ROLE qx_esc_app;
