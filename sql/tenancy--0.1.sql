/* sql/tenancy--0.1.sql: install script of tenancy 0.1 */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION tenancy" to load this file. \quit

--------------------------------------------------------------------------
-- 0. Installation model
--------------------------------------------------------------------------

-- Refuse to install unless the library was preloaded (55000 with a HINT).
CREATE FUNCTION tenancy._assert_preloaded() RETURNS void
LANGUAGE c AS 'MODULE_PATHNAME', 'tenancy_assert_preloaded';
SELECT tenancy._assert_preloaded();

-- Shared memory may still hold state of a tenancy dropped from this
-- database (quota counters and their waiting deltas, waiting usage, rate
-- buckets): it goes, the tables made here (and restored, maybe) are the
-- truth.  Only CREATE EXTENSION may call it.
CREATE FUNCTION tenancy._forget_database_state() RETURNS void
LANGUAGE c AS 'MODULE_PATHNAME', 'tenancy_forget_database_state';
SELECT tenancy._forget_database_state();

-- The two roles, created if missing (roles are cluster-wide).
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'tenancy_admin') THEN
        CREATE ROLE tenancy_admin NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'tenancy_app') THEN
        CREATE ROLE tenancy_app NOLOGIN;
    END IF;
END
$roles$;

GRANT USAGE ON SCHEMA tenancy TO PUBLIC;

--------------------------------------------------------------------------
-- 1. Tenants
--------------------------------------------------------------------------

CREATE TABLE tenancy.plans (
    name        text PRIMARY KEY,
    description text,
    features    text[] NOT NULL DEFAULT '{}'
);
INSERT INTO tenancy.plans (name, description) VALUES
    ('free', 'Free plan'),
    ('pro', 'Pro plan'),
    ('enterprise', 'Enterprise plan: no limits');
-- The three built-in plans come with the extension; dump only the others.
SELECT pg_catalog.pg_extension_config_dump('tenancy.plans',
    $$WHERE name NOT IN ('free', 'pro', 'enterprise')$$);

-- Column order matters: src/tenant.c reads id, slug, status and expires_at
-- by position.  Later versions may only add columns at the end.
CREATE TABLE tenancy.tenants (
    id          uuid NOT NULL DEFAULT pg_catalog.gen_random_uuid(),
    slug        text COLLATE "C" NOT NULL,
    name        text NOT NULL,
    plan        text NOT NULL,            -- references plans (section 5 end)
    status      text NOT NULL DEFAULT 'active',
    expires_at  timestamptz,
    metadata    jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    deleted_at  timestamptz,
    CONSTRAINT tenants_pkey PRIMARY KEY (id),
    CONSTRAINT tenants_slug_key UNIQUE (slug),
    CONSTRAINT tenants_status_check CHECK (status IN ('active', 'suspended', 'deleted')),
    CONSTRAINT tenants_slug_check CHECK (slug ~ '^[a-z0-9][a-z0-9-]{1,30}[a-z0-9]$')
);
SELECT pg_catalog.pg_extension_config_dump('tenancy.tenants', '');

-- Backends cache tenant rows (src/tenant.c); any change of the table sends a
-- relcache invalidation at commit, so every session sees it at its next
-- transaction.  ALWAYS: also while a restore runs as a replica.
CREATE FUNCTION tenancy._tenants_changed() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'tenancy_tenants_changed';
CREATE TRIGGER tenants_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON tenancy.tenants
    FOR EACH STATEMENT EXECUTE FUNCTION tenancy._tenants_changed();
ALTER TABLE tenancy.tenants ENABLE ALWAYS TRIGGER tenants_changed;

--------------------------------------------------------------------------
-- 7. Audit log (written by every administrative function)
--------------------------------------------------------------------------

CREATE TABLE tenancy.audit_log (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    actor       text NOT NULL DEFAULT pg_catalog."session_user"(),
    tenant_id   uuid,
    action      text NOT NULL,
    target      text,
    details     jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_at_idx ON tenancy.audit_log (at);
CREATE INDEX audit_log_tenant_idx ON tenancy.audit_log (tenant_id, at);
SELECT pg_catalog.pg_extension_config_dump('tenancy.audit_log', '');
SELECT pg_catalog.pg_extension_config_dump('tenancy.audit_log_id_seq', '');

-- Append one audit row.  Internal: called by SECURITY DEFINER functions.
CREATE FUNCTION tenancy._audit(action text, tenant uuid, target text, details jsonb DEFAULT '{}')
RETURNS void LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO tenancy.audit_log (action, tenant_id, target, details)
    VALUES (action, tenant, target, coalesce(details, '{}'::jsonb));
$$;

--------------------------------------------------------------------------
-- 2. Tenant context (C)
--------------------------------------------------------------------------

CREATE FUNCTION tenancy.current_tenant_id() RETURNS uuid
LANGUAGE c STABLE PARALLEL SAFE
AS 'MODULE_PATHNAME', 'tenancy_current_tenant_id';

CREATE FUNCTION tenancy.set_tenant(tenant text, is_local boolean DEFAULT false) RETURNS uuid
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'tenancy_set_tenant';

CREATE FUNCTION tenancy.tenant_id(tenant text) RETURNS uuid
LANGUAGE c STABLE PARALLEL SAFE
AS 'MODULE_PATHNAME', 'tenancy_tenant_id';

CREATE FUNCTION tenancy.tenant_status(tenant text) RETURNS text
LANGUAGE c STABLE PARALLEL SAFE
AS 'MODULE_PATHNAME', 'tenancy_tenant_status';

-- Row level security on tenancy.tenants: a tenant session sees its own row,
-- tenancy_admin sees all.  The owner (the extension) is not filtered.
ALTER TABLE tenancy.tenants ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenants_own ON tenancy.tenants FOR SELECT TO PUBLIC
    USING (id OPERATOR(pg_catalog.=) (SELECT tenancy.current_tenant_id()));
CREATE POLICY tenants_admin ON tenancy.tenants FOR SELECT TO tenancy_admin
    USING (true);
GRANT SELECT ON tenancy.tenants TO PUBLIC;
GRANT SELECT ON tenancy.plans TO PUBLIC;
GRANT SELECT ON tenancy.audit_log TO tenancy_admin;

CREATE FUNCTION tenancy.current_tenant() RETURNS tenancy.tenants
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT t.* FROM tenancy.tenants t
     WHERE t.id OPERATOR(pg_catalog.=) tenancy.current_tenant_id();
$$;

--------------------------------------------------------------------------
-- 1. Tenant administration (tenancy_admin)
--------------------------------------------------------------------------

-- Raise 22023 naming the slug rule that s breaks.
CREATE FUNCTION tenancy._check_slug(s text) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF s IS NULL THEN
        RAISE EXCEPTION 'tenancy: slug must not be null'
            USING ERRCODE = '22023', HINT = 'Pass a slug such as ''acme-corp''.';
    ELSIF length(s) < 3 OR length(s) > 32 THEN
        RAISE EXCEPTION 'tenancy: slug must be 3 to 32 characters long'
            USING ERRCODE = '22023', DETAIL = format('The slug has %s characters.', length(s)),
                  HINT = 'Use 3 to 32 characters of a-z, 0-9 and -.';
    ELSIF s !~ '^[a-z0-9-]*$' THEN
        RAISE EXCEPTION 'tenancy: slug may contain only a-z, 0-9 and -'
            USING ERRCODE = '22023', HINT = 'Use lower-case letters, digits and hyphens.';
    ELSIF s ~ '^-' OR s ~ '-$' THEN
        RAISE EXCEPTION 'tenancy: slug must not start or end with -'
            USING ERRCODE = '22023', HINT = 'Remove the leading or trailing hyphen.';
    END IF;
END
$$;

-- Raise 22023 unless p names a plan.
CREATE FUNCTION tenancy._check_plan(p text) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p IS NULL OR NOT EXISTS (SELECT FROM tenancy.plans WHERE name OPERATOR(pg_catalog.=) p) THEN
        RAISE EXCEPTION 'tenancy: unknown plan'
            USING ERRCODE = '22023', DETAIL = format('There is no plan %L.', p),
                  HINT = 'Use a plan of tenancy.plans: free, pro, enterprise or one you added.';
    END IF;
END
$$;

-- Raise 22023 unless m is a JSON object.
CREATE FUNCTION tenancy._check_metadata(m jsonb) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF m IS NOT NULL AND jsonb_typeof(m) OPERATOR(pg_catalog.<>) 'object' THEN
        RAISE EXCEPTION 'tenancy: metadata must be a JSON object'
            USING ERRCODE = '22023', DETAIL = format('It is a JSON %s.', jsonb_typeof(m)),
                  HINT = 'Pass an object such as ''{"region": "eu"}''.';
    END IF;
END
$$;

CREATE FUNCTION tenancy.create_tenant(slug text, name text DEFAULT NULL, plan text DEFAULT 'free',
                                      metadata jsonb DEFAULT '{}', expires_at timestamptz DEFAULT NULL)
RETURNS uuid
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    new_id uuid;
BEGIN
    PERFORM tenancy._check_slug(slug);
    PERFORM tenancy._check_plan(plan);
    PERFORM tenancy._check_metadata(metadata);
    BEGIN
        INSERT INTO tenancy.tenants (slug, name, plan, metadata, expires_at)
        VALUES (slug, coalesce(name, slug), plan, coalesce(metadata, '{}'), expires_at)
        RETURNING id INTO new_id;
    EXCEPTION WHEN unique_violation THEN
        RAISE EXCEPTION 'tenancy: a tenant with slug "%" already exists', slug
            USING ERRCODE = '23505', HINT = 'Choose another slug.';
    END;
    PERFORM tenancy._audit('tenant.create', new_id, slug,
        jsonb_build_object('name', coalesce(name, slug), 'plan', plan, 'expires_at', expires_at));
    RETURN new_id;
END
$$;

CREATE FUNCTION tenancy.update_tenant(tenant text, name text DEFAULT NULL, plan text DEFAULT NULL,
                                      metadata jsonb DEFAULT NULL, expires_at timestamptz DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    tid uuid := tenancy.tenant_id(tenant);
BEGIN
    IF plan IS NOT NULL THEN
        PERFORM tenancy._check_plan(plan);
    END IF;
    PERFORM tenancy._check_metadata(metadata);
    IF pg_catalog.num_nonnulls(name, plan, metadata, expires_at) OPERATOR(pg_catalog.=) 0 THEN
        RETURN;     -- nothing to change, nothing to audit
    END IF;
    UPDATE tenancy.tenants t
       SET name = coalesce(update_tenant.name, t.name),
           plan = coalesce(update_tenant.plan, t.plan),
           metadata = coalesce(update_tenant.metadata, t.metadata),
           expires_at = coalesce(update_tenant.expires_at, t.expires_at),
           updated_at = now()
     WHERE t.id OPERATOR(pg_catalog.=) tid;
    PERFORM tenancy._audit('tenant.update', tid,
        (SELECT t.slug FROM tenancy.tenants t WHERE t.id OPERATOR(pg_catalog.=) tid),
        jsonb_strip_nulls(jsonb_build_object('name', name, 'plan', plan, 'metadata', metadata,
                                             'expires_at', expires_at)));
END
$$;

-- Set the stored status of a tenant; internal.
CREATE FUNCTION tenancy._set_status(tenant text, new_status text, action text, details jsonb)
RETURNS uuid
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    tid uuid := tenancy.tenant_id(tenant);
    old_status text;
BEGIN
    SELECT t.status INTO old_status FROM tenancy.tenants t
     WHERE t.id OPERATOR(pg_catalog.=) tid FOR NO KEY UPDATE;
    -- Nothing changes, nothing is audited (a second suspend, say).
    IF old_status OPERATOR(pg_catalog.=) new_status THEN
        RETURN tid;
    END IF;
    UPDATE tenancy.tenants t
       SET status = new_status,
           updated_at = now(),
           -- A second delete_tenant() keeps the first date (purge_after counts from it).
           deleted_at = CASE WHEN new_status OPERATOR(pg_catalog.=) 'deleted' THEN coalesce(t.deleted_at, now()) END
     WHERE t.id OPERATOR(pg_catalog.=) tid;
    -- Purged by a transaction that committed while this one waited for it.
    IF NOT FOUND THEN
        RAISE EXCEPTION 'tenancy: unknown tenant'
            USING ERRCODE = 'TN002', DETAIL = format('No tenant has the slug or id "%s".', tenant),
                  HINT = 'Pass the slug or the id of an existing tenant.';
    END IF;
    -- Audit rows name tenants by slug, however the caller named them.
    PERFORM tenancy._audit(action, tid,
        (SELECT t.slug FROM tenancy.tenants t WHERE t.id OPERATOR(pg_catalog.=) tid), details);
    RETURN tid;
END
$$;

CREATE FUNCTION tenancy.suspend_tenant(tenant text, reason text DEFAULT NULL) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF tenancy.tenant_status(tenant) OPERATOR(pg_catalog.=) 'deleted' THEN
        RAISE EXCEPTION 'tenancy: tenant is deleted'
            USING ERRCODE = '55000', HINT = 'Call tenancy.activate_tenant() first to restore it.';
    END IF;
    PERFORM tenancy._set_status(tenant, 'suspended', 'tenant.suspend',
                                jsonb_strip_nulls(jsonb_build_object('reason', reason)));
END
$$;

CREATE FUNCTION tenancy.activate_tenant(tenant text) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM tenancy._set_status(tenant, 'active', 'tenant.activate', '{}');
END
$$;

CREATE FUNCTION tenancy.delete_tenant(tenant text) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    tid uuid;
BEGIN
    tid := tenancy._set_status(tenant, 'deleted', 'tenant.delete', '{}');
    PERFORM tenancy._on_tenant_deleted(tid);
END
$$;

-- What else a soft delete does: revoke the tenant's keys (section 5 owns
-- this body).
CREATE FUNCTION tenancy._on_tenant_deleted(tid uuid) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n bigint;
BEGIN
    -- api_keys is created in section 5; at run time it exists.
    EXECUTE 'WITH r AS (UPDATE tenancy.api_keys SET revoked_at = pg_catalog.now()
                         WHERE tenant_id OPERATOR(pg_catalog.=) $1 AND revoked_at IS NULL
                        RETURNING 1)
             SELECT pg_catalog.count(*) FROM r' INTO n USING tid;
    IF n OPERATOR(pg_catalog.>) 0 THEN
        PERFORM tenancy._audit('api_key.revoke', tid, NULL,
                               jsonb_build_object('reason', 'tenant deleted', 'keys', n));
    END IF;
END
$$;

-- Remove a tenant's own state beyond protected tables (keys, quotas,
-- usage); later sections replace it.  Returns nothing.
CREATE FUNCTION tenancy._purge_tenant_state(tid uuid) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM tenancy._purge_tenant_usage(tid);
    PERFORM tenancy._quota_purge(tid);      -- quota usage (section 4)
END
$$;

--------------------------------------------------------------------------
-- 3. Protected tables
--------------------------------------------------------------------------

CREATE TABLE tenancy.protected_tables (
    relid         regclass PRIMARY KEY,
    tenant_column name NOT NULL,
    protected_at  timestamptz NOT NULL DEFAULT pg_catalog.now()
);
SELECT pg_catalog.pg_extension_config_dump('tenancy.protected_tables', '');
GRANT SELECT ON tenancy.protected_tables TO PUBLIC;

CREATE FUNCTION tenancy._row_guard() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'tenancy_row_guard';

CREATE FUNCTION tenancy._truncate_guard() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'tenancy_truncate_guard';

CREATE FUNCTION tenancy._ddl_bypass(on_ boolean) RETURNS boolean
LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'tenancy_ddl_bypass';

-- Run a statement ($1 = a tenant) against a user's table as its owner, in
-- a security-restricted operation: the owner's triggers never run with
-- the rights of the extension owner.  Internal; see src/protect.c.
CREATE FUNCTION tenancy._exec_as_owner(tbl regclass, query text, tenant uuid) RETURNS bigint
LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'tenancy_exec_as_owner';

-- The triggers every protected table carries, as tenancy makes them.  A
-- trigger of one of these names that is not tenancy's (another function,
-- arguments, events, a WHEN clause or a column list) is dropped and made
-- again: protect() never keeps a look-alike.  A trigger cloned from a
-- parent follows the parent's, which is set up first.  The row triggers
-- of a partitioned table are cloned onto its partitions, so a partition's
-- own trigger of the same name would collide with the clone: it goes
-- first.
CREATE FUNCTION tenancy._attach_triggers(tbl regclass, col name) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t record;
    cur record;
    d record;
    args bytea := pg_catalog.convert_to(col::text, pg_catalog.getdatabaseencoding())
                  OPERATOR(pg_catalog.||) '\x00'::bytea;
    parted boolean := (SELECT c.relkind OPERATOR(pg_catalog.=) 'p' FROM pg_class c
                        WHERE c.oid OPERATOR(pg_catalog.=) tbl);
