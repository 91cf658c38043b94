//! Selection policies. Pure and I/O-free: a selector looks at a snapshot of candidates and
//! returns the index of the one to use. The only state a selector keeps is one atomic counter,
//! so picking never takes a lock.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::config::Algorithm;

/// What a selector may know about one backend at the moment of a pick.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate {
    /// Current weight; 0 means drained.
    pub weight: u32,
    /// Connections open to this backend now.
    pub active: u64,
    /// False when the backend must not get this connection (drained, down, already tried).
    pub available: bool,
}

impl Candidate {
    pub fn new(weight: u32, active: u64) -> Self {
        Candidate {
            weight,
            active,
            available: weight > 0,
        }
    }
}

/// A read-only view of the candidates, so the live backend list can be offered to a selector
/// without copying it into a vector on every pick.
pub trait Candidates {
    fn len(&self) -> usize;
    fn get(&self, index: usize) -> Candidate;
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
    /// Advances once per pick; where each policy starts looking.
    counter: AtomicUsize,
}

#[derive(Debug)]
enum Policy {
    RoundRobin,
    /// Smooth weighted round robin, precomputed for one cycle of sum(weights) picks.
    Weighted(Box<[u32]>),
    LeastConnections,
}

impl Selector {
    /// Builds the selector for `algorithm`; `weights` are the configured weights, used to lay
    /// out the weighted schedule.
    pub fn new(algorithm: Algorithm, weights: &[u32]) -> Selector {
        let policy = match algorithm {
            Algorithm::RoundRobin => Policy::RoundRobin,
            Algorithm::WeightedRoundRobin => Policy::Weighted(smooth_weighted_schedule(weights)),
            Algorithm::LeastConnections | Algorithm::WorkloadSensitive => Policy::LeastConnections,
        };
        Selector {
            policy,
            counter: AtomicUsize::new(0),
        }
    }

