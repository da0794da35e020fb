//! `payrail bench`: N concurrent payments per workload, like the baseline's
//! two: `uniform` (pipeline `limits`) and `hot_fee` (`limits` + `fee`, every
//! payment credits one fee account); then the PL/pgSQL peer
//! (`shared/baseline/run.sh`) on the same Postgres in the same invocation,
//! and the ratios workload by workload.

use crate::cli::Context;
use crate::db;
use crate::error::{Error, Result};
use crate::ledger::{self, NewAccount};
use crate::model::{DEFAULT_TENANT, PaymentRequest, PaymentStatus};
use crate::processor::{Processor, ProcessorSettings};
use crate::registry::{self, StepSpec};
use crate::{audit, samples};
use clap::Args;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// The workloads, named as the baseline names them (and as the pipelines
/// the bench sets up).
const WORKLOADS: [&str; 2] = ["uniform", "hot_fee"];

/// Database the bench (re)creates on the server it is pointed at.
const BENCH_DATABASE: &str = "payrail_bench";

/// Options of `payrail bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Payments to make.
    #[arg(long, default_value_t = 20_000)]
    pub payments: usize,
    /// Concurrent clients (payrail tasks and pgbench clients alike).
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Customer accounts.
    #[arg(long, default_value_t = 10_000)]
    pub accounts: usize,
    /// The peer's script; default: `shared/baseline/run.sh` in the current
    /// directory or any parent.
    #[arg(long)]
    pub baseline: Option<PathBuf>,
    /// Seconds per baseline workload.
    #[arg(long, default_value_t = 10)]
    pub baseline_secs: u64,
    /// Run payrail only.
    #[arg(long)]
    pub skip_baseline: bool,
    /// Seed of the workload (printed).
    #[arg(long)]
    pub seed: Option<u64>,
}

/// What one payrail run measured.
#[derive(Debug, serde::Serialize)]
pub struct PayrailResult {
    pub payments: usize,
    pub approved: usize,
    pub declined: usize,
    pub errors: usize,
    pub seconds: f64,
    pub tps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
}

/// Baseline tps per workload as printed by run.sh.
#[derive(Debug, Default, serde::Serialize)]
pub struct BaselineResult {
    pub uniform_tps: Option<f64>,
    pub hot_fee_tps: Option<f64>,
}

fn percentile_ms(sorted_us: &[u64], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let i = ((sorted_us.len() as f64 - 1.0) * p).round() as usize;
    sorted_us[i] as f64 / 1000.0
}

fn find_baseline(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    let cwd = std::env::current_dir().ok()?;
    cwd.ancestors()
        .map(|d| d.join("shared/baseline/run.sh"))
        .find(|p| p.exists())
}

