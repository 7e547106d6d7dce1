#!/usr/bin/env bash
# The PostgreSQL-restart fault tests of both clients (clients/typescript's
# test/postgres-restart.test.ts and chat-client's postgres_restart, #[ignore]d by default)
# on a private cluster of their own: initdb into a temporary directory on a free port, so
# they restart nobody else's PostgreSQL. Needs Debian's PostgreSQL server binaries (initdb,
# pg_ctl; as root they run as the postgres user). Run clients/typescript/test.sh first
# (dependencies, generated code, the conversation-service binary).
set -euo pipefail
cd "$(dirname "$0")/.."
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
export PGPORT="$port" CLIENT_FAULT_PG_RESTART=1 CLIENT_FAULT_PG_RESTART_CMD="$restart"
(cd clients/typescript && node --test dist/test/postgres-restart.test.js)
cargo test --quiet -p chat-client --test api -- --ignored postgres_restart
