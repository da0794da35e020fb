//! `payrail plugin bench`: a plugin's per-call cost, split by phase.

use crate::fixture::{Loaded, load};
use crate::{Result, ToolError};
use payrail_engine::model::PluginInput;
use payrail_engine::{CallTimings, EngineConfig, PluginEngine, PluginLimits, PreparedInput};
use serde::Serialize;
use std::path::Path;
use std::time::{Duration, Instant};

/// Median, 99th percentile, mean and minimum of one per-call figure, in
/// microseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Spread {
    pub median: f64,
    pub p99: f64,
    pub mean: f64,
    pub min: f64,
}

fn spread(mut ns: Vec<u64>) -> Spread {
    ns.sort_unstable();
    let n = ns.len().max(1);
    let at = |q: f64| ns.get(((n - 1) as f64 * q).round() as usize).copied();
    let us = |v: Option<u64>| (v.unwrap_or(0) as f64 / 10.0).round() / 100.0;
    Spread {
        median: us(at(0.5)),
        p99: us(at(0.99)),
        mean: us(Some(ns.iter().sum::<u64>() / n as u64)),
        min: us(ns.first().copied()),
    }
}

/// What `payrail plugin bench` prints: per-call costs (µs) of `calls`
/// calls after `warmup` unmeasured ones, each phase measured on its own.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub digest: String,
    pub calls: usize,
    pub warmup: usize,
    /// `ok` or the fault code of the first call.
    pub outcome: String,
    /// Fuel used by one call (the same for every call: calls are
    /// deterministic).
    pub fuel: u64,
    /// `PreparedInput::new`: the input's canonical JSON and sha256.
    pub prepare_us: Spread,
    /// Fresh store + WASI context + guest input conversion.
    pub setup_us: Spread,
    /// Instantiation from the `InstancePre`.
    pub instantiate_us: Spread,
    /// Input lowering, the guest's `evaluate`, output lifting.
    pub call_us: Spread,
    /// Dropping the store (resetting the pool slot for the next call).
    pub teardown_us: Spread,
    /// Output checks + canonical output JSON.
    pub validate_us: Spread,
    /// What the engine reports as the call's duration (setup through
    /// output checks: what the journal, metrics and P4 count).
    pub engine_duration_us: Spread,
    /// The calling thread's CPU time over the same span (what P4's share
    /// counts), of the calls the engine samples it on.
    pub engine_cpu_us: Spread,
    /// Everything one payment step pays: prepare through validate.
    pub total_us: Spread,
    /// CPU time of the whole process (all threads) per measured call
    /// (`CLOCK_PROCESS_CPUTIME_ID`): shows background work such as decommits.
    pub process_cpu_us_per_call: Option<f64>,
}

/// CPU nanoseconds used so far by every thread of this process, exited
/// ones included (`CLOCK_PROCESS_CPUTIME_ID`).
fn process_cpu_ns() -> Option<u64> {
    // The process clock counts threads that have exited too: a sum over
    // the live threads of /proc/self/task fell when an idle blocking-pool
    // thread exited during the run.
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    let secs = u64::try_from(t.tv_sec).ok()?;
    let nanos = u64::try_from(t.tv_nsec).ok()?;
    secs.checked_mul(1_000_000_000)?.checked_add(nanos)
}

/// Loads `wasm` on an engine of `config` and calls it `calls` times on
/// `fixture` (after `warmup` calls), as the processor would per payment
/// step: prepare the input, call, check the output. No database.
pub fn bench_plugin(
    config: EngineConfig,
    wasm: &Path,
    fixture: &Path,
    limits: &PluginLimits,
    calls: usize,
    warmup: usize,
) -> Result<BenchReport> {
    let Loaded {
        engine,
        digest,
        input,
        ..
    } = load(config, wasm, fixture)?;
    bench_loaded(&engine, &digest, &input, limits, calls, warmup)
}

