//! Azure IoT Operations `DataflowGraph` documents (azure-compat §4.1), accepted by weir as
//! deployments: the Kubernetes form (`apiVersion`, `kind`, `metadata`, `spec`) or the bare
//! `spec`/ARM `properties` form. One Source, one Graph and one Destination node, connected
//! Source → Graph → Destination, become a [`CreateDeployment`]; anything weir cannot run yet is
//! refused with every problem named.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::rest::{Binding, CreateDeployment, GraphRef, ProblemField};

/// A `DataflowGraph` resource as Kubernetes or ARM carries it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataflowGraphDocument {
    /// `connectivity.iotoperations.azure.com/v1` (Kubernetes form).
    #[serde(default)]
    pub api_version: Option<String>,
    /// `DataflowGraph` (Kubernetes form).
    #[serde(default)]
    pub kind: Option<String>,
    /// Its name (Kubernetes form).
    #[serde(default)]
    pub metadata: Option<Metadata>,
    /// Its name (ARM form).
    #[serde(default)]
    pub name: Option<String>,
    /// The graph (Kubernetes form).
    #[serde(default)]
    pub spec: Option<DataflowGraphSpec>,
    /// The graph (ARM form).
    #[serde(default)]
    pub properties: Option<DataflowGraphSpec>,
}

/// Kubernetes metadata; only the name matters here.
#[derive(Debug, Clone, Deserialize)]
pub struct Metadata {
    /// The resource name: the deployment id.
    pub name: String,
}

/// The `spec` of a `DataflowGraph`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataflowGraphSpec {
    /// `Enabled` or `Disabled` (case-insensitive); a disabled graph is deployed paused.
    #[serde(default)]
    pub mode: Option<String>,
    /// The dataflow profile (scaling); weir places deployments itself.
    #[serde(default)]
    pub profile_ref: Option<String>,
    /// Broker-side persistence of the subscription; a connector setting.
    #[serde(default)]
    pub request_disk_persistence: Option<String>,
    /// The nodes.
    #[serde(default)]
    pub nodes: Vec<Node>,
    /// How the nodes connect.
    #[serde(default)]
    pub node_connections: Vec<Connection>,
}

/// A node of a `DataflowGraph`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    /// `Source`, `Graph` or `Destination`.
    pub node_type: String,
    /// Its name.
    pub name: String,
    /// For sources.
    #[serde(default)]
    pub source_settings: Option<SourceSettings>,
    /// For graphs.
    #[serde(default)]
    pub graph_settings: Option<GraphSettings>,
    /// For destinations.
    #[serde(default)]
    pub destination_settings: Option<DestinationSettings>,
}

/// Where a Source node reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceSettings {
    /// The endpoint name.
    pub endpoint_ref: String,
    /// Topics or topic filters.
    #[serde(default)]
    pub data_sources: Vec<String>,
    /// An asset reference (informational).
    #[serde(default)]
    pub asset_ref: Option<String>,
}

/// Which graph definition a Graph node runs.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GraphSettings {
    /// The registry endpoint the artifact comes from.
    #[serde(default)]
    pub registry_endpoint_ref: Option<String>,
    /// The graph artifact, `[<path>/]name:version`.
    pub artifact: String,
    /// Configuration for the graph's modules.
    #[serde(default)]
    pub configuration: Vec<KeyValue>,
}

/// One configuration entry.
#[derive(Debug, Clone, Deserialize)]
pub struct KeyValue {
    /// Key.
    pub key: String,
    /// Value.
    pub value: String,
}

/// Where a Destination node writes.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DestinationSettings {
    /// The endpoint name.
    pub endpoint_ref: String,
    /// The topic (may contain `${outputTopic}`).
    #[serde(default)]
    pub data_destination: Option<String>,
}

/// An edge between nodes.
#[derive(Debug, Clone, Deserialize)]
pub struct Connection {
    /// The upstream node.
    pub from: ConnectionEnd,
    /// The downstream node.
    pub to: ConnectionEnd,
}

/// One end of an edge.
#[derive(Debug, Clone, Deserialize)]
pub struct ConnectionEnd {
    /// The node name (`<graph>.output.<arm>` for a graph's named output).
    pub name: String,
}

/// What a `DataflowGraph` becomes in weir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataflowGraphDeployment {
    /// The deployment.
    pub deployment: CreateDeployment,
    /// `false` when the document's `mode` is `Disabled`: deployed paused.
    pub enabled: bool,
}

impl DataflowGraphDocument {
    /// Whether a parsed document looks like a `DataflowGraph` rather than weir's own form.
    pub fn is_dataflow_graph(value: &serde_json::Value) -> bool {
        value.get("kind").and_then(|k| k.as_str()) == Some("DataflowGraph")
            || value.get("spec").is_some_and(|s| s.get("nodes").is_some())
            || value
                .get("properties")
                .is_some_and(|s| s.get("nodes").is_some())
    }

