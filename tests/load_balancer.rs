//! The runtime handle: updates, their errors, failover through the handle,
//! state that must survive rebuilds, and picks racing with updates.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tower_lb::{
    Backend, Error, InFlight, Load, LoadBalancer, Member, Outcome, Strategy, MAX_WEIGHT,
};

/// Backend `b{i}` at `http://10.1.0.{i}:80`.
fn backend(i: usize) -> Backend {
    Backend::new(&format!("http://10.1.0.{i}:80"))
        .unwrap()
        .with_id(format!("b{i}"))
        .unwrap()
}

fn backends(range: std::ops::Range<usize>) -> Vec<Backend> {
    range.map(backend).collect()
}

fn ids(members: &[Member]) -> Vec<String> {
    members.iter().map(|m| m.id().to_owned()).collect()
}

fn pick_ids(lb: &LoadBalancer, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| lb.pick(None).unwrap().id().to_owned())
        .collect()
}

/// Id, URI, weight, up flag and the address of the counters of one member.
type MemberState = (String, String, u32, bool, usize);

/// Everything observable about the configured state: the version and, per
/// member, id, URI, weight, up flag and the identity of its counters.
fn state(lb: &LoadBalancer) -> (u64, Vec<MemberState>) {
    let members = lb
        .members()
        .iter()
        .map(|m| {
            (
                m.id().to_owned(),
                m.uri().to_string(),
                m.weight(),
                m.is_up(),
                Arc::as_ptr(m.load()) as usize,
            )
        })
        .collect();
    (lb.version(), members)
}

// ---------------------------------------------------------------------------
// Updates
// ---------------------------------------------------------------------------

#[test]
fn an_empty_load_balancer_reports_no_backends_until_one_is_added() {
    let lb = LoadBalancer::new(Strategy::RoundRobin, Vec::<Backend>::new()).unwrap();
    assert!(lb.is_empty());
    assert!(matches!(lb.pick(None), Err(Error::NoBackends)));
    assert!(lb.failover(None, "b0").is_empty());
    lb.add(backend(0)).unwrap();
    assert_eq!(lb.len(), 1);
    assert_eq!(lb.pick(None).unwrap().id(), "b0");
}

#[test]
fn every_change_bumps_the_version_and_a_no_op_does_not() {
    let lb = LoadBalancer::new(Strategy::RoundRobin, backends(0..2)).unwrap();
    assert_eq!(lb.version(), 0);
    lb.add(backend(2)).unwrap();
    assert_eq!(lb.version(), 1);
    lb.mark_down("b2").unwrap();
    assert_eq!(lb.version(), 2);
    lb.mark_down("b2").unwrap();
    assert_eq!(lb.version(), 2, "already down");
    lb.mark_up("b2").unwrap();
    lb.mark_up("b2").unwrap();
    assert_eq!(lb.version(), 3);
    lb.set_weight("b2", 4).unwrap();
    lb.set_weight("b2", 4).unwrap();
    assert_eq!(lb.version(), 4);
    assert_eq!(lb.get("b2").unwrap().weight(), 4);
    assert_eq!(lb.remove("b2").unwrap().id(), "b2");
    assert_eq!(lb.version(), 5);
    assert!(lb.get("b2").is_none());
}

#[test]
fn a_down_backend_is_not_picked_until_it_is_up_again() {
    let lb = LoadBalancer::new(Strategy::RoundRobin, backends(0..3)).unwrap();
    lb.mark_down("b1").unwrap();
    assert!(!lb.get("b1").unwrap().is_up());
    assert_eq!(pick_ids(&lb, 4), ["b0", "b2", "b0", "b2"]);
    lb.mark_down("b0").unwrap();
    lb.mark_down("b2").unwrap();
    assert!(matches!(
        lb.pick(None),
        Err(Error::AllBackendsDown { count: 3 })
    ));
    lb.mark_up("b1").unwrap();
    assert_eq!(pick_ids(&lb, 2), ["b1", "b1"]);
}

