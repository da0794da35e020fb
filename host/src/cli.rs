//! The `payrail` command line: parses arguments (clap) and dispatches to the
//! library. Each subcommand is a thin layer over one library call.

use crate::apikeys::{self, Scope};
use crate::config::Config;
use crate::context::{Context, DbArgs};
use crate::db;
use crate::error::{Error, Result};
use crate::ledger::{self, NewAccount};
use crate::model::{DEFAULT_TENANT, PaymentRequest};
use crate::registry::{self, StepSpec};
use crate::{api, audit, demo};
use clap::{Args, Parser, Subcommand};
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;

/// What `payrail --version` prints: the release, the commit it was built
/// from, and the WIT package a plugin must implement to load.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("PAYRAIL_GIT_COMMIT"),
    "; plugins: ",
    env!("PAYRAIL_WIT_PACKAGE"),
    ")"
);

/// payrail: payments through sandboxed WebAssembly rule plugins, one
/// Postgres transaction each.
#[derive(Debug, Parser)]
#[command(name = "payrail", version = VERSION, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub db: DbArgs,
    /// The tenant a data command acts for (accounts, payments, plugins,
    /// pipelines, shadow, replay, keys; default `default`). `outbox`
    /// without it acts on every tenant.
    #[arg(long, global = true, env = "PAYRAIL_TENANT")]
    pub tenant: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply pending schema migrations (safe to run twice, or from two
    /// hosts), each under a lock timeout, backing off instead of queueing
    /// payments behind a lock (docs/migrations.md).
    Migrate(MigrateArgs),
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
    /// Capture an authorized (`pay --authorize-only`) payment: all of its
    /// hold or `--amount`; prints the result as JSON.
    Capture(CaptureArgs),
    /// Void an authorized payment: release its hold; prints the result.
    Void(VoidArgs),
    /// Check every ledger invariant; exit 0 only if all hold.
    Audit,
    /// Run the demo: sample plugins, accounts, thousands of concurrent
    /// payments (some retried, some declined), then a summary and the audit.
    Demo(demo::DemoArgs),
    /// Benchmark payrail against the PL/pgSQL baseline on the same Postgres:
    /// runs the `payrail-bench` binary next to this one (`payrail bench
    /// --help` lists its options).
    Bench(BenchArgs),
    /// Run the HTTP API until SIGTERM/SIGINT (see docs/api.md).
    Serve(ServeArgs),
    /// Manage API keys (shown once, stored as a hash).
    #[command(subcommand)]
    Apikey(ApikeyCmd),
    /// Re-execute a payment's journaled plugin calls (or a time range's)
    /// and report match or the exact difference; exit 1 on a difference.
    Replay(crate::platform_cli::ReplayArgs),
    /// Shadow mode: candidate plugins compared on live traffic.
    #[command(subcommand)]
    Shadow(crate::platform_cli::ShadowCmd),
    /// Run only the outbox relay (the `[outbox]` and `[[sinks]]` of the
    /// configuration) until SIGTERM/SIGINT.
    Relay(RelayArgs),
    /// Inspect and requeue outbox dead letters.
    #[command(subcommand)]
    Outbox(OutboxCmd),
    /// Two-phase payments' holds.
    #[command(subcommand)]
    Holds(HoldsCmd),
}

/// `payrail bench`: the arguments, passed unparsed to `payrail-bench`
/// (its own crate, `host/bench`), which parses them, `--help` included.
#[derive(Debug, Args)]
#[command(disable_help_flag = true)]
pub struct BenchArgs {
    /// The options of `payrail-bench`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    pub args: Vec<OsString>,
}

/// `payrail holds` subcommands.
#[derive(Debug, Subcommand)]
pub enum HoldsCmd {
    /// Expire every hold past its expiry that is still authorized (its
    /// expiry timer was dead-lettered or never ran), of every tenant, as the
    /// timer would; prints how many. Safe to run at any time, twice, or
    /// beside the relay: a hold resolves once.
    ExpireDue {
        /// Most holds tried in this run (oldest first); default: every due
        /// hold.
        #[arg(long)]
        limit: Option<u64>,
    },
}

