//! The peer: `bench/baseline/run.sh` (the same payments as a PL/pgSQL
//! function, driven by pgbench) on the same Postgres, same client counts.

use crate::cpu::CpuSplit;
use crate::wal::WalByTable;
use crate::workload::{Percentiles, Workload};
use crate::writes::PerPayment;
use payrail::error::{Error, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Connections left free for everyone else when capping the peer's
/// clients to the server's `max_connections` (pgbench opens one per client
/// and fails the whole point if it cannot).
const RESERVED_CONNECTIONS: i64 = 10;

/// The database `run.sh` (re)creates on the server and leaves behind.
pub const DATABASE: &str = "payrail_baseline";

/// One baseline measurement.
#[derive(Debug, Clone, Serialize)]
pub struct PeerPoint {
    /// The workload.
    pub workload: Workload,
    /// pgbench clients.
    pub clients: usize,
    /// What pgbench reported; `None` if it failed or was skipped.
    pub tps: Option<f64>,
    /// Transactions pgbench completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transactions: Option<u64>,
    /// Why there is no number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The machine's CPU per transaction by component (set by the caller).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuSplit>,
    /// What the point wrote per transaction (set by the caller).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub writes: Option<PerPayment>,
    /// WAL per transaction by table (set by the caller).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wal: Option<WalByTable>,
}

impl PeerPoint {
    /// A point not measured, and why.
    pub fn skipped(workload: Workload, clients: usize, note: String) -> PeerPoint {
        PeerPoint {
            workload,
            clients,
            tps: None,
            transactions: None,
            note: Some(note),
            cpu: None,
            writes: None,
            wal: None,
        }
    }
}

/// The peer's script in this repository (`bench/baseline/run.sh`).
pub const VENDORED_SCRIPT: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../bench/baseline/run.sh");

/// Finds the script: `explicit`, else the repository's `bench/baseline`.
pub fn find_script(explicit: Option<&Path>) -> Result<PathBuf> {
    let path = explicit.map_or_else(|| PathBuf::from(VENDORED_SCRIPT), Path::to_path_buf);
    if path.is_file() {
        return Ok(path);
    }
    Err(Error::Setup(format!(
        "baseline script {} does not exist: pass --baseline PATH/run.sh or --skip-baseline",
        path.display()
    )))
}

/// How many more connections the server accepts (minus a reserve).
pub async fn free_connections(client: &tokio_postgres::Client) -> Result<i64> {
    let row = client
        .query_one(
            "select current_setting('max_connections')::bigint
                    - (select count(*) from pg_stat_activity)",
            &[],
        )
        .await?;
    Ok(row.get::<_, i64>(0) - RESERVED_CONNECTIONS)
}

/// The note of a point whose clients do not fit in `free` connections.
pub fn does_not_fit(clients: usize, free: i64) -> String {
    format!(
        "skipped: {clients} pgbench connections do not fit in the server's free connections ({free} after a reserve of {RESERVED_CONNECTIONS})"
    )
}

/// The script's command for `accounts` accounts on the server of
/// `admin_url`, `secs` per point.
fn command(script: &Path, admin_url: &str, secs: u64, accounts: usize) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("bash");
    cmd.arg(script)
        .arg(admin_url)
        .arg(secs.to_string())
        .env("N_ACCOUNTS", accounts.to_string())
        .kill_on_drop(true);
    cmd
}

/// (Re)creates the peer's database [`DATABASE`] with `accounts` accounts
/// (the script with `SETUP_ONLY=1`), so no point's CPU holds the setup.
pub async fn setup(script: &Path, admin_url: &str, accounts: usize) -> Result<()> {
    let mut cmd = command(script, admin_url, 1, accounts);
    cmd.env("SETUP_ONLY", "1");
    let what = format!("baseline setup {}", script.display());
    output_within(&mut cmd, Duration::from_secs(600), &what).await?;
    Ok(())
}

