//! The yardstick (issue 20): host instructions per payment, counted by
//! callgrind, so the figure does not move with the machine's speed or load
//! the way seconds do.
//!
//! `payrail-bench yardstick` sets up, per workload, two identical fresh
//! databases ([`ACCOUNTS`] customers) natively, then runs this executable
//! twice under `valgrind --tool=callgrind` in its measured mode
//! (`--measured N`): one client paying sequentially through
//! `Processor::pay`, a fixed seed, so every run makes the same payments in
//! the same order. The short run makes [`WARMUP_PAYMENTS`], the long run
//! those plus `--payments`; everything else the process does (engine start,
//! loading the plugins, the pool's connections, the runtime) is in both, so
//! `(Ir(long) - Ir(short)) / payments` is the host's instructions per
//! payment, over every thread of the process (callgrind's totals).
//! Postgres is another process and is not counted.
//!
//! The figure depends on the build profile (debug: the host crates at
//! opt-level 0); `bench/yardstick.json` records it per profile and the CI
//! guard (tests/bench_smoke.rs) fails a change that raises it by more than
//! [`TOLERANCE`]. See docs/performance.md, "The yardstick".

use crate::DATABASE_PREFIX;
use crate::http::{HttpTarget, ServeChild};
use crate::report::PathKind;
use crate::workload::{self, RequestGen, Workload};
use clap::Args;
use payrail::apikeys::{self, Scope};
use payrail::config::Config;
use payrail::db;
use payrail::engine::{PluginEngine, SlowCalls};
use payrail::error::{Error, Result};
use payrail::model::{DEFAULT_TENANT, PaymentStatus};
use payrail::processor::Processor;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Customer accounts of the yardstick's ledger: small, so the setup is
/// quick; the host's work per payment does not depend on the count.
pub const ACCOUNTS: usize = 1_000;
/// Payments of the short run, also made first by the long run: they warm
/// the caches (plugins instantiated, statements prepared, pool filled).
pub const WARMUP_PAYMENTS: u64 = 20;
/// Payments counted by default (the long run's extra payments).
pub const DEFAULT_PAYMENTS: u64 = 100;
/// Most payments counted (about 60 ms each under callgrind in a debug
/// build: 10,000 is ten minutes).
pub const MAX_PAYMENTS: u64 = 10_000;
/// The workload's seed: the same payments every time.
pub const SEED: u64 = 20;
/// Default database name stem: `{stem}_{workload}_{short|long}`.
pub const DATABASE: &str = "payrail_bench_yardstick";
/// The environment variable naming the valgrind executable (default:
/// `valgrind` on the `PATH`).
pub const VALGRIND: &str = "PAYRAIL_VALGRIND";
/// A change that raises the figure by more than this fraction fails the
/// guard.
pub const TOLERANCE: f64 = 0.10;
/// The recorded figures, in this repository.
pub const RECORDED_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../bench/yardstick.json");
/// Longest a measured process may run under valgrind, s.
const MAX_MEASURED_SECS: u64 = 900;
/// Connections of the measured process: one client needs one, the second
/// is for the batch worker's lock-free reads.
const POOL_SIZE: usize = 2;
/// The longest suffix [`YardstickArgs::database`] gets.
const LONGEST_SUFFIX: &str = "_spread_fee_short";

/// Options of `payrail-bench yardstick`.
#[derive(Debug, Clone, Args)]
pub struct YardstickArgs {
    /// Workloads to count, comma-separated.
    #[arg(long, value_delimiter = ',', default_values = ["uniform", "hot_fee"])]
    pub workloads: Vec<Workload>,
    /// Paths to count, comma-separated: `in-process` (the bench process
    /// paying through `Processor::pay`) and `http` (`payrail serve` under
    /// callgrind, paid over loopback HTTP by this process, which is not
    /// counted).
    #[arg(long, value_delimiter = ',', default_values = ["in-process"])]
    pub paths: Vec<PathKind>,
    /// Payments counted per workload (the long run's payments past the
    /// short run's).
    #[arg(long, default_value_t = DEFAULT_PAYMENTS)]
    pub payments: u64,
    /// Database name stem: the yardstick drops and recreates
    /// `{stem}_{workload}_short` and `_long` (must start with
    /// `payrail_bench`).
    #[arg(long, default_value = DATABASE)]
    pub database: String,
    /// Where callgrind's output files, the logs and `yardstick.json` go.
    #[arg(long, default_value = "target/yardstick")]
    pub out: PathBuf,
    /// Internal: pay this many payments in this process (no valgrind) on
    /// `--database` with the one workload of `--workloads`, then exit.
    #[arg(long, hide = true)]
    pub measured: Option<u64>,
}

