//! The two workloads of the standard benchmark, the data they run on, and
//! what one run measures.
//!
//! All workloads are random transfers between distinct customer accounts
//! (uniformly chosen), as the peer baseline makes them: `uniform` runs the
//! pipeline `limits`; `hot_fee` runs `limits` + `fee`, so every payment also
//! credits the one fee account (the hot row); `spread_fee` runs the same
//! with the fee credited to one of [`SPREAD_FEE_ACCOUNTS`] fee accounts,
//! chosen by the fee plugin from a hash of the source account: the same
//! work as `hot_fee` without the hot row, so the two compare the cost of
//! the hot row alone.

use payrail::db::Pool;
use payrail::engine::PluginEngine;
use payrail::error::{Error, Result};
use payrail::ledger::{self, MAX_ACCOUNTS_PER_CALL, NewAccount};
use payrail::model::{DEFAULT_TENANT, PaymentRequest};
use payrail::registry::{self, StepSpec};
use payrail::samples;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

/// The account every `hot_fee` payment credits.
pub const FEE_ACCOUNT: &str = "fees";
/// Fee accounts of `spread_fee` (the peer's script spreads over as many).
pub const SPREAD_FEE_ACCOUNTS: usize = 64;
/// Opening balance of each customer: large enough that no run overdraws.
const OPENING_BALANCE: i64 = 1_000_000_000;
/// Amounts are drawn from this range (minor units), as in the baseline.
const AMOUNTS: std::ops::Range<i64> = 100..100_001;
/// Latency samples kept per run and kind; past it only counters grow
/// (a run at 20k payments/s for the longest `--secs` stays below).
const MAX_SAMPLES: usize = 20_000_000;

/// A benchmark workload (the pipeline kind is its name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Workload {
    /// Transfers with the pipeline `limits`.
    Uniform,
    /// Transfers with `limits` + `fee` (one hot fee account).
    #[value(name = "hot_fee")]
    HotFee,
    /// Transfers with `limits` + `fee` over [`SPREAD_FEE_ACCOUNTS`] fee
    /// accounts (no hot row).
    #[value(name = "spread_fee")]
    SpreadFee,
    /// Transfers with `limits`, nine in ten of them among the first
    /// [`HOT_PAIR_ACCOUNTS`] customers: payments that contend for the same
    /// few accounts (`payrail bench --locks` only: the peer has no script
    /// for it).
    #[value(name = "hot_pair")]
    HotPair,
}

/// The customers most `hot_pair` payments move money between.
pub const HOT_PAIR_ACCOUNTS: usize = 4;

impl Workload {
    /// The name the baseline and the pipeline use.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Uniform => "uniform",
            Workload::HotFee => "hot_fee",
            Workload::SpreadFee => "spread_fee",
            Workload::HotPair => "hot_pair",
        }
    }

    /// Every workload, in the report's order.
    pub const ALL: [Workload; 3] = [Workload::Uniform, Workload::HotFee, Workload::SpreadFee];

    /// The workload named `name` (as [`Workload::name`] gives it).
    pub fn from_name(name: &str) -> Option<Workload> {
        Workload::ALL.into_iter().find(|w| w.name() == name)
    }
}

/// Id of `spread_fee`'s fee account `i` (as the fee plugin's `spread`
/// names them).
pub fn spread_fee_account(i: usize) -> String {
    format!("{FEE_ACCOUNT}{i}")
}

/// Id of customer account `i`.
pub fn customer(i: usize) -> String {
    format!("a{i}")
}

