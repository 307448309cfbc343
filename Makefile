# quota_ext — PGXS build.  See README.md for the two commands (make demo, make test).
EXTENSION   = quota_ext
EXTVERSION  = $(shell sed -n "s/^default_version[[:space:]]*=[[:space:]]*'\([^']*\)'.*/\1/p" $(EXTENSION).control)

MODULE_big  = quota_ext
OBJS        = $(patsubst %.c,%.o,$(sort $(wildcard src/*.c)))

# The install script is assembled from one file per subsystem (sql/install/NN_*.sql),
# mirroring src/; upgrade scripts quota_ext--A--B.sql are kept as released, and
# so are the install scripts of released versions (quota_ext--A.sql, frozen
# copies of what was built for A), so test/t/067_upgrade.pl can install them.
INSTALL_PARTS = $(sort $(wildcard sql/install/*.sql))
DATA_built  = sql/$(EXTENSION)--$(EXTVERSION).sql
DATA        = $(filter-out $(DATA_built),$(wildcard sql/$(EXTENSION)--*.sql))

# Tests, the PGXS way (doc/testing.md): pg_regress inputs in test/sql,
# isolation specs in test/specs, the expected outputs of both in
# test/expected (one --inputdir, as pgvector lays them out); pgTAP files in
# test/pgtap (pg_prove), Perl TAP files in test/t.  `make installcheck` runs
# pg_regress and isolation against a running server with the library
# preloaded; `make prove_installcheck` the Perl TAP files (their own
# clusters).  `make test` (test/run) runs all four on throwaway clusters.
REGRESS     = $(patsubst test/sql/%.sql,%,$(sort $(wildcard test/sql/*.sql)))
REGRESS_OPTS = --inputdir=test --load-extension=$(EXTENSION)
ISOLATION   = $(patsubst test/specs/%.spec,%,$(sort $(wildcard test/specs/*.spec)))
ISOLATION_OPTS = --inputdir=test --load-extension=$(EXTENSION)
PROVE_TESTS ?= $(sort $(wildcard test/t/*.pl))

PG_CFLAGS   = -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers
EXTRA_CLEAN = sql/$(EXTENSION)--$(EXTVERSION).sql results/ output_iso/ regression.* tmp_check/ log/ \
              tmp_check_iso/

PG_CONFIG  ?= pg_config
PGXS       := $(shell $(PG_CONFIG) --pgxs 2>/dev/null)
ifneq ($(wildcard $(PGXS)),)
include $(PGXS)
# the TAP files' helpers (QuotaReliab.pm, PgxnMeta.pm); PROVE_FLAGS stays the user's
PG_PROVE_FLAGS += -I test/t
else
# A fresh machine has no server headers yet: `make test` and `make demo`
# install them (as root) before building.
all install installcheck:
	@echo "PostgreSQL server headers not found: apt-get install postgresql-server-dev-15," \
	      "or run 'make test' / 'make demo' as root, which install them" >&2; exit 1
endif

sql/$(EXTENSION)--$(EXTVERSION).sql: $(INSTALL_PARTS) $(EXTENSION).control
	cat $(INSTALL_PARTS) > $@

# The isolation specs' helpers: test/specs/00_setup.spec carries a copy of
# test/invariant.sql between its "-- BEGIN test/invariant.sql" and "-- END"
# lines (a spec cannot include a file); test/sync-invariant rewrites it when
# the file changes.
test/specs/00_setup.spec: test/invariant.sql test/sync-invariant
	test/sync-invariant $@ test/invariant.sql
all installcheck: test/specs/00_setup.spec

# The Perl TAP files (test/t/*.pl), as any PGXS extension runs them
# (PostgreSQL::Test::Cluster, their own clusters; doc/testing.md).
.PHONY: prove_installcheck
prove_installcheck:
	$(prove_installcheck)

.PHONY: test demo demo-seeds bench dist deb-check
# The whole suite on throwaway clusters (run as root on a fresh machine: installs what it needs).
# PG_MAJOR=N: on PostgreSQL N (default 15, the host's).  A version that is not
# installed here (17, 18) runs in a Debian chroot built by test/chroot.
PG_MAJOR ?= 15
test:
ifeq ($(PG_MAJOR),15)
	test/run
else
	if [ -x /usr/lib/postgresql/$(PG_MAJOR)/bin/pg_config ]; then PG_MAJOR=$(PG_MAJOR) test/run; \
	else test/chroot $(PG_MAJOR); fi
endif
# The walkthrough (doc/demo.sql) on a throwaway cluster.
demo:
	test/demo doc/demo.sql

# The migration walkthrough of each seed (doc/demo-seeds.sql), likewise.
demo-seeds:
	test/demo doc/demo-seeds.sql
# The benchmark suite (doc/performance.md); e.g. make bench BENCH_ARGS=--quick
BENCH_ARGS ?=
bench:
	bench/run $(BENCH_ARGS)

# The release tarball, as PGXN takes it (doc/releasing.md): the tree committed at
# HEAD under $(EXTENSION)-$(EXTVERSION)/, less what .gitattributes marks
# export-ignore.  Uncommitted changes are not in it; META.json must carry the
# control file's version.  DISTDIR=dir puts it elsewhere.
DISTDIR    ?= .
dist:
	@grep -q '"version": *"$(EXTVERSION)"' META.json || \
		{ echo "META.json does not carry version $(EXTVERSION) (quota_ext.control)" >&2; exit 1; }
	@git diff --quiet HEAD -- 2>/dev/null || \
		echo "warning: uncommitted changes are not in the tarball (it archives HEAD)" >&2
	git archive --format=tar.gz --prefix=$(EXTENSION)-$(EXTVERSION)/ \
		-o $(DISTDIR)/$(EXTENSION)-$(EXTVERSION).tar.gz HEAD
# Build the Debian packages in a scratch copy, install one, CREATE EXTENSION
# from it, remove it (as root; test/deb, doc/releasing.md).
deb-check:
	test/deb

# Every object depends on the headers (one per module, the shared and private ones).
$(OBJS): $(wildcard src/*.h)
