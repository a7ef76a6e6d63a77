-- Usage metering: record_usage, usage, rollup_usage, the carried (rollback-
-- surviving) records, privileges.
SET client_min_messages = warning;
SET TimeZone = 'UTC';
SET DateStyle = 'ISO, YMD';
\set SHOW_CONTEXT never
-- Write usage at the commit of the transaction that recorded it, so that
-- the raw rows can be read right after; the default (usage waiting in the
-- session for tenancy.usage_flush_delay) is tested at the end.
SET tenancy.usage_flush_delay = 0;

-- err(sql): run a statement and show its SQLSTATE and message.
CREATE FUNCTION pg_temp.err(sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE sql;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END
$$;

-- events(tenant): the raw, not yet folded rows of a tenant.
CREATE FUNCTION pg_temp.events(t text) RETURNS TABLE (resource text, amount bigint)
LANGUAGE sql AS $$
    SELECT e.resource, e.amount FROM tenancy.usage_events e
     WHERE e.tenant_id = tenancy.tenant_id(t) ORDER BY 1, 2;
$$;

CREATE ROLE regress_usage_plain;
CREATE ROLE regress_usage_admin IN ROLE tenancy_admin;
SELECT tenancy.create_tenant('usage-a') IS NOT NULL AS a,
       tenancy.create_tenant('usage-b') IS NOT NULL AS b,
       tenancy.create_tenant('usage-c') IS NOT NULL AS c;

-- Argument checks: 22023.
SELECT pg_temp.err($$SELECT tenancy.record_usage(NULL, 1, 'usage-a')$$);
SELECT pg_temp.err($$SELECT tenancy.record_usage('', 1, 'usage-a')$$);
SELECT pg_temp.err($$SELECT tenancy.record_usage(repeat('r', 256), 1, 'usage-a')$$);
SELECT pg_temp.err($$SELECT tenancy.record_usage(repeat('r', 255), 1, 'usage-a')$$);
SELECT pg_temp.err($$SELECT tenancy.record_usage('api', -1, 'usage-a')$$);
SELECT pg_temp.err($$SELECT tenancy.record_usage('api', NULL, 'usage-a')$$);
SELECT pg_temp.err($$SELECT tenancy.record_usage('api', 1, 'no-such-tenant')$$);
SELECT pg_temp.err($$SELECT * FROM tenancy.usage('usage-a', NULL, NULL, 'week')$$);
-- Nothing of the above was recorded but the valid 255-byte name.
SELECT length(resource), amount FROM pg_temp.events('usage-a');

-- One transaction's sum must fit a bigint: 22003, and nothing is written.
SELECT pg_temp.err($$SELECT tenancy.record_usage('big', 9223372036854775807, 'usage-a'), tenancy.record_usage('big', 1, 'usage-a')$$);
SELECT count(*) AS big FROM pg_temp.events('usage-a') WHERE resource = 'big';

-- No context, no tenant argument: TN001.
SET app.tenant_id = '';
SELECT pg_temp.err($$SELECT tenancy.record_usage('api')$$);

-- 100,000 calls in one transaction write one row.
BEGIN;
SELECT count(tenancy.record_usage('calls', 1, 'usage-a')) FROM generate_series(1, 100000);
SELECT count(*) AS written_before_commit FROM tenancy.usage_events
 WHERE resource = 'calls';
COMMIT;
SELECT * FROM pg_temp.events('usage-a') WHERE resource = 'calls';

-- A rolled-back transaction records nothing; amount 0 records nothing.
BEGIN;
SELECT tenancy.record_usage('calls', 7, 'usage-a');
ROLLBACK;
SELECT tenancy.record_usage('zero', 0, 'usage-a');
SELECT * FROM pg_temp.events('usage-a') WHERE resource IN ('calls', 'zero');

-- Subtransactions: an aborted one drops what it recorded, a committed one
-- keeps it, nested levels merge into their parents.
DO $$
BEGIN
    PERFORM tenancy.record_usage('sub', 1, 'usage-b');
    BEGIN
        PERFORM tenancy.record_usage('sub', 10, 'usage-b');
        PERFORM tenancy.record_usage('sub-only-aborted', 10, 'usage-b');
        RAISE EXCEPTION 'roll back this block';
    EXCEPTION WHEN raise_exception THEN NULL;
    END;
    BEGIN
        PERFORM tenancy.record_usage('sub', 100, 'usage-b');
        BEGIN
            PERFORM tenancy.record_usage('sub', 1000, 'usage-b');
        EXCEPTION WHEN OTHERS THEN NULL;
        END;
        BEGIN
            PERFORM tenancy.record_usage('sub', 10000, 'usage-b');
            PERFORM 1 / 0;
        EXCEPTION WHEN division_by_zero THEN NULL;
        END;
    EXCEPTION WHEN OTHERS THEN NULL;
    END;
END
$$;
SELECT * FROM pg_temp.events('usage-b');

-- SAVEPOINT / ROLLBACK TO as well.
BEGIN;
SELECT tenancy.record_usage('savepoint', 1, 'usage-b');
SAVEPOINT s1;
SELECT tenancy.record_usage('savepoint', 20, 'usage-b');
ROLLBACK TO SAVEPOINT s1;
SAVEPOINT s2;
SELECT tenancy.record_usage('savepoint', 300, 'usage-b');
RELEASE SAVEPOINT s2;
COMMIT;
SELECT * FROM pg_temp.events('usage-b') WHERE resource = 'savepoint';

-- usage() includes what the transaction would commit now, also while a
-- subtransaction is open: its own records of every live level, none of a
-- level rolled back.
CREATE FUNCTION pg_temp.own(r text) RETURNS bigint LANGUAGE sql AS $$
    SELECT coalesce(sum(amount), 0)::bigint FROM tenancy.usage('usage-b', NULL, NULL) WHERE resource = r;
$$;
BEGIN;
SELECT tenancy.record_usage('own-sub', 3, 'usage-b');
SAVEPOINT a;
SELECT pg_temp.own('own-sub') AS savepoint_open;
SELECT 1;
ROLLBACK TO SAVEPOINT a;
SELECT pg_temp.own('own-sub') AS after_rollback_to;
SELECT tenancy.record_usage('own-sub', 20, 'usage-b');
SELECT pg_temp.own('own-sub') AS recorded_in_savepoint;
SAVEPOINT b;
SELECT tenancy.record_usage('own-sub', 400, 'usage-b');
SAVEPOINT c;
SELECT tenancy.record_usage('own-sub', 5000, 'usage-b');
SELECT pg_temp.own('own-sub') AS nested;
ROLLBACK TO SAVEPOINT c;
SELECT pg_temp.own('own-sub') AS nested_rolled_back;
RELEASE SAVEPOINT b;
SELECT pg_temp.own('own-sub') AS after_release;
ROLLBACK TO SAVEPOINT a;
SELECT pg_temp.own('own-sub') AS outer_rolled_back;
RELEASE SAVEPOINT a;
SELECT pg_temp.own('own-sub') AS top_level;
SAVEPOINT d;
SELECT tenancy.record_usage('own-sub', 60000, 'usage-b');
RELEASE SAVEPOINT d;
SELECT pg_temp.own('own-sub') AS released;
COMMIT;
SELECT * FROM pg_temp.events('usage-b') WHERE resource = 'own-sub';
-- psql's ON_ERROR_ROLLBACK (like drivers' automatic savepoints) runs every
-- statement of a transaction in a subtransaction of its own.
\set ON_ERROR_ROLLBACK on
BEGIN;
SELECT tenancy.record_usage('own-auto', 7, 'usage-b');
SELECT pg_temp.own('own-auto') AS auto_savepoint;
SELECT 1 / 0;
SELECT tenancy.record_usage('own-auto', 80, 'usage-b');
SELECT pg_temp.own('own-auto') AS after_failed_statement;
ROLLBACK;
\set ON_ERROR_ROLLBACK off
SELECT pg_temp.own('own-auto') AS rolled_back;
-- In a PL/pgSQL block with an EXCEPTION clause (a subtransaction).
SET client_min_messages = notice;
DO $$
DECLARE
    n bigint;
