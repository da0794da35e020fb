//! Forming batches that do not wait on each other (docs/batching.md,
//! "Intake").
//!
//! Two batches of one host that share an account serialize on its advisory
//! lock: the later one waits, with all of its payments, for the earlier
//! one's commit. Once a backlog builds up, batches grow, the chance that
//! two of them share an account grows with the square of their size, and
//! the waits feed the backlog. So a worker forming a batch leaves out the
//! queued payments whose source or destination a running batch of this
//! host holds: they wait in `deferred`, ahead of newer payments, for that
//! batch to end. The advisory locks are still taken (other hosts, accounts
//! only a plugin names); this only keeps this host's batches from queueing
//! behind each other.

use super::batch::Job;
use std::collections::{HashSet, VecDeque};
use std::time::Duration;
use tokio::sync::{Mutex, Notify, mpsc};

/// An account as the intake tracks it: (tenant, account id).
type AccountKey = (String, String);

/// The batch workers' shared queue.
pub(crate) struct Intake {
    /// New payments. One worker at a time forms a batch (it holds this).
    rx: Mutex<mpsc::Receiver<Job>>,
    state: std::sync::Mutex<State>,
    /// Signalled when a batch ends: deferred payments may fit now.
    released: Notify,
}

#[derive(Default)]
struct State {
    /// Source and destination of every payment of the running batches.
    held: HashSet<AccountKey>,
    /// Payments left out because a running batch holds one of their
    /// accounts, oldest first; at most one batch's worth.
    deferred: VecDeque<Job>,
}

/// A batch taken from the intake; give its accounts back with
/// [`Intake::release`] when it has ended.
pub(crate) struct Taken {
    pub(crate) jobs: Vec<Job>,
    pub(crate) accounts: Vec<AccountKey>,
}

fn accounts_of(job: &Job) -> [AccountKey; 2] {
    [
        (job.tenant.clone(), job.req.source.clone()),
        (job.tenant.clone(), job.req.destination.clone()),
    ]
}

impl Intake {
    pub(crate) fn new(rx: mpsc::Receiver<Job>) -> Intake {
        Intake {
            rx: Mutex::new(rx),
            state: Default::default(),
            released: Notify::new(),
        }
    }

