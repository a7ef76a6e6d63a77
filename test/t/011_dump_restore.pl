# pg_dump / pg_restore of a database with protected tables: the restore
# passes the DDL guard (it creates the triggers before it enables row level
# security), and the restored tables are protected and listed again.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('dump_restore');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'tenancy,pg_cron'");
$node->append_conf('postgresql.conf', "cron.database_name = 'postgres'");
$node->start;

$node->safe_psql('postgres', 'CREATE DATABASE src');
$node->safe_psql('src', q{
CREATE EXTENSION tenancy CASCADE;
CREATE ROLE regress_owner;
SELECT tenancy.create_tenant('acme');
SELECT tenancy.create_tenant('bolt');
CREATE TABLE docs (id int PRIMARY KEY, who text);
INSERT INTO docs VALUES (1, 'acme-1'), (2, 'acme-2');
ALTER TABLE docs OWNER TO regress_owner;
SELECT tenancy.protect('docs', backfill_tenant => 'acme');
CREATE TABLE events (id int, tenant_id uuid NOT NULL, who text) PARTITION BY LIST (id);
CREATE TABLE events_1 PARTITION OF events FOR VALUES IN (1);
CREATE TABLE events_2 PARTITION OF events FOR VALUES IN (2);
ALTER TABLE events OWNER TO regress_owner;
ALTER TABLE events_1 OWNER TO regress_owner;
ALTER TABLE events_2 OWNER TO regress_owner;
SELECT tenancy.protect('events');
INSERT INTO events VALUES (1, tenancy.tenant_id('acme'), 'acme'), (2, tenancy.tenant_id('bolt'), 'bolt');
INSERT INTO docs (id, tenant_id, who) VALUES (3, tenancy.tenant_id('bolt'), 'bolt-3');
CREATE TABLE notes (id int, tenant_id uuid NOT NULL, who text);
CREATE TABLE notes_child () INHERITS (notes);
ALTER TABLE notes OWNER TO regress_owner;
ALTER TABLE notes_child OWNER TO regress_owner;
SELECT tenancy.protect('notes');
INSERT INTO notes_child VALUES (1, tenancy.tenant_id('acme'), 'acme'), (2, tenancy.tenant_id('bolt'), 'bolt');
CREATE POLICY regress_own ON docs USING (true);
DROP POLICY tenancy_allow ON docs;
-- A partition detached and attached again.
CREATE TABLE events_3 PARTITION OF events FOR VALUES IN (3);
ALTER TABLE events_3 OWNER TO regress_owner;
ALTER TABLE events DETACH PARTITION events_3;
ALTER TABLE events ATTACH PARTITION events_3 FOR VALUES IN (3);
INSERT INTO events VALUES (3, tenancy.tenant_id('acme'), 'acme-3');
});

my $dump = $node->basedir . '/src.dump';
$node->command_ok([ 'pg_dump', '-Fc', '-f', $dump, '-d', 'src' ], 'pg_dump');
$node->safe_psql('postgres', 'CREATE DATABASE dst');
$node->command_ok([ 'pg_restore', '--exit-on-error', '-d', 'dst', $dump ],
	'pg_restore passes the DDL guard');

is($node->safe_psql('dst',
	q{SELECT string_agg(relid::text || ':' || tenant_column, ',' ORDER BY relid::text) FROM tenancy.protected_tables}),
	'docs:tenant_id,events:tenant_id,events_1:tenant_id,events_2:tenant_id,events_3:tenant_id,notes:tenant_id,notes_child:tenant_id',
	'the restored tables are listed');
is($node->safe_psql('dst',
	'SELECT count(*) FROM tenancy._protected_problems()'),
	'0', 'and intact');
is($node->safe_psql('dst',
	q{SELECT string_agg(polname, ',' ORDER BY polname) FROM pg_policy WHERE polrelid = 'docs'::regclass}),
	'regress_own,tenancy_isolation', 'the policies are those of the source');

# Isolation holds in the restored database.
is($node->safe_psql('dst', q{
SELECT set_config('app.tenant_id', tenancy.tenant_id('acme')::text, false) IS NOT NULL;
SET ROLE regress_owner;
SELECT string_agg(who, ',' ORDER BY id) FROM docs;
SELECT string_agg(who, ',') FROM events_2;
SELECT string_agg(who, ',' ORDER BY id) FROM events;
SELECT string_agg(who, ',') FROM notes_child;
}), "t\nacme-1,acme-2\n\nacme,acme-3\nacme", 'isolation holds after the restore (an inheritance child too)');
is($node->safe_psql('dst', q{SELECT used FROM tenancy.check_quota('rows:events', tenant => 'acme')}),
	'2', 'rows of a partition attached again count for its root');

# And the DDL guard too.
my ($ret, $stdout, $stderr) = $node->psql('dst', q{
\set VERBOSITY verbose
SET ROLE regress_owner;
ALTER TABLE docs DISABLE ROW LEVEL SECURITY;
});
like($stderr, qr/ERROR:\s+42501: tenancy: public\.docs is protected/,
	'weakening a restored table is refused');
($ret, $stdout, $stderr) = $node->psql('dst', q{
\set VERBOSITY verbose
DROP POLICY tenancy_isolation ON events_1;
});
like($stderr, qr/ERROR:\s+42501: tenancy: public\.events_1 is protected/,
	'also on a restored partition');

$node->stop;
done_testing();
