//! Configuration of `payrail serve`: a TOML file (`--config FILE`), then
//! environment overrides, then explicit command-line flags; validated before
//! anything starts, and printed at start with secrets redacted.
//!
//! Every field has a default, so an empty file (or none) is a valid
//! configuration. Unknown keys are refused, so a typo is an error rather
//! than a silently ignored setting.

use crate::engine::{EngineConfig, PluginLimitOverrides, PluginLimits};
use crate::error::{Error, Result};
use crate::processor::{BatchSettings, ProcessorSettings};
pub use crate::redact::{MIN_SCRUB_BYTES, percent_decode, redact_url, scrub, url_secrets};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// Largest configuration file read.
pub const MAX_CONFIG_FILE_BYTES: u64 = 1024 * 1024;

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The HTTP server.
    pub server: ServerConfig,
    /// The database.
    pub database: DatabaseConfig,
    /// The payment transaction.
    pub processor: ProcessorConfig,
    /// The plugin engine and per-call limits.
    pub plugins: PluginsConfig,
    /// Idempotency keys and their reaper.
    pub idempotency: IdempotencyConfig,
    /// Logging.
    pub log: LogConfig,
    /// The outbox relay.
    pub outbox: OutboxConfig,
    /// Where outbox events go, chosen per topic pattern (`[[sinks]]`).
    pub sinks: Vec<SinkConfig>,
    /// What one tenant or API key may take of the host (docs/tenancy.md).
    pub tenants: TenantsConfig,
    /// How accounts are serialized across hosts (docs/locking.md).
    pub locks: LocksConfig,
}

/// Which lock serializes payments per account (`[locks] backend`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockBackend {
    /// Transaction-scoped advisory locks in Postgres.
    #[default]
    Advisory,
    /// `SET NX PX` in a Redis every host reaches, fenced in Postgres.
    Redis,
    /// `flock` on files of one machine's directory, fenced in Postgres.
    File,
}

/// `[locks]`: how payments are serialized per account across every host
/// that shares the ledger (docs/locking.md, "Lock services and fencing").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocksConfig {
    /// `advisory` (default), `redis` or `file`.
    pub backend: LockBackend,
    /// The Redis of `backend = "redis"`.
    pub redis_url: String,
    /// Prefix of every Redis key (a hash tag such as `{payrail}:` on a
    /// Redis Cluster).
    pub redis_prefix: String,
    /// How long a Redis lock lives: a holder that stops (paused, killed)
    /// keeps its accounts this long. Must outlast a payment's transaction;
    /// one that does not is refused by its fence, not applied twice.
    pub ttl_ms: u64,
    /// Longest a payment waits for accounts another host holds, before it
    /// fails with `lock_timeout`.
    pub wait_ms: u64,
    /// The directory of `backend = "file"` (required then; every host on
    /// the machine names the same one).
    pub dir: Option<std::path::PathBuf>,
    /// Lock files the accounts are spread over.
    pub file_slots: u32,
}

impl LocksConfig {
    /// The lock service this section names: connects to Redis, or makes the
    /// lock directory.
    pub async fn service(&self) -> Result<crate::locks::Service> {
        use crate::locks::{Service, file::FileLocks, redis::RedisLocks};
        let wait = std::time::Duration::from_millis(self.wait_ms);
        Ok(match self.backend {
            LockBackend::Advisory => Service::Advisory,
            LockBackend::Redis => {
                let ttl = std::time::Duration::from_millis(self.ttl_ms);
                let redis = RedisLocks::connect(&self.redis_url, &self.redis_prefix, ttl, wait);
                Service::Redis(Box::new(redis.await?))
            }
            LockBackend::File => {
                let dir = self.dir.as_deref().ok_or_else(|| {
                    invalid("locks.backend = \"file\" needs locks.dir (or PAYRAIL_LOCKS_DIR)")
                })?;
                Service::File(FileLocks::new(dir, self.file_slots, wait)?)
            }
        })
    }
}

impl Default for LocksConfig {
    fn default() -> Self {
        LocksConfig {
            backend: LockBackend::Advisory,
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_prefix: "payrail:".into(),
            ttl_ms: 10_000,
            wait_ms: 5_000,
            dir: None,
            file_slots: 65_536,
        }
    }
}

/// `[tenants]`: fair sharing between tenants and per-key rate limits
/// (docs/tenancy.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantsConfig {
    /// Requests of one tenant handled at once; more are answered 429
    /// `tenant_busy` at once (`PAYRAIL_TENANT_MAX_IN_FLIGHT`).
    pub max_in_flight_requests: usize,
    /// Pooled connections one tenant's payment transactions hold at once
    /// (capped at `database.pool_size`); its further payments wait for its
    /// own (`PAYRAIL_TENANT_MAX_CONNECTIONS`).
    pub max_connections: usize,
    /// Plugin pipelines running at once of a tenant whose plugin call ran
    /// slow in the last minute: the cores its plugins may burn, whatever
    /// their limits (0: half the cores, at least one). Other tenants run
    /// up to one per core (docs/tenancy.md).
    pub max_running_pipelines: usize,
    /// Tenants whose batches run at once, `processor.batch_workers` each
    /// (the host runs `batch_workers * batch_lanes` batch workers).
    pub batch_lanes: usize,
    /// Sustained requests per second of one API key (token bucket); more
    /// are answered 429 `rate_limited` with `Retry-After`
    /// (`PAYRAIL_KEY_REQUESTS_PER_SEC`).
    pub key_requests_per_sec: u32,
    /// Requests one API key may make at once above its rate (the bucket).
    pub key_burst: u32,
    /// Database lookups per second of API keys this host has not seen
    /// (unknown, new or mistyped keys; same for the burst): past it such
    /// requests are answered 429 `key_lookups_throttled` without touching
    /// the database. Keys seen valid are not counted.
    pub unknown_key_lookups_per_sec: u32,
    /// Nice value (0-19) a plugin call drops its thread to once it has run
    /// 25 ms, so a plugin looping to its timeout yields its core to
    /// Postgres and the request threads (`PAYRAIL_PLUGIN_THREAD_NICE`; 0:
    /// normal priority throughout).
    pub plugin_thread_nice: i32,
}

impl Default for TenantsConfig {
    fn default() -> Self {
        TenantsConfig {
            max_in_flight_requests: 512,
            max_connections: 4,
            max_running_pipelines: 0,
            batch_lanes: 4,
            key_requests_per_sec: 10_000,
            key_burst: 20_000,
            unknown_key_lookups_per_sec: 50,
            plugin_thread_nice: crate::processor::fair::PLUGIN_THREAD_NICE,
        }
    }
}

/// `[outbox]`: the relay that delivers outbox events to the sinks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxConfig {
    /// Run the relay inside `payrail serve` (without sinks it only runs the
    /// hold expiry timers).
    pub relay: bool,
    /// Events claimed per round.
    pub batch_size: i64,
    /// How long a claim is exclusive; a host that dies holding it loses it
    /// after this long and another host delivers the events again. Must
    /// outlast a worst-case delivery round ([`Config::min_lease_ms`]).
    pub lease_ms: u64,
    /// Pause between rounds when there was nothing to do.
    pub poll_interval_ms: u64,
    /// Deliveries of one event before it moves to dead-letter.
    pub max_attempts: i32,
    /// First retry delay; doubles per attempt (with jitter) up to the cap.
    pub backoff_base_ms: u64,
    /// Longest retry delay.
    pub backoff_max_ms: u64,
    /// Events delivered at once.
    pub concurrency: usize,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            relay: true,
            batch_size: 100,
            lease_ms: 60_000,
            poll_interval_ms: 250,
            max_attempts: 20,
            backoff_base_ms: 500,
            backoff_max_ms: 300_000,
            concurrency: 16,
        }
    }
}

/// The kind of a sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// HTTP POST of the event, HMAC-SHA256 signed.
    Webhook,
    /// NATS JetStream publish, deduplicated by `Nats-Msg-Id`.
    Nats,
    /// Appends one JSON line per event to a file.
    File,
}

