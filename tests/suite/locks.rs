//! The lock services of issue 22 on their own: Redis (the shared one, or a
//! server of the test's own where Redis is restarted) and lock files. Each
//! test attacks one promise: exclusive, bounded, all or nothing, released
//! and renewed only by the holder, fenced, free again when a holder dies.

use crate::common::{OwnRedis, redis_url, unique_prefix};
use payrail::locks::file::FileLocks;
use payrail::locks::redis::RedisLocks;
use payrail::locks::{LockError, account_key, sorted_keys};
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

#[tokio::test]
async fn a_redis_restart_loses_locks_and_fences_until_they_are_raised() {
    let mut server = tokio::task::spawn_blocking(OwnRedis::start).await.unwrap();
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

    server = tokio::task::spawn_blocking(move || {
        server.restart();
        server
    })
    .await
    .unwrap();
    // the connection manager reconnects; the first command may see the
    // broken connection
    let mut after = locks.acquire(&keys).await;
    for _ in 0..50 {
        if after.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = locks.acquire(&keys).await;
    }
    let after = after.expect("redis is back");
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
