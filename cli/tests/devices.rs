//! `weir device` against a real `weir serve`: an owner creates credentials (the password printed
//! once), lists and deletes them; other roles are refused with the server's problem.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed expectation is a failed test"
)]

mod common;

use std::time::Duration;

use weir_api::tenancy::{Quotas, Role};

/// `weir ARGS --server URL --token TOKEN`: stdout, stderr, exit code.
fn weir(url: &str, token: &str, args: &[&str]) -> (String, String, Option<i32>) {
    let mut all = args.to_vec();
    all.extend(["--server", url, "--token", token]);
    common::weir_within(&all, Duration::from_secs(60))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_manage_device_credentials_with_the_cli() {
    let data = tempfile::tempdir().unwrap();
    let server = common::serve(data.path());
    let url = format!("http://{}", server.address);
    let admin = server.admin();
    let developer = common::tenant(&admin, "acme", Quotas::default()).await;
    let owner = common::token(&admin, "acme", Role::Owner).await;
    let (owner, developer) = (owner.token().unwrap(), developer.token().unwrap());

    let (out, err, code) = weir(&url, owner, &["device", "create", "sensor-1"]);
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(lines[0], "username sensor-1@acme");
    let password = lines[1].strip_prefix("password ").unwrap();
    assert_eq!(password.len(), 64);
    assert!(err.contains("shown only now"), "{err}");

    let (out, err, code) = weir(
        &url,
        owner,
        &["device", "create", "sensor-2", "--output", "json"],
    );
    assert_eq!(code, Some(0), "{err}");
    let created: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(created["username"], "sensor-2@acme");
    assert_eq!(created["password"].as_str().unwrap().len(), 64);
    assert_ne!(created["password"], password);

    // Listed to a developer, without passwords.
    let (out, err, code) = weir(&url, developer, &["device", "list", "--output", "json"]);
    assert_eq!(code, Some(0), "{err}");
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["sensor-1", "sensor-2"]);
    assert!(
        !out.contains(password) && !out.contains("password"),
        "{out}"
    );
    let (out, _, code) = weir(&url, developer, &["device", "list"]);
    assert_eq!(code, Some(0));
    assert!(out.starts_with("sensor-1\tsensor-1@acme\t"), "{out}");

    // A developer may not create or delete: the server's problem, exit 1.
    let (out, _, code) = weir(
        &url,
        developer,
        &["device", "create", "mine", "--output", "json"],
    );
    assert_eq!(code, Some(1));
    let problem: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(problem["code"], "forbidden");
    let (_, err, code) = weir(&url, developer, &["device", "delete", "sensor-1"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("forbidden"), "{err}");
    let (_, err, code) = weir(&url, owner, &["device", "create", "sensor-1"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("conflict"), "{err}");
    let (_, err, code) = weir(&url, owner, &["device", "create", "a@b"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("invalid_request") && err.contains("/name"),
        "{err}"
    );

    let (out, err, code) = weir(&url, owner, &["device", "delete", "sensor-1"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.trim(), "deleted device sensor-1");
    let (_, err, code) = weir(&url, owner, &["device", "delete", "sensor-1"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("not_found"), "{err}");
    let (out, _, _) = weir(&url, developer, &["device", "list", "--output", "json"]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap()[0]["name"],
        "sensor-2"
    );
}
