//! Selection policies. Pure and I/O-free: a selector looks at a snapshot of candidates and
//! returns the index of the one to use. The only state a selector changes while picking is
//! one atomic counter, so picking never takes a lock; whatever a policy precomputes (a
//! weighted cycle, a Maglev lookup table, an alias table) is built once per configuration
//! snapshot in [`Selector::new`] and only read afterwards.
//!
//! One policy family per file: `weighted` (smooth weighted round robin), `least` (least
//! connections), `workload` (load-aware), `maglev` (consistent hashing of the client's
//! address), `p2c` (power of two choices). Plain round robin is the counter itself, here.

use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Deserialize;

mod least;
mod maglev;
mod p2c;
mod weighted;
mod workload;

pub use maglev::MAGLEV_TABLE_SIZE;
pub use weighted::smooth_weighted_schedule;
pub use workload::{MIN_SPARE, spare_capacity};

/// The selection policy a configuration names (`algorithm: ...` in `balancer.ron`). The
/// variant names are the configuration's words and [`fmt::Display`] prints them back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum Algorithm {
    /// Each backend in turn.
    RoundRobin,
    /// Smooth weighted round robin (nginx's algorithm): weight 3 and 5 take 3 and 5 of every
    /// 8 connections, interleaved.
    WeightedRoundRobin,
    /// The fewest active connections per unit of weight; ties rotate.
    LeastConnections,
    /// The lowest load score from each backend's polled CPU reading (see the README).
    WorkloadSensitive,
    /// Consistent hashing of the client's IP address through a Maglev lookup table
    /// (Eisenbud et al., "Maglev: A Fast and Reliable Software Network Load Balancer",
    /// NSDI 2016, section 3.4), weighted: a client keeps its backend across connections,
    /// reloads and restarts, and every instance built from the same backends (names and
    /// weights) sends it to the same one. An unavailable backend's clients go to the next
    /// available backend in the table's order.
    Maglev,
    /// Two distinct available backends drawn at random in proportion to their weights; the
    /// one with fewer active connections per unit of weight wins (Mitzenmacher, "The Power
    /// of Two Choices in Randomized Load Balancing", IEEE TPDS 12(10), 2001).
    PowerOfTwoChoices,
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// What a selector may know about one backend at the moment of a pick.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate {
    /// Current weight; 0 means drained.
    pub weight: u32,
    /// Connections open to this backend now.
    pub active: u64,
    /// False when the backend must not get this connection (drained, down, already tried).
    pub available: bool,
    /// Last fresh CPU load reading in percent (0-100); `None` when unknown or stale.
    pub load: Option<f32>,
    /// Connections sent to this backend since its load was last read.
    pub recent: u64,
}

impl Candidate {
    /// A candidate with `weight` (0: drained, so unavailable) and `active` connections,
    /// without a load reading.
    pub fn new(weight: u32, active: u64) -> Self {
        Candidate {
            weight,
            active,
            available: weight > 0,
            load: None,
            recent: 0,
        }
    }

    /// The same candidate with a load reading (CPU percent, 0-100) and the connections sent
    /// to it since that reading.
    pub fn with_load(self, load: Option<f32>, recent: u64) -> Self {
        Candidate {
            load,
            recent,
            ..self
        }
    }
}

/// A read-only view of the candidates, so the live backend list can be offered to a selector
/// without copying it into a vector on every pick.
pub trait Candidates {
    /// How many candidates there are; indices run from 0 to `len() - 1`.
    fn len(&self) -> usize;
    /// The candidate at `index` (which is below `len()`), as seen now.
    fn get(&self, index: usize) -> Candidate;
    /// Whether there are no candidates at all.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Candidates for [Candidate] {
    fn len(&self) -> usize {
        <[Candidate]>::len(self)
    }
    fn get(&self, index: usize) -> Candidate {
        self[index]
    }
}

/// A selection policy with its rotation state.
#[derive(Debug)]
pub struct Selector {
    policy: Policy,
    /// Advances once per pick: where each policy starts looking (PowerOfTwoChoices: which
    /// random numbers the pick draws).
    counter: AtomicUsize,
}

#[derive(Debug)]
enum Policy {
    RoundRobin,
    /// Smooth weighted round robin, precomputed for one cycle of sum(weights) picks.
    Weighted(Box<[u32]>),
    LeastConnections,
    WorkloadSensitive,
    Maglev(maglev::Maglev),
    PowerOfTwoChoices(p2c::PowerOfTwo),
}

