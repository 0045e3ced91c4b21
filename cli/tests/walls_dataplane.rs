//! Walls and bounds of the data plane against a real `weir serve`: one tenant's deployments,
//! clocks, instances, CPU, memory and quotas never change what another tenant's messages get
//! (issue 8, points 1–7, 15 and 16). Each test is the reproduction of a reported break.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed expectation is a failed test"
)]

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{tenant, token};
use weir_api::Hlc;
use weir_api::client::Client;
use weir_api::rest::{CreateDeployment, CreateTenant, IngestMessage};
use weir_api::tenancy::{Quotas, Role};

/// The fuel of one spinning call in tests that spin.
const SPIN_FUEL: u64 = 20_000_000;

/// Quotas that stay out of the way unless a test sets one.
fn roomy() -> Quotas {
    Quotas {
        api_requests_per_second: 100_000,
        max_deployments: 100,
        ..Quotas::default()
    }
}

/// A graph of `count` maps of `module` in a chain.
fn chain(module: &str, count: usize) -> String {
    common::chain_graph("chain", module, count)
}

/// Pushes `guest` as module `name:1.0.0` and a graph `graph:1` of `maps` of it.
async fn push(client: &Client, name: &str, guest: weir_guests::Guest, graph: &str, maps: usize) {
    if client
        .modules()
        .await
        .unwrap()
        .iter()
        .all(|m| m.name != name)
    {
        client
            .push_module(name, "1.0.0", guest.bytes())
            .await
            .unwrap();
    }
    client
        .push_graph(graph, "1", chain(name, maps))
        .await
        .unwrap();
}

fn deployment(id: &str, graph: &str) -> CreateDeployment {
    common::http_deployment(id, graph)
}

fn message(payload: &str) -> IngestMessage {
    IngestMessage::new(payload)
}

fn stamped(payload: &str, ts: &str) -> IngestMessage {
    IngestMessage {
        user_properties: vec![("__ts".to_owned(), ts.to_owned())],
        ..IngestMessage::new(payload)
    }
}

async fn outputs(client: &Client, id: &str, messages: &[IngestMessage]) -> Vec<(String, Hlc)> {
    client
        .ingest(id, messages, true)
        .await
        .unwrap()
        .outputs
        .unwrap_or_default()
        .into_iter()
        .map(|output| {
            let ts = output
                .user_properties
                .iter()
                .find(|(k, _)| k == "__ts")
                .map(|(_, v)| Hlc::parse_ts(v).unwrap())
                .expect("every output carries __ts");
            (output.payload, ts)
        })
        .collect()
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

fn code<T: std::fmt::Debug>(result: Result<T, weir_api::client::ClientError>) -> String {
    result
        .expect_err("refused")
        .code()
        .unwrap_or("no code")
        .to_owned()
}

/// Polls `check` until it holds or 20 s pass.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn runtime_field(client: &Client, id: &str, pointer: &str) -> serde_json::Value {
    let runtime = client.deployment(id).await.unwrap().runtime;
    runtime
        .and_then(|r| r.pointer(pointer).cloned())
        .unwrap_or(serde_json::Value::Null)
}

