//! The peer: `shared/baseline/run.sh` (the same payments as a PL/pgSQL
//! function, driven by pgbench) on the same Postgres, same client counts.

use super::workload::Workload;
use crate::error::{Error, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Connections left free for everyone else when capping the peer's
/// clients to the server's `max_connections` (pgbench opens one per client
/// and fails the whole point if it cannot).
const RESERVED_CONNECTIONS: i64 = 10;

/// One baseline measurement.
#[derive(Debug, Clone, Serialize)]
pub struct PeerPoint {
    /// The workload.
    pub workload: Workload,
    /// pgbench clients.
    pub clients: usize,
    /// What pgbench reported; `None` if it failed or was skipped.
    pub tps: Option<f64>,
    /// Why there is no number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The repository's copy of the peer (bench/baseline, kept identical to
/// the shared one), for a clone that has no `shared/` beside it.
pub const VENDORED_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../bench/baseline/run.sh");

/// Finds the script: `explicit`, else `shared/baseline/run.sh` in the
/// current directory or any parent, else the repository's copy.
pub fn find_script(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(Error::Setup(format!(
                "baseline script {} does not exist",
                p.display()
            )))
        };
    }
    std::env::current_dir()
        .ok()
        .and_then(|cwd| {
            cwd.ancestors()
                .map(|d| d.join("shared/baseline/run.sh"))
                .find(|p| p.is_file())
        })
        .or_else(|| Some(PathBuf::from(VENDORED_SCRIPT)).filter(|p| p.is_file()))
        .ok_or_else(|| {
            Error::Setup(
                "baseline script shared/baseline/run.sh not found here or in a parent directory: pass --baseline PATH/run.sh or --skip-baseline".into(),
            )
        })
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

/// Runs the script once for all `clients` counts that fit in `free`
/// connections, `secs` per point, on the server of `admin_url` (it creates
/// its own database `payrail_baseline` there). Counts that do not fit are
/// reported with a note instead of a number.
pub async fn run(
    script: &Path,
    admin_url: &str,
    secs: u64,
    clients: &[usize],
    accounts: usize,
    free: i64,
) -> Result<Vec<PeerPoint>> {
    let (fit, skipped): (Vec<usize>, Vec<usize>) =
        clients.iter().partition(|&&c| (c as i64) <= free);
    let mut points = Vec::new();
    if !fit.is_empty() {
        println!(
            "peer     {} clients={:?} {secs} s each",
            script.display(),
            fit
        );
        let mut cmd = tokio::process::Command::new("bash");
        cmd.arg(script)
            .arg(admin_url)
            .arg(secs.to_string())
            .args(fit.iter().map(|c| c.to_string()))
            .env("N_ACCOUNTS", accounts.to_string())
            .kill_on_drop(true);
        // the script's own setup (100k accounts) plus its pgbench runs
        let limit = Duration::from_secs(600 + 2 * secs * 2 * fit.len() as u64);
        let out = tokio::time::timeout(limit, cmd.output())
            .await
            .map_err(|_| {
                Error::Setup(format!(
                    "baseline did not finish within {} s",
                    limit.as_secs()
                ))
            })?
            .map_err(|e| Error::Setup(format!("cannot run {}: {e}", script.display())))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(Error::Setup(format!(
                "baseline failed ({}): {stdout}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        for line in stdout.lines() {
            println!("{line}");
            if let Some(p) = parse_line(line) {
                points.push(p);
            }
        }
    }
    for c in skipped {
        for workload in [Workload::Uniform, Workload::HotFee] {
            points.push(PeerPoint {
                workload,
                clients: c,
                tps: None,
                note: Some(format!(
                    "skipped: {c} pgbench connections do not fit in the server's free connections ({free} after a reserve of {RESERVED_CONNECTIONS})"
                )),
            });
        }
    }
    Ok(points)
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
    let workload = match field("workload=")?.as_str() {
        "uniform" => Workload::Uniform,
        "hot_fee" => Workload::HotFee,
        _ => return None,
    };
    let clients = field("clients=")?.parse().ok()?;
    let tps_text = field("tps=")?;
    let tps = tps_text.parse::<f64>().ok();
    Some(PeerPoint {
        workload,
        clients,
        tps,
        note: tps
            .is_none()
            .then(|| format!("pgbench failed (tps={tps_text})")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_scripts_lines() {
        let p = parse_line("baseline workload=hot_fee clients=8 tps=2712.5").unwrap();
        assert_eq!(
            (p.workload, p.clients, p.tps),
            (Workload::HotFee, 8, Some(2712.5))
        );
        let e = parse_line("baseline workload=uniform clients=64 tps=error").unwrap();
        assert!(e.tps.is_none() && e.note.is_some());
        assert!(parse_line("something else").is_none());
    }
}
