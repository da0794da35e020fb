//! `payrail-bench` (also run as `payrail bench`): the standard benchmark
//! (issue 6, extended by issue 20). A crate of its own so the server
//! library carries neither the load generators nor their HTTP client; it
//! uses the library as any embedder would, plus `payrail serve` children
//! for the HTTP path.
//!
//! On a fresh database per path it runs three workloads, `uniform` (random
//! transfers among `--accounts` customers, pipeline `limits`), `hot_fee`
//! (the same plus `fee`, crediting one fee account on every payment) and
//! `spread_fee` (the fee spread over 64 fee accounts), over two paths,
//! reported separately: in-process (`Processor::pay` from tasks) and HTTP
//! (keep-alive clients POSTing to a real `payrail serve` child on a real
//! socket). For each it sweeps `--concurrency` (closed loop, `--secs` per
//! point; the default list extends while throughput rises), then paces
//! runs at 80% and 50% of the peak to read the latency there. Every
//! closed-loop point also reads the machine's CPU per payment by component
//! (`cpu.rs`) and its WAL per payment by table (`wal.rs`).
//! With `--serve-processes N` it repeats the best HTTP point over N serve
//! processes. Then the PL/pgSQL peer (`bench/baseline/run.sh`) runs with
//! the same client counts on the same Postgres, one point per call, and
//! once paced at 80% of its best; payrail is paced at that same rate on
//! each path (fresh databases); then `--paired-rounds`
//! head-to-head rounds alternate the peer and payrail in-process at their
//! best client counts, and `payrail audit` checks each bench database
//! before it is dropped or at the end. Durability is the server's own (nothing is set; the
//! report shows `synchronous_commit` and `fsync`, and the commit flush
//! latency).
//!
//! The report goes to `--out`: `report.md`, `report.json`,
//! `throughput.svg`, `latency.svg` and the serve children's logs.

pub mod chart;
pub mod cpu;
pub mod driver;
pub mod http;
pub mod locks;
pub mod peer;
pub mod report;
pub mod sweep;
pub mod sys;
pub mod wal;
pub mod workload;
pub mod writes;
pub mod yardstick;

use clap::Args;
use driver::{RunSamples, Target};
use http::{HttpTarget, ServeChild, ServeMetrics};
use payrail::apikeys::{self, Scope};
use payrail::audit;
use payrail::config::Config;
use payrail::context::Context;
use payrail::db;
use payrail::engine::{PluginEngine, PluginLimits};
use payrail::error::{Error, Result};
use payrail::model::DEFAULT_TENANT;
use payrail::processor::{Processor, ProcessorSettings};
use report::{
    AuditResult, Durability, HostReadings, IdleCall, LOAD_FRACTION, PairedRound, PathKind,
    PluginTotals, Report, RunResult, ScaleOut,
};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use sys::Proc;
use workload::Workload;

/// Most concurrent clients of one point (payrail serve admits 1024
/// requests in flight by default).
pub const MAX_CLIENTS: usize = 512;
/// Longest measured point, s.
pub const MAX_SECS: u64 = 600;
/// Most points in one sweep.
pub const MAX_POINTS: usize = 16;
/// Most customer accounts.
pub const MAX_ACCOUNTS: usize = 5_000_000;
/// Most `payrail serve` processes of the scale-out check.
pub const MAX_SERVE_PROCESSES: usize = 8;
/// Longest warm-up, s.
pub const MAX_WARMUP_SECS: u64 = 60;
/// Most rounds of the head-to-head phase.
pub const MAX_PAIRED_ROUNDS: usize = 10;
/// The head-to-head phase's database is `--database` with this suffix.
pub const HEAD_TO_HEAD_SUFFIX: &str = "_h2h";
/// The environment variable naming the `payrail` binary of the HTTP path
/// (see [`payrail_binary`]).
pub const PAYRAIL_BIN: &str = "PAYRAIL_BIN";
/// The bench drops and recreates its database: only names with this
/// prefix, so a typo cannot drop a real database.
pub const DATABASE_PREFIX: &str = "payrail_bench";

/// Options of `payrail bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Seconds per measured point: every closed-loop point, every paced
    /// run and every peer point.
    #[arg(long, default_value_t = 10)]
    pub secs: u64,
    /// Concurrent clients to sweep, comma-separated (payrail clients and
    /// pgbench clients alike). With the default list the sweep goes on
    /// past its last count, doubling, while throughput still rose by 5% at
    /// the last point (up to 512 clients, and the server's free
    /// connections for the peer); a list given explicitly is measured as
    /// given.
    #[arg(long, value_delimiter = ',', default_values_t = sweep::DEFAULT_CONCURRENCY)]
    pub concurrency: Vec<usize>,
    /// Keep to the default client counts (no extension of the sweep).
    #[arg(long)]
    pub no_extend: bool,
    /// Customer accounts.
    #[arg(long, default_value_t = 100_000)]
    pub accounts: usize,
    /// Workloads to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_values = ["uniform", "hot_fee", "spread_fee"])]
    pub workloads: Vec<Workload>,
    /// Paths to drive payrail over, comma-separated.
    #[arg(long, value_delimiter = ',', default_values = ["in-process", "http"])]
    pub paths: Vec<PathKind>,
    /// Scale-out check: also run the best HTTP point over this many
    /// `payrail serve` processes on the one database (1: no check).
    #[arg(long, default_value_t = 1)]
    pub serve_processes: usize,
    /// Unmeasured warm-up per path and workload, s.
    #[arg(long, default_value_t = 1)]
    pub warmup_secs: u64,
    /// The peer's script; default: the repository's `bench/baseline/run.sh`.
    #[arg(long)]
    pub baseline: Option<PathBuf>,
    /// Run payrail only (no ratios, P1 not measured).
    #[arg(long)]
    pub skip_baseline: bool,
    /// Head-to-head rounds after the sweeps: payrail in-process and the
    /// peer, each at its best client count, one right after the other (the
    /// order alternating), `--secs` each. Their median ratio is a second P1
    /// reading that the machine's drift over the bench does not bias. 0:
    /// none.
    #[arg(long, default_value_t = 2)]
    pub paired_rounds: usize,
    /// Database the bench drops and recreates (must start with
    /// `payrail_bench`).
    #[arg(long, default_value = DATABASE_PREFIX)]
    pub database: String,
    /// Where the report goes.
    #[arg(long, default_value = "target/bench-report")]
    pub out: PathBuf,
    /// Seed of the workload (printed; the same seed draws the same
    /// payments).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Also count the host's instructions per payment with callgrind and
    /// add them to the report (needs valgrind; 1-2 minutes more): see
    /// docs/performance.md, "The yardstick".
    #[arg(long)]
    pub yardstick: bool,
    /// Instead of the standard bench: the same workloads in process under
    /// each of these lock services, comma-separated (`advisory`, `redis`
    /// at `REDIS_URL`, `file`), side by side (docs/locking.md, "Which lock
    /// should a payment system use?"). Workloads default to uniform,
    /// hot_fee and hot_pair here.
    #[arg(long, value_delimiter = ',')]
    pub locks: Vec<locks::LockKind>,
    /// Clients of each `--locks` point.
    #[arg(long, default_value_t = 64)]
    pub lock_clients: usize,
}

