# test/t/PgxnMeta.pm — the PGXN Meta Spec 1.0.0 (https://pgxn.org/meta/spec.txt)
# as code, for test/t/004_release_files.pl.  Debian has no package of
# PGXN::Meta::Validator, so the rules of the spec are written out here:
#
#   pgxn_meta_errors($meta)   the ways the decoded META.json breaks the
#                             spec, as "path: problem" strings; empty when
#                             it is valid
#   pgxn_version_ok($s)       $s is a semantic version (SemVer 2.0.0, as
#                             the spec requires of every version)
#   pgxn_version_cmp($a, $b)  <=> of two semantic versions' x.y.z
#
# What it checks: the required keys (name, version, abstract, maintainer,
# license, provides, meta-spec), no unknown key outside x_/X_ custom keys at
# any level the spec closes, and the form of every value the spec defines:
# Terms (names of the distribution and its extensions and prerequisites),
# Versions, Version Ranges, the license names, paths, prereq phases and
# relationships, release_status, tags, no_index, resources, meta-spec.
package PgxnMeta;

use strict;
use warnings;
use Exporter 'import';

our @EXPORT = qw(pgxn_meta_errors pgxn_version_ok pgxn_version_cmp);

my $num = qr/(?:0|[1-9][0-9]*)/;
my $pre_id = qr/(?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)/;
my $semver = qr/$num\.$num\.$num(?:-$pre_id(?:\.$pre_id)*)?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?/;
my $range_one = qr/(?:(?:[=!]=|[<>]=?)\s*)?$semver/;

my %licenses = map { $_ => 1 } qw(agpl_3 apache_1_1 apache_2_0 artistic_1 artistic_2 bsd freebsd
  gfdl_1_2 gfdl_1_3 gpl_1 gpl_2 gpl_3 lgpl_2_1 lgpl_3_0 mit mozilla_1_0 mozilla_1_1 openssl perl_5
  postgresql qpl_1_0 ssleay sun zlib open_source restricted unrestricted unknown);

sub pgxn_version_ok { my ($v) = @_; return defined $v && !ref $v && $v =~ /\A$semver\z/ }

sub pgxn_version_cmp
{
	my @a = ($_[0] =~ /^(\d+)\.(\d+)\.(\d+)/);
	my @b = ($_[1] =~ /^(\d+)\.(\d+)\.(\d+)/);
	return $a[0] <=> $b[0] || $a[1] <=> $b[1] || $a[2] <=> $b[2];
}

sub is_string { my ($v) = @_; return defined $v && !ref $v }
sub is_custom { return $_[0] =~ /^[xX]_./ }

# a Term: at least two characters, no slash, backslash, space or control
sub term_ok { my ($v) = @_; return is_string($v) && $v =~ /\A[^\/\\\s[:cntrl:]]{2,}\z/ }

# a Path: relative, Unix separators, inside the distribution
sub path_ok
{
	my ($v) = @_;
	return is_string($v) && length($v) >= 2 && $v !~ m{^/} && $v !~ /\\/ && $v !~ m{(^|/)\.\.(/|$)};
}

sub range_ok
{
	my ($v) = @_;
	return 0 unless defined $v && !ref $v;
	return 1 if $v eq '0';
	return $v =~ /\A$range_one(?:\s*,\s*$range_one)*\z/;
}

sub closed_keys # closed_keys(\@errors, $path, $hash, @allowed)
{
	my ($err, $path, $h, @allowed) = @_;
	my %ok = map { $_ => 1 } @allowed;
	push @$err, "$path: unknown key \"$_\"" for grep { !$ok{$_} && !is_custom($_) } sort keys %$h;
}