/// An update builds a new balancer, but the rotation goes on where it stood
/// instead of restarting at the first backend (which, under frequent
/// updates, would hand the first backend more than its share).
#[test]
fn an_update_continues_the_rotation_over_the_new_set() {
    let lb = LoadBalancer::new(Strategy::RoundRobin, backends(0..3)).unwrap();
    assert_eq!(pick_ids(&lb, 2), ["b0", "b1"]);
    lb.add(backend(3)).unwrap();
    assert_eq!(pick_ids(&lb, 3), ["b2", "b3", "b0"]);
    lb.mark_down("b1").unwrap();
    // Ticket 5 of the rotation b0, b2, b3.
    assert_eq!(pick_ids(&lb, 3), ["b3", "b0", "b2"]);
}

/// Service discovery re-sends the same list again and again; that must not
/// rebuild the balancer, or every refresh would restart the rotation at the
/// first backend and starve the last ones.
#[test]
fn set_backends_with_an_unchanged_list_changes_nothing() {
    let lb = LoadBalancer::new(Strategy::RoundRobin, backends(0..4)).unwrap();
    let before = state(&lb);
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.extend(pick_ids(&lb, 1));
        lb.set_backends(backends(0..4)).unwrap();
    }
    assert_eq!(seen, ["b0", "b1", "b2", "b3"]);
    assert_eq!(state(&lb), before);
    // A real change still rebuilds.
    lb.set_backends(vec![backend(0), backend(1).with_weight(2).unwrap()])
        .unwrap();
    assert_eq!(lb.version(), before.0 + 1);
}

#[test]
fn set_backends_keeps_state_and_counters_of_surviving_ids() {
    let lb = LoadBalancer::new(Strategy::RoundRobin, backends(0..3)).unwrap();
    lb.mark_down("b1").unwrap();
    let b1 = lb.get("b1").unwrap();
    lb.report(&b1, Outcome::Failure);
    let b2_load = lb.get("b2").unwrap().load().clone();

    // b0 leaves, b1 and b2 stay (b2 at a new address and weight), b3 joins.
    let moved = Backend::new("http://10.9.9.9:81")
        .unwrap()
        .with_id("b2")
        .unwrap()
        .with_weight(3)
        .unwrap();
    lb.set_backends(vec![backend(1), moved, backend(3)])
        .unwrap();

    assert_eq!(ids(&lb.members()), ["b1", "b2", "b3"]);
    let b1 = lb.get("b1").unwrap();
    assert!(!b1.is_up(), "b1 stays down");
    assert_eq!(b1.load().failures(), 1);
    let b2 = lb.get("b2").unwrap();
    assert!(b2.is_up());
    assert_eq!(b2.uri().to_string(), "http://10.9.9.9:81/");
    assert_eq!(b2.weight(), 3);
    assert!(Arc::ptr_eq(b2.load(), &b2_load));
    assert!(lb.get("b3").unwrap().is_up());
    assert!(lb.get("b0").is_none());
    // Round robin follows b2's new weight (3 to b3's 1), as nginx's does.
    assert_eq!(pick_ids(&lb, 4), ["b2", "b2", "b3", "b2"]);
}

#[test]
fn load_counters_survive_reweighting_marking_and_resetting() {
    let lb = LoadBalancer::new(Strategy::WeightedRoundRobin, backends(0..2)).unwrap();
    let m = lb.get("b0").unwrap();
    let load: Arc<Load> = m.load().clone();
    let guard: InFlight = Load::start(&load);
    lb.report(&m, Outcome::Success);
    lb.report(&m, Outcome::Failure);
    lb.report(&m, Outcome::Failure);

    lb.set_weight("b0", 7).unwrap();
    lb.mark_down("b0").unwrap();
    lb.mark_up("b0").unwrap();
    lb.set_backends(backends(0..3)).unwrap();

    let after = lb.get("b0").unwrap();
    assert_eq!(after.weight(), 1, "set_backends gave b0 its listed weight");
    assert!(Arc::ptr_eq(after.load(), &load));
    assert_eq!(after.load().in_flight(), 1);
    assert_eq!(after.load().successes(), 1);
    assert_eq!(after.load().failures(), 2);
    assert_eq!(after.load().consecutive_failures(), 2);
    drop(guard);
    assert_eq!(after.load().in_flight(), 0);
    lb.report(&after, Outcome::Success);
    assert_eq!(after.load().consecutive_failures(), 0);

    // A removed and re-added id starts with fresh counters.
    lb.remove("b0").unwrap();
    lb.add(backend(0)).unwrap();
    assert_eq!(lb.get("b0").unwrap().load().failures(), 0);
}

