//! Forming batches that do not wait on each other, and that share the
//! workers fairly between tenants (docs/batching.md, "Intake";
//! docs/tenancy.md).
//!
//! Two batches of one host that share an account serialize on its advisory
//! lock: the later one waits, with all of its payments, for the earlier
//! one's commit. Once a backlog builds up, batches grow, the chance that
//! two of them share an account grows with the square of their size, and
//! the waits feed the backlog. So a worker forming a batch leaves out the
//! queued payments whose source or destination a running batch of this
//! host holds: they stay queued, ahead of newer payments, for that batch
//! to end. The advisory locks are still taken (other hosts, accounts only
//! a plugin names); this only keeps this host's batches from queueing
//! behind each other.
//!
//! Tenants: every batch holds the payments of one tenant; tenants with
//! queued payments take turns (round robin); a tenant runs at most
//! `tenant_cap` batches at once, so one tenant's slow plugins hold at most
//! that many workers and never sit in front of another tenant's payments.
//! A payment whose caller has gone (its request timed out or the client
//! disconnected) is dropped when a worker reaches it, before it runs, and
//! counted as skipped.

use super::PayOutcome;
use crate::error::Result;
use crate::model::PaymentRequest;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Mutex, Notify, mpsc, oneshot};

/// Times a batch puts a payment back because another transaction (another
/// host's batch, a capture...) holds one of its accounts; the batch that
/// takes it after that waits for the locks. Bounds how long traffic on its
/// accounts can keep a payment out (docs/batching.md, "Other hosts").
pub const MAX_DEFERRALS: u8 = 3;

/// One queued payment and where its answer goes.
pub(crate) struct Job {
    pub(super) tenant: String,
    pub(super) key: String,
    pub(super) req: PaymentRequest,
    pub(super) reply: oneshot::Sender<Result<PayOutcome>>,
    /// Times a batch has put it back (at most [`MAX_DEFERRALS`]).
    pub(super) deferrals: u8,
    /// The payment's span: the worker runs the job outside it, so its
    /// events take their traceparent from here, and a job run alone runs
    /// in it.
    pub(super) span: tracing::Span,
}

/// The sending side of the queue; the workers stop when every copy is gone.
pub(crate) type Queue = mpsc::Sender<Job>;

/// An account as the intake tracks it: (tenant, account id).
type AccountKey = (String, String);

/// Most queued payments of one tenant looked at to form one batch, in
/// batches: bounds the work of a `take` when many are blocked on accounts.
const SCAN_BATCHES: usize = 4;

/// The batch workers' shared queue.
pub(crate) struct Intake {
    /// New payments. One worker at a time forms a batch (it holds this).
    rx: Mutex<mpsc::Receiver<Job>>,
    state: std::sync::Mutex<State>,
    /// Signalled when a batch ends: queued payments may fit now.
    released: Notify,
    /// Most batches one tenant runs at once.
    tenant_cap: usize,
    /// Most payments moved out of the channel into the tenants' queues.
    max_queued: usize,
    /// Payments dropped because their caller had gone (for `/metrics`).
    skipped: Arc<AtomicU64>,
}

#[derive(Default)]
struct State {
    /// Source and destination of every payment of the running batches.
    held: HashSet<AccountKey>,
    /// Queued payments by tenant, oldest first (put-back ones in front).
    queues: HashMap<String, VecDeque<Job>>,
    /// Tenants with queued payments, in the order they get their turn.
    turns: VecDeque<String>,
    /// Batches running, by tenant (no entry: none).
    running: HashMap<String, usize>,
    /// Payments in `queues`.
    queued: usize,
}

/// A batch taken from the intake; give it back with [`Intake::release`]
/// when it has ended.
pub(crate) struct Taken {
    pub(crate) tenant: String,
    pub(crate) jobs: Vec<Job>,
    pub(crate) accounts: Vec<AccountKey>,
}

fn accounts_of(job: &Job) -> [AccountKey; 2] {
    [
        (job.tenant.clone(), job.req.source.clone()),
        (job.tenant.clone(), job.req.destination.clone()),
    ]
}

