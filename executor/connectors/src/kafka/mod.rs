//! The `kafka` endpoint: a source in a consumer group and an idempotent sink, on librdkafka
//! 2.12 (issue 10 point 4).
//!
//! - Address: the bootstrap brokers, `host:port[,host:port]`; settings in [`config`].
//! - Every broker address librdkafka resolves (bootstrap and the brokers a cluster
//!   advertises), on every connection attempt, goes through the tenant's egress rule first
//!   (issue 10 point 7): a refused address never reaches the network, and the status says why.
//! - Connect and read timeouts come from the [`ConnectContext`]
//!   (`socket.connection.setup.timeout.ms`, `socket.timeout.ms`).
//! - Topics are created only when the endpoint says `create_topics=true` (through the admin
//!   API, before the source subscribes or the sink first writes to a topic).
//! - Blocking librdkafka calls (closing a client, which commits and leaves the group) happen on
//!   a thread of their own, never on an async worker.

mod config;
mod context;
mod offsets;
mod sink;
mod source;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::util::Timeout;

use self::config::{KafkaSettings, topic_problem};
use self::context::{KafkaContext, OffThreadDrop};
use self::offsets::Ledger;
use crate::ConnectorError;
use crate::registry::Connector;
use crate::sink::Sink;
use crate::source::Source;
use crate::spec::{ConnectContext, Problem, SinkSpec, SourceSpec};

/// The `kafka` connector.
#[derive(Debug, Clone, Copy, Default)]
pub struct KafkaConnector;

#[async_trait]
impl Connector for KafkaConnector {
    fn kind(&self) -> &'static str {
        "kafka"
    }

    fn check_source(&self, spec: &SourceSpec) -> Vec<Problem> {
        let mut problems = KafkaSettings::parse(&spec.endpoint)
            .err()
            .unwrap_or_default();
        if spec.topics.is_empty() {
            problems.push(Problem::new(
                "/source/topics",
                "a kafka source reads at least one topic",
            ));
        }
        for (i, topic) in spec.topics.iter().enumerate() {
            if let Some(problem) = topic_problem(topic) {
                problems.push(Problem::new(
                    format!("/source/topics/{i}"),
                    format!("{problem} (topic patterns are not supported)"),
                ));
            }
        }
        problems
    }

    fn check_sink(&self, spec: &SinkSpec) -> Vec<Problem> {
        let mut problems = KafkaSettings::parse(&spec.endpoint)
            .err()
            .unwrap_or_default();
        if !spec.topic.is_empty() {
            // `${outputTopic}` stands for a topic of its own, checked when it is known.
            let literal = spec.topic.replace("${outputTopic}", "t");
            if let Some(problem) = topic_problem(&literal) {
                problems.push(Problem::new("/sink/topic", problem));
            }
        }
        problems
    }

    async fn source(
        &self,
        spec: SourceSpec,
        context: ConnectContext,
    ) -> Result<Box<dyn Source>, ConnectorError> {
        let problems = self.check_source(&spec);
        let settings = KafkaSettings::parse(&spec.endpoint).map_err(ConnectorError::Invalid)?;
        if !problems.is_empty() {
            return Err(ConnectorError::Invalid(problems));
        }
        Ok(Box::new(source::KafkaSource {
            target: KafkaTarget { settings, context },
            topics: spec.topics,
        }))
    }

    async fn sink(
        &self,
        spec: SinkSpec,
        context: ConnectContext,
    ) -> Result<Box<dyn Sink>, ConnectorError> {
        let problems = self.check_sink(&spec);
        let settings = KafkaSettings::parse(&spec.endpoint).map_err(ConnectorError::Invalid)?;
        if !problems.is_empty() {
            return Err(ConnectorError::Invalid(problems));
        }
        let target = KafkaTarget { settings, context };
        Ok(Box::new(sink::KafkaSink {
            context: target.kafka_context(None),
            target,
            topic: spec.topic,
            producer: None,
            created: HashSet::new(),
        }))
    }
}

/// A checked endpoint and the context of its connections.
#[derive(Debug)]
pub(crate) struct KafkaTarget {
    settings: KafkaSettings,
    context: ConnectContext,
}

impl KafkaTarget {
    /// A client context reporting to this connection's status.
    fn kafka_context(&self, ledger: Option<Arc<Mutex<Ledger>>>) -> KafkaContext {
        KafkaContext::new(
            self.context.egress.clone(),
            self.context.status.clone(),
            &self.context.client_id,
            ledger,
        )
    }

    /// Waits, with backoff, until the tenant has fewer than
    /// [`context::MAX_CLOSING_PER_TENANT`] Kafka clients still closing, so that a broker which
    /// hangs every close cannot make this tenant leave threads behind without bound. Meanwhile
    /// the connection's status is `retrying` and says why; other tenants never wait here.
    pub(crate) async fn room_for_a_client(&self, context: &KafkaContext) {
        let mut backoff = Backoff::default();
        loop {
            let closing = context::closing(&self.context.tenant);
            if closing < context::MAX_CLOSING_PER_TENANT {
                return;
            }
            context.retrying(&format!(
                "{closing} kafka clients of this tenant are still closing (their broker does not \
                 answer); a new client waits until one has closed"
            ));
            backoff.wait().await;
        }
    }

