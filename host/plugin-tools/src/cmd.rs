//! The `payrail plugin` subcommands that need no database, and running
//! them.

use crate::ToolError;
use crate::bench::bench_plugin;
use crate::keys::{keygen, sign};
use crate::template::{Lang, new_plugin};
use crate::trial::test_plugin;
use payrail_engine::signing;
use payrail_engine::{EngineConfig, PluginLimits};

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
        /// Compare the decision with the fixture's `expect` (the journaled
        /// decision `payrail plugin fixture` writes); exit 1 when they
        /// differ, or when the fixture expects nothing.
        #[arg(long)]
        expect: bool,
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
        /// The plugin's language: a Rust crate, a TypeScript (npm) project,
        /// or a Python (componentize-py) project.
        #[arg(long, value_enum, default_value_t = Lang::Rust)]
        lang: Lang,
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
            expect,
        } => {
            let limits = PluginLimits {
                fuel: fuel.unwrap_or(PluginLimits::default().fuel),
                max_memory_bytes: max_memory_bytes
                    .unwrap_or(PluginLimits::default().max_memory_bytes),
                ..PluginLimits::default()
            };
            let r = test_plugin(engine_config()?, file, input, &limits)?;
            print_json(&r);
            if *expect {
                return Ok(match r.matches_expected {
                    Some(true) => {
                        eprintln!("plugin test: the decision is the one the fixture expects");
                        0
                    }
                    Some(false) => {
                        eprintln!(
                            "plugin test: the decision DIFFERS from the one the fixture expects"
                        );
                        1
                    }
                    None => {
                        eprintln!(
                            "plugin test: --expect, but the fixture has no `expect` (take one with `payrail plugin fixture`)"
                        );
                        1
                    }
                });
            }
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
            print_json(&r);
            Ok(0)
        }
        ToolCmd::New { name, dir, lang } => {
            let root = new_plugin(name, dir, *lang)?;
            println!("created {}", root.display());
            eprintln!("next: cd {} && {}", root.display(), lang.next_steps());
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

/// Prints a report, pretty JSON, on stdout.
fn print_json(report: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(report).expect("report serializes")
    );
}
