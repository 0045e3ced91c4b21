//! Shared pieces of weir's benchmark binaries.

use std::time::{Duration, Instant};

/// A core module doing the same work as the trivial `map`: copy the input to an output area.
const RAW_COPY: &str = r#"
(module
  (memory (export "memory") 2)
  (func (export "process") (param $ptr i32) (param $len i32) (result i32)
    (memory.copy (i32.const 65536) (local.get $ptr) (local.get $len))
    (i32.const 65536)))
"#;

/// The ceiling: `iterations` raw wasmtime core-module calls, each copying `size` bytes host →
/// guest, guest → guest and guest → host, on an engine with fuel and epochs on (as weir's).
pub fn raw_core_call(iterations: u32, size: usize) -> wasmtime::Result<Duration> {
    let mut config = wasmtime::Config::new();
    config.consume_fuel(true).epoch_interruption(true);
    let engine = wasmtime::Engine::new(&config)?;
    let module = wasmtime::Module::new(&engine, wat::parse_str(RAW_COPY)?)?;
    let mut store = wasmtime::Store::new(&engine, ());
    store.set_fuel(u64::MAX)?;
    store.set_epoch_deadline(u64::MAX);
    let instance = wasmtime::Instance::new(&mut store, &module, &[])?;
    let memory = instance
        .get_memory(&mut store, "memory")
        .ok_or_else(|| wasmtime::format_err!("no memory export"))?;
    let process = instance.get_typed_func::<(i32, i32), i32>(&mut store, "process")?;
    let input = vec![b'x'; size];
    let len = i32::try_from(size)?;
    let call = |store: &mut wasmtime::Store<()>| -> wasmtime::Result<Vec<u8>> {
        memory.write(&mut *store, 0, &input)?;
        let at = process.call(&mut *store, (0, len))?;
        let mut out = vec![0; size];
        memory.read(&*store, usize::try_from(at)?, &mut out)?;
        Ok(out)
    };
    for _ in 0..1000 {
        call(&mut store)?;
    }
    let started = Instant::now();
    for _ in 0..iterations {
        std::hint::black_box(call(&mut store)?);
    }
    Ok(started.elapsed())
}