#[tokio::test]
async fn deleting_pausing_or_updating_a_deployment_leaves_every_other_running() {
    let data = tempfile::tempdir().unwrap();
    let server = common::serve(data.path());
    let admin = server.admin();
    let a = tenant(&admin, "a", roomy()).await;
    let b = tenant(
        &admin,
        "b",
        Quotas {
            fuel_per_message: SPIN_FUEL,
            ..roomy()
        },
    )
    .await;
    for client in [&a, &b] {
        push(client, "echo", weir_guests::ECHO, "echo", 1).await;
    }
    push(&b, "spin", weir_guests::SPIN_LOOP, "spin", 1).await;
    for id in ["a1", "a2"] {
        a.deploy(&deployment(id, "echo")).await.unwrap();
    }
    for id in ["b1", "b2"] {
        b.deploy(&deployment(id, "echo")).await.unwrap();
    }

    b.delete_deployment("b1").await.unwrap();
    let got = outputs(&a, "a1", &[message("after b1 went")]).await;
    assert_eq!(got[0].0, "after b1 went", "a1 still runs");
    assert_eq!(a.deployment("a1").await.unwrap().status, "running");

    // A deleted deployment's queued work stops with it: b's spinner burns nothing more.
    b.deploy(&deployment("spinner", "spin")).await.unwrap();
    let spins: Vec<IngestMessage> = (0..50).map(|_| message("spin")).collect();
    b.ingest("spinner", &spins, false).await.unwrap();
    b.delete_deployment("spinner").await.unwrap();
    let at_delete = b.usage().await.unwrap().fuel;
    for i in 0..50 {
        outputs(&a, "a1", &[message(&format!("{i}"))]).await;
    }
    let later = b.usage().await.unwrap().fuel;
    assert!(
        later <= at_delete + 2 * SPIN_FUEL,
        "the deleted deployment burned {} fuel after its delete",
        later - at_delete
    );

    b.pause("b2").await.unwrap();
    let got = outputs(&a, "a2", &[message("after b2 paused")]).await;
    assert_eq!(got[0].0, "after b2 paused", "a2 still runs");
    assert_eq!(
        code(b.ingest("b2", &[message("x")], false).await),
        "unavailable"
    );

    b.resume("b2").await.unwrap();
    b.update_deployment(&deployment("b2", "echo"))
        .await
        .unwrap();
    for id in ["a1", "a2"] {
        let got = outputs(&a, id, &[message(id)]).await;
        assert_eq!(got[0].0, id, "{id} runs after b2's update");
    }
    let got = outputs(&b, "b2", &[message("b2 updated")]).await;
    assert_eq!(got[0].0, "b2 updated");
}

#[tokio::test]
async fn a_tenants_ts_moves_only_its_own_deployments_clock() {
    let data = tempfile::tempdir().unwrap();
    let server = common::serve(data.path());
    let admin = server.admin();
    let a = tenant(&admin, "a", roomy()).await;
    let b = tenant(&admin, "b", roomy()).await;
    for client in [&a, &b] {
        push(client, "echo", weir_guests::ECHO, "echo", 1).await;
    }
    a.deploy(&deployment("mine", "echo")).await.unwrap();
    a.deploy(&deployment("other", "echo")).await.unwrap();
    b.deploy(&deployment("theirs", "echo")).await.unwrap();

    // Far in the future, and at the very edge of the numbers: dead letters, nothing else.
    for ts in [
        "004949607986745:00000:x",
        "18446744073709551615:18446744073709551615:x",
    ] {
        let got = outputs(&a, "mine", &[stamped("future", ts)]).await;
        assert!(got.is_empty(), "{ts}: {got:?}");
    }
    let letters = a.dead_letters(Some("mine")).await.unwrap();
    assert_eq!(letters.len(), 2);
    assert!(
        letters.iter().all(|l| l.reason == "clock_drift"),
        "{letters:?}"
    );
    server.client(a.token().unwrap()).health().await.unwrap();

    // Nobody else's time moved: plain messages go through, stamped near the wall clock.
    let bound = |stamp: &Hlc| stamp.millis() < now_ms() + 5_000;
    for (client, id) in [(&b, "theirs"), (&a, "other"), (&a, "mine")] {
        let got = outputs(client, id, &[message("plain")]).await;
        assert_eq!(got.len(), 1, "{id} was dead-lettered");
        assert!(bound(&got[0].1), "{id} stamped {}", got[0].1);
    }
    assert!(b.dead_letters(None).await.unwrap().is_empty());

    // 55 s ahead is inside the drift bound: it moves that deployment's clock only.
    let ahead = now_ms() + 55_000;
    let got = outputs(
        &a,
        "mine",
        &[stamped("ahead", &format!("{ahead}:0:sensor"))],
    )
    .await;
    assert_eq!(got.len(), 1);
    assert!(got[0].1.millis() >= ahead);
    let later = outputs(&a, "mine", &[message("after")]).await;
    assert!(later[0].1 > got[0].1, "the deployment's own clock moved");
    for (client, id) in [(&b, "theirs"), (&a, "other")] {
        let got = outputs(client, id, &[message("plain")]).await;
        assert!(bound(&got[0].1), "{id} moved to {}", got[0].1);
    }

    // Three messages in one millisecond: three distinct, increasing stamps.
    let got = outputs(&b, "theirs", &[message("1"), message("2"), message("3")]).await;
    assert_eq!(got.len(), 3);
    assert!(got[0].1 < got[1].1 && got[1].1 < got[2].1, "{got:?}");
    let texts: Vec<String> = got.iter().map(|(_, ts)| ts.to_ts()).collect();
    assert!(texts[0] < texts[1] && texts[1] < texts[2], "{texts:?}");
}

