-- point: one row of the session's tenant (small tenant 0) by primary key.
\set k random(1, :small_rows)
\set id 2 * :small_tenants * :k
SELECT id, tenant_id, amount, note, created_at FROM bench_tenancy WHERE id = :id;
