//! Moves messages between brokers and deployments: the `Source` and `Sink` seams with MQTT v5,
//! Kafka, OTLP and HTTP implementations and a conformance suite per seam.
//!
//! Empty until the connectors issue; the host-side message model they produce
//! (`weir_api::DataItem`) is in place. It must never depend on wasmtime.