#[tokio::test]
async fn max_instances_is_each_tenants_own_and_admitted_against_the_pool() {
    let data = tempfile::tempdir().unwrap();
    let server = common::serve_with(
        data.path(),
        &["--instance-slots", "40", "--instance-idle-ms", "300"],
    );
    let admin = server.admin();
    let capped = |max_instances| Quotas {
        max_instances,
        ..roomy()
    };
    let hog = tenant(&admin, "hog", capped(30)).await;
    let quiet = tenant(&admin, "quiet", capped(5)).await;

    // The pool has 40 slots and 35 are promised: a tenant asking for more than 5 is refused,
    // with the default quota too; so is a quota change that would pass the pool.
    let create = |quotas: Option<Quotas>| CreateTenant {
        id: "late".to_owned(),
        display_name: None,
        quotas,
    };
    let refused = admin.create_tenant(&create(Some(capped(10)))).await;
    assert_eq!(code(refused), "conflict");
    assert_eq!(code(admin.create_tenant(&create(None)).await), "conflict");
    admin.create_tenant(&create(Some(capped(5)))).await.unwrap();
    assert_eq!(
        code(admin.set_quotas("quiet", &capped(6)).await),
        "conflict"
    );
    admin.set_quotas("hog", &capped(25)).await.unwrap();
    admin.set_quotas("quiet", &capped(10)).await.unwrap();

    // Within the pool, each tenant's own quota holds: the hog's third 10-node deployment is
    // refused; the quiet tenant deploys, updates, pauses and resumes meanwhile.
    push(&hog, "echo", weir_guests::ECHO, "ten", 10).await;
    push(&quiet, "echo", weir_guests::ECHO, "one", 1).await;
    for id in ["h1", "h2"] {
        hog.deploy(&deployment(id, "ten")).await.unwrap();
    }
    let over = hog.deploy(&deployment("h3", "ten")).await.unwrap_err();
    assert_eq!(over.code(), Some("quota_exceeded"));
    assert!(over.problem().unwrap().detail.contains("max_instances"));
    quiet.deploy(&deployment("q", "one")).await.unwrap();
    quiet
        .update_deployment(&deployment("q", "one"))
        .await
        .unwrap();
    quiet.pause("q").await.unwrap();
    quiet.resume("q").await.unwrap();
    assert_eq!(outputs(&quiet, "q", &[message("hi")]).await[0].0, "hi");
    // An update needing as many instances as the tenant has left is admitted.
    hog.push_graph("five", "1", chain("echo", 5)).await.unwrap();
    hog.update_deployment(&deployment("h2", "five"))
        .await
        .unwrap();
    hog.deploy(&deployment("h3", "five")).await.unwrap();

    // An idle node gives its instance back and makes a fresh one for the next message.
    eventually("the idle instance is released", || async {
        runtime_field(&quiet, "q", "/nodes/m0/live").await == serde_json::json!(false)
    })
    .await;
    let before = runtime_field(&quiet, "q", "/nodes/m0/instantiations").await;
    assert_eq!(
        outputs(&quiet, "q", &[message("again")]).await[0].0,
        "again"
    );
    let after = runtime_field(&quiet, "q", "/nodes/m0/instantiations").await;
    assert_eq!(after.as_u64(), before.as_u64().map(|n| n + 1));
}