fn invalid(msg: String) -> Error {
    Error::invalid("invalid_yardstick", msg)
}

impl YardstickArgs {
    /// Checks every option against its limit.
    pub fn validate(&self) -> Result<()> {
        if !(1..=MAX_PAYMENTS).contains(&self.payments) {
            return Err(invalid(format!("--payments must be 1 to {MAX_PAYMENTS}")));
        }
        if self.workloads.is_empty() || self.paths.is_empty() {
            return Err(invalid("give at least one workload and one path".into()));
        }
        let measured_ok =
            |n: u64| (1..=MAX_PAYMENTS + WARMUP_PAYMENTS).contains(&n) && self.workloads.len() == 1;
        if self.measured.is_some_and(|n| !measured_ok(n)) {
            return Err(invalid(format!(
                "--measured takes 1 to {} payments and one workload",
                MAX_PAYMENTS + WARMUP_PAYMENTS
            )));
        }
        let name_ok = self.database.len() <= 63 - LONGEST_SUFFIX.len()
            && self.database.starts_with(DATABASE_PREFIX)
            && self
                .database
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !name_ok {
            return Err(invalid(format!(
                "--database {:?}: the yardstick drops and recreates databases named after it, so it must start with {DATABASE_PREFIX:?} and hold only a-z, 0-9 and _ (at most {} bytes)",
                self.database,
                63 - LONGEST_SUFFIX.len()
            )));
        }
        Ok(())
    }
}

/// The build profile the figure belongs to: the host crates' optimization
/// changes the count several times over.
pub fn profile() -> &'static str {
    if cfg!(debug_assertions) {
        "dev"
    } else {
        "release"
    }
}

/// One workload's count.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Figure {
    pub workload: String,
    /// `in-process` or `http` (older records lack it: in-process).
    #[serde(default = "in_process")]
    pub path: String,
    pub profile: String,
    /// `(Ir(long) - Ir(short)) / payments`.
    pub instructions_per_payment: f64,
    /// Payments the figure is over.
    pub payments: u64,
    /// callgrind's total of the short run (setup, warm-up and exit).
    pub short_run_instructions: u64,
    /// callgrind's total of the long run.
    pub long_run_instructions: u64,
    /// `valgrind --version`.
    pub valgrind: String,
}

fn in_process() -> String {
    PathKind::InProcess.name().into()
}

impl Figure {
    /// Its name in `bench/yardstick.json`: the workload in-process,
    /// `http_{workload}` over HTTP.
    pub fn key(&self) -> String {
        figure_key(&self.path, &self.workload)
    }
}

fn figure_key(path: &str, workload: &str) -> String {
    if path == PathKind::InProcess.name() {
        workload.to_string()
    } else {
        format!("{path}_{workload}")
    }
}

/// Instance slots of the yardstick's engine. One client calls one plugin
/// at a time; and valgrind cannot map the address space the default
/// pool reserves (~8 GiB per linear memory, four memories per slot: 1 TiB
/// at the default slot count, where valgrind's limit is 128 GiB).
const INSTANCE_SLOTS: u32 = 2;

/// The engine of every yardstick process, from the built-in defaults
/// alone: the environment must not change what is counted. Slow calls keep
/// their priority: under valgrind a call is ~50x slower and would cross
/// the slow-call line at random, retiring its thread.
fn engine() -> Result<Arc<PluginEngine>> {
    let mut config = Config::load(None, std::iter::empty())?.engine();
    config.slow_calls = SlowCalls::OFF;
    config.max_concurrent_instances = INSTANCE_SLOTS;
    let engine = PluginEngine::new(config)
        .map_err(|e| Error::Setup(format!("cannot create the wasm engine: {e:#}")))?
        .with_default_artifact_cache();
    Ok(Arc::new(engine))
}

