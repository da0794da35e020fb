//! Two-phase payments: authorize (hold the funds), then capture or void,
//! or let the hold expire.
//!
//! - **Authorize** is `Processor::pay` with `capture: manual`: the same
//!   claim / lock / pipeline transaction, the plugins see
//!   `metadata["payrail.phase"] = "authorize"`, plugin postings and events
//!   are ignored (fees are charged at capture), and if the pipeline approves
//!   and `balance - held >= amount` (unless the source allows negatives)
//!   the transaction writes a hold, raises the source's `held` and schedules
//!   a `hold.expire` timer event in the outbox (own key `timer:<payment>`,
//!   `available_at` = expiry). Status `authorized`; nothing moves yet.
//! - **Capture** / **void** ([`Processor::capture`], [`Processor::void`])
//!   are each one transaction with their own idempotency key (same replay /
//!   conflict / in-progress semantics as payments): claim the key, take the
//!   parties' advisory locks (sorted), row-lock the hold `FOR UPDATE`, check
//!   it is still `authorized` and not past its expiry, run the pipeline with
//!   phase `capture` / `void`, then write. A capture moves the captured
//!   principal plus the plugins' postings (a fee), validated like a payment,
//!   and releases the whole hold (the remainder of a partial capture is
//!   released too). A void releases the hold; at void, plugin postings,
//!   events and declines are ignored (a plugin cannot keep money held).
//! - **Expiry** is the `hold.expire` outbox event: the relay runs
//!   [`expire_hold`] instead of sending it to sinks. It takes the same locks,
//!   and does nothing if the hold already resolved, so a redelivered timer is
//!   harmless. Expiry runs no plugins: a plugin fault must not keep funds
//!   held forever. A timer may be late (no relay, dead-lettered): a
//!   capture, void or read past the expiry time runs [`expire_hold`]
//!   inline ([`expire_inline`]), and `payrail holds expire-due` runs it
//!   for every due hold ([`expire_due`]); whichever runs second writes
//!   nothing.
//!
//! A hold leaves `authorized` exactly once: every transition re-reads it
//! under `FOR UPDATE` and refuses anything but `authorized`
//! (`hold_not_active`).

use super::rules::{DEFAULT_HOLD_TTL_SECS, PHASE_KEY};
use crate::db::Pool;
use crate::error::{Error, Result};
use crate::ledger;
use crate::locks;
use crate::model::{
    DeclineReason, Metadata, Payment, PaymentRequest, PaymentResponse, PaymentStatus, Posting,
};
use crate::outbox::write::{EventRow, insert_timer};
use crate::processor::{self, CLAIM_SQL, MAX_KEY_BYTES, PayOutcome, Processor};
use crate::registry;
use sha2::{Digest, Sha256};
use tokio_postgres::error::SqlState;
use uuid::Uuid;

/// Outbox topic of the expiry timer; internal work of the relay, never sent
/// to sinks.
pub const EXPIRE_TOPIC: &str = "hold.expire";
/// The state a refused capture/void reports for a hold past its expiry
/// (then expired inline, see [`expire_inline`]).
const EXPIRED_STATE: &str = "expired";
/// Due holds `payrail holds expire-due` reads per round, and the cap of the
/// `payrail_holds_overdue` gauge (each is an index range scan).
pub const MAX_DUE_HOLDS: i64 = 10_000;
/// Timeouts of the expiry transaction (it has no processor settings).
const EXPIRE_LOCK_TIMEOUT: &str = "5000ms";
const EXPIRE_STATEMENT_TIMEOUT: &str = "30000ms";

/// Writes the hold of an authorized payment in its transaction (one
/// flight): the hold row, the source's `held` (`ledger`), and the expiry
/// timer (`outbox::write`). The caller checked the funds under the source's lock.
pub(crate) async fn create_hold(
    tx: &deadpool_postgres::Transaction<'_>,
    tenant: &str,
    payment: Uuid,
    req: &PaymentRequest,
) -> Result<()> {
    let ttl = req.hold_ttl_secs.unwrap_or(DEFAULT_HOLD_TTL_SECS) as f64;
    let stmt = tx
        .prepare_cached(
            "insert into payrail.holds
               (payment_id, tenant, account, destination, currency, amount, expires_at)
             values ($1, $2, $3, $4, $5, $6, now() + make_interval(secs => $7))",
        )
        .await?;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 7] = [
        &payment,
        &tenant,
        &req.source,
        &req.destination,
        &req.currency,
        &req.amount,
        &ttl,
    ];
    let timer = EventRow {
        id: phase_event_id(payment, "timer", 0),
        topic: EXPIRE_TOPIC.into(),
        key: timer_key(payment),
        payload: serde_json::json!({ "payment_id": payment.to_string() }),
        traceparent: crate::telemetry::current_traceparent(),
    };
    // the timer fires when the hold expires (the same `now()` + ttl)
    let ((), found, ()) = futures::try_join!(
        async { Ok::<_, Error>(tx.execute(&stmt, &params).await.map(|_| ())?) },
        ledger::hold_funds(tx, tenant, &req.source, req.amount),
        insert_timer(tx, tenant, &timer, ttl),
    )?;
    assert!(found, "the hold's source account exists and is locked");
    Ok(())
}