BEGIN
    -- Quota counting (section 4): rows:<table> and storage_bytes.  The
    -- TRUNCATE trigger is per table, and its creation marks the moment the
    -- table's present rows start to count.
    FOR t IN SELECT * FROM (VALUES
        (1, 'tenancy_guard'::name, 'tenancy._row_guard()', 23, args, true, false,
         format('CREATE TRIGGER tenancy_guard BEFORE INSERT OR UPDATE ON %s '
                'FOR EACH ROW EXECUTE FUNCTION tenancy._row_guard(%L)', tbl, col)),
        (2, 'tenancy_truncate_guard'::name, 'tenancy._truncate_guard()', 34, ''::bytea, false, false,
         format('CREATE TRIGGER tenancy_truncate_guard BEFORE TRUNCATE ON %s '
                'FOR EACH STATEMENT EXECUTE FUNCTION tenancy._truncate_guard()', tbl)),
        (3, 'tenancy_quota'::name, 'tenancy._quota_count()', 29, args, true, true,
         format('CREATE TRIGGER tenancy_quota AFTER INSERT OR UPDATE OR DELETE ON %s '
                'FOR EACH ROW EXECUTE FUNCTION tenancy._quota_count(%L)', tbl, col)),
        (4, 'tenancy_quota_truncate'::name, 'tenancy._quota_truncate()', 32, ''::bytea, false, true,
         format('CREATE TRIGGER tenancy_quota_truncate AFTER TRUNCATE ON %s '
                'FOR EACH STATEMENT EXECUTE FUNCTION tenancy._quota_truncate()', tbl))
        ) v(n, name, fn, tgtype, tgargs, is_row, always, ddl)
        ORDER BY v.n LOOP
        SELECT tr.tgparentid OPERATOR(pg_catalog.<>) 0 AS cloned,
               (tr.tgfoid OPERATOR(pg_catalog.=) t.fn::pg_catalog.regprocedure
                AND tr.tgtype OPERATOR(pg_catalog.=) t.tgtype
                AND tr.tgqual IS NULL
                AND tr.tgattr OPERATOR(pg_catalog.=) ''::pg_catalog.int2vector
                AND tr.tgconstraint OPERATOR(pg_catalog.=) 0
                AND tr.tgargs OPERATOR(pg_catalog.=) t.tgargs) AS ours
          INTO cur
          FROM pg_trigger tr
         WHERE tr.tgrelid OPERATOR(pg_catalog.=) tbl AND tr.tgname OPERATOR(pg_catalog.=) t.name;
        CONTINUE WHEN FOUND AND (cur.ours OR cur.cloned);
        IF FOUND THEN
            EXECUTE format('DROP TRIGGER %I ON %s', t.name, tbl);
        END IF;
        IF t.is_row AND parted THEN
            FOR d IN SELECT tr.tgrelid::pg_catalog.regclass AS relid
                       FROM pg_trigger tr JOIN tenancy._descendants(tbl) x
                         ON x.relid OPERATOR(pg_catalog.=) tr.tgrelid
                      WHERE tr.tgname OPERATOR(pg_catalog.=) t.name
                        AND tr.tgparentid OPERATOR(pg_catalog.=) 0
                      ORDER BY x.depth LOOP
                EXECUTE format('DROP TRIGGER %I ON %s', t.name, d.relid);
            END LOOP;
        END IF;
        EXECUTE t.ddl;
        IF t.always THEN
            EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER %I', tbl, t.name);
        END IF;
        IF t.name OPERATOR(pg_catalog.=) 'tenancy_quota_truncate' THEN
            PERFORM tenancy._quota_adopt(tbl, col);
        END IF;
    END LOOP;
END
$$;

-- The tables below tbl (partitions, at any depth, and tables that inherit
-- from it with INHERITS), with their depth; and the tables above it, nearest
-- first.  pg_partition_tree() and pg_partition_ancestors() know partitions
-- only.  Internal.
CREATE FUNCTION tenancy._descendants(tbl regclass) RETURNS TABLE (relid regclass, depth integer)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    WITH RECURSIVE d(relid, depth) AS (
        SELECT i.inhrelid, 1 FROM pg_inherits i WHERE i.inhparent OPERATOR(pg_catalog.=) tbl
        UNION
        SELECT i.inhrelid, d.depth OPERATOR(pg_catalog.+) 1
          FROM d JOIN pg_inherits i ON i.inhparent OPERATOR(pg_catalog.=) d.relid
         WHERE d.depth OPERATOR(pg_catalog.<) 100
    )
    SELECT d.relid::regclass, pg_catalog.min(d.depth)::integer FROM d GROUP BY d.relid
$$;

CREATE FUNCTION tenancy._ancestors(tbl regclass) RETURNS TABLE (relid regclass, depth integer)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    WITH RECURSIVE a(relid, depth) AS (
        SELECT i.inhparent, 1 FROM pg_inherits i WHERE i.inhrelid OPERATOR(pg_catalog.=) tbl
        UNION
        SELECT i.inhparent, a.depth OPERATOR(pg_catalog.+) 1
          FROM a JOIN pg_inherits i ON i.inhrelid OPERATOR(pg_catalog.=) a.relid
         WHERE a.depth OPERATOR(pg_catalog.<) 100
    )
    SELECT a.relid::regclass, pg_catalog.min(a.depth)::integer FROM a GROUP BY a.relid
$$;

-- Protect one relation whose tenant column is in place: default, index,
-- RLS, policies, triggers, registry.  It always ends with tenancy's own
-- tenancy_isolation: a policy of that name that says anything else (one
-- the table had before, or that came with a table being attached) is
-- dropped and made again.  Internal; the caller holds the bypass.
CREATE FUNCTION tenancy._protect_relation(tbl regclass, col name) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    listed boolean := EXISTS (SELECT FROM tenancy.protected_tables WHERE relid OPERATOR(pg_catalog.=) tbl);
BEGIN
    -- Crash recovery empties an unlogged table without firing a trigger:
    -- its rows' usage could not stay equal to what it holds.  (Also for a
    -- partition or child, protected with its parent.)
    IF (SELECT c.relpersistence FROM pg_class c WHERE c.oid OPERATOR(pg_catalog.=) tbl)
       OPERATOR(pg_catalog.=) 'u' THEN
        RAISE EXCEPTION 'tenancy: % cannot be protected: it is unlogged', tbl
            USING ERRCODE = '55000',
                  DETAIL = 'Crash recovery empties an unlogged table without firing triggers, so its rows'' quota usage could not stay exact.',
                  HINT = format('Make it logged first: ALTER TABLE %s SET LOGGED.', tbl);
    END IF;
    EXECUTE format('ALTER TABLE %s ALTER COLUMN %I SET DEFAULT tenancy.current_tenant_id()', tbl, col);
    -- An index leading with the tenant column (whole-table and valid).  A
    -- partition has the one of its partitioned parent; a table or an
    -- inheritance child gets its own.
    IF NOT (SELECT c.relispartition FROM pg_class c WHERE c.oid OPERATOR(pg_catalog.=) tbl)
       AND NOT EXISTS (SELECT FROM pg_index i
                         JOIN pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) i.indrelid
                                            AND a.attnum OPERATOR(pg_catalog.=) i.indkey[0]
                        WHERE i.indrelid OPERATOR(pg_catalog.=) tbl
                          AND a.attname OPERATOR(pg_catalog.=) col
                          AND i.indpred IS NULL AND i.indisvalid) THEN
        EXECUTE format('CREATE INDEX ON %s (%I)', tbl, col);
    END IF;
    EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY', tbl);
    -- Tenancy's own: the expressions as pg_get_expr() prints them with
    -- this search_path (equal text, same expression: a name is qualified
    -- unless it resolves to the same object).
    IF NOT EXISTS (SELECT FROM pg_policy pol
                    WHERE pol.polrelid OPERATOR(pg_catalog.=) tbl
                      AND pol.polname OPERATOR(pg_catalog.=) 'tenancy_isolation'
                      AND NOT pol.polpermissive
                      AND pol.polcmd OPERATOR(pg_catalog.=) '*'
                      AND pol.polroles OPERATOR(pg_catalog.=) '{0}'::oid[]
                      AND pg_catalog.pg_get_expr(pol.polqual, pol.polrelid)
                          OPERATOR(pg_catalog.=) pg_catalog.format('(%I = ( SELECT tenancy.current_tenant_id() AS current_tenant_id))', col)
                      AND pg_catalog.pg_get_expr(pol.polwithcheck, pol.polrelid)
                          OPERATOR(pg_catalog.=) pg_catalog.format('(%I = ( SELECT tenancy.current_tenant_id() AS current_tenant_id))', col)) THEN
        IF EXISTS (SELECT FROM pg_policy WHERE polrelid OPERATOR(pg_catalog.=) tbl
                      AND polname OPERATOR(pg_catalog.=) 'tenancy_isolation') THEN
            EXECUTE format('DROP POLICY tenancy_isolation ON %s', tbl);
        END IF;
        -- The sub-select makes the context an InitPlan: evaluated once per
        -- execution, usable as an index key, passed to parallel workers.
        EXECUTE format('CREATE POLICY tenancy_isolation ON %s AS RESTRICTIVE FOR ALL TO PUBLIC '
                       'USING (%2$I OPERATOR(pg_catalog.=) (SELECT tenancy.current_tenant_id())) '
                       'WITH CHECK (%2$I OPERATOR(pg_catalog.=) (SELECT tenancy.current_tenant_id()))',
                       tbl, col);
    END IF;
    -- Only on first protection: a user who replaced tenancy_allow with
    -- narrower policies must not get it back from a repeated protect().
    -- A permissive policy cannot widen the restrictive one, so whatever a
    -- tenancy_allow already there says, isolation holds.
    IF NOT listed AND NOT EXISTS (SELECT FROM pg_policy WHERE polrelid OPERATOR(pg_catalog.=) tbl
                                     AND polname OPERATOR(pg_catalog.=) 'tenancy_allow') THEN
        EXECUTE format('CREATE POLICY tenancy_allow ON %s AS PERMISSIVE FOR ALL TO PUBLIC '
                       'USING (true) WITH CHECK (true)', tbl);
    END IF;
    PERFORM tenancy._attach_triggers(tbl, col);
    INSERT INTO tenancy.protected_tables (relid, tenant_column) VALUES (tbl, col)
        ON CONFLICT (relid) DO NOTHING;
END
$$;

