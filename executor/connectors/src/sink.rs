//! The sink seam: the executor hands a sink its deployment's outputs in batches and accepts
//! them (settling the source messages they derive from) once the sink returns.

use async_trait::async_trait;

use crate::message::Outbound;

/// An output the broker refused for good (it can never be published as it is): it goes to the
/// dead letters with this reason instead of being retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Its index in the batch.
    pub index: usize,
    /// A stable reason code (`invalid_otlp_payload`, `message_too_large`, …).
    pub reason: String,
    /// What was wrong, for the tenant.
    pub detail: String,
}

/// What became of a batch: every output not rejected was accepted by the broker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendReport {
    /// The outputs refused for good.
    pub rejected: Vec<Rejection>,
}

/// A running sink.
#[async_trait]
pub trait Sink: Send + std::fmt::Debug {
    /// Publishes `batch` and returns once the broker accepted every output (MQTT PUBACK at QoS 1,
    /// a Kafka delivery report, an OTLP export reply), or refused some for good (in the
    /// report). While the broker cannot be reached it retries with backoff and reports so in
    /// its status; it returns [`crate::ConnectorError`] only when it cannot go on. Outputs are
    /// never dropped: an output is either accepted, rejected (dead letters) or still pending.
    async fn send(&mut self, batch: Vec<Outbound>) -> Result<SendReport, crate::ConnectorError>;

    /// Most outputs one [`Sink::send`] takes.
    fn max_batch(&self) -> usize {
        256
    }

    /// The queue weir's API reads outputs from: only the built-in HTTP sink has one.
    fn http_outputs(&self) -> Option<crate::http::HttpOutputs> {
        None
    }
}
