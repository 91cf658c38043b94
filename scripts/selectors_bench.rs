//! `cargo bench`: nanoseconds per pick for every selection policy, with 2 and 64 backends.
//!
//! A plain timing loop (the stable toolchain has no `#[bench]`, and a statistics crate is
//! more than this needs): each policy is warmed up, then timed over enough picks to run for
//! about half a second, five times; the median is reported. Under `cargo test` (no `--bench`
//! argument) it only checks that every policy picks, so the suite stays fast.

use std::hint::black_box;
use std::time::{Duration, Instant};

use ballast::selection::Algorithm;
use ballast::selection::{Candidate, Selector};

const ALGORITHMS: [Algorithm; 4] = [
    Algorithm::RoundRobin,
    Algorithm::WeightedRoundRobin,
    Algorithm::LeastConnections,
    Algorithm::WorkloadSensitive,
];

/// `n` backends with varied weights, open connections and loads, all available.
fn candidates(n: usize) -> Vec<Candidate> {
    (0..n)
        .map(|i| {
            let weight = 1 + (i as u32 * 7) % 5;
            Candidate::new(weight, (i as u64 * 13) % 17)
                .with_load(Some((i * 37 % 100) as f32), i as u64 % 3)
        })
        .collect()
}

/// Median nanoseconds per pick over five timed batches.
fn time_picks(selector: &Selector, candidates: &[Candidate]) -> f64 {
    let mut batch = 1_000u64;
    loop {
        let started = Instant::now();
        for _ in 0..batch {
            black_box(selector.select(black_box(candidates)));
        }
        if started.elapsed() > Duration::from_millis(100) {
            break;
        }
        batch *= 2;
    }
    let mut samples: Vec<f64> = (0..5)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..batch {
                black_box(selector.select(black_box(candidates)));
            }
            started.elapsed().as_nanos() as f64 / batch as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[2]
}

fn main() {
    let benchmarking = std::env::args().any(|a| a == "--bench");
    if benchmarking {
        println!("| Algorithm | 2 backends (ns/pick) | 64 backends (ns/pick) |");
        println!("|---|---:|---:|");
    }
    for algorithm in ALGORITHMS {
        let mut row = Vec::new();
        for n in [2, 64] {
            let pool = candidates(n);
            let weights: Vec<u32> = pool.iter().map(|c| c.weight).collect();
            let selector = Selector::new(algorithm, &weights);
            assert!(
                selector.select(&pool[..]).is_some(),
                "{algorithm} picked nothing"
            );
            if benchmarking {
                row.push(format!("{:.1}", time_picks(&selector, &pool)));
            }
        }
        if benchmarking {
            println!("| {algorithm} | {} | {} |", row[0], row[1]);
        }
    }
}
