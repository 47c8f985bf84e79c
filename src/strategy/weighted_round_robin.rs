//! Smooth weighted round robin, exactly as nginx does it.
//!
//! nginx (`ngx_http_upstream_get_peer` in `ngx_http_upstream_round_robin.c`)
//! keeps a `current_weight` per peer. On every pick it adds each peer's
//! weight to its `current_weight`, picks the peer with the largest
//! `current_weight` (the first listed on a tie) and subtracts the sum of all
//! weights from the winner. With weights 5, 1, 1 this gives `a a b a c a a`
//! rather than the naive `a a a a a b c`.
//!
//! nginx scans every peer on every pick (`O(n)`). This implementation gives
//! the *same sequence* in `O(1)`:
//!
//! * After `W = Σ weights` picks every peer has been chosen exactly its weight
//!   in times and every `current_weight` is back to zero, so the sequence is
//!   periodic with period `W`. Scaling all weights by a common factor scales
//!   every `current_weight` by it and changes no comparison, so the weights
//!   are first divided by their greatest common divisor.
//! * One period is computed when the balancer is built and stored as a
//!   schedule; a pick is one atomic `fetch_add` and one array read.
//! * Building does not scan all `n` peers per step either: peers of equal
//!   weight are chosen in listing order among themselves, so a step only
//!   compares one candidate per distinct weight (`O(W · distinct weights)`).
//!
//! When a schedule would be too large (more than 2^20 entries, or too much
//! work to build) the balancer falls back to the same computation done online
//! under a mutex, one step per pick in `O(distinct weights)`: the sequence is
//! still nginx's exactly.
//!
//! Backends that are down or draining (weight 0) take no part, as in nginx,
//! where a down peer is skipped and neither gains weight nor counts in the
//! total. A [`LoadBalancer`](crate::LoadBalancer) rebuilds the balancer when
//! a backend goes down or comes back; it carries the position in the cycle
//! over, so under frequent changes the cycle does not keep restarting at its
//! first (heaviest) pick.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::balancer::Distinct;
use crate::{no_pick_error, Balancer, Error, Member};

/// Largest precomputed schedule, in entries (4 bytes each).
const MAX_SCHEDULE: u64 = 1 << 20;
/// Largest build effort for a schedule, in class comparisons.
const MAX_BUILD_WORK: u64 = 1 << 25;
/// Most steps a failover walks along the sequence before listing the members
/// it has not reached in listing order (bounds failover to microseconds when
/// one weight dwarfs the others).
const MAX_FAILOVER_STEPS: u64 = 1 << 16;
/// Most class comparisons a failover simulation makes (steps times distinct
/// weights), so that a failover costs about a millisecond at most however
/// many distinct weights there are.
const MAX_FAILOVER_WORK: u64 = 1 << 18;

/// nginx's smooth weighted round robin with `O(1)` picks.
///
/// ```
/// use tower_lb::{Backend, Balancer, Member, WeightedRoundRobin};
///
/// let members = [("http://a", 5), ("http://b", 1), ("http://c", 1)]
///     .into_iter()
///     .map(|(u, w)| Ok(Member::new(Backend::new(u)?.with_weight(w)?)))
///     .collect::<Result<Vec<_>, tower_lb::Error>>()?;
/// let wrr = WeightedRoundRobin::new(&members);
/// let names: String = (0..7).map(|_| ["a", "b", "c"][wrr.pick(None).unwrap()]).collect();
/// assert_eq!(names, "aabacaa");
/// # Ok::<(), tower_lb::Error>(())
/// ```
#[derive(Debug)]
pub struct WeightedRoundRobin {
    total: usize,
    up: Vec<u32>,
    mode: Mode,
}

#[derive(Debug)]
enum Mode {
    Empty,
    Schedule {
        schedule: Vec<u32>,
        next: AtomicUsize,
    },
    Online(Mutex<Smooth>),
}

/// Members of one (reduced) weight, in listing order.
#[derive(Debug, Clone)]
struct Class {
    weight: u64,
    members: Vec<u32>,
    /// Picks this class has had in the current period.
    picks: u64,
}

