//! Placement (issue 13): the scheduler's placer (`weir_scheduler::SpreadPacker`) placing
//! 10,000 deployments on a pool of 1,000 executors, one after another as the scheduler does
//! (place, then record the placement in the pool), and then placing again the deployments of
//! 10 executors taken out of the pool (failover).
//!
//! The pool: executors of 2, 4, 8 or 16 workers (in turn), each offering 1e9 fuel/s, 2 GiB of
//! memory and 64 instance slots per worker, labelled `zone=z0`..`z3` and every tenth `gpu`.
//! The deployments: 500 tenants with 20 each (tenant quotas: 10e9 fuel/s over 20 deployments,
//! 64 MiB per instance), graphs of 1 to 4 wasm nodes, one in ten asking for a zone and one in
//! fifty for `gpu`; their declared costs come from `Resources::for_deployment`. Sizes and costs
//! follow a fixed pseudo-random sequence, so every run places the same demands.
//!
//! Prints `RESULT key=value`: placements per second (wall clock, place + record), the p50 and
//! p99 of one placement, how many were placed and refused, the most deployments of one tenant
//! on one executor (spreading), the pool's fuel use, and re-placements per second.
//!
//! ```sh
//! cargo run --release -p weir-bench --bin placement -- [executors] [deployments]
//! ```

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use weir_api::TenantId;
use weir_api::tenancy::Quotas;
use weir_bench::{float, percentile, result};
use weir_scheduler::{
    Demand, DeploymentKey, ExecutorId, ExecutorInfo, LabelRequirement, Placer, Pool, Resources,
    SpreadPacker,
};

const GIB: u64 = 1 << 30;
const TENANTS: usize = 500;
const LOST_EXECUTORS: usize = 10;

/// A fixed pseudo-random sequence (64-bit LCG, Knuth's MMIX constants), so every run places
/// the same demands.
struct Sequence(u64);

impl Sequence {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % below.max(1)
    }
}

struct Wanted {
    key: DeploymentKey,
    cost: Resources,
    labels: Vec<LabelRequirement>,
}

fn pool(executors: usize) -> anyhow::Result<Pool> {
    let mut pool = Pool::new();
    for i in 0..executors {
        // 2, 4, 8, 16 workers in turn.
        let workers: u32 = 2 << (i % 4);
        let mut labels = BTreeMap::from([("zone".to_owned(), format!("z{}", (i / 4) % 4))]);
        if i % 10 == 0 {
            labels.insert("gpu".to_owned(), String::new());
        }
        pool.add_executor(ExecutorInfo {
            id: ExecutorId::new(format!("executor-{i}"))?,
            capacity: Resources {
                fuel_per_second: u64::from(workers) * 1_000_000_000,
                memory_bytes: u64::from(workers) * 2 * GIB,
                instances: workers * 64,
            },
            labels,
        })?;
    }
    Ok(pool)
}

fn demands(deployments: usize) -> anyhow::Result<Vec<Wanted>> {
    let quotas = Quotas {
        fuel_per_second: 10_000_000_000,
        max_deployments: 20,
        memory_per_instance: 64 << 20,
        ..Quotas::default()
    };
    let tenants: Vec<TenantId> = (0..TENANTS)
        .map(|i| TenantId::new(format!("tenant-{i}")))
        .collect::<Result<_, _>>()?;
    let mut sequence = Sequence(42);
    let mut wanted = Vec::with_capacity(deployments);
    for i in 0..deployments {
        let tenant = tenants.get(i % TENANTS).context("tenant index")?.clone();
        let nodes = u32::try_from(1 + sequence.next(4))?;
        let mut labels = Vec::new();
        if sequence.next(10) == 0 {
            labels.push(LabelRequirement::parse(&format!(
                "zone=z{}",
                sequence.next(4)
            ))?);
        }
        if sequence.next(50) == 0 {
            labels.push(LabelRequirement::parse("gpu")?);
        }
        wanted.push(Wanted {
            key: DeploymentKey {
                tenant,
                id: format!("deployment-{i}"),
            },
            cost: Resources::for_deployment(nodes, &quotas),
            labels,
        });
    }
    Ok(wanted)
}

