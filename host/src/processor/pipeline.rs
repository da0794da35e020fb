//! Running a payment's plugin pipeline: each step in order, its shadow
//! candidate after it, the outputs checked; off the async workers within
//! the tenant's share of the cores (`fair`).

use super::Processor;
use super::rules::{call_key, now_ms};
use crate::engine::{PluginEngine, PluginFault, PluginLimits, PreparedInput};
use crate::error::{Error, Result};
use crate::ledger::{self, ApplyProblem};
use crate::model::{
    AccountSnapshot, Decision, DeclineReason, Metadata, Payment, PluginEvent, PluginInput, Posting,
    StepResult,
};
use crate::registry::Pipeline;
use std::time::Duration;
use uuid::Uuid;

/// Cost of one plugin call, for metrics.
#[derive(Debug, Clone)]
pub struct CallStat {
    pub plugin: String,
    pub digest: String,
    pub fuel_used: u64,
    /// Wall-clock time of the call, setup through output checks.
    pub duration: Duration,
    /// CPU time the call used, on one call in
    /// [`crate::engine::CPU_SAMPLE_EVERY`] (see `engine::CallOutcome::cpu`).
    pub cpu: Option<Duration>,
}

/// One journaled plugin call.
#[derive(Debug, Clone)]
pub(crate) struct CallRecord {
    pub(crate) call_key: String,
    pub(crate) step: i32,
    pub(crate) digest: String,
    pub(crate) input_digest: String,
    pub(crate) input_json: String,
    pub(crate) output_json: String,
    pub(crate) fuel_used: i64,
    /// Wall-clock time of the call (the journal keeps it in µs).
    pub(crate) duration: Duration,
    /// CPU time of the call, on sampled calls (metrics and the bench only).
    pub(crate) cpu: Option<Duration>,
    /// The step's shadow candidate run on the same input, if it has one.
    pub(crate) shadow: Option<ShadowRecord>,
    /// What the plugin logged (capped by its limits); `None`: nothing.
    pub(crate) log: Option<String>,
}

/// One shadow (candidate) call, journaled in `payrail.shadow_calls`.
#[derive(Debug, Clone)]
pub(crate) struct ShadowRecord {
    pub(crate) pipeline_version: i32,
    pub(crate) candidate_digest: String,
    /// Canonical JSON of the candidate's decision, or `None` on a fault.
    pub(crate) output_json: Option<String>,
    /// `code: message` of the candidate's fault.
    pub(crate) error: Option<String>,
    pub(crate) agree: bool,
    pub(crate) fuel_used: i64,
    pub(crate) duration_us: i64,
}

/// What the pipeline decided, before ledger checks.
pub(crate) struct PipelineRun {
    pub(crate) calls: Vec<CallRecord>,
    pub(crate) decline: Option<DeclineReason>,
    /// Plugin postings with the step that proposed them (each step's set
    /// already balanced).
    pub(crate) postings: Vec<(usize, Posting)>,
    pub(crate) events: Vec<(usize, PluginEvent)>,
    pub(crate) annotations: Metadata,
}

/// Per-call costs of a run, for metrics.
pub(crate) fn call_stats(pipeline: &Pipeline, calls: &[CallRecord]) -> Vec<CallStat> {
    calls
        .iter()
        .map(|c| CallStat {
            plugin: pipeline.steps[c.step as usize].plugin.clone(),
            digest: c.digest.clone(),
            fuel_used: c.fuel_used as u64,
            duration: c.duration,
            cpu: c.cpu,
        })
        .collect()
}

/// A bad posting is the fault of the first step that proposed a posting to
/// that account; if no plugin did, the request itself is at fault.
pub(crate) fn plugin_fault(pipeline: &Pipeline, run: &PipelineRun, problem: ApplyProblem) -> Error {
    let ApplyProblem::Invalid { account, message } = problem else {
        unreachable!("insufficient funds is a decline, not a fault")
    };
    match run.postings.iter().find(|(_, p)| p.account == account) {
        Some((i, _)) => Error::Plugin {
            step: *i,
            plugin: pipeline.steps[*i].plugin.clone(),
            digest: pipeline.steps[*i].digest.clone(),
            fault: PluginFault::InvalidOutput(message),
        },
        None => Error::invalid("amount_overflow", message),
    }
}

