# Mutation test of the access attack suite (test/pgtap/10_access_attack.sql,
# issue 12): remove one access check at a time and the suite must fail.
# test/t/071_rls_mutation.pl does the same for row-level security.
#
# Mutations, one at a time, each reverted before the next:
#   SQL   every SQL or PL/pgSQL function of the extension whose body calls
#         an access check (quota_ext._check_tenant_access, _admin_only),
#         found in the catalog, redefined without that call
#         (pg_get_functiondef, a regex, CREATE OR REPLACE as superuser);
#   WRAP  the two SQL entry points of the C check replaced: by a no-op, and
#         by a re-creation of the check of issue 12 finding 2 (the role
#         judged is current_user, i.e. the definer inside SECURITY DEFINER
#         functions);
#   GRANT every internal function (name starting with "_") granted to
#         PUBLIC: the catalog audit (A4) must see it;
#   C     the C checks themselves (src/context.c): a copy of the sources
#         with one check weakened by a regex is compiled into a directory of
#         this test, the extension's C functions are pointed at it
#         (pg_proc.probin) and the server preloads it; the unmutated library
#         is restored afterwards.  Covers QuotaCheckTenantAccess (no-context
#         branch, other-tenant branch), QuotaCallerIsAdmin (GetUserId only:
#         the bug of finding 2; security-restricted operations counted as
#         the session), QuotaCheckAdmin (either condition) and
#         QuotaIdentityResolve (finding 10).
# Pass: the unmutated database passes, every mutation makes the suite fail,
# and the suite passes again at the end.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use File::Copy;
use File::Path qw(make_path);
use Cwd qw(abs_path);
use QuotaReliab;

my $suite = 'test/pgtap/10_access_attack.sql';
my $node = quota_node('access_mutation', quiet => 1);
$node->safe_psql('postgres', 'CREATE EXTENSION pgtap');

