//! Tenants and API keys. A key belongs to one tenant and carries scopes;
//! only the sha256 of its secret is stored, so the secret is shown once, at
//! creation, and a database dump does not reveal usable keys.
//!
//! Key format: `pr_` followed by 64 hex characters (32 random bytes from
//! the OS generator). Lookups hash the presented secret and find the row by
//! its unique hash, so no secret is ever compared in the database.

use crate::error::{Error, Result};
use crate::ledger::validate_id;
use deadpool_postgres::GenericClient;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Shortest time a key found unknown stays unknown (the negative cache),
/// whatever the cache TTL: a flood of unknown keys costs at most one
/// lookup per key per this long.
const MIN_UNKNOWN_TTL_MS: u64 = 1_000;

/// Prefix of every key secret (helps secret scanners and humans).
pub const KEY_PREFIX: &str = "pr_";
/// Length of a well-formed secret: the prefix and 64 hex characters.
pub const KEY_LEN: usize = KEY_PREFIX.len() + 64;
/// Most keys one tenant may have listed at once.
pub const MAX_LIST: i64 = 1000;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Accounts and payments.
    Payments,
    /// Plugins and pipelines.
    Admin,
}

impl Scope {
    /// The name stored and shown for the scope.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Payments => "payments",
            Scope::Admin => "admin",
        }
    }

    /// Parses a scope name.
    pub fn parse(s: &str) -> Result<Scope> {
        match s.trim() {
            "payments" => Ok(Scope::Payments),
            "admin" => Ok(Scope::Admin),
            other => Err(Error::invalid(
                "invalid_scope",
                format!("unknown scope {other:?}; scopes are `payments` and `admin`"),
            )),
        }
    }

    /// Parses a comma-separated list (`admin,payments`), deduplicated.
    pub fn parse_list(s: &str) -> Result<Vec<Scope>> {
        let mut scopes = Vec::new();
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            let scope = Scope::parse(part)?;
            if !scopes.contains(&scope) {
                scopes.push(scope);
            }
        }
        if scopes.is_empty() {
            return Err(Error::invalid(
                "invalid_scope",
                "give at least one scope: `payments`, `admin` or `admin,payments`",
            ));
        }
        Ok(scopes)
    }
}

/// A stored key, without its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApiKey {
    /// Public id (`key_` + 16 hex), used to revoke the key.
    pub id: String,
    /// The tenant every request made with the key acts for.
    pub tenant: String,
    /// What the key may do.
    pub scopes: Vec<Scope>,
    /// Creation time (RFC 3339, UTC).
    pub created_at: String,
    /// Revocation time, if revoked.
    pub revoked_at: Option<String>,
    /// When the key stops working (RFC 3339, UTC); `null`: never.
    pub expires_at: Option<String>,
    /// When a host last looked the key up for a request (RFC 3339, UTC;
    /// to within a minute plus `server.api_key_cache_ms`); `null`: never.
    pub last_used_at: Option<String>,
}

/// A newly created key: the only time its secret exists outside the client.
#[derive(Debug, Clone, Serialize)]
pub struct NewApiKey {
    /// The stored key.
    #[serde(flatten)]
    pub key: ApiKey,
    /// The secret to send as `Authorization: Bearer <secret>`.
    pub secret: String,
}

/// Who is calling: the tenant and scopes of an authenticated key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The key's id.
    pub key_id: String,
    /// The tenant the request acts for.
    pub tenant: String,
    /// What the key may do.
    pub scopes: Vec<Scope>,
}

impl Principal {
    /// Whether the key carries `scope`.
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }
}

