//! A map built against the public-preview contract `tinykube-graph:processor@1.0.0` (plain
//! return types, no `error`), as modules of the 2025 preview were. It prefixes the payload with
//! `preview:` and logs through the preview logger; payload `trap` panics.

mod bindings {
    wit_bindgen::generate!({
        path: "../../../wit/tinykube-graph",
        world: "map-impl",
    });
}

use bindings::exports::tinykube_graph::processor::map::Guest;
use bindings::tinykube_graph::processor::logger::{Level, log};
use bindings::tinykube_graph::processor::types::{BufferOrBytes, DataModel, ModuleConfiguration};

struct PreviewEcho;

impl Guest for PreviewEcho {
    fn init(configuration: ModuleConfiguration) -> bool {
        log(
            Level::Info,
            "preview-echo",
            &format!("init with {} properties", configuration.properties.len()),
        );
        true
    }

    fn process(message: DataModel) -> DataModel {
        let DataModel::Message(mut message) = message else {
            return message;
        };
        let payload = match &message.payload {
            BufferOrBytes::Buffer(buffer) => buffer.read(),
            BufferOrBytes::Bytes(bytes) => bytes.clone(),
        };
        if payload == b"trap" {
            panic!("trap requested by payload");
        }
        let mut out = b"preview:".to_vec();
        out.extend_from_slice(&payload);
        message.payload = BufferOrBytes::Bytes(out);
        DataModel::Message(message)
    }
}

bindings::export!(PreviewEcho with_types_in bindings);
