#!/usr/bin/env bash
# A throwaway CA and the certificates of docker-compose.yml's `tls` profile, written to
# target/dev-pki (with openssl): conversation-tls (server) and token-tls (server, and
# client towards conversation-tls with the SPIFFE id that config/callers.example.toml
# grants token-service's role). For a local setup only: the keys are world-readable so
# the containers' uid 65534 can read them.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=target/dev-pki
mkdir -p "$dir"
cd "$dir"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
  -subj "/CN=token-chat dev CA" -keyout ca.key -out ca.crt 2>/dev/null
issue() { # name extended-key-usage subject-alt-names
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$1" \
    -keyout "$1.key" -out "$1.csr" 2>/dev/null
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 \
    -extfile <(printf 'extendedKeyUsage=%s\nsubjectAltName=%s\n' "$2" "$3") -out "$1.crt" 2>/dev/null
  rm "$1.csr"
  chmod 644 "$1.key"
}
issue conversation-tls serverAuth "DNS:conversation-tls,DNS:localhost,IP:127.0.0.1"
issue token-tls serverAuth,clientAuth \
  "DNS:token-tls,DNS:localhost,IP:127.0.0.1,URI:spiffe://chat.example/token-service"
echo "dev PKI in $dir: ca.crt, conversation-tls.{crt,key}, token-tls.{crt,key}"
