# The routes to app.tenant_id that need a connection of their own: options
# in the startup packet (PGOPTIONS), ALTER ROLE/DATABASE ... SET applied at
# login, postgresql.conf (at start-up and on reload) and ALTER SYSTEM.  An
# unprivileged login never gets a context by any of them: refused at the
# check hook where it can judge (connection refused, or a WARNING at login
# and the value not applied), else refused where the value is used.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $acme = 'a0000000-0000-4000-8000-000000000001';
my $globex = 'b0000000-0000-4000-8000-000000000002';

my $node = PostgreSQL::Test::Cluster->new('routes');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'tenancy,pg_cron'
cron.database_name = 'postgres'
log_error_verbosity = verbose
});
$node->start;

$node->safe_psql('postgres', qq{
CREATE EXTENSION tenancy CASCADE;
INSERT INTO tenancy.tenants (id, slug, name, plan) VALUES
    ('$acme', 'acme', 'Acme', 'free'), ('$globex', 'globex', 'Globex', 'free');
CREATE ROLE regress_user LOGIN;
CREATE ROLE regress_app LOGIN IN ROLE tenancy_app;
CREATE TABLE docs (body text);
SELECT tenancy.protect('docs');
GRANT SELECT, INSERT ON docs TO PUBLIC;
INSERT INTO docs (tenant_id, body) VALUES ('$acme', 'acme 1'), ('$acme', 'acme 2'), ('$globex', 'globex 1');
CREATE DATABASE other;
});
$node->safe_psql('other', qq{
CREATE EXTENSION tenancy CASCADE;
INSERT INTO tenancy.tenants (id, slug, name, plan) VALUES
    ('$acme', 'acme', 'Acme', 'free'), ('$globex', 'globex', 'Globex', 'free');
});

my $connstr = $node->connstr('postgres');

