//! `--config FILE` of `weir serve` and `weir executor`, on the real binary: the file's keys
//! take effect, an environment variable overrides the file, a flag overrides both, every
//! problem of a bad file is reported at once and nothing starts.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

mod common;

/// A `weir` process of the test's, killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

/// `weir ARGS` with `env` (and no `WEIR_` variable of the test runner's own that names a key),
/// its stdout lines up to and including the first one containing `until`.
fn start_until(args: &[&str], env: &[(&str, &str)], until: &str) -> (Running, Vec<String>) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_weir"));
    for (name, _) in std::env::vars() {
        if name.starts_with("WEIR_") && !name.starts_with("WEIR_TEST") {
            command.env_remove(name);
        }
    }
    let child = command
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut running = Running(child);
    let stdout = running.0.stdout.take().unwrap();
    let mut lines = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        let found = line.contains(until);
        lines.push(line);
        if found {
            return (running, lines);
        }
    }
    panic!("weir {args:?} ended before printing {until:?}: {lines:?}");
}

fn write(path: &Path, text: &str) -> String {
    std::fs::write(path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn serve_takes_the_file_then_the_environment_then_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let at = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let config = write(
        &dir.path().join("weir.toml"),
        &format!(
            "[serve]\ndata = \"{}\"\nlisten = \"127.0.0.1:0\"\nmqtt_listen = \"127.0.0.1:0\"\n",
            at("from-file")
        ),
    );
    let listening = "weir listening on http://";

    // The file's data directory (and its listen addresses: it listens at all).
    let (_server, lines) = start_until(&["serve", "--config", &config], &[], listening);
    assert!(
        lines.contains(&format!("first start: data in {}", at("from-file"))),
        "{lines:?}"
    );
    drop(_server);

    // The environment over the file.
    let (_server, lines) = start_until(
        &["serve", "--config", &config],
        &[("WEIR_DATA", &at("from-env"))],
        listening,
    );
    assert!(
        lines.contains(&format!("first start: data in {}", at("from-env"))),
        "{lines:?}"
    );
    drop(_server);

    // The flag over both.
    let (_server, lines) = start_until(
        &["serve", "--config", &config, "--data", &at("from-flag")],
        &[("WEIR_DATA", &at("from-env"))],
        listening,
    );
    assert!(
        lines.contains(&format!("first start: data in {}", at("from-flag"))),
        "{lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn one_file_configures_the_control_plane_and_its_executors() {
    let dir = tempfile::tempdir().unwrap();
    let token = "0123456789abcdef".repeat(4);
    let data = dir.path().join("data");
    // The join token at the top: a key of both commands, so one value for both.
    let serve_part = format!(
        "executor_token = \"{token}\"\n\n[serve]\ndata = \"{}\"\nlisten = \"127.0.0.1:0\"\n\
         mqtt_listen = \"127.0.0.1:0\"\n",
        data.display()
    );
    let path = dir.path().join("weir.toml");
    let config = write(&path, &serve_part);
    let (_server, lines) = start_until(
        &["serve", "--config", &config],
        &[],
        "weir listening on http://",
    );
    let address = lines
        .iter()
        .find_map(|l| l.strip_prefix("weir listening on http://"))
        .unwrap()
        .to_owned();
    let admin_token = lines
        .iter()
        .find_map(|l| l.strip_prefix("admin token (shown once, valid 365 days): "))
        .unwrap()
        .to_owned();
    // The server kept the file's token, not one of its own.
    assert!(!data.join("executor-token").exists());
    write(
        &path,
        &format!(
            "{serve_part}\n[executor]\njoin = \"http://{address}\"\nid = \"from-file\"\n\
             workers = 3\nlabel = [\"zone=a\", \"gpu\"]\n"
        ),
    );
    let joined = "joined http://";
    let (_file, lines) = start_until(&["executor", "--config", &config], &[], joined);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("executor from-file joined")),
        "{lines:?}"
    );
    let (_env, lines) = start_until(
        &["executor", "--config", &config],
        &[("WEIR_ID", "from-env"), ("WEIR_WORKERS", "2")],
        joined,
    );
    assert!(
        lines.iter().any(|l| l.contains("executor from-env joined")),
        "{lines:?}"
    );
    let (_flag, lines) = start_until(
        &[
            "executor",
            "--config",
            &config,
            "--id",
            "from-flag",
            "--workers",
            "1",
        ],
        &[("WEIR_ID", "from-env-2"), ("WEIR_WORKERS", "2")],
        joined,
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("executor from-flag joined")),
        "{lines:?}"
    );

    let admin =
        weir_api::client::Client::new(&format!("http://{address}"), Some(admin_token)).unwrap();
    let mut executors: Vec<(String, u64)> = admin
        .executors()
        .await
        .unwrap()
        .into_iter()
        // The control plane's in-process executor is listed too.
        .filter(|e| e.id != "local")
        .map(|e| (e.id, e.workers))
        .collect();
    executors.sort();
    assert_eq!(
        executors,
        [
            ("from-env".to_owned(), 2),
            ("from-file".to_owned(), 3),
            ("from-flag".to_owned(), 1)
        ]
    );
}

