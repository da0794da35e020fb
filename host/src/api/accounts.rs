//! `/v1/accounts`: open accounts, read them and their ledger entries.

use super::AppState;
use super::extract::TS;
use super::extract::{AccountsKey, ApiJson, ApiQuery, PaymentsKey};
use super::pagination::{MAX_LIMIT, Order, Page, PageParams, page};
use super::problem::{ApiError, ApiResult, Problem};
use crate::apikeys::{Principal, Scope};
use crate::ledger::{self, NewAccount};
use crate::model::Metadata;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /v1/accounts` body.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAccount {
    /// 1-64 characters of `A-Z a-z 0-9 _ . : -`, unique within the tenant.
    pub id: String,
    /// ISO 4217 code.
    pub currency: String,
    /// Whether the balance may go below zero. `true` needs the `admin`
    /// scope: such an account can pay out money it does not have.
    #[serde(default)]
    pub allow_negative: bool,
    /// In minor units, drawn from the tenant's `equity:<CUR>` account.
    /// Above zero needs the `admin` scope: it creates money.
    #[serde(default)]
    pub opening_balance: i64,
    /// Up to 32 string entries of at most 512 bytes.
    #[serde(default)]
    pub metadata: Metadata,
}

/// An account.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AccountView {
    /// The account id.
    pub id: String,
    /// ISO 4217 code.
    pub currency: String,
    /// Balance in minor units.
    pub balance: i64,
    /// What may be spent now: the balance minus the funds reserved by
    /// authorized (not yet captured or voided) two-phase payments.
    pub available: i64,
    /// Whether the balance may go below zero.
    pub allow_negative: bool,
    /// The account's metadata.
    pub metadata: Metadata,
    /// When it was opened (RFC 3339, UTC); in lists only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
}

impl From<ledger::Account> for AccountView {
    fn from(a: ledger::Account) -> Self {
        let available = a.available();
        let ledger::Account {
            id,
            currency,
            balance,
            held: _,
            allow_negative,
            metadata,
            in_shards: _,
        } = a;
        AccountView {
            id,
            currency,
            available,
            balance,
            allow_negative,
            metadata,
            created_at: None,
        }
    }
}

/// One ledger entry of an account.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EntryView {
    /// Position in the ledger (increasing).
    pub id: i64,
    /// The ledger transaction (a payment, or an opening balance).
    pub txn_id: String,
    /// The payment, if the entry belongs to one.
    pub payment_id: Option<String>,
    /// Positive credits the account, negative debits it.
    pub amount: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// The account's balance after this entry, in minor units.
    pub balance_after: i64,
    /// When the entry was written (RFC 3339, UTC).
    pub created_at: String,
}

/// Checks metadata bounds (see [`crate::processor::check_metadata`]).
pub fn validate_metadata(m: &Metadata) -> Result<(), ApiError> {
    Ok(crate::processor::check_metadata(m)?)
}

/// Refuses what only an admin key may open: an opening balance above zero
/// (it creates money, drawn from equity) or `allow_negative` (the account
/// can pay out money it does not have). A plain account (zero opening, no
/// overdraft) is open to a `payments` key too.
pub fn check_account_powers(p: &Principal, body: &CreateAccount) -> Result<(), ApiError> {
    let power = if body.opening_balance > 0 {
        "an opening balance above zero"
    } else if body.allow_negative {
        "allow_negative"
    } else {
        return Ok(());
    };
    if p.has(Scope::Admin) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "admin_scope_required",
        format!(
            "opening an account with {power} needs an API key with the `admin` scope; a `payments` key may open accounts with a zero opening balance and no overdraft"
        ),
    ))
}

/// Open an account.
#[utoipa::path(post, path = "/v1/accounts", tag = "accounts",
    request_body = CreateAccount,
    responses(
        (status = 201, description = "Account opened", body = AccountView),
        (status = 400, description = "Invalid request", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`admin_scope_required`: an opening balance or `allow_negative` with a key without the `admin` scope; nothing written", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The id is taken", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_account(
    State(st): State<AppState>,
    AccountsKey(p): AccountsKey,
    ApiJson(body): ApiJson<CreateAccount>,
) -> ApiResult<(StatusCode, Json<AccountView>)> {
    check_account_powers(&p, &body)?;
    validate_metadata(&body.metadata)?;
    let CreateAccount {
        id,
        currency,
        allow_negative,
        opening_balance,
        metadata,
    } = body;
    let mut client = st.pool.get().await.map_err(crate::Error::from)?;
    // an account opened with money or an overdraft is an admin act: audited
    let account = crate::admin::open_account(
        &mut client,
        &super::admin::actor(&p),
        &NewAccount {
            id,
            currency,
            allow_negative,
            opening_balance,
            metadata,
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(account.into())))
}

/// Read an account.
#[utoipa::path(get, path = "/v1/accounts/{id}", tag = "accounts",
    params(("id" = String, Path, description = "Account id")),
    responses(
        (status = 200, description = "The account", body = AccountView),
        (status = 404, description = "No such account", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_account(
    State(st): State<AppState>,
    PaymentsKey(p): PaymentsKey,
    Path(id): Path<String>,
) -> ApiResult<Json<AccountView>> {
    let client = st.pool.get().await.map_err(crate::Error::from)?;
    let mut account = load_visible(&client, &p.tenant, &id).await?;
    // funds of holds past their expiry (a late timer) read as released
    if account.held > 0 && crate::holds::expire_due_of_account(&st.pool, &p.tenant, &id).await? > 0
    {
        account = load_visible(&client, &p.tenant, &id).await?;
    }
    Ok(Json(account.into()))
}

/// Reads an account of `tenant`; a malformed id is "not found" too (it
/// cannot exist).
pub async fn load_visible(
    client: &deadpool_postgres::Client,
    tenant: &str,
    id: &str,
) -> Result<ledger::Account, ApiError> {
    let not_found = || crate::Error::NotFound {
        what: "account",
        id: id.chars().take(64).collect(),
    };
    if ledger::validate_id("account id", id).is_err() {
        return Err(not_found().into());
    }
    Ok(ledger::get_account(client, tenant, id).await?)
}

/// List an account's ledger entries, newest first, each with the balance
/// after it. Cost: the page, and one sum over the entries newer than it
/// (cheap for the first pages, a pass over the account for the oldest).
#[utoipa::path(get, path = "/v1/accounts/{id}/entries", tag = "accounts",
    params(("id" = String, Path, description = "Account id", pattern = "^[A-Za-z0-9_.:-]{1,64}$"), PageParams),
    responses(
        (status = 200, description = "A page of entries", body = Page<EntryView>),
        (status = 400, description = "Bad limit or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such account", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_entries(
    State(st): State<AppState>,
    PaymentsKey(p): PaymentsKey,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<PageParams>,
) -> ApiResult<Json<Page<EntryView>>> {
    let limit = q.limit()?;
    let seek = q.seek("entries")?;
    let position = super::pagination::int_position(&seek)?;
    let (cmp, dir) = seek.sql(Order::Desc);
    let mut client = st.pool.get().await.map_err(crate::Error::from)?;
    load_visible(&client, &p.tenant, &id).await?;
    debug_assert!(limit <= MAX_LIMIT);
    // One snapshot, two statements: the page, then the balance after its
    // newest entry: on the first page the balance itself; deeper, the
    // balance less every newer entry (a pass over the entries written
    // since: about 100-200 ms per million here, docs/api.md).
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(crate::Error::from)?;
    let mut rows = tx
        .query(
            &format!(
                "select id, txn_id::text, payment_id::text, amount, currency,
                        to_char(created_at at time zone 'UTC', {TS})
                 from payrail.entries
                 where tenant = $1 and account_id = $2 and ($3::bigint is null or id {cmp} $3)
                 order by id {dir} limit $4"
            ),
            &[&p.tenant, &id, &position, &(limit as i64 + 1)],
        )
        .await
        .map_err(crate::Error::from)?;
    rows.sort_unstable_by_key(|r| std::cmp::Reverse(r.get::<_, i64>(0)));
    let newest: Option<i64> = rows.first().map(|r| r.get(0));
    let first_page = matches!(seek, super::pagination::Seek::Start);
    let mut after: i64 = match newest {
        None => 0,
        Some(_) if first_page => tx
            .query_one(
                "select balance::bigint from payrail.account_balances where tenant = $1 and id = $2",
                &[&p.tenant, &id],
            )
            .await
            .map_err(crate::Error::from)?
            .get(0),
        Some(newest) => tx
            .query_one(
                "select (b.balance - coalesce((
                     select sum(e.amount) from payrail.entries e
                     where e.tenant = $1 and e.account_id = $2 and e.id > $3), 0))::bigint
                 from payrail.account_balances b where b.tenant = $1 and b.id = $2",
                &[&p.tenant, &id, &newest],
            )
            .await
            .map_err(crate::Error::from)?
            .get(0),
    };
    tx.commit().await.map_err(crate::Error::from)?;
    // walk down from the newest: each older entry's balance is the one
    // above it less that entry's amount
    let mut entries: Vec<EntryView> = rows
        .iter()
        .map(|r| {
            let amount: i64 = r.get(3);
            let e = EntryView {
                id: r.get(0),
                txn_id: r.get(1),
                payment_id: r.get(2),
                amount,
                currency: r.get(4),
                balance_after: after,
                created_at: r.get(5),
            };
            after -= amount;
            e
        })
        .collect();
    // `page` expects the fetch order: a backward page was fetched oldest first
    if matches!(seek, super::pagination::Seek::Before(_)) {
        entries.reverse();
    }
    Ok(Json(page(entries, limit, "entries", &seek, |e| {
        e.id.to_string()
    })))
}
