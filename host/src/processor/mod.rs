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
mod commit;
pub(crate) mod fair;
pub mod holds;
mod idempotency;
mod intake;
mod pipeline;
mod plugin_threads;
pub mod retry;
mod rows;
mod rules;

pub use idempotency::*;
pub use pipeline::*;
pub(crate) use rows::*;
pub use rules::*;

pub use batch::{
    BatchSettings, MAX_BATCH_LANES, MAX_BATCH_PAYMENTS, MAX_BATCH_WINDOW_US, MAX_DEFERRALS,
};

use crate::db::Pool;
use crate::engine::{PluginEngine, PluginLimits};
use crate::error::{Error, Result};
use crate::ledger::{self, ApplyProblem};
use crate::locks;
use crate::model::{
    AccountSnapshot, DeclineReason, PaymentRequest, PaymentResponse, PaymentStatus, Posting,
};
use crate::outbox::write::write_events;
use crate::registry::{self, Pipeline};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::error::SqlState;
use tracing::Instrument;
use uuid::Uuid;

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
    /// Longest a caller waits for a commit the server has not confirmed
    /// before it is answered `commit_unconfirmed` (`processor.commit_wait_ms`;
    /// see `commit`).
    pub commit_wait_ms: u64,
}

/// What a lock service holds for one attempt ([`Processor::locked_attempt`]).
#[derive(Clone, Copy)]
pub(crate) struct Locked<'a> {
    /// `None` under advisory locks: the transaction takes those.
    pub(crate) external: Option<&'a locks::External>,
    /// How long the lock service took to grant them.
    pub(crate) acquired_in: std::time::Duration,
}

/// The parties' locks in a transaction's first flight: advisory locks on
/// `sorted_keys`, or, under a lock service, the fences of the locks it
/// already holds ([`ledger::fence_accounts`]: refused when a newer holder
/// wrote an account).
async fn lock_parties(
    tx: &impl deadpool_postgres::GenericClient,
    tenant: &str,
    sorted_keys: &[i64],
    external: Option<&locks::External>,
) -> Result<()> {
    match external {
        None => Ok(locks::lock_all(tx, sorted_keys).await?),
        Some(x) => ledger::fence_accounts(tx, tenant, &x.fences).await,
    }
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
            commit_wait_ms: 5_000,
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

/// Runs payments. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct Processor {
    pool: Pool,
    engine: Arc<PluginEngine>,
    settings: ProcessorSettings,
    /// How accounts are serialized across hosts (`[locks]`).
    locks: Arc<locks::Service>,
    /// The batcher's queue (None: one transaction per payment, and in the
    /// batcher's own copy).
    batcher: Option<intake::Queue>,
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
    /// Accounts plugins credited recently, per tenant: a batch reads them
    /// once up front instead of pausing for each (see [`batch::Credited`]).
    credited: Arc<batch::Credited>,
    /// Commits bounded for their callers (see `commit`).
    commits: Arc<commit::Commits>,
}

/// What the first flight of a payment's transaction says to do next.
enum Claim {
    /// The key is ours: run the payment with these (locked) accounts and
    /// this pipeline; `lock_wait` was spent in the flight.
    Run {
        accounts: HashMap<String, ledger::Account>,
        pipeline: Pipeline,
        lock_wait: Duration,
    },
    /// Another transaction holds the key: answer `InProgress`.
    InProgress,
    /// The key finished earlier: answer its stored response.
    Replay,
}

/// A single payment's decision (step 6).
struct DecidedOne {
    status: PaymentStatus,
    decline: Option<DeclineReason>,
    postings: Vec<Posting>,
    deltas: BTreeMap<String, i64>,
}

impl DecidedOne {
    fn declined(decline: DeclineReason) -> DecidedOne {
        DecidedOne {
            status: PaymentStatus::Declined,
            decline: Some(decline),
            postings: Vec::new(),
            deltas: BTreeMap::new(),
        }
    }
}

/// What step 7 writes about: the payment and its run.
struct Written<'a> {
    tenant: &'a str,
    key: &'a str,
    id: Uuid,
    req: &'a PaymentRequest,
    pipeline: &'a Pipeline,
    run: &'a PipelineRun,
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
    /// See [`Processor::commits_unconfirmed`].
    pub commits_unconfirmed: u64,
    /// Commits that went past `commit_wait_ms`, since start.
    pub commits_stalled: u64,
}

impl Processor {
    /// A processor over `pool` running plugins in `engine`.
    pub fn new(pool: Pool, engine: Arc<PluginEngine>, settings: ProcessorSettings) -> Self {
        Processor::with_locks(pool, engine, settings, locks::Service::Advisory)
    }

