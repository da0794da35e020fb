//! The outbox relay: delivers the events payments wrote to `payrail.outbox`
//! (in their own transaction) to the configured sinks, at least once.
//!
//! - **Claim** a batch of due, pending events with `FOR UPDATE SKIP LOCKED`
//!   and stamp a lease (owner + expiry) on them. Every claim scans all
//!   pending rows (no `id > last_seen` cursor), so an event whose
//!   transaction committed late is still found. An event whose lease
//!   expired (its host died) is claimable again: that is the recovery.
//! - **Order per key**: an event is only claimed when no earlier event with
//!   the same key is undelivered (pending, leased, backing off or dead).
//! - **Deliver** to every sink whose topic pattern matches; all must
//!   acknowledge. Then the event is `delivered`; otherwise it goes back to
//!   `pending` with an exponential, jittered backoff in `available_at`, and
//!   after `max_attempts` claims to `dead` with its last error.
//!
//! Several relays (hosts) may run against one database; each event is
//! leased to one of them at a time. See `docs/outbox.md`.

pub mod sinks;
pub mod write;

use crate::config::{Config, OutboxConfig};
use crate::db::Pool;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use deadpool_postgres::GenericClient;
use sinks::{Delivered, Envelope, Sink};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tracing::Instrument;

/// Most events `dead_letters` lists at once.
pub const MAX_LIST: i64 = 10_000;
/// Longest pause between two relay rounds that failed on the database
/// (the pause grows with each failure, by `poll_interval`).
const MAX_ERROR_PAUSE: Duration = Duration::from_secs(5);
/// How often the relay measures lag and dead letters for the metrics, at
/// most.
const GAUGE_INTERVAL: Duration = Duration::from_secs(2);
/// The gauges count the backlog, so they cost in proportion to it (73 ms a
/// measurement with 80k undelivered events under `payrail bench`, every
/// relay of every host). The next measurement waits at least this many
/// times as long as the last one took: at most 1% of a core.
const GAUGE_COST_FACTOR: u32 = 100;
/// The gauges are never older than this (plus one measurement).
const MAX_GAUGE_INTERVAL: Duration = Duration::from_secs(300);

/// When to measure the gauges again, after one that took `took`.
fn next_gauge_after(took: Duration) -> Duration {
    GAUGE_INTERVAL
        .max(took.saturating_mul(GAUGE_COST_FACTOR))
        .min(MAX_GAUGE_INTERVAL)
}
/// Longest `last_error` stored.
const MAX_ERROR_BYTES: usize = 2000;

/// The relay's tunables (see `[outbox]` in the configuration).
#[derive(Debug, Clone, Copy)]
pub struct RelaySettings {
    /// Events claimed per round.
    pub batch_size: i64,
    /// How long a claim is exclusive.
    pub lease: Duration,
    /// Pause between rounds when there was nothing to do.
    pub poll_interval: Duration,
    /// Claims of one event before it goes to dead-letter.
    pub max_attempts: i32,
    /// First retry delay.
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// Events delivered at once.
    pub concurrency: usize,
}

impl RelaySettings {
    /// The settings of an `[outbox]` section.
    pub fn from_config(c: &OutboxConfig) -> RelaySettings {
        RelaySettings {
            batch_size: c.batch_size,
            lease: Duration::from_millis(c.lease_ms),
            poll_interval: Duration::from_millis(c.poll_interval_ms),
            max_attempts: c.max_attempts,
            backoff_base: Duration::from_millis(c.backoff_base_ms),
            backoff_max: Duration::from_millis(c.backoff_max_ms),
            concurrency: c.concurrency,
        }
    }
}

impl Default for RelaySettings {
    fn default() -> Self {
        RelaySettings::from_config(&OutboxConfig::default())
    }
}

