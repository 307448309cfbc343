-- ceiling: one durable single-row update plus one insert, random row of N
\set id random(1, :ntenants)
WITH u AS (UPDATE bench.counters SET used = used + 1 WHERE id = :id RETURNING id)
INSERT INTO bench.log (counter_id) SELECT id FROM u;
