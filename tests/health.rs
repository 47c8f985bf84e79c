//! Health rules, each against an injected clock: nginx's passive ejection,
//! HAProxy's rise/fall, drain, slow start, the all-ejected modes, state that
//! survives membership changes, and rotation under churn.

use std::collections::HashMap;
use std::time::Duration;

use proptest::prelude::*;
use tower_lb::health::{BackendState, CheckResult, HealthPolicy, ManualClock, WhenAllEjected};
use tower_lb::{Backend, Balancer, BuildBalancer, Error, LoadBalancer, Member, Outcome, Strategy};

const SEC: Duration = Duration::from_secs(1);

fn backend(i: usize) -> Backend {
    Backend::new(&format!("http://10.2.0.{i}:80"))
        .unwrap()
        .with_id(format!("b{i}"))
        .unwrap()
}

fn lb_with(strategy: Strategy, n: usize, policy: HealthPolicy) -> (LoadBalancer, ManualClock) {
    let clock = ManualClock::new();
    let lb = LoadBalancer::new(strategy, (0..n).map(backend))
        .unwrap()
        .with_health_policy(policy.clock(clock.clone()));
    (lb, clock)
}

fn pick_ids(lb: &LoadBalancer, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| lb.pick(None).unwrap().id().to_owned())
        .collect()
}

fn fail(lb: &LoadBalancer, id: &str) {
    lb.report(&lb.get(id).unwrap(), Outcome::Failure);
}

fn succeed(lb: &LoadBalancer, id: &str) {
    lb.report(&lb.get(id).unwrap(), Outcome::Success);
}

fn state_of(lb: &LoadBalancer, id: &str) -> BackendState {
    lb.stats().into_iter().find(|s| s.id == id).unwrap().state
}

// ---------------------------------------------------------------------------
// nginx's passive rules
// ---------------------------------------------------------------------------

#[test]
fn default_policy_is_nginx_max_fails_1_fail_timeout_10s() {
    let p = HealthPolicy::default();
    assert_eq!((p.get_max_fails(), p.get_fail_timeout()), (1, 10 * SEC));
    // A load balancer starts with nginx's defaults: one failure ejects.
    let lb = LoadBalancer::new(Strategy::RoundRobin, (0..2).map(backend)).unwrap();
    assert_eq!(lb.health_policy().get_max_fails(), 1);
    fail(&lb, "b0");
    assert_eq!(pick_ids(&lb, 2), ["b1", "b1"]);
    // `off()` turns passive ejection off.
    let lb = LoadBalancer::new(Strategy::RoundRobin, (0..2).map(backend))
        .unwrap()
        .with_health_policy(HealthPolicy::off());
    fail(&lb, "b0");
    assert_eq!(pick_ids(&lb, 2), ["b0", "b1"]);
}

#[test]
fn max_fails_failures_eject_for_fail_timeout_then_exactly_one_probe() {
    let (lb, clock) = lb_with(
        Strategy::RoundRobin,
        3,
        HealthPolicy::default().max_fails(2),
    );
    fail(&lb, "b0");
    assert_eq!(state_of(&lb, "b0"), BackendState::Up);
    assert_eq!(pick_ids(&lb, 3), ["b0", "b1", "b2"]);
    fail(&lb, "b0");
    assert_eq!(state_of(&lb, "b0"), BackendState::Ejected);
    assert_eq!(pick_ids(&lb, 4), ["b1", "b2", "b1", "b2"]);
    // Still out at exactly fail_timeout (nginx: `now - checked <= fail_timeout`).
    clock.advance(10 * SEC);
    assert!(pick_ids(&lb, 6).iter().all(|id| id != "b0"));
    clock.advance(Duration::from_millis(1));
    // One probe, then out again while the probe is unanswered.
    let picks = pick_ids(&lb, 9);
    assert_eq!(
        picks.iter().filter(|id| *id == "b0").count(),
        1,
        "{picks:?}"
    );
    clock.advance(5 * SEC);
    assert!(pick_ids(&lb, 6).iter().all(|id| id != "b0"));
}

