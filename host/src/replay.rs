//! Deterministic replay: re-executes every journaled plugin call of a
//! payment from its journaled input on its recorded digest, and reports a
//! match or the exact difference.
//!
//! A call matches when (1) its journaled input still hashes to its
//! journaled input digest, (2) its call key is still
//! sha256(payment, step, digest, input digest), and (3) the plugin, run
//! again on that input, returns exactly the journaled output. Altering a
//! journaled input, output, digest or step breaks one of them. Shadow
//! (candidate) calls are replayed the same way against their own journaled
//! output.
//!
//! Replay checks determinism, not limits: it runs with the host's limits
//! raised to at least what the journaled call used (fuel, input size), so a
//! call that fitted its step's limits when it ran fits again.

use crate::engine::{PluginEngine, PluginLimits, PreparedInput};
use crate::error::{Error, Result};
use crate::model::PluginInput;
use crate::processor::call_key;
use crate::registry;
use deadpool_postgres::GenericClient;
use serde::Serialize;
use std::sync::Arc;
use uuid::Uuid;

/// Most differences reported per call.
pub const MAX_DIFFS: usize = 20;
/// Most payments one range replay checks.
pub const MAX_RANGE_PAYMENTS: i64 = 100_000;
/// Most mismatching payment ids a range summary lists.
pub const MAX_LISTED: usize = 50;

/// One difference between the journaled and the replayed output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Difference {
    /// JSON pointer into the output (`/postings/0/amount`).
    pub path: String,
    /// The journaled value (absent: `null`).
    #[schema(value_type = Object)]
    pub journaled: serde_json::Value,
    /// The value the replay produced (absent: `null`).
    #[schema(value_type = Object)]
    pub replayed: serde_json::Value,
}

/// Verdict on one call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// Same output, byte for byte (as JSON).
    Match,
    /// The replay produced a different output.
    OutputMismatch {
        /// Each differing JSON path (at most [`MAX_DIFFS`]).
        differences: Vec<Difference>,
    },
    /// The journaled input no longer hashes to its digest, or the call key
    /// does not match (the row was altered).
    JournalTampered {
        /// What does not add up.
        detail: String,
    },
    /// The replay faulted where the original call succeeded (or, for a
    /// shadow call, the fault changed).
    Fault {
        /// The typed fault.
        code: String,
        /// Its message.
        message: String,
    },
}

/// One replayed call.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CallReplay {
    /// The pipeline step.
    pub step: i32,
    /// `live` or `shadow`.
    #[schema(value_type = String)]
    pub role: &'static str,
    /// The plugin digest that ran.
    pub digest: String,
    /// Fuel the journal recorded.
    pub fuel_journaled: i64,
    /// Fuel the replay used (same engine build: the same number).
    pub fuel_replayed: Option<u64>,
    /// The verdict (`verdict`: `match`, `output_mismatch`,
    /// `journal_tampered` or `fault`, with its fields beside it).
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub verdict: Verdict,
}

/// The replay of one payment.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PaymentReplay {
    /// The payment.
    pub payment_id: String,
    /// Every call, in step order (live before shadow).
    pub calls: Vec<CallReplay>,
    /// Whether every call matched.
    pub matched: bool,
}

/// Summary of a range replay.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct RangeSummary {
    /// Payments replayed.
    pub payments: u64,
    /// Calls replayed (live + shadow).
    pub calls: u64,
    /// Calls that matched.
    pub matched_calls: u64,
    /// Payments with at least one differing call.
    pub mismatched_payments: u64,
    /// Up to [`MAX_LISTED`] of those, with their first difference.
    pub mismatches: Vec<PaymentReplay>,
}

