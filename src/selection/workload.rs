//! Workload-sensitive selection from each backend's polled CPU load.

use super::Candidates;

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
pub(super) fn workload_sensitive<C: Candidates + ?Sized>(
    candidates: &C,
    start: usize,
) -> Option<usize> {
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

#[cfg(test)]
mod tests {
    use super::super::testing::{CLIENT, selector};
    use super::super::{Algorithm, Candidate};
    use super::*;

    /// Runs `count` picks, counting each as a recent connection of the chosen backend the way
    /// the balancer does between two load readings; returns how many each backend got.
    fn workload_split(candidates: &mut [Candidate], count: usize) -> Vec<usize> {
        let s = selector(Algorithm::WorkloadSensitive, &[]);
        let mut got = vec![0; candidates.len()];
        for _ in 0..count {
            let i = s.select(&*candidates, CLIENT).expect("a candidate");
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
        let s = selector(Algorithm::WorkloadSensitive, &[]);
        let pick = |c: &[Candidate]| s.select(c, CLIENT).expect("a candidate");
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
}