#[test]
fn a_failed_probe_ejects_for_another_full_fail_timeout() {
    let (lb, clock) = lb_with(Strategy::RoundRobin, 2, HealthPolicy::default());
    fail(&lb, "b0");
    clock.advance(11 * SEC);
    let picks = pick_ids(&lb, 2);
    assert!(picks.contains(&"b0".to_owned()), "{picks:?}");
    fail(&lb, "b0"); // the probe failed
    assert_eq!(lb.stats()[0].ejections, 2);
    fail(&lb, "b0"); // another request that was in flight
    assert_eq!(lb.stats()[0].ejections, 2);
    clock.advance(10 * SEC);
    assert_eq!(pick_ids(&lb, 4), ["b1", "b1", "b1", "b1"]);
    clock.advance(SEC);
    assert!(pick_ids(&lb, 2).contains(&"b0".to_owned()));
}

#[test]
fn a_successful_probe_brings_the_backend_back() {
    let (lb, clock) = lb_with(Strategy::RoundRobin, 2, HealthPolicy::default());
    fail(&lb, "b0");
    clock.advance(11 * SEC);
    let probe = (0..2)
        .map(|_| lb.pick(None).unwrap())
        .find(|m| m.id() == "b0")
        .unwrap();
    lb.report(&probe, Outcome::Success);
    assert_eq!(state_of(&lb, "b0"), BackendState::Up);
    assert_eq!(lb.stats()[0].current_fails, 0);
    let picks = pick_ids(&lb, 4);
    assert_eq!(
        picks.iter().filter(|id| *id == "b0").count(),
        2,
        "{picks:?}"
    );
}

#[test]
fn failures_count_only_within_fail_timeout_of_each_other() {
    // nginx clears `fails` on a success only once a pick came more than
    // fail_timeout after the last failure (`accessed < checked`).
    let (lb, clock) = lb_with(
        Strategy::RoundRobin,
        2,
        HealthPolicy::default().max_fails(3),
    );
    fail(&lb, "b0");
    fail(&lb, "b0");
    // A success soon after does not clear them...
    let _ = pick_ids(&lb, 2);
    succeed(&lb, "b0");
    assert_eq!(lb.stats()[0].current_fails, 2);
    // ...but one after a pick past fail_timeout does.
    clock.advance(11 * SEC);
    let _ = pick_ids(&lb, 2);
    succeed(&lb, "b0");
    assert_eq!(lb.stats()[0].current_fails, 0);
    fail(&lb, "b0");
    assert_eq!(state_of(&lb, "b0"), BackendState::Up);
}

#[test]
fn max_fails_0_disables_ejection_per_balancer_and_per_backend() {
    let (lb, _clock) = lb_with(Strategy::RoundRobin, 2, HealthPolicy::off());
    for _ in 0..5 {
        fail(&lb, "b0");
    }
    assert_eq!(pick_ids(&lb, 2), ["b0", "b1"]);

    let clock = ManualClock::new();
    let lb = LoadBalancer::new(
        Strategy::RoundRobin,
        [backend(0).with_max_fails(0), backend(1).with_max_fails(2)],
    )
    .unwrap()
    .with_health_policy(HealthPolicy::default().clock(clock.clone()));
    fail(&lb, "b0");
    fail(&lb, "b1");
    assert_eq!(pick_ids(&lb, 2), ["b0", "b1"]);
    fail(&lb, "b1");
    assert_eq!(pick_ids(&lb, 3), ["b0", "b0", "b0"]);
}

#[test]
fn per_backend_fail_timeout_overrides_the_policy() {
    let clock = ManualClock::new();
    let lb = LoadBalancer::new(
        Strategy::RoundRobin,
        [backend(0).with_fail_timeout(2 * SEC), backend(1)],
    )
    .unwrap()
    .with_health_policy(HealthPolicy::default().clock(clock.clone()));
    fail(&lb, "b0");
    fail(&lb, "b1");
    assert!(matches!(
        lb.pick(None),
        Err(Error::AllBackendsEjected { count: 2 })
    ));
    clock.advance(3 * SEC);
    assert_eq!(lb.pick(None).unwrap().id(), "b0");
}

