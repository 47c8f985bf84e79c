//! Maglev hashing as a specification: the spread, the keys that move when
//! the set changes, down backends, failover, the factory names and the
//! limits.

use proptest::prelude::*;
use tower_lb::strategy::maglev::{DEFAULT_TABLE_SIZE, MAX_TABLE_SIZE};
use tower_lb::{
    Backend, Balancer, BuildBalancer, ConsistentHash, Error, LoadBalancer, Maglev, Member,
    Strategy, MAX_WEIGHT,
};

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

fn unit(n: usize) -> Vec<Member> {
    (0..n).map(|i| member(i, 1, true)).collect()
}

fn key(i: u32) -> [u8; 4] {
    i.to_le_bytes()
}

/// The owner's id of each of `keys` keys.
fn owners(balancer: &dyn Balancer, members: &[Member], keys: u32) -> Vec<String> {
    (0..keys)
        .map(|i| {
            let index = balancer.pick(Some(&key(i))).unwrap();
            members[index].backend().id().to_owned()
        })
        .collect()
}

#[test]
fn equal_weights_own_the_table_within_one_slot() {
    for n in [10, 100, 1_000] {
        let maglev = Maglev::new(&unit(n)).unwrap();
        let slots = maglev.slots();
        let (lo, hi) = (*slots.iter().min().unwrap(), *slots.iter().max().unwrap());
        assert!(hi - lo <= 1, "{n} backends: {lo}..={hi}");
        // Peak-to-mean of the table shares: 1.0002 at 100, 1.0079 at 1,000.
        let mean = f64::from(DEFAULT_TABLE_SIZE) / n as f64;
        assert!(f64::from(hi) / mean <= 1.01, "{n} backends");
    }
}

/// Keys that change owner when backend `removed` of `members` is removed,
/// as a multiple of the ideal `1/n`, over `keys` keys.
fn moved_on_removal(members: &[Member], table_size: u32, removed: usize, keys: u32) -> f64 {
    let before = owners(
        &Maglev::with_table_size(members, table_size).unwrap(),
        members,
        keys,
    );
    let mut fewer = members.to_vec();
    fewer.remove(removed);
    let after = owners(
        &Maglev::with_table_size(&fewer, table_size).unwrap(),
        &fewer,
        keys,
    );
    // Every key of the removed backend moves.
    let id = format!("b{removed}");
    assert!(before.iter().zip(&after).all(|(a, b)| *a != id || *b != id));
    let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
    moved as f64 / f64::from(keys) * members.len() as f64
}

/// Maglev moves more than the ring's ideal `1/n` when a backend goes: its
/// own keys, and some of others' whose slots the refill shifts. How many
/// depends on the slots per backend: about 1.6 times the ideal with the
/// default table at 100 backends, 1.13 times with a table ten times larger
/// (the paper advises `M ≫ 100 n`).
#[test]
fn removing_one_of_100_backends_moves_1_6_times_the_ideal_or_1_13_with_a_larger_table() {
    let members = unit(100);
    for removed in [0, 37, 99] {
        let moved = moved_on_removal(&members, DEFAULT_TABLE_SIZE, removed, 50_000);
        assert!(
            (1.0..=1.75).contains(&moved),
            "moved {moved:.3} × the ideal"
        );
    }
    let moved = moved_on_removal(&members, 655_373, 37, 50_000);
    assert!((1.0..=1.2).contains(&moved), "moved {moved:.3} × the ideal");
}

#[test]
fn adding_a_backend_moves_keys_mostly_to_it() {
    let members = unit(100);
    let table_size = 655_373;
    let before = owners(
        &Maglev::with_table_size(&members, table_size).unwrap(),
        &members,
        50_000,
    );
    let mut more = members.clone();
    more.push(member(100, 1, true));
    let after = owners(
        &Maglev::with_table_size(&more, table_size).unwrap(),
        &more,
        50_000,
    );
    let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
    let to_new = after.iter().filter(|b| *b == "b100").count();
    assert!(moved as f64 <= 1.2 * 50_000.0 / 101.0, "{moved} moved");
    assert!(to_new as f64 >= 0.8 * moved as f64, "{to_new} of {moved}");
}

#[test]
fn a_down_backend_loses_only_its_keys_and_gets_them_back_when_up() {
    let members = unit(20);
    let maglev = Maglev::new(&members).unwrap();
    let mut down = members.clone();
    down[7] = down[7].clone().with_up(false);
    let without = Maglev::new(&down).unwrap();
    let up_again = Maglev::new(&members).unwrap();
    for i in 0..20_000 {
        let k = key(i);
        let home = maglev.pick(Some(&k)).unwrap();
        let now = without.pick(Some(&k)).unwrap();
        if home == 7 {
            assert_eq!(now, maglev.failover(Some(&k), 7)[0]);
        } else {
            assert_eq!(now, home);
        }
        assert_eq!(up_again.pick(Some(&k)).unwrap(), home);
    }
}

