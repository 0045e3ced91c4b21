//! What weir accepts as a module: a WebAssembly component exporting at least one operator
//! interface of one contract, importing nothing weir does not provide. Validation names every
//! problem; a module that passes is compiled once and cached by its sha256 digest.

use std::collections::BTreeSet;
use std::fmt;

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, InstancePre};
use weir_api::{ErrorCode, ModuleDigest};

use crate::bindings::{ga, preview};
use crate::host::HostState;

/// The operator interfaces of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OperatorKind {
    /// One item in, one item out.
    Map,
    /// Keeps or drops each item.
    Filter,
    /// Routes each item to one of two arms.
    Branch,
    /// Folds the items of one time into one.
    Accumulate,
    /// Moves an item to a later time.
    Delay,
}

impl OperatorKind {
    /// Every kind, in interface order.
    pub const ALL: [Self; 5] = [
        Self::Map,
        Self::Filter,
        Self::Branch,
        Self::Accumulate,
        Self::Delay,
    ];

    /// The interface name (`map`, `filter`, ...), as graph `operationType`s spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Map => "map",
            Self::Filter => "filter",
            Self::Branch => "branch",
            Self::Accumulate => "accumulate",
            Self::Delay => "delay",
        }
    }

    /// The kind named `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == name)
    }
}

impl fmt::Display for OperatorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The version of the operator contract a module was built against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contract {
    /// `wasm-graph:processor@1.1.0`.
    Ga,
    /// `tinykube-graph:processor@1.0.0`, the public preview; run through an adapter.
    Preview,
}

impl Contract {
    fn package(self) -> &'static str {
        match self {
            Self::Ga => "wasm-graph:processor",
            Self::Preview => "tinykube-graph:processor",
        }
    }

    fn version(self) -> &'static str {
        match self {
            Self::Ga => "1.1.0",
            Self::Preview => "1.0.0",
        }
    }

    /// The host interfaces of the contract a module may import.
    fn host_interfaces(self) -> &'static [&'static str] {
        match self {
            Self::Ga => &[
                "types",
                "hybrid-logical-clock",
                "logger",
                "metrics",
                "state-store-types",
                "state-store",
                "rpc-types",
                "command-invoker",
                "schema-types",
                "schema-registry",
            ],
            Self::Preview => &[
                "types",
                "hybrid-logical-clock",
                "logger",
                "metrics",
                "state-store-types",
                "state-store",
                "rpc-types",
                "command-invoker",
            ],
        }
    }
}

/// WASI 0.2 interfaces weir links (any 0.2.x), by package.
const WASI_INTERFACES: &[(&str, &[&str])] = &[
    (
        "wasi:cli",
        &[
            "environment",
            "exit",
            "stdin",
            "stdout",
            "stderr",
            "terminal-input",
            "terminal-output",
            "terminal-stdin",
            "terminal-stdout",
            "terminal-stderr",
        ],
    ),
    ("wasi:io", &["error", "poll", "streams"]),
    ("wasi:clocks", &["monotonic-clock", "wall-clock"]),
    ("wasi:random", &["random", "insecure", "insecure-seed"]),
    ("wasi:filesystem", &["types", "preopens"]),
    (
        "wasi:sockets",
        &[
            "network",
            "instance-network",
            "udp",
            "udp-create-socket",
            "tcp",
            "tcp-create-socket",
            "ip-name-lookup",
        ],
    ),
];

/// The inference interfaces weir links for modules that import them (azure-compat §6).
const NN_INTERFACES: &[&str] = &["tensor", "graph", "inference", "errors"];
/// Their version: the one `wasmtime-wasi-nn` implements and Azure's GA `snapshot` imports.
const NN_VERSION: &str = "0.2.0-rc-2024-10-28";

/// An import weir cannot satisfy, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsupportedImport {
    /// The import as the component names it, e.g. `acme:secret/vault@1.0.0`.
    pub name: String,
    /// Why weir does not provide it.
    pub reason: String,
}

impl fmt::Display for UnsupportedImport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.reason)
    }
}

