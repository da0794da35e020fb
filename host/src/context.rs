//! What every one-shot command (and the bench) starts from: where the
//! database is ([`DbArgs`], the global flags), and a [`Context`] holding the
//! connection pool and the plugin engine. Its own module so that the
//! command modules (`demo`, `platform_cli`) and the bench crate can use it
//! without importing `cli`, which imports them.

use crate::config::Config;
use crate::db::{self, Pool};
use crate::engine::PluginEngine;
use crate::error::{Error, Result};
use crate::processor::{Processor, ProcessorSettings};
use clap::Args;
use std::sync::Arc;

/// Where the database is.
#[derive(Debug, Args)]
pub struct DbArgs {
    /// Postgres URL. Unset: one-shot commands (migrate, pay, demo, ...)
    /// start a local Postgres themselves from the system's server binaries
    /// (data in $PAYRAIL_DATA_DIR); `serve` and `relay` refuse to start
    /// unless given --embedded-db.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,
    /// Connection pool size [default: 16].
    #[arg(long, env = "PAYRAIL_POOL_SIZE", global = true)]
    pub pool_size: Option<usize>,
}

/// Pool size when neither flag, environment nor config file sets one.
pub const DEFAULT_POOL_SIZE: usize = 16;

/// Everything a command needs to talk to the database and run plugins.
pub struct Context {
    /// The database's URL (holds its password: print it only through
    /// `config::redact_url`).
    pub url: String,
    /// The pool on that database.
    pub pool: Pool,
    /// The plugin engine, with the artifact cache and trusted keys.
    pub engine: Arc<PluginEngine>,
}

impl Context {
    /// Resolves the database, builds the pool and the engine (settings
    /// from the environment, as for `serve`).
    pub async fn open(db_args: &DbArgs) -> Result<Context> {
        let env_config = Config::load(None, crate::config::process_env())?;
        let url = db::resolve_url(db_args.database_url.clone()).await?;
        let pool = db::pool_with(
            &url,
            db_args.pool_size.unwrap_or(DEFAULT_POOL_SIZE),
            &env_config.session(),
        )?;
        let engine = Arc::new(
            PluginEngine::new(env_config.engine())
                .map_err(|e| Error::Setup(format!("cannot create the wasm engine: {e:#}")))?
                .with_default_artifact_cache()
                .with_trusted_keys(crate::signing::TrustedKeys::from_env()?),
        );
        Ok(Context { url, pool, engine })
    }

    /// Fails with a clear message unless migrations are current.
    pub async fn require_schema(&self) -> Result<()> {
        let client = self.pool.get().await?;
        if !db::migrate::is_current(&client).await? {
            return Err(Error::Migration(
                "the database schema is not current: run `payrail migrate` first".into(),
            ));
        }
        Ok(())
    }

    /// A processor with default settings.
    pub fn processor(&self) -> Processor {
        Processor::new(
            self.pool.clone(),
            self.engine.clone(),
            ProcessorSettings::default(),
        )
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> Result<Vec<i32>> {
        let mut client = self.pool.get().await?;
        db::migrate::migrate(&mut client).await
    }
}
