//! The connectors weir knows, by endpoint kind: one explicit list.

use std::sync::Arc;

use async_trait::async_trait;

use crate::sink::Sink;
use crate::source::Source;
use crate::spec::{ConnectContext, Problem, SinkSpec, SourceSpec};
use crate::{ConnectorError, http};

/// A kind of endpoint: checks bindings (pure, every problem with its path) and builds sources
/// and sinks. Building does not connect: the source's `run` and the sink's first `send` do, so
/// an unreachable broker is a status on the deployment, not a failed deploy.
#[async_trait]
pub trait Connector: Send + Sync + std::fmt::Debug {
    /// The endpoint kind it serves (`mqtt`, `kafka`, `otlp`, `http`).
    fn kind(&self) -> &'static str;
    /// Every problem with reading from `spec` (empty: it can be built). Pure: no I/O.
    fn check_source(&self, spec: &SourceSpec) -> Vec<Problem>;
    /// Every problem with writing to `spec`. Pure: no I/O.
    fn check_sink(&self, spec: &SinkSpec) -> Vec<Problem>;
    /// A source reading `spec`; [`ConnectorError::Invalid`] with the problems of
    /// [`Connector::check_source`] if any.
    async fn source(
        &self,
        spec: SourceSpec,
        context: ConnectContext,
    ) -> Result<Box<dyn Source>, ConnectorError>;
    /// A sink writing to `spec`.
    async fn sink(
        &self,
        spec: SinkSpec,
        context: ConnectContext,
    ) -> Result<Box<dyn Sink>, ConnectorError>;
}

/// The connectors of this build, by kind.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    connectors: Vec<Arc<dyn Connector>>,
}

impl Registry {
    /// Every connector weir ships. Adding one is one line here.
    pub fn standard() -> Self {
        let mut registry = Self::default();
        registry.add(Arc::new(http::HttpConnector));
        registry.add(Arc::new(crate::mqtt::MqttConnector));
        registry.add(Arc::new(crate::kafka::KafkaConnector));
        registry.add(Arc::new(crate::otlp::OtlpConnector));
        registry
    }

    /// Adds (or replaces) the connector of its kind.
    pub fn add(&mut self, connector: Arc<dyn Connector>) {
        self.connectors.retain(|c| c.kind() != connector.kind());
        self.connectors.push(connector);
    }

    /// The connector of `kind`.
    pub fn get(&self, kind: &str) -> Option<&Arc<dyn Connector>> {
        self.connectors.iter().find(|c| c.kind() == kind)
    }

    /// The kinds served, in registration order.
    pub fn kinds(&self) -> Vec<&'static str> {
        self.connectors.iter().map(|c| c.kind()).collect()
    }
}
