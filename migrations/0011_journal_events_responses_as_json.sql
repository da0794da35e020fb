-- payrail schema v11: the journal, the outbox and the stored responses keep
-- their JSON as written (`json`) instead of decomposed (`jsonb`).
--
-- The host writes these values once and reads them back whole (replay, the
-- relay, an idempotent retry); nothing queries inside them on the payment
-- path. As `jsonb` Postgres parsed every value into its binary form on
-- insert, about a tenth of its CPU under `payrail bench`, and stored it
-- 15-20% larger than the compact text the host sends (about 3 kB of `jsonb`
-- per hot_fee payment). `json` only checks that the text is JSON, stores it
-- verbatim and keeps the operators operators use (`->`, `->>`); it has no
-- equality operator, which no query here needs.
--
-- Changing a column's type rewrites its table under an exclusive lock: on a
-- large journal or outbox, run `payrail migrate` in a maintenance window
-- (README, "Upgrading to schema 11").
alter table payrail.plugin_calls
    alter column input type json using input::json,
    alter column output type json using output::json;
alter table payrail.outbox
    alter column payload type json using payload::json;
alter table payrail.idempotency_keys
    alter column response type json using response::json;