impl State {
    fn enqueue(&mut self, job: Job) {
        let queue = self.queues.entry(job.tenant.clone()).or_default();
        if queue.is_empty() {
            self.turns.push_back(job.tenant.clone());
        }
        queue.push_back(job);
        self.queued += 1;
    }

    /// The next batch: the first tenant in turn that is under its cap and
    /// has a queued payment whose accounts are free. The tenant goes to
    /// the back of the turns.
    fn next_batch(
        &mut self,
        max_payments: usize,
        tenant_cap: usize,
        skipped: &AtomicU64,
    ) -> Option<Batch> {
        for _ in 0..self.turns.len() {
            let tenant = self.turns.pop_front()?;
            if self.running.get(&tenant).copied().unwrap_or(0) >= tenant_cap {
                self.turns.push_back(tenant);
                continue;
            }
            let mut queue = self.queues.remove(&tenant).unwrap_or_default();
            let before = queue.len();
            let batch = form(&self.held, &mut queue, max_payments, skipped);
            self.queued -= before - queue.len();
            if !queue.is_empty() {
                self.queues.insert(tenant.clone(), queue);
                self.turns.push_back(tenant.clone());
            }
            if !batch.jobs.is_empty() {
                *self.running.entry(tenant).or_insert(0) += 1;
                self.held.extend(batch.accounts.iter().cloned());
                return Some(batch);
            }
        }
        None
    }
}

/// Takes from `queue` (one tenant's) the payments that fit now, oldest
/// first, up to `max_payments`, looking at most at [`SCAN_BATCHES`] batches'
/// worth; drops those whose caller has gone.
fn form(
    held: &HashSet<AccountKey>,
    queue: &mut VecDeque<Job>,
    max_payments: usize,
    skipped: &AtomicU64,
) -> Batch {
    let mut batch = Batch::default();
    let mut kept = VecDeque::new();
    let mut looked = 0;
    while batch.jobs.len() < max_payments && looked < max_payments * SCAN_BATCHES {
        let Some(job) = queue.pop_front() else { break };
        looked += 1;
        if job.reply.is_closed() {
            skipped.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(key = %job.key, "caller went away; queued payment skipped");
        } else if is_free(held, &job) {
            batch.add(job);
        } else {
            kept.push_back(job);
        }
    }
    while let Some(job) = kept.pop_back() {
        queue.push_front(job);
    }
    batch
}

impl Intake {
    /// An intake over `rx`: batches of one tenant, at most `tenant_cap` of
    /// them running per tenant, at most `max_queued` payments taken out of
    /// the channel; `skipped` counts payments whose caller had gone.
    pub(crate) fn new(
        rx: mpsc::Receiver<Job>,
        tenant_cap: usize,
        max_queued: usize,
        skipped: Arc<AtomicU64>,
    ) -> Intake {
        assert!(tenant_cap >= 1 && max_queued >= 1);
        Intake {
            rx: Mutex::new(rx),
            state: Default::default(),
            released: Notify::new(),
            tenant_cap,
            max_queued,
            skipped,
        }
    }

    /// The next batch: at most `max_payments` of one tenant, none of them
    /// touching an account a running batch holds. Waits for a payment that
    /// fits, then takes what is queued (lingering up to `window_us` for
    /// more of that tenant's). `None` once the channel is closed and
    /// everything queued is gone.
    pub(crate) async fn take(&self, max_payments: usize, window_us: u64) -> Option<Taken> {
        assert!(max_payments >= 1);
        let mut rx = self.rx.lock().await;
        loop {
            // Created before looking, so a release in between is not lost.
            let released = self.released.notified();
            tokio::pin!(released);
            let closed = self.drain(&mut rx);
            let next = self
                .lock()
                .next_batch(max_payments, self.tenant_cap, &self.skipped);
            if let Some(mut batch) = next {
                if window_us > 0 && !closed {
                    let until = tokio::time::Instant::now() + Duration::from_micros(window_us);
                    self.linger(&mut rx, &mut batch, max_payments, until).await;
                }
                let tenant = batch.jobs[0].tenant.clone();
                return Some(Taken {
                    tenant,
                    jobs: batch.jobs,
                    accounts: batch.accounts.into_iter().collect(),
                });
            }
            if closed && self.lock().queued == 0 {
                return None;
            }
            // Nothing that fits: wait for a payment or for a batch to end.
            let room = self.lock().queued < self.max_queued;
            tokio::select! {
                job = rx.recv(), if !closed && room => {
                    if let Some(job) = job {
                        self.lock().enqueue(job);
                    }
                }
                _ = &mut released => {}
            }
        }
    }