/// The outbox key of a payment's expiry timer: its own key, so a future
/// `available_at` never blocks the payment's other events.
pub fn timer_key(payment: Uuid) -> String {
    format!("timer:{payment}")
}

/// Stable id of the `index`th event of a payment's `phase` transition.
fn phase_event_id(payment: Uuid, phase: &str, index: usize) -> Uuid {
    let d = Sha256::new()
        .chain_update(b"payrail/event/hold/v1\0")
        .chain_update(payment.as_bytes())
        .chain_update(phase.as_bytes())
        .chain_update(b"\0")
        .chain_update((index as u64).to_be_bytes())
        .finalize();
    Uuid::new_v8(d[..16].try_into().expect("16 bytes"))
}

/// Ledger transaction id of a hold's capture entries.
fn capture_txn_id(payment: Uuid) -> Uuid {
    phase_event_id(payment, "capture-entries", 0)
}

/// What a request does to a hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transition {
    /// Capture this much (`None`: the whole hold).
    Capture(Option<i64>),
    Void,
}

impl Transition {
    fn phase(self) -> &'static str {
        match self {
            Transition::Capture(_) => "capture",
            Transition::Void => "void",
        }
    }
}

/// The hold and its payment, as read under the locks.
struct HoldRow {
    source: String,
    destination: String,
    currency: String,
    amount: i64,
    state: String,
    past_expiry: bool,
    kind: String,
    metadata: Metadata,
    annotations: Metadata,
}

const HOLD_SQL: &str = "select h.account, h.destination, h.currency, h.amount, h.state,
        h.expires_at <= now(), p.kind, p.metadata, p.annotations
     from payrail.holds h join payrail.payments p on p.id = h.payment_id
     where h.tenant = $1 and h.payment_id = $2";

fn hold_from_row(r: &tokio_postgres::Row) -> HoldRow {
    HoldRow {
        source: r.get(0),
        destination: r.get(1),
        currency: r.get(2),
        amount: r.get(3),
        state: r.get(4),
        past_expiry: r.get(5),
        kind: r.get(6),
        metadata: serde_json::from_value(r.get(7)).unwrap_or_default(),
        annotations: serde_json::from_value(r.get(8)).unwrap_or_default(),
    }
}

/// Reads the hold without a lock (to learn its accounts), then takes the
/// parties' advisory locks (sorted), or under a lock service that holds
/// them already writes their fences, and re-reads it `FOR UPDATE`.
async fn lock_hold(
    tx: &deadpool_postgres::Transaction<'_>,
    tenant: &str,
    payment: Uuid,
    external: Option<&locks::External>,
) -> Result<Option<HoldRow>> {
    let Some(first) = tx.query_opt(HOLD_SQL, &[&tenant, &payment]).await? else {
        return Ok(None);
    };
    let first = hold_from_row(&first);
    let keys = locks::sorted_keys(tenant, [first.source.as_str(), first.destination.as_str()]);
    processor::lock_parties(tx, tenant, &keys, external).await?;
    let row = tx
        .query_one(&format!("{HOLD_SQL} for update of h"), &[&tenant, &payment])
        .await?;
    Ok(Some(hold_from_row(&row)))
}

/// The source and destination of payment `id`'s hold, if it has one.
async fn hold_parties(pool: &Pool, tenant: &str, id: Uuid) -> Result<Option<[String; 2]>> {
    let c = pool.get().await?;
    let row = c
        .query_opt(
            "select account, destination from payrail.holds where tenant = $1 and payment_id = $2",
            &[&tenant, &id],
        )
        .await?;
    Ok(row.map(|r| [r.get(0), r.get(1)]))
}

