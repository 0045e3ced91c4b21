//! The host side of `wasi:nn@0.2.0-rc-2024-10-28` (azure-compat §6): a guest loads an ONNX
//! model from its bytes (`load`), makes an execution context and runs `compute` with named
//! tensors. The executor's backend ([`crate::inference`]) does the work on a blocking thread in
//! one of the executor's inference slots, under the call's deadline; the tenant's quotas bound
//! what a guest may load:
//! - `inference`: off, every `load` is refused (`security`);
//! - `max_model_bytes`: a larger model is refused (`too-large`);
//! - `max_graphs_per_instance`: graphs alive at once in one instance (a guest loads its model
//!   once and keeps it, as Azure's snapshot module does).
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

/// A loaded model: the `graph` resource.
pub struct NnGraph(wasmtime_wasi_nn::Graph);

impl std::fmt::Debug for NnGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NnGraph").finish_non_exhaustive()
    }
}

/// An execution context: the `graph-execution-context` resource. Empty while its `compute`
/// runs on a blocking thread (and for good, if the call's deadline passed meanwhile: the
/// instance is then replaced).
pub struct NnContext(Option<wasmtime_wasi_nn::ExecutionContext>);

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
            abandoned: Arc::new(AtomicBool::new(false)),
            slot_nanos: Arc::new(AtomicU64::new(0)),
        }
    }
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
    ) -> Option<R> {
        let deadline = tokio::time::Instant::from_std(self.deadline);
        let inference = self.nn.inference.clone();
        let lane = self.env.inference_lane.clone();
        let spent = self.nn.slot_nanos.clone();
        tokio::time::timeout_at(deadline, async move {
            let _asked = inference.ask();
            let turn = lane.turn().await?;
            let slot = inference.slots().clone().acquire_owned().await.ok()?;
            tokio::task::spawn_blocking(move || {
                let started = Instant::now();
                let result = work();
                let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                spent.fetch_add(nanos, Ordering::Relaxed);
                drop((slot, turn));
                result
            })
            .await
            .ok()
        })
        .await
        .ok()
        .flatten()
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
            None => Err(past_deadline(self, "load")),
            Some(Ok(graph)) => {
                self.nn.graphs += 1;
                Ok(Ok(self.table.push(NnGraph(graph))?))
            }
            Some(Err((refusal, data))) => {
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
        let made = self.table.get(&graph)?.0.init_execution_context();
        match made {
            Ok(context) => Ok(Ok(self.table.push(NnContext(Some(context)))?)),
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
            named.push(wasmtime_wasi_nn::backend::NamedTensor { name, tensor });
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
        let Some((running, result)) = outcome else {
            return Err(past_deadline(self, "compute"));
        };
        self.table.get_mut(&context)?.0 = Some(running);
        match result {
            Ok(outputs) => {
                let mut tensors = Vec::with_capacity(outputs.len());
                for output in outputs {
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
        self.table.delete(tensor)?;
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
