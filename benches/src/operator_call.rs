//! One operator call through weir's host against the raw wasmtime component call of the very
//! same module with the same input, same process, same run. Module: `temperature` (map, filter,
//! branch, accumulate of 16 items); input: the message `{"temperature":{"value":50,"unit":"C"}}`
//! on topic `probe/1`.
//!
//! - raw, no walls: `bindgen!` bindings, synchronous calls, one store, no fuel, no epoch;
//! - raw, fuel+epoch+memory: the same with fuel refilled and an epoch deadline set before each
//!   call and a memory limiter (weir's walls, nothing else of weir);
//! - weir: `OperatorInstance` (the host path a dataflow node uses), default quotas.
//!
//! Run in release: `cargo run --release -p weir-bench --bin operator-call [-- ITERATIONS]`.

use std::time::Duration;

use weir_bench::raw::{Input, RawHost, Walls};
use weir_bench::{WeirOperator, payload, report};
use weir_executor::OperatorKind;

const ACCUMULATE_ITEMS: usize = 16;
const ROUNDS: usize = 3;

fn main() -> anyhow::Result<()> {
    let mut iterations: u32 = 100_000;
    // `--only weir` or `--only raw`: one side alone, for a profiler.
    let mut only = None;
    let mut kinds = vec![
        OperatorKind::Map,
        OperatorKind::Filter,
        OperatorKind::Branch,
        OperatorKind::Accumulate,
    ];
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--only" => only = args.next(),
            "--kind" => {
                let name = args.next().unwrap_or_default();
                kinds = vec![
                    OperatorKind::from_name(&name)
                        .ok_or_else(|| anyhow::anyhow!("no operator kind {name}"))?,
                ];
            }
            _ => iterations = arg.parse()?,
        }
    }
    let raw_side = only.as_deref() != Some("weir");
    let weir_side = only.as_deref() != Some("raw");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    println!(
        "operator-call: module temperature, {iterations} calls per case (accumulate: {} calls of {ACCUMULATE_ITEMS} items), best of {ROUNDS} rounds of thread CPU time, {} cores",
        iterations / 10,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("{:<48} {:>12} {:>10}", "case", "calls/s", "µs/call");
    let bytes = weir_guests::TEMPERATURE.bytes();
    let input = Input {
        secs: 1_700_000_000,
        node_id: bytes::Bytes::from_static(b"bench"),
        topic: bytes::Bytes::from_static(b"probe/1"),
        payload: payload(),
    };
    let err = |e: wasmtime::Error| anyhow::anyhow!("raw call: {e:#}");
    let mut bare = RawHost::new(&bytes, Walls::None).map_err(err)?;
    let mut walled = RawHost::new(&bytes, Walls::FuelEpochMemory).map_err(err)?;
    let mut worst: f64 = f64::INFINITY;
    for kind in kinds {
        let n = if kind == OperatorKind::Accumulate {
            iterations / 10
        } else {
            iterations
        };
        let mut weir = runtime.block_on(WeirOperator::start(&bytes, kind))?;
        let (mut raw_bare, mut raw_walled, mut took) =
            (Duration::MAX, Duration::MAX, Duration::MAX);
        // Interleaved rounds, best of each: a shared machine slows some rounds down.
        for _ in 0..ROUNDS {
            if raw_side {
                raw_bare = raw_bare.min(raw_case(&mut bare, kind, &input, n).map_err(err)?);
                raw_walled = raw_walled.min(raw_case(&mut walled, kind, &input, n).map_err(err)?);
            }
            if weir_side {
                took = took.min(runtime.block_on(weir.time(kind, n, ACCUMULATE_ITEMS))?);
            }
        }
        if raw_side {
            report(
                &format!("{kind}: raw component call, no walls"),
                n,
                raw_bare,
            );
            report(
                &format!("{kind}: raw component call, fuel+epoch+memory"),
                n,
                raw_walled,
            );
        }
        if weir_side {
            report(&format!("{kind}: weir host call"), n, took);
            weir_bench::result(
                &format!("op_{kind}_weir_us"),
                took.as_secs_f64() * 1e6 / f64::from(n),
            );
        }
        if raw_side {
            weir_bench::result(
                &format!("op_{kind}_raw_bare_us"),
                raw_bare.as_secs_f64() * 1e6 / f64::from(n),
            );
            weir_bench::result(
                &format!("op_{kind}_raw_walled_us"),
                raw_walled.as_secs_f64() * 1e6 / f64::from(n),
            );
        }
        if raw_side && weir_side {
            let ratio = raw_walled.as_secs_f64() / took.as_secs_f64();
            worst = worst.min(ratio);
            weir_bench::result(&format!("op_{kind}_ratio"), ratio);
            println!(
                "{:<48} {:>12.2}   (target >= 0.70; vs no walls {:.2})",
                format!("{kind}: weir rate / raw rate (same walls)"),
                ratio,
                raw_bare.as_secs_f64() / took.as_secs_f64(),
            );
        }
    }
    println!("operator-call: worst weir/raw ratio {worst:.2}");
    Ok(())
}

fn raw_case(
    host: &mut RawHost,
    kind: OperatorKind,
    input: &Input,
    iterations: u32,
) -> wasmtime::Result<Duration> {
    match kind {
        OperatorKind::Map => weir_bench::raw::time(iterations, || host.map(input)),
        OperatorKind::Filter => weir_bench::raw::time(iterations, || host.filter(input)),
        OperatorKind::Branch => weir_bench::raw::time(iterations, || host.branch(input)),
        OperatorKind::Accumulate => {
            weir_bench::raw::time(iterations, || host.accumulate(input, ACCUMULATE_ITEMS))
        }
        OperatorKind::Delay => Err(wasmtime::format_err!("temperature has no delay")),
    }
}
