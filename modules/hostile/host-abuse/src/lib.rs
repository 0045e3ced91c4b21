//! Hostile: calls every host interface with bad arguments (empty and oversized keys, values
//! over quota, stale and future fencing tokens, a metric reused as another kind, oversized log
//! lines, the RPC client and the schema registry) and answers with one line per call saying
//! what came back. Every call must return an error value; none may trap or reach another tenant.

use weir_sdk::command_invoker::{CommandInvokerOptionsBuilder, CommandRequestBuilder, new_invoker};
use weir_sdk::logger::{self, Level};
use weir_sdk::macros::map_operator;
use weir_sdk::metrics::{self, CounterValue, HistogramValue, Label};
use weir_sdk::schema_registry;
use weir_sdk::state_store::{self, HybridLogicalClock, SetConditions, SetOptions, Timespec};

fn far_future_token() -> HybridLogicalClock {
    HybridLogicalClock {
        timestamp: Timespec {
            secs: u64::MAX / 2,
            nanos: 0,
        },
        counter: 0,
        node_id: "attacker".to_owned(),
    }
}

#[map_operator]
fn abuse(input: DataModel) -> Result<DataModel, Error> {
    let mut report: Vec<String> = Vec::new();
    let mut record = |name: &str, outcome: String| report.push(format!("{name}: {outcome}"));

    record(
        "get empty key",
        format!("{:?}", state_store::get(b"", None).map(|r| r.response)),
    );
    let huge_key = vec![b'k'; 1 << 20];
    record(
        "get huge key",
        format!(
            "{:?}",
            state_store::get(&huge_key, None).map(|r| r.response)
        ),
    );
    let huge_value = vec![b'v'; 8 << 20];
    record(
        "set huge value",
        format!(
            "{:?}",
            state_store::set(b"big", &huge_value, None, None, SetOptions::default())
                .map(|r| r.response)
        ),
    );
    // A fenced write, then a write with an older token.
    let fenced = state_store::set(
        b"fenced",
        b"1",
        None,
        Some(&far_future_token()),
        SetOptions::default(),
    );
    record(
        "set future fencing token",
        format!("{:?}", fenced.map(|r| r.response)),
    );
    let stale = HybridLogicalClock {
        timestamp: Timespec { secs: 1, nanos: 0 },
        counter: 0,
        node_id: String::new(),
    };
    let _ = state_store::set(b"fenced2", b"1", None, None, SetOptions::default());
    record(
        "del with unknown fencing token",
        format!(
            "{:?}",
            state_store::del(b"fenced2", Some(&stale), None).map(|r| r.response)
        ),
    );
    record(
        "vdel missing key",
        format!(
            "{:?}",
            state_store::vdel(b"missing", b"x", None, None).map(|r| r.response)
        ),
    );
    let options = SetOptions {
        conditions: SetConditions::OnlyIfDoesNotExist,
        expires: Some(state_store::Duration {
            seconds: u64::MAX,
            nanos: u32::MAX,
        }),
    };
    record(
        "set absurd expiry",
        format!(
            "{:?}",
            state_store::set(b"exp", b"1", None, None, options).map(|r| r.response)
        ),
    );
    record(
        "get zero timeout",
        format!(
            "{:?}",
            state_store::get(
                b"exp",
                Some(state_store::Duration {
                    seconds: 0,
                    nanos: 0
                })
            )
            .map(|r| r.response)
        ),
    );
    // Reads another tenant's key by naming it: the host scopes every key, so this sees nothing.
    record(
        "get foreign-looking key",
        format!(
            "{:?}",
            state_store::get(b"tenant-b/secret", None).map(|r| r.response)
        ),
    );

    let labels = vec![Label {
        key: "k".to_owned(),
        value: "v".to_owned(),
    }];
    let _ = metrics::add_to_counter("mixed", CounterValue::U64(1), Some(&labels));
    record(
        "histogram on a counter name",
        format!(
            "{:?}",
            metrics::record_to_histogram("mixed", HistogramValue::F64(1.0), Some(&labels))
        ),
    );
    record(
        "histogram NaN",
        format!(
            "{:?}",
            metrics::record_to_histogram("nan", HistogramValue::F64(f64::NAN), None)
        ),
    );
    let many: Vec<Label> = (0..10_000)
        .map(|i| Label {
            key: format!("k{i}"),
            value: "x".repeat(100),
        })
        .collect();
    record(
        "counter 10k labels",
        format!(
            "{:?}",
            metrics::add_to_counter("many", CounterValue::U64(1), Some(&many))
        ),
    );
    let long_name = "n".repeat(1 << 20);
    record(
        "counter huge name",
        format!(
            "{:?}",
            metrics::add_to_counter(&long_name, CounterValue::U64(1), None)
        ),
    );

    logger::log(Level::Critical, &"c".repeat(1 << 20), &"m".repeat(4 << 20));
    record("log 5 MiB", "returned".to_owned());

    let builder = CommandRequestBuilder::new();
    let request = builder.payload(b"x").and_then(|b| b.build());
    record(
        "rpc build request",
        format!("{:?}", request.as_ref().map(|_| "built")),
    );
    let invoker = CommandInvokerOptionsBuilder::new()
        .command_name("c")
        .and_then(|b| b.build())
        .and_then(new_invoker);
    record(
        "rpc new invoker",
        format!("{:?}", invoker.as_ref().map(|_| "invoker")),
    );
    record(
        "schema registry get",
        format!(
            "{:?}",
            schema_registry::get("id", "1", (1, 0)).map(|s| s.name)
        ),
    );

    let DataModel::Message(mut message) = input else {
        return Ok(input);
    };
    message.payload = BufferOrBytes::Bytes(report.join("\n").into_bytes());
    Ok(DataModel::Message(message))
}
