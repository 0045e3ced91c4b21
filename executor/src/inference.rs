//! Inference for modules that import `wasi:nn@0.2.0-rc-2024-10-28` (ARCHITECTURE decision 9,
//! azure-compat §6): the executor's ONNX backend and the slots its work runs in.
//!
//! The embedded backend runs ONNX graphs on `tract-onnx` (pure Rust, no native library),
//! implementing `wasmtime-wasi-nn`'s public backend traits. With the `ort` cargo feature,
//! ONNX Runtime (through `wasmtime-wasi-nn`'s own backend, `ort` with `load-dynamic`) can serve
//! instead; its library comes from configuration and is loaded when the engine is built, so a
//! missing or unusable library is an error at start-up, never a panic inside a guest's `load`.
//! One backend serves all of an executor's `onnx` graphs (a `wasi-nn` context holds one backend
//! per encoding).
//!
//! Loading and computing are CPU work of unbounded length: they run on tokio's blocking
//! threads, at most [`InferenceConfig::max_concurrent`] at once, never on the async workers
//! other tenants share. Two walls keep one tenant's inference from changing what another's
//! gets: a tenant's loads and computes take their turn in the tenant's own
//! [`InferenceLane`] (one at a time per tenant on an executor, so a tenant holds at most one
//! slot and its backlog waits in its lane, not ahead of other tenants), and the time a slot
//! runs for a tenant is charged to its `fuel_per_second` budget at
//! [`INFERENCE_FUEL_PER_MS`], as its calls' wasm is.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use wasmtime_wasi_nn::backend::{
    BackendError, BackendExecutionContext, BackendGraph, BackendInner, NamedTensor,
};
use wasmtime_wasi_nn::wit::{ExecutionTarget, GraphEncoding, TensorType};
use wasmtime_wasi_nn::{ExecutionContext, Graph, Tensor};

/// Which backend runs an executor's ONNX graphs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum InferenceBackend {
    /// `tract-onnx`, built in.
    #[default]
    Tract,
    /// ONNX Runtime, loaded from the shared library at this path (e.g. the `onnxruntime` PyPI
    /// wheel's `onnxruntime/capi/libonnxruntime.so.1.*`). Needs the `ort` cargo feature.
    OnnxRuntime(std::path::PathBuf),
}

impl InferenceBackend {
    /// Its name as reports and benchmarks print it: `tract` or `onnxruntime`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Tract => "tract",
            Self::OnnxRuntime(_) => "onnxruntime",
        }
    }
}

/// How an executor runs inference.
#[derive(Debug, Clone)]
pub struct InferenceConfig {
    /// The backend of `onnx` graphs.
    pub backend: InferenceBackend,
    /// Loads and computes running at once across all tenants (each takes a blocking thread
    /// and, while it runs, a core); more wait for a slot within their call's deadline.
    pub max_concurrent: usize,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        Self {
            backend: InferenceBackend::Tract,
            max_concurrent: std::thread::available_parallelism()
                .map_or(1, std::num::NonZeroUsize::get),
        }
    }
}

/// Fuel charged to a tenant for each millisecond one of its loads or computes runs in a slot
/// (a core): fuel is about one wasm instruction, and a core of the machines weir targets runs
/// about 10^9 of those per second, so a tenant's inference and its wasm draw on one CPU
/// budget at about the same price.
pub const INFERENCE_FUEL_PER_MS: u64 = 1_000_000;

/// A tenant's turn at inference on one executor: its loads and computes run one at a time,
/// in the order they were asked for, each then waiting for one of the executor's slots. Clones
/// share the turn: give every node of a tenant on an executor a clone of the tenant's lane
/// (a fresh `default()` is a lane of its own).
#[derive(Debug, Clone)]
pub struct InferenceLane(Arc<tokio::sync::Semaphore>);

impl Default for InferenceLane {
    fn default() -> Self {
        Self(Arc::new(tokio::sync::Semaphore::new(1)))
    }
}

