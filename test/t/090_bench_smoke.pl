# The benchmark suite runs (bench/run --quick): a does-it-run check, never a
# timing assertion.  It asserts that the table is printed, that the
# quota_ext and comparator rows are there, and that every exactness mark is
# ✓ (rows with nothing to check show —; no row may show ✗).  test/run holds
# /tmp/quota_ext_test.lock already, so the bench must not take it again.
use strict;
use warnings;
use utf8;
use Test::More;

binmode(Test::More->builder->$_, ':encoding(UTF-8)') for qw(output failure_output todo_output);

my $cmd = 'bench/run --quick --duration 2 --no-lock --no-install 2>bench_smoke.err';
my $out = `$cmd`;
my $rc = $? >> 8;
utf8::decode($out);
is($rc, 0, 'bench/run --quick exits 0') or diag(`tail -n 40 bench_smoke.err`), diag($out);

like($out, qr/^\| workload \| clients \| tps \| p50 ms \| p99 ms \|/m, 'the table header is printed');

my %rows;
for my $line (split /\n/, $out)
{
	next unless $line =~ /^\| ([a-z0-9_]+) \| ([0-9-]+) \|/;
	next if $1 eq 'workload';
	my @f = split /\s*\|\s*/, $line;
	# f[0] is empty (leading |): name clients tps p50 p99 spread wal vc vp vr exact what
	$rows{"$f[1] c=$f[2]"} = { name => $f[1], tps => $f[3], exact => $f[11], what => $f[12] };
}
ok(scalar(keys %rows) >= 20, 'at least 20 rows') or diag($out);

for my $w (qw(select1 ceil_uniform ceil_hot consume_uniform consume_hot consume_zipf consume_txn
	consume_idem invoke auth_policy pl_uniform pl_hot consume_deny pl_deny group_by_month summary_big))
{
	my @r = grep { $rows{$_}{name} eq $w } keys %rows;
	ok(@r > 0, "row $w is there");
	for my $k (@r)
	{
		cmp_ok($rows{$k}{tps}, '>', 0, "$k: a positive rate") if $rows{$k}{tps} ne '-';
	}
}

for my $k (sort keys %rows)
{
	my $m = $rows{$k}{exact};
	ok($m eq '✓' || $m eq '—', "$k: exactness mark $m") or diag($out);
}
for my $w (qw(consume_uniform consume_hot consume_hot_escrow consume_idem invoke pl_uniform consume_deny
	consume_deny_escrow pl_deny rl_uniform rl_hot))
{
	# (a workload whose function is not in the build says "not available")
	my @r = grep { $rows{$_}{name} eq $w && $rows{$_}{what} !~ /^not available/ } keys %rows;
	ok((grep { $rows{$_}{exact} eq '✓' } @r) == @r, "$w: checked and exact");
}

done_testing();
