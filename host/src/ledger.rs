//! The ledger: accounts, append-only entries and the invariants postings
//! must keep. Knows nothing of WebAssembly: plugins' proposals arrive here as
//! plain [`Posting`]s.
//!
//! Sign convention: a positive amount credits an account (its balance goes
//! up), a negative amount debits it. Every ledger transaction (a payment, or
//! an opening balance) sums to zero per currency, so money never appears
//! from nothing: opening balances are drawn from a per-currency equity
//! account `equity:<CUR>` that may go negative.

use crate::currency;
use crate::error::{Error, Result};
use crate::model::{Metadata, Posting};
use crate::outbox::write::{EventRow, insert_events};
use deadpool_postgres::GenericClient;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use uuid::Uuid;

/// Longest account id, payment kind or plugin name accepted.
pub const MAX_ID_BYTES: usize = 64;
/// Reserved prefix of the per-currency equity accounts.
pub const EQUITY_PREFIX: &str = "equity:";

/// Checks an id: 1-64 bytes of `A-Z a-z 0-9 _ . : -`.
pub fn validate_id(what: &'static str, id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_BYTES
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "invalid_id",
            format!(
                "{what} {id:?} must be 1-{MAX_ID_BYTES} characters of A-Z, a-z, 0-9, '_', '.', ':', '-'"
            ),
        ))
    }
}

/// Checks an ISO 4217 currency code the host knows.
pub fn validate_currency(code: &str) -> Result<()> {
    match currency::exponent(code) {
        Some(_) => Ok(()),
        None => Err(Error::invalid(
            "unknown_currency",
            format!("{code:?} is not a known ISO 4217 currency code (e.g. EUR, USD, JPY)"),
        )),
    }
}

/// The equity account funding opening balances in `currency`.
pub fn equity_account(currency: &str) -> String {
    format!("{EQUITY_PREFIX}{currency}")
}

/// A request to open an account.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewAccount {
    pub id: String,
    pub currency: String,
    #[serde(default)]
    pub allow_negative: bool,
    #[serde(default)]
    pub opening_balance: i64,
    #[serde(default)]
    pub metadata: Metadata,
}

/// An account as reported to users.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub id: String,
    pub currency: String,
    pub balance: i64,
    /// Reserved by active holds (two-phase payments); what may be spent is
    /// `balance - held`.
    #[serde(default)]
    pub held: i64,
    pub allow_negative: bool,
    pub metadata: Metadata,
    /// The part of `balance` in credit shards rather than the row (read
    /// with it, under the same lock): a debit must fold it into the row.
    #[serde(skip)]
    pub in_shards: i64,
}

impl Account {
    /// What may be spent now: the balance minus active holds.
    pub fn available(&self) -> i64 {
        self.balance.saturating_sub(self.held)
    }
}

fn metadata_from_json(v: serde_json::Value) -> Metadata {
    serde_json::from_value(v).unwrap_or_default()
}

fn account_from_row(r: &tokio_postgres::Row) -> Account {
    Account {
        id: r.get("id"),
        currency: r.get("currency"),
        balance: r.get("balance"),
        held: r.get("held"),
        allow_negative: r.get("allow_negative"),
        metadata: metadata_from_json(r.get("metadata")),
        in_shards: r.get("in_shards"),
    }
}

/// Most accounts one `create_accounts` call may open.
pub const MAX_ACCOUNTS_PER_CALL: usize = 100_000;

fn validate_new_account(new: &NewAccount) -> Result<()> {
    validate_id("account id", &new.id)?;
    if new.id.starts_with(EQUITY_PREFIX) {
        return Err(Error::invalid(
            "invalid_id",
            format!("account ids starting with {EQUITY_PREFIX:?} are reserved for equity accounts"),
        ));
    }
    validate_currency(&new.currency)?;
    if new.opening_balance < 0 {
        return Err(Error::invalid(
            "invalid_amount",
            "opening_balance must be zero or a positive integer in minor units",
        ));
    }
    Ok(())
}

