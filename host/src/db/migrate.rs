//! Schema migrations: numbered SQL files from `migrations/`, compiled into
//! the binary, applied in order, each in its own transaction, and recorded
//! in `payrail.schema_migrations` with a checksum.
//!
//! Safe to run twice (applied versions are skipped) and from two processes
//! at once: the runner holds a session-level advisory lock of its own
//! (`locks::migrate_key`) for the whole run; the second runner waits, then
//! finds nothing left to do.
//!
//! On a live ledger (docs/migrations.md): every migration runs under a
//! `lock_timeout` ([`MigrateSettings`]). A statement that cannot get its
//! lock in time (a long transaction holds the table) gives up, the
//! migration rolls back, and it is tried again after a pause, instead of
//! waiting in the lock queue where every payment behind it would wait too.
//! A file whose first line is `-- payrail:no-transaction` runs statement
//! by statement outside a transaction (what `create index concurrently`
//! needs); each of its statements must be safe to run again.

use crate::error::{Error, Result};
use crate::locks;
use sha2::{Digest, Sha256};
use std::time::Duration;
use tokio_postgres::Client;

/// The first line of a migration that must run outside a transaction.
pub const NO_TRANSACTION: &str = "-- payrail:no-transaction";

/// How the runner treats the locks a migration needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigrateSettings {
    /// Longest one statement waits for a lock before the migration backs
    /// off (payments queued behind it wait at most this long).
    pub lock_timeout_ms: u64,
    /// Tries of one migration (or one statement of a no-transaction
    /// migration) before the run fails with `migration_lock_busy`.
    pub max_attempts: u32,
    /// Pause after the first failed try; doubles per try up to
    /// [`MAX_RETRY_PAUSE_MS`].
    pub retry_pause_ms: u64,
}

/// Longest pause between two tries.
pub const MAX_RETRY_PAUSE_MS: u64 = 5_000;

impl Default for MigrateSettings {
    fn default() -> Self {
        MigrateSettings {
            lock_timeout_ms: 2_000,
            max_attempts: 60,
            retry_pause_ms: 200,
        }
    }
}

impl MigrateSettings {
    fn pause(&self, attempt: u32) -> Duration {
        let ms = self
            .retry_pause_ms
            .saturating_mul(1u64 << attempt.min(16))
            .min(MAX_RETRY_PAUSE_MS);
        Duration::from_millis(ms)
    }
}

/// One migration file.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, in order. Add new files here; never edit an applied one
/// (the checksum check refuses a changed file).
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sql: include_str!("../../../migrations/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "tenants_api_keys",
        sql: include_str!("../../../migrations/0002_tenants_api_keys.sql"),
    },
    Migration {
        version: 3,
        name: "outbox_relay_holds",
        sql: include_str!("../../../migrations/0003_outbox_relay_holds.sql"),
    },
    Migration {
        version: 4,
        name: "plugin_platform",
        sql: include_str!("../../../migrations/0004_plugin_platform.sql"),
    },
    Migration {
        version: 5,
        name: "holds",
        sql: include_str!("../../../migrations/0005_holds.sql"),
    },
    Migration {
        version: 6,
        name: "entries_checked_by_audit",
        sql: include_str!("../../../migrations/0006_entries_checked_by_audit.sql"),
    },
    Migration {
        version: 7,
        name: "fewer_indexes_byte_order",
        sql: include_str!("../../../migrations/0007_fewer_indexes_byte_order.sql"),
    },
    Migration {
        version: 8,
        name: "credit_shards",
        sql: include_str!("../../../migrations/0008_credit_shards.sql"),
    },
    Migration {
        version: 9,
        name: "outbox_timers_index",
        sql: include_str!("../../../migrations/0009_outbox_timers_index.sql"),
    },
    Migration {
        version: 10,
        name: "hot_updates_fewer_indexes",
        sql: include_str!("../../../migrations/0010_hot_updates_fewer_indexes.sql"),
    },
    Migration {
        version: 11,
        name: "compact_journal_events_responses",
        sql: include_str!("../../../migrations/0011_compact_journal_events_responses.sql"),
    },
    Migration {
        version: 12,
        name: "time_ordered_payment_ids",
        sql: include_str!("../../../migrations/0012_time_ordered_payment_ids.sql"),
    },
    Migration {
        version: 13,
        name: "account_opened_events",
        sql: include_str!("../../../migrations/0013_account_opened_events.sql"),
    },
    Migration {
        version: 14,
        name: "plugin_signatures",
        sql: include_str!("../../../migrations/0014_plugin_signatures.sql"),
    },
    Migration {
        version: 15,
        name: "account_opened_index",
        sql: include_str!("../../../migrations/0015_account_opened_index.sql"),
    },
    Migration {
        version: 16,
        name: "account_lock_fences",
        sql: include_str!("../../../migrations/0016_account_lock_fences.sql"),
    },
    Migration {
        version: 17,
        name: "outbox_traceparent",
        sql: include_str!("../../../migrations/0017_outbox_traceparent.sql"),
    },
    Migration {
        version: 18,
        name: "admin_audit_key_expiry",
        sql: include_str!("../../../migrations/0018_admin_audit_key_expiry.sql"),
    },
    Migration {
        version: 19,
        name: "list_indexes",
        sql: include_str!("../../../migrations/0019_list_indexes.sql"),
    },
];

