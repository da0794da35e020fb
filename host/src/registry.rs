//! Plugins and pipelines: content-addressed plugin storage, per-tenant
//! plugin names, the pipeline of each payment kind, and loading what a
//! pipeline needs into the engine.
//!
//! Plugin bytes are stored once per digest and shared; names are per tenant
//! (`payrail.plugin_names`), and a tenant can put into its pipelines only
//! digests it deployed itself.

use crate::engine::{PluginEngine, digest_of};
use crate::error::{Error, Result};
use crate::ledger::validate_id;
use crate::model::DEFAULT_TENANT;
use deadpool_postgres::GenericClient;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Most steps a pipeline may have.
pub const MAX_STEPS: usize = 16;

/// A step as a user writes it: a plugin name (latest deployed) or digest,
/// and its config.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    /// A plugin name of the tenant (its latest deploy) or a digest the
    /// tenant deployed.
    pub plugin: String,
    /// The step's config, a JSON object handed to the plugin.
    #[serde(default = "empty_config")]
    #[schema(value_type = Object)]
    pub config: serde_json::Value,
}

fn empty_config() -> serde_json::Value {
    serde_json::json!({})
}

/// A resolved step: always a digest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Step {
    /// The plugin's name when the pipeline was set.
    pub plugin: String,
    /// The exact component this step runs.
    pub digest: String,
    /// The step's config object.
    #[schema(value_type = Object)]
    pub config: serde_json::Value,
}

/// The ordered steps run for one payment kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Pipeline {
    /// The payment kind this pipeline runs for.
    pub kind: String,
    /// Goes up by one with every change.
    pub version: i32,
    /// The steps, run in order.
    pub steps: Vec<Step>,
}

fn is_digest(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Validates, compiles and stores a plugin under `name` for the tenant
/// [`DEFAULT_TENANT`]; see [`deploy_plugin_for`].
pub async fn deploy_plugin(
    client: &impl GenericClient,
    engine: &Arc<PluginEngine>,
    name: &str,
    bytes: Vec<u8>,
) -> Result<String> {
    deploy_plugin_for(client, engine, DEFAULT_TENANT, name, bytes).await
}

/// Validates, compiles and stores a plugin; returns its digest. The bytes
/// are stored once per digest (shared, content-addressed); the name is the
/// tenant's own and now refers to this digest (its latest deploy).
/// Deploying the same bytes twice stores nothing new and returns the same
/// digest.
pub async fn deploy_plugin_for(
    client: &impl GenericClient,
    engine: &Arc<PluginEngine>,
    tenant: &str,
    name: &str,
    bytes: Vec<u8>,
) -> Result<String> {
    validate_id("tenant", tenant)?;
    validate_id("plugin name", name)?;
    if is_digest(name) {
        return Err(Error::invalid(
            "invalid_id",
            "a plugin name must not look like a digest (64 hex characters)",
        ));
    }
    let digest = digest_of(&bytes);
    let eng = engine.clone();
    let bytes = Arc::new(bytes);
    let to_compile = bytes.clone();
    tokio::task::spawn_blocking(move || eng.load(&to_compile))
        .await
        .expect("plugin compile task")?;
    client
        .execute(
            "insert into payrail.plugins (digest, name, bytes, size_bytes) values ($1, $2, $3, $4)
             on conflict (digest) do nothing",
            &[&digest, &name, &bytes.as_slice(), &(bytes.len() as i32)],
        )
        .await?;
    client
        .execute(
            "insert into payrail.plugin_names (tenant, name, digest) values ($1, $2, $3)
             on conflict (tenant, name, digest) do update set deployed_at = clock_timestamp()",
            &[&tenant, &name, &digest],
        )
        .await?;
    Ok(digest)
}

/// A plugin name of a tenant and the digest it refers to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PluginInfo {
    /// The tenant's name for the plugin.
    pub name: String,
    /// sha256 of the component bytes (hex).
    pub digest: String,
    /// Size of the component.
    pub size_bytes: i32,
    /// When this name last pointed at this digest (RFC 3339, UTC).
    pub deployed_at: String,
}

/// Most plugins one [`list_plugins`] call returns.
pub const MAX_LIST: usize = 500;