// ---------------------------------------------------------------------------
// Ejection at pick time, consistent hashing, all ejected
// ---------------------------------------------------------------------------

#[test]
fn an_ejected_backends_keys_go_to_ring_successors_and_come_back() {
    let (lb, clock) = lb_with(Strategy::consistent_hash(), 4, HealthPolicy::default());
    let keys: Vec<String> = (0..200).map(|i| format!("user-{i}")).collect();
    let owner = |k: &str| lb.pick(Some(k.as_bytes())).unwrap().id().to_owned();
    let before: HashMap<&str, String> = keys.iter().map(|k| (k.as_str(), owner(k))).collect();
    let version = lb.version();
    fail(&lb, "b2");
    assert_eq!(lb.version(), version, "ejection must not rebuild the ring");
    for k in &keys {
        let now = owner(k);
        if before[k.as_str()] == "b2" {
            // The ring successor: what failover lists first for this key.
            let successor = lb.failover(Some(k.as_bytes()), "b2");
            assert_eq!(now, successor[0].id());
        } else {
            assert_eq!(now, before[k.as_str()], "key {k} moved");
        }
    }
    clock.advance(11 * SEC);
    // The first key of b2 is the probe; it succeeds and every key is home.
    let probe_key = keys.iter().find(|k| before[k.as_str()] == "b2").unwrap();
    let probe = lb.pick(Some(probe_key.as_bytes())).unwrap();
    assert_eq!(probe.id(), "b2");
    lb.report(&probe, Outcome::Success);
    for k in &keys {
        assert_eq!(owner(k), before[k.as_str()]);
    }
}

#[test]
fn all_ejected_is_a_clear_error_by_default() {
    let (lb, _clock) = lb_with(Strategy::RoundRobin, 2, HealthPolicy::default());
    fail(&lb, "b0");
    fail(&lb, "b1");
    let err = lb.pick(None).unwrap_err();
    assert!(matches!(err, Error::AllBackendsEjected { count: 2 }));
    assert_eq!(err.status_code(), http::StatusCode::SERVICE_UNAVAILABLE);
    assert!(lb.failover(None, "b0").is_empty());
}

#[test]
fn panic_mode_spreads_over_every_backend_when_all_are_ejected() {
    let (lb, _clock) = lb_with(
        Strategy::RoundRobin,
        3,
        HealthPolicy::default().when_all_ejected(WhenAllEjected::UseAll),
    );
    for id in ["b0", "b1", "b2"] {
        fail(&lb, id);
    }
    let picks = pick_ids(&lb, 30);
    for id in ["b0", "b1", "b2"] {
        let n = picks.iter().filter(|p| *p == id).count();
        assert!((5..=15).contains(&n), "{id}: {n} of 30");
    }
    // One backend back: panic mode ends, it takes everything.
    lb.add(backend(3)).unwrap();
    assert_eq!(pick_ids(&lb, 4), ["b3", "b3", "b3", "b3"]);
}

#[test]
fn with_most_backends_ejected_picks_go_to_the_healthy_ones_only() {
    for strategy in [
        Strategy::Random,
        Strategy::RoundRobin,
        Strategy::WeightedRoundRobin,
        Strategy::LeastRequest,
        Strategy::consistent_hash(),
        Strategy::maglev(),
        Strategy::bounded_load(),
        Strategy::maglev_bounded_load(),
    ] {
        let (lb, _clock) = lb_with(strategy, 10, HealthPolicy::default());
        for i in 0..9 {
            fail(&lb, &format!("b{i}"));
        }
        for i in 0..50u32 {
            let key = i.to_le_bytes();
            assert_eq!(lb.pick(Some(&key)).unwrap().id(), "b9", "{strategy}");
            assert_eq!(lb.pick(None).unwrap().id(), "b9", "{strategy}");
        }
    }
}

// ---------------------------------------------------------------------------
// Active checks
// ---------------------------------------------------------------------------

