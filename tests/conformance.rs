//! The conformance suite on our own strategies, and on balancers broken on
//! purpose to show that it catches what it claims to.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};

use std::panic::{catch_unwind, AssertUnwindSafe};

use tower_lb::testing::{Check, Conformance};
use tower_lb::{
    no_pick_error, Balancer, BuildBalancer, ConsistentHash, Error, Member, Random, Strategy,
};

// ---------------------------------------------------------------------------
// Our strategies pass.

#[test]
fn random_conforms_and_follows_the_weights() {
    Conformance::new(Strategy::Random)
        .name("random")
        .proportional(0.05)
        .check();
}

#[test]
fn weighted_random_picks_in_proportion_to_weight() {
    Conformance::new(|m: &[Member]| Ok(Random::weighted(m)))
        .name("weighted random")
        .proportional(0.05)
        .check();
}

#[test]
fn round_robin_conforms() {
    Conformance::new(Strategy::RoundRobin)
        .name("round_robin")
        .check();
}

#[test]
fn weighted_round_robin_is_exactly_proportional_over_whole_periods() {
    Conformance::new(Strategy::WeightedRoundRobin)
        .name("weighted_round_robin")
        .proportional(0.0)
        .check();
}

#[test]
fn consistent_hash_is_deterministic_and_minimally_disruptive() {
    // A ring holds 160 points per unit of weight: keep the weights small
    // enough that a debug build sorts it quickly.
    Conformance::new(Strategy::consistent_hash())
        .name("consistent_hash")
        .max_weight(16)
        .deterministic_keys()
        .minimal_disruption()
        .check();
}

#[test]
fn consistent_hash_with_one_vnode_is_still_minimally_disruptive() {
    // One point per unit of weight: a sparse ring, where a key's next point
    // clockwise is often far away. Weights up to 1000 keep it quick to build.
    Conformance::new(Strategy::ConsistentHash { vnodes: 1 })
        .name("consistent_hash (1 vnode)")
        .max_weight(1000)
        .deterministic_keys()
        .minimal_disruption()
        .check();
}

#[test]
fn maglev_is_deterministic() {
    // Maglev is not minimally disruptive (a removal moves a few keys of
    // other backends too), so that check is not opted into.
    Conformance::new(Strategy::Maglev { table_size: 1_009 })
        .name("maglev")
        .deterministic_keys()
        .check();
}

#[test]
fn maglev_with_the_default_table_conforms() {
    Conformance::new(Strategy::maglev())
        .name("maglev (65,537 slots)")
        .cases(16)
        .deterministic_keys()
        .check();
}

#[test]
fn bounded_load_over_the_ring_conforms() {
    Conformance::new(Strategy::BoundedLoad {
        vnodes: 16,
        balance_factor: 125,
    })
    .name("bounded_load")
    .max_weight(16)
    .deterministic_keys()
    .check();
}

#[test]
fn bounded_load_over_maglev_conforms() {
    Conformance::new(Strategy::MaglevBoundedLoad {
        table_size: 1_009,
        balance_factor: 150,
    })
    .name("maglev_bounded_load")
    .deterministic_keys()
    .check();
}

#[test]
fn least_request_conforms() {
    Conformance::new(Strategy::LeastRequest)
        .name("least_request")
        .check();
}

#[test]
fn the_suite_runs_the_checks_a_strategy_opts_into() {
    let suite = Conformance::new(Strategy::consistent_hash())
        .deterministic_keys()
        .minimal_disruption();
    assert_eq!(
        suite.checks(),
        [
            Check::Picks,
            Check::NoPickErrors,
            Check::Failover,
            Check::Threads,
            Check::Deterministic,
            Check::MinimalDisruption,
        ]
    );
    let report = suite.max_weight(4).cases(4).check();
    assert_eq!(report.checks().count(), 6);
    assert!(
        report.to_string().contains("ok  minimal_disruption"),
        "{report}"
    );
}

// ---------------------------------------------------------------------------
// Broken balancers are caught, and the message names the problem.

/// Runs the suite as a test would, expecting it to panic because `check`
/// fails; returns the panic message.
fn expect_failure(suite: Conformance<impl BuildBalancer>, check: Check) -> String {
    let panic = match catch_unwind(AssertUnwindSafe(|| suite.check())) {
        Ok(report) => panic!("the suite passed a broken balancer:\n{report}"),
        Err(panic) => panic,
    };
    let message = match (panic.downcast_ref::<String>(), panic.downcast_ref::<&str>()) {
        (Some(message), _) => message.clone(),
        (None, Some(message)) => (*message).to_owned(),
        (None, None) => panic!("the suite panicked without a message"),
    };
    let expected = format!("failed the conformance check `{}`", check.name());
    assert!(
        message.contains(&expected),
        "expected `{expected}` in:\n{message}"
    );
    message
}

/// Rotates over every member, up or down.
struct IgnoresDown(usize, AtomicUsize);