/// The latest deploy of each plugin name of `tenant`, ordered by name,
/// starting after the name `after` (cursor), at most `limit` (capped at
/// [`MAX_LIST`]).
pub async fn list_plugins(
    client: &impl GenericClient,
    tenant: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<PluginInfo>> {
    let limit = limit.clamp(1, MAX_LIST) as i64;
    let rows = client
        .query(
            "select distinct on (n.name) n.name, n.digest, p.size_bytes,
                    to_char(n.deployed_at at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')
             from payrail.plugin_names n join payrail.plugins p on p.digest = n.digest
             where n.tenant = $1 and ($2::text is null or n.name > $2)
             order by n.name, n.deployed_at desc
             limit $3",
            &[&tenant, &after, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| PluginInfo {
            name: r.get(0),
            digest: r.get(1),
            size_bytes: r.get(2),
            deployed_at: r.get(3),
        })
        .collect())
}

/// Resolves names to digests and replaces the pipeline of `kind` atomically
/// (its version goes up by one).
pub async fn set_pipeline(
    client: &impl GenericClient,
    tenant: &str,
    kind: &str,
    specs: &[StepSpec],
) -> Result<Pipeline> {
    validate_id("payment kind", kind)?;
    if specs.len() > MAX_STEPS {
        return Err(Error::invalid(
            "too_many_steps",
            format!("a pipeline has at most {MAX_STEPS} steps"),
        ));
    }
    let mut steps = Vec::with_capacity(specs.len());
    for s in specs {
        if !s.config.is_object() {
            return Err(Error::invalid(
                "invalid_config",
                format!("config of step {:?} must be a JSON object", s.plugin),
            ));
        }
        // Only the tenant's own plugins: another tenant's name or digest is
        // "not found", whether it exists or not.
        let row = if is_digest(&s.plugin) {
            client
                .query_opt(
                    "select name, digest from payrail.plugin_names
                     where tenant = $1 and digest = $2
                     order by deployed_at desc limit 1",
                    &[&tenant, &s.plugin],
                )
                .await?
        } else {
            client
                .query_opt(
                    "select name, digest from payrail.plugin_names
                     where tenant = $1 and name = $2
                     order by deployed_at desc limit 1",
                    &[&tenant, &s.plugin],
                )
                .await?
        };
        let row = row.ok_or_else(|| Error::NotFound {
            what: "plugin",
            id: s.plugin.clone(),
        })?;
        steps.push(Step {
            plugin: row.get(0),
            digest: row.get(1),
            config: s.config.clone(),
        });
    }
    let json = serde_json::to_value(&steps).expect("steps serialize");
    let row = client
        .query_one(
            "insert into payrail.pipelines (tenant, kind, steps) values ($1, $2, $3)
             on conflict (tenant, kind) do update
               set steps = excluded.steps, version = payrail.pipelines.version + 1,
                   updated_at = now()
             returning version",
            &[&tenant, &kind, &json],
        )
        .await?;
    Ok(Pipeline {
        kind: kind.to_string(),
        version: row.get(0),
        steps,
    })
}

/// Reads the pipeline of `kind`.
pub async fn load_pipeline(
    client: &impl GenericClient,
    tenant: &str,
    kind: &str,
) -> Result<Pipeline> {
    let row = client
        .query_opt(
            "select steps, version from payrail.pipelines where tenant = $1 and kind = $2",
            &[&tenant, &kind],
        )
        .await?
        .ok_or_else(|| Error::NotFound {
            what: "pipeline",
            id: kind.to_string(),
        })?;
    let steps: Vec<Step> = serde_json::from_value(row.get(0))
        .map_err(|e| Error::Setup(format!("stored pipeline {kind:?} is unreadable: {e}")))?;
    Ok(Pipeline {
        kind: kind.to_string(),
        version: row.get(1),
        steps,
    })
}

/// Compiles every step's plugin that the engine does not have yet, from
/// the bytes stored in the database (bytes this host deployed or another
/// host validated; they are compiled here, never deserialized).
pub async fn ensure_loaded(
    client: &impl GenericClient,
    engine: &Arc<PluginEngine>,
    pipeline: &Pipeline,
) -> Result<()> {
    for step in &pipeline.steps {
        if engine.is_loaded(&step.digest) {
            continue;
        }
        let row = client
            .query_opt(
                "select bytes from payrail.plugins where digest = $1",
                &[&step.digest],
            )
            .await?
            .ok_or_else(|| Error::NotFound {
                what: "plugin",
                id: step.digest.clone(),
            })?;
        let bytes: Vec<u8> = row.get(0);
        let eng = engine.clone();
        let digest = tokio::task::spawn_blocking(move || eng.load(&bytes))
            .await
            .expect("plugin compile task")?;
        assert_eq!(
            digest, step.digest,
            "stored plugin bytes match their digest"
        );
    }
    Ok(())
}
