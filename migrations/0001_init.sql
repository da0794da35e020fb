-- payrail schema v1: ledger, payments, plugins, pipelines, journal, idempotency, outbox.
-- Every row belongs to a tenant; the foundation uses the tenant 'default'.
create schema if not exists payrail;

-- Accounts. `balance` is a cached roll-up of entries: the audit checks that
-- balance = sum(entries) for every account.
create table payrail.accounts (
    tenant         text        not null,
    id             text        not null,
    currency       text        not null,
    balance        bigint      not null default 0,
    allow_negative boolean     not null default false,
    -- per-currency equity ("world") account that funds opening balances
    is_equity      boolean     not null default false,
    metadata       jsonb       not null default '{}',
    created_at     timestamptz not null default now(),
    primary key (tenant, id),
    check (allow_negative or balance >= 0)
);

create table payrail.payments (
    id              uuid        primary key,
    tenant          text        not null,
    idempotency_key text        not null,
    kind            text        not null,
    source          text        not null,
    destination     text        not null,
    amount          bigint      not null check (amount > 0),
    currency        text        not null,
    metadata        jsonb       not null default '{}',
    status          text        not null check (status in ('approved', 'declined')),
    decline_code    text,
    decline_message text,
    annotations     jsonb       not null default '{}',
    -- the pipeline steps (plugin digests) this payment ran
    pipeline        jsonb       not null default '[]',
    created_at      timestamptz not null default now(),
    unique (tenant, idempotency_key),
    check ((status = 'declined') = (decline_code is not null))
);
create index payments_source_idx on payrail.payments (tenant, source, created_at);
create index payments_destination_idx on payrail.payments (tenant, destination, created_at);

-- Append-only ledger entries. Entries with the same txn_id form one balanced
-- ledger transaction (a payment, or an opening balance against equity).
create table payrail.entries (
    id         bigserial   primary key,
    tenant     text        not null,
    txn_id     uuid        not null,
    -- deferred: the payment row and its entries are written in one
    -- pipelined flight whose statement order is not guaranteed
    payment_id uuid        references payrail.payments (id) deferrable initially deferred,
    account_id text        not null,
    amount     bigint      not null check (amount <> 0),
    currency   text        not null,
    created_at timestamptz not null default now(),
    foreign key (tenant, account_id) references payrail.accounts (tenant, id)
);
create index entries_account_idx on payrail.entries (tenant, account_id, id);
create index entries_txn_idx on payrail.entries (txn_id);
create index entries_payment_idx on payrail.entries (payment_id);

create function payrail.entries_append_only() returns trigger language plpgsql as $$
begin
    raise exception 'payrail.entries is append-only (% refused)', tg_op;
end $$;
create trigger entries_append_only before update or delete on payrail.entries
    for each row execute function payrail.entries_append_only();

-- Content-addressed plugin components.
create table payrail.plugins (
    digest     text        primary key check (digest ~ '^[0-9a-f]{64}$'),
    name       text        not null,
    bytes      bytea       not null,
    size_bytes integer     not null,
    created_at timestamptz not null default now()
);
create index plugins_name_idx on payrail.plugins (name, created_at);

-- Payment kind -> ordered steps [{"plugin": name, "digest": hex, "config": {...}}].
create table payrail.pipelines (
    tenant     text        not null,
    kind       text        not null,
    steps      jsonb       not null,
    version    integer     not null default 1,
    updated_at timestamptz not null default now(),
    primary key (tenant, kind)
);

-- The plugin call journal: one row per executed call, keyed by
-- sha256(payment, step, plugin digest, input digest).
create table payrail.plugin_calls (
    call_key     text        primary key,
    payment_id   uuid        not null,
    step         integer     not null,
    digest       text        not null,
    input_digest text        not null,
    input        jsonb       not null,
    output       jsonb       not null,
    fuel_used    bigint      not null,
    duration_us  bigint      not null,
    created_at   timestamptz not null default now()
);
create index plugin_calls_payment_idx on payrail.plugin_calls (payment_id, step);

create table payrail.idempotency_keys (
    tenant      text        not null,
    key         text        not null,
    fingerprint text        not null,
    state       text        not null check (state in ('pending', 'done')),
    payment_id  uuid,
    status_code integer,
    response    jsonb,
    created_at  timestamptz not null default now(),
    expires_at  timestamptz not null,
    primary key (tenant, key)
);

-- Transactional outbox: written in the payment's transaction, relayed later.
create table payrail.outbox (
    id           bigserial   primary key,
    event_id     uuid        not null unique,
    tenant       text        not null,
    topic        text        not null,
    key          text        not null,
    payload      jsonb       not null,
    created_at   timestamptz not null default now(),
    available_at timestamptz not null default now(),
    state        text        not null default 'pending'
                 check (state in ('pending', 'delivered', 'dead')),
    attempts     integer     not null default 0,
    delivered_at timestamptz,
    last_error   text
);
create index outbox_pending_idx on payrail.outbox (available_at, id) where state = 'pending';
create index outbox_key_idx on payrail.outbox (key);