/// Why a transition cannot run on a payment without an active hold.
async fn not_active(
    tx: &deadpool_postgres::Transaction<'_>,
    tenant: &str,
    payment: Uuid,
    hold: Option<&HoldRow>,
) -> Result<Error> {
    if let Some(h) = hold {
        let state = if h.state == "authorized" {
            EXPIRED_STATE.to_string()
        } else {
            h.state.clone()
        };
        return Ok(Error::HoldNotActive {
            payment: payment.to_string(),
            state,
        });
    }
    let row = tx
        .query_opt(
            "select status from payrail.payments where tenant = $1 and id = $2",
            &[&tenant, &payment],
        )
        .await?;
    Ok(match row {
        None => Error::NotFound {
            what: "payment",
            id: payment.to_string(),
        },
        Some(r) => Error::HoldNotActive {
            payment: payment.to_string(),
            state: format!(
                "{}, not authorized for manual capture",
                r.get::<_, String>(0)
            ),
        },
    })
}

/// How a hold resolves.
struct Outcome<'a> {
    state: PaymentStatus,
    captured: Option<i64>,
    /// The capture/void idempotency key, or `expiry`.
    resolved_by: &'a str,
    annotations: &'a Metadata,
}

/// Releases a hold: the source's `held` drops by the hold's amount, the
/// hold and the payment get their final state.
async fn release(
    tx: &deadpool_postgres::Transaction<'_>,
    tenant: &str,
    payment: Uuid,
    hold: &HoldRow,
    outcome: Outcome<'_>,
) -> Result<()> {
    let stmt = tx
        .prepare_cached(
            "update payrail.holds set state = $2, captured_amount = $3,
               resolved_at = now(), resolved_by = $4
             where payment_id = $1 and state = 'authorized'",
        )
        .await?;
    let state = outcome.state.as_str();
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
        [&payment, &state, &outcome.captured, &outcome.resolved_by];
    let (resolved, released, paid) = futures::try_join!(
        async { Ok::<_, Error>(tx.execute(&stmt, &params).await?) },
        ledger::release_funds(tx, tenant, &hold.source, hold.amount),
        super::rows::resolve_payment(tx, tenant, payment, outcome.state, outcome.annotations),
    )?;
    assert!(
        resolved == 1 && released && paid,
        "the hold was authorized and locked"
    );
    Ok(())
}

/// Writes a transition's outbox events: `payment.<state>` with the
/// response, then the plugin events (capture only), keyed by the payment.
async fn write_events(
    tx: &deadpool_postgres::Transaction<'_>,
    tenant: &str,
    payment: Uuid,
    phase: &str,
    response: &PaymentResponse,
    plugin_events: &[(usize, crate::model::PluginEvent)],
) -> Result<()> {
    crate::outbox::write::write_events(
        tx,
        tenant,
        payment,
        format!("payment.{}", response.status.as_str()),
        &serde_json::to_value(response).expect("response serializes"),
        plugin_events,
        |i| phase_event_id(payment, phase, i),
    )
    .await
}

fn parse_payment_id(id: &str) -> Result<Uuid> {
    id.parse().map_err(|_| Error::NotFound {
        what: "payment",
        id: id.chars().take(64).collect(),
    })
}

fn validate_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES || key.chars().any(|c| c.is_control()) {
        return Err(Error::invalid(
            "invalid_idempotency_key",
            format!(
                "the idempotency key must be 1-{MAX_KEY_BYTES} bytes without control characters"
            ),
        ));
    }
    Ok(())
}

/// Fingerprint of a capture/void request under an idempotency key.
fn transition_fingerprint(payment: Uuid, t: Transition) -> String {
    let amount = match t {
        Transition::Capture(a) => a,
        Transition::Void => None,
    };
    let json = serde_json::json!({
        "op": t.phase(),
        "payment": payment.to_string(),
        "amount": amount,
    });
    hex::encode(Sha256::digest(json.to_string()))
}

impl Processor {
    /// Captures an authorized payment's hold: `amount` (default: all of it,
    /// at most the held amount), plus whatever the pipeline (phase
    /// `capture`) posts, e.g. a fee; the rest of the hold is released.
    /// Idempotent under `key` like [`Processor::pay`].
    pub async fn capture(
        &self,
        tenant: &str,
        key: &str,
        payment: &str,
        amount: Option<i64>,
    ) -> Result<PayOutcome> {
        if let Some(a) = amount
            && a <= 0
        {
            return Err(Error::invalid(
                "invalid_amount",
                format!("a capture amount must be a positive integer in minor units, got {a}"),
            ));
        }
        self.transition(tenant, key, payment, Transition::Capture(amount))
            .await
    }

