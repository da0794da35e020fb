-- payrail schema v5: two-phase payments (authorize, then capture or void,
-- or expiry). A hold reserves funds on the payment's source: the account's
-- `held` rises by the hold's amount and `available = balance - held` drops,
-- while `balance` (the roll-up of entries) does not change until capture.
-- A hold leaves 'authorized' exactly once; the resolving transaction
-- row-locks it (FOR UPDATE) under the parties' advisory locks.

alter table payrail.accounts
    add column held bigint not null default 0,
    add constraint accounts_held_check check (held >= 0),
    -- last line of defence: holds never reserve money an account lacks
    add constraint accounts_available_check check (allow_negative or balance >= held);

alter table payrail.payments drop constraint payments_status_check;
alter table payrail.payments add constraint payments_status_check
    check (status in ('approved', 'declined', 'authorized', 'captured', 'voided', 'expired'));

create table payrail.holds (
    -- deferred: the payment row and its hold are written in one pipelined
    -- flight whose statement order is not guaranteed
    payment_id      uuid        primary key
                    references payrail.payments (id) deferrable initially deferred,
    tenant          text        not null,
    account         text        not null,
    destination     text        not null,
    currency        text        not null,
    amount          bigint      not null check (amount > 0),
    captured_amount bigint,
    state           text        not null default 'authorized'
                    check (state in ('authorized', 'captured', 'voided', 'expired')),
    expires_at      timestamptz not null,
    created_at      timestamptz not null default now(),
    resolved_at     timestamptz,
    -- the idempotency key of the capture/void, or 'expiry'
    resolved_by     text,
    foreign key (tenant, account) references payrail.accounts (tenant, id),
    check ((state = 'captured') = (captured_amount is not null)),
    check (captured_amount is null or (captured_amount > 0 and captured_amount <= amount)),
    check ((state = 'authorized') = (resolved_at is null)),
    check ((state = 'authorized') = (resolved_by is null))
);
-- held = sum of active holds per account (the audit's check).
create index holds_active_idx on payrail.holds (tenant, account) where state = 'authorized';
