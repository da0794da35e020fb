//! Rule plugins in TypeScript: the SDK (plugins/ts-sdk) and the `limits`
//! rule in TypeScript (plugins/ts-limits), built from source at test time
//! with their npm packages and run through the real host engine.
//!
//! Setup, once per test binary: plugins/ts-sdk and plugins/ts-limits are
//! copied to `target/ts-plugin/build` (the source tree stays clean), then
//! in the copy `npm ci` (the committed lock file; npm's cache makes later
//! runs quick), `npm test` (type-check and the rule's own tests in Node)
//! and `npm run build` (esbuild, then componentize-js). Without Node.js,
//! npm or the npm registry the tests fail with the reason: never skipped.

use crate::common::{copy_dir, npm, once, repo_root, run_ok, target_dir};
use payrail::engine::{
    CallOutcome, EngineConfig, PluginEngine, PluginFault, PluginLimits, PreparedInput,
};
use payrail::samples::LIMITS_WASM;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A host for TypeScript plugins: a component is ~12 MB (the SpiderMonkey
/// engine and the rule's initialized heap), above the 2 MiB default.
/// Hosts set `PAYRAIL_MAX_PLUGIN_BYTES=16777216`.
pub const TS_MAX_PLUGIN_BYTES: usize = 16 << 20;

/// The shared fixtures: inputs with the Rust `limits` rule's decisions.
const FIXTURES: &str = "plugins/limits/fixtures";

struct Built {
    /// Held for the process's life: the build dir is this run's.
    _lock: std::fs::File,
    /// The copied projects (`ts-sdk`, `ts-limits`).
    work: PathBuf,
    limits: Vec<u8>,
    /// A rule that reads the clock, randomness and the network.
    probe: Vec<u8>,
    /// `npm test`'s report.
    tested: String,
    build: Duration,
}

/// Built once per test binary; a failed setup is kept, so the other tests
/// fail at once with its message instead of building again.
fn built() -> &'static Built {
    static CELL: OnceLock<Result<Built, String>> = OnceLock::new();
    once(&CELL, "TypeScript plugin setup", setup)
}

/// A rule that reports the clock and randomness it sees as annotations;
/// with `fetch` in its config it calls `fetch`, with `throw` it throws.
const PROBE: &str = r#"
import { approve, rule } from '@payrail/plugin';
export const evaluate = rule((input) => {
  if (input.config.includes('fetch')) fetch('http://127.0.0.1:9/');
  if (input.config.includes('throw')) throw new TypeError('not a rule error');
  return approve()
    .annotation('date_now', String(Date.now()))
    .annotation('new_date', new Date().toISOString())
    .annotation('random', String(Math.random()));
});
"#;

fn setup() -> Built {
    // one build dir, emptied each run (its node_modules is ~400 MB),
    // locked while this process uses it
    let root = target_dir().join("ts-plugin");
    std::fs::create_dir_all(&root).unwrap();
    let lock = std::fs::File::create(root.join(".lock")).unwrap();
    lock.lock().expect("lock the TypeScript build dir");
    let work = root.join("build");
    let _ = std::fs::remove_dir_all(&work);
    let skip = ["node_modules", "dist"];
    copy_dir(
        &repo_root().join("plugins/ts-sdk"),
        &work.join("ts-sdk"),
        &skip,
    );
    let project = work.join("ts-limits");
    copy_dir(&repo_root().join("plugins/ts-limits"), &project, &skip);
    let started = Instant::now();
    npm(&project, &["ci"]);
    println!("npm ci: {:.1?}", started.elapsed());
    let tested = npm(&project, &["test"]);
    let started = Instant::now();
    npm(&project, &["run", "build"]);
    let build = started.elapsed();
    std::fs::write(project.join("src/probe.ts"), PROBE).unwrap();
    payrail_plugin(
        &project,
        &["build", "src/probe.ts", "-o", "dist/probe.wasm"],
    );
    let read = |f: &str| std::fs::read(project.join("dist").join(f)).unwrap();
    Built {
        _lock: lock,
        limits: read("limits_ts.wasm"),
        probe: read("probe.wasm"),
        work,
        tested,
        build,
    }
}

