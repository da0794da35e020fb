//! The HTTP API (`payrail serve`): axum on tokio, JSON under `/v1`,
//! `Authorization: Bearer <api key>`, errors as problem+json.
//!
//! Every route is declared once, with its OpenAPI description, through
//! `utoipa_axum::routes!`; the router and `/openapi.json` are built from the
//! same list, so the document cannot miss a route.
//!
//! Around every request: a `tracing` span (method, route, request id,
//! tenant, payment id), a bound on requests in flight (503 `overloaded`), a
//! request timeout (503 `request_timeout`), and the latency and status
//! metrics.

pub mod accounts;
pub mod admin;
pub mod console;
pub mod extract;
pub mod holds;

pub mod openapi;
pub mod ops;
pub mod pagination;
pub mod payments;
pub mod plugins;
pub mod problem;
pub mod reads;
pub mod request_id;
pub mod server;
pub mod tenancy;

use crate::apikeys::KeyCache;
use crate::config::{Config, TenantsConfig};
use crate::db::Pool;
use crate::engine::PluginEngine;
use crate::error::{Error, Result};
/// The host's metrics, also at their own path (`crate::metrics`).
pub use crate::metrics;
use crate::metrics::Metrics;
use crate::processor::Processor;
/// The key reaper, at its old path (it lives with the key lifecycle).
pub use crate::processor::reap_expired_keys;
use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use problem::ApiError;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Limits the API enforces on requests.
#[derive(Debug, Clone, Copy)]
pub struct ApiLimits {
    /// Largest JSON body.
    pub max_json_body_bytes: usize,
    /// Largest plugin upload.
    pub max_plugin_bytes: usize,
    /// Longest a request may take.
    pub request_timeout: Duration,
    /// Requests handled at once.
    pub max_in_flight: usize,
    /// How long a looked-up API key is trusted (see [`KeyCache`]).
    pub api_key_cache: Duration,
}

impl ApiLimits {
    /// The limits a configuration sets.
    pub fn from_config(c: &Config) -> ApiLimits {
        ApiLimits {
            max_json_body_bytes: c.server.max_json_body_bytes,
            max_plugin_bytes: c.plugins.max_plugin_bytes,
            request_timeout: c.request_timeout(),
            max_in_flight: c.server.max_in_flight,
            api_key_cache: Duration::from_millis(c.server.api_key_cache_ms),
        }
    }
}

/// What every handler shares: one allocation, so the middlewares and
/// extractors that take it per request clone one `Arc` (cloning the
/// fields, about a dozen `Arc`s, three times per request was 2% of
/// `serve`'s CPU under `payrail bench`).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

/// The contents of [`AppState`] (reached through `Deref`).
#[derive(Clone)]
pub struct Shared {
    /// The connection pool.
    pub pool: Pool,
    /// The plugin engine.
    pub engine: Arc<PluginEngine>,
    /// Runs payments.
    pub processor: Processor,
    /// Request limits.
    pub limits: ApiLimits,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Permits for requests in flight.
    pub in_flight: Arc<Semaphore>,
    /// API keys looked up recently.
    pub keys: Arc<KeyCache>,
    /// Per-key buckets and per-tenant in-flight bounds (docs/tenancy.md).
    pub front_door: Arc<tenancy::FrontDoor>,
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    /// State over `processor` (its pool and engine) with `limits`.
    pub fn new(processor: Processor, limits: ApiLimits) -> AppState {
        let defaults = TenantsConfig::default();
        AppState(Arc::new(Shared {
            pool: processor.pool().clone(),
            engine: processor.engine().clone(),
            processor,
            limits,
            metrics: Arc::new(Metrics::default()),
            in_flight: Arc::new(Semaphore::new(limits.max_in_flight)),
            keys: Arc::new(KeyCache::new(
                limits.api_key_cache,
                defaults.unknown_key_lookups_per_sec,
            )),
            front_door: Arc::new(tenancy::FrontDoor::new(
                defaults.key_requests_per_sec,
                defaults.key_burst,
                defaults.max_in_flight_requests,
            )),
        }))
    }

    /// This state with the `[tenants]` bounds of `t` (`new` takes the
    /// defaults).
    pub fn with_tenants(self, t: &TenantsConfig) -> AppState {
        let mut s = Arc::unwrap_or_clone(self.0);
        s.keys = Arc::new(KeyCache::new(
            s.limits.api_key_cache,
            t.unknown_key_lookups_per_sec,
        ));
        s.front_door = Arc::new(tenancy::FrontDoor::new(
            t.key_requests_per_sec,
            t.key_burst,
            t.max_in_flight_requests,
        ));
        AppState(Arc::new(s))
    }
}

