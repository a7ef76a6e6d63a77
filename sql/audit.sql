-- The audit log (append-only, retention), run_maintenance (expiry, purge),
-- schedule_maintenance with pg_cron, and tenancy.stats.
SET client_min_messages = warning;
SET TimeZone = 'UTC';
SET DateStyle = 'ISO, YMD';
\set SHOW_CONTEXT never

CREATE FUNCTION pg_temp.err(sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE sql;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END
$$;

CREATE ROLE regress_audit_plain;
CREATE ROLE regress_audit_admin IN ROLE tenancy_admin;
CREATE ROLE regress_audit_monitor IN ROLE pg_monitor;
GRANT CREATE ON SCHEMA public TO regress_audit_admin;

-- Every administrative change leaves one row, with the login as actor.
SELECT coalesce(max(id), 0) AS start_id FROM tenancy.audit_log \gset
SET ROLE regress_audit_admin;
SELECT tenancy.create_tenant('audit-a', plan => 'pro') IS NOT NULL;
SELECT tenancy.update_tenant('audit-a', name => 'Audit A');
SELECT tenancy.suspend_tenant('audit-a', 'unpaid');
SELECT tenancy.activate_tenant('audit-a');
SELECT tenancy.delete_tenant('audit-a');
SELECT tenancy.purge_tenant('audit-a');
CREATE TABLE public.audit_items (id int, tenant_id uuid);
SELECT tenancy.protect('public.audit_items');
SELECT tenancy.unprotect('public.audit_items');
DROP TABLE public.audit_items;
RESET ROLE;
SELECT action, target, actor = session_user AS by_login, details
  FROM tenancy.audit_log WHERE id > :start_id ORDER BY id;

-- Append-only: UPDATE, DELETE and TRUNCATE fail, for superusers too and
-- with replication triggers off.
SELECT pg_temp.err($$UPDATE tenancy.audit_log SET actor = 'someone else'$$);
SELECT pg_temp.err($$DELETE FROM tenancy.audit_log$$);
SELECT pg_temp.err($$TRUNCATE tenancy.audit_log$$);
SET session_replication_role = replica;
SELECT pg_temp.err($$DELETE FROM tenancy.audit_log$$);
RESET session_replication_role;
-- Nor can its owner, or any superuser, switch the guard off (42501):
-- disable, replicate-only, drop, rename or replace its triggers.
SELECT c, pg_temp.err(c) FROM unnest(ARRAY[
    'ALTER TABLE tenancy.audit_log DISABLE TRIGGER audit_log_append_only',
    'ALTER TABLE tenancy.audit_log DISABLE TRIGGER audit_log_no_truncate',
    'ALTER TABLE tenancy.audit_log DISABLE TRIGGER ALL',
    'ALTER TABLE tenancy.audit_log DISABLE TRIGGER USER',
    'ALTER TABLE tenancy.audit_log ENABLE REPLICA TRIGGER audit_log_append_only',
    'ALTER TABLE tenancy.audit_log ENABLE TRIGGER audit_log_no_truncate',
    'DROP TRIGGER audit_log_append_only ON tenancy.audit_log',
    'DROP TRIGGER audit_log_no_truncate ON tenancy.audit_log',
    'ALTER TRIGGER audit_log_append_only ON tenancy.audit_log RENAME TO audit_log_off',
    'CREATE OR REPLACE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON tenancy.audit_log '
        'FOR EACH ROW WHEN (false) EXECUTE FUNCTION tenancy._audit_guard()',
    'CREATE OR REPLACE TRIGGER audit_log_append_only BEFORE UPDATE OF details ON tenancy.audit_log '
        'FOR EACH ROW EXECUTE FUNCTION tenancy._audit_guard()'
]) c;
SELECT tgname, tgenabled, tgtype FROM pg_trigger
 WHERE tgrelid = 'tenancy.audit_log'::regclass ORDER BY tgname;
-- Nor any other DDL on the table, even what would leave the guard as it
-- was (42501, before the command runs): its columns, its name or schema,
-- a trigger or rule that would swallow its INSERTs, policies, partitions.
CREATE TABLE public.audit_parts (id bigint) PARTITION BY LIST (id);
SELECT c, pg_temp.err(c) FROM unnest(ARRAY[
    'ALTER TABLE tenancy.audit_log DROP COLUMN details',
    'ALTER TABLE tenancy.audit_log RENAME TO al2',
    'ALTER TABLE tenancy.audit_log RENAME COLUMN actor TO who',
    'ALTER TABLE tenancy.audit_log RENAME CONSTRAINT audit_log_pkey TO p',
    'ALTER TABLE tenancy.audit_log SET SCHEMA public',
    'ALTER TABLE tenancy.audit_log ALTER COLUMN details TYPE text',
    'ALTER TABLE tenancy.audit_log ALTER COLUMN action DROP NOT NULL',
    'ALTER TABLE tenancy.audit_log ADD COLUMN note text',
    'ALTER TABLE tenancy.audit_log OWNER TO regress_audit_admin',
    'ALTER TABLE tenancy.audit_log ENABLE ROW LEVEL SECURITY',
    'ALTER TABLE tenancy.audit_log SET UNLOGGED',
    'ALTER TABLE tenancy.audit_log ENABLE ALWAYS TRIGGER audit_log_append_only',
    'ALTER INDEX tenancy.audit_log RENAME TO al3',
    'ALTER TABLE public.audit_parts ATTACH PARTITION tenancy.audit_log FOR VALUES IN (1)',
    'CREATE TRIGGER swallow BEFORE INSERT ON tenancy.audit_log FOR EACH ROW EXECUTE FUNCTION tenancy._audit_guard()',
    'CREATE RULE swallow AS ON INSERT TO tenancy.audit_log DO INSTEAD NOTHING',
    'CREATE POLICY hide ON tenancy.audit_log USING (false)',
    'DROP TRIGGER IF EXISTS swallow ON tenancy.audit_log',
    'DROP RULE IF EXISTS swallow ON tenancy.audit_log'
]) c;
DROP TABLE public.audit_parts;
\set VERBOSITY default
ALTER TABLE tenancy.audit_log DISABLE TRIGGER ALL;
ALTER TABLE tenancy.audit_log RENAME TO al2;
\set VERBOSITY terse
-- All as it was.
SELECT c.oid = 'tenancy.audit_log'::regclass AS same_table, c.relpersistence, c.relrowsecurity,
       pg_get_userbyid(c.relowner) = (SELECT pg_get_userbyid(extowner) FROM pg_extension
                                       WHERE extname = 'tenancy') AS owned_by_extension_owner,
       (SELECT string_agg(attname, ',' ORDER BY attnum) FROM pg_attribute
         WHERE attrelid = c.oid AND attnum > 0 AND NOT attisdropped) AS columns,
       (SELECT count(*) FROM pg_rewrite WHERE ev_class = c.oid) AS rules,
       (SELECT count(*) FROM pg_policy WHERE polrelid = c.oid) AS policies,
       c.relispartition
  FROM pg_class c WHERE c.relname = 'audit_log'
   AND c.relnamespace = 'tenancy'::regnamespace;
SELECT tgname, tgenabled, tgtype FROM pg_trigger
 WHERE tgrelid = 'tenancy.audit_log'::regclass ORDER BY tgname;
SELECT pg_temp.err($$DELETE FROM tenancy.audit_log$$);
\set VERBOSITY default
DELETE FROM tenancy.audit_log WHERE action = 'tenant.create';
\set VERBOSITY terse
-- Indexes, statistics and comments are the administrator's.
CREATE INDEX audit_log_action_idx ON tenancy.audit_log (action);
DROP INDEX tenancy.audit_log_action_idx;
-- Nobody but superusers and tenancy_admin reads it; the purge function is
-- no one's to call.
SET ROLE regress_audit_plain;
SELECT pg_temp.err($$SELECT count(*) FROM tenancy.audit_log$$);
RESET ROLE;
SET ROLE regress_audit_admin;
SELECT pg_temp.err($$SELECT count(*) > 0 FROM tenancy.audit_log$$);
SELECT pg_temp.err($$SELECT tenancy._audit_purge(now())$$);
SELECT pg_temp.err($$INSERT INTO tenancy.audit_log (action) VALUES ('forged')$$);
RESET ROLE;

-- The purge always says what it removed, also when a superuser calls it
-- directly: the log is never left without a trace of it.
CREATE TEMP TABLE audit_before AS
SELECT count(*) AS n, min(at) AS oldest, max(at) AS newest FROM tenancy.audit_log;
SELECT tenancy._audit_purge('infinity') = n AS purged_all FROM audit_before;
SELECT a.actor = session_user AS by_login, a.action, a.tenant_id, a.target,
       (a.details ->> 'rows')::bigint = b.n AS rows_counted, a.details ->> 'before' AS before,
       (a.details ->> 'oldest')::timestamptz = b.oldest AS oldest,
       (a.details ->> 'newest')::timestamptz = b.newest AS newest
  FROM tenancy.audit_log a, audit_before b;
-- Nothing older than the cutoff: nothing removed, nothing to say.
SELECT tenancy._audit_purge('-infinity') AS purged_none;
SELECT count(*) AS rows_left FROM tenancy.audit_log;

-- Retention: run_maintenance deletes rows older than
-- tenancy.audit_retention, and says so in the log.
INSERT INTO tenancy.audit_log (at, action, target) VALUES
    (now() - interval '100 days', 'old.action', 'old'),
    (now() - interval '10 days', 'recent.action', 'recent');
SET tenancy.audit_retention = '';
SELECT tenancy.run_maintenance();
SELECT action FROM tenancy.audit_log WHERE action IN ('old.action', 'recent.action') ORDER BY 1;
SET tenancy.audit_retention = '30 days';
SELECT tenancy.run_maintenance();
SELECT action FROM tenancy.audit_log WHERE action IN ('old.action', 'recent.action') ORDER BY 1;
SELECT action, details ->> 'before' = 'infinity' AS the_direct_call_above,
       details ? 'before' AS has_cutoff, (details ->> 'rows')::int >= 1 AS deleted_some
  FROM tenancy.audit_log WHERE action = 'audit.purge' ORDER BY id;
RESET tenancy.audit_retention;
SELECT pg_temp.err($$SET tenancy.audit_retention = 'forever'$$);
SELECT pg_temp.err($$SET tenancy.purge_after = '3 fortnights'$$);
SELECT pg_temp.err($$SET tenancy.purge_after = '-1 day'$$);
SELECT pg_temp.err($$SET tenancy.audit_retention = '1 day ago'$$);

-- Expiry: an active tenant past expires_at is expired (stats, status) and
-- run_maintenance records that once.
SELECT tenancy.create_tenant('audit-exp', expires_at => now() - interval '1 minute') IS NOT NULL;
SELECT tenancy.tenant_status('audit-exp');
SELECT tenancy.run_maintenance();
SELECT tenancy.run_maintenance();
SELECT action, target FROM tenancy.audit_log
 WHERE tenant_id = tenancy.tenant_id('audit-exp') ORDER BY id;
SELECT status FROM tenancy.tenants WHERE slug = 'audit-exp';
-- Extended, then expired again: recorded again.
SELECT tenancy.update_tenant('audit-exp', expires_at => now() - interval '10 seconds');
SELECT tenancy.run_maintenance();
SELECT count(*) AS expiries FROM tenancy.audit_log
 WHERE tenant_id = tenancy.tenant_id('audit-exp') AND action = 'tenant.expire';

-- Purge of deleted tenants after tenancy.purge_after ('' = never).
SELECT tenancy.create_tenant('audit-del') IS NOT NULL;
SELECT tenancy.record_usage('calls', 5, 'audit-del');
SELECT tenancy.delete_tenant('audit-del');
SET tenancy.purge_after = '';
SELECT tenancy.run_maintenance();
SELECT count(*) AS still_there FROM tenancy.tenants WHERE slug = 'audit-del';
SET tenancy.purge_after = '30 days';
SELECT tenancy.run_maintenance();
SELECT count(*) AS still_there FROM tenancy.tenants WHERE slug = 'audit-del';
SET tenancy.purge_after = '0 seconds';
SELECT tenancy.run_maintenance();
SELECT count(*) AS still_there FROM tenancy.tenants WHERE slug = 'audit-del';
SELECT action, target FROM tenancy.audit_log
 WHERE target = 'audit-del' OR details ->> 'slug' = 'audit-del' ORDER BY id;
RESET tenancy.purge_after;
SELECT last_run IS NOT NULL AS ran, last_result ? 'events_folded' AS folded
  FROM tenancy.maintenance_state;
SET ROLE regress_audit_plain;
SELECT pg_temp.err($$SELECT tenancy.run_maintenance()$$);
RESET ROLE;

-- schedule_maintenance: 55000 with a HINT while pg_cron is missing.
\set VERBOSITY default
SELECT tenancy.schedule_maintenance();
\set VERBOSITY terse
SELECT tenancy.unschedule_maintenance();
-- With pg_cron (cron.database_name is this database in the tests): one
-- job, whatever the number of calls; a new schedule replaces the old.
CREATE EXTENSION pg_cron;
SET ROLE regress_audit_admin;
SELECT tenancy.schedule_maintenance();
SELECT tenancy.schedule_maintenance();
RESET ROLE;
SELECT jobname, schedule, command, database = current_database() AS here FROM cron.job;
SELECT tenancy.schedule_maintenance('*/5 * * * *');
SELECT jobname, schedule FROM cron.job;
-- A schedule pg_cron refuses: tenancy's 22023, pg_cron's message in the
-- DETAIL, the syntax in the HINT (which mentions interval schedules only
-- for pg_cron 1.5 and later); the job keeps its schedule.
CREATE FUNCTION pg_temp.err_parts(sql text, OUT state text, OUT message text, OUT detail text,
                                  OUT hint text) LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE sql;
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, message = MESSAGE_TEXT,
                            detail = PG_EXCEPTION_DETAIL, hint = PG_EXCEPTION_HINT;
    detail := regexp_replace(detail, '^pg_cron [^ ]+ ', 'pg_cron <version> ');
    hint := regexp_replace(hint, '; or an interval .*$', '.');
END
$$;
-- pg_cron 1.4 would take the first five of six fields, which tenancy
-- refuses itself.
SELECT e.*
  FROM unnest(ARRAY['garbage', 'every day', '* * * *', '61 * * * *', '*/10 * * * * *']) s,
       LATERAL pg_temp.err_parts(format('SELECT tenancy.schedule_maintenance(%L)', s)) e;
SELECT pg_temp.err($$SELECT tenancy.schedule_maintenance(NULL)$$);
SELECT jobname, schedule FROM cron.job;
SELECT tenancy.schedule_maintenance('@hourly');
SELECT jobname, schedule FROM cron.job;
SELECT tenancy.unschedule_maintenance();
SELECT count(*) AS jobs FROM cron.job;
SELECT tenancy.unschedule_maintenance();
SELECT action, details FROM tenancy.audit_log WHERE action LIKE 'maintenance.%' ORDER BY id;
DROP EXTENSION pg_cron;

-- tenancy.stats: effective statuses, denials (which survive rollbacks).
SELECT tenancy.create_tenant('audit-s1') IS NOT NULL, tenancy.create_tenant('audit-s2') IS NOT NULL;
SELECT tenancy.suspend_tenant('audit-s2');
BEGIN;
SELECT tenancy._usage_record_carried(tenancy.tenant_id('audit-s1'), 'quota_denied:rows:public.t', 2);
SELECT tenancy._usage_record_carried(tenancy.tenant_id('audit-s1'), 'rate_limited:api', 3);
SELECT tenancy._usage_record_carried(tenancy.tenant_id('audit-s1'), 'other', 3);
ROLLBACK;
-- (The shared counters count for the whole server: look at this test's.)
SELECT metric, labels, value FROM tenancy.stats
 WHERE metric IN ('tenancy_tenants', 'tenancy_api_keys_active')
    OR labels ->> 'resource' IN ('rows:public.t', 'api', 'other')
 ORDER BY 1, 2::text COLLATE "C";
-- Quota usage ratios: used / limit; a limit of 0 (health critical) is 1
-- with nothing used and the usage itself (as if the limit were 1) with
-- some, so that an alert on a ratio > 0.9 fires for a blocked resource.
SELECT tenancy.set_tenant_quota('audit-s1', r, 10) FROM unnest(ARRAY['blocked', 'used', 'over', 'one']) r;
SELECT set_config('app.tenant_id', tenancy.tenant_id('audit-s1')::text, false) IS NOT NULL AS context_set;
SELECT tenancy.consume_quota('used', 3), tenancy.consume_quota('over', 5), tenancy.consume_quota('one', 1);
SET app.tenant_id = '';
SELECT tenancy.set_tenant_quota('audit-s1', r, 0) FROM unnest(ARRAY['blocked', 'over', 'one']) r;
SELECT s.labels ->> 'resource' AS resource, q.used, q.quota_limit, q.health, s.value
  FROM tenancy.stats s
  JOIN tenancy.quota_usage('audit-s1') q ON q.resource = s.labels ->> 'resource'
 WHERE s.metric = 'tenancy_quota_usage_ratio' AND s.labels ->> 'tenant' = 'audit-s1'
 ORDER BY 1;
SELECT value > 1.7e9 AS plausible FROM tenancy.stats
 WHERE metric = 'tenancy_maintenance_last_run_timestamp_seconds';
-- Readable by tenancy_admin and pg_monitor, not by others.
SET ROLE regress_audit_monitor;
SELECT count(*) > 0 AS monitor_reads FROM tenancy.stats;
SET ROLE regress_audit_admin;
SELECT count(*) > 0 AS admin_reads FROM tenancy.stats;
SET ROLE regress_audit_plain;
SELECT pg_temp.err($$SELECT * FROM tenancy.stats$$);
SELECT pg_temp.err($$SELECT * FROM tenancy._usage_counters()$$);
RESET ROLE;

-- The usage tables and the audit log are dumped by pg_dump.
SELECT c::regclass AS dumped FROM pg_extension, unnest(extconfig) c
 WHERE extname = 'tenancy'
   AND c::regclass::text IN ('tenancy.usage_events', 'tenancy.usage_rollups', 'tenancy.audit_log')
 ORDER BY 1::text;

RESET client_min_messages;
REVOKE CREATE ON SCHEMA public FROM regress_audit_admin;
DROP ROLE regress_audit_plain;
DROP ROLE regress_audit_admin;
DROP ROLE regress_audit_monitor;