/// Why bytes are not a module weir can run. Every variant is the tenant's to fix
/// ([`ErrorCode::InvalidModule`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ModuleError {
    /// Not WebAssembly at all.
    #[error("not a WebAssembly binary: it does not start with the \\0asm magic number")]
    NotWasm,
    /// A core module, not a component.
    #[error(
        "a core WebAssembly module, not a component: build for wasm32-wasip2 (cargo build --target wasm32-wasip2) or componentize it"
    )]
    CoreModule,
    /// A WebAssembly binary of a version or layer weir does not know.
    #[error("unsupported WebAssembly binary version {version:02x?}")]
    UnsupportedVersion {
        /// The four version/layer bytes after the magic number.
        version: [u8; 4],
    },
    /// The component does not parse or compile.
    #[error("invalid component: {detail}")]
    Invalid {
        /// wasmtime's account of the problem.
        detail: String,
    },
    /// Imports weir does not provide.
    #[error("imports weir does not provide: {}", list(.imports))]
    UnsupportedImports {
        /// Every such import.
        imports: Vec<UnsupportedImport>,
    },
    /// No operator interface is exported.
    #[error("exports no operator interface (wasm-graph:processor/{{map,filter,branch,accumulate,delay}}@1.1.0); it exports: {}", if .exports.is_empty() { "nothing".to_owned() } else { .exports.join(", ") })]
    NoOperators {
        /// What it does export.
        exports: Vec<String>,
    },
    /// Operators of both the GA and the preview contract in one component.
    #[error(
        "exports operators of both wasm-graph:processor@1.1.0 and tinykube-graph:processor@1.0.0; a module must use one contract"
    )]
    MixedContracts,
    /// Imports by the right names with the wrong types.
    #[error("imports do not match weir's interfaces: {detail}")]
    Unlinkable {
        /// wasmtime's account of the mismatch.
        detail: String,
    },
}

fn list(imports: &[UnsupportedImport]) -> String {
    imports
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl ModuleError {
    /// The API code of every module error.
    pub fn code(&self) -> ErrorCode {
        ErrorCode::InvalidModule
    }
}

/// The sha256 digest of a module's bytes.
pub fn sha256_digest(bytes: &[u8]) -> ModuleDigest {
    let hex = hex::encode(Sha256::digest(bytes));
    #[allow(
        clippy::expect_used,
        reason = "hex of a sha256 is always a valid digest"
    )]
    ModuleDigest::from_sha256_hex(&hex).expect("sha256 hex is a valid digest")
}

/// Checks the binary header: weir runs components only.
pub fn check_header(bytes: &[u8]) -> Result<(), ModuleError> {
    let (Some(magic), Some(version)) = (bytes.get(0..4), bytes.get(4..8)) else {
        return Err(ModuleError::NotWasm);
    };
    if magic != b"\0asm" {
        return Err(ModuleError::NotWasm);
    }
    match version {
        [0x0d, 0x00, 0x01, 0x00] => Ok(()),
        [0x01, 0x00, 0x00, 0x00] => Err(ModuleError::CoreModule),
        other => Err(ModuleError::UnsupportedVersion {
            version: other.try_into().unwrap_or_default(),
        }),
    }
}

/// What a component exports and under which contract.
#[derive(Debug, Clone)]
pub(crate) struct ModuleShape {
    pub(crate) contract: Contract,
    pub(crate) operators: BTreeSet<OperatorKind>,
    /// Whether it imports `wasi:nn`.
    pub(crate) inference: bool,
}

/// Splits `pkg:name/interface@version`.
fn split_interface(name: &str) -> Option<(&str, &str, Option<&str>)> {
    let (path, version) = match name.split_once('@') {
        Some((path, version)) => (path, Some(version)),
        None => (name, None),
    };
    let (package, interface) = path.split_once('/')?;
    Some((package, interface, version))
}