/// `[[sinks]]`: one destination and the topics it takes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// Name, for logs and errors; unique.
    pub name: String,
    /// `webhook`, `nats` or `file`.
    #[serde(rename = "type")]
    pub kind: SinkKind,
    /// Topic patterns: `payment.approved`, `payment.*` (a prefix) or `*`.
    pub topics: Vec<String>,
    /// webhook: the `https://` (or `http://`) URL; nats: the server URL
    /// (default `$NATS_URL`, else `nats://127.0.0.1:4222`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// webhook over `https://`: a PEM file of the CAs to trust instead of
    /// the system's (a private endpoint's own CA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<std::path::PathBuf>,
    /// webhook: the HMAC-SHA256 signing secret (printed redacted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// webhook: read the secret from this environment variable instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_env: Option<String>,
    /// nats: the subject is this prefix + the topic (default `payrail.`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_prefix: Option<String>,
    /// file: the JSON-lines file appended to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<std::path::PathBuf>,
    /// Longest one delivery may take (connect + send + acknowledgement).
    #[serde(default = "default_sink_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_sink_timeout_ms() -> u64 {
    5_000
}

/// Longest webhook secret accepted, and the shortest.
pub const WEBHOOK_SECRET_BYTES: std::ops::RangeInclusive<usize> = 16..=1024;

impl SinkConfig {
    /// The webhook secret, from `secret` or the variable `secret_env` names.
    pub fn resolved_secret(&self, env: impl Fn(&str) -> Option<String>) -> Option<String> {
        self.secret
            .clone()
            .or_else(|| self.secret_env.as_deref().and_then(env))
    }

    /// Whether this sink takes events of `topic`.
    pub fn matches(&self, topic: &str) -> bool {
        self.topics.iter().any(|p| topic_matches(p, topic))
    }
}

/// `*` matches everything, `a.*` every topic starting with `a.`, anything
/// else only itself.
pub fn topic_matches(pattern: &str, topic: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_suffix('*') {
        Some(prefix) => topic.starts_with(prefix),
        None => pattern == topic,
    }
}

/// `[server]`: the HTTP listener and its limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on (`PAYRAIL_LISTEN`); port 0 picks a free port.
    pub listen: String,
    /// Longest a request may take before it is answered 503.
    pub request_timeout_ms: u64,
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish.
    pub shutdown_grace_ms: u64,
    /// Largest JSON request body.
    pub max_json_body_bytes: usize,
    /// Requests handled at once; more are answered 503 `overloaded`.
    pub max_in_flight: usize,
    /// How long a host trusts an API key it looked up
    /// (`PAYRAIL_API_KEY_CACHE_MS`): the longest a revoked key may still
    /// authenticate. 0: every request looks its key up.
    pub api_key_cache_ms: u64,
    /// Longest a client may take to send a request's headers, and longest
    /// an idle keep-alive connection is kept (slowloris bound).
    pub header_read_timeout_ms: u64,
    /// Connections open at once (`PAYRAIL_MAX_CONNECTIONS`). At the bound a
    /// new connection closes the least recently active connection that has
    /// no request running; if every one has, it is refused.
    pub max_connections: usize,
    /// Terminate TLS here (`[server.tls]`); unset: plain HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTlsConfig>,
}

/// `[server.tls]`: the certificate `payrail serve` presents, reloaded on
/// SIGHUP or when either file changes (docs/operations.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    /// PEM: the server certificate, then any intermediates.
    pub cert_file: std::path::PathBuf,
    /// PEM: its private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: std::path::PathBuf,
}

impl ServerTlsConfig {
    /// Reads and checks the pair (the key must match the certificate).
    pub fn load(&self) -> Result<crate::tls::ServerTls> {
        crate::tls::ServerTls::load(&self.cert_file, &self.key_file)
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".into(),
            request_timeout_ms: 30_000,
            shutdown_grace_ms: 10_000,
            max_json_body_bytes: 64 * 1024,
            max_in_flight: 1024,
            api_key_cache_ms: 1000,
            header_read_timeout_ms: 10_000,
            max_connections: 4096,
            tls: None,
        }
    }
}

/// `[database]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// Postgres URL (`DATABASE_URL`). Unset: `serve` and `relay` refuse to
    /// start unless given `--embedded-db` (the local cluster payrail runs
    /// itself). Printed with its password redacted.
    pub url: Option<String>,
    /// Connection pool size (`PAYRAIL_POOL_SIZE`).
    pub pool_size: usize,
    /// `statement_timeout` of every connection the host opens
    /// (`PAYRAIL_STATEMENT_TIMEOUT_MS`); payment transactions set their own
    /// (`processor.statement_timeout_ms`) on top.
    pub statement_timeout_ms: u64,
    /// `idle_in_transaction_session_timeout` of every connection
    /// (`PAYRAIL_IDLE_IN_TRANSACTION_TIMEOUT_MS`): Postgres ends a session
    /// that sits this long inside a transaction, releasing its locks.
    /// Unset: the larger of 60 s and [`Config::min_idle_in_transaction_ms`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_in_transaction_timeout_ms: Option<u64>,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: None,
            pool_size: 16,
            statement_timeout_ms: 30_000,
            idle_in_transaction_timeout_ms: None,
        }
    }
}

/// Added to a worst-case delivery round for the lease: claiming the batch
/// and recording its outcome, two short statements.
pub const LEASE_MARGIN_MS: u64 = 2_000;
/// Added to a worst-case pipeline run for the idle-in-transaction timeout.
pub const IDLE_MARGIN_MS: u64 = 5_000;
/// The idle-in-transaction timeout when none is configured (at least).
pub const DEFAULT_IDLE_IN_TRANSACTION_MS: u64 = 60_000;

/// `[processor]`: bounds of the payment transaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessorConfig {
    /// Longest wait for a lock (`PAYRAIL_LOCK_TIMEOUT_MS`).
    pub lock_timeout_ms: u64,
    /// Longest single statement.
    pub statement_timeout_ms: u64,
    /// Attempts for a transaction that hit a deadlock.
    pub max_attempts: u32,
    /// Most one-step payments in one transaction; 1 turns batching off
    /// (`PAYRAIL_BATCH_MAX_PAYMENTS`). See docs/batching.md.
    pub batch_max_payments: usize,
    /// Batches one tenant runs at once, each one transaction
    /// (`PAYRAIL_BATCH_WORKERS`); see `tenants.batch_lanes`.
    pub batch_workers: usize,
    /// How long a worker waits for more payments once it has one; 0 takes
    /// what is queued (`PAYRAIL_BATCH_WINDOW_US`).
    pub batch_window_us: u64,
    /// Longest a caller waits for a commit the database has not confirmed
    /// (a primary waiting for a synchronous standby that is gone) before it
    /// is answered 503 `commit_unconfirmed`; meanwhile no new payment is
    /// taken (`PAYRAIL_COMMIT_WAIT_MS`; docs/operations.md).
    pub commit_wait_ms: u64,
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        let d = ProcessorSettings::default();
        ProcessorConfig {
            lock_timeout_ms: d.lock_timeout_ms,
            statement_timeout_ms: d.statement_timeout_ms,
            max_attempts: d.max_attempts,
            batch_max_payments: d.batch.max_payments,
            batch_workers: d.batch.workers,
            batch_window_us: d.batch.window_us,
            commit_wait_ms: d.commit_wait_ms,
        }
    }
}

