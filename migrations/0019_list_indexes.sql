-- payrail:no-transaction
-- payrail schema v19: indexes for the newest-first lists of accounts and
-- holds (docs/api.md, "Reads"). Built concurrently: payments and holds go
-- on while the index is built (docs/migrations.md).
create index concurrently if not exists accounts_tenant_created_idx
    on payrail.accounts (tenant, created_at, id);
create index concurrently if not exists holds_tenant_created_idx
    on payrail.holds (tenant, created_at, payment_id);
-- A payment's events by the time of its transaction (a block range index:
-- a few pages, and next to nothing per insert on the payment path).
create index concurrently if not exists outbox_created_brin
    on payrail.outbox using brin (created_at);
