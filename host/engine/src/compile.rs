//! Bounds on compiling plugins: at most `max_concurrent_compiles` run at
//! once, and a deploy or load waits at most `compile_timeout_ms` for its
//! compile, slot wait included. (One compile still spreads its functions
//! over wasmtime's parallel-compilation pool: single-threaded, the 18 MB
//! Python sample did not compile within 60 s on a busy machine, against
//! ~18 s.)
//!
//! A cranelift compile cannot be interrupted, so a compile that outlives
//! its caller's deadline keeps its slot until it ends (its result is then
//! dropped): the slots, not the deadline, bound the CPU compiles take.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The compile slots of one engine.
pub(crate) struct CompileGate {
    max: usize,
    /// Compiles running and callers waiting for a slot.
    state: Mutex<(usize, usize)>,
    freed: Condvar,
    /// Most compiles ever seen running at once.
    peak: AtomicUsize,
    /// Compiles started.
    started: AtomicU64,
}

/// A held compile slot; released on drop.
pub(crate) struct Slot(Arc<CompileGate>);

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.0.state.lock().expect("compile gate lock");
        s.0 -= 1;
        drop(s);
        self.0.freed.notify_one();
    }
}

/// Compile counters, for tests and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompileStats {
    /// Compiles started since the engine was created.
    pub started: u64,
    /// Most compiles that ever ran at once.
    pub peak_concurrent: usize,
    /// Compiles running now.
    pub running: usize,
}

impl CompileGate {
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(CompileGate {
            max: max.max(1),
            state: Mutex::new((0, 0)),
            freed: Condvar::new(),
            peak: AtomicUsize::new(0),
            started: AtomicU64::new(0),
        })
    }

    /// A slot, waiting until `deadline` at most; on expiry, the number of
    /// compiles running and waiting (for the error message).
    pub(crate) fn acquire(self: &Arc<Self>, deadline: Instant) -> Result<Slot, usize> {
        let mut s = self.state.lock().expect("compile gate lock");
        s.1 += 1;
        while s.0 >= self.max {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                s.1 -= 1;
                return Err(s.0 + s.1);
            }
            s = self
                .freed
                .wait_timeout(s, left)
                .expect("compile gate lock")
                .0;
        }
        s.1 -= 1;
        s.0 += 1;
        self.peak.fetch_max(s.0, Ordering::Relaxed);
        self.started.fetch_add(1, Ordering::Relaxed);
        Ok(Slot(self.clone()))
    }

    /// Compiles running and waiting now.
    pub(crate) fn busy(&self) -> usize {
        let s = self.state.lock().expect("compile gate lock");
        s.0 + s.1
    }

    pub(crate) fn stats(&self) -> CompileStats {
        CompileStats {
            started: self.started.load(Ordering::Relaxed),
            peak_concurrent: self.peak.load(Ordering::Relaxed),
            running: self.state.lock().expect("compile gate lock").0,
        }
    }
}

/// Runs `compile` on its own thread holding `slot`, and waits for it until
/// `deadline`: its result, or `None` if the deadline passed first (the
/// thread finishes on its own and then frees the slot).
pub(crate) fn run_bounded<T: Send + 'static>(
    slot: Slot,
    deadline: Instant,
    compile: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let spawned = std::thread::Builder::new()
        .name("payrail-compile".into())
        .spawn(move || {
            let out = compile();
            drop(slot);
            let _ = tx.send(out);
        });
    if spawned.is_err() {
        return None;
    }
    let left = deadline.saturating_duration_since(Instant::now());
    rx.recv_timeout(left.max(Duration::from_millis(1))).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_bound_concurrency_and_waits_time_out() {
        let gate = CompileGate::new(2);
        let far = Instant::now() + Duration::from_secs(5);
        let a = gate.acquire(far).unwrap();
        let _b = gate.acquire(far).unwrap();
        let soon = Instant::now() + Duration::from_millis(30);
        assert_eq!(gate.acquire(soon).err(), Some(2), "both slots busy");
        drop(a);
        let _c = gate.acquire(far).expect("a freed slot is handed on");
        let s = gate.stats();
        assert_eq!((s.started, s.peak_concurrent, s.running), (3, 2, 2));
    }

    #[test]
    fn a_compile_past_its_deadline_keeps_its_slot() {
        let gate = CompileGate::new(1);
        let slot = gate
            .acquire(Instant::now() + Duration::from_secs(1))
            .unwrap();
        let out = run_bounded(slot, Instant::now() + Duration::from_millis(20), || {
            std::thread::sleep(Duration::from_millis(200));
            1
        });
        assert_eq!(out, None, "the caller stops waiting at its deadline");
        assert_eq!(
            gate.stats().running,
            1,
            "the slot is held until the compile ends"
        );
        let slot = gate
            .acquire(Instant::now() + Duration::from_secs(5))
            .expect("freed when the compile ends");
        drop(slot);
        assert_eq!(gate.stats().running, 0);
    }
}
