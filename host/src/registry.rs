//! Plugins and pipelines: content-addressed plugin storage, the pipeline of
//! each payment kind, and loading what a pipeline needs into the engine.

use crate::engine::{PluginEngine, digest_of};
use crate::error::{Error, Result};
use crate::ledger::validate_id;
use deadpool_postgres::GenericClient;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Most steps a pipeline may have.
pub const MAX_STEPS: usize = 16;

/// A step as a user writes it: a plugin name (latest deployed) or digest,
/// and its config.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    pub plugin: String,
    #[serde(default = "empty_config")]
    pub config: serde_json::Value,
}

fn empty_config() -> serde_json::Value {
    serde_json::json!({})
}

/// A resolved step: always a digest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub plugin: String,
    pub digest: String,
    pub config: serde_json::Value,
}

/// The ordered steps run for one payment kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pipeline {
    pub kind: String,
    pub version: i32,
    pub steps: Vec<Step>,
}

fn is_digest(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Validates, compiles and stores a plugin; returns its digest. Deploying
/// the same bytes twice is a no-op returning the same digest.
pub async fn deploy_plugin(
    client: &impl GenericClient,
    engine: &Arc<PluginEngine>,
    name: &str,
    bytes: Vec<u8>,
) -> Result<String> {
    validate_id("plugin name", name)?;
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
    Ok(digest)
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
        let row = if is_digest(&s.plugin) {
            client
                .query_opt(
                    "select name, digest from payrail.plugins where digest = $1",
                    &[&s.plugin],
                )
                .await?
        } else {
            client
                .query_opt(
                    "select name, digest from payrail.plugins where name = $1
                     order by created_at desc limit 1",
                    &[&s.plugin],
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