/// Opens one account; see [`create_accounts`].
pub async fn create_account(
    client: &mut deadpool_postgres::Client,
    tenant: &str,
    new: &NewAccount,
) -> Result<Account> {
    let mut created = create_accounts(client, tenant, std::slice::from_ref(new)).await?;
    Ok(created.pop().expect("one account created"))
}

/// Opens accounts in one transaction (all or none). Positive opening
/// balances are balanced entry pairs against `equity:<CUR>`, one ledger
/// transaction per account. Cost: a fixed number of statements whatever
/// the count, so opening 100k accounts takes seconds, not minutes.
pub async fn create_accounts(
    client: &mut deadpool_postgres::Client,
    tenant: &str,
    new: &[NewAccount],
) -> Result<Vec<Account>> {
    let tx = client.transaction().await?;
    let opened = create_accounts_in(&tx, tenant, new).await?;
    tx.commit().await?;
    Ok(opened)
}

/// [`create_accounts`] inside the caller's transaction `tx` (which the
/// caller commits).
pub async fn create_accounts_in(
    tx: &deadpool_postgres::Transaction<'_>,
    tenant: &str,
    new: &[NewAccount],
) -> Result<Vec<Account>> {
    if new.len() > MAX_ACCOUNTS_PER_CALL {
        return Err(Error::invalid(
            "too_many_accounts",
            format!("open at most {MAX_ACCOUNTS_PER_CALL} accounts per call"),
        ));
    }
    for n in new {
        validate_new_account(n)?;
    }
    let mut currencies: Vec<&str> = new.iter().map(|n| n.currency.as_str()).collect();
    currencies.sort_unstable();
    currencies.dedup();
    let equities: Vec<String> = currencies.iter().map(|c| equity_account(c)).collect();
    tx.execute(
        "insert into payrail.accounts (tenant, id, currency, allow_negative, is_equity)
         select $1, e, c, true, true from unnest($2::text[], $3::text[]) as t(e, c)
         on conflict do nothing",
        &[&tenant, &equities, &currencies],
    )
    .await?;
    let ids: Vec<&str> = new.iter().map(|n| n.id.as_str()).collect();
    let curs: Vec<&str> = new.iter().map(|n| n.currency.as_str()).collect();
    let negs: Vec<bool> = new.iter().map(|n| n.allow_negative).collect();
    let metas: Vec<serde_json::Value> = new
        .iter()
        .map(|n| serde_json::to_value(&n.metadata).expect("metadata serializes"))
        .collect();
    let inserted = tx
        .query(
            "insert into payrail.accounts (tenant, id, currency, allow_negative, metadata)
             select $1, i, c, n, m from unnest($2::text[], $3::text[], $4::bool[], $5::jsonb[]) as t(i, c, n, m)
             on conflict do nothing returning id",
            &[&tenant, &ids, &curs, &negs, &metas],
        )
        .await?;
    if inserted.len() != new.len() {
        let fresh: std::collections::HashSet<String> = inserted.iter().map(|r| r.get(0)).collect();
        let taken = new
            .iter()
            .find(|n| !fresh.contains(&n.id))
            .map(|n| n.id.clone())
            .unwrap_or_default();
        return Err(Error::AlreadyExists {
            what: "account",
            id: taken,
        });
    }
    let mut postings = Vec::new();
    let mut txn_ids = Vec::new();
    let mut opened = Vec::with_capacity(new.len());
    for n in new {
        let txn = (n.opening_balance > 0).then(Uuid::now_v7);
        opened.push(opened_event(n, txn));
        let Some(txn) = txn else { continue };
        for (account, amount) in [
            (equity_account(&n.currency), -n.opening_balance),
            (n.id.clone(), n.opening_balance),
        ] {
            postings.push(Posting {
                account,
                amount,
                currency: n.currency.clone(),
            });
            txn_ids.push(txn);
        }
    }
    if !postings.is_empty() {
        let deltas = net_deltas(&postings).map_err(|_| {
            Error::invalid(
                "invalid_amount",
                "opening balances overflow a 64-bit amount",
            )
        })?;
        apply_entries(tx, tenant, &txn_ids, None, &postings, &deltas)
            .await
            .map_err(|e| if is_overflow(&e) { overflow_error() } else { e })?;
    }
    insert_opened_events(tx, tenant, &opened).await?;
    let rows = tx.query(ACCOUNTS_SQL, &[&tenant, &ids]).await?;
    let mut by_id: HashMap<String, Account> = rows
        .iter()
        .map(|r| {
            let a = account_from_row(r);
            (a.id.clone(), a)
        })
        .collect();
    Ok(new
        .iter()
        .map(|n| by_id.remove(&n.id).expect("created account is readable"))
        .collect())
}

