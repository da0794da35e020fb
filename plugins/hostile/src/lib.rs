//! A deliberately misbehaving rule plugin, for the host's sandboxing tests
//! only. Never deploy it.
//!
//! The behaviour is chosen by the step config `{"mode": "..."}`:
//!
//! | mode | behaviour |
//! |---|---|
//! | `approve` | approves with no postings |
//! | `decline` | declines with code `hostile_decline` |
//! | `trap` | panics (the component traps) |
//! | `loop` | loops forever (fuel / epoch interruption must stop it) |
//! | `memory` | allocates and touches memory until allocation fails |
//! | `recursion` | recurses without bound (stack overflow) |
//! | `output` | approves with a 4 MiB annotation `big` |
//! | `unbalanced` | postings `[source -1]` |
//! | `unknown_account` | postings `[source -1, "no-such-account" +1]` |
//! | `overflow` | postings `[destination +MAX, source -MAX]` twice (sums overflow `i64`) |
//! | `wasi` | tries fs, env, clock and network through std; approves with annotations `fs`, `env`, `clock`, `net` = `ok:...` / `err:...` |
//! | `log` | logs 1000 info lines of 100 bytes, then approves |
//! | `sleep` | `std::thread::sleep(3600 s)`, then approves with annotation `slept` |
//! | `sleep_loop` | sleeps 1 s at a time, forever |
//! | `poll_many` | subscribes to 1 h timers without dropping them, polling them all every 64, forever |
//! | `stdin` | blocking read of up to 1 MiB from stdin; approves with annotation `stdin` = bytes read or `err:...` |
//! | `events_flood` | approves with 200 events `flood.<n>` |
//! | `spoof_topic` | approves with events `payment.approved` and `hold.expire` (the host's topics) |
//!
//! Any other mode fails with plugin error `invalid_config`.

use std::hint::black_box;

use payrail_plugin::{Decision, Input, PluginError, Rule, approve, config, decline, log};
use serde::Deserialize;

/// The hostile rule (exported as the component's `evaluate`).
pub struct Hostile;

/// What the hostile plugin does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Approve, no postings.
    Approve,
    /// Panic.
    Trap,
    /// Infinite loop.
    Loop,
    /// Exhaust memory.
    Memory,
    /// Unbounded recursion.
    Recursion,
    /// 4 MiB annotation.
    Output,
    /// Postings that do not sum to zero.
    Unbalanced,
    /// Posting to an account that does not exist.
    UnknownAccount,
    /// Postings whose sums overflow i64.
    Overflow,
    /// Try WASI capabilities through std.
    Wasi,
    /// Log a lot.
    Log,
    /// Decline with `hostile_decline`.
    Decline,
    /// Sleep an hour, then approve.
    Sleep,
    /// Sleep forever, a second at a time.
    SleepLoop,
    /// Leak timer pollables and poll them, forever.
    PollMany,
    /// Block reading stdin.
    Stdin,
    /// 200 events.
    EventsFlood,
    /// Events on the host's topics.
    SpoofTopic,
}

/// Step config of the hostile plugin.
#[derive(Debug, Deserialize)]
pub struct HostileConfig {
    /// The behaviour.
    pub mode: Mode,
}

/// Recursion that keeps its state in wasm locals only (no address-taken
/// locals, so nothing on Rust's linear-memory shadow stack): it exhausts the
/// host's wasm stack cap, which is what this mode tests.
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    if black_box(depth) == u64::MAX {
        return 0;
    }
    recurse(depth + 1).wrapping_mul(3).wrapping_add(depth)
}

fn describe<T, E: std::fmt::Display>(r: Result<T, E>, ok: impl FnOnce(T) -> String) -> String {
    match r {
        Ok(v) => format!("ok:{}", ok(v)),
        Err(e) => format!("err:{e}"),
    }
}

/// Timers of an hour each, never dropped, all polled every 64 new ones:
/// what a guest leaking host resources and waiting on them looks like.
fn poll_many() -> Decision {
    use wasip2::clocks::monotonic_clock::subscribe_duration;
    let mut timers = Vec::new();
    loop {
        timers.push(subscribe_duration(3_600_000_000_000));
        if timers.len() % 64 == 0 {
            let all: Vec<&wasip2::io::poll::Pollable> = timers.iter().collect();
            black_box(wasip2::io::poll::poll(&all));
        }
    }
}

fn read_stdin() -> Decision {
    let stdin = wasip2::cli::stdin::get_stdin();
    let got = match stdin.blocking_read(1 << 20) {
        Ok(b) => format!("ok:{} bytes", b.len()),
        Err(e) => format!("err:{e:?}"),
    };
    approve().annotation("stdin", got).into()
}