/// Runs every step of `pipeline` in order; stops at the first decline.
/// Each plugin's postings must balance on their own.
pub(crate) fn run_steps(
    engine: &PluginEngine,
    pipeline: &Pipeline,
    payment: &Payment,
    accounts: Vec<AccountSnapshot>,
    now_ms: u64,
    limits: &PluginLimits,
) -> Result<PipelineRun> {
    let payment_uuid: Uuid = payment.id.parse().expect("payment id is a uuid");
    let mut run = PipelineRun {
        calls: Vec::with_capacity(pipeline.steps.len()),
        decline: None,
        postings: Vec::new(),
        events: Vec::new(),
        annotations: Metadata::new(),
    };
    let mut previous: Vec<StepResult> = Vec::with_capacity(pipeline.steps.len());
    for (i, step) in pipeline.steps.iter().enumerate() {
        let fault = |fault: PluginFault| Error::Plugin {
            step: i,
            plugin: step.plugin.clone(),
            digest: step.digest.clone(),
            fault,
        };
        let input = PreparedInput::new(PluginInput {
            payment: payment.clone(),
            accounts: accounts.clone(),
            config: step.config.to_string(),
            previous: previous.clone(),
            now_ms,
        });
        let span = tracing::info_span!("plugin_call", payment = %payment.id, plugin = %step.plugin, digest = %&step.digest[..12]);
        let _enter = span.enter();
        let limits = match &step.limits {
            Some(o) => o.apply(limits),
            None => *limits,
        };
        let out = engine.call(&step.digest, &input, &limits).map_err(fault)?;
        let shadow = step.candidate.as_ref().map(|c| {
            shadow_call(
                engine,
                pipeline.version,
                c,
                &input,
                &limits,
                &out.output_json,
            )
        });
        let log = (!out.log.is_empty()).then(|| {
            tracing::info!(log = %out.log.trim_end(), "plugin log");
            out.log
        });
        run.absorb(i, &out.decision)
            .map_err(|m| fault(PluginFault::InvalidOutput(m)))?;
        run.calls.push(CallRecord {
            call_key: call_key(payment_uuid, i, &step.digest, &input.digest),
            step: i as i32,
            digest: step.digest.clone(),
            input_digest: hex::encode(input.digest),
            input_json: input.json,
            output_json: out.output_json,
            fuel_used: out.fuel_used as i64,
            duration: out.duration,
            cpu: out.cpu,
            shadow,
            log,
        });
        let declined = run.decline.is_some();
        previous.push(StepResult {
            plugin: step.plugin.clone(),
            digest: step.digest.clone(),
            decision: out.decision,
        });
        if declined {
            break;
        }
    }
    Ok(run)
}

impl PipelineRun {
    /// Step 6a: the postings the payment proposes (`principal`, then the
    /// plugins' unless `principal_only`), or the plugins' decline, which
    /// comes first. At authorization (manual capture) only the principal is
    /// checked: fees are charged at capture. Step 6b is
    /// [`super::rules::verdict`].
    pub(crate) fn proposal(
        &self,
        principal: Vec<Posting>,
        principal_only: bool,
    ) -> std::result::Result<Vec<Posting>, DeclineReason> {
        if let Some(decline) = &self.decline {
            return Err(decline.clone());
        }
        let mut postings = principal;
        if !principal_only {
            postings.extend(self.postings.iter().map(|(_, p)| p.clone()));
        }
        Ok(postings)
    }

    /// Takes step `step`'s decision into the run: an approval's checked
    /// postings, events and annotations, or the decline that ends it.
    fn absorb(&mut self, step: usize, decision: &Decision) -> std::result::Result<(), String> {
        match decision {
            Decision::Approve {
                postings,
                events,
                annotations,
            } => {
                check_postings(postings)?;
                self.postings
                    .extend(postings.iter().map(|p| (step, p.clone())));
                self.events
                    .extend(events.iter().cloned().map(|e| (step, e)));
                for (k, v) in annotations {
                    self.annotations.insert(k.clone(), v.clone());
                }
            }
            Decision::Decline { code, message } => {
                self.decline = Some(DeclineReason {
                    code: code.clone(),
                    message: message.clone(),
                });
            }
        }
        Ok(())
    }
}

impl Processor {
    /// Runs `pipeline` for `payment` of `tenant` off the async workers
    /// (two-phase transitions use it too; see `holds`).
    pub(crate) async fn run_pipeline(
        &self,
        tenant: &str,
        pipeline: &Pipeline,
        payment: &Payment,
        snapshots: Vec<AccountSnapshot>,
    ) -> Result<PipelineRun> {
        let engine = self.engine.clone();
        let limits = self.settings.limits;
        let pipeline = pipeline.clone();
        let payment = payment.clone();
        let now = now_ms();
        // the plugin thread traces its calls under the caller's span
        let span = tracing::Span::current();
        self.run_plugins(tenant, move || {
            let _traced = span.enter();
            run_steps(&engine, &pipeline, &payment, snapshots, now, &limits)
        })
        .await?
    }
}

/// A step's shadow candidate on the very same input, after the live call:
/// whatever it does (decide otherwise, fault, hit a limit) is only
/// recorded, never returned.
fn shadow_call(
    engine: &PluginEngine,
    pipeline_version: i32,
    candidate: &crate::registry::Candidate,
    input: &PreparedInput,
    limits: &PluginLimits,
    live_output: &str,
) -> ShadowRecord {
    let started = std::time::Instant::now();
    match engine.call(&candidate.digest, input, limits) {
        Ok(cand) => ShadowRecord {
            pipeline_version,
            candidate_digest: candidate.digest.clone(),
            agree: cand.output_json == live_output,
            output_json: Some(cand.output_json),
            error: None,
            fuel_used: cand.fuel_used as i64,
            duration_us: cand.duration.as_micros() as i64,
        },
        Err(f) => ShadowRecord {
            pipeline_version,
            candidate_digest: candidate.digest.clone(),
            output_json: None,
            error: Some(format!("{}: {f}", f.code())),
            agree: false,
            fuel_used: 0,
            duration_us: started.elapsed().as_micros() as i64,
        },
    }
}

/// A plugin's postings balance on their own and name only accounts a
/// payment may touch, in valid currencies.
fn check_postings(postings: &[Posting]) -> std::result::Result<(), String> {
    ledger::check_balanced(postings)?;
    for p in postings {
        if ledger::validate_currency(&p.currency).is_err()
            || ledger::validate_id("account", &p.account).is_err()
            || p.account.starts_with(ledger::EQUITY_PREFIX)
        {
            return Err(format!(
                "posting to {:?} in {:?} is not allowed",
                p.account, p.currency
            ));
        }
    }
    Ok(())
}
