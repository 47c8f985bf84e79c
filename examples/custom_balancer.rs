//! A balancer written outside the crate, used with a `LoadBalancer` and
//! checked with the conformance suite of `tower_lb::testing`.
//!
//! The strategy is weighted least request: of two backends drawn at random,
//! the one with fewer requests in flight *per unit of weight* wins, so that
//! under load each backend carries in-flight requests in proportion to its
//! weight (Envoy compares `weight / (in_flight + 1)` the same way).
//!
//! ```text
//! cargo run --example custom_balancer
//! ```
//!
//! In your own crate the suite is a dev-dependency away:
//!
//! ```toml
//! [dev-dependencies]
//! tower-lb = { version = "0.1", features = ["testing"] }
//! ```
//!
//! and the last part of `main` below goes in a `#[test]`.

use std::sync::Arc;

use tower_lb::testing::Conformance;
use tower_lb::{no_pick_error, Backend, Balancer, Error, Load, LoadBalancer, Member};

/// Of two random members that are up, the one with the lower
/// `(in_flight + 1) / weight`.
struct WeightedLeastRequest {
    /// The members that are up: position, weight and live counters.
    up: Vec<(usize, u64, Arc<Load>)>,
    total: usize,
}

impl WeightedLeastRequest {
    fn new(members: &[Member]) -> Self {
        WeightedLeastRequest {
            up: members
                .iter()
                .enumerate()
                .filter(|(_, m)| m.is_up())
                .map(|(i, m)| (i, u64::from(m.backend().weight()), Arc::clone(m.load())))
                .collect(),
            total: members.len(),
        }
    }

    /// Whether `a` is less loaded than `b` for its weight:
    /// `(a.in_flight + 1) / a.weight < (b.in_flight + 1) / b.weight`,
    /// cross-multiplied to stay in integers.
    fn lighter(a: &(usize, u64, Arc<Load>), b: &(usize, u64, Arc<Load>)) -> bool {
        (a.2.in_flight() + 1) * b.1 < (b.2.in_flight() + 1) * a.1
    }
}

impl Balancer for WeightedLeastRequest {
    fn pick(&self, _key: Option<&[u8]>) -> Result<usize, Error> {
        let n = self.up.len();
        if n == 0 {
            // NoBackends for an empty set, AllBackendsDown otherwise.
            return Err(no_pick_error(self.total));
        }
        // Two independent draws; when they coincide, that member it is.
        let a = &self.up[rand::random_range(0..n)];
        let b = &self.up[rand::random_range(0..n)];
        Ok(if Self::lighter(b, a) { b.0 } else { a.0 })
    }

    fn failover(&self, _key: Option<&[u8]>, first: usize) -> Vec<usize> {
        // Every other member that is up, once: the lightest first.
        let mut others: Vec<_> = self.up.iter().filter(|m| m.0 != first).collect();
        others.sort_by(|a, b| {
            let (a, b) = ((a.2.in_flight() + 1) * b.1, (b.2.in_flight() + 1) * a.1);
            a.cmp(&b)
        });
        others.into_iter().map(|m| m.0).collect()
    }

    /// The key plays no part in a pick, so a request that carries one (a
    /// sticky key extractor on the same layer) is still balanced as a
    /// keyless one: a retry, or a pick whose backend is out, draws again.
    fn uses_key(&self) -> bool {
        false
    }
}

/// The same strategy with a bug: when every member is down it picks the
/// first anyway, instead of returning the error.
struct PicksWhenAllDown(WeightedLeastRequest);

impl Balancer for PicksWhenAllDown {
    fn pick(&self, key: Option<&[u8]>) -> Result<usize, Error> {
        match self.0.pick(key) {
            // Wrong: with every member down, this picks one anyway.
            Err(_) if self.0.total > 0 => Ok(0),
            other => other,
        }
    }

    fn failover(&self, key: Option<&[u8]>, first: usize) -> Vec<usize> {
        self.0.failover(key, first)
    }
}

fn main() -> Result<(), Error> {
    // 1. Use it: any closure from members to a balancer is a strategy.
    let lb = LoadBalancer::new(
        |members: &[Member]| Ok(WeightedLeastRequest::new(members)),
        [
            Backend::new("http://10.0.0.1:8080")?.with_weight(1)?,
            Backend::new("http://10.0.0.2:8080")?.with_weight(3)?,
        ],
    )?;

    // 400 requests that stay in flight: the weight-3 backend takes about
    // three times as many. (The load-balance layer holds these guards for
    // the duration of each request.)
    let mut in_flight = Vec::new();
    for _ in 0..400 {
        let member = lb.pick(None)?;
        in_flight.push(Load::start(member.load()));
    }
    for member in lb.members() {
        println!(
            "{} (weight {}): {} requests in flight",
            member.id(),
            member.weight(),
            member.load().in_flight()
        );
    }
    drop(in_flight);

    lb.mark_down("10.0.0.2:8080")?;
    assert_eq!(lb.pick(None)?.id(), "10.0.0.1:8080");
    println!("with 10.0.0.2:8080 down, picks go to 10.0.0.1:8080");

    // 2. Test it: the conformance suite checks the Balancer contract over
    //    generated sets (empty, all down, extreme weights, busy members...).
    let report = Conformance::new(|members: &[Member]| Ok(WeightedLeastRequest::new(members)))
        .name("weighted least request")
        .check();
    println!("\n{report}");

    // 3. A bug is caught, and the smallest counter-example is described.
    let failure = Conformance::new(|members: &[Member]| {
        Ok(PicksWhenAllDown(WeightedLeastRequest::new(members)))
    })
    .name("picks when all down")
    .run()
    .expect_err("the suite catches the bug");
    // `Error::ConformanceFailed` displays the failure in words.
    println!("\nThe suite catches a buggy variant:\n{failure}");
    Ok(())
}