    /// Moves what the channel holds into the tenants' queues (up to
    /// `max_queued`); whether the channel is closed.
    fn drain(&self, rx: &mut mpsc::Receiver<Job>) -> bool {
        let mut st = self.lock();
        while st.queued < self.max_queued {
            match rx.try_recv() {
                Ok(job) => st.enqueue(job),
                Err(mpsc::error::TryRecvError::Empty) => return false,
                Err(mpsc::error::TryRecvError::Disconnected) => return true,
            }
        }
        false
    }

    /// Waits until `until` for more payments of `batch`'s tenant whose
    /// accounts are free; others are queued.
    async fn linger(
        &self,
        rx: &mut mpsc::Receiver<Job>,
        batch: &mut Batch,
        max_payments: usize,
        until: tokio::time::Instant,
    ) {
        let tenant = batch.jobs[0].tenant.clone();
        while batch.jobs.len() < max_payments {
            let Ok(Some(job)) = tokio::time::timeout_at(until, rx.recv()).await else {
                return;
            };
            let mut st = self.lock();
            // the batch's own accounts are in `held`: sharing them is fine
            let fits = accounts_of(&job)
                .iter()
                .all(|a| batch.accounts.contains(a) || !st.held.contains(a));
            if job.tenant == tenant && fits {
                st.held.extend(accounts_of(&job));
                batch.add(job);
            } else {
                st.enqueue(job);
            }
        }
    }

    /// Puts back payments a running batch deferred because another
    /// transaction held one of their accounts (call before that batch's
    /// [`Intake::release`]): they go first in their tenant's queue, each
    /// counted once more against [`MAX_DEFERRALS`].
    pub(crate) fn put_back(&self, jobs: Vec<Job>) {
        let mut st = self.lock();
        for mut job in jobs.into_iter().rev() {
            // Their batch still holds their accounts: no other batch of
            // this host takes them before it ends.
            assert!(
                accounts_of(&job).iter().all(|a| st.held.contains(a)),
                "a deferred payment's batch is still running"
            );
            assert!(job.deferrals < MAX_DEFERRALS);
            job.deferrals += 1;
            let queue = st.queues.entry(job.tenant.clone()).or_default();
            let first = queue.is_empty();
            queue.push_front(job);
            if first {
                let tenant = queue[0].tenant.clone();
                st.turns.push_back(tenant);
            }
            st.queued += 1;
        }
    }

    /// Gives back a batch that has ended (committed, failed or panicked):
    /// its accounts and its tenant's running slot.
    pub(crate) fn release(&self, taken: &Taken) {
        {
            let mut st = self.lock();
            for a in &taken.accounts {
                st.held.remove(a);
            }
            if let Some(n) = st.running.get_mut(&taken.tenant) {
                *n -= 1;
                if *n == 0 {
                    st.running.remove(&taken.tenant);
                }
            }
        }
        self.released.notify_one();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("intake lock")
    }
}

/// A batch being formed.
#[derive(Default)]
struct Batch {
    jobs: Vec<Job>,
    accounts: HashSet<AccountKey>,
}

/// Whether `job` may join a batch: no running batch holds its accounts
/// (the batch being formed may: payments of one batch share its locks).
fn is_free(held: &HashSet<AccountKey>, job: &Job) -> bool {
    accounts_of(job).iter().all(|a| !held.contains(a))
}