impl Balancer for IgnoresDown {
    fn pick(&self, _key: Option<&[u8]>) -> Result<usize, Error> {
        if self.0 == 0 {
            return Err(Error::NoBackends);
        }
        Ok(self.1.fetch_add(1, Ordering::Relaxed) % self.0)
    }
    fn failover(&self, _key: Option<&[u8]>, first: usize) -> Vec<usize> {
        (0..self.0).filter(|&i| i != first).collect()
    }
}

#[test]
fn a_balancer_that_picks_down_backends_is_caught() {
    let suite = Conformance::new(|m: &[Member]| Ok(IgnoresDown(m.len(), AtomicUsize::new(0))));
    let failure = expect_failure(suite, Check::Picks);
    assert!(failure.contains("is down"), "{failure}");
    assert!(failure.contains("with backends ["), "{failure}");
}

/// The members that are up, as a list of positions.
fn up(m: &[Member]) -> Vec<usize> {
    (0..m.len()).filter(|&i| m[i].is_up()).collect()
}

/// Round robin that forgets the empty case.
struct PanicsOnEmpty(Vec<usize>, AtomicUsize);

impl Balancer for PanicsOnEmpty {
    fn pick(&self, _key: Option<&[u8]>) -> Result<usize, Error> {
        let ticket = self.1.fetch_add(1, Ordering::Relaxed);
        Ok(self.0[ticket % self.0.len()])
    }
    fn failover(&self, _key: Option<&[u8]>, first: usize) -> Vec<usize> {
        self.0.iter().copied().filter(|&i| i != first).collect()
    }
}

#[test]
fn a_balancer_that_panics_on_an_empty_set_is_caught() {
    let suite = Conformance::new(|m: &[Member]| Ok(PanicsOnEmpty(up(m), AtomicUsize::new(0))));
    let failure = expect_failure(suite, Check::Picks);
    assert!(failure.contains("panicked"), "{failure}");
    assert!(failure.contains("with backends []"), "{failure}");
}

/// Correct picks, but failover lists one member twice.
struct RepeatsInFailover(Vec<usize>, usize);

impl Balancer for RepeatsInFailover {
    fn pick(&self, _key: Option<&[u8]>) -> Result<usize, Error> {
        self.0.first().copied().ok_or_else(|| no_pick_error(self.1))
    }
    fn failover(&self, _key: Option<&[u8]>, first: usize) -> Vec<usize> {
        let mut order: Vec<usize> = self.0.iter().copied().filter(|&i| i != first).collect();
        if let Some(&again) = order.first() {
            order.push(again);
        }
        order
    }
}

#[test]
fn duplicates_in_failover_are_caught() {
    let suite = Conformance::new(|m: &[Member]| Ok(RepeatsInFailover(up(m), m.len())));
    let failure = expect_failure(suite, Check::Failover);
    assert!(failure.contains("more than once"), "{failure}");
}

/// Reports the members that are up, not all of them, in `AllBackendsDown`.
struct MiscountsDown(Vec<usize>);

impl Balancer for MiscountsDown {
    fn pick(&self, _key: Option<&[u8]>) -> Result<usize, Error> {
        self.0.first().copied().ok_or(Error::AllBackendsDown {
            count: self.0.len(),
        })
    }
    fn failover(&self, _key: Option<&[u8]>, first: usize) -> Vec<usize> {
        self.0.iter().copied().filter(|&i| i != first).collect()
    }
}

#[test]
fn a_wrong_error_is_caught() {
    let suite = Conformance::new(|m: &[Member]| Ok(MiscountsDown(up(m))));
    let failure = expect_failure(suite, Check::Picks);
    assert!(
        failure.contains("AllBackendsDown { count: 0 }"),
        "{failure}"
    );
}

/// Hashes keys with a per-process random hasher state, built anew for
/// every balancer: the same key lands elsewhere after a rebuild.
struct RandomlySeededHash {
    up: Vec<usize>,
    total: usize,
    state: RandomState,
}

impl Balancer for RandomlySeededHash {
    fn pick(&self, key: Option<&[u8]>) -> Result<usize, Error> {
        if self.up.is_empty() {
            return Err(no_pick_error(self.total));
        }
        let hash = self.state.hash_one(key.unwrap_or_default()) as usize;
        Ok(self.up[hash % self.up.len()])
    }
    fn failover(&self, _key: Option<&[u8]>, first: usize) -> Vec<usize> {
        self.up.iter().copied().filter(|&i| i != first).collect()
    }
}

#[test]
fn a_nondeterministic_hash_is_caught() {
    let suite = Conformance::new(|m: &[Member]| {
        Ok(RandomlySeededHash {
            up: up(m),
            total: m.len(),
            state: RandomState::new(),
        })
    })
    .deterministic_keys();
    let failure = expect_failure(suite, Check::Deterministic);
    assert!(failure.contains("build"), "{failure}");
}

