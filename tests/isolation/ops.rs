//! Attacks: ops (see main.rs). What an operator's configuration, logs, the
//! outbox table and the embedded database expose, and what a stuck host can
//! hold: secrets never printed or stored, no silent throwaway database, an
//! owner-only embedded cluster, timeouts on every session, a relay lease
//! that outlasts a delivery round, a file sink that never glues an event
//! onto a half-written line.

#[allow(unused_imports)]
use super::*;
use payrail::config::Config;
use payrail::db::{self, SessionSettings};
use payrail_embedded_pg as embedded;
use std::process::Output;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_payrail")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("payrail-ops-{tag}-{:08x}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A 127.0.0.1 port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `url` with `password` in its userinfo (user `postgres` if it had none).
fn with_password(url: &str, password: &str) -> String {
    let (head, rest) = url.split_once("://").unwrap();
    let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(auth_end);
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let user = authority
        .rsplit_once('@')
        .map(|(u, _)| u.split(':').next().unwrap())
        .unwrap_or("postgres");
    format!("{head}://{user}:{password}@{hostport}{tail}")
}

/// A unique planted secret.
fn plant(tag: &str) -> String {
    format!("{tag}{:016x}", rand::random::<u64>())
}

/// Every text column of every outbox row, as JSON lines.
async fn outbox_text(db: &common::TestDb) -> String {
    let c = db.pool.get().await.unwrap();
    c.query_one(
        "select coalesce(string_agg(row_to_json(o)::text, E'\\n'), '') from payrail.outbox o",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

/// Item 7: secrets planted in a webhook URL's userinfo and query string, a
/// NATS URL's user:password and token, the database URL's password and the
/// webhook secret appear in nothing the host prints (`--check-config`,
/// serve's stdout and logs with every delivery failing) nor in any column
/// of `payrail.outbox` (`last_error` quotes the failing sinks).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn planted_secrets_reach_no_output_and_no_outbox_column() {
    let db = common::TestDb::new().await;
    let hook_pw = plant("hookpw");
    let hook_qs = plant("hookqs");
    let hook_pw2 = plant("hookpwb");
    let hook_qs2 = plant("hookqsb");
    let hook_secret = plant("whsec");
    let nats_pw = plant("natspw");
    let nats_token = plant("natstok");
    // the embedded cluster's real password, or one a trust server ignores
    let pg: tokio_postgres::Config = db.url.parse().unwrap();
    let db_pw = match pg.get_password() {
        Some(p) => String::from_utf8(p.to_vec()).unwrap(),
        None => plant("dbpw"),
    };
    let db_url = with_password(&db.url, &db_pw);
    let receiver = common::receiver::Receiver::start().await; // refuses our secret: 401
    let rx = receiver.url.strip_prefix("http://").unwrap();
    let closed = closed_port();
    let config = format!(
        r#"
[outbox]
poll_interval_ms = 20
backoff_base_ms = 50
backoff_max_ms = 200
batch_size = 10
concurrency = 10
lease_ms = 10000
[[sinks]]
name = "hook-closed"
type = "webhook"
topics = ["*"]
url = "http://hookuser:{hook_pw}@127.0.0.1:{closed}/h?token={hook_qs}"
secret = "{hook_secret}"
timeout_ms = 1000
[[sinks]]
name = "hook-401"
type = "webhook"
topics = ["*"]
url = "http://hookuser:{hook_pw2}@{rx}?sig={hook_qs2}"
secret = "{hook_secret}"
timeout_ms = 1000
[[sinks]]
name = "nats-password"
type = "nats"
topics = ["*"]
url = "nats://natsuser:{nats_pw}@127.0.0.1:{closed}"
timeout_ms = 1000
[[sinks]]
name = "nats-token"
type = "nats"
topics = ["*"]
url = "nats://{nats_token}@127.0.0.1:{closed}"
timeout_ms = 1000
"#
    );
    let secrets = [
        &hook_pw,
        &hook_qs,
        &hook_pw2,
        &hook_qs2,
        &hook_secret,
        &nats_pw,
        &nats_token,
        &db_pw,
    ];
    let assert_clean = |what: &str, text: &str| {
        for s in secrets {
            assert!(
                !text.contains(s.as_str()),
                "{what} holds a planted secret {s}:\n{text}"
            );
        }
    };

    let dir = temp_dir("secrets");
    let cfg = dir.join("payrail.toml");
    std::fs::write(&cfg, &config).unwrap();
    let out = Command::new(bin())
        .args(["serve", "--check-config", "--config"])
        .arg(&cfg)
        .env("DATABASE_URL", &db_url)
        .output()
        .unwrap();
    let checked = text(&out);
    assert!(out.status.success(), "{checked}");
    assert!(
        checked.contains("hookuser:***@") && checked.contains("token=***"),
        "{checked}"
    );
    assert_clean("serve --check-config", &checked);

    let serve = Serve::start_on(db, &config, &[("DATABASE_URL", &db_url)]).await;
    let t = serve.tenant("acme").await;
    let (s, b) = serve.pay(&t.pay, "secret-pay-1", transfer(100)).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    // wait until the relay has tried (and failed) at least twice
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let c = serve.db.pool.get().await.unwrap();
        let n: i64 = c
            .query_one(
                "select count(*) from payrail.outbox where last_error is not null and attempts >= 2",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if n > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no failed delivery recorded:\n{}",
            serve.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stored = outbox_text(&serve.db).await;
    for sink in ["hook-closed", "hook-401", "nats-password", "nats-token"] {
        assert!(stored.contains(sink), "last_error names {sink}: {stored}");
    }
    assert!(stored.contains("HTTP 401"), "{stored}");
    assert_clean("payrail.outbox", &stored);
    let printed = serve.output();
    assert!(printed.contains("outbox delivery failed"), "{printed}");
    assert_clean("serve's output", &printed);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Item 8: `serve` and `relay` without a database refuse to start, naming
/// DATABASE_URL and --embedded-db; --embedded-db next to a URL is refused.
#[test]
fn serve_and_relay_refuse_to_start_without_a_database() {
    let dir = temp_dir("nodb");
    let cfg = dir.join("payrail.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[sinks]]\nname = \"f\"\ntype = \"file\"\ntopics = [\"*\"]\npath = {:?}\n",
            dir.join("events.jsonl").display().to_string()
        ),
    )
    .unwrap();
    for args in [
        vec!["serve", "--listen", "127.0.0.1:0"],
        vec!["serve", "--check-config"],
        vec!["relay", "--config", cfg.to_str().unwrap()],
    ] {
        let out = Command::new(bin())
            .args(&args)
            .env_remove("DATABASE_URL")
            .env_remove("PAYRAIL_CONFIG")
            .output()
            .unwrap();
        let said = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {said}");
        assert!(
            said.contains("database_required")
                && said.contains("DATABASE_URL")
                && said.contains("--embedded-db"),
            "{args:?}: {said}"
        );
    }
    let out = Command::new(bin())
        .args(["serve", "--check-config", "--embedded-db"])
        .env("DATABASE_URL", "postgres://u:conflictpw@127.0.0.1:1/x")
        .output()
        .unwrap();
    let said = text(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(
        said.contains("both given") && !said.contains("conflictpw"),
        "{said}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Item 8: with --embedded-db, `serve` runs on the local cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_on_the_embedded_db_when_asked() {
    let mut child = Command::new(bin())
        .args([
            "serve",
            "--embedded-db",
            "--migrate",
            "--listen",
            "127.0.0.1:0",
        ])
        .env_remove("DATABASE_URL")
        .env_remove("PAYRAIL_CONFIG")
        .env("PAYRAIL_CACHE_DIR", "off")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let base = loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(addr) = line.strip_prefix("payrail listening on ") {
                    break addr.to_string();
                }
            }
            _ => {
                let _ = child.kill();
                panic!("serve --embedded-db did not start: {:?}", child.wait());
            }
        }
    };
    let status = reqwest::get(format!("{base}/healthz"))
        .await
        .map(|r| r.status());
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(status.unwrap(), StatusCode::OK);
}

/// Connects (no TLS) and runs `select 1`.
async fn can_connect(url: &str) -> Result<(), String> {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("{e:?}"))?;
    tokio::spawn(conn);
    c.simple_query("select 1")
        .await
        .map_err(|e| format!("{e:?}"))?;
    Ok(())
}

