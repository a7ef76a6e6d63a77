-- API keys: format and checksum, verification, authentication, the binding
-- of a session, key permissions and scopes on every DML path, the
-- administration of keys by tenancy_admin and by admin keys.
\set VERBOSITY default
\set SHOW_CONTEXT never
SET client_min_messages = warning;
SELECT current_user AS superuser \gset

-- An independent implementation of the checksum: the standard CRC-32
-- (zlib's), as 6 base62 digits, most significant first.
CREATE FUNCTION regress_crc32(s text) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    crc bigint := 4294967295;
    b bytea := convert_to(s, 'UTF8');
BEGIN
    FOR i IN 0 .. length(b) - 1 LOOP
        crc := crc # get_byte(b, i);
        FOR k IN 1 .. 8 LOOP
            IF crc & 1 = 1 THEN crc := (crc >> 1) # 3988292384; ELSE crc := crc >> 1; END IF;
        END LOOP;
    END LOOP;
    RETURN crc # 4294967295;
END $$;
CREATE FUNCTION regress_base62(v bigint) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    d text := '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz';
    r text := '';
BEGIN
    FOR i IN 1 .. 6 LOOP
        r := substr(d, (v % 62)::int + 1, 1) || r;
        v := v / 62;
    END LOOP;
    RETURN r;
END $$;
-- A body with a correct checksum appended.
CREATE FUNCTION regress_key(body text) RETURNS text LANGUAGE sql
AS $$ SELECT body || regress_base62(regress_crc32(body)) $$;
-- Run a statement; return 'ok' or its SQLSTATE (for errors raised by other
-- areas, whose wording is theirs) ...
CREATE FUNCTION regress_code(sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE sql;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE;
END $$;
-- ... or its SQLSTATE and message.
CREATE FUNCTION regress_try(sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE sql;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END $$;
SELECT regress_crc32('123456789') = 3421780262 AS crc32_check_value;

CREATE ROLE regress_key_admin LOGIN IN ROLE tenancy_admin;
CREATE ROLE regress_key_user LOGIN;
CREATE ROLE regress_key_defaulted LOGIN;
CREATE TABLE public.regress_orders (id int, note text);
CREATE TABLE public.regress_notes (id int);
CREATE TABLE public.regress_parts (id int, tenant_id uuid) PARTITION BY RANGE (id);
CREATE TABLE public.regress_parts_1 PARTITION OF public.regress_parts FOR VALUES FROM (0) TO (100);
CREATE TABLE public.regress_fk_parent (id int PRIMARY KEY);
CREATE TABLE public.regress_fk_child (id int, pid int REFERENCES public.regress_fk_parent ON DELETE CASCADE);
-- what a scoped key must never reach, whatever runs the query
CREATE TABLE public.regress_secret (v text);
-- a schema of the user's own, for the tables, functions and triggers it makes
CREATE SCHEMA regress_keyown AUTHORIZATION regress_key_user;
-- a table named like one of public, in another schema
CREATE SCHEMA regress_keyother;
CREATE TABLE regress_keyother.regress_notes (id int);
CREATE VIEW public.regress_orders_view WITH (security_invoker = true)
    AS SELECT id, note FROM public.regress_orders;
SELECT tenancy.protect('public.regress_orders'), tenancy.protect('public.regress_notes'),
       tenancy.protect('public.regress_parts'), tenancy.protect('public.regress_fk_parent'),
       tenancy.protect('public.regress_fk_child'), tenancy.protect('public.regress_secret'),
       tenancy.protect('regress_keyother.regress_notes');
GRANT USAGE ON SCHEMA regress_keyother TO regress_key_user;
GRANT SELECT ON regress_keyother.regress_notes TO regress_key_user;
GRANT SELECT ON public.regress_secret TO regress_key_user;
GRANT REFERENCES ON public.regress_fk_parent TO regress_key_user;
GRANT SELECT, INSERT, UPDATE, DELETE ON public.regress_fk_parent, public.regress_fk_child
    TO regress_key_user;
GRANT SELECT, INSERT, UPDATE, DELETE ON public.regress_orders, public.regress_notes,
    public.regress_parts, public.regress_parts_1, public.regress_orders_view
    TO regress_key_user, regress_key_defaulted;
SELECT tenancy.create_tenant('regress-acme', plan => 'enterprise') AS acme \gset
SELECT tenancy.create_tenant('regress-other', plan => 'enterprise') AS other \gset
SELECT tenancy.create_tenant('regress-susp', plan => 'enterprise') AS susp \gset
CREATE TEMP TABLE failures0 AS SELECT * FROM tenancy._auth_failures();

--
-- Creating keys: format, what is stored, argument checks
--
SELECT tenancy.create_api_key('regress-acme', 'full') AS k_full \gset
SELECT length(:'k_full') AS length,
       :'k_full' ~ '^tk_[0-9A-Za-z]{38}$' AS alphabet,
       right(:'k_full', 6) = regress_base62(regress_crc32(left(:'k_full', 35))) AS checksum
;
SELECT k.prefix = left(:'k_full', 11) AS prefix,
       k.key_hash = sha256(convert_to(:'k_full', 'UTF8')) AS sha256,
       k.tenant_id = :'acme' AS tenant, k.permissions, k.scopes,
       k.expires_at IS NULL AS no_expiry, k.revoked_at IS NULL AS not_revoked,
       k.created_by = current_user AS created_by
  FROM tenancy.api_keys k WHERE k.name = 'full';
-- The plaintext is stored nowhere.
SELECT count(*) AS plaintext_rows FROM tenancy.api_keys k
 WHERE k::text LIKE '%' || substr(:'k_full', 12) || '%';
-- Two keys never collide.
SELECT tenancy.create_api_key('regress-acme', 'second') <> :'k_full' AS distinct_keys;

SELECT tenancy.create_api_key('regress-acme', 'x', '{read,delete}');
SELECT tenancy.create_api_key('regress-acme', 'x', NULL);
SELECT tenancy.create_api_key('regress-acme', 'x', '{read,NULL}');
SELECT tenancy.create_api_key('regress-acme', 'x', '{read}', '{""}');
SELECT tenancy.create_api_key('regress-acme', 'x', '{read}', NULL);
SELECT tenancy.create_api_key('regress-acme', NULL);
SELECT tenancy.create_api_key('regress-acme', '  ');
SELECT tenancy.create_api_key('regress-acme', 'x', expires_at => now() - interval '1 day');
SELECT tenancy.create_api_key('regress-nobody', 'x');
SELECT tenancy.create_api_key(NULL, 'x');
SELECT tenancy.create_api_key('regress-acme', 'x', '{{read},{write}}');
SELECT tenancy.create_api_key('regress-acme', 'x', '{read}', '{{public.a},{public.b}}');
SELECT count(*) AS keys_of_acme FROM tenancy.api_keys WHERE tenant_id = :'acme';

--
-- verify_api_key: a row for a good key, none for anything else
--
SELECT tenant_id = :'acme' AS tenant, key_id IS NOT NULL AS key_id, permissions, scopes
  FROM tenancy.verify_api_key(:'k_full');
SELECT 'tk_' || repeat('A', 32) AS body \gset
SELECT v.what, (SELECT count(*) FROM tenancy.verify_api_key(v.k)) AS rows
  FROM (VALUES
    ('null', NULL),
    ('empty', ''),
    ('garbage', 'not a key'),
    ('1 MB', repeat('x', 1024 * 1024)),
    ('1 MB of key characters', 'tk_' || repeat('A', 1024 * 1024)),
    ('wrong mark', 'tx_' || substr(:'k_full', 4)),
    ('upper-case mark', 'TK_' || substr(:'k_full', 4)),
    ('one character short', left(:'k_full', 40)),
    ('one character long', :'k_full' || 'A'),
    ('leading space', ' ' || left(:'k_full', 40)),
    ('non-base62 character, right checksum', regress_key('tk_' || repeat('A', 31) || '-')),
    ('non-ASCII character', regress_key('tk_' || repeat('A', 31) || 'é')),
    ('bad checksum', left(:'k_full', 40) || CASE WHEN right(:'k_full', 1) = 'A' THEN 'B' ELSE 'A' END),
    ('well formed, unknown', regress_key(:'body')),
    ('the key', :'k_full')) AS v(what, k);
SELECT cause, f.failures - f0.failures AS new_failures
  FROM tenancy._auth_failures() f JOIN failures0 f0 USING (cause) ORDER BY cause;

--
-- Expired, revoked, suspended tenant, rotated keys
--
SELECT tenancy.create_api_key('regress-acme', 'expiring') AS k_exp \gset
UPDATE tenancy.api_keys SET expires_at = now() - interval '1 second' WHERE name = 'expiring';
SELECT tenancy.create_api_key('regress-acme', 'revoked') AS k_rev \gset
SELECT id AS k_rev_id FROM tenancy.api_keys WHERE name = 'revoked' \gset
SELECT tenancy.revoke_api_key(:'k_rev_id');
SELECT tenancy.revoke_api_key(:'k_rev_id');   -- idempotent
SELECT tenancy.create_api_key('regress-susp', 'susp') AS k_susp \gset
SELECT count(*) AS before_suspension FROM tenancy.verify_api_key(:'k_susp');
SELECT tenancy.suspend_tenant('regress-susp');
SELECT tenancy.create_api_key('regress-acme', 'rotating', '{read}', '{public.regress_orders}') AS k_rot \gset
SELECT id AS k_rot_id FROM tenancy.api_keys WHERE name = 'rotating' \gset
SELECT tenancy.rotate_api_key(:'k_rot_id', '1 hour') AS k_rot2 \gset
SELECT v.what, (SELECT count(*) FROM tenancy.verify_api_key(v.k)) AS rows
  FROM (VALUES ('expired', :'k_exp'), ('revoked', :'k_rev'), ('suspended tenant', :'k_susp'),
               ('rotated, in its grace', :'k_rot'), ('rotation', :'k_rot2')) AS v(what, k);
SELECT permissions, scopes FROM tenancy.verify_api_key(:'k_rot2');
SELECT count(*) AS keys_named_rotating,
       count(*) FILTER (WHERE expires_at BETWEEN now() + interval '59 minutes' AND now() + interval '1 hour') AS in_grace
  FROM tenancy.api_keys WHERE name = 'rotating';
SELECT id AS k_rot2_id FROM tenancy.api_keys WHERE name = 'rotating' AND expires_at IS NULL \gset
SELECT tenancy.rotate_api_key(:'k_rot2_id') AS k_rot3 \gset
SELECT v.what, (SELECT count(*) FROM tenancy.verify_api_key(v.k)) AS rows
  FROM (VALUES ('rotated without grace', :'k_rot2'), ('its rotation', :'k_rot3')) AS v(what, k);
-- without grace the old key is revoked at once (it stops counting against
-- the api_keys quota); with grace it is only set to expire
SELECT id = :'k_rot2_id' AS without_grace, revoked_at IS NOT NULL AS revoked,
       expires_at <= now() AS expired
  FROM tenancy.api_keys WHERE name = 'rotating' AND expires_at IS NOT NULL ORDER BY 1;
SELECT tenancy.rotate_api_key(:'k_rev_id');
SELECT tenancy.rotate_api_key(:'k_rot2_id');
SELECT id AS k_exp_id FROM tenancy.api_keys WHERE name = 'expiring' \gset
SELECT tenancy.rotate_api_key(:'k_exp_id');
SELECT tenancy.rotate_api_key(:'k_rot2_id', '-1 hour');
SELECT tenancy.rotate_api_key('00000000-0000-0000-0000-000000000000');
SELECT tenancy.revoke_api_key(NULL);

-- authenticate: one error for every cause, never the key.
SELECT v.what, regress_try(format('SELECT tenancy.authenticate(%L)', v.k)) AS result
  FROM (VALUES ('null', NULL), ('empty', ''), ('garbage', 'not a key'),
               ('bad checksum', left(:'k_full', 40) || CASE WHEN right(:'k_full', 1) = 'A' THEN 'B' ELSE 'A' END),
               ('unknown', regress_key(:'body')), ('expired', :'k_exp'), ('revoked', :'k_rev'),
               ('suspended tenant', :'k_susp')) AS v(what, k);
SELECT tenancy.authenticate(:'k_rev');
SELECT cause, f.failures - f0.failures AS new_failures
  FROM tenancy._auth_failures() f JOIN failures0 f0 USING (cause) ORDER BY cause;

-- Every change is audited, without key material.
SELECT action, count(*) FROM tenancy.audit_log
 WHERE action LIKE 'api_key.%' AND tenant_id IN (:'acme', :'other', :'susp')
 GROUP BY action ORDER BY action;
SELECT count(*) AS audit_rows_with_key_material FROM tenancy.audit_log
 WHERE details::text ~ 'tk_[0-9A-Za-z]{12,}' OR target ~ 'tk_[0-9A-Za-z]{12,}';
-- The audit row shows the permissions as stored (duplicates removed).
SELECT tenancy.create_api_key('regress-acme', 'dup-perms', '{write,read,write}') IS NOT NULL AS created;
SELECT k.permissions, a.details->'permissions' AS audited
  FROM tenancy.api_keys k JOIN tenancy.audit_log a ON a.target = k.id::text
 WHERE k.name = 'dup-perms' AND a.action = 'api_key.create';

--
-- A bound session of a plain LOGIN role with no other rights
--
SELECT tenancy.create_api_key('regress-acme', 'ro', '{read}') AS k_ro \gset
SELECT tenancy.create_api_key('regress-acme', 'wo', '{write}') AS k_wo \gset
SELECT tenancy.create_api_key('regress-acme', 'admin', '{read,write,admin}') AS k_admin \gset
SELECT tenancy.create_api_key('regress-acme', 'orders only', '{read,write}', '{public.regress_orders}') AS k_sc \gset
SELECT tenancy.create_api_key('regress-acme', 'wildcard', '{read,write}', '{public.regress_n*}') AS k_wild \gset
SELECT tenancy.create_api_key('regress-acme', 'bare name', '{read}', '{regress_notes}') AS k_bare \gset
SELECT tenancy.create_api_key('regress-acme', 'bare wildcard', '{read}', '{regress_n*}') AS k_bare_wild \gset
SELECT tenancy.create_api_key('regress-acme', 'everything', '{read}', '{*}') AS k_all \gset
SELECT tenancy.create_api_key('regress-acme', 'other schema', '{read}', '{regress_keyother.*}') AS k_other_sch \gset
SELECT tenancy.create_api_key('regress-acme', 'parts', '{read,write}', '{public.regress_parts}') AS k_parts \gset
SELECT tenancy.create_api_key('regress-acme', 'child only', '{read,write}', '{public.regress_fk_child}') AS k_child \gset
SELECT tenancy.create_api_key('regress-acme', 'parent only', '{read,write}', '{public.regress_fk_parent}') AS k_parent \gset
SELECT tenancy.set_tenant('regress-acme') IS NOT NULL;
INSERT INTO regress_fk_parent VALUES (1), (2), (5), (6);
INSERT INTO regress_secret VALUES ('secret 1'), ('secret 2');
RESET app.tenant_id;
SELECT tenancy.create_api_key('regress-other', 'other') AS k_other \gset
ALTER ROLE regress_key_defaulted SET tenancy.default_tenant = :'other';
SELECT id AS k_other_id FROM tenancy.api_keys WHERE name = 'other' \gset
CREATE FUNCTION regress_switch_by_set_clause() RETURNS uuid LANGUAGE sql
    SET app.tenant_id = :'other' AS $$ SELECT tenancy.current_tenant_id() $$;

\c - regress_key_user
SET client_min_messages = warning;
SELECT session_user, current_user;
SELECT regress_code(format('SET app.tenant_id = %L', :'acme')) AS unbound_set;
SELECT tenancy.authenticate(:'k_full') = :'acme' AS bound_to_acme;
SELECT current_setting('app.tenant_id') = :'acme' AS context_set,
       tenancy.current_tenant_id() = :'acme' AS current_tenant;
-- Every route to another tenant is closed (42501).
SELECT v.route, regress_code(v.sql) AS sqlstate FROM (VALUES
    ('SET', format('SET app.tenant_id = %L', :'other')),
    ('SET LOCAL', format('SET LOCAL app.tenant_id = %L', :'other')),
    ('set_config', format('SELECT set_config(%L, %L, false)', 'app.tenant_id', :'other')),
    ('set_config, local', format('SELECT set_config(%L, %L, true)', 'app.tenant_id', :'other')),
    ('set_tenant by slug', $$SELECT tenancy.set_tenant('regress-other')$$),
    ('set_tenant by id', format('SELECT tenancy.set_tenant(%L)', :'other')),
    ('set_tenant, local', format('SELECT tenancy.set_tenant(%L, true)', :'other')),
    ('set_tenant, no such tenant', $$SELECT tenancy.set_tenant('regress-nobody')$$),
    ('a function''s SET clause', 'SELECT regress_switch_by_set_clause()'),
    ('SET the binding', $$SET tenancy.session_binding = ''$$),
    ('RESET the binding', 'RESET tenancy.session_binding'),
    ('set_config the binding', format('SELECT set_config(%L, %L, false)', 'tenancy.session_binding',
                                      :'other' || ':' || :'other')),
    ('SET the default tenant', format('SET tenancy.default_tenant = %L', :'other')),
    ('ALTER ROLE SET', format('ALTER ROLE regress_key_user SET app.tenant_id = %L', :'other'))
  ) AS v(route, sql);
SELECT tenancy.current_tenant_id() = :'acme' AS still_acme;
SELECT tenancy.set_tenant('regress-acme') = :'acme' AS own_tenant_by_slug;
-- Clearing the context is allowed, and leaves none (TN001).
RESET app.tenant_id;
SELECT regress_code('SELECT tenancy.current_tenant_id()') AS no_context;
SET app.tenant_id = :'acme';
SELECT tenancy.current_tenant_id() = :'acme' AS back_to_acme;
-- RESET falls back to tenancy.default_tenant, here set for the role to the
-- other tenant: refused, since the session is bound to acme.
\c - regress_key_defaulted
SET client_min_messages = warning;
SELECT current_setting('tenancy.default_tenant') = :'other' AS default_is_other;
SELECT tenancy.authenticate(:'k_full') = :'acme' AS bound_to_acme;
RESET app.tenant_id;
SELECT regress_code('SELECT tenancy.current_tenant_id()') AS current_tenant,
       regress_code('SELECT count(*) FROM regress_orders') AS read;
SET app.tenant_id = '';
SELECT regress_code('SELECT count(*) FROM regress_orders') AS read;
\c - regress_key_user
SET client_min_messages = warning;
SELECT tenancy.authenticate(:'k_full') = :'acme' AS bound_to_acme;
-- A key of the other tenant rebinds the session there.
SELECT tenancy.authenticate(:'k_other') = :'other' AS rebound;
SELECT tenancy.current_tenant_id() = :'other' AS now_other;
INSERT INTO regress_orders (id, note) VALUES (100, 'other');
SELECT tenancy.authenticate(:'k_full') = :'acme' AS bound_to_acme;
INSERT INTO regress_orders (id, note) VALUES (1, 'one'), (2, 'two');
SELECT id, note FROM regress_orders ORDER BY id;
SELECT regress_code(format('INSERT INTO regress_orders (id, tenant_id) VALUES (3, %L)', :'other'))
    AS other_tenants_row;
-- The key's own table is unreadable but for the key's metadata of an
-- admin key; its hash never.
SELECT count(*) FROM tenancy.api_keys;
SELECT regress_code('SELECT key_hash FROM tenancy.api_keys') AS read_key_hash;
-- RESET ALL and DISCARD ALL (a pooler's reset) log the session out.
RESET ALL;
SELECT current_setting('tenancy.session_binding') = '' AS unbound,
       current_setting('app.tenant_id') = '' AS no_context;
SELECT tenancy.authenticate(:'k_full') = :'acme' AS bound_to_acme;
DISCARD ALL;
SELECT current_setting('tenancy.session_binding') = '' AS unbound,
       current_setting('app.tenant_id') = '' AS no_context;
SELECT tenancy.authenticate(:'k_full') = :'acme' AS bound_to_acme;
-- logout clears the binding and the context.
SELECT tenancy.logout();
SELECT current_setting('tenancy.session_binding') = '' AS unbound;
SELECT regress_code('SELECT tenancy.current_tenant_id()') AS no_context;
SELECT regress_code(format('SET app.tenant_id = %L', :'acme')) AS unbound_set;

--
-- Permissions, on every DML path
--
-- read only
SELECT tenancy.authenticate(:'k_ro') IS NOT NULL AS bound;
SELECT count(*) FROM regress_orders;
COPY regress_orders (id, note) TO stdout;
INSERT INTO regress_orders (id) VALUES (9);
UPDATE regress_orders SET note = 'x';
DELETE FROM regress_orders;
MERGE INTO regress_orders o USING (VALUES (1)) s(id) ON o.id = s.id
    WHEN MATCHED THEN UPDATE SET note = 'merged';
INSERT INTO regress_orders (id) VALUES (1) ON CONFLICT DO NOTHING;
SELECT * FROM regress_orders FOR UPDATE;
COPY regress_orders (id) FROM stdin;
9
\.
-- write only: writes that read nothing pass; reading fails, as it would
-- without SELECT privilege.
SELECT tenancy.authenticate(:'k_wo') IS NOT NULL AS bound;
SELECT count(*) FROM regress_orders;
COPY regress_orders (id, note) TO stdout;
INSERT INTO regress_orders (id, note) VALUES (3, 'three');
COPY regress_orders (id, note) FROM stdin;
4	four
\.
UPDATE regress_orders SET note = 'all';
UPDATE regress_orders SET note = 'x' WHERE id = 1;
INSERT INTO regress_orders (id) VALUES (5) RETURNING id;
MERGE INTO regress_orders o USING (VALUES (1)) s(id) ON o.id = s.id
    WHEN MATCHED THEN UPDATE SET note = 'merged';
DELETE FROM regress_orders WHERE id = 4;
DELETE FROM regress_notes;
-- read and write: everything.
SELECT tenancy.authenticate(:'k_full') IS NOT NULL AS bound;
MERGE INTO regress_orders o USING (VALUES (1), (6)) s(id) ON o.id = s.id
    WHEN MATCHED THEN UPDATE SET note = 'merged'
    WHEN NOT MATCHED THEN INSERT (id, note) VALUES (s.id, 'six');
SELECT id, note FROM regress_orders ORDER BY id;

--
-- Scopes
--
SELECT tenancy.authenticate(:'k_sc') IS NOT NULL AS bound;
SELECT count(*) FROM regress_orders;
SELECT count(*) FROM regress_notes;
INSERT INTO regress_notes VALUES (1);
SELECT count(*) FROM regress_orders o JOIN regress_notes n USING (id);
COPY regress_notes FROM stdin;
1
\.
-- a table that is not protected is outside every key's reach anyway
SELECT count(*) FROM pg_class WHERE relname = 'regress_notes';
SELECT tenancy.authenticate(:'k_wild') IS NOT NULL AS bound;
INSERT INTO regress_notes VALUES (1);
SELECT count(*) FROM regress_notes;
SELECT count(*) FROM regress_orders;
SELECT tenancy.authenticate(:'k_bare') IS NOT NULL AS bound;
SELECT count(*) FROM regress_notes;
SET search_path = pg_catalog;
SELECT count(*) FROM public.regress_notes;
RESET search_path;
-- A scope without a schema matches tables of schema public only, by their
-- bare name, whatever the search_path (which the key's holder sets): a
-- table of the same name elsewhere stays out of reach (42501), and the
-- public one within it, even with a search_path without public.
SET search_path = regress_keyother, public;
SELECT count(*) FROM regress_keyother.regress_notes;
SELECT count(*) FROM regress_notes;
SELECT count(*) FROM public.regress_notes;
SELECT set_config('search_path', 'regress_keyother', false) AS search_path;
SELECT count(*) FROM regress_notes;
SELECT count(*) FROM public.regress_notes;
SET search_path = '';
SELECT count(*) FROM regress_keyother.regress_notes;
SELECT count(*) FROM public.regress_notes;
-- nor does quoting every identifier change what a scope matches
SET quote_all_identifiers = on;
SELECT count(*) FROM regress_keyother.regress_notes;
SELECT count(*) FROM public.regress_notes;
RESET quote_all_identifiers;
RESET search_path;
-- the same for a wildcard without a schema
SELECT tenancy.authenticate(:'k_bare_wild') IS NOT NULL AS bound;
SET search_path = regress_keyother, public;
SELECT count(*) FROM regress_notes;
SELECT count(*) FROM public.regress_notes;
SELECT count(*) FROM public.regress_orders;
RESET search_path;
-- the lone * matches every table
SELECT tenancy.authenticate(:'k_all') IS NOT NULL AS bound;
SELECT count(*) FROM regress_keyother.regress_notes;
SELECT count(*) FROM public.regress_notes;
-- a scope with a schema matches the qualified name, whatever the search_path
SELECT tenancy.authenticate(:'k_other_sch') IS NOT NULL AS bound;
SELECT count(*) FROM regress_keyother.regress_notes;
SELECT count(*) FROM public.regress_notes;
SET search_path = regress_keyother;
SELECT count(*) FROM regress_notes;
SELECT count(*) FROM public.regress_notes;
SELECT tenancy.authenticate(:'k_sc') IS NOT NULL AS bound;
SELECT count(*) FROM public.regress_orders;
SELECT count(*) FROM public.regress_notes;
RESET search_path;
-- a view is judged by the protected tables it reads
SELECT tenancy.authenticate(:'k_bare') IS NOT NULL AS bound;
SELECT count(*) FROM regress_orders_view;
SELECT tenancy.authenticate(:'k_sc') IS NOT NULL AS bound;
SELECT count(*) FROM regress_orders_view;
-- partitions reached through their parent are judged by the parent;
-- queried directly, by their own name
SELECT tenancy.authenticate(:'k_parts') IS NOT NULL AS bound;
INSERT INTO regress_parts (id) VALUES (1), (2);
SELECT count(*) FROM regress_parts;
SELECT count(*) FROM regress_parts_1;
-- PostgreSQL's own foreign-key checks and cascades are part of the
-- statement the key allowed: they are not judged by its scopes or its
-- permissions (they do not need the user's privileges either).
SELECT tenancy.authenticate(:'k_child') IS NOT NULL AS bound;
INSERT INTO regress_fk_child VALUES (1, 1);
INSERT INTO regress_fk_child VALUES (2, 3);                 -- 23503, no parent
SELECT count(*) FROM regress_fk_parent;                     -- 42501, out of scope
SELECT tenancy.authenticate(:'k_wo') IS NOT NULL AS bound;
INSERT INTO regress_fk_child VALUES (3, 2);
SELECT tenancy.authenticate(:'k_parent') IS NOT NULL AS bound;
DELETE FROM regress_fk_parent WHERE id = 1;                 -- cascades to the child
SELECT tenancy.authenticate(:'k_full') IS NOT NULL AS bound;
SELECT id, pid FROM regress_fk_child ORDER BY id;
-- Only the foreign-key query itself: what it runs is judged.  A BEFORE
-- trigger of the user's own table, fired by an ON UPDATE CASCADE, reading
-- a table outside the key's scopes: 42501, nothing copied.
SELECT tenancy.authenticate(:'k_parent') IS NOT NULL AS bound;
CREATE TABLE regress_keyown.mine (pid int REFERENCES public.regress_fk_parent (id) ON UPDATE CASCADE);
CREATE TABLE regress_keyown.loot (v text);
CREATE FUNCTION regress_keyown.steal() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO regress_keyown.loot SELECT v FROM public.regress_secret;
    RETURN NEW;
END $$;
CREATE TRIGGER steal BEFORE UPDATE ON regress_keyown.mine
    FOR EACH ROW EXECUTE FUNCTION regress_keyown.steal();
INSERT INTO regress_keyown.mine VALUES (5), (6);
UPDATE regress_fk_parent SET id = 1005 WHERE id = 5;
SELECT count(*) AS stolen FROM regress_keyown.loot;
-- the same from a rule of that table, which rewrites the cascade
DROP TRIGGER steal ON regress_keyown.mine;
CREATE RULE steal AS ON UPDATE TO regress_keyown.mine
    DO ALSO INSERT INTO regress_keyown.loot SELECT v FROM public.regress_secret;
UPDATE regress_fk_parent SET id = 1006 WHERE id = 6;
SELECT count(*) AS stolen FROM regress_keyown.loot;
-- without them the cascade passes
DROP RULE steal ON regress_keyown.mine;
UPDATE regress_fk_parent SET id = 1005 WHERE id = 5;
SELECT pid FROM regress_keyown.mine ORDER BY pid;

--
-- Parallel workers judge what they run: the SQL of a PARALLEL SAFE
-- function, which the leader never sees.
--
CREATE FUNCTION regress_keyown.peek(t regclass) RETURNS bigint
LANGUAGE plpgsql PARALLEL SAFE AS $$
DECLARE
    n bigint;
BEGIN
    EXECUTE format('SELECT count(*) FROM %s', t) INTO n;
    RETURN n;
END $$;
SET force_parallel_mode = on;
SET parallel_setup_cost = 0;
SET parallel_tuple_cost = 0;
EXPLAIN (COSTS OFF) SELECT regress_keyown.peek('public.regress_secret');
SELECT tenancy.authenticate(:'k_sc') IS NOT NULL AS bound;  -- {public.regress_orders}
SELECT regress_keyown.peek('public.regress_secret');
SELECT tenancy.authenticate(:'k_wo') IS NOT NULL AS bound;
SELECT regress_keyown.peek('public.regress_orders');
SELECT tenancy.authenticate(:'k_full') IS NOT NULL AS bound;
SELECT regress_keyown.peek('public.regress_secret');
RESET force_parallel_mode;
RESET parallel_setup_cost;
RESET parallel_tuple_cost;

--
-- is_local: the binding ends with the transaction
--
SELECT tenancy.logout();
BEGIN;
SELECT tenancy.authenticate(:'k_full', is_local => true) = :'acme' AS bound_locally;
SELECT count(*) FROM regress_orders;
COMMIT;
SELECT current_setting('tenancy.session_binding') = '' AS unbound,
       current_setting('app.tenant_id') = '' AS no_context;
SELECT regress_code('SELECT count(*) FROM regress_orders') AS read;
BEGIN;
SELECT tenancy.authenticate(:'k_full', true) IS NOT NULL AS bound_locally;
ROLLBACK;
SELECT current_setting('tenancy.session_binding') = '' AS unbound_after_rollback;
-- a local binding over a session binding gives it back at the end
SELECT tenancy.authenticate(:'k_ro') IS NOT NULL AS bound;
BEGIN;
SELECT tenancy.authenticate(:'k_full', true) IS NOT NULL AS bound_locally;
INSERT INTO regress_orders (id, note) VALUES (7, 'seven');
COMMIT;
INSERT INTO regress_orders (id, note) VALUES (8, 'eight');
SELECT tenancy.logout();

--
-- Key administration by a session bound with an admin key
--
SELECT tenancy.create_api_key('regress-acme', 'by a user');
SELECT tenancy.authenticate(:'k_full') IS NOT NULL AS bound;
SELECT tenancy.create_api_key('regress-acme', 'by a read-write key');
SELECT tenancy.revoke_api_key(:'k_rot2_id');
SELECT tenancy.authenticate(:'k_admin') IS NOT NULL AS bound;
SELECT length(tenancy.create_api_key('regress-acme', 'by an admin key', '{read}')) AS own_tenant;
SELECT tenancy.create_api_key('regress-other', 'elsewhere');
SELECT tenancy.create_api_key('regress-nobody', 'nowhere');
SELECT tenancy.create_api_key(:'other', 'elsewhere');
SELECT tenancy.revoke_api_key('00000000-0000-0000-0000-000000000000');
SELECT count(*) AS visible_keys, count(*) FILTER (WHERE tenant_id <> :'acme') AS of_other_tenants
  FROM tenancy.api_keys;
SELECT id AS k_bwo_id FROM tenancy.api_keys WHERE name = 'by an admin key' \gset
SELECT length(tenancy.rotate_api_key(:'k_bwo_id')) AS rotated;
SELECT tenancy.revoke_api_key(:'k_bwo_id');
SELECT tenancy.logout();

\c - regress_key_admin
SET client_min_messages = warning;
-- tenancy_admin lists every key, but not their hashes
SELECT count(DISTINCT tenant_id) >= 2 AS sees_every_tenant FROM tenancy.api_keys;
SELECT regress_code('SELECT key_hash FROM tenancy.api_keys') AS read_key_hash;
-- tenancy_admin: any tenant; it is told when a key does not exist
SELECT tenancy.revoke_api_key(:'k_other_id');
SELECT tenancy.revoke_api_key('00000000-0000-0000-0000-000000000000');
SELECT count(*) FROM tenancy.verify_api_key(:'k_other');

--
-- Revoking its own key ends the session's binding
--
\c - regress_key_user
SET client_min_messages = warning;
SELECT tenancy.authenticate(:'k_admin') IS NOT NULL AS bound;
SELECT id AS k_admin_id FROM tenancy.api_keys WHERE name = 'admin' \gset
BEGIN;
SELECT count(*) > 0 AS reads FROM regress_orders;
SELECT tenancy.revoke_api_key(:'k_admin_id');
COMMIT;
SELECT count(*) FROM regress_orders;
SELECT tenancy.current_tenant_id();
SELECT tenancy.logout();
-- (another session's revocation or suspension: test/isolation/specs/apikey_binding.spec)

\c - :superuser
SET client_min_messages = warning;

--
-- The key cache (src/apikey.c) and changes of this session's own
-- transaction: a row read in a transaction that changed it is not kept
-- once that transaction or subtransaction rolls back.
--
SELECT tenancy.create_api_key('regress-acme', 'cached') AS k_cached \gset
SELECT count(*) AS valid FROM tenancy.verify_api_key(:'k_cached');
BEGIN;
UPDATE tenancy.api_keys SET revoked_at = now() WHERE name = 'cached';
SELECT count(*) AS valid_in_revoking_xact FROM tenancy.verify_api_key(:'k_cached');
ROLLBACK;
SELECT count(*) AS valid_after_rollback FROM tenancy.verify_api_key(:'k_cached');
UPDATE tenancy.api_keys SET revoked_at = now() WHERE name = 'cached';
SELECT count(*) AS valid_once_revoked FROM tenancy.verify_api_key(:'k_cached');
BEGIN;
UPDATE tenancy.api_keys SET revoked_at = NULL WHERE name = 'cached';
SELECT count(*) AS valid_in_unrevoking_xact FROM tenancy.verify_api_key(:'k_cached');
ROLLBACK;
SELECT count(*) AS valid_after_rollback FROM tenancy.verify_api_key(:'k_cached');
BEGIN;
SAVEPOINT s;
UPDATE tenancy.api_keys SET revoked_at = NULL WHERE name = 'cached';
SELECT tenancy.authenticate(:'k_cached', true) IS NOT NULL AS bound_in_subxact;
ROLLBACK TO SAVEPOINT s;
SELECT count(*) AS valid_after_rollback_to FROM tenancy.verify_api_key(:'k_cached');
SELECT regress_code(format('SELECT tenancy.authenticate(%L, true)', :'k_cached')) AS auth_after_rollback_to;
COMMIT;
-- The cache is emptied by changes of what a verification reads, not by
-- the last_used_at bookkeeping (written once a minute per key and backend).
SELECT tgname, tgenabled, pg_get_triggerdef(oid) AS definition
  FROM pg_trigger WHERE tgrelid = 'tenancy.api_keys'::regclass AND NOT tgisinternal;

--
-- Deleting a tenant revokes its keys
--
SELECT tenancy.create_api_key('regress-other', 'doomed') AS k_doomed \gset
SELECT count(*) FROM tenancy.verify_api_key(:'k_doomed');
SELECT count(*) AS live_keys FROM tenancy.api_keys
 WHERE tenant_id = :'other' AND revoked_at IS NULL;
SELECT tenancy.delete_tenant('regress-other');
SELECT count(*) AS live_keys FROM tenancy.api_keys
 WHERE tenant_id = :'other' AND revoked_at IS NULL;
SELECT count(*) FROM tenancy.verify_api_key(:'k_doomed');
SELECT details->>'reason' AS reason FROM tenancy.audit_log
 WHERE action = 'api_key.revoke' AND tenant_id = :'other' AND target IS NULL;

-- last_used_at is set by a successful verification.
SELECT count(*) FILTER (WHERE last_used_at IS NOT NULL) > 0 AS some_used,
       bool_and(last_used_at <= now()) AS not_in_the_future
  FROM tenancy.api_keys;
-- It is written by the commit of the transaction that used the key, and
-- that write never fails the commit: an error is logged, nothing written.
SELECT tenancy.create_api_key('regress-acme', 'last used') AS k_lu \gset
CREATE FUNCTION regress_refuse_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'regress: no update of api_keys';
END $$;
CREATE TRIGGER regress_refuse BEFORE UPDATE ON tenancy.api_keys
    FOR EACH ROW EXECUTE FUNCTION regress_refuse_update();
BEGIN;
SELECT count(*) AS valid FROM tenancy.verify_api_key(:'k_lu');
SELECT last_used_at IS NULL AS not_yet FROM tenancy.api_keys WHERE name = 'last used';
COMMIT;
SELECT last_used_at IS NULL AS not_written FROM tenancy.api_keys WHERE name = 'last used';
DROP TRIGGER regress_refuse ON tenancy.api_keys;
DROP FUNCTION regress_refuse_update();
-- the next use writes it
SELECT count(*) AS valid FROM tenancy.verify_api_key(:'k_lu');
SELECT last_used_at IS NOT NULL AS written FROM tenancy.api_keys WHERE name = 'last used';
-- a transaction that turned read-only after the use writes nothing; the
-- next read-write one does
SELECT tenancy.create_api_key('regress-acme', 'last used ro') AS k_lu2 \gset
BEGIN;
SELECT count(*) AS valid FROM tenancy.verify_api_key(:'k_lu2');
SET TRANSACTION READ ONLY;
COMMIT;
SELECT last_used_at IS NULL AS not_written FROM tenancy.api_keys WHERE name = 'last used ro';
SELECT count(*) AS valid FROM tenancy.verify_api_key(:'k_lu2');
SELECT last_used_at IS NOT NULL AS written FROM tenancy.api_keys WHERE name = 'last used ro';

-- clean up
DROP VIEW public.regress_orders_view;
DROP SCHEMA regress_keyown CASCADE;
SELECT tenancy.unprotect('public.regress_orders'), tenancy.unprotect('public.regress_notes'),
       tenancy.unprotect('public.regress_parts'), tenancy.unprotect('public.regress_secret'),
       tenancy.unprotect('regress_keyother.regress_notes');
DROP SCHEMA regress_keyother CASCADE;
DROP TABLE public.regress_orders, public.regress_notes, public.regress_parts,
    public.regress_fk_child, public.regress_fk_parent, public.regress_secret;
DROP FUNCTION regress_switch_by_set_clause(), regress_try(text), regress_code(text), regress_key(text),
    regress_base62(bigint), regress_crc32(text);
DROP ROLE regress_key_admin, regress_key_user, regress_key_defaulted;
-- purging the tenants removes their keys (and what other areas keep)
SELECT tenancy.delete_tenant('regress-acme'), tenancy.delete_tenant('regress-susp');
SELECT tenancy.purge_tenant(t) FROM unnest('{regress-acme,regress-other,regress-susp}'::text[]) t;
SELECT count(*) AS keys_left FROM tenancy.api_keys WHERE tenant_id IN (:'acme', :'other', :'susp');
