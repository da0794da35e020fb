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
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<usize>,
    /// `next_cursor` or `prev_cursor` of another page.
    #[param(max_length = 512)]
    pub cursor: Option<String>,
}

/// One page of items.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Page<T> {
    /// The items, in the list's order (newest first for lists in time).
    pub data: Vec<T>,
    /// Pass as `cursor` for the next page (further along the order: older
    /// items of a newest-first list); `null` on the last page.
    pub next_cursor: Option<String>,
    /// Pass as `cursor` for the previous page (back toward the start:
    /// newer items); `null` on the first page.
    pub prev_cursor: Option<String>,
}

/// Where a page starts, decoded from a cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seek {
    /// The first page.
    Start,
    /// Items after this position, in the list's order (`next_cursor`).
    After(String),
    /// Items before this position (`prev_cursor`), nearest first.
    Before(String),
}

/// The order a list is kept in, for its keyset SQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Oldest (or smallest) first.
    Asc,
    /// Newest (or largest) first: the default of every list in time.
    Desc,
}

impl Seek {
    /// The comparison of the row key against the position and the SQL
    /// direction to scan in: a `Before` page scans backwards, and
    /// [`page`] turns its rows around.
    pub fn sql(&self, order: Order) -> (&'static str, &'static str) {
        let backwards = matches!(self, Seek::Before(_));
        match (order, backwards) {
            (Order::Asc, false) | (Order::Desc, true) => (">", "asc"),
            (Order::Desc, false) | (Order::Asc, true) => ("<", "desc"),
        }
    }

    /// The position, if any.
    pub fn position(&self) -> Option<&str> {
        match self {
            Seek::Start => None,
            Seek::After(p) | Seek::Before(p) => Some(p),
        }
    }
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

    /// Where the page starts (`kind` must match what encoded the cursor).
    pub fn seek(&self, kind: &str) -> Result<Seek, ApiError> {
        let Some(c) = &self.cursor else {
            return Ok(Seek::Start);
        };
        let bad = || ApiError::bad_request("invalid_cursor", "cursor is not one this API issued");
        if c.len() > MAX_CURSOR_BYTES {
            return Err(bad());
        }
        let bytes = hex::decode(c).map_err(|_| bad())?;
        let text = String::from_utf8(bytes).map_err(|_| bad())?;
        let rest = text
            .strip_prefix(kind)
            .and_then(|r| r.strip_prefix(':'))
            .ok_or_else(bad)?;
        match rest.split_at_checked(2) {
            Some(("a:", pos)) => Ok(Seek::After(pos.to_string())),
            Some(("b:", pos)) => Ok(Seek::Before(pos.to_string())),
            _ => Err(bad()),
        }
    }
}

/// An opaque cursor of a listing of `kind`: items after (`forward`) or
/// before position `pos`.
pub fn cursor(kind: &str, forward: bool, pos: &str) -> String {
    let dir = if forward { 'a' } else { 'b' };
    hex::encode(format!("{kind}:{dir}:{pos}"))
}

/// Builds a page from `rows` fetched with `limit + 1` in the direction
/// [`Seek::sql`] gave: the extra row only says there is more that way.
/// Rows of a `Before` page are turned back into the list's order.
pub fn page<T>(
    mut rows: Vec<T>,
    limit: usize,
    kind: &str,
    seek: &Seek,
    pos: impl Fn(&T) -> String,
) -> Page<T> {
    let more = rows.len() > limit;
    rows.truncate(limit);
    let backwards = matches!(seek, Seek::Before(_));
    if backwards {
        rows.reverse();
    }
    // more beyond the far end: a forward page that found more, or a
    // backward page (it came from there)
    let has_next = if backwards { true } else { more };
    let has_prev = match seek {
        Seek::Start => false,
        Seek::After(_) => true,
        Seek::Before(_) => more,
    };
    let (next_cursor, prev_cursor) = match (rows.first(), rows.last()) {
        (Some(first), Some(last)) => (
            has_next.then(|| cursor(kind, true, &pos(last))),
            has_prev.then(|| cursor(kind, false, &pos(first))),
        ),
        // an empty page past either end: the way back is the position
        _ => match seek {
            Seek::Start => (None, None),
            Seek::After(p) => (None, Some(cursor(kind, false, p))),
            Seek::Before(p) => (Some(cursor(kind, true, p)), None),
        },
    };
    Page {
        data: rows,
        next_cursor,
        prev_cursor,
    }
}

/// A cursor position that is a row id.
pub fn int_position(seek: &Seek) -> Result<Option<i64>, ApiError> {
    seek.position()
        .map(|p| {
            p.parse()
                .map_err(|_| ApiError::bad_request("invalid_cursor", "malformed cursor"))
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_are_checked() {
        let p = PageParams {
            limit: Some(3),
            cursor: Some(cursor("entries", true, "42")),
        };
        assert_eq!(p.seek("entries").unwrap(), Seek::After("42".into()));
        assert_eq!(p.seek("payments").unwrap_err().code, "invalid_cursor");
        let bad = PageParams {
            limit: Some(0),
            cursor: Some("zz".into()),
        };
        assert_eq!(bad.limit().unwrap_err().code, "invalid_limit");
        assert_eq!(bad.seek("entries").unwrap_err().code, "invalid_cursor");
        let no_dir = PageParams {
            limit: None,
            cursor: Some(hex::encode("entries:42")),
        };
        assert_eq!(no_dir.seek("entries").unwrap_err().code, "invalid_cursor");
    }

    /// Walks a newest-first list of 0..10 forward in pages of 3 and back
    /// again, as the SQL would answer it.
    #[test]
    fn pages_walk_both_ways() {
        let all: Vec<i32> = (0..10).rev().collect();
        let fetch = |seek: &Seek, limit: usize| -> Vec<i32> {
            let (cmp, dir) = seek.sql(Order::Desc);
            let mut rows: Vec<i32> = all
                .iter()
                .copied()
                .filter(|v| match seek.position() {
                    None => true,
                    Some(p) => {
                        let p: i32 = p.parse().unwrap();
                        if cmp == "<" { *v < p } else { *v > p }
                    }
                })
                .collect();
            rows.sort_unstable();
            if dir == "desc" {
                rows.reverse();
            }
            rows.truncate(limit + 1);
            rows
        };
        let mut seek = Seek::Start;
        let mut seen = Vec::new();
        let mut pages = Vec::new();
        loop {
            let pg = page(fetch(&seek, 3), 3, "n", &seek, |v| v.to_string());
            seen.extend(pg.data.clone());
            pages.push(pg.data.clone());
            let Some(next) = pg.next_cursor else { break };
            seek = PageParams {
                limit: None,
                cursor: Some(next),
            }
            .seek("n")
            .unwrap();
        }
        assert_eq!(seen, all);
        assert_eq!(pages.len(), 4);
        // back from the last page: the same pages in reverse
        let last = page(fetch(&seek, 3), 3, "n", &seek, |v| v.to_string());
        let mut back = PageParams {
            limit: None,
            cursor: last.prev_cursor.clone(),
        }
        .seek("n")
        .unwrap();
        for expected in pages.iter().rev().skip(1) {
            let pg = page(fetch(&back, 3), 3, "n", &back, |v| v.to_string());
            assert_eq!(&pg.data, expected);
            match pg.prev_cursor {
                Some(c) => {
                    back = PageParams {
                        limit: None,
                        cursor: Some(c),
                    }
                    .seek("n")
                    .unwrap()
                }
                None => assert_eq!(expected, &pages[0]),
            }
        }
    }
}
