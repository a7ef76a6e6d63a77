-- Protected tables (SPEC section 3): what protect() sets up, isolation
-- across every DML path, partitions, the DDL guard, TRUNCATE,
-- auto_protect, hostile identifiers and arguments, and plans.
--
-- regress_try() runs a statement and prints "SQLSTATE: message" and the
-- DETAIL instead of failing.  Ids are random, so they are never printed:
-- rows carry a "who" column instead.
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

-- What tenancy put on a table: policies, triggers, RLS flags, default,
-- index, listing.
CREATE FUNCTION public.regress_state(tbl regclass) RETURNS TABLE (what text, value text)
LANGUAGE sql AS $$
    SELECT 'rls', format('enabled=%s forced=%s', relrowsecurity, relforcerowsecurity)
      FROM pg_class WHERE oid = tbl
    UNION ALL
    SELECT 'policy', format('%s %s %s to %s using %s check %s', polname,
                            CASE WHEN polpermissive THEN 'permissive' ELSE 'restrictive' END, polcmd,
                            polroles::regrole[], pg_get_expr(polqual, polrelid), pg_get_expr(polwithcheck, polrelid))
      FROM pg_policy WHERE polrelid = tbl
    UNION ALL
    SELECT 'trigger', tgname || CASE WHEN tgparentid <> 0 THEN ' (cloned)' ELSE '' END || ' ' || tgenabled::text
      FROM pg_trigger WHERE tgrelid = tbl AND NOT tgisinternal
    UNION ALL
    SELECT 'column', format('%s %s notnull=%s default=%s', a.attname, format_type(a.atttypid, a.atttypmod),
                            a.attnotnull, pg_get_expr(d.adbin, d.adrelid))
      FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
     WHERE a.attrelid = tbl AND a.attnum > 0 AND NOT a.attisdropped
    UNION ALL
    SELECT 'index', pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = tbl
    UNION ALL
    SELECT 'listed', tenant_column::text FROM tenancy.protected_tables WHERE relid = tbl
    ORDER BY 1, 2
$$;

-- Two tenants; a table owner and another role, neither superuser.  The
-- session user is a superuser, so both may set any tenant context.
SELECT tenancy.create_tenant('acme') AS acme \gset
SELECT tenancy.create_tenant('bolt') AS bolt \gset
SELECT max(id) AS audit_start FROM tenancy.audit_log \gset
CREATE ROLE regress_owner;
CREATE ROLE regress_reader;
CREATE ROLE regress_admin IN ROLE tenancy_admin;
-- (for the COPY FROM test: a server file may be read, so RLS decides)
GRANT pg_read_server_files TO regress_owner, regress_reader;
CREATE SCHEMA regress_s AUTHORIZATION regress_owner;
GRANT USAGE ON SCHEMA regress_s TO regress_reader, regress_admin;

----------------------------------------------------------------------
-- protect(): arguments
----------------------------------------------------------------------
SET search_path = regress_s, public;
CREATE TABLE regress_s.plain (id int);
CREATE VIEW regress_s.a_view AS SELECT 1 AS x;
CREATE SEQUENCE regress_s.a_seq;
CREATE TEMP TABLE a_temp (id int);
SELECT regress_try('SELECT tenancy.protect(NULL)');
SELECT regress_try($$SELECT tenancy.protect('regress_s.plain', NULL)$$);
SELECT regress_try($$SELECT tenancy.protect('regress_s.plain', '')$$);
SELECT regress_try($$SELECT tenancy.protect('regress_s.a_view')$$);
SELECT regress_try($$SELECT tenancy.protect('regress_s.a_seq')$$);
SELECT regress_try($$SELECT tenancy.protect('a_temp')$$);
SELECT regress_try($$SELECT tenancy.protect('pg_catalog.pg_class')$$);
SELECT regress_try($$SELECT tenancy.protect('tenancy.tenants')$$);
SELECT regress_try($$SELECT tenancy.protect('regress_s.no_such_table')$$);
SELECT regress_try(format('SELECT tenancy.protect(%L)', repeat('x', 100000)));
SELECT regress_try('SELECT tenancy.protect(0)');
SELECT regress_try('SELECT tenancy.unprotect(NULL)');
-- An unknown backfill tenant (even a huge one) fails before anything is
-- done: no column, policy, trigger or listing is left behind.
INSERT INTO regress_s.plain VALUES (1);
SELECT regress_try($$SELECT tenancy.protect('regress_s.plain', backfill_tenant => 'nobody')$$);
SELECT left(regress_try(format($$SELECT tenancy.protect('regress_s.plain', backfill_tenant => %L)$$,
                              repeat('y', 100000))), 80);
SELECT * FROM regress_state('regress_s.plain');

----------------------------------------------------------------------
-- protect(): the tenant column
----------------------------------------------------------------------
-- Missing column, empty table: added.
CREATE TABLE regress_s.empty_t (id int);
SELECT tenancy.protect('regress_s.empty_t');
SELECT * FROM regress_state('regress_s.empty_t');
-- Missing column, table with rows: needs backfill_tenant (55000).
SELECT regress_try($$SELECT tenancy.protect('regress_s.plain')$$);
SELECT * FROM regress_state('regress_s.plain');
SELECT tenancy.protect('regress_s.plain', backfill_tenant => 'acme');
SELECT id, tenant_id = :'acme' AS acme FROM regress_s.plain;
-- A column of another type: 42804.
CREATE TABLE regress_s.texty (id int, tenant_id text);
SELECT regress_try($$SELECT tenancy.protect('regress_s.texty')$$);
-- A nullable uuid column with NULLs needs backfill; without NULLs not.
CREATE TABLE regress_s.nullable (id int, org uuid);
INSERT INTO regress_s.nullable VALUES (1, :'bolt'), (2, NULL);
SELECT regress_try($$SELECT tenancy.protect('regress_s.nullable', 'org')$$);
SELECT tenancy.protect('regress_s.nullable', 'org', 'acme');
SELECT id, org = :'acme' AS acme, org = :'bolt' AS bolt FROM regress_s.nullable ORDER BY id;
-- A restrictive policy that would run before tenancy_isolation: 55000.
CREATE TABLE regress_s.early (id int, tenant_id uuid NOT NULL);
CREATE POLICY early ON regress_s.early AS RESTRICTIVE USING (id > 0);
SELECT regress_try($$SELECT tenancy.protect('regress_s.early')$$);
SELECT * FROM regress_state('regress_s.early') WHERE what IN ('rls', 'listed', 'trigger');
-- An index leading with the tenant column is used, not duplicated (a
-- partial one does not count).
CREATE TABLE regress_s.indexed (id int, tenant_id uuid NOT NULL);
CREATE INDEX indexed_partial ON regress_s.indexed (tenant_id) WHERE id > 0;
CREATE INDEX indexed_both ON regress_s.indexed (tenant_id, id);
SELECT tenancy.protect('regress_s.indexed');
SELECT * FROM regress_state('regress_s.indexed') WHERE what = 'index';
-- Idempotent: a second protect() changes nothing.
CREATE TEMP TABLE before_state AS SELECT * FROM regress_state('regress_s.indexed');
SELECT tenancy.protect('regress_s.indexed');
SELECT count(*) AS differences FROM (
    (SELECT * FROM regress_state('regress_s.indexed') EXCEPT ALL SELECT * FROM before_state)
    UNION ALL
    (SELECT * FROM before_state EXCEPT ALL SELECT * FROM regress_state('regress_s.indexed'))) d;