fn invalid(msg: String) -> Error {
    Error::invalid("invalid_bench", msg)
}

impl BenchArgs {
    /// Checks every option against its limit.
    pub fn validate(&self) -> Result<()> {
        if !(1..=MAX_SECS).contains(&self.secs) {
            return Err(invalid(format!("--secs must be 1 to {MAX_SECS}")));
        }
        if self.concurrency.is_empty() || self.concurrency.len() > MAX_POINTS {
            return Err(invalid(format!(
                "--concurrency takes 1 to {MAX_POINTS} client counts"
            )));
        }
        if let Some(c) = self
            .concurrency
            .iter()
            .find(|c| !(1..=MAX_CLIENTS).contains(*c))
        {
            return Err(invalid(format!(
                "--concurrency {c}: each count must be 1 to {MAX_CLIENTS}"
            )));
        }
        if !(2..=MAX_ACCOUNTS).contains(&self.accounts) {
            return Err(invalid(format!("--accounts must be 2 to {MAX_ACCOUNTS}")));
        }
        if self.workloads.is_empty() || self.paths.is_empty() {
            return Err(invalid("give at least one workload and one path".into()));
        }
        if !(1..=MAX_SERVE_PROCESSES).contains(&self.serve_processes) {
            return Err(invalid(format!(
                "--serve-processes must be 1 to {MAX_SERVE_PROCESSES}"
            )));
        }
        if self.serve_processes > 1 && !self.paths.contains(&PathKind::Http) {
            return Err(invalid(
                "--serve-processes needs the http path (--paths http)".into(),
            ));
        }
        if self.paired_rounds > MAX_PAIRED_ROUNDS {
            return Err(invalid(format!(
                "--paired-rounds must be at most {MAX_PAIRED_ROUNDS}"
            )));
        }
        if self.warmup_secs > MAX_WARMUP_SECS {
            return Err(invalid(format!(
                "--warmup-secs must be at most {MAX_WARMUP_SECS}"
            )));
        }
        let name_ok = self.database.len() <= 63 - HEAD_TO_HEAD_SUFFIX.len()
            && self.database.starts_with(DATABASE_PREFIX)
            && self
                .database
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !name_ok {
            return Err(invalid(format!(
                "--database {:?}: the bench drops and recreates it, so it must start with {DATABASE_PREFIX:?} and hold only a-z, 0-9 and _ (at most 59 bytes: the head-to-head phase adds {HEAD_TO_HEAD_SUFFIX:?})",
                self.database
            )));
        }
        Ok(())
    }

    /// Whether sweeps go on past the last client count (see
    /// `--concurrency`): only the default list extends, so an explicit
    /// list (a CI smoke run's) costs what it says.
    pub fn extends_sweep(&self) -> bool {
        !self.no_extend && self.concurrency == sweep::DEFAULT_CONCURRENCY
    }

    /// The database of the head-to-head rounds.
    fn head_to_head_database(&self) -> String {
        format!("{}{HEAD_TO_HEAD_SUFFIX}", self.database)
    }

    /// Rough wall time of the whole bench, s (for the banner).
    fn estimate_secs(&self) -> u64 {
        let points = self.concurrency.len() as u64;
        let w = self.workloads.len() as u64;
        // the sweep, then paced at 80% and 50% of the peak
        let per_path = w * (self.warmup_secs + (points + 2) * self.secs);
        let scale = if self.serve_processes > 1 {
            w * self.secs
        } else {
            0
        };
        let peer = if self.skip_baseline {
            0
        } else {
            // the sweep, one paced run per workload, then payrail paced at
            // the peer's rate on each path (with a setup)
            w * points * self.secs
                + w * self.secs
                + self.paths.len() as u64 * (self.warmup_secs + self.secs + 15)
        };
        let paired = if self.skip_baseline || !self.paths.contains(&PathKind::InProcess) {
            0
        } else {
            // payrail and the peer per workload, plus both setups
            self.paired_rounds as u64 * (2 * w * self.secs + 15)
        };
        self.paths.len() as u64 * per_path + scale + peer + paired
    }
}

/// Where the host of a run lives, for its CPU, RSS and metrics.
enum Hosts<'a> {
    /// This process.
    Current,
    /// `payrail serve` children, with the client that reads their metrics.
    Children(&'a [ServeChild], &'a HttpTarget),
}

/// Readings taken before a run.
struct Before {
    cpu: Option<Duration>,
    metrics: Option<ServeMetrics>,
}

impl Hosts<'_> {
    /// `payrail serve` processes (0: in-process).
    fn processes(&self) -> usize {
        match self {
            Hosts::Current => 0,
            Hosts::Children(c, _) => c.len(),
        }
    }

    /// The CPU split of run `r` between two snapshots.
    fn cpu_split(
        &self,
        before: &cpu::Snapshot,
        after: &cpu::Snapshot,
        host: &HostReadings,
        r: &RunResult,
    ) -> cpu::CpuSplit {
        let side = match self {
            Hosts::Current => cpu::Side::InProcess,
            Hosts::Children(..) => cpu::Side::Http { host: host.cpu },
        };
        cpu::CpuSplit::of(side, before, after, r.payments, r.plugin.cpu_per_payment_us)
    }

    fn cpu(&self) -> Option<Duration> {
        match self {
            Hosts::Current => sys::cpu_time(Proc::Current),
            Hosts::Children(children, _) => children.iter().map(|c| c.cpu_time()).sum(),
        }
    }

    async fn before(&self) -> Result<Before> {
        if let Hosts::Current = self {
            sys::reset_peak_rss(Proc::Current);
        }
        Ok(Before {
            cpu: self.cpu(),
            metrics: match self {
                Hosts::Current => None,
                Hosts::Children(_, t) => Some(t.metrics().await?),
            },
        })
    }

    async fn after(&self, before: &Before) -> Result<HostReadings> {
        let cpu = self.cpu().zip(before.cpu).map(|(a, b)| a.saturating_sub(b));
        let (peak_rss, metrics) = match self {
            Hosts::Current => (sys::peak_rss_bytes(Proc::Current), None),
            Hosts::Children(children, t) => (
                children.iter().filter_map(|c| c.peak_rss_bytes()).max(),
                Some(t.metrics().await?),
            ),
        };
        let delta = metrics.zip(before.metrics).map(|(a, b)| a.since(&b));
        Ok(HostReadings {
            cpu,
            peak_rss,
            plugin: delta.map(|d| PluginTotals {
                wall_seconds: d.plugin_seconds,
                calls: d.plugin_calls,
                sampled_cpu_seconds: d.plugin_cpu_seconds,
                sampled_calls: d.plugin_cpu_calls,
            }),
            lock_seconds_count: delta.map(|d| (d.lock_wait_seconds, d.lock_waits)),
            batch_deferrals: delta.map(|d| d.batch_deferrals),
        })
    }
}

