//! A rule plugin written in Python (plugins/python-limits/app.py), built
//! from source with componentize-py at test time and run through the real
//! host engine under the limits stated in docs/plugin-guide.md ("Python
//! plugins").
//!
//! Setup: `python3 -m venv target/python-venv/componentize-py-<ver>` and
//! `pip install componentize-py==<ver>` (from PyPI, once; reused while the
//! pinned version matches), guarded by a file lock so parallel test runs do
//! not collide. If python3, venv or pip is missing, or PyPI is unreachable,
//! the test fails with the reason: it is never skipped.

use crate::common::{once, python_venv, repo_root, run_ok, target_dir};
use payrail::engine::{
    CallOutcome, EngineConfig, PluginEngine, PluginFault, PluginLimitOverrides, PluginLimits,
    PreparedInput,
};
use payrail::model::Decision;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The componentize-py release the plugin is built and measured with, the
/// one `payrail plugin new --lang python` pins.
use payrail_plugin_tools::template::COMPONENTIZE_PY;

/// Engine-wide: a Python component is ~18 MB (CPython + its initialized
/// heap snapshot); the default `max_plugin_bytes` is 2 MiB. Hosts set
/// `PAYRAIL_MAX_PLUGIN_BYTES` (cap 64 MiB).
const MAX_PLUGIN_BYTES: usize = 32 << 20;

/// Memory a Python rule needs per call: its linear memory starts at ~12.4
/// MiB (the snapshot), above the 10 MiB default. 16 MiB is the default pool
/// slot size, so a pipeline step can ask for it on a default host.
const PY_MEMORY: usize = 16 << 20;

/// The per-call limits a Python rule runs under (docs/plugin-guide.md): the
/// host defaults (11M fuel, 200 ms) with the step override
/// `"limits": {"max_memory_bytes": 16777216}`.
fn python_limits() -> PluginLimits {
    let step = PluginLimitOverrides {
        max_memory_bytes: Some(PY_MEMORY),
        ..PluginLimitOverrides::default()
    };
    step.validate().expect("a valid step override");
    step.apply(&PluginLimits::default())
}

/// The venv with the pinned componentize-py; the path of its
/// `componentize-py` executable.
fn componentize_py() -> PathBuf {
    python_venv(
        &format!("componentize-py-{COMPONENTIZE_PY}"),
        &[&format!("componentize-py=={COMPONENTIZE_PY}")],
    )
    .join("bin/componentize-py")
}

/// Builds plugins/python-limits/app.py into a component in a build dir of
/// its own (the source tree stays clean). Returns the component bytes.
fn build_component() -> Vec<u8> {
    let exe = componentize_py();
    let build = target_dir().join("python-plugin").join(format!(
        "build-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let src = build.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::copy(
        repo_root().join("plugins/python-limits/app.py"),
        src.join("app.py"),
    )
    .unwrap();
    let out = build.join("limits_py.wasm");
    let started = Instant::now();
    run_ok(
        Command::new(&exe)
            .arg("-d")
            .arg(repo_root().join("wit"))
            .args(["-w", "rule", "componentize", "-p"])
            .arg(&src)
            .arg("app")
            .arg("-o")
            .arg(&out),
        "componentize-py componentize",
    );
    let bytes = std::fs::read(&out).unwrap();
    println!(
        "componentize-py build: {:.1?}, component {} bytes",
        started.elapsed(),
        bytes.len()
    );
    let _ = std::fs::remove_dir_all(&build);
    bytes
}

struct Loaded {
    engine: PluginEngine,
    digest: String,
    bytes: Vec<u8>,
    /// The first call after the compile.
    first_call: CallOutcome,
}

/// Built and compiled once per test binary; every test shares it.
/// A failed setup is kept too, so the other tests fail at once with the same
/// message instead of rebuilding.
fn loaded() -> &'static Loaded {
    static CELL: OnceLock<Result<Loaded, String>> = OnceLock::new();
    once(&CELL, "Python plugin setup", setup)
}

fn setup() -> Loaded {
    let bytes = build_component();
    // a default host except for the plugin size (pool slots: 16 MiB)
    let engine = PluginEngine::new(EngineConfig {
        max_plugin_bytes: MAX_PLUGIN_BYTES,
        max_concurrent_instances: 4,
        ..EngineConfig::default()
    })
    .expect("engine");
    let started = Instant::now();
    let digest = engine.load(&bytes).expect("the Python component loads");
    println!("wasmtime compile: {:.1?}", started.elapsed());
    let first_call = engine
        .call(&digest, &input(5_000, CFG), &python_limits())
        .expect("first call");
    Loaded {
        engine,
        digest,
        bytes,
        first_call,
    }
}

fn input(amount: i64, config: &str) -> PreparedInput {
    let fixture = serde_json::json!({
        "payment": {"kind": "transfer", "amount": amount, "currency": "EUR",
                    "source": "alice", "destination": "bob"},
        "accounts": [{"id": "alice", "currency": "EUR", "balance": 100000},
                     {"id": "bob", "currency": "EUR", "balance": 0}],
        "config": config,
    });
    let input = payrail_plugin_tools::parse_fixture(fixture.to_string().as_bytes()).unwrap();
    PreparedInput::new(input)
}

fn call(amount: i64, config: &str, limits: &PluginLimits) -> Result<CallOutcome, PluginFault> {
    let l = loaded();
    l.engine.call(&l.digest, &input(amount, config), limits)
}

const CFG: &str = r#"{"max_amount": 10000}"#;

