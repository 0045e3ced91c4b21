//! weir's example and hostile guest modules, built from `modules/` for wasm32-wasip2 by this
//! crate's build script. Tests name a module by its constant and read its bytes; the `weir`
//! binary embeds the demo's module ([`TEMPERATURE_WASM`]) so `weir serve --demo` needs no source
//! checkout.

use std::path::PathBuf;

pub mod shapes;

/// A guest component built from `modules/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guest(&'static str);

impl Guest {
    /// The component's file.
    pub fn path(self) -> PathBuf {
        PathBuf::from(env!("WEIR_GUESTS_DIR")).join(format!("{}.wasm", self.0))
    }

    /// The component's bytes.
    pub fn bytes(self) -> Vec<u8> {
        let path = self.path();
        #[allow(
            clippy::panic,
            reason = "test support: a missing guest is a broken build"
        )]
        std::fs::read(&path)
            .unwrap_or_else(|error| panic!("cannot read guest {}: {error}", path.display()))
    }

    /// The directory all guests are built into.
    pub fn dir() -> PathBuf {
        PathBuf::from(env!("WEIR_GUESTS_DIR"))
    }

    /// The module's name.
    pub fn name(self) -> &'static str {
        self.0
    }
}

/// The bytes of [`TEMPERATURE`], embedded at build time: the module `weir serve --demo`
/// deploys.
pub static TEMPERATURE_WASM: &[u8] =
    include_bytes!(concat!(env!("WEIR_GUESTS_DIR"), "/temperature.wasm"));

/// Temperature operators: map, branch, filter, accumulate.
pub const TEMPERATURE: Guest = Guest("temperature");
/// Humidity accumulate.
pub const HUMIDITY: Guest = Guest("humidity");
/// 10-second window delay.
pub const WINDOW: Guest = Guest("window");
/// Sensor-data collection accumulate.
pub const COLLECTION: Guest = Guest("collection");
/// Enrichment map using the state store.
pub const ENRICHMENT: Guest = Guest("enrichment");
/// The trivial map (payload read and returned as bytes).
pub const ECHO: Guest = Guest("echo");
/// JSON-schema filter: keeps payloads that validate against the schema `init` receives.
pub const SCHEMA_FILTER: Guest = Guest("filter");
/// Loops forever on payload `spin`.
pub const SPIN_LOOP: Guest = Guest("spin_loop");
/// Allocates without bound on payload `hog`.
pub const MEMORY_HOG: Guest = Guest("memory_hog");
/// Panics on payload `trap`; configurable to trap in or refuse `init`.
pub const TRAP: Guest = Guest("trap");
/// Answers `huge:<MiB>` with that many MiB.
pub const HUGE_OUTPUT: Guest = Guest("huge_output");
/// Calls every host interface with bad arguments.
pub const HOST_ABUSE: Guest = Guest("host_abuse");
/// Tries to open sockets.
pub const SOCKET_DIALER: Guest = Guest("socket_dialer");
/// Imports `acme:vault/secrets@1.0.0`, which weir does not provide.
pub const FOREIGN_IMPORT: Guest = Guest("foreign_import");
/// A delay that returns a time 5 s before the item's.
pub const REWIND: Guest = Guest("rewind");
/// A map that logs a line and mints a metric series (labelled by payload) per message.
pub const CHATTY: Guest = Guest("chatty");
/// A map built against the preview contract `tinykube-graph:processor@1.0.0`.
pub const PREVIEW_ECHO: Guest = Guest("preview_echo");

/// Image decoding into 224x224 RGB24 snapshots (map `module-format/map`).
pub const FORMAT: Guest = Guest("format");
/// Image classification through `wasi:nn` (map), snapshot branch, label accumulate.
pub const SNAPSHOT: Guest = Guest("snapshot");
/// Imports `wasi:nn`: payload `slow` computes for seconds, `hoard` loads graphs without end.
pub const NN_ABUSE: Guest = Guest("nn_abuse");

/// Every guest.
pub const ALL: [Guest; 19] = [
    TEMPERATURE,
    HUMIDITY,
    WINDOW,
    COLLECTION,
    ENRICHMENT,
    ECHO,
    SCHEMA_FILTER,
    SPIN_LOOP,
    MEMORY_HOG,
    TRAP,
    HUGE_OUTPUT,
    HOST_ABUSE,
    SOCKET_DIALER,
    FOREIGN_IMPORT,
    PREVIEW_ECHO,
    CHATTY,
    FORMAT,
    SNAPSHOT,
    NN_ABUSE,
];