/// sha256 (hex) of a secret, as stored.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn looks_like_key(secret: &str) -> bool {
    secret.len() == KEY_LEN
        && secret.starts_with(KEY_PREFIX)
        && secret[KEY_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

const KEY_COLUMNS: &str = "id, tenant, scopes,
    to_char(created_at at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),
    to_char(revoked_at at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),
    to_char(expires_at at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),
    to_char(last_used_at at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')";

fn key_from_row(r: &tokio_postgres::Row) -> ApiKey {
    let scopes: Vec<String> = r.get(2);
    ApiKey {
        id: r.get(0),
        tenant: r.get(1),
        scopes: scopes.iter().filter_map(|s| Scope::parse(s).ok()).collect(),
        created_at: r.get(3),
        revoked_at: r.get(4),
        expires_at: r.get(5),
        last_used_at: r.get(6),
    }
}

/// Creates a key for `tenant` with `scopes`; returns it with its secret.
pub async fn create(
    client: &impl GenericClient,
    tenant: &str,
    scopes: &[Scope],
) -> Result<NewApiKey> {
    create_expiring(client, tenant, scopes, None).await
}

/// [`create`], for a key that stops working at `expires_at` (which must be
/// in the future).
pub async fn create_expiring(
    client: &impl GenericClient,
    tenant: &str,
    scopes: &[Scope],
    expires_at: Option<time::OffsetDateTime>,
) -> Result<NewApiKey> {
    validate_id("tenant", tenant)?;
    if scopes.is_empty() {
        return Err(Error::invalid("invalid_scope", "a key needs a scope"));
    }
    if expires_at.is_some_and(|t| t <= time::OffsetDateTime::now_utc()) {
        return Err(Error::invalid(
            "invalid_expiry",
            "expires_at must be in the future",
        ));
    }
    let id = format!("key_{}", hex::encode(rand::random::<[u8; 8]>()));
    let secret = format!("{KEY_PREFIX}{}", hex::encode(rand::random::<[u8; 32]>()));
    let names: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
    let row = client
        .query_one(
            &format!(
                "insert into payrail.api_keys (id, tenant, hash, scopes, expires_at)
                 values ($1, $2, $3, $4, $5)
                 returning {KEY_COLUMNS}"
            ),
            &[&id, &tenant, &hash_secret(&secret), &names, &expires_at],
        )
        .await?;
    Ok(NewApiKey {
        key: key_from_row(&row),
        secret,
    })
}

/// Revokes key `id` of any tenant (the operator's command line); see
/// [`revoke_scoped`].
pub async fn revoke(client: &impl GenericClient, id: &str) -> Result<ApiKey> {
    revoke_scoped(client, None, id).await
}

/// Revokes key `id`, of `tenant` when given (a key of another tenant is
/// not found); from then on a lookup finds nothing (a server that looked
/// it up within its [`KeyCache`] TTL still trusts it until then).
/// Revoking a revoked key is a no-op; an unknown id is `api_key_not_found`.
pub async fn revoke_scoped(
    client: &impl GenericClient,
    tenant: Option<&str>,
    id: &str,
) -> Result<ApiKey> {
    let row = client
        .query_opt(
            &format!(
                "update payrail.api_keys set revoked_at = coalesce(revoked_at, now())
                 where id = $1 and ($2::text is null or tenant = $2) returning {KEY_COLUMNS}"
            ),
            &[&id, &tenant],
        )
        .await?
        .ok_or_else(|| Error::NotFound {
            what: "api key",
            id: id.chars().take(64).collect(),
        })?;
    Ok(key_from_row(&row))
}

/// The keys of `tenant` (at most [`MAX_LIST`]), oldest first.
pub async fn list(client: &impl GenericClient, tenant: &str) -> Result<Vec<ApiKey>> {
    list_page(client, tenant, None, (">", "asc"), MAX_LIST).await
}

/// A page of `tenant`'s keys: those created `cmp` the key `position`
/// (`"created_at|id"`), in `dir` order (see `api::pagination::Seek::sql`).
pub async fn list_page(
    client: &impl GenericClient,
    tenant: &str,
    position: Option<(time::OffsetDateTime, &str)>,
    (cmp, dir): (&str, &str),
    limit: i64,
) -> Result<Vec<ApiKey>> {
    debug_assert!(matches!(cmp, "<" | ">") && matches!(dir, "asc" | "desc"));
    let (at, id) = position.unzip();
    let rows = client
        .query(
            &format!(
                "select {KEY_COLUMNS} from payrail.api_keys where tenant = $1
                   and ($2::timestamptz is null or (created_at, id) {cmp} ($2, $3::text))
                 order by created_at {dir}, id {dir} limit $4"
            ),
            &[&tenant, &at, &id, &limit.clamp(1, MAX_LIST)],
        )
        .await?;
    Ok(rows.iter().map(key_from_row).collect())
}

/// The unrevoked key whose secret hashes to `digest`.
async fn lookup(client: &impl GenericClient, digest: &[u8; 32]) -> Result<Option<Principal>> {
    // Prepared once per connection: this runs for every request the
    // cache does not answer.
    // An expired key is unknown. Its last use is written at most once a
    // minute, in the lookup's own statement: one round trip, and a write
    // only when the stored time is a minute old.
    let stmt = client
        .prepare_cached(&format!(
            "with k as (
                 select * from payrail.api_keys
                 where hash = $1 and revoked_at is null
                   and (expires_at is null or expires_at > now())),
             used as (
                 update payrail.api_keys a set last_used_at = now() from k
                 where a.id = k.id
                   and (k.last_used_at is null or k.last_used_at < now() - interval '1 minute'))
             select {KEY_COLUMNS} from k"
        ))
        .await?;
    let row = client.query_opt(&stmt, &[&hex::encode(digest)]).await?;
    Ok(row.map(|r| {
        let key = key_from_row(&r);
        Principal {
            key_id: key.id,
            tenant: key.tenant,
            scopes: key.scopes,
        }
    }))
}

/// Most keys a [`KeyCache`] holds. Past it, expired entries are dropped
/// and, if that frees nothing, all of them: a bound, not an LRU, because a
/// host serves far fewer live keys than this.
pub const MAX_CACHED_KEYS: usize = 10_000;

/// Longest a [`KeyCache`] may trust a lookup: the bound on how long a
/// revoked key may still authenticate (`server.api_key_cache_ms`).
pub const MAX_KEY_CACHE_MS: u64 = 60_000;

/// A key's principal and when it was read from the database.
type Cached = (Principal, Instant);

/// What [`KeyCache::authenticate`] made of a presented secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authenticated {
    /// A valid, unrevoked key.
    Key(Principal),
    /// Malformed, unknown or revoked (callers must not say which).
    Unknown,
    /// A key this host has not seen, and the lookup budget
    /// (`tenants.unknown_key_lookups_per_sec`) is spent: not looked up.
    Throttled,
}

