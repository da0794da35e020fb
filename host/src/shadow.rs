//! Shadow mode reports: how a step's candidate plugin compared with the
//! live one on real traffic (`payrail.shadow_calls`, written by the
//! processor beside the live journal). Promoting a candidate is
//! [`crate::registry::promote_candidate`].

use crate::error::Result;
use crate::replay::{Difference, json_diff};
use deadpool_postgres::GenericClient;
use serde::Serialize;

/// Most example differences per (step, candidate).
pub const MAX_EXAMPLES: i64 = 5;

/// One disagreement, as an example.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ShadowExample {
    /// The payment whose input both plugins saw.
    pub payment_id: String,
    /// The live plugin's decision.
    #[schema(value_type = Object)]
    pub live: serde_json::Value,
    /// The candidate's decision (absent when it faulted).
    #[schema(value_type = Option<Object>)]
    pub candidate: Option<serde_json::Value>,
    /// The candidate's fault (`code: message`), if it faulted.
    pub candidate_error: Option<String>,
    /// Differing JSON paths: decision, decline code, postings, ...
    #[schema(value_type = Vec<Object>)]
    pub differences: Vec<Difference>,
}

/// Agreement of one candidate of one step.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ShadowStepReport {
    /// The pipeline step (0-based).
    pub step: i32,
    /// The live digest(s) compared against (the latest seen).
    pub live_digest: String,
    /// The candidate digest.
    pub candidate_digest: String,
    /// Shadow calls recorded.
    pub calls: i64,
    /// Calls where the candidate decided exactly as the live plugin.
    pub agree: i64,
    /// Calls where it did not (including faults).
    pub disagree: i64,
    /// Of those, calls where the candidate faulted.
    pub faults: i64,
    /// Mean candidate fuel on successful calls.
    pub mean_fuel: i64,
    /// Up to [`MAX_EXAMPLES`] recent disagreements.
    pub examples: Vec<ShadowExample>,
}

/// The shadow report of a payment kind.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ShadowReport {
    /// The payment kind.
    pub kind: String,
    /// One entry per (step, candidate digest) ever shadowed.
    pub steps: Vec<ShadowStepReport>,
}

/// Agree/disagree counts and example differences of every candidate that
/// ran for `kind` payments of `tenant`.
pub async fn report(client: &impl GenericClient, tenant: &str, kind: &str) -> Result<ShadowReport> {
    let rows = client
        .query(
            "select s.step, max(s.live_digest), s.candidate_digest, count(*),
                    count(*) filter (where s.agree),
                    count(*) filter (where s.candidate_error is not null),
                    coalesce(avg(s.fuel_used) filter (where s.candidate_error is null), 0)::bigint
             from payrail.shadow_calls s join payrail.payments p on p.id = s.payment_id
             where p.tenant = $1 and p.kind = $2
             group by s.step, s.candidate_digest order by s.step, s.candidate_digest",
            &[&tenant, &kind],
        )
        .await?;
    let mut steps = Vec::with_capacity(rows.len());
    for r in rows {
        let step: i32 = r.get(0);
        let candidate_digest: String = r.get(2);
        let calls: i64 = r.get(3);
        let agree: i64 = r.get(4);
        let examples = client
            .query(
                "select s.payment_id::text, s.live_output, s.candidate_output, s.candidate_error
                 from payrail.shadow_calls s join payrail.payments p on p.id = s.payment_id
                 where p.tenant = $1 and p.kind = $2 and s.step = $3
                   and s.candidate_digest = $4 and not s.agree
                 order by s.created_at desc limit $5",
                &[&tenant, &kind, &step, &candidate_digest, &MAX_EXAMPLES],
            )
            .await?
            .iter()
            .map(|e| {
                let live: serde_json::Value = e.get(1);
                let candidate: Option<serde_json::Value> = e.get(2);
                let mut differences = Vec::new();
                json_diff(
                    "",
                    &live,
                    candidate.as_ref().unwrap_or(&serde_json::Value::Null),
                    &mut differences,
                );
                ShadowExample {
                    payment_id: e.get(0),
                    live,
                    candidate,
                    candidate_error: e.get(3),
                    differences,
                }
            })
            .collect();
        steps.push(ShadowStepReport {
            step,
            live_digest: r.get(1),
            candidate_digest,
            calls,
            agree,
            disagree: calls - agree,
            faults: r.get(5),
            mean_fuel: r.get(6),
            examples,
        });
    }
    Ok(ShadowReport {
        kind: kind.to_string(),
        steps,
    })
}
