//! Density (issue 11, row 7): deployments of the sample graph on one `weir serve` until the
//! target count, memory or a quota stops it; the server's RSS per idle and per active
//! deployment, and where the memory went (`/proc/PID/smaps` by mapping).
//!
//! Each run starts `weir serve` on a fresh data directory with `--instance-slots` above the
//! target and operator instances dropped after 20 s without a call (`--instance-idle-ms`),
//! creates tenant
//! `bench` with quotas raised past the target, uploads the temperature module and the sample
//! graph, then:
//! 1. reads the server's RSS (`VmRSS`), deploys the sample graph `target` times (stopping at the
//!    first refusal, whose error is printed) and reads it again: KiB per active deployment
//!    (each ran `init` at deploy, so its operator instance is live);
//! 2. waits until the instances were idle 20 s and dropped, and reads it again: KiB per idle
//!    deployment (no instance);
//! 3. sends one waited ingest to every deployment (each re-creates its operator instance) to
//!    check that all of them answer, and prints the RSS after it (instances created early in
//!    this phase may be dropped again before its end, so it is no figure).
//!
//! Prints `RESULT key=value` per figure per run, `DESCRIBE key=text` once, and the largest
//! smaps deltas of each phase.
//!
//! ```sh
//! cargo run --release -p weir-bench --bin density -- target/release/weir [runs] [target]
//! ```

mod weir_server;

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::Context;
use weir_api::rest::IngestMessage;
use weir_server::{Server, deployment, describe, ms, result, smaps_rss, status_kib, tenant};

const SAMPLE_GRAPH: &str = include_str!("../../tests/golden/graph-simple.yaml");
const READING: &str = r#"{"temperature":{"value":212,"unit":"F"}}"#;
/// How long an operator instance lives without a call (`--instance-idle-ms`).
const INSTANCE_IDLE: std::time::Duration = std::time::Duration::from_secs(20);

/// Prints the mappings whose resident size grew most between `before` and `after`.
fn largest_growth(phase: &str, before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) {
    let mut deltas: Vec<(i64, &str)> = after
        .iter()
        .map(|(kind, kib)| {
            let was = before.get(kind).copied().unwrap_or(0);
            (
                i64::try_from(*kib).unwrap_or(i64::MAX) - i64::try_from(was).unwrap_or(0),
                kind.as_str(),
            )
        })
        .collect();
    deltas.sort_unstable_by_key(|(delta, _)| -delta.abs());
    let shown: Vec<String> = deltas
        .iter()
        .take(4)
        .map(|(delta, kind)| format!("{kind} {delta:+} KiB"))
        .collect();
    println!("smaps {phase}: {}", shown.join(", "));
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let weir = args
        .next()
        .unwrap_or_else(|| "target/release/weir".to_owned());
    let runs: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(3);
    let target: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1000);
    let slots = (target + 16).to_string();

    describe(
        "deployments",
        &format!(
            "deployments of the sample graph (temperature map) on one weir serve before the target of {target}, memory or a quota stopped it"
        ),
    );
    describe(
        "active_kib_per_deployment",
        "server VmRSS growth over deploying them, divided by their number (each ran init at deploy: one live operator instance each)",
    );
    describe(
        "idle_kib_per_deployment",
        "server VmRSS over the pre-deploy baseline once every instance was idle 20 s and dropped (deployments idle, no instance), divided by their number",
    );
    describe(
        "deploy_ms_per_deployment",
        "wall time of the deploy phase divided by the deployments made (sequential POST /v1/deployments)",
    );

    for run in 0..runs {
        let data = tempfile::tempdir()?;
        let server = Server::start(
            &weir,
            data.path(),
            &[
                "--instance-slots",
                &slots,
                "--instance-idle-ms",
                &INSTANCE_IDLE.as_millis().to_string(),
            ],
        )?;
        let pid = server.pid();
        let admin = server.admin()?;
        let limit = u32::try_from(target + 16)?;
        let client = tenant(
            &admin,
            "bench",
            &serde_json::json!({
                "api_requests_per_second": 100_000,
                "max_deployments": limit,
                "max_instances": limit,
            }),
        )
        .await?;
        client
            .push_module("temperature", "1.0.0", weir_guests::TEMPERATURE.bytes())
            .await?;
        client
            .push_graph("sample", "1.0.0", SAMPLE_GRAPH.to_owned())
            .await?;
        // One deployment first, so that one-time costs (first dataflow, first instance) are not
        // counted against the others.
        client
            .deploy(&deployment("warm", "sample", "1.0.0"))
            .await?;
        client
            .ingest("warm", &[IngestMessage::new(READING)], true)
            .await?;

        let base = status_kib(pid, "VmRSS")?;
        let base_threads = status_kib(pid, "Threads")?;
        let base_maps = smaps_rss(pid)?;
        let started = Instant::now();
        let mut made = 0usize;
        for i in 0..target {
            match client
                .deploy(&deployment(&format!("d{i}"), "sample", "1.0.0"))
                .await
            {
                Ok(_) => made += 1,
                Err(error) => {
                    println!("run {run}: deployment {i} refused: {error}");
                    break;
                }
            }
        }
        let deploy_time = started.elapsed();
        anyhow::ensure!(made > 0, "no deployment was made");
        let deployed = status_kib(pid, "VmRSS")?;
        let idle_threads = status_kib(pid, "Threads")?;
        let deployed_maps = smaps_rss(pid)?;
        #[expect(clippy::cast_precision_loss, reason = "KiB and counts for printing")]
        let per = |grown: u64| grown as f64 / made as f64;
        result("deployments", f64::from(u32::try_from(made)?));
        result(
            "active_kib_per_deployment",
            per(deployed.saturating_sub(base)),
        );
        #[expect(clippy::cast_precision_loss, reason = "a count for printing")]
        result("deploy_ms_per_deployment", ms(deploy_time) / made as f64);
        largest_growth("deployed", &base_maps, &deployed_maps);

        // The last instance was created when the deploy phase ended; give the idle sweep a
        // second more than the idle time.
        tokio::time::sleep(INSTANCE_IDLE + std::time::Duration::from_secs(1)).await;
        let idle = status_kib(pid, "VmRSS")?;
        let idle_maps = smaps_rss(pid)?;
        result("idle_kib_per_deployment", per(idle.saturating_sub(base)));
        largest_growth("idle (instances dropped)", &deployed_maps, &idle_maps);

        let mut failed = 0usize;
        for i in 0..made {
            let reply = client
                .ingest(&format!("d{i}"), &[IngestMessage::new(READING)], true)
                .await
                .with_context(|| format!("ingest into d{i}"))?;
            if reply.outputs.is_none_or(|o| o.len() != 1) {
                failed += 1;
            }
        }
        let active = status_kib(pid, "VmRSS")?;
        let active_maps = smaps_rss(pid)?;
        largest_growth("after one message each", &idle_maps, &active_maps);
        anyhow::ensure!(failed == 0, "{failed} deployments gave no output");
        println!(
            "run {run}: {made} deployments, RSS base {base} KiB, deployed {deployed} KiB, idle {idle} KiB, after one message each {active} KiB, {failed} without output; threads {base_threads} before, {idle_threads} after deploying"
        );
        drop(server);
    }
    Ok(())
}