    /// Voids an authorized payment's hold: the funds are released, nothing
    /// moves. Idempotent under `key` like [`Processor::pay`].
    pub async fn void(&self, tenant: &str, key: &str, payment: &str) -> Result<PayOutcome> {
        self.transition(tenant, key, payment, Transition::Void)
            .await
    }

    async fn transition(
        &self,
        tenant: &str,
        key: &str,
        payment: &str,
        t: Transition,
    ) -> Result<PayOutcome> {
        validate_key(key)?;
        let id = parse_payment_id(payment)?;
        self.commits.check_accepting()?;
        // a task of its own, as `pay` runs a single payment: answered early
        // when a commit stalls, the transaction left to end
        let (p, tenant, key) = (self.clone(), tenant.to_string(), key.to_string());
        let run = tokio::spawn(async move { p.transition_retried(&tenant, &key, id, t).await });
        self.commits.answer_task(run).await
    }

    async fn transition_retried(
        &self,
        tenant: &str,
        key: &str,
        id: Uuid,
        t: Transition,
    ) -> Result<PayOutcome> {
        let once = || self.transition_once(tenant, key, id, t);
        let attempts = self.settings().max_attempts;
        match processor::retry::run(attempts, |e| self.retrying(e), once).await {
            Err(e) if e.sqlstate() == Some(&SqlState::LOCK_NOT_AVAILABLE) => {
                Err(Error::LockTimeout)
            }
            Err(e) if ledger::is_overflow(&e) => Err(ledger::overflow_error()),
            other => other,
        }
    }

    async fn transition_once(
        &self,
        tenant: &str,
        key: &str,
        id: Uuid,
        t: Transition,
    ) -> Result<PayOutcome> {
        // Under a lock service the hold's accounts are locked before the
        // transaction, as a payment's are: read them first (a hold's
        // accounts never change).
        let accounts: Vec<String> = match &*self.locks {
            locks::Service::Advisory => Vec::new(),
            _ => hold_parties(self.pool(), tenant, id)
                .await?
                .map(Vec::from)
                .unwrap_or_default(),
        };
        let result = self
            .locked_attempt(tenant, &accounts, async |client, locked| {
                self.transition_in(client, tenant, key, (id, t), locked)
                    .await
            })
            .await;
        if matches!(&result, Err(Error::HoldNotActive { state, .. }) if state == EXPIRED_STATE) {
            // Past its expiry but still authorized (the timer is late,
            // dead-lettered or never ran): expire it now, as the timer
            // would, so the caller's answer and a read agree.
            expire_inline(self.pool(), tenant, id).await;
        }
        result
    }

    /// One transition in the transaction of `client`, after the lock
    /// service (if any) took the hold's accounts.
    async fn transition_in(
        &self,
        client: &mut deadpool_postgres::Client,
        tenant: &str,
        key: &str,
        (id, t): (Uuid, Transition),
        locked: processor::Locked<'_>,
    ) -> Result<PayOutcome> {
        let started = std::time::Instant::now();
        let tx = client.transaction().await?;
        let print = transition_fingerprint(id, t);
        let settings = *self.settings();
        let claim = tx.prepare_cached(CLAIM_SQL).await?;
        let row = tx
            .query_one(
                &claim,
                &[
                    &tenant,
                    &key,
                    &print,
                    &id,
                    &(settings.key_ttl_secs as f64),
                    &format!("{}ms", settings.lock_timeout_ms),
                    &format!("{}ms", settings.statement_timeout_ms),
                    &locks::idempotency_key(tenant, key),
                ],
            )
            .await?;
        let (free, claimed): (bool, i64) = (row.get(0), row.get(1));
        if !free {
            return Err(Error::InProgress {
                key: key.to_string(),
            });
        }
        if claimed == 0 {
            return self.replay(tx, tenant, key, &print).await;
        }
        // a refusal drops the transaction; `locked_attempt` waits for its
        // ROLLBACK before the caller sees the error
        let mut out = self
            .resolve_in(&tx, tenant, key, (id, t), (started, locked.external))
            .await?;
        self.commits.commit(tx).await?;
        tracing::debug!(payment = %id, status = out.response.status.as_str(), "hold resolved");
        // a lock service's wait is lock wait too
        out.lock_wait += locked.acquired_in;
        Ok(out)
    }

