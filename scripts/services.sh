#!/usr/bin/env bash
# Installs (as root, with apt) and starts the system services the tests use, then writes
# scripts/services.env for the test command to source:
#   PRIMESVT_TEST_POSTGRES_URL  a throw-away PostgreSQL 15 cluster on 127.0.0.1 (trust auth)
#   PRIMESVT_CHROMIUM           Debian's headless-capable chromium binary
# Where a service cannot be had (no root, no apt), the variable stays unset and the tests that
# need it skip with that reason -- except under CI=true, where they fail instead.
set -u
cd "$(dirname "$0")/.."
ENV_FILE=scripts/services.env
: > "$ENV_FILE"
PG_PORT=${PRIMESVT_PG_PORT:-55432}
PG_DIR=${PRIMESVT_PG_DIR:-/tmp/primesvt-pg}

apt_install() {
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || return 1
  if [ ! -f /tmp/.primesvt-apt-updated ]; then
    apt-get update -qq >/dev/null 2>&1 && touch /tmp/.primesvt-apt-updated
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null 2>&1
}

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }

start_postgres() {
  [ -n "$(pg_bin)" ] || apt_install postgresql || { echo "services: PostgreSQL unavailable (no root/apt)"; return 1; }
  local bin; bin=$(pg_bin)
  if ! "$bin/pg_isready" -h 127.0.0.1 -p "$PG_PORT" -q 2>/dev/null; then
    rm -rf "$PG_DIR"; mkdir -p "$PG_DIR"; chown postgres "$PG_DIR" 2>/dev/null
    local as=""; [ "$(id -u)" = 0 ] && as="runuser -u postgres --"
    $as "$bin/initdb" -D "$PG_DIR/data" -U postgres --auth=trust >/dev/null || return 1
    $as "$bin/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/log" -w \
      -o "-p $PG_PORT -k $PG_DIR -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off" start >/dev/null || return 1
  fi
  "$bin/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres primesvt_test 2>/dev/null || true
  echo "export PRIMESVT_TEST_POSTGRES_URL=postgresql://postgres@127.0.0.1:$PG_PORT/primesvt_test" >> "$ENV_FILE"
  echo "services: PostgreSQL on 127.0.0.1:$PG_PORT"
}

find_chromium() {
  command -v chromium || command -v chromium-browser || { apt_install chromium >/dev/null && command -v chromium; }
}

start_chromium() {
  local bin; bin=$(find_chromium) || { echo "services: chromium unavailable (no root/apt)"; return 1; }
  echo "export PRIMESVT_CHROMIUM=$bin" >> "$ENV_FILE"
  echo "services: chromium at $bin"
}

start_postgres
start_chromium
[ "${CI:-}" = true ] && { grep -q POSTGRES "$ENV_FILE" && grep -q CHROMIUM "$ENV_FILE" || { echo "services: CI needs PostgreSQL and chromium"; exit 1; }; }
exit 0
