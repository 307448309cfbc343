# Static checks of the extension scripts and control file (reliability
# checklist B8; CVE-2020-14350 / CVE-2022-2625 class): no OR REPLACE, no
# IF NOT EXISTS, no quoted @extschema@/@extowner@, every SECURITY DEFINER
# function pins search_path, the control file is fixed-schema, not
# relocatable, not trusted; and (B6) the SQL strings in src/*.c call only
# schema-qualified functions.  Runs on the source tree; no server needed.
use strict;
use warnings;
use Test::More;

my @scripts = (glob('sql/install/*.sql'), glob('sql/quota_ext--*--*.sql'));
ok(@scripts > 0, 'found extension scripts');

for my $f (@scripts)
{
	open my $fh, '<', $f or die "$f: $!";
	local $/;
	my $sql = <$fh>;
	close $fh;
	# strip -- comments so prose may mention the forbidden forms
	(my $code = $sql) =~ s/--[^\n]*//g;

	unlike($code, qr/\bOR\s+REPLACE\b/i, "$f: no OR REPLACE");
	unlike($code, qr/\bIF\s+NOT\s+EXISTS\b/i, "$f: no IF NOT EXISTS");
	unlike($code, qr/['"\$]\@ext(schema|owner)\@/i, "$f: no quoted \@extschema\@/\@extowner\@");

	# every CREATE FUNCTION ... SECURITY DEFINER statement has SET search_path
	my @defs = ($code =~ /(CREATE\s+FUNCTION\b.*?(?:\$\$|\$[a-z_]+\$|'MODULE_PATHNAME'))/gsi);
	my ($n_definer, $n_pinned) = (0, 0);
	for my $head (@defs)
	{
		next unless $head =~ /SECURITY\s+DEFINER/i;
		$n_definer++;
		if ($head =~ /SET\s+search_path\s*=\s*pg_catalog\s*,\s*pg_temp/i)
		{
			$n_pinned++;
		}
		else
		{
			my ($name) = $head =~ /CREATE\s+FUNCTION\s+(\S+?)\(/i;
			diag("$f: SECURITY DEFINER without pinned search_path: $name");
		}
	}
	is($n_pinned, $n_definer, "$f: all $n_definer SECURITY DEFINER functions pin search_path");
}

# SQL that C code runs through SPI is planned under the caller's
# search_path (doc/design.md, "How functions reach tables"), with the
# owner's privileges: every function it calls must be schema-qualified.
# Checks every string literal (adjacent ones joined) that holds a
# SELECT/INSERT/UPDATE/DELETE for an unqualified name followed by "(" that
# is not SQL syntax (COALESCE, EXISTS, VALUES, ...) nor an alias column
# list ("AS v(a, b)").
my %syntax = map { $_ => 1 } qw(any all exists in values from rows coalesce greatest least nullif array row
  cast on using filter over lateral with as and or not where select insert into update set delete conflict
  returning join order by partition case when then else end distinct limit offset group having union except
  intersect window substring position trim extract overlay nothing do is null);
my @c_files = glob('src/*.c');
ok(@c_files > 0, 'found C sources');
for my $f (@c_files)
{
	open my $fh, '<', $f or die "$f: $!";
	local $/;
	my $c = <$fh>;
	close $fh;
	$c =~ s{/\*.*?\*/}{}gs;
	my @unqualified;
	for my $lits ($c =~ /((?:"(?:[^"\\]|\\.)*"\s*)+)/g)
	{
		my $sql = join '', ($lits =~ /"((?:[^"\\]|\\.)*)"/g);
		next unless $sql =~ /\b(SELECT|INSERT|UPDATE|DELETE)\b/;
		while ($sql =~ /(?<![.\w"])([a-z_][a-z0-9_]*)\s*\(/g)
		{
			my ($name, $before) = ($1, substr($sql, 0, $-[0]));
			next if $syntax{ lc $name } || $before =~ /\bAS\s*$/i;
			push @unqualified, $name;
		}
	}
	is("@unqualified", '', "$f: SQL run through SPI calls only schema-qualified functions");
}

open my $ctl, '<', 'quota_ext.control' or die $!;
my $control = do { local $/; <$ctl> };
like($control, qr/^relocatable\s*=\s*false/m, 'control: relocatable = false');
like($control, qr/^schema\s*=\s*quota_ext/m,   'control: fixed schema');
like($control, qr/^trusted\s*=\s*false/m,      'control: not trusted');
like($control, qr/^superuser\s*=\s*true/m,     'control: superuser only');

done_testing();
