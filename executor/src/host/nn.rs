//! The host side of `wasi:nn@0.2.0-rc-2024-10-28` (azure-compat §6): a guest loads an ONNX
//! model from its bytes (`load`), makes an execution context and runs `compute` with named
//! tensors. The executor's backend ([`crate::inference`]) does the work on a blocking thread in
//! one of the executor's inference slots, under the call's deadline; the tenant's quotas bound
//! what a guest may load:
//! - `inference`: off, every `load` is refused (`security`);
//! - `max_model_bytes`: a larger model is refused (`too-large`);
//! - `max_graphs_per_instance`: graphs alive at once in one instance (a guest loads its model
//!   once and keeps it, as Azure's snapshot module does), and as many execution contexts (each
//!   keeps its model alive after its graph is dropped);
//! - `memory_per_instance`: tensor bytes the host holds for the instance (made by
//!   `tensor.new`, or a computation's outputs not yet dropped) are bounded by the instance's
//!   memory limit besides its linear memory; past it the call ends with `memory_limit`.
//!
//! `inference` and `max_model_bytes` are checked again at every `compute`, so a quota lowered
//! by the admin stops a model already loaded from its next computation.
//!
//! Every refusal and backend error is written to the tenant's log with its detail (the guest
//! sees the same detail through `error.data`).
#![allow(
    unreachable_pub,
    reason = "the generated bindings re-export the resource types"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use wasmtime::component::Resource;

use crate::bindings::nn::wasi::nn as wit;
use crate::host::HostState;
use crate::inference::{Guard, Inference, LoadRefusal, detail};
use crate::logs::LogLevel;
use wit::errors::ErrorCode;
use wit::graph::{ExecutionTarget, GraphBuilder, GraphEncoding};
use wit::tensor::{TensorData, TensorDimensions, TensorType};

/// A loaded model: the `graph` resource, with the size of the model it was loaded from.
pub struct NnGraph(wasmtime_wasi_nn::Graph, u64);

impl std::fmt::Debug for NnGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NnGraph").finish_non_exhaustive()
    }
}

/// An execution context: the `graph-execution-context` resource. Empty while its `compute`
/// runs on a blocking thread (and for good, if the call's deadline passed meanwhile: the
/// instance is then replaced).
pub struct NnContext(Option<wasmtime_wasi_nn::ExecutionContext>, u64);

impl std::fmt::Debug for NnContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NnContext")
            .field("idle", &self.0.is_some())
            .finish()
    }
}

/// A wasi-nn error: the `error` resource.
#[derive(Debug)]
pub struct NnError {
    code: ErrorCode,
    data: String,
}

/// What one instance may load, and what it has loaded.
#[derive(Debug)]
pub(crate) struct NnState {
    /// The executor's backend and slots.
    pub(crate) inference: Arc<Inference>,
    /// The tenant's quota `inference`.
    pub(crate) allowed: bool,
    /// The tenant's `max_model_bytes`.
    pub(crate) max_model_bytes: u64,
    /// The tenant's `max_graphs_per_instance`.
    pub(crate) max_graphs: u32,
    /// Graphs alive in this instance.
    pub(crate) graphs: u32,
    /// Execution contexts alive in this instance (each keeps its model).
    pub(crate) contexts: u32,
    /// Bytes of the tensors the host holds for this instance.
    pub(crate) tensor_bytes: u64,
    /// Set when a call of this instance gave up on its backend work (deadline): tract stops
    /// that work at its next operator.
    pub(crate) abandoned: Arc<AtomicBool>,
    /// Nanoseconds slots ran for this instance's loads and computes, abandoned ones included,
    /// not yet charged (the operator charges them to the tenant's fuel after each call).
    pub(crate) slot_nanos: Arc<AtomicU64>,
}

impl NnState {
    pub(crate) fn new(inference: Arc<Inference>) -> Self {
        Self {
            inference,
            allowed: false,
            max_model_bytes: 0,
            max_graphs: 0,
            graphs: 0,
            contexts: 0,
            tensor_bytes: 0,
            abandoned: Arc::new(AtomicBool::new(false)),
            slot_nanos: Arc::new(AtomicU64::new(0)),
        }
    }
}

/// Why backend work gave no result.
enum SlotEnd {
    /// The call's deadline passed first.
    Deadline,
    /// The backend panicked (a bug of the backend, e.g. on a malformed tensor): its message.
    Failed(String),
}

/// The call's deadline passed while the host waited for the backend.
fn past_deadline(state: &mut HostState, what: &str) -> wasmtime::Error {
    state.deadline_hit = true;
    // The instance is replaced after this trap: its work still running is of no use.
    state.nn.abandoned.store(true, Ordering::Relaxed);
    wasmtime::format_err!("wasi-nn {what} ran past the call's deadline")
}

