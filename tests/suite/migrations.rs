//! Migrations: idempotent, and safe from several processes at once.

use crate::common;

use payrail::db;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migrate_twice_and_concurrently() {
    let pool = common::TestDb::unmigrated().await.pool;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let pool = pool.clone();
        tasks.spawn(async move {
            let mut c = pool.get().await.unwrap();
            db::migrate::migrate(&mut c).await.unwrap()
        });
    }
    let applied: Vec<Vec<i32>> = tasks.join_all().await;
    let total: usize = applied.iter().map(Vec::len).sum();
    assert_eq!(
        total,
        db::migrate::MIGRATIONS.len(),
        "each migration applied once: {applied:?}"
    );
    let mut c = pool.get().await.unwrap();
    assert!(db::migrate::migrate(&mut c).await.unwrap().is_empty());
    assert!(db::migrate::is_current(&c).await.unwrap());
    let rows: i64 = c
        .query_one("select count(*) from payrail.schema_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows as usize, db::migrate::MIGRATIONS.len());
    // a changed migration file is refused
    c.execute(
        "update payrail.schema_migrations set checksum = 'x' where version = 1",
        &[],
    )
    .await
    .unwrap();
    let err = db::migrate::migrate(&mut c).await.unwrap_err();
    assert!(
        err.to_string().contains("was changed after it was applied"),
        "{err}"
    );
}

/// Schema 12 on a ledger written before it: the payments' unique (tenant,
/// key) constraint is added over hash-id payments, and its name is the one
/// the host maps to `idempotency_key_expired` (a renamed constraint would
/// turn a reused key into a database error).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_12_refuses_a_second_payment_for_a_key_of_an_older_ledger() {
    let mut c = common::TestDb::unmigrated().await.pool.get().await.unwrap();
    assert_eq!(
        db::migrate::migrate_to(&mut c, 11).await.unwrap(),
        (1..=11).collect::<Vec<i32>>(),
        "schema 11, recorded as `payrail migrate` records it"
    );
    let insert = "insert into payrail.payments
                      (id, tenant, idempotency_key, kind, source, destination, amount, currency, status)
                  values (gen_random_uuid(), 't', $1, 'transfer', 'a', 'b', 100, 'EUR', 'approved')";
    for key in ["k1", "k2"] {
        c.execute(insert, &[&key]).await.unwrap();
    }
    // before 12 nothing but the (hash) id refused a second payment for a key
    let second: uuid::Uuid = c
        .query_one(&format!("{insert} returning id"), &[&"k1"])
        .await
        .unwrap()
        .get(0);
    c.execute("delete from payrail.payments where id = $1", &[&second])
        .await
        .unwrap();

    assert_eq!(db::migrate::migrate_to(&mut c, 12).await.unwrap(), vec![12]);
    let err = c.execute(insert, &[&"k1"]).await.unwrap_err();
    let db_err = err.as_db_error().expect("a database error");
    assert_eq!(
        db_err.constraint(),
        Some(payrail::processor::PAYMENT_KEY_CONSTRAINT),
        "{db_err}"
    );
    c.execute(insert, &[&"k3"]).await.unwrap();
    let n: i64 = c
        .query_one("select count(*) from payrail.payments", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3);
}

/// Payments from one client, one after another, until `stop`; returns the
/// longest a payment took (its stall) and how many were made.
async fn pay_until(
    p: payrail::processor::Processor,
    tag: &str,
    stop: tokio::sync::watch::Receiver<bool>,
) -> (std::time::Duration, u32) {
    let (mut worst, mut n) = (std::time::Duration::ZERO, 0u32);
    while !*stop.borrow() {
        let start = std::time::Instant::now();
        let out = p
            .pay(
                payrail::model::DEFAULT_TENANT,
                &format!("{tag}-{n}"),
                &common::transfer("alice", "bob", 1),
            )
            .await
            .expect("a payment during the migration");
        assert_eq!(out.response.status, payrail::model::PaymentStatus::Approved);
        worst = worst.max(start.elapsed());
        n += 1;
    }
    (worst, n)
}

