//! The pure rules of a payment: validation of a request and its key, the
//! ids the host derives, the payment's own postings and its response. No
//! database, no plugins: every path (one payment, batch, capture) uses
//! these.

use crate::error::{Error, Result};
use crate::ledger::{self, ApplyProblem};
use crate::model::{
    AccountSnapshot, DeclineReason, Metadata, Payment, PaymentRequest, PaymentResponse,
    PaymentStatus, Posting,
};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::time::{SystemTime, UNIX_EPOCH};
use uuid::Uuid;

/// Metadata keys with this prefix are set by payrail, never by users.
pub const RESERVED_METADATA_PREFIX: &str = "payrail.";
/// The metadata key telling plugins which phase they run in:
/// `authorize`, `capture` or `void` (absent for one-step payments).
pub const PHASE_KEY: &str = "payrail.phase";
/// Hold lifetime when a manual-capture request names none: 7 days.
pub const DEFAULT_HOLD_TTL_SECS: i64 = 7 * 24 * 3600;
/// Longest hold lifetime accepted: 30 days.
pub const MAX_HOLD_TTL_SECS: i64 = 30 * 24 * 3600;
/// Longest idempotency key accepted.
pub const MAX_KEY_BYTES: usize = 255;
/// Most metadata entries on a payment, and the longest key/value.
pub const MAX_METADATA_ENTRIES: usize = 32;
pub const MAX_METADATA_BYTES: usize = 512;

/// Payment id of a payment whose transaction began at `at_ms` (ms since
/// the Unix epoch): a UUIDv7, the time in its first 48 bits and a hash of
/// (tenant, idempotency key) in the rest.
///
/// Time first, so that the indexes keyed by payment id (the payments'
/// primary key, entries by payment, the journal's key, the outbox's key)
/// take their inserts at the right edge instead of at random leaves: fewer
/// pages dirtied, and written in full after a checkpoint, per payment
/// (docs/idempotency.md, "Payment ids"). The id is not what makes a payment
/// exactly-once: the key claim is, and the payments' unique (tenant, key)
/// index refuses a key reused after its claim expired. A retry of a
/// committed payment gets the stored response and so the first id; an
/// attempt that rolled back left nothing that names its id.
pub fn payment_id(tenant: &str, key: &str, at_ms: u64) -> Uuid {
    let d = Sha256::new()
        .chain_update(b"payrail/payment/v2\0")
        .chain_update(tenant.as_bytes())
        .chain_update(b"\0")
        .chain_update(key.as_bytes())
        .finalize();
    let tail: &[u8; 10] = d[..10].try_into().expect("10 bytes");
    uuid::Builder::from_unix_timestamp_millis(at_ms, tail).into_uuid()
}

/// Stable id of the `index`th event of a payment.
pub(crate) fn event_id(payment: Uuid, index: usize) -> Uuid {
    let d = Sha256::new()
        .chain_update(b"payrail/event/v1\0")
        .chain_update(payment.as_bytes())
        .chain_update((index as u64).to_be_bytes())
        .finalize();
    Uuid::new_v8(d[..16].try_into().expect("16 bytes"))
}

/// Fingerprint of a request: what "the same request" means for a key.
pub fn fingerprint(req: &PaymentRequest) -> String {
    let json = serde_json::to_vec(req).expect("request serializes");
    hex::encode(Sha256::digest(json))
}

/// The journal key of a call: sha256(payment, step, plugin digest, input
/// digest), hex. Replay recomputes it to detect an altered row.
pub(crate) fn call_key(
    payment: Uuid,
    step: usize,
    digest: &str,
    input_digest: &[u8; 32],
) -> String {
    let d = Sha256::new()
        .chain_update(payment.as_bytes())
        .chain_update((step as u64).to_be_bytes())
        .chain_update(digest.as_bytes())
        .chain_update(input_digest)
        .finalize();
    hex::encode(d)
}

