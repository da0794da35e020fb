//! Prometheus metrics in the text exposition format. A small registry of
//! its own: a handful of counters and histograms with bounded label sets
//! (route templates, status codes, error codes, plugin digests capped at
//! [`MAX_SERIES`]).

use crate::processor::{CallStat, ProcessorCounts};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Most distinct label sets per metric; further ones are folded into
/// `other` so a misbehaving client cannot grow memory without bound.
pub const MAX_SERIES: usize = 2000;

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

#[derive(Debug, Clone)]
struct Histogram {
    buckets: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(buckets: &'static [f64]) -> Self {
        Histogram {
            buckets,
            counts: vec![0; buckets.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        for (i, b) in self.buckets.iter().enumerate() {
            if v <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }
}

/// Label values joined by [`SEP`], rendered in order with the metric's
/// label names. One string, so a series is found by a `&str` built in a
/// reused buffer: recording a known series allocates nothing.
type Labels = Box<str>;

/// Separates label values in a [`Labels`] key. Label values are route
/// templates, methods, status and error codes, payment statuses and digest
/// prefixes: none holds a control character.
const SEP: char = '\u{1f}';

thread_local! {
    /// The key of the series being looked up (see [`Family::get`]).
    static KEY: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

#[derive(Debug)]
struct Family<T> {
    series: BTreeMap<Labels, T>,
}

impl<T> Default for Family<T> {
    fn default() -> Self {
        Family {
            series: BTreeMap::new(),
        }
    }
}

impl<T> Family<T> {
    /// The series of label `values`, created by `new` if missing (folded
    /// into `other` past [`MAX_SERIES`]).
    fn get(&mut self, values: &[&str], new: impl FnOnce() -> T) -> &mut T {
        let known = KEY.with_borrow_mut(|key| {
            key.clear();
            for (i, v) in values.iter().enumerate() {
                debug_assert!(!v.contains(SEP), "label value {v:?} holds the separator");
                if i > 0 {
                    key.push(SEP);
                }
                key.push_str(v);
            }
            self.series.contains_key(key.as_str())
        });
        if known {
            return KEY
                .with_borrow(|key| self.series.get_mut(key.as_str()))
                .expect("the series was just found");
        }
        let key: Labels = if self.series.len() >= MAX_SERIES {
            vec!["other"; values.len()].join(&SEP.to_string()).into()
        } else {
            KEY.with_borrow(|key| key.as_str().into())
        };
        self.series.entry(key).or_insert_with(new)
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn label_text(names: &[&str], values: &str, extra: Option<(&str, String)>) -> String {
    let values = values.split(SEP);
    let mut parts: Vec<String> = names
        .iter()
        .zip(values)
        .map(|(n, v)| format!("{n}=\"{}\"", escape(v)))
        .collect();
    if let Some((n, v)) = extra {
        parts.push(format!("{n}=\"{v}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

/// The host's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<Family<u64>>,
    latency: Mutex<Family<Histogram>>,
    payments: Mutex<Family<u64>>,
    payment_errors: Mutex<Family<u64>>,
    plugin_fuel: Mutex<Family<Histogram>>,
    plugin_duration: Mutex<Family<Histogram>>,
    plugin_cpu: Mutex<Family<Histogram>>,
    lock_wait: Mutex<Family<Histogram>>,
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

impl Metrics {
    /// Records one answered request.
    /// `status` is the numeric code (`StatusCode::as_str`).
    pub fn request(&self, method: &str, route: &str, status: &str, seconds: f64) {
        *self
            .requests
            .lock()
            .expect("metrics lock")
            .get(&[method, route, status], || 0) += 1;
        self.latency
            .lock()
            .expect("metrics lock")
            .get(&[method, route], || Histogram::new(LATENCY_BUCKETS))
            .observe(seconds);
    }

    /// Records a payment's outcome (`approved`, `declined`).
    pub fn payment(&self, status: &str, replayed: bool) {
        if replayed {
            self.replays.fetch_add(1, Ordering::Relaxed);
        } else {
            *self
                .payments
                .lock()
                .expect("metrics lock")
                .get(&[status], || 0) += 1;
        }
    }

    /// Records a payment that failed with error `code`.
    pub fn payment_error(&self, code: &str) {
        *self
            .payment_errors
            .lock()
            .expect("metrics lock")
            .get(&[code], || 0) += 1;
    }

    /// Records one plugin call: fuel, wall-clock and CPU time, by digest.
    pub fn plugin_call(&self, call: &CallStat) {
        let d = call.digest.get(..12).unwrap_or(&call.digest);
        self.plugin_fuel
            .lock()
            .expect("metrics lock")
            .get(&[d], || Histogram::new(FUEL_BUCKETS))
            .observe(call.fuel_used as f64);
        self.plugin_duration
            .lock()
            .expect("metrics lock")
            .get(&[d], || Histogram::new(PLUGIN_BUCKETS))
            .observe(call.duration.as_secs_f64());
        if let Some(cpu) = call.cpu {
            self.plugin_cpu
                .lock()
                .expect("metrics lock")
                .get(&[d], || Histogram::new(PLUGIN_BUCKETS))
                .observe(cpu.as_secs_f64());
        }
    }

    /// Records the time a payment spent claiming its key and taking its
    /// account locks.
    pub fn lock_wait(&self, seconds: f64) {
        self.lock_wait
            .lock()
            .expect("metrics lock")
            .get(&[], || Histogram::new(LATENCY_BUCKETS))
            .observe(seconds);
    }

    /// Records expired idempotency keys deleted by the reaper.
    pub fn keys_reaped(&self, n: u64) {
        self.keys_reaped.fetch_add(n, Ordering::Relaxed);
    }

    /// Records a request refused because too many were in flight.
    pub fn overloaded(&self) {
        self.overloaded.fetch_add(1, Ordering::Relaxed);
    }

    /// The text exposition of every metric.
    /// `processor` is [`crate::processor::Processor::counts`].
    pub fn render(&self, pool: PoolGauges, in_flight: usize, processor: ProcessorCounts) -> String {
        let mut out = String::new();
        counter_family(
            &mut out,
            "payrail_http_requests_total",
            "HTTP requests answered",
            &["method", "route", "status"],
            &self.requests.lock().expect("metrics lock"),
        );
        histogram_family(
            &mut out,
            "payrail_http_request_duration_seconds",
            "HTTP request latency",
            &["method", "route"],
            &self.latency.lock().expect("metrics lock"),
        );
        counter_family(
            &mut out,
            "payrail_payments_total",
            "payments processed (replays excluded), by status",
            &["status"],
            &self.payments.lock().expect("metrics lock"),
        );
        counter_family(
            &mut out,
            "payrail_payment_errors_total",
            "payment requests that failed with nothing written, by code",
            &["code"],
            &self.payment_errors.lock().expect("metrics lock"),
        );
        simple(
            &mut out,
            "payrail_payment_replays_total",
            "counter",
            "payment requests answered from the stored response",
            self.replays.load(Ordering::Relaxed),
        );
        histogram_family(
            &mut out,
            "payrail_plugin_fuel_used",
            "fuel (instructions) used per plugin call, by digest prefix",
            &["digest"],
            &self.plugin_fuel.lock().expect("metrics lock"),
        );
        histogram_family(
            &mut out,
            "payrail_plugin_call_duration_seconds",
            "wall-clock time per plugin call, by digest prefix",
            &["digest"],
            &self.plugin_duration.lock().expect("metrics lock"),
        );
        histogram_family(
            &mut out,
            "payrail_plugin_call_cpu_seconds",
            "CPU time per plugin call (the calling thread's), by digest prefix; one call in 16 is measured",
            &["digest"],
            &self.plugin_cpu.lock().expect("metrics lock"),
        );
        histogram_family(
            &mut out,
            "payrail_lock_wait_seconds",
            "time a payment spent claiming its key and taking its account locks",
            &[],
            &self.lock_wait.lock().expect("metrics lock"),
        );
        simple(
            &mut out,
            "payrail_idempotency_keys_reaped_total",
            "counter",
            "expired idempotency keys deleted",
            self.keys_reaped.load(Ordering::Relaxed),
        );
        simple(
            &mut out,
            "payrail_http_overloaded_total",
            "counter",
            "requests refused with 503 because too many were in flight",
            self.overloaded.load(Ordering::Relaxed),
        );
        let o = &self.outbox;
        for (name, kind, help, v) in [
            (
                "payrail_outbox_delivered_total",
                "counter",
                "outbox events delivered to every matching sink",
                &o.delivered,
            ),
            (
                "payrail_outbox_failed_attempts_total",
                "counter",
                "outbox delivery attempts that failed",
                &o.failed_attempts,
            ),
            (
                "payrail_outbox_dead_lettered_total",
                "counter",
                "outbox events moved to dead-letter",
                &o.dead_lettered,
            ),
            (
                "payrail_outbox_nats_duplicates_total",
                "counter",
                "outbox events NATS already had (redeliveries)",
                &o.duplicates,
            ),
            (
                "payrail_outbox_pending",
                "gauge",
                "outbox events due and not yet delivered",
                &o.pending,
            ),
            (
                "payrail_outbox_lag_seconds",
                "gauge",
                "age of the oldest due, undelivered outbox event (whole seconds)",
                &o.lag_ms,
            ),
            (
                "payrail_outbox_dead",
                "gauge",
                "outbox events in dead-letter",
                &o.dead,
            ),
        ] {
            let mut v = v.load(Ordering::Relaxed);
            if name == "payrail_outbox_lag_seconds" {
                v /= 1000;
            }
            simple(&mut out, name, kind, help, v);
        }
        simple(
            &mut out,
            "payrail_transaction_retries_total",
            "counter",
            "payment, capture and void transactions rolled back by a deadlock or serialization failure and run again",
            processor.transaction_retries,
        );
        simple(
            &mut out,
            "payrail_batch_deferrals_total",
            "counter",
            "payments a batch put back in the queue because another transaction held one of their accounts",
            processor.batch_deferrals,
        );
        simple(
            &mut out,
            "payrail_holds_overdue",
            "gauge",
            "holds past their expiry still authorized: their expiry timer is late, dead-lettered or never ran (capped at 10000; `payrail holds expire-due` resolves them)",
            self.holds_overdue.load(Ordering::Relaxed),
        );
        simple(
            &mut out,
            "payrail_payments_skipped_total",
            "counter",
            "payments dropped before they ran because their caller had gone (timeout, disconnect)",
            processor.payments_skipped,
        );
        simple(
            &mut out,
            "payrail_commits_unconfirmed",
            "gauge",
            "commits waiting past processor.commit_wait_ms for the database (a primary waiting for a synchronous standby): while above 0 no new payment is taken and /readyz answers 503",
            processor.commits_unconfirmed,
        );
        simple(
            &mut out,
            "payrail_commits_stalled_total",
            "counter",
            "commits that went past processor.commit_wait_ms; their callers were answered 503 commit_unconfirmed",
            processor.commits_stalled,
        );
        let t = &self.tenancy;
        for (name, help, v) in [
            (
                "payrail_rate_limited_total",
                "requests refused 429 rate_limited by their API key's token bucket",
                &t.rate_limited,
            ),
            (
                "payrail_tenant_busy_total",
                "requests refused 429 tenant_busy at their tenant's in-flight bound",
                &t.tenant_busy,
            ),
            (
                "payrail_api_key_lookups_total",
                "API key lookups that went to the database",
                &t.key_lookups,
            ),
            (
                "payrail_api_key_lookups_throttled_total",
                "requests with a key this host had not seen refused 429 because the lookup budget was spent",
                &t.key_lookups_throttled,
            ),
            (
                "payrail_http_connections_evicted_total",
                "idle or header-dribbling connections closed to admit new ones",
                &t.connections_evicted,
            ),
            (
                "payrail_http_connections_refused_total",
                "connections refused because every connection slot was busy",
                &t.connections_refused,
            ),
        ] {
            simple(&mut out, name, "counter", help, v.load(Ordering::Relaxed));
        }
        simple(
            &mut out,
            "payrail_http_in_flight",
            "gauge",
            "requests being handled",
            in_flight as u64,
        );
        for (name, help, v) in [
            ("payrail_db_pool_size", "open connections", pool.size),
            (
                "payrail_db_pool_available",
                "idle open connections",
                pool.available,
            ),
            ("payrail_db_pool_max_size", "pool capacity", pool.max_size),
            (
                "payrail_db_pool_waiting",
                "requests waiting for a connection",
                pool.waiting,
            ),
        ] {
            simple(&mut out, name, "gauge", help, v as u64);
        }
        out
    }
}

fn simple(out: &mut String, name: &str, kind: &str, help: &str, v: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
    );
}

fn counter_family(out: &mut String, name: &str, help: &str, labels: &[&str], f: &Family<u64>) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (values, v) in &f.series {
        let _ = writeln!(out, "{name}{} {v}", label_text(labels, values, None));
    }
}

fn histogram_family(
    out: &mut String,
    name: &str,
    help: &str,
    labels: &[&str],
    f: &Family<Histogram>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (values, h) in &f.series {
        for (b, c) in h.buckets.iter().zip(&h.counts) {
            let _ = writeln!(
                out,
                "{name}_bucket{} {c}",
                label_text(labels, values, Some(("le", b.to_string())))
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{} {}",
            label_text(labels, values, Some(("le", "+Inf".into()))),
            h.count
        );
        let l = label_text(labels, values, None);
        let _ = writeln!(out, "{name}_sum{l} {}", h.sum);
        let _ = writeln!(out, "{name}_count{l} {}", h.count);
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
        m.payment("approved", false);
        m.payment("approved", true);
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
        assert!(text.contains("payrail_http_request_duration_seconds_bucket{method=\"GET\",route=\"/v1/accounts/{id}\",le=\"0.005\"} 1"));
        assert!(text.contains("payrail_payments_total{status=\"approved\"} 1"));
        assert!(text.contains("payrail_payment_replays_total 1"));
        assert!(text.contains("payrail_transaction_retries_total 3"));
        assert!(text.contains("payrail_batch_deferrals_total 5"));
        assert!(text.contains("payrail_payments_skipped_total 7"));
        assert!(text.contains("payrail_commits_unconfirmed 1"));
        assert!(text.contains("payrail_commits_stalled_total 2"));
        assert!(text.contains("payrail_plugin_fuel_used_count{digest=\"abababababab\"} 1"));
        assert!(text.contains(
            "payrail_plugin_call_duration_seconds_bucket{digest=\"abababababab\",le=\"0.00005\"} 1"
        ));
        assert!(text.contains(
            "payrail_plugin_call_cpu_seconds_bucket{digest=\"abababababab\",le=\"0.00002\"} 1"
        ));
        assert!(text.contains("payrail_db_pool_max_size 4"));
    }

    #[test]
    fn series_are_capped() {
        let m = Metrics::default();
        for i in 0..MAX_SERIES + 10 {
            m.payment_error(&format!("code{i}"));
        }
        assert_eq!(
            m.payment_errors.lock().unwrap().series.len(),
            MAX_SERIES + 1
        );
    }
}
