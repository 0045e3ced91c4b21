//! Graph definitions: parse (YAML or JSON) → check structure → read typed → validate semantics.
//!
//! [`parse_graph`] accepts the GA form of `aio-wasm-graph-config-1.0.0` and the preview form
//! (`hostlibVersion`, optional `metadata`) and returns either a [`ValidatedGraph`] or every
//! problem at once, each with its path (`operations[3].module`). Validation is pure: module
//! references are checked against the tenant's modules when a deployment is built, not here.

mod model;
mod shape;

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use serde_json::Value;

pub use model::{
    Arm, Connection, Feature, FromPoint, GraphDefinition, GraphMetadata, ModuleConfigurationDef,
    ModuleRequirements, Operation, OperationType, ParameterDef, SchemaDef, ToPoint,
};

/// Largest graph definition accepted, in bytes.
pub const MAX_GRAPH_BYTES: usize = 4 << 20;

/// Features a graph may declare.
pub const KNOWN_FEATURES: &[&str] = &["wasi-nn"];

/// One problem in a graph definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GraphProblem {
    /// Where: `operations[3].module`, or `(root)`.
    pub path: String,
    /// What is wrong, in words.
    pub message: String,
}

impl std::fmt::Display for GraphProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Why a graph definition was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    /// Over [`MAX_GRAPH_BYTES`].
    #[error("graph definition is {size} bytes, over the limit of {max}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Not YAML or JSON.
    #[error("graph definition is not valid YAML or JSON: {0}")]
    Syntax(String),
    /// Parsed, but wrong: every problem found.
    #[error("graph definition has {} problem(s): {}", .0.len(), .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<GraphProblem>),
}

impl GraphError {
    /// Every problem, one per entry (a syntax or size error is one problem at the root).
    pub fn problems(&self) -> Vec<GraphProblem> {
        match self {
            Self::Invalid(problems) => problems.clone(),
            other => vec![GraphProblem {
                path: "(root)".to_owned(),
                message: other.to_string(),
            }],
        }
    }
}

/// Which operator contract the graph's modules are bound to (azure-compat §11 row 12).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GraphContract {
    /// `apiVersion` 1.x: `wasm-graph:processor@1.1.0`.
    Ga,
    /// `apiVersion` 0.x with `hostlibVersion`: `tinykube-graph:processor@1.0.0`.
    Preview,
}

/// An edge between two operations, by index into [`ValidatedGraph::operations`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Edge {
    /// The upstream operation.
    pub from: usize,
    /// The branch arm, for edges out of a branch.
    pub arm: Option<Arm>,
    /// The downstream operation.
    pub to: usize,
    /// The schema named on the edge.
    pub schema_name: Option<String>,
}

/// A graph definition that passed validation, with its topology resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatedGraph {
    definition: GraphDefinition,
    contract: GraphContract,
    edges: Vec<Edge>,
    order: Vec<usize>,
}

impl ValidatedGraph {
    /// The definition as uploaded.
    pub fn definition(&self) -> &GraphDefinition {
        &self.definition
    }

    /// The contract its modules are bound to.
    pub fn contract(&self) -> GraphContract {
        self.contract
    }

    /// The operations.
    pub fn operations(&self) -> &[Operation] {
        &self.definition.operations
    }

    /// The edges.
    pub fn edges(&self) -> &[Edge] {
        &self.edges
    }

    /// Operation indices, every operation after all of its inputs.
    pub fn topological_order(&self) -> &[usize] {
        &self.order
    }

    /// The edges into operation `index`.
    pub fn inputs_of(&self, index: usize) -> impl Iterator<Item = &Edge> {
        self.edges.iter().filter(move |e| e.to == index)
    }

    /// The edges out of operation `index`.
    pub fn outputs_of(&self, index: usize) -> impl Iterator<Item = &Edge> {
        self.edges.iter().filter(move |e| e.from == index)
    }

    /// The parameters declared for the operation named `name`.
    pub fn parameters_of(&self, name: &str) -> Option<&BTreeMap<String, ParameterDef>> {
        self.definition
            .module_configurations
            .iter()
            .find(|c| c.name == name)
            .map(|c| &c.parameters)
    }