#[test]
fn clones_share_one_set() {
    let lb = LoadBalancer::new(Strategy::RoundRobin, backends(0..2)).unwrap();
    let other = lb.clone();
    other.mark_down("b0").unwrap();
    assert!(!lb.get("b0").unwrap().is_up());
    assert_eq!(lb.version(), other.version());
}

// ---------------------------------------------------------------------------
// Failover through the handle
// ---------------------------------------------------------------------------

/// After a keyed pick, `failover(key, picked)` lists every other backend in
/// ring order; marking the picked backend down sends the key to the first
/// of them, then to the second, and so on; marking them up brings it back.
#[test]
fn ring_failover_after_a_pick_is_the_order_keys_move_in_when_backends_go_down() {
    let lb = LoadBalancer::new(Strategy::consistent_hash(), backends(0..6)).unwrap();
    for key in ["user-1", "user-42", "session-x", ""] {
        let key = Some(key.as_bytes());
        let owner = lb.pick(key).unwrap();
        assert_eq!(lb.pick(key).unwrap().id(), owner.id());
        let order = ids(&lb.failover(key, owner.id()));
        assert_eq!(order.len(), 5);
        assert!(!order.contains(&owner.id().to_owned()));

        lb.mark_down(owner.id()).unwrap();
        for (i, next) in order.iter().enumerate() {
            assert_eq!(lb.pick(key).unwrap().id(), next);
            // Failover from the current pick continues down the same list.
            assert_eq!(ids(&lb.failover(key, next)), order[i + 1..]);
            lb.mark_down(next).unwrap();
        }
        assert!(matches!(
            lb.pick(key),
            Err(Error::AllBackendsDown { count: 6 })
        ));
        for id in ids(&lb.members()) {
            lb.mark_up(&id).unwrap();
        }
        assert_eq!(lb.pick(key).unwrap().id(), owner.id());
    }
}

#[test]
fn failover_from_an_unknown_backend_starts_with_a_fresh_pick() {
    let lb = LoadBalancer::new(Strategy::RoundRobin, backends(0..3)).unwrap();
    // The fresh pick takes b0 (first in the rotation); the rest follow it.
    assert_eq!(ids(&lb.failover(None, "gone")), ["b0", "b1", "b2"]);
    assert_eq!(ids(&lb.failover(None, "b1")), ["b2", "b0"]);
}

// ---------------------------------------------------------------------------
// Errors leave the state as it was
// ---------------------------------------------------------------------------

#[test]
fn duplicate_ids_are_rejected_by_new_add_and_set_backends() {
    let err = LoadBalancer::new(
        Strategy::RoundRobin,
        [
            "http://10.0.0.1:80",
            "http://10.0.0.2",
            "http://10.0.0.1:80/other",
        ],
    )
    .err()
    .unwrap();
    assert!(matches!(&err, Error::DuplicateId { id } if id == "10.0.0.1:80"));
    assert_eq!(
        err.to_string(),
        "duplicate backend id `10.0.0.1:80`: give each backend a distinct id (`Backend::with_id`)"
    );

    let lb = LoadBalancer::new(Strategy::RoundRobin, backends(0..2)).unwrap();
    let before = state(&lb);
    let same_id = Backend::new("http://10.5.5.5")
        .unwrap()
        .with_id("b1")
        .unwrap();
    assert!(matches!(lb.add(same_id), Err(Error::DuplicateId { id }) if id == "b1"));
    assert!(matches!(
        lb.set_backends(vec![backend(0), backend(3), backend(0)]),
        Err(Error::DuplicateId { id }) if id == "b0"
    ));
    assert_eq!(state(&lb), before);
}

