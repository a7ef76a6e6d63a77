-- Tenants (SPEC section 1): slugs, resolution, updates, status changes,
-- purge, privileges and the audit trail.
--
-- Errors are shown with their SQLSTATE through regress_try(), which runs a
-- statement and prints "SQLSTATE: message" (and the DETAIL when there is
-- one) instead of failing; ids are random, so they are never printed.
\set VERBOSITY default
\set SHOW_CONTEXT never
CREATE FUNCTION public.regress_try(sql text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    st text; msg text; det text;
BEGIN
    EXECUTE sql;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT, det = PG_EXCEPTION_DETAIL;
    RETURN st || ': ' || msg || CASE WHEN det <> '' THEN E'\nDETAIL: ' || det ELSE '' END;
END
$$;
GRANT EXECUTE ON FUNCTION public.regress_try(text) TO PUBLIC;

-- Slug rules: 3-32 characters of a-z, 0-9 and -, not starting or ending
-- with -.  Each broken rule is named (22023).
SELECT s, regress_try(format('SELECT tenancy.create_tenant(%L)', s))
  FROM unnest(ARRAY['ab', repeat('a', 33), 'Acme', 'acme_corp', 'acme corp', 'acmé',
                    '-acme', 'acme-', '---', '']) AS s;
SELECT regress_try('SELECT tenancy.create_tenant(NULL)');
SELECT regress_try(format('SELECT tenancy.create_tenant(%L)', repeat('x', 100000)));
-- The limits themselves are fine.
SELECT tenancy.create_tenant('abc') IS NOT NULL AS created;
SELECT tenancy.create_tenant(repeat('z', 32)) IS NOT NULL AS created;
SELECT tenancy.create_tenant('a-1') IS NOT NULL AS created;
-- Defaults: name = slug, plan free, metadata {}, no expiry, active.
SELECT tenancy.create_tenant('acme') AS acme \gset
SELECT slug, name, plan, status, metadata, expires_at, deleted_at,
       created_at = updated_at AS fresh
  FROM tenancy.tenants WHERE id = :'acme';
SELECT tenancy.create_tenant('bolt', 'Bolt Ltd', 'pro', '{"region": "eu"}') AS bolt \gset
SELECT slug, name, plan, metadata FROM tenancy.tenants WHERE id = :'bolt';
-- Duplicate slug: 23505; unknown plan, metadata not an object: 22023.
SELECT regress_try($$SELECT tenancy.create_tenant('acme')$$);
SELECT regress_try($$SELECT tenancy.create_tenant('cask', plan => 'platinum')$$);
SELECT regress_try($$SELECT tenancy.create_tenant('cask', plan => NULL)$$);
SELECT regress_try($$SELECT tenancy.create_tenant('cask', metadata => '[1, 2]')$$);
SELECT count(*) AS no_cask FROM tenancy.tenants WHERE slug = 'cask';

-- Resolution by slug and by uuid text (any case); unknown: TN002.
SELECT tenancy.tenant_id('acme') = :'acme' AS by_slug,
       tenancy.tenant_id(:'acme') = :'acme' AS by_uuid,
       tenancy.tenant_id(upper(:'acme')) = :'acme' AS by_upper_uuid;
SELECT regress_try($$SELECT tenancy.tenant_id('nobody')$$);
SELECT regress_try($$SELECT tenancy.tenant_id('00000000-0000-0000-0000-000000000000')$$);
SELECT regress_try($$SELECT tenancy.tenant_id(NULL)$$);
SELECT regress_try($$SELECT tenancy.update_tenant('nobody', name => 'x')$$);
SELECT regress_try($$SELECT tenancy.suspend_tenant('00000000-0000-0000-0000-000000000000')$$);
SELECT regress_try($$SELECT tenancy.activate_tenant('nobody')$$);
SELECT regress_try($$SELECT tenancy.delete_tenant('nobody')$$);
SELECT regress_try($$SELECT tenancy.purge_tenant('nobody')$$);
SELECT regress_try($$SELECT tenancy.tenant_status('nobody')$$);

-- A valid slug is always resolved as a slug, also when it reads as a uuid
-- without hyphens (32 lower-case hex digits); anything else is parsed as a
-- uuid in any form uuid_in accepts.
SELECT tenancy.create_tenant(repeat('a', 32)) AS hexslug \gset
SELECT tenancy.tenant_id(repeat('a', 32)) = :'hexslug' AS hex_slug_by_slug,
       tenancy.tenant_status(repeat('a', 32)) AS hex_slug_status;
SELECT regress_try(format('SELECT tenancy.tenant_id(%L)', repeat('b', 32)));
-- A tenant whose slug is another tenant's id without hyphens: the slug
-- names the first, the id in any other form the second.
SELECT tenancy.create_tenant('victim') AS victim \gset
SELECT tenancy.create_tenant(replace(:'victim', '-', ''), 'Lookalike') AS lookalike \gset
SELECT tenancy.tenant_id(replace(:'victim', '-', '')) = :'lookalike' AS slug_wins,
       tenancy.tenant_id(:'victim') = :'victim' AS canonical_is_id,
       tenancy.tenant_id(upper(replace(:'victim', '-', ''))) = :'victim' AS upper_hex_is_id,
       tenancy.tenant_id('{' || :'victim' || '}') = :'victim' AS braces_is_id;
SELECT tenancy.suspend_tenant(replace(:'victim', '-', ''));
SELECT slug = 'victim' AS is_victim, status FROM tenancy.tenants
 WHERE id IN (:'victim', :'lookalike') ORDER BY slug = 'victim';
BEGIN;
SELECT tenancy.set_tenant(replace(:'victim', '-', '')) = :'lookalike' AS set_lookalike;
ROLLBACK;
SELECT tenancy.delete_tenant(replace(:'victim', '-', ''));
SELECT tenancy.purge_tenant(replace(:'victim', '-', ''));
SELECT slug, status FROM tenancy.tenants WHERE id IN (:'victim', :'lookalike');
SELECT tenancy.delete_tenant(t), tenancy.purge_tenant(t)
  FROM unnest(ARRAY['victim', repeat('a', 32)]) t;

-- update_tenant: NULL means unchanged.
SELECT tenancy.update_tenant('bolt', name => 'Bolt Inc');
SELECT name, plan, metadata, expires_at FROM tenancy.tenants WHERE id = :'bolt';
SELECT tenancy.update_tenant(:'bolt', plan => 'enterprise', metadata => '{"region": "us"}');
SELECT name, plan, metadata, expires_at FROM tenancy.tenants WHERE id = :'bolt';
SELECT tenancy.update_tenant('bolt');
SELECT name, plan, metadata, expires_at, updated_at > created_at AS touched
  FROM tenancy.tenants WHERE id = :'bolt';
SELECT regress_try($$SELECT tenancy.update_tenant('bolt', plan => 'platinum')$$);
SELECT regress_try($$SELECT tenancy.update_tenant('bolt', metadata => '"text"')$$);
SELECT plan FROM tenancy.tenants WHERE id = :'bolt';

-- Status: active -> suspended -> active; deleted; expired.
SELECT tenancy.tenant_status('acme');
SELECT tenancy.suspend_tenant('acme', 'unpaid invoice');
SELECT tenancy.tenant_status('acme'), (SELECT status FROM tenancy.tenants WHERE id = :'acme');
SELECT tenancy.activate_tenant(:'acme');
SELECT tenancy.tenant_status('acme');
-- expires_at in the past: expired wherever status counts, stored status
-- unchanged; in the future: still active.
SELECT tenancy.update_tenant('abc', expires_at => now() - interval '1 minute');
SELECT tenancy.tenant_status('abc'), (SELECT status FROM tenancy.tenants WHERE slug = 'abc');
SELECT tenancy.update_tenant('abc', expires_at => now() + interval '1 day');
SELECT tenancy.tenant_status('abc');
-- 'infinity' is how an expiry is lifted (NULL means unchanged).
SELECT tenancy.update_tenant('abc', expires_at => 'infinity');
SELECT tenancy.tenant_status('abc');
SELECT tenancy.create_tenant('old-one', expires_at => now() - interval '1 day') IS NOT NULL AS created;
SELECT tenancy.tenant_status('old-one');
-- An expired or suspended tenant cannot be used as a context (TN003).
BEGIN;
SELECT tenancy.set_tenant('old-one') IS NOT NULL AS set;
-- (first line only: the DETAIL names the random id)
SELECT split_part(regress_try('SELECT tenancy.current_tenant_id()'), E'\n', 1);
ROLLBACK;

-- Soft delete keeps the data and the row; a deleted tenant cannot be
-- suspended; the first deletion date is kept by a second delete.
SELECT tenancy.delete_tenant('a-1');
SELECT status, deleted_at IS NOT NULL AS has_deleted_at FROM tenancy.tenants WHERE slug = 'a-1';
SELECT deleted_at AS first_deleted_at FROM tenancy.tenants WHERE slug = 'a-1' \gset
SELECT pg_sleep(0.01);
SELECT tenancy.delete_tenant('a-1');
SELECT deleted_at = :'first_deleted_at' AS date_kept FROM tenancy.tenants WHERE slug = 'a-1';
SELECT regress_try($$SELECT tenancy.suspend_tenant('a-1')$$);
SELECT tenancy.tenant_status('a-1');
-- activate restores a deleted tenant.
SELECT tenancy.activate_tenant('a-1');
SELECT status, deleted_at FROM tenancy.tenants WHERE slug = 'a-1';

-- Purge: only a deleted tenant (55000 otherwise).
SELECT regress_try($$SELECT tenancy.purge_tenant('acme')$$);
SELECT tenancy.suspend_tenant('acme');
SELECT regress_try($$SELECT tenancy.purge_tenant('acme')$$);
SELECT tenancy.activate_tenant('acme');
-- Only in a READ COMMITTED transaction (55000): each of its deletes must
-- see what the transactions it waits for have committed.
SELECT tenancy.create_tenant('rr-one') IS NOT NULL AS created;
SELECT tenancy.delete_tenant('rr-one');
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT regress_try($$SELECT tenancy.purge_tenant('rr-one')$$);
ROLLBACK;
SELECT tenancy.purge_tenant('rr-one');

-- Purge removes the tenant's rows from every protected table (partitions
-- counted once, rows removed by a cascading foreign key between protected
-- tables too), its quotas and keys, and the tenant.
CREATE ROLE regress_app_owner;
CREATE SCHEMA "App Data" AUTHORIZATION regress_app_owner;
SET search_path = "App Data", public;
SET ROLE regress_app_owner;
CREATE TABLE "Orders" (id int PRIMARY KEY, tenant_id uuid NOT NULL, note text);
CREATE TABLE lines (id int PRIMARY KEY, "Tenant" uuid NOT NULL,
                    order_id int REFERENCES "Orders" (id) ON DELETE CASCADE);
