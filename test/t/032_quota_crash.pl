# rows:<table> usage equals the committed row count after anything: aborts,
# deletes, TRUNCATE by an administrator, purge_tenant, a restart, and a
# crash (kill -9 of a backend in the middle of a transaction that holds
# reservations).  Rate limit buckets are full again after a restart.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib "$FindBin::RealBin/../perl";
use TenancyCrash;

my $node = PostgreSQL::Test::Cluster->new('quota_crash');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'tenancy,pg_cron'
cron.database_name = 'postgres'
restart_after_crash = on
# quota-only deltas wait until written on purpose (or at exit)
tenancy.quota_flush_delay = '60s'
});
$node->start;
$node->safe_psql('postgres', q{
CREATE EXTENSION tenancy CASCADE;
SELECT tenancy.create_tenant('crash');
SELECT tenancy.create_tenant('other');
CREATE TABLE c_rows (id serial PRIMARY KEY, body text);
SELECT tenancy.protect('c_rows');
SELECT tenancy.set_plan_quota('free', 'rows:c_rows', 10);
SELECT tenancy.set_plan_quota('free', 'jobs', 10);
SELECT tenancy.set_plan_rate_limit('free', 'calls', 0.001, 2);
});
my $tid = $node->safe_psql('postgres', "SELECT tenancy.tenant_id('crash')");
my $other = $node->safe_psql('postgres', "SELECT tenancy.tenant_id('other')");

# The state of a tenant: committed rows, rows: usage, the ledger's sum,
# jobs usage.
sub state_of
{
	my ($t) = @_;
	return $node->safe_psql('postgres', qq{
SET app.tenant_id = '$t';
SELECT (SELECT count(*) FROM c_rows WHERE tenant_id = '$t') || ' ' ||
       (SELECT used FROM tenancy.check_quota('rows:c_rows')) || ' ' ||
       (SELECT coalesce(sum(delta), 0) FROM tenancy.quota_ledger
         WHERE tenant_id = '$t' AND resource = 'rows:public.c_rows') || ' ' ||
       (SELECT used FROM tenancy.check_quota('jobs'))});
}

$node->safe_psql('postgres', qq{
SET app.tenant_id = '$tid';
INSERT INTO c_rows (body) SELECT 'r' || g FROM generate_series(1, 3) g;
SELECT tenancy.consume_quota('jobs', 2);
SET app.tenant_id = '$other';
INSERT INTO c_rows (body) SELECT 'o' || g FROM generate_series(1, 4) g;});
is(state_of($tid), '3 3 3 2', 'three rows and two jobs committed');

# Aborts and deletes.
$node->psql('postgres', qq{
SET app.tenant_id = '$tid';
BEGIN; INSERT INTO c_rows (body) VALUES ('x'), ('y'); SELECT tenancy.consume_quota('jobs', 3); ROLLBACK;
DELETE FROM c_rows WHERE body = 'r1';
BEGIN; DELETE FROM c_rows; ROLLBACK;});
is(state_of($tid), '2 2 2 2', 'after a rolled back insert and a committed delete');

# A crash: a backend holding reservations (7 rows, 8 jobs: everything
# left) is killed with SIGKILL; the server restarts and recovers.
my $bg = $node->background_psql('postgres', on_error_stop => 0);
$bg->query_safe("SET app.tenant_id = '$tid'");
$bg->query_safe('BEGIN');
$bg->query_safe(q{INSERT INTO c_rows (body) SELECT 'k' || g FROM generate_series(1, 8) g});
$bg->query_safe(q{SELECT tenancy.consume_quota('jobs', 8)});
my ($ret, $out, $err) = $node->psql('postgres', qq{
SET app.tenant_id = '$tid';
INSERT INTO c_rows (body) VALUES ('blocked');});
like($err, qr/quota exceeded/, 'while the reservations are held, another session is refused at once');
TenancyCrash::kill_backend($node, $bg);
ok(1, 'the server restarted after SIGKILL of a backend');
is(state_of($tid), '2 2 2 2', 'after the crash, usage is the committed state: nothing of the killed transaction');
is(state_of($other), '4 4 4 0', "another tenant's usage is intact");
$node->safe_psql('postgres', qq{
SET app.tenant_id = '$tid';
INSERT INTO c_rows (body) SELECT 'n' || g FROM generate_series(1, 8) g;
SELECT tenancy.consume_quota('jobs', 8);});
is(state_of($tid), '10 10 10 10', 'the killed reservations did not leak: the room is there');
($ret, $out, $err) = $node->psql('postgres', qq{
SET app.tenant_id = '$tid';
INSERT INTO c_rows (body) VALUES ('one too many');});
like($err, qr/quota exceeded/, 'and the limit still holds');

# A crash right after commits (shared memory is thrown away again): usage
# is what committed, since the ledger is written in the same transaction
# as the rows.
$node->safe_psql('postgres', qq{
SET app.tenant_id = '$tid';
DELETE FROM c_rows WHERE body LIKE 'n%';});
$bg = $node->background_psql('postgres', on_error_stop => 0);
TenancyCrash::kill_backend($node, $bg);
is(state_of($tid), '2 2 2 10', 'after another crash restart, usage equals the committed rows');

# TRUNCATE by an administrator resets every tenant's rows.
$node->safe_psql('postgres', 'TRUNCATE c_rows');
is(state_of($tid), '0 0 0 10', 'TRUNCATE: no rows, no usage');
is(state_of($other), '0 0 0 0', "TRUNCATE: the other tenant's too");
$node->safe_psql('postgres', qq{
SET app.tenant_id = '$other';
INSERT INTO c_rows (body) SELECT 'o' || g FROM generate_series(1, 5) g;});