/// What the head-to-head phase needs of the server besides the bench.
struct HeadToHead<'a> {
    ctx: &'a Context,
    admin: &'a tokio_postgres::Client,
    admin_url: &'a str,
    /// The peer's script.
    script: &'a std::path::Path,
    /// payrail's processor settings, as for the sweeps.
    settings: ProcessorSettings,
    pool_size: usize,
}

/// The peer's side of a head-to-head round: a fresh database, then each
/// `(workload, _, peer clients)` of `pairs`.
async fn peer_round(
    h: &HeadToHead<'_>,
    args: &BenchArgs,
    pairs: &[(Workload, usize, usize)],
) -> Result<Vec<peer::PeerPoint>> {
    let (secs, accounts) = (args.secs, args.accounts);
    peer::setup(h.script, h.admin_url, accounts).await?;
    let mut points = Vec::new();
    for &(w, _, clients) in pairs {
        points.push(peer::run_point(h.script, h.admin_url, secs, w, clients, accounts).await?);
    }
    Ok(points)
}

/// What the same-load phase needs of the server besides the bench.
struct SameLoad<'a> {
    ctx: &'a Context,
    admin: &'a tokio_postgres::Client,
    settings: ProcessorSettings,
    pool_size: usize,
}

/// One audit violation as the report lists it.
fn violation_text(v: &audit::Violation) -> String {
    format!("{}: {}", v.check, v.detail)
}

/// The state of one bench invocation.
struct Bench<'a> {
    args: &'a BenchArgs,
    seed: u64,
    runs: u64,
    /// A connection to the server's `postgres` database, for its counters.
    admin: &'a tokio_postgres::Client,
    /// The URL of the database payrail runs on now (for its WAL by table).
    url: String,
    /// That database's name (for its growth).
    database: String,
}

