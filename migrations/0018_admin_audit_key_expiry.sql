-- payrail schema v18: the admin audit log, API keys that expire and
-- record when they were last used, and plugin logs in the journal
-- (docs/api.md, "Admin").
--
-- Every change an admin makes (a deploy, a pipeline set, a rollback, a
-- promotion, a key created or revoked, a dead letter retried, an account
-- opened with a balance) is one row, written in the change's own
-- transaction by `host/src/admin_log.rs`. The table is append-only: a
-- trigger refuses every update, delete and truncate, so a leaked database
-- role of the host cannot quietly rewrite history (an owner can still drop
-- the trigger; that is itself visible in the catalog).
--
-- All of it is new tables and nullable columns without defaults: catalog
-- changes, each lock held for an instant (docs/migrations.md).
create table payrail.admin_audit (
    id      bigint      generated always as identity primary key,
    tenant  text        not null,
    -- the API key id, or `cli:<os user>` for the command line
    actor   text        not null,
    action  text        not null,
    target  text        not null,
    before  json,
    after   json,
    at      timestamptz not null default now()
);
create index admin_audit_tenant_idx on payrail.admin_audit (tenant, id);

create function payrail.admin_audit_append_only() returns trigger
    language plpgsql as $body$
begin
    raise exception 'payrail.admin_audit is append-only (% refused)', tg_op
        using errcode = 'insufficient_privilege';
end
$body$;
create trigger admin_audit_no_change before update or delete on payrail.admin_audit
    for each row execute function payrail.admin_audit_append_only();
create trigger admin_audit_no_truncate before truncate on payrail.admin_audit
    for each statement execute function payrail.admin_audit_append_only();

alter table payrail.api_keys add column expires_at timestamptz;
alter table payrail.api_keys add column last_used_at timestamptz;

-- What a plugin logged during a call (capped by its `max_log_bytes`), kept
-- with the call so the console shows it beside the decision. Null: the
-- call logged nothing (most do not).
alter table payrail.plugin_calls add column log text;
