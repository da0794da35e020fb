//! Plugin author tooling, no database needed: `payrail plugin test` (run a
//! component on a fixture and show its costs against the limits),
//! `payrail plugin new` (a ready-to-build plugin crate), `payrail plugin
//! keygen` / `payrail plugin sign` (optional signatures), `payrail plugin
//! bench` (per-call cost of a plugin, split by phase).
//!
//! A crate of its own on the engine alone: no `payrail`, no database
//! client in its dependency tree. The host's command line parses
//! [`ToolCmd`] and calls [`run`] with the engine configuration it reads
//! from the environment; [`ToolError`] converts into the host's error.

use payrail_engine::model::PluginInput;
use payrail_engine::signing::{self, SigningError};
use payrail_engine::{
    CallTimings, EngineConfig, LoadError, PluginEngine, PluginLimits, PreparedInput, digest_of,
};
use serde::Serialize;
use std::path::Path;

/// What can go wrong in a plugin tool. Each variant has a stable
/// [`code`](ToolError::code); the host maps each to its own error variant
/// of the same meaning (`Invalid`, `AlreadyExists`, `PluginLoad`, `Setup`).
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// A bad argument or file: unreadable, too large, not a fixture, a
    /// plugin that faults where a call must succeed, ...
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    /// What would be created is already there (never overwritten).
    #[error("{what} {id:?} already exists")]
    AlreadyExists { what: &'static str, id: String },
    /// The plugin is refused as a deploy would refuse it.
    #[error("plugin rejected: {0}")]
    PluginLoad(#[from] LoadError),
    /// The wasm engine could not be created.
    #[error("setup error: {0}")]
    Setup(String),
}

impl ToolError {
    /// Stable code for scripts and logs.
    pub fn code(&self) -> &str {
        match self {
            ToolError::Invalid { code, .. } => code,
            ToolError::AlreadyExists { .. } => "already_exists",
            ToolError::PluginLoad(_) => "plugin_invalid",
            ToolError::Setup(_) => "engine_setup",
        }
    }

    /// Shorthand for [`ToolError::Invalid`].
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        ToolError::Invalid {
            code,
            message: message.into(),
        }
    }
}

impl From<SigningError> for ToolError {
    fn from(e: SigningError) -> ToolError {
        ToolError::Invalid {
            code: e.code,
            message: e.message,
        }
    }
}

/// Result alias of the plugin tools.
pub type Result<T, E = ToolError> = std::result::Result<T, E>;

/// Largest fixture file read.
pub const MAX_FIXTURE_BYTES: u64 = 4 * 1024 * 1024;