impl Batch {
    fn add(&mut self, job: Job) {
        self.accounts.extend(accounts_of(&job));
        self.jobs.push(job);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::PaymentRequest;

    fn job_of(tenant: &str, key: &str, source: &str, destination: &str) -> Job {
        let (reply, answer) = tokio::sync::oneshot::channel();
        // The caller stays (a dropped receiver is a caller that went away).
        std::mem::forget(answer);
        Job {
            tenant: tenant.into(),
            key: key.into(),
            req: PaymentRequest {
                kind: "transfer".into(),
                source: source.into(),
                destination: destination.into(),
                amount: 1,
                currency: "EUR".into(),
                metadata: Default::default(),
                capture: Default::default(),
                hold_ttl_secs: None,
            },
            reply,
            deferrals: 0,
            span: tracing::Span::none(),
        }
    }

    fn job(key: &str, source: &str, destination: &str) -> Job {
        job_of("t", key, source, destination)
    }

    fn intake(rx: mpsc::Receiver<Job>, tenant_cap: usize) -> Intake {
        Intake::new(rx, tenant_cap, 1024, Arc::default())
    }

    /// `take`, failing the test instead of hanging it.
    async fn within_5s(intake: &Intake, max_payments: usize, window_us: u64) -> Option<Taken> {
        tokio::time::timeout(Duration::from_secs(5), intake.take(max_payments, window_us))
            .await
            .expect("take returned within 5 s")
    }

    fn keys(t: &Taken) -> Vec<&str> {
        t.jobs.iter().map(|j| j.key.as_str()).collect()
    }

    /// An intake over a fresh queue that has handed out a first batch,
    /// payment `a` on accounts x and y, taken `max_payments` at a time.
    async fn holding_x_and_y(
        max_payments: usize,
    ) -> (mpsc::Sender<Job>, std::sync::Arc<Intake>, Taken) {
        let (tx, rx) = mpsc::channel(16);
        let intake = std::sync::Arc::new(intake(rx, 8));
        tx.send(job("a", "x", "y")).await.unwrap();
        let first = within_5s(&intake, max_payments, 0).await.unwrap();
        assert_eq!(keys(&first), ["a"]);
        (tx, intake, first)
    }

    #[tokio::test]
    async fn a_payment_on_a_held_account_waits_for_the_batch_that_holds_it() {
        let (tx, intake, first) = holding_x_and_y(8).await;

        // b shares x with the running batch; c and d do not (d shares z
        // with c, which is fine within one batch)
        for j in [job("b", "w", "x"), job("c", "z", "v"), job("d", "z", "u")] {
            tx.send(j).await.unwrap();
        }
        let second = within_5s(&intake, 8, 0).await.unwrap();
        assert_eq!(keys(&second), ["c", "d"]);

        // only b is left and it does not fit: take waits for a release
        let waiting = {
            let intake = intake.clone();
            tokio::spawn(async move { within_5s(&intake, 8, 0).await.map(|t| keys(&t).join(",")) })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "b must wait while x is held");
        intake.release(&first);
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(5), waiting)
                .await
                .expect("released in time")
                .unwrap()
                .as_deref(),
            Some("b")
        );