impl InferenceLane {
    /// Waits for the tenant's turn (first asked, first served).
    pub(crate) async fn turn(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.0.clone().acquire_owned().await.ok()
    }
}

/// Why the inference backend could not be set up (a start-up error).
#[derive(Debug, thiserror::Error)]
#[error("cannot set up inference: {0}")]
pub struct InferenceSetupError(String);

/// The executor's inference service: its backend and its slots.
pub(crate) struct Inference {
    backend: InferenceBackend,
    slots: Arc<tokio::sync::Semaphore>,
    /// The slots there are.
    max_concurrent: usize,
    /// Loads and computes asked for whose caller still waits (for its lane, a slot or the
    /// work).
    asked: AtomicUsize,
}

impl std::fmt::Debug for Inference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inference")
            .field("backend", &self.backend.name())
            .finish_non_exhaustive()
    }
}

impl Inference {
    /// Sets up `config`'s backend: for ONNX Runtime, loads the library now.
    pub(crate) fn new(config: &InferenceConfig) -> Result<Self, InferenceSetupError> {
        if let InferenceBackend::OnnxRuntime(path) = &config.backend {
            onnxruntime::init(path)?;
        }
        Ok(Self {
            backend: config.backend.clone(),
            slots: Arc::new(tokio::sync::Semaphore::new(config.max_concurrent.max(1))),
            max_concurrent: config.max_concurrent.max(1),
            asked: AtomicUsize::new(0),
        })
    }

    /// Counts a load or compute asked for until the returned guard drops.
    pub(crate) fn ask(&self) -> Asked<'_> {
        self.asked.fetch_add(1, Ordering::Relaxed);
        Asked(&self.asked)
    }

    /// Loads and computes whose callers wait now, across all tenants.
    pub(crate) fn asked(&self) -> usize {
        self.asked.load(Ordering::Relaxed)
    }

    /// Slots running a load or compute now (abandoned ones included).
    pub(crate) fn running(&self) -> usize {
        self.max_concurrent
            .saturating_sub(self.slots.available_permits())
    }

    /// The backend's name.
    pub(crate) fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// The slots loads and computes take.
    pub(crate) fn slots(&self) -> &Arc<tokio::sync::Semaphore> {
        &self.slots
    }

    /// Loads one model for `encoding` under `guard` (blocking: call it on a blocking thread).
    pub(crate) fn load(
        &self,
        model: &[u8],
        encoding: GraphEncoding,
        guard: Guard,
    ) -> Result<Graph, (LoadRefusal, String)> {
        if encoding != GraphEncoding::Onnx {
            return Err((
                LoadRefusal::Encoding,
                format!("weir runs onnx graphs only, not {encoding}"),
            ));
        }
        let loaded = match &self.backend {
            InferenceBackend::Tract => {
                TractBackend { guard: Some(guard) }.load(&[model], ExecutionTarget::Cpu)
            }
            InferenceBackend::OnnxRuntime(_) => onnxruntime::load(model),
        };
        loaded.map_err(|error| (LoadRefusal::Backend, detail(&error)))
    }
}

/// A load or compute being waited for (see [`Inference::ask`]).
pub(crate) struct Asked<'a>(&'a AtomicUsize);

impl Drop for Asked<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What bounds the graphs of one operator instance on the tract backend.
#[derive(Debug, Clone)]
pub(crate) struct Guard {
    /// Set when the instance's call gave up waiting (its deadline passed): a computation still
    /// running for it stops at its next operator instead of running to its end in a slot.
    pub(crate) abandoned: Arc<AtomicBool>,
    /// Most bytes all of a model's intermediate tensors may take together (their shapes must
    /// be known at load): the instance's memory limit, so a model cannot make the host
    /// allocate what the tenant's sandbox may not.
    pub(crate) max_tensor_bytes: u64,
}

/// Why a load was refused before or by the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LoadRefusal {
    /// An encoding weir has no backend for.
    Encoding,
    /// The backend could not load the model.
    Backend,
}

