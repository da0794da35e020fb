//! CI smoke guard for `payrail bench`: a short run of the real
//! `payrail-bench` binary (in-process and HTTP, both workloads, a small
//! account count) with the PL/pgSQL peer on the same Postgres, on a database
//! of its own. A test of the bench crate (host/bench/Cargo.toml).
//!
//! It fails only on a gross regression: payrail's best throughput below
//! [`MIN_RATIO_TO_PEER`] times the peer's best measured in the same run,
//! per path and workload. It is not a performance measurement (that is
//! `payrail bench` itself, release build, full length); the numbers are
//! printed so a failure shows how far off they were.
//!
//! Its second guard is the yardstick (docs/performance.md, "The
//! yardstick"): the host's instructions per payment, counted by callgrind,
//! may not rise more than 10% over the figure in bench/yardstick.json.

use payrail_bench::yardstick;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// payrail (debug build, 2 s points, 4 and 32 clients: batching needs
/// concurrency) against the peer measured in the same run. Measured on a
/// shared 2-core machine in the debug build (where the plugin bindings run
/// unoptimized, ~150 µs a call): 0.28-0.61 (at 4 clients only, 0.09-0.27);
/// a release build is several times higher. 0.1 leaves a ~3x margin under
/// the worst seen: only a gross regression (an accidental sleep, serialized
/// payments, a lost connection pool) falls below it.
const MIN_RATIO_TO_PEER: f64 = 0.1;

/// The whole bench must finish within this (it takes ~40-70 s).
const TIMEOUT: Duration = Duration::from_secs(240);

/// The tests of this binary take turns: the smoke run measures
/// throughput and wants the cores to itself, and the yardstick's two
/// valgrind processes take both.
static CORES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The peer's script: `$PAYRAIL_BASELINE`, else the repository's
/// `bench/baseline/run.sh`.
fn baseline_script() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("PAYRAIL_BASELINE") {
        return Some(PathBuf::from(p));
    }
    Some(PathBuf::from(payrail_bench::peer::VENDORED_SCRIPT)).filter(|p| p.is_file())
}

/// Admin URL of the server: `$DATABASE_URL`, else the local cluster
/// payrail runs itself (started if need be).
async fn admin_url() -> String {
    match std::env::var("DATABASE_URL") {
        Ok(u) if !u.is_empty() => u,
        _ => tokio::task::spawn_blocking(|| {
            payrail_embedded_pg::ensure_running(&payrail_embedded_pg::default_data_dir())
        })
        .await
        .unwrap()
        .expect("local postgres")
        .url(),
    }
}

/// The `payrail` binary of the HTTP path's serve children: `$PAYRAIL_BIN`;
/// else the one in this target directory when it is newer than every
/// build of the `payrail` library there (as after `cargo test --workspace`,
/// which links it after the library); else built now. `cargo test -p
/// payrail-bench` builds only this package's binary, and a stale `payrail`
/// would be the one measured. A build of its own costs about 1.5 min: a
/// single package resolves features apart from the workspace.
fn payrail_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("PAYRAIL_BIN").filter(|b| !b.is_empty()) {
        return PathBuf::from(bin);
    }
    if let Some(bin) = fresh_sibling() {
        return bin;
    }
    let mut cargo = Command::new(env!("CARGO"));
    cargo
        .args(["build", "-p", "payrail", "--bin", "payrail"])
        .arg("--message-format=json-render-diagnostics")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(Stdio::inherit());
    if !cfg!(debug_assertions) {
        cargo.arg("--release");
    }
    let out = cargo.output().expect("run cargo build -p payrail");
    assert!(out.status.success(), "cargo build -p payrail failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|m| m["executable"].as_str().map(PathBuf::from))
        .next_back()
        .expect("cargo names the payrail executable it built")
}

/// `target/<profile>/payrail` if it was linked after the newest
/// `libpayrail-*.rlib` of `target/<profile>/deps`.
fn fresh_sibling() -> Option<PathBuf> {
    let deps = PathBuf::from(env!("CARGO_BIN_EXE_payrail-bench"))
        .parent()?
        .join("deps");
    let bin = deps.parent()?.join("payrail");
    let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let bin_at = modified(&bin)?;
    let newest_lib = std::fs::read_dir(&deps)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            name.is_some_and(|n| n.starts_with("libpayrail-") && n.ends_with(".rlib"))
        })
        .filter_map(|p| modified(&p))
        .max()?;
    (bin_at >= newest_lib).then_some(bin)
}

