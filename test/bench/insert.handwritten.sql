-- insert: one row for the session's tenant (small tenant 0), tenant_id from its default.
\set amount random(1, 10000)
INSERT INTO bench_handwritten (amount, note) VALUES (:amount, 'bench');