BEGIN
    PERFORM tenancy.record_usage('own-block', 9, 'usage-b');
    BEGIN
        PERFORM tenancy.record_usage('own-block', 90, 'usage-b');
        n := pg_temp.own('own-block');
        RAISE NOTICE 'inside the block: %', n;
        RAISE EXCEPTION 'roll back this block';
    EXCEPTION WHEN raise_exception THEN
        RAISE NOTICE 'after the block: %', pg_temp.own('own-block');
    END;
END
$$;
SET client_min_messages = warning;

-- A read-only transaction cannot write: its records are written by the
-- session's next read-write commit.
BEGIN READ ONLY;
SELECT tenancy.record_usage('read-only', 5, 'usage-b');
COMMIT;
SELECT count(*) AS after_read_only FROM pg_temp.events('usage-b') WHERE resource = 'read-only';
SELECT 1 AS any_read_write_transaction;
SELECT * FROM pg_temp.events('usage-b') WHERE resource = 'read-only';

-- Records that survive the rollback of their transaction (denial meters).
BEGIN;
SELECT tenancy._usage_record_carried(tenancy.tenant_id('usage-b'), 'quota_denied:calls', 1);
SELECT tenancy._usage_record_carried(tenancy.tenant_id('usage-b'), 'quota_denied:calls', 2);
ROLLBACK;
-- usage() writes them first, so they are there at once.
SELECT resource, amount FROM tenancy.usage('usage-b', NULL, NULL) WHERE resource LIKE 'quota%';
-- A transaction that wrote them and rolled back carries them on.
BEGIN;
SELECT tenancy._usage_record_carried(tenancy.tenant_id('usage-b'), 'rate_limited:calls', 4);
SELECT resource, amount FROM tenancy.usage('usage-b', NULL, NULL) WHERE resource LIKE 'rate%';
ROLLBACK;
SELECT * FROM pg_temp.events('usage-b') WHERE resource LIKE 'rate%';
SELECT 1 AS next_commit;
SELECT * FROM pg_temp.events('usage-b') WHERE resource LIKE 'rate%';

