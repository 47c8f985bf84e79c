//! The four strategies, the `Strategy` factory and input validation, as
//! specifications: exact sequences worked out by hand, an nginx reference
//! implementation the fast weighted round robin must match pick for pick,
//! and property tests for every invariant the module docs state.
//!
//! Members are named `a`, `b`, `c`, ... in sequences (index 0 is `a`).

use std::collections::{HashMap, HashSet};

use proptest::prelude::*;
use proptest::strategy::Strategy as _;
use tower_lb::strategy::consistent_hash::DEFAULT_VNODES;
use tower_lb::{
    Backend, Balancer, BuildBalancer, ConsistentHash, Error, Member, Random, RoundRobin, Strategy,
    WeightedRoundRobin, MAX_ID_LEN, MAX_WEIGHT,
};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A member with id `b{i}`, the given weight and up/down state.
fn member(i: usize, weight: u32, up: bool) -> Member {
    let backend = Backend::new(&format!("http://10.0.{}.{}:80", i / 256, i % 256))
        .unwrap()
        .with_id(format!("b{i}"))
        .unwrap()
        .with_weight(weight)
        .unwrap();
    Member::new(backend).with_up(up)
}

/// Members `b0..` with these weights, all up.
fn weighted(weights: &[u32]) -> Vec<Member> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &w)| member(i, w, true))
        .collect()
}

/// Members `b0..` with these (weight, up) specs.
fn specs(specs: &[(u32, bool)]) -> Vec<Member> {
    specs
        .iter()
        .enumerate()
        .map(|(i, &(w, up))| member(i, w, up))
        .collect()
}

/// `n` picks without a key.
fn picks(b: &dyn Balancer, n: usize) -> Vec<usize> {
    (0..n).map(|_| b.pick(None).unwrap()).collect()
}

