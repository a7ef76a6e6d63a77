# API keys outside one regression session: no key in any server log line
# (with log_statement off and on), keys surviving pg_dump/pg_restore, and
# last_used_at written at most once a minute.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('apikeys');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'tenancy,pg_cron'
cron.database_name = 'postgres'
log_min_messages = info
log_min_error_statement = error
log_error_verbosity = verbose
log_statement = 'none'
});
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION tenancy CASCADE');
$node->safe_psql('postgres', "SELECT tenancy.create_tenant('acme')");
my $key = $node->safe_psql('postgres', "SELECT tenancy.create_api_key('acme', 'main')");
like($key, qr/^tk_[0-9A-Za-z]{38}$/, 'a key is tk_ and 38 base62 characters');

# Keys that must never reach the log: a real one, one with a bad checksum,
# a well-formed unknown one, and plain garbage.
my $last = substr($key, -1) eq 'A' ? 'B' : 'A';
my $bad_checksum = substr($key, 0, 40) . $last;
my $unknown = $node->safe_psql('postgres',
	"SELECT tenancy.create_api_key('acme', 'doomed')");
$node->safe_psql('postgres', "DELETE FROM tenancy.api_keys WHERE name = 'doomed'");
my $garbage = 'Secret-Garbage-0123456789';

sub try_auth
{
	my ($k) = @_;
	my ($ret, $out, $err) = $node->psql('postgres', "SELECT tenancy.authenticate('$k')");
	return ($ret, $err);
}

# 1. Default logging: the failed statement is not logged, the error never
# echoes the key.
my $offset = -s $node->logfile;
for my $k ($bad_checksum, $unknown, $garbage)
{
	my ($ret, $err) = try_auth($k);
	isnt($ret, 0, 'a bad key fails');
	like($err, qr/ERROR:\s+tenancy: invalid API key/, 'one message');
	unlike($err, qr/\Q$k\E/, 'the error does not echo the key');
}
$node->psql('postgres', "SELECT * FROM tenancy.verify_api_key('$garbage')");
# The cause goes to the server log only, even to a client asking for LOG.
my ($r2, $o2, $e2) = $node->psql('postgres',
	"SET client_min_messages = debug5; SELECT tenancy.authenticate('$unknown')");
like($e2, qr/ERROR:\s+tenancy: invalid API key/, 'a client asking for LOG messages');
unlike($e2, qr/refused|unknown|prefix/i, 'is not told the cause');
# Another error in a statement holding a key: no STATEMENT line either.
$node->psql('postgres', "SELECT 1/0, '$key'");
my ($ret) = try_auth($key);
is($ret, 0, 'the good key authenticates');

my $log = slurp_file($node->logfile, $offset);
like($log, qr/LOG:\s+(\w+: )?tenancy: API key refused by authenticate: unknown/,
	'a refusal is logged with its cause');
like($log, qr/DETAIL:\s+Key prefix \Q@{[substr($unknown, 0, 11)]}\E\./,
	'with the display prefix');
like($log, qr/division by zero/, 'the other error is logged');
for my $k ($key, $bad_checksum, $unknown, $garbage)
{
	unlike($log, qr/\Q$k\E/, 'no log line holds the key (default logging)');
	unlike($log, qr/\Q@{[substr($k, 11)]}\E/, 'nor its secret part');
}
unlike($log, qr/STATEMENT:.*authenticate/, 'no STATEMENT line for authenticate');

# 2. log_statement = 'all': statements are logged, key-shaped strings are
# cut to their prefix.
$node->append_conf('postgresql.conf', "log_statement = 'all'");
$node->reload;
$offset = -s $node->logfile;
for my $k ($bad_checksum, $unknown)
{
	try_auth($k);
}
try_auth($key);
$node->psql('postgres', "SELECT * FROM tenancy.verify_api_key('$key')");
$log = slurp_file($node->logfile, $offset);
like($log, qr/statement: SELECT tenancy.authenticate\('tk_\w{8}\.\.\.\(redacted\)'\)/,
	'log_statement shows the statement with the key redacted');
