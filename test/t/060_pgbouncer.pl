# Through a real PgBouncer in transaction pooling mode, with one server
# connection shared by every client: a context set for one transaction
# (set_tenant(..., is_local => true) or SET LOCAL) never reaches the next
# transaction or the next client.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib "$FindBin::RealBin/../perl";
use TenancyPgBouncer;

plan skip_all => 'pgbouncer is not installed' unless TenancyPgBouncer::available();

my $node = PostgreSQL::Test::Cluster->new('pooled');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'tenancy'");
$node->start;
$node->safe_psql('postgres', q{
	CREATE EXTENSION tenancy CASCADE;
	CREATE ROLE regress_app LOGIN IN ROLE tenancy_app;
	SELECT tenancy.create_tenant('tenant-a');
	SELECT tenancy.create_tenant('tenant-b');
	CREATE TABLE public.notes (id serial PRIMARY KEY, body text);
	SELECT tenancy.protect('public.notes');
	INSERT INTO public.notes (body, tenant_id)
	SELECT 'a' || g, tenancy.tenant_id('tenant-a') FROM generate_series(1, 3) g;
	INSERT INTO public.notes (body, tenant_id)
	SELECT 'b' || g, tenancy.tenant_id('tenant-b') FROM generate_series(1, 5) g;
	GRANT SELECT ON public.notes TO regress_app;
});

# PgBouncer: transaction pooling, a single server connection.
my $bouncer = TenancyPgBouncer->start($node, 'regress_app');
sub via_pooler { return $bouncer->psql(@_); }

my ($rc, $out, $err);

# One client, one transaction: the tenant's own rows.
($rc, $out) = via_pooler(q{BEGIN; SELECT tenancy.set_tenant('tenant-a', true) IS NOT NULL;
	SELECT count(*) FROM public.notes; COMMIT;});
is($out, "t\n3", 'a transaction with set_tenant(..., is_local => true) sees its tenant only');

# The next client gets the same server connection, with no context left.
($rc, $out) = via_pooler(q{SELECT current_setting('app.tenant_id') = ''});
is($out, 't', 'the next client finds app.tenant_id empty');
($rc, $out, $err) = via_pooler(q{SELECT count(*) FROM public.notes});
isnt($rc, 0, 'the next client cannot read without a context');
like($err, qr/tenancy: no tenant context/, '... it gets TN001');

# SET LOCAL behaves the same.
($rc, $out) = via_pooler(q{BEGIN; SET LOCAL app.tenant_id = '} .
	$node->safe_psql('postgres', "SELECT tenancy.tenant_id('tenant-b')") .
	q{'; SELECT count(*) FROM public.notes; COMMIT;});
is($out, '5', 'SET LOCAL in a pooled transaction sees tenant-b only');
($rc, $out, $err) = via_pooler(q{SELECT count(*) FROM public.notes});
like($err, qr/tenancy: no tenant context/, 'SET LOCAL does not outlive its transaction');

# A transaction that fails keeps nothing either.
($rc, $out, $err) = via_pooler(q{BEGIN; SELECT tenancy.set_tenant('tenant-a', true);
	SELECT 1/0; COMMIT;});
($rc, $out) = via_pooler(q{SELECT current_setting('app.tenant_id') = ''});
is($out, 't', 'a failed transaction leaves no context behind');

# Only one server connection was ever used: the clients really shared it.
is($node->safe_psql('postgres',
	q{SELECT count(*) FROM pg_stat_activity WHERE usename = 'regress_app'}),
	'1', 'all clients went through one server connection');

$bouncer->stop;
$node->stop;
done_testing();
