//! The database layer: where the database is (an explicit `DATABASE_URL` or
//! a local cluster the host runs itself), the connection pool, migrations.

pub mod migrate;
pub mod tls;

/// The local cluster (its own crate, `host/embedded-pg`): re-exported for
/// callers of [`local_cluster`], which returns its [`embedded::LocalPostgres`].
pub use payrail_embedded_pg as embedded;

use crate::error::{Error, Result};
use deadpool_postgres::{Manager, ManagerConfig, RecyclingMethod};
pub use tls::Target;

/// Connection pool shared by the processor and the API.
pub type Pool = deadpool_postgres::Pool;

/// Name of the database payrail creates in the local cluster.
pub const LOCAL_DATABASE: &str = "payrail";

/// The settings every session the host opens starts with, sent in the
/// startup packet's `options` (no extra round trip; a pooler in front of
/// Postgres must pass `options` through, e.g. pgbouncer's
/// `ignore_startup_parameters` must not drop it silently). A statement or an
/// abandoned transaction of the host can then never hold a connection and
/// its locks for longer than these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionSettings {
    /// `statement_timeout`: longest single statement.
    pub statement_timeout_ms: u64,
    /// `idle_in_transaction_session_timeout`: longest a session may sit
    /// inside a transaction sending nothing before Postgres ends it.
    pub idle_in_transaction_timeout_ms: u64,
}

impl SessionSettings {
    /// `url` parsed (with its TLS settings, [`tls`]), with these settings
    /// appended to its `options` (so they win over the same settings in the
    /// URL).
    pub fn apply(&self, url: &str) -> Result<Target> {
        let mut target = Target::parse(url)?;
        let pg = &mut target.config;
        let mut options = pg.get_options().unwrap_or("").to_string();
        if !options.is_empty() {
            options.push(' ');
        }
        options.push_str(&format!(
            "-c statement_timeout={} -c idle_in_transaction_session_timeout={}",
            self.statement_timeout_ms, self.idle_in_transaction_timeout_ms
        ));
        pg.options(&options);
        Ok(target)
    }
}

/// One connection outside the pool, with `settings` applied; its driver
/// task runs until the client is dropped.
pub async fn connect(url: &str, settings: &SessionSettings) -> Result<tokio_postgres::Client> {
    settings.apply(url)?.connect().await
}

/// Returns `explicit` if given, else `$DATABASE_URL`, else starts (or finds)
/// the local cluster and returns the URL of its `payrail` database, creating
/// it on first use. Cost: first use runs initdb (~2 s) and a server start.
pub async fn resolve_url(explicit: Option<String>) -> Result<String> {
    if let Some(url) = explicit.filter(|u| !u.is_empty()) {
        return Ok(url);
    }
    if let Ok(url) = std::env::var("DATABASE_URL")
        && !url.is_empty()
    {
        return Ok(url);
    }
    let local = local_cluster().await?;
    create_database_if_missing(&local.url(), LOCAL_DATABASE).await?;
    Ok(local.url_for(LOCAL_DATABASE))
}

/// Ensures the local cluster in the default data dir runs; returns it.
pub async fn local_cluster() -> Result<embedded::LocalPostgres> {
    let dir = embedded::default_data_dir();
    tokio::task::spawn_blocking(move || embedded::ensure_running(&dir))
        .await
        .map_err(|e| Error::Setup(format!("local postgres task failed: {e}")))?
        .map_err(Error::from)
}

/// Creates database `name` through the server at `admin_url` unless it exists.
/// Safe to race: a concurrent creator's duplicate error is ignored.
pub async fn create_database_if_missing(admin_url: &str, name: &str) -> Result<()> {
    assert!(
        name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
        "database names are plain identifiers"
    );
    let client = SessionSettings::default()
        .apply(admin_url)?
        .connect()
        .await?;
    let exists = client
        .query_opt("select 1 from pg_database where datname = $1", &[&name])
        .await?
        .is_some();
    if !exists
        && let Err(e) = client
            .batch_execute(&format!("create database \"{name}\""))
            .await
        && e.code() != Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE)
        && e.code() != Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
    {
        return Err(e.into());
    }
    Ok(())
}

/// Builds a pool of at most `max_size` connections with the default
/// [`SessionSettings`]. Connections are opened lazily; nothing is contacted
/// here.
pub fn pool(url: &str, max_size: usize) -> Result<Pool> {
    pool_with(url, max_size, &SessionSettings::default())
}

/// A pool whose every connection starts with `settings`.
pub fn pool_with(url: &str, max_size: usize, settings: &SessionSettings) -> Result<Pool> {
    assert!(max_size > 0, "pool size must be positive");
    let target = settings.apply(url)?;
    let mgr = Manager::from_config(
        target.config,
        target.tls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    deadpool_postgres::Pool::builder(mgr)
        .max_size(max_size)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(std::time::Duration::from_secs(30)))
        .create_timeout(Some(std::time::Duration::from_secs(10)))
        .build()
        .map_err(|e| Error::Setup(format!("cannot build the connection pool: {e}")))
}

/// The same server URL with another database name (query parameters kept).
pub fn url_with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_end = base[scheme_end..]
        .find('/')
        .map(|i| scheme_end + i)
        .unwrap_or(base.len());
    format!("{}/{name}{query}", &base[..host_end])
}

#[cfg(test)]
mod tests {
    use super::url_with_database;

    #[test]
    fn replaces_only_the_database_name() {
        assert_eq!(
            url_with_database("postgres://u@h:5/db?sslmode=disable", "x"),
            "postgres://u@h:5/x?sslmode=disable"
        );
        assert_eq!(
            url_with_database("postgres://u@h:5", "x"),
            "postgres://u@h:5/x"
        );
    }
}
