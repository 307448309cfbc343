-- ceiling: the same on one hot row (one row lock per commit)
WITH u AS (UPDATE bench.counters SET used = used + 1 WHERE id = 1 RETURNING id)
INSERT INTO bench.log (counter_id) SELECT id FROM u;
