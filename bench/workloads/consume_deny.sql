-- over-subscription: every client on tenant N+1, whose daily limit is far
-- below the demand; the check afterwards wants used = limit exactly
SELECT quota_ext.quota_consume(:denytenant, 'bench-model', 1);