/// Runs the SDK's `payrail-plugin` of the project `dir`.
fn payrail_plugin(dir: &Path, args: &[&str]) -> String {
    run_ok(
        Command::new(dir.join("node_modules/.bin/payrail-plugin"))
            .args(args)
            .current_dir(dir),
        &format!("payrail-plugin {args:?}"),
    )
}

/// An engine that takes TypeScript components, with default limits else.
fn engine() -> &'static PluginEngine {
    static ENGINE: OnceLock<PluginEngine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        PluginEngine::new(EngineConfig {
            max_plugin_bytes: TS_MAX_PLUGIN_BYTES,
            max_concurrent_instances: 4,
            ..EngineConfig::default()
        })
        .expect("engine")
    })
}

/// The digests of the TypeScript and the Rust `limits` in [`engine`].
fn loaded() -> &'static (String, String) {
    static LOADED: OnceLock<(String, String)> = OnceLock::new();
    LOADED.get_or_init(|| {
        let started = Instant::now();
        let ts = engine()
            .load(&built().limits)
            .expect("the TypeScript limits loads");
        println!(
            "wasmtime compile of the TypeScript limits: {:.1?}",
            started.elapsed()
        );
        (
            ts,
            engine().load(LIMITS_WASM).expect("the Rust limits loads"),
        )
    })
}

