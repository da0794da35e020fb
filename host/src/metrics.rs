//! Prometheus metrics, on the ecosystem's client (`prometheus-client`):
//! each series an atomic counter or histogram, found under a shared read
//! lock (a write lock only to add a series), rendered as OpenMetrics text.
//! Label sets are bounded: route templates, status and error codes, plugin
//! digests, each family capped at [`MAX_SERIES`].

use crate::processor::{CallStat, ProcessorCounts};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Most distinct label sets per metric; further ones are folded into
/// `other` so a misbehaving client cannot grow memory without bound.
pub const MAX_SERIES: usize = 2000;

/// The content type of `/metrics`.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Plugin calls take microseconds (the 1 ms floor of `LATENCY_BUCKETS`
/// would put every call in one bucket) and at most the 5 s timeout.
const PLUGIN_BUCKETS: &[f64] = &[
    5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2, 0.1, 1.0, 5.0,
];
const FUEL_BUCKETS: &[f64] = &[
    1e3, 1e4, 5e4, 1e5, 2.5e5, 5e5, 1e6, 2.5e6, 5e6, 1e7, 2.5e7, 1e8,
];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS.iter().copied())
}

fn plugin_histogram() -> Histogram {
    Histogram::new(PLUGIN_BUCKETS.iter().copied())
}

fn fuel_histogram() -> Histogram {
    Histogram::new(FUEL_BUCKETS.iter().copied())
}

/// A label set with an overflow series (every value `other`).
trait Overflow: Clone + std::hash::Hash + Eq {
    fn other() -> Self;
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DigestLabel {
    digest: String,
}

impl Overflow for RequestLabels {
    fn other() -> Self {
        let o = || "other".to_string();
        RequestLabels {
            method: o(),
            route: o(),
            status: o(),
        }
    }
}

impl Overflow for RouteLabels {
    fn other() -> Self {
        RouteLabels {
            method: "other".into(),
            route: "other".into(),
        }
    }
}

impl Overflow for StatusLabel {
    fn other() -> Self {
        StatusLabel {
            status: "other".into(),
        }
    }
}

impl Overflow for CodeLabel {
    fn other() -> Self {
        CodeLabel {
            code: "other".into(),
        }
    }
}

impl Overflow for DigestLabel {
    fn other() -> Self {
        DigestLabel {
            digest: "other".into(),
        }
    }
}

/// A family and how many series it holds, capped at [`MAX_SERIES`].
#[derive(Debug)]
struct Capped<L, M> {
    family: Family<L, M, fn() -> M>,
    /// Series added (an upper bound: two threads adding the same new
    /// series at once both count it).
    series: AtomicUsize,
}

impl<L: Overflow, M> Capped<L, M> {
    fn new(constructor: fn() -> M) -> Self {
        Capped {
            family: Family::new_with_constructor(constructor),
            series: AtomicUsize::new(0),
        }
    }