/// The measured mode: `payments` payments of `workload`, one at a time,
/// on the prepared database `database` of the server at `url`.
pub async fn pay(url: &str, workload: Workload, database: &str, payments: u64) -> Result<()> {
    let pool = db::pool(&db::url_with_database(url, database), POOL_SIZE)?;
    let mut settings = Config::load(None, std::iter::empty())?.processor();
    // not half the cores: the same settings on every machine
    settings.tenant_pipelines = 1;
    let processor = Processor::new(pool, engine()?, settings);
    let mut requests = RequestGen::new(workload, ACCOUNTS, SEED)?;
    for n in 0..payments {
        let req = requests.next_request();
        let outcome = processor
            .pay(DEFAULT_TENANT, &format!("y{n}"), &req)
            .await?;
        if outcome.response.status != PaymentStatus::Approved {
            // a decline runs less code: the figure would not be comparable
            return Err(Error::Setup(format!(
                "yardstick payment {n} was not approved: {:?}",
                outcome.response.status
            )));
        }
    }
    Ok(())
}

/// `valgrind --version`, or why valgrind cannot run.
pub fn valgrind_version() -> Result<String> {
    let exe = valgrind_exe();
    let out = std::process::Command::new(&exe)
        .arg("--version")
        .output()
        .map_err(|e| {
            Error::Setup(format!(
                "the yardstick counts instructions with valgrind, which did not run ({}: {e}): install it (apt-get install valgrind) or set {VALGRIND}",
                exe.display()
            ))
        })?;
    if !out.status.success() {
        return Err(Error::Setup(format!(
            "{} --version failed ({})",
            exe.display(),
            out.status
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn valgrind_exe() -> PathBuf {
    std::env::var_os(VALGRIND)
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from("valgrind"), PathBuf::from)
}

/// Reads callgrind's total instruction count from its output file (the
/// `summary:` line, else `totals:`).
pub fn read_total(text: &str) -> Option<u64> {
    let find = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
    };
    find("summary:").or_else(|| find("totals:"))
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::Setup(format!("cannot {what} {}: {e}", path.display()))
}

async fn admin_client(url: &str) -> Result<tokio_postgres::Client> {
    let admin_url = db::url_with_database(url, "postgres");
    let (client, conn) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

/// Drops and recreates database `name`, then sets up the ledger (natively:
/// the measured process only pays).
async fn fresh_database(
    admin: &tokio_postgres::Client,
    url: &str,
    name: &str,
    engine: &Arc<PluginEngine>,
) -> Result<()> {
    assert!(
        name.starts_with(DATABASE_PREFIX),
        "only bench databases are dropped"
    );
    // two statements: DROP/CREATE DATABASE refuse to run in one batch
    admin
        .batch_execute(&format!("drop database if exists {name} with (force)"))
        .await?;
    admin
        .batch_execute(&format!("create database {name}"))
        .await?;
    let pool = db::pool(&db::url_with_database(url, name), 1)?;
    let set_up = workload::setup(&pool, engine, ACCOUNTS).await;
    // closed now: the drop after the count would otherwise kill it
    pool.close();
    set_up
}

/// The configuration of the counted `payrail serve`: the yardstick's
/// engine and processor settings (those of [`engine`] and [`pay`]), and
/// nothing that runs on a timer (no relay, the reaper and the key cache at
/// their longest), so the count follows the payments, not the wall clock
/// valgrind stretches.
fn serve_config() -> String {
    format!(
        "[server]\napi_key_cache_ms = {}\n\
         [database]\npool_size = {POOL_SIZE}\n\
         [plugins]\nmax_concurrent_instances = {INSTANCE_SLOTS}\n\
         [tenants]\nplugin_thread_nice = {}\nmax_running_pipelines = 1\n\
         [idempotency]\nreaper_interval_secs = 86400\n\
         [outbox]\nrelay = false\n",
        payrail::apikeys::MAX_KEY_CACHE_MS,
        SlowCalls::OFF.nice,
    )
}

/// `url` with `sslmode=disable` unless it sets a mode: whether the
/// server offers TLS is the server's configuration, and encrypting every
/// query is host work the count would carry (about 10% of a payment's
/// instructions) on one machine and not on another.
fn without_tls(url: &str) -> String {
    if url.contains("sslmode=") {
        url.to_string()
    } else if url.contains('?') {
        format!("{url}&sslmode=disable")
    } else {
        format!("{url}?sslmode=disable")
    }
}

/// One counted process: `payments` payments of `workload` on `database`
/// of the server at `url`, its files in `out`.
struct Run<'a> {
    url: &'a str,
    workload: Workload,
    database: String,
    payments: u64,
    out: &'a Path,
}

impl Run<'_> {
    fn file(&self, path: PathKind, ext: &str) -> PathBuf {
        let stem = figure_key(path.name(), self.workload.name());
        self.out.join(format!("{stem}-{}.{ext}", self.payments))
    }

    /// `valgrind --tool=callgrind exe`, its environment cleared of
    /// payrail's settings (they would change the code counted), logs at
    /// `warn`.
    fn valgrind(&self, path: PathKind, exe: &Path) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(valgrind_exe());
        cmd.arg("--tool=callgrind")
            .arg("--fair-sched=yes")
            .arg(format!(
                "--callgrind-out-file={}",
                self.file(path, "callgrind").display()
            ))
            .arg(exe);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PAYRAIL_") {
                cmd.env_remove(key);
            }
        }
        cmd.env("PAYRAIL_LOG", "warn").kill_on_drop(true);
        cmd
    }

    /// callgrind's total, from the output file of the process that ended.
    fn total(&self, path: PathKind) -> Result<u64> {
        let file = self.file(path, "callgrind");
        let text = std::fs::read_to_string(&file).map_err(|e| io_error("read", &file, e))?;
        read_total(&text)
            .ok_or_else(|| Error::Setup(format!("no summary or totals line in {}", file.display())))
    }

    /// This executable's measured mode under callgrind. Returns the total.
    async fn in_process(self) -> Result<u64> {
        let exe = std::env::current_exe()
            .map_err(|e| Error::Setup(format!("cannot find the payrail-bench executable: {e}")))?;
        let log_path = self.file(PathKind::InProcess, "log");
        let log = std::fs::File::create(&log_path).map_err(|e| io_error("create", &log_path, e))?;
        let log_too = log
            .try_clone()
            .map_err(|e| io_error("open", &log_path, e))?;
        let mut child = self
            .valgrind(PathKind::InProcess, &exe)
            .args(["yardstick", "--measured", &self.payments.to_string()])
            .args([
                "--workloads",
                self.workload.name(),
                "--database",
                &self.database,
            ])
            .env("DATABASE_URL", self.url)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_too)
            .spawn()
            .map_err(|e| Error::Setup(format!("cannot start valgrind: {e}")))?;
        let waited = tokio::time::timeout(Duration::from_secs(MAX_MEASURED_SECS), child.wait());
        let status = match waited.await {
            Ok(status) => status.map_err(|e| Error::Setup(format!("valgrind: {e}")))?,
            Err(_) => {
                return Err(Error::Setup(format!(
                    "the measured process ran longer than {MAX_MEASURED_SECS} s under valgrind: see {}",
                    log_path.display()
                )));
            }
        };
        if !status.success() {
            return Err(Error::Setup(format!(
                "the measured process failed ({status}): see {}",
                log_path.display()
            )));
        }
        self.total(PathKind::InProcess)
    }

    /// `payrail serve` under callgrind, paid over loopback HTTP by this
    /// process (not counted), one request at a time, then stopped with
    /// SIGTERM. Returns the server's total.
    async fn http(self) -> Result<u64> {
        let db_url = db::url_with_database(self.url, &self.database);
        let secret = {
            let pool = db::pool(&db_url, 1)?;
            let key = apikeys::create(&pool.get().await?, DEFAULT_TENANT, &[Scope::Payments]).await;
            pool.close();
            key?.secret
        };
        let config = self.file(PathKind::Http, "toml");
        std::fs::write(&config, serve_config()).map_err(|e| io_error("write", &config, e))?;
        let mut cmd = self.valgrind(PathKind::Http, &crate::payrail_binary()?);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&config)
            .env("DATABASE_URL", &db_url);
        let log = self.file(PathKind::Http, "log");
        let server = ServeChild::spawn(cmd, &log).await?;
        let client = HttpTarget::new(vec![server.base_url.clone()], secret, 1)?;
        let paid = tokio::time::timeout(Duration::from_secs(MAX_MEASURED_SECS), async {
            let mut requests =
                RequestGen::new(self.workload, ACCOUNTS, SEED).map_err(|e| e.to_string())?;
            for n in 0..self.payments {
                let req = requests.next_request();
                match client.pay(0, &format!("y{n}"), &req).await {
                    Ok(true) => {}
                    Ok(false) => return Err(format!("yardstick payment {n} was declined")),
                    Err(e) => return Err(format!("yardstick payment {n}: {e}")),
                }
            }
            Ok(())
        });
        let paid = paid.await;
        let stopped = server.stop().await;
        match paid {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(Error::Setup(format!("{e}: see {}", log.display()))),
            Err(_) => {
                return Err(Error::Setup(format!(
                    "the counted server took longer than {MAX_MEASURED_SECS} s: see {}",
                    log.display()
                )));
            }
        }
        if !stopped {
            return Err(Error::Setup(format!(
                "the counted server did not exit cleanly on SIGTERM: see {}",
                log.display()
            )));
        }
        self.total(PathKind::Http)
    }
}

