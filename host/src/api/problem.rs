//! Errors as `application/problem+json` (RFC 9457), with the library's
//! stable `code` as an extension member. Every library [`Error`] maps to a
//! status here; bad input is always a 4xx, and database trouble that is
//! safe to retry is a 503 with `Retry-After`.

use crate::engine::LoadError;
use crate::error::Error;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tokio_postgres::error::SqlState;
use utoipa::ToSchema;

/// Media type of error bodies.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An RFC 9457 problem details body.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// URI naming the problem type: `urn:payrail:error:<code>`.
    #[serde(rename = "type")]
    pub type_uri: String,
    /// Short summary of the problem type (the HTTP reason phrase).
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What happened in this occurrence and what to do about it.
    pub detail: String,
    /// Stable machine-readable code (`invalid_amount`, `account_not_found`, ...).
    pub code: String,
}

/// An error response: a status, a problem body, and optional extra headers.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code.
    pub code: String,
    /// Human-readable detail.
    pub detail: String,
    /// Seconds a client should wait before retrying (`Retry-After`).
    pub retry_after: Option<u32>,
}

impl ApiError {
    /// An error with `status`, `code` and `detail`.
    pub fn new(status: StatusCode, code: &str, detail: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code: code.to_string(),
            detail: detail.into(),
            retry_after: None,
        }
    }

    /// 400 with `code` (422 for a code in [`UNPROCESSABLE`]).
    pub fn bad_request(code: &str, detail: impl Into<String>) -> ApiError {
        let status = if UNPROCESSABLE.contains(&code) {
            StatusCode::UNPROCESSABLE_ENTITY
        } else {
            StatusCode::BAD_REQUEST
        };
        ApiError::new(status, code, detail)
    }

    /// 401: no usable credentials.
    pub fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send a valid, unrevoked API key as `Authorization: Bearer <key>`",
        )
    }

    /// 503 that the client may retry after `secs`.
    pub fn unavailable(code: &str, detail: impl Into<String>, secs: u32) -> ApiError {
        ApiError {
            retry_after: Some(secs),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, detail)
        }
    }

    /// The problem body.
    pub fn problem(&self) -> Problem {
        Problem {
            type_uri: format!("urn:payrail:error:{}", self.code),
            title: self
                .status
                .canonical_reason()
                .unwrap_or("Error")
                .to_string(),
            status: self.status.as_u16(),
            detail: self.detail.clone(),
            code: self.code.clone(),
        }
    }
}

/// The detail a 500 answers with: no internal text (a database message
/// can name tables, constraints or values), only the request id to quote;
/// the real detail goes to the server log under that id.
pub fn internal_detail() -> String {
    match super::request_id::current() {
        Some(id) => format!("internal error; the server log has the detail under request id {id}"),
        None => "internal error; the server log has the detail".to_string(),
    }
}

impl IntoResponse for ApiError {
    fn into_response(mut self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(code = %self.code, detail = %self.detail, "request failed");
        } else {
            tracing::debug!(code = %self.code, detail = %self.detail, "request refused");
        }
        if self.status == StatusCode::INTERNAL_SERVER_ERROR {
            self.detail = internal_detail();
        }
        let body = serde_json::to_vec(&self.problem()).expect("problem serializes");
        let mut resp = (self.status, body).into_response();
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if self.status == StatusCode::UNAUTHORIZED {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"payrail\""),
            );
        }
        if let Some(secs) = self.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

fn db_error(e: &Error) -> ApiError {
    match e.sqlstate() {
        Some(s)
            if *s == SqlState::LOCK_NOT_AVAILABLE
                || *s == SqlState::T_R_DEADLOCK_DETECTED
                || *s == SqlState::T_R_SERIALIZATION_FAILURE =>
        {
            ApiError::unavailable(
                "lock_timeout",
                "the accounts were busy; the request had no effect, retry it",
                1,
            )
        }
        Some(s) if *s == SqlState::QUERY_CANCELED => ApiError::unavailable(
            "statement_timeout",
            "the database took too long; the request had no effect, retry it",
            1,
        ),
        // a demoted primary (a failover under way): nothing was written
        Some(s) if *s == SqlState::READ_ONLY_SQL_TRANSACTION => ApiError::unavailable(
            "database_unavailable",
            "the database is read-only (a failover under way?); the request had no effect, retry it",
            1,
        ),
        Some(s) if s.code().starts_with("08") || s.code().starts_with("57") => {
            ApiError::unavailable(
                "database_unavailable",
                "the database is unavailable; retry later",
                2,
            )
        }
        Some(_) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "database_error",
            format!("internal database error: {e}"),
        ),
        // no SQLSTATE: the connection itself failed
        None => ApiError::unavailable(
            "database_unavailable",
            "the database is unavailable; retry later",
            2,
        ),
    }
}

/// Codes of requests the OpenAPI document cannot tell apart from valid
/// ones (a cursor this API did not issue, a version or step that does not
/// exist, the same account twice, accounts in another currency, a balance
/// past i64, a plugin without a trusted signature): well-formed, so 422,
/// not 400. Every other `invalid_*` is a constraint the document carries:
/// 400.
pub const UNPROCESSABLE: &[&str] = &[
    "same_account",
    "invalid_cursor",
    "invalid_range",
    "invalid_version",
    "invalid_step",
    "no_candidate",
    "invalid_retry",
    "invalid_expiry",
    "invalid_hold_ttl",
    "currency_mismatch",
    "amount_overflow",
    "plugin_unsigned",
    "plugin_signature_invalid",
];

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        let code = e.code().to_string();
        let status = match &e {
            Error::Invalid { code, .. } if UNPROCESSABLE.contains(code) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Error::Invalid { .. } => StatusCode::BAD_REQUEST,
            Error::IdempotencyConflict { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Error::InProgress { .. } | Error::KeyExpired { .. } => StatusCode::CONFLICT,
            Error::NotFound { .. } => StatusCode::NOT_FOUND,
            Error::HoldNotActive { .. } => StatusCode::CONFLICT,
            Error::CaptureExceedsHold { .. } | Error::CaptureDeclined { .. } => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Error::AlreadyExists { .. } => StatusCode::CONFLICT,
            // A plugin fault is deterministic for this request and this
            // pipeline: retrying the same request fails the same way.
            Error::Plugin { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Error::PluginLoad(LoadError::TooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::PluginLoad(_) => StatusCode::BAD_REQUEST,
            Error::LockTimeout | Error::LockLost { .. } | Error::LockUnavailable(_) => {
                return ApiError::unavailable(&code, e.to_string(), 1);
            }
            Error::CommitUnconfirmed | Error::CommitsStalled { .. } => {
                return ApiError::unavailable(&code, e.to_string(), 2);
            }
            Error::Db(_) => return db_error(&e),
            Error::Pool(_) => {
                // the pool's error can carry the server's message: logged only
                tracing::warn!(error = %e, "no database connection");
                return ApiError::unavailable(
                    "database_unavailable",
                    "no database connection available; retry later",
                    1,
                );
            }
            Error::Setup(_) | Error::Migration(_) | Error::MigrationLockBusy(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            // a CLI error (`payrail bench`); no request gets here
            Error::MissingBinary { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            // a 500's body is generic; the detail goes to the log
            Error::UnknownStored { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        // Plugin faults name the step and plugin: that is the tenant's own
        // pipeline, so it is fine to say.
        ApiError::new(status, &code, e.to_string())
    }
}

/// Result of a handler.
pub type ApiResult<T> = std::result::Result<T, ApiError>;
