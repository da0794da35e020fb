//! Load generators over either path: a closed loop (N clients, each making
//! its next payment as soon as the last one finished, for a fixed time) and
//! a rate-limited open loop (payments started on a fixed schedule).

use crate::http::HttpTarget;
use crate::workload::{CallTime, Outcome, RequestGen, Samples, Workload};
use payrail::error::Result;
use payrail::model::{DEFAULT_TENANT, PaymentRequest, PaymentStatus};
use payrail::processor::Processor;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Where the payments go. Cheap to clone.
#[derive(Clone)]
pub enum Target {
    /// `Processor::pay` in this process.
    InProcess(Box<Processor>),
    /// `POST /v1/payments` to one or more `payrail serve` processes.
    Http(Arc<HttpTarget>),
}

impl Target {
    /// Makes one payment; `client` picks the server of an HTTP target.
    pub async fn pay(&self, client: usize, key: &str, req: &PaymentRequest) -> Outcome {
        match self {
            Target::InProcess(p) => match p.pay(DEFAULT_TENANT, key, req).await {
                Ok(o) => Outcome {
                    result: Ok(o.response.status == PaymentStatus::Approved),
                    calls: o
                        .calls
                        .iter()
                        .map(|c| CallTime {
                            wall: c.duration,
                            cpu: c.cpu,
                        })
                        .collect(),
                    lock_wait: Some(o.lock_wait),
                },
                Err(e) => Outcome {
                    result: Err(format!("[{}] {e}", e.code())),
                    calls: Vec::new(),
                    lock_wait: None,
                },
            },
            Target::Http(h) => Outcome {
                result: h.pay(client, key, req).await,
                calls: Vec::new(),
                lock_wait: None,
            },
        }
    }
}

/// The measurements of one timed run.
pub struct RunSamples {
    /// Everything recorded.
    pub samples: Samples,
    /// From the first payment started to the last one finished.
    pub elapsed: Duration,
}

/// `clients` concurrent clients, each paying in a loop until `duration`
/// has passed (payments in flight then still finish and count). Keys are
/// `{key_prefix}-{client}-{n}`: unique per run.
pub async fn closed_loop(
    target: &Target,
    workload: Workload,
    accounts: usize,
    clients: usize,
    duration: Duration,
    seed: u64,
    key_prefix: &str,
) -> Result<RunSamples> {
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..clients {
        let mut generator = RequestGen::new(workload, accounts, seed ^ ((client as u64) << 32))?;
        let target = target.clone();
        let prefix = format!("{key_prefix}-{client}");
        tasks.spawn(async move {
            let mut samples = Samples::default();
            let mut n = 0u64;
            while Instant::now() < deadline {
                let req = generator.next_request();
                let key = format!("{prefix}-{n}");
                n += 1;
                let t = Instant::now();
                let outcome = target.pay(client, &key, &req).await;
                samples.record(t.elapsed(), &outcome);
            }
            samples
        });
    }
    let mut samples = Samples::default();
    while let Some(r) = tasks.join_next().await {
        samples.merge(r.map_err(|e| payrail::error::Error::Setup(format!("bench client: {e}")))?);
    }
    Ok(RunSamples {
        samples,
        elapsed: started.elapsed(),
    })
}

/// Payments started at `rate` per second for `duration`, at most
/// `max_in_flight` at once. Latency counts from each payment's *scheduled*
/// start, so a backlog (the target falling behind the rate, or the cap
/// being reached) shows up in the latency instead of being hidden
/// (no coordinated omission).
#[allow(clippy::too_many_arguments)]
pub async fn rate_limited(
    target: &Target,
    workload: Workload,
    accounts: usize,
    rate: f64,
    max_in_flight: usize,
    duration: Duration,
    seed: u64,
    key_prefix: &str,
) -> Result<RunSamples> {
    let rate = rate.max(1.0);
    let total = (rate * duration.as_secs_f64()).ceil() as u64;
    let mut generator = RequestGen::new(workload, accounts, seed)?;
    let permits = Arc::new(Semaphore::new(max_in_flight.max(1)));
    let samples = Arc::new(Mutex::new(Samples::default()));
    let started = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..total {
        let scheduled = started + Duration::from_secs_f64(n as f64 / rate);
        tokio::time::sleep_until(scheduled).await;
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let (target, samples) = (target.clone(), samples.clone());
        let req = generator.next_request();
        let key = format!("{key_prefix}-{n}");
        tasks.spawn(async move {
            let outcome = target.pay(n as usize, &key, &req).await;
            let latency = scheduled.elapsed();
            drop(permit);
            samples
                .lock()
                .expect("no panics while recording")
                .record(latency, &outcome);
        });
        // reap finished tasks as we go so the set stays small
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = started.elapsed();
    let samples = std::mem::take(&mut *samples.lock().expect("no panics while recording"));
    Ok(RunSamples { samples, elapsed })
}