/// Outbox topic of an account's opening: its opening balance (money drawn
/// from equity) and whether it may go negative. The audit matches every
/// opening entry with its event (`opening_balance_has_event`).
pub const OPENED_TOPIC: &str = "account.opened";

/// The `account.opened` payload of `n`, whose opening entries (if any) are
/// ledger transaction `txn`.
fn opened_event(n: &NewAccount, txn: Option<Uuid>) -> serde_json::Value {
    serde_json::json!({
        "account_id": n.id,
        "currency": n.currency,
        "opening_balance": n.opening_balance,
        "allow_negative": n.allow_negative,
        "txn_id": txn.map(|t| t.to_string()),
    })
}

/// Writes one `account.opened` event per payload (one statement), keyed
/// `account:<id>` so the relay keeps an account's events in order.
async fn insert_opened_events(
    tx: &impl GenericClient,
    tenant: &str,
    payloads: &[serde_json::Value],
) -> Result<()> {
    let rows: Vec<EventRow> = payloads
        .iter()
        .map(|p| EventRow {
            id: Uuid::now_v7(),
            topic: OPENED_TOPIC.into(),
            key: format!("account:{}", p["account_id"].as_str().unwrap_or_default()),
            payload: p.clone(),
            traceparent: crate::telemetry::current_traceparent(),
        })
        .collect();
    insert_events(tx, tenant, &rows).await
}

/// Reserves `amount` of `account` for a hold: `held` rises (the row's own
/// check keeps `balance >= held` unless the account may go negative). The
/// caller holds the account's row lock; its credit shards fold into the row
/// first, so that check sees them. Returns whether the account was found.
pub async fn hold_funds(
    tx: &impl GenericClient,
    tenant: &str,
    account: &str,
    amount: i64,
) -> Result<bool> {
    let stmt = tx
        .prepare_cached(
            "with folded as (
                delete from payrail.credit_shards where tenant = $1 and account = $2
                returning amount
             )
             update payrail.accounts
             set held = held + $3,
                 balance = (balance + coalesce((select sum(amount) from folded), 0))::bigint
             where tenant = $1 and id = $2",
        )
        .await?;
    Ok(tx.execute(&stmt, &[&tenant, &account, &amount]).await? == 1)
}

/// Gives back what [`hold_funds`] reserved: `held` falls by `amount`.
/// Returns whether the account was found.
pub async fn release_funds(
    tx: &impl GenericClient,
    tenant: &str,
    account: &str,
    amount: i64,
) -> Result<bool> {
    let stmt = tx
        .prepare_cached(
            "update payrail.accounts set held = held - $3 where tenant = $1 and id = $2",
        )
        .await?;
    Ok(tx.execute(&stmt, &[&tenant, &account, &amount]).await? == 1)
}

/// Whether `e` is Postgres refusing a value beyond `bigint` (SQLSTATE
/// 22003): a balance or credit shard the checks under the row lock could not
/// foresee (credits from other transactions to an account read unlocked).
pub fn is_overflow(e: &Error) -> bool {
    e.sqlstate() == Some(&tokio_postgres::error::SqlState::NUMERIC_VALUE_OUT_OF_RANGE)
}

/// The typed error for [`is_overflow`]: the transaction rolled back.
pub fn overflow_error() -> Error {
    Error::invalid(
        "amount_overflow",
        "this would take a balance beyond a 64-bit amount; nothing was written",
    )
}

