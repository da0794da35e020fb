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