    /// Picks the candidate for the next connection, or `None` when none is available.
    pub fn select<C: Candidates + ?Sized>(&self, candidates: &C) -> Option<usize> {
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
                least_connections(candidates, start)
            }
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

/// The backend with the fewest active connections per unit of weight. The scan starts at
/// `start` and only a strictly better candidate replaces the best so far, so ties go to
/// whichever comes first after a rotating start instead of always to backend 0.
fn least_connections<C: Candidates + ?Sized>(candidates: &C, start: usize) -> Option<usize> {
    let n = candidates.len();
    let mut best: Option<(usize, Candidate)> = None;
    for k in 0..n {
        let i = (start + k) % n;
        let c = candidates.get(i);
        if !c.available || c.weight == 0 {
            continue;
        }
        let better = match best {
            None => true,
            // a.active / a.weight < b.active / b.weight, without division.
            Some((_, b)) => {
                u128::from(c.active) * u128::from(b.weight)
                    < u128::from(b.active) * u128::from(c.weight)
            }
        };
        if better {
            best = Some((i, c));
        }
    }
    best.map(|(i, _)| i)
}

/// One cycle of nginx's smooth weighted round robin: every round each backend's current
/// weight grows by its weight, the largest wins (first on ties) and pays back the total.
/// Over sum(weights) picks each backend appears exactly `weight` times, interleaved rather
/// than in blocks. Weights are reduced by their greatest common divisor first, which keeps
/// the cycle as short as possible without changing the shares.
pub fn smooth_weighted_schedule(weights: &[u32]) -> Box<[u32]> {
    let divisor = weights
        .iter()
        .copied()
        .filter(|&w| w > 0)
        .fold(0, gcd)
        .max(1);
    let weights: Vec<i64> = weights.iter().map(|&w| i64::from(w / divisor)).collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        let mut best = 0;
        for (i, w) in weights.iter().enumerate() {
            current[i] += w;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        schedule.push(best as u32);
    }
    schedule.into_boxed_slice()
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picks(selector: &Selector, candidates: &[Candidate], count: usize) -> Vec<usize> {
        (0..count)
            .map(|_| selector.select(candidates).expect("a candidate"))
            .collect()
    }

    fn idle(weights: &[u32]) -> Vec<Candidate> {
        weights.iter().map(|&w| Candidate::new(w, 0)).collect()
    }

    #[test]
    fn round_robin_rotates_strictly() {
        let s = Selector::new(Algorithm::RoundRobin, &[1, 1, 1]);
        let seq = picks(&s, &idle(&[1, 1, 1]), 30);
        assert_eq!(seq[..6], [0, 1, 2, 0, 1, 2]);
        for k in 0..3 {
            assert_eq!(seq.iter().filter(|&&i| i == k).count(), 10);
        }
        assert!(seq.windows(2).all(|w| w[0] != w[1]));
    }

    #[test]
    fn round_robin_ignores_weights_but_skips_drained() {
        let s = Selector::new(Algorithm::RoundRobin, &[5, 0, 1]);
        assert_eq!(picks(&s, &idle(&[5, 0, 1]), 6), [0, 2, 0, 2, 0, 2]);
    }

    #[test]
    fn smooth_weighted_three_five_interleaves() {
        // nginx's sequence for weights 3:5; the seed sent a,a,a,b,b,b,b,b.
        assert_eq!(
            &*smooth_weighted_schedule(&[3, 5]),
            [1, 0, 1, 0, 1, 1, 0, 1]
        );
        let s = Selector::new(Algorithm::WeightedRoundRobin, &[3, 5]);
        let seq = picks(&s, &idle(&[3, 5]), 80);
        for cycle in seq.chunks(8) {
            assert_eq!(cycle, [1, 0, 1, 0, 1, 1, 0, 1]);
        }
    }

    #[test]
    fn smooth_weighted_classic_five_one_one() {
        assert_eq!(
            &*smooth_weighted_schedule(&[5, 1, 1]),
            [0, 0, 1, 0, 2, 0, 0]
        );
    }

    #[test]
    fn weighted_schedule_reduces_by_gcd_and_skips_zero() {
        assert_eq!(
            &*smooth_weighted_schedule(&[30, 0, 50]),
            [2, 0, 2, 0, 2, 2, 0, 2]
        );
        assert_eq!(&*smooth_weighted_schedule(&[4, 4]), [0, 1]);
    }

    #[test]
    fn weighted_skips_unavailable_and_keeps_shares_of_the_rest() {
        let weights = [2, 1, 1];
        let s = Selector::new(Algorithm::WeightedRoundRobin, &weights);
        assert_eq!(&*smooth_weighted_schedule(&weights), [0, 1, 2, 0]);
        let mut c = idle(&weights);
        c[0].available = false;
        assert_eq!(picks(&s, &c, 8), [1, 2, 1, 2, 1, 2, 1, 2]);
        let s = Selector::new(Algorithm::WeightedRoundRobin, &weights);
        let mut c = idle(&weights);
        c[1].available = false;
        assert_eq!(picks(&s, &c, 6), [0, 2, 0, 0, 2, 0]);
    }

    #[test]
    fn least_connections_prefers_idle_backend() {
        let s = Selector::new(Algorithm::LeastConnections, &[1, 1, 1]);
        let c = [
            Candidate::new(1, 4),
            Candidate::new(1, 0),
            Candidate::new(1, 2),
        ];
        assert_eq!(picks(&s, &c, 5), [1, 1, 1, 1, 1]);
    }

    #[test]
    fn least_connections_ties_rotate() {
        let s = Selector::new(Algorithm::LeastConnections, &[1, 1, 1]);
        assert_eq!(picks(&s, &idle(&[1, 1, 1]), 6), [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn least_connections_counts_per_unit_of_weight() {
        let s = Selector::new(Algorithm::LeastConnections, &[3, 1]);
        // 5/3 < 2/1, so the heavier backend still wins with more connections.
        let c = [Candidate::new(3, 5), Candidate::new(1, 2)];
        assert_eq!(picks(&s, &c, 3), [0, 0, 0]);
        // 6/3 == 2/1: a tie, which rotates.
        let c = [Candidate::new(3, 6), Candidate::new(1, 2)];
        assert_eq!(picks(&s, &c, 4), [1, 0, 1, 0]);
    }

    #[test]
    fn every_policy_skips_unavailable_and_reports_none() {
        for algorithm in [
            Algorithm::RoundRobin,
            Algorithm::WeightedRoundRobin,
            Algorithm::LeastConnections,
        ] {
            let s = Selector::new(algorithm, &[1, 1]);
            let mut c = idle(&[1, 1]);
            c[0].available = false;
            assert_eq!(picks(&s, &c, 4), [1, 1, 1, 1], "{algorithm}");
            c[1].available = false;
            assert_eq!(s.select(&c[..]), None, "{algorithm}");
            assert_eq!(s.select(&[][..]), None, "{algorithm}");
        }
    }
}
