//! The conformance suite every connector runs against its real broker: what the executor
//! relies on from any source and sink, checked the same way for each.
//!
//! A connector's test gives the suite its connector, specs and a [`Broker`]: the test's own
//! way to publish to and read from the real broker (the broker's client library, or the
//! connector's opposite half). Each check returns `Err` with what went wrong.
//!
//! - [`source_delivers`]: published messages reach the intake with topic, payload, content type
//!   and user properties (order and duplicates kept).
//! - [`source_redelivers_unacknowledged`]: a message offered but never settled as processed is
//!   delivered again to the next source of the same deployment; a processed one is not.
//! - [`source_waits_for_room`]: a source whose intake is full holds back and loses nothing.
//! - [`sink_publishes`]: outputs reach the broker with their topic, payload, content type and
//!   user properties.
//! - [`sink_unreachable_is_a_status`]: a sink whose broker is down reports `Retrying` in its
//!   status and does not return success, instead of hanging silently or dropping the output.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::Notify;

use crate::message::{Inbound, Outbound};
use crate::registry::Connector;
use crate::source::{AckSender, Intake, IntakeRefusal, Settled, ack_channel};
use crate::spec::{ConnectContext, SinkSpec, SourceSpec};
use crate::status::ConnectionState;

/// What a check found wrong.
pub type Outcome = Result<(), String>;

/// The test's own access to the real broker.
#[async_trait]
pub trait Broker: Send + Sync {
    /// Publishes `messages` (at least once, acknowledged by the broker) to their topics.
    async fn publish(&self, messages: Vec<Outbound>) -> Result<(), String>;
    /// Starts reading `topic` (before the messages a check expects are sent).
    async fn subscribe(&self, topic: &str) -> Result<(), String>;
    /// The next `count` messages read from the subscribed topics, or what arrived before
    /// `timeout`.
    async fn receive(&self, count: usize, timeout: Duration) -> Vec<Inbound>;
}

/// An intake that keeps what it is offered, up to `capacity` messages unsettled.
#[derive(Debug)]
pub struct TestIntake {
    capacity: usize,
    offered: Mutex<VecDeque<Inbound>>,
    held: Mutex<usize>,
    room: Notify,
    arrived: Notify,
}

impl TestIntake {
    /// An intake holding at most `capacity` messages.
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            capacity,
            offered: Mutex::new(VecDeque::new()),
            held: Mutex::new(0),
            room: Notify::new(),
            arrived: Notify::new(),
        })
    }

    /// Waits for `count` offered messages (taking them), or returns what came before `timeout`.
    pub async fn take(&self, count: usize, timeout: Duration) -> Vec<Inbound> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut taken = Vec::new();
        while taken.len() < count {
            let arrived = self.arrived.notified();
            {
                let mut offered = self.offered.lock().unwrap_or_else(PoisonError::into_inner);
                while taken.len() < count {
                    let Some(message) = offered.pop_front() else {
                        break;
                    };
                    taken.push(message);
                }
            }
            if taken.len() >= count {
                break;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                break;
            }
        }
        taken
    }

    /// Settles `message` (processed or abandoned) and frees its place.
    pub fn settle(&self, acks: &AckSender, message: &Inbound, processed: bool) {
        let settled = if processed {
            Settled::Processed(message.ack.clone())
        } else {
            Settled::Abandoned(message.ack.clone())
        };
        let _gone_if_stopped = acks.try_send(settled);
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        *held = held.saturating_sub(1);
        drop(held);
        self.room.notify_waiters();
    }
}

#[async_trait]
impl Intake for TestIntake {
    fn try_offer(&self, batch: Vec<Inbound>) -> Result<(), IntakeRefusal> {
        if batch.len() > self.capacity {
            return Err(IntakeRefusal::TooLarge(format!(
                "{} messages; the intake holds {}",
                batch.len(),
                self.capacity
            )));
        }
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if *held + batch.len() > self.capacity {
            return Err(IntakeRefusal::Full("the test intake is full".to_owned()));
        }
        *held += batch.len();
        drop(held);
        self.offered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(batch);
        self.arrived.notify_waiters();
        Ok(())
    }

    async fn room(&self) {
        // A timeout is as good as a wake-up: the caller offers again either way.
        let _waited = tokio::time::timeout(Duration::from_millis(100), self.room.notified())
            .await
            .is_ok();
    }
}

/// A running source under test: its intake and settlement channel; aborted on drop.
#[derive(Debug)]
pub struct RunningSource {
    /// What it offered.
    pub intake: Arc<TestIntake>,
    /// Where settlements go.
    pub acks: AckSender,
    task: tokio::task::JoinHandle<Result<(), crate::ConnectorError>>,
}

