# doc/prometheus-queries.yaml with the real prometheus-postgres-exporter:
# the tenancy metrics of tenancy.stats appear on /metrics.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use HTTP::Tiny;
use IPC::Run;
use Cwd qw(abs_path);

my $exporter = '/usr/bin/prometheus-postgres-exporter';
plan skip_all => "$exporter is not installed" unless -x $exporter;

my $queries = abs_path('doc/prometheus-queries.yaml');
ok(-f $queries, 'doc/prometheus-queries.yaml is there');

my $node = PostgreSQL::Test::Cluster->new('usage_prometheus');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'tenancy'");
$node->start;
$node->safe_psql('postgres', q{
	CREATE EXTENSION tenancy CASCADE;
	SELECT tenancy.create_tenant('acme');
	SELECT tenancy.create_tenant('beta');
	SELECT tenancy.suspend_tenant('beta');
	CREATE ROLE exporter LOGIN IN ROLE pg_monitor;
});
$node->safe_psql('postgres', q{
	BEGIN;
	SELECT tenancy._usage_record_carried(tenancy.tenant_id('acme'), 'quota_denied:rows:public.orders', 2);
	SELECT tenancy._usage_record_carried(tenancy.tenant_id('acme'), 'rate_limited:api', 7);
	ROLLBACK;
});

my $port = PostgreSQL::Test::Cluster::get_free_port();
local $ENV{DATA_SOURCE_NAME} = sprintf('host=%s port=%d user=exporter dbname=postgres sslmode=disable',
	$node->host, $node->port);
my ($stdout, $stderr) = ('', '');
my $h = IPC::Run::start(
	[ $exporter, "--web.listen-address=127.0.0.1:$port", "--extend.query-path=$queries",
	  '--disable-default-metrics', '--disable-settings-metrics' ],
	'>', \$stdout, '2>', \$stderr);

my $http = HTTP::Tiny->new(timeout => 10);
my $body = '';
foreach my $i (1 .. 60)
{
	my $res = $http->get("http://127.0.0.1:$port/metrics");
	if ($res->{success} && $res->{content} =~ /^tenancy_tenants/m)
	{
		$body = $res->{content};
		last;
	}
	sleep 1;
}
$h->kill_kill;
note("exporter stderr: $stderr") if $body eq '';

like($body, qr/^tenancy_tenants\{[^}]*status="active"[^}]*\} 1$/m, 'tenancy_tenants{status="active"} 1');
like($body, qr/^tenancy_tenants\{[^}]*status="suspended"[^}]*\} 1$/m, 'tenancy_tenants{status="suspended"} 1');
like($body, qr/^tenancy_api_keys_active(\{[^}]*\})? 0$/m, 'tenancy_api_keys_active');
like($body, qr/^tenancy_quota_denials_total\{[^}]*resource="rows:public.orders"[^}]*\} 2$/m,
	'tenancy_quota_denials_total{resource}');
like($body, qr/^tenancy_rate_limited_total\{[^}]*resource="api"[^}]*\} 7$/m,
	'tenancy_rate_limited_total{resource}');
like($body, qr/^# TYPE tenancy_quota_denials_total counter$/m, 'denials are a counter');
unlike($body, qr/pg_exporter_user_queries_load_error\{[^}]*\} 1/, 'the queries file loads without error');

$node->stop;
done_testing();