/// One workload's figure: the short and the long run side by side (one
/// core each), each on a fresh database of its own, dropped after.
async fn measure_workload(
    admin: &tokio_postgres::Client,
    url: &str,
    engine: &Arc<PluginEngine>,
    args: &YardstickArgs,
    path: PathKind,
    workload: Workload,
    valgrind: &str,
) -> Result<Figure> {
    let name = |run: &str| format!("{}_{}_{run}", args.database, workload.name());
    let (short_db, long_db) = (name("short"), name("long"));
    fresh_database(admin, url, &short_db, engine).await?;
    fresh_database(admin, url, &long_db, engine).await?;
    let long_payments = WARMUP_PAYMENTS + args.payments;
    let run = |db: &str, payments: u64| {
        let run = Run {
            url,
            workload,
            database: db.to_string(),
            payments,
            out: &args.out,
        };
        async move {
            match path {
                PathKind::InProcess => run.in_process().await,
                PathKind::Http => run.http().await,
            }
        }
    };
    let counted = tokio::try_join!(
        run(&short_db, WARMUP_PAYMENTS),
        run(&long_db, long_payments)
    );
    for db in [&short_db, &long_db] {
        admin
            .batch_execute(&format!("drop database if exists {db} with (force)"))
            .await?;
    }
    let (short, long) = counted?;
    if long <= short {
        return Err(Error::Setup(format!(
            "the long run counted {long} instructions, the short run {short}: nothing to divide"
        )));
    }
    Ok(Figure {
        workload: workload.name().into(),
        path: path.name().into(),
        profile: profile().into(),
        instructions_per_payment: (long - short) as f64 / args.payments as f64,
        payments: args.payments,
        short_run_instructions: short,
        long_run_instructions: long,
        valgrind: valgrind.into(),
    })
}

