//! Cursor pagination: `?limit=N&cursor=C`, answered with
//! `{"data": [...], "next_cursor": C | null}`. Cursors are opaque (hex of a
//! versioned position) and keyset-based, so a page costs an index range
//! scan whatever its depth.

use super::problem::ApiError;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Items per page unless `limit` says otherwise.
pub const DEFAULT_LIMIT: usize = 50;
/// Most items per page.
pub const MAX_LIMIT: usize = 200;
/// Longest cursor accepted.
pub const MAX_CURSOR_BYTES: usize = 512;

/// `limit` and `cursor` query parameters.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Items per page, 1-200 (default 50).
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// One page of items.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Page<T> {
    /// The items, oldest first.
    pub data: Vec<T>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

impl PageParams {
    /// The page size, validated.
    pub fn limit(&self) -> Result<usize, ApiError> {
        match self.limit {
            None => Ok(DEFAULT_LIMIT),
            Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            Some(n) => Err(ApiError::bad_request(
                "invalid_limit",
                format!("limit must be 1-{MAX_LIMIT}, got {n}"),
            )),
        }
    }

    /// The decoded cursor position (`kind` must match what encoded it).
    pub fn position(&self, kind: &str) -> Result<Option<String>, ApiError> {
        let Some(c) = &self.cursor else {
            return Ok(None);
        };
        let bad = || ApiError::bad_request("invalid_cursor", "cursor is not one this API issued");
        if c.len() > MAX_CURSOR_BYTES {
            return Err(bad());
        }
        let bytes = hex::decode(c).map_err(|_| bad())?;
        let text = String::from_utf8(bytes).map_err(|_| bad())?;
        let pos = text
            .strip_prefix(kind)
            .and_then(|r| r.strip_prefix(':'))
            .ok_or_else(bad)?;
        Ok(Some(pos.to_string()))
    }
}

/// An opaque cursor for position `pos` of a listing of `kind`.
pub fn cursor(kind: &str, pos: &str) -> String {
    hex::encode(format!("{kind}:{pos}"))
}

/// Builds a page from `rows` fetched with `limit + 1`: the extra row only
/// says there is a next page, whose cursor is the last kept row's position.
pub fn page<T>(mut rows: Vec<T>, limit: usize, kind: &str, pos: impl Fn(&T) -> String) -> Page<T> {
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next_cursor = if more {
        rows.last().map(|r| cursor(kind, &pos(r)))
    } else {
        None
    };
    Page {
        data: rows,
        next_cursor,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_are_checked() {
        let p = PageParams {
            limit: Some(3),
            cursor: Some(cursor("entries", "42")),
        };
        assert_eq!(p.position("entries").unwrap().as_deref(), Some("42"));
        assert_eq!(p.position("payments").unwrap_err().code, "invalid_cursor");
        let bad = PageParams {
            limit: Some(0),
            cursor: Some("zz".into()),
        };
        assert_eq!(bad.limit().unwrap_err().code, "invalid_limit");
        assert_eq!(bad.position("entries").unwrap_err().code, "invalid_cursor");
        let pg = page(vec![1, 2, 3, 4], 3, "n", |n| n.to_string());
        assert_eq!(pg.data, [1, 2, 3]);
        assert_eq!(pg.next_cursor, Some(cursor("n", "3")));
        assert!(
            page(vec![1], 3, "n", |n| n.to_string())
                .next_cursor
                .is_none()
        );
    }
}
