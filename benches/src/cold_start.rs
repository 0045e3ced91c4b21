//! Cold start of `weir serve` (issue 11, row 6): module upload → compiled, deploy → first output
//! with the module compiled, and restart → all deployments running again, with the persistent
//! compile cache and without it (its artifact directory deleted before the restart).
//!
//! Each run starts the given `weir serve` on a fresh data directory, creates tenant `bench`,
//! then:
//! 1. uploads the temperature module (Rust) and, if given, a Python module (componentize-py),
//!    timing each `POST /v1/modules` (the upload is answered once the module is compiled);
//! 2. deploys the sample graph (temperature map) five times, timing `POST /v1/deployments` +
//!    the first `POST /ingest?wait=true` answered (median of the five), and the Python graph
//!    once;
//! 3. kills the server (SIGKILL) and starts it again on the same data: from spawn until its API
//!    listens and every deployment answers a waited ingest (checks the server compiled
//!    nothing);
//! 4. kills it, deletes `DATA/artifacts`, and measures the same restart again (every module is
//!    compiled: the "before the cache" figure).
//!
//! Prints `RESULT key=value` per figure per run and `DESCRIBE key=text` once.
//!
//! ```sh
//! cargo run --release -p weir-bench --bin cold-start -- target/release/weir [runs] [python.wasm]
//! ```

mod weir_server;

use std::time::{Duration, Instant};

use anyhow::Context;
use weir_api::client::Client;
use weir_api::rest::IngestMessage;
use weir_server::{Server, deployment, describe, map_graph, ms, quantile, result, tenant};

/// The sample graph: the temperature map (°F → °C).
const SAMPLE_GRAPH: &str = include_str!("../../tests/golden/graph-simple.yaml");
/// A reading the temperature map converts.
const READING: &str = r#"{"temperature":{"value":212,"unit":"F"}}"#;
/// Deployments of the sample graph per run.
const SAMPLE_DEPLOYMENTS: usize = 5;

/// Deploys `id` and times until its first waited ingest is answered with an output.
async fn deploy_to_first_output(
    client: &Client,
    id: &str,
    (graph, version): (&str, &str),
    payload: &str,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    client.deploy(&deployment(id, graph, version)).await?;
    answers(client, id, payload).await?;
    Ok(started.elapsed())
}

/// One waited ingest into `id` comes back with one output.
async fn answers(client: &Client, id: &str, payload: &str) -> anyhow::Result<()> {
    let reply = client
        .ingest(id, &[IngestMessage::new(payload)], true)
        .await?;
    anyhow::ensure!(
        reply.outputs.is_some_and(|o| o.len() == 1),
        "deployment {id} gave no output"
    );
    Ok(())
}

