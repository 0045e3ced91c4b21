//! What a tenant's deployments use. A deployment's record names a graph version and
//! endpoints, and its graph names modules; they are resolved again whenever it starts (a
//! resume, a restart after failover, a reconcile round, an update of another field). So a
//! module, graph or endpoint one of them uses is not deleted from under it: the delete is
//! refused (`409 conflict`) naming the deployments, and succeeds once none uses it (deleted,
//! or updated to another version). Paused and failed deployments count: resuming them would
//! resolve the same names. Older revisions do not: a rollback to one whose artifacts are gone
//! is refused then (`artifact_missing`).

use std::collections::BTreeMap;

use weir_api::graph::parse_graph;
use weir_api::rest::CreateDeployment;
use weir_api::{ErrorCode, TenantId};

use crate::{ApiError, GatewayState};

/// Something a deployment may use.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Used<'a> {
    /// A module version: named by a graph's `module` reference (`<…/>name:version`, or
    /// `<…/>name` for the newest version of that name).
    Module { name: &'a str, version: &'a str },
    /// A graph version, named by the deployment's `graph`.
    Graph { name: &'a str, version: &'a str },
    /// An endpoint, named by the deployment's source, sink or dead-letter binding.
    Endpoint { name: &'a str },
}

impl Used<'_> {
    fn describe(&self) -> String {
        match self {
            Used::Module { name, version } => format!("module {name}@{version}"),
            Used::Graph { name, version } => format!("graph {name}@{version}"),
            Used::Endpoint { name } => format!("endpoint {name}"),
        }
    }
}

/// Refuses (`conflict`) when a deployment of `tenant` uses `what`, naming up to ten of them.
/// The caller holds the tenant's lock, so no deployment starts using it meanwhile.
pub(crate) async fn refuse_if_used(
    state: &GatewayState,
    tenant: &TenantId,
    what: Used<'_>,
) -> Result<(), ApiError> {
    let users = deployments_using(state, tenant, what).await?;
    if users.is_empty() {
        return Ok(());
    }
    const SHOWN: usize = 10;
    let mut named = users
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if users.len() > SHOWN {
        named.push_str(&format!(" and {} more", users.len() - SHOWN));
    }
    let instead = match what {
        Used::Endpoint { .. } => "another endpoint",
        Used::Module { .. } | Used::Graph { .. } => "another version",
    };
    Err(ApiError::new(
        ErrorCode::Conflict,
        format!(
            "{} is used by deployment(s) {named}: delete them or update them to {instead} first",
            what.describe()
        ),
    ))
}

/// The ids of `tenant`'s deployments whose current spec uses `what`, in id order.
async fn deployments_using(
    state: &GatewayState,
    tenant: &TenantId,
    what: Used<'_>,
) -> Result<Vec<String>, ApiError> {
    let mut specs = Vec::new();
    for record in state.store.deployments(tenant).await? {
        // A record the API wrote always parses; one that does not cannot start either.
        match serde_json::from_value::<CreateDeployment>(record.spec) {
            Ok(spec) => specs.push(spec),
            Err(error) => {
                tracing::warn!(%error, deployment = %record.id, "stored deployment spec does not parse");
            }
        }
    }
    let mut users = match what {
        Used::Graph { name, version } => specs
            .iter()
            .filter(|s| s.graph.name == name && s.graph.version == version)
            .map(|s| s.id.clone())
            .collect(),
        Used::Endpoint { name } => specs
            .iter()
            .filter(|s| {
                s.source.endpoint == name
                    || s.sink.endpoint == name
                    || s.dead_letters.as_ref().is_some_and(|b| b.endpoint == name)
            })
            .map(|s| s.id.clone())
            .collect(),
        Used::Module { name, version } => {
            modules_users(state, tenant, &specs, name, version).await?
        }
    };
    users.sort();
    Ok(users)
}

/// The deployments among `specs` whose graph names module `name@version`.
async fn modules_users(
    state: &GatewayState,
    tenant: &TenantId,
    specs: &[CreateDeployment],
    name: &str,
    version: &str,
) -> Result<Vec<String>, ApiError> {
    // Whether a reference without a version means this one: it is the newest of its name.
    let newest = state
        .store
        .modules(tenant)
        .await?
        .into_iter()
        .filter(|m| m.name == name)
        .max_by_key(|m| m.created_at)
        .is_some_and(|m| m.version == version);
    // Each graph version is read and parsed once, however many deployments run it.
    let mut graphs: BTreeMap<(&str, &str), bool> = BTreeMap::new();
    let mut users = Vec::new();
    for spec in specs {
        let key = (spec.graph.name.as_str(), spec.graph.version.as_str());
        let uses = match graphs.get(&key) {
            Some(&uses) => uses,
            None => {
                let uses = graph_names_module(state, tenant, key, name, version, newest).await?;
                graphs.insert(key, uses);
                uses
            }
        };
        if uses {
            users.push(spec.id.clone());
        }
    }
    Ok(users)
}

/// Whether graph `name@version` (`graph`) of `tenant` names module `module@version`; a graph
/// that is gone or does not parse names nothing.
async fn graph_names_module(
    state: &GatewayState,
    tenant: &TenantId,
    graph: (&str, &str),
    module: &str,
    version: &str,
    newest: bool,
) -> Result<bool, ApiError> {
    let Some(record) = state.store.graph(tenant, graph.0, graph.1).await? else {
        return Ok(false);
    };
    let Some(bytes) = state
        .blobs
        .get(&record.digest)
        .await
        .map_err(|e| ApiError::internal(&e))?
    else {
        return Ok(false);
    };
    // Parsing (a graph is up to 4 MiB) runs on the blocking pool, as every graph parse does.
    let references = tokio::task::spawn_blocking(move || {
        let text = String::from_utf8(bytes).ok()?;
        let validated = parse_graph(&text).ok()?;
        Some(
            validated
                .operations()
                .iter()
                .filter_map(|operation| operation.module.clone())
                .collect::<Vec<String>>(),
        )
    })
    .await
    .map_err(|e| ApiError::internal(&e))?
    .unwrap_or_default();
    Ok(references.iter().any(|reference| {
        let (name, named_version) = module_reference(reference);
        name == module && named_version.map_or(newest, |v| v == version)
    }))
}

/// The module name and version (none: the newest) a graph's `module` reference names:
/// `<…/>name[:version]`, as deployments resolve it.
pub(crate) fn module_reference(reference: &str) -> (&str, Option<&str>) {
    let last = reference.rsplit('/').next().unwrap_or(reference);
    match last.split_once(':') {
        Some((name, version)) => (name, Some(version)),
        None => (last, None),
    }
}

#[cfg(test)]
mod tests {
    use super::module_reference;

    #[test]
    fn a_module_reference_names_its_last_path_segment_and_version() {
        assert_eq!(
            module_reference("azure-samples/explore-iot-operations/temperature:1.0.0"),
            ("temperature", Some("1.0.0"))
        );
        assert_eq!(module_reference("temperature"), ("temperature", None));
        assert_eq!(module_reference("a/b/echo"), ("echo", None));
    }
}