CREATE TABLE events (id int, tenant_id uuid NOT NULL, at date NOT NULL) PARTITION BY RANGE (at);
CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
-- A table with a restrictive foreign key to a protected table: purge
-- deletes the referencing rows first, whatever the order.
CREATE TABLE notes (id int PRIMARY KEY, tenant_id uuid NOT NULL,
                    order_id int REFERENCES "Orders" (id));
-- The owner's trigger runs as the owner, not as the extension owner.
CREATE FUNCTION regress_who() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE NOTICE 'delete trigger on % runs as %', TG_TABLE_NAME, current_user;
    RETURN OLD;
END
$$;
CREATE TRIGGER regress_who BEFORE DELETE ON "Orders" FOR EACH STATEMENT EXECUTE FUNCTION regress_who();
RESET ROLE;
SELECT tenancy.protect('"App Data"."Orders"');
SELECT tenancy.protect('lines', 'Tenant');
SELECT tenancy.protect('events');
SELECT tenancy.protect('notes');
SELECT relid, tenant_column FROM tenancy.protected_tables ORDER BY relid::text;
SELECT tenancy.create_tenant('doomed') AS doomed \gset
-- Rows of doomed and of acme (superuser: not subject to row level security).
INSERT INTO "Orders" VALUES (1, :'doomed', 'd1'), (2, :'doomed', 'd2'), (3, :'acme', 'a3');
INSERT INTO lines VALUES (1, :'doomed', 1), (2, :'doomed', 1), (3, :'doomed', 2), (4, :'acme', 3);
INSERT INTO events VALUES (1, :'doomed', '2025-05-01'), (2, :'doomed', '2026-05-01'), (3, :'acme', '2026-05-01');
INSERT INTO notes VALUES (1, :'doomed', 1), (2, :'acme', 3);
INSERT INTO tenancy.tenant_quotas (tenant_id, resource, quota_limit) VALUES (:'doomed', 'rows', 10);
INSERT INTO tenancy.api_keys (tenant_id, name, prefix, key_hash) VALUES (:'doomed', 'k', 'tk_x', '\x01');
SELECT tenancy.delete_tenant('doomed');
-- Data is kept by a soft delete.
SELECT count(*) FROM "Orders" WHERE tenant_id = :'doomed';
-- 2 orders + 3 lines (counted once, though the cascade removed them) +
-- 2 events (in two partitions) + 1 note = 8.
SELECT tenancy.purge_tenant('doomed');
SELECT (SELECT count(*) FROM "Orders") AS orders, (SELECT count(*) FROM lines) AS lines,
       (SELECT count(*) FROM events) AS events, (SELECT count(*) FROM notes) AS notes;
