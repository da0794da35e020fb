//! The admin routes beside plugins and pipelines (scope `admin`, the
//! caller's tenant only): pipeline history, rollback and shadow, replay,
//! the outbox, API keys and the admin audit log. Each change goes through
//! [`crate::admin`], which records it in the audit log in the same
//! transaction, exactly as the command line does.

use super::AppState;
use super::extract::{AccountsKey, AdminKey, ApiJson, ApiQuery, payment_path, pipeline_path};
use super::pagination::{Order, Page, PageParams, int_position, page};
use super::problem::{ApiError, ApiResult, Problem};
use crate::admin::{self, PipelineChange};
use crate::admin_log::{self, Action, Actor, AuditEntry};
use crate::apikeys::{self, ApiKey, Principal, Scope};
use crate::ledger::validate_id;
use crate::outbox::{self, DeadLetter, OutboxSummary};
use crate::registry::{self, Pipeline, PipelineVersion, PluginDetail};
use crate::replay::{self, PaymentReplay, RangeSummary};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// The audit log's actor for a request's key.
pub fn actor(p: &Principal) -> Actor {
    Actor {
        tenant: p.tenant.clone(),
        who: p.key_id.clone(),
    }
}

/// Who is calling.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WhoAmI {
    /// The key's id.
    pub key_id: String,
    /// The tenant every request with this key acts for.
    pub tenant: String,
    /// What the key may do.
    #[schema(value_type = Vec<String>)]
    pub scopes: Vec<Scope>,
}

/// The caller's key: its id, tenant and scopes (how the console signs in).
#[utoipa::path(get, path = "/v1/whoami", tag = "keys",
    responses((status = 200, description = "The key's identity", body = WhoAmI)))]
pub async fn whoami(AccountsKey(p): AccountsKey) -> Json<WhoAmI> {
    Json(WhoAmI {
        key_id: p.key_id,
        tenant: p.tenant,
        scopes: p.scopes,
    })
}

/// A plugin name with every version deployed under it and its signatures.
#[utoipa::path(get, path = "/v1/plugins/{name}", tag = "admin",
    params(("name" = String, Path, description = "Plugin name", pattern = "^[A-Za-z0-9_.:-]{1,64}$")),
    responses(
        (status = 200, description = "Its deploys, newest first", body = PluginDetail),
        (status = 404, description = "No plugin of that name", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_plugin(
    State(st): State<AppState>,
    AdminKey(p): AdminKey,
    Path(name): Path<String>,
) -> ApiResult<Json<PluginDetail>> {
    if validate_id("plugin name", &name).is_err() {
        return Err(crate::Error::NotFound {
            what: "plugin",
            id: name.chars().take(64).collect(),
        }
        .into());
    }
    let client = st.pool.get().await.map_err(crate::Error::from)?;
    Ok(Json(
        registry::plugin_detail(&client, &p.tenant, &name).await?,
    ))
}

/// List the tenant's pipelines, by kind.
#[utoipa::path(get, path = "/v1/pipelines", tag = "admin",
    params(PageParams),
    responses((status = 200, description = "A page of pipelines", body = Page<Pipeline>)))]
pub async fn list_pipelines(
    State(st): State<AppState>,
    AdminKey(p): AdminKey,
    ApiQuery(q): ApiQuery<PageParams>,
) -> ApiResult<Json<Page<Pipeline>>> {
    let limit = q.limit()?;
    let seek = q.seek("pipelines")?;
    let client = st.pool.get().await.map_err(crate::Error::from)?;
    let rows = registry::list_pipelines(
        &client,
        &p.tenant,
        seek.position(),
        seek.sql(Order::Asc),
        limit + 1,
    )
    .await?;
    Ok(Json(page(rows, limit, "pipelines", &seek, |r| {
        r.kind.clone()
    })))
}

/// Pipeline history.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct History {
    /// Every version, newest first (at most 1000).
    pub data: Vec<PipelineVersion>,
}

