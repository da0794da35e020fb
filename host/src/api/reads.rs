//! The reads an operator and the console need beside the basic ones
//! (scope `payments`): the account list, a balance at a point in time, a
//! statement for a date range, holds by state, and a payment's plugin
//! calls and events. Read-only; every list is newest first with cursors
//! both ways (`pagination.rs`).

use super::AppState;
use super::accounts::{AccountView, EntryView, load_visible};
use super::extract::{ApiQuery, PaymentsKey, TS, payment_path, rfc3339};
use super::pagination::{Order, Page, PageParams, page};
use super::problem::{ApiError, ApiResult, Problem};
use crate::outbox::EventView;
use axum::Json;
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

/// `GET /v1/accounts` query.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListAccounts {
    /// Only accounts in this currency (ISO 4217).
    #[param(pattern = "^[A-Z]{3}$")]
    pub currency: Option<String>,
    /// Items per page, 1-200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<usize>,
    /// `next_cursor` or `prev_cursor` of another page.
    #[param(max_length = 512)]
    pub cursor: Option<String>,
}

/// List the tenant's accounts, newest first.
#[utoipa::path(get, path = "/v1/accounts", tag = "accounts",
    params(ListAccounts),
    responses(
        (status = 200, description = "A page of accounts", body = Page<AccountView>),
        (status = 400, description = "Bad limit or cursor", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_accounts(
    State(st): State<AppState>,
    PaymentsKey(p): PaymentsKey,
    ApiQuery(q): ApiQuery<ListAccounts>,
) -> ApiResult<Json<Page<AccountView>>> {
    if let Some(c) = &q.currency {
        crate::ledger::validate_currency(c)?;
    }
    let pp = PageParams {
        limit: q.limit,
        cursor: q.cursor,
    };
    let limit = pp.limit()?;
    let seek = pp.seek("accounts")?;
    let (cmp, dir) = seek.sql(Order::Desc);
    let bad = || ApiError::bad_request("invalid_cursor", "malformed cursor");
    let position = match seek.position() {
        None => None,
        Some(pos) => {
            let (at, id) = pos.split_once('|').ok_or_else(bad)?;
            Some((rfc3339("cursor", at).map_err(|_| bad())?, id.to_string()))
        }
    };
    let (at, id) = position.unzip();
    let client = st.pool.get().await.map_err(crate::Error::from)?;
    let rows = client
        .query(
            &format!(
                "select a.id, to_char(a.created_at at time zone 'UTC', {TS})
                 from payrail.accounts a
                 where a.tenant = $1 and not a.is_equity
                   and ($2::text is null or a.currency = $2)
                   and ($3::timestamptz is null or (a.created_at, a.id) {cmp} ($3, $4::text))
                 order by a.created_at {dir}, a.id {dir} limit $5"
            ),
            &[&p.tenant, &q.currency, &at, &id, &(limit as i64 + 1)],
        )
        .await
        .map_err(crate::Error::from)?;
    // the page's balances in one read (shards folded in, as for one account)
    let ids: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    let mut found = crate::ledger::read_accounts(&client, &p.tenant, &ids).await?;
    let accounts: Vec<AccountView> = rows
        .iter()
        .filter_map(|r| {
            let mut view: AccountView = found.remove(r.get::<_, &str>(0))?.into();
            view.created_at = Some(r.get(1));
            Some(view)
        })
        .collect();
    Ok(Json(page(accounts, limit, "accounts", &seek, |a| {
        format!("{}|{}", a.created_at.as_deref().unwrap_or(""), a.id)
    })))
}

/// `GET /v1/accounts/{id}/balance` query.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct BalanceAt {
    /// The moment (RFC 3339); the balance counts every entry written at
    /// or before it.
    #[param(format = DateTime)]
    pub at: String,
}

/// An account's balance at a moment.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BalanceView {
    /// The account.
    pub account: String,
    /// ISO 4217 code.
    pub currency: String,
    /// The moment asked for (RFC 3339, UTC).
    pub at: String,
    /// The balance then, in minor units.
    pub balance: i64,
}

