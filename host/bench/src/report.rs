//! The benchmark's results: what each run measured, the ratios to the peer,
//! the targets (issue 6, as issue 20 restated them), and their rendering as
//! `report.md` and `report.json`.

use crate::cpu::CpuSplit;
use crate::peer::{PeerPaced, PeerPoint};
use crate::wal::{self, WalByTable};
use crate::workload::{Percentiles, Samples, Workload, median_us};
use crate::writes::PerPayment;
use serde::Serialize;
use std::fmt::Write;
use std::time::Duration;

/// P1: payrail's uniform throughput over the peer's, at each client count
/// of [`P1_CLIENTS`] both measured (same run, per point).
pub const P1_MIN_RATIO: f64 = 1.5;
/// The client counts P1 holds at.
pub const P1_CLIENTS: std::ops::RangeInclusive<usize> = 32..=256;
/// P2: payrail's best hot_fee throughput over its best spread_fee (same
/// path, same run): the hot row costs at most 5%.
pub const P2_MIN_HOT_OVER_SPREAD: f64 = 0.95;
/// P2: payrail's best hot_fee throughput over the peer's best hot_fee.
pub const P2_MIN_HOT_OVER_PEER: f64 = 2.5;
/// P3: p99 latency paced at [`LOW_LOAD_FRACTION`] of the own peak, ms
/// (and at the peer's rate: at most the peer's p99).
pub const P3_MAX_P99_MS: f64 = 25.0;
/// The fraction of its own peak the second paced run is at (P3).
pub const LOW_LOAD_FRACTION: f64 = 0.5;
/// P4: median plugin call, CPU, µs.
pub const P4_MAX_CALL_US: f64 = 12.0;
/// P4: the plugin calls' CPU as a share of the whole machine's CPU per
/// payment.
pub const P4_MAX_MACHINE_SHARE: f64 = 0.15;
/// Peak RSS of the host, MB.
pub const MAX_RSS_MB: f64 = 256.0;
/// The fraction of peak throughput the latency run is paced at.
pub const LOAD_FRACTION: f64 = 0.8;

/// How the payments reached payrail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum PathKind {
    /// `Processor::pay` from tasks in the bench process.
    #[value(name = "in-process")]
    InProcess,
    /// HTTP to `payrail serve` children.
    Http,
}

impl PathKind {
    /// Its name in tables.
    pub fn name(self) -> &'static str {
        match self {
            PathKind::InProcess => "in-process",
            PathKind::Http => "http",
        }
    }
}

/// The plugins' share of a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PluginCost {
    /// Plugin calls made.
    pub calls: u64,
    /// Plugin wall-clock time per payment, µs (sum of call durations /
    /// payments).
    pub per_payment_us: Option<f64>,
    /// Plugin CPU time per payment, µs (the sampled calls' mean times the
    /// calls).
    pub cpu_per_payment_us: Option<f64>,
    /// Median call, wall clock, µs (in-process only: from every call).
    pub median_call_us: Option<f64>,
    /// Median call, CPU time, µs (in-process only: from the sampled calls).
    pub median_call_cpu_us: Option<f64>,
    /// Mean call, wall clock, µs.
    pub mean_call_us: Option<f64>,
    /// Mean call, CPU time, µs.
    pub mean_call_cpu_us: Option<f64>,
    /// Plugin CPU time over the host's CPU time in the run (P4).
    pub cpu_share: Option<f64>,
    /// Plugin wall-clock time over the host's CPU time: overstates the
    /// share on busy cores, where a call's wall time includes slices the
    /// thread waited for a core.
    pub wall_share: Option<f64>,
}

/// One measured run.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    /// How the payments reached payrail.
    pub path: PathKind,
    /// The workload.
    pub workload: Workload,
    /// Closed-loop clients; for a paced run, the most payments in flight.
    pub clients: usize,
    /// Paced runs: the rate payments were started at (per second).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_tps: Option<f64>,
    /// `payrail serve` processes (0: in-process).
    pub processes: usize,
    /// Wall time of the run, s.
    pub seconds: f64,
    /// Approved + declined.
    pub payments: u64,
    pub approved: u64,
    pub declined: u64,
    pub errors: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// Completed payments per second.
    pub tps: f64,
    /// End-to-end latency (client side).
    pub latency: Percentiles,
    /// In-process: the distribution of `PayOutcome::lock_wait`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock_wait: Option<Percentiles>,
    /// HTTP: mean lock wait from the servers' metrics, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock_wait_mean_ms: Option<f64>,
    /// HTTP: payments batches put back because another transaction held
    /// one of their accounts (`payrail_batch_deferrals_total`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_deferrals: Option<u64>,
    /// The plugins' cost.
    pub plugin: PluginCost,
    /// CPU time of the host process(es) during the run, s.
    pub host_cpu_seconds: Option<f64>,
    /// Peak RSS of the host process (the largest of several), MB.
    pub peak_rss_mb: Option<f64>,
    /// What the run wrote on the server per payment (set by the caller).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub writes: Option<PerPayment>,
    /// Paced runs: the fraction of the path's own peak (none: paced at
    /// the peer's rate, or closed loop).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_fraction: Option<f64>,
    /// The machine's CPU per payment by component (set by the caller).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuSplit>,
    /// WAL per payment by table (closed loop; set by the caller).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wal: Option<WalByTable>,
}