/// `[plugins]`: engine-wide settings and the limits of every call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsConfig {
    /// Largest plugin accepted (`PAYRAIL_MAX_PLUGIN_BYTES`); also the upload
    /// limit of `POST /v1/plugins`.
    pub max_plugin_bytes: usize,
    /// Wasm stack of every call.
    pub max_wasm_stack_bytes: usize,
    /// Plugin instances that may run at once.
    pub max_concurrent_instances: u32,
    /// Per-call limits (`PAYRAIL_PLUGIN_FUEL`, `PAYRAIL_PLUGIN_MEMORY_BYTES`,
    /// `PAYRAIL_PLUGIN_TIMEOUT_MS`).
    pub limits: PluginLimits,
    /// The operator's caps on a pipeline step's limits (`[plugins.max_limits]`,
    /// same keys as `[plugins.limits]`): a step above one is refused at
    /// `pipeline set`, and every call is clamped to them. Absent keys keep
    /// [`PluginLimits::DEFAULT_CAPS`]; none may exceed the hard caps.
    #[serde(skip_serializing_if = "is_default_overrides")]
    pub max_limits: PluginLimitOverrides,
    /// Compiled plugins kept in memory (least recently used dropped first).
    pub max_loaded_plugins: usize,
    /// Plugin compiles that may run at once.
    pub max_concurrent_compiles: usize,
    /// How long a deploy waits for its compile, slot wait included.
    pub compile_timeout_ms: u64,
}

fn is_default_overrides(o: &PluginLimitOverrides) -> bool {
    *o == PluginLimitOverrides::default()
}

impl Default for PluginsConfig {
    fn default() -> Self {
        let d = EngineConfig::default();
        PluginsConfig {
            max_plugin_bytes: d.max_plugin_bytes,
            max_wasm_stack_bytes: d.max_wasm_stack_bytes,
            max_concurrent_instances: d.max_concurrent_instances,
            limits: d.limits,
            max_limits: PluginLimitOverrides::default(),
            max_loaded_plugins: d.max_loaded_plugins,
            max_concurrent_compiles: d.max_concurrent_compiles,
            compile_timeout_ms: d.compile_timeout_ms,
        }
    }
}

impl PluginsConfig {
    /// The operator's caps: `max_limits` over the default caps.
    pub fn caps(&self) -> PluginLimits {
        self.max_limits.apply(&PluginLimits::DEFAULT_CAPS)
    }
}

/// `[idempotency]`: how long keys are remembered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdempotencyConfig {
    /// Lifetime of a key (`PAYRAIL_KEY_TTL_SECS`, default 24 h).
    pub key_ttl_secs: i64,
    /// How often the reaper deletes expired keys.
    pub reaper_interval_secs: u64,
    /// Keys deleted per reaper statement (several statements per run).
    pub reaper_batch: i64,
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        IdempotencyConfig {
            key_ttl_secs: 24 * 3600,
            reaper_interval_secs: 60,
            reaper_batch: 1000,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json` (`PAYRAIL_LOG_FORMAT`).
    pub format: LogFormat,
    /// `tracing` filter directives (`PAYRAIL_LOG` wins when set).
    pub filter: String,
    /// An OpenTelemetry collector (`http://host:4318`): the spans of
    /// requests, payments, locks, plugin calls and relay deliveries go to
    /// its `/v1/traces` over OTLP/HTTP. Unset: no export.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    /// The `service.name` the spans carry.
    pub otlp_service_name: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            filter: "info".into(),
            otlp_endpoint: None,
            otlp_service_name: "payrail".into(),
        }
    }
}

fn invalid(message: impl Into<String>) -> Error {
    Error::invalid("invalid_config", message)
}

/// `v` within `lo..=hi`, or an error naming the setting and the range.
fn range<T: PartialOrd + std::fmt::Display>(name: &str, v: T, lo: T, hi: T) -> Result<()> {
    if v < lo || v > hi {
        return Err(invalid(format!("{name} = {v} is outside {lo}..={hi}")));
    }
    Ok(())
}

/// The text of a configuration file, at most [`MAX_CONFIG_FILE_BYTES`].
fn read_config_file(path: &Path) -> Result<String> {
    let meta = std::fs::metadata(path)
        .map_err(|e| invalid(format!("cannot read config file {}: {e}", path.display())))?;
    if meta.len() > MAX_CONFIG_FILE_BYTES {
        return Err(invalid(format!(
            "config file {} is larger than {MAX_CONFIG_FILE_BYTES} bytes",
            path.display()
        )));
    }
    std::fs::read_to_string(path)
        .map_err(|e| invalid(format!("cannot read config file {}: {e}", path.display())))
}

/// The top-level sections, the first word of a `PAYRAIL_<SECTION>__<KEY>`
/// variable (`[[sinks]]` is the list `PAYRAIL_SINKS`).
const ENV_SECTIONS: &[&str] = &[
    "server",
    "database",
    "processor",
    "plugins",
    "idempotency",
    "log",
    "outbox",
    "tenants",
    "locks",
];
/// The prefix of every mechanical variable name.
pub const ENV_PREFIX: &str = "PAYRAIL_";
/// The variable holding the whole `[[sinks]]` list.
pub const ENV_SINKS: &str = "PAYRAIL_SINKS";
/// Short names kept from before the mechanical ones (and the two every
/// tool knows: `DATABASE_URL`, `REDIS_URL`). The mechanical name of the
/// same key is applied after, so it wins.
pub const ENV_ALIASES: &[(&str, &str)] = &[
    ("DATABASE_URL", "database.url"),
    ("PAYRAIL_POOL_SIZE", "database.pool_size"),
    (
        "PAYRAIL_STATEMENT_TIMEOUT_MS",
        "database.statement_timeout_ms",
    ),
    (
        "PAYRAIL_IDLE_IN_TRANSACTION_TIMEOUT_MS",
        "database.idle_in_transaction_timeout_ms",
    ),
    ("PAYRAIL_LISTEN", "server.listen"),
    ("PAYRAIL_REQUEST_TIMEOUT_MS", "server.request_timeout_ms"),
    ("PAYRAIL_API_KEY_CACHE_MS", "server.api_key_cache_ms"),
    ("PAYRAIL_MAX_CONNECTIONS", "server.max_connections"),
    ("PAYRAIL_SHUTDOWN_GRACE_MS", "server.shutdown_grace_ms"),
    (
        "PAYRAIL_TENANT_MAX_IN_FLIGHT",
        "tenants.max_in_flight_requests",
    ),
    ("PAYRAIL_TENANT_MAX_CONNECTIONS", "tenants.max_connections"),
    (
        "PAYRAIL_TENANT_MAX_RUNNING_PIPELINES",
        "tenants.max_running_pipelines",
    ),
    ("PAYRAIL_PLUGIN_THREAD_NICE", "tenants.plugin_thread_nice"),
    (
        "PAYRAIL_KEY_REQUESTS_PER_SEC",
        "tenants.key_requests_per_sec",
    ),
    ("PAYRAIL_LOCK_TIMEOUT_MS", "processor.lock_timeout_ms"),
    ("PAYRAIL_BATCH_MAX_PAYMENTS", "processor.batch_max_payments"),
    ("PAYRAIL_BATCH_WORKERS", "processor.batch_workers"),
    ("PAYRAIL_BATCH_WINDOW_US", "processor.batch_window_us"),
    ("PAYRAIL_COMMIT_WAIT_MS", "processor.commit_wait_ms"),
    ("PAYRAIL_KEY_TTL_SECS", "idempotency.key_ttl_secs"),
    (
        "PAYRAIL_REAPER_INTERVAL_SECS",
        "idempotency.reaper_interval_secs",
    ),
    ("PAYRAIL_MAX_PLUGIN_BYTES", "plugins.max_plugin_bytes"),
    ("PAYRAIL_PLUGIN_FUEL", "plugins.limits.fuel"),
    (
        "PAYRAIL_PLUGIN_MEMORY_BYTES",
        "plugins.limits.max_memory_bytes",
    ),
    ("PAYRAIL_PLUGIN_TIMEOUT_MS", "plugins.limits.timeout_ms"),
    ("PAYRAIL_LOCKS_BACKEND", "locks.backend"),
    ("REDIS_URL", "locks.redis_url"),
    ("PAYRAIL_LOCKS_DIR", "locks.dir"),
    ("PAYRAIL_LOCKS_TTL_MS", "locks.ttl_ms"),
    ("PAYRAIL_LOG_FORMAT", "log.format"),
];
/// Variables read at most: a bound on what the environment can make us
/// parse.
const MAX_ENV_VARS: usize = 4096;