/// A backend error with its causes: `BackendError`'s own text ("Failed while accessing
/// backend") drops them, and the tenant needs them to fix its model.
pub(crate) fn detail(error: &BackendError) -> String {
    match error {
        BackendError::BackendAccess(inner) => format!("{inner:#}"),
        other => other.to_string(),
    }
}

fn backend_error(error: impl std::fmt::Display) -> BackendError {
    BackendError::BackendAccess(wasmtime::format_err!("{error:#}"))
}

/// The embedded ONNX backend on `tract-onnx`. The default has no bounds of its own; weir's host
/// loads through one bounded by the instance (its memory limit, its deadline).
#[derive(Debug, Clone, Default)]
pub struct TractBackend {
    guard: Option<Guard>,
}

impl BackendInner for TractBackend {
    fn encoding(&self) -> GraphEncoding {
        GraphEncoding::Onnx
    }

    fn load(&mut self, builders: &[&[u8]], target: ExecutionTarget) -> Result<Graph, BackendError> {
        let [model] = builders else {
            return Err(BackendError::InvalidNumberOfBuilders(1, builders.len()));
        };
        if target != ExecutionTarget::Cpu {
            return Err(backend_error(format!(
                "execution target {target:?} is not available: weir runs inference on the cpu"
            )));
        }
        Ok(Graph::from(
            Box::new(TractGraph::load(model, self.guard.as_ref())?) as Box<dyn BackendGraph>,
        ))
    }

    fn as_dir_loadable(&mut self) -> Option<&mut dyn wasmtime_wasi_nn::backend::BackendFromDir> {
        None
    }
}

/// A loaded, optimised tract plan and the names of its inputs and outputs.
struct TractGraph(Arc<TractPlan>);

struct TractPlan {
    plan: Arc<tract_onnx::prelude::TypedSimplePlan>,
    inputs: Vec<String>,
    outputs: Vec<String>,
    abandoned: Option<Arc<AtomicBool>>,
}

impl TractGraph {
    fn load(mut model: &[u8], guard: Option<&Guard>) -> Result<Self, BackendError> {
        use tract_onnx::prelude::{Framework, InferenceModelExt, IntoRunnable};
        let parsed = tract_onnx::onnx()
            .model_for_read(&mut model)
            .map_err(backend_error)?;
        let names = |outlets: &[tract_onnx::prelude::OutletId]| -> Vec<String> {
            outlets
                .iter()
                .map(|outlet| {
                    parsed
                        .outlet_label(*outlet)
                        .unwrap_or_else(|| parsed.node(outlet.node).name.as_str())
                        .to_owned()
                })
                .collect()
        };
        let inputs = names(parsed.input_outlets().map_err(backend_error)?);
        let outputs = names(parsed.output_outlets().map_err(backend_error)?);
        let optimized = parsed.into_optimized().map_err(backend_error)?;
        if let Some(guard) = guard {
            check_tensor_bytes(&optimized, guard.max_tensor_bytes)?;
        }
        let plan = optimized.into_runnable().map_err(backend_error)?;
        Ok(Self(Arc::new(TractPlan {
            plan,
            inputs,
            outputs,
            abandoned: guard.map(|g| g.abandoned.clone()),
        })))
    }
}

/// Refuses a model whose intermediate tensors could take more than `limit` bytes together, or
/// whose tensor shapes are not all known at load (a symbolic dimension could be anything).
fn check_tensor_bytes(
    model: &tract_onnx::prelude::TypedModel,
    limit: u64,
) -> Result<(), BackendError> {
    let mut total: u64 = 0;
    for node in model.nodes() {
        for output in &node.outputs {
            let fact = &output.fact;
            if fact.konst.is_some() {
                continue; // a weight: counted in the model's bytes
            }
            let Some(shape) = fact.shape.as_concrete() else {
                return Err(backend_error(format!(
                    "the tensor of node {:?} has the shape {:?}, not known at load: weir runs models whose tensor shapes are all fixed",
                    node.name, fact.shape
                )));
            };
            let bytes = shape
                .iter()
                .try_fold(fact.datum_type.size_of() as u64, |n, d| {
                    n.checked_mul(*d as u64)
                })
                .unwrap_or(u64::MAX);
            total = total.saturating_add(bytes);
        }
    }
    if total > limit {
        return Err(backend_error(format!(
            "the model's tensors take up to {total} bytes; the instance's memory limit is {limit} bytes (quota `memory_per_instance`)"
        )));
    }
    Ok(())
}