/// Counts every workload of `args` on the server at `url` and writes the
/// figures to `{out}/yardstick.json`.
pub async fn measure(url: &str, args: &YardstickArgs) -> Result<Vec<Figure>> {
    args.validate()?;
    let url = &without_tls(url);
    let valgrind = valgrind_version()?;
    std::fs::create_dir_all(&args.out).map_err(|e| io_error("create", &args.out, e))?;
    // Set up natively with the measured processes' engine: it leaves the
    // compiled plugins in the artifact cache, so they are loaded, not
    // compiled again under valgrind (minutes there).
    let engine = engine()?;
    let admin = admin_client(url).await?;
    let mut figures = Vec::new();
    for &path in &args.paths {
        for &workload in &args.workloads {
            let started = Instant::now();
            let f = measure_workload(&admin, url, &engine, args, path, workload, &valgrind).await?;
            eprintln!(
                "yardstick  {} ({}): {:.0} instructions per payment over {} payments ({:.0} s)",
                f.key(),
                f.profile,
                f.instructions_per_payment,
                f.payments,
                started.elapsed().as_secs_f64()
            );
            figures.push(f);
        }
    }
    let path = args.out.join("yardstick.json");
    let json = serde_json::to_string_pretty(&figures).expect("figures serialize");
    std::fs::write(&path, json).map_err(|e| io_error("write", &path, e))?;
    Ok(figures)
}