    /// The transition inside its transaction, after the key claim;
    /// everything but the commit.
    async fn resolve_in(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        tenant: &str,
        key: &str,
        (id, t): (Uuid, Transition),
        (started, external): (std::time::Instant, Option<&locks::External>),
    ) -> Result<PayOutcome> {
        let hold = active_hold(tx, tenant, id, external).await?;
        let lock_wait = started.elapsed();
        let captured = t.captured(&hold)?;
        let parties = [hold.source.clone(), hold.destination.clone()];
        let mut accounts = ledger::lock_rows(tx, tenant, &parties).await?;
        let pipeline = registry::load_pipeline(tx, tenant, &hold.kind).await?;
        registry::ensure_loaded(tx, self.engine(), &pipeline).await?;
        let plugin_payment = hold.payment(id, t, captured);
        let snapshots = parties
            .iter()
            .filter_map(|p| accounts.get(p))
            .map(processor::snapshot_of)
            .collect();
        let run = self
            .run_pipeline(tenant, &pipeline, &plugin_payment, snapshots)
            .await?;
        let mut annotations = hold.annotations.clone();
        annotations.extend(run.annotations.iter().map(|(k, v)| (k.clone(), v.clone())));

        let (status, postings, deltas) = match captured {
            Some(amount) => {
                let at = CaptureAt {
                    tenant,
                    hold: &hold,
                    amount,
                    pipeline: &pipeline,
                    run: &run,
                };
                let (postings, deltas) = self.decide_capture(tx, &at, &mut accounts).await?;
                (PaymentStatus::Captured, postings, deltas)
            }
            None => (PaymentStatus::Voided, Vec::new(), Default::default()),
        };
        let response = PaymentResponse {
            id: id.to_string(),
            status,
            decline: None,
            postings,
            kind: hold.kind.clone(),
            amount: hold.amount,
            currency: hold.currency.clone(),
            source: hold.source.clone(),
            destination: hold.destination.clone(),
            annotations: annotations.clone(),
        };
        let resolution = Resolution {
            tenant,
            key,
            id,
            t,
            hold: &hold,
            captured,
            annotations: &annotations,
            run: &run,
        };
        write_resolution(tx, &resolution, &response, &deltas, &accounts).await?;
        Ok(PayOutcome {
            response,
            replayed: false,
            // counted in /metrics like a payment's
            calls: processor::call_stats(&pipeline, &run.calls),
            lock_wait,
        })
    }

    /// A capture's decision: the pipeline's decline or an overdraft refuse
    /// it (the hold stays); else its postings (principal and the plugins')
    /// and their net deltas.
    async fn decide_capture(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        at: &CaptureAt<'_>,
        accounts: &mut std::collections::HashMap<String, ledger::Account>,
    ) -> Result<(Vec<Posting>, std::collections::BTreeMap<String, i64>)> {
        let (hold, run) = (at.hold, at.run);
        let declined = |d: DeclineReason| Error::CaptureDeclined {
            code: d.code,
            message: d.message,
        };
        let principal = vec![
            Posting {
                account: hold.source.clone(),
                amount: -at.amount,
                currency: hold.currency.clone(),
            },
            Posting {
                account: hold.destination.clone(),
                amount: at.amount,
                currency: hold.currency.clone(),
            },
        ];
        let postings = run.proposal(principal, false).map_err(declined)?;
        // The hold is released by this capture: check the postings
        // against what is available without it.
        if let Some(src) = accounts.get_mut(&hold.source) {
            src.held = src.held.saturating_sub(hold.amount);
        }
        let checked = self
            .check_postings(tx, at.tenant, accounts, &postings)
            .await?;
        match processor::verdict(postings, checked) {
            processor::Verdict::Approve { postings, deltas } => Ok((postings, deltas)),
            processor::Verdict::Decline(d) => Err(declined(d)),
            processor::Verdict::Fault(problem) => {
                Err(processor::plugin_fault(at.pipeline, run, problem))
            }
        }
    }
}

