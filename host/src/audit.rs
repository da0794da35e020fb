//! `payrail audit`: checks the ledger's invariants over the whole database.
//! Read-only; one repeatable-read snapshot so concurrent payments cannot
//! produce false alarms.

use crate::error::Result;

/// Most violations reported per check (the count is always exact).
const MAX_EXAMPLES: i64 = 20;

/// One broken invariant, with examples.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Violation {
    pub check: &'static str,
    pub detail: String,
}

/// The invariant checks: (name, SQL returning one text column per violation).
const CHECKS: &[(&str, &str)] = &[
    (
        "entries_balance",
        "select format('ledger transaction %s (payment %s) sums to %s %s', txn_id, payment_id, sum(amount), currency)
         from payrail.entries group by txn_id, payment_id, currency having sum(amount) <> 0",
    ),
    (
        "balance_equals_entries",
        "select format('account %s/%s has balance %s but its entries sum to %s', a.tenant, a.id, a.balance, coalesce(e.total, 0))
         from payrail.accounts a
         left join (select tenant, account_id, sum(amount) as total from payrail.entries group by tenant, account_id) e
           on e.tenant = a.tenant and e.account_id = a.id
         where a.balance <> coalesce(e.total, 0)",
    ),
    (
        "no_forbidden_negative",
        "select format('account %s/%s is at %s but does not allow negative balances', tenant, id, balance)
         from payrail.accounts where balance < 0 and not allow_negative",
    ),
    (
        "entry_currency_matches_account",
        "select format('entry %s on %s is in %s, the account in %s', e.id, e.account_id, e.currency, a.currency)
         from payrail.entries e join payrail.accounts a on a.tenant = e.tenant and a.id = e.account_id
         where e.currency <> a.currency",
    ),
    (
        "approved_payment_has_entries",
        "select format('approved payment %s has no entries', p.id) from payrail.payments p
         where p.status = 'approved' and not exists (select 1 from payrail.entries e where e.payment_id = p.id)",
    ),
    (
        "declined_payment_has_no_entries",
        "select format('declined payment %s has entries', p.id) from payrail.payments p
         where p.status = 'declined' and exists (select 1 from payrail.entries e where e.payment_id = p.id)",
    ),
    (
        "payment_has_event",
        "select format('payment %s has no payment.%s outbox event', p.id, p.status) from payrail.payments p
         where not exists (select 1 from payrail.outbox o
                           where o.key = p.id::text and o.topic = 'payment.' || p.status)",
    ),
    // A payment's key row may be gone: the reaper deletes keys past their
    // expiry (`payrail serve`). While it exists it must be finished and
    // point at the payment with its stored response.
    (
        "payment_has_stored_response",
        "select format('payment %s has no finished idempotency key with a stored response', p.id)
         from payrail.payments p
         join payrail.idempotency_keys k on k.tenant = p.tenant and k.key = p.idempotency_key
         where not (k.state = 'done' and k.response is not null and k.payment_id is not distinct from p.id)",
    ),
];

/// Runs every check; an empty result means the ledger is sound.
pub async fn run(client: &mut deadpool_postgres::Client) -> Result<Vec<Violation>> {
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let mut violations = Vec::new();
    for (check, sql) in CHECKS {
        let rows = tx
            .query(&format!("{sql} limit {MAX_EXAMPLES}"), &[])
            .await?;
        for r in rows {
            violations.push(Violation {
                check,
                detail: r.get(0),
            });
        }
    }
    tx.commit().await?;
    Ok(violations)
}