/// An account's balance at a point in time: the sum of its entries up to
/// then. Cost: one pass over the account's entries up to that moment.
#[utoipa::path(get, path = "/v1/accounts/{id}/balance", tag = "accounts",
    params(("id" = String, Path, description = "Account id", pattern = "^[A-Za-z0-9_.:-]{1,64}$"), BalanceAt),
    responses(
        (status = 200, description = "The balance then", body = BalanceView),
        (status = 400, description = "A bad time", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such account", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn balance_at(
    State(st): State<AppState>,
    PaymentsKey(p): PaymentsKey,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<BalanceAt>,
) -> ApiResult<Json<BalanceView>> {
    let at = rfc3339("at", &q.at)?;
    let client = st.pool.get().await.map_err(crate::Error::from)?;
    let account = load_visible(&client, &p.tenant, &id).await?;
    let balance: i64 = client
        .query_one(
            "select coalesce(sum(amount), 0)::bigint from payrail.entries
             where tenant = $1 and account_id = $2 and created_at <= $3",
            &[&p.tenant, &id, &at],
        )
        .await
        .map_err(crate::Error::from)?
        .get(0);
    Ok(Json(BalanceView {
        account: account.id,
        currency: account.currency,
        at: at.format(&Rfc3339).expect("a parsed time formats"),
        balance,
    }))
}

/// `GET /v1/accounts/{id}/statement` query.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StatementRange {
    /// Start (RFC 3339), inclusive.
    #[param(format = DateTime)]
    pub from: String,
    /// End (RFC 3339), exclusive.
    #[param(format = DateTime)]
    pub to: String,
}

/// Most entries a statement lists (its totals count every entry).
pub const MAX_STATEMENT_ENTRIES: i64 = 1000;

/// An account's statement for a date range.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Statement {
    /// The account.
    pub account: String,
    /// ISO 4217 code.
    pub currency: String,
    /// Start (RFC 3339, UTC), inclusive.
    pub from: String,
    /// End (RFC 3339, UTC), exclusive.
    pub to: String,
    /// The balance at `from`.
    pub opening_balance: i64,
    /// The balance at `to`.
    pub closing_balance: i64,
    /// The sum of the credits in the range.
    pub credits: i64,
    /// The sum of the debits in the range (zero or negative).
    pub debits: i64,
    /// The range's entries, oldest first, each with the balance after it
    /// (at most 1000).
    pub entries: Vec<EntryView>,
    /// Whether the range has more entries than listed.
    pub truncated: bool,
}

