//! Maglev hashing of the client's IP address: Eisenbud et al., "Maglev: A Fast and Reliable
//! Software Network Load Balancer", NSDI 2016, section 3.4 ("Consistent Hashing").
//!
//! Each backend has a preference list, a permutation of the table's entries given by an
//! `offset` and a `skip` hashed from its name: `(offset + j * skip) mod M` for
//! `j = 0, 1, ...`. Backends take turns claiming their next preferred entry that is still
//! free until the table is full (the paper's pseudocode 1, `Populate`). A client goes to the
//! backend of entry `hash(client) mod M`.
//!
//! Weighted: a backend of weight `w` takes its `k`-th turn at time `k / w` (turns at the same
//! time go in name order), so over the fill each backend claims entries in proportion to its
//! weight, its turns interleaved with the others' rather than in blocks. With equal weights
//! this is the paper's round-by-round fill exactly. A backend's turn times depend on its own
//! weight only, so adding, removing or reweighting one backend disturbs the others no more
//! than the contention for entries implies. Weight 0: no turn, no entry.
//!
//! The table depends on the set of (name, weight) pairs only: backends are sorted by name
//! before the fill, and every hash is XXH3 (`xxhash-rust`), whose output is specified and
//! fixed across versions, platforms and processes, with fixed seeds. So every instance of
//! ballast, whatever its order of backends in the file, its build or its restarts, sends a
//! client to the same backend.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::fmt;
use std::net::IpAddr;

use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::Candidates;

/// Entries in a Maglev lookup table (the paper's `M`): a prime, so that every `skip` in
/// `1..M` walks all entries, and far above the backend count (the paper keeps `M > 100 N`
/// for a balance within 1%), the size the paper evaluates. The table holds one `u32` per
/// entry: 256 KiB per Maglev service and configuration snapshot.
pub const MAGLEV_TABLE_SIZE: usize = 65_537;

/// Seeds of the three XXH3 hashes: a backend name's `offset` and `skip` (the paper's `h1` and
/// `h2`: two differently seeded hashes), and a client address. Part of the table's
/// definition: changing one moves nearly every client.
const OFFSET_SEED: u64 = 0x6d61_676c_6576_0001;
const SKIP_SEED: u64 = 0x6d61_676c_6576_0002;
const CLIENT_SEED: u64 = 0x6d61_676c_6576_0003;

/// A Maglev lookup table, built once per snapshot.
pub(super) struct Maglev {
    /// The backend of each entry, as its index in the order given to `Selector::new`; empty
    /// when no backend has a weight above 0.
    table: Box<[u32]>,
    /// How many backends own at least one entry.
    owners: usize,
}

impl fmt::Debug for Maglev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Maglev")
            .field("entries", &self.table.len())
            .field("owners", &self.owners)
            .finish()
    }
}

/// One backend's preference list: entry `offset`, then every `skip`-th entry after it.
#[derive(Clone, Copy, Debug)]
struct Preference {
    offset: usize,
    skip: usize,
    weight: u32,
    /// The backend's index in the order given to `Selector::new`.
    index: u32,
}

impl Preference {
    /// The paper's `offset = h1(name) mod M` and `skip = h2(name) mod (M - 1) + 1`.
    fn hashed(name: &str, weight: u32, index: u32, size: usize) -> Preference {
        let hash = |seed| xxh3_64_with_seed(name.as_bytes(), seed);
        Preference {
            offset: (hash(OFFSET_SEED) % size as u64) as usize,
            skip: (hash(SKIP_SEED) % (size as u64 - 1) + 1) as usize,
            weight,
            index,
        }
    }
}

impl Maglev {
    /// The table for `backends` (name and weight, in the candidates' order), of
    /// [`MAGLEV_TABLE_SIZE`] entries.
    pub(super) fn new(backends: &[(&str, u32)]) -> Maglev {
        Maglev::with_size(backends, MAGLEV_TABLE_SIZE)
    }

    /// The table for `backends`, of `size` entries (a prime).
    pub(super) fn with_size(backends: &[(&str, u32)], size: usize) -> Maglev {
        debug_assert!(
            size >= 2
                && (2..size)
                    .take_while(|d| d * d <= size)
                    .all(|d| !size.is_multiple_of(d))
        );
        // Sorted by name (then weight and index, which only matter for duplicate names, which
        // the configuration rejects): the fill must not depend on the file's order.
        let mut members: Vec<(&str, u32, u32)> = backends
            .iter()
            .zip(0u32..)
            .filter(|((_, weight), _)| *weight > 0)
            .map(|(&(name, weight), index)| (name, weight, index))
            .collect();
        members.sort_unstable();
        let preferences: Vec<Preference> = members
            .iter()
            .map(|&(name, weight, index)| Preference::hashed(name, weight, index, size))
            .collect();
        let table = populate(&preferences, size);
        let mut owned = vec![false; backends.len()];
        for &i in &table {
            owned[i as usize] = true;
        }
        Maglev {
            owners: owned.iter().filter(|&&o| o).count(),
            table,
        }
    }

