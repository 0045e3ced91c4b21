//! The source seam: a connector reads from its broker and offers messages to the deployment's
//! [`Intake`]; the executor settles each message through the [`AckReceiver`].

use std::sync::Arc;

use async_trait::async_trait;

use crate::message::{Ack, Inbound};

/// How a source message ended, sent back to its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// Everything derived from it reached the sink or the dead letters: acknowledge it to the
    /// broker (MQTT PUBACK, Kafka offset commit).
    Processed(Ack),
    /// The deployment stopped before it was processed: do not acknowledge; the broker
    /// redelivers it (a persistent MQTT session, an uncommitted Kafka offset).
    Abandoned(Ack),
}

/// The sending half of a source's settlements (the executor's end). Settlements are sent with
/// `try_send`: each message in flight settles once and messages in flight are bounded by the
/// deployment's intake, so a channel of the intake's capacity never fills. (Were one lost, its
/// message would only be redelivered: at-least-once holds either way.)
pub type AckSender = tokio::sync::mpsc::Sender<Settled>;
/// The receiving half (the source's end).
pub type AckReceiver = tokio::sync::mpsc::Receiver<Settled>;

/// A settlement channel for a source whose intake holds at most `in_flight` messages.
pub fn ack_channel(in_flight: usize) -> (AckSender, AckReceiver) {
    tokio::sync::mpsc::channel(in_flight.max(1))
}

/// Why the intake did not take a batch. Nothing of the batch was taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntakeRefusal {
    /// No room now (the deployment is behind, or the tenant's in-flight bytes are taken): wait
    /// for [`Intake::room`] and offer again; the broker keeps the message meanwhile.
    #[error("{0}")]
    Full(String),
    /// The batch can never fit (too many messages, or more bytes than the tenant's budget):
    /// split it.
    #[error("{0}")]
    TooLarge(String),
    /// The deployment is gone: stop.
    #[error("the deployment no longer takes messages")]
    Closed,
}

/// Where a source offers messages: the deployment's intake, implemented by the executor.
#[async_trait]
pub trait Intake: Send + Sync + std::fmt::Debug {
    /// Offers `batch`, all or nothing. Each message's [`Ack`] comes back on the source's
    /// [`AckReceiver`] once it is settled, exactly once.
    fn try_offer(&self, batch: Vec<Inbound>) -> Result<(), IntakeRefusal>;
    /// Resolves when a refused offer may fit (messages in flight settled), or after a short
    /// while; offer again then.
    async fn room(&self);
}

/// A running source: reads from its broker, offers to the intake, acknowledges settled
/// messages to the broker, and reconnects (with backoff, through the egress rule) until the
/// deployment stops. A message is acknowledged only when it was [`Settled::Processed`].
#[async_trait]
pub trait Source: Send + std::fmt::Debug {
    /// Runs until `intake` is closed or the task is aborted. Connection problems are reported
    /// in the status of its [`crate::ConnectContext`] and retried, never returned; an error is
    /// returned only when the source cannot go on (refused credentials, closed intake).
    async fn run(
        self: Box<Self>,
        intake: Arc<dyn Intake>,
        acks: AckReceiver,
    ) -> Result<(), crate::ConnectorError>;

    /// The handle weir's API offers ingested messages through: only the built-in HTTP source
    /// has one.
    fn http_ingress(&self) -> Option<crate::http::HttpIngress> {
        None
    }

    /// Whether the source answers its context's [`RetireSignal`] itself: it stops taking new
    /// input from its broker, finishes every message it took (all settled and acknowledged),
    /// ends its broker session and returns `Ok`. A source that keeps no session its broker
    /// would go on filling (false, the default) is drained and stopped by the executor instead.
    fn ends_session_on_retire(&self) -> bool {
        false
    }
}

/// Tells a source that its deployment instance is retired for good: scaled away or deleted,
/// not moved or paused (those keep the broker session for the next copy). Without it a
/// persistent MQTT session of a scaled-away instance stays a member of its shared
/// subscription, and the broker keeps giving it a share of the input that nobody reads
/// (MQTT 5.0 §4.8.2).
#[derive(Debug, Clone)]
pub struct RetireSignal(tokio::sync::watch::Receiver<bool>);

/// The sending half of a [`RetireSignal`] (the executor's end).
#[derive(Debug)]
pub struct Retirement(tokio::sync::watch::Sender<bool>);

impl RetireSignal {
    /// A connected pair: [`Retirement::retire`] on the first is seen by the second.
    pub fn pair() -> (Retirement, Self) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        (Retirement(tx), Self(rx))
    }

    /// A signal that never fires (a source no one retires).
    pub fn never() -> Self {
        Self::pair().1
    }

    /// Whether the instance was retired.
    pub fn is_retired(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once the instance is retired; never, when its [`Retirement`] is dropped
    /// without retiring it.
    pub async fn retired(&mut self) {
        if self.0.wait_for(|retired| *retired).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Retirement {
    /// Retires the instance.
    pub fn retire(&self) {
        self.0.send_replace(true);
    }
}
