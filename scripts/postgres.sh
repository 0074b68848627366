# Source this file: `source scripts/postgres.sh`, then `pg_start` / `pg_stop`.
# Starts a throwaway PostgreSQL server on loopback for the test suite and exports
# JIT_TEST_POSTGRES_URL (an admin URL; each test creates and drops its own database).

pg_bin_dir() {
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

pg_install_if_missing() {
  if [ -n "$(pg_bin_dir)" ]; then return 0; fi
  if [ "$(id -u)" != "0" ]; then
    echo "PostgreSQL server binaries not found under /usr/lib/postgresql and not root to install them." >&2
    echo "Install Debian's 'postgresql' package, then run this again." >&2
    return 1
  fi
  echo "installing PostgreSQL (Debian package 'postgresql')..."
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
}

pg_start() {
  pg_install_if_missing || return 1
  local bin; bin="$(pg_bin_dir)"
  PG_TMP="$(mktemp -d /tmp/jit-pg.XXXXXX)"
  local port
  port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  local as=()
  # initdb refuses to run as root, so the server runs as the postgres user that the package made.
  if [ "$(id -u)" = "0" ]; then
    chown postgres "$PG_TMP"
    as=(runuser -u postgres --)
  fi
  "${as[@]}" "$bin/initdb" -D "$PG_TMP/data" -U postgres --auth=trust -E UTF8 >"$PG_TMP/initdb.log" 2>&1 \
    || { cat "$PG_TMP/initdb.log" >&2; return 1; }
  # Durability is pointless for a throwaway test server; turning it off keeps the suite fast.
  "${as[@]}" "$bin/pg_ctl" -D "$PG_TMP/data" -l "$PG_TMP/server.log" -w -t 60 \
    -o "-p $port -k $PG_TMP -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" \
    start >/dev/null || { cat "$PG_TMP/server.log" >&2; return 1; }
  export PG_BIN="$bin" PG_TMP
  export JIT_TEST_POSTGRES_URL="postgresql+psycopg://postgres@127.0.0.1:$port/postgres"
  echo "PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port"
}

pg_stop() {
  [ -n "${PG_TMP:-}" ] || return 0
  local as=()
  [ "$(id -u)" = "0" ] && as=(runuser -u postgres --)
  "${as[@]}" "$PG_BIN/pg_ctl" -D "$PG_TMP/data" -m immediate -w stop >/dev/null 2>&1 || true
  rm -rf "$PG_TMP"
  unset PG_TMP
}
