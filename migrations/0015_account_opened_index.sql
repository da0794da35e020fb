-- payrail schema v15: the audit matches every opening entry with its
-- `account.opened` event; only those events enter this index, so the match
-- does not scan the whole outbox.
create index outbox_account_opened_idx on payrail.outbox (tenant, key)
    where topic = 'account.opened';
