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
    plan        text NOT NULL,
    status      text NOT NULL DEFAULT 'active',
    expires_at  timestamptz,
    metadata    jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    deleted_at  timestamptz,
    CONSTRAINT tenants_pkey PRIMARY KEY (id),
    CONSTRAINT tenants_slug_key UNIQUE (slug),
    CONSTRAINT tenants_plan_fkey FOREIGN KEY (plan) REFERENCES tenancy.plans (name) ON UPDATE CASCADE,
    CONSTRAINT tenants_status_check CHECK (status IN ('active', 'suspended', 'deleted')),
    CONSTRAINT tenants_slug_check CHECK (slug ~ '^[a-z0-9][a-z0-9-]{1,30}[a-z0-9]$')
);
SELECT pg_catalog.pg_extension_config_dump('tenancy.tenants', '');

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
    VALUES (action, tenant, target, COALESCE(details, '{}'::jsonb));
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
    UPDATE tenancy.tenants t
       SET name = coalesce(update_tenant.name, t.name),
           plan = coalesce(update_tenant.plan, t.plan),
           metadata = coalesce(update_tenant.metadata, t.metadata),
           expires_at = coalesce(update_tenant.expires_at, t.expires_at),
           updated_at = now()
     WHERE t.id OPERATOR(pg_catalog.=) tid;
    PERFORM tenancy._audit('tenant.update', tid, tenant,
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
BEGIN
    UPDATE tenancy.tenants t
       SET status = new_status,
           updated_at = now(),
           deleted_at = CASE WHEN new_status OPERATOR(pg_catalog.=) 'deleted' THEN now() END
     WHERE t.id OPERATOR(pg_catalog.=) tid;
    PERFORM tenancy._audit(action, tid, tenant, details);
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

-- What else a soft delete does (revoke the tenant's keys); later sections
-- replace it.
CREATE FUNCTION tenancy._on_tenant_deleted(tid uuid) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
END
$$;

-- Remove a tenant's own state beyond protected tables (keys, quotas,
-- usage); later sections replace it.  Returns nothing.
CREATE FUNCTION tenancy._purge_tenant_state(tid uuid) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
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

-- The triggers every protected table carries.  Later sections add theirs.
CREATE FUNCTION tenancy._attach_triggers(tbl regclass, col name) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_trigger WHERE tgrelid OPERATOR(pg_catalog.=) tbl
                      AND tgname OPERATOR(pg_catalog.=) 'tenancy_guard') THEN
        EXECUTE format('CREATE TRIGGER tenancy_guard BEFORE INSERT OR UPDATE ON %s '
                       'FOR EACH ROW EXECUTE FUNCTION tenancy._row_guard(%L)', tbl, col);
    END IF;
    IF NOT EXISTS (SELECT FROM pg_trigger WHERE tgrelid OPERATOR(pg_catalog.=) tbl
                      AND tgname OPERATOR(pg_catalog.=) 'tenancy_truncate_guard') THEN
        EXECUTE format('CREATE TRIGGER tenancy_truncate_guard BEFORE TRUNCATE ON %s '
                       'FOR EACH STATEMENT EXECUTE FUNCTION tenancy._truncate_guard()', tbl);
    END IF;
END
$$;