-- usage(): periods in UTC, rollups and unfolded events alike.  Events at
-- fixed times for tenant usage-c.
INSERT INTO tenancy.usage_events (tenant_id, resource, at, amount)
SELECT tenancy.tenant_id('usage-c'), r, at::timestamptz, n
  FROM (VALUES ('req', '2024-01-31 22:10+00', 1),
               ('req', '2024-01-31 23:50+00', 2),
               ('req', '2024-02-01 00:05+00', 4),
               ('req', '2024-02-01 00:55+00', 8),
               ('req', '2024-02-02 12:00+00', 16),
               ('bytes', '2024-02-01 00:30+00', 1000)) AS v (r, at, n);

CREATE TEMP TABLE before_rollup AS
SELECT g, u.* FROM unnest(ARRAY['hour', 'day', 'month']) g,
       LATERAL tenancy.usage('usage-c', '2024-01-31 23:00+00', '2024-02-02 00:00+00', g) u;
SELECT * FROM before_rollup ORDER BY 1, 2, 3;
-- The granularity defaults to day; NULL bounds are open.
SELECT * FROM tenancy.usage('usage-c', NULL, NULL);
SELECT * FROM tenancy.usage('usage-c', '2024-02-01 00:00+00', '2024-02-01 00:00+00', 'hour');
-- Every period that overlaps [since, until): the hour of a one-minute window.
SELECT * FROM tenancy.usage('usage-c', '2024-02-01 00:30+00', '2024-02-01 00:31+00', 'hour');
-- An empty or reversed window (since >= until) overlaps no period.
SELECT * FROM tenancy.usage('usage-c', '2024-02-01 00:30+00', '2024-02-01 00:30+00', 'hour');
SELECT * FROM tenancy.usage('usage-c', '2024-02-01 12:00+00', '2024-02-01 07:00+00', 'day');
SELECT * FROM tenancy.usage('usage-c', '2024-02-02 00:00+00', '2024-01-01 00:00+00', 'month');
SELECT * FROM tenancy.usage('usage-c', 'infinity', 'infinity');

-- rollup_usage() folds every event once and returns how many it folded.
SELECT tenancy.rollup_usage() > 0 AS folded_some;
SELECT count(*) AS left_unfolded FROM tenancy.usage_events;
SELECT tenancy.rollup_usage() AS folded_again;
SELECT granularity, period_start, resource, amount FROM tenancy.usage_rollups
 WHERE tenant_id = tenancy.tenant_id('usage-c') ORDER BY 1, 2, 3;
-- The same answer as before the rollup.
SELECT g, u.* FROM unnest(ARRAY['hour', 'day', 'month']) g,
       LATERAL tenancy.usage('usage-c', '2024-01-31 23:00+00', '2024-02-02 00:00+00', g) u
EXCEPT
SELECT * FROM before_rollup;
SELECT count(*) FROM before_rollup;

