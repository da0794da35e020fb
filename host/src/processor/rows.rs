//! Writing a payment's rows: the payment, the journal of its plugin calls
//! and shadow calls (its outbox events go through `outbox::write`).
//! Callers hold the transaction.

use super::pipeline::{CallRecord, ShadowRecord};
use crate::error::Result;
use crate::model::{Metadata, PaymentRequest, PaymentResponse, PaymentStatus};
use crate::registry::Pipeline;
use uuid::Uuid;

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
    // The log column is named only when a call logged: most calls log
    // nothing, and a host so also journals on a schema before 18.
    let logs: Vec<Option<&str>> = calls.iter().map(|(_, c)| c.log.as_deref()).collect();
    let logged = logs.iter().any(Option::is_some);
    let stmt = tx
        .prepare_cached(if logged {
            "insert into payrail.plugin_calls
               (call_key, payment_id, step, digest, input_digest, input, output, fuel_used, duration_us, log)
             select decode(k, 'hex'), p, s, decode(d, 'hex'), decode(i, 'hex'), inp::json, o::json, f, u, l
             from unnest($1::uuid[], $2::text[], $3::int[], $4::text[], $5::text[], $6::text[],
                         $7::text[], $8::bigint[], $9::bigint[], $10::text[])
                  as t(p, k, s, d, i, inp, o, f, u, l)
             on conflict (payment_id, call_key) do nothing"
        } else {
            "insert into payrail.plugin_calls
               (call_key, payment_id, step, digest, input_digest, input, output, fuel_used, duration_us)
             select decode(k, 'hex'), p, s, decode(d, 'hex'), decode(i, 'hex'), inp::json, o::json, f, u
             from unnest($1::uuid[], $2::text[], $3::int[], $4::text[], $5::text[], $6::text[],
                         $7::text[], $8::bigint[], $9::bigint[]) as t(p, k, s, d, i, inp, o, f, u)
             on conflict (payment_id, call_key) do nothing"
        })
        .await?;
    let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![
        &payment_ids,
        &keys,
        &steps,
        &digests,
        &input_digests,
        &inputs,
        &outputs,
        &fuel,
        &durations,
    ];
    if logged {
        params.push(&logs);
    }
    tx.execute(&stmt, &params).await?;
    for (payment, calls) in payments {
        write_shadows(tx, *payment, calls).await?;
    }
    Ok(())
}

/// Appends the shadow rows of one payment (one statement, none if no step
/// has a candidate). A row already there (a retried payment) is kept.
pub(crate) async fn write_shadows(
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

/// Sets the final status and annotations of a payment whose hold resolved
/// (captured, voided, expired). Returns whether the payment was found.
pub(crate) async fn resolve_payment(
    tx: &deadpool_postgres::Transaction<'_>,
    tenant: &str,
    id: Uuid,
    status: PaymentStatus,
    annotations: &Metadata,
) -> Result<bool> {
    let annotations = serde_json::to_value(annotations).expect("annotations serialize");
    let stmt = tx
        .prepare_cached(
            "update payrail.payments set status = $3, annotations = $4
             where tenant = $1 and id = $2",
        )
        .await?;
    let n = tx
        .execute(&stmt, &[&tenant, &id, &status.as_str(), &annotations])
        .await?;
    Ok(n == 1)
}
