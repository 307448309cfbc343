# The release files agree with each other and with the PGXN Meta Spec
# (issue 13, doc/releasing.md).  Runs on the source tree; no server needed:
#   - META.json is valid PGXN Meta Spec 1.0.0 (test/t/PgxnMeta.pm, which is
#     itself checked here against broken copies of META.json);
#   - its version, its extension's version, debian/changelog's upstream
#     version and a CHANGELOG.md heading are quota_ext.control's
#     default_version; the files it names exist; it requires PostgreSQL 15
#     at least, as debian/pgversions does;
#   - LICENSE, META.json and debian/copyright all say PostgreSQL License;
#   - .gitignore ignores the built install script of the current version
#     and no other sql/quota_ext--*.sql (released scripts are frozen and
#     tracked); with git only, skipped without it.
use strict;
use warnings;
use Test::More;
use JSON::PP;
use File::Temp qw(tempdir);
use PgxnMeta;

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
ok(defined $version, 'quota_ext.control has a default_version');
note("default_version: $version");
ok(pgxn_version_ok($version), "default_version $version is a semantic version (PGXN needs x.y.z)");

my $meta = eval { JSON::PP->new->decode(slurp('META.json')) };
ok($meta, 'META.json is JSON') or diag($@);
is_deeply([ pgxn_meta_errors($meta) ], [], 'META.json is valid PGXN Meta Spec 1.0.0');

# the validator rejects what the spec rejects
my %broken = (
	'no license' => [ sub { delete $_[0]{license} }, qr/^license: required$/ ],
	'two-part version' => [ sub { $_[0]{version} = '0.1' }, qr/^version: not a semantic version$/ ],
	'license in capitals' => [ sub { $_[0]{license} = 'PostgreSQL' }, qr/^license: unknown license name/ ],
	'absolute file' => [ sub { $_[0]{provides}{quota_ext}{file} = '/etc/passwd' }, qr/file: not a relative Unix path$/ ],
	'no extension version' => [ sub { delete $_[0]{provides}{quota_ext}{version} }, qr/version: required$/ ],
	'range without x.y.z' => [ sub { $_[0]{prereqs}{runtime}{requires}{PostgreSQL} = '>= 15' }, qr/not a version range$/ ],
	'unknown key' => [ sub { $_[0]{homepage} = 'https://example.org/' }, qr/^META\.json: unknown key "homepage"$/ ],
	'custom key' => [ sub { $_[0]{x_homepage} = 'https://example.org/' }, undef ],
	'meta-spec 2' => [ sub { $_[0]{'meta-spec'}{version} = '2.0.0' }, qr/^meta-spec\.version: must be 1\.0\.x$/ ],
	'unknown phase' => [ sub { $_[0]{prereqs}{install} = { requires => { plpgsql => 0 } } }, qr/unknown key "install"/ ],
	'bad status' => [ sub { $_[0]{release_status} = 'beta' }, qr/^release_status:/ ],
	'name with space' => [ sub { $_[0]{name} = 'quota ext' }, qr/^name: not a Term$/ ],);
for my $case (sort keys %broken)
{
	my ($change, $expect) = @{ $broken{$case} };
	my $copy = JSON::PP->new->decode(JSON::PP->new->encode($meta));
	$change->($copy);
	my @err = pgxn_meta_errors($copy);
	if ($expect) { ok((grep { $_ =~ $expect } @err), "validator rejects: $case") or diag(explain \@err) }
	else { is_deeply(\@err, [], "validator accepts: $case") }
}

# what PGXN cannot check: the distribution's own files
is($meta->{name}, 'quota_ext', 'META.json: the distribution is quota_ext');
is($meta->{version}, $version, 'META.json: version is the control file\'s default_version');
is_deeply([ sort keys %{ $meta->{provides} } ], ['quota_ext'], 'META.json provides the one extension');
my $ext = $meta->{provides}{quota_ext};
is($ext->{version}, $version, 'META.json: the extension\'s version is default_version');
for my $k (qw(file docfile))
{
	ok(-f $ext->{$k}, "META.json: provides.quota_ext.$k ($ext->{$k}) exists");
}
for my $d (@{ $meta->{no_index}{directory} // [] })
{
	ok(-d $d, "META.json: no_index directory $d exists");
}
is($meta->{license}, 'postgresql', 'META.json: PostgreSQL License');

# PostgreSQL 15 is the oldest version quota_ext builds for
my $pg = $meta->{prereqs}{runtime}{requires}{PostgreSQL};
ok(defined $pg && $pg =~ /^(?:>=\s*)?(\d+\.\d+\.\d+)$/ && pgxn_version_cmp($1, '15.0.0') == 0,
	'META.json: runtime requires PostgreSQL >= 15.0.0')
  or diag('PostgreSQL: ' . ($pg // 'missing'));
my @pgversions = grep { /\S/ && !/^\s*#/ } split /\n/, slurp('debian/pgversions');
is_deeply(\@pgversions, ['15+'], 'debian/pgversions: 15 and later, as META.json says');

# LICENSE and the packaging say the same
my $license = slurp('LICENSE');
like($license, qr/\APostgreSQL License\n/, 'LICENSE is the PostgreSQL License');
like($license, qr/^Copyright \(c\) \d{4}(-\d{4})?, The quota_ext authors$/m, 'LICENSE: copyright of the quota_ext authors');
like(slurp('debian/copyright'), qr/^License: PostgreSQL$/m, 'debian/copyright: PostgreSQL License');

# the version everywhere a release names it
my ($deb_version) = slurp('debian/changelog') =~ /\A\S+ \(([^)]+)\)/;
my ($deb_upstream) = ($deb_version // '') =~ /^(?:\d+:)?(.*)-[^-]+$/;
is($deb_upstream, $version, "debian/changelog: the newest entry packages $version");
like(slurp('CHANGELOG.md'), qr/^## \Q$version\E\b/m, "CHANGELOG.md has a section for $version");
like(slurp('debian/control.in'), qr/^Package: postgresql-PGVERSION-quota-ext$/m,
	'debian/control.in: one package per PostgreSQL version');
like(slurp('debian/control'), qr/^Package: postgresql-\d+-quota-ext$/m,
	'debian/control is generated (pg_buildext updatecontrol)');

# .gitignore: the built script of this version only
SKIP:
{
	my $git_ok = system('git --version >/dev/null 2>&1') == 0;
	skip 'git is not installed: .gitignore not checked', 4 unless $git_ok;
	# test/run copies the checkout to a directory owned by another user
	my $home = tempdir(CLEANUP => 1);
	open my $gc, '>', "$home/gitconfig" or die $!;
	print $gc "[safe]\n\tdirectory = *\n";
	close $gc;
	local $ENV{GIT_CONFIG_GLOBAL} = "$home/gitconfig";
	skip 'not a git checkout: .gitignore not checked', 4
	  unless system('git rev-parse --is-inside-work-tree >/dev/null 2>&1') == 0;
	my $ignored = sub { system('git', 'check-ignore', '-q', '--no-index', $_[0]) == 0 };
	ok($ignored->("sql/quota_ext--$version.sql"), "the built sql/quota_ext--$version.sql is ignored");
	ok(!$ignored->('sql/quota_ext--0.0.1.sql'), 'a frozen install script of an earlier version is not ignored');
	ok(!$ignored->("sql/quota_ext--0.0.1--$version.sql"), 'upgrade scripts are not ignored');
	is(`git ls-files -- sql/quota_ext--$version.sql`, '', "sql/quota_ext--$version.sql is not tracked (built from sql/install)");
}

done_testing();
