# pg_dump / pg_restore of a database with tenancy and a protected table,
# restored into a fresh database on another preloaded server: tenants, added
# plans, protected_tables and audit_log come back, and isolation still holds.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $conf = qq{
shared_preload_libraries = 'tenancy,pg_cron'
cron.database_name = 'postgres'
};
my $roles = qq{
CREATE ROLE regress_user LOGIN;
CREATE ROLE tenancy_app NOLOGIN;
CREATE ROLE regress_app LOGIN IN ROLE tenancy_app;
};

my $src = PostgreSQL::Test::Cluster->new('source');
$src->init;
$src->append_conf('postgresql.conf', $conf);
$src->start;
$src->safe_psql('postgres', $roles);
$src->safe_psql('postgres', 'CREATE DATABASE app');
$src->safe_psql('app', q{
CREATE EXTENSION tenancy CASCADE;
INSERT INTO tenancy.plans (name, description, features) VALUES ('team', 'Team plan', '{sso}');
SELECT tenancy.create_tenant('acme', 'Acme Inc', 'team', '{"region": "eu"}');
SELECT tenancy.create_tenant('globex');
CREATE TABLE docs (id int PRIMARY KEY, body text);
SELECT tenancy.protect('docs');
GRANT SELECT, INSERT, UPDATE, DELETE ON docs TO PUBLIC;
});
my $acme = $src->safe_psql('app', "SELECT tenancy.tenant_id('acme')");
my $globex = $src->safe_psql('app', "SELECT tenancy.tenant_id('globex')");
$src->safe_psql('app', qq{
SET ROLE regress_app;
SET app.tenant_id = '$acme';
INSERT INTO docs (id, body) VALUES (1, 'acme 1'), (2, 'acme 2');
SET app.tenant_id = '$globex';
INSERT INTO docs (id, body) VALUES (3, 'globex 1');
});

# What should survive.
my $state_sql = q{
SELECT string_agg(format('%s %s %s %s %s', id, slug, name, plan, metadata), ',' ORDER BY slug) FROM tenancy.tenants;
SELECT string_agg(name, ',' ORDER BY name) FROM tenancy.plans;
SELECT string_agg(format('%s %s', relid, tenant_column), ',') FROM tenancy.protected_tables;
SELECT string_agg(format('%s %s %s %s', id, actor, action, target), ',' ORDER BY id) FROM tenancy.audit_log;
SELECT string_agg(format('%s %s %s', polname, polpermissive, pg_get_expr(polqual, polrelid)), ',' ORDER BY polname)
  FROM pg_policy WHERE polrelid = 'docs'::regclass;
SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = 'docs'::regclass;
SELECT string_agg(tgname, ',' ORDER BY tgname) FROM pg_trigger WHERE tgrelid = 'docs'::regclass AND NOT tgisinternal;
SELECT pg_get_expr(adbin, adrelid) FROM pg_attrdef WHERE adrelid = 'docs'::regclass;
SELECT count(*) FROM docs;
};
my $before = $src->safe_psql('app', $state_sql);
like($before, qr/ team /, 'the source has the added plan');
like($before, qr/tenant\.create/, 'the source has audit rows');
like($before, qr/^docs tenant_id$/m, 'the source has the protected table');

my $dump = PostgreSQL::Test::Utils::tempdir() . '/app.dump';
$src->command_ok([ 'pg_dump', '-Fc', '-f', $dump, '-d', $src->connstr('app') ],
	'pg_dump of a database with tenancy and a protected table');

my $dst = PostgreSQL::Test::Cluster->new('restored');
$dst->init;
$dst->append_conf('postgresql.conf', $conf);
$dst->start;
$dst->safe_psql('postgres', $roles);
$dst->safe_psql('postgres', 'CREATE DATABASE plain');
$dst->safe_psql('postgres', 'CREATE DATABASE app');
my ($stdout, $stderr);

# A plain pg_restore works: the DDL guard refuses only what a command itself
# weakens, and the restore re-creates protection rather than weakening it.
{
	my $plain_ok = IPC::Run::run(
		[ 'pg_restore', '--exit-on-error', '-d', $dst->connstr('plain'), $dump ],
		'>', \$stdout, '2>', \$stderr);
	ok($plain_ok, 'a plain pg_restore succeeds') or diag($stderr);
	is($dst->safe_psql('plain', $state_sql), $before,
		'a plain pg_restore keeps tenants, protected tables, policies, triggers and rows');
}

# Restoring with session_replication_role = replica (superuser only) keeps
# event triggers and triggers from firing while the dump is replayed.
{
	local $ENV{PGOPTIONS} = '-c session_replication_role=replica';
	my $ok = IPC::Run::run(
		[ 'pg_restore', '--exit-on-error', '-d', $dst->connstr('app'), $dump ],
		'>', \$stdout, '2>', \$stderr);
	ok($ok, 'pg_restore into a fresh database succeeds');
	is($stderr, '', 'pg_restore reports nothing');
}

my $after = $dst->safe_psql('app', $state_sql);
is($after, $before, 'tenants, plans, protected_tables, audit_log, policies, triggers and rows survive');

# The audit log goes on from where it was.
$dst->safe_psql('app', "SELECT tenancy.suspend_tenant('globex', 'test')");
is($dst->safe_psql('app',
	"SELECT count(DISTINCT id) = count(*) AND max(id) > (SELECT max(id) FROM tenancy.audit_log WHERE action <> 'tenant.suspend') FROM tenancy.audit_log"),
	't', 'audit_log ids continue after the restore');
$dst->safe_psql('app', "SELECT tenancy.activate_tenant('globex')");

# Isolation still holds after the restore.
sub as_role
{
	my ($node, $role, $sql) = @_;
	my ($ret, $out, $err) = $node->psql('app', $sql,
		connstr => $node->connstr('app') . " user=$role",
		on_error_stop => 0, extra_params => [ '-v', 'VERBOSITY=verbose' ]);
	return ($out, $err);
}
my ($out, $err) = as_role($dst, 'regress_user', 'SELECT count(*) FROM docs');
like($err, qr/TN001: tenancy: no tenant context/, 'restored: no context fails closed');
($out, $err) = as_role($dst, 'regress_user', "SET app.tenant_id = '$acme'");
like($err, qr/42501: tenancy: permission denied to set app.tenant_id/,
	'restored: an unprivileged role cannot set the context');
($out, $err) = as_role($dst, 'regress_app',
	"SET app.tenant_id = '$acme'; SET ROLE regress_user; SELECT string_agg(body, ',' ORDER BY id) FROM docs;");
is($out, 'acme 1,acme 2', 'restored: the context tenant sees its own rows only');
($out, $err) = as_role($dst, 'regress_app',
	"SET app.tenant_id = '$acme'; SET ROLE regress_user; INSERT INTO docs (id, body) VALUES (4, 'acme 3') RETURNING tenant_id;");
is($out, $acme, 'restored: inserts get the context tenant');
($out, $err) = as_role($dst, 'regress_app',
	"SET app.tenant_id = '$acme'; SET ROLE regress_user; INSERT INTO docs (id, body, tenant_id) VALUES (5, 'forged', '$globex');");
like($err, qr/ERROR:\s+42501/, 'restored: a row of another tenant is refused');
($out, $err) = as_role($dst, 'regress_app',
	"SET app.tenant_id = '$globex'; SET ROLE regress_user; UPDATE docs SET body = 'x' WHERE id = 1; SELECT string_agg(body, ',' ORDER BY id) FROM docs;");
is($out, "globex 1", 'restored: another tenant cannot touch them');

$src->stop;
$dst->stop;
done_testing();
