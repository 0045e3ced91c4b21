//! A module written for Azure IoT Operations builds against weir-sdk with one dependency line
//! changed. The example modules are written that way (Azure's paths, Azure's injected names);
//! this checks the rename is the only difference and that they build and export what they say.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed expectation is a failed test"
)]

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{ROOT}/{path}")).unwrap()
}

#[test]
fn the_examples_depend_on_wasm_graph_sdk_renamed_to_weir_sdk() {
    let workspace = read("modules/Cargo.toml");
    assert!(
        workspace.contains(r#"wasm_graph_sdk = { package = "weir-sdk", path = "../sdk" }"#),
        "the Azure-style line is the workspace's dependency"
    );
    for example in [
        "temperature",
        "humidity",
        "window",
        "collection",
        "enrichment",
    ] {
        let manifest = read(&format!("modules/{example}/Cargo.toml"));
        assert!(
            manifest.contains("wasm_graph_sdk = { workspace = true }"),
            "{example} uses the Azure name"
        );
        assert!(
            !manifest.contains("weir-sdk"),
            "{example} names weir-sdk only through the rename"
        );
        let source = read(&format!("modules/{example}/src/lib.rs"));
        assert!(
            source.contains("use wasm_graph_sdk::macros::"),
            "{example} uses Azure's paths"
        );
        assert!(
            !source.contains("weir_sdk"),
            "{example} source is Azure-shaped"
        );
    }
}

#[test]
fn the_renamed_examples_build_into_components() {
    for guest in [
        weir_guests::TEMPERATURE,
        weir_guests::HUMIDITY,
        weir_guests::WINDOW,
        weir_guests::COLLECTION,
        weir_guests::ENRICHMENT,
    ] {
        let bytes = guest.bytes();
        assert_eq!(
            bytes.get(..8),
            Some(b"\0asm\x0d\0\x01\0".as_slice()),
            "{} is a component",
            guest.name()
        );
    }
}