/// The newest schema version this binary knows.
pub fn latest_version() -> i32 {
    MIGRATIONS.last().map(|m| m.version).unwrap_or(0)
}

/// The SHA-256 of a migration's text, as recorded when it is applied.
pub fn checksum(sql: &str) -> String {
    hex::encode(Sha256::digest(sql.as_bytes()))
}

/// Applies every pending migration; returns the versions it applied.
pub async fn migrate(client: &mut Client) -> Result<Vec<i32>> {
    migrate_to(client, latest_version()).await
}

/// Applies the pending migrations up to and including `version`, as
/// [`migrate`] does: for testing an upgrade from an older schema (build
/// version N - 1, write to it, then migrate). Returns the versions applied.
pub async fn migrate_to(client: &mut Client, version: i32) -> Result<Vec<i32>> {
    migrate_with(client, MIGRATIONS, version, &MigrateSettings::default()).await
}

/// Applies the pending migrations of `list` up to `version` under
/// `settings`; returns the versions applied.
pub async fn migrate_with(
    client: &mut Client,
    list: &[Migration],
    version: i32,
    settings: &MigrateSettings,
) -> Result<Vec<i32>> {
    assert!(
        list.windows(2).all(|w| w[0].version < w[1].version),
        "migrations are listed in ascending version order"
    );
    assert!(settings.max_attempts >= 1 && settings.lock_timeout_ms >= 1);
    // Polled, not waited for: a `create index concurrently` of the runner
    // holding the lock waits for every open transaction, a statement
    // blocked in pg_advisory_lock included, and Postgres would end one of
    // the two as a deadlock.
    while !client
        .query_one("select pg_try_advisory_lock($1)", &[&locks::migrate_key()])
        .await?
        .get::<_, bool>(0)
    {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let result = apply_pending(client, list, version, settings).await;
    // Always release, even on failure; closing the session would too.
    client
        .execute("select pg_advisory_unlock($1)", &[&locks::migrate_key()])
        .await?;
    result
}

async fn ensure_table(client: &Client) -> Result<()> {
    client
        .batch_execute(
            "create schema if not exists payrail;
             create table if not exists payrail.schema_migrations (
                 version    integer     primary key,
                 name       text        not null,
                 checksum   text        not null,
                 applied_at timestamptz not null default now())",
        )
        .await?;
    Ok(())
}

/// The versions recorded as applied, with their checksums.
async fn applied(client: &Client) -> Result<Vec<(i32, String)>> {
    Ok(client
        .query(
            "select version, checksum from payrail.schema_migrations",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

async fn apply_pending(
    client: &mut Client,
    list: &[Migration],
    up_to: i32,
    settings: &MigrateSettings,
) -> Result<Vec<i32>> {
    ensure_table(client).await?;
    let applied = applied(client).await?;
    let mut done = Vec::new();
    for m in list.iter().take_while(|m| m.version <= up_to) {
        let sum = checksum(m.sql);
        if let Some((_, old)) = applied.iter().find(|(v, _)| *v == m.version) {
            if *old != sum {
                return Err(Error::Migration(format!(
                    "migration {} ({}) was changed after it was applied; restore the original file and add a new migration instead",
                    m.version, m.name
                )));
            }
            continue;
        }
        if m.transactional() {
            apply_in_transaction(client, m, &sum, settings).await?;
        } else {
            apply_statements(client, m, &sum, settings).await?;
        }
        done.push(m.version);
    }
    if let Some(max) = applied.iter().map(|(v, _)| *v).max()
        && max > latest_version()
    {
        // A newer release migrated first (docs/migrations.md, "Upgrading
        // hosts"): its migrations keep this release's hosts working.
        tracing::warn!(
            schema = max,
            binary = latest_version(),
            "the database schema is newer than this binary's; finish rolling out the new release"
        );
    }
    Ok(done)
}

fn lock_busy(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE)
}

fn failed(m: &Migration, e: tokio_postgres::Error) -> Error {
    Error::Migration(format!("migration {} ({}) failed: {e}", m.version, m.name))
}

fn gave_up(m: &Migration, settings: &MigrateSettings) -> Error {
    Error::MigrationLockBusy(format!(
        "migration {} ({}) could not get its locks within lock_timeout_ms = {} in {} tries: \
         a long transaction holds the table; end it or run again later",
        m.version, m.name, settings.lock_timeout_ms, settings.max_attempts
    ))
}

/// One migration, all or nothing; tried again when a lock is busy.
async fn apply_in_transaction(
    client: &mut Client,
    m: &Migration,
    sum: &str,
    settings: &MigrateSettings,
) -> Result<()> {
    let set_timeout = format!("set local lock_timeout = '{}ms'", settings.lock_timeout_ms);
    for attempt in 0..settings.max_attempts {
        let tx = client.transaction().await?;
        tx.batch_execute(&set_timeout).await?;
        match tx.batch_execute(m.sql).await {
            Ok(()) => {}
            Err(e) if lock_busy(&e) => {
                drop(tx);
                tracing::warn!(
                    version = m.version,
                    attempt,
                    "migration: a lock is busy; backing off"
                );
                tokio::time::sleep(settings.pause(attempt)).await;
                continue;
            }
            Err(e) => return Err(failed(m, e)),
        }
        record(&tx, m, sum).await?;
        tx.commit().await?;
        return Ok(());
    }
    Err(gave_up(m, settings))
}

/// A `-- payrail:no-transaction` migration: each statement on its own,
/// each tried again when a lock is busy; recorded once all have run.
async fn apply_statements(
    client: &mut Client,
    m: &Migration,
    sum: &str,
    settings: &MigrateSettings,
) -> Result<()> {
    client
        .batch_execute(&format!(
            "set lock_timeout = '{}ms'",
            settings.lock_timeout_ms
        ))
        .await?;
    let result = run_statements(client, m, settings).await;
    client.batch_execute("reset lock_timeout").await?;
    result?;
    let tx = client.transaction().await?;
    record(&tx, m, sum).await?;
    tx.commit().await?;
    Ok(())
}

async fn run_statements(client: &Client, m: &Migration, settings: &MigrateSettings) -> Result<()> {
    for statement in split_statements(m.sql) {
        let mut attempt = 0;
        loop {
            match client.batch_execute(statement).await {
                Ok(()) => break,
                Err(e) if lock_busy(&e) && attempt + 1 < settings.max_attempts => {
                    tracing::warn!(
                        version = m.version,
                        attempt,
                        "migration: a lock is busy; backing off"
                    );
                    tokio::time::sleep(settings.pause(attempt)).await;
                    attempt += 1;
                }
                Err(e) if lock_busy(&e) => return Err(gave_up(m, settings)),
                Err(e) => return Err(failed(m, e)),
            }
        }
    }
    Ok(())
}

async fn record(tx: &tokio_postgres::Transaction<'_>, m: &Migration, sum: &str) -> Result<()> {
    tx.execute(
        "insert into payrail.schema_migrations (version, name, checksum) values ($1, $2, $3)",
        &[&m.version, &m.name, &sum],
    )
    .await?;
    Ok(())
}

/// Whether every migration this binary knows is applied (for readiness).
/// A newer schema counts: migrations run before the hosts are rolled, and
/// each keeps the release before it working (docs/migrations.md).
pub async fn is_current(client: &Client) -> Result<bool> {
    let row = client
        .query_opt("select max(version) from payrail.schema_migrations", &[])
        .await;
    match row {
        Ok(Some(r)) => Ok(r
            .get::<_, Option<i32>>(0)
            .is_some_and(|v| v >= latest_version())),
        Ok(None) => Ok(false),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

impl Migration {
    /// Whether it runs in one transaction (all files but those that start
    /// with [`NO_TRANSACTION`]).
    pub fn transactional(&self) -> bool {
        !self.sql.trim_start().starts_with(NO_TRANSACTION)
    }

    /// What each of its statements locks, in order.
    pub fn lock_plan(&self) -> Vec<StepLock> {
        split_statements(self.sql)
            .into_iter()
            .map(StepLock::of)
            .collect()
    }
}

/// How much of the ledger a statement stops while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Impact {
    /// Touches no existing table's data (a new table, a function).
    None,
    /// Locks rows it changes (an update or insert): writes to those rows wait.
    Rows,
    /// An exclusive lock held for an instant (a catalog change only).
    Brief,
    /// Blocks writes to the table while it scans or builds (an index built
    /// without `concurrently`, a validated constraint).
    BlocksWrites,
    /// Blocks reads and writes while it rewrites the table (a column type
    /// change).
    Rewrite,
    /// Not recognized: read the SQL.
    Unknown,
}

/// One statement of a migration and the lock it takes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StepLock {
    /// The statement's first words.
    pub statement: String,
    /// The table it locks, when it names one.
    pub table: Option<String>,
    /// Postgres's lock mode on that table.
    pub mode: &'static str,
    pub impact: Impact,
}

/// Statement text folded for matching: lower case, comments dropped,
/// whitespace runs as one space.
fn fold(statement: &str) -> String {
    let no_comments: Vec<&str> = statement
        .lines()
        .map(|l| l.split("--").next().unwrap_or(""))
        .collect();
    no_comments
        .join(" ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// The word after `prefix` in `text` (a table name), if `prefix` is there.
fn word_after(text: &str, prefix: &str) -> Option<String> {
    let at = text.find(prefix)? + prefix.len();
    let rest = text[at..].trim_start();
    let rest = rest.strip_prefix("if not exists ").unwrap_or(rest);
    let rest = rest.strip_prefix("if exists ").unwrap_or(rest);
    let rest = rest.strip_prefix("only ").unwrap_or(rest);
    rest.split([' ', '(', ';'])
        .next()
        .filter(|w| !w.is_empty())
        .map(str::to_string)
}

impl StepLock {
    /// Classifies one statement by its shape (Postgres 15's lock table).
    pub fn of(statement: &str) -> StepLock {
        let s = fold(statement);
        let head: String = s.split(' ').take(6).collect::<Vec<_>>().join(" ");
        use Impact::{BlocksWrites, Brief, Rewrite, Rows, Unknown};
        let none = Impact::None;
        let (table, mode, impact) = if s.starts_with("create index concurrently")
            || s.starts_with("create unique index concurrently")
        {
            (word_after(&s, " on "), "SHARE UPDATE EXCLUSIVE", none)
        } else if s.starts_with("create index") || s.starts_with("create unique index") {
            (word_after(&s, " on "), "SHARE", BlocksWrites)
        } else if s.starts_with("drop index concurrently") {
            (None, "SHARE UPDATE EXCLUSIVE", none)
        } else if s.starts_with("drop index") || s.starts_with("drop table") {
            (None, "ACCESS EXCLUSIVE", Brief)
        } else if s.starts_with("alter table") {
            let table = word_after(&s, "alter table");
            let rewrite = s.contains(" type ") && s.contains("alter column");
            let validates = s.contains("add constraint")
                && (s.contains(" check") || s.contains("foreign key"))
                && !s.contains("not valid");
            let impact = if rewrite {
                Rewrite
            } else if validates || s.contains("validate constraint") || s.contains("set not null") {
                BlocksWrites
            } else {
                Brief
            };
            (table, "ACCESS EXCLUSIVE", impact)
        } else if s.starts_with("create trigger") || s.starts_with("drop trigger") {
            (word_after(&s, " on "), "SHARE ROW EXCLUSIVE", Brief)
        } else if s.starts_with("update ") {
            (word_after(&s, "update"), "ROW EXCLUSIVE", Rows)
        } else if s.starts_with("insert into") {
            (word_after(&s, "insert into"), "ROW EXCLUSIVE", Rows)
        } else if s.starts_with("delete from") {
            (word_after(&s, "delete from"), "ROW EXCLUSIVE", Rows)
        } else if [
            "create table",
            "create schema",
            "create or replace function",
            "create function",
            "create view",
            "create or replace view",
            "drop view",
            "drop function",
            "grant ",
            "revoke ",
            "create type",
            "create sequence",
            "comment on",
            "set ",
            "select ",
        ]
        .iter()
        .any(|p| s.starts_with(p))
        {
            (None, "-", none)
        } else {
            (None, "?", Unknown)
        };
        StepLock {
            statement: head,
            table,
            mode,
            impact,
        }
    }
}

/// The statements of a SQL file, split at `;` outside quotes, comments and
/// dollar-quoted bodies; empty statements dropped.
pub fn split_statements(sql: &str) -> Vec<&str> {
    let bytes = sql.as_bytes();
    let (mut out, mut start, mut i) = (Vec::new(), 0, 0);
    while i < bytes.len() {
        match bytes[i] {
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                i = sql[i..].find('\n').map_or(bytes.len(), |n| i + n);
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i = sql[i + 2..]
                    .find("*/")
                    .map_or(bytes.len(), |n| i + 2 + n + 2);
            }
            b'\'' | b'"' => {
                let q = bytes[i] as char;
                i = sql[i + 1..].find(q).map_or(bytes.len(), |n| i + 1 + n + 1);
            }
            b'$' => {
                // $tag$ ... $tag$ (the tag may be empty)
                let tag_end = sql[i + 1..]
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .map(|n| i + 1 + n);
                match tag_end {
                    Some(e) if bytes[e] == b'$' => {
                        let tag = &sql[i..=e];
                        i = sql[e + 1..]
                            .find(tag)
                            .map_or(bytes.len(), |n| e + 1 + n + tag.len());
                    }
                    _ => i += 1,
                }
            }
            b';' => {
                out.push(&sql[start..i]);
                i += 1;
                start = i;
            }
            _ => i += 1,
        }
    }
    out.push(&sql[start..]);
    out.into_iter()
        .filter(|s| !fold(s).is_empty())
        .map(str::trim)
        .collect()
}

/// One migration as `payrail migrate --status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Status {
    pub version: i32,
    pub name: &'static str,
    /// When it was applied; `None`: pending.
    pub applied_at: Option<String>,
    /// This binary's checksum of the file.
    pub checksum: String,
    /// Whether the recorded checksum differs (the file was edited after
    /// it was applied: `payrail migrate` refuses to run).
    pub changed: bool,
    pub transactional: bool,
    /// For a pending migration: what each statement locks.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub locks: Vec<StepLock>,
}

/// Every migration this binary knows, applied or pending, without
/// changing anything (the table of applied versions may not exist yet).
pub async fn status(client: &Client) -> Result<Vec<Status>> {
    let rows = match client
        .query(
            "select version, checksum, applied_at::text from payrail.schema_migrations",
            &[],
        )
        .await
    {
        Ok(rows) => rows,
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => vec![],
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::INVALID_SCHEMA_NAME) => vec![],
        Err(e) => return Err(e.into()),
    };
    let recorded: Vec<(i32, String, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    Ok(MIGRATIONS
        .iter()
        .map(|m| {
            let sum = checksum(m.sql);
            let found = recorded.iter().find(|(v, _, _)| *v == m.version);
            Status {
                version: m.version,
                name: m.name,
                applied_at: found.map(|(_, _, at)| at.clone()),
                changed: found.is_some_and(|(_, old, _)| *old != sum),
                checksum: sum,
                transactional: m.transactional(),
                locks: if found.is_some() {
                    vec![]
                } else {
                    m.lock_plan()
                },
            }
        })
        .collect())
}

/// The SQL `payrail migrate` would run for the pending migrations, as one
/// script with the runner's own statements (lock timeout, transaction,
/// record) written out.
pub async fn dry_run(client: &Client, settings: &MigrateSettings) -> Result<String> {
    let mut out = String::new();
    for s in status(client)
        .await?
        .iter()
        .filter(|s| s.applied_at.is_none())
    {
        let m = MIGRATIONS
            .iter()
            .find(|m| m.version == s.version)
            .expect("status lists known migrations");
        out.push_str(&format!("-- migration {} ({})\n", m.version, m.name));
        let record = format!(
            "insert into payrail.schema_migrations (version, name, checksum) values ({}, '{}', '{}');\n",
            m.version, m.name, s.checksum
        );
        if m.transactional() {
            out.push_str(&format!(
                "begin;\nset local lock_timeout = '{}ms';\n{}\n{record}commit;\n\n",
                settings.lock_timeout_ms,
                m.sql.trim_end()
            ));
        } else {
            out.push_str(&format!(
                "set lock_timeout = '{}ms';\n{}\nreset lock_timeout;\n{record}\n",
                settings.lock_timeout_ms,
                m.sql.trim_end()
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_split_outside_quotes_comments_and_dollar_bodies() {
        let sql = "-- a; comment\ncreate table t (a text default ';');\n\
                   create function f() returns int as $body$ select 1; $body$ language sql;\n\
                   /* x; y */ update t set a = 'b;c';\n";
        let parts = split_statements(sql);
        assert_eq!(parts.len(), 3, "{parts:?}");
        assert!(parts[1].ends_with("language sql"), "{}", parts[1]);
        assert!(parts[2].contains("'b;c'"));
    }

    #[test]
    fn each_statement_shape_gets_its_lock() {
        let cases = [
            (
                "alter table payrail.a alter column x type json using x::json",
                Impact::Rewrite,
            ),
            (
                "alter table payrail.a add column f bigint not null default 0",
                Impact::Brief,
            ),
            (
                "alter table payrail.a add constraint c check (x > 0)",
                Impact::BlocksWrites,
            ),
            (
                "alter table payrail.a add constraint c check (x > 0) not valid",
                Impact::Brief,
            ),
            ("create index i on payrail.a (x)", Impact::BlocksWrites),
            (
                "create index concurrently if not exists i on payrail.a (x)",
                Impact::None,
            ),
            ("update payrail.a set x = 1 where id < 100", Impact::Rows),
            ("create table payrail.b (x int)", Impact::None),
            ("vacuum payrail.a", Impact::Unknown),
        ];
        for (sql, want) in cases {
            assert_eq!(StepLock::of(sql).impact, want, "{sql}");
        }
        assert_eq!(
            StepLock::of("create index i on payrail.accounts (x)")
                .table
                .as_deref(),
            Some("payrail.accounts")
        );
        // every shipped migration's statements are recognized
        let unknown: Vec<String> = MIGRATIONS
            .iter()
            .flat_map(|m| m.lock_plan().into_iter().map(move |s| (m.version, s)))
            .filter(|(_, s)| s.impact == Impact::Unknown)
            .map(|(v, s)| format!("{v}: {}", s.statement))
            .collect();
        assert!(unknown.is_empty(), "unclassified:\n{}", unknown.join("\n"));
    }
}
