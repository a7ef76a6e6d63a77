-- insert: one row for the session's tenant (small tenant 0).
\set amount random(1, 10000)
INSERT INTO bench_plain (tenant_id, amount, note) VALUES ('@SMALL0@', :amount, 'bench');