/// Keys that authenticated within the last `ttl`, so that a request with a
/// recently seen key costs no database round trip (on the HTTP bench, the
/// lookup was one of a payment's few statements outside its batch).
///
/// What it costs: a revocation reaches a host only once the entry read
/// before it expires, so a revoked key may authenticate for up to `ttl`
/// after `payrail apikey revoke` (on every host; entries are never
/// refreshed in place, each is read from the database at most `ttl` ago).
/// A TTL of zero turns the cache off.
///
/// Unknown keys are cheap to refuse (docs/tenancy.md): a key found unknown
/// is remembered as unknown for the TTL (at least a second), and lookups
/// of keys this host has never seen valid share a budget of
/// `lookups_per_sec` per second: past it they are not looked up
/// ([`Authenticated::Throttled`]). A flood of random keys so costs the
/// database at most that many indexed lookups per second; keys seen valid
/// before are always looked up when their entry expires.
///
/// Hand-written rather than a caching crate: a mutex around a map, with a
/// fixed expiry and a hard bound, is all this needs; the budget is a
/// `governor` token bucket.
pub struct KeyCache {
    ttl: Duration,
    entries: Mutex<HashMap<[u8; 32], Cached>>,
    /// Digests found unknown, and when.
    unknown: Mutex<HashMap<[u8; 32], Instant>>,
    /// Digests that authenticated at least once (whatever the TTL).
    seen: Mutex<std::collections::HashSet<[u8; 32]>>,
    budget: governor::DefaultDirectRateLimiter,
    lookups: AtomicU64,
    throttled: AtomicU64,
}

