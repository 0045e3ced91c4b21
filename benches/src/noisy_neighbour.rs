//! A quiet tenant's request/response latency, alone and beside a noisy neighbour that burns its
//! whole fuel budget (issue 8, point 4).
//!
//! Starts the given `weir serve` binary on a fresh data directory, creates tenant `quiet` (the
//! echo module, one deployment) and tenant `noisy` (the spin-loop module, four deployments,
//! `fuel_per_second` = 2·10⁹, default `fuel_per_message` 10⁹: every `spin` message burns its
//! whole per-message budget), then times `POST /ingest?wait=true` of the quiet tenant: first
//! alone, then while four tasks keep the noisy deployments fed. Prints p50/p99/max of each
//! phase and their ratio. Quotas are set with partial documents, so an older server that
//! predates a quota field runs the same bench (that is how the "before" figure is taken).
//! Repeats the whole (fresh server each time) `runs` times and prints `RESULT key=value` per
//! figure per run, `DESCRIBE key=text` once (issue 11, row 8).
//!
//! ```sh
//! cargo build -p weir && cargo run -p weir-bench --bin noisy-neighbour -- target/debug/weir [requests] [runs]
//! ```

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use weir_api::client::{Client, HttpMethod};
use weir_api::rest::{CreateDeployment, CreateTenant, GraphRef, IngestMessage, MintToken};
use weir_api::tenancy::Role;

/// The noisy tenant's CPU rate: about a quarter of this 2-core machine's wasm throughput.
const NOISY_FUEL_PER_SECOND: u64 = 2_000_000_000;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _killed = self.0.kill();
        let _waited = self.0.wait();
    }
}

fn graph(module: &str) -> String {
    format!(
        "metadata: {{$schema: s, name: g, version: '1'}}\nmoduleRequirements: {{apiVersion: '1.1.0', runtimeVersion: '1.1.0'}}\noperations:\n  - {{operationType: source, name: source}}\n  - {{operationType: map, name: map, module: '{module}:1.0.0'}}\n  - {{operationType: sink, name: sink}}\nconnections:\n  - {{from: {{name: source}}, to: {{name: map}}}}\n  - {{from: {{name: map}}, to: {{name: sink}}}}\n"
    )
}

async fn tenant(
    admin: &Client,
    id: &str,
    quotas: serde_json::Value,
    module: &str,
    bytes: Vec<u8>,
) -> anyhow::Result<Client> {
    admin
        .create_tenant(&CreateTenant {
            id: id.to_owned(),
            display_name: None,
            quotas: None,
        })
        .await?;
    let (status, body) = admin
        .raw(
            HttpMethod::PUT,
            &format!("/v1/tenants/{id}/quotas"),
            Some("application/json"),
            serde_json::to_vec(&quotas)?,
        )
        .await?;
    anyhow::ensure!(
        status.is_success(),
        "quotas: {}",
        String::from_utf8_lossy(&body)
    );
    let minted = admin
        .mint_token(&MintToken {
            subject: format!("{id}-bench"),
            role: Role::Developer,
            ttl_seconds: None,
            tenant: Some(id.to_owned()),
        })
        .await?;
    let client = admin.with_token(minted.token.context("token text")?);
    client.push_module(module, "1.0.0", bytes).await?;
    client.push_graph("g", "1", graph(module)).await?;
    Ok(client)
}

fn deployment(id: &str) -> CreateDeployment {
    CreateDeployment {
        id: id.to_owned(),
        graph: GraphRef {
            name: "g".to_owned(),
            version: "1".to_owned(),
        },
        configuration: Default::default(),
        source: Default::default(),
        sink: Default::default(),
        dead_letters: None,
    }
}

/// Times `requests` waited ingests; the latencies in µs, sorted, and the requests per second.
async fn measure(quiet: &Client, requests: usize) -> anyhow::Result<(Vec<u64>, f64)> {
    let phase = Instant::now();
    let mut latencies = Vec::with_capacity(requests);
    for i in 0..requests {
        let started = Instant::now();
        let reply = quiet
            .ingest("q", &[IngestMessage::new(format!("reading {i}"))], true)
            .await?;
        if reply.outputs.is_none_or(|o| o.len() != 1) {
            let letters = quiet.dead_letters(Some("q")).await?;
            anyhow::bail!(
                "the quiet tenant's output went missing after {:?}; its dead letters: {letters:?}",
                started.elapsed()
            );
        }
        latencies.push(u64::try_from(started.elapsed().as_micros())?);
    }
    latencies.sort_unstable();
    #[expect(clippy::cast_precision_loss, reason = "a count for printing")]
    let rate = requests as f64 / phase.elapsed().as_secs_f64();
    Ok((latencies, rate))
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "an index into a short, sorted sample"
    )]
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    #[expect(clippy::cast_precision_loss, reason = "µs to ms for printing")]
    let ms = sorted.get(index).copied().unwrap_or_default() as f64 / 1000.0;
    ms
}