SELECT count(*) AS quotas FROM tenancy.tenant_quotas WHERE tenant_id = :'doomed';
SELECT count(*) AS keys FROM tenancy.api_keys WHERE tenant_id = :'doomed';
SELECT count(*) AS tenant FROM tenancy.tenants WHERE id = :'doomed';
SELECT split_part(regress_try(format('SELECT tenancy.purge_tenant(%L)', :'doomed')), E'\n', 1);
-- A purge with nothing to remove returns 0.
SELECT tenancy.create_tenant('empty-one') IS NOT NULL AS created;
SELECT tenancy.delete_tenant('empty-one');
SELECT tenancy.purge_tenant('empty-one');
RESET search_path;

-- Privileges: administration is not executable by PUBLIC.
CREATE ROLE regress_plain;
CREATE ROLE regress_admin IN ROLE tenancy_admin;
SET ROLE regress_plain;
SELECT regress_try($$SELECT tenancy.create_tenant('sneaky')$$);
SELECT regress_try($$SELECT tenancy.tenant_id('acme')$$);
SELECT regress_try($$SELECT tenancy.update_tenant('acme', name => 'x')$$);
SELECT regress_try($$SELECT tenancy.suspend_tenant('acme')$$);
SELECT regress_try($$SELECT tenancy.activate_tenant('acme')$$);
SELECT regress_try($$SELECT tenancy.delete_tenant('acme')$$);
SELECT regress_try($$SELECT tenancy.purge_tenant('acme')$$);
SELECT regress_try($$SELECT tenancy.protect(NULL)$$);
SELECT regress_try($$SELECT tenancy.unprotect(NULL)$$);
SELECT regress_try($$SELECT tenancy._audit('x', NULL, NULL)$$);
SELECT regress_try($$SELECT tenancy._ddl_bypass(true)$$);
SELECT regress_try($$SELECT tenancy._exec_as_owner(NULL, 'SELECT 1', NULL)$$);
SELECT regress_try($$SELECT tenancy._purge_tenant_state(NULL)$$);
-- The audit log is not readable either.
SELECT regress_try('SELECT count(*) FROM tenancy.audit_log');
RESET ROLE;
SELECT p.oid::regprocedure AS public_executable
  FROM pg_proc p
 WHERE p.pronamespace = 'tenancy'::regnamespace
   AND has_function_privilege('regress_plain', p.oid, 'EXECUTE')
 ORDER BY p.oid::regprocedure::text;
