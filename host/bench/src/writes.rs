//! What a run wrote on the server: WAL bytes (the whole server's, from
//! `pg_current_wal_lsn()`) and the growth of the run's database, per
//! payment. Both bound what a payment costs beyond CPU: the WAL is what
//! every commit flushes and every checkpoint follows, and the database's
//! growth is what must stay cached for inserts not to read pages.

use serde::Serialize;

/// Server counters read before and after a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    /// WAL position, bytes since 0/0.
    pub wal_bytes: i64,
    /// `pg_database_size` of the run's database, bytes.
    pub database_bytes: i64,
}

/// What one run wrote, per completed payment.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PerPayment {
    /// WAL bytes: server-wide, so anything else writing during the run
    /// counts too (nothing else runs during the bench).
    pub wal_bytes: f64,
    /// Growth of the database, bytes. Tables grow by whole pages, and
    /// pages freed by vacuum are reused: a run's number is an estimate.
    pub database_bytes: f64,
}

/// Reads the counters for `database` (from any database of the server).
/// `None` where the server does not let the bench read them.
pub async fn read(admin: &tokio_postgres::Client, database: &str) -> Option<Counters> {
    let row = admin
        .query_one(
            "select (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint, pg_database_size($1::text)",
            &[&database],
        )
        .await
        .ok()?;
    Some(Counters {
        wal_bytes: row.get(0),
        database_bytes: row.get(1),
    })
}

/// The writes between `before` and `after`, over `payments` payments.
/// `None` without payments or readings.
pub fn per_payment(
    before: Option<Counters>,
    after: Option<Counters>,
    payments: u64,
) -> Option<PerPayment> {
    let (b, a) = before.zip(after)?;
    if payments == 0 {
        return None;
    }
    let n = payments as f64;
    Some(PerPayment {
        wal_bytes: (a.wal_bytes - b.wal_bytes) as f64 / n,
        database_bytes: (a.database_bytes - b.database_bytes) as f64 / n,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn divides_the_difference_by_the_payments() {
        let b = Counters {
            wal_bytes: 1_000,
            database_bytes: 8_192,
        };
        let a = Counters {
            wal_bytes: 5_000,
            database_bytes: 16_384,
        };
        assert_eq!(
            per_payment(Some(b), Some(a), 4),
            Some(PerPayment {
                wal_bytes: 1_000.0,
                database_bytes: 2_048.0
            })
        );
        assert_eq!(per_payment(Some(b), Some(a), 0), None);
        assert_eq!(per_payment(None, Some(a), 4), None);
        assert_eq!(per_payment(Some(b), None, 4), None);
    }
}