    /// The deployment this document describes, or every reason it cannot be one.
    pub fn to_deployment(&self) -> Result<DataflowGraphDeployment, Vec<ProblemField>> {
        let mut problems = Vec::new();
        let mut problem = |path: &str, message: String| {
            problems.push(ProblemField {
                path: path.to_owned(),
                message,
            });
        };
        if let Some(kind) = &self.kind
            && kind != "DataflowGraph"
        {
            problem("/kind", format!("expected DataflowGraph, found {kind}"));
        }
        let name = self
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .or_else(|| self.name.clone());
        if name.is_none() {
            problem("/metadata/name", "the graph needs a name".to_owned());
        }
        let (spec, at) = match (&self.spec, &self.properties) {
            (Some(spec), _) => (spec, "/spec"),
            (None, Some(properties)) => (properties, "/properties"),
            (None, None) => {
                problem("/spec", "the document has no spec".to_owned());
                return Err(problems);
            }
        };
        let enabled = match spec.mode.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("enabled") => true,
            Some("disabled") => false,
            Some(other) => {
                problem(
                    &format!("{at}/mode"),
                    format!("must be Enabled or Disabled, not {other}"),
                );
                true
            }
        };
        let of_type = |wanted: &str| -> Vec<(usize, &Node)> {
            spec.nodes
                .iter()
                .enumerate()
                .filter(|(_, n)| n.node_type.eq_ignore_ascii_case(wanted))
                .collect()
        };
        let (sources, graphs, destinations) =
            (of_type("Source"), of_type("Graph"), of_type("Destination"));
        for (index, node) in spec.nodes.iter().enumerate() {
            if !["source", "graph", "destination"]
                .contains(&node.node_type.to_ascii_lowercase().as_str())
            {
                problem(
                    &format!("{at}/nodes/{index}/nodeType"),
                    format!(
                        "must be Source, Graph or Destination, not {}",
                        node.node_type
                    ),
                );
            }
            if node.name.is_empty()
                || !node
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                problem(
                    &format!("{at}/nodes/{index}/name"),
                    "node names are letters, digits, - and _".to_owned(),
                );
            }
        }
        for (what, nodes) in [
            ("Source", &sources),
            ("Graph", &graphs),
            ("Destination", &destinations),
        ] {
            if nodes.len() != 1 {
                problem(
                    &format!("{at}/nodes"),
                    format!(
                        "weir runs a DataflowGraph with exactly one {what} node; this one has {}",
                        nodes.len()
                    ),
                );
            }
        }
        let [(source_index, source)] = sources.as_slice() else {
            return Err(problems);
        };
        let [(graph_index, graph)] = graphs.as_slice() else {
            return Err(problems);
        };
        let [(destination_index, destination)] = destinations.as_slice() else {
            return Err(problems);
        };
        let base = |name: &str| name.split('.').next().unwrap_or(name).to_owned();
        let edges: Vec<(String, String)> = spec
            .node_connections
            .iter()
            .map(|c| (base(&c.from.name), base(&c.to.name)))
            .collect();
        for (from, to) in [
            (&source.name, &graph.name),
            (&graph.name, &destination.name),
        ] {
            if !edges.iter().any(|(f, t)| f == from && t == to) {
                problem(
                    &format!("{at}/nodeConnections"),
                    format!("expected a connection from {from} to {to}"),
                );
            }
        }
        for (index, (from, to)) in edges.iter().enumerate() {
            let known = |n: &String| spec.nodes.iter().any(|node| &node.name == n);
            if !known(from) || !known(to) {
                problem(
                    &format!("{at}/nodeConnections/{index}"),
                    format!("connects {from} to {to}, but one of them is not a node"),
                );
            }
        }
        let source_binding = match &source.source_settings {
            Some(settings) => Binding {
                endpoint: settings.endpoint_ref.clone(),
                topics: settings.data_sources.clone(),
            },
            None => {
                problem(
                    &format!("{at}/nodes/{source_index}/sourceSettings"),
                    "a Source node needs sourceSettings".to_owned(),
                );
                Binding::default()
            }
        };
        let sink_binding = match &destination.destination_settings {
            Some(settings) => Binding {
                endpoint: settings.endpoint_ref.clone(),
                topics: settings.data_destination.iter().cloned().collect(),
            },
            None => {
                problem(
                    &format!("{at}/nodes/{destination_index}/destinationSettings"),
                    "a Destination node needs destinationSettings".to_owned(),
                );
                Binding::default()
            }
        };
        let mut configuration = BTreeMap::new();
        let mut graph_ref = None;
        match &graph.graph_settings {
            Some(settings) => {
                // `[<registry path>/]name:version`: the tenant's graph of that name and version.
                let last = settings
                    .artifact
                    .rsplit('/')
                    .next()
                    .unwrap_or(&settings.artifact);
                match last.split_once(':') {
                    Some((name, version)) if !name.is_empty() && !version.is_empty() => {
                        graph_ref = Some(GraphRef {
                            name: name.to_owned(),
                            version: version.to_owned(),
                        });
                    }
                    _ => problem(
                        &format!("{at}/nodes/{graph_index}/graphSettings/artifact"),
                        format!("expected name:version, found {}", settings.artifact),
                    ),
                }
                for (index, entry) in settings.configuration.iter().enumerate() {
                    if configuration
                        .insert(entry.key.clone(), entry.value.clone())
                        .is_some()
                    {
                        problem(
                            &format!(
                                "{at}/nodes/{graph_index}/graphSettings/configuration/{index}"
                            ),
                            format!("the key {} appears twice", entry.key),
                        );
                    }
                }
            }
            None => problem(
                &format!("{at}/nodes/{graph_index}/graphSettings"),
                "a Graph node needs graphSettings".to_owned(),
            ),
        }
        match (name, graph_ref) {
            (Some(id), Some(graph)) if problems.is_empty() => Ok(DataflowGraphDeployment {
                deployment: CreateDeployment {
                    id,
                    graph,
                    configuration,
                    source: source_binding,
                    sink: sink_binding,
                    dead_letters: None,
                    instances: 1,
                    partition_key: None,
                },
                enabled,
            }),
            _ => Err(problems),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCUMENT: &str = r#"
apiVersion: connectivity.iotoperations.azure.com/v1
kind: DataflowGraph
metadata:
  name: temperature-graph
spec:
  mode: Enabled
  profileRef: default
  nodes:
    - nodeType: Source
      name: mqtt-source
      sourceSettings:
        endpointRef: default
        dataSources: [sensor/temperature/raw]
    - nodeType: Graph
      name: temperature
      graphSettings:
        registryEndpointRef: my-registry
        artifact: azure-samples/graph-simple:1.0.0
        configuration:
          - key: temperature_lower_bound
            value: "-40"
    - nodeType: Destination
      name: mqtt-destination
      destinationSettings:
        endpointRef: default
        dataDestination: sensor/temperature/processed
  nodeConnections:
    - from: {name: mqtt-source}
      to: {name: temperature}
    - from: {name: temperature}
      to: {name: mqtt-destination}
"#;

    fn parse(text: &str) -> DataflowGraphDocument {
        serde_saphyr::from_str(text).unwrap()
    }

    #[test]
    fn the_documented_shape_becomes_a_deployment() {
        let deployment = parse(DOCUMENT).to_deployment().unwrap();
        assert!(deployment.enabled);
        let d = deployment.deployment;
        assert_eq!(d.id, "temperature-graph");
        assert_eq!(
            (d.graph.name.as_str(), d.graph.version.as_str()),
            ("graph-simple", "1.0.0")
        );
        assert_eq!(d.configuration["temperature_lower_bound"], "-40");
        assert_eq!(d.source.endpoint, "default");
        assert_eq!(d.source.topics, ["sensor/temperature/raw"]);
        assert_eq!(d.sink.topics, ["sensor/temperature/processed"]);
    }

    #[test]
    fn disabled_graphs_deploy_paused() {
        let text = DOCUMENT.replace("mode: Enabled", "mode: disabled");
        assert!(!parse(&text).to_deployment().unwrap().enabled);
    }

    #[test]
    fn every_problem_is_reported() {
        let text = DOCUMENT
            .replace(
                "artifact: azure-samples/graph-simple:1.0.0",
                "artifact: no-version",
            )
            .replace("to: {name: mqtt-destination}", "to: {name: nowhere}")
            .replace("mode: Enabled", "mode: Sometimes");
        let problems = parse(&text).to_deployment().unwrap_err();
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert!(paths.contains(&"/spec/mode"), "{problems:?}");
        assert!(
            paths.contains(&"/spec/nodes/1/graphSettings/artifact"),
            "{problems:?}"
        );
        assert!(paths.contains(&"/spec/nodeConnections/1"), "{problems:?}");
        assert!(paths.contains(&"/spec/nodeConnections"), "{problems:?}");
    }

    #[test]
    fn chains_of_graph_nodes_are_refused_by_name() {
        let text = DOCUMENT.replace(
            "    - nodeType: Destination",
            "    - nodeType: Graph\n      name: second\n      graphSettings: {artifact: other:1.0.0}\n    - nodeType: Destination",
        );
        let problems = parse(&text).to_deployment().unwrap_err();
        assert!(
            problems
                .iter()
                .any(|p| p.message.contains("exactly one Graph node; this one has 2")),
            "{problems:?}"
        );
    }
}
