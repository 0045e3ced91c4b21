//! Messages as they cross the edge of a deployment (azure-compat 4.2).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// How a source message is acknowledged to its broker once everything derived from it was
/// accepted: plain data, so it can cross a process boundary.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Ack {
    /// A message the broker does not wait for (HTTP ingest, MQTT QoS 0), numbered by its source.
    Sequence(u64),
    /// An MQTT v5 QoS 1 PUBLISH: its packet id on one connection of the source. Packet ids are
    /// reused per connection, so an ack for an older connection (`generation`) is dropped: the
    /// broker redelivers that message on the new connection (connector-pitfalls, rumqttc).
    Mqtt {
        /// The connection the PUBLISH arrived on, counted by the source from 1.
        generation: u64,
        /// Its packet identifier (MQTT v5 §2.2.1).
        packet_id: u16,
    },
    /// A Kafka record: committing it commits every lower offset of its partition, so the source
    /// commits only the contiguous acknowledged prefix of each partition.
    Kafka {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The record's offset.
        offset: i64,
    },
}

/// A message a source read, with the acknowledgement it is settled by (azure-compat 4.2: topic,
/// payload, content type and user properties in order; Kafka's key as user property `__key`,
/// section 11 row 8). A `__ts` user property is kept: the executor stamps the message from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    /// The topic it arrived on (MQTT topic name, Kafka topic).
    pub topic: Bytes,
    /// The body.
    pub payload: Bytes,
    /// The MQTT v5 content type, if any.
    pub content_type: Option<Bytes>,
    /// User properties (MQTT v5) or headers (Kafka), in order, duplicates kept.
    pub user_properties: Vec<(Bytes, Bytes)>,
    /// How to acknowledge it.
    pub ack: Ack,
    /// The Kafka partition assignment it was read under (Kafka sources only): revoked when the
    /// consumer group takes the partition away, so what still holds the record (a keyed
    /// window) knows its partition's next owner reads it again.
    pub assignment: Option<PartitionAssignment>,
}

/// One assignment of a Kafka partition to one consumer, from the group's assign to its
/// revoke (a partition assigned again gets a new one). Clones share it; equal when shared.
#[derive(Debug, Clone, Default)]
pub struct PartitionAssignment(Arc<AtomicBool>);

impl PartitionAssignment {
    /// A live assignment.
    pub fn new() -> Self {
        Self::default()
    }

    /// The group took the partition away.
    pub fn revoke(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Whether the group took the partition away.
    pub fn is_revoked(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

impl PartialEq for PartitionAssignment {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for PartitionAssignment {}

impl Inbound {
    /// Its size as `max_message_bytes` counts it: topic, payload and user properties.
    pub fn byte_len(&self) -> u64 {
        let properties: usize = self
            .user_properties
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum();
        (self.topic.len() + self.payload.len() + properties) as u64
    }
}

/// A message a sink publishes: the sink operation's output with its topic resolved
/// ([`expand_topic`]) and `__ts` among its user properties (azure-compat section 11 row 11).
pub struct Outbound {
    /// The topic to publish to.
    pub topic: Bytes,
    /// The body.
    pub payload: Bytes,
    /// The content type, if the output has one.
    pub content_type: Option<Bytes>,
    /// User properties (MQTT v5) or headers (Kafka), in order; a `__key` property is the Kafka
    /// record key instead of a header.
    pub user_properties: Vec<(Bytes, Bytes)>,
    /// What the executor holds for this output until it is dropped (the tenant's queued-output
    /// bytes): a sink that keeps the message (the HTTP output queue) keeps this with it.
    pub hold: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("topic", &self.topic)
            .field("payload", &self.payload.len())
            .field("content_type", &self.content_type)
            .field("user_properties", &self.user_properties.len())
            .finish_non_exhaustive()
    }
}

impl Outbound {
    /// An output on `topic` with no content type, properties or hold.
    pub fn new(topic: impl Into<Bytes>, payload: impl Into<Bytes>) -> Self {
        Self {
            topic: topic.into(),
            payload: payload.into(),
            content_type: None,
            user_properties: Vec::new(),
            hold: None,
        }
    }

    /// The value of the first user property named `key`.
    pub fn user_property(&self, key: &[u8]) -> Option<&Bytes> {
        self.user_properties
            .iter()
            .find(|(k, _)| k.as_ref() == key)
            .map(|(_, v)| v)
    }
}

/// The topic a sink publishes an output to: the binding's topic, with `${outputTopic}` replaced
/// by the output's own topic (azure-compat section 11 row 11). An empty binding topic means the
/// output's own topic.
pub fn expand_topic(binding_topic: &str, output_topic: &[u8]) -> Bytes {
    if binding_topic.is_empty() {
        return Bytes::copy_from_slice(output_topic);
    }
    if !binding_topic.contains("${outputTopic}") {
        return Bytes::copy_from_slice(binding_topic.as_bytes());
    }
    let own = String::from_utf8_lossy(output_topic);
    Bytes::from(binding_topic.replace("${outputTopic}", &own))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_topic_expands_in_the_binding_topic() {
        assert_eq!(expand_topic("out/${outputTopic}/x", b"a/b"), "out/a/b/x");
        assert_eq!(expand_topic("fixed", b"a/b"), "fixed");
        assert_eq!(expand_topic("", b"a/b"), "a/b");
    }
}