    /// Runs `f` on the series of `labels` (found under a shared read
    /// lock), adding it if new; past [`MAX_SERIES`], on the `other` series.
    fn with(&self, labels: L, f: impl FnOnce(&M)) {
        if let Some(m) = self.family.get(&labels) {
            return f(&m);
        }
        let labels = if self.series.fetch_add(1, Ordering::Relaxed) >= MAX_SERIES {
            L::other()
        } else {
            labels
        };
        f(&self.family.get_or_create(&labels));
    }
}

/// The host's metrics.
#[derive(Debug)]
pub struct Metrics {
    requests: Capped<RequestLabels, Counter>,
    latency: Capped<RouteLabels, Histogram>,
    payments: Capped<StatusLabel, Counter>,
    payment_errors: Capped<CodeLabel, Counter>,
    declines: Capped<CodeLabel, Counter>,
    plugin_fuel: Capped<DigestLabel, Histogram>,
    plugin_duration: Capped<DigestLabel, Histogram>,
    plugin_cpu: Capped<DigestLabel, Histogram>,
    lock_wait: Histogram,
    replays: AtomicU64,
    keys_reaped: AtomicU64,
    overloaded: AtomicU64,
    /// The outbox relay's counters and gauges.
    pub outbox: OutboxMetrics,
    /// Gauge: holds past their expiry still authorized (stuck expiry
    /// timers), measured when metrics are scraped (`holds::count_overdue`).
    pub holds_overdue: AtomicU64,
    /// What the front door refused (docs/tenancy.md).
    pub tenancy: TenancyMetrics,
}

/// What the front door counts: refusals that protect the other tenants,
/// and the database lookups API keys caused.
#[derive(Debug, Default)]
pub struct TenancyMetrics {
    /// Requests refused 429 `rate_limited` (an API key's token bucket).
    pub rate_limited: AtomicU64,
    /// Requests refused 429 `tenant_busy` (a tenant's in-flight bound).
    pub tenant_busy: AtomicU64,
    /// API key lookups that went to the database (set from the key cache
    /// when metrics are rendered).
    pub key_lookups: AtomicU64,
    /// Requests refused 429 `key_lookups_throttled` (unseen keys beyond
    /// the lookup budget; set from the key cache).
    pub key_lookups_throttled: AtomicU64,
    /// Connections closed to admit new ones (at `server.max_connections`).
    pub connections_evicted: AtomicU64,
    /// Connections refused at `server.max_connections` (every one busy).
    pub connections_refused: AtomicU64,
}

/// What the outbox relay reports.
#[derive(Debug, Default)]
pub struct OutboxMetrics {
    /// Events acknowledged by every matching sink.
    pub delivered: AtomicU64,
    /// Delivery attempts that failed (each is retried or dead-lettered).
    pub failed_attempts: AtomicU64,
    /// Events moved to dead-letter.
    pub dead_lettered: AtomicU64,
    /// Events NATS reported as duplicates (already had that message id).
    pub duplicates: AtomicU64,
    /// Gauge: events due and not yet delivered, at the last measurement.
    pub pending: AtomicU64,
    /// Gauge: age in milliseconds of the oldest due, undelivered event.
    pub lag_ms: AtomicU64,
    /// Gauge: events in dead-letter.
    pub dead: AtomicU64,
}

/// A snapshot of the connection pool, read when metrics are rendered.
#[derive(Debug, Clone, Copy)]
pub struct PoolGauges {
    /// Connections open.
    pub size: usize,
    /// Open connections idle in the pool.
    pub available: usize,
    /// Pool capacity.
    pub max_size: usize,
    /// Requests waiting for a connection.
    pub waiting: usize,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Capped::new(Counter::default),
            latency: Capped::new(latency_histogram),
            payments: Capped::new(Counter::default),
            payment_errors: Capped::new(Counter::default),
            declines: Capped::new(Counter::default),
            plugin_fuel: Capped::new(fuel_histogram),
            plugin_duration: Capped::new(plugin_histogram),
            plugin_cpu: Capped::new(plugin_histogram),
            lock_wait: latency_histogram(),
            replays: AtomicU64::default(),
            keys_reaped: AtomicU64::default(),
            overloaded: AtomicU64::default(),
            outbox: OutboxMetrics::default(),
            holds_overdue: AtomicU64::default(),
            tenancy: TenancyMetrics::default(),
        }
    }
}

impl Metrics {
    /// Records one answered request.
    /// `status` is the numeric code (`StatusCode::as_str`).
    pub fn request(&self, method: &str, route: &str, status: &str, seconds: f64) {
        let labels = RequestLabels {
            method: method.into(),
            route: route.into(),
            status: status.into(),
        };
        self.requests.with(labels, |c| {
            c.inc();
        });
        let labels = RouteLabels {
            method: method.into(),
            route: route.into(),
        };
        self.latency.with(labels, |h| h.observe(seconds));
    }

