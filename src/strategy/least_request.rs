//! Least request by the power of two choices.
//!
//! For each pick, two distinct members that are up are drawn at random and
//! the one with fewer requests in flight wins. This is the approach of
//! `tower::balance::p2c` and of Envoy's `LEAST_REQUEST` policy (with its
//! default `choice_count` of 2), after Mitzenmacher's *The Power of Two
//! Choices in Randomized Load Balancing*: comparing two random members
//! already brings the busiest member's load down from `log n / log log n`
//! above the mean (uniform random) to `log log n`, while never sending every
//! request to the same "least loaded" member at once, as a scan for the
//! global minimum does when many pickers see the same stale counts.
//!
//! The counts are [`Load::in_flight`](crate::Load::in_flight), shared by
//! every snapshot of a member: the load-balance layer keeps them, and so
//! does anything holding a [`Load::start`](crate::Load::start) guard for the
//! duration of a request (the layer counts a request until its response
//! head arrives, as `tower::load`'s default does, or with
//! `LoadBalanceLayer::count_until_exchange_ends` until its body ends or its
//! WebSocket tunnel closes).
//!
//! Weights decide how often a member is *drawn* as a candidate: each of the
//! two is drawn with probability proportional to its weight (the second
//! among the others). A tie in load goes to the first drawn. So with equal
//! loads (an idle system) the picks follow the weights, as Envoy's weighted
//! least request does, and with equal weights this is plain P2C.
//!
//! This strategy is written with the crate's public API only, as a balancer
//! of your own would be, and tested with the conformance suite of
//! `tower_lb::testing` (the `testing` feature).
//!
//! The affinity key is ignored.

use std::cmp::Reverse;
use std::sync::Arc;

use super::random::{below, two_below};
use crate::{no_pick_error, Balancer, Error, Load, Member};

/// Least request by the power of two choices: of two members that are up,
/// drawn at random, the one with fewer requests in flight.
///
/// ```
/// use tower_lb::{Balancer, LeastRequest, Load, Member};
///
/// let members = vec![Member::new("http://a".parse()?), Member::new("http://b".parse()?)];
/// let least = LeastRequest::new(&members);
///
/// // A request in flight on `a`: with two members, `b` always wins.
/// let busy = Load::start(members[0].load());
/// assert!((0..100).all(|_| least.pick(None).unwrap() == 1));
///
/// drop(busy);
/// assert!((0..100).any(|_| least.pick(None).unwrap() == 0));
/// # Ok::<(), tower_lb::Error>(())
/// ```
#[derive(Debug)]
pub struct LeastRequest {
    /// The members that take picks: 16 bytes each, so that the two a pick
    /// reads are likely in cache even over thousands of members.
    up: Vec<Candidate>,
    /// Their weights, in the same order.
    weights: Vec<u32>,
    /// Running sums of the candidates' weights, for weighted draws; empty
    /// when every weight is the same, as the draws are then uniform and
    /// need no search.
    cumulative: Vec<u64>,
    total: usize,
}

#[derive(Debug)]
struct Candidate {
    index: usize,
    load: Arc<Load>,
}

impl LeastRequest {
    /// Builds the balancer over the members that are up, reading their live
    /// counters on every pick.
    pub fn new(members: &[Member]) -> Self {
        // Sized for every member up front: a filtered iterator gives no
        // size, and growing two vectors by doubling was a tenth of a
        // rebuild at 10,000 members.
        let mut up = Vec::with_capacity(members.len());
        let mut weights = Vec::with_capacity(members.len());
        for (index, m) in members.iter().enumerate() {
            if m.takes_new_picks() {
                up.push(Candidate {
                    index,
                    load: Arc::clone(m.load()),
                });
                weights.push(m.backend().weight());
            }
        }
        let equal = weights.windows(2).all(|w| w[0] == w[1]);
        let mut sum = 0;
        let cumulative = if equal {
            Vec::new()
        } else {
            weights
                .iter()
                .map(|&weight| {
                    sum += u64::from(weight);
                    sum
                })
                .collect()
        };
        LeastRequest {
            up,
            weights,
            cumulative,
            total: members.len(),
        }
    }

    /// Of the candidates at positions `a` and `b`, the member with fewer
    /// requests in flight; `a` on a tie.
    #[inline]
    fn lesser(&self, a: usize, b: usize) -> usize {
        let (first, second) = (&self.up[a], &self.up[b]);
        let second_wins = second.load.in_flight() < first.load.in_flight();
        // Every member takes picks: a candidate's position is its index, and
        // no index is read.
        let (a, b) = if self.up.len() == self.total {
            (a, b)
        } else {
            (first.index, second.index)
        };
        if second_wins {
            b
        } else {
            a
        }
    }

    /// The position holding weight unit `ticket`.
    #[inline]
    fn position(&self, ticket: u64) -> usize {
        self.cumulative.partition_point(|&c| c <= ticket)
    }

    /// A pick with fewer than two candidates, or unequal weights: two
    /// distinct candidates, each drawn by weight, the second from the
    /// weight left once the first is set aside.
    #[inline(never)]
    fn pick_otherwise(&self, n: usize) -> Result<usize, Error> {
        match n {
            0 => Err(no_pick_error(self.total)),
            1 => Ok(self.up[0].index),
            _ => {
                let total = self.cumulative[n - 1];
                let a = self.position(below(total));
                let a_weight = u64::from(self.weights[a]);
                let a_start = self.cumulative[a] - a_weight;
                let mut ticket = below(total - a_weight);
                if ticket >= a_start {
                    ticket += a_weight;
                }
                let b = self.position(ticket);
                Ok(self.lesser(a, b))
            }
        }
    }
}

