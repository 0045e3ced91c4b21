#!/usr/bin/env bash
# Builds the cold-start bench's Python module (benches/peer/py_map/app.py) with componentize-py
# 0.25.1 from PyPI, installed once into a private venv under target/bench-peer/. Prints the path
# of the component (target/bench-peer/py_map.wasm), built once.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="$root/target/bench-peer/componentize-venv"
out="$root/target/bench-peer/py_map.wasm"
if [ ! -x "$venv/bin/componentize-py" ]; then
  echo "py_map: installing componentize-py==0.25.1 into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'componentize-py==0.25.1' >&2
fi
if [ ! -s "$out" ] || [ "$root/benches/peer/py_map/app.py" -nt "$out" ]; then
  work="$root/target/bench-peer/py_map-build"
  rm -rf "$work" && mkdir -p "$work" && cp "$root/benches/peer/py_map/app.py" "$work/"
  (cd "$work" && "$venv/bin/componentize-py" -d "$root/wit/wasm-graph" -w map-impl \
    componentize app -o "$out.tmp" >&2)
  mv "$out.tmp" "$out"
fi
echo "$out"