    /// Records a payment's outcome (`approved`, `declined`) and, for a
    /// decline, its code (plugins choose codes: the family is capped like
    /// every other).
    pub fn payment(&self, status: &str, decline: Option<&str>, replayed: bool) {
        if replayed {
            self.replays.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let labels = StatusLabel {
            status: status.into(),
        };
        self.payments.with(labels, |c| {
            c.inc();
        });
        if let Some(code) = decline {
            let labels = CodeLabel { code: code.into() };
            self.declines.with(labels, |c| {
                c.inc();
            });
        }
    }

    /// Records a payment that failed with error `code`.
    pub fn payment_error(&self, code: &str) {
        let labels = CodeLabel { code: code.into() };
        self.payment_errors.with(labels, |c| {
            c.inc();
        });
    }

    /// Records one plugin call: fuel, wall-clock and CPU time, by digest.
    pub fn plugin_call(&self, call: &CallStat) {
        let digest = call.digest.get(..12).unwrap_or(&call.digest).to_string();
        let labels = DigestLabel { digest };
        self.plugin_fuel
            .with(labels.clone(), |h| h.observe(call.fuel_used as f64));
        if let Some(cpu) = call.cpu {
            self.plugin_cpu
                .with(labels.clone(), |h| h.observe(cpu.as_secs_f64()));
        }
        self.plugin_duration
            .with(labels, |h| h.observe(call.duration.as_secs_f64()));
    }

    /// Records the time a payment spent claiming its key and taking its
    /// account locks.
    pub fn lock_wait(&self, seconds: f64) {
        self.lock_wait.observe(seconds);
    }

    /// Records expired idempotency keys deleted by the reaper.
    pub fn keys_reaped(&self, n: u64) {
        self.keys_reaped.fetch_add(n, Ordering::Relaxed);
    }

    /// Records a request refused because too many were in flight.
    pub fn overloaded(&self) {
        self.overloaded.fetch_add(1, Ordering::Relaxed);
    }

    /// Every metric as OpenMetrics text ([`CONTENT_TYPE`]).
    /// `processor` is [`crate::processor::Processor::counts`]. A registry
    /// per scrape: the families are shared handles, the scalars are read
    /// once, so nothing here blocks a payment.
    pub fn render(&self, pool: PoolGauges, in_flight: usize, processor: ProcessorCounts) -> String {
        let mut r = Registry::default();
        self.register_families(&mut r);
        let counter = |r: &mut Registry, name: &str, help: &str, v: u64| {
            // OpenMetrics: a counter's samples are its name + `_total`
            let name = name
                .strip_suffix("_total")
                .expect("counter names end in _total");
            r.register(name, help, ConstCounter::new(v));
        };
        let gauge = |r: &mut Registry, name: &str, help: &str, v: u64| {
            r.register(
                name,
                help,
                ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX)),
            );
        };
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(
            &mut r,
            "payrail_payment_replays_total",
            "payment requests answered from the stored response",
            load(&self.replays),
        );
        counter(
            &mut r,
            "payrail_idempotency_keys_reaped_total",
            "expired idempotency keys deleted",
            load(&self.keys_reaped),
        );
        counter(
            &mut r,
            "payrail_http_overloaded_total",
            "requests refused with 503 because too many were in flight",
            load(&self.overloaded),
        );
        let o = &self.outbox;
        counter(
            &mut r,
            "payrail_outbox_delivered_total",
            "outbox events delivered to every matching sink",
            load(&o.delivered),
        );
        counter(
            &mut r,
            "payrail_outbox_failed_attempts_total",
            "outbox delivery attempts that failed",
            load(&o.failed_attempts),
        );
        counter(
            &mut r,
            "payrail_outbox_dead_lettered_total",
            "outbox events moved to dead-letter",
            load(&o.dead_lettered),
        );
        counter(
            &mut r,
            "payrail_outbox_nats_duplicates_total",
            "outbox events NATS already had (redeliveries)",
            load(&o.duplicates),
        );
        gauge(
            &mut r,
            "payrail_outbox_pending",
            "outbox events due and not yet delivered",
            load(&o.pending),
        );
        gauge(
            &mut r,
            "payrail_outbox_lag_seconds",
            "age of the oldest due, undelivered outbox event (whole seconds)",
            load(&o.lag_ms) / 1000,
        );
        gauge(
            &mut r,
            "payrail_outbox_dead",
            "outbox events in dead-letter",
            load(&o.dead),
        );
        counter(
            &mut r,
            "payrail_transaction_retries_total",
            "payment, capture and void transactions rolled back by a deadlock or serialization failure and run again",
            processor.transaction_retries,
        );
        counter(
            &mut r,
            "payrail_batch_deferrals_total",
            "payments a batch put back in the queue because another transaction held one of their accounts",
            processor.batch_deferrals,
        );
        gauge(
            &mut r,
            "payrail_holds_overdue",
            "holds past their expiry still authorized: their expiry timer is late, dead-lettered or never ran (capped at 10000; `payrail holds expire-due` resolves them)",
            load(&self.holds_overdue),
        );
        counter(
            &mut r,
            "payrail_payments_skipped_total",
            "payments dropped before they ran because their caller had gone (timeout, disconnect)",
            processor.payments_skipped,
        );
        gauge(
            &mut r,
            "payrail_commits_unconfirmed",
            "commits waiting past processor.commit_wait_ms for the database (a primary waiting for a synchronous standby): while above 0 no new payment is taken and /readyz answers 503",
            processor.commits_unconfirmed,
        );
        counter(
            &mut r,
            "payrail_commits_stalled_total",
            "commits that went past processor.commit_wait_ms; their callers were answered 503 commit_unconfirmed",
            processor.commits_stalled,
        );
        let t = &self.tenancy;
        counter(
            &mut r,
            "payrail_rate_limited_total",
            "requests refused 429 rate_limited by their API key's token bucket",
            load(&t.rate_limited),
        );
        counter(
            &mut r,
            "payrail_tenant_busy_total",
            "requests refused 429 tenant_busy at their tenant's in-flight bound",
            load(&t.tenant_busy),
        );
        counter(
            &mut r,
            "payrail_api_key_lookups_total",
            "API key lookups that went to the database",
            load(&t.key_lookups),
        );
        counter(
            &mut r,
            "payrail_api_key_lookups_throttled_total",
            "requests with a key this host had not seen refused 429 because the lookup budget was spent",
            load(&t.key_lookups_throttled),
        );
        counter(
            &mut r,
            "payrail_http_connections_evicted_total",
            "idle or header-dribbling connections closed to admit new ones",
            load(&t.connections_evicted),
        );
        counter(
            &mut r,
            "payrail_http_connections_refused_total",
            "connections refused because every connection slot was busy",
            load(&t.connections_refused),
        );
        gauge(
            &mut r,
            "payrail_http_in_flight",
            "requests being handled",
            in_flight as u64,
        );
        gauge(
            &mut r,
            "payrail_db_pool_size",
            "open connections",
            pool.size as u64,
        );
        gauge(
            &mut r,
            "payrail_db_pool_available",
            "idle open connections",
            pool.available as u64,
        );
        gauge(
            &mut r,
            "payrail_db_pool_max_size",
            "pool capacity",
            pool.max_size as u64,
        );
        gauge(
            &mut r,
            "payrail_db_pool_waiting",
            "requests waiting for a connection",
            pool.waiting as u64,
        );
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r)
            .expect("writing to a String does not fail");
        out
    }

    /// The labelled families and the lock wait histogram, as shared
    /// handles.
    fn register_families(&self, r: &mut Registry) {
        r.register(
            "payrail_http_requests",
            "HTTP requests answered",
            self.requests.family.clone(),
        );
        r.register(
            "payrail_http_request_duration_seconds",
            "HTTP request latency",
            self.latency.family.clone(),
        );
        r.register(
            "payrail_payments",
            "payments processed (replays excluded), by status",
            self.payments.family.clone(),
        );
        r.register(
            "payrail_declines",
            "payments declined, by decline code",
            self.declines.family.clone(),
        );
        r.register(
            "payrail_payment_errors",
            "payment requests that failed with nothing written, by code",
            self.payment_errors.family.clone(),
        );
        r.register(
            "payrail_plugin_fuel_used",
            "fuel (instructions) used per plugin call, by digest prefix",
            self.plugin_fuel.family.clone(),
        );
        r.register(
            "payrail_plugin_call_duration_seconds",
            "wall-clock time per plugin call, by digest prefix",
            self.plugin_duration.family.clone(),
        );
        r.register("payrail_plugin_call_cpu_seconds", "CPU time per plugin call (the calling thread's), by digest prefix; one call in 16 is measured", self.plugin_cpu.family.clone());
        r.register(
            "payrail_lock_wait_seconds",
            "time a payment spent claiming its key and taking its account locks",
            self.lock_wait.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::default();
        m.request("GET", "/v1/accounts/{id}", "200", 0.003);
        m.request("GET", "/v1/accounts/{id}", "200", 0.2);
        m.payment("approved", None, false);
        m.payment("approved", None, true);
        m.payment("declined", Some("amount_too_large"), false);
        m.plugin_call(&CallStat {
            plugin: "limits".into(),
            digest: "ab".repeat(32),
            fuel_used: 5000,
            duration: std::time::Duration::from_micros(30),
            cpu: Some(std::time::Duration::from_micros(12)),
        });
        let text = m.render(
            PoolGauges {
                size: 1,
                available: 1,
                max_size: 4,
                waiting: 0,
            },
            0,
            ProcessorCounts {
                transaction_retries: 3,
                batch_deferrals: 5,
                payments_skipped: 7,
                commits_unconfirmed: 1,
                commits_stalled: 2,
            },
        );
        assert!(text.contains(
            "payrail_http_requests_total{method=\"GET\",route=\"/v1/accounts/{id}\",status=\"200\"} 2"
        ));
        assert!(text.contains("payrail_http_request_duration_seconds_bucket{le=\"0.005\",method=\"GET\",route=\"/v1/accounts/{id}\"} 1"), "{text}");
        assert!(text.contains("payrail_payments_total{status=\"approved\"} 1"));
        assert!(
            text.contains("payrail_declines_total{code=\"amount_too_large\"} 1"),
            "{text}"
        );
        assert!(text.contains("payrail_payment_replays_total 1"));
        assert!(text.contains("payrail_transaction_retries_total 3"));
        assert!(text.contains("payrail_batch_deferrals_total 5"));
        assert!(text.contains("payrail_payments_skipped_total 7"));
        assert!(text.contains("payrail_commits_unconfirmed 1"));
        assert!(text.contains("payrail_commits_stalled_total 2"));
        assert!(text.contains("payrail_plugin_fuel_used_count{digest=\"abababababab\"} 1"));
        assert!(text.contains(
            "payrail_plugin_call_duration_seconds_bucket{le=\"0.00005\",digest=\"abababababab\"} 1"
        ));
        assert!(text.contains(
            "payrail_plugin_call_cpu_seconds_bucket{le=\"0.00002\",digest=\"abababababab\"} 1"
        ));
        assert!(text.contains("payrail_db_pool_max_size 4"), "{text}");
    }

    #[test]
    fn series_are_capped() {
        let m = Metrics::default();
        for i in 0..MAX_SERIES + 10 {
            m.payment_error(&format!("code{i}"));
        }
        assert!(m.payment_errors.series.load(Ordering::Relaxed) >= MAX_SERIES);
        assert!(
            m.render(
                PoolGauges {
                    size: 0,
                    available: 0,
                    max_size: 0,
                    waiting: 0
                },
                0,
                ProcessorCounts::default()
            )
            .contains("payrail_payment_errors_total{code=\"other\"} 10")
        );
    }
}
