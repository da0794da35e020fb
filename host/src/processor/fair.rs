//! Each tenant's share of the connection pool (docs/tenancy.md).
//!
//! A payment transaction holds its connection while its plugins run, up to
//! their timeouts (seconds, if a tenant's admin raised them). Without a
//! bound per tenant, one tenant's slow plugins take every pooled connection
//! and everyone else's payments wait for them. So every payment or batch
//! transaction first takes one of its tenant's `per_tenant` permits, then a
//! connection; a tenant at its bound waits for its own transactions, never
//! for another tenant's. A caller that goes away while waiting leaves
//! without touching the database and is counted as skipped.
//!
//! [`CpuShares`] bounds each tenant's plugin pipelines running at once: a
//! plugin looping until its timeout burns a core, so a tenant whose calls
//! run slow gets at most `tenants.max_running_pipelines` cores, at a low
//! priority, and the others keep the rest; a tenant whose calls stay short
//! is not held back.

use super::plugin_threads::PluginThreads;
use crate::db::Pool;
use crate::error::Result;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Most tenants tracked at once; past it, idle tenants' entries are
/// dropped (an entry is recreated, full, at the tenant's next payment).
pub const MAX_TRACKED_TENANTS: usize = 100_000;

/// The connection permits of every tenant. Cost: one map lookup under a
/// mutex per transaction.
pub(crate) struct TenantGates {
    per_tenant: usize,
    gates: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// A pooled connection taken on a tenant's behalf; the permit goes back
/// with it.
pub(crate) struct TenantConnection {
    pub(crate) client: deadpool_postgres::Client,
    _permit: OwnedSemaphorePermit,
}

impl TenantConnection {
    /// After a failed transaction: closes the connection instead of
    /// returning it to the pool when the server behind it can no longer
    /// take payments. A primary demoted in a failover may keep its sessions
    /// and answer them read-only (SQLSTATE 25006); the pool would hand them
    /// out again, and `target_session_attrs=read-write` only applies to new
    /// connections, which then find the new primary.
    pub(crate) fn discard_if_read_only(self, e: &crate::Error) {
        if e.sqlstate() == Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION) {
            tracing::warn!("a pooled connection answers read-only (a demoted primary?): closed");
            drop(deadpool_postgres::Object::take(self.client));
        }
    }
}

/// Counts a wait as skipped unless it completed (the caller's future was
/// dropped while waiting: its request timed out or the client went away).
struct Waiting<'a> {
    skipped: &'a AtomicU64,
    done: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.skipped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl TenantGates {
    /// At most `per_tenant` (at least 1) connections per tenant.
    pub(crate) fn new(per_tenant: usize) -> TenantGates {
        TenantGates {
            per_tenant: per_tenant.max(1),
            gates: Mutex::new(HashMap::new()),
        }
    }

    fn gate(&self, tenant: &str) -> Arc<Semaphore> {
        let full = self.per_tenant;
        entry(
            &self.gates,
            tenant,
            || Semaphore::new(full),
            |g| g.available_permits() < full,
        )
    }

    /// Waits for one of `tenant`'s permits.
    pub(crate) async fn permit(&self, tenant: &str) -> OwnedSemaphorePermit {
        self.gate(tenant)
            .acquire_owned()
            .await
            .expect("tenant gates are never closed")
    }

    /// Waits for one of `tenant`'s permits, then a connection from `pool`.
    /// Dropped while waiting: counted in `skipped`.
    pub(crate) async fn connection(
        &self,
        pool: &Pool,
        tenant: &str,
        skipped: &AtomicU64,
    ) -> Result<TenantConnection> {
        let mut waiting = Waiting {
            skipped,
            done: false,
        };
        let permit = self.permit(tenant).await;
        let client = pool.get().await;
        waiting.done = true;
        Ok(TenantConnection {
            client: client?,
            _permit: permit,
        })
    }
}

/// `tenant`'s entry of `map`, made on first use. At
/// [`MAX_TRACKED_TENANTS`] entries, those not `busy` are dropped first (an
/// entry is recreated, fresh, at its tenant's next payment).
fn entry<E>(
    map: &Mutex<HashMap<String, Arc<E>>>,
    tenant: &str,
    make: impl FnOnce() -> E,
    busy: impl Fn(&E) -> bool,
) -> Arc<E> {
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(e) = map.get(tenant) {
        return e.clone();
    }
    if map.len() >= MAX_TRACKED_TENANTS {
        map.retain(|_, e| busy(e));
    }
    let e = Arc::new(make());
    map.insert(tenant.to_string(), e.clone());
    e
}

/// Default nice value a slow plugin call drops to (0 normal, 19 lowest;
/// `tenants.plugin_thread_nice`; see `engine::SlowCalls`).
///
/// A plugin looping until its timeout competes for the cores with
/// everything else of the host: the async workers answering other tenants,
/// and Postgres. At nice 10 (a tenth of a normal thread's CPU share under
/// contention) such a loop yields most of its core to them. Measured
/// (docs/tenancy.md): at nice 5 a bystander's median under another
/// tenant's looping plugins was about twice its median alone; at 10, about
/// the same as alone.
pub const PLUGIN_THREAD_NICE: i32 = 10;

/// How long a tenant whose plugin call ran slow stays at its strict share
/// of the cores (`tenants.max_running_pipelines`); each slow call restarts
/// the period.
pub const DEMOTED_FOR_MS: u64 = 60_000;

