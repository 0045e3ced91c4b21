//! Scale-out of one deployment: its `instances` and `partition_key` (issue 13, point 5).
//!
//! A deployment may ask for `instances: N` (1 to [`MAX_INSTANCES`], default 1). Its N
//! instances share one input: a Kafka source's instances join one consumer group, an MQTT
//! source's subscribe `$share/<group>/<filter>` (MQTT 5.0 §4.8.2), so each message goes to one
//! instance. The control plane places each instance on its own executor where the pool allows.
//!
//! Windows: Azure IoT Operations requires instance count 1 for any graph with a window or
//! accumulate, because shared subscriptions split the input and each instance would aggregate
//! a subset (azure-compat §5.3). weir keeps that rule unless the deployment declares a
//! partition key: then every key's input reaches one instance, so every key's window lives on
//! one instance. The one key weir offers is [`PartitionKey::KafkaKey`]: the Kafka record key,
//! which the producer's partitioner maps to a partition, and the consumer group gives each
//! partition to one instance. MQTT has no key affinity (a broker's shared subscription picks a
//! member per message, not per key), so a keyed deployment needs a Kafka source.
//!
//! Instance ids: a one-instance deployment runs under its own id; instance n (1 to N) of an
//! N-instance one runs as `<id>#<n>` ([`instance_ids`]). `#` is outside the deployment id
//! alphabet, so the two never collide. The control plane places each instance like a
//! deployment of its own, preferring executors that run none of its siblings.

use serde::{Deserialize, Serialize};

use crate::ErrorCode;
use crate::rest::{CreateDeployment, EndpointKind, ProblemField};
use crate::tenancy::Quotas;

/// Most instances one deployment may ask for (each also counts against the tenant's
/// `max_instances` operator instance quota, once per wasm node).
pub const MAX_INSTANCES: u32 = 64;

/// Between a deployment id and an instance number in an instance's id.
pub const INSTANCE_SEPARATOR: char = '#';

/// The serde default of [`CreateDeployment::instances`].
pub fn one_instance() -> u32 {
    1
}

/// Whether `instances` is the default (then it is not serialized).
#[allow(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's skip_serializing_if passes a reference"
)]
pub fn is_one_instance(instances: &u32) -> bool {
    *instances == 1
}

/// What keys a deployment's input across its instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum PartitionKey {
    /// The Kafka record key (`kafka-key`): records with one key go to one partition (the
    /// producer's partitioner), and a consumer group gives each partition to one member.
    #[serde(rename = "kafka-key")]
    KafkaKey,
}

impl PartitionKey {
    /// Its name in documents.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::KafkaKey => "kafka-key",
        }
    }
}

/// The ids `deployment`'s `instances` run under: the id itself for one instance,
/// `<deployment>#1` to `<deployment>#<instances>` for more.
pub fn instance_ids(deployment: &str, instances: u32) -> Vec<String> {
    if instances <= 1 {
        vec![deployment.to_owned()]
    } else {
        (1..=instances)
            .map(|index| format!("{deployment}{INSTANCE_SEPARATOR}{index}"))
            .collect()
    }
}

/// Whether instance `index` (from [`split_instance`]) is one of a deployment with
/// `instances`: 0 for one instance, 1 to `instances` for more.
pub fn is_instance(instances: u32, index: u32) -> bool {
    if instances <= 1 {
        index == 0
    } else {
        (1..=instances).contains(&index)
    }
}

/// The instance whose state is recorded as the deployment's status word (the others show in
/// its `runtime.instances`): 0 for one instance, 1 for more.
pub fn recording_instance(instances: u32) -> u32 {
    u32::from(instances > 1)
}

/// The deployment id and instance number an instance id stands for (see [`instance_ids`]);
/// an id without a valid `#<n>` suffix (n from 1, no leading zero) is instance 0 of itself.
pub fn split_instance(id: &str) -> (&str, u32) {
    if let Some((deployment, text)) = id.rsplit_once(INSTANCE_SEPARATOR)
        && !text.starts_with('0')
        && text.bytes().all(|b| b.is_ascii_digit())
        && let Ok(index) = text.parse::<u32>()
    {
        return (deployment, index);
    }
    (id, 0)
}

/// What the scale rules need to know of a deployment's graph and bindings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScaleShape {
    /// Whether the graph has an `accumulate` operation (a window or an aggregation).
    pub has_accumulate: bool,
    /// Its wasm nodes (one operator instance each, per deployment instance).
    pub wasm_nodes: u32,
    /// The kind of its source endpoint.
    pub source: EndpointKind,
}

