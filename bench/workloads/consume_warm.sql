-- quota_ext.quota_consume on a random tenant of the first 100: the steady
-- state of a pooled backend whose configuration cache holds its tenants
-- (doc/design.md §4a); every call still locks and writes two counters and
-- a usage row
\set t random(1, 100)
SELECT quota_ext.quota_consume(:t, 'bench-model', 1);
