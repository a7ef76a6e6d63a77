-- agg: count and sum over every row of the session's tenant (the whale);
-- the table's isolation policy calls tenancy.current_tenant_id() directly
-- (setup-policy-forms.sql).
SELECT count(*), sum(amount) FROM bench_tenancy_fn;
