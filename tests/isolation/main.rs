//! The isolation attack suite (docs/security.md): every attack a hostile
//! plugin, tenant admin, payments key or network peer can make, run against
//! the real `payrail serve` binary on a real Postgres. Each attack must fail
//! with a typed error, and a second tenant's payments made meanwhile must keep
//! their latency ([`assert_isolated`]).
//!
//! One binary, one module per boundary:
//! - `sandbox`: what a plugin can do from inside its call;
//! - `tenants`: what one tenant can do to another's latency;
//! - `money`: what a key can do to the ledger;
//! - `ops`: what an operator's config, logs and database expose.

#[path = "../common/mod.rs"]
mod common;

mod money;
mod ops;
mod sandbox;
mod tenants;

use common::{TestDb, plugin_bytes};
use payrail::apikeys::{self, Scope};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Scheduler noise on a shared 2-core machine: a bystander's p99 may exceed
/// twice its unattacked p99 by this much before the test calls it starved.
/// Without it a 2 ms p99 would fail on one descheduled slice.
pub const NOISE_FLOOR_MS: u64 = 25;

/// A running `payrail serve` (the real binary) over one test database.
pub struct Serve {
    pub base: String,
    pub db: TestDb,
    pub http: reqwest::Client,
    pub dir: PathBuf,
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    /// Held while this server lives: the suite's tests measure latencies,
    /// so they run one at a time whatever `--test-threads` says.
    _alone: tokio::sync::OwnedMutexGuard<()>,
}

/// The lock [`Serve`] holds (see `_alone`).
fn one_at_a_time() -> Arc<tokio::sync::Mutex<()>> {
    static LOCK: std::sync::OnceLock<Arc<tokio::sync::Mutex<()>>> = std::sync::OnceLock::new();
    LOCK.get_or_init(Default::default).clone()
}

/// One tenant's keys, with the sample pipeline `transfer` (limits, fee to
/// `fees`) and accounts `fees`, `alice` (10^9) and `bob`.
#[derive(Clone)]
pub struct Tenant {
    pub name: String,
    pub admin: String,
    pub pay: String,
}

impl Serve {
    /// `payrail serve` on a fresh database with `config` as its TOML file.
    pub async fn start(config: &str) -> Serve {
        Serve::start_on(TestDb::new().await, config, &[]).await
    }

    /// `payrail serve` on `db`, `config` as its TOML file, `env` added to
    /// its environment (`DATABASE_URL` is the test database's).
    pub async fn start_on(db: TestDb, config: &str, env: &[(&str, &str)]) -> Serve {
        let alone = one_at_a_time().lock_owned().await;
        let dir = std::env::temp_dir().join(format!("payrail-iso-{:08x}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("payrail.toml");
        std::fs::write(&cfg, config).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_payrail"));
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&cfg)
            .env("DATABASE_URL", &db.url)
            .env("PAYRAIL_CACHE_DIR", "off")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn payrail serve");
        let stderr = Arc::new(Mutex::new(String::new()));
        let stdout = Arc::new(Mutex::new(String::new()));
        collect(child.stderr.take().unwrap(), stderr.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        let out = child.stdout.take().unwrap();
        let sink = stdout.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("payrail listening on ") {
                    let _ = tx.send(addr.to_string());
                }
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let base = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(base) => base,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "serve did not start:\n{}\n{}",
                    stdout.lock().unwrap(),
                    stderr.lock().unwrap()
                );
            }
        };
        Serve {
            base,
            db,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .pool_max_idle_per_host(64)
                .build()
                .unwrap(),
            dir,
            child,
            stdout,
            stderr,
            _alone: alone,
        }
    }

    /// A new API key of `tenant` (straight into the database).
    pub async fn key(&self, tenant: &str, scopes: &[Scope]) -> String {
        let c = self.db.pool.get().await.unwrap();
        apikeys::create(&c, tenant, scopes).await.unwrap().secret
    }

    /// A request to this server.
    pub fn req(&self, method: Method, path: &str, key: Option<&str>) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        r
    }

    pub async fn get(&self, path: &str, key: &str) -> (StatusCode, Value) {
        send(self.req(Method::GET, path, Some(key))).await
    }

    pub async fn post(&self, path: &str, key: &str, body: Value) -> (StatusCode, Value) {
        send(self.req(Method::POST, path, Some(key)).json(&body)).await
    }

    pub async fn put(&self, path: &str, key: &str, body: Value) -> (StatusCode, Value) {
        send(self.req(Method::PUT, path, Some(key)).json(&body)).await
    }

    /// Deploys the built plugin `file` (`payrail_hostile`, ...) as `name`.
    pub async fn deploy(&self, admin: &str, file: &str, name: &str) -> (StatusCode, Value) {
        send(
            self.req(
                Method::POST,
                &format!("/v1/plugins?name={name}"),
                Some(admin),
            )
            .header("content-type", "application/wasm")
            .body(plugin_bytes(file)),
        )
        .await
    }

    /// `POST /v1/payments` with an idempotency key.
    pub async fn pay(&self, key: &str, idem: &str, body: Value) -> (StatusCode, Value) {
        send(
            self.req(Method::POST, "/v1/payments", Some(key))
                .header("Idempotency-Key", idem)
                .json(&body),
        )
        .await
    }

    /// Creates `name`'s keys, the sample plugins and pipeline `transfer`,
    /// and accounts `fees`, `alice` (10^9) and `bob`.
    pub async fn tenant(&self, name: &str) -> Tenant {
        let admin = self.key(name, &[Scope::Admin, Scope::Payments]).await;
        let pay = self.key(name, &[Scope::Payments]).await;
        for (file, plugin) in [("payrail_limits", "limits"), ("payrail_fee", "fee")] {
            let (s, b) = self.deploy(&admin, file, plugin).await;
            assert_eq!(s, StatusCode::CREATED, "{b}");
        }
        let (s, b) = self
            .put(
                "/v1/pipelines/transfer",
                &admin,
                json!({"steps": [
                    {"plugin": "limits", "config": {"max_amount": 100_000}},
                    {"plugin": "fee", "config": {"fee_account": "fees", "percent_bps": 100, "fixed": 10}}
                ]}),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        for (id, opening) in [("fees", 0), ("alice", 1_000_000_000), ("bob", 0)] {
            let (s, b) = self
                .post(
                    "/v1/accounts",
                    &admin,
                    json!({"id": id, "currency": "EUR", "opening_balance": opening}),
                )
                .await;
            assert_eq!(s, StatusCode::CREATED, "{b}");
        }
        Tenant {
            name: name.into(),
            admin,
            pay,
        }
    }

    /// The value of an unlabelled counter or gauge in `/metrics`.
    pub async fn metric(&self, name: &str) -> u64 {
        let (_, body) = send(self.req(Method::GET, "/metrics", None)).await;
        let text = body.as_str().unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
    }

    /// Everything the process printed so far (stdout, then stderr).
    pub fn output(&self) -> String {
        format!(
            "{}{}",
            self.stdout.lock().unwrap(),
            self.stderr.lock().unwrap()
        )
    }

    /// SIGKILLs the server (the database stays for the test's checks).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn collect(from: impl Read + Send + 'static, into: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            let mut s = into.lock().unwrap();
            s.push_str(&line);
            s.push('\n');
        }
    });
}