/// Runs the benchmark; exit code 0 when it completed and the audit passed.
pub async fn run(ctx: &Context, args: &BenchArgs) -> Result<i32> {
    assert!(args.accounts >= 2 && args.concurrency >= 1);
    let seed = args.seed.unwrap_or_else(rand::random);
    let admin_url = db::url_with_database(&ctx.url, "postgres");
    println!(
        "payrail bench  seed={seed} payments={} concurrency={} accounts={}",
        args.payments, args.concurrency, args.accounts
    );
    let (client, conn) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    // Two statements: DROP/CREATE DATABASE refuse to run in one batch.
    client
        .batch_execute(&format!(
            "drop database if exists {BENCH_DATABASE} with (force)"
        ))
        .await?;
    client
        .batch_execute(&format!("create database {BENCH_DATABASE}"))
        .await?;
    drop(client);
    let url = db::url_with_database(&ctx.url, BENCH_DATABASE);
    let pool = db::pool(&url, args.concurrency + 4)?;
    let mut c = pool.get().await?;
    db::migrate::migrate(&mut c).await?;
    samples::deploy(&c, &ctx.engine).await?;
    let customer = |i: usize| format!("a{i}");
    let mut accounts = vec![NewAccount {
        id: "fees".into(),
        currency: "EUR".into(),
        allow_negative: false,
        opening_balance: 0,
        metadata: Default::default(),
    }];
    accounts.extend((0..args.accounts).map(|i| NewAccount {
        id: customer(i),
        currency: "EUR".into(),
        allow_negative: false,
        opening_balance: 1_000_000_000,
        metadata: Default::default(),
    }));
    ledger::create_accounts(&mut c, DEFAULT_TENANT, &accounts).await?;
    let limits_step = StepSpec {
        plugin: "limits".into(),
        config: serde_json::json!({"max_amount": 1_000_000}),
        candidate: None,
        limits: None,
    };
    let fee_step = StepSpec {
        plugin: "fee".into(),
        config: serde_json::json!({"fee_account": "fees", "percent_bps": 290, "min": 1}),
        candidate: None,
        limits: None,
    };
    registry::set_pipeline(
        &c,
        DEFAULT_TENANT,
        "uniform",
        std::slice::from_ref(&limits_step),
    )
    .await?;
    registry::set_pipeline(&c, DEFAULT_TENANT, "hot_fee", &[limits_step, fee_step]).await?;
    drop(c);

    let processor = Processor::new(
        pool.clone(),
        ctx.engine.clone(),
        ProcessorSettings::default(),
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let mut results = Vec::new();
    for workload in WORKLOADS {
        let work: Arc<Vec<(String, PaymentRequest)>> = Arc::new(
            (0..args.payments)
                .map(|n| {
                    let from = rng.random_range(0..args.accounts);
                    let to = (from + rng.random_range(1..args.accounts)) % args.accounts;
                    let req = PaymentRequest {
                        kind: workload.to_string(),
                        source: customer(from),
                        destination: customer(to),
                        amount: rng.random_range(100..100_000),
                        currency: "EUR".into(),
                        metadata: Default::default(),
                        capture: Default::default(),
                        hold_ttl_secs: None,
                    };
                    (format!("{workload}-{n}"), req)
                })
                .collect(),
        );
        let result = drive(&processor, work, args.concurrency).await;
        println!(
            "payrail  workload={workload} clients={} tps={:.0} p50={:.2}ms p99={:.2}ms p99.9={:.2}ms approved={} declined={} errors={}",
            args.concurrency,
            result.tps,
            result.p50_ms,
            result.p99_ms,
            result.p999_ms,
            result.approved,
            result.declined,
            result.errors
        );
        results.push((workload, result));
    }
    let mut c = pool.get().await?;
    let violations = audit::run(&mut c).await?;
    println!(
        "audit    {}",
        if violations.is_empty() {
            "passed".to_string()
        } else {
            format!("FAILED: {violations:?}")
        }
    );

    let baseline = if args.skip_baseline {
        BaselineResult::default()
    } else {
        run_baseline(args, &admin_url)?
    };
    for (workload, result) in &results {
        let peer = match *workload {
            "uniform" => baseline.uniform_tps,
            _ => baseline.hot_fee_tps,
        };
        if let Some(b) = peer {
            println!(
                "ratio    workload={workload} payrail/baseline = {:.2}x",
                result.tps / b
            );
        }
    }
    let payrail: serde_json::Map<String, serde_json::Value> = results
        .iter()
        .map(|(w, r)| {
            (
                w.to_string(),
                serde_json::to_value(r).expect("result serializes"),
            )
        })
        .collect();
    println!(
        "{}",
        serde_json::json!({"seed": seed, "payrail": payrail, "baseline": baseline})
    );
    let errors: usize = results.iter().map(|(_, r)| r.errors).sum();
    Ok(if violations.is_empty() && errors == 0 {
        0
    } else {
        1
    })
}

/// Runs `work` with `concurrency` tasks; measures each payment's latency.
async fn drive(
    processor: &Processor,
    work: Arc<Vec<(String, PaymentRequest)>>,
    concurrency: usize,
) -> PayrailResult {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (p, work, next) = (processor.clone(), work.clone(), next.clone());
        tasks.spawn(async move {
            let mut lat_us = Vec::new();
            let (mut approved, mut declined, mut errors) = (0, 0, 0);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((key, req)) = work.get(i) else { break };
                let t = Instant::now();
                match p.pay(DEFAULT_TENANT, key, req).await {
                    Ok(o) if o.response.status == PaymentStatus::Approved => approved += 1,
                    Ok(_) => declined += 1,
                    Err(e) => {
                        errors += 1;
                        tracing::warn!(error = %e, "bench payment failed");
                    }
                }
                lat_us.push(t.elapsed().as_micros() as u64);
            }
            (lat_us, approved, declined, errors)
        });
    }
    let mut all = Vec::with_capacity(work.len());
    let (mut approved, mut declined, mut errors) = (0, 0, 0);
    for (lat, a, d, e) in tasks.join_all().await {
        all.extend(lat);
        approved += a;
        declined += d;
        errors += e;
    }
    let seconds = started.elapsed().as_secs_f64();
    all.sort_unstable();
    PayrailResult {
        payments: work.len(),
        approved,
        declined,
        errors,
        seconds,
        tps: work.len() as f64 / seconds,
        p50_ms: percentile_ms(&all, 0.50),
        p99_ms: percentile_ms(&all, 0.99),
        p999_ms: percentile_ms(&all, 0.999),
    }
}

/// Runs the peer's script against the same server; parses its tps lines.
fn run_baseline(args: &BenchArgs, admin_url: &str) -> Result<BaselineResult> {
    let script = find_baseline(args.baseline.as_deref()).ok_or_else(|| {
        Error::Setup(
            "baseline script not found: pass --baseline PATH/run.sh or --skip-baseline".into(),
        )
    })?;
    println!(
        "baseline {} ({} s per workload)",
        script.display(),
        args.baseline_secs
    );
    let out = std::process::Command::new("bash")
        .arg(&script)
        .arg(admin_url)
        .arg(args.baseline_secs.to_string())
        .arg(args.concurrency.to_string())
        .env("N_ACCOUNTS", args.accounts.to_string())
        .output()
        .map_err(|e| Error::Setup(format!("cannot run {}: {e}", script.display())))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(Error::Setup(format!(
            "baseline failed: {}{}",
            stdout,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let mut result = BaselineResult::default();
    for line in stdout.lines() {
        println!("{line}");
        let tps = line
            .split_whitespace()
            .find_map(|f| f.strip_prefix("tps="))
            .and_then(|v| v.parse::<f64>().ok());
        if line.contains("workload=uniform") {
            result.uniform_tps = tps;
        } else if line.contains("workload=hot_fee") {
            result.hot_fee_tps = tps;
        }
    }
    Ok(result)
}
