# TenancyPgBouncer: a real PgBouncer in front of a PostgreSQL::Test::Cluster,
# for TAP tests.  Transaction pooling with a single server connection, so
# that every client shares it; trust authentication on 127.0.0.1.
#
#   plan skip_all => 'pgbouncer is not installed' unless TenancyPgBouncer::available();
#   my $bouncer = TenancyPgBouncer->start($node, 'regress_user');
#   my ($rc, $stdout, $stderr) = $bouncer->psql('SELECT 1');
#   $bouncer->stop;
package TenancyPgBouncer;

use strict;
use warnings;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

our $binary = '/usr/sbin/pgbouncer';

sub available
{
	return -x $binary;
}

# Start PgBouncer for database postgres of $node, letting $user in; waits
# until it accepts connections (and says so as a test).
sub start
{
	my ($class, $node, $user) = @_;
	my $self = bless {
		dir => PostgreSQL::Test::Utils::tempdir,
		port => PostgreSQL::Test::Cluster::get_free_port(),
		user => $user,
	}, $class;
	my $dir = $self->{dir};

	open my $users, '>', "$dir/userlist.txt" or die "userlist.txt: $!";
	print $users qq{"$user" ""\n};
	close $users;
	open my $ini, '>', "$dir/pgbouncer.ini" or die "pgbouncer.ini: $!";
	print $ini <<"EOC";
[databases]
postgres = host=@{[$node->host]} port=@{[$node->port]} dbname=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $self->{port}
unix_socket_dir =
auth_type = trust
auth_file = $dir/userlist.txt
pool_mode = transaction
default_pool_size = 1
max_client_conn = 20
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
EOC
	close $ini;
	system($binary, '-d', "$dir/pgbouncer.ini") == 0 or die "pgbouncer did not start";

	my $ready = 0;
	for (1 .. 50)
	{
		my ($rc, $out) = $self->psql('SELECT 1');
		if ($rc == 0 && $out eq '1') { $ready = 1; last; }
		select(undef, undef, undef, 0.2);
	}
	ok($ready, 'pgbouncer accepts connections');
	return $self;
}

# Run SQL through PgBouncer as the user; returns (exit code, stdout, stderr).
sub psql
{
	my ($self, $sql) = @_;
	my ($stdout, $stderr) = ('', '');
	my $ok = IPC::Run::run([ 'psql', '-X', '-A', '-t', '-q', '-v', 'ON_ERROR_STOP=1',
			'-h', '127.0.0.1', '-p', $self->{port}, '-U', $self->{user}, '-d', 'postgres',
			'-c', $sql ], '>', \$stdout, '2>', \$stderr);
	chomp $stdout;
	return ($ok ? 0 : 1, $stdout, $stderr);
}

sub stop
{
	my ($self) = @_;
	if (open my $pid, '<', "$self->{dir}/pgbouncer.pid")
	{
		my $p = <$pid>;
		chomp $p;
		kill 'TERM', $p;
	}
	return;
}

1;
