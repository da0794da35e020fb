//! Plugins and pipelines: content-addressed plugin storage, per-tenant
//! plugin names, the pipeline of each payment kind, and loading what a
//! pipeline needs into the engine.
//!
//! Plugin bytes are stored once per digest and shared; names are per tenant
//! (`payrail.plugin_names`), and a tenant can put into its pipelines only
//! digests it deployed itself.

use crate::engine::{PluginEngine, PluginLimitOverrides, digest_of};
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
    /// Shadow mode: a plugin name or digest of the tenant run on the same
    /// input after the live plugin, with no effect on the payment; its
    /// outcome is journaled for `payrail shadow report`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<String>,
    /// Limits of this step's calls (live and candidate); absent fields keep
    /// the host's limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<PluginLimitOverrides>,
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
    /// The shadow candidate, if any: runs after the live plugin on the same
    /// input; never affects the payment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<Candidate>,
    /// Per-step limit overrides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<PluginLimitOverrides>,
}

/// A shadow candidate of a step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Candidate {
    /// The candidate plugin's name when the pipeline was set.
    pub plugin: String,
    /// The exact component the candidate runs.
    pub digest: String,
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
    deploy_plugin_versioned(client, engine, tenant, name, None, None, bytes).await
}

/// [`deploy_plugin_for`] with a version label. Without one, a new digest
/// under `name` is labelled `v<N>` (N = digests deployed under the name so
/// far + 1); redeploying the same bytes keeps the label it had unless a
/// new one is given. `signature` (hex ed25519 over the digest, see
/// [`crate::signing`]) is required when the engine has trusted keys.
pub async fn deploy_plugin_versioned(
    client: &impl GenericClient,
    engine: &Arc<PluginEngine>,
    tenant: &str,
    name: &str,
    version: Option<&str>,
    signature: Option<&str>,
    bytes: Vec<u8>,
) -> Result<String> {
    validate_id("tenant", tenant)?;
    if let Some(v) = version {
        validate_id("plugin version", v)?;
    }
    validate_id("plugin name", name)?;
    if is_digest(name) {
        return Err(Error::invalid(
            "invalid_id",
            "a plugin name must not look like a digest (64 hex characters)",
        ));
    }
    let digest = digest_of(&bytes);
    engine.trusted_keys().verify(&digest, signature)?;
    // verified (a given signature is checked even without trusted keys),
    // so kept: a host that turns signing on later checks it at load
    let signature = signature.map(|s| s.trim().to_ascii_lowercase());
    let eng = engine.clone();
    let bytes = Arc::new(bytes);
    let to_compile = bytes.clone();
    tokio::task::spawn_blocking(move || eng.load(&to_compile))
        .await
        .expect("plugin compile task")?;
    client
        .execute(
            "insert into payrail.plugins (digest, name, bytes, size_bytes, signature)
             values ($1, $2, $3, $4, $5)
             on conflict (digest) do update
               set signature = coalesce(excluded.signature, payrail.plugins.signature)
               where excluded.signature is not null",
            &[
                &digest,
                &name,
                &bytes.as_slice(),
                &(bytes.len() as i32),
                &signature,
            ],
        )
        .await?;
    client
        .execute(
            "insert into payrail.plugin_names (tenant, name, digest, version)
             values ($1, $2, $3, coalesce($4, 'v' || (
                 select count(*) + 1 from payrail.plugin_names where tenant = $1 and name = $2)))
             on conflict (tenant, name, digest) do update
               set deployed_at = clock_timestamp(),
                   version = coalesce($4, payrail.plugin_names.version)",
            &[&tenant, &name, &digest, &version],
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
    /// The version label of this deploy (`--version`, or `v<N>`).
    pub version: Option<String>,
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
    (cmp, dir): (&str, &str),
    limit: usize,
) -> Result<Vec<PluginInfo>> {
    debug_assert!(matches!(cmp, "<" | ">") && matches!(dir, "asc" | "desc"));
    let limit = limit.clamp(1, MAX_LIST) as i64;
    let rows = client
        .query(
            &format!(
                "select * from (
                     select distinct on (n.name) n.name, n.digest, p.size_bytes,
                            to_char(n.deployed_at at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),
                            n.version
                     from payrail.plugin_names n join payrail.plugins p on p.digest = n.digest
                     where n.tenant = $1 and ($2::text is null or n.name {cmp} $2)
                     order by n.name, n.deployed_at desc) latest
                 order by name {dir} limit $3"
            ),
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
            version: r.get(4),
        })
        .collect())
}

