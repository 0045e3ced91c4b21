use bytes::Bytes;

use crate::Hlc;

/// One item of a stream as the host holds it: the host-side mirror of the WIT `data-model`.
/// Bytes are [`Bytes`], so handing the same item to several operators (fan-out, filter, branch)
/// copies nothing.
#[derive(Debug, Clone, PartialEq)]
pub enum DataItem {
    /// Bare bytes.
    Bytes(Bytes),
    /// A broker message.
    Message(Message),
    /// An image frame.
    Snapshot(Snapshot),
}

impl DataItem {
    /// Total bytes the item carries: what size limits count.
    pub fn byte_len(&self) -> usize {
        match self {
            Self::Bytes(bytes) => bytes.len(),
            Self::Message(message) => message.byte_len(),
            Self::Snapshot(snapshot) => {
                snapshot.format.len() + snapshot.frame.len() + snapshot.timestamp.node_id.len()
            }
        }
    }

    /// The embedded timestamp, where the item has one.
    pub fn timestamp(&self) -> Option<&Hlc> {
        match self {
            Self::Bytes(_) => None,
            Self::Message(message) => Some(&message.timestamp),
            Self::Snapshot(snapshot) => Some(&snapshot.timestamp),
        }
    }
}

/// A broker message (MQTT v5 or Kafka).
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The message's own timestamp (from `__ts`, or the source's clock).
    pub timestamp: Hlc,
    /// The topic it arrived on or is bound for.
    pub topic: Bytes,
    /// The MQTT content type.
    pub content_type: Option<Bytes>,
    /// The body.
    pub payload: Bytes,
    /// MQTT v5 user properties in order; keys may repeat.
    pub user_properties: Vec<(Bytes, Bytes)>,
    /// The payload's schema, when known.
    pub schema: Option<MessageSchema>,
}

impl Message {
    /// A message with only a topic and a payload.
    pub fn new(timestamp: Hlc, topic: impl Into<Bytes>, payload: impl Into<Bytes>) -> Self {
        Self {
            timestamp,
            topic: topic.into(),
            content_type: None,
            payload: payload.into(),
            user_properties: Vec::new(),
            schema: None,
        }
    }

    /// The value of the first user property named `key`.
    pub fn user_property(&self, key: &[u8]) -> Option<&Bytes> {
        self.user_properties
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    fn byte_len(&self) -> usize {
        let properties: usize = self
            .user_properties
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum();
        let schema = match &self.schema {
            None => 0,
            Some(MessageSchema::RegistryReference(reference)) => reference.len(),
            Some(MessageSchema::Inline { name, content }) => name.len() + content.len(),
        };
        self.topic.len()
            + self.payload.len()
            + self.content_type.as_ref().map_or(0, Bytes::len)
            + self.timestamp.node_id.len()
            + properties
            + schema
    }
}

/// The schema attached to a message.
#[derive(Debug, Clone, PartialEq)]
pub enum MessageSchema {
    /// A reference into a schema registry.
    RegistryReference(Bytes),
    /// The schema itself.
    Inline {
        /// Its name.
        name: Bytes,
        /// Its text.
        content: Bytes,
    },
}

/// An image frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// When it was taken.
    pub timestamp: Hlc,
    /// Pixel format, e.g. `rgb24`.
    pub format: Bytes,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// The pixels.
    pub frame: Bytes,
}