/// Reads one account.
pub async fn get_account(client: &impl GenericClient, tenant: &str, id: &str) -> Result<Account> {
    let row = client
        .query_opt(ACCOUNTS_SQL, &[&tenant, &vec![id]])
        .await?
        .ok_or_else(|| Error::NotFound {
            what: "account",
            id: id.to_string(),
        })?;
    Ok(account_from_row(&row))
}

/// Credit shards per account (migration 0008): a batch worker adds credits
/// to accounts it did not lock to its own shard row, so workers never wait
/// on each other's credits to one hot account. At most 64 (the table's
/// check); 16 covers the batch workers of several hosts.
pub const CREDIT_SHARDS: i16 = 16;

/// The select list and sources of an account read: the balance includes
/// the account's credit shards. A macro so statements can `concat!` it.
macro_rules! account_rows {
    () => {
        "select a.id, a.currency, (a.balance + s.in_shards)::bigint as balance,
                least(s.in_shards, 9223372036854775807)::bigint as in_shards,
                a.held, a.allow_negative, a.metadata
         from payrail.accounts a,
              -- numeric: shards may sum beyond bigint while the balance,
              -- the row (negative, allow_negative) plus them, fits
              lateral (select coalesce(sum(c.amount), 0) as in_shards
                       from payrail.credit_shards c
                       where c.tenant = a.tenant and c.account = a.id) s"
    };
}

/// Accounts by id, with the balance including their credit shards.
const ACCOUNTS_SQL: &str = concat!(account_rows!(), " where a.tenant = $1 and a.id = any($2)");

/// Row-locks (`FOR NO KEY UPDATE`, in id order: the lock a balance update
/// needs, which does not block foreign-key checks of concurrent entry
/// inserts) and reads the given accounts. Missing accounts are absent.
pub async fn lock_rows(
    tx: &impl GenericClient,
    tenant: &str,
    ids: &[String],
) -> Result<HashMap<String, Account>> {
    let stmt = tx
        .prepare_cached(&format!(
            "{ACCOUNTS_SQL} order by a.id for no key update of a"
        ))
        .await?;
    Ok(accounts_by_id(&tx.query(&stmt, &[&tenant, &ids]).await?))
}

/// Accounts read by [`lock_rows_if_free`].
pub struct FreeRows {
    /// The accounts this transaction now holds, row-locked and read.
    pub rows: HashMap<String, Account>,
    /// The accounts another transaction holds: not read, not waited for.
    pub busy: HashSet<String>,
}

/// Like [`crate::locks::lock_all`] then [`lock_rows`], but waits for no
/// other transaction's advisory lock: try-locks each of `ids` in lock-key
/// order, then row-locks and reads the accounts it got. An account another
/// transaction holds is `busy`; one that was got but has no row does not
/// exist. Locks got are held to commit. One statement, so the answer does
/// not depend on the order in which pipelined statements reach the server.
pub async fn lock_rows_if_free(
    tx: &impl GenericClient,
    tenant: &str,
    ids: &[String],
) -> Result<FreeRows> {
    let mut keyed: Vec<(i64, &str)> = ids
        .iter()
        .map(|id| (crate::locks::account_key(tenant, id), id.as_str()))
        .collect();
    keyed.sort_unstable();
    let (keys, ids): (Vec<i64>, Vec<&str>) = keyed.into_iter().unzip();
    let stmt = tx
        .prepare_cached(concat!(
            // `p` is materialized: each try-lock runs once, in key order,
            // and its party's row is locked (if it was got) before the next
            // party's try. Row locks in key order are safe: another
            // transaction locks an account's row only under its advisory
            // lock.
            "with p as materialized (
                 select t.id, t.n, pg_try_advisory_xact_lock(t.k) as free
                 from unnest($2::text[], $3::bigint[]) with ordinality as t(id, k, n)
             )
             select p.id as party, p.free, a.*
             from p left join lateral (",
            account_rows!(),
            "    where p.free and a.tenant = $1 and a.id = p.id
                 for no key update of a
             ) a on true
             order by p.n"
        ))
        .await?;
    let mut free = FreeRows {
        rows: HashMap::new(),
        busy: HashSet::new(),
    };
    for r in tx.query(&stmt, &[&tenant, &ids, &keys]).await? {
        let party: String = r.get("party");
        if !r.get::<_, bool>("free") {
            free.busy.insert(party);
        } else if r.get::<_, Option<String>>("id").is_some() {
            let a = account_from_row(&r);
            free.rows.insert(a.id.clone(), a);
        }
    }
    Ok(free)
}