/// Every version of a payment kind's pipeline, newest first.
#[utoipa::path(get, path = "/v1/pipelines/{kind}/history", tag = "admin",
    params(("kind" = String, Path, description = "Payment kind", pattern = "^[A-Za-z0-9_.:-]{1,64}$")),
    responses(
        (status = 200, description = "The versions", body = History),
        (status = 404, description = "No pipeline for this kind", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn pipeline_history(
    State(st): State<AppState>,
    AdminKey(p): AdminKey,
    Path(kind): Path<String>,
) -> ApiResult<Json<History>> {
    pipeline_path(&kind)?;
    let client = st.pool.get().await.map_err(crate::Error::from)?;
    registry::load_pipeline(&client, &p.tenant, &kind).await?;
    let data = registry::pipeline_history(&client, &p.tenant, &kind, registry::MAX_HISTORY).await?;
    Ok(Json(History { data }))
}

/// `POST /v1/pipelines/{kind}/rollback` body.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rollback {
    /// The version to make current again (as a new version); default: the
    /// one before the current.
    #[schema(minimum = 1)]
    pub version: Option<i32>,
}

/// Make an earlier version of a pipeline current again, as a new version.
#[utoipa::path(post, path = "/v1/pipelines/{kind}/rollback", tag = "admin",
    params(("kind" = String, Path, description = "Payment kind", pattern = "^[A-Za-z0-9_.:-]{1,64}$")),
    request_body = Rollback,
    responses(
        (status = 200, description = "The new current pipeline", body = Pipeline),
        (status = 400, description = "No such version", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No pipeline for this kind", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn rollback_pipeline(
    State(st): State<AppState>,
    AdminKey(p): AdminKey,
    Path(kind): Path<String>,
    ApiJson(body): ApiJson<Rollback>,
) -> ApiResult<Json<Pipeline>> {
    pipeline_path(&kind)?;
    let change = PipelineChange::Rollback(body.version);
    change_pipeline(&st, &p, &kind, change).await
}

async fn change_pipeline(
    st: &AppState,
    p: &Principal,
    kind: &str,
    change: PipelineChange<'_>,
) -> ApiResult<Json<Pipeline>> {
    let mut client = st.pool.get().await.map_err(crate::Error::from)?;
    Ok(Json(
        admin::change_pipeline(&mut client, &actor(p), kind, change).await?,
    ))
}

/// `POST /v1/pipelines/{kind}/shadow/promote` body.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Promote {
    /// The step (0-based) whose candidate goes live.
    #[schema(minimum = 0, maximum = 15)]
    pub step: usize,
}

/// Make a step's shadow candidate live (a new pipeline version).
#[utoipa::path(post, path = "/v1/pipelines/{kind}/shadow/promote", tag = "admin",
    params(("kind" = String, Path, description = "Payment kind", pattern = "^[A-Za-z0-9_.:-]{1,64}$")),
    request_body = Promote,
    responses(
        (status = 200, description = "The new current pipeline", body = Pipeline),
        (status = 400, description = "No such step, or it has no candidate", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No pipeline for this kind", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn promote_candidate(
    State(st): State<AppState>,
    AdminKey(p): AdminKey,
    Path(kind): Path<String>,
    ApiJson(body): ApiJson<Promote>,
) -> ApiResult<Json<Pipeline>> {
    pipeline_path(&kind)?;
    change_pipeline(&st, &p, &kind, PipelineChange::Promote(body.step)).await
}

/// `PUT /v1/pipelines/{kind}/steps/{step}/candidate` body.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetCandidate {
    /// A plugin name or digest of the tenant; `null` clears the candidate.
    pub plugin: Option<String>,
}

/// Set or clear the shadow candidate of a step (a new pipeline version).
#[utoipa::path(put, path = "/v1/pipelines/{kind}/steps/{step}/candidate", tag = "admin",
    params(
        ("kind" = String, Path, description = "Payment kind", pattern = "^[A-Za-z0-9_.:-]{1,64}$"),
        ("step" = usize, Path, description = "The step, 0-based", minimum = 0, maximum = 15),
    ),
    request_body = SetCandidate,
    responses(
        (status = 200, description = "The new current pipeline", body = Pipeline),
        (status = 400, description = "No such step", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No pipeline for this kind, or no such plugin", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn set_candidate(
    State(st): State<AppState>,
    AdminKey(p): AdminKey,
    Path((kind, step)): Path<(String, String)>,
    ApiJson(body): ApiJson<SetCandidate>,
) -> ApiResult<Json<Pipeline>> {
    pipeline_path(&kind)?;
    let step: usize = step
        .parse()
        .ok()
        .filter(|s| *s < registry::MAX_STEPS)
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_path",
                format!("step must be an integer 0-{}", registry::MAX_STEPS - 1),
            )
        })?;
    let change = PipelineChange::SetCandidate(step, body.plugin.as_deref());
    change_pipeline(&st, &p, &kind, change).await
}