fn best(report: &serde_json::Value, path: &str, workload: &str) -> Option<f64> {
    report["runs"]
        .as_array()?
        .iter()
        .filter(|r| r["path"] == path && r["workload"] == workload)
        .filter_map(|r| r["tps"].as_f64())
        .reduce(f64::max)
}

fn peer_best(report: &serde_json::Value, workload: &str) -> Option<f64> {
    report["peer"]
        .as_array()?
        .iter()
        .filter(|p| p["workload"] == workload)
        .filter_map(|p| p["tps"].as_f64())
        .reduce(f64::max)
}

#[tokio::test(flavor = "multi_thread")]
async fn bench_is_not_grossly_slower_than_the_peer() {
    let _cores = CORES.lock().await;
    let Some(script) = baseline_script() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "the peer baseline bench/baseline/run.sh was not found: set PAYRAIL_BASELINE"
        );
        eprintln!("SKIPPED: no peer baseline (bench/baseline/run.sh or $PAYRAIL_BASELINE)");
        return;
    };
    let admin_url = admin_url().await;
    let payrail = payrail_binary();
    let database = format!("payrail_bench_smoke_{:08x}", rand::random::<u32>());
    let out = std::env::temp_dir().join(&database);
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_payrail-bench"))
        .args(["--secs", "2", "--concurrency", "4,32"])
        .args(["--accounts", "1000", "--warmup-secs", "1"])
        .args(["--database", &database])
        .arg("--out")
        .arg(&out)
        .arg("--baseline")
        .arg(&script)
        .env("DATABASE_URL", &admin_url)
        .env("PAYRAIL_BIN", &payrail)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start payrail-bench");
    // read both pipes on threads so neither can fill up and block it
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let read = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let (out_text, err_text) = (read(Box::new(stdout)), read(Box::new(stderr)));
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if started.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (stdout, stderr) = (out_text.join().unwrap(), err_text.join().unwrap());
    println!("{stdout}");
    eprintln!("{stderr}");

    // the bench database is ours alone: drop it whatever happened
    let (c, conn) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let h2h_left: i64 = c
        .query_one(
            "select count(*) from pg_database where datname = $1",
            &[&format!("{database}_h2h")],
        )
        .await
        .unwrap()
        .get(0);
    for db in [database.clone(), format!("{database}_h2h")] {
        c.batch_execute(&format!("drop database if exists {db} with (force)"))
            .await
            .unwrap();
    }

    let status = status.unwrap_or_else(|| panic!("payrail bench took longer than {TIMEOUT:?}"));
    assert!(
        status.success(),
        "payrail bench failed ({status}): payments failed or the audit did not pass"
    );
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("report.json")).expect("report.json written"),
    )
    .expect("report.json is JSON");
    for f in ["report.md", "throughput.svg", "latency.svg"] {
        assert!(out.join(f).is_file(), "{f} written");
    }
    assert_eq!(report["audit"]["passed"], true, "the audit passed");
    // The machine's speed, read before the load: every idle call measured.
    let idle = &report["idle_call"];
    assert_eq!(idle["calls"], 5000, "{idle}");
    for field in ["median_us", "median_cpu_us"] {
        assert!(
            idle[field]
                .as_f64()
                .is_some_and(|us| us > 0.0 && us < 10_000.0),
            "{field}: {idle}"
        );
    }
    let md = std::fs::read_to_string(out.join("report.md")).expect("report.md");
    assert!(md.contains("a `limits` call on an idle core"), "{md}");
    assert_eq!(
        stdout
            .matches(&format!("database {database} migrated"))
            .count(),
        2,
        "each path starts from a fresh bench database"
    );
    assert_eq!(
        h2h_left, 0,
        "the head-to-head database is dropped after its phase"
    );
    // The head-to-head phase: two rounds (the default) per workload, the
    // peer first in the first, payrail first in the second, both measured.
    let paired = report["paired"].as_array().expect("paired rounds");
    for workload in ["uniform", "hot_fee"] {
        let rounds: Vec<_> = paired
            .iter()
            .filter(|p| p["workload"] == workload)
            .collect();
        assert_eq!(rounds.len(), 2, "{workload}: {paired:?}");
        assert_eq!(rounds[0]["peer_first"], true);
        assert_eq!(rounds[1]["peer_first"], false);
        for r in rounds {
            assert!(r["payrail_tps"].as_f64().unwrap() > 0.0, "{r}");
            assert!(r["peer_tps"].as_f64().is_some_and(|t| t > 0.0), "{r}");
        }
    }
    assert!(
        report["targets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["id"] == "P1" && t["what"].as_str().unwrap().contains("alternated")),
        "the paired P1 reading is a target row"
    );
    // The peer paced at 80% of its best, per workload, with its latency
    // read from pgbench's transaction log (which is not left behind).
    let paced = report["peer_at_load"].as_array().expect("peer paced runs");
    for workload in ["uniform", "hot_fee"] {
        let p = paced
            .iter()
            .find(|p| p["workload"] == workload)
            .unwrap_or_else(|| panic!("the peer was paced on {workload}: {paced:?}"));
        let best = peer_best(&report, workload).unwrap();
        let rate = p["target_tps"].as_f64().unwrap();
        assert!(
            (rate - 0.8 * best).abs() < 1.0,
            "paced at 80% of {best}: {p}"
        );
        assert!(p["tps"].as_f64().unwrap() > 0.0, "{p}");
        let l = &p["latency"];
        assert!(l["count"].as_u64().unwrap() > 0, "{p}");
        let (p50, p99) = (l["p50_ms"].as_f64().unwrap(), l["p99_ms"].as_f64().unwrap());
        assert!(p50 > 0.0 && p50 <= p99, "{p}");
        assert!(p["writes"]["wal_bytes"].as_f64().unwrap() > 0.0, "{p}");
    }
    // Every sweep point says what it wrote on the server per payment.
    for r in report["runs"].as_array().unwrap() {
        assert!(r["writes"]["wal_bytes"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["writes"]["database_bytes"].is_number(), "{r}");
    }
    assert!(
        !out.join(".peer-paced").exists(),
        "pgbench's log is removed"
    );
    let mut failures = Vec::new();
    for workload in ["uniform", "hot_fee"] {
        let peer =
            peer_best(&report, workload).unwrap_or_else(|| panic!("the peer measured {workload}"));
        for path in ["in_process", "http"] {
            let tps = best(&report, path, workload)
                .unwrap_or_else(|| panic!("payrail measured {path} {workload}"));
            let ratio = tps / peer;
            println!(
                "smoke    {path:<10} {workload:<7} payrail {tps:>7.0} tps  peer {peer:>7.0} tps  ratio {ratio:.3} (floor {MIN_RATIO_TO_PEER})"
            );
            if ratio < MIN_RATIO_TO_PEER {
                failures.push(format!(
                    "{path} {workload}: {tps:.0} tps is {ratio:.3}x the peer's {peer:.0}"
                ));
            }
        }
    }
    let _ = std::fs::remove_dir_all(&out);
    println!("bench smoke took {:.0} s", started.elapsed().as_secs_f64());
    assert!(
        failures.is_empty(),
        "gross throughput regression (below {MIN_RATIO_TO_PEER}x the peer): {failures:?}"
    );
}

/// The yardstick's count must finish within this (it takes ~2 min in the
/// debug build).
const YARDSTICK_TIMEOUT: Duration = Duration::from_secs(600);

/// `valgrind --version`; valgrind installed with apt-get first when it is
/// missing and this runs as root (CI: Debian, as root). Anything else fails
/// the test: a guard that cannot count must not pass.
fn ensure_valgrind() -> String {
    if let Ok(v) = yardstick::valgrind_version() {
        return v;
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    assert!(
        root,
        "the yardstick needs valgrind: install it (apt-get install valgrind) or set {}",
        yardstick::VALGRIND
    );
    for args in [&["update"][..], &["install", "-y", "valgrind"]] {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "apt-get {args:?} failed: the yardstick needs valgrind"
        );
    }
    yardstick::valgrind_version().expect("valgrind runs once installed")
}

/// Drops the databases the yardstick made under `database` (it drops
/// them itself unless it failed half-way): they are ours alone.
async fn drop_yardstick_databases(admin_url: &str, database: &str) {
    let (c, conn) = tokio_postgres::connect(admin_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    for workload in ["uniform", "hot_fee"] {
        for run in ["short", "long"] {
            c.batch_execute(&format!(
                "drop database if exists {database}_{workload}_{run} with (force)"
            ))
            .await
            .unwrap();
        }
    }
}

/// With `PAYRAIL_YARDSTICK_RECORD=1`, writes `figures` to
/// bench/yardstick.json; else compares them with it. Returns the figures
/// more than 10% over the recorded ones, as lines for a person.
fn judge_or_record(figures: &[yardstick::Figure]) -> Vec<String> {
    let path = std::path::Path::new(yardstick::RECORDED_FILE);
    let mut recorded = yardstick::Recorded::load(path).expect("bench/yardstick.json");
    if std::env::var("PAYRAIL_YARDSTICK_RECORD").as_deref() == Ok("1") {
        recorded.record(figures);
        recorded.save(path).unwrap();
        println!("yardstick  recorded in {}: {figures:?}", path.display());
        return Vec::new();
    }
    let mut failures = Vec::new();
    for f in figures {
        let verdict = yardstick::judge(
            recorded.figure(&f.profile, &f.key()),
            f.instructions_per_payment,
        );
        println!("yardstick  {}", verdict.line(f));
        if let yardstick::Verdict::Higher { .. } = verdict {
            failures.push(verdict.line(f));
        }
    }
    failures
}

/// The host's instructions per payment (callgrind) for both workloads, in
/// process and over HTTP (`payrail serve` counted), may not exceed the figures recorded in bench/yardstick.json for this build
/// profile by more than 10%. `PAYRAIL_YARDSTICK_RECORD=1` records them
/// instead (after a deliberate change, or to lock a gain in).
#[tokio::test(flavor = "multi_thread")]
async fn yardstick_instructions_per_payment_within_10_percent_of_recorded() {
    let _cores = CORES.lock().await;
    let valgrind = tokio::task::spawn_blocking(ensure_valgrind).await.unwrap();
    let admin_url = admin_url().await;
    let database = format!("payrail_bench_yardstick_{:08x}", rand::random::<u32>());
    let out = std::env::temp_dir().join(&database);
    let started = Instant::now();
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_payrail-bench"))
        .args(["yardstick", "--database", &database])
        .args(["--paths", "in-process,http"])
        .env("PAYRAIL_BIN", payrail_binary())
        .arg("--out")
        .arg(&out)
        .env("DATABASE_URL", &admin_url)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(YARDSTICK_TIMEOUT, run).await;
    drop_yardstick_databases(&admin_url, &database).await;
    let output = output
        .unwrap_or_else(|_| panic!("the yardstick took longer than {YARDSTICK_TIMEOUT:?}"))
        .expect("run payrail-bench yardstick");
    println!("{}", String::from_utf8_lossy(&output.stdout));
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "payrail-bench yardstick failed ({}): its logs are in {}",
        output.status,
        out.display()
    );
    let figures: Vec<yardstick::Figure> = serde_json::from_str(
        &std::fs::read_to_string(out.join("yardstick.json")).expect("yardstick.json written"),
    )
    .expect("yardstick.json holds the figures");
    let keys: Vec<String> = figures.iter().map(|f| f.key()).collect();
    assert_eq!(keys, ["uniform", "hot_fee", "http_uniform", "http_hot_fee"]);
    for f in &figures {
        assert_eq!(f.valgrind, valgrind);
        assert!(f.instructions_per_payment > 0.0, "{f:?}");
    }

    let _ = std::fs::remove_dir_all(&out);
    let failures = judge_or_record(&figures);
    println!("yardstick took {:.0} s", started.elapsed().as_secs_f64());
    assert!(
        failures.is_empty(),
        "the host's instructions per payment rose: {failures:#?}"
    );
}