impl Drop for RunningSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Builds and runs a source of `connector` with an intake of `capacity`.
pub async fn start_source(
    connector: &dyn Connector,
    spec: SourceSpec,
    context: ConnectContext,
    capacity: usize,
) -> Result<RunningSource, String> {
    let source = connector
        .source(spec, context)
        .await
        .map_err(|e| format!("building the source: {e}"))?;
    let intake = TestIntake::new(capacity);
    let (acks, receiver) = ack_channel(capacity);
    let offered: Arc<dyn Intake> = intake.clone();
    let task = tokio::spawn(source.run(offered, receiver));
    Ok(RunningSource { intake, acks, task })
}

/// Three test messages on `topic`, numbered `tag-0..2`, with content type and properties.
pub fn sample_messages(topic: &str, tag: &str) -> Vec<Outbound> {
    (0..3)
        .map(|i| Outbound {
            topic: Bytes::copy_from_slice(topic.as_bytes()),
            payload: Bytes::from(format!("{{\"n\":{i},\"tag\":\"{tag}\"}}")),
            content_type: Some(Bytes::from_static(b"application/json")),
            user_properties: vec![
                (Bytes::from_static(b"k"), Bytes::from("v1")),
                (Bytes::from_static(b"k"), Bytes::from(format!("v{i}"))),
                (Bytes::from_static(b"a"), Bytes::from_static(b"last")),
            ],
            hold: None,
        })
        .collect()
}

fn same_message(sent: &Outbound, got: &Inbound, check_content_type: bool) -> Outcome {
    if sent.payload != got.payload {
        return Err(format!(
            "payload {:?}, expected {:?}",
            got.payload, sent.payload
        ));
    }
    if sent.topic != got.topic {
        return Err(format!("topic {:?}, expected {:?}", got.topic, sent.topic));
    }
    if check_content_type && sent.content_type != got.content_type {
        return Err(format!(
            "content type {:?}, expected {:?}",
            got.content_type, sent.content_type
        ));
    }
    // The broker may add properties of its own (`__ts`); the sent ones come first, in order.
    let theirs: Vec<_> = got
        .user_properties
        .iter()
        .filter(|(k, _)| k.as_ref() != b"__ts" && k.as_ref() != b"__key")
        .cloned()
        .collect();
    if theirs != sent.user_properties {
        return Err(format!(
            "user properties {:?}, expected {:?}",
            got.user_properties, sent.user_properties
        ));
    }
    Ok(())
}

/// Messages published on `topic` reach the intake whole. `content_type`: whether the protocol
/// carries a content type (MQTT v5 does, Kafka does not).
pub async fn source_delivers(
    connector: &dyn Connector,
    spec: SourceSpec,
    context: ConnectContext,
    broker: &dyn Broker,
    topic: &str,
    content_type: bool,
) -> Outcome {
    let running = start_source(connector, spec, context.clone(), 100).await?;
    wait_connected(&context).await?;
    let sent = sample_messages(topic, "delivers");
    broker.publish(sample_messages(topic, "delivers")).await?;
    let got = running.intake.take(3, Duration::from_secs(30)).await;
    if got.len() != 3 {
        return Err(format!("{} of 3 messages reached the intake", got.len()));
    }
    for (sent, got) in sent.iter().zip(&got) {
        same_message(sent, got, content_type)?;
    }
    for message in &got {
        running.intake.settle(&running.acks, message, true);
    }
    Ok(())
}