# Run SQL as a role with extra connection options; return (ret, out, err).
sub run_as
{
	my ($role, $options, $sql, $db) = @_;
	my $cs = $node->connstr($db // 'postgres') . " user=$role";
	$cs .= " options='$options'" if defined $options && $options ne '';
	my ($ret, $out, $err) = $node->psql('postgres', $sql,
		connstr => $cs, on_error_stop => 0,
		extra_params => [ '-v', 'VERBOSITY=verbose' ]);
	return ($ret, $out, $err);
}

my ($ret, $out, $err, $log_offset);

# --- PGOPTIONS ------------------------------------------------------------
$log_offset = -s $node->logfile;
($ret, $out, $err) = run_as('regress_user', "-c app.tenant_id=$acme", 'SELECT 1');
isnt($ret, 0, 'PGOPTIONS: an unprivileged login with a context is refused');
like($err, qr/FATAL:\s+tenancy: permission denied to set app.tenant_id/,
	'PGOPTIONS: the check hook refuses it');
ok($node->log_contains(qr/FATAL:  42501: tenancy: permission denied to set app.tenant_id/, $log_offset),
	'PGOPTIONS: with SQLSTATE 42501');

($ret, $out, $err) = run_as('regress_user', '-c app.tenant_id=not-a-uuid', 'SELECT 1');
like($err, qr/FATAL:\s+tenancy: app.tenant_id must be a uuid or empty/,
	'PGOPTIONS: a malformed value is refused, whoever connects');

($ret, $out, $err) = run_as('regress_user',
	"-c tenancy.session_binding=$acme:$globex", 'SELECT 1');
like($err, qr/FATAL:\s+permission denied to set parameter "tenancy.session_binding"/,
	'PGOPTIONS: an unprivileged login cannot bind itself');

($ret, $out, $err) = run_as('regress_user', "-c app.tenant_id=", 'SHOW app.tenant_id');
is($ret, 0, 'PGOPTIONS: anyone may connect with an empty context');

($ret, $out, $err) = run_as('regress_app', "-c app.tenant_id=" . uc($acme),
	'SHOW app.tenant_id; SELECT string_agg(body, \',\' ORDER BY body) FROM docs;');
is($ret, 0, 'PGOPTIONS: a member of tenancy_app connects with a context');
is($out, "$acme\nacme 1,acme 2", 'PGOPTIONS: canonical value, isolated rows');

# --- ALTER ROLE / ALTER DATABASE ... SET applied at login ----------------
$node->safe_psql('postgres', qq{
ALTER ROLE regress_user SET app.tenant_id = '$acme';
ALTER ROLE regress_app SET app.tenant_id = '$acme';
});
# (Warnings at connection time reach psql before its VERBOSITY applies:
# the SQLSTATE is read from the server log.)
$log_offset = -s $node->logfile;
($ret, $out, $err) = run_as('regress_user', undef,
	"SHOW app.tenant_id;\nSELECT count(*) FROM docs;");
like($err, qr/WARNING:\s+tenancy: permission denied to set app.tenant_id/,
	'ALTER ROLE SET: refused at login with a WARNING (the hook did not throw)');
ok($node->log_contains(qr/WARNING:  42501: tenancy: permission denied to set app.tenant_id/, $log_offset),
	'ALTER ROLE SET: with SQLSTATE 42501');
like($out, qr/^$/m, 'ALTER ROLE SET: the login has no context');
like($err, qr/ERROR:\s+TN001: tenancy: no tenant context/,
	'ALTER ROLE SET: a protected table fails closed');
($ret, $out, $err) = run_as('regress_app', undef,
	"SHOW app.tenant_id;\nSELECT count(*) FROM docs;");
is($out, "$acme\n2", 'ALTER ROLE SET: applied for a member of tenancy_app');
$node->safe_psql('postgres', qq{
ALTER ROLE regress_user RESET app.tenant_id;
ALTER ROLE regress_app RESET app.tenant_id;
ALTER ROLE regress_user IN DATABASE other SET app.tenant_id = '$globex';
ALTER DATABASE other SET app.tenant_id = '$acme';
});
($ret, $out, $err) = run_as('regress_user', undef,
	"SHOW app.tenant_id;\nSELECT tenancy.current_tenant_id();", 'other');
my @warnings = ($err =~ /WARNING:\s+tenancy: permission denied to set app.tenant_id/g);
is(scalar(@warnings), 2,
	'ALTER DATABASE SET and ALTER ROLE IN DATABASE SET: both refused at login');
like($err, qr/ERROR:\s+TN001/, 'ALTER DATABASE SET: no context');
is($out, '', 'ALTER DATABASE SET: app.tenant_id stays empty');
($ret, $out, $err) = run_as('regress_app', undef,
	"SELECT tenancy.current_tenant_id();", 'other');
is($out, $acme, 'ALTER DATABASE SET: applied for a member of tenancy_app');
# An unprivileged role cannot store a context for itself either.
($ret, $out, $err) = run_as('regress_user', undef,
	"ALTER ROLE regress_user SET app.tenant_id = '$acme';");
like($err, qr/ERROR:\s+42501: tenancy: permission denied to set app.tenant_id/,
	'ALTER ROLE SET by the role itself: 42501');
$node->safe_psql('postgres', qq{
ALTER ROLE regress_user IN DATABASE other RESET app.tenant_id;
ALTER DATABASE other RESET app.tenant_id;
});

# --- postgresql.conf and reload: slips past the hook, caught at use -------
$node->append_conf('postgresql.conf', "app.tenant_id = '$acme'");
$node->reload;
$node->poll_query_until('postgres', "SELECT current_setting('app.tenant_id') = '$acme'")
  or die 'reload not seen';
($ret, $out, $err) = run_as('regress_user', undef,
	"SHOW app.tenant_id;\nSELECT tenancy.current_tenant_id();\nSELECT count(*) FROM docs;");
is($out, $acme, 'postgresql.conf + reload: the value reaches an unprivileged session');
my @denied = ($err =~ /ERROR:\s+42501: tenancy: permission denied to act for this tenant/g);
is(scalar(@denied), 2,
	'postgresql.conf + reload: current_tenant_id() and the protected table refuse it (42501)');
($ret, $out, $err) = run_as('regress_app', undef, "SELECT count(*) FROM docs;");
is($out, '2', 'postgresql.conf + reload: a member of tenancy_app may use it');

# A session that was open during the reload gets it too, and is refused.
my $bg = $node->background_psql('postgres',
	extra_params => [ '-U', 'regress_user', '-v', 'VERBOSITY=verbose' ],
	on_error_stop => 0);
$node->adjust_conf('postgresql.conf', 'app.tenant_id', "'$globex'");
$node->reload;
$node->poll_query_until('postgres', "SELECT current_setting('app.tenant_id') = '$globex'")
  or die 'reload not seen';
# A backend applies a reload before the next command it reads.
$out = $bg->query("SHOW app.tenant_id");
is($out, $globex, 'reload: an open session sees the new value');
$bg->query("SELECT tenancy.current_tenant_id()");
like($bg->{stderr}, qr/42501: tenancy: permission denied to act for this tenant/,
	'reload: the open unprivileged session is refused where the value is used');
$bg->quit;

# --- postgresql.conf at start-up ---------------------------------------
$node->restart;
($ret, $out, $err) = run_as('regress_user', undef,
	"SELECT count(*) FROM docs;");
like($err, qr/42501: tenancy: permission denied to act for this tenant/,
	'postgresql.conf at start-up: refused where used');
($ret, $out, $err) = run_as('regress_app', undef, "SELECT tenancy.current_tenant_id();");
is($out, $globex, 'postgresql.conf at start-up: applied for a member of tenancy_app');

# A malformed value in postgresql.conf does not stop the server.
$node->adjust_conf('postgresql.conf', 'app.tenant_id', "'not-a-uuid'");
$log_offset = -s $node->logfile;
$node->restart;
ok($node->log_contains(qr/tenancy: app.tenant_id must be a uuid or empty/, $log_offset),
	'a malformed value at start-up is reported');
is($node->safe_psql('postgres', 'SHOW app.tenant_id'), '',
	'a malformed value at start-up is not applied');
$log_offset = -s $node->logfile;
$node->adjust_conf('postgresql.conf', 'app.tenant_id', "'still-not-a-uuid'");
$node->reload;
$node->poll_query_until('postgres',
	"SELECT count(*) > 0 FROM pg_file_settings WHERE name = 'app.tenant_id' AND NOT applied")
  or die 'reload not seen';
is($node->safe_psql('postgres', 'SHOW app.tenant_id'), '',
	'a malformed value on reload is not applied');
$node->adjust_conf('postgresql.conf', 'app.tenant_id', "''");
$node->reload;

# --- ALTER SYSTEM + reload: as postgresql.conf ------------------------------
$node->safe_psql('postgres', "ALTER SYSTEM SET app.tenant_id = '$acme'; SELECT pg_reload_conf();");
$node->poll_query_until('postgres', "SELECT current_setting('app.tenant_id') = '$acme'")
  or die 'reload not seen';
($ret, $out, $err) = run_as('regress_user', undef, "SELECT count(*) FROM docs;");
like($err, qr/42501: tenancy: permission denied to act for this tenant/,
	'ALTER SYSTEM + reload: refused where used');
$node->safe_psql('postgres', "ALTER SYSTEM RESET app.tenant_id; SELECT pg_reload_conf();");

# --- A suspension takes effect at the next transaction of a session ------
$node->poll_query_until('postgres', "SELECT current_setting('app.tenant_id') = ''")
  or die 'reload not seen';
$bg = $node->background_psql('postgres',
	extra_params => [ '-U', 'regress_app', '-v', 'VERBOSITY=verbose' ],
	on_error_stop => 0);
$bg->query_safe("SET app.tenant_id = '$acme'; BEGIN;");
is($bg->query_safe('SELECT count(*) FROM docs'), '2', 'open transaction works');
$node->safe_psql('postgres',
	"UPDATE tenancy.tenants SET status = 'suspended' WHERE id = '$acme'");
is($bg->query_safe('SELECT count(*) FROM docs'), '2',
	'the open transaction keeps working after the suspension');
$bg->query_safe('COMMIT');
$bg->query('SELECT count(*) FROM docs');
like($bg->{stderr}, qr/TN003: tenancy: tenant is suspended/,
	'the next transaction fails with TN003');
$bg->quit;

$node->stop;
done_testing();
