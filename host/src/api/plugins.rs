//! `/v1/plugins` and `/v1/pipelines` (scope `admin`): deploy plugin
//! components, list them, set and read the pipeline of a payment kind.

use super::AppState;
use super::extract::{AdminKey, ApiJson, ApiQuery, pipeline_path, read_body};
use super::pagination::{Order, Page, PageParams, page};
use super::problem::{ApiError, ApiResult, Problem};
use crate::ledger::validate_id;
use crate::registry::{self, Pipeline, PluginInfo, StepSpec};
use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// `POST /v1/plugins` query.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UploadParams {
    /// Name pipelines use for the latest deploy (1-64 of `A-Z a-z 0-9 _ . : -`).
    pub name: String,
    /// Version label of this deploy (default `v<N>`).
    pub version: Option<String>,
    /// Hex ed25519 signature of the digest (`payrail plugin sign`);
    /// required when the host has trusted plugin keys.
    pub signature: Option<String>,
}

/// A deployed plugin.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Deployed {
    /// The tenant's name for it.
    pub name: String,
    /// sha256 of the component (hex).
    pub digest: String,
}

/// Deploy a plugin: the raw `.wasm` component as the body.
#[utoipa::path(post, path = "/v1/plugins", tag = "admin",
    params(UploadParams),
    request_body(content = Vec<u8>, content_type = "application/wasm", description = "A wasm32-wasip2 component built with the payrail-plugin SDK"),
    responses(
        (status = 201, description = "Validated, compiled and stored", body = Deployed),
        (status = 400, description = "Not a valid plugin component", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Larger than plugins.max_plugin_bytes", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn upload_plugin(
    State(st): State<AppState>,
    AdminKey(p): AdminKey,
    ApiQuery(q): ApiQuery<UploadParams>,
    req: Request,
) -> ApiResult<(StatusCode, Json<Deployed>)> {
    validate_id("plugin name", &q.name)?;
    let bytes = read_body(req, st.limits.max_plugin_bytes, "plugin_too_large").await?;
    if bytes.is_empty() {
        return Err(ApiError::bad_request(
            "plugin_invalid",
            "send the plugin's .wasm component as the request body",
        ));
    }
    let mut client = st.pool.get().await.map_err(crate::Error::from)?;
    let digest = crate::admin::deploy_plugin(
        &mut client,
        &st.engine,
        &super::admin::actor(&p),
        &q.name,
        q.version.as_deref(),
        q.signature.as_deref(),
        bytes.to_vec(),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(Deployed {
            name: q.name,
            digest,
        }),
    ))
}

/// List the tenant's plugins (the latest deploy of each name).
#[utoipa::path(get, path = "/v1/plugins", tag = "admin",
    params(PageParams),
    responses(
        (status = 200, description = "A page of plugins, by name", body = Page<PluginInfo>),
    ))]
pub async fn list_plugins(
    State(st): State<AppState>,
    AdminKey(p): AdminKey,
    ApiQuery(q): ApiQuery<PageParams>,
) -> ApiResult<Json<Page<PluginInfo>>> {
    let limit = q.limit()?;
    let seek = q.seek("plugins")?;
    let client = st.pool.get().await.map_err(crate::Error::from)?;
    let rows = registry::list_plugins(
        &client,
        &p.tenant,
        seek.position(),
        seek.sql(Order::Asc),
        limit + 1,
    )
    .await?;
    Ok(Json(page(rows, limit, "plugins", &seek, |r| {
        r.name.clone()
    })))
}

/// `PUT /v1/pipelines/{kind}` body.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutPipeline {
    /// The steps, run in order (at most 16).
    pub steps: Vec<StepSpec>,
}

/// Replace the pipeline of a payment kind.
#[utoipa::path(put, path = "/v1/pipelines/{kind}", tag = "admin",
    params(("kind" = String, Path, description = "Payment kind")),
    request_body = PutPipeline,
    responses(
        (status = 200, description = "The new pipeline (version + 1)", body = Pipeline),
        (status = 400, description = "Invalid request", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "A step names an unknown plugin", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn put_pipeline(
    State(st): State<AppState>,
    AdminKey(p): AdminKey,
    Path(kind): Path<String>,
    ApiJson(body): ApiJson<PutPipeline>,
) -> ApiResult<Json<Pipeline>> {
    let mut client = st.pool.get().await.map_err(crate::Error::from)?;
    let actor = super::admin::actor(&p);
    Ok(Json(
        crate::admin::set_pipeline(&mut client, &st.engine, &actor, &kind, &body.steps).await?,
    ))
}

/// Read the pipeline of a payment kind.
#[utoipa::path(get, path = "/v1/pipelines/{kind}", tag = "admin",
    params(("kind" = String, Path, description = "Payment kind")),
    responses(
        (status = 200, description = "The pipeline", body = Pipeline),
        (status = 404, description = "No pipeline for this kind", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_pipeline(
    State(st): State<AppState>,
    AdminKey(p): AdminKey,
    Path(kind): Path<String>,
) -> ApiResult<Json<Pipeline>> {
    pipeline_path(&kind)?;
    let client = st.pool.get().await.map_err(crate::Error::from)?;
    Ok(Json(
        registry::load_pipeline(&client, &p.tenant, &kind).await?,
    ))
}

/// Shadow report of a payment kind: per step and candidate, how often the
/// candidate agreed with the live plugin, and example differences.
#[utoipa::path(get, path = "/v1/pipelines/{kind}/shadow", tag = "admin",
    params(("kind" = String, Path, description = "Payment kind")),
    responses(
        (status = 200, description = "Agree/disagree counts and example differences", body = crate::shadow::ShadowReport),
        (status = 404, description = "No pipeline for this kind", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_shadow_report(
    State(st): State<AppState>,
    AdminKey(p): AdminKey,
    Path(kind): Path<String>,
) -> ApiResult<Json<crate::shadow::ShadowReport>> {
    pipeline_path(&kind)?;
    let client = st.pool.get().await.map_err(crate::Error::from)?;
    // 404 for a kind without a pipeline, like GET /v1/pipelines/{kind}
    registry::load_pipeline(&client, &p.tenant, &kind).await?;
    Ok(Json(
        crate::shadow::report(&client, &p.tenant, &kind).await?,
    ))
}
