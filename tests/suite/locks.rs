//! The lock services of issue 22 on their own: Redis (the shared one, or a
//! server of the test's own where Redis is restarted) and lock files. Each
//! test attacks one promise: exclusive, bounded, all or nothing, released
//! and renewed only by the holder, fenced, free again when a holder dies.

use crate::common::{OwnRedis, TestDb, redis_url, unique_prefix};
use payrail::error::Error;
use payrail::ledger;
use payrail::locks::file::FileLocks;
use payrail::locks::redis::RedisLocks;
use payrail::locks::{Fence, LockError, Service, account_key, sorted_keys};
use payrail::model::DEFAULT_TENANT;
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(30);

/// A lock directory of one test, removed after it.
struct LockDir(std::path::PathBuf);

impl LockDir {
    fn new(name: &str) -> LockDir {
        let dir = std::env::temp_dir().join(unique_prefix(name).replace(':', "-"));
        LockDir(dir)
    }

    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for LockDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn redis(url: &str, prefix: &str, ttl: Duration, wait: Duration) -> RedisLocks {
    RedisLocks::connect(url, prefix, ttl, wait)
        .await
        .expect("redis answers")
}

#[tokio::test]
async fn a_redis_lock_is_exclusive_bounded_all_or_nothing_and_fenced() {
    let (url, prefix) = (redis_url(), unique_prefix("exclusive"));
    let short_wait = redis(&url, &prefix, LONG, Duration::from_millis(200)).await;
    let a = redis(&url, &prefix, LONG, LONG).await;
    let held = a.acquire(&sorted_keys("t", ["x", "y"])).await.unwrap();
    let first_y = held.fences.iter().find(|f| f.key == account_key("t", "y"));
    let first_y = first_y.unwrap().token;

    // y is held: {y, z} waits the bound, then gives up and takes nothing
    let started = Instant::now();
    let refused = short_wait.acquire(&sorted_keys("t", ["y", "z"])).await;
    assert!(matches!(refused, Err(LockError::Timeout)), "{refused:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(150) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    let z = short_wait.acquire(&sorted_keys("t", ["z"])).await;
    assert!(z.is_ok(), "a refused attempt left z locked: {z:?}");
    let many: Vec<String> = (0..=payrail::locks::redis::MAX_KEYS)
        .map(|i| format!("m{i}"))
        .collect();
    let too_many = short_wait
        .acquire(&sorted_keys("t", many.iter().map(String::as_str)))
        .await;
    assert!(
        matches!(too_many, Err(LockError::Unavailable(ref why)) if why.contains("at most")),
        "{too_many:?}"
    );
    let nothing = short_wait.acquire(&[]).await.expect("no account, no wait");
    assert!(nothing.fences.is_empty());

    assert_eq!(a.release(held).await.unwrap(), 2);
    let again = short_wait.acquire(&sorted_keys("t", ["y"])).await.unwrap();
    assert!(
        again.fences[0].token > first_y,
        "the next holder's token grows: {} then {}",
        first_y,
        again.fences[0].token
    );
}

#[tokio::test]
async fn only_the_holder_releases_or_renews_a_redis_lock() {
    let (url, prefix) = (redis_url(), unique_prefix("holder"));
    let keys = sorted_keys("t", ["acc"]);
    let brief = redis(&url, &prefix, Duration::from_millis(150), LONG).await;
    let b = redis(&url, &prefix, LONG, LONG).await;
    let c = redis(&url, &prefix, LONG, Duration::from_millis(100)).await;

    let stale = brief.acquire(&keys).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    // the lock expired while its holder was away: B takes it
    let current = b.acquire(&keys).await.unwrap();
    assert!(current.fences[0].token > stale.fences[0].token);
    assert!(
        !brief.renew(&stale).await.unwrap(),
        "an expired holder renews nothing"
    );
    assert_eq!(
        brief.release(stale).await.unwrap(),
        0,
        "nor releases B's lock"
    );
    assert!(
        matches!(c.acquire(&keys).await, Err(LockError::Timeout)),
        "B still holds it"
    );
    assert!(b.renew(&current).await.unwrap());
    assert_eq!(b.release(current).await.unwrap(), 1);
    assert!(c.acquire(&keys).await.is_ok());
}

/// Kills and restarts `server`, then takes the locks of `keys` once it
/// answers again (the connection manager reconnects; the first commands
/// may see the broken connection).
async fn restart_and_acquire(
    mut server: OwnRedis,
    locks: &RedisLocks,
    keys: &[i64],
) -> (OwnRedis, payrail::locks::redis::RedisHeld) {
    server = tokio::task::spawn_blocking(move || {
        server.restart();
        server
    })
    .await
    .unwrap();
    let mut after = locks.acquire(keys).await;
    for _ in 0..50 {
        if after.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = locks.acquire(keys).await;
    }
    (server, after.expect("redis is back"))
}

#[tokio::test]
async fn a_redis_restart_loses_locks_and_fences_until_they_are_raised() {
    let server = tokio::task::spawn_blocking(OwnRedis::start).await.unwrap();
    let prefix = unique_prefix("restart");
    let keys = sorted_keys("t", ["acc"]);
    let locks = redis(&server.url(), &prefix, LONG, Duration::from_millis(300)).await;
    let mut last = 0;
    for _ in 0..3 {
        let held = locks.acquire(&keys).await.unwrap();
        last = held.fences[0].token;
        locks.release(held).await.unwrap();
    }
    assert_eq!(last, 3);
    let before = locks.acquire(&keys).await.unwrap();
    assert_eq!(before.fences[0].token, 4);

    let (server, after) = restart_and_acquire(server, &locks, &keys).await;
    assert_eq!(
        after.fences[0].token, 1,
        "the lock held before the restart is gone, and so is the counter"
    );
    assert!(
        !locks.renew(&before).await.unwrap(),
        "the old holder lost it"
    );
    locks.release(after).await.unwrap();

    // what Postgres stored (token 4) is raised back: the next token is above it
    locks.raise_fences(&before.fences).await.unwrap();
    let next = locks.acquire(&keys).await.unwrap();
    assert_eq!(next.fences[0].token, 5);
    locks
        .raise_fences(&[payrail::locks::Fence {
            key: keys[0],
            token: 2,
        }])
        .await
        .unwrap();
    locks.release(next).await.unwrap();
    let higher = locks.acquire(&keys).await.unwrap();
    assert_eq!(higher.fences[0].token, 6, "raising never lowers");
    drop(server);
}

#[tokio::test]
async fn a_lock_file_is_exclusive_fenced_and_keeps_its_count() {
    let dir = LockDir::new("exclusive");
    let keys = sorted_keys("t", ["x", "y"]);
    let a = FileLocks::new(dir.path(), 64, LONG).unwrap();
    let b = FileLocks::new(dir.path(), 64, Duration::from_millis(200)).unwrap();
    let held = a.acquire(&keys).await.unwrap();
    let started = Instant::now();
    assert!(matches!(
        b.acquire(&keys[1..]).await,
        Err(LockError::Timeout)
    ));
    assert!(started.elapsed() >= Duration::from_millis(150));
    let first = held.fences.clone();
    drop(held);
    let again = b.acquire(&keys).await.unwrap();
    for (was, now) in first.iter().zip(&again.fences) {
        assert_eq!(was.key, now.key);
        assert!(now.token > was.token, "{was:?} then {now:?}");
    }
    drop(again);
    // a new instance (a restarted host) continues the count
    let c = FileLocks::new(dir.path(), 64, LONG).unwrap();
    let third = c.acquire(&keys).await.unwrap();
    assert!(third.fences[0].token > first[0].token + 1);
    assert!(FileLocks::new(dir.path(), 0, LONG).is_err());
}

#[tokio::test]
async fn the_lock_file_of_a_killed_holder_is_free_at_once() {
    let dir = LockDir::new("killed");
    let keys = sorted_keys("t", ["acc"]);
    let locks = FileLocks::new(dir.path(), 64, Duration::from_millis(200)).unwrap();
    let path = locks.path_of(keys[0]);
    // another process holds the slot's lock, as a host would
    let mut holder = std::process::Command::new("python3")
        .args([
            "-c",
            "import fcntl, sys, time\n\
             f = open(sys.argv[1], 'a+')\n\
             fcntl.flock(f, fcntl.LOCK_EX)\n\
             print('locked', flush=True)\n\
             time.sleep(600)",
        ])
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "locked");
    assert!(matches!(
        locks.acquire(&keys).await,
        Err(LockError::Timeout)
    ));
    holder.kill().unwrap();
    holder.wait().unwrap();
    let started = Instant::now();
    let held = locks.acquire(&keys).await.expect("the kernel released it");
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(held.fences[0].token, 1);
}

/// Fences `fences` in a transaction of its own on `db` and commits.
async fn fence(db: &TestDb, fences: &[(&str, i64)]) -> payrail::error::Result<()> {
    let mut c = db.pool.get().await.unwrap();
    let tx = c.transaction().await.unwrap();
    ledger::fence_accounts(&tx, DEFAULT_TENANT, fences).await?;
    tx.commit().await.unwrap();
    Ok(())
}

#[tokio::test]
async fn postgres_refuses_a_write_under_an_older_fencing_token() {
    let db = TestDb::new().await;
    db.account("a", 100).await;
    db.account("b", 100).await;
    fence(&db, &[("a", 5), ("b", 5)]).await.unwrap();
    let lost = fence(&db, &[("a", 6), ("b", 4)]).await;
    assert!(
        matches!(&lost, Err(Error::LockLost { account }) if account == "b"),
        "{lost:?}"
    );
    let again = fence(&db, &[("a", 5)]).await;
    assert!(
        matches!(again, Err(Error::LockLost { .. })),
        "an equal token is another holder: {again:?}"
    );
    fence(&db, &[("a", 6)]).await.unwrap();
    let c = db.pool.get().await.unwrap();
    let stored = ledger::stored_fences(&c, DEFAULT_TENANT, &["a", "b"])
        .await
        .unwrap();
    assert_eq!(
        stored,
        [("a".into(), 6), ("b".into(), 5)],
        "the refused write left b alone"
    );
    assert_eq!(lost.unwrap_err().code(), "lock_lost");
}

#[tokio::test]
async fn an_older_holder_waiting_on_a_newer_ones_row_is_refused_when_it_commits() {
    let db = TestDb::new().await;
    db.account("a", 100).await;
    let mut newer_conn = db.pool.get().await.unwrap();
    let newer = newer_conn.transaction().await.unwrap();
    ledger::fence_accounts(&newer, DEFAULT_TENANT, &[("a", 7)])
        .await
        .unwrap();
    let older = tokio::spawn({
        let pool = db.pool.clone();
        async move {
            let mut c = pool.get().await.unwrap();
            let tx = c.transaction().await.unwrap();
            ledger::fence_accounts(&tx, DEFAULT_TENANT, &[("a", 6)]).await
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!older.is_finished(), "the older holder waits for the row");
    newer.commit().await.unwrap();
    let refused = older.await.unwrap();
    assert!(
        matches!(refused, Err(Error::LockLost { .. })),
        "{refused:?}"
    );
}

/// The pause of issue 22 at the level of the lock service: a holder whose
/// Redis lock expired while it was stopped cannot write after the next
/// holder did; after a Redis restart the counters are raised from what
/// Postgres stored before anyone writes again.
#[tokio::test]
async fn a_paused_redis_holder_is_fenced_and_a_restart_is_repaired_from_postgres() {
    let db = TestDb::new().await;
    db.account("a", 100).await;
    let server = tokio::task::spawn_blocking(OwnRedis::start).await.unwrap();
    let prefix = unique_prefix("paused");
    let keys = sorted_keys(DEFAULT_TENANT, ["a"]);
    let brief = redis(&server.url(), &prefix, Duration::from_millis(150), LONG).await;
    let locks = redis(&server.url(), &prefix, LONG, LONG).await;

    let paused = brief.acquire(&keys).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let next = locks.acquire(&keys).await.unwrap();
    fence(&db, &[("a", next.fences[0].token)]).await.unwrap();
    locks.release(next).await.unwrap();
    let late = fence(&db, &[("a", paused.fences[0].token)]).await;
    assert!(matches!(late, Err(Error::LockLost { .. })), "{late:?}");

    let (server, after) = restart_and_acquire(server, &locks, &keys).await;
    let refused = fence(&db, &[("a", after.fences[0].token)]).await;
    assert!(
        matches!(refused, Err(Error::LockLost { .. })),
        "a counter that restarted at {} is below what Postgres stored: {refused:?}",
        after.fences[0].token
    );
    locks.release(after).await.unwrap();
    let c = db.pool.get().await.unwrap();
    let stored = ledger::stored_fences(&c, DEFAULT_TENANT, &["a"])
        .await
        .unwrap();
    let raise: Vec<Fence> = stored
        .iter()
        .map(|(id, token)| Fence {
            key: account_key(DEFAULT_TENANT, id),
            token: *token,
        })
        .collect();
    locks.raise_fences(&raise).await.unwrap();
    let repaired = locks.acquire(&keys).await.unwrap();
    fence(&db, &[("a", repaired.fences[0].token)])
        .await
        .expect("above the stored token");
    drop(server);
}

/// Two hosts (processors with pools of their own) on one ledger, both
/// under lock service `service`: 300 seeded transfers in both directions
/// over 6 accounts, each sent to both hosts with the same key. Every
/// payment is written once, money is conserved, nothing is overdrawn, the
/// audit passes, and every account a payment wrote carries a fence.
async fn two_hosts_keep_the_ledger(service: Service, seed: u64) {
    use payrail::model::PaymentStatus;
    use payrail::processor::{BatchSettings, Processor, ProcessorSettings};
    use rand::{RngExt, SeedableRng};
    println!("seed {seed} (replay with PAYRAIL_TEST_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let db = TestDb::new().await;
    db.samples().await;
    let accounts: Vec<String> = (0..6).map(|i| format!("acct-{i}")).collect();
    for a in &accounts {
        db.account(a, 50_000).await;
    }
    let settings = ProcessorSettings {
        batch: BatchSettings {
            max_payments: 16,
            workers: 2,
            window_us: 500,
            ..BatchSettings::default()
        },
        ..ProcessorSettings::default()
    };
    let hosts: Vec<Processor> = (0..2)
        .map(|_| {
            let pool = payrail::db::pool(&db.url, 8).unwrap();
            Processor::with_locks(pool, crate::common::engine(), settings, service.clone())
        })
        .collect();
    let payments: Vec<(String, payrail::model::PaymentRequest)> = (0..300)
        .map(|i| {
            let from = rng.random_range(0..accounts.len());
            let to = (from + rng.random_range(1..accounts.len())) % accounts.len();
            let amount = rng.random_range(1..5_000);
            (
                format!("p{i}"),
                crate::common::transfer(&accounts[from], &accounts[to], amount),
            )
        })
        .collect();
    let answers = futures::future::join_all(
        payments
            .iter()
            .flat_map(|(k, req)| hosts.iter().map(move |h| h.pay(DEFAULT_TENANT, k, req))),
    )
    .await;
    for (answer, (k, _)) in answers.iter().zip(payments.iter().flat_map(|p| [p, p])) {
        match answer {
            Ok(out) => assert!(
                matches!(
                    out.response.status,
                    PaymentStatus::Approved | PaymentStatus::Declined
                ),
                "{k}: {:?}",
                out.response.status
            ),
            // the same key on the other host at the same moment
            Err(Error::InProgress { .. }) => {}
            Err(e) => panic!("{k} under {}: {e}", service.name()),
        }
    }
    let c = db.pool.get().await.unwrap();
    let written: i64 = c
        .query_one("select count(*) from payrail.payments", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(written, payments.len() as i64, "every payment once");
    db.assert_conserved(&accounts, 50_000).await;
    let ids: Vec<&str> = accounts.iter().map(String::as_str).collect();
    let fences = ledger::stored_fences(&c, DEFAULT_TENANT, &ids)
        .await
        .unwrap();
    let fenced = !matches!(service, Service::Advisory);
    assert!(fences.iter().all(|(_, t)| (*t > 0) == fenced), "{fences:?}");

    // a hold authorized on one host, captured on the other and voided on
    // the first at once: one transition wins, under the same locks. From
    // the richest account: the seeded transfers may have left any one
    // short of the hold (seed 8631085059250014300 left acct-0 so)
    let mut richest = (String::new(), i64::MIN);
    for a in &accounts {
        let b = db.balance(a).await;
        if b > richest.1 {
            richest = (a.clone(), b);
        }
    }
    let (source, to) = (
        richest.0.as_str(),
        if richest.0 == "acct-1" {
            "acct-2"
        } else {
            "acct-1"
        },
    );
    let fence_of = |f: Vec<(String, i64)>| f[0].1;
    let before = fence_of(
        ledger::stored_fences(&c, DEFAULT_TENANT, &[source])
            .await
            .unwrap(),
    );
    let auth = payrail::model::PaymentRequest {
        capture: payrail::model::CaptureMode::Manual,
        ..crate::common::transfer(source, to, 1_000)
    };
    let held = hosts[0].pay(DEFAULT_TENANT, "hold-1", &auth).await.unwrap();
    assert_eq!(held.response.status, PaymentStatus::Authorized);
    let id = held.response.id.clone();
    let (captured, voided) = tokio::join!(
        hosts[1].capture(DEFAULT_TENANT, "cap-1", &id, None),
        hosts[0].void(DEFAULT_TENANT, "void-1", &id),
    );
    let won = [&captured, &voided].iter().filter(|r| r.is_ok()).count();
    assert_eq!(won, 1, "{captured:?} {voided:?}");
    let after = fence_of(
        ledger::stored_fences(&c, DEFAULT_TENANT, &[source])
            .await
            .unwrap(),
    );
    assert!(
        after >= before + 2 || !fenced,
        "the authorization and the transition wrote fences: {before} then {after}"
    );
    assert!(db.audit().await.is_empty(), "{:?}", db.audit().await);
}

fn seed() -> u64 {
    std::env::var("PAYRAIL_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hosts_under_advisory_locks_keep_the_ledger() {
    two_hosts_keep_the_ledger(Service::Advisory, seed()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hosts_under_redis_locks_keep_the_ledger() {
    let locks = RedisLocks::connect(&redis_url(), &unique_prefix("hosts"), LONG, LONG)
        .await
        .unwrap();
    two_hosts_keep_the_ledger(Service::Redis(Box::new(locks)), seed()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hosts_under_file_locks_keep_the_ledger() {
    let dir = LockDir::new("hosts");
    let locks = FileLocks::new(dir.path(), 64, LONG).unwrap();
    two_hosts_keep_the_ledger(Service::File(locks), seed()).await;
}

/// Redis restarted between payments: its fence counters start again at 1,
/// below what Postgres stored, and the first write is refused
/// (`lock_lost`); the processor raises the counters from Postgres and its
/// retry goes through. Without the repair every later payment on those
/// accounts would be refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_go_on_after_redis_restarts_and_loses_its_counters() {
    use payrail::model::PaymentStatus;
    use payrail::processor::Processor;
    let db = TestDb::new().await;
    db.samples().await;
    db.account("a", 100_000).await;
    db.account("b", 100_000).await;
    let mut server = tokio::task::spawn_blocking(OwnRedis::start).await.unwrap();
    let locks = RedisLocks::connect(&server.url(), &unique_prefix("restart-pay"), LONG, LONG)
        .await
        .unwrap();
    let host = Processor::with_locks(
        db.pool.clone(),
        crate::common::engine(),
        Default::default(),
        Service::Redis(Box::new(locks)),
    );
    let pay = |k: &'static str| {
        let host = host.clone();
        async move {
            host.pay(DEFAULT_TENANT, k, &crate::common::transfer("a", "b", 100))
                .await
        }
    };
    for k in ["r1", "r2", "r3"] {
        assert_eq!(
            pay(k).await.unwrap().response.status,
            PaymentStatus::Approved
        );
    }
    // a ledger that has seen many acquisitions: more than a retry's
    // attempts could climb back to
    fence(&db, &[("a", 1_000), ("b", 1_000)]).await.unwrap();
    let c = db.pool.get().await.unwrap();
    let before = ledger::stored_fences(&c, DEFAULT_TENANT, &["a"])
        .await
        .unwrap()[0]
        .1;
    assert_eq!(before, 1_000);

    server = tokio::task::spawn_blocking(move || {
        server.restart();
        server
    })
    .await
    .unwrap();
    let mut after = pay("r4").await;
    for _ in 0..50 {
        // the connection manager reconnects: the first command may fail
        if !matches!(after, Err(Error::LockUnavailable(_))) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = pay("r4").await;
    }
    assert_eq!(after.unwrap().response.status, PaymentStatus::Approved);
    let fenced = ledger::stored_fences(&c, DEFAULT_TENANT, &["a"])
        .await
        .unwrap()[0]
        .1;
    assert!(fenced > before, "{before} then {fenced}");
    assert_eq!(db.balance("b").await, 100_000 + 400);
    assert!(db.audit().await.is_empty(), "{:?}", db.audit().await);
    drop(server);
}