/// Re-execute a payment's journaled plugin calls and compare.
#[utoipa::path(post, path = "/v1/payments/{id}/replay", tag = "admin",
    params(("id" = String, Path, description = "Payment id (a UUID)", pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")),
    responses(
        (status = 200, description = "Every call's verdict", body = PaymentReplay),
        (status = 404, description = "No such payment", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn replay_payment(
    State(st): State<AppState>,
    AdminKey(p): AdminKey,
    Path(id): Path<String>,
) -> ApiResult<Json<PaymentReplay>> {
    let uuid = payment_path(&id)?;
    let client = st.pool.get().await.map_err(crate::Error::from)?;
    let limits = st.processor.settings().limits;
    Ok(Json(
        replay::replay_payment(&client, &st.engine, &limits, &p.tenant, uuid).await?,
    ))
}

/// Most payments one `POST /v1/replay` checks (a request is bounded by the
/// request timeout; the command line takes up to 100,000).
pub const MAX_HTTP_REPLAY: i64 = 1000;

/// `POST /v1/replay` body.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRange {
    /// Start of the range (RFC 3339), inclusive.
    #[schema(format = DateTime)]
    pub since: String,
    /// End of the range (RFC 3339), exclusive.
    #[schema(format = DateTime)]
    pub until: String,
    /// Most payments checked, oldest first (default and most: 1000).
    #[schema(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

/// Replay every payment made in a time range and summarize.
#[utoipa::path(post, path = "/v1/replay", tag = "admin",
    request_body = ReplayRange,
    responses(
        (status = 200, description = "The summary, with the payments that differ", body = RangeSummary),
        (status = 400, description = "A bad time or limit", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn replay_range(
    State(st): State<AppState>,
    AdminKey(p): AdminKey,
    ApiJson(body): ApiJson<ReplayRange>,
) -> ApiResult<Json<RangeSummary>> {
    let limit = body.limit.unwrap_or(MAX_HTTP_REPLAY);
    if !(1..=MAX_HTTP_REPLAY).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            format!("limit must be 1-{MAX_HTTP_REPLAY}"),
        ));
    }
    let since = super::extract::rfc3339("since", &body.since)?;
    let until = super::extract::rfc3339("until", &body.until)?;
    let fmt = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .expect("a parsed time formats")
    };
    let client = st.pool.get().await.map_err(crate::Error::from)?;
    let limits = st.processor.settings().limits;
    Ok(Json(
        replay::replay_range(
            &client,
            &st.engine,
            &limits,
            &p.tenant,
            &fmt(since),
            &fmt(until),
            limit,
        )
        .await?,
    ))
}

/// The tenant's outbox: pending events by topic, and the dead letters.
#[utoipa::path(get, path = "/v1/outbox", tag = "admin",
    responses((status = 200, description = "Pending and dead counts", body = OutboxSummary)))]
pub async fn outbox_summary(
    State(st): State<AppState>,
    AdminKey(p): AdminKey,
) -> ApiResult<Json<OutboxSummary>> {
    let client = st.pool.get().await.map_err(crate::Error::from)?;
    Ok(Json(outbox::summary(&client, &p.tenant).await?))
}

