//! The payment processor: one payment = one Postgres transaction, following
//! `DESIGN.md` "One payment, step by step":
//!
//! 1. begin; `lock_timeout` and `statement_timeout` set locally;
//! 2. claim the idempotency key with a request fingerprint (replay / conflict);
//! 3. advisory-lock source and destination (sorted 64-bit keys);
//! 4. read their snapshots under row locks;
//! 5. run the pipeline, each call keyed and journaled;
//! 6. validate the proposed postings, row-lock any further accounts, check
//!    overdrafts, update balances and append entries;
//! 7. write the payment, the journal, the outbox events and the stored
//!    response; commit.
//!
//! Any error before commit rolls everything back, including the key claim.
//! The lock phase takes a list of keys and sorts it, so a later batcher can
//! pass the keys of a whole batch and keep one global lock order.

mod batch;
pub(crate) mod fair;
mod intake;
mod plugin_threads;
pub mod retry;

pub use batch::{
    BatchSettings, MAX_BATCH_LANES, MAX_BATCH_PAYMENTS, MAX_BATCH_WINDOW_US, MAX_DEFERRALS,
};

use crate::db::Pool;
use crate::engine::{PluginEngine, PluginFault, PluginLimits, PreparedInput};
use crate::error::{Error, Result};
use crate::ledger::{self, ApplyProblem};
use crate::locks;
use crate::model::{
    AccountSnapshot, Decision, DeclineReason, Metadata, Payment, PaymentRequest, PaymentResponse,
    PaymentStatus, PluginEvent, PluginInput, Posting, StepResult,
};
use crate::registry::{self, Pipeline};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_postgres::error::SqlState;
use uuid::Uuid;

/// Longest idempotency key accepted.
pub const MAX_KEY_BYTES: usize = 255;
/// Most metadata entries on a payment, and the longest key/value.
pub const MAX_METADATA_ENTRIES: usize = 32;
pub const MAX_METADATA_BYTES: usize = 512;

/// Tunables of the processor.
#[derive(Debug, Clone, Copy)]
pub struct ProcessorSettings {
    /// Longest wait for any lock inside the payment transaction.
    pub lock_timeout_ms: u64,
    /// Longest any single statement may run.
    pub statement_timeout_ms: u64,
    /// How long an idempotency key is remembered.
    pub key_ttl_secs: i64,
    /// Attempts for a transaction that hit a deadlock or serialization
    /// failure (both roll back completely, so a retry is safe).
    pub max_attempts: u32,
    /// Limits for every plugin call.
    pub limits: PluginLimits,
    /// How one-step payments are grouped into transactions.
    pub batch: BatchSettings,
    /// Most pooled connections the payment transactions of one tenant hold
    /// at once (`tenants.max_connections`; docs/tenancy.md).
    pub tenant_connections: usize,
    /// Most plugin pipelines (payments, batches) running at once of a
    /// tenant whose calls ran slow: the cores its plugins may burn
    /// (`tenants.max_running_pipelines`; see `fair::CpuShares`).
    pub tenant_pipelines: usize,
}

/// Half the cores (at least one): the default of
/// [`ProcessorSettings::tenant_pipelines`].
pub fn half_the_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

impl Default for ProcessorSettings {
    fn default() -> Self {
        ProcessorSettings {
            lock_timeout_ms: 5_000,
            statement_timeout_ms: 30_000,
            key_ttl_secs: 24 * 3600,
            max_attempts: 5,
            limits: PluginLimits::default(),
            batch: BatchSettings::default(),
            tenant_connections: 4,
            tenant_pipelines: half_the_cores(),
        }
    }
}

/// The result of `pay`: the payment and whether it was a replay of an
/// earlier request with the same key (then nothing new was written).
#[derive(Debug, Clone)]
pub struct PayOutcome {
    pub response: PaymentResponse,
    pub replayed: bool,
    /// The plugin calls this request ran (empty for a replay).
    pub calls: Vec<CallStat>,
    /// Time spent claiming the key and taking the account locks (the first
    /// flight of the transaction): mostly lock waiting under contention.
    pub lock_wait: Duration,
}

/// Cost of one plugin call, for metrics.
#[derive(Debug, Clone)]
pub struct CallStat {
    pub plugin: String,
    pub digest: String,
    pub fuel_used: u64,
    /// Wall-clock time of the call, setup through output checks.
    pub duration: Duration,
    /// CPU time the call used, on one call in
    /// [`crate::engine::CPU_SAMPLE_EVERY`] (see `engine::CallOutcome::cpu`).
    pub cpu: Option<Duration>,
}

/// One journaled plugin call.
#[derive(Debug, Clone)]
pub(crate) struct CallRecord {
    call_key: String,
    step: i32,
    digest: String,
    input_digest: String,
    input_json: String,
    output_json: String,
    fuel_used: i64,
    /// Wall-clock time of the call (the journal keeps it in µs).
    duration: Duration,
    /// CPU time of the call, on sampled calls (metrics and the bench only).
    cpu: Option<Duration>,
    /// The step's shadow candidate run on the same input, if it has one.
    shadow: Option<ShadowRecord>,
}

/// One shadow (candidate) call, journaled in `payrail.shadow_calls`.
#[derive(Debug, Clone)]
struct ShadowRecord {
    pipeline_version: i32,
    candidate_digest: String,
    /// Canonical JSON of the candidate's decision, or `None` on a fault.
    output_json: Option<String>,
    /// `code: message` of the candidate's fault.
    error: Option<String>,
    agree: bool,
    fuel_used: i64,
    duration_us: i64,
}

/// What the pipeline decided, before ledger checks.
pub(crate) struct PipelineRun {
    pub(crate) calls: Vec<CallRecord>,
    pub(crate) decline: Option<DeclineReason>,
    /// Plugin postings with the step that proposed them (each step's set
    /// already balanced).
    pub(crate) postings: Vec<(usize, Posting)>,
    pub(crate) events: Vec<(usize, PluginEvent)>,
    pub(crate) annotations: Metadata,
}

