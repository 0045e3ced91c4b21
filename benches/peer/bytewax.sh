#!/usr/bin/env bash
# Runs the Bytewax peer flow (bytewax_flow.py) with Bytewax 0.21 from PyPI, installed once into
# a private venv under target/bench-peer/. Usage: benches/peer/bytewax.sh [MESSAGES]
# Prints `bytewax <messages> <wall seconds> <CPU seconds>`.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="$root/target/bench-peer/bytewax-venv"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import bytewax' 2>/dev/null; then
  echo "bytewax peer: installing bytewax==0.21.* into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'bytewax==0.21.*' >&2
fi
exec "$venv/bin/python" "$root/benches/peer/bytewax_flow.py" "$@"
