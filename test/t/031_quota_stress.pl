# Several clients of one tenant insert into a protected table and consume a
# counter at their limits, with rollbacks, savepoints and deletes, under
# READ COMMITTED and REPEATABLE READ.  At the end: committed usage never
# passed the limit, and it equals the truth (the committed row count, the
# committed log of consumptions), in shared memory and in the ledger.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('quota_stress');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'tenancy,pg_cron'
cron.database_name = 'postgres'
max_connections = 40
});
$node->start;
$node->safe_psql('postgres', q{
CREATE EXTENSION tenancy CASCADE;
SELECT tenancy.create_tenant('stress');
CREATE TABLE stress_rows (id bigserial PRIMARY KEY, v int, pad text);
SELECT tenancy.protect('stress_rows');
-- the truth for the explicit counter: one row per committed consumption
CREATE TABLE stress_log (tenant_id uuid NOT NULL DEFAULT tenancy.current_tenant_id(), n int);
SELECT tenancy.set_plan_quota('free', 'rows:stress_rows', 150);
SELECT tenancy.set_plan_quota('free', 'jobs', 200);
-- insert one row, or say no (TQ001 caught: a subtransaction rolls back)
CREATE FUNCTION stress_insert(v int) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO stress_rows (v, pad) VALUES (v, repeat('p', v));
    RETURN true;
EXCEPTION WHEN SQLSTATE 'TQ001' THEN
    RETURN false;
END $$;
CREATE FUNCTION stress_consume(n int) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    PERFORM tenancy.consume_quota('jobs', n);
    INSERT INTO stress_log (n) VALUES (n);
    RETURN true;
EXCEPTION WHEN SQLSTATE 'TQ001' THEN
    RETURN false;
END $$;
});
my $tid = $node->safe_psql('postgres', "SELECT tenancy.tenant_id('stress')");

sub check_invariants
{
	my ($label, $row_limit, $job_limit) = @_;
	my $r = $node->safe_psql('postgres', qq{
SET app.tenant_id = '$tid';
SELECT (SELECT count(*) FROM stress_rows),
       (SELECT used FROM tenancy.check_quota('rows:stress_rows')),
       (SELECT coalesce(sum(delta), 0) FROM tenancy.quota_ledger WHERE resource = 'rows:public.stress_rows'),
       (SELECT coalesce(sum(n), 0) FROM stress_log),
       (SELECT used FROM tenancy.check_quota('jobs')),
       (SELECT coalesce(sum(delta), 0) FROM tenancy.quota_ledger WHERE resource = 'jobs'),
       (SELECT coalesce(sum(pg_column_size(id) + pg_column_size(v) + pg_column_size(pad)
                            + pg_column_size(tenant_id)), 0)
          FROM stress_rows),
       (SELECT used FROM tenancy.check_quota('storage_bytes'))});
	my ($rows, $rows_used, $rows_ledger, $jobs, $jobs_used, $jobs_ledger, $bytes, $bytes_used)
	  = split /\|/, $r;
	note "$label: rows $rows used $rows_used ledger $rows_ledger; jobs $jobs used $jobs_used ledger $jobs_ledger; bytes $bytes used $bytes_used";
	ok($rows <= $row_limit, "$label: the committed row count never passed the limit ($rows <= $row_limit)");
	is($rows_used, $rows, "$label: rows: usage equals the committed row count");
	is($rows_ledger, $rows, "$label: the ledger agrees");
	ok($jobs <= $job_limit, "$label: consumed jobs within the limit ($jobs <= $job_limit)");
	is($jobs_used, $jobs, "$label: jobs usage equals what was committed");
	is($jobs_ledger, $jobs, "$label: the ledger agrees");
	is($bytes_used, $bytes, "$label: storage_bytes equals the sum of pg_column_size");
	return $rows;
}