/// Runs payments. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct Processor {
    pool: Pool,
    engine: Arc<PluginEngine>,
    settings: ProcessorSettings,
    /// The batcher's queue (None: one transaction per payment, and in the
    /// batcher's own copy).
    batcher: Option<batch::Queue>,
    /// Transactions rolled back by a deadlock or serialization failure and
    /// run again (shared by every clone, the batcher's included).
    retries: Arc<std::sync::atomic::AtomicU64>,
    /// Payments a batch put back because another transaction held one of
    /// their accounts (shared like `retries`).
    deferrals: Arc<std::sync::atomic::AtomicU64>,
    /// Each tenant's share of the pool (docs/tenancy.md).
    tenants: Arc<fair::TenantGates>,
    /// Each tenant's share of the cores: its pipelines running at once,
    /// and the threads they run on. Within it, one permit per pooled
    /// instance slot: a pipeline holds one while its steps run, so the
    /// pooling allocator is never asked for more instances than it has
    /// (that would surface as a bogus plugin trap).
    cpu: Arc<fair::CpuShares>,
    /// Payments dropped before they ran because their caller had gone
    /// (shared like `retries`).
    skipped: Arc<std::sync::atomic::AtomicU64>,
}

/// What a processor has counted since start (for `/metrics`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessorCounts {
    /// See [`Processor::transaction_retries`].
    pub transaction_retries: u64,
    /// See [`Processor::batch_deferrals`].
    pub batch_deferrals: u64,
    /// See [`Processor::payments_skipped`].
    pub payments_skipped: u64,
}

/// The payments' unique (tenant, idempotency key) constraint (migration
/// 0012): violated only by a key reused after its claim row was reaped,
/// which the host answers with `idempotency_key_expired`.
pub const PAYMENT_KEY_CONSTRAINT: &str = "payments_tenant_idempotency_key_key";

/// Payment id of a payment whose transaction began at `at_ms` (ms since
/// the Unix epoch): a UUIDv7, the time in its first 48 bits and a hash of
/// (tenant, idempotency key) in the rest.
///
/// Time first, so that the indexes keyed by payment id (the payments'
/// primary key, entries by payment, the journal's key, the outbox's key)
/// take their inserts at the right edge instead of at random leaves: fewer
/// pages dirtied, and written in full after a checkpoint, per payment
/// (docs/idempotency.md, "Payment ids"). The id is not what makes a payment
/// exactly-once: the key claim is, and the payments' unique (tenant, key)
/// index refuses a key reused after its claim expired. A retry of a
/// committed payment gets the stored response and so the first id; an
/// attempt that rolled back left nothing that names its id.
pub fn payment_id(tenant: &str, key: &str, at_ms: u64) -> Uuid {
    let d = Sha256::new()
        .chain_update(b"payrail/payment/v2\0")
        .chain_update(tenant.as_bytes())
        .chain_update(b"\0")
        .chain_update(key.as_bytes())
        .finalize();
    let tail: &[u8; 10] = d[..10].try_into().expect("10 bytes");
    uuid::Builder::from_unix_timestamp_millis(at_ms, tail).into_uuid()
}

/// Stable id of the `index`th event of a payment.
fn event_id(payment: Uuid, index: usize) -> Uuid {
    let d = Sha256::new()
        .chain_update(b"payrail/event/v1\0")
        .chain_update(payment.as_bytes())
        .chain_update((index as u64).to_be_bytes())
        .finalize();
    Uuid::new_v8(d[..16].try_into().expect("16 bytes"))
}

/// Fingerprint of a request: what "the same request" means for a key.
pub fn fingerprint(req: &PaymentRequest) -> String {
    let json = serde_json::to_vec(req).expect("request serializes");
    hex::encode(Sha256::digest(json))
}

/// The journal key of a call: sha256(payment, step, plugin digest, input
/// digest), hex. Replay recomputes it to detect an altered row.
pub(crate) fn call_key(
    payment: Uuid,
    step: usize,
    digest: &str,
    input_digest: &[u8; 32],
) -> String {
    let d = Sha256::new()
        .chain_update(payment.as_bytes())
        .chain_update((step as u64).to_be_bytes())
        .chain_update(digest.as_bytes())
        .chain_update(input_digest)
        .finalize();
    hex::encode(d)
}

/// Checks a request and its key before anything touches the database.
pub fn validate_request(key: &str, req: &PaymentRequest) -> Result<()> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES || key.chars().any(|c| c.is_control()) {
        return Err(Error::invalid(
            "invalid_idempotency_key",
            format!(
                "the idempotency key must be 1-{MAX_KEY_BYTES} bytes without control characters"
            ),
        ));
    }
    ledger::validate_id("payment kind", &req.kind)?;
    ledger::validate_id("source account", &req.source)?;
    ledger::validate_id("destination account", &req.destination)?;
    ledger::validate_currency(&req.currency)?;
    if req.amount <= 0 {
        return Err(Error::invalid(
            "invalid_amount",
            format!(
                "amount must be a positive integer in minor units, got {}",
                req.amount
            ),
        ));
    }
    if req.source == req.destination {
        return Err(Error::invalid(
            "same_account",
            "source and destination must be different accounts",
        ));
    }
    if req.source.starts_with(ledger::EQUITY_PREFIX)
        || req.destination.starts_with(ledger::EQUITY_PREFIX)
    {
        return Err(Error::invalid(
            "invalid_id",
            "equity accounts only fund opening balances; they cannot take part in payments",
        ));
    }
    if req.metadata.len() > MAX_METADATA_ENTRIES
        || req
            .metadata
            .iter()
            .any(|(k, v)| k.len() > MAX_METADATA_BYTES || v.len() > MAX_METADATA_BYTES)
    {
        return Err(Error::invalid(
            "invalid_metadata",
            format!(
                "metadata has at most {MAX_METADATA_ENTRIES} entries of at most {MAX_METADATA_BYTES} bytes each"
            ),
        ));
    }
    if req
        .metadata
        .keys()
        .any(|k| k.starts_with(crate::holds::RESERVED_METADATA_PREFIX))
    {
        return Err(Error::invalid(
            "invalid_metadata",
            format!(
                "metadata keys starting with {:?} are reserved for payrail",
                crate::holds::RESERVED_METADATA_PREFIX
            ),
        ));
    }
    crate::holds::validate_capture(req)?;
    Ok(())
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

