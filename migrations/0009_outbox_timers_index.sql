-- payrail schema v9: due hold timers without walking every pending event.
--
-- A relay without sinks (`payrail serve` with none configured) only runs
-- `hold.expire` timers. Its claim walked the pending index in order and
-- filtered on the topic, so every poll read every pending event: 17 ms a
-- poll at 50k undelivered payment events under `payrail bench`, growing with
-- the backlog. Only hold timers enter this index, so payments do not pay
-- for it.
create index outbox_timers_pending_idx on payrail.outbox (available_at, id)
    where state = 'pending' and topic = 'hold.expire';
