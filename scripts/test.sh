#!/usr/bin/env bash
# Runs every test: unit tests and the API suites of both services, against the local
# PostgreSQL (each suite creates its own databases) and temporary SQLite files. Installs
# what the tests need itself: the Python client's packages go into target/venv.
# Every test binary runs even when one fails (--no-fail-fast); the exit code says
# whether all passed.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-postgres.sh
# The cross-language test (conversation-service/tests/api/interop.rs) runs this python.
INTEROP_PYTHON="$(scripts/python-venv.sh scripts/requirements-test.txt)"
export INTEROP_PYTHON
# Drop databases that earlier test runs left behind.
psql -h 127.0.0.1 -U postgres -d postgres -Atc \
  "SELECT datname FROM pg_database WHERE datname LIKE 'cs\_test\_%' OR datname LIKE 'tk\_test\_%'" |
  while read -r db; do psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null; done
psql -h 127.0.0.1 -U postgres -d postgres -Atc "SELECT rolname FROM pg_roles WHERE rolname LIKE 'cs\_test\_%'" |
  while read -r role; do psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP ROLE IF EXISTS \"$role\"" >/dev/null || true; done
cargo test --workspace --locked --no-fail-fast "$@"
# The clients' own tests, against real conversation-service processes (the binary the
# line above built): TypeScript and Python, then both clients across a PostgreSQL restart
# on a private cluster (clients/test-pg-restart.sh), so the shared one is never restarted.
target_dir="${CARGO_TARGET_DIR:-target}"
[[ "$target_dir" = /* ]] || target_dir="$PWD/$target_dir"
export CONVERSATION_SERVICE_BIN="$target_dir/debug/conversation-service"
clients/typescript/test.sh
clients/python/test.sh
clients/test-pg-restart.sh