/// `payrail relay` options.
#[derive(Debug, Args)]
pub struct RelayArgs {
    /// TOML configuration file (the same one `payrail serve` reads).
    #[arg(long, env = "PAYRAIL_CONFIG")]
    pub config: Option<PathBuf>,
    /// Run on the local Postgres payrail starts itself (for trying things
    /// out); without it a database URL is required.
    #[arg(long)]
    pub embedded_db: bool,
}

/// `payrail outbox` subcommands.
#[derive(Debug, Subcommand)]
pub enum OutboxCmd {
    /// List events that exhausted their delivery attempts, as JSON.
    DeadLetters {
        /// Most events listed.
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Requeue dead-lettered events: by outbox id, or every one with --all.
    Retry {
        /// Outbox ids, as `outbox dead-letters` shows them.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<i64>,
        /// Requeue every dead letter.
        #[arg(long)]
        all: bool,
    },
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
    /// Run on the local Postgres payrail starts itself (data in
    /// $PAYRAIL_DATA_DIR; for trying things out, never production); without
    /// it a database URL (DATABASE_URL, --database-url or `[database] url`)
    /// is required.
    #[arg(long)]
    pub embedded_db: bool,
}

/// `payrail migrate` options.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Change nothing: list applied and pending migrations, their
    /// checksums, and what each pending statement locks (JSON).
    #[arg(long, conflicts_with = "dry_run")]
    pub status: bool,
    /// Change nothing: print the SQL that would run.
    #[arg(long)]
    pub dry_run: bool,
    /// Longest one statement waits for a lock before the migration backs
    /// off and tries again.
    #[arg(long, default_value_t = db::migrate::MigrateSettings::default().lock_timeout_ms,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub lock_timeout_ms: u64,
    /// Tries per migration before giving up with `migration_lock_busy`.
    #[arg(long, default_value_t = db::migrate::MigrateSettings::default().max_attempts,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_attempts: u32,
}

impl MigrateArgs {
    fn settings(&self) -> db::migrate::MigrateSettings {
        db::migrate::MigrateSettings {
            lock_timeout_ms: self.lock_timeout_ms,
            max_attempts: self.max_attempts,
            ..Default::default()
        }
    }
}

/// `payrail apikey` subcommands.
#[derive(Debug, Subcommand)]
pub enum ApikeyCmd {
    /// Create a key; prints it once (only its hash is stored).
    Create {
        /// Comma-separated: `payments` (accounts, payments), `admin`
        /// (plugins, pipelines).
        #[arg(long, default_value = "payments")]
        scopes: String,
        /// When the key stops working (RFC 3339, e.g.
        /// 2027-01-01T00:00:00Z); default never.
        #[arg(long)]
        expires_at: Option<String>,
    },
    /// Revoke a key by its id (`key_...`); running servers refuse it within
    /// their `server.api_key_cache_ms` (1 s by default).
    Revoke {
        /// The key's id as `apikey create` or `apikey list` shows it.
        id: String,
    },
    /// List a tenant's keys (never their secrets).
    List,
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
        /// Version label of this deploy (default: v<N>).
        #[arg(long = "plugin-version")]
        version: Option<String>,
        /// Hex ed25519 signature of the digest (`payrail plugin sign`);
        /// required when PAYRAIL_TRUSTED_PLUGIN_KEYS is set.
        #[arg(long)]
        signature: Option<String>,
    },
    /// Take the journaled input of one plugin call of a real payment out
    /// as a fixture for `payrail plugin test` (with `--expect`: compared
    /// with the decision the journal holds).
    Fixture(crate::platform_cli::FixtureArgs),
    #[command(flatten)]
    Tools(payrail_plugin_tools::ToolCmd),
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
        /// A step's limits, as `STEP=JSON` (STEP 0-based), e.g.
        /// `--limits '0={"max_memory_bytes":16777216}'`; repeat for more
        /// steps. Absent fields keep the host's limits.
        #[arg(long = "limits", value_name = "STEP=JSON")]
        limits: Vec<String>,
    },
    /// Show the pipeline of a payment kind.
    Show { kind: String },
    /// Every version of a payment kind's pipeline, newest first.
    History {
        kind: String,
        /// Most versions shown.
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Make an earlier version current again (as a new version); default:
    /// the version before the current one.
    Rollback { kind: String, version: Option<i32> },
}