impl Processor {
    /// A processor over `pool` running plugins in `engine`.
    pub fn new(pool: Pool, engine: Arc<PluginEngine>, settings: ProcessorSettings) -> Self {
        assert!(settings.max_attempts >= 1, "at least one attempt");
        let slots = engine.config().max_concurrent_instances as usize;
        let mut processor = Processor {
            pool,
            engine,
            settings,
            batcher: None,
            retries: Arc::default(),
            deferrals: Arc::default(),
            tenants: Arc::new(fair::TenantGates::new(settings.tenant_connections)),
            cpu: Arc::new(fair::CpuShares::new(settings.tenant_pipelines, slots)),
            skipped: Arc::default(),
        };
        processor.batcher = batch::start(processor.clone(), settings.batch);
        processor
    }

    /// Transactions (a payment's, a batch's, a capture's or a void's) that
    /// a deadlock or a serialization failure rolled back and that ran
    /// again, since start. A steady rise means payments contend in a way
    /// the lock order does not prevent (docs/locking.md).
    pub fn transaction_retries(&self) -> u64 {
        self.retries.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Counts one retried transaction (see [`Self::transaction_retries`]).
    pub(crate) fn count_retry(&self) {
        self.retries
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Times, since start, a batch put a payment back in the queue because
    /// another transaction (usually another host's batch) held one of its
    /// accounts (docs/batching.md, "Other hosts"). Rising with the number
    /// of hosts is expected; a payment is put back at most
    /// [`MAX_DEFERRALS`] times.
    pub fn batch_deferrals(&self) -> u64 {
        self.deferrals.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn count_deferrals(&self, payments: usize) {
        self.deferrals
            .fetch_add(payments as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Payments, since start, dropped before they ran because their caller
    /// had gone (request timeout, client disconnected) while they waited
    /// for a batch worker or for one of their tenant's connections: they
    /// wrote nothing.
    pub fn payments_skipped(&self) -> u64 {
        self.skipped.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Counts a transaction rolled back by a deadlock or serialization
    /// failure that is about to run again (`retry::run`'s `on_retry`).
    pub(crate) fn retrying(&self, e: &Error) {
        tracing::debug!(error = %e, "retrying a transaction");
        self.count_retry();
    }

    pub(crate) fn count_skipped(&self) {
        self.skipped
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// A pooled connection on `tenant`'s behalf: waits while the tenant's
    /// transactions hold `tenant_connections` (docs/tenancy.md).
    pub(crate) async fn tenant_connection(&self, tenant: &str) -> Result<fair::TenantConnection> {
        self.tenants
            .connection(&self.pool, tenant, &self.skipped)
            .await
    }

    /// Runs `f` (plugin pipelines) off the async workers, within
    /// `tenant`'s share of the cores (`fair::CpuShares`).
    pub(crate) async fn run_plugins<T: Send + 'static>(
        &self,
        tenant: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T> {
        self.cpu.run(tenant, f).await
    }

    /// Everything counted, at once.
    pub fn counts(&self) -> ProcessorCounts {
        ProcessorCounts {
            transaction_retries: self.transaction_retries(),
            batch_deferrals: self.batch_deferrals(),
            payments_skipped: self.payments_skipped(),
        }
    }

    /// The connection pool.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The plugin engine.
    pub fn engine(&self) -> &Arc<PluginEngine> {
        &self.engine
    }

    /// The processor's tunables.
    pub fn settings(&self) -> &ProcessorSettings {
        &self.settings
    }

    /// Runs `pipeline` for `payment` of `tenant` off the async workers
    /// (two-phase transitions use it too; see `holds`).
    pub(crate) async fn run_pipeline(
        &self,
        tenant: &str,
        pipeline: &Pipeline,
        payment: &Payment,
        snapshots: Vec<AccountSnapshot>,
    ) -> Result<PipelineRun> {
        let engine = self.engine.clone();
        let limits = self.settings.limits;
        let pipeline = pipeline.clone();
        let payment = payment.clone();
        let now = now_ms();
        self.run_plugins(tenant, move || {
            run_steps(&engine, &pipeline, &payment, snapshots, now, &limits)
        })
        .await?
    }

    /// Processes one payment with idempotency key `key`. A replay of a
    /// finished request returns the stored response and writes nothing.
    /// Deadlocks and serialization failures are retried up to
    /// `max_attempts`; every other error is returned with nothing written.
    ///
    /// One-step payments go through the batcher when it is on (see
    /// `batch`): same guarantees, one transaction for many payments.
    pub async fn pay(&self, tenant: &str, key: &str, req: &PaymentRequest) -> Result<PayOutcome> {
        validate_request(key, req)?;
        match &self.batcher {
            Some(queue) if req.capture.is_automatic() => {
                batch::submit(queue, tenant, key, req).await
            }
            _ => self.pay_single(tenant, key, req).await,
        }
    }

    /// `pay` in a transaction of its own (validated request).
    async fn pay_single(
        &self,
        tenant: &str,
        key: &str,
        req: &PaymentRequest,
    ) -> Result<PayOutcome> {
        let once = || self.pay_once(tenant, key, req);
        match retry::run(self.settings.max_attempts, |e| self.retrying(e), once).await {
            Err(e) if e.sqlstate() == Some(&SqlState::LOCK_NOT_AVAILABLE) => {
                Err(Error::LockTimeout)
            }
            Err(e) if ledger::is_overflow(&e) => Err(ledger::overflow_error()),
            // The key row was reaped (expired) but the payment it made
            // still holds (tenant, key): see docs/idempotency.md.
            Err(e) if e.constraint() == Some(PAYMENT_KEY_CONSTRAINT) => {
                Err(self.key_expired(tenant, key).await.unwrap_or_else(|e| e))
            }
            other => other,
        }
    }

    /// The error for a key whose claim expired: it names the payment the
    /// key made (a read after the failed transaction rolled back).
    async fn key_expired(&self, tenant: &str, key: &str) -> Result<Error> {
        let row = self
            .pool
            .get()
            .await?
            .query_opt(
                "select id from payrail.payments where tenant = $1 and idempotency_key = $2",
                &[&tenant, &key],
            )
            .await?;
        // Postgres raises the violation only against a committed row, and
        // payments are never deleted: no row would be a bug.
        let payment: Uuid = row.map(|r| r.get(0)).ok_or_else(|| {
            Error::Setup(format!(
                "idempotency key {key:?} collided with a payment that cannot be read back"
            ))
        })?;
        Ok(Error::KeyExpired {
            key: key.to_string(),
            payment: payment.to_string(),
        })
    }

    async fn pay_once(&self, tenant: &str, key: &str, req: &PaymentRequest) -> Result<PayOutcome> {
        let mut conn = self.tenant_connection(tenant).await?;
        let client = &mut conn.client;
        let result = self.pay_in(client, tenant, key, req).await;
        if result.is_err() {
            // A dropped transaction only queues its ROLLBACK; wait for it,
            // so the key's claim and try-lock are gone before the caller
            // sees the error and retries.
            let _ = client.simple_query("").await;
        }
        result
    }

    async fn pay_in(
        &self,
        client: &mut deadpool_postgres::Client,
        tenant: &str,
        key: &str,
        req: &PaymentRequest,
    ) -> Result<PayOutcome> {
        let tx = client.transaction().await?;
        let id = payment_id(tenant, key, now_ms());
        let print = fingerprint(req);
        let parties = [req.source.clone(), req.destination.clone()];
        let party_keys = locks::sorted_keys(tenant, parties.iter().map(String::as_str));

        // 1-4 in one pipelined flight: timeouts + key claim (one statement),
        // party locks, party snapshots (row-locked), the pipeline. The
        // server runs them in order; nothing waits for a round trip between.
        let claim = tx.prepare_cached(CLAIM_SQL).await?;
        let lock_ms = format!("{}ms", self.settings.lock_timeout_ms);
        let statement_ms = format!("{}ms", self.settings.statement_timeout_ms);
        let ttl_secs = self.settings.key_ttl_secs as f64;
        let key_lock = locks::idempotency_key(tenant, key);
        let flight_started = std::time::Instant::now();
        let (claim_row, (), mut accounts, pipeline) = futures::try_join!(
            async {
                Ok::<_, Error>(
                    tx.query_one(
                        &claim,
                        &[
                            &tenant,
                            &key,
                            &print,
                            &id,
                            &ttl_secs,
                            &lock_ms,
                            &statement_ms,
                            &key_lock,
                        ],
                    )
                    .await?,
                )
            },
            async { Ok(locks::lock_all(&tx, &party_keys).await?) },
            ledger::lock_rows(&tx, tenant, &parties),
            registry::load_pipeline(&tx, tenant, &req.kind),
        )?;
        let lock_wait = flight_started.elapsed();
        let key_free: bool = claim_row.get(0);
        let claimed: i64 = claim_row.get(1);
        if !key_free {
            return Err(Error::InProgress {
                key: key.to_string(),
            });
        }
        if claimed == 0 {
            return self.replay(tx, tenant, key, &print).await;
        }
        check_parties(&accounts, req)?;
        registry::ensure_loaded(&tx, &self.engine, &pipeline).await?;
        let payment = payment_of(id, req);
        // Two-phase (manual capture): this is the authorization. See `holds`.
        let manual = !req.capture.is_automatic();
        let snapshots: Vec<AccountSnapshot> =
            parties.iter().map(|p| snapshot_of(&accounts[p])).collect();

        // 5. Run the pipeline off the async workers, within the tenant's
        // share of the cores.
        let run = self
            .run_pipeline(tenant, &pipeline, &payment, snapshots)
            .await?;

        // 6. Validate the postings. Accounts only plugins name (a fee
        // account) are read without a lock when they are only credited: a
        // credit cannot overdraw, so their row lock is taken by the balance
        // update at the very end, just before commit (hot accounts stay
        // locked for one statement). Debited ones are locked now.
        let mut decline = run.decline.clone();
        let mut postings = Vec::new();
        let mut deltas = BTreeMap::new();
        if decline.is_none() {
            postings = principal_postings(req);
            // At authorize plugin postings are ignored: the funds check is
            // for the principal; fees are charged at capture.
            if !manual {
                postings.extend(run.postings.iter().map(|(_, p)| p.clone()));
            }
            let checked = self
                .check_postings(&tx, tenant, &mut accounts, &postings)
                .await?;
            match checked {
                Ok(d) => deltas = d,
                Err(problem @ ApplyProblem::Invalid { .. }) => {
                    return Err(plugin_fault(&pipeline, &run, problem));
                }
                Err(ApplyProblem::InsufficientFunds { account }) => {
                    postings.clear();
                    decline = Some(DeclineReason {
                        code: "insufficient_funds".into(),
                        message: format!("account {account:?} has insufficient funds"),
                    });
                }
            }
        }

        // 7. Record everything in one pipelined flight, balances last; commit.
        let status = if decline.is_some() {
            PaymentStatus::Declined
        } else if manual {
            // Nothing moves yet: the hold reserves the principal.
            postings.clear();
            deltas.clear();
            PaymentStatus::Authorized
        } else {
            PaymentStatus::Approved
        };
        let response = response_of(id, req, status, decline, postings, &run.annotations);
        let response_json = serde_json::to_value(&response).expect("response serializes");
        let txn_ids = vec![id; response.postings.len()];
        let payment_ids = vec![Some(id); response.postings.len()];
        let payment_row = [PaymentRow {
            id,
            key,
            req,
            response: &response,
            pipeline: &pipeline,
        }];
        futures::try_join!(
            write_payments(&tx, tenant, &payment_row),
            async {
                if response.postings.is_empty() {
                    return Ok(());
                }
                ledger::append_entries(&tx, tenant, &txn_ids, &payment_ids, &response.postings)
                    .await
            },
            write_journal(&tx, id, &run.calls),
            write_events(
                &tx,
                tenant,
                id,
                format!("payment.{}", status.as_str()),
                &response_json,
                // a declined payment publishes no plugin events
                if status == PaymentStatus::Approved {
                    &run.events
                } else {
                    &[]
                },
                |i| event_id(id, i),
            ),
            async {
                if status != PaymentStatus::Authorized {
                    return Ok(());
                }
                crate::holds::create_hold(&tx, tenant, id, req).await
            },
            finish_key(&tx, tenant, key, &response_json),
            // parties and debited accounts are row-locked; credits to
            // others go to a credit shard
            ledger::apply_deltas(
                &tx,
                tenant,
                &deltas,
                &accounts,
                |a| parties.iter().any(|p| p == a),
                ledger::shard_of(id)
            ),
        )?;
        tx.commit().await?;
        tracing::debug!(payment = %id, status = status.as_str(), "payment committed");
        Ok(PayOutcome {
            response,
            replayed: false,
            calls: call_stats(&pipeline, &run.calls),
            lock_wait,
        })
    }

    /// The key is taken by a finished request: the stored response if the
    /// request is the same, a conflict otherwise. Writes nothing.
    pub(crate) async fn replay(
        &self,
        tx: deadpool_postgres::Transaction<'_>,
        tenant: &str,
        key: &str,
        print: &str,
    ) -> Result<PayOutcome> {
        let row = tx
            .query_one(
                "select fingerprint, state, response from payrail.idempotency_keys
                 where tenant = $1 and key = $2",
                &[&tenant, &key],
            )
            .await?;
        let stored_print: String = row.get(0);
        let state: String = row.get(1);
        if stored_print != print {
            return Err(Error::IdempotencyConflict {
                key: key.to_string(),
            });
        }
        assert_eq!(state, "done", "a committed key row is always finished");
        let response: serde_json::Value = row.get(2);
        let response: PaymentResponse = serde_json::from_value(response)
            .map_err(|e| Error::Setup(format!("stored response unreadable: {e}")))?;
        tx.rollback().await?;
        Ok(PayOutcome {
            response,
            replayed: true,
            calls: Vec::new(),
            lock_wait: Duration::ZERO,
        })
    }

    /// Completes `accounts` with every account the postings name (debited
    /// ones row-locked, credited-only ones just read) and checks the
    /// postings against them. The outer error is a database failure; the
    /// inner one is what is wrong with the postings.
    pub(crate) async fn check_postings(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        tenant: &str,
        accounts: &mut HashMap<String, ledger::Account>,
        postings: &[Posting],
    ) -> Result<Result<BTreeMap<String, i64>, ApplyProblem>> {
        let deltas = match ledger::net_deltas(postings) {
            Ok(d) => d,
            Err(problem) => return Ok(Err(problem)),
        };
        let mut debited = Vec::new();
        let mut credited = Vec::new();
        for (account, delta) in &deltas {
            if accounts.contains_key(account) {
                continue;
            }
            if *delta < 0 {
                debited.push(account.clone());
            } else {
                credited.push(account.clone());
            }
        }
        if !debited.is_empty() {
            accounts.extend(ledger::lock_rows(tx, tenant, &debited).await?);
        }
        if !credited.is_empty() {
            accounts.extend(ledger::read_accounts(tx, tenant, &credited).await?);
        }
        Ok(ledger::check_against(accounts, postings, &deltas).map(|()| deltas))
    }
}

/// The payment as plugins see it.
pub(crate) fn payment_of(id: Uuid, req: &PaymentRequest) -> Payment {
    Payment {
        id: id.to_string(),
        kind: req.kind.clone(),
        amount: req.amount,
        currency: req.currency.clone(),
        source: req.source.clone(),
        destination: req.destination.clone(),
        metadata: crate::holds::phase_metadata(req),
    }
}

/// An account as plugins see it.
pub(crate) fn snapshot_of(a: &ledger::Account) -> AccountSnapshot {
    AccountSnapshot {
        id: a.id.clone(),
        currency: a.currency.clone(),
        balance: a.balance,
        allow_negative: a.allow_negative,
        metadata: a.metadata.clone(),
    }
}

/// Both parties exist (in `accounts`, read under their locks) and are held
/// in the payment's currency.
pub(crate) fn check_parties(
    accounts: &HashMap<String, ledger::Account>,
    req: &PaymentRequest,
) -> Result<()> {
    for party in [&req.source, &req.destination] {
        let a = accounts.get(party).ok_or_else(|| Error::NotFound {
            what: "account",
            id: party.clone(),
        })?;
        if a.currency != req.currency {
            return Err(Error::invalid(
                "currency_mismatch",
                format!(
                    "account {:?} is held in {}, the payment is in {}",
                    a.id, a.currency, req.currency
                ),
            ));
        }
    }
    Ok(())
}

/// The principal: source debited, destination credited.
pub(crate) fn principal_postings(req: &PaymentRequest) -> Vec<Posting> {
    vec![
        Posting {
            account: req.source.clone(),
            amount: -req.amount,
            currency: req.currency.clone(),
        },
        Posting {
            account: req.destination.clone(),
            amount: req.amount,
            currency: req.currency.clone(),
        },
    ]
}

/// The response of a decided payment; a declined one carries no
/// annotations.
pub(crate) fn response_of(
    id: Uuid,
    req: &PaymentRequest,
    status: PaymentStatus,
    decline: Option<DeclineReason>,
    postings: Vec<Posting>,
    annotations: &Metadata,
) -> PaymentResponse {
    PaymentResponse {
        id: id.to_string(),
        status,
        annotations: if decline.is_some() {
            Metadata::new()
        } else {
            annotations.clone()
        },
        decline,
        postings,
        kind: req.kind.clone(),
        amount: req.amount,
        currency: req.currency.clone(),
        source: req.source.clone(),
        destination: req.destination.clone(),
    }
}

/// Per-call costs of a run, for metrics.
pub(crate) fn call_stats(pipeline: &Pipeline, calls: &[CallRecord]) -> Vec<CallStat> {
    calls
        .iter()
        .map(|c| CallStat {
            plugin: pipeline.steps[c.step as usize].plugin.clone(),
            digest: c.digest.clone(),
            fuel_used: c.fuel_used as u64,
            duration: c.duration,
            cpu: c.cpu,
        })
        .collect()
}

/// Claims an idempotency key in one statement: sets the transaction's
/// timeouts, try-locks the key (false: another transaction is processing it
/// right now) and inserts the pending row (0 rows: a finished request owns
/// the key). Returns (key_free, inserted).
pub(crate) const CLAIM_SQL: &str = "
    with cfg as (
        select set_config('lock_timeout', $6, true) as l,
               set_config('statement_timeout', $7, true) as s
    ), k as (
        select pg_try_advisory_xact_lock($8) as free from cfg
    ), ins as (
        insert into payrail.idempotency_keys
            (tenant, key, fingerprint, state, payment_id, expires_at)
        select $1, $2, $3, 'pending', $4, now() + make_interval(secs => $5)
        from k where k.free
        on conflict do nothing
        returning 1
    )
    select (select free from k), (select count(*) from ins)";

/// A bad posting is the fault of the first step that proposed a posting to
/// that account; if no plugin did, the request itself is at fault.
pub(crate) fn plugin_fault(pipeline: &Pipeline, run: &PipelineRun, problem: ApplyProblem) -> Error {
    let ApplyProblem::Invalid { account, message } = problem else {
        unreachable!("insufficient funds is a decline, not a fault")
    };
    match run.postings.iter().find(|(_, p)| p.account == account) {
        Some((i, _)) => Error::Plugin {
            step: *i,
            plugin: pipeline.steps[*i].plugin.clone(),
            digest: pipeline.steps[*i].digest.clone(),
            fault: PluginFault::InvalidOutput(message),
        },
        None => Error::invalid("amount_overflow", message),
    }
}

/// One payment row to insert.
pub(crate) struct PaymentRow<'a> {
    pub(crate) id: Uuid,
    pub(crate) key: &'a str,
    pub(crate) req: &'a PaymentRequest,
    pub(crate) response: &'a PaymentResponse,
    pub(crate) pipeline: &'a Pipeline,
}

/// Inserts payment rows, one statement whatever their number.
pub(crate) async fn write_payments(
    tx: &deadpool_postgres::Transaction<'_>,
    tenant: &str,
    rows: &[PaymentRow<'_>],
) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let keys: Vec<&str> = rows.iter().map(|r| r.key).collect();
    let kinds: Vec<&str> = rows.iter().map(|r| r.req.kind.as_str()).collect();
    let sources: Vec<&str> = rows.iter().map(|r| r.req.source.as_str()).collect();
    let destinations: Vec<&str> = rows.iter().map(|r| r.req.destination.as_str()).collect();
    let amounts: Vec<i64> = rows.iter().map(|r| r.req.amount).collect();
    let currencies: Vec<&str> = rows.iter().map(|r| r.req.currency.as_str()).collect();
    let metadata: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| serde_json::to_value(&r.req.metadata).expect("metadata serializes"))
        .collect();
    let statuses: Vec<&str> = rows.iter().map(|r| r.response.status.as_str()).collect();
    let decline_codes: Vec<Option<&str>> = rows
        .iter()
        .map(|r| r.response.decline.as_ref().map(|d| d.code.as_str()))
        .collect();
    let decline_messages: Vec<Option<&str>> = rows
        .iter()
        .map(|r| r.response.decline.as_ref().map(|d| d.message.as_str()))
        .collect();
    let annotations: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| serde_json::to_value(&r.response.annotations).expect("annotations serialize"))
        .collect();
    let pipelines: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "version": r.pipeline.version,
                "digests": r.pipeline.steps.iter().map(|s| s.digest.as_str()).collect::<Vec<_>>(),
            })
        })
        .collect();
    let stmt = tx
        .prepare_cached(
            "insert into payrail.payments (id, tenant, idempotency_key, kind, source, destination,
               amount, currency, metadata, status, decline_code, decline_message, annotations, pipeline)
             select i, $1, k, kd, s, d, a, c, m, st, dc, dm, an, pl
             from unnest($2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[],
                         $8::text[], $9::jsonb[], $10::text[], $11::text[], $12::text[],
                         $13::jsonb[], $14::jsonb[])
                  as t(i, k, kd, s, d, a, c, m, st, dc, dm, an, pl)",
        )
        .await?;
    tx.execute(
        &stmt,
        &[
            &tenant,
            &ids,
            &keys,
            &kinds,
            &sources,
            &destinations,
            &amounts,
            &currencies,
            &metadata,
            &statuses,
            &decline_codes,
            &decline_messages,
            &annotations,
            &pipelines,
        ],
    )
    .await?;
    Ok(())
}