/// The key path (`server.listen`) variable `name` sets; `None` when it is
/// not a configuration variable. `PAYRAIL_X__Y` with an unknown section
/// is an error, not ignored: a typo must not leave a default in place.
pub fn env_key(name: &str) -> Result<Option<String>> {
    if let Some((_, key)) = ENV_ALIASES.iter().find(|(n, _)| *n == name) {
        return Ok(Some((*key).to_string()));
    }
    if name == ENV_SINKS {
        return Ok(Some("sinks".into()));
    }
    let Some((section, tail)) = name
        .strip_prefix(ENV_PREFIX)
        .and_then(|rest| rest.split_once("__"))
    else {
        return Ok(None);
    };
    let section = section.to_ascii_lowercase();
    if !ENV_SECTIONS.contains(&section.as_str()) || tail.is_empty() {
        return Err(invalid(format!(
            "environment variable {name}: `{section}` is not a section (use one of {}, or {ENV_SINKS})",
            ENV_SECTIONS.join(", ")
        )));
    }
    let tail = tail.to_ascii_lowercase().replace("__", ".");
    Ok(Some(format!("{section}.{tail}")))
}

/// One configuration layer (the file, or one variable) under the name
/// errors and `--check-config` give it.
struct Layer {
    name: String,
    data: figment::value::Dict,
}

impl Layer {
    /// Variable `name` setting key path `key` to `value`.
    fn variable(name: &str, key: &str, value: figment::value::Value) -> Layer {
        let data = figment::util::nest(key, value)
            .into_dict()
            .expect("a key path (never empty) nests into a table");
        Layer {
            name: format!("environment variable {name}"),
            data,
        }
    }

    /// The TOML text of the file at `path`.
    fn file(path: &Path, text: &str) -> Result<Layer> {
        use figment::Provider;
        use figment::providers::Format;
        let mut profiles = figment::providers::Toml::string(text)
            .data()
            .map_err(|e| invalid(format!("config file {}: {e}", path.display())))?;
        Ok(Layer {
            name: format!("file {}", path.display()),
            data: profiles
                .remove(&figment::Profile::Default)
                .unwrap_or_default(),
        })
    }
}

impl figment::Provider for Layer {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named(self.name.clone())
    }

    fn data(
        &self,
    ) -> std::result::Result<
        figment::value::Map<figment::Profile, figment::value::Dict>,
        figment::Error,
    > {
        Ok(figment::Profile::Default.collect(self.data.clone()))
    }
}

/// A variable's text as a configuration value: figment's syntax (numbers,
/// booleans, `[..]` lists, `{k = v}` tables), except where the key is a
/// string by default, which keeps the text as it is (`PAYRAIL_LOCKS__REDIS_PREFIX=123`).
fn env_value(key: &str, raw: &str, defaults: &serde_json::Value) -> figment::value::Value {
    let default = key.split('.').try_fold(defaults, |v, k| v.get(k));
    if matches!(default, Some(serde_json::Value::String(_))) {
        return figment::value::Value::from(raw.to_string());
    }
    raw.parse()
        .unwrap_or_else(|never: std::convert::Infallible| match never {})
}

/// A configuration and the layers it came from (`--check-config`).
pub struct Layered {
    /// The merged configuration, not yet validated.
    pub config: Config,
    figment: figment::Figment,
}

impl Layered {
    /// Every setting's key path and where its value came from: `default`,
    /// `file PATH` or `environment variable NAME`.
    pub fn sources(&self) -> Vec<(String, String)> {
        let json = serde_json::to_value(&self.config).expect("config serializes");
        let mut keys = Vec::new();
        leaf_keys(&json, String::new(), &mut keys);
        keys.into_iter()
            .map(|k| {
                let from = self
                    .figment
                    .find_metadata(&k)
                    .map(|m| m.name.to_string())
                    .unwrap_or_else(|| "default".into());
                (k, from)
            })
            .collect()
    }
}

/// Key paths of every leaf of `v` (a list is one leaf: it comes whole
/// from one layer).
fn leaf_keys(v: &serde_json::Value, at: String, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, child) in map {
                let path = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                leaf_keys(child, path, out);
            }
        }
        _ => out.push(at),
    }
}

/// The process's variables, as [`Config::load`] takes them (those that are
/// not Unicode cannot be configuration and are left out).
pub fn process_env() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