/// Plugin calls of a run, summed.
#[derive(Debug, Clone, Copy, Default)]
pub struct PluginTotals {
    /// Wall-clock seconds of every call.
    pub wall_seconds: f64,
    /// Calls made.
    pub calls: f64,
    /// CPU seconds of the calls whose CPU time was read (one in
    /// `engine::CPU_SAMPLE_EVERY`).
    pub sampled_cpu_seconds: f64,
    /// Calls whose CPU time was read.
    pub sampled_calls: f64,
}

impl PluginTotals {
    /// Mean CPU seconds per call, from the sampled calls.
    fn mean_cpu_seconds(&self) -> Option<f64> {
        (self.sampled_calls > 0.0).then(|| self.sampled_cpu_seconds / self.sampled_calls)
    }
}

/// What the host processes reported around a run.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostReadings {
    /// CPU time used during the run.
    pub cpu: Option<Duration>,
    /// Peak RSS in bytes at the end.
    pub peak_rss: Option<u64>,
    /// HTTP: the plugin calls, from the servers' metrics.
    pub plugin: Option<PluginTotals>,
    /// HTTP: lock wait seconds and count from the servers' metrics.
    pub lock_seconds_count: Option<(f64, f64)>,
    /// HTTP: payments put back by batches, from the servers' metrics.
    pub batch_deferrals: Option<f64>,
}

impl RunResult {
    /// Summarizes `samples` of a run that took `elapsed`.
    pub fn new(
        path: PathKind,
        workload: Workload,
        clients: usize,
        processes: usize,
        mut samples: Samples,
        elapsed: Duration,
        host: HostReadings,
    ) -> RunResult {
        let payments = samples.completed();
        let seconds = elapsed.as_secs_f64().max(1e-9);
        let per = |total: f64, n: f64| (n > 0.0).then(|| total / n);
        let (totals, median, median_cpu) = match host.plugin {
            Some(t) => (t, None, None),
            None => (
                PluginTotals {
                    wall_seconds: samples.plugin_time.as_secs_f64(),
                    calls: samples.call_ns.len() as f64,
                    sampled_cpu_seconds: samples.plugin_cpu.as_secs_f64(),
                    sampled_calls: samples.cpu_sampled as f64,
                },
                median_us(&mut samples.call_ns),
                median_us(&mut samples.call_cpu_ns),
            ),
        };
        let cpu = host.cpu.map(|d| d.as_secs_f64());
        // every call's CPU time, estimated from the sampled ones
        let plugin_cpu = totals.mean_cpu_seconds().map(|m| m * totals.calls);
        let plugin = PluginCost {
            calls: totals.calls as u64,
            per_payment_us: per(totals.wall_seconds * 1e6, payments as f64),
            cpu_per_payment_us: plugin_cpu.and_then(|c| per(c * 1e6, payments as f64)),
            median_call_us: median,
            median_call_cpu_us: median_cpu,
            mean_call_us: per(totals.wall_seconds * 1e6, totals.calls),
            mean_call_cpu_us: totals.mean_cpu_seconds().map(|m| m * 1e6),
            cpu_share: cpu.zip(plugin_cpu).and_then(|(c, p)| per(p, c)),
            wall_share: cpu.and_then(|c| per(totals.wall_seconds, c)),
        };
        let lock_wait =
            (!samples.lock_wait_us.is_empty()).then(|| Percentiles::of(&mut samples.lock_wait_us));
        RunResult {
            path,
            workload,
            clients,
            target_tps: None,
            processes,
            seconds,
            payments,
            approved: samples.approved,
            declined: samples.declined,
            errors: samples.errors,
            first_error: samples.first_error.take(),
            tps: payments as f64 / seconds,
            latency: Percentiles::of(&mut samples.latency_us),
            lock_wait,
            lock_wait_mean_ms: host
                .lock_seconds_count
                .and_then(|(s, n)| per(s * 1000.0, n)),
            batch_deferrals: host.batch_deferrals.map(|d| d.max(0.0) as u64),
            plugin,
            host_cpu_seconds: cpu,
            peak_rss_mb: host.peak_rss.map(|b| b as f64 / (1024.0 * 1024.0)),
            writes: None,
            load_fraction: None,
            cpu: None,
            wal: None,
        }
    }
}

/// One round of the head-to-head phase: payrail (in-process) and the peer,
/// each at its best client count of the sweeps, run one right after the
/// other, so that both see the machine in the same state.
#[derive(Debug, Clone, Serialize)]
pub struct PairedRound {
    /// 1-based.
    pub round: usize,
    pub workload: Workload,
    /// Whether the peer ran before payrail in this round (rounds alternate
    /// the order, so a steady drift of the machine favours neither).
    pub peer_first: bool,
    pub payrail_clients: usize,
    pub payrail_tps: f64,
    /// payrail's payments that failed (not approved, not declined).
    pub payrail_errors: u64,
    pub peer_clients: usize,
    /// `None` when pgbench failed.
    pub peer_tps: Option<f64>,
}

impl PairedRound {
    /// payrail's throughput over the peer's in this round.
    pub fn ratio(&self) -> Option<f64> {
        self.peer_tps
            .filter(|p| *p > 0.0)
            .map(|p| self.payrail_tps / p)
    }
}