impl Bench<'_> {
    /// The server's write counters for the bench database.
    async fn writes(&self) -> Option<writes::Counters> {
        writes::read(self.admin, &self.database).await
    }

    /// A key prefix and seed unique to the next run.
    fn next_run(&mut self) -> (String, u64) {
        self.runs += 1;
        (
            format!("r{}", self.runs),
            self.seed
                .wrapping_add(self.runs.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
        )
    }

    async fn closed(
        &mut self,
        target: &Target,
        workload: Workload,
        clients: usize,
        secs: u64,
    ) -> Result<RunSamples> {
        let (prefix, seed) = self.next_run();
        driver::closed_loop(
            target,
            workload,
            self.args.accounts,
            clients,
            Duration::from_secs(secs),
            seed,
            &prefix,
        )
        .await
    }

    /// Warm-up, the concurrency sweep and the paced runs of one path.
    async fn measure_path(
        &mut self,
        target: &Target,
        path: PathKind,
        hosts: &Hosts<'_>,
        runs: &mut Vec<RunResult>,
        at_load: &mut Vec<RunResult>,
    ) -> Result<()> {
        for &workload in &self.args.workloads {
            if self.args.warmup_secs > 0 {
                self.closed(
                    target,
                    workload,
                    self.args.concurrency[0],
                    self.args.warmup_secs,
                )
                .await?;
            }
            let mut counts = self.args.concurrency.clone();
            let mut i = 0;
            while let Some(&clients) = counts.get(i) {
                let r = self
                    .closed_point(target, path, hosts, workload, clients)
                    .await?;
                runs.push(r);
                i += 1;
                if i == counts.len() && self.args.extends_sweep() {
                    let points: Vec<(usize, f64)> = runs
                        .iter()
                        .filter(|r| r.path == path && r.workload == workload)
                        .map(|r| (r.clients, r.tps))
                        .collect();
                    counts.extend(sweep::next_clients(&points, MAX_CLIENTS, MAX_POINTS));
                }
            }
            let peak = report::best(runs, path, workload)
                .map(|r| r.tps)
                .unwrap_or(0.0);
            // P3 reads the latency at 80% of the peak, and at 50% for a
            // second, lighter point (on the database the sweep grew)
            for fraction in [LOAD_FRACTION, report::LOW_LOAD_FRACTION] {
                if peak * fraction < 1.0 {
                    continue;
                }
                let mut r = self
                    .paced_point(target, path, hosts, workload, peak * fraction)
                    .await?;
                r.load_fraction = Some(fraction);
                at_load.push(r);
            }
        }
        Ok(())
    }

    /// One closed-loop point: the run and what it cost (host, CPU split,
    /// writes, WAL by table).
    async fn closed_point(
        &mut self,
        target: &Target,
        path: PathKind,
        hosts: &Hosts<'_>,
        workload: Workload,
        clients: usize,
    ) -> Result<RunResult> {
        let before = hosts.before().await?;
        let written = self.writes().await;
        let cpu_before = cpu::Snapshot::take();
        let s = self
            .closed(target, workload, clients, self.args.secs)
            .await?;
        let cpu_after = cpu::Snapshot::take();
        let host = hosts.after(&before).await?;
        let mut r = RunResult::new(
            path,
            workload,
            clients,
            hosts.processes(),
            s.samples,
            s.elapsed,
            host,
        );
        let after = self.writes().await;
        r.writes = writes::per_payment(written, after, r.payments);
        r.cpu = Some(hosts.cpu_split(&cpu_before, &cpu_after, &host, &r));
        r.wal = wal_by_table(&self.url, written, after, r.writes).await;
        print_run(&r);
        Ok(r)
    }

    /// One paced run at `rate` payments/s.
    async fn paced_point(
        &mut self,
        target: &Target,
        path: PathKind,
        hosts: &Hosts<'_>,
        workload: Workload,
        rate: f64,
    ) -> Result<RunResult> {
        let max_in_flight = self.max_clients().saturating_mul(2).clamp(64, MAX_CLIENTS);
        let (prefix, seed) = self.next_run();
        let before = hosts.before().await?;
        let written = self.writes().await;
        let cpu_before = cpu::Snapshot::take();
        let s = driver::rate_limited(
            target,
            workload,
            self.args.accounts,
            rate,
            max_in_flight,
            Duration::from_secs(self.args.secs),
            seed,
            &prefix,
        )
        .await?;
        let cpu_after = cpu::Snapshot::take();
        let host = hosts.after(&before).await?;
        let mut r = RunResult::new(
            path,
            workload,
            max_in_flight,
            hosts.processes(),
            s.samples,
            s.elapsed,
            host,
        );
        r.target_tps = Some(rate);
        r.writes = writes::per_payment(written, self.writes().await, r.payments);
        r.cpu = Some(hosts.cpu_split(&cpu_before, &cpu_after, &host, &r));
        print_run(&r);
        Ok(r)
    }

    /// The head-to-head phase: `--paired-rounds` rounds, each running the
    /// peer and payrail in-process at their best client counts of the
    /// sweeps, back to back, the order alternating between rounds. The
    /// sweeps run minutes apart, and on a shared machine the disk (which
    /// bounds the peer, one commit per payment) and the CPU (which bounds
    /// payrail) drift independently over that time. Both start each round
    /// on a fresh database, as the peer's script always does: payrail's
    /// own would otherwise carry every payment of the sweeps. Returns the
    /// rounds and the audit violations of payrail's databases.
    async fn head_to_head(
        &mut self,
        h: &HeadToHead<'_>,
        runs: &[RunResult],
        peer_points: &[peer::PeerPoint],
    ) -> Result<(Vec<PairedRound>, Vec<String>)> {
        let pairs: Vec<(Workload, usize, usize)> = self
            .args
            .workloads
            .iter()
            .filter_map(|&w| {
                let ours = report::best(runs, PathKind::InProcess, w)?.clients;
                let theirs = report::peer_best(peer_points, w)?.1;
                Some((w, ours, theirs))
            })
            .collect();
        let args = self.args;
        let mut out = Vec::new();
        let mut violations = Vec::new();
        for round in 1..=self.args.paired_rounds {
            // odd rounds: the peer first; even rounds: payrail first
            let peer_first = round % 2 == 1;
            let (ours, theirs) = if peer_first {
                let theirs = peer_round(h, args, &pairs).await?;
                (self.paired_points(h, &pairs).await?, theirs)
            } else {
                let ours = self.paired_points(h, &pairs).await?;
                (ours, peer_round(h, args, &pairs).await?)
            };
            violations.extend(
                ours.1
                    .into_iter()
                    .map(|v| format!("head-to-head round {round}: {v}")),
            );
            for (&(workload, clients, peer_clients), (tps, errors)) in pairs.iter().zip(ours.0) {
                let peer_tps = theirs
                    .iter()
                    .find(|p| p.workload == workload && p.clients == peer_clients)
                    .and_then(|p| p.tps);
                let r = PairedRound {
                    round,
                    workload,
                    peer_first,
                    payrail_clients: clients,
                    payrail_tps: tps,
                    payrail_errors: errors,
                    peer_clients,
                    peer_tps,
                };
                println!(
                    "paired   round={round} workload={} payrail={tps:.0} ({clients} clients) peer={} ({peer_clients} clients) ratio={}",
                    workload.name(),
                    peer_tps
                        .map(|t| format!("{t:.0}"))
                        .unwrap_or_else(|| "-".into()),
                    r.ratio()
                        .map(|x| format!("{x:.2}x"))
                        .unwrap_or_else(|| "-".into()),
                );
                out.push(r);
            }
        }
        // Audited round by round; unlike the sweeps' database, nothing is
        // left in it worth a look.
        h.admin
            .batch_execute(&format!(
                "drop database if exists {} with (force)",
                self.args.head_to_head_database()
            ))
            .await?;
        Ok((out, violations))
    }

    /// payrail in-process, on a fresh database, at each `(workload,
    /// clients, _)` of `pairs` for `--secs`: throughput and failed payments
    /// of each, then the database's audit violations.
    async fn paired_points(
        &mut self,
        h: &HeadToHead<'_>,
        pairs: &[(Workload, usize, usize)],
    ) -> Result<(Vec<(f64, u64)>, Vec<String>)> {
        let (_, pool) = fresh_database(
            h.ctx,
            h.admin,
            &self.args.head_to_head_database(),
            h.pool_size,
            self.args.accounts,
        )
        .await?;
        let target = Target::InProcess(Box::new(Processor::new(
            pool.clone(),
            h.ctx.engine.clone(),
            h.settings,
        )));
        let mut points = Vec::new();
        for &(workload, clients, _) in pairs {
            let s = self
                .closed(&target, workload, clients, self.args.secs)
                .await?;
            let tps = s.samples.completed() as f64 / s.elapsed.as_secs_f64();
            points.push((tps, s.samples.errors));
        }
        drop(target);
        let violations = audit::run(&mut pool.get().await?).await?;
        Ok((points, violations.iter().map(violation_text).collect()))
    }

    /// P3 at the same offered load: payrail's uniform workload paced at
    /// `rate` (80% of the peer's best uniform tps: the rate of the peer's
    /// own paced run) on each path, each on a fresh database after a
    /// warm-up. Returns the runs and the databases' audit violations.
    async fn same_load(
        &mut self,
        h: &SameLoad<'_>,
        rate: f64,
    ) -> Result<(Vec<RunResult>, Vec<String>)> {
        let name = self.args.head_to_head_database();
        let (pool_size, accounts) = (h.pool_size, self.args.accounts);
        let mut out = Vec::new();
        let mut violations = Vec::new();
        for &path in &self.args.paths {
            let (url, pool) = fresh_database(h.ctx, h.admin, &name, pool_size, accounts).await?;
            self.url = url.clone();
            self.database = name.clone();
            let w = Workload::Uniform;
            let warmup = (self.args.concurrency[0], self.args.warmup_secs);
            let r = if path == PathKind::InProcess {
                let p = Processor::new(pool.clone(), h.ctx.engine.clone(), h.settings);
                let target = Target::InProcess(Box::new(p));
                if warmup.1 > 0 {
                    self.closed(&target, w, warmup.0, warmup.1).await?;
                }
                self.paced_point(&target, path, &Hosts::Current, w, rate)
                    .await?
            } else {
                let secret =
                    apikeys::create(&pool.get().await?, DEFAULT_TENANT, &[Scope::Payments])
                        .await?
                        .secret;
                let children = start_children(1, &url, pool_size, &self.args.out).await?;
                let base = vec![children[0].base_url.clone()];
                let client = Arc::new(HttpTarget::new(base, secret, MAX_CLIENTS)?);
                let target = Target::Http(client.clone());
                let hosts = Hosts::Children(&children, &client);
                let mut measure = async || -> Result<RunResult> {
                    if warmup.1 > 0 {
                        self.closed(&target, w, warmup.0, warmup.1).await?;
                    }
                    self.paced_point(&target, path, &hosts, w, rate).await
                };
                let r = measure().await;
                stop_children(children).await;
                r?
            };
            out.push(r);
            let found = audit::run(&mut pool.get().await?).await?;
            violations.extend(
                found
                    .iter()
                    .map(|v| format!("same-load phase: {}", violation_text(v))),
            );
        }
        h.admin
            .batch_execute(&format!("drop database if exists {name} with (force)"))
            .await?;
        self.database = self.args.database.clone();
        Ok((out, violations))
    }

    /// The peer's sweep on a fresh database of its own: every workload
    /// over the client counts (extended as payrail's are, up to the
    /// server's free connections), with each point's CPU split, writes and
    /// WAL by table.
    async fn peer_sweep(
        &self,
        script: &std::path::Path,
        admin_url: &str,
        url: &str,
    ) -> Result<Vec<peer::PeerPoint>> {
        println!("peer     {} setting up", script.display());
        peer::setup(script, admin_url, self.args.accounts).await?;
        let free = peer::free_connections(self.admin).await?;
        let cap = usize::try_from(free).unwrap_or(0).min(MAX_CLIENTS);
        let peer_url = db::url_with_database(url, peer::DATABASE);
        let mut points: Vec<peer::PeerPoint> = Vec::new();
        for &workload in &self.args.workloads {
            let mut counts = self.args.concurrency.clone();
            let mut i = 0;
            while let Some(&clients) = counts.get(i) {
                i += 1;
                points.push(if clients > cap {
                    let note = peer::does_not_fit(clients, free);
                    peer::PeerPoint::skipped(workload, clients, note)
                } else {
                    self.peer_point(script, admin_url, &peer_url, workload, clients)
                        .await?
                });
                if i == counts.len() && self.args.extends_sweep() {
                    let measured: Vec<(usize, f64)> = points
                        .iter()
                        .filter(|p| p.workload == workload)
                        .filter_map(|p| Some((p.clients, p.tps?)))
                        .collect();
                    counts.extend(sweep::next_clients(&measured, cap, MAX_POINTS));
                }
            }
        }
        Ok(points)
    }

    /// One point of the peer and what it cost.
    async fn peer_point(
        &self,
        script: &std::path::Path,
        admin_url: &str,
        peer_url: &str,
        workload: Workload,
        clients: usize,
    ) -> Result<peer::PeerPoint> {
        let written = writes::read(self.admin, peer::DATABASE).await;
        let cpu_before = cpu::Snapshot::take();
        let (secs, accounts) = (self.args.secs, self.args.accounts);
        let mut p = peer::run_point(script, admin_url, secs, workload, clients, accounts).await?;
        let cpu_after = cpu::Snapshot::take();
        let after = writes::read(self.admin, peer::DATABASE).await;
        if let Some(n) = p.transactions.filter(|_| p.tps.is_some()) {
            let side = cpu::Side::Peer;
            p.cpu = Some(cpu::CpuSplit::of(side, &cpu_before, &cpu_after, n, None));
            p.writes = writes::per_payment(written, after, n);
            p.wal = wal_by_table(peer_url, written, after, p.writes).await;
        }
        Ok(p)
    }

    fn max_clients(&self) -> usize {
        self.args.concurrency.iter().copied().max().unwrap_or(1)
    }
}

