//! Replication and backups, on clusters of the test's own.
//!
//! A primary whose synchronous standby goes away under load
//! (`host/src/processor/commit.rs`). The attack: commits that wait for a
//! standby that is gone must neither be acknowledged (a timer cancelling the
//! wait makes Postgres report success for a commit no standby has) nor hang
//! the callers; new payments are refused until commits flow, and everything
//! resumes on its own when the standby is back. Every acknowledged payment
//! is in the ledger exactly once.

use crate::common::{OwnCluster, TestDb, server_command, transfer};
use payrail::Error;
use payrail::db::{self, SessionSettings};
use payrail::model::DEFAULT_TENANT;
use payrail::processor::ProcessorSettings;
use payrail_embedded_pg::LocalPostgres;
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn run_ok(mut c: Command, what: &str) {
    let out = c.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The embedded cluster's password file is its creator's (root here); a
/// base backup reads every file of the data directory.
fn backup_readable(pg: &LocalPostgres) {
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(&pg.data_dir).unwrap();
    let secret = pg.data_dir.join("payrail.password");
    std::os::unix::fs::chown(&secret, Some(owner.uid()), Some(owner.gid())).unwrap();
}

/// A streaming standby of `primary` in `dir`, started on a free port.
#[derive(Clone)]
struct Standby {
    primary: LocalPostgres,
    dir: PathBuf,
    port: u16,
}

impl Standby {
    fn create(primary: &LocalPostgres, dir: &Path) -> Standby {
        backup_readable(primary);
        let mut c = server_command(primary, "pg_basebackup");
        c.arg("-D")
            .arg(dir)
            .args(["-X", "stream", "-R", "-d"])
            .arg(format!(
                "host={} port={} user=postgres application_name=standby1",
                primary.data_dir.display(),
                primary.port
            ));
        run_ok(c, "pg_basebackup");
        let standby = Standby {
            primary: primary.clone(),
            dir: dir.to_path_buf(),
            port: free_port(),
        };
        standby.start();
        standby
    }

    fn start(&self) {
        let mut c = server_command(&self.primary, "pg_ctl");
        c.arg("start").arg("-w").arg("-D").arg(&self.dir).arg("-l");
        c.arg(self.dir.with_extension("log")).arg("-o").arg(format!(
            "-p {} -k {} -c listen_addresses=''",
            self.port,
            self.dir.display()
        ));
        run_ok(c, "pg_ctl start (standby)");
    }

    /// SIGKILL of the standby's postmaster (its children exit with it).
    fn kill(&self) {
        let pid = std::fs::read_to_string(self.dir.join("postmaster.pid")).unwrap();
        let pid = pid.lines().next().unwrap().trim();
        run_ok(
            {
                let mut c = Command::new("kill");
                c.args(["-KILL", pid]);
                c
            },
            "kill the standby",
        );
        // its postmaster.pid stays: wait until the process is gone
        let gone = Path::new("/proc").join(pid);
        let until = Instant::now() + Duration::from_secs(10);
        while gone.exists() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        // children linger a moment after the postmaster
        std::thread::sleep(Duration::from_millis(300));
    }

    fn stop(&self) {
        let mut c = server_command(&self.primary, "pg_ctl");
        c.args(["stop", "-m", "immediate", "-D"]).arg(&self.dir);
        let _ = c.output();
    }
}

/// What the clients saw.
#[derive(Default)]
struct Seen {
    /// key -> (payment id, when acknowledged)
    acked: HashMap<String, (String, Instant)>,
    unconfirmed: usize,
    stalled: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_synchronous_standby_stalls_commits_visibly_and_nothing_is_acknowledged_unreplicated()
 {
    let mut cluster = OwnCluster::start("repl").await;
    let primary = cluster.pg.clone();
    let standby = Standby::create(&primary, &cluster.root.join("standby"));
    cluster.extra.push(standby.dir.clone());
    let db = TestDb::new_on(primary.url()).await;
    {
        let c = db.pool.get().await.unwrap();
        c.batch_execute("alter system set synchronous_standby_names = 'standby1'")
            .await
            .unwrap();
        c.batch_execute("select pg_reload_conf()").await.unwrap();
    }
    db.samples().await;
    const ACCOUNTS: usize = 20;
    for i in 0..ACCOUNTS {
        db.account(&format!("a{i}"), 1_000_000).await;
    }
    // the statement timeout is shorter than the time the standby is gone:
    // it must not cut a commit's wait short (Postgres stops it before the
    // commit; a cancel would acknowledge an unreplicated commit)
    let processor = db.processor_with(ProcessorSettings {
        commit_wait_ms: 1_000,
        statement_timeout_ms: 2_000,
        ..ProcessorSettings::default()
    });
    wait_for_sync_standby(&db).await;

    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut clients = Vec::new();
    for client in 0..8 {
        let (p, stop, seen) = (processor.clone(), stop.clone(), seen.clone());
        clients.push(tokio::spawn(async move {
            let mut n = 0;
            loop {
                let key = format!("c{client}-{n}");
                let req = transfer(
                    &format!("a{}", (client * 7 + n) % ACCOUNTS),
                    &format!("a{}", (client * 3 + n + 1) % ACCOUNTS),
                    1,
                );
                // the same key until acknowledged: the client's retry
                loop {
                    match p.pay(DEFAULT_TENANT, &key, &req).await {
                        Ok(out) => {
                            let mut s = seen.lock().unwrap();
                            s.acked
                                .insert(key.clone(), (out.response.id, Instant::now()));
                            break;
                        }
                        Err(e) => {
                            {
                                let mut s = seen.lock().unwrap();
                                match e {
                                    Error::CommitUnconfirmed => s.unconfirmed += 1,
                                    Error::CommitsStalled { .. } => s.stalled += 1,
                                    _ => {}
                                }
                            }
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
                n += 1;
                if stop.load(Ordering::Relaxed) {
                    return;
                }
            }
        }));
    }

    tokio::time::sleep(Duration::from_secs(2)).await;
    let before_kill = seen.lock().unwrap().acked.len();
    assert!(
        before_kill > 10,
        "payments flow with the standby: {before_kill}"
    );
    let killed = {
        let s = standby.clone();
        tokio::task::spawn_blocking(move || s.kill()).await.unwrap();
        Instant::now()
    };
    // the stall is visible: callers answered, no new payments taken
    let until = Instant::now() + Duration::from_secs(10);
    while processor.commits_unconfirmed() == 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        processor.commits_unconfirmed() > 0,
        "a stalled commit is counted"
    );
    assert!(matches!(
        processor.commits_check(),
        Err(Error::CommitsStalled { .. })
    ));
    tokio::time::sleep(Duration::from_secs(4)).await;
    let restarted = Instant::now();
    {
        let s = seen.lock().unwrap();
        assert!(
            s.unconfirmed > 0,
            "callers of the stalled commit were answered"
        );
        assert!(s.stalled > 0, "new payments were refused while stalled");
        // a commit confirmed just before the kill may be acknowledged a
        // moment after it; nothing later while the standby is gone
        let window = killed + Duration::from_millis(500)..restarted;
        let during: Vec<_> = s
            .acked
            .iter()
            .filter(|(_, (_, at))| window.contains(at))
            .collect();
        assert!(
            during.is_empty(),
            "acknowledged without a standby: {during:?}"
        );
    }
    let s = standby.clone();
    tokio::task::spawn_blocking(move || s.start())
        .await
        .unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    while processor.commits_unconfirmed() > 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        processor.commits_unconfirmed(),
        0,
        "commits resume with the standby"
    );
    let resumed_at = seen.lock().unwrap().acked.len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        tokio::time::timeout(Duration::from_secs(60), c)
            .await
            .expect("clients finish")
            .unwrap();
    }
    standby.stop();

    let s = std::mem::take(&mut *seen.lock().unwrap());
    assert!(
        s.acked.len() > resumed_at,
        "payments flow again after the stall"
    );
    let c = db.pool.get().await.unwrap();
    let rows = c
        .query(
            "select id::text, idempotency_key from payrail.payments",
            &[],
        )
        .await
        .unwrap();
    let in_ledger: HashMap<String, String> = rows
        .iter()
        .map(|r| (r.get::<_, String>(1), r.get::<_, String>(0)))
        .collect();
    assert_eq!(rows.len(), in_ledger.len(), "no key applied twice");
    for (key, (id, _)) in &s.acked {
        assert_eq!(
            in_ledger.get(key),
            Some(id),
            "acknowledged {key} is in the ledger"
        );
    }
    assert_eq!(
        in_ledger.len(),
        s.acked.len(),
        "nothing applied that was not acknowledged"
    );
    assert!(db.audit().await.is_empty(), "the audit passes");
    eprintln!(
        "acknowledged {} ({} before the kill), callers answered commit_unconfirmed {} times, refused {} times",
        s.acked.len(),
        before_kill,
        s.unconfirmed,
        s.stalled
    );
}

/// Until the primary reports its standby as synchronous.
async fn wait_for_sync_standby(db: &TestDb) {
    let c = db.pool.get().await.unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let n: i64 = c
            .query_one(
                "select count(*) from pg_stat_replication where sync_state = 'sync'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if n > 0 {
            return;
        }
        assert!(
            Instant::now() < until,
            "the standby never became synchronous"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Base backup plus WAL archive, restored to a named point in time into a
/// new cluster: the payments before the point are there, none after, and
/// `payrail audit` and `payrail replay` pass on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base_backup_and_the_wal_archive_restore_to_a_point_in_time() {
    let mut cluster = OwnCluster::start("pitr").await;
    let (primary, root) = (cluster.pg.clone(), cluster.root.clone());
    let archive = root.join("archive");
    std::fs::create_dir_all(&archive).unwrap();
    std::fs::set_permissions(&archive, std::fs::Permissions::from_mode(0o777)).unwrap();
    let admin = db::connect(&primary.url(), &SessionSettings::default())
        .await
        .unwrap();
    admin
        .batch_execute("alter system set archive_mode = on")
        .await
        .unwrap();
    admin
        .batch_execute(&format!(
            "alter system set archive_command = 'test ! -f {0}/%f && cp %p {0}/%f'",
            archive.display()
        ))
        .await
        .unwrap();
    drop(admin);
    let p = primary.clone();
    tokio::task::spawn_blocking(move || {
        p.stop(false).unwrap();
        p.start().unwrap();
    })
    .await
    .unwrap();
    backup_readable(&primary);
    let base = root.join("base");
    let mut c = server_command(&primary, "pg_basebackup");
    c.arg("-D")
        .arg(&base)
        .args(["-X", "stream", "-d"])
        .arg(format!(
            "host={} port={} user=postgres",
            primary.data_dir.display(),
            primary.port
        ));
    run_ok(c, "pg_basebackup");

    let db = TestDb::new_on(primary.url()).await;
    db.samples().await;
    for i in 0..4 {
        db.account(&format!("a{i}"), 1_000_000).await;
    }
    let p = db.processor();
    let pay = |n: usize| {
        let p = p.clone();
        async move {
            for i in 0..n {
                let key = format!("k{}-{i}", rand::random::<u32>());
                p.pay(
                    DEFAULT_TENANT,
                    &key,
                    &transfer(&format!("a{}", i % 4), &format!("a{}", (i + 1) % 4), 1),
                )
                .await
                .unwrap();
            }
        }
    };
    pay(60).await;
    let c = db.pool.get().await.unwrap();
    let before: Vec<String> = ids(&c).await;
    let point: String = c
        .query_one(
            "select pg_walfile_name(pg_create_restore_point('payrail-test'))",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    pay(40).await;
    assert_eq!(ids(&c).await.len(), before.len() + 40);
    c.batch_execute("select pg_switch_wal()").await.unwrap();
    // until the segment holding the restore point is archived
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let last: Option<String> = c
            .query_one("select last_archived_wal from pg_stat_archiver", &[])
            .await
            .unwrap()
            .get(0);
        if last.is_some_and(|l| l.as_str() >= point.as_str()) {
            break;
        }
        assert!(
            Instant::now() < until,
            "the archiver did not archive {point}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // restore into a new cluster on another port
    let restored = root.join("restored");
    run_ok(
        {
            let mut c = Command::new("cp");
            c.arg("-a").arg(&base).arg(&restored);
            c
        },
        "copy the base backup",
    );
    std::fs::write(restored.join("recovery.signal"), "").unwrap();
    let mut conf = std::fs::OpenOptions::new()
        .append(true)
        .open(restored.join("postgresql.auto.conf"))
        .unwrap();
    use std::io::Write;
    writeln!(
        conf,
        "restore_command = 'cp {}/%f %p'\nrecovery_target_name = 'payrail-test'\n\
         recovery_target_action = 'promote'\narchive_mode = off",
        archive.display()
    )
    .unwrap();
    drop(conf);
    let port = free_port();
    let mut start = server_command(&primary, "pg_ctl");
    start
        .arg("start")
        .arg("-w")
        .arg("-D")
        .arg(&restored)
        .arg("-l");
    start
        .arg(restored.with_extension("log"))
        .arg("-o")
        .arg(format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1",
            restored.display()
        ));
    run_ok(start, "pg_ctl start (restored)");
    cluster.extra.push(restored.clone());
    let url = db
        .url
        .replace(&format!(":{}/", primary.port), &format!(":{port}/"));
    // the server answers once consistent, before it has replayed the test
    // database's creation: wait in `postgres` until recovery ends
    let server = db::url_with_database(&url, "postgres");
    let r = db::connect(&server, &SessionSettings::default())
        .await
        .unwrap();
    let until = Instant::now() + Duration::from_secs(60);
    while r
        .query_one("select pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get::<_, bool>(0)
    {
        assert!(
            Instant::now() < until,
            "the restored cluster never left recovery"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = db::connect(&url, &SessionSettings::default())
        .await
        .unwrap();
    assert_eq!(
        ids(&r).await,
        before,
        "exactly the payments before the restore point"
    );
    let bin = env!("CARGO_BIN_EXE_payrail");
    for args in [
        &["audit"][..],
        &["replay", "--since", "2000-01-01", "--until", "2100-01-01"][..],
    ] {
        let out = Command::new(bin)
            .args(args)
            .env("DATABASE_URL", &url)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "payrail {args:?} on the restored ledger: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The payments' ids, sorted.
async fn ids(c: &tokio_postgres::Client) -> Vec<String> {
    let mut ids: Vec<String> = c
        .query("select id::text from payrail.payments", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    ids.sort();
    ids
}

/// A demoted primary may keep its sessions and answer them read-only: the
/// pool must close such a connection, not hand it out again
/// (`TenantConnection::discard_if_read_only`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_answers_read_only_is_closed_not_pooled() {
    let cluster = OwnCluster::start("readonly").await;
    let pg = &cluster.pg;
    let db = TestDb::new_on(pg.url()).await;
    db.samples().await;
    db.account("a", 1_000).await;
    db.account("b", 0).await;
    let p = db.processor();
    p.pay(DEFAULT_TENANT, "before", &transfer("a", "b", 1))
        .await
        .expect("a payment on the primary");
    assert!(db.pool.status().size > 0, "connections are pooled");
    // the server turns read-only under its open sessions, as a demoted
    // primary that kept them
    let admin = db::connect(&pg.url(), &SessionSettings::default())
        .await
        .unwrap();
    reconfigure(
        &admin,
        "alter system set default_transaction_read_only = on",
    )
    .await;
    for i in 0..4 {
        let e = p
            .pay(DEFAULT_TENANT, &format!("ro-{i}"), &transfer("a", "b", 1))
            .await
            .expect_err("a read-only server takes no payment");
        assert_eq!(
            e.sqlstate(),
            Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION),
            "{e}"
        );
    }
    // the test's own helpers hold none: every connection the processor used
    // answered read-only and was closed
    assert_eq!(
        db.pool.status().size,
        0,
        "no read-only connection stays pooled"
    );
    reconfigure(&admin, "alter system reset default_transaction_read_only").await;
    p.pay(DEFAULT_TENANT, "after", &transfer("a", "b", 1))
        .await
        .expect("payments resume on new connections");
}

/// `alter system ...`, then the server reloads its configuration (every
/// session takes it at its next command).
async fn reconfigure(admin: &tokio_postgres::Client, alter: &str) {
    admin.batch_execute(alter).await.unwrap();
    admin
        .batch_execute("select pg_reload_conf()")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
}