/// Starts the server on `data` again and times until it listens and every deployment answers.
async fn restart(
    weir: &str,
    data: &std::path::Path,
    token: &str,
    deployments: &[(String, &str)],
) -> anyhow::Result<(Duration, Server)> {
    let started = Instant::now();
    let server = Server::start(weir, data, &[])?;
    let client = server.client(token)?;
    for (id, payload) in deployments {
        // A deployment the boot round could not start yet is started by the reconcile loop
        // (`unavailable` until then): the time runs until it answers, within a minute.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match answers(&client, id, payload).await {
                Ok(()) => break,
                Err(error)
                    if Instant::now() < deadline
                        && error
                            .downcast_ref::<weir_api::client::ClientError>()
                            .and_then(weir_api::client::ClientError::code)
                            == Some("unavailable") =>
                {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(error) => return Err(error),
            }
        }
    }
    Ok((started.elapsed(), server))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let weir = args
        .next()
        .unwrap_or_else(|| "target/release/weir".to_owned());
    let runs: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(3);
    let python = args
        .next()
        .map(std::fs::read)
        .transpose()
        .context("cannot read the Python module")?;
    let rust = weir_guests::TEMPERATURE.bytes();

    describe(
        "upload_compiled_ms_rust",
        &format!(
            "POST /v1/modules of the temperature module ({} bytes, Rust) until answered (validated and compiled), fresh server",
            rust.len()
        ),
    );
    if let Some(python) = &python {
        describe(
            "upload_compiled_ms_python",
            &format!(
                "POST /v1/modules of a componentize-py map module ({} bytes) until answered (validated and compiled), fresh server",
                python.len()
            ),
        );
        describe(
            "deploy_first_output_ms_python",
            "POST /v1/deployments of a one-map graph of the Python module (compiled at upload) until the first POST /ingest?wait=true is answered",
        );
    }
    describe(
        "deploy_first_output_ms",
        &format!(
            "POST /v1/deployments of the sample graph (temperature map, compiled at upload) until the first POST /ingest?wait=true is answered; median of {SAMPLE_DEPLOYMENTS} deployments"
        ),
    );
    let modules = if python.is_some() {
        "temperature and Python"
    } else {
        "temperature"
    };
    describe(
        "restart_running_ms",
        &format!(
            "weir serve killed and started again on its data ({} deployments, {modules} modules): spawn until every deployment answers a waited ingest; compile cache on disk (the server reports 0 compiled)",
            SAMPLE_DEPLOYMENTS + usize::from(python.is_some())
        ),
    );
    describe(
        "restart_running_ms_no_cache",
        "the same restart with DATA/artifacts deleted first: every module compiled again (as before the persistent cache)",
    );

    for run in 0..runs {
        let data = tempfile::tempdir()?;
        let server = Server::start(&weir, data.path(), &[])?;
        let admin = server.admin()?;
        let client = tenant(
            &admin,
            "bench",
            &serde_json::json!({
                "api_requests_per_second": 100_000,
                "max_deployments": 100,
                "max_instances": 100,
            }),
        )
        .await?;
        let token = client.token().context("token")?.to_owned();

        let started = Instant::now();
        client
            .push_module("temperature", "1.0.0", rust.clone())
            .await?;
        result("upload_compiled_ms_rust", ms(started.elapsed()));
        if let Some(python) = &python {
            let started = Instant::now();
            client.push_module("pymap", "1.0.0", python.clone()).await?;
            result("upload_compiled_ms_python", ms(started.elapsed()));
            client
                .push_graph("py", "1", map_graph("py", "pymap"))
                .await?;
        }
        client
            .push_graph("sample", "1.0.0", SAMPLE_GRAPH.to_owned())
            .await?;

        let mut deployments = Vec::new();
        let mut times = Vec::new();
        for i in 0..SAMPLE_DEPLOYMENTS {
            let id = format!("sample{i}");
            times.push(ms(deploy_to_first_output(
                &client,
                &id,
                ("sample", "1.0.0"),
                READING,
            )
            .await?));
            deployments.push((id, READING));
        }
        times.sort_by(f64::total_cmp);
        result("deploy_first_output_ms", quantile(&times, 0.5));
        if python.is_some() {
            let took = deploy_to_first_output(&client, "python", ("py", "1"), "{\"x\":1}").await?;
            result("deploy_first_output_ms_python", ms(took));
            deployments.push(("python".to_owned(), "{\"x\":1}"));
        }
        drop(server);

        let (took, server) = restart(&weir, data.path(), &token, &deployments).await?;
        anyhow::ensure!(
            server.compile_line().starts_with("modules: 0 compiled"),
            "the restart compiled: {}",
            server.compile_line()
        );
        result("restart_running_ms", ms(took));
        drop(server);

        std::fs::remove_dir_all(data.path().join("artifacts"))?;
        let (took, server) = restart(&weir, data.path(), &token, &deployments).await?;
        result("restart_running_ms_no_cache", ms(took));
        println!("run {run}: {}", server.compile_line());
        drop(server);
    }
    Ok(())
}