impl BackendGraph for TractGraph {
    fn init_execution_context(&self) -> Result<ExecutionContext, BackendError> {
        Ok(ExecutionContext::from(Box::new(TractContext {
            plan: self.0.clone(),
        })
            as Box<dyn BackendExecutionContext>))
    }
}

struct TractContext {
    plan: Arc<TractPlan>,
}

impl BackendExecutionContext for TractContext {
    fn set_input(
        &mut self,
        _id: wasmtime_wasi_nn::backend::Id,
        _tensor: &Tensor,
    ) -> Result<(), BackendError> {
        Err(backend_error(
            "set-input is not part of wasi:nn@0.2.0-rc-2024-10-28: pass inputs to compute",
        ))
    }

    fn get_output(&mut self, _id: wasmtime_wasi_nn::backend::Id) -> Result<Tensor, BackendError> {
        Err(backend_error(
            "get-output is not part of wasi:nn@0.2.0-rc-2024-10-28: compute returns the outputs",
        ))
    }

    fn compute(
        &mut self,
        inputs: Option<Vec<NamedTensor>>,
    ) -> Result<Option<Vec<NamedTensor>>, BackendError> {
        let plan = &self.plan;
        let mut given = inputs.unwrap_or_default();
        let mut ordered = tract_onnx::prelude::TVec::new();
        for name in &plan.inputs {
            let position = given.iter().position(|t| &t.name == name).ok_or_else(|| {
                backend_error(format!(
                    "no input named {name:?}; the graph's inputs are {:?}",
                    plan.inputs
                ))
            })?;
            let named = given.swap_remove(position);
            ordered.push(to_tract(&named.tensor)?.into());
        }
        if let Some(extra) = given.first() {
            return Err(backend_error(format!(
                "the graph has no input named {:?}; its inputs are {:?}",
                extra.name, plan.inputs
            )));
        }
        let outputs = match &plan.abandoned {
            None => plan.plan.run(ordered),
            Some(abandoned) => {
                use tract_onnx::tract_core::plan::eval;
                let mut state = plan.plan.spawn().map_err(backend_error)?;
                state.run_plan_with_eval(ordered, |context, op_state, node, inputs| {
                    if abandoned.load(Ordering::Relaxed) {
                        return Err(tract_onnx::prelude::TractError::msg(
                            "abandoned: the call's deadline passed",
                        ));
                    }
                    eval(context, op_state, node, inputs)
                })
            }
        }
        .map_err(backend_error)?;
        outputs
            .iter()
            .zip(&plan.outputs)
            .map(|(value, name)| {
                Ok(NamedTensor {
                    name: name.clone(),
                    tensor: from_tract(value)?,
                })
            })
            .collect::<Result<Vec<_>, BackendError>>()
            .map(Some)
    }
}

