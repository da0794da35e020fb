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

/// Prefix of every key secret (helps secret scanners and humans).
pub const KEY_PREFIX: &str = "pr_";
/// Length of a well-formed secret: the prefix and 64 hex characters.
pub const KEY_LEN: usize = KEY_PREFIX.len() + 64;
/// Most keys one tenant may have listed at once.
pub const MAX_LIST: i64 = 1000;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    to_char(revoked_at at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')";

fn key_from_row(r: &tokio_postgres::Row) -> ApiKey {
    let scopes: Vec<String> = r.get(2);
    ApiKey {
        id: r.get(0),
        tenant: r.get(1),
        scopes: scopes.iter().filter_map(|s| Scope::parse(s).ok()).collect(),
        created_at: r.get(3),
        revoked_at: r.get(4),
    }
}

/// Creates a key for `tenant` with `scopes`; returns it with its secret.
pub async fn create(
    client: &impl GenericClient,
    tenant: &str,
    scopes: &[Scope],
) -> Result<NewApiKey> {
    validate_id("tenant", tenant)?;
    if scopes.is_empty() {
        return Err(Error::invalid("invalid_scope", "a key needs a scope"));
    }
    let id = format!("key_{}", hex::encode(rand::random::<[u8; 8]>()));
    let secret = format!("{KEY_PREFIX}{}", hex::encode(rand::random::<[u8; 32]>()));
    let names: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
    let row = client
        .query_one(
            &format!(
                "insert into payrail.api_keys (id, tenant, hash, scopes) values ($1, $2, $3, $4)
                 returning {KEY_COLUMNS}"
            ),
            &[&id, &tenant, &hash_secret(&secret), &names],
        )
        .await?;
    Ok(NewApiKey {
        key: key_from_row(&row),
        secret,
    })
}

/// Revokes key `id`; from then on it authenticates nothing. Revoking a
/// revoked key is a no-op; an unknown id is `api_key_not_found`.
pub async fn revoke(client: &impl GenericClient, id: &str) -> Result<ApiKey> {
    let row = client
        .query_opt(
            &format!(
                "update payrail.api_keys set revoked_at = coalesce(revoked_at, now())
                 where id = $1 returning {KEY_COLUMNS}"
            ),
            &[&id],
        )
        .await?
        .ok_or_else(|| Error::invalid("api_key_not_found", format!("no API key {id:?}")))?;
    Ok(key_from_row(&row))
}

/// The keys of `tenant` (at most [`MAX_LIST`]), oldest first.
pub async fn list(client: &impl GenericClient, tenant: &str) -> Result<Vec<ApiKey>> {
    let rows = client
        .query(
            &format!(
                "select {KEY_COLUMNS} from payrail.api_keys where tenant = $1
                 order by created_at, id limit $2"
            ),
            &[&tenant, &MAX_LIST],
        )
        .await?;
    Ok(rows.iter().map(key_from_row).collect())
}

/// The principal of a presented secret, or `None` if it is malformed,
/// unknown or revoked (callers must not say which).
pub async fn authenticate(client: &impl GenericClient, secret: &str) -> Result<Option<Principal>> {
    if !looks_like_key(secret) {
        return Ok(None);
    }
    // Prepared once per connection: this runs before every request.
    let stmt = client
        .prepare_cached(&format!(
            "select {KEY_COLUMNS} from payrail.api_keys
             where hash = $1 and revoked_at is null"
        ))
        .await?;
    let row = client.query_opt(&stmt, &[&hash_secret(secret)]).await?;
    Ok(row.map(|r| {
        let key = key_from_row(&r);
        Principal {
            key_id: key.id,
            tenant: key.tenant,
            scopes: key.scopes,
        }
    }))
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
}
