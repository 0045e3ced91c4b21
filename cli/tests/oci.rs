//! Module and graph import from a real OCI registry (distribution, started by
//! `scripts/services`), in the packagings Azure's tooling produces, then deployed and run.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed expectation is a failed test"
)]

mod common;

use std::collections::BTreeMap;

use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::OciImageManifest;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client as OciClient, Reference};
use weir_api::rest::{Binding, CreateDeployment, GraphRef, ImportArtifact, IngestMessage};
use weir_api::tenancy::Quotas;

fn registry() -> String {
    std::env::var("WEIR_TEST_REGISTRY").expect(
        "WEIR_TEST_REGISTRY is not set: start the services with `scripts/services start` and \
         `source target/services/env` (scripts/test does both)",
    )
}

/// Pushes one file as Azure's tooling does: `artifact_type` for modules, a typed empty config
/// for graphs, the layer titled with the file name.
async fn push(reference: &str, file: &str, data: Vec<u8>, layer_type: &str, config_type: &str) {
    let oci = OciClient::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..ClientConfig::default()
    });
    let reference: Reference = reference.parse().unwrap();
    let annotations =
        BTreeMap::from([("org.opencontainers.image.title".to_owned(), file.to_owned())]);
    let layers = vec![ImageLayer::new(
        data,
        layer_type.to_owned(),
        Some(annotations),
    )];
    let config = Config::new(b"{}".to_vec(), config_type.to_owned(), None);
    let mut manifest = OciImageManifest::build(&layers, &config, None);
    if layer_type == "application/wasm" {
        manifest.artifact_type = Some("application/vnd.module.wasm.content.layer.v1+wasm".into());
    }
    oci.push(
        &reference,
        &layers,
        config,
        &RegistryAuth::Anonymous,
        Some(manifest),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_imported_from_a_registry_deploy_and_run() {
    let registry = registry();
    let module_ref = format!("{registry}/azure-samples/explore-iot-operations/temperature:1.0.0");
    let graph_ref = format!("{registry}/azure-samples/explore-iot-operations/graph-simple:1.0.0");
    push(
        &module_ref,
        "temperature.wasm",
        std::fs::read(weir_guests::TEMPERATURE.path()).unwrap(),
        "application/wasm",
        "application/vnd.oci.empty.v1+json",
    )
    .await;
    push(
        &graph_ref,
        "graph-simple.yaml",
        include_bytes!("../../tests/golden/graph-simple.yaml").to_vec(),
        "application/yaml",
        "application/vnd.microsoft.aio.graph.v1+yaml",
    )
    .await;

    let data = tempfile::tempdir().unwrap();
    let server = common::serve(data.path());
    let admin = server.admin();
    let import = |reference: &str| ImportArtifact {
        reference: reference.to_owned(),
        name: None,
        version: None,
        insecure: true,
    };

    // The registry is on loopback: the platform's own network, closed until an admin opens it.
    let walled = common::tenant(&admin, "walled", Quotas::default()).await;
    let refused = walled
        .import_module(&import(&module_ref))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some("forbidden"), "{refused}");
    assert!(walled.modules().await.unwrap().is_empty());

    let host = registry.split(':').next().unwrap().to_owned();
    let plant = common::tenant(
        &admin,
        "plant",
        Quotas {
            allowed_private_hosts: vec![host],
            ..Quotas::default()
        },
    )
    .await;
    let module = plant.import_module(&import(&module_ref)).await.unwrap();
    assert_eq!(
        (module.name.as_str(), module.version.as_str()),
        ("temperature", "1.0.0")
    );
    assert!(module.operators.contains(&"map".to_owned()));
    let graph = plant.import_graph(&import(&graph_ref)).await.unwrap();
    assert_eq!(
        (graph.name.as_str(), graph.version.as_str()),
        ("graph-simple", "1.0.0")
    );
    plant
        .deploy(&CreateDeployment {
            id: "imported".to_owned(),
            graph: GraphRef {
                name: "graph-simple".to_owned(),
                version: "1.0.0".to_owned(),
            },
            configuration: Default::default(),
            source: Binding::default(),
            sink: Binding::default(),
            dead_letters: None,
            instances: 1,
            partition_key: None,
        })
        .await
        .unwrap();
    let reply = plant
        .ingest(
            "imported",
            &[IngestMessage::new(
                r#"{"temperature":{"value":212,"unit":"F"}}"#,
            )],
            true,
        )
        .await
        .unwrap();
    assert!(
        reply.outputs.unwrap()[0]
            .payload
            .contains(r#""value":100.0"#)
    );

    // What a registry can get wrong, each answered clearly; nothing lands.
    let missing = plant
        .import_module(&import(&format!("{registry}/nothing/here:1.0.0")))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Some("invalid_request"), "{missing}");
    let graph_as_module = plant
        .import_module(&ImportArtifact {
            version: Some("2".to_owned()),
            ..import(&graph_ref)
        })
        .await
        .unwrap_err();
    assert_eq!(
        graph_as_module.code(),
        Some("invalid_module"),
        "{graph_as_module}"
    );
    let not_a_reference = plant
        .import_module(&import("::not a ref::"))
        .await
        .unwrap_err();
    assert_eq!(not_a_reference.code(), Some("invalid_request"));
    let small = common::tenant(
        &admin,
        "small",
        Quotas {
            allowed_private_hosts: vec![registry.split(':').next().unwrap().to_owned()],
            max_module_bytes: 1024,
            ..Quotas::default()
        },
    )
    .await;
    let too_big = small.import_module(&import(&module_ref)).await.unwrap_err();
    assert_eq!(too_big.code(), Some("payload_too_large"), "{too_big}");
    assert_eq!(plant.modules().await.unwrap().len(), 1);
    assert!(small.modules().await.unwrap().is_empty());
}
