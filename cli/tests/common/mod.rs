//! A real `weir serve` for tests: the binary on a free loopback port, killed when dropped.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code shared by several test binaries, each using a part"
)]

pub mod mqtt;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use weir_api::client::Client;
use weir_api::rest::{CreateTenant, MintToken};
use weir_api::tenancy::{Quotas, Role};

/// A running `weir serve`, killed when dropped.
pub struct Server {
    child: Child,
    pub address: String,
    /// The embedded MQTT broker's `host:port` (from `mqtt broker listening on mqtt://ADDR`).
    pub mqtt_address: String,
    pub admin_token: Option<String>,
    /// What it printed before it listened.
    pub lines: Vec<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

pub fn serve(data: &Path) -> Server {
    serve_with(data, &[])
}

/// `weir serve` with extra arguments.
pub fn serve_with(data: &Path, extra: &[&str]) -> Server {
    serve_with_env(data, extra, &[])
}

/// `weir serve` with extra arguments and environment variables.
pub fn serve_with_env(data: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
    serve_at(data, "127.0.0.1:0", extra, env)
}

/// `weir serve` listening on `listen` (a restart on the address of an earlier start), with
/// extra arguments and environment variables.
pub fn serve_at(data: &Path, listen: &str, extra: &[&str], env: &[(&str, &str)]) -> Server {
    let child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args([
            "serve",
            "--listen",
            listen,
            "--mqtt-listen",
            "127.0.0.1:0",
            "--data",
        ])
        .arg(data)
        .args(extra)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(child_stderr())
        .spawn()
        .unwrap();
    // The guard owns the child from here on, so a failed expectation still kills it.
    let mut server = Server {
        child,
        address: String::new(),
        mqtt_address: String::new(),
        admin_token: None,
        lines: Vec::new(),
    };
    let mut lines = BufReader::new(server.child.stdout.take().unwrap()).lines();
    loop {
        let line = lines
            .next()
            .expect("weir serve printed its address")
            .unwrap();
        if let Some(token) = line
            .split("admin token (shown once, valid 365 days): ")
            .nth(1)
        {
            server.admin_token = Some(token.trim().to_owned());
        }
        if let Some(address) = line.strip_prefix("mqtt broker listening on mqtt://") {
            server.mqtt_address = address.trim().to_owned();
        }
        server.lines.push(line.clone());
        if let Some(address) = line.strip_prefix("weir listening on http://") {
            server.address = address.trim().to_owned();
            return server;
        }
    }
}

impl Server {
    /// The process id of the server.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A typed client of this server acting with `token`.
    pub fn client(&self, token: &str) -> Client {
        Client::new(&format!("http://{}", self.address), Some(token.to_owned())).unwrap()
    }

    /// Asks the server to stop (SIGTERM, as a service manager does) and waits up to `limit`
    /// for it to exit: its exit status, or `None` if it still runs.
    pub fn terminate_within(
        &mut self,
        limit: std::time::Duration,
    ) -> Option<std::process::ExitStatus> {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        None
    }

