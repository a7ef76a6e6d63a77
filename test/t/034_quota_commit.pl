# The commit of a transaction that changed nothing but quota usage does not
# wait for its WAL flush (it commits as synchronous_commit = off would);
# any transaction that wrote anything else, or any transaction with
# tenancy.synchronous_quota_commit on, commits as synchronous_commit says.
#
# How the commit mode is observed: synchronous_standby_names names a
# standby that never connects, so a commit that follows synchronous_commit
# = on waits for it (wait_event SyncRep, until cancelled), and a commit
# made as with synchronous_commit = off does not wait at all.  Deterministic,
# unlike comparing WAL flush and insert positions (the WAL writer may flush
# at any moment).
#
# Also: the ledger's relation is found again after the extension is dropped
# and created again in the same session, and after VACUUM FULL.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

my $node = PostgreSQL::Test::Cluster->new('quota_commit');
# allows_streaming: max_wal_senders > 0, or nothing waits for a standby.
$node->init(allows_streaming => 1);
# Sessions commit with synchronous_commit = local unless they ask for on.
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'tenancy,pg_cron'
cron.database_name = 'postgres'
synchronous_standby_names = 'regress_nobody'
synchronous_commit = local
# quota-only deltas wait until written on purpose (or at exit), so that
# what the probes see does not depend on the machine's speed
tenancy.quota_flush_delay = '60s'
});
$node->start;
$node->safe_psql('postgres', q{
CREATE EXTENSION tenancy CASCADE;
SELECT tenancy.create_tenant('sync');
CREATE TABLE sc_rows (id serial PRIMARY KEY, body text);
SELECT tenancy.protect('sc_rows');
CREATE TABLE sc_plain (id int);
SELECT tenancy.set_plan_quota('free', 'jobs', 100);
});
my $tid = $node->safe_psql('postgres', "SELECT tenancy.tenant_id('sync')");
$node->safe_psql('postgres', qq{
SET app.tenant_id = '$tid';
SELECT tenancy.consume_quota('jobs', 10);});

my $bg = $node->background_psql('postgres', on_error_stop => 0);
$bg->query_safe("SET app.tenant_id = '$tid'");
$bg->query_safe('SET synchronous_commit = on');
my $pid = $bg->query_safe('SELECT pg_backend_pid()');
chomp $pid;

# Run $sql in the background session; return 1 if its commit waited for
# the synchronous standby (it is then cancelled: the transaction stays
# committed locally), 0 if it finished without waiting.
sub commit_waits
{
	my ($sql) = @_;
	my $seen = $bg->query_until(qr/started/, "\\echo started\n$sql\n\\echo finished\n");
	for (my $i = 0; $i < 600; $i++)
	{
		$bg->{run}->pump_nb();
		if ($seen =~ /finished/ || $bg->{stdout} =~ /finished/)
		{
			$bg->{stdout} = '';
			return 0;
		}
		my $wait = $node->safe_psql('postgres',
			"SELECT wait_event FROM pg_stat_activity WHERE pid = $pid");
		if ($wait eq 'SyncRep')
		{
			$node->safe_psql('postgres', "SELECT pg_cancel_backend($pid)");
			$bg->query_until(qr/finished/, '');
			# the WARNING about the cancelled wait, on the other pipe
			$bg->{run}->pump() until $bg->{stderr} =~ /canceling wait for synchronous replication/;
			$bg->{stderr} = '';
			return 1;
		}
		usleep(100_000);
	}
	die "the background session neither finished nor waited for the standby";
}

sub ledger_rows
{
	return $node->safe_psql('postgres', qq{
SELECT count(*) FROM tenancy.quota_ledger WHERE tenant_id = '$tid' AND resource = 'jobs'});
}

sub used
{
	return $node->safe_psql('postgres', qq{
SET app.tenant_id = '$tid'; SELECT used FROM tenancy.check_quota('jobs')});
}

# The probe works: a plain write waits, a read does not.
is(commit_waits('INSERT INTO sc_plain VALUES (1);'), 1, 'a plain INSERT waits for the standby');
is(commit_waits('SELECT 1;'), 0, 'a read-only transaction does not');

# A transaction that only gives quota back: no wait; its delta waits in
# shared memory (tenancy.quota_flush_delay), counted at once.
$bg->query_safe("SET tenancy.quota_flush_delay = '60s'");
my $rows = ledger_rows();
is(commit_waits(q{SELECT tenancy.release_quota('jobs', 2);}), 0,
	'release_quota alone: the commit does not wait for the flush');
is(ledger_rows(), $rows, 'its delta waits: no ledger row yet');
is(used(), '8', 'and counted after commit');
# The commit that writes the waiting deltas (they could have been lost in
# a crash anyway): no wait either.
is(commit_waits(q{SELECT FROM tenancy._usage_flush();}), 0,
	'a commit that only writes the waiting quota deltas: no wait');
is(ledger_rows(), $rows + 1, 'and the ledger row is written');
# With tenancy.quota_flush_delay = 0 the transaction writes its own row:
# still no wait.
$bg->query_safe('SET tenancy.quota_flush_delay = 0');
is(commit_waits(q{SELECT tenancy.consume_quota('jobs', 1);}), 0,
	'with tenancy.quota_flush_delay = 0, a quota only commit does not wait');