    /// The next batch: at most `max_payments`, none of them touching an
    /// account a running batch holds. Waits for a first payment, then
    /// takes what is queued (lingering up to `window_us` for more). `None`
    /// once the queue is closed and drained.
    pub(crate) async fn take(&self, max_payments: usize, window_us: u64) -> Option<Taken> {
        assert!(max_payments >= 1);
        let mut rx = self.rx.lock().await;
        loop {
            // Created before looking, so a release in between is not lost.
            let released = self.released.notified();
            tokio::pin!(released);
            let mut batch = self.take_deferred(max_payments);
            let linger_until = tokio::time::Instant::now() + Duration::from_micros(window_us);
            let mut closed = false;
            while batch.jobs.len() < max_payments && self.has_room_to_defer(max_payments) {
                let job = match rx.try_recv() {
                    Ok(job) => job,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                    Err(mpsc::error::TryRecvError::Empty) if window_us == 0 => break,
                    Err(mpsc::error::TryRecvError::Empty) if batch.jobs.is_empty() => break,
                    Err(mpsc::error::TryRecvError::Empty) => {
                        match tokio::time::timeout_at(linger_until, rx.recv()).await {
                            Ok(Some(job)) => job,
                            Ok(None) => {
                                closed = true;
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                };
                self.place(job, &mut batch);
            }
            if !batch.jobs.is_empty() {
                let mut st = self.state.lock().expect("intake lock");
                st.held.extend(batch.accounts.iter().cloned());
                return Some(Taken {
                    jobs: batch.jobs,
                    accounts: batch.accounts.into_iter().collect(),
                });
            }
            if closed && self.state.lock().expect("intake lock").deferred.is_empty() {
                return None;
            }
            // Nothing that fits: wait for a payment (looked at on the next
            // round, from `deferred`) or for a batch to end.
            tokio::select! {
                job = rx.recv(), if !closed && self.has_room_to_defer(max_payments) => {
                    if let Some(job) = job {
                        self.state.lock().expect("intake lock").deferred.push_back(job);
                    }
                }
                _ = &mut released => {}
            }
        }
    }

    /// A batch of the deferred payments that fit now, oldest first.
    fn take_deferred(&self, max_payments: usize) -> Batch {
        let mut st = self.state.lock().expect("intake lock");
        let st = &mut *st;
        let mut batch = Batch::default();
        let mut kept = VecDeque::with_capacity(st.deferred.len());
        while let Some(job) = st.deferred.pop_front() {
            if batch.jobs.len() < max_payments && is_free(&st.held, &job) {
                batch.add(job);
            } else {
                kept.push_back(job);
            }
        }
        st.deferred = kept;
        batch
    }

    /// Puts back payments a running batch deferred because another
    /// transaction held one of their accounts (call before that batch's
    /// [`Intake::release`]): they go first among the deferred, each counted
    /// once more against [`super::batch::MAX_DEFERRALS`]. This can hold up to
    /// one batch's worth more than `deferred`'s usual bound.
    pub(crate) fn put_back(&self, jobs: Vec<Job>) {
        if jobs.is_empty() {
            return;
        }
        let mut st = self.state.lock().expect("intake lock");
        for mut job in jobs.into_iter().rev() {
            // Their batch still holds their accounts: no other batch of
            // this host takes them before it ends.
            assert!(
                accounts_of(&job).iter().all(|a| st.held.contains(a)),
                "a deferred payment's batch is still running"
            );
            assert!(job.deferrals < super::batch::MAX_DEFERRALS);
            job.deferrals += 1;
            st.deferred.push_front(job);
        }
    }

    /// Gives back the accounts of a batch that has ended (committed,
    /// failed or panicked).
    pub(crate) fn release(&self, accounts: &[AccountKey]) {
        {
            let mut st = self.state.lock().expect("intake lock");
            for a in accounts {
                st.held.remove(a);
            }
        }
        self.released.notify_one();
    }

    /// Adds `job` to `batch` if no running batch holds its accounts,
    /// otherwise defers it.
    fn place(&self, job: Job, batch: &mut Batch) {
        let mut st = self.state.lock().expect("intake lock");
        if is_free(&st.held, &job) {
            batch.add(job);
        } else {
            st.deferred.push_back(job);
        }
    }

    fn has_room_to_defer(&self, max_payments: usize) -> bool {
        self.state.lock().expect("intake lock").deferred.len() < max_payments
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

    fn job(key: &str, source: &str, destination: &str) -> Job {
        let (reply, _) = tokio::sync::oneshot::channel();
        Job {
            tenant: "t".into(),
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
        }
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
        let intake = std::sync::Arc::new(Intake::new(rx));
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
        intake.release(&first.accounts);
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(5), waiting)
                .await
                .expect("released in time")
                .unwrap()
                .as_deref(),
            Some("b")
        );

        // a closed queue with nothing deferred ends the intake
        intake.release(&second.accounts);
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
        // c shares q with the deferred b, not with a running batch: it goes
        let second = within_5s(&intake, 8, 0).await.unwrap();
        assert_eq!(keys(&second), ["c"]);
        intake.release(&first.accounts);
        intake.release(&second.accounts);
        let third = within_5s(&intake, 8, 0).await.unwrap();
        assert_eq!(keys(&third), ["b"]);
        assert_eq!(intake.state.lock().unwrap().held.len(), 2);
    }

    #[tokio::test]
    async fn at_most_one_batch_is_deferred_the_rest_stays_queued() {
        let (tx, intake, first) = holding_x_and_y(2).await;
        for k in ["b", "c", "d"] {
            tx.send(job(k, "x", k)).await.unwrap();
        }
        let waiting = {
            let intake = intake.clone();
            tokio::spawn(async move { within_5s(&intake, 2, 0).await.unwrap() })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        assert_eq!(intake.state.lock().unwrap().deferred.len(), 2);
        assert_eq!(tx.capacity(), 15, "d is still in the queue");
        intake.release(&first.accounts);
        let second = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("released in time")
            .unwrap();
        assert_eq!(keys(&second), ["b", "c"]);
        intake.release(&second.accounts);
        assert_eq!(keys(&within_5s(&intake, 2, 0).await.unwrap()), ["d"]);
    }

    #[tokio::test]
    async fn a_payment_put_back_goes_first_once_its_batch_ends() {
        let (tx, rx) = mpsc::channel(16);
        let intake = Intake::new(rx);
        tx.send(job("a", "x", "y")).await.unwrap();
        tx.send(job("b", "p", "q")).await.unwrap();
        let first = within_5s(&intake, 8, 0).await.unwrap();
        assert_eq!(keys(&first), ["a", "b"]);
        tx.send(job("c", "r", "s")).await.unwrap();
        let mut jobs = first.jobs.into_iter();
        let (a, b) = (jobs.next().unwrap(), jobs.next().unwrap());
        drop(b);
        intake.put_back(vec![a]);
        // c is free; a waits while its batch holds x and y
        let second = within_5s(&intake, 8, 0).await.unwrap();
        assert_eq!(keys(&second), ["c"]);
        intake.release(&first.accounts);
        tx.send(job("d", "t", "w")).await.unwrap();
        let third = within_5s(&intake, 8, 0).await.unwrap();
        assert_eq!(keys(&third), ["a", "d"], "put back ahead of newer payments");
        assert_eq!(third.jobs[0].deferrals, 1);
        assert_eq!(third.jobs[1].deferrals, 0);
    }

    #[tokio::test]
    async fn a_window_lingers_for_more_payments() {
        let (tx, rx) = mpsc::channel(16);
        let intake = Intake::new(rx);
        tx.send(job("a", "x", "y")).await.unwrap();
        let late = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            tx.send(job("b", "p", "q")).await.unwrap();
            tx
        });
        let taken = within_5s(&intake, 8, 300_000).await.unwrap();
        assert_eq!(keys(&taken), ["a", "b"], "b came within the window");
        drop(late.await.unwrap());
        assert!(within_5s(&intake, 8, 0).await.is_none());
    }
}