#[tokio::test]
async fn a_tenant_over_its_fuel_rate_is_throttled_and_pays_for_every_init() {
    let data = tempfile::tempdir().unwrap();
    let server = common::serve(data.path());
    let admin = server.admin();
    let per_message = 20_000_000;
    let per_second = 100_000_000;
    let noisy = tenant(
        &admin,
        "noisy",
        Quotas {
            fuel_per_message: per_message,
            fuel_per_second: per_second,
            call_timeout: Duration::from_secs(10),
            ..roomy()
        },
    )
    .await;
    push(&noisy, "spin", weir_guests::SPIN_LOOP, "spin", 1).await;
    push(&noisy, "trap", weir_guests::TRAP, "trap", 1).await;

    // Init fuel is charged: at deploy and again after every trap.
    noisy.deploy(&deployment("trap", "trap")).await.unwrap();
    let first_init = noisy.usage().await.unwrap().init_fuel;
    assert!(first_init > 0, "init used no fuel?");
    for _ in 0..5 {
        noisy
            .ingest("trap", &[message("trap")], true)
            .await
            .unwrap();
    }
    // Each trap drops the instance; the next call re-inits: every instance's init is charged.
    let usage = noisy.usage().await.unwrap();
    let instances = runtime_field(&noisy, "trap", "/nodes/m0/instantiations")
        .await
        .as_u64()
        .unwrap();
    assert!(
        instances >= 5,
        "four re-inits after five traps, plus the first"
    );
    assert_eq!(usage.init_fuel, instances * first_init, "{usage:?}");
    assert!(usage.fuel >= usage.init_fuel);

    // Spinning: every call burns its whole per-message budget; the rate holds it back.
    noisy.deploy(&deployment("spin", "spin")).await.unwrap();
    let spent_before = noisy.usage().await.unwrap().fuel;
    let started = Instant::now();
    let spins: Vec<IngestMessage> = (0..20).map(|_| message("spin")).collect();
    noisy.ingest("spin", &spins, true).await.unwrap();
    let elapsed = started.elapsed();
    let spent = noisy.usage().await.unwrap().fuel - spent_before;
    assert!(spent >= 20 * per_message, "{spent}");
    // At most a second's burst plus the rate over the time it took, plus the call in flight.
    #[expect(clippy::cast_precision_loss, reason = "a bound, not an exact figure")]
    let allowed = per_second as f64 * (elapsed.as_secs_f64() + 1.0) + (2 * per_message) as f64;
    #[expect(clippy::cast_precision_loss, reason = "a bound, not an exact figure")]
    let spent_f = spent as f64;
    assert!(
        spent_f <= allowed,
        "{spent} fuel in {elapsed:?} passes the {per_second}/s rate"
    );
    let letters = noisy.dead_letters(Some("spin")).await.unwrap();
    assert_eq!(letters.len(), 20);
    assert!(letters.iter().all(|l| l.reason == "fuel_exhausted"));
}

#[tokio::test]
async fn calls_starting_together_cannot_overdraw_the_fuel_rate() {
    let data = tempfile::tempdir().unwrap();
    let server = common::serve(data.path());
    let admin = server.admin();
    let per_message = 100_000_000;
    let per_second = 50_000_000;
    let noisy = tenant(
        &admin,
        "noisy",
        Quotas {
            fuel_per_message: per_message,
            fuel_per_second: per_second,
            call_timeout: Duration::from_secs(10),
            ..roomy()
        },
    )
    .await;
    push(&noisy, "spin", weir_guests::SPIN_LOOP, "spin", 1).await;
    for id in ["s1", "s2", "s3"] {
        noisy.deploy(&deployment(id, "spin")).await.unwrap();
    }
    let before = noisy.usage().await.unwrap().fuel;
    let started = Instant::now();
    // Three calls of two seconds' worth each, offered at once on three deployments.
    let spin = [message("spin")];
    let (a, b, c) = tokio::join!(
        noisy.ingest("s1", &spin, true),
        noisy.ingest("s2", &spin, true),
        noisy.ingest("s3", &spin, true),
    );
    for reply in [a, b, c] {
        reply.unwrap();
    }
    let elapsed = started.elapsed();
    let spent = noisy.usage().await.unwrap().fuel - before;
    assert!(spent >= 3 * per_message, "{spent}");
    #[expect(clippy::cast_precision_loss, reason = "a bound, not an exact figure")]
    let allowed = per_second as f64 * (elapsed.as_secs_f64() + 1.0) + (2 * per_message) as f64;
    #[expect(clippy::cast_precision_loss, reason = "a bound, not an exact figure")]
    let spent_f = spent as f64;
    assert!(
        spent_f <= allowed,
        "{spent} fuel in {elapsed:?}: calls starting together overdrew the {per_second}/s rate"
    );
}