#[test]
fn the_keys_of_a_down_backend_spread_over_all_the_others() {
    let members = unit(10);
    let mut down = members.clone();
    down[3] = down[3].clone().with_up(false);
    let maglev = Maglev::new(&members).unwrap();
    let without = Maglev::new(&down).unwrap();
    let mut got = [0u32; 10];
    for i in 0..100_000 {
        if maglev.pick(Some(&key(i))).unwrap() == 3 {
            got[without.pick(Some(&key(i))).unwrap()] += 1;
        }
    }
    // About 10,000 keys over 9 backends, 1,111 each; a ring's neighbour
    // would take them in a few large arcs.
    assert_eq!(got[3], 0);
    for (i, &n) in got.iter().enumerate().filter(|&(i, _)| i != 3) {
        assert!((900..=1_350).contains(&n), "backend {i} got {n}: {got:?}");
    }
}

#[test]
fn weights_up_to_max_weight_build_where_the_ring_refuses() {
    let members: Vec<Member> = (0..20).map(|i| member(i, MAX_WEIGHT, true)).collect();
    assert!(matches!(
        ConsistentHash::new(&members),
        Err(Error::RingTooLarge { .. })
    ));
    let maglev = Maglev::new(&members).unwrap();
    let slots = maglev.slots();
    assert!(slots.iter().all(|&s| s.abs_diff(3_277) <= 1), "{slots:?}");
}

#[test]
fn sets_larger_than_the_table_grow_it_and_very_large_tables_are_refused() {
    let members = unit(300);
    let maglev = Maglev::with_table_size(&members, 251).unwrap();
    assert_eq!(maglev.table_size(), 30_011); // the first prime from 30,000
    assert!(matches!(
        Maglev::with_table_size(&members, MAX_TABLE_SIZE + 1),
        Err(Error::InvalidConfig { .. })
    ));
}

#[test]
fn maglev_is_chosen_by_name() {
    let strategy: Strategy = "maglev".parse().unwrap();
    assert_eq!(strategy, Strategy::maglev());
    assert_eq!(
        strategy,
        Strategy::Maglev {
            table_size: DEFAULT_TABLE_SIZE
        }
    );
    assert_eq!(strategy.to_string(), "maglev");
    let lb = LoadBalancer::new(strategy, ["http://10.0.0.1", "http://10.0.0.2"]).unwrap();
    let direct = Maglev::new(&lb.members()).unwrap();
    for i in 0..100 {
        let k = key(i);
        assert_eq!(
            lb.pick(Some(&k)).unwrap().id(),
            lb.members()[direct.pick(Some(&k)).unwrap()].id()
        );
    }
    let err = Strategy::Maglev { table_size: 1000 }
        .build(&unit(2))
        .err()
        .unwrap();
    assert_eq!(
        err.to_string(),
        "invalid configuration: the maglev table size must be a prime from 2 to 16777259, such as 65537; 1000 is not"
    );
}

#[test]
fn picks_without_a_key_rotate_over_the_backends_that_are_up() {
    let mut members = unit(4);
    members[1] = members[1].clone().with_up(false);
    let maglev = Maglev::new(&members).unwrap();
    let picks: Vec<usize> = (0..6).map(|_| maglev.pick(None).unwrap()).collect();
    assert_eq!(picks, [0, 2, 3, 0, 2, 3]);
    assert_eq!(maglev.failover(None, 2), [3, 0]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// With any members down, a key goes to the first member that is up in
    /// its fallback sequence, which is the full-set balancer's failover
    /// order after the key's home: so failover candidates stay consistent.
    #[test]
    fn a_key_goes_to_its_first_fallback_that_is_up(
        up in prop::collection::vec(prop::bool::weighted(0.7), 2..=12),
        weights in prop::collection::vec(1u32..=8, 12),
        keys in prop::collection::vec(any::<u64>(), 1..=32),
    ) {
        prop_assume!(up.iter().any(|&u| u));
        let all: Vec<Member> = up.iter().enumerate().map(|(i, _)| member(i, weights[i], true)).collect();
        let some: Vec<Member> = all.iter().zip(&up).map(|(m, &u)| m.clone().with_up(u)).collect();
        let full = Maglev::with_table_size(&all, 1_009).unwrap();
        let partial = Maglev::with_table_size(&some, 1_009).unwrap();
        for k in keys {
            let k = k.to_le_bytes();
            let home = full.pick(Some(&k)).unwrap();
            let expected = if up[home] {
                home
            } else {
                *full.failover(Some(&k), home).iter().find(|&&i| up[i]).unwrap()
            };
            prop_assert_eq!(partial.pick(Some(&k)).unwrap(), expected);
            // The failover order never depends on the key's current pick
            // beyond removing it.
            let order = partial.failover(Some(&k), expected);
            let mut sorted = order.clone();
            sorted.sort_unstable();
            let others: Vec<usize> = (0..up.len()).filter(|&i| up[i] && i != expected).collect();
            prop_assert_eq!(sorted, others);
        }
    }

    /// Slot counts follow the weights: each member owns its weighted share
    /// of the table, give or take one slot a member (every member owns one
    /// slot before any owns two).
    #[test]
    fn slots_follow_the_weights(weights in prop::collection::vec(1u32..=50, 1..=20)) {
        let members: Vec<Member> = weights.iter().enumerate().map(|(i, &w)| member(i, w, true)).collect();
        let maglev = Maglev::new(&members).unwrap();
        let total: u32 = weights.iter().sum();
        for (&w, &s) in weights.iter().zip(&maglev.slots()) {
            let share = f64::from(DEFAULT_TABLE_SIZE) * f64::from(w) / f64::from(total);
            prop_assert!((f64::from(s) - share).abs() <= weights.len() as f64, "{w}: {s} vs {share}");
        }
    }
}
