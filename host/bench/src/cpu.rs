//! The machine's CPU per payment, split by component: the Postgres
//! server, payrail's host, the plugin calls, the load generator and the
//! whole machine. A throughput ratio says who is faster; this says where
//! each side's CPU goes, on a machine where both share the same cores.

use crate::sys::{self, Proc};
use serde::Serialize;
use std::time::Duration;

/// CPU counters read before and after a run.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Snapshot {
    /// Busy time of every CPU (`/proc/stat`).
    pub machine: Option<Duration>,
    /// Every `postgres` process, exited backends included.
    pub postgres: Option<Duration>,
    /// This (the bench) process.
    pub bench: Option<Duration>,
    /// This process's ended children (the peer's script and its pgbench).
    pub bench_children: Option<Duration>,
}

impl Snapshot {
    /// Reads the counters now.
    pub fn take() -> Snapshot {
        Snapshot {
            machine: sys::machine_cpu_time(),
            postgres: sys::postgres_cpu_time(),
            bench: sys::cpu_time(Proc::Current),
            bench_children: sys::children_cpu_time(Proc::Current),
        }
    }
}

/// CPU per payment of one run, µs, by component. `None`: not read (not
/// Linux, or not applicable to the side).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct CpuSplit {
    /// The Postgres server's processes.
    pub postgres_us: Option<f64>,
    /// payrail's host: the `payrail serve` children (HTTP), or the bench
    /// process (in-process, where the load generator runs in it too: see
    /// `host_includes_load_generator`). `None` for the peer, whose host is
    /// Postgres.
    pub host_us: Option<f64>,
    /// Whether `host_us` also holds the load generator (one process).
    pub host_includes_load_generator: bool,
    /// The plugin calls (`PluginCost::cpu_per_payment_us`; part of the
    /// host's).
    pub plugins_us: Option<f64>,
    /// The load generator: the bench process (HTTP), pgbench and its
    /// script (the peer); in-process it is in `host_us`.
    pub load_generator_us: Option<f64>,
    /// Every CPU of the machine, everything that ran.
    pub machine_us: Option<f64>,
}

/// `after - before` of one counter, µs per payment.
fn per_payment(before: Option<Duration>, after: Option<Duration>, payments: u64) -> Option<f64> {
    let (b, a) = before.zip(after)?;
    (payments > 0).then(|| a.saturating_sub(b).as_secs_f64() * 1e6 / payments as f64)
}

/// Where the host and the load generator of a run are.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Side {
    /// payrail in the bench process: host and load generator in one.
    InProcess,
    /// payrail's `payrail serve` children, whose CPU over the run the
    /// caller read; the bench process is the load generator.
    Http { host: Option<Duration> },
    /// The peer: pgbench, a child of the bench, is the load generator.
    Peer,
}

impl CpuSplit {
    /// The split of a run of `payments` between two snapshots, with the
    /// plugin calls' CPU per payment measured apart.
    pub fn of(
        side: Side,
        before: &Snapshot,
        after: &Snapshot,
        payments: u64,
        plugins_us: Option<f64>,
    ) -> CpuSplit {
        let per = |b, a| per_payment(b, a, payments);
        let bench = per(before.bench, after.bench);
        let (host_us, load_generator_us) = match side {
            Side::InProcess => (bench, None),
            Side::Http { host } => (per(Some(Duration::ZERO), host), bench),
            Side::Peer => (None, per(before.bench_children, after.bench_children)),
        };
        CpuSplit {
            postgres_us: per(before.postgres, after.postgres),
            host_us,
            host_includes_load_generator: side == Side::InProcess,
            plugins_us,
            load_generator_us,
            machine_us: per(before.machine, after.machine),
        }
    }

    /// The plugin calls' share of the whole machine's CPU (P4).
    pub fn plugin_share(&self) -> Option<f64> {
        let (p, m) = self.plugins_us.zip(self.machine_us)?;
        (m > 0.0).then(|| p / m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(secs: [u64; 4]) -> Snapshot {
        let d = |s| Some(Duration::from_secs(s));
        Snapshot {
            machine: d(secs[0]),
            postgres: d(secs[1]),
            bench: d(secs[2]),
            bench_children: d(secs[3]),
        }
    }

    #[test]
    fn splits_the_differences_per_payment_by_side() {
        let (b, a) = (snap([10, 5, 2, 1]), snap([20, 9, 5, 3]));
        let s = CpuSplit::of(Side::InProcess, &b, &a, 1_000_000, Some(0.5));
        assert_eq!(s.machine_us, Some(10.0));
        assert_eq!(s.postgres_us, Some(4.0));
        assert_eq!(s.host_us, Some(3.0));
        assert!(s.host_includes_load_generator);
        assert_eq!(s.load_generator_us, None);
        assert_eq!(s.plugin_share(), Some(0.05));

        let host = Some(Duration::from_secs(4));
        let s = CpuSplit::of(Side::Http { host }, &b, &a, 1_000_000, None);
        assert_eq!((s.host_us, s.load_generator_us), (Some(4.0), Some(3.0)));
        assert!(!s.host_includes_load_generator);
        assert_eq!(s.plugin_share(), None);

        let s = CpuSplit::of(Side::Peer, &b, &a, 1_000_000, None);
        assert_eq!((s.host_us, s.load_generator_us), (None, Some(2.0)));
    }

    #[test]
    fn no_payments_or_readings_give_none_and_counters_never_go_back() {
        let (b, a) = (snap([10, 5, 2, 1]), snap([20, 9, 5, 3]));
        assert_eq!(CpuSplit::of(Side::Peer, &b, &a, 0, None).machine_us, None);
        let unread = Snapshot::default();
        assert_eq!(
            CpuSplit::of(Side::Peer, &unread, &a, 5, None).machine_us,
            None
        );
        // a process that ended takes its time with it: saturate, never negative
        assert_eq!(
            CpuSplit::of(Side::Peer, &a, &b, 1_000_000, None).postgres_us,
            Some(0.0)
        );
    }
}