impl HostState {
    /// Logs a refusal or backend error and hands the guest an `error` resource.
    fn nn_error<T>(
        &mut self,
        code: ErrorCode,
        data: String,
    ) -> wasmtime::Result<Result<T, Resource<NnError>>> {
        self.env.log(LogLevel::Error, "wasi-nn", &data);
        Ok(Err(self.table.push(NnError { code, data })?))
    }

    /// Runs `work` on a blocking thread in an inference slot, after the tenant's turn in its
    /// lane, all waited for within the call's deadline; the time the slot runs is added to
    /// the instance's `slot_nanos`. `None`: the deadline passed (the work, if it started,
    /// finishes on its thread, still holding the tenant's turn and the slot, and is dropped).
    async fn in_slot<R: Send + 'static>(
        &mut self,
        work: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, SlotEnd> {
        let deadline = tokio::time::Instant::from_std(self.deadline);
        let inference = self.nn.inference.clone();
        let lane = self.env.inference_lane.clone();
        let spent = self.nn.slot_nanos.clone();
        let waited = tokio::time::timeout_at(deadline, async move {
            let _asked = inference.ask();
            let closed = || SlotEnd::Failed("the executor's inference slots are closed".to_owned());
            let turn = lane.turn().await.ok_or_else(closed)?;
            let slot = inference
                .slots()
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| closed())?;
            tokio::task::spawn_blocking(move || {
                let started = Instant::now();
                // Slot and turn go back however the work ends, a panic included.
                let _held = (slot, turn);
                let result = work();
                let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                spent.fetch_add(nanos, Ordering::Relaxed);
                result
            })
            .await
            .map_err(|error| SlotEnd::Failed(panic_message(error)))
        })
        .await;
        waited.unwrap_or(Err(SlotEnd::Deadline))
    }

    /// Counts `bytes` more tensor bytes held for the instance; past its memory limit, marks the
    /// call as over it (`memory_limit`) and returns the trap that ends it.
    fn hold_tensor_bytes(&mut self, bytes: u64) -> wasmtime::Result<()> {
        let held = self.nn.tensor_bytes.saturating_add(bytes);
        let limit = self.memory_limit as u64;
        if held > limit {
            self.memory_limit_hit = true;
            return Err(wasmtime::format_err!(
                "wasi-nn tensors held for this instance would take {held} bytes, over its memory limit of {limit} bytes (quota `memory_per_instance`)"
            ));
        }
        self.nn.tensor_bytes = held;
        Ok(())
    }

    /// Counts `bytes` tensor bytes no longer held.
    fn release_tensor_bytes(&mut self, bytes: u64) {
        self.nn.tensor_bytes = self.nn.tensor_bytes.saturating_sub(bytes);
    }
}

impl wit::graph::Host for HostState {
    async fn load(
        &mut self,
        builders: Vec<GraphBuilder>,
        encoding: GraphEncoding,
        target: ExecutionTarget,
    ) -> wasmtime::Result<Result<Resource<NnGraph>, Resource<NnError>>> {
        if !self.nn.allowed {
            return self.nn_error(
                ErrorCode::Security,
                "inference is not in the tenant's quota (quota `inference` is false)".to_owned(),
            );
        }
        let size: u64 = builders.iter().map(|b| b.len() as u64).sum();
        if size > self.nn.max_model_bytes {
            return self.nn_error(
                ErrorCode::TooLarge,
                format!(
                    "the model is {size} bytes; the tenant's limit is {} bytes (quota `max_model_bytes`)",
                    self.nn.max_model_bytes
                ),
            );
        }
        if self.nn.graphs >= self.nn.max_graphs {
            return self.nn_error(
                ErrorCode::RuntimeError,
                format!(
                    "the instance has {} graphs loaded, the tenant's limit (quota `max_graphs_per_instance`): load a model once and keep it",
                    self.nn.graphs
                ),
            );
        }
        if target != ExecutionTarget::Cpu {
            return self.nn_error(
                ErrorCode::UnsupportedOperation,
                format!(
                    "execution target {target:?} is not available: weir runs inference on the cpu"
                ),
            );
        }
        let encoding = to_backend_encoding(encoding);
        let [model]: [Vec<u8>; 1] = match builders.try_into() {
            Ok(one) => one,
            Err(builders) => {
                return self.nn_error(
                    ErrorCode::InvalidArgument,
                    format!(
                        "an onnx graph is one builder (the model file); got {}",
                        builders.len()
                    ),
                );
            }
        };
        let inference = self.nn.inference.clone();
        let guard = Guard {
            abandoned: self.nn.abandoned.clone(),
            max_tensor_bytes: self.memory_limit as u64,
        };
        let loaded = self
            .in_slot(move || inference.load(&model, encoding, guard))
            .await;
        match loaded {
            Err(SlotEnd::Deadline) => Err(past_deadline(self, "load")),
            Err(SlotEnd::Failed(panic)) => {
                let backend = self.nn.inference.backend_name();
                self.nn_error(
                    ErrorCode::RuntimeError,
                    format!("{backend} failed while loading the model: {panic}"),
                )
            }
            Ok(Ok(graph)) => {
                self.nn.graphs += 1;
                Ok(Ok(self.table.push(NnGraph(graph, size))?))
            }
            Ok(Err((refusal, data))) => {
                let code = match refusal {
                    LoadRefusal::Encoding => ErrorCode::InvalidEncoding,
                    LoadRefusal::Backend => ErrorCode::RuntimeError,
                };
                let backend = self.nn.inference.backend_name();
                self.nn_error(code, format!("{backend} could not load the model: {data}"))
            }
        }
    }

