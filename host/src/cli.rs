//! The `payrail` command line: parses arguments (clap) and dispatches to the
//! library. Each subcommand is a thin layer over one library call.

use crate::apikeys::{self, Scope};
use crate::config::{Config, LogFormat};
use crate::db::{self, Pool};
use crate::engine::{EngineConfig, PluginEngine};
use crate::error::{Error, Result};
use crate::ledger::{self, NewAccount};
use crate::model::{DEFAULT_TENANT, PaymentRequest};
use crate::processor::{Processor, ProcessorSettings};
use crate::registry::{self, StepSpec};
use crate::{api, audit, bench, demo};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::sync::Arc;

/// payrail: payments through sandboxed WebAssembly rule plugins, one
/// Postgres transaction each.
#[derive(Debug, Parser)]
#[command(name = "payrail", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub db: DbArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Where the database is.
#[derive(Debug, Args)]
pub struct DbArgs {
    /// Postgres URL. Unset: payrail starts a local Postgres itself from the
    /// system's server binaries (data in $PAYRAIL_DATA_DIR).
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,
    /// Connection pool size [default: 16].
    #[arg(long, env = "PAYRAIL_POOL_SIZE", global = true)]
    pub pool_size: Option<usize>,
}

/// Pool size when neither flag, environment nor config file sets one.
pub const DEFAULT_POOL_SIZE: usize = 16;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply pending schema migrations (safe to run twice, or from two hosts).
    Migrate,
    /// Manage plugins.
    #[command(subcommand)]
    Plugin(PluginCmd),
    /// Manage pipelines.
    #[command(subcommand)]
    Pipeline(PipelineCmd),
    /// Manage accounts.
    #[command(subcommand)]
    Account(AccountCmd),
    /// Make a payment; prints the result as JSON. Same key again: the same
    /// payment, nothing new written.
    Pay(PayArgs),
    /// Check every ledger invariant; exit 0 only if all hold.
    Audit,
    /// Run the demo: sample plugins, accounts, thousands of concurrent
    /// payments (some retried, some declined), then a summary and the audit.
    Demo(demo::DemoArgs),
    /// Benchmark payrail against the PL/pgSQL baseline on the same Postgres.
    Bench(bench::BenchArgs),
    /// Run the HTTP API until SIGTERM/SIGINT (see README "HTTP API").
    Serve(ServeArgs),
    /// Manage API keys (shown once, stored as a hash).
    #[command(subcommand)]
    Apikey(ApikeyCmd),
}

/// `payrail serve` options. Precedence: flags, then environment, then the
/// config file, then defaults.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on, e.g. 127.0.0.1:8080 (port 0: a free port).
    #[arg(long, env = "PAYRAIL_LISTEN")]
    pub listen: Option<String>,
    /// TOML configuration file.
    #[arg(long, env = "PAYRAIL_CONFIG")]
    pub config: Option<PathBuf>,
    /// Validate the configuration, print it (secrets redacted) and exit.
    #[arg(long)]
    pub check_config: bool,
    /// Apply pending migrations before serving.
    #[arg(long)]
    pub migrate: bool,
}