-- New events for a folded period add to its rollup, and usage() sums both.
INSERT INTO tenancy.usage_events (tenant_id, resource, at, amount)
VALUES (tenancy.tenant_id('usage-c'), 'req', '2024-02-01 00:10+00', 32);
SELECT * FROM tenancy.usage('usage-c', '2024-02-01', '2024-02-02', 'day');
SELECT tenancy.rollup_usage() AS folded;
SELECT * FROM tenancy.usage('usage-c', '2024-02-01', '2024-02-02', 'day');
SELECT amount FROM tenancy.usage_rollups
 WHERE tenant_id = tenancy.tenant_id('usage-c') AND granularity = 'hour'
   AND period_start = '2024-02-01 00:00+00' AND resource = 'req';

-- Tenant sessions: their own usage only, with or without naming it.
SET app.tenant_id = '';
SELECT set_config('app.tenant_id', tenancy.tenant_id('usage-a')::text, false) IS NOT NULL AS context_set;
SET ROLE regress_usage_plain;
SELECT tenancy.record_usage('own', 2);
SELECT tenancy.record_usage('own', 3, 'usage-a');
SELECT resource, amount FROM tenancy.usage(NULL, NULL, NULL) WHERE resource = 'own';
SELECT resource, amount FROM tenancy.usage('usage-a', NULL, NULL) WHERE resource = 'own';
-- Another tenant, existing or not: the same 42501.
SELECT pg_temp.err($$SELECT tenancy.record_usage('own', 1, 'usage-b')$$);
SELECT pg_temp.err($$SELECT tenancy.record_usage('own', 1, 'no-such-tenant')$$);
SELECT pg_temp.err($$SELECT * FROM tenancy.usage('usage-b', NULL, NULL)$$);
SELECT pg_temp.err($$SELECT * FROM tenancy.usage('no-such-tenant', NULL, NULL)$$);
-- Administration and the raw tables are not theirs.
SELECT pg_temp.err($$SELECT tenancy.rollup_usage()$$);
SELECT pg_temp.err($$SELECT * FROM tenancy.usage_events$$);
SELECT pg_temp.err($$SELECT * FROM tenancy.usage_rollups$$);
SELECT pg_temp.err($$SELECT tenancy._usage_record_carried(tenancy.current_tenant_id(), 'x', 1)$$);
RESET ROLE;
-- A session bound by an API key reads its usage only with the admin
-- permission (the binding is set by hand here, as authenticate() would).
INSERT INTO tenancy.api_keys (id, tenant_id, name, prefix, key_hash, permissions) VALUES
    ('00000000-0000-4000-8000-00000000000a', tenancy.tenant_id('usage-a'), 'reader', 'tk_Reader00',
     sha256('regress reader key'), '{read}'),
    ('00000000-0000-4000-8000-00000000000b', tenancy.tenant_id('usage-a'), 'admin', 'tk_Admin000',
     sha256('regress admin key'), '{read,admin}');
SELECT set_config('tenancy.session_binding',
                  tenancy.tenant_id('usage-a') || ':00000000-0000-4000-8000-00000000000a', false) IS NOT NULL AS bound;
SET ROLE regress_usage_plain;
SELECT pg_temp.err($$SELECT * FROM tenancy.usage(NULL, NULL, NULL)$$);
SELECT tenancy.record_usage('bound', 1);
RESET ROLE;
SELECT set_config('tenancy.session_binding',
                  tenancy.tenant_id('usage-a') || ':00000000-0000-4000-8000-00000000000b', false) IS NOT NULL AS bound;
SET ROLE regress_usage_plain;
SELECT resource, amount FROM tenancy.usage(NULL, NULL, NULL) WHERE resource = 'bound';
RESET ROLE;
SET tenancy.session_binding = '';
DELETE FROM tenancy.api_keys WHERE tenant_id = tenancy.tenant_id('usage-a');
SET app.tenant_id = '';

-- A suspended tenant's session records nothing (TN003); an admin still can.
SELECT tenancy.suspend_tenant('usage-b');
SELECT set_config('app.tenant_id', tenancy.tenant_id('usage-b')::text, false) IS NOT NULL AS context_set;
SELECT pg_temp.err($$SELECT tenancy.record_usage('after-suspend')$$);
SET app.tenant_id = '';
SET ROLE regress_usage_admin;
SELECT tenancy.record_usage('after-suspend', 1, 'usage-b');
SELECT tenancy.rollup_usage() >= 1 AS admin_may_roll_up;
SELECT resource, amount FROM tenancy.usage('usage-b', NULL, NULL) WHERE resource = 'after-suspend';
RESET ROLE;

