//! The one error type of the payrail library. Every variant has a stable
//! machine-readable `code()` and a message that says what happened and what
//! to do about it.

use crate::engine::{LoadError, PluginFault};

/// Everything that can go wrong processing a request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request itself is malformed (bad amount, unknown currency, ...).
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    /// An idempotency key was reused with a different request.
    #[error(
        "idempotency key {key:?} was already used for a different request; use a new key for a new payment"
    )]
    IdempotencyConflict { key: String },
    /// The request with this key is still being processed by someone else.
    #[error("a request with idempotency key {key:?} is still in progress; retry later")]
    InProgress { key: String },
    /// The key's record expired and was reaped, but it still names the
    /// payment it made: a new payment needs a new key.
    #[error(
        "idempotency key {key:?} expired; it still names the payment it made ({payment}); use a new key for a new payment"
    )]
    KeyExpired { key: String, payment: String },
    /// A capture or void of a payment whose hold is not (or no longer)
    /// authorized: already captured, voided or expired, or the payment was
    /// never authorized for manual capture.
    #[error("payment {payment} has no active hold (it is {state}); nothing was changed")]
    HoldNotActive { payment: String, state: String },
    /// A capture above the held amount.
    #[error("cannot capture {amount}: the hold is for {held}; nothing was changed")]
    CaptureExceedsHold { amount: i64, held: i64 },
    /// The pipeline (or the ledger) declined a capture; the hold stays
    /// authorized (void it, or let it expire) and the key stays free.
    #[error("capture declined ({code}): {message}; the hold is unchanged")]
    CaptureDeclined { code: String, message: String },
    #[error("{what} {id:?} not found")]
    NotFound { what: &'static str, id: String },
    #[error("{what} {id:?} already exists")]
    AlreadyExists { what: &'static str, id: String },
    /// A pipeline step's plugin failed; nothing was written.
    #[error("pipeline step {step} (plugin {plugin}, {digest:.12}) failed: {fault}")]
    Plugin {
        step: usize,
        plugin: String,
        digest: String,
        fault: PluginFault,
    },
    #[error("plugin rejected: {0}")]
    PluginLoad(#[from] LoadError),
    /// An account lock could not be had within `lock_timeout`; safe to retry.
    #[error("timed out waiting for an account lock; the request had no effect, retry it")]
    LockTimeout,
    /// A write under an external lock (Redis, lock files) found the account
    /// written under a newer fencing token: this holder's lock was lost.
    #[error(
        "the lock of account {account:?} was lost (a newer holder wrote it); nothing was written, retry the request"
    )]
    LockLost { account: String },
    /// The lock service (Redis, the lock directory) failed.
    #[error("the account lock service is unavailable ({0}); nothing was written, retry later")]
    LockUnavailable(String),
    /// The server has not confirmed a commit within `processor.commit_wait_ms`
    /// (a primary waiting for a synchronous standby that is gone, a server
    /// that stopped answering): the payment may or may not be applied.
    #[error(
        "the database has not confirmed the commit; the payment may or may not be applied: retry with the same idempotency key"
    )]
    CommitUnconfirmed,
    /// A commit is unconfirmed (above): no new payment is taken until
    /// commits return.
    #[error(
        "the database is not confirming commits ({unconfirmed} waiting); the request was not started, retry later"
    )]
    CommitsStalled { unconfirmed: u64 },
    #[error("database error: {}", describe_db_error(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error("database pool error: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database setup error: {0}")]
    Setup(String),
    #[error("migration error: {0}")]
    Migration(String),
    /// A migration did not get its locks within its `lock_timeout` in any
    /// of its tries; nothing of it was applied (or, for a no-transaction
    /// migration, the statements before it, which are safe to run again).
    #[error("migration lock busy: {0}")]
    MigrationLockBusy(String),
    /// A command that runs another payrail binary (`payrail bench` runs
    /// `payrail-bench`) did not find it next to this one.
    #[error(
        "`payrail {command}` runs {}, which is not there: build it (cargo build --release -p {package}) so it sits next to this payrail binary",
        binary.display()
    )]
    MissingBinary {
        command: &'static str,
        binary: std::path::PathBuf,
        package: &'static str,
    },
    /// A stored value this version does not know (a newer version wrote
    /// it): refused rather than shown as something else.
    #[error("{column} holds {value:?}, which this version of payrail does not know; upgrade it")]
    UnknownStored { column: &'static str, value: String },
}

impl From<crate::signing::SigningError> for Error {
    fn from(e: crate::signing::SigningError) -> Error {
        Error::Invalid {
            code: e.code,
            message: e.message,
        }
    }
}