fn read(path: &Path, max: u64) -> Result<Vec<u8>> {
    let meta = std::fs::metadata(path).map_err(|e| {
        ToolError::invalid(
            "unreadable_file",
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    if meta.len() > max {
        return Err(ToolError::invalid(
            "file_too_large",
            format!("{} is {} bytes, above {max}", path.display(), meta.len()),
        ));
    }
    std::fs::read(path).map_err(|e| {
        ToolError::invalid(
            "unreadable_file",
            format!("cannot read {}: {e}", path.display()),
        )
    })
}

/// A fixture: a plugin input where `config` may be a JSON object (it is
/// passed as text, as the host does) and metadata may be left out.
pub fn parse_fixture(json: &[u8]) -> Result<PluginInput> {
    let bad = |m: String| ToolError::invalid("invalid_fixture", m);
    let mut v: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| bad(format!("fixture is not JSON: {e}")))?;
    let obj = v
        .as_object_mut()
        .ok_or_else(|| bad("fixture must be a JSON object".into()))?;
    let config = obj
        .remove("config")
        .unwrap_or_else(|| serde_json::json!({}));
    let config = match config {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    };
    obj.insert("config".into(), config.into());
    obj.entry("previous")
        .or_insert_with(|| serde_json::json!([]));
    obj.entry("now_ms").or_insert_with(|| serde_json::json!(0));
    if let Some(p) = obj.get_mut("payment").and_then(|p| p.as_object_mut()) {
        p.entry("metadata").or_insert_with(|| serde_json::json!({}));
        p.entry("id")
            .or_insert_with(|| "00000000-0000-0000-0000-000000000000".into());
    }
    if let Some(accounts) = obj.get_mut("accounts").and_then(|a| a.as_array_mut()) {
        for a in accounts.iter_mut().filter_map(|a| a.as_object_mut()) {
            a.entry("metadata").or_insert_with(|| serde_json::json!({}));
            a.entry("allow_negative").or_insert(false.into());
        }
    }
    serde_json::from_value(v).map_err(|e| bad(format!("fixture is not a plugin input: {e}")))
}

/// One measured figure against its limit.
#[derive(Debug, Clone, Serialize)]
pub struct Measure {
    /// What was used.
    pub used: u64,
    /// The limit.
    pub limit: u64,
    /// `used / limit` in percent.
    pub percent: f64,
}

fn measure(used: u64, limit: u64) -> Measure {
    Measure {
        used,
        limit,
        percent: (used as f64 * 10_000.0 / limit.max(1) as f64).round() / 100.0,
    }
}

/// What `payrail plugin test` prints.
#[derive(Debug, Clone, Serialize)]
pub struct TestReport {
    /// The plugin's digest.
    pub digest: String,
    /// `ok` or the fault code.
    pub outcome: String,
    /// The decision (on success).
    pub decision: Option<serde_json::Value>,
    /// The fault message (on a fault).
    pub fault: Option<String>,
    /// Instructions (fuel) used.
    pub fuel: Option<Measure>,
    /// Peak linear memory.
    pub memory_bytes: Option<Measure>,
    /// Input size (canonical JSON).
    pub input_bytes: Measure,
    /// Output size (canonical JSON).
    pub output_bytes: Option<Measure>,
    /// Wall-clock time, in microseconds, against the timeout.
    pub duration_us: Option<Measure>,
    /// The plugin's log.
    pub log: String,
}

/// Loads `wasm` (validated as at deploy) on an engine of `config` and runs
/// it once on `fixture` under `limits`, with no database.
///
/// `config` holds the host's limits (the CLI reads them from the
/// environment, e.g. PAYRAIL_MAX_PLUGIN_BYTES for a large Python
/// component); its memory limit is raised to the one asked for here.
pub fn test_plugin(
    mut config: EngineConfig,
    wasm: &Path,
    fixture: &Path,
    limits: &PluginLimits,
) -> Result<TestReport> {
    config.limits.max_memory_bytes = config.limits.max_memory_bytes.max(limits.max_memory_bytes);
    let bytes = read(wasm, config.max_plugin_bytes as u64 + 1)?;
    let input = parse_fixture(&read(fixture, MAX_FIXTURE_BYTES)?)?;
    let engine = PluginEngine::new(config)
        .map_err(|e| ToolError::Setup(format!("cannot create the wasm engine: {e:#}")))?;
    let digest = engine.load(&bytes)?;
    let prepared = PreparedInput::new(input);
    let input_bytes = measure(prepared.json.len() as u64, limits.max_input_bytes as u64);
    Ok(match engine.call(&digest, &prepared, limits) {
        Ok(out) => TestReport {
            digest,
            outcome: "ok".into(),
            decision: serde_json::from_str(&out.output_json).ok(),
            fault: None,
            fuel: Some(measure(out.fuel_used, limits.fuel)),
            memory_bytes: Some(measure(
                out.peak_memory_bytes as u64,
                limits.max_memory_bytes as u64,
            )),
            input_bytes,
            output_bytes: Some(measure(
                out.output_json.len() as u64,
                limits.max_output_bytes as u64,
            )),
            duration_us: Some(measure(
                out.duration.as_micros() as u64,
                limits.timeout_ms * 1000,
            )),
            log: out.log,
        },
        Err(f) => TestReport {
            digest,
            outcome: f.code().into(),
            decision: None,
            fault: Some(f.to_string()),
            fuel: None,
            memory_bytes: None,
            input_bytes,
            output_bytes: None,
            duration_us: None,
            log: String::new(),
        },
    })
}

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
    let bytes = read(wasm, config.max_plugin_bytes as u64 + 1)?;
    let input = parse_fixture(&read(fixture, MAX_FIXTURE_BYTES)?)?;
    let engine = PluginEngine::new(config)
        .map_err(|e| ToolError::Setup(format!("cannot create the wasm engine: {e:#}")))?;
    let digest = engine.load(&bytes)?;
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
    let (outcome, fuel) = match &first {
        Ok(out) => ("ok".to_string(), out.fuel_used),
        Err(f) => (f.code().to_string(), 0),
    };
    if first.is_err() {
        return Err(ToolError::invalid(
            "plugin_fault",
            format!(
                "the plugin faults on this fixture ({outcome}); bench needs a call that succeeds"
            ),
        ));
    }
    /// One measured call: prepare and total (ns), the engine's split.
    struct Sample {
        prepare: u64,
        total: u64,
        timings: CallTimings,
        duration: std::time::Duration,
        cpu: Option<std::time::Duration>,
    }
    let mut samples: Vec<Sample> = Vec::with_capacity(calls);
    let mut cpu_start = None;
    for i in 0..warmup + calls {
        if i == warmup {
            cpu_start = process_cpu_ns();
        }
        let t0 = std::time::Instant::now();
        let prepared = PreparedInput::new(input.clone());
        let t1 = std::time::Instant::now();
        let out = engine
            .call(digest, &prepared, limits)
            .map_err(|f| ToolError::invalid("plugin_fault", format!("{}: {f}", f.code())))?;
        let t2 = std::time::Instant::now();
        drop(prepared);
        if i >= warmup {
            samples.push(Sample {
                prepare: (t1 - t0).as_nanos() as u64,
                total: (t2 - t0).as_nanos() as u64,
                timings: out.timings,
                duration: out.duration,
                cpu: out.cpu,
            });
        }
    }
    let cpu = match (cpu_start, process_cpu_ns()) {
        (Some(a), Some(b)) => {
            Some((b.saturating_sub(a) as f64 / calls as f64 / 10.0).round() / 100.0)
        }
        _ => None,
    };
    let col = |f: &dyn Fn(&Sample) -> u64| spread(samples.iter().map(f).collect());
    let ns = |d: std::time::Duration| d.as_nanos() as u64;
    Ok(BenchReport {
        digest: digest.to_string(),
        calls,
        warmup,
        outcome,
        fuel,
        prepare_us: col(&|s| s.prepare),
        setup_us: col(&|s| ns(s.timings.setup)),
        instantiate_us: col(&|s| ns(s.timings.instantiate)),
        call_us: col(&|s| ns(s.timings.run)),
        teardown_us: col(&|s| ns(s.timings.teardown)),
        validate_us: col(&|s| ns(s.timings.validate)),
        engine_duration_us: col(&|s| ns(s.duration)),
        engine_cpu_us: spread(
            samples
                .iter()
                .filter_map(|s| s.cpu)
                .map(|d| d.as_nanos() as u64)
                .collect(),
        ),
        total_us: col(&|s| s.total),
        process_cpu_us_per_call: cpu,
    })
}

/// Creates a new key pair: the secret key goes to `out` (owner-only, never
/// overwritten); returns the public key (hex) for the hosts' trusted keys.
pub fn keygen(out: &Path) -> Result<String> {
    use std::io::Write;
    let (secret, public) = signing::keygen();
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(out).map_err(|e| {
        ToolError::invalid(
            "unwritable_file",
            format!("cannot create {}: {e}", out.display()),
        )
    })?;
    f.write_all(format!("{secret}\n").as_bytes())
        .map_err(|e| ToolError::invalid("unwritable_file", format!("{}: {e}", out.display())))?;
    Ok(public)
}

/// Signs the digest of `wasm` with the secret key in `key`; returns
/// (digest, signature hex).
pub fn sign(wasm: &Path, key: &Path) -> Result<(String, String)> {
    let bytes = read(wasm, 256 * 1024 * 1024)?;
    let secret = String::from_utf8(read(key, 1024)?)
        .map_err(|_| ToolError::invalid("invalid_key", "the key file is not text"))?;
    let digest = digest_of(&bytes);
    let sig = signing::sign(secret.trim(), &digest)?;
    Ok((digest, sig))
}

/// The repository this binary was built from (for `plugin new`'s path to
/// the SDK): this crate is host/plugin-tools.
fn repo_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// Creates the plugin crate `name` in `dir/name`: Cargo.toml, src/lib.rs
/// (an amount-cap rule with unit tests), a fixture and a README. Returns
/// the crate directory.
pub fn new_plugin(name: &str, dir: &Path) -> Result<std::path::PathBuf> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        || !name.as_bytes()[0].is_ascii_lowercase()
    {
        return Err(ToolError::invalid(
            "invalid_id",
            "a plugin crate name is 1-64 of a-z 0-9 - _, starting with a letter",
        ));
    }
    let root = dir.join(name);
    if root.exists() {
        return Err(ToolError::AlreadyExists {
            what: "directory",
            id: root.display().to_string(),
        });
    }
    let sdk = repo_root().join("plugins/sdk");
    let sdk = sdk.canonicalize().unwrap_or(sdk);
    let write = |rel: &str, text: &str| -> Result<()> {
        let p = root.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(|e| {
                ToolError::invalid("unwritable_file", format!("{}: {e}", p.display()))
            })?;
        }
        std::fs::write(&p, text)
            .map_err(|e| ToolError::invalid("unwritable_file", format!("{}: {e}", p.display())))
    };
    write(
        "Cargo.toml",
        &TEMPLATE_CARGO
            .replace("{name}", name)
            .replace("{sdk}", &sdk.display().to_string()),
    )?;
    write("src/lib.rs", TEMPLATE_LIB)?;
    write("fixture.json", TEMPLATE_FIXTURE)?;
    write(
        "README.md",
        &TEMPLATE_README
            .replace("{file}", &name.replace('-', "_"))
            .replace("{name}", name),
    )?;
    // the repository's lock file and toolchain: same dependency versions
    // (builds offline) and the wasm32-wasip2 target
    for f in ["Cargo.lock", "rust-toolchain.toml"] {
        if let Ok(text) = std::fs::read_to_string(repo_root().join(f)) {
            write(f, &text)?;
        }
    }
    Ok(root)
}

