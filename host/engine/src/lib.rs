//! The plugin engine: compiles rule components once per content digest and
//! runs one call in a fresh, bounded, deterministic sandbox.
//!
//! Knows nothing of Postgres: it takes a [`PluginInput`] and returns a
//! [`Decision`] or a typed [`PluginFault`]. Costs (measured on 2 cores): a
//! compile is ~100 ms per plugin (done once per digest); a call is one
//! `Store` + instantiation from a cached `InstancePre` on the pooling
//! allocator plus the guest's own work, 8-10 µs for the samples
//! (`payrail plugin bench`; docs/sandbox.md says where it goes).

mod cache;
mod compile;
mod convert;
pub mod model;
pub mod signing;
mod wasi;

use crate::model::{Decision, PluginInput};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter,
    Store, Trap, UpdateDeadline,
};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

pub use compile::CompileStats;
pub use wasi::{LogBuffer, MAX_HOST_RESOURCES};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "rule",
    });
}
use bindings::payrail::plugin::host::Level;
use bindings::{Rule, RulePre};

/// Epoch ticks happen every `EPOCH_TICK_MS`; the wall-clock backstop of a
/// call is rounded up to whole ticks.
const EPOCH_TICK_MS: u64 = 5;

/// One call in this many reads the thread CPU clock (see
/// [`CallOutcome::cpu`]): enough samples for a median and a mean, at a
/// sixteenth of the clock's cost.
pub const CPU_SAMPLE_EVERY: u64 = 16;

/// Dirty linear memory per pool slot reset in place (rather than
/// decommitted) when a call ends, if PAGEMAP_SCAN is available.
const KEEP_RESIDENT_PAGEMAP_BYTES: usize = 2 << 20;

/// Per-call resource limits. Defaults follow Shopify Functions' published
/// limits (11M instructions, 10 MB memory, 128 kB input, 20 kB output, 1 kB
/// logs) plus a wall-clock backstop and caps on the events one call may
/// publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginLimits {
    /// Deterministic instruction budget (wasmtime fuel units).
    pub fuel: u64,
    /// Maximum linear memory per instance.
    pub max_memory_bytes: usize,
    /// Wall-clock backstop for one call.
    pub timeout_ms: u64,
    /// Maximum size of the call's input, as canonical JSON.
    pub max_input_bytes: usize,
    /// Maximum size of the call's output, as canonical JSON.
    pub max_output_bytes: usize,
    /// Log bytes kept per call (host log import and stdout/stderr); the rest
    /// is dropped.
    pub max_log_bytes: usize,
    /// Outbox events one approval may publish (each is an outbox row).
    pub max_events: usize,
    /// Largest payload (JSON text) of one event.
    pub max_event_payload_bytes: usize,
}

impl Default for PluginLimits {
    fn default() -> Self {
        PluginLimits {
            fuel: 11_000_000,
            max_memory_bytes: 10 * 1024 * 1024,
            timeout_ms: 200,
            max_input_bytes: 128 * 1024,
            max_output_bytes: 20 * 1024,
            max_log_bytes: 1024,
            max_events: 16,
            max_event_payload_bytes: 4 * 1024,
        }
    }
}

impl PluginLimits {
    /// The hard caps: no configuration or step may go above them.
    pub const HARD_CAPS: PluginLimits = PluginLimits {
        fuel: 10_000_000_000,
        max_memory_bytes: 256 << 20,
        timeout_ms: 10_000,
        max_input_bytes: 4 << 20,
        max_output_bytes: 1 << 20,
        max_log_bytes: 64 << 10,
        max_events: 64,
        max_event_payload_bytes: 64 << 10,
    };

    /// The default operator caps (`[plugins.max_limits]`): what a tenant
    /// admin may raise a step's limits to. docs/sandbox.md says why.
    pub const DEFAULT_CAPS: PluginLimits = PluginLimits {
        fuel: 100_000_000,
        max_memory_bytes: 64 << 20,
        timeout_ms: 1_000,
        max_input_bytes: 1 << 20,
        max_output_bytes: 256 << 10,
        max_log_bytes: 16 << 10,
        max_events: 64,
        max_event_payload_bytes: 16 << 10,
    };

    /// `(name, value)` of every field, in declaration order.
    pub fn fields(&self) -> [(&'static str, u64); 8] {
        [
            ("fuel", self.fuel),
            ("max_memory_bytes", self.max_memory_bytes as u64),
            ("timeout_ms", self.timeout_ms),
            ("max_input_bytes", self.max_input_bytes as u64),
            ("max_output_bytes", self.max_output_bytes as u64),
            ("max_log_bytes", self.max_log_bytes as u64),
            ("max_events", self.max_events as u64),
            (
                "max_event_payload_bytes",
                self.max_event_payload_bytes as u64,
            ),
        ]
    }

    /// Each field the smaller of `self` and `caps`.
    pub fn min(&self, caps: &PluginLimits) -> PluginLimits {
        PluginLimits {
            fuel: self.fuel.min(caps.fuel),
            max_memory_bytes: self.max_memory_bytes.min(caps.max_memory_bytes),
            timeout_ms: self.timeout_ms.min(caps.timeout_ms),
            max_input_bytes: self.max_input_bytes.min(caps.max_input_bytes),
            max_output_bytes: self.max_output_bytes.min(caps.max_output_bytes),
            max_log_bytes: self.max_log_bytes.min(caps.max_log_bytes),
            max_events: self.max_events.min(caps.max_events),
            max_event_payload_bytes: self
                .max_event_payload_bytes
                .min(caps.max_event_payload_bytes),
        }
    }

    /// The first field of `self` above its value in `caps`, as
    /// `(name, value, cap)`.
    pub fn first_above(&self, caps: &PluginLimits) -> Option<(&'static str, u64, u64)> {
        self.fields()
            .into_iter()
            .zip(caps.fields())
            .find(|((_, v), (_, cap))| v > cap)
            .map(|((name, v), (_, cap))| (name, v, cap))
    }
}

/// Per-step overrides of [`PluginLimits`], set in a pipeline step
/// (`"limits": {"fuel": 2000000}`); absent fields keep the host's value.
/// Each present value must be positive and at most its cap: the hard caps
/// ([`PluginLimits::HARD_CAPS`], [`PluginLimitOverrides::validate`]) and the
/// operator's (`[plugins.max_limits]`, [`PluginLimitOverrides::validate_within`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PluginLimitOverrides {
    /// Instruction budget (fuel units); at most 10^10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    /// Linear memory per instance; at most 256 MiB (and never above the
    /// engine's pool slot size, which clamps it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory_bytes: Option<usize>,
    /// Wall-clock backstop; at most 10 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Input size (canonical JSON); at most 4 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_input_bytes: Option<usize>,
    /// Output size (canonical JSON); at most 1 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_bytes: Option<usize>,
    /// Log bytes kept; at most 64 KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_log_bytes: Option<usize>,
    /// Events one approval may publish; at most 64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_events: Option<usize>,
    /// Payload size of one event; at most 64 KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_event_payload_bytes: Option<usize>,
}

