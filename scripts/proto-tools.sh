#!/usr/bin/env bash
# Installs buf and the code generators into target/tools (npm) and prints the directory to
# put on PATH. With --generators also the Debian packages of protoc, grpcio's Python
# plugin and the Go plugins (needs root; apt-get).
set -euo pipefail
cd "$(dirname "$0")/.."
tools=target/tools
if [ ! -x "$tools/node_modules/.bin/buf" ] || [ ! -x "$tools/node_modules/.bin/tsc" ]; then
  npm install --silent --no-audit --no-fund --prefix "$tools" \
    @bufbuild/buf@1.75.0 @bufbuild/protoc-gen-es@2.17.0 @bufbuild/protobuf@2.17.0 typescript@5 >&2
fi
if [ "${1:-}" = --generators ]; then
  for tool in protoc grpc_python_plugin protoc-gen-go protoc-gen-go-grpc; do
    if ! command -v "$tool" >/dev/null; then
      echo "installing protoc and its plugins from Debian" >&2
      apt-get update -qq >&2
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        protobuf-compiler protobuf-compiler-grpc protoc-gen-go protoc-gen-go-grpc >/dev/null
      break
    fi
  done
fi
echo "$PWD/$tools/node_modules/.bin"