/// The median of the rounds' ratios for `workload` (the mean of the middle
/// two for an even count), or `None` without a measured round.
pub fn paired_ratio(rounds: &[PairedRound], workload: Workload) -> Option<f64> {
    let mut ratios: Vec<f64> = rounds
        .iter()
        .filter(|r| r.workload == workload)
        .filter_map(PairedRound::ratio)
        .collect();
    if ratios.is_empty() {
        return None;
    }
    ratios.sort_by(f64::total_cmp);
    let mid = ratios.len() / 2;
    Some(if ratios.len().is_multiple_of(2) {
        (ratios[mid - 1] + ratios[mid]) / 2.0
    } else {
        ratios[mid]
    })
}

/// payrail's best against the peer's best, one workload and path.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    pub path: PathKind,
    pub workload: Workload,
    pub payrail_tps: f64,
    pub payrail_clients: usize,
    pub peer_tps: Option<f64>,
    pub peer_clients: Option<usize>,
    /// payrail / peer.
    pub ratio: Option<f64>,
}

/// Several `payrail serve` processes against one, same clients.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleOut {
    pub workload: Workload,
    pub clients: usize,
    pub processes: usize,
    pub tps: f64,
    pub one_process_tps: f64,
    /// tps / one_process_tps.
    pub speedup: f64,
    /// The one-process run's mean lock wait, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub one_process_lock_wait_mean_ms: Option<f64>,
    /// The run itself.
    pub run: RunResult,
}

/// One target of issue 6.
#[derive(Debug, Clone, Serialize)]
pub struct TargetCheck {
    /// P1..P4, RSS.
    pub id: String,
    /// What is compared.
    pub what: String,
    /// The measured value, formatted.
    pub value: String,
    /// The goal, formatted.
    pub goal: String,
    /// `None`: not measured.
    pub met: Option<bool>,
}

/// The server's durability settings (read, never changed).
#[derive(Debug, Clone, Serialize)]
pub struct Durability {
    pub synchronous_commit: String,
    pub fsync: String,
    /// Both on.
    pub full: bool,
}

/// `payrail audit` on the bench database.
#[derive(Debug, Clone, Serialize)]
pub struct AuditResult {
    pub passed: bool,
    pub violations: Vec<String>,
}

/// Everything one `payrail bench` measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// payrail's version.
    pub version: String,
    /// The command line.
    pub command: String,
    /// Seed of the workload.
    pub seed: u64,
    /// Unix time the bench started.
    pub started_unix: u64,
    /// Postgres `version()`.
    pub postgres: String,
    /// CPUs of this machine.
    pub cpus: usize,
    pub durability: Durability,
    /// The machine's speed on the day: see [`IdleCall`].
    pub idle_call: IdleCall,
    pub accounts: usize,
    pub secs: u64,
    pub concurrency: Vec<usize>,
    /// Connection pool of each host process.
    pub pool_size: usize,
    /// Closed-loop runs, every path, workload and client count.
    pub runs: Vec<RunResult>,
    /// Paced runs at [`LOAD_FRACTION`] and [`LOW_LOAD_FRACTION`] of each
    /// path's and workload's peak.
    pub at_load: Vec<RunResult>,
    /// payrail's uniform workload paced at the peer's paced rate
    /// ([`LOAD_FRACTION`] of the peer's best uniform), each path on a
    /// fresh database (P3 at the same offered load).
    pub same_load: Vec<RunResult>,
    /// The server's commit flush latency, µs: median insert+commit with
    /// `synchronous_commit=on` minus with it off.
    pub flush_latency_us: Option<f64>,
    /// Whether the sweeps went on past the last client count while
    /// throughput rose.
    pub sweep_extended: bool,
    /// The baseline.
    pub peer: Vec<PeerPoint>,
    /// The baseline paced at [`LOAD_FRACTION`] of its best tps.
    pub peer_at_load: Vec<PeerPaced>,
    pub ratios: Vec<Ratio>,
    /// The head-to-head phase (in-process only).
    pub paired: Vec<PairedRound>,
    pub scale_out: Vec<ScaleOut>,
    pub targets: Vec<TargetCheck>,
    pub audit: AuditResult,
    /// Caveats of this run.
    pub notes: Vec<String>,
}

/// The `limits` sample timed on an idle core before any load, as
/// `payrail plugin bench` times it. The same code has run at 10.7 µs a
/// call on one day of this kind of machine and 32.5 µs on another
/// (docs/performance.md), so absolute numbers of two reports compare
/// only when these do.
#[derive(Debug, Clone, Serialize)]
pub struct IdleCall {
    /// Calls measured (after unmeasured ones that warm the pool slots).
    pub calls: usize,
    /// Median µs per call, input preparation through output checks.
    pub median_us: f64,
    /// Median CPU µs per call as the engine samples it (what P4 counts).
    pub median_cpu_us: f64,
}

/// The closed-loop run with the highest throughput of `path`, `workload`.
pub fn best(runs: &[RunResult], path: PathKind, workload: Workload) -> Option<&RunResult> {
    runs.iter()
        .filter(|r| r.path == path && r.workload == workload && r.processes <= 1)
        .max_by(|a, b| a.tps.total_cmp(&b.tps))
}

/// The peer's best point of `workload`.
pub fn peer_best(peer: &[PeerPoint], workload: Workload) -> Option<(f64, usize)> {
    peer.iter()
        .filter(|p| p.workload == workload)
        .filter_map(|p| p.tps.map(|t| (t, p.clients)))
        .max_by(|a, b| a.0.total_cmp(&b.0))
}