#[tokio::test]
async fn byte_budgets_bound_queued_outputs_dead_letters_and_messages_in_flight() {
    const KIB: u64 = 1024;
    let data = tempfile::tempdir().unwrap();
    let server = common::serve(data.path());
    let admin = server.admin();
    let t = tenant(
        &admin,
        "t",
        Quotas {
            max_message_bytes: 600 * KIB,
            max_queued_output_bytes: 1024 * KIB,
            max_inflight_bytes: 1200 * KIB,
            max_dead_letter_bytes: 200 * KIB,
            ..roomy()
        },
    )
    .await;
    push(&t, "echo", weir_guests::ECHO, "echo", 1).await;
    push(&t, "temperature", weir_guests::TEMPERATURE, "temp", 1).await;
    t.deploy(&deployment("e", "echo")).await.unwrap();

    // Outputs nobody reads: calls go on until the outputs fill the queue's 1 MiB (the third
    // passes it), then stop; what comes in meanwhile waits in flight.
    let big = |n: usize| message(&format!("{n}{}", "x".repeat(500 * 1024)));
    // One at a time: each is processed (its output queued, its bytes no longer in flight)
    // before the next comes, so the in-flight budget never refuses these three.
    for n in 0..3 {
        t.ingest("e", &[big(n)], false).await.unwrap();
        eventually("the output queued", || async {
            runtime_field(&t, "e", "/outputs_queued").await == serde_json::json!(n + 1)
        })
        .await;
    }
    // In flight: a fourth and a fifth (1000 KiB of 1200 KiB); a sixth does not fit.
    t.ingest("e", &[big(3)], false).await.unwrap();
    t.ingest("e", &[big(4)], false).await.unwrap();
    let over = t.ingest("e", &[big(5)], false).await.unwrap_err();
    assert_eq!(over.code(), Some("rate_limited"), "{over}");
    assert_eq!(runtime_field(&t, "e", "/received").await, 5);
    assert_eq!(
        runtime_field(&t, "e", "/outputs_queued").await,
        3,
        "no call while the queue's bytes are full"
    );
    // The usage shows both budgets as they are held now (each item as the budgets count it:
    // topic, payload, properties and the few bytes of its timestamp's node id): the fourth
    // and fifth messages in flight, the three outputs queued.
    let payload = 1 + 500 * KIB;
    let within = |figure: Option<u64>, items: u64| {
        figure.is_some_and(|bytes| (items * payload..=items * (payload + 256)).contains(&bytes))
    };
    let mut usage = t.usage().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(within(usage.inflight_bytes, 2) && within(usage.queued_output_bytes, 3)) {
        assert!(
            Instant::now() < deadline,
            "the live budgets in the usage: {usage:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        usage = t.usage().await.unwrap();
    }
    // Reading frees the queue; nothing was lost.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.len() < 5 {
        assert!(Instant::now() < deadline, "outputs lost: {seen:?}");
        let reply = t.take_outputs("e", 10).await.unwrap();
        seen.extend(
            reply
                .outputs
                .unwrap_or_default()
                .into_iter()
                .map(|o| o.payload.chars().next().unwrap()),
        );
    }
    assert_eq!(seen, ['0', '1', '2', '3', '4']);
    eventually("both budgets empty in the usage", || async {
        let usage = t.usage().await.unwrap();
        (usage.inflight_bytes, usage.queued_output_bytes) == (Some(0), Some(0))
    })
    .await;

    // Dead letters: the payload is cut to 64 KiB, the size recorded, the oldest evicted.
    t.deploy(&deployment("bad", "temp")).await.unwrap();
    for n in 0..6 {
        t.ingest(
            "bad",
            &[message(&format!("{n}{}", "y".repeat(100 * 1024)))],
            true,
        )
        .await
        .unwrap();
    }
    let letters = t.dead_letters(Some("bad")).await.unwrap();
    assert_eq!(letters.len(), 3, "200 KiB hold three cut letters");
    for letter in &letters {
        assert_eq!(letter.payload.len(), 64 * 1024);
        assert!(letter.payload_truncated);
        assert_eq!(letter.input_bytes, 100 * KIB + 1 + "ingest".len() as u64);
    }
    assert_eq!(
        letters[0].payload.chars().next(),
        Some('3'),
        "the oldest went"
    );
    let usage = t.usage().await.unwrap();
    assert_eq!((usage.dead_letters, usage.dead_letters_evicted), (6, 3));
}

