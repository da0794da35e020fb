//! Process readings from `/proc` (Linux): CPU time and peak resident set
//! size of this process or of a child, the CPU time of the Postgres server's
//! processes and of the whole machine. Elsewhere every reading is `None`
//! and the report says "n/a".

use std::time::Duration;

/// Clock ticks per second of the `/proc/<pid>/stat` times. Linux reports
/// them in `USER_HZ`, which is 100 on every architecture it runs on (the
/// kernel converts from its internal `HZ`), so no `sysconf` is needed.
const USER_HZ: f64 = 100.0;

/// Which process to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proc {
    /// This process (`/proc/self`).
    Current,
    /// Another process by id (a `payrail serve` child).
    Pid(u32),
}

impl Proc {
    fn dir(self) -> String {
        match self {
            Proc::Current => "/proc/self".into(),
            Proc::Pid(pid) => format!("/proc/{pid}"),
        }
    }
}

/// User + system CPU time the process has used so far (all its threads).
pub fn cpu_time(p: Proc) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("{}/stat", p.dir())).ok()?;
    parse_stat_cpu(&stat)
}

/// utime + stime from the text of `/proc/<pid>/stat`.
fn parse_stat_cpu(stat: &str) -> Option<Duration> {
    parse_stat(stat).map(|t| ticks(t.own_ticks))
}

fn ticks(n: u64) -> Duration {
    Duration::from_secs_f64(n as f64 / USER_HZ)
}

/// What the bench reads of one `/proc/<pid>/stat`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StatTimes<'a> {
    /// The command name (field 2, without its parentheses).
    comm: &'a str,
    /// utime + stime, clock ticks.
    own_ticks: u64,
    /// cutime + cstime: the children it has waited for, clock ticks.
    children_ticks: u64,
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) is in parentheses
/// and may hold spaces, so fields are counted after its closing
/// parenthesis: there, index 0 is field 3 (state), so utime (field 14) is
/// index 11, stime 12, cutime 13 and cstime 14.
fn parse_stat(stat: &str) -> Option<StatTimes<'_>> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?;
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    let field = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some(StatTimes {
        comm,
        own_ticks: field(11)?.saturating_add(field(12)?),
        children_ticks: field(13)?.saturating_add(field(14)?),
    })
}

/// CPU time of the children this process has waited for (cutime +
/// cstime): the peer's pgbench runs, once they ended.
pub fn children_cpu_time(p: Proc) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("{}/stat", p.dir())).ok()?;
    parse_stat(&stat).map(|t| ticks(t.children_ticks))
}

/// Most `/proc` entries [`postgres_cpu_time`] reads (a bound on its work).
const MAX_PROC_ENTRIES: usize = 100_000;

/// CPU time of the Postgres server so far: utime + stime + cutime + cstime
/// of every process named `postgres`. The children's times count because
/// backends that exit during a run (pgbench's connections, at its end)
/// leave their time only in the postmaster's cutime + cstime. The server
/// must run on this machine, and the bench must be able to read its
/// processes (as root, or as the same user).
pub fn postgres_cpu_time() -> Option<Duration> {
    let mut total = 0u64;
    let mut found = false;
    for entry in std::fs::read_dir("/proc").ok()?.take(MAX_PROC_ENTRIES) {
        let Ok(entry) = entry else { continue };
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        // a process may end between the listing and the read
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Some(t) = parse_stat(&stat).filter(|t| t.comm == "postgres") {
            found = true;
            total = total.saturating_add(t.own_ticks.saturating_add(t.children_ticks));
        }
    }
    found.then(|| ticks(total))
}

/// Busy CPU time of the whole machine so far, all CPUs: the first line of
/// `/proc/stat` minus idle and iowait.
pub fn machine_cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_machine_busy(&stat).map(ticks)
}

/// `cpu  user nice system idle iowait irq softirq steal guest guest_nice`:
/// user + nice + system + irq + softirq + steal, ticks (guest time is
/// already in user and nice).
fn parse_machine_busy(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    let at = |i: usize| f.get(i).copied().unwrap_or(0);
    if f.len() < 4 {
        return None;
    }
    Some([0, 1, 2, 5, 6, 7].iter().map(|&i| at(i)).sum())
}

/// Peak resident set size in bytes (`VmHWM` of `/proc/<pid>/status`).
pub fn peak_rss_bytes(p: Proc) -> Option<u64> {
    let status = std::fs::read_to_string(format!("{}/status", p.dir())).ok()?;
    parse_vm_hwm(&status)
}

/// Resets the peak RSS to the current RSS (writes `5` to
/// `/proc/<pid>/clear_refs`, Linux 4.0+), so the next [`peak_rss_bytes`]
/// covers only what came after: the bench's own setup (opening 100k
/// accounts) must not count as the in-process host's peak. Returns whether
/// it worked.
pub fn reset_peak_rss(p: Proc) -> bool {
    std::fs::write(format!("{}/clear_refs", p.dir()), "5").is_ok()
}

fn parse_vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_in_the_name() {
        let stat = "1234 (pay rail) S 1 2 3 4 5 6 7 8 9 10 250 150 0 0 20 0 8 0 100 0 0";
        assert_eq!(parse_stat_cpu(stat), Some(Duration::from_secs(4)));
    }

    #[test]
    fn parses_the_name_and_the_childrens_times() {
        let stat = "77 (postgres) S 1 2 3 4 5 6 7 8 9 10 250 150 30 20 20 0 8 0 100 0 0";
        let t = parse_stat(stat).unwrap();
        assert_eq!(
            t,
            StatTimes {
                comm: "postgres",
                own_ticks: 400,
                children_ticks: 50
            }
        );
        let odd = "78 (a) b) (c) R 1 2 3 4 5 6 7 8 9 10 1 2 3 4 20";
        assert_eq!(parse_stat(odd).unwrap().comm, "a) b) (c");
        assert_eq!(parse_stat("79 (short) S 1 2"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn the_machines_busy_time_leaves_out_idle_and_iowait() {
        let stat = "cpu  100 5 50 1000 70 3 2 1 9 0\ncpu0 50 2 25 500 35 1 1 0 0 0\nintr 1\n";
        assert_eq!(parse_machine_busy(stat), Some(161));
        // old kernels have fewer columns
        assert_eq!(parse_machine_busy("cpu 1 2 3 4\n"), Some(6));
        assert_eq!(parse_machine_busy("cpu 1 x 3 4\n"), None);
        assert_eq!(parse_machine_busy("intr 1\n"), None);
    }

    #[test]
    fn reads_the_machine() {
        if cfg!(target_os = "linux") {
            assert!(machine_cpu_time().is_some());
            assert!(children_cpu_time(Proc::Current).is_some());
        }
    }

    #[test]
    fn parses_vm_hwm() {
        let status = "Name:\tpayrail\nVmPeak:\t  999 kB\nVmHWM:\t   2048 kB\nVmRSS:\t 1000 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(2048 * 1024));
    }

    #[test]
    fn reads_this_process() {
        if cfg!(target_os = "linux") {
            assert!(cpu_time(Proc::Current).is_some());
            assert!(peak_rss_bytes(Proc::Current).unwrap() > 0);
        }
    }
}