fn report(phase: &str, key: &str, (sorted, rate): &(Vec<u64>, f64)) -> f64 {
    let p99 = percentile(sorted, 0.99);
    println!("RESULT {key}_p50_ms={:.3}", percentile(sorted, 0.5));
    println!("RESULT {key}_p99_ms={p99:.3}");
    println!("RESULT {key}_requests_per_s={rate:.1}");
    println!(
        "{phase:<28} n={:<5} p50={:>7.2} ms  p99={:>7.2} ms  max={:>7.2} ms",
        sorted.len(),
        percentile(sorted, 0.5),
        p99,
        percentile(sorted, 1.0)
    );
    p99
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let weir = args
        .next()
        .unwrap_or_else(|| "target/debug/weir".to_owned());
    let requests: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(400);
    let runs: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1);
    for (key, what) in [
        ("quiet_alone", "alone"),
        ("quiet_beside_noisy", "beside the noisy tenant"),
    ] {
        for (figure, unit) in [
            ("p50_ms", "p50 latency"),
            ("p99_ms", "p99 latency"),
            (
                "requests_per_s",
                "requests per second (one client, sequential)",
            ),
        ] {
            println!(
                "DESCRIBE {key}_{figure}=quiet tenant {what}: {unit} of {requests} POST /ingest?wait=true of one message each to one echo deployment; noisy: 4 spin-loop deployments fed without pause, fuel_per_second {NOISY_FUEL_PER_SECOND}"
            );
        }
    }
    println!(
        "DESCRIBE quiet_p99_ratio=quiet tenant's p99 beside the noisy tenant / alone, same run (target <= 1.10)"
    );
    for _ in 0..runs {
        run(&weir, requests).await?;
    }
    Ok(())
}

async fn run(weir: &str, requests: usize) -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let mut child = Command::new(weir)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--mqtt-listen",
            "127.0.0.1:0",
            "--data",
        ])
        .arg(data.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {weir}"))?;
    let stdout = child.stdout.take().context("stdout")?;
    let server = Server(child);
    let (mut address, mut admin_token) = (String::new(), String::new());
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        if let Some(token) = line
            .split("admin token (shown once, valid 365 days): ")
            .nth(1)
        {
            admin_token = token.trim().to_owned();
        }
        if let Some(listening) = line.strip_prefix("weir listening on http://") {
            address = listening.trim().to_owned();
            break;
        }
    }
    let admin = Client::new(&format!("http://{address}"), Some(admin_token))?;
    let roomy = serde_json::json!({"api_requests_per_second": 100_000, "max_deployments": 100});
    let quiet = tenant(&admin, "quiet", roomy, "echo", weir_guests::ECHO.bytes()).await?;
    let noisy_quotas = serde_json::json!({
        "api_requests_per_second": 100_000,
        "max_deployments": 100,
        "fuel_per_second": NOISY_FUEL_PER_SECOND,
    });
    let noisy = tenant(
        &admin,
        "noisy",
        noisy_quotas,
        "spin",
        weir_guests::SPIN_LOOP.bytes(),
    )
    .await?;
    quiet.deploy(&deployment("q")).await?;
    for i in 0..4 {
        noisy.deploy(&deployment(&format!("spin{i}"))).await?;
    }

    println!("weir: {weir}; quiet: echo, wait=true, one message per request");
    println!(
        "noisy: 4 spin-loop deployments fed without pause, fuel_per_second {NOISY_FUEL_PER_SECOND}, fuel_per_message 10^9"
    );
    // Warm up (first instantiations), then measure alone.
    measure(&quiet, 20).await?;
    let alone = report(
        "quiet alone",
        "quiet_alone",
        &measure(&quiet, requests).await?,
    );

    let stop = Arc::new(AtomicBool::new(false));
    let fed = Arc::new(AtomicU64::new(0));
    let mut feeders = Vec::new();
    for i in 0..4 {
        let (noisy, stop, fed) = (noisy.clone(), stop.clone(), fed.clone());
        feeders.push(tokio::spawn(async move {
            let spins: Vec<IngestMessage> = (0..8).map(|_| IngestMessage::new("spin")).collect();
            while !stop.load(Ordering::Relaxed) {
                match noisy.ingest(&format!("spin{i}"), &spins, false).await {
                    Ok(_) => {
                        fed.fetch_add(8, Ordering::Relaxed);
                    }
                    // Held back (intake full or over the rate): the neighbour keeps pushing.
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }));
    }
    // Let the neighbour's queues fill before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let beside = report(
        "quiet beside noisy",
        "quiet_beside_noisy",
        &measure(&quiet, requests).await?,
    );
    stop.store(true, Ordering::Relaxed);
    for feeder in feeders {
        feeder.await?;
    }
    let usage = noisy.usage().await?;
    println!(
        "noisy: {} spin messages taken, {} fuel burned",
        fed.load(Ordering::Relaxed),
        usage.fuel
    );
    println!(
        "p99 beside noisy / alone: {:.2}x",
        beside / alone.max(0.001)
    );
    println!("RESULT quiet_p99_ratio={:.3}", beside / alone.max(0.001));
    drop(server);
    Ok(())
}