/// `payrail-bench yardstick`: the measured mode with `--measured`, else
/// the count, each figure printed as a JSON line with its comparison to
/// the recorded one (not enforced here: that is the CI guard's job).
pub async fn run(url: &str, args: &YardstickArgs) -> Result<i32> {
    args.validate()?;
    if let Some(payments) = args.measured {
        pay(url, args.workloads[0], &args.database, payments).await?;
        return Ok(0);
    }
    let figures = measure(url, args).await?;
    let recorded = Recorded::load(Path::new(RECORDED_FILE)).ok();
    for f in &figures {
        println!("{}", serde_json::to_string(f).expect("a figure serializes"));
        let was = recorded
            .as_ref()
            .and_then(|r| r.figure(&f.profile, &f.key()));
        eprintln!(
            "yardstick  {}",
            judge(was, f.instructions_per_payment).line(f)
        );
    }
    Ok(0)
}

/// `bench/yardstick.json`: the recorded figures, per build profile.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Recorded {
    /// What the file is, for its reader.
    #[serde(default)]
    pub about: String,
    /// By profile (`dev`, `release`).
    pub profiles: BTreeMap<String, ProfileRecord>,
}

/// The figures of one profile.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProfileRecord {
    /// UTC date of the recording.
    pub recorded_on: String,
    pub valgrind: String,
    /// Payments each figure is over.
    pub payments: u64,
    /// By workload.
    pub instructions_per_payment: BTreeMap<String, f64>,
    /// The repeatability measured for this profile (kept by a
    /// re-recording: it describes the method, not one figure).
    #[serde(default)]
    pub spread: serde_json::Value,
}

impl Recorded {
    /// Reads the file at `path`.
    pub fn load(path: &Path) -> Result<Recorded> {
        let text = std::fs::read_to_string(path).map_err(|e| io_error("read", path, e))?;
        serde_json::from_str(&text)
            .map_err(|e| Error::Setup(format!("{} is not a yardstick record: {e}", path.display())))
    }

    /// Writes it to `path`.
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_string_pretty(self).expect("the record serializes") + "\n";
        std::fs::write(path, json).map_err(|e| io_error("write", path, e))
    }

    /// The recorded figure of `workload` in `profile`.
    pub fn figure(&self, profile: &str, workload: &str) -> Option<f64> {
        self.profiles
            .get(profile)?
            .instructions_per_payment
            .get(workload)
            .copied()
    }

    /// Replaces the record of the figures' profile by `figures` (all of one
    /// profile), keeping its measured spread.
    pub fn record(&mut self, figures: &[Figure]) {
        let Some(first) = figures.first() else {
            return;
        };
        let spread = self
            .profiles
            .get(&first.profile)
            .map(|p| p.spread.clone())
            .unwrap_or_default();
        let record = ProfileRecord {
            recorded_on: utc_date(std::time::SystemTime::now()),
            valgrind: first.valgrind.clone(),
            payments: first.payments,
            instructions_per_payment: figures
                .iter()
                .map(|f| (f.key(), f.instructions_per_payment.round()))
                .collect(),
            spread,
        };
        self.profiles.insert(first.profile.clone(), record);
    }
}

