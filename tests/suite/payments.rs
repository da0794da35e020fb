//! The processor against a real Postgres: approve, decline, idempotency,
//! conflicts, bad input, and a randomized concurrent bank test.

use crate::common;

use common::{TestDb, transfer};
use payrail::model::{DEFAULT_TENANT, PaymentStatus};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn approved_payment_moves_money_charges_fee_and_records_everything() {
    let db = TestDb::new().await;
    db.samples().await;
    db.account("alice", 100_000).await;
    db.account("bob", 0).await;
    let out = db
        .processor()
        .pay(DEFAULT_TENANT, "k1", &transfer("alice", "bob", 10_000))
        .await
        .unwrap();
    assert!(!out.replayed);
    assert_eq!(out.response.status, PaymentStatus::Approved);
    // fee: 10 + 1% of 10_000 = 110, within [20, 1000]
    assert_eq!(
        out.response.annotations.get("fee").map(String::as_str),
        Some("110")
    );
    assert_eq!(db.balance("alice").await, 100_000 - 10_000 - 110);
    assert_eq!(db.balance("bob").await, 10_000);
    assert_eq!(db.balance("fees").await, 110);
    assert_eq!(out.response.postings.len(), 4);
    let [payments, entries, outbox, keys, calls] = db.counts().await;
    assert_eq!((payments, entries, keys, calls), (1, 4, 1, 2));
    assert_eq!(outbox, 2, "payment.approved + fee.charged");
    let c = db.pool.get().await.unwrap();
    let topics: Vec<String> = c
        .query(
            "select topic from payrail.outbox where topic <> 'account.opened' order by id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(topics, ["payment.approved", "fee.charged"]);
    let pipeline: serde_json::Value = c
        .query_one("select pipeline from payrail.payments", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(pipeline["digests"].as_array().unwrap().len(), 2);
    assert!(db.audit().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn limits_decline_is_recorded_without_postings_and_replays_as_declined() {
    let db = TestDb::new().await;
    db.samples().await;
    db.account("alice", 1_000_000).await;
    db.account("bob", 0).await;
    let p = db.processor();
    let req = transfer("alice", "bob", 500_000);
    let out = p.pay(DEFAULT_TENANT, "big", &req).await.unwrap();
    assert_eq!(out.response.status, PaymentStatus::Declined);
    assert_eq!(
        out.response.decline.as_ref().unwrap().code,
        "amount_too_large"
    );
    assert!(out.response.postings.is_empty());
    assert_eq!(db.balance("alice").await, 1_000_000);
    let [payments, entries, outbox, keys, _] = db.counts().await;
    assert_eq!((payments, entries, outbox, keys), (1, 0, 1, 1));
    let again = p.pay(DEFAULT_TENANT, "big", &req).await.unwrap();
    assert!(again.replayed);
    assert_eq!(again.response, out.response);
    assert!(db.audit().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overdraft_is_declined_as_insufficient_funds() {
    let db = TestDb::new().await;
    db.samples().await;
    db.account("alice", 5_000).await;
    db.account("bob", 0).await;
    // 5_000 + fee 60 > 5_000
    let out = db
        .processor()
        .pay(DEFAULT_TENANT, "k", &transfer("alice", "bob", 5_000))
        .await
        .unwrap();
    assert_eq!(out.response.status, PaymentStatus::Declined);
    assert_eq!(out.response.decline.unwrap().code, "insufficient_funds");
    assert_eq!(db.balance("alice").await, 5_000);
    assert_eq!(db.balance("fees").await, 0);
    assert!(db.audit().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sequential_retry_with_same_key_writes_nothing_new() {
    let db = TestDb::new().await;
    db.samples().await;
    db.account("alice", 100_000).await;
    db.account("bob", 0).await;
    let p = db.processor();
    let req = transfer("alice", "bob", 1_000);
    let first = p.pay(DEFAULT_TENANT, "same", &req).await.unwrap();
    let before = db.counts().await;
    for _ in 0..3 {
        let again = p.pay(DEFAULT_TENANT, "same", &req).await.unwrap();
        assert!(again.replayed);
        assert_eq!(again.response, first.response);
    }
    assert_eq!(db.counts().await, before);
    assert_eq!(db.balance("bob").await, 1_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_duplicates_take_effect_exactly_once() {
    let db = TestDb::new().await;
    db.samples().await;
    db.account("alice", 100_000).await;
    db.account("bob", 0).await;
    let p = db.processor();
    let req = transfer("alice", "bob", 2_000);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let (p, req) = (p.clone(), req.clone());
        tasks.spawn(async move { p.pay(DEFAULT_TENANT, "dup", &req).await });
    }
    let results: Vec<_> = tasks.join_all().await;
    // A duplicate either replays the finished payment or is told the first
    // attempt is still in progress; never a second effect.
    let mut outs = Vec::new();
    for r in results {
        match r {
            Ok(o) => outs.push(o),
            Err(e) => assert_eq!(e.code(), "idempotency_key_in_progress", "{e}"),
        }
    }
    assert_eq!(outs.iter().filter(|o| !o.replayed).count(), 1);
    assert!(outs.iter().all(|o| o.response == outs[0].response));
    let replay = p.pay(DEFAULT_TENANT, "dup", &req).await.unwrap();
    assert!(replay.replayed);
    assert_eq!(replay.response, outs[0].response);
    let [payments, entries, _, keys, _] = db.counts().await;
    assert_eq!((payments, entries, keys), (1, 4, 1));
    assert_eq!(db.balance("bob").await, 2_000);
    assert!(db.audit().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reusing_a_key_for_a_different_request_is_a_conflict() {
    let db = TestDb::new().await;
    db.samples().await;
    db.account("alice", 100_000).await;
    db.account("bob", 0).await;
    let p = db.processor();
    p.pay(DEFAULT_TENANT, "k", &transfer("alice", "bob", 1_000))
        .await
        .unwrap();
    let before = db.counts().await;
    let err = p
        .pay(DEFAULT_TENANT, "k", &transfer("alice", "bob", 1_001))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "idempotency_key_conflict");
    assert_eq!(db.counts().await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_gets_a_typed_error_and_writes_nothing() {
    let db = TestDb::new().await;
    db.samples().await;
    db.account("alice", 100_000).await;
    db.account("bob", 0).await;
    db.account_with("yen", "JPY", 1_000, false).await;
    let p = db.processor();
    let mut other_kind = transfer("alice", "bob", 10);
    other_kind.kind = "nope".into();
    let mut unknown_cur = transfer("alice", "bob", 10);
    unknown_cur.currency = "XYZ".into();
    let cases = [
        ("k", transfer("alice", "bob", 0), "invalid_amount"),
        ("k", transfer("alice", "bob", -5), "invalid_amount"),
        ("k", transfer("alice", "alice", 5), "same_account"),
        ("k", transfer("alice", "b ob", 5), "invalid_id"),
        ("k", transfer("alice", &"x".repeat(65), 5), "invalid_id"),
        ("k", transfer("alice", "equity:EUR", 5), "invalid_id"),
        ("k", transfer("alice", "carol", 5), "account_not_found"),
        ("k", transfer("alice", "yen", 5), "currency_mismatch"),
        ("k", unknown_cur, "unknown_currency"),
        ("k", other_kind, "pipeline_not_found"),
        ("", transfer("alice", "bob", 5), "invalid_idempotency_key"),
    ];
    let before = db.counts().await;
    for (key, req, code) in cases {
        let err = p.pay(DEFAULT_TENANT, key, &req).await.unwrap_err();
        assert_eq!(err.code(), code, "{req:?}: {err}");
        assert_eq!(db.counts().await, before, "{req:?} wrote something");
    }
    // the key was never consumed by the failures
    let ok = p
        .pay(DEFAULT_TENANT, "k", &transfer("alice", "bob", 5))
        .await;
    assert_eq!(ok.unwrap().response.status, PaymentStatus::Approved);
}

/// The bank test: random concurrent transfers among 10 accounts; money is
/// conserved, nothing forbidden goes negative, the audit passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_random_transfers_conserve_money() {
    let seed: u64 = std::env::var("PAYRAIL_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("bank test seed={seed} (replay with PAYRAIL_TEST_SEED={seed})");
    let db = TestDb::new().await;
    db.samples().await;
    let accounts: Vec<String> = (0..10).map(|i| format!("acct-{i}")).collect();
    for a in &accounts {
        db.account(a, 20_000).await;
    }
    let total_before: i64 = 10 * 20_000;
    let p = db.processor();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..8u64 {
        let p = p.clone();
        let accounts = accounts.clone();
        tasks.spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed ^ (t + 1));
            let mut approved = 0;
            for n in 0..40 {
                let from = rng.random_range(0..accounts.len());
                let to = (from + rng.random_range(1..accounts.len())) % accounts.len();
                let amount = rng.random_range(1..8_000);
                let key = format!("t{t}-{n}");
                let req = transfer(&accounts[from], &accounts[to], amount);
                let out = p.pay(DEFAULT_TENANT, &key, &req).await.expect("payment");
                if out.response.status == PaymentStatus::Approved {
                    approved += 1;
                }
                // every fifth payment is retried and must replay
                if n % 5 == 0 {
                    let again = p.pay(DEFAULT_TENANT, &key, &req).await.unwrap();
                    assert!(again.replayed);
                    assert_eq!(again.response, out.response);
                }
            }
            approved
        });
    }
    let approved: i32 = tasks.join_all().await.iter().sum();
    let mut total_after = db.balance("fees").await;
    for a in &accounts {
        let b = db.balance(a).await;
        assert!(b >= 0, "{a} went negative: {b}");
        total_after += b;
    }
    assert_eq!(total_after, total_before, "money was created or destroyed");
    let [payments, entries, ..] = db.counts().await;
    assert_eq!(payments, 8 * 40);
    assert_eq!(
        entries,
        i64::from(approved) * 4,
        "4 entries per approved payment"
    );
    let violations = db.audit().await;
    assert!(violations.is_empty(), "{violations:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn audit_detects_a_balance_changed_behind_the_hosts_back() {
    let db = sound_ledger_with_one_payment().await;
    let c = db.pool.get().await.unwrap();
    c.execute(
        "update payrail.accounts set balance = balance + 1 where id = 'bob'",
        &[],
    )
    .await
    .unwrap();
    let violations = db.audit().await;
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert_eq!(violations[0].check, "balance_equals_entries");
}

/// Entries carry no foreign keys (migration 0006): the audit is what
/// catches an entry naming an account or a payment that does not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn audit_detects_entries_naming_missing_accounts_or_payments() {
    let db = sound_ledger_with_one_payment().await;
    let c = db.pool.get().await.unwrap();
    // A balanced pair, so only the dangling references are wrong.
    c.execute(
        "insert into payrail.entries (tenant, txn_id, payment_id, account_id, amount, currency)
         values ('default', gen_random_uuid(), gen_random_uuid(), 'ghost', 5, 'EUR'),
                ('default', gen_random_uuid(), null, 'alice', -5, 'EUR')",
        &[],
    )
    .await
    .unwrap();
    let checks: std::collections::BTreeSet<&str> = audit_checks(&db).await.into_iter().collect();
    assert!(checks.contains("entry_account_exists"), "{checks:?}");
    assert!(checks.contains("entry_payment_exists"), "{checks:?}");
}

/// Credit shards (migration 0008) count in the balance the audit checks,
/// and a shard naming no account is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn audit_counts_credit_shards_and_detects_orphans() {
    let db = sound_ledger_with_one_payment().await;
    let c = db.pool.get().await.unwrap();
    // Money in a shard that no entry explains.
    c.execute(
        "insert into payrail.credit_shards (tenant, account, shard, amount)
         values ('default', 'bob', 3, 7)",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(
        db.balance("bob").await,
        1_007,
        "the balance includes shards"
    );
    let checks = audit_checks(&db).await;
    assert_eq!(checks, ["balance_equals_entries"]);
    c.execute(
        "update payrail.credit_shards set account = 'ghost' where account = 'bob'",
        &[],
    )
    .await
    .unwrap();
    let checks = audit_checks(&db).await;
    assert_eq!(checks, ["credit_shard_account_exists"]);
    // A shard cannot go negative: credits only.
    let err = c
        .execute(
            "insert into payrail.credit_shards (tenant, account, shard, amount)
             values ('default', 'alice', 1, -1)",
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::CHECK_VIOLATION)
    );
}

/// Event ids are unique by construction since migration 0010 dropped their
/// unique index; the audit is what catches a second row with one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_detects_a_duplicated_event_id() {
    let db = sound_ledger_with_one_payment().await;
    let c = db.pool.get().await.unwrap();
    let copied = c
        .execute(
            "insert into payrail.outbox (event_id, tenant, topic, key, payload)
             select event_id, tenant, topic, key, payload from payrail.outbox limit 1",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(copied, 1);
    let checks = audit_checks(&db).await;
    assert_eq!(checks, ["outbox_event_id_unique"]);
}

/// The journal keeps its sha256 values as 32 bytes (migration 0011): a
/// row with a digest of any other length is refused, not stored. The same
/// copy with every digest whole (`none`) is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_row_with_a_digest_that_is_not_32_bytes_is_refused() {
    let db = sound_ledger_with_one_payment().await;
    let c = db.pool.get().await.unwrap();
    // A copy of a journal row under a new call key, with the named
    // column cut to 31 bytes.
    let copy = "insert into payrail.plugin_calls
          (call_key, payment_id, step, digest, input_digest, input, output,
           fuel_used, duration_us)
        select case when $1 = 'call_key' then substring(sha256(call_key) from 2)
                    else sha256(call_key) end,
               payment_id, step,
               case when $1 = 'digest' then substring(digest from 2) else digest end,
               case when $1 = 'input_digest' then substring(input_digest from 2)
                    else input_digest end,
               input, output, fuel_used, duration_us
        from payrail.plugin_calls order by step limit 1";
    for column in ["call_key", "digest", "input_digest"] {
        let err = c.execute(copy, &[&column]).await.unwrap_err();
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::CHECK_VIOLATION),
            "{column}: {err}"
        );
    }
    assert_eq!(c.execute(copy, &[&"none"]).await.unwrap(), 1);
}

/// The names of the checks the audit reports as broken.
async fn audit_checks(db: &TestDb) -> Vec<&'static str> {
    db.audit().await.iter().map(|v| v.check).collect()
}

/// The setup of the audit tests: alice paid bob once, and the audit passes.
async fn sound_ledger_with_one_payment() -> TestDb {
    let db = TestDb::new().await;
    db.samples().await;
    db.account("alice", 100_000).await;
    db.account("bob", 0).await;
    db.processor()
        .pay(DEFAULT_TENANT, "k", &transfer("alice", "bob", 1_000))
        .await
        .unwrap();
    assert!(db.audit().await.is_empty(), "{:?}", db.audit().await);
    db
}
