#!/usr/bin/env bash
# The TypeScript client's tests: installs node/npm if missing (scripts/node-tools.sh),
# the package's pinned dependencies (npm ci, through scripts/proto-tools.sh), generates
# its code (scripts/gen-clients.sh --ts) and runs node's test runner against real
# conversation-service replicas (target/debug/conversation-service; built here unless
# CONVERSATION_SERVICE_BIN names one) on fresh databases of the PostgreSQL at
# PGHOST:PGPORT (default 127.0.0.1:5432, user postgres).
# CLIENT_FAULT_PG_RESTART=1 also runs the test that restarts PostgreSQL (never on a shared
# machine).
set -euo pipefail
cd "$(dirname "$0")"
repo="$(cd ../.. && pwd)"
"$repo/scripts/gen-clients.sh" --ts
if [ -z "${CONVERSATION_SERVICE_BIN:-}" ]; then
  (cd "$repo" && cargo build --quiet -p conversation-service --bin conversation-service)
fi
npm test