/// List the tenant's dead-lettered events, newest first.
#[utoipa::path(get, path = "/v1/outbox/dead-letters", tag = "admin",
    params(PageParams),
    responses((status = 200, description = "A page of dead letters", body = Page<DeadLetter>)))]
pub async fn dead_letters(
    State(st): State<AppState>,
    AdminKey(p): AdminKey,
    ApiQuery(q): ApiQuery<PageParams>,
) -> ApiResult<Json<Page<DeadLetter>>> {
    let limit = q.limit()?;
    let seek = q.seek("dead")?;
    let position = int_position(&seek)?;
    let client = st.pool.get().await.map_err(crate::Error::from)?;
    let rows = outbox::dead_letters_page(
        &client,
        Some(&p.tenant),
        position,
        seek.sql(Order::Desc),
        limit as i64 + 1,
    )
    .await?;
    Ok(Json(page(rows, limit, "dead", &seek, |d| d.id.to_string())))
}

/// `POST /v1/outbox/dead-letters/retry` body: `ids`, or `all`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// Outbox ids of dead letters (at most 1000).
    #[schema(max_items = 1000)]
    pub ids: Option<Vec<i64>>,
    /// Requeue every dead letter of the tenant.
    #[serde(default)]
    pub all: bool,
}

/// How many events went back to pending.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Requeued {
    /// Events requeued (ids that are not dead letters of the tenant are
    /// skipped).
    pub requeued: u64,
}

/// Requeue dead-lettered events of the tenant: by id, or all.
#[utoipa::path(post, path = "/v1/outbox/dead-letters/retry", tag = "admin",
    request_body = Retry,
    responses(
        (status = 200, description = "How many were requeued", body = Requeued),
        (status = 400, description = "Neither or both of ids and all", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn retry_dead(
    State(st): State<AppState>,
    AdminKey(p): AdminKey,
    ApiJson(body): ApiJson<Retry>,
) -> ApiResult<Json<Requeued>> {
    let ids = match (&body.ids, body.all) {
        (Some(ids), false) if !ids.is_empty() && ids.len() <= 1000 => Some(ids.as_slice()),
        (None, true) => None,
        _ => {
            return Err(ApiError::bad_request(
                "invalid_retry",
                "send `ids` (1-1000 outbox ids) or `all: true`, not both",
            ));
        }
    };
    let mut client = st.pool.get().await.map_err(crate::Error::from)?;
    let requeued = admin::retry_dead(&mut client, &actor(&p), Some(&p.tenant), ids).await?;
    Ok(Json(Requeued { requeued }))
}

/// List the tenant's API keys (never their secrets), newest first.
#[utoipa::path(get, path = "/v1/api-keys", tag = "keys",
    params(PageParams),
    responses((status = 200, description = "A page of keys", body = Page<ApiKey>)))]
pub async fn list_keys(
    State(st): State<AppState>,
    AdminKey(p): AdminKey,
    ApiQuery(q): ApiQuery<PageParams>,
) -> ApiResult<Json<Page<ApiKey>>> {
    let limit = q.limit()?;
    let seek = q.seek("keys")?;
    let position = match seek.position() {
        None => None,
        Some(pos) => {
            let bad = || ApiError::bad_request("invalid_cursor", "malformed cursor");
            let (at, id) = pos.split_once('|').ok_or_else(bad)?;
            Some((
                super::extract::rfc3339("cursor", at).map_err(|_| bad())?,
                id,
            ))
        }
    };
    let client = st.pool.get().await.map_err(crate::Error::from)?;
    let rows = apikeys::list_page(
        &client,
        &p.tenant,
        position,
        seek.sql(Order::Desc),
        limit as i64 + 1,
    )
    .await?;
    Ok(Json(page(rows, limit, "keys", &seek, |k| {
        format!("{}|{}", k.created_at, k.id)
    })))
}

/// `POST /v1/api-keys` body.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// `payments` (accounts, payments) and/or `admin` (everything else).
    #[schema(value_type = Vec<String>, min_items = 1, max_items = 2)]
    pub scopes: Vec<String>,
    /// When the key stops working (RFC 3339, in the future); default never.
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
}