#[test]
fn a_bad_file_gets_every_problem_at_once_and_nothing_starts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("never-made");
    let config = write(
        &dir.path().join("weir.toml"),
        &format!(
            "[serve]\ndata = \"{}\"\nlisen = \"127.0.0.1:0\"\nreconcile_ms = \"fast\"\n\
             max_in_flight = 0\n",
            data.display()
        ),
    );
    for args in [
        vec!["serve", "--config", config.as_str()],
        vec!["config", "check", config.as_str()],
    ] {
        let (stdout, stderr, code) = common::weir_within(&args, Duration::from_secs(30));
        assert_eq!(code, Some(2), "{args:?}: {stdout}{stderr}");
        assert!(stderr.contains("3 problem(s)"), "{stderr}");
        assert!(
            stderr.contains("[serve] unknown key lisen; did you mean listen?"),
            "{stderr}"
        );
        assert!(
            stderr.contains("[serve] reconcile_ms: expected an integer, found string"),
            "{stderr}"
        );
        assert!(
            stderr.contains("[serve] max_in_flight: invalid value '0'"),
            "{stderr}"
        );
        assert!(!stdout.contains("listening"), "{stdout}");
    }
    assert!(!data.exists(), "a refused start made its data directory");

    let missing = dir.path().join("missing.toml");
    let (_, stderr, code) = common::weir_within(
        &["executor", "--config", missing.to_str().unwrap()],
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("cannot read"), "{stderr}");
}

#[test]
fn the_example_is_complete_and_valid() {
    let dir = tempfile::tempdir().unwrap();
    let (example, _, code) = common::weir_within(&["config", "example"], Duration::from_secs(30));
    assert_eq!(code, Some(0));
    // Every flag of both commands is a key of the example.
    for (section, flags) in [
        (
            "serve",
            &["--data", "--instance-slots", "--state", "--executor-token"][..],
        ),
        (
            "executor",
            &["--join", "--executor-token", "--label", "--workers"][..],
        ),
    ] {
        let (help, _, _) = common::weir_within(&[section, "--help"], Duration::from_secs(30));
        for flag in flags {
            assert!(help.contains(flag), "{section} --help lacks {flag}");
        }
        for line in help.lines() {
            let Some(flag) = line
                .split_whitespace()
                .next()
                .filter(|w| w.starts_with("--"))
            else {
                continue;
            };
            let key = flag
                .trim_start_matches("--")
                .trim_end_matches(',')
                .replace('-', "_");
            if key == "help" || key == "config" || key == "token" {
                continue;
            }
            assert!(
                example.contains(&format!("\n{key} =")) || example.contains(&format!("# {key} =")),
                "the example lacks {key} of {section}"
            );
        }
    }
    let path = write(&dir.path().join("example.toml"), &example);
    let (stdout, stderr, code) =
        common::weir_within(&["config", "check", &path], Duration::from_secs(30));
    assert_eq!(code, Some(0), "{stdout}{stderr}");
}