#[tokio::test]
async fn small_inputs_with_large_outputs_cannot_pile_up_past_the_output_budget() {
    const MIB: u64 = 1 << 20;
    let data = tempfile::tempdir().unwrap();
    let server = common::serve(data.path());
    let admin = server.admin();
    let t = tenant(
        &admin,
        "t",
        Quotas {
            max_message_bytes: 20 * MIB,
            max_queued_output_bytes: 4 * MIB,
            max_inflight_bytes: 4 * MIB,
            ..roomy()
        },
    )
    .await;
    push(&t, "huge", weir_guests::HUGE_OUTPUT, "huge", 1).await;
    let ids = ["h1", "h2", "h3"];
    for id in ids {
        t.deploy(&deployment(id, "huge")).await.unwrap();
        for _ in 0..8 {
            // Six bytes in, 5 MiB out.
            t.ingest(id, &[message("huge:5")], false).await.unwrap();
        }
    }
    // Read them one at a time: at no point does the server hold more made-and-unread outputs
    // than the budget (4 MiB: none of 5 MiB fits, one passes) plus two a node (one a node may be under
    // way when the budget fills, one more between a call's end and the sink counting it).
    let mut read = 0;
    // A liveness bound, not a speed figure: 120 MiB pass through wasm here, which took over
    // 3 minutes (at 360 MiB) on a 2-core machine at load 18.
    let deadline = Instant::now() + Duration::from_secs(300);
    while read < 24 {
        assert!(Instant::now() < deadline, "only {read} of 24 outputs read");
        let mut emitted = 0;
        for id in ids {
            emitted += runtime_field(&t, id, "/emitted").await.as_u64().unwrap();
        }
        let unread = emitted - read;
        assert!(
            unread <= 1 + 2 * 3,
            "{unread} outputs of 5 MiB made and unread"
        );
        for id in ids {
            read += t
                .take_outputs(id, 1)
                .await
                .unwrap()
                .outputs
                .unwrap_or_default()
                .len() as u64;
        }
    }
}

#[tokio::test]
async fn every_message_quota_is_enforced_at_its_limit_and_changes_apply_at_once() {
    let data = tempfile::tempdir().unwrap();
    let server = common::serve(data.path());
    let admin = server.admin();
    let quotas = Quotas {
        messages_per_second_in: 5,
        max_log_lines: 10,
        max_metric_series: 5,
        max_message_bytes: 64,
        ..roomy()
    };
    let q = tenant(&admin, "q", quotas.clone()).await;
    push(&q, "chatty", weir_guests::CHATTY, "chatty", 1).await;
    q.deploy(&deployment("c", "chatty")).await.unwrap();

    // messages_per_second_in = 5: five pass, the sixth waits for the advertised delay.
    let batch: Vec<IngestMessage> = (0..5).map(|i| message(&format!("m{i}"))).collect();
    assert_eq!(q.ingest("c", &batch, true).await.unwrap().accepted, 5);
    let limited = q.ingest("c", &[message("m5")], false).await.unwrap_err();
    assert_eq!(limited.code(), Some("rate_limited"));
    let wait = limited.retry_after().expect("Retry-After");
    assert!(
        wait >= Duration::from_secs(1) && wait <= Duration::from_secs(2),
        "{wait:?}"
    );
    let six: Vec<IngestMessage> = (0..6).map(|i| message(&format!("n{i}"))).collect();
    assert_eq!(
        code(q.ingest("c", &six, false).await),
        "payload_too_large",
        "a batch over a second's worth can never pass"
    );
    assert_eq!(runtime_field(&q, "c", "/received").await, 5);

    // max_message_bytes counts the topic and properties too.
    let long_topic = IngestMessage {
        topic: "t".repeat(100),
        ..message("x")
    };
    assert_eq!(
        code(q.ingest("c", &[long_topic], false).await),
        "payload_too_large"
    );
    // However short, each user property costs the host: 256 at most.
    let crowded = IngestMessage {
        user_properties: vec![(String::new(), String::new()); 257],
        ..message("x")
    };
    assert_eq!(
        code(q.ingest("c", &[crowded], false).await),
        "invalid_request"
    );
    // A message's topic is a topic name: not empty, no wildcards, no NUL.
    for topic in ["", "a/#", "a/+/b", "a\0b"] {
        let odd = IngestMessage {
            topic: topic.to_owned(),
            ..message("x")
        };
        let refused = q.ingest("c", &[odd], false).await.unwrap_err();
        assert_eq!(refused.code(), Some("invalid_request"), "{topic:?}");
        assert_eq!(refused.problem().unwrap().errors[0].path, "/0/topic");
    }

    // A quota change applies to the running deployment at once.
    admin
        .set_quotas(
            "q",
            &Quotas {
                messages_per_second_in: 1_000,
                ..quotas.clone()
            },
        )
        .await
        .unwrap();
    let forty: Vec<IngestMessage> = (10..50).map(|i| message(&format!("m{i}"))).collect();
    assert_eq!(q.ingest("c", &forty, true).await.unwrap().accepted, 40);
    let usage = q.usage().await.unwrap();
    assert_eq!(usage.messages_in, 45);
    assert_eq!(usage.bytes_in, 45 * ("ingest".len() as u64 + 3) - 5);
    assert_eq!(usage.messages_limited, 7);

    // max_log_lines = 10: the newest ten are kept, numbered for this tenant alone.
    let lines = q.logs(None, None).await.unwrap();
    assert_eq!(lines.len(), 10, "{lines:?}");
    assert!(lines.last().unwrap().message.contains("m49"));
    assert_eq!(
        lines.last().unwrap().seq,
        46,
        "one line per message, numbered from 1, and the one telling the module that its \
         max_metric_series quota dropped a series"
    );
    // max_metric_series = 5: 45 label values minted, five series kept.
    let series: Vec<_> = q
        .metrics()
        .await
        .unwrap()
        .into_iter()
        .filter(|s| s.name == "chatty_messages")
        .collect();
    assert_eq!(series.len(), 5);

    admin
        .set_quotas(
            "q",
            &Quotas {
                max_log_lines: 4,
                messages_per_second_in: 1_000,
                ..quotas
            },
        )
        .await
        .unwrap();
    assert_eq!(q.logs(None, None).await.unwrap().len(), 4);
}

