//! The dashboard with 500 deployments in one tenant (issue 15, row 12): measured, not asserted.
//!
//! Starts `weir serve` (instance slots and idle time raised past the count), creates tenant
//! `bench` with its quotas raised, deploys the sample graph `count` times, then runs
//! `tests/browser/dashboard.mjs bench` in Debian's headless Chromium (playwright-core and
//! axe-core from `target/browser`, installed by `scripts/setup`). The page measures:
//! - `dashboard_first_render_ms`: from navigation start (token already in the tab's session
//!   storage) until every deployment's row is in the list (rendered in chunks of 100 per
//!   animation frame);
//! - `dashboard_update_ms`: the median, over 10 events, of applying one event of the stream
//!   (every deployment's counters, one event each 1.5 s) to the page, while messages are
//!   ingested into the deployments one after another (so each event changes some rows).
//!
//! ```sh
//! cargo run --release -p weir-bench --bin dashboard -- target/release/weir [runs] [count]
//! ```

mod weir_server;

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Context;
use weir_api::rest::IngestMessage;
use weir_server::{Server, deployment, describe, tenant};

const SAMPLE_GRAPH: &str = include_str!("../../tests/golden/graph-simple.yaml");
const READING: &str = r#"{"temperature":{"value":212,"unit":"F"}}"#;

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let weir = args
        .next()
        .unwrap_or_else(|| "target/release/weir".to_owned());
    let runs: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1);
    let count: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(500);
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let chromium = std::env::var_os("WEIR_CHROMIUM")
        .map(PathBuf::from)
        .or_else(|| on_path("chromium"))
        .context("no chromium (WEIR_CHROMIUM or on PATH): run scripts/setup")?;
    let node = on_path("node").context("no node on PATH: run scripts/setup")?;
    let modules = std::env::var_os("WEIR_BROWSER_MODULES")
        .map_or_else(|| repo.join("target/browser/node_modules"), PathBuf::from);
    anyhow::ensure!(
        modules.join("playwright-core/package.json").is_file(),
        "no playwright-core in {}: run scripts/setup",
        modules.display()
    );
    describe(
        "dashboard_first_render_ms",
        &format!(
            "headless Chromium: navigation start to every row of {count} deployments in the list (token in session storage; rows in chunks of 100 per frame)"
        ),
    );
    describe(
        "dashboard_update_ms",
        &format!(
            "median time the page takes to apply one event of the stream carrying {count} deployments' counters (parse and DOM update), over 10 events, while messages are ingested into the deployments one after another"
        ),
    );
    let slots = (count + 16).to_string();
    for _ in 0..runs {
        let data = tempfile::tempdir()?;
        let server = Server::start(
            &weir,
            data.path(),
            &["--instance-slots", &slots, "--instance-idle-ms", "2000"],
        )?;
        let admin = server.admin()?;
        let limit = u32::try_from(count + 16)?;
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
        for i in 0..count {
            client
                .deploy(&deployment(&format!("d{i:04}"), "sample", "1.0.0"))
                .await?;
        }
        let token = client.token().context("token")?.to_owned();
        // Messages keep arriving while the page is measured: one at a time to each deployment
        // in turn, so every event carries changed counters for some of them.
        let feeder = client.clone();
        let feeding = tokio::spawn(async move {
            for i in (0..count).cycle() {
                let message = [IngestMessage::new(READING)];
                if feeder
                    .ingest(&format!("d{i:04}"), &message, false)
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        let mut child = Command::new(&node)
            .arg(repo.join("tests/browser/dashboard.mjs"))
            .arg("bench")
            .env("WEIR_URL", format!("http://{}", server.address))
            .env("WEIR_TOKEN_A", token)
            .env("WEIR_DEPLOYMENTS", count.to_string())
            .env("WEIR_CHROMIUM", &chromium)
            .env("WEIR_BROWSER_MODULES", &modules)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .context("node starts")?;
        let stdout = child.stdout.take().context("stdout")?;
        // The script's RESULT lines are this binary's.
        for line in BufReader::new(stdout).lines() {
            println!("{}", line?);
        }
        let status = tokio::task::spawn_blocking(move || child.wait()).await??;
        feeding.abort();
        anyhow::ensure!(status.success(), "the browser script failed: {status}");
        drop(server);
    }
    Ok(())
}
