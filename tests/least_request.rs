//! Least request (power of two choices) prefers the members with fewer
//! requests in flight.

use proptest::prelude::*;
use tower_lb::testing::backend_sets;
use tower_lb::{Balancer, LeastRequest, Load, LoadBalancer, Strategy};

#[test]
fn with_two_backends_and_one_busy_every_pick_goes_to_the_idle_one() {
    let lb = LoadBalancer::new(
        Strategy::LeastRequest,
        ["http://127.0.0.1:8081", "http://127.0.0.1:8082"],
    )
    .unwrap();
    let busy = lb.get("127.0.0.1:8081").unwrap();
    let _in_flight = Load::start(busy.load());
    for _ in 0..1000 {
        assert_eq!(lb.pick(None).unwrap().id(), "127.0.0.1:8082");
    }
}

#[test]
fn requests_that_pile_up_never_go_to_the_strictly_busiest_backend() {
    let lb = LoadBalancer::new(
        Strategy::LeastRequest,
        ["http://10.0.0.1", "http://10.0.0.2", "http://10.0.0.3"],
    )
    .unwrap();
    // Requests that never finish: every pick is compared with another
    // backend, so a backend busier than all others never gets one more.
    let mut guards = Vec::new();
    for _ in 0..300 {
        let before: Vec<u64> = lb.members().iter().map(|m| m.load().in_flight()).collect();
        let member = lb.pick(None).unwrap();
        let picked = member.load().in_flight();
        assert!(
            before.iter().filter(|&&n| n >= picked).count() > 1,
            "picked a backend with {picked} in flight, the strict maximum of {before:?}"
        );
        guards.push(Load::start(member.load()));
    }
    let counts: Vec<u64> = lb.members().iter().map(|m| m.load().in_flight()).collect();
    assert_eq!(counts.iter().sum::<u64>(), 300);
    assert!(counts.iter().all(|&n| n >= 60), "{counts:?}");
}

#[test]
fn least_request_is_built_by_name() {
    let strategy: Strategy = "least-request".parse().unwrap();
    assert_eq!(strategy, Strategy::LeastRequest);
    assert_eq!(strategy.to_string(), "least_request");
    assert!(Strategy::NAMES.contains(&"least_request"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whichever pair is drawn, the busiest member loses to the other.
    #[test]
    fn the_strictly_busiest_member_is_never_picked(set in backend_sets(8).at_least_one_up()) {
        let members = set.members();
        let least = LeastRequest::new(&members);
        let up: Vec<_> = set.backends().iter().filter(|b| b.up).collect();
        let busiest = up.iter().map(|b| b.in_flight).max().unwrap();
        prop_assume!(up.len() >= 2 && up.iter().filter(|b| b.in_flight == busiest).count() == 1);
        for _ in 0..50 {
            let i = least.pick(None).unwrap();
            prop_assert!(
                set.backends()[i].in_flight < busiest,
                "with backends {set}, picked {}", set.backends()[i]
            );
        }
    }
}
