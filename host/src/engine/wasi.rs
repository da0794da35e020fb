//! The virtual, deterministic WASI world a plugin built with Rust std
//! (`wasm32-wasip2`) sees: no filesystem, network, environment or arguments;
//! a wall clock frozen at the payment's host-supplied time; a monotonic clock
//! frozen at zero; randomness seeded from the call's input digest; stdout and
//! stderr captured into the call's log buffer with a size cap.

use bytes::Bytes;
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder};

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