/// Reads accounts without locking them (for facts that never change:
/// existence and currency). Missing accounts are absent.
pub async fn read_accounts(
    client: &impl GenericClient,
    tenant: &str,
    ids: &[String],
) -> Result<HashMap<String, Account>> {
    let stmt = client.prepare_cached(ACCOUNTS_SQL).await?;
    Ok(accounts_by_id(
        &client.query(&stmt, &[&tenant, &ids]).await?,
    ))
}

/// Rows of `ACCOUNTS_SQL` keyed by account id.
pub fn accounts_by_id(rows: &[tokio_postgres::Row]) -> HashMap<String, Account> {
    rows.iter()
        .map(|r| {
            let a = account_from_row(r);
            (a.id.clone(), a)
        })
        .collect()
}

/// Checks that `postings` sum to zero per currency, with no zero amounts.
/// Sums in i128, so no input can overflow the check itself.
pub fn check_balanced(postings: &[Posting]) -> Result<(), String> {
    let mut sums: BTreeMap<&str, i128> = BTreeMap::new();
    for p in postings {
        if p.amount == 0 {
            return Err(format!("posting to {:?} has amount 0", p.account));
        }
        *sums.entry(p.currency.as_str()).or_default() += i128::from(p.amount);
    }
    match sums.iter().find(|(_, s)| **s != 0) {
        Some((cur, s)) => Err(format!("postings do not balance: {cur} sums to {s}")),
        None => Ok(()),
    }
}

/// Net change per account, with checked i64 arithmetic.
pub fn net_deltas(postings: &[Posting]) -> Result<BTreeMap<String, i64>, ApplyProblem> {
    let mut deltas: BTreeMap<String, i64> = BTreeMap::new();
    for p in postings {
        let d = deltas.entry(p.account.clone()).or_default();
        *d = d
            .checked_add(p.amount)
            .ok_or_else(|| ApplyProblem::Invalid {
                account: p.account.clone(),
                message: format!("postings to {:?} overflow a 64-bit amount", p.account),
            })?;
    }
    Ok(deltas)
}

/// Why a set of postings cannot be applied to the locked accounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyProblem {
    /// The proposer made a mistake (unknown account, wrong currency,
    /// overflow) in a posting to `account`.
    Invalid { account: String, message: String },
    /// The account may not go negative and would: a business decline.
    InsufficientFunds { account: String },
}

/// Checks postings against the locked accounts: every account exists,
/// currencies match, balances stay within i64, and accounts that disallow
/// negatives keep `balance - held >= 0` when debited (money reserved by a
/// hold cannot be spent twice).
pub fn check_against(
    accounts: &HashMap<String, Account>,
    postings: &[Posting],
    deltas: &BTreeMap<String, i64>,
) -> Result<(), ApplyProblem> {
    for p in postings {
        let Some(a) = accounts.get(&p.account) else {
            return Err(ApplyProblem::Invalid {
                account: p.account.clone(),
                message: format!("posting to unknown account {:?}", p.account),
            });
        };
        if a.currency != p.currency {
            return Err(ApplyProblem::Invalid {
                account: p.account.clone(),
                message: format!(
                    "posting in {} to account {:?} held in {}",
                    p.currency, p.account, a.currency
                ),
            });
        }
    }
    for (id, delta) in deltas {
        let a = &accounts[id];
        let after = a
            .balance
            .checked_add(*delta)
            .ok_or_else(|| ApplyProblem::Invalid {
                account: id.clone(),
                message: format!("balance of {id:?} would overflow a 64-bit amount"),
            })?;
        if after < a.held && *delta < 0 && !a.allow_negative {
            return Err(ApplyProblem::InsufficientFunds {
                account: id.clone(),
            });
        }
    }
    Ok(())
}