impl PluginLimitOverrides {
    /// Refuses a zero or above-hard-cap value, naming the field.
    pub fn validate(&self) -> Result<(), String> {
        self.validate_within(&PluginLimits::HARD_CAPS)
    }

    /// Refuses a zero value or one above its cap in `caps` (the operator's
    /// caps, themselves at most the hard caps), naming the field, the value
    /// and the cap.
    pub fn validate_within(&self, caps: &PluginLimits) -> Result<(), String> {
        // zero is "not set" here; `apply` onto all-zero limits keeps only
        // the values present
        let given = self.apply(&PluginLimits {
            fuel: 0,
            max_memory_bytes: 0,
            timeout_ms: 0,
            max_input_bytes: 0,
            max_output_bytes: 0,
            max_log_bytes: 0,
            max_events: 0,
            max_event_payload_bytes: 0,
        });
        let present = [
            self.fuel.is_some(),
            self.max_memory_bytes.is_some(),
            self.timeout_ms.is_some(),
            self.max_input_bytes.is_some(),
            self.max_output_bytes.is_some(),
            self.max_log_bytes.is_some(),
            self.max_events.is_some(),
            self.max_event_payload_bytes.is_some(),
        ];
        for ((name, v), is_set) in given.fields().into_iter().zip(present) {
            if is_set && v == 0 {
                return Err(format!("limits.{name} must be positive"));
            }
        }
        match given.first_above(caps) {
            Some((name, v, cap)) => Err(format!(
                "limits.{name} is {v}, above the cap of {cap} (plugins.max_limits.{name})"
            )),
            None => Ok(()),
        }
    }

    /// `base` with every present field replaced.
    pub fn apply(&self, base: &PluginLimits) -> PluginLimits {
        PluginLimits {
            fuel: self.fuel.unwrap_or(base.fuel),
            max_memory_bytes: self.max_memory_bytes.unwrap_or(base.max_memory_bytes),
            timeout_ms: self.timeout_ms.unwrap_or(base.timeout_ms),
            max_input_bytes: self.max_input_bytes.unwrap_or(base.max_input_bytes),
            max_output_bytes: self.max_output_bytes.unwrap_or(base.max_output_bytes),
            max_log_bytes: self.max_log_bytes.unwrap_or(base.max_log_bytes),
            max_events: self.max_events.unwrap_or(base.max_events),
            max_event_payload_bytes: self
                .max_event_payload_bytes
                .unwrap_or(base.max_event_payload_bytes),
        }
    }
}

/// Engine-wide settings, fixed when the engine is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    /// Wasm stack cap for every call (Shopify: 512 kB).
    pub max_wasm_stack_bytes: usize,
    /// Largest plugin component accepted for compilation.
    pub max_plugin_bytes: usize,
    /// Concurrent instances the pooling allocator reserves.
    pub max_concurrent_instances: u32,
    /// Default limits for calls that do not override them.
    pub limits: PluginLimits,
    /// The operator's caps: no step may set a limit above them, and every
    /// call's limits are clamped to them (a pipeline stored before the
    /// caps were lowered runs under the new ones).
    pub caps: PluginLimits,
    /// Compiled plugins kept in memory; the least recently used one is
    /// dropped to make room (and compiled again, or read from the artifact
    /// cache, when a pipeline needs it again).
    pub max_loaded_plugins: usize,
    /// Compiles that may run at once; further deploys and loads wait for
    /// a slot.
    pub max_concurrent_compiles: usize,
    /// How long a deploy or load waits for its compile (slot wait
    /// included) before it is refused with `plugin_compile_timeout`.
    pub compile_timeout_ms: u64,
    /// Calls that outlive `slow_call_ms` yield their core: see
    /// [`SlowCalls`].
    pub slow_calls: SlowCalls,
}

/// What happens to a call that runs longer than a payment rule should.
///
/// A plugin looping until its timeout burns a core the host's request
/// threads and Postgres need. Past `after_ms` of wall time, the epoch
/// callback lowers the priority of the thread running the call to `nice`
/// (0-19; 0 leaves it alone): under contention such a call then gets a
/// small share of its core, while an idle machine still runs it at full
/// speed. The priority cannot be raised back without privileges, so the
/// thread reports it ([`this_thread_was_lowered`]) and its owner retires
/// it. Cost: nothing for calls shorter than `after_ms`; one system call
/// for a longer one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlowCalls {
    pub after_ms: u64,
    pub nice: i32,
}

