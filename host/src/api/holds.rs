//! `/v1/payments/{id}/capture` and `/v1/payments/{id}/void`: the second
//! step of a two-phase payment (see `crate::holds`). Both require an
//! `Idempotency-Key` with the same semantics as `POST /v1/payments`: same
//! key and request, the stored result with `Idempotency-Replayed: true`;
//! different request, 422; still running, 409.

use super::AppState;
use super::extract::{IdempotencyKey, PaymentsKey, parse_json, read_body};
use super::payments::{PaymentView, respond};
use super::problem::{ApiResult, Problem};
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use utoipa::ToSchema;

/// `POST /v1/payments/{id}/capture` body (optional: no body or `{}`
/// captures the whole hold).
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CapturePayment {
    /// Minor units to capture, 1 to the held amount (default: all of it).
    /// The rest of the hold is released.
    #[serde(default)]
    pub amount: Option<i64>,
}

/// Capture an authorized payment (all or part of its hold, at most once).
#[utoipa::path(post, path = "/v1/payments/{id}/capture", tag = "payments",
    request_body(content = Option<CapturePayment>, description = "Optional; absent or `{}`: capture the whole hold"),
    params(
        ("id" = String, Path, description = "Payment id"),
        ("Idempotency-Key" = String, Header, description = "Unique per capture; retries reuse it"),
    ),
    responses(
        (status = 200, description = "Captured (status `captured`, the postings that moved); on a replay with `Idempotency-Replayed: true`", body = PaymentView),
        (status = 400, description = "Invalid body or amount, missing Idempotency-Key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such payment", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`hold_not_active` (already captured, voided or expired, or not a manual-capture payment), or the key is in progress", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`capture_exceeds_hold`, `capture_declined`, key reused for a different request, or a plugin fault", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Lock timeout or database unavailable; no effect, retry", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn capture_payment(
    State(st): State<AppState>,
    PaymentsKey(p): PaymentsKey,
    IdempotencyKey(key): IdempotencyKey,
    Path(id): Path<String>,
    req: Request,
) -> ApiResult<Response> {
    let bytes = read_body(req, st.limits.max_json_body_bytes, "body_too_large").await?;
    let body: CapturePayment = if bytes.iter().all(u8::is_ascii_whitespace) {
        CapturePayment::default()
    } else {
        // `null` is the document's "no body" too
        parse_json::<Option<CapturePayment>>(&bytes)?.unwrap_or_default()
    };
    let out = st
        .processor
        .capture(&p.tenant, &key, &id, body.amount)
        .await;
    respond(&st, out, StatusCode::OK)
}

/// Void an authorized payment: release its hold, nothing moves.
#[utoipa::path(post, path = "/v1/payments/{id}/void", tag = "payments",
    params(
        ("id" = String, Path, description = "Payment id"),
        ("Idempotency-Key" = String, Header, description = "Unique per void; retries reuse it"),
    ),
    responses(
        (status = 200, description = "Voided (status `voided`); on a replay with `Idempotency-Replayed: true`", body = PaymentView),
        (status = 400, description = "Missing Idempotency-Key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such payment", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`hold_not_active` (already captured, voided or expired), or the key is in progress", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Key reused for a different request, or a plugin fault", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Lock timeout or database unavailable; no effect, retry", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn void_payment(
    State(st): State<AppState>,
    PaymentsKey(p): PaymentsKey,
    IdempotencyKey(key): IdempotencyKey,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let out = st.processor.void(&p.tenant, &key, &id).await;
    respond(&st, out, StatusCode::OK)
}