#[test]
fn fall_failed_checks_take_a_backend_down_and_rise_passes_bring_it_back() {
    let (lb, _clock) = lb_with(Strategy::RoundRobin, 2, HealthPolicy::off().rise(2).fall(3));
    let check = |r| lb.report_check("b0", r).unwrap();
    assert!(check(CheckResult::Fail));
    assert!(check(CheckResult::Fail));
    assert!(check(CheckResult::Pass)); // breaks the streak
    assert!(check(CheckResult::Fail));
    assert!(check(CheckResult::Fail));
    assert!(!check(CheckResult::Fail));
    assert_eq!(state_of(&lb, "b0"), BackendState::Down);
    assert_eq!(pick_ids(&lb, 3), ["b1", "b1", "b1"]);
    assert!(!check(CheckResult::Pass));
    assert!(!check(CheckResult::Fail));
    assert!(!check(CheckResult::Pass));
    assert!(check(CheckResult::Pass));
    assert_eq!(state_of(&lb, "b0"), BackendState::Up);
    assert!(pick_ids(&lb, 2).contains(&"b0".to_owned()));
    assert!(matches!(
        lb.report_check("nope", CheckResult::Pass),
        Err(Error::UnknownBackend { .. })
    ));
}

// ---------------------------------------------------------------------------
// Drain
// ---------------------------------------------------------------------------