impl SlowCalls {
    /// Wall time after which a call counts as slow: a payment rule takes
    /// well under a millisecond, a Python one a few.
    pub const AFTER_MS: u64 = 25;
    /// Off: calls keep their thread's priority (tools, tests).
    pub const OFF: SlowCalls = SlowCalls {
        after_ms: SlowCalls::AFTER_MS,
        nice: 0,
    };
}

type SlowCallHook = Box<dyn FnOnce()>;

thread_local! {
    static LOWERED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    static ON_SLOW_CALL: std::cell::RefCell<Option<SlowCallHook>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs `f` with `hook` called if a call in it turns slow (at that moment,
/// not when the call ends), on this thread.
pub fn on_slow_call<T>(hook: impl FnOnce() + 'static, f: impl FnOnce() -> T) -> T {
    ON_SLOW_CALL.with(|h| *h.borrow_mut() = Some(Box::new(hook)));
    let out = f();
    ON_SLOW_CALL.with(|h| h.borrow_mut().take());
    out
}

/// Whether a slow call lowered this thread's priority (see [`SlowCalls`]);
/// such a thread should run nothing else that must be fast.
pub fn this_thread_was_lowered() -> bool {
    LOWERED.with(|l| l.get())
}

/// Lowers the calling thread's priority to `nice` (never raises it), once.
/// Linux only; elsewhere, and if refused, it only marks the thread.
pub fn lower_this_thread(nice: i32) {
    if LOWERED.with(|l| l.replace(true)) {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        let me = Some(rustix::thread::gettid());
        let now = rustix::process::getpriority_process(me).unwrap_or(0);
        if let Err(e) = rustix::process::setpriority_process(me, nice.clamp(now, 19)) {
            tracing::debug!(error = %e, "cannot lower a slow plugin call's priority");
        }
    }
    if let Some(hook) = ON_SLOW_CALL.with(|h| h.borrow_mut().take()) {
        hook();
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_wasm_stack_bytes: 512 * 1024,
            max_plugin_bytes: 2 * 1024 * 1024,
            max_concurrent_instances: 64,
            limits: PluginLimits::default(),
            caps: PluginLimits::DEFAULT_CAPS,
            max_loaded_plugins: 256,
            max_concurrent_compiles: 1,
            compile_timeout_ms: 120_000,
            slow_calls: SlowCalls::OFF,
        }
    }
}

/// Why a plugin could not be loaded (each a clear deploy error).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Larger than `max_plugin_bytes` (checked before anything else).
    #[error(
        "plugin is {size_bytes} bytes, above the limit of {max_bytes} bytes (plugins.max_plugin_bytes)"
    )]
    TooLarge { size_bytes: usize, max_bytes: usize },
    /// A component header, but the body is malformed or fails validation.
    #[error("the component does not compile: {0}")]
    Compile(String),
    #[error(
        "not a WebAssembly component (a core module or garbage?): {0}; build the plugin for wasm32-wasip2 with the payrail-plugin SDK"
    )]
    NotAComponent(String),
    #[error("component does not implement the payrail:plugin/rule@0.1.0 world: {0}")]
    WrongWorld(String),
    /// The compile (slot wait included) took longer than
    /// `plugins.compile_timeout_ms`.
    #[error(
        "the plugin did not compile within {timeout_ms} ms (plugins.compile_timeout_ms; {busy} other compile(s) were running or waiting)"
    )]
    CompileTimeout { timeout_ms: u64, busy: usize },
}

/// A typed failure of one plugin call. The payment is rolled back; the
/// host keeps serving. `code()` is the stable machine-readable name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginFault {
    #[error("plugin trapped: {0}")]
    Trap(String),
    #[error("plugin used its whole fuel budget of {limit} instructions")]
    FuelExhausted { limit: u64 },
    #[error("plugin tried to grow its memory beyond {limit_bytes} bytes")]
    MemoryLimit { limit_bytes: usize },
    #[error("plugin exhausted its wasm stack")]
    StackOverflow,
    #[error("plugin ran longer than its wall-clock limit of {timeout_ms} ms")]
    Timeout { timeout_ms: u64 },
    #[error("plugin input is {bytes} bytes, above the limit of {limit} bytes")]
    InputTooLarge { bytes: usize, limit: usize },
    #[error("plugin output is {bytes} bytes, above the limit of {limit} bytes")]
    OutputTooLarge { bytes: usize, limit: usize },
    #[error("plugin output is invalid: {0}")]
    InvalidOutput(String),
    #[error("plugin returned an error: {code}: {message}")]
    PluginError { code: String, message: String },
    #[error("plugin {0} is not loaded in this engine")]
    NotLoaded(String),
    #[error(
        "plugin waited on something that is not ready (a sleep, poll or read): plugins cannot block"
    )]
    WouldBlock,
    #[error("plugin holds more than {limit} host resources (pollables, streams) at once")]
    ResourceLimit { limit: usize },
    #[error("plugin returned {count} events, above the limit of {limit}")]
    TooManyEvents { count: usize, limit: usize },
    #[error("plugin event {topic:?} has a {bytes}-byte payload, above the limit of {limit} bytes")]
    EventTooLarge {
        topic: String,
        bytes: usize,
        limit: usize,
    },
    #[error(
        "plugin event topic {0:?} is reserved for the host (topics starting with {prefixes})",
        prefixes = RESERVED_TOPIC_PREFIXES.join(", ")
    )]
    ReservedTopic(String),
    #[error("plugin {digest} is not signed by a trusted key: {reason}")]
    Unsigned { digest: String, reason: String },
}