/// One point of the peer on the database [`setup`] made: the script for
/// `workload` with `clients` pgbench clients for `secs`.
pub async fn run_point(
    script: &Path,
    admin_url: &str,
    secs: u64,
    workload: Workload,
    clients: usize,
    accounts: usize,
) -> Result<PeerPoint> {
    let mut cmd = command(script, admin_url, secs, accounts);
    cmd.arg(clients.to_string())
        .env("KEEP_DATABASE", "1")
        .env("WORKLOADS", workload.name());
    let limit = Duration::from_secs(60 + 2 * secs);
    let what = format!("baseline {}", script.display());
    let stdout = output_within(&mut cmd, limit, &what).await?;
    for line in stdout.lines() {
        println!("{line}");
    }
    Ok(stdout
        .lines()
        .find_map(parse_line)
        .filter(|p| p.workload == workload && p.clients == clients)
        .unwrap_or_else(|| {
            PeerPoint::skipped(
                workload,
                clients,
                format!("the script printed no result: {stdout}"),
            )
        }))
}

/// The statement `run.sh` has pgbench run per payment, as the script
/// writes it (`$n_accounts` and `$fee` are its shell variables). The paced
/// point drives the peer with this same statement; a test checks the
/// repository's copy of the script still contains it.
const TRANSFER_SQL: &str = r"\set src random(2, $n_accounts)
\set dst random(2, $n_accounts)
\set amt random(100, 100000)
select baseline.transfer(:client_id || '-' || :src || '-' || random()::text, :src, (case when :dst = :src then 2 + (:src % ($n_accounts - 2)) + 1 else :dst end)::bigint, :amt, $fee, $fee_account);
";

/// The fee `run.sh` passes for `workload` (0: no fee step) and the fee
/// account's expression (`:src` is pgbench's variable).
fn fee(workload: Workload) -> (u32, &'static str) {
    match workload {
        // hot_pair never reaches the peer: `BenchArgs::validate` keeps it
        // to `--locks`
        Workload::Uniform | Workload::HotPair => (0, "1"),
        Workload::HotFee => (29, "1"),
        Workload::SpreadFee => (29, "-(1 + :src % 64)"),
    }
}

/// Most transactions a paced peer run may log: the rate is bounded by the
/// peer's measured peak, so this only guards against a runaway log.
const MAX_PACED_TRANSACTIONS: usize = 20_000_000;

/// The peer started on a schedule (pgbench `--rate`), as payrail's paced
/// run is: its latency at a load below its peak, for comparison with P3.
#[derive(Debug, Clone, Serialize)]
pub struct PeerPaced {
    /// The workload.
    pub workload: Workload,
    /// pgbench clients (the peer's best count of the sweep).
    pub clients: usize,
    /// The rate pgbench was asked for, per second.
    pub target_tps: f64,
    /// The rate it reached.
    pub tps: f64,
    /// Latency of every transaction from its scheduled start (pgbench's
    /// per-transaction log under `--rate`), so a backlog shows.
    pub latency: Percentiles,
    /// What the run wrote per transaction (set by the caller, which holds
    /// the server connection).
    pub writes: Option<PerPayment>,
}

