-- Quotas: limits, automatic resources (rows:<table>, storage_bytes,
-- api_keys), explicit counters with periods, check/consume/release,
-- quota_usage, and who may ask about whom.
\set SHOW_CONTEXT never
-- Quota-only deltas wait in shared memory until this session asks for them
-- to be written (tenancy._usage_flush()), so that what the ledger holds
-- does not depend on timing; the ledger section below shows the delay.
SET tenancy.quota_flush_delay = '60s';
SET client_min_messages = warning;
CREATE ROLE regress_quota_app IN ROLE tenancy_app;
CREATE ROLE regress_quota_admin IN ROLE tenancy_admin;
SELECT tenancy.create_tenant('q-acme') IS NOT NULL AS acme,
       tenancy.create_tenant('q-beta', plan => 'pro') IS NOT NULL AS beta,
       tenancy.create_tenant('q-ent', plan => 'enterprise') IS NOT NULL AS ent;
CREATE TABLE q_items (id serial PRIMARY KEY, body text);
SELECT tenancy.protect('q_items');
GRANT SELECT, INSERT, UPDATE, DELETE ON q_items TO PUBLIC;
GRANT USAGE ON SEQUENCE q_items_id_seq TO PUBLIC;
RESET client_min_messages;

-- The counting triggers are attached, enabled ALWAYS.
SELECT tgname, tgenabled FROM pg_trigger
 WHERE tgrelid = 'q_items'::regclass AND tgname LIKE 'tenancy\_quota%' ORDER BY 1;

-- Setting limits: validation.
SELECT tenancy.set_plan_quota('free', 'rows:q_items', 3);
SELECT tenancy.set_plan_quota('free', 'api_calls', 5, 'day');
SELECT tenancy.set_plan_quota('free', 'api_calls_total', -1);      -- negative
SELECT tenancy.set_plan_quota('free', 'api_calls', 5, 'week');     -- bad period
SELECT tenancy.set_plan_quota('free', 'rows:q_items', 3, 'day');   -- automatic: no period
SELECT tenancy.set_plan_quota('free', 'rows:no_such_table', 3);    -- no table
SELECT tenancy.set_plan_quota('free', '', 3);                      -- empty
SELECT tenancy.set_plan_quota('enterprise', 'api_calls', 3);       -- enterprise has no limits
SELECT tenancy.set_plan_quota('gold', 'api_calls', 3);             -- no such plan
SELECT tenancy.set_tenant_quota('q-nobody', 'api_calls', 3);       -- unknown tenant
-- rows:<table> is stored schema-qualified, whatever the caller's search_path.
SELECT plan, resource, quota_limit, period FROM tenancy.plan_quotas
 WHERE resource IN ('rows:public.q_items', 'api_calls') ORDER BY 1, 2;
SELECT action, target, details FROM tenancy.audit_log WHERE action LIKE 'quota.%' ORDER BY id;

-- rows:<table>: counted on INSERT, refused past the limit with TQ001, and
-- nothing of the refused statement remains.
SELECT tenancy.set_tenant('q-acme') IS NOT NULL;
INSERT INTO q_items (body) VALUES ('a'), ('b');
SELECT resource, allowed, used, quota_limit, remaining, health, reason
  FROM tenancy.check_quota('rows:q_items');
INSERT INTO q_items (body) SELECT 'bulk' || g FROM generate_series(1, 2) g;
SELECT count(*) FROM q_items;
INSERT INTO q_items (body) VALUES ('c');
SELECT resource, allowed, used, quota_limit, remaining, health, reason
  FROM tenancy.check_quota('rows:q_items');
INSERT INTO q_items (body) VALUES ('d');
\set VERBOSITY sqlstate
INSERT INTO q_items (body) VALUES ('d');
\set VERBOSITY default
-- DELETE gives room back at commit; UPDATE changes no row count.
DELETE FROM q_items WHERE body = 'a';
UPDATE q_items SET body = body || '!';
SELECT used FROM tenancy.check_quota('rows:q_items');
INSERT INTO q_items (body) VALUES ('e');
-- A rolled back insert is not counted; neither is a rolled back delete.
BEGIN;
DELETE FROM q_items WHERE body = 'e';
SELECT tenancy.consume_quota('api_calls', 1);
ROLLBACK;
SELECT resource, used FROM tenancy.quota_usage() ORDER BY 1;
-- At the limit, a delete makes room for an insert of the same transaction.
BEGIN;
DELETE FROM q_items WHERE body = 'e';
INSERT INTO q_items (body) VALUES ('e2');
INSERT INTO q_items (body) VALUES ('e3');
ROLLBACK;
-- ON CONFLICT DO NOTHING that skips counts nothing.
INSERT INTO q_items (id, body) SELECT id, 'dup' FROM q_items LIMIT 1 ON CONFLICT DO NOTHING;
SELECT used FROM tenancy.check_quota('rows:q_items');

-- storage_bytes is the sum of pg_column_size() of the tenant's values,
-- compressed and out-of-line values at their stored size.
RESET app.tenant_id;
SELECT tenancy.set_tenant('q-beta') IS NOT NULL;
INSERT INTO q_items (body) VALUES ('short'), (repeat('x', 100000)),
    ((SELECT string_agg(md5(g::text), '') FROM generate_series(1, 300) g));
UPDATE q_items SET body = body || 'more' WHERE body = 'short';
DELETE FROM q_items WHERE body LIKE 'short%' AND false;
SELECT (SELECT used FROM tenancy.check_quota('storage_bytes'))
     = (SELECT sum(coalesce(pg_column_size(id), 0) + coalesce(pg_column_size(tenant_id), 0)
                   + coalesce(pg_column_size(body), 0))
          FROM q_items WHERE tenant_id = tenancy.current_tenant_id()) AS storage_matches,
       (SELECT used FROM tenancy.check_quota('storage_bytes')) < 20000 AS compressed_counted_compressed;
