# Through a real PgBouncer in transaction pooling mode, with one server
# connection shared by every client, a plain LOGIN role with no tenancy
# role at all: authenticate(key, is_local => true) binds one transaction to
# the key's tenant and permissions, and the binding never reaches the next
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

my $node = PostgreSQL::Test::Cluster->new('pooled_keys');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'tenancy,pg_cron'
cron.database_name = 'postgres'
});
$node->start;
$node->safe_psql('postgres', q{
	CREATE EXTENSION tenancy CASCADE;
	CREATE ROLE regress_keyuser LOGIN;
	SELECT tenancy.create_tenant('tenant-a');
	SELECT tenancy.create_tenant('tenant-b');
	CREATE TABLE public.notes (id serial PRIMARY KEY, body text);
	SELECT tenancy.protect('public.notes');
	INSERT INTO public.notes (body, tenant_id)
	SELECT 'a' || g, tenancy.tenant_id('tenant-a') FROM generate_series(1, 3) g;
	INSERT INTO public.notes (body, tenant_id)
	SELECT 'b' || g, tenancy.tenant_id('tenant-b') FROM generate_series(1, 5) g;
	GRANT SELECT, INSERT ON public.notes TO regress_keyuser;
	GRANT USAGE ON SEQUENCE public.notes_id_seq TO regress_keyuser;
});
my $key_a = $node->safe_psql('postgres',
	"SELECT tenancy.create_api_key('tenant-a', 'reader', '{read}')");
my $key_b = $node->safe_psql('postgres',
	"SELECT tenancy.create_api_key('tenant-b', 'writer', '{read,write}')");
my $tenant_a = $node->safe_psql('postgres', "SELECT tenancy.tenant_id('tenant-a')");

# PgBouncer: transaction pooling, a single server connection.
my $bouncer = TenancyPgBouncer->start($node, 'regress_keyuser');
sub via_pooler { return $bouncer->psql(@_); }

my ($rc, $out, $err);

# Without a key, the plain role has no tenant.
($rc, $out, $err) = via_pooler(q{SELECT count(*) FROM public.notes});
like($err, qr/tenancy: no tenant context/, 'no key, no context');

# One client, one transaction, bound by tenant-a's read-only key.
($rc, $out) = via_pooler(qq{BEGIN; SELECT tenancy.authenticate('$key_a', is_local => true) = '$tenant_a';
	SELECT count(*) FROM public.notes; COMMIT;});
is($out, "t\n3", 'a transaction bound with is_local sees its tenant only');
($rc, $out, $err) = via_pooler(qq{BEGIN; SELECT tenancy.authenticate('$key_a', true);
	INSERT INTO public.notes (body) VALUES ('x'); COMMIT;});
like($err, qr/tenancy: permission denied for table notes/, 'the read-only key cannot write');

# The next client gets the same server connection, unbound.
($rc, $out) = via_pooler(q{SELECT current_setting('tenancy.session_binding') = '',
	current_setting('app.tenant_id') = ''});
is($out, 't|t', 'the next client finds no binding and no context');
($rc, $out, $err) = via_pooler(q{SELECT count(*) FROM public.notes});
like($err, qr/tenancy: no tenant context/, 'and cannot read');

# tenant-b's key: its tenant, and no way over to tenant-a.
($rc, $out, $err) = via_pooler(qq{BEGIN; SELECT tenancy.authenticate('$key_b', true) IS NOT NULL;
	INSERT INTO public.notes (body) VALUES ('b6'); SELECT count(*) FROM public.notes;
	SET LOCAL app.tenant_id = '$tenant_a'; COMMIT;});
is($out, "t\n6", 'a transaction bound to tenant-b writes and reads its rows');
like($err, qr/tenancy: permission denied to set app.tenant_id/, 'it cannot switch to tenant-a');
($rc, $out) = via_pooler(q{SELECT current_setting('tenancy.session_binding') = ''});
is($out, 't', 'a failed transaction leaves no binding behind');

# A bad key through the pooler: one error, no key in it.
my $bad = substr($key_b, 0, 40) . (substr($key_b, -1) eq 'A' ? 'B' : 'A');
($rc, $out, $err) = via_pooler(qq{SELECT tenancy.authenticate('$bad', true)});
like($err, qr/ERROR:\s+tenancy: invalid API key/, 'a bad key is refused');
unlike($err, qr/\Q@{[substr($bad, 11)]}\E/, 'without echoing it');

# Revocation reaches the next transaction of the pool.
$node->safe_psql('postgres',
	"SELECT tenancy.revoke_api_key(id) FROM tenancy.api_keys WHERE name = 'reader'");
($rc, $out, $err) = via_pooler(qq{BEGIN; SELECT tenancy.authenticate('$key_a', true); COMMIT;});
like($err, qr/tenancy: invalid API key/, 'a revoked key no longer authenticates');

# (A client that left in a failed transaction made PgBouncer close that
# connection; a clean one opens it again.)
via_pooler(q{SELECT 1});
is($node->safe_psql('postgres',
	q{SELECT count(*) FROM pg_stat_activity WHERE usename = 'regress_keyuser'}),
	'1', 'all clients went through one server connection');

$bouncer->stop;
$node->stop;
done_testing();
