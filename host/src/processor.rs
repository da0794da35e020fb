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
}

impl Default for ProcessorSettings {
    fn default() -> Self {
        ProcessorSettings {
            lock_timeout_ms: 5_000,
            statement_timeout_ms: 30_000,
            key_ttl_secs: 24 * 3600,
            max_attempts: 5,
            limits: PluginLimits::default(),
        }
    }
}

/// The result of `pay`: the payment and whether it was a replay of an
/// earlier request with the same key (then nothing new was written).
#[derive(Debug, Clone)]
pub struct PayOutcome {
    pub response: PaymentResponse,
    pub replayed: bool,
}

/// One journaled plugin call.
#[derive(Debug, Clone)]
struct CallRecord {
    call_key: String,
    step: i32,
    digest: String,
    input_digest: String,
    input_json: String,
    output_json: String,
    fuel_used: i64,
    duration_us: i64,
}

/// What the pipeline decided, before ledger checks.
struct PipelineRun {
    calls: Vec<CallRecord>,
    decline: Option<DeclineReason>,
    /// Plugin postings with the step that proposed them (each step's set
    /// already balanced).
    postings: Vec<(usize, Posting)>,
    events: Vec<(usize, PluginEvent)>,
    annotations: Metadata,
}

/// Runs payments. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct Processor {
    pool: Pool,
    engine: Arc<PluginEngine>,
    settings: ProcessorSettings,
    /// One permit per pooled instance slot: a pipeline holds one while its
    /// steps run, so the pooling allocator is never asked for more
    /// instances than it has (that would surface as a bogus plugin trap).
    pipeline_slots: Arc<tokio::sync::Semaphore>,
}