# Phase 1: inserts and consumptions only (so a final count within the
# limit proves it was never passed), with random rollbacks, at two
# isolation levels.
my $script = q{
\set v random(1, 50)
\set n random(1, 3)
\set r random(1, 10)
BEGIN ISOLATION LEVEL @ISO@;
SELECT stress_insert(:v);
SELECT stress_consume(:n);
SAVEPOINT a;
SELECT stress_insert(:v);
\if :r <= 2
ROLLBACK TO a;
\endif
SELECT stress_consume(1);
\if :r <= 3
ROLLBACK;
\else
COMMIT;
\endif
};
{
	local $ENV{PGOPTIONS} = "-c app.tenant_id=$tid";
	(my $rc = $script) =~ s/\@ISO\@/READ COMMITTED/;
	$node->pgbench('--no-vacuum --client=6 --jobs=2 --transactions=60',
		0, [qr{processed: 360/360}], [qr{^$}], 'pgbench, READ COMMITTED, inserts and consumptions',
		{ 'quota_stress_rc' => $rc });
}
my $rows = check_invariants('read committed', 150, 200);
is($rows, 150, 'the clients filled the table up to the limit exactly');

$node->safe_psql('postgres', q{
SELECT tenancy.set_plan_quota('free', 'rows:stress_rows', 300);
SELECT tenancy.set_plan_quota('free', 'jobs', 400);});
{
	local $ENV{PGOPTIONS} = "-c app.tenant_id=$tid";
	(my $rr = $script) =~ s/\@ISO\@/REPEATABLE READ/;
	$node->pgbench('--no-vacuum --client=6 --jobs=2 --transactions=60',
		0, [qr{processed: 360/360}], [qr{^$}], 'pgbench, REPEATABLE READ, inserts and consumptions',
		{ 'quota_stress_rr' => $rr });
}
check_invariants('repeatable read', 300, 400);

# Phase 2: deletes, updates and releases mixed in: usage stays exact.
my $mixed = q{
\set v random(1, 80)
\set r random(1, 10)
BEGIN;
SELECT stress_insert(:v);
DELETE FROM stress_rows WHERE id = (SELECT min(id) FROM stress_rows) AND :r <= 5;
UPDATE stress_rows SET pad = repeat('q', :v) WHERE id = (SELECT max(id) FROM stress_rows) AND :r > 5;
\if :r <= 2
ROLLBACK;
\else
COMMIT;
\endif
};
# A monitor samples the committed row count all along: it must never be
# above the limit, not only at the end.
$node->safe_psql('postgres', 'CREATE TABLE stress_samples (n bigint)');
my $monitor = q{
INSERT INTO stress_samples SELECT count(*) FROM stress_rows;
};
{
	local $ENV{PGOPTIONS} = "-c app.tenant_id=$tid";
	$node->pgbench('--no-vacuum --client=6 --jobs=2 --transactions=80',
		0, [qr{processed: 480/480}], [qr{^$}], 'pgbench, deletes and updates, with a monitor',
		{ 'quota_stress_mixed@4' => $mixed, 'quota_stress_monitor@1' => $monitor });
}
check_invariants('deletes and updates', 300, 400);
my ($samples, $max) = split /\|/, $node->safe_psql('postgres',
	'SELECT count(*), max(n) FROM stress_samples');
note "monitor: $samples samples, at most $max rows";
ok($samples > 0 && $max <= 300, "the committed row count sampled $samples times never passed the limit (max $max)");

# After a restart, usage is rebuilt from the ledger.
$node->restart;
check_invariants('after restart', 300, 400);

# Near zero: each transaction inserts a row and deletes two random ones, so
# rows are deleted right after the commit that made them visible, before
# (or while) that commit adds them to the shared counter.  A delete must
# give its row back whole even then, or usage stays above the table.
$node->safe_psql('postgres', "SET app.tenant_id = '$tid'; DELETE FROM stress_rows");
my $churn = q{
\set v random(1, 20)
BEGIN;
SELECT stress_insert(:v);
DELETE FROM stress_rows WHERE id IN (SELECT id FROM stress_rows ORDER BY random() LIMIT 2);
COMMIT;
};
{
	local $ENV{PGOPTIONS} = "-c app.tenant_id=$tid";
	$node->pgbench('--no-vacuum --client=8 --jobs=2 --transactions=250',
		0, [qr{processed: 2000/2000}], [qr{^$}], 'pgbench, inserts and deletes near zero',
		{ 'quota_stress_churn' => $churn });
}
check_invariants('inserts and deletes near zero', 300, 400);
$node->restart;
check_invariants('near zero, after restart', 300, 400);

