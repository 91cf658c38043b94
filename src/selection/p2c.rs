//! Power of two choices: Mitzenmacher, "The Power of Two Choices in Randomized Load
//! Balancing", IEEE Transactions on Parallel and Distributed Systems 12(10), 2001.
//!
//! Two distinct available backends are drawn at random with probability proportional to
//! their weights, and the one with fewer active connections per unit of weight gets the
//! connection. Where one random choice leaves the busiest of `n` backends about
//! `ln n / ln ln n` above the mean, two choices bring that down to about `ln ln n / ln 2`,
//! while looking at two backends per pick instead of all of them as least connections does.
//!
//! The draws use Vose's alias method (Vose, "A Linear Algorithm for Generating Random Numbers
//! with a Given Distribution", IEEE TSE 17(9), 1991): a table built once per snapshot, then
//! one random number and one table read per draw whatever the pool's size; a pick's random
//! numbers cost one atomic increment in all (see [`Stream`]). A draw that lands
//! on an unavailable backend (or on the first choice again) is redrawn, which keeps the
//! draw proportional to weight among the available ones; after [`DRAWS`] misses a scan of
//! every candidate draws with the same distribution.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

use super::least::fewer_per_weight;
use super::{Candidate, Candidates};

/// Draws for one choice before falling back to a scan. A miss happens when the drawn
/// backend is unavailable or is the first choice again: sixteen misses in a row are rare
/// unless most of the weight is unavailable or held by the first choice alone.
const DRAWS: usize = 16;

/// Splitmix64's increment (the golden ratio in 64 bits).
const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// The alias table and the generator's seed, built once per snapshot.
pub(super) struct PowerOfTwo {
    alias: Alias,
    seed: u64,
}

impl fmt::Debug for PowerOfTwo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PowerOfTwo")
            .field("columns", &self.alias.columns.len())
            .finish_non_exhaustive()
    }
}

/// A seed from the operating system's randomness: std's `RandomState` keys are random per
/// process (and differ for each new state), hashed with the time for good measure.
pub(super) fn random_seed() -> u64 {
    RandomState::new().hash_one(SystemTime::now())
}

/// The random numbers of one pick: splitmix64 (Steele, Lea and Flood, "Fast Splittable
/// Pseudorandom Number Generators", OOPSLA 2014), whose state is a plain counter advanced by
/// [`GAMMA`] and mixed on the way out. A pick starts its own stream from the `tick`-th number
/// of the selector's stream, the tick being the selector's one atomic counter: one atomic
/// increment per pick however many draws the pick needs, each pick on its own stream, and
/// no lock.
struct Stream(u64);

impl Stream {
    /// The stream of the pick that took `tick` from the selector's counter.
    fn for_pick(seed: u64, tick: u64) -> Stream {
        Stream(mix(
            seed.wrapping_add(tick.wrapping_add(1).wrapping_mul(GAMMA))
        ))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GAMMA);
        mix(self.0)
    }
}

/// Splitmix64's output function (a bijection of 64-bit words).
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Vose's alias table: column `c` stands for `primary` with probability
/// `threshold / 2^32` and for `alias` otherwise; every column is equally likely.
struct Alias {
    columns: Box<[Column]>,
}

#[derive(Clone, Copy, Debug)]
struct Column {
    /// Out of 2^32; 2^32 itself means always `primary`.
    threshold: u64,
    primary: u32,
    alias: u32,
}

