//! Account locks in Redis, done the way a payment system needs them
//! (issue 22; docs/locking.md, "Which lock should a payment system use?").
//!
//! - A lock is `SET lock:{key} {token} NX PX {ttl}` with a random token per
//!   acquisition. Every lock a payment needs is taken in one Lua script, all
//!   or nothing: a caller never holds some while waiting for others, so two
//!   callers cannot deadlock, and a refused attempt leaves nothing behind.
//! - Release and renewal compare the token first (one script each): a
//!   holder whose lock expired cannot delete or extend the next holder's.
//! - Each acquisition of an account also takes a fencing token,
//!   `INCR fence:{key}`, in the same script. A lock can be lost while its
//!   holder still works (a pause longer than the TTL, a Redis restart: the
//!   Redis of these machines keeps nothing on disk), so correctness rests on
//!   the token, checked by Postgres when the payment writes the account.
//! - A restart also loses the fence counters; [`RedisLocks::raise_fences`]
//!   sets them back above what Postgres has stored, never lower.
//! - Waiting is bounded: attempts back off from 1 ms to 50 ms until
//!   `wait`, then [`LockError::Timeout`].
//!
//! Costs: one round trip per attempt, one to release; the scripts are
//! loaded once per connection (`EVALSHA`). The keys of one call must live
//! on one node: a single Redis, or a Redis Cluster with `prefix` in a hash
//! tag (`{payrail}:`).

use super::{Fence, LockError, backoff};
use redis::aio::ConnectionManager;
use std::time::{Duration, Instant};

/// Most accounts one call locks (a batch's parties are at most a few
/// hundred): the script's argument list stays small.
pub const MAX_KEYS: usize = 1024;

/// Takes every lock of KEYS[1..n] (n = #KEYS / 2) or none, then bumps the
/// fence of each (KEYS[n+1..2n]). Returns the tokens, or `{-i}` when lock
/// `i` is held elsewhere (the ones it set are deleted again).
const ACQUIRE: &str = r"
local n = #KEYS / 2
for i = 1, n do
  if not redis.call('SET', KEYS[i], ARGV[1], 'NX', 'PX', ARGV[2]) then
    for j = 1, i - 1 do redis.call('DEL', KEYS[j]) end
    return {-i}
  end
end
local out = {}
for i = 1, n do out[i] = redis.call('INCR', KEYS[n + i]) end
return out
";

/// Deletes each of KEYS still holding token ARGV[1]; returns how many.
const RELEASE: &str = r"
local n = 0
for _, k in ipairs(KEYS) do
  if redis.call('GET', k) == ARGV[1] then redis.call('DEL', k); n = n + 1 end
end
return n
";

/// Sets a TTL of ARGV[2] ms on each of KEYS still holding token ARGV[1];
/// returns how many.
const RENEW: &str = r"
local n = 0
for _, k in ipairs(KEYS) do
  if redis.call('GET', k) == ARGV[1] then redis.call('PEXPIRE', k, ARGV[2]); n = n + 1 end
end
return n
";

/// Raises each fence counter KEYS[i] to at least ARGV[i], never lowers it.
const RAISE: &str = r"
for i, k in ipairs(KEYS) do
  local v = tonumber(redis.call('GET', k) or '0')
  if v < tonumber(ARGV[i]) then redis.call('SET', k, ARGV[i]) end
end
return #KEYS
";

/// Locks held by one caller. Release them with [`RedisLocks::release`];
/// dropped without it, they expire after the TTL.
#[derive(Debug)]
pub struct RedisHeld {
    token: String,
    lock_keys: Vec<String>,
    /// One per account, in key order.
    pub fences: Vec<Fence>,
}

/// The Redis lock service of one host.
#[derive(Clone)]
pub struct RedisLocks {
    conn: ConnectionManager,
    prefix: String,
    ttl: Duration,
    wait: Duration,
    acquire: redis::Script,
    release: redis::Script,
    renew: redis::Script,
    raise: redis::Script,
    /// Scripts run (round trips), since start.
    calls: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

fn unavailable(e: redis::RedisError) -> LockError {
    LockError::Unavailable(format!("redis: {e}"))
}

impl RedisLocks {
    /// Connects to `url` (`redis://host:port/db`). Locks live `ttl` unless
    /// renewed; a caller waits at most `wait` for locks held elsewhere.
    /// Keys start with `prefix`.
    pub async fn connect(
        url: &str,
        prefix: &str,
        ttl: Duration,
        wait: Duration,
    ) -> Result<RedisLocks, LockError> {
        assert!(!ttl.is_zero(), "a lock lives for some time");
        let client = redis::Client::open(url).map_err(unavailable)?;
        let conn = ConnectionManager::new(client).await.map_err(unavailable)?;
        Ok(RedisLocks {
            conn,
            prefix: prefix.to_string(),
            ttl,
            wait,
            acquire: redis::Script::new(ACQUIRE),
            release: redis::Script::new(RELEASE),
            renew: redis::Script::new(RENEW),
            raise: redis::Script::new(RAISE),
            calls: Default::default(),
        })
    }