/// Resolves names to digests and replaces the pipeline of `kind` atomically
/// (its version goes up by one). Refused, with nothing changed, if a step's
/// limits exceed the engine's operator caps (`invalid_limits`, naming the
/// field, the value and the cap) or, on a host with trusted keys, a step's
/// plugin is not signed by one of them (`plugin_unsigned`,
/// `plugin_signature_invalid`).
pub async fn set_pipeline(
    client: &impl GenericClient,
    engine: &PluginEngine,
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
        if let Some(l) = &s.limits {
            l.validate_within(&engine.config().caps).map_err(|m| {
                Error::invalid("invalid_limits", format!("step {:?}: {m}", s.plugin))
            })?;
        }
        let (plugin, digest) = resolve_trusted(client, engine, tenant, &s.plugin).await?;
        let candidate = match &s.candidate {
            Some(c) => {
                let (plugin, digest) = resolve_trusted(client, engine, tenant, c).await?;
                Some(Candidate { plugin, digest })
            }
            None => None,
        };
        steps.push(Step {
            plugin,
            digest,
            config: s.config.clone(),
            candidate,
            limits: s.limits,
        });
    }
    store_version(client, tenant, kind, steps, "set", None).await
}

/// [`resolve`], and on a host with trusted keys, a check of the plugin's
/// stored signature (the error names the step's plugin).
async fn resolve_trusted(
    client: &impl GenericClient,
    engine: &PluginEngine,
    tenant: &str,
    plugin: &str,
) -> Result<(String, String)> {
    let (name, digest) = resolve(client, tenant, plugin).await?;
    if !engine.trusted_keys().is_empty() {
        let sig = stored_signature(client, &digest).await?;
        engine
            .trusted_keys()
            .verify(&digest, sig.as_deref())
            .map_err(|e| {
                Error::invalid(e.code, format!("step plugin {plugin:?}: {}", e.message))
            })?;
    }
    Ok((name, digest))
}

/// The signature stored with plugin `digest` (`None`: unsigned).
async fn stored_signature(client: &impl GenericClient, digest: &str) -> Result<Option<String>> {
    Ok(client
        .query_opt(
            "select signature from payrail.plugins where digest = $1",
            &[&digest],
        )
        .await?
        .and_then(|r| r.get(0)))
}

/// The (name, digest) a step's plugin reference names: only the tenant's
/// own plugins; another tenant's name or digest is "not found", whether it
/// exists or not.
async fn resolve(
    client: &impl GenericClient,
    tenant: &str,
    plugin: &str,
) -> Result<(String, String)> {
    let sql = if is_digest(plugin) {
        "select name, digest from payrail.plugin_names
         where tenant = $1 and digest = $2
         order by deployed_at desc limit 1"
    } else {
        "select name, digest from payrail.plugin_names
         where tenant = $1 and name = $2
         order by deployed_at desc limit 1"
    };
    let row = client
        .query_opt(sql, &[&tenant, &plugin])
        .await?
        .ok_or_else(|| Error::NotFound {
            what: "plugin",
            id: plugin.to_string(),
        })?;
    Ok((row.get(0), row.get(1)))
}

