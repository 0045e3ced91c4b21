//! Row 3 of the benchmark report (issue 11): MQTT → weir → MQTT against the broker's own relay
//! ceiling, on weir's embedded broker and on Mosquitto, at QoS 0 and QoS 1.
//!
//! Starts the given `weir serve` (release) binary on loopback ports it picks, and sets up over
//! its API (the typed client) a tenant `bench` with the `temperature` module, the graph
//! `source → map (°F→°C) → filter (range) → sink`, a device login for the embedded broker,
//! one `mqtt` endpoint per broker, QoS and direction, and one deployment per broker and QoS
//! (`bench/in/<case>` → `bench/out/<case>`). Each case is measured on two paths with the same
//! rumqttc (0.25, MQTT v5) clients, publisher and subscriber in this process:
//!
//! - `relay`: a plain rumqttc subscriber on the input topic that republishes each message
//!   (payload and user properties) to the output topic at the same QoS: the broker's ceiling;
//! - `weir`: the deployment between the two topics.
//!
//! Every message is a 200-byte JSON reading in °F, `{"temperature":{"value":…,"unit":"F",
//! "sent":<ns>,"seq":<n>,"pad":"…"}}`; the send time also travels as user property `t`
//! (weir's map re-serialises the payload and drops the extra fields; user properties pass).
//! Figures:
//!
//! - saturation: `MESSAGES` messages with at most `WINDOW` unanswered at any time, msgs/s from
//!   the first send to the last receipt;
//! - latency at a fixed offered load (1,000 and 10,000 msg/s for `SECONDS` s): a publisher
//!   paced on a 1 ms tick, each message stamped with its *scheduled* send time (so a stalled
//!   publisher does not hide queueing), the subscriber taking receipt time − scheduled time;
//!   p50, p99, p99.9 in ms, and messages lost.
//!
//! Prints `RESULT mqtt_<broker>_q<qos>_<path>_<figure>=<value>` lines and the ratios
//! `weir / relay` of the same run.
//!
//! ```sh
//! target/release/mqtt-e2e --weir target/release/weir --mosquitto 127.0.0.1:PORT [--messages 20000] [--seconds 2]
//! ```

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::{AsyncClient, Event};
use tokio::sync::Notify;
use weir_api::rest::{Binding, CreateDeployment, CreateEndpoint, EndpointKind, GraphRef};
use weir_bench::mqtt::{
    Login, PAYLOAD_BYTES, base, drive, now_ns, paced, payload, properties, qos,
};
use weir_bench::{WeirServer, float, percentile, result};

/// The graph every deployment runs: no window, two wasm calls per message.
const GRAPH: &str = "metadata: {$schema: s, name: g, version: '1'}\nmoduleRequirements: {apiVersion: '1.1.0', runtimeVersion: '1.1.0'}\noperations:\n  - {operationType: source, name: source}\n  - {operationType: map, name: map, module: 'temperature:1.0.0'}\n  - {operationType: filter, name: filter, module: 'temperature:1.0.0'}\n  - {operationType: sink, name: sink}\nconnections:\n  - {from: {name: source}, to: {name: map}}\n  - {from: {name: map}, to: {name: filter}}\n  - {from: {name: filter}, to: {name: sink}}\n";

/// Unanswered messages at most during the saturation run.
const WINDOW: u64 = 1000;

/// What the subscriber has seen.
#[derive(Debug, Default)]
struct Received {
    count: AtomicU64,
    latencies_ns: Mutex<Vec<u64>>,
    progress: Notify,
}

/// Subscribes to `topic` and counts arrivals, recording receipt − `t` of each.
async fn subscriber(
    login: &Login,
    name: &str,
    topic: &str,
    level: u8,
) -> anyhow::Result<(Arc<Received>, AsyncClient, tokio::task::JoinHandle<()>)> {
    let (client, mut events) = login.subscribe(name, topic, qos(level)).await?;
    let received = Arc::new(Received::default());
    let seen = received.clone();
    let task = tokio::spawn(async move {
        while let Ok(event) = events.poll().await {
            if let Event::Incoming(Packet::Publish(publish)) = event {
                let at = now_ns();
                let sent = publish
                    .properties
                    .as_ref()
                    .and_then(|p| p.user_properties.iter().find(|(k, _)| k == "t"))
                    .and_then(|(_, v)| v.parse::<u64>().ok());
                if let Some(sent) = sent
                    && let Ok(mut latencies) = seen.latencies_ns.lock()
                {
                    latencies.push(at.saturating_sub(sent));
                }
                seen.count.fetch_add(1, Ordering::Relaxed);
                seen.progress.notify_one();
            }
        }
    });
    Ok((received, client, task))
}