-- A member of tenancy_admin protects and unprotects a table it does not own.
CREATE TABLE regress_s.by_admin (id int);
ALTER TABLE regress_s.by_admin OWNER TO regress_owner;
SET ROLE regress_admin;
SELECT tenancy.protect('regress_s.by_admin');
SELECT relid FROM tenancy.protected_tables WHERE relid = 'regress_s.by_admin'::regclass;
SELECT tenancy.unprotect('regress_s.by_admin');
RESET ROLE;
SELECT what, value FROM regress_state('regress_s.by_admin') WHERE what IN ('rls', 'listed', 'policy');
-- ... but another tenant column for a protected table is a mistake.
SELECT regress_try($$SELECT tenancy.protect('regress_s.indexed', 'id')$$);
SELECT relid, tenant_column FROM tenancy.protected_tables ORDER BY relid::text;

----------------------------------------------------------------------
-- Isolation across every DML path
----------------------------------------------------------------------
CREATE TABLE regress_s.docs (id int PRIMARY KEY, tenant_id uuid, who text);
INSERT INTO regress_s.docs VALUES (1, :'acme', 'acme-1'), (2, :'acme', 'acme-2'),
                                  (3, :'bolt', 'bolt-3'), (4, :'bolt', 'bolt-4');
ALTER TABLE regress_s.docs OWNER TO regress_owner;
SELECT tenancy.protect('regress_s.docs');
SELECT * FROM regress_state('regress_s.docs');
CREATE VIEW regress_s.docs_invoker WITH (security_invoker) AS SELECT * FROM regress_s.docs;
CREATE VIEW regress_s.docs_owner_view AS SELECT * FROM regress_s.docs;
ALTER VIEW regress_s.docs_invoker OWNER TO regress_owner;
ALTER VIEW regress_s.docs_owner_view OWNER TO regress_owner;
CREATE FUNCTION regress_s.peek(who text) RETURNS boolean LANGUAGE plpgsql COST 0.0001 AS $$
BEGIN
    RAISE NOTICE 'peek saw %', who;
    RETURN true;
END
$$;
GRANT SELECT, INSERT, UPDATE, DELETE ON regress_s.docs, regress_s.docs_invoker,
      regress_s.docs_owner_view TO regress_reader;
-- The table owner.
\set role regress_owner
\i sql/protect_dml.inc
-- Another role with privileges on the table.
\set role regress_reader
\i sql/protect_dml.inc
-- Nothing of the above stayed; bolt's rows are untouched.
SELECT id, who, tenant_id = :'acme' AS acme FROM regress_s.docs ORDER BY id;

-- A suspended tenant's sessions lose access (TN003) from their next
-- transaction; the first line only, as the DETAIL names the random id.
SELECT tenancy.suspend_tenant('bolt', 'regress');
SET ROLE regress_reader;
SET app.tenant_id = :'bolt';
SELECT split_part(regress_try('SELECT count(*) FROM regress_s.docs'), E'\n', 1);
SELECT split_part(regress_try($$INSERT INTO regress_s.docs (id, who) VALUES (8, 'x')$$), E'\n', 1);
RESET ROLE;
SELECT tenancy.activate_tenant('bolt');
SET ROLE regress_reader;
SELECT count(*) AS bolt_rows_again FROM regress_s.docs;
RESET ROLE;
RESET app.tenant_id;

-- Every access needs a valid context, also when the policy meets no row
-- (an empty table, a WHERE that is false, a key that is not there): the
-- context is checked when the statement starts, once per transaction.
CREATE TABLE regress_s.empty_docs (id int PRIMARY KEY, tenant_id uuid, who text);
ALTER TABLE regress_s.empty_docs OWNER TO regress_owner;
SELECT tenancy.protect('regress_s.empty_docs');
GRANT SELECT, INSERT, UPDATE, DELETE ON regress_s.empty_docs TO regress_reader;
CREATE TABLE regress_s.plain_notes (id int);
GRANT SELECT ON regress_s.plain_notes TO regress_reader;
SET ROLE regress_reader;
SELECT regress_try('SELECT count(*) FROM regress_s.empty_docs');
SELECT regress_try('SELECT * FROM regress_s.docs WHERE false');
SELECT regress_try('SELECT * FROM regress_s.docs WHERE id = 999');
SELECT regress_try('SELECT count(*) FROM regress_s.docs_invoker WHERE false');
SELECT regress_try('UPDATE regress_s.empty_docs SET who = who');
SELECT regress_try('DELETE FROM regress_s.empty_docs');
-- An unknown tenant (TN002) and a suspended one (TN003) alike (first line:
-- the DETAIL names the id).
SET app.tenant_id = 'f0000000-0000-4000-8000-00000000000f';
SELECT split_part(regress_try('SELECT count(*) FROM regress_s.empty_docs'), E'\n', 1);
RESET ROLE;
SELECT tenancy.suspend_tenant('bolt', 'regress');
SET ROLE regress_reader;
SET app.tenant_id = :'bolt';
SELECT split_part(regress_try('SELECT * FROM regress_s.docs WHERE false'), E'\n', 1);
RESET ROLE;
SELECT tenancy.activate_tenant('bolt');
SET ROLE regress_reader;
RESET app.tenant_id;
-- Planning alone (EXPLAIN without ANALYZE) and a table that is not
-- protected need no context.
SELECT regress_try('EXPLAIN SELECT count(*) FROM regress_s.empty_docs');
SELECT count(*) AS plain_rows FROM regress_s.plain_notes;
RESET ROLE;
-- The table owner is subject to the policies too (RLS is forced).
SET ROLE regress_owner;
SELECT regress_try('SELECT count(*) FROM regress_s.empty_docs');
RESET ROLE;
-- A superuser is not: no context needed.
SELECT count(*) AS superuser_sees FROM regress_s.empty_docs;
-- With a context: nothing to see, no error.
SET app.tenant_id = :'acme';
SET ROLE regress_reader;
SELECT count(*) AS acme_empty FROM regress_s.empty_docs;
SELECT count(*) AS acme_none FROM regress_s.docs WHERE id = 999;
RESET ROLE;
RESET app.tenant_id;
DROP TABLE regress_s.empty_docs, regress_s.plain_notes;