/// Waits until the connection reports `Connected` (30 s).
pub async fn wait_connected(context: &ConnectContext) -> Outcome {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (state, _) = context.status.get();
        if state == ConnectionState::Connected {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("not connected after 30 s: {state:?}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A message offered but abandoned comes again to the next source of the same deployment
/// (same client id, consumer group); a processed one does not.
pub async fn source_redelivers_unacknowledged(
    connector: &dyn Connector,
    spec: SourceSpec,
    context: ConnectContext,
    broker: &dyn Broker,
    topic: &str,
) -> Outcome {
    let first = start_source(connector, spec.clone(), context.clone(), 100).await?;
    wait_connected(&context).await?;
    broker.publish(sample_messages(topic, "redeliver")).await?;
    let got = first.intake.take(3, Duration::from_secs(30)).await;
    if got.len() != 3 {
        return Err(format!(
            "{} of 3 messages reached the first source",
            got.len()
        ));
    }
    // The first is processed; the other two are abandoned (the deployment stops).
    if let Some(message) = got.first() {
        first.intake.settle(&first.acks, message, true);
    }
    // Give the source a moment to pass the acknowledgement on, then stop it, as a deployment
    // stop does: what is settled must reach the broker first.
    wait_settled_passed_on().await;
    drop(first);
    let context = context.with_fresh_status();
    let second = start_source(connector, spec, context.clone(), 100).await?;
    wait_connected(&context).await?;
    let again = second.intake.take(2, Duration::from_secs(60)).await;
    let payloads: Vec<&Bytes> = again.iter().map(|m| &m.payload).collect();
    let expected: Vec<&Bytes> = got.iter().skip(1).map(|m| &m.payload).collect();
    let mut sorted_got = payloads.clone();
    sorted_got.sort();
    let mut sorted_expected = expected.clone();
    sorted_expected.sort();
    if sorted_got != sorted_expected {
        return Err(format!(
            "redelivered {payloads:?}, expected the two abandoned {expected:?}"
        ));
    }
    // Nothing else (the processed one must not come back).
    let extra = second.intake.take(1, Duration::from_secs(2)).await;
    if let Some(message) = extra.first() {
        return Err(format!(
            "redelivered a processed message {:?}",
            message.payload
        ));
    }
    for message in &again {
        second.intake.settle(&second.acks, message, true);
    }
    Ok(())
}

/// Lets a source's own task run once settlements were sent (not a synchronisation of
/// results: the check after it looks at what the broker does).
async fn wait_settled_passed_on() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// A source whose intake is full holds messages back and loses none: with room for one, all
/// `count` published messages arrive as room is made.
pub async fn source_waits_for_room(
    connector: &dyn Connector,
    spec: SourceSpec,
    context: ConnectContext,
    broker: &dyn Broker,
    topic: &str,
) -> Outcome {
    let running = start_source(connector, spec, context.clone(), 1).await?;
    wait_connected(&context).await?;
    broker.publish(sample_messages(topic, "room")).await?;
    let mut got = Vec::new();
    while got.len() < 3 {
        let one = running.intake.take(1, Duration::from_secs(30)).await;
        let Some(message) = one.into_iter().next() else {
            return Err(format!(
                "{} of 3 messages arrived with room for one",
                got.len()
            ));
        };
        running.intake.settle(&running.acks, &message, true);
        got.push(message);
    }
    Ok(())
}

/// Outputs sent to the sink reach the broker whole.
pub async fn sink_publishes(
    connector: &dyn Connector,
    spec: SinkSpec,
    context: ConnectContext,
    broker: &dyn Broker,
    content_type: bool,
) -> Outcome {
    let topic = spec.topic.clone();
    broker.subscribe(&topic).await?;
    let mut sink = connector
        .sink(spec, context)
        .await
        .map_err(|e| format!("building the sink: {e}"))?;
    let sent = sample_messages(&topic, "sink");
    let report = tokio::time::timeout(
        Duration::from_secs(60),
        sink.send(sample_messages(&topic, "sink")),
    )
    .await
    .map_err(|_| "the sink did not accept 3 outputs in 60 s".to_owned())?
    .map_err(|e| format!("send: {e}"))?;
    if !report.rejected.is_empty() {
        return Err(format!("rejected: {:?}", report.rejected));
    }
    let got = broker.receive(3, Duration::from_secs(30)).await;
    if got.len() != 3 {
        return Err(format!("{} of 3 outputs reached the broker", got.len()));
    }
    for (sent, got) in sent.iter().zip(&got) {
        same_message(sent, got, content_type)?;
    }
    Ok(())
}

/// A sink whose broker cannot be reached says so in its status within the connect timeout and
/// does not report the output as accepted.
pub async fn sink_unreachable_is_a_status(
    connector: &dyn Connector,
    spec: SinkSpec,
    context: ConnectContext,
) -> Outcome {
    let status = context.status.clone();
    let wait = context.connect_timeout * 3 + Duration::from_secs(5);
    let topic = spec.topic.clone();
    let mut sink = connector
        .sink(spec, context)
        .await
        .map_err(|e| format!("building the sink: {e}"))?;
    let sending = tokio::spawn(async move { sink.send(sample_messages(&topic, "down")).await });
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if let (ConnectionState::Retrying { .. } | ConnectionState::Failed { .. }, _) = status.get()
        {
            break;
        }
        if sending.is_finished() {
            let result = sending.await.map_err(|e| e.to_string())?;
            return match result {
                Ok(report) if report.rejected.len() == 3 => Ok(()),
                Ok(_) => Err("a sink with no broker reported outputs as accepted".to_owned()),
                Err(_) => Ok(()),
            };
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("no status after {wait:?}: {:?}", status.get().0));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if sending.is_finished() {
        if let Ok(Ok(report)) = sending.await
            && report.rejected.is_empty()
        {
            return Err("a sink with no broker reported outputs as accepted".to_owned());
        }
    } else {
        sending.abort();
    }
    Ok(())
}