impl Config {
    /// Reads `path` (if any), then applies the variables of `vars` (the
    /// process environment in production, a list in tests), then
    /// validates.
    pub fn load(
        path: Option<&Path>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config> {
        let config = Config::layered(path, vars)?.config;
        config.validate()?;
        Ok(config)
    }

    /// The defaults, then the file, then the variables, merged by figment
    /// (not validated). Aliases are applied before the mechanical names.
    pub fn layered(
        path: Option<&Path>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Layered> {
        let mut figment = figment::Figment::new();
        if let Some(p) = path {
            figment = figment.merge(Layer::file(p, &read_config_file(p)?)?);
        }
        figment = Config::merge_env(figment, vars)?;
        let config = figment
            .extract::<Config>()
            .map_err(|e| invalid(e.to_string()))?;
        Ok(Layered { config, figment })
    }

    fn merge_env(
        mut figment: figment::Figment,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<figment::Figment> {
        let defaults = serde_json::to_value(Config::default()).expect("config serializes");
        let mut layers = Vec::new();
        for (name, raw) in vars.into_iter().take(MAX_ENV_VARS) {
            let raw = raw.trim();
            if raw.is_empty() {
                continue;
            }
            if let Some(key) = env_key(&name)? {
                let alias = ENV_ALIASES.iter().any(|(n, _)| *n == name);
                let value = env_value(&key, raw, &defaults);
                layers.push((!alias, Layer::variable(&name, &key, value)));
            }
        }
        // aliases first, then the mechanical names; each in name order
        layers.sort_by(|a, b| (a.0, &a.1.name).cmp(&(b.0, &b.1.name)));
        for (_, layer) in layers {
            figment = figment.merge(layer);
        }
        Ok(figment)
    }

    /// Parses a TOML file.
    pub fn from_file(path: &Path) -> Result<Config> {
        let text = read_config_file(path)?;
        Config::from_toml(&text)
            .map_err(|e| invalid(format!("config file {}: {e}", path.display())))
    }

    /// Parses TOML text (unknown keys refused).
    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Applies variables on top of this configuration (as [`Config::load`]
    /// does on top of the file).
    pub fn apply_env(&mut self, vars: impl IntoIterator<Item = (String, String)>) -> Result<()> {
        use figment::providers::Serialized;
        let figment = figment::Figment::from(Serialized::defaults(&*self));
        *self = Config::merge_env(figment, vars)?
            .extract::<Config>()
            .map_err(|e| invalid(e.to_string()))?;
        Ok(())
    }

    /// Checks every value against its allowed range; the error names the
    /// setting and the range.
    pub fn validate(&self) -> Result<()> {
        self.listen_addr()?;
        if let Some(tls) = &self.server.tls {
            tls.load().map_err(|e| invalid(e.to_string()))?;
        }
        if let Some(e) = &self.log.otlp_endpoint
            && !(e.starts_with("http://") && e.len() > "http://".len())
        {
            return Err(invalid(format!(
                "log.otlp_endpoint = {e:?}: give the collector's http:// URL (http://host:4318)"
            )));
        }
        let s = &self.server;
        range(
            "server.request_timeout_ms",
            s.request_timeout_ms,
            100,
            600_000,
        )?;
        range("server.shutdown_grace_ms", s.shutdown_grace_ms, 0, 600_000)?;
        range(
            "server.max_json_body_bytes",
            s.max_json_body_bytes,
            1024,
            16 << 20,
        )?;
        range("server.max_in_flight", s.max_in_flight, 1, 100_000)?;
        range(
            "server.api_key_cache_ms",
            s.api_key_cache_ms,
            0,
            crate::apikeys::MAX_KEY_CACHE_MS,
        )?;
        range("database.pool_size", self.database.pool_size, 1, 1000)?;
        self.validate_session()?;
        if let Some(url) = &self.database.url {
            // the same parse as every connection's, TLS settings included
            crate::db::Target::parse(url).map_err(|e| invalid(format!("database.url: {e}")))?;
        }
        self.validate_tenants()?;
        self.validate_locks()?;
        let p = &self.processor;
        range("processor.lock_timeout_ms", p.lock_timeout_ms, 1, 600_000)?;
        range("processor.commit_wait_ms", p.commit_wait_ms, 100, 600_000)?;
        range(
            "processor.statement_timeout_ms",
            p.statement_timeout_ms,
            1,
            3_600_000,
        )?;
        range(
            "processor.max_attempts",
            p.max_attempts,
            1,
            crate::processor::retry::MAX_ATTEMPTS,
        )?;
        self.processor()
            .batch
            .validate()
            .map_err(|e| invalid(format!("processor: {e}")))?;
        let g = &self.plugins;
        range(
            "plugins.max_plugin_bytes",
            g.max_plugin_bytes,
            1024,
            64 << 20,
        )?;
        range(
            "plugins.max_wasm_stack_bytes",
            g.max_wasm_stack_bytes,
            64 * 1024,
            16 << 20,
        )?;
        range(
            "plugins.max_concurrent_instances",
            g.max_concurrent_instances,
            1,
            10_000,
        )?;
        let l = &g.limits;
        range("plugins.limits.fuel", l.fuel, 1_000, 10_000_000_000)?;
        range(
            "plugins.limits.max_memory_bytes",
            l.max_memory_bytes,
            64 * 1024,
            4 << 30,
        )?;
        range("plugins.limits.timeout_ms", l.timeout_ms, 1, 60_000)?;
        range(
            "plugins.limits.max_input_bytes",
            l.max_input_bytes,
            1024,
            64 << 20,
        )?;
        range(
            "plugins.limits.max_output_bytes",
            l.max_output_bytes,
            256,
            64 << 20,
        )?;
        range("plugins.limits.max_log_bytes", l.max_log_bytes, 0, 1 << 20)?;
        range("plugins.limits.max_events", l.max_events, 0, 64)?;
        range(
            "plugins.limits.max_event_payload_bytes",
            l.max_event_payload_bytes,
            2,
            64 << 10,
        )?;
        self.validate_plugin_caps()?;
        let i = &self.idempotency;
        range(
            "idempotency.key_ttl_secs",
            i.key_ttl_secs,
            60,
            365 * 24 * 3600,
        )?;
        range(
            "idempotency.reaper_interval_secs",
            i.reaper_interval_secs,
            1,
            24 * 3600,
        )?;
        range("idempotency.reaper_batch", i.reaper_batch, 1, 100_000)?;
        tracing_subscriber::EnvFilter::try_new(&self.log.filter)
            .map_err(|e| invalid(format!("log.filter {:?}: {e}", self.log.filter)))?;
        let o = &self.outbox;
        range("outbox.batch_size", o.batch_size, 1, 1000)?;
        range("outbox.lease_ms", o.lease_ms, 500, 3_600_000)?;
        range("outbox.poll_interval_ms", o.poll_interval_ms, 10, 60_000)?;
        range("outbox.max_attempts", o.max_attempts, 1, 1000)?;
        range("outbox.backoff_base_ms", o.backoff_base_ms, 1, 3_600_000)?;
        range(
            "outbox.backoff_max_ms",
            o.backoff_max_ms,
            o.backoff_base_ms,
            24 * 3_600_000,
        )?;
        range("outbox.concurrency", o.concurrency, 1, 1000)?;
        range("sinks (count)", self.sinks.len(), 0, 64)?;
        self.validate_sinks()?;
        self.validate_lease()
    }

    /// The session timeouts: in range, and the idle-in-transaction timeout
    /// no shorter than a payment transaction may legitimately sit idle.
    fn validate_session(&self) -> Result<()> {
        let d = &self.database;
        if !(100..=3_600_000).contains(&d.statement_timeout_ms) {
            return Err(invalid(format!(
                "database.statement_timeout_ms = {} is outside 100..=3600000",
                d.statement_timeout_ms
            )));
        }
        let min = self.min_idle_in_transaction_ms();
        if let Some(idle) = d.idle_in_transaction_timeout_ms
            && !(min..=86_400_000).contains(&idle)
        {
            return Err(invalid(format!(
                "database.idle_in_transaction_timeout_ms = {idle} is outside {min}..=86400000: \
                 a payment transaction sits idle while its pipeline runs, up to 2 calls (live and \
                 shadow) x {} steps x plugins.max_limits.timeout_ms ({} ms) + {IDLE_MARGIN_MS} ms",
                crate::registry::MAX_STEPS,
                self.plugins.caps().timeout_ms
            )));
        }
        Ok(())
    }

    /// The shortest idle-in-transaction timeout accepted: the longest a
    /// payment transaction sends nothing, i.e. its pipeline's plugin calls
    /// (live and shadow, every step at the operator's cap on a step's
    /// timeout) plus [`IDLE_MARGIN_MS`].
    pub fn min_idle_in_transaction_ms(&self) -> u64 {
        let steps = crate::registry::MAX_STEPS as u64;
        // a step may raise its timeout up to the operator's cap
        self.plugins
            .caps()
            .timeout_ms
            .saturating_mul(2 * steps)
            .saturating_add(IDLE_MARGIN_MS)
    }

    /// The idle-in-transaction timeout in force: the configured one, else
    /// the larger of [`DEFAULT_IDLE_IN_TRANSACTION_MS`] and the minimum.
    pub fn idle_in_transaction_ms(&self) -> u64 {
        self.database
            .idle_in_transaction_timeout_ms
            .unwrap_or_else(|| {
                DEFAULT_IDLE_IN_TRANSACTION_MS.max(self.min_idle_in_transaction_ms())
            })
    }

    /// The pool of `serve`, `relay` and the one-shot commands: this
    /// configuration's size and session settings.
    pub fn pool(&self, url: &str) -> Result<crate::db::Pool> {
        crate::db::pool_with(url, self.database.pool_size, &self.session())
    }

    /// The settings every database session of the host starts with.
    pub fn session(&self) -> crate::db::SessionSettings {
        crate::db::SessionSettings {
            statement_timeout_ms: self.database.statement_timeout_ms,
            idle_in_transaction_timeout_ms: self.idle_in_transaction_ms(),
        }
    }

    /// The shortest `outbox.lease_ms` accepted with these sinks: a
    /// worst-case delivery round, i.e. `batch_size` events delivered
    /// `concurrency` at a time (so `ceil(batch_size / concurrency)` waves),
    /// each wave as slow as the slowest sink's `timeout_ms` (an event's
    /// sinks run in parallel), plus [`LEASE_MARGIN_MS`]. A shorter lease
    /// expires mid-round: another relay claims the same events and
    /// delivers them twice, and this relay's outcome is not recorded.
    /// `None` without sinks (only hold timers run).
    pub fn min_lease_ms(&self) -> Option<u64> {
        let slowest = self.sinks.iter().map(|s| s.timeout_ms).max()?;
        let o = &self.outbox;
        let batch = u64::try_from(o.batch_size.max(1)).unwrap_or(u64::MAX);
        let waves = batch.div_ceil(o.concurrency.max(1) as u64);
        Some(
            slowest
                .saturating_mul(waves)
                .saturating_add(LEASE_MARGIN_MS),
        )
    }

    fn validate_lease(&self) -> Result<()> {
        let Some(min) = self.min_lease_ms() else {
            return Ok(());
        };
        let o = &self.outbox;
        if o.lease_ms < min {
            let slowest = self.sinks.iter().map(|s| s.timeout_ms).max().unwrap_or(0);
            return Err(invalid(format!(
                "outbox.lease_ms = {} is shorter than a worst-case delivery round: the slowest \
                 sink's timeout_ms ({slowest}) x ceil(batch_size {} / concurrency {}) + \
                 {LEASE_MARGIN_MS} ms = {min} ms; a lease that expires mid-round lets another \
                 relay deliver the same events again. Raise outbox.lease_ms to at least {min}, \
                 or lower the sinks' timeout_ms or outbox.batch_size, or raise outbox.concurrency",
                o.lease_ms, o.batch_size, o.concurrency
            )));
        }
        Ok(())
    }

    fn validate_sinks(&self) -> Result<()> {
        let mut names = std::collections::HashSet::new();
        for s in &self.sinks {
            let name = &s.name;
            if name.is_empty() || name.len() > 64 || !names.insert(name.as_str()) {
                return Err(invalid(format!(
                    "sinks: name {name:?} must be 1-64 bytes and unique"
                )));
            }
            range(
                &format!("sinks.{name}.timeout_ms"),
                s.timeout_ms,
                100,
                120_000,
            )?;
            if s.topics.is_empty()
                || s.topics
                    .iter()
                    .any(|t| t.is_empty() || (t.contains('*') && !(t == "*" || t.ends_with(".*"))))
            {
                return Err(invalid(format!(
                    "sinks.{name}.topics: give one or more patterns like `payment.approved`, `payment.*` or `*`"
                )));
            }
            match s.kind {
                SinkKind::Webhook => {
                    let url = s.url.as_deref().unwrap_or("");
                    if !(url.starts_with("https://") || url.starts_with("http://")) {
                        return Err(invalid(format!(
                            "sinks.{name}.url: a webhook needs an https:// or http:// URL"
                        )));
                    }
                    if let Some(ca) = &s.ca_file {
                        if !url.starts_with("https://") {
                            return Err(invalid(format!(
                                "sinks.{name}.ca_file is only for an https:// URL"
                            )));
                        }
                        crate::tls::load_roots(&ca.to_string_lossy(), "ca_file")
                            .map_err(|e| invalid(format!("sinks.{name}: {e}")))?;
                    }
                    let secret = s.resolved_secret(|k| std::env::var(k).ok());
                    if !secret
                        .as_ref()
                        .is_some_and(|x| WEBHOOK_SECRET_BYTES.contains(&x.len()))
                    {
                        return Err(invalid(format!(
                            "sinks.{name}: a webhook needs `secret` (or `secret_env` naming a set variable) of 16-1024 bytes"
                        )));
                    }
                }
                SinkKind::Nats => {
                    if let Some(url) = &s.url
                        && !(url.starts_with("nats://") || url.starts_with("tls://"))
                    {
                        return Err(invalid(format!(
                            "sinks.{name}.url: a NATS URL starts with nats://"
                        )));
                    }
                }
                SinkKind::File => {
                    if s.path.is_none() {
                        return Err(invalid(format!("sinks.{name}: a file sink needs `path`")));
                    }
                }
            }
        }
        Ok(())
    }

    /// `[plugins]`: the caps within the hard caps, the default limits within
    /// the caps, the compile bounds in range.
    fn validate_plugin_caps(&self) -> Result<()> {
        let g = &self.plugins;
        let caps = g.caps();
        if let Some((name, v, cap)) = caps.first_above(&PluginLimits::HARD_CAPS) {
            return Err(invalid(format!(
                "plugins.max_limits.{name} = {v} is above its hard cap of {cap}"
            )));
        }
        if let Some((name, _)) = caps.fields().into_iter().find(|(_, v)| *v == 0) {
            return Err(invalid(format!(
                "plugins.max_limits.{name} must be positive"
            )));
        }
        if let Some((name, v, cap)) = g.limits.first_above(&caps) {
            return Err(invalid(format!(
                "plugins.limits.{name} = {v} is above the operator cap plugins.max_limits.{name} = {cap}; raise the cap or lower the default"
            )));
        }
        range(
            "plugins.max_loaded_plugins",
            g.max_loaded_plugins as u64,
            1,
            100_000,
        )?;
        range(
            "plugins.max_concurrent_compiles",
            g.max_concurrent_compiles as u64,
            1,
            64,
        )?;
        range(
            "plugins.compile_timeout_ms",
            g.compile_timeout_ms,
            1_000,
            600_000,
        )
    }

    /// `[tenants]` and the `[server]` connection bounds.
    fn validate_tenants(&self) -> Result<()> {
        let s = &self.server;
        range(
            "server.header_read_timeout_ms",
            s.header_read_timeout_ms,
            100,
            600_000,
        )?;
        range("server.max_connections", s.max_connections, 1, 1_000_000)?;
        let t = &self.tenants;
        range(
            "tenants.max_in_flight_requests",
            t.max_in_flight_requests,
            1,
            1_000_000,
        )?;
        range(
            "tenants.max_running_pipelines",
            t.max_running_pipelines,
            0,
            10_000,
        )?;
        // capped at the pool size where it is used
        range("tenants.max_connections", t.max_connections, 1, 10_000)?;
        range(
            "tenants.batch_lanes",
            t.batch_lanes,
            1,
            crate::processor::MAX_BATCH_LANES,
        )?;
        range(
            "tenants.key_requests_per_sec",
            t.key_requests_per_sec,
            1,
            1_000_000,
        )?;
        range("tenants.key_burst", t.key_burst, 1, 10_000_000)?;
        range("tenants.plugin_thread_nice", t.plugin_thread_nice, 0, 19)?;
        range(
            "tenants.unknown_key_lookups_per_sec",
            t.unknown_key_lookups_per_sec,
            1,
            100_000,
        )
    }

    /// The listen address, parsed.
    pub fn listen_addr(&self) -> Result<SocketAddr> {
        self.server.listen.parse().map_err(|e| {
            invalid(format!(
                "server.listen {:?} is not an address like 127.0.0.1:8080: {e}",
                self.server.listen
            ))
        })
    }

    fn validate_locks(&self) -> Result<()> {
        let l = &self.locks;
        range("locks.ttl_ms", l.ttl_ms, 100, 3_600_000)?;
        range("locks.wait_ms", l.wait_ms, 1, 600_000)?;
        range(
            "locks.file_slots",
            u64::from(l.file_slots),
            1,
            u64::from(crate::locks::file::MAX_SLOTS),
        )?;
        match l.backend {
            LockBackend::File if l.dir.is_none() => Err(invalid(
                "locks.backend = \"file\" needs locks.dir (or PAYRAIL_LOCKS_DIR): the directory every host on this machine shares",
            )),
            LockBackend::Redis
                if !l.redis_url.starts_with("redis://")
                    && !l.redis_url.starts_with("rediss://") =>
            {
                Err(invalid(format!(
                    "locks.redis_url {:?}: use redis://host:port/db",
                    redact_url(&l.redis_url)
                )))
            }
            _ => Ok(()),
        }
    }

    /// The engine configuration.
    pub fn engine(&self) -> EngineConfig {
        EngineConfig {
            max_wasm_stack_bytes: self.plugins.max_wasm_stack_bytes,
            max_plugin_bytes: self.plugins.max_plugin_bytes,
            max_concurrent_instances: self.plugins.max_concurrent_instances,
            limits: self.plugins.limits,
            caps: self.plugins.caps(),
            max_loaded_plugins: self.plugins.max_loaded_plugins,
            max_concurrent_compiles: self.plugins.max_concurrent_compiles,
            compile_timeout_ms: self.plugins.compile_timeout_ms,
            slow_calls: crate::engine::SlowCalls {
                after_ms: crate::engine::SlowCalls::AFTER_MS,
                nice: self.tenants.plugin_thread_nice,
            },
        }
    }

    /// The engine settings from the environment alone (no config file):
    /// what the one-shot CLI commands use, so `PAYRAIL_MAX_PLUGIN_BYTES` and
    /// the plugin limit variables apply to them as to `serve`.
    pub fn engine_from_env() -> Result<EngineConfig> {
        let mut engine = Config::load(None, process_env())?.engine();
        // a tool's one thread must not end up at a lower priority
        engine.slow_calls = crate::engine::SlowCalls::OFF;
        Ok(engine)
    }

    /// The processor settings.
    pub fn processor(&self) -> ProcessorSettings {
        ProcessorSettings {
            lock_timeout_ms: self.processor.lock_timeout_ms,
            statement_timeout_ms: self.processor.statement_timeout_ms,
            key_ttl_secs: self.idempotency.key_ttl_secs,
            max_attempts: self.processor.max_attempts,
            limits: self.plugins.limits,
            batch: BatchSettings {
                max_payments: self.processor.batch_max_payments,
                workers: self.processor.batch_workers,
                window_us: self.processor.batch_window_us,
                lanes: self.tenants.batch_lanes,
                ..BatchSettings::default()
            },
            tenant_connections: self
                .tenants
                .max_connections
                .min(self.database.pool_size.max(1)),
            tenant_pipelines: match self.tenants.max_running_pipelines {
                0 => crate::processor::half_the_cores(),
                n => n,
            },
            commit_wait_ms: self.processor.commit_wait_ms,
        }
    }

    /// Request timeout as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.server.request_timeout_ms)
    }

    /// The configuration as TOML with secrets redacted (see [`redact_url`]:
    /// the database password, the sinks' URL credentials and query values,
    /// webhook secrets): safe to print and log.
    pub fn redacted(&self) -> String {
        let mut c = self.clone();
        c.database.url = c.database.url.as_deref().map(redact_url);
        c.locks.redis_url = redact_url(&c.locks.redis_url);
        for s in &mut c.sinks {
            if s.secret.is_some() {
                s.secret = Some("***".into());
            }
            s.url = s.url.as_deref().map(redact_url);
        }
        toml::to_string(&c).expect("config serializes")
    }
}

/// The defaults of [`Config::session`]: written here, where the default
/// configuration is, so `db` needs nothing of `config`.
impl Default for crate::db::SessionSettings {
    fn default() -> Self {
        Config::default().session()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_printed_configuration_hides_the_database_password() {
        let mut c = Config::default();
        c.database.url = Some("postgres://u:hunter2@h/db".into());
        let printed = c.redacted();
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("u:***@h/db"), "{printed}");
    }

    #[test]
    fn sinks_are_parsed_validated_and_redacted() {
        let base = r#"
[outbox]
lease_ms = 40000
[[sinks]]
name = "hook"
type = "webhook"
topics = ["payment.*"]
url = "http://127.0.0.1:9/x"
secret = "0123456789abcdef-secret"
[[sinks]]
name = "bus"
type = "nats"
topics = ["*"]
[[sinks]]
name = "log"
type = "file"
topics = ["payment.approved"]
path = "/tmp/x.jsonl"
"#;
        let c = Config::from_toml(base).unwrap();
        c.validate().unwrap();
        assert_eq!(c.sinks.len(), 3);
        assert_eq!(c.sinks[1].timeout_ms, 5000);
        assert!(c.sinks[0].matches("payment.approved") && !c.sinks[0].matches("fee.charged"));
        assert!(c.sinks[1].matches("anything"));
        assert!(c.sinks[2].matches("payment.approved") && !c.sinks[2].matches("payment.declined"));
        let shown = c.redacted();
        assert!(
            !shown.contains("0123456789abcdef-secret") && shown.contains("***"),
            "{shown}"
        );
        let printed = Config::from_toml(&shown).unwrap();
        assert_eq!(printed.sinks.len(), 3);
        for (bad, needle) in [
            ("url = \"http://127.0.0.1:9/x\"", "https:// or http:// URL"),
            ("secret = \"0123456789abcdef-secret\"", "needs `secret`"),
            ("topics = [\"payment.*\"]", "topics"),
            ("name = \"bus\"", "unique"),
        ] {
            let replacement = match needle {
                "https:// or http:// URL" => "url = \"ftp://x\"",
                "needs `secret`" => "secret = \"short\"",
                "topics" => "topics = [\"pay*ment\"]",
                _ => "name = \"hook\"",
            };
            let text = base.replacen(bad, replacement, 1);
            let e = Config::from_toml(&text).unwrap().validate().unwrap_err();
            assert!(e.to_string().contains(needle), "{needle}: {e}");
        }
        let e = Config::from_toml("[[sinks]]\nname = \"f\"\ntype = \"file\"\ntopics = [\"*\"]\n")
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("needs `path`"), "{e}");
        assert!(
            Config::from_toml("[[sinks]]\nname = \"f\"\ntype = \"kafka\"\ntopics = []\n").is_err()
        );
        let e = Config::from_toml("[outbox]\nbatch_size = 0\n")
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("outbox.batch_size"), "{e}");
    }

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
        assert_eq!(Config::from_toml("").unwrap(), Config::default());
    }