impl Balancer for LeastRequest {
    #[inline]
    fn pick(&self, _key: Option<&[u8]>) -> Result<usize, Error> {
        let n = self.up.len();
        if n < 2 || !self.cumulative.is_empty() {
            // Kept out of line, so that what callers inline is this path.
            return self.pick_otherwise(n);
        }
        // Equal weights: two distinct positions, uniformly, from one draw
        // of the thread's fast generator (the second among the n - 1
        // others, skipping the first).
        let (a, b) = two_below(n as u64, n as u64 - 1);
        let (a, mut b) = (a as usize, b as usize);
        if b >= a {
            b += 1;
        }
        Ok(self.lesser(a, b))
    }

    /// The other members that are up, least loaded first (then by higher
    /// weight, then in listing order), as the counts stand at the call.
    fn failover(&self, _key: Option<&[u8]>, first: usize) -> Vec<usize> {
        // Read each count once: they move while we sort.
        // Lower is better: fewer in flight, then a higher weight.
        let mut order: Vec<((u64, Reverse<u32>), usize)> = self
            .up
            .iter()
            .zip(&self.weights)
            .filter(|(c, _)| c.index != first)
            .map(|(c, &weight)| ((c.load.in_flight(), Reverse(weight)), c.index))
            .collect();
        order.sort_unstable();
        order.into_iter().map(|(_, index)| index).collect()
    }

    fn uses_key(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::test_members as members;

    #[test]
    fn two_members_one_busy_always_picks_the_idle_one() {
        let m = members(&[1, 1]);
        let least = LeastRequest::new(&m);
        let _busy = Load::start(m[1].load());
        assert!((0..1000).all(|_| least.pick(None).unwrap() == 0));
    }

    #[test]
    fn with_equal_loads_picks_follow_the_weights() {
        let m = members(&[1, 2]);
        let least = LeastRequest::new(&m);
        let heavy = (0..30_000)
            .filter(|_| least.pick(None).unwrap() == 1)
            .count();
        // Binomial(30_000, 2/3): sd 81.6, so ±500 is over 6 sigma.
        assert!((19_500..=20_500).contains(&heavy), "{heavy} of 30000");
    }

    #[test]
    fn with_equal_weights_and_loads_picks_are_uniform() {
        let m = members(&[2, 2, 2]);
        let least = LeastRequest::new(&m);
        let mut counts = [0; 3];
        for _ in 0..30_000 {
            counts[least.pick(None).unwrap()] += 1;
        }
        // Binomial(30_000, 1/3): sd 81.6, so ±500 is over 6 sigma.
        assert!(
            counts.iter().all(|c| (9_500..=10_500).contains(c)),
            "{counts:?}"
        );
    }

    #[test]
    fn with_equal_weights_candidates_are_two_distinct_members() {
        // Three members, two busy: a draw of one busy member twice would
        // pick it; distinct draws include the idle one or the other busy
        // one, so the most loaded member never wins.
        let m = members(&[1, 1, 1]);
        let least = LeastRequest::new(&m);
        let _busy = [Load::start(m[0].load()), Load::start(m[0].load())];
        let _one = Load::start(m[1].load());
        let mut counts = [0; 3];
        for _ in 0..3000 {
            counts[least.pick(None).unwrap()] += 1;
        }
        assert_eq!(counts[0], 0, "{counts:?}");
        // Member 2 wins every pair it is in (2 of 3 pairs), member 1 the
        // pair {0, 1}: 2000 and 1000 expected.
        assert!((1_800..=2_200).contains(&counts[2]), "{counts:?}");
    }

    #[test]
    fn candidates_are_always_two_distinct_members() {
        // With a busy heavy member and an idle light one, a draw of the
        // heavy one twice would pick it; distinct draws never do.
        let m = members(&[1_000_000, 1]);
        let least = LeastRequest::new(&m);
        let _busy = Load::start(m[0].load());
        assert!((0..1000).all(|_| least.pick(None).unwrap() == 1));
    }

    #[test]
    fn the_strictly_busiest_member_is_never_picked() {
        let m = members(&[1, 1, 1, 1]);
        let least = LeastRequest::new(&m);
        let _busy = [Load::start(m[2].load()), Load::start(m[2].load())];
        let _one = Load::start(m[0].load());
        let mut counts = [0; 4];
        for _ in 0..4000 {
            counts[least.pick(None).unwrap()] += 1;
        }
        assert_eq!(counts[2], 0);
        // Idle members win every draw against busy ones.
        assert!(counts[1] > counts[0] && counts[3] > counts[0], "{counts:?}");
    }

    #[test]
    fn failover_starts_with_the_least_loaded() {
        let m = members(&[1, 1, 3, 1]);
        let least = LeastRequest::new(&m);
        let _busy = [Load::start(m[1].load()), Load::start(m[1].load())];
        let _one = Load::start(m[3].load());
        assert_eq!(least.failover(None, 0), [2, 3, 1]);
    }
}