/// The hold of payment `id`, row-locked, if it is still authorized and not
/// past its expiry; else why not, as the error to answer.
async fn active_hold(
    tx: &deadpool_postgres::Transaction<'_>,
    tenant: &str,
    id: Uuid,
    external: Option<&locks::External>,
) -> Result<HoldRow> {
    match lock_hold(tx, tenant, id, external).await? {
        Some(h) if h.state == "authorized" && !h.past_expiry => Ok(h),
        Some(h) if h.state == "authorized" => Err(Error::HoldNotActive {
            payment: id.to_string(),
            state: EXPIRED_STATE.into(),
        }),
        other => Err(not_active(tx, tenant, id, other.as_ref()).await?),
    }
}

impl HoldRow {
    /// The payment the plugins see at capture or void: the hold's, at the
    /// captured amount, with `payrail.phase` set.
    fn payment(&self, id: Uuid, t: Transition, captured: Option<i64>) -> Payment {
        let mut metadata = self.metadata.clone();
        metadata.insert(PHASE_KEY.into(), t.phase().into());
        Payment {
            id: id.to_string(),
            kind: self.kind.clone(),
            amount: captured.unwrap_or(self.amount),
            currency: self.currency.clone(),
            source: self.source.clone(),
            destination: self.destination.clone(),
            metadata,
        }
    }
}

/// A resolved hold, for `write_resolution`.
struct Resolution<'a> {
    tenant: &'a str,
    key: &'a str,
    id: Uuid,
    t: Transition,
    hold: &'a HoldRow,
    captured: Option<i64>,
    annotations: &'a Metadata,
    run: &'a processor::PipelineRun,
}

/// Writes a capture or void: the hold released (before balances move:
/// the accounts' check `balance >= held` holds after every statement),
/// a capture's entries and balances, the journal, the events, the key.
async fn write_resolution(
    tx: &deadpool_postgres::Transaction<'_>,
    r: &Resolution<'_>,
    response: &PaymentResponse,
    deltas: &std::collections::BTreeMap<String, i64>,
    accounts: &std::collections::HashMap<String, ledger::Account>,
) -> Result<()> {
    let (tenant, id) = (r.tenant, r.id);
    let response_json = serde_json::to_value(response).expect("response serializes");
    let outcome = Outcome {
        state: response.status,
        captured: r.captured,
        resolved_by: r.key,
        annotations: r.annotations,
    };
    release(tx, tenant, id, r.hold, outcome).await?;
    if !response.postings.is_empty() {
        let txn_ids = vec![capture_txn_id(id); response.postings.len()];
        let payment_ids = vec![Some(id); txn_ids.len()];
        ledger::append_entries(tx, tenant, &txn_ids, &payment_ids, &response.postings).await?;
        ledger::add_to_balances(tx, tenant, deltas, &ledger::to_fold(deltas, accounts)).await?;
    }
    processor::write_journal(tx, id, &r.run.calls).await?;
    let plugin_events = match response.status {
        PaymentStatus::Captured => &r.run.events[..],
        _ => &[],
    };
    write_events(tx, tenant, id, r.t.phase(), response, plugin_events).await?;
    processor::finish_key(tx, tenant, r.key, &response_json).await
}

/// What a capture decides on.
struct CaptureAt<'a> {
    tenant: &'a str,
    hold: &'a HoldRow,
    amount: i64,
    pipeline: &'a registry::Pipeline,
    run: &'a processor::PipelineRun,
}

impl Transition {
    /// The amount a capture takes (the whole hold unless given; never
    /// more), or None for a void.
    fn captured(self, hold: &HoldRow) -> Result<Option<i64>> {
        match self {
            Transition::Capture(a) => {
                let a = a.unwrap_or(hold.amount);
                if a > hold.amount {
                    return Err(Error::CaptureExceedsHold {
                        amount: a,
                        held: hold.amount,
                    });
                }
                Ok(Some(a))
            }
            Transition::Void => Ok(None),
        }
    }
}