/// Reads a compiled component's imports and exports: which contract, which operators, and
/// every import weir cannot satisfy.
pub(crate) fn inspect(engine: &Engine, component: &Component) -> Result<ModuleShape, ModuleError> {
    let ty = component.component_type();
    let mut exports = Vec::new();
    let mut found: Vec<(Contract, OperatorKind)> = Vec::new();
    for (name, item) in ty.exports(engine) {
        exports.push(name.to_owned());
        if !matches!(item.ty, ComponentItem::ComponentInstance(_)) {
            continue;
        }
        let Some((package, interface, version)) = split_interface(name) else {
            continue;
        };
        for contract in [Contract::Ga, Contract::Preview] {
            if package == contract.package()
                && version == Some(contract.version())
                && let Some(kind) = OperatorKind::from_name(interface)
            {
                found.push((contract, kind));
            }
        }
    }
    let contract = match (
        found.iter().any(|f| f.0 == Contract::Ga),
        found.iter().any(|f| f.0 == Contract::Preview),
    ) {
        (true, true) => return Err(ModuleError::MixedContracts),
        (true, false) => Contract::Ga,
        (false, true) => Contract::Preview,
        (false, false) => return Err(ModuleError::NoOperators { exports }),
    };

    let inference = ty
        .imports(engine)
        .any(|(name, _)| split_interface(name).is_some_and(|(package, _, _)| package == "wasi:nn"));
    let unsupported: Vec<UnsupportedImport> = ty
        .imports(engine)
        .filter_map(|(name, _)| {
            import_problem(contract, name).map(|reason| UnsupportedImport {
                name: name.to_owned(),
                reason,
            })
        })
        .collect();
    if !unsupported.is_empty() {
        return Err(ModuleError::UnsupportedImports {
            imports: unsupported,
        });
    }
    Ok(ModuleShape {
        contract,
        operators: found.into_iter().map(|f| f.1).collect(),
        inference,
    })
}

/// Why weir cannot satisfy the import `name`, or `None` when it can.
fn import_problem(contract: Contract, name: &str) -> Option<String> {
    let Some((package, interface, version)) = split_interface(name) else {
        return Some("weir provides interfaces only, not bare functions or types".to_owned());
    };
    if package == contract.package() {
        if version != Some(contract.version()) {
            return Some(format!("weir provides {package}@{}", contract.version()));
        }
        return (!contract.host_interfaces().contains(&interface))
            .then(|| format!("{package} has no host interface named {interface}"));
    }
    if package == "wasm-graph:processor" || package == "tinykube-graph:processor" {
        return Some(
            "a module uses one contract: its imports and operator exports must match".to_owned(),
        );
    }
    if package == "wasi:nn" {
        if version != Some(NN_VERSION) {
            return Some(format!("weir provides wasi:nn@{NN_VERSION}"));
        }
        return (!NN_INTERFACES.contains(&interface))
            .then(|| format!("wasi:nn has no interface {interface}"));
    }
    if let Some((_, interfaces)) = WASI_INTERFACES.iter().find(|(p, _)| *p == package) {
        if !version.is_some_and(|v| v.starts_with("0.2.")) {
            return Some("weir provides WASI 0.2.x".to_owned());
        }
        return (!interfaces.contains(&interface))
            .then(|| format!("WASI 0.2 has no interface {package}/{interface}"));
    }
    Some(format!("weir provides no package {package}"))
}

/// The operator indices of a compiled module, resolved once.
pub(crate) enum Indices {
    Ga {
        map: Option<ga::exports::wasm_graph::processor::map::GuestIndices>,
        filter: Option<ga::exports::wasm_graph::processor::filter::GuestIndices>,
        branch: Option<ga::exports::wasm_graph::processor::branch::GuestIndices>,
        accumulate: Option<ga::exports::wasm_graph::processor::accumulate::GuestIndices>,
        delay: Option<ga::exports::wasm_graph::processor::delay::GuestIndices>,
    },
    Preview {
        map: Option<preview::exports::tinykube_graph::processor::map::GuestIndices>,
        filter: Option<preview::exports::tinykube_graph::processor::filter::GuestIndices>,
        branch: Option<preview::exports::tinykube_graph::processor::branch::GuestIndices>,
        accumulate: Option<preview::exports::tinykube_graph::processor::accumulate::GuestIndices>,
        delay: Option<preview::exports::tinykube_graph::processor::delay::GuestIndices>,
    },
}

/// A validated, compiled module, ready to instantiate.
pub struct CompiledModule {
    digest: ModuleDigest,
    contract: Contract,
    operators: BTreeSet<OperatorKind>,
    inference: bool,
    pub(crate) pre: InstancePre<HostState>,
    pub(crate) indices: Indices,
}

impl fmt::Debug for CompiledModule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompiledModule")
            .field("digest", &self.digest)
            .field("contract", &self.contract)
            .field("operators", &self.operators)
            .finish_non_exhaustive()
    }
}