    /// A typed client with the admin token of the first start.
    pub fn admin(&self) -> Client {
        self.client(self.admin_token.as_deref().expect("first start"))
    }
}

/// A client of `tenant` with a fresh token of `role` (subject `<tenant>-<role>`), minted by
/// `admin`.
pub async fn token(admin: &Client, tenant: &str, role: Role) -> Client {
    let minted = admin
        .mint_token(&MintToken {
            subject: format!("{tenant}-{role:?}"),
            role,
            ttl_seconds: None,
            tenant: Some(tenant.to_owned()),
        })
        .await
        .unwrap();
    admin.with_token(minted.token.unwrap())
}

/// Creates tenant `id` with `quotas`; a client with a developer token of it.
pub async fn tenant(admin: &Client, id: &str, quotas: Quotas) -> Client {
    admin
        .create_tenant(&CreateTenant {
            id: id.to_owned(),
            display_name: None,
            quotas: Some(quotas),
        })
        .await
        .unwrap();
    token(admin, id, Role::Developer).await
}

/// Module `echo@1.0.0` and graph `echo@1` (source → echo → sink) of `developer`'s tenant.
pub async fn push_echo(developer: &Client) {
    developer
        .push_module("echo", "1.0.0", weir_guests::ECHO.bytes())
        .await
        .unwrap();
    developer
        .push_graph("echo", "1", chain_graph("echo", "echo", 1))
        .await
        .unwrap();
}

/// A graph named `name` (version 1) of `count` maps of `module:1.0.0` in a chain between its
/// source and sink.
pub fn chain_graph(name: &str, module: &str, count: usize) -> String {
    let mut text = format!(
        "metadata: {{$schema: s, name: {name}, version: '1'}}\nmoduleRequirements: {{apiVersion: '1.1.0', runtimeVersion: '1.1.0'}}\noperations:\n  - {{operationType: source, name: source}}\n"
    );
    for i in 0..count {
        text.push_str(&format!(
            "  - {{operationType: map, name: m{i}, module: '{module}:1.0.0'}}\n"
        ));
    }
    text.push_str(
        "  - {operationType: sink, name: sink}\nconnections:\n  - {from: {name: source}, to: {name: m0}}\n",
    );
    for i in 1..count {
        text.push_str(&format!(
            "  - {{from: {{name: m{}}}, to: {{name: m{i}}}}}\n",
            i - 1
        ));
    }
    text.push_str(&format!(
        "  - {{from: {{name: m{}}}, to: {{name: sink}}}}\n",
        count - 1
    ));
    text
}

/// Runs `weir ARGS` (no stdin) and gives up after `limit`: a stalled run is a failed test, not
/// a hung one. Stdout, stderr and the exit code.
pub fn weir_within(args: &[&str], limit: std::time::Duration) -> (String, String, Option<i32>) {
    let child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // The test may have given up waiting; then nobody needs the output.
        let _unwanted = done.send(child.wait_with_output());
    });
    let Ok(output) = finished.recv_timeout(limit) else {
        Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
        panic!("weir {args:?} did not finish within {limit:?}: it stalled");
    };
    let output = output.unwrap();
    (
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
        output.status.code(),
    )
}

/// `weir ARGS` running in the background (killed when dropped): its stderr lines arrive as it
/// prints them, its stdout at the end.
pub struct Background {
    child: Child,
    stderr: std::sync::mpsc::Receiver<String>,
    args: Vec<String>,
}

impl Drop for Background {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

impl Background {
    /// Starts `weir ARGS` (no stdin).
    pub fn start(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (lines, received) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                if lines.send(line).is_err() {
                    return;
                }
            }
        });
        Self {
            child,
            stderr: received,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
        }
    }

    /// Waits until it prints a line to stderr containing `text`; fails after `limit` or if it
    /// ends first. The lines up to that one.
    pub fn wait_for_stderr(&self, text: &str, limit: std::time::Duration) -> Vec<String> {
        let deadline = std::time::Instant::now() + limit;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(text);
                    seen.push(line);
                    if found {
                        return seen;
                    }
                }
                Err(error) => panic!(
                    "weir {:?} printed no {text:?} on stderr within {limit:?} ({error}): {seen:?}",
                    self.args
                ),
            }
        }
    }

    /// Waits for it to end (fails after `limit`): stdout, the rest of stderr, the exit code.
    pub fn finish(mut self, limit: std::time::Duration) -> (String, String, Option<i32>) {
        use std::io::Read;
        let mut stdout = self.child.stdout.take().unwrap();
        let (done, finished) = std::sync::mpsc::channel();
        // Stdout ends when the process does.
        std::thread::spawn(move || {
            let mut text = String::new();
            let _unwanted = done.send(stdout.read_to_string(&mut text).map(|_| text));
        });
        let stdout = finished
            .recv_timeout(limit)
            .unwrap_or_else(|_| panic!("weir {:?} did not finish within {limit:?}", self.args))
            .unwrap();
        let code = self.child.wait().unwrap().code();
        // The reader ends at the end of stderr, which the exit closed.
        let stderr: Vec<String> = self.stderr.iter().collect();
        (stdout, stderr.join("\n"), code)
    }
}

