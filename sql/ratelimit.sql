-- Rate limits: token buckets in shared memory.  Rates here are tiny
-- (0.001 token a second) so that nothing refills while the test runs.
\set SHOW_CONTEXT never
SET client_min_messages = warning;
CREATE ROLE regress_rate_app IN ROLE tenancy_app;
SELECT tenancy.create_tenant('r-acme') IS NOT NULL AS acme,
       tenancy.create_tenant('r-beta') IS NOT NULL AS beta,
       tenancy.create_tenant('r-ent', plan => 'enterprise') IS NOT NULL AS ent;
RESET client_min_messages;

-- Setting limits: validation, defaults, audit.
SELECT tenancy.set_plan_rate_limit('free', 'search', 0.001, 3);
SELECT tenancy.set_plan_rate_limit('free', 'export', 2.5);           -- burst = ceil(2.5) = 3
SELECT tenancy.set_plan_rate_limit('free', 'tiny', 0.001);           -- burst = 1
SELECT tenancy.set_plan_rate_limit('free', 'search', 0);
SELECT tenancy.set_plan_rate_limit('free', 'search', -1);
SELECT tenancy.set_plan_rate_limit('free', 'search', 'NaN');
SELECT tenancy.set_plan_rate_limit('free', 'search', 'Infinity');
SELECT tenancy.set_plan_rate_limit('free', 'search', 1e10);
-- 1e9 is the largest rate (set and removed again: audited both times).
SELECT tenancy.set_plan_rate_limit('free', 'huge', 1e9);
SELECT per_second, burst FROM tenancy.plan_rate_limits WHERE resource = 'huge';
SELECT tenancy.set_plan_rate_limit('free', 'huge', NULL);
SELECT tenancy.set_plan_rate_limit('free', 'search', 1, 0);
SELECT tenancy.set_plan_rate_limit('free', '', 1);
SELECT tenancy.set_plan_rate_limit('enterprise', 'search', 1);
SELECT tenancy.set_plan_rate_limit('nope', 'search', 1);
SELECT tenancy.set_tenant_rate_limit('r-nobody', 'search', 1);
SELECT plan, resource, per_second, burst FROM tenancy.plan_rate_limits ORDER BY 1, 2;
SELECT action, target, details FROM tenancy.audit_log
 WHERE action LIKE 'rate_limit.%' ORDER BY id;

-- Taking tokens: three in the bucket, then refusals.
SELECT tenancy.set_tenant('r-acme') IS NOT NULL;
SELECT tokens, per_second, burst, retry_after_ms FROM tenancy.rate_status('search');
SELECT tenancy.check_rate('search') AS first, tenancy.check_rate('search', 2) AS second,
       tenancy.check_rate('search') AS third;
SELECT round(tokens::numeric, 2) AS tokens, burst,
       retry_after_ms BETWEEN 990000 AND 1000000 AS waits_a_long_time
  FROM tenancy.rate_status('search');
-- enforce_rate raises TQ002 with the wait in the HINT.
DO $$
BEGIN
    PERFORM tenancy.enforce_rate('search');
EXCEPTION WHEN SQLSTATE 'TQ002' THEN
    DECLARE
        m text; h text; d text;
    BEGIN
        GET STACKED DIAGNOSTICS m = MESSAGE_TEXT, h = PG_EXCEPTION_HINT, d = PG_EXCEPTION_DETAIL;
        RAISE NOTICE 'TQ002: % / % / hint ok: %', m, d, h ~ '^retry after [0-9]+ ms$';
    END;
END
$$;
-- A refusal is not transactional, nor is a take: a rolled back take
-- stays taken.
SELECT tenancy.set_tenant_rate_limit('r-beta', 'search', 0.001, 2);
SELECT tenancy.set_tenant_rate_limit('r-beta', 'bulk', 0.001, 2);
RESET app.tenant_id;
SELECT tenancy.set_tenant('r-beta') IS NOT NULL;
BEGIN;
SELECT tenancy.check_rate('search');
ROLLBACK;
SELECT tenancy.check_rate('search'), tenancy.check_rate('search');
-- A cost above the burst can never pass, even from a full bucket: it is
-- refused like any other request (false, nothing taken, the denial
-- counted), and enforce_rate's TQ002 says why.
SELECT round(tokens::numeric, 2) AS tokens, burst FROM tenancy.rate_status('bulk');
SELECT tenancy.check_rate('bulk', 3);
SELECT tenancy.enforce_rate('bulk', 3);
SELECT tenancy.enforce_rate('bulk', 2147483647);
SELECT round(tokens::numeric, 2) AS tokens, burst FROM tenancy.rate_status('bulk');
SELECT metric, labels, value FROM tenancy.stats
 WHERE metric = 'tenancy_rate_limited_total' AND labels ->> 'resource' = 'bulk';