/// Item 8: the embedded cluster accepts only its owner over TCP (its
/// password, role postgres); a cluster an earlier payrail made with trust
/// (reproduced here: the attack works on it) is locked at the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_cluster_accepts_only_its_owner() {
    use std::os::unix::fs::PermissionsExt;
    let root = temp_dir("embedded");
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = root.join("data");
    let d = data.clone();
    let pg = tokio::task::spawn_blocking(move || embedded::start_throwaway(&d))
        .await
        .unwrap()
        .expect("start_throwaway");
    struct Stop(embedded::LocalPostgres, PathBuf);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = self.0.stop(true);
            let _ = std::fs::remove_dir_all(&self.1);
        }
    }
    let mut guard = Stop(pg.clone(), root.clone());
    let port = pg.port;
    let anonymous = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    can_connect(&pg.url()).await.expect("the owner connects");
    assert!(
        !format!("{pg:?}").contains(&pg.url()[20..40]),
        "Debug hides the password"
    );
    let refused = can_connect(&anonymous).await.unwrap_err();
    assert!(refused.contains("password"), "{refused}");
    let wrong = format!("postgres://postgres:wrong@127.0.0.1:{port}/postgres");
    assert!(
        can_connect(&wrong).await.is_err(),
        "a wrong password is refused"
    );
    // another role, even with its own right password
    let admin = db::connect(&pg.url(), &SessionSettings::default())
        .await
        .unwrap();
    admin
        .batch_execute("create role intruder login password 'intruder-pw'")
        .await
        .unwrap();
    let intruder = format!("postgres://intruder:intruder-pw@127.0.0.1:{port}/postgres");
    assert!(
        can_connect(&intruder).await.is_err(),
        "only the owner's role connects over TCP"
    );
    let mode = std::fs::metadata(data.join("payrail.password"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o077,
        0,
        "the password file is the owner's alone: {mode:o}"
    );

    // a cluster of an earlier payrail: trust for everyone, no password file
    std::fs::write(
        data.join("pg_hba.conf"),
        "local all all trust\nhost all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n",
    )
    .unwrap();
    std::fs::remove_file(data.join("payrail.password")).unwrap();
    admin
        .batch_execute("select pg_reload_conf()")
        .await
        .unwrap();
    drop(admin);
    tokio::time::sleep(Duration::from_millis(300)).await;
    can_connect(&anonymous)
        .await
        .expect("the old trust cluster lets anyone in");
    let d = data.clone();
    let migrated = tokio::task::spawn_blocking(move || embedded::ensure_running(&d))
        .await
        .unwrap()
        .expect("ensure_running migrates the old cluster");
    guard.0 = migrated.clone();
    assert_eq!(migrated.port, port, "migrated in place, not restarted");
    tokio::time::sleep(Duration::from_millis(300)).await;
    can_connect(&migrated.url())
        .await
        .expect("the owner connects with the new password");
    assert!(
        can_connect(&anonymous).await.is_err(),
        "no password: refused after the migration"
    );
    assert!(can_connect(&intruder).await.is_err());
    assert_ne!(migrated.url(), pg.url(), "a fresh password");
}