-- Protect one relation whose tenant column is in place: default, RLS,
-- policies, triggers, registry.  Internal; the caller holds the bypass.
CREATE FUNCTION tenancy._protect_relation(tbl regclass, col name) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    listed boolean := EXISTS (SELECT FROM tenancy.protected_tables WHERE relid OPERATOR(pg_catalog.=) tbl);
BEGIN
    EXECUTE format('ALTER TABLE %s ALTER COLUMN %I SET DEFAULT tenancy.current_tenant_id()', tbl, col);
    EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY', tbl);
    IF NOT EXISTS (SELECT FROM pg_policy WHERE polrelid OPERATOR(pg_catalog.=) tbl
                      AND polname OPERATOR(pg_catalog.=) 'tenancy_isolation') THEN
        -- The sub-select makes the context an InitPlan: evaluated once per
        -- execution, usable as an index key, passed to parallel workers.
        EXECUTE format('CREATE POLICY tenancy_isolation ON %s AS RESTRICTIVE FOR ALL TO PUBLIC '
                       'USING (%2$I OPERATOR(pg_catalog.=) (SELECT tenancy.current_tenant_id())) '
                       'WITH CHECK (%2$I OPERATOR(pg_catalog.=) (SELECT tenancy.current_tenant_id()))',
                       tbl, col);
    END IF;
    -- Only on first protection: a user who replaced tenancy_allow with
    -- narrower policies must not get it back from a repeated protect().
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
    backfill uuid;
    has_rows boolean;
    previous boolean;
    part regclass;
    was_listed boolean;
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

    previous := tenancy._ddl_bypass(true);
    was_listed := EXISTS (SELECT FROM tenancy.protected_tables WHERE relid OPERATOR(pg_catalog.=) tbl);

    SELECT a.attnum, a.atttypid, a.attnotnull INTO att
      FROM pg_attribute a
     WHERE a.attrelid OPERATOR(pg_catalog.=) tbl AND a.attname OPERATOR(pg_catalog.=) tenant_column
       AND NOT a.attisdropped AND a.attnum OPERATOR(pg_catalog.>) 0;
    IF FOUND AND att.atttypid OPERATOR(pg_catalog.<>) 'uuid'::regtype THEN
        RAISE EXCEPTION 'tenancy: column "%" of % must be of type uuid', tenant_column, tbl
            USING ERRCODE = '42804', DETAIL = format('It is of type %s.', format_type(att.atttypid, NULL)),
                  HINT = 'Convert it with ALTER TABLE ... ALTER COLUMN ... TYPE uuid, or name another column.';
    END IF;

    IF NOT FOUND OR NOT att.attnotnull THEN
        -- Rows without a tenant need backfill_tenant.
        IF NOT FOUND THEN
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
        IF backfill_tenant IS NOT NULL THEN
            backfill := tenancy.tenant_id(backfill_tenant);
        END IF;
        IF NOT FOUND THEN
            EXECUTE format('ALTER TABLE %s ADD COLUMN %I uuid', tbl, tenant_column);
        END IF;
        IF has_rows THEN
            EXECUTE format('UPDATE %s SET %2$I = $1 WHERE %2$I IS NULL', tbl, tenant_column) USING backfill;
        END IF;
        EXECUTE format('ALTER TABLE %s ALTER COLUMN %I SET NOT NULL', tbl, tenant_column);
        SELECT a.attnum INTO att FROM pg_attribute a
         WHERE a.attrelid OPERATOR(pg_catalog.=) tbl AND a.attname OPERATOR(pg_catalog.=) tenant_column
           AND NOT a.attisdropped;
    END IF;

    -- An index leading with the tenant column.
    IF NOT EXISTS (SELECT FROM pg_index i WHERE i.indrelid OPERATOR(pg_catalog.=) tbl
                      AND i.indkey[0] OPERATOR(pg_catalog.=) att.attnum) THEN
        EXECUTE format('CREATE INDEX ON %s (%I)', tbl, tenant_column);
    END IF;

    PERFORM tenancy._protect_relation(tbl, tenant_column);
    -- Every partition, at any depth, is protected as well.
    FOR part IN SELECT t.relid FROM pg_partition_tree(tbl) t
                 WHERE t.relid OPERATOR(pg_catalog.<>) tbl LOOP
        PERFORM tenancy._protect_relation(part, tenant_column);
    END LOOP;

    IF NOT was_listed THEN
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
    IF EXISTS (SELECT FROM pg_partition_ancestors(tbl) a
                 JOIN tenancy.protected_tables p ON p.relid OPERATOR(pg_catalog.=) a.relid
                WHERE a.relid OPERATOR(pg_catalog.<>) tbl) THEN
        RAISE EXCEPTION 'tenancy: % is a partition of a protected table', tbl
            USING ERRCODE = '55000', HINT = 'Unprotect the partitioned table it belongs to.';
    END IF;

    previous := tenancy._ddl_bypass(true);
    FOR r IN SELECT p.relid, p.tenant_column
               FROM pg_partition_tree(tbl) t
               JOIN tenancy.protected_tables p ON p.relid OPERATOR(pg_catalog.=) t.relid
              ORDER BY t.level LOOP
        EXECUTE format('DROP POLICY IF EXISTS tenancy_isolation ON %s', r.relid);
        EXECUTE format('DROP POLICY IF EXISTS tenancy_allow ON %s', r.relid);
        -- Triggers cloned onto partitions go with their parent's.
        FOR trg IN SELECT tgname FROM pg_trigger
                    WHERE tgrelid OPERATOR(pg_catalog.=) r.relid AND NOT tgisinternal
                      AND tgparentid OPERATOR(pg_catalog.=) 0
                      AND tgname OPERATOR(pg_catalog.~~) 'tenancy\_%' LOOP
            EXECUTE format('DROP TRIGGER %I ON %s', trg.tgname, r.relid);
        END LOOP;
        EXECUTE format('ALTER TABLE %s NO FORCE ROW LEVEL SECURITY, DISABLE ROW LEVEL SECURITY, '
                       'ALTER COLUMN %I DROP DEFAULT', r.relid, r.tenant_column);
        DELETE FROM tenancy.protected_tables WHERE relid OPERATOR(pg_catalog.=) r.relid;
    END LOOP;
    PERFORM tenancy._audit('unprotect', NULL, tbl::text, '{}');
    PERFORM tenancy._ddl_bypass(previous);
