//! Process readings from `/proc` (Linux): CPU time and peak resident set
//! size of this process or of a child. Elsewhere every reading is `None`
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

/// utime + stime from the text of `/proc/<pid>/stat`. The command name
/// (field 2) is in parentheses and may hold spaces, so fields are counted
/// after its closing parenthesis: there, index 0 is field 3 (state), so
/// utime (field 14) is index 11 and stime (field 15) index 12.
fn parse_stat_cpu(stat: &str) -> Option<Duration> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_secs_f64((utime + stime) as f64 / USER_HZ))
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