#[test]
fn bad_environment_variables_are_listed_with_the_file_problems() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        &dir.path().join("weir.toml"),
        "[executor]\njoin = \"http://127.0.0.1:9\"\nworkers = -1\n",
    );
    let output = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["executor", "--config", &config])
        .env("WEIR_INSTANCE_SLOTS", "0")
        .env("WEIR_MEMORY_BYTES", "lots")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("3 problem(s)"), "{stderr}");
    assert!(
        stderr.contains("environment WEIR_INSTANCE_SLOTS: invalid value '0'"),
        "{stderr}"
    );
    assert!(
        stderr.contains("environment WEIR_MEMORY_BYTES: invalid value 'lots'"),
        "{stderr}"
    );
    assert!(
        stderr.contains("[executor] workers: invalid value '-1'"),
        "{stderr}"
    );
    // Nothing started: it never tried to join.
    assert!(!stderr.contains("cannot join"), "{stderr}");

    // `weir config check` reads the same variables: the file alone is valid, the environment
    // is not; with good values it says which variables override the file.
    let good = write(
        &dir.path().join("good.toml"),
        "[executor]\njoin = \"http://127.0.0.1:9\"\n",
    );
    let check = |env: &[(&str, &str)]| {
        let output = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["config", "check", &good])
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8(output.stdout).unwrap() + &String::from_utf8(output.stderr).unwrap(),
        )
    };
    let (code, said) = check(&[("WEIR_INSTANCE_SLOTS", "0")]);
    assert_eq!(code, Some(2), "{said}");
    assert!(
        said.contains("1 problem(s)")
            && said.contains("environment WEIR_INSTANCE_SLOTS: invalid value '0'"),
        "{said}"
    );
    // And what a start refuses beyond each value alone: settings that cannot work together.
    let (code, said) = check(&[
        ("WEIR_EXECUTOR_HEARTBEAT_MS", "2000"),
        ("WEIR_EXECUTOR_TIMEOUT_MS", "1000"),
    ]);
    assert_eq!(code, Some(2), "{said}");
    assert!(
        said.contains(
            "[serve] --executor-heartbeat-ms 2000 must be less than --executor-timeout-ms 1000"
        ),
        "{said}"
    );
    let (code, said) = check(&[("WEIR_INSTANCE_SLOTS", "8")]);
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains("the environment overrides the file with WEIR_INSTANCE_SLOTS"),
        "{said}"
    );
}

/// Settings that cannot work are refused at start with what is wrong: a heartbeat no shorter
/// than the timeout (every executor would be declared lost between beats), loop periods under
/// 10 ms, a join address that is not an http(s) URL.
#[test]
fn timing_that_cannot_work_and_a_join_without_a_scheme_are_refused() {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_str().unwrap();
    for (args, expected) in [
        (
            vec![
                "serve",
                "--data",
                data_dir,
                "--executor-heartbeat-ms",
                "3000",
                "--executor-timeout-ms",
                "1000",
            ],
            "must be less than --executor-timeout-ms",
        ),
        (
            vec!["serve", "--data", data_dir, "--reconcile-ms", "0"],
            "--reconcile-ms",
        ),
        (
            vec![
                "executor",
                "--join",
                "127.0.0.1:8080",
                "--executor-token",
                "x",
            ],
            "http://host:port",
        ),
    ] {
        let (_, stderr, code) = common::weir_within(&args, Duration::from_secs(30));
        assert_ne!(code, Some(0), "{args:?} started");
        assert!(code.is_some(), "{args:?} still runs");
        if stderr.contains("must be less than") {
            assert_eq!(code, Some(2), "a configuration problem: {stderr}");
        }
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}