#[derive(Debug, Subcommand)]
pub enum AccountCmd {
    /// Open an account. An opening balance is drawn from `equity:<CUR>`
    /// and published as an `account.opened` event (docs/outbox.md).
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
    /// Authorize only: hold the funds; `payrail capture` or `payrail void`
    /// later (or the hold expires).
    #[arg(long)]
    pub authorize_only: bool,
    /// Seconds the hold lasts (with --authorize-only; default 7 days, at
    /// most 30 days).
    #[arg(long)]
    pub hold_ttl_secs: Option<i64>,
}

/// `payrail capture` options.
#[derive(Debug, Args)]
pub struct CaptureArgs {
    /// The payment id (from `payrail pay --authorize-only`).
    pub payment_id: String,
    /// Idempotency key of this capture: reuse it to retry safely.
    #[arg(long)]
    pub key: String,
    /// Minor units to capture (default: the whole hold).
    #[arg(long)]
    pub amount: Option<i64>,
}

/// `payrail void` options.
#[derive(Debug, Args)]
pub struct VoidArgs {
    /// The payment id.
    pub payment_id: String,
    /// Idempotency key of this void: reuse it to retry safely.
    #[arg(long)]
    pub key: String,
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
        candidate: None,
        limits: None,
    })
}

/// Applies one `--limits STEP=JSON` of `pipeline set` to its step.
fn set_step_limits(specs: &mut [StepSpec], arg: &str) -> Result<()> {
    let invalid =
        |why: String| Error::invalid("invalid_limits", format!("--limits {arg:?}: {why}"));
    let (step, json) = arg
        .split_once('=')
        .ok_or_else(|| invalid("expected STEP=JSON".into()))?;
    let count = specs.len();
    let spec = step
        .parse::<usize>()
        .ok()
        .and_then(|i| specs.get_mut(i))
        .ok_or_else(|| invalid(format!("STEP must be a step number below {count}")))?;
    if spec.limits.is_some() {
        return Err(invalid(format!("step {step} is given limits twice")));
    }
    let limits = serde_json::from_str(json).map_err(|e| invalid(e.to_string()))?;
    spec.limits = Some(limits);
    Ok(())
}

fn print_json(v: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("output serializes")
    );
}

/// The serve configuration: the file, then the environment, then flags.
pub fn serve_config(db: &DbArgs, args: &ServeArgs) -> Result<Config> {
    let mut config = Config::load(args.config.as_deref(), crate::config::process_env())?;
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
    require_database(&config, args.embedded_db, "serve")?;
    Ok(config)
}

/// `--check-config`: where each setting came from (the default, the file,
/// a variable, a flag). Values are not repeated here: the redacted
/// configuration above has them.
fn print_sources(db: &DbArgs, args: &ServeArgs) -> Result<()> {
    let layered = Config::layered(args.config.as_deref(), crate::config::process_env())?;
    println!("where each setting came from:");
    for (key, mut from) in layered.sources() {
        // flags win over the file and the variables (clap reads the
        // flag's variable too)
        if key == "server.listen" && args.listen.is_some() {
            from = "--listen (or PAYRAIL_LISTEN)".into();
        }
        if key == "database.url" && db.database_url.is_some() {
            from = "--database-url (or DATABASE_URL)".into();
        }
        if key == "database.pool_size" && db.pool_size.is_some() {
            from = "--pool-size (or PAYRAIL_POOL_SIZE)".into();
        }
        println!("  {key} = {from}");
    }
    Ok(())
}