/// A figure against the recorded one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// Nothing recorded for this profile and workload: not checked.
    Unrecorded,
    /// Within [`TOLERANCE`] either way; `change` is the fraction.
    Within { recorded: f64, change: f64 },
    /// More than [`TOLERANCE`] above: the guard fails.
    Higher { recorded: f64, change: f64 },
    /// More than [`TOLERANCE`] below: re-record to lock the gain in.
    Lower { recorded: f64, change: f64 },
}

/// Compares `measured` with `recorded`.
pub fn judge(recorded: Option<f64>, measured: f64) -> Verdict {
    let Some(recorded) = recorded.filter(|r| *r > 0.0) else {
        return Verdict::Unrecorded;
    };
    let change = measured / recorded - 1.0;
    // as the guard is stated: over recorded × 1.10 fails
    if measured > recorded * (1.0 + TOLERANCE) {
        Verdict::Higher { recorded, change }
    } else if measured < recorded * (1.0 - TOLERANCE) {
        Verdict::Lower { recorded, change }
    } else {
        Verdict::Within { recorded, change }
    }
}

/// How to re-record the figures after a deliberate change.
pub const RERECORD: &str =
    "PAYRAIL_YARDSTICK_RECORD=1 cargo test -p payrail-bench --test bench_smoke yardstick";

impl Verdict {
    /// One line for a person: both numbers and what to do.
    pub fn line(&self, f: &Figure) -> String {
        let now = format!(
            "{} ({}): {:.0} instructions per payment",
            f.key(),
            f.profile,
            f.instructions_per_payment
        );
        match *self {
            Verdict::Unrecorded => format!(
                "{now}; no recorded figure for profile {} in bench/yardstick.json: not checked (record it: {RERECORD})",
                f.profile
            ),
            Verdict::Within { recorded, change } => {
                format!(
                    "{now}, recorded {recorded:.0} ({:+.1}%): within ±{:.0}%",
                    change * 100.0,
                    TOLERANCE * 100.0
                )
            }
            Verdict::Higher { recorded, change } => format!(
                "{now}, recorded {recorded:.0} ({:+.1}%): more than {:.0}% over the recorded figure; if the extra work is deliberate, re-record: {RERECORD}",
                change * 100.0,
                TOLERANCE * 100.0
            ),
            Verdict::Lower { recorded, change } => format!(
                "{now}, recorded {recorded:.0} ({:+.1}%): more than {:.0}% under the recorded figure; lock the gain in: {RERECORD}",
                change * 100.0,
                TOLERANCE * 100.0
            ),
        }
    }
}

