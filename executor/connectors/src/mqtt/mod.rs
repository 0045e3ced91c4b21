//! The `mqtt` endpoint: MQTT v5 through rumqttc (plain TCP; TLS with the cargo feature
//! `mqtt-tls`). Settings and topics: [`config`](self) (see the module notes of `config.rs`, and
//! `MqttConnector`'s checks).
//!
//! - **Source**: subscribes to topic filters (wildcards, `$share/<group>/…`) at QoS 0 or 1 with
//!   manual acknowledgements: the PUBACK of a QoS 1 message goes out only when the executor
//!   settles it as processed ([`crate::Settled::Processed`] with [`crate::Ack::Mqtt`]); an
//!   abandoned message is not acknowledged, and the broker sends it again on the next
//!   connection of the session. The session is persistent (clean start off, a session expiry),
//!   with the deployment's stable client id, so QoS 1 messages survive reconnects; Receive
//!   Maximum bounds what the broker sends ahead of the acknowledgements, so a slow deployment
//!   holds the broker back. Messages the intake refuses for now are held (never dropped) until
//!   it has room.
//! - **Sink**: publishes at QoS 1 (or 0) with content type and user properties (`__ts` among
//!   them) and returns once every QoS 1 publish of the batch was acknowledged, publishing again
//!   what a lost connection left unacknowledged.
//! - **Connections**: every connect and reconnect resolves the broker through the tenant's
//!   egress rule and connects rumqttc to a checked address (rumqttc would otherwise resolve the
//!   name itself); connect timeout from the context; exponential backoff from 100 ms to 10 s;
//!   the state (`connecting`, `connected`, `retrying` with the error and attempts, `failed`
//!   when the broker refused the credentials or a subscription) in the context's status.
//!
//! Message mapping (azure-compat 4.2, section 11 rows 8 and 11): topic, payload, content type,
//! user properties in order with duplicates. Response topic and correlation data are not
//! carried: [`crate::Inbound`] and [`crate::Outbound`] have no place for them yet.
//!
//! TLS (feature `mqtt-tls`, off by default because rustls with its crypto provider costs
//! minutes of build): the broker's CA from the setting `ca_certificate`, a client certificate
//! from the secret. rumqttc verifies the certificate against the address it connects to, so with
//! TLS it is given the host name, checked through the egress rule just before, and resolves it
//! again itself: a name whose DNS answer changes between the two lookups is the one gap.

mod config;
mod connection;
mod sink;
mod source;

use async_trait::async_trait;

pub use sink::{MqttSink, WINDOW};
pub use source::MqttSource;

use crate::ConnectorError;
use crate::registry::Connector;
use crate::sink::Sink;
use crate::source::Source;
use crate::spec::{ConnectContext, Problem, SinkSpec, SourceSpec};

/// The `mqtt` connector.
#[derive(Debug, Clone, Copy, Default)]
pub struct MqttConnector;

#[async_trait]
impl Connector for MqttConnector {
    fn kind(&self) -> &'static str {
        "mqtt"
    }

    fn check_source(&self, spec: &SourceSpec) -> Vec<Problem> {
        let mut problems = config::parse_endpoint(&spec.endpoint)
            .err()
            .unwrap_or_default();
        if spec.topics.is_empty() {
            problems.push(Problem::new(
                "/source/topics",
                "name at least one topic filter",
            ));
        }
        for (i, filter) in spec.topics.iter().enumerate() {
            if let Err(why) = config::check_filter(filter) {
                problems.push(Problem::new(
                    format!("/source/topics/{i}"),
                    format!("{filter:?} is not an MQTT topic filter: {why}"),
                ));
            }
        }
        problems
    }

    fn check_sink(&self, spec: &SinkSpec) -> Vec<Problem> {
        let mut problems = config::parse_endpoint(&spec.endpoint)
            .err()
            .unwrap_or_default();
        if let Err(why) = config::check_topic_template(&spec.topic) {
            problems.push(Problem::new(
                "/sink/topic",
                format!("{:?} is not an MQTT topic to publish to: {why}", spec.topic),
            ));
        }
        problems
    }

    async fn source(
        &self,
        spec: SourceSpec,
        context: ConnectContext,
    ) -> Result<Box<dyn Source>, ConnectorError> {
        let problems = self.check_source(&spec);
        if !problems.is_empty() {
            return Err(ConnectorError::Invalid(problems));
        }
        let endpoint = config::parse_endpoint(&spec.endpoint).map_err(ConnectorError::Invalid)?;
        Ok(Box::new(MqttSource::new(endpoint, spec.topics, context)))
    }

    async fn sink(
        &self,
        spec: SinkSpec,
        context: ConnectContext,
    ) -> Result<Box<dyn Sink>, ConnectorError> {
        let problems = self.check_sink(&spec);
        if !problems.is_empty() {
            return Err(ConnectorError::Invalid(problems));
        }
        let endpoint = config::parse_endpoint(&spec.endpoint).map_err(ConnectorError::Invalid)?;
        Ok(Box::new(MqttSink::new(endpoint, spec.topic, context)))
    }
}
