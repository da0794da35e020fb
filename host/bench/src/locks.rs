//! `payrail bench --locks advisory,redis,file`: the same workloads in
//! process under each lock service, one after another in one run, each on
//! a fresh database: throughput, latency, the distribution of lock waits
//! (a CDF per service, plotted) and the calls each service makes per
//! payment (docs/locking.md, "Which lock should a payment system use?").

use crate::driver::{self, Target};
use crate::workload::{Percentiles, Workload};
use crate::{BenchArgs, admin_client, fresh_database};
use payrail::audit;
use payrail::config::{Config, LockBackend, LocksConfig};
use payrail::context::Context;
use payrail::db;
use payrail::error::{Error, Result};
use payrail::processor::Processor;
use serde::Serialize;
use std::fmt::Write;
use std::time::Duration;

/// A lock service to compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LockKind {
    Advisory,
    Redis,
    File,
}

impl LockKind {
    fn name(self) -> &'static str {
        match self {
            LockKind::Advisory => "advisory",
            LockKind::Redis => "redis",
            LockKind::File => "file",
        }
    }

    fn color(self) -> &'static str {
        match self {
            LockKind::Advisory => "#1f77b4",
            LockKind::Redis => "#d62728",
            LockKind::File => "#2ca02c",
        }
    }
}

/// One point: a service, a workload, `clients` clients for `secs`.
#[derive(Debug, Serialize)]
pub struct LockPoint {
    pub locks: LockKind,
    pub workload: String,
    pub clients: usize,
    pub tps: f64,
    pub latency: Percentiles,
    /// Key claim and locks, the lock service's wait included.
    pub lock_wait: Percentiles,
    /// Lock service calls (Redis round trips, `flock` attempts) per
    /// payment: 0 for advisory locks, which ride in the first flight.
    pub calls_per_payment: f64,
    pub errors: u64,
    pub audit_violations: usize,
    /// (lock wait ms, fraction of payments at or below), for the CDF.
    #[serde(skip)]
    cdf: Vec<(f64, f64)>,
}

/// The `[locks]` section of `kind`: Redis at `REDIS_URL` (default
/// `redis://127.0.0.1:6379`) under a prefix of this run, lock files in
/// `{out}/lock-files`.
fn config_of(kind: LockKind, args: &BenchArgs, seed: u64) -> LocksConfig {
    let mut c = LocksConfig::default();
    match kind {
        LockKind::Advisory => {}
        LockKind::Redis => {
            c.backend = LockBackend::Redis;
            if let Ok(url) = std::env::var("REDIS_URL") {
                c.redis_url = url;
            }
            c.redis_prefix = format!("payrail-bench:{seed:x}:");
        }
        LockKind::File => {
            c.backend = LockBackend::File;
            c.dir = Some(args.out.join("lock-files"));
        }
    }
    c
}

/// 200 points of the CDF of `us` (sorted).
fn cdf(us: &[u32]) -> Vec<(f64, f64)> {
    let n = us.len();
    (1..=200)
        .filter(|_| n > 0)
        .map(|i| {
            let rank = (n * i / 200).clamp(1, n);
            (f64::from(us[rank - 1]) / 1000.0, rank as f64 / n as f64)
        })
        .collect()
}

async fn point(
    ctx: &Context,
    args: &BenchArgs,
    admin: &tokio_postgres::Client,
    (kind, workload): (LockKind, Workload),
    seed: u64,
) -> Result<LockPoint> {
    let pool_size = ctx.pool.status().max_size;
    let (_, pool) = fresh_database(ctx, admin, &args.database, pool_size, args.accounts).await?;
    let service = config_of(kind, args, seed).service().await?;
    let settings = Config::load(None, payrail::config::process_env())?.processor();
    let processor = Processor::with_locks(pool.clone(), ctx.engine.clone(), settings, service);
    let calls_before = processor.lock_service_calls();
    let target = Target::InProcess(Box::new(processor.clone()));
    let prefix = format!("locks-{}-{}-{seed:x}", kind.name(), workload.name());
    let run = driver::closed_loop(
        &target,
        workload,
        args.accounts,
        args.lock_clients,
        Duration::from_secs(args.secs),
        seed,
        &prefix,
    )
    .await?;
    let calls = processor.lock_service_calls() - calls_before;
    drop(target);
    let violations = audit::run(&mut pool.get().await?).await?;
    let mut samples = run.samples;
    let done = samples.latency_us.len().max(1);
    let latency = Percentiles::of(&mut samples.latency_us);
    let lock_wait = Percentiles::of(&mut samples.lock_wait_us);
    Ok(LockPoint {
        locks: kind,
        workload: workload.name().into(),
        clients: args.lock_clients,
        tps: samples.completed() as f64 / run.elapsed.as_secs_f64(),
        latency,
        lock_wait,
        calls_per_payment: calls as f64 / done as f64,
        errors: samples.errors,
        audit_violations: violations.len(),
        cdf: cdf(&samples.lock_wait_us),
    })
}

