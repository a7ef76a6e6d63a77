-- test/bench/setup-policy-forms.sql: an alternative form of the isolation
-- policy, measured beside what tenancy.protect() creates.
--
-- bench_tenancy_fn is protected like bench_tenancy, then its
-- tenancy_isolation policy is replaced by the plain function call
--   tenant_id = tenancy.current_tenant_id()
-- instead of the InitPlan form (SELECT tenancy.current_tenant_id()).  The
-- planner then estimates with the context's real value (the function is
-- STABLE) but calls the function once per row in a sequential scan.  See
-- doc/benchmarks.md.
\set ON_ERROR_STOP on
SET client_min_messages = warning;

CREATE TABLE bench_tenancy_fn (LIKE bench_plain INCLUDING DEFAULTS INCLUDING IDENTITY INCLUDING CONSTRAINTS);
ALTER TABLE bench_tenancy_fn ADD PRIMARY KEY (id);
INSERT INTO bench_tenancy_fn SELECT * FROM bench_plain;
SELECT setval(pg_get_serial_sequence('bench_tenancy_fn', 'id'), (SELECT max(id) FROM bench_plain));
CREATE INDEX ON bench_tenancy_fn (tenant_id);
SELECT tenancy.protect('bench_tenancy_fn');

BEGIN;
SELECT tenancy._ddl_bypass(true);
ALTER POLICY tenancy_isolation ON bench_tenancy_fn
    USING (tenant_id OPERATOR(pg_catalog.=) tenancy.current_tenant_id())
    WITH CHECK (tenant_id OPERATOR(pg_catalog.=) tenancy.current_tenant_id());
COMMIT;

GRANT SELECT, INSERT ON bench_tenancy_fn TO bench_app;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO bench_app;
VACUUM ANALYZE bench_tenancy_fn;
SELECT sum(pg_prewarm(c.oid)) AS blocks_prewarmed
  FROM pg_class c
 WHERE c.relname LIKE 'bench\_tenancy\_fn%' AND c.relkind IN ('r', 'i');
