//! Smooth weighted round robin (nginx's algorithm, `ngx_http_upstream_get_peer`).

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
    use super::super::Algorithm;
    use super::super::testing::{idle, picks, selector};
    use super::*;

    #[test]
    fn smooth_weighted_three_five_interleaves() {
        // nginx's sequence for weights 3:5; the seed sent a,a,a,b,b,b,b,b.
        assert_eq!(
            &*smooth_weighted_schedule(&[3, 5]),
            [1, 0, 1, 0, 1, 1, 0, 1]
        );
        let s = selector(Algorithm::WeightedRoundRobin, &[3, 5]);
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
        let s = selector(Algorithm::WeightedRoundRobin, &weights);
        assert_eq!(&*smooth_weighted_schedule(&weights), [0, 1, 2, 0]);
        let mut c = idle(&weights);
        c[0].available = false;
        assert_eq!(picks(&s, &c, 8), [1, 2, 1, 2, 1, 2, 1, 2]);
        let s = selector(Algorithm::WeightedRoundRobin, &weights);
        let mut c = idle(&weights);
        c[1].available = false;
        assert_eq!(picks(&s, &c, 6), [0, 2, 0, 0, 2, 0]);
    }
}
