//! The commit of a payment transaction, bounded for the client.
//!
//! A commit on a primary that waits for a synchronous standby which is gone
//! does not return until the standby (or a failover manager) comes back. It
//! cannot be cancelled safely: it has committed locally and may survive, and
//! a cancel (`pg_cancel_backend`) makes Postgres report success for a commit
//! no standby has (`canceling wait for synchronous replication`). No timer
//! cancels it: Postgres stops `statement_timeout` before it commits. So:
//!
//! - past [`ProcessorSettings::commit_wait_ms`](super::ProcessorSettings)
//!   every caller then waiting is answered `commit_unconfirmed` (503,
//!   retryable with the same idempotency key, which then returns the
//!   committed result or runs it): whether its own payment is in the stalled
//!   commit, still queued behind it or not yet started, the retry is safe.
//!   The transaction keeps waiting on its connection;
//! - while any commit is unconfirmed the processor takes no new payment
//!   (`commits_stalled`, 503), `/readyz` answers 503, the gauge
//!   `payrail_commits_unconfirmed` is non-zero and the log says whether the
//!   server is waiting for a synchronous standby. It resumes on its own when
//!   the commits return.

use crate::db::Pool;
use crate::error::{Error, Result};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Most time the probe of a stall's cause may take.
const PROBE_TIMEOUT_MS: u64 = 2_000;

/// The state of this process's commits. Cheap to share (in an `Arc`).
#[derive(Debug)]
pub(crate) struct Commits {
    wait: Duration,
    /// Commits past `wait` and not yet returned.
    unconfirmed: AtomicU64,
    /// Commits that ever went past `wait`, since start.
    stalled_total: AtomicU64,
    pool: Pool,
    /// Bumped when a stall begins: wakes every waiting caller.
    stalls: tokio::sync::watch::Sender<u64>,
}

impl Commits {
    pub(crate) fn new(pool: Pool, wait_ms: u64) -> Commits {
        assert!(
            wait_ms > 0,
            "the commit wait is checked by the configuration"
        );
        Commits {
            wait: Duration::from_millis(wait_ms),
            unconfirmed: AtomicU64::new(0),
            stalled_total: AtomicU64::new(0),
            pool,
            stalls: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Commits now waiting past the bound (the gauge).
    pub(crate) fn unconfirmed(&self) -> u64 {
        self.unconfirmed.load(Ordering::Relaxed)
    }

    /// Commits that went past the bound since start (the counter).
    pub(crate) fn stalled_total(&self) -> u64 {
        self.stalled_total.load(Ordering::Relaxed)
    }

    /// `Err(CommitsStalled)` while a commit is unconfirmed: a new payment
    /// would only queue behind it (and hold its locks).
    pub(crate) fn check_accepting(&self) -> Result<()> {
        match self.unconfirmed() {
            0 => Ok(()),
            n => Err(Error::CommitsStalled { unconfirmed: n }),
        }
    }

    /// Commits `tx`. Past the bound, wakes the waiting callers (see
    /// [`Self::answer`]) and keeps waiting for the server's answer.
    pub(crate) async fn commit(
        self: &Arc<Self>,
        tx: deadpool_postgres::Transaction<'_>,
    ) -> Result<()> {
        let commit = tx.commit();
        tokio::pin!(commit);
        if let Ok(done) = tokio::time::timeout(self.wait, &mut commit).await {
            return done.map_err(Error::from);
        }
        let stall = Stall::begin(self);
        let done = commit.await;
        drop(stall);
        done.map_err(Error::from)
    }

    /// `task`'s result, or `commit_unconfirmed` as soon as a commit of this
    /// process stalls; then the task is left to run to its end (its
    /// transaction may be the stalled one). Dropped before either, the
    /// task is aborted.
    pub(crate) async fn answer_task<T>(
        &self,
        task: tokio::task::JoinHandle<Result<T>>,
    ) -> Result<T> {
        let mut task = AbortOnDrop(Some(task));
        let running = task.0.as_mut().expect("set above");
        let result = self
            .answer(async {
                running
                    .await
                    .unwrap_or_else(|e| Err(Error::Setup(format!("a payment task failed: {e}"))))
            })
            .await;
        // finished, or left to end its stalled transaction: not aborted
        drop(task.0.take());
        result
    }

    /// `answer`'s result, or `commit_unconfirmed` as soon as a commit of
    /// this process stalls. `answer` must not own a transaction (dropping
    /// it must leave the work running): a reply channel, a spawned task.
    pub(crate) async fn answer<T>(
        &self,
        answer: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        let mut stalls = self.stalls.subscribe();
        tokio::select! {
            biased;
            done = answer => done,
            _ = stalls.changed() => Err(Error::CommitUnconfirmed),
        }
    }
}

/// A spawned payment that is aborted when its caller goes away (as the
/// payment would be if it ran in the caller's own future: a queued one is
/// skipped, not run), unless [`Commits::answer_task`] detached it.
struct AbortOnDrop<T>(Option<tokio::task::JoinHandle<T>>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// One commit past the bound: counted while it lasts, logged at both ends.
struct Stall {
    commits: Arc<Commits>,
    since: Instant,
}

impl Stall {
    fn begin(commits: &Arc<Commits>) -> Stall {
        commits.stalled_total.fetch_add(1, Ordering::Relaxed);
        if commits.unconfirmed.fetch_add(1, Ordering::Relaxed) == 0 {
            tokio::spawn(log_cause(commits.pool.clone(), commits.wait));
        }
        commits.stalls.send_modify(|n| *n += 1);
        Stall {
            commits: commits.clone(),
            since: Instant::now(),
        }
    }
}

impl Drop for Stall {
    fn drop(&mut self) {
        if self.commits.unconfirmed.fetch_sub(1, Ordering::Relaxed) == 1 {
            tracing::warn!(
                stalled_ms = (self.since.elapsed() + self.commits.wait).as_millis() as u64,
                "commits are confirmed again; taking new payments"
            );
        }
    }
}

/// Says why the first stalled commit waits: `SyncRep` in `pg_stat_activity`
/// is a primary waiting for a synchronous standby.
async fn log_cause(pool: Pool, wait: Duration) {
    let probe = async {
        let client = pool.get().await.map_err(Error::from)?;
        let row = client
            .query_one(
                "select count(*) from pg_stat_activity where wait_event = 'SyncRep'",
                &[],
            )
            .await?;
        Ok::<i64, Error>(row.get(0))
    };
    let wait_ms = wait.as_millis() as u64;
    match tokio::time::timeout(Duration::from_millis(PROBE_TIMEOUT_MS), probe).await {
        Ok(Ok(n)) if n > 0 => tracing::error!(
            wait_ms,
            sessions_waiting = n,
            "commit not confirmed: the server is waiting for synchronous standby; \
             not taking new payments until commits are confirmed"
        ),
        _ => tracing::error!(
            wait_ms,
            "commit not confirmed: the server has not answered; \
             not taking new payments until commits are confirmed"
        ),
    }
}