/// Payment id: derived from (tenant, idempotency key), so every retry of a
/// request, on any host, names the same payment and the same journal keys.
pub fn payment_id(tenant: &str, key: &str) -> Uuid {
    let d = Sha256::new()
        .chain_update(b"payrail/payment/v1\0")
        .chain_update(tenant.as_bytes())
        .chain_update(b"\0")
        .chain_update(key.as_bytes())
        .finalize();
    Uuid::new_v8(d[..16].try_into().expect("16 bytes"))
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

fn call_key(payment: Uuid, step: usize, digest: &str, input_digest: &[u8; 32]) -> String {
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
    Ok(())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

fn is_retryable(e: &Error) -> bool {
    matches!(
        e.sqlstate(),
        Some(&SqlState::T_R_DEADLOCK_DETECTED) | Some(&SqlState::T_R_SERIALIZATION_FAILURE)
    )
}

impl Processor {
    /// A processor over `pool` running plugins in `engine`.
    pub fn new(pool: Pool, engine: Arc<PluginEngine>, settings: ProcessorSettings) -> Self {
        assert!(settings.max_attempts >= 1, "at least one attempt");
        let slots = engine.config().max_concurrent_instances as usize;
        Processor {
            pool,
            engine,
            settings,
            pipeline_slots: Arc::new(tokio::sync::Semaphore::new(slots)),
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

    /// Processes one payment with idempotency key `key`. A replay of a
    /// finished request returns the stored response and writes nothing.
    /// Deadlocks and serialization failures are retried up to
    /// `max_attempts`; every other error is returned with nothing written.
    pub async fn pay(&self, tenant: &str, key: &str, req: &PaymentRequest) -> Result<PayOutcome> {
        validate_request(key, req)?;
        let mut attempt = 1;
        loop {
            match self.pay_once(tenant, key, req).await {
                Err(e) if is_retryable(&e) && attempt < self.settings.max_attempts => {
                    tracing::debug!(attempt, error = %e, "retrying payment transaction");
                    tokio::time::sleep(Duration::from_millis(5 * u64::from(attempt))).await;
                    attempt += 1;
                }
                Err(e) if e.sqlstate() == Some(&SqlState::LOCK_NOT_AVAILABLE) => {
                    return Err(Error::LockTimeout);
                }
                other => return other,
            }
        }
    }

    async fn pay_once(&self, tenant: &str, key: &str, req: &PaymentRequest) -> Result<PayOutcome> {
        let mut client = self.pool.get().await?;
        let pipeline = registry::load_pipeline(&client, tenant, &req.kind).await?;
        registry::ensure_loaded(&client, &self.engine, &pipeline).await?;

        let tx = client.transaction().await?;
        tx.batch_execute(&format!(
            "set local lock_timeout = '{}ms'; set local statement_timeout = '{}ms'",
            self.settings.lock_timeout_ms, self.settings.statement_timeout_ms
        ))
        .await?;

        // 2. Claim the key.
        let id = payment_id(tenant, key);
        let print = fingerprint(req);
        let claimed = tx
            .execute(
                "insert into payrail.idempotency_keys
                   (tenant, key, fingerprint, state, payment_id, expires_at)
                 values ($1, $2, $3, 'pending', $4, now() + make_interval(secs => $5))
                 on conflict do nothing",
                &[
                    &tenant,
                    &key,
                    &print,
                    &id,
                    &(self.settings.key_ttl_secs as f64),
                ],
            )
            .await?
            == 1;
        if !claimed {
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
            if state != "done" {
                return Err(Error::InProgress {
                    key: key.to_string(),
                });
            }
            let response: serde_json::Value = row.get(2);
            let response: PaymentResponse = serde_json::from_value(response)
                .map_err(|e| Error::Setup(format!("stored response unreadable: {e}")))?;
            tx.rollback().await?;
            return Ok(PayOutcome {
                response,
                replayed: true,
            });
        }

        // 3. Lock source and destination, 4. read them.
        let parties = [req.source.clone(), req.destination.clone()];
        locks::lock_all(
            &tx,
            &locks::sorted_keys(tenant, parties.iter().map(String::as_str)),
        )
        .await?;
        let mut accounts = ledger::lock_rows(&tx, tenant, &parties).await?;
        for party in &parties {
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
        let payment = Payment {
            id: id.to_string(),
            kind: req.kind.clone(),
            amount: req.amount,
            currency: req.currency.clone(),
            source: req.source.clone(),
            destination: req.destination.clone(),
            metadata: req.metadata.clone(),
        };
        let snapshots: Vec<AccountSnapshot> = parties
            .iter()
            .map(|p| {
                let a = &accounts[p];
                AccountSnapshot {
                    id: a.id.clone(),
                    currency: a.currency.clone(),
                    balance: a.balance,
                    allow_negative: a.allow_negative,
                    metadata: a.metadata.clone(),
                }
            })
            .collect();

        // 5. Run the pipeline off the async workers.
        let engine = self.engine.clone();
        let limits = self.settings.limits;
        let run_pipeline = pipeline.clone();
        let run_payment = payment.clone();
        let now = now_ms();
        let slot = self
            .pipeline_slots
            .clone()
            .acquire_owned()
            .await
            .expect("pipeline semaphore is never closed");
        let run = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            run_steps(
                &engine,
                &run_pipeline,
                &run_payment,
                snapshots,
                now,
                &limits,
            )
        })
        .await
        .expect("pipeline task")?;

        // 6. Validate and apply postings.
        let mut decline = run.decline.clone();
        let mut postings = Vec::new();
        let mut deltas_to_apply = None;
        if decline.is_none() {
            postings.push(Posting {
                account: req.source.clone(),
                amount: -req.amount,
                currency: req.currency.clone(),
            });
            postings.push(Posting {
                account: req.destination.clone(),
                amount: req.amount,
                currency: req.currency.clone(),
            });
            postings.extend(run.postings.iter().map(|(_, p)| p.clone()));
            let mut extra: Vec<String> = run
                .postings
                .iter()
                .map(|(_, p)| p.account.clone())
                .filter(|a| !accounts.contains_key(a))
                .collect();
            extra.sort();
            extra.dedup();
            if !extra.is_empty() {
                accounts.extend(ledger::lock_rows(&tx, tenant, &extra).await?);
            }
            // A bad posting is the fault of the first step that proposed a
            // posting to that account.
            let plugin_fault = |problem: ApplyProblem| match problem {
                ApplyProblem::Invalid { account, message } => {
                    let proposer = run.postings.iter().find(|(_, p)| p.account == account);
                    match proposer {
                        Some((i, _)) => Error::Plugin {
                            step: *i,
                            plugin: pipeline.steps[*i].plugin.clone(),
                            digest: pipeline.steps[*i].digest.clone(),
                            fault: PluginFault::InvalidOutput(message),
                        },
                        // only the payment's own postings touch it: e.g. a
                        // balance that would overflow i64
                        None => Error::invalid("amount_overflow", message),
                    }
                }
                ApplyProblem::InsufficientFunds { .. } => unreachable!("handled as a decline"),
            };
            let checked = ledger::net_deltas(&postings).and_then(|deltas| {
                ledger::check_against(&accounts, &postings, &deltas).map(|()| deltas)
            });
            match checked {
                Ok(deltas) => deltas_to_apply = Some(deltas),
                Err(problem @ ApplyProblem::Invalid { .. }) => return Err(plugin_fault(problem)),
                Err(ApplyProblem::InsufficientFunds { account }) => {
                    postings.clear();
                    decline = Some(DeclineReason {
                        code: "insufficient_funds".into(),
                        message: format!("account {account:?} has insufficient funds"),
                    });
                }
            }
        }

        // 7. Record the payment, journal, events and response; commit.
        let status = if decline.is_some() {
            PaymentStatus::Declined
        } else {
            PaymentStatus::Approved
        };
        let response = PaymentResponse {
            id: id.to_string(),
            status,
            decline: decline.clone(),
            postings,
            kind: req.kind.clone(),
            amount: req.amount,
            currency: req.currency.clone(),
            source: req.source.clone(),
            destination: req.destination.clone(),
            annotations: if decline.is_some() {
                Metadata::new()
            } else {
                run.annotations.clone()
            },
        };
        let response_json = serde_json::to_value(&response).expect("response serializes");
        let pipeline_json = serde_json::json!({
            "version": pipeline.version,
            "digests": pipeline.steps.iter().map(|s| s.digest.as_str()).collect::<Vec<_>>(),
        });
        let metadata = serde_json::to_value(&req.metadata).expect("metadata serializes");
        let annotations = serde_json::to_value(&response.annotations).expect("annotations");
        tx.execute(
            "insert into payrail.payments (id, tenant, idempotency_key, kind, source, destination,
               amount, currency, metadata, status, decline_code, decline_message, annotations, pipeline)
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
            &[
                &id,
                &tenant,
                &key,
                &req.kind,
                &req.source,
                &req.destination,
                &req.amount,
                &req.currency,
                &metadata,
                &status.as_str(),
                &decline.as_ref().map(|d| d.code.as_str()),
                &decline.as_ref().map(|d| d.message.as_str()),
                &annotations,
                &pipeline_json,
            ],
        )
        .await?;
        // Entries reference the payment row, so they follow it.
        if let Some(deltas) = &deltas_to_apply {
            ledger::apply(&tx, tenant, id, Some(id), &response.postings, deltas).await?;
        }
        write_journal(&tx, id, &run.calls).await?;
        write_events(&tx, tenant, id, &response, &response_json, &run.events).await?;
        tx.execute(
            "update payrail.idempotency_keys set state = 'done', status_code = 201, response = $3
             where tenant = $1 and key = $2",
            &[&tenant, &key, &response_json],
        )
        .await?;
        tx.commit().await?;
        tracing::debug!(payment = %id, status = status.as_str(), "payment committed");
        Ok(PayOutcome {
            response,
            replayed: false,
        })
    }
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
        let out = engine.call(&step.digest, &input, limits).map_err(fault)?;
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
            duration_us: out.duration.as_micros() as i64,
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
async fn write_journal(
    tx: &tokio_postgres::Transaction<'_>,
    payment: Uuid,
    calls: &[CallRecord],
) -> Result<()> {
    if calls.is_empty() {
        return Ok(());
    }
    let keys: Vec<&str> = calls.iter().map(|c| c.call_key.as_str()).collect();
    let steps: Vec<i32> = calls.iter().map(|c| c.step).collect();
    let digests: Vec<&str> = calls.iter().map(|c| c.digest.as_str()).collect();
    let input_digests: Vec<&str> = calls.iter().map(|c| c.input_digest.as_str()).collect();
    let inputs: Vec<&str> = calls.iter().map(|c| c.input_json.as_str()).collect();
    let outputs: Vec<&str> = calls.iter().map(|c| c.output_json.as_str()).collect();
    let fuel: Vec<i64> = calls.iter().map(|c| c.fuel_used).collect();
    let durations: Vec<i64> = calls.iter().map(|c| c.duration_us).collect();
    tx.execute(
        "insert into payrail.plugin_calls
           (call_key, payment_id, step, digest, input_digest, input, output, fuel_used, duration_us)
         select k, $1, s, d, i, inp::jsonb, o::jsonb, f, u
         from unnest($2::text[], $3::int[], $4::text[], $5::text[], $6::text[], $7::text[],
                     $8::bigint[], $9::bigint[]) as t(k, s, d, i, inp, o, f, u)
         on conflict (call_key) do nothing",
        &[
            &payment,
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
    Ok(())
}

/// Writes the payment's outbox events: `payment.<status>` carrying the
/// response, then each plugin event, all keyed by the payment id so their
/// order is kept.
async fn write_events(
    tx: &tokio_postgres::Transaction<'_>,
    tenant: &str,
    payment: Uuid,
    response: &PaymentResponse,
    response_json: &serde_json::Value,
    plugin_events: &[(usize, PluginEvent)],
) -> Result<()> {
    let mut ids = vec![event_id(payment, 0)];
    let mut topics = vec![format!("payment.{}", response.status.as_str())];
    let mut payloads = vec![response_json.clone()];
    if response.status == PaymentStatus::Approved {
        for (i, (step, e)) in plugin_events.iter().enumerate() {
            ids.push(event_id(payment, i + 1));
            topics.push(e.topic.clone());
            let data: serde_json::Value =
                serde_json::from_str(&e.payload).expect("event payload validated by the engine");
            payloads.push(serde_json::json!({
                "payment_id": payment.to_string(),
                "step": step,
                "data": data,
            }));
        }
    }
    let key = payment.to_string();
    tx.execute(
        "insert into payrail.outbox (event_id, tenant, topic, key, payload)
         select e, $1, t, $2, p from unnest($3::uuid[], $4::text[], $5::jsonb[]) with ordinality as u(e, t, p, n)
         order by n",
        &[&tenant, &key, &ids, &topics, &payloads],
    )
    .await?;
    Ok(())
}
