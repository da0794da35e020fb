//! Operations routes (no API key): liveness, readiness, metrics, and the
//! OpenAPI document.

use super::AppState;
use super::problem::{ApiError, Problem};
use crate::db::migrate;
use crate::metrics::PoolGauges;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use utoipa::ToSchema;

/// How long readiness waits for the database.
pub const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// The generated OpenAPI document, as JSON text.
#[derive(Clone)]
pub struct OpenApiJson(pub Arc<String>);

/// A health answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Health {
    /// `ok` or `ready`.
    pub status: String,
}

/// Liveness: the process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations", security(()),
    responses((status = 200, description = "Up", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// Readiness: the database answers and its schema is current.
#[utoipa::path(get, path = "/readyz", tag = "operations", security(()),
    responses(
        (status = 200, description = "Ready", body = Health),
        (status = 503, description = "Database unreachable, migrations pending, or commits not confirmed", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn readyz(State(st): State<AppState>) -> Result<Json<Health>, ApiError> {
    // a server that stopped confirming commits (a primary waiting for a
    // synchronous standby) still answers queries: ask the processor first
    if let Err(e) = st.processor.commits_check() {
        return Err(e.into());
    }
    let check = async {
        let client = st.pool.get().await.map_err(crate::Error::from)?;
        migrate::is_current(&client).await
    };
    match tokio::time::timeout(READY_TIMEOUT, check).await {
        Ok(Ok(true)) => Ok(Json(Health {
            status: "ready".into(),
        })),
        Ok(Ok(false)) => Err(ApiError::unavailable(
            "migrations_pending",
            "the database schema is not current: run `payrail migrate`",
            5,
        )),
        Ok(Err(e)) => {
            // the error text is the database's: logged, never answered
            tracing::warn!(error = %e, "readiness: the database is not reachable");
            Err(ApiError::unavailable(
                "database_unavailable",
                "the database is not reachable",
                2,
            ))
        }
        Err(_) => Err(ApiError::unavailable(
            "database_unavailable",
            format!(
                "the database did not answer within {} ms",
                READY_TIMEOUT.as_millis()
            ),
            2,
        )),
    }
}

/// Prometheus metrics (text exposition format 0.0.4).
#[utoipa::path(get, path = "/metrics", tag = "operations", security(()),
    responses((status = 200, description = "Metrics", body = String, content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8")))]
pub async fn metrics(State(st): State<AppState>) -> Response {
    // one index range scan (capped); on failure the last value stays
    if let Ok(n) = crate::holds::count_overdue(&st.pool).await {
        st.metrics
            .holds_overdue
            .store(n, std::sync::atomic::Ordering::Relaxed);
    }
    let s = st.pool.status();
    let t = &st.metrics.tenancy;
    t.key_lookups
        .store(st.keys.lookups(), std::sync::atomic::Ordering::Relaxed);
    t.key_lookups_throttled
        .store(st.keys.throttled(), std::sync::atomic::Ordering::Relaxed);
    let text = st.metrics.render(
        PoolGauges {
            size: s.size,
            available: s.available,
            max_size: s.max_size,
            waiting: s.waiting,
        },
        st.limits
            .max_in_flight
            .saturating_sub(st.in_flight.available_permits()),
        st.processor.counts(),
    );
    let mut resp = text.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
    );
    resp
}

/// This API's OpenAPI 3.1 document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", security(()),
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json")))]
pub async fn openapi(Extension(doc): Extension<OpenApiJson>) -> Response {
    let mut resp = doc.0.as_str().to_string().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}