    /// The backend for `client`: the owner of its entry when available, else the first
    /// available owner of the entries after it, in the table's order, so a client's
    /// fallback is the same on every pick and spreads an unavailable backend's clients over
    /// the others in proportion to their entries. Each backend is asked about once: the
    /// walk ends when every owner has been found unavailable, and then the backends without
    /// an entry (weight 0 in the table) are scanned, in case the view says otherwise.
    pub(super) fn select<C: Candidates + ?Sized>(
        &self,
        candidates: &C,
        client: IpAddr,
    ) -> Option<usize> {
        let n = candidates.len();
        let open = |i: usize| i < n && candidates.get(i).available;
        let mut seen = Seen::default();
        if !self.table.is_empty() {
            let start = entry_of(client, self.table.len());
            let first = self.table[start] as usize;
            // The common case: one hash, one table read, one candidate.
            if open(first) {
                return Some(first);
            }
            seen.insert(first);
            let mut unavailable = 1;
            let (before, after) = self.table.split_at(start);
            for &entry in after[1..].iter().chain(before) {
                if unavailable == self.owners {
                    break;
                }
                let i = entry as usize;
                if !seen.insert(i) {
                    continue;
                }
                if open(i) {
                    return Some(i);
                }
                unavailable += 1;
            }
        }
        (0..n).find(|&i| !seen.contains(i) && open(i))
    }

    /// The table (tests compare tables).
    #[cfg(test)]
    fn table(&self) -> &[u32] {
        &self.table
    }
}

/// The entry of `client` in a table of `size` entries: its hash reduced to `0..size` by
/// multiplication and shift (Lemire's fast range), as uniform as `mod` without a division.
/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, how a dual-stack listener sees an IPv4
/// client) hashes as the IPv4 address, so both listeners agree.
fn entry_of(client: IpAddr, size: usize) -> usize {
    ((u128::from(client_hash(client)) * size as u128) >> 64) as usize
}

/// XXH3 of the client address's octets (4 for IPv4, 16 for IPv6).
fn client_hash(client: IpAddr) -> u64 {
    match client.to_canonical() {
        IpAddr::V4(v4) => xxh3_64_with_seed(&v4.octets(), CLIENT_SEED),
        IpAddr::V6(v6) => xxh3_64_with_seed(&v6.octets(), CLIENT_SEED),
    }
}

/// One backend's next turn in the fill: its `claimed`-th entry, due at time
/// `claimed / weight`; turns due at the same time go by `rank`, the backend's place in name
/// order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Turn {
    claimed: u64,
    weight: u64,
    rank: usize,
}

impl Ord for Turn {
    fn cmp(&self, other: &Self) -> Ordering {
        // claimed / weight against other.claimed / other.weight, without division: both
        // products stay below 2^17 * 2^32.
        (self.claimed * other.weight)
            .cmp(&(other.claimed * self.weight))
            .then(self.rank.cmp(&other.rank))
    }
}

impl PartialOrd for Turn {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The paper's `Populate`, weighted: turns in order of time (see the module's doc), each
/// claiming the backend's next preferred free entry, until all `size` entries are taken.
/// `preferences` are in name order, and none has weight 0.
fn populate(preferences: &[Preference], size: usize) -> Box<[u32]> {
    const FREE: u32 = u32::MAX;
    if preferences.is_empty() {
        return Box::new([]);
    }
    let mut table = vec![FREE; size];
    // Where each backend's walk of its preference list stands.
    let mut next: Vec<usize> = preferences.iter().map(|p| p.offset).collect();
    let mut turns: BinaryHeap<Reverse<Turn>> = preferences
        .iter()
        .enumerate()
        .map(|(rank, p)| {
            Reverse(Turn {
                claimed: 0,
                weight: u64::from(p.weight),
                rank,
            })
        })
        .collect();
    for _ in 0..size {
        let Some(Reverse(turn)) = turns.pop() else {
            break;
        };
        let p = preferences[turn.rank];
        // `size` is prime and 1 <= skip < size, so the walk visits every entry before
        // coming back: it finds a free one while the table is not full.
        let mut c = next[turn.rank];
        while table[c] != FREE {
            c = (c + p.skip) % size;
        }
        table[c] = p.index;
        next[turn.rank] = (c + p.skip) % size;
        turns.push(Reverse(Turn {
            claimed: turn.claimed + 1,
            ..turn
        }));
    }
    table.into_boxed_slice()
}