is(ledger_rows(), $rows + 2, 'and it wrote its ledger row');
$bg->query_safe("SELECT tenancy.release_quota('jobs', 1)");
$bg->query_safe('RESET tenancy.quota_flush_delay');
is($bg->query_safe('SHOW synchronous_commit'), 'on', 'synchronous_commit is on again after it');
is(commit_waits('INSERT INTO sc_plain VALUES (2);'), 1,
	'the next plain write in the same session waits again');

# In a transaction block, through a released savepoint: still quota only.
is(commit_waits(q{BEGIN; SAVEPOINT s; SELECT tenancy.release_quota('jobs', 1); RELEASE s; COMMIT;}), 0,
	'quota only, in a block with a savepoint: no wait');
is(used(), '7', 'counted');

# Quota work plus any other write: as synchronous_commit says.
is(commit_waits(q{BEGIN; INSERT INTO sc_plain VALUES (3); SELECT tenancy.release_quota('jobs', 1); COMMIT;}), 1,
	'quota with a write to a plain table: waits');
is(used(), '6', 'and counted');
is(commit_waits(q{SELECT tenancy.release_quota('jobs', 1), txid_current();}), 1,
	'quota in a transaction that already had an XID: waits');
is(commit_waits(q{INSERT INTO sc_rows (body) VALUES ('a');}), 1,
	'a row of a protected table (rows: usage): waits');
is($node->safe_psql('postgres', qq{
SET app.tenant_id = '$tid';
SELECT (SELECT count(*) FROM sc_rows) || ' ' || (SELECT used FROM tenancy.check_quota('rows:sc_rows'))}),
	'1 1', 'the row and its usage committed');

# tenancy.synchronous_quota_commit = on: quota only commits as synchronous_commit says.
$bg->query_safe('SET tenancy.synchronous_quota_commit = on');
is(commit_waits(q{SELECT tenancy.release_quota('jobs', 1);}), 1,
	'with tenancy.synchronous_quota_commit on, release_quota alone waits');
$bg->query_safe('RESET tenancy.synchronous_quota_commit');
is(commit_waits(q{SELECT tenancy.release_quota('jobs', 1);}), 0, 'and not after RESET');
is(used(), '3', 'both counted');

# consume_quota alone: its usage meter waits in the session (usage.c), so
# the ledger row is all it writes: no wait.
is(commit_waits(q{SELECT tenancy.consume_quota('jobs', 1);}), 0,
	'consume_quota alone: the commit does not wait for the flush');
is(used(), '4', 'counted');

# A commit that writes only the usage that waited in the session (it could
# have been lost in a crash anyway): no wait.
$bg->query_safe("SET tenancy.usage_flush_delay = '10ms'");
$bg->query_safe("SELECT tenancy.record_usage('probe', 1)");
usleep(50_000);
is(commit_waits('SELECT 1;'), 0,
	'a commit that only writes the usage that waited: no wait');
is($node->safe_psql('postgres',
	"SELECT coalesce(sum(amount), 0) FROM tenancy.usage_events WHERE resource = 'probe'"),
	'1', 'and the usage is written');

# With tenancy.usage_flush_delay = 0 usage is written by the transaction
# that records it and must survive a crash: as synchronous_commit says.
$bg->query_safe('SET tenancy.usage_flush_delay = 0');
is(commit_waits(q{SELECT tenancy.record_usage('probe', 1);}), 1,
	'with tenancy.usage_flush_delay = 0, recording usage waits');
is(commit_waits(q{SELECT tenancy.consume_quota('jobs', 1);}), 1,
	'and so does consume_quota, which records its usage');
is($node->safe_psql('postgres',
	"SELECT coalesce(sum(amount), 0) FROM tenancy.usage_events WHERE resource = 'probe'"),
	'2', 'written');
is(used(), '5', 'counted');
$bg->query_safe('RESET tenancy.usage_flush_delay');

$bg->quit;

# The ledger's relation is looked up again when it changes under a session
# that cached it: VACUUM FULL, then DROP and CREATE EXTENSION.
my ($ret, $out, $err) = $node->psql('postgres', qq{
SET client_min_messages = warning;
SET tenancy.quota_flush_delay = 0;
SET app.tenant_id = '$tid';
SELECT tenancy.consume_quota('vf', 1);
VACUUM FULL tenancy.quota_ledger;
SELECT tenancy.consume_quota('vf', 1);
SELECT count(*) FROM tenancy.quota_ledger WHERE resource = 'vf';
DROP EXTENSION tenancy CASCADE;
CREATE EXTENSION tenancy;
SELECT tenancy.create_tenant('again') IS NOT NULL;
SELECT set_config('app.tenant_id', tenancy.tenant_id('again')::text, false) IS NOT NULL;
SELECT tenancy.consume_quota('jobs', 3);
SELECT resource || ' ' || delta || ' ' || (relid IS NULL) FROM tenancy.quota_ledger;});
is($err, '', 'no error after VACUUM FULL and re-creating the extension');
is($out, "1\n2\n2\nt\nt\n3\njobs 3 true",
	'the ledger rows land in the table that exists now');

$node->stop;
done_testing();
