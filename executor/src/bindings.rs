//! Host bindings generated from weir's WIT (`wit/`), one module per contract. Each world
//! includes the package's `host` world (every import a module may use) and exports all five
//! operator interfaces; a module exports a subset, so operators are loaded per interface with
//! `GuestIndices`, never through the world's all-exports `instantiate`.

/// `wasm-graph:processor@1.1.0`, the GA contract.
pub(crate) mod ga {
    wasmtime::component::bindgen!({
        path: "../wit/wasm-graph",
        inline: "
            package weir:ga-host;
            world operator-host {
                include wasm-graph:processor/host@1.1.0;
                export wasm-graph:processor/%map@1.1.0;
                export wasm-graph:processor/filter@1.1.0;
                export wasm-graph:processor/branch@1.1.0;
                export wasm-graph:processor/accumulate@1.1.0;
                export wasm-graph:processor/delay@1.1.0;
            }
        ",
        world: "weir:ga-host/operator-host",
        // Only the state store waits on I/O; every other import is a bounded host-side step
        // and runs as a plain function, without a future per call (issue 9).
        imports: {
            "wasm-graph:processor/state-store.get": async | trappable,
            "wasm-graph:processor/state-store.set": async | trappable,
            "wasm-graph:processor/state-store.del": async | trappable,
            "wasm-graph:processor/state-store.vdel": async | trappable,
            default: trappable,
        },
        exports: { default: async },
        with: {
            "wasm-graph:processor/types.buffer": crate::host::HostBuffer,
            "wasm-graph:processor/command-invoker.command-request": crate::host::rpc::CommandRequest,
            "wasm-graph:processor/command-invoker.command-request-builder": crate::host::rpc::CommandRequestBuilder,
            "wasm-graph:processor/command-invoker.command-invoker-options": crate::host::rpc::CommandInvokerOptions,
            "wasm-graph:processor/command-invoker.command-invoker-options-builder": crate::host::rpc::CommandInvokerOptionsBuilder,
            "wasm-graph:processor/command-invoker.command-invoker": crate::host::rpc::CommandInvoker,
        },
    });
}

/// `tinykube-graph:processor@1.0.0`, the public-preview contract.
pub(crate) mod preview {
    wasmtime::component::bindgen!({
        path: "../wit/tinykube-graph",
        inline: "
            package weir:preview-host;
            world operator-host {
                include tinykube-graph:processor/host@1.0.0;
                export tinykube-graph:processor/%map@1.0.0;
                export tinykube-graph:processor/filter@1.0.0;
                export tinykube-graph:processor/branch@1.0.0;
                export tinykube-graph:processor/accumulate@1.0.0;
                export tinykube-graph:processor/delay@1.0.0;
            }
        ",
        world: "weir:preview-host/operator-host",
        // Only the state store waits on I/O; every other import is a bounded host-side step
        // and runs as a plain function, without a future per call (issue 9).
        imports: {
            "tinykube-graph:processor/state-store.get": async | trappable,
            "tinykube-graph:processor/state-store.set": async | trappable,
            "tinykube-graph:processor/state-store.del": async | trappable,
            "tinykube-graph:processor/state-store.vdel": async | trappable,
            default: trappable,
        },
        exports: { default: async },
        with: {
            "tinykube-graph:processor/types.buffer": crate::host::HostBuffer,
            "tinykube-graph:processor/command-invoker.command-request": crate::host::rpc::CommandRequest,
            "tinykube-graph:processor/command-invoker.command-request-builder": crate::host::rpc::CommandRequestBuilder,
            "tinykube-graph:processor/command-invoker.command-invoker-options": crate::host::rpc::CommandInvokerOptions,
            "tinykube-graph:processor/command-invoker.command-invoker-options-builder": crate::host::rpc::CommandInvokerOptionsBuilder,
            "tinykube-graph:processor/command-invoker.command-invoker": crate::host::rpc::CommandInvoker,
        },
    });
}

/// `wasi:nn@0.2.0-rc-2024-10-28` (azure-compat §6), linked only for modules that import it.
/// `load` and `compute` wait for a blocking thread (the model's CPU work never runs on an async
/// worker); every other import is a bounded host-side step.
pub(crate) mod nn {
    wasmtime::component::bindgen!({
        path: "../wit/wasi-nn",
        world: "wasi:nn/ml",
        imports: {
            "wasi:nn/graph.load": async | trappable,
            "wasi:nn/inference.[method]graph-execution-context.compute": async | trappable,
            default: trappable,
        },
        with: {
            "wasi:nn/graph.graph": crate::host::nn::NnGraph,
            "wasi:nn/tensor.tensor": wasmtime_wasi_nn::Tensor,
            "wasi:nn/inference.graph-execution-context": crate::host::nn::NnContext,
            "wasi:nn/errors.error": crate::host::nn::NnError,
        },
    });
}