/// [`bench_plugin`] on a plugin `engine` has loaded as `digest`: what
/// `payrail bench` runs on an idle core before its load, as a reading of
/// the machine's speed. Cost: `warmup + calls` plugin calls on this thread.
pub fn bench_loaded(
    engine: &PluginEngine,
    digest: &str,
    input: &PluginInput,
    limits: &PluginLimits,
    calls: usize,
    warmup: usize,
) -> Result<BenchReport> {
    let calls = calls.max(1);
    let first = engine.call(digest, &PreparedInput::new(input.clone()), limits);
    let fuel = match first {
        Ok(out) => out.fuel_used,
        Err(f) => {
            return Err(ToolError::invalid(
                "plugin_fault",
                format!(
                    "the plugin faults on this fixture ({}); bench needs a call that succeeds",
                    f.code()
                ),
            ));
        }
    };
    let calls_of = Calls {
        engine,
        digest,
        input,
        limits,
    };
    let (samples, cpu) = calls_of.measure(calls, warmup)?;
    Ok(report(digest, calls, warmup, fuel, &samples, cpu))
}

/// One measured call: prepare and total (ns), the engine's split.
struct Sample {
    prepare: u64,
    total: u64,
    timings: CallTimings,
    duration: Duration,
    cpu: Option<Duration>,
}

/// The calls [`bench_loaded`] makes: one plugin, one input.
struct Calls<'a> {
    engine: &'a PluginEngine,
    digest: &'a str,
    input: &'a PluginInput,
    limits: &'a PluginLimits,
}

impl Calls<'_> {
    /// Makes `warmup + calls` calls; returns the samples of the last
    /// `calls` and the process CPU µs per measured call.
    fn measure(&self, calls: usize, warmup: usize) -> Result<(Vec<Sample>, Option<f64>)> {
        let mut samples: Vec<Sample> = Vec::with_capacity(calls);
        let mut cpu_start = None;
        for i in 0..warmup + calls {
            if i == warmup {
                cpu_start = process_cpu_ns();
            }
            let sample = self.one()?;
            if i >= warmup {
                samples.push(sample);
            }
        }
        let cpu = match (cpu_start, process_cpu_ns()) {
            (Some(a), Some(b)) => {
                Some((b.saturating_sub(a) as f64 / calls as f64 / 10.0).round() / 100.0)
            }
            _ => None,
        };
        Ok((samples, cpu))
    }

    /// One call as a payment step makes it: prepare, call, check.
    fn one(&self) -> Result<Sample> {
        let t0 = Instant::now();
        let prepared = PreparedInput::new(self.input.clone());
        let t1 = Instant::now();
        let out = self
            .engine
            .call(self.digest, &prepared, self.limits)
            .map_err(|f| ToolError::invalid("plugin_fault", format!("{}: {f}", f.code())))?;
        let t2 = Instant::now();
        drop(prepared);
        Ok(Sample {
            prepare: (t1 - t0).as_nanos() as u64,
            total: (t2 - t0).as_nanos() as u64,
            timings: out.timings,
            duration: out.duration,
            cpu: out.cpu,
        })
    }
}

/// The report of `samples`: each phase's spread.
fn report(
    digest: &str,
    calls: usize,
    warmup: usize,
    fuel: u64,
    samples: &[Sample],
    process_cpu_us_per_call: Option<f64>,
) -> BenchReport {
    let col = |f: &dyn Fn(&Sample) -> u64| spread(samples.iter().map(f).collect());
    let ns = |d: Duration| d.as_nanos() as u64;
    BenchReport {
        digest: digest.to_string(),
        calls,
        warmup,
        outcome: "ok".to_string(),
        fuel,
        prepare_us: col(&|s| s.prepare),
        setup_us: col(&|s| ns(s.timings.setup)),
        instantiate_us: col(&|s| ns(s.timings.instantiate)),
        call_us: col(&|s| ns(s.timings.run)),
        teardown_us: col(&|s| ns(s.timings.teardown)),
        validate_us: col(&|s| ns(s.timings.validate)),
        engine_duration_us: col(&|s| ns(s.duration)),
        engine_cpu_us: spread(samples.iter().filter_map(|s| s.cpu).map(ns).collect()),
        total_us: col(&|s| s.total),
        process_cpu_us_per_call,
    }
}