# Phase 3: quota-only transactions, whose deltas wait in shared memory
# (tenancy.quota_flush_delay, 20ms here so that commits write them all
# along, racing with the commits that add more).  Consumptions alone, with
# rollbacks: the counter fills up to its limit exactly.
$node->safe_psql('postgres', q{
SELECT tenancy.set_plan_quota('free', 'solo', 150);
CREATE FUNCTION solo_consume(n int) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    PERFORM tenancy.consume_quota('solo', n);
    RETURN true;
EXCEPTION WHEN SQLSTATE 'TQ001' THEN
    RETURN false;
END $$;});
my $solo = q{
\set r random(1, 10)
BEGIN;
SELECT solo_consume(1);
\if :r <= 3
ROLLBACK;
\else
COMMIT;
\endif
};
sub solo_state
{
	return $node->safe_psql('postgres', qq{
SET app.tenant_id = '$tid';
SELECT (SELECT used FROM tenancy.check_quota('solo')) || ' ' ||
       (SELECT coalesce(sum(delta), 0) FROM tenancy.quota_ledger WHERE resource = 'solo')});
}
{
	local $ENV{PGOPTIONS} = "-c app.tenant_id=$tid -c tenancy.quota_flush_delay=20ms";
	$node->pgbench('--no-vacuum --client=6 --jobs=2 --transactions=80',
		0, [qr{processed: 480/480}], [qr{^$}], 'pgbench, quota-only consumptions',
		{ 'quota_stress_solo' => $solo });
}
like(solo_state(), qr/^150 /, 'quota only: filled up to the limit exactly, at once for every session');
$node->restart;
is(solo_state(), '150 150', 'quota only: the waiting deltas were written, once (exit and shutdown)');

# Consumptions and releases mixed: within the limit, and the ledger agrees
# after a restart.
my $solo_mixed = q{
\set r random(1, 10)
\set n random(1, 3)
BEGIN;
SELECT solo_consume(:n);
\if :r <= 4
SELECT tenancy.release_quota('solo', :n + 1);
\endif
\if :r = 10
ROLLBACK;
\else
COMMIT;
\endif
};
{
	local $ENV{PGOPTIONS} = "-c app.tenant_id=$tid -c tenancy.quota_flush_delay=20ms";
	$node->pgbench('--no-vacuum --client=6 --jobs=2 --transactions=80',
		0, [qr{processed: 480/480}], [qr{^$}], 'pgbench, quota-only consumptions and releases',
		{ 'quota_stress_solo_mixed' => $solo_mixed });
}
my ($solo_used) = split / /, solo_state();
ok($solo_used >= 0 && $solo_used <= 150, "quota only, mixed: within the limit ($solo_used)");
$node->restart;
is(solo_state(), "$solo_used $solo_used", 'quota only, mixed: the ledger agrees after a restart');

# A session that leaves deltas waiting writes them when it exits, whatever
# its transaction defaults by then.
$node->safe_psql('postgres', qq{
SET app.tenant_id = '$tid';
SET tenancy.quota_flush_delay = '60s';
SELECT tenancy.consume_quota('solo', 0), tenancy.release_quota('solo', 1);
SET default_transaction_isolation = serializable;
SET default_transaction_read_only = on;});
my $expect = $solo_used > 0 ? $solo_used - 1 : 0;
ok($node->poll_query_until('postgres',
		"SELECT coalesce(sum(delta), 0) FROM tenancy.quota_ledger WHERE resource = 'solo'", $expect),
	'a session that exits writes the deltas it left waiting');

$node->stop;
done_testing();