/// Checks caller metadata (a payment's, an account's): at most
/// [`MAX_METADATA_ENTRIES`] entries of at most [`MAX_METADATA_BYTES`] each,
/// and no NUL (Postgres cannot store it).
pub fn check_metadata(m: &crate::model::Metadata) -> Result<()> {
    if m.len() > MAX_METADATA_ENTRIES
        || m.iter()
            .any(|(k, v)| k.len() > MAX_METADATA_BYTES || v.len() > MAX_METADATA_BYTES)
    {
        return Err(Error::invalid(
            "invalid_metadata",
            format!(
                "metadata has at most {MAX_METADATA_ENTRIES} entries of at most {MAX_METADATA_BYTES} bytes each"
            ),
        ));
    }
    if m.iter().any(|(k, v)| k.contains('\0') || v.contains('\0')) {
        return Err(Error::invalid(
            "invalid_metadata",
            "metadata keys and values must not contain NUL characters",
        ));
    }
    Ok(())
}

/// Checks a request and its key before anything touches the database.
pub fn validate_request(key: &str, req: &PaymentRequest) -> Result<()> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES || key.chars().any(|c| c.is_control()) {
        return Err(Error::invalid(
            "invalid_idempotency_key",
            format!(
                "the idempotency key must be 1-{MAX_KEY_BYTES} bytes without control characters"
            ),
        ));
    }
    ledger::validate_id("payment kind", &req.kind)?;
    ledger::validate_id("source account", &req.source)?;
    ledger::validate_id("destination account", &req.destination)?;
    ledger::validate_currency(&req.currency)?;
    if req.amount <= 0 {
        return Err(Error::invalid(
            "invalid_amount",
            format!(
                "amount must be a positive integer in minor units, got {}",
                req.amount
            ),
        ));
    }
    if req.source == req.destination {
        return Err(Error::invalid(
            "same_account",
            "source and destination must be different accounts",
        ));
    }
    if req.source.starts_with(ledger::EQUITY_PREFIX)
        || req.destination.starts_with(ledger::EQUITY_PREFIX)
    {
        return Err(Error::invalid(
            "invalid_id",
            "equity accounts only fund opening balances; they cannot take part in payments",
        ));
    }
    check_metadata(&req.metadata)?;
    if req
        .metadata
        .keys()
        .any(|k| k.starts_with(RESERVED_METADATA_PREFIX))
    {
        return Err(Error::invalid(
            "invalid_metadata",
            format!(
                "metadata keys starting with {:?} are reserved for payrail",
                RESERVED_METADATA_PREFIX
            ),
        ));
    }
    validate_capture(req)?;
    Ok(())
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// The payment as plugins see it.
pub(crate) fn payment_of(id: Uuid, req: &PaymentRequest) -> Payment {
    Payment {
        id: id.to_string(),
        kind: req.kind.clone(),
        amount: req.amount,
        currency: req.currency.clone(),
        source: req.source.clone(),
        destination: req.destination.clone(),
        metadata: phase_metadata(req),
    }
}

/// An account as plugins see it.
pub(crate) fn snapshot_of(a: &ledger::Account) -> AccountSnapshot {
    AccountSnapshot {
        id: a.id.clone(),
        currency: a.currency.clone(),
        balance: a.balance,
        allow_negative: a.allow_negative,
        metadata: a.metadata.clone(),
    }
}

/// Both parties exist (in `accounts`, read under their locks) and are held
/// in the payment's currency.
pub(crate) fn check_parties(
    accounts: &HashMap<String, ledger::Account>,
    req: &PaymentRequest,
) -> Result<()> {
    for party in [&req.source, &req.destination] {
        let a = accounts.get(party).ok_or_else(|| Error::NotFound {
            what: "account",
            id: party.clone(),
        })?;
        if a.currency != req.currency {
            return Err(Error::invalid(
                "currency_mismatch",
                format!(
                    "account {:?} is held in {}, the payment is in {}",
                    a.id, a.currency, req.currency
                ),
            ));
        }
    }
    Ok(())
}

