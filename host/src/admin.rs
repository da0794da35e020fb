//! Every change an admin makes, for the command line and the API alike:
//! each runs in one transaction with its row in the admin audit log
//! ([`crate::admin_log`]), so a change is never made unrecorded and a
//! record never names a change that rolled back. The tables themselves
//! are written by their owners (`registry.rs`, `apikeys.rs`, `outbox/`,
//! `ledger.rs`); this module only brackets them.

use crate::admin_log::{self, Action, Actor};
use crate::apikeys::{self, ApiKey, NewApiKey, Scope};
use crate::engine::PluginEngine;
use crate::error::{Error, Result};
use crate::ledger::{self, Account, NewAccount};
use crate::registry::{self, Pipeline, StepSpec};
use deadpool_postgres::Client;
use serde_json::{Value, json};
use std::sync::Arc;

fn to_json(v: &impl serde::Serialize) -> Value {
    serde_json::to_value(v).expect("admin records serialize")
}

/// The pipeline of `kind` if there is one (a first `set` has none).
async fn current_pipeline(
    client: &impl deadpool_postgres::GenericClient,
    tenant: &str,
    kind: &str,
) -> Result<Option<Pipeline>> {
    match registry::load_pipeline(client, tenant, kind).await {
        Ok(p) => Ok(Some(p)),
        Err(Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Deploys a plugin component under `name` (see
/// [`registry::deploy_plugin_versioned`]); returns its digest.
pub async fn deploy_plugin(
    client: &mut Client,
    engine: &Arc<PluginEngine>,
    actor: &Actor,
    name: &str,
    version: Option<&str>,
    signature: Option<&str>,
    bytes: Vec<u8>,
) -> Result<String> {
    let size_bytes = bytes.len();
    let tx = client.transaction().await?;
    let digest = registry::deploy_plugin_versioned(
        &tx,
        engine,
        &actor.tenant,
        name,
        version,
        signature,
        bytes,
    )
    .await?;
    let after = json!({ "digest": digest, "version": version, "size_bytes": size_bytes,
                        "signed": signature.is_some() });
    admin_log::record(&tx, actor, Action::PluginDeploy, name, None, Some(after)).await?;
    tx.commit().await?;
    Ok(digest)
}

/// Replaces the pipeline of `kind` ([`registry::set_pipeline`]).
pub async fn set_pipeline(
    client: &mut Client,
    engine: &PluginEngine,
    actor: &Actor,
    kind: &str,
    specs: &[StepSpec],
) -> Result<Pipeline> {
    let tx = client.transaction().await?;
    let before = current_pipeline(&tx, &actor.tenant, kind).await?;
    let after = registry::set_pipeline(&tx, engine, &actor.tenant, kind, specs).await?;
    admin_log::record(
        &tx,
        actor,
        Action::PipelineSet,
        kind,
        before.map(|b| to_json(&b)),
        Some(to_json(&after)),
    )
    .await?;
    tx.commit().await?;
    Ok(after)
}

/// The pipeline changes that take the current version and make a new
/// one: rollback, shadow set, promote.
#[derive(Debug, Clone)]
pub enum PipelineChange<'a> {
    /// Back to version `Some(v)`, or the one before the current.
    Rollback(Option<i32>),
    /// Set (`Some`) or clear the shadow candidate of a step.
    SetCandidate(usize, Option<&'a str>),
    /// Make a step's candidate live.
    Promote(usize),
}

/// Applies `change` to the pipeline of `kind` as a new version.
pub async fn change_pipeline(
    client: &mut Client,
    actor: &Actor,
    kind: &str,
    change: PipelineChange<'_>,
) -> Result<Pipeline> {
    let tx = client.transaction().await?;
    let t = &actor.tenant;
    let before = registry::load_pipeline(&tx, t, kind).await?;
    let (action, after) = match change {
        PipelineChange::Rollback(to) => (
            Action::PipelineRollback,
            registry::rollback_pipeline(&tx, t, kind, to).await?,
        ),
        PipelineChange::SetCandidate(step, plugin) => (
            Action::ShadowSet,
            registry::set_candidate(&tx, t, kind, step, plugin).await?,
        ),
        PipelineChange::Promote(step) => (
            Action::ShadowPromote,
            registry::promote_candidate(&tx, t, kind, step).await?,
        ),
    };
    admin_log::record(
        &tx,
        actor,
        action,
        kind,
        Some(to_json(&before)),
        Some(to_json(&after)),
    )
    .await?;
    tx.commit().await?;
    Ok(after)
}

/// Creates an API key of the actor's tenant ([`apikeys::create`]).
pub async fn create_key(
    client: &mut Client,
    actor: &Actor,
    scopes: &[Scope],
    expires_at: Option<time::OffsetDateTime>,
) -> Result<NewApiKey> {
    let tx = client.transaction().await?;
    let key = apikeys::create_expiring(&tx, &actor.tenant, scopes, expires_at).await?;
    let after = to_json(&key.key);
    admin_log::record(
        &tx,
        actor,
        Action::KeyCreate,
        &key.key.id,
        None,
        Some(after),
    )
    .await?;
    tx.commit().await?;
    Ok(key)
}

/// Revokes API key `id` ([`apikeys::revoke_scoped`]): of `tenant` when
/// given (a key of another tenant is not found), of any tenant for the
/// operator's command line. Recorded under the key's tenant, by `who`.
pub async fn revoke_key(
    client: &mut Client,
    who: &str,
    tenant: Option<&str>,
    id: &str,
) -> Result<ApiKey> {
    let tx = client.transaction().await?;
    let key = apikeys::revoke_scoped(&tx, tenant, id).await?;
    let actor = Actor {
        tenant: key.tenant.clone(),
        who: who.to_string(),
    };
    admin_log::record(
        &tx,
        &actor,
        Action::KeyRevoke,
        id,
        None,
        Some(to_json(&key)),
    )
    .await?;
    tx.commit().await?;
    Ok(key)
}

/// Requeues dead letters of `tenant` (`None`: of every tenant, the
/// operator's command line): `ids`, or all of them.
pub async fn retry_dead(
    client: &mut Client,
    actor: &Actor,
    tenant: Option<&str>,
    ids: Option<&[i64]>,
) -> Result<u64> {
    let tx = client.transaction().await?;
    let n = crate::outbox::retry_dead(&tx, tenant, ids).await?;
    let after = json!({ "ids": ids, "all": ids.is_none(), "requeued": n,
                        "every_tenant": tenant.is_none() });
    admin_log::record(&tx, actor, Action::OutboxRetry, "outbox", None, Some(after)).await?;
    tx.commit().await?;
    Ok(n)
}

/// Opens an account ([`ledger::create_accounts_in`]); one with an opening
/// balance (money drawn from equity) or an overdraft is recorded.
pub async fn open_account(client: &mut Client, actor: &Actor, new: &NewAccount) -> Result<Account> {
    let tx = client.transaction().await?;
    let account = ledger::create_accounts_in(&tx, &actor.tenant, std::slice::from_ref(new))
        .await?
        .pop()
        .expect("one account opened");
    if new.opening_balance > 0 || new.allow_negative {
        let after = json!({ "currency": new.currency, "opening_balance": new.opening_balance,
                            "allow_negative": new.allow_negative });
        admin_log::record(&tx, actor, Action::AccountOpen, &new.id, None, Some(after)).await?;
    }
    tx.commit().await?;
    Ok(account)
}