#[test]
fn unknown_ids_are_rejected_by_remove_mark_and_set_weight() {
    let lb = LoadBalancer::new(Strategy::RoundRobin, backends(0..2)).unwrap();
    let before = state(&lb);
    let unknown =
        |r: Result<(), Error>| matches!(r, Err(Error::UnknownBackend { id }) if id == "nope");
    assert!(unknown(lb.remove("nope").map(drop)));
    assert!(unknown(lb.mark_down("nope")));
    assert!(unknown(lb.mark_up("nope")));
    assert!(unknown(lb.set_weight("nope", 2)));
    assert_eq!(
        lb.remove("nope").unwrap_err().to_string(),
        "unknown backend id `nope`: a backend's id is its `host:port` unless `Backend::with_id` named it"
    );
    assert_eq!(state(&lb), before);
}

#[test]
fn bad_uris_and_weights_are_rejected_and_change_nothing() {
    let lb = LoadBalancer::new(Strategy::WeightedRoundRobin, backends(0..2)).unwrap();
    let before = state(&lb);
    assert!(matches!(
        lb.add("ftp://10.0.0.9"),
        Err(Error::InvalidBackendUri { .. })
    ));
    assert!(matches!(
        lb.set_backends(["http://10.0.0.9", "10.0.0.10:80"]),
        Err(Error::InvalidBackendUri { .. })
    ));
    for bad in [MAX_WEIGHT + 1, u32::MAX] {
        assert!(matches!(
            lb.set_weight("b0", bad),
            Err(Error::InvalidWeight { weight, .. }) if weight == u64::from(bad)
        ));
    }
    assert_eq!(state(&lb), before);
    assert!(matches!(
        LoadBalancer::new(
            Strategy::RoundRobin,
            ["http://ok", "http://user:pw@10.0.0.1"]
        ),
        Err(Error::InvalidBackendUri { .. })
    ));
}

/// A weight that makes the ring too large is refused by the strategy when
/// the next snapshot is built; the current one stays.
#[test]
fn an_update_the_strategy_rejects_changes_nothing() {
    let lb = LoadBalancer::new(Strategy::consistent_hash(), backends(0..3)).unwrap();
    let owner = lb.pick(Some(b"k")).unwrap().id().to_owned();
    let before = state(&lb);
    assert!(matches!(
        lb.set_weight("b0", MAX_WEIGHT),
        Err(Error::RingTooLarge { .. })
    ));
    assert!(matches!(
        lb.add(backend(7).with_weight(200_000).unwrap()),
        Err(Error::RingTooLarge { .. })
    ));
    assert_eq!(state(&lb), before);
    assert_eq!(lb.pick(Some(b"k")).unwrap().id(), owner);

    assert!(matches!(
        LoadBalancer::new(Strategy::ConsistentHash { vnodes: 0 }, backends(0..1)),
        Err(Error::InvalidConfig { .. })
    ));
}

// ---------------------------------------------------------------------------
// Picks racing with updates
// ---------------------------------------------------------------------------

/// A tiny deterministic generator (SplitMix64) for the writer's script.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The ids a writer may configure: `b0` to `b7`.
const POOL: usize = 8;

/// What one snapshot looked like: which pool ids were configured and up.
#[derive(Clone, Copy, Debug, Default)]
struct Seen {
    configured: u8,
    up: u8,
}

fn seen(lb: &LoadBalancer) -> Seen {
    let mut s = Seen::default();
    for m in lb.members() {
        let bit = 1u8 << pool_index(m.id());
        s.configured |= bit;
        if m.is_up() {
            s.up |= bit;
        }
    }
    s
}

fn pool_index(id: &str) -> usize {
    let i: usize = id
        .strip_prefix('b')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("`{id}` was never configured"));
    assert!(i < POOL, "`{id}` was never configured");
    i
}

/// What one pick returned.
#[derive(Clone, Copy, Debug)]
enum Picked {
    Backend(usize),
    NoBackends,
    AllDown(usize),
}