/// A wasi-nn tensor as a tract tensor (little-endian bytes, row-major).
fn to_tract(tensor: &Tensor) -> Result<tract_onnx::prelude::Tensor, BackendError> {
    use tract_onnx::prelude::Tensor as T;
    let shape: Vec<usize> = tensor
        .dimensions
        .iter()
        .map(|d| usize::try_from(*d).unwrap_or(usize::MAX))
        .collect();
    let elements = shape
        .iter()
        .try_fold(1usize, |n, d| n.checked_mul(*d))
        .ok_or_else(|| backend_error("tensor dimensions overflow"))?;
    let data = &tensor.data;
    macro_rules! typed {
        ($ty:ty, $size:expr) => {{
            if elements.checked_mul($size) != Some(data.len()) {
                return Err(backend_error(format!(
                    "tensor of dimensions {:?} ({:?}) needs {} bytes, got {}",
                    tensor.dimensions,
                    tensor.ty,
                    elements.saturating_mul($size),
                    data.len()
                )));
            }
            let values: Vec<$ty> = data
                .chunks_exact($size)
                .map(|c| <$ty>::from_le_bytes(c.try_into().unwrap_or([0; $size])))
                .collect();
            T::from_shape(&shape, &values).map_err(backend_error)
        }};
    }
    match tensor.ty {
        TensorType::Fp32 => typed!(f32, 4),
        TensorType::Fp64 => typed!(f64, 8),
        TensorType::U8 => typed!(u8, 1),
        TensorType::I32 => typed!(i32, 4),
        TensorType::I64 => typed!(i64, 8),
        other => Err(BackendError::UnsupportedTensorType(format!("{other:?}"))),
    }
}

/// A tract output as a wasi-nn tensor.
fn from_tract(value: &tract_onnx::prelude::TValue) -> Result<Tensor, BackendError> {
    use tract_onnx::prelude::DatumType;
    let ty = match value.datum_type() {
        DatumType::F32 => TensorType::Fp32,
        DatumType::F64 => TensorType::Fp64,
        DatumType::U8 => TensorType::U8,
        DatumType::I32 => TensorType::I32,
        DatumType::I64 => TensorType::I64,
        DatumType::F16 => TensorType::Fp16,
        other => {
            return Err(BackendError::UnsupportedTensorType(format!("{other:?}")));
        }
    };
    let dimensions = value
        .shape()
        .iter()
        .map(|d| u32::try_from(*d).map_err(backend_error))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Tensor::new(dimensions, ty, value.as_bytes().to_vec()))
}

#[cfg(feature = "ort")]
mod onnxruntime {
    use super::{BackendError, BackendInner, ExecutionTarget, Graph, InferenceSetupError};

    /// Points `ort` at the library and loads it now. `ort` panics (it does not return an error)
    /// when the library is missing or older than its API level; that panic is caught here, at
    /// start-up, and becomes an error.
    pub(super) fn init(path: &std::path::Path) -> Result<(), InferenceSetupError> {
        if !path.is_file() {
            return Err(InferenceSetupError(format!(
                "the ONNX Runtime library {} does not exist (install the onnxruntime wheel and give its onnxruntime/capi/libonnxruntime.so.1.* file)",
                path.display()
            )));
        }
        let path = path.to_owned();
        let shown = path.display().to_string();
        let outcome = std::panic::catch_unwind(move || {
            ort::init_from(path.to_string_lossy().into_owned())
                .with_name("weir")
                .commit()
        });
        match outcome {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(InferenceSetupError(format!(
                "ONNX Runtime at {shown} did not start: {error}"
            ))),
            Err(panic) => {
                let reason = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_else(|| "it panicked".to_owned());
                Err(InferenceSetupError(format!(
                    "cannot load the ONNX Runtime library {shown}: {reason}"
                )))
            }
        }
    }

    pub(super) fn load(model: &[u8]) -> Result<Graph, BackendError> {
        wasmtime_wasi_nn::backend::onnx::OnnxBackend::default().load(&[model], ExecutionTarget::Cpu)
    }
}

#[cfg(not(feature = "ort"))]
mod onnxruntime {
    use super::{BackendError, Graph, InferenceSetupError};

    pub(super) fn init(path: &std::path::Path) -> Result<(), InferenceSetupError> {
        Err(InferenceSetupError(format!(
            "ONNX Runtime ({}) was asked for, but this weir was built without the `ort` feature",
            path.display()
        )))
    }

    pub(super) fn load(_model: &[u8]) -> Result<Graph, BackendError> {
        Err(super::backend_error(
            "this weir was built without ONNX Runtime",
        ))
    }
}