const TEMPLATE_CARGO: &str = r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib", "rlib"]

[dependencies]
payrail-plugin = { path = "{sdk}" }
serde = { version = "1", features = ["derive"] }

# a workspace of its own (not a member of the payrail repository's)
[workspace]

[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
strip = true
"#;

const TEMPLATE_LIB: &str = r##"//! A payrail rule: declines payments above `max_amount` (minor units).
//!
//! Config: `{"max_amount": 100000}`.

use payrail_plugin::{Decision, Input, PluginError, Rule, approve, config, decline};
use serde::Deserialize;

/// The rule (exported as the component's `evaluate`).
pub struct MyRule;

/// Step config.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MyConfig {
    /// Largest amount approved.
    pub max_amount: i64,
}

impl Rule for MyRule {
    fn evaluate(input: Input) -> Result<Decision, PluginError> {
        let cfg: MyConfig = config(&input)?;
        if input.payment.amount > cfg.max_amount {
            return Ok(decline(
                "amount_too_large",
                format!("amount {} is above {}", input.payment.amount, cfg.max_amount),
            ));
        }
        Ok(approve().annotation("checked_by", "my-rule").into())
    }
}

payrail_plugin::export_rule!(MyRule);

#[cfg(test)]
mod tests {
    use super::*;
    use payrail_plugin::InputBuilder;

