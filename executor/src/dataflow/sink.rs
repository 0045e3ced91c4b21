//! The sink operator: hands each item to the deployment's output queue with the outgoing
//! `__ts` user property (a reading of the deployment's HLC at or after the item's dataflow
//! time, azure-compat §11 row 11), and reports when its input is complete.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use weir_api::{DataItem, Hlc};

use super::DeploymentShared;
use super::envelope::{Envelope, HeldBytes, SinkOutput};

pub(crate) fn build(
    input: Stream<'_, u64, Vec<Envelope>>,
    name: &str,
    shared: &Arc<DeploymentShared>,
) {
    let shared = shared.clone();
    let sink = name.to_owned();
    let mut closed = false;
    input.sink(Pipeline, name, move |(input, frontier)| {
        input.for_each(|cap, data| {
            let Some(&time) = cap.least() else { return };
            let mut batch = Vec::with_capacity(data.len());
            for envelope in data.drain(..) {
                // A real reading of the deployment's clock, at or after the item's time:
                // unique and increasing across the deployment's outputs.
                let stamp = shared
                    .clock
                    .update(&Hlc::at(Duration::from_millis(time), String::new()));
                let item = with_outgoing_ts(envelope.item, &stamp);
                // Counted from here until a reader takes it: the tenant's operators wait
                // while its outputs nobody reads fill `max_queued_output_bytes`.
                let held =
                    HeldBytes::new(shared.queued_output_bytes.clone(), item.byte_len() as u64);
                batch.push(SinkOutput {
                    sink: sink.clone(),
                    time,
                    item,
                    acks: envelope.acks,
                    held: Some(held),
                });
            }
            shared
                .stats
                .emitted
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            // One lock and one wake-up per batch, not per item.
            shared.outputs.push_all(batch);
        });
        if !closed && frontier.is_empty() {
            closed = true;
            shared.sink_closed();
        }
    });
}

/// Sets the `__ts` user property of a message to `time` (replacing any incoming one).
fn with_outgoing_ts(item: DataItem, time: &Hlc) -> DataItem {
    match item {
        DataItem::Message(mut message) => {
            message
                .user_properties
                .retain(|(k, _)| k.as_ref() != b"__ts");
            message
                .user_properties
                .push((Bytes::from_static(b"__ts"), Bytes::from(time.to_ts())));
            DataItem::Message(message)
        }
        other => other,
    }
}