/// A new key: the only answer that carries its secret.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CreatedKey {
    /// The stored key.
    #[serde(flatten)]
    pub key: ApiKey,
    /// Send as `Authorization: Bearer <secret>`; shown only now.
    pub secret: String,
}

/// Create an API key for the caller's tenant.
#[utoipa::path(post, path = "/v1/api-keys", tag = "keys",
    request_body = CreateKey,
    responses(
        (status = 201, description = "Created; the secret is shown only now", body = CreatedKey),
        (status = 400, description = "A bad scope or expiry", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_key(
    State(st): State<AppState>,
    AdminKey(p): AdminKey,
    ApiJson(body): ApiJson<CreateKey>,
) -> ApiResult<(StatusCode, Json<CreatedKey>)> {
    if body.scopes.is_empty() || body.scopes.len() > 2 {
        return Err(ApiError::bad_request(
            "invalid_scope",
            "scopes lists one or two of `payments`, `admin`",
        ));
    }
    let scopes = Scope::parse_list(&body.scopes.join(","))?;
    let expires_at = body
        .expires_at
        .as_deref()
        .map(|t| super::extract::rfc3339("expires_at", t))
        .transpose()?;
    let mut client = st.pool.get().await.map_err(crate::Error::from)?;
    let k = admin::create_key(&mut client, &actor(&p), &scopes, expires_at).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedKey {
            key: k.key,
            secret: k.secret,
        }),
    ))
}

/// Revoke an API key of the caller's tenant; hosts refuse it within their
/// `server.api_key_cache_ms`.
#[utoipa::path(delete, path = "/v1/api-keys/{id}", tag = "keys",
    params(("id" = String, Path, description = "The key's id", pattern = "^key_[0-9a-f]{16}$")),
    responses(
        (status = 200, description = "The key, revoked", body = ApiKey),
        (status = 404, description = "No key of this tenant with that id", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn revoke_key(
    State(st): State<AppState>,
    AdminKey(p): AdminKey,
    Path(id): Path<String>,
) -> ApiResult<Json<ApiKey>> {
    let mut client = st.pool.get().await.map_err(crate::Error::from)?;
    Ok(Json(
        admin::revoke_key(&mut client, &p.key_id, Some(&p.tenant), &id).await?,
    ))
}

/// `GET /v1/audit-log` query.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only this action (`plugin.deploy`, `pipeline.set`,
    /// `pipeline.rollback`, `shadow.set`, `shadow.promote`,
    /// `apikey.create`, `apikey.revoke`, `outbox.retry`, `account.open`).
    pub action: Option<String>,
    /// Items per page, 1-200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<usize>,
    /// `next_cursor` or `prev_cursor` of another page.
    #[param(max_length = 512)]
    pub cursor: Option<String>,
}

/// The tenant's admin audit log, newest first.
#[utoipa::path(get, path = "/v1/audit-log", tag = "admin",
    params(AuditQuery),
    responses(
        (status = 200, description = "A page of changes", body = Page<AuditEntry>),
        (status = 400, description = "Unknown action, bad limit or cursor", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn audit_log(
    State(st): State<AppState>,
    AdminKey(p): AdminKey,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> ApiResult<Json<Page<AuditEntry>>> {
    let pp = PageParams {
        limit: q.limit,
        cursor: q.cursor,
    };
    let limit = pp.limit()?;
    let seek = pp.seek("audit")?;
    let action = match q.action.as_deref() {
        None => None,
        Some(a) => Some(Action::parse(a).ok_or_else(|| {
            ApiError::bad_request("invalid_action", format!("no admin action {a:?}"))
        })?),
    };
    let client = st.pool.get().await.map_err(crate::Error::from)?;
    let rows = admin_log::list(
        &client,
        &p.tenant,
        action,
        int_position(&seek)?,
        seek.sql(Order::Desc),
        limit as i64 + 1,
    )
    .await?;
    Ok(Json(page(rows, limit, "audit", &seek, |e| {
        e.id.to_string()
    })))
}