/// An account's statement for `[from, to)`: opening and closing balance,
/// credits, debits and the entries. Cost: one pass over the account's
/// entries up to `to`.
#[utoipa::path(get, path = "/v1/accounts/{id}/statement", tag = "accounts",
    params(("id" = String, Path, description = "Account id", pattern = "^[A-Za-z0-9_.:-]{1,64}$"), StatementRange),
    responses(
        (status = 200, description = "The statement", body = Statement),
        (status = 400, description = "A bad time, or from after to", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such account", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn statement(
    State(st): State<AppState>,
    PaymentsKey(p): PaymentsKey,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<StatementRange>,
) -> ApiResult<Json<Statement>> {
    let (from, to) = (rfc3339("from", &q.from)?, rfc3339("to", &q.to)?);
    if from > to {
        return Err(ApiError::bad_request(
            "invalid_range",
            "from must not be after to",
        ));
    }
    let client = st.pool.get().await.map_err(crate::Error::from)?;
    let account = load_visible(&client, &p.tenant, &id).await?;
    // one statement: the totals and the listed entries see one snapshot
    let rows = client
        .query(
            &format!(
                "with e as (
                     select id, txn_id, payment_id, amount, currency, created_at
                     from payrail.entries
                     where tenant = $1 and account_id = $2 and created_at < $4),
                 t as (
                     select coalesce(sum(amount) filter (where created_at < $3), 0)::bigint as opening,
                            coalesce(sum(amount) filter (where created_at >= $3 and amount > 0), 0)::bigint as credits,
                            coalesce(sum(amount) filter (where created_at >= $3 and amount < 0), 0)::bigint as debits,
                            count(*) filter (where created_at >= $3) as n
                     from e)
                 select t.opening, t.credits, t.debits, t.n, l.id, l.txn_id::text,
                        l.payment_id::text, l.amount, l.currency,
                        to_char(l.created_at at time zone 'UTC', {TS})
                 from t left join lateral (
                     select * from e where created_at >= $3 order by id limit $5) l on true
                 order by l.id"
            ),
            &[&p.tenant, &id, &from, &to, &MAX_STATEMENT_ENTRIES],
        )
        .await
        .map_err(crate::Error::from)?;
    let first = rows.first().expect("the totals row");
    let (opening, credits, debits, n): (i64, i64, i64, i64) =
        (first.get(0), first.get(1), first.get(2), first.get(3));
    let mut balance = opening;
    let entries: Vec<EntryView> = rows
        .iter()
        .filter(|r| r.get::<_, Option<i64>>(4).is_some())
        .map(|r| {
            balance += r.get::<_, i64>(7);
            EntryView {
                id: r.get(4),
                txn_id: r.get(5),
                payment_id: r.get(6),
                amount: r.get(7),
                currency: r.get(8),
                balance_after: balance,
                created_at: r.get(9),
            }
        })
        .collect();
    let fmt = |t: OffsetDateTime| t.format(&Rfc3339).expect("a parsed time formats");
    Ok(Json(Statement {
        account: account.id,
        currency: account.currency,
        from: fmt(from),
        to: fmt(to),
        opening_balance: opening,
        closing_balance: opening + credits + debits,
        credits,
        debits,
        truncated: n > entries.len() as i64,
        entries,
    }))
}

/// A hold of a two-phase payment.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HoldView {
    /// The payment that placed it.
    pub payment_id: String,
    /// The account whose funds it reserves.
    pub account: String,
    /// Where a capture sends the money.
    pub destination: String,
    /// ISO 4217 code.
    pub currency: String,
    /// Minor units reserved.
    pub amount: i64,
    /// Minor units captured, once captured.
    pub captured_amount: Option<i64>,
    /// `authorized`, `captured`, `voided` or `expired`.
    pub state: String,
    /// When it expires if not captured or voided (RFC 3339, UTC).
    pub expires_at: String,
    /// When it was placed.
    pub created_at: String,
    /// When it left `authorized`.
    pub resolved_at: Option<String>,
}

/// `GET /v1/holds` query.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListHolds {
    /// Only holds in this state.
    #[param(pattern = "^(authorized|captured|voided|expired)$")]
    pub state: Option<String>,
    /// Only holds on this account.
    #[param(pattern = "^[A-Za-z0-9_.:-]{1,64}$")]
    pub account: Option<String>,
    /// Items per page, 1-200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<usize>,
    /// `next_cursor` or `prev_cursor` of another page.
    #[param(max_length = 512)]
    pub cursor: Option<String>,
}

