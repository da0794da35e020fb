//! `x-request-id`: every response carries one, and the request's log span
//! records it. A caller's own id is kept when it is short and plain, so one
//! id follows a payment through the caller's logs and payrail's; anything
//! else (too long, control characters, spaces) is replaced, so a client
//! cannot write arbitrary text into payrail's logs.

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;

/// The header, in requests and responses.
pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Longest caller-chosen id kept (bytes).
pub const MAX_REQUEST_ID_BYTES: usize = 128;

/// The id of a request, as the middleware settled it.
#[derive(Debug, Clone)]
pub struct RequestId(pub HeaderValue);

/// Whether a caller's id is kept: 1 to [`MAX_REQUEST_ID_BYTES`] bytes of
/// ASCII letters, digits and `-_.:/+=`.
pub fn is_acceptable(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID_BYTES
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=".contains(b))
}

tokio::task_local! {
    /// The id of the request this task is handling (set by [`request_id`]).
    static CURRENT: HeaderValue;
}

/// The id of the request being handled, if called inside one (500 bodies
/// quote it: see `problem::internal_detail`).
pub fn current() -> Option<String> {
    CURRENT
        .try_with(|id| id.to_str().ok().map(str::to_string))
        .ok()
        .flatten()
}

/// Middleware: settles the id (the caller's, or a fresh UUID), puts it in
/// the request's extensions (for the log span), in a task-local for the
/// handler, and in the response. Cost: one UUID per request without an
/// acceptable id.
pub async fn request_id(mut req: Request, next: Next) -> Response {
    let id = match req.headers().get(&HEADER) {
        Some(v) if is_acceptable(v.as_bytes()) => v.clone(),
        _ => HeaderValue::from_str(&uuid::Uuid::new_v4().to_string())
            .expect("a UUID is a valid header value"),
    };
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut resp = CURRENT.scope(id.clone(), next.run(req)).await;
    resp.headers_mut().insert(HEADER, id);
    resp
}

#[cfg(test)]
mod tests {
    use super::is_acceptable;

    #[test]
    fn plain_short_ids_are_kept_and_others_replaced() {
        assert!(is_acceptable(b"req-42"));
        assert!(is_acceptable(b"0b9c5e1e-5b0a-4d4e-9d55-4b8a1a2f7e10"));
        assert!(is_acceptable(&[b'a'; 128]));
        assert!(!is_acceptable(&[b'a'; 129]));
        assert!(!is_acceptable(b""));
        assert!(!is_acceptable(b"two words"));
        assert!(!is_acceptable(b"line\nbreak"));
        assert!(!is_acceptable("caf\u{e9}".as_bytes()));
    }
}