/// `serve` and `relay` run on an explicit database: a missing
/// `DATABASE_URL` in production must not send payments to a throwaway
/// local cluster. `--embedded-db` asks for that cluster explicitly.
pub fn require_database(config: &Config, embedded_db: bool, command: &str) -> Result<()> {
    match (&config.database.url, embedded_db) {
        (Some(_), false) | (None, true) => Ok(()),
        (None, false) => Err(Error::invalid(
            "database_required",
            format!(
                "no database configured: set DATABASE_URL (or --database-url, or `url` in \
                 [database] of the config file), or pass --embedded-db to run `payrail {command}` \
                 on the local Postgres payrail starts itself (data in {}; for trying things out, \
                 never production)",
                db::embedded::default_data_dir().display()
            ),
        )),
        (Some(url), true) => Err(Error::invalid(
            "database_required",
            format!(
                "--embedded-db and a database URL ({}) are both given: drop one",
                crate::config::redact_url(url)
            ),
        )),
    }
}

/// Logging for this invocation: `serve` reads it from its configuration
/// (format, filter, OTLP export); other commands log text at `warn`.
/// `PAYRAIL_LOG` wins over the filter.
pub fn log_settings(cli: &Cli) -> crate::config::LogConfig {
    let quiet = crate::config::LogConfig {
        filter: "warn".into(),
        ..Default::default()
    };
    match &cli.command {
        Command::Serve(args) => match serve_config(&cli.db, args) {
            Ok(c) => c.log,
            // the error is reported properly when the command runs
            Err(_) => crate::config::LogConfig::default(),
        },
        _ => quiet,
    }
}

/// `payrail relay`: the outbox relay alone, until SIGTERM/SIGINT.
async fn run_relay(db_args: &DbArgs, args: &RelayArgs) -> Result<i32> {
    let mut config = Config::load(args.config.as_deref(), crate::config::process_env())?;
    if let Some(url) = &db_args.database_url {
        config.database.url = Some(url.clone());
    }
    if let Some(n) = db_args.pool_size {
        config.database.pool_size = n;
    }
    config.validate()?;
    require_database(&config, args.embedded_db, "relay")?;
    if config.sinks.is_empty() {
        return Err(Error::invalid(
            "invalid_config",
            "no [[sinks]] configured: the relay would have nowhere to deliver",
        ));
    }
    let url = db::resolve_url(config.database.url.clone()).await?;
    let pool = config.pool(&url)?;
    {
        let client = pool.get().await?;
        if !db::migrate::is_current(&client).await? {
            return Err(Error::Migration(
                "the database schema is not current: run `payrail migrate` first".into(),
            ));
        }
    }
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let relay = crate::outbox::Relay::from_config(pool, &config, metrics)?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(relay.run(stop_rx));
    println!("payrail relay running");
    api::shutdown_signal().await;
    let _ = stop_tx.send(true);
    let _ = task.await;
    println!("payrail relay stopped");
    Ok(0)
}

