-- the key lookup that invoke and auth_policy embed, alone (its overhead)
\set i random(1, :ntenants)
SELECT api_key FROM bench.keys WHERE i = :i;