/// `payrail apikey` subcommands.
#[derive(Debug, Subcommand)]
pub enum ApikeyCmd {
    /// Create a key; prints it once (only its hash is stored).
    Create {
        /// The tenant the key acts for.
        #[arg(long)]
        tenant: String,
        /// Comma-separated: `payments` (accounts, payments), `admin`
        /// (plugins, pipelines).
        #[arg(long, default_value = "payments")]
        scopes: String,
    },
    /// Revoke a key by its id (`key_...`); it stops working at once.
    Revoke {
        /// The key's id as `apikey create` or `apikey list` shows it.
        id: String,
    },
    /// List a tenant's keys (never their secrets).
    List {
        /// The tenant whose keys to list.
        #[arg(long)]
        tenant: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum PluginCmd {
    /// Validate, compile and store a plugin component; prints its digest.
    Deploy {
        /// The plugin's .wasm component.
        file: PathBuf,
        /// Name pipelines may use to refer to the latest deploy.
        #[arg(long)]
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum PipelineCmd {
    /// Replace the pipeline of a payment kind. Each STEP is a plugin name or
    /// digest, optionally followed by `=` and a JSON config object, e.g.
    /// `limits='{"max_amount":100000}' fee='{"fee_account":"fees","percent_bps":150}'`.
    Set {
        kind: String,
        #[arg(required = true)]
        steps: Vec<String>,
    },
    /// Show the pipeline of a payment kind.
    Show { kind: String },
}

#[derive(Debug, Subcommand)]
pub enum AccountCmd {
    /// Open an account. An opening balance is drawn from `equity:<CUR>`.
    Create {
        id: String,
        #[arg(long)]
        currency: String,
        #[arg(long)]
        allow_negative: bool,
        /// In minor units.
        #[arg(long, default_value_t = 0)]
        opening_balance: i64,
    },
    /// Show an account as JSON.
    Show { id: String },
}

#[derive(Debug, Args)]
pub struct PayArgs {
    #[arg(long)]
    pub kind: String,
    #[arg(long)]
    pub from: String,
    #[arg(long)]
    pub to: String,
    /// In minor units (cents for EUR).
    #[arg(long)]
    pub amount: i64,
    #[arg(long)]
    pub currency: String,
    /// Idempotency key: reuse it to retry safely.
    #[arg(long)]
    pub key: String,
}

/// Everything a command needs to talk to the database and run plugins.
pub struct Context {
    pub url: String,
    pub pool: Pool,
    pub engine: Arc<PluginEngine>,
}

impl Context {
    /// Resolves the database, builds the pool and the engine.
    pub async fn open(db_args: &DbArgs) -> Result<Context> {
        let url = db::resolve_url(db_args.database_url.clone()).await?;
        let pool = db::pool(&url, db_args.pool_size.unwrap_or(DEFAULT_POOL_SIZE))?;
        let engine = Arc::new(
            PluginEngine::new(EngineConfig::default())
                .map_err(|e| Error::Setup(format!("cannot create the wasm engine: {e:#}")))?,
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

/// Parses `name`, `digest`, `name={json}` into a step.
pub fn parse_step(s: &str) -> Result<StepSpec> {
    let (plugin, config) = match s.split_once('=') {
        Some((p, c)) => (
            p,
            serde_json::from_str(c).map_err(|e| {
                Error::invalid(
                    "invalid_config",
                    format!("config of step {p:?} is not valid JSON: {e}"),
                )
            })?,
        ),
        None => (s, serde_json::json!({})),
    };
    Ok(StepSpec {
        plugin: plugin.to_string(),
        config,
    })
}

fn print_json(v: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("output serializes")
    );
}

/// The serve configuration: the file, then the environment, then flags.
pub fn serve_config(db: &DbArgs, args: &ServeArgs) -> Result<Config> {
    let mut config = Config::load(args.config.as_deref(), |k| std::env::var(k).ok())?;
    if let Some(url) = &db.database_url {
        config.database.url = Some(url.clone());
    }
    if let Some(n) = db.pool_size {
        config.database.pool_size = n;
    }
    if let Some(listen) = &args.listen {
        config.server.listen = listen.clone();
    }
    config.validate()?;
    Ok(config)
}

/// Log format and filter for this invocation: `serve` reads them from its
/// configuration; other commands log text at `warn`. `PAYRAIL_LOG` wins.
pub fn log_settings(cli: &Cli) -> (LogFormat, String) {
    match &cli.command {
        Command::Serve(args) => match serve_config(&cli.db, args) {
            Ok(c) => (c.log.format, c.log.filter),
            // the error is reported properly when the command runs
            Err(_) => (LogFormat::Text, "info".into()),
        },
        _ => (LogFormat::Text, "warn".into()),
    }
}

/// Runs one parsed command; returns the process exit code.
pub async fn run(cli: Cli) -> Result<i32> {
    if let Command::Serve(args) = &cli.command {
        let config = serve_config(&cli.db, args)?;
        println!(
            "payrail configuration (secrets redacted):\n{}",
            config.redacted()
        );
        if args.check_config {
            println!("configuration is valid");
            return Ok(0);
        }
        return api::serve(config, args.migrate).await;
    }
    let ctx = Context::open(&cli.db).await?;
    match cli.command {
        Command::Migrate => {
            let applied = ctx.migrate().await?;
            if applied.is_empty() {
                println!(
                    "schema is current (version {})",
                    db::migrate::latest_version()
                );
            } else {
                println!("applied migrations {applied:?}");
            }
        }
        Command::Plugin(PluginCmd::Deploy { file, name }) => {
            ctx.require_schema().await?;
            let bytes = std::fs::read(&file).map_err(|e| {
                Error::invalid(
                    "unreadable_file",
                    format!("cannot read {}: {e}", file.display()),
                )
            })?;
            let client = ctx.pool.get().await?;
            let digest = registry::deploy_plugin(&client, &ctx.engine, &name, bytes).await?;
            println!("{digest}");
        }
        Command::Pipeline(PipelineCmd::Set { kind, steps }) => {
            ctx.require_schema().await?;
            let specs = steps
                .iter()
                .map(|s| parse_step(s))
                .collect::<Result<Vec<_>>>()?;
            let client = ctx.pool.get().await?;
            let p = registry::set_pipeline(&client, DEFAULT_TENANT, &kind, &specs).await?;
            print_json(&p);
        }
        Command::Pipeline(PipelineCmd::Show { kind }) => {
            ctx.require_schema().await?;
            let client = ctx.pool.get().await?;
            print_json(&registry::load_pipeline(&client, DEFAULT_TENANT, &kind).await?);
        }
        Command::Account(AccountCmd::Create {
            id,
            currency,
            allow_negative,
            opening_balance,
        }) => {
            ctx.require_schema().await?;
            let mut client = ctx.pool.get().await?;
            let account = ledger::create_account(
                &mut client,
                DEFAULT_TENANT,
                &NewAccount {
                    id,
                    currency,
                    allow_negative,
                    opening_balance,
                    metadata: Default::default(),
                },
            )
            .await?;
            print_json(&account);
        }
        Command::Account(AccountCmd::Show { id }) => {
            ctx.require_schema().await?;
            let client = ctx.pool.get().await?;
            print_json(&ledger::get_account(&client, DEFAULT_TENANT, &id).await?);
        }
        Command::Pay(a) => {
            ctx.require_schema().await?;
            let req = PaymentRequest {
                kind: a.kind,
                source: a.from,
                destination: a.to,
                amount: a.amount,
                currency: a.currency,
                metadata: Default::default(),
            };
            let out = ctx.processor().pay(DEFAULT_TENANT, &a.key, &req).await?;
            if out.replayed {
                eprintln!(
                    "replayed: key {:?} was already used for this payment; nothing new written",
                    a.key
                );
            }
            print_json(&out.response);
        }
        Command::Audit => {
            ctx.require_schema().await?;
            let mut client = ctx.pool.get().await?;
            let violations = audit::run(&mut client).await?;
            if violations.is_empty() {
                println!("audit passed: every invariant holds");
            } else {
                for v in &violations {
                    println!("VIOLATION {}: {}", v.check, v.detail);
                }
                println!("audit FAILED: {} violation(s)", violations.len());
                return Ok(1);
            }
        }
        Command::Demo(args) => return demo::run(&ctx, &args).await,
        Command::Bench(args) => return bench::run(&ctx, &args).await,
        Command::Serve(_) => unreachable!("handled above"),
        Command::Apikey(cmd) => {
            ctx.require_schema().await?;
            let client = ctx.pool.get().await?;
            match cmd {
                ApikeyCmd::Create { tenant, scopes } => {
                    let scopes = Scope::parse_list(&scopes)?;
                    let key = apikeys::create(&client, &tenant, &scopes).await?;
                    eprintln!(
                        "created {} for tenant {:?}; the key is shown only now, store it safely:",
                        key.key.id, key.key.tenant
                    );
                    println!("{}", key.secret);
                }
                ApikeyCmd::Revoke { id } => print_json(&apikeys::revoke(&client, &id).await?),
                ApikeyCmd::List { tenant } => print_json(&apikeys::list(&client, &tenant).await?),
            }
        }
    }
    Ok(0)
}