fn fixture(path: &Path) -> (PreparedInput, serde_json::Value) {
    let (input, expect) =
        payrail_plugin_tools::parse_fixture_expecting(&std::fs::read(path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let expect = expect.unwrap_or_else(|| panic!("{}: no expect", path.display()));
    (PreparedInput::new(input), expect)
}

fn fixtures() -> Vec<PathBuf> {
    let mut all: Vec<PathBuf> = std::fs::read_dir(repo_root().join(FIXTURES))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    all.sort();
    assert!(all.len() >= 10, "{all:?}");
    all
}

fn decision(out: &CallOutcome) -> serde_json::Value {
    serde_json::from_str(&out.output_json).unwrap()
}

#[test]
fn the_sdk_types_are_the_ones_generated_from_the_wit() {
    let b = built();
    // the SDK's copy of the contract is the contract
    assert_eq!(
        std::fs::read_to_string(repo_root().join("plugins/ts-sdk/wit/payrail.wit")).unwrap(),
        std::fs::read_to_string(repo_root().join("wit/payrail.wit")).unwrap(),
        "plugins/ts-sdk/wit/payrail.wit differs from wit/payrail.wit: copy it, then \
         `node_modules/.bin/payrail-plugin types --out ../ts-sdk/src/wit` in plugins/ts-limits"
    );
    let out = b.work.join("types");
    payrail_plugin(
        &b.work.join("ts-limits"),
        &["types", "--out", out.to_str().unwrap()],
    );
    let committed = repo_root().join("plugins/ts-sdk/src/wit");
    let mut count = 0;
    for rel in [
        "payrail.d.ts",
        "interfaces/payrail-plugin-types.d.ts",
        "interfaces/payrail-plugin-host.d.ts",
    ] {
        assert_eq!(
            std::fs::read_to_string(out.join(rel)).unwrap(),
            std::fs::read_to_string(committed.join(rel)).unwrap(),
            "plugins/ts-sdk/src/wit/{rel} is not what jco generates from the WIT"
        );
        count += 1;
    }
    // nothing generated is left uncompared
    let generated = walk(&out);
    assert_eq!(generated.len(), count, "{generated:?}");
    // the types are used: `npm test` type-checked the rule and its tests
    assert!(
        b.tested.contains("# pass 5") && b.tested.contains("# fail 0"),
        "{}",
        b.tested
    );
}

/// The SDK's helpers (builder, `rule`'s error mapping, `account`/`entry`,
/// every config field kind and its errors) pass their own tests in Node.
#[test]
fn the_sdk_passes_its_own_tests() {
    let b = built();
    let sdk_test = b.work.join("ts-sdk/test/sdk.test.ts");
    let out = payrail_plugin(
        &b.work.join("ts-limits"),
        &["test", sdk_test.to_str().unwrap()],
    );
    assert!(
        out.contains("# pass 5") && out.contains("# fail 0"),
        "{out}"
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files.extend(walk(&p));
        } else {
            files.push(p);
        }
    }
    files
}

#[test]
fn typescript_limits_makes_the_rust_limits_decisions_on_the_shared_fixtures() {
    let (ts, rust) = loaded();
    let limits = PluginLimits::default();
    for path in fixtures() {
        let (input, expect) = fixture(&path);
        let name = path.file_name().unwrap().to_string_lossy();
        let by_rust = engine().call(rust, &input, &limits).expect("rust call");
        assert_eq!(decision(&by_rust), expect, "{name}: the Rust limits");
        let by_ts = engine()
            .call(ts, &input, &limits)
            .unwrap_or_else(|f| panic!("{name}: {f}"));
        assert_eq!(decision(&by_ts), expect, "{name}: the TypeScript limits");
        // byte for byte what the journal would hold
        assert_eq!(by_ts.output_json, by_rust.output_json, "{name}");
    }
}

#[test]
fn typescript_limits_refuses_a_bad_config_as_the_rust_one_does() {
    let (ts, rust) = loaded();
    let (template, _) = fixture(&fixtures()[0]);
    for cfg in [
        r#"{"max_amount": "big"}"#,
        r#"{"allowed_currencies": "EUR"}"#,
        r#"{"max_amuont": 5}"#,
        r#"{"per_currency": {"JPY": 1.5}}"#,
        "not json",
        "[1]",
    ] {
        let mut input = template.input.clone();
        input.config = cfg.to_string();
        let input = PreparedInput::new(input);
        for digest in [ts, rust] {
            match engine().call(digest, &input, &PluginLimits::default()) {
                Err(PluginFault::PluginError { code, .. }) => {
                    assert_eq!(code, "invalid_config", "{cfg}")
                }
                other => panic!("{cfg}: {other:?}"),
            }
        }
    }
}

/// Frozen clocks, seeded randomness, no network: the component imports
/// nothing but the contract (`payrail:plugin/host` and its types), so the same input gives the same
/// output on every call, however far apart.
#[test]
fn a_typescript_rule_has_no_clock_randomness_or_network() {
    let digest = engine().load(&built().probe).expect("the probe loads");
    let (limits, _) = loaded();
    for d in [&digest, limits] {
        let imports = engine().imports(d).unwrap();
        assert!(
            imports.contains(&"payrail:plugin/host@0.1.0".to_string())
                && imports.iter().all(|i| i.starts_with("payrail:plugin/")),
            "a TypeScript rule imports only the contract, no WASI: {imports:?}"
        );
    }
    let (input, _) = fixture(&fixtures()[0]);
    let first = engine()
        .call(&digest, &input, &PluginLimits::default())
        .expect("call");
    std::thread::sleep(Duration::from_millis(20));
    let again = engine()
        .call(&digest, &input, &PluginLimits::default())
        .expect("call");
    // the clock does not move and the random numbers repeat: each call
    // starts from the build's snapshot
    assert_eq!(first.output_json, again.output_json);
    println!("what a TypeScript rule sees: {}", first.output_json);
    let d = decision(&first);
    let notes = &d["annotations"];
    assert!(
        notes["random"].as_str().unwrap().parse::<f64>().is_ok(),
        "{d}"
    );
    assert!(
        notes["date_now"].as_str().unwrap().parse::<u64>().is_ok(),
        "{d}"
    );
    // `fetch` exists in the engine but has nothing to call: a trap, which
    // fails the payment as any fault does
    let mut fetching = input.input.clone();
    fetching.config = r#"{"fetch": true}"#.into();
    let fault = engine()
        .call(
            &digest,
            &PreparedInput::new(fetching),
            &PluginLimits::default(),
        )
        .expect_err("fetch must not work");
    assert_eq!(fault.code(), "plugin_trap", "{fault}");
    // an exception that is not the SDK's error is a plugin error with its
    // message, not a trap without one
    let mut throwing = input.input.clone();
    throwing.config = r#"{"throw": true}"#.into();
    match engine().call(
        &digest,
        &PreparedInput::new(throwing),
        &PluginLimits::default(),
    ) {
        Err(PluginFault::PluginError { code, message }) => {
            assert_eq!(code, "uncaught_exception");
            assert_eq!(message, "not a rule error");
        }
        other => panic!("{other:?}"),
    }
}

/// The figures in docs/plugin-guide.md ("Languages side by side"), beside
/// the Rust `limits` on the same fixture in the same run, and the limits a
/// TypeScript rule needs.
#[test]
fn typescript_figures_beside_rust_and_the_limits_it_needs() {
    let (ts, rust) = loaded();
    let b = built();
    let (input, _) = fixture(&fixtures()[0]);
    let limits = PluginLimits::default();
    let measure = |digest: &str| -> (u64, usize, Vec<Duration>) {
        let outs: Vec<CallOutcome> = (0..6)
            .map(|_| engine().call(digest, &input, &limits).expect("call"))
            .collect();
        // deterministic: the same input costs the same fuel every call
        assert!(outs.windows(2).all(|w| w[0].fuel_used == w[1].fuel_used));
        let peak = outs.iter().map(|o| o.peak_memory_bytes).max().unwrap();
        (
            outs[0].fuel_used,
            peak,
            outs.iter().map(|o| o.duration).collect(),
        )
    };
    let (ts_fuel, ts_peak, ts_times) = measure(ts);
    let (rust_fuel, rust_peak, rust_times) = measure(rust);
    // a decline formats a message: the most fuel of the fixtures
    let (decline, _) = fixture(&fixtures()[6]);
    let decline_fuel = |d: &str| engine().call(d, &decline, &limits).expect("call").fuel_used;
    let (ts_decline, rust_decline) = (decline_fuel(ts), decline_fuel(rust));
    assert!(ts_decline * 4 <= limits.fuel, "fuel {ts_decline}");
    println!(
        "| | TypeScript | Rust |\n|---|---|---|\n\
         | component bytes | {} | {} |\n\
         | fuel per call (approve / decline) | {ts_fuel} / {ts_decline} | {rust_fuel} / {rust_decline} |\n\
         | peak memory bytes | {ts_peak} | {rust_peak} |\n\
         | call times | {ts_times:.2?} | {rust_times:.2?} |\n\
         build (esbuild + componentize-js): {:.1?}",
        b.limits.len(),
        LIMITS_WASM.len(),
        b.build,
    );
    let size = b.limits.len();
    assert!(size > EngineConfig::default().max_plugin_bytes, "{size}");
    assert!(size <= TS_MAX_PLUGIN_BYTES, "{size}");
    let err = PluginEngine::new(EngineConfig::default())
        .unwrap()
        .load(&b.limits)
        .unwrap_err();
    assert!(
        matches!(err, payrail::engine::LoadError::TooLarge { .. }),
        "{err}"
    );
    // under the default per-call limits, with headroom: fuel at most a
    // quarter (the declines, which format a message, take the most: ~21%),
    // memory at most 15/16 of 10 MiB
    assert!(ts_fuel * 4 <= limits.fuel, "fuel {ts_fuel}");
    assert!(
        ts_peak * 16 <= limits.max_memory_bytes * 15,
        "memory {ts_peak}"
    );
    // too little fuel or memory: a typed fault, and the engine serves on
    let starved = PluginLimits {
        fuel: ts_fuel / 2,
        ..limits
    };
    let small = PluginLimits {
        max_memory_bytes: ts_peak / 2,
        ..limits
    };
    for (tight, code) in [
        (starved, "plugin_fuel_exhausted"),
        (small, "plugin_memory_limit"),
    ] {
        let fault = engine().call(ts, &input, &tight).expect_err(code);
        assert_eq!(fault.code(), code, "{fault}");
    }
    engine()
        .call(ts, &input, &limits)
        .expect("a call after the faults");
}
