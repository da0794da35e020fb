//! Shared test harness: a fresh database per test on a real Postgres
//! (`DATABASE_URL` if set, else the local cluster payrail runs itself), the
//! shared plugin engine, and helpers to count what was written.
#![allow(dead_code)]

pub mod certs;
pub mod receiver;
pub mod tools;

#[allow(unused_imports)] // not every test binary runs outside tools
pub use tools::{copy_dir, npm, once, python_venv, repo_root, run_ok, target_dir};

use payrail::db::{self, Pool};
use payrail::engine::{EngineConfig, PluginEngine};
use payrail::ledger::{self, NewAccount};
use payrail::model::{DEFAULT_TENANT, PaymentRequest};
use payrail::processor::{Processor, ProcessorSettings};
use payrail::registry::{self, StepSpec};
use payrail_embedded_pg::{self as embedded, LocalPostgres};
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// Test databases older than this are dropped by later runs.
const STALE_DB_SECS: u64 = 3600;

/// One test's database.
pub struct TestDb {
    pub url: String,
    pub admin_url: String,
    pub name: String,
    pub pool: Pool,
}

/// The engine shared by all tests of one binary (compiles each plugin once).
pub fn engine() -> Arc<PluginEngine> {
    static ENGINE: OnceLock<Arc<PluginEngine>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            // limits up to the hard caps: these tests exercise the sandbox's
            // own limits; the operator caps are tested over `payrail serve`
            // (tests/isolation/sandbox.rs)
            let config = EngineConfig {
                caps: payrail::engine::PluginLimits::HARD_CAPS,
                ..EngineConfig::default()
            };
            Arc::new(PluginEngine::new(config).expect("engine"))
        })
        .clone()
}

