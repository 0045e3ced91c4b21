//! What a tenant may do and consume: [`Role`]s and [`Quotas`], shared by the platform and
//! the API client.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What a principal may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The platform operator: tenants, quotas, executors. Belongs to no tenant.
    Admin,
    /// Everything a developer may, plus the tenant's tokens and endpoints.
    Owner,
    /// Reads, uploads and deploys.
    Developer,
    /// Reads.
    Viewer,
}

impl Role {
    /// Its place in viewer < developer < owner < admin.
    pub fn rank(self) -> u8 {
        match self {
            Self::Viewer => 0,
            Self::Developer => 1,
            Self::Owner => 2,
            Self::Admin => 3,
        }
    }
}

/// Per-tenant limits. The platform's defaults fit real modules (a componentize-py module needs
/// tens of MiB of linear memory and ~600k fuel for its first `process`); an admin may override
/// any of them per tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, default)]
pub struct Quotas {
    /// Modules a tenant may store.
    pub max_modules: u32,
    /// Size of one module.
    pub max_module_bytes: u64,
    /// Size of all of a tenant's modules together.
    pub max_module_total_bytes: u64,
    /// Graph definitions a tenant may store.
    pub max_graphs: u32,
    /// Deployments a tenant may run.
    pub max_deployments: u32,
    /// Operations in one graph.
    pub max_nodes_per_graph: u32,
    /// Fuel (roughly, wasm instructions) one operator call may use, `init` included.
    pub fuel_per_message: u64,
    /// Fuel per second across all of the tenant's calls: its CPU share on shared workers.
    pub fuel_per_second: u64,
    /// Wall-clock time one operator call may take, host calls included.
    #[serde(with = "millis")]
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub call_timeout: Duration,
    /// Linear memory of one operator instance.
    pub memory_per_instance: u64,
    /// Operator instances the tenant's running deployments may need (one per wasm node; a
    /// deployment that would pass it is refused). The platform admits the tenants' quotas
    /// together against its executors' pool, so this many are always there for the tenant.
    pub max_instances: u32,
    /// Messages per second into the tenant's deployments.
    pub messages_per_second_in: u32,
    /// Size of one item, in or out of an operator (payload, topic, properties together).
    pub max_message_bytes: u64,
    /// Bytes of the tenant's messages taken by its deployments' sources and not yet processed
    /// (queued at intake or anywhere inside a dataflow), across its deployments. A source
    /// that would pass it holds back (HTTP ingest answers `429`).
    pub max_inflight_bytes: u64,
    /// Bytes of outputs waiting in the tenant's HTTP sink queues for a reader, across its
    /// deployments. While it is full the deployments' sinks hold back, and so their sources.
    pub max_queued_output_bytes: u64,
    /// Bytes of dead letters kept for the tenant to read, in the control store across restarts
    /// (payload, detail, topic, node and deployment of each; a letter's kept payload is cut to
    /// 64 KiB, its original size recorded; at most 10,000 letters whatever their bytes); the
    /// oldest go first, counted in usage.
    pub max_dead_letter_bytes: u64,
    /// Keys in the tenant's state store.
    pub max_state_keys: u64,
    /// Bytes of keys and values in the tenant's state store.
    pub max_state_bytes: u64,
    /// Length of one state key.
    pub max_state_key_bytes: u64,
    /// Distinct metric series (name + labels) the tenant's modules may create.
    pub max_metric_series: u32,
    /// Length of one log line from a module; longer lines are cut.
    pub max_log_line_bytes: u32,
    /// Log lines kept for the tenant to read.
    pub max_log_lines: u32,
    /// API requests per second.
    pub api_requests_per_second: u32,
    /// Device credentials (`/v1/devices`) the tenant may hold for the embedded MQTT broker.
    pub max_devices: u32,
    /// Hosts (names or IP addresses) the tenant's endpoints may connect to although they are
    /// loopback, private or link-local: the platform's own network is closed unless an admin
    /// opens a host here.
    pub allowed_private_hosts: Vec<String>,
    /// Whether the tenant's modules may import `wasi:nn` (inference, azure-compat §6). When
    /// false, uploading such a module is refused, and a running one's `load` fails.
    pub inference: bool,
    /// Size of one model a module loads through `wasi:nn` (`load` refuses a larger one; Azure
    /// recommends models under 50 MB).
    pub max_model_bytes: u64,
    /// Models (`wasi:nn` graphs) alive at once in one operator instance; each holds its
    /// weights in the executor's memory, outside the instance's linear memory.
    pub max_graphs_per_instance: u32,
}

impl Default for Quotas {
    fn default() -> Self {
        const MIB: u64 = 1 << 20;
        Self {
            max_modules: 100,
            max_module_bytes: 64 * MIB,
            max_module_total_bytes: 1024 * MIB,
            max_graphs: 100,
            max_deployments: 20,
            max_nodes_per_graph: 256,
            fuel_per_message: 1_000_000_000,
            fuel_per_second: 20_000_000_000,
            call_timeout: Duration::from_secs(1),
            memory_per_instance: 256 * MIB,
            max_instances: 16,
            messages_per_second_in: 10_000,
            max_message_bytes: 16 * MIB,
            max_inflight_bytes: 64 * MIB,
            max_queued_output_bytes: 64 * MIB,
            max_dead_letter_bytes: 16 * MIB,
            max_state_keys: 100_000,
            max_state_bytes: 256 * MIB,
            max_state_key_bytes: 1024,
            max_metric_series: 1_000,
            max_log_line_bytes: 16 * 1024,
            max_log_lines: 10_000,
            api_requests_per_second: 50,
            max_devices: 100,
            allowed_private_hosts: Vec::new(),
            inference: true,
            max_model_bytes: 64 * MIB,
            max_graphs_per_instance: 2,
        }
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        value: &Duration,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(u64::try_from(value.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Duration, D::Error> {
        u64::deserialize(deserializer).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_overrides_keep_the_other_defaults() {
        let quotas: Quotas =
            serde_json::from_str(r#"{"fuel_per_message": 5, "call_timeout": 250}"#).unwrap();
        assert_eq!(quotas.fuel_per_message, 5);
        assert_eq!(quotas.call_timeout, Duration::from_millis(250));
        assert_eq!(quotas.max_modules, Quotas::default().max_modules);
    }

    #[test]
    fn unknown_quota_names_are_rejected() {
        assert!(serde_json::from_str::<Quotas>(r#"{"fuel_per_mesage": 5}"#).is_err());
    }
}