    fn load_by_name(
        &mut self,
        name: String,
    ) -> wasmtime::Result<Result<Resource<NnGraph>, Resource<NnError>>> {
        self.nn_error(
            ErrorCode::NotFound,
            format!("weir has no named graphs ({name:?}): load the model from its bytes"),
        )
    }
}

impl wit::graph::HostGraph for HostState {
    fn init_execution_context(
        &mut self,
        graph: Resource<NnGraph>,
    ) -> wasmtime::Result<Result<Resource<NnContext>, Resource<NnError>>> {
        if self.nn.contexts >= self.nn.max_graphs {
            return self.nn_error(
                ErrorCode::RuntimeError,
                format!(
                    "the instance has {} execution contexts, the tenant's limit (quota `max_graphs_per_instance`; a context keeps its model loaded): make one per graph and keep it",
                    self.nn.contexts
                ),
            );
        }
        let graph = self.table.get(&graph)?;
        let model_bytes = graph.1;
        let made = graph.0.init_execution_context();
        match made {
            Ok(context) => {
                let context = self.table.push(NnContext(Some(context), model_bytes))?;
                self.nn.contexts += 1;
                Ok(Ok(context))
            }
            Err(error) => self.nn_error(
                ErrorCode::RuntimeError,
                format!("cannot make an execution context: {}", detail(&error)),
            ),
        }
    }

    fn drop(&mut self, graph: Resource<NnGraph>) -> wasmtime::Result<()> {
        self.table.delete(graph)?;
        self.nn.graphs = self.nn.graphs.saturating_sub(1);
        Ok(())
    }
}

impl wit::inference::Host for HostState {}

impl wit::inference::HostGraphExecutionContext for HostState {
    async fn compute(
        &mut self,
        context: Resource<NnContext>,
        inputs: Vec<(String, Resource<wasmtime_wasi_nn::Tensor>)>,
    ) -> wasmtime::Result<
        Result<Vec<(String, Resource<wasmtime_wasi_nn::Tensor>)>, Resource<NnError>>,
    > {
        let mut named = Vec::with_capacity(inputs.len());
        for (name, tensor) in inputs {
            let tensor = self.table.delete(tensor)?;
            self.release_tensor_bytes(tensor.data.len() as u64);
            named.push(wasmtime_wasi_nn::backend::NamedTensor { name, tensor });
        }
        // The quotas in force now, not those the model was loaded under.
        if !self.nn.allowed {
            return self.nn_error(
                ErrorCode::Security,
                "inference is no longer in the tenant's quota (quota `inference` is false)"
                    .to_owned(),
            );
        }
        let model_bytes = self.table.get(&context)?.1;
        if model_bytes > self.nn.max_model_bytes {
            return self.nn_error(
                ErrorCode::TooLarge,
                format!(
                    "the model is {model_bytes} bytes; the tenant's limit is now {} bytes (quota `max_model_bytes`)",
                    self.nn.max_model_bytes
                ),
            );
        }
        let Some(mut running) = self.table.get_mut(&context)?.0.take() else {
            return self.nn_error(
                ErrorCode::RuntimeError,
                "the execution context is busy or was lost".to_owned(),
            );
        };
        let outcome = self
            .in_slot(move || {
                let result = running.compute_with_io(named);
                (running, result)
            })
            .await;
        let (running, result) = match outcome {
            Ok(done) => done,
            Err(SlotEnd::Deadline) => return Err(past_deadline(self, "compute")),
            Err(SlotEnd::Failed(panic)) => {
                // The context went with the failed work: this instance computes no more.
                let backend = self.nn.inference.backend_name();
                return self.nn_error(
                    ErrorCode::RuntimeError,
                    format!("{backend} failed while computing: {panic}"),
                );
            }
        };
        self.table.get_mut(&context)?.0 = Some(running);
        match result {
            Ok(outputs) => {
                let mut tensors = Vec::with_capacity(outputs.len());
                for output in outputs {
                    self.hold_tensor_bytes(output.tensor.data.len() as u64)?;
                    tensors.push((output.name, self.table.push(output.tensor)?));
                }
                Ok(Ok(tensors))
            }
            Err(error) => {
                let backend = self.nn.inference.backend_name();
                self.nn_error(
                    ErrorCode::RuntimeError,
                    format!("{backend} could not compute: {}", detail(&error)),
                )
            }
        }
    }