    #[test]
    fn the_otlp_endpoint_must_be_an_http_url() {
        let mut c = Config::default();
        c.apply_env(env(&[(
            "PAYRAIL_LOG__OTLP_ENDPOINT",
            "http://127.0.0.1:4318",
        )]))
        .unwrap();
        c.validate().unwrap();
        for bad in ["https://collector:4318", "127.0.0.1:4318", "http://"] {
            c.log.otlp_endpoint = Some(bad.into());
            let e = c.validate().unwrap_err();
            assert!(e.to_string().contains("log.otlp_endpoint"), "{bad}: {e}");
        }
    }

    #[test]
    fn file_then_env_overrides() {
        let mut c = Config::from_toml(
            "[server]\nlisten = \"0.0.0.0:9000\"\n[plugins.limits]\nfuel = 5000\n",
        )
        .unwrap();
        assert_eq!(c.server.listen, "0.0.0.0:9000");
        assert_eq!(c.plugins.limits.fuel, 5000);
        assert_eq!(c.plugins.limits.timeout_ms, 200, "other limits default");
        c.apply_env(env(&[
            ("PAYRAIL_LISTEN", "127.0.0.1:1"),
            ("PAYRAIL_POOL_SIZE", "3"),
            ("PAYRAIL_KEY_TTL_SECS", "120"),
        ]))
        .unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:1");
        assert_eq!(c.database.pool_size, 3);
        assert_eq!(c.processor().key_ttl_secs, 120);
        c.validate().unwrap();
    }