/// Places `wanted` one after another; the time of each placement (place + record), and how
/// many were refused.
fn place_all(pool: &mut Pool, wanted: &[&Wanted]) -> anyhow::Result<(Vec<u64>, usize)> {
    let mut took = Vec::with_capacity(wanted.len());
    let mut refused = 0;
    for want in wanted {
        let started = Instant::now();
        let chosen = SpreadPacker.place(
            pool,
            &Demand {
                tenant: &want.key.tenant,
                cost: want.cost,
                labels: &want.labels,
                group: None,
            },
        );
        match chosen {
            Ok(executor) => pool.assign(want.key.clone(), &executor, want.cost)?,
            Err(_) => refused += 1,
        }
        took.push(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX));
    }
    Ok((took, refused))
}

fn per_second(count: usize, took: Duration) -> f64 {
    float(count as u64) / took.as_secs_f64().max(1e-9)
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let executors: usize = args.next().map_or(Ok(1000), |a| a.parse())?;
    let deployments: usize = args.next().map_or(Ok(10_000), |a| a.parse())?;
    let mut pool = pool(executors)?;
    let wanted = demands(deployments)?;
    let all: Vec<&Wanted> = wanted.iter().collect();

    let started = Instant::now();
    let (mut took, refused) = place_all(&mut pool, &all)?;
    let elapsed = started.elapsed();
    took.sort_unstable();
    println!(
        "placed {} of {deployments} deployments on {executors} executors in {:.1} ms ({refused} refused)",
        pool.placed(),
        elapsed.as_secs_f64() * 1000.0
    );
    result("placement_per_s", per_second(deployments, elapsed));
    result("placement_p50_us", float(percentile(&took, 0.5)) / 1000.0);
    result("placement_p99_us", float(percentile(&took, 0.99)) / 1000.0);
    result("placement_placed", float(pool.placed() as u64));
    result("placement_refused", float(refused as u64));

    // Spreading: the most deployments of one tenant on one executor; the pool's fuel use.
    let mut most = 0;
    let mut fuel_used = 0u64;
    let mut fuel_offered = 0u64;
    for i in 0..executors {
        let id = ExecutorId::new(format!("executor-{i}"))?;
        let placed = pool.placed_on(&id);
        let mut per_tenant: BTreeMap<&TenantId, usize> = BTreeMap::new();
        for key in &placed {
            *per_tenant.entry(&key.tenant).or_default() += 1;
        }
        most = most.max(per_tenant.values().copied().max().unwrap_or(0));
        if let Some(candidate) = pool.candidate(&id, &TenantId::new("tenant-0")?) {
            fuel_offered += candidate.info.capacity.fuel_per_second;
            fuel_used += candidate.info.capacity.fuel_per_second - candidate.free.fuel_per_second;
        }
    }
    result("placement_max_tenant_per_executor", float(most as u64));
    result(
        "placement_fuel_used_pct",
        100.0 * float(fuel_used) / float(fuel_offered.max(1)),
    );

    // Failover: 10 executors leave; their deployments are placed again on the rest.
    let mut orphans = Vec::new();
    for i in 0..LOST_EXECUTORS.min(executors) {
        let id = ExecutorId::new(format!("executor-{}", i * executors / LOST_EXECUTORS))?;
        orphans.extend(pool.remove_executor(&id)?);
    }
    let by_key: BTreeMap<&DeploymentKey, &Wanted> = wanted.iter().map(|w| (&w.key, w)).collect();
    let again: Vec<&Wanted> = orphans
        .iter()
        .filter_map(|key| by_key.get(key).copied())
        .collect();
    let started = Instant::now();
    let (_, refused_again) = place_all(&mut pool, &again)?;
    let elapsed_again = started.elapsed();
    println!(
        "{} deployments of {LOST_EXECUTORS} lost executors placed again in {:.2} ms ({refused_again} refused)",
        again.len(),
        elapsed_again.as_secs_f64() * 1000.0
    );
    result("replacement_deployments", float(again.len() as u64));
    result("replacement_per_s", per_second(again.len(), elapsed_again));
    result("replacement_refused", float(refused_again as u64));
    Ok(())
}