/// Updates balances by `deltas` and appends one entry per posting (entry
/// `i` belongs to ledger transaction `txn_ids[i]`): two statements whatever
/// the number of postings.
async fn apply_entries(
    tx: &impl GenericClient,
    tenant: &str,
    txn_ids: &[Uuid],
    payment_id: Option<Uuid>,
    postings: &[Posting],
    deltas: &BTreeMap<String, i64>,
) -> Result<()> {
    append_entries(
        tx,
        tenant,
        txn_ids,
        &vec![payment_id; txn_ids.len()],
        postings,
    )
    .await?;
    // nothing read these accounts: fold every debited one
    let fold: Vec<&str> = deltas
        .iter()
        .filter(|(_, d)| **d < 0)
        .map(|(a, _)| a.as_str())
        .collect();
    add_to_balances(tx, tenant, deltas, &fold).await
}

/// Appends one entry per posting (entry `i` in ledger transaction
/// `txn_ids[i]`, made by payment `payment_ids[i]` if any), one statement
/// whatever the number of postings or payments. Callers check balance first.
pub async fn append_entries(
    tx: &impl GenericClient,
    tenant: &str,
    txn_ids: &[Uuid],
    payment_ids: &[Option<Uuid>],
    postings: &[Posting],
) -> Result<()> {
    assert_eq!(txn_ids.len(), postings.len(), "one txn id per posting");
    assert_eq!(
        payment_ids.len(),
        postings.len(),
        "one payment id per posting"
    );
    let accounts: Vec<&str> = postings.iter().map(|p| p.account.as_str()).collect();
    let amounts: Vec<i64> = postings.iter().map(|p| p.amount).collect();
    let currencies: Vec<&str> = postings.iter().map(|p| p.currency.as_str()).collect();
    let stmt = tx
        .prepare_cached(
            "insert into payrail.entries (tenant, txn_id, payment_id, account_id, amount, currency)
             select $1, x, p, a, m, c
             from unnest($2::uuid[], $3::uuid[], $4::text[], $5::bigint[], $6::text[])
                  as t(x, p, a, m, c)",
        )
        .await?;
    tx.execute(
        &stmt,
        &[
            &tenant,
            &txn_ids,
            &payment_ids,
            &accounts,
            &amounts,
            &currencies,
        ],
    )
    .await?;
    Ok(())
}

/// Adds `deltas` to balances, one statement. Rows not locked before are
/// locked here; the table's check constraint is the last line of defence
/// against a forbidden negative balance.
///
/// The credit shards of the accounts in `fold` are moved into their rows in
/// the same statement. A debited account that had shards when it was read
/// must be in `fold`: its debit was checked against the row plus the shards,
/// so the row alone could go below zero. One read with no shards needs no
/// fold (shards only grow while its row lock is held), which keeps the
/// common statement a plain update. Debited rows are always locked before
/// (the caller checked the debit under that lock), so only that lock's
/// holder ever deletes shards.
pub async fn add_to_balances(
    tx: &impl GenericClient,
    tenant: &str,
    deltas: &BTreeMap<String, i64>,
    fold: &[&str],
) -> Result<()> {
    let ids: Vec<&str> = deltas.keys().map(String::as_str).collect();
    let amounts: Vec<i64> = deltas.values().copied().collect();
    let updated = if fold.is_empty() {
        let stmt = tx
            .prepare_cached(
                "update payrail.accounts a set balance = a.balance + d.delta
                 from unnest($2::text[], $3::bigint[]) as d(id, delta)
                 where a.tenant = $1 and a.id = d.id",
            )
            .await?;
        tx.execute(&stmt, &[&tenant, &ids, &amounts]).await?
    } else {
        let stmt = tx
            .prepare_cached(
                "with folded as (
                     delete from payrail.credit_shards s
                     where s.tenant = $1 and s.account = any($4::text[])
                     returning s.account, s.amount
                 ), f as (
                     select account, sum(amount) as total from folded group by account
                 )
                 -- in numeric: only the result must fit, not the row plus
                 -- the delta before the shards are added
                 update payrail.accounts a
                 set balance = (a.balance::numeric + d.delta + coalesce(f.total, 0))::bigint
                 from unnest($2::text[], $3::bigint[]) as d(id, delta)
                 left join f on f.account = d.id
                 where a.tenant = $1 and a.id = d.id",
            )
            .await?;
        tx.execute(&stmt, &[&tenant, &ids, &amounts, &fold]).await?
    };
    assert_eq!(updated as usize, ids.len(), "every posted account exists");
    Ok(())
}

