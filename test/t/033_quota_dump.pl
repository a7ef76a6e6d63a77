# pg_dump and restore keep limits, rate limits and usage: the ledger is a
# configuration table of the extension.  The restored database has its own
# counters in shared memory (they are per database).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('quota_dump');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'tenancy,pg_cron'
cron.database_name = 'postgres'
});
$node->start;
$node->safe_psql('postgres', 'CREATE DATABASE source');
$node->safe_psql('source', q{
CREATE EXTENSION tenancy CASCADE;
SELECT tenancy.create_tenant('dumped');
CREATE TABLE d_rows (id int, body text);
SELECT tenancy.protect('d_rows');
SELECT tenancy.set_plan_quota('free', 'rows:d_rows', 5);
SELECT tenancy.set_tenant_quota('dumped', 'jobs', 10, 'month');
SELECT tenancy.set_plan_rate_limit('free', 'calls', 2, 4);
SELECT tenancy.set_tenant('dumped');
INSERT INTO d_rows VALUES (1, 'a'), (2, 'b'), (3, 'c');
SELECT tenancy.consume_quota('jobs', 4);
});

my $usage = q{SET app.tenant_id = '%s';
SELECT string_agg(resource || '=' || used || '/' || coalesce(quota_limit::text, '-'), ' ' ORDER BY resource)
  FROM tenancy.quota_usage()};
my $tid = $node->safe_psql('source', "SELECT tenancy.tenant_id('dumped')");
my $before = $node->safe_psql('source', sprintf($usage, $tid));
like($before, qr/^jobs=4\/10 rows:d_rows=3\/5 storage_bytes=\d+\/-$/, "usage in the source: $before");

my $dump = $node->basedir . '/source.dump';
$node->command_ok([ 'pg_dump', '-Fc', '-f', $dump, '-d', $node->connstr('source') ], 'pg_dump');
$node->safe_psql('postgres', 'CREATE DATABASE target');
# (Whether the protected tables' triggers and policies come back whole is
# the protected-tables area's test; here: tenancy's own tables.)
$node->command_ok([ 'pg_restore', '-d', $node->connstr('target'), '--section=pre-data',
	'--section=data', $dump ], 'pg_restore of schema and data');

is($node->safe_psql('target', sprintf($usage, $tid)), $before, 'the same usage and limits after restore');
is($node->safe_psql('target', q{SELECT per_second || '/' || burst FROM tenancy.plan_rate_limits WHERE resource = 'calls'}),
	'2/4', 'rate limits restored');
# The two databases count separately: 6 jobs left in the target, taken
# there; the source still has its own 6.
$node->safe_psql('target', qq{SET app.tenant_id = '$tid'; SELECT tenancy.consume_quota('jobs', 6);});
my ($ret, $out, $err) = $node->psql('target', qq{SET app.tenant_id = '$tid'; SELECT tenancy.consume_quota('jobs', 1);});
like($err, qr/quota exceeded/, 'the restored limit and usage hold in the target');
is($node->safe_psql('source', qq{SET app.tenant_id = '$tid'; SELECT used FROM tenancy.check_quota('jobs')}),
	'4', 'the source is unaffected (counters are per database)');

$node->stop;
done_testing();