impl Alias {
    /// The table for `weights` (indices with weight 0 are never drawn), in exact integer
    /// arithmetic: each column holds `total` units of probability mass, a backend of weight
    /// `w` brings `w * n` units, and the columns' thresholds are the units rounded down to
    /// 1/2^32 of a column.
    fn new(weights: &[u32]) -> Alias {
        let members: Vec<(u32, u64)> = (0u32..)
            .zip(weights)
            .filter(|&(_, &w)| w > 0)
            .map(|(i, &w)| (i, u64::from(w)))
            .collect();
        let n = members.len() as u64;
        let total: u64 = members.iter().map(|&(_, w)| w).sum();
        let mut mass: Vec<u64> = members.iter().map(|&(_, w)| w * n).collect();
        let mut columns: Vec<Column> = members
            .iter()
            .map(|&(i, _)| Column {
                threshold: 1 << 32,
                primary: i,
                alias: i,
            })
            .collect();
        let (mut small, mut large): (Vec<usize>, Vec<usize>) =
            (0..members.len()).partition(|&k| mass[k] < total);
        while let (Some(&s), Some(&l)) = (small.last(), large.last()) {
            small.pop();
            columns[s].threshold = ((u128::from(mass[s]) << 32) / u128::from(total)) as u64;
            columns[s].alias = members[l].0;
            // mass[l] >= total > mass[s]: the large one gives the column the rest.
            mass[l] -= total - mass[s];
            if mass[l] < total {
                large.pop();
                small.push(l);
            }
        }
        // In exact arithmetic whatever is left holds exactly `total`: a full column.
        Alias {
            columns: columns.into_boxed_slice(),
        }
    }

    /// The backend index for the random number `r`: its high 32 bits pick the column
    /// (multiplied and shifted into `0..n`), its low 32 bits decide between the column's two.
    /// `None` when no backend has a weight.
    fn draw(&self, r: u64) -> Option<usize> {
        let n = self.columns.len() as u64;
        let column = self.columns.get((((r >> 32) * n) >> 32) as usize)?;
        Some(if r & 0xffff_ffff < column.threshold {
            column.primary as usize
        } else {
            column.alias as usize
        })
    }

    /// Each backend's exact probability of being drawn, by index (tests check the table).
    #[cfg(test)]
    fn probabilities(&self, len: usize) -> Vec<f64> {
        let mut p = vec![0.0; len];
        let n = self.columns.len() as f64;
        for c in &*self.columns {
            let primary = c.threshold as f64 / 4_294_967_296.0;
            p[c.primary as usize] += primary / n;
            p[c.alias as usize] += (1.0 - primary) / n;
        }
        p
    }
}

/// A drawn backend and what it looked like when drawn.
type Drawn = (usize, Candidate);

impl PowerOfTwo {
    /// The alias table for `weights` (the backends' configured weights, in the candidates'
    /// order) and a generator seeded with `seed`.
    pub(super) fn new(weights: &[u32], seed: u64) -> PowerOfTwo {
        PowerOfTwo {
            alias: Alias::new(weights),
            seed,
        }
    }

    /// Draws two distinct available backends and returns the one with fewer active
    /// connections per unit of weight. On a tie the first drawn wins: as the first draw is
    /// itself proportional to weight, tied backends share by weight.
    pub(super) fn select<C: Candidates + ?Sized>(
        &self,
        candidates: &C,
        counter: &AtomicUsize,
    ) -> Option<usize> {
        let tick = counter.fetch_add(1, Ordering::Relaxed) as u64;
        let (first, second) = self.draw_two(candidates, &mut Stream::for_pick(self.seed, tick))?;
        Some(match second {
            Some(second) if fewer_per_weight(&second.1, &first.1) => second.0,
            _ => first.0,
        })
    }

    /// The two choices: the first, and a second distinct one unless the first is the only
    /// available backend. `None` when no backend is available.
    fn draw_two<C: Candidates + ?Sized>(
        &self,
        candidates: &C,
        random: &mut Stream,
    ) -> Option<(Drawn, Option<Drawn>)> {
        let first = self.draw(candidates, random, None)?;
        let second = match *self.alias.columns {
            // Two weighted backends: the second choice is the other one, without the redraws
            // (on average 1 / (1 - share of the first)) that would find it.
            [a, b] if first.0 == a.primary as usize || first.0 == b.primary as usize => {
                let other = (a.primary ^ b.primary) as usize ^ first.0;
                usable(candidates, other).map(|c| (other, c))
            }
            _ => self.draw(candidates, random, Some(first.0)),
        };
        Some((first, second))
    }