/// Records that the holders of `fences` (account id, fencing token) write
/// these accounts in this transaction, refusing with [`Error::LockLost`]
/// when an account already holds the same or a newer token: that holder's
/// lock was lost and another took the account since (docs/locking.md,
/// "Lock services and fencing"). Every acquisition gets a new token and a
/// transaction fences once, so an equal token is another holder (a lock
/// service that restarted its count). Run it before the transaction's
/// other writes to those accounts; the row locks it takes keep an older
/// holder from writing after it.
pub async fn fence_accounts<S: AsRef<str>>(
    tx: &impl GenericClient,
    tenant: &str,
    fences: &[(S, i64)],
) -> Result<()> {
    assert!(fences.iter().all(|(_, t)| *t > 0), "tokens start at 1");
    let ids: Vec<&str> = fences.iter().map(|(id, _)| id.as_ref()).collect();
    let tokens: Vec<i64> = fences.iter().map(|(_, t)| *t).collect();
    let stmt = tx
        .prepare_cached(
            "with f as (select * from unnest($2::text[], $3::bigint[]) as f(id, token)),
             updated as (
                 update payrail.accounts a set lock_fence = f.token
                 from f
                 where a.tenant = $1 and a.id = f.id and a.lock_fence < f.token
                 returning a.id
             )
             select f.id from f
             where not exists (select 1 from updated u where u.id = f.id)
               and exists (select 1 from payrail.accounts a where a.tenant = $1 and a.id = f.id)
             order by f.id limit 1",
        )
        .await?;
    match tx.query_opt(&stmt, &[&tenant, &ids, &tokens]).await? {
        None => Ok(()),
        Some(row) => Err(Error::LockLost {
            account: row.get(0),
        }),
    }
}

/// The fencing tokens `accounts` hold (0: never written under an external
/// lock), for raising a lock service's counters after it lost them.
pub async fn stored_fences(
    client: &impl GenericClient,
    tenant: &str,
    accounts: &[&str],
) -> Result<Vec<(String, i64)>> {
    let stmt = client
        .prepare_cached(
            "select id, lock_fence from payrail.accounts
             where tenant = $1 and id = any($2::text[]) order by id",
        )
        .await?;
    let rows = client.query(&stmt, &[&tenant, &accounts]).await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// The debited accounts of `deltas` that [`add_to_balances`] must fold:
/// those read with credit shards, or not read at all.
pub fn to_fold<'a>(
    deltas: &'a BTreeMap<String, i64>,
    accounts: &HashMap<String, Account>,
) -> Vec<&'a str> {
    deltas
        .iter()
        .filter(|(a, d)| **d < 0 && accounts.get(*a).is_none_or(|x| x.in_shards > 0))
        .map(|(a, _)| a.as_str())
        .collect()
}

/// Applies a transaction's net `deltas`, at most two statements (pipelined):
/// debits, and credits to accounts `is_locked` says the transaction holds
/// the row lock of, go to the rows ([`add_to_balances`], folding the shards
/// [`to_fold`] names from `accounts`, the rows as read); credits to the
/// others (a fee account a plugin names) go to credit shard `shard`
/// ([`add_to_credit_shards`]), so they wait for no one. Zero deltas are
/// skipped. Callers checked every debit under its row lock.
pub async fn apply_deltas(
    tx: &impl GenericClient,
    tenant: &str,
    deltas: &BTreeMap<String, i64>,
    accounts: &HashMap<String, Account>,
    is_locked: impl Fn(&str) -> bool,
    shard: i16,
) -> Result<()> {
    let (rows, credits): (BTreeMap<String, i64>, BTreeMap<String, i64>) = deltas
        .iter()
        .filter(|(_, d)| **d != 0)
        .map(|(a, d)| (a.clone(), *d))
        .partition(|(a, d)| *d < 0 || is_locked(a));
    futures::try_join!(
        async {
            if rows.is_empty() {
                return Ok(());
            }
            add_to_balances(tx, tenant, &rows, &to_fold(&rows, accounts)).await
        },
        async {
            if credits.is_empty() {
                return Ok(());
            }
            add_to_credit_shards(tx, tenant, &credits, shard).await
        },
    )?;
    Ok(())
}

