//! The imported interfaces, implemented once for both contracts: `ga` (`wasm-graph:processor@1.1.0`)
//! and `preview` (`tinykube-graph:processor@1.0.0`) generate structurally identical Rust types
//! under different paths, so one macro body serves both. This and the result adapter in
//! `operator` are the whole preview adapter.

/// A builder method: weir keeps no builder state, so each step returns a fresh builder.
macro_rules! builder_step {
    ($method:ident, $builder:ident, $($arg:ty),+) => {
        fn $method(
            &mut self,
            _: Resource<$builder>,
            $(_: $arg),+
        ) -> wasmtime::Result<Result<Resource<$builder>, RpcError>> {
            Ok(Ok(self.table.push($builder)?))
        }
    };
}

macro_rules! host_interfaces {
    () => {
        use std::time::Duration;

        use bytes::Bytes;
        use wasmtime::component::Resource;
        use weir_api::{DataItem, Hlc};

        use wit::command_invoker::{
            CommandResponse, HostCommandInvoker, HostCommandInvokerOptions,
            HostCommandInvokerOptionsBuilder, HostCommandRequest, HostCommandRequestBuilder,
        };
        use wit::hybrid_logical_clock::{HybridLogicalClock, Timespec};
        use wit::logger::Level;
        use wit::metrics::{CounterValue, HistogramValue, Label, MetricsError};
        use wit::rpc_types::RpcError;
        use wit::state_store_types::{
            SetConditions, SetOptions, StateStoreDelResponse, StateStoreError,
            StateStoreGetResponse, StateStoreSetResponse,
        };
        use wit::types::{
            BufferOrBytes, BufferOrString, DataModel, InlineSchema, Message, MessageProperties,
            MessageSchema, Snapshot, Timestamp,
        };

        use crate::host::rpc::{
            CommandInvoker, CommandInvokerOptions, CommandInvokerOptionsBuilder, CommandRequest,
            CommandRequestBuilder,
        };
        use crate::host::{HostBuffer, HostState};
        use crate::logs::LogLevel;
        use crate::metrics::{MetricError, MetricValue, Recording};
        use crate::operator::{InvalidOutput, ModuleConfiguration};

        impl wit::types::Host for HostState {}
        impl wit::hybrid_logical_clock::Host for HostState {}
        impl wit::state_store_types::Host for HostState {}
        impl wit::rpc_types::Host for HostState {}

        impl wit::types::HostBuffer for HostState {
            fn read(&mut self, buffer: Resource<HostBuffer>) -> wasmtime::Result<Vec<u8>> {
                Ok(self.table.get(&buffer)?.0.to_vec())
            }

            fn drop(&mut self, buffer: Resource<HostBuffer>) -> wasmtime::Result<()> {
                self.table.delete(buffer)?;
                Ok(())
            }
        }

        impl wit::logger::Host for HostState {
            fn log(&mut self, level: Level, context: String, message: String) -> wasmtime::Result<()> {
                let level = match level {
                    Level::Trace => LogLevel::Trace,
                    Level::Debug => LogLevel::Debug,
                    Level::Info => LogLevel::Info,
                    Level::Warn => LogLevel::Warn,
                    Level::Error => LogLevel::Error,
                    Level::Critical => LogLevel::Critical,
                };
                self.env.log(level, &context, &message);
                Ok(())
            }
        }

        fn labels(labels: Option<Vec<Label>>) -> Vec<(String, String)> {
            labels.unwrap_or_default().into_iter().map(|l| (l.key, l.value)).collect()
        }

        /// The module's answer; the first recording its tenant's `max_metric_series` quota
        /// drops is also told in the module's log (a warning naming the quota and the series).
        fn recorded(env: &crate::host::NodeEnv, name: &str, result: Result<Recording, MetricError>) -> Result<(), MetricsError> {
            match result {
                Ok(Recording::FirstDropped) => {
                    let quota = env.quotas.as_ref().map_or_else(String::new, |q| format!(" ({})", q.get().max_metric_series));
                    env.log(
                        LogLevel::Warn,
                        "weir.metrics",
                        &format!("metric series quota max_metric_series{quota} reached: new series (first: {name:?}) are dropped; existing series keep counting"),
                    );
                    Ok(())
                }
                Ok(Recording::Kept | Recording::Dropped) => Ok(()),
                Err(error) => Err(metric_error(error)),
            }
        }

        fn metric_error(error: MetricError) -> MetricsError {
            match error {
                MetricError::IncompatibleType(message) | MetricError::Invalid(message) => {
                    MetricsError::IncompatibleType(message)
                }
            }
        }

        impl wit::metrics::Host for HostState {
            fn add_to_counter(
                &mut self,
                name: String,
                value: CounterValue,
                labels_: Option<Vec<Label>>,
            ) -> wasmtime::Result<Result<(), MetricsError>> {
                let CounterValue::U64(value) = value;
                let env = &self.env;
                Ok(recorded(env, &name, env.metrics.record(&env.tenant, &name, labels(labels_), MetricValue::Counter(value))))
            }

            fn record_to_histogram(
                &mut self,
                name: String,
                value: HistogramValue,
                labels_: Option<Vec<Label>>,
            ) -> wasmtime::Result<Result<(), MetricsError>> {
                let value = match value {
                    HistogramValue::F64(v) => MetricValue::HistogramF64(v),
                    HistogramValue::U64(v) => MetricValue::HistogramU64(v),
                };
                let env = &self.env;
                Ok(recorded(env, &name, env.metrics.record(&env.tenant, &name, labels(labels_), value)))
            }
        }

        pub(crate) fn lower_hlc(hlc: &Hlc) -> HybridLogicalClock {
            HybridLogicalClock {
                timestamp: Timespec { secs: hlc.secs, nanos: hlc.nanos },
                counter: hlc.counter,
                node_id: hlc.node_id.clone(),
            }
        }

        pub(crate) fn lift_hlc(hlc: HybridLogicalClock) -> Hlc {
            Hlc { secs: hlc.timestamp.secs, nanos: hlc.timestamp.nanos, counter: hlc.counter, node_id: hlc.node_id }
        }

        /// The WIT error of a failed state operation (azure-compat 2.6): a backend that did
        /// not answer in time is `timeout`; one that cannot be reached (a lost Redis
        /// connection) is a `request-error` the module may retry, saying so without the
        /// backend's address; `internal` is left for weir's own faults.
        fn state_error(error: weir_state::StateError) -> StateStoreError {
            match error {
                weir_state::StateError::Timeout => StateStoreError::Timeout,
                weir_state::StateError::Unavailable(_) => {
                    tracing::warn!(%error, source = ?std::error::Error::source(&error), "state store unreachable for a module's request");
                    StateStoreError::RequestError(error.to_string())
                }
                _ => StateStoreError::RequestError(error.to_string()),
            }
        }

        fn duration(seconds: u64, nanos: u32) -> Option<Duration> {
            Duration::from_secs(seconds).checked_add(Duration::from_nanos(u64::from(nanos)))
        }

        /// Runs a state operation under the guest's timeout, capped by the host's.
        async fn state_call<T>(
            cap: Duration,
            timeout: Option<wit::state_store_types::Duration>,
            call: impl std::future::Future<Output = Result<T, weir_state::StateError>>,
        ) -> Result<T, StateStoreError> {
            {
                let limit = timeout.and_then(|t| duration(t.seconds, t.nanos)).map_or(cap, |t| t.min(cap));
                match tokio::time::timeout(limit, call).await {
                    Ok(result) => result.map_err(state_error),
                    Err(_elapsed) => Err(StateStoreError::Timeout),
                }
            }
        }

        fn fencing(token: Option<HybridLogicalClock>) -> Result<Option<Hlc>, StateStoreError> {
            match token {
                Some(t) if t.timestamp.nanos >= 1_000_000_000 => {
                    Err(StateStoreError::RequestError("invalid fencing token: nanos out of range".to_owned()))
                }
                other => Ok(other.map(lift_hlc)),
            }
        }

        impl wit::state_store::Host for HostState {
            async fn get(
                &mut self,
                key: Vec<u8>,
                timeout: Option<wit::state_store_types::Duration>,
            ) -> wasmtime::Result<Result<StateStoreGetResponse, StateStoreError>> {
                let env = self.env.clone();
                let result = state_call(env.state_timeout_cap, timeout, env.state.get(&env.scope(), &key)).await;
                Ok(result.map(|r| StateStoreGetResponse { response: r.value, version: r.version.as_ref().map(lower_hlc) }))
            }

            async fn set(
                &mut self,
                key: Vec<u8>,
                value: Vec<u8>,
                timeout: Option<wit::state_store_types::Duration>,
                fencing_token: Option<HybridLogicalClock>,
                options: SetOptions,
            ) -> wasmtime::Result<Result<StateStoreSetResponse, StateStoreError>> {
                let fencing_token = match fencing(fencing_token) {
                    Ok(token) => token,
                    Err(error) => return Ok(Err(error)),
                };
                let expires = match options.expires {
                    None => None,
                    Some(d) => match duration(d.seconds, d.nanos) {
                        Some(d) => Some(d),
                        None => return Ok(Err(state_error(weir_state::StateError::InvalidExpiry))),
                    },
                };
                let condition = match options.conditions {
                    SetConditions::OnlyIfDoesNotExist => weir_state::SetCondition::OnlyIfDoesNotExist,
                    SetConditions::OnlyIfEqualOrDoesNotExist => weir_state::SetCondition::OnlyIfEqualOrDoesNotExist,
                    SetConditions::Unconditional => weir_state::SetCondition::Unconditional,
                };
                let options = weir_state::SetOptions { condition, expires, fencing_token };
                let env = self.env.clone();
                let result = state_call(env.state_timeout_cap, timeout, env.state.set(&env.scope(), &key, &value, options)).await;
                Ok(result.map(|r| StateStoreSetResponse { response: r.written, version: r.version.as_ref().map(lower_hlc) }))
            }

            async fn del(
                &mut self,
                key: Vec<u8>,
                fencing_token: Option<HybridLogicalClock>,
                timeout: Option<wit::state_store_types::Duration>,
            ) -> wasmtime::Result<Result<StateStoreDelResponse, StateStoreError>> {
                let fencing_token = match fencing(fencing_token) {
                    Ok(token) => token,
                    Err(error) => return Ok(Err(error)),
                };
                let env = self.env.clone();
                let scope = env.scope();
                let call = env.state.del(&scope, &key, fencing_token.as_ref());
                let result = state_call(env.state_timeout_cap, timeout, call).await;
                Ok(result.map(|r| StateStoreDelResponse { response: r.deleted, version: r.version.as_ref().map(lower_hlc) }))
            }

            async fn vdel(
                &mut self,
                key: Vec<u8>,
                value: Vec<u8>,
                fencing_token: Option<HybridLogicalClock>,
                timeout: Option<wit::state_store_types::Duration>,
            ) -> wasmtime::Result<Result<StateStoreDelResponse, StateStoreError>> {
                let fencing_token = match fencing(fencing_token) {
                    Ok(token) => token,
                    Err(error) => return Ok(Err(error)),
                };
                let env = self.env.clone();
                let scope = env.scope();
                let call = env.state.vdel(&scope, &key, &value, fencing_token.as_ref());
                let result = state_call(env.state_timeout_cap, timeout, call).await;
                Ok(result.map(|r| StateStoreDelResponse { response: r.deleted, version: r.version.as_ref().map(lower_hlc) }))
            }
        }

        impl HostCommandRequest for HostState {
            fn drop(&mut self, request: Resource<CommandRequest>) -> wasmtime::Result<()> {
                self.table.delete(request)?;
                Ok(())
            }
        }

        impl HostCommandRequestBuilder for HostState {
            fn new(&mut self) -> wasmtime::Result<Resource<CommandRequestBuilder>> {
                Ok(self.table.push(CommandRequestBuilder)?)
            }
            builder_step!(payload, CommandRequestBuilder, Vec<u8>);
            builder_step!(custom_user_data, CommandRequestBuilder, Vec<(String, String)>);
            builder_step!(topic_tokens, CommandRequestBuilder, Vec<(String, String)>);
            builder_step!(timeout, CommandRequestBuilder, u64, u32);
            fn build(&mut self, _: Resource<CommandRequestBuilder>) -> wasmtime::Result<Result<Resource<CommandRequest>, RpcError>> {
                Ok(Ok(self.table.push(CommandRequest)?))
            }
            fn drop(&mut self, builder: Resource<CommandRequestBuilder>) -> wasmtime::Result<()> {
                self.table.delete(builder)?;
                Ok(())
            }
        }

        impl HostCommandInvokerOptions for HostState {
            fn drop(&mut self, options: Resource<CommandInvokerOptions>) -> wasmtime::Result<()> {
                self.table.delete(options)?;
                Ok(())
            }
        }

        impl HostCommandInvokerOptionsBuilder for HostState {
            fn new(&mut self) -> wasmtime::Result<Resource<CommandInvokerOptionsBuilder>> {
                Ok(self.table.push(CommandInvokerOptionsBuilder)?)
            }
            builder_step!(request_topic_pattern, CommandInvokerOptionsBuilder, String);
            builder_step!(response_topic_pattern, CommandInvokerOptionsBuilder, String);
            builder_step!(command_name, CommandInvokerOptionsBuilder, String);
            builder_step!(topic_namespace, CommandInvokerOptionsBuilder, String);
            builder_step!(topic_token_map, CommandInvokerOptionsBuilder, Vec<(String, String)>);
            builder_step!(response_topic_prefix, CommandInvokerOptionsBuilder, String);
            builder_step!(response_topic_suffix, CommandInvokerOptionsBuilder, String);
            fn build(&mut self, _: Resource<CommandInvokerOptionsBuilder>) -> wasmtime::Result<Result<Resource<CommandInvokerOptions>, RpcError>> {
                Ok(Ok(self.table.push(CommandInvokerOptions)?))
            }
            fn drop(&mut self, builder: Resource<CommandInvokerOptionsBuilder>) -> wasmtime::Result<()> {
                self.table.delete(builder)?;
                Ok(())
            }
        }

        impl HostCommandInvoker for HostState {
            fn invoke(&mut self, _: Resource<CommandInvoker>, request: Resource<CommandRequest>) -> wasmtime::Result<Result<CommandResponse, RpcError>> {
                self.table.delete(request)?;
                Ok(Err(RpcError::ClientError))
            }
            fn drop(&mut self, invoker: Resource<CommandInvoker>) -> wasmtime::Result<()> {
                self.table.delete(invoker)?;
                Ok(())
            }
        }

        impl wit::command_invoker::Host for HostState {
            fn new_invoker(&mut self, options: Resource<CommandInvokerOptions>) -> wasmtime::Result<Result<Resource<CommandInvoker>, RpcError>> {
                self.table.delete(options)?;
                self.env.log(LogLevel::Warn, "weir", "command-invoker (MQTT RPC) is not available on weir yet");
                Ok(Err(RpcError::ClientError))
            }
        }

        fn bytes_or_string(state: &mut HostState, bytes: &Bytes) -> wasmtime::Result<BufferOrString> {
            Ok(BufferOrString::Buffer(state.buffer(bytes)?))
        }

        fn buffer_or_bytes(state: &mut HostState, bytes: &Bytes) -> wasmtime::Result<BufferOrBytes> {
            Ok(BufferOrBytes::Buffer(state.buffer(bytes)?))
        }

        fn timestamp(state: &mut HostState, hlc: &Hlc) -> wasmtime::Result<Timestamp> {
            Ok(Timestamp {
                timestamp: Timespec { secs: hlc.secs, nanos: hlc.nanos },
                counter: hlc.counter,
                node_id: {
                    let node_id = state.node_id_bytes(&hlc.node_id);
                    bytes_or_string(state, &node_id)?
                },
            })
        }

        /// Hands `item` to a guest: every host-held byte string becomes a fresh `buffer` handle.
        pub(crate) fn lower(state: &mut HostState, item: &DataItem) -> wasmtime::Result<DataModel> {
            Ok(match item {
                DataItem::Bytes(bytes) => DataModel::BufferOrBytes(buffer_or_bytes(state, bytes)?),
                DataItem::Message(m) => {
                    let mut user_properties = Vec::with_capacity(m.user_properties.len());
                    for (key, value) in &m.user_properties {
                        user_properties.push((bytes_or_string(state, key)?, bytes_or_string(state, value)?));
                    }
                    let schema = match &m.schema {
                        None => None,
                        Some(weir_api::MessageSchema::RegistryReference(r)) => {
                            Some(MessageSchema::RegistryReference(bytes_or_string(state, r)?))
                        }
                        Some(weir_api::MessageSchema::Inline { name, content }) => Some(MessageSchema::Inline(InlineSchema {
                            name: bytes_or_string(state, name)?,
                            content: bytes_or_string(state, content)?,
                        })),
                    };
                    DataModel::Message(Message {
                        timestamp: timestamp(state, &m.timestamp)?,
                        topic: buffer_or_bytes(state, &m.topic)?,
                        content_type: match &m.content_type {
                            Some(c) => Some(bytes_or_string(state, c)?),
                            None => None,
                        },
                        payload: buffer_or_bytes(state, &m.payload)?,
                        properties: MessageProperties { user_properties },
                        schema,
                    })
                }
                DataItem::Snapshot(s) => DataModel::Snapshot(Snapshot {
                    timestamp: timestamp(state, &s.timestamp)?,
                    format: bytes_or_string(state, &s.format)?,
                    width: s.width,
                    height: s.height,
                    frame: buffer_or_bytes(state, &s.frame)?,
                }),
            })
        }

        fn take_buffer(state: &mut HostState, buffer: Resource<HostBuffer>) -> Result<Bytes, InvalidOutput> {
            state
                .table
                .delete(buffer)
                .map(|b| b.0)
                .map_err(|_| InvalidOutput("returned a buffer handle the host does not hold".to_owned()))
        }

        fn lift_bytes(state: &mut HostState, value: BufferOrBytes) -> Result<Bytes, InvalidOutput> {
            match value {
                BufferOrBytes::Buffer(b) => take_buffer(state, b),
                BufferOrBytes::Bytes(b) => Ok(Bytes::from(b)),
            }
        }

        fn lift_string(state: &mut HostState, value: BufferOrString) -> Result<Bytes, InvalidOutput> {
            match value {
                BufferOrString::Buffer(b) => take_buffer(state, b),
                BufferOrString::String(s) => Ok(Bytes::from(s)),
            }
        }

        fn lift_timestamp(state: &mut HostState, t: Timestamp) -> Result<Hlc, InvalidOutput> {
            let node_id = lift_string(state, t.node_id)?;
            Ok(Hlc {
                secs: t.timestamp.secs,
                nanos: t.timestamp.nanos,
                counter: t.counter,
                node_id: String::from_utf8_lossy(&node_id).into_owned(),
            })
        }

        /// Takes an item back from a guest, resolving the buffer handles it returned.
        pub(crate) fn lift(state: &mut HostState, model: DataModel) -> Result<DataItem, InvalidOutput> {
            Ok(match model {
                DataModel::BufferOrBytes(b) => DataItem::Bytes(lift_bytes(state, b)?),
                DataModel::Message(m) => {
                    let mut user_properties = Vec::with_capacity(m.properties.user_properties.len());
                    for (key, value) in m.properties.user_properties {
                        user_properties.push((lift_string(state, key)?, lift_string(state, value)?));
                    }
                    let schema = match m.schema {
                        None => None,
                        Some(MessageSchema::RegistryReference(r)) => {
                            Some(weir_api::MessageSchema::RegistryReference(lift_string(state, r)?))
                        }
                        Some(MessageSchema::Inline(i)) => Some(weir_api::MessageSchema::Inline {
                            name: lift_string(state, i.name)?,
                            content: lift_string(state, i.content)?,
                        }),
                    };
                    DataItem::Message(weir_api::Message {
                        timestamp: lift_timestamp(state, m.timestamp)?,
                        topic: lift_bytes(state, m.topic)?,
                        content_type: match m.content_type {
                            Some(c) => Some(lift_string(state, c)?),
                            None => None,
                        },
                        payload: lift_bytes(state, m.payload)?,
                        user_properties,
                        schema,
                    })
                }
                DataModel::Snapshot(s) => DataItem::Snapshot(weir_api::Snapshot {
                    timestamp: lift_timestamp(state, s.timestamp)?,
                    format: lift_string(state, s.format)?,
                    width: s.width,
                    height: s.height,
                    frame: lift_bytes(state, s.frame)?,
                }),
            })
        }

        pub(crate) fn lower_configuration(configuration: &ModuleConfiguration) -> wit::types::ModuleConfiguration {
            wit::types::ModuleConfiguration {
                properties: configuration.properties.clone(),
                module_schemas: configuration
                    .module_schemas
                    .iter()
                    .map(|s| wit::types::ModuleSchema {
                        name: s.name.clone(),
                        content_type: s.content_type.clone(),
                        content: s.content.clone(),
                    })
                    .collect(),
            }
        }
    };
}

pub(crate) mod ga {
    use crate::bindings::ga::wasm_graph::processor as wit;

    host_interfaces!();

    impl wit::schema_types::Host for HostState {}

    impl wit::schema_registry::Host for HostState {
        fn get(
            &mut self,
            _id: String,
            _version: String,
            _timeout: (u64, u32),
        ) -> wasmtime::Result<Result<wit::schema_types::Schema, wit::schema_types::SchemaError>>
        {
            Ok(Err(wit::schema_types::SchemaError::NotAvailable))
        }
    }
}

pub(crate) mod preview {
    use crate::bindings::preview::tinykube_graph::processor as wit;

    host_interfaces!();
}
