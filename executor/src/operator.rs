//! One graph node's operator: a live instance of a compiled module, called under the tenant's
//! limits. Any trap, fuel exhaustion, deadline or memory-limit hit fails that call only: the
//! instance (whose store is poisoned) is dropped, and the next call instantiates a fresh one and
//! runs `init` again with the same configuration.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use wasmtime::{PoolConcurrencyLimitError, ResourceLimiter, Store, Trap, UpdateDeadline};
use weir_api::{DataItem, Hlc};
use weir_tenants::Quotas;

use crate::bindings::{ga, preview};
use crate::engine::OperatorEngine;
use crate::host::{HostState, NodeEnv, ga_data, preview_data};
use crate::module::{CompiledModule, Indices, OperatorKind};

/// What `init` receives: the node's parameters and the schemas attached to its input.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModuleConfiguration {
    /// Parameter key and value pairs.
    pub properties: Vec<(String, String)>,
    /// Schemas for the node's input.
    pub module_schemas: Vec<ModuleSchema>,
}

/// A schema handed to `init`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleSchema {
    /// Its name.
    pub name: String,
    /// Its media type, e.g. `application/schema+json`.
    pub content_type: String,
    /// Its text.
    pub content: String,
}

/// The bounds of every call into an operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallLimits {
    /// Fuel one call (and `init`) may use.
    pub fuel: u64,
    /// Wall-clock time one call may take, host calls included.
    pub timeout: Duration,
    /// Linear memory of the instance.
    pub memory_bytes: usize,
    /// Size of one output item.
    pub max_output_bytes: usize,
    /// Whether `wasi:nn` may load models.
    pub inference: bool,
    /// Size of one model `wasi:nn` may load.
    pub max_model_bytes: u64,
    /// `wasi:nn` graphs alive at once in the instance.
    pub max_graphs: u32,
}

impl CallLimits {
    /// The limits `quotas` set.
    pub fn from_quotas(quotas: &Quotas) -> Self {
        Self {
            fuel: quotas.fuel_per_message,
            timeout: quotas.call_timeout,
            memory_bytes: usize::try_from(quotas.memory_per_instance).unwrap_or(usize::MAX),
            max_output_bytes: usize::try_from(quotas.max_message_bytes).unwrap_or(usize::MAX),
            inference: quotas.inference,
            max_model_bytes: quotas.max_model_bytes,
            max_graphs: quotas.max_graphs_per_instance,
        }
    }
}

/// A guest returned something the host cannot take back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidOutput(pub(crate) String);

/// Why a call into an operator failed. Each variant has a stable [`reason`](Self::reason), the
/// code dead letters carry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OperatorError {
    /// The operator returned `err` for this item.
    #[error("operator returned an error: {message}")]
    Rejected {
        /// The operator's message.
        message: String,
    },
    /// The call used all its fuel.
    #[error("fuel exhausted: the call used its budget of {fuel} units")]
    FuelExhausted {
        /// The budget.
        fuel: u64,
    },
    /// The call ran past its wall-clock deadline.
    #[error("deadline exceeded: the call ran longer than {timeout:?}")]
    Deadline {
        /// The deadline.
        timeout: Duration,
    },
    /// The instance tried to grow its memory past the limit.
    #[error("memory limit of {limit} bytes reached")]
    MemoryLimit {
        /// The limit.
        limit: usize,
    },
    /// The module trapped (a panic, `unreachable`, an out-of-bounds access...).
    #[error("module trapped: {detail}")]
    Trap {
        /// The trap and its wasm backtrace.
        detail: String,
    },
    /// The output item is larger than the tenant's message size limit.
    #[error("output of {size} bytes exceeds the limit of {limit} bytes")]
    OutputTooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The output cannot be taken back (e.g. a buffer handle the host never gave out).
    #[error("invalid output: {0}")]
    InvalidOutput(String),
    /// `init` returned false: the node must not run.
    #[error("init returned false")]
    InitRejected,
    /// `init` failed.
    #[error("init failed: {0}")]
    InitFailed(Box<OperatorError>),
    /// The node does not run this kind of operator.
    #[error("the node runs a {actual} operator, not a {called}")]
    WrongKind {
        /// What the node runs.
        actual: OperatorKind,
        /// What was called.
        called: OperatorKind,
    },
    /// The module does not export the node's operator interface.
    #[error("the module does not export the {0} interface")]
    MissingExport(OperatorKind),
    /// Every instance slot of the executor is in use.
    #[error("no free operator instance slot on this executor")]
    Capacity,
}

impl OperatorError {
    /// The stable code of the failure, as dead letters and metrics carry it.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Rejected { .. } => "operator_error",
            Self::FuelExhausted { .. } => "fuel_exhausted",
            Self::Deadline { .. } => "deadline",
            Self::MemoryLimit { .. } => "memory_limit",
            Self::Trap { .. } => "trap",
            Self::OutputTooLarge { .. } => "output_too_large",
            Self::InvalidOutput(_) => "invalid_output",
            Self::InitRejected => "init_rejected",
            Self::InitFailed(_) => "init_failed",
            Self::WrongKind { .. } | Self::MissingExport(_) => "wrong_operator",
            Self::Capacity => "capacity",
        }
    }

    /// Whether the instance was lost and will be replaced before the next item.
    pub fn replaces_instance(&self) -> bool {
        matches!(
            self,
            Self::FuelExhausted { .. }
                | Self::Deadline { .. }
                | Self::MemoryLimit { .. }
                | Self::Trap { .. }
        )
    }
}

/// Counters of one node's operator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OperatorStats {
    /// Calls made (`init` excluded).
    pub calls: u64,
    /// Calls that failed.
    pub failures: u64,
    /// Failures since the last success.
    pub consecutive_failures: u64,
    /// Instances created (the first one included).
    pub instantiations: u64,
    /// Fuel used by all calls and `init`s.
    pub fuel_used: u64,
    /// Of which `init`s used.
    pub init_fuel: u64,
}

/// An operator export loaded from a live instance.
enum Loaded {
    GaMap(ga::exports::wasm_graph::processor::map::Guest),
    GaFilter(ga::exports::wasm_graph::processor::filter::Guest),
    GaBranch(ga::exports::wasm_graph::processor::branch::Guest),
    GaAccumulate(ga::exports::wasm_graph::processor::accumulate::Guest),
    GaDelay(ga::exports::wasm_graph::processor::delay::Guest),
    PreviewMap(preview::exports::tinykube_graph::processor::map::Guest),
    PreviewFilter(preview::exports::tinykube_graph::processor::filter::Guest),
    PreviewBranch(preview::exports::tinykube_graph::processor::branch::Guest),
    PreviewAccumulate(preview::exports::tinykube_graph::processor::accumulate::Guest),
    PreviewDelay(preview::exports::tinykube_graph::processor::delay::Guest),
}

struct Live {
    store: Store<HostState>,
    operator: Loaded,
}

/// What a guest call returned, before the host judges it.
enum Returned<T> {
    Value(T),
    GuestError(String),
    Invalid(InvalidOutput),
}

type CallOutcome<T> = Result<wasmtime::Result<Returned<T>>, Elapsed>;

/// The outer deadline passed.
struct Elapsed;

/// Runs `call` under the outer deadline of `timeout` from now. The deadline is fixed before the
/// first poll, as `tokio::time::timeout` fixes it; but the timer is only registered when the
/// call does not finish in that first poll (it waits on a host future or yielded at an epoch
/// tick), so a call that runs straight through costs no timer-wheel insert and removal.
async fn within<F: std::future::Future>(timeout: Duration, call: F) -> Result<F::Output, Elapsed> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut call = std::pin::pin!(call);
    let first = std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match call.as_mut().poll(cx) {
            std::task::Poll::Ready(output) => Some(output),
            std::task::Poll::Pending => None,
        })
    })
    .await;
    match first {
        Some(output) => Ok(output),
        None => tokio::time::timeout_at(deadline, call)
            .await
            .map_err(|_| Elapsed),
    }
}

/// Grace beyond the call timeout for the outer (tokio) deadline, which catches a call stuck in
/// a host future, where the epoch deadline cannot fire.
const HOST_GRACE: Duration = Duration::from_millis(200);

/// One graph node's operator.
pub struct OperatorInstance {
    engine: OperatorEngine,
    module: Arc<CompiledModule>,
    kind: OperatorKind,
    configuration: ModuleConfiguration,
    env: Arc<NodeEnv>,
    limits: CallLimits,
    live: Option<Live>,
    stats: OperatorStats,
    /// Nanoseconds inference slots ran for this node's instances (`wasi:nn` loads and
    /// computes, abandoned ones included) not yet charged as fuel.
    inference_nanos: Arc<AtomicU64>,
}

impl std::fmt::Debug for OperatorInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorInstance")
            .field("node", &self.env.node)
            .field("kind", &self.kind)
            .field("module", self.module.digest())
            .field("live", &self.live.is_some())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl OperatorInstance {
    /// A node running `module`'s `kind` operator; nothing is instantiated until
    /// [`start`](Self::start) or the first call.
    pub fn new(
        engine: OperatorEngine,
        module: Arc<CompiledModule>,
        kind: OperatorKind,
        configuration: ModuleConfiguration,
        env: Arc<NodeEnv>,
        limits: CallLimits,
    ) -> Result<Self, OperatorError> {
        if !module.operators().contains(&kind) {
            return Err(OperatorError::MissingExport(kind));
        }
        Ok(Self {
            engine,
            module,
            kind,
            configuration,
            env,
            limits,
            live: None,
            stats: OperatorStats::default(),
            inference_nanos: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Instantiates the module and runs `init`, so a misconfigured node fails before any item.
    pub async fn start(&mut self) -> Result<(), OperatorError> {
        self.live().await.map(|_| ())
    }

    /// Drops the live instance (an idle node costs nothing); the next call re-creates it.
    pub fn release(&mut self) {
        self.live = None;
    }

    /// Whether an instance is live (holds a pool slot and memory).
    pub fn is_live(&self) -> bool {
        self.live.is_some()
    }

    /// The node's counters.
    pub fn stats(&self) -> OperatorStats {
        self.stats
    }

    /// The operator kind the node runs.
    pub fn kind(&self) -> OperatorKind {
        self.kind
    }

    /// `map`: one item in, one item out.
    pub async fn map(&mut self, item: &DataItem) -> Result<DataItem, OperatorError> {
        self.expect_kind(OperatorKind::Map)?;
        // The outer deadline from the limits this call runs under (a quota change included).
        self.refresh_limits();
        let timeout = self.limits.timeout + HOST_GRACE;
        let live = self.live().await?;
        let outcome: CallOutcome<DataItem> = within(timeout, async {
            let Live { store, operator } = live;
            match operator {
                Loaded::GaMap(guest) => {
                    let input = ga_data::lower(store.data_mut(), item)?;
                    Ok(match guest.call_process(&mut *store, &input).await? {
                        Ok(output) => lift_with(ga_data::lift(store.data_mut(), output)),
                        Err(error) => Returned::GuestError(error.message),
                    })
                }
                Loaded::PreviewMap(guest) => {
                    let input = preview_data::lower(store.data_mut(), item)?;
                    let output = guest.call_process(&mut *store, &input).await?;
                    Ok(lift_with(preview_data::lift(store.data_mut(), output)))
                }
                _ => Err(wasmtime::format_err!("loaded operator is not a map")),
            }
        })
        .await;
        let output = self.finish(outcome)?;
        self.check_output_size(output)
    }

    /// `filter`: whether to keep the item.
    pub async fn filter(&mut self, item: &DataItem) -> Result<bool, OperatorError> {
        self.expect_kind(OperatorKind::Filter)?;
        // The outer deadline from the limits this call runs under (a quota change included).
        self.refresh_limits();
        let timeout = self.limits.timeout + HOST_GRACE;
        let live = self.live().await?;
        let outcome: CallOutcome<bool> = within(timeout, async {
            let Live { store, operator } = live;
            match operator {
                Loaded::GaFilter(guest) => {
                    let input = ga_data::lower(store.data_mut(), item)?;
                    Ok(match guest.call_process(&mut *store, &input).await? {
                        Ok(keep) => Returned::Value(keep),
                        Err(error) => Returned::GuestError(error.message),
                    })
                }
                Loaded::PreviewFilter(guest) => {
                    let input = preview_data::lower(store.data_mut(), item)?;
                    Ok(Returned::Value(
                        guest.call_process(&mut *store, &input).await?,
                    ))
                }
                _ => Err(wasmtime::format_err!("loaded operator is not a filter")),
            }
        })
        .await;
        self.finish(outcome)
    }

    /// `branch`: `false` for the first arm, `true` for the second. `time` is the dataflow time.
    pub async fn branch(&mut self, time: &Hlc, item: &DataItem) -> Result<bool, OperatorError> {
        self.expect_kind(OperatorKind::Branch)?;
        // The outer deadline from the limits this call runs under (a quota change included).
        self.refresh_limits();
        let timeout = self.limits.timeout + HOST_GRACE;
        let live = self.live().await?;
        let outcome: CallOutcome<bool> = within(timeout, async {
            let Live { store, operator } = live;
            match operator {
                Loaded::GaBranch(guest) => {
                    let input = ga_data::lower(store.data_mut(), item)?;
                    let time = ga_data::lower_hlc(time);
                    Ok(
                        match guest.call_process(&mut *store, &time, &input).await? {
                            Ok(arm) => Returned::Value(arm),
                            Err(error) => Returned::GuestError(error.message),
                        },
                    )
                }
                Loaded::PreviewBranch(guest) => {
                    let input = preview_data::lower(store.data_mut(), item)?;
                    let time = preview_data::lower_hlc(time);
                    Ok(Returned::Value(
                        guest.call_process(&mut *store, &time, &input).await?,
                    ))
                }
                _ => Err(wasmtime::format_err!("loaded operator is not a branch")),
            }
        })
        .await;
        self.finish(outcome)
    }

    /// `accumulate`: folds `items` into `staged` and returns the new staged value.
    pub async fn accumulate(
        &mut self,
        staged: &DataItem,
        items: &[DataItem],
    ) -> Result<DataItem, OperatorError> {
        self.expect_kind(OperatorKind::Accumulate)?;
        // The outer deadline from the limits this call runs under (a quota change included).
        self.refresh_limits();
        let timeout = self.limits.timeout + HOST_GRACE;
        let live = self.live().await?;
        let outcome: CallOutcome<DataItem> = within(timeout, async {
            let Live { store, operator } = live;
            match operator {
                Loaded::GaAccumulate(guest) => {
                    let staged = ga_data::lower(store.data_mut(), staged)?;
                    let items = items
                        .iter()
                        .map(|i| ga_data::lower(store.data_mut(), i))
                        .collect::<Result<Vec<_>, _>>()?;
                    Ok(
                        match guest.call_process(&mut *store, &staged, &items).await? {
                            Ok(output) => lift_with(ga_data::lift(store.data_mut(), output)),
                            Err(error) => Returned::GuestError(error.message),
                        },
                    )
                }
                Loaded::PreviewAccumulate(guest) => {
                    let staged = preview_data::lower(store.data_mut(), staged)?;
                    let items = items
                        .iter()
                        .map(|i| preview_data::lower(store.data_mut(), i))
                        .collect::<Result<Vec<_>, _>>()?;
                    let output = guest.call_process(&mut *store, &staged, &items).await?;
                    Ok(lift_with(preview_data::lift(store.data_mut(), output)))
                }
                _ => Err(wasmtime::format_err!(
                    "loaded operator is not an accumulate"
                )),
            }
        })
        .await;
        let output = self.finish(outcome)?;
        self.check_output_size(output)
    }

    /// `delay`: the later dataflow time at which `item` continues.
    pub async fn delay(&mut self, item: &DataItem, time: &Hlc) -> Result<Hlc, OperatorError> {
        self.expect_kind(OperatorKind::Delay)?;
        // The outer deadline from the limits this call runs under (a quota change included).
        self.refresh_limits();
        let timeout = self.limits.timeout + HOST_GRACE;
        let live = self.live().await?;
        let outcome: CallOutcome<Hlc> = within(timeout, async {
            let Live { store, operator } = live;
            match operator {
                Loaded::GaDelay(guest) => {
                    let input = ga_data::lower(store.data_mut(), item)?;
                    let time = ga_data::lower_hlc(time);
                    Ok(
                        match guest.call_process(&mut *store, &input, &time).await? {
                            Ok(later) => Returned::Value(ga_data::lift_hlc(later)),
                            Err(error) => Returned::GuestError(error.message),
                        },
                    )
                }
                Loaded::PreviewDelay(guest) => {
                    let input = preview_data::lower(store.data_mut(), item)?;
                    let time = preview_data::lower_hlc(time);
                    Ok(Returned::Value(preview_data::lift_hlc(
                        guest.call_process(&mut *store, &input, &time).await?,
                    )))
                }
                _ => Err(wasmtime::format_err!("loaded operator is not a delay")),
            }
        })
        .await;
        self.finish(outcome)
    }

    fn expect_kind(&self, called: OperatorKind) -> Result<(), OperatorError> {
        if self.kind == called {
            Ok(())
        } else {
            Err(OperatorError::WrongKind {
                actual: self.kind,
                called,
            })
        }
    }

    fn check_output_size(&mut self, output: DataItem) -> Result<DataItem, OperatorError> {
        let size = output.byte_len();
        if size > self.limits.max_output_bytes {
            self.count_failure();
            return Err(OperatorError::OutputTooLarge {
                size,
                limit: self.limits.max_output_bytes,
            });
        }
        Ok(output)
    }

    /// Takes the tenant's current quotas as this operator's call limits: a quota change
    /// applies from the next call on, to its deadline as to its fuel and memory.
    fn refresh_limits(&mut self) {
        if let Some(quotas) = &self.env.quotas {
            self.limits = CallLimits::from_quotas(&quotas.get());
        }
    }

    /// The live instance, created and `init`ed if there is none; arms its per-call limits.
    async fn live(&mut self) -> Result<&mut Live, OperatorError> {
        self.refresh_limits();
        let live = match self.live.take() {
            Some(live) => live,
            None => {
                let (live, init_fuel) = instantiate(
                    self.engine.clone(),
                    self.module.clone(),
                    self.kind,
                    self.configuration.clone(),
                    self.env.clone(),
                    self.limits,
                    self.inference_nanos.clone(),
                )
                .await;
                // `init` is the tenant's CPU too, whether it succeeded or not, inference
                // included.
                let init_fuel = init_fuel.saturating_add(self.take_inference_fuel());
                self.stats.fuel_used += init_fuel;
                self.stats.init_fuel += init_fuel;
                let live = live.map_err(|e| match e {
                    OperatorError::InitRejected | OperatorError::Capacity => e,
                    other => OperatorError::InitFailed(Box::new(other)),
                })?;
                self.stats.instantiations += 1;
                live
            }
        };
        let live = self.live.insert(live);
        arm(&mut live.store, &self.limits).map_err(|error| OperatorError::Trap {
            detail: format!("{error:#}"),
        })?;
        Ok(live)
    }

    /// The fuel for the time inference slots ran for this node since the last take
    /// ([`INFERENCE_FUEL_PER_MS`](crate::INFERENCE_FUEL_PER_MS)).
    fn take_inference_fuel(&self) -> u64 {
        let nanos = self.inference_nanos.swap(0, Ordering::Relaxed);
        nanos.saturating_mul(crate::INFERENCE_FUEL_PER_MS) / 1_000_000
    }

    /// Judges a finished call: counts it, and drops the instance after a trap or limit hit.
    fn finish<T>(&mut self, outcome: CallOutcome<T>) -> Result<T, OperatorError> {
        self.stats.calls += 1;
        if let Some(live) = &self.live {
            let left = live.store.get_fuel().unwrap_or(0);
            self.stats.fuel_used += self.limits.fuel.saturating_sub(left);
        }
        // What the call's inference (and any earlier abandoned one that ran on) took.
        self.stats.fuel_used += self.take_inference_fuel();
        let result = match outcome {
            Err(_elapsed) => Err(OperatorError::Deadline {
                timeout: self.limits.timeout,
            }),
            Ok(Err(error)) => {
                let state = self.live.as_ref().map(|l| l.store.data());
                Err(match state {
                    Some(state) => classify(&error, state, &self.limits),
                    None => OperatorError::Trap {
                        detail: format!("{error:#}"),
                    },
                })
            }
            Ok(Ok(Returned::Value(value))) => Ok(value),
            Ok(Ok(Returned::GuestError(message))) => Err(OperatorError::Rejected { message }),
            Ok(Ok(Returned::Invalid(InvalidOutput(reason)))) => {
                Err(OperatorError::InvalidOutput(reason))
            }
        };
        match &result {
            Ok(_) => self.stats.consecutive_failures = 0,
            Err(error) => {
                self.count_failure();
                if error.replaces_instance() {
                    // The store is poisoned after a trap; a cancelled call poisons it too.
                    self.live = None;
                    self.env.log(
                        crate::logs::LogLevel::Error,
                        "weir",
                        &format!("{error} (instance replaced)"),
                    );
                }
            }
        }
        result
    }

    fn count_failure(&mut self) {
        self.stats.failures += 1;
        self.stats.consecutive_failures += 1;
    }
}

/// A fresh store and instance of `module`, with `init` run, and the fuel that took (whatever
/// the outcome). Takes owned parts, not the instance, so the future is `Send` (a store is not
/// `Sync`).
async fn instantiate(
    engine: OperatorEngine,
    module: Arc<CompiledModule>,
    kind: OperatorKind,
    configuration: ModuleConfiguration,
    env: Arc<NodeEnv>,
    limits: CallLimits,
    inference_nanos: Arc<AtomicU64>,
) -> (Result<Live, OperatorError>, u64) {
    let mut store = Store::new(
        engine.engine(),
        HostState::new(env, limits.memory_bytes, engine.inference().clone()),
    );
    store.data_mut().nn.slot_nanos = inference_nanos;
    store.limiter(|state| state as &mut dyn ResourceLimiter);
    store.epoch_deadline_callback(|mut context| {
        if Instant::now() >= context.data().deadline {
            context.data_mut().deadline_hit = true;
            Ok(UpdateDeadline::Interrupt)
        } else {
            // Give the worker back to other tasks every tick.
            Ok(UpdateDeadline::Yield(1))
        }
    });
    if let Err(error) = arm(&mut store, &limits) {
        return (
            Err(OperatorError::Trap {
                detail: format!("{error:#}"),
            }),
            0,
        );
    }
    let outcome = tokio::time::timeout(limits.timeout + HOST_GRACE, async {
        let instance = module.pre.instantiate_async(&mut store).await?;
        // Loads the export, runs `init`, and names the loaded operator.
        macro_rules! load_and_init {
            ($indices:expr, $loaded:ident, $data:ident) => {{
                let guest = $indices.load(&mut store, &instance)?;
                let configuration = $data::lower_configuration(&configuration);
                let accepted = guest.call_init(&mut store, &configuration).await?;
                (Loaded::$loaded(guest), accepted)
            }};
        }
        let (operator, accepted) = match (&module.indices, kind) {
            (Indices::Ga { map: Some(ix), .. }, OperatorKind::Map) => {
                load_and_init!(ix, GaMap, ga_data)
            }
            (
                Indices::Ga {
                    filter: Some(ix), ..
                },
                OperatorKind::Filter,
            ) => load_and_init!(ix, GaFilter, ga_data),
            (
                Indices::Ga {
                    branch: Some(ix), ..
                },
                OperatorKind::Branch,
            ) => load_and_init!(ix, GaBranch, ga_data),
            (
                Indices::Ga {
                    accumulate: Some(ix),
                    ..
                },
                OperatorKind::Accumulate,
            ) => {
                load_and_init!(ix, GaAccumulate, ga_data)
            }
            (
                Indices::Ga {
                    delay: Some(ix), ..
                },
                OperatorKind::Delay,
            ) => load_and_init!(ix, GaDelay, ga_data),
            (Indices::Preview { map: Some(ix), .. }, OperatorKind::Map) => {
                load_and_init!(ix, PreviewMap, preview_data)
            }
            (
                Indices::Preview {
                    filter: Some(ix), ..
                },
                OperatorKind::Filter,
            ) => {
                load_and_init!(ix, PreviewFilter, preview_data)
            }
            (
                Indices::Preview {
                    branch: Some(ix), ..
                },
                OperatorKind::Branch,
            ) => {
                load_and_init!(ix, PreviewBranch, preview_data)
            }
            (
                Indices::Preview {
                    accumulate: Some(ix),
                    ..
                },
                OperatorKind::Accumulate,
            ) => {
                load_and_init!(ix, PreviewAccumulate, preview_data)
            }
            (
                Indices::Preview {
                    delay: Some(ix), ..
                },
                OperatorKind::Delay,
            ) => {
                load_and_init!(ix, PreviewDelay, preview_data)
            }
            (_, kind) => return Err(wasmtime::format_err!("module does not export {kind}")),
        };
        Ok::<_, wasmtime::Error>((operator, accepted))
    })
    .await;
    let fuel = limits.fuel.saturating_sub(store.get_fuel().unwrap_or(0));
    let live = match outcome {
        Err(_elapsed) => Err(OperatorError::Deadline {
            timeout: limits.timeout,
        }),
        Ok(Err(error)) => Err(classify(&error, store.data(), &limits)),
        Ok(Ok((_, false))) => Err(OperatorError::InitRejected),
        Ok(Ok((operator, true))) => Ok(Live { store, operator }),
    };
    (live, fuel)
}

fn lift_with(lifted: Result<DataItem, InvalidOutput>) -> Returned<DataItem> {
    match lifted {
        Ok(item) => Returned::Value(item),
        Err(invalid) => Returned::Invalid(invalid),
    }
}

/// Refills fuel and restarts the deadline before a call.
fn arm(store: &mut Store<HostState>, limits: &CallLimits) -> wasmtime::Result<()> {
    store.set_fuel(limits.fuel)?;
    store.set_epoch_deadline(1);
    let state = store.data_mut();
    state.memory_limit = limits.memory_bytes;
    state.deadline = Instant::now() + limits.timeout;
    state.deadline_hit = false;
    state.memory_limit_hit = false;
    state.nn.allowed = limits.inference;
    state.nn.max_model_bytes = limits.max_model_bytes;
    state.nn.max_graphs = limits.max_graphs;
    Ok(())
}

/// Names what stopped a call, from wasmtime's error and the flags the host set.
fn classify(error: &wasmtime::Error, state: &HostState, limits: &CallLimits) -> OperatorError {
    if state.memory_limit_hit {
        return OperatorError::MemoryLimit {
            limit: limits.memory_bytes,
        };
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => return OperatorError::FuelExhausted { fuel: limits.fuel },
        Some(Trap::Interrupt) => {
            return OperatorError::Deadline {
                timeout: limits.timeout,
            };
        }
        _ => {}
    }
    if state.deadline_hit {
        return OperatorError::Deadline {
            timeout: limits.timeout,
        };
    }
    if error.downcast_ref::<PoolConcurrencyLimitError>().is_some() {
        return OperatorError::Capacity;
    }
    // The alternate `Display` is the trap and its context chain (the guest's wasm backtrace
    // among it), never the host's Rust backtrace that `Debug` adds when `RUST_BACKTRACE` is set.
    let detail = crate::host::truncate(&format!("{error:#}"), 8 * 1024);
    OperatorError::Trap { detail }
}
