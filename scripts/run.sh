#!/usr/bin/env bash
# Starts the whole system on this machine: PostgreSQL (if down), the `chat` database
# (created if missing; migrations are applied by the service), conversation-service on
# 127.0.0.1:50051 and token-service on 127.0.0.1:50052, with Prometheus metrics on
# 127.0.0.1:9464 and 127.0.0.1:9465. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-postgres.sh
DB_NAME="${CHAT_DB_NAME:-chat}"
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/$DB_NAME}"
if ! psql -h 127.0.0.1 -U postgres -d postgres -Atc "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'" | grep -q 1; then
  psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE \"$DB_NAME\""
  echo "created database $DB_NAME"
fi
cargo build --release --locked --bins
pids=()
stop() {
  trap - INT TERM EXIT
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait || true
}
trap stop INT TERM EXIT
# No load balancer here to wait for: stop at once rather than after a drain delay.
export DRAIN_DELAY="${DRAIN_DELAY:-0s}"
METRICS_ADDR="${CONVERSATION_METRICS_ADDR:-127.0.0.1:9464}" target/release/conversation-service & pids+=($!)
if [ -x target/release/token-service ]; then
  METRICS_ADDR="${TOKEN_METRICS_ADDR:-127.0.0.1:9465}" target/release/token-service & pids+=($!)
fi
# Either one exiting (or Ctrl-C) stops both.
wait -n || true