    #[test]
    fn the_lock_service_settings_are_checked() {
        let mut c = Config::default();
        assert_eq!(c.locks.backend, LockBackend::Advisory);
        c.apply_env(env(&[("PAYRAIL_LOCKS_BACKEND", "file")]))
            .unwrap();
        let e = c.validate().unwrap_err();
        assert!(e.to_string().contains("locks.dir"), "{e}");
        c.apply_env(env(&[("PAYRAIL_LOCKS_DIR", "/var/lib/payrail/locks")]))
            .unwrap();
        c.validate().unwrap();
        let e = c
            .apply_env(env(&[("PAYRAIL_LOCKS_BACKEND", "zookeeper")]))
            .unwrap_err();
        assert!(e.to_string().contains("advisory"), "{e}");
        let mut c = Config::default();
        c.locks.backend = LockBackend::Redis;
        c.locks.redis_url = "redis://:pw-secret@h:6379/0".into();
        c.validate().unwrap();
        assert!(!c.redacted().contains("pw-secret"), "{}", c.redacted());
        c.locks.redis_url = "http://h".into();
        assert!(c.validate().is_err());
        c.locks.redis_url = "redis://h".into();
        c.locks.ttl_ms = 0;
        let e = c.validate().unwrap_err();
        assert!(e.to_string().contains("locks.ttl_ms"), "{e}");
    }

    #[test]
    fn the_commit_wait_and_the_database_tls_settings_are_checked() {
        let mut c = Config::default();
        c.apply_env(env(&[("PAYRAIL_COMMIT_WAIT_MS", "2000")]))
            .unwrap();
        assert_eq!(c.processor().commit_wait_ms, 2000);
        c.validate().unwrap();
        c.processor.commit_wait_ms = 0;
        let e = c.validate().unwrap_err();
        assert!(e.to_string().contains("processor.commit_wait_ms"), "{e}");
        let mut c = Config::default();
        c.database.url = Some("postgres://u@h/db?sslmode=verify-full".into());
        let e = c.validate().unwrap_err();
        assert!(e.to_string().contains("need sslrootcert"), "{e}");
    }