/// payrail best vs peer best per path and workload.
pub fn ratios(runs: &[RunResult], peer: &[PeerPoint]) -> Vec<Ratio> {
    let mut out = Vec::new();
    for path in [PathKind::InProcess, PathKind::Http] {
        for workload in Workload::ALL {
            let Some(b) = best(runs, path, workload) else {
                continue;
            };
            let p = peer_best(peer, workload);
            out.push(Ratio {
                path,
                workload,
                payrail_tps: b.tps,
                payrail_clients: b.clients,
                peer_tps: p.map(|p| p.0),
                peer_clients: p.map(|p| p.1),
                ratio: p.map(|p| b.tps / p.0),
            });
        }
    }
    out
}

fn check(
    id: &str,
    what: String,
    value: Option<f64>,
    fmt: impl Fn(f64) -> String,
    goal: String,
    ok: impl Fn(f64) -> bool,
) -> TargetCheck {
    TargetCheck {
        id: id.into(),
        what,
        value: value.map(&fmt).unwrap_or_else(|| "n/a".into()),
        goal,
        met: value.map(ok),
    }
}

/// Evaluates the targets on every path measured.
pub fn targets(report: &Report) -> Vec<TargetCheck> {
    let mut out = Vec::new();
    let paths: Vec<PathKind> = [PathKind::InProcess, PathKind::Http]
        .into_iter()
        .filter(|p| report.runs.iter().any(|r| r.path == *p))
        .collect();
    for &path in &paths {
        p1_targets(report, path, &mut out);
        p2_targets(report, path, &mut out);
        p3_targets(report, path, &mut out);
        p4_targets(report, path, &mut out);
        let rss = report
            .runs
            .iter()
            .chain(&report.at_load)
            .filter(|r| r.path == path)
            .filter_map(|r| r.peak_rss_mb)
            .reduce(f64::max);
        out.push(check(
            "RSS",
            format!("{}: host peak RSS", path.name()),
            rss,
            |v| format!("{v:.0} MB"),
            format!("<= {MAX_RSS_MB} MB"),
            |v| v <= MAX_RSS_MB,
        ));
    }
    out
}

fn times(v: f64) -> String {
    format!("{v:.2}x")
}

/// The closed-loop run of `path`, `workload` at `clients` (one process).
fn run_at(
    runs: &[RunResult],
    path: PathKind,
    workload: Workload,
    clients: usize,
) -> Option<&RunResult> {
    runs.iter().find(|r| {
        r.path == path && r.workload == workload && r.clients == clients && r.processes <= 1
    })
}

/// P1 at each client count of [`P1_CLIENTS`] either side measured, and
/// the head-to-head median.
fn p1_targets(report: &Report, path: PathKind, out: &mut Vec<TargetCheck>) {
    let n = path.name();
    let u = Workload::Uniform;
    let mut counts: Vec<usize> = report
        .runs
        .iter()
        .filter(|r| r.path == path && r.workload == u && r.processes <= 1)
        .map(|r| r.clients)
        .chain(
            report
                .peer
                .iter()
                .filter(|p| p.workload == u)
                .map(|p| p.clients),
        )
        .filter(|c| P1_CLIENTS.contains(c))
        .collect();
    counts.sort_unstable();
    counts.dedup();
    for c in counts {
        let ours = run_at(&report.runs, path, u, c).map(|r| r.tps);
        let theirs = report
            .peer
            .iter()
            .find(|p| p.workload == u && p.clients == c)
            .and_then(|p| p.tps)
            .filter(|t| *t > 0.0);
        out.push(check(
            "P1",
            format!("{n}: uniform tps / peer uniform tps at {c} clients"),
            ours.zip(theirs).map(|(a, b)| a / b),
            times,
            format!(">= {P1_MIN_RATIO}x"),
            |v| v >= P1_MIN_RATIO,
        ));
    }
    if path == PathKind::InProcess && !report.paired.is_empty() {
        let rounds = report.paired.iter().filter(|r| r.workload == u).count();
        out.push(check(
            "P1",
            format!("{n}: uniform tps / peer uniform tps, alternated ({rounds} rounds, median)"),
            paired_ratio(&report.paired, u),
            times,
            format!(">= {P1_MIN_RATIO}x"),
            |v| v >= P1_MIN_RATIO,
        ));
    }
}

/// P2: the hot row's cost (hot_fee against spread_fee) and hot_fee against
/// the peer's.
fn p2_targets(report: &Report, path: PathKind, out: &mut Vec<TargetCheck>) {
    let n = path.name();
    let hot = best(&report.runs, path, Workload::HotFee);
    let spread = best(&report.runs, path, Workload::SpreadFee);
    out.push(check(
        "P2",
        format!("{n}: best hot_fee tps / best spread_fee tps"),
        hot.zip(spread.filter(|s| s.tps > 0.0))
            .map(|(h, s)| h.tps / s.tps),
        times,
        format!(">= {P2_MIN_HOT_OVER_SPREAD}x"),
        |v| v >= P2_MIN_HOT_OVER_SPREAD,
    ));
    let peer = peer_best(&report.peer, Workload::HotFee).filter(|p| p.0 > 0.0);
    out.push(check(
        "P2",
        format!("{n}: best hot_fee tps / peer best hot_fee tps"),
        hot.zip(peer).map(|(h, p)| h.tps / p.0),
        times,
        format!(">= {P2_MIN_HOT_OVER_PEER}x"),
        |v| v >= P2_MIN_HOT_OVER_PEER,
    ));
}

