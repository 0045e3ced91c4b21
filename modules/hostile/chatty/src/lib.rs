//! Hostile: every message writes a log line and records a counter under a label minted from
//! its payload, so a stream of distinct payloads mints unbounded log lines and metric series.
//! The host must hold the tenant to `max_log_lines` and `max_metric_series`. Passes the
//! message through unchanged.

use weir_sdk::logger::{self, Level};
use weir_sdk::macros::map_operator;
use weir_sdk::metrics::{self, CounterValue, Label};

#[map_operator]
fn chatty(input: DataModel) -> Result<DataModel, Error> {
    if let DataModel::Message(message) = &input {
        let payload = String::from_utf8_lossy(&message.payload.read()).into_owned();
        logger::log(Level::Info, "chatty", &format!("saw {payload}"));
        let labels = [Label {
            key: "payload".to_owned(),
            value: payload,
        }];
        let _ = metrics::add_to_counter("chatty_messages", CounterValue::U64(1), Some(&labels));
    }
    Ok(input)
}
