//! The local Postgres payrail runs when DATABASE_URL is unset: initdb,
//! start, crash (immediate stop), restart, and concurrent ensure_running.

use payrail_embedded_pg::{self as embedded, LocalPostgres};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

fn init_tracing() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
}

fn fresh_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(format!(
        "/tmp/payrail-embtest-{}-{}",
        name,
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn select1(pg: &LocalPostgres) -> String {
    let out = Command::new("psql")
        .args(["-X", "-A", "-t", "-c", "select 1", &pg.url()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

struct Cleanup(Vec<LocalPostgres>, PathBuf);
impl Drop for Cleanup {
    fn drop(&mut self) {
        for pg in &self.0 {
            let _ = pg.stop(true);
        }
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

#[test]
fn throwaway_crash_and_restart() {
    init_tracing();
    let root = fresh_dir("throwaway");
    let mut guard = Cleanup(vec![], root.clone());
    let t = Instant::now();
    let pg = embedded::start_throwaway(&root.join("data")).expect("start_throwaway");
    eprintln!("start_throwaway took {:?}, port {}", t.elapsed(), pg.port);
    guard.0.push(pg.clone());
    assert_ne!(pg.port, 5432);
    assert_eq!(select1(&pg), "1");
    // Not empty any more.
    assert!(matches!(
        embedded::start_throwaway(&pg.data_dir),
        Err(embedded::EmbeddedError::NotEmpty { .. })
    ));
    pg.stop(true).expect("stop immediate");
    assert!(
        Command::new("psql")
            .args(["-X", "-c", "select 1", &pg.url()])
            .output()
            .map(|o| !o.status.success())
            .unwrap()
    );
    let t = Instant::now();
    pg.start().expect("restart after crash");
    eprintln!("restart took {:?}", t.elapsed());
    assert_eq!(select1(&pg), "1");
    // Restart-on-same-port while running must fail with a Start error naming the log.
    let err = pg.start().unwrap_err();
    eprintln!("second start error: {err}");
    pg.stop(false).expect("stop fast");
    pg.stop(false).expect("stop when already stopped is ok");
    // Port taken by someone else: start fails naming the bind error.
    {
        let _squatter = std::net::TcpListener::bind(("127.0.0.1", pg.port)).unwrap();
        let err = pg.start().unwrap_err().to_string();
        eprintln!("port-taken error: {err}");
        assert!(err.contains("Address already in use"), "{err}");
    }
    // ensure_running on the stopped throwaway starts it (new port).
    let again = embedded::ensure_running(&pg.data_dir).expect("ensure_running on stopped cluster");
    guard.0.push(again.clone());
    assert_eq!(select1(&again), "1");
    again.stop(false).unwrap();
}

#[test]
fn ensure_running_concurrent() {
    init_tracing();
    let root = fresh_dir("concurrent");
    let mut guard = Cleanup(vec![], root.clone());
    let data: PathBuf = root.join("nested/postgres");
    let t = Instant::now();
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let data = data.clone();
            std::thread::spawn(move || embedded::ensure_running(&data))
        })
        .collect();
    let results: Vec<LocalPostgres> = handles
        .into_iter()
        .map(|h| h.join().unwrap().expect("ensure_running"))
        .collect();
    eprintln!("4x ensure_running took {:?}", t.elapsed());
    guard.0.push(results[0].clone());
    for r in &results {
        assert_eq!(r, &results[0]);
    }
    assert_eq!(select1(&results[0]), "1");
    // Already running: fast path, same port.
    let t = Instant::now();
    let again = embedded::ensure_running(&data).unwrap();
    eprintln!("ensure_running (already running) took {:?}", t.elapsed());
    assert_eq!(again.port, results[0].port);
    let url = results[0].url_for("postgres");
    assert_eq!(url, results[0].url());
    assert!(data.join("PG_VERSION").exists());
    assert!(Path::new(&format!("{}.log", data.display())).exists());
    assert!(!Path::new(&format!("{}.initdb", data.display())).exists());
    // Crash the postmaster with SIGKILL: stale postmaster.pid must not block ensure_running.
    let pid = std::fs::read_to_string(data.join("postmaster.pid"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_string();
    assert!(
        Command::new("kill")
            .args(["-9", &pid])
            .status()
            .unwrap()
            .success()
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    let t = Instant::now();
    let after_kill = embedded::ensure_running(&data).expect("ensure_running after SIGKILL");
    eprintln!(
        "ensure_running after SIGKILL took {:?}, port {}",
        t.elapsed(),
        after_kill.port
    );
    guard.0.push(after_kill.clone());
    assert_eq!(select1(&after_kill), "1");
    after_kill.stop(false).unwrap();
}

#[test]
fn not_a_cluster_and_default_dir() {
    let root = fresh_dir("notcluster");
    let _guard = Cleanup(vec![], root.clone());
    std::fs::write(root.join("junk"), "x").unwrap();
    let err = embedded::ensure_running(&root).unwrap_err();
    eprintln!("{err}");
    assert!(matches!(err, embedded::EmbeddedError::NotACluster { .. }));
    eprintln!(
        "default_data_dir = {}",
        embedded::default_data_dir().display()
    );
}

#[test]
fn root_pitfalls() {
    let as_root = String::from_utf8(Command::new("id").arg("-u").output().unwrap().stdout)
        .unwrap()
        .trim()
        == "0";
    if !as_root {
        return;
    }
    let dir = PathBuf::from(format!("/root/payrail-embtest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let err = embedded::start_throwaway(&dir.join("pg")).unwrap_err();
    eprintln!("{err}");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(matches!(err, embedded::EmbeddedError::Root(_)), "{err:?}");
}