/// P3: p99 at the peer's paced rate against the peer's p99 there, and
/// p99 at half the own peak.
fn p3_targets(report: &Report, path: PathKind, out: &mut Vec<TargetCheck>) {
    let n = path.name();
    let ours = report.same_load.iter().find(|r| r.path == path);
    let theirs = report
        .peer_at_load
        .iter()
        .find(|p| p.workload == Workload::Uniform);
    out.push(check(
        "P3",
        format!(
            "{n} uniform: p99 at the peer's paced rate ({}/s) / the peer's p99 there ({})",
            opt(theirs.map(|p| p.target_tps), |t| format!("{t:.0}")),
            opt(theirs.map(|p| p.latency.p99_ms), |t| format!("{t:.2} ms")),
        ),
        ours.zip(theirs)
            .filter(|(_, p)| p.latency.p99_ms > 0.0)
            .map(|(r, p)| r.latency.p99_ms / p.latency.p99_ms),
        times,
        "<= 1.00x".into(),
        |v| v <= 1.0,
    ));
    for workload in Workload::ALL {
        let r = report.at_load.iter().find(|r| {
            r.path == path && r.workload == workload && r.load_fraction == Some(LOW_LOAD_FRACTION)
        });
        if r.is_none() && best(&report.runs, path, workload).is_none() {
            continue;
        }
        out.push(check(
            "P3",
            format!(
                "{n} {}: p99 at {:.0}% of own peak",
                workload.name(),
                LOW_LOAD_FRACTION * 100.0
            ),
            r.map(|r| r.latency.p99_ms),
            |v| format!("{v:.2} ms"),
            format!("<= {P3_MAX_P99_MS} ms"),
            |v| v <= P3_MAX_P99_MS,
        ));
    }
}

/// P4: the median plugin call and the plugin calls' share of the whole
/// machine's CPU, at each workload's best point.
fn p4_targets(report: &Report, path: PathKind, out: &mut Vec<TargetCheck>) {
    let n = path.name();
    for workload in Workload::ALL {
        let Some(b) = best(&report.runs, path, workload) else {
            continue;
        };
        let (value, label) = match b.plugin.median_call_cpu_us {
            Some(m) => (Some(m), "median"),
            None => (b.plugin.mean_call_cpu_us, "mean (server metrics)"),
        };
        out.push(check(
            "P4",
            format!("{n} {}: plugin call CPU, {label}", workload.name()),
            value,
            |v| format!("{v:.1} µs"),
            format!("<= {P4_MAX_CALL_US} µs"),
            |v| v <= P4_MAX_CALL_US,
        ));
        out.push(check(
            "P4",
            format!(
                "{n} {}: plugin CPU / whole machine's CPU per payment",
                workload.name()
            ),
            b.cpu.and_then(|c| c.plugin_share()),
            |v| format!("{:.1}%", v * 100.0),
            format!("<= {:.0}%", P4_MAX_MACHINE_SHARE * 100.0),
            |v| v <= P4_MAX_MACHINE_SHARE,
        ));
    }
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map(f).unwrap_or_else(|| "-".into())
}

fn met(m: Option<bool>) -> &'static str {
    match m {
        Some(true) => "met",
        Some(false) => "**not met**",
        None => "not measured",
    }
}

fn run_row(md: &mut String, r: &RunResult) {
    let lock = match (&r.lock_wait, r.lock_wait_mean_ms) {
        (Some(l), _) => format!("{:.2} / {:.2} / {:.1}", l.p50_ms, l.p99_ms, l.max_ms),
        (None, Some(m)) => format!("mean {m:.2}"),
        _ => "-".into(),
    };
    let _ = writeln!(
        md,
        "| {} | {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} | {} | {} | {} | {} |",
        r.path.name(),
        r.workload.name(),
        if r.target_tps.is_some() {
            format!("≤{} in flight", r.clients)
        } else if r.processes > 1 {
            format!("{} ({} procs)", r.clients, r.processes)
        } else {
            r.clients.to_string()
        },
        opt(r.target_tps, |t| format!("{t:.0}")),
        r.tps,
        r.latency.p50_ms,
        r.latency.p99_ms,
        r.latency.p999_ms,
        r.errors,
        opt(r.plugin.cpu_per_payment_us, |v| format!("{v:.1}")),
        opt(r.plugin.median_call_us.or(r.plugin.mean_call_us), |v| {
            format!("{v:.1}")
        }),
        opt(
            r.plugin.median_call_cpu_us.or(r.plugin.mean_call_cpu_us),
            |v| format!("{v:.1}")
        ),
        opt(r.plugin.cpu_share, |v| format!("{:.1}%", v * 100.0)),
        lock,
        opt(r.peak_rss_mb, |v| format!("{v:.0}")),
        writes_cell(r.writes),
    );
}

/// WAL and database growth per payment, as one table cell.
fn writes_cell(w: Option<PerPayment>) -> String {
    w.map(|w| format!("{:.0} / {:.0}", w.wal_bytes, w.database_bytes))
        .unwrap_or_else(|| "-".into())
}

const RUN_HEADER: &str = "| path | workload | clients | paced at tps | tps | p50 ms | p99 ms | p99.9 ms | errors | plugin CPU µs/payment | plugin µs/call (wall) | plugin µs/call (CPU) | plugin % of host CPU | lock wait ms (p50 / p99 / max) | peak RSS MB | WAL / DB growth, B per payment |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";