/// One broken scale rule: the error code it maps to (`invalid_deployment` or
/// `quota_exceeded`) and where and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaleProblem {
    /// The stable code.
    pub code: ErrorCode,
    /// Where and what.
    pub field: ProblemField,
}

/// The scale rules `spec` breaks, given its graph's `shape` and the tenant's `quotas`; empty
/// when it may run. The rules, each with its JSON pointer:
/// - `/instances`: 1 to [`MAX_INSTANCES`];
/// - `/instances`: `instances × wasm nodes` operator instances within `max_instances`
///   (`quota_exceeded`);
/// - `/instances`: more than one instance needs a source they can share (an MQTT or Kafka
///   endpoint; the `http` source feeds one instance);
/// - `/partition_key`: more than one instance of a graph with an `accumulate` needs a partition
///   key (azure-compat §5.3: unkeyed, each instance would aggregate a subset);
/// - `/partition_key`: `kafka-key` needs a Kafka source.
pub fn problems(spec: &CreateDeployment, shape: &ScaleShape, quotas: &Quotas) -> Vec<ScaleProblem> {
    let mut out = Vec::new();
    let mut push = |code: ErrorCode, path: &str, message: String| {
        out.push(ScaleProblem {
            code,
            field: ProblemField {
                path: path.to_owned(),
                message,
            },
        });
    };
    let instances = spec.instances;
    if instances == 0 || instances > MAX_INSTANCES {
        push(
            ErrorCode::InvalidDeployment,
            "/instances",
            format!("instances is 1 to {MAX_INSTANCES}, got {instances}"),
        );
    } else {
        let needed = u64::from(instances) * u64::from(shape.wasm_nodes);
        if needed > u64::from(quotas.max_instances) {
            push(
                ErrorCode::QuotaExceeded,
                "/instances",
                format!(
                    "{instances} instances of a graph with {} wasm nodes need {needed} operator instances; the tenant's max_instances quota is {}",
                    shape.wasm_nodes, quotas.max_instances
                ),
            );
        }
    }
    if instances > 1 && !matches!(shape.source, EndpointKind::Mqtt | EndpointKind::Kafka) {
        push(
            ErrorCode::InvalidDeployment,
            "/instances",
            "several instances share their input through an MQTT shared subscription or a Kafka consumer group: the source must be an mqtt or kafka endpoint (the http source feeds one instance)".to_owned(),
        );
    }
    if instances > 1 && shape.has_accumulate && spec.partition_key.is_none() {
        push(
            ErrorCode::InvalidDeployment,
            "/partition_key",
            "a graph with an accumulate (a window or aggregation) runs as one instance unless the deployment declares a partition_key: unkeyed, each instance would aggregate a subset of the input (azure-compat 5.3); set partition_key: \"kafka-key\" with a kafka source, or instances: 1".to_owned(),
        );
    }
    if let Some(key) = spec.partition_key
        && key == PartitionKey::KafkaKey
        && shape.source != EndpointKind::Kafka
    {
        push(
            ErrorCode::InvalidDeployment,
            "/partition_key",
            format!(
                "partition_key {:?} keys by the Kafka record key and needs a kafka source; MQTT shared subscriptions give no key affinity",
                key.as_str()
            ),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::indexing_slicing,
        reason = "test code: a failed expectation is a failed test"
    )]

    use super::*;
    use crate::rest::{Binding, GraphRef};

    fn spec(instances: u32, key: Option<PartitionKey>) -> CreateDeployment {
        CreateDeployment {
            id: "win".to_owned(),
            graph: GraphRef {
                name: "g".to_owned(),
                version: "1".to_owned(),
            },
            configuration: std::collections::BTreeMap::new(),
            source: Binding {
                endpoint: "k".to_owned(),
                topics: vec!["in".to_owned()],
            },
            sink: Binding::default(),
            dead_letters: None,
            instances,
            partition_key: key,
        }
    }

    fn shape(has_accumulate: bool, source: EndpointKind) -> ScaleShape {
        ScaleShape {
            has_accumulate,
            wasm_nodes: 2,
            source,
        }
    }

    fn paths(problems: &[ScaleProblem]) -> Vec<(&str, ErrorCode)> {
        problems
            .iter()
            .map(|p| (p.field.path.as_str(), p.code))
            .collect()
    }

    #[test]
    fn instance_ids_round_trip_and_never_collide_with_deployment_ids() {
        assert_eq!(instance_ids("a", 1), ["a"]);
        assert_eq!(instance_ids("a", 3), ["a#1", "a#2", "a#3"]);
        assert_eq!(split_instance("a#3"), ("a", 3));
        assert_eq!(split_instance("a"), ("a", 0));
        for odd in ["a#0", "a#03", "a#", "a#x", "a#-1", "a#+2", "a#99999999999"] {
            assert_eq!(split_instance(odd), (odd, 0), "{odd}");
        }
        for id in instance_ids("dep.1_x-y", 5) {
            let (base, index) = split_instance(&id);
            assert_eq!(base, "dep.1_x-y");
            assert!(is_instance(5, index));
            assert!(!is_instance(4, index) || index <= 4);
        }
        assert!(is_instance(1, 0));
        assert!(!is_instance(1, 1));
        assert!(!is_instance(3, 0));
        assert!(!is_instance(3, 4));
        assert_eq!(recording_instance(1), 0);
        assert_eq!(recording_instance(3), 1);
    }

    #[test]
    fn one_instance_is_the_default_and_not_serialized() {
        let text = r#"{"id":"a","graph":{"name":"g","version":"1"}}"#;
        let parsed: CreateDeployment = serde_json::from_str(text).unwrap();
        assert_eq!(parsed.instances, 1);
        assert_eq!(parsed.partition_key, None);
        let back = serde_json::to_value(&parsed).unwrap();
        assert!(back.get("instances").is_none());
        assert!(back.get("partition_key").is_none());
        let keyed: CreateDeployment = serde_json::from_str(
            r#"{"id":"a","graph":{"name":"g","version":"1"},"instances":3,"partition_key":"kafka-key"}"#,
        )
        .unwrap();
        assert_eq!(keyed.instances, 3);
        assert_eq!(keyed.partition_key, Some(PartitionKey::KafkaKey));
        let bad = serde_json::from_str::<CreateDeployment>(
            r#"{"id":"a","graph":{"name":"g","version":"1"},"partition_key":"payload"}"#,
        );
        assert!(bad.is_err());
    }

    #[test]
    fn stateless_instances_share_mqtt_or_kafka_input() {
        let quotas = Quotas::default();
        for source in [EndpointKind::Mqtt, EndpointKind::Kafka] {
            assert!(problems(&spec(3, None), &shape(false, source), &quotas).is_empty());
        }
        let http = problems(&spec(3, None), &shape(false, EndpointKind::Http), &quotas);
        assert_eq!(paths(&http), [("/instances", ErrorCode::InvalidDeployment)]);
        assert!(problems(&spec(1, None), &shape(true, EndpointKind::Http), &quotas).is_empty());
    }

    #[test]
    fn an_accumulate_needs_a_partition_key_to_scale_out() {
        let quotas = Quotas::default();
        let refused = problems(&spec(3, None), &shape(true, EndpointKind::Kafka), &quotas);
        assert_eq!(
            paths(&refused),
            [("/partition_key", ErrorCode::InvalidDeployment)]
        );
        assert!(refused[0].field.message.contains("accumulate"));
        assert!(refused[0].field.message.contains("5.3"));
        let keyed = spec(3, Some(PartitionKey::KafkaKey));
        assert!(problems(&keyed, &shape(true, EndpointKind::Kafka), &quotas).is_empty());
        let mqtt = problems(&keyed, &shape(true, EndpointKind::Mqtt), &quotas);
        assert_eq!(
            paths(&mqtt),
            [("/partition_key", ErrorCode::InvalidDeployment)]
        );
    }

    #[test]
    fn instances_count_against_max_instances() {
        let quotas = Quotas {
            max_instances: 5,
            ..Quotas::default()
        };
        // 2 wasm nodes each: 2 instances need 4, 3 need 6.
        assert!(problems(&spec(2, None), &shape(false, EndpointKind::Kafka), &quotas).is_empty());
        let over = problems(&spec(3, None), &shape(false, EndpointKind::Kafka), &quotas);
        assert_eq!(paths(&over), [("/instances", ErrorCode::QuotaExceeded)]);
        assert!(over[0].field.message.contains("max_instances quota is 5"));
        for bad in [0, MAX_INSTANCES + 1] {
            let out = problems(
                &spec(bad, None),
                &shape(false, EndpointKind::Kafka),
                &quotas,
            );
            assert_eq!(paths(&out), [("/instances", ErrorCode::InvalidDeployment)]);
        }
    }
}
