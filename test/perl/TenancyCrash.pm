# TenancyCrash: crash a server on purpose in a TAP test.
#
#   use lib "$FindBin::RealBin/../perl";
#   use TenancyCrash;
#   TenancyCrash::kill_backend($node, $bg);
#
# kill_backend() sends SIGKILL to the backend of a background_psql session
# (the postmaster then resets shared memory and restarts, as after any
# crash: restart_after_crash must be on, its default), ends the session
# and waits until the server accepts connections again.
package TenancyCrash;

use strict;
use warnings;

sub kill_backend
{
	my ($node, $bg) = @_;
	my $pid = $bg->query_safe('SELECT pg_backend_pid()');

	chomp $pid;
	kill 'KILL', $pid;
	$bg->quit;
	$node->poll_query_until('postgres', 'SELECT 1', '1')
	  or die 'the server did not come back after the crash';
	return;
}

1;
