//! The virtual, deterministic WASI world a plugin built with Rust std
//! (`wasm32-wasip2`) sees: no filesystem, network, environment or arguments;
//! a wall clock frozen at the payment's host-supplied time; a monotonic clock
//! frozen at zero; randomness seeded from the call's input digest; stdout and
//! stderr captured into the call's log buffer with a size cap.
//!
//! No import waits. wasmtime-wasi's own clock subscriptions sleep on the
//! real clock and its `poll`/`block` wait inside host code, where epoch
//! interruption cannot reach: a guest's `sleep(3600 s)` would hold the call
//! (and its pipeline slot, transaction and locks) for an hour. So
//! [`add_to_linker`] replaces them: a subscription is ready at once (the
//! guest's virtual time does not pass, its clocks stay frozen), and a
//! pollable that is not ready after a few polls traps with [`WouldBlock`]
//! instead of waiting. docs/sandbox.md lists every linked interface.

use bytes::Bytes;
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::bindings::clocks::monotonic_clock;
use wasmtime_wasi::p2::bindings::io::poll as async_poll;
use wasmtime_wasi::p2::bindings::sync::io::poll as sync_poll;
use wasmtime_wasi::p2::{DynPollable, OutputStream, Pollable, StreamError};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder, WasiView};

/// Host resources (pollables, streams, ...) one call may hold at once: a
/// guest that leaks them (subscribes in a loop and never drops) traps
/// with [`PluginFault::ResourceLimit`](super::PluginFault) instead of
/// growing host memory for as long as its fuel lasts. Rust std and
/// componentize-py guests hold a handful.
pub const MAX_HOST_RESOURCES: usize = 1024;

/// How many times a pollable's readiness is polled before the guest is
/// told it would block: enough for futures that yield once or twice
/// before they are ready (nothing a plugin can reach waits on anything).
const POLL_TRIES: usize = 8;

/// The trap of a guest that waited on something that is not ready at once
/// (nothing a plugin can reach ever becomes ready later: no network, no
/// files, stdin closed, clocks virtual).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the plugin waited on a pollable that is not ready; plugins cannot block")]
pub struct WouldBlock;

/// Log lines captured during one plugin call, with a byte cap: what does not
/// fit is counted and dropped, never an error for the guest.
#[derive(Debug, Default)]
pub struct LogBuffer {
    pub text: String,
    pub dropped_bytes: usize,
    pub max_bytes: usize,
}

impl LogBuffer {
    /// Appends as much of `s` as fits under the cap (on a char boundary).
    pub fn push(&mut self, s: &str) {
        let room = self.max_bytes.saturating_sub(self.text.len());
        if s.len() <= room {
            self.text.push_str(s);
            return;
        }
        let mut cut = room;
        while cut > 0 && !s.is_char_boundary(cut) {
            cut -= 1;
        }
        self.text.push_str(&s[..cut]);
        self.dropped_bytes += s.len() - cut;
    }
}

/// Shared handle to a call's log buffer (the store and the WASI streams both
/// write to it).
pub type SharedLog = Arc<Mutex<LogBuffer>>;

/// A WASI output stream appending to the call's [`LogBuffer`].
#[derive(Clone)]
struct CapturedOutput {
    log: SharedLog,
}

#[async_trait::async_trait]
impl OutputStream for CapturedOutput {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        let text = String::from_utf8_lossy(&bytes);
        self.log.lock().expect("log buffer lock").push(&text);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }
    fn check_write(&mut self) -> Result<usize, StreamError> {
        // Always accept: the buffer truncates, so a chatty guest never blocks
        // or traps because of its own logging.
        Ok(64 * 1024)
    }
}

#[async_trait::async_trait]
impl Pollable for CapturedOutput {
    async fn ready(&mut self) {}
}

impl IsTerminal for CapturedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CapturedOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        // Only WASIp3 guests use this path; payrail does not link WASIp3.
        Box::new(tokio::io::sink())
    }
}

struct FrozenWallClock {
    since_epoch: Duration,
}

impl HostWallClock for FrozenWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_millis(1)
    }
    fn now(&self) -> Duration {
        self.since_epoch
    }
}

/// The guest's monotonic clock: frozen at zero, so a sleep takes no time.
struct FrozenMonotonicClock;

impl HostMonotonicClock for FrozenMonotonicClock {
    fn resolution(&self) -> u64 {
        1
    }
    fn now(&self) -> u64 {
        0
    }
}