END
$$;

-- Protect partitions that appeared under a protected partitioned table
-- (CREATE TABLE ... PARTITION OF, ATTACH PARTITION).  Internal.
CREATE FUNCTION tenancy._sync_partitions() RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
    previous boolean := tenancy._ddl_bypass(true);
BEGIN
    FOR r IN SELECT t.relid, p.tenant_column
               FROM tenancy.protected_tables p
               JOIN pg_class c ON c.oid OPERATOR(pg_catalog.=) p.relid AND c.relkind OPERATOR(pg_catalog.=) 'p'
              CROSS JOIN LATERAL pg_partition_tree(p.relid) t
              WHERE NOT EXISTS (SELECT FROM tenancy.protected_tables q
                                 WHERE q.relid OPERATOR(pg_catalog.=) t.relid) LOOP
        PERFORM tenancy._protect_relation(r.relid, r.tenant_column);
    END LOOP;
    PERFORM tenancy._ddl_bypass(previous);
END
$$;

-- Raise 42501 if any protected table lost what protects it: RLS enabled
-- and forced, the restrictive isolation policy, a uuid tenant column, and
-- enabled tenancy_* triggers.  Internal.
CREATE FUNCTION tenancy._check_protected() RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
    problem text;
BEGIN
    FOR r IN SELECT p.relid, p.tenant_column, c.relrowsecurity, c.relforcerowsecurity
               FROM tenancy.protected_tables p
               JOIN pg_class c ON c.oid OPERATOR(pg_catalog.=) p.relid LOOP
        problem := NULL;
        IF NOT r.relrowsecurity THEN
            problem := 'row level security would be disabled';
        ELSIF NOT r.relforcerowsecurity THEN
            problem := 'row level security would no longer be forced';
        ELSIF NOT EXISTS (SELECT FROM pg_attribute a
                           WHERE a.attrelid OPERATOR(pg_catalog.=) r.relid
                             AND a.attname OPERATOR(pg_catalog.=) r.tenant_column
                             AND NOT a.attisdropped
                             AND a.atttypid OPERATOR(pg_catalog.=) 'uuid'::regtype) THEN
            problem := format('tenant column "%s" would be dropped, renamed or retyped', r.tenant_column);
        ELSIF NOT EXISTS (SELECT FROM pg_policy pol
                           WHERE pol.polrelid OPERATOR(pg_catalog.=) r.relid
                             AND pol.polname OPERATOR(pg_catalog.=) 'tenancy_isolation'
                             AND NOT pol.polpermissive
                             AND pol.polcmd OPERATOR(pg_catalog.=) '*'
                             AND pol.polroles OPERATOR(pg_catalog.=) '{0}'::oid[]) THEN
            problem := 'policy tenancy_isolation would be dropped or changed';
        ELSIF NOT EXISTS (SELECT FROM pg_trigger t
                           WHERE t.tgrelid OPERATOR(pg_catalog.=) r.relid
                             AND t.tgname OPERATOR(pg_catalog.=) 'tenancy_guard') THEN
            problem := 'trigger tenancy_guard would be dropped';
        ELSIF EXISTS (SELECT FROM pg_trigger t
                       WHERE t.tgrelid OPERATOR(pg_catalog.=) r.relid
                         AND t.tgname OPERATOR(pg_catalog.~~) 'tenancy\_%'
                         AND t.tgenabled OPERATOR(pg_catalog.=) 'D') THEN
            problem := 'a tenancy trigger would be disabled';
        END IF;
        IF problem IS NOT NULL THEN
            RAISE EXCEPTION 'tenancy: % is protected', r.relid
                USING ERRCODE = '42501',
                      DETAIL = format('This command would weaken the isolation of %s: %s.', r.relid, problem),
                      HINT = 'A member of tenancy_admin can call tenancy.unprotect() first.';
        END IF;
    END LOOP;