    fn run(amount: i64) -> Result<Decision, PluginError> {
        MyRule::evaluate(
            InputBuilder::new()
                .amount(amount)
                .config(r#"{"max_amount": 1000}"#)
                .build(),
        )
    }

    #[test]
    fn approves_up_to_the_cap_and_declines_above() {
        assert!(matches!(run(1000).unwrap(), Decision::Approve(_)));
        let Decision::Decline(d) = run(1001).unwrap() else {
            panic!("approved above the cap");
        };
        assert_eq!(d.code, "amount_too_large");
    }

    #[test]
    fn a_bad_config_is_an_error() {
        let e = MyRule::evaluate(InputBuilder::new().config("{}").build()).unwrap_err();
        assert_eq!(e.code, "invalid_config");
    }
}
"##;

const TEMPLATE_FIXTURE: &str = r#"{
  "payment": {"kind": "transfer", "amount": 2500, "currency": "EUR",
              "source": "alice", "destination": "bob"},
  "accounts": [{"id": "alice", "currency": "EUR", "balance": 100000},
               {"id": "bob", "currency": "EUR", "balance": 0}],
  "config": {"max_amount": 100000}
}
"#;

const TEMPLATE_README: &str = r#"# {name}

A payrail rule plugin. See docs/plugin-guide.md in the payrail repository.

```sh
cargo test                                          # unit tests (native)
cargo build --release --target wasm32-wasip2        # the component
payrail plugin test target/wasm32-wasip2/release/{file}.wasm --input fixture.json
payrail plugin deploy target/wasm32-wasip2/release/{file}.wasm --name {name}
```
"#;

