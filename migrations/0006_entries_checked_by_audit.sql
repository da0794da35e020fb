-- payrail schema v6: entries carry no per-row foreign keys.
--
-- Each entry row ran two foreign-key checks: a query per row, each taking a
-- FOR KEY SHARE lock on the payment and on the account (about an eighth of
-- Postgres's CPU per payment under `payrail bench`). The host writes
-- entries only in the transaction that read every posted account under its
-- lock (or read it, for a credit) and that inserts the payment itself, and
-- entries are append-only. The references are checked instead by
-- `payrail audit` (invariants `entry_account_exists` and
-- `entry_payment_exists`). See docs/batching.md.
alter table payrail.entries drop constraint entries_payment_id_fkey;
alter table payrail.entries drop constraint entries_tenant_account_id_fkey;
