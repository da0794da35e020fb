-- payrail schema v16: the fencing token of the last lock holder that wrote
-- each account (docs/locking.md, "Lock services and fencing"). A write
-- under an external lock (Redis, lock files) carries its token and is
-- refused when the account holds a newer one: its lock was lost. 0: never
-- written under an external lock. A constant default: no table rewrite.
alter table payrail.accounts add column lock_fence bigint not null default 0;
