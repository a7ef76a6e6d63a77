-- The tenant context (SPEC section 2): what app.tenant_id accepts, who may
-- set it by which route, the second check where it is used, the
-- per-transaction cache, poolers, security-restricted operations, parallel
-- workers.
--
-- Unprivileged logins are simulated with SET SESSION AUTHORIZATION, which
-- changes session_user (the role the rule is judged by).  Routes that need a
-- connection of their own (PGOPTIONS, ALTER ROLE/DATABASE SET at login,
-- postgresql.conf) are in test/t/021_context_routes.pl.
\set VERBOSITY default
SET client_min_messages = warning;

-- Fixed tenants, so that the expected output can show their ids.
INSERT INTO tenancy.tenants (id, slug, name, plan, status, expires_at) VALUES
    ('a0000000-0000-4000-8000-000000000001', 'acme', 'Acme', 'free', 'active', NULL),
    ('b0000000-0000-4000-8000-000000000002', 'globex', 'Globex', 'free', 'active', NULL),
    ('c0000000-0000-4000-8000-000000000003', 'initech', 'Initech', 'free', 'suspended', NULL),
    ('d0000000-0000-4000-8000-000000000004', 'hooli', 'Hooli', 'free', 'active', now() - interval '1 day'),
    ('e0000000-0000-4000-8000-000000000005', 'umbrella', 'Umbrella', 'free', 'deleted', NULL);

-- Bindings are simulated by setting tenancy.session_binding as a superuser,
-- as tenancy.authenticate() does.  The binding is re-validated once per
-- transaction against tenancy.api_keys, so the keys it names must exist (the
-- hashes are placeholders: these keys are never presented).
INSERT INTO tenancy.api_keys (id, tenant_id, name, prefix, key_hash) VALUES
    ('f0000000-0000-4000-8000-000000000009', 'a0000000-0000-4000-8000-000000000001',
     'regress acme', 'tk_regress1', '\x01'),
    ('f0000000-0000-4000-8000-00000000000a', 'b0000000-0000-4000-8000-000000000002',
     'regress globex', 'tk_regress2', '\x02');

CREATE ROLE regress_ctx_user LOGIN;                         -- nobody special
CREATE ROLE regress_ctx_app LOGIN IN ROLE tenancy_app;      -- direct member
CREATE ROLE regress_ctx_group NOLOGIN IN ROLE tenancy_app;
CREATE ROLE regress_ctx_indirect LOGIN IN ROLE regress_ctx_group;  -- indirect
CREATE ROLE regress_ctx_noinherit LOGIN NOINHERIT IN ROLE tenancy_app;
CREATE ROLE regress_ctx_admin LOGIN IN ROLE tenancy_admin;
GRANT regress_ctx_user TO regress_ctx_app;  -- the PostgREST pattern: app may SET ROLE user

