# API keys stay secret outside the key table (issue 12, findings 6 and 7).
#
# 1. A failing call that was handed a key (authenticate, invoke) logs its
#    error but not its STATEMENT line, so the key does not reach the server
#    log (log_min_error_statement = error, the default, would print it).
# 2. authenticate() does the same work for a wrong secret of a known (and
#    cached) key as for an unknown key id: both read the key table once, a
#    good cached key reads nothing.  Counted with the transaction's own
#    scan counters of quota_ext.api_keys and its indexes, not with a clock, so the test
#    is deterministic; the timing follows from the work.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use QuotaReliab;

my $node = quota_node('key_secrecy', conf => [ 'log_min_error_statement = error', 'log_statement = none', 'quota_ext.key_touch_interval = 3600' ]);

my ($tid, $key) = split / /, (split /\n/, $node->safe_psql('postgres', q{
	SELECT quota_ext.tenant_create('ks') AS t \gset
	SELECT quota_ext.model_register('ks-m');
	SELECT quota_ext.policy_set(:t, 'ks-m', true);
	SELECT :t || ' ' || api_key FROM quota_ext.user_create(:t, 'ks@a.example', 'admin');
}))[-1];
like($key, qr/^qxk_\d+_\d+_/, 'a key');
# well-formed keys (their checksum is right, so they reach the table): a
# wrong secret for the key's id, and an id that does not exist
my ($kid) = $key =~ /^qxk_\d+_(\d+)_/;
my $wrong = $node->safe_psql('postgres', "SELECT api_key FROM quota_ext._api_key_mint($tid, $kid)");
my $unknown = $node->safe_psql('postgres', "SELECT api_key FROM quota_ext._api_key_mint($tid, 999999)");
isnt($wrong, $key, 'a second secret for the same key id');

my $log_start = -s $node->logfile;
my @failing = (
	[ "SELECT * FROM quota_ext.invoke('$key', 'no-such-model')",  qr/does not exist/ ],
	[ "SELECT * FROM quota_ext.invoke('$key', 'ks-m', -1)",       qr/units/ ],
	[ "SELECT * FROM quota_ext.invoke('$key', NULL)",             qr/must not be null/ ],
	[ "SELECT * FROM quota_ext.invoke('$wrong', 'ks-m')",         qr/invalid API key/ ],
	[ "SELECT * FROM quota_ext.authenticate('$wrong')",           qr/invalid API key/ ],
	[ "SELECT * FROM quota_ext.authenticate('$unknown')",         qr/invalid API key/ ],
	[ "SELECT * FROM quota_ext.authenticate('qxk_broken')",       qr/invalid API key/ ],
	[ "SELECT * FROM quota_ext.authenticate('${key}x')",           qr/invalid API key/ ],);
for my $f (@failing)
{
	my ($ret, $out, $err) = $node->psql('postgres', $f->[0]);
	isnt($ret, 0, "fails: $f->[0]");
	like($err, $f->[1], 'with its error');
}
# an error after a key was used, in a statement without one, is logged as usual
$node->psql('postgres', "SELECT * FROM quota_ext.quota_consume($tid, 'statement-shown')");
my $log = slurp_file($node->logfile, $log_start);
my $n_errors = () = $log =~ /ERROR:/g;
cmp_ok($n_errors, '>=', scalar @failing, 'the errors are logged');
unlike($log, qr/qxk_\d+_\d+_[0-9A-Za-z]{10}/, 'no key (secret part) in the server log');
like($log, qr/STATEMENT:.*statement-shown/, 'a statement without a key is still logged');

# 2. the same work for a wrong secret as for an unknown key id
sub scans_for
{
	my ($k) = @_;
	return $node->safe_psql('postgres', qq{
		DO \$\$ BEGIN PERFORM quota_ext.authenticate('$k'); EXCEPTION WHEN invalid_authorization_specification THEN NULL; END \$\$;
		SELECT pg_stat_get_xact_numscans('quota_ext.api_keys'::regclass)
		       + (SELECT sum(pg_stat_get_xact_numscans(i.indexrelid)) FROM pg_index i
		           WHERE i.indrelid = 'quota_ext.api_keys'::regclass);
	}, extra_params => [ '--single-transaction' ]);
}
# warm this session's and the shared cache with the good key
$node->safe_psql('postgres', "SELECT quota_ext.authenticate('$key')") for 1 .. 2;
is(scans_for($key),     '0', 'a good cached key reads no key row');
is(scans_for($wrong),   '1', 'a wrong secret of a cached key reads the key table once');
is(scans_for($unknown), '1', 'an unknown key id reads the key table once: the same work');
is(scans_for($key),     '0', 'the good key is still cached after a wrong secret');

done_testing();
