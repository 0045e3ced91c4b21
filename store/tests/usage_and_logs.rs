//! Usage counters and module log lines in the SQLite control store, on a real file: totals,
//! hours and days add up across reopens, tenants stay apart, logs are numbered and trimmed to
//! `max_log_lines` per tenant.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed expectation is a failed test"
)]

use weir_api::TenantId;
use weir_store::{
    ControlStore, ModuleLogRecord, SqliteControlStore, TenantRecord, UsageCounters, UsageDelta,
};
use weir_tenants::Quotas;

fn id(text: &str) -> TenantId {
    TenantId::new(text).unwrap()
}

fn tenant(text: &str) -> TenantRecord {
    TenantRecord {
        id: id(text),
        display_name: text.to_owned(),
        quotas: Quotas::default(),
        suspended: false,
        created_at: 0,
        instance: String::new(),
    }
}

const HOUR: u64 = 3_600_000;

fn delta(t: &str, hour: u64, messages: u64) -> UsageDelta {
    UsageDelta {
        tenant: id(t),
        hour_start_ms: hour * HOUR + 17,
        counters: UsageCounters {
            fuel: messages * 100,
            messages_in: messages,
            messages_out: messages,
            bytes_in: messages * 10,
            state_ops: 1,
        },
    }
}

#[tokio::test]
async fn usage_adds_up_per_hour_day_and_total_across_reopens_and_tenants_stay_apart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.db");
    // Day 1000 (hours 24000..), hours 24000 and 24001, then day 1001.
    {
        let store = SqliteControlStore::open(&path).unwrap();
        store.create_tenant(&tenant("a")).await.unwrap();
        store.create_tenant(&tenant("b")).await.unwrap();
        store
            .add_usage(vec![delta("a", 24_000, 3), delta("b", 24_000, 5)])
            .await
            .unwrap();
        store
            .add_usage(vec![delta("a", 24_000, 2), delta("gone", 24_000, 9)])
            .await
            .unwrap();
    }
    let store = SqliteControlStore::open(&path).unwrap();
    store
        .add_usage(vec![delta("a", 24_001, 1), delta("a", 24_024, 4)])
        .await
        .unwrap();
    let (total, periods) = store.usage(&id("a"), 0).await.unwrap();
    assert_eq!(total.messages_in, 10);
    assert_eq!(total.fuel, 1000);
    assert_eq!(total.state_ops, 4);
    let hours: Vec<(u64, u64)> = periods
        .iter()
        .filter(|p| p.period == "hour")
        .map(|p| (p.start_ms / HOUR, p.counters.messages_in))
        .collect();
    assert_eq!(hours, vec![(24_000, 5), (24_001, 1), (24_024, 4)]);
    let days: Vec<(u64, u64)> = periods
        .iter()
        .filter(|p| p.period == "day")
        .map(|p| (p.start_ms / (24 * HOUR), p.counters.messages_in))
        .collect();
    assert_eq!(days, vec![(1000, 6), (1001, 4)]);
    let (b, b_periods) = store.usage(&id("b"), 0).await.unwrap();
    assert_eq!(b.messages_in, 5, "b's own work only");
    assert_eq!(b_periods.len(), 2);
    let (_, recent) = store.usage(&id("a"), 24_001 * HOUR).await.unwrap();
    assert_eq!(recent.len(), 3, "{recent:?}");
}

fn line(deployment: &str, message: &str) -> ModuleLogRecord {
    ModuleLogRecord {
        seq: 0,
        at_ms: 1,
        level: "info".to_owned(),
        deployment: Some(deployment.to_owned()),
        node: "n".to_owned(),
        message: message.to_owned(),
    }
}

#[tokio::test]
async fn module_logs_are_numbered_kept_across_reopens_and_trimmed_per_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.db");
    {
        let store = SqliteControlStore::open(&path).unwrap();
        store.create_tenant(&tenant("a")).await.unwrap();
        store.create_tenant(&tenant("b")).await.unwrap();
        let lines = (0..5).map(|i| line("d", &format!("a{i}"))).collect();
        store.append_module_logs(&id("a"), lines, 3).await.unwrap();
        store
            .append_module_logs(&id("b"), vec![line("e", "b0")], 3)
            .await
            .unwrap();
    }
    let store = SqliteControlStore::open(&path).unwrap();
    let kept = store
        .module_logs(&id("a"), None, 0, 100, false)
        .await
        .unwrap();
    let seen: Vec<(u64, &str)> = kept.iter().map(|l| (l.seq, l.message.as_str())).collect();
    assert_eq!(seen, vec![(3, "a2"), (4, "a3"), (5, "a4")]);
    store
        .append_module_logs(&id("a"), vec![line("x", "a5")], 3)
        .await
        .unwrap();
    let after = store
        .module_logs(&id("a"), None, 4, 100, false)
        .await
        .unwrap();
    let seen: Vec<(u64, &str)> = after.iter().map(|l| (l.seq, l.message.as_str())).collect();
    assert_eq!(seen, vec![(5, "a4"), (6, "a5")]);
    let only_x = store
        .module_logs(&id("a"), Some("x"), 0, 100, false)
        .await
        .unwrap();
    assert_eq!(only_x.len(), 1);
    let newest = store.module_logs(&id("a"), None, 0, 2, true).await.unwrap();
    let seen: Vec<u64> = newest.iter().map(|l| l.seq).collect();
    assert_eq!(seen, vec![5, 6], "the newest 2, oldest first");
    assert_eq!(store.module_log_count(&id("a")).await.unwrap(), 3);
    assert_eq!(store.module_log_count(&id("b")).await.unwrap(), 1);
    let b = store
        .module_logs(&id("b"), None, 0, 100, false)
        .await
        .unwrap();
    assert_eq!(b.len(), 1, "b sees its own line only");
    assert_eq!(b[0].message, "b0");
}
