#!/usr/bin/env bash
# Runs the Node-RED peer of weir's row 4 (`window-peers`): Node-RED 4 from npm, installed once
# into target/bench-peer/node-red/, with benches/peer/node-red-flow.json (mqtt in → °F→°C →
# range filter → 10 s window average → mqtt out, QoS 0, MQTT v5) pointed at the given broker and
# topics, the editor and HTTP nodes off.
# Usage: benches/peer/node-red.sh HOST PORT IN_TOPIC OUT_TOPIC
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
prefix="$root/target/bench-peer/node-red"
red="$prefix/node_modules/node-red/red.js"
if [ ! -f "$red" ]; then
  echo "node-red peer: installing node-red@4 into $prefix" >&2
  mkdir -p "$prefix"
  npm install --prefix "$prefix" --no-audit --no-fund --silent node-red@4 >&2
fi
user=$(mktemp -d "$root/target/bench-peer/node-red-user.XXXXXX")
sed -e "s|@HOST@|$1|; s|@PORT@|$2|; s|@IN@|$3|; s|@OUT@|$4|" "$root/benches/peer/node-red-flow.json" > "$user/flows.json"
cat > "$user/settings.js" <<JS
module.exports = {
    flowFile: "flows.json",
    credentialSecret: false,
    httpAdminRoot: false,
    httpNodeRoot: false,
    uiHost: "127.0.0.1",
    uiPort: 0,
    logging: { console: { level: "info", metrics: false, audit: false } },
    editorTheme: { projects: { enabled: false } },
};
JS
exec node "$red" --userDir "$user" --settings "$user/settings.js"
