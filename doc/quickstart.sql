-- tenancy quickstart
--
-- `make demo` runs this file with psql, as a superuser, against a throwaway
-- cluster started with shared_preload_libraries = 'tenancy,pg_cron'.
-- The statements marked "refused" are meant to fail: read their errors.
\set ON_ERROR_STOP 0
\pset footer off

\echo
\echo '== 1. Install the extension in a fresh database'
CREATE DATABASE tenancy_quickstart;
\c tenancy_quickstart
CREATE EXTENSION tenancy CASCADE;

-- Two login roles an application would use (roles are cluster-wide):
--   quickstart_app     an application server, trusted to act for any tenant
--   quickstart_client  a plain role that can do nothing until it presents an API key
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'quickstart_app') THEN
        CREATE ROLE quickstart_app LOGIN IN ROLE tenancy_app;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'quickstart_client') THEN
        CREATE ROLE quickstart_client LOGIN;
    END IF;
END
$$;

\echo
\echo '== 2. Two tenants and a protected table'
-- create_tenant returns the new tenant's id; psql keeps it in :acme_id, :globex_id.
SELECT tenancy.create_tenant('acme', 'Acme Corp', plan => 'pro') AS acme_id \gset
SELECT tenancy.create_tenant('globex', 'Globex Inc') AS globex_id \gset
SELECT slug, name, plan, tenancy.tenant_status(slug) AS status FROM tenancy.tenants ORDER BY slug;

CREATE TABLE public.orders (
    id      bigserial PRIMARY KEY,
    item    text NOT NULL,
    total   numeric NOT NULL
);
-- Adds tenant_id uuid NOT NULL DEFAULT tenancy.current_tenant_id(), an index,
-- forced row level security with a restrictive isolation policy, and guards.
SELECT tenancy.protect('public.orders');
GRANT SELECT, INSERT, UPDATE, DELETE ON public.orders TO quickstart_app, quickstart_client;
GRANT USAGE ON SEQUENCE public.orders_id_seq TO quickstart_app, quickstart_client;
SELECT relid, tenant_column FROM tenancy.protected_tables;

\echo
\echo '== 3. Each tenant sees only its own rows'
SET SESSION AUTHORIZATION quickstart_app;
SELECT tenancy.set_tenant('acme') IS NOT NULL AS acting_for_acme;
INSERT INTO public.orders (item, total) VALUES ('anvil', 120), ('rocket skates', 300);
SELECT tenancy.set_tenant('globex') IS NOT NULL AS acting_for_globex;
INSERT INTO public.orders (item, total) VALUES ('hammock', 45);
SELECT item, total FROM public.orders ORDER BY id;          -- globex: 1 row
SELECT tenancy.set_tenant('acme') IS NOT NULL AS acting_for_acme;
SELECT item, total FROM public.orders ORDER BY id;          -- acme: 2 rows
-- refused: a row for another tenant
INSERT INTO public.orders (item, total, tenant_id) VALUES ('stolen', 1, :'globex_id');
UPDATE public.orders SET total = total * 0.9;               -- touches acme's rows only
SELECT item, total FROM public.orders ORDER BY id;
RESET app.tenant_id;
-- refused: no tenant context, no data
SELECT count(*) FROM public.orders;
RESET SESSION AUTHORIZATION;

\echo
\echo '== 4. A forged context is refused'
SET SESSION AUTHORIZATION quickstart_client;
-- refused: a plain role cannot pick a tenant, whatever the route
SET app.tenant_id = :'acme_id';
SELECT set_config('app.tenant_id', :'acme_id', false);
SELECT count(*) FROM public.orders;                          -- refused: no context
RESET SESSION AUTHORIZATION;

\echo
\echo '== 5. A quota refusal'
-- globex may keep at most 2 orders, and make 3 calls of "reports" per day.
SELECT tenancy.set_tenant_quota('globex', 'rows:orders', 2);
SELECT tenancy.set_tenant_quota('globex', 'reports', 3, 'day');
SET SESSION AUTHORIZATION quickstart_app;
SELECT tenancy.set_tenant('globex') IS NOT NULL AS acting_for_globex;
INSERT INTO public.orders (item, total) VALUES ('deck chair', 80);
-- refused: a third order passes the quota, and nothing of the statement stays
INSERT INTO public.orders (item, total) VALUES ('parasol', 25), ('towel', 10);
SELECT count(*) AS globex_orders FROM public.orders;
SELECT tenancy.consume_quota('reports') AS reports_used;
SELECT tenancy.consume_quota('reports', 2) AS reports_used;
-- refused: the fourth report of the day
SELECT tenancy.consume_quota('reports');
SELECT resource, used, quota_limit, remaining, health
  FROM tenancy.quota_usage() ORDER BY resource;

\echo
\echo '== 6. A rate limit: 1 search per second, bursts of 2'
RESET SESSION AUTHORIZATION;
SELECT tenancy.set_tenant_rate_limit('globex', 'search', 1, 2);
SET SESSION AUTHORIZATION quickstart_app;
SELECT tenancy.set_tenant('globex') IS NOT NULL AS acting_for_globex;
SELECT tenancy.check_rate('search') AS first, tenancy.check_rate('search') AS second,
       tenancy.check_rate('search') AS third;
-- refused, with a HINT saying how long to wait
SELECT tenancy.enforce_rate('search');
RESET app.tenant_id;
RESET SESSION AUTHORIZATION;

\echo
\echo '== 7. An API-key login'
-- The key is shown once; only its SHA-256 is stored.
SELECT tenancy.create_api_key('acme', 'reporting', permissions => '{read}') AS api_key \gset
SELECT name, length(:'api_key') AS key_length, prefix = left(:'api_key', 11) AS prefix_shown,
       permissions, length(key_hash) AS sha256_bytes
  FROM tenancy.api_keys ORDER BY created_at;
SET SESSION AUTHORIZATION quickstart_client;
SELECT count(*) FROM tenancy.verify_api_key('tk_not-a-real-key');  -- no row, no error
SELECT tenancy.authenticate(:'api_key') IS NOT NULL AS authenticated;
SELECT item, total FROM public.orders ORDER BY id;           -- acme's rows
-- refused: the key has no write permission
INSERT INTO public.orders (item, total) VALUES ('unpaid', 1);
-- refused: a bound session cannot switch tenant
SELECT tenancy.set_tenant('globex');
SELECT tenancy.logout();
RESET SESSION AUTHORIZATION;
-- refused: a wrong key, one message for every cause
SELECT tenancy.authenticate('tk_0000000000000000000000000000000000000');

\echo
\echo '== 8. A usage report'
SET SESSION AUTHORIZATION quickstart_app;
SELECT tenancy.set_tenant('acme') IS NOT NULL AS acting_for_acme;
SELECT tenancy.record_usage('api_requests', 25);
SELECT tenancy.record_usage('emails_sent', 3);
RESET app.tenant_id;
RESET SESSION AUTHORIZATION;
SELECT tenancy.rollup_usage() > 0 AS folded_something;
SELECT resource, sum(amount) AS amount
  FROM tenancy.usage('acme', now() - interval '1 day', now() + interval '1 day', 'day')
 GROUP BY resource ORDER BY resource;

\echo
\echo '== 9. What an operator sees'
SELECT action, count(*) FROM tenancy.audit_log GROUP BY action ORDER BY min(id);
SELECT metric, labels, value FROM tenancy.stats
 WHERE metric IN ('tenancy_tenants', 'tenancy_api_keys_active') ORDER BY metric, labels::text;

\c postgres
DROP DATABASE tenancy_quickstart;
