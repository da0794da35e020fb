//! WAL per payment by table (`pg_walinspect`, Postgres 15+, superuser), and
//! the server's commit flush latency. The WAL per payment of a run
//! (`writes.rs`) says how much; this says which table writes it, so a
//! change of schema or of batching can be aimed at the right rows.

use payrail::error::Result;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The WAL read per run, from the run's first byte: a 10 s run writes
/// hundreds of MB, which `pg_get_wal_records_info` would take seconds to
/// decode; the first 16 MiB (some thousands of payments) give the shares.
pub const WAL_WINDOW_BYTES: u64 = 16 * 1024 * 1024;

/// The columns of the report's table, in order; a relation of another name
/// counts as `other`, and so do records of no relation (commits).
pub const TABLES: [&str; 8] = [
    "payments",
    "entries",
    "plugin_calls",
    "idempotency_keys",
    "outbox",
    "accounts",
    "credit_shards",
    "other",
];

/// The column of relation (or index-owning table) `name`: the peer's
/// `idempotency` table holds what payrail's `idempotency_keys` does.
pub fn column(name: &str) -> &'static str {
    let name = if name == "idempotency" {
        "idempotency_keys"
    } else {
        name
    };
    TABLES
        .iter()
        .find(|t| **t == name)
        .copied()
        .unwrap_or("other")
}

/// WAL per payment of one run by table, bytes.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct WalByTable {
    /// WAL bytes decoded (from the run's start; at most
    /// [`WAL_WINDOW_BYTES`]).
    pub window_bytes: u64,
    /// Bytes per payment by [`TABLES`] column (indexes under their table),
    /// the window's shares applied to the run's WAL per payment.
    pub tables: BTreeMap<String, f64>,
}

/// The relfilenode and database oid of a `block_ref` of
/// `pg_get_wal_records_info`: `blkref #0: rel 1663/16384/16385 fork main blk
/// 0` (the first block of the record: a record that touches two relations
/// is charged to its first).
pub fn parse_block_ref(block_ref: &str) -> Option<(u32, u32)> {
    let rest = &block_ref[block_ref.find("rel ")? + 4..];
    let spec = rest.split_whitespace().next()?;
    let mut parts = spec.split('/');
    let _tablespace: u32 = parts.next()?.parse().ok()?;
    let database: u32 = parts.next()?.parse().ok()?;
    let node: u32 = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some((database, node))
}

/// Spreads `wal_bytes_per_payment` over the columns by their shares of the
/// window's bytes.
pub fn shares(
    by_column: &BTreeMap<String, u64>,
    wal_bytes_per_payment: f64,
) -> BTreeMap<String, f64> {
    let total: u64 = by_column.values().sum();
    by_column
        .iter()
        .filter(|_| total > 0)
        .map(|(c, &b)| (c.clone(), b as f64 / total as f64 * wal_bytes_per_payment))
        .collect()
}

/// The current WAL position, bytes.
pub async fn current_lsn(c: &tokio_postgres::Client) -> Result<u64> {
    let row = c
        .query_one("select (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint", &[])
        .await?;
    Ok(row.get::<_, i64>(0).max(0) as u64)
}

fn lsn_text(bytes: u64) -> String {
    format!("{:X}/{:X}", bytes >> 32, bytes & 0xffff_ffff)
}