fn print_run(r: &RunResult) {
    let lock = r
        .lock_wait
        .as_ref()
        .map(|l| format!(" lock_wait_p99={:.2}ms", l.p99_ms))
        .or_else(|| {
            r.lock_wait_mean_ms
                .map(|m| format!(" lock_wait_mean={m:.2}ms"))
        })
        .unwrap_or_default();
    let us = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v:.1}us"));
    println!(
        "payrail  path={} workload={} {}={}{}{} tps={:.0} p50={:.2}ms p99={:.2}ms p99.9={:.2}ms errors={} plugin/payment={} plugin_cpu/payment={}{lock}",
        r.path.name(),
        r.workload.name(),
        if r.target_tps.is_some() {
            "max_in_flight"
        } else {
            "clients"
        },
        r.clients,
        if r.processes > 1 {
            format!(" processes={}", r.processes)
        } else {
            String::new()
        },
        r.target_tps
            .map(|t| format!(" paced_at={t:.0}/s"))
            .unwrap_or_default(),
        r.tps,
        r.latency.p50_ms,
        r.latency.p99_ms,
        r.latency.p999_ms,
        r.errors,
        us(r.plugin.per_payment_us),
        us(r.plugin.cpu_per_payment_us),
    );
    if let Some(e) = &r.first_error {
        println!("         first error: {e}");
    }
}

/// The peer paced at [`LOAD_FRACTION`] of its best tps per workload, with
/// its best client count, on the database its sweep left behind: its
/// latency at load, measured as payrail's paced run is (from each
/// transaction's scheduled start).
async fn peer_paced(
    args: &BenchArgs,
    url: &str,
    admin: &tokio_postgres::Client,
    peer_points: &[peer::PeerPoint],
) -> Result<Vec<peer::PeerPaced>> {
    let db_url = db::url_with_database(url, peer::DATABASE);
    let mut out = Vec::new();
    for &workload in &args.workloads {
        let Some((best_tps, clients)) = report::peer_best(peer_points, workload) else {
            continue;
        };
        let rate = best_tps * LOAD_FRACTION;
        if rate < 1.0 {
            continue;
        }
        let written = writes::read(admin, peer::DATABASE).await;
        let mut p = peer::paced(
            &db_url,
            workload,
            args.accounts,
            clients,
            rate,
            args.secs,
            &args.out.join(".peer-paced"),
        )
        .await?;
        p.writes = writes::per_payment(
            written,
            writes::read(admin, peer::DATABASE).await,
            p.latency.count as u64,
        );
        println!(
            "peer     paced workload={} rate={rate:.0} clients={clients}: {:.0} tps p50={:.2} ms p99={:.2} ms p99.9={:.2} ms",
            workload.name(),
            p.tps,
            p.latency.p50_ms,
            p.latency.p99_ms,
            p.latency.p999_ms
        );
        out.push(p);
    }
    Ok(out)
}