/// The delay before retry number `attempt` (1-based): `base * 2^(attempt-1)`
/// capped at `max`, then scaled by `jitter` in [0.5, 1.0] (full jitter
/// would allow near-zero delays; half keeps the backoff meaningful).
pub fn backoff(settings: &RelaySettings, attempt: i32, jitter: f64) -> Duration {
    let exp = (attempt.max(1) - 1).min(40) as u32;
    let raw = settings
        .backoff_base
        .checked_mul(1u32 << exp.min(31))
        .unwrap_or(settings.backoff_max)
        .min(settings.backoff_max);
    raw.mul_f64(jitter.clamp(0.5, 1.0))
}

/// What one round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoundStats {
    /// Events claimed.
    pub claimed: usize,
    /// Events delivered to every matching sink.
    pub delivered: usize,
    /// Events whose delivery failed (retried later or dead).
    pub failed: usize,
    /// Events moved to dead-letter.
    pub dead: usize,
    /// Sink acknowledgements that reported a duplicate.
    pub duplicates: usize,
}

/// One claimed event.
struct Claimed {
    id: i64,
    attempts: i32,
    envelope: Envelope,
}

/// Claims due events: pending, `available_at` reached, not leased (or the
/// lease expired), and no earlier undelivered event of the same key.
/// `$filter` narrows the topics; a literal, so the timers-only claim can use
/// its partial index (migration 0009) instead of walking every pending event.
macro_rules! claim_sql {
    ($filter:literal) => {
        concat!(
            "with c as (
                select o.id from payrail.outbox o
                where o.state = 'pending' and o.available_at <= now()
                  and (o.lease_until is null or o.lease_until < now())
                  and not exists (
                      select 1 from payrail.outbox p
                      where p.key = o.key and p.id < o.id and p.state <> 'delivered')
                  ",
            $filter,
            "
                order by o.available_at, o.id
                limit $1
                for update of o skip locked
            )
            update payrail.outbox o
            set lease_owner = $2,
                lease_until = now() + make_interval(secs => $3),
                attempts = o.attempts + 1,
                last_attempt_at = now()
            from c where o.id = c.id
            returning o.id, o.event_id::text, o.tenant, o.topic, o.key, o.payload, o.attempts,
                      (extract(epoch from o.created_at) * 1000)::bigint, o.traceparent"
        )
    };
}

/// Claims any due event (a relay with sinks).
const CLAIM_SQL: &str = claim_sql!("");

/// Claims due hold timers only (a relay without sinks: the other events
/// wait for a relay that has some).
const CLAIM_TIMERS_SQL: &str = claim_sql!("and o.topic = 'hold.expire'");

/// The relay: owns the sinks, claims and delivers.
pub struct Relay {
    pool: Pool,
    sinks: Vec<Sink>,
    settings: RelaySettings,
    owner: String,
    metrics: Arc<Metrics>,
    /// No sinks: only run timers (`hold.expire`), leave other events
    /// pending for a host that has sinks.
    timers_only: bool,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("owner", &self.owner)
            .field("sinks", &self.sinks)
            .field("settings", &self.settings)
            .finish()
    }
}

impl Relay {
    /// A relay over `pool` delivering to `sinks`. Its lease owner id is
    /// unique per process start.
    pub fn new(
        pool: Pool,
        sinks: Vec<Sink>,
        settings: RelaySettings,
        metrics: Arc<Metrics>,
    ) -> Relay {
        assert!(settings.batch_size > 0 && settings.concurrency > 0);
        let host = std::env::var("HOSTNAME").unwrap_or_default();
        Relay {
            pool,
            timers_only: sinks.is_empty(),
            sinks,
            settings,
            owner: format!("{host}/{}/{}", std::process::id(), uuid::Uuid::new_v4()),
            metrics,
        }
    }