    fn drop(&mut self, context: Resource<NnContext>) -> wasmtime::Result<()> {
        self.table.delete(context)?;
        self.nn.contexts = self.nn.contexts.saturating_sub(1);
        Ok(())
    }
}

impl wit::tensor::Host for HostState {}

impl wit::tensor::HostTensor for HostState {
    fn new(
        &mut self,
        dimensions: TensorDimensions,
        ty: TensorType,
        data: TensorData,
    ) -> wasmtime::Result<Resource<wasmtime_wasi_nn::Tensor>> {
        self.hold_tensor_bytes(data.len() as u64)?;
        Ok(self.table.push(wasmtime_wasi_nn::Tensor::new(
            dimensions,
            to_backend_type(ty),
            data,
        ))?)
    }

    fn dimensions(
        &mut self,
        tensor: Resource<wasmtime_wasi_nn::Tensor>,
    ) -> wasmtime::Result<TensorDimensions> {
        Ok(self.table.get(&tensor)?.dimensions.clone())
    }

    fn ty(&mut self, tensor: Resource<wasmtime_wasi_nn::Tensor>) -> wasmtime::Result<TensorType> {
        Ok(from_backend_type(self.table.get(&tensor)?.ty))
    }

    fn data(&mut self, tensor: Resource<wasmtime_wasi_nn::Tensor>) -> wasmtime::Result<TensorData> {
        Ok(self.table.get(&tensor)?.data.clone())
    }

    fn drop(&mut self, tensor: Resource<wasmtime_wasi_nn::Tensor>) -> wasmtime::Result<()> {
        let tensor = self.table.delete(tensor)?;
        self.release_tensor_bytes(tensor.data.len() as u64);
        Ok(())
    }
}

impl wit::errors::Host for HostState {}

impl wit::errors::HostError for HostState {
    fn code(&mut self, error: Resource<NnError>) -> wasmtime::Result<ErrorCode> {
        Ok(self.table.get(&error)?.code)
    }

    fn data(&mut self, error: Resource<NnError>) -> wasmtime::Result<String> {
        Ok(self.table.get(&error)?.data.clone())
    }

    fn drop(&mut self, error: Resource<NnError>) -> wasmtime::Result<()> {
        self.table.delete(error)?;
        Ok(())
    }
}

fn to_backend_encoding(encoding: GraphEncoding) -> wasmtime_wasi_nn::wit::GraphEncoding {
    use wasmtime_wasi_nn::wit::GraphEncoding as B;
    match encoding {
        GraphEncoding::Openvino => B::Openvino,
        GraphEncoding::Onnx => B::Onnx,
        GraphEncoding::Tensorflow => B::Tensorflow,
        GraphEncoding::Pytorch => B::Pytorch,
        GraphEncoding::Tensorflowlite => B::Tensorflowlite,
        GraphEncoding::Ggml => B::Ggml,
        GraphEncoding::Autodetect => B::Autodetect,
    }
}

fn to_backend_type(ty: TensorType) -> wasmtime_wasi_nn::wit::TensorType {
    use wasmtime_wasi_nn::wit::TensorType as B;
    match ty {
        TensorType::Fp16 => B::Fp16,
        TensorType::Fp32 => B::Fp32,
        TensorType::Fp64 => B::Fp64,
        TensorType::Bf16 => B::Bf16,
        TensorType::U8 => B::U8,
        TensorType::I32 => B::I32,
        TensorType::I64 => B::I64,
    }
}

fn from_backend_type(ty: wasmtime_wasi_nn::wit::TensorType) -> TensorType {
    use wasmtime_wasi_nn::wit::TensorType as B;
    match ty {
        B::Fp16 => TensorType::Fp16,
        B::Fp32 => TensorType::Fp32,
        B::Fp64 => TensorType::Fp64,
        B::Bf16 => TensorType::Bf16,
        B::U8 => TensorType::U8,
        B::I32 => TensorType::I32,
        B::I64 => TensorType::I64,
    }
}

/// What a panicked (or cancelled) blocking task said.
fn panic_message(error: tokio::task::JoinError) -> String {
    match error.try_into_panic() {
        Ok(panic) => panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .map_or_else(|| "it panicked".to_owned(), |m| format!("it panicked: {m}")),
        Err(error) => format!("its work was cancelled: {error}"),
    }
}