/// List the tenant's holds, newest first, by state and account.
#[utoipa::path(get, path = "/v1/holds", tag = "payments",
    params(ListHolds),
    responses(
        (status = 200, description = "A page of holds", body = Page<HoldView>),
        (status = 400, description = "Bad state, limit or cursor", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_holds(
    State(st): State<AppState>,
    PaymentsKey(p): PaymentsKey,
    ApiQuery(q): ApiQuery<ListHolds>,
) -> ApiResult<Json<Page<HoldView>>> {
    if let Some(s) = &q.state
        && !matches!(s.as_str(), "authorized" | "captured" | "voided" | "expired")
    {
        return Err(ApiError::bad_request(
            "invalid_state",
            "state is one of authorized, captured, voided, expired",
        ));
    }
    if let Some(a) = &q.account {
        crate::ledger::validate_id("account", a)?;
    }
    let pp = PageParams {
        limit: q.limit,
        cursor: q.cursor,
    };
    let limit = pp.limit()?;
    let seek = pp.seek("holds")?;
    let (cmp, dir) = seek.sql(Order::Desc);
    let bad = || ApiError::bad_request("invalid_cursor", "malformed cursor");
    let (at, id) = match seek.position() {
        None => (None, None),
        Some(pos) => {
            let (at, id) = pos.split_once('|').ok_or_else(bad)?;
            let id: Uuid = id.parse().map_err(|_| bad())?;
            (Some(rfc3339("cursor", at).map_err(|_| bad())?), Some(id))
        }
    };
    let client = st.pool.get().await.map_err(crate::Error::from)?;
    let rows = client
        .query(
            &format!(
                "select payment_id::text, account, destination, currency, amount, captured_amount,
                        state, to_char(expires_at at time zone 'UTC', {TS}),
                        to_char(created_at at time zone 'UTC', {TS}),
                        to_char(resolved_at at time zone 'UTC', {TS})
                 from payrail.holds
                 where tenant = $1 and ($2::text is null or state = $2)
                   and ($3::text is null or account = $3)
                   and ($4::timestamptz is null or (created_at, payment_id) {cmp} ($4, $5::uuid))
                 order by created_at {dir}, payment_id {dir} limit $6"
            ),
            &[
                &p.tenant,
                &q.state,
                &q.account,
                &at,
                &id,
                &(limit as i64 + 1),
            ],
        )
        .await
        .map_err(crate::Error::from)?;
    let holds: Vec<HoldView> = rows
        .iter()
        .map(|r| HoldView {
            payment_id: r.get(0),
            account: r.get(1),
            destination: r.get(2),
            currency: r.get(3),
            amount: r.get(4),
            captured_amount: r.get(5),
            state: r.get(6),
            expires_at: r.get(7),
            created_at: r.get(8),
            resolved_at: r.get(9),
        })
        .collect();
    Ok(Json(page(holds, limit, "holds", &seek, |h| {
        format!("{}|{}", h.created_at, h.payment_id)
    })))
}

/// One journaled plugin call of a payment.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CallView {
    /// The pipeline step (0-based).
    pub step: i32,
    /// `live`, or `shadow` for a candidate run beside it.
    pub role: String,
    /// The component that ran (sha256, hex).
    pub digest: String,
    /// Fuel (instructions) the call used.
    pub fuel_used: i64,
    /// Wall-clock time of the call.
    pub duration_us: i64,
    /// `approve`, `decline`, or `fault` (a shadow candidate that faulted).
    pub decision: String,
    /// The decline, when the call declined.
    pub decline: Option<super::payments::DeclineView>,
    /// A shadow candidate's fault.
    pub error: Option<String>,
    /// What the plugin logged, line by line (`level: message`; capped by
    /// its `max_log_bytes`).
    pub logs: Vec<String>,
    /// Whether a shadow candidate agreed with the live plugin.
    pub agree: Option<bool>,
    /// The journaled input (null for shadow calls: the same as live).
    #[schema(value_type = Option<Object>)]
    pub input: Option<serde_json::Value>,
    /// The journaled output.
    #[schema(value_type = Option<Object>)]
    pub output: Option<serde_json::Value>,
    /// When it ran (RFC 3339, UTC).
    pub created_at: String,
}

/// A payment's plugin calls.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Calls {
    /// In step order, each live call before its shadow.
    pub data: Vec<CallView>,
}

fn decision_of(
    output: Option<&serde_json::Value>,
) -> (String, Option<super::payments::DeclineView>) {
    let Some(o) = output else {
        return ("fault".into(), None);
    };
    let d = o["decision"].as_str().unwrap_or("unknown").to_string();
    let decline = (d == "decline").then(|| super::payments::DeclineView {
        code: o["code"].as_str().unwrap_or_default().to_string(),
        message: o["message"].as_str().unwrap_or_default().to_string(),
    });
    (d, decline)
}

