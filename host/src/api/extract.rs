//! Request extractors that answer bad input with problem+json: JSON bodies
//! with a size limit, query strings, the API key, the Idempotency-Key.

use super::AppState;
use super::problem::ApiError;
use crate::apikeys::{Authenticated, Principal, Scope};
use crate::processor::MAX_KEY_BYTES;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::{StatusCode, header, request::Parts};
use serde::de::DeserializeOwned;

/// Largest refused body that is still drained before the 413 is sent
/// (the server's request timeout bounds how long that may take).
const MAX_DRAIN_BYTES: u64 = 16 * 1024 * 1024;

/// Reads at most `limit` bytes of body; more is 413 with `code`.
pub async fn read_body(req: Request, limit: usize, code: &str) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            code,
            format!("the request body is larger than {limit} bytes"),
        )
    };
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limit as u64
    {
        // Read (and drop) what the client is still sending before answering,
        // up to a bound: answering first and closing with unread data makes
        // the client's write fail, and it never sees the 413.
        if len <= MAX_DRAIN_BYTES {
            let mut chunks = req.into_body().into_data_stream();
            while let Some(Ok(_)) = futures::StreamExt::next(&mut chunks).await {}
        }
        return Err(too_large());
    }
    axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|e| {
            if is_length_limit(&e) {
                too_large()
            } else {
                ApiError::bad_request("invalid_body", format!("cannot read the body: {e}"))
            }
        })
}

/// Whether an error (or one of its sources) is the body length limit.
fn is_length_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.to_string().contains("length limit exceeded") {
            return true;
        }
        cur = err.source();
    }
    false
}

/// A JSON body (at most the configured size, unknown fields refused by the
/// target type), or a 4xx problem.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        if let Some(ct) = req.headers().get(header::CONTENT_TYPE) {
            let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
            let essence = ct.split(';').next().unwrap_or("").trim();
            if essence != "application/json" && !essence.ends_with("+json") {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    format!("send the body as application/json, not {essence:?}"),
                ));
            }
        }
        let bytes = read_body(req, state.limits.max_json_body_bytes, "body_too_large").await?;
        // every JSON body is an object: serde would also fill a struct
        // from an array (`[null]`), which the document does not allow
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') && !bytes.is_empty() {
            return Err(ApiError::bad_request(
                "invalid_body",
                "the JSON body must be an object",
            ));
        }
        parse_json(&bytes).map(ApiJson)
    }
}

/// Parses a JSON body; syntax errors are `invalid_json`, shape errors
/// (wrong type, missing or unknown field, out-of-range number) are
/// `invalid_body`; both 400.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_json",
            "the request needs a JSON body",
        ));
    }
    serde_json::from_slice(bytes)
        .or_else(|e| {
            // JSON Schema counts 2.0 as an integer, so a client generated
            // from the document may send it: retried with integral floats
            // as integers (only after the exact parse failed, so a valid
            // body is parsed once)
            let mut v: serde_json::Value = serde_json::from_slice(bytes).map_err(|_| e)?;
            integral_floats_as_integers(&mut v);
            serde_json::from_value(v)
        })
        .map_err(|e| {
            use serde_json::error::Category;
            let code = match e.classify() {
                Category::Syntax | Category::Eof | Category::Io => "invalid_json",
                Category::Data => "invalid_body",
            };
            ApiError::bad_request(code, format!("the JSON body is not valid here: {e}"))
        })
}

/// Turns every float with no fractional part, within +-2^53 (where an
/// f64 is exact), into the integer it is.
fn integral_floats_as_integers(v: &mut serde_json::Value) {
    const EXACT: f64 = 9_007_199_254_740_992.0;
    match v {
        serde_json::Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            if f.fract() == 0.0 && f.abs() <= EXACT {
                *v = serde_json::Value::from(f as i64);
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(integral_floats_as_integers),
        serde_json::Value::Object(o) => o.values_mut().for_each(integral_floats_as_integers),
        _ => {}
    }
}

/// A query string, or a 400 `invalid_query`.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if parts.uri.query().is_some_and(|q| q.len() > 4096) {
            return Err(ApiError::bad_request(
                "invalid_query",
                "the query string is longer than 4096 bytes",
            ));
        }
        // no parameter may carry NUL: Postgres text cannot hold it
        if parts.uri.query().is_some_and(|q| q.contains("%00")) {
            return Err(ApiError::bad_request(
                "invalid_query",
                "query parameters must not contain NUL (%00)",
            ));
        }
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| ApiQuery(q))
            .map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))
    }
}

async fn authorize(parts: &Parts, state: &AppState, scope: Scope) -> Result<Principal, ApiError> {
    authorize_any(parts, state, &[scope]).await
}

