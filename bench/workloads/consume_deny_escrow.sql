-- over-subscription of a tenant with 16 escrow slots: its daily limit is far
-- below the demand; the check afterwards wants used = limit exactly
SELECT quota_ext.quota_consume(:denyescrow, 'bench-model', 1);