/// Makes `steps` the current pipeline of `kind` and appends it to the
/// history, in one statement (atomic: a payment sees the old or the new
/// version, never a mix). With `expected`, only if the current version is
/// still `expected` (else a `pipeline_changed` error: retry).
async fn store_version(
    client: &impl GenericClient,
    tenant: &str,
    kind: &str,
    steps: Vec<Step>,
    note: &str,
    expected: Option<i32>,
) -> Result<Pipeline> {
    let json = serde_json::to_value(&steps).expect("steps serialize");
    let row = client
        .query_opt(
            "with up as (
                 insert into payrail.pipelines (tenant, kind, steps) values ($1, $2, $3)
                 on conflict (tenant, kind) do update
                   set steps = excluded.steps, version = payrail.pipelines.version + 1,
                       updated_at = now()
                   where $5::int is null or payrail.pipelines.version = $5::int
                 returning version
             ), hist as (
                 insert into payrail.pipeline_versions (tenant, kind, version, steps, note)
                 select $1, $2, version, $3, $4 from up
                 returning version
             )
             select version from hist",
            &[&tenant, &kind, &json, &note, &expected],
        )
        .await?
        .ok_or_else(|| {
            Error::invalid(
                "pipeline_changed",
                format!("the pipeline {kind:?} changed meanwhile; look at it again and retry"),
            )
        })?;
    Ok(Pipeline {
        kind: kind.to_string(),
        version: row.get(0),
        steps,
    })
}

/// One entry of a pipeline's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PipelineVersion {
    /// The version number (1, 2, ...).
    pub version: i32,
    /// What made it: `set`, `rollback to vN`, `promote step N`.
    pub note: String,
    /// When it was made (RFC 3339, UTC).
    pub created_at: String,
    /// Its steps.
    pub steps: Vec<Step>,
}

/// Most history entries one [`pipeline_history`] call returns.
pub const MAX_HISTORY: i64 = 1000;

/// The versions of the pipeline of `kind`, newest first, at most `limit`
/// (capped at [`MAX_HISTORY`]).
pub async fn pipeline_history(
    client: &impl GenericClient,
    tenant: &str,
    kind: &str,
    limit: i64,
) -> Result<Vec<PipelineVersion>> {
    let rows = client
        .query(
            "select version, note,
                    to_char(created_at at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),
                    steps
             from payrail.pipeline_versions where tenant = $1 and kind = $2
             order by version desc limit $3",
            &[&tenant, &kind, &limit.clamp(1, MAX_HISTORY)],
        )
        .await?;
    if rows.is_empty() {
        return Err(Error::NotFound {
            what: "pipeline",
            id: kind.to_string(),
        });
    }
    rows.iter()
        .map(|r| {
            Ok(PipelineVersion {
                version: r.get(0),
                note: r.get(1),
                created_at: r.get(2),
                steps: serde_json::from_value(r.get(3)).map_err(|e| {
                    Error::Setup(format!("stored pipeline {kind:?} is unreadable: {e}"))
                })?,
            })
        })
        .collect()
}

/// Makes the steps of an earlier version current again, as a new version
/// (history is append-only). `to`: the version to restore; `None`: the
/// one before the current.
pub async fn rollback_pipeline(
    client: &impl GenericClient,
    tenant: &str,
    kind: &str,
    to: Option<i32>,
) -> Result<Pipeline> {
    let current = load_pipeline(client, tenant, kind).await?;
    let target = to.unwrap_or(current.version - 1);
    if target < 1 || target > current.version {
        return Err(Error::invalid(
            "invalid_version",
            format!(
                "pipeline {kind:?} has versions 1..={}; there is no version {target} to roll back to",
                current.version
            ),
        ));
    }
    let row = client
        .query_opt(
            "select steps from payrail.pipeline_versions
             where tenant = $1 and kind = $2 and version = $3",
            &[&tenant, &kind, &target],
        )
        .await?
        .ok_or_else(|| Error::NotFound {
            what: "pipeline version",
            id: format!("{kind} v{target}"),
        })?;
    let steps: Vec<Step> = serde_json::from_value(row.get(0))
        .map_err(|e| Error::Setup(format!("stored pipeline {kind:?} is unreadable: {e}")))?;
    store_version(
        client,
        tenant,
        kind,
        steps,
        &format!("rollback to v{target}"),
        Some(current.version),
    )
    .await
}

