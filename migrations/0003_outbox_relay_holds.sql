-- payrail schema v3: the outbox relay's leases and delivery bookkeeping.
--
-- A relay claims pending events with FOR UPDATE SKIP LOCKED and stamps a
-- lease (owner + expiry) on them; an event whose lease expired without an
-- acknowledgement (its host died) is claimable again. `attempts` counts
-- claims; after the configured maximum a failing event moves to 'dead'
-- with its last error.
alter table payrail.outbox
    add column lease_owner     text,
    add column lease_until     timestamptz,
    add column last_attempt_at timestamptz;

-- Per-key order: "is an earlier event of this key still undelivered?"
create index outbox_key_undelivered_idx on payrail.outbox (key, id)
    where state <> 'delivered';

-- `payrail outbox dead-letters`.
create index outbox_dead_idx on payrail.outbox (id) where state = 'dead';
