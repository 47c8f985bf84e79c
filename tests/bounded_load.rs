//! Consistent hashing with bounded loads as a specification: no pick goes
//! to a backend at its cap, whatever the interleaving of requests starting
//! and finishing; keys under their cap stay where consistent hashing puts
//! them; a hot key spreads; the factory names.

use std::sync::{Arc, Barrier};

use proptest::prelude::*;
use proptest::strategy::Strategy as _;
use tower_lb::{
    Backend, Balancer, BoundedLoad, ConsistentHash, InFlight, Load, LoadBalancer, Maglev, Member,
    Strategy,
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

/// The cap stated in the module docs, computed from scratch: `max(1, ⌈f ×
/// (T + 1) × w / (100 × W)⌉)` over the members that are up.
fn expected_cap(members: &[Member], index: usize, factor: u32) -> u64 {
    let up = members.iter().filter(|m| m.is_up());
    let total: u64 = up.clone().map(|m| m.load().in_flight()).sum();
    let weight: u64 = up.map(|m| u64::from(m.backend().weight())).sum();
    let w = u64::from(members[index].backend().weight());
    (u64::from(factor) * (total + 1) * w)
        .div_ceil(100 * weight)
        .max(1)
}

/// Builds plain consistent hashing (ring or Maglev) and its bounded
/// variant over the same members.
fn pair(members: &[Member], maglev: bool, factor: u32) -> (Box<dyn Balancer>, BoundedLoad) {
    if maglev {
        (
            Box::new(Maglev::with_table_size(members, 1_009).unwrap()),
            BoundedLoad::maglev(members, 1_009, factor).unwrap(),
        )
    } else {
        (
            Box::new(ConsistentHash::with_vnodes(members, 40).unwrap()),
            BoundedLoad::ring(members, 40, factor).unwrap(),
        )
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// A request for this key (0 is a hot key) starts.
    Pick(u8),
    /// The oldest request still in flight whose position is this, modulo
    /// how many there are, finishes.
    Finish(usize),
}

fn ops() -> impl proptest::strategy::Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![
            3 => prop_oneof![Just(0u8), any::<u8>()].prop_map(Op::Pick),
            1 => any::<usize>().prop_map(Op::Finish),
        ],
        1..=120,
    )
}