    /// Round trips to Redis since start (every script run).
    pub fn calls(&self) -> u64 {
        self.calls.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn count(&self) {
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn lock_key(&self, key: i64) -> String {
        format!("{}lock:{key:016x}", self.prefix)
    }

    fn fence_key(&self, key: i64) -> String {
        format!("{}fence:{key:016x}", self.prefix)
    }

    /// Takes the locks of `sorted_keys` ([`super::sorted_keys`]), all or
    /// none, waiting at most the wait bound while any is held elsewhere.
    pub async fn acquire(&self, sorted_keys: &[i64]) -> Result<RedisHeld, LockError> {
        assert!(
            sorted_keys.windows(2).all(|w| w[0] < w[1]),
            "keys sorted and distinct"
        );
        if sorted_keys.len() > MAX_KEYS {
            return Err(LockError::Unavailable(format!(
                "{} accounts in one call; at most {MAX_KEYS}",
                sorted_keys.len()
            )));
        }
        let token = format!("{:032x}", rand::random::<u128>());
        if sorted_keys.is_empty() {
            // nothing to lock: the script would find no first token and wait
            return Ok(RedisHeld {
                token,
                lock_keys: Vec::new(),
                fences: Vec::new(),
            });
        }
        let lock_keys: Vec<String> = sorted_keys.iter().map(|&k| self.lock_key(k)).collect();
        let mut invocation = self.acquire.prepare_invoke();
        for k in &lock_keys {
            invocation.key(k);
        }
        for &k in sorted_keys {
            invocation.key(self.fence_key(k));
        }
        invocation.arg(&token).arg(self.ttl.as_millis() as u64);
        let deadline = Instant::now() + self.wait;
        let mut attempt = 0u32;
        loop {
            let mut conn = self.conn.clone();
            self.count();
            let out: Vec<i64> = invocation
                .invoke_async(&mut conn)
                .await
                .map_err(unavailable)?;
            if out.first().is_some_and(|&first| first > 0) {
                assert_eq!(out.len(), sorted_keys.len(), "a token per account");
                let fences = sorted_keys
                    .iter()
                    .zip(out)
                    .map(|(&key, token)| Fence { key, token })
                    .collect();
                return Ok(RedisHeld {
                    token,
                    lock_keys,
                    fences,
                });
            }
            let pause = backoff(attempt);
            if Instant::now() + pause > deadline {
                return Err(LockError::Timeout);
            }
            tokio::time::sleep(pause).await;
            attempt = attempt.saturating_add(1);
        }
    }

    async fn by_holder(
        &self,
        script: &redis::Script,
        held: &RedisHeld,
    ) -> Result<usize, LockError> {
        let mut invocation = script.prepare_invoke();
        for k in &held.lock_keys {
            invocation.key(k);
        }
        invocation.arg(&held.token).arg(self.ttl.as_millis() as u64);
        let mut conn = self.conn.clone();
        invocation
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)
    }

    /// Releases what `held` still holds (a lock that expired and was taken
    /// by another holder is left alone). Returns how many it released.
    pub async fn release(&self, held: RedisHeld) -> Result<usize, LockError> {
        self.by_holder(&self.release, &held).await
    }

    /// Extends every lock of `held` by the TTL. `false`: at least one was
    /// lost (expired, taken over, or Redis restarted); the holder's writes
    /// will be refused by their fences.
    pub async fn renew(&self, held: &RedisHeld) -> Result<bool, LockError> {
        Ok(self.by_holder(&self.renew, held).await? == held.lock_keys.len())
    }

    /// Raises the fence counters of `fences` to at least their tokens: after
    /// a restart lost the counters, the next holder of each account gets a
    /// token above the one Postgres has stored.
    pub async fn raise_fences(&self, fences: &[Fence]) -> Result<(), LockError> {
        if fences.is_empty() {
            return Ok(());
        }
        let mut invocation = self.raise.prepare_invoke();
        for f in fences {
            invocation.key(self.fence_key(f.key)).arg(f.token);
        }
        let mut conn = self.conn.clone();
        self.count();
        let _: i64 = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}