/// Sets (`Some`) or clears (`None`) the shadow candidate of step `step`
/// (0-based), in one new pipeline version.
pub async fn set_candidate(
    client: &impl GenericClient,
    tenant: &str,
    kind: &str,
    step: usize,
    candidate: Option<&str>,
) -> Result<Pipeline> {
    let current = load_pipeline(client, tenant, kind).await?;
    let mut steps = current.steps;
    let n = steps.len();
    let Some(s) = steps.get_mut(step) else {
        return Err(Error::invalid(
            "invalid_step",
            format!("pipeline {kind:?} has {n} step(s); there is no step {step}"),
        ));
    };
    s.candidate = match candidate {
        Some(c) => {
            let (plugin, digest) = resolve(client, tenant, c).await?;
            Some(Candidate { plugin, digest })
        }
        None => None,
    };
    let note = match &s.candidate {
        Some(c) => format!("shadow step {step}: {} {:.12}", c.plugin, c.digest),
        None => format!("shadow step {step}: cleared"),
    };
    store_version(client, tenant, kind, steps, &note, Some(current.version)).await
}

/// Promotes the shadow candidate of step `step` (0-based) to live, in one
/// new pipeline version; the step keeps its config and limits and has no
/// candidate afterwards.
pub async fn promote_candidate(
    client: &impl GenericClient,
    tenant: &str,
    kind: &str,
    step: usize,
) -> Result<Pipeline> {
    let current = load_pipeline(client, tenant, kind).await?;
    let mut steps = current.steps;
    let Some(s) = steps.get_mut(step) else {
        return Err(Error::invalid(
            "invalid_step",
            format!(
                "pipeline {kind:?} has {} step(s); there is no step {step}",
                steps.len()
            ),
        ));
    };
    let Some(c) = s.candidate.take() else {
        return Err(Error::invalid(
            "no_candidate",
            format!("step {step} of pipeline {kind:?} has no shadow candidate to promote"),
        ));
    };
    s.plugin = c.plugin;
    s.digest = c.digest;
    store_version(
        client,
        tenant,
        kind,
        steps,
        &format!("promote step {step}"),
        Some(current.version),
    )
    .await
}

/// One deploy of a plugin name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PluginVersion {
    /// The version label.
    pub version: Option<String>,
    /// sha256 of the component (hex).
    pub digest: String,
    /// Size of the component.
    pub size_bytes: i32,
    /// Hex ed25519 signature over the digest, if it was deployed signed.
    pub signature: Option<String>,
    /// When the name last pointed at this digest (RFC 3339, UTC).
    pub deployed_at: String,
}

/// A plugin name of a tenant with every component it has pointed at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PluginDetail {
    /// The tenant's name for the plugin.
    pub name: String,
    /// Its deploys, newest first (at most [`MAX_LIST`]).
    pub versions: Vec<PluginVersion>,
}

