//! The sweep's extension rule: with the default client counts the sweep
//! goes on past the last count while throughput still rises, so both
//! payrail and the peer are measured at their best point, wherever the
//! machine puts it.

/// The default `--concurrency`.
pub const DEFAULT_CONCURRENCY: [usize; 5] = [16, 32, 64, 128, 256];
/// The last point must beat every earlier one by this factor for the sweep
/// to go on (below it, the curve is flat within the noise of 2 busy
/// cores).
pub const MIN_RISE: f64 = 1.05;

/// The client count to measure next, after `points` (clients, tps) in the
/// order measured: twice the last count while the last point's tps is at
/// least [`MIN_RISE`] times the best of the earlier ones, up to `cap`
/// clients and `max_points` points; `None`: the sweep is over.
pub fn next_clients(points: &[(usize, f64)], cap: usize, max_points: usize) -> Option<usize> {
    let (&(last_clients, last_tps), earlier) = points.split_last()?;
    let best_earlier = earlier.iter().map(|p| p.1).reduce(f64::max)?;
    let next = last_clients.checked_mul(2)?;
    (points.len() < max_points && next <= cap && last_tps >= MIN_RISE * best_earlier)
        .then_some(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extends_while_the_last_point_rose_by_five_percent() {
        let rising = [(16, 1000.0), (32, 1200.0), (64, 1260.0)];
        assert_eq!(next_clients(&rising, 512, 16), Some(128));
        let flat = [(16, 1000.0), (32, 1200.0), (64, 1259.0)];
        assert_eq!(next_clients(&flat, 512, 16), None, "4.9% is noise");
        let fell = [(16, 1000.0), (32, 1200.0), (64, 1100.0)];
        assert_eq!(next_clients(&fell, 512, 16), None);
        // against the best earlier point, not only the one before
        let dip = [(16, 1300.0), (32, 1000.0), (64, 1200.0)];
        assert_eq!(next_clients(&dip, 512, 16), None);
    }

    #[test]
    fn stops_at_the_caps_and_without_a_comparison() {
        let rising = [(128, 1000.0), (256, 2000.0)];
        assert_eq!(next_clients(&rising, 512, 16), Some(512));
        assert_eq!(next_clients(&rising, 511, 16), None, "client cap");
        assert_eq!(next_clients(&rising, 512, 2), None, "point cap");
        assert_eq!(next_clients(&[(16, 10.0)], 512, 16), None);
        assert_eq!(next_clients(&[], 512, 16), None);
        assert_eq!(
            next_clients(&[(1, 1.0), (usize::MAX, 9.0)], usize::MAX, 16),
            None
        );
    }
}