/// Drops and recreates database `name` on the server of `ctx`, then
/// migrates it, deploys the sample plugins and opens `accounts` customer
/// accounts: the state every measured phase starts from. Returns its URL
/// and a pool of `pool_size` on it.
async fn fresh_database(
    ctx: &Context,
    admin: &tokio_postgres::Client,
    name: &str,
    pool_size: usize,
    accounts: usize,
) -> Result<(String, db::Pool)> {
    assert!(
        name.starts_with(DATABASE_PREFIX),
        "only bench databases are dropped"
    );
    // Two statements: DROP/CREATE DATABASE refuse to run in one batch.
    admin
        .batch_execute(&format!("drop database if exists {name} with (force)"))
        .await?;
    admin
        .batch_execute(&format!("create database {name}"))
        .await?;
    let url = db::url_with_database(&ctx.url, name);
    let pool = db::pool(&url, pool_size)?;
    let t = Instant::now();
    workload::setup(&pool, &ctx.engine, accounts).await?;
    println!(
        "setup    database {name} migrated, plugins deployed, {accounts} accounts in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    Ok((url, pool))
}

/// WAL per payment by table of a run between the counters `before` and
/// `after`, read on the run's database at `url`; `None`, with a warning,
/// where the server cannot tell (no `pg_walinspect`: Postgres before 15,
/// or not a superuser).
async fn wal_by_table(
    url: &str,
    before: Option<writes::Counters>,
    after: Option<writes::Counters>,
    per_payment: Option<writes::PerPayment>,
) -> Option<wal::WalByTable> {
    let (b, a, per) = (before?, after?, per_payment?);
    let read = async || -> Result<(std::collections::BTreeMap<String, u64>, u64)> {
        let c = admin_client(url).await?;
        let start = u64::try_from(b.wal_bytes).unwrap_or(0);
        wal::by_column(&c, start, u64::try_from(a.wal_bytes).unwrap_or(0)).await
    };
    match read().await {
        Ok((columns, window_bytes)) => Some(wal::WalByTable {
            window_bytes,
            tables: wal::shares(&columns, per.wal_bytes),
        }),
        Err(e) => {
            eprintln!("warning: WAL by table not read: {e}");
            None
        }
    }
}

async fn admin_client(url: &str) -> Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

/// The `payrail` binary the HTTP path starts as `payrail serve` children:
/// `$PAYRAIL_BIN` (which `payrail bench` sets to itself), else the `payrail`
/// next to this executable, as `cargo build` and a release place them.
pub fn payrail_binary() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os(PAYRAIL_BIN).filter(|b| !b.is_empty()) {
        return Ok(PathBuf::from(bin));
    }
    let exe = std::env::current_exe()
        .map_err(|e| Error::Setup(format!("cannot find the payrail-bench binary: {e}")))?;
    let bin = exe.with_file_name(format!("payrail{}", std::env::consts::EXE_SUFFIX));
    if bin.is_file() {
        return Ok(bin);
    }
    Err(Error::Setup(format!(
        "the HTTP path runs `payrail serve`, but there is no payrail binary at {}: build it \
         (cargo build --release -p payrail), set {PAYRAIL_BIN} to it, or pass --paths in-process",
        bin.display()
    )))
}

async fn start_children(
    n: usize,
    url: &str,
    pool_size: usize,
    out: &std::path::Path,
) -> Result<Vec<ServeChild>> {
    let exe = payrail_binary()?;
    // Batch workers count per Postgres, not per host (docs/batching.md,
    // "Tuning"): several processes share the default between them unless
    // PAYRAIL_BATCH_WORKERS says otherwise.
    let batch_workers = (n > 1 && std::env::var_os("PAYRAIL_BATCH_WORKERS").is_none()).then(|| {
        let workers = (payrail::processor::BatchSettings::default().workers / n).max(1);
        println!("scale    {n} processes: PAYRAIL_BATCH_WORKERS={workers} each (the default divided between them)");
        workers
    });
    let mut children = Vec::with_capacity(n);
    for i in 1..=n {
        let log = out.join(format!("serve-{n}x-{i}.log"));
        children.push(ServeChild::start(&exe, url, pool_size, batch_workers, &log).await?);
    }
    Ok(children)
}

async fn stop_children(children: Vec<ServeChild>) {
    for c in children {
        if !c.stop().await {
            eprintln!("warning: a payrail serve child did not exit cleanly");
        }
    }
}

