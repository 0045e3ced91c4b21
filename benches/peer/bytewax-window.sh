#!/usr/bin/env bash
# Runs the Bytewax window peer (bytewax_window.py) with Bytewax 0.21 and paho-mqtt 2 from PyPI,
# installed once into a private venv under target/bench-peer/.
# Usage: benches/peer/bytewax-window.sh HOST PORT IN_TOPIC OUT_TOPIC
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="$root/target/bench-peer/bytewax-venv"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import bytewax, paho.mqtt' 2>/dev/null; then
  echo "bytewax peer: installing bytewax==0.21.* and paho-mqtt==2.* into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'bytewax==0.21.*' 'paho-mqtt==2.*' >&2
fi
exec "$venv/bin/python" "$root/benches/peer/bytewax_window.py" "$@"