#[tokio::test]
async fn a_refused_batch_takes_nothing() {
    let data = tempfile::tempdir().unwrap();
    let server = common::serve(data.path());
    let admin = server.admin();
    let t = tenant(
        &admin,
        "t",
        Quotas {
            max_queued_output_bytes: 2_000,
            ..roomy()
        },
    )
    .await;
    push(&t, "echo", weir_guests::ECHO, "echo", 1).await;
    t.deploy(&deployment("e", "echo")).await.unwrap();

    let batch = |n: usize| -> Vec<IngestMessage> {
        (0..n).map(|i| message(&format!("{i:0>90}"))).collect()
    };
    // Larger than the intake: refused whole, up front.
    assert_eq!(
        code(t.ingest("e", &batch(1_025), false).await),
        "payload_too_large"
    );
    assert_eq!(t.usage().await.unwrap().messages_in, 0);

    // The queue holds ~20 outputs; 600 more wait in flight; 600 more do not fit: refused
    // whole, nothing of it taken.
    t.ingest("e", &batch(600), false).await.unwrap();
    let refused = t.ingest("e", &batch(600), false).await.unwrap_err();
    assert_eq!(refused.code(), Some("rate_limited"), "{refused}");
    let mut read = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while read < 600 {
        assert!(Instant::now() < deadline, "only {read} outputs");
        read += t
            .take_outputs("e", 1_000)
            .await
            .unwrap()
            .outputs
            .unwrap_or_default()
            .len();
    }
    assert_eq!(read, 600);
    assert_eq!(runtime_field(&t, "e", "/received").await, 600);
    assert_eq!(t.usage().await.unwrap().messages_in, 600);
}

