//! Migrations: idempotent, and safe from several processes at once.

mod common;

use payrail::db;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migrate_twice_and_concurrently() {
    let admin = common::admin_url().await;
    let name = format!(
        "payrail_test_{}_{:08x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
        rand::random::<u32>()
    );
    db::create_database_if_missing(&admin, &name).await.unwrap();
    let url = db::url_with_database(&admin, &name);
    let pool = db::pool(&url, 8).unwrap();
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