/// Bytes of a plugin built by build.rs (`payrail_fee`, `payrail_hostile`, ...).
pub fn plugin_bytes(name: &str) -> Vec<u8> {
    let path = format!("{}/{name}.wasm", payrail::samples::WASM_DIR);
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Admin URL of the server tests use.
pub async fn admin_url() -> String {
    match std::env::var("DATABASE_URL") {
        Ok(u) if !u.is_empty() => u,
        _ => db::local_cluster().await.expect("local postgres").url(),
    }
}

impl TestDb {
    /// Creates and migrates a fresh database.
    pub async fn new() -> TestDb {
        let db = TestDb::unmigrated().await;
        let mut c = db.pool.get().await.expect("connect");
        db::migrate::migrate(&mut c).await.expect("migrate");
        drop(c);
        db
    }

    /// Creates and migrates a fresh database on the server at `admin_url`
    /// (a cluster a test runs itself).
    pub async fn new_on(admin_url: String) -> TestDb {
        let db = TestDb::unmigrated_on(admin_url).await;
        let mut c = db.pool.get().await.expect("connect");
        db::migrate::migrate(&mut c).await.expect("migrate");
        drop(c);
        db
    }

    /// Creates a fresh, empty database (no schema): for migration tests.
    pub async fn unmigrated() -> TestDb {
        TestDb::unmigrated_on(admin_url().await).await
    }

    async fn unmigrated_on(admin_url: String) -> TestDb {
        let now = unix_now();
        let name = format!("payrail_test_{now}_{:08x}", rand::random::<u32>());
        drop_stale(&admin_url, now).await;
        db::create_database_if_missing(&admin_url, &name)
            .await
            .expect("create test database");
        let url = db::url_with_database(&admin_url, &name);
        let pool = db::pool(&url, 24).expect("pool");
        TestDb {
            url,
            admin_url,
            name,
            pool,
        }
    }

    /// A processor over this database with default settings.
    pub fn processor(&self) -> Processor {
        self.processor_with(ProcessorSettings::default())
    }

    pub fn processor_with(&self, settings: ProcessorSettings) -> Processor {
        Processor::new(self.pool.clone(), engine(), settings)
    }

    /// Opens an EUR account.
    pub async fn account(&self, id: &str, opening: i64) {
        self.account_with(id, "EUR", opening, false).await;
    }

    pub async fn account_with(&self, id: &str, currency: &str, opening: i64, allow_negative: bool) {
        let mut c = self.pool.get().await.unwrap();
        ledger::create_account(
            &mut c,
            DEFAULT_TENANT,
            &NewAccount {
                id: id.into(),
                currency: currency.into(),
                allow_negative,
                opening_balance: opening,
                metadata: Default::default(),
            },
        )
        .await
        .expect("create account");
    }

    /// Deploys a built plugin under `name`.
    pub async fn deploy(&self, file: &str, name: &str) -> String {
        let c = self.pool.get().await.unwrap();
        registry::deploy_plugin(&c, &engine(), name, plugin_bytes(file))
            .await
            .expect("deploy")
    }

    /// Sets a pipeline from (plugin name, config) pairs.
    pub async fn pipeline(&self, kind: &str, steps: &[(&str, serde_json::Value)]) {
        let c = self.pool.get().await.unwrap();
        let specs: Vec<StepSpec> = steps
            .iter()
            .map(|(p, cfg)| StepSpec {
                plugin: p.to_string(),
                config: cfg.clone(),
                candidate: None,
                limits: None,
            })
            .collect();
        registry::set_pipeline(&c, &engine(), DEFAULT_TENANT, kind, &specs)
            .await
            .expect("set pipeline");
    }

    /// The standard sample setup: `limits` -> `fee` on kind "transfer", fee
    /// account "fees".
    pub async fn samples(&self) {
        self.deploy("payrail_limits", "limits").await;
        self.deploy("payrail_fee", "fee").await;
        self.account("fees", 0).await;
        self.pipeline(
            "transfer",
            &[
                (
                    "limits",
                    serde_json::json!({"max_amount": 100_000, "allowed_currencies": ["EUR", "JPY"]}),
                ),
                (
                    "fee",
                    serde_json::json!({"fee_account": "fees", "percent_bps": 100, "fixed": 10, "min": 20, "max": 1000}),
                ),
            ],
        )
        .await;
    }

    /// Ready for payments over HTTP: the samples, `alice` with 100,000 and
    /// `bob` with nothing, and a `payments` key of tenant `default` (its
    /// secret returned).
    pub async fn ready_to_pay(&self) -> String {
        self.samples().await;
        self.account("alice", 100_000).await;
        self.account("bob", 0).await;
        let c = self.pool.get().await.unwrap();
        payrail::apikeys::create(&c, DEFAULT_TENANT, &[payrail::apikeys::Scope::Payments])
            .await
            .unwrap()
            .secret
    }

    pub async fn balance(&self, id: &str) -> i64 {
        let c = self.pool.get().await.unwrap();
        ledger::get_account(&c, DEFAULT_TENANT, id)
            .await
            .unwrap()
            .balance
    }

    /// Row counts of every table a payment writes: payments, payment
    /// entries (opening balances excluded), outbox, idempotency keys, journal.
    pub async fn counts(&self) -> [i64; 5] {
        let c = self.pool.get().await.unwrap();
        let mut out = [0; 5];
        for (i, t) in [
            "payments",
            "entries where payment_id is not null",
            // what payments write (not the accounts' openings)
            "outbox where topic <> 'account.opened'",
            "idempotency_keys",
            "plugin_calls",
        ]
        .iter()
        .enumerate()
        {
            out[i] = c
                .query_one(&format!("select count(*) from payrail.{t}"), &[])
                .await
                .unwrap()
                .get(0);
        }
        out
    }

    /// Money is conserved: the balances of `accounts` (each opened with
    /// `opening`, none below zero) and of the sample fee account add up to
    /// what was opened, and the audit passes.
    pub async fn assert_conserved(&self, accounts: &[String], opening: i64) {
        let mut total = self.balance("fees").await;
        for a in accounts {
            let b = self.balance(a).await;
            assert!(b >= 0, "{a} overdrawn: {b}");
            total += b;
        }
        assert_eq!(total, opening * accounts.len() as i64, "money is conserved");
        let violations = self.audit().await;
        assert!(violations.is_empty(), "{violations:?}");
    }

    pub async fn audit(&self) -> Vec<payrail::audit::Violation> {
        let mut c = self.pool.get().await.unwrap();
        payrail::audit::run(&mut c).await.unwrap()
    }
}

/// Drops leftover test databases from earlier runs (by their timestamp).
async fn drop_stale(admin_url: &str, now: u64) {
    static ONCE: OnceLock<()> = OnceLock::new();
    if ONCE.set(()).is_err() {
        return;
    }
    let Ok((client, conn)) = tokio_postgres::connect(admin_url, tokio_postgres::NoTls).await else {
        return;
    };
    tokio::spawn(conn);
    let Ok(rows) = client
        .query(
            "select datname from pg_database where datname like 'payrail_test_%'",
            &[],
        )
        .await
    else {
        return;
    };
    for r in rows {
        let name: String = r.get(0);
        let ts: u64 = name
            .split('_')
            .nth(2)
            .and_then(|s| s.parse().ok())
            .unwrap_or(now);
        if now.saturating_sub(ts) > STALE_DB_SECS {
            let _ = client
                .batch_execute(&format!("drop database if exists \"{name}\" with (force)"))
                .await;
        }
    }
}

/// A transfer request of kind "transfer".
pub fn transfer(from: &str, to: &str, amount: i64) -> PaymentRequest {
    PaymentRequest {
        kind: "transfer".into(),
        source: from.into(),
        destination: to.into(),
        amount,
        currency: "EUR".into(),
        metadata: Default::default(),
        capture: Default::default(),
        hold_ttl_secs: None,
    }
}

/// A Postgres cluster of a test's own: initdb and a free port, in
/// `/tmp/payrail-{name}-{pid}/primary`. The folder is open to the server's
/// user (a test makes standbys and restores there). Dropped: every server
/// in it is stopped (immediate) and the folder removed.
pub struct OwnCluster {
    pub pg: LocalPostgres,
    pub root: PathBuf,
    /// Data directories of more servers the test started in `root`.
    pub extra: Vec<PathBuf>,
}

impl OwnCluster {
    pub async fn start(name: &str) -> OwnCluster {
        use std::os::unix::fs::PermissionsExt;
        let root = PathBuf::from(format!("/tmp/payrail-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o777)).unwrap();
        let data = root.join("primary");
        let pg = tokio::task::spawn_blocking(move || embedded::start_throwaway(&data))
            .await
            .unwrap()
            .expect("a cluster of the test's own");
        OwnCluster {
            pg,
            root,
            extra: Vec::new(),
        }
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let _ = self.pg.stop(true);
        for dir in &self.extra {
            let mut c = server_command(&self.pg, "pg_ctl");
            c.args(["stop", "-m", "immediate", "-D"]).arg(dir);
            let _ = c.output();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// One of `pg`'s server binaries (`pg_ctl`, `pg_basebackup`, ...), run as
/// the user its servers run as (postgres when the tests run as root).
pub fn server_command(pg: &LocalPostgres, bin: &str) -> Command {
    let path = pg.bin_dir.join(bin);
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(path);
        c
    } else {
        Command::new(path)
    }
}

/// A `redis-server` of a test's own on a free port, keeping nothing on disk
/// (as the machines' Redis): a test that restarts Redis must not restart
/// the one other tests use. Killed when dropped.
pub struct OwnRedis {
    pub port: u16,
    child: std::process::Child,
}

impl OwnRedis {
    pub fn start() -> OwnRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        OwnRedis {
            port,
            child: Self::spawn(port),
        }
    }

    /// `redis-server`, installed with apt-get first when it is missing and
    /// this runs as root (CI: Debian, as root).
    fn ensure_installed() {
        static ONCE: OnceLock<()> = OnceLock::new();
        ONCE.get_or_init(|| {
            let runs = |c: &mut Command| c.output().is_ok_and(|o| o.status.success());
            if runs(Command::new("redis-server").arg("--version")) {
                return;
            }
            let root = Command::new("id")
                .arg("-u")
                .output()
                .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
            assert!(
                root,
                "the lock tests need redis-server: apt-get install redis-server"
            );
            for args in [&["update"][..], &["install", "-y", "redis-server"]] {
                let ok = runs(
                    Command::new("apt-get")
                        .args(args)
                        .env("DEBIAN_FRONTEND", "noninteractive"),
                );
                assert!(
                    ok,
                    "apt-get {args:?} failed: the lock tests need redis-server"
                );
            }
        });
    }

    fn spawn(port: u16) -> std::process::Child {
        Self::ensure_installed();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server) runs");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not listen on {port}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        child
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, then a new server on the same port: every key is gone.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::spawn(self.port);
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Redis the tests share: `REDIS_URL` (default
/// `redis://127.0.0.1:6379`), or, when none answers there, one started for
/// this test process and kept for its life. Tests keep apart by key prefix.
pub fn redis_url() -> String {
    static OWN: OnceLock<Option<std::sync::Mutex<OwnRedis>>> = OnceLock::new();
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let addr = url
        .trim_start_matches("redis://")
        .split(['/', '@'])
        .next()
        .unwrap_or("127.0.0.1:6379")
        .to_string();
    let answers = std::net::TcpStream::connect(&addr).is_ok();
    let own = OWN.get_or_init(|| (!answers).then(|| std::sync::Mutex::new(OwnRedis::start())));
    match own {
        Some(r) => r.lock().unwrap().url(),
        None => url,
    }
}

/// A key prefix no other test uses.
pub fn unique_prefix(name: &str) -> String {
    format!("payrail-test:{name}:{:08x}:", rand::random::<u32>())
}

/// A `payrail serve` process of the test's own, killed when dropped.
pub struct ServeChild {
    pub child: std::process::Child,
    /// `http://addr` or `https://addr`, as the process printed it.
    pub base: String,
    /// Everything it printed to stdout before the address.
    pub printed: String,
    /// Its stderr (logs), as far as it has written.
    pub logs: Arc<std::sync::Mutex<String>>,
}

impl ServeChild {
    /// Spawns `cmd` (a `payrail serve ... --listen 127.0.0.1:0`) and waits
    /// for the address it prints; panics with its output if it exits first.
    pub fn spawn(mut cmd: Command) -> ServeChild {
        use std::io::{BufRead, BufReader};
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn payrail serve");
        let logs = Arc::new(std::sync::Mutex::new(String::new()));
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let sink = logs.clone();
        let drain = std::thread::spawn(move || {
            for line in stderr.lines().map_while(|l| l.ok()) {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let mut printed = String::new();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let base = loop {
            let Some(Ok(line)) = lines.next() else {
                let _ = child.kill();
                let _ = child.wait();
                let _ = drain.join();
                panic!(
                    "serve exited before listening:\n{printed}{}",
                    logs.lock().unwrap()
                );
            };
            if let Some(addr) = line.strip_prefix("payrail listening on ") {
                break addr.to_string();
            }
            printed.push_str(&line);
            printed.push('\n');
        };
        // keep draining stdout so the process never blocks on a full pipe
        std::thread::spawn(move || for _ in lines {});
        ServeChild {
            child,
            base,
            printed,
            logs,
        }
    }

    /// Sends `signal` (e.g. `-HUP`) to the process.
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for ServeChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
