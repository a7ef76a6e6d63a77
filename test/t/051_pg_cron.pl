# schedule_maintenance() with the real pg_cron: the job runs
# tenancy.run_maintenance(), which folds the recorded usage.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('usage_cron');
$node->init;
$node->append_conf('postgresql.conf', q{
shared_preload_libraries = 'tenancy,pg_cron'
cron.database_name = 'postgres'
cron.use_background_workers = on
max_worker_processes = 16
});
$node->start;
$node->safe_psql('postgres', q{
	CREATE EXTENSION pg_cron;
	CREATE EXTENSION tenancy CASCADE;
	SELECT tenancy.create_tenant('acme');
	SELECT tenancy.record_usage('calls', 42, 'acme');
});

$node->safe_psql('postgres', 'SELECT tenancy.schedule_maintenance()');
$node->safe_psql('postgres', 'SELECT tenancy.schedule_maintenance()');
is($node->safe_psql('postgres',
	"SELECT count(*) || ' ' || min(schedule) || ' ' || min(command) FROM cron.job"),
	'1 * * * * * SELECT tenancy.run_maintenance()', 'one job, every minute');

# pg_cron runs jobs at the start of each minute: wait for a run (at most ~90 s).
my $done = 0;
foreach my $i (1 .. 90)
{
	$done = $node->safe_psql('postgres', q{
		SELECT count(*) FROM cron.job_run_details
		 WHERE command = 'SELECT tenancy.run_maintenance()' AND status IN ('succeeded', 'failed')});
	last if $done > 0;
	sleep 1;
}
ok($done > 0, 'pg_cron ran the job');
my $run = $node->safe_psql('postgres',
	"SELECT status || ': ' || coalesce(return_message, '') FROM cron.job_run_details ORDER BY runid LIMIT 1");
like($run, qr/^succeeded: /, 'run_maintenance() succeeded') or diag($run);
is($node->safe_psql('postgres',
	"SELECT last_run IS NOT NULL FROM tenancy.maintenance_state"), 't',
	'maintenance_state records the run');
is($node->safe_psql('postgres', q{
	SELECT (SELECT count(*) FROM tenancy.usage_events) || ' ' ||
	       (SELECT amount FROM tenancy.usage_rollups WHERE granularity = 'day')}),
	'0 42', 'the usage was folded');

$node->safe_psql('postgres', 'SELECT tenancy.unschedule_maintenance()');
is($node->safe_psql('postgres', 'SELECT count(*) FROM cron.job'), '0', 'unscheduled');

$node->stop;
done_testing();