impl Selector {
    /// Builds the selector for `algorithm` over `backends`: each backend's name and
    /// configured weight, in the order of the candidates the selector will be offered (the
    /// indices [`Selector::select`] returns are positions in this slice).
    ///
    /// Weights lay out the weighted cycle, the Maglev table and the weighted draws. Names
    /// matter to Maglev only: its table is built from the set of (name, weight) pairs, sorted
    /// by name, so it does not depend on the order of `backends`; names are expected to be
    /// unique (the configuration enforces it). Building a Maglev selector fills a table of
    /// [`MAGLEV_TABLE_SIZE`] entries (4 bytes each), a few milliseconds at most.
    ///
    /// PowerOfTwoChoices draws from a generator seeded from the operating system's randomness
    /// (through std's `RandomState`); [`Selector::with_seed`] fixes the seed.
    pub fn new(algorithm: Algorithm, backends: &[(&str, u32)]) -> Selector {
        Selector::with_seed(algorithm, backends, p2c::random_seed())
    }

    /// [`Selector::new`] with the random source seeded by `seed`, so that PowerOfTwoChoices
    /// draws a reproducible sequence (for tests and benchmarks); the other policies do not
    /// draw, and ignore it.
    pub fn with_seed(algorithm: Algorithm, backends: &[(&str, u32)], seed: u64) -> Selector {
        let weights = || backends.iter().map(|&(_, w)| w).collect::<Vec<u32>>();
        let policy = match algorithm {
            Algorithm::RoundRobin => Policy::RoundRobin,
            Algorithm::WeightedRoundRobin => Policy::Weighted(smooth_weighted_schedule(&weights())),
            Algorithm::LeastConnections => Policy::LeastConnections,
            Algorithm::WorkloadSensitive => Policy::WorkloadSensitive,
            Algorithm::Maglev => Policy::Maglev(maglev::Maglev::new(backends)),
            Algorithm::PowerOfTwoChoices => {
                Policy::PowerOfTwoChoices(p2c::PowerOfTwo::new(&weights(), seed))
            }
        };
        Selector {
            policy,
            counter: AtomicUsize::new(0),
        }
    }

    /// A `Maglev` selector over `backends` (as for [`Selector::new`]) with a lookup table of
    /// `size` entries, a prime (the configuration's `maglev_table_size` is checked to be
    /// one): more entries spread clients more evenly and move fewer on a change.
    pub fn maglev(backends: &[(&str, u32)], size: usize) -> Selector {
        Selector {
            policy: Policy::Maglev(maglev::Maglev::with_size(backends, size)),
            counter: AtomicUsize::new(0),
        }
    }

    /// Picks the candidate for the next connection, from `client` (the client's address:
    /// Maglev hashes it, the other policies ignore it), or `None` when none is available.
    pub fn select<C: Candidates + ?Sized>(&self, candidates: &C, client: IpAddr) -> Option<usize> {
        let n = candidates.len();
        if n == 0 {
            return None;
        }
        match &self.policy {
            Policy::RoundRobin => self.rotate(n, |tick| tick % n, candidates),
            Policy::Weighted(schedule) => {
                let len = schedule.len();
                self.rotate(len, |tick| schedule[tick % len] as usize, candidates)
            }
            Policy::LeastConnections => {
                let start = self.counter.fetch_add(1, Ordering::Relaxed) % n;
                least::least_connections(candidates, start)
            }
            Policy::WorkloadSensitive => {
                let start = self.counter.fetch_add(1, Ordering::Relaxed) % n;
                workload::workload_sensitive(candidates, start)
            }
            Policy::Maglev(table) => table.select(candidates, client),
            Policy::PowerOfTwoChoices(p2c) => p2c.select(candidates, &self.counter),
        }
    }

    /// Walks a cycle of `len` turns, where turn `tick` belongs to candidate `owner(tick)`.
    /// An unavailable candidate's turn is skipped by taking a fresh tick rather than by
    /// looking at the next entry, so the others keep the shares the cycle gives them instead
    /// of the next in line inheriting every skipped turn.
    fn rotate<C: Candidates + ?Sized>(
        &self,
        len: usize,
        owner: impl Fn(usize) -> usize,
        candidates: &C,
    ) -> Option<usize> {
        let n = candidates.len();
        let is_open = |i: usize| i < n && candidates.get(i).available;
        for _ in 0..len {
            let i = owner(self.counter.fetch_add(1, Ordering::Relaxed));
            if is_open(i) {
                return Some(i);
            }
        }
        // Concurrent pickers can consume our ticks; a last scan guarantees an answer whenever
        // any candidate is available.
        (0..n).find(|&i| is_open(i))
    }
}