-- A permissive policy of the owner's cannot widen isolation.
SET ROLE regress_owner;
CREATE POLICY regress_everything ON regress_s.docs AS PERMISSIVE FOR ALL USING (true) WITH CHECK (true);
SET app.tenant_id = :'bolt';
SELECT id, who FROM regress_s.docs ORDER BY id;
SELECT regress_try(format('INSERT INTO regress_s.docs VALUES (9, %L, ''forged'')', :'acme'));
-- A restrictive policy of the owner's runs after tenancy_isolation
-- (PostgreSQL applies restrictive policies in name order), so a function in
-- it sees bolt's rows only, even on a sequential scan.  A restrictive policy
-- whose name sorts first would see every row: refused.
SET enable_indexscan = off;
SET enable_bitmapscan = off;
CREATE POLICY zz_peek ON regress_s.docs AS RESTRICTIVE USING (regress_s.peek(who));
SELECT id FROM regress_s.docs ORDER BY id;
DROP POLICY zz_peek ON regress_s.docs;
SELECT regress_try('CREATE POLICY a_peek ON regress_s.docs AS RESTRICTIVE USING (regress_s.peek(who))');
SELECT regress_try('CREATE POLICY "tenancy_isolatioN" ON regress_s.docs AS RESTRICTIVE FOR SELECT USING (regress_s.peek(who))');
CREATE POLICY zz_narrow ON regress_s.docs AS RESTRICTIVE USING (true);
SELECT regress_try('ALTER POLICY zz_narrow ON regress_s.docs RENAME TO a_narrow');
DROP POLICY zz_narrow ON regress_s.docs;
RESET enable_indexscan;
RESET enable_bitmapscan;
-- tenancy_allow may be replaced by the owner's own permissive policies
-- (the SPEC allows it): isolation still holds.
DROP POLICY tenancy_allow ON regress_s.docs;
DROP POLICY regress_everything ON regress_s.docs;
SELECT count(*) AS without_permissive_policy FROM regress_s.docs;
CREATE POLICY regress_read_only ON regress_s.docs FOR SELECT USING (who LIKE '%-4');
SELECT id, who FROM regress_s.docs ORDER BY id;
SELECT regress_try($$INSERT INTO regress_s.docs (id, who) VALUES (10, 'x')$$);
-- A second protect() does not bring tenancy_allow back.
RESET ROLE;
SELECT tenancy.protect('regress_s.docs');
SELECT what, value FROM regress_state('regress_s.docs') WHERE what = 'policy';
SET ROLE regress_owner;
DROP POLICY regress_read_only ON regress_s.docs;
CREATE POLICY tenancy_allow ON regress_s.docs USING (true) WITH CHECK (true);
RESET ROLE;
RESET app.tenant_id;