/// Builds the WASI context for one call. `seed` comes from the input digest,
/// so the same input sees the same "random" bytes. Cost: a few microseconds.
pub fn deterministic_ctx(now_ms: u64, seed: [u8; 32], log: &SharedLog) -> WasiCtx {
    let out = CapturedOutput { log: log.clone() };
    let mut builder = WasiCtxBuilder::new();
    builder
        .stdout(out.clone())
        .stderr(out)
        .wall_clock(FrozenWallClock {
            since_epoch: Duration::from_millis(now_ms),
        })
        .monotonic_clock(FrozenMonotonicClock)
        // closed, so a read returns end-of-stream at once
        .stdin(tokio::io::empty())
        .secure_random(StdRng::from_seed(seed))
        .insecure_random(StdRng::from_seed(seed))
        .insecure_random_seed(u128::from_le_bytes(
            seed[..16].try_into().expect("16 bytes"),
        ))
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .max_random_size(64 * 1024);
    builder.build()
}

/// A pollable that is always ready: what a clock subscription is under
/// virtual time.
struct ReadyNow;

#[async_trait::async_trait]
impl Pollable for ReadyNow {
    async fn ready(&mut self) {}
}

/// Polls `fut` a few times without waiting (no real time passes): its
/// output, or [`WouldBlock`]. Runs in wasmtime-wasi's ambient tokio runtime
/// so a future that needs one finds it.
fn without_waiting<F: Future>(fut: F) -> wasmtime::Result<F::Output> {
    wasmtime_wasi::runtime::with_ambient_tokio_runtime(|| {
        let mut fut = std::pin::pin!(fut);
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..POLL_TRIES {
            if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
                return Ok(v);
            }
        }
        Err(WouldBlock.into())
    })
}

/// The call's resource table, seen by the replaced clock and poll imports.
pub struct NoWait<'a>(&'a mut ResourceTable);

/// [`HasData`] marker of [`NoWait`].
struct NoWaitData;

impl HasData for NoWaitData {
    type Data<'a> = NoWait<'a>;
}

impl monotonic_clock::Host for NoWait<'_> {
    fn now(&mut self) -> wasmtime::Result<u64> {
        Ok(FrozenMonotonicClock.now())
    }

    fn resolution(&mut self) -> wasmtime::Result<u64> {
        Ok(FrozenMonotonicClock.resolution())
    }

    fn subscribe_instant(&mut self, _when: u64) -> wasmtime::Result<Resource<DynPollable>> {
        let ready = self.0.push(ReadyNow)?;
        wasmtime_wasi::p2::subscribe(self.0, ready)
    }

    fn subscribe_duration(&mut self, _duration: u64) -> wasmtime::Result<Resource<DynPollable>> {
        let ready = self.0.push(ReadyNow)?;
        wasmtime_wasi::p2::subscribe(self.0, ready)
    }
}

impl sync_poll::Host for NoWait<'_> {
    fn poll(&mut self, pollables: Vec<Resource<DynPollable>>) -> wasmtime::Result<Vec<u32>> {
        without_waiting(async_poll::Host::poll(self.0, pollables))?
    }
}

impl sync_poll::HostPollable for NoWait<'_> {
    fn ready(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<bool> {
        without_waiting(async_poll::HostPollable::ready(self.0, pollable))?
    }

    fn block(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        without_waiting(async_poll::HostPollable::block(self.0, pollable))?
    }

    fn drop(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        async_poll::HostPollable::drop(self.0, pollable)
    }
}

/// Links WASI 0.2 (every interface of `wasi:cli/command`, so Rust std and
/// componentize-py guests instantiate) with the clock subscriptions and
/// `wasi:io/poll` replaced by the non-waiting versions above.
pub fn add_to_linker<T: WasiView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_sync(linker)?;
    linker.allow_shadowing(true);
    monotonic_clock::add_to_linker::<T, NoWaitData>(linker, |t| NoWait(t.ctx().table))?;
    sync_poll::add_to_linker::<T, NoWaitData>(linker, |t| NoWait(t.ctx().table))?;
    linker.allow_shadowing(false);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_is_a_would_block_trap_never_a_wait() {
        let started = std::time::Instant::now();
        let err = without_waiting(std::future::pending::<()>()).unwrap_err();
        assert!(err.downcast_ref::<WouldBlock>().is_some(), "{err:#}");
        // a real-time sleep (what wasmtime-wasi's own subscriptions were),
        // made inside the ambient runtime
        let err = without_waiting(async { tokio::time::sleep(Duration::from_secs(3600)).await })
            .unwrap_err();
        assert!(err.downcast_ref::<WouldBlock>().is_some(), "{err:#}");
        assert!(started.elapsed() < Duration::from_secs(1));
        // a future that yields once before it is ready still completes
        assert_eq!(
            without_waiting(async {
                tokio::task::yield_now().await;
                7
            })
            .unwrap(),
            7
        );
    }
}
