//! The test server: payrail's HTTP API (`api::router`, `api::serve_until`)
//! in this process on 127.0.0.1:0 over one test database, with a client
//! for it. Shared by the modules that test over HTTP (api, holds); the
//! real `payrail serve` binary is tested where the process matters (api's
//! SIGTERM drain, isolation, chaos).

use crate::common::{TestDb, plugin_bytes};
use payrail::api::{self, ApiLimits, AppState};
use payrail::apikeys::{self, Scope};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;

/// A server on 127.0.0.1:0 over one test database.
pub struct Server {
    pub base: String,
    pub http: reqwest::Client,
    pub db: TestDb,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<payrail::Result<bool>>>,
}

pub const JSON_LIMIT: usize = 64 * 1024;

/// The test server's limits: the production defaults where they matter
/// (the API key cache's 1 s), a smaller JSON limit.
pub fn limits() -> ApiLimits {
    ApiLimits {
        max_json_body_bytes: JSON_LIMIT,
        max_plugin_bytes: 2 * 1024 * 1024,
        request_timeout: Duration::from_secs(30),
        max_in_flight: 256,
        api_key_cache: Duration::from_millis(1000),
    }
}

impl Server {
    /// On a fresh database with [`limits`].
    pub async fn start() -> Server {
        Server::start_on(TestDb::new().await).await
    }

    /// On `db` with [`limits`].
    pub async fn start_on(db: TestDb) -> Server {
        Server::start_with(db, limits()).await
    }

    pub async fn start_with(db: TestDb, limits: ApiLimits) -> Server {
        let state = AppState::new(db.processor(), limits);
        let (router, _) = api::router(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(api::serve_until(
            listener,
            router,
            async {
                let _ = rx.await;
            },
            Duration::from_secs(5),
        ));
        Server {
            base,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
            db,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// A new API key of `tenant` (straight into the database).
    pub async fn key(&self, tenant: &str, scopes: &[Scope]) -> String {
        let c = self.db.pool.get().await.unwrap();
        apikeys::create(&c, tenant, scopes).await.unwrap().secret
    }

    /// A request to this server, with `key` as its bearer token.
    pub fn req(&self, method: Method, path: &str, key: Option<&str>) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        r
    }

    pub async fn get(&self, path: &str, key: &str) -> (StatusCode, Value) {
        send(self.req(Method::GET, path, Some(key))).await
    }

    pub async fn post(&self, path: &str, key: &str, body: Value) -> (StatusCode, Value) {
        send(self.req(Method::POST, path, Some(key)).json(&body)).await
    }

    /// `POST /v1/payments` with an idempotency key.
    pub async fn pay(&self, key: &str, idem: &str, body: Value) -> reqwest::Response {
        self.req(Method::POST, "/v1/payments", Some(key))
            .header("Idempotency-Key", idem)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Deploys the sample plugins and a `transfer` pipeline (limits, fee to
    /// `fees`) for the tenant of `admin`, plus accounts fees/alice/bob.
    pub async fn samples(&self, admin: &str) {
        for (file, name) in [("payrail_limits", "limits"), ("payrail_fee", "fee")] {
            let r = self
                .req(
                    Method::POST,
                    &format!("/v1/plugins?name={name}"),
                    Some(admin),
                )
                .header("content-type", "application/wasm")
                .body(plugin_bytes(file))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::CREATED);
        }
        let (s, _) = send(
            self.req(Method::PUT, "/v1/pipelines/transfer", Some(admin))
                .json(&json!({"steps": [
                    {"plugin": "limits", "config": {"max_amount": 100_000}},
                    {"plugin": "fee", "config": {"fee_account": "fees", "percent_bps": 100, "fixed": 10}}
                ]})),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        for (id, opening) in [("fees", 0), ("alice", 1_000_000), ("bob", 0)] {
            // an opening balance creates money: admin scope
            let (s, b) = self
                .post(
                    "/v1/accounts",
                    admin,
                    json!({"id": id, "currency": "EUR", "opening_balance": opening}),
                )
                .await;
            assert_eq!(s, StatusCode::CREATED, "{b}");
        }
    }

    /// Stops the server and checks it drained its requests.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let drained = self.task.take().unwrap().await.unwrap().unwrap();
        assert!(drained, "server drained");
    }
}

/// Sends a request; the body as JSON (or as a string when it is not JSON).
pub async fn send(r: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let resp = r.send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}