/// `payrail bench`: replaces this process by the `payrail-bench` binary
/// next to it, with `args`. The database flags go in its environment (not
/// its command line, where the URL's password would show), and
/// `PAYRAIL_BIN` names this binary for its `payrail serve` children.
/// Returns only on failure.
fn run_bench(db_args: &DbArgs, args: &BenchArgs) -> Result<i32> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe()
        .map_err(|e| Error::Setup(format!("cannot find the payrail binary's own path: {e}")))?;
    let bench = exe.with_file_name(format!("payrail-bench{}", std::env::consts::EXE_SUFFIX));
    if !bench.is_file() {
        return Err(Error::MissingBinary {
            command: "bench",
            binary: bench,
            package: "payrail-bench",
        });
    }
    let mut cmd = std::process::Command::new(&bench);
    cmd.args(&args.args);
    if let Some(url) = &db_args.database_url {
        cmd.env("DATABASE_URL", url);
    }
    if let Some(n) = db_args.pool_size {
        cmd.env("PAYRAIL_POOL_SIZE", n.to_string());
    }
    if std::env::var_os("PAYRAIL_BIN").is_none() {
        cmd.env("PAYRAIL_BIN", &exe);
    }
    let e = cmd.exec();
    Err(Error::Setup(format!("cannot run {}: {e}", bench.display())))
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
            print_sources(&cli.db, args)?;
            println!("configuration is valid");
            return Ok(0);
        }
        return api::serve(config, args.migrate).await;
    }
    if let Command::Relay(args) = &cli.command {
        return run_relay(&cli.db, args).await;
    }
    if let Command::Plugin(PluginCmd::Tools(cmd)) = &cli.command {
        return payrail_plugin_tools::run(cmd, crate::config::Config::engine_from_env);
    }
    if let Command::Bench(args) = &cli.command {
        return run_bench(&cli.db, args);
    }
    let ctx = Context::open(&cli.db).await?;
    if let Some(t) = &cli.tenant {
        ledger::validate_id("tenant", t)?;
    }
    let tenant = cli.tenant.as_deref().unwrap_or(DEFAULT_TENANT);
    let actor = crate::admin_log::Actor::cli(tenant);
    match cli.command {
        Command::Migrate(args) if args.status => {
            let client = ctx.pool.get().await?;
            print_json(&db::migrate::status(&client).await?);
        }
        Command::Migrate(args) if args.dry_run => {
            let client = ctx.pool.get().await?;
            print!("{}", db::migrate::dry_run(&client, &args.settings()).await?);
        }
        Command::Migrate(args) => {
            let mut client = ctx.pool.get().await?;
            let applied = db::migrate::migrate_with(
                &mut client,
                db::migrate::MIGRATIONS,
                db::migrate::latest_version(),
                &args.settings(),
            )
            .await?;
            if applied.is_empty() {
                println!(
                    "schema is current (version {})",
                    db::migrate::latest_version()
                );
            } else {
                println!("applied migrations {applied:?}");
            }
        }
        Command::Plugin(PluginCmd::Deploy {
            file,
            name,
            version,
            signature,
        }) => {
            ctx.require_schema().await?;
            let bytes = std::fs::read(&file).map_err(|e| {
                Error::invalid(
                    "unreadable_file",
                    format!("cannot read {}: {e}", file.display()),
                )
            })?;
            let mut client = ctx.pool.get().await?;
            let digest = crate::admin::deploy_plugin(
                &mut client,
                &ctx.engine,
                &actor,
                &name,
                version.as_deref(),
                signature.as_deref(),
                bytes,
            )
            .await?;
            println!("{digest}");
        }
        Command::Pipeline(PipelineCmd::Set {
            kind,
            steps,
            limits,
        }) => {
            ctx.require_schema().await?;
            let mut specs = steps
                .iter()
                .map(|s| parse_step(s))
                .collect::<Result<Vec<_>>>()?;
            for l in &limits {
                set_step_limits(&mut specs, l)?;
            }
            let mut client = ctx.pool.get().await?;
            let p =
                crate::admin::set_pipeline(&mut client, &ctx.engine, &actor, &kind, &specs).await?;
            print_json(&p);
        }
        Command::Pipeline(PipelineCmd::Show { kind }) => {
            ctx.require_schema().await?;
            let client = ctx.pool.get().await?;
            print_json(&registry::load_pipeline(&client, tenant, &kind).await?);
        }
        Command::Account(AccountCmd::Create {
            id,
            currency,
            allow_negative,
            opening_balance,
        }) => {
            ctx.require_schema().await?;
            let mut client = ctx.pool.get().await?;
            let account = crate::admin::open_account(
                &mut client,
                &actor,
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
            print_json(&ledger::get_account(&client, tenant, &id).await?);
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
                capture: if a.authorize_only {
                    crate::model::CaptureMode::Manual
                } else {
                    crate::model::CaptureMode::Automatic
                },
                hold_ttl_secs: a.hold_ttl_secs,
            };
            let out = ctx.processor().pay(tenant, &a.key, &req).await?;
            if out.replayed {
                eprintln!(
                    "replayed: key {:?} was already used for this payment; nothing new written",
                    a.key
                );
            }
            print_json(&out.response);
        }
        Command::Capture(a) => {
            ctx.require_schema().await?;
            let out = ctx
                .processor()
                .capture(tenant, &a.key, &a.payment_id, a.amount)
                .await?;
            if out.replayed {
                eprintln!(
                    "replayed: key {:?} was already used for this capture",
                    a.key
                );
            }
            print_json(&out.response);
        }
        Command::Void(a) => {
            ctx.require_schema().await?;
            let out = ctx.processor().void(tenant, &a.key, &a.payment_id).await?;
            if out.replayed {
                eprintln!("replayed: key {:?} was already used for this void", a.key);
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
        Command::Pipeline(PipelineCmd::History { kind, limit }) => {
            return crate::platform_cli::pipeline_history(&ctx, tenant, &kind, limit).await;
        }
        Command::Pipeline(PipelineCmd::Rollback { kind, version }) => {
            return crate::platform_cli::pipeline_rollback(&ctx, &actor, &kind, version).await;
        }
        Command::Replay(args) => return crate::platform_cli::replay(&ctx, tenant, &args).await,
        Command::Plugin(PluginCmd::Fixture(args)) => {
            return crate::platform_cli::fixture(&ctx, tenant, &args).await;
        }
        Command::Shadow(cmd) => return crate::platform_cli::shadow(&ctx, &actor, &cmd).await,
        Command::Demo(args) => return demo::run(&ctx, &args).await,
        Command::Serve(_)
        | Command::Relay(_)
        | Command::Bench(_)
        | Command::Plugin(PluginCmd::Tools(_)) => {
            unreachable!("handled above")
        }
        Command::Outbox(cmd) => {
            ctx.require_schema().await?;
            let mut client = ctx.pool.get().await?;
            // without --tenant: the operator's view of every tenant
            let scope = cli.tenant.as_deref();
            match cmd {
                OutboxCmd::DeadLetters { limit } => {
                    print_json(&crate::outbox::dead_letters(&client, scope, limit).await?)
                }
                OutboxCmd::Retry { ids, all } => {
                    let ids = if all { None } else { Some(ids.as_slice()) };
                    let n = crate::admin::retry_dead(&mut client, &actor, scope, ids).await?;
                    println!("requeued {n} event(s)");
                }
            }
        }
        Command::Holds(HoldsCmd::ExpireDue { limit }) => {
            ctx.require_schema().await?;
            let done = crate::holds::expire_due(&ctx.pool, limit).await?;
            println!(
                "expired {} due hold(s); {} already resolved; {} failed",
                done.expired, done.already_resolved, done.failed
            );
            if done.failed > 0 {
                return Ok(1);
            }
        }
        Command::Apikey(cmd) => {
            ctx.require_schema().await?;
            let mut client = ctx.pool.get().await?;
            let named = || {
                cli.tenant.as_deref().ok_or_else(|| {
                    Error::invalid("tenant_required", "give the key's tenant with --tenant")
                })
            };
            match cmd {
                ApikeyCmd::Create { scopes, expires_at } => {
                    let scopes = Scope::parse_list(&scopes)?;
                    let expires_at = expires_at
                        .map(|t| {
                            time::OffsetDateTime::parse(
                                &t,
                                &time::format_description::well_known::Rfc3339,
                            )
                            .map_err(|_| {
                                Error::invalid(
                                    "invalid_time",
                                    "--expires-at must be an RFC 3339 time such as 2027-01-01T00:00:00Z",
                                )
                            })
                        })
                        .transpose()?;
                    let actor = crate::admin_log::Actor::cli(named()?);
                    let key =
                        crate::admin::create_key(&mut client, &actor, &scopes, expires_at).await?;
                    eprintln!(
                        "created {} for tenant {:?}; the key is shown only now, store it safely:",
                        key.key.id, key.key.tenant
                    );
                    println!("{}", key.secret);
                }
                ApikeyCmd::Revoke { id } => print_json(
                    &crate::admin::revoke_key(&mut client, &actor.who, cli.tenant.as_deref(), &id)
                        .await?,
                ),
                ApikeyCmd::List => print_json(&apikeys::list(&client, named()?).await?),
            }
        }
    }
    Ok(0)
}