fn peer_paced_row(md: &mut String, p: &PeerPaced) {
    let _ = writeln!(
        md,
        "| {} | {} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
        p.workload.name(),
        p.clients,
        p.target_tps,
        p.tps,
        p.latency.p50_ms,
        p.latency.p99_ms,
        p.latency.p999_ms,
        p.latency.max_ms,
        writes_cell(p.writes),
    );
}

fn us_cell(v: Option<f64>) -> String {
    opt(v, |v| format!("{v:.0}"))
}

/// One row of the CPU table.
fn cpu_row(
    md: &mut String,
    side: &str,
    workload: Workload,
    clients: usize,
    tps: f64,
    c: &CpuSplit,
) {
    let _ = writeln!(
        md,
        "| {side} | {} | {clients} | {tps:.0} | {} | {}{} | {} | {} | {} | {} |",
        workload.name(),
        us_cell(c.postgres_us),
        us_cell(c.host_us),
        if c.host_includes_load_generator {
            " (host + load generator, one process)"
        } else {
            ""
        },
        us_cell(c.plugins_us),
        us_cell(c.load_generator_us),
        us_cell(c.machine_us),
        opt(c.plugin_share(), |v| format!("{:.1}%", v * 100.0)),
    );
}

/// "CPU per payment (µs)": every closed-loop point of either side.
fn cpu_section(md: &mut String, r: &Report) {
    let _ = writeln!(
        md,
        "\n## CPU per payment (µs)\n\nThe whole machine's CPU over each closed-loop point, per completed payment, by component: Postgres (every `postgres` process, exited backends included), payrail's host (the `payrail serve` children; in-process the bench process, which also runs the load generator), the plugin calls (part of the host's), the load generator (the bench process on the HTTP path; pgbench and its script for the peer) and the whole machine (`/proc/stat`, everything that ran).\n\n| side | workload | clients | tps | postgres | host | plugins | load generator | whole machine | plugins % of machine |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    for run in r.runs.iter().filter(|x| x.processes <= 1) {
        if let Some(c) = &run.cpu {
            let side = format!("payrail {}", run.path.name());
            cpu_row(md, &side, run.workload, run.clients, run.tps, c);
        }
    }
    for p in &r.peer {
        if let (Some(c), Some(tps)) = (&p.cpu, p.tps) {
            cpu_row(md, "peer", p.workload, p.clients, tps, c);
        }
    }
}

/// One row of the WAL table.
fn wal_row(md: &mut String, side: &str, workload: Workload, clients: usize, w: &WalByTable) {
    let cells: Vec<String> = wal::TABLES
        .iter()
        .map(|t| us_cell(w.tables.get(*t).copied()))
        .collect();
    let _ = writeln!(
        md,
        "| {side} | {} | {clients} | {} | {:.1} |",
        workload.name(),
        cells.join(" | "),
        w.window_bytes as f64 / (1024.0 * 1024.0),
    );
}

/// "WAL per payment by table": each side's best point per workload.
fn wal_section(md: &mut String, r: &Report) {
    let _ = writeln!(
        md,
        "\n## WAL per payment by table (bytes)\n\nAt each side's best point per workload: `pg_walinspect` decodes the WAL from the point's start, at most {} MiB of it (a 10 s point writes far more), sums each record's length (full-page images included) under the table of its first block (indexes under their table; the peer's `idempotency` under `idempotency_keys`; commit records and other tables under `other`), and spreads the point's measured WAL per payment by those shares.\n\n| side | workload | clients | {} | window MiB |\n|---|---|---|{}---|",
        wal::WAL_WINDOW_BYTES / (1024 * 1024),
        wal::TABLES.join(" | "),
        "---|".repeat(wal::TABLES.len()),
    );
    for path in [PathKind::InProcess, PathKind::Http] {
        for workload in Workload::ALL {
            if let Some(b) = best(&r.runs, path, workload)
                && let Some(w) = &b.wal
            {
                wal_row(
                    md,
                    &format!("payrail {}", path.name()),
                    workload,
                    b.clients,
                    w,
                );
            }
        }
    }
    for workload in Workload::ALL {
        let Some((_, clients)) = peer_best(&r.peer, workload) else {
            continue;
        };
        let p = r
            .peer
            .iter()
            .find(|p| p.workload == workload && p.clients == clients);
        if let Some(w) = p.and_then(|p| p.wal.as_ref()) {
            wal_row(md, "peer", workload, clients, w);
        }
    }
}

/// "Where each side peaked": the best point of each sweep and whether it
/// lies inside the sweep (below its last client count).
fn peaks_section(md: &mut String, r: &Report) {
    let _ = writeln!(
        md,
        "\n## Where each side peaked\n\nThe sweep {}.\n\n| side | workload | best clients | tps | last clients measured | |\n|---|---|---|---|---|---|",
        if r.sweep_extended {
            "went on past its last client count, doubling, while throughput still rose by 5% at the last point (up to 512 clients, and the server's free connections for the peer)"
        } else {
            "measured the client counts given"
        }
    );
    let mut row = |side: String, w: Workload, points: Vec<(usize, f64)>| {
        let Some(&(best_clients, best_tps)) = points.iter().max_by(|a, b| a.1.total_cmp(&b.1))
        else {
            return;
        };
        let last = points.iter().map(|p| p.0).max().unwrap_or(best_clients);
        let _ = writeln!(
            md,
            "| {side} | {} | {best_clients} | {best_tps:.0} | {last} | {} |",
            w.name(),
            peak_place(&points, best_clients)
        );
    };
    for path in [PathKind::InProcess, PathKind::Http] {
        for w in Workload::ALL {
            let points = r
                .runs
                .iter()
                .filter(|x| x.path == path && x.workload == w && x.processes <= 1)
                .map(|x| (x.clients, x.tps))
                .collect();
            row(format!("payrail {}", path.name()), w, points);
        }
    }
    for w in Workload::ALL {
        let points = r
            .peer
            .iter()
            .filter(|p| p.workload == w)
            .filter_map(|p| Some((p.clients, p.tps?)))
            .collect();
        row("peer".into(), w, points);
    }
}