/// The local cluster's errors are setup errors (`database_setup`), with the
/// cluster's own message, which says what to do.
impl From<payrail_embedded_pg::EmbeddedError> for Error {
    fn from(e: payrail_embedded_pg::EmbeddedError) -> Error {
        Error::Setup(e.to_string())
    }
}

/// The plugin tools' errors (`payrail plugin new|test|bench|keygen|sign`)
/// as the variants they were before the tools were a crate of their own:
/// the CLI prints the same codes and exits the same way.
impl From<payrail_plugin_tools::ToolError> for Error {
    fn from(e: payrail_plugin_tools::ToolError) -> Error {
        use payrail_plugin_tools::ToolError;
        match e {
            ToolError::Invalid { code, message } => Error::Invalid { code, message },
            ToolError::AlreadyExists { what, id } => Error::AlreadyExists { what, id },
            ToolError::PluginLoad(e) => Error::PluginLoad(e),
            ToolError::Setup(message) => Error::Setup(message),
        }
    }
}

impl Error {
    /// Stable code for clients and logs.
    pub fn code(&self) -> &str {
        match self {
            Error::Invalid { code, .. } => code,
            Error::IdempotencyConflict { .. } => "idempotency_key_conflict",
            Error::InProgress { .. } => "idempotency_key_in_progress",
            Error::KeyExpired { .. } => "idempotency_key_expired",
            Error::HoldNotActive { .. } => "hold_not_active",
            Error::CaptureExceedsHold { .. } => "capture_exceeds_hold",
            Error::CaptureDeclined { .. } => "capture_declined",
            Error::NotFound { what, .. } => match *what {
                "account" => "account_not_found",
                "payment" => "payment_not_found",
                "pipeline" => "pipeline_not_found",
                "api key" => "api_key_not_found",
                _ => "plugin_not_found",
            },
            Error::AlreadyExists { .. } => "already_exists",
            Error::Plugin { fault, .. } => fault.code(),
            Error::PluginLoad(_) => "plugin_invalid",
            Error::LockTimeout => "lock_timeout",
            Error::LockLost { .. } => "lock_lost",
            Error::LockUnavailable(_) => "lock_unavailable",
            Error::CommitUnconfirmed => "commit_unconfirmed",
            Error::CommitsStalled { .. } => "commits_stalled",
            Error::Db(_) | Error::Pool(_) => "database_error",
            Error::Setup(_) => "database_setup",
            Error::UnknownStored { .. } => "unknown_stored_value",
            Error::Migration(_) => "migration_error",
            Error::MigrationLockBusy(_) => "migration_lock_busy",
            Error::MissingBinary { .. } => "missing_binary",
        }
    }

    /// Shorthand for a validation error.
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Error::Invalid {
            code,
            message: message.into(),
        }
    }

    /// Postgres SQLSTATE of a database error, if any.
    pub fn sqlstate(&self) -> Option<&tokio_postgres::error::SqlState> {
        match self {
            Error::Db(e) => e.code(),
            _ => None,
        }
    }

    /// Name of the constraint a database error violated, if any.
    pub fn constraint(&self) -> Option<&str> {
        match self {
            Error::Db(e) => e.as_db_error().and_then(|d| d.constraint()),
            _ => None,
        }
    }
}

/// Result alias for the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// tokio-postgres prints just "db error"; say what the server said.
fn describe_db_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{} ({}): {detail}", db.message(), db.code().code()),
            None => format!("{} ({})", db.message(), db.code().code()),
        },
        None => match std::error::Error::source(e) {
            Some(src) => format!("{e}: {src}"),
            None => e.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use payrail_plugin_tools::ToolError;

    /// A plugin tool's error is the host variant it was before the tools
    /// were a crate: same code, same message.
    #[test]
    fn tool_errors_keep_their_host_codes_and_messages() {
        let cases = [
            (
                ToolError::invalid("invalid_fixture", "bad"),
                "invalid_fixture",
            ),
            (
                ToolError::AlreadyExists {
                    what: "directory",
                    id: "x".into(),
                },
                "already_exists",
            ),
            (ToolError::Setup("no engine".into()), "database_setup"),
        ];
        for (tool, code) in cases {
            let host = Error::from(tool);
            assert_eq!(host.code(), code, "{host}");
        }
        let e = Error::from(ToolError::invalid(
            "invalid_key",
            "the key file is not text",
        ));
        assert_eq!(e.to_string(), "the key file is not text");
        let e = Error::from(ToolError::AlreadyExists {
            what: "directory",
            id: "/tmp/r".into(),
        });
        assert_eq!(e.to_string(), r#"directory "/tmp/r" already exists"#);
    }
}