----------------------------------------------------------------------
-- Weakening DDL is refused (42501), by the owner as by a superuser
----------------------------------------------------------------------
SET ROLE regress_owner;
CREATE FUNCTION regress_s.noop() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$;
SELECT cmd, regress_try(cmd) FROM (VALUES
    ('ALTER TABLE regress_s.docs DISABLE ROW LEVEL SECURITY'),
    ('ALTER TABLE regress_s.docs NO FORCE ROW LEVEL SECURITY'),
    ('DROP POLICY tenancy_isolation ON regress_s.docs'),
    ('ALTER POLICY tenancy_isolation ON regress_s.docs USING (true)'),
    ('ALTER POLICY tenancy_isolation ON regress_s.docs WITH CHECK (true)'),
    ('ALTER POLICY tenancy_isolation ON regress_s.docs TO regress_reader'),
    ('ALTER POLICY tenancy_isolation ON regress_s.docs RENAME TO old_isolation'),
    ('ALTER TABLE regress_s.docs DROP COLUMN tenant_id'),
    ('ALTER TABLE regress_s.docs DROP COLUMN tenant_id CASCADE'),
    ('ALTER TABLE regress_s.docs ALTER COLUMN tenant_id TYPE text'),
    ('ALTER TABLE regress_s.docs RENAME COLUMN tenant_id TO org'),
    ('ALTER TABLE regress_s.docs ALTER COLUMN tenant_id DROP NOT NULL'),
    ('ALTER TABLE regress_s.docs DISABLE TRIGGER tenancy_guard'),
    ('ALTER TABLE regress_s.docs DISABLE TRIGGER tenancy_truncate_guard'),
    ('ALTER TABLE regress_s.docs DISABLE TRIGGER ALL'),
    ('ALTER TABLE regress_s.docs DISABLE TRIGGER USER'),
    ('ALTER TABLE regress_s.docs ENABLE REPLICA TRIGGER tenancy_guard'),
    ('DROP TRIGGER tenancy_guard ON regress_s.docs'),
    ('DROP TRIGGER tenancy_truncate_guard ON regress_s.docs'),
    ('ALTER TRIGGER tenancy_guard ON regress_s.docs RENAME TO old_guard'),
    ('CREATE OR REPLACE TRIGGER tenancy_guard BEFORE INSERT OR UPDATE ON regress_s.docs
        FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger()'),
    ('CREATE OR REPLACE TRIGGER tenancy_truncate_guard BEFORE TRUNCATE ON regress_s.docs
        FOR EACH STATEMENT EXECUTE FUNCTION suppress_redundant_updates_trigger()'),
    -- the counting triggers: replaced, rows and quotas would go uncounted
    ('CREATE OR REPLACE TRIGGER tenancy_quota AFTER INSERT OR UPDATE OR DELETE ON regress_s.docs
        FOR EACH ROW EXECUTE FUNCTION regress_s.noop()'),
    ('CREATE OR REPLACE TRIGGER tenancy_quota_truncate AFTER TRUNCATE ON regress_s.docs
        FOR EACH STATEMENT EXECUTE FUNCTION regress_s.noop()'),
    ('CREATE TRIGGER tenancy_extra BEFORE INSERT ON regress_s.docs
        FOR EACH ROW EXECUTE FUNCTION regress_s.noop()')
) AS c(cmd);
SELECT tgname, tgfoid::regproc AS function, tgenabled FROM pg_trigger
 WHERE tgrelid = 'regress_s.docs'::regclass ORDER BY tgname;
-- A parent that is not protected would read the table's rows without its
-- policies: attaching it as a partition or child is refused.
CREATE TABLE regress_s.open_parent (id int PRIMARY KEY, tenant_id uuid NOT NULL, who text);
SELECT regress_try('ALTER TABLE regress_s.docs INHERIT regress_s.open_parent');
CREATE TABLE regress_s.open_parted (id int, tenant_id uuid NOT NULL, who text) PARTITION BY RANGE (id);
SELECT regress_try('ALTER TABLE regress_s.open_parted ATTACH PARTITION regress_s.docs FOR VALUES FROM (0) TO (100)');
RESET ROLE;
-- A superuser is refused too: only unprotect() weakens.
SELECT regress_try('ALTER TABLE regress_s.docs DISABLE ROW LEVEL SECURITY');
SELECT regress_try('DROP POLICY tenancy_isolation ON regress_s.docs');
SELECT regress_try('ALTER TABLE regress_s.docs DROP COLUMN tenant_id CASCADE');
-- Still intact.
SELECT * FROM regress_state('regress_s.docs');
-- What is allowed: other DDL, the owner's own policies and triggers,
-- renaming the table, dropping the tenant index (performance, not
-- isolation).
SET ROLE regress_owner;
ALTER TABLE regress_s.docs ADD COLUMN note text;
ALTER TABLE regress_s.docs DROP COLUMN note;
ALTER TABLE regress_s.docs RENAME TO docs2;
ALTER TABLE regress_s.docs2 RENAME TO docs;
ALTER TABLE regress_s.docs ALTER COLUMN tenant_id SET DEFAULT tenancy.current_tenant_id();
RESET ROLE;

----------------------------------------------------------------------
-- TRUNCATE: refused for non-administrators, even the owner
----------------------------------------------------------------------
GRANT TRUNCATE ON regress_s.docs TO regress_admin;
SET ROLE regress_owner;
SELECT regress_try('TRUNCATE regress_s.docs');
RESET ROLE;
BEGIN;
SET LOCAL ROLE regress_admin;
TRUNCATE regress_s.docs;
ROLLBACK;
BEGIN;
TRUNCATE regress_s.docs;
ROLLBACK;
SELECT count(*) AS rows_kept FROM regress_s.docs;

----------------------------------------------------------------------
-- A failed protect() inside a savepoint leaves no bypass behind
----------------------------------------------------------------------
-- The backfill UPDATE runs as the table owner, so the owner's trigger
-- runs with the owner's rights; here it fails, after protect() turned the
-- DDL guard's bypass on.
CREATE TABLE regress_s.trapped (id int);
INSERT INTO regress_s.trapped VALUES (1);
ALTER TABLE regress_s.trapped OWNER TO regress_owner;
CREATE FUNCTION regress_s.refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'update refused (running as %)', current_user;
END
$$;
CREATE TRIGGER refuse BEFORE UPDATE ON regress_s.trapped FOR EACH ROW EXECUTE FUNCTION regress_s.refuse();
BEGIN;
SAVEPOINT s;
SELECT tenancy.protect('regress_s.trapped', backfill_tenant => 'acme');
ROLLBACK TO s;
SELECT tenancy._ddl_bypass(NULL) AS bypass_after_rollback;
SELECT regress_try('ALTER TABLE regress_s.docs DISABLE ROW LEVEL SECURITY');
SELECT regress_try('DROP POLICY tenancy_isolation ON regress_s.docs');
COMMIT;
SELECT * FROM regress_state('regress_s.trapped');
-- Caught inside a function, the same.
DO $$
BEGIN
    PERFORM tenancy.protect('regress_s.trapped', backfill_tenant => 'acme');
EXCEPTION WHEN OTHERS THEN
    RAISE NOTICE 'caught: %', SQLERRM;
END
$$;
SELECT regress_try('ALTER TABLE regress_s.docs NO FORCE ROW LEVEL SECURITY');
-- A user's trigger does not run with the bypass on either: it cannot
-- weaken another protected table during a backfill.
CREATE OR REPLACE FUNCTION regress_s.refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    ALTER TABLE regress_s.docs DISABLE ROW LEVEL SECURITY;
    RETURN NEW;
END
$$;
SELECT regress_try($$SELECT tenancy.protect('regress_s.trapped', backfill_tenant => 'acme')$$);
DROP TRIGGER refuse ON regress_s.trapped;
SELECT tenancy.protect('regress_s.trapped', backfill_tenant => 'acme');
SELECT tenancy._ddl_bypass(NULL) AS bypass_after_protect;

----------------------------------------------------------------------
-- Look-alikes: a policy or trigger that has one of tenancy's names before
-- protect() is replaced by tenancy's own
----------------------------------------------------------------------
SET ROLE regress_owner;
CREATE TABLE regress_s.lookalike (id int, tenant_id uuid NOT NULL, who text);
CREATE POLICY tenancy_isolation ON regress_s.lookalike AS RESTRICTIVE FOR ALL TO PUBLIC
    USING (true) WITH CHECK (true);
CREATE TRIGGER tenancy_guard BEFORE INSERT OR UPDATE ON regress_s.lookalike
    FOR EACH ROW EXECUTE FUNCTION regress_s.noop();
CREATE TRIGGER tenancy_quota AFTER INSERT OR UPDATE OR DELETE ON regress_s.lookalike
    FOR EACH ROW EXECUTE FUNCTION regress_s.noop();
CREATE TRIGGER tenancy_quota_truncate AFTER TRUNCATE ON regress_s.lookalike
    FOR EACH STATEMENT EXECUTE FUNCTION regress_s.noop();
RESET ROLE;
INSERT INTO regress_s.lookalike VALUES (1, :'acme', 'acme-1'), (2, :'bolt', 'bolt-2');
SELECT tenancy.protect('regress_s.lookalike');
SELECT what, value FROM regress_state('regress_s.lookalike') WHERE what = 'policy';
SELECT tgname, tgfoid::regproc AS function, tgenabled FROM pg_trigger
 WHERE tgrelid = 'regress_s.lookalike'::regclass ORDER BY tgname;
SELECT count(*) AS problems FROM tenancy._protected_problems(ARRAY['regress_s.lookalike'::regclass::oid]);
-- Isolated: the owner reads and deletes the context tenant's rows only,
-- and the rows that were there count.
SET ROLE regress_owner;
SET app.tenant_id = :'acme';
SELECT who FROM regress_s.lookalike;
SELECT used AS acme_rows FROM tenancy.check_quota('rows:regress_s.lookalike');
DELETE FROM regress_s.lookalike;
RESET app.tenant_id;
RESET ROLE;
SELECT who FROM regress_s.lookalike;
-- A second protect() of an intact table changes nothing.
SELECT tenancy.protect('regress_s.lookalike');
SELECT what, value FROM regress_state('regress_s.lookalike') WHERE what IN ('policy', 'index');
DROP TABLE regress_s.lookalike;

----------------------------------------------------------------------
-- Partitioned tables
----------------------------------------------------------------------
SET ROLE regress_owner;
CREATE TABLE regress_s.events (id int, tenant_id uuid, at date NOT NULL, who text)
    PARTITION BY RANGE (at);
CREATE TABLE regress_s.events_2025 PARTITION OF regress_s.events
    FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
-- A sub-partitioned partition.
CREATE TABLE regress_s.events_2026 PARTITION OF regress_s.events
    FOR VALUES FROM ('2026-01-01') TO ('2027-01-01') PARTITION BY HASH (id);
CREATE TABLE regress_s.events_2026_a PARTITION OF regress_s.events_2026 FOR VALUES WITH (MODULUS 2, REMAINDER 0);
CREATE TABLE regress_s.events_2026_b PARTITION OF regress_s.events_2026 FOR VALUES WITH (MODULUS 2, REMAINDER 1);
RESET ROLE;
-- Protecting a partition alone would leave it readable through its parent.
SELECT regress_try($$SELECT tenancy.protect('regress_s.events_2025')$$);
SELECT tenancy.protect('regress_s.events');
-- Future partitions: created by the owner, and attached.
SET ROLE regress_owner;
CREATE TABLE regress_s.events_2027 PARTITION OF regress_s.events
    FOR VALUES FROM ('2027-01-01') TO ('2028-01-01');
CREATE TABLE regress_s.events_2028 (LIKE regress_s.events);
ALTER TABLE regress_s.events ATTACH PARTITION regress_s.events_2028
    FOR VALUES FROM ('2028-01-01') TO ('2029-01-01');
CREATE TABLE regress_s.events_2029 PARTITION OF regress_s.events
    FOR VALUES FROM ('2029-01-01') TO ('2030-01-01') PARTITION BY LIST (who);
CREATE TABLE regress_s.events_2029_x PARTITION OF regress_s.events_2029 DEFAULT;
RESET ROLE;
SELECT c.relname, c.relkind, p.tenant_column IS NOT NULL AS listed,
       c.relrowsecurity AND c.relforcerowsecurity AS rls_forced,
       (SELECT string_agg(polname || CASE WHEN polpermissive THEN '' ELSE ' (restrictive)' END, ', ' ORDER BY polname)
          FROM pg_policy WHERE polrelid = c.oid) AS policies,
       (SELECT string_agg(tgname || CASE WHEN tgparentid <> 0 THEN ' (cloned)' ELSE '' END, ', ' ORDER BY tgname)
          FROM pg_trigger WHERE tgrelid = c.oid) AS triggers
  FROM pg_class c LEFT JOIN tenancy.protected_tables p ON p.relid = c.oid
 WHERE c.relnamespace = 'regress_s'::regnamespace AND c.relname LIKE 'events%' AND c.relkind IN ('r', 'p')
 ORDER BY c.relname;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA regress_s TO regress_reader;
BEGIN;
SET LOCAL ROLE regress_reader;
SET LOCAL app.tenant_id = :'acme';
INSERT INTO regress_s.events (id, at, who) SELECT i, date '2025-01-01' + i * 100, 'acme' FROM generate_series(1, 16) i;
SET LOCAL app.tenant_id = :'bolt';
INSERT INTO regress_s.events (id, at, who) SELECT i, date '2025-01-01' + i * 100, 'bolt' FROM generate_series(1, 16) i;
SELECT regress_try(format($$INSERT INTO regress_s.events_2027 VALUES (1, %L, '2027-06-01', 'forged')$$, :'acme'));
SELECT regress_try(format($$UPDATE regress_s.events_2026_b SET tenant_id = %L$$, :'acme'));
COMMIT;
-- Each partition, queried directly, shows the context tenant's rows only.
SET ROLE regress_owner;
SET app.tenant_id = :'acme';
SELECT tableoid::regclass AS part, count(*), min(who), max(who) FROM regress_s.events
 GROUP BY 1 ORDER BY tableoid::regclass::text;
SELECT 'events_2025' AS part, count(*), max(who) FROM regress_s.events_2025
UNION ALL SELECT 'events_2026', count(*), max(who) FROM regress_s.events_2026
UNION ALL SELECT 'events_2026_a', count(*), max(who) FROM regress_s.events_2026_a
UNION ALL SELECT 'events_2026_b', count(*), max(who) FROM regress_s.events_2026_b
UNION ALL SELECT 'events_2027', count(*), max(who) FROM regress_s.events_2027
UNION ALL SELECT 'events_2028', count(*), max(who) FROM regress_s.events_2028
UNION ALL SELECT 'events_2029_x', count(*), max(who) FROM regress_s.events_2029_x;
UPDATE regress_s.events_2028 SET who = 'touched';
DELETE FROM regress_s.events_2025;
RESET app.tenant_id;
SELECT regress_try('SELECT count(*) FROM regress_s.events_2026_b');
-- Weakening a partition, or its parent, is refused.
SELECT cmd, regress_try(cmd) FROM (VALUES
    ('ALTER TABLE regress_s.events_2026_a DISABLE ROW LEVEL SECURITY'),
    ('ALTER TABLE regress_s.events_2026_a NO FORCE ROW LEVEL SECURITY'),
    ('DROP POLICY tenancy_isolation ON regress_s.events_2027'),
    ('ALTER POLICY tenancy_isolation ON regress_s.events_2027 TO regress_reader'),
    ('ALTER TABLE regress_s.events_2027 DISABLE TRIGGER tenancy_guard'),
    ('DROP TRIGGER tenancy_truncate_guard ON regress_s.events_2028'),
    ('ALTER TABLE regress_s.events DISABLE TRIGGER tenancy_guard'),
    ('ALTER TABLE regress_s.events DROP COLUMN tenant_id'),
    ('ALTER TABLE regress_s.events ALTER COLUMN tenant_id TYPE text'),
    ('ALTER TABLE regress_s.events_2027 DROP COLUMN tenant_id'),
    ('ALTER TABLE regress_s.events_2026_a ALTER COLUMN tenant_id TYPE text'),
    ('ALTER TABLE regress_s.events_2026 RENAME COLUMN tenant_id TO org'),
    ('TRUNCATE regress_s.events_2026_b'),
    ('TRUNCATE regress_s.events')
) AS c(cmd);
-- A detached partition stays protected.
ALTER TABLE regress_s.events DETACH PARTITION regress_s.events_2028;
-- (PostgreSQL drops the row trigger cloned from the parent; tenancy puts
-- its own back)
SELECT what, value FROM regress_state('regress_s.events_2028') WHERE what IN ('trigger', 'rls', 'listed');
SELECT regress_try('SELECT count(*) FROM regress_s.events_2028');
SELECT regress_try('ALTER TABLE regress_s.events_2028 DISABLE ROW LEVEL SECURITY');
RESET ROLE;
-- unprotect() of a partition of a protected table: 55000.
SELECT regress_try($$SELECT tenancy.unprotect('regress_s.events_2027')$$);
-- Superusers are not subject to row level security: all rows.
SELECT count(*) AS all_rows FROM regress_s.events;
-- Nor are BYPASSRLS roles (even without a context).
CREATE ROLE regress_bypass BYPASSRLS;
GRANT USAGE ON SCHEMA regress_s TO regress_bypass;
GRANT SELECT ON regress_s.events TO regress_bypass;
SET ROLE regress_bypass;
SELECT count(*) AS all_rows_bypassrls FROM regress_s.events;
RESET ROLE;

-- ATTACH PARTITION of a table with a look-alike tenancy_isolation (a
-- restrictive policy USING (true)): the partition ends with tenancy's.
SET ROLE regress_owner;
CREATE TABLE regress_s.ev (id int, tenant_id uuid NOT NULL, k int) PARTITION BY RANGE (id);
CREATE TABLE regress_s.ev_x PARTITION OF regress_s.ev FOR VALUES FROM (0) TO (10);
RESET ROLE;
SELECT tenancy.protect('regress_s.ev');
SET ROLE regress_owner;
CREATE TABLE regress_s.ev_y (id int, tenant_id uuid NOT NULL, k int);
CREATE POLICY tenancy_isolation ON regress_s.ev_y AS RESTRICTIVE FOR ALL TO PUBLIC
    USING (true) WITH CHECK (true);
ALTER TABLE regress_s.ev ATTACH PARTITION regress_s.ev_y FOR VALUES FROM (40) TO (50);
RESET ROLE;
SELECT what, value FROM regress_state('regress_s.ev_y') WHERE what IN ('policy', 'listed');
INSERT INTO regress_s.ev VALUES (1, :'acme', 1), (41, :'acme', 1), (42, :'bolt', 1);
SET ROLE regress_owner;
SET app.tenant_id = :'acme';
SELECT id FROM regress_s.ev_y ORDER BY id;
DELETE FROM regress_s.ev_y;
RESET app.tenant_id;
RESET ROLE;
SELECT id FROM regress_s.ev_y ORDER BY id;

-- A partition detached from a protected table stays protected, and can
-- be attached again (its own row triggers make way for the parent's);
-- rows:<root> follows it out and back.  So can a protected table of its
-- own, and a sub-partitioned partition.
SET ROLE regress_owner;
CREATE TABLE regress_s.ev_w PARTITION OF regress_s.ev FOR VALUES FROM (60) TO (70);
CREATE TABLE regress_s.ev_m PARTITION OF regress_s.ev FOR VALUES FROM (70) TO (80) PARTITION BY RANGE (id);
CREATE TABLE regress_s.ev_m1 PARTITION OF regress_s.ev_m FOR VALUES FROM (70) TO (80);
RESET ROLE;
CREATE TABLE regress_s.ev_s (id int, tenant_id uuid NOT NULL, k int);
ALTER TABLE regress_s.ev_s OWNER TO regress_owner;
INSERT INTO regress_s.ev_s VALUES (51, :'acme', 1), (52, :'acme', 1);
SELECT tenancy.protect('regress_s.ev_s');
INSERT INTO regress_s.ev VALUES (61, :'acme', 1), (62, :'acme', 1), (63, :'bolt', 1), (71, :'acme', 1);
CREATE FUNCTION pg_temp.acme_rows() RETURNS TABLE (resource text, used bigint) LANGUAGE sql AS $$
    SELECT resource, used FROM tenancy.quota_usage('acme')
     WHERE resource ~ '^rows:(regress_s\.)?ev(_[a-z0-9]+)?$' AND used <> 0 ORDER BY 1
$$;
SELECT * FROM pg_temp.acme_rows();
SET ROLE regress_owner;
ALTER TABLE regress_s.ev DETACH PARTITION regress_s.ev_w;
ALTER TABLE regress_s.ev DETACH PARTITION regress_s.ev_m;
RESET ROLE;
SELECT * FROM pg_temp.acme_rows();
SELECT what, value FROM regress_state('regress_s.ev_m1') WHERE what IN ('trigger', 'listed');
SET ROLE regress_owner;
ALTER TABLE regress_s.ev ATTACH PARTITION regress_s.ev_w FOR VALUES FROM (60) TO (70);
ALTER TABLE regress_s.ev ATTACH PARTITION regress_s.ev_m FOR VALUES FROM (70) TO (80);
ALTER TABLE regress_s.ev ATTACH PARTITION regress_s.ev_s FOR VALUES FROM (50) TO (60);
RESET ROLE;
SELECT * FROM pg_temp.acme_rows();
SELECT used AS acme_rows FROM tenancy.check_quota('rows:regress_s.ev', tenant => 'acme');
SELECT c.relname, (SELECT string_agg(tgname || CASE WHEN tgparentid <> 0 THEN ' (cloned)' ELSE '' END, ', ' ORDER BY tgname)
                     FROM pg_trigger WHERE tgrelid = c.oid) AS triggers
  FROM pg_class c WHERE c.oid IN ('regress_s.ev_w'::regclass, 'regress_s.ev_m'::regclass,
                                 'regress_s.ev_m1'::regclass, 'regress_s.ev_s'::regclass)
 ORDER BY 1;
SELECT count(*) AS problems FROM tenancy._protected_problems();
-- Counting goes on: a new row and a deleted one, as acme.
SET ROLE regress_owner;
SET app.tenant_id = :'acme';
INSERT INTO regress_s.ev VALUES (64, DEFAULT, 1);
DELETE FROM regress_s.ev WHERE id = 51;
SELECT count(*) AS acme_rows_seen FROM regress_s.ev;
RESET app.tenant_id;
RESET ROLE;
SELECT * FROM pg_temp.acme_rows();
-- A table protected by another column than the parent cannot be attached.
CREATE TABLE regress_s.ev2 (id int, tenant_id uuid NOT NULL, org uuid NOT NULL) PARTITION BY RANGE (id);
CREATE TABLE regress_s.ev2_a (id int, tenant_id uuid NOT NULL, org uuid NOT NULL);
SELECT tenancy.protect('regress_s.ev2');
SELECT tenancy.protect('regress_s.ev2_a', 'org');
SELECT regress_try('ALTER TABLE regress_s.ev2 ATTACH PARTITION regress_s.ev2_a FOR VALUES FROM (0) TO (10)');
SELECT tenancy.unprotect('regress_s.ev2');
DROP TABLE regress_s.ev, regress_s.ev2, regress_s.ev2_a;

-- Inheritance (INHERITS) children are protected like partitions: present
-- ones by protect(), new ones when created or attached (ALTER TABLE ...
-- INHERIT), so a child queried directly is isolated as well.
SET ROLE regress_owner;
CREATE TABLE regress_s.notes (id int, tenant_id uuid, who text);
CREATE TABLE regress_s.notes_old () INHERITS (regress_s.notes);
RESET ROLE;
INSERT INTO regress_s.notes_old VALUES (1, :'acme', 'acme-old'), (2, :'bolt', 'bolt-old');
SELECT tenancy.protect('regress_s.notes');
SET ROLE regress_owner;
CREATE TABLE regress_s.notes_new () INHERITS (regress_s.notes);
CREATE TABLE regress_s.notes_later (id int, tenant_id uuid NOT NULL, who text);
ALTER TABLE regress_s.notes_later INHERIT regress_s.notes;
RESET ROLE;
SELECT relid, tenant_column FROM tenancy.protected_tables
 WHERE relid::text LIKE '%notes%' ORDER BY relid::text;
SELECT what, value FROM regress_state('regress_s.notes_new') WHERE what IN ('rls', 'policy');
-- Each child has an index leading with the tenant column.
SELECT indrelid::regclass AS child, pg_get_indexdef(indexrelid) LIKE '%(tenant_id)' AS tenant_index
  FROM pg_index WHERE indrelid IN ('regress_s.notes_old'::regclass, 'regress_s.notes_new'::regclass,
                                   'regress_s.notes_later'::regclass)
 ORDER BY 1::text;
-- A child with a look-alike tenancy_isolation gets tenancy's.
SET ROLE regress_owner;
CREATE TABLE regress_s.notes_fake (id int, tenant_id uuid NOT NULL, who text);
CREATE POLICY tenancy_isolation ON regress_s.notes_fake AS RESTRICTIVE USING (true) WITH CHECK (true);
ALTER TABLE regress_s.notes_fake INHERIT regress_s.notes;
RESET ROLE;
SELECT what, value FROM regress_state('regress_s.notes_fake') WHERE what = 'policy';
INSERT INTO regress_s.notes_new VALUES (3, :'bolt', 'bolt-new');
INSERT INTO regress_s.notes_later VALUES (4, :'bolt', 'bolt-later');
GRANT SELECT, INSERT ON regress_s.notes, regress_s.notes_old, regress_s.notes_new,
      regress_s.notes_later TO regress_reader;
SET ROLE regress_reader;
SET app.tenant_id = :'acme';
SELECT who FROM regress_s.notes ORDER BY who;
SELECT count(*) AS bolt_rows_seen FROM regress_s.notes_old WHERE who LIKE 'bolt%';
SELECT count(*) AS bolt_rows_seen FROM regress_s.notes_new;
SELECT count(*) AS bolt_rows_seen FROM regress_s.notes_later;
SELECT regress_try(format('INSERT INTO regress_s.notes_new VALUES (5, %L, ''forged'')', :'bolt'));
INSERT INTO regress_s.notes_new (id, who) VALUES (6, 'acme-new') RETURNING who, tenant_id = :'acme' AS own;
RESET app.tenant_id;
SELECT regress_try('SELECT count(*) FROM regress_s.notes_new');
RESET ROLE;
-- unprotect() of a child of a protected table: 55000; of the parent: the
-- whole tree.
SELECT count(*) AS listed FROM tenancy.protected_tables WHERE relid::text LIKE '%notes%';
SELECT regress_try($$SELECT tenancy.unprotect('regress_s.notes_new')$$);
SELECT tenancy.unprotect('regress_s.notes');
SELECT count(*) AS still_listed FROM tenancy.protected_tables WHERE relid::text LIKE '%notes%';
DROP TABLE regress_s.notes CASCADE;

----------------------------------------------------------------------
-- tenancy.auto_protect
----------------------------------------------------------------------
SET tenancy.auto_protect = on;
SET ROLE regress_owner;
CREATE TABLE regress_s.auto_yes (id int, tenant_id uuid);
CREATE TABLE regress_s.auto_text (id int, tenant_id text);
CREATE TABLE regress_s.auto_other (id int, org uuid);
CREATE TABLE regress_s.auto_parted (id int, tenant_id uuid) PARTITION BY LIST (id);
CREATE TABLE regress_s.auto_parted_1 PARTITION OF regress_s.auto_parted FOR VALUES IN (1);
CREATE TABLE regress_s.auto_as AS SELECT 1 AS id, NULL::uuid AS tenant_id WHERE false;
CREATE TEMP TABLE auto_temp (id int, tenant_id uuid);
-- Not in a session that runs with row_security off, as pg_restore does:
-- a restore brings the protection of its tables back from the dump.
SET row_security = off;
CREATE TABLE regress_s.auto_restored (id int, tenant_id uuid);
RESET row_security;
SELECT relname, p.tenant_column AS protected_by
  FROM pg_class c LEFT JOIN tenancy.protected_tables p ON p.relid = c.oid
 WHERE c.relname = 'auto_temp';
DROP TABLE auto_temp;
RESET ROLE;
RESET tenancy.auto_protect;
CREATE TABLE regress_s.auto_off (id int, tenant_id uuid);
SELECT c.relname, p.tenant_column AS protected_by
  FROM pg_class c LEFT JOIN tenancy.protected_tables p ON p.relid = c.oid
 WHERE c.relname LIKE 'auto\_%' AND c.relkind IN ('r', 'p')
 ORDER BY 1;
SELECT * FROM regress_state('regress_s.auto_yes') WHERE what IN ('rls', 'column');
-- A generated tenant column cannot take the default: 55000, with a HINT.
CREATE TABLE regress_s.gen (id int, tenant_id uuid GENERATED ALWAYS AS ('00000000-0000-0000-0000-000000000001'::uuid) STORED);
SELECT regress_try($$SELECT tenancy.protect('regress_s.gen')$$);
SELECT count(*) AS gen_listed FROM tenancy.protected_tables WHERE relid = 'regress_s.gen'::regclass;
DROP TABLE regress_s.gen;

----------------------------------------------------------------------
-- Hostile identifiers
----------------------------------------------------------------------
CREATE SCHEMA "Odd ""Schema"" ";
CREATE TABLE "Odd ""Schema"" "."My Table; DROP TABLE x" (id int, "Tenant ""Col""" uuid);
INSERT INTO "Odd ""Schema"" "."My Table; DROP TABLE x" VALUES (1, NULL);
ALTER SCHEMA "Odd ""Schema"" " OWNER TO regress_owner;
ALTER TABLE "Odd ""Schema"" "."My Table; DROP TABLE x" OWNER TO regress_owner;
SELECT tenancy.protect('"Odd ""Schema"" "."My Table; DROP TABLE x"', 'Tenant "Col"', 'bolt');
SELECT * FROM regress_state('"Odd ""Schema"" "."My Table; DROP TABLE x"');
SET ROLE regress_owner;
SET app.tenant_id = :'bolt';
INSERT INTO "Odd ""Schema"" "."My Table; DROP TABLE x" (id) VALUES (2);
SELECT id FROM "Odd ""Schema"" "."My Table; DROP TABLE x" ORDER BY id;
SET app.tenant_id = :'acme';
SELECT count(*) FROM "Odd ""Schema"" "."My Table; DROP TABLE x";
RESET app.tenant_id;
SELECT regress_try($$ALTER TABLE "Odd ""Schema"" "."My Table; DROP TABLE x" DROP COLUMN "Tenant ""Col"""$$);
SELECT regress_try($$ALTER TABLE "Odd ""Schema"" "."My Table; DROP TABLE x" RENAME "Tenant ""Col""" TO x$$);
RESET ROLE;
SELECT tenancy.unprotect('"Odd ""Schema"" "."My Table; DROP TABLE x"');
SELECT * FROM regress_state('"Odd ""Schema"" "."My Table; DROP TABLE x"');

----------------------------------------------------------------------
-- Plans: the tenant index, and parallel query under RLS
----------------------------------------------------------------------
CREATE TABLE regress_s.big (id int, tenant_id uuid NOT NULL, pad text);
-- 100 other tenants' rows (ids need not exist: written by a superuser).
INSERT INTO regress_s.big
SELECT i, md5((i % 100)::text)::uuid, repeat('x', 50) FROM generate_series(1, 20000) i;
INSERT INTO regress_s.big SELECT i, :'acme', 'acme' FROM generate_series(1, 150) i;
ALTER TABLE regress_s.big OWNER TO regress_owner;
SELECT tenancy.protect('regress_s.big');
ANALYZE regress_s.big;
SET ROLE regress_owner;
SET app.tenant_id = :'acme';
EXPLAIN (COSTS OFF) SELECT count(*) FROM regress_s.big;
SELECT count(*), min(pad), max(pad) FROM regress_s.big;
-- Parallel query still happens under the policies: the context is an
-- InitPlan evaluated by the leader and passed to the workers.
BEGIN;
SET LOCAL enable_indexscan = off;
SET LOCAL enable_bitmapscan = off;
SET LOCAL parallel_setup_cost = 0;
SET LOCAL parallel_tuple_cost = 0;
SET LOCAL min_parallel_table_scan_size = 0;
SET LOCAL max_parallel_workers_per_gather = 2;
EXPLAIN (COSTS OFF) SELECT count(*) FROM regress_s.big;
SELECT count(*), min(pad), max(pad) FROM regress_s.big;
COMMIT;
RESET app.tenant_id;
RESET ROLE;

----------------------------------------------------------------------
-- unprotect() reverses protect() and keeps the data; DROP TABLE unlists
----------------------------------------------------------------------
SELECT tenancy.unprotect('regress_s.docs');
SELECT * FROM regress_state('regress_s.docs');
SELECT id, who FROM regress_s.docs ORDER BY id;
-- Now ordinary DDL again.
ALTER TABLE regress_s.docs DISABLE TRIGGER ALL;
SELECT tenancy.unprotect('regress_s.docs');
-- The partitioned table with all its partitions.
SELECT tenancy.unprotect('regress_s.events');
SELECT relid FROM tenancy.protected_tables WHERE relid::text LIKE '%events%' ORDER BY relid::text;
-- Unprotecting keeps RLS for the user's own policies.
SET ROLE regress_owner;
CREATE POLICY regress_mine ON regress_s.big USING (id < 10);
RESET ROLE;
SELECT tenancy.unprotect('regress_s.big');
SELECT * FROM regress_state('regress_s.big') WHERE what IN ('rls', 'policy');
-- DROP TABLE takes the table off the list.
SELECT count(*) AS listed_before FROM tenancy.protected_tables WHERE relid = 'regress_s.plain'::regclass;
DROP TABLE regress_s.plain;
SELECT count(*) AS listed_after FROM tenancy.protected_tables WHERE relid::text LIKE '%plain%';
-- The audit log has one row per protect() and unprotect().
SELECT action, count(*) FROM tenancy.audit_log
 WHERE action IN ('protect', 'unprotect') AND id > :audit_start GROUP BY 1 ORDER BY 1;
SELECT target, details FROM tenancy.audit_log WHERE action = 'protect' AND target LIKE '%docs%';

-- Clean up.
SET client_min_messages = warning;
DROP SCHEMA regress_s CASCADE;
DROP SCHEMA "Odd ""Schema"" " CASCADE;
RESET client_min_messages;
SELECT count(*) AS still_listed FROM tenancy.protected_tables;
SELECT count(*) AS purged
  FROM (SELECT tenancy.delete_tenant(slug), tenancy.purge_tenant(slug) FROM tenancy.tenants) s;
DROP FUNCTION public.regress_try(text);
DROP FUNCTION public.regress_state(regclass);
DROP ROLE regress_owner, regress_reader, regress_admin, regress_bypass;