/// The credit shard of a one-payment transaction: spread by payment id.
/// Its last byte, which is hashed: the first ones are a timestamp
/// (`processor::payment_id`) and would put every payment of a day on one
/// shard.
pub fn shard_of(payment: Uuid) -> i16 {
    i16::from(payment.as_bytes()[15]) % CREDIT_SHARDS
}

/// Adds `credits` (all positive) to the accounts' credit shard `shard`, one
/// statement, instead of to their rows: for accounts the caller credits
/// without holding their row lock (a fee account a plugin names). Two
/// callers with different shards never wait on each other; callers on the
/// same shard take the rows in account order (the map's), so they cannot
/// deadlock. The caller checked that every account exists.
pub async fn add_to_credit_shards(
    tx: &impl GenericClient,
    tenant: &str,
    credits: &BTreeMap<String, i64>,
    shard: i16,
) -> Result<()> {
    assert!(
        (0..CREDIT_SHARDS).contains(&shard),
        "shard {shard} out of range"
    );
    assert!(
        credits.values().all(|c| *c > 0),
        "only credits go to shards"
    );
    let ids: Vec<&str> = credits.keys().map(String::as_str).collect();
    let amounts: Vec<i64> = credits.values().copied().collect();
    let stmt = tx
        .prepare_cached(
            "insert into payrail.credit_shards as s (tenant, account, shard, amount)
             select $1, t.id, $3, t.amount
             from unnest($2::text[], $4::bigint[]) with ordinality as t(id, amount, n)
             order by t.n
             on conflict (tenant, account, shard) do update set amount = s.amount + excluded.amount",
        )
        .await?;
    tx.execute(&stmt, &[&tenant, &ids, &shard, &amounts])
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(account: &str, amount: i64) -> Posting {
        Posting {
            account: account.into(),
            amount,
            currency: "EUR".into(),
        }
    }

    #[test]
    fn balanced_and_unbalanced() {
        assert!(check_balanced(&[p("a", -5), p("b", 5)]).is_ok());
        assert!(
            check_balanced(&[p("a", -5)])
                .unwrap_err()
                .contains("EUR sums to -5")
        );
        assert!(check_balanced(&[p("a", 0)]).is_err());
        // i64 extremes sum in i128 without overflow
        assert!(check_balanced(&[p("a", i64::MAX), p("b", i64::MAX)]).is_err());
    }

    #[test]
    fn deltas_overflow_is_an_error() {
        assert!(net_deltas(&[p("a", i64::MAX), p("a", 1)]).is_err());
        assert_eq!(net_deltas(&[p("a", 3), p("a", -1)]).unwrap()["a"], 2);
    }

    #[test]
    fn overdraft_and_unknown_account() {
        let mut accounts = HashMap::new();
        accounts.insert(
            "a".to_string(),
            Account {
                id: "a".into(),
                currency: "EUR".into(),
                balance: 10,
                held: 0,
                allow_negative: false,
                metadata: Metadata::new(),
                in_shards: 0,
            },
        );
        let ok = [p("a", -10)];
        assert!(check_against(&accounts, &ok, &net_deltas(&ok).unwrap()).is_ok());
        let over = [p("a", -11)];
        assert_eq!(
            check_against(&accounts, &over, &net_deltas(&over).unwrap()),
            Err(ApplyProblem::InsufficientFunds {
                account: "a".into()
            })
        );
        let unknown = [p("zz", 1)];
        assert!(matches!(
            check_against(&accounts, &unknown, &net_deltas(&unknown).unwrap()),
            Err(ApplyProblem::Invalid { .. })
        ));
    }
}
