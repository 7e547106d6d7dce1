#!/usr/bin/env bash
# Makes target/venv (a Python virtualenv beside the build output) hold the packages of the
# requirement files given as arguments; a file is installed again only when it changed.
# Prints the venv's python. Needs python3 with the venv module, and PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" >&2
fi
for file in "$@"; do
  stamp="$venv/.installed-$(echo "$file" | tr '/.' '__')"
  want="$(sha256sum "$file" | cut -d' ' -f1)"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$file" >&2
    echo "$want" >"$stamp"
  fi
done
echo "$PWD/$venv/bin/python"