/// Migrates a fresh database, deploys the sample plugins, opens the fee
/// accounts and `accounts` customers, and sets every workload's pipeline.
pub async fn setup(pool: &Pool, engine: &Arc<PluginEngine>, accounts: usize) -> Result<()> {
    let mut c = pool.get().await?;
    payrail::db::migrate::migrate(&mut c).await?;
    samples::deploy(&c, engine).await?;
    let new = |id: String, opening_balance: i64| NewAccount {
        id,
        currency: "EUR".into(),
        allow_negative: false,
        opening_balance,
        metadata: Default::default(),
    };
    let fee_accounts: Vec<NewAccount> = std::iter::once(FEE_ACCOUNT.to_string())
        .chain((0..SPREAD_FEE_ACCOUNTS).map(spread_fee_account))
        .map(|id| new(id, 0))
        .collect();
    ledger::create_accounts(&mut c, DEFAULT_TENANT, &fee_accounts).await?;
    let mut start = 0;
    while start < accounts {
        let end = (start + MAX_ACCOUNTS_PER_CALL).min(accounts);
        let chunk: Vec<NewAccount> = (start..end)
            .map(|i| new(customer(i), OPENING_BALANCE))
            .collect();
        ledger::create_accounts(&mut c, DEFAULT_TENANT, &chunk).await?;
        start = end;
    }
    let limits = StepSpec {
        plugin: "limits".into(),
        config: serde_json::json!({"max_amount": 1_000_000}),
        candidate: None,
        limits: None,
    };
    // 290 bps = the baseline's 29 permille, at least 1 cent
    let fee = StepSpec {
        plugin: "fee".into(),
        config: serde_json::json!({"fee_account": FEE_ACCOUNT, "percent_bps": 290, "min": 1}),
        candidate: None,
        limits: None,
    };
    for w in [Workload::Uniform, Workload::HotPair] {
        registry::set_pipeline(
            &c,
            engine,
            DEFAULT_TENANT,
            w.name(),
            std::slice::from_ref(&limits),
        )
        .await?;
    }
    let spread_fee = StepSpec {
        config: serde_json::json!({
            "fee_account": FEE_ACCOUNT,
            "spread": SPREAD_FEE_ACCOUNTS,
            "percent_bps": 290,
            "min": 1,
        }),
        ..fee.clone()
    };
    registry::set_pipeline(
        &c,
        engine,
        DEFAULT_TENANT,
        Workload::HotFee.name(),
        &[limits.clone(), fee],
    )
    .await?;
    registry::set_pipeline(
        &c,
        engine,
        DEFAULT_TENANT,
        Workload::SpreadFee.name(),
        &[limits, spread_fee],
    )
    .await?;
    Ok(())
}

/// Draws the payments of one client: a deterministic stream per seed.
pub struct RequestGen {
    rng: StdRng,
    accounts: usize,
    workload: Workload,
}

impl RequestGen {
    /// A stream over `accounts` customers (at least 2).
    pub fn new(workload: Workload, accounts: usize, seed: u64) -> Result<RequestGen> {
        if accounts < 2 {
            return Err(Error::invalid(
                "invalid_bench",
                "a transfer needs at least 2 accounts",
            ));
        }
        Ok(RequestGen {
            rng: StdRng::seed_from_u64(seed),
            accounts,
            workload,
        })
    }

    /// The next transfer: two distinct random customers, a random amount.
    pub fn next_request(&mut self) -> PaymentRequest {
        let hot = self.workload == Workload::HotPair && self.rng.random_range(0..10) < 9;
        let among = if hot {
            HOT_PAIR_ACCOUNTS.min(self.accounts)
        } else {
            self.accounts
        };
        let from = self.rng.random_range(0..among);
        let to = (from + self.rng.random_range(1..among)) % among;
        PaymentRequest {
            kind: self.workload.name().to_string(),
            source: customer(from),
            destination: customer(to),
            amount: self.rng.random_range(AMOUNTS),
            currency: "EUR".into(),
            metadata: Default::default(),
            capture: Default::default(),
            hold_ttl_secs: None,
        }
    }
}

/// Raw measurements of one run (or one client of it), merged at the end.
#[derive(Debug, Default)]
pub struct Samples {
    /// End-to-end latency of each payment, µs.
    pub latency_us: Vec<u32>,
    /// `PayOutcome::lock_wait` of each payment, µs (in-process only).
    pub lock_wait_us: Vec<u32>,
    /// Wall-clock time of each plugin call, ns (in-process only; µs would
    /// round a 10 µs call by up to 10%).
    pub call_ns: Vec<u32>,
    /// CPU time of each sampled plugin call, ns (in-process only).
    pub call_cpu_ns: Vec<u32>,
    /// Sum of all plugin call durations.
    pub plugin_time: Duration,
    /// Sum of the sampled plugin calls' CPU time.
    pub plugin_cpu: Duration,
    /// Plugin calls whose CPU time was sampled.
    pub cpu_sampled: u64,
    /// Payments approved.
    pub approved: u64,
    /// Payments declined (a business decision: counted as done).
    pub declined: u64,
    /// Payments that failed.
    pub errors: u64,
    /// The first failure, for the report.
    pub first_error: Option<String>,
}

/// What one payment came to, as seen by the client.
#[derive(Debug)]
pub struct Outcome {
    /// `Ok(true)` approved, `Ok(false)` declined, `Err` what went wrong.
    pub result: std::result::Result<bool, String>,
    /// The plugin calls' times (in-process only).
    pub calls: Vec<CallTime>,
    /// Time claiming the key and taking the locks (in-process only).
    pub lock_wait: Option<Duration>,
}

/// One plugin call's time, as `CallStat` reports it.
#[derive(Debug, Clone, Copy)]
pub struct CallTime {
    /// Wall clock, setup through output checks.
    pub wall: Duration,
    /// CPU time of the calling thread over the same span (sampled calls
    /// only: see `engine::CPU_SAMPLE_EVERY`).
    pub cpu: Option<Duration>,
}

