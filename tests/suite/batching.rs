//! The batcher (docs/batching.md): payments that arrive together share one
//! transaction, and one payment's failure or decline never fails its
//! neighbours. Real Postgres; a batch is recognised by the transaction id
//! (`xmin`) its rows carry.

use crate::common;

use common::{TestDb, transfer};
use payrail::model::{DEFAULT_TENANT, PaymentStatus};
use payrail::processor::{BatchSettings, Processor, ProcessorSettings};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use std::collections::HashMap;

/// One worker lingering long enough that everything submitted at once lands
/// in one batch.
fn one_batch() -> ProcessorSettings {
    ProcessorSettings {
        batch: BatchSettings {
            max_payments: 64,
            workers: 1,
            window_us: 50_000,
            ..BatchSettings::default()
        },
        ..ProcessorSettings::default()
    }
}

/// Transaction id of every payment row, by idempotency key.
async fn xmins(db: &TestDb) -> HashMap<String, i64> {
    let c = db.pool.get().await.unwrap();
    c.query(
        "select idempotency_key, xmin::text::bigint from payrail.payments",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

async fn key_rows(db: &TestDb, key: &str) -> i64 {
    let c = db.pool.get().await.unwrap();
    c.query_one(
        "select count(*) from payrail.idempotency_keys where key = $1",
        &[&key],
    )
    .await
    .unwrap()
    .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_or_declined_payment_does_not_fail_its_batch() {
    let db = TestDb::new().await;
    db.samples().await;
    db.deploy("payrail_hostile", "hostile").await;
    db.pipeline(
        "trap",
        &[("hostile", serde_json::json!({ "mode": "trap" }))],
    )
    .await;
    // Postings to an account the batch has not read: the pipeline loop
    // pauses to read it, finds nothing, and faults this payment alone.
    db.pipeline(
        "ghost-posting",
        &[("hostile", serde_json::json!({ "mode": "unknown_account" }))],
    )
    .await;
    for a in ["a", "b", "c", "d"] {
        db.account(a, 1_000_000).await;
    }
    db.account("poor", 10).await;
    db.account_with("yen", "JPY", 1_000, false).await;
    let p = db.processor_with(one_batch());
    // A finished payment, to be replayed and conflicted with in the batch.
    let done = p
        .pay(DEFAULT_TENANT, "done", &transfer("a", "b", 500))
        .await
        .unwrap();

    let mut trap = transfer("c", "d", 100);
    trap.kind = "trap".into();
    let mut ghost_posting = transfer("d", "c", 100);
    ghost_posting.kind = "ghost-posting".into();
    let mut no_pipeline = transfer("c", "d", 100);
    no_pipeline.kind = "nothing".into();
    let cases = vec![
        (
            "ok-1",
            transfer("a", "b", 1_000),
            Ok(PaymentStatus::Approved),
        ),
        (
            "poor",
            transfer("poor", "c", 5_000),
            Ok(PaymentStatus::Declined),
        ),
        (
            "ghost",
            transfer("a", "ghost", 100),
            Err("account_not_found"),
        ),
        ("yen", transfer("a", "yen", 100), Err("currency_mismatch")),
        ("trap", trap, Err("plugin_trap")),
        ("ghost-posting", ghost_posting, Err("plugin_invalid_output")),
        ("no-pipeline", no_pipeline, Err("pipeline_not_found")),
        ("done", transfer("a", "b", 500), Ok(PaymentStatus::Approved)),
        (
            "done",
            transfer("a", "b", 501),
            Err("idempotency_key_conflict"),
        ),
        // over the limits plugin's max_amount: declined by the plugin
        (
            "big",
            transfer("c", "d", 200_000),
            Ok(PaymentStatus::Declined),
        ),
        (
            "ok-2",
            transfer("b", "a", 2_000),
            Ok(PaymentStatus::Approved),
        ),
        (
            "ok-3",
            transfer("c", "a", 3_000),
            Ok(PaymentStatus::Approved),
        ),
    ];
    let answers = futures::future::join_all(
        cases
            .iter()
            .map(|(key, req, _)| p.pay(DEFAULT_TENANT, key, req)),
    )
    .await;
    for ((key, req, expected), answer) in cases.iter().zip(&answers) {
        match (expected, answer) {
            (Ok(status), Ok(out)) => assert_eq!(out.response.status, *status, "{key} {req:?}"),
            (Err(code), Err(e)) => assert_eq!(e.code(), *code, "{key}: {e}"),
            (want, got) => panic!("{key}: expected {want:?}, got {got:?}"),
        }
    }
    // The replay came from the stored response.
    let replay = answers[7].as_ref().unwrap();
    assert!(replay.replayed);
    assert_eq!(replay.response.id, done.response.id);

    // The new payments were written by one transaction; the failed ones
    // left no payment and no key claim.
    let x = xmins(&db).await;
    let written = ["ok-1", "poor", "big", "ok-2", "ok-3"];
    let batch_xid = x["ok-1"];
    for k in written {
        assert_eq!(x[k], batch_xid, "{k} committed with its batch");
    }
    assert_ne!(x["done"], batch_xid);
    for k in ["ghost", "yen", "trap", "ghost-posting", "no-pipeline"] {
        assert!(!x.contains_key(k), "{k} wrote a payment");
        assert_eq!(key_rows(&db, k).await, 0, "{k} left its key claim");
    }
    // Money: a -1000 -500 +2000 +3000 -fees, the audit agrees.
    assert_eq!(db.balance("poor").await, 10);
    assert!(db.audit().await.is_empty(), "{:?}", db.audit().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn payments_within_a_batch_see_each_others_balances() {
    let db = TestDb::new().await;
    db.samples().await;
    db.account("src", 3_000).await;
    db.account("dst", 0).await;
    let p = db.processor_with(one_batch());
    // Each of five 1,000 payments (plus its fee) fits the opening balance
    // alone; together only two fit. The batch must decline the rest.
    let answers = futures::future::join_all((0..5).map(|i| {
        let p = p.clone();
        async move {
            p.pay(
                DEFAULT_TENANT,
                &format!("k{i}"),
                &transfer("src", "dst", 1_000),
            )
            .await
        }
    }))
    .await;
    let approved = answers
        .iter()
        .filter(|a| a.as_ref().unwrap().response.status == PaymentStatus::Approved)
        .count();
    let declined: Vec<_> = answers
        .iter()
        .filter_map(|a| a.as_ref().unwrap().response.decline.clone())
        .collect();
    assert_eq!(approved, 2, "{answers:?}");
    assert_eq!(declined.len(), 3);
    assert!(declined.iter().all(|d| d.code == "insufficient_funds"));
    assert!(db.balance("src").await >= 0);
    assert_eq!(db.balance("dst").await, 2_000);
    let distinct: std::collections::HashSet<i64> = xmins(&db).await.into_values().collect();
    assert_eq!(distinct.len(), 1, "one transaction for the five");
    assert!(db.audit().await.is_empty());
}

/// Many workers, few accounts, transfers in both directions: locks sorted
/// across each batch mean no deadlock surfaces and no payment is lost; the
/// fee account is credited by every batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_batches_on_few_accounts_conserve_money() {
    let seed: u64 = std::env::var("PAYRAIL_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("seed {seed} (replay with PAYRAIL_TEST_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let db = TestDb::new().await;
    db.samples().await;
    let accounts: Vec<String> = (0..8).map(|i| format!("acct-{i}")).collect();
    for a in &accounts {
        db.account(a, 50_000).await;
    }
    let p: Processor = db.processor_with(ProcessorSettings {
        batch: BatchSettings {
            max_payments: 16,
            workers: 4,
            window_us: 1_000,
            ..BatchSettings::default()
        },
        ..ProcessorSettings::default()
    });
    let payments: Vec<(String, payrail::model::PaymentRequest)> = (0..400)
        .map(|i| {
            let from = rng.random_range(0..accounts.len());
            let to = (from + rng.random_range(1..accounts.len())) % accounts.len();
            let amount = rng.random_range(1..5_000);
            (
                format!("p{i}"),
                transfer(&accounts[from], &accounts[to], amount),
            )
        })
        .collect();
    let answers = futures::future::join_all(
        payments
            .iter()
            .map(|(k, req)| p.pay(DEFAULT_TENANT, k, req)),
    )
    .await;
    for (answer, (k, _)) in answers.iter().zip(&payments) {
        let out = answer.as_ref().unwrap_or_else(|e| panic!("{k}: {e}"));
        assert!(matches!(
            out.response.status,
            PaymentStatus::Approved | PaymentStatus::Declined
        ));
    }
    let x = xmins(&db).await;
    assert_eq!(x.len(), payments.len(), "every payment is written once");
    let transactions: std::collections::HashSet<i64> = x.into_values().collect();
    assert!(
        transactions.len() < payments.len() / 2,
        "400 concurrent payments should share transactions, got {}",
        transactions.len()
    );
    db.assert_conserved(&accounts, 50_000).await;

    // The fee account was only credited, by batches that did not lock it:
    // every fee is in its credit shards, none in its row.
    let fees = db.balance("fees").await;
    let (row, shards) = fee_row_and_shards(&db).await;
    assert!(fees > 0);
    assert_eq!((row, shards), (0, fees), "seed {seed}");
    // Debits of the fee account (as a party, row-locked) fold its shards
    // into the row: the row alone (0) could not cover them.
    let refund = transfer("fees", "acct-0", fees / 4);
    let answers = futures::future::join_all(
        ["refund-1", "refund-2"].map(|k| p.pay(DEFAULT_TENANT, k, &refund)),
    )
    .await;
    for a in answers {
        assert_eq!(a.unwrap().response.status, PaymentStatus::Approved);
    }
    let after = db.balance("fees").await;
    assert!(after < fees, "{after} >= {fees}");
    let (row, shards) = fee_row_and_shards(&db).await;
    assert_eq!((row, shards), (after, 0), "the shards are folded");
    assert!(db.audit().await.is_empty(), "{:?}", db.audit().await);
}

/// (row balance, sum of credit shards) of the sample fee account.
async fn fee_row_and_shards(db: &TestDb) -> (i64, i64) {
    let c = db.pool.get().await.unwrap();
    let r = c
        .query_one(
            "select a.balance,
                    (select coalesce(sum(amount), 0)::bigint from payrail.credit_shards s
                     where s.tenant = a.tenant and s.account = a.id)
             from payrail.accounts a where a.tenant = $1 and a.id = 'fees'",
            &[&DEFAULT_TENANT],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1))
}

/// A database error in a batch (here: a key whose row was reaped while its
/// payment remains, so the payment insert violates uniqueness) falls back
/// to one transaction per payment: the neighbours are approved and the
/// culprit gets its own exact error.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_error_falls_back_to_one_transaction_per_payment() {
    let db = TestDb::new().await;
    db.samples().await;
    db.account("a", 1_000_000).await;
    db.account("b", 0).await;
    let p = db.processor_with(one_batch());
    let first = p
        .pay(DEFAULT_TENANT, "old", &transfer("a", "b", 100))
        .await
        .unwrap();
    {
        let c = db.pool.get().await.unwrap();
        c.execute(
            "delete from payrail.idempotency_keys where key = 'old'",
            &[],
        )
        .await
        .unwrap();
    }
    let keys = ["n1", "old", "n2", "n3"];
    let answers = futures::future::join_all(keys.iter().map(|k| {
        let p = p.clone();
        async move { p.pay(DEFAULT_TENANT, k, &transfer("a", "b", 100)).await }
    }))
    .await;
    for (k, a) in keys.iter().zip(&answers) {
        match *k {
            "old" => {
                let e = a.as_ref().unwrap_err();
                assert_eq!(e.code(), "idempotency_key_expired", "{a:?}");
                assert!(
                    e.to_string().contains(&first.response.id),
                    "names the payment the key made ({}): {e}",
                    first.response.id
                );
            }
            _ => assert_eq!(a.as_ref().unwrap().response.status, PaymentStatus::Approved),
        }
    }
    assert_eq!(db.balance("b").await, 400);
    assert_eq!(key_rows(&db, "old").await, 0);
    assert!(db.audit().await.is_empty());
}

#[test]
fn batch_settings_are_bounded() {
    let ok = BatchSettings::default();
    assert!(ok.validate().is_ok());
    for bad in [
        BatchSettings {
            max_payments: 0,
            ..ok
        },
        BatchSettings {
            max_payments: payrail::processor::MAX_BATCH_PAYMENTS + 1,
            ..ok
        },
        BatchSettings { workers: 0, ..ok },
        BatchSettings {
            window_us: 10_000_000,
            ..ok
        },
        BatchSettings {
            queue_depth: 0,
            ..ok
        },
    ] {
        assert!(bad.validate().is_err(), "{bad:?}");
    }
}

/// A real deadlock: another session holds `b`'s row and, once the payment
/// holds `a`'s and waits for `b`'s, asks for `a`'s. The payment's backend
/// waited first, so Postgres's detector (after `deadlock_timeout`, 1 s)
/// aborts the payment's transaction (40P01); the processor retries it and
/// the payment commits once. The other session getting `a` proves the
/// payment's first transaction let go of it, and a lock timeout (5 s) would
/// have surfaced as an error, not as an approved payment.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_payment_that_loses_a_deadlock_is_retried_and_commits_once() {
    let db = TestDb::new().await;
    let (p, answer) = lose_a_deadlock(&db, ProcessorSettings::default()).await;
    let out = answer.expect("the retried payment commits");
    assert_eq!(out.response.status, PaymentStatus::Approved);
    assert_eq!(p.transaction_retries(), 1, "one retry, counted");
    // the sample `transfer` pipeline also charges a fee to `a`
    let debited: i64 = out
        .response
        .postings
        .iter()
        .filter(|p| p.account == "a")
        .map(|p| p.amount)
        .sum();
    assert!(debited <= -100, "a pays the 100 and any fee: {debited}");
    assert_eq!(db.balance("a").await, 1_000 + debited);
    assert_eq!(db.balance("b").await, 1_100);
    assert_eq!(xmins(&db).await.len(), 1, "written once");
    assert!(db.audit().await.is_empty());
}

/// The retry limit: with `max_attempts` 1 the same deadlock is the
/// payment's answer (40P01), nothing is written and the key stays free.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deadlock_past_the_attempt_limit_is_the_answer_and_writes_nothing() {
    let db = TestDb::new().await;
    let settings = ProcessorSettings {
        max_attempts: 1,
        ..ProcessorSettings::default()
    };
    let (p, answer) = lose_a_deadlock(&db, settings).await;
    let err = answer.expect_err("no attempt left");
    assert_eq!(
        err.sqlstate(),
        Some(&tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED),
        "{err}"
    );
    assert_eq!(p.transaction_retries(), 0);
    assert!(xmins(&db).await.is_empty(), "no payment row");
    assert_eq!(key_rows(&db, "dl-1").await, 0, "the key stays free");
    assert_eq!(db.balance("a").await, 1_000);
    assert_eq!(db.balance("b").await, 1_000);
}

/// Accounts `a` and `b` (1,000 each); pays 100 from `a` to `b` (key
/// `dl-1`) while another session makes it lose a deadlock once (see the
/// test above). Returns the processor and the payment's answer.
async fn lose_a_deadlock(
    db: &TestDb,
    settings: ProcessorSettings,
) -> (Processor, payrail::Result<payrail::processor::PayOutcome>) {
    db.samples().await;
    db.account("a", 1_000).await;
    db.account("b", 1_000).await;
    let p = db.processor_with(settings);
    assert_eq!(p.transaction_retries(), 0);

    let mut other = db.pool.get().await.unwrap();
    let tx = other.transaction().await.unwrap();
    tx.execute(
        "select 1 from payrail.accounts where id = 'b' for update",
        &[],
    )
    .await
    .unwrap();
    let pay = {
        let p = p.clone();
        tokio::spawn(async move {
            p.pay(DEFAULT_TENANT, "dl-1", &transfer("a", "b", 100))
                .await
        })
    };
    // Wait (at most 10 s) until the payment's backend waits for a lock:
    // it holds `a` (rows are locked in id order) and wants `b`.
    let watcher = db.pool.get().await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let waiting: i64 = watcher
            .query_one(
                "select count(*) from pg_stat_activity
                 where datname = current_database() and wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the payment never waited for b's row lock"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let asked = std::time::Instant::now();
    tx.execute(
        "select 1 from payrail.accounts where id = 'a' for update",
        &[],
    )
    .await
    .expect("the payment's transaction is the deadlock's victim, not this one");
    assert!(
        asked.elapsed() < std::time::Duration::from_secs(4),
        "a's lock came from the deadlock detector, not the 5 s lock timeout ({:?})",
        asked.elapsed()
    );
    tx.rollback().await.unwrap();
    let answer = pay.await.unwrap();
    (p, answer)
}

/// Another host's transaction holds the fee account's lock (as a batch
/// paying from it would). A batch with `x -> fees` and `u -> v` puts the
/// first back instead of waiting, so `u -> v` commits while the lock is
/// held, its fee credited to the held account through a credit shard
/// (credits never wait for it). Put back once, `x -> fees` runs alone,
/// waits for the lock like any single payment, and commits once it is let
/// go. With blocking locks, `u -> v` would wait for the other host too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_defers_payments_on_accounts_another_host_holds() {
    let db = TestDb::new().await;
    db.samples().await;
    for a in ["x", "u", "v"] {
        db.account(a, 10_000).await;
    }
    let p = db.processor_with(one_batch());
    let mut other = db.pool.get().await.unwrap();
    let held = hold_account_lock(&mut other, "fees").await;

    let pay = |key: &'static str, from: &'static str, to: &'static str| {
        let p = p.clone();
        tokio::spawn(async move { p.pay(DEFAULT_TENANT, key, &transfer(from, to, 100)).await })
    };
    let to_fees = pay("to-fees", "x", "fees");
    let free = pay("free", "u", "v");
    let out = tokio::time::timeout(std::time::Duration::from_secs(3), free)
        .await
        .expect("u -> v does not wait for the other host's lock")
        .unwrap()
        .unwrap();
    assert_eq!(out.response.status, PaymentStatus::Approved);
    assert!(
        out.response.postings.iter().any(|p| p.account == "fees"),
        "u -> v pays its fee to the held account: {:?}",
        out.response.postings
    );
    assert_eq!(p.batch_deferrals(), 1, "x -> fees was put back once");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(!to_fees.is_finished(), "x -> fees waits for the lock");
    held.commit().await.unwrap();
    let out = to_fees
        .await
        .unwrap()
        .expect("committed once the lock is free");
    assert_eq!(out.response.status, PaymentStatus::Approved);

    let x = xmins(&db).await;
    assert_eq!(x.len(), 2);
    assert_ne!(x["free"], x["to-fees"], "two transactions");
    assert_eq!(p.batch_deferrals(), 1);
    assert_eq!(p.transaction_retries(), 0);
    assert!(db.audit().await.is_empty(), "{:?}", db.audit().await);
}

/// The bound on putting back: while another host holds `x`, `x -> y` is
/// put back each time it shares a batch with other payments, at most
/// `MAX_DEFERRALS` times; the batch that takes it after that waits for
/// the lock, with the payments batched with it. Free payments arrive every
/// 10 ms, well inside a 100 ms window, so `x -> y` is never alone (alone,
/// it would run as a single payment and wait at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_payment_put_back_max_deferrals_times_makes_its_batch_wait() {
    let db = TestDb::new().await;
    db.samples().await;
    for a in ["x", "y", "u", "v"] {
        db.account(a, 100_000).await;
    }
    let mut settings = one_batch();
    settings.batch.window_us = payrail::processor::MAX_BATCH_WINDOW_US;
    let p = db.processor_with(settings);
    let mut other = db.pool.get().await.unwrap();
    let held = hold_account_lock(&mut other, "x").await;

    let pay = |key: String, from: &'static str, to: &'static str| {
        let p = p.clone();
        tokio::spawn(async move { p.pay(DEFAULT_TENANT, &key, &transfer(from, to, 10)).await })
    };
    let blocked = pay("blocked".into(), "x", "y");
    let mut free = Vec::new();
    for i in 0..60 {
        free.push(pay(format!("free-{i}"), "u", "v"));
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(
        p.batch_deferrals(),
        u64::from(payrail::processor::MAX_DEFERRALS),
        "put back exactly MAX_DEFERRALS times, then waited"
    );
    assert!(!blocked.is_finished());
    assert!(
        !free.last().unwrap().is_finished(),
        "the waiting batch holds up the payments behind it"
    );
    held.commit().await.unwrap();
    let out = blocked.await.unwrap().expect("committed once x is free");
    assert_eq!(out.response.status, PaymentStatus::Approved);
    for f in free {
        assert_eq!(
            f.await.unwrap().unwrap().response.status,
            PaymentStatus::Approved
        );
    }
    assert_eq!(
        p.batch_deferrals(),
        u64::from(payrail::processor::MAX_DEFERRALS)
    );
    assert_eq!(xmins(&db).await.len(), 61);
    assert!(db.audit().await.is_empty(), "{:?}", db.audit().await);
}

/// Another host's transaction, holding `account`'s advisory lock until it
/// ends (as that host's batch would).
async fn hold_account_lock<'a>(
    client: &'a mut deadpool_postgres::Object,
    account: &str,
) -> deadpool_postgres::Transaction<'a> {
    let tx = client.transaction().await.unwrap();
    tx.execute(
        "select pg_advisory_xact_lock($1)",
        &[&payrail::locks::account_key(DEFAULT_TENANT, account)],
    )
    .await
    .unwrap();
    tx
}
