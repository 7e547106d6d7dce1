#!/usr/bin/env bash
# The Python client's test, the way a newcomer uses it: scripts/gen-clients.sh, then
# `pip install clients/python` into a venv of its own (target/venv-python-client), then
# tests/test_client.py against a real conversation-service (target/debug, built here
# unless CONVERSATION_SERVICE_BIN names one) on a fresh database of 127.0.0.1:5432.
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/gen-clients.sh >/dev/null
if [ -z "${CONVERSATION_SERVICE_BIN:-}" ]; then
  cargo build --quiet -p conversation-service --bin conversation-service
fi
venv=target/venv-python-client
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
# Not editable: the test must see what pip installs, not the source tree.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps ./clients/python
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check ./clients/python
rm -rf clients/python/build clients/python/*.egg-info
"$venv/bin/python" clients/python/tests/test_client.py -v