/// Sends a request; the body as JSON (or as a string when it is not JSON).
pub async fn send(r: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let resp = r.send().await.expect("request sent");
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// A transfer alice -> bob of `amount` EUR.
pub fn transfer(amount: i64) -> Value {
    json!({"kind": "transfer", "source": "alice", "destination": "bob", "amount": amount, "currency": "EUR"})
}

/// Latencies of a bystander's payments.
#[derive(Debug, Clone)]
pub struct Latencies(pub Vec<Duration>);

impl Latencies {
    /// The 99th percentile (nearest rank).
    pub fn p99(&self) -> Duration {
        let mut v = self.0.clone();
        v.sort();
        assert!(!v.is_empty(), "no latencies measured");
        v[(v.len() * 99).div_ceil(100).max(1) - 1]
    }

    pub fn median(&self) -> Duration {
        let mut v = self.0.clone();
        v.sort();
        v[v.len() / 2]
    }
}

/// `count` approved transfers of `tenant`, `concurrency` at a time, each
/// timed; panics on any answer but 201 approved.
pub async fn bystander(
    serve: &Serve,
    tenant: &Tenant,
    count: usize,
    concurrency: usize,
) -> Latencies {
    let run = rand::random::<u32>();
    let mut out = Vec::with_capacity(count);
    let mut next = 0;
    while next < count {
        let wave = concurrency.min(count - next);
        let mut set = tokio::task::JoinSet::new();
        for i in 0..wave {
            let r = serve
                .req(Method::POST, "/v1/payments", Some(&tenant.pay))
                .header("Idempotency-Key", format!("by-{run:08x}-{}", next + i))
                .json(&transfer(100));
            set.spawn(async move {
                let t = Instant::now();
                let (s, b) = send(r).await;
                (t.elapsed(), s, b)
            });
        }
        while let Some(r) = set.join_next().await {
            let (took, s, b) = r.unwrap();
            assert_eq!(s, StatusCode::CREATED, "bystander payment: {b}");
            assert_eq!(b["status"], "approved", "{b}");
            out.push(took);
        }
        next += wave;
    }
    Latencies(out)
}

/// The isolation promise: under attack, the bystander's p99 is at most
/// twice its p99 alone (plus [`NOISE_FLOOR_MS`] of scheduler noise).
pub fn assert_isolated(what: &str, alone: &Latencies, attacked: &Latencies) {
    if let Err(e) = isolated(what, alone, attacked) {
        panic!("{e}");
    }
}

/// [`assert_isolated`]'s check, as a value: for an attack short enough to
/// repeat, where one descheduled slice of this shared machine can land on
/// the few payments it overlaps.
pub fn isolated(what: &str, alone: &Latencies, attacked: &Latencies) -> Result<(), String> {
    let (a, b) = (alone.p99(), attacked.p99());
    let bound = a * 2 + Duration::from_millis(NOISE_FLOOR_MS);
    eprintln!(
        "{what}: bystander p99 alone {a:?} (median {:?}), under attack {b:?} (median {:?}), bound {bound:?}",
        alone.median(),
        attacked.median()
    );
    if b <= bound {
        return Ok(());
    }
    Err(format!(
        "{what}: bystander p99 {b:?} under attack, above 2x its {a:?} alone (+{NOISE_FLOOR_MS} ms)"
    ))
}