/// Runs the peer's statement for `workload` on `db_url` (the database
/// `run.sh` left behind) at `rate` transactions/s for `secs` with
/// `clients` connections, logging every transaction into `work_dir`, and
/// reads the latency percentiles from the log. pgbench schedules by a
/// Poisson process at that mean rate (payrail's paced run: evenly spaced).
pub async fn paced(
    db_url: &str,
    workload: Workload,
    accounts: usize,
    clients: usize,
    rate: f64,
    secs: u64,
    work_dir: &Path,
) -> Result<PeerPaced> {
    assert!(
        rate >= 1.0 && clients > 0,
        "a paced run needs a rate and clients"
    );
    let _ = std::fs::remove_dir_all(work_dir);
    std::fs::create_dir_all(work_dir)
        .map_err(|e| Error::Setup(format!("cannot create {}: {e}", work_dir.display())))?;
    let script = work_dir.join(format!("{}.sql", workload.name()));
    let sql = TRANSFER_SQL
        .replace("$n_accounts", &accounts.to_string())
        .replace("$fee_account", fee(workload).1)
        .replace("$fee", &fee(workload).0.to_string());
    std::fs::write(&script, sql)
        .map_err(|e| Error::Setup(format!("cannot write {}: {e}", script.display())))?;
    let prefix = work_dir.join("txn");
    let mut cmd = tokio::process::Command::new(pgbench()?);
    cmd.arg(db_url)
        .args(["-n", "-j", "2", "--log"])
        .arg(format!("--client={clients}"))
        .arg(format!("--time={secs}"))
        .arg(format!("--rate={rate:.0}"))
        .arg(format!("--file={}", script.display()))
        .arg(format!("--log-prefix={}", prefix.display()))
        .kill_on_drop(true);
    let limit = Duration::from_secs(60 + 2 * secs);
    let stdout = match output_within(&mut cmd, limit, "paced pgbench").await {
        Ok(stdout) => stdout,
        Err(e) => {
            let _ = std::fs::remove_dir_all(work_dir);
            return Err(e);
        }
    };
    let tps = stdout
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|t| t.split_whitespace().next())
        .and_then(|t| t.parse::<f64>().ok())
        .ok_or_else(|| Error::Setup(format!("paced pgbench printed no tps: {stdout}")))?;
    let latencies_us = read_log(work_dir);
    let _ = std::fs::remove_dir_all(work_dir);
    let mut latencies_us = latencies_us?;
    if latencies_us.is_empty() {
        return Err(Error::Setup("paced pgbench logged no transaction".into()));
    }
    Ok(PeerPaced {
        workload,
        clients,
        target_tps: rate,
        tps,
        latency: Percentiles::of(&mut latencies_us),
        writes: None,
    })
}

/// Runs `cmd` to its end within `limit` and returns what it printed on
/// stdout; an error naming `what` if it could not start, ran over (it is
/// killed: `kill_on_drop`) or failed (with its stdout and stderr).
async fn output_within(
    cmd: &mut tokio::process::Command,
    limit: Duration,
    what: &str,
) -> Result<String> {
    let out = tokio::time::timeout(limit, cmd.output())
        .await
        .map_err(|_| {
            Error::Setup(format!(
                "{what} did not finish within {} s",
                limit.as_secs()
            ))
        })?
        .map_err(|e| Error::Setup(format!("cannot run {what}: {e}")))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(Error::Setup(format!(
            "{what} failed ({}): {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(stdout)
}

/// The latencies (µs) of pgbench's transaction logs in `work_dir`.
fn read_log(work_dir: &Path) -> Result<Vec<u32>> {
    let mut latencies_us = Vec::new();
    for entry in std::fs::read_dir(work_dir)
        .map_err(|e| Error::Setup(format!("cannot read {}: {e}", work_dir.display())))?
    {
        let path = entry.map_err(|e| Error::Setup(e.to_string()))?.path();
        if !path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("txn."))
        {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Error::Setup(format!("cannot read {}: {e}", path.display())))?;
        latencies_us.extend(text.lines().filter_map(log_latency_us));
        if latencies_us.len() > MAX_PACED_TRANSACTIONS {
            return Err(Error::Setup(format!(
                "paced pgbench logged more than {MAX_PACED_TRANSACTIONS} transactions"
            )));
        }
    }
    Ok(latencies_us)
}

/// The latency field of one line of pgbench's transaction log:
/// `client_id transaction_no time script_no time_epoch time_us [lag]`,
/// `time` in µs (from the scheduled start under `--rate`). A skipped or
/// failed transaction (`skipped`, `failed` in place of the time) has none.
fn log_latency_us(line: &str) -> Option<u32> {
    let us: u64 = line.split_whitespace().nth(2)?.parse().ok()?;
    Some(us.min(u32::MAX as u64) as u32)
}

/// pgbench: on PATH, else in the system's Postgres binaries (as `run.sh`
/// finds it).
fn pgbench() -> Result<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("pgbench"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let system = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin/pgbench"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain(system)
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::Setup("pgbench not found on PATH or in /usr/lib/postgresql/*/bin".into())
        })
}