-- Run a command, report 'ok' or its SQLSTATE and message.
CREATE FUNCTION regress_try(cmd text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE cmd;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END
$$;

-- A table isolated like a protected one: a restrictive policy on the
-- context, a permissive one that lets everything else through.
CREATE TABLE regress_ctx_docs (
    tenant_id uuid NOT NULL DEFAULT tenancy.current_tenant_id(),
    body text
);
ALTER TABLE regress_ctx_docs ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY iso ON regress_ctx_docs AS RESTRICTIVE
    USING (tenant_id = (SELECT tenancy.current_tenant_id()));
CREATE POLICY allow ON regress_ctx_docs USING (true);
GRANT SELECT, INSERT ON regress_ctx_docs TO PUBLIC;
INSERT INTO regress_ctx_docs VALUES
    ('a0000000-0000-4000-8000-000000000001', 'acme 1'),
    ('a0000000-0000-4000-8000-000000000001', 'acme 2'),
    ('b0000000-0000-4000-8000-000000000002', 'globex 1');

--------------------------------------------------------------------------
-- 1. Syntax: a uuid in any form uuid_in takes, stored canonical; '' always.
--------------------------------------------------------------------------
SET app.tenant_id = '{A0000000-0000-4000-8000-000000000001}';
SHOW app.tenant_id;
SET app.tenant_id = 'B0000000000040008000000000000002';
SHOW app.tenant_id;
SET app.tenant_id = 'a000-0000-0000-4000-8000-0000-0000-0001';
SHOW app.tenant_id;
SELECT set_config('app.tenant_id', 'B0000000-0000-4000-8000-000000000002', false);
SET app.tenant_id = '';
SHOW app.tenant_id;
SET app.tenant_id = 'acme';
\echo :SQLSTATE
SHOW app.tenant_id;
SELECT v, regress_try(format('SET app.tenant_id = %L', v)) FROM (VALUES
    ('a0000000-0000-4000-8000-00000000000'),     -- one digit short
    ('a0000000-0000-4000-8000-0000000000011'),   -- one digit long
    ('a0000000--0000-4000-8000-000000000001'),   -- double hyphen
    ('-a0000000-0000-4000-8000-000000000001'),   -- leading hyphen
    ('a0000000-0000-4000-8000-000000000001-'),   -- trailing hyphen
    ('{a0000000-0000-4000-8000-000000000001'),   -- unbalanced brace
    (' a0000000-0000-4000-8000-000000000001'),   -- blank
    ('g0000000-0000-4000-8000-000000000001')     -- not hex
) AS t(v);
SELECT regress_try($$SELECT set_config('app.tenant_id', 'nope', true)$$);
SELECT regress_try($$SET tenancy.default_tenant = 'nope'$$);
SELECT regress_try($$SET tenancy.session_binding = 'nope'$$);
SET tenancy.default_tenant = '{A0000000-0000-4000-8000-000000000001}';
SHOW tenancy.default_tenant;
RESET tenancy.default_tenant;
SET tenancy.session_binding = '{A0000000-0000-4000-8000-000000000001}:F0000000000040008000000000000009';
SELECT current_setting('tenancy.session_binding');
RESET tenancy.session_binding;
SHOW app.tenant_id;

--------------------------------------------------------------------------
-- 2. Who may set it.  A superuser (this session) may.
--------------------------------------------------------------------------
SET app.tenant_id = 'a0000000-0000-4000-8000-000000000001';
SELECT tenancy.current_tenant_id();
RESET app.tenant_id;

-- Members of tenancy_app or tenancy_admin, directly, indirectly, NOINHERIT.
SET SESSION AUTHORIZATION regress_ctx_app;
SET app.tenant_id = 'a0000000-0000-4000-8000-000000000001';
SELECT session_user, tenancy.current_tenant_id(), count(*) FROM regress_ctx_docs;
RESET app.tenant_id;
SET SESSION AUTHORIZATION regress_ctx_indirect;
SELECT regress_try($$SET app.tenant_id = 'b0000000-0000-4000-8000-000000000002'$$);
SELECT session_user, tenancy.current_tenant_id(), count(*) FROM regress_ctx_docs;
RESET app.tenant_id;
SET SESSION AUTHORIZATION regress_ctx_noinherit;
SELECT regress_try($$SET app.tenant_id = 'b0000000-0000-4000-8000-000000000002'$$);
SELECT session_user, tenancy.current_tenant_id(), count(*) FROM regress_ctx_docs;
RESET app.tenant_id;
SET SESSION AUTHORIZATION regress_ctx_admin;
SELECT regress_try($$SET app.tenant_id = 'b0000000-0000-4000-8000-000000000002'$$);
SELECT session_user, tenancy.current_tenant_id(), count(*) FROM regress_ctx_docs;
RESET app.tenant_id;
RESET SESSION AUTHORIZATION;

-- Everyone else: 42501 on every route, for every tenant; '' is allowed.
CREATE FUNCTION regress_ctx_with_set() RETURNS uuid LANGUAGE sql
    SET app.tenant_id = 'a0000000-0000-4000-8000-000000000001'
    AS 'SELECT tenancy.current_tenant_id()';
CREATE FUNCTION regress_ctx_definer() RETURNS text LANGUAGE sql SECURITY DEFINER
    AS $$SELECT set_config('app.tenant_id', 'a0000000-0000-4000-8000-000000000001', false)$$;
SET SESSION AUTHORIZATION regress_ctx_user;
SET app.tenant_id = 'a0000000-0000-4000-8000-000000000001';
\echo :SQLSTATE
BEGIN;
SET LOCAL app.tenant_id = 'a0000000-0000-4000-8000-000000000001';
\echo :SQLSTATE
ROLLBACK;
SELECT set_config('app.tenant_id', 'a0000000-0000-4000-8000-000000000001', false);
\echo :SQLSTATE
SELECT route, regress_try(cmd) FROM (VALUES
    ('set_config local', $$SELECT set_config('app.tenant_id', 'a0000000-0000-4000-8000-000000000001', true)$$),
    ('unknown uuid', $$SET app.tenant_id = 'f0000000-0000-4000-8000-00000000000f'$$),
    ('function SET clause', $$SELECT regress_ctx_with_set()$$),
    ('SECURITY DEFINER of a superuser', $$SELECT regress_ctx_definer()$$),
    ('CREATE FUNCTION SET', $$CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql
        SET app.tenant_id = 'a0000000-0000-4000-8000-000000000001' AS 'SELECT 1'$$),
    ('ALTER ROLE SET', $$ALTER ROLE regress_ctx_user SET app.tenant_id = 'a0000000-0000-4000-8000-000000000001'$$),
    ('set_tenant slug', $$SELECT tenancy.set_tenant('acme')$$),
    ('set_tenant uuid', $$SELECT tenancy.set_tenant('a0000000-0000-4000-8000-000000000001')$$),
    ('set_tenant unknown slug', $$SELECT tenancy.set_tenant('no-such-tenant')$$),
    ('set_tenant unknown uuid', $$SELECT tenancy.set_tenant('f0000000-0000-4000-8000-00000000000f', true)$$),
    ('set_tenant not a slug', $$SELECT tenancy.set_tenant('NOT A SLUG')$$),
    ('SET ROLE tenancy_app', $$SET ROLE tenancy_app$$),
    ('binding', $$SET tenancy.session_binding = 'a0000000-0000-4000-8000-000000000001:f0000000-0000-4000-8000-000000000009'$$),
    ('default tenant', $$SET tenancy.default_tenant = 'a0000000-0000-4000-8000-000000000001'$$),
    ('what the leader checked', $$SET tenancy.context_checked = 'a0000000-0000-4000-8000-000000000001/10/'$$),
    ('clear', $$SET app.tenant_id = ''$$),
    ('clear locally', $$SELECT set_config('app.tenant_id', '', true)$$)
) AS t(route, cmd);
SHOW app.tenant_id;
-- The SET clause is judged with the details of the refusal.
SELECT regress_ctx_with_set();
SELECT tenancy.current_tenant_id();
\echo :SQLSTATE
SELECT count(*) FROM regress_ctx_docs;
\echo :SQLSTATE
RESET SESSION AUTHORIZATION;

-- A privileged login may set the context and SET ROLE to an unprivileged
-- role, before or after, and keep working (and switching): the rule is
-- judged by session_user.
SET SESSION AUTHORIZATION regress_ctx_app;
SET ROLE regress_ctx_user;
SET app.tenant_id = 'a0000000-0000-4000-8000-000000000001';
SELECT session_user, current_user, body FROM regress_ctx_docs ORDER BY body;
SELECT tenancy.set_tenant('globex');
SELECT session_user, current_user, body FROM regress_ctx_docs ORDER BY body;
INSERT INTO regress_ctx_docs (body) VALUES ('globex 2') RETURNING tenant_id;
RESET ROLE;
RESET app.tenant_id;
RESET SESSION AUTHORIZATION;

-- The reverse: a context set by a privileged session user does not survive
-- a change of session user to an unprivileged one, even inside the
-- transaction that validated it (the cache is keyed by session user).
BEGIN;
SET LOCAL app.tenant_id = 'a0000000-0000-4000-8000-000000000001';
SELECT tenancy.current_tenant_id();
SET SESSION AUTHORIZATION regress_ctx_user;
SELECT tenancy.current_tenant_id();
ROLLBACK;
RESET SESSION AUTHORIZATION;

--------------------------------------------------------------------------
-- 3. A bound session (tenancy.authenticate() sets the binding; simulated
--    here by a superuser) may act for its tenant only, whoever logged in.
--------------------------------------------------------------------------
SET tenancy.session_binding = 'a0000000-0000-4000-8000-000000000001:f0000000-0000-4000-8000-000000000009';
SET SESSION AUTHORIZATION regress_ctx_user;
SET app.tenant_id = 'A0000000-0000-4000-8000-000000000001';
SELECT tenancy.current_tenant_id(), count(*) FROM regress_ctx_docs;
SELECT route, regress_try(cmd) FROM (VALUES
    ('other tenant', $$SET app.tenant_id = 'b0000000-0000-4000-8000-000000000002'$$),
    ('unknown tenant', $$SET app.tenant_id = 'f0000000-0000-4000-8000-00000000000f'$$),
    ('set_tenant own slug', $$SELECT tenancy.set_tenant('acme')$$),
    ('set_tenant other slug', $$SELECT tenancy.set_tenant('globex')$$),
    ('set_tenant unknown slug', $$SELECT tenancy.set_tenant('no-such-tenant')$$),
    ('drop the binding', $$SET tenancy.session_binding = ''$$),
    ('own status', $$SELECT tenancy.tenant_status('acme')$$),
    ('other status', $$SELECT tenancy.tenant_status('globex')$$),
    ('unknown status', $$SELECT tenancy.tenant_status('no-such-tenant')$$)
) AS t(route, cmd);
SELECT tenancy.set_tenant('acme');
SET app.tenant_id = 'b0000000-0000-4000-8000-000000000002';
RESET SESSION AUTHORIZATION;
-- Even a privileged login is held to the tenant of its binding.
SET SESSION AUTHORIZATION regress_ctx_app;
SELECT regress_try($$SET app.tenant_id = 'b0000000-0000-4000-8000-000000000002'$$);
RESET SESSION AUTHORIZATION;
-- A bound session cannot fall back to another default tenant.
SET tenancy.default_tenant = 'b0000000-0000-4000-8000-000000000002';
SET app.tenant_id = '';
SET SESSION AUTHORIZATION regress_ctx_user;
SELECT tenancy.current_tenant_id();
RESET SESSION AUTHORIZATION;
SET tenancy.default_tenant = 'a0000000-0000-4000-8000-000000000001';
SET SESSION AUTHORIZATION regress_ctx_user;
SELECT tenancy.current_tenant_id();
RESET SESSION AUTHORIZATION;
-- A binding replaced under a set context: the second check refuses it.
SET app.tenant_id = 'a0000000-0000-4000-8000-000000000001';
SET tenancy.session_binding = 'b0000000-0000-4000-8000-000000000002:f0000000-0000-4000-8000-00000000000a';
SELECT tenancy.current_tenant_id();
-- RESET ALL clears the context and the binding (an unprivileged session
-- may do it: what remains is no context at all).
SET SESSION AUTHORIZATION regress_ctx_user;
RESET ALL;
SELECT current_setting('app.tenant_id') AS tenant_id,
       current_setting('tenancy.session_binding') AS binding,
       current_setting('tenancy.default_tenant') AS default_tenant;
RESET SESSION AUTHORIZATION;
-- DISCARD ALL too.
SET tenancy.session_binding = 'a0000000-0000-4000-8000-000000000001:f0000000-0000-4000-8000-000000000009';
SET app.tenant_id = 'a0000000-0000-4000-8000-000000000001';
DISCARD ALL;
SELECT current_setting('app.tenant_id') AS tenant_id,
       current_setting('tenancy.session_binding') AS binding;
SET client_min_messages = warning;

--------------------------------------------------------------------------
-- 4. Where it is used: no context, unknown, not active.
--------------------------------------------------------------------------
SELECT tenancy.current_tenant_id();
\echo :SQLSTATE
SELECT * FROM tenancy.current_tenant();
\echo :SQLSTATE
SET app.tenant_id = 'f0000000-0000-4000-8000-00000000000f';
SELECT tenancy.current_tenant_id();
\echo :SQLSTATE
SET app.tenant_id = 'c0000000-0000-4000-8000-000000000003';
SELECT tenancy.current_tenant_id();
\echo :SQLSTATE
SET app.tenant_id = 'd0000000-0000-4000-8000-000000000004';
SELECT tenancy.current_tenant_id();
\echo :SQLSTATE
SET app.tenant_id = 'e0000000-0000-4000-8000-000000000005';
SELECT tenancy.current_tenant_id();
\echo :SQLSTATE
SELECT slug, tenancy.tenant_status(slug), tenancy.tenant_status(id::text)
  FROM tenancy.tenants ORDER BY slug;
SELECT regress_try($$SELECT tenancy.tenant_status('no-such-tenant')$$);
SET app.tenant_id = 'a0000000-0000-4000-8000-000000000001';
SELECT id, slug, name, plan, status FROM tenancy.current_tenant();
RESET app.tenant_id;

-- tenancy.default_tenant: used when app.tenant_id is empty, by anyone.
SET tenancy.default_tenant = 'b0000000-0000-4000-8000-000000000002';
SET SESSION AUTHORIZATION regress_ctx_user;
SELECT tenancy.current_tenant_id(), (tenancy.current_tenant()).slug;
SELECT body FROM regress_ctx_docs ORDER BY body;
SELECT tenancy.tenant_status('globex');
SELECT regress_try($$SELECT tenancy.tenant_status('acme')$$);
SELECT regress_try($$SELECT tenancy.tenant_id('acme')$$);
RESET SESSION AUTHORIZATION;
SET tenancy.default_tenant = '';
SELECT tenancy.current_tenant_id();
\echo :SQLSTATE
RESET tenancy.default_tenant;

--------------------------------------------------------------------------
-- 5. set_tenant: slug or uuid, returns the uuid, is_local reverts.
--------------------------------------------------------------------------
SELECT tenancy.set_tenant('globex');
SHOW app.tenant_id;
SELECT tenancy.set_tenant('{A0000000-0000-4000-8000-000000000001}');
SHOW app.tenant_id;
BEGIN;
SELECT tenancy.set_tenant('globex', true);
SHOW app.tenant_id;
SELECT tenancy.current_tenant_id();
COMMIT;
SHOW app.tenant_id;
SELECT regress_try($$SELECT tenancy.set_tenant('no-such-tenant')$$);
SELECT regress_try($$SELECT tenancy.set_tenant(NULL)$$);
-- Status is checked where the context is used, not when it is set.
SELECT tenancy.set_tenant('initech');
SELECT tenancy.current_tenant_id();
\echo :SQLSTATE
RESET app.tenant_id;

--------------------------------------------------------------------------
-- 6. Poolers: SET LOCAL and set_tenant(..., true) revert at commit and at
--    rollback.
--------------------------------------------------------------------------
SET SESSION AUTHORIZATION regress_ctx_app;
BEGIN;
SET LOCAL app.tenant_id = 'a0000000-0000-4000-8000-000000000001';
SELECT count(*) FROM regress_ctx_docs;
COMMIT;
SHOW app.tenant_id;
BEGIN;
SELECT tenancy.set_tenant('globex', true);
SELECT count(*) FROM regress_ctx_docs;
ROLLBACK;
SHOW app.tenant_id;
SELECT count(*) FROM regress_ctx_docs;
\echo :SQLSTATE
RESET SESSION AUTHORIZATION;

--------------------------------------------------------------------------
-- 7. The cache: validated once per transaction, re-validated when the
--    context changes, also for a prepared statement with a generic plan,
--    and after ROLLBACK TO SAVEPOINT.
--------------------------------------------------------------------------
SET plan_cache_mode = force_generic_plan;
PREPARE ctx AS SELECT t.slug FROM tenancy.tenants t WHERE t.id = tenancy.current_tenant_id();
BEGIN;
SET LOCAL app.tenant_id = 'a0000000-0000-4000-8000-000000000001';
EXECUTE ctx;
SET LOCAL app.tenant_id = 'b0000000-0000-4000-8000-000000000002';
EXECUTE ctx;
SAVEPOINT s;
SET LOCAL app.tenant_id = 'a0000000-0000-4000-8000-000000000001';
EXECUTE ctx;
ROLLBACK TO SAVEPOINT s;
EXECUTE ctx;
SAVEPOINT s2;
SET LOCAL app.tenant_id = 'c0000000-0000-4000-8000-000000000003';
EXECUTE ctx;
ROLLBACK TO SAVEPOINT s2;
EXECUTE ctx;
SET LOCAL app.tenant_id = 'c0000000-0000-4000-8000-000000000003';
EXECUTE ctx;
ROLLBACK;
-- A status change is seen at the next transaction, not within the one
-- that validated the context (see also the isolation test context-status).
SET app.tenant_id = 'a0000000-0000-4000-8000-000000000001';
BEGIN;
EXECUTE ctx;
UPDATE tenancy.tenants SET status = 'suspended' WHERE slug = 'acme';
EXECUTE ctx;
COMMIT;
EXECUTE ctx;
\echo :SQLSTATE
UPDATE tenancy.tenants SET status = 'active' WHERE slug = 'acme';
EXECUTE ctx;
DEALLOCATE ctx;
RESET plan_cache_mode;
RESET app.tenant_id;

--------------------------------------------------------------------------
-- 8. No change inside a security-restricted operation, whoever runs it:
--    index expressions, materialized view queries.
--------------------------------------------------------------------------
CREATE FUNCTION regress_ctx_switch(i int, v text) RETURNS int
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    PERFORM set_config('app.tenant_id', v, false);
    RETURN i;
END
$$;
CREATE TABLE regress_ctx_sro (i int);
INSERT INTO regress_ctx_sro VALUES (1);
SET app.tenant_id = 'a0000000-0000-4000-8000-000000000001';
CREATE INDEX ON regress_ctx_sro (regress_ctx_switch(i, 'b0000000-0000-4000-8000-000000000002'));
\echo :SQLSTATE
CREATE INDEX ON regress_ctx_sro (regress_ctx_switch(i, ''));
\echo :SQLSTATE
SHOW app.tenant_id;
CREATE MATERIALIZED VIEW regress_ctx_mv AS
    SELECT set_config('app.tenant_id', 'b0000000-0000-4000-8000-000000000002', false) AS v
    WITH NO DATA;
REFRESH MATERIALIZED VIEW regress_ctx_mv;
\echo :SQLSTATE
CREATE MATERIALIZED VIEW regress_ctx_mv2 AS
    SELECT tenancy.set_tenant('globex') AS v WITH NO DATA;
REFRESH MATERIALIZED VIEW regress_ctx_mv2;
\echo :SQLSTATE
CREATE MATERIALIZED VIEW regress_ctx_mv3 AS
    SELECT set_config('tenancy.session_binding', 'b0000000-0000-4000-8000-000000000002:f0000000-0000-4000-8000-00000000000a', false) AS v
    WITH NO DATA;
REFRESH MATERIALIZED VIEW regress_ctx_mv3;
\echo :SQLSTATE
SHOW app.tenant_id;
-- RESET does not go through the check hook: a reset in there (to the
-- session's reset value: here none, from PGOPTIONS or ALTER ROLE ... SET
-- another tenant) is refused where the context is next used.
CREATE FUNCTION regress_ctx_reset(i int) RETURNS int
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    PERFORM set_config('app.tenant_id', NULL, false);
    PERFORM tenancy.current_tenant_id();
    RETURN i;
END
$$;
CREATE INDEX ON regress_ctx_sro (regress_ctx_reset(i));
\echo :SQLSTATE
CREATE FUNCTION regress_ctx_reset2() RETURNS uuid
LANGUAGE plpgsql AS $$
BEGIN
    RESET app.tenant_id;
    RETURN tenancy.current_tenant_id();
END
$$;
CREATE MATERIALIZED VIEW regress_ctx_mv5 AS SELECT regress_ctx_reset2() AS v WITH NO DATA;
REFRESH MATERIALIZED VIEW regress_ctx_mv5;
\echo :SQLSTATE
SHOW app.tenant_id;
-- Reading the context there is fine.
CREATE MATERIALIZED VIEW regress_ctx_mv4 AS SELECT tenancy.current_tenant_id() AS v;
SELECT v FROM regress_ctx_mv4;
RESET app.tenant_id;

--------------------------------------------------------------------------
-- 9. Parallel workers inherit the context and check it again.
--------------------------------------------------------------------------
CREATE TABLE regress_ctx_par AS
    SELECT g, (CASE WHEN g % 4 = 0 THEN 'a0000000-0000-4000-8000-000000000001'
                    ELSE 'b0000000-0000-4000-8000-000000000002' END)::uuid AS tenant_id
      FROM generate_series(1, 4000) g;
ALTER TABLE regress_ctx_par ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
-- Per row, not an InitPlan: evaluated inside the workers.
CREATE POLICY iso ON regress_ctx_par AS RESTRICTIVE USING (tenant_id = tenancy.current_tenant_id());
CREATE POLICY allow ON regress_ctx_par USING (true);
GRANT SELECT ON regress_ctx_par TO PUBLIC;
ANALYZE regress_ctx_par;
-- The process it runs in (VOLATILE, but declared safe to run in workers).
CREATE FUNCTION regress_ctx_pid() RETURNS int LANGUAGE sql VOLATILE PARALLEL SAFE
    AS 'SELECT pg_catalog.pg_backend_pid()';
SET force_parallel_mode = on;
SET parallel_setup_cost = 0;
SET parallel_tuple_cost = 0;
SET min_parallel_table_scan_size = 0;
SET max_parallel_workers_per_gather = 2;
SET parallel_leader_participation = off;
SELECT pg_backend_pid() AS leader_pid \gset

-- A privileged login that SET ROLEs to an unprivileged role.
SET SESSION AUTHORIZATION regress_ctx_app;
SET ROLE regress_ctx_user;
SET app.tenant_id = 'a0000000-0000-4000-8000-000000000001';
EXPLAIN (COSTS OFF) SELECT count(*) FROM regress_ctx_par;
SELECT count(*) FROM regress_ctx_par;
SELECT regress_ctx_pid() <> :leader_pid AS in_worker,
       tenancy.current_tenant_id() FROM (VALUES (1)) v;
-- What the leader published for its workers lasts for the transaction.
BEGIN;
SELECT count(*) FROM regress_ctx_par;
SELECT current_setting('tenancy.context_checked') ~ '^a0000000-0000-4000-8000-000000000001/[0-9]+/$' AS published;
COMMIT;
SHOW tenancy.context_checked;
RESET ROLE;
RESET app.tenant_id;
RESET SESSION AUTHORIZATION;
-- A bound session.
SET tenancy.session_binding = 'b0000000-0000-4000-8000-000000000002:f0000000-0000-4000-8000-00000000000a';
SET SESSION AUTHORIZATION regress_ctx_user;
SET app.tenant_id = 'b0000000-0000-4000-8000-000000000002';
SELECT count(*) FROM regress_ctx_par;
SELECT regress_ctx_pid() <> :leader_pid AS in_worker,
       tenancy.current_tenant_id() FROM (VALUES (1)) v;
-- The worker checks again: a context this session may not use fails there
-- (a target list is not pre-evaluated by the planner in the leader; the
-- error comes from the worker).
RESET SESSION AUTHORIZATION;
SET tenancy.session_binding = 'a0000000-0000-4000-8000-000000000001:f0000000-0000-4000-8000-000000000009';
SET SESSION AUTHORIZATION regress_ctx_user;
SELECT regress_ctx_pid() <> :leader_pid AS in_worker,
       tenancy.current_tenant_id() FROM (VALUES (1)) v;
\echo :SQLSTATE
-- Through the policy, the planner's estimate in the leader fails first.
SELECT count(*) FROM regress_ctx_par;
\echo :SQLSTATE
RESET SESSION AUTHORIZATION;
RESET ALL;

--------------------------------------------------------------------------
-- Clean up.
--------------------------------------------------------------------------
DROP MATERIALIZED VIEW regress_ctx_mv, regress_ctx_mv2, regress_ctx_mv3, regress_ctx_mv4,
    regress_ctx_mv5;
DROP TABLE regress_ctx_docs, regress_ctx_sro, regress_ctx_par;
DROP FUNCTION regress_ctx_switch(int, text), regress_ctx_reset(int), regress_ctx_reset2(),
    regress_ctx_pid(), regress_ctx_with_set(),
    regress_ctx_definer(), regress_try(text);
DROP ROLE regress_ctx_user, regress_ctx_app, regress_ctx_indirect, regress_ctx_group,
    regress_ctx_noinherit, regress_ctx_admin;
DELETE FROM tenancy.tenants WHERE slug IN ('acme', 'globex', 'initech', 'hooli', 'umbrella');