/// Runs `ops`, asserting after each pick that the chosen member was under
/// the cap and that a key whose own member was under its cap stayed there.
fn run_ops(
    members: &[Member],
    plain: &dyn Balancer,
    bounded: &dyn Balancer,
    factor: u32,
    ops: &[Op],
) -> Result<(), TestCaseError> {
    let mut in_flight: Vec<InFlight> = Vec::new();
    for op in ops {
        match *op {
            Op::Pick(k) => {
                let key = [k];
                let chosen = bounded.pick(Some(&key)).unwrap();
                prop_assert!(members[chosen].is_up());
                let cap = expected_cap(members, chosen, factor);
                let count = members[chosen].load().in_flight();
                prop_assert!(
                    count < cap,
                    "key {k} went to b{chosen} with {count} in flight, cap {cap}"
                );
                let home = plain.pick(Some(&key)).unwrap();
                if members[home].load().in_flight() < expected_cap(members, home, factor) {
                    prop_assert_eq!(chosen, home, "key {} left its member under cap", k);
                }
                in_flight.push(Load::start(members[chosen].load()));
            }
            Op::Finish(i) => {
                if !in_flight.is_empty() {
                    let i = i % in_flight.len();
                    in_flight.remove(i);
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Whatever the interleaving of starts and finishes, no pick goes to a
    /// member at its cap, and keys whose member is under its cap stay put.
    /// Members built by hand: the total is summed on each pick.
    #[test]
    fn no_pick_exceeds_the_cap_with_members_built_by_hand(
        weights in prop::collection::vec((1u32..=4, prop::bool::weighted(0.8)), 2..=8),
        busy_down in 0u64..20,
        factor in 100u32..=200,
        maglev in any::<bool>(),
        ops in ops(),
    ) {
        prop_assume!(weights.iter().any(|w| w.1));
        let members: Vec<Member> = weights.iter().enumerate().map(|(i, &(w, up))| member(i, w, up)).collect();
        // Requests still finishing on members that are down count nowhere.
        let _old: Vec<InFlight> = members
            .iter()
            .filter(|m| !m.is_up())
            .flat_map(|m| (0..busy_down).map(|_| Load::start(m.load())))
            .collect();
        let (plain, bounded) = pair(&members, maglev, factor);
        run_ops(&members, &*plain, &bounded, factor, &ops)?;
    }

    /// The same through a `LoadBalancer`, whose members share one running
    /// total (read in `O(1)`), with members marked down while they still
    /// have requests in flight.
    #[test]
    fn no_pick_exceeds_the_cap_through_a_load_balancer(
        weights in prop::collection::vec((1u32..=4, prop::bool::weighted(0.8)), 2..=8),
        busy_down in 0u64..20,
        factor in 100u32..=200,
        maglev in any::<bool>(),
        ops in ops(),
    ) {
        prop_assume!(weights.iter().any(|w| w.1));
        let strategy = if maglev {
            Strategy::MaglevBoundedLoad { table_size: 1_009, balance_factor: factor }
        } else {
            Strategy::BoundedLoad { vnodes: 40, balance_factor: factor }
        };
        let backends: Vec<Backend> = weights
            .iter()
            .enumerate()
            .map(|(i, &(w, _))| member(i, w, true).backend().as_ref().clone())
            .collect();
        let lb = LoadBalancer::new(strategy, backends).unwrap();
        let mut old = Vec::new();
        for (i, &(_, up)) in weights.iter().enumerate() {
            if !up {
                let m = lb.get(&format!("b{i}")).unwrap();
                old.extend((0..busy_down).map(|_| Load::start(m.load())));
                lb.mark_down(&format!("b{i}")).unwrap();
            }
        }
        let members = lb.members();
        // The balancer the load balancer built, through its picks by id.
        struct Through<'a>(&'a LoadBalancer, &'a [Member]);
        impl Balancer for Through<'_> {
            fn pick(&self, key: Option<&[u8]>) -> Result<usize, tower_lb::Error> {
                let id = self.0.pick(key)?.id().to_owned();
                Ok(self.1.iter().position(|m| m.id() == id).unwrap())
            }
            fn failover(&self, _: Option<&[u8]>, _: usize) -> Vec<usize> {
                Vec::new()
            }
        }
        let (plain, _) = pair(&members, maglev, factor);
        run_ops(&members, &*plain, &Through(&lb, &members), factor, &ops)?;
    }
}

#[test]
fn a_hot_key_spreads_instead_of_piling_onto_one_backend() {
    let members: Vec<Member> = (0..10).map(|i| member(i, 1, true)).collect();
    let ring = ConsistentHash::new(&members).unwrap();
    let bounded = BoundedLoad::new(&members).unwrap();
    let mut guards = Vec::new();
    for _ in 0..100 {
        guards.push(Load::start(
            members[bounded.pick(Some(b"hot")).unwrap()].load(),
        ));
    }
    let loads: Vec<u64> = members.iter().map(|m| m.load().in_flight()).collect();
    // The cap for the 100th request: ⌈1.25 × 100 / 10⌉ = 13; the key's own
    // backend is filled first, to the cap of each moment.
    assert!(loads.iter().all(|&l| l <= 13), "{loads:?}");
    let home = ring.pick(Some(b"hot")).unwrap();
    assert_eq!(loads[home], 13, "{loads:?}");
    assert_eq!(loads.iter().sum::<u64>(), 100);
}

#[test]
fn with_an_idle_set_every_key_stays_where_consistent_hashing_puts_it() {
    let members: Vec<Member> = (0..50).map(|i| member(i, 1 + i as u32 % 3, true)).collect();
    let ring = ConsistentHash::new(&members).unwrap();
    let maglev = Maglev::new(&members).unwrap();
    let over_ring = BoundedLoad::new(&members).unwrap();
    let over_maglev = BoundedLoad::maglev(&members, 65_537, 125).unwrap();
    for i in 0..5_000u32 {
        let key = i.to_le_bytes();
        assert_eq!(
            over_ring.pick(Some(&key)).unwrap(),
            ring.pick(Some(&key)).unwrap()
        );
        assert_eq!(
            over_maglev.pick(Some(&key)).unwrap(),
            maglev.pick(Some(&key)).unwrap()
        );
    }
}

#[test]
fn failover_lists_members_under_their_cap_first_in_hash_order() {
    let members: Vec<Member> = (0..5).map(|i| member(i, 1, true)).collect();
    let ring = ConsistentHash::with_vnodes(&members, 40).unwrap();
    let bounded = BoundedLoad::ring(&members, 40, 125).unwrap();
    let key = b"k";
    let home = ring.pick(Some(key)).unwrap();
    let plain = ring.failover(Some(key), home);
    assert_eq!(bounded.failover(Some(key), home), plain);
    // The plain order's first candidate at its cap goes last.
    let _busy: Vec<_> = (0..3)
        .map(|_| Load::start(members[plain[0]].load()))
        .collect();
    let mut expected = plain[1..].to_vec();
    expected.push(plain[0]);
    assert_eq!(bounded.failover(Some(key), home), expected);
}

/// Several threads pick and hold their requests at once: a pick reads
/// counts that others are changing, so two picks can take the last place
/// under one cap. Each backend ends at most one past its cap per
/// concurrent picker beyond the first (the bound the module docs state).
#[test]
fn concurrent_picks_overshoot_a_cap_by_at_most_the_other_pickers() {
    const THREADS: usize = 4;
    let lb = Arc::new(
        LoadBalancer::new(
            Strategy::bounded_load(),
            (0..20).map(|i| format!("http://10.0.0.{i}")),
        )
        .unwrap(),
    );
    let start = Arc::new(Barrier::new(THREADS));
    let held: Vec<Vec<InFlight>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (lb, start) = (Arc::clone(&lb), Arc::clone(&start));
                s.spawn(move || {
                    start.wait();
                    (0..500u32)
                        .map(|i| {
                            // One request in three for a hot key.
                            let key = if i % 3 == 0 { 0 } else { i * 7 + t as u32 };
                            let m = lb.pick(Some(&key.to_le_bytes())).unwrap();
                            Load::start(m.load())
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(held.iter().map(Vec::len).sum::<usize>(), THREADS * 500);
    let members = lb.members();
    let bounded = BoundedLoad::new(&members).unwrap();
    assert_eq!(bounded.in_flight(), (THREADS * 500) as u64);
    for (i, m) in members.iter().enumerate() {
        let cap = bounded.cap(i);
        assert!(
            m.load().in_flight() < cap + THREADS as u64,
            "{} holds {} with cap {cap}",
            m.id(),
            m.load().in_flight()
        );
    }
}

#[test]
fn bounded_loads_are_chosen_by_name() {
    for (name, strategy) in [
        ("bounded_load", Strategy::bounded_load()),
        ("consistent_hash_bounded", Strategy::bounded_load()),
        ("Consistent-Hash-Bounded", Strategy::bounded_load()),
        ("maglev_bounded_load", Strategy::maglev_bounded_load()),
    ] {
        assert_eq!(name.parse::<Strategy>().unwrap(), strategy, "{name}");
    }
    assert_eq!(
        Strategy::bounded_load(),
        Strategy::BoundedLoad {
            vnodes: 160,
            balance_factor: 125
        }
    );
    assert_eq!(Strategy::bounded_load().to_string(), "bounded_load");
    assert_eq!(
        Strategy::maglev_bounded_load().to_string(),
        "maglev_bounded_load"
    );
    let err = LoadBalancer::new(
        Strategy::BoundedLoad {
            vnodes: 160,
            balance_factor: 90,
        },
        ["http://10.0.0.1"],
    )
    .err()
    .unwrap();
    assert_eq!(
        err.to_string(),
        "invalid configuration: the balance factor is 100 × (1 + ε), from 100 to 10000 (125 caps each backend at 1.25 times its share); 90 is out of range"
    );
}
