#!/usr/bin/env bash
# A throwaway PostgreSQL server for the ledger tests, on loopback, in its own folder.
#   bash tests/postgres/server.sh start DIR    initdb + start; writes DIR/env (NAME=VALUE lines for the tests)
#   bash tests/postgres/server.sh stop DIR
# Roles: postgres (superuser; the tests create one database per test with it), suanli_admin (owns the
# ledger databases: the admin role of issue 5), alice (an ordinary user). Trust authentication on loopback only.
# initdb and postgres refuse to run as root, so as root they run as the postgres user (Debian's package).
# Environment: SUANLI_TEST_PG_PORT (15432), SUANLI_TEST_PG_TIMEOUT seconds to wait for start-up (60).
set -euo pipefail
cmd=${1:-}
DIR=${2:-}
[ -n "$cmd" ] && [ -n "$DIR" ] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }
PORT=${SUANLI_TEST_PG_PORT:-15432}
TIMEOUT=${SUANLI_TEST_PG_TIMEOUT:-60}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
as_pg() {  # run a PostgreSQL program as the postgres user when we are root
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case "$cmd" in
start)
    if [ -z "$(pg_bin)" ] || [ ! -x "$(pg_bin)/initdb" ]; then
        echo "server.sh: installing Debian's postgresql package"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
            postgresql postgresql-client >/dev/null
    fi
    BIN=$(pg_bin)
    mkdir -p "$DIR"
    chmod 755 "$DIR"
    mkdir -p "$DIR/data" "$DIR/sock"
    if [ "$(id -u)" = 0 ]; then chown postgres: "$DIR/data" "$DIR/sock"; fi
    as_pg "$BIN/initdb" -D "$DIR/data" -A trust -U postgres --no-sync -E UTF8 >"$DIR/initdb.log" 2>&1 \
        || { cat "$DIR/initdb.log" >&2; exit 1; }
    as_pg "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/data/server.log" -w -t "$TIMEOUT" \
        -o "-p $PORT -k $DIR/sock -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" start \
        || { tail -n 20 "$DIR/data/server.log" >&2; exit 1; }
    PSQL=("$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres -d postgres)
    "${PSQL[@]}" -c "CREATE ROLE suanli_admin LOGIN CREATEROLE" -c "CREATE ROLE alice LOGIN" \
        -c "CREATE DATABASE suanli OWNER suanli_admin"
    printf 'SUANLI_TEST_PG=postgresql://postgres@127.0.0.1:%s/postgres\n' "$PORT" >"$DIR/env"
    echo "server.sh: PostgreSQL up on 127.0.0.1:$PORT ($DIR)"
    ;;
stop)
    BIN=$(pg_bin)
    if [ -n "$BIN" ] && [ -f "$DIR/data/postmaster.pid" ]; then
        as_pg "$BIN/pg_ctl" -D "$DIR/data" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
    fi
    ;;
*)
    echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac
