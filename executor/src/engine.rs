//! The wasmtime engine every operator runs on: one per executor, with fuel, epoch
//! interruption, the pooling allocator, and a linker per contract that provides WASI 0.2 (denying
//! everything that would leave the sandbox) and every `wasm-graph:processor` host interface.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};
use weir_api::ModuleDigest;

use crate::artifacts::{ArtifactStore, Miss};
use crate::bindings;
use crate::host::HostState;
use crate::inference::{Inference, InferenceConfig};
use crate::module::{CompiledModule, ModuleError, check_header, inspect, sha256_digest};

/// How the engine is built.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// How often the epoch advances: the granularity of deadlines and of yielding to other tasks.
    pub epoch_tick: Duration,
    /// Pre-reserved instance slots (`None`: allocate on demand).
    pub pooling: Option<PoolingConfig>,
    /// Largest linear memory any instance may have; tenants' quotas cap it lower.
    pub max_memory_bytes: u64,
    /// Bytes of compiled code the compile cache keeps; the least recently used modules go
    /// first (deployments running a module keep their own reference).
    pub compile_cache_bytes: usize,
    /// Compiles running at once; more wait their turn (each compile uses a whole core).
    pub max_concurrent_compiles: usize,
    /// Where compiled modules are kept across restarts (`None`: in memory only, every start
    /// compiles again).
    pub artifacts: Option<ArtifactConfig>,
    /// How modules that import `wasi:nn` run inference.
    pub inference: InferenceConfig,
}

/// The on-disk compile cache: wasmtime's serialized artifacts by module digest and engine
/// configuration, so that a restart loads modules instead of compiling them.
#[derive(Debug, Clone)]
pub struct ArtifactConfig {
    /// The directory (created owner-only; weir alone writes it). Files of another engine
    /// configuration found there are deleted.
    pub dir: PathBuf,
    /// Most bytes the files may take together; the least recently used go first.
    pub max_bytes: u64,
}

/// How the engine came by the modules it holds, since it was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompileCounts {
    /// Modules compiled from their bytes (cranelift).
    pub compiled: u64,
    /// Modules loaded from an artifact file instead.
    pub loaded: u64,
    /// Artifact files that failed a check on load, were deleted and compiled again.
    pub discarded: u64,
}

/// Sizes of the pooling allocator.
#[derive(Debug, Clone, Copy)]
pub struct PoolingConfig {
    /// Component instances alive at once across all tenants.
    pub instance_slots: u32,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            // A busy guest gives its worker back every millisecond: a neighbour on the same
            // worker waits at most that long (10 ms let a spinning tenant raise another's p99
            // from 4 to 11 ms; see `weir-bench --bin noisy-neighbour`).
            epoch_tick: Duration::from_millis(1),
            pooling: Some(PoolingConfig {
                instance_slots: 256,
            }),
            max_memory_bytes: 256 << 20,
            compile_cache_bytes: 512 << 20,
            max_concurrent_compiles: std::thread::available_parallelism()
                .map_or(1, std::num::NonZeroUsize::get),
            artifacts: None,
            inference: InferenceConfig::default(),
        }
    }
}

/// Why the engine could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the wasm engine: {detail}")]
pub struct EngineError {
    detail: String,
}

impl EngineError {
    fn new(error: impl std::fmt::Display) -> Self {
        Self {
            detail: error.to_string(),
        }
    }
}

/// The executor's wasm engine: compiles modules once per digest and instantiates operators.
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct OperatorEngine {
    inner: Arc<EngineInner>,
}

struct EngineInner {
    engine: Engine,
    ga_linker: Linker<HostState>,
    preview_linker: Linker<HostState>,
    /// The same with `wasi:nn`, for modules that import it.
    ga_nn_linker: Linker<HostState>,
    preview_nn_linker: Linker<HostState>,
    inference: Arc<Inference>,
    modules: Mutex<CompileCache>,
    artifacts: Option<Mutex<ArtifactStore>>,
    counts: Counts,
    compiles: CompileSlots,
    _ticker: EpochTicker,
}

#[derive(Default)]
struct Counts {
    compiled: AtomicU64,
    loaded: AtomicU64,
    discarded: AtomicU64,
}

/// Compiled modules by digest, bounded by the bytes of their code (least recently used first
/// out).
struct CompileCache {
    capacity: usize,
    bytes: usize,
    clock: u64,
    entries: HashMap<ModuleDigest, CacheEntry>,
}

struct CacheEntry {
    module: Arc<CompiledModule>,
    bytes: usize,
    used: u64,
}

impl CompileCache {
    fn get(&mut self, digest: &ModuleDigest) -> Option<Arc<CompiledModule>> {
        self.clock += 1;
        let entry = self.entries.get_mut(digest)?;
        entry.used = self.clock;
        Some(entry.module.clone())
    }

    fn insert(&mut self, module: Arc<CompiledModule>, bytes: usize) -> Arc<CompiledModule> {
        if let Some(existing) = self.get(module.digest()) {
            return existing;
        }
        self.clock += 1;
        self.bytes += bytes;
        self.entries.insert(
            module.digest().clone(),
            CacheEntry {
                module: module.clone(),
                bytes,
                used: self.clock,
            },
        );
        while self.bytes > self.capacity && self.entries.len() > 1 {
            let oldest = self
                .entries
                .iter()
                .filter(|(digest, _)| *digest != module.digest())
                .min_by_key(|(_, entry)| entry.used)
                .map(|(digest, _)| digest.clone());
            let Some(oldest) = oldest else { break };
            self.remove(&oldest);
        }
        module
    }

    fn remove(&mut self, digest: &ModuleDigest) {
        if let Some(entry) = self.entries.remove(digest) {
            self.bytes -= entry.bytes;
        }
    }
}

/// A counting semaphore for compiles, for the blocking threads that run them.
struct CompileSlots {
    free: Mutex<usize>,
    freed: std::sync::Condvar,
}

impl CompileSlots {
    fn acquire(&self) -> CompileSlot<'_> {
        let mut free = self
            .free
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while *free == 0 {
            free = self
                .freed
                .wait(free)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        *free -= 1;
        CompileSlot(self)
    }
}

struct CompileSlot<'a>(&'a CompileSlots);

impl Drop for CompileSlot<'_> {
    fn drop(&mut self) {
        *self
            .0
            .free
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) += 1;
        self.0.freed.notify_one();
    }
}

impl std::fmt::Debug for EngineInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineInner").finish_non_exhaustive()
    }
}

