-- payrail schema v11: fewer bytes per payment in the journal, the outbox and
-- the stored responses.
--
-- JSON kept as written. The journal's input and output, the outbox payload
-- and the stored response become `json` instead of `jsonb`. The host writes
-- these values once and reads them back whole (replay, the relay, an
-- idempotent retry); nothing queries inside them on the payment path. As
-- `jsonb` Postgres parsed every value into its binary form on insert, about
-- a tenth of its CPU under `payrail bench`, and stored it 15-20% larger than
-- the compact text the host sends. `json` only checks that the text is
-- JSON, stores it verbatim and keeps the operators operators use (`->`,
-- `->>`); it has no equality operator, which no query here needs.
--
-- Digests as bytes. The journal's call key, plugin digest and input digest
-- are sha256 values: 32 bytes as `bytea`, 65 as hex `text`. The call key is
-- in the journal's primary key, whose inserts land at random positions (the
-- payment id leads it): a third narrower index means fewer pages to dirty,
-- and to write in full after each checkpoint. The host still speaks hex:
-- it converts with decode()/encode() in its statements.
--
-- Changing a column's type rewrites its table under an exclusive lock: on a
-- large journal or outbox, run `payrail migrate` in a maintenance window
-- (README, "Upgrading to schema 11").
alter table payrail.plugin_calls
    alter column input type json using input::json,
    alter column output type json using output::json,
    alter column call_key type bytea using decode(call_key, 'hex'),
    alter column digest type bytea using decode(digest, 'hex'),
    alter column input_digest type bytea using decode(input_digest, 'hex'),
    add constraint plugin_calls_sha256_check check (
        octet_length(call_key) = 32 and octet_length(digest) = 32
        and octet_length(input_digest) = 32);
alter table payrail.outbox
    alter column payload type json using payload::json;
alter table payrail.idempotency_keys
    alter column response type json using response::json;
