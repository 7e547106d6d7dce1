#!/usr/bin/env bash
# Makes target/venv (a Python virtualenv beside the build output) hold the packages of the
# requirement files given as arguments, installing only when a file changed since the
# last install. Prints the venv's python. Needs python3 with the venv module and PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/venv
stamp="$venv/.installed"
want="$(cat "$@" | sha256sum | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" >&2
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  for file in "$@"; do
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$file" >&2
  done
  echo "$want" >"$stamp"
fi
echo "$PWD/$venv/bin/python"
