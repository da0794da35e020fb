-- payrail schema v13: every account opening is an outbox event; an index
-- of due holds.
--
-- From this version opening an account writes an `account.opened` event
-- (docs/outbox.md) in the same transaction as its opening entries, and the
-- audit matches every opening entry (an entry without a payment) with its
-- event. Accounts opened before have entries but no event: this writes
-- their events, already `delivered` (they are history, not news, so an
-- upgrade does not flood the sinks), so the audit holds on an upgraded
-- ledger. One statement; reads the entries without a payment once.
insert into payrail.outbox (event_id, tenant, topic, key, payload, state, delivered_at)
select gen_random_uuid(), e.tenant, 'account.opened', 'account:' || e.account_id,
       jsonb_build_object(
           'account_id', e.account_id,
           'currency', e.currency,
           'opening_balance', e.amount,
           'allow_negative', a.allow_negative,
           'txn_id', e.txn_id::text),
       'delivered', now()
from payrail.entries e
join payrail.accounts a on a.tenant = e.tenant and a.id = e.account_id
where e.payment_id is null and not a.is_equity;

-- Holds past their expiry still authorized (a relay timer dead-lettered or
-- never run): `payrail holds expire-due` and the `payrail_holds_overdue`
-- gauge find them by this index, a range scan whatever the number of
-- active holds. Small: only authorized holds are in it.
create index holds_due_idx on payrail.holds (expires_at) where state = 'authorized';
