//! The idempotency-key lifecycle, and the one writer of
//! `payrail.idempotency_keys`: claim (`CLAIM_SQL` inside a payment's
//! transaction, `CLAIM_MANY_SQL` inside a batch's), replay of a finished
//! request, finish (the stored response; `insert_keys` for a batch), reap,
//! and what a key reused after its claim expired answers
//! (docs/idempotency.md).

use super::{PayOutcome, Processor};
use crate::db::Pool;
use crate::error::{Error, Result};
use crate::model::PaymentResponse;
use std::time::Duration;
use uuid::Uuid;

/// The payments' unique (tenant, idempotency key) constraint (migration
/// 0012): violated only by a key reused after its claim row was reaped,
/// which the host answers with `idempotency_key_expired`.
pub const PAYMENT_KEY_CONSTRAINT: &str = "payments_tenant_idempotency_key_key";

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

impl Processor {
    /// The error for a key whose claim expired: it names the payment the
    /// key made (a read after the failed transaction rolled back).
    pub(super) async fn key_expired(&self, tenant: &str, key: &str) -> Result<Error> {
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
}

/// Deletes finished idempotency keys past `expires_at`, in batches of
/// `batch`, at most `max_batches` statements; returns how many it deleted.
pub async fn reap_expired_keys(pool: &Pool, batch: i64, max_batches: u32) -> Result<u64> {
    let client = pool.get().await?;
    let mut total = 0;
    for _ in 0..max_batches {
        let n = client
            .execute(
                "delete from payrail.idempotency_keys where ctid in (
                   select ctid from payrail.idempotency_keys
                   where state = 'done' and expires_at < now()
                   limit $1 for update skip locked)",
                &[&batch],
            )
            .await?;
        total += n;
        if n < batch as u64 {
            break;
        }
    }
    Ok(total)
}

/// Most batches one round of the reaper deletes: a backlog is worked off
/// over several rounds instead of holding the pool.
const MAX_REAP_BATCHES_PER_ROUND: u32 = 100;

/// Runs the key reaper every `interval` until `stop` turns true, telling
/// `on_reaped` how many keys each round deleted (the metrics).
pub async fn run_reaper(
    pool: Pool,
    on_reaped: impl Fn(u64),
    interval: Duration,
    batch: i64,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
        match reap_expired_keys(&pool, batch, MAX_REAP_BATCHES_PER_ROUND).await {
            Ok(0) => {}
            Ok(n) => {
                on_reaped(n);
                tracing::info!(deleted = n, "reaped expired idempotency keys");
            }
            Err(e) => tracing::warn!(error = %e, "idempotency key reaper failed; will retry"),
        }
    }
}

/// Records the keys of the batch's written payments, finished, with their
/// stored responses (one statement). Nothing else can have inserted them:
/// each key's try-lock is held by this transaction.
pub(crate) async fn insert_keys(
    tx: &deadpool_postgres::Transaction<'_>,
    tenant: &str,
    keys: &[&str],
    prints: &[&str],
    ids: &[Uuid],
    ttl_secs: f64,
    responses: &[serde_json::Value],
) -> Result<()> {
    assert!(keys.len() == prints.len() && keys.len() == ids.len() && keys.len() == responses.len());
    if keys.is_empty() {
        return Ok(());
    }
    let stmt = tx
        .prepare_cached(
            "insert into payrail.idempotency_keys
               (tenant, key, fingerprint, state, payment_id, expires_at, status_code, response)
             select $1, k, f, 'done', p, now() + make_interval(secs => $5), 201, r
             from unnest($2::text[], $3::text[], $4::uuid[], $6::json[]) as t(k, f, p, r)",
        )
        .await?;
    tx.execute(
        &stmt,
        &[&tenant, &keys, &prints, &ids, &ttl_secs, &responses],
    )
    .await?;
    Ok(())
}

/// The batch's key claims in one statement: sets the transaction's
/// timeouts, try-locks each key (false: another transaction is processing
/// it now) and reads the finished request that owns it, if any. One row
/// per key, in order: (key_free, stored fingerprint, stored response).
///
/// Unlike the one-payment path (`CLAIM_SQL`), no pending row is written:
/// the try-lock, held to commit, keeps every other transaction off the key,
/// and the key row is inserted finished with the batch's writes, so a
/// payment that fails in the batch leaves nothing to clean up.
pub(crate) const CLAIM_MANY_SQL: &str = "
    with cfg as (
        select set_config('lock_timeout', $4, true) as l,
               set_config('statement_timeout', $5, true) as s
    ), k as (
        select t.n, t.key, pg_try_advisory_xact_lock(t.lk) as free
        from cfg, unnest($2::text[], $3::bigint[]) with ordinality as t(key, lk, n)
    )
    select k.free, i.fingerprint, i.response
    from k left join lateral (
        -- `limit 1` keeps this a per-key index lookup: as a join, a plan
        -- cached while the table was small scans every key.
        select i.fingerprint, i.response from payrail.idempotency_keys i
        where k.free and i.tenant = $1 and i.key = k.key and i.state = 'done'
        limit 1
    ) i on true
    order by k.n";
