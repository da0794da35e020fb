//! `payrail plugin test`: one call on a fixture, its costs against the
//! limits.

use crate::Result;
use crate::fixture::{Loaded, load};
use payrail_engine::{EngineConfig, PluginLimits, PreparedInput};
use serde::Serialize;
use std::path::Path;

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
    /// What the component imports: the capabilities it could reach for
    /// (a Rust or TypeScript rule: only the contract, `payrail:plugin/*`).
    pub imports: Vec<String>,
    /// The decision the fixture expects (`expect`), if it says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<serde_json::Value>,
    /// Whether the decision is the expected one (absent: no expectation).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matches_expected: Option<bool>,
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
    let Loaded {
        engine,
        digest,
        input,
        expect,
    } = load(config, wasm, fixture)?;
    let imports = engine.imports(&digest).unwrap_or_default();
    let prepared = PreparedInput::new(input);
    let input_bytes = measure(prepared.json.len() as u64, limits.max_input_bytes as u64);
    let mut report = match engine.call(&digest, &prepared, limits) {
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
            imports,
            expected: None,
            matches_expected: None,
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
            imports,
            expected: None,
            matches_expected: None,
        },
    };
    // a fault never matches: the journal holds only decisions
    if let Some(e) = expect {
        report.matches_expected = Some(report.decision.as_ref() == Some(&e));
        report.expected = Some(e);
    }
    Ok(report)
}
