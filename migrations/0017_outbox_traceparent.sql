-- payrail schema v17: the W3C traceparent of the request that caused an
-- event, carried into its envelope so a consumer's trace joins the
-- payment's (docs/events.md, "Envelope"). Null: no trace (tracing off, or
-- an event no request caused). A nullable column without a default: a
-- catalog change only, the lock held for an instant (docs/migrations.md).
alter table payrail.outbox add column traceparent text;