/// Marks the key finished with its stored response (the one-payment path;
/// a batch inserts its keys finished instead).
pub(crate) async fn finish_key(
    tx: &deadpool_postgres::Transaction<'_>,
    tenant: &str,
    key: &str,
    response: &serde_json::Value,
) -> Result<()> {
    let stmt = tx
        .prepare_cached(
            "update payrail.idempotency_keys set state = 'done', status_code = 201, response = $3
             where tenant = $1 and key = $2",
        )
        .await?;
    let updated = tx.execute(&stmt, &[&tenant, &key, response]).await?;
    assert_eq!(updated, 1, "the claimed key row exists");
    Ok(())
}

/// Runs every step of `pipeline` in order; stops at the first decline.
/// Each plugin's postings must balance on their own.
fn run_steps(
    engine: &PluginEngine,
    pipeline: &Pipeline,
    payment: &Payment,
    accounts: Vec<AccountSnapshot>,
    now_ms: u64,
    limits: &PluginLimits,
) -> Result<PipelineRun> {
    let payment_uuid: Uuid = payment.id.parse().expect("payment id is a uuid");
    let mut run = PipelineRun {
        calls: Vec::with_capacity(pipeline.steps.len()),
        decline: None,
        postings: Vec::new(),
        events: Vec::new(),
        annotations: Metadata::new(),
    };
    let mut previous: Vec<StepResult> = Vec::with_capacity(pipeline.steps.len());
    for (i, step) in pipeline.steps.iter().enumerate() {
        let fault = |fault: PluginFault| Error::Plugin {
            step: i,
            plugin: step.plugin.clone(),
            digest: step.digest.clone(),
            fault,
        };
        let input = PreparedInput::new(PluginInput {
            payment: payment.clone(),
            accounts: accounts.clone(),
            config: step.config.to_string(),
            previous: previous.clone(),
            now_ms,
        });
        let span = tracing::info_span!("plugin_call", payment = %payment.id, plugin = %step.plugin, digest = %&step.digest[..12]);
        let _enter = span.enter();
        let limits = match &step.limits {
            Some(o) => o.apply(limits),
            None => *limits,
        };
        let out = engine.call(&step.digest, &input, &limits).map_err(fault)?;
        // Shadow: the candidate runs on the very same input after the live
        // call; whatever it does (decide otherwise, fault, hit a limit) is
        // only recorded, never returned.
        let shadow = step.candidate.as_ref().map(|c| {
            let started = std::time::Instant::now();
            match engine.call(&c.digest, &input, &limits) {
                Ok(cand) => ShadowRecord {
                    pipeline_version: pipeline.version,
                    candidate_digest: c.digest.clone(),
                    agree: cand.output_json == out.output_json,
                    output_json: Some(cand.output_json),
                    error: None,
                    fuel_used: cand.fuel_used as i64,
                    duration_us: cand.duration.as_micros() as i64,
                },
                Err(f) => ShadowRecord {
                    pipeline_version: pipeline.version,
                    candidate_digest: c.digest.clone(),
                    output_json: None,
                    error: Some(format!("{}: {f}", f.code())),
                    agree: false,
                    fuel_used: 0,
                    duration_us: started.elapsed().as_micros() as i64,
                },
            }
        });
        if !out.log.is_empty() {
            tracing::info!(log = %out.log.trim_end(), "plugin log");
        }
        if let Decision::Approve {
            postings,
            events,
            annotations,
        } = &out.decision
        {
            ledger::check_balanced(postings).map_err(|m| fault(PluginFault::InvalidOutput(m)))?;
            for p in postings {
                if ledger::validate_currency(&p.currency).is_err()
                    || ledger::validate_id("account", &p.account).is_err()
                    || p.account.starts_with(ledger::EQUITY_PREFIX)
                {
                    return Err(fault(PluginFault::InvalidOutput(format!(
                        "posting to {:?} in {:?} is not allowed",
                        p.account, p.currency
                    ))));
                }
            }
            run.postings.extend(postings.iter().map(|p| (i, p.clone())));
            run.events.extend(events.iter().cloned().map(|e| (i, e)));
            for (k, v) in annotations {
                run.annotations.insert(k.clone(), v.clone());
            }
        }
        run.calls.push(CallRecord {
            call_key: call_key(payment_uuid, i, &step.digest, &input.digest),
            step: i as i32,
            digest: step.digest.clone(),
            input_digest: hex::encode(input.digest),
            input_json: input.json,
            output_json: out.output_json,
            fuel_used: out.fuel_used as i64,
            duration: out.duration,
            cpu: out.cpu,
            shadow,
        });
        let declined = match &out.decision {
            Decision::Decline { code, message } => {
                run.decline = Some(DeclineReason {
                    code: code.clone(),
                    message: message.clone(),
                });
                true
            }
            Decision::Approve { .. } => false,
        };
        previous.push(StepResult {
            plugin: step.plugin.clone(),
            digest: step.digest.clone(),
            decision: out.decision,
        });
        if declined {
            break;
        }
    }
    Ok(run)
}