    /// The relay of a configuration (its `[outbox]` and `[[sinks]]`).
    pub fn from_config(pool: Pool, config: &Config, metrics: Arc<Metrics>) -> Result<Relay> {
        let sinks = config
            .sinks
            .iter()
            .map(Sink::new)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::invalid("invalid_config", e))?;
        Ok(Relay::new(
            pool,
            sinks,
            RelaySettings::from_config(&config.outbox),
            metrics,
        ))
    }

    /// This relay's lease owner id.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// One round: claim a batch, deliver it, record the outcome.
    pub async fn round(&self) -> Result<RoundStats> {
        let claimed = self.claim().await?;
        let mut stats = RoundStats {
            claimed: claimed.len(),
            ..RoundStats::default()
        };
        if claimed.is_empty() {
            return Ok(stats);
        }
        let results: Vec<(i64, i32, std::result::Result<usize, String>)> =
            futures::StreamExt::collect(futures::StreamExt::buffer_unordered(
                futures::stream::iter(claimed.into_iter().map(|c| async move {
                    // A hold's expiry timer is internal work, not an event
                    // for sinks: run it here (idempotent) instead.
                    let r = if c.envelope.topic == crate::holds::EXPIRE_TOPIC {
                        crate::holds::fire_timer(
                            &self.pool,
                            &c.envelope.tenant,
                            &c.envelope.payload,
                        )
                        .await
                        .map(|()| 0)
                    } else {
                        let span = tracing::info_span!(
                            "relay_delivery",
                            topic = %c.envelope.topic,
                            event_id = %c.envelope.event_id,
                            attempt = c.attempts,
                        );
                        if let Some(t) = &c.envelope.traceparent {
                            crate::telemetry::continue_from(&span, t);
                        }
                        self.deliver(&c.envelope).instrument(span).await
                    };
                    (c.id, c.attempts, r)
                })),
                self.settings.concurrency,
            ))
            .await;
        let mut ok = Vec::new();
        let mut failed_ids = Vec::new();
        let mut errors = Vec::new();
        let mut delays = Vec::new();
        for (id, attempts, r) in results {
            match r {
                Ok(dups) => {
                    ok.push(id);
                    stats.duplicates += dups;
                }
                Err(e) => {
                    tracing::warn!(outbox_id = id, attempts, error = %e, "outbox delivery failed");
                    failed_ids.push(id);
                    let mut e = e;
                    if e.len() > MAX_ERROR_BYTES {
                        let mut cut = MAX_ERROR_BYTES;
                        while !e.is_char_boundary(cut) {
                            cut -= 1;
                        }
                        e.truncate(cut);
                    }
                    errors.push(e);
                    let jitter = 0.5 + rand::random::<f64>() * 0.5;
                    delays.push(backoff(&self.settings, attempts, jitter).as_secs_f64());
                }
            }
        }
        let client = self.pool.get().await?;
        if !ok.is_empty() {
            // Delivered is delivered, even if our lease ran out meanwhile.
            let n = client
                .execute(
                    "update payrail.outbox set state = 'delivered', delivered_at = now(),
                       lease_owner = null, lease_until = null
                     where id = any($1) and state = 'pending'",
                    &[&ok],
                )
                .await?;
            stats.delivered = n as usize;
        }
        if !failed_ids.is_empty() {
            let rows = client
                .query(
                    "update payrail.outbox o set
                       state = case when o.attempts >= $5 then 'dead' else 'pending' end,
                       available_at = now() + make_interval(secs => f.delay),
                       lease_owner = null, lease_until = null, last_error = f.err
                     from unnest($1::bigint[], $2::text[], $3::float8[]) as f(id, err, delay)
                     where o.id = f.id and o.lease_owner = $4 and o.state = 'pending'
                     returning o.state",
                    &[
                        &failed_ids,
                        &errors,
                        &delays,
                        &self.owner,
                        &self.settings.max_attempts,
                    ],
                )
                .await?;
            stats.failed = failed_ids.len();
            stats.dead = rows
                .iter()
                .filter(|r| r.get::<_, &str>(0) == "dead")
                .count();
        }
        let m = &self.metrics.outbox;
        m.delivered
            .fetch_add(stats.delivered as u64, Ordering::Relaxed);
        m.failed_attempts
            .fetch_add(stats.failed as u64, Ordering::Relaxed);
        m.dead_lettered
            .fetch_add(stats.dead as u64, Ordering::Relaxed);
        m.duplicates
            .fetch_add(stats.duplicates as u64, Ordering::Relaxed);
        Ok(stats)
    }

    async fn claim(&self) -> Result<Vec<Claimed>> {
        let client = self.pool.get().await?;
        let sql = if self.timers_only {
            CLAIM_TIMERS_SQL
        } else {
            CLAIM_SQL
        };
        let stmt = client.prepare_cached(sql).await?;
        let rows = client
            .query(
                &stmt,
                &[
                    &self.settings.batch_size,
                    &self.owner,
                    &self.settings.lease.as_secs_f64(),
                ],
            )
            .await?;
        let mut out: Vec<Claimed> = rows
            .iter()
            .map(|r| Claimed {
                id: r.get(0),
                attempts: r.get(6),
                envelope: Envelope {
                    event_id: r.get(1),
                    tenant: r.get(2),
                    topic: r.get(3),
                    key: r.get(4),
                    payload: r.get(5),
                    sequence: r.get(0),
                    created_at_ms: r.get(7),
                    // only a well-formed one leaves: the column is ours,
                    // but an envelope is a consumer's input
                    traceparent: r
                        .get::<_, Option<String>>(8)
                        .filter(|t| crate::telemetry::is_traceparent(t)),
                },
            })
            .collect();
        out.sort_by_key(|c| c.id);
        Ok(out)
    }

    /// Delivers to every matching sink; Ok(duplicates reported).
    async fn deliver(&self, event: &Envelope) -> std::result::Result<usize, String> {
        let body = serde_json::to_vec(event).expect("envelope serializes");
        let mut dups = 0;
        let mut errors = Vec::new();
        let results = futures::future::join_all(
            self.sinks
                .iter()
                .filter(|s| s.matches(&event.topic))
                .map(|s| s.deliver(event, &body)),
        )
        .await;
        for r in results {
            match r {
                Ok(Delivered::Ok) => {}
                Ok(Delivered::Duplicate) => dups += 1,
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(dups)
        } else {
            Err(errors.join("; "))
        }
    }

    /// Measures the lag gauges (due undelivered events, the oldest one's
    /// age, dead letters).
    pub async fn measure(&self) -> Result<()> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                "select (select count(*) from payrail.outbox
                          where state = 'pending' and available_at <= now()),
                        (select coalesce((extract(epoch from now() - min(created_at)) * 1000)::bigint, 0)
                           from payrail.outbox where state = 'pending' and available_at <= now()),
                        (select count(*) from payrail.outbox where state = 'dead')",
                &[],
            )
            .await?;
        let m = &self.metrics.outbox;
        m.pending
            .store(row.get::<_, i64>(0).max(0) as u64, Ordering::Relaxed);
        m.lag_ms
            .store(row.get::<_, i64>(1).max(0) as u64, Ordering::Relaxed);
        m.dead
            .store(row.get::<_, i64>(2).max(0) as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Runs rounds until `stop` turns true: back to back while there is
    /// work, every `poll_interval` otherwise, backing off on database
    /// errors. A round in progress finishes (bounded by the sink timeouts)
    /// before it returns; a round cut off by a crash is recovered by the
    /// lease expiring.
    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        tracing::info!(owner = %self.owner, sinks = self.sinks.len(), "outbox relay started");
        let mut next_gauge = Instant::now();
        let mut db_errors: u32 = 0;
        loop {
            if *stop.borrow() {
                break;
            }
            let pause = match self.round().await {
                Ok(s) => {
                    db_errors = 0;
                    if s.claimed > 0 {
                        tracing::debug!(?s, "outbox round");
                    }
                    if s.claimed as i64 >= self.settings.batch_size {
                        Duration::ZERO
                    } else {
                        self.settings.poll_interval
                    }
                }
                Err(e) => {
                    db_errors = db_errors.saturating_add(1);
                    tracing::warn!(error = %e, "outbox relay round failed; will retry");
                    (self.settings.poll_interval * db_errors.min(20)).min(MAX_ERROR_PAUSE)
                }
            };
            if Instant::now() >= next_gauge {
                let started = Instant::now();
                if let Err(e) = self.measure().await {
                    tracing::debug!(error = %e, "outbox gauges not measured");
                }
                next_gauge = Instant::now() + next_gauge_after(started.elapsed());
            }
            if !pause.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stop.changed() => {}
                }
            }
        }
        tracing::info!(owner = %self.owner, "outbox relay stopped");
    }
}

