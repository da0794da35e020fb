//! The threads that run plugin pipelines.
//!
//! Not tokio's blocking pool: a plugin call that runs past
//! `engine::SlowCalls::after_ms` lowers its thread's priority, which cannot
//! be raised back without privileges, so that thread must not go on to run
//! other tenants' fast pipelines. Here such a thread retires after its job
//! and a fresh one takes its place. Cost per job: one channel send and one
//! wake-up, as with `spawn_blocking`.

use crate::error::{Error, Result};
use crossbeam_channel::{Receiver, Sender};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A job; returns whether it left its thread at a lowered priority.
type Job = Box<dyn FnOnce(&Arc<Shared>) -> bool + Send>;

/// A growing set of threads, one per job in flight at most: a job never
/// waits behind another (callers bound the jobs in flight).
#[derive(Clone)]
pub(crate) struct PluginThreads {
    jobs: Sender<Job>,
    shared: Arc<Shared>,
}

struct Shared {
    queue: Receiver<Job>,
    /// Jobs sent and not finished.
    in_flight: AtomicUsize,
    /// Threads alive (a retiring thread leaves this count first).
    threads: AtomicUsize,
}

impl PluginThreads {
    pub(crate) fn new() -> PluginThreads {
        let (jobs, queue) = crossbeam_channel::unbounded();
        PluginThreads {
            jobs,
            shared: Arc::new(Shared {
                queue,
                in_flight: AtomicUsize::new(0),
                threads: AtomicUsize::new(0),
            }),
        }
    }

    /// Runs `f` on a plugin thread; the result arrives whether or not the
    /// caller still waits for it.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.shared.in_flight.fetch_add(1, Ordering::SeqCst);
        if let Err(e) = self.shared.spawn_missing() {
            self.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
            return Err(e);
        }
        let job: Job = Box::new(move |shared: &Arc<Shared>| {
            let out = f();
            let lowered = crate::engine::this_thread_was_lowered();
            // accounted before the caller hears of it, so its next job
            // finds this thread free
            shared.finish(lowered);
            let _ = tx.send(out);
            lowered
        });
        self.jobs
            .send(job)
            .expect("the queue lives as long as its sender");
        // A panic in `f` drops `tx`: re-raised here, as `spawn_blocking`'s
        // join would.
        Ok(rx.await.expect("a plugin job panicked"))
    }
}

impl Shared {
    /// Starts threads until there is one per job in flight.
    fn spawn_missing(self: &Arc<Self>) -> Result<()> {
        loop {
            let threads = self.threads.load(Ordering::SeqCst);
            if self.in_flight.load(Ordering::SeqCst) <= threads {
                return Ok(());
            }
            if self
                .threads
                .compare_exchange(threads, threads + 1, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
            {
                continue;
            }
            let shared = self.clone();
            let spawned = std::thread::Builder::new()
                .name("payrail-plugin".into())
                .spawn(move || shared.work());
            if let Err(e) = spawned {
                self.threads.fetch_sub(1, Ordering::SeqCst);
                if threads == 0 {
                    return Err(Error::Setup(format!("cannot start a plugin thread: {e}")));
                }
                // the running threads take the job when they are free
                tracing::warn!(error = %e, "cannot start another plugin thread");
                return Ok(());
            }
        }
    }

    fn work(self: Arc<Self>) {
        while let Ok(job) = self.queue.recv() {
            if job(&self) {
                return; // `finish` took this thread out of the count
            }
        }
    }

    /// A job ended; a thread it left at a lowered priority retires.
    fn finish(self: &Arc<Self>, lowered: bool) {
        if !lowered {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        // leave the count first, so a job sent meanwhile starts a thread
        // rather than waiting for this one
        self.threads.fetch_sub(1, Ordering::SeqCst);
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        let _ = self.spawn_missing();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thread_id() -> std::thread::ThreadId {
        std::thread::current().id()
    }

    #[tokio::test]
    async fn a_thread_left_at_a_low_priority_retires_and_the_next_job_runs_on_a_fresh_one() {
        let threads = PluginThreads::new();
        let first = threads.run(thread_id).await.unwrap();
        let again = threads.run(thread_id).await.unwrap();
        assert_eq!(first, again, "an idle thread is reused");
        let slow = threads
            .run(|| {
                crate::engine::lower_this_thread(1);
                thread_id()
            })
            .await
            .unwrap();
        let (next, lowered) = threads
            .run(|| (thread_id(), crate::engine::this_thread_was_lowered()))
            .await
            .unwrap();
        assert_ne!(next, slow, "the lowered thread retired");
        assert!(!lowered, "the next job runs at normal priority");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_never_waits_behind_another() {
        let threads = PluginThreads::new();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let busy = threads.clone();
        let blocked = tokio::spawn(async move { busy.run(move || rx.recv().ok()).await });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let t = std::time::Instant::now();
        threads.run(|| ()).await.unwrap();
        assert!(t.elapsed() < std::time::Duration::from_secs(1), "waited");
        tx.send(()).unwrap();
        assert!(blocked.await.unwrap().unwrap().is_some());
    }
}