    /// Creates `topics` (with the endpoint's partitions and replication factor) unless they
    /// exist, retrying with backoff while the brokers cannot be reached. Fails only when the
    /// brokers refuse for good (invalid name, not authorised, bad partition count).
    async fn create_topics(&self, topics: &[String]) -> Result<(), ConnectorError> {
        let context = self.kafka_context(None);
        self.room_for_a_client(&context).await;
        let config = self.settings.common_config(&self.context);
        let admin: AdminClient<KafkaContext> = config
            .create_with_context(context.clone())
            .await
            .map_err(|e| ConnectorError::Refused(format!("the kafka admin client: {e}")))?;
        let admin = OffThreadDrop::new(admin, &self.context.tenant);
        let options = AdminOptions::new()
            .request_timeout(Some(Timeout::After(self.context.read_timeout)))
            .operation_timeout(Some(Timeout::After(self.context.read_timeout)));
        let mut left: Vec<String> = topics.to_vec();
        let mut backoff = Backoff::default();
        while !left.is_empty() {
            let new_topics: Vec<NewTopic<'_>> = left
                .iter()
                .map(|t| {
                    NewTopic::new(
                        t,
                        self.settings.partitions,
                        TopicReplication::Fixed(self.settings.replication_factor),
                    )
                })
                .collect();
            let results = admin.create_topics(&new_topics, &options).await;
            let mut again = Vec::new();
            let mut last_error = None;
            match results {
                Ok(results) => {
                    for result in results {
                        let Err((topic, code)) = result else {
                            continue;
                        };
                        match code {
                            RDKafkaErrorCode::TopicAlreadyExists => {}
                            RDKafkaErrorCode::InvalidTopic
                            | RDKafkaErrorCode::TopicAuthorizationFailed
                            | RDKafkaErrorCode::ClusterAuthorizationFailed
                            | RDKafkaErrorCode::InvalidPartitions
                            | RDKafkaErrorCode::InvalidReplicationFactor
                            | RDKafkaErrorCode::PolicyViolation => {
                                return Err(ConnectorError::Refused(format!(
                                    "creating topic {topic}: {code}"
                                )));
                            }
                            other => {
                                last_error = Some(format!("creating topic {topic}: {other}"));
                                again.push(topic);
                            }
                        }
                    }
                }
                Err(error) => {
                    last_error = Some(format!("creating topics: {error}"));
                    again = left.clone();
                }
            }
            if again.is_empty() {
                break;
            }
            context.retrying(&last_error.unwrap_or_default());
            left = again;
            backoff.wait().await;
        }
        Ok(())
    }
}

/// Waits between attempts: 200 ms, doubling up to 10 s.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            next: Duration::from_millis(200),
        }
    }
}

impl Backoff {
    /// Waits the current delay and doubles it.
    pub(crate) async fn wait(&mut self) {
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(Duration::from_secs(10));
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::mpsc;

    use weir_api::TenantId;
    use weir_api::egress::Egress;

    use super::context::{MAX_CLOSING_PER_TENANT, closing};
    use super::*;
    use crate::spec::EndpointSpec;
    use crate::status::ConnectionState;

    /// A client whose close hangs until it is released, as librdkafka's does while its broker
    /// does not answer.
    struct HangingClose(mpsc::Receiver<()>);

    impl Drop for HangingClose {
        fn drop(&mut self) {
            // Released, or the test ended and dropped the sender: either way the close returns.
            self.0.recv().ok();
        }
    }

    fn target(tenant: &TenantId) -> KafkaTarget {
        let endpoint = EndpointSpec {
            name: "k".to_owned(),
            kind: "kafka".to_owned(),
            address: Some("127.0.0.1:9".to_owned()),
            settings: BTreeMap::new(),
            secret: None,
        };
        KafkaTarget {
            settings: KafkaSettings::parse(&endpoint).unwrap(),
            context: ConnectContext::new(tenant.clone(), "d", Egress::new(["127.0.0.1"]), 1024),
        }
    }

    /// Polls `done` until it holds (closes end on threads of their own).
    async fn until(what: &str, done: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "never: {what}");
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_tenants_hanging_closes_make_only_its_own_new_clients_wait() {
        let a = TenantId::new("closes-hang-a").unwrap();
        let b = TenantId::new("closes-hang-b").unwrap();
        let mut releases = Vec::new();
        for _ in 0..MAX_CLOSING_PER_TENANT {
            let (release, hang) = mpsc::channel();
            drop(OffThreadDrop::new(HangingClose(hang), &a));
            releases.push(release);
        }
        assert_eq!(closing(&a), MAX_CLOSING_PER_TENANT);
        assert_eq!(closing(&b), 0, "another tenant's closes counted against b");

        // Tenant b creates clients as if nothing happened.
        let target_b = target(&b);
        tokio::time::timeout(
            Duration::from_secs(60),
            target_b.room_for_a_client(&target_b.kafka_context(None)),
        )
        .await
        .expect("b waited for a's closes");

        // Tenant a's next client waits, and its status says why.
        let target_a = target(&a);
        let status = target_a.context.status.clone();
        let waiting = tokio::spawn(async move {
            target_a
                .room_for_a_client(&target_a.kafka_context(None))
                .await;
        });
        until("a's connection says it waits for closes", || {
            matches!(status.get().0, ConnectionState::Retrying { ref error, .. }
                if error.contains("still closing"))
        })
        .await;
        assert!(!waiting.is_finished(), "a created a client past the bound");

        // One close returns: there is room again.
        releases.pop().unwrap().send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(60), waiting)
            .await
            .expect("a waits although a close ended")
            .unwrap();
        for release in releases {
            release.send(()).unwrap();
        }
        until("every close ended", || closing(&a) == 0).await;
    }
}
