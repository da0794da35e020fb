//! The one retry policy of payrail's transactions (payments, batches,
//! captures and voids).
//!
//! A deadlock or a serialization failure rolls a transaction back
//! completely, so running it again is safe. Attempts are bounded
//! (`processor.max_attempts`), and the waits between them grow and are
//! jittered, so transactions that collided do not collide again in step.

use crate::error::{Error, Result};
use std::future::Future;
use std::time::Duration;
use tokio_postgres::error::SqlState;

/// Wait before the first retry, at most (jitter draws below it).
pub const FIRST_DELAY_MS: u64 = 5;
/// Longest wait between two attempts.
pub const MAX_DELAY_MS: u64 = 100;
/// Most attempts any configuration may ask for.
pub const MAX_ATTEMPTS: u32 = 100;

/// Whether `e` rolled its transaction back completely and may be retried.
/// A lost lock (`lock_lost`) is: the next attempt takes the locks again,
/// under a newer token.
pub(crate) fn is_retryable(e: &Error) -> bool {
    matches!(e, Error::LockLost { .. })
        || matches!(
            e.sqlstate(),
            Some(&SqlState::T_R_DEADLOCK_DETECTED) | Some(&SqlState::T_R_SERIALIZATION_FAILURE)
        )
}

/// The wait after failed attempt `attempt` (1-based): a uniform draw up to
/// `FIRST_DELAY_MS * 2^(attempt-1)`, capped at `MAX_DELAY_MS`, and at least
/// half of that bound ("equal jitter").
pub fn delay(attempt: u32) -> Duration {
    let exp = attempt.clamp(1, 16) - 1;
    let bound_ms = (FIRST_DELAY_MS << exp).min(MAX_DELAY_MS);
    let bound = Duration::from_millis(bound_ms);
    bound.mul_f64(0.5 + rand::random::<f64>() * 0.5)
}

/// Runs `attempt_once` up to `max_attempts` times while it fails with a
/// retryable error, calling `on_retry` before each wait; returns the last
/// result.
pub(crate) async fn run<T, F, Fut>(
    max_attempts: u32,
    on_retry: impl Fn(&Error),
    mut attempt_once: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    assert!(
        (1..=MAX_ATTEMPTS).contains(&max_attempts),
        "max_attempts is checked by the configuration"
    );
    let mut attempt = 1;
    loop {
        match attempt_once().await {
            Err(e) if is_retryable(&e) && attempt < max_attempts => {
                on_retry(&e);
                tokio::time::sleep(delay(attempt)).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_stay_bounded_and_are_jittered() {
        for attempt in 1..=30 {
            let bound = (FIRST_DELAY_MS << (attempt.min(16) - 1)).min(MAX_DELAY_MS);
            let d = delay(attempt).as_secs_f64() * 1000.0;
            assert!(
                d >= bound as f64 / 2.0 && d <= bound as f64,
                "attempt {attempt}: {d} ms"
            );
        }
        let draws: std::collections::HashSet<_> = (0..16).map(|_| delay(3)).collect();
        assert!(draws.len() > 1, "jittered");
    }

    #[tokio::test]
    async fn a_non_retryable_error_is_returned_at_once_without_a_retry() {
        let calls = std::cell::Cell::new(0);
        let retried = std::cell::Cell::new(0);
        let r: Result<()> = run(
            3,
            |_| retried.set(retried.get() + 1),
            || {
                calls.set(calls.get() + 1);
                async { Err(Error::LockTimeout) }
            },
        )
        .await;
        assert!(matches!(r, Err(Error::LockTimeout)));
        assert_eq!(calls.get(), 1);
        assert_eq!(retried.get(), 0, "on_retry is not called");
    }
}