/// Where a child process's log goes: the test's own stderr when `WEIR_TEST_CHILD_LOGS` is set
/// (to see what a server or executor did in a failing test), else nowhere.
fn child_stderr() -> Stdio {
    if std::env::var_os("WEIR_TEST_CHILD_LOGS").is_some() {
        Stdio::inherit()
    } else {
        Stdio::null()
    }
}

/// Creates the plain MQTT endpoint `name` at `address` (host:port) as `owner`.
pub async fn mqtt_endpoint(owner: &weir_api::client::Client, name: &str, address: &str) {
    owner
        .create_endpoint(&weir_api::rest::CreateEndpoint {
            name: name.to_owned(),
            kind: weir_api::rest::EndpointKind::Mqtt,
            address: Some(address.to_owned()),
            settings: std::collections::BTreeMap::new(),
            secret: None,
        })
        .await
        .unwrap();
}

/// A `weir executor` process of the test's own, killed (SIGKILL) when dropped, with what it
/// printed after joining (read on a thread of its own, so its stdout never fills or closes).
pub struct ExecutorProcess(pub Child, pub std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl Drop for ExecutorProcess {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

/// Starts `weir executor` joining the control plane at `address` as `id` with the join
/// `token` and the `extra` arguments; returns once it printed that it joined.
pub fn executor_process(address: &str, token: &str, id: &str, extra: &[&str]) -> ExecutorProcess {
    let join = format!("http://{address}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["executor", "--join", &join, "--id", id])
        .args(extra)
        .env("WEIR_EXECUTOR_TOKEN", token)
        .stdout(Stdio::piped())
        .stderr(child_stderr())
        .spawn()
        .unwrap();
    // What it prints before (the state store it uses), then the line that says it joined.
    let joined = format!("executor {id} joined {join}");
    let stdout = child.stdout.take().unwrap();
    // Owned from here on, so a failed expectation still kills it.
    let process = ExecutorProcess(child, std::sync::Arc::default());
    let mut said = Vec::new();
    let mut lines = BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line == joined {
            let after = process.1.clone();
            std::thread::spawn(move || {
                for line in lines.map_while(Result::ok) {
                    after.lock().unwrap().push(line);
                }
            });
            return process;
        }
        said.push(line);
    }
    panic!("executor {id} ended without joining; it printed {said:?}");
}

/// Deployment `id` of graph `graph@1` on the built-in HTTP source and sink (`/ingest`).
pub fn http_deployment(id: &str, graph: &str) -> weir_api::rest::CreateDeployment {
    weir_api::rest::CreateDeployment {
        id: id.to_owned(),
        graph: weir_api::rest::GraphRef {
            name: graph.to_owned(),
            version: "1".to_owned(),
        },
        configuration: std::collections::BTreeMap::new(),
        source: weir_api::rest::Binding::default(),
        sink: weir_api::rest::Binding::default(),
        dead_letters: None,
        instances: 1,
        partition_key: None,
    }
}

/// Deployment `id` of graph `graph@1`, reading `source` (endpoint, topic filter) and writing to
/// `sink` (endpoint, topic).
pub fn deployment(
    id: &str,
    graph: &str,
    source: (&str, &str),
    sink: (&str, &str),
) -> weir_api::rest::CreateDeployment {
    weir_api::rest::CreateDeployment {
        id: id.to_owned(),
        graph: weir_api::rest::GraphRef {
            name: graph.to_owned(),
            version: "1".to_owned(),
        },
        configuration: std::collections::BTreeMap::new(),
        source: weir_api::rest::Binding {
            endpoint: source.0.to_owned(),
            topics: vec![source.1.to_owned()],
        },
        sink: weir_api::rest::Binding {
            endpoint: sink.0.to_owned(),
            topics: vec![sink.1.to_owned()],
        },
        dead_letters: None,
        instances: 1,
        partition_key: None,
    }
}