/// One update the writer makes; each either changes the set (and the
/// version by exactly one) or is refused / a no-op (and changes nothing).
fn random_update(lb: &LoadBalancer, rng: &mut SplitMix) {
    let s = seen(lb);
    let present: Vec<usize> = (0..POOL)
        .filter(|&i| s.configured & (1 << i) != 0)
        .collect();
    let absent: Vec<usize> = (0..POOL)
        .filter(|&i| s.configured & (1 << i) == 0)
        .collect();
    let any_present = |rng: &mut SplitMix| present[rng.below(present.len())];
    match rng.below(10) {
        0 | 1 if !absent.is_empty() => {
            let i = absent[rng.below(absent.len())];
            lb.add(backend(i).with_weight(1 + rng.below(5) as u32).unwrap())
                .unwrap();
        }
        2 if !present.is_empty() => {
            lb.remove(&format!("b{}", any_present(rng))).unwrap();
        }
        3 if !present.is_empty() => {
            let i = any_present(rng);
            lb.set_weight(&format!("b{i}"), 1 + rng.below(5) as u32)
                .unwrap();
        }
        4..=6 if !present.is_empty() => {
            lb.mark_down(&format!("b{}", any_present(rng))).unwrap();
        }
        7 | 8 if !present.is_empty() => {
            lb.mark_up(&format!("b{}", any_present(rng))).unwrap();
        }
        9 => {
            let subset: Vec<Backend> = (0..POOL)
                .filter(|_| rng.below(2) == 0)
                .map(backend)
                .collect();
            lb.set_backends(subset).unwrap();
        }
        _ => {
            // A refused update: a duplicate id (or nothing to act on).
            if let Some(&i) = present.first() {
                assert!(lb.add(backend(i)).is_err());
            }
        }
    }
}

/// Several threads pick while one thread adds, removes, reweights, marks
/// down and up, and replaces the set. The writer logs the set after every
/// update (it is the only writer, so what it reads back is exactly the
/// snapshot it made, and every version is logged). Each picker reads the
/// version before and after its pick: the pick saw a snapshot whose version
/// lies between the two, so its answer must be right for at least one of
/// those snapshots — the backend was configured *and up* in one of them;
/// `NoBackends` only if one of them was empty; `AllBackendsDown { count }`
/// only if one of them had exactly `count` backends, all down. A backend
/// that was down (or absent) for the whole duration of a pick, or was never
/// configured, fails the test.
///
/// The writer runs for about 150 ms (at least 30 updates, however slow the
/// machine), so the test's length is bounded and its verdict is not.
fn picks_race_with_updates(strategy: Strategy, seed: u64) {
    let lb = LoadBalancer::new(strategy, backends(0..4)).unwrap();
    let done = AtomicBool::new(false);
    let picks_made = AtomicUsize::new(0);
    let mut log: HashMap<u64, Seen> = HashMap::new();
    log.insert(lb.version(), seen(&lb));

    let records: Vec<Vec<(u64, u64, Picked)>> = std::thread::scope(|scope| {
        let pickers: Vec<_> = (0..2)
            .map(|t| {
                let (lb, done, picks_made) = (&lb, &done, &picks_made);
                scope.spawn(move || {
                    let mut records = Vec::new();
                    let mut n = 0u64;
                    while !done.load(Ordering::Acquire) {
                        n += 1;
                        let key = format!("client-{t}-{}", n % 64);
                        let before = lb.version();
                        let result = lb.pick(Some(key.as_bytes()));
                        let after = lb.version();
                        let picked = match result {
                            Ok(m) => {
                                assert!(m.is_up(), "picked a member marked down: {m:?}");
                                Picked::Backend(pool_index(m.id()))
                            }
                            Err(Error::NoBackends) => Picked::NoBackends,
                            Err(Error::AllBackendsDown { count }) => Picked::AllDown(count),
                            Err(e) => panic!("unexpected error: {e}"),
                        };
                        records.push((before, after, picked));
                        picks_made.fetch_add(1, Ordering::Relaxed);
                    }
                    records
                })
            })
            .collect();

        let mut rng = SplitMix(seed);
        let start = Instant::now();
        let mut updates = 0;
        while updates < 30 || (updates < 5_000 && start.elapsed() < Duration::from_millis(150)) {
            updates += 1;
            random_update(&lb, &mut rng);
            let version = lb.version();
            let now = seen(&lb);
            if let Some(earlier) = log.insert(version, now) {
                // A refused or no-op update: the same snapshot.
                assert_eq!((earlier.configured, earlier.up), (now.configured, now.up));
            }
            // Let the pickers see this snapshot before the next update.
            let target = picks_made.load(Ordering::Relaxed) + 4;
            while picks_made.load(Ordering::Relaxed) < target {
                std::thread::yield_now();
            }
        }
        done.store(true, Ordering::Release);
        pickers.into_iter().map(|p| p.join().unwrap()).collect()
    });

    let last = lb.version();
    assert!(
        (0..=last).all(|v| log.contains_key(&v)),
        "a version went unlogged"
    );
    let mut versions_seen = BTreeSet::new();
    let mut outcomes = [0usize; 3];
    for (before, after, picked) in records.iter().flatten() {
        let candidates = (*before..=*after).map(|v| log[&v]);
        let ok = match *picked {
            Picked::Backend(i) => {
                outcomes[0] += 1;
                candidates.clone().any(|s| s.up & (1 << i) != 0)
            }
            Picked::NoBackends => {
                outcomes[1] += 1;
                candidates.clone().any(|s| s.configured == 0)
            }
            Picked::AllDown(count) => {
                outcomes[2] += 1;
                candidates
                    .clone()
                    .any(|s| s.up == 0 && s.configured.count_ones() as usize == count)
            }
        };
        assert!(
            ok,
            "{}: pick {picked:?} between versions {before} and {after}, snapshots {:?}",
            strategy,
            candidates.collect::<Vec<_>>()
        );
        if before == after {
            versions_seen.insert(*before);
        }
    }
    // The race was real: picks observed most of the snapshots, and
    // backends were picked.
    assert!(
        versions_seen.len() * 2 > log.len(),
        "{strategy}: picks saw {} of {} snapshots",
        versions_seen.len(),
        log.len()
    );
    assert!(outcomes[0] > 0, "{strategy}: {outcomes:?}");
}

