-- payrail schema v7: fewer index writes per payment, identifiers in byte order.
--
-- Under `payrail bench` a one-step payment inserted into 24 b-tree indexes,
-- about a third of Postgres's CPU per payment (docs/performance.md). These
-- four served no query, or served it twice:
--
-- * entries_txn_idx: no query looks entries up by ledger transaction; the
--   audit groups the whole table.
-- * outbox_key_idx: the relay reads a key's undelivered events through
--   outbox_key_undelivered_idx; the audit anti-joins the whole table.
-- * payments (tenant, idempotency_key) unique: the payment id is a hash of
--   (tenant, key) (processor::payment_id), so the primary key already
--   refuses a second payment for a key, including a key reused after its
--   expiry (docs/idempotency.md).
-- * plugin_calls_payment_idx: the journal's primary key becomes
--   (payment_id, call_key), which serves replay's lookup by payment. The
--   call key is a hash of (payment, step, plugin, input), so the pair is
--   unique exactly when the call key is.
drop index payrail.entries_txn_idx;
drop index payrail.outbox_key_idx;
alter table payrail.payments drop constraint payments_tenant_idempotency_key_key;
alter table payrail.plugin_calls drop constraint plugin_calls_pkey;
drop index payrail.plugin_calls_payment_idx;
alter table payrail.plugin_calls add primary key (payment_id, call_key);

-- Identifiers compare as bytes (collation "C"). Under a libc locale every
-- comparison went through strcoll (about a tenth of Postgres's CPU in the
-- bench); for these columns only equality and a stable order matter, and
-- "C" orders UTF-8 by code point, which is what C.UTF-8 gave. Indexes on
-- the columns are rebuilt.
alter table payrail.accounts
    alter column tenant type text collate "C",
    alter column id type text collate "C";
alter table payrail.holds
    alter column tenant type text collate "C",
    alter column account type text collate "C";
alter table payrail.payments
    alter column tenant type text collate "C",
    alter column idempotency_key type text collate "C",
    alter column source type text collate "C",
    alter column destination type text collate "C";
alter table payrail.entries
    alter column tenant type text collate "C",
    alter column account_id type text collate "C";
alter table payrail.idempotency_keys
    alter column tenant type text collate "C",
    alter column key type text collate "C";
alter table payrail.plugin_calls
    alter column call_key type text collate "C";
alter table payrail.outbox
    alter column key type text collate "C";