/// A ledger at `version` with the samples and two accounts.
async fn ledger_at(version: i32) -> common::TestDb {
    let db = common::TestDb::unmigrated().await;
    let mut c = db.pool.get().await.unwrap();
    db::migrate::migrate_to(&mut c, version).await.unwrap();
    db.samples().await;
    db.account("alice", 1_000_000_000).await;
    db.account("bob", 1_000_000_000).await;
    db
}

/// The attack a live migration meets: a long transaction (a report, a
/// backup's `pg_dump`) reads the accounts, and `alter table accounts` queues
/// behind it for an exclusive lock; every payment queues behind the alter.
/// Under a lock timeout the alter gives up, payments pass, and it is tried
/// again until the reader has gone. Measured both ways in one run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_migration_behind_a_long_transaction_backs_off_instead_of_stalling_payments() {
    const READER_HOLDS_MS: u64 = 3_000;
    let mut stalls = Vec::new();
    for lock_timeout_ms in [200, 600_000] {
        let db = ledger_at(15).await;
        let mut reader = db.pool.get().await.unwrap();
        let tx = reader.transaction().await.unwrap();
        tx.query("select 1 from payrail.accounts limit 1", &[])
            .await
            .unwrap();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let payments = tokio::spawn(pay_until(db.processor(), "load", stop_rx));
        let migrate = {
            let pool = db.pool.clone();
            tokio::spawn(async move {
                let mut c = pool.get().await.unwrap();
                let settings = db::migrate::MigrateSettings {
                    lock_timeout_ms,
                    max_attempts: 1_000,
                    retry_pause_ms: 100,
                };
                db::migrate::migrate_with(&mut c, db::migrate::MIGRATIONS, 16, &settings).await
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(READER_HOLDS_MS)).await;
        tx.commit().await.unwrap();
        assert_eq!(migrate.await.unwrap().unwrap(), vec![16]);
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let _ = stop_tx.send(true);
        let (worst, n) = payments.await.unwrap();
        println!(
            "lock_timeout_ms = {lock_timeout_ms}: {n} payments, longest {} ms while a reader held the table {READER_HOLDS_MS} ms",
            worst.as_millis()
        );
        stalls.push(worst);
        db.assert_conserved(&["alice".into(), "bob".into()], 1_000_000_000)
            .await;
    }
    assert!(
        stalls[0] < std::time::Duration::from_millis(READER_HOLDS_MS / 2),
        "under a 200 ms lock timeout a payment waited {stalls:?}"
    );
    assert!(
        stalls[1] > std::time::Duration::from_millis(READER_HOLDS_MS * 2 / 3),
        "without one payments should have queued behind the alter: {stalls:?} (the attack did not happen)"
    );
}

/// Each migration still pending on a ledger of schema 14 (the oldest the
/// samples deploy on), applied while
/// payments run: the longest payment stall each one caused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_pending_migration_applied_under_payment_load_reports_its_stall() {
    let from = 14;
    let db = ledger_at(from).await;
    for version in from + 1..=db::migrate::latest_version() {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let db_processor = db.processor();
        let tag = format!("v{version}");
        let payments = tokio::spawn(async move { pay_until(db_processor, &tag, stop_rx).await });
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let mut c = db.pool.get().await.unwrap();
        let start = std::time::Instant::now();
        let applied = db::migrate::migrate_to(&mut c, version).await.unwrap();
        let took = start.elapsed();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let _ = stop_tx.send(true);
        let (worst, n) = payments.await.unwrap();
        assert_eq!(applied, vec![version]);
        println!(
            "migration {version}: applied in {} ms; {n} payments meanwhile, the longest {} ms",
            took.as_millis(),
            worst.as_millis()
        );
        assert!(
            worst
                < std::time::Duration::from_millis(
                    db::migrate::MigrateSettings::default().lock_timeout_ms + 2_000
                ),
            "migration {version} stalled a payment {} ms",
            worst.as_millis()
        );
    }
    db.assert_conserved(&["alice".into(), "bob".into()], 1_000_000_000)
        .await;
}