    /// One available backend other than `exclude`, drawn in proportion to weight: from the
    /// alias table, redrawn on a miss, then by a scan.
    fn draw<C: Candidates + ?Sized>(
        &self,
        candidates: &C,
        random: &mut Stream,
        exclude: Option<usize>,
    ) -> Option<Drawn> {
        if !self.alias.columns.is_empty() {
            for _ in 0..DRAWS {
                let Some(i) = self.alias.draw(random.next()) else {
                    break;
                };
                if Some(i) == exclude {
                    continue;
                }
                if let Some(c) = usable(candidates, i) {
                    return Some((i, c));
                }
            }
        }
        scan_draw(candidates, exclude, random.next())
    }
}

/// The candidate at `i` when it can take the connection: inside the view, available and
/// weighted.
fn usable<C: Candidates + ?Sized>(candidates: &C, i: usize) -> Option<Candidate> {
    if i >= candidates.len() {
        return None;
    }
    let c = candidates.get(i);
    (c.available && c.weight > 0).then_some(c)
}

/// One usable candidate other than `exclude`, drawn in proportion to the weights the view
/// shows, from the random number `r`: the slow path, a pass over every candidate.
fn scan_draw<C: Candidates + ?Sized>(
    candidates: &C,
    exclude: Option<usize>,
    r: u64,
) -> Option<Drawn> {
    // Read once: a backend changing state mid-pick must not make the two passes disagree.
    let open: Vec<Drawn> = (0..candidates.len())
        .filter(|&i| Some(i) != exclude)
        .filter_map(|i| usable(candidates, i).map(|c| (i, c)))
        .collect();
    let total: u64 = open.iter().map(|(_, c)| u64::from(c.weight)).sum();
    // Uniform in 0..total (multiply and shift).
    let mut point = ((u128::from(r) * u128::from(total)) >> 64) as u64;
    for &(i, c) in &open {
        let w = u64::from(c.weight);
        if point < w {
            return Some((i, c));
        }
        point -= w;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::super::testing::{CLIENT, borrowed, idle, named};
    use super::super::{Algorithm, Selector};
    use super::*;

    fn seeded(weights: &[u32], seed: u64) -> Selector {
        Selector::with_seed(
            Algorithm::PowerOfTwoChoices,
            &borrowed(&named(weights)),
            seed,
        )
    }

    fn pick(s: &Selector, c: &[Candidate]) -> Option<usize> {
        s.select(c, CLIENT)
    }

    fn loaded(weights: &[u32], active: &[u64]) -> Vec<Candidate> {
        weights
            .iter()
            .zip(active)
            .map(|(&w, &a)| Candidate::new(w, a))
            .collect()
    }

    #[test]
    fn alias_table_is_exact() {
        for weights in [
            vec![1, 2, 3, 4],
            vec![5, 0, 1, 1],
            vec![256, 1, 1, 1, 1, 1, 1, 1],
            vec![7],
            (1..=64).map(|i| 1 + (i * 7) % 5).collect(),
        ] {
            let alias = Alias::new(&weights);
            let total: u32 = weights.iter().sum();
            for (i, p) in alias.probabilities(weights.len()).iter().enumerate() {
                let expected = f64::from(weights[i]) / f64::from(total);
                assert!(
                    (p - expected).abs() < 1e-9,
                    "{weights:?} {i}: {p} {expected}"
                );
            }
        }
        assert_eq!(Alias::new(&[0, 0]).draw(12345), None);
    }

    #[test]
    fn splitmix_is_the_published_sequence() {
        // splitmix64 seeded with 0: the reference implementation's first outputs.
        let mut stream = Stream(0);
        assert_eq!(stream.next(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(stream.next(), 0x6e78_9e6a_a1b9_65f4);
        // A pick's stream starts from the selector's tick-th number.
        assert_eq!(Stream::for_pick(0, 0).0, 0xe220_a839_7b1d_cdaf);
    }

    #[test]
    fn weighted_draws_follow_the_weights() {
        let weights = [1, 2, 3, 4];
        let p = PowerOfTwo::new(&weights, 7);
        let mut stream = Stream(7);
        let c = idle(&weights);
        let draws = 200_000;
        let mut got = [0u32; 4];
        for _ in 0..draws {
            got[p.draw(&c[..], &mut stream, None).expect("a backend").0] += 1;
        }
        for (i, &g) in got.iter().enumerate() {
            let share = f64::from(g) / f64::from(draws);
            let expected = f64::from(weights[i]) / 10.0;
            println!(
                "p2c draw weight {}: {:.4} (expected {expected})",
                weights[i], share
            );
            // One standard deviation is at most 0.0011 here; the bound is 4 of them.
            assert!((share - expected).abs() < 0.0045, "{i}: {share}");
        }
    }

    #[test]
    fn the_less_loaded_of_the_two_always_wins() {
        // Only two available: both are always drawn, and the lighter one always wins.
        let mut c = loaded(&[1, 1, 1, 1], &[7, 9, 3, 0]);
        c[3].available = false;
        c[1].available = false;
        let s = seeded(&[1, 1, 1, 1], 1);
        for _ in 0..100 {
            assert_eq!(pick(&s, &c), Some(2));
        }
        // Per unit of weight: 5/3 < 2/1.
        let c = loaded(&[3, 1], &[5, 2]);
        let s = seeded(&[3, 1], 2);
        for _ in 0..100 {
            assert_eq!(pick(&s, &c), Some(0));
        }
        // Three equal ones: the busiest never wins, the idlest whenever drawn (2 pairs of 3).
        let c = loaded(&[1, 1, 1], &[0, 5, 9]);
        let s = seeded(&[1, 1, 1], 3);
        let mut got = [0u32; 3];
        for _ in 0..30_000 {
            got[pick(&s, &c).expect("a backend")] += 1;
        }
        println!("p2c three backends, active 0, 5, 9: {got:?}");
        assert_eq!(got[2], 0);
        assert!((19_500..=20_500).contains(&got[0]), "{got:?}");
    }

    #[test]
    fn every_pick_is_the_lighter_of_its_pair() {
        let weights = [1, 2, 3, 4, 1, 2, 3, 4];
        let mut c = loaded(&weights, &[4, 1, 9, 12, 0, 6, 2, 8]);
        c[5].available = false;
        // Two selectors with the same seed draw the same numbers: one shows the pair, the
        // other picks.
        let drawn = seeded(&weights, 42);
        let picked = seeded(&weights, 42);
        let p = policy(&drawn);
        let mut pairs = std::collections::BTreeSet::new();
        for _ in 0..2_000 {
            let tick = drawn.counter.fetch_add(1, Ordering::Relaxed) as u64;
            let (a, b) = p
                .draw_two(&c[..], &mut Stream::for_pick(42, tick))
                .expect("a pair");
            let b = b.expect("a second choice");
            assert_ne!(a.0, b.0);
            assert!(c[a.0].available && c[b.0].available);
            let lighter = if fewer_per_weight(&b.1, &a.1) {
                b.0
            } else {
                a.0
            };
            assert_eq!(pick(&picked, &c), Some(lighter), "{a:?} {b:?}");
            pairs.insert((a.0.min(b.0), a.0.max(b.0)));
        }
        // 7 available backends: all 21 pairs come up.
        assert_eq!(pairs.len(), 21);
    }

    fn policy(s: &Selector) -> &PowerOfTwo {
        match &s.policy {
            super::super::Policy::PowerOfTwoChoices(p) => p,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn exact_sequence_for_a_seed() {
        let weights = [1, 1, 1, 1];
        let s = seeded(&weights, 2001);
        let c = loaded(&weights, &[3, 1, 2, 0]);
        let seq: Vec<usize> = (0..12).map(|_| pick(&s, &c).expect("a backend")).collect();
        println!("p2c seed 2001: {seq:?}");
        assert_eq!(seq, SEED_2001);
    }

    /// What seed 2001 picks from four equal backends with 3, 1, 2 and 0 connections: pinned
    /// so a change of the generator or of the draws shows. Backend 3 (idle) wins whenever it
    /// is drawn, backend 0 (the busiest) never.
    const SEED_2001: [usize; 12] = [3, 2, 3, 2, 3, 3, 1, 3, 1, 3, 3, 3];

    #[test]
    fn ties_share_by_weight() {
        // All idle: every pair ties and the first draw wins, so picks follow the weights.
        let weights = [1, 2, 3, 4];
        let s = seeded(&weights, 9);
        let c = idle(&weights);
        let mut got = [0u32; 4];
        for _ in 0..100_000 {
            got[pick(&s, &c).expect("a backend")] += 1;
        }
        println!("p2c idle weights {weights:?}: {got:?} of 100000");
        for (i, &g) in got.iter().enumerate() {
            let expected = 10_000.0 * f64::from(weights[i]);
            assert!((f64::from(g) - expected).abs() < 600.0, "{got:?}");
        }
        // Two backends (the second choice is simply the other one): 1 : 3 as well.
        let s = seeded(&[1, 3], 10);
        let c = idle(&[1, 3]);
        let light = (0..40_000).filter(|_| pick(&s, &c) == Some(0)).count();
        println!("p2c idle weights [1, 3]: {light} of 40000 to the first");
        assert!((9_600..=10_400).contains(&light), "{light}");
    }

    #[test]
    fn unavailable_never_chosen_one_available_none() {
        let weights = vec![1; 64];
        let s = seeded(&weights, 5);
        let mut c = idle(&weights);
        for (i, candidate) in c.iter_mut().enumerate() {
            candidate.available = i % 3 == 0;
        }
        for _ in 0..5_000 {
            let i = pick(&s, &c).expect("a backend");
            assert!(i.is_multiple_of(3), "{i}");
        }
        // One available among 64: the draws miss, the scan finds it.
        for (i, candidate) in c.iter_mut().enumerate() {
            candidate.available = i == 41;
        }
        for _ in 0..100 {
            assert_eq!(pick(&s, &c), Some(41));
        }
        for candidate in &mut c {
            candidate.available = false;
        }
        assert_eq!(pick(&s, &c), None);
        assert_eq!(pick(&s, &[]), None);
        // Weight 0 in the view: never chosen, even when marked available.
        let mut c = idle(&[1, 1]);
        c[0] = Candidate {
            weight: 0,
            available: true,
            ..c[0]
        };
        let s = seeded(&[1, 1], 6);
        for _ in 0..100 {
            assert_eq!(pick(&s, &c), Some(1));
        }
    }

    #[test]
    fn two_choices_keep_the_busiest_close_to_the_mean() {
        // Mitzenmacher's balls into bins: 64 equal backends, 64,000 connections that stay
        // open. One random choice leaves the busiest far above the mean of 1,000; two
        // choices keep it within a few.
        let n = 64;
        let weights = vec![1; n];
        let s = seeded(&weights, 11);
        let mut c = idle(&weights);
        for _ in 0..64_000 {
            let i = pick(&s, &c).expect("a backend");
            c[i].active += 1;
        }
        let max = c.iter().map(|c| c.active).max().unwrap_or(0);
        let min = c.iter().map(|c| c.active).min().unwrap_or(0);
        // One choice, the same generator: the alias draw alone.
        let p = PowerOfTwo::new(&weights, 11);
        let mut stream = Stream(11);
        let mut one = vec![0u64; n];
        let all = idle(&weights);
        for _ in 0..64_000 {
            one[p.draw(&all[..], &mut stream, None).expect("a backend").0] += 1;
        }
        let one_max = one.iter().copied().max().unwrap_or(0);
        println!(
            "p2c 64 backends, 64000 connections: two choices max {max} min {min}; one choice max {one_max}"
        );
        assert!(max - 1_000 <= 3 && 1_000 - min <= 3, "{max} {min}");
        assert!(one_max > 1_050, "{one_max}");
    }
}
