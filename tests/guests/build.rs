//! Builds the guest workspace (`modules/`, with `sdk/` and `wit/`) for wasm32-wasip2, so that
//! `cargo test` always runs against components built from this checkout. The nested cargo uses
//! its own target directory (`target/guests`) to stay clear of the outer build's lock.
#![allow(
    clippy::panic,
    clippy::expect_used,
    reason = "a build script reports failure by panicking"
)]

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let here =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = here
        .join("../..")
        .canonicalize()
        .expect("the repository root exists");
    for watched in ["modules", "sdk", "wit"] {
        println!("cargo::rerun-if-changed={}", root.join(watched).display());
    }
    let target_dir = root.join("target/guests");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--manifest-path",
        ])
        .arg(root.join("modules/Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target_dir)
        // The outer build's flags are for the host, not for wasm.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_MAKEFLAGS")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTC_WRAPPER")
        .status()
        .expect("cargo runs");
    if !status.success() {
        panic!(
            "building the guest modules failed ({status}); is the target installed? \
             rustup target add wasm32-wasip2"
        );
    }
    let dir = target_dir.join("wasm32-wasip2/release");
    println!("cargo::rustc-env=WEIR_GUESTS_DIR={}", dir.display());
}
