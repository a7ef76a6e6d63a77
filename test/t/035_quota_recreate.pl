# Shared memory outlives an extension dropped from a database.  When
# tenancy is created again there (CREATE EXTENSION, or a pg_restore into
# the same database), quota usage is what the new ledger says, not what the
# old counters and their waiting deltas held; rate buckets start full.  A
# ledger loaded by pg_restore --data-only is read again too.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('quota_recreate');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'tenancy,pg_cron'
cron.database_name = 'postgres'
});
$node->start;
$node->safe_psql('postgres', 'CREATE DATABASE same');
$node->safe_psql('same', q{
CREATE EXTENSION tenancy CASCADE;
SELECT tenancy.create_tenant('acme');
SELECT tenancy.set_tenant_quota('acme', 'widgets', 100);
SELECT tenancy.set_tenant_rate_limit('acme', 'calls', 0.001, 2);
});
my $tid = $node->safe_psql('same', "SELECT tenancy.tenant_id('acme')");

# As acme: consume (written to the ledger at commit, or left waiting in
# shared memory), and what the counters and the ledger say.
sub as_acme
{
	my ($sql) = @_;
	return $node->safe_psql('same', "SET app.tenant_id = '$tid'; $sql");
}
my $used = q{SELECT used FROM tenancy.check_quota('widgets')};
my $ledger = q{SELECT coalesce(sum(delta), 0) FROM tenancy.quota_ledger WHERE resource = 'widgets'};

as_acme(q{SET tenancy.synchronous_quota_commit = on; SELECT tenancy.consume_quota('widgets', 3);});
is($node->safe_psql('same', $ledger), '3', 'the first 3 are in the ledger');
my $dump = $node->basedir . '/same.dump';
$node->command_ok([ 'pg_dump', '-Fc', '-f', $dump, '-d', $node->connstr('same') ], 'pg_dump');

# 5 more, left waiting in shared memory; the bucket emptied.
as_acme(q{SELECT tenancy.consume_quota('widgets', 5);});
is(as_acme($used), '8', 'then 8 are used');
is(as_acme(q{SELECT tenancy.check_rate('calls', 2)}), 't', 'the bucket is emptied');
is(as_acme(q{SELECT tenancy.check_rate('calls')}), 'f', 'and empty');

# Dropped, and restored into the same database.
$node->safe_psql('same', q{
DROP EXTENSION tenancy;
DROP EXTENSION pgcrypto;
DROP SCHEMA tenancy;
});
$node->command_ok([ 'pg_restore', '--exit-on-error', '-d', $node->connstr('same'), $dump ],
	'pg_restore into the same database');
is(as_acme($used), '3', 'usage after the restore is what the dump had');
# rollup_usage() writes every waiting delta of the database: none is left
# of the dropped extension.
$node->safe_psql('same', q{SELECT tenancy.rollup_usage()});
is($node->safe_psql('same', $ledger), '3', 'and no delta of the dropped extension reaches the ledger');
is(as_acme($used), '3', 'usage is still 3');
is(as_acme(q{SELECT tokens FROM tenancy.rate_status('calls')}), '2', 'the bucket is full again');

# A plain DROP EXTENSION and CREATE EXTENSION, the same tenant id again.
as_acme(q{SELECT tenancy.consume_quota('widgets', 4);});
is(as_acme($used), '7', '7 used');
$node->safe_psql('same', qq{
DROP EXTENSION tenancy;
CREATE EXTENSION tenancy;
INSERT INTO tenancy.tenants (id, slug, name, plan) VALUES ('$tid', 'acme', 'acme', 'free');
SELECT tenancy.set_tenant_quota('acme', 'widgets', 100);
});
is(as_acme($used), '0', 'nothing is used in the extension created again');
$node->safe_psql('same', q{SELECT tenancy.rollup_usage()});
is($node->safe_psql('same', $ledger), '0', 'and its ledger stays empty');

# pg_restore --data-only of the ledger into the existing extension: the
# counters are read from the ledger again.
as_acme(q{SET tenancy.synchronous_quota_commit = on; SELECT tenancy.consume_quota('widgets', 6);});
is(as_acme($used), '6', '6 used');
$node->safe_psql('same', q{TRUNCATE tenancy.quota_ledger});
is(as_acme($used), '0', 'a ledger truncated by hand is read again');
$node->command_ok([ 'pg_restore', '--exit-on-error', '--data-only', '-t', 'quota_ledger',
	'-d', $node->connstr('same'), $dump ], 'pg_restore --data-only of the ledger');
is(as_acme($used), '3', 'a ledger loaded by pg_restore --data-only is read again');

# The function that forgets is only for CREATE EXTENSION.
my ($ret, $out, $err) = $node->psql('same', q{SELECT tenancy._forget_database_state()});
like($err, qr/only while the extension is created/, 'nobody else may make shared memory forget');
is(as_acme($used), '3', 'usage is kept');

$node->stop;
done_testing();
