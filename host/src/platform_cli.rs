//! The plugin-platform commands of the CLI (`payrail replay`, `payrail
//! shadow ...`, `payrail pipeline history|rollback`), kept out of `cli.rs`
//! so that file only dispatches to them.

use crate::admin::{self, PipelineChange};
use crate::admin_log::Actor;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::processor::ProcessorSettings;
use crate::{registry, replay, shadow};
use clap::{Args, Subcommand};

/// `payrail replay` options.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The payment to replay (its id, a UUID).
    #[arg(required_unless_present = "since", conflicts_with_all = ["since", "until"])]
    pub payment_id: Option<String>,
    /// Replay every payment created at or after this time (e.g.
    /// 2026-11-26T00:00:00Z) and summarize.
    #[arg(long, requires = "until")]
    pub since: Option<String>,
    /// End of the range (exclusive).
    #[arg(long, requires = "since")]
    pub until: Option<String>,
    /// Most payments a range replay checks.
    #[arg(long, default_value_t = 10_000)]
    pub limit: i64,
}

/// `payrail plugin fixture` options.
#[derive(Debug, Args)]
pub struct FixtureArgs {
    /// The payment (its id, a UUID).
    pub payment_id: String,
    /// The pipeline step whose call to take (0-based, as `pipeline show`
    /// lists them).
    #[arg(long, value_parser = clap::value_parser!(i32).range(0..16))]
    pub step: i32,
    /// Write the fixture here (default: standard output).
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
}

/// `payrail shadow` subcommands.
#[derive(Debug, Subcommand)]
pub enum ShadowCmd {
    /// Agree/disagree counts and example differences of every candidate
    /// that ran for a payment kind, as JSON.
    Report {
        /// The payment kind.
        kind: String,
    },
    /// Make step STEP's candidate live (a new pipeline version).
    Promote {
        /// The payment kind.
        kind: String,
        /// The step (0-based, as `pipeline show` lists them).
        step: usize,
    },
    /// Set (or with no PLUGIN, clear) the shadow candidate of step STEP (a
    /// new pipeline version).
    Set {
        /// The payment kind.
        kind: String,
        /// The step (0-based).
        step: usize,
        /// A plugin name or digest of the tenant.
        plugin: Option<String>,
    },
}

fn print_json(v: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("output serializes")
    );
}

/// A payment id given on the command line: `invalid_id` unless a UUID.
fn payment_id(s: &str) -> Result<uuid::Uuid> {
    s.parse()
        .map_err(|_| Error::invalid("invalid_id", format!("{s:?} is not a payment id (a UUID)")))
}

/// `payrail replay`: exit 0 when every call matched, 1 otherwise.
pub async fn replay(ctx: &Context, tenant: &str, args: &ReplayArgs) -> Result<i32> {
    ctx.require_schema().await?;
    let client = ctx.pool.get().await?;
    let limits = ProcessorSettings::default().limits;
    if let Some(id) = &args.payment_id {
        let id = payment_id(id)?;
        let r = replay::replay_payment(&client, &ctx.engine, &limits, tenant, id).await?;
        print_json(&r);
        if r.matched {
            eprintln!("replay: all {} call(s) match the journal", r.calls.len());
            return Ok(0);
        }
        eprintln!("replay: MISMATCH: the journal and the re-execution differ");
        return Ok(1);
    }
    let (Some(since), Some(until)) = (&args.since, &args.until) else {
        return Err(Error::invalid(
            "invalid_arguments",
            "give a PAYMENT_ID, or --since and --until",
        ));
    };
    let s = replay::replay_range(
        &client,
        &ctx.engine,
        &limits,
        tenant,
        since,
        until,
        args.limit,
    )
    .await?;
    print_json(&s);
    eprintln!(
        "replay: {} payment(s), {} call(s), {} matched, {} payment(s) differ",
        s.payments, s.calls, s.matched_calls, s.mismatched_payments
    );
    Ok(if s.mismatched_payments == 0 { 0 } else { 1 })
}

/// `payrail shadow ...`.
pub async fn shadow(ctx: &Context, actor: &Actor, cmd: &ShadowCmd) -> Result<i32> {
    ctx.require_schema().await?;
    let mut client = ctx.pool.get().await?;
    let change = match cmd {
        ShadowCmd::Report { kind } => {
            print_json(&shadow::report(&client, &actor.tenant, kind).await?);
            return Ok(0);
        }
        ShadowCmd::Promote { kind, step } => (kind, PipelineChange::Promote(*step)),
        ShadowCmd::Set { kind, step, plugin } => {
            (kind, PipelineChange::SetCandidate(*step, plugin.as_deref()))
        }
    };
    print_json(&admin::change_pipeline(&mut client, actor, change.0, change.1).await?);
    Ok(0)
}

/// `payrail pipeline history KIND`.
pub async fn pipeline_history(ctx: &Context, tenant: &str, kind: &str, limit: i64) -> Result<i32> {
    ctx.require_schema().await?;
    let client = ctx.pool.get().await?;
    print_json(&registry::pipeline_history(&client, tenant, kind, limit).await?);
    Ok(0)
}

/// `payrail pipeline rollback KIND [VERSION]`.
pub async fn pipeline_rollback(
    ctx: &Context,
    actor: &Actor,
    kind: &str,
    version: Option<i32>,
) -> Result<i32> {
    ctx.require_schema().await?;
    let mut client = ctx.pool.get().await?;
    let change = PipelineChange::Rollback(version);
    print_json(&admin::change_pipeline(&mut client, actor, kind, change).await?);
    Ok(0)
}

/// `payrail plugin fixture PAYMENT_ID --step N`: the call's journaled
/// input as a fixture, with the journaled decision as its `expect` and
/// where it came from as `from`.
pub async fn fixture(ctx: &Context, tenant: &str, args: &FixtureArgs) -> Result<i32> {
    ctx.require_schema().await?;
    let id = payment_id(&args.payment_id)?;
    let client = ctx.pool.get().await?;
    let call = replay::journaled_call(&client, tenant, id, args.step).await?;
    let mut fixture = call.input;
    let obj = fixture
        .as_object_mut()
        .ok_or_else(|| Error::Setup(format!("the journaled input of {id} is not an object")))?;
    obj.insert(
        "from".into(),
        serde_json::json!({"payment_id": id.to_string(), "step": args.step, "digest": call.digest}),
    );
    obj.insert("expect".into(), call.output);
    let text = serde_json::to_string_pretty(&fixture).expect("a fixture serializes") + "\n";
    match &args.out {
        None => print!("{text}"),
        Some(path) => {
            std::fs::write(path, text).map_err(|e| {
                Error::invalid(
                    "unwritable_file",
                    format!("cannot write {}: {e}", path.display()),
                )
            })?;
            eprintln!(
                "fixture of payment {id} step {} written to {}; run it: payrail plugin test PLUGIN.wasm --input {} --expect",
                args.step,
                path.display(),
                path.display()
            );
        }
    }
    Ok(0)
}