END
$$;

-- ddl_command_end: protect new partitions of protected tables, apply
-- tenancy.auto_protect, refuse ALTER POLICY on an isolation policy, and
-- check that no protected table was weakened.
CREATE FUNCTION tenancy._on_ddl_command_end() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cmd record;
BEGIN
    IF tenancy._ddl_bypass(NULL) THEN
        RETURN;
    END IF;
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
        IF cmd.command_tag IN ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO')
           AND cmd.classid OPERATOR(pg_catalog.=) 'pg_class'::regclass
           AND cmd.objsubid OPERATOR(pg_catalog.=) 0
           AND pg_catalog.current_setting('tenancy.auto_protect')::boolean
           AND EXISTS (SELECT FROM pg_class c JOIN pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) c.oid
                        WHERE c.oid OPERATOR(pg_catalog.=) cmd.objid
                          AND c.relkind IN ('r', 'p') AND NOT c.relispartition
                          AND c.relpersistence OPERATOR(pg_catalog.<>) 't'
                          AND a.attname OPERATOR(pg_catalog.=) 'tenant_id' AND NOT a.attisdropped
                          AND a.atttypid OPERATOR(pg_catalog.=) 'uuid'::regtype) THEN
            PERFORM tenancy.protect(cmd.objid::regclass);
        END IF;
    END LOOP;
    PERFORM tenancy._sync_partitions();
    PERFORM tenancy._check_protected();
END
$$;

-- sql_drop: a dropped table leaves the list.
CREATE FUNCTION tenancy._on_sql_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM tenancy.protected_tables p
     USING pg_event_trigger_dropped_objects() d
     WHERE d.classid OPERATOR(pg_catalog.=) 'pg_class'::regclass
       AND d.objsubid OPERATOR(pg_catalog.=) 0
       AND d.objid OPERATOR(pg_catalog.=) p.relid::oid;
END
$$;

CREATE EVENT TRIGGER tenancy_ddl_guard ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE', 'CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO',
                 'ALTER POLICY', 'DROP POLICY', 'DROP TRIGGER', 'ALTER TRIGGER',
                 'DROP INDEX', 'CREATE POLICY')
    EXECUTE FUNCTION tenancy._on_ddl_command_end();

CREATE EVENT TRIGGER tenancy_drop_guard ON sql_drop
    EXECUTE FUNCTION tenancy._on_sql_drop();

--------------------------------------------------------------------------
-- 1. Purge (needs protected tables)
--------------------------------------------------------------------------