/// Runs the benchmark; exit code 0 when every payment went through and
/// the audit passed (the targets are reported, not enforced).
pub async fn run(ctx: &Context, args: &BenchArgs) -> Result<i32> {
    args.validate()?;
    if !args.locks.is_empty() {
        return locks::run(ctx, args).await;
    }
    if args.workloads.contains(&Workload::HotPair) {
        return Err(invalid(
            "hot_pair runs only with --locks (the peer has no script for it)".into(),
        ));
    }
    if args.paths.contains(&PathKind::Http) {
        // before anything is measured, not after the in-process path
        payrail_binary()?;
    }
    if args.yardstick {
        // the yardstick runs last: fail before the bench if it cannot
        yardstick::valgrind_version()?;
    }
    let seed = args.seed.unwrap_or_else(rand::random);
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let wall = Instant::now();
    let pool_size = ctx.pool.status().max_size;
    println!(
        "payrail bench  seed={seed} accounts={} secs={} concurrency={:?} workloads={:?} paths={:?} pool={pool_size} serve_processes={} (about {} s)",
        args.accounts,
        args.secs,
        args.concurrency,
        args.workloads.iter().map(|w| w.name()).collect::<Vec<_>>(),
        args.paths.iter().map(|p| p.name()).collect::<Vec<_>>(),
        args.serve_processes,
        args.estimate_secs()
    );
    std::fs::create_dir_all(&args.out)
        .map_err(|e| Error::Setup(format!("cannot create {}: {e}", args.out.display())))?;
    let peer_script = if args.skip_baseline {
        None
    } else {
        Some(peer::find_script(args.baseline.as_deref())?)
    };

    let admin_url = db::url_with_database(&ctx.url, "postgres");
    let admin = admin_client(&admin_url).await?;
    let row = admin
        .query_one(
            "select current_setting('synchronous_commit'), current_setting('fsync'), version()",
            &[],
        )
        .await?;
    let (sync_commit, fsync, postgres): (String, String, String) =
        (row.get(0), row.get(1), row.get(2));
    let durability = Durability {
        full: sync_commit != "off" && fsync == "on",
        synchronous_commit: sync_commit,
        fsync,
    };
    if !durability.full {
        eprintln!(
            "warning: the server runs with synchronous_commit={} fsync={}: not full durability; the numbers are not comparable",
            durability.synchronous_commit, durability.fsync
        );
    }
    let (mut url, mut pool) =
        fresh_database(ctx, &admin, &args.database, pool_size, args.accounts).await?;
    // the processor settings `payrail serve` would use from this environment
    let settings = Config::load(None, payrail::config::process_env())?.processor();
    let idle_call = {
        let engine = ctx.engine.clone();
        let limits = settings.limits;
        tokio::task::spawn_blocking(move || idle_call(&engine, &limits))
            .await
            .expect("idle call task")?
    };
    println!(
        "machine  limits call on an idle core: median {:.1} µs (CPU {:.1} µs) over {} calls",
        idle_call.median_us, idle_call.median_cpu_us, idle_call.calls
    );

    let flush_latency_us = match admin_client(&url).await {
        Ok(c) => wal::flush_latency_us(&c).await.ok(),
        Err(_) => None,
    };
    if let Some(f) = flush_latency_us {
        println!(
            "machine  commit flush latency: {f:.0} µs (synchronous_commit on minus off, median)"
        );
    }
    let mut bench = Bench {
        args,
        seed,
        runs: 0,
        admin: &admin,
        url: url.clone(),
        database: args.database.clone(),
    };
    let mut runs = Vec::new();
    let mut at_load = Vec::new();
    let mut scale_out = Vec::new();
    // Audit findings of databases dropped before the end.
    let mut earlier_violations = Vec::new();
    if args.paths.contains(&PathKind::InProcess) {
        let target = Target::InProcess(Box::new(Processor::new(
            pool.clone(),
            ctx.engine.clone(),
            settings,
        )));
        bench
            .measure_path(
                &target,
                PathKind::InProcess,
                &Hosts::Current,
                &mut runs,
                &mut at_load,
            )
            .await?;
    }
    if args.paths.contains(&PathKind::Http) {
        if args.paths.contains(&PathKind::InProcess) {
            // The HTTP path starts from a fresh database too, as the
            // in-process path and the peer's script do: on the one the
            // in-process sweeps grew (about a million payments) every
            // insert into a random-position index costs more (pages read,
            // and written in full to the WAL after each checkpoint), which
            // would charge the path for the order of the phases.
            earlier_violations.extend(
                audit::run(&mut pool.get().await?)
                    .await?
                    .iter()
                    .map(|v| format!("in-process phase: {}", violation_text(v))),
            );
            drop(pool);
            (url, pool) =
                fresh_database(ctx, &admin, &args.database, pool_size, args.accounts).await?;
            bench.url = url.clone();
        }
        let secret = apikeys::create(&pool.get().await?, DEFAULT_TENANT, &[Scope::Payments])
            .await?
            .secret;
        let children = start_children(1, &url, pool_size, &args.out).await?;
        let client = Arc::new(HttpTarget::new(
            vec![children[0].base_url.clone()],
            secret.clone(),
            MAX_CLIENTS,
        )?);
        let measured = bench
            .measure_path(
                &Target::Http(client.clone()),
                PathKind::Http,
                &Hosts::Children(&children, &client),
                &mut runs,
                &mut at_load,
            )
            .await;
        stop_children(children).await;
        measured?;
        if args.serve_processes > 1 {
            let n = args.serve_processes;
            let children = start_children(n, &url, pool_size, &args.out).await?;
            let client = Arc::new(HttpTarget::new(
                children.iter().map(|c| c.base_url.clone()).collect(),
                secret,
                MAX_CLIENTS,
            )?);
            let hosts = Hosts::Children(&children, &client);
            let target = Target::Http(client.clone());
            let mut measure = async || -> Result<()> {
                for &workload in &args.workloads {
                    let Some(one) = report::best(&runs, PathKind::Http, workload).cloned() else {
                        continue;
                    };
                    let clients = one.clients.max(n);
                    let before = hosts.before().await?;
                    let s = bench.closed(&target, workload, clients, args.secs).await?;
                    let host = hosts.after(&before).await?;
                    let r = RunResult::new(
                        PathKind::Http,
                        workload,
                        clients,
                        n,
                        s.samples,
                        s.elapsed,
                        host,
                    );
                    print_run(&r);
                    println!(
                        "scale    workload={} {n} processes: {:.0} tps vs one process {:.0} tps ({:.2}x)",
                        workload.name(),
                        r.tps,
                        one.tps,
                        r.tps / one.tps
                    );
                    scale_out.push(ScaleOut {
                        workload,
                        clients,
                        processes: n,
                        tps: r.tps,
                        one_process_tps: one.tps,
                        speedup: r.tps / one.tps,
                        one_process_lock_wait_mean_ms: one.lock_wait_mean_ms,
                        run: r,
                    });
                }
                Ok(())
            };
            let measured = measure().await;
            stop_children(children).await;
            measured?;
        }
    }

    let peer_points = match &peer_script {
        None => Vec::new(),
        Some(script) => bench.peer_sweep(script, &admin_url, &ctx.url).await?,
    };

    let peer_at_load = if peer_points.is_empty() {
        Vec::new()
    } else {
        peer_paced(args, &ctx.url, &admin, &peer_points).await?
    };

    let peer_uniform = report::peer_best(&peer_points, Workload::Uniform);
    let same_load = match peer_uniform {
        Some((tps, _)) if tps * LOAD_FRACTION >= 1.0 => {
            let h = SameLoad {
                ctx,
                admin: &admin,
                settings,
                pool_size,
            };
            let (runs, v) = bench.same_load(&h, tps * LOAD_FRACTION).await?;
            earlier_violations.extend(v);
            runs
        }
        _ => Vec::new(),
    };

    let (paired, paired_violations) = match &peer_script {
        Some(script) if args.paired_rounds > 0 && args.paths.contains(&PathKind::InProcess) => {
            let h = HeadToHead {
                ctx,
                admin: &admin,
                admin_url: &admin_url,
                script,
                settings,
                pool_size,
            };
            bench.head_to_head(&h, &runs, &peer_points).await?
        }
        _ => (Vec::new(), Vec::new()),
    };

    let mut violations: Vec<String> = audit::run(&mut pool.get().await?)
        .await?
        .iter()
        .map(violation_text)
        .collect();
    violations.extend(earlier_violations);
    violations.extend(paired_violations);
    let audit = AuditResult {
        passed: violations.is_empty(),
        violations,
    };
    println!(
        "audit    {}",
        if audit.passed {
            "passed: every invariant holds".to_string()
        } else {
            format!("FAILED: {:?}", audit.violations)
        }
    );

    let mut report = Report {
        version: env!("CARGO_PKG_VERSION").into(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        seed,
        started_unix,
        postgres,
        cpus: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        durability,
        idle_call,
        accounts: args.accounts,
        secs: args.secs,
        concurrency: args.concurrency.clone(),
        pool_size,
        ratios: report::ratios(&runs, &peer_points),
        paired,
        runs,
        at_load,
        same_load,
        flush_latency_us,
        sweep_extended: args.extends_sweep(),
        peer: peer_points,
        peer_at_load,
        scale_out,
        targets: Vec::new(),
        audit,
        notes: notes(args, pool_size),
    };
    report.targets = report::targets(&report);
    write_report(&report, &args.out)?;
    if args.yardstick {
        yardstick::add_to_report(&ctx.url, &args.out).await?;
    }
    for r in &report.ratios {
        if let Some(x) = r.ratio {
            println!(
                "ratio    path={} workload={} payrail/peer = {x:.2}x ({:.0} vs {:.0} tps)",
                r.path.name(),
                r.workload.name(),
                r.payrail_tps,
                r.peer_tps.unwrap_or_default()
            );
        }
    }
    for t in &report.targets {
        println!(
            "target   {:<3} {:<55} {:>10} goal {:<9} {}",
            t.id,
            t.what,
            t.value,
            t.goal,
            match t.met {
                Some(true) => "met",
                Some(false) => "NOT MET",
                None => "not measured",
            }
        );
    }
    println!(
        "report   {} ({:.0} s)",
        args.out.join("report.md").display(),
        wall.elapsed().as_secs_f64()
    );
    let errors: u64 = report
        .runs
        .iter()
        .chain(&report.at_load)
        .chain(report.scale_out.iter().map(|s| &s.run))
        .map(|r| r.errors)
        .chain(report.paired.iter().map(|p| p.payrail_errors))
        .sum();
    if errors > 0 {
        println!("errors   {errors} payment(s) failed: see the report's first errors");
    }
    Ok(if report.audit.passed && errors == 0 {
        0
    } else {
        1
    })
}

/// Calls of [`idle_call`] measured, and unmeasured before them: about
/// 0.1-0.2 s in all at 10-33 µs a call.
const IDLE_CALLS: usize = 5_000;
const IDLE_WARMUP: usize = 1_000;

/// Times the `limits` sample on its fixture on this (idle) thread, as
/// `payrail plugin bench` does: the machine's speed on the day of the run.
fn idle_call(engine: &PluginEngine, limits: &PluginLimits) -> Result<IdleCall> {
    let input = payrail_plugin_tools::parse_fixture(payrail::samples::LIMITS_FIXTURE.as_bytes())?;
    let digest = engine.load(payrail::samples::LIMITS_WASM)?;
    let r = payrail_plugin_tools::bench_loaded(
        engine,
        &digest,
        &input,
        limits,
        IDLE_CALLS,
        IDLE_WARMUP,
    )?;
    assert_eq!(r.calls, IDLE_CALLS, "every idle call is measured");
    Ok(IdleCall {
        calls: r.calls,
        median_us: r.total_us.median,
        median_cpu_us: r.engine_cpu_us.median,
    })
}

fn notes(args: &BenchArgs, pool_size: usize) -> Vec<String> {
    vec![
        format!(
            "Closed loop: each client makes its next payment as soon as the last one answered, for {} s per point; tps = completed payments (approved + declined) / wall time. Latency is client-side, percentiles by nearest rank over every payment.",
            args.secs
        ),
        format!(
            "Paced runs start payments on a fixed schedule at {:.0}% of the path's peak tps (at most the listed number in flight); latency counts from each payment's scheduled start, so falling behind shows as latency.",
            LOAD_FRACTION * 100.0
        ),
        "in-process: `Processor::pay` from tasks of the bench process; host CPU and RSS are this process's (it also runs the load generator, so the plugin CPU share is a lower bound; the peak RSS is reset before each run where Linux allows, so the setup does not count). Lock wait is `PayOutcome::lock_wait` (key claim + advisory locks).".into(),
        "http: keep-alive HTTP/1.1 clients (hyper connections) in the bench process POST to `payrail serve` children on 127.0.0.1 (same machine, same CPUs); host CPU (utime+stime) and peak RSS (VmHWM) are the children's from /proc; plugin time and lock wait are from their /metrics (mean only).".into(),
        format!(
            "Each host process has a pool of {pool_size} connections (--pool-size / PAYRAIL_POOL_SIZE); clients beyond it queue for a connection. The peer (bench/baseline/run.sh, pgbench -j 2) opens one connection per client on the same server, same seconds per point."
        ),
        "Durability: the server's own settings, read and reported, never changed by the bench.".into(),
        "WAL / DB growth: the server's WAL position (all of its databases) and the run's database size (`pg_database_size`) after the run minus before, per completed payment; a run that triggers a checkpoint writes full-page images on top, and vacuumed space is reused, so compare runs of the same length.".into(),
        format!(
            "WAL by table: decoded with pg_walinspect over at most the first {} MiB of each point's WAL, not the whole point; the shares found there are applied to the point's WAL per payment.",
            wal::WAL_WINDOW_BYTES / (1024 * 1024)
        ),
        "CPU per payment: /proc of the whole machine, so anything else running on it counts in the machine's column (and nowhere else); the peer's load generator column includes its per-point script (bash, python3 for the URL).".into(),
        "The paced runs at 80% and 50% of the own peak run on the database the sweep grew; the runs at the peer's rate (P3) each start on a fresh database after a warm-up.".into(),
    ]
}

fn write_report(report: &Report, out: &std::path::Path) -> Result<()> {
    let write = |name: &str, text: String| {
        let path = out.join(name);
        std::fs::write(&path, text)
            .map_err(|e| Error::Setup(format!("cannot write {}: {e}", path.display())))
    };
    write(
        "report.json",
        serde_json::to_string_pretty(report).expect("the report serializes"),
    )?;
    write("report.md", report::markdown(report))?;
    write("throughput.svg", chart::throughput(report))?;
    write("latency.svg", chart::latency(report))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn args(extra: &[&str]) -> BenchArgs {
        Cli::parse_from(std::iter::once("bench").chain(extra.iter().copied())).bench
    }

    #[test]
    fn paired_rounds_and_the_database_name_have_limits() {
        let max = MAX_PAIRED_ROUNDS.to_string();
        args(&["--paired-rounds", &max]).validate().unwrap();
        let over = (MAX_PAIRED_ROUNDS + 1).to_string();
        let e = args(&["--paired-rounds", &over]).validate().unwrap_err();
        assert!(e.to_string().contains("--paired-rounds"), "{e}");

        let longest = format!(
            "{DATABASE_PREFIX}{}",
            "x".repeat(59 - DATABASE_PREFIX.len())
        );
        let a = args(&["--database", &longest]);
        a.validate().unwrap();
        assert_eq!(a.head_to_head_database().len(), 63, "Postgres's limit");
        let e = args(&["--database", &format!("{longest}x")])
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("at most 59 bytes"), "{e}");
    }
}
