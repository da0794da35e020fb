//! `/v1/payments`: make payments (with `Idempotency-Key`), read and list
//! them.
//!
//! Idempotency (IETF draft "The Idempotency-Key HTTP Header Field"): the
//! key is required; the processor claims it in the payment's own
//! transaction with a fingerprint of the request (method and path are fixed
//! for this route, so the parsed body decides). Same key and request,
//! finished: the stored 201 and body, plus `Idempotency-Replayed: true`.
//! Same key, different request: 422. Same key while the first request is
//! running: 409 (or the replay, once it committed). Keys are per tenant and
//! expire after `idempotency.key_ttl_secs`; a key reused after its expiry
//! still names the payment it made, and is refused with 409
//! `idempotency_key_expired`.

use super::AppState;
use super::accounts::{load_visible, validate_metadata};
use super::extract::{ApiJson, ApiQuery, IdempotencyKey, PaymentsKey};
use super::pagination::{Order, Page, PageParams, page};
use super::problem::{ApiError, ApiResult, Problem};
use crate::model::{Metadata, PaymentRequest, PaymentResponse, PaymentStatus, Posting};
use crate::processor::PayOutcome;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

/// Response header marking a replayed response.
pub const REPLAYED_HEADER: &str = "idempotency-replayed";

/// `POST /v1/payments` body.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePayment {
    /// Payment kind: selects the pipeline.
    pub kind: String,
    /// Account debited.
    pub source: String,
    /// Account credited.
    pub destination: String,
    /// Positive, in minor units, within i64.
    pub amount: i64,
    /// ISO 4217 code; both accounts must hold it.
    pub currency: String,
    /// Up to 32 string entries of at most 512 bytes, handed to plugins
    /// (keys starting with `payrail.` are reserved).
    #[serde(default)]
    pub metadata: Metadata,
    /// `manual`: authorize only (hold the funds; capture or void later).
    /// Default `automatic`: move the money now.
    #[serde(default)]
    pub capture: CaptureView,
    /// Seconds the hold lasts before it expires (`capture: manual` only;
    /// 1 to 2592000 = 30 days, default 7 days).
    #[serde(default)]
    pub hold_ttl_secs: Option<i64>,
}

/// When the money moves.
#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CaptureView {
    /// One step: the payment moves the money.
    #[default]
    Automatic,
    /// Two steps: authorize now; `POST /v1/payments/{id}/capture` or
    /// `/void` later, or the hold expires.
    Manual,
}

/// Outcome of a payment.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StatusView {
    /// Money moved.
    Approved,
    /// A business decision said no; recorded, final on retry.
    Declined,
    /// Funds held, waiting for capture or void.
    Authorized,
    /// The hold was captured: money moved.
    Captured,
    /// The hold was voided: funds released.
    Voided,
    /// The hold expired: funds released.
    Expired,
}

impl From<PaymentStatus> for StatusView {
    fn from(s: PaymentStatus) -> Self {
        match s {
            PaymentStatus::Approved => StatusView::Approved,
            PaymentStatus::Declined => StatusView::Declined,
            PaymentStatus::Authorized => StatusView::Authorized,
            PaymentStatus::Captured => StatusView::Captured,
            PaymentStatus::Voided => StatusView::Voided,
            PaymentStatus::Expired => StatusView::Expired,
        }
    }
}

impl StatusView {
    /// The view of a stored `payments.status`; a value this version does
    /// not know (a newer host wrote it) is an error, never shown as
    /// another status.
    fn from_stored(s: &str) -> Result<StatusView, ApiError> {
        let unknown = || crate::Error::UnknownStored {
            column: "payments.status",
            value: s.to_string(),
        };
        PaymentStatus::from_stored(s)
            .map(StatusView::from)
            .ok_or_else(|| unknown().into())
    }
}

/// Why a payment was declined.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeclineView {
    /// Stable code (`amount_too_large`, `insufficient_funds`, ...).
    pub code: String,
    /// Human-readable reason.
    pub message: String,
}

/// One ledger movement: positive credits `account`, negative debits it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PostingView {
    /// The account.
    pub account: String,
    /// Minor units.
    pub amount: i64,
    /// ISO 4217 code.
    pub currency: String,
}