/// The deploys of plugin `name` of `tenant`, newest first;
/// `plugin_not_found` if it has none.
pub async fn plugin_detail(
    client: &impl GenericClient,
    tenant: &str,
    name: &str,
) -> Result<PluginDetail> {
    let rows = client
        .query(
            "select n.version, n.digest, p.size_bytes, p.signature,
                    to_char(n.deployed_at at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')
             from payrail.plugin_names n join payrail.plugins p on p.digest = n.digest
             where n.tenant = $1 and n.name = $2
             order by n.deployed_at desc limit $3",
            &[&tenant, &name, &(MAX_LIST as i64)],
        )
        .await?;
    if rows.is_empty() {
        return Err(Error::NotFound {
            what: "plugin",
            id: name.chars().take(64).collect(),
        });
    }
    Ok(PluginDetail {
        name: name.to_string(),
        versions: rows
            .iter()
            .map(|r| PluginVersion {
                version: r.get(0),
                digest: r.get(1),
                size_bytes: r.get(2),
                signature: r.get(3),
                deployed_at: r.get(4),
            })
            .collect(),
    })
}

/// The pipelines of `tenant` by kind, those `cmp` kind `after`, in `dir`
/// order (see `api::pagination::Seek::sql`), at most `limit`.
pub async fn list_pipelines(
    client: &impl GenericClient,
    tenant: &str,
    after: Option<&str>,
    (cmp, dir): (&str, &str),
    limit: usize,
) -> Result<Vec<Pipeline>> {
    debug_assert!(matches!(cmp, "<" | ">") && matches!(dir, "asc" | "desc"));
    let rows = client
        .query(
            &format!(
                "select kind, steps, version from payrail.pipelines
                 where tenant = $1 and ($2::text is null or kind {cmp} $2)
                 order by kind {dir} limit $3"
            ),
            &[&tenant, &after, &(limit.clamp(1, MAX_LIST) as i64)],
        )
        .await?;
    rows.iter()
        .map(|r| {
            let kind: String = r.get(0);
            let steps: Vec<Step> = serde_json::from_value(r.get(1)).map_err(|e| {
                Error::Setup(format!("stored pipeline {kind:?} is unreadable: {e}"))
            })?;
            Ok(Pipeline {
                kind,
                version: r.get(2),
                steps,
            })
        })
        .collect()
}

/// Reads the pipeline of `kind`.
pub async fn load_pipeline(
    client: &impl GenericClient,
    tenant: &str,
    kind: &str,
) -> Result<Pipeline> {
    // Prepared once per connection: this read is in every payment's first
    // flight, and an unprepared query would add a round trip.
    let stmt = client
        .prepare_cached(
            "select steps, version from payrail.pipelines where tenant = $1 and kind = $2",
        )
        .await?;
    let row = client
        .query_opt(&stmt, &[&tenant, &kind])
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
    for (i, step) in pipeline.steps.iter().enumerate() {
        ensure_digest_loaded(client, engine, &step.digest)
            .await
            .map_err(|e| match e {
                // attribute a refused signature to its step
                Error::Plugin { fault, .. } => Error::Plugin {
                    step: i,
                    plugin: step.plugin.clone(),
                    digest: step.digest.clone(),
                    fault,
                },
                e => e,
            })?;
        // A candidate that cannot be loaded must not fail the payment: its
        // shadow call then records `plugin_not_loaded`.
        if let Some(c) = &step.candidate
            && let Err(e) = ensure_digest_loaded(client, engine, &c.digest).await
        {
            tracing::warn!(candidate = %c.digest, error = %e, "shadow candidate not loaded");
        }
    }
    Ok(())
}

/// Compiles the stored plugin `digest` unless the engine has it already.
/// On a host with trusted keys, the stored signature is checked first: a
/// plugin deployed unsigned (before signing was on) or signed by a key no
/// longer trusted is refused with the fault `plugin_unsigned` and never
/// compiled. (The engine then only ever holds checked plugins, so a loaded
/// one needs no check.)
pub async fn ensure_digest_loaded(
    client: &impl GenericClient,
    engine: &Arc<PluginEngine>,
    digest: &str,
) -> Result<()> {
    if engine.is_loaded(digest) {
        return Ok(());
    }
    let row = client
        .query_opt(
            "select bytes, signature from payrail.plugins where digest = $1",
            &[&digest],
        )
        .await?
        .ok_or_else(|| Error::NotFound {
            what: "plugin",
            id: digest.to_string(),
        })?;
    let signature: Option<String> = row.get(1);
    if !engine.trusted_keys().is_empty()
        && let Err(e) = engine.trusted_keys().verify(digest, signature.as_deref())
    {
        return Err(Error::Plugin {
            step: 0,
            plugin: digest.to_string(),
            digest: digest.to_string(),
            fault: crate::engine::PluginFault::Unsigned {
                digest: digest.to_string(),
                reason: e.to_string(),
            },
        });
    }
    let bytes: Vec<u8> = row.get(0);
    let eng = engine.clone();
    let loaded = tokio::task::spawn_blocking(move || eng.load(&bytes))
        .await
        .expect("plugin compile task")?;
    if loaded != digest {
        return Err(Error::Setup(format!(
            "stored plugin {digest} has bytes whose digest is {loaded}: the plugins table was altered"
        )));
    }
    Ok(())
}