-- A member of tenancy_admin may administer.
SET ROLE regress_admin;
SELECT tenancy.create_tenant('by-admin') IS NOT NULL AS created;
SELECT tenancy.update_tenant('by-admin', name => 'By Admin');
SELECT tenancy.suspend_tenant('by-admin');
SELECT tenancy.activate_tenant('by-admin');
SELECT tenancy.delete_tenant('by-admin');
SELECT tenancy.purge_tenant('by-admin');
SELECT count(*) > 0 AS admin_reads_audit FROM tenancy.audit_log;
RESET ROLE;

-- Every change left an audit row naming the tenant by slug (whether it
-- was given by slug or id), with the actor (the login role).
SELECT action, target, details, tenant_id IS NOT NULL AS has_id
  FROM tenancy.audit_log
 WHERE target IN ('acme', 'bolt', 'by-admin', 'a-1', 'doomed')
 ORDER BY id;
SELECT DISTINCT actor FROM tenancy.audit_log WHERE target = 'by-admin';

-- References between tenancy's own tables (src/refs.c: triggers, not
-- foreign keys, so that pg_restore -j may load them in any order).
INSERT INTO tenancy.plans (name) VALUES ('regress-team');
SELECT tenancy.create_tenant('ref-a', plan => 'regress-team') IS NOT NULL AS created;
-- (written directly: the quota and rate limit tests read the audit log)
INSERT INTO tenancy.plan_quotas VALUES ('regress-team', 'widgets', 9);
INSERT INTO tenancy.plan_rate_limits VALUES ('regress-team', 'calls', 3, 3);
INSERT INTO tenancy.tenant_quotas VALUES (tenancy.tenant_id('ref-a'), 'widgets', 4);
INSERT INTO tenancy.tenant_rate_limits VALUES (tenancy.tenant_id('ref-a'), 'calls', 2, 2);
SELECT tenancy.create_api_key('ref-a', 'svc') IS NOT NULL AS key_created;
-- A tenant on a plan that does not exist, a key, quota or rate limit of a
-- tenant that does not exist: refused (23503), however they are written.
SELECT regress_try($$INSERT INTO tenancy.tenants (slug, name, plan) VALUES ('ref-b', 'b', 'no-such-plan')$$);
SELECT regress_try($$UPDATE tenancy.tenants SET plan = 'no-such-plan' WHERE slug = 'ref-a'$$);
SELECT regress_try($$INSERT INTO tenancy.plan_quotas VALUES ('no-such-plan', 'widgets', 1)$$);
SELECT regress_try($$INSERT INTO tenancy.plan_rate_limits VALUES ('no-such-plan', 'calls', 1, 1)$$);
SELECT regress_try($$INSERT INTO tenancy.tenant_quotas VALUES ('00000000-0000-0000-0000-00000000000a', 'widgets', 1)$$);
SELECT regress_try($$INSERT INTO tenancy.tenant_rate_limits VALUES ('00000000-0000-0000-0000-00000000000a', 'calls', 1, 1)$$);
SELECT regress_try($$INSERT INTO tenancy.api_keys (tenant_id, name, prefix, key_hash)
                     VALUES ('00000000-0000-0000-0000-00000000000a', 'x', 'x', '\x00')$$);