/// Each tenant's share of the cores for plugin pipelines.
///
/// Work-conserving: a tenant whose calls stay short may run as many
/// pipelines at once as there are cores (`fast`), so a host serving one
/// tenant runs at full speed. A call that runs slow drops its thread's
/// priority at once (`engine::SlowCalls`) and demotes its tenant for
/// [`DEMOTED_FOR_MS`] to `demoted` pipelines at once. Every pipeline also
/// takes one of the engine's instance slots (`slots`), shared by all.
pub(crate) struct CpuShares {
    fast: usize,
    demoted: usize,
    slots: Arc<Semaphore>,
    threads: PluginThreads,
    started: Instant,
    shares: Mutex<HashMap<String, Arc<Share>>>,
}

struct Share {
    fast: Arc<Semaphore>,
    demoted: Arc<Semaphore>,
    /// `CpuShares::started`-relative ms; 0: never demoted.
    demoted_until_ms: AtomicU64,
}

impl CpuShares {
    /// `demoted` pipelines at once for a demoted tenant (at least 1), as
    /// many as the cores (and at least `demoted`) for the others; `slots`
    /// for all tenants together.
    pub(crate) fn new(demoted: usize, slots: usize) -> CpuShares {
        let demoted = demoted.max(1);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        CpuShares {
            fast: cores.max(demoted),
            demoted,
            slots: Arc::new(Semaphore::new(slots.max(1))),
            threads: PluginThreads::new(),
            started: Instant::now(),
            shares: Mutex::new(HashMap::new()),
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn share(&self, tenant: &str) -> Arc<Share> {
        let (fast, demoted, now) = (self.fast, self.demoted, self.now_ms());
        let make = || Share {
            fast: Arc::new(Semaphore::new(fast)),
            demoted: Arc::new(Semaphore::new(demoted)),
            demoted_until_ms: AtomicU64::new(0),
        };
        let busy = |s: &Share| {
            s.fast.available_permits() < fast
                || s.demoted.available_permits() < demoted
                || s.demoted_until_ms.load(Ordering::Relaxed) > now
        };
        entry(&self.shares, tenant, make, busy)
    }

    /// Runs `f` (a pipeline, or a batch's pipelines) on a plugin thread
    /// within `tenant`'s share; a call in it that turns slow demotes the
    /// tenant at that moment.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        tenant: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T> {
        let share = self.share(tenant);
        let permit = self.permit(&share).await;
        let slot = self.slots.clone().acquire_owned().await;
        let held = (permit, slot.expect("the slots are never closed"));
        let started = self.started;
        let out = self
            .threads
            .run(move || {
                let _held = held;
                let demote = move || share.demote(started);
                crate::engine::on_slow_call(demote, f)
            })
            .await?;
        Ok(out)
    }

    /// One of the share's permits: a fast one unless the tenant is
    /// demoted, checked again once a fast one is granted (the tenant may
    /// have been demoted while this waited).
    async fn permit(&self, share: &Share) -> OwnedSemaphorePermit {
        let demoted = |s: &Share| s.demoted_until_ms.load(Ordering::Relaxed) > self.now_ms();
        if !demoted(share) {
            let fast = share.fast.clone().acquire_owned().await;
            let fast = fast.expect("tenant gates are never closed");
            if !demoted(share) {
                return fast;
            }
        }
        let permit = share.demoted.clone().acquire_owned().await;
        permit.expect("tenant gates are never closed")
    }
}

impl Share {
    fn demote(&self, started: Instant) {
        let until = started.elapsed().as_millis() as u64 + DEMOTED_FOR_MS;
        self.demoted_until_ms.fetch_max(until, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_slow_call_demotes_its_tenant_at_once_and_only_its_tenant() {
        let cpu = CpuShares::new(1, 8);
        let demoted =
            |t: &str| cpu.share(t).demoted_until_ms.load(Ordering::Relaxed) > cpu.now_ms();
        cpu.run("fast", || ()).await.unwrap();
        assert!(!demoted("fast"), "a short job demotes nobody");
        let (tx, rx) = std::sync::mpsc::channel();
        cpu.run("slow", move || {
            crate::engine::lower_this_thread(1);
            // the tenant is demoted when the call turns slow, not when it ends
            tx.send(()).unwrap();
        })
        .await
        .unwrap();
        rx.recv().unwrap();
        assert!(demoted("slow"), "a slow call demotes its tenant");
        assert!(!demoted("fast"), "and no other");
        let slow = cpu.share("slow");
        let held = cpu.permit(&slow).await;
        assert_eq!(slow.demoted.available_permits(), 0, "from the demoted gate");
        assert_eq!(slow.fast.available_permits(), cpu.fast, "not the fast one");
        drop(held);
    }

    #[tokio::test]
    async fn a_tenant_waits_for_its_own_permits_only() {
        let gates = TenantGates::new(2);
        let a = gates.gate("a");
        let held: Vec<_> = (0..2)
            .map(|_| a.clone().try_acquire_owned().unwrap())
            .collect();
        assert!(a.clone().try_acquire_owned().is_err(), "a is at its bound");
        assert!(gates.gate("b").try_acquire_owned().is_ok(), "b is not");
        drop(held);
        assert_eq!(gates.gate("a").available_permits(), 2);
    }
}