    /// The schema named `name`.
    pub fn schema(&self, name: &str) -> Option<&SchemaDef> {
        self.definition.schemas.iter().find(|s| s.name == name)
    }
}

/// Parses and validates a graph definition (YAML, or JSON, which is YAML).
pub fn parse_graph(text: &str) -> Result<ValidatedGraph, GraphError> {
    if text.len() > MAX_GRAPH_BYTES {
        return Err(GraphError::TooLarge {
            size: text.len(),
            max: MAX_GRAPH_BYTES,
        });
    }
    // serde-saphyr's default budget bounds events and aliases, so alias bombs fail here.
    let document: Value = serde_saphyr::from_str(text).map_err(|e| {
        // The first line names the place; the rest is a source excerpt for terminals.
        GraphError::Syntax(e.to_string().lines().next().unwrap_or_default().to_owned())
    })?;
    let preview = document
        .get("moduleRequirements")
        .and_then(|r| r.get("hostlibVersion"))
        .is_some();
    let mut problems = Vec::new();
    shape::check_object(
        &document,
        if preview { &shape::PREVIEW } else { &shape::GA },
        "",
        &mut problems,
    );
    if !problems.is_empty() {
        return Err(GraphError::Invalid(problems));
    }
    let definition: GraphDefinition = serde_json::from_value(document).map_err(|e| {
        GraphError::Invalid(vec![GraphProblem {
            path: "(root)".to_owned(),
            message: e.to_string(),
        }])
    })?;
    validate(definition)
}

