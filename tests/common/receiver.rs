//! Real sink endpoints for outbox tests: an HTTP webhook receiver (axum on a
//! real socket) that verifies signatures, and helpers for a unique NATS
//! JetStream stream per test.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use payrail::outbox::sinks::{self, Envelope};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The shared secret test webhooks are signed with.
pub const SECRET: &str = "test-secret-0123456789abcdef";

/// A webhook sink named `hook` to `url`, signed with [`SECRET`], for
/// every topic.
pub fn webhook(url: &str) -> payrail::config::SinkConfig {
    payrail::config::SinkConfig {
        name: "hook".into(),
        kind: payrail::config::SinkKind::Webhook,
        topics: vec!["*".into()],
        url: Some(url.into()),
        secret: Some(SECRET.into()),
        secret_env: None,
        subject_prefix: None,
        ca_file: None,
        path: None,
        timeout_ms: 2000,
    }
}

/// What the receiver saw.
#[derive(Default)]
pub struct Seen {
    /// Every accepted delivery, in arrival order (redeliveries included).
    pub deliveries: Mutex<Vec<Envelope>>,
    /// Requests refused for a bad signature.
    pub bad_signatures: AtomicU64,
    /// Requests answered 500 on purpose.
    pub injected_failures: AtomicU64,
    /// TLS handshakes that failed (the client refused the certificate).
    pub failed_handshakes: AtomicU64,
    /// Answer 500 to this many of every 1000 requests (deterministic per
    /// request count).
    pub fail_per_mille: AtomicU64,
    requests: AtomicU64,
}

impl Seen {
    /// Deliveries per event id.
    pub fn counts(&self) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for e in self.deliveries.lock().unwrap().iter() {
            *m.entry(e.event_id.clone()).or_insert(0) += 1;
        }
        m
    }
}

/// A webhook receiver listening on 127.0.0.1.
pub struct Receiver {
    /// URL to configure as the sink's `url`.
    pub url: String,
    /// What it saw.
    pub seen: Arc<Seen>,
}

async fn hook(State(seen): State<Arc<Seen>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let n = seen.requests.fetch_add(1, Ordering::Relaxed);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let sig = headers
        .get(sinks::SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if sinks::verify_signature(SECRET.as_bytes(), sig, &body, now, 300).is_err() {
        seen.bad_signatures.fetch_add(1, Ordering::Relaxed);
        return StatusCode::UNAUTHORIZED;
    }
    let rate = seen.fail_per_mille.load(Ordering::Relaxed);
    // a cheap deterministic hash of the request number
    if rate > 0 && (n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % 1000 < rate {
        seen.injected_failures.fetch_add(1, Ordering::Relaxed);
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    let env: Envelope = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(_) => return StatusCode::BAD_REQUEST,
    };
    let id_header = headers
        .get(sinks::EVENT_ID_HEADER)
        .and_then(|v| v.to_str().ok());
    assert_eq!(id_header, Some(env.event_id.as_str()));
    seen.deliveries.lock().unwrap().push(env);
    StatusCode::NO_CONTENT
}

impl Receiver {
    /// Starts a receiver on a free port.
    pub async fn start() -> Receiver {
        let seen = Arc::new(Seen::default());
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(hook))
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver {
            url: format!("http://{addr}/hook"),
            seen,
        }
    }

    /// Starts a receiver on a free port that speaks only HTTPS, presenting
    /// the certificate chain and key of these PEM files.
    pub async fn start_tls(cert_file: &std::path::Path, key_file: &std::path::Path) -> Receiver {
        let tls = payrail::tls::ServerTls::load(cert_file, key_file).unwrap();
        let seen = Arc::new(Seen::default());
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(hook))
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handshakes = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, app) = (tls.acceptor().clone(), app.clone());
                let seen = handshakes.clone();
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(tcp).await else {
                        seen.failed_handshakes.fetch_add(1, Ordering::Relaxed);
                        return;
                    };
                    let service = hyper::service::service_fn(move |req| {
                        use tower::ServiceExt;
                        app.clone().oneshot(req.map(axum::body::Body::new))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver {
            url: format!("https://{addr}/hook"),
            seen,
        }
    }
}

/// The NATS URL tests use: `NATS_URL` if set; else the default
/// nats://127.0.0.1:4222 if a server answers there; else a JetStream
/// nats-server this test setup starts itself (see [`start_local_nats`]).
pub fn nats_url() -> String {
    static URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(u) = std::env::var("NATS_URL")
            && !u.is_empty()
        {
            return u;
        }
        if answers("127.0.0.1:4222") {
            return "nats://127.0.0.1:4222".into();
        }
        start_local_nats()
    })
    .clone()
}

