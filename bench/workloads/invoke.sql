-- quota_ext.invoke: the whole path from an API key (authenticate, policy,
-- quotas, usage).  Keys have a random secret, so the script reads the key
-- of a random tenant from bench.keys in the same statement (see key_lookup)
\set i random(1, :ntenants)
SELECT quota_ext.invoke((SELECT api_key FROM bench.keys WHERE i = :i), 'bench-model', 1);
