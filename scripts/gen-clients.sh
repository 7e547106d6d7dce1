#!/usr/bin/env bash
# Generates the clients of proto/ as a normal user, with tools that npm and pip install into
# the repository (no root, no apt):
#   TypeScript -> clients/typescript/src/gen (buf + protoc-gen-es from the package's lockfile),
#                 with google/rpc status and error details; type-checked with tsc --strict.
#   Python     -> clients/python/chat_v1 (grpcio-tools' protoc: messages, .pyi, grpc stubs;
#                 package chat_v1, installable with `pip install clients/python`); imported.
#   Go         -> gen/go (module in gen/go/go.mod), only where protoc-gen-go and
#                 protoc-gen-go-grpc are on PATH (Debian's packages: scripts/proto-tools.sh
#                 --go-plugins, as root); not compiled: no Go toolchain here.
# Options: --ts (TypeScript only, for the TypeScript client's tests), --require-go (fail
# instead of skipping Go when its plugins are missing).
# Generated code is not committed: this script is the one way to make it.
set -euo pipefail
cd "$(dirname "$0")/.."
only_ts=false require_go=false
for arg in "$@"; do
  case "$arg" in
    --ts) only_ts=true ;;
    --require-go) require_go=true ;;
    *) echo "usage: $0 [--ts] [--require-go]" >&2; exit 2 ;;
  esac
done
PATH="$(scripts/proto-tools.sh):$PATH"
python="$(scripts/python-venv.sh scripts/requirements-test.txt scripts/requirements-gen.txt)"

# google/rpc's protos from the pinned googleapis-common-protos, as a buf input of their own
# (only these three: the package's directory also holds every other googleapis proto).
rpc_src="$("$python" -c 'import os; from google.rpc import status_pb2; print(os.path.dirname(status_pb2.__file__))')"
rm -rf target/rpc-protos && mkdir -p target/rpc-protos/google/rpc
cp "$rpc_src"/{status,error_details,code}.proto target/rpc-protos/google/rpc/

ts_out=clients/typescript/src/gen
rm -rf "$ts_out"
buf generate
tsc --noEmit --strict --skipLibCheck --module nodenext --moduleResolution nodenext \
  --target es2022 --typeRoots clients/typescript/node_modules/@types \
  "$ts_out"/chat/v1/*.ts "$ts_out"/google/rpc/*.ts
if $only_ts; then
  echo "gen-clients: $ts_out (type-checked)"
  exit 0
fi

# Python: protoc writes chat/v1/*_pb2*.py importing `chat.v1`; the package is chat_v1 (a
# top-level `chat` would clash with anything else called chat), so the generated modules
# move there and their imports follow. Only module names change: the descriptors keep
# their proto file names (chat/v1/...), which is what the wire and reflection use.
py_pkg=clients/python/chat_v1
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
wkt="$("$python" -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')"
"$python" -m grpc_tools.protoc -I proto -I "$wkt" \
  --python_out="$tmp" --pyi_out="$tmp" --grpc_python_out="$tmp" proto/chat/v1/*.proto
find "$py_pkg" -maxdepth 1 -name '*_pb2*' -delete
for file in "$tmp"/chat/v1/*_pb2*; do
  sed -E -e 's/^from chat\.v1 import /from chat_v1 import /' \
    -e "s/'chat\.v1\.([a-z_]+_pb2)'/'chat_v1.\1'/g" "$file" >"$py_pkg/$(basename "$file")"
done
(cd clients/python && "$python" -c '
from chat_v1 import conversation_pb2_grpc, token_pb2_grpc, token_admin_pb2_grpc, errors
assert conversation_pb2_grpc.ConversationServiceStub and errors.error_info
')

# Go: the module path is go_package's prefix (proto/chat/v1/*.proto).
go_module=github.com/tokenchat/tokenchat/gen/go
if command -v protoc-gen-go >/dev/null && command -v protoc-gen-go-grpc >/dev/null; then
  rm -rf gen/go
  buf generate --template buf.gen.go.yaml
  cat >gen/go/go.mod <<GOMOD
module $go_module

go 1.21

require (
	google.golang.org/grpc v1.64.0
	google.golang.org/protobuf v1.34.2
)
GOMOD
  for file in conversation token token_admin; do
    test -s "gen/go/chat/v1/$file.pb.go" && test -s "gen/go/chat/v1/${file}_grpc.pb.go"
  done
  go_done="gen/go (generated, not compiled: no Go toolchain here)"
elif $require_go; then
  echo "protoc-gen-go / protoc-gen-go-grpc not on PATH (scripts/proto-tools.sh --go-plugins, as root)" >&2
  exit 1
else
  go_done="Go skipped: protoc-gen-go and protoc-gen-go-grpc are not installed (neither npm nor PyPI ships them)"
fi
echo "gen-clients: $ts_out (type-checked), $py_pkg (imported), $go_done"