        // a closed queue with nothing queued ends the intake
        intake.release(&second);
        drop(tx);
        assert!(
            within_5s(&intake, 8, 0).await.is_none(),
            "closed and drained"
        );
    }

    #[tokio::test]
    async fn a_new_payment_that_fits_does_not_wait_behind_a_deferred_one() {
        let (tx, intake, first) = holding_x_and_y(8).await;
        tx.send(job("b", "x", "q")).await.unwrap();
        tx.send(job("c", "p", "q")).await.unwrap();
        // c shares q with the waiting b, not with a running batch: it goes
        let second = within_5s(&intake, 8, 0).await.unwrap();
        assert_eq!(keys(&second), ["c"]);
        intake.release(&first);
        intake.release(&second);
        let third = within_5s(&intake, 8, 0).await.unwrap();
        assert_eq!(keys(&third), ["b"]);
        assert_eq!(intake.lock().held.len(), 2);
    }

    #[tokio::test]
    async fn a_payment_put_back_goes_first_once_its_batch_ends() {
        let (tx, rx) = mpsc::channel(16);
        let intake = intake(rx, 8);
        tx.send(job("a", "x", "y")).await.unwrap();
        tx.send(job("b", "p", "q")).await.unwrap();
        let mut first = within_5s(&intake, 8, 0).await.unwrap();
        assert_eq!(keys(&first), ["a", "b"]);
        tx.send(job("c", "r", "s")).await.unwrap();
        let mut jobs = std::mem::take(&mut first.jobs).into_iter();
        let (a, b) = (jobs.next().unwrap(), jobs.next().unwrap());
        drop(b);
        intake.put_back(vec![a]);
        // c is free; a waits while its batch holds x and y
        let second = within_5s(&intake, 8, 0).await.unwrap();
        assert_eq!(keys(&second), ["c"]);
        intake.release(&first);
        intake.release(&second);
        tx.send(job("d", "t", "w")).await.unwrap();
        let third = within_5s(&intake, 8, 0).await.unwrap();
        assert_eq!(keys(&third), ["a", "d"], "put back ahead of newer payments");
        assert_eq!(third.jobs[0].deferrals, 1);
        assert_eq!(third.jobs[1].deferrals, 0);
    }

    #[tokio::test]
    async fn a_window_lingers_for_more_payments() {
        let (tx, rx) = mpsc::channel(16);
        let intake = intake(rx, 8);
        tx.send(job("a", "x", "y")).await.unwrap();
        let late = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            tx.send(job("b", "p", "q")).await.unwrap();
            tx
        });
        let taken = within_5s(&intake, 8, 300_000).await.unwrap();
        assert_eq!(keys(&taken), ["a", "b"], "b came within the window");
        intake.release(&taken);
        drop(late.await.unwrap());
        assert!(within_5s(&intake, 8, 0).await.is_none());
    }

    #[tokio::test]
    async fn tenants_take_turns_and_each_runs_at_most_its_cap() {
        let (tx, rx) = mpsc::channel(64);
        let intake = intake(rx, 1);
        // the noisy tenant queues first, many payments
        for i in 0..6 {
            tx.send(job_of(
                "noisy",
                &format!("n{i}"),
                &format!("a{i}"),
                &format!("b{i}"),
            ))
            .await
            .unwrap();
        }
        tx.send(job_of("quiet", "q0", "x", "y")).await.unwrap();
        let first = within_5s(&intake, 2, 0).await.unwrap();
        assert_eq!(
            (first.tenant.as_str(), keys(&first)),
            ("noisy", vec!["n0", "n1"])
        );
        // noisy is at its cap of one batch: the quiet tenant goes next
        let second = within_5s(&intake, 2, 0).await.unwrap();
        assert_eq!(
            (second.tenant.as_str(), keys(&second)),
            ("quiet", vec!["q0"])
        );
        let waiting = tokio::time::timeout(Duration::from_millis(50), intake.take(2, 0)).await;
        assert!(waiting.is_err(), "noisy waits for its running batch");
        intake.release(&first);
        let third = within_5s(&intake, 2, 0).await.unwrap();
        assert_eq!(keys(&third), ["n2", "n3"]);
    }

    #[tokio::test]
    async fn a_payment_whose_caller_went_away_is_skipped() {
        let (tx, rx) = mpsc::channel(16);
        let skipped = Arc::new(AtomicU64::new(0));
        let intake = Intake::new(rx, 8, 1024, skipped.clone());
        let (reply, answer) = tokio::sync::oneshot::channel();
        drop(answer);
        let gone = Job {
            reply,
            ..job("gone", "x", "y")
        };
        tx.send(gone).await.unwrap();
        tx.send(job("stays", "p", "q")).await.unwrap();
        let taken = within_5s(&intake, 8, 0).await.unwrap();
        assert_eq!(keys(&taken), ["stays"]);
        assert_eq!(skipped.load(Ordering::Relaxed), 1);
    }
}