/// Appends the journal rows of one payment (one statement). A key already
/// journaled is left as it is: calls are deterministic, so the stored output
/// is the output.
pub(crate) async fn write_journal(
    tx: &deadpool_postgres::Transaction<'_>,
    payment: Uuid,
    calls: &[CallRecord],
) -> Result<()> {
    write_journals(tx, &[(payment, calls)]).await
}

/// Appends the journal rows of several payments in one statement, then
/// their shadow rows (if any step has a candidate).
pub(crate) async fn write_journals(
    tx: &deadpool_postgres::Transaction<'_>,
    payments: &[(Uuid, &[CallRecord])],
) -> Result<()> {
    let calls: Vec<(Uuid, &CallRecord)> = payments
        .iter()
        .flat_map(|(p, calls)| calls.iter().map(move |c| (*p, c)))
        .collect();
    if calls.is_empty() {
        return Ok(());
    }
    let payment_ids: Vec<Uuid> = calls.iter().map(|(p, _)| *p).collect();
    let keys: Vec<&str> = calls.iter().map(|(_, c)| c.call_key.as_str()).collect();
    let steps: Vec<i32> = calls.iter().map(|(_, c)| c.step).collect();
    let digests: Vec<&str> = calls.iter().map(|(_, c)| c.digest.as_str()).collect();
    let input_digests: Vec<&str> = calls.iter().map(|(_, c)| c.input_digest.as_str()).collect();
    let inputs: Vec<&str> = calls.iter().map(|(_, c)| c.input_json.as_str()).collect();
    let outputs: Vec<&str> = calls.iter().map(|(_, c)| c.output_json.as_str()).collect();
    let fuel: Vec<i64> = calls.iter().map(|(_, c)| c.fuel_used).collect();
    let durations: Vec<i64> = calls
        .iter()
        .map(|(_, c)| c.duration.as_micros() as i64)
        .collect();
    let stmt = tx
        .prepare_cached(
            "insert into payrail.plugin_calls
               (call_key, payment_id, step, digest, input_digest, input, output, fuel_used, duration_us)
             select decode(k, 'hex'), p, s, decode(d, 'hex'), decode(i, 'hex'), inp::json, o::json, f, u
             from unnest($1::uuid[], $2::text[], $3::int[], $4::text[], $5::text[], $6::text[],
                         $7::text[], $8::bigint[], $9::bigint[]) as t(p, k, s, d, i, inp, o, f, u)
             on conflict (payment_id, call_key) do nothing",
        )
        .await?;
    tx.execute(
        &stmt,
        &[
            &payment_ids,
            &keys,
            &steps,
            &digests,
            &input_digests,
            &inputs,
            &outputs,
            &fuel,
            &durations,
        ],
    )
    .await?;
    for (payment, calls) in payments {
        write_shadows(tx, *payment, calls).await?;
    }
    Ok(())
}