/// The backend indices a lookup has already asked about: a bit set, on the stack for the
/// first 256 indices.
#[derive(Default)]
struct Seen {
    inline: [u64; Seen::INLINE],
    spill: Vec<u64>,
}

impl Seen {
    const INLINE: usize = 4;

    fn word(&mut self, i: usize) -> &mut u64 {
        match i / 64 {
            w if w < Self::INLINE => &mut self.inline[w],
            w => {
                let k = w - Self::INLINE;
                if self.spill.len() <= k {
                    self.spill.resize(k + 1, 0);
                }
                &mut self.spill[k]
            }
        }
    }

    /// Adds `i`; whether it was not there yet.
    fn insert(&mut self, i: usize) -> bool {
        let word = self.word(i);
        let bit = 1u64 << (i % 64);
        let new = *word & bit == 0;
        *word |= bit;
        new
    }

    fn contains(&self, i: usize) -> bool {
        let word = match i / 64 {
            w if w < Self::INLINE => self.inline[w],
            w => self.spill.get(w - Self::INLINE).copied().unwrap_or(0),
        };
        word & (1u64 << (i % 64)) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{borrowed, idle, named};
    use super::super::{Algorithm, Candidate, Selector};
    use super::*;
    use std::collections::BTreeMap;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const CLIENTS: u32 = 100_000;

    /// Client `k` of the synthetic population: 10.0.0.0 + k (never contacted: only hashed).
    fn client(k: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + k))
    }

    fn maglev(backends: &[(String, u32)]) -> Maglev {
        Maglev::new(&borrowed(backends))
    }

    /// Each backend name's entries, as a set of positions: what the tables of two orders or
    /// two builds must agree on.
    fn entries_by_name(m: &Maglev, backends: &[(String, u32)]) -> BTreeMap<String, Vec<usize>> {
        let mut by_name: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (pos, &i) in m.table().iter().enumerate() {
            by_name
                .entry(backends[i as usize].0.clone())
                .or_default()
                .push(pos);
        }
        by_name
    }

    /// The owner's name of every entry.
    fn names(m: &Maglev, backends: &[(String, u32)]) -> Vec<String> {
        m.table()
            .iter()
            .map(|&i| backends[i as usize].0.clone())
            .collect()
    }

    /// Shares of the table and of the synthetic clients, against the weight shares; returns
    /// the largest relative error of each: |observed / expected - 1|.
    fn balance(weights: &[u32]) -> (f64, f64) {
        let backends = named(weights);
        let m = maglev(&backends);
        let s = Selector::new(Algorithm::Maglev, &borrowed(&backends));
        let c = idle(weights);
        let total: u32 = weights.iter().sum();
        let mut entries = vec![0u32; weights.len()];
        for &i in m.table() {
            entries[i as usize] += 1;
        }
        let mut clients = vec![0u32; weights.len()];
        for k in 0..CLIENTS {
            clients[s.select(&c[..], client(k)).expect("a backend")] += 1;
        }
        let worst = |counts: &[u32], of: u32| {
            counts
                .iter()
                .zip(weights)
                .map(|(&got, &w)| {
                    let expected = f64::from(w) / f64::from(total);
                    (f64::from(got) / f64::from(of) / expected - 1.0).abs()
                })
                .fold(0.0, f64::max)
        };
        let (table_error, client_error) = (
            worst(&entries, MAGLEV_TABLE_SIZE as u32),
            worst(&clients, CLIENTS),
        );
        if weights.len() <= 10 {
            println!(
                "maglev weights {weights:?}: entries {entries:?}, clients {clients:?} of {CLIENTS}"
            );
        }
        println!(
            "maglev {} backends: worst share error, table {:.3}%, clients {:.2}% (relative to the weight share)",
            weights.len(),
            table_error * 100.0,
            client_error * 100.0
        );
        (table_error, client_error)
    }

    #[test]
    fn paper_example_fills_and_refills_as_published() {
        // The paper's Table 1: M = 7, B0 (offset 3, skip 4), B1 (0, 2), B2 (3, 1).
        let p = |offset, skip, index| Preference {
            offset,
            skip,
            weight: 1,
            index,
        };
        let all = [p(3, 4, 0), p(0, 2, 1), p(3, 1, 2)];
        assert_eq!(&*populate(&all, 7), [1, 0, 1, 0, 2, 2, 0]);
        // B1 removed: only its entries (0 and 2) and one of B0's (6) change hands.
        assert_eq!(&*populate(&[all[0], all[2]], 7), [0, 0, 0, 0, 2, 2, 2]);
    }

    #[test]
    fn weights_interleave_turns_by_time() {
        // Weight 2 takes turns at 0, 1/2, 1, 3/2; weight 1 at 0, 1: a, b, a, a, b, a, ...
        let p = |offset, weight, index| Preference {
            offset,
            skip: 1,
            weight,
            index,
        };
        let table = populate(&[p(0, 2, 0), p(3, 1, 1)], 7);
        // a: 0, 1, 2 (at 0, 1/2, 1), b: 3 (at 0) then 4 (at 1), a: 5 (3/2), 6 (2, before b).
        assert_eq!(&*table, [0, 0, 0, 1, 1, 0, 0]);
    }

    #[test]
    fn hashes_are_pinned() {
        // XXH3 is specified: these values hold on every platform and version. A change here
        // moves every client of every deployment.
        assert_eq!(
            client_hash(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))),
            client_hash(IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped()))
        );
        assert_eq!(
            client_hash(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))),
            0x95ff_fbbc_f41c_3cb2
        );
        assert_eq!(
            client_hash(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            0xd354_cd4f_6d63_7573
        );
        let p = Preference::hashed("vm4", 1, 0, MAGLEV_TABLE_SIZE);
        assert_eq!((p.offset, p.skip), (28_248, 33_837));
    }

    #[test]
    fn three_weighted_backends_share_by_weight() {
        let (table, clients) = balance(&[1, 2, 3]);
        // The table is within 0.1% of the weight shares; 100,000 hashed clients within 2%
        // (relative: b0's expected 16.67% may be observed from 16.33% to 17.00%).
        assert!(table <= 0.001, "{table}");
        assert!(clients <= 0.02, "{clients}");
    }

    #[test]
    fn hundred_backends_share_evenly() {
        let (table, clients) = balance(&[1; 100]);
        // The table gives each of 100 backends 655 or 656 entries: within 0.1% of 1%. With
        // 1,000 clients expected per backend, the sampling noise alone is about 3.2% (one
        // standard deviation), so the clients are held to 5 deviations, 16%: 0.84% to 1.16%.
        assert!(table <= 0.001, "{table}");
        assert!(clients <= 0.16, "{clients}");
        // Weights 1 to 4: a weight-1 backend's 1/250 of the table is 262 entries, so one entry
        // more or less is already 0.38%.
        let (table, clients) = balance(&(1..=100).map(|i| 1 + i % 4).collect::<Vec<_>>());
        assert!(table <= 0.005, "{table}");
        assert!(clients <= 0.30, "{clients}");
    }

    /// Removes backend `removed` of `weights`'s backends: returns the share of the other
    /// backends' entries that changed hands (as a fraction of those entries), and checks that
    /// adding it back restores the table exactly.
    fn disruption(weights: &[u32], removed: usize) -> f64 {
        let backends = named(weights);
        let before = names(&maglev(&backends), &backends);
        let mut fewer = backends.clone();
        let gone = fewer.remove(removed).0;
        let after = names(&maglev(&fewer), &fewer);
        let others = before.iter().filter(|&name| *name != gone).count();
        let moved = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| **b != gone && b != a)
            .count();
        assert!(!after.contains(&gone));
        assert_eq!(names(&maglev(&backends), &backends), before, "back again");
        moved as f64 / others as f64
    }

    #[test]
    fn removing_a_backend_moves_few_of_the_others_entries() {
        let mut worst: f64 = 0.0;
        for (weights, removed) in [
            (vec![1; 10], 3),
            (vec![1; 100], 0),
            (vec![1; 100], 57),
            (vec![1; 100], 99),
            ((1..=100).map(|i| 1 + i % 4).collect(), 10),
            (vec![1, 2, 3], 1),
        ] {
            let moved = disruption(&weights, removed);
            println!(
                "maglev {} backends, one removed: {:.3}% of the other entries changed",
                weights.len(),
                moved * 100.0
            );
            worst = worst.max(moved);
        }
        assert!(worst <= 0.02, "{worst}");
    }

    #[test]
    fn the_order_of_backends_does_not_matter() {
        let backends: Vec<(String, u32)> =
            (0..20).map(|i| (format!("web-{i}"), 1 + i % 3)).collect();
        let reference = entries_by_name(&maglev(&backends), &backends);
        let mut reversed = backends.clone();
        reversed.reverse();
        // A fixed shuffle: position i takes backend 7i mod 20.
        let shuffled: Vec<(String, u32)> = (0..20).map(|i| backends[i * 7 % 20].clone()).collect();
        for order in [reversed, shuffled] {
            assert_eq!(entries_by_name(&maglev(&order), &order), reference);
        }
        // Weight 0 takes no entry, and a drained backend's presence changes nothing.
        let mut drained = backends.clone();
        drained.push(("zz-drained".into(), 0));
        assert_eq!(entries_by_name(&maglev(&drained), &drained), reference);
    }

    #[test]
    fn an_unavailable_backends_clients_fall_back_in_table_order() {
        let weights = [1; 10];
        let backends = named(&weights);
        let m = maglev(&backends);
        let s = Selector::new(Algorithm::Maglev, &borrowed(&backends));
        let all = idle(&weights);
        let mut down = all.clone();
        down[4].available = false;
        let (mut moved, mut stayed) = (0, 0);
        for k in 0..10_000 {
            let addr = client(k);
            let usual = s.select(&all[..], addr).expect("a backend");
            let now = s.select(&down[..], addr).expect("a backend");
            if usual != 4 {
                assert_eq!(now, usual, "{addr}: only backend 4's clients move");
                stayed += 1;
                continue;
            }
            // The first owner of a following entry that is not backend 4.
            let start = entry_of(addr, MAGLEV_TABLE_SIZE);
            let expected = (1..MAGLEV_TABLE_SIZE)
                .map(|d| m.table()[(start + d) % MAGLEV_TABLE_SIZE] as usize)
                .find(|&i| i != 4);
            assert_eq!(Some(now), expected, "{addr}");
            for _ in 0..3 {
                assert_eq!(s.select(&down[..], addr), Some(now), "{addr}: consistently");
            }
            moved += 1;
        }
        assert!(moved > 800 && stayed > 8_000, "{moved} {stayed}");
        // Two down (the first backend refused, say): the walk passes both.
        down[expected_second(&m, &s, &all)].available = false;
        for k in 0..1_000 {
            let now = s.select(&down[..], client(k)).expect("a backend");
            assert!(down[now].available);
        }
    }

    /// Some backend other than 4 that a client of 4 falls back to.
    fn expected_second(m: &Maglev, s: &Selector, all: &[Candidate]) -> usize {
        let addr = (0..)
            .map(client)
            .find(|&a| s.select(all, a) == Some(4))
            .expect("a client of backend 4");
        let start = entry_of(addr, m.table().len());
        (1..)
            .map(|d| m.table()[(start + d) % m.table().len()] as usize)
            .find(|&i| i != 4)
            .expect("another owner")
    }

    #[test]
    fn nothing_available_or_nothing_weighted() {
        let backends = named(&[1, 1, 1]);
        let s = Selector::new(Algorithm::Maglev, &borrowed(&backends));
        let mut c = idle(&[1, 1, 1]);
        for candidate in &mut c {
            candidate.available = false;
        }
        assert_eq!(s.select(&c[..], client(1)), None);
        // All drained in the table, yet the view offers one: the last scan finds it.
        let s = Selector::new(Algorithm::Maglev, &borrowed(&named(&[0, 0, 0])));
        c[2].available = true;
        assert_eq!(s.select(&c[..], client(1)), Some(2));
        // A view shorter than the table: indices past its end are never returned.
        let s = Selector::new(Algorithm::Maglev, &borrowed(&named(&[1; 8])));
        let c = idle(&[1, 1]);
        for k in 0..100 {
            assert!(s.select(&c[..], client(k)).is_some_and(|i| i < 2));
        }
    }

    #[test]
    fn seen_set_spills_past_the_inline_words() {
        let mut seen = Seen::default();
        for i in [0, 63, 64, 255, 256, 1_000, 70_000] {
            assert!(!seen.contains(i));
            assert!(seen.insert(i));
            assert!(!seen.insert(i));
            assert!(seen.contains(i));
        }
        assert!(!seen.contains(999) && !seen.contains(100_000));
    }

    #[test]
    fn large_pool_all_down_but_one() {
        let weights = vec![1; 300];
        let s = Selector::new(Algorithm::Maglev, &borrowed(&named(&weights)));
        let mut c = idle(&weights);
        for (i, candidate) in c.iter_mut().enumerate() {
            candidate.available = i == 299;
        }
        for k in 0..50 {
            assert_eq!(s.select(&c[..], client(k)), Some(299));
        }
    }
}