/// `YYYY-MM-DD` (UTC) of `t` (Howard Hinnant's civil-from-days).
fn utc_date(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// `payrail bench --yardstick`: counts both workloads (a few minutes) and
/// adds the figures, with the recorded ones, to the report in `out`
/// (`report.json` gets a `yardstick` field, `report.md` a section).
pub async fn add_to_report(url: &str, out: &Path) -> Result<()> {
    let args = YardstickArgs {
        workloads: vec![Workload::Uniform, Workload::HotFee],
        // over HTTP too when there is a `payrail` binary to count
        paths: if crate::payrail_binary().is_ok() {
            vec![PathKind::InProcess, PathKind::Http]
        } else {
            vec![PathKind::InProcess]
        },
        payments: DEFAULT_PAYMENTS,
        database: DATABASE.into(),
        out: out.join("yardstick"),
        measured: None,
    };
    let figures = measure(url, &args).await?;
    let recorded = Recorded::load(Path::new(RECORDED_FILE)).ok();
    let mut md = String::from(
        "\n## The yardstick: host instructions per payment\n\n\
         callgrind, one client paying sequentially, the host process only \
         (docs/performance.md, \"The yardstick\").\n\n\
         | path | workload | profile | instructions/payment | vs recorded |\n|---|---|---|---:|---|\n",
    );
    let mut rows = Vec::new();
    for f in &figures {
        let was = recorded
            .as_ref()
            .and_then(|r| r.figure(&f.profile, &f.key()));
        let verdict = judge(was, f.instructions_per_payment);
        println!("yardstick  {}", verdict.line(f));
        let vs = match verdict {
            Verdict::Unrecorded => "not recorded".to_string(),
            Verdict::Within { recorded, change }
            | Verdict::Higher { recorded, change }
            | Verdict::Lower { recorded, change } => {
                format!("{recorded:.0} ({:+.1}%)", change * 100.0)
            }
        };
        md.push_str(&format!(
            "| {} | {} | {} | {:.0} | {vs} |\n",
            f.path, f.workload, f.profile, f.instructions_per_payment
        ));
        rows.push(serde_json::json!({"figure": f, "recorded": was}));
    }
    let json_path = out.join("report.json");
    let text = std::fs::read_to_string(&json_path).map_err(|e| io_error("read", &json_path, e))?;
    let mut report: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::Setup(format!("{} is not JSON: {e}", json_path.display())))?;
    report["yardstick"] = serde_json::Value::Array(rows);
    let pretty = serde_json::to_string_pretty(&report).expect("the report serializes");
    std::fs::write(&json_path, pretty).map_err(|e| io_error("write", &json_path, e))?;
    let md_path = out.join("report.md");
    let mut text = std::fs::read_to_string(&md_path).map_err(|e| io_error("read", &md_path, e))?;
    text.push_str(&md);
    std::fs::write(&md_path, text).map_err(|e| io_error("write", &md_path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_callgrinds_total() {
        let text = "version: 1\nevents: Ir\nsummary: 123456\nfl=x\n0 3\ntotals: 123456\n";
        assert_eq!(read_total(text), Some(123_456));
        assert_eq!(read_total("events: Ir\ntotals: 77\n"), Some(77));
        assert_eq!(read_total("events: Ir\n"), None);
    }

    #[test]
    fn ten_percent_over_fails_and_under_asks_for_a_record() {
        assert_eq!(judge(None, 5.0), Verdict::Unrecorded);
        assert!(matches!(judge(Some(100.0), 110.0), Verdict::Within { .. }));
        assert!(matches!(judge(Some(100.0), 110.5), Verdict::Higher { .. }));
        assert!(matches!(judge(Some(100.0), 89.0), Verdict::Lower { .. }));
    }

    #[test]
    fn the_counted_server_gets_the_yardsticks_settings() {
        let path = std::env::temp_dir().join(format!("yardstick-{}.toml", std::process::id()));
        std::fs::write(&path, serve_config()).unwrap();
        let c = Config::load(Some(&path), std::iter::empty()).unwrap();
        let _ = std::fs::remove_file(&path);
        c.validate().unwrap();
        assert_eq!(c.engine().max_concurrent_instances, INSTANCE_SLOTS);
        assert_eq!(c.engine().slow_calls.nice, SlowCalls::OFF.nice);
        assert_eq!(c.processor().tenant_pipelines, 1);
        assert_eq!(c.database.pool_size, POOL_SIZE);
        assert!(!c.outbox.relay);
    }

    #[test]
    fn counts_without_tls_unless_the_url_asks() {
        assert_eq!(
            without_tls("postgres://h/db"),
            "postgres://h/db?sslmode=disable"
        );
        assert_eq!(
            without_tls("postgres://h/db?user=u"),
            "postgres://h/db?user=u&sslmode=disable"
        );
        assert_eq!(
            without_tls("postgres://h/db?sslmode=require"),
            "postgres://h/db?sslmode=require"
        );
    }

    #[test]
    fn dates_and_limits() {
        let t = std::time::UNIX_EPOCH + Duration::from_secs(1_796_083_200);
        assert_eq!(utc_date(t), "2026-12-01");
        assert_eq!(utc_date(std::time::UNIX_EPOCH), "1970-01-01");
        let mut args = YardstickArgs {
            workloads: vec![Workload::Uniform],
            paths: vec![PathKind::InProcess],
            payments: DEFAULT_PAYMENTS,
            database: DATABASE.into(),
            out: PathBuf::from("x"),
            measured: None,
        };
        args.validate().unwrap();
        args.payments = MAX_PAYMENTS + 1;
        assert!(args.validate().is_err());
        args.payments = 1;
        args.database = "postgres".into();
        assert!(args.validate().is_err());
    }
}
