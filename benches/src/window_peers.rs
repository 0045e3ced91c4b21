//! Row 4 of the benchmark report (issue 11): weir against its peers on the same window
//! workload, MQTT in → °F→°C map → range filter → 10 s tumbling window average → MQTT out, on
//! the same Mosquitto, with the same offered load, one side at a time.
//!
//! - weir: the given `weir serve` (release) binary, set up over its API: the graph source →
//!   temperature map → temperature filter → window delay (`modules/window`, 10 s tumbling) →
//!   temperature accumulate (count, min, max, average, last) → sink, on two `mqtt` endpoints
//!   (in and out) at the Mosquitto, QoS 0;
//! - Bytewax 0.21 (`benches/peer/bytewax-window.sh`, PyPI): paho-mqtt in and out, the same map
//!   and filter in Python, `fold_window` over a 10 s `TumblingWindower`, one worker;
//! - Node-RED 4 (`benches/peer/node-red.sh`, npm): `benches/peer/node-red-flow.json`, mqtt in →
//!   function (°F→°C) → function (filter) → function (10 s window average) → mqtt out.
//!
//! Each side gets `RATE` msg/s for `SECONDS` s of 200-byte °F readings (a rumqttc publisher
//! paced on a 1 ms tick, QoS 0); a rumqttc subscriber takes the window outputs until the window
//! of the last reading has come out (or 5 s after it should have). The figure is messages per
//! CPU second of the side's process (utime + stime from `/proc/<pid>/stat`) over that time:
//! work per core, whatever the number of threads. Prints `RESULT window_<side>_…` and
//! `RESULT window_ratio_<peer>` (weir / peer, per CPU second).
//!
//! ```sh
//! target/release/window-peers --weir target/release/weir --mosquitto 127.0.0.1:PORT [--rate 5000] [--seconds 11] [--only weir|bytewax|node_red]
//! ```

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{Event, EventLoop};
use weir_api::rest::{Binding, CreateDeployment, CreateEndpoint, EndpointKind, GraphRef};
use weir_bench::mqtt::{Login, drive, paced, qos};
use weir_bench::{WeirServer, float, pid_cpu_time, result};

const GRAPH: &str = "metadata: {$schema: s, name: g, version: '1'}\nmoduleRequirements: {apiVersion: '1.1.0', runtimeVersion: '1.1.0'}\noperations:\n  - {operationType: source, name: source}\n  - {operationType: map, name: map, module: 'temperature:1.0.0'}\n  - {operationType: filter, name: filter, module: 'temperature:1.0.0'}\n  - {operationType: delay, name: window, module: 'window:1.0.0'}\n  - {operationType: accumulate, name: average, module: 'temperature:1.0.0'}\n  - {operationType: sink, name: sink}\nconnections:\n  - {from: {name: source}, to: {name: map}}\n  - {from: {name: map}, to: {name: filter}}\n  - {from: {name: filter}, to: {name: window}}\n  - {from: {name: window}, to: {name: average}}\n  - {from: {name: average}, to: {name: sink}}\n";

/// The window length, in ms.
const WINDOW_MS: u64 = 10_000;

/// A peer's process, killed when dropped.
struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _killed = self.0.kill();
        let _waited = self.0.wait();
    }
}