/// A payment.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PaymentView {
    /// A UUIDv7 given when the payment was made; retries return the same.
    pub id: String,
    /// `approved` or `declined`; two-phase: `authorized`, then `captured`,
    /// `voided` or `expired`.
    pub status: StatusView,
    /// Present when declined.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decline: Option<DeclineView>,
    /// The ledger movements (empty when declined).
    pub postings: Vec<PostingView>,
    /// Payment kind.
    pub kind: String,
    /// Minor units.
    pub amount: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// Account debited.
    pub source: String,
    /// Account credited.
    pub destination: String,
    /// What the plugins annotated.
    pub annotations: Metadata,
    /// When it was recorded (RFC 3339, UTC); on reads only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
}

fn posting_view(p: Posting) -> PostingView {
    let Posting {
        account,
        amount,
        currency,
    } = p;
    PostingView {
        account,
        amount,
        currency,
    }
}

impl From<PaymentResponse> for PaymentView {
    fn from(r: PaymentResponse) -> Self {
        let PaymentResponse {
            id,
            status,
            decline,
            postings,
            kind,
            amount,
            currency,
            source,
            destination,
            annotations,
        } = r;
        PaymentView {
            id,
            status: status.into(),
            decline: decline.map(|d| DeclineView {
                code: d.code,
                message: d.message,
            }),
            postings: postings.into_iter().map(posting_view).collect(),
            kind,
            amount,
            currency,
            source,
            destination,
            annotations,
            created_at: None,
        }
    }
}

/// Make a payment.
#[utoipa::path(post, path = "/v1/payments", tag = "payments",
    request_body = CreatePayment,
    params(("Idempotency-Key" = String, Header, description = "Unique per payment; retries reuse it (1-255 visible ASCII, optionally as a quoted sf-string)")),
    responses(
        (status = 201, description = "Processed (approved or declined); on a replay with header `Idempotency-Replayed: true`", body = PaymentView),
        (status = 400, description = "Invalid request or missing Idempotency-Key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown account or pipeline", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A request with this key is in progress, or the key expired", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Key reused for a different request, or a plugin fault", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Lock timeout or database unavailable; no effect, retry", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_payment(
    State(st): State<AppState>,
    PaymentsKey(p): PaymentsKey,
    IdempotencyKey(key): IdempotencyKey,
    ApiJson(body): ApiJson<CreatePayment>,
) -> ApiResult<Response> {
    validate_metadata(&body.metadata)?;
    let CreatePayment {
        kind,
        source,
        destination,
        amount,
        currency,
        metadata,
        capture,
        hold_ttl_secs,
    } = body;
    let req = PaymentRequest {
        kind,
        source,
        destination,
        amount,
        currency,
        metadata,
        capture: match capture {
            CaptureView::Automatic => crate::model::CaptureMode::Automatic,
            CaptureView::Manual => crate::model::CaptureMode::Manual,
        },
        hold_ttl_secs,
    };
    let outcome = st.processor.pay(&p.tenant, &key, &req).await;
    respond(&st, outcome, StatusCode::CREATED)
}

/// Turns a processor outcome into the HTTP answer, for payments and their
/// capture/void alike: records the metrics (status, lock wait, plugin
/// calls), `Location` of the payment, `Idempotency-Replayed` on a replay.
pub(super) fn respond(
    st: &AppState,
    outcome: Result<PayOutcome, crate::Error>,
    status: StatusCode,
) -> ApiResult<Response> {
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            let err = ApiError::from(e);
            st.metrics.payment_error(&err.code);
            return Err(err);
        }
    };
    let decline = outcome.response.decline.as_ref().map(|d| d.code.as_str());
    st.metrics
        .payment(outcome.response.status.as_str(), decline, outcome.replayed);
    tracing::Span::current().record("payment_id", outcome.response.id.as_str());
    if !outcome.replayed {
        st.metrics.lock_wait(outcome.lock_wait.as_secs_f64());
    }
    for c in &outcome.calls {
        st.metrics.plugin_call(c);
    }
    let location = format!("/v1/payments/{}", outcome.response.id);
    let mut resp = (status, Json(PaymentView::from(outcome.response))).into_response();
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&location) {
        h.insert(header::LOCATION, v);
    }
    if outcome.replayed {
        h.insert(
            HeaderName::from_static(REPLAYED_HEADER),
            HeaderValue::from_static("true"),
        );
    }
    Ok(resp)
}

