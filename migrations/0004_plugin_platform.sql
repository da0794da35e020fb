-- payrail schema v4: the plugin platform. Plugin version labels, the
-- append-only history of every pipeline version (rollback copies an old
-- version forward), and the journal of shadow (candidate) plugin calls.

-- A deploy may carry a version label (`--version`); absent, the host
-- numbers deploys of a name per tenant (v1, v2, ...).
alter table payrail.plugin_names add column version text;

-- Every version a pipeline ever had. `payrail.pipelines` keeps the current
-- one (what payments read); both are written in one statement.
create table payrail.pipeline_versions (
    tenant     text        not null,
    kind       text        not null,
    version    integer     not null check (version > 0),
    steps      jsonb       not null,
    note       text        not null default '',
    created_at timestamptz not null default clock_timestamp(),
    primary key (tenant, kind, version)
);
insert into payrail.pipeline_versions (tenant, kind, version, steps, note, created_at)
select tenant, kind, version, steps, 'current at migration 0004', updated_at
from payrail.pipelines;

-- Shadow calls: a step's candidate plugin run on the live call's input,
-- after it, with no effect on the payment. Written in the payment's
-- transaction beside its plugin_calls rows. A candidate fault is recorded
-- (candidate_error), never raised.
create table payrail.shadow_calls (
    payment_id        uuid        not null,
    step              integer     not null,
    pipeline_version  integer     not null,
    live_digest       text        not null,
    candidate_digest  text        not null,
    input_digest      text        not null,
    live_output       jsonb       not null,
    candidate_output  jsonb,
    candidate_error   text,
    agree             boolean     not null,
    fuel_used         bigint      not null,
    duration_us       bigint      not null,
    created_at        timestamptz not null default now(),
    primary key (payment_id, step),
    check ((candidate_output is null) <> (candidate_error is null))
);
create index shadow_calls_created_idx on payrail.shadow_calls (created_at);