/// Appends the shadow rows of one payment (one statement, none if no step
/// has a candidate). A row already there (a retried payment) is kept.
async fn write_shadows(
    tx: &deadpool_postgres::Transaction<'_>,
    payment: Uuid,
    calls: &[CallRecord],
) -> Result<()> {
    let shadows: Vec<(&CallRecord, &ShadowRecord)> = calls
        .iter()
        .filter_map(|c| c.shadow.as_ref().map(|s| (c, s)))
        .collect();
    if shadows.is_empty() {
        return Ok(());
    }
    let steps: Vec<i32> = shadows.iter().map(|(c, _)| c.step).collect();
    let versions: Vec<i32> = shadows.iter().map(|(_, s)| s.pipeline_version).collect();
    let live: Vec<&str> = shadows.iter().map(|(c, _)| c.digest.as_str()).collect();
    let cand: Vec<&str> = shadows
        .iter()
        .map(|(_, s)| s.candidate_digest.as_str())
        .collect();
    let inputs: Vec<&str> = shadows
        .iter()
        .map(|(c, _)| c.input_digest.as_str())
        .collect();
    let live_out: Vec<&str> = shadows
        .iter()
        .map(|(c, _)| c.output_json.as_str())
        .collect();
    let cand_out: Vec<Option<&str>> = shadows
        .iter()
        .map(|(_, s)| s.output_json.as_deref())
        .collect();
    let errors: Vec<Option<&str>> = shadows.iter().map(|(_, s)| s.error.as_deref()).collect();
    let agree: Vec<bool> = shadows.iter().map(|(_, s)| s.agree).collect();
    let fuel: Vec<i64> = shadows.iter().map(|(_, s)| s.fuel_used).collect();
    let durations: Vec<i64> = shadows.iter().map(|(_, s)| s.duration_us).collect();
    let stmt = tx
        .prepare_cached(
            "insert into payrail.shadow_calls
               (payment_id, step, pipeline_version, live_digest, candidate_digest, input_digest,
                live_output, candidate_output, candidate_error, agree, fuel_used, duration_us)
             select $1, s, v, l, c, i, lo::jsonb, co::jsonb, e, a, f, u
             from unnest($2::int[], $3::int[], $4::text[], $5::text[], $6::text[], $7::text[],
                         $8::text[], $9::text[], $10::bool[], $11::bigint[], $12::bigint[])
                  as t(s, v, l, c, i, lo, co, e, a, f, u)
             on conflict (payment_id, step) do nothing",
        )
        .await?;
    tx.execute(
        &stmt,
        &[
            &payment, &steps, &versions, &live, &cand, &inputs, &live_out, &cand_out, &errors,
            &agree, &fuel, &durations,
        ],
    )
    .await?;
    Ok(())
}