/// The state of nginx's algorithm, grouped by weight.
#[derive(Debug, Clone)]
struct Smooth {
    classes: Vec<Class>,
    /// Sum of the reduced weights: the period.
    period: u64,
    /// Picks made in the current period.
    step: u64,
}

impl Smooth {
    fn new(members: &[Member], up: &[u32]) -> Smooth {
        let weight = |i: u32| u64::from(members[i as usize].backend().weight());
        let divisor = up.iter().fold(0, |g, &i| gcd(g, weight(i))).max(1);
        let mut classes: Vec<Class> = Vec::new();
        for &i in up {
            let w = weight(i) / divisor;
            match classes.iter_mut().find(|c| c.weight == w) {
                Some(class) => class.members.push(i),
                None => classes.push(Class {
                    weight: w,
                    members: vec![i],
                    picks: 0,
                }),
            }
        }
        let period = classes
            .iter()
            .map(|c| c.weight * c.members.len() as u64)
            .sum();
        Smooth {
            classes,
            period,
            step: 0,
        }
    }

    /// One pick of nginx's algorithm.
    ///
    /// After `t` additions and `k` wins a peer's `current_weight` is
    /// `t·w − k·W`. Within a class the peers with the fewest wins lead, and
    /// the first listed of them is the one at `picks mod size`.
    fn next(&mut self) -> u32 {
        self.step += 1;
        let t = i128::from(self.step);
        let period = i128::from(self.period);
        let mut best: Option<(i128, u32, usize)> = None;
        for (ci, class) in self.classes.iter().enumerate() {
            let size = class.members.len() as u64;
            let wins = i128::from(class.picks / size);
            let current = t * i128::from(class.weight) - wins * period;
            let candidate = class.members[(class.picks % size) as usize];
            let better = match best {
                None => true,
                Some((value, member, _)) => {
                    current > value || (current == value && candidate < member)
                }
            };
            if better {
                best = Some((current, candidate, ci));
            }
        }
        let (_, member, ci) = best.expect("a Smooth state always has a class");
        self.classes[ci].picks += 1;
        if self.step == self.period {
            // Every current_weight is zero again: a new period starts.
            self.step = 0;
            for class in &mut self.classes {
                class.picks = 0;
            }
        }
        member
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl WeightedRoundRobin {
    /// Builds the schedule for the members that are up.
    pub fn new(members: &[Member]) -> Self {
        let up = crate::balancer::up_indices(members);
        let mode = if up.is_empty() {
            Mode::Empty
        } else {
            let mut smooth = Smooth::new(members, &up);
            let work = smooth.period.saturating_mul(smooth.classes.len() as u64);
            if smooth.period <= MAX_SCHEDULE && work <= MAX_BUILD_WORK {
                let schedule = (0..smooth.period).map(|_| smooth.next()).collect();
                Mode::Schedule {
                    schedule,
                    next: AtomicUsize::new(0),
                }
            } else {
                Mode::Online(Mutex::new(smooth))
            }
        };
        WeightedRoundRobin {
            total: members.len(),
            up,
            mode,
        }
    }

    /// The length of one period of the sequence (the sum of the weights of the
    /// members that are up, divided by their greatest common divisor).
    pub fn period(&self) -> u64 {
        match &self.mode {
            Mode::Empty => 0,
            Mode::Schedule { schedule, .. } => schedule.len() as u64,
            Mode::Online(state) => lock(state).period,
        }
    }

    /// Whether picks read a precomputed schedule (`O(1)`) rather than
    /// stepping the algorithm under a lock.
    pub fn is_precomputed(&self) -> bool {
        matches!(self.mode, Mode::Schedule { .. })
    }
}

fn lock(state: &Mutex<Smooth>) -> std::sync::MutexGuard<'_, Smooth> {
    // `Smooth::next` cannot panic midway, so a poisoned state is consistent.
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Balancer for WeightedRoundRobin {
    #[inline]
    fn pick(&self, _key: Option<&[u8]>) -> Result<usize, Error> {
        match &self.mode {
            Mode::Schedule { schedule, next } => {
                let ticket = next.fetch_add(1, Ordering::Relaxed);
                Ok(schedule[ticket % schedule.len()] as usize)
            }
            Mode::Online(state) => Ok(lock(state).next() as usize),
            Mode::Empty => Err(no_pick_error(self.total)),
        }
    }

    /// The picks the sequence would make next, without `first` and without
    /// repeats; members it does not reach soon follow in listing order.
    fn failover(&self, _key: Option<&[u8]>, first: usize) -> Vec<usize> {
        let mut order = Distinct::new(self.total, &self.up, first);
        match &self.mode {
            Mode::Empty => {}
            Mode::Schedule { schedule, next } => {
                let start = next.load(Ordering::Relaxed);
                let steps = schedule.len().min(MAX_FAILOVER_STEPS as usize);
                for step in 0..steps {
                    if order.take(schedule[(start + step) % schedule.len()] as usize) {
                        break;
                    }
                }
            }
            Mode::Online(state) => {
                let mut ahead = lock(state).clone();
                let steps = ahead
                    .period
                    .min(MAX_FAILOVER_STEPS)
                    .min(MAX_FAILOVER_WORK / ahead.classes.len() as u64);
                for _ in 0..steps {
                    if order.take(ahead.next() as usize) {
                        break;
                    }
                }
            }
        }
        if !order.is_complete() {
            for &i in &self.up {
                order.take(i as usize);
            }
        }
        order.into_vec()
    }

    fn position(&self) -> Option<u64> {
        match &self.mode {
            Mode::Schedule { next, .. } => Some(next.load(Ordering::Relaxed) as u64),
            _ => None,
        }
    }

    /// Goes on at the same offset into the new period: the cycle does not
    /// restart at its first (heaviest) pick on every change.
    fn resume_at(&self, position: u64) {
        if let Mode::Schedule { next, .. } = &self.mode {
            next.store(position as usize, Ordering::Relaxed);
        }
    }

    fn uses_key(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::test_members as members;

    /// nginx's loop, verbatim in spirit: the reference the fast path must match.
    fn nginx(weights: &[u64], picks: usize) -> Vec<usize> {
        let total: i128 = weights.iter().map(|&w| i128::from(w)).sum();
        let mut current = vec![0i128; weights.len()];
        (0..picks)
            .map(|_| {
                let mut best = 0;
                for i in 0..weights.len() {
                    current[i] += i128::from(weights[i]);
                    if current[i] > current[best] {
                        best = i;
                    }
                }
                current[best] -= total;
                best
            })
            .collect()
    }

    #[test]
    fn online_mode_matches_nginx_when_the_schedule_is_too_large() {
        // Period (after gcd) 1_000_003 + ... > 2^20: forces the online path.
        let weights = [1_000_000, 999_999, 7, 7, 3];
        let wrr = WeightedRoundRobin::new(&members(&weights));
        assert!(!wrr.is_precomputed());
        let w: Vec<u64> = weights.iter().map(|&w| u64::from(w)).collect();
        let expected = nginx(&w, 5000);
        let got: Vec<usize> = (0..5000).map(|_| wrr.pick(None).unwrap()).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn online_failover_lists_every_other_up_member_once() {
        let weights = [1_000_000, 999_999, 7, 1, 3];
        let wrr = WeightedRoundRobin::new(&members(&weights));
        let mut order = wrr.failover(None, 0);
        assert_eq!(order.len(), 4);
        order.sort_unstable();
        assert_eq!(order, [1, 2, 3, 4]);
    }

    #[test]
    fn gcd_reduction_keeps_the_sequence() {
        let a = WeightedRoundRobin::new(&members(&[10, 20, 30]));
        let b = WeightedRoundRobin::new(&members(&[1, 2, 3]));
        assert_eq!(a.period(), 6);
        for _ in 0..12 {
            assert_eq!(a.pick(None).unwrap(), b.pick(None).unwrap());
        }
    }
}
