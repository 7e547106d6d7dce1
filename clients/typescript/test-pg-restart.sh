#!/usr/bin/env bash
# The PostgreSQL-restart fault test (test/postgres-restart.test.ts) on a private cluster
# of its own (initdb into a temporary directory, a free port), so it restarts nobody
# else's PostgreSQL. Needs Debian's PostgreSQL server binaries (initdb, pg_ctl) and, as
# root, the postgres user to run them. Run ./test.sh first (deps, generated code, build).
set -euo pipefail
cd "$(dirname "$0")"
bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)"
dir="$(mktemp -d /tmp/chat-client-pg.XXXXXX)"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
as_pg=()
if [ "$(id -u)" -eq 0 ]; then
  chown postgres "$dir"
  as_pg=(runuser -u postgres --)
fi
pg_ctl=("${as_pg[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -o "-p $port -k $dir -c listen_addresses=127.0.0.1")
cleanup() {
  "${pg_ctl[@]}" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT
"${as_pg[@]}" "$bin/initdb" -D "$dir/data" -A trust -U postgres >/dev/null
"${pg_ctl[@]}" -w start >/dev/null
printf -v restart '%q ' "${pg_ctl[@]}" -m fast -w restart
PGPORT="$port" CLIENT_FAULT_PG_RESTART=1 CLIENT_FAULT_PG_RESTART_CMD="$restart" \
  node --test dist/test/postgres-restart.test.js