fn events(topics: impl IntoIterator<Item = String>) -> Decision {
    let mut a = approve();
    for t in topics {
        a = a.event(t, r#"{"hostile":true}"#);
    }
    a.into()
}

fn probe_wasi() -> Decision {
    let fs = describe(std::fs::read("/etc/passwd"), |b| {
        format!("{} bytes", b.len())
    });
    let env = describe(std::env::var("HOME"), |v| v);
    let clock = describe(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH),
        |d| d.as_millis().to_string(),
    );
    let net = describe(std::net::TcpStream::connect("127.0.0.1:5432"), |_| {
        "connected".to_string()
    });
    approve()
        .annotation("fs", fs)
        .annotation("env", env)
        .annotation("clock", clock)
        .annotation("net", net)
        .into()
}

impl Rule for Hostile {
    fn evaluate(input: Input) -> Result<Decision, PluginError> {
        let cfg: HostileConfig = config(&input)?;
        let p = &input.payment;
        let cur = p.currency.as_str();
        Ok(match cfg.mode {
            Mode::Approve => approve().into(),
            Mode::Decline => decline("hostile_decline", "the hostile plugin declines"),
            Mode::Trap => panic!("hostile plugin: trap mode"),
            Mode::Loop => {
                let mut i = 0u64;
                loop {
                    i = black_box(i).wrapping_add(1);
                }
            }
            Mode::Memory => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    // 1 MiB of non-zero bytes so every page is written.
                    let chunk = vec![0xA5u8; 1 << 20];
                    hoard.push(black_box(chunk));
                    black_box(&hoard);
                }
            }
            Mode::Recursion => {
                let r = recurse(black_box(0));
                approve().annotation("depth", r.to_string()).into()
            }
            Mode::Output => approve().annotation("big", "x".repeat(4 << 20)).into(),
            Mode::Unbalanced => approve().posting(&p.source, -1, cur).into(),
            Mode::UnknownAccount => approve()
                .posting(&p.source, -1, cur)
                .posting("no-such-account", 1, cur)
                .into(),
            Mode::Overflow => approve()
                .posting(&p.destination, i64::MAX, cur)
                .posting(&p.source, -i64::MAX, cur)
                .posting(&p.destination, i64::MAX, cur)
                .posting(&p.source, -i64::MAX, cur)
                .into(),
            Mode::Wasi => probe_wasi(),
            Mode::Sleep => {
                std::thread::sleep(std::time::Duration::from_secs(3600));
                approve().annotation("slept", "3600s").into()
            }
            Mode::SleepLoop => loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
            },
            Mode::PollMany => poll_many(),
            Mode::Stdin => read_stdin(),
            Mode::EventsFlood => events((0..200).map(|i| format!("flood.{i}"))),
            Mode::SpoofTopic => events(["payment.approved".into(), "hold.expire".into()]),
            Mode::Log => {
                for i in 0..1000 {
                    let mut line = format!("hostile log line {i:04} ");
                    while line.len() < 100 {
                        line.push('.');
                    }
                    log::info(&line);
                }
                approve().into()
            }
        })
    }
}

payrail_plugin::export_rule!(Hostile);

#[cfg(test)]
mod tests {
    use super::*;
    use payrail_plugin::{InputBuilder, postings_by_account};

    fn run(cfg: &str) -> Result<Decision, PluginError> {
        Hostile::evaluate(InputBuilder::new().config(cfg).build())
    }

    #[test]
    fn benign_modes() {
        assert_eq!(run(r#"{"mode":"approve"}"#).unwrap(), approve().into());
        let Decision::Decline(d) = run(r#"{"mode":"decline"}"#).unwrap() else {
            panic!()
        };
        assert_eq!(d.code, "hostile_decline");
        let d = run(r#"{"mode":"unbalanced"}"#).unwrap();
        assert_eq!(postings_by_account(&d)["alice"], -1);
        let d = run(r#"{"mode":"unknown_account"}"#).unwrap();
        assert_eq!(postings_by_account(&d)["no-such-account"], 1);
        let Decision::Approve(a) = run(r#"{"mode":"overflow"}"#).unwrap() else {
            panic!()
        };
        assert_eq!(a.postings.len(), 4);
        let Decision::Approve(a) = run(r#"{"mode":"output"}"#).unwrap() else {
            panic!()
        };
        assert_eq!(a.annotations[0].value.len(), 4 << 20);
    }

    #[test]
    fn unknown_mode_is_invalid_config() {
        assert_eq!(
            run(r#"{"mode":"nope"}"#).unwrap_err().code,
            "invalid_config"
        );
        assert_eq!(run("{}").unwrap_err().code, "invalid_config");
    }
}