/// Where the best point of a sweep's `points` (clients, tps, in the order
/// measured) lies: inside the sweep, or at its end with throughput still
/// rising (the extension rule would have gone on: a cap stopped it).
fn peak_place(points: &[(usize, f64)], best_clients: usize) -> &'static str {
    let last = points.last().map(|p| p.0);
    if last != Some(best_clients) {
        "inside the sweep"
    } else if crate::sweep::next_clients(points, usize::MAX, usize::MAX).is_some() {
        "last point, still rising by 5%: capped, the peak may lie further"
    } else {
        "last point, but within 5% of the one before: about the peak"
    }
}

/// "Latency at the same offered load": payrail paced at the peer's rate.
fn same_load_section(md: &mut String, r: &Report) {
    if r.same_load.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "\n## Latency at the same offered load (P3)\n\npayrail's uniform workload paced at {:.0}% of the peer's best uniform tps, the rate of the peer's own paced run, each path on a fresh database after a warm-up. The peer's p99 at that rate: {}.\n",
        LOAD_FRACTION * 100.0,
        opt(
            r.peer_at_load
                .iter()
                .find(|p| p.workload == Workload::Uniform)
                .map(|p| p.latency.p99_ms),
            |v| format!("{v:.2} ms")
        )
    );
    md.push_str(RUN_HEADER);
    for run in &r.same_load {
        run_row(md, run);
    }
}