/// One outbox row.
pub(crate) struct EventRow {
    id: Uuid,
    topic: String,
    key: String,
    payload: serde_json::Value,
}

/// A payment's outbox rows: `topic` carrying `payload` (the response), then
/// each plugin event, all keyed by the payment id so their order is kept.
/// Event `i` gets id `event_id(i)`, stable across retries.
pub(crate) fn event_rows(
    payment: Uuid,
    topic: String,
    payload: &serde_json::Value,
    plugin_events: &[(usize, PluginEvent)],
    event_id: impl Fn(usize) -> Uuid,
) -> Vec<EventRow> {
    let key = payment.to_string();
    let mut rows = vec![EventRow {
        id: event_id(0),
        topic,
        key: key.clone(),
        payload: payload.clone(),
    }];
    for (i, (step, e)) in plugin_events.iter().enumerate() {
        let data: serde_json::Value =
            serde_json::from_str(&e.payload).expect("event payload validated by the engine");
        rows.push(EventRow {
            id: event_id(i + 1),
            topic: e.topic.clone(),
            key: key.clone(),
            payload: serde_json::json!({
                "payment_id": key,
                "step": step,
                "data": data,
            }),
        });
    }
    rows
}

/// Writes a payment's outbox events (`event_rows`) in one statement.
/// Payments and hold transitions both write through here.
pub(crate) async fn write_events(
    tx: &deadpool_postgres::Transaction<'_>,
    tenant: &str,
    payment: Uuid,
    topic: String,
    payload: &serde_json::Value,
    plugin_events: &[(usize, PluginEvent)],
    event_id: impl Fn(usize) -> Uuid,
) -> Result<()> {
    let rows = event_rows(payment, topic, payload, plugin_events, event_id);
    insert_events(tx, tenant, &rows).await
}