/// Expires the hold of `payment` if it is still authorized and due (the
/// relay runs this for a due `hold.expire` event). `Ok(false)`: it had
/// already resolved (a redelivered timer), nothing written.
pub async fn expire_hold(pool: &Pool, tenant: &str, payment: Uuid) -> Result<bool> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    tx.execute(
        "select set_config('lock_timeout', $1, true), set_config('statement_timeout', $2, true)",
        &[&EXPIRE_LOCK_TIMEOUT, &EXPIRE_STATEMENT_TIMEOUT],
    )
    .await?;
    // the relay's timer: advisory locks whatever the lock service (it has
    // none), and the row locks every writer of an account takes
    let Some(hold) = lock_hold(&tx, tenant, payment, None).await? else {
        return Ok(false);
    };
    if hold.state != "authorized" {
        return Ok(false);
    }
    if !hold.past_expiry {
        return Err(Error::invalid(
            "hold_not_due",
            format!("the hold of payment {payment} is not due to expire yet"),
        ));
    }
    let response = PaymentResponse {
        id: payment.to_string(),
        status: PaymentStatus::Expired,
        decline: None,
        postings: Vec::new(),
        kind: hold.kind.clone(),
        amount: hold.amount,
        currency: hold.currency.clone(),
        source: hold.source.clone(),
        destination: hold.destination.clone(),
        annotations: hold.annotations.clone(),
    };
    let outcome = Outcome {
        state: PaymentStatus::Expired,
        captured: None,
        resolved_by: "expiry",
        annotations: &hold.annotations,
    };
    release(&tx, tenant, payment, &hold, outcome).await?;
    write_events(&tx, tenant, payment, "expire", &response, &[]).await?;
    tx.commit().await?;
    tracing::info!(payment = %payment, "hold expired");
    Ok(true)
}

/// Expires a due hold on behalf of a request that found it past its expiry
/// (capture, void, read). Exactly once with the timer: whichever runs
/// second finds the hold resolved and writes nothing. A failure is logged,
/// not returned: the timer or `payrail holds expire-due` resolves it later.
pub async fn expire_inline(pool: &Pool, tenant: &str, payment: Uuid) {
    match expire_hold(pool, tenant, payment).await {
        Ok(true) => {
            tracing::info!(payment = %payment, "hold expired inline (its timer had not run)")
        }
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(payment = %payment, error = %e, "inline hold expiry failed; the timer or `payrail holds expire-due` will retry")
        }
    }
}

/// Expires the hold of `payment` if it is authorized and past its expiry
/// (a read that finds it so). One indexed lookup when it is not.
pub async fn expire_if_due(pool: &Pool, tenant: &str, payment: Uuid) -> Result<()> {
    let due = pool
        .get()
        .await?
        .query_opt(
            "select 1 from payrail.holds
             where payment_id = $2 and tenant = $1 and state = 'authorized' and expires_at <= now()",
            &[&tenant, &payment],
        )
        .await?
        .is_some();
    if due {
        expire_inline(pool, tenant, payment).await;
    }
    Ok(())
}

/// Most due holds a read of one account expires inline.
const MAX_INLINE_EXPIRIES: i64 = 100;