#[tokio::test]
async fn dead_letters_never_carry_the_hosts_backtrace() {
    let data = tempfile::tempdir().unwrap();
    let server = common::serve_with_env(data.path(), &[], &[("RUST_BACKTRACE", "1")]);
    let admin = server.admin();
    let t = tenant(&admin, "t", roomy()).await;
    push(&t, "trap", weir_guests::TRAP, "trap", 1).await;
    t.deploy(&deployment("trap", "trap")).await.unwrap();
    t.ingest("trap", &[message("trap")], true).await.unwrap();
    let letters = t.dead_letters(None).await.unwrap();
    assert_eq!(letters.len(), 1);
    let detail = &letters[0].detail;
    assert_eq!(letters[0].reason, "trap");
    assert!(detail.contains("wasm backtrace"), "{detail}");
    for host in [
        "stack backtrace",
        "Stack backtrace",
        "/rustc/",
        ".cargo/registry",
        "wasmtime::",
    ] {
        assert!(!detail.contains(host), "{host:?} in {detail}");
    }
}

#[tokio::test]
async fn dead_letters_and_log_lines_are_numbered_per_tenant() {
    let data = tempfile::tempdir().unwrap();
    let server = common::serve(data.path());
    let admin = server.admin();
    let busy = tenant(&admin, "busy", roomy()).await;
    let calm = tenant(&admin, "calm", roomy()).await;
    for client in [&busy, &calm] {
        push(client, "chatty", weir_guests::CHATTY, "chatty", 1).await;
        push(client, "trap", weir_guests::TRAP, "trap", 1).await;
        client.deploy(&deployment("c", "chatty")).await.unwrap();
        client.deploy(&deployment("t", "trap")).await.unwrap();
    }
    let many: Vec<IngestMessage> = (0..30).map(|i| message(&format!("{i}"))).collect();
    busy.ingest("c", &many, true).await.unwrap();
    for _ in 0..3 {
        busy.ingest("t", &[message("error")], true).await.unwrap();
    }
    calm.ingest("c", &[message("only")], true).await.unwrap();
    calm.ingest("t", &[message("error")], true).await.unwrap();
    let letters = calm.dead_letters(None).await.unwrap();
    assert_eq!(letters.iter().map(|l| l.seq).collect::<Vec<_>>(), [1]);
    let lines = calm.logs(Some("c"), None).await.unwrap();
    assert_eq!(lines.iter().map(|l| l.seq).collect::<Vec<_>>(), [1]);
    // The owner's view is the same tenant's numbering.
    let owner = token(&admin, "calm", Role::Owner).await;
    assert_eq!(owner.dead_letters(None).await.unwrap()[0].seq, 1);
}

#[tokio::test]
async fn per_call_limits_follow_a_quota_change_on_running_deployments() {
    let data = tempfile::tempdir().unwrap();
    let server = common::serve(data.path());
    let admin = server.admin();
    let quotas = Quotas {
        fuel_per_message: 40_000_000,
        ..roomy()
    };
    let t = tenant(&admin, "t", quotas.clone()).await;
    push(&t, "spin", weir_guests::SPIN_LOOP, "spin", 1).await;
    push(&t, "chatty", weir_guests::CHATTY, "chatty", 1).await;
    t.deploy(&deployment("spin", "spin")).await.unwrap();
    t.deploy(&deployment("chatty", "chatty")).await.unwrap();
    t.ingest("spin", &[message("spin")], true).await.unwrap();
    t.ingest("chatty", &[message(&"x".repeat(100))], true)
        .await
        .unwrap();

    admin
        .set_quotas(
            "t",
            &Quotas {
                fuel_per_message: 7_000_000,
                max_log_line_bytes: 20,
                ..quotas
            },
        )
        .await
        .unwrap();
    t.ingest("spin", &[message("spin")], true).await.unwrap();
    t.ingest("chatty", &[message(&"y".repeat(100))], true)
        .await
        .unwrap();

    let letters = t.dead_letters(Some("spin")).await.unwrap();
    let budgets: Vec<&str> = letters.iter().map(|l| l.detail.as_str()).collect();
    assert!(budgets[0].contains("40000000"), "{budgets:?}");
    assert!(budgets[1].contains("7000000 units"), "{budgets:?}");
    let lines = t.logs(Some("chatty"), None).await.unwrap();
    let saw: Vec<&str> = lines
        .iter()
        .map(|l| l.message.as_str())
        .filter(|m| m.starts_with("saw"))
        .collect();
    assert!(saw[0].contains(&"x".repeat(100)), "{saw:?}");
    assert!(
        saw[1].contains("bytes cut") && !saw[1].contains(&"y".repeat(30)),
        "{saw:?}"
    );
}