-- Purging a tenant removes its usage.
SELECT tenancy.delete_tenant('usage-c');
SELECT tenancy.purge_tenant('usage-c');
SELECT count(*) AS rollups_left FROM tenancy.usage_rollups r
 WHERE NOT EXISTS (SELECT FROM tenancy.tenants t WHERE t.id = r.tenant_id);

-- The default: usage waits in the session and is written by a commit at
-- least tenancy.usage_flush_delay later (or by usage(), rollup_usage(), the
-- end of the session).  Until then usage() of every session sees it, from
-- shared memory; a rollback still drops it.
RESET tenancy.usage_flush_delay;
SHOW tenancy.usage_flush_delay;
SELECT tenancy.record_usage('deferred', 5, 'usage-a');
SELECT tenancy.record_usage('deferred', 7, 'usage-b');
BEGIN;
SELECT tenancy.record_usage('deferred', 100, 'usage-a');
ROLLBACK;
SELECT tenancy._usage_record_carried(tenancy.tenant_id('usage-a'), 'quota_denied:deferred', 1);
SELECT count(*) AS written_yet FROM tenancy.usage_events WHERE resource LIKE '%deferred';
-- A read-only transaction cannot write them: usage() reads shared memory.
BEGIN READ ONLY;
SELECT resource, amount FROM tenancy.usage('usage-a', NULL, NULL, 'hour') WHERE resource LIKE '%deferred' ORDER BY 1;
SELECT resource, amount FROM tenancy.usage('usage-b', NULL, NULL, 'hour') WHERE resource LIKE '%deferred' ORDER BY 1;
COMMIT;
-- The first commit after the delay writes them, in this transaction.
SET tenancy.usage_flush_delay = '100ms';
SELECT pg_sleep(0.2);
SELECT 1 AS a_commit_after_the_delay;
SELECT t.slug, e.resource, e.amount FROM tenancy.usage_events e JOIN tenancy.tenants t ON t.id = e.tenant_id
 WHERE e.resource LIKE '%deferred' ORDER BY 1, 2;
-- Written, they left shared memory: counted once.
BEGIN READ ONLY;
SELECT resource, amount FROM tenancy.usage('usage-a', NULL, NULL, 'month') WHERE resource LIKE '%deferred' ORDER BY 1;
COMMIT;
-- A write that rolls back gives them back to shared memory, and to the
-- next commit.
SET tenancy.usage_flush_delay = 0;
SELECT tenancy.record_usage('deferred-2', 11, 'usage-a');
RESET tenancy.usage_flush_delay;
SELECT tenancy.record_usage('deferred-3', 13, 'usage-a');
BEGIN;
SELECT tenancy._usage_flush();
SELECT count(*) AS in_flight FROM tenancy.usage_events WHERE resource = 'deferred-3';
ROLLBACK;
BEGIN READ ONLY;
SELECT resource, amount FROM tenancy.usage('usage-a', NULL, NULL) WHERE resource LIKE 'deferred-%' ORDER BY 1;
COMMIT;
SELECT tenancy.rollup_usage() >= 2 AS rollup_writes_this_session_first;
SELECT resource, amount FROM tenancy.usage_rollups
 WHERE tenant_id = tenancy.tenant_id('usage-a') AND granularity = 'month' AND resource LIKE 'deferred%' ORDER BY 1;
SELECT count(*) AS unfolded FROM tenancy.usage_events WHERE resource LIKE 'deferred%';
-- A commit with more distinct sums than shared memory has room for
-- (16,384 per server, less a margin) writes them itself.
SELECT count(tenancy.record_usage('many-' || g, 1, 'usage-a')) FROM generate_series(1, 16000) g;
SELECT count(*) AS written_by_their_commit, sum(amount) FROM tenancy.usage_events WHERE resource LIKE 'many-%';
SET tenancy.usage_flush_delay = 0;