    /// [`Processor::new`] with accounts serialized by `locks` (`[locks]
    /// backend`; docs/locking.md).
    pub fn with_locks(
        pool: Pool,
        engine: Arc<PluginEngine>,
        settings: ProcessorSettings,
        locks: locks::Service,
    ) -> Self {
        assert!(settings.max_attempts >= 1, "at least one attempt");
        let slots = engine.config().max_concurrent_instances as usize;
        let mut processor = Processor {
            commits: Arc::new(commit::Commits::new(pool.clone(), settings.commit_wait_ms)),
            pool,
            engine,
            settings,
            locks: Arc::new(locks),
            batcher: None,
            retries: Arc::default(),
            deferrals: Arc::default(),
            credited: Arc::default(),
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

    /// Calls to the lock service since start (Redis round trips, `flock`
    /// attempts; 0 under advisory locks).
    pub fn lock_service_calls(&self) -> u64 {
        self.locks.calls()
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

    /// After `lock_lost`: raises the lock service's counters of
    /// `accounts` to what Postgres stored, so the retry's tokens are above
    /// them. A lost lock of a paused holder needs nothing (the counters are
    /// ahead already); a restarted Redis or a replaced lock directory does,
    /// or every write to those accounts would be refused.
    async fn repair_fences(&self, tenant: &str, accounts: &[String]) {
        let repaired = async {
            let c = self.pool.get().await?;
            let ids: Vec<&str> = accounts.iter().map(String::as_str).collect();
            let stored = ledger::stored_fences(&c, tenant, &ids).await?;
            drop(c);
            self.locks.raise_fences(tenant, &stored).await?;
            Ok::<_, Error>(stored.len())
        };
        match repaired.await {
            Ok(n) => tracing::info!(
                accounts = n,
                "a lock was lost: fence counters raised to the stored tokens"
            ),
            Err(e) => tracing::warn!(error = %e, "raising fence counters failed"),
        }
    }

    /// The outcome of one attempt under a lock service, after its locks
    /// were released: a lost lock repairs the counters first.
    async fn after_attempt<T>(&self, tenant: &str, accounts: &[String], result: &Result<T>) {
        if matches!(result, Err(Error::LockLost { .. })) {
            self.repair_fences(tenant, accounts).await;
        }
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
            commits_unconfirmed: self.commits.unconfirmed(),
            commits_stalled: self.commits.stalled_total(),
        }
    }

    /// Commits now waiting past `commit_wait_ms` for the server (0 when
    /// commits flow): while not 0 no new payment is taken and `/readyz`
    /// answers 503 (see `commit`).
    pub fn commits_unconfirmed(&self) -> u64 {
        self.commits.unconfirmed()
    }

    /// `Err(CommitsStalled)` while a commit is unconfirmed (`/readyz`).
    pub fn commits_check(&self) -> Result<()> {
        self.commits.check_accepting()
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

    /// Processes one payment with idempotency key `key`. A replay of a
    /// finished request returns the stored response and writes nothing.
    /// Deadlocks and serialization failures are retried up to
    /// `max_attempts`; every other error is returned with nothing written.
    ///
    /// One-step payments go through the batcher when it is on (see
    /// `batch`): same guarantees, one transaction for many payments.
    pub async fn pay(&self, tenant: &str, key: &str, req: &PaymentRequest) -> Result<PayOutcome> {
        let span = tracing::info_span!("payment", tenant = %tenant, kind = %req.kind);
        // pinned in place: the span's wrapper holds a pointer, not a copy
        let work = std::pin::pin!(self.pay_in_span(tenant, key, req));
        work.instrument(span).await
    }

    async fn pay_in_span(
        &self,
        tenant: &str,
        key: &str,
        req: &PaymentRequest,
    ) -> Result<PayOutcome> {
        validate_request(key, req)?;
        self.commits.check_accepting()?;
        match &self.batcher {
            Some(queue) if req.capture.is_automatic() => {
                // the batch keeps its transaction: only the wait is bounded
                self.commits
                    .answer(batch::submit(queue, tenant, key, req))
                    .await
            }
            _ => {
                // a task of its own, so that answering early leaves the
                // transaction running to its end
                let (p, t, k, r) = (
                    self.clone(),
                    tenant.to_string(),
                    key.to_string(),
                    req.clone(),
                );
                // in the payment's span: its events carry the traceparent
                let run = tokio::spawn(
                    async move { p.pay_single(&t, &k, &r).await }
                        .instrument(tracing::Span::current()),
                );
                self.commits.answer_task(run).await
            }
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

    async fn pay_once(&self, tenant: &str, key: &str, req: &PaymentRequest) -> Result<PayOutcome> {
        let parties = [req.source.clone(), req.destination.clone()];
        self.locked_attempt(tenant, &parties, async |client, locked| {
            let mut out = self
                .pay_in(client, tenant, key, req, locked.external)
                .await?;
            // a lock service's wait is lock wait too
            out.lock_wait += locked.acquired_in;
            Ok(out)
        })
        .await
    }

    /// One attempt of a transaction on `accounts` of `tenant`: the lock
    /// service's locks first (no connection is held while waiting), then
    /// one of the tenant's connections (docs/tenancy.md) for `attempt`.
    /// After a failed attempt, its queued ROLLBACK is waited for, so the
    /// key's claim and try-lock are gone before the caller sees the error
    /// and retries; then the locks are released, and a lost lock repairs
    /// the service's counters.
    pub(crate) async fn locked_attempt<T>(
        &self,
        tenant: &str,
        accounts: &[String],
        attempt: impl AsyncFnOnce(&mut deadpool_postgres::Client, Locked<'_>) -> Result<T>,
    ) -> Result<T> {
        let acquiring = std::time::Instant::now();
        let span = tracing::info_span!(
            "lock",
            backend = self.locks.name(),
            accounts = accounts.len()
        );
        let external = self
            .locks
            .acquire(tenant, accounts)
            .instrument(span)
            .await?;
        let locked = Locked {
            external: external.as_ref(),
            acquired_in: acquiring.elapsed(),
        };
        let result = async {
            let mut conn = self.tenant_connection(tenant).await?;
            let result = attempt(&mut conn.client, locked).await;
            if let Err(e) = &result {
                let _ = conn.client.simple_query("").await;
                conn.discard_if_read_only(e);
            }
            result
        }
        .await;
        // after the transaction ended, committed or rolled back
        self.locks.release(external).await;
        self.after_attempt(tenant, accounts, &result).await;
        result
    }

    /// One payment in the transaction of `client` (steps 1-7 above).
    async fn pay_in(
        &self,
        client: &mut deadpool_postgres::Client,
        tenant: &str,
        key: &str,
        req: &PaymentRequest,
        external: Option<&locks::External>,
    ) -> Result<PayOutcome> {
        let tx = client.transaction().await?;
        let id = payment_id(tenant, key, now_ms());
        let print = fingerprint(req);
        let flight = self.first_flight(&tx, tenant, key, req, (id, &print), external);
        let (mut accounts, pipeline, lock_wait) = match flight.await? {
            Claim::Run {
                accounts,
                pipeline,
                lock_wait,
            } => (accounts, pipeline, lock_wait),
            Claim::InProgress => {
                return Err(Error::InProgress {
                    key: key.to_string(),
                });
            }
            Claim::Replay => return self.replay(tx, tenant, key, &print).await,
        };
        check_parties(&accounts, req)?;
        registry::ensure_loaded(&tx, &self.engine, &pipeline).await?;
        let snapshots: Vec<AccountSnapshot> = [&req.source, &req.destination]
            .iter()
            .map(|p| snapshot_of(&accounts[*p]))
            .collect();

        // 5. Run the pipeline off the async workers, within the tenant's
        // share of the cores.
        let payment = payment_of(id, req);
        let run = self
            .run_pipeline(tenant, &pipeline, &payment, snapshots)
            .await?;
        let decided = self
            .decide_one(&tx, tenant, req, &pipeline, &run, &mut accounts)
            .await?;
        let response = response_of(
            id,
            req,
            decided.status,
            decided.decline,
            decided.postings,
            &run.annotations,
        );
        let at = Written {
            tenant,
            key,
            id,
            req,
            pipeline: &pipeline,
            run: &run,
        };
        self.write_one(&tx, &at, &response, &decided.deltas, &accounts)
            .await?;
        self.commits.commit(tx).await?;
        tracing::debug!(payment = %id, status = decided.status.as_str(), "payment committed");
        Ok(PayOutcome {
            response,
            replayed: false,
            calls: call_stats(&pipeline, &run.calls),
            lock_wait,
        })
    }

    /// Steps 1-4 in one pipelined flight: timeouts + key claim (one
    /// statement), party locks (advisory, or the lock service's fences),
    /// party snapshots (row-locked), the pipeline. The server runs them in
    /// order; nothing waits for a round trip between. Says what to do
    /// next.
    async fn first_flight(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        tenant: &str,
        key: &str,
        req: &PaymentRequest,
        (id, print): (Uuid, &str),
        external: Option<&locks::External>,
    ) -> Result<Claim> {
        let parties = [req.source.clone(), req.destination.clone()];
        let party_keys = locks::sorted_keys(tenant, parties.iter().map(String::as_str));
        let claim = tx.prepare_cached(CLAIM_SQL).await?;
        let lock_ms = format!("{}ms", self.settings.lock_timeout_ms);
        let statement_ms = format!("{}ms", self.settings.statement_timeout_ms);
        let ttl_secs = self.settings.key_ttl_secs as f64;
        let key_lock = locks::idempotency_key(tenant, key);
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 8] = [
            &tenant,
            &key,
            &print,
            &id,
            &ttl_secs,
            &lock_ms,
            &statement_ms,
            &key_lock,
        ];
        let flight_started = std::time::Instant::now();
        let (claim_row, (), accounts, pipeline) = futures::try_join!(
            async { Ok::<_, Error>(tx.query_one(&claim, &params).await?) },
            lock_parties(tx, tenant, &party_keys, external),
            ledger::lock_rows(tx, tenant, &parties),
            registry::load_pipeline(tx, tenant, &req.kind),
        )?;
        let lock_wait = flight_started.elapsed();
        let (key_free, claimed): (bool, i64) = (claim_row.get(0), claim_row.get(1));
        Ok(match (key_free, claimed) {
            (false, _) => Claim::InProgress,
            (true, 0) => Claim::Replay,
            (true, _) => Claim::Run {
                accounts,
                pipeline,
                lock_wait,
            },
        })
    }

    /// Step 6: validates the postings and decides. Accounts only plugins
    /// name (a fee account) are read without a lock when they are only
    /// credited: a credit cannot overdraw, so their row lock is taken by
    /// the balance update at the very end, just before commit (hot
    /// accounts stay locked for one statement). Debited ones are locked
    /// now.
    async fn decide_one(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        tenant: &str,
        req: &PaymentRequest,
        pipeline: &Pipeline,
        run: &PipelineRun,
        accounts: &mut HashMap<String, ledger::Account>,
    ) -> Result<DecidedOne> {
        // Two-phase (manual capture): this is the authorization. See `holds`.
        let manual = !req.capture.is_automatic();
        let postings = match run.proposal(principal_postings(req), manual) {
            Ok(postings) => postings,
            Err(decline) => return Ok(DecidedOne::declined(decline)),
        };
        let checked = self.check_postings(tx, tenant, accounts, &postings).await?;
        Ok(match verdict(postings, checked) {
            Verdict::Fault(problem) => return Err(plugin_fault(pipeline, run, problem)),
            Verdict::Decline(decline) => DecidedOne::declined(decline),
            // Nothing moves yet: the hold reserves the principal.
            Verdict::Approve { .. } if manual => DecidedOne {
                status: PaymentStatus::Authorized,
                decline: None,
                postings: Vec::new(),
                deltas: BTreeMap::new(),
            },
            Verdict::Approve { postings, deltas } => DecidedOne {
                status: PaymentStatus::Approved,
                decline: None,
                postings,
                deltas,
            },
        })
    }

    /// Step 7: records everything in one pipelined flight, balances last.
    async fn write_one(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        at: &Written<'_>,
        response: &PaymentResponse,
        deltas: &BTreeMap<String, i64>,
        accounts: &HashMap<String, ledger::Account>,
    ) -> Result<()> {
        let (tenant, id, req, status) = (at.tenant, at.id, at.req, response.status);
        let response_json = serde_json::to_value(response).expect("response serializes");
        let txn_ids = vec![id; response.postings.len()];
        let payment_ids = vec![Some(id); response.postings.len()];
        let payment_row = [PaymentRow {
            id,
            key: at.key,
            req,
            response,
            pipeline: at.pipeline,
        }];
        // a declined payment publishes no plugin events
        let plugin_events = match status {
            PaymentStatus::Approved => &at.run.events[..],
            _ => &[],
        };
        futures::try_join!(
            write_payments(tx, tenant, &payment_row),
            async {
                if response.postings.is_empty() {
                    return Ok(());
                }
                ledger::append_entries(tx, tenant, &txn_ids, &payment_ids, &response.postings).await
            },
            write_journal(tx, id, &at.run.calls),
            write_events(
                tx,
                tenant,
                id,
                format!("payment.{}", status.as_str()),
                &response_json,
                plugin_events,
                |i| event_id(id, i),
            ),
            async {
                if status != PaymentStatus::Authorized {
                    return Ok(());
                }
                holds::create_hold(tx, tenant, id, req).await
            },
            finish_key(tx, tenant, at.key, &response_json),
            // parties and debited accounts are row-locked; credits to
            // others go to a credit shard
            ledger::apply_deltas(
                tx,
                tenant,
                deltas,
                accounts,
                |a| a == req.source || a == req.destination,
                ledger::shard_of(id)
            ),
        )?;
        Ok(())
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