/// One dead-lettered event, as `payrail outbox dead-letters` prints it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct DeadLetter {
    /// Outbox row id (what `payrail outbox retry` takes).
    pub id: i64,
    /// The event's stable id.
    pub event_id: String,
    /// Its topic.
    pub topic: String,
    /// Its ordering key.
    pub key: String,
    /// Deliveries tried.
    pub attempts: i32,
    /// The last failure.
    pub last_error: Option<String>,
    /// When the event was written (RFC 3339, UTC).
    pub created_at: String,
}

const TS: &str = "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'";

/// Dead-lettered events of `tenant` (`None`: every tenant), newest first,
/// at most `limit` (capped at [`MAX_LIST`]).
pub async fn dead_letters(
    client: &impl GenericClient,
    tenant: Option<&str>,
    limit: i64,
) -> Result<Vec<DeadLetter>> {
    dead_letters_page(client, tenant, None, ("<", "desc"), limit).await
}

/// A page of dead letters: ids `cmp` `position`, in `dir` order (see
/// `api::pagination::Seek::sql`).
pub async fn dead_letters_page(
    client: &impl GenericClient,
    tenant: Option<&str>,
    position: Option<i64>,
    (cmp, dir): (&str, &str),
    limit: i64,
) -> Result<Vec<DeadLetter>> {
    debug_assert!(matches!(cmp, "<" | ">") && matches!(dir, "asc" | "desc"));
    let rows = client
        .query(
            &format!(
                "select id, event_id::text, topic, key, attempts, last_error,
                        to_char(created_at at time zone 'UTC', {TS})
                 from payrail.outbox
                 where state = 'dead' and ($1::text is null or tenant = $1)
                   and ($2::bigint is null or id {cmp} $2)
                 order by id {dir} limit $3"
            ),
            &[&tenant, &position, &limit.clamp(1, MAX_LIST + 1)],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| DeadLetter {
            id: r.get(0),
            event_id: r.get(1),
            topic: r.get(2),
            key: r.get(3),
            attempts: r.get(4),
            last_error: r.get(5),
            created_at: r.get(6),
        })
        .collect())
}

