//! Selection policies. Pure and I/O-free: a selector looks at a snapshot of candidates and
//! returns the index of the one to use. The only state a selector keeps is one atomic counter,
//! so picking never takes a lock.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Deserialize;

/// The selection policy a configuration names (`algorithm: ...` in `balancer.ron`).
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
    /// Advances once per pick; where each policy starts looking.
    counter: AtomicUsize,
}

#[derive(Debug)]
enum Policy {
    RoundRobin,
    /// Smooth weighted round robin, precomputed for one cycle of sum(weights) picks.
    Weighted(Box<[u32]>),
    LeastConnections,
    WorkloadSensitive,
}

impl Selector {
    /// Builds the selector for `algorithm`; `weights` are the configured weights, used to lay
    /// out the weighted schedule.
    pub fn new(algorithm: Algorithm, weights: &[u32]) -> Selector {
        let policy = match algorithm {
            Algorithm::RoundRobin => Policy::RoundRobin,
            Algorithm::WeightedRoundRobin => Policy::Weighted(smooth_weighted_schedule(weights)),
            Algorithm::LeastConnections => Policy::LeastConnections,
            Algorithm::WorkloadSensitive => Policy::WorkloadSensitive,
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
            Policy::WorkloadSensitive => {
                let start = self.counter.fetch_add(1, Ordering::Relaxed) % n;
                workload_sensitive(candidates, start)
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
    // Two ranges rather than `(start + k) % n`: no division per candidate.
    for i in (start..n).chain(0..start) {
        let c = candidates.get(i);
        if !c.available || c.weight == 0 {
            continue;
        }
        let better = match best {
            None => true,
            // a.active / a.weight < b.active / b.weight, without division. Weights are at
            // most 256, so the products cannot overflow for any count of connections a
            // machine can hold.
            Some((_, b)) => {
                c.active.saturating_mul(u64::from(b.weight))
                    < b.active.saturating_mul(u64::from(c.weight))
            }
        };
        if better {
            best = Some((i, c));
        }
    }
    best.map(|(i, _)| i)
}

/// The least a backend's spare capacity counts for, so a saturated backend still gets a
/// trickle (and so new readings) instead of none at all.
pub const MIN_SPARE: f64 = 0.02;

/// Spare capacity of a backend at `load` percent: 1.0 idle, down to [`MIN_SPARE`] at 100%.
pub fn spare_capacity(load: f32) -> f64 {
    (1.0 - f64::from(load) / 100.0).clamp(MIN_SPARE, 1.0)
}

/// Workload-sensitive choice: the lowest `(active + recent + 1) / (weight * spare)`.
///
/// Spare capacity shares out new connections in proportion to `weight * (1 - load)`, and
/// counting the connections sent since the last reading (`recent`) spreads a burst between
/// two polls by those shares instead of sending it all to the backend that looked idlest
/// (the seed's "minimum wins" herd). A backend with no fresh reading is assumed to have the
/// mean spare capacity of those that have one, so it is used as least connections would.
fn workload_sensitive<C: Candidates + ?Sized>(candidates: &C, start: usize) -> Option<usize> {
    let n = candidates.len();
    let (mut known, mut spare_sum) = (0u32, 0.0);
    for i in 0..n {
        let c = candidates.get(i);
        if let (true, Some(load)) = (c.available, c.load) {
            known += 1;
            spare_sum += spare_capacity(load);
        }
    }
    let default_spare = if known == 0 {
        1.0
    } else {
        spare_sum / f64::from(known)
    };
    let mut best: Option<(usize, f64, f64)> = None;
    // Two ranges rather than `(start + k) % n`: no division per candidate.
    for i in (start..n).chain(0..start) {
        let c = candidates.get(i);
        if !c.available || c.weight == 0 {
            continue;
        }
        let demand = c.active as f64 + c.recent as f64 + 1.0;
        let capacity = f64::from(c.weight) * c.load.map_or(default_spare, spare_capacity);
        // demand / capacity < best_demand / best_capacity, without division.
        let better = best.is_none_or(|(_, d, cap)| demand * cap < d * capacity);
        if better {
            best = Some((i, demand, capacity));
        }
    }
    best.map(|(i, _, _)| i)
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

    /// Runs `count` picks, counting each as a recent connection of the chosen backend the way
    /// the balancer does between two load readings; returns how many each backend got.
    fn workload_split(candidates: &mut [Candidate], count: usize) -> Vec<usize> {
        let s = Selector::new(Algorithm::WorkloadSensitive, &[]);
        let mut got = vec![0; candidates.len()];
        for _ in 0..count {
            let i = s.select(&*candidates).expect("a candidate");
            candidates[i].recent += 1;
            got[i] += 1;
        }
        got
    }

    fn loaded(weight: u32, load: Option<f32>) -> Candidate {
        Candidate::new(weight, 0).with_load(load, 0)
    }

    #[test]
    fn workload_exact_choices() {
        let s = Selector::new(Algorithm::WorkloadSensitive, &[]);
        let pick = |c: &[Candidate]| s.select(c).expect("a candidate");
        // 1/0.9 < 1/0.1
        assert_eq!(pick(&[loaded(1, Some(10.0)), loaded(1, Some(90.0))]), 0);
        // 10/0.9 > 1/0.1 after nine recent connections to the lighter one
        let c = [
            loaded(1, Some(10.0)).with_load(Some(10.0), 9),
            loaded(1, Some(90.0)),
        ];
        assert_eq!(pick(&c), 1);
        // Open connections count as well as recent ones.
        let c = [
            Candidate::new(1, 9).with_load(Some(10.0), 0),
            loaded(1, Some(90.0)),
        ];
        assert_eq!(pick(&c), 1);
        // Weight multiplies capacity: 3/(2*0.5) < 2/(1*0.5) is false; 2/(2*0.5) < 2/(1*0.5).
        let c = [
            loaded(2, Some(50.0)).with_load(Some(50.0), 1),
            loaded(1, Some(50.0)).with_load(Some(50.0), 1),
        ];
        assert_eq!(pick(&c), 0);
    }

    #[test]
    fn workload_ten_versus_ninety_splits_nine_to_one() {
        let mut c = [loaded(1, Some(10.0)), loaded(1, Some(90.0))];
        assert_eq!(workload_split(&mut c, 100), [90, 10]);
    }

    #[test]
    fn workload_equal_loads_alternate() {
        let mut c = [loaded(1, Some(40.0)), loaded(1, Some(40.0))];
        assert_eq!(workload_split(&mut c, 100), [50, 50]);
    }

    #[test]
    fn workload_weights_combine_with_load() {
        // Capacity 3*0.5 : 1*0.5 gives 3:1.
        let mut c = [loaded(3, Some(50.0)), loaded(1, Some(50.0))];
        assert_eq!(workload_split(&mut c, 100), [75, 25]);
    }

    #[test]
    fn workload_unknown_load_counts_as_the_mean() {
        // Known spares 0.9 and 0.5 average to 0.7 for the unknown one: 9:5:7 of 105.
        let mut c = [
            loaded(1, Some(10.0)),
            loaded(1, Some(50.0)),
            loaded(1, None),
        ];
        assert_eq!(workload_split(&mut c, 105), [45, 25, 35]);
        // Nothing known: plain least connections, rotating.
        let mut c = [loaded(1, None), loaded(1, None)];
        assert_eq!(workload_split(&mut c, 10), [5, 5]);
    }

    #[test]
    fn workload_saturated_backend_still_gets_a_trickle() {
        let mut c = [loaded(1, Some(0.0)), loaded(1, Some(100.0))];
        assert_eq!(workload_split(&mut c, 102), [100, 2]);
    }

    #[test]
    fn spare_capacity_is_clamped() {
        assert_eq!(spare_capacity(0.0), 1.0);
        assert_eq!(spare_capacity(75.0), 0.25);
        assert_eq!(spare_capacity(100.0), MIN_SPARE);
        assert_eq!(spare_capacity(250.0), MIN_SPARE);
        assert_eq!(spare_capacity(-5.0), 1.0);
    }

    #[test]
    fn every_policy_skips_unavailable_and_reports_none() {
        for algorithm in [
            Algorithm::RoundRobin,
            Algorithm::WeightedRoundRobin,
            Algorithm::LeastConnections,
            Algorithm::WorkloadSensitive,
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
