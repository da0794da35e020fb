//! The admin audit log (`payrail.admin_audit`, schema 18): one append-only
//! row per change an admin makes, written in the change's own transaction
//! (so a change and its record commit or roll back together). This module
//! is the table's one writer; the table's trigger refuses updates, deletes
//! and truncation.

use crate::error::Result;
use deadpool_postgres::GenericClient;
use serde::Serialize;

/// What an admin did. The names are stable: they are stored, filtered on
/// (`?action=`) and shown in the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// A plugin component deployed under a name.
    PluginDeploy,
    /// A pipeline replaced.
    PipelineSet,
    /// A pipeline rolled back to an earlier version.
    PipelineRollback,
    /// A step's shadow candidate set or cleared.
    ShadowSet,
    /// A step's shadow candidate made live.
    ShadowPromote,
    /// An API key created.
    KeyCreate,
    /// An API key revoked.
    KeyRevoke,
    /// Dead-lettered events requeued.
    OutboxRetry,
    /// An account opened with money (an opening balance) or an overdraft.
    AccountOpen,
}

impl Action {
    /// Every action, for documentation and filters.
    pub const ALL: [Action; 9] = [
        Action::PluginDeploy,
        Action::PipelineSet,
        Action::PipelineRollback,
        Action::ShadowSet,
        Action::ShadowPromote,
        Action::KeyCreate,
        Action::KeyRevoke,
        Action::OutboxRetry,
        Action::AccountOpen,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::PluginDeploy => "plugin.deploy",
            Action::PipelineSet => "pipeline.set",
            Action::PipelineRollback => "pipeline.rollback",
            Action::ShadowSet => "shadow.set",
            Action::ShadowPromote => "shadow.promote",
            Action::KeyCreate => "apikey.create",
            Action::KeyRevoke => "apikey.revoke",
            Action::OutboxRetry => "outbox.retry",
            Action::AccountOpen => "account.open",
        }
    }

    /// The action of a stored name.
    pub fn parse(s: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

/// Who made a change: the tenant it acts on, and the API key id (or
/// `cli:<os user>` for the command line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// The tenant the change acts on.
    pub tenant: String,
    /// The key id, or `cli:<user>`.
    pub who: String,
}

impl Actor {
    /// The command line's actor for `tenant`: `cli:$USER` (`cli:unknown`
    /// when the variable is unset).
    pub fn cli(tenant: &str) -> Actor {
        let user = std::env::var("USER")
            .ok()
            .filter(|u| !u.is_empty() && u.len() <= 64)
            .unwrap_or_else(|| "unknown".to_string());
        Actor {
            tenant: tenant.to_string(),
            who: format!("cli:{user}"),
        }
    }
}

/// One recorded change.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    /// Position in the log (increasing).
    pub id: i64,
    /// The API key id that made the change, or `cli:<user>`.
    pub key_id: String,
    /// What was done (`pipeline.rollback`, `apikey.create`, ...).
    pub action: String,
    /// What it was done to (a pipeline kind, a key id, a plugin name, ...).
    pub target: String,
    /// The state before, where there was one.
    #[schema(value_type = Option<Object>)]
    pub before: Option<serde_json::Value>,
    /// The state after.
    #[schema(value_type = Option<Object>)]
    pub after: Option<serde_json::Value>,
    /// When (RFC 3339, UTC).
    pub at: String,
}

/// Appends one row. `client` is the change's transaction.
pub async fn record(
    client: &impl GenericClient,
    actor: &Actor,
    action: Action,
    target: &str,
    before: Option<serde_json::Value>,
    after: Option<serde_json::Value>,
) -> Result<()> {
    client
        .execute(
            "insert into payrail.admin_audit (tenant, actor, action, target, before, after)
             values ($1, $2, $3, $4, $5::jsonb::json, $6::jsonb::json)",
            &[
                &actor.tenant,
                &actor.who,
                &action.as_str(),
                &target,
                &before,
                &after,
            ],
        )
        .await?;
    Ok(())
}

/// Most rows one [`list`] call returns.
pub const MAX_LIST: i64 = 200;

/// A page of `tenant`'s log: rows with `id cmp after` in `dir` order (see
/// `api::pagination::Seek::sql`), of one action if given.
pub async fn list(
    client: &impl GenericClient,
    tenant: &str,
    action: Option<Action>,
    position: Option<i64>,
    (cmp, dir): (&str, &str),
    limit: i64,
) -> Result<Vec<AuditEntry>> {
    debug_assert!(matches!(cmp, "<" | ">") && matches!(dir, "asc" | "desc"));
    let rows = client
        .query(
            &format!(
                "select id, actor, action, target, before::jsonb, after::jsonb,
                        to_char(at at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')
                 from payrail.admin_audit
                 where tenant = $1 and ($2::text is null or action = $2)
                   and ($3::bigint is null or id {cmp} $3)
                 order by id {dir} limit $4"
            ),
            &[
                &tenant,
                &action.map(Action::as_str),
                &position,
                &limit.clamp(1, MAX_LIST + 1),
            ],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| AuditEntry {
            id: r.get(0),
            key_id: r.get(1),
            action: r.get(2),
            target: r.get(3),
            before: r.get(4),
            after: r.get(5),
            at: r.get(6),
        })
        .collect())
}