/// Requeues dead-lettered events of `tenant` (`None`: every tenant):
/// `ids`, or all with `None`: back to pending, attempts reset, due now;
/// the last error is kept until the next attempt. Returns how many were
/// requeued (an id that is not a dead letter of the tenant is skipped).
pub async fn retry_dead(
    client: &impl GenericClient,
    tenant: Option<&str>,
    ids: Option<&[i64]>,
) -> Result<u64> {
    Ok(client
        .execute(
            "update payrail.outbox set state = 'pending', attempts = 0,
               available_at = now(), lease_owner = null, lease_until = null
             where state = 'dead' and ($1::text is null or tenant = $1)
               and ($2::bigint[] is null or id = any($2))",
            &[&tenant, &ids],
        )
        .await?)
}

/// Pending events of one topic.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct PendingTopic {
    /// The topic (each sink takes the topics it matches).
    pub topic: String,
    /// Events not yet delivered (hold timers count until they fire).
    pub count: i64,
    /// The oldest of them (RFC 3339, UTC).
    pub oldest_created_at: String,
}

/// The outbox of a tenant at a glance.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct OutboxSummary {
    /// Pending events by topic.
    pub pending: Vec<PendingTopic>,
    /// Dead-lettered events.
    pub dead: i64,
}

/// Pending counts by topic and the dead-letter count of `tenant`. Cost:
/// reads the pending and dead partial indexes, not the delivered history.
pub async fn summary(client: &impl GenericClient, tenant: &str) -> Result<OutboxSummary> {
    let rows = client
        .query(
            &format!(
                "select topic, count(*), to_char(min(created_at) at time zone 'UTC', {TS})
                 from payrail.outbox where state = 'pending' and tenant = $1
                 group by topic order by topic limit 1000"
            ),
            &[&tenant],
        )
        .await?;
    let dead: i64 = client
        .query_one(
            "select count(*) from payrail.outbox where state = 'dead' and tenant = $1",
            &[&tenant],
        )
        .await?
        .get(0);
    Ok(OutboxSummary {
        pending: rows
            .iter()
            .map(|r| PendingTopic {
                topic: r.get(0),
                count: r.get(1),
                oldest_created_at: r.get(2),
            })
            .collect(),
        dead,
    })
}

