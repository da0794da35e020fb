-- payrail schema v2: API keys, per-tenant plugin names, indexes for the
-- HTTP host (pagination, the idempotency key reaper).

-- API keys. Only the sha256 of the secret is stored; the secret is shown
-- once, when the key is created. A revoked key stays for the audit trail.
create table payrail.api_keys (
    id         text        primary key check (id ~ '^key_[0-9a-f]{16}$'),
    tenant     text        not null check (tenant ~ '^[A-Za-z0-9_.:-]{1,64}$'),
    hash       text        not null unique check (hash ~ '^[0-9a-f]{64}$'),
    scopes     text[]      not null check (scopes <@ array['payments', 'admin']::text[]
                                           and cardinality(scopes) > 0),
    created_at timestamptz not null default now(),
    revoked_at timestamptz
);
create index api_keys_tenant_idx on payrail.api_keys (tenant, created_at);

-- Plugin bytes stay content-addressed and shared (payrail.plugins, keyed by
-- digest); which names a tenant sees, and which digests it may put into a
-- pipeline, is per tenant. A name refers to its latest deploy.
create table payrail.plugin_names (
    tenant      text        not null,
    name        text        not null,
    digest      text        not null references payrail.plugins (digest),
    deployed_at timestamptz not null default clock_timestamp(),
    primary key (tenant, name, digest)
);
create index plugin_names_latest_idx on payrail.plugin_names (tenant, name, deployed_at desc);
create index plugin_names_digest_idx on payrail.plugin_names (tenant, digest);

-- Until now every plugin belonged to the single tenant 'default'.
insert into payrail.plugin_names (tenant, name, digest, deployed_at)
select 'default', name, digest, created_at from payrail.plugins;

-- The reaper deletes finished keys past their expiry in small batches.
create index idempotency_keys_expiry_idx on payrail.idempotency_keys (expires_at)
    where state = 'done';

-- Cursor pagination of a tenant's payments.
create index payments_tenant_created_idx on payrail.payments (tenant, created_at, id);