#[test]
fn python_component_is_built_from_source_and_too_large_for_the_default_limit() {
    let l = loaded();
    let size = l.bytes.len();
    assert!(
        size > EngineConfig::default().max_plugin_bytes,
        "{size} bytes"
    );
    assert!(size <= MAX_PLUGIN_BYTES, "{size} bytes");
    assert_eq!(l.digest, payrail::engine::digest_of(&l.bytes));
    // the default engine refuses it before compiling
    let default_engine = PluginEngine::new(EngineConfig::default()).unwrap();
    let err = default_engine.load(&l.bytes).unwrap_err();
    assert!(
        matches!(err, payrail::engine::LoadError::TooLarge { .. }),
        "{err}"
    );
}

#[test]
fn approves_at_or_under_max_amount_with_no_postings() {
    for amount in [1, 9_999, 10_000] {
        let out = call(amount, CFG, &python_limits()).expect("call");
        match out.decision {
            Decision::Approve {
                postings,
                events,
                annotations,
            } => {
                assert!(postings.is_empty(), "{postings:?}");
                assert!(events.is_empty(), "{events:?}");
                assert!(annotations.is_empty(), "{annotations:?}");
            }
            other => panic!("amount {amount}: expected approve, got {other:?}"),
        }
    }
    // no max_amount: everything is approved
    let out = call(i64::MAX, "{}", &python_limits()).expect("call");
    assert!(
        matches!(out.decision, Decision::Approve { .. }),
        "{:?}",
        out.decision
    );
}

#[test]
fn declines_above_max_amount_with_the_exact_code() {
    let out = call(10_001, CFG, &python_limits()).expect("call");
    match out.decision {
        Decision::Decline { code, message } => {
            assert_eq!(code, "amount_too_large");
            assert_eq!(message, "amount 10001 EUR is above the limit of 10000");
        }
        other => panic!("expected decline, got {other:?}"),
    }
}

#[test]
fn invalid_config_is_a_plugin_error() {
    for cfg in [
        "not json",
        "[1, 2]",
        r#"{"max_amount": "10"}"#,
        r#"{"max_amount": true}"#,
        r#"{"max_amount": 10, "colour": "red"}"#,
    ] {
        let fault = call(5, cfg, &python_limits()).expect_err(cfg);
        assert_eq!(fault.code(), "plugin_error", "{cfg}: {fault}");
        match fault {
            PluginFault::PluginError { code, message } => {
                assert_eq!(code, "invalid_config", "{cfg}: {message}");
                assert!(!message.is_empty());
            }
            other => panic!("{cfg}: {other}"),
        }
    }
}

/// Runs under the stated limits with headroom, prints the figures for the
/// guide, and fails cleanly (typed fault, not a crash) under the Rust
/// defaults' memory or with too little fuel.
#[test]
fn runs_under_its_stated_limits_and_faults_below_them() {
    let limits = python_limits();
    let first = &loaded().first_call;
    let mut later: Vec<Duration> = Vec::new();
    let mut fuel = vec![first.fuel_used];
    let mut peak = vec![first.peak_memory_bytes];
    for i in 0..5 {
        let out = call(5_000 + i, CFG, &limits).expect("call");
        assert!(matches!(out.decision, Decision::Approve { .. }));
        later.push(out.duration);
        fuel.push(out.fuel_used);
        peak.push(out.peak_memory_bytes);
    }
    let decline = call(20_000, CFG, &limits).expect("decline call");
    assert!(matches!(decline.decision, Decision::Decline { .. }));
    println!(
        "component {} bytes\napprove: fuel {:?}, peak memory {:?}\n\
         decline: fuel {}, peak memory {}, duration {:.2?}\n\
         first call {:.2?}, later calls {:.2?}\nlimits: {limits:?}",
        loaded().bytes.len(),
        fuel,
        peak,
        decline.fuel_used,
        decline.peak_memory_bytes,
        decline.duration,
        first.duration,
        later,
    );
    // deterministic: the same code path costs the same every call
    assert!(
        fuel.windows(2).all(|w| w[0] == w[1]),
        "fuel varies: {fuel:?}"
    );
    let max_fuel = fuel[0].max(decline.fuel_used);
    let max_peak = peak
        .iter()
        .copied()
        .max()
        .unwrap()
        .max(decline.peak_memory_bytes);
    // headroom under the stated limits: fuel at most 10 %, memory at most
    // 7/8 of the limit
    assert!(
        max_fuel * 10 <= limits.fuel,
        "fuel {max_fuel} of {}",
        limits.fuel
    );
    assert!(
        max_peak * 8 <= limits.max_memory_bytes * 7,
        "memory {max_peak} of {}",
        limits.max_memory_bytes
    );
    // (the timeout is enforced by the engine: every call above returned Ok)

    // the Rust defaults (10 MiB) are too small for the Python runtime
    let rust = PluginLimits::default();
    assert!(max_peak > rust.max_memory_bytes, "fits 10 MiB: {max_peak}");
    let fault = call(5_000, CFG, &rust).expect_err("10 MiB must not be enough");
    assert_eq!(fault.code(), "plugin_memory_limit", "{fault}");

    // too little fuel: a typed fault
    let starved = PluginLimits {
        fuel: max_fuel / 2,
        ..limits
    };
    let fault = call(5_000, CFG, &starved).expect_err("half the fuel must not be enough");
    assert_eq!(fault.code(), "plugin_fuel_exhausted", "{fault}");

    // the engine still serves after the faults
    let out = call(20_000, CFG, &limits).expect("call after faults");
    assert!(matches!(out.decision, Decision::Decline { .. }));
}