/// The router of every route, and the OpenAPI document describing them.
pub fn router(state: AppState) -> (Router, serde_json::Value) {
    let (router, doc) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(accounts::create_account, reads::list_accounts))
        .routes(routes!(accounts::get_account))
        .routes(routes!(accounts::list_entries))
        .routes(routes!(reads::balance_at))
        .routes(routes!(reads::statement))
        .routes(routes!(payments::create_payment, payments::list_payments))
        .routes(routes!(payments::get_payment))
        .routes(routes!(reads::payment_calls))
        .routes(routes!(reads::payment_events))
        .routes(routes!(holds::capture_payment))
        .routes(routes!(holds::void_payment))
        .routes(routes!(reads::list_holds))
        .routes(routes!(plugins::upload_plugin, plugins::list_plugins))
        .routes(routes!(admin::get_plugin))
        .routes(routes!(admin::list_pipelines))
        .routes(routes!(plugins::put_pipeline, plugins::get_pipeline))
        .routes(routes!(admin::pipeline_history))
        .routes(routes!(admin::rollback_pipeline))
        .routes(routes!(plugins::get_shadow_report))
        .routes(routes!(admin::promote_candidate))
        .routes(routes!(admin::set_candidate))
        .routes(routes!(admin::replay_payment))
        .routes(routes!(admin::replay_range))
        .routes(routes!(admin::outbox_summary))
        .routes(routes!(admin::dead_letters))
        .routes(routes!(admin::retry_dead))
        .routes(routes!(admin::create_key, admin::list_keys))
        .routes(routes!(admin::revoke_key))
        .routes(routes!(admin::whoami))
        .routes(routes!(admin::audit_log))
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::metrics))
        .routes(routes!(ops::openapi))
        .split_for_parts();
    let (doc, doc_json) = openapi::finish(doc, &state.engine.config().caps);
    let doc_json = Arc::new(doc_json);
    let router = router
        .merge(console::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::Extension(ops::OpenApiJson(doc_json)))
        // inside the guard: a request refused here still counts and is
        // still bounded by the request timeout
        .layer(middleware::from_fn_with_state(
            state.clone(),
            tenancy::front_door,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .layer(
            tower_http::trace::TraceLayer::new_for_http()
                .make_span_with(|req: &Request| {
                    // an unmatched path is the client's text: at most 200 bytes
                    let path = req.uri().path();
                    let route = req.extensions().get::<MatchedPath>().map_or_else(
                        || &path[..path.floor_char_boundary(200)],
                        MatchedPath::as_str,
                    );
                    let request_id = req
                        .extensions()
                        .get::<request_id::RequestId>()
                        .and_then(|id| id.0.to_str().ok())
                        .unwrap_or("-");
                    let span = tracing::info_span!(
                        "request",
                        method = %req.method(),
                        route = %route,
                        request_id = %request_id,
                        tenant = tracing::field::Empty,
                        payment_id = tracing::field::Empty,
                    );
                    crate::telemetry::continue_trace(&span, req.headers());
                    span
                })
                .on_request(())
                .on_response(
                    tower_http::trace::DefaultOnResponse::new().level(tracing::Level::INFO),
                ),
        )
        // outermost: the trace span above and every response see the id
        .layer(middleware::from_fn(request_id::request_id))
        .with_state(state);
    (router, doc)
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}

/// Load shedding, the request timeout and request metrics.
async fn guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    // owned for after the request is consumed: a `Method` of a standard
    // verb and a `MatchedPath` (an `Arc<str>`) clone without allocating
    let method = req.method().clone();
    let route = req.extensions().get::<MatchedPath>().cloned();
    let has_body = req.headers().contains_key(header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    let response = match state.in_flight.clone().try_acquire_owned() {
        Err(_) => {
            state.metrics.overloaded();
            ApiError::unavailable(
                "overloaded",
                "too many requests in flight; retry shortly",
                1,
            )
            .into_response()
        }
        Ok(permit) => {
            let r = tokio::time::timeout(state.limits.request_timeout, next.run(req)).await;
            drop(permit);
            match r {
                Ok(r) => r,
                Err(_) => ApiError::unavailable(
                    "request_timeout",
                    format!(
                        "the request took longer than {} ms and was abandoned; retry it (a payment with the same Idempotency-Key: you get its result, or it runs again)",
                        state.limits.request_timeout.as_millis()
                    ),
                    1,
                )
                .into_response(),
            }
        }
    };
    state.metrics.request(
        method.as_str(),
        route.as_ref().map_or("unmatched", MatchedPath::as_str),
        response.status().as_str(),
        start.elapsed().as_secs_f64(),
    );
    let mut response = response;
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // A refused request's body may be unread (401 before a plugin upload,
    // say): close the connection so the client does not reuse it while the
    // rest of that body is still on the wire.
    if has_body && (response.status().is_client_error() || response.status().is_server_error()) {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Waits for SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// Logs SIGHUP (there is nothing to reload without `[server.tls]`) until
/// `stop`.
async fn ignore_hangups(mut stop: tokio::sync::watch::Receiver<bool>) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        return;
    };
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = hup.recv() => tracing::info!("SIGHUP: nothing to reload (no [server.tls])"),
        }
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then stops
/// accepting and gives in-flight requests up to `grace` to finish. Returns
/// whether everything drained in time. Default connection bounds.
pub async fn serve_until(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> Result<bool> {
    serve_until_with(
        listener,
        router,
        shutdown,
        grace,
        server::ConnLimits::default(),
        None,
        Arc::new(Metrics::default()),
    )
    .await
}

/// [`serve_until`] with connection bounds `conn` (`[server]`), TLS
/// terminated with `tls` when given, counting evicted and refused
/// connections in `metrics`.
pub async fn serve_until_with(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    grace: Duration,
    conn: server::ConnLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    metrics: Arc<Metrics>,
) -> Result<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let mut server = tokio::spawn(server::run(listener, router, conn, tls, metrics, rx));
    tokio::select! {
        r = &mut server => {
            // the server stopped by itself: its task failed
            return match r {
                Ok(()) => Ok(true),
                Err(e) => Err(Error::Setup(format!("the HTTP server task failed: {e}"))),
            };
        }
        _ = shutdown => {}
    }
    tracing::info!(
        grace_ms = grace.as_millis() as u64,
        "shutting down: no new connections, draining in-flight requests"
    );
    let _ = tx.send(true);
    match tokio::time::timeout(grace, &mut server).await {
        Ok(_) => Ok(true),
        Err(_) => {
            server.abort();
            Ok(false)
        }
    }
}

/// `payrail serve`: opens the pool and engine from `config`, optionally
/// migrates, starts the key reaper and (with sinks configured) the outbox
/// relay, serves until SIGTERM/SIGINT, drains
/// in-flight requests for at most `server.shutdown_grace_ms`, and returns
/// the exit code (0).
pub async fn serve(config: Config, migrate: bool) -> Result<i32> {
    let addr = config.listen_addr()?;
    let url = crate::db::resolve_url(config.database.url.clone()).await?;
    let pool = config.pool(&url)?;
    {
        let mut client = pool.get().await?;
        if migrate {
            let applied = crate::db::migrate::migrate(&mut client).await?;
            if !applied.is_empty() {
                tracing::info!(?applied, "applied migrations");
            }
        } else if !crate::db::migrate::is_current(&client).await? {
            tracing::warn!(
                "the database schema is not current: /readyz answers 503 until `payrail migrate` runs"
            );
        }
    }
    let engine = Arc::new(
        PluginEngine::new(config.engine())
            .map_err(|e| Error::Setup(format!("cannot create the wasm engine: {e:#}")))?
            .with_default_artifact_cache()
            .with_trusted_keys(crate::signing::TrustedKeys::from_env()?),
    );
    let locks = config.locks.service().await?;
    tracing::info!(backend = locks.name(), "account locks");
    let processor = Processor::with_locks(pool.clone(), engine, config.processor(), locks);
    let state =
        AppState::new(processor, ApiLimits::from_config(&config)).with_tenants(&config.tenants);
    let metrics = state.metrics.clone();
    // Without sinks the relay still runs the hold expiry timers.
    let relay = if config.outbox.relay {
        Some(crate::outbox::Relay::from_config(
            pool.clone(),
            &config,
            metrics.clone(),
        )?)
    } else {
        tracing::info!(
            "no outbox relay in this host (outbox.relay = false): holds expire on other hosts"
        );
        None
    };
    let served_metrics = state.metrics.clone();
    let (router, _doc) = router(state);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Setup(format!("cannot listen on {addr}: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::Setup(format!("listener address: {e}")))?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let reaper = tokio::spawn(crate::processor::run_reaper(
        pool.clone(),
        move |n| metrics.keys_reaped(n),
        Duration::from_secs(config.idempotency.reaper_interval_secs),
        config.idempotency.reaper_batch,
        stop_rx.clone(),
    ));
    let tls = config.server.tls.as_ref().map(|t| t.load()).transpose()?;
    let acceptor = tls.as_ref().map(|t| t.acceptor().clone());
    let tls_watch = match tls {
        Some(t) => tokio::spawn(t.watch(stop_rx.clone())),
        // `systemctl reload` sends SIGHUP: without a handler it would end
        // the process, and systemd does not restart a clean stop
        None => tokio::spawn(ignore_hangups(stop_rx.clone())),
    };
    let relay = relay.map(|r| tokio::spawn(r.run(stop_rx)));
    let scheme = if acceptor.is_some() { "https" } else { "http" };
    // stdout, for scripts and tests that pick port 0
    println!("payrail listening on {scheme}://{local}");
    tracing::info!(%local, "listening");
    let drained = serve_until_with(
        listener,
        router,
        shutdown_signal(),
        Duration::from_millis(config.server.shutdown_grace_ms),
        server::ConnLimits {
            header_read_timeout: Duration::from_millis(config.server.header_read_timeout_ms),
            max_connections: config.server.max_connections,
        },
        acceptor,
        served_metrics,
    )
    .await?;
    let _ = stop_tx.send(true);
    let _ = reaper.await;
    let _ = tls_watch.await;
    if let Some(relay) = relay {
        let _ = relay.await;
    }
    if drained {
        tracing::info!("shut down cleanly");
    } else {
        tracing::warn!(
            grace_ms = config.server.shutdown_grace_ms,
            "requests still in flight after the grace period were cut off; their transactions rolled back"
        );
    }
    println!("payrail stopped");
    Ok(0)
}