/// Parses `baseline workload=<w> clients=<c> tps=<n>`.
fn parse_line(line: &str) -> Option<PeerPoint> {
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(name))
            .map(str::to_string)
    };
    if !line.starts_with("baseline ") {
        return None;
    }
    let workload = Workload::from_name(&field("workload=")?)?;
    let clients = field("clients=")?.parse().ok()?;
    let tps_text = field("tps=")?;
    let tps = tps_text.parse::<f64>().ok();
    Some(PeerPoint {
        tps,
        transactions: field("transactions=").and_then(|t| t.parse().ok()),
        note: tps
            .is_none()
            .then(|| format!("pgbench failed (tps={tps_text})")),
        ..PeerPoint::skipped(workload, clients, String::new())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_scripts_lines() {
        let p = parse_line("baseline workload=hot_fee clients=8 tps=2712.5").unwrap();
        assert_eq!(
            (p.workload, p.clients, p.tps, p.transactions),
            (Workload::HotFee, 8, Some(2712.5), None)
        );
        let p = parse_line("baseline workload=spread_fee clients=4 tps=10.0 transactions=100");
        let p = p.unwrap();
        assert_eq!(
            (p.workload, p.transactions),
            (Workload::SpreadFee, Some(100))
        );
        assert!(p.note.is_none());
        let e = parse_line("baseline workload=uniform clients=64 tps=error").unwrap();
        assert!(e.tps.is_none() && e.note.is_some());
        assert!(parse_line("something else").is_none());
    }

    #[test]
    fn the_paced_statement_is_the_scripts() {
        let script = std::fs::read_to_string(VENDORED_SCRIPT).unwrap();
        for line in TRANSFER_SQL.lines() {
            assert!(script.contains(line), "run.sh no longer has: {line}");
        }
        for w in Workload::ALL {
            let (permille, account) = fee(w);
            assert!(
                script.contains(&format!("fee={permille}")),
                "run.sh's fees moved"
            );
            assert!(script.contains(account), "run.sh's fee accounts moved");
        }
        assert!(script.contains("fee=29; fee_account=1"));
        assert!(script.contains("uniform) fee=0"));
    }

    #[tokio::test]
    async fn a_command_is_stopped_at_its_limit_and_its_failure_is_an_error() {
        let limit = Duration::from_millis(200);
        let mut slow = tokio::process::Command::new("sleep");
        slow.arg("5").kill_on_drop(true);
        let started = std::time::Instant::now();
        let e = output_within(&mut slow, limit, "sleeper")
            .await
            .unwrap_err();
        assert!(e.to_string().contains("sleeper did not finish"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(4), "not waited out");
        let mut failing = tokio::process::Command::new("sh");
        failing.args(["-c", "echo out; echo err >&2; exit 3"]);
        let e = output_within(&mut failing, Duration::from_secs(10), "failer")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("failer failed") && e.contains("out") && e.contains("err"),
            "{e}"
        );
        let mut ok = tokio::process::Command::new("echo");
        ok.arg("tps = 1");
        assert_eq!(
            output_within(&mut ok, Duration::from_secs(10), "echo")
                .await
                .unwrap(),
            "tps = 1\n"
        );
    }

    #[test]
    fn reads_the_latency_of_a_transaction_log_line() {
        assert_eq!(
            log_latency_us("3 17 22513 0 1795747377 820448 55"),
            Some(22513)
        );
        assert_eq!(log_latency_us("3 17 skipped 0 1795747377 820448 55"), None);
        assert_eq!(log_latency_us(""), None);
    }
}