impl KeyCache {
    /// A cache trusting each lookup for `ttl` (at most
    /// [`MAX_KEY_CACHE_MS`]; zero: no caching), looking up at most
    /// `lookups_per_sec` keys it has not seen valid per second.
    pub fn new(ttl: Duration, lookups_per_sec: u32) -> KeyCache {
        assert!(
            ttl.as_millis() <= u128::from(MAX_KEY_CACHE_MS),
            "key cache TTL {ttl:?} over {MAX_KEY_CACHE_MS} ms"
        );
        let rate = std::num::NonZeroU32::new(lookups_per_sec).unwrap_or(std::num::NonZeroU32::MIN);
        KeyCache {
            ttl,
            entries: Mutex::new(HashMap::new()),
            unknown: Mutex::new(HashMap::new()),
            seen: Mutex::new(Default::default()),
            budget: governor::RateLimiter::direct(governor::Quota::per_second(rate)),
            lookups: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
        }
    }

    /// The principal of a presented secret (see [`Authenticated`]).
    /// Answered from the cache when the key authenticated less than the
    /// TTL ago or was found unknown less than the TTL (at least 1 s) ago;
    /// otherwise one indexed lookup on a connection from `pool`.
    pub async fn authenticate(
        &self,
        pool: &deadpool_postgres::Pool,
        secret: &str,
    ) -> Result<Authenticated> {
        if !looks_like_key(secret) {
            return Ok(Authenticated::Unknown);
        }
        let digest: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        if let Some(principal) = self.get(&digest) {
            return Ok(Authenticated::Key(principal));
        }
        if self.known_unknown(&digest) {
            return Ok(Authenticated::Unknown);
        }
        let seen = lock(&self.seen).contains(&digest);
        if !seen && self.budget.check().is_err() {
            self.throttled.fetch_add(1, Ordering::Relaxed);
            return Ok(Authenticated::Throttled);
        }
        self.lookups.fetch_add(1, Ordering::Relaxed);
        let principal = lookup(&pool.get().await?, &digest).await?;
        Ok(match principal {
            Some(p) => {
                self.put(digest, p.clone());
                Authenticated::Key(p)
            }
            None => {
                self.put_unknown(digest);
                Authenticated::Unknown
            }
        })
    }

    /// Lookups that went to the database since start.
    pub fn lookups(&self) -> u64 {
        self.lookups.load(Ordering::Relaxed)
    }

    /// Requests answered [`Authenticated::Throttled`] since start.
    pub fn throttled(&self) -> u64 {
        self.throttled.load(Ordering::Relaxed)
    }

    /// Keys held now (expired ones included until they are dropped).
    pub fn len(&self) -> usize {
        lock(&self.entries).len()
    }

