//! Per-account advisory lock keys and acquisition.
//!
//! Keys are 64-bit (a 32-bit hash collides near 65k accounts), derived from a
//! namespaced sha256 of (tenant, account), so they never meet the fixed keys
//! that migration tools (sqlx, Rails) take for themselves. Locks are
//! transaction-scoped: commit or rollback releases them, so a dead host holds
//! nothing. Callers pass every key of a whole batch at once; this module
//! sorts and dedups them, which is what makes lock order global.

pub mod file;
pub mod redis;

use deadpool_postgres::GenericClient;
use sha2::{Digest, Sha256};

const ACCOUNT_NAMESPACE: &[u8] = b"payrail/account-lock/v1\0";
const MIGRATE_NAMESPACE: &[u8] = b"payrail/migrate/v1";
const IDEMPOTENCY_NAMESPACE: &[u8] = b"payrail/idempotency-key/v1\0";

fn key_of(parts: &[&[u8]]) -> i64 {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    let d = h.finalize();
    i64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

/// Advisory lock key of one account.
pub fn account_key(tenant: &str, account: &str) -> i64 {
    key_of(&[
        ACCOUNT_NAMESPACE,
        tenant.as_bytes(),
        b"\0",
        account.as_bytes(),
    ])
}

/// Key held (transaction-scoped, try-lock) while a request with this
/// idempotency key is in progress: a concurrent duplicate sees it taken and
/// answers "in progress" instead of queueing behind it.
pub fn idempotency_key(tenant: &str, key: &str) -> i64 {
    key_of(&[
        IDEMPOTENCY_NAMESPACE,
        tenant.as_bytes(),
        b"\0",
        key.as_bytes(),
    ])
}

/// Session-level key `payrail migrate` holds while it applies migrations.
pub fn migrate_key() -> i64 {
    key_of(&[MIGRATE_NAMESPACE])
}

/// A fencing token of one account's lock: it grows with every acquisition
/// of that account, so a write carrying an older token than one already
/// written is from a holder whose lock was lost (docs/locking.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    /// The account's lock key ([`account_key`]).
    pub key: i64,
    /// The token, from 1 up.
    pub token: i64,
}

/// Why a lock of a lock service (Redis, a lock directory) was not had.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another holder kept a lock past the wait bound: nothing was taken.
    #[error("an account lock was held elsewhere for longer than the wait bound")]
    Timeout,
    /// The service failed (unreachable, an I/O error): nothing is held.
    #[error("the lock service failed: {0}")]
    Unavailable(String),
}

impl From<LockError> for crate::error::Error {
    fn from(e: LockError) -> crate::error::Error {
        match e {
            LockError::Timeout => crate::error::Error::LockTimeout,
            LockError::Unavailable(why) => crate::error::Error::LockUnavailable(why),
        }
    }
}

/// The pause before attempt `n` (from 0) to take locks held elsewhere:
/// 1 ms doubling to 50 ms, with equal jitter, so waiters do not retry in
/// step.
fn backoff(n: u32) -> std::time::Duration {
    let cap_us = 1_000u64.saturating_mul(1 << n.min(6)).min(50_000);
    let half = cap_us / 2;
    std::time::Duration::from_micros(half + rand::random::<u64>() % (half + 1))
}

/// How accounts are serialized across the hosts that share a ledger
/// (`[locks] backend`; docs/locking.md, "Lock services and fencing").
/// Advisory locks are taken inside each payment's transaction; the two
/// lock services are taken before it, and the transaction's first flight
/// writes their fencing tokens to the accounts.
#[derive(Clone, Default)]
pub enum Service {
    /// `pg_advisory_xact_lock` in the payment's transaction (the default).
    #[default]
    Advisory,
    /// A Redis every host reaches (boxed: its scripts make it large).
    Redis(Box<redis::RedisLocks>),
    /// Lock files in a directory of this machine.
    File(file::FileLocks),
}

/// What a lock service holds for one transaction.
#[derive(Debug)]
enum Held {
    Redis(redis::RedisHeld),
    File(
        #[expect(
            dead_code,
            reason = "kept for its open files: dropping it releases them"
        )]
        file::FileHeld,
    ),
}

/// Locks of a lock service held for one transaction, and the fencing token
/// of each account its first flight writes (`ledger::fence_accounts`).
#[derive(Debug)]
pub struct External {
    held: Held,
    /// (account id, token), in account key order.
    pub fences: Vec<(String, i64)>,
}

impl Service {
    /// Calls to the service since start: Redis round trips, or `flock`
    /// attempts (0 for advisory locks, which ride in the transaction's
    /// first flight).
    pub fn calls(&self) -> u64 {
        match self {
            Service::Advisory => 0,
            Service::Redis(r) => r.calls(),
            Service::File(f) => f.calls(),
        }
    }