-- Totals saturate at the bigint maximum, 9223372036854775807, instead of
-- overflowing: a tenant's session records the maximum in two transactions
-- (two raw rows), and usage(), rollup_usage() and run_maintenance() still
-- work, for every tenant.
SELECT tenancy.rollup_usage() >= 0 AS nothing_left_unfolded;
SELECT set_config('app.tenant_id', tenancy.tenant_id('usage-a')::text, false) IS NOT NULL AS context_set;
SET ROLE regress_usage_plain;
SELECT tenancy.record_usage('boom', 9223372036854775807);
SELECT tenancy.record_usage('boom', 9223372036854775807);
SELECT resource, amount FROM tenancy.usage(NULL, NULL, NULL, 'month') WHERE resource = 'boom';
RESET ROLE;
SELECT * FROM pg_temp.events('usage-a') WHERE resource = 'boom';
SELECT tenancy.record_usage('after-boom', 1, 'usage-b');
SELECT tenancy.rollup_usage() AS folded;
SELECT DISTINCT granularity, amount FROM tenancy.usage_rollups
 WHERE resource IN ('boom', 'after-boom') ORDER BY 1, 2;
-- A rollup at the maximum stays there: in usage() (rollup plus an
-- unfolded event) and when maintenance folds more into it.
SELECT tenancy.record_usage('boom', 1, 'usage-a');
SELECT resource, amount FROM tenancy.usage('usage-a', NULL, NULL, 'month') WHERE resource = 'boom';
SELECT tenancy.run_maintenance();
SELECT last_result->'events_folded' AS events_folded FROM tenancy.maintenance_state;
SELECT DISTINCT granularity, amount FROM tenancy.usage_rollups WHERE resource = 'boom' ORDER BY 1;

-- Waiting sums saturate too: a tenant's committed usage waiting in shared
-- memory is not wrapped negative (and dropped) by a huge later record.
SET tenancy.usage_flush_delay = '60s';
SET ROLE regress_usage_plain;
SELECT tenancy.record_usage('wrap', 100);
SELECT tenancy.record_usage('wrap', 9223372036854775807);
RESET ROLE;
SELECT count(*) AS written_yet FROM tenancy.usage_events WHERE resource = 'wrap';
SELECT resource, amount FROM tenancy.usage('usage-a', NULL, NULL, 'month') WHERE resource = 'wrap';
SELECT tenancy.rollup_usage() > 0 AS folded;
SELECT DISTINCT granularity, amount FROM tenancy.usage_rollups WHERE resource = 'wrap' ORDER BY 1;
SET app.tenant_id = '';

-- rollup_usage() writes the waiting sums of every session in its own
-- transaction: that transaction cannot be prepared, since a ROLLBACK
-- PREPARED could not give them back (0A000); they wait again.
SELECT tenancy.record_usage('prepared-rollup', 5, 'usage-a');
BEGIN;
SELECT tenancy.rollup_usage() >= 1 AS folded;
PREPARE TRANSACTION 'regress_usage_rollup';
ROLLBACK PREPARED 'regress_usage_rollup';
SELECT resource, amount FROM tenancy.usage('usage-a', NULL, NULL, 'month') WHERE resource = 'prepared-rollup';
-- A prepared transaction's own records are written in it: they count after
-- COMMIT PREPARED, not after ROLLBACK PREPARED.
BEGIN;
SELECT tenancy.record_usage('prepared-own', 3, 'usage-a');
PREPARE TRANSACTION 'regress_usage_own_1';
BEGIN;
SELECT tenancy.record_usage('prepared-own', 40, 'usage-a');
PREPARE TRANSACTION 'regress_usage_own_2';
SELECT count(*) AS counted_while_prepared FROM tenancy.usage('usage-a', NULL, NULL, 'month') WHERE resource = 'prepared-own';
COMMIT PREPARED 'regress_usage_own_1';
ROLLBACK PREPARED 'regress_usage_own_2';
SELECT resource, amount FROM tenancy.usage('usage-a', NULL, NULL, 'month') WHERE resource LIKE 'prepared-%' ORDER BY 1;
SELECT tenancy.rollup_usage() >= 2 AS folded;
SELECT resource, amount FROM tenancy.usage_rollups
 WHERE granularity = 'month' AND resource LIKE 'prepared-%' ORDER BY 1;
SET tenancy.usage_flush_delay = 0;

-- Leave no tenants behind for later tests.
SELECT tenancy.delete_tenant(t), tenancy.purge_tenant(t) FROM unnest(ARRAY['usage-a', 'usage-b']) t;
SELECT count(*) AS usage_rows_left FROM tenancy.usage_rollups;

RESET client_min_messages;
DROP ROLE regress_usage_plain;
DROP ROLE regress_usage_admin;
