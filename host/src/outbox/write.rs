//! The one writer of `payrail.outbox` (the relay in `outbox` reads it):
//! a payment's events, a hold's transitions and expiry timer, an opened
//! account. Callers hold the transaction, so an event commits with what it
//! announces or not at all.

use crate::error::Result;
use crate::model::PluginEvent;
use deadpool_postgres::GenericClient;
use uuid::Uuid;

/// One outbox row.
pub struct EventRow {
    pub id: Uuid,
    pub topic: String,
    pub key: String,
    pub payload: serde_json::Value,
    /// The W3C traceparent of the request that caused it (`telemetry`).
    pub traceparent: Option<String>,
}

/// A payment's outbox rows: `topic` carrying `payload` (the response), then
/// each plugin event, all keyed by the payment id so their order is kept.
/// Event `i` gets id `event_id(i)`, stable across retries.
pub fn event_rows(
    payment: Uuid,
    topic: String,
    payload: &serde_json::Value,
    plugin_events: &[(usize, PluginEvent)],
    event_id: impl Fn(usize) -> Uuid,
    traceparent: Option<&str>,
) -> Vec<EventRow> {
    let key = payment.to_string();
    let traceparent = traceparent.map(str::to_string);
    let mut rows = vec![EventRow {
        id: event_id(0),
        topic,
        key: key.clone(),
        payload: payload.clone(),
        traceparent: traceparent.clone(),
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
            traceparent: traceparent.clone(),
        });
    }
    rows
}

/// Writes a payment's outbox events (`event_rows`) in one statement, with
/// the traceparent of the current span. Payments and hold transitions both
/// write through here.
pub async fn write_events(
    tx: &deadpool_postgres::Transaction<'_>,
    tenant: &str,
    payment: Uuid,
    topic: String,
    payload: &serde_json::Value,
    plugin_events: &[(usize, PluginEvent)],
    event_id: impl Fn(usize) -> Uuid,
) -> Result<()> {
    let traceparent = crate::telemetry::current_traceparent();
    let rows = event_rows(
        payment,
        topic,
        payload,
        plugin_events,
        event_id,
        traceparent.as_deref(),
    );
    insert_events(tx, tenant, &rows).await
}

/// Inserts outbox rows in the given order (one statement): the relay keeps
/// that order per key.
pub async fn insert_events(tx: &impl GenericClient, tenant: &str, rows: &[EventRow]) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let topics: Vec<&str> = rows.iter().map(|r| r.topic.as_str()).collect();
    let keys: Vec<&str> = rows.iter().map(|r| r.key.as_str()).collect();
    let payloads: Vec<&serde_json::Value> = rows.iter().map(|r| &r.payload).collect();
    // Without a trace the statement names no traceparent column, so a host
    // not exporting traces also writes to a ledger before schema 17.
    if rows.iter().all(|r| r.traceparent.is_none()) {
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
        return Ok(());
    }
    let traces: Vec<Option<&str>> = rows.iter().map(|r| r.traceparent.as_deref()).collect();
    let stmt = tx
        .prepare_cached(
            "insert into payrail.outbox (event_id, tenant, topic, key, payload, traceparent)
             select e, $1, t, k, p, tp
             from unnest($2::uuid[], $3::text[], $4::text[], $5::json[], $6::text[])
                  with ordinality as u(e, t, k, p, tp, n)
             order by n",
        )
        .await?;
    tx.execute(&stmt, &[&tenant, &ids, &topics, &keys, &payloads, &traces])
        .await?;
    Ok(())
}

/// Inserts one event that the relay may claim only `delay_secs` after the
/// transaction began (a hold's expiry timer: `now()` is the transaction's
/// start, so the hold's own `expires_at` computed the same way is equal).
pub async fn insert_timer(
    tx: &impl GenericClient,
    tenant: &str,
    row: &EventRow,
    delay_secs: f64,
) -> Result<()> {
    let stmt = tx
        .prepare_cached(
            // the traceparent is set after the insert, and only when there
            // is one (see `insert_events`)
            "insert into payrail.outbox (event_id, tenant, topic, key, payload, available_at)
             values ($1, $2, $3, $4, $5, now() + make_interval(secs => $6))",
        )
        .await?;
    tx.execute(
        &stmt,
        &[
            &row.id,
            &tenant,
            &row.topic,
            &row.key,
            &row.payload,
            &delay_secs,
        ],
    )
    .await?;
    if let Some(t) = &row.traceparent {
        tx.execute(
            "update payrail.outbox set traceparent = $2 where event_id = $1",
            &[&row.id, t],
        )
        .await?;
    }
    Ok(())
}