# whether the attack suite fails (and its first failure, for the log)
sub suite_fails
{
	my ($out, $err) = ('', '');
	my $ok = IPC::Run::run(
		[ 'pg_prove', '-h', $node->host, '-p', $node->port, '-d', 'postgres', $suite ],
		'>', \$out, '2>', \$err);
	return '' if $ok;
	my ($first) = ("$out\n$err" =~ /^(# Failed test[^\n]*|psql:[^\n]*)/m);
	return $first // 'failed';
}

is(suite_fails(), '', 'the unmutated database passes the attack suite');

my @mutations;    # [ what, break SQL, repair SQL ]

# ---- SQL: functions whose body calls an access check ----
my $check_re = qr/quota_ext\._(?:check_tenant_access|admin_only)\(/;
my @checked = split /\x1e/, $node->safe_psql('postgres', q{
	SELECT string_agg(p.oid::regprocedure::text || E'\x1f' || pg_get_functiondef(p.oid), E'\x1e'
	                  ORDER BY p.oid::regprocedure::text)
	  FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
	 WHERE p.pronamespace = 'quota_ext'::regnamespace AND l.lanname IN ('sql', 'plpgsql')
	   AND p.prosrc ~ 'quota_ext\._(check_tenant_access|admin_only)\('});
cmp_ok(scalar(@checked), '>=', 10, scalar(@checked) . ' SQL/PL/pgSQL functions call an access check');
# A function whose body also calls another checked function is guarded
# twice (tenant_summary calls quota_status): removing only its own check
# changes no answer.  Such a mutant, if it survives alone, is run again
# with the checks of those callees removed too, and must be caught then.
my (%mutant, %original, %also);
for my $c (@checked)
{
	my ($f, $def) = split /\x1f/, $c, 2;
	my $mutated = $def;
	# PL/pgSQL: PERFORM quota_ext._check_tenant_access(...);  SQL: SELECT ...;
	$mutated =~ s/PERFORM\s+quota_ext\._(?:check_tenant_access|admin_only)\([^;]*\);/NULL;/g;
	$mutated =~ s/SELECT\s+quota_ext\._(?:check_tenant_access|admin_only)\([^;]*\);//g;
	ok($mutated !~ $check_re, "$f: every call of the check can be removed by the mutation");
	($mutant{$f}, $original{$f}) = ($mutated, $def);
}
for my $f (sort keys %mutant)
{
	my ($body) = $original{$f} =~ /(AS .*)\z/s;
	$also{$f} = [ grep { $_ ne $f && index($body, (split /\(/, $_)[0] . '(') >= 0 } sort keys %mutant ];
	push @mutations, [ "$f without its access check", $mutant{$f}, $original{$f}, $also{$f} ];
}

# ---- WRAP: the SQL entry points of the C check ----
my %orig = map {
	$_ => $node->safe_psql('postgres', "SELECT pg_get_functiondef('$_'::regprocedure)")
} ('quota_ext._check_tenant_access(bigint)', 'quota_ext._admin_only(text)');
push @mutations,
  [ '_check_tenant_access a no-op',
	q{CREATE OR REPLACE FUNCTION quota_ext._check_tenant_access(tenant_id bigint) RETURNS void
	  LANGUAGE sql AS 'SELECT'}, $orig{'quota_ext._check_tenant_access(bigint)'} ],
  [ '_admin_only a no-op',
	q{CREATE OR REPLACE FUNCTION quota_ext._admin_only(what text) RETURNS void
	  LANGUAGE sql AS 'SELECT'}, $orig{'quota_ext._admin_only(text)'} ],
  # the check as it was before issue 12: it judged the current role, which
  # inside a SECURITY DEFINER function is the definer (a superuser)
  [ '_check_tenant_access judging current_user (finding 2)',
	q{CREATE OR REPLACE FUNCTION quota_ext._check_tenant_access(tenant_id bigint) RETURNS void
	  LANGUAGE plpgsql AS $$
	  BEGIN
		IF quota_ext.current_tenant_id() IS NOT NULL THEN
			IF quota_ext.current_tenant_id() <> tenant_id THEN
				RAISE EXCEPTION 'tenant % does not exist', tenant_id USING ERRCODE = 'undefined_object';
			END IF;
		ELSIF NOT pg_has_role(current_user, 'quota_ext_admin', 'USAGE') THEN
			RAISE EXCEPTION 'no tenant context in this transaction' USING ERRCODE = 'insufficient_privilege';
		END IF;
	  END $$}, $orig{'quota_ext._check_tenant_access(bigint)'} ];

# ---- GRANT: internal functions executable by everyone ----
my @internal = split /\n/, $node->safe_psql('postgres', q{
	SELECT p.oid::regprocedure FROM pg_proc p
	 WHERE p.pronamespace = 'quota_ext'::regnamespace AND p.proname LIKE '\_%' ORDER BY 1});
cmp_ok(scalar(@internal), '>=', 10, scalar(@internal) . ' internal functions');
push @mutations, map {
	[ "$_ executable by PUBLIC", "GRANT EXECUTE ON FUNCTION $_ TO PUBLIC",
		"REVOKE EXECUTE ON FUNCTION $_ FROM PUBLIC" ]
} @internal;

note(scalar(@mutations) . ' SQL mutations');
my @survivors;
for my $m (@mutations)
{
	my ($what, $break, $repair, $also) = @$m;
	$node->safe_psql('postgres', $break);
	my $by = suite_fails();
	if ($by eq '' && $also && @$also)
	{
		$node->safe_psql('postgres', $mutant{$_}) for @$also;
		$by = suite_fails();
		$node->safe_psql('postgres', $original{$_}) for @$also;
		$by = "guarded again by @$also; without those checks too: $by" if $by ne '';
	}
	$node->safe_psql('postgres', $repair);
	if ($by eq '') { push @survivors, $what; }
	else           { note("$what: caught ($by)"); }
}
is(join("\n", @survivors), '', 'every SQL-level mutation of an access check makes the suite fail (survivors listed)');
is(suite_fails(), '', 'after the SQL mutations were reverted, the suite passes again');

# ---- C: the checks in src/context.c, rebuilt ----
# (pattern in the source, replacement): each must match exactly once, so a
# rewrite of the code fails here instead of silently testing nothing
my @cmut = (
	[ 'QuotaCheckTenantAccess lets a caller without a context through',
		qr/\tif \(!QuotaCallerIsAdmin\(\)\)\n(?=\t\tereport\(ERROR,\n\t\t\t\t\(errcode\(ERRCODE_INSUFFICIENT_PRIVILEGE\),\n\t\t\t\t errmsg\("no tenant context in this transaction"\))/,
		"\tif (false)\n" ],
	[ 'QuotaCheckTenantAccess lets a context act on another tenant',
		qr/if \(quota_ctx\.tenant_id != tenant_id\)\n\t\t\tQuotaRaiseUnknownTenant/,
		"if (false)\n\t\t\tQuotaRaiseUnknownTenant" ],
	[ 'QuotaCallerIsAdmin judges GetUserId() only (finding 2)',
		qr/return quota_role_is_admin\(GetOuterUserId\(\), admin\) &&\n\t\tquota_role_is_admin\(GetUserId\(\), admin\);/,
		'return quota_role_is_admin(GetUserId(), admin);' ],
	[ 'QuotaCallerIsAdmin counts a security-restricted operation as the session',
		qr/\tif \(InSecurityRestrictedOperation\(\)\)\n\t\treturn false;/,
		"\tif (false)\n\t\treturn false;" ],
	[ 'QuotaCheckAdmin lets a caller that is not an admin through',
		qr/if \(quota_ctx\.valid \|\| !QuotaCallerIsAdmin\(\)\)/,
		'if (quota_ctx.valid)' ],
	[ 'QuotaCheckAdmin allows a tenant context',
		qr/if \(quota_ctx\.valid \|\| !QuotaCallerIsAdmin\(\)\)/,
		'if (!QuotaCallerIsAdmin())' ],
	[ 'QuotaIdentityResolve lets a key act as another key (finding 10)',
		qr/\tfrom_key = own && quota_ctx\.key_id != 0;/,
		"\tfrom_key = false;" ],
);

my $pg_config = $ENV{PG_CONFIG} // 'pg_config';
my $bindir = `$pg_config --bindir`;
chomp $bindir;
# absolute: the server resolves the library path from its data directory
# (from 17 on, tempdir() is relative when TESTDATADIR is not set)
my $mutdir = abs_path(PostgreSQL::Test::Utils::tempdir('quota_mut'));
my @sources = (glob('src/*.c'), glob('src/*.h'));
ok(-e 'src/context.c' && @sources > 5, 'sources found: ' . scalar(@sources));
my $context_c = slurp_file('src/context.c');
my $probin = $node->safe_psql('postgres', q{
	SELECT DISTINCT probin FROM pg_proc WHERE pronamespace = 'quota_ext'::regnamespace AND probin IS NOT NULL});
is($probin, '$libdir/quota_ext', 'the C functions load $libdir/quota_ext');

my $i = 0;
my @c_survivors;
for my $m (@cmut)
{
	my ($what, $re, $repl) = @$m;
	$i++;
	my $dir = "$mutdir/m$i";
	make_path("$dir/src");
	copy($_, "$dir/$_") or die "copy $_: $!" for @sources;
	copy('Makefile', "$dir/Makefile") or die;
	copy('quota_ext.control', "$dir/quota_ext.control") or die;
	my $src = $context_c;
	my $n = () = $src =~ /$re/g;
	is($n, 1, "C mutation \"$what\": its pattern matches src/context.c once");
	next unless $n == 1;
	$src =~ s/$re/$repl/;
	open(my $fh, '>', "$dir/src/context.c") or die;
	print $fh $src;
	close $fh;
	my ($out, $err) = ('', '');
	my $built = IPC::Run::run(
		[ 'make', '-C', $dir, '-s', "PG_CONFIG=$pg_config", 'with_llvm=no', 'quota_ext.so' ],
		'>', \$out, '2>', \$err);
	ok($built && -e "$dir/quota_ext.so", "C mutation \"$what\": built") or diag($err);
	next unless $built;

	# point the extension at the mutated library and preload it
	$node->safe_psql('postgres',
		"UPDATE pg_catalog.pg_proc SET probin = '$dir/quota_ext' WHERE probin = '\$libdir/quota_ext'");
	$node->append_conf('postgresql.conf', "shared_preload_libraries = '$dir/quota_ext'\n");
	$node->restart;
	my $loaded = $node->safe_psql('postgres',
		q{SELECT count(*) FROM pg_proc WHERE pronamespace = 'quota_ext'::regnamespace AND probin LIKE '%/m%/quota_ext'});
	cmp_ok($loaded, '>', 20, "C mutation \"$what\": $loaded C functions use the mutated library");
	my $by = suite_fails();
	if ($by eq '') { push @c_survivors, $what; }
	else           { note("$what: caught ($by)"); }

	# back to the installed library
	$node->safe_psql('postgres',
		"UPDATE pg_catalog.pg_proc SET probin = '\$libdir/quota_ext' WHERE probin = '$dir/quota_ext'");
	$node->append_conf('postgresql.conf', "shared_preload_libraries = 'quota_ext'\n");
	$node->restart;
}
is(join("\n", @c_survivors), '', 'every C-level mutation of an access check makes the suite fail (survivors listed)');
is(suite_fails(), '', 'with the installed library back, the suite passes again');

$node->stop;
done_testing();