for my $k ($key, $bad_checksum, $unknown)
{
	unlike($log, qr/\Q@{[substr($k, 11)]}\E/,
		'no log line holds the secret part of a key (log_statement = all)');
}
$node->append_conf('postgresql.conf', "log_statement = 'none'");
$node->reload;

# 3. Failures are counted by cause.
my $counts = $node->safe_psql('postgres',
	"SELECT string_agg(cause || '=' || failures, ',' ORDER BY cause) FROM tenancy._auth_failures()");
like($counts, qr/malformed=[1-9]/, 'malformed failures counted');
like($counts, qr/unknown=[1-9]/, 'unknown failures counted');

# 4. last_used_at: written by the first verification, not again within a
# minute (by this or another backend), again once a minute old.
$node->safe_psql('postgres', "UPDATE tenancy.api_keys SET last_used_at = NULL WHERE name = 'main'");
my $xmin0 = $node->safe_psql('postgres', "SELECT xmin FROM tenancy.api_keys WHERE name = 'main'");
$node->safe_psql('postgres', "SELECT * FROM tenancy.verify_api_key('$key')");
my $xmin1 = $node->safe_psql('postgres', "SELECT xmin FROM tenancy.api_keys WHERE name = 'main'");
isnt($xmin1, $xmin0, 'the first verification writes last_used_at');
is($node->safe_psql('postgres',
	"SELECT last_used_at > now() - interval '1 minute' FROM tenancy.api_keys WHERE name = 'main'"),
	't', 'last_used_at is recent');
$node->safe_psql('postgres',
	"SELECT * FROM tenancy.verify_api_key('$key'); SELECT tenancy.authenticate('$key');");
is($node->safe_psql('postgres', "SELECT xmin FROM tenancy.api_keys WHERE name = 'main'"),
	$xmin1, 'later verifications within the minute write nothing');
$node->safe_psql('postgres',
	"UPDATE tenancy.api_keys SET last_used_at = now() - interval '61 seconds' WHERE name = 'main'");
$node->safe_psql('postgres', "SELECT * FROM tenancy.verify_api_key('$key')");
is($node->safe_psql('postgres',
	"SELECT last_used_at > now() - interval '1 minute' FROM tenancy.api_keys WHERE name = 'main'"),
	't', 'a minute later, a verification writes it again');
# Not in a read-only transaction, where it cannot.
$node->safe_psql('postgres',
	"UPDATE tenancy.api_keys SET last_used_at = now() - interval '61 seconds' WHERE name = 'main'");
is($node->safe_psql('postgres',
	"BEGIN READ ONLY; SELECT count(*) FROM tenancy.verify_api_key('$key'); COMMIT;"),
	'1', 'verification works in a read-only transaction');
is($node->safe_psql('postgres',
	"BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM tenancy.verify_api_key('$key'); COMMIT;"),
	'1', 'and in a repeatable read one');
is($node->safe_psql('postgres',
	"SELECT last_used_at < now() - interval '1 minute' FROM tenancy.api_keys WHERE name = 'main'"),
	't', 'neither writes last_used_at');

# 5. Keys survive pg_dump and pg_restore.
my $dump = $node->basedir . '/tenancy.dump';
$node->command_ok([ 'pg_dump', '-Fc', '-f', $dump, '-d', $node->connstr('postgres') ],
	'pg_dump');
$node->safe_psql('postgres', 'CREATE DATABASE restored');
$node->command_ok([ 'pg_restore', '-d', $node->connstr('restored'), $dump ], 'pg_restore');
is($node->safe_psql('restored',
	"SELECT t.slug FROM tenancy.verify_api_key('$key') v JOIN tenancy.tenants t ON t.id = v.tenant_id"),
	'acme', 'the key verifies in the restored database');
is($node->safe_psql('restored', "SELECT tenancy.authenticate('$key') = tenancy.tenant_id('acme')"),
	't', 'and authenticates there');

$node->stop;
done_testing();