/// Expires the due holds of `account` (at most 100), for a read that would
/// otherwise report their funds as still held. Returns how many it found.
pub async fn expire_due_of_account(pool: &Pool, tenant: &str, account: &str) -> Result<usize> {
    let due: Vec<Uuid> = pool
        .get()
        .await?
        .query(
            "select payment_id from payrail.holds
             where tenant = $1 and account = $2 and state = 'authorized' and expires_at <= now()
             limit $3",
            &[&tenant, &account, &MAX_INLINE_EXPIRIES],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for payment in &due {
        expire_inline(pool, tenant, *payment).await;
    }
    Ok(due.len())
}

/// Holds of every tenant still authorized past their expiry, oldest first,
/// at most `limit` (an index range scan): the timers that did not run.
async fn due_holds(pool: &Pool, limit: i64) -> Result<Vec<(String, Uuid)>> {
    let rows = pool
        .get()
        .await?
        .query(
            "select tenant, payment_id from payrail.holds
             where state = 'authorized' and expires_at <= now()
             order by expires_at limit $1",
            &[&limit.max(0)],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// How many holds are past their expiry and still authorized (capped at
/// [`MAX_DUE_HOLDS`]): nonzero for long means expiry timers are stuck.
pub async fn count_overdue(pool: &Pool) -> Result<u64> {
    let n: i64 = pool
        .get()
        .await?
        .query_one(
            "select count(*) from (select 1 from payrail.holds
             where state = 'authorized' and expires_at <= now() limit $1) d",
            &[&MAX_DUE_HOLDS],
        )
        .await?
        .get(0);
    Ok(n as u64)
}

/// What `payrail holds expire-due` did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ExpiredDue {
    /// Holds this run expired.
    pub expired: u64,
    /// Due holds something else resolved meanwhile (a timer, a capture).
    pub already_resolved: u64,
    /// Holds whose expiry failed (lock timeout...); run again.
    pub failed: u64,
}

/// Expires every due hold of every tenant, oldest first, in rounds of at
/// most [`MAX_DUE_HOLDS`], one transaction per hold, exactly as its timer
/// would: for timers that were dead-lettered or never ran. `limit` caps the
/// holds tried in this run (None: until none is due). A hold that fails is
/// not tried again in this run; a round with no success ends it.
pub async fn expire_due(pool: &Pool, limit: Option<u64>) -> Result<ExpiredDue> {
    let mut out = ExpiredDue::default();
    let mut failed = std::collections::HashSet::new();
    loop {
        let tried = out.expired + out.already_resolved + out.failed;
        let room = limit.map_or(MAX_DUE_HOLDS as u64, |l| l.saturating_sub(tried));
        let round = room.min(MAX_DUE_HOLDS as u64) as i64 + failed.len() as i64;
        if room == 0 {
            break;
        }
        let before = out.expired + out.already_resolved;
        let due = due_holds(pool, round).await?;
        let fresh: Vec<_> = due.iter().filter(|(_, p)| !failed.contains(p)).collect();
        for (tenant, payment) in fresh.into_iter().take(room as usize) {
            match expire_hold(pool, tenant, *payment).await {
                Ok(true) => out.expired += 1,
                Ok(false) => out.already_resolved += 1,
                Err(e) => {
                    tracing::warn!(payment = %payment, error = %e, "could not expire a due hold");
                    failed.insert(*payment);
                    out.failed += 1;
                }
            }
        }
        if out.expired + out.already_resolved == before {
            break;
        }
    }
    Ok(out)
}

/// Runs a claimed `hold.expire` event (its payload names the payment).
/// `Ok` means done (expired now or earlier): mark the event delivered.
pub async fn fire_timer(
    pool: &Pool,
    tenant: &str,
    payload: &serde_json::Value,
) -> std::result::Result<(), String> {
    let id = payload
        .get("payment_id")
        .and_then(|v| v.as_str())
        .and_then(|s| s.parse::<Uuid>().ok())
        .ok_or_else(|| format!("hold.expire event without a payment id: {payload}"))?;
    expire_hold(pool, tenant, id)
        .await
        .map(|_| ())
        .map_err(|e| format!("[{}] {e}", e.code()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::processor::rules::{MAX_HOLD_TTL_SECS, phase_metadata, validate_capture};

    #[test]
    fn a_plugin_cannot_publish_the_hold_timer() {
        assert!(crate::engine::is_reserved_topic(EXPIRE_TOPIC));
    }

    fn req(capture: crate::model::CaptureMode, ttl: Option<i64>) -> PaymentRequest {
        PaymentRequest {
            kind: "t".into(),
            source: "a".into(),
            destination: "b".into(),
            amount: 1,
            currency: "EUR".into(),
            metadata: Metadata::new(),
            capture,
            hold_ttl_secs: ttl,
        }
    }

    #[test]
    fn default_capture_keeps_the_fingerprint_and_ttl_is_bounded() {
        use crate::model::CaptureMode::*;
        let json = serde_json::to_string(&req(Automatic, None)).unwrap();
        assert!(!json.contains("capture") && !json.contains("hold_ttl"));
        assert!(
            serde_json::to_string(&req(Manual, None))
                .unwrap()
                .contains("\"capture\":\"manual\"")
        );
        assert!(validate_capture(&req(Manual, Some(60))).is_ok());
        assert!(validate_capture(&req(Manual, Some(0))).is_err());
        assert!(validate_capture(&req(Manual, Some(MAX_HOLD_TTL_SECS + 1))).is_err());
        assert!(validate_capture(&req(Automatic, Some(60))).is_err());
        assert_eq!(
            phase_metadata(&req(Manual, None))
                .get(PHASE_KEY)
                .map(String::as_str),
            Some("authorize")
        );
        assert!(phase_metadata(&req(Automatic, None)).is_empty());
    }

    #[test]
    fn transition_fingerprints_differ_by_op_payment_and_amount() {
        let p = Uuid::nil();
        let q = Uuid::from_u128(1);
        let all = [
            transition_fingerprint(p, Transition::Void),
            transition_fingerprint(q, Transition::Void),
            transition_fingerprint(p, Transition::Capture(None)),
            transition_fingerprint(p, Transition::Capture(Some(5))),
        ];
        for i in 0..all.len() {
            for j in i + 1..all.len() {
                assert_ne!(all[i], all[j]);
            }
        }
    }
}
