# test/lib.sh — shared by test/run, test/demo and bench/run.
# Throwaway clusters, dependency installation and privilege handling.

PG_MAJOR=${PG_MAJOR:-15}
PG_BIN=/usr/lib/postgresql/$PG_MAJOR/bin
export PATH="$PG_BIN:$PATH"

# Debian packages each entry point needs (installed when running as root).
QUOTA_BUILD_PKGS="postgresql-$PG_MAJOR postgresql-server-dev-$PG_MAJOR make gcc"
QUOTA_TEST_PKGS="postgresql-$PG_MAJOR-pgtap postgresql-$PG_MAJOR-cron libtap-parser-sourcehandler-pgtap-perl libipc-run-perl git python3-psycopg"
# test/deb: what dpkg-buildpackage needs for debian/ (pg_buildext, dh_pgxs)
QUOTA_DEB_PKGS="debhelper postgresql-server-dev-all dpkg-dev fakeroot"

log() { printf '== %s\n' "$*" >&2; }

# ensure_pkgs PKG...: install the missing ones (root only; once per run).
ensure_pkgs() {
	local missing=() p
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	if [ "$(id -u)" -ne 0 ]; then
		log "missing packages: ${missing[*]} (run as root to install them)"
		return 1
	fi
	log "installing ${missing[*]}"
	if [ -z "${QUOTA_APT_UPDATED:-}" ]; then
		DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null || return 1
		export QUOTA_APT_UPDATED=1
	fi
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# build_and_install DIR: compile for $PG_MAJOR (warnings are errors here) and install.
build_and_install() {
	local top=$1
	log "building and installing quota_ext"
	# COPT: PGXS appends it to CFLAGS (every warning fails the build)
	# -B: every file is compiled here, so objects left by a plain `make` cannot
	# hide a warning
	make -C "$top" -s -B PG_CONFIG="$PG_BIN/pg_config" COPT=-Werror >/dev/null || return 1
	if [ "$(id -u)" -eq 0 ]; then
		make -C "$top" -s install PG_CONFIG="$PG_BIN/pg_config" >/dev/null || return 1
	else
		make -C "$top" -s install PG_CONFIG="$PG_BIN/pg_config" >/dev/null 2>&1 ||
			{ log "make install failed: run as root"; return 1; }
	fi
}

# as_unprivileged CMD...: initdb refuses root, so clusters run as postgres.
as_unprivileged() {
	if [ "$(id -u)" -eq 0 ]; then
		runuser -u postgres -- env PATH="$PATH" CI="${CI:-}" QUOTA_SOAK="${QUOTA_SOAK:-}" \
			QUOTA_TMPFS="${QUOTA_TMPFS:-}" QUOTA_TMPFS_WAL="${QUOTA_TMPFS_WAL:-}" \
			UPGRADE_FROM="${UPGRADE_FROM:-}" QUOTA_ONLY="${QUOTA_ONLY:-}" QUOTA_LOCK_HELD="${QUOTA_LOCK_HELD:-}" "$@"
	else
		"$@"
	fi
}

# cluster_start DIR PORT [extra conf lines]: a throwaway cluster with the
# library preloaded, listening only on a Unix socket in DIR.
cluster_start() {
	local dir=$1 port=$2
	shift 2
	initdb -D "$dir/data" -A trust -U postgres --no-sync >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log"; return 1; }
	cat >>"$dir/data/postgresql.conf" <<CONF
listen_addresses = ''
port = $port
unix_socket_directories = '$dir'
shared_preload_libraries = 'quota_ext'
max_prepared_transactions = 10
fsync = off
CONF
	local line
	for line in "$@"; do echo "$line" >>"$dir/data/postgresql.conf"; done
	# 9>&-: never hand the machine-wide install lock (test/run) to a postmaster
	pg_ctl -D "$dir/data" -l "$dir/server.log" -w start >/dev/null 9>&- || { cat "$dir/server.log"; return 1; }
	export PGHOST=$dir PGPORT=$port PGUSER=postgres
}

cluster_stop() {
	pg_ctl -D "$1/data" -m fast -w stop >/dev/null 2>&1 || true
}

# free_port: a port nobody listens on (Unix sockets, so only our dirs matter).
free_port() {
	echo $((20000 + ($$ % 20000) + RANDOM % 1000))
}

# tmpfs_setup DIR: as root, mount two small tmpfs under DIR for the
# disk-full tests, owned by the unprivileged user, and export their paths:
# QUOTA_TMPFS (8 MB, a tablespace: test/t/064_disk_full.pl) and
# QUOTA_TMPFS_WAL (96 MB, a pg_wal: test/t/065_wal_full.pl).  Without root
# or mount permission nothing is exported and those tests skip.
tmpfs_setup() {
	local dir=$1 name size var
	[ "$(id -u)" -eq 0 ] || return 0
	for name in data:8M:QUOTA_TMPFS wal:96M:QUOTA_TMPFS_WAL; do
		IFS=: read -r name size var <<<"$name"
		mkdir -p "$dir/tmpfs_$name"
		if mount -t tmpfs -o "size=$size,mode=0700" tmpfs "$dir/tmpfs_$name" 2>/dev/null; then
			chown postgres: "$dir/tmpfs_$name"
			export "$var=$dir/tmpfs_$name"
		else
			log "cannot mount a tmpfs: the disk-full tests will skip"
			return 0
		fi
	done
}

# tmpfs_teardown DIR: unmount what tmpfs_setup mounted.
tmpfs_teardown() {
	local d
	for d in "$1/tmpfs_data" "$1/tmpfs_wal"; do
		mountpoint -q "$d" 2>/dev/null && umount "$d"
	done
	return 0
}
