//! The resources of `command-invoker` (MQTT RPC). weir has no RPC transport for modules yet, so
//! builders work (a module can build requests) and invoking answers `client-error`; the
//! resources carry nothing.
#![allow(
    unreachable_pub,
    reason = "the generated bindings re-export these types"
)]

/// A built request.
#[derive(Debug)]
pub struct CommandRequest;
/// A request being built.
#[derive(Debug)]
pub struct CommandRequestBuilder;
/// Built invoker options.
#[derive(Debug)]
pub struct CommandInvokerOptions;
/// Invoker options being built.
#[derive(Debug)]
pub struct CommandInvokerOptionsBuilder;
/// An invoker.
#[derive(Debug)]
pub struct CommandInvoker;