CREATE FUNCTION tenancy.purge_tenant(tenant text) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    tid uuid := tenancy.tenant_id(tenant);
    st text := tenancy.tenant_status(tenant);
    r record;
    n bigint;
    total bigint := 0;
BEGIN
    IF st OPERATOR(pg_catalog.<>) 'deleted' THEN
        RAISE EXCEPTION 'tenancy: only a deleted tenant can be purged'
            USING ERRCODE = '55000', DETAIL = format('Tenant %s is %s.', tenant, st),
                  HINT = 'Call tenancy.delete_tenant() first.';
    END IF;
    -- Leaf tables only: a partitioned table's rows are its partitions'.
    FOR r IN SELECT p.relid, p.tenant_column
               FROM tenancy.protected_tables p
               JOIN pg_class c ON c.oid OPERATOR(pg_catalog.=) p.relid
              WHERE c.relkind OPERATOR(pg_catalog.=) 'r' LOOP
        EXECUTE format('DELETE FROM ONLY %s WHERE %I OPERATOR(pg_catalog.=) $1', r.relid, r.tenant_column)
            USING tid;
        GET DIAGNOSTICS n = ROW_COUNT;
        total := total + n;
    END LOOP;
    PERFORM tenancy._purge_tenant_state(tid);
    DELETE FROM tenancy.tenants WHERE id OPERATOR(pg_catalog.=) tid;
    PERFORM tenancy._audit('tenant.purge', tid, tenant, jsonb_build_object('rows', total));
    RETURN total;
END
$$;

--------------------------------------------------------------------------
-- 4. Plans, quotas, rate limits
--------------------------------------------------------------------------

CREATE TABLE tenancy.plan_quotas (
    plan        text NOT NULL REFERENCES tenancy.plans (name) ON UPDATE CASCADE ON DELETE CASCADE,
    resource    text NOT NULL,
    quota_limit bigint,
    period      text,
    PRIMARY KEY (plan, resource),
    CONSTRAINT plan_quotas_limit_check CHECK (quota_limit >= 0),
    CONSTRAINT plan_quotas_period_check CHECK (period IN ('minute', 'hour', 'day', 'month'))
);
SELECT pg_catalog.pg_extension_config_dump('tenancy.plan_quotas', '');

CREATE TABLE tenancy.tenant_quotas (
    tenant_id   uuid NOT NULL REFERENCES tenancy.tenants (id) ON DELETE CASCADE,
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

-- Raise TQ001 if the tenant may not take amount more of resource.  Used by
-- other areas (create_api_key for api_keys).  Stub until quotas exist.
CREATE FUNCTION tenancy._require_quota(tid uuid, resource text, amount bigint) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
END
$$;

-- (end of section 4)

--------------------------------------------------------------------------
-- 5. API keys
--------------------------------------------------------------------------

CREATE TABLE tenancy.api_keys (
    id           uuid NOT NULL DEFAULT pg_catalog.gen_random_uuid() PRIMARY KEY,
    tenant_id    uuid NOT NULL REFERENCES tenancy.tenants (id) ON DELETE CASCADE,
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
    CONSTRAINT api_keys_key_hash_key UNIQUE (key_hash)
);
CREATE INDEX api_keys_tenant_idx ON tenancy.api_keys (tenant_id);
SELECT pg_catalog.pg_extension_config_dump('tenancy.api_keys', '');

-- Authentication failures by cause, for tenancy.stats.  Stub until keys
-- exist.
CREATE FUNCTION tenancy._auth_failures() RETURNS TABLE (cause text, failures bigint)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT NULL::text, NULL::bigint WHERE false;
$$;

-- (end of section 5)

--------------------------------------------------------------------------
-- 6. Usage metering and rollups
--------------------------------------------------------------------------

-- (end of section 6)

--------------------------------------------------------------------------
-- 7. Audit and observability
--------------------------------------------------------------------------

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

-- (end of quota grants)

-- API keys.

-- (end of API key grants)

-- Usage, audit and stats.

-- (end of usage grants)
