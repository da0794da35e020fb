//! Optional plugin signatures. A host configured with trusted ed25519
//! public keys (`PAYRAIL_TRUSTED_PLUGIN_KEYS`, hex, comma-separated)
//! deploys only plugins whose digest is signed by one of them; without
//! keys, signatures are not required (and a given one is still checked).
//!
//! What is signed: `payrail-plugin-signature-v1\0` followed by the plugin's
//! hex sha256 digest, so a signature covers exactly those bytes and cannot
//! be replayed for anything else.

/// Why a key or a signature was refused; `code` is the stable
/// machine-readable code the host answers with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SigningError {
    pub code: &'static str,
    pub message: String,
}

impl SigningError {
    fn invalid(code: &'static str, message: impl Into<String>) -> SigningError {
        SigningError {
            code,
            message: message.into(),
        }
    }
}

type Result<T> = std::result::Result<T, SigningError>;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

/// Domain separation prefix of every signed message.
pub const CONTEXT: &[u8] = b"payrail-plugin-signature-v1\0";
/// Environment variable with the trusted public keys.
pub const TRUSTED_KEYS_ENV: &str = "PAYRAIL_TRUSTED_PLUGIN_KEYS";
/// Most trusted keys accepted.
pub const MAX_KEYS: usize = 64;

fn message(digest: &str) -> Vec<u8> {
    let mut m = CONTEXT.to_vec();
    m.extend_from_slice(digest.as_bytes());
    m
}

fn hex32(what: &str, s: &str) -> Result<[u8; 32]> {
    let bytes = hex::decode(s.trim())
        .map_err(|e| SigningError::invalid("invalid_key", format!("{what} is not hex: {e}")))?;
    bytes.try_into().map_err(|_| {
        SigningError::invalid("invalid_key", format!("{what} must be 32 bytes (64 hex)"))
    })
}

/// The public keys whose signatures a host accepts.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys(Vec<VerifyingKey>);

impl TrustedKeys {
    /// Parses comma- or whitespace-separated hex public keys.
    pub fn parse(list: &str) -> Result<Self> {
        let mut keys = Vec::new();
        for k in list.split(|c: char| c == ',' || c.is_whitespace()) {
            if k.is_empty() {
                continue;
            }
            let key =
                VerifyingKey::from_bytes(&hex32("a trusted plugin key", k)?).map_err(|e| {
                    SigningError::invalid("invalid_key", format!("bad trusted key {k}: {e}"))
                })?;
            if key.is_weak() {
                return Err(SigningError::invalid(
                    "invalid_key",
                    format!("trusted key {k} is a weak (small-order) key"),
                ));
            }
            keys.push(key);
        }
        if keys.len() > MAX_KEYS {
            return Err(SigningError::invalid(
                "invalid_key",
                format!("at most {MAX_KEYS} trusted plugin keys"),
            ));
        }
        Ok(TrustedKeys(keys))
    }

    /// The keys of [`TRUSTED_KEYS_ENV`] (none if unset).
    pub fn from_env() -> Result<Self> {
        match std::env::var(TRUSTED_KEYS_ENV) {
            Ok(v) => Self::parse(&v),
            Err(_) => Ok(Self::default()),
        }
    }

    /// Whether signatures are required.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Checks `signature` (hex) of `digest`: required when keys are
    /// configured; a given signature must verify against one of them.
    pub fn verify(&self, digest: &str, signature: Option<&str>) -> Result<()> {
        let Some(sig) = signature else {
            if self.is_empty() {
                return Ok(());
            }
            return Err(SigningError::invalid(
                "plugin_unsigned",
                format!(
                    "this host accepts only signed plugins: sign the plugin's digest {digest} with `payrail plugin sign` and deploy with --signature"
                ),
            ));
        };
        let bad = |why: &str| {
            SigningError::invalid(
                "plugin_signature_invalid",
                format!("the signature of plugin {digest} is not valid: {why}"),
            )
        };
        let bytes: [u8; 64] = hex::decode(sig.trim())
            .map_err(|_| bad("not hex"))?
            .try_into()
            .map_err(|_| bad("not 64 bytes"))?;
        let sig = Signature::from_bytes(&bytes);
        if self.is_empty() {
            return Err(bad(
                "this host has no trusted plugin keys to check it against",
            ));
        }
        let msg = message(digest);
        // strict: no small-order keys or non-canonical R/S, so a
        // signature is valid for exactly one (key, message)
        if self.0.iter().any(|k| k.verify_strict(&msg, &sig).is_ok()) {
            Ok(())
        } else {
            Err(bad("no trusted key signed this digest"))
        }
    }
}

/// A new key pair: (secret key hex, public key hex).
pub fn keygen() -> (String, String) {
    let secret: [u8; 32] = rand::random();
    let key = SigningKey::from_bytes(&secret);
    (
        hex::encode(key.to_bytes()),
        hex::encode(key.verifying_key().to_bytes()),
    )
}

/// The hex signature of `digest` with the hex secret key `secret`.
pub fn sign(secret: &str, digest: &str) -> Result<String> {
    let key = SigningKey::from_bytes(&hex32("the secret key", secret)?);
    Ok(hex::encode(key.sign(&message(digest)).to_bytes()))
}

/// The hex public key of a hex secret key.
pub fn public_key(secret: &str) -> Result<String> {
    let key = SigningKey::from_bytes(&hex32("the secret key", secret)?);
    Ok(hex::encode(key.verifying_key().to_bytes()))
}
