//! The resources of `command-invoker` (MQTT RPC). weir has no RPC transport for modules yet, so
//! builders work (a module can build requests) and invoking answers `client-error`; the
//! resources carry nothing.

/// A built request.
#[derive(Debug)]
pub(crate) struct CommandRequest;
/// A request being built.
#[derive(Debug)]
pub(crate) struct CommandRequestBuilder;
/// Built invoker options.
#[derive(Debug)]
pub(crate) struct CommandInvokerOptions;
/// Invoker options being built.
#[derive(Debug)]
pub(crate) struct CommandInvokerOptionsBuilder;
/// An invoker.
#[derive(Debug)]
pub(crate) struct CommandInvoker;