/// Appends the differences between `a` (journaled) and `b` (replayed).
pub fn json_diff(
    path: &str,
    a: &serde_json::Value,
    b: &serde_json::Value,
    out: &mut Vec<Difference>,
) {
    use serde_json::Value;
    if out.len() >= MAX_DIFFS || a == b {
        return;
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                json_diff(
                    &format!("{path}/{k}"),
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            for i in 0..x.len().max(y.len()) {
                json_diff(
                    &format!("{path}/{i}"),
                    x.get(i).unwrap_or(&Value::Null),
                    y.get(i).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        _ => out.push(Difference {
            path: if path.is_empty() {
                "/".into()
            } else {
                path.into()
            },
            journaled: a.clone(),
            replayed: b.clone(),
        }),
    }
}

/// One journaled call to verify.
struct Journaled {
    step: i32,
    role: &'static str,
    call_key: Option<String>,
    digest: String,
    input_digest: String,
    input: serde_json::Value,
    output: Option<serde_json::Value>,
    error: Option<String>,
    fuel: i64,
}

/// `payment_not_found` unless payment `id` is `tenant`'s.
async fn ensure_payment(client: &impl GenericClient, tenant: &str, id: Uuid) -> Result<()> {
    let exists = client
        .query_opt(
            "select 1 from payrail.payments where id = $1 and tenant = $2",
            &[&id, &tenant],
        )
        .await?;
    match exists {
        Some(_) => Ok(()),
        None => Err(Error::NotFound {
            what: "payment",
            id: id.to_string(),
        }),
    }
}

/// One journaled live call, as `payrail plugin fixture` takes it out.
#[derive(Debug, Clone)]
pub struct JournaledCall {
    /// The component that ran.
    pub digest: String,
    /// Its input, as journaled (the canonical plugin input).
    pub input: serde_json::Value,
    /// Its decision, as journaled.
    pub output: serde_json::Value,
}

/// The live call of step `step` of payment `id` of `tenant`:
/// `payment_not_found` for another tenant's payment, `call_not_found`
/// for a step that did not run (a step after a decline, say).
pub async fn journaled_call(
    client: &impl GenericClient,
    tenant: &str,
    id: Uuid,
    step: i32,
) -> Result<JournaledCall> {
    ensure_payment(client, tenant, id).await?;
    let row = client
        .query_opt(
            "select encode(digest, 'hex'), input::jsonb, output::jsonb
             from payrail.plugin_calls where payment_id = $1 and step = $2",
            &[&id, &step],
        )
        .await?
        .ok_or_else(|| {
            Error::invalid(
                "call_not_found",
                format!("payment {id} has no journaled call at step {step} (it ran none there)"),
            )
        })?;
    Ok(JournaledCall {
        digest: row.get(0),
        input: row.get(1),
        output: row.get(2),
    })
}

/// Replays every journaled call of payment `id` of `tenant`.
pub async fn replay_payment(
    client: &impl GenericClient,
    engine: &Arc<PluginEngine>,
    base: &PluginLimits,
    tenant: &str,
    id: Uuid,
) -> Result<PaymentReplay> {
    ensure_payment(client, tenant, id).await?;
    let rows = client
        .query(
            "select c.step, encode(c.call_key, 'hex'), encode(c.digest, 'hex'),
                    encode(c.input_digest, 'hex'), c.input, c.output, c.fuel_used,
                    s.candidate_digest, s.input_digest, s.candidate_output, s.candidate_error,
                    s.fuel_used
             from payrail.plugin_calls c
             left join payrail.shadow_calls s on s.payment_id = c.payment_id and s.step = c.step
             where c.payment_id = $1 order by c.step",
            &[&id],
        )
        .await?;
    let mut journal = Vec::with_capacity(rows.len());
    for r in &rows {
        let input: serde_json::Value = r.get(4);
        journal.push(Journaled {
            step: r.get(0),
            role: "live",
            call_key: Some(r.get(1)),
            digest: r.get(2),
            input_digest: r.get(3),
            input: input.clone(),
            output: Some(r.get(5)),
            error: None,
            fuel: r.get(6),
        });
        if let Some(candidate) = r.get::<_, Option<String>>(7) {
            journal.push(Journaled {
                step: r.get(0),
                role: "shadow",
                call_key: None,
                digest: candidate,
                input_digest: r.get(8),
                input,
                output: r.get(9),
                error: r.get(10),
                fuel: r.get(11),
            });
        }
    }
    let mut calls = Vec::with_capacity(journal.len());
    for j in journal {
        calls.push(replay_call(client, engine, base, id, j).await?);
    }
    let matched = calls.iter().all(|c| c.verdict == Verdict::Match);
    Ok(PaymentReplay {
        payment_id: id.to_string(),
        calls,
        matched,
    })
}

async fn replay_call(
    client: &impl GenericClient,
    engine: &Arc<PluginEngine>,
    base: &PluginLimits,
    payment: Uuid,
    j: Journaled,
) -> Result<CallReplay> {
    let mut call = CallReplay {
        step: j.step,
        role: j.role,
        digest: j.digest.clone(),
        fuel_journaled: j.fuel,
        fuel_replayed: None,
        verdict: Verdict::Match,
    };
    let tampered = |detail: String| Verdict::JournalTampered { detail };
    let input: PluginInput = match serde_json::from_value(j.input) {
        Ok(i) => i,
        Err(e) => {
            call.verdict = tampered(format!("the journaled input is not a plugin input: {e}"));
            return Ok(call);
        }
    };
    let prepared = PreparedInput::new(input);
    let input_digest = hex::encode(prepared.digest);
    if input_digest != j.input_digest {
        call.verdict = tampered(format!(
            "the journaled input hashes to {input_digest}, the journal says {}",
            j.input_digest
        ));
        return Ok(call);
    }
    if let Some(key) = &j.call_key {
        let expected = call_key(payment, j.step.max(0) as usize, &j.digest, &prepared.digest);
        if *key != expected {
            call.verdict = tampered(format!(
                "the call key is {key}, but (payment, step, digest, input) give {expected}"
            ));
            return Ok(call);
        }
    }
    registry::ensure_digest_loaded(client, engine, &j.digest).await?;
    let limits = PluginLimits {
        fuel: base.fuel.max(j.fuel.max(0) as u64 + 1),
        max_input_bytes: base.max_input_bytes.max(prepared.json.len()),
        max_output_bytes: base.max_output_bytes.max(1 << 20),
        ..*base
    };
    let eng = engine.clone();
    let digest = j.digest.clone();
    let result = tokio::task::spawn_blocking(move || eng.call(&digest, &prepared, &limits))
        .await
        .expect("replay call task");
    call.verdict = match (result, j.output, j.error) {
        (Ok(out), Some(journaled), _) => {
            call.fuel_replayed = Some(out.fuel_used);
            let replayed: serde_json::Value =
                serde_json::from_str(&out.output_json).expect("engine output is JSON");
            let mut differences = Vec::new();
            json_diff("", &journaled, &replayed, &mut differences);
            if differences.is_empty() {
                Verdict::Match
            } else {
                Verdict::OutputMismatch { differences }
            }
        }
        (Ok(out), None, error) => {
            call.fuel_replayed = Some(out.fuel_used);
            Verdict::Fault {
                code: "fault_disappeared".into(),
                message: format!(
                    "the journal records the fault {:?}; the replay succeeded with {}",
                    error.unwrap_or_default(),
                    out.output_json
                ),
            }
        }
        (Err(f), None, Some(error)) if error.starts_with(&format!("{}:", f.code())) => {
            Verdict::Match
        }
        (Err(f), _, _) => Verdict::Fault {
            code: f.code().into(),
            message: f.to_string(),
        },
    };
    Ok(call)
}

/// Replays every payment of `tenant` created in `[since, until)` (Postgres
/// timestamps, e.g. `2026-11-26T00:00:00Z`), at most `limit` (capped at
/// [`MAX_RANGE_PAYMENTS`]), oldest first.
pub async fn replay_range(
    client: &impl GenericClient,
    engine: &Arc<PluginEngine>,
    base: &PluginLimits,
    tenant: &str,
    since: &str,
    until: &str,
    limit: i64,
) -> Result<RangeSummary> {
    let rows = client
        .query(
            "select id from payrail.payments
             where tenant = $1 and created_at >= $2::text::timestamptz
               and created_at < $3::text::timestamptz
             order by created_at, id limit $4",
            &[&tenant, &since, &until, &limit.clamp(1, MAX_RANGE_PAYMENTS)],
        )
        .await
        .map_err(|e| match e.code() {
            Some(c) if c.code().starts_with("22") => Error::invalid(
                "invalid_time",
                format!("--since/--until must be timestamps such as 2026-11-26T00:00:00Z: {e}"),
            ),
            _ => Error::Db(e),
        })?;
    let mut summary = RangeSummary::default();
    for r in rows {
        let p = replay_payment(client, engine, base, tenant, r.get(0)).await?;
        summary.payments += 1;
        summary.calls += p.calls.len() as u64;
        summary.matched_calls += p
            .calls
            .iter()
            .filter(|c| c.verdict == Verdict::Match)
            .count() as u64;
        if !p.matched {
            summary.mismatched_payments += 1;
            if summary.mismatches.len() < MAX_LISTED {
                summary.mismatches.push(p);
            }
        }
    }
    Ok(summary)
}