#[test]
fn round_robin_picks_race_safely_with_updates() {
    picks_race_with_updates(Strategy::RoundRobin, 1);
}

#[test]
fn weighted_round_robin_picks_race_safely_with_updates() {
    picks_race_with_updates(Strategy::WeightedRoundRobin, 2);
}

#[test]
fn random_picks_race_safely_with_updates() {
    picks_race_with_updates(Strategy::Random, 3);
}

#[test]
fn consistent_hash_picks_race_safely_with_updates() {
    picks_race_with_updates(Strategy::consistent_hash(), 4);
}

/// A balancer with a bug: it answers an index past the end of the set.
struct OutOfRange;

impl tower_lb::Balancer for OutOfRange {
    fn pick(&self, _key: Option<&[u8]>) -> Result<usize, Error> {
        Ok(99)
    }
    fn failover(&self, _key: Option<&[u8]>, _first: usize) -> Vec<usize> {
        vec![0, 99]
    }
}

#[test]
fn a_balancer_answering_out_of_range_is_an_error_not_a_panic() {
    let lb = LoadBalancer::new(
        |_: &[tower_lb::Member]| Ok::<_, Error>(OutOfRange),
        ["http://a", "http://b"],
    )
    .unwrap();
    let err = lb.pick(None).unwrap_err();
    assert!(matches!(err, Error::InvalidConfig { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "invalid configuration: the balancer picked index 99 of a set of 2 backends (a bug in the balancer)"
    );
    let ids: Vec<String> = lb
        .failover(None, "a")
        .iter()
        .map(|m| m.id().to_owned())
        .collect();
    assert_eq!(ids, ["a"]);
    assert!(lb.failover(None, "gone").is_empty());
}

#[test]
fn round_robin_follows_unequal_weights_with_the_smooth_sequence() {
    let backends = ["http://a", "http://b", "http://c"]
        .iter()
        .zip([5, 1, 1])
        .map(|(uri, w)| Backend::new(uri).unwrap().with_weight(w).unwrap())
        .collect::<Vec<_>>();
    let lb = LoadBalancer::new(Strategy::RoundRobin, backends).unwrap();
    let picks: Vec<String> = (0..7)
        .map(|_| lb.pick(None).unwrap().id().to_owned())
        .collect();
    // nginx's round robin with weights 5, 1, 1.
    assert_eq!(picks, ["a", "a", "b", "a", "c", "a", "a"]);
}

#[test]
fn round_robin_with_equal_weights_rotates_strictly() {
    let lb = LoadBalancer::new(Strategy::RoundRobin, ["http://a", "http://b", "http://c"]).unwrap();
    let picks: Vec<String> = (0..4)
        .map(|_| lb.pick(None).unwrap().id().to_owned())
        .collect();
    assert_eq!(picks, ["a", "b", "c", "a"]);
}

#[test]
fn nginx_and_haproxy_strategy_names_are_aliases() {
    assert_eq!(
        "roundrobin".parse::<Strategy>().unwrap(),
        Strategy::RoundRobin
    );
    assert_eq!(
        "least_conn".parse::<Strategy>().unwrap(),
        Strategy::LeastRequest
    );
    assert_eq!(
        "LeastConn".parse::<Strategy>().unwrap(),
        Strategy::LeastRequest
    );
    assert!(matches!(
        "least-connections".parse::<Strategy>(),
        Err(Error::UnknownStrategy { .. })
    ));
}

#[test]
fn a_backend_uri_names_the_backend_built_from_it() {
    let lb = LoadBalancer::new(
        Strategy::RoundRobin,
        ["http://127.0.0.1:8081", "http://127.0.0.1:8082"],
    )
    .unwrap();
    lb.mark_down("http://127.0.0.1:8081").unwrap();
    assert!(!lb.get("127.0.0.1:8081").unwrap().is_up());
    assert_eq!(lb.pick(None).unwrap().id(), "127.0.0.1:8082");
    lb.set_weight("http://127.0.0.1:8082/", 3).unwrap();
    assert_eq!(lb.get("127.0.0.1:8082").unwrap().backend().weight(), 3);
    assert!(matches!(
        lb.mark_down("http://127.0.0.1:9999"),
        Err(Error::UnknownBackend { id }) if id == "http://127.0.0.1:9999"
    ));
}

#[test]
fn a_borrowed_pick_follows_the_same_sequence_as_an_owned_one() {
    let owned = LoadBalancer::new(Strategy::WeightedRoundRobin, backends(0..3)).unwrap();
    owned.set_weight("b0", 3).unwrap();
    let borrowed = LoadBalancer::new(Strategy::WeightedRoundRobin, backends(0..3)).unwrap();
    borrowed.set_weight("b0", 3).unwrap();
    let by_reference: Vec<String> = (0..10)
        .map(|_| borrowed.pick_with(None, |m| m.id().to_owned()).unwrap())
        .collect();
    assert_eq!(by_reference, pick_ids(&owned, 10));
    assert_eq!(
        by_reference,
        // nginx's smooth sequence for weights 3, 1, 1, twice.
        ["b0", "b1", "b0", "b2", "b0", "b0", "b1", "b0", "b2", "b0"]
    );
}

#[test]
fn a_borrowed_pick_with_every_backend_down_is_the_same_error() {
    let lb = LoadBalancer::new(Strategy::RoundRobin, backends(0..2)).unwrap();
    lb.mark_down("b0").unwrap();
    lb.mark_down("b1").unwrap();
    assert!(matches!(
        lb.pick_with(None, |_| unreachable!("nothing to pick")),
        Err(Error::AllBackendsDown { .. })
    ));
    let empty = LoadBalancer::new(Strategy::RoundRobin, Vec::<Backend>::new()).unwrap();
    assert!(matches!(
        empty.pick_with(None, |_| ()),
        Err(Error::NoBackends)
    ));
}