SELECT used FROM tenancy.check_quota('rows:q_items');

-- Explicit counters: consume and release, in the period's window, undone
-- with their (sub)transaction.
RESET app.tenant_id;
SELECT tenancy.set_tenant('q-acme') IS NOT NULL;
SELECT tenancy.consume_quota('api_calls', 2);
SELECT tenancy.consume_quota('api_calls');
BEGIN;
SAVEPOINT s1;
SELECT tenancy.consume_quota('api_calls', 1);
ROLLBACK TO s1;
SAVEPOINT s2;
SELECT tenancy.consume_quota('api_calls', 1);
RELEASE s2;
COMMIT;
SELECT tenancy.consume_quota('api_calls', 2);                     -- 4 + 2 > 5
SELECT tenancy.consume_quota('api_calls', 1);
SELECT resource, used, quota_limit, remaining, health FROM tenancy.check_quota('api_calls');
-- At the limit, what this transaction gives back is room for itself at
-- once: check_quota's allowed and remaining say so, as consume_quota
-- grants it.
BEGIN;
SELECT tenancy.release_quota('api_calls', 1);
SELECT allowed, used, remaining, reason FROM tenancy.check_quota('api_calls');
SELECT tenancy.consume_quota('api_calls', 1);
SELECT allowed, used, remaining, reason FROM tenancy.check_quota('api_calls');
ROLLBACK;
-- (quota-only commits leave their deltas waiting in shared memory: write
-- them to the ledger now, to look at it; the ledger section below tests that)
SELECT FROM tenancy._usage_flush();
SELECT tenancy.release_quota('api_calls', 2);
SELECT tenancy.release_quota('api_calls', 100);                   -- never below 0
SELECT tenancy.consume_quota('unlimited_thing', 1000000);         -- no limit: counted
SELECT period_start = date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS day_window
  FROM tenancy.quota_ledger WHERE resource = 'api_calls' LIMIT 1;
-- Every period starts at a UTC boundary.
RESET app.tenant_id;
SELECT tenancy.set_tenant_quota('q-acme', 'per_' || p, 100, p)
  FROM unnest(ARRAY['minute', 'hour', 'day', 'month']) p;
