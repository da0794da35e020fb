//! Traces that leave the process: `payrail serve` exports its spans over
//! OTLP/HTTP to a receiver here, continues the caller's trace from its
//! `traceparent` header, and hands that trace on in the outbox envelope
//! of the payment's event.

use crate::common::receiver::{Receiver, SECRET};
use crate::common::{ServeChild, TestDb};
use axum::body::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One exported span: name, trace id, span id and parent span id (hex).
#[derive(Debug, Clone)]
struct Exported {
    name: String,
    trace_id: String,
    parent_span_id: String,
}

/// An OTLP/HTTP receiver on a free port: every span posted to
/// `/v1/traces`, decoded.
async fn otlp_receiver() -> (String, Arc<Mutex<Vec<Exported>>>) {
    let seen: Arc<Mutex<Vec<Exported>>> = Arc::default();
    let sink = seen.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: Bytes| {
            let sink = sink.clone();
            async move {
                let req = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                let mut seen = sink.lock().unwrap();
                for rs in req.resource_spans {
                    for ss in rs.scope_spans {
                        for s in ss.spans {
                            seen.push(Exported {
                                name: s.name,
                                trace_id: hex::encode(s.trace_id),
                                parent_span_id: hex::encode(s.parent_span_id),
                            });
                        }
                    }
                }
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_receiver_and_the_trace_reaches_the_event() {
    let db = TestDb::new().await;
    let key = db.ready_to_pay().await;
    let (collector, spans) = otlp_receiver().await;
    let hooks = Receiver::start().await;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_payrail"));
    cmd.arg("serve")
        .env_remove("PAYRAIL_LISTEN")
        .env("DATABASE_URL", &db.url)
        .env("PAYRAIL_SERVER__LISTEN", "127.0.0.1:0")
        .env("PAYRAIL_LOG__OTLP_ENDPOINT", &collector)
        .env("PAYRAIL_OUTBOX__POLL_INTERVAL_MS", "50")
        .env(
            "PAYRAIL_SINKS",
            format!(
                r#"[{{name = "hook", type = "webhook", topics = ["payment.*"], url = "{}", secret = "{SECRET}"}}]"#,
                hooks.url
            ),
        );
    let mut serve = ServeChild::spawn(cmd);

    // the caller's trace
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let r = reqwest::Client::new()
        .post(format!("{}/v1/payments", serve.base))
        .bearer_auth(&key)
        .header("idempotency-key", "traced")
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .json(&serde_json::json!({"kind": "transfer", "source": "alice", "destination": "bob", "amount": 500, "currency": "EUR"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    // the event carries the trace on
    let start = Instant::now();
    let envelope = loop {
        if let Some(e) = hooks.seen.deliveries.lock().unwrap().first().cloned() {
            break e;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no event delivered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let traceparent = envelope
        .traceparent
        .expect("the envelope carries a traceparent");
    assert!(
        traceparent.starts_with(&format!("00-{trace_id}-")),
        "{traceparent} is not in the caller's trace"
    );
    assert!(
        !traceparent.contains(caller_span),
        "the payment's own span, not the caller's"
    );

    // SIGTERM: the last spans are sent before the process exits
    serve.signal("-TERM");
    let start = Instant::now();
    while serve.running() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "serve did not stop"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let spans = spans.lock().unwrap().clone();
    let names: std::collections::BTreeSet<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    for name in [
        "request",
        "payment",
        "lock",
        "plugin_call",
        "relay_delivery",
    ] {
        assert!(names.contains(name), "no {name} span among {names:?}");
    }
    let request = spans
        .iter()
        .find(|s| s.name == "request" && s.trace_id == trace_id)
        .unwrap_or_else(|| panic!("no request span in the caller's trace: {spans:?}"));
    assert_eq!(
        request.parent_span_id, caller_span,
        "the request continues the caller's span"
    );
    for name in ["payment", "plugin_call", "relay_delivery"] {
        assert!(
            spans
                .iter()
                .any(|s| s.name == name && s.trace_id == trace_id),
            "no {name} span in the payment's trace: {spans:?}"
        );
    }
}