/// Appends `n` (saturated to u32) unless `v` already holds `MAX_SAMPLES`.
fn push(v: &mut Vec<u32>, n: u128) {
    if v.len() < MAX_SAMPLES {
        v.push(n.min(u32::MAX as u128) as u32);
    }
}

/// The median of `ns`, in µs (`None` when empty). Sorts `ns`.
pub fn median_us(ns: &mut [u32]) -> Option<f64> {
    ns.sort_unstable();
    ns.get(ns.len() / 2).map(|&m| f64::from(m) / 1000.0)
}

impl Samples {
    /// Records one finished payment.
    pub fn record(&mut self, latency: Duration, outcome: &Outcome) {
        push(&mut self.latency_us, latency.as_micros());
        match &outcome.result {
            Ok(true) => self.approved += 1,
            Ok(false) => self.declined += 1,
            Err(e) => {
                self.errors += 1;
                if self.first_error.is_none() {
                    self.first_error = Some(e.clone());
                }
            }
        }
        if let Some(w) = outcome.lock_wait {
            push(&mut self.lock_wait_us, w.as_micros());
        }
        for c in &outcome.calls {
            push(&mut self.call_ns, c.wall.as_nanos());
            self.plugin_time += c.wall;
            if let Some(cpu) = c.cpu {
                push(&mut self.call_cpu_ns, cpu.as_nanos());
                self.plugin_cpu += cpu;
                self.cpu_sampled += 1;
            }
        }
    }

    /// Adds another client's samples.
    pub fn merge(&mut self, other: Samples) {
        self.latency_us.extend(other.latency_us);
        self.lock_wait_us.extend(other.lock_wait_us);
        self.call_ns.extend(other.call_ns);
        self.call_cpu_ns.extend(other.call_cpu_ns);
        self.plugin_time += other.plugin_time;
        self.plugin_cpu += other.plugin_cpu;
        self.cpu_sampled += other.cpu_sampled;
        self.approved += other.approved;
        self.declined += other.declined;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    /// Payments that completed (approved or declined).
    pub fn completed(&self) -> u64 {
        self.approved + self.declined
    }
}

/// Percentiles of one distribution, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    /// Samples the percentiles are over.
    pub count: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

/// The percentile levels of [`Percentiles`] and the latency chart.
pub const LEVELS: [(&str, f64); 5] = [
    ("p50", 0.50),
    ("p90", 0.90),
    ("p99", 0.99),
    ("p99.9", 0.999),
    ("max", 1.0),
];

impl Percentiles {
    /// Sorts `us` and reads the percentiles (nearest rank).
    pub fn of(us: &mut [u32]) -> Percentiles {
        us.sort_unstable();
        let at = |p: f64| -> f64 {
            if us.is_empty() {
                return 0.0;
            }
            let rank = ((us.len() as f64) * p).ceil() as usize;
            us[rank.clamp(1, us.len()) - 1] as f64 / 1000.0
        };
        Percentiles {
            count: us.len(),
            p50_ms: at(0.50),
            p90_ms: at(0.90),
            p99_ms: at(0.99),
            p999_ms: at(0.999),
            max_ms: at(1.0),
        }
    }

    /// The values in the order of [`LEVELS`].
    pub fn values(&self) -> [f64; 5] {
        [
            self.p50_ms,
            self.p90_ms,
            self.p99_ms,
            self.p999_ms,
            self.max_ms,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut v: Vec<u32> = (1..=1000).map(|i| i * 1000).collect();
        let p = Percentiles::of(&mut v);
        assert_eq!(p.count, 1000);
        assert_eq!(p.p50_ms, 500.0);
        assert_eq!(p.p99_ms, 990.0);
        assert_eq!(p.p999_ms, 999.0);
        assert_eq!(p.max_ms, 1000.0);
        assert_eq!(Percentiles::of(&mut []).p50_ms, 0.0);
    }

    #[test]
    fn requests_are_distinct_transfers() {
        let mut g = RequestGen::new(Workload::HotFee, 2, 7).unwrap();
        for _ in 0..100 {
            let r = g.next_request();
            assert_ne!(r.source, r.destination);
            assert_eq!(r.kind, "hot_fee");
            assert!(AMOUNTS.contains(&r.amount));
        }
        assert!(RequestGen::new(Workload::Uniform, 1, 7).is_err());
    }

    #[test]
    fn workloads_by_name() {
        for w in Workload::ALL {
            assert_eq!(Workload::from_name(w.name()), Some(w));
        }
        assert_eq!(Workload::from_name("spread_fee"), Some(Workload::SpreadFee));
        assert_eq!(Workload::from_name("hot"), None);
        assert_eq!(spread_fee_account(63), "fees63");
    }
}