/// Helpers the policies' tests share.
#[cfg(test)]
mod testing {
    use super::{Algorithm, Candidate, Selector};
    use std::net::{IpAddr, Ipv4Addr};

    /// A client address for the policies that ignore it (TEST-NET-1, RFC 5737).
    pub(super) const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));

    /// Backends `b0`, `b1`, ... with `weights`, as [`Selector::new`] takes them.
    pub(super) fn named(weights: &[u32]) -> Vec<(String, u32)> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| (format!("b{i}"), w))
            .collect()
    }

    /// The `(&str, u32)` view of [`named`]'s backends.
    pub(super) fn borrowed(backends: &[(String, u32)]) -> Vec<(&str, u32)> {
        backends.iter().map(|(n, w)| (n.as_str(), *w)).collect()
    }

    /// A selector over backends `b0`, `b1`, ... with `weights`.
    pub(super) fn selector(algorithm: Algorithm, weights: &[u32]) -> Selector {
        Selector::new(algorithm, &borrowed(&named(weights)))
    }

    pub(super) fn picks(selector: &Selector, candidates: &[Candidate], count: usize) -> Vec<usize> {
        (0..count)
            .map(|_| selector.select(candidates, CLIENT).expect("a candidate"))
            .collect()
    }

    pub(super) fn idle(weights: &[u32]) -> Vec<Candidate> {
        weights.iter().map(|&w| Candidate::new(w, 0)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{CLIENT, idle, picks, selector};
    use super::*;

    const ALL: [Algorithm; 6] = [
        Algorithm::RoundRobin,
        Algorithm::WeightedRoundRobin,
        Algorithm::LeastConnections,
        Algorithm::WorkloadSensitive,
        Algorithm::Maglev,
        Algorithm::PowerOfTwoChoices,
    ];

    #[test]
    fn round_robin_rotates_strictly() {
        let s = selector(Algorithm::RoundRobin, &[1, 1, 1]);
        let seq = picks(&s, &idle(&[1, 1, 1]), 30);
        assert_eq!(seq[..6], [0, 1, 2, 0, 1, 2]);
        for k in 0..3 {
            assert_eq!(seq.iter().filter(|&&i| i == k).count(), 10);
        }
        assert!(seq.windows(2).all(|w| w[0] != w[1]));
    }

    #[test]
    fn round_robin_ignores_weights_but_skips_drained() {
        let s = selector(Algorithm::RoundRobin, &[5, 0, 1]);
        assert_eq!(picks(&s, &idle(&[5, 0, 1]), 6), [0, 2, 0, 2, 0, 2]);
    }

    #[test]
    fn every_policy_skips_unavailable_and_reports_none() {
        for algorithm in ALL {
            let s = selector(algorithm, &[1, 1]);
            let mut c = idle(&[1, 1]);
            c[0].available = false;
            assert_eq!(picks(&s, &c, 4), [1, 1, 1, 1], "{algorithm}");
            c[1].available = false;
            assert_eq!(s.select(&c[..], CLIENT), None, "{algorithm}");
            assert_eq!(s.select(&[][..], CLIENT), None, "{algorithm}");
        }
    }

    #[test]
    fn algorithm_names_parse_and_print_as_written() {
        for algorithm in ALL {
            let name = algorithm.to_string();
            let parsed: Algorithm = ron::from_str(&name).expect("a known name");
            assert_eq!(parsed, algorithm);
        }
        assert_eq!(Algorithm::Maglev.to_string(), "Maglev");
        assert_eq!(
            Algorithm::PowerOfTwoChoices.to_string(),
            "PowerOfTwoChoices"
        );
    }

    #[test]
    fn debug_output_stays_short() {
        // Snapshots are Debug-printed; a 65537-entry table must not be.
        for algorithm in [Algorithm::Maglev, Algorithm::PowerOfTwoChoices] {
            let s = selector(algorithm, &[1; 8]);
            let text = format!("{s:?}");
            assert!(text.len() < 300, "{text}");
        }
    }
}
