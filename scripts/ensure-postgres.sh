#!/usr/bin/env bash
# Starts the local PostgreSQL cluster if it is not accepting connections.
set -euo pipefail
if pg_isready -h 127.0.0.1 -p 5432 -q; then exit 0; fi
echo "PostgreSQL is down; starting it" >&2
pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
for _ in $(seq 1 50); do pg_isready -h 127.0.0.1 -p 5432 -q && exit 0; sleep 0.2; done
echo "PostgreSQL did not come up" >&2; exit 1
