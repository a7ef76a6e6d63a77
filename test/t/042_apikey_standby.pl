# The key cache of a hot standby's backends: a key revoked, rotated or
# deleted on the primary, or its tenant suspended, is refused by a standby
# session that had it cached as soon as the change is replayed (the
# relcache invalidation travels in the commit record; the trigger that
# sends it runs on the primary only).  And a session verifying more keys
# than its cache holds.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $primary = PostgreSQL::Test::Cluster->new('keys_primary');
$primary->init(allows_streaming => 1);
$primary->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'tenancy,pg_cron'
cron.database_name = 'postgres'
});
$primary->start;
$primary->safe_psql('postgres', q{
	CREATE EXTENSION tenancy CASCADE;
	SELECT tenancy.create_tenant('acme');
	SELECT tenancy.create_tenant('globex');
	CREATE TABLE public.keys (name text PRIMARY KEY, k text NOT NULL);
	INSERT INTO public.keys
	VALUES ('revoked', tenancy.create_api_key('acme', 'revoked')),
	       ('rotated', tenancy.create_api_key('acme', 'rotated')),
	       ('deleted', tenancy.create_api_key('acme', 'deleted')),
	       ('kept', tenancy.create_api_key('acme', 'kept')),
	       ('suspended', tenancy.create_api_key('globex', 'suspended'));
});
$primary->backup('b');
my $standby = PostgreSQL::Test::Cluster->new('keys_standby');
$standby->init_from_backup($primary, 'b', has_streaming => 1);
$standby->start;
$primary->wait_for_catchup($standby, 'replay');

# One standby session throughout, so that its cache is the one tested.
my $bg = $standby->background_psql('postgres');
my $verify = q{SELECT string_agg(k.name, ',' ORDER BY k.name)
	FROM public.keys k, tenancy.verify_api_key(k.k) v};
is($bg->query_safe($verify), 'deleted,kept,revoked,rotated,suspended',
	'on the standby, every key verifies (and is cached)');
is($bg->query_safe($verify), 'deleted,kept,revoked,rotated,suspended',
	'again, from the cache');

$primary->safe_psql('postgres', q{
	SELECT tenancy.revoke_api_key(id) FROM tenancy.api_keys WHERE name = 'revoked';
	INSERT INTO public.keys
	SELECT 'rotated-new', tenancy.rotate_api_key(id, '1 hour') FROM tenancy.api_keys WHERE name = 'rotated';
	DELETE FROM tenancy.api_keys WHERE name = 'deleted';
	SELECT tenancy.suspend_tenant('globex');
});
$primary->wait_for_catchup($standby, 'replay');
is($bg->query_safe($verify), 'kept,rotated,rotated-new',
	'after replay: revoked, deleted and suspended refused, the rotated key in its grace, the new key valid');

$primary->safe_psql('postgres', q{
	UPDATE tenancy.api_keys SET expires_at = now() WHERE name = 'rotated' AND expires_at IS NOT NULL;
	SELECT tenancy.activate_tenant('globex');
});
$primary->wait_for_catchup($standby, 'replay');
is($bg->query_safe($verify), 'kept,rotated-new,suspended',
	'the end of the grace period and the reactivation reach the standby too');

my $failures = $bg->query_safe(q{SELECT string_agg(cause || '=' || failures, ',' ORDER BY cause)
	FROM tenancy._auth_failures() WHERE failures > 0});
is($failures, 'expired=1,revoked=2,tenant_inactive=1,unknown=2',
	'each refusal is counted by its cause on the standby');
$bg->quit;

# More keys than one backend caches (8192): the cache starts afresh when
# full, and every key is still judged right, before and after a revocation
# by another session.
$primary->safe_psql('postgres', q{
	SELECT tenancy.create_tenant('many');
	SELECT tenancy.set_tenant_quota('many', 'api_keys', NULL);
	CREATE TABLE public.many_keys AS
	SELECT g AS n, tenancy.create_api_key('many', 'k' || g) AS k FROM generate_series(1, 8300) g;
});
$bg = $primary->background_psql('postgres');
my $count = q{SELECT count(*) FROM public.many_keys m, tenancy.verify_api_key(m.k) v};
is($bg->query_safe($count), '8300', 'more keys than the cache holds all verify');
is($bg->query_safe($count), '8300', 'and again');
$primary->safe_psql('postgres', q{
	SELECT tenancy.revoke_api_key(id) FROM tenancy.api_keys WHERE name IN ('k1', 'k8300');
});
is($bg->query_safe($count), '8298', 'two keys revoked by another session are refused');
$bg->quit;

done_testing();
