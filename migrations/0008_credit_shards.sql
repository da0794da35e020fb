-- payrail schema v8: credits to a hot account go to shard rows.
--
-- A fee account credited by every payment serialized every batch on its one
-- row: each batch's balance update waited for the previous batch's commit
-- (docs/performance.md: a second batch worker gave hot_fee nothing). A batch
-- now adds its credits to accounts it did not lock (accounts that only a
-- plugin names, only credited) to one of CREDIT_SHARDS rows per account,
-- chosen by its worker, so batches of different workers never wait on each
-- other there. See docs/locking.md, "Credit shards".
--
-- An account's balance is `accounts.balance` plus its shard rows. Shards only
-- ever grow, so a debit checked against that sum stays covered; the debit
-- folds the shards into the account row (deleting them) in the same
-- statement that applies it, under the account's row lock. The audit checks
-- the sum against the entries (`balance_equals_entries`) and that every
-- shard names an account (`credit_shard_account_exists`).
create table payrail.credit_shards (
    tenant  text     collate "C" not null,
    account text     collate "C" not null,
    shard   smallint not null check (shard >= 0 and shard < 64),
    amount  bigint   not null check (amount >= 0),
    primary key (tenant, account, shard)
);

-- Balances as users see them (the row plus its shards), for operators'
-- queries and the audit.
create view payrail.account_balances as
select a.tenant, a.id, a.currency,
       a.balance + coalesce((select sum(s.amount) from payrail.credit_shards s
                             where s.tenant = a.tenant and s.account = a.id), 0)::bigint
         as balance,
       a.held, a.allow_negative, a.is_equity
from payrail.accounts a;