/// Authenticates the caller and requires one of `scopes`.
async fn authorize_any(
    parts: &Parts,
    state: &AppState,
    scopes: &[Scope],
) -> Result<Principal, ApiError> {
    let secret = super::tenancy::bearer(&parts.headers).ok_or_else(ApiError::unauthorized)?;
    // Settled by the front door (every routed request); looked up here
    // only for a router built without it.
    let auth = match parts.extensions.get::<super::tenancy::Settled>() {
        Some(settled) => settled.0.clone(),
        None => state.keys.authenticate(&state.pool, secret).await?,
    };
    let Authenticated::Key(principal) = auth else {
        return Err(ApiError::unauthorized());
    };
    if !scopes.iter().any(|s| principal.has(*s)) {
        let names: Vec<String> = scopes.iter().map(|s| format!("`{}`", s.as_str())).collect();
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "this API key lacks the {} scope this route needs",
                names.join(" or ")
            ),
        ));
    }
    tracing::Span::current().record("tenant", principal.tenant.as_str());
    Ok(principal)
}

/// A caller whose key has the `payments` scope (accounts and payments).
pub struct PaymentsKey(pub Principal);

impl FromRequestParts<AppState> for PaymentsKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        authorize(parts, state, Scope::Payments)
            .await
            .map(PaymentsKey)
    }
}

/// A caller whose key has the `payments` or the `admin` scope (opening
/// accounts: what each may open is checked by the route).
pub struct AccountsKey(pub Principal);

impl FromRequestParts<AppState> for AccountsKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        authorize_any(parts, state, &[Scope::Payments, Scope::Admin])
            .await
            .map(AccountsKey)
    }
}

/// A caller whose key has the `admin` scope (plugins and pipelines).
pub struct AdminKey(pub Principal);

impl FromRequestParts<AppState> for AdminKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        authorize(parts, state, Scope::Admin).await.map(AdminKey)
    }
}

/// Name of the idempotency header.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The `Idempotency-Key` header: required; an sf-string (`"abc"`) per the
/// IETF draft, or the bare value, 1-255 bytes of visible ASCII.
pub struct IdempotencyKey(pub String);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let mut values = parts.headers.get_all(IDEMPOTENCY_KEY).iter();
        let value = match (values.next(), values.next()) {
            (Some(v), None) => v,
            (None, _) => {
                return Err(ApiError::bad_request(
                    "idempotency_key_missing",
                    "send an `Idempotency-Key` header (a unique string per payment, e.g. a UUID); retries reuse it",
                ));
            }
            (Some(_), Some(_)) => {
                return Err(ApiError::bad_request(
                    "invalid_idempotency_key",
                    "send exactly one `Idempotency-Key` header",
                ));
            }
        };
        let raw = value.to_str().unwrap_or("").trim();
        let key = raw
            .strip_prefix('"')
            .and_then(|k| k.strip_suffix('"'))
            .unwrap_or(raw);
        if key.is_empty()
            || key.len() > MAX_KEY_BYTES
            || !key.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
        {
            return Err(ApiError::bad_request(
                "invalid_idempotency_key",
                format!("the Idempotency-Key must be 1-{MAX_KEY_BYTES} visible ASCII characters"),
            ));
        }
        Ok(IdempotencyKey(key.to_string()))
    }
}

/// The SQL text of a timestamp as the API writes it.
pub const TS: &str = "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'";

/// Parses an RFC 3339 time (`2026-12-05T00:00:00Z`) given as `what`.
pub fn rfc3339(what: &str, s: &str) -> Result<time::OffsetDateTime, ApiError> {
    if s.len() > 64 {
        return Err(ApiError::bad_request(
            "invalid_time",
            format!("{what} is too long for a time"),
        ));
    }
    // in UTC: Postgres takes offsets up to 15:59, RFC 3339 up to 23:59
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(|t| t.to_offset(time::UtcOffset::UTC))
        .map_err(|_| {
            ApiError::bad_request(
                "invalid_time",
                format!("{what} must be an RFC 3339 time such as 2026-12-05T00:00:00Z"),
            )
        })
}

/// A payment id from a path: one that is not a UUID cannot exist, so it
/// is `payment_not_found` like an id of another tenant.
pub fn payment_path(id: &str) -> Result<uuid::Uuid, ApiError> {
    id.parse().map_err(|_| {
        crate::Error::NotFound {
            what: "payment",
            id: id.chars().take(64).collect(),
        }
        .into()
    })
}

/// A payment kind from a path: a malformed one cannot name a pipeline, so
/// it is `pipeline_not_found`.
pub fn pipeline_path(kind: &str) -> Result<(), ApiError> {
    crate::ledger::validate_id("payment kind", kind).map_err(|_| {
        crate::Error::NotFound {
            what: "pipeline",
            id: kind.chars().take(64).collect(),
        }
        .into()
    })
}
