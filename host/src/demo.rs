//! `payrail demo`: the main job on a fresh clone. Migrates, deploys the
//! sample plugins, opens accounts, runs a few thousand concurrent payments
//! (some retried with the same key, some declined by `limits` or for
//! insufficient funds) and prints a summary and the audit.

use crate::audit;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::ledger::{self, NewAccount};
use crate::model::{DEFAULT_TENANT, PaymentRequest, PaymentStatus};
use crate::registry::{self, StepSpec};
use crate::samples;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Semaphore;

/// Options of `payrail demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Payments to make (before retries).
    #[arg(long, default_value_t = 3000)]
    pub payments: usize,
    /// Payments in flight at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Customer accounts.
    #[arg(long, default_value_t = 50)]
    pub accounts: usize,
    /// Percentage of payments sent a second time with the same key.
    #[arg(long, default_value_t = 10)]
    pub retry_percent: u32,
    /// Seed of the random workload (printed; replay a run with it).
    #[arg(long)]
    pub seed: Option<u64>,
}

/// Retries of a submission that found its key in progress.
const CLIENT_RETRIES: u32 = 50;

/// One submission: a payment's key and request (retries repeat both).
#[derive(Clone)]
struct Job {
    key: String,
    req: PaymentRequest,
}

/// Runs the demo; exit code 0 when the audit passes.
pub async fn run(ctx: &Context, args: &DemoArgs) -> Result<i32> {
    assert!(args.accounts >= 2, "the demo needs at least two accounts");
    let seed = args.seed.unwrap_or_else(rand::random);
    println!("payrail demo  seed={seed} (replay the workload with --seed {seed})");
    ctx.migrate().await?;
    // A tag per run keeps runs apart in one database without deleting anything.
    let tag = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
    let kind = format!("demo-{tag}");
    let fee_account = format!("d{tag}-fees");
    let customer = |i: usize| format!("d{tag}-c{i:03}");

    let mut client = ctx.pool.get().await?;
    samples::deploy(&client, &ctx.engine).await?;
    registry::set_pipeline(
        &client,
        &ctx.engine,
        DEFAULT_TENANT,
        &kind,
        &[
            StepSpec {
                plugin: "limits".into(),
                config: serde_json::json!({"max_amount": 50_000, "allowed_currencies": ["EUR"]}),
                candidate: None,
                limits: None,
            },
            StepSpec {
                plugin: "fee".into(),
                config: serde_json::json!({"fee_account": fee_account, "percent_bps": 150, "fixed": 10, "min": 25, "max": 500}),
                candidate: None,
                limits: None,
            },
        ],
    )
    .await?;
    let mut rng = StdRng::seed_from_u64(seed);
    let new = |id: String, opening_balance: i64| NewAccount {
        id,
        currency: "EUR".into(),
        allow_negative: false,
        opening_balance,
        metadata: Default::default(),
    };
    let mut accounts = vec![new(fee_account.clone(), 0)];
    accounts.extend((0..args.accounts).map(|i| new(customer(i), rng.random_range(5_000..500_000))));
    let opening_total: i64 = accounts.iter().map(|a| a.opening_balance).sum();
    ledger::create_accounts(&mut client, DEFAULT_TENANT, &accounts).await?;
    drop(client);
    println!(
        "opened {} EUR accounts holding {} (minor units); pipeline {kind}: limits -> fee",
        args.accounts, opening_total
    );

    let mut jobs = Vec::with_capacity(args.payments * 2);
    for n in 0..args.payments {
        let from = rng.random_range(0..args.accounts);
        let mut to = rng.random_range(0..args.accounts - 1);
        if to >= from {
            to += 1;
        }
        let job = Job {
            key: format!("{tag}-{n}"),
            req: PaymentRequest {
                kind: kind.clone(),
                source: customer(from),
                destination: customer(to),
                amount: rng.random_range(100..60_000),
                currency: "EUR".into(),
                metadata: Default::default(),
                capture: Default::default(),
                hold_ttl_secs: None,
            },
        };
        if rng.random_range(0..100) < args.retry_percent {
            jobs.push(job.clone());
        }
        jobs.push(job);
    }
    jobs.shuffle(&mut rng);

    let bar = ProgressBar::new(jobs.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} payments  {per_sec}  {elapsed}")
            .expect("progress template"),
    );
    let processor = ctx.processor();
    let gate = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for job in jobs {
        let permit = gate.clone().acquire_owned().await.expect("semaphore open");
        let processor = processor.clone();
        let bar = bar.clone();
        tasks.spawn(async move {
            // Like a real client: a duplicate that finds its first attempt
            // still in progress retries shortly after (bounded).
            let mut out = processor.pay(DEFAULT_TENANT, &job.key, &job.req).await;
            for attempt in 1..=CLIENT_RETRIES {
                if !matches!(out, Err(Error::InProgress { .. })) {
                    break;
                }
                tokio::time::sleep(crate::processor::retry::delay(attempt)).await;
                out = processor.pay(DEFAULT_TENANT, &job.key, &job.req).await;
            }
            drop(permit);
            bar.inc(1);
            out
        });
    }
    let mut approved = 0u64;
    let mut declined: BTreeMap<String, u64> = BTreeMap::new();
    let mut replayed = 0u64;
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    while let Some(joined) = tasks.join_next().await {
        match joined.expect("payment task") {
            Ok(out) if out.replayed => replayed += 1,
            Ok(out) => match out.response.status {
                PaymentStatus::Approved => approved += 1,
                PaymentStatus::Declined => {
                    let code = out.response.decline.map(|d| d.code).unwrap_or_default();
                    *declined.entry(code).or_default() += 1;
                }
                // The demo makes one-step payments only.
                other => unreachable!("one-step payment ended {}", other.as_str()),
            },
            Err(e) => *errors.entry(e.code().to_string()).or_default() += 1,
        }
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();

    let mut client = ctx.pool.get().await?;
    let fees = ledger::get_account(&client, DEFAULT_TENANT, &fee_account).await?;
    let violations = audit::run(&mut client).await?;
    let total = approved + declined.values().sum::<u64>() + replayed;
    println!("\n== payrail demo summary ==");
    println!(
        "payments submitted : {total} ({} unique keys)",
        args.payments
    );
    println!("approved           : {approved}");
    println!("declined           : {}", declined.values().sum::<u64>());
    for (code, n) in &declined {
        println!("  {code:<17}: {n}");
    }
    println!("replayed (same key): {replayed}");
    if !errors.is_empty() {
        println!("errors             : {errors:?}");
    }
    println!(
        "fees collected     : {} EUR minor units in {fee_account}",
        fees.balance
    );
    println!(
        "throughput         : {:.0} payments/s ({} in {:.2} s, {} concurrent)",
        total as f64 / elapsed.as_secs_f64(),
        total,
        elapsed.as_secs_f64(),
        args.concurrency
    );
    if violations.is_empty() {
        println!("audit              : PASSED (every invariant holds)");
        Ok(if errors.is_empty() { 0 } else { 1 })
    } else {
        for v in &violations {
            println!("VIOLATION {}: {}", v.check, v.detail);
        }
        println!(
            "audit              : FAILED ({} violations)",
            violations.len()
        );
        Ok(1)
    }
}
