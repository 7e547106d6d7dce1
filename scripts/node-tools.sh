#!/usr/bin/env bash
# Makes sure node (>= 20) and npm are on PATH. They are on developer machines; a fresh CI
# machine may lack them, and there (as root) they come from Debian's packages. As a normal
# user without them this fails with what to install, rather than half-working.
set -euo pipefail
if command -v node >/dev/null && command -v npm >/dev/null \
  && [ "$(node -p 'process.versions.node.split(".")[0]')" -ge 20 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "node >= 20 and npm are needed: install them (Debian: apt-get install nodejs npm)" >&2
  exit 1
fi
echo "installing node and npm from Debian" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
node_major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$node_major" -lt 20 ]; then
  echo "Debian's node is $node_major; the client needs >= 20" >&2
  exit 1
fi
