//! Domain types shared by the processor, the engine and the API: what a
//! payment is, what a plugin sees and what it may decide. Plain data, serde
//! only; no Postgres and no WebAssembly here.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The tenant used until multi-tenancy lands (every row carries one).
pub const DEFAULT_TENANT: &str = "default";

/// Ordered string map: metadata and annotations serialize deterministically,
/// so input digests are stable.
pub type Metadata = BTreeMap<String, String>;

/// A request to move `amount` from `source` to `destination`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentRequest {
    /// Selects the pipeline.
    pub kind: String,
    pub source: String,
    pub destination: String,
    /// Positive, in the currency's minor units.
    pub amount: i64,
    /// ISO 4217 code.
    pub currency: String,
    #[serde(default)]
    pub metadata: Metadata,
    /// `manual`: authorize only (hold the funds) and wait for a capture or
    /// void. Absent (automatic, the default) is not serialized, so the
    /// fingerprint of a one-step request is unchanged.
    #[serde(default, skip_serializing_if = "CaptureMode::is_automatic")]
    pub capture: CaptureMode,
    /// How long an authorization holds the funds before it expires
    /// (manual capture only; 1 s to 30 days, default 7 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_ttl_secs: Option<i64>,
}

/// When a payment's money moves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaptureMode {
    /// One step: the payment moves the money at once.
    #[default]
    Automatic,
    /// Two steps: authorize (hold) now, capture or void later.
    Manual,
}

impl CaptureMode {
    /// True for the default one-step mode.
    pub fn is_automatic(&self) -> bool {
        *self == CaptureMode::Automatic
    }
}

/// The payment as a plugin sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    pub id: String,
    pub kind: String,
    pub amount: i64,
    pub currency: String,
    pub source: String,
    pub destination: String,
    pub metadata: Metadata,
}

/// An account as read under its lock, handed to plugins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountSnapshot {
    pub id: String,
    pub currency: String,
    pub balance: i64,
    pub allow_negative: bool,
    pub metadata: Metadata,
}

/// One ledger movement: positive credits `account`, negative debits it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Posting {
    pub account: String,
    pub amount: i64,
    pub currency: String,
}

/// An event a plugin asks to publish if the payment commits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginEvent {
    pub topic: String,
    /// JSON text as the plugin produced it (validated by the processor).
    pub payload: String,
}

/// A plugin's decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    Approve {
        postings: Vec<Posting>,
        events: Vec<PluginEvent>,
        annotations: Metadata,
    },
    Decline {
        code: String,
        message: String,
    },
}

/// What an earlier step decided, passed to later steps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepResult {
    pub plugin: String,
    pub digest: String,
    pub decision: Decision,
}

/// Everything one plugin call may depend on. Its canonical JSON is hashed
/// into the call key and journaled, so a call can be replayed exactly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginInput {
    pub payment: Payment,
    pub accounts: Vec<AccountSnapshot>,
    /// The step's config as JSON text.
    pub config: String,
    pub previous: Vec<StepResult>,
    pub now_ms: u64,
}

/// Final outcome of a payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    Approved,
    Declined,
    /// Two-phase: funds held, waiting for capture or void.
    Authorized,
    /// Two-phase: the hold was captured (money moved).
    Captured,
    /// Two-phase: the hold was released by a void.
    Voided,
    /// Two-phase: the hold was released by its expiry.
    Expired,
}

impl PaymentStatus {
    /// The value stored in `payments.status` and used in event topics.
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::Approved => "approved",
            PaymentStatus::Declined => "declined",
            PaymentStatus::Authorized => "authorized",
            PaymentStatus::Captured => "captured",
            PaymentStatus::Voided => "voided",
            PaymentStatus::Expired => "expired",
        }
    }

    /// Every status, in the order of the enum.
    pub const ALL: [PaymentStatus; 6] = [
        PaymentStatus::Approved,
        PaymentStatus::Declined,
        PaymentStatus::Authorized,
        PaymentStatus::Captured,
        PaymentStatus::Voided,
        PaymentStatus::Expired,
    ];

    /// The status stored as `s` (`as_str`'s inverse); None for a value
    /// this version does not know.
    pub fn from_stored(s: &str) -> Option<PaymentStatus> {
        PaymentStatus::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

/// Why a payment was declined: a business decision, final on retry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeclineReason {
    pub code: String,
    pub message: String,
}

/// The result of a payment as returned by `payrail pay` and the HTTP API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentResponse {
    pub id: String,
    pub status: PaymentStatus,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub decline: Option<DeclineReason>,
    pub postings: Vec<Posting>,
    pub kind: String,
    pub amount: i64,
    pub currency: String,
    pub source: String,
    pub destination: String,
    #[serde(default)]
    pub annotations: Metadata,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_reads_back_as_itself_and_an_unknown_one_as_none() {
        for s in PaymentStatus::ALL {
            assert_eq!(PaymentStatus::from_stored(s.as_str()), Some(s));
        }
        assert_eq!(PaymentStatus::from_stored("refunded"), None);
        assert_eq!(PaymentStatus::from_stored("Approved"), None);
    }
}