const PAYMENT_COLUMNS: &str = "id, status, decline_code, decline_message, kind, amount, currency,
    source, destination, annotations,
    to_char(created_at at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')";

/// Builds views from payment rows, with their postings (one query).
async fn views(
    client: &deadpool_postgres::Client,
    rows: &[tokio_postgres::Row],
) -> Result<Vec<PaymentView>, ApiError> {
    let ids: Vec<Uuid> = rows.iter().map(|r| r.get(0)).collect();
    let mut postings: HashMap<Uuid, Vec<PostingView>> = HashMap::new();
    if !ids.is_empty() {
        for e in client
            .query(
                "select payment_id, account_id, amount, currency from payrail.entries
                 where payment_id = any($1) order by id",
                &[&ids],
            )
            .await
            .map_err(crate::Error::from)?
        {
            postings.entry(e.get(0)).or_default().push(PostingView {
                account: e.get(1),
                amount: e.get(2),
                currency: e.get(3),
            });
        }
    }
    rows.iter()
        .map(|r| {
            let id: Uuid = r.get(0);
            let status: String = r.get(1);
            let decline_code: Option<String> = r.get(2);
            Ok(PaymentView {
                id: id.to_string(),
                status: StatusView::from_stored(&status)?,
                decline: decline_code.map(|code| DeclineView {
                    code,
                    message: r.get::<_, Option<String>>(3).unwrap_or_default(),
                }),
                postings: postings.remove(&id).unwrap_or_default(),
                kind: r.get(4),
                amount: r.get(5),
                currency: r.get(6),
                source: r.get(7),
                destination: r.get(8),
                annotations: serde_json::from_value(r.get(9)).unwrap_or_default(),
                created_at: Some(r.get(10)),
            })
        })
        .collect()
}

/// Read a payment.
#[utoipa::path(get, path = "/v1/payments/{id}", tag = "payments",
    params(("id" = String, Path, description = "Payment id")),
    responses(
        (status = 200, description = "The payment", body = PaymentView),
        (status = 404, description = "No such payment", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_payment(
    State(st): State<AppState>,
    PaymentsKey(p): PaymentsKey,
    Path(id): Path<String>,
) -> ApiResult<Json<PaymentView>> {
    let not_found = || {
        ApiError::from(crate::Error::NotFound {
            what: "payment",
            id: id.chars().take(64).collect(),
        })
    };
    let uuid = super::extract::payment_path(&id)?;
    let client = st.pool.get().await.map_err(crate::Error::from)?;
    let read =
        format!("select {PAYMENT_COLUMNS} from payrail.payments where tenant = $1 and id = $2");
    let mut rows = client
        .query(&read, &[&p.tenant, &uuid])
        .await
        .map_err(crate::Error::from)?;
    if rows.is_empty() {
        return Err(not_found());
    }
    let mut v = views(&client, &rows).await?;
    if matches!(v.last().map(|v| v.status), Some(StatusView::Authorized)) {
        // a hold past its expiry whose timer has not run reads as expired
        crate::holds::expire_if_due(&st.pool, &p.tenant, uuid).await?;
        rows = client
            .query(&read, &[&p.tenant, &uuid])
            .await
            .map_err(crate::Error::from)?;
        v = views(&client, &rows).await?;
    }
    Ok(Json(v.pop().ok_or_else(not_found)?))
}

/// `GET /v1/payments` query.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListPayments {
    /// Only payments with this account as source or destination.
    #[param(pattern = "^[A-Za-z0-9_.:-]{1,64}$")]
    pub account: Option<String>,
    /// Only payments in this status.
    #[param(pattern = "^(approved|declined|authorized|captured|voided|expired)$")]
    pub status: Option<String>,
    /// Only payments of this kind.
    #[param(pattern = "^[A-Za-z0-9_.:-]{1,64}$")]
    pub kind: Option<String>,
    /// Only payments declined with this code.
    #[param(pattern = "^[a-z0-9_.-]{1,128}$")]
    pub decline_code: Option<String>,
    /// Only payments made at or after this time (RFC 3339).
    #[param(format = DateTime)]
    pub created_from: Option<String>,
    /// Only payments made before this time (RFC 3339).
    #[param(format = DateTime)]
    pub created_to: Option<String>,
    /// Only payments whose metadata has `KEY=VALUE`.
    #[param(pattern = "^[^=\\u0000]{1,512}=[^\\u0000]{0,512}$")]
    pub metadata: Option<String>,
    /// Items per page, 1-200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<usize>,
    /// `next_cursor` or `prev_cursor` of another page.
    #[param(max_length = 512)]
    pub cursor: Option<String>,
}

/// A decline code as plugins write them (the engine checks theirs alike).
fn is_code(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
}

/// The filters of a payment list, parsed.
struct PaymentFilter {
    status: Option<String>,
    created_from: Option<time::OffsetDateTime>,
    created_to: Option<time::OffsetDateTime>,
    metadata: Option<(String, String)>,
}

impl PaymentFilter {
    fn parse(q: &ListPayments) -> Result<PaymentFilter, ApiError> {
        if let Some(s) = &q.status
            && PaymentStatus::from_stored(s).is_none()
        {
            return Err(ApiError::bad_request(
                "invalid_status",
                "status is one of approved, declined, authorized, captured, voided, expired",
            ));
        }
        for (what, id) in [("account", &q.account), ("payment kind", &q.kind)] {
            if let Some(id) = id {
                crate::ledger::validate_id(what, id)?;
            }
        }
        if let Some(code) = &q.decline_code
            && !is_code(code)
        {
            return Err(ApiError::bad_request(
                "invalid_query",
                "decline_code is 1-128 characters of a-z, 0-9, '_', '.', '-'",
            ));
        }
        let time = |what, v: &Option<String>| {
            v.as_deref()
                .map(|t| super::extract::rfc3339(what, t))
                .transpose()
        };
        let metadata = match &q.metadata {
            None => None,
            Some(m) => {
                let (k, v) = m
                    .split_once('=')
                    .filter(|(k, _)| !k.is_empty())
                    .ok_or_else(|| {
                        ApiError::bad_request("invalid_metadata", "metadata filter is KEY=VALUE")
                    })?;
                Some((k.to_string(), v.to_string()))
            }
        };
        Ok(PaymentFilter {
            status: q.status.clone(),
            created_from: time("created_from", &q.created_from)?,
            created_to: time("created_to", &q.created_to)?,
            metadata,
        })
    }
}

/// List payments, newest first, by status, kind, account, decline code,
/// creation time and metadata.
#[utoipa::path(get, path = "/v1/payments", tag = "payments",
    params(ListPayments),
    responses(
        (status = 200, description = "A page of payments", body = Page<PaymentView>),
        (status = 400, description = "Bad filter, limit or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such account", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_payments(
    State(st): State<AppState>,
    PaymentsKey(p): PaymentsKey,
    ApiQuery(q): ApiQuery<ListPayments>,
) -> ApiResult<Json<Page<PaymentView>>> {
    let f = PaymentFilter::parse(&q)?;
    let pp = PageParams {
        limit: q.limit,
        cursor: q.cursor.clone(),
    };
    let limit = pp.limit()?;
    let seek = pp.seek("payments")?;
    let (cmp, dir) = seek.sql(Order::Desc);
    let bad_cursor = || ApiError::bad_request("invalid_cursor", "malformed cursor");
    let (at, after_id) = match seek.position() {
        Some(pos) => {
            let (ts, id) = pos.split_once('|').ok_or_else(bad_cursor)?;
            let ts = super::extract::rfc3339("cursor", ts).map_err(|_| bad_cursor())?;
            let id: Uuid = id.parse().map_err(|_| bad_cursor())?;
            (Some(ts), Some(id))
        }
        None => (None, None),
    };
    let client = st.pool.get().await.map_err(crate::Error::from)?;
    if let Some(a) = &q.account {
        load_visible(&client, &p.tenant, a).await?;
    }
    let (meta_key, meta_value) = f.metadata.clone().unzip();
    let rows = client
        .query(
            &format!(
                "select {PAYMENT_COLUMNS} from payrail.payments
                 where tenant = $1
                   and ($2::text is null or source = $2 or destination = $2)
                   and ($3::timestamptz is null or (created_at, id) {cmp} ($3, $4::uuid))
                   and ($6::text is null or status = $6)
                   and ($7::text is null or kind = $7)
                   and ($8::text is null or decline_code = $8)
                   and ($9::timestamptz is null or created_at >= $9)
                   and ($10::timestamptz is null or created_at < $10)
                   and ($11::text is null or metadata ->> $11 = $12)
                 order by created_at {dir}, id {dir} limit $5"
            ),
            &[
                &p.tenant,
                &q.account,
                &at,
                &after_id,
                &(limit as i64 + 1),
                &f.status,
                &q.kind,
                &q.decline_code,
                &f.created_from,
                &f.created_to,
                &meta_key,
                &meta_value,
            ],
        )
        .await
        .map_err(crate::Error::from)?;
    let payments = views(&client, &rows).await?;
    Ok(Json(page(payments, limit, "payments", &seek, |v| {
        format!("{}|{}", v.created_at.as_deref().unwrap_or(""), v.id)
    })))
}