sub pgxn_meta_errors
{
	my ($m) = @_;
	my @err;
	return ('META.json: not a JSON object') unless ref $m eq 'HASH';

	for my $k (qw(name version abstract maintainer license provides meta-spec))
	{
		push @err, "$k: required" unless exists $m->{$k};
	}
	closed_keys(\@err, 'META.json', $m,
		qw(name version abstract maintainer license provides meta-spec description generated_by
		  tags no_index prereqs release_status resources));

	push @err, 'name: not a Term' if exists $m->{name} && !term_ok($m->{name});
	push @err, 'version: not a semantic version' if exists $m->{version} && !pgxn_version_ok($m->{version});
	for my $k (qw(abstract description generated_by))
	{
		push @err, "$k: not a non-empty string"
		  if exists $m->{$k} && !(is_string($m->{$k}) && length $m->{$k});
	}

	if (exists $m->{maintainer})
	{
		my $v = $m->{maintainer};
		my @list = ref $v eq 'ARRAY' ? @$v : ($v);
		push @err, 'maintainer: not a string or a non-empty list of strings'
		  if !@list || grep { !(is_string($_) && length $_) } @list;
	}

	if (exists $m->{license})
	{
		my $v = $m->{license};
		if (ref $v eq 'HASH')
		{
			push @err, 'license: empty object' unless %$v;
			push @err, "license: \"$_\" is not given a URI"
			  for grep { !(is_string($v->{$_}) && $v->{$_} =~ m{^[a-z][a-z0-9+.-]*:\S+$}i) } sort keys %$v;
		}
		else
		{
			my @list = ref $v eq 'ARRAY' ? @$v : ($v);
			push @err, 'license: empty list' unless @list;
			push @err, "license: unknown license name \"" . ($_ // 'null') . '"'
			  for grep { !(is_string($_) && $licenses{$_}) } @list;
		}
	}

	if (exists $m->{provides})
	{
		my $p = $m->{provides};
		if (ref $p ne 'HASH' || !%$p)
		{
			push @err, 'provides: not an object naming at least one extension';
		}
		else
		{
			for my $ext (sort keys %$p)
			{
				my $e = $p->{$ext};
				push @err, "provides: \"$ext\" is not a Term" unless term_ok($ext);
				if (ref $e ne 'HASH') { push @err, "provides.$ext: not an object"; next }
				closed_keys(\@err, "provides.$ext", $e, qw(file version abstract docfile));
				push @err, "provides.$ext.file: required" unless exists $e->{file};
				push @err, "provides.$ext.version: required" unless exists $e->{version};
				push @err, "provides.$ext.version: not a semantic version"
				  if exists $e->{version} && !pgxn_version_ok($e->{version});
				for my $k (qw(file docfile))
				{
					push @err, "provides.$ext.$k: not a relative Unix path"
					  if exists $e->{$k} && !path_ok($e->{$k});
				}
				push @err, "provides.$ext.abstract: not a non-empty string"
				  if exists $e->{abstract} && !(is_string($e->{abstract}) && length $e->{abstract});
			}
		}
	}

	if (exists $m->{'meta-spec'})
	{
		my $s = $m->{'meta-spec'};
		if (ref $s ne 'HASH') { push @err, 'meta-spec: not an object' }
		else
		{
			closed_keys(\@err, 'meta-spec', $s, qw(version url));
			push @err, 'meta-spec.version: must be 1.0.x'
			  unless is_string($s->{version}) && $s->{version} =~ /\A1\.0\.\d+\z/;
			push @err, 'meta-spec.url: not the spec\'s URL'
			  if exists $s->{url} && !(is_string($s->{url}) && $s->{url} =~ m{\Ahttps?://pgxn\.org/meta/spec\.txt\z});
		}
	}

	if (exists $m->{prereqs})
	{
		my $p = $m->{prereqs};
		if (ref $p ne 'HASH' || !%$p) { push @err, 'prereqs: not a non-empty object' }
		else
		{
			closed_keys(\@err, 'prereqs', $p, qw(configure build test runtime develop));
			for my $phase (grep { !is_custom($_) } sort keys %$p)
			{
				my $ph = $p->{$phase};
				if (ref $ph ne 'HASH' || !%$ph) { push @err, "prereqs.$phase: not a non-empty object"; next }
				closed_keys(\@err, "prereqs.$phase", $ph, qw(requires recommends suggests conflicts));
				for my $rel (grep { !is_custom($_) } sort keys %$ph)
				{
					my $r = $ph->{$rel};
					if (ref $r ne 'HASH') { push @err, "prereqs.$phase.$rel: not an object"; next }
					for my $name (sort keys %$r)
					{
						push @err, "prereqs.$phase.$rel: \"$name\" is not a Term" unless term_ok($name);
						push @err, "prereqs.$phase.$rel.$name: not a version range"
						  unless range_ok($r->{$name});
					}
				}
			}
		}
	}

	push @err, 'release_status: not one of stable, testing, unstable'
	  if exists $m->{release_status}
	  && !(is_string($m->{release_status}) && $m->{release_status} =~ /\A(stable|testing|unstable)\z/);

	if (exists $m->{tags})
	{
		my $t = $m->{tags};
		if (ref $t ne 'ARRAY' || !@$t) { push @err, 'tags: not a non-empty list' }
		else
		{
			push @err, "tags: \"" . ($_ // 'null') . '" is not a tag (2-255 characters, no / \\ or control)'
			  for grep { !(is_string($_) && /\A[^\/\\[:cntrl:]]{2,255}\z/) } @$t;
		}
	}

	if (exists $m->{no_index})
	{
		my $n = $m->{no_index};
		if (ref $n ne 'HASH' || !(exists $n->{file} || exists $n->{directory}))
		{
			push @err, 'no_index: not an object with file or directory';
		}
		else
		{
			closed_keys(\@err, 'no_index', $n, qw(file directory));
			for my $k (grep { exists $n->{$_} } qw(file directory))
			{
				my @list = ref $n->{$k} eq 'ARRAY' ? @{ $n->{$k} } : ($n->{$k});
				push @err, "no_index.$k: empty list" unless @list;
				push @err, "no_index.$k: \"" . ($_ // 'null') . '" is not a relative Unix path'
				  for grep { !path_ok($_) } @list;
			}
		}
	}

	if (exists $m->{resources})
	{
		my $r = $m->{resources};
		my $uri = qr{\A[a-z][a-z0-9+.-]*:\S+\z}i;
		if (ref $r ne 'HASH' || !%$r) { push @err, 'resources: not a non-empty object' }
		else
		{
			closed_keys(\@err, 'resources', $r, qw(homepage bugtracker repository));
			push @err, 'resources.homepage: not a URI'
			  if exists $r->{homepage} && !(is_string($r->{homepage}) && $r->{homepage} =~ $uri);
			for my $k (qw(bugtracker repository))
			{
				next unless exists $r->{$k};
				my $o = $r->{$k};
				if (ref $o ne 'HASH' || !%$o) { push @err, "resources.$k: not a non-empty object"; next }
				my @keys = $k eq 'bugtracker' ? qw(web mailto) : qw(url web type);
				closed_keys(\@err, "resources.$k", $o, @keys);
				for my $f (grep { exists $o->{$_} } qw(web url))
				{
					push @err, "resources.$k.$f: not a URI" unless is_string($o->{$f}) && $o->{$f} =~ $uri;
				}
				push @err, "resources.$k.type: not a lower-case word"
				  if exists $o->{type} && !(is_string($o->{type}) && $o->{type} =~ /\A[a-z]+\z/);
			}
		}
	}
	return @err;
}

1;