    /// Whether the cache holds no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn get(&self, digest: &[u8; 32]) -> Option<Principal> {
        if self.ttl.is_zero() {
            return None;
        }
        let entries = lock(&self.entries);
        let (principal, read_at) = entries.get(digest)?;
        (read_at.elapsed() < self.ttl).then(|| principal.clone())
    }

    /// How long a key found unknown stays unknown: the TTL, at least 1 s
    /// (a key created since is usable after that long).
    fn unknown_ttl(&self) -> Duration {
        self.ttl.max(Duration::from_millis(MIN_UNKNOWN_TTL_MS))
    }

    fn known_unknown(&self, digest: &[u8; 32]) -> bool {
        let unknown = lock(&self.unknown);
        unknown
            .get(digest)
            .is_some_and(|at| at.elapsed() < self.unknown_ttl())
    }

    fn put_unknown(&self, digest: [u8; 32]) {
        let ttl = self.unknown_ttl();
        let mut unknown = lock(&self.unknown);
        if unknown.len() >= MAX_CACHED_KEYS {
            unknown.retain(|_, at| at.elapsed() < ttl);
            if unknown.len() >= MAX_CACHED_KEYS {
                unknown.clear();
            }
        }
        unknown.insert(digest, Instant::now());
    }

    fn put(&self, digest: [u8; 32], principal: Principal) {
        {
            let mut seen = lock(&self.seen);
            if seen.len() >= MAX_CACHED_KEYS {
                seen.clear();
            }
            seen.insert(digest);
        }
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = lock(&self.entries);
        if entries.len() >= MAX_CACHED_KEYS && !entries.contains_key(&digest) {
            entries.retain(|_, (_, read_at)| read_at.elapsed() < self.ttl);
            if entries.len() >= MAX_CACHED_KEYS {
                entries.clear();
            }
        }
        entries.insert(digest, (principal, Instant::now()));
        assert!(entries.len() <= MAX_CACHED_KEYS);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the map half-updated
    // (each operation is one map call), so a poisoned lock is still good.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse() {
        assert_eq!(
            Scope::parse_list("admin, payments,admin").unwrap(),
            [Scope::Admin, Scope::Payments]
        );
        assert_eq!(Scope::parse_list("x").unwrap_err().code(), "invalid_scope");
        assert_eq!(Scope::parse_list(",").unwrap_err().code(), "invalid_scope");
    }

    #[test]
    fn key_shape() {
        let good = format!("pr_{}", "ab".repeat(32));
        assert!(looks_like_key(&good));
        assert!(!looks_like_key("pr_short"));
        assert!(!looks_like_key(&good.to_uppercase()));
        assert_eq!(hash_secret("x").len(), 64);
    }

    fn principal(tenant: &str) -> Principal {
        Principal {
            key_id: "key_0".into(),
            tenant: tenant.into(),
            scopes: vec![Scope::Payments],
        }
    }

    #[test]
    fn the_key_cache_trusts_a_lookup_for_its_ttl_only() {
        let cache = KeyCache::new(Duration::from_millis(20), 10);
        cache.put([1; 32], principal("t"));
        assert_eq!(cache.get(&[1; 32]), Some(principal("t")));
        assert_eq!(cache.get(&[2; 32]), None);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(cache.get(&[1; 32]), None, "expired");
        let off = KeyCache::new(Duration::ZERO, 10);
        off.put([1; 32], principal("t"));
        assert!(off.is_empty());
        assert_eq!(off.get(&[1; 32]), None);
    }

    #[test]
    fn the_key_cache_holds_at_most_max_cached_keys() {
        let digest = |i: usize| {
            let mut d = [0u8; 32];
            d[..8].copy_from_slice(&(i as u64).to_le_bytes());
            d
        };
        let cache = KeyCache::new(Duration::from_secs(60), 10);
        for i in 0..MAX_CACHED_KEYS {
            cache.put(digest(i), principal("t"));
        }
        assert_eq!(cache.len(), MAX_CACHED_KEYS);
        cache.put(digest(0), principal("u"));
        assert_eq!(cache.len(), MAX_CACHED_KEYS, "a known key is replaced");
        cache.put(digest(MAX_CACHED_KEYS), principal("t"));
        assert_eq!(cache.len(), 1, "nothing had expired, so all went");
        assert!(cache.get(&digest(MAX_CACHED_KEYS)).is_some());
        let short = KeyCache::new(Duration::from_millis(20), 10);
        for i in 0..MAX_CACHED_KEYS - 1 {
            short.put(digest(i), principal("t"));
        }
        std::thread::sleep(Duration::from_millis(30));
        short.put(digest(MAX_CACHED_KEYS), principal("t"));
        short.put(digest(MAX_CACHED_KEYS + 1), principal("t"));
        assert_eq!(
            short.len(),
            2,
            "the expired ones went, the fresh one stayed"
        );
        assert!(short.get(&digest(MAX_CACHED_KEYS)).is_some());
    }
}
