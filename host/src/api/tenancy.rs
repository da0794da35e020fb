//! The front door of every request that carries an API key
//! (docs/tenancy.md): the key is authenticated (from the cache; unseen keys
//! within a lookup budget), then its token bucket and its tenant's
//! in-flight bound are checked, all before the request's handler touches
//! the database. A refusal is a 429 problem with `Retry-After`:
//!
//! - `rate_limited`: the key spent its bucket (`tenants.key_requests_per_sec`,
//!   `tenants.key_burst`); other keys, of this tenant too, are unaffected;
//! - `tenant_busy`: the tenant has `tenants.max_in_flight_requests` running;
//!   refused at once rather than queued, so a tenant's backlog is its own;
//! - `key_lookups_throttled`: a key this host has not seen, and the budget
//!   of such lookups is spent (see [`crate::apikeys::KeyCache`]).

use super::AppState;
use super::problem::ApiError;
use crate::apikeys::Authenticated;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;

/// Most keys and tenants tracked at once; past it, idle ones are dropped.
pub const MAX_TRACKED: usize = 100_000;

/// How a request's key was settled by [`front_door`], for the extractors
/// (so a key is authenticated once per request).
#[derive(Debug, Clone)]
pub struct Settled(pub Authenticated);

/// Per-key buckets and per-tenant in-flight permits. Cost per request: one
/// lock-free bucket update and one map lookup under a mutex.
pub struct FrontDoor {
    buckets: governor::DefaultKeyedRateLimiter<String>,
    per_tenant: usize,
    tenants: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl FrontDoor {
    /// Buckets of `per_sec` requests per second and `burst` at once per
    /// key; at most `per_tenant` requests in flight per tenant.
    pub fn new(per_sec: u32, burst: u32, per_tenant: usize) -> FrontDoor {
        let nz = |v: u32| NonZeroU32::new(v).unwrap_or(NonZeroU32::MIN);
        let quota = governor::Quota::per_second(nz(per_sec)).allow_burst(nz(burst));
        FrontDoor {
            buckets: governor::RateLimiter::keyed(quota),
            per_tenant: per_tenant.max(1),
            tenants: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from `key`'s bucket; `Err(seconds to wait)`.
    pub fn check_rate(&self, key: &str) -> Result<(), u32> {
        if self.buckets.len() > MAX_TRACKED {
            self.buckets.retain_recent();
        }
        self.buckets
            .check_key(&key.to_string())
            .map_err(|not_until| {
                let clock = governor::clock::DefaultClock::default();
                let wait = not_until.wait_time_from(governor::clock::Clock::now(&clock));
                // whole seconds for Retry-After, at least 1
                u32::try_from(wait.as_millis().div_ceil(1000))
                    .unwrap_or(u32::MAX)
                    .max(1)
            })
    }

    /// A permit of `tenant`'s in-flight bound, if one is free.
    pub fn admit(&self, tenant: &str) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let gate = {
            let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
            if tenants.len() >= MAX_TRACKED && !tenants.contains_key(tenant) {
                let full = self.per_tenant;
                tenants.retain(|_, g| g.available_permits() < full);
            }
            match tenants.get(tenant) {
                Some(gate) => gate.clone(),
                None => tenants
                    .entry(tenant.to_string())
                    .or_insert_with(|| Arc::new(Semaphore::new(self.per_tenant)))
                    .clone(),
            }
        };
        gate.try_acquire_owned().ok()
    }
}

/// The bearer token of a request, if it sends one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
}

fn too_many(code: &str, detail: &str, secs: u32) -> Response {
    ApiError {
        retry_after: Some(secs),
        ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, code, detail)
    }
    .into_response()
}

/// Middleware: authenticates a request's key, applies its bucket and its
/// tenant's in-flight bound (held until the response), and leaves the
/// outcome for the extractors. Requests without a key pass through.
pub async fn front_door(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    let Some(secret) = bearer(req.headers()) else {
        return next.run(req).await;
    };
    let auth = match st.keys.authenticate(&st.pool, secret).await {
        Ok(a) => a,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let t = &st.metrics.tenancy;
    let permit = match &auth {
        Authenticated::Key(p) => {
            if let Err(secs) = st.front_door.check_rate(&p.key_id) {
                t.rate_limited.fetch_add(1, Ordering::Relaxed);
                return too_many(
                    "rate_limited",
                    "this API key sent more requests than its rate allows; retry after Retry-After seconds",
                    secs,
                );
            }
            let Some(permit) = st.front_door.admit(&p.tenant) else {
                t.tenant_busy.fetch_add(1, Ordering::Relaxed);
                return too_many(
                    "tenant_busy",
                    "this tenant has as many requests in flight as it may; retry when some have finished",
                    1,
                );
            };
            Some(permit)
        }
        Authenticated::Throttled => {
            return too_many(
                "key_lookups_throttled",
                "too many requests with API keys this host has not seen; retry shortly",
                1,
            );
        }
        Authenticated::Unknown => None,
    };
    req.extensions_mut().insert(Settled(auth));
    let response = next.run(req).await;
    drop(permit);
    response
}