/// The principal: source debited, destination credited.
pub(crate) fn principal_postings(req: &PaymentRequest) -> Vec<Posting> {
    vec![
        Posting {
            account: req.source.clone(),
            amount: -req.amount,
            currency: req.currency.clone(),
        },
        Posting {
            account: req.destination.clone(),
            amount: req.amount,
            currency: req.currency.clone(),
        },
    ]
}

/// The response of a decided payment; a declined one carries no
/// annotations.
pub(crate) fn response_of(
    id: Uuid,
    req: &PaymentRequest,
    status: PaymentStatus,
    decline: Option<DeclineReason>,
    postings: Vec<Posting>,
    annotations: &Metadata,
) -> PaymentResponse {
    PaymentResponse {
        id: id.to_string(),
        status,
        annotations: if decline.is_some() {
            Metadata::new()
        } else {
            annotations.clone()
        },
        decline,
        postings,
        kind: req.kind.clone(),
        amount: req.amount,
        currency: req.currency.clone(),
        source: req.source.clone(),
        destination: req.destination.clone(),
    }
}

/// What a payment's postings come to: the one decision of every path (one
/// payment, batch, capture), so their answers cannot drift apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The postings hold: write them, and apply `deltas` (net per account).
    Approve {
        postings: Vec<Posting>,
        deltas: BTreeMap<String, i64>,
    },
    /// A plugin declined, or the postings would overdraw an account.
    Decline(DeclineReason),
    /// The ledger refuses the postings (unbalanced, unknown account,
    /// currency): the fault of the plugin that proposed them
    /// ([`plugin_fault`]).
    Fault(ApplyProblem),
}

/// Step 6b: the verdict on `postings`, from what the ledger said of them
/// (their net deltas, or the problem; [`ledger::check_against`]).
pub(crate) fn verdict(
    postings: Vec<Posting>,
    checked: std::result::Result<BTreeMap<String, i64>, ApplyProblem>,
) -> Verdict {
    match checked {
        Ok(deltas) => Verdict::Approve { postings, deltas },
        Err(ApplyProblem::InsufficientFunds { account }) => {
            Verdict::Decline(insufficient_funds(&account))
        }
        Err(problem @ ApplyProblem::Invalid { .. }) => Verdict::Fault(problem),
    }
}

/// The decline of a payment (or capture) that would overdraw `account`:
/// the one place its code and message are written.
pub fn insufficient_funds(account: &str) -> DeclineReason {
    DeclineReason {
        code: "insufficient_funds".into(),
        message: format!("account {account:?} has insufficient funds"),
    }
}

/// Checks the two-phase fields of a request.
pub fn validate_capture(req: &PaymentRequest) -> Result<()> {
    if let Some(ttl) = req.hold_ttl_secs {
        if req.capture.is_automatic() {
            return Err(Error::invalid(
                "invalid_hold_ttl",
                "hold_ttl_secs only applies to \"capture\": \"manual\"",
            ));
        }
        if !(1..=MAX_HOLD_TTL_SECS).contains(&ttl) {
            return Err(Error::invalid(
                "invalid_hold_ttl",
                format!("hold_ttl_secs must be 1-{MAX_HOLD_TTL_SECS} (30 days), got {ttl}"),
            ));
        }
    }
    Ok(())
}

/// The metadata plugins see at pay time: the request's, plus
/// `payrail.phase = authorize` for a manual-capture request. One-step
/// payments are unchanged (so are their journal keys).
pub fn phase_metadata(req: &PaymentRequest) -> Metadata {
    let mut m = req.metadata.clone();
    if !req.capture.is_automatic() {
        m.insert(PHASE_KEY.into(), "authorize".into());
    }
    m
}