impl CompiledModule {
    pub(crate) fn new(
        digest: ModuleDigest,
        shape: ModuleShape,
        pre: InstancePre<HostState>,
    ) -> Result<Self, ModuleError> {
        let unlinkable = |error: wasmtime::Error| ModuleError::Unlinkable {
            detail: format!("{error:#}"),
        };
        // The indices of one operator interface, if the module exports it.
        macro_rules! indices {
            ($interface:ty, $kind:expr) => {
                if shape.operators.contains(&$kind) {
                    Some(<$interface>::new(&pre).map_err(unlinkable)?)
                } else {
                    None
                }
            };
        }
        let indices = match shape.contract {
            Contract::Ga => {
                use ga::exports::wasm_graph::processor as ops;
                Indices::Ga {
                    map: indices!(ops::map::GuestIndices, OperatorKind::Map),
                    filter: indices!(ops::filter::GuestIndices, OperatorKind::Filter),
                    branch: indices!(ops::branch::GuestIndices, OperatorKind::Branch),
                    accumulate: indices!(ops::accumulate::GuestIndices, OperatorKind::Accumulate),
                    delay: indices!(ops::delay::GuestIndices, OperatorKind::Delay),
                }
            }
            Contract::Preview => {
                use preview::exports::tinykube_graph::processor as ops;
                Indices::Preview {
                    map: indices!(ops::map::GuestIndices, OperatorKind::Map),
                    filter: indices!(ops::filter::GuestIndices, OperatorKind::Filter),
                    branch: indices!(ops::branch::GuestIndices, OperatorKind::Branch),
                    accumulate: indices!(ops::accumulate::GuestIndices, OperatorKind::Accumulate),
                    delay: indices!(ops::delay::GuestIndices, OperatorKind::Delay),
                }
            }
        };
        Ok(Self {
            digest,
            contract: shape.contract,
            operators: shape.operators,
            inference: shape.inference,
            pre,
            indices,
        })
    }

    /// The sha256 of the module's bytes.
    pub fn digest(&self) -> &ModuleDigest {
        &self.digest
    }

    /// The contract it was built against.
    pub fn contract(&self) -> Contract {
        self.contract
    }

    /// The operator interfaces it exports.
    pub fn operators(&self) -> &BTreeSet<OperatorKind> {
        &self.operators
    }

    /// Whether it imports `wasi:nn` (inference), which only tenants whose quota has
    /// `inference` may run.
    pub fn imports_inference(&self) -> bool {
        self.inference
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_check_tells_core_modules_and_garbage_apart() {
        assert_eq!(check_header(b""), Err(ModuleError::NotWasm));
        assert_eq!(
            check_header(b"\x7fELF\x02\x01\x01\x00"),
            Err(ModuleError::NotWasm)
        );
        assert_eq!(
            check_header(b"\0asm\x01\0\0\0"),
            Err(ModuleError::CoreModule)
        );
        assert_eq!(check_header(b"\0asm\x0d\0\x01\0"), Ok(()));
        assert!(matches!(
            check_header(b"\0asm\x0e\0\x01\0"),
            Err(ModuleError::UnsupportedVersion { .. })
        ));
    }

    #[test]
    fn imports_outside_the_contract_are_named_with_a_reason() {
        assert_eq!(
            import_problem(Contract::Ga, "wasm-graph:processor/logger@1.1.0"),
            None
        );
        assert_eq!(import_problem(Contract::Ga, "wasi:cli/stdout@0.2.6"), None);
        assert_eq!(import_problem(Contract::Ga, "wasi:sockets/tcp@0.2.0"), None);
        assert!(import_problem(Contract::Ga, "wasm-graph:processor/logger@2.0.0").is_some());
        assert!(
            import_problem(
                Contract::Preview,
                "tinykube-graph:processor/schema-registry@1.0.0"
            )
            .is_some()
        );
        assert!(import_problem(Contract::Ga, "tinykube-graph:processor/logger@1.0.0").is_some());
        assert!(import_problem(Contract::Ga, "wasi:http/outgoing-handler@0.2.0").is_some());
        assert!(import_problem(Contract::Ga, "wasi:cli/stdout@0.3.0").is_some());
        assert!(
            import_problem(Contract::Ga, "acme:vault/secrets@1.0.0")
                .unwrap()
                .contains("acme:vault")
        );
        assert_eq!(
            import_problem(Contract::Ga, "wasi:nn/graph@0.2.0-rc-2024-10-28"),
            None
        );
        assert!(
            import_problem(Contract::Ga, "wasi:nn/inference@0.2.0-rc-2024-08-19")
                .unwrap()
                .contains("0.2.0-rc-2024-10-28")
        );
        assert!(import_problem(Contract::Ga, "wasi:nn/llm@0.2.0-rc-2024-10-28").is_some());
    }
}