/// WAL bytes by column between `start` and `end` (bounded by
/// [`WAL_WINDOW_BYTES`]), read on a connection to the run's database
/// `c` (pg_class maps its relfilenodes); the window's size besides.
pub async fn by_column(
    c: &tokio_postgres::Client,
    start: u64,
    end: u64,
) -> Result<(BTreeMap<String, u64>, u64)> {
    c.batch_execute("create extension if not exists pg_walinspect")
        .await?;
    let end = end.min(start.saturating_add(WAL_WINDOW_BYTES));
    // grouped by relation on the server: a window holds ~100k records
    let rows = c
        .query(
            "select substring(block_ref from 'rel [0-9]+/[0-9]+/[0-9]+'), sum(record_length)::bigint
               from pg_get_wal_records_info($1::text::pg_lsn, $2::text::pg_lsn)
              group by 1",
            &[&lsn_text(start), &lsn_text(end)],
        )
        .await?;
    let names = c
        .query(
            "select c.relfilenode::oid, coalesce(t.relname, c.relname)::text,
                    (select oid from pg_database where datname = current_database())
               from pg_class c
               left join pg_index i on i.indexrelid = c.oid
               left join pg_class t on t.oid = i.indrelid
              where c.relfilenode <> 0",
            &[],
        )
        .await?;
    let database = names.first().map(|r| r.get::<_, u32>(2));
    let name_of: BTreeMap<u32, String> = names.iter().map(|r| (r.get(0), r.get(1))).collect();
    let mut out = BTreeMap::new();
    for r in rows {
        let rel: Option<String> = r.get(0);
        let bytes = r.get::<_, Option<i64>>(1).unwrap_or(0).max(0) as u64;
        let col = rel
            .as_deref()
            .and_then(parse_block_ref)
            .filter(|(db, _)| Some(*db) == database)
            .and_then(|(_, node)| name_of.get(&node))
            .map_or("other", |n| column(n));
        *out.entry(col.to_string()).or_insert(0) += bytes;
    }
    Ok((out, end.saturating_sub(start)))
}

/// Tiny commits timed per setting of `synchronous_commit`.
pub const FLUSH_PROBES: usize = 200;

/// The server's commit flush latency, µs: the median of [`FLUSH_PROBES`]
/// one-row insert+commits with `synchronous_commit=on` minus the same with
/// it off, on a scratch table of `c`'s database (dropped after). What one
/// commit waits for the WAL to reach the disk: the peer pays it once per
/// payment, payrail once per batch.
pub async fn flush_latency_us(c: &tokio_postgres::Client) -> Result<f64> {
    c.batch_execute("create table if not exists bench_flush_probe(n bigint)")
        .await?;
    let mut medians = [0.0; 2];
    for (i, setting) in ["off", "on"].iter().enumerate() {
        c.batch_execute(&format!("set synchronous_commit = {setting}"))
            .await?;
        let mut us = Vec::with_capacity(FLUSH_PROBES);
        for n in 0..FLUSH_PROBES as i64 {
            let t = Instant::now();
            c.execute("insert into bench_flush_probe values ($1)", &[&n])
                .await?;
            us.push(t.elapsed());
        }
        medians[i] = median(&mut us).as_secs_f64() * 1e6;
    }
    c.batch_execute("reset synchronous_commit; drop table bench_flush_probe")
        .await?;
    Ok(medians[1] - medians[0])
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_first_relation_of_a_block_ref() {
        let b = "blkref #0: rel 1663/16384/16402 fork main blk 7; blkref #1: rel 1663/16384/16399 blk 2";
        assert_eq!(parse_block_ref(b), Some((16384, 16402)));
        assert_eq!(parse_block_ref("rel 1663/5/42"), Some((5, 42)));
        assert_eq!(parse_block_ref(""), None);
        assert_eq!(parse_block_ref("rel 1663/x/42"), None);
        assert_eq!(parse_block_ref("rel 1663/5"), None);
        assert_eq!(parse_block_ref("rel 1/2/3/4"), None);
        assert_eq!(parse_block_ref("rel 1/2/99999999999"), None);
    }

    #[test]
    fn relations_fall_into_columns() {
        assert_eq!(column("entries"), "entries");
        assert_eq!(column("idempotency"), "idempotency_keys");
        assert_eq!(column("pg_toast_1234"), "other");
    }

    #[test]
    fn the_windows_shares_spread_the_runs_wal() {
        let m: BTreeMap<String, u64> = [("entries".into(), 300), ("other".into(), 100)].into();
        let s = shares(&m, 1000.0);
        assert_eq!(s["entries"], 750.0);
        assert_eq!(s["other"], 250.0);
        assert!(shares(&BTreeMap::new(), 1000.0).is_empty());
        assert_eq!(lsn_text(0x1_0000_00AB), "1/AB");
    }
}
