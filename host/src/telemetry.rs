//! Traces that leave the process: the `tracing` spans of requests,
//! payments, account locks, plugin calls and relay deliveries, exported
//! over OTLP (HTTP/protobuf) when `[log] otlp_endpoint` names a collector;
//! and the W3C `traceparent` that joins a request to the events it caused
//! (docs/operations.md, "Traces").
//!
//! Cost when off: nothing (no layer, no exporter). When on: each span is
//! recorded by `tracing-opentelemetry` and queued; a batch processor thread
//! of the SDK sends the queue every [`EXPORT_DELAY_MS`], so a slow or absent
//! collector never holds a payment (a full queue drops spans, not work).

use crate::error::{Error, Result};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use std::collections::HashMap;
use std::time::Duration;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// How long spans wait in the queue before a batch is sent.
pub const EXPORT_DELAY_MS: u64 = 1_000;
/// Longest one export may take.
pub const EXPORT_TIMEOUT_MS: u64 = 5_000;
/// Spans queued at most; beyond, new spans are dropped.
pub const MAX_QUEUED_SPANS: usize = 8_192;
/// The W3C header (and the outbox envelope's field).
pub const TRACEPARENT: &str = "traceparent";

/// The OTLP exporter of this process; [`Exporter::shutdown`] sends what is
/// queued.
pub struct Exporter {
    provider: SdkTracerProvider,
}

impl Exporter {
    /// An exporter to the collector at `endpoint` (`http://host:4318`;
    /// traces go to `/v1/traces`), naming this process `service`.
    pub fn start(endpoint: &str, service: &str) -> Result<Exporter> {
        let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(url)
            .with_timeout(Duration::from_millis(EXPORT_TIMEOUT_MS))
            .build()
            .map_err(|e| Error::Setup(format!("log.otlp_endpoint {endpoint}: {e}")))?;
        let batch = BatchConfigBuilder::default()
            .with_scheduled_delay(Duration::from_millis(EXPORT_DELAY_MS))
            .with_max_queue_size(MAX_QUEUED_SPANS)
            .build();
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(batch)
            .build();
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(service.to_string())
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(resource)
            .build();
        Ok(Exporter { provider })
    }

    /// The `tracing` layer that turns spans into OpenTelemetry spans.
    pub fn layer<S>(&self) -> impl tracing_subscriber::Layer<S> + use<S>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        let tracer = self.provider.tracer("payrail");
        tracing_opentelemetry::layer().with_tracer(tracer)
    }

    /// Sends the queued spans and stops (at exit).
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("warning: sending the last spans failed: {e}");
        }
    }
}

/// Makes the `traceparent` header of an incoming request the parent of
/// `span`, so the request's trace continues the caller's. An absent or
/// malformed header leaves `span` a root.
pub fn continue_trace(span: &tracing::Span, headers: &axum::http::HeaderMap) {
    if let Some(value) = headers.get(TRACEPARENT).and_then(|v| v.to_str().ok()) {
        continue_from(span, value);
    }
}

/// Makes the W3C traceparent `value` the parent of `span` (a relay
/// delivery joins the trace of the request that caused its event).
pub fn continue_from(span: &tracing::Span, value: &str) {
    let carrier = HashMap::from([(TRACEPARENT.to_string(), value.to_string())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// The W3C `traceparent` of the current span, when tracing is exported and
/// the span belongs to a trace: what the outbox envelope carries.
pub fn current_traceparent() -> Option<String> {
    traceparent_of(&tracing::Span::current())
}

/// The W3C `traceparent` of `span` (see [`current_traceparent`]).
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// Whether `value` is a well-formed W3C `traceparent` (version 00): what
/// the envelope accepts from a stored row.
pub fn is_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    parts.len() == 4
        && parts[0] == "00"
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
        && parts[1] != "0".repeat(32)
        && parts[2] != "0".repeat(16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_span_of_an_exported_trace_has_a_traceparent() {
        use tracing_subscriber::layer::SubscriberExt;
        let exporter = Exporter::start("http://127.0.0.1:9", "test").unwrap();
        let subscriber = tracing_subscriber::registry().with(Some(exporter.layer()));
        tracing::subscriber::with_default(subscriber, || {
            assert_eq!(current_traceparent(), None, "no span, no trace");
            let span = tracing::info_span!("payment");
            let _in = span.enter();
            let t = current_traceparent().expect("a traceparent");
            assert!(is_traceparent(&t), "{t}");
        });
    }

    #[test]
    fn only_a_well_formed_traceparent_passes() {
        assert!(is_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
        ] {
            assert!(!is_traceparent(bad), "{bad}");
        }
    }
}
