#!/usr/bin/env bash
# Installs the onnxruntime wheel from PyPI once into a private venv under target/bench-peer/ and
# prints the path of the ONNX Runtime library it ships (what `weir serve --onnxruntime` and the
# inference bench load). Usage: benches/peer/onnxruntime.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="$root/target/bench-peer/onnxruntime-venv"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import onnxruntime' 2>/dev/null; then
  echo "onnxruntime: installing onnxruntime==1.32.0 into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'onnxruntime==1.32.0' >&2
fi
ls "$venv"/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.1.*
