# `make dist` (issue 13, doc/releasing.md): the tarball PGXN takes is
# quota_ext-VERSION.tar.gz with everything under quota_ext-VERSION/: the
# tree committed at HEAD less what .gitattributes marks export-ignore — the
# extension's sources, META.json, control file, Makefile and LICENSE; no
# .git, no build products, no test results.  The tarball is unpacked and
# built with `make` to prove nothing it needs was left out.  Needs git and a
# git checkout (skips otherwise); no server.
use strict;
use warnings;
use Test::More;
use File::Temp qw(tempdir);
use JSON::PP;

if (system('git --version >/dev/null 2>&1') != 0)
{
	plan skip_all => 'git is not installed: make dist archives a git checkout';
}
my $tmp = tempdir(CLEANUP => 1);
# test/run copies the checkout to a directory owned by another user, which
# git refuses unless told the directory is safe
open my $gc, '>', "$tmp/gitconfig" or die $!;
print $gc "[safe]\n\tdirectory = *\n";
close $gc;
$ENV{GIT_CONFIG_GLOBAL} = "$tmp/gitconfig";
if (system('git rev-parse --verify -q HEAD >/dev/null 2>&1') != 0)
{
	plan skip_all => 'not a git checkout with a commit: make dist archives HEAD';
}

sub slurp
{
	my ($f) = @_;
	open my $fh, '<', $f or die "$f: $!";
	local $/;
	my $s = <$fh>;
	close $fh;
	return $s;
}

my ($version) = slurp('quota_ext.control') =~ /^default_version\s*=\s*'([^']*)'/m;
my $top = "quota_ext-$version";
my $tarball = "$tmp/$top.tar.gz";

my $out = `make -s --no-print-directory dist DISTDIR=$tmp 2>&1`;
is($?, 0, 'make dist') or diag($out);
ok(-s $tarball, "make dist wrote $top.tar.gz");

my @entries = split /\n/, `tar -tzf $tarball`;
is($?, 0, 'the tarball is a gzip tar');
is_deeply([ grep { !m{^\Q$top\E/} } @entries ], [], "every entry is under $top/");
my %in = map { my $e = $_; $e =~ s{^\Q$top\E/}{}; ($e => 1) } @entries;

# what the committed tree holds, less export-ignore, is all there
my @tracked = split /\n/, `git ls-tree -r --name-only HEAD`;
my @export = grep { !m{^(\.gitignore|\.gitattributes|\.ci/.*)$} } @tracked;
is_deeply([ grep { !$in{$_} } @export ], [], 'every committed file (less export-ignore) is in the tarball');
my %export = map { $_ => 1 } @export;
is_deeply([ sort grep { $_ ne '' && !m{/$} && !$export{$_} } keys %in ], [], 'nothing else is in the tarball');

for my $f ('META.json', 'quota_ext.control', 'Makefile', 'LICENSE', 'README.md', 'CHANGELOG.md',
	'sql/install/00_core.sql', 'sql/install/99_finish.sql', 'src/quota_ext.c', 'src/quota_ext.h', 'src/compat.h',
	'doc/reference.md', 'debian/control.in', 'debian/rules')
{
	ok($in{$f}, "the tarball holds $f");
}
my @parts = map { s{^sql/install/}{}r } glob('sql/install/*.sql');
is_deeply([ sort map { m{^sql/install/(.*\.sql)$} ? $1 : () } keys %in ], [ sort @parts ],
	'the tarball holds every sql/install part');

my @unwanted = grep {
	m{(^|/)\.git(/|$)} || m{^\.gitignore$} || m{^\.gitattributes$} || m{^\.ci/}
	  || m{(^|/)(results|output_iso|tmp_check|log)/} || m{(^|/)regression\.(diffs|out)$}
	  || m{\.(o|so|bc|a|tar\.gz|tap\.log)$} || m{^bench/out/} || $_ eq "sql/quota_ext--$version.sql"
} keys %in;
is_deeply([ sort @unwanted ], [], 'no .git, CI plumbing, build products or test results');

# META.json in the tarball is this version's
system('tar', '-xzf', $tarball, '-C', $tmp) == 0 or die 'tar -x failed';
my $meta = JSON::PP->new->decode(slurp("$tmp/$top/META.json"));
is($meta->{version}, $version, "the tarball's META.json is version $version");

# the unpacked tarball builds, and assembles the install script from its parts
SKIP:
{
	skip 'no pg_config: the tarball is not built', 3
	  unless system('pg_config --pgxs >/dev/null 2>&1') == 0;
	my $log = `make -C $tmp/$top -s -j2 2>&1`;
	is($?, 0, 'make in the unpacked tarball') or diag($log);
	ok(-f "$tmp/$top/quota_ext.so", 'it builds quota_ext.so');
	my $built = -f "$tmp/$top/sql/quota_ext--$version.sql" ? slurp("$tmp/$top/sql/quota_ext--$version.sql") : '';
	is($built, join('', map { slurp($_) } sort glob('sql/install/*.sql')),
		"its sql/quota_ext--$version.sql is sql/install/*.sql in order");
}

done_testing();
