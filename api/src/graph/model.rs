//! The typed graph definition: Azure's `aio-wasm-graph-config-1.0.0` (GA) and its preview form
//! (`hostlibVersion`, no `metadata`). Field names are Azure's.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A graph definition as uploaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GraphDefinition {
    /// Name, version and provenance; required by the GA schema, absent in preview graphs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<GraphMetadata>,
    /// Contract versions and features the graph needs.
    pub module_requirements: ModuleRequirements,
    /// Parameters each operation's `init` receives.
    #[serde(default)]
    pub module_configurations: Vec<ModuleConfigurationDef>,
    /// The nodes.
    pub operations: Vec<Operation>,
    /// The edges.
    pub connections: Vec<Connection>,
    /// Payload schemas edges may name.
    #[serde(default)]
    pub schemas: Vec<SchemaDef>,
}

/// `metadata`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphMetadata {
    /// The URL of the graph schema.
    #[serde(rename = "$schema")]
    pub schema: String,
    /// The graph's name.
    pub name: String,
    /// The graph's version.
    pub version: String,
    /// Free text.
    #[serde(default)]
    pub description: Option<String>,
    /// Free text.
    #[serde(default)]
    pub vendor: Option<String>,
}

/// `moduleRequirements`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ModuleRequirements {
    /// The contract version (`1.1.0`; `0.x` for preview graphs).
    pub api_version: String,
    /// The runtime version (GA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_version: Option<String>,
    /// The runtime version (preview spelling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostlib_version: Option<String>,
    /// Declared features (`wasi-nn`).
    #[serde(default)]
    pub features: Option<Vec<Feature>>,
}

/// One declared feature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Feature {
    /// Its name.
    pub name: String,
    /// Its value, if any.
    #[serde(default)]
    pub value: Option<String>,
}

/// `moduleConfigurations[]`: the parameters of one operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleConfigurationDef {
    /// The operation's name.
    pub name: String,
    /// Parameter key → definition.
    pub parameters: BTreeMap<String, ParameterDef>,
}

/// One parameter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParameterDef {
    /// Its name (equal to the key in every real graph).
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: Option<String>,
    /// A deployment must give it a value unless it has a default.
    #[serde(default)]
    pub required: bool,
    /// The value when the deployment gives none.
    #[serde(default)]
    pub default: Option<String>,
}

/// One node of the graph.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Operation {
    /// Unique within the graph.
    pub name: String,
    /// What the node does.
    pub operation_type: OperationType,
    /// The module (an OCI reference or a local name) for operators that run one.
    #[serde(default)]
    pub module: Option<String>,
}

/// `operationType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OperationType {
    /// Where messages enter.
    Source,
    /// A module's `map`.
    Map,
    /// A module's `filter`.
    Filter,
    /// A module's `branch`.
    Branch,
    /// Merges its inputs.
    Concatenate,
    /// A module's `accumulate`.
    Accumulate,
    /// A module's `delay`.
    Delay,
    /// Where messages leave.
    Sink,
}

impl OperationType {
    /// Every operation type, as the schema lists them.
    pub const ALL: [Self; 8] = [
        Self::Source,
        Self::Map,
        Self::Filter,
        Self::Branch,
        Self::Concatenate,
        Self::Accumulate,
        Self::Delay,
        Self::Sink,
    ];

    /// The YAML spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Source => "source",
            Self::Map => "map",
            Self::Filter => "filter",
            Self::Branch => "branch",
            Self::Concatenate => "concatenate",
            Self::Accumulate => "accumulate",
            Self::Delay => "delay",
            Self::Sink => "sink",
        }
    }

    /// Whether the operation runs a module.
    pub fn runs_module(self) -> bool {
        !matches!(self, Self::Source | Self::Concatenate | Self::Sink)
    }
}

/// One edge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Connection {
    /// Where it starts.
    pub from: FromPoint,
    /// Where it ends.
    pub to: ToPoint,
}

/// The start of an edge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FromPoint {
    /// The operation.
    pub name: String,
    /// For a branch: which arm.
    #[serde(default)]
    pub arm: Option<Arm>,
    /// A schema (from `schemas`) for the payloads on this edge.
    #[serde(default)]
    pub schema_name: Option<String>,
}

/// A branch arm, spelled as the strings `"True"` and `"False"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Arm {
    /// Items the branch returned `false` for.
    #[serde(rename = "False")]
    False,
    /// Items the branch returned `true` for.
    #[serde(rename = "True")]
    True,
}

/// The end of an edge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToPoint {
    /// The operation.
    pub name: String,
}

/// `schemas[]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaDef {
    /// E.g. `Json/schema/draft-07`.
    pub format: String,
    /// The name edges use.
    pub name: String,
    /// The schema text.
    pub schema: String,
}
