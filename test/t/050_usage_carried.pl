# Denial records (survive_abort) outlive the rollback of their transaction
# and are written even when the session ends right after the denial:
# normally, or terminated.  The shared counters of tenancy.stats count them
# at once, from any session, until the server restarts.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib "$FindBin::RealBin/../perl";
use TenancyCrash;

my $node = PostgreSQL::Test::Cluster->new('usage_carried');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'tenancy'\nrestart_after_crash = on");
$node->start;
$node->safe_psql('postgres', q{
	CREATE EXTENSION tenancy CASCADE;
	SELECT tenancy.create_tenant('acme');
});

sub events
{
	my ($resource) = @_;
	return $node->safe_psql('postgres',
		"SELECT coalesce(sum(amount), 0) FROM tenancy.usage_events WHERE resource = '$resource'");
}

# A session that is denied, rolls back and disconnects at once.
$node->safe_psql('postgres', q{
	BEGIN;
	SELECT tenancy._usage_record_carried(tenancy.tenant_id('acme'), 'quota_denied:calls', 3);
	ROLLBACK;
});
# The backend writes them while it exits, after the client has gone.
ok($node->poll_query_until('postgres', q{
	SELECT coalesce(sum(amount), 0) = 3 FROM tenancy.usage_events
	 WHERE resource = 'quota_denied:calls'}),
	'written when the session ends after the rollback');

# The same, but the session is terminated.
my ($ret, $out, $err) = $node->psql('postgres', q{
	BEGIN;
	SELECT tenancy._usage_record_carried(tenancy.tenant_id('acme'), 'rate_limited:calls', 5);
	ROLLBACK;
	SELECT pg_terminate_backend(pg_backend_pid());
});
like($err, qr/terminating connection/, 'the session was terminated');
ok($node->poll_query_until('postgres', q{
	SELECT coalesce(sum(amount), 0) = 5 FROM tenancy.usage_events
	 WHERE resource = 'rate_limited:calls'}),
	'written when the session is terminated');
is(events('quota_denied:calls'), '3', 'and only once');

# Transactional records of a rolled-back transaction are not.
$node->safe_psql('postgres', q{
	BEGIN;
	SELECT tenancy.record_usage('calls', 7, 'acme');
	ROLLBACK;
});
is(events('calls'), '0', 'a rolled-back record_usage writes nothing');

# The counters are shared by every session.
is($node->safe_psql('postgres',
	"SELECT value FROM tenancy.stats WHERE metric = 'tenancy_quota_denials_total'"),
	'3', 'tenancy.stats counts the denial, seen from another session');
is($node->safe_psql('postgres',
	"SELECT value FROM tenancy.stats WHERE metric = 'tenancy_rate_limited_total'"),
	'5', 'tenancy.stats counts the rate-limit denial');

# Nothing is written twice: the folded total equals what was recorded.
$node->safe_psql('postgres', 'SELECT tenancy.rollup_usage()');
is($node->safe_psql('postgres', q{
	SELECT string_agg(resource || '=' || amount, ',' ORDER BY resource)
	  FROM tenancy.usage_rollups WHERE granularity = 'month'}),
	'quota_denied:calls=3,rate_limited:calls=5', 'each denial folded once');

# After a restart the counters start again from zero; the usage stays.
$node->restart;
is($node->safe_psql('postgres',
	"SELECT count(*) FROM tenancy.stats WHERE metric IN ('tenancy_quota_denials_total', 'tenancy_rate_limited_total') AND value > 0"),
	'0', 'the shared counters restart from zero');
is($node->safe_psql('postgres', q{
	SELECT sum(amount) FROM tenancy.usage('acme', NULL, NULL, 'month')}),
	'8', 'the recorded usage survives the restart');

# --- Usage waiting in a session (tenancy.usage_flush_delay) -------------
sub usage_of
{
	my ($resource) = @_;
	return $node->safe_psql('postgres', qq{
		SELECT coalesce(sum(amount), 0) FROM tenancy.usage('acme', NULL, NULL, 'month')
		 WHERE resource = '$resource'});
}

# A session records usage in requests that write nothing and stays open.
my $bg = $node->background_psql('postgres', on_error_stop => 0);
$bg->query_safe("SET tenancy.usage_flush_delay = '60s'");
$bg->query_safe("SELECT tenancy.record_usage('waiting', 2, 'acme')") for 1 .. 3;
$bg->query_safe("BEGIN; SELECT tenancy.record_usage('waiting', 100, 'acme'); ROLLBACK");
is(events('waiting'), '0', 'usage waiting in shared memory is not written yet');
is(usage_of('waiting'), '6', "another session's usage() sees it at once");
$node->safe_psql('postgres', 'SELECT tenancy.rollup_usage()');
is($node->safe_psql('postgres', q{
	SELECT coalesce(sum(amount), 0) FROM tenancy.usage_rollups
	 WHERE resource = 'waiting' AND granularity = 'month'}),
	'6', "another session's rollup_usage() writes and folds it");
is(usage_of('waiting'), '6', 'and it is counted once');

# More waits; a fast shutdown ends the session, which writes it.
$bg->query_safe("SELECT tenancy.record_usage('waiting', 1, 'acme')");
is(events('waiting'), '0', 'waiting again');
$node->stop('fast');
$bg->quit;
$node->start;
is(events('waiting'), '1', 'a fast shutdown writes the usage that was waiting');
is(usage_of('waiting'), '7', 'and usage() counts everything once after the restart');

# A crash of the server loses what was waiting (at most about
# tenancy.usage_flush_delay of a busy session's usage), nothing else.
$bg = $node->background_psql('postgres', on_error_stop => 0);
$bg->query_safe("SET tenancy.usage_flush_delay = '60s'");
$bg->query_safe("SELECT tenancy.record_usage('lost', 4, 'acme')");
is(usage_of('lost'), '4', 'visible before the crash');
TenancyCrash::kill_backend($node, $bg);
is(usage_of('lost'), '0', 'a crash loses the usage that was waiting in memory');
is(usage_of('waiting'), '7', 'and only that');

$node->stop;
done_testing();
