//! `deploy/` checked as a user would before applying it: the Kubernetes manifests against the
//! API schemas (`kubernetes-validate` from PyPI, strict: an unknown field fails), what they
//! must hold (probes, non-root, resources, config and secrets wiring), the systemd units with
//! `systemd-analyze verify` and its offline security score, and every configuration file with
//! `weir config check` of the binary under test. A missing tool fails the test: run
//! `scripts/services start` (it installs both, and writes WEIR_TEST_KUBERNETES_VALIDATE).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code"
)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// The files of `deploy/<dir>` ending in `suffix`, sorted.
fn files(dir: &str, suffix: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(deploy().join(dir))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.to_str().unwrap().ends_with(suffix))
        .collect();
    found.sort();
    found
}

/// Every object of the manifests, by `kind/name`.
fn objects() -> Vec<Value> {
    files("kubernetes", ".yaml")
        .iter()
        .flat_map(|path| {
            let text = std::fs::read_to_string(path).unwrap();
            serde_saphyr::from_multiple::<Value>(&text)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        })
        .collect()
}

fn object<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name} in deploy/kubernetes"))
}

/// `weir config check` of the binary under test on `text`.
fn config_check(text: &str, origin: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    std::fs::write(&path, text).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["config", "check"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{origin}: weir config check failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn kubernetes_manifests_pass_the_api_schemas() {
    let tool = std::env::var_os("WEIR_TEST_KUBERNETES_VALIDATE").unwrap_or_else(|| {
        panic!(
            "WEIR_TEST_KUBERNETES_VALIDATE is not set: run scripts/services start and source \
             target/services/env (it installs kubernetes-validate into its venv)"
        )
    });
    let manifests = files("kubernetes", ".yaml");
    assert!(manifests.len() >= 5, "{manifests:?}");
    let output = Command::new(&tool)
        .args(["--strict", "--kubernetes-version", "1.33.0"])
        .args(&manifests)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", Path::new(&tool).display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}{stderr}");
    // One line per object, each passed.
    let passed = stdout
        .lines()
        .chain(stderr.lines())
        .filter(|l| l.contains(" passed for resource "))
        .count();
    assert_eq!(passed, objects().len(), "{stdout}{stderr}");

    // And the tool does refuse: a field Kubernetes does not know.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    let text = std::fs::read_to_string(deploy().join("kubernetes/executors.yaml")).unwrap();
    std::fs::write(&bad, text.replace("replicas: 3", "replica: 3")).unwrap();
    let refused = Command::new(&tool)
        .args(["--strict", "--kubernetes-version", "1.33.0"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!refused.status.success());
}

#[test]
fn kubernetes_manifests_hold_what_weir_needs() {
    let objects = objects();
    let config = object(&objects, "ConfigMap", "weir-config");
    config_check(
        config["data"]["weir.toml"].as_str().unwrap(),
        "ConfigMap weir-config",
    );
    let secret = object(&objects, "Secret", "weir");
    for key in ["executor-token", "redis-password", "state-url"] {
        assert!(
            secret["stringData"][key].is_string(),
            "Secret weir lacks {key}"
        );
    }
    for name in ["weir-control-plane", "weir-redis"] {
        object(&objects, "Service", name);
    }
    object(&objects, "StatefulSet", "weir-redis");
    let control = object(&objects, "Deployment", "weir-control-plane");
    let executors = object(&objects, "Deployment", "weir-executor");
    assert_eq!(control["spec"]["replicas"], 1, "one control plane: SQLite");
    assert_eq!(control["spec"]["strategy"]["type"], "Recreate");

    let pods = objects
        .iter()
        .filter(|o| o["kind"] == "Deployment" || o["kind"] == "StatefulSet")
        .map(|o| {
            (
                o["metadata"]["name"].as_str().unwrap(),
                &o["spec"]["template"]["spec"],
            )
        });
    for (name, pod) in pods {
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
        assert_eq!(pod["automountServiceAccountToken"], false, "{name}");
        for container in pod["containers"].as_array().unwrap() {
            let security = &container["securityContext"];
            assert_eq!(security["allowPrivilegeEscalation"], false, "{name}");
            assert_eq!(security["readOnlyRootFilesystem"], true, "{name}");
            assert_eq!(security["capabilities"]["drop"][0], "ALL", "{name}");
            for bound in ["requests", "limits"] {
                for resource in ["cpu", "memory"] {
                    assert!(
                        container["resources"][bound][resource].is_string(),
                        "{name}: no {bound}.{resource}"
                    );
                }
            }
        }
    }

    // weir's pods: the file from the ConfigMap with --config, the join token from the Secret.
    for (deployment, command) in [(control, "serve"), (executors, "executor")] {
        let pod = &deployment["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        let args: Vec<&str> = container["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(args, [command, "--config", "/etc/weir/weir.toml"]);
        let mount = container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"] == "/etc/weir")
            .expect("the configuration mounted at /etc/weir");
        let volume = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap();
        assert_eq!(volume["configMap"]["name"], "weir-config");
        let token = container["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "WEIR_EXECUTOR_TOKEN")
            .expect("WEIR_EXECUTOR_TOKEN");
        assert_eq!(token["valueFrom"]["secretKeyRef"]["name"], "weir");
        assert_eq!(token["valueFrom"]["secretKeyRef"]["key"], "executor-token");
    }
    let probes = &control["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(probes["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(probes["readinessProbe"]["httpGet"]["path"], "/readyz");
    // The executors join the control plane's Service, on its port.
    let service = object(&objects, "Service", "weir-control-plane");
    assert_eq!(service["spec"]["ports"][0]["port"], 8080);
    assert!(
        config["data"]["weir.toml"]
            .as_str()
            .unwrap()
            .contains("join = \"http://weir-control-plane:8080\"")
    );
}

/// `systemd-analyze` (Debian's systemd), or a failed test saying where to get it.
fn systemd_analyze() -> PathBuf {
    ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("no systemd-analyze: run scripts/services start (it installs Debian's systemd)")
        })
}

#[test]
fn systemd_units_verify_and_are_hardened() {
    let analyze = systemd_analyze();
    let dir = tempfile::tempdir().unwrap();
    let units = files("systemd", ".service");
    assert_eq!(units.len(), 2, "{units:?}");
    let mut checked = Vec::new();
    for unit in &units {
        // The binary under test where the unit expects the installed one (verify checks that
        // ExecStart is executable); a template is verified as one of its instances.
        let text = std::fs::read_to_string(unit)
            .unwrap()
            .replace("/usr/local/bin/weir", env!("CARGO_BIN_EXE_weir"));
        let name = unit
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .replace("@.", "@1.");
        let path = dir.path().join(&name);
        std::fs::write(&path, text).unwrap();
        checked.push(path);
    }
    for path in &checked {
        let output = Command::new(&analyze)
            .arg("verify")
            .arg(path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        // verify exits 0 on an unknown key or a bad value and says so on stderr: both fail.
        assert!(
            output.status.success() && stderr.trim().is_empty(),
            "{}: {stderr}",
            path.display()
        );
        // The offline exposure score (0 best, 10 worst) is at most 2.0.
        let output = Command::new(&analyze)
            .args(["security", "--offline=yes", "--threshold=20"])
            .arg(path)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{}: exposure above 2.0:\n{}",
            path.display(),
            stdout.lines().last().unwrap_or_default()
        );
    }

    // A broken unit is caught: a misspelt key.
    let bad = dir.path().join("bad.service");
    let text = std::fs::read_to_string(&checked[0])
        .unwrap()
        .replace("NoNewPrivileges=yes", "NoNewPrivilege=yes");
    std::fs::write(&bad, text).unwrap();
    let output = Command::new(&analyze)
        .arg("verify")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&output.stderr).contains("Unknown key"));

    // Both units read the example configuration's path, and it is valid.
    for unit in &units {
        let text = std::fs::read_to_string(unit).unwrap();
        assert!(
            text.contains("--config /etc/weir/weir.toml"),
            "{}",
            unit.display()
        );
    }
    config_check(
        &std::fs::read_to_string(deploy().join("weir.toml")).unwrap(),
        "deploy/weir.toml",
    );
}
