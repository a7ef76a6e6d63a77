# CREATE EXTENSION tenancy without the library in shared_preload_libraries
# fails with 55000 and a HINT naming the setting; with it, it works.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('not_preloaded');
$node->init;
$node->start;

my ($ret, $stdout, $stderr) = $node->psql('postgres',
	"\\set VERBOSITY verbose\nCREATE EXTENSION tenancy CASCADE;");
isnt($ret, 0, 'CREATE EXTENSION fails without preloading');
like($stderr, qr/ERROR:\s+55000: tenancy: the tenancy library is not preloaded/,
	'SQLSTATE 55000 and a tenancy: message');
like($stderr, qr/HINT:\s+Add tenancy to shared_preload_libraries/,
	'the HINT names shared_preload_libraries');
is($node->safe_psql('postgres',
	"SELECT count(*) FROM pg_extension WHERE extname = 'tenancy'"),
	'0', 'nothing of the extension is left behind');

# Without preloading, app.tenant_id is an unchecked placeholder: a session
# that LOADs the library late must not get hooks half-installed.
($ret, $stdout, $stderr) = $node->psql('postgres',
	"LOAD 'tenancy'; SET app.tenant_id = 'not-a-uuid'; SHOW app.tenant_id;");
is($stdout, 'not-a-uuid', 'a late LOAD defines nothing');

$node->append_conf('postgresql.conf', "shared_preload_libraries = 'tenancy'");
$node->restart;
$node->safe_psql('postgres', 'CREATE EXTENSION tenancy CASCADE');
is($node->safe_psql('postgres',
	"SELECT extversion FROM pg_extension WHERE extname = 'tenancy'"),
	'0.1', 'CREATE EXTENSION works once preloaded');

($ret, $stdout, $stderr) = $node->psql('postgres', "SET app.tenant_id = 'not-a-uuid'");
like($stderr, qr/tenancy: app.tenant_id must be a uuid or empty/,
	'the preloaded library checks app.tenant_id');

# Taken out of shared_preload_libraries after CREATE EXTENSION: using the
# context says so (55000 and the HINT), rather than "no tenant context".
$node->safe_psql('postgres', q{
	SELECT tenancy.create_tenant('acme');
	CREATE TABLE items (id int);
	SELECT tenancy.protect('items');
	CREATE ROLE app;
	GRANT SELECT ON items TO app;
});
$node->append_conf('postgresql.conf', "shared_preload_libraries = ''");
$node->restart;
for my $sql ("SELECT tenancy.set_tenant('acme')",
	"SELECT tenancy.current_tenant_id()",
	"SET ROLE app; SELECT count(*) FROM items")
{
	($ret, $stdout, $stderr) = $node->psql('postgres',
		"\\set VERBOSITY verbose\n$sql");
	like($stderr, qr/ERROR:\s+55000: tenancy: the tenancy library is not preloaded.*HINT:\s+Add tenancy to shared_preload_libraries/s,
		"not preloaded any more: $sql gives 55000");
}

$node->stop;
done_testing();