SELECT regress_try($$UPDATE tenancy.api_keys SET tenant_id = '00000000-0000-0000-0000-00000000000a' WHERE name = 'svc'$$);
-- Rows changed without touching the reference are not checked again.
UPDATE tenancy.api_keys SET name = 'svc2' WHERE name = 'svc';
UPDATE tenancy.api_keys SET name = 'svc', tenant_id = tenant_id WHERE name = 'svc2';
-- A plan renamed: its tenants, quotas and rate limits follow.
UPDATE tenancy.plans SET name = 'regress-crew' WHERE name = 'regress-team';
SELECT (SELECT plan FROM tenancy.tenants WHERE slug = 'ref-a') AS tenant_plan,
       (SELECT string_agg(plan, ',') FROM tenancy.plan_quotas WHERE resource = 'widgets') AS quota_plans,
       (SELECT string_agg(plan, ',') FROM tenancy.plan_rate_limits WHERE resource = 'calls') AS rate_plans;
-- A plan that tenants are on cannot be deleted, nor a referenced tenant's
-- id changed, nor a referenced table truncated alone.
SELECT regress_try($$DELETE FROM tenancy.plans WHERE name = 'regress-crew'$$);
SELECT regexp_replace(regress_try($$UPDATE tenancy.tenants SET id = gen_random_uuid() WHERE slug = 'ref-a'$$),
                      '\(id\)=\([0-9a-f-]+\)', '(id)=(...)') AS regress_try;