/// The whole comparison; exit code 0 when no payment failed and every
/// database audited clean.
pub async fn run(ctx: &Context, args: &BenchArgs) -> Result<i32> {
    let seed = args.seed.unwrap_or_else(rand::random);
    let workloads: Vec<Workload> =
        if args.workloads == [Workload::Uniform, Workload::HotFee, Workload::SpreadFee] {
            vec![Workload::Uniform, Workload::HotFee, Workload::HotPair]
        } else {
            args.workloads.clone()
        };
    std::fs::create_dir_all(&args.out)
        .map_err(|e| Error::Setup(format!("cannot create {}: {e}", args.out.display())))?;
    let admin = admin_client(&db::url_with_database(&ctx.url, "postgres")).await?;
    let mut points = Vec::new();
    for &workload in &workloads {
        for &kind in &args.locks {
            let p = point(ctx, args, &admin, (kind, workload), seed).await?;
            println!(
                "locks    {:<8} {:<9} clients={} tps={:.0} p50={:.2}ms p99={:.2}ms lock_wait_p99={:.2}ms calls/payment={:.2} errors={} audit_violations={}",
                kind.name(),
                p.workload,
                p.clients,
                p.tps,
                p.latency.p50_ms,
                p.latency.p99_ms,
                p.lock_wait.p99_ms,
                p.calls_per_payment,
                p.errors,
                p.audit_violations
            );
            points.push(p);
        }
    }
    write_report(args, seed, &workloads, &points)?;
    let clean = points
        .iter()
        .all(|p| p.errors == 0 && p.audit_violations == 0);
    Ok(if clean { 0 } else { 1 })
}

fn write_report(
    args: &BenchArgs,
    seed: u64,
    workloads: &[Workload],
    points: &[LockPoint],
) -> Result<()> {
    let io = |path: &std::path::Path, e: std::io::Error| {
        Error::Setup(format!("cannot write {}: {e}", path.display()))
    };
    let mut md = format!(
        "# payrail bench --locks\n\nseed {seed} · {} accounts · {} clients · {} s per point · in process, each point on a fresh database\n\n\
         | workload | locks | payments/s | p50 ms | p99 ms | lock wait p50 ms | lock wait p99 ms | lock wait max ms | service calls / payment | errors | audit |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
        args.accounts, args.lock_clients, args.secs
    );
    for p in points {
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} |",
            p.workload,
            p.locks.name(),
            p.tps,
            p.latency.p50_ms,
            p.latency.p99_ms,
            p.lock_wait.p50_ms,
            p.lock_wait.p99_ms,
            p.lock_wait.max_ms,
            p.calls_per_payment,
            p.errors,
            if p.audit_violations == 0 {
                "clean"
            } else {
                "violations"
            }
        );
    }
    md.push_str("\nLock wait: the key claim and the account locks of a payment's transaction, plus, under a lock service, the wait for its locks before the transaction. CDFs: ");
    for w in workloads {
        let file = format!("lock-wait-cdf-{}.svg", w.name());
        let path = args.out.join(&file);
        let svg = cdf_svg(w.name(), points.iter().filter(|p| p.workload == w.name()));
        std::fs::write(&path, svg).map_err(|e| io(&path, e))?;
        let _ = write!(md, "[{}]({file}) ", w.name());
    }
    md.push('\n');
    let path = args.out.join("locks.md");
    std::fs::write(&path, md).map_err(|e| io(&path, e))?;
    let path = args.out.join("locks.json");
    let json = serde_json::to_string_pretty(points).expect("points serialize");
    std::fs::write(&path, json).map_err(|e| io(&path, e))?;
    println!("locks    report: {}", args.out.join("locks.md").display());
    Ok(())
}

/// A CDF plot of the lock waits of one workload, a line per service,
/// lock wait on a log axis from 0.01 ms.
fn cdf_svg<'a>(workload: &str, points: impl Iterator<Item = &'a LockPoint>) -> String {
    const W: f64 = 640.0;
    const H: f64 = 360.0;
    const PAD: f64 = 50.0;
    let points: Vec<&LockPoint> = points.collect();
    let max_ms = points
        .iter()
        .flat_map(|p| p.cdf.iter().map(|c| c.0))
        .fold(1.0_f64, f64::max);
    let (lo, hi) = (0.01_f64.log10(), max_ms.max(0.02).log10());
    let x = |ms: f64| PAD + (ms.max(0.01).log10() - lo) / (hi - lo) * (W - 2.0 * PAD);
    let y = |f: f64| H - PAD - f * (H - 2.0 * PAD);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{PAD}\" y=\"20\">lock wait CDF, {workload} (x: ms, log scale; y: share of payments)</text>\n\
         <line x1=\"{PAD}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n\
         <line x1=\"{PAD}\" y1=\"{PAD}\" x2=\"{PAD}\" y2=\"{}\" stroke=\"black\"/>\n",
        H - PAD,
        W - PAD,
        H - PAD,
        H - PAD
    );
    for f in [0.0, 0.5, 0.9, 0.99, 1.0] {
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{f}</text>",
            PAD - 6.0,
            y(f) + 4.0
        );
    }
    let mut decade = 0.01_f64;
    while decade <= max_ms * 1.0001 {
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{decade}</text>",
            x(decade),
            H - PAD + 16.0
        );
        decade *= 10.0;
    }
    for (i, p) in points.iter().enumerate() {
        let line: Vec<String> = p
            .cdf
            .iter()
            .map(|&(ms, f)| format!("{:.1},{:.1}", x(ms), y(f)))
            .collect();
        let _ = writeln!(
            svg,
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/>\n<text x=\"{}\" y=\"{}\" fill=\"{}\">{}</text>",
            p.locks.color(),
            line.join(" "),
            W - PAD - 70.0,
            PAD + 16.0 * i as f64,
            p.locks.color(),
            p.locks.name()
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cdf_rises_to_one() {
        let us: Vec<u32> = (1..=1000).collect();
        let c = cdf(&us);
        assert_eq!(c.len(), 200);
        assert_eq!(c.last().copied(), Some((1.0, 1.0)));
        assert!(c.windows(2).all(|w| w[0].1 <= w[1].1 && w[0].0 <= w[1].0));
        assert!(cdf(&[]).is_empty());
    }
}