CREATE FUNCTION tenancy.protect(tbl regclass, tenant_column name DEFAULT 'tenant_id',
                                backfill_tenant text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    rel record;
    att record;
    has_column boolean;
    backfill uuid;
    has_rows boolean := false;
    previous boolean;
    part regclass;
    listed_column name;
BEGIN
    IF tbl IS NULL THEN
        RAISE EXCEPTION 'tenancy: table must not be null'
            USING ERRCODE = '22023', HINT = 'Pass the table to protect, e.g. tenancy.protect(''public.orders'').';
    END IF;
    IF tenant_column IS NULL OR tenant_column OPERATOR(pg_catalog.=) '' THEN
        RAISE EXCEPTION 'tenancy: tenant column must not be null or empty'
            USING ERRCODE = '22023', HINT = 'Omit it to use tenant_id.';
    END IF;
    SELECT c.relkind, c.relpersistence, c.relispartition, n.nspname
      INTO rel
      FROM pg_class c JOIN pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
     WHERE c.oid OPERATOR(pg_catalog.=) tbl;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'tenancy: table with OID % does not exist', tbl::oid
            USING ERRCODE = '22023';
    END IF;
    IF rel.relkind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION 'tenancy: % is not a table', tbl
            USING ERRCODE = '22023', DETAIL = 'Only ordinary and partitioned tables can be protected.',
                  HINT = 'Protect the table the view or foreign table reads from.';
    END IF;
    IF rel.nspname IN ('pg_catalog', 'information_schema', 'tenancy', 'pg_toast')
       OR rel.relpersistence OPERATOR(pg_catalog.=) 't' THEN
        RAISE EXCEPTION 'tenancy: % cannot be protected', tbl
            USING ERRCODE = '22023',
                  DETAIL = 'System tables, tenancy''s own tables and temporary tables cannot be protected.';
    END IF;

    -- The table's lock before anything is looked at: a concurrent
    -- protect() of the same table waits here and then finds it protected
    -- (one column, one index, one audit row).  ALTER TABLE below needs
    -- this lock anyway.
    EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', tbl);

    -- Protected already: with the same column it is a no-op (apart from
    -- repairing a default), with another it is a mistake.
    SELECT p.tenant_column INTO listed_column FROM tenancy.protected_tables p
     WHERE p.relid OPERATOR(pg_catalog.=) tbl;
    IF FOUND AND listed_column OPERATOR(pg_catalog.<>) tenant_column THEN
        RAISE EXCEPTION 'tenancy: % is already protected by column "%"', tbl, listed_column
            USING ERRCODE = '55000',
                  HINT = 'Call tenancy.unprotect() first to protect it by another column.';
    END IF;
    -- A parent that is not protected would show every tenant's rows of
    -- this table (partitions and inheritance children are read through
    -- their parent's policies only).
    IF NOT FOUND AND EXISTS (SELECT FROM pg_inherits i
                              WHERE i.inhrelid OPERATOR(pg_catalog.=) tbl
                                AND NOT EXISTS (SELECT FROM tenancy.protected_tables q
                                                 WHERE q.relid OPERATOR(pg_catalog.=) i.inhparent)) THEN
        RAISE EXCEPTION 'tenancy: % inherits from a table that is not protected', tbl
            USING ERRCODE = '55000',
                  DETAIL = 'Rows of a partition or child table are read through its parent without the child''s policies.',
                  HINT = format('Protect %s instead.',
                                (SELECT i.inhparent::regclass FROM pg_inherits i
                                  WHERE i.inhrelid OPERATOR(pg_catalog.=) tbl LIMIT 1));
    END IF;

    -- Restrictive policies run in name order: one of the user's that sorts
    -- before tenancy_isolation would see every tenant's rows.
    IF EXISTS (SELECT FROM pg_policy pol
                WHERE pol.polrelid OPERATOR(pg_catalog.=) ANY (ARRAY(
                          SELECT tbl::oid UNION SELECT t.relid::oid FROM tenancy._descendants(tbl) t))
                  AND NOT pol.polpermissive
                  AND (pol.polname COLLATE "C") OPERATOR(pg_catalog.<) ('tenancy_isolation' COLLATE "C")) THEN
        RAISE EXCEPTION 'tenancy: % has a restrictive policy that would run before tenancy_isolation', tbl
            USING ERRCODE = '55000',
                  DETAIL = 'PostgreSQL applies restrictive policies in name order; one that comes first sees every tenant''s rows.',
                  HINT = 'Rename the policy so that its name sorts after tenancy_isolation (for example with a prefix "zz_").';
    END IF;

    SELECT a.attnum, a.atttypid, a.attnotnull, a.attgenerated INTO att
      FROM pg_attribute a
     WHERE a.attrelid OPERATOR(pg_catalog.=) tbl AND a.attname OPERATOR(pg_catalog.=) tenant_column
       AND NOT a.attisdropped AND a.attnum OPERATOR(pg_catalog.>) 0;
    has_column := FOUND;
    IF has_column AND att.atttypid OPERATOR(pg_catalog.<>) 'pg_catalog.uuid'::pg_catalog.regtype THEN
        RAISE EXCEPTION 'tenancy: column "%" of % must be of type uuid', tenant_column, tbl
            USING ERRCODE = '42804', DETAIL = format('It is of type %s.', format_type(att.atttypid, NULL)),
                  HINT = 'Convert it with ALTER TABLE ... ALTER COLUMN ... TYPE uuid, or name another column.';
    END IF;
    -- The column must take its default, tenancy.current_tenant_id().
    IF has_column AND att.attgenerated OPERATOR(pg_catalog.<>) '' THEN
        RAISE EXCEPTION 'tenancy: column "%" of % is a generated column', tenant_column, tbl
            USING ERRCODE = '55000',
                  DETAIL = 'A protected table''s tenant column defaults to tenancy.current_tenant_id(); a generated column cannot have a default.',
                  HINT = format('Drop the generation expression first: ALTER TABLE %s ALTER COLUMN %I DROP EXPRESSION.', tbl, tenant_column);
    END IF;

    IF NOT has_column OR NOT att.attnotnull THEN
        -- Rows without a tenant need backfill_tenant.
        IF NOT has_column THEN
            EXECUTE format('SELECT EXISTS (SELECT FROM %s)', tbl) INTO has_rows;
        ELSE
            EXECUTE format('SELECT EXISTS (SELECT FROM %s WHERE %I IS NULL)', tbl, tenant_column) INTO has_rows;
        END IF;
        IF has_rows AND backfill_tenant IS NULL THEN
            RAISE EXCEPTION 'tenancy: % has rows without a tenant', tbl
                USING ERRCODE = '55000',
                      DETAIL = format('Column "%s" is missing or NULL in existing rows.', tenant_column),
                      HINT = 'Pass backfill_tenant => the tenant (slug or id) that owns the existing rows.';
        END IF;
    END IF;
    IF backfill_tenant IS NOT NULL THEN
        backfill := tenancy.tenant_id(backfill_tenant);
    END IF;

    previous := tenancy._ddl_bypass(true);
    IF NOT has_column OR NOT att.attnotnull THEN
        IF NOT has_column THEN
            EXECUTE format('ALTER TABLE %s ADD COLUMN %I uuid', tbl, tenant_column);
        END IF;
        IF has_rows THEN
            -- As the owner: the table's triggers and constraints run as it.
            PERFORM tenancy._exec_as_owner(tbl,
                format('UPDATE %s SET %2$I = $1 WHERE %2$I IS NULL', tbl, tenant_column), backfill);
        END IF;
        EXECUTE format('ALTER TABLE %s ALTER COLUMN %I SET NOT NULL', tbl, tenant_column);
    END IF;

    PERFORM tenancy._protect_relation(tbl, tenant_column);
    -- Every partition and inheritance child, at any depth, is protected as
    -- well.
    FOR part IN SELECT t.relid FROM tenancy._descendants(tbl) t ORDER BY t.depth, t.relid LOOP
        PERFORM tenancy._protect_relation(part, tenant_column);
    END LOOP;

    IF listed_column IS NULL THEN
        PERFORM tenancy._audit('protect', NULL, tbl::text,
                               jsonb_build_object('tenant_column', tenant_column,
                                                  'backfill_tenant', backfill));
    END IF;
    PERFORM tenancy._ddl_bypass(previous);
END
$$;

CREATE FUNCTION tenancy.unprotect(tbl regclass) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    previous boolean;
    r record;
    trg record;
BEGIN
    IF tbl IS NULL THEN
        RAISE EXCEPTION 'tenancy: table must not be null'
            USING ERRCODE = '22023', HINT = 'Pass the protected table.';
    END IF;
    IF NOT EXISTS (SELECT FROM tenancy.protected_tables WHERE relid OPERATOR(pg_catalog.=) tbl) THEN
        RAISE NOTICE 'tenancy: % is not protected, skipping', tbl;
        RETURN;
    END IF;
    IF EXISTS (SELECT FROM tenancy._ancestors(tbl) a
                 JOIN tenancy.protected_tables p ON p.relid OPERATOR(pg_catalog.=) a.relid) THEN
        IF (SELECT c.relispartition FROM pg_class c WHERE c.oid OPERATOR(pg_catalog.=) tbl) THEN
            RAISE EXCEPTION 'tenancy: % is a partition of a protected table', tbl
                USING ERRCODE = '55000', HINT = 'Unprotect the partitioned table it belongs to.';
        END IF;
        RAISE EXCEPTION 'tenancy: % inherits from a protected table', tbl
            USING ERRCODE = '55000', HINT = 'Unprotect the table it inherits from (that unprotects its children too).';
    END IF;

    previous := tenancy._ddl_bypass(true);
    -- The table and its partitions and inheritance children at every level.
    FOR r IN SELECT p.relid, p.tenant_column
               FROM (SELECT tbl AS relid, 0 AS depth
                     UNION
                     SELECT t.relid, t.depth FROM tenancy._descendants(tbl) t) t
               JOIN tenancy.protected_tables p ON p.relid OPERATOR(pg_catalog.=) t.relid
              ORDER BY t.depth LOOP
        EXECUTE format('DROP POLICY IF EXISTS tenancy_isolation ON %s', r.relid);
        EXECUTE format('DROP POLICY IF EXISTS tenancy_allow ON %s', r.relid);
        -- Triggers cloned onto partitions go with their parent's.
        FOR trg IN SELECT tgname FROM pg_trigger
                    WHERE tgrelid OPERATOR(pg_catalog.=) r.relid AND NOT tgisinternal
                      AND tgparentid OPERATOR(pg_catalog.=) 0
                      AND tgname OPERATOR(pg_catalog.~~) 'tenancy\_%' LOOP
            EXECUTE format('DROP TRIGGER %I ON %s', trg.tgname, r.relid);
        END LOOP;
        EXECUTE format('ALTER TABLE %s ALTER COLUMN %I DROP DEFAULT', r.relid, r.tenant_column);
        -- Policies of the user's own keep working: RLS stays on for them.
        IF EXISTS (SELECT FROM pg_policy WHERE polrelid OPERATOR(pg_catalog.=) r.relid) THEN
            RAISE NOTICE 'tenancy: % keeps row level security for its other policies', r.relid;
        ELSE
            EXECUTE format('ALTER TABLE %s NO FORCE ROW LEVEL SECURITY, DISABLE ROW LEVEL SECURITY',
                           r.relid);
        END IF;
        DELETE FROM tenancy.protected_tables WHERE relid OPERATOR(pg_catalog.=) r.relid;
    END LOOP;
    PERFORM tenancy._audit('unprotect', NULL, tbl::text, '{}');
    PERFORM tenancy._ddl_bypass(previous);
END
$$;

-- Protect the new partitions and inheritance children, at any depth, of
-- protected tables among rels (CREATE TABLE ... PARTITION OF or INHERITS,
-- ATTACH PARTITION, ALTER TABLE ... INHERIT): with the tenant column of
-- their nearest protected ancestor.  Internal.
CREATE FUNCTION tenancy._sync_partitions(rels oid[]) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
    previous boolean := tenancy._ddl_bypass(true);
BEGIN
    FOR r IN SELECT x.relid::regclass AS relid,
                    (SELECT p.tenant_column
                       FROM tenancy._ancestors(x.relid::regclass) a
                       JOIN tenancy.protected_tables p ON p.relid OPERATOR(pg_catalog.=) a.relid
                      ORDER BY a.depth, a.relid LIMIT 1) AS tenant_column
               FROM pg_catalog.unnest(rels) WITH ORDINALITY x(relid, n)
               JOIN pg_class c ON c.oid OPERATOR(pg_catalog.=) x.relid
                              AND c.relkind OPERATOR(pg_catalog.=) ANY ('{r,p}'::"char"[])
              WHERE NOT EXISTS (SELECT FROM tenancy.protected_tables q
                                 WHERE q.relid OPERATOR(pg_catalog.=) x.relid::regclass)
              ORDER BY x.n LOOP
        IF r.tenant_column IS NOT NULL THEN
            PERFORM tenancy._protect_relation(r.relid, r.tenant_column);
        END IF;
    END LOOP;
    PERFORM tenancy._ddl_bypass(previous);
END
$$;

-- What is wrong with each protected table (all when rels is NULL) that
-- lost what protects it: RLS enabled and forced, the restrictive isolation
-- policy unchanged, a uuid NOT NULL tenant column of that name, the four
-- tenancy triggers in place, tenancy's and enabled, and no unprotected
-- parent.
-- Internal; also used at ddl_command_start (hence EXECUTE for PUBLIC).
CREATE FUNCTION tenancy._protected_problems(rels oid[] DEFAULT NULL)
RETURNS TABLE (relid regclass, problem text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
-- One query over the list (it runs at the start of every guarded DDL
-- command); the first problem of each table, in the order below.
SELECT x.relid, x.problem FROM (
SELECT p.relid, CASE
    WHEN NOT c.relrowsecurity THEN
        'row level security would be disabled'
    WHEN NOT c.relforcerowsecurity THEN
        'row level security would no longer be forced'
    WHEN a.atttypid IS DISTINCT FROM 'pg_catalog.uuid'::pg_catalog.regtype THEN
        format('tenant column "%s" would be dropped, renamed or retyped', p.tenant_column)
    WHEN NOT a.attnotnull THEN
        format('tenant column "%s" would accept NULL', p.tenant_column)
    -- (Not its expressions: pg_get_expr() would lock every protected table
    -- at the start of every guarded command, and deadlock the workers of
    -- a parallel restore.  ALTER POLICY on it is refused, and protection,
    -- including ATTACH, makes it anew when its expressions differ.)
    WHEN NOT EXISTS (SELECT FROM pg_policy pol
                      WHERE pol.polrelid OPERATOR(pg_catalog.=) p.relid
                        AND pol.polname OPERATOR(pg_catalog.=) 'tenancy_isolation'
                        AND NOT pol.polpermissive
                        AND pol.polcmd OPERATOR(pg_catalog.=) '*'
                        AND pol.polroles OPERATOR(pg_catalog.=) '{0}'::oid[]) THEN
        'policy tenancy_isolation would be dropped or changed'
    -- PostgreSQL applies restrictive policies in name order: one that
    -- comes first sees every tenant's rows.
    WHEN EXISTS (SELECT FROM pg_policy pol
                  WHERE pol.polrelid OPERATOR(pg_catalog.=) p.relid
                    AND NOT pol.polpermissive
                    AND (pol.polname COLLATE "C") OPERATOR(pg_catalog.<) ('tenancy_isolation' COLLATE "C")) THEN
        format('restrictive policy %s would run before tenancy_isolation and see every tenant''s rows '
               '(restrictive policies run in name order: give it a name that sorts after tenancy_isolation)',
               (SELECT pg_catalog.quote_ident(pol.polname) FROM pg_policy pol
                 WHERE pol.polrelid OPERATOR(pg_catalog.=) p.relid AND NOT pol.polpermissive
                   AND (pol.polname COLLATE "C") OPERATOR(pg_catalog.<) ('tenancy_isolation' COLLATE "C")
                 ORDER BY pol.polname COLLATE "C" LIMIT 1))
    WHEN NOT EXISTS (SELECT FROM pg_trigger t
                      WHERE t.tgrelid OPERATOR(pg_catalog.=) p.relid
                        AND t.tgname OPERATOR(pg_catalog.=) 'tenancy_guard'
                        AND t.tgfoid OPERATOR(pg_catalog.=) 'tenancy._row_guard()'::pg_catalog.regprocedure
                        AND t.tgtype OPERATOR(pg_catalog.=) 23  -- BEFORE INSERT OR UPDATE FOR EACH ROW
                        AND t.tgqual IS NULL
                        AND t.tgattr OPERATOR(pg_catalog.=) ''::pg_catalog.int2vector
                        AND t.tgargs OPERATOR(pg_catalog.=)
                            (pg_catalog.convert_to(p.tenant_column::text, pg_catalog.getdatabaseencoding())
                             OPERATOR(pg_catalog.||) '\x00'::bytea)) THEN
        'trigger tenancy_guard would be dropped or changed'
    WHEN NOT EXISTS (SELECT FROM pg_trigger t
                      WHERE t.tgrelid OPERATOR(pg_catalog.=) p.relid
                        AND t.tgname OPERATOR(pg_catalog.=) 'tenancy_truncate_guard'
                        AND t.tgfoid OPERATOR(pg_catalog.=) 'tenancy._truncate_guard()'::pg_catalog.regprocedure
                        AND t.tgtype OPERATOR(pg_catalog.=) 34  -- BEFORE TRUNCATE FOR EACH STATEMENT
                        AND t.tgqual IS NULL) THEN
        'trigger tenancy_truncate_guard would be dropped or changed'
    -- The counting triggers of section 4 (to_regprocedure: they are
    -- created further down).
    WHEN NOT EXISTS (SELECT FROM pg_trigger t
                      WHERE t.tgrelid OPERATOR(pg_catalog.=) p.relid
                        AND t.tgname OPERATOR(pg_catalog.=) 'tenancy_quota'
                        AND t.tgfoid OPERATOR(pg_catalog.=) pg_catalog.to_regprocedure('tenancy._quota_count()')
                        AND t.tgtype OPERATOR(pg_catalog.=) 29  -- AFTER INSERT OR UPDATE OR DELETE FOR EACH ROW
                        AND t.tgqual IS NULL
                        AND t.tgattr OPERATOR(pg_catalog.=) ''::pg_catalog.int2vector
                        AND t.tgconstraint OPERATOR(pg_catalog.=) 0
                        AND t.tgargs OPERATOR(pg_catalog.=)
                            (pg_catalog.convert_to(p.tenant_column::text, pg_catalog.getdatabaseencoding())
                             OPERATOR(pg_catalog.||) '\x00'::bytea)) THEN
        'trigger tenancy_quota would be dropped or changed'
    WHEN NOT EXISTS (SELECT FROM pg_trigger t
                      WHERE t.tgrelid OPERATOR(pg_catalog.=) p.relid
                        AND t.tgname OPERATOR(pg_catalog.=) 'tenancy_quota_truncate'
                        AND t.tgfoid OPERATOR(pg_catalog.=) pg_catalog.to_regprocedure('tenancy._quota_truncate()')
                        AND t.tgtype OPERATOR(pg_catalog.=) 32  -- AFTER TRUNCATE FOR EACH STATEMENT
                        AND t.tgqual IS NULL
                        AND t.tgconstraint OPERATOR(pg_catalog.=) 0) THEN
        'trigger tenancy_quota_truncate would be dropped or changed'
    WHEN EXISTS (SELECT FROM pg_trigger t
                  WHERE t.tgrelid OPERATOR(pg_catalog.=) p.relid
                    AND t.tgname OPERATOR(pg_catalog.~~) 'tenancy\_%'
                    AND t.tgenabled NOT IN ('O', 'A')) THEN
        'a tenancy trigger would be disabled'
    WHEN EXISTS (SELECT FROM pg_inherits i
                  WHERE i.inhrelid OPERATOR(pg_catalog.=) p.relid
                    AND NOT EXISTS (SELECT FROM tenancy.protected_tables q
                                     WHERE q.relid OPERATOR(pg_catalog.=) i.inhparent)) THEN
        'it would become a partition or child of a table that is not protected'
    END AS problem
  FROM tenancy.protected_tables p
  JOIN pg_class c ON c.oid OPERATOR(pg_catalog.=) p.relid
  LEFT JOIN pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) p.relid
                          AND a.attname OPERATOR(pg_catalog.=) p.tenant_column
                          AND NOT a.attisdropped
 WHERE rels IS NULL OR p.relid::oid OPERATOR(pg_catalog.=) ANY (rels)
) x
WHERE x.problem IS NOT NULL
$$;

-- Put back the triggers of protected tables that lost them without a
-- command that tenancy refuses: DETACH PARTITION drops the triggers cloned
-- from the parent (the policies stay).  Parents come before their
-- partitions, whose row triggers are then cloned from the parent's.  A
-- detached partition's rows now count for rows:<itself> (or its new
-- root), no longer for its old root: its share is counted again.  Tables
-- that were not intact before the command (known: a restore in progress)
-- are left alone, and so are tables that were not listed when the command
-- started (listed by another session meanwhile: a parallel restore, whose
-- next step creates those triggers).  Internal.
CREATE FUNCTION tenancy._repair_triggers(known oid[], listed oid[]) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
    previous boolean := tenancy._ddl_bypass(true);
BEGIN
    FOR r IN SELECT x.* FROM (
               SELECT p.relid, p.tenant_column, c.relkind,
                      (SELECT pg_catalog.count(*) FROM tenancy._ancestors(p.relid)) AS depth,
                      NOT EXISTS (SELECT FROM pg_trigger t WHERE t.tgrelid OPERATOR(pg_catalog.=) p.relid
                                     AND t.tgname OPERATOR(pg_catalog.=) 'tenancy_guard') AS lost_guard,
                      EXISTS (SELECT FROM pg_trigger t WHERE t.tgrelid OPERATOR(pg_catalog.=) p.relid
                                 AND t.tgname OPERATOR(pg_catalog.=) 'tenancy_quota_truncate') AS counted,
                      (SELECT pg_catalog.count(*) FROM pg_trigger t
                        WHERE t.tgrelid OPERATOR(pg_catalog.=) p.relid
                          AND t.tgname OPERATOR(pg_catalog.=) ANY ('{tenancy_guard,tenancy_truncate_guard,'
                                                                   'tenancy_quota,tenancy_quota_truncate}'::name[]))
                      AS present
                 FROM tenancy.protected_tables p
                 JOIN pg_class c ON c.oid OPERATOR(pg_catalog.=) p.relid
                WHERE NOT p.relid::oid OPERATOR(pg_catalog.=) ANY (coalesce(known, '{}'))
                  AND p.relid::oid OPERATOR(pg_catalog.=) ANY (coalesce(listed, '{}'))) x
              WHERE x.present OPERATOR(pg_catalog.<) 4
              ORDER BY x.depth, x.relid LOOP
        PERFORM tenancy._attach_triggers(r.relid, r.tenant_column);
        -- (a table whose TRUNCATE trigger was missing was counted anew by
        -- _attach_triggers)
        IF r.lost_guard AND r.counted AND r.relkind OPERATOR(pg_catalog.=) 'r' THEN
            PERFORM tenancy._quota_adopt(r.relid, r.tenant_column);
        END IF;
    END LOOP;
    PERFORM tenancy._ddl_bypass(previous);
END
$$;

-- Raise 42501 for the first of the given protected tables that is not
-- intact, unless it was not intact before the command either (known).
-- Internal.
CREATE FUNCTION tenancy._check_protected(rels oid[] DEFAULT NULL, known oid[] DEFAULT '{}')
RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
BEGIN
    -- The first in the order of rels: the table the command named comes
    -- before its partitions.
    FOR r IN SELECT * FROM tenancy._protected_problems(rels) p
              WHERE NOT p.relid::oid OPERATOR(pg_catalog.=) ANY (coalesce(known, '{}'))
              ORDER BY pg_catalog.array_position(rels, p.relid::oid), p.relid::oid LOOP
        RAISE EXCEPTION 'tenancy: % is protected', r.relid
            USING ERRCODE = '42501',
                  DETAIL = format('This command would weaken the isolation of %s: %s.', r.relid, r.problem),
                  HINT = 'A member of tenancy_admin can call tenancy.unprotect() first.';
    END LOOP;
END
$$;

-- ddl_command_start: refuse dropping, retyping or renaming a tenant
-- column, renaming tenancy's triggers and isolation policy, and creating
-- or replacing a tenancy_* trigger; make way for the parent's triggers on
-- a protected table being attached to a protected table (C).
CREATE FUNCTION tenancy._on_ddl_command_start() RETURNS event_trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'tenancy_ddl_command_start';

-- What ddl_command_start found not intact before the command; internal.
CREATE FUNCTION tenancy._ddl_prior_problems() RETURNS text
LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'tenancy_ddl_prior_problems';

-- Every protected table as ddl_command_start saw them (read before
-- _ddl_prior_problems()); internal.
CREATE FUNCTION tenancy._ddl_prior_listed() RETURNS text
LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'tenancy_ddl_prior_listed';

-- The tables whose usage the command changes behind the row triggers (a
-- protected table attached to a protected table; columns added, dropped
-- or retyped), as ddl_command_start saw them (read before
-- _ddl_prior_problems()); internal.
CREATE FUNCTION tenancy._ddl_recount() RETURNS text
LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'tenancy_ddl_recount';

-- The protected tables whose rows:<table> name the command changed (ALTER
-- TABLE ... RENAME TO / SET SCHEMA, ALTER SCHEMA ... RENAME TO), as
-- ddl_command_start saw them, take their usage and limits along (called
-- before _ddl_prior_problems()); internal.
CREATE FUNCTION tenancy._ddl_follow_renames() RETURNS void
LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'tenancy_ddl_follow_renames';

-- ddl_command_end: protect new partitions of protected tables, apply
-- tenancy.auto_protect, refuse ALTER POLICY on an isolation policy, move
-- the usage and limits of renamed protected tables to their new rows:
-- names, and check that no table the command touched was weakened.
CREATE FUNCTION tenancy._on_ddl_command_end() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cmd record;
    touched oid[] := '{}';
    known oid[];
    listed oid[];
    recount oid[];
    altered boolean := false;
    rel oid;
    audit_rel oid := pg_catalog.to_regclass('tenancy.audit_log');
    audit_touched boolean := false;
BEGIN
    IF tenancy._ddl_bypass(NULL) THEN
        RETURN;
    END IF;
    -- Tables that were not intact before this command (a restore that has
    -- not reached their policies yet): not this command's doing.
    recount := tenancy._ddl_recount()::oid[];
    listed := tenancy._ddl_prior_listed()::oid[];
    PERFORM tenancy._ddl_follow_renames();
    known := tenancy._ddl_prior_problems()::oid[];
    FOR cmd IN SELECT * FROM pg_event_trigger_ddl_commands() LOOP
        IF cmd.command_tag OPERATOR(pg_catalog.=) 'ALTER POLICY' AND EXISTS (
               SELECT FROM pg_policy pol JOIN tenancy.protected_tables p
                   ON p.relid OPERATOR(pg_catalog.=) pol.polrelid
                WHERE pol.oid OPERATOR(pg_catalog.=) cmd.objid
                  AND pol.polname OPERATOR(pg_catalog.=) 'tenancy_isolation') THEN
            RAISE EXCEPTION 'tenancy: policy tenancy_isolation cannot be altered'
                USING ERRCODE = '42501',
                      DETAIL = format('%s guards a protected table.', cmd.object_identity),
                      HINT = 'Add permissive policies of your own, or call tenancy.unprotect() first.';
        END IF;
        altered := altered OR cmd.command_tag OPERATOR(pg_catalog.=) 'ALTER TABLE';
        -- The relation the command is about.
        rel := CASE
            WHEN cmd.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass THEN cmd.objid
            WHEN cmd.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_policy'::pg_catalog.regclass THEN
                (SELECT polrelid FROM pg_policy WHERE oid OPERATOR(pg_catalog.=) cmd.objid)
            WHEN cmd.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_trigger'::pg_catalog.regclass THEN
                (SELECT tgrelid FROM pg_trigger WHERE oid OPERATOR(pg_catalog.=) cmd.objid)
            END;
        IF rel IS NOT NULL THEN
            touched := touched OPERATOR(pg_catalog.||) rel;
        END IF;
        -- The audit log's guard, outside the extension's own scripts.
        audit_touched := audit_touched OR (NOT cmd.in_extension AND rel OPERATOR(pg_catalog.=) audit_rel);
        IF cmd.command_tag IN ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO')
           AND NOT cmd.in_extension
           AND cmd.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
           AND cmd.objsubid OPERATOR(pg_catalog.=) 0
           AND pg_catalog.current_setting('tenancy.auto_protect')::boolean
           -- Not while pg_restore (or pg_dump's SQL) recreates tables: the
           -- dump brings their protection back itself.
           AND pg_catalog.current_setting('row_security')::boolean
           AND EXISTS (SELECT FROM pg_class c
                         JOIN pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
                         JOIN pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) c.oid
                        WHERE c.oid OPERATOR(pg_catalog.=) cmd.objid
                          AND c.relkind IN ('r', 'p')
                          AND c.relpersistence OPERATOR(pg_catalog.<>) 't'
                          AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'tenancy', 'pg_toast')
                          AND a.attname OPERATOR(pg_catalog.=) 'tenant_id' AND NOT a.attisdropped
                          AND a.atttypid OPERATOR(pg_catalog.=) 'pg_catalog.uuid'::pg_catalog.regtype)
           -- Partitions and children follow their parent, protected or not.
           AND NOT EXISTS (SELECT FROM pg_inherits i WHERE i.inhrelid OPERATOR(pg_catalog.=) cmd.objid)
           AND NOT EXISTS (SELECT FROM tenancy.protected_tables p
                            WHERE p.relid OPERATOR(pg_catalog.=) cmd.objid::pg_catalog.regclass) THEN
            PERFORM tenancy.protect(cmd.objid::regclass);
        END IF;
    END LOOP;
    -- The touched relations and their partitions and children, parents
    -- first (ALTER TABLE recurses to them; ATTACH touches the parent).
    touched := ARRAY(SELECT x.relid
                       FROM (SELECT t AS relid, 0 AS depth FROM pg_catalog.unnest(touched) t
                             UNION ALL
                             SELECT d.relid::oid, d.depth
                               FROM pg_catalog.unnest(touched) t,
                                    tenancy._descendants(t::regclass) d) x
                      GROUP BY x.relid ORDER BY pg_catalog.min(x.depth), x.relid);
    PERFORM tenancy._sync_partitions(touched);
    -- Only ALTER TABLE (DETACH PARTITION) drops tenancy's triggers behind
    -- its back.
    IF altered THEN
        PERFORM tenancy._repair_triggers(known, listed);
    END IF;
    -- Protected tables attached as partitions of a protected table (their
    -- own row triggers made way for the parent's at ddl_command_start):
    -- their rows now count for the new root.  Tables whose columns were
    -- added, dropped or retyped: their rows' stored sizes changed.  Both are
    -- counted again (a scan of each table, as protect() does).
    IF recount OPERATOR(pg_catalog.<>) '{}' THEN
        PERFORM tenancy._quota_adopt(p.relid, p.tenant_column)
           FROM (SELECT a AS relid FROM pg_catalog.unnest(recount) a
                 UNION
                 SELECT d.relid::oid FROM pg_catalog.unnest(recount) a,
                                          tenancy._descendants(a::regclass) d) x
           JOIN tenancy.protected_tables p ON p.relid OPERATOR(pg_catalog.=) x.relid::regclass
           JOIN pg_class c ON c.oid OPERATOR(pg_catalog.=) x.relid
                          AND c.relkind OPERATOR(pg_catalog.=) 'r'
          WHERE NOT x.relid OPERATOR(pg_catalog.=) ANY (known);
    END IF;
    -- Judged: the tables that were protected when the command started
    -- (one listed since, by another session's restore, is not its doing).
    PERFORM tenancy._check_protected(
        ARRAY(SELECT t FROM pg_catalog.unnest(touched) WITH ORDINALITY AS u(t, n)
               WHERE t OPERATOR(pg_catalog.=) ANY (listed) ORDER BY n),
        known);
    IF audit_touched THEN
        PERFORM tenancy._check_audit_guard(NULL);
    END IF;
END
$$;

-- sql_drop: a dropped table leaves the list; dropping tenancy's triggers
-- or the isolation policy of a table that stays protected is refused.
CREATE FUNCTION tenancy._on_sql_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    obj record;
    rel regclass;
BEGIN
    DELETE FROM tenancy.protected_tables p
     USING pg_event_trigger_dropped_objects() d
     WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
       AND d.objsubid OPERATOR(pg_catalog.=) 0
       AND d.objid OPERATOR(pg_catalog.=) p.relid::oid;
    IF tenancy._ddl_bypass(NULL) THEN
        RETURN;
    END IF;
    FOR obj IN SELECT * FROM pg_event_trigger_dropped_objects()
              WHERE (object_type OPERATOR(pg_catalog.=) 'trigger'
                     AND address_names[3] OPERATOR(pg_catalog.~~) 'tenancy\_%')
                 OR (object_type OPERATOR(pg_catalog.=) 'policy'
                     AND address_names[3] OPERATOR(pg_catalog.=) 'tenancy_isolation') LOOP
        rel := pg_catalog.to_regclass(pg_catalog.quote_ident(obj.address_names[1]) OPERATOR(pg_catalog.||) '.'
                                      OPERATOR(pg_catalog.||) pg_catalog.quote_ident(obj.address_names[2]));
        IF rel IS NOT NULL AND EXISTS (SELECT FROM tenancy.protected_tables p
                                        WHERE p.relid OPERATOR(pg_catalog.=) rel) THEN
            RAISE EXCEPTION 'tenancy: % is protected', rel
                USING ERRCODE = '42501',
                      DETAIL = format('This command would weaken the isolation of %s: %s %s would be dropped.',
                                      rel, obj.object_type, obj.address_names[3]),
                      HINT = 'A member of tenancy_admin can call tenancy.unprotect() first.';
        END IF;
    END LOOP;
    -- The append-only guard of the audit log, while the log stays.
    FOR obj IN SELECT * FROM pg_event_trigger_dropped_objects()
              WHERE object_type OPERATOR(pg_catalog.=) 'trigger'
                AND address_names[1] OPERATOR(pg_catalog.=) 'tenancy'
                AND address_names[2] OPERATOR(pg_catalog.=) 'audit_log'
                AND address_names[3] IN ('audit_log_append_only', 'audit_log_no_truncate')
                AND pg_catalog.to_regclass('tenancy.audit_log') IS NOT NULL LOOP
        PERFORM tenancy._check_audit_guard(format('trigger %s would be dropped', obj.address_names[3]));
    END LOOP;
END
$$;

-- Both on the same commands: every start pushes what end pops.  (ALTER
-- SCHEMA: renaming a schema renames the protected tables in it.)
CREATE EVENT TRIGGER tenancy_ddl_precheck ON ddl_command_start
    WHEN TAG IN ('ALTER TABLE', 'CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO',
                 'ALTER POLICY', 'DROP POLICY', 'CREATE TRIGGER', 'DROP TRIGGER', 'ALTER TRIGGER',
                 'CREATE POLICY', 'ALTER SCHEMA')
    EXECUTE FUNCTION tenancy._on_ddl_command_start();

CREATE EVENT TRIGGER tenancy_ddl_guard ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE', 'CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO',
                 'ALTER POLICY', 'DROP POLICY', 'CREATE TRIGGER', 'DROP TRIGGER', 'ALTER TRIGGER',
                 'CREATE POLICY', 'ALTER SCHEMA')
    EXECUTE FUNCTION tenancy._on_ddl_command_end();

CREATE EVENT TRIGGER tenancy_drop_guard ON sql_drop
    EXECUTE FUNCTION tenancy._on_sql_drop();

--------------------------------------------------------------------------
-- 1. Purge (needs protected tables)
--------------------------------------------------------------------------

-- Wait for the other transactions that validated a context for tid and
-- may still write its rows (C, shared memory); internal to purge_tenant().
CREATE FUNCTION tenancy._purge_wait(tid uuid) RETURNS integer
LANGUAGE c VOLATILE STRICT AS 'MODULE_PATHNAME', 'tenancy_purge_wait';

CREATE FUNCTION tenancy.purge_tenant(tenant text) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    tid uuid := tenancy.tenant_id(tenant);
    st text;
    r record;
    n bigint;
    before bigint := 0;
    remaining bigint := 0;
    pending regclass[];
    cols name[];
    still regclass[];
    still_cols name[];
    i integer;
    failure text;
    purged_slug text;
BEGIN
    -- Each DELETE below must see the rows that the transactions waited for
    -- committed: a new snapshot per statement.
    IF pg_catalog.current_setting('transaction_isolation') OPERATOR(pg_catalog.<>) 'read committed' THEN
        RAISE EXCEPTION 'tenancy: a tenant can be purged only in a READ COMMITTED transaction'
            USING ERRCODE = '55000',
                  DETAIL = format('This transaction is %s: rows of the tenant committed after its snapshot would be left behind.',
                                  pg_catalog.upper(pg_catalog.current_setting('transaction_isolation'))),
                  HINT = 'Call tenancy.purge_tenant() in a READ COMMITTED transaction.';
    END IF;
    -- Lock the tenant's row, then check it is deleted: a concurrent status
    -- change (activate_tenant) either waits for the purge, or has committed
    -- and the purge fails.
    SELECT CASE WHEN t.status OPERATOR(pg_catalog.=) 'active'
                     AND t.expires_at OPERATOR(pg_catalog.<=) now() THEN 'expired'
                ELSE t.status END
      INTO st
      FROM tenancy.tenants t WHERE t.id OPERATOR(pg_catalog.=) tid
       FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'tenancy: unknown tenant'
            USING ERRCODE = 'TN002', DETAIL = format('No tenant has the slug or id "%s".', tenant),
                  HINT = 'Pass the slug or the id of an existing tenant.';
    END IF;
    IF st OPERATOR(pg_catalog.<>) 'deleted' THEN
        RAISE EXCEPTION 'tenancy: only a deleted tenant can be purged'
            USING ERRCODE = '55000', DETAIL = format('Tenant %s is %s.', tenant, st),
                  HINT = 'Call tenancy.delete_tenant() first.';
    END IF;
    -- Transactions that validated a context for the tenant before it was
    -- deleted may still write its rows: wait until they end.  Later ones
    -- see it deleted (TN003).
    PERFORM tenancy._purge_wait(tid);
    -- Leaf tables only: a partitioned table's rows are its partitions'.
    SELECT pg_catalog.array_agg(p.relid ORDER BY p.relid), pg_catalog.array_agg(p.tenant_column ORDER BY p.relid)
      INTO pending, cols
      FROM tenancy.protected_tables p
      JOIN pg_class c ON c.oid OPERATOR(pg_catalog.=) p.relid
     WHERE c.relkind OPERATOR(pg_catalog.=) 'r';
    -- Count first, so that rows removed by ON DELETE CASCADE between
    -- protected tables are counted once, where they were.
    FOR i IN 1 .. coalesce(pg_catalog.array_length(pending, 1), 0) LOOP
        EXECUTE format('SELECT pg_catalog.count(*) FROM ONLY %s WHERE %I OPERATOR(pg_catalog.=) $1',
                       pending[i], cols[i]) INTO n USING tid;
        before := before + n;
    END LOOP;
    -- Delete as each table's owner.  A table whose rows are still
    -- referenced by another tenant table's rows is retried after the others.
    WHILE coalesce(pg_catalog.array_length(pending, 1), 0) OPERATOR(pg_catalog.>) 0 LOOP
        still := '{}';
        still_cols := '{}';
        FOR i IN 1 .. pg_catalog.array_length(pending, 1) LOOP
            BEGIN
                PERFORM tenancy._exec_as_owner(pending[i],
                    format('DELETE FROM ONLY %s WHERE %I OPERATOR(pg_catalog.=) $1', pending[i], cols[i]), tid);
            EXCEPTION WHEN foreign_key_violation THEN
                still := still OPERATOR(pg_catalog.||) pending[i];
                still_cols := still_cols OPERATOR(pg_catalog.||) cols[i];
                failure := SQLERRM;
            END;
        END LOOP;
        IF pg_catalog.array_length(still, 1) OPERATOR(pg_catalog.=) pg_catalog.array_length(pending, 1) THEN
            RAISE EXCEPTION 'tenancy: rows of the tenant are still referenced'
                USING ERRCODE = '23503', DETAIL = failure,
                      HINT = 'Remove the referencing rows, or make the foreign key ON DELETE CASCADE.';
        END IF;
        pending := still;
        cols := still_cols;
    END LOOP;
    FOR r IN SELECT p.relid, p.tenant_column
               FROM tenancy.protected_tables p
               JOIN pg_class c ON c.oid OPERATOR(pg_catalog.=) p.relid
              WHERE c.relkind OPERATOR(pg_catalog.=) 'r' LOOP
        EXECUTE format('SELECT pg_catalog.count(*) FROM ONLY %s WHERE %I OPERATOR(pg_catalog.=) $1',
                       r.relid, r.tenant_column) INTO n USING tid;
        remaining := remaining + n;
    END LOOP;
    PERFORM tenancy._purge_tenant_state(tid);
    DELETE FROM tenancy.tenants WHERE id OPERATOR(pg_catalog.=) tid RETURNING slug INTO purged_slug;
    PERFORM tenancy._audit('tenant.purge', tid, purged_slug,
                           jsonb_build_object('rows', before OPERATOR(pg_catalog.-) remaining));
    RETURN before OPERATOR(pg_catalog.-) remaining;
END
$$;

--------------------------------------------------------------------------
-- 4. Plans, quotas, rate limits
--------------------------------------------------------------------------

CREATE TABLE tenancy.plan_quotas (
    plan        text NOT NULL,            -- references plans (section 5 end)
    resource    text NOT NULL,
    quota_limit bigint,
    period      text,
    PRIMARY KEY (plan, resource),
    CONSTRAINT plan_quotas_limit_check CHECK (quota_limit >= 0),
    CONSTRAINT plan_quotas_period_check CHECK (period IN ('minute', 'hour', 'day', 'month'))
);
SELECT pg_catalog.pg_extension_config_dump('tenancy.plan_quotas', '');

CREATE TABLE tenancy.tenant_quotas (
    tenant_id   uuid NOT NULL,            -- references tenants (section 5 end)
    resource    text NOT NULL,
    quota_limit bigint,
    period      text,
    PRIMARY KEY (tenant_id, resource),
    CONSTRAINT tenant_quotas_limit_check CHECK (quota_limit >= 0),
    CONSTRAINT tenant_quotas_period_check CHECK (period IN ('minute', 'hour', 'day', 'month'))
);
SELECT pg_catalog.pg_extension_config_dump('tenancy.tenant_quotas', '');

CREATE TYPE tenancy.quota_check AS (
    tenant_id   uuid,
    resource    text,
    allowed     boolean,
    used        bigint,
    quota_limit bigint,
    remaining   bigint,
    health      text,
    reason      text
);

-- Internal: the canonical name of a resource (rows:<table> schema-qualified,
-- resolved with the caller's search_path); 22023 for a period on a
-- resource counted automatically.
CREATE FUNCTION tenancy._quota_resource(resource text, period text) RETURNS text
LANGUAGE c STABLE AS 'MODULE_PATHNAME', 'tenancy_quota_canonical';

-- Internal: raise 22023 unless limit and period are valid.
CREATE FUNCTION tenancy._check_quota_args(quota_limit bigint, period text) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF quota_limit OPERATOR(pg_catalog.<) 0 THEN
        RAISE EXCEPTION 'tenancy: quota limit must not be negative'
            USING ERRCODE = '22023', DETAIL = format('The limit given is %s.', quota_limit),
                  HINT = 'Pass 0 to forbid the resource, or NULL for no limit.';
    END IF;
    IF period IS NOT NULL AND period NOT IN ('minute', 'hour', 'day', 'month') THEN
        RAISE EXCEPTION 'tenancy: invalid quota period "%"', period
            USING ERRCODE = '22023', HINT = 'Use minute, hour, day, month, or NULL for a running total.';
    END IF;
END
$$;

-- The durable record of committed usage: an append-only ledger of deltas.
-- Every transaction that changed usage appends its net deltas at commit
-- (src/quota.c); usage is the sum of a counter's rows.  relid is the leaf
-- table a rows:/storage_bytes delta came from (its share is given back when
-- the table is truncated, dropped or unprotected).  period_start is
-- '-infinity' for running totals.  tenancy._quota_compact() folds it.
CREATE TABLE tenancy.quota_ledger (
    tenant_id    uuid NOT NULL,
    resource     text NOT NULL,
    period_start timestamptz NOT NULL,
    relid        regclass,
    delta        bigint NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT pg_catalog.now()
);
CREATE INDEX quota_ledger_key_idx ON tenancy.quota_ledger (tenant_id, resource, period_start);
CREATE INDEX quota_ledger_relid_idx ON tenancy.quota_ledger (relid) WHERE relid IS NOT NULL;
SELECT pg_catalog.pg_extension_config_dump('tenancy.quota_ledger', '');
-- Rows written into the ledger by a top-level statement (pg_restore
-- --data-only, an administrator) make the database's shared counters be
-- rebuilt from it (those not in use, without waiting deltas).  ALWAYS:
-- also while a restore runs as a replica.
CREATE FUNCTION tenancy._quota_ledger_loaded() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'tenancy_quota_ledger_loaded';
CREATE TRIGGER tenancy_ledger_loaded AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON tenancy.quota_ledger FOR EACH STATEMENT EXECUTE FUNCTION tenancy._quota_ledger_loaded();
ALTER TABLE tenancy.quota_ledger ENABLE ALWAYS TRIGGER tenancy_ledger_loaded;

-- Rate limits: token bucket parameters (the buckets live in shared memory).
CREATE TABLE tenancy.plan_rate_limits (
    plan        text NOT NULL,            -- references plans (section 5 end)
    resource    text NOT NULL,
    per_second  float8 NOT NULL,
    burst       integer NOT NULL,
    PRIMARY KEY (plan, resource),
    CONSTRAINT plan_rate_limits_check CHECK (per_second > 0 AND burst >= 1)
);
SELECT pg_catalog.pg_extension_config_dump('tenancy.plan_rate_limits', '');

CREATE TABLE tenancy.tenant_rate_limits (
    tenant_id   uuid NOT NULL,            -- references tenants (section 5 end)
    resource    text NOT NULL,
    per_second  float8 NOT NULL,
    burst       integer NOT NULL,
    PRIMARY KEY (tenant_id, resource),
    CONSTRAINT tenant_rate_limits_check CHECK (per_second > 0 AND burst >= 1)
);
SELECT pg_catalog.pg_extension_config_dump('tenancy.tenant_rate_limits', '');

-- Limits are cached by every backend: any change of them, or of a
-- tenant's plan, tells all backends to look them up again.
CREATE FUNCTION tenancy._quota_limits_changed() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'tenancy_quota_limits_changed';
CREATE TRIGGER tenancy_limits_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON tenancy.plan_quotas FOR EACH STATEMENT EXECUTE FUNCTION tenancy._quota_limits_changed();
CREATE TRIGGER tenancy_limits_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON tenancy.tenant_quotas FOR EACH STATEMENT EXECUTE FUNCTION tenancy._quota_limits_changed();
CREATE TRIGGER tenancy_limits_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON tenancy.plan_rate_limits FOR EACH STATEMENT EXECUTE FUNCTION tenancy._quota_limits_changed();
CREATE TRIGGER tenancy_limits_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON tenancy.tenant_rate_limits FOR EACH STATEMENT EXECUTE FUNCTION tenancy._quota_limits_changed();
CREATE TRIGGER tenancy_plan_changed AFTER UPDATE OF plan OR DELETE
    ON tenancy.tenants FOR EACH STATEMENT EXECUTE FUNCTION tenancy._quota_limits_changed();

-- Who reads what: plans' limits are public, a tenant's own limits are
-- visible to its sessions, the ledger to administrators only.
GRANT SELECT ON tenancy.plan_quotas, tenancy.plan_rate_limits TO PUBLIC;
ALTER TABLE tenancy.tenant_quotas ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_quotas_own ON tenancy.tenant_quotas FOR SELECT TO PUBLIC
    USING (tenant_id OPERATOR(pg_catalog.=) (SELECT tenancy.current_tenant_id()));
CREATE POLICY tenant_quotas_admin ON tenancy.tenant_quotas FOR SELECT TO tenancy_admin
    USING (true);
ALTER TABLE tenancy.tenant_rate_limits ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_rate_limits_own ON tenancy.tenant_rate_limits FOR SELECT TO PUBLIC
    USING (tenant_id OPERATOR(pg_catalog.=) (SELECT tenancy.current_tenant_id()));
CREATE POLICY tenant_rate_limits_admin ON tenancy.tenant_rate_limits FOR SELECT TO tenancy_admin
    USING (true);
GRANT SELECT ON tenancy.tenant_quotas, tenancy.tenant_rate_limits TO PUBLIC;
GRANT SELECT ON tenancy.quota_ledger TO tenancy_admin;

-- Internal: store a limit (kind 'plan' or 'tenant'; NULL limit with
-- remove => delete the row).  Called by the set_*/clear_* wrappers with a
-- canonical resource name.
CREATE FUNCTION tenancy._set_quota(kind text, owner_ text, resource text, quota_limit bigint,
                                   period text, remove boolean)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    tid uuid;
BEGIN
    PERFORM tenancy._check_quota_args(quota_limit, period);
    IF kind OPERATOR(pg_catalog.=) 'plan' THEN
        PERFORM tenancy._check_plan(owner_);
        IF owner_ OPERATOR(pg_catalog.=) 'enterprise' THEN
            RAISE EXCEPTION 'tenancy: the enterprise plan has no limits'
                USING ERRCODE = '22023',
                      HINT = 'Set a limit on another plan, or on one tenant with tenancy.set_tenant_quota().';
        END IF;
        INSERT INTO tenancy.plan_quotas AS q (plan, resource, quota_limit, period)
        VALUES (owner_, resource, quota_limit, period)
        ON CONFLICT (plan, resource) DO UPDATE SET quota_limit = EXCLUDED.quota_limit, period = EXCLUDED.period;
        PERFORM tenancy._audit('quota.set_plan', NULL, owner_,
            jsonb_build_object('resource', resource, 'quota_limit', quota_limit, 'period', period));
    ELSE
        tid := tenancy.tenant_id(owner_);
        IF remove THEN
            DELETE FROM tenancy.tenant_quotas q
             WHERE q.tenant_id OPERATOR(pg_catalog.=) tid AND q.resource OPERATOR(pg_catalog.=) _set_quota.resource;
            IF FOUND THEN
                PERFORM tenancy._audit('quota.clear_tenant', tid, owner_, jsonb_build_object('resource', resource));
            END IF;
        ELSE
            INSERT INTO tenancy.tenant_quotas AS q (tenant_id, resource, quota_limit, period)
            VALUES (tid, resource, quota_limit, period)
            ON CONFLICT (tenant_id, resource) DO UPDATE SET quota_limit = EXCLUDED.quota_limit, period = EXCLUDED.period;
            PERFORM tenancy._audit('quota.set_tenant', tid, owner_,
                jsonb_build_object('resource', resource, 'quota_limit', quota_limit, 'period', period));
        END IF;
    END IF;
END
$$;

-- The administrative functions resolve rows:<table> with the caller's
-- search_path (they are not SECURITY DEFINER themselves), then store.
CREATE FUNCTION tenancy.set_plan_quota(plan text, resource text, quota_limit bigint, period text DEFAULT NULL)
RETURNS void LANGUAGE sql VOLATILE
AS $$ SELECT tenancy._set_quota('plan', plan, tenancy._quota_resource(resource, period), quota_limit, period, false) $$;

CREATE FUNCTION tenancy.set_tenant_quota(tenant text, resource text, quota_limit bigint, period text DEFAULT NULL)
RETURNS void LANGUAGE sql VOLATILE
AS $$ SELECT tenancy._set_quota('tenant', tenant, tenancy._quota_resource(resource, period), quota_limit, period, false) $$;

CREATE FUNCTION tenancy.clear_tenant_quota(tenant text, resource text)
RETURNS void LANGUAGE sql VOLATILE
AS $$ SELECT tenancy._set_quota('tenant', tenant, tenancy._quota_resource(resource, NULL), NULL, NULL, true) $$;

CREATE FUNCTION tenancy.check_quota(resource text, amount bigint DEFAULT 1, tenant text DEFAULT NULL)
RETURNS tenancy.quota_check
LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'tenancy_check_quota';

CREATE FUNCTION tenancy.consume_quota(resource text, amount bigint DEFAULT 1) RETURNS bigint
LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'tenancy_consume_quota';

CREATE FUNCTION tenancy.release_quota(resource text, amount bigint DEFAULT 1) RETURNS bigint
LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'tenancy_release_quota';

CREATE FUNCTION tenancy.quota_usage(tenant text DEFAULT NULL) RETURNS SETOF tenancy.quota_check
LANGUAGE c VOLATILE ROWS 10 AS 'MODULE_PATHNAME', 'tenancy_quota_usage';

-- Raise TQ001 if the tenant may not take amount more of resource.  Used by
-- other areas (create_api_key for api_keys).
CREATE FUNCTION tenancy._require_quota(tid uuid, resource text, amount bigint) RETURNS void
LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'tenancy_require_quota';

-- Counting triggers of protected tables (attached by _attach_triggers).
CREATE FUNCTION tenancy._quota_count() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'tenancy_quota_count';
CREATE FUNCTION tenancy._quota_truncate() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'tenancy_quota_truncate';
-- A newly protected table's rows count from now on.
CREATE FUNCTION tenancy._quota_adopt(tbl regclass, col name) RETURNS void
LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'tenancy_quota_adopt';
-- A dropped or unprotected table's share of usage is given back.
CREATE FUNCTION tenancy._quota_forget(tbl oid) RETURNS void
LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'tenancy_quota_forget';
-- purge_tenant: the tenant's usage goes.
CREATE FUNCTION tenancy._quota_purge(tid uuid) RETURNS void
LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'tenancy_quota_purge';

-- sql_drop: a dropped protected table, or a dropped counting trigger
-- (unprotect), gives its share of usage back.
CREATE FUNCTION tenancy._quota_on_sql_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    d record;
    rel regclass;
BEGIN
    FOR d IN SELECT * FROM pg_event_trigger_dropped_objects() LOOP
        IF d.classid OPERATOR(pg_catalog.=) 'pg_class'::regclass AND d.objsubid OPERATOR(pg_catalog.=) 0
           AND d.object_type OPERATOR(pg_catalog.=) 'table' THEN
            IF EXISTS (SELECT FROM tenancy.quota_ledger l
                        WHERE l.relid OPERATOR(pg_catalog.=) d.objid::regclass) THEN
                PERFORM tenancy._quota_forget(d.objid);
            END IF;
        ELSIF d.classid OPERATOR(pg_catalog.=) 'pg_trigger'::regclass
              AND d.address_names[3] OPERATOR(pg_catalog.=) 'tenancy_quota_truncate' THEN
            rel := pg_catalog.to_regclass(pg_catalog.format('%I.%I', d.address_names[1], d.address_names[2]));
            IF rel IS NOT NULL THEN
                PERFORM tenancy._quota_forget(rel::oid);
            END IF;
        END IF;
    END LOOP;
END
$$;

CREATE EVENT TRIGGER tenancy_quota_drop ON sql_drop
    EXECUTE FUNCTION tenancy._quota_on_sql_drop();

-- Fold the ledger: one row per counter, and rows of periods that ended
-- more than a month ago removed.  Safe to run at any time, concurrently
-- with everything (run_maintenance() may call it).  Returns rows removed.
CREATE FUNCTION tenancy._quota_compact() RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    before bigint;
    after bigint;
    cutoff timestamptz := (date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')
                          OPERATOR(pg_catalog.-) interval '1 month';
BEGIN
    SELECT count(*) INTO before FROM tenancy.quota_ledger;
    WITH gone AS (
        DELETE FROM tenancy.quota_ledger
        RETURNING tenant_id, resource, period_start, relid, delta
    )
    INSERT INTO tenancy.quota_ledger (tenant_id, resource, period_start, relid, delta)
    SELECT g.tenant_id, g.resource, g.period_start, g.relid, sum(g.delta)
      FROM gone g
     WHERE g.period_start OPERATOR(pg_catalog.=) '-infinity'
        OR g.period_start OPERATOR(pg_catalog.>=) cutoff
     GROUP BY 1, 2, 3, 4
    HAVING sum(g.delta) OPERATOR(pg_catalog.<>) 0;
    SELECT count(*) INTO after FROM tenancy.quota_ledger;
    RETURN before OPERATOR(pg_catalog.-) after;
END
$$;

-- Rate limits.
CREATE FUNCTION tenancy._rate_resource(resource text) RETURNS text
LANGUAGE c STABLE AS 'MODULE_PATHNAME', 'tenancy_rate_resource';

CREATE FUNCTION tenancy._set_rate_limit(kind text, owner_ text, resource text, per_second float8,
                                        burst integer)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    tid uuid;
    b integer;
BEGIN
    IF per_second IS NOT NULL AND (per_second OPERATOR(pg_catalog.<=) 0 OR per_second OPERATOR(pg_catalog.=) 'NaN') THEN
        RAISE EXCEPTION 'tenancy: per_second must be a positive number'
            USING ERRCODE = '22023', DETAIL = format('The rate given is %s.', per_second),
                  HINT = 'Pass a rate such as 10 (tokens per second), or NULL to remove the limit.';
    END IF;
    IF per_second OPERATOR(pg_catalog.>) 1e9 THEN
        RAISE EXCEPTION 'tenancy: per_second is too large'
            USING ERRCODE = '22023',
                  DETAIL = format('The rate given is %s; the largest is 1000000000 tokens per second.', per_second),
                  HINT = 'Pass a rate up to 1e9, or NULL to remove the limit.';
    END IF;
    IF burst IS NOT NULL AND burst OPERATOR(pg_catalog.<) 1 THEN
        RAISE EXCEPTION 'tenancy: burst must be at least 1'
            USING ERRCODE = '22023', HINT = 'Omit it to use ceil(per_second).';
    END IF;
    b := coalesce(burst, greatest(ceil(per_second), 1)::integer);
    IF kind OPERATOR(pg_catalog.=) 'plan' THEN
        PERFORM tenancy._check_plan(owner_);
        IF owner_ OPERATOR(pg_catalog.=) 'enterprise' THEN
            RAISE EXCEPTION 'tenancy: the enterprise plan has no limits'
                USING ERRCODE = '22023',
                      HINT = 'Set a rate limit on another plan, or on one tenant with tenancy.set_tenant_rate_limit().';
        END IF;
        IF per_second IS NULL THEN
            DELETE FROM tenancy.plan_rate_limits q
             WHERE q.plan OPERATOR(pg_catalog.=) owner_ AND q.resource OPERATOR(pg_catalog.=) _set_rate_limit.resource;
        ELSE
            INSERT INTO tenancy.plan_rate_limits AS q (plan, resource, per_second, burst)
            VALUES (owner_, resource, per_second, b)
            ON CONFLICT (plan, resource) DO UPDATE SET per_second = EXCLUDED.per_second, burst = EXCLUDED.burst;
        END IF;
        PERFORM tenancy._audit('rate_limit.set_plan', NULL, owner_,
            jsonb_build_object('resource', resource, 'per_second', per_second, 'burst', b));
    ELSE
        tid := tenancy.tenant_id(owner_);
        IF per_second IS NULL THEN
            DELETE FROM tenancy.tenant_rate_limits q
             WHERE q.tenant_id OPERATOR(pg_catalog.=) tid AND q.resource OPERATOR(pg_catalog.=) _set_rate_limit.resource;
        ELSE
            INSERT INTO tenancy.tenant_rate_limits AS q (tenant_id, resource, per_second, burst)
            VALUES (tid, resource, per_second, b)
            ON CONFLICT (tenant_id, resource) DO UPDATE SET per_second = EXCLUDED.per_second, burst = EXCLUDED.burst;
        END IF;
        PERFORM tenancy._audit('rate_limit.set_tenant', tid, owner_,
            jsonb_build_object('resource', resource, 'per_second', per_second, 'burst', b));
    END IF;
END
$$;

CREATE FUNCTION tenancy.set_plan_rate_limit(plan text, resource text, per_second float8, burst integer DEFAULT NULL)
RETURNS void LANGUAGE sql VOLATILE
AS $$ SELECT tenancy._set_rate_limit('plan', plan, tenancy._rate_resource(resource), per_second, burst) $$;

CREATE FUNCTION tenancy.set_tenant_rate_limit(tenant text, resource text, per_second float8, burst integer DEFAULT NULL)
RETURNS void LANGUAGE sql VOLATILE
AS $$ SELECT tenancy._set_rate_limit('tenant', tenant, tenancy._rate_resource(resource), per_second, burst) $$;

CREATE FUNCTION tenancy.check_rate(resource text, cost integer DEFAULT 1) RETURNS boolean
LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'tenancy_check_rate';

CREATE FUNCTION tenancy.enforce_rate(resource text, cost integer DEFAULT 1) RETURNS void
LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'tenancy_enforce_rate';

CREATE FUNCTION tenancy.rate_status(resource text, tenant text DEFAULT NULL)
RETURNS TABLE (tokens float8, per_second float8, burst integer, retry_after_ms bigint)
LANGUAGE c VOLATILE ROWS 1 AS 'MODULE_PATHNAME', 'tenancy_rate_status';

-- (end of section 4)

--------------------------------------------------------------------------
-- 5. API keys
--------------------------------------------------------------------------

-- Column order matters: src/apikey.c reads the columns by position.
-- Later versions may only add columns at the end.
CREATE TABLE tenancy.api_keys (
    id           uuid NOT NULL DEFAULT pg_catalog.gen_random_uuid() PRIMARY KEY,
    tenant_id    uuid NOT NULL,           -- references tenants (below)
    name         text NOT NULL,
    prefix       text NOT NULL,
    key_hash     bytea NOT NULL,
    permissions  text[] NOT NULL DEFAULT '{read,write}',
    scopes       text[] NOT NULL DEFAULT '{}',
    expires_at   timestamptz,
    last_used_at timestamptz,
    revoked_at   timestamptz,
    created_at   timestamptz NOT NULL DEFAULT pg_catalog.now(),
    created_by   text NOT NULL DEFAULT pg_catalog."session_user"(),
    CONSTRAINT api_keys_key_hash_key UNIQUE (key_hash),
    CONSTRAINT api_keys_permissions_check
        CHECK (permissions OPERATOR(pg_catalog.<@) '{read,write,admin}'::text[])
);
CREATE INDEX api_keys_tenant_idx ON tenancy.api_keys (tenant_id);
SELECT pg_catalog.pg_extension_config_dump('tenancy.api_keys', '');

-- Backends cache key rows (src/apikey.c); a change of what a verification
-- reads sends a relcache invalidation at commit (tenancy._tenants_changed()
-- invalidates the table it fires on), so every session sees it at its
-- next transaction.  Not on INSERT (a new key makes no cached row wrong)
-- nor for last_used_at (written every minute).  ALWAYS: also while a
-- restore or a subscription applies changes as a replica.
CREATE TRIGGER api_keys_changed
    AFTER UPDATE OF id, tenant_id, key_hash, permissions, scopes, expires_at, revoked_at
       OR DELETE OR TRUNCATE ON tenancy.api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION tenancy._tenants_changed();
ALTER TABLE tenancy.api_keys ENABLE ALWAYS TRIGGER api_keys_changed;

-- References between the extension's tables, kept by triggers (src/refs.c)
-- rather than foreign keys: pg_restore -j loads these tables in any order,
-- and a foreign key would refuse (and lose) api_keys loaded before tenants.
-- The triggers do what the foreign keys did, with the same row locks, but
-- let a restore's COPY in (doc/tenancy-concepts.md, "Dump and restore").
--   tenants.plan                       -> plans.name  ON UPDATE CASCADE
--   plan_quotas.plan, plan_rate_limits.plan
--                                      -> plans.name  ON UPDATE CASCADE ON DELETE CASCADE
--   tenant_quotas.tenant_id, tenant_rate_limits.tenant_id, api_keys.tenant_id
--                                      -> tenants.id  ON DELETE CASCADE
CREATE FUNCTION tenancy._ref_check() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'tenancy_ref_check';
CREATE FUNCTION tenancy._ref_cascade() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'tenancy_ref_cascade';
CREATE FUNCTION tenancy._ref_truncate() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'tenancy_ref_truncate';

CREATE TRIGGER tenancy_ref AFTER INSERT OR UPDATE OF plan ON tenancy.tenants
    FOR EACH ROW EXECUTE FUNCTION tenancy._ref_check('plan', 'plans', 'name');
CREATE TRIGGER tenancy_ref AFTER INSERT OR UPDATE OF plan ON tenancy.plan_quotas
    FOR EACH ROW EXECUTE FUNCTION tenancy._ref_check('plan', 'plans', 'name');
CREATE TRIGGER tenancy_ref AFTER INSERT OR UPDATE OF plan ON tenancy.plan_rate_limits
    FOR EACH ROW EXECUTE FUNCTION tenancy._ref_check('plan', 'plans', 'name');
CREATE TRIGGER tenancy_ref AFTER INSERT OR UPDATE OF tenant_id ON tenancy.tenant_quotas
    FOR EACH ROW EXECUTE FUNCTION tenancy._ref_check('tenant_id', 'tenants', 'id');
CREATE TRIGGER tenancy_ref AFTER INSERT OR UPDATE OF tenant_id ON tenancy.tenant_rate_limits
    FOR EACH ROW EXECUTE FUNCTION tenancy._ref_check('tenant_id', 'tenants', 'id');
CREATE TRIGGER tenancy_ref AFTER INSERT OR UPDATE OF tenant_id ON tenancy.api_keys
    FOR EACH ROW EXECUTE FUNCTION tenancy._ref_check('tenant_id', 'tenants', 'id');

CREATE TRIGGER tenancy_referenced AFTER UPDATE OF name OR DELETE ON tenancy.plans
    FOR EACH ROW EXECUTE FUNCTION tenancy._ref_cascade('name',
        'tenants', 'plan', 'cascade', 'no action',
        'plan_quotas', 'plan', 'cascade', 'cascade',
        'plan_rate_limits', 'plan', 'cascade', 'cascade');
CREATE TRIGGER tenancy_referenced AFTER UPDATE OF id OR DELETE ON tenancy.tenants
    FOR EACH ROW EXECUTE FUNCTION tenancy._ref_cascade('id',
        'tenant_quotas', 'tenant_id', 'no action', 'cascade',
        'tenant_rate_limits', 'tenant_id', 'no action', 'cascade',
        'api_keys', 'tenant_id', 'no action', 'cascade');
CREATE TRIGGER tenancy_referenced_truncate AFTER TRUNCATE ON tenancy.plans
    FOR EACH STATEMENT EXECUTE FUNCTION tenancy._ref_truncate('tenants', 'plan_quotas', 'plan_rate_limits');
CREATE TRIGGER tenancy_referenced_truncate AFTER TRUNCATE ON tenancy.tenants
    FOR EACH STATEMENT EXECUTE FUNCTION tenancy._ref_truncate('tenant_quotas', 'tenant_rate_limits', 'api_keys');

-- C: the tenant whose keys this session may list (bound by an admin key,
-- or allowed to act for any tenant), else NULL.  For the policy below.
CREATE FUNCTION tenancy._keys_visible_tenant() RETURNS uuid
LANGUAGE c STABLE PARALLEL SAFE
AS 'MODULE_PATHNAME', 'tenancy_keys_visible_tenant';

-- Row level security: tenancy_admin lists every key; a session bound by an
-- admin key, or a tenancy_app session with a context, lists its tenant's.
-- Nobody but the owner reads key_hash.
ALTER TABLE tenancy.api_keys ENABLE ROW LEVEL SECURITY;
CREATE POLICY api_keys_own ON tenancy.api_keys FOR SELECT TO PUBLIC
    USING (tenant_id OPERATOR(pg_catalog.=) (SELECT tenancy._keys_visible_tenant()));
CREATE POLICY api_keys_admin ON tenancy.api_keys FOR SELECT TO tenancy_admin
    USING (true);
GRANT SELECT (id, tenant_id, name, prefix, permissions, scopes, expires_at, last_used_at,
              revoked_at, created_at, created_by) ON tenancy.api_keys TO PUBLIC;

CREATE FUNCTION tenancy.verify_api_key(key text)
RETURNS TABLE (tenant_id uuid, key_id uuid, permissions text[], scopes text[])
LANGUAGE c VOLATILE PARALLEL UNSAFE ROWS 1
AS 'MODULE_PATHNAME', 'tenancy_verify_api_key';

CREATE FUNCTION tenancy.authenticate(key text, is_local boolean DEFAULT false) RETURNS uuid
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'tenancy_authenticate';

CREATE FUNCTION tenancy.logout() RETURNS void
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'tenancy_logout';

-- The administration entry points are C: they judge the caller (its
-- current role, or the admin key it is bound by), then run the internal
-- functions below as the owner of tenancy.api_keys.
CREATE FUNCTION tenancy.create_api_key(tenant text, name text, permissions text[] DEFAULT '{read,write}',
                                       scopes text[] DEFAULT '{}', expires_at timestamptz DEFAULT NULL)
RETURNS text
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'tenancy_create_api_key';

CREATE FUNCTION tenancy.revoke_api_key(key_id uuid) RETURNS void
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'tenancy_revoke_api_key';

CREATE FUNCTION tenancy.rotate_api_key(key_id uuid, grace interval DEFAULT '0') RETURNS text
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'tenancy_rotate_api_key';

-- Raise 22023 unless permissions are among read, write, admin and scopes
-- are non-empty names.  Internal.
CREATE FUNCTION tenancy._check_key_grants(permissions text[], scopes text[]) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    bad text;
BEGIN
    IF pg_catalog.array_ndims(permissions) > 1 OR pg_catalog.array_ndims(scopes) > 1 THEN
        RAISE EXCEPTION 'tenancy: permissions and scopes must be one-dimensional arrays'
            USING ERRCODE = '22023', HINT = 'Pass arrays such as ''{read,write}'' and ''{public.orders}''.';
    END IF;
    IF permissions IS NULL OR array_position(permissions, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'tenancy: permissions must not be null'
            USING ERRCODE = '22023', HINT = 'Pass an array of read, write and admin, e.g. ''{read}''.';
    END IF;
    SELECT p INTO bad FROM unnest(permissions) p
     WHERE p NOT IN ('read', 'write', 'admin') LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'tenancy: unknown permission "%"', bad
            USING ERRCODE = '22023', HINT = 'Permissions are read, write and admin.';
    END IF;
    IF scopes IS NULL OR array_position(scopes, NULL) IS NOT NULL
       OR EXISTS (SELECT FROM unnest(scopes) s WHERE btrim(s) OPERATOR(pg_catalog.=) '') THEN
        RAISE EXCEPTION 'tenancy: scopes must be table names or patterns'
            USING ERRCODE = '22023',
                  DETAIL = 'A scope is null or empty.',
                  HINT = 'Pass ''{}'' for every protected table, or names such as ''{public.orders, billing.*}''.';
    END IF;
END
$$;

-- Store a new key (hash and prefix only) after checking its arguments, the
-- tenant and the api_keys quota; audit it.  Internal: called by C as the
-- owner once the caller's right was checked.
CREATE FUNCTION tenancy._api_key_create(tid uuid, key_name text, perms text[], key_scopes text[],
                                        key_expires timestamptz, key_prefix text, hash bytea,
                                        rotated_from uuid DEFAULT NULL, count_quota boolean DEFAULT true)
RETURNS uuid
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    new_id uuid;
    st text;
BEGIN
    IF key_name IS NULL OR btrim(key_name) OPERATOR(pg_catalog.=) '' THEN
        RAISE EXCEPTION 'tenancy: key name must not be null or empty'
            USING ERRCODE = '22023', HINT = 'Name the key after its user, e.g. ''billing-service''.';
    END IF;
    PERFORM tenancy._check_key_grants(perms, key_scopes);
    IF key_expires IS NOT NULL AND key_expires OPERATOR(pg_catalog.<=) now() THEN
        RAISE EXCEPTION 'tenancy: expires_at must be in the future'
            USING ERRCODE = '22023', HINT = 'Pass a later time, or NULL for a key that does not expire.';
    END IF;
    SELECT t.status INTO st FROM tenancy.tenants t WHERE t.id OPERATOR(pg_catalog.=) tid;
    IF st OPERATOR(pg_catalog.=) 'deleted' THEN
        RAISE EXCEPTION 'tenancy: tenant is deleted'
            USING ERRCODE = '55000', HINT = 'Call tenancy.activate_tenant() first to restore it.';
    END IF;
    IF count_quota THEN
        PERFORM tenancy._require_quota(tid, 'api_keys', 1);
    END IF;
    INSERT INTO tenancy.api_keys (tenant_id, name, prefix, key_hash, permissions, scopes, expires_at)
    VALUES (tid, key_name, key_prefix, hash,
            ARRAY(SELECT DISTINCT p FROM unnest(perms) p ORDER BY 1), key_scopes, key_expires)
    RETURNING id, permissions INTO new_id, perms;
    PERFORM tenancy._audit(CASE WHEN rotated_from IS NULL THEN 'api_key.create' ELSE 'api_key.rotate' END,
                           tid, new_id::text,
                           jsonb_strip_nulls(jsonb_build_object(
                               'name', key_name, 'prefix', key_prefix, 'permissions', perms,
                               'scopes', key_scopes, 'expires_at', key_expires,
                               'rotated_from', rotated_from)));
    RETURN new_id;
END
$$;

-- Revoke a key (idempotent); audit it.  Internal.
CREATE FUNCTION tenancy._api_key_revoke(kid uuid) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k record;
BEGIN
    UPDATE tenancy.api_keys SET revoked_at = now()
     WHERE id OPERATOR(pg_catalog.=) kid AND revoked_at IS NULL
    RETURNING tenant_id, name, prefix INTO k;
    IF FOUND THEN
        PERFORM tenancy._audit('api_key.revoke', k.tenant_id, kid::text,
                               jsonb_build_object('name', k.name, 'prefix', k.prefix));
    END IF;
END
$$;

-- Rotate a key: the old one expires after grace, a new one with the same
-- name, permissions, scopes and expiry is stored.  Internal.
CREATE FUNCTION tenancy._api_key_rotate(kid uuid, grace interval, key_prefix text, hash bytea)
RETURNS uuid
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k tenancy.api_keys;
BEGIN
    IF grace IS NULL OR grace OPERATOR(pg_catalog.<) '0'::interval THEN
        RAISE EXCEPTION 'tenancy: grace must be a non-negative interval'
            USING ERRCODE = '22023', HINT = 'Pass ''0'' to end the old key now, or e.g. ''1 hour''.';
    END IF;
    SELECT * INTO k FROM tenancy.api_keys WHERE id OPERATOR(pg_catalog.=) kid FOR UPDATE;
    IF k.revoked_at IS NOT NULL THEN
        RAISE EXCEPTION 'tenancy: API key is revoked'
            USING ERRCODE = '55000', HINT = 'Create a new key with tenancy.create_api_key().';
    END IF;
    IF k.expires_at IS NOT NULL AND k.expires_at OPERATOR(pg_catalog.<=) now() THEN
        RAISE EXCEPTION 'tenancy: API key has expired'
            USING ERRCODE = '55000', HINT = 'Create a new key with tenancy.create_api_key().';
    END IF;
    -- Without grace the old key ends now: it is revoked as well, so that it
    -- stops counting against the api_keys quota (unrevoked keys) and the
    -- rotation needs no room.  With grace it counts until revoked.
    UPDATE tenancy.api_keys
       SET expires_at = LEAST(coalesce(expires_at, 'infinity'), now() OPERATOR(pg_catalog.+) grace),
           revoked_at = CASE WHEN grace OPERATOR(pg_catalog.=) '0'::interval THEN now() END
     WHERE id OPERATOR(pg_catalog.=) kid;
    RETURN tenancy._api_key_create(k.tenant_id, k.name, k.permissions, k.scopes, k.expires_at,
                                   key_prefix, hash, kid, grace OPERATOR(pg_catalog.>) '0'::interval);
END
$$;

-- Authentication failures in this database by cause since the server
-- started, for tenancy.stats: malformed, unknown, expired, revoked,
-- tenant_inactive.
CREATE FUNCTION tenancy._auth_failures() RETURNS TABLE (cause text, failures bigint)
LANGUAGE c VOLATILE PARALLEL SAFE
AS 'MODULE_PATHNAME', 'tenancy_auth_failures';

-- (end of section 5)

--------------------------------------------------------------------------
-- 6. Usage metering and rollups
--------------------------------------------------------------------------

-- Raw usage events: the usage recorded by committed transactions and the
-- denial records, summed by tenant, resource and hour in shared memory and
-- written about once per tenancy.usage_flush_delay (src/usage.c).
-- rollup_usage() folds them into tenancy.usage_rollups and deletes them.
CREATE TABLE tenancy.usage_events (
    tenant_id   uuid NOT NULL,
    resource    text NOT NULL,
    at          timestamptz NOT NULL,
    amount      bigint NOT NULL
);
CREATE INDEX usage_events_tenant_at_idx ON tenancy.usage_events (tenant_id, at);
SELECT pg_catalog.pg_extension_config_dump('tenancy.usage_events', '');

CREATE TABLE tenancy.usage_rollups (
    tenant_id    uuid NOT NULL,
    resource     text NOT NULL,
    granularity  text NOT NULL,
    period_start timestamptz NOT NULL,
    amount       bigint NOT NULL,
    CONSTRAINT usage_rollups_pkey PRIMARY KEY (tenant_id, resource, granularity, period_start),
    CONSTRAINT usage_rollups_granularity_check CHECK (granularity IN ('hour', 'day', 'month'))
);
CREATE INDEX usage_rollups_tenant_period_idx
    ON tenancy.usage_rollups (tenant_id, granularity, period_start);
SELECT pg_catalog.pg_extension_config_dump('tenancy.usage_rollups', '');

-- One row: when run_maintenance() last ran and what it did.  Its row lock
-- makes concurrent runs take turns.  Deliberately not dumped (no
-- pg_extension_config_dump): CREATE EXTENSION creates the row, and the
-- old server's last run says nothing about the restored one.
CREATE TABLE tenancy.maintenance_state (
    id          boolean PRIMARY KEY DEFAULT true CONSTRAINT maintenance_state_one_row CHECK (id),
    last_run    timestamptz,
    last_result jsonb
);
INSERT INTO tenancy.maintenance_state DEFAULT VALUES;

CREATE FUNCTION tenancy.record_usage(resource text, amount bigint DEFAULT 1, tenant text DEFAULT NULL)
RETURNS void
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'tenancy_record_usage';

CREATE FUNCTION tenancy.usage(tenant text, since timestamptz, until timestamptz,
                              granularity text DEFAULT 'day')
RETURNS TABLE (period_start timestamptz, resource text, amount bigint)
LANGUAGE c VOLATILE PARALLEL UNSAFE ROWS 100
AS 'MODULE_PATHNAME', 'tenancy_usage';

-- Write every waiting usage sum of this database (src/usage.c) and this
-- transaction's records now.  Internal: rollup_usage() calls it.
CREATE FUNCTION tenancy._usage_flush() RETURNS void
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'tenancy_usage_flush';

-- Record as the denial meters do: the record survives a rollback.
-- Internal, for tests.
CREATE FUNCTION tenancy._usage_record_carried(tenant uuid, resource text, amount bigint)
RETURNS void
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'tenancy_usage_record_carried';

-- Counters of this database since server start, from shared memory:
-- rollback-surviving records (denials), authentication failures.  For
-- tenancy.stats.
CREATE FUNCTION tenancy._usage_counters() RETURNS TABLE (resource text, amount bigint)
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'tenancy_usage_counters';

-- The lock rollup_usage() runs take turns on, held to the end of the
-- transaction, in tenancy's own advisory lock space (no session can take it
-- with pg_advisory_lock()).  Internal: not granted.
CREATE FUNCTION tenancy._usage_rollup_lock() RETURNS void
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'tenancy_usage_rollup_lock';

-- Fold the raw events into the hourly, daily and monthly rollups, in one
-- statement: the events are deleted and their sums added to the rollups
-- together, so an event is folded exactly once.  Runs take turns (a
-- transaction lock of tenancy's own); a run under READ COMMITTED that waited
-- sees what the other folded as gone.  Returns the number of events folded.
-- Sums are taken in numeric and saturate at the bigint maximum (a rollup
-- that reaches it stays there), so no amount a tenant records can make
-- the fold, and run_maintenance() with it, fail.
CREATE FUNCTION tenancy.rollup_usage() RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n bigint;
BEGIN
    PERFORM tenancy._usage_flush();
    PERFORM tenancy._usage_rollup_lock();
    WITH folded AS (
        DELETE FROM tenancy.usage_events
        RETURNING tenant_id, resource, at, amount
    ), grouped AS (
        SELECT f.tenant_id, f.resource, g.granularity,
               pg_catalog.date_trunc(g.granularity, f.at, 'UTC') AS period_start,
               pg_catalog.sum(f.amount) AS amount
          FROM folded f
         CROSS JOIN (VALUES ('hour'), ('day'), ('month')) AS g (granularity)
         GROUP BY 1, 2, 3, 4
    ), merged AS (
        INSERT INTO tenancy.usage_rollups AS r (tenant_id, resource, granularity, period_start, amount)
        SELECT g.tenant_id, g.resource, g.granularity, g.period_start,
               LEAST(g.amount, 9223372036854775807::pg_catalog.numeric)::bigint
          FROM grouped g
         ORDER BY 1, 2, 3, 4
        ON CONFLICT (tenant_id, resource, granularity, period_start)
        DO UPDATE SET amount = LEAST(r.amount::pg_catalog.numeric OPERATOR(pg_catalog.+) EXCLUDED.amount,
                                     9223372036854775807::pg_catalog.numeric)::bigint
    )
    SELECT pg_catalog.count(*) INTO n FROM folded;
    RETURN n;
END
$$;

-- Remove a tenant's usage (called by _purge_tenant_state).  Internal.
CREATE FUNCTION tenancy._purge_tenant_usage(tid uuid) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM tenancy.usage_events WHERE tenant_id OPERATOR(pg_catalog.=) tid;
    DELETE FROM tenancy.usage_rollups WHERE tenant_id OPERATOR(pg_catalog.=) tid;
END
$$;

-- Delete audit rows older than `before` (the only DELETE the audit guard
-- allows) and, when some were deleted, append an audit.purge row saying
-- what (rows, before, oldest, newest), whoever calls it.  Internal:
-- run_maintenance() calls it; executable by superusers only.
CREATE FUNCTION tenancy._audit_purge(before timestamptz) RETURNS bigint
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'tenancy_audit_purge';

-- Periodic maintenance: rollups, expiry, purge of deleted tenants, audit
-- retention.  See doc/tenancy-usage.md.
CREATE FUNCTION tenancy.run_maintenance() RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    purge_after text := pg_catalog.current_setting('tenancy.purge_after');
    retention text := pg_catalog.current_setting('tenancy.audit_retention');
    folded bigint;
    compacted bigint;
    expired integer := 0;
    purged integer := 0;
    failed integer := 0;
    audit_rows bigint := 0;
    cutoff timestamptz;
    r record;
BEGIN
    -- One run at a time: a concurrent run waits here, then sees this one's work.
    PERFORM FROM tenancy.maintenance_state FOR UPDATE;

    folded := tenancy.rollup_usage();
    -- Fold the quota ledger (section 4) so it does not grow without bound.
    compacted := tenancy._quota_compact();

    -- Expiry: an active tenant past expires_at is already treated as expired
    -- everywhere; record it once in the audit log (per expires_at value).
    FOR r IN SELECT t.id, t.slug, t.expires_at
               FROM tenancy.tenants t
              WHERE t.status OPERATOR(pg_catalog.=) 'active'
                AND t.expires_at OPERATOR(pg_catalog.<=) now()
                AND (retention OPERATOR(pg_catalog.=) ''
                     OR t.expires_at OPERATOR(pg_catalog.>) (now() OPERATOR(pg_catalog.-) retention::interval))
                AND NOT EXISTS (
                    SELECT FROM tenancy.audit_log a
                     WHERE a.tenant_id OPERATOR(pg_catalog.=) t.id
                       AND a.action OPERATOR(pg_catalog.=) 'tenant.expire'
                       AND (a.details OPERATOR(pg_catalog.->>) 'expires_at')::timestamptz
                           OPERATOR(pg_catalog.=) t.expires_at)
              ORDER BY t.expires_at LOOP
        PERFORM tenancy._audit('tenant.expire', r.id, r.slug,
                               jsonb_build_object('expires_at', r.expires_at));
        expired := expired + 1;
    END LOOP;

    -- Purge tenants deleted longer ago than tenancy.purge_after.
    IF purge_after OPERATOR(pg_catalog.<>) '' THEN
        FOR r IN SELECT t.id, t.slug FROM tenancy.tenants t
                  WHERE t.status OPERATOR(pg_catalog.=) 'deleted'
                    AND t.deleted_at OPERATOR(pg_catalog.<=) (now() OPERATOR(pg_catalog.-) purge_after::interval)
                  ORDER BY t.deleted_at LOOP
            BEGIN
                PERFORM tenancy.purge_tenant(r.id::text);
                purged := purged + 1;
            EXCEPTION WHEN OTHERS THEN
                failed := failed + 1;
                RAISE WARNING 'tenancy: purging tenant % failed: %', r.slug, SQLERRM;
            END;
        END LOOP;
    END IF;

    -- Audit retention.
    IF retention OPERATOR(pg_catalog.<>) '' THEN
        cutoff := now() OPERATOR(pg_catalog.-) retention::interval;
        -- Appends the audit.purge row itself when it deletes some.
        audit_rows := tenancy._audit_purge(cutoff);
    END IF;

    UPDATE tenancy.maintenance_state
       SET last_run = clock_timestamp(),
           last_result = jsonb_build_object('events_folded', folded, 'tenants_expired', expired,
                                            'tenants_purged', purged, 'purges_failed', failed,
                                            'audit_rows_deleted', audit_rows,
                                            'quota_ledger_rows_compacted', compacted);
END
$$;

-- Register run_maintenance() with pg_cron, as the job 'tenancy-maintenance'
-- of this database.  Calling it again updates the schedule.  A schedule
-- pg_cron refuses (its 22023) is reported as tenancy's own 22023, with
-- pg_cron's message in the DETAIL and the syntax the installed pg_cron
-- accepts in the HINT (interval schedules such as '30 seconds' from 1.5).
CREATE FUNCTION tenancy.schedule_maintenance(schedule text DEFAULT '* * * * *') RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cron_message text;
    cron_version text;
    syntax text;
    fields integer;
BEGIN
    IF schedule IS NULL OR schedule OPERATOR(pg_catalog.=) '' THEN
        RAISE EXCEPTION 'tenancy: schedule must not be null or empty'
            USING ERRCODE = '22023', HINT = 'Pass a cron schedule such as ''* * * * *'' (every minute).';
    END IF;
    IF NOT EXISTS (SELECT FROM pg_extension WHERE extname OPERATOR(pg_catalog.=) 'pg_cron') THEN
        RAISE EXCEPTION 'tenancy: pg_cron is not installed in this database'
            USING ERRCODE = '55000',
                  DETAIL = format('Database %s has no pg_cron extension.', current_database()),
                  HINT = 'Add pg_cron to shared_preload_libraries, set cron.database_name to this database, '
                         'restart, and run CREATE EXTENSION pg_cron; or call tenancy.run_maintenance() '
                         'from another scheduler.';
    END IF;
    SELECT e.extversion INTO cron_version FROM pg_extension e
     WHERE e.extname OPERATOR(pg_catalog.=) 'pg_cron';
    syntax := 'Pass five cron fields (minute hour day-of-month month day-of-week), '
              'such as ''* * * * *'' (every minute) or ''*/5 * * * *'' (every five minutes), '
              'or @hourly, @daily, @weekly or @monthly'
              OPERATOR(pg_catalog.||)
              CASE WHEN cron_version IN ('1.0', '1.1', '1.2', '1.3', '1.4', '1.4-1')
                   THEN '.'
                   ELSE '; or an interval of 1 to 59 seconds, such as ''30 seconds''.' END;
    -- pg_cron reads five fields and ignores any more (a sixth, for seconds
    -- as some schedulers have it, would silently mean something else).
    fields := pg_catalog.array_length(pg_catalog.regexp_split_to_array(pg_catalog.btrim(schedule), '\s+'), 1);
    IF fields OPERATOR(pg_catalog.>) 5 AND pg_catalog.left(pg_catalog.btrim(schedule), 1) OPERATOR(pg_catalog.<>) '@' THEN
        RAISE EXCEPTION 'tenancy: invalid schedule "%"', schedule
            USING ERRCODE = '22023',
                  DETAIL = format('It has %s fields; pg_cron would read the first five and ignore the rest.', fields),
                  HINT = syntax;
    END IF;
    BEGIN
        EXECUTE 'SELECT cron.schedule($1, $2, $3)'
            USING 'tenancy-maintenance', schedule, 'SELECT tenancy.run_maintenance()';
    EXCEPTION WHEN invalid_parameter_value THEN
        -- The job name and command are tenancy's: pg_cron refused the schedule.
        GET STACKED DIAGNOSTICS cron_message = MESSAGE_TEXT;
        RAISE EXCEPTION 'tenancy: invalid schedule "%"', schedule
            USING ERRCODE = '22023',
                  DETAIL = format('pg_cron %s refused it: %s.', cron_version, cron_message),
                  HINT = syntax;
    END;
    PERFORM tenancy._audit('maintenance.schedule', NULL, 'tenancy-maintenance',
                           jsonb_build_object('schedule', schedule));
END
$$;

-- Remove the pg_cron job, if there is one.
CREATE FUNCTION tenancy.unschedule_maintenance() RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    job bigint;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_extension WHERE extname OPERATOR(pg_catalog.=) 'pg_cron') THEN
        RETURN;
    END IF;
    FOR job IN EXECUTE 'SELECT jobid FROM cron.job WHERE jobname OPERATOR(pg_catalog.=) $1 '
                       'AND username OPERATOR(pg_catalog.=) current_user'
               USING 'tenancy-maintenance' LOOP
        EXECUTE 'SELECT cron.unschedule($1)' USING job;
        PERFORM tenancy._audit('maintenance.unschedule', NULL, 'tenancy-maintenance',
                               jsonb_build_object('jobid', job));
    END LOOP;
END
$$;

-- (end of section 6)

--------------------------------------------------------------------------
-- 7. Audit and observability
--------------------------------------------------------------------------

-- No DDL on tenancy.audit_log outside the extension's own scripts (42501):
-- ALTER TABLE in every form (columns, RENAME, SET SCHEMA, triggers
-- disabled, ATTACH PARTITION), ALTER INDEX ... RENAME (which core accepts
-- on a table), triggers, rules and policies created, altered or dropped.
-- Checked before the command runs, and never bypassed (C).  Created first,
-- so that this script's own DDL on the table below passes through it.
CREATE FUNCTION tenancy._on_audit_ddl() RETURNS event_trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'tenancy_audit_ddl';
CREATE EVENT TRIGGER tenancy_audit_ddl_guard ON ddl_command_start
    WHEN TAG IN ('ALTER TABLE', 'ALTER INDEX', 'CREATE TRIGGER', 'ALTER TRIGGER', 'DROP TRIGGER',
                 'CREATE RULE', 'ALTER RULE', 'DROP RULE', 'CREATE POLICY', 'ALTER POLICY',
                 'DROP POLICY')
    EXECUTE FUNCTION tenancy._on_audit_ddl();

-- tenancy.audit_log is append-only: UPDATE, DELETE and TRUNCATE fail
-- (42501), except the DELETE of the retention purge (tenancy._audit_purge).
-- ENABLE ALWAYS: session_replication_role = replica does not skip them.
CREATE FUNCTION tenancy._audit_guard() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'tenancy_audit_guard';
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON tenancy.audit_log
    FOR EACH ROW EXECUTE FUNCTION tenancy._audit_guard();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON tenancy.audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION tenancy._audit_guard();
ALTER TABLE tenancy.audit_log ENABLE ALWAYS TRIGGER audit_log_append_only,
                              ENABLE ALWAYS TRIGGER audit_log_no_truncate;

-- Raise 42501 when the append-only guard of tenancy.audit_log is no longer
-- intact (both triggers there, unchanged, ENABLE ALWAYS), or for problem
-- when given.  Called by the DDL guards (_on_ddl_command_end, _on_sql_drop)
-- for commands outside the extension's own scripts and maintenance
-- (_ddl_bypass): DISABLE TRIGGER, ENABLE REPLICA TRIGGER, DROP TRIGGER,
-- ALTER TRIGGER ... RENAME, CREATE OR REPLACE TRIGGER.  Internal.
CREATE FUNCTION tenancy._check_audit_guard(problem text) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    rel oid := pg_catalog.to_regclass('tenancy.audit_log');
    guard regprocedure := pg_catalog.to_regprocedure('tenancy._audit_guard()');
BEGIN
    IF problem IS NULL THEN
        SELECT CASE
            WHEN NOT EXISTS (SELECT FROM pg_trigger t
                              WHERE t.tgrelid OPERATOR(pg_catalog.=) rel
                                AND t.tgname OPERATOR(pg_catalog.=) 'audit_log_append_only'
                                AND t.tgfoid OPERATOR(pg_catalog.=) guard
                                AND t.tgtype OPERATOR(pg_catalog.=) 27  -- BEFORE UPDATE OR DELETE FOR EACH ROW
                                AND t.tgqual IS NULL
                                AND t.tgattr OPERATOR(pg_catalog.=) ''::pg_catalog.int2vector) THEN
                'trigger audit_log_append_only would be dropped, renamed or changed'
            WHEN NOT EXISTS (SELECT FROM pg_trigger t
                              WHERE t.tgrelid OPERATOR(pg_catalog.=) rel
                                AND t.tgname OPERATOR(pg_catalog.=) 'audit_log_no_truncate'
                                AND t.tgfoid OPERATOR(pg_catalog.=) guard
                                AND t.tgtype OPERATOR(pg_catalog.=) 34  -- BEFORE TRUNCATE FOR EACH STATEMENT
                                AND t.tgqual IS NULL) THEN
                'trigger audit_log_no_truncate would be dropped, renamed or changed'
            ELSE (SELECT format('trigger %s would be disabled or no longer ENABLE ALWAYS', t.tgname)
                    FROM pg_trigger t
                   WHERE t.tgrelid OPERATOR(pg_catalog.=) rel
                     AND t.tgname IN ('audit_log_append_only', 'audit_log_no_truncate')
                     AND t.tgenabled OPERATOR(pg_catalog.<>) 'A'
                   ORDER BY t.tgname LIMIT 1)
            END INTO problem;
    END IF;
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION 'tenancy: the audit log is append-only'
            USING ERRCODE = '42501',
                  DETAIL = format('This command would weaken the guard of tenancy.audit_log: %s.', problem),
                  HINT = 'Old audit rows are removed by tenancy.run_maintenance() after tenancy.audit_retention.';
    END IF;
END
$$;

-- Quota usage ratios by tenant and resource, for tenancy.stats: used over
-- limit for every resource with a limit, of every tenant not deleted.  A
-- limit of 0 (the resource is forbidden, health critical) counts as 1: the
-- ratio is 1 with nothing used, and the usage itself (over 1, over the
-- limit) with some; never NaN or Infinity, which alerting handles badly.
CREATE FUNCTION tenancy._quota_ratios() RETURNS TABLE (tenant text, resource text, ratio float8)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT t.slug, q.resource,
           CASE WHEN q.quota_limit OPERATOR(pg_catalog.>) 0
                THEN q.used::float8 OPERATOR(pg_catalog./) q.quota_limit::float8
                ELSE GREATEST(q.used, 1)::float8
           END
      FROM tenancy.tenants t
     CROSS JOIN LATERAL tenancy.quota_usage(t.id::text) q
     WHERE q.quota_limit IS NOT NULL
       AND t.status OPERATOR(pg_catalog.<>) 'deleted';
$$;

-- Metrics in Prometheus style: (metric, labels, value).  Counters (_total)
-- of denials and failures count this database's since the server started.
-- Readable by tenancy_admin and pg_monitor.
CREATE VIEW tenancy.stats AS
SELECT 'tenancy_tenants'::text AS metric,
       pg_catalog.jsonb_build_object('status', s.status) AS labels,
       COALESCE(c.n, 0)::float8 AS value
  FROM (VALUES ('active'), ('suspended'), ('expired'), ('deleted')) AS s (status)
  LEFT JOIN (SELECT CASE WHEN t.status OPERATOR(pg_catalog.=) 'active'
                              AND t.expires_at OPERATOR(pg_catalog.<=) pg_catalog.now()
                         THEN 'expired' ELSE t.status END AS status,
                    pg_catalog.count(*) AS n
               FROM tenancy.tenants t GROUP BY 1) AS c
    ON c.status OPERATOR(pg_catalog.=) s.status
UNION ALL
-- Keys that would verify now: not revoked, not expired, tenant active.
SELECT 'tenancy_api_keys_active', '{}'::jsonb, pg_catalog.count(*)::float8
  FROM tenancy.api_keys k
  JOIN tenancy.tenants t ON t.id OPERATOR(pg_catalog.=) k.tenant_id
 WHERE k.revoked_at IS NULL
   AND (k.expires_at IS NULL OR k.expires_at OPERATOR(pg_catalog.>) pg_catalog.now())
   AND t.status OPERATOR(pg_catalog.=) 'active'
   AND (t.expires_at IS NULL OR t.expires_at OPERATOR(pg_catalog.>) pg_catalog.now())
UNION ALL
SELECT 'tenancy_auth_failures_total', pg_catalog.jsonb_build_object('cause', f.cause), f.failures::float8
  FROM tenancy._auth_failures() f
UNION ALL
SELECT 'tenancy_quota_denials_total',
       pg_catalog.jsonb_build_object('resource', pg_catalog.substr(c.resource, 14)), c.amount::float8
  FROM tenancy._usage_counters() c
 WHERE pg_catalog.left(c.resource, 13) OPERATOR(pg_catalog.=) 'quota_denied:'
UNION ALL
SELECT 'tenancy_rate_limited_total',
       pg_catalog.jsonb_build_object('resource', pg_catalog.substr(c.resource, 14)), c.amount::float8
  FROM tenancy._usage_counters() c
 WHERE pg_catalog.left(c.resource, 13) OPERATOR(pg_catalog.=) 'rate_limited:'
UNION ALL
SELECT 'tenancy_quota_usage_ratio',
       pg_catalog.jsonb_build_object('tenant', q.tenant, 'resource', q.resource), q.ratio
  FROM tenancy._quota_ratios() q
UNION ALL
SELECT 'tenancy_maintenance_last_run_timestamp_seconds', '{}'::jsonb,
       pg_catalog.date_part('epoch', m.last_run)
  FROM tenancy.maintenance_state m
 WHERE m.last_run IS NOT NULL;

-- (end of section 7)

--------------------------------------------------------------------------
-- Privileges.  Functions are executable by PUBLIC by default: revoke it
-- all, then grant deliberately, area by area.
--------------------------------------------------------------------------

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA tenancy FROM PUBLIC;

-- Foundation: what any tenant session needs.
GRANT EXECUTE ON FUNCTION
    tenancy.current_tenant_id(),
    tenancy.current_tenant(),
    tenancy.set_tenant(text, boolean),
    tenancy.tenant_status(text)
TO PUBLIC;
-- PostgreSQL 15 checks EXECUTE on a row trigger's function when it clones
-- the trigger onto a new partition, as the user who creates or attaches
-- it: the owner of a protected partitioned table needs it.  Called any
-- other way than by the trigger manager, the function only raises.
GRANT EXECUTE ON FUNCTION tenancy._row_guard() TO PUBLIC;
-- Run by the ddl_command_start guard as whoever runs DDL.
GRANT EXECUTE ON FUNCTION tenancy._protected_problems(oid[]) TO PUBLIC;

-- Foundation: administration.
GRANT EXECUTE ON FUNCTION
    tenancy.create_tenant(text, text, text, jsonb, timestamptz),
    tenancy.tenant_id(text),
    tenancy.update_tenant(text, text, text, jsonb, timestamptz),
    tenancy.suspend_tenant(text, text),
    tenancy.activate_tenant(text),
    tenancy.delete_tenant(text),
    tenancy.purge_tenant(text),
    tenancy.protect(regclass, name, text),
    tenancy.unprotect(regclass)
TO tenancy_admin;

-- Quotas and rate limits.
GRANT EXECUTE ON FUNCTION
    tenancy.check_quota(text, bigint, text),
    tenancy.consume_quota(text, bigint),
    tenancy.release_quota(text, bigint),
    tenancy.quota_usage(text),
    tenancy.check_rate(text, integer),
    tenancy.enforce_rate(text, integer),
    tenancy.rate_status(text, text)
TO PUBLIC;
GRANT EXECUTE ON FUNCTION
    tenancy.set_plan_quota(text, text, bigint, text),
    tenancy.set_tenant_quota(text, text, bigint, text),
    tenancy.clear_tenant_quota(text, text),
    tenancy.set_plan_rate_limit(text, text, float8, integer),
    tenancy.set_tenant_rate_limit(text, text, float8, integer),
    tenancy._quota_resource(text, text),
    tenancy._rate_resource(text),
    tenancy._set_quota(text, text, text, bigint, text, boolean),
    tenancy._set_rate_limit(text, text, text, float8, integer),
    tenancy._quota_compact()
TO tenancy_admin;
-- PostgreSQL 15 checks EXECUTE on a row trigger's function when it clones
-- the trigger onto a new partition, as the user who creates or attaches
-- it.  Called any other way than by the trigger manager, it only raises.
GRANT EXECUTE ON FUNCTION tenancy._quota_count() TO PUBLIC;
-- (end of quota grants)

-- API keys.  The administration functions are granted to PUBLIC on
-- purpose: they let members of tenancy_admin manage any tenant's keys and a
-- session bound by an admin key its own tenant's, and refuse everyone else
-- (42501) inside.
GRANT EXECUTE ON FUNCTION
    tenancy.verify_api_key(text),
    tenancy.authenticate(text, boolean),
    tenancy.logout(),
    tenancy.create_api_key(text, text, text[], text[], timestamptz),
    tenancy.revoke_api_key(uuid),
    tenancy.rotate_api_key(uuid, interval),
    tenancy._keys_visible_tenant()
TO PUBLIC;
-- (SELECT on tenancy.api_keys, all but key_hash, is granted to PUBLIC in
-- section 5; tenancy_admin's policy lets it see every row.)

-- (end of API key grants)

-- Usage, audit and stats.

GRANT EXECUTE ON FUNCTION
    tenancy.record_usage(text, bigint, text),
    tenancy.usage(text, timestamptz, timestamptz, text)
TO PUBLIC;

GRANT EXECUTE ON FUNCTION
    tenancy.rollup_usage(),
    tenancy.run_maintenance(),
    tenancy.schedule_maintenance(text),
    tenancy.unschedule_maintenance()
TO tenancy_admin;

-- What tenancy.stats calls runs as its reader.
GRANT EXECUTE ON FUNCTION
    tenancy._usage_counters(),
    tenancy._auth_failures(),
    tenancy._quota_ratios()
TO tenancy_admin, pg_monitor;
GRANT SELECT ON tenancy.stats TO tenancy_admin, pg_monitor;
GRANT SELECT ON tenancy.usage_rollups, tenancy.maintenance_state TO tenancy_admin;

-- (end of usage grants)