/// Outbox topic prefixes only the host may publish: `payment.<status>`,
/// `hold.expire` (a timer the relay acts on), and room for account and
/// host events. A plugin event under any of them is refused
/// ([`PluginFault::ReservedTopic`]).
pub const RESERVED_TOPIC_PREFIXES: &[&str] = &["payment.", "hold.", "account.", "payrail."];

/// Whether `topic` is the host's: it starts with a reserved prefix or is
/// one without its dot (`payment`).
pub fn is_reserved_topic(topic: &str) -> bool {
    RESERVED_TOPIC_PREFIXES
        .iter()
        .any(|p| topic.starts_with(p) || topic == p.trim_end_matches('.'))
}

impl PluginFault {
    /// Stable error code, as reported to API clients.
    pub fn code(&self) -> &'static str {
        match self {
            PluginFault::Trap(_) => "plugin_trap",
            PluginFault::FuelExhausted { .. } => "plugin_fuel_exhausted",
            PluginFault::MemoryLimit { .. } => "plugin_memory_limit",
            PluginFault::StackOverflow => "plugin_stack_overflow",
            PluginFault::Timeout { .. } => "plugin_timeout",
            PluginFault::InputTooLarge { .. } => "plugin_input_too_large",
            PluginFault::OutputTooLarge { .. } => "plugin_output_too_large",
            PluginFault::InvalidOutput(_) => "plugin_invalid_output",
            PluginFault::PluginError { .. } => "plugin_error",
            PluginFault::NotLoaded(_) => "plugin_not_loaded",
            PluginFault::WouldBlock => "plugin_would_block",
            PluginFault::ResourceLimit { .. } => "plugin_resource_limit",
            PluginFault::TooManyEvents { .. } => "plugin_too_many_events",
            PluginFault::EventTooLarge { .. } => "plugin_event_too_large",
            PluginFault::ReservedTopic(_) => "plugin_reserved_topic",
            PluginFault::Unsigned { .. } => "plugin_unsigned",
        }
    }
}

/// The input of one call, serialized once: its canonical JSON is journaled
/// and its sha256 is part of the call key and seeds the guest's randomness.
#[derive(Debug, Clone)]
pub struct PreparedInput {
    pub input: PluginInput,
    pub json: String,
    pub digest: [u8; 32],
}

impl PreparedInput {
    /// Serializes and hashes `input`. Cost: one JSON encode + sha256.
    pub fn new(input: PluginInput) -> Self {
        let json = serde_json::to_string(&input).expect("plugin input serializes");
        let digest = Sha256::digest(json.as_bytes()).into();
        PreparedInput {
            input,
            json,
            digest,
        }
    }
}

/// What one successful call produced, for the journal and metrics.
#[derive(Debug, Clone)]
pub struct CallOutcome {
    pub decision: Decision,
    /// Canonical JSON of `decision` (what the journal stores).
    pub output_json: String,
    pub fuel_used: u64,
    /// The whole call as P4 counts it: store setup, instantiation, the
    /// guest's run, the slot's reset and the output checks.
    pub duration: Duration,
    /// CPU time the calling thread spent on the same span as `duration`:
    /// what the call cost, without the time the thread waited for a core
    /// (on busy cores `duration` counts other processes' slices too).
    /// Read on one call in [`CPU_SAMPLE_EVERY`] (`None` on the others):
    /// the thread CPU clock is a system call, about 0.6 µs here.
    pub cpu: Option<Duration>,
    /// Captured log text (host log import + stdout/stderr), capped.
    pub log: String,
    /// Largest linear memory the call had (bytes).
    pub peak_memory_bytes: usize,
    /// Where `duration` (and the output check after it) went.
    pub timings: CallTimings,
}

/// The phases of one successful call, for `payrail plugin bench`. Their sum
/// is [`CallOutcome::duration`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallTimings {
    /// Fresh `Store` with its WASI context, limiter, fuel and deadline.
    pub setup: Duration,
    /// Instantiation from the cached `InstancePre` (pool slot, memory image).
    pub instantiate: Duration,
    /// Lowering the input, the guest's `evaluate`, lifting the output.
    pub run: Duration,
    /// Dropping the store: the pool slot's memory is reset for the next
    /// call.
    pub teardown: Duration,
    /// Output checks and canonical JSON.
    pub validate: Duration,
}

/// Store data of one call.
struct CallState {
    /// Built on the guest's first WASI call: most rules never make one, and
    /// building the context is about half of a store's setup cost. Built
    /// from `now_ms` and `seed` only, so lazily or not, the guest sees the
    /// same deterministic world.
    wasi: Option<WasiCtx>,
    now_ms: u64,
    seed: [u8; 32],
    table: ResourceTable,
    limiter: CallLimiter,
    log: wasi::SharedLog,
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let (now_ms, seed, log) = (self.now_ms, self.seed, &self.log);
        let ctx = self
            .wasi
            .get_or_insert_with(|| wasi::deterministic_ctx(now_ms, seed, log));
        WasiCtxView {
            ctx,
            table: &mut self.table,
        }
    }
}

impl bindings::payrail::plugin::types::Host for CallState {}

impl bindings::payrail::plugin::host::Host for CallState {
    fn log(&mut self, level: Level, message: String) {
        let level = match level {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        };
        let mut log = self.log.lock().expect("log buffer lock");
        log.push(level);
        log.push(": ");
        log.push(&message);
        log.push("\n");
    }
}