/// Inserts outbox rows in the given order (one statement): the relay keeps
/// that order per key.
pub(crate) async fn insert_events(
    tx: &deadpool_postgres::Transaction<'_>,
    tenant: &str,
    rows: &[EventRow],
) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let topics: Vec<&str> = rows.iter().map(|r| r.topic.as_str()).collect();
    let keys: Vec<&str> = rows.iter().map(|r| r.key.as_str()).collect();
    let payloads: Vec<&serde_json::Value> = rows.iter().map(|r| &r.payload).collect();
    let stmt = tx
        .prepare_cached(
            "insert into payrail.outbox (event_id, tenant, topic, key, payload)
             select e, $1, t, k, p
             from unnest($2::uuid[], $3::text[], $4::text[], $5::json[])
                  with ordinality as u(e, t, k, p, n)
             order by n",
        )
        .await?;
    tx.execute(&stmt, &[&tenant, &ids, &topics, &keys, &payloads])
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payment_ids_sort_by_time_and_differ_by_key() {
        let t0 = 1_790_000_000_000; // ms, 2026
        let a = payment_id("t", "k1", t0);
        assert_eq!(a.get_version_num(), 7);
        assert_eq!(a, payment_id("t", "k1", t0), "same inputs, same id");
        assert_ne!(a, payment_id("t", "k2", t0));
        assert_ne!(a, payment_id("u", "k1", t0));
        assert_ne!(
            payment_id("t", "k1", t0),
            payment_id("t\0k", "1", t0),
            "the separator keeps tenant and key apart"
        );
        // Later ids sort after earlier ones, whatever the key: as bytes
        // (Postgres's uuid order) and as text (the outbox's key).
        for key in ["a", "k1", "zzzz", "0"] {
            let later = payment_id("t", key, t0 + 1);
            assert!(later.as_bytes() > a.as_bytes(), "{key}");
            assert!(later.to_string() > a.to_string(), "{key}");
        }
        let (secs, nanos) = a.get_timestamp().expect("v7 has a time").to_unix();
        assert_eq!(secs * 1000 + u64::from(nanos) / 1_000_000, t0);
    }

    #[test]
    fn credit_shards_spread_over_ids_of_one_instant() {
        let t0 = 1_790_000_000_000;
        let mut used = std::collections::BTreeSet::new();
        for i in 0..1000 {
            let shard = ledger::shard_of(payment_id("t", &format!("k{i}"), t0));
            assert!((0..ledger::CREDIT_SHARDS).contains(&shard));
            used.insert(shard);
        }
        assert_eq!(used.len(), ledger::CREDIT_SHARDS as usize);
    }
}
