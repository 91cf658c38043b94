//! Lock-free duration histograms with fixed bucket bounds, read as Prometheus histograms.
//!
//! An observation is two relaxed atomic additions: one to the count of the first bucket whose
//! upper bound it does not exceed (or to the overflow bucket past the last bound), one to the
//! sum. The buckets are stored apart (not cumulative) and summed up when read, so the
//! `+Inf` bucket and the count always agree in one reading, and every cumulative bucket only
//! ever grows from one reading to the next. The sum is kept in whole microseconds, so it can
//! run for hundreds of thousands of years of summed durations before it wraps.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the backend connect-time buckets, from a loopback handshake (tens of
/// microseconds) to the slowest `timeouts.connect` one would configure (10 s).
pub(crate) const CONNECT_BOUNDS: &[Duration] = &[
    Duration::from_micros(100),
    Duration::from_micros(250),
    Duration::from_micros(500),
    Duration::from_millis(1),
    Duration::from_micros(2500),
    Duration::from_millis(5),
    Duration::from_millis(10),
    Duration::from_millis(25),
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_micros(2_500_000),
    Duration::from_secs(5),
    Duration::from_secs(10),
];

/// Upper bounds of the connection-duration buckets, from one short request (a millisecond)
/// to long-lived sessions (an hour); longer ones fall in `+Inf` alone.
pub(crate) const CONNECTION_BOUNDS: &[Duration] = &[
    Duration::from_millis(1),
    Duration::from_millis(5),
    Duration::from_millis(10),
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(5),
    Duration::from_secs(10),
    Duration::from_secs(30),
    Duration::from_secs(60),
    Duration::from_secs(300),
    Duration::from_secs(900),
    Duration::from_secs(3600),
];

/// Counts of durations per bucket, and their sum.
#[derive(Debug)]
pub(crate) struct Histogram {
    /// Ascending upper bounds; an observation equal to a bound belongs to its bucket.
    bounds: &'static [Duration],
    /// One count per bound, then the overflow bucket (above the last bound).
    buckets: Box<[AtomicU64]>,
    sum_micros: AtomicU64,
}

/// One reading of a [`Histogram`], cumulative as Prometheus wants it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Reading {
    /// `(upper bound in seconds, observations at or below it)`, ascending, without `+Inf`.
    pub buckets: Vec<(f64, u64)>,
    /// Every observation: the `+Inf` bucket and the count.
    pub count: u64,
    /// Sum of the observations, in seconds.
    pub sum: f64,
}

impl Histogram {
    /// An empty histogram with these ascending `bounds`.
    pub(crate) fn new(bounds: &'static [Duration]) -> Histogram {
        debug_assert!(
            bounds.windows(2).all(|w| w[0] < w[1]),
            "bounds not ascending"
        );
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Records one duration. Lock-free: two relaxed atomic additions.
    pub(crate) fn observe(&self, value: Duration) {
        let index = self.bounds.partition_point(|&bound| bound < value);
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(value.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// The cumulative counts now.
    pub(crate) fn read(&self) -> Reading {
        let mut running = 0u64;
        let mut buckets = Vec::with_capacity(self.bounds.len());
        for (bound, count) in self.bounds.iter().zip(self.buckets.iter()) {
            running += count.load(Ordering::Relaxed);
            buckets.push((bound.as_secs_f64(), running));
        }
        let overflow = self.buckets[self.bounds.len()].load(Ordering::Relaxed);
        // Whole microseconds to seconds: exact up to 2^53 µs (285 years).
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        Reading {
            buckets,
            count: running + overflow,
            sum,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: &[Duration] = &[
        Duration::from_millis(1),
        Duration::from_millis(10),
        Duration::from_millis(100),
    ];

    #[test]
    fn an_empty_histogram_reads_zero_everywhere() {
        let h = Histogram::new(BOUNDS);
        assert_eq!(
            h.read(),
            Reading {
                buckets: vec![(0.001, 0), (0.01, 0), (0.1, 0)],
                count: 0,
                sum: 0.0,
            }
        );
    }

    #[test]
    fn buckets_are_cumulative_and_a_bound_belongs_to_its_bucket() {
        let h = Histogram::new(BOUNDS);
        for micros in [0, 999, 1_000, 1_001, 10_000, 50_000, 100_001, 7_000_000] {
            h.observe(Duration::from_micros(micros));
        }
        let reading = h.read();
        // <= 1 ms: 0, 999 µs, 1 ms. <= 10 ms: + 1.001 ms, 10 ms. <= 100 ms: + 50 ms.
        assert_eq!(reading.buckets, vec![(0.001, 3), (0.01, 5), (0.1, 6)]);
        assert_eq!(reading.count, 8);
        let sum = 0.000_999 + 0.001 + 0.001_001 + 0.01 + 0.05 + 0.100_001 + 7.0;
        assert!((reading.sum - sum).abs() < 1e-9, "{}", reading.sum);
    }

    #[test]
    fn the_sum_keeps_whole_microseconds() {
        let h = Histogram::new(BOUNDS);
        h.observe(Duration::from_nanos(1_500));
        h.observe(Duration::from_nanos(999));
        let reading = h.read();
        assert_eq!(reading.buckets, vec![(0.001, 2), (0.01, 2), (0.1, 2)]);
        assert!((reading.sum - 0.000_001).abs() < 1e-12, "{}", reading.sum);
    }

    #[test]
    fn a_duration_past_every_bound_counts_only_in_the_total() {
        let h = Histogram::new(BOUNDS);
        h.observe(Duration::MAX);
        let reading = h.read();
        assert_eq!(reading.buckets, vec![(0.001, 0), (0.01, 0), (0.1, 0)]);
        assert_eq!(reading.count, 1);
    }

    #[test]
    fn concurrent_observations_are_all_counted() {
        let h = Histogram::new(CONNECT_BOUNDS);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for i in 0..1_000u64 {
                        h.observe(Duration::from_micros(i * 37));
                    }
                });
            }
        });
        let reading = h.read();
        assert_eq!(reading.count, 4_000);
        // 0..=2 * 37 µs = 74 µs are the values at or below 100 µs: i in 0..=2.
        assert_eq!(reading.buckets[0], (0.0001, 12));
        let sum: u64 = (0..1_000u64).map(|i| i * 37).sum::<u64>() * 4;
        let expected = sum as f64 / 1e6;
        assert!((reading.sum - expected).abs() < 1e-9);
    }

    #[test]
    fn the_bounds_ascend_and_print_as_plain_seconds() {
        for bounds in [CONNECT_BOUNDS, CONNECTION_BOUNDS] {
            assert!(bounds.windows(2).all(|w| w[0] < w[1]));
        }
        let le: Vec<String> = Histogram::new(CONNECT_BOUNDS)
            .read()
            .buckets
            .iter()
            .map(|(bound, _)| bound.to_string())
            .collect();
        assert_eq!(
            le,
            [
                "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05",
                "0.1", "0.25", "0.5", "1", "2.5", "5", "10"
            ]
        );
    }
}
