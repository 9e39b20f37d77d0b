#!/usr/bin/env bash
# Start the real PostgreSQL used by tests and distributed mode, idempotently.
set -euo pipefail
command -v pg_ctlcluster >/dev/null && ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || {
  apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }
ver=$(ls /etc/postgresql | sort -n | tail -1)
pg_ctlcluster "$ver" main status >/dev/null 2>&1 || pg_ctlcluster "$ver" main start
for _ in $(seq 1 30); do
  su postgres -c "psql -qtAc 'select 1'" >/dev/null 2>&1 && break
  sleep 1
done
# One superuser role for tests; every test creates and drops its own database.
su postgres -c "psql -qtAc \"select 1 from pg_roles where rolname='hdc'\"" | grep -q 1 ||
  su postgres -c "psql -qc \"create role hdc login superuser password 'hdc'\""