/// Item 11: every session of the host starts with `statement_timeout` and
/// `idle_in_transaction_session_timeout`: pooled connections (the pool of
/// serve and relay, `Config::pool`) and direct ones (`db::connect`); a
/// session of the host left idle in a transaction is ended by Postgres.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_host_session_has_statement_and_idle_timeouts() {
    let db = common::TestDb::new().await;
    let config = Config::from_toml(
        "[database]\nstatement_timeout_ms = 1234\nidle_in_transaction_timeout_ms = 23456\n\
         [plugins.limits]\ntimeout_ms = 100\n[plugins.max_limits]\ntimeout_ms = 100\n",
    )
    .unwrap();
    config.validate().unwrap();
    let show = |c: tokio_postgres::Client| async move {
        let a: String = c
            .query_one("show statement_timeout", &[])
            .await
            .unwrap()
            .get(0);
        let b: String = c
            .query_one("show idle_in_transaction_session_timeout", &[])
            .await
            .unwrap()
            .get(0);
        (a, b)
    };
    let pool = config.pool(&db.url).unwrap();
    let pooled = pool.get().await.unwrap();
    let c: &tokio_postgres::Client = &pooled;
    let a: String = c
        .query_one("show statement_timeout", &[])
        .await
        .unwrap()
        .get(0);
    let b: String = c
        .query_one("show idle_in_transaction_session_timeout", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!((a.as_str(), b.as_str()), ("1234ms", "23456ms"), "pooled");
    let direct = db::connect(&db.url, &config.session()).await.unwrap();
    assert_eq!(
        show(direct).await,
        ("1234ms".into(), "23456ms".into()),
        "direct"
    );
    // the default pool (tests, bench, one-shot commands) has them too
    let default = db.pool.get().await.unwrap();
    let d: String = default
        .query_one("show statement_timeout", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(d, "30s");

    let short = SessionSettings {
        statement_timeout_ms: 300,
        idle_in_transaction_timeout_ms: 300,
    };
    let stuck = db::pool_with(&db.url, 2, &short).unwrap();
    let mut c = stuck.get().await.unwrap();
    let e = c.simple_query("select pg_sleep(2)").await.unwrap_err();
    assert_eq!(
        e.code(),
        Some(&tokio_postgres::error::SqlState::QUERY_CANCELED),
        "{e}"
    );
    let tx = c.transaction().await.unwrap();
    tx.execute("select 1", &[]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let e = tx.execute("select 1", &[]).await.unwrap_err();
    eprintln!("idle in transaction: {e}");
    // the host's session is gone: Postgres ended it
    let c2 = db.pool.get().await.unwrap();
    let idle: i64 = c2
        .query_one(
            "select count(*) from pg_stat_activity where datname = current_database() and state like 'idle in transaction%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(idle, 0);

    // an idle-in-transaction timeout below a pipeline's worst case is refused
    let e = Config::from_toml("[database]\nidle_in_transaction_timeout_ms = 1000\n")
        .unwrap()
        .validate()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("database.idle_in_transaction_timeout_ms = 1000"),
        "{e}"
    );
}

/// Item 11: `serve` and `relay` refuse a lease shorter than a worst-case
/// delivery round, with the arithmetic in the message.
#[test]
fn a_lease_shorter_than_a_delivery_round_is_refused() {
    let dir = temp_dir("lease");
    let cfg = dir.join("payrail.toml");
    let sink = format!(
        "[[sinks]]\nname = \"f\"\ntype = \"file\"\ntopics = [\"*\"]\npath = {:?}\n",
        dir.join("e.jsonl").display().to_string()
    );
    std::fs::write(&cfg, format!("[outbox]\nlease_ms = 30000\n{sink}")).unwrap();
    for args in [
        vec!["serve", "--check-config", "--config"],
        vec!["relay", "--config"],
    ] {
        let out = Command::new(bin())
            .args(&args)
            .arg(&cfg)
            .env("DATABASE_URL", "postgres://u@127.0.0.1:1/x")
            .output()
            .unwrap();
        let said = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {said}");
        assert!(
            said.contains("outbox.lease_ms = 30000")
                && said.contains("timeout_ms (5000) x ceil(batch_size 100 / concurrency 16)")
                && said.contains("= 37000 ms"),
            "{args:?}: {said}"
        );
    }
    std::fs::write(&cfg, format!("[outbox]\nlease_ms = 37000\n{sink}")).unwrap();
    let out = Command::new(bin())
        .args(["serve", "--check-config", "--config"])
        .arg(&cfg)
        .env("DATABASE_URL", "postgres://u@127.0.0.1:1/x")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Item 11: a file sink whose file ends in a half-written line (a host
/// killed mid-write) cuts it before appending: every line parses.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_sink_never_appends_to_a_half_written_line() {
    let dir = temp_dir("filesink");
    let file = dir.join("events.jsonl");
    std::fs::write(
        &file,
        "{\"event_id\":\"earlier\"}\n{\"event_id\":\"killed-mid-wr",
    )
    .unwrap();
    let serve = Serve::start(&format!(
        "[outbox]\npoll_interval_ms = 20\n[[sinks]]\nname = \"f\"\ntype = \"file\"\ntopics = [\"*\"]\npath = {:?}\n",
        file.display().to_string()
    ))
    .await;
    let t = serve.tenant("acme").await;
    let (s, b) = serve.pay(&t.pay, "file-pay-1", transfer(100)).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let id = b["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = std::fs::read_to_string(&file).unwrap();
        if text.contains(&id) {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "not delivered: {text}\n{}",
            serve.output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        text.starts_with("{\"event_id\":\"earlier\"}\n") && !text.contains("killed-mid"),
        "{text}"
    );
    for line in text.lines() {
        serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
    }
    drop(serve);
    std::fs::remove_dir_all(&dir).unwrap();
}