impl OperatorEngine {
    /// Builds the engine and starts its epoch ticker thread.
    pub fn new(config: &EngineConfig) -> Result<Self, EngineError> {
        let mut wasm = Config::new();
        wasm.wasm_component_model(true)
            .consume_fuel(true)
            .epoch_interruption(true)
            .wasm_backtrace_max_frames(std::num::NonZeroUsize::new(32));
        if let Some(pooling) = config.pooling {
            let slots = pooling.instance_slots;
            let mut pool = PoolingAllocationConfig::default();
            // Sized for componentize-py modules (13 core instances, 5,508 table elements),
            // the largest real modules measured.
            pool.total_component_instances(slots)
                .total_core_instances(slots * 16)
                .total_memories(slots * 2)
                .total_tables(slots * 8)
                .total_stacks(slots)
                .max_core_instances_per_component(32)
                .max_memories_per_component(2)
                .max_tables_per_component(8)
                .table_elements(32_768)
                .max_core_instance_size(1 << 20)
                .max_component_instance_size(1 << 20)
                .max_memory_size(
                    usize::try_from(config.max_memory_bytes).map_err(EngineError::new)?,
                );
            wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        }
        let engine = Engine::new(&wasm).map_err(EngineError::new)?;

        let mut ga_linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut ga_linker).map_err(EngineError::new)?;
        bindings::ga::OperatorHost::add_to_linker::<HostState, HasSelf<HostState>>(
            &mut ga_linker,
            |s| s,
        )
        .map_err(EngineError::new)?;
        let mut preview_linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut preview_linker).map_err(EngineError::new)?;
        bindings::preview::OperatorHost::add_to_linker::<HostState, HasSelf<HostState>>(
            &mut preview_linker,
            |s| s,
        )
        .map_err(EngineError::new)?;

        let mut ga_nn_linker = ga_linker.clone();
        let mut preview_nn_linker = preview_linker.clone();
        for linker in [&mut ga_nn_linker, &mut preview_nn_linker] {
            bindings::nn::Ml::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)
                .map_err(EngineError::new)?;
        }
        let inference = Arc::new(Inference::new(&config.inference).map_err(EngineError::new)?);

        let artifacts = config
            .artifacts
            .as_ref()
            .map(|artifacts| {
                ArtifactStore::open(&artifacts.dir, artifacts.max_bytes, &engine).map_err(|e| {
                    EngineError::new(format!(
                        "cannot open the compile cache {}: {e}",
                        artifacts.dir.display()
                    ))
                })
            })
            .transpose()?
            .map(Mutex::new);
        let ticker = EpochTicker::start(engine.clone(), config.epoch_tick)?;
        Ok(Self {
            inner: Arc::new(EngineInner {
                engine,
                ga_linker,
                preview_linker,
                ga_nn_linker,
                preview_nn_linker,
                inference,
                modules: Mutex::new(CompileCache {
                    capacity: config.compile_cache_bytes,
                    bytes: 0,
                    clock: 0,
                    entries: HashMap::new(),
                }),
                artifacts,
                counts: Counts::default(),
                compiles: CompileSlots {
                    free: Mutex::new(config.max_concurrent_compiles.max(1)),
                    freed: std::sync::Condvar::new(),
                },
                _ticker: ticker,
            }),
        })
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    pub(crate) fn inference(&self) -> &Arc<Inference> {
        &self.inner.inference
    }

    /// Loads and computes of `wasi:nn` whose callers wait now (for their tenant's turn, a slot
    /// or the work), across all tenants.
    pub fn inference_asked(&self) -> usize {
        self.inner.inference.asked()
    }

    /// Inference slots running a load or compute now (at most
    /// [`InferenceConfig::max_concurrent`]).
    pub fn inference_running(&self) -> usize {
        self.inner.inference.running()
    }

    /// The backend that runs the `onnx` graphs of modules importing `wasi:nn`: `tract` or
    /// `onnxruntime`.
    pub fn inference_backend(&self) -> &'static str {
        self.inner.inference.backend_name()
    }

    /// Validates and compiles `bytes`, or returns the module already compiled from the same
    /// bytes. Compiling takes milliseconds (Rust modules) to seconds (Python modules) and blocks
    /// while `max_concurrent_compiles` others run: call it off the async workers, e.g. in
    /// `spawn_blocking`.
    pub fn load(&self, bytes: &[u8]) -> Result<Arc<CompiledModule>, ModuleError> {
        let digest = sha256_digest(bytes);
        if let Some(module) = self.cached(&digest) {
            return Ok(module);
        }
        let _slot = self.inner.compiles.acquire();
        // Compiled by another caller while this one waited for its turn?
        if let Some(module) = self.cached(&digest) {
            return Ok(module);
        }
        let (compiled, code_bytes) = self.compile(digest, bytes)?;
        Ok(self.cache().insert(Arc::new(compiled), code_bytes))
    }

    /// The module compiled from bytes with this digest, if the cache still has it.
    pub fn cached(&self, digest: &ModuleDigest) -> Option<Arc<CompiledModule>> {
        self.cache().get(digest)
    }

    /// Drops the compiled module of `digest` from the cache and its artifact file from the
    /// disk (its last reference was deleted); deployments running it keep their own. Does file
    /// I/O: call it off the async workers.
    pub fn forget(&self, digest: &ModuleDigest) {
        self.cache().remove(digest);
        if let Some(artifacts) = &self.inner.artifacts {
            lock(artifacts).remove(digest);
        }
    }

    /// How many modules this engine compiled, loaded from artifact files, and discarded
    /// artifacts of, since it was built.
    pub fn compile_counts(&self) -> CompileCounts {
        let counts = &self.inner.counts;
        CompileCounts {
            compiled: counts.compiled.load(Ordering::Relaxed),
            loaded: counts.loaded.load(Ordering::Relaxed),
            discarded: counts.discarded.load(Ordering::Relaxed),
        }
    }

    /// Artifact files on disk and their total bytes (`(0, 0)` without an artifact directory).
    pub fn artifact_usage(&self) -> (usize, u64) {
        self.inner.artifacts.as_ref().map_or((0, 0), |artifacts| {
            let artifacts = lock(artifacts);
            (artifacts.len(), artifacts.bytes())
        })
    }

    /// Bytes of compiled code the cache holds.
    pub fn cached_bytes(&self) -> usize {
        self.cache().bytes
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, CompileCache> {
        self.inner
            .modules
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The compiled module and the bytes of its code.
    fn compile(
        &self,
        digest: ModuleDigest,
        bytes: &[u8],
    ) -> Result<(CompiledModule, usize), ModuleError> {
        check_header(bytes)?;
        let component = self.component(&digest, bytes)?;
        let range = component.image_range();
        let code_bytes = (range.end as usize).saturating_sub(range.start as usize);
        let shape = inspect(&self.inner.engine, &component)?;
        let inner = &self.inner;
        let linker = match (shape.contract, shape.inference) {
            (crate::Contract::Ga, false) => &inner.ga_linker,
            (crate::Contract::Preview, false) => &inner.preview_linker,
            (crate::Contract::Ga, true) => &inner.ga_nn_linker,
            (crate::Contract::Preview, true) => &inner.preview_nn_linker,
        };
        let pre = linker
            .instantiate_pre(&component)
            .map_err(|error| ModuleError::Unlinkable {
                detail: format!("{error:#}"),
            })?;
        CompiledModule::new(digest, shape, pre).map(|module| (module, code_bytes))
    }
}

impl OperatorEngine {
    /// The component of `bytes`: from its artifact file when there is a good one, else
    /// compiled (and its artifact written).
    fn component(&self, digest: &ModuleDigest, bytes: &[u8]) -> Result<Component, ModuleError> {
        let counts = &self.inner.counts;
        if let Some(artifacts) = &self.inner.artifacts {
            match lock(artifacts).load(&self.inner.engine, digest) {
                Ok(component) => {
                    counts.loaded.fetch_add(1, Ordering::Relaxed);
                    return Ok(component);
                }
                Err(Miss::Discarded) => {
                    counts.discarded.fetch_add(1, Ordering::Relaxed);
                }
                Err(Miss::Absent) => {}
            }
        }
        let component =
            Component::new(&self.inner.engine, bytes).map_err(|error| ModuleError::Invalid {
                detail: format!("{error:#}"),
            })?;
        counts.compiled.fetch_add(1, Ordering::Relaxed);
        if let Some(artifacts) = &self.inner.artifacts {
            lock(artifacts).store(digest, &component);
        }
        Ok(component)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Advances the engine's epoch on its own OS thread: a ticker on the async runtime would starve
/// behind the very guest it has to interrupt.
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: Engine, tick: Duration) -> Result<Self, EngineError> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("weir-epoch".to_owned())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    engine.increment_epoch();
                }
            })
            .map_err(EngineError::new)?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _joined = thread.join();
        }
    }
}
