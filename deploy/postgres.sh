#!/usr/bin/env bash
# Local PostgreSQL cluster for obsbus development and tests.
#
#   deploy/postgres.sh start|stop|status|url
#
# Everything lives under <repo>/var/postgres/ (git-ignored): data/, the unix
# socket dir run/ and postgres.log. Listens on 127.0.0.1:${OBSBUS_PG_PORT:-54329}
# with trust auth (local dev/test only). `start` provisions role and database
# `obsbus` (owner of the database) with the btree_gist extension pre-created.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BASE="${OBSBUS_PG_DIR:-$ROOT/var/postgres}"
# As root the server runs as the `postgres` user, who may not reach a clone under a private
# home (e.g. /root): then keep the cluster in a world-reachable per-clone folder instead.
if [[ -z "${OBSBUS_PG_DIR:-}" && $EUID -eq 0 ]] && id postgres >/dev/null 2>&1 &&
    ! runuser -u postgres -- test -x "$ROOT" 2>/dev/null; then
    BASE="/var/tmp/obsbus-postgres-$(printf '%s' "$ROOT" | md5sum | cut -c1-8)"
fi
PGDATA="$BASE/data"
SOCKDIR="$BASE/run"
LOG="$BASE/postgres.log"
PORT="${OBSBUS_PG_PORT:-54329}"
TIMEOUT=60

die() { echo "postgres.sh: $*" >&2; exit 1; }

# Newest installed server binaries (Debian layout), or empty.
find_bindir() {
    local d
    d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
    if [[ -n "$d" && -x "$d/initdb" ]]; then echo "$d"; fi
}

BINDIR="$(find_bindir)"

# PostgreSQL refuses to run as root: use the `postgres` OS user then.
as_pg() {
    if [[ $EUID -eq 0 ]]; then
        (cd / && runuser -u postgres -- "$@")
    else
        "$@"
    fi
}

# pg_ctl status, but a killed postmaster not yet reaped (zombie) is not running.
is_running() {
    local pid
    [[ -n "$BINDIR" && -f "$PGDATA/PG_VERSION" ]] || return 1
    as_pg "$BINDIR/pg_ctl" status -D "$PGDATA" >/dev/null 2>&1 || return 1
    pid="$(head -n 1 "$PGDATA/postmaster.pid" 2>/dev/null || true)"
    ! grep -qs '^[0-9]* ([^)]*) [ZX]' "/proc/$pid/stat"
}

install_server() {
    [[ -n "$BINDIR" ]] && return 0
    if [[ $EUID -ne 0 ]]; then
        die "PostgreSQL server not found; install it as root: apt-get install -y postgresql postgresql-contrib"
    fi
    echo "postgres.sh: installing PostgreSQL (apt-get)" >&2
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql postgresql-contrib
    BINDIR="$(find_bindir)"
    [[ -n "$BINDIR" ]] || die "apt-get install finished but no /usr/lib/postgresql/*/bin/initdb"
}

init_cluster() {
    # Unix socket paths are limited to ~107 bytes.
    (( ${#SOCKDIR} + 20 < 108 )) || die "socket path too long: $SOCKDIR (clone the repo to a shorter path)"
    mkdir -p "$BASE"
    if [[ $EUID -eq 0 ]]; then
        id postgres >/dev/null 2>&1 || die "OS user 'postgres' missing (reinstall the postgresql package)"
        chown postgres:postgres "$BASE"
        as_pg test -w "$BASE" ||
            die "OS user 'postgres' cannot write $BASE (parent directories must be world-searchable)"
    fi
    if [[ ! -f "$PGDATA/PG_VERSION" ]]; then
        as_pg "$BINDIR/initdb" -D "$PGDATA" -U postgres --auth=trust -E UTF8 --locale=C >/dev/null
        echo "include_if_exists = 'obsbus.conf'" | as_pg tee -a "$PGDATA/postgresql.conf" >/dev/null
    fi
    as_pg mkdir -p "$SOCKDIR"
    # Rewritten on every start so OBSBUS_PG_PORT is honoured.
    printf "listen_addresses = '127.0.0.1'\nport = %s\nunix_socket_directories = '%s'\n" \
        "$PORT" "$SOCKDIR" | as_pg tee "$PGDATA/obsbus.conf" >/dev/null
}

# Idempotent: role obsbus, database obsbus owned by it, btree_gist in it.
provision() {
    local psql=(env PGOPTIONS="-c client_min_messages=warning" "$BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCKDIR" -p "$PORT" -U postgres)
    "${psql[@]}" -d postgres <<'SQL'
SELECT 'CREATE ROLE obsbus LOGIN CREATEDB'
    WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'obsbus') \gexec
SELECT 'CREATE DATABASE obsbus OWNER obsbus'
    WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'obsbus') \gexec
SQL
    "${psql[@]}" -d obsbus -c 'CREATE EXTENSION IF NOT EXISTS btree_gist'
}

# Port of the running server (from postmaster.pid), else the configured one.
current_port() {
    local p=""
    if is_running; then p="$(sed -n 4p "$PGDATA/postmaster.pid" 2>/dev/null || true)"; fi
    echo "${p:-$PORT}"
}

cmd_start() {
    install_server
    if is_running; then
        PORT="$(current_port)"
        echo "postgres.sh: already running on 127.0.0.1:$PORT"
    else
        init_cluster
        if ! as_pg "$BINDIR/pg_ctl" start -D "$PGDATA" -l "$LOG" -w -t "$TIMEOUT" >/dev/null; then
            tail -n 20 "$LOG" >&2 || true
            die "pg_ctl start failed (log: $LOG)"
        fi
    fi
    local i
    for ((i = 0; i < TIMEOUT; i++)); do
        "$BINDIR/pg_isready" -q -h 127.0.0.1 -p "$PORT" -U postgres -d postgres && break
        sleep 1
    done
    "$BINDIR/pg_isready" -q -h 127.0.0.1 -p "$PORT" -U postgres -d postgres || die "not ready after ${TIMEOUT}s (log: $LOG)"
    provision
    echo "postgres.sh: ready at $(cmd_url)"
}

cmd_stop() {
    if is_running; then
        as_pg "$BINDIR/pg_ctl" stop -D "$PGDATA" -m fast -w -t "$TIMEOUT" >/dev/null
        echo "postgres.sh: stopped"
    else
        echo "postgres.sh: not running"
    fi
}

cmd_status() {
    if is_running; then
        echo "postgres.sh: running on 127.0.0.1:$(current_port) (data: $PGDATA)"
    else
        echo "postgres.sh: not running"
        return 1
    fi
}

cmd_url() { echo "postgresql+psycopg://obsbus@127.0.0.1:$(current_port)/obsbus"; }

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    url) cmd_url ;;
    *) echo "usage: $0 start|stop|status|url" >&2; exit 2 ;;
esac