/// The relay: a plain subscriber on `from` that republishes every message to `to`.
async fn relay(
    login: &Login,
    case: &str,
    from: &str,
    to: &str,
    level: u8,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let (out, out_events) = login.connect(&format!("relay-out-{case}")).await?;
    let out_task = drive(out_events);
    let (in_client, mut events) = login
        .subscribe(&format!("relay-in-{case}"), from, qos(level))
        .await?;
    let to = to.to_owned();
    let in_task = tokio::spawn(async move {
        let _keep = in_client;
        while let Ok(event) = events.poll().await {
            if let Event::Incoming(Packet::Publish(publish)) = event {
                let properties = publish.properties.unwrap_or_default();
                let user_properties = properties.user_properties;
                if out
                    .publish_with_properties(
                        to.clone(),
                        qos(level),
                        false,
                        publish.payload,
                        PublishProperties {
                            user_properties,
                            ..PublishProperties::default()
                        },
                    )
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    });
    Ok(vec![out_task, in_task])
}

/// Waits until `received` reaches `target` or makes no progress for `idle`.
async fn wait_for(received: &Received, target: u64, idle: Duration) -> u64 {
    loop {
        let now = received.count.load(Ordering::Relaxed);
        if now >= target {
            return now;
        }
        if tokio::time::timeout(idle, received.progress.notified())
            .await
            .is_err()
            && received.count.load(Ordering::Relaxed) == now
        {
            return now;
        }
    }
}

/// Figures of one path of one case.
struct Figures {
    saturation: f64,
    /// Per offered load: (p50, p99, p99.9 in ms, lost).
    paced: Vec<(u64, [f64; 3], u64)>,
}

/// Measures one path: the publisher on `input`, the subscriber on `output`.
async fn measure(
    login: &Login,
    name: &str,
    input: &str,
    output: &str,
    level: u8,
    messages: u64,
    seconds: u64,
) -> anyhow::Result<Figures> {
    let (publisher, publisher_events) = login.connect(&format!("pub-{name}")).await?;
    let publisher_task = drive(publisher_events);
    // Warm up: a first few messages through (instances, the sink's connection).
    let (received, _sub, sub_task) =
        subscriber(login, &format!("sub-{name}-w"), output, level).await?;
    for seq in 0..100 {
        let sent = now_ns();
        publisher
            .publish_with_properties(
                input,
                qos(level),
                false,
                payload(sent, seq),
                properties(sent),
            )
            .await?;
    }
    let warm = wait_for(&received, 100, Duration::from_secs(10)).await;
    anyhow::ensure!(warm > 0, "{name}: nothing came through in the warm-up");
    tokio::time::sleep(Duration::from_millis(200)).await;
    sub_task.abort();

    // Saturation, with at most WINDOW messages unanswered.
    let (received, _sub, sub_task) =
        subscriber(login, &format!("sub-{name}-s"), output, level).await?;
    let started = Instant::now();
    let mut sent_count = 0u64;
    let mut stalled = false;
    while sent_count < messages {
        let got = received.count.load(Ordering::Relaxed);
        if sent_count.saturating_sub(got) >= WINDOW {
            if tokio::time::timeout(Duration::from_secs(3), received.progress.notified())
                .await
                .is_err()
                && received.count.load(Ordering::Relaxed) == got
            {
                stalled = true;
                break;
            }
            continue;
        }
        let sent = now_ns();
        publisher
            .publish_with_properties(
                input,
                qos(level),
                false,
                payload(sent, sent_count),
                properties(sent),
            )
            .await?;
        sent_count += 1;
    }
    let got = if stalled {
        received.count.load(Ordering::Relaxed)
    } else {
        wait_for(&received, messages, Duration::from_secs(3)).await
    };
    let took = started.elapsed();
    sub_task.abort();
    let saturation = float(got) / took.as_secs_f64();
    if got < messages {
        println!("{name}: saturation run: {got} of {messages} messages arrived");
    }

    let mut loads = Vec::new();
    for rate in [1_000u64, 10_000] {
        let (received, _sub, sub_task) =
            subscriber(login, &format!("sub-{name}-{rate}"), output, level).await?;
        let total = paced(&publisher, input, level, rate, seconds).await?;
        let got = wait_for(&received, total, Duration::from_secs(3)).await;
        sub_task.abort();
        let mut latencies = received
            .latencies_ns
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .clone();
        latencies.sort_unstable();
        let ms = |p: f64| float(percentile(&latencies, p)) / 1e6;
        loads.push((
            rate,
            [ms(0.5), ms(0.99), ms(0.999)],
            total.saturating_sub(got),
        ));
    }
    publisher_task.abort();
    Ok(Figures {
        saturation,
        paced: loads,
    })
}

fn report(prefix: &str, figures: &Figures) {
    result(
        &format!("{prefix}_sat_msgs_per_s"),
        figures.saturation.round(),
    );
    for (rate, [p50, p99, p999], lost) in &figures.paced {
        let load = rate / 1000;
        result(&format!("{prefix}_{load}k_p50_ms"), *p50);
        result(&format!("{prefix}_{load}k_p99_ms"), *p99);
        result(&format!("{prefix}_{load}k_p999_ms"), *p999);
        result(&format!("{prefix}_{load}k_lost"), float(*lost));
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let (mut weir, mut mosquitto) = (String::from("target/release/weir"), None);
    let (mut messages, mut seconds) = (20_000u64, 2u64);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--weir" => weir = value()?,
            "--mosquitto" => mosquitto = Some(value()?),
            "--messages" => messages = value()?.parse()?,
            "--seconds" => seconds = value()?.parse()?,
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    let mosquitto = mosquitto.context("--mosquitto HOST:PORT is required")?;
    base();
    let server = WeirServer::start(&weir)?;
    let owner = server.bench_tenant(GRAPH).await?;
    let device = owner.create_device("bench").await?;
    let embedded = Login::new(
        &server.mqtt,
        Some((device.username.clone(), device.password.clone())),
        "@bench",
    )?;
    let external = Login::new(&mosquitto, None, "")?;

    println!(
        "mqtt-e2e: weir {weir} (embedded broker {}), mosquitto {mosquitto}; {PAYLOAD_BYTES}-byte JSON; saturation {messages} messages (window {WINDOW}); paced 1k and 10k msg/s for {seconds} s",
        server.mqtt
    );
    for (broker, login, address) in [
        ("embedded", &embedded, server.mqtt.as_str()),
        ("mosquitto", &external, mosquitto.as_str()),
    ] {
        for level in [0u8, 1] {
            let case = format!("{broker}-q{level}");
            let endpoint = |direction: &str| {
                let mut settings = std::collections::BTreeMap::new();
                settings.insert("qos".to_owned(), level.to_string());
                let mut secret = None;
                if let Some((user, password)) = &login.credentials {
                    settings.insert("username".to_owned(), user.clone());
                    settings.insert(
                        "client_id".to_owned(),
                        format!("weir-{direction}-{case}{}", login.id_suffix),
                    );
                    secret = Some(password.clone());
                }
                CreateEndpoint {
                    name: format!("{case}-{direction}"),
                    kind: EndpointKind::Mqtt,
                    address: Some(address.to_owned()),
                    settings,
                    secret,
                }
            };
            owner.create_endpoint(&endpoint("in")).await?;
            owner.create_endpoint(&endpoint("out")).await?;
            let (input, output) = (format!("bench/in/{case}"), format!("bench/out/{case}"));
            owner
                .deploy(&CreateDeployment {
                    id: case.clone(),
                    graph: GraphRef {
                        name: "g".to_owned(),
                        version: "1".to_owned(),
                    },
                    configuration: Default::default(),
                    source: Binding {
                        endpoint: format!("{case}-in"),
                        topics: vec![input.clone()],
                    },
                    sink: Binding {
                        endpoint: format!("{case}-out"),
                        topics: vec![output.clone()],
                    },
                    dead_letters: None,
                    instances: 1,
                    partition_key: None,
                })
                .await?;
            weir_bench::wait_until_connected(&owner, &case).await?;

            let relay_in = format!("bench/relay-in/{case}");
            let relay_out = format!("bench/relay-out/{case}");
            let tasks = relay(login, &case, &relay_in, &relay_out, level).await?;
            let relayed = measure(
                login,
                &format!("relay-{case}"),
                &relay_in,
                &relay_out,
                level,
                messages,
                seconds,
            )
            .await?;
            for task in tasks {
                task.abort();
            }
            let through = measure(
                login,
                &format!("weir-{case}"),
                &input,
                &output,
                level,
                messages,
                seconds,
            )
            .await?;
            owner.pause(&case).await?;
            let prefix = format!("mqtt_{broker}_q{level}");
            report(&format!("{prefix}_relay"), &relayed);
            report(&format!("{prefix}_weir"), &through);
            result(
                &format!("{prefix}_sat_ratio"),
                through.saturation / relayed.saturation.max(1e-9),
            );
        }
    }
    drop(server);
    Ok(())
}
