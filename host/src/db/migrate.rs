//! Schema migrations: numbered SQL files from `migrations/`, compiled into
//! the binary, applied in order, each in its own transaction, and recorded
//! in `payrail.schema_migrations` with a checksum.
//!
//! Safe to run twice (applied versions are skipped) and from two processes
//! at once: the runner holds a session-level advisory lock of its own
//! (`locks::migrate_key`) for the whole run; the second runner waits, then
//! finds nothing left to do.

use crate::error::{Error, Result};
use crate::locks;
use sha2::{Digest, Sha256};
use tokio_postgres::Client;

/// One migration file.
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
];

/// The newest schema version this binary knows.
pub fn latest_version() -> i32 {
    MIGRATIONS.last().map(|m| m.version).unwrap_or(0)
}

fn checksum(sql: &str) -> String {
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
    assert!(
        MIGRATIONS.windows(2).all(|w| w[0].version < w[1].version),
        "migrations are listed in ascending version order"
    );
    client
        .execute("select pg_advisory_lock($1)", &[&locks::migrate_key()])
        .await?;
    let result = apply_pending(client, version).await;
    // Always release, even on failure; closing the session would too.
    client
        .execute("select pg_advisory_unlock($1)", &[&locks::migrate_key()])
        .await?;
    result
}

async fn apply_pending(client: &mut Client, up_to: i32) -> Result<Vec<i32>> {
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
    let applied: Vec<(i32, String)> = client
        .query(
            "select version, checksum from payrail.schema_migrations",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut done = Vec::new();
    for m in MIGRATIONS.iter().take_while(|m| m.version <= up_to) {
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
        let tx = client.transaction().await?;
        tx.batch_execute(m.sql).await.map_err(|e| {
            Error::Migration(format!("migration {} ({}) failed: {e}", m.version, m.name))
        })?;
        tx.execute(
            "insert into payrail.schema_migrations (version, name, checksum) values ($1, $2, $3)",
            &[&m.version, &m.name, &sum],
        )
        .await?;
        tx.commit().await?;
        done.push(m.version);
    }
    if let Some(max) = applied.iter().map(|(v, _)| *v).max()
        && max > latest_version()
    {
        return Err(Error::Migration(format!(
            "the database is at schema version {max}, newer than this binary's {}; upgrade payrail",
            latest_version()
        )));
    }
    Ok(done)
}

/// Whether every migration this binary knows is applied (for readiness).
pub async fn is_current(client: &Client) -> Result<bool> {
    let row = client
        .query_opt("select max(version) from payrail.schema_migrations", &[])
        .await;
    match row {
        Ok(Some(r)) => Ok(r.get::<_, Option<i32>>(0) == Some(latest_version())),
        Ok(None) => Ok(false),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => Ok(false),
        Err(e) => Err(e.into()),
    }
}
