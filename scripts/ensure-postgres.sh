#!/usr/bin/env bash
# Makes sure PostgreSQL answers on 127.0.0.1:5432 and the database of DATABASE_URL (default
# `postgres://postgres@127.0.0.1:5432/tchu_test`) exists: installs it with apt-get when absent
# (Debian, as root), starts the cluster when stopped, lets local TCP connections in without a
# password when they are refused, and waits (bounded) until it accepts connections.
set -euo pipefail

port_open() { timeout 1 bash -c "</dev/tcp/127.0.0.1/$1" 2>/dev/null; }
DB="${TCHU_TEST_DB:-tchu_test}"

if ! command -v psql >/dev/null 2>&1 || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  echo "ensure-postgres: installing postgresql with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q postgresql postgresql-client
fi

if ! port_open 5432; then
  echo "ensure-postgres: starting PostgreSQL" >&2
  if command -v pg_ctlcluster >/dev/null 2>&1; then
    for c in $(pg_lsclusters -h | awk '{print $1"/"$2}'); do
      pg_ctlcluster "${c%/*}" "${c#*/}" start || true
    done
  fi
  command -v service >/dev/null 2>&1 && service postgresql start || true
fi

for _ in $(seq 1 60); do
  if port_open 5432; then break; fi
  sleep 1
done
port_open 5432 || { echo "ensure-postgres: PostgreSQL did not come up on 127.0.0.1:5432 within 60 s" >&2; exit 1; }

as_postgres() { if [ "$(id -un)" = postgres ]; then "$@"; else su postgres -c "$(printf '%q ' "$@")"; fi; }

# The tests connect over TCP as `postgres` without a password: allow it for 127.0.0.1 only.
if ! psql -h 127.0.0.1 -U postgres -d postgres -Atc 'SELECT 1' >/dev/null 2>&1; then
  hba=$(as_postgres psql -Atc 'SHOW hba_file')
  echo "ensure-postgres: trusting local TCP connections in $hba" >&2
  sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
  as_postgres psql -Atc 'SELECT pg_reload_conf()' >/dev/null
  sleep 1
fi

if [ "$(psql -h 127.0.0.1 -U postgres -d postgres -Atc "SELECT 1 FROM pg_database WHERE datname = '$DB'")" != 1 ]; then
  psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE $DB" || true
fi
echo "ensure-postgres: PostgreSQL is up on 127.0.0.1:5432 (database $DB)" >&2