SELECT regress_try($$TRUNCATE tenancy.tenants$$);
SELECT regress_try($$TRUNCATE tenancy.plans$$);
-- A purged tenant takes its keys, quotas and rate limits along.
SELECT tenancy.delete_tenant('ref-a');
SELECT tenancy.purge_tenant('ref-a');
SELECT (SELECT count(*) FROM tenancy.api_keys) AS keys,
       (SELECT count(*) FROM tenancy.tenant_quotas) AS tenant_quotas,
       (SELECT count(*) FROM tenancy.tenant_rate_limits) AS tenant_rate_limits;
-- A deleted plan takes its quotas and rate limits along.
DELETE FROM tenancy.plans WHERE name = 'regress-crew';
SELECT (SELECT count(*) FROM tenancy.plan_quotas) AS plan_quotas,
       (SELECT count(*) FROM tenancy.plan_rate_limits) AS plan_rate_limits;
-- What a restore loads is let in (pg_restore -j loads the tables in any
-- order): a superuser's COPY FROM into the table itself ...
COPY tenancy.plan_quotas FROM stdin;
regress-later	widgets	5	\N
\.
-- ... or an INSERT into it with row_security off (pg_dump --inserts).
SET row_security = off;
INSERT INTO tenancy.plan_rate_limits VALUES ('regress-later', 'calls', 1, 1);
RESET row_security;
INSERT INTO tenancy.plans (name) VALUES ('regress-later');
SELECT plan, quota_limit FROM tenancy.plan_quotas;
SELECT plan, per_second FROM tenancy.plan_rate_limits;
DELETE FROM tenancy.plans WHERE name = 'regress-later';
-- ... but not a COPY by a role that is not a superuser, nor a COPY TO
-- whose query writes, nor an INSERT from inside a function.
GRANT INSERT ON tenancy.plan_quotas TO regress_plain;
SET ROLE regress_plain;
COPY tenancy.plan_quotas FROM stdin;
regress-later	widgets	5	\N
\.
RESET ROLE;
REVOKE INSERT ON tenancy.plan_quotas FROM regress_plain;
CREATE FUNCTION pg_temp.regress_insert_quota() RETURNS int LANGUAGE sql
AS $$ INSERT INTO tenancy.plan_quotas VALUES ('no-such-plan', 'widgets', 1) RETURNING 1 $$;
COPY (SELECT pg_temp.regress_insert_quota()) TO stdout;
SET row_security = off;
SELECT pg_temp.regress_insert_quota();
RESET row_security;
SELECT count(*) AS plan_quotas FROM tenancy.plan_quotas;

-- Clean up.
DROP SCHEMA "App Data" CASCADE;
SELECT count(*) AS still_listed FROM tenancy.protected_tables;
SELECT count(*) AS purged
  FROM (SELECT tenancy.delete_tenant(slug), tenancy.purge_tenant(slug) FROM tenancy.tenants) s;
SELECT count(*) AS tenants_left FROM tenancy.tenants;
DROP FUNCTION public.regress_try(text);
DROP ROLE regress_plain, regress_admin, regress_app_owner;