/// `report.md`.
pub fn markdown(r: &Report) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# payrail bench\n");
    let _ = writeln!(
        md,
        "`{}`  \npayrail {} · seed {} · {} accounts · {} s per point · pool {} per host · {} CPUs  \n{}  \ndurability: synchronous_commit={}, fsync={}{}\n",
        r.command,
        r.version,
        r.seed,
        r.accounts,
        r.secs,
        r.pool_size,
        r.cpus,
        r.postgres,
        r.durability.synchronous_commit,
        r.durability.fsync,
        if r.durability.full {
            " (full)"
        } else {
            " — **NOT full durability: numbers are not comparable**"
        }
    );
    let _ = writeln!(
        md,
        "machine: a `limits` call on an idle core before the load took {:.1} µs (median of {}; CPU {:.1} µs): compare this between reports before their absolute numbers\n",
        r.idle_call.median_us, r.idle_call.calls, r.idle_call.median_cpu_us
    );
    if let Some(f) = r.flush_latency_us {
        let _ = writeln!(
            md,
            "commit flush latency: {f:.0} µs (median one-row insert+commit with synchronous_commit=on minus with it off, {} each): what each commit waits for the disk\n",
            crate::wal::FLUSH_PROBES
        );
    }
    let _ = writeln!(
        md,
        "audit: **{}**\n",
        if r.audit.passed { "passed" } else { "FAILED" }
    );
    for v in &r.audit.violations {
        let _ = writeln!(md, "- VIOLATION {v}");
    }
    let _ = writeln!(
        md,
        "## Targets\n\n| target | what | measured | goal | |\n|---|---|---|---|---|"
    );
    for t in &r.targets {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            t.id,
            t.what,
            t.value,
            t.goal,
            met(t.met)
        );
    }
    if !r.peer_at_load.is_empty() {
        let _ = writeln!(
            md,
            "\nFor reference, the peer paced at {:.0}% of its own peak (section \"Latency at {:.0}% of peak\"): {}.",
            LOAD_FRACTION * 100.0,
            LOAD_FRACTION * 100.0,
            r.peer_at_load
                .iter()
                .map(|p| format!(
                    "{} p99 {:.2} ms at {:.0}/s",
                    p.workload.name(),
                    p.latency.p99_ms,
                    p.tps
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let _ = writeln!(
        md,
        "\n## Ratios: payrail best vs peer best\n\n| path | workload | payrail tps (clients) | peer tps (clients) | ratio |\n|---|---|---|---|---|"
    );
    for x in &r.ratios {
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} ({}) | {} | {} |",
            x.path.name(),
            x.workload.name(),
            x.payrail_tps,
            x.payrail_clients,
            match (x.peer_tps, x.peer_clients) {
                (Some(t), Some(c)) => format!("{t:.0} ({c})"),
                _ => "-".into(),
            },
            opt(x.ratio, |v| format!("{v:.2}x"))
        );
    }
    if !r.paired.is_empty() {
        let _ = writeln!(
            md,
            "\n## Head-to-head: payrail in-process and the peer alternated\n\nEach round runs both at their best client counts of the sweeps, one right after the other (the order alternates), each on a fresh database, so both see the machine in the same state; the sweeps above run minutes apart.\n\n| round | workload | first | payrail tps (clients) | peer tps (clients) | ratio |\n|---|---|---|---|---|---|"
        );
        for p in &r.paired {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.0} ({}) | {} ({}) | {} |",
                p.round,
                p.workload.name(),
                if p.peer_first { "peer" } else { "payrail" },
                p.payrail_tps,
                p.payrail_clients,
                opt(p.peer_tps, |v| format!("{v:.0}")),
                p.peer_clients,
                opt(p.ratio(), |v| format!("{v:.2}x"))
            );
        }
        for w in Workload::ALL {
            if let Some(m) = paired_ratio(&r.paired, w) {
                let _ = writeln!(md, "\nmedian ratio, {}: **{m:.2}x**", w.name());
            }
        }
    }
    peaks_section(&mut md, r);
    let _ = writeln!(md, "\n![throughput vs concurrency](throughput.svg)\n");
    let _ = writeln!(
        md,
        "## Closed loop: throughput and latency by concurrency\n"
    );
    md.push_str(RUN_HEADER);
    for run in &r.runs {
        run_row(&mut md, run);
    }
    cpu_section(&mut md, r);
    wal_section(&mut md, r);
    let _ = writeln!(
        md,
        "\n## Latency at {:.0}% and {:.0}% of peak (paced, open loop; latency from each payment's scheduled start; on the database the sweep grew)\n",
        LOAD_FRACTION * 100.0,
        LOW_LOAD_FRACTION * 100.0
    );
    md.push_str(RUN_HEADER);
    for run in &r.at_load {
        run_row(&mut md, run);
    }
    if !r.peer_at_load.is_empty() {
        let _ = writeln!(
            md,
            "\nThe peer, paced the same way (pgbench `--rate`, Poisson arrivals, its best client count; latency from each transaction's scheduled start):\n\n| workload | clients | paced at tps | tps | p50 ms | p99 ms | p99.9 ms | max ms | WAL / DB growth, B per payment |\n|---|---|---|---|---|---|---|---|---|"
        );
        for p in &r.peer_at_load {
            peer_paced_row(&mut md, p);
        }
    }
    same_load_section(&mut md, r);
    let _ = writeln!(md, "\n![latency distribution](latency.svg)\n");
    let _ = writeln!(
        md,
        "## Peer (PL/pgSQL + pgbench, same server)\n\n| workload | clients | tps | |\n|---|---|---|---|"
    );
    for p in &r.peer {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            p.workload.name(),
            p.clients,
            opt(p.tps, |t| format!("{t:.0}")),
            p.note.as_deref().unwrap_or("")
        );
    }
    if !r.scale_out.is_empty() {
        let _ = writeln!(
            md,
            "\n## Scale-out: several `payrail serve` processes, one Postgres\n\n| workload | clients | processes | tps | one process tps | speedup | lock wait mean ms (N / one) | payments put back |\n|---|---|---|---|---|---|---|---|"
        );
        for s in &r.scale_out {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.0} | {:.0} | {:.2}x | {} / {} | {} |",
                s.workload.name(),
                s.clients,
                s.processes,
                s.tps,
                s.one_process_tps,
                s.speedup,
                opt(s.run.lock_wait_mean_ms, |m| format!("{m:.2}")),
                opt(s.one_process_lock_wait_mean_ms, |m| format!("{m:.2}")),
                opt(s.run.batch_deferrals.map(|d| d as f64), |d| format!(
                    "{d:.0}"
                )),
            );
        }
    }
    let _ = writeln!(md, "\n## How to read this\n");
    for n in &r.notes {
        let _ = writeln!(md, "- {n}");
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(round: usize, workload: Workload, ours: f64, theirs: Option<f64>) -> PairedRound {
        PairedRound {
            round,
            workload,
            peer_first: round % 2 == 1,
            payrail_clients: 256,
            payrail_tps: ours,
            payrail_errors: 0,
            peer_clients: 16,
            peer_tps: theirs,
        }
    }

    #[test]
    fn the_peak_is_placed_in_its_sweep() {
        let inside = [(16, 1000.0), (32, 1200.0), (64, 1100.0)];
        assert_eq!(peak_place(&inside, 32), "inside the sweep");
        let rising = [(16, 1000.0), (32, 1200.0)];
        assert!(peak_place(&rising, 32).contains("capped"));
        let flat = [(16, 1000.0), (32, 1020.0)];
        assert!(peak_place(&flat, 32).contains("about the peak"));
    }

    #[test]
    fn the_paired_ratio_is_the_median_of_the_rounds_of_its_workload() {
        let u = Workload::Uniform;
        let h = Workload::HotFee;
        let rounds = [
            round(1, u, 3000.0, Some(1000.0)),
            round(1, h, 100.0, Some(1000.0)),
            round(2, u, 1000.0, Some(1000.0)),
            round(3, u, 2000.0, Some(1000.0)),
        ];
        assert_eq!(paired_ratio(&rounds, u), Some(2.0), "odd count: the middle");
        assert_eq!(paired_ratio(&rounds, h), Some(0.1));
        assert_eq!(
            paired_ratio(&rounds[..3], u),
            Some(2.0),
            "even count: the mean of the middle two (1x and 3x)"
        );
        let failed = [round(1, u, 3000.0, None), round(2, u, 3000.0, Some(0.0))];
        assert_eq!(failed[0].ratio(), None, "pgbench failed");
        assert_eq!(paired_ratio(&failed, u), None, "no round measured");
        assert_eq!(paired_ratio(&[], u), None);
    }
}
