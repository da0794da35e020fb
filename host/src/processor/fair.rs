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
//! The same gates bound each tenant's plugin pipelines running at once
//! (`tenants.max_running_pipelines`): a plugin looping until its timeout
//! burns a core, so a tenant gets at most that many cores, whatever its
//! limits, and the others keep the rest.

use crate::db::Pool;
use crate::error::Result;
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
        let mut gates = self.gates.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(g) = gates.get(tenant) {
            return g.clone();
        }
        if gates.len() >= MAX_TRACKED_TENANTS {
            let full = self.per_tenant;
            gates.retain(|_, g| g.available_permits() < full);
        }
        let g = Arc::new(Semaphore::new(self.per_tenant));
        gates.insert(tenant.to_string(), g.clone());
        g
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

/// Default nice value of the threads that run plugins (0 normal, 19
/// lowest; `tenants.plugin_thread_nice`).
///
/// A plugin looping until its timeout competes for the cores with
/// everything else of the host: the async workers answering other tenants,
/// and Postgres. At nice 10 (a tenth of a normal thread's CPU share under
/// contention) such a loop yields most of its core to them, while a short
/// plugin call, which sleeps between calls, is still scheduled at once.
/// Measured (docs/tenancy.md): at nice 5 a bystander's median under another
/// tenant's looping plugins was about twice its median alone; at 10, about
/// the same as alone.
pub const PLUGIN_THREAD_NICE: i32 = 10;

thread_local! {
    static NICED: Cell<bool> = const { Cell::new(false) };
}

/// Lowers the calling thread's priority to `nice` (0: left as it is), once
/// per thread (raising it back would need privileges, so a blocking-pool
/// thread that ran plugins stays at that priority; what else runs on the
/// blocking pool is plugin compilation and start-up work). Linux only;
/// elsewhere, and if refused, a no-op.
pub(crate) fn lower_thread_priority(nice: i32) {
    NICED.with(|done| {
        if nice <= 0 || done.replace(true) {
            return;
        }
        #[cfg(target_os = "linux")]
        if let Err(e) =
            rustix::process::setpriority_process(Some(rustix::thread::gettid()), nice.min(19))
        {
            tracing::debug!(error = %e, "cannot lower the plugin thread's priority");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

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