/// The `payrail plugin` subcommands that need no database.
#[derive(Debug, clap::Subcommand)]
pub enum ToolCmd {
    /// Run a plugin component once on a fixture, without a database;
    /// prints the outcome and its costs against the limits. Exit 1 on a
    /// fault.
    Test {
        /// The plugin's .wasm component.
        file: std::path::PathBuf,
        /// A JSON plugin input: {"payment": {...}, "accounts": [...],
        /// "config": {...}, "previous": [...], "now_ms": 0}.
        #[arg(long)]
        input: std::path::PathBuf,
        /// Fuel budget [default: the host default, 11M].
        #[arg(long)]
        fuel: Option<u64>,
        /// Memory limit in bytes [default: 10 MiB].
        #[arg(long)]
        max_memory_bytes: Option<usize>,
    },
    /// Measure a plugin's per-call cost on a fixture, without a database:
    /// median/p99 µs per call split into prepare (input JSON + sha256),
    /// setup (store), instantiate, call and validate, plus fuel. Build
    /// with --release for meaningful numbers.
    Bench {
        /// The plugin's .wasm component.
        file: std::path::PathBuf,
        /// A JSON plugin input, as for `plugin test`.
        #[arg(long)]
        input: std::path::PathBuf,
        /// Measured calls.
        #[arg(long, default_value_t = 20_000)]
        calls: usize,
        /// Unmeasured calls first (warm caches and pool slots).
        #[arg(long, default_value_t = 2_000)]
        warmup: usize,
    },
    /// Create a plugin crate from the template (builds and passes its own
    /// tests as generated).
    New {
        /// Crate name (a-z 0-9 - _).
        name: String,
        /// Directory to create it in.
        #[arg(long, default_value = ".")]
        dir: std::path::PathBuf,
    },
    /// Create an ed25519 signing key pair: the secret key is written to
    /// --out, the public key (for PAYRAIL_TRUSTED_PLUGIN_KEYS) printed.
    Keygen {
        /// File for the secret key (created owner-only, never overwritten).
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Sign a plugin's digest; prints the signature for `plugin deploy
    /// --signature`.
    Sign {
        /// The plugin's .wasm component.
        file: std::path::PathBuf,
        /// The secret key file from `plugin keygen`.
        #[arg(long)]
        key: std::path::PathBuf,
    },
}

/// Runs one [`ToolCmd`]; returns the exit code. `engine_config` supplies
/// the engine's configuration (the host's, from the environment), called
/// only by the commands that run a plugin; its error is the caller's, and
/// so is the error returned.
pub fn run<E: From<ToolError>>(
    cmd: &ToolCmd,
    engine_config: impl FnOnce() -> Result<EngineConfig, E>,
) -> Result<i32, E> {
    match cmd {
        ToolCmd::Test {
            file,
            input,
            fuel,
            max_memory_bytes,
        } => {
            let mut limits = PluginLimits::default();
            if let Some(f) = fuel {
                limits.fuel = *f;
            }
            if let Some(m) = max_memory_bytes {
                limits.max_memory_bytes = *m;
            }
            let r = test_plugin(engine_config()?, file, input, &limits)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&r).expect("report serializes")
            );
            Ok(if r.outcome == "ok" { 0 } else { 1 })
        }
        ToolCmd::Bench {
            file,
            input,
            calls,
            warmup,
        } => {
            let limits = PluginLimits::default();
            let r = bench_plugin(engine_config()?, file, input, &limits, *calls, *warmup)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&r).expect("report serializes")
            );
            Ok(0)
        }
        ToolCmd::New { name, dir } => {
            let root = new_plugin(name, dir)?;
            println!("created {}", root.display());
            eprintln!(
                "next: cd {} && cargo test && cargo build --release --target wasm32-wasip2",
                root.display()
            );
            Ok(0)
        }
        ToolCmd::Keygen { out } => {
            let public = keygen(out)?;
            eprintln!(
                "secret key written to {}; trust the public key with {}=<key>",
                out.display(),
                signing::TRUSTED_KEYS_ENV
            );
            println!("{public}");
            Ok(0)
        }
        ToolCmd::Sign { file, key } => {
            let (digest, sig) = sign(file, key)?;
            eprintln!("signed digest {digest}");
            println!("{sig}");
            Ok(0)
        }
    }
}
