#!/usr/bin/env bash
# Generates the TypeScript, Go and Python clients of proto/ into gen/ (buf.gen.yaml) and
# checks them: the TypeScript type-checks (tsc --strict), the Python imports with grpcio,
# the Go files are there (compiling them needs a Go toolchain, which is not installed here).
set -euo pipefail
cd "$(dirname "$0")/.."
PATH="$(scripts/proto-tools.sh --generators):$PATH"
python="$(scripts/python-venv.sh scripts/requirements-test.txt)"
rm -rf gen
buf generate
ln -s ../target/tools/node_modules gen/node_modules
tsc --noEmit --strict --skipLibCheck --module nodenext --moduleResolution nodenext --target es2022 gen/ts/chat/v1/*.ts
(cd gen/python && "$python" -c 'from chat.v1 import conversation_pb2_grpc, token_pb2_grpc, token_admin_pb2_grpc')
for file in conversation token token_admin; do
  test -s "gen/go/chat/v1/$file.pb.go" && test -s "gen/go/chat/v1/${file}_grpc.pb.go"
done
echo "gen-clients: gen/ts (type-checked), gen/python (imported), gen/go (generated, not compiled)"
