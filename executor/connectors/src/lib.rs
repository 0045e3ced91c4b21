//! Moves messages between brokers and deployments: the [`Source`] and [`Sink`] seams, the
//! [`Registry`] of connectors by endpoint kind, and a [`conformance`] suite every connector runs.
//!
//! A connector is one folder (`src/<kind>/`) and one line in [`Registry::standard`]. It turns an
//! endpoint (address, settings, write-only secret) and a binding (topics) into a source or a
//! sink, after a pure check that reports every problem with its path.
//!
//! Acknowledgements are data ([`Ack`]: a sequence number, an MQTT packet id of a connection
//! generation, a Kafka offset), never closures, so they can cross a process boundary: the
//! executor sends a message's [`Ack`] back to its source (through [`AckReceiver`]) once every
//! output derived from it was accepted by the sink or the dead letters (at-least-once,
//! ARCHITECTURE decision 7). Message mapping at the edges follows azure-compat 4.2 and rows 8
//! and 11 of its section 11.
//!
//! Every outbound connection goes through the egress rule ([`weir_api::egress::Egress`]) on
//! every connect and reconnect, with connect and read timeouts ([`ConnectContext`]). This crate
//! never depends on wasmtime.

mod message;
mod registry;
mod sink;
mod source;
mod spec;
mod status;

pub mod conformance;
pub mod http;
pub mod kafka;
pub mod mqtt;
pub mod otlp;

pub use message::{Ack, Inbound, Outbound, PartitionAssignment, expand_topic};
pub use registry::{Connector, Registry};
pub use sink::{Rejection, SendReport, Sink};
pub use source::{
    AckReceiver, AckSender, Intake, IntakeRefusal, RetireSignal, Retirement, Settled, Source,
    ack_channel,
};
pub use spec::{ConnectContext, EndpointSpec, Problem, SinkSpec, SourceSpec};
pub use status::{ConnectionState, ConnectionStatus};

/// Why a connector could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// The endpoint or binding is not valid for this connector: every problem, with its path.
    #[error("the endpoint or binding is not valid: {}", problems_text(.0))]
    Invalid(Vec<Problem>),
    /// The egress rule refused the address (the platform's own network).
    #[error(transparent)]
    Egress(#[from] weir_api::egress::EgressError),
    /// The broker could not be reached or dropped the connection; the connector retries with
    /// backoff, and the deployment's status says so meanwhile.
    #[error("{0}")]
    Unavailable(String),
    /// The broker refused the credentials or the operation (not retried as is).
    #[error("the broker refused: {0}")]
    Refused(String),
    /// The deployment stopped.
    #[error("the connector was closed")]
    Closed,
}

fn problems_text(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("{}: {}", p.path, p.message))
        .collect::<Vec<_>>()
        .join("; ")
}