/// When payment `id` of `tenant` and, for a hold, its resolution were
/// written; 404 if it is not the tenant's.
async fn written_at(
    client: &deadpool_postgres::Client,
    tenant: &str,
    id: Uuid,
) -> Result<Vec<OffsetDateTime>, ApiError> {
    let row = client
        .query_opt(
            "select p.created_at, h.resolved_at from payrail.payments p
             left join payrail.holds h on h.payment_id = p.id
             where p.tenant = $1 and p.id = $2",
            &[&tenant, &id],
        )
        .await
        .map_err(crate::Error::from)?
        .ok_or_else(|| crate::Error::NotFound {
            what: "payment",
            id: id.to_string(),
        })?;
    let mut at = vec![row.get::<_, OffsetDateTime>(0)];
    at.extend(row.get::<_, Option<OffsetDateTime>>(1));
    Ok(at)
}

/// A payment's journaled plugin calls: each step's decision, fuel and time,
/// with its input and output.
#[utoipa::path(get, path = "/v1/payments/{id}/calls", tag = "payments",
    params(("id" = String, Path, description = "Payment id (a UUID)", pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")),
    responses(
        (status = 200, description = "The calls", body = Calls),
        (status = 404, description = "No such payment", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn payment_calls(
    State(st): State<AppState>,
    PaymentsKey(p): PaymentsKey,
    Path(id): Path<String>,
) -> ApiResult<Json<Calls>> {
    let id = payment_path(&id)?;
    let client = st.pool.get().await.map_err(crate::Error::from)?;
    written_at(&client, &p.tenant, id).await?;
    let rows = client
        .query(
            &format!(
                "select step, 'live', encode(digest, 'hex'), fuel_used, duration_us,
                        input::jsonb, output::jsonb, null::text, null::bool,
                        to_char(created_at at time zone 'UTC', {TS}), log
                 from payrail.plugin_calls where payment_id = $1
                 union all
                 select step, 'shadow', candidate_digest, fuel_used, duration_us,
                        null::jsonb, candidate_output, candidate_error, agree,
                        to_char(created_at at time zone 'UTC', {TS}), null::text
                 from payrail.shadow_calls where payment_id = $1
                 order by 1, 2 limit 64"
            ),
            &[&id],
        )
        .await
        .map_err(crate::Error::from)?;
    let data = rows
        .iter()
        .map(|r| {
            let output: Option<serde_json::Value> = r.get(6);
            let (decision, decline) = decision_of(output.as_ref());
            CallView {
                step: r.get(0),
                role: r.get(1),
                digest: r.get(2),
                fuel_used: r.get(3),
                duration_us: r.get(4),
                decision,
                decline,
                input: r.get(5),
                output,
                error: r.get(7),
                agree: r.get(8),
                created_at: r.get(9),
                logs: r
                    .get::<_, Option<String>>(10)
                    .map(|l| l.lines().map(str::to_string).collect())
                    .unwrap_or_default(),
            }
        })
        .collect();
    Ok(Json(Calls { data }))
}

/// A payment's outbox events.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Events {
    /// In the order they were written (at most 100).
    pub data: Vec<EventView>,
}

/// A payment's outbox events and their delivery state.
#[utoipa::path(get, path = "/v1/payments/{id}/events", tag = "payments",
    params(("id" = String, Path, description = "Payment id (a UUID)", pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")),
    responses(
        (status = 200, description = "The events", body = Events),
        (status = 404, description = "No such payment", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn payment_events(
    State(st): State<AppState>,
    PaymentsKey(p): PaymentsKey,
    Path(id): Path<String>,
) -> ApiResult<Json<Events>> {
    let id = payment_path(&id)?;
    let client = st.pool.get().await.map_err(crate::Error::from)?;
    let at = written_at(&client, &p.tenant, id).await?;
    let data = crate::outbox::events_of_payment(&client, &p.tenant, id, &at).await?;
    Ok(Json(Events { data }))
}