/// `n` picks as letters, `a` for member 0.
fn letters(b: &dyn Balancer, n: usize) -> String {
    picks(b, n)
        .into_iter()
        .map(|i| char::from(b'a' + i as u8))
        .collect()
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// nginx's `ngx_http_upstream_get_peer`, transcribed: every pick scans all
/// peers, skips the down ones, adds each weight to its `current_weight`,
/// remembers the first peer with the strictly largest `current_weight`, and
/// subtracts the total weight of the peers it scanned from the winner.
/// (`effective_weight` only differs from `weight` after failures, which a
/// balancer does not model, so it is `weight` here.) Returns indices into
/// the full list.
fn nginx_swrr(peers: &[(u32, bool)], n: usize) -> Vec<usize> {
    let mut current = vec![0i128; peers.len()];
    (0..n)
        .map(|_| {
            let mut best: Option<usize> = None;
            let mut total = 0i128;
            for (i, &(weight, up)) in peers.iter().enumerate() {
                if !up {
                    continue;
                }
                current[i] += i128::from(weight);
                total += i128::from(weight);
                if best.is_none_or(|b| current[i] > current[b]) {
                    best = Some(i);
                }
            }
            let best = best.expect("the reference needs a peer that is up");
            current[best] -= total;
            best
        })
        .collect()
}

/// Every balancer the crate ships, built over `members`. The ring uses few
/// virtual nodes: these properties do not depend on the count, and building
/// is cheaper.
fn all_balancers(members: &[Member]) -> Vec<(&'static str, Box<dyn Balancer>)> {
    vec![
        ("random", Box::new(Random::new(members))),
        ("random_weighted", Box::new(Random::weighted(members))),
        ("round_robin", Box::new(RoundRobin::new(members))),
        (
            "weighted_round_robin",
            Box::new(WeightedRoundRobin::new(members)),
        ),
        (
            "consistent_hash",
            Box::new(ConsistentHash::with_vnodes(members, 16).unwrap()),
        ),
    ]
}

/// Up to `max` members: weights 1..=50, about three in four up.
fn member_specs(
    min: usize,
    max: usize,
) -> impl proptest::strategy::Strategy<Value = Vec<(u32, bool)>> {
    prop::collection::vec((1u32..=50, prop::bool::weighted(0.75)), min..=max)
}

// ---------------------------------------------------------------------------
// Round robin
// ---------------------------------------------------------------------------

#[test]
fn round_robin_rotates_in_listing_order_from_the_first_backend() {
    let rr = RoundRobin::new(&weighted(&[1, 1, 1]));
    assert_eq!(letters(&rr, 8), "abcabcab");
}

#[test]
fn round_robin_ignores_weights() {
    let rr = RoundRobin::new(&weighted(&[5, 1, 1]));
    assert_eq!(letters(&rr, 6), "abcabc");
}

#[test]
fn round_robin_skips_down_backends() {
    let rr = RoundRobin::new(&specs(&[(1, true), (1, false), (1, true), (1, true)]));
    assert_eq!(letters(&rr, 7), "acdacda");
}

#[test]
fn round_robin_failover_is_the_rotation_after_the_failed_backend() {
    let rr = RoundRobin::new(&weighted(&[1, 1, 1, 1]));
    assert_eq!(rr.failover(None, 1), [2, 3, 0]);
    assert_eq!(rr.failover(None, 3), [0, 1, 2]);
    let with_down = RoundRobin::new(&specs(&[(1, true), (1, false), (1, true), (1, true)]));
    assert_eq!(with_down.failover(None, 0), [2, 3]);
    // A failed backend that is down itself: every backend that is up.
    assert_eq!(with_down.failover(None, 1), [0, 2, 3]);
}

proptest! {
    /// Over any `m` consecutive picks (after any number `skip` of earlier
    /// picks), each of the `k` backends that are up is picked `⌊m/k⌋` or
    /// `⌈m/k⌉` times, and a backend that is down never.
    #[test]
    fn round_robin_is_fair_over_any_run_of_picks(
        peers in member_specs(1, 20),
        skip in 0usize..100,
        m in 0usize..300,
    ) {
        let members = specs(&peers);
        let k = peers.iter().filter(|p| p.1).count();
        prop_assume!(k > 0);
        let rr = RoundRobin::new(&members);
        picks(&rr, skip);
        let mut counts = vec![0usize; peers.len()];
        for i in picks(&rr, m) {
            counts[i] += 1;
        }
        for (i, &(_, up)) in peers.iter().enumerate() {
            if up {
                prop_assert!(counts[i] == m / k || counts[i] == m.div_ceil(k), "{counts:?}");
            } else {
                prop_assert_eq!(counts[i], 0);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Smooth weighted round robin: sequences worked out by hand
// ---------------------------------------------------------------------------
//
// nginx: on every pick add each weight to its current weight, pick the
// largest current weight (the first listed on a tie), subtract the total
// from the winner.

/// Weights 5,1,1 (total 7), the source article's example:
///
/// | pick | current after adding | winner | after subtracting 7 |
/// |---|---|---|---|
/// | 1 | 5, 1, 1 | a | -2, 1, 1 |
/// | 2 | 3, 2, 2 | a | -4, 2, 2 |
/// | 3 | 1, 3, 3 | b | 1, -4, 3 |
/// | 4 | 6, -3, 4 | a | -1, -3, 4 |
/// | 5 | 4, -2, 5 | c | 4, -2, -2 |
/// | 6 | 9, -1, -1 | a | 2, -1, -1 |
/// | 7 | 7, 0, 0 | a | 0, 0, 0 |
#[test]
fn swrr_5_1_1_is_a_a_b_a_c_a_a_repeating() {
    let wrr = WeightedRoundRobin::new(&weighted(&[5, 1, 1]));
    assert_eq!(wrr.period(), 7);
    assert_eq!(letters(&wrr, 21), "aabacaa".repeat(3));
}

/// Weights 2,1 (total 3): `2,1 → a (-1,1)`, `1,2 → b (1,-1)`, `3,0 → a (0,0)`.
#[test]
fn swrr_2_1_is_a_b_a_repeating() {
    let wrr = WeightedRoundRobin::new(&weighted(&[2, 1]));
    assert_eq!(letters(&wrr, 9), "aba".repeat(3));
}

/// Weights 3,2 (total 5): `3,2 → a (-2,2)`, `1,4 → b (1,-1)`,
/// `4,1 → a (-1,1)`, `2,3 → b (2,-2)`, `5,0 → a (0,0)`.
#[test]
fn swrr_3_2_is_a_b_a_b_a_repeating() {
    let wrr = WeightedRoundRobin::new(&weighted(&[3, 2]));
    assert_eq!(letters(&wrr, 10), "ababa".repeat(2));
}

/// Weights 4,2,1 (total 7): `4,2,1 → a (-3,2,1)`, `1,4,2 → b (1,-3,2)`,
/// `5,-1,3 → a (-2,-1,3)`, `2,1,4 → c (2,1,-3)`, `6,3,-2 → a (-1,3,-2)`,
/// `3,5,-1 → b (3,-2,-1)`, `7,0,0 → a (0,0,0)`.
#[test]
fn swrr_4_2_1_is_a_b_a_c_a_b_a_repeating() {
    let wrr = WeightedRoundRobin::new(&weighted(&[4, 2, 1]));
    assert_eq!(wrr.period(), 7);
    assert_eq!(letters(&wrr, 14), "abacaba".repeat(2));
}

#[test]
fn swrr_equal_weights_are_plain_rotation() {
    let wrr = WeightedRoundRobin::new(&weighted(&[1, 1, 1]));
    assert_eq!(wrr.period(), 3);
    assert_eq!(letters(&wrr, 9), "abcabcabc");
}

/// Weights 3,3: `3,3 → a (tie, first listed) (-3,3)`, `0,6 → b (0,0)`. The
/// common factor 3 is divided out: the period is 2, not 6.
#[test]
fn swrr_3_3_alternates_with_period_2() {
    let wrr = WeightedRoundRobin::new(&weighted(&[3, 3]));
    assert_eq!(wrr.period(), 2);
    assert_eq!(letters(&wrr, 8), "abababab");
}

/// Weights 1,5 (total 6), the heavy backend listed second:
/// `1,5 → b (1,-1)`, `2,4 → b (2,-2)`, `3,3 → a (tie: first listed) (-3,3)`,
/// `-2,8 → b (-2,2)`, `-1,7 → b (-1,1)`, `0,6 → b (0,0)`.
#[test]
fn swrr_ties_go_to_the_first_listed_backend() {
    let wrr = WeightedRoundRobin::new(&weighted(&[1, 5]));
    assert_eq!(letters(&wrr, 12), "bbabbb".repeat(2));
}

/// Weights 5,1,1 with `b` down are weights 5,1 over `a` and `c` (total 6):
/// `5,1 → a (-1,1)`, `4,2 → a (-2,2)`, `3,3 → a (-3,3)`, `2,4 → c (2,-2)`,
/// `7,-1 → a (1,-1)`, `6,0 → a (0,0)`.
#[test]
fn swrr_down_backends_take_no_part() {
    let wrr = WeightedRoundRobin::new(&specs(&[(5, true), (1, false), (1, true)]));
    assert_eq!(wrr.period(), 6);
    assert_eq!(letters(&wrr, 12), "aaacaa".repeat(2));
}

#[test]
fn swrr_failover_lists_the_next_picks_of_the_sequence_without_consuming_them() {
    let wrr = WeightedRoundRobin::new(&weighted(&[5, 1, 1]));
    assert_eq!(letters(&wrr, 1), "a");
    // The sequence continues a b a c a a: without `a`, b then c.
    assert_eq!(wrr.failover(None, 0), [1, 2]);
    // Without `b`: a then c.
    assert_eq!(wrr.failover(None, 1), [0, 2]);
    // Listing failover candidates does not advance the sequence.
    assert_eq!(letters(&wrr, 6), "abacaa");
}

/// The naive counter `a a a a a b c` gives `a` all five of its picks up
/// front; smooth round robin never gives a backend more than `⌈t·w/W⌉` of
/// the first `t` picks (see `swrr_never_runs_ahead_of_its_share`).
#[test]
fn swrr_is_smooth_where_the_naive_counter_is_not() {
    let weights = [5u64, 1, 1];
    let naive = [0, 0, 0, 0, 0, 1, 2];
    let smooth = picks(&WeightedRoundRobin::new(&weighted(&[5, 1, 1])), 7);
    assert_eq!(first_run_ahead(&naive, &weights), Some((0, 4)));
    assert_eq!(first_run_ahead(&smooth, &weights), None);
}

/// Some backend `i` and prefix length `t` where `i` has more than
/// `⌈t·w_i/W⌉` of the first `t` picks, if any.
fn first_run_ahead(seq: &[usize], weights: &[u64]) -> Option<(usize, usize)> {
    let total: u64 = weights.iter().sum();
    let mut counts = vec![0u64; weights.len()];
    for (t, &i) in seq.iter().enumerate() {
        counts[i] += 1;
        let t = t as u64 + 1;
        if counts[i] > (t * weights[i]).div_ceil(total) {
            return Some((i, t as usize));
        }
    }
    None
}

/// The bound is one-sided: nginx's algorithm can leave a backend *behind*
/// its share by more than one pick. Weights 5,1,1,5,1,1,5,1,1 (total 21):
/// after 17 picks the third weight-5 backend (index 6) has had 3 picks,
/// while its share is 17·5/21 ≈ 4.05. The crate does exactly what nginx does.
#[test]
fn swrr_can_lag_its_share_by_more_than_one_pick_as_nginx_does() {
    let peers: Vec<(u32, bool)> = [5, 1, 1, 5, 1, 1, 5, 1, 1]
        .iter()
        .map(|&w| (w, true))
        .collect();
    let reference = nginx_swrr(&peers, 17);
    let ours = picks(&WeightedRoundRobin::new(&specs(&peers)), 17);
    assert_eq!(ours, reference);
    let count = ours.iter().filter(|&&i| i == 6).count();
    assert_eq!(count, 3);
    assert!((count as f64) < 17.0 * 5.0 / 21.0 - 1.0);
}

// ---------------------------------------------------------------------------
// Smooth weighted round robin: properties against the nginx reference
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// The `O(1)` schedule gives nginx's sequence pick for pick, over three
    /// full periods (restricted to the backends that are up, as nginx skips
    /// down peers).
    #[test]
    fn swrr_matches_the_nginx_reference(peers in member_specs(1, 20)) {
        let total: u64 = peers.iter().filter(|p| p.1).map(|p| u64::from(p.0)).sum();
        prop_assume!(total > 0);
        let wrr = WeightedRoundRobin::new(&specs(&peers));
        prop_assert!(wrr.is_precomputed());
        let n = 3 * total as usize;
        prop_assert_eq!(picks(&wrr, n), nginx_swrr(&peers, n));
    }

    /// Each period of `Σw/g` picks (`g` the gcd of the weights that are up)
    /// gives every backend that is up exactly `w/g` picks and every backend
    /// that is down none.
    #[test]
    fn swrr_each_period_gives_every_up_backend_exactly_its_reduced_weight(
        peers in member_specs(1, 20),
    ) {
        let up: Vec<u64> = peers.iter().filter(|p| p.1).map(|p| u64::from(p.0)).collect();
        prop_assume!(!up.is_empty());
        let g = up.iter().fold(0, |g, &w| gcd(g, w));
        let period = up.iter().sum::<u64>() / g;
        let wrr = WeightedRoundRobin::new(&specs(&peers));
        prop_assert_eq!(wrr.period(), period);
        for _ in 0..3 {
            let mut counts = vec![0u64; peers.len()];
            for i in picks(&wrr, period as usize) {
                counts[i] += 1;
            }
            for (i, &(w, is_up)) in peers.iter().enumerate() {
                let expected = if is_up { u64::from(w) / g } else { 0 };
                prop_assert_eq!(counts[i], expected, "backend {} in {:?}", i, counts);
            }
        }
    }

    /// Smoothness, the bound nginx's algorithm guarantees: in the first `t`
    /// picks of a period, a backend of weight `w` (total `W`) is picked at
    /// most `⌈t·w/W⌉` times — never a whole pick ahead of its share.
    ///
    /// Proof: after `t` picks a backend's current weight is `t·w − c·W` (`c`
    /// its picks so far). The current weights sum to 0 after each pick, so
    /// to `W` after adding; the winner has the largest, which is positive,
    /// and drops above `−W`; the others only grow. So `t·w − c·W > −W`,
    /// i.e. `c < t·w/W + 1`.
    ///
    /// It follows that a backend is never further behind its share than the
    /// others can be ahead: `c ≥ t − Σ_{j≠i} ⌈t·w_j/W⌉` (checked too). The
    /// lag can exceed one pick; see
    /// `swrr_can_lag_its_share_by_more_than_one_pick_as_nginx_does`.
    #[test]
    fn swrr_never_runs_ahead_of_its_share(peers in member_specs(1, 20)) {
        let up: Vec<(usize, u64)> = peers
            .iter()
            .enumerate()
            .filter(|(_, p)| p.1)
            .map(|(i, p)| (i, u64::from(p.0)))
            .collect();
        prop_assume!(!up.is_empty());
        let total: u64 = up.iter().map(|&(_, w)| w).sum();
        // The reference satisfies it (so the bound is about nginx's
        // algorithm, not about this implementation) ...
        let reference = nginx_swrr(&peers, total as usize);
        // ... and so does the crate, over two periods.
        let wrr = WeightedRoundRobin::new(&specs(&peers));
        for seq in [reference, picks(&wrr, total as usize), picks(&wrr, total as usize)] {
            let mut counts = vec![0u64; peers.len()];
            for (t, &picked) in seq.iter().enumerate() {
                counts[picked] += 1;
                let t = t as u64 + 1;
                let ceil_share = |w: u64| (t * w).div_ceil(total);
                for &(i, w) in &up {
                    prop_assert!(counts[i] <= ceil_share(w),
                        "backend {i} has {} of the first {t} picks, share {t}*{w}/{total}", counts[i]);
                    let others: u64 = up.iter().filter(|&&(j, _)| j != i).map(|&(_, wj)| ceil_share(wj)).sum();
                    prop_assert!(counts[i] + others >= t);
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Weights too large for a precomputed schedule (a period above 2^20)
    /// switch to stepping the algorithm online; the sequence is still
    /// nginx's, and failover still lists every other backend once.
    #[test]
    fn swrr_online_mode_matches_the_nginx_reference(
        peers in prop::collection::vec((1u32..=MAX_WEIGHT, prop::bool::weighted(0.8)), 2..=8),
        big in 600_000u32..=MAX_WEIGHT,
    ) {
        // `big` and `big - 1` are coprime, so the gcd is 1 and the period
        // is at least 1.2 million, above the 2^20 schedule limit.
        let mut peers = peers;
        peers[0] = (big, true);
        peers[1] = (big - 1, true);
        let wrr = WeightedRoundRobin::new(&specs(&peers));
        prop_assert!(!wrr.is_precomputed());
        prop_assert_eq!(picks(&wrr, 1000), nginx_swrr(&peers, 1000));
        let up: Vec<usize> = (0..peers.len()).filter(|&i| peers[i].1).collect();
        for &first in &up {
            let mut order = wrr.failover(None, first);
            order.sort_unstable();
            let expected: Vec<usize> = up.iter().copied().filter(|&i| i != first).collect();
            prop_assert_eq!(order, expected);
        }
    }
}

// ---------------------------------------------------------------------------
// Consistent hashing
// ---------------------------------------------------------------------------

/// Owner ids of `keys` on `ring` over `members`.
fn owners(ring: &ConsistentHash, members: &[Member], keys: &[Vec<u8>]) -> Vec<String> {
    keys.iter()
        .map(|k| members[ring.pick(Some(k)).unwrap()].id().to_owned())
        .collect()
}

fn keys(seed: u64, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| format!("key-{seed}-{i}").into_bytes())
        .collect()
}

#[test]
fn consistent_hash_sends_a_key_to_the_same_backend_every_time() {
    let members = weighted(&[1, 1, 1, 1]);
    let a = ConsistentHash::new(&members).unwrap();
    let b = ConsistentHash::new(&members).unwrap();
    for key in keys(0, 200) {
        let first = a.pick(Some(&key)).unwrap();
        assert_eq!(a.pick(Some(&key)).unwrap(), first);
        assert_eq!(b.pick(Some(&key)).unwrap(), first);
    }
}

#[test]
fn consistent_hash_places_vnodes_times_weight_points_per_backend() {
    let members = weighted(&[1, 2, 3]);
    assert_eq!(
        ConsistentHash::new(&members).unwrap().points(),
        6 * DEFAULT_VNODES as usize
    );
    assert_eq!(
        ConsistentHash::with_vnodes(&members, 10).unwrap().points(),
        60
    );
    // Down backends keep their points: the ring does not move when they
    // go down.
    let with_down = specs(&[(1, true), (2, false), (3, true)]);
    assert_eq!(
        ConsistentHash::with_vnodes(&with_down, 10)
            .unwrap()
            .points(),
        60
    );
}

/// A fixed key set (the hash is pinned, so this is deterministic): with 160
/// points per backend, each of 10 backends owns between 0.7 and 1.3 times
/// its fair share of 20,000 keys, and a backend of weight 2 about twice the
/// share of one of weight 1.
#[test]
fn consistent_hash_spreads_keys_roughly_evenly_and_by_weight() {
    let members = weighted(&[1; 10]);
    let ring = ConsistentHash::new(&members).unwrap();
    let mut counts = [0usize; 10];
    for key in keys(7, 20_000) {
        counts[ring.pick(Some(&key)).unwrap()] += 1;
    }
    for &c in &counts {
        assert!((1_400..=2_600).contains(&c), "{counts:?}");
    }

    let members = weighted(&[2, 1, 1, 1, 1]);
    let ring = ConsistentHash::new(&members).unwrap();
    let mut counts = [0usize; 5];
    for key in keys(8, 12_000) {
        counts[ring.pick(Some(&key)).unwrap()] += 1;
    }
    // Shares 1/3, 1/6 each.
    assert!((3_200..=4_800).contains(&counts[0]), "{counts:?}");
    for &c in &counts[1..] {
        assert!((1_400..=2_600).contains(&c), "{counts:?}");
    }
}

/// Adding a fifth backend to four moves about a fifth of the keys (all of
/// them to the new backend), not the four fifths a modulo hash would move.
/// A fixed key set, so deterministic.
#[test]
fn adding_one_of_five_backends_moves_about_a_fifth_of_the_keys() {
    let four = weighted(&[1; 4]);
    let five = weighted(&[1; 5]);
    let keys = keys(9, 10_000);
    let before = owners(&ConsistentHash::new(&four).unwrap(), &four, &keys);
    let after = owners(&ConsistentHash::new(&five).unwrap(), &five, &keys);
    let moved: Vec<&String> = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| b != a)
        .map(|(_, a)| a)
        .collect();
    assert!(moved.iter().all(|id| *id == "b4"));
    assert!((1_400..=2_600).contains(&moved.len()), "{}", moved.len());
}

#[test]
fn consistent_hash_without_a_key_round_robins_over_up_backends() {
    let ring = ConsistentHash::new(&specs(&[(1, true), (1, false), (5, true), (1, true)])).unwrap();
    assert_eq!(letters(&ring, 7), "acdacda");
    assert_eq!(ring.failover(None, 2), [3, 0]);
}

#[test]
fn consistent_hash_failover_walks_the_ring_clockwise() {
    let members = weighted(&[1, 1, 1, 1, 1]);
    let ring = ConsistentHash::new(&members).unwrap();
    for key in keys(3, 100) {
        let owner = ring.pick(Some(&key)).unwrap();
        let order = ring.failover(Some(&key), owner);
        assert_eq!(order.len(), 4);
        // Marking the owner and then each candidate down in turn moves the
        // key along exactly that order.
        let mut down = vec![owner];
        for &next in &order {
            let spec: Vec<(u32, bool)> = (0..5).map(|i| (1, !down.contains(&i))).collect();
            let ring2 = ConsistentHash::new(&specs(&spec)).unwrap();
            assert_eq!(ring2.pick(Some(&key)).unwrap(), next);
            down.push(next);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Two rings over the same backends listed in different orders send
    /// every key to the same backend (by id).
    #[test]
    fn consistent_hash_does_not_depend_on_listing_order(
        (weights, order) in prop::collection::vec(1u32..=4, 1..=12)
            .prop_flat_map(|w| {
                let n = w.len();
                (Just(w), Just((0..n).collect::<Vec<usize>>()).prop_shuffle())
            }),
        seed in any::<u64>(),
    ) {
        let members = weighted(&weights);
        let shuffled: Vec<Member> = order.iter().map(|&i| members[i].clone()).collect();
        let a = ConsistentHash::new(&members).unwrap();
        let b = ConsistentHash::new(&shuffled).unwrap();
        let keys = keys(seed, 300);
        prop_assert_eq!(owners(&a, &members, &keys), owners(&b, &shuffled, &keys));
    }

    /// Removing one backend moves only the keys it owned, each to the first
    /// backend after it clockwise (its `failover(key, owner)[0]`).
    #[test]
    fn removing_one_backend_moves_only_its_keys(
        weights in prop::collection::vec(1u32..=4, 2..=12),
        removed in any::<prop::sample::Index>(),
        seed in any::<u64>(),
    ) {
        let members = weighted(&weights);
        let removed = removed.index(members.len());
        let mut fewer = members.clone();
        fewer.remove(removed);
        let before = ConsistentHash::new(&members).unwrap();
        let after = ConsistentHash::new(&fewer).unwrap();
        for key in keys(seed, 300) {
            let old = before.pick(Some(&key)).unwrap();
            let new_id = fewer[after.pick(Some(&key)).unwrap()].id();
            if old == removed {
                let next = before.failover(Some(&key), old)[0];
                prop_assert_eq!(new_id, members[next].id());
            } else {
                prop_assert_eq!(new_id, members[old].id());
            }
        }
    }

    /// Adding a backend moves keys only to it.
    #[test]
    fn adding_a_backend_moves_keys_only_to_it(
        weights in prop::collection::vec(1u32..=4, 1..=12),
        added_weight in 1u32..=4,
        seed in any::<u64>(),
    ) {
        let members = weighted(&weights);
        let mut more = members.clone();
        more.push(member(weights.len(), added_weight, true));
        let added = more.last().unwrap().id().to_owned();
        let before = ConsistentHash::new(&members).unwrap();
        let after = ConsistentHash::new(&more).unwrap();
        let keys = keys(seed, 300);
        for (old, new) in owners(&before, &members, &keys).into_iter().zip(owners(&after, &more, &keys)) {
            if old != new {
                prop_assert_eq!(&new, &added);
            }
        }
    }

    /// While a key's backend is down the key goes to
    /// `failover(key, owner)[0]` of the ring with everything up, and it
    /// comes back when the backend is up again. Keys of other backends do
    /// not move.
    #[test]
    fn keys_of_a_down_backend_move_clockwise_and_come_back(
        weights in prop::collection::vec(1u32..=4, 2..=12),
        down in any::<prop::sample::Index>(),
        seed in any::<u64>(),
    ) {
        let n = weights.len();
        let down = down.index(n);
        let up_spec: Vec<(u32, bool)> = weights.iter().map(|&w| (w, true)).collect();
        let mut down_spec = up_spec.clone();
        down_spec[down].1 = false;
        let all_up = ConsistentHash::new(&specs(&up_spec)).unwrap();
        let one_down = ConsistentHash::new(&specs(&down_spec)).unwrap();
        let back_up = ConsistentHash::new(&specs(&up_spec)).unwrap();
        for key in keys(seed, 300) {
            let owner = all_up.pick(Some(&key)).unwrap();
            let while_down = one_down.pick(Some(&key)).unwrap();
            if owner == down {
                prop_assert_eq!(while_down, all_up.failover(Some(&key), owner)[0]);
            } else {
                prop_assert_eq!(while_down, owner);
            }
            prop_assert_eq!(back_up.pick(Some(&key)).unwrap(), owner);
        }
    }
}

// ---------------------------------------------------------------------------
// Random
// ---------------------------------------------------------------------------

/// 60,000 uniform picks over 3 backends: each count is Binomial(60,000,
/// 1/3), σ = √(60,000·⅓·⅔) ≈ 115.5. The bound ±1,000 (5% of 20,000) is
/// 8.7σ: a false failure has probability below 10^-17.
#[test]
fn uniform_random_picks_each_backend_within_5_percent_of_its_share() {
    let random = Random::new(&weighted(&[1, 5, 9]));
    let mut counts = [0i64; 3];
    for i in picks(&random, 60_000) {
        counts[i] += 1;
    }
    for c in counts {
        assert!((c - 20_000).abs() <= 1_000, "{counts:?}");
    }
}

/// 100,000 weighted picks over weights 1,2,3,4: expected 10k, 20k, 30k,
/// 40k, σ = √(100,000·p·(1−p)) ≤ 155 (at p = 0.4). The bound ±1,000 is at
/// least 6.4σ for every backend.
#[test]
fn weighted_random_picks_in_proportion_to_weight() {
    let random = Random::weighted(&specs(&[
        (1, true),
        (2, true),
        (50, false),
        (3, true),
        (4, true),
    ]));
    let mut counts = [0i64; 5];
    for i in picks(&random, 100_000) {
        counts[i] += 1;
    }
    assert_eq!(counts[2], 0);
    for (i, expected) in [(0, 10_000), (1, 20_000), (3, 30_000), (4, 40_000)] {
        assert!((counts[i] - expected).abs() <= 1_000, "{counts:?}");
    }
}

#[test]
fn random_ignores_weights_unless_weighted() {
    // Covered by the uniform test's weights 1, 5, 9; this one checks that a
    // single up backend among down ones is the only pick, in both variants.
    let members = specs(&[(3, false), (1, true), (3, false)]);
    for random in [Random::new(&members), Random::weighted(&members)] {
        assert!(picks(&random, 200).iter().all(|&i| i == 1));
    }
}

// ---------------------------------------------------------------------------
// Every strategy
// ---------------------------------------------------------------------------

#[test]
fn every_strategy_reports_no_backends_for_an_empty_set() {
    for (name, b) in all_balancers(&[]) {
        assert!(matches!(b.pick(None), Err(Error::NoBackends)), "{name}");
        assert!(
            matches!(b.pick(Some(b"k")), Err(Error::NoBackends)),
            "{name}"
        );
        assert_eq!(b.failover(None, 0), Vec::<usize>::new(), "{name}");
        assert_eq!(b.failover(Some(b"k"), 0), Vec::<usize>::new(), "{name}");
    }
}

#[test]
fn every_strategy_reports_all_backends_down_with_the_count() {
    let members = specs(&[(1, false), (4, false), (2, false)]);
    for (name, b) in all_balancers(&members) {
        for key in [None, Some(&b"k"[..])] {
            assert!(
                matches!(b.pick(key), Err(Error::AllBackendsDown { count: 3 })),
                "{name}"
            );
            assert_eq!(b.failover(key, 1), Vec::<usize>::new(), "{name}");
        }
    }
    assert_eq!(
        Error::AllBackendsDown { count: 3 }.to_string(),
        "all 3 backends are marked down: mark one up or add a healthy backend"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Every strategy, on any set (empty, all down, any weights), with any
    /// key bytes: a pick is a backend that is up, or the right error; never
    /// a panic. Down backends are never picked.
    #[test]
    fn every_strategy_picks_only_up_backends_or_reports_why_not(
        peers in member_specs(0, 20),
        key in prop::option::of(prop::collection::vec(any::<u8>(), 0..64)),
        rounds in 1usize..50,
    ) {
        let members = specs(&peers);
        let up = peers.iter().filter(|p| p.1).count();
        for (name, b) in all_balancers(&members) {
            for _ in 0..rounds {
                match b.pick(key.as_deref()) {
                    Ok(i) => prop_assert!(i < peers.len() && peers[i].1, "{name} picked {i}"),
                    Err(Error::NoBackends) => prop_assert!(peers.is_empty(), "{name}"),
                    Err(Error::AllBackendsDown { count }) => {
                        prop_assert!(up == 0 && count == peers.len() && count > 0, "{name}");
                    }
                    Err(e) => prop_assert!(false, "{name}: unexpected error {e}"),
                }
            }
        }
    }

    /// After any pick, `failover(key, first)` lists every *other* backend
    /// that is up exactly once (and no down backend), whichever `first` is
    /// given, even one that is down or out of range.
    #[test]
    fn every_strategy_fails_over_to_every_other_up_backend_exactly_once(
        peers in member_specs(0, 20),
        key in prop::option::of(prop::collection::vec(any::<u8>(), 0..64)),
        warmup in 0usize..20,
        first in 0usize..24,
    ) {
        let members = specs(&peers);
        for (name, b) in all_balancers(&members) {
            for _ in 0..warmup {
                let _ = b.pick(key.as_deref());
            }
            let mut firsts = vec![first];
            if let Ok(picked) = b.pick(key.as_deref()) {
                firsts.push(picked);
            }
            for first in firsts {
                let order = b.failover(key.as_deref(), first);
                let expected: HashSet<usize> =
                    (0..peers.len()).filter(|&i| peers[i].1 && i != first).collect();
                let listed: HashSet<usize> = order.iter().copied().collect();
                prop_assert_eq!(order.len(), listed.len(), "{} repeats: {:?}", name, order);
                prop_assert_eq!(listed, expected, "{}", name);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The Strategy factory
// ---------------------------------------------------------------------------

#[test]
fn every_strategy_name_round_trips_through_display_and_from_str() {
    let all = [
        Strategy::Random,
        Strategy::RoundRobin,
        Strategy::WeightedRoundRobin,
        Strategy::consistent_hash(),
        Strategy::LeastRequest,
        Strategy::maglev(),
        Strategy::bounded_load(),
        Strategy::maglev_bounded_load(),
    ];
    assert_eq!(all.len(), Strategy::NAMES.len());
    for (strategy, name) in all.iter().zip(Strategy::NAMES) {
        assert_eq!(strategy.to_string(), name);
        assert_eq!(strategy.name(), name);
        assert_eq!(name.parse::<Strategy>().unwrap(), *strategy);
        assert_eq!(strategy.to_string().parse::<Strategy>().unwrap(), *strategy);
    }
    assert_eq!(
        Strategy::consistent_hash(),
        Strategy::ConsistentHash {
            vnodes: DEFAULT_VNODES
        }
    );
}

/// `Display` prints the name only: a ring with non-default virtual nodes
/// parses back with the default.
#[test]
fn display_names_the_algorithm_without_its_configuration() {
    let custom = Strategy::ConsistentHash { vnodes: 40 };
    assert_eq!(custom.to_string(), "consistent_hash");
    assert_eq!(
        custom.to_string().parse::<Strategy>().unwrap(),
        Strategy::consistent_hash()
    );
}

#[test]
fn from_str_accepts_dashes_any_case_and_surrounding_space() {
    assert_eq!(
        "Round-Robin".parse::<Strategy>().unwrap(),
        Strategy::RoundRobin
    );
    assert_eq!(
        " WEIGHTED_ROUND_ROBIN\n".parse::<Strategy>().unwrap(),
        Strategy::WeightedRoundRobin
    );
    assert_eq!(
        "consistent-hash".parse::<Strategy>().unwrap(),
        Strategy::consistent_hash()
    );
}

#[test]
fn unknown_strategy_error_lists_the_valid_names() {
    // (`roundrobin`, `least_conn` and `leastconn` are aliases: see
    // tests/load_balancer.rs.)
    for name in ["fastest", "", "round robin", "least_connections"] {
        let err = name.parse::<Strategy>().unwrap_err();
        assert!(matches!(&err, Error::UnknownStrategy { name: n } if n == name));
        assert_eq!(
            err.to_string(),
            format!(
                "unknown strategy `{name}`: expected one of random, round_robin, weighted_round_robin, consistent_hash, least_request, maglev, bounded_load, maglev_bounded_load"
            )
        );
    }
}

#[test]
fn strategy_builds_the_algorithm_it_names() {
    let members = weighted(&[5, 1, 1]);
    let wrr = Strategy::WeightedRoundRobin.build(&members).unwrap();
    assert_eq!(letters(&*wrr, 7), "aabacaa");
    // Round robin follows unequal weights as nginx's does: the smooth
    // sequence; with equal weights, the plain rotation.
    let rr = Strategy::RoundRobin.build(&members).unwrap();
    assert_eq!(letters(&*rr, 7), "aabacaa");
    let rr = Strategy::RoundRobin.build(&weighted(&[2, 2, 2])).unwrap();
    assert_eq!(letters(&*rr, 4), "abca");
    let ring = Strategy::consistent_hash().build(&members).unwrap();
    let direct = ConsistentHash::new(&members).unwrap();
    for key in keys(11, 100) {
        assert_eq!(
            ring.pick(Some(&key)).unwrap(),
            direct.pick(Some(&key)).unwrap()
        );
    }
    let random = Strategy::Random.build(&members).unwrap();
    let mut counts = [0usize; 3];
    for i in picks(&*random, 7_000) {
        counts[i] += 1;
    }
    // Weighted, as nginx's `random`: a expects 5,000 of 7,000 (σ ≈ 38),
    // b and c 1,000 each (σ ≈ 29); the bounds are over 6σ wide.
    assert!((4_750..=5_250).contains(&counts[0]), "{counts:?}");
    assert!((800..=1_200).contains(&counts[1]), "{counts:?}");
    assert!((800..=1_200).contains(&counts[2]), "{counts:?}");
}

#[test]
fn strategy_rejects_zero_virtual_nodes() {
    let err = Strategy::ConsistentHash { vnodes: 0 }
        .build(&weighted(&[1]))
        .err()
        .unwrap();
    assert!(matches!(err, Error::InvalidConfig { .. }), "{err}");
}

#[test]
fn ring_too_large_is_reported_with_its_size() {
    let members = weighted(&[MAX_WEIGHT, 1]);
    let err = ConsistentHash::new(&members).err().unwrap();
    assert!(
        matches!(
            err,
            Error::RingTooLarge {
                points: 160_000_160,
                max: 16_777_216
            }
        ),
        "{err}"
    );
}

// ---------------------------------------------------------------------------
// Backend validation
// ---------------------------------------------------------------------------

fn uri_reason(uri: &str) -> &'static str {
    match Backend::new(uri) {
        Err(Error::InvalidBackendUri { uri: given, reason }) => {
            assert_eq!(given, uri);
            reason
        }
        other => panic!("{uri}: expected InvalidBackendUri, got {other:?}"),
    }
}

#[test]
fn backend_uris_must_be_absolute_http_or_https_without_credentials() {
    assert_eq!(uri_reason("not a uri"), "not a valid URI");
    assert_eq!(uri_reason(""), "not a valid URI");
    assert_eq!(
        uri_reason("127.0.0.1:8080"),
        "a scheme is required (http:// or https://)"
    );
    assert_eq!(
        uri_reason("/just/a/path"),
        "a scheme is required (http:// or https://)"
    );
    assert_eq!(
        uri_reason("ftp://files.example"),
        "the scheme must be http or https"
    );
    assert_eq!(
        uri_reason("ws://chat.example"),
        "the scheme must be http or https"
    );
    assert_eq!(
        uri_reason("http://user:secret@10.0.0.1"),
        "credentials in the URI are not allowed"
    );
    assert_eq!(
        uri_reason("http://user@10.0.0.1"),
        "credentials in the URI are not allowed"
    );
    let err = Backend::new("ftp://files.example").unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid backend URI `ftp://files.example`: the scheme must be http or https"
    );
}

/// `http` parses any text after the host's colon and then reports no
/// port, which clients (hyper-util's connector) read as the default port:
/// `http://10.0.0.1:80800` would reach `10.0.0.1:80`. Such ports are
/// rejected.
#[test]
fn backend_ports_must_be_numbers_from_1_to_65535() {
    for bad in [
        "http://10.0.0.1:80800",
        "http://10.0.0.1:65536",
        "http://backend:http",
        "http://backend:0",
        "http://backend:",
        "http://[::1]:99999",
        "https://backend:+443",
    ] {
        assert_eq!(
            uri_reason(bad),
            "the port must be a number from 1 to 65535",
            "{bad}"
        );
    }
    for (good, port) in [
        ("http://10.0.0.1:1", Some(1)),
        ("http://10.0.0.1:65535", Some(65535)),
        ("https://backend:8443/v1", Some(8443)),
        ("http://[::1]:8080", Some(8080)),
        ("http://[::1]", None),
        ("http://backend", None),
    ] {
        assert_eq!(
            Backend::new(good).unwrap().authority().port_u16(),
            port,
            "{good}"
        );
    }
}

#[test]
fn backend_defaults_to_weight_1_and_its_authority_as_id() {
    let b = Backend::new("https://api.internal:8443/v2?x=1").unwrap();
    assert_eq!(b.id(), "api.internal:8443");
    assert_eq!(b.weight(), 1);
    assert_eq!(b.scheme().as_str(), "https");
    assert_eq!(b.authority().as_str(), "api.internal:8443");
    assert_eq!(b.path_prefix(), "/v2");
    assert_eq!(b.query(), Some("x=1"));
    let parsed: Backend = "http://10.0.0.1".parse().unwrap();
    assert_eq!(parsed.path_prefix(), "/");
}

#[test]
fn weights_must_be_between_0_and_max_weight() {
    let b = || Backend::new("http://10.0.0.1").unwrap();
    assert_eq!(b().with_weight(0).unwrap().weight(), 0);
    for bad in [MAX_WEIGHT + 1, u32::MAX] {
        match b().with_weight(bad) {
            Err(Error::InvalidWeight { id, weight, max }) => {
                assert_eq!(id, "10.0.0.1");
                assert_eq!(weight, u64::from(bad));
                assert_eq!(max, MAX_WEIGHT);
            }
            other => panic!("weight {bad}: {other:?}"),
        }
    }
    assert_eq!(b().with_weight(1).unwrap().weight(), 1);
    assert_eq!(b().with_weight(MAX_WEIGHT).unwrap().weight(), MAX_WEIGHT);
}

#[test]
fn ids_must_be_1_to_max_id_len_bytes() {
    let b = || Backend::new("http://10.0.0.1").unwrap();
    for bad in [String::new(), "x".repeat(MAX_ID_LEN + 1)] {
        match b().with_id(bad.clone()) {
            Err(Error::InvalidBackendId { id, max }) => {
                assert_eq!(id, bad);
                assert_eq!(max, MAX_ID_LEN);
            }
            other => panic!("id {bad:?}: {other:?}"),
        }
    }
    let longest = "x".repeat(MAX_ID_LEN);
    assert_eq!(b().with_id(longest.clone()).unwrap().id(), longest);
}

/// Ids are what the ring hashes: two backends with the same URI but
/// different ids own different keys, and one backend's keys do not depend
/// on its URI.
#[test]
fn the_ring_hashes_ids_not_uris() {
    let named = |uri: &str, id: &str| Member::new(Backend::new(uri).unwrap().with_id(id).unwrap());
    let a = [named("http://10.0.0.1", "x"), named("http://10.0.0.2", "y")];
    let b = [named("http://10.9.9.9", "x"), named("http://10.8.8.8", "y")];
    let ra = ConsistentHash::new(&a).unwrap();
    let rb = ConsistentHash::new(&b).unwrap();
    let mut by_key: HashMap<Vec<u8>, usize> = HashMap::new();
    for key in keys(5, 200) {
        let i = ra.pick(Some(&key)).unwrap();
        assert_eq!(rb.pick(Some(&key)).unwrap(), i);
        by_key.insert(key, i);
    }
    assert!(by_key.values().any(|&i| i == 0) && by_key.values().any(|&i| i == 1));
}