# A restart rebuilds usage from the ledger.
$node->restart;
is(state_of($other), '5 5 5 0', 'after a restart');

# purge_tenant removes the tenant's rows and usage.
$node->safe_psql('postgres', q{
SELECT tenancy.delete_tenant('other');
SELECT tenancy.purge_tenant('other');});
is($node->safe_psql('postgres', qq{SELECT count(*) FROM tenancy.quota_ledger WHERE tenant_id = '$other'}),
	'0', 'purge_tenant leaves no usage behind');
is($node->safe_psql('postgres', q{SELECT count(*) FROM c_rows}), '0', 'nor rows');

# Rate limits: buckets live in shared memory, full again after a restart.
my $take = qq{SET app.tenant_id = '$tid';
SELECT tenancy.check_rate('calls')::text || tenancy.check_rate('calls')::text || tenancy.check_rate('calls')::text};
is($node->safe_psql('postgres', $take), 'truetruefalse', 'a bucket of two empties');
is($node->safe_psql('postgres', $take), 'falsefalsefalse', 'and stays empty (0.001 a second)');
$node->restart;
is($node->safe_psql('postgres', $take), 'truetruefalse', 'full again after a restart');

# More counters than shared memory holds: unused ones are evicted and
# rebuilt from the ledger when used again; usage stays right.
$node->safe_psql('postgres', qq{
SET app.tenant_id = '$tid';
SELECT tenancy.consume_quota('kept', 7);
SELECT count(*) FROM generate_series(1, 9000) g, tenancy.check_quota('junk' || g);});
is($node->safe_psql('postgres', qq{SET app.tenant_id = '$tid';
SELECT used FROM tenancy.check_quota('kept')}), '7', 'after evictions, usage is rebuilt from the ledger');
# One transaction cannot hold more counters than there are.
($ret, $out, $err) = $node->psql('postgres', qq{
SET app.tenant_id = '$tid';
SELECT count(tenancy.consume_quota('many' || g, 1)) FROM generate_series(1, 9000) g;});
like($err, qr/too many quota counters in use/, 'a transaction holding every counter gets a clear error');
is($node->safe_psql('postgres', qq{SET app.tenant_id = '$tid';
SELECT tenancy.consume_quota('kept', 1)}), '8', 'and everything works again after it');

# A full table of rate limit buckets: full buckets make room, otherwise a
# clear error.
$node->append_conf('postgresql.conf', "tenancy.max_rate_buckets = 16");
$node->restart;
$node->safe_psql('postgres', q{
SELECT tenancy.set_plan_rate_limit('free', 'r' || g, 0.001, 2) FROM generate_series(1, 20) g;});
($ret, $out, $err) = $node->psql('postgres', qq{
SET app.tenant_id = '$tid';
SELECT count(tenancy.check_rate('r' || g)) FROM generate_series(1, 20) g;});
like($err, qr/no room for another rate limit bucket.*\n.*\n.*tenancy.max_rate_buckets/s,
	'no room for a 17th bucket in use: 53400 with a HINT naming the setting');
$node->safe_psql('postgres', q{
SELECT tenancy.set_plan_rate_limit('free', 'r' || g, 1000000, 2) FROM generate_series(1, 20) g;});
$node->restart;
is($node->safe_psql('postgres', qq{
SET app.tenant_id = '$tid';
SELECT count(*) FROM generate_series(1, 20) g WHERE tenancy.check_rate('r' || g)
  AND pg_sleep(0.001) IS NOT NULL}), '20', 'buckets that refilled make room for new ones');

# Quota-only deltas waiting in shared memory (tenancy.quota_flush_delay)
# are lost in a crash, whole transactions of them and never more than was
# committed; what was written to the ledger stays.
sub waiting_state
{
	return $node->safe_psql('postgres', qq{
SET app.tenant_id = '$tid';
SELECT (SELECT used FROM tenancy.check_quota('wjobs')) || ' ' ||
       (SELECT coalesce(sum(delta), 0) FROM tenancy.quota_ledger
         WHERE tenant_id = '$tid' AND resource = 'wjobs')});
}
$node->safe_psql('postgres', qq{
SET app.tenant_id = '$tid';
SELECT tenancy.consume_quota('wjobs', 4);
SELECT FROM tenancy._usage_flush();});
my $waiter = $node->background_psql('postgres');
$waiter->query_safe("SET app.tenant_id = '$tid'");
$waiter->query_safe("SELECT tenancy.consume_quota('wjobs', 3)");
$waiter->query_safe("SELECT tenancy.release_quota('wjobs', 1)");
is(waiting_state(), '6 4', 'two quota-only commits wait in shared memory, counted');
TenancyCrash::kill_backend($node, $waiter);
is(waiting_state(), '4 4', 'after a crash: the waiting deltas are lost, the written ones stay');

# Without the library preloaded, every entry point says so (55000).
$node->append_conf('postgresql.conf', "shared_preload_libraries = ''");
$node->restart;
my ($r2, $o2, $e2) = $node->psql('postgres', "SELECT tenancy.check_quota('jobs')");
like($e2, qr/tenancy: shared memory is not attached/, 'check_quota without preloading: 55000');
($r2, $o2, $e2) = $node->psql('postgres', "SELECT tenancy.check_rate('calls')");
like($e2, qr/tenancy: shared memory is not attached/, 'check_rate without preloading: 55000');
($r2, $o2, $e2) = $node->psql('postgres', "SELECT tenancy.set_plan_quota('free', 'jobs', 1)");
like($e2, qr/tenancy: shared memory is not attached/, 'set_plan_quota without preloading: 55000');

$node->stop;
done_testing();