/// Migrations run before the hosts roll: a host of the release before
/// stays ready on the newer schema, and its `migrate` is a no-op.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_older_than_the_schema_stays_ready() {
    let db = common::TestDb::new().await;
    let mut c = db.pool.get().await.unwrap();
    c.execute(
        "insert into payrail.schema_migrations (version, name, checksum) values ($1, 'from_a_newer_release', 'x')",
        &[&(db::migrate::latest_version() + 1)],
    )
    .await
    .unwrap();
    assert!(db::migrate::is_current(&c).await.unwrap());
    assert!(db::migrate::migrate(&mut c).await.unwrap().is_empty());
    let status = db::migrate::status(&c).await.unwrap();
    assert!(status.iter().all(|s| s.applied_at.is_some() && !s.changed));
}

/// A `-- payrail:no-transaction` migration (what `create index
/// concurrently` needs) runs statement by statement, is recorded once, and
/// shows in the status as such; a statement that fails leaves it pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_no_transaction_migration_builds_an_index_concurrently() {
    use db::migrate::{MIGRATIONS, MigrateSettings, Migration, migrate_with};
    let db = common::TestDb::new().await;
    let mut c = db.pool.get().await.unwrap();
    let concurrent = Migration {
        version: 1_000,
        name: "test_concurrent_index",
        sql: "-- payrail:no-transaction\n\
              drop index concurrently if exists payrail.test_payments_created;\n\
              create index concurrently if not exists test_payments_created on payrail.payments (created_at);",
    };
    assert!(!concurrent.transactional());
    let plan = concurrent.lock_plan();
    assert_eq!(plan.len(), 2, "{plan:?}");
    assert!(
        plan.iter().all(|s| s.impact == db::migrate::Impact::None),
        "{plan:?}"
    );
    let broken = Migration {
        version: 1_001,
        name: "test_broken",
        sql: "-- payrail:no-transaction\ncreate index concurrently broken_idx on payrail.no_such_table (x);",
    };
    let list: Vec<Migration> = MIGRATIONS
        .iter()
        .copied()
        .chain([concurrent, broken])
        .collect();
    let settings = MigrateSettings::default();
    let e = migrate_with(&mut c, &list, 1_001, &settings)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("migration 1001"), "{e}");
    let valid: bool = c
        .query_one(
            "select indisvalid from pg_index where indexrelid = 'payrail.test_payments_created'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(valid, "the concurrent build finished");
    let recorded: Vec<i32> = c
        .query(
            "select version from payrail.schema_migrations where version >= 1000",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(recorded, vec![1_000], "the failed one stays pending");
}

/// A migration that never gets its lock gives up after its tries with
/// `migration_lock_busy`, and nothing of it is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_that_never_gets_its_lock_gives_up_and_applies_nothing() {
    let db = common::TestDb::unmigrated().await;
    let mut c = db.pool.get().await.unwrap();
    // schema 17 alters the outbox under a lock; 18 and later wait for none
    let last = 17;
    db::migrate::migrate_to(&mut c, last - 1).await.unwrap();
    let mut reader = db.pool.get().await.unwrap();
    let tx = reader.transaction().await.unwrap();
    tx.query("select 1 from payrail.outbox limit 1", &[])
        .await
        .unwrap();
    let settings = db::migrate::MigrateSettings {
        lock_timeout_ms: 50,
        max_attempts: 3,
        retry_pause_ms: 10,
    };
    let e = db::migrate::migrate_with(&mut c, db::migrate::MIGRATIONS, last, &settings)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "migration_lock_busy", "{e}");
    assert!(e.to_string().contains("in 3 tries"), "{e}");
    tx.commit().await.unwrap();
    let applied: Vec<i32> = db::migrate::status(&c)
        .await
        .unwrap()
        .iter()
        .filter(|m| m.applied_at.is_some())
        .map(|m| m.version)
        .collect();
    assert_eq!(applied.last(), Some(&16), "nothing applied");
    assert_eq!(
        db::migrate::migrate_to(&mut c, last).await.unwrap(),
        vec![last]
    );
}
