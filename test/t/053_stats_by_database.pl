# The _total counters of tenancy.stats (authentication failures, quota and
# rate-limit denials) live in shared memory, one set per database: a
# database of the same server never shows another database's denials or
# failed verifications.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('stats_by_database');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'tenancy'");
$node->start;
$node->safe_psql('postgres', 'CREATE DATABASE app');
$node->safe_psql('postgres', 'CREATE DATABASE other');
for my $db ('app', 'other')
{
	$node->safe_psql($db, 'CREATE EXTENSION tenancy CASCADE');
}

sub totals
{
	my ($db) = @_;
	return $node->safe_psql($db, q{
		SELECT coalesce(string_agg(metric || coalesce(':' || (labels->>'cause'), '')
		                           || coalesce(':' || (labels->>'resource'), '') || '=' || value,
		                           ',' ORDER BY metric, labels::text), '')
		  FROM tenancy.stats
		 WHERE metric LIKE '%\_total' AND value > 0});
}

# In "app": a tenant is denied twice (records that survive the rollback,
# as the quota and rate-limit meters make them), and a key fails twice.
$node->safe_psql('app', q{
	SELECT tenancy.create_tenant('acme');
	BEGIN;
	SELECT tenancy._usage_record_carried(tenancy.tenant_id('acme'), 'quota_denied:calls', 2);
	SELECT tenancy._usage_record_carried(tenancy.tenant_id('acme'), 'rate_limited:calls', 3);
	ROLLBACK;
	SELECT * FROM tenancy.verify_api_key('not a key');
	CREATE TEMP TABLE doomed AS SELECT tenancy.create_api_key('acme', 'doomed') AS key;
	DELETE FROM tenancy.api_keys WHERE name = 'doomed';
	SELECT v.* FROM doomed d, tenancy.verify_api_key(d.key) v;
});
is(totals('app'),
	'tenancy_auth_failures_total:malformed=1,tenancy_auth_failures_total:unknown=1,'
	  . 'tenancy_quota_denials_total:calls=2,tenancy_rate_limited_total:calls=3',
	'the database counts its own denials and failures');
is(totals('other'), '', 'a database without tenants shows none of them');
is($node->safe_psql('other',
	"SELECT count(*) FROM tenancy._usage_counters()"), '0',
	'nor does _usage_counters()');

# "other" counts its own, and "app" does not see them.
$node->safe_psql('other', q{
	SELECT * FROM tenancy.verify_api_key('still not a key');
	SELECT tenancy.create_tenant('beta');
	SELECT tenancy._usage_record_carried(tenancy.tenant_id('beta'), 'quota_denied:calls', 5);
});
is(totals('other'),
	'tenancy_auth_failures_total:malformed=1,tenancy_quota_denials_total:calls=5',
	'the other database counts its own');
is(totals('app'),
	'tenancy_auth_failures_total:malformed=1,tenancy_auth_failures_total:unknown=1,'
	  . 'tenancy_quota_denials_total:calls=2,tenancy_rate_limited_total:calls=3',
	'and the first is unchanged');

$node->stop;
done_testing();