#[test]
fn weight_0_drains_in_every_strategy() {
    for strategy in [
        Strategy::Random,
        Strategy::RoundRobin,
        Strategy::WeightedRoundRobin,
        Strategy::LeastRequest,
        Strategy::consistent_hash(),
        Strategy::maglev(),
        Strategy::bounded_load(),
        Strategy::maglev_bounded_load(),
    ] {
        let lb = LoadBalancer::new(strategy, (0..3).map(backend)).unwrap();
        lb.set_weight("b1", 0).unwrap();
        assert_eq!(state_of(&lb, "b1"), BackendState::Draining);
        for i in 0..100u32 {
            let key = i.to_le_bytes();
            assert_ne!(lb.pick(Some(&key)).unwrap().id(), "b1", "{strategy}");
            assert_ne!(lb.pick(None).unwrap().id(), "b1", "{strategy}");
        }
        assert!(lb.get("b1").unwrap().is_up());
        lb.set_weight("b0", 0).unwrap();
        lb.set_weight("b2", 0).unwrap();
        assert!(matches!(
            lb.pick(None),
            Err(Error::AllBackendsDown { count: 3 })
        ));
        lb.set_weight("b1", 2).unwrap();
        assert_eq!(lb.pick(None).unwrap().id(), "b1");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// No strategy panics or picks a draining member, whatever mix of
    /// weights (0 included) and up flags; failover lists exactly the other
    /// members that take new picks.
    #[test]
    fn strategies_never_pick_or_panic_on_weight_0(
        spec in prop::collection::vec((0u32..4, any::<bool>()), 0..12),
        strategy in prop::sample::select(vec![
            Strategy::Random, Strategy::RoundRobin, Strategy::WeightedRoundRobin,
            Strategy::LeastRequest, Strategy::consistent_hash(), Strategy::maglev(),
            Strategy::bounded_load(), Strategy::maglev_bounded_load(),
        ]),
        key in prop::option::of(any::<[u8; 4]>()),
    ) {
        let members: Vec<Member> = spec
            .iter()
            .enumerate()
            .map(|(i, &(w, up))| Member::new(backend(i).with_weight(w).unwrap()).with_up(up))
            .collect();
        let balancer = strategy.build(&members).unwrap();
        let pickable: Vec<usize> = (0..members.len()).filter(|&i| members[i].takes_new_picks()).collect();
        for _ in 0..20 {
            match balancer.pick(key.as_ref().map(|k| &k[..])) {
                Ok(i) => {
                    prop_assert!(pickable.contains(&i));
                    let mut order = balancer.failover(key.as_ref().map(|k| &k[..]), i);
                    order.sort_unstable();
                    let others: Vec<usize> = pickable.iter().copied().filter(|&j| j != i).collect();
                    prop_assert_eq!(order, others);
                }
                Err(Error::NoBackends) => prop_assert!(members.is_empty()),
                Err(Error::AllBackendsDown { .. }) => prop_assert!(pickable.is_empty()),
                Err(e) => prop_assert!(false, "unexpected error {e}"),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Slow start
// ---------------------------------------------------------------------------

#[test]
fn slow_start_ramps_a_recovered_backend_from_10_percent_to_full() {
    let (lb, clock) = lb_with(
        Strategy::RoundRobin,
        2,
        HealthPolicy::default().slow_start(100 * SEC),
    );
    fail(&lb, "b0");
    clock.advance(11 * SEC);
    let probe = (0..2)
        .map(|_| lb.pick(None).unwrap())
        .find(|m| m.id() == "b0")
        .unwrap();
    lb.report(&probe, Outcome::Success);
    assert_eq!(state_of(&lb, "b0"), BackendState::SlowStarting);
    let share = |n: usize| pick_ids(&lb, n).iter().filter(|id| *id == "b0").count();
    // Its effective weight is a share `s` of 1 (10% at first, 50% half-way,
    // 100% at the end), so it gets s / (1 + s) of the picks: 727, 2667 and
    // 4000 of 8000. Bounds are over 5 sigma.
    let start = share(8000);
    assert!((590..=870).contains(&start), "start: {start} of 8000");
    clock.advance(50 * SEC);
    let half = share(8000);
    assert!((2450..=2880).contains(&half), "half-way: {half} of 8000");
    clock.advance(50 * SEC);
    assert_eq!(share(8000), 4000);
    assert_eq!(state_of(&lb, "b0"), BackendState::Up);
}

#[test]
fn a_new_or_re_enabled_backend_slow_starts_and_a_lone_one_still_serves() {
    let (lb, clock) = lb_with(
        Strategy::WeightedRoundRobin,
        1,
        HealthPolicy::default().slow_start(10 * SEC),
    );
    lb.add(backend(1)).unwrap();
    assert_eq!(state_of(&lb, "b1"), BackendState::SlowStarting);
    assert_eq!(state_of(&lb, "b0"), BackendState::Up);
    lb.mark_down("b0").unwrap();
    // Nothing else to pick: the ramping backend serves anyway.
    assert_eq!(pick_ids(&lb, 3), ["b1", "b1", "b1"]);
    lb.mark_up("b0").unwrap();
    assert_eq!(state_of(&lb, "b0"), BackendState::SlowStarting);
    clock.advance(10 * SEC);
    assert_eq!(state_of(&lb, "b0"), BackendState::Up);
}

// ---------------------------------------------------------------------------
// State across membership changes; rotation under churn
// ---------------------------------------------------------------------------

#[test]
fn health_and_counters_survive_changes_to_other_backends() {
    let (lb, _clock) = lb_with(
        Strategy::RoundRobin,
        4,
        HealthPolicy::default().max_fails(2),
    );
    fail(&lb, "b1");
    fail(&lb, "b1");
    fail(&lb, "b2");
    let busy = tower_lb::Load::start(lb.get("b3").unwrap().load());
    lb.add(backend(7)).unwrap();
    lb.remove("b0").unwrap();
    lb.set_weight("b3", 5).unwrap();
    lb.set_backends([backend(1), backend(2), backend(3).with_weight(5).unwrap()])
        .unwrap();
    let stats: HashMap<String, _> = lb.stats().into_iter().map(|s| (s.id.clone(), s)).collect();
    assert_eq!(stats["b1"].state, BackendState::Ejected);
    assert_eq!(stats["b1"].current_fails, 2);
    assert_eq!(stats["b2"].current_fails, 1);
    assert_eq!(stats["b3"].in_flight, 1);
    assert!(pick_ids(&lb, 6).iter().all(|id| id != "b1"));
    drop(busy);
}

#[test]
fn under_an_update_every_few_picks_the_first_backend_gets_only_its_share() {
    for strategy in [Strategy::RoundRobin, Strategy::WeightedRoundRobin] {
        let lb = LoadBalancer::new(strategy, (0..4).map(backend)).unwrap();
        let mut counts: HashMap<String, usize> = HashMap::new();
        for round in 0..400 {
            for id in pick_ids(&lb, 3) {
                *counts.entry(id).or_default() += 1;
            }
            if strategy == Strategy::RoundRobin {
                // A discovery refresh that moves another backend to a new
                // port (weights stay equal: round robin stays strict).
                let port = 80 + round % 2;
                let moved = Backend::new(&format!("http://10.2.0.3:{port}"))
                    .unwrap()
                    .with_id("b3")
                    .unwrap();
                lb.set_backends([backend(0), backend(1), backend(2), moved])
                    .unwrap();
            } else {
                // A discovery refresh that changes another backend's weight.
                lb.set_weight("b3", 1 + round % 2).unwrap();
            }
        }
        // 1200 picks. Restarting the rotation at every update would give b0
        // one pick in three (400). Round robin: 300 each, exactly. With
        // weights, b3's alternates 1 and 2, so b0's share is
        // 1200 × (1/4 + 1/5) / 2 = 270; the offset carried into a period of
        // another length makes it approximate.
        let first = counts["b0"];
        if strategy == Strategy::RoundRobin {
            assert!(counts.values().all(|&c| c == 300), "{counts:?}");
        } else {
            assert!(
                (200..=300).contains(&first),
                "b0 got {first} of 1200: {counts:?}"
            );
        }
    }
}

#[test]
fn stats_count_picks_outcomes_and_ejections() {
    let (lb, _clock) = lb_with(
        Strategy::RoundRobin,
        2,
        HealthPolicy::default().max_fails(2),
    );
    let m = lb.get("b0").unwrap();
    let guard = tower_lb::Load::start(m.load());
    lb.report(&m, Outcome::Success);
    fail(&lb, "b0");
    fail(&lb, "b0");
    let s = &lb.stats()[0];
    assert_eq!(
        (
            s.picks,
            s.in_flight,
            s.successes,
            s.failures,
            s.ejections,
            s.state
        ),
        (1, 1, 1, 2, 1, BackendState::Ejected)
    );
    assert_eq!(s.state.as_str(), "ejected");
    drop(guard);
    lb.mark_down("b1").unwrap();
    assert_eq!(lb.stats()[1].state, BackendState::Down);
}

#[test]
fn changing_the_health_policy_keeps_the_balancer_and_its_rotation() {
    let lb = LoadBalancer::new(Strategy::RoundRobin, (0..3).map(backend))
        .unwrap()
        .with_health_policy(HealthPolicy::off());
    assert_eq!(pick_ids(&lb, 1), ["b0"]);
    fail(&lb, "b2");
    lb.set_health_policy(HealthPolicy::default().max_fails(1));
    // b2's failure was recorded while passive ejection was off: not counted.
    assert_eq!(pick_ids(&lb, 3), ["b1", "b2", "b0"]);
    fail(&lb, "b2");
    assert_eq!(pick_ids(&lb, 3), ["b1", "b0", "b1"]);
}

#[test]
fn a_single_backend_is_never_ejected_passively_but_failing_checks_take_it_out() {
    // nginx: "if there is only a single server in a group, max_fails,
    // fail_timeout and slow_start parameters are ignored".
    let (lb, _clock) = lb_with(
        Strategy::RoundRobin,
        1,
        HealthPolicy::default().rise(1).fall(1),
    );
    fail(&lb, "b0");
    fail(&lb, "b0");
    assert_eq!(pick_ids(&lb, 3), ["b0", "b0", "b0"]);
    lb.report_check("b0", CheckResult::Fail).unwrap();
    assert!(matches!(
        lb.pick(None),
        Err(tower_lb::Error::AllBackendsEjected { count: 1 })
    ));
    lb.report_check("b0", CheckResult::Pass).unwrap();
    assert_eq!(pick_ids(&lb, 1), ["b0"]);
}

#[test]
fn a_borrowed_pick_skips_ejected_and_draining_backends_as_an_owned_one_does() {
    let (lb, _clock) = lb_with(Strategy::RoundRobin, 3, HealthPolicy::default());
    fail(&lb, "b0");
    lb.set_weight("b1", 0).unwrap();
    for _ in 0..4 {
        assert_eq!(lb.pick_with(None, |m| m.id().to_owned()).unwrap(), "b2");
        assert_eq!(lb.pick(None).unwrap().id(), "b2");
    }
}