/// `hash(key) mod n`: deterministic, but a change of `n` moves most keys.
struct ModuloHash(Vec<usize>, usize);

impl Balancer for ModuloHash {
    fn pick(&self, key: Option<&[u8]>) -> Result<usize, Error> {
        if self.0.is_empty() {
            return Err(no_pick_error(self.1));
        }
        let hash = ConsistentHash::hash_key(key.unwrap_or_default());
        Ok(self.0[(hash % self.0.len() as u64) as usize])
    }
    fn failover(&self, _key: Option<&[u8]>, first: usize) -> Vec<usize> {
        self.0.iter().copied().filter(|&i| i != first).collect()
    }
}

#[test]
fn modulo_hashing_fails_minimal_disruption() {
    let suite = Conformance::new(|m: &[Member]| Ok(ModuloHash(up(m), m.len())))
        .distinct_ids()
        .minimal_disruption();
    let failure = expect_failure(suite, Check::MinimalDisruption);
    assert!(failure.contains("moved from"), "{failure}");
}

#[test]
fn the_plain_rotation_is_not_proportional_to_weight() {
    let suite =
        Conformance::new(|m: &[Member]| Ok(tower_lb::RoundRobin::new(m))).proportional(0.05);
    let failure = expect_failure(suite, Check::Proportional);
    assert!(failure.contains("with weight"), "{failure}");
}

#[test]
fn the_round_robin_strategy_is_proportional_to_weight_as_nginxs_is() {
    // Unequal weights build the smooth weighted balancer.
    Conformance::new(Strategy::RoundRobin)
        .proportional(0.05)
        .check();
}

/// Round robin whose wrap-around races: two threads can both take the last
/// position's successor before either resets the counter.
struct RacyWrap(Vec<usize>, usize, AtomicUsize);

impl Balancer for RacyWrap {
    fn pick(&self, _key: Option<&[u8]>) -> Result<usize, Error> {
        let n = self.0.len();
        if n == 0 {
            return Err(no_pick_error(self.1));
        }
        let i = self.2.fetch_add(1, Ordering::Relaxed);
        if i + 1 >= n {
            std::thread::yield_now();
            self.2.fetch_sub(n, Ordering::Relaxed);
        }
        Ok(*self.0.get(i).unwrap_or(&usize::MAX))
    }
    fn failover(&self, _key: Option<&[u8]>, first: usize) -> Vec<usize> {
        self.0.iter().copied().filter(|&i| i != first).collect()
    }
}

#[test]
fn a_race_between_threads_is_caught() {
    let suite = Conformance::new(|m: &[Member]| Ok(RacyWrap(up(m), m.len(), AtomicUsize::new(0))));
    let failure = expect_failure(suite, Check::Threads);
    assert!(failure.contains("threads picked at once"), "{failure}");
}

#[test]
fn a_builder_that_rejects_an_all_down_set_is_caught() {
    let suite = Conformance::new(|m: &[Member]| {
        if up(m).is_empty() {
            Err(no_pick_error(m.len()))
        } else {
            Ok(Random::new(m))
        }
    });
    let failure = expect_failure(suite, Check::Picks);
    assert!(failure.contains("must build"), "{failure}");
}

#[test]
fn a_builder_that_panics_is_caught() {
    let suite = Conformance::new(|m: &[Member]| {
        assert!(m.len() < 3, "too many members");
        Ok(Random::new(m))
    });
    let failure = expect_failure(suite, Check::Picks);
    assert!(
        failure.contains("building the balancer panicked: too many members"),
        "{failure}"
    );
}

#[test]
fn a_builder_that_refuses_most_sets_says_how_to_narrow_them() {
    let suite = Conformance::new(|m: &[Member]| {
        if m.iter().any(|m| m.is_up()) {
            Err(Error::InvalidConfig {
                reason: "no, thanks".into(),
            })
        } else {
            Ok(Random::new(m))
        }
    });
    let failure = expect_failure(suite, Check::Picks);
    assert!(failure.contains("refused"), "{failure}");
    assert!(failure.contains("no, thanks"), "{failure}");
    assert!(failure.contains("max_weight"), "{failure}");
}

#[test]
fn a_builder_that_refuses_some_sets_passes_and_reports_them() {
    // As a hash ring refuses weights that would make it too large
    // (`RingTooLarge`): those cases are skipped and counted.
    let report = Conformance::new(|m: &[Member]| {
        if m.len() > 6 && m.iter().any(Member::is_up) {
            Err(Error::InvalidConfig {
                reason: "at most 6 backends".into(),
            })
        } else {
            Ok(Random::new(m))
        }
    })
    .cases(32)
    .check();
    assert_eq!(report.cases(), 32);
    assert!(report.refused() > 0, "{report}");
    assert!(
        report
            .to_string()
            .contains("refused by the builder, skipped"),
        "{report}"
    );
}
