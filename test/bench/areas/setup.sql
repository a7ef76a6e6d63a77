-- test/bench/areas/setup.sql: what the area benchmarks need, run once by
-- test/bench/areas/run as the cluster's superuser (psql -v keys=N).
-- The benchmarks connect as bench_app, an ordinary LOGIN role in
-- tenancy_app: not a superuser, so row level security applies.
\set ON_ERROR_STOP on
\set QUIET on

CREATE EXTENSION pgcrypto SCHEMA public;
CREATE EXTENSION tenancy;

CREATE ROLE bench_app LOGIN IN ROLE tenancy_app;

-- Tenants, all on the pro plan (no plan limits are set on it here):
--   t_quota  1. inserts with rows:<table> and storage_bytes limits
--   t_plain  1. inserts without any limit (baseline)
--   t_rate   2. check_rate with a limit that never denies
--   t_cons   3. consume_quota / the PL/pgSQL counter
--   t_usage  5. point SELECT (+ record_usage)
--   k000..k099  4. 1,000 API keys each (100,000 keys)
SELECT tenancy.create_tenant(s, plan => 'pro')
  FROM unnest(ARRAY['t-quota', 't-plain', 't-rate', 't-cons', 't-usage']) s;

-- 1. One protected table for both insert variants; the two tenants differ
-- only by the quotas set on t-quota (limits far beyond reach).
CREATE TABLE public.bench_items (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id  uuid,
    payload    text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
SELECT tenancy.protect('public.bench_items');
GRANT SELECT, INSERT ON public.bench_items TO bench_app;
SELECT tenancy.set_tenant_quota('t-quota', 'rows:public.bench_items', 1000000000000);
SELECT tenancy.set_tenant_quota('t-quota', 'storage_bytes', 1000000000000000);

-- 2. A rate limit that never denies.
SELECT tenancy.set_tenant_rate_limit('t-rate', 'r', 1e9, 1000000000);

-- 3. A counter with a limit far beyond reach, and the hand-written
-- alternative: a counter table updated by a PL/pgSQL function.
SELECT tenancy.set_tenant_quota('t-cons', 'c', 1000000000000000);
CREATE TABLE public.bench_counters (
    tenant_id   uuid NOT NULL,
    resource    text NOT NULL,
    used        bigint NOT NULL DEFAULT 0,
    quota_limit bigint NOT NULL,
    PRIMARY KEY (tenant_id, resource)
);
INSERT INTO public.bench_counters (tenant_id, resource, quota_limit)
VALUES (tenancy.tenant_id('t-cons'), 'c', 1000000000000000);
GRANT SELECT, UPDATE ON public.bench_counters TO bench_app;
CREATE FUNCTION public.bench_consume(res text, amount bigint DEFAULT 1) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    u bigint;
BEGIN
    UPDATE public.bench_counters
       SET used = used + amount
     WHERE tenant_id = current_setting('app.tenant_id')::uuid
       AND resource = res
       AND used + amount <= quota_limit
    RETURNING used INTO u;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'quota exceeded for %', res USING ERRCODE = 'P0001';
    END IF;
    RETURN u;
END
$$;

-- 5. A protected table read by primary key, 100,000 rows of t-usage.
CREATE TABLE public.bench_docs (
    id        bigint PRIMARY KEY,
    tenant_id uuid,
    title     text NOT NULL,
    body      text NOT NULL
);
SELECT tenancy.protect('public.bench_docs');
SELECT set_config('app.tenant_id', tenancy.tenant_id('t-usage')::text, false);
INSERT INTO public.bench_docs (id, title, body)
SELECT i, 'document ' || i, repeat(md5(i::text), 4) FROM generate_series(1, 100000) i;
RESET app.tenant_id;
GRANT SELECT ON public.bench_docs TO bench_app;

-- 4. API keys: 100 tenants with 1,000 keys each (no api_keys limit on
-- pro; set unlimited anyway).  The plaintext of two keys is kept for the
-- benchmark clients.
CREATE TABLE public.bench_keys (n int PRIMARY KEY, key text NOT NULL);
SELECT tenancy.create_tenant(format('k%s', lpad(i::text, 3, '0')), plan => 'pro')
  FROM generate_series(0, 99) i;
SELECT tenancy.set_tenant_quota(format('k%s', lpad(i::text, 3, '0')), 'api_keys', NULL)
  FROM generate_series(0, 99) i;
SELECT set_config('bench.keys', :'keys', false) AS _keys \gset
SELECT clock_timestamp() AS keys_t0 \gset
DO $$
DECLARE
    total int := current_setting('bench.keys')::int;
    k text;
BEGIN
    FOR i IN 0 .. total - 1 LOOP
        k := tenancy.create_api_key(format('k%s', lpad((i % 100)::text, 3, '0')),
                                    format('service %s', i));
        IF i IN (total / 2, total / 2 + 1) THEN
            INSERT INTO public.bench_keys VALUES (i, k);
        END IF;
    END LOOP;
END
$$;
SELECT count(*) AS api_keys, round(extract(epoch FROM clock_timestamp() - :'keys_t0'::timestamptz)::numeric, 1) AS seconds
  FROM tenancy.api_keys \gset
\warn setup: :api_keys API keys created in :seconds s

-- The hand-written alternative: a plain copy with a unique index on the hash.
CREATE TABLE public.bench_api_keys_copy AS SELECT * FROM tenancy.api_keys;
CREATE UNIQUE INDEX ON public.bench_api_keys_copy (key_hash);
GRANT SELECT ON public.bench_api_keys_copy TO bench_app;

VACUUM ANALYZE;
CHECKPOINT;

-- Diagnostics (run by `run` after the pgbench tests): the server-side cost
-- of one transaction doing <what>, COMMIT included, without client round
-- trips: a procedure committing after each iteration.
CREATE TABLE public.bench_plain (x int);
GRANT INSERT ON public.bench_plain TO bench_app;
CREATE PROCEDURE public.bench_loop(what text, n int, INOUT us numeric DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE
    t0 timestamptz;
    k text := current_setting('bench.key', true);
    ta uuid[] := ARRAY[nullif(current_setting('app.tenant_id'), '')::uuid];
    ra text[] := ARRAY['api_calls'];
    aa timestamptz[] := ARRAY[now()];
    ma bigint[] := ARRAY[1::bigint];
BEGIN
    t0 := clock_timestamp();
    FOR i IN 1 .. n LOOP
        CASE what
        WHEN 'nothing' THEN PERFORM 1;
        WHEN 'plain-insert' THEN INSERT INTO public.bench_plain VALUES (1);
        WHEN 'record_usage' THEN PERFORM tenancy.record_usage('api_calls');
        WHEN 'plpgsql-counter' THEN PERFORM public.bench_consume('c');
        WHEN 'consume_quota' THEN PERFORM tenancy.consume_quota('c');
        WHEN 'hand-lookup' THEN
            PERFORM tenant_id FROM public.bench_api_keys_copy
              WHERE key_hash = digest(k, 'sha256') AND revoked_at IS NULL
                AND (expires_at IS NULL OR expires_at > now());
        WHEN 'verify_api_key' THEN PERFORM tenancy.verify_api_key(k);
        WHEN 'authenticate' THEN PERFORM tenancy.authenticate(k, true);
        -- the INSERT that usage_flush() runs at commit, with and without
        -- its EXISTS test on tenancy.tenants (superuser only)
        WHEN 'events-insert+exists' THEN
            INSERT INTO tenancy.usage_events (tenant_id, resource, at, amount)
            SELECT e.t, e.r, e.a, e.m
              FROM ROWS FROM (unnest(ta), unnest(ra), unnest(aa), unnest(ma)) AS e(t, r, a, m)
             WHERE EXISTS (SELECT FROM tenancy.tenants x WHERE x.id = e.t);
        WHEN 'events-insert' THEN
            INSERT INTO tenancy.usage_events (tenant_id, resource, at, amount)
            SELECT e.t, e.r, e.a, e.m
              FROM ROWS FROM (unnest(ta), unnest(ra), unnest(aa), unnest(ma)) AS e(t, r, a, m);
        END CASE;
        COMMIT;
    END LOOP;
    us := round((extract(epoch FROM clock_timestamp() - t0) * 1e6 / n)::numeric, 1);
END
$$;