/// Memory/table limiter that remembers whether it refused a grow, so a trap
/// that follows (Rust's allocator aborts) is reported as a memory limit.
struct CallLimiter {
    max_memory_bytes: usize,
    max_table_elements: usize,
    memory_refused: bool,
    /// Largest memory size granted so far.
    peak_memory: usize,
}

impl ResourceLimiter for CallLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_memory_bytes {
            self.memory_refused = true;
            return Ok(false);
        }
        self.peak_memory = self.peak_memory.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= self.max_table_elements)
    }
}

/// Increments the engine epoch every [`EPOCH_TICK_MS`] so a runaway call hits
/// its deadline even if fuel accounting were misconfigured.
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("payrail-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(EPOCH_TICK_MS));
                    engine.increment_epoch();
                }
            })
            .expect("spawn epoch thread");
        EpochTicker {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One wasmtime `Engine` with every loaded plugin pre-instantiated.
/// Cheap to share (`Arc`); calls may run on many threads at once.
pub struct PluginEngine {
    engine: Engine,
    linker: Linker<CallState>,
    /// Compiled plugins by digest, at most `max_loaded_plugins`.
    loaded: RwLock<HashMap<String, Arc<Loaded>>>,
    /// Ticks of the least-recently-used clock of `loaded`.
    uses: AtomicU64,
    compiles: Arc<compile::CompileGate>,
    config: EngineConfig,
    /// Largest memory a pool slot holds: no call may be granted more.
    pool_max_memory: usize,
    /// Compiled artifacts on disk, if enabled.
    cache: Option<cache::ArtifactCache>,
    /// Loads served from the artifact cache.
    cache_hits: AtomicU64,
    /// Calls made, to pick the ones whose CPU time is read.
    calls: AtomicU64,
    /// What two back-to-back reads of the thread CPU clock measure: taken
    /// off every sampled call, so the clock does not count itself.
    cpu_clock_overhead: Duration,
    /// Publisher keys a deploy must be signed by (none: unsigned is fine).
    trusted: crate::signing::TrustedKeys,
    _ticker: EpochTicker,
}

/// A compiled plugin and when it was last used (a tick of
/// `PluginEngine::uses`).
struct Loaded {
    pre: RulePre<CallState>,
    last_used: AtomicU64,
}

/// The artifact cache directory `payrail` uses: `$PAYRAIL_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/payrail/artifacts`, else `~/.cache/payrail/artifacts`.
pub fn default_cache_dir() -> Option<std::path::PathBuf> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(d) = env("PAYRAIL_CACHE_DIR") {
        return Some(d.into());
    }
    let base = env("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| env("HOME").map(|h| std::path::PathBuf::from(h).join(".cache")))?;
    Some(base.join("payrail").join("artifacts"))
}

/// Hex sha256 of plugin bytes: the plugin's identity everywhere.
pub fn digest_of(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl PluginEngine {
    /// Creates the engine: cranelift, fuel, epochs, capped stack, pooling
    /// allocator sized for `max_concurrent_instances`. Cost: reserves virtual
    /// address space for the pool (not resident memory).
    pub fn new(config: EngineConfig) -> wasmtime::Result<Self> {
        assert!(config.limits.fuel > 0, "fuel limit must be positive");
        assert!(config.max_wasm_stack_bytes >= 64 * 1024, "stack too small");
        let pool_max_memory = config.limits.max_memory_bytes.max(16 * 1024 * 1024);
        let mut pool = PoolingAllocationConfig::new();
        let instances = config.max_concurrent_instances.max(1);
        pool.total_component_instances(instances)
            .total_core_instances(instances * 8)
            .total_memories(instances * 4)
            .total_tables(instances * 8)
            .max_memories_per_component(4)
            .max_core_instances_per_component(16)
            .max_tables_per_component(16)
            .max_memory_size(pool_max_memory);
        // Returning a slot to the pool must not cost a syscall per call:
        // by default every dirty page of linear memory is `madvise`d away
        // when the store drops (~7 us for a sample plugin) and faults back
        // in on the next call. With PAGEMAP_SCAN (Linux >= 6.7) wasmtime
        // finds the pages a call dirtied and copies them back from the
        // memory image instead (only those stay resident); without it,
        // keep-resident would memset the first bytes blindly, so keep that
        // small.
        let pagemap = PoolingAllocationConfig::is_pagemap_scan_available();
        pool.pagemap_scan(Enabled::Auto)
            .linear_memory_keep_resident(if pagemap {
                KEEP_RESIDENT_PAGEMAP_BYTES
            } else {
                64 << 10
            })
            .table_keep_resident(if pagemap { 256 << 10 } else { 16 << 10 });
        let mut wasm = Config::new();
        wasm.consume_fuel(true)
            .epoch_interruption(true)
            .max_wasm_stack(config.max_wasm_stack_bytes)
            .memory_init_cow(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&wasm)?;
        let mut linker = Linker::new(&engine);
        wasi::add_to_linker(&mut linker)?;
        Rule::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
        Ok(PluginEngine {
            _ticker: EpochTicker::start(engine.clone()),
            engine,
            linker,
            loaded: RwLock::new(HashMap::new()),
            uses: AtomicU64::new(0),
            compiles: compile::CompileGate::new(config.max_concurrent_compiles),
            config,
            pool_max_memory,
            cache: None,
            cache_hits: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            cpu_clock_overhead: thread_cpu_clock_overhead(),
            trusted: Default::default(),
        })
    }

    /// Keeps compiled artifacts in `dir` (created owner-only) and loads
    /// plugins from there when this host compiled them before: a restart
    /// deserializes instead of recompiling. See `engine/cache.rs` for what
    /// is trusted.
    pub fn with_artifact_cache(mut self, dir: &std::path::Path) -> std::io::Result<Self> {
        self.cache = Some(cache::ArtifactCache::open(dir, &self.engine)?);
        Ok(self)
    }

    /// [`Self::with_artifact_cache`] in [`default_cache_dir`], unless
    /// `PAYRAIL_CACHE_DIR` is `off`; a directory that cannot be used is
    /// logged and the engine runs without a cache.
    pub fn with_default_artifact_cache(self) -> Self {
        if std::env::var("PAYRAIL_CACHE_DIR").as_deref() == Ok("off") {
            return self;
        }
        let Some(dir) = default_cache_dir() else {
            return self;
        };
        match cache::ArtifactCache::open(&dir, &self.engine) {
            Ok(c) => PluginEngine {
                cache: Some(c),
                ..self
            },
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "plugin artifact cache disabled");
                self
            }
        }
    }

    /// Requires every deploy to be signed by one of `keys` (see
    /// [`crate::signing`]).
    pub fn with_trusted_keys(self, keys: crate::signing::TrustedKeys) -> Self {
        PluginEngine {
            trusted: keys,
            ..self
        }
    }

    /// The publisher keys deploys are checked against.
    pub fn trusted_keys(&self) -> &crate::signing::TrustedKeys {
        &self.trusted
    }

    /// How many loads the artifact cache served (instead of a compile).
    pub fn artifact_cache_hits(&self) -> u64 {
        self.cache_hits.load(Ordering::Relaxed)
    }

    /// The engine-wide configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Validates and compiles `bytes` and keeps it ready under its digest.
    /// Idempotent: a digest already loaded is not compiled again. Cost: one
    /// cranelift compile (~100 ms for a std plugin) on first
    /// load, in a compile slot (`max_concurrent_compiles`), waiting at most
    /// `compile_timeout_ms` in all.
    pub fn load(&self, bytes: &[u8]) -> Result<String, LoadError> {
        if bytes.len() > self.config.max_plugin_bytes {
            return Err(LoadError::TooLarge {
                size_bytes: bytes.len(),
                max_bytes: self.config.max_plugin_bytes,
            });
        }
        let digest = digest_of(bytes);
        if self.is_loaded(&digest) {
            return Ok(digest);
        }
        if !wasmparser_is_component(bytes) {
            return Err(LoadError::NotAComponent(
                "the file does not start with the component-model header".into(),
            ));
        }
        let cached = self
            .cache
            .as_ref()
            .and_then(|c| c.get(&self.engine, &digest));
        let fresh = cached.is_none();
        let component = match cached {
            Some(c) => {
                self.cache_hits.fetch_add(1, Ordering::Relaxed);
                c
            }
            None => match self.compile(&digest, bytes)? {
                Some(c) => c,
                // compiled by another load while this one waited
                None => return Ok(digest),
            },
        };
        let wrong_world = |e: wasmtime::Error| {
            LoadError::WrongWorld(format!("{e:#}; {}", self.describe_world(&component)))
        };
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(wrong_world)?;
        let pre = RulePre::new(pre).map_err(wrong_world)?;
        // only valid plugins reach the disk cache
        if fresh && let Some(cache) = &self.cache {
            cache.put(&digest, &component);
        }
        self.insert_loaded(digest.clone(), pre);
        Ok(digest)
    }

    /// Compiles `bytes` in a compile slot within `compile_timeout_ms`;
    /// `None` if `digest` got loaded while this call waited for its slot.
    fn compile(&self, digest: &str, bytes: &[u8]) -> Result<Option<Component>, LoadError> {
        let timeout_ms = self.config.compile_timeout_ms;
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        let timed_out = |busy| LoadError::CompileTimeout { timeout_ms, busy };
        let slot = self.compiles.acquire(deadline).map_err(timed_out)?;
        if self.is_loaded(digest) {
            return Ok(None);
        }
        let (engine, bytes) = (self.engine.clone(), bytes.to_vec());
        let compiled = compile::run_bounded(slot, deadline, move || {
            Component::new(&engine, bytes).map_err(|e| LoadError::Compile(format!("{e:#}")))
        });
        match compiled {
            Some(c) => c.map(Some),
            None => Err(timed_out(self.compiles.busy())),
        }
    }

    /// Keeps `pre` under `digest`, first dropping the least recently used
    /// plugin if `max_loaded_plugins` are loaded. Cost: a scan of the map
    /// when it is full (a few hundred entries).
    fn insert_loaded(&self, digest: String, pre: RulePre<CallState>) {
        let mut map = self.loaded.write().expect("plugin cache lock");
        if map.len() >= self.config.max_loaded_plugins.max(1) && !map.contains_key(&digest) {
            let oldest = map
                .iter()
                .min_by_key(|(_, l)| l.last_used.load(Ordering::Relaxed))
                .map(|(d, _)| d.clone());
            if let Some(d) = oldest {
                map.remove(&d);
            }
        }
        let last_used = AtomicU64::new(self.uses.fetch_add(1, Ordering::Relaxed));
        map.insert(digest, Arc::new(Loaded { pre, last_used }));
    }

    /// How many plugins are compiled and kept in memory.
    pub fn loaded_count(&self) -> usize {
        self.loaded.read().expect("plugin cache lock").len()
    }

    /// Compile counters (slots used, most at once).
    pub fn compile_stats(&self) -> CompileStats {
        self.compiles.stats()
    }

    /// The loaded plugin `digest`, marked as just used.
    fn get_loaded(&self, digest: &str) -> Option<Arc<Loaded>> {
        let l = self
            .loaded
            .read()
            .expect("plugin cache lock")
            .get(digest)
            .cloned()?;
        l.last_used
            .store(self.uses.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
        Some(l)
    }

    /// "it imports [...] and exports [...]" of a component, for a deploy
    /// error that says which world the component really has (at most 8
    /// names each).
    fn describe_world(&self, component: &Component) -> String {
        let ty = component.component_type();
        let names = |it: &mut dyn ExactSizeIterator<Item = &str>| {
            let n = it.len();
            let mut v: Vec<&str> = it.take(8).collect();
            if n > 8 {
                v.push("...");
            }
            v.join(", ")
        };
        let imports = names(&mut ty.imports(&self.engine).map(|(n, _)| n));
        let exports = names(&mut ty.exports(&self.engine).map(|(n, _)| n));
        format!("the component imports [{imports}] and exports [{exports}]")
    }

    /// What a loaded plugin imports (e.g. `payrail:plugin/host@0.1.0`), or
    /// `None` if `digest` is not loaded: the capabilities it could reach
    /// for. Cost: a walk of the component's type, no call.
    pub fn imports(&self, digest: &str) -> Option<Vec<String>> {
        let l = self.get_loaded(digest)?;
        let ty = l.pre.instance_pre().component().component_type();
        Some(
            ty.imports(&self.engine)
                .map(|(n, _)| n.to_string())
                .collect(),
        )
    }

    /// Whether `digest` is compiled and ready (and marks it used: the
    /// processor asks before every payment's calls).
    pub fn is_loaded(&self, digest: &str) -> bool {
        self.get_loaded(digest).is_some()
    }

    /// The wall-clock backstop of a call (`timeout_ms`, rounded up to
    /// whole epoch ticks) and, before it, the point where a slow call
    /// yields its core ([`SlowCalls`]).
    fn set_deadlines(&self, store: &mut Store<CallState>, timeout_ms: u64) {
        let timeout_ticks = timeout_ms.div_ceil(EPOCH_TICK_MS) + 1;
        let slow = self.config.slow_calls;
        let slow_ticks = slow.after_ms.div_ceil(EPOCH_TICK_MS).max(1);
        if slow.nice <= 0 || slow_ticks >= timeout_ticks {
            store.set_epoch_deadline(timeout_ticks);
            store.epoch_deadline_trap();
            return;
        }
        store.set_epoch_deadline(slow_ticks);
        let mut lowered = false;
        store.epoch_deadline_callback(move |_| {
            if lowered {
                return Ok(UpdateDeadline::Interrupt);
            }
            lowered = true;
            lower_this_thread(slow.nice);
            Ok(UpdateDeadline::Continue(timeout_ticks - slow_ticks))
        });
    }

    /// Runs one call of plugin `digest` in a fresh store under `limits`.
    /// Never panics on guest behaviour: every trap or limit is a [`PluginFault`].
    pub fn call(
        &self,
        digest: &str,
        input: &PreparedInput,
        limits: &PluginLimits,
    ) -> Result<CallOutcome, PluginFault> {
        // A step may ask for more memory than a pool slot holds; the slot
        // is the real ceiling, so report that one when it is hit. No call
        // goes above the operator's caps, whatever its pipeline says.
        let limits = &limits.min(&PluginLimits {
            max_memory_bytes: self.pool_max_memory,
            ..self.config.caps
        });
        if input.json.len() > limits.max_input_bytes {
            return Err(PluginFault::InputTooLarge {
                bytes: input.json.len(),
                limit: limits.max_input_bytes,
            });
        }
        let pre = self
            .get_loaded(digest)
            .map(|l| l.pre.clone())
            .ok_or_else(|| PluginFault::NotLoaded(digest.to_string()))?;
        let log = Arc::new(Mutex::new(LogBuffer {
            max_bytes: limits.max_log_bytes,
            ..LogBuffer::default()
        }));
        let sample_cpu = self
            .calls
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(CPU_SAMPLE_EVERY);
        // read before the wall clock starts, so `duration` does not pay for it
        let started_cpu = sample_cpu.then(thread_cpu_time);
        let started = Instant::now();
        let state = CallState {
            wasi: None,
            now_ms: input.input.now_ms,
            seed: input.digest,
            table: bounded_table(),
            limiter: CallLimiter {
                max_memory_bytes: limits.max_memory_bytes,
                max_table_elements: 100_000,
                memory_refused: false,
                peak_memory: 0,
            },
            log: log.clone(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        store
            .set_fuel(limits.fuel)
            .expect("fuel is enabled in the engine config");
        self.set_deadlines(&mut store, limits.timeout_ms);

        let guest_input = convert::input_to_guest(&input.input);
        let setup_done = Instant::now();
        let mut instantiated = setup_done;
        let result = pre.instantiate(&mut store).and_then(|rule: Rule| {
            instantiated = Instant::now();
            rule.call_evaluate(&mut store, &guest_input)
        });
        let ended = Instant::now();
        let fuel_used = limits.fuel - store.get_fuel().unwrap_or(0);
        let memory_refused = store.data().limiter.memory_refused;
        let peak_memory_bytes = store.data().limiter.peak_memory;
        drop(store);
        let torn_down = Instant::now();
        let log = std::mem::take(&mut log.lock().expect("log buffer lock").text);

        let output = match result {
            Ok(Ok(decision)) => decision,
            Ok(Err(e)) => {
                return Err(PluginFault::PluginError {
                    code: e.code,
                    message: e.message,
                });
            }
            Err(e) => return Err(classify_trap(&e, memory_refused, limits)),
        };
        let decision = convert::decision_from_guest(output, limits)?;
        let output_json = serde_json::to_string(&decision).expect("decision serializes");
        if output_json.len() > limits.max_output_bytes {
            return Err(PluginFault::OutputTooLarge {
                bytes: output_json.len(),
                limit: limits.max_output_bytes,
            });
        }
        let validated = Instant::now();
        let cpu = started_cpu.map(|t| {
            thread_cpu_time()
                .saturating_sub(t)
                .saturating_sub(self.cpu_clock_overhead)
        });
        Ok(CallOutcome {
            decision,
            output_json,
            fuel_used,
            duration: validated - started,
            cpu,
            log,
            peak_memory_bytes,
            timings: CallTimings {
                setup: setup_done - started,
                instantiate: instantiated - setup_done,
                run: ended - instantiated,
                teardown: torn_down - ended,
                validate: validated - torn_down,
            },
        })
    }
}

/// A resource table holding at most [`wasi::MAX_HOST_RESOURCES`] entries.
fn bounded_table() -> ResourceTable {
    let mut table = ResourceTable::new();
    table.set_max_capacity(wasi::MAX_HOST_RESOURCES);
    table
}

/// CPU time the calling thread has used (`CLOCK_THREAD_CPUTIME_ID`).
/// Cost: one system call (no vDSO for this clock), about 0.6 µs here.
fn thread_cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        t.tv_sec.max(0) as u64,
        t.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// The smallest difference of two back-to-back [`thread_cpu_time`] reads
/// in 64 tries: the clock's own cost inside a measured span.
fn thread_cpu_clock_overhead() -> Duration {
    (0..64)
        .map(|_| {
            let a = thread_cpu_time();
            thread_cpu_time().saturating_sub(a)
        })
        .min()
        .unwrap_or_default()
}

/// Maps a wasmtime error from instantiate/call to the typed fault.
fn classify_trap(e: &wasmtime::Error, memory_refused: bool, limits: &PluginLimits) -> PluginFault {
    match e.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => PluginFault::FuelExhausted { limit: limits.fuel },
        Some(Trap::Interrupt) => PluginFault::Timeout {
            timeout_ms: limits.timeout_ms,
        },
        Some(Trap::StackOverflow) => PluginFault::StackOverflow,
        _ if e.downcast_ref::<wasi::WouldBlock>().is_some() => PluginFault::WouldBlock,
        _ if matches!(
            e.downcast_ref::<wasmtime::component::ResourceTableError>(),
            Some(wasmtime::component::ResourceTableError::Full)
        ) =>
        {
            PluginFault::ResourceLimit {
                limit: wasi::MAX_HOST_RESOURCES,
            }
        }
        _ if memory_refused => PluginFault::MemoryLimit {
            limit_bytes: limits.max_memory_bytes,
        },
        _ => PluginFault::Trap(format!("{e:#}")),
    }
}

/// A component starts with `\0asm` followed by the component-model layer
/// (version 0x0d, layer 0x01); a core module has layer 0x00.
fn wasmparser_is_component(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[0..4] == *b"\0asm" && bytes[6..8] == [0x01, 0x00]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// "The sandbox knows no SQL" is a fact of the dependency tree: no
    /// database client is in it.
    #[test]
    fn no_database_client_in_the_dependency_tree() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = std::process::Command::new(cargo)
            .args([
                "tree",
                "-p",
                "payrail-engine",
                "-e",
                "normal",
                "--prefix",
                "none",
            ])
            .args([
                "--manifest-path",
                concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"),
            ])
            .output()
            .expect("cargo tree runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let tree = String::from_utf8_lossy(&out.stdout);
        assert!(tree.contains("wasmtime"), "the tree was read: {tree}");
        for client in ["postgres", "deadpool", "sqlx", "diesel"] {
            assert!(
                !tree.contains(client),
                "{client} in the engine's tree:\n{tree}"
            );
        }
    }
    use crate::model::PaymentStatus;

    /// Every topic the host writes to the outbox (`payment.<status>` from
    /// the processor and holds, the relay's `hold.expire` timer) is under a
    /// reserved prefix; a plugin's own namespace is not.
    #[test]
    fn every_host_topic_is_reserved() {
        use PaymentStatus::*;
        for s in [Approved, Declined, Authorized, Captured, Voided, Expired] {
            assert!(is_reserved_topic(&format!("payment.{}", s.as_str())));
        }
        assert!(is_reserved_topic("hold.expire"));
        for t in ["payment", "hold", "account.opened", "payrail.x"] {
            assert!(is_reserved_topic(t), "{t}");
        }
        for t in ["fee.charged", "payments.x", "holdings", "limits.hit"] {
            assert!(!is_reserved_topic(t), "{t}");
        }
    }

    #[test]
    fn step_limits_are_checked_against_the_operator_caps() {
        let caps = PluginLimits {
            timeout_ms: 500,
            ..PluginLimits::DEFAULT_CAPS
        };
        let over = PluginLimitOverrides {
            timeout_ms: Some(501),
            ..Default::default()
        };
        assert_eq!(
            over.validate_within(&caps).unwrap_err(),
            "limits.timeout_ms is 501, above the cap of 500 (plugins.max_limits.timeout_ms)"
        );
        assert!(over.validate().is_ok(), "within the hard caps");
        let zero = PluginLimitOverrides {
            max_events: Some(0),
            ..Default::default()
        };
        assert_eq!(
            zero.validate().unwrap_err(),
            "limits.max_events must be positive"
        );
        let hard = PluginLimitOverrides {
            max_events: Some(65),
            ..Default::default()
        };
        assert!(hard.validate().unwrap_err().contains("above the cap of 64"));
        assert!(
            PluginLimits::default()
                .first_above(&PluginLimits::DEFAULT_CAPS)
                .is_none()
        );
        assert!(
            PluginLimits::DEFAULT_CAPS
                .first_above(&PluginLimits::HARD_CAPS)
                .is_none()
        );
    }
}