SELECT tenancy.set_tenant('q-acme') IS NOT NULL;
SELECT tenancy.consume_quota('per_' || p, 1) FROM unnest(ARRAY['minute', 'hour', 'day', 'month']) p;
SELECT FROM tenancy._usage_flush();
SELECT l.resource,
       l.period_start = date_trunc(substr(l.resource, 5), l.period_start AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
           AS on_a_boundary,
       l.period_start <= now() AND l.period_start > now() - ('2 ' || substr(l.resource, 5))::interval
           AS recent_period
  FROM tenancy.quota_ledger l WHERE l.resource LIKE 'per\_%' ORDER BY 1;
-- (without their limits, these counters are running totals again, at 0:
-- nothing below depends on the clock)
RESET app.tenant_id;
SELECT tenancy.clear_tenant_quota('q-acme', 'per_' || p)
  FROM unnest(ARRAY['minute', 'hour', 'day', 'month']) p;
SELECT tenancy.set_tenant('q-acme') IS NOT NULL;
SELECT count(*) FROM tenancy.quota_usage() WHERE resource LIKE 'per\_%';
-- Wrong use.
SELECT tenancy.consume_quota('rows:q_items', 1);
SELECT tenancy.consume_quota('storage_bytes', 1);
SELECT tenancy.consume_quota('api_calls', -1);
SELECT tenancy.release_quota('api_keys', 1);
SELECT tenancy.check_quota(NULL);
SELECT tenancy.consume_quota(NULL);
BEGIN READ ONLY;
SELECT tenancy.consume_quota('api_calls');
ROLLBACK;
SELECT tenancy.release_quota('api_calls', NULL);

-- health follows tenancy.soft_limit_ratio.
SELECT tenancy.consume_quota('api_calls', 4);
SELECT used, health FROM tenancy.check_quota('api_calls');
SET tenancy.soft_limit_ratio = 0.9;
SELECT used, health FROM tenancy.check_quota('api_calls');
RESET tenancy.soft_limit_ratio;
SELECT allowed, reason FROM tenancy.check_quota('api_calls', 2);
-- Exactly at the ratio is warning: 7 of 100 at 0.07 and 56 of 100 at 0.56
-- (whose products 0.07 * 100 and 0.56 * 100 round above 7 and 56).
RESET app.tenant_id;
SELECT tenancy.create_tenant('q-ratio') IS NOT NULL AS ratio;
SELECT tenancy.set_tenant_quota('q-ratio', 'ratio_calls', 100);
SELECT tenancy.set_tenant('q-ratio') IS NOT NULL;
SET tenancy.soft_limit_ratio = 0.07;
SELECT tenancy.consume_quota('ratio_calls', 6);
SELECT used, quota_limit, health FROM tenancy.check_quota('ratio_calls');
SELECT tenancy.consume_quota('ratio_calls', 1);
SELECT used, quota_limit, health FROM tenancy.check_quota('ratio_calls');
SET tenancy.soft_limit_ratio = 0.56;
SELECT tenancy.consume_quota('ratio_calls', 48);
SELECT used, quota_limit, health FROM tenancy.check_quota('ratio_calls');
SELECT tenancy.consume_quota('ratio_calls', 1);
SELECT used, quota_limit, health FROM tenancy.check_quota('ratio_calls');
SELECT resource, used, health FROM tenancy.quota_usage();
RESET tenancy.soft_limit_ratio;
RESET app.tenant_id;
SELECT tenancy.delete_tenant('q-ratio'), tenancy.purge_tenant('q-ratio');

-- Changing a limit's period: usage is kept per period start, so the
-- counter of the new period holds only what was recorded with that same
-- start, and the old usage comes back with the old period (doc, "Changing
-- a limit's period").
SELECT tenancy.create_tenant('q-period') IS NOT NULL AS period;
SELECT tenancy.tenant_id('q-period') AS period_id \gset
SELECT tenancy.set_tenant_quota('q-period', 'reports', 10);          -- running total
SELECT tenancy.set_tenant('q-period') IS NOT NULL;
SELECT tenancy.consume_quota('reports', 4);
RESET app.tenant_id;
-- running total -> day: today's counter starts at 0, a whole limit free
SELECT tenancy.set_tenant_quota('q-period', 'reports', 10, 'day');
SELECT used, remaining FROM tenancy.check_quota('reports', tenant => 'q-period');
SELECT tenancy.set_tenant('q-period') IS NOT NULL;
SELECT tenancy.consume_quota('reports', 10);
RESET app.tenant_id;
-- day -> month: the month's counter starts at 0, except on the first day
-- of a month (UTC), whose start is the month's
SELECT tenancy.set_tenant_quota('q-period', 'reports', 10, 'month');
SELECT used = CASE WHEN date_trunc('day', now() AT TIME ZONE 'UTC')
                      = date_trunc('month', now() AT TIME ZONE 'UTC')
                   THEN 10 ELSE 0 END AS as_documented
  FROM tenancy.check_quota('reports', tenant => 'q-period');
-- back to a running total: the old total, without what was consumed
-- under the period
SELECT tenancy.set_tenant_quota('q-period', 'reports', 10);
SELECT used, remaining FROM tenancy.check_quota('reports', tenant => 'q-period');
-- back to day, the same day: today's usage again
SELECT tenancy.set_tenant_quota('q-period', 'reports', 10, 'day');
SELECT used, remaining FROM tenancy.check_quota('reports', tenant => 'q-period');
-- the ledger keeps each usage under its own period start
SELECT FROM tenancy._usage_flush();
SELECT period_start = '-infinity' AS running_total,
       period_start = date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS today,
       sum(delta) AS usage
  FROM tenancy.quota_ledger
 WHERE tenant_id = :'period_id' AND resource = 'reports'
 GROUP BY period_start ORDER BY period_start;
SELECT tenancy.delete_tenant('q-period'), tenancy.purge_tenant('q-period');

-- A tenant's own limit overrides its plan's; clearing it restores it.
RESET app.tenant_id;
SELECT tenancy.set_tenant_quota('q-acme', 'api_calls', 100, 'day');
SELECT quota_limit FROM tenancy.check_quota('api_calls', tenant => 'q-acme');
SELECT tenancy.set_tenant_quota('q-acme', 'api_calls', NULL);       -- explicitly unlimited
SELECT quota_limit, allowed FROM tenancy.check_quota('api_calls', 1000, tenant => 'q-acme');
SELECT tenancy.clear_tenant_quota('q-acme', 'api_calls');
SELECT quota_limit FROM tenancy.check_quota('api_calls', tenant => 'q-acme');
-- A limit changed and rolled back to a savepoint is not kept by the session.
BEGIN;
SAVEPOINT before_limit;
SELECT tenancy.set_tenant_quota('q-acme', 'api_calls', 100, 'day');
SELECT quota_limit FROM tenancy.check_quota('api_calls', tenant => 'q-acme');
ROLLBACK TO before_limit;
SELECT quota_limit FROM tenancy.check_quota('api_calls', tenant => 'q-acme');
COMMIT;
-- A plan change takes effect at once.
SELECT tenancy.set_plan_quota('pro', 'api_calls', 1000, 'day');
SELECT tenancy.update_tenant('q-acme', plan => 'pro');
SELECT quota_limit FROM tenancy.check_quota('api_calls', tenant => 'q-acme');
SELECT tenancy.update_tenant('q-acme', plan => 'free');
-- The enterprise plan has no limits, whatever the other plans say.
SELECT tenancy.set_plan_quota('free', 'rows:q_items', 0);
SELECT tenancy.update_tenant('q-ent', plan => 'enterprise');
SELECT tenancy.set_tenant('q-ent') IS NOT NULL;
INSERT INTO q_items (body) VALUES ('ent');
SELECT resource, allowed, used, quota_limit, health FROM tenancy.quota_usage();
SELECT tenancy.set_plan_quota('free', 'rows:q_items', 3);

-- The tenant argument: administrators only; others get 42501 for any
-- tenant not their own, existing or not.
RESET app.tenant_id;
SET ROLE regress_quota_app;
SELECT tenancy.set_tenant('q-acme') IS NOT NULL;
SELECT used FROM tenancy.check_quota('rows:q_items');
SELECT used FROM tenancy.check_quota('rows:q_items', tenant => 'q-acme');
SELECT used FROM tenancy.check_quota('rows:q_items', tenant => 'q-beta');
SELECT used FROM tenancy.check_quota('rows:q_items', tenant => 'q-nobody');
SELECT count(*) FROM tenancy.quota_usage('q-beta');
SELECT tenancy.set_plan_quota('free', 'api_calls', 1);
SELECT count(*) FROM tenancy.quota_ledger;
RESET ROLE;
RESET app.tenant_id;
SET ROLE regress_quota_admin;
SELECT resource, used FROM tenancy.quota_usage('q-beta') ORDER BY 1;
SELECT tenancy.set_tenant_quota('q-beta', 'api_calls', 7);
RESET ROLE;
\set VERBOSITY terse
SELECT used FROM tenancy.check_quota('rows:q_items');               -- no context: TN001
\set VERBOSITY default

SELECT tenancy.tenant_id('q-acme') AS acme_id, tenancy.tenant_id('q-ent') AS ent_id \gset
-- api_keys: the tenant's unrevoked keys, checked by _require_quota().
SELECT tenancy.set_plan_quota('free', 'api_keys', 2);
INSERT INTO tenancy.api_keys (tenant_id, name, prefix, key_hash)
SELECT tenancy.tenant_id('q-acme'), 'k' || g, 'tk_0000000' || g, sha256(g::text::bytea)
  FROM generate_series(1, 3) g;
UPDATE tenancy.api_keys SET revoked_at = now() WHERE name = 'k3';
SELECT tenancy._require_quota(tenancy.tenant_id('q-acme'), 'api_keys', 1);
UPDATE tenancy.api_keys SET revoked_at = now() WHERE name = 'k2';
SELECT tenancy._require_quota(tenancy.tenant_id('q-acme'), 'api_keys', 1);
SELECT resource, used, quota_limit FROM tenancy.check_quota('api_keys', tenant => 'q-acme');

-- quota_usage lists every resource with a limit or usage.
SELECT resource, allowed, used, quota_limit, remaining, health
  FROM tenancy.quota_usage('q-acme') ORDER BY resource;

-- TRUNCATE by an administrator gives every tenant's rows back, including
-- rows its own transaction inserted before it.
BEGIN;
INSERT INTO q_items (tenant_id, body) VALUES (:'ent_id', 'before truncate'), (:'ent_id', 'also');
TRUNCATE q_items;
INSERT INTO q_items (tenant_id, body) VALUES (:'ent_id', 'after truncate');
COMMIT;
SELECT t, resource, used FROM unnest(ARRAY['q-acme', 'q-ent']) t, tenancy.quota_usage(t)
 WHERE resource = 'rows:public.q_items' ORDER BY 1;
-- A TRUNCATE rolled back to a savepoint gives nothing back.
BEGIN;
INSERT INTO q_items (tenant_id, body) VALUES (:'ent_id', 'kept'), (:'ent_id', 'kept too');
SAVEPOINT before_truncate;
TRUNCATE q_items;
ROLLBACK TO before_truncate;
COMMIT;
SELECT (SELECT count(*) FROM q_items WHERE tenant_id = :'ent_id') AS ent_rows,
       (SELECT used FROM tenancy.check_quota('rows:q_items', tenant => 'q-ent')) AS ent_used;
TRUNCATE q_items;
SELECT resource, used FROM tenancy.quota_usage('q-acme') WHERE resource IN ('rows:public.q_items', 'storage_bytes');
SELECT resource, used FROM tenancy.quota_usage('q-beta') WHERE resource IN ('rows:public.q_items', 'storage_bytes');

-- A partitioned table counts for the table the user protected; a
-- truncated or dropped partition gives its share back.
CREATE TABLE q_events (id int, at int) PARTITION BY RANGE (at);
CREATE TABLE q_events_1 PARTITION OF q_events FOR VALUES FROM (0) TO (10);
CREATE TABLE q_events_2 PARTITION OF q_events FOR VALUES FROM (10) TO (20);
SELECT tenancy.protect('q_events');
SELECT tenancy.set_tenant('q-acme') IS NOT NULL;
INSERT INTO q_events VALUES (1, 1), (2, 15), (3, 16);
SELECT used FROM tenancy.check_quota('rows:q_events');
RESET app.tenant_id;
TRUNCATE q_events_2;
SELECT used FROM tenancy.check_quota('rows:public.q_events', tenant => 'q-acme');
DROP TABLE q_events;
SELECT count(*) FROM tenancy.quota_usage('q-acme') WHERE resource LIKE 'rows:public.q_events';

-- The owner of a protected partitioned table may add partitions; a
-- table attached with rows in it brings them into the count.
CREATE ROLE regress_quota_owner;
GRANT CREATE ON SCHEMA public TO regress_quota_owner;
-- (the row guard's EXECUTE is the protected-tables area's business)
GRANT EXECUTE ON FUNCTION tenancy._row_guard() TO regress_quota_owner;
SELECT tenancy.tenant_id('q-acme') AS acme_id \gset
SET ROLE regress_quota_owner;
CREATE TABLE q_owned (id int, tenant_id uuid, at int) PARTITION BY RANGE (at);
CREATE TABLE q_owned_1 PARTITION OF q_owned FOR VALUES FROM (0) TO (10);
RESET ROLE;
SELECT tenancy.protect('q_owned');
SET ROLE regress_quota_owner;
CREATE TABLE q_owned_2 PARTITION OF q_owned FOR VALUES FROM (10) TO (20);
CREATE TABLE q_owned_3 (id int, tenant_id uuid NOT NULL, at int);
INSERT INTO q_owned_3 VALUES (1, :'acme_id', 25), (2, :'acme_id', 26);
ALTER TABLE q_owned ATTACH PARTITION q_owned_3 FOR VALUES FROM (20) TO (30);
RESET ROLE;
SELECT tgrelid::regclass, tgname FROM pg_trigger
 WHERE tgrelid::regclass::text LIKE 'q_owned%' AND tgname LIKE 'tenancy\_quota%' ORDER BY 1, 2;
SELECT used FROM tenancy.check_quota('rows:q_owned', tenant => 'q-acme');
-- An unprivileged role's writes are counted (the ledger is written for it).
GRANT SELECT, INSERT, DELETE ON q_owned TO regress_quota_app;
SET ROLE regress_quota_app;
SELECT tenancy.set_tenant('q-acme') IS NOT NULL;
INSERT INTO q_owned (id, at) VALUES (3, 5), (4, 15);
DELETE FROM q_owned WHERE id = 1;
SELECT count(*), (SELECT used FROM tenancy.check_quota('rows:q_owned')) AS used FROM q_owned;
RESET ROLE;
RESET app.tenant_id;
DROP TABLE q_owned;
REVOKE CREATE ON SCHEMA public FROM regress_quota_owner;
REVOKE EXECUTE ON FUNCTION tenancy._row_guard() FROM regress_quota_owner;
DROP ROLE regress_quota_owner;

-- A table protected with rows already in it counts them.
CREATE TABLE q_legacy (id int);
INSERT INTO q_legacy SELECT generate_series(1, 4);
SELECT tenancy.protect('q_legacy', backfill_tenant => 'q-beta');
SELECT used FROM tenancy.check_quota('rows:q_legacy', tenant => 'q-beta');

-- Deleting and purging a tenant removes its usage.
SELECT tenancy.tenant_id('q-beta') AS beta_id \gset
SELECT count(*) > 0 AS has_usage FROM tenancy.quota_ledger WHERE tenant_id = :'beta_id';
SELECT tenancy.delete_tenant('q-beta');
SELECT tenancy.purge_tenant('q-beta');
SELECT count(*) AS usage_left FROM tenancy.quota_ledger WHERE tenant_id = :'beta_id';

-- Compaction folds the ledger and keeps every total.
SELECT resource, used FROM tenancy.quota_usage('q-acme') ORDER BY 1;
SELECT tenancy._quota_compact() > 0 AS folded;
SELECT count(*) = count(DISTINCT (tenant_id, resource, period_start, relid)) AS one_row_each
  FROM tenancy.quota_ledger;
SELECT resource, used FROM tenancy.quota_usage('q-acme') ORDER BY 1;

-- The ledger.  A transaction that changed nothing but quota usage leaves
-- its net deltas waiting in shared memory (visible to every session at
-- once, test/isolation/specs/quota_deferred.spec), and a later commit
-- writes them, one row per counter whose net change is not zero (relid
-- NULL for an explicit counter).
-- (nothing waits now)
SELECT FROM tenancy._usage_flush();
SELECT tenancy.set_tenant('q-acme') IS NOT NULL;
BEGIN;
SELECT tenancy.consume_quota('ledger_a', 3);
SELECT tenancy.consume_quota('ledger_b', 2);
SELECT tenancy.release_quota('ledger_b', 2);                      -- nets to zero
COMMIT;
SELECT count(*) AS in_ledger FROM tenancy.quota_ledger WHERE resource LIKE 'ledger\_%';
SELECT resource, used FROM tenancy.quota_usage() WHERE resource LIKE 'ledger\_%';
BEGIN;
SELECT FROM tenancy._usage_flush();
SELECT now() AS started \gset
COMMIT;
SELECT resource, period_start, relid, delta, recorded_at = :'started' AS at_flush
  FROM tenancy.quota_ledger WHERE resource LIKE 'ledger\_%' ORDER BY resource;
-- A flush that rolls back puts the deltas back: quota_deferred.spec.
-- With tenancy.quota_flush_delay = 0 the transaction writes its own rows,
-- inside the transaction, recorded at its start.
SET tenancy.quota_flush_delay = 0;
BEGIN;
SELECT tenancy.consume_quota('ledger_a', 1);
SELECT now() AS started \gset
COMMIT;
SELECT delta, recorded_at = :'started' AS at_start
  FROM tenancy.quota_ledger WHERE resource = 'ledger_a' ORDER BY recorded_at DESC LIMIT 1;
-- Such a transaction (it may commit without waiting for the WAL flush:
-- test/t/034_quota_commit.pl observes that) leaves synchronous_commit as
-- it was.
SELECT tenancy.consume_quota('ledger_a');
SHOW synchronous_commit;
SET synchronous_commit = remote_apply;
SELECT tenancy.release_quota('ledger_a', 2);
SHOW synchronous_commit;
RESET synchronous_commit;
BEGIN;
SET LOCAL synchronous_commit = local;
SELECT tenancy.consume_quota('ledger_a', 5);
COMMIT;
SHOW synchronous_commit;
SET tenancy.quota_flush_delay = '60s';
-- tenancy.synchronous_quota_commit on: written by its own commit too.
SET tenancy.synchronous_quota_commit = on;
SELECT tenancy.release_quota('ledger_a', 1);
RESET tenancy.synchronous_quota_commit;
SELECT used FROM tenancy.check_quota('ledger_a');
SELECT array_agg(delta ORDER BY delta) AS deltas, sum(delta)
  FROM tenancy.quota_ledger WHERE resource = 'ledger_a';
-- A transaction that writes a table too appends its rows itself: its rows
-- and its usage commit together, or neither does.
CREATE TABLE q_plain (n int);
BEGIN;
INSERT INTO q_plain VALUES (1);
SELECT tenancy.consume_quota('ledger_a', 4);
COMMIT;
BEGIN;
INSERT INTO q_plain VALUES (2);
SELECT tenancy.consume_quota('ledger_a', 100);
ROLLBACK;
SELECT array_agg(n) AS rows, (SELECT used FROM tenancy.check_quota('ledger_a')) AS used,
       (SELECT sum(delta) FROM tenancy.quota_ledger WHERE resource = 'ledger_a') AS in_ledger
  FROM q_plain;
-- A transaction made read-only after consuming cannot write the ledger: its
-- COMMIT fails and nothing is counted.
BEGIN;
SELECT tenancy.consume_quota('ledger_a', 1);
SET TRANSACTION READ ONLY;
COMMIT;
SELECT used FROM tenancy.check_quota('ledger_a');
DROP TABLE q_plain;

-- Only tenancy's own counting triggers on protected tables count.  Anyone
-- may attach tenancy._quota_count() to a table of their own (PostgreSQL
-- checks EXECUTE when it clones a trigger onto a partition, so PUBLIC has
-- it): such a trigger must not change any tenant's usage, nor reveal it.
CREATE ROLE regress_quota_nobody;
GRANT CREATE ON SCHEMA public TO regress_quota_nobody;
SELECT used AS acme_storage_before FROM tenancy.check_quota('storage_bytes', 1, 'q-acme') \gset
SET ROLE regress_quota_nobody;
CREATE TABLE q_evil (tenant_id uuid, v text);
INSERT INTO q_evil VALUES (:'acme_id', repeat('x', 300));
CREATE TRIGGER t AFTER INSERT OR DELETE ON q_evil
    FOR EACH ROW EXECUTE FUNCTION tenancy._quota_count('tenant_id');
DELETE FROM q_evil;                                   -- 42501
INSERT INTO q_evil VALUES (:'acme_id', 'y');          -- 42501
CREATE TEMP TABLE q_evil_tmp (tenant_id uuid);
CREATE TRIGGER tenancy_quota AFTER INSERT ON q_evil_tmp
    FOR EACH ROW EXECUTE FUNCTION tenancy._quota_count('tenant_id');
INSERT INTO q_evil_tmp VALUES (:'acme_id');           -- 42501, even by that name
CREATE TRIGGER tenancy_quota_truncate AFTER TRUNCATE ON q_evil_tmp
    FOR EACH STATEMENT EXECUTE FUNCTION tenancy._quota_truncate();   -- not PUBLIC's
DROP TABLE q_evil, q_evil_tmp;
RESET ROLE;
REVOKE CREATE ON SCHEMA public FROM regress_quota_nobody;
DROP ROLE regress_quota_nobody;
SELECT used = :acme_storage_before AS acme_storage_unchanged
  FROM tenancy.check_quota('storage_bytes', 1, 'q-acme');
SELECT count(*) AS evil_counters FROM tenancy.quota_usage('q-acme') WHERE resource LIKE 'rows:%evil%';
-- A second counting trigger on a protected table would count rows twice:
-- it fails too.
CREATE TRIGGER q_count_twice AFTER INSERT ON q_items
    FOR EACH ROW EXECUTE FUNCTION tenancy._quota_count('tenant_id');
SELECT tenancy.set_tenant('q-acme') IS NOT NULL;
INSERT INTO q_items (body) VALUES ('twice');          -- 42501
DROP TRIGGER q_count_twice ON q_items;
RESET app.tenant_id;

-- Amounts at the edge of bigint: no overflow decides a check.
SELECT tenancy.create_tenant('q-edge') IS NOT NULL;
SELECT tenancy.set_tenant('q-edge') IS NOT NULL;
SELECT tenancy.set_tenant_quota('q-edge', 'edge', 10);
SELECT tenancy.consume_quota('edge', 5);
SELECT allowed, used, quota_limit FROM tenancy.check_quota('edge', 9223372036854775807);
SELECT tenancy.consume_quota('edge', 9223372036854775807);   -- TQ001
-- An unlimited counter refuses to go past bigint (22003) rather than wrap,
-- across transactions as within one.
SELECT tenancy.consume_quota('edge_unlimited', 9223372036854775807);
SELECT tenancy.consume_quota('edge_unlimited', 1);            -- 22003
SELECT used FROM tenancy.check_quota('edge_unlimited');
-- check_quota agrees with consume_quota: not allowed, and says why.
SELECT allowed, remaining, reason FROM tenancy.check_quota('edge_unlimited', 1);
SELECT allowed FROM tenancy.check_quota('edge_unlimited', 0);
SELECT tenancy.release_quota('edge_unlimited', 9223372036854775807);
SELECT tenancy.release_quota('edge', -1);                     -- 22023, hint: consume
-- The row meters of usage() name the table as regclass::text prints it in
-- the caller's search_path, as quota results do; a dropped table's keep
-- the schema-qualified name they are stored under.
CREATE SCHEMA q_meter;
CREATE TABLE q_meter.log (id serial PRIMARY KEY, tenant_id uuid, body text);
SELECT tenancy.protect('q_meter.log');
INSERT INTO q_meter.log (body) VALUES ('a'), ('b');
DELETE FROM q_meter.log WHERE body = 'a';
SELECT resource, amount FROM tenancy.usage('q-edge', NULL, NULL) WHERE resource LIKE 'rows_%' ORDER BY 1;
SET search_path = q_meter, public;
SELECT resource, amount FROM tenancy.usage('q-edge', NULL, NULL) WHERE resource LIKE 'rows_%' ORDER BY 1;
-- A name recorded by hand that prints the same is the same resource.
SELECT tenancy.record_usage('rows_inserted:log', 5);
SELECT resource, amount FROM tenancy.usage('q-edge', NULL, NULL) WHERE resource LIKE 'rows_%' ORDER BY 1;
RESET search_path;
BEGIN;
SELECT tenancy._usage_flush();
SELECT DISTINCT resource FROM tenancy.usage_events
 WHERE tenant_id = tenancy.tenant_id('q-edge') AND resource LIKE 'rows_%' ORDER BY 1;
ROLLBACK;
DROP TABLE q_meter.log;
DROP SCHEMA q_meter;
SELECT resource, amount FROM tenancy.usage('q-edge', NULL, NULL) WHERE resource LIKE 'rows_%' ORDER BY 1;
-- Bad rows:<table> names are 22023 like unknown tables, whatever the syntax.
SELECT tenancy.check_quota('rows:');
SELECT tenancy.check_quota('rows:"unterminated');
SELECT tenancy.check_quota('rows:q_items; drop table x');
SELECT tenancy.check_quota('rows:a.b.c.d');
SELECT tenancy.check_quota('rows:otherdb.public.q_items');
SELECT resource FROM tenancy.check_quota('rows:' || current_database() || '.public.q_items');
RESET app.tenant_id;
-- A tenancy_app session without a context asking about a named tenant is
-- told it may not (42501), not that it has no context.
SET ROLE regress_quota_app;
SELECT tenancy.check_quota('edge', 1, 'q-edge');
RESET ROLE;
-- quota_usage() names tables in schemas the caller may not use.
CREATE SCHEMA q_private;
CREATE TABLE q_private.t (id int);
SELECT tenancy.protect('q_private.t');
SET ROLE regress_quota_app;
SELECT tenancy.set_tenant('q-edge') IS NOT NULL;
SELECT resource, used FROM tenancy.quota_usage() WHERE resource LIKE 'rows:q_private%';
RESET ROLE;
RESET app.tenant_id;
SELECT tenancy.set_tenant('q-edge') IS NOT NULL;
INSERT INTO q_private.t VALUES (1);
RESET app.tenant_id;
SET ROLE regress_quota_app;
SELECT tenancy.set_tenant('q-edge') IS NOT NULL;
SELECT resource, used FROM tenancy.quota_usage() WHERE resource LIKE 'rows:q_private%';
RESET ROLE;
RESET app.tenant_id;
DROP SCHEMA q_private CASCADE;

-- storage_bytes follows values that ALTER TABLE changes behind the row
-- triggers: a column added with a default (a volatile one here, so that
-- the values are stored and pg_column_size() reports them as stored),
-- retyped, or dropped.
CREATE TABLE q_alter (id int, tenant_id uuid NOT NULL);
SELECT tenancy.protect('q_alter');
SELECT tenancy.set_tenant('q-edge') IS NOT NULL;
INSERT INTO q_alter (id) SELECT g FROM generate_series(1, 100) g;
RESET app.tenant_id;
-- (the tenant's usage in other tables, to compare with this table's truth)
SELECT used - (SELECT sum(pg_column_size(id) + pg_column_size(tenant_id)) FROM q_alter) AS others
  FROM tenancy.check_quota('storage_bytes', 1, 'q-edge') \gset
ALTER TABLE q_alter ADD COLUMN pad text DEFAULT repeat('z', 100 + (random() * 0)::int);
SELECT used - :others AS counted,
       (SELECT sum(pg_column_size(id) + pg_column_size(tenant_id) + pg_column_size(pad)) FROM q_alter) AS stored
  FROM tenancy.check_quota('storage_bytes', 1, 'q-edge');
ALTER TABLE q_alter ALTER COLUMN id TYPE bigint;
SELECT used - :others AS counted,
       (SELECT sum(pg_column_size(id) + pg_column_size(tenant_id) + pg_column_size(pad)) FROM q_alter) AS stored
  FROM tenancy.check_quota('storage_bytes', 1, 'q-edge');
BEGIN;
ALTER TABLE q_alter DROP COLUMN pad;
SELECT used - :others AS counted_in_transaction,
       (SELECT sum(pg_column_size(id) + pg_column_size(tenant_id)) FROM q_alter) AS stored
  FROM tenancy.check_quota('storage_bytes', 1, 'q-edge');
ROLLBACK;
SELECT used - :others AS counted_after_rollback FROM tenancy.check_quota('storage_bytes', 1, 'q-edge');
ALTER TABLE q_alter DROP COLUMN pad;
SELECT used - :others AS counted,
       (SELECT sum(pg_column_size(id) + pg_column_size(tenant_id)) FROM q_alter) AS stored,
       (SELECT used FROM tenancy.check_quota('rows:q_alter', 1, 'q-edge')) AS rows_counted
  FROM tenancy.check_quota('storage_bytes', 1, 'q-edge');
DROP TABLE q_alter;
-- rows:<table> follows its table through every rename: ALTER TABLE ...
-- RENAME TO, SET SCHEMA, ALTER SCHEMA ... RENAME TO, for a plain and a
-- partitioned table (rows:<root>; renaming a partition changes nothing).
-- Usage and limits move in the renaming transaction: a rollback, or a
-- rollback to a savepoint, leaves the old names.
SELECT tenancy.create_tenant('q-ren') IS NOT NULL;
CREATE TABLE q_r1 (tenant_id uuid, v text);
SELECT tenancy.protect('q_r1');
SELECT tenancy.set_tenant_quota('q-ren', 'rows:q_r1', 5);
SELECT tenancy.set_tenant('q-ren') IS NOT NULL;
INSERT INTO q_r1 (v) VALUES ('a'), ('b');
ALTER TABLE q_r1 RENAME TO q_r2;
SELECT resource, used, quota_limit FROM tenancy.check_quota('rows:q_r2');
INSERT INTO q_r2 (v) VALUES ('c'), ('d');
SELECT (SELECT count(*) FROM q_r2) AS count, resource, used, quota_limit
  FROM tenancy.quota_usage() WHERE resource LIKE 'rows:%q\_r%' ORDER BY 2;
\set VERBOSITY sqlstate
INSERT INTO q_r2 (v) VALUES ('e'), ('f');                 -- the limit followed
\set VERBOSITY default
BEGIN;
INSERT INTO q_r2 (v) VALUES ('e');
ALTER TABLE q_r2 RENAME TO q_r3;
SELECT resource, used, quota_limit FROM tenancy.check_quota('rows:q_r3');
\set VERBOSITY sqlstate
INSERT INTO q_r3 (v) VALUES ('f');                        -- counted under the new name
\set VERBOSITY default
ROLLBACK;
SELECT resource, used, quota_limit FROM tenancy.check_quota('rows:q_r2');
BEGIN;
INSERT INTO q_r2 (v) VALUES ('e');                        -- this transaction's own row
SAVEPOINT before_rename;
ALTER TABLE q_r2 RENAME TO q_r3;
SELECT resource, used, quota_limit FROM tenancy.check_quota('rows:q_r3');
ROLLBACK TO before_rename;
SELECT resource, used, quota_limit FROM tenancy.check_quota('rows:q_r2');
SAVEPOINT over_the_limit;
\set VERBOSITY sqlstate
INSERT INTO q_r2 (v) VALUES ('f');                        -- the limit is back too
\set VERBOSITY default
ROLLBACK TO over_the_limit;
COMMIT;
SELECT (SELECT count(*) FROM q_r2) AS count, resource, used, quota_limit
  FROM tenancy.quota_usage() WHERE resource LIKE 'rows:%q\_r%' ORDER BY 2;
-- SET SCHEMA, then a rename of the schema (which core does without
-- locking its tables: tenancy locks the protected ones, and their
-- partitions, until the renaming transaction ends).
CREATE SCHEMA q_ren_a;
ALTER TABLE q_r2 SET SCHEMA q_ren_a;
SELECT resource, used, quota_limit FROM tenancy.check_quota('rows:q_ren_a.q_r2');
ALTER SCHEMA q_ren_a RENAME TO q_ren_b;
SELECT (SELECT count(*) FROM q_ren_b.q_r2) AS count, resource, used, quota_limit
  FROM tenancy.quota_usage() WHERE resource LIKE 'rows:%q\_r%' ORDER BY 2;
-- A partitioned table, with a plan's limit; one partition in that schema.
CREATE TABLE q_rp (tenant_id uuid, at int) PARTITION BY RANGE (at);
CREATE TABLE q_rp_1 PARTITION OF q_rp FOR VALUES FROM (0) TO (10);
CREATE TABLE q_ren_b.q_rp_2 PARTITION OF q_rp FOR VALUES FROM (10) TO (20);
SELECT tenancy.protect('q_rp');
SELECT tenancy.set_plan_quota('free', 'rows:q_rp', 4);
INSERT INTO q_rp (at) VALUES (1), (11), (12);
ALTER TABLE q_rp_1 RENAME TO q_rp_one;                   -- a partition: nothing changes
SELECT resource, used, quota_limit FROM tenancy.check_quota('rows:q_rp');
ALTER TABLE q_rp RENAME TO q_rq;
ALTER SCHEMA q_ren_b RENAME TO q_ren_c;                  -- q_r2, and a partition of q_rq
CREATE SCHEMA q_ren_d;
ALTER TABLE q_rq SET SCHEMA q_ren_d;
INSERT INTO q_ren_c.q_rp_2 (at) VALUES (13);
SELECT (SELECT count(*) FROM q_ren_d.q_rq) AS count, resource, used, quota_limit
  FROM tenancy.quota_usage() WHERE resource LIKE 'rows:%q\_r%' ORDER BY 2;
\set VERBOSITY sqlstate
INSERT INTO q_rp_one (at) VALUES (2);                     -- the plan's limit followed
\set VERBOSITY default
-- A table replaced in one transaction (made, filled, the old one dropped,
-- the new one renamed): the usage and limits under the name are the new
-- table's; a limit left under the new name for the same tenant or plan
-- gives way to the table's own.
BEGIN;
CREATE TABLE q_rnew (tenant_id uuid, v text);
SELECT tenancy.protect('q_rnew');
SELECT tenancy.set_tenant_quota('q-ren', 'rows:q_rnew', 8);
INSERT INTO q_rnew (v) SELECT v FROM q_ren_c.q_r2 LIMIT 3;
DROP TABLE q_ren_c.q_r2;
ALTER TABLE q_rnew SET SCHEMA q_ren_c;
ALTER TABLE q_ren_c.q_rnew RENAME TO q_r2;
SELECT resource, used, quota_limit FROM tenancy.check_quota('rows:q_ren_c.q_r2');
COMMIT;
SELECT (SELECT count(*) FROM q_ren_c.q_r2) AS count, resource, used, quota_limit
  FROM tenancy.quota_usage() WHERE resource LIKE 'rows:%q\_r%' ORDER BY 2;
RESET app.tenant_id;
-- What the ledger holds (what a restart rebuilds the counters from), the
-- limits, and the audit rows of the limits that moved.
SELECT resource, sum(delta) FROM tenancy.quota_ledger
 WHERE tenant_id = tenancy.tenant_id('q-ren') AND resource LIKE 'rows:%'
 GROUP BY 1 HAVING sum(delta) <> 0 ORDER BY 1;
SELECT 'tenant' AS kind, resource, quota_limit FROM tenancy.tenant_quotas
 WHERE tenant_id = tenancy.tenant_id('q-ren')
UNION ALL
SELECT 'plan ' || plan, resource, quota_limit FROM tenancy.plan_quotas WHERE resource LIKE 'rows:%q\_r%'
ORDER BY 1, 2;
SELECT action, target, details FROM tenancy.audit_log WHERE action LIKE 'quota.rename%' ORDER BY id;
SET client_min_messages = warning;
DROP SCHEMA q_ren_c, q_ren_d CASCADE;
RESET client_min_messages;
SELECT tenancy.delete_tenant('q-ren');
SELECT tenancy.purge_tenant('q-ren');

-- Unlogged tables cannot be protected: crash recovery empties them without
-- firing triggers (55000), nor can a protected table become unlogged.
CREATE UNLOGGED TABLE q_unlogged (id int, tenant_id uuid);
SELECT tenancy.protect('q_unlogged');
DROP TABLE q_unlogged;
CREATE TABLE q_logged (id int);
SELECT tenancy.protect('q_logged');
ALTER TABLE q_logged SET UNLOGGED;
DROP TABLE q_logged;

-- Two-phase commit cannot carry reservations.
SELECT tenancy.set_tenant('q-acme') IS NOT NULL;
BEGIN;
SELECT tenancy.consume_quota('unlimited_thing', 1);
PREPARE TRANSACTION 'regress_quota';
RESET app.tenant_id;

-- Clean up.
SET client_min_messages = warning;
DROP TABLE q_items, q_legacy;
DROP ROLE regress_quota_app;
DROP ROLE regress_quota_admin;
SELECT tenancy.delete_tenant(t) FROM unnest(ARRAY['q-acme', 'q-ent', 'q-edge']) t;
SELECT tenancy.purge_tenant(t) FROM unnest(ARRAY['q-acme', 'q-ent', 'q-edge']) t;
SELECT count(*) FROM tenancy.quota_ledger WHERE tenant_id IN (:'acme_id', :'ent_id');
-- (the plans' limits set here must not reach the tests that follow)
DELETE FROM tenancy.plan_quotas;
