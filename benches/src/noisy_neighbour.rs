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

mod weir_server;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use weir_api::client::Client;
use weir_api::rest::IngestMessage;
use weir_server::{Server, deployment, map_graph, tenant};

/// The noisy tenant's CPU rate: about a quarter of this 2-core machine's wasm throughput.
const NOISY_FUEL_PER_SECOND: u64 = 2_000_000_000;

/// Creates tenant `id` with `quotas`, pushes `module` and the one-map graph `g` running it.
async fn tenant_with_module(
    admin: &Client,
    id: &str,
    quotas: serde_json::Value,
    module: &str,
    bytes: Vec<u8>,
) -> anyhow::Result<Client> {
    let client = tenant(admin, id, &quotas).await?;
    client.push_module(module, "1.0.0", bytes).await?;
    client.push_graph("g", "1", map_graph("g", module)).await?;
    Ok(client)
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
    let server = Server::start(weir, data.path(), &[])?;
    let admin = server.admin()?;
    let roomy = serde_json::json!({"api_requests_per_second": 100_000, "max_deployments": 100});
    let quiet =
        tenant_with_module(&admin, "quiet", roomy, "echo", weir_guests::ECHO.bytes()).await?;
    let noisy_quotas = serde_json::json!({
        "api_requests_per_second": 100_000,
        "max_deployments": 100,
        "fuel_per_second": NOISY_FUEL_PER_SECOND,
    });
    let noisy = tenant_with_module(
        &admin,
        "noisy",
        noisy_quotas,
        "spin",
        weir_guests::SPIN_LOOP.bytes(),
    )
    .await?;
    quiet.deploy(&deployment("q", "g", "1")).await?;
    for i in 0..4 {
        noisy
            .deploy(&deployment(&format!("spin{i}"), "g", "1"))
            .await?;
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