    #[test]
    fn errors_name_the_setting() {
        let e = Config::from_toml("[server]\nlisen = \"x\"").unwrap_err();
        assert!(e.contains("unknown field `lisen`"), "{e}");
        let mut c = Config::default();
        let e = c
            .apply_env(env(&[("PAYRAIL_POOL_SIZE", "many")]))
            .unwrap_err();
        assert!(e.to_string().contains("PAYRAIL_POOL_SIZE"), "{e}");
        c.database.pool_size = 0;
        let e = c.validate().unwrap_err();
        assert_eq!(e.code(), "invalid_config");
        assert!(e.to_string().contains("database.pool_size = 0"), "{e}");
        let mut c = Config::default();
        c.apply_env(env(&[("PAYRAIL_API_KEY_CACHE_MS", "0")]))
            .unwrap();
        assert_eq!(c.server.api_key_cache_ms, 0, "0 turns the key cache off");
        c.validate().unwrap();
        c.server.api_key_cache_ms = crate::apikeys::MAX_KEY_CACHE_MS + 1;
        let e = c.validate().unwrap_err();
        assert!(e.to_string().contains("server.api_key_cache_ms"), "{e}");
        let mut c = Config::default();
        c.server.listen = "nowhere".into();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("server.listen")
        );
    }

    #[test]
    fn plugin_caps_are_validated() {
        let c = Config::from_toml("[plugins.max_limits]\ntimeout_ms = 500\n").unwrap();
        c.validate().unwrap();
        assert_eq!(c.engine().caps.timeout_ms, 500);
        assert_eq!(
            c.engine().caps.fuel,
            PluginLimits::DEFAULT_CAPS.fuel,
            "others default"
        );
        let e = Config::from_toml("[plugins.max_limits]\nfuel = 20000000000\n")
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("plugins.max_limits.fuel = 20000000000 is above its hard cap"),
            "{e}"
        );
        let e = Config::from_toml("[plugins.max_limits]\ntimeout_ms = 100\n")
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(
            e.to_string().contains("plugins.limits.timeout_ms = 200 is above the operator cap plugins.max_limits.timeout_ms = 100"),
            "{e}"
        );
        let e = Config::from_toml("[plugins]\nmax_concurrent_compiles = 0\n")
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(
            e.to_string().contains("plugins.max_concurrent_compiles"),
            "{e}"
        );
    }

    #[test]
    fn tenant_bounds_are_validated_and_capped() {
        let c = Config::from_toml(
            "[tenants]\nmax_connections = 64\nmax_running_pipelines = 3\nbatch_lanes = 2\n[database]\npool_size = 8\n",
        )
        .unwrap();
        c.validate().unwrap();
        let p = c.processor();
        assert_eq!(p.tenant_connections, 8, "capped at the pool size");
        assert_eq!(p.tenant_pipelines, 3);
        assert_eq!(p.batch.lanes, 2);
        assert!(
            Config::default().processor().tenant_pipelines >= 1,
            "0: half the cores"
        );
        for (bad, name) in [
            (
                "[tenants]\nmax_in_flight_requests = 0\n",
                "tenants.max_in_flight_requests",
            ),
            (
                "[tenants]\nkey_requests_per_sec = 0\n",
                "tenants.key_requests_per_sec",
            ),
            (
                "[tenants]\nunknown_key_lookups_per_sec = 0\n",
                "tenants.unknown_key_lookups_per_sec",
            ),
            ("[tenants]\nbatch_lanes = 65\n", "tenants.batch_lanes"),
            (
                "[server]\nheader_read_timeout_ms = 10\n",
                "server.header_read_timeout_ms",
            ),
            ("[server]\nmax_connections = 0\n", "server.max_connections"),
        ] {
            let e = Config::from_toml(bad).unwrap().validate().unwrap_err();
            assert!(e.to_string().contains(name), "{name}: {e}");
        }
    }

    #[test]
    fn sink_urls_lose_credentials_query_values_and_fragments() {
        let hook = "http://hook:pw%21x@h:9/p?token=qs-secret&sslmode=require#frag-secret";
        assert_eq!(
            redact_url(hook),
            "http://hook:***@h:9/p?token=***&sslmode=require#***"
        );
        assert_eq!(redact_url("nats://tok-secret@h:4222"), "nats://***@h:4222");
        assert_eq!(
            redact_url("nats://u:np-secret@h:4222"),
            "nats://u:***@h:4222"
        );
        assert_eq!(redact_url("postgres://user@h/db"), "postgres://user@h/db");
        let secrets = url_secrets(hook);
        for s in ["pw%21x", "pw!x", "qs-secret", "frag-secret"] {
            assert!(secrets.contains(&s.to_string()), "{s}: {secrets:?}");
        }
        assert_eq!(
            scrub("POST http://hook:pw!x@h/?token=qs-secret: 1", &secrets),
            "POST http://hook:***@h/?token=***: 1"
        );
        let mut c = Config::from_toml(&format!(
            "[[sinks]]\nname = \"h\"\ntype = \"webhook\"\ntopics = [\"*\"]\nurl = \"{hook}\"\nsecret = \"0123456789abcdef-whsec\"\n\
             [[sinks]]\nname = \"n\"\ntype = \"nats\"\ntopics = [\"*\"]\nurl = \"nats://tok-secret@h:1\"\n"
        ))
        .unwrap();
        c.outbox.lease_ms = 60_000;
        c.validate().unwrap();
        let printed = c.redacted();
        for s in ["pw", "qs-secret", "frag-secret", "tok-secret", "whsec"] {
            assert!(!printed.contains(s), "{s} printed: {printed}");
        }
    }

    #[test]
    fn a_lease_shorter_than_a_delivery_round_is_refused() {
        let text = "[outbox]\nbatch_size = 100\nconcurrency = 16\nlease_ms = 36999\n\
                    [[sinks]]\nname = \"f\"\ntype = \"file\"\ntopics = [\"*\"]\npath = \"/tmp/x\"\n\
                    [[sinks]]\nname = \"g\"\ntype = \"file\"\ntopics = [\"*\"]\npath = \"/tmp/y\"\ntimeout_ms = 1000\n";
        let mut c = Config::from_toml(text).unwrap();
        // slowest sink 5000 ms x ceil(100 / 16) = 7 waves + 2000 ms
        assert_eq!(c.min_lease_ms(), Some(37_000));
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("outbox.lease_ms = 36999")
                && e.contains("37000 ms")
                && e.contains("ceil(batch_size 100 / concurrency 16)"),
            "{e}"
        );
        c.outbox.lease_ms = 37_000;
        c.validate().unwrap();
        c.outbox.concurrency = 100;
        assert_eq!(c.min_lease_ms(), Some(7_000));
        c.sinks.clear();
        assert_eq!(c.min_lease_ms(), None, "no sinks: only timers, no rule");
        c.outbox.lease_ms = 500;
        c.validate().unwrap();
    }

    #[test]
    fn session_timeouts_default_validate_and_follow_the_plugin_timeout() {
        let mut c = Config::default();
        // 2 x 16 steps x 1000 ms (the cap on a step's timeout) + 5 s
        assert_eq!(c.min_idle_in_transaction_ms(), 37_000);
        assert_eq!(c.session().idle_in_transaction_timeout_ms, 60_000);
        assert_eq!(c.session().statement_timeout_ms, 30_000);
        c.plugins.max_limits.timeout_ms = Some(5_000);
        assert_eq!(c.session().idle_in_transaction_timeout_ms, 165_000);
        c.database.idle_in_transaction_timeout_ms = Some(60_000);
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("database.idle_in_transaction_timeout_ms = 60000"),
            "{e}"
        );
        c.apply_env(env(&[
            ("PAYRAIL_IDLE_IN_TRANSACTION_TIMEOUT_MS", "200000"),
            ("PAYRAIL_STATEMENT_TIMEOUT_MS", "1234"),
        ]))
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.session().statement_timeout_ms, 1234);
        c.database.statement_timeout_ms = 0;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("statement_timeout_ms")
        );
    }
}