/// Whether something accepts TCP connections at `addr` (500 ms bound).
fn answers(addr: &str) -> bool {
    let addr: std::net::SocketAddr = addr.parse().expect("socket address");
    std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(500)).is_ok()
}

/// Starts (or reuses) a JetStream nats-server for tests on a free port,
/// shared by every test process through a state dir under the system temp
/// dir (port file + lock), like the local Postgres. It keeps running after
/// the tests, as the local Postgres does. Needs `nats-server` on PATH or in
/// /usr/sbin; fails with a clear message otherwise.
pub fn start_local_nats() -> String {
    let dir = std::env::temp_dir().join("payrail-test-nats");
    std::fs::create_dir_all(&dir).expect("nats state dir");
    let lock = std::fs::File::create(dir.join("lock")).expect("nats lock file");
    lock.lock().expect("lock the nats state dir");
    let port_file = dir.join("port");
    if let Ok(port) = std::fs::read_to_string(&port_file)
        && answers(&format!("127.0.0.1:{}", port.trim()))
    {
        return format!("nats://127.0.0.1:{}", port.trim());
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let binary = ["nats-server", "/usr/sbin/nats-server", "/usr/local/bin/nats-server"]
        .into_iter()
        .find(|b| {
            std::process::Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("no NATS server answers at 127.0.0.1:4222 and no nats-server binary was found: install nats-server or set NATS_URL");
    let mut child = std::process::Command::new(binary)
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(dir.join("store"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start nats-server");
    // The server outlives this test process on purpose; a waiting thread
    // reaps it should it exit while we run.
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    let addr = format!("127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !answers(&addr) {
        assert!(
            std::time::Instant::now() < deadline,
            "nats-server did not answer on {addr} within 10 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::fs::write(&port_file, port.to_string()).expect("write nats port file");
    format!("nats://{addr}")
}

/// A JetStream stream unique to one test, capturing `<prefix>>`.
pub struct TestStream {
    /// Stream name.
    pub name: String,
    /// Subject prefix to configure as the sink's `subject_prefix`.
    pub prefix: String,
    js: async_nats::jetstream::Context,
}

impl TestStream {
    /// Creates the stream (a nats-server with JetStream must answer at
    /// `NATS_URL`, default nats://127.0.0.1:4222).
    pub async fn create(tag: &str) -> TestStream {
        let id = format!("{tag}{:08x}", rand::random::<u32>());
        let client = async_nats::connect(nats_url())
            .await
            .expect("a nats-server with JetStream at NATS_URL (default nats://127.0.0.1:4222)");
        let js = async_nats::jetstream::new(client);
        let name = format!("PAYRAIL_TEST_{id}");
        let prefix = format!("ptest.{id}.");
        js.create_stream(async_nats::jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![format!("{prefix}>")],
            max_messages: 1_000_000,
            ..Default::default()
        })
        .await
        .expect("create stream");
        TestStream { name, prefix, js }
    }

    /// Every message's `Nats-Msg-Id` and body, in stream order.
    pub async fn messages(&self) -> Vec<(String, Envelope)> {
        let mut stream = self.js.get_stream(&self.name).await.unwrap();
        let info = stream.info().await.unwrap().state.clone();
        let mut out = Vec::new();
        if info.messages == 0 {
            return out;
        }
        for seq in info.first_sequence..=info.last_sequence {
            let m = stream.get_raw_message(seq).await.unwrap();
            let id = m
                .headers
                .get(async_nats::header::NATS_MESSAGE_ID)
                .map(|v| v.as_str().to_string())
                .unwrap_or_default();
            out.push((id, serde_json::from_slice(&m.payload).unwrap()));
        }
        out
    }

    /// Deletes the stream.
    pub async fn delete(self) {
        let _ = self.js.delete_stream(&self.name).await;
    }
}
