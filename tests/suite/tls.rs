//! TLS at both ends of payrail, over real sockets: webhooks to HTTPS
//! receivers (the attacks first: a certificate from a CA the sink does not
//! trust, one for another name), and `payrail serve` terminating TLS
//! itself, its certificate rotated by SIGHUP and by a change of the files.
//! Then a sink configured by the environment alone.

use crate::common::certs::{client_trusting, first_der, make_ca, make_cert};
use crate::common::receiver::{Receiver, SECRET, webhook};
use crate::common::{ServeChild, TestDb};
use payrail::config::SinkConfig;
use payrail::outbox::sinks::{Delivered, Envelope, Sink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("payrail-{tag}-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn https_sink(url: &str, ca_file: Option<PathBuf>) -> Sink {
    Sink::new(&SinkConfig {
        ca_file,
        timeout_ms: 3000,
        ..webhook(url)
    })
    .unwrap()
}

fn event() -> (Envelope, Vec<u8>) {
    let env = Envelope {
        event_id: uuid::Uuid::new_v4().to_string(),
        topic: "payment.approved".into(),
        key: "p-1".into(),
        tenant: "default".into(),
        sequence: 1,
        created_at_ms: 0,
        payload: serde_json::json!({"amount": 1}),
        traceparent: None,
    };
    let body = serde_json::to_vec(&env).unwrap();
    (env, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_webhook_is_delivered_and_an_untrusted_or_misnamed_certificate_refused() {
    let dir = scratch("hook-tls");
    make_ca(&dir, "ca");
    make_ca(&dir, "other-ca");
    make_cert(&dir, "hook", "ca", "IP:127.0.0.1,DNS:localhost");
    make_cert(&dir, "forged", "other-ca", "IP:127.0.0.1");
    make_cert(&dir, "misnamed", "ca", "DNS:elsewhere.example");
    let ca = dir.join("ca.crt");
    let receiver = |name: &str| {
        let (cert, key) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        async move { Receiver::start_tls(&cert, &key).await }
    };
    let (good, forged, misnamed) = (
        receiver("hook").await,
        receiver("forged").await,
        receiver("misnamed").await,
    );
    let (env, body) = event();

    // the attacks: another CA's certificate, a certificate for another name
    let e = https_sink(&forged.url, Some(ca.clone()))
        .deliver(&env, &body)
        .await
        .unwrap_err();
    assert!(e.contains("UnknownIssuer"), "{e}");
    let e = https_sink(&misnamed.url, Some(ca.clone()))
        .deliver(&env, &body)
        .await
        .unwrap_err();
    assert!(e.contains("not valid for name"), "{e}");
    // without ca_file the sink trusts the system's roots, not a private CA
    let e = https_sink(&good.url, None)
        .deliver(&env, &body)
        .await
        .unwrap_err();
    assert!(e.contains("UnknownIssuer"), "{e}");
    for r in [&forged, &misnamed] {
        assert!(r.seen.deliveries.lock().unwrap().is_empty());
        assert!(r.seen.failed_handshakes.load(Ordering::Relaxed) >= 1);
    }
    assert!(good.seen.deliveries.lock().unwrap().is_empty());

    // the real endpoint, its CA configured: delivered and signed
    let d = https_sink(&good.url, Some(ca.clone()))
        .deliver(&env, &body)
        .await;
    assert_eq!(d, Ok(Delivered::Ok));
    assert_eq!(good.seen.deliveries.lock().unwrap().as_slice(), &[env]);
    assert_eq!(good.seen.bad_signatures.load(Ordering::Relaxed), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The certificate the server at `addr` presents to a client trusting `ca`.
async fn presented(addr: &str, ca: &Path) -> Result<Vec<u8>, String> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_trusting(ca)));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    Ok(tls.get_ref().1.peer_certificates().unwrap()[0].to_vec())
}

/// Puts `name`'s pair where the server reads its certificate, each file
/// by an atomic rename.
fn install(dir: &Path, name: &str) {
    for ext in ["key", "crt"] {
        let tmp = dir.join(format!("api.{ext}.tmp"));
        std::fs::copy(dir.join(format!("{name}.{ext}")), &tmp).unwrap();
        std::fs::rename(&tmp, dir.join(format!("api.{ext}"))).unwrap();
    }
}

async fn wait_for_certificate(addr: &str, ca: &Path, want: &[u8], within: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < within {
        if presented(addr, ca).await.as_deref() == Ok(want) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_terminates_tls_and_reloads_its_certificate_on_sighup_and_on_change() {
    let db = TestDb::new().await;
    let dir = scratch("serve-tls");
    make_ca(&dir, "ca");
    make_ca(&dir, "other-ca");
    for name in ["first", "second", "third"] {
        make_cert(&dir, name, "ca", "IP:127.0.0.1");
    }
    install(&dir, "first");
    let ca = dir.join("ca.crt");
    let cfg = dir.join("payrail.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server.tls]\ncert_file = {:?}\nkey_file = {:?}\n",
            dir.join("api.crt"),
            dir.join("api.key")
        ),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_payrail"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&cfg)
        .env("DATABASE_URL", &db.url);
    let mut serve = ServeChild::spawn(cmd);
    let addr = serve
        .base
        .strip_prefix("https://")
        .expect("serve says https")
        .to_string();

    // a client that trusts another CA is refused; one that trusts ours gets
    // answers over HTTPS
    let e = presented(&addr, &dir.join("other-ca.crt"))
        .await
        .unwrap_err();
    assert!(e.contains("UnknownIssuer"), "{e}");
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(client_trusting(&ca))
        .build()
        .unwrap();
    let r = http
        .get(format!("https://{addr}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        presented(&addr, &ca).await.unwrap(),
        first_der(&dir.join("first.crt"))
    );

    // rotation by SIGHUP
    install(&dir, "second");
    serve.signal("-HUP");
    let second = first_der(&dir.join("second.crt"));
    assert!(
        wait_for_certificate(&addr, &ca, &second, Duration::from_secs(10)).await,
        "SIGHUP did not rotate the certificate"
    );
    // rotation by a change of the files alone
    install(&dir, "third");
    let third = first_der(&dir.join("third.crt"));
    assert!(
        wait_for_certificate(&addr, &ca, &third, Duration::from_secs(15)).await,
        "a change of the files did not rotate the certificate"
    );
    // a broken rotation (a key that is not the certificate's) keeps the
    // certificate served, and the server up
    std::fs::copy(dir.join("first.key"), dir.join("api.key")).unwrap();
    serve.signal("-HUP");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(presented(&addr, &ca).await.unwrap(), third);
    assert!(serve.running());
    assert!(
        serve.logs.lock().unwrap().contains("did not reload"),
        "{}",
        serve.logs.lock().unwrap()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The ways `serve` could read a sink: here none but the environment. The
/// check says where each value came from and hides the secret; then a
/// payment's event reaches the receiver the variables name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_configured_by_the_environment_alone_delivers() {
    let db = TestDb::new().await;
    let key = db.ready_to_pay().await;
    let rx = Receiver::start().await;
    let sinks = format!(
        r#"[{{name = "hook", type = "webhook", topics = ["payment.*"], url = "{}", secret = "{SECRET}"}}]"#,
        rx.url
    );
    let command = |extra: &[(&str, &str)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_payrail"));
        cmd.arg("serve")
            .env_remove("PAYRAIL_LISTEN")
            .env_remove("PAYRAIL_CONFIG")
            .env("DATABASE_URL", &db.url)
            .env("PAYRAIL_SERVER__LISTEN", "127.0.0.1:0")
            .env("PAYRAIL_SINKS", &sinks)
            .env("PAYRAIL_OUTBOX__POLL_INTERVAL_MS", "50");
        for (k, v) in extra {
            cmd.env(k, v);
        }
        cmd
    };

    let out = command(&[]).arg("--check-config").output().unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "sinks = environment variable PAYRAIL_SINKS",
        "outbox.poll_interval_ms = environment variable PAYRAIL_OUTBOX__POLL_INTERVAL_MS",
        "server.listen = environment variable PAYRAIL_SERVER__LISTEN",
        "database.url = --database-url (or DATABASE_URL)",
        "server.request_timeout_ms = default",
    ] {
        assert!(printed.contains(line), "missing {line:?} in:\n{printed}");
    }
    assert!(
        !printed.contains(SECRET),
        "the secret was printed:\n{printed}"
    );
    // a variable naming no section is an error, not silently ignored
    let out = command(&[("PAYRAIL_SERVR__LISTEN", "127.0.0.1:1")])
        .arg("--check-config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("PAYRAIL_SERVR__LISTEN"), "{stderr}");

    let serve = ServeChild::spawn(command(&[]));
    let r = reqwest::Client::new()
        .post(format!("{}/v1/payments", serve.base))
        .bearer_auth(&key)
        .header("idempotency-key", "env-only")
        .json(&serde_json::json!({"kind": "transfer", "source": "alice", "destination": "bob", "amount": 500, "currency": "EUR"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let start = Instant::now();
    while rx.seen.deliveries.lock().unwrap().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no event reached the sink:\n{}",
            serve.logs.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let topic = rx.seen.deliveries.lock().unwrap()[0].topic.clone();
    assert!(topic.starts_with("payment."), "{topic}");
    assert_eq!(rx.seen.bad_signatures.load(Ordering::Relaxed), 0);
}
