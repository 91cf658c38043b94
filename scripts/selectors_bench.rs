//! `cargo bench`: nanoseconds per pick for every selection policy, with 2 and 64 backends.
//!
//! A plain timing loop (the stable toolchain has no `#[bench]`, and a statistics crate is
//! more than this needs): each policy is warmed up, then timed over enough picks to run for
//! about half a second, five times; the median is reported. Under `cargo test` (no `--bench`
//! argument) it only checks that every policy picks, so the suite stays fast.
//!
//! Every pick comes from the next of 4096 client addresses, so Maglev's lookups land all
//! over its 256 KiB table as real clients' would, rather than on one cached entry; the other
//! policies ignore the address (reading it costs them the same fraction of a nanosecond).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use ballast::selection::Algorithm;
use ballast::selection::{Candidate, Selector};

const ALGORITHMS: [Algorithm; 6] = [
    Algorithm::RoundRobin,
    Algorithm::WeightedRoundRobin,
    Algorithm::LeastConnections,
    Algorithm::WorkloadSensitive,
    Algorithm::Maglev,
    Algorithm::PowerOfTwoChoices,
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

/// How many client addresses the picks cycle through (a power of two: a mask, not a
/// division, picks the next).
const CLIENTS: usize = 4096;

/// Client addresses 10.0.0.0 and up, spread by a multiplier (only hashed, never contacted).
fn clients() -> Vec<IpAddr> {
    (0..CLIENTS as u32)
        .map(|k| {
            IpAddr::V4(Ipv4Addr::from(
                0x0a00_0000 | k.wrapping_mul(2_654_435_761) >> 8,
            ))
        })
        .collect()
}

/// Median nanoseconds per pick over five timed batches.
fn time_picks(selector: &Selector, candidates: &[Candidate], clients: &[IpAddr]) -> f64 {
    assert_eq!(clients.len(), CLIENTS);
    let run = |batch: u64| {
        let started = Instant::now();
        for k in 0..batch {
            let client = clients[k as usize & (CLIENTS - 1)];
            black_box(selector.select(black_box(candidates), black_box(client)));
        }
        started.elapsed()
    };
    let mut batch = 1_000u64;
    while run(batch) <= Duration::from_millis(100) {
        batch *= 2;
    }
    let mut samples: Vec<f64> = (0..5)
        .map(|_| run(batch).as_nanos() as f64 / batch as f64)
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
    let clients = clients();
    for algorithm in ALGORITHMS {
        let mut row = Vec::new();
        for n in [2, 64] {
            let pool = candidates(n);
            let names: Vec<String> = (0..n).map(|i| format!("backend-{i}")).collect();
            let backends: Vec<(&str, u32)> = names
                .iter()
                .zip(&pool)
                .map(|(name, c)| (name.as_str(), c.weight))
                .collect();
            let selector = Selector::with_seed(algorithm, &backends, 1);
            for &client in &clients[..64] {
                assert!(
                    selector.select(&pool[..], client).is_some(),
                    "{algorithm} picked nothing"
                );
            }
            if benchmarking {
                row.push(format!("{:.1}", time_picks(&selector, &pool, &clients)));
            }
        }
        if benchmarking {
            println!("| {algorithm} | {} | {} |", row[0], row[1]);
        }
    }
    if benchmarking {
        println!();
        for n in [64, 1000] {
            println!(
                "Maglev table build, {n} backends: {:.1} ms",
                table_build_ms(n)
            );
        }
    }
}

/// Milliseconds to build a Maglev selector over `n` backends (weights 1 to 5), the median of
/// five: what a reload or a weight change costs such a service once.
fn table_build_ms(n: usize) -> f64 {
    let names: Vec<String> = (0..n).map(|i| format!("backend-{i}")).collect();
    let backends: Vec<(&str, u32)> = names
        .iter()
        .zip(candidates(n))
        .map(|(name, c)| (name.as_str(), c.weight))
        .collect();
    let mut samples: Vec<f64> = (0..5)
        .map(|_| {
            let started = Instant::now();
            black_box(Selector::new(Algorithm::Maglev, black_box(&backends)));
            started.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[2]
}