/// Validates a typed definition: every semantic problem at once.
#[allow(
    clippy::indexing_slicing,
    reason = "indices come from `index` and `edges`, built from these vectors"
)]
pub fn validate(definition: GraphDefinition) -> Result<ValidatedGraph, GraphError> {
    let mut problems = Vec::new();
    let mut report = |path: String, message: String| problems.push(GraphProblem { path, message });

    let requirements = &definition.module_requirements;
    let contract = match (
        requirements.api_version.split('.').next(),
        &requirements.hostlib_version,
    ) {
        (Some("1"), None) => Some(GraphContract::Ga),
        (Some("0"), Some(_)) => Some(GraphContract::Preview),
        (Some("0"), None) => {
            report("moduleRequirements.apiVersion".to_owned(), "apiVersion 0.x is the preview contract: it needs hostlibVersion, not runtimeVersion".to_owned());
            None
        }
        (Some("1"), Some(_)) => {
            report(
                "moduleRequirements.hostlibVersion".to_owned(),
                "apiVersion 1.x needs runtimeVersion; hostlibVersion is the preview spelling"
                    .to_owned(),
            );
            None
        }
        _ => {
            report(
                "moduleRequirements.apiVersion".to_owned(),
                format!(
                    "unsupported apiVersion {:?}: weir runs 1.x (wasm-graph:processor@1.1.0) and 0.x (preview)",
                    requirements.api_version
                ),
            );
            None
        }
    };
    for (i, feature) in requirements.features.iter().flatten().enumerate() {
        if !KNOWN_FEATURES.contains(&feature.name.as_str()) {
            report(
                format!("moduleRequirements.features[{i}].name"),
                format!(
                    "unknown feature {:?}: known features: {}",
                    feature.name,
                    KNOWN_FEATURES.join(", ")
                ),
            );
        }
    }

    let mut index: HashMap<&str, usize> = HashMap::new();
    for (i, operation) in definition.operations.iter().enumerate() {
        let path = format!("operations[{i}]");
        if operation.name.is_empty() {
            report(format!("{path}.name"), "operation name is empty".to_owned());
        }
        if let Some(first) = index.insert(&operation.name, i) {
            index.insert(&operation.name, first);
            report(
                format!("{path}.name"),
                format!(
                    "duplicate operation name {:?} (first at operations[{first}])",
                    operation.name
                ),
            );
        }
        let kind = operation.operation_type;
        match (&operation.module, kind.runs_module()) {
            (Some(module), true) if module.trim().is_empty() => {
                report(
                    format!("{path}.module"),
                    "module reference is empty".to_owned(),
                );
            }
            (None, true) => report(
                format!("{path}.module"),
                format!("a {} operation needs a module", kind.as_str()),
            ),
            (Some(_), false) => report(
                format!("{path}.module"),
                format!("a {} operation takes no module", kind.as_str()),
            ),
            _ => {}
        }
    }
    if !definition
        .operations
        .iter()
        .any(|o| o.operation_type == OperationType::Source)
    {
        report(
            "operations".to_owned(),
            "the graph has no source operation".to_owned(),
        );
    }
    if !definition
        .operations
        .iter()
        .any(|o| o.operation_type == OperationType::Sink)
    {
        report(
            "operations".to_owned(),
            "the graph has no sink operation".to_owned(),
        );
    }

    let mut edges = Vec::new();
    for (i, connection) in definition.connections.iter().enumerate() {
        let path = format!("connections[{i}]");
        let from = index.get(connection.from.name.as_str()).copied();
        let to = index.get(connection.to.name.as_str()).copied();
        if from.is_none() {
            report(
                format!("{path}.from.name"),
                format!("no operation named {:?}", connection.from.name),
            );
        }
        if to.is_none() {
            report(
                format!("{path}.to.name"),
                format!("no operation named {:?}", connection.to.name),
            );
        }
        if let Some(schema) = &connection.from.schema_name
            && !definition.schemas.iter().any(|s| &s.name == schema)
        {
            report(
                format!("{path}.from.schemaName"),
                format!("no schema named {schema:?} in schemas"),
            );
        }
        let (Some(from), Some(to)) = (from, to) else {
            continue;
        };
        let (from_op, to_op) = (&definition.operations[from], &definition.operations[to]);
        match (from_op.operation_type, connection.from.arm) {
            (OperationType::Branch, None) => {
                report(
                    format!("{path}.from.arm"),
                    format!(
                        "an edge out of branch {:?} needs arm \"True\" or \"False\"",
                        from_op.name
                    ),
                );
            }
            (other, Some(_)) if other != OperationType::Branch => {
                report(
                    format!("{path}.from.arm"),
                    format!(
                        "arm given on an edge out of {:?}, which is a {}, not a branch",
                        from_op.name,
                        other.as_str()
                    ),
                );
            }
            _ => {}
        }
        if from_op.operation_type == OperationType::Sink {
            report(
                format!("{path}.from.name"),
                format!("{:?} is a sink: it has no outputs", from_op.name),
            );
        }
        if to_op.operation_type == OperationType::Source {
            report(
                format!("{path}.to.name"),
                format!("{:?} is a source: it has no inputs", to_op.name),
            );
        }
        if from == to {
            report(
                path.clone(),
                format!("{:?} is connected to itself", from_op.name),
            );
        }
        if edges
            .iter()
            .any(|e: &Edge| e.from == from && e.to == to && e.arm == connection.from.arm)
        {
            report(
                path.clone(),
                format!("duplicate connection {:?} → {:?}", from_op.name, to_op.name),
            );
        }
        edges.push(Edge {
            from,
            arm: connection.from.arm,
            to,
            schema_name: connection.from.schema_name.clone(),
        });
    }

    for (i, operation) in definition.operations.iter().enumerate() {
        let path = format!("operations[{i}]");
        let inputs = edges.iter().filter(|e| e.to == i).count();
        let outputs: Vec<&Edge> = edges.iter().filter(|e| e.from == i).collect();
        let kind = operation.operation_type;
        if kind != OperationType::Source && inputs == 0 {
            report(
                path.clone(),
                format!("{:?} has no input connection", operation.name),
            );
        }
        if kind != OperationType::Sink && outputs.is_empty() {
            report(
                path.clone(),
                format!(
                    "{:?} has no output connection: its items would go nowhere",
                    operation.name
                ),
            );
        }
        if kind == OperationType::Concatenate && inputs == 1 {
            report(
                path.clone(),
                format!(
                    "concatenate {:?} has one input; it needs two or more",
                    operation.name
                ),
            );
        }
        if kind == OperationType::Branch {
            for arm in [Arm::False, Arm::True] {
                if !outputs.iter().any(|e| e.arm == Some(arm)) {
                    let arm_text = if arm == Arm::True { "True" } else { "False" };
                    report(
                        path.clone(),
                        format!(
                            "branch {:?} has no connection for arm \"{arm_text}\"",
                            operation.name
                        ),
                    );
                }
            }
        }
    }

    let mut configured: HashMap<&str, usize> = HashMap::new();
    for (i, configuration) in definition.module_configurations.iter().enumerate() {
        let path = format!("moduleConfigurations[{i}].name");
        match index.get(configuration.name.as_str()) {
            None => report(
                path.clone(),
                format!("no operation named {:?}", configuration.name),
            ),
            Some(&op) if !definition.operations[op].operation_type.runs_module() => {
                report(
                    path.clone(),
                    format!(
                        "{:?} runs no module, so it takes no configuration",
                        configuration.name
                    ),
                );
            }
            Some(_) => {}
        }
        if let Some(first) = configured.insert(&configuration.name, i) {
            report(
                path,
                format!(
                    "{:?} is configured twice (first at moduleConfigurations[{first}])",
                    configuration.name
                ),
            );
        }
    }
    let mut schema_names: HashMap<&str, usize> = HashMap::new();
    for (i, schema) in definition.schemas.iter().enumerate() {
        if let Some(first) = schema_names.insert(&schema.name, i) {
            report(
                format!("schemas[{i}].name"),
                format!(
                    "duplicate schema name {:?} (first at schemas[{first}])",
                    schema.name
                ),
            );
        }
    }

    let order = match topological_order(definition.operations.len(), &edges) {
        Ok(order) => order,
        Err(cycle) => {
            let names: Vec<&str> = cycle
                .iter()
                .map(|&i| definition.operations[i].name.as_str())
                .collect();
            report(
                "connections".to_owned(),
                format!("the connections form a cycle: {}", names.join(" → ")),
            );
            Vec::new()
        }
    };

    match contract {
        Some(contract) if problems.is_empty() => Ok(ValidatedGraph {
            definition,
            contract,
            edges,
            order,
        }),
        _ => Err(GraphError::Invalid(problems)),
    }
}

