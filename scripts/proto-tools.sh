#!/usr/bin/env bash
# Installs buf, protoc-gen-es and tsc at the versions pinned by the TypeScript client's
# lockfile (clients/typescript/package-lock.json; npm ci, no root) and prints the directory
# to put on PATH. With --go-plugins (root only) it also installs Debian's protoc-gen-go and
# protoc-gen-go-grpc: neither npm nor PyPI ships them, and the Go module proxy is not
# reachable from these machines, so Go generation is the one step that needs apt.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/node-tools.sh >&2
pkg=clients/typescript
# The lockfile's hash as a stamp: npm ci (which wipes node_modules) runs again only when
# the pins changed.
stamp="$pkg/node_modules/.installed-lock"
want="$(sha256sum "$pkg/package-lock.json" | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  (cd "$pkg" && npm ci --silent --no-audit --no-fund) >&2
  echo "$want" >"$stamp"
fi
if [ "${1:-}" = --go-plugins ]; then
  if ! command -v protoc-gen-go >/dev/null || ! command -v protoc-gen-go-grpc >/dev/null; then
    echo "installing protoc-gen-go and protoc-gen-go-grpc from Debian (needs root)" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq protoc-gen-go protoc-gen-go-grpc >/dev/null
  fi
fi
echo "$PWD/$pkg/node_modules/.bin"
