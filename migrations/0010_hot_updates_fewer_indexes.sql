-- payrail schema v10: room on each accounts page for balance updates, and
-- one random-order index less per event.
--
-- Every payment updates two account rows. An update stays HOT (no new
-- index entry, the old version pruned in place) only when the row's page
-- has room for the new version; at the default fillfactor (100) 30% of the
-- updates under `payrail bench` were not, and each of those added an
-- entry to accounts_pkey that every later lookup of the account walks past
-- until a vacuum. At 50 a page keeps half its space for new versions (the
-- table takes twice the space: about 35 MB per 100k accounts).
--
-- This applies to pages written from now on. To give an existing table the
-- room at once, rewrite it in a maintenance window:
-- `vacuum full payrail.accounts` (takes an exclusive lock).
alter table payrail.accounts set (fillfactor = 50);

-- An event's id is a hash of its payment's id and its index in the payment
-- (`processor::event_id`), and a payment's events are written once, in the
-- transaction that inserts the payment row, whose primary key refuses a
-- second one: the id is unique by construction. Its unique index served no
-- query and cost a b-tree insert at a random position per event (and a
-- full-page image per leaf after each checkpoint). The audit checks the
-- uniqueness instead (`outbox_event_id_unique`).
alter table payrail.outbox drop constraint outbox_event_id_key;
