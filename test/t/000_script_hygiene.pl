# Static checks of the extension scripts and control file (reliability
# checklist B8; CVE-2020-14350 / CVE-2022-2625 class): no OR REPLACE, no
# IF NOT EXISTS, no quoted @extschema@/@extowner@, every SECURITY DEFINER
# function pins search_path, the control file is fixed-schema, not
# relocatable, not trusted.  Runs on the source tree; no server needed.
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

open my $ctl, '<', 'quota_ext.control' or die $!;
my $control = do { local $/; <$ctl> };
like($control, qr/^relocatable\s*=\s*false/m, 'control: relocatable = false');
like($control, qr/^schema\s*=\s*quota_ext/m,   'control: fixed schema');
like($control, qr/^trusted\s*=\s*false/m,      'control: not trusted');
like($control, qr/^superuser\s*=\s*true/m,     'control: superuser only');

done_testing();