/// One event as the console shows it under its payment.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct EventView {
    /// Outbox row id.
    pub id: i64,
    /// The event's stable id.
    pub event_id: String,
    /// Its topic.
    pub topic: String,
    /// `pending`, `delivered` or `dead`.
    pub state: String,
    /// Deliveries tried.
    pub attempts: i32,
    /// When it was written (RFC 3339, UTC).
    pub created_at: String,
    /// When it was delivered.
    pub delivered_at: Option<String>,
    /// The last failure.
    pub last_error: Option<String>,
    /// The payload.
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
}

/// The events of payment `payment` of `tenant`: those keyed by it and
/// written by its transactions, which committed at `at` (its creation
/// and, for a hold, its resolution). Found through the outbox's time
/// index, not a scan of its history.
pub async fn events_of_payment(
    client: &impl GenericClient,
    tenant: &str,
    payment: uuid::Uuid,
    at: &[time::OffsetDateTime],
) -> Result<Vec<EventView>> {
    let rows = client
        .query(
            &format!(
                "select id, event_id::text, topic, state, attempts,
                        to_char(created_at at time zone 'UTC', {TS}),
                        to_char(delivered_at at time zone 'UTC', {TS}),
                        last_error, payload::jsonb
                 from payrail.outbox
                 where tenant = $1 and key = $2 and created_at = any($3)
                 order by id limit 100"
            ),
            &[&tenant, &payment.to_string(), &at],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| EventView {
            id: r.get(0),
            event_id: r.get(1),
            topic: r.get(2),
            state: r.get(3),
            attempts: r.get(4),
            created_at: r.get(5),
            delivered_at: r.get(6),
            last_error: r.get(7),
            payload: r.get(8),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn gauges_wait_in_proportion_to_their_cost() {
        assert_eq!(next_gauge_after(Duration::from_millis(1)), GAUGE_INTERVAL);
        assert_eq!(
            next_gauge_after(Duration::from_millis(73)),
            Duration::from_millis(7_300)
        );
        assert_eq!(next_gauge_after(Duration::MAX), MAX_GAUGE_INTERVAL);
    }

    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_bounded_jitter() {
        let s = RelaySettings {
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            ..RelaySettings::default()
        };
        assert_eq!(backoff(&s, 1, 1.0), Duration::from_millis(100));
        assert_eq!(backoff(&s, 2, 1.0), Duration::from_millis(200));
        assert_eq!(backoff(&s, 5, 1.0), Duration::from_millis(1600));
        assert_eq!(backoff(&s, 30, 1.0), Duration::from_secs(10));
        assert_eq!(backoff(&s, 1000, 1.0), Duration::from_secs(10));
        assert_eq!(backoff(&s, 1, 0.0), Duration::from_millis(50));
        assert_eq!(backoff(&s, 3, 0.5), Duration::from_millis(200));
    }
}
