//! Least connections, per unit of weight.

use super::{Candidate, Candidates};

/// The backend with the fewest active connections per unit of weight. The scan starts at
/// `start` and only a strictly better candidate replaces the best so far, so ties go to
/// whichever comes first after a rotating start instead of always to backend 0.
pub(super) fn least_connections<C: Candidates + ?Sized>(
    candidates: &C,
    start: usize,
) -> Option<usize> {
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
            Some((_, b)) => fewer_per_weight(&c, &b),
        };
        if better {
            best = Some((i, c));
        }
    }
    best.map(|(i, _)| i)
}

/// Whether `a` has strictly fewer active connections per unit of weight than `b`:
/// `a.active / a.weight < b.active / b.weight`, without division. Weights are at most 256,
/// so the products cannot overflow for any count of connections a machine can hold (and
/// saturate if they did).
pub(super) fn fewer_per_weight(a: &Candidate, b: &Candidate) -> bool {
    a.active.saturating_mul(u64::from(b.weight)) < b.active.saturating_mul(u64::from(a.weight))
}

#[cfg(test)]
mod tests {
    use super::super::testing::{idle, picks, selector};
    use super::super::{Algorithm, Candidate};

    #[test]
    fn least_connections_prefers_idle_backend() {
        let s = selector(Algorithm::LeastConnections, &[1, 1, 1]);
        let c = [
            Candidate::new(1, 4),
            Candidate::new(1, 0),
            Candidate::new(1, 2),
        ];
        assert_eq!(picks(&s, &c, 5), [1, 1, 1, 1, 1]);
    }

    #[test]
    fn least_connections_ties_rotate() {
        let s = selector(Algorithm::LeastConnections, &[1, 1, 1]);
        assert_eq!(picks(&s, &idle(&[1, 1, 1]), 6), [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn least_connections_counts_per_unit_of_weight() {
        let s = selector(Algorithm::LeastConnections, &[3, 1]);
        // 5/3 < 2/1, so the heavier backend still wins with more connections.
        let c = [Candidate::new(3, 5), Candidate::new(1, 2)];
        assert_eq!(picks(&s, &c, 3), [0, 0, 0]);
        // 6/3 == 2/1: a tie, which rotates.
        let c = [Candidate::new(3, 6), Candidate::new(1, 2)];
        assert_eq!(picks(&s, &c, 4), [1, 0, 1, 0]);
    }
}