/// Starts `script HOST PORT IN OUT` and waits for a line containing `ready` in its output.
fn start_peer(
    script: &str,
    mosquitto: &Login,
    input: &str,
    output: &str,
    ready: &str,
) -> anyhow::Result<Peer> {
    let mut child = Command::new(script)
        .args([
            mosquitto.host.as_str(),
            &mosquitto.port.to_string(),
            input,
            output,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot start {script}"))?;
    let stdout = child.stdout.take().context("stdout")?;
    let peer = Peer(child);
    let mut lines = BufReader::new(stdout).lines();
    loop {
        let line = lines
            .next()
            .with_context(|| format!("{script} ended before it was ready"))??;
        if line.contains(ready) {
            break;
        }
    }
    std::thread::spawn(move || for _line in lines {});
    Ok(peer)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Counts window outputs and the readings they say they counted.
fn collect(
    mut events: EventLoop,
    outputs: Arc<AtomicU64>,
    counted: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok(event) = events.poll().await {
            if let Event::Incoming(Packet::Publish(publish)) = event {
                let count = serde_json::from_slice::<serde_json::Value>(&publish.payload)
                    .ok()
                    .and_then(|v| {
                        v.pointer("/temperature/count")
                            .and_then(serde_json::Value::as_u64)
                    })
                    .unwrap_or_default();
                counted.fetch_add(count, Ordering::Relaxed);
                outputs.fetch_add(1, Ordering::Relaxed);
            }
        }
    })
}

/// Drives one side (its process `pid`): the load, then waits for its last window.
async fn run_side(
    side: &str,
    pid: u32,
    mosquitto: &Login,
    input: &str,
    output: &str,
    rate: u64,
    seconds: u64,
) -> anyhow::Result<f64> {
    let (_subscriber, events) = mosquitto
        .subscribe(&format!("window-sub-{side}"), output, qos(0))
        .await?;
    let (outputs, counted) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let collector = collect(events, outputs.clone(), counted.clone());
    let (publisher, publisher_events) = mosquitto.connect(&format!("window-pub-{side}")).await?;
    let publisher_task = drive(publisher_events);
    let cpu_started = pid_cpu_time(pid).context("the side's CPU time")?;
    let first_window = unix_ms() / WINDOW_MS;
    let sent = paced(&publisher, input, 0, rate, seconds).await?;
    let last_window = unix_ms() / WINDOW_MS;
    let windows = last_window - first_window + 1;
    // The last window closes at its end; weir's wall-clock frontier trails by its allowed
    // lateness, so give every side 5 s beyond the end.
    let deadline = (last_window + 1) * WINDOW_MS + 5_000;
    // Every reading counted in some output, or the deadline (a side may emit a window in parts).
    while unix_ms() < deadline && counted.load(Ordering::Relaxed) < sent {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu = pid_cpu_time(pid)
        .context("the side's CPU time")?
        .saturating_sub(cpu_started)
        .as_secs_f64();
    publisher_task.abort();
    collector.abort();
    let (got, seen) = (
        outputs.load(Ordering::Relaxed),
        counted.load(Ordering::Relaxed),
    );
    println!(
        "{side}: {sent} readings at {rate}/s, {got} window outputs (of {windows} windows) counting {seen} readings, {cpu:.2} CPU s"
    );
    // Per CPU second of the readings the side actually averaged: a side that dropped input
    // (its source held back at QoS 0) is not credited with what it never processed.
    let per_cpu = float(seen) / cpu.max(0.01);
    result(&format!("window_{side}_msgs_per_cpu_s"), per_cpu.round());
    result(
        &format!("window_{side}_readings_lost"),
        float(sent.saturating_sub(seen)),
    );
    result(&format!("window_{side}_cpu_s"), cpu);
    result(&format!("window_{side}_windows"), float(got));
    result(&format!("window_{side}_readings_counted"), float(seen));
    Ok(per_cpu)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut weir = String::from("target/release/weir");
    let mut mosquitto = None;
    let (mut rate, mut seconds) = (5_000u64, 11u64);
    let mut bytewax = String::from("benches/peer/bytewax-window.sh");
    let mut node_red = String::from("benches/peer/node-red.sh");
    let mut only: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--weir" => weir = value()?,
            "--mosquitto" => mosquitto = Some(value()?),
            "--rate" => rate = value()?.parse()?,
            "--seconds" => seconds = value()?.parse()?,
            "--bytewax" => bytewax = value()?,
            "--node-red" => node_red = value()?,
            "--only" => only = Some(value()?),
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    let address = mosquitto.context("--mosquitto HOST:PORT is required")?;
    let login = Login::new(&address, None, "")?;
    let wanted = |side: &str| only.as_deref().is_none_or(|o| o == side);
    println!(
        "window-peers: mosquitto {address}, {rate} msg/s for {seconds} s, 200-byte readings, QoS 0"
    );
    let mut figures = std::collections::BTreeMap::new();

    if wanted("weir") {
        // A 10 s window at the offered rate holds every message of the window unsettled: more
        // than the default intake (1,024), so the deployment may hold that many (the tenant's
        // max_inflight_bytes still bounds the memory).
        let server = WeirServer::start_with(&weir, &["--max-in-flight", "65536"])?;
        let owner = server.bench_tenant(GRAPH).await?;
        for direction in ["in", "out"] {
            owner
                .create_endpoint(&CreateEndpoint {
                    name: format!("mosquitto-{direction}"),
                    kind: EndpointKind::Mqtt,
                    address: Some(address.clone()),
                    settings: [("qos".to_owned(), "0".to_owned())].into_iter().collect(),
                    secret: None,
                })
                .await?;
        }
        let (input, output) = ("bench/window/weir/in", "bench/window/weir/out");
        owner
            .deploy(&CreateDeployment {
                id: "window".to_owned(),
                graph: GraphRef {
                    name: "g".to_owned(),
                    version: "1".to_owned(),
                },
                configuration: Default::default(),
                source: Binding {
                    endpoint: "mosquitto-in".to_owned(),
                    topics: vec![input.to_owned()],
                },
                sink: Binding {
                    endpoint: "mosquitto-out".to_owned(),
                    topics: vec![output.to_owned()],
                },
                dead_letters: None,
                instances: 1,
                partition_key: None,
            })
            .await?;
        weir_bench::wait_until_connected(&owner, "window").await?;
        let per_cpu = run_side("weir", server.pid(), &login, input, output, rate, seconds).await?;
        figures.insert("weir", per_cpu);
    }
    for (side, script, ready) in [
        ("bytewax", bytewax.as_str(), "ready"),
        ("node_red", node_red.as_str(), "Connected to broker"),
    ] {
        if !wanted(side) {
            continue;
        }
        let (input, output) = (
            format!("bench/window/{side}/in"),
            format!("bench/window/{side}/out"),
        );
        let peer = start_peer(script, &login, &input, &output, ready)?;
        let per_cpu = run_side(side, peer.0.id(), &login, &input, &output, rate, seconds).await?;
        figures.insert(side, per_cpu);
        drop(peer);
    }
    if let Some(weir) = figures.get("weir") {
        for (side, per_cpu) in &figures {
            if *side != "weir" {
                result(&format!("window_ratio_{side}"), weir / per_cpu.max(1e-9));
            }
        }
    }
    Ok(())
}
