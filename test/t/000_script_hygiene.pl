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

	# every CREATE FUNCTION / PROCEDURE ... SECURITY DEFINER statement has SET search_path
	my @defs = ($code =~ /(CREATE\s+(?:FUNCTION|PROCEDURE)\b.*?(?:\$\$|\$[a-z_]+\$|'MODULE_PATHNAME'))/gsi);
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

	# The house layout (doc/design.md, "SQL scripts"): a function's
	# attributes stand on one line after its signature, ending in its AS, so
	# the pinned path shows on that line; every SQL and PL/pgSQL function
	# pins it there (C functions resolve no names through it).
	my (@split, @unpinned);
	for my $head (@defs)
	{
		my ($name) = $head =~ /CREATE\s+\w+\s+(\S+?)\(/i;
		my ($attrs) = $head =~ /^\t(LANGUAGE [^\n]*\bAS (?:\$\$|'MODULE_PATHNAME'))$/m;
		if (!defined $attrs)
		{
			push @split, $name;
		}
		elsif ($attrs =~ /^LANGUAGE (?:sql|plpgsql)\b/i
			&& $attrs !~ /\bSET search_path = pg_catalog, pg_temp\b/)
		{
			push @unpinned, $name;
		}
	}
	is(join(', ', @split),    '', "$f: every function's attributes on one line");
	is(join(', ', @unpinned), '', "$f: every SQL and PL/pgSQL function pins search_path on that line");
}

# SQL that C code runs through SPI is planned with the owner's privileges
# (src/spi.c, doc/design.md §2).  The path is pinned there, and the texts
# are qualified as well: this checks the second layer.  In every string
# literal (adjacent ones joined) that holds a SELECT/INSERT/UPDATE/DELETE:
#   * a function call (a name followed by "(") must be schema-qualified,
#     unless it is SQL syntax (COALESCE, EXISTS, VALUES, ...) or an alias
#     column list ("AS v(a, b)");
#   * a type (after "::" or in CAST(... AS t)) must be pg_catalog.t or
#     quota_ext.t;
#   * a relation (after FROM, JOIN, UPDATE, INTO, USING) must be
#     schema-qualified, unless it names a CTE of the same text;
#   * an operator must be OPERATOR(pg_catalog.op), except the few that are
#     SQL syntax (AND, OR, NOT, IS, =/:= of SET lists and named arguments).
my %syntax = map { $_ => 1 } qw(any all exists in values from rows coalesce greatest least nullif array row
  cast on using filter over lateral with as and or not where select insert into update set delete conflict
  returning join order by partition case when then else end distinct limit offset group having union except
  intersect window substring position trim extract overlay nothing do is null skip of nowait);

# spi_findings(C source): the unqualified names in its SPI texts
sub spi_findings
{
	my ($c) = @_;
	$c =~ s{/\*.*?\*/}{}gs;
	my @found;
	for my $lits ($c =~ /((?:"(?:[^"\\]|\\.)*"\s*)+)/g)
	{
		my $sql = join '', ($lits =~ /"((?:[^"\\]|\\.)*)"/g);
		next unless $sql =~ /\b(SELECT|INSERT|UPDATE|DELETE)\b/;
		$sql =~ s/\\"/"/g;
		my %cte = map { lc $_ => 1 } ($sql =~ /(?:\bWITH\s+(?:RECURSIVE\s+)?|,\s*)([a-z_][a-z0-9_]*)\s+AS\s+(?:NOT\s+)?(?:MATERIALIZED\s+)?\(/gi);
		while ($sql =~ /(?<![.\w"])([a-z_][a-z0-9_]*)\s*\(/g)
		{
			my ($name, $before) = ($1, substr($sql, 0, $-[0]));
			next if $syntax{ lc $name } || $before =~ /\bAS\s*$/i;
			push @found, "function $name";
		}
		while ($sql =~ /::\s*("?[A-Za-z_][\w"]*)(\s*\.)?/g)
		{
			my ($name, $dot) = ($1, $2);
			push @found, "type $name" unless $dot && $name =~ /^"?(pg_catalog|quota_ext)"?$/;
		}
		while ($sql =~ /\bCAST\s*\(.*?\bAS\s+("?[A-Za-z_][\w"]*)(\s*\.)?/gis)
		{
			my ($name, $dot) = ($1, $2);
			push @found, "type $name" unless $dot && $name =~ /^"?(pg_catalog|quota_ext)"?$/;
		}
		while ($sql =~ /\b(?:FROM|JOIN|UPDATE|INTO|USING)\s+(?:ONLY\s+)?("?[A-Za-z_][\w"]*)\s*([.(]?)/gi)
		{
			my ($name, $next) = ($1, $2);
			next if $next ne '' || $cte{ lc $name } || $syntax{ lc $name };
			push @found, "relation $name";
		}
		(my $ops = $sql) =~ s/OPERATOR\s*\(\s*pg_catalog\.[^)]*\)//g;
		$ops =~ s/'(?:[^']|'')*'//g;
		while ($ops =~ /([-+*\/<>=~!@#%^&|`?]+)/g)
		{
			my $op = $1;
			# SQL syntax: "=" of SET lists, ":=" and "=>" of named arguments
			next if $op eq '=' && substr($ops, 0, $-[0]) =~ /(\bSET\b|,)\s*[\w"]+\s*$/i;
			next if $op eq '=>' || $op eq ':=' || $op eq '*';
			push @found, "operator $op";
		}
	}
	return @found;
}

my @c_files = glob('src/*.c');
ok(@c_files > 0, 'found C sources');
for my $f (@c_files)
{
	open my $fh, '<', $f or die "$f: $!";
	local $/;
	my $c = <$fh>;
	close $fh;
	is(join(', ', spi_findings($c)), '', "$f: SQL run through SPI names nothing unqualified");
}

# The checker checks: one unqualified name of each kind, put into a real SPI
# text of src/metering.c, must be found (mutation test of this file).
{
	open my $fh, '<', 'src/metering.c' or die $!;
	local $/;
	my $c = <$fh>;
	close $fh;
	my %mutations = (
		'type'     => [ qr/::pg_catalog\.timestamptz/, '::timestamptz' ],
		'relation' => [ qr/FROM quota_ext\.prices/, 'FROM prices' ],
		'function' => [ qr/quota_ext\._price_in_force\(/, '_price_in_force(' ],
		'operator' => [ qr/OPERATOR\(pg_catalog\.=\)/, '=' ],);
	for my $kind (sort keys %mutations)
	{
		my ($re, $to) = @{ $mutations{$kind} };
		(my $m = $c) =~ s/$re/$to/;
		isnt($m, $c, "mutation ($kind) applies to src/metering.c");
		like(join(', ', spi_findings($m)), qr/^\Q$kind\E /, "an unqualified $kind in an SPI text is found");
	}
}

open my $ctl, '<', 'quota_ext.control' or die $!;
my $control = do { local $/; <$ctl> };
like($control, qr/^relocatable\s*=\s*false/m, 'control: relocatable = false');
like($control, qr/^schema\s*=\s*quota_ext/m,   'control: fixed schema');
like($control, qr/^trusted\s*=\s*false/m,      'control: not trusted');
like($control, qr/^superuser\s*=\s*true/m,     'control: superuser only');

done_testing();
