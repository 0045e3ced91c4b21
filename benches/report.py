#!/usr/bin/env python3
"""Writes BENCHMARKS.md (to stdout) from the figures `scripts/bench` collected.

Input: results.tsv (bench, run, key, value), one line per `RESULT key=value` a bench binary
printed. Every figure is shown as the median over the runs with its min-max and the number of
runs; ratios are the ratios each run computed from its own two sides (so they compare figures
taken seconds apart on the same machine), summarised the same way. The machine's description
is read here (lscpu, /proc/meminfo, uname, rustc, git). Nothing else is a number.

What each row measured is described in ROWS below (prose, no figures); a key no row claims is
listed under "Other figures" with its bench binary, so a new bench shows up without editing
this file.
"""

import argparse
import math
import collections
import datetime
import os
import re
import statistics
import subprocess
import sys


def sh(*command):
    try:
        return subprocess.run(command, capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return ""


def machine():
    lscpu = sh("lscpu")
    model = next((l.split(":", 1)[1].strip() for l in lscpu.splitlines() if l.startswith("Model name")), "unknown")
    memory = "unknown"
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    commit = sh("git", "rev-parse", "--short=12", "HEAD")
    dirty = " (with uncommitted changes)" if sh("git", "status", "--porcelain", "--untracked-files=no") else ""
    return [
        ("CPU", model),
        ("cores (online)", str(os.cpu_count())),
        ("memory", memory),
        ("kernel", sh("uname", "-sr")),
        ("rustc", sh("rustc", "--version")),
        ("date (UTC)", datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")),
        ("commit", commit + dirty),
    ]


# Each row: (title, description, [(key pattern, label, unit, target or None)]). Key patterns are
# regular expressions matched against the whole key; the label may use the groups.
ROWS = [
    (
        "1. Operator call (in process)",
        "`operator-call`: one call of the `temperature` module's map, filter, branch and accumulate "
        "(16 items) through weir's host (`OperatorInstance`, default quotas), beside the raw "
        "wasmtime component call of the same module with the same message (`bindgen!` bindings, "
        "one reused store), with no walls and with fuel + epoch deadline + memory limiter armed "
        "per call as weir does. Per-thread CPU time, best of 3 interleaved rounds within a run. "
        "Ratio: raw (same walls) time / weir time.",
        [
            (r"op_(\w+)_weir_us", r"\1: weir host call", "µs/call", None),
            (r"op_(\w+)_raw_walled_us", r"\1: raw call, fuel+epoch+memory", "µs/call", None),
            (r"op_(\w+)_raw_bare_us", r"\1: raw call, no walls", "µs/call", None),
            (r"op_(\w+)_ratio", r"\1: ratio raw (same walls) / weir", "×", ">= 0.70"),
        ],
    ),
    (
        "2. Dataflow throughput (in process) and Bytewax in process",
        "`dataflow-throughput`: source → temperature map → temperature filter → sink on one "
        "timely dataflow worker (two wasm calls per message), messages handed in and taken out "
        "in process; beside the raw map + filter component calls on the same message; and the "
        "Bytewax 0.21 peer (`benches/peer/bytewax_flow.py`, PyPI, one worker, `TestingSource` "
        "batches of 64, the same map and filter logic in Python, counting sink).",
        [
            (r"flow_weir_msgs_per_s", "weir: msgs/s (wall clock)", "msg/s", None),
            (r"flow_weir_msgs_per_cpu_s", "weir: msgs per CPU second (all threads)", "msg/CPU-s", None),
            (r"flow_weir_worker_msgs_per_s", "weir: msgs per dataflow worker CPU second", "msg/s", None),
            (r"flow_raw_walled_msgs_per_s", "raw map + filter calls, fuel+epoch+memory", "msg/s", None),
            (r"flow_ratio_worker_raw", "ratio weir worker / raw two calls", "×", ">= 0.50"),
            (r"flow_bytewax_msgs_per_s", "Bytewax: msgs/s (wall clock)", "msg/s", None),
            (r"flow_bytewax_msgs_per_cpu_s", "Bytewax: msgs per CPU second", "msg/CPU-s", None),
            (r"flow_ratio_bytewax_wall", "ratio weir / Bytewax, wall clock", "×", None),
            (r"flow_ratio_bytewax_cpu", "ratio weir / Bytewax, per CPU second", "×", ">= 5"),
        ],
    ),
    (
        "3. MQTT → weir → MQTT against the broker's relay ceiling",
        "`mqtt-e2e`: a real `weir serve` (release) set up over its API: the graph source → "
        "temperature map (°F→°C) → temperature filter → sink, one deployment per broker and QoS "
        "on `mqtt` endpoints (the embedded broker with a device login; Mosquitto, started by "
        "`scripts/bench` on loopback). Messages: 200-byte JSON readings in °F, send time in user "
        "property `t`. The relay: a plain rumqttc 0.25 subscriber that republishes every message "
        "to the output topic at the same QoS, in the bench process. Both paths are fed and "
        "measured by the same rumqttc publisher and subscriber. Saturation: 20,000 messages "
        "(`--quick`: fewer) with at most 1,000 unanswered, first send to last receipt. Latency: a "
        "publisher paced on a 1 ms tick at 1k and 10k msg/s, receipt time − scheduled send time. "
        "Ratio: weir msgs/s / relay msgs/s.",
        [
            (r"mqtt_(\w+)_q(\d)_(relay|weir)_sat_msgs_per_s", r"\1 QoS \2, \3: saturation", "msg/s", None),
            (r"mqtt_(\w+)_q(\d)_sat_ratio", r"\1 QoS \2: ratio weir / relay at saturation", "×", ">= 0.8"),
            (r"mqtt_(\w+)_q(\d)_weir_10k_p99_ms", r"\1 QoS \2, weir: p99 at 10k msg/s", "ms", "< 2"),
            (r"mqtt_(\w+)_q(\d)_(relay|weir)_(\d+)k_(p50|p99|p999)_ms", r"\1 QoS \2, \3: \5 at \4k msg/s", "ms", None),
            (r"mqtt_(\w+)_q(\d)_(relay|weir)_(\d+)k_lost", r"\1 QoS \2, \3: messages lost at \4k msg/s", "msgs", None),
        ],
    ),
    (
        "4. Peers on the window workload (MQTT in → °F→°C → filter → 10 s window average → MQTT out)",
        "`window-peers`: the same Mosquitto, the same paced publisher (fixed offered load) and "
        "the same subscriber for each side, one side at a time. weir: `weir serve --max-in-flight "
        "65536` (release; the default 1,024 unsettled messages per deployment would cap each 10 s "
        "window at 1,024 readings) with the graph source → temperature map → temperature filter → window delay (10 s tumbling, "
        "`modules/window`) → temperature accumulate (count/min/max/average) → sink, on a "
        "Mosquitto endpoint. Bytewax 0.21 (PyPI, `benches/peer/bytewax_window.py`): paho-mqtt "
        "source and sink, map, filter, a 10 s tumbling window (`collect_window` + average), one "
        "worker. Node-RED (npm, `benches/peer/node-red-flow.json`): mqtt in → function (°F→°C) → "
        "function (filter) → function (10 s window average) → mqtt out. Figure: readings averaged "
        "into the side's window outputs (counted from the outputs, not the readings sent: a side "
        "that dropped input is not credited with it) per CPU second of the side's process while "
        "the load and its last window ran (utime + stime from /proc), i.e. per core; readings "
        "lost = sent − averaged. Ratio: weir / peer per CPU second.",
        [
            (r"window_(\w+)_msgs_per_cpu_s", r"\1: msgs per CPU second", "msg/CPU-s", None),
            (r"window_(\w+)_cpu_s", r"\1: CPU seconds for the load", "s", None),
            (r"window_(\w+)_windows", r"\1: window outputs received", "outputs", None),
            (r"window_(\w+)_readings_counted", r"\1: readings averaged", "readings", None),
            (r"window_(\w+)_readings_lost", r"\1: readings lost", "readings", "< 1"),
            (r"window_ratio_(\w+)", r"ratio weir / \1 per CPU second", "×", ">= 10"),
        ],
    ),
    (
        "5. Serverless request/response: `POST /ingest?wait=true` against native axum",
        "`ingest-wait`: a real `weir serve` (release), the graph source → temperature map → "
        "temperature filter → sink on HTTP in and out, one °F reading per request and waiting for "
        "its output; beside an axum 0.8 handler in the bench process doing the same JSON work "
        "natively (parse, °F→°C, re-serialise, rewrite the user property, parse again, range "
        "filter, answer the outputs). Same client (reqwest, keep-alive), 4 requests in flight; the "
        "better of two interleaved runs of each side. Ratio: weir requests/s / native requests/s.",
        [
            (r"ingest_(weir|native)_rps", r"\1: requests/s", "req/s", None),
            (r"ingest_(weir|native)_(p50|p99)_ms", r"\1: \2", "ms", None),
            (r"ingest_rps_ratio", "ratio weir / native requests/s", "×", "report"),
        ],
    ),
    (
        "6. Cold start: upload → compiled, deploy → first output, restart → all running",
        "`cold-start`: a real `weir serve` (release) on a fresh data directory. Upload: `POST "
        "/v1/modules` until answered (validated and compiled), for the Rust `temperature` "
        "module and for a componentize-py 0.25.1 map module (`benches/peer/py_map/app.py`, built "
        "by `benches/peer/py_map.sh`). Deploy: `POST /v1/deployments` of the sample graph with the "
        "module compiled at upload, until the first `POST /ingest?wait=true` is answered (median "
        "of 5 deployments). Restart: the server killed and started on its data with 6 "
        "deployments, until every deployment answers a waited ingest; once with the persistent "
        "compile cache (`DATA/artifacts`, the server reports 0 compiled) and once with it deleted.",
        [
            (r"upload_compiled_ms_(\w+)", r"upload → compiled, \1 module", "ms", None),
            (r"deploy_first_output_ms", "deploy → first output, sample graph", "ms", "< 50"),
            (r"deploy_first_output_ms_python", "deploy → first output, Python module", "ms", None),
            (r"restart_running_ms", "restart → all deployments running, compile cache on disk", "ms", None),
            (r"restart_running_ms_no_cache", "restart → all running, compile cache deleted", "ms", None),
        ],
    ),
    (
        "7. Density: deployments per executor and memory per deployment",
        "`density`: deployments of the sample graph made one after another on one `weir serve` "
        "(release, quotas raised for the bench tenant) up to 1,000 or until memory or a quota "
        "stops it. Active: growth of the server's VmRSS over the deploy phase divided by the "
        "deployments (each ran `init`, one live instance each). Idle: VmRSS over the pre-deploy "
        "baseline once every instance idled out and was dropped, divided by the deployments.",
        [
            (r"deployments", "deployments reached (target 1,000)", "deployments", ">= 1000"),
            (r"idle_kib_per_deployment", "RSS per idle deployment", "KiB", "< 1024"),
            (r"active_kib_per_deployment", "RSS per active deployment", "KiB", None),
            (r"deploy_ms_per_deployment", "deploy time per deployment", "ms", None),
        ],
    ),
    (
        "8. Isolation: a quiet tenant beside a noisy one",
        "`noisy-neighbour`: one `weir serve` (release). The quiet tenant: sequential `POST "
        "/ingest?wait=true` of one message each to one `echo` deployment, alone and then while a "
        "noisy tenant feeds 4 `spin_loop` deployments without pause, burning its whole fuel "
        "budget (fuel_per_second 2,000,000,000). Ratio: quiet p99 beside the noisy tenant / alone, "
        "same run.",
        [
            (r"quiet_(alone|beside_noisy)_(p50|p99)_ms", r"quiet tenant, \1: \2", "ms", None),
            (r"quiet_(alone|beside_noisy)_requests_per_s", r"quiet tenant, \1: requests/s", "req/s", None),
            (r"quiet_p99_ratio", "ratio quiet p99 beside noisy / alone", "×", "< 1.10"),
        ],
    ),
    (
        "9. State store round trips from a module: memory, SQLite, Redis",
        "`state-roundtrip`: the `enrichment` module's map called through weir's host "
        "(`OperatorInstance`), each message making exactly one state call (`get` for a mild "
        "reading, `set` for a cold one), awaited one after another; backends: in-process memory "
        "(the ceiling), SQLite (`weir serve`'s default, a file) and Redis 7 (started by "
        "`scripts/bench` on loopback with the append-only file and `appendfsync always`, as "
        "weir's Redis tests run it, so a `set` is a write that survives a crash).",
        [
            (r"state_(get|set)_(\w+)_ops_per_s", r"\1 on \2", "ops/s", None),
        ],
    ),
    (
        "10. Inference (wasi-nn) on one worker, per backend",
        "`inference`: the `snapshot` module's map (a 224x224 RGB24 frame normalised into a "
        "1x3x224x224 f32 tensor in the guest, the embedded CNN of `modules/snapshot/model` run by "
        "the host's wasi-nn backend on a blocking thread, argmax and label in the guest) called "
        "through weir's host (`OperatorInstance`, default quotas) one call after another on a "
        "current-thread runtime, the model loaded once; wall-clock latency of each call. Backends: "
        "tract (built in) and ONNX Runtime 1.32 (the PyPI wheel's library, `ort` load-dynamic).",
        [
            (r"inference_(\w+)_per_s", r"\1: inferences/s", "inf/s", None),
            (r"inference_(\w+)_(p50|p99)_ms", r"\1: \2 latency", "ms", None),
        ],
    ),
    (
        "11. Placement: 1,000 executors × 10,000 deployments",
        "`placement`: the scheduler's placer (`weir_scheduler::SpreadPacker`: spread each tenant, "
        "then best-fit packing by declared fuel rate, memory and instances, label requirements "
        "honoured) placing 10,000 deployments of 500 tenants one after another on a pool of "
        "1,000 executors (2 to 16 workers each, zone and gpu labels), each placement recorded in "
        "the pool before the next, in one thread; then 10 executors are removed and their "
        "deployments placed again (failover). Demands follow a fixed pseudo-random sequence "
        "(`--quick`: 100 executors × 1,000 deployments).",
        [
            (r"placement_per_s", "placements per second (place + record)", "placements/s", None),
            (r"placement_(p50|p99)_us", r"one placement: \1", "µs", None),
            (r"placement_placed", "deployments placed", "deployments", None),
            (r"placement_refused", "deployments refused (no room or no matching executor)", "deployments", None),
            (r"placement_max_tenant_per_executor", "most deployments of one tenant on one executor", "deployments", None),
            (r"placement_fuel_used_pct", "the pool's fuel capacity declared by placed deployments", "%", None),
            (r"replacement_deployments", "deployments of the 10 removed executors", "deployments", None),
            (r"replacement_per_s", "re-placements per second", "placements/s", None),
            (r"replacement_refused", "re-placements refused", "deployments", None),
        ],
    ),
    (
        "12. Dashboard with 500 deployments in one tenant",
        "`dashboard`: `weir serve` with 500 deployments of the sample graph in tenant `bench`, the "
        "dashboard opened in Debian's headless Chromium (playwright-core, `tests/browser/dashboard.mjs "
        "bench`) with the token already in the tab's session storage. First render: navigation start "
        "to every deployment's row in the list (rows added 100 per animation frame). Update: median "
        "time the page takes to apply one event of its event stream (every deployment's counters, "
        "one event every 1.5 s: JSON parse and DOM update; rows whose counters did not change are left "
        "alone), over 10 events, while the bench ingests messages into the deployments one after "
        "another so that each event changes some rows.",
        [
            (r"dashboard_first_render_ms", "first render of the list", "ms", None),
            (r"dashboard_update_ms", "one live update applied", "ms", None),
        ],
    ),
]


def fmt(value):
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def meets(target, median, low, high, n):
    """`yes` only when every run met the target; a median that meets it while some run did not
    says so (a spread across the bound is noise, not a result)."""
    match = re.fullmatch(r"(>=|<)\s*([\d.]+)", target or "")
    if not match:
        return ""
    bound = float(match.group(2))

    def ok(value):
        return value >= bound if match.group(1) == ">=" else value < bound

    if not ok(median):
        return "**no**"
    if ok(low) and ok(high):
        return "yes"
    return f"median only (not in every one of the {n} runs)"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--results", required=True)
    parser.add_argument("--runs", type=int, required=True)
    parser.add_argument("--elapsed", type=int, required=True)
    parser.add_argument("--mosquitto-version", default="")
    parser.add_argument("--loadavg", default="")
    parser.add_argument("--benches", nargs="*", default=[])
    args = parser.parse_args()

    values = collections.OrderedDict()
    bench_of = {}
    with open(args.results) as f:
        next(f)
        for line in f:
            bench, _run, key, value = line.rstrip("\n").split("\t")
            number = float(value) if value.strip() else float("nan")
            if not math.isfinite(number):
                sys.exit(f"report.py: {bench} run {_run} printed {key}={value!r}, not a finite number")
            values.setdefault(key, []).append(number)
            bench_of[key] = bench

    out = []
    w = out.append
    w("# weir benchmarks")
    w("")
    w("Generated by `scripts/bench` (benches/report.py) from the figures of one invocation; do "
      "not edit by hand, rerun `scripts/bench`. Each figure is the **median** over the runs, "
      "with the **min–max** and the **number of runs** (n). Absolute times on a shared 2-core "
      "machine are noisy; compare the ratios, each computed within one run from its two sides.")
    w("")
    w("## Machine")
    w("")
    w("| | |")
    w("|---|---|")
    for name, value in machine():
        w(f"| {name} | {value} |")
    mosquitto = ""
    if args.mosquitto_version and os.path.exists(args.mosquitto_version):
        with open(args.mosquitto_version) as f:
            mosquitto = f.read().strip()
    if mosquitto:
        w(f"| Mosquitto | {mosquitto} |")
    if args.loadavg and os.path.exists(args.loadavg):
        with open(args.loadavg) as f:
            loads = [l.strip() for l in f if l.strip()]
        if loads:
            w(f"| load average (1 min) at the start / end of the runs | {' / '.join(loads)} "
              "(the bench itself adds about 1; more means other work shared the 2 cores) |")
    w(f"| runs per figure | {args.runs} |")
    w(f"| all runs took | {args.elapsed} s |")
    w("")
    w("Bench binaries run (each run in this order), from `target/release/`:")
    w("")
    for bench in args.benches:
        w(f"- `{bench}`")
    w("")

    claimed = set()
    for title, description, figures in ROWS:
        rows = []
        for pattern, label, unit, target in figures:
            for key, samples in values.items():
                match = re.fullmatch(pattern, key)
                if not match or key in claimed:
                    continue
                claimed.add(key)
                median = statistics.median(samples)
                rows.append((match.expand(label), unit, median, min(samples), max(samples), len(samples), target))
        if not rows:
            w(f"## {title}")
            w("")
            w("Not measured in this run (no bench printed its figures).")
            w("")
            continue
        w(f"## {title}")
        w("")
        w(description)
        w("")
        w("| figure | median | min–max | n | unit | target | met |")
        w("|---|---:|---:|---:|---|---|---|")
        for label, unit, median, low, high, n, target in rows:
            w(f"| {label} | {fmt(median)} | {fmt(low)}–{fmt(high)} | {n} | {unit} | {target or ''} | {meets(target, median, low, high, n)} |")
        w("")

    others = [key for key in values if key not in claimed]
    if others:
        w("## Other figures")
        w("")
        w("Figures of benches no section above describes yet; see each bench binary's doc "
          "comment for what it measured.")
        w("")
        w("| bench | figure | median | min–max | n |")
        w("|---|---|---:|---:|---:|")
        for key in others:
            samples = values[key]
            w(f"| `{bench_of[key]}` | `{key}` | {fmt(statistics.median(samples))} | "
              f"{fmt(min(samples))}–{fmt(max(samples))} | {len(samples)} |")
        w("")
    sys.stdout.write("\n".join(out))


if __name__ == "__main__":
    main()
