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

/// What the receiver saw.
#[derive(Default)]
pub struct Seen {
    /// Every accepted delivery, in arrival order (redeliveries included).
    pub deliveries: Mutex<Vec<Envelope>>,
    /// Requests refused for a bad signature.
    pub bad_signatures: AtomicU64,
    /// Requests answered 500 on purpose.
    pub injected_failures: AtomicU64,
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
}

/// The NATS URL tests use.
pub fn nats_url() -> String {
    std::env::var("NATS_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "nats://127.0.0.1:4222".into())
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
