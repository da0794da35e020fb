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
         from payrail.account_balances a
         left join (select tenant, account_id, sum(amount) as total from payrail.entries group by tenant, account_id) e
           on e.tenant = a.tenant and e.account_id = a.id
         where a.balance <> coalesce(e.total, 0)",
    ),
    // The row alone: credit shards only add to it (migration 0008).
    (
        "no_forbidden_negative",
        "select format('account %s/%s is at %s but does not allow negative balances', tenant, id, balance)
         from payrail.accounts where balance < 0 and not allow_negative",
    ),
    (
        "credit_shard_account_exists",
        "select format('credit shard %s of account %s/%s (%s) names no account', s.shard, s.tenant, s.account, s.amount)
         from payrail.credit_shards s
         where not exists (select 1 from payrail.accounts a where a.tenant = s.tenant and a.id = s.account)",
    ),
    (
        "entry_account_exists",
        "select format('entry %s names account %s/%s, which does not exist', e.id, e.tenant, e.account_id)
         from payrail.entries e
         where not exists (select 1 from payrail.accounts a where a.tenant = e.tenant and a.id = e.account_id)",
    ),
    (
        "entry_payment_exists",
        "select format('entry %s names payment %s, which does not exist', e.id, e.payment_id)
         from payrail.entries e
         where e.payment_id is not null
           and not exists (select 1 from payrail.payments p where p.id = e.payment_id)",
    ),
    (
        "entry_currency_matches_account",
        "select format('entry %s on %s is in %s, the account in %s', e.id, e.account_id, e.currency, a.currency)
         from payrail.entries e join payrail.accounts a on a.tenant = e.tenant and a.id = e.account_id
         where e.currency <> a.currency",
    ),
    (
        "approved_payment_has_entries",
        "select format('%s payment %s has no entries', p.status, p.id) from payrail.payments p
         where p.status in ('approved', 'captured') and not exists (select 1 from payrail.entries e where e.payment_id = p.id)",
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
    // Unique by construction (hash of payment id and index), no longer by
    // an index (migration 0010).
    (
        "outbox_event_id_unique",
        "select format('event id %s is on %s outbox rows', event_id, count(*))
         from payrail.outbox group by event_id having count(*) > 1",
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
    // Opening balances create money (drawn from equity): each one must be
    // published like a payment (`ledger::OPENED_TOPIC`), and each event must
    // name the entry it announced.
    (
        "opening_balance_has_event",
        "select format('opening entry of account %s/%s (%s %s, ledger transaction %s) has no matching account.opened event', e.tenant, e.account_id, e.amount, e.currency, e.txn_id)
         from payrail.entries e join payrail.accounts a on a.tenant = e.tenant and a.id = e.account_id
         where e.payment_id is null and not a.is_equity
           and not exists (select 1 from payrail.outbox o
                           where o.key = 'account:' || e.account_id and o.tenant = e.tenant
                             and o.topic = 'account.opened'
                             and o.payload->>'txn_id' = e.txn_id::text
                             and o.payload->>'opening_balance' = e.amount::text)",
    ),
    (
        "opened_event_has_entry",
        "select format('account.opened event %s of %s/%s announces %s but no opening entry matches', o.event_id, o.tenant, o.payload->>'account_id', o.payload->>'opening_balance')
         from payrail.outbox o
         where o.topic = 'account.opened' and o.payload->>'txn_id' is not null
           and not exists (select 1 from payrail.entries e
                           where e.tenant = o.tenant and e.account_id = o.payload->>'account_id'
                             and e.payment_id is null and e.txn_id::text = o.payload->>'txn_id'
                             and e.amount::text = o.payload->>'opening_balance')",
    ),
    // Two-phase payments (see `holds`).
    (
        "held_equals_active_holds",
        "select format('account %s/%s has held %s but its active holds sum to %s', a.tenant, a.id, a.held, coalesce(h.total, 0))
         from payrail.accounts a
         left join (select tenant, account, sum(amount) as total from payrail.holds
                    where state = 'authorized' group by tenant, account) h
           on h.tenant = a.tenant and h.account = a.id
         where a.held <> coalesce(h.total, 0)",
    ),
    (
        "hold_resolved_at_most_once",
        "select format('hold of payment %s resolved %s times', key, count(*)) from payrail.outbox
         where topic in ('payment.captured', 'payment.voided', 'payment.expired')
         group by key having count(*) > 1",
    ),
    (
        "hold_matches_payment",
        "select format('hold of payment %s is %s but the payment is %s', h.payment_id, h.state, p.status)
         from payrail.holds h join payrail.payments p on p.id = h.payment_id
         where h.state <> p.status",
    ),
    (
        "captured_within_hold",
        "select format('hold of payment %s captured %s of %s', payment_id, captured_amount, amount)
         from payrail.holds where captured_amount > amount or captured_amount <= 0",
    ),
    (
        "capture_entries_once",
        "select format('payment %s has entries in %s ledger transactions', payment_id, count(distinct txn_id))
         from payrail.entries where payment_id is not null
         group by payment_id having count(distinct txn_id) > 1",
    ),
    (
        "only_captured_holds_have_entries",
        "select format('%s payment %s has entries', p.status, p.id) from payrail.payments p
         where p.status in ('authorized', 'voided', 'expired')
           and exists (select 1 from payrail.entries e where e.payment_id = p.id)",
    ),
    (
        "no_forbidden_negative_available",
        "select format('account %s/%s has balance %s and held %s: available is negative', tenant, id, balance, held)
         from payrail.accounts where balance - held < 0 and not allow_negative",
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
    // The checks read the whole ledger: on a large one they outlast the
    // statement timeout every host connection carries (database.statement_timeout_ms).
    // Every check reads whole tables, where hash and merge joins are
    // linear. Right after a burst of writes the planner's statistics can
    // still say a table is small, and it picked a nested loop that scanned
    // the outbox once per opening entry: over 20 minutes on a ledger of
    // 100k accounts and a million payments, seconds with fresh statistics.
    // Nested loops stay possible where nothing else can run.
    tx.batch_execute("set local statement_timeout = 0; set local enable_nestloop = off")
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