    /// Its name in configuration and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Service::Advisory => "advisory",
            Service::Redis(_) => "redis",
            Service::File(_) => "file",
        }
    }

    /// Takes the locks of `accounts` of `tenant` before their transaction
    /// opens. `None` for advisory locks: the transaction takes those.
    /// Cost: Redis, one round trip per attempt; files, a few system calls
    /// per account.
    pub async fn acquire(
        &self,
        tenant: &str,
        accounts: &[String],
    ) -> Result<Option<External>, LockError> {
        // advisory locks are the transaction's own: nothing to hash here,
        // on every payment's path
        if matches!(self, Service::Advisory) || accounts.is_empty() {
            return Ok(None);
        }
        let mut pairs: Vec<(i64, &str)> = accounts
            .iter()
            .map(|a| (account_key(tenant, a), a.as_str()))
            .collect();
        pairs.sort_unstable();
        pairs.dedup();
        let mut keys: Vec<i64> = pairs.iter().map(|&(k, _)| k).collect();
        keys.dedup();
        let (held, tokens) = match self {
            Service::Advisory => return Ok(None),
            Service::Redis(r) => {
                let h = r.acquire(&keys).await?;
                let t = h.fences.clone();
                (Held::Redis(h), t)
            }
            Service::File(f) => {
                let h = f.acquire(&keys).await?;
                let t = h.fences.clone();
                (Held::File(h), t)
            }
        };
        let fences = pairs
            .iter()
            .map(|&(key, id)| {
                let i = tokens
                    .binary_search_by_key(&key, |f| f.key)
                    .expect("a token for every key locked");
                (id.to_string(), tokens[i].token)
            })
            .collect();
        Ok(Some(External { held, fences }))
    }

    /// Raises the service's fence counters of `stored` (account id, the
    /// token Postgres holds) to at least those tokens: after Redis lost
    /// its counters (a restart) or the lock directory was replaced, the
    /// next holder of each account gets a token above the stored one.
    /// Nothing for advisory locks.
    pub async fn raise_fences(
        &self,
        tenant: &str,
        stored: &[(String, i64)],
    ) -> Result<(), LockError> {
        let fences: Vec<Fence> = stored
            .iter()
            .filter(|(_, token)| *token > 0)
            .map(|(id, token)| Fence {
                key: account_key(tenant, id),
                token: *token,
            })
            .collect();
        match self {
            Service::Advisory => Ok(()),
            Service::Redis(r) => r.raise_fences(&fences).await,
            Service::File(f) => f.raise_fences(&fences).await,
        }
    }

    /// Releases what `external` holds (nothing for advisory locks). A
    /// release that fails leaves a Redis lock to expire after its TTL.
    pub async fn release(&self, external: Option<External>) {
        let Some(external) = external else { return };
        match (self, external.held) {
            (Service::Redis(r), Held::Redis(h)) => {
                if let Err(e) = r.release(h).await {
                    tracing::warn!(error = %e, "releasing account locks failed: they expire after their TTL");
                }
            }
            // closing the files releases them
            (_, held) => drop(held),
        }
    }
}

/// Sorted, deduplicated lock keys for a set of accounts.
pub fn sorted_keys<'a>(tenant: &str, accounts: impl IntoIterator<Item = &'a str>) -> Vec<i64> {
    let mut keys: Vec<i64> = accounts
        .into_iter()
        .map(|a| account_key(tenant, a))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// Takes `pg_advisory_xact_lock` on every key, in the given (sorted) order,
/// in one round trip. Bounded by the transaction's `lock_timeout`.
pub async fn lock_all(
    tx: &impl GenericClient,
    sorted_keys: &[i64],
) -> Result<(), tokio_postgres::Error> {
    debug_assert!(sorted_keys.windows(2).all(|w| w[0] < w[1]), "keys sorted");
    let stmt = tx
        .prepare_cached("select pg_advisory_xact_lock(k) from unnest($1::bigint[]) as t(k)")
        .await?;
    tx.execute(&stmt, &[&sorted_keys]).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_namespaced_by_tenant_and_stable() {
        assert_ne!(account_key("a", "x"), account_key("b", "x"));
        assert_ne!(account_key("a", "bx"), account_key("ab", "x"));
        assert_eq!(account_key("t", "acc"), account_key("t", "acc"));
    }

    #[test]
    fn backoff_grows_to_its_cap() {
        for n in 0..20 {
            let b = backoff(n);
            assert!(b <= std::time::Duration::from_millis(50), "{n}: {b:?}");
            assert!(b >= std::time::Duration::from_micros(500), "{n}: {b:?}");
        }
    }

    #[test]
    fn sorted_keys_sorts_and_dedups() {
        let keys = sorted_keys("t", ["b", "a", "b", "c"]);
        assert_eq!(keys.len(), 3);
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
    }
}