/// Kahn's algorithm; on a cycle, returns one cycle (first node repeated at the end).
#[allow(
    clippy::indexing_slicing,
    reason = "every index is below `count`, checked by the caller"
)]
fn topological_order(count: usize, edges: &[Edge]) -> Result<Vec<usize>, Vec<usize>> {
    let mut indegree = vec![0usize; count];
    let mut outgoing: Vec<Vec<usize>> = vec![Vec::new(); count];
    for edge in edges {
        indegree[edge.to] += 1;
        outgoing[edge.from].push(edge.to);
    }
    let mut ready: Vec<usize> = (0..count).filter(|&i| indegree[i] == 0).rev().collect();
    let mut order = Vec::with_capacity(count);
    while let Some(node) = ready.pop() {
        order.push(node);
        for &next in outgoing[node].iter().rev() {
            indegree[next] -= 1;
            if indegree[next] == 0 {
                ready.push(next);
            }
        }
    }
    if order.len() == count {
        return Ok(order);
    }
    // Some node is on a cycle: find a back edge by depth-first search.
    let mut state = vec![0u8; count]; // 0 unvisited, 1 on the current path, 2 done
    for root in 0..count {
        if state[root] != 0 {
            continue;
        }
        let mut path: Vec<(usize, usize)> = vec![(root, 0)];
        state[root] = 1;
        while let Some(&mut (node, ref mut next_child)) = path.last_mut() {
            if let Some(&child) = outgoing[node].get(*next_child) {
                *next_child += 1;
                match state[child] {
                    0 => {
                        state[child] = 1;
                        path.push((child, 0));
                    }
                    1 => {
                        let from = path.iter().position(|&(n, _)| n == child).unwrap_or(0);
                        let mut cycle: Vec<usize> = path[from..].iter().map(|&(n, _)| n).collect();
                        cycle.push(child);
                        return Err(cycle);
                    }
                    _ => {}
                }
            } else {
                state[node] = 2;
                path.pop();
            }
        }
    }
    Err(Vec::new())
}