SELECT resource, amount FROM tenancy.usage('r-beta', NULL, NULL) WHERE resource = 'rate_limited:bulk';
SELECT tenancy.check_rate('bulk', 2), tenancy.check_rate('bulk', 1);
-- A cost below 1 is an error.
SELECT tenancy.check_rate('search', 0);
SELECT tenancy.check_rate('search', NULL);
SELECT tenancy.enforce_rate('search', -1);
-- Buckets are per tenant, and r-beta's own limit overrides the plan's.
SELECT round(tokens::numeric, 2) AS tokens, burst FROM tenancy.rate_status('search');

-- No limit: always allowed, whatever the cost.
SELECT tenancy.check_rate('no-limit-here', 1000000);
SELECT tenancy.enforce_rate('no-limit-here');
SELECT tokens, per_second, burst, retry_after_ms FROM tenancy.rate_status('no-limit-here');
-- The enterprise plan has no limits.
RESET app.tenant_id;
SELECT tenancy.set_tenant('r-ent') IS NOT NULL;
SELECT tenancy.check_rate('search'), tenancy.check_rate('search'), tenancy.check_rate('search'),
       tenancy.check_rate('search');

-- A changed limit applies to the existing bucket at once.
RESET app.tenant_id;
SELECT tenancy.set_plan_rate_limit('free', 'tiny', 0.001, 5);
SELECT tenancy.set_tenant('r-acme') IS NOT NULL;
SELECT tenancy.check_rate('tiny', 5);
SELECT tenancy.check_rate('tiny');
-- A rate so small that the wait does not fit in bigint milliseconds waits
-- "forever" (the largest bigint), never a negative or tiny number.
RESET app.tenant_id;
SELECT tenancy.set_plan_rate_limit('free', 'glacial', 1e-300, 1);
SELECT tenancy.set_tenant('r-acme') IS NOT NULL;
SELECT tenancy.check_rate('glacial'), tenancy.check_rate('glacial');
SELECT retry_after_ms FROM tenancy.rate_status('glacial');
SELECT tenancy.enforce_rate('glacial');
RESET app.tenant_id;
SELECT tenancy.set_plan_rate_limit('free', 'glacial', NULL);
-- Removing it (per_second NULL) removes the limit.
RESET app.tenant_id;
SELECT tenancy.set_plan_rate_limit('free', 'tiny', NULL);
SELECT tenancy.set_tenant('r-acme') IS NOT NULL;
SELECT tenancy.check_rate('tiny');

-- Without a context: TN001.  The tenant argument of rate_status is for
-- administrators only.
RESET app.tenant_id;
\set VERBOSITY terse
SELECT tenancy.check_rate('search');
\set VERBOSITY default
SELECT burst FROM tenancy.rate_status('search', tenant => 'r-beta');
SET ROLE regress_rate_app;
SELECT tenancy.set_tenant('r-acme') IS NOT NULL;
SELECT burst FROM tenancy.rate_status('search', tenant => 'r-acme');
SELECT burst FROM tenancy.rate_status('search', tenant => 'r-beta');
SELECT burst FROM tenancy.rate_status('search', tenant => 'r-nobody');
SELECT tenancy.set_plan_rate_limit('free', 'search', 10);
RESET ROLE;
RESET app.tenant_id;

-- The size of the bucket table is a server setting.
SELECT name, setting, context FROM pg_settings WHERE name = 'tenancy.max_rate_buckets';

-- Clean up.
SET client_min_messages = warning;
DROP ROLE regress_rate_app;
SELECT tenancy.delete_tenant(t) FROM unnest(ARRAY['r-acme', 'r-beta', 'r-ent']) t;
SELECT tenancy.purge_tenant(t) FROM unnest(ARRAY['r-acme', 'r-beta', 'r-ent']) t;
DELETE FROM tenancy.plan_rate_limits;
