//! Consistent hashing with bounded loads (Mirrokni, Thorup and
//! Zadimoghaddam, *Consistent Hashing with Bounded Loads*, SODA 2018), over
//! the ring or over Maglev.
//!
//! Plain consistent hashing sends a hot key, or an unlucky run of keys, to
//! one backend however busy it is. Here every backend has a cap on requests
//! in flight, `⌈(1 + ε) × mean⌉` scaled by its weight, and a pick walks the
//! key's own order (clockwise on the ring, the probe sequence of the Maglev
//! table) to the first backend that is up and under its cap. So:
//!
//! * a key whose backend is under its cap stays where consistent hashing
//!   puts it: with an idle or evenly loaded set, picks are the plain
//!   strategy's;
//! * no backend is chosen while it holds `⌈(1 + ε) × mean × its share⌉`
//!   requests or more, counting the one being placed, so the busiest backend
//!   carries at most `1 + ε` times its fair share, plus one;
//! * overflow goes to the key's next candidates, which differ from key to
//!   key, so the excess of a hot key spreads instead of piling onto one
//!   neighbour.
//!
//! The knob is HAProxy's `hash-balance-factor`: with `T` requests in flight
//! over the backends that are up, `W` their total weight and `f` the balance factor
//! in percent (`f = 100 × (1 + ε)`, so 125 is ε = 0.25), a backend of weight
//! `w` may be chosen while its count is below
//!
//! ```text
//! max(1, ⌈f × (T + 1) × w / (100 × W)⌉)
//! ```
//!
//! Each share is rounded up, as the paper's `⌈(1 + ε) × m / n⌉` is (HAProxy
//! hands out the rounded total by cumulative weight instead, which allows
//! at most one request less per backend). The caps add up to more than `T`,
//! so some backend that is up is always under its cap. Envoy's
//! `hash_balance_factor` is the same knob.
//!
//! Counts are [`Load::in_flight`](crate::Load::in_flight), kept by the
//! load-balance layer. Members of one [`LoadBalancer`](crate::LoadBalancer)
//! also count their requests in one shared total, so a pick reads the mean
//! in `O(1)` (minus the counts of members that are down, `O(down)`);
//! members built by hand, without a load balancer, are summed on each pick
//! (`O(n)`). Picks read counters that other threads change, so two picks
//! racing for the last place under one cap may both take it: each of `k`
//! concurrent pickers can push a backend at most one past its cap.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::{no_pick_error, Balancer, ConsistentHash, Error, Load, Maglev, Member};

/// The balance factor used unless another is asked for: 125, that is
/// ε = 0.25, the paper's example value and the low end of HAProxy's
/// suggested 125 to 200.
pub const DEFAULT_BALANCE_FACTOR: u32 = 125;

/// The largest balance factor accepted (ε = 99), far beyond any use.
pub const MAX_BALANCE_FACTOR: u32 = 10_000;

/// Walks a pick makes before giving up on the caps (see `pick`).
const STALE_WALKS: usize = 3;

/// Consistent hashing with bounded loads: the key's candidates in hash
/// order, skipping those at their cap of requests in flight.
///
/// ```
/// use tower_lb::{Balancer, BoundedLoad, ConsistentHash, Load, Member};
///
/// let members: Vec<Member> = (1..=4)
///     .map(|i| Ok(Member::new(format!("http://10.0.0.{i}").parse()?)))
///     .collect::<Result<_, tower_lb::Error>>()?;
/// let bounded = BoundedLoad::ring(&members, 160, 125)?;
/// let ring = ConsistentHash::new(&members)?;
///
/// // Idle: the ring's choice.
/// let home = ring.pick(Some(b"hot-key"))?;
/// assert_eq!(bounded.pick(Some(b"hot-key"))?, home);
///
/// // The key's backend fills up to its cap; then the key overflows to its
/// // next candidate on the ring.
/// let mut guards = Vec::new();
/// while bounded.pick(Some(b"hot-key"))? == home {
///     guards.push(Load::start(members[home].load()));
/// }
/// // With one request in flight the cap is ⌈1.25 × 2 / 4⌉ = 1: it is full.
/// assert_eq!(guards.len(), 1);
/// assert_eq!(bounded.pick(Some(b"hot-key"))?, ring.failover(Some(b"hot-key"), home)[0]);
/// # Ok::<(), tower_lb::Error>(())
/// ```
#[derive(Debug)]
pub struct BoundedLoad {
    order: HashOrder,
    loads: Vec<Arc<Load>>,
    weights: Vec<u64>,
    /// Total weight of the members that are up.
    up_weight: u64,
    balance_factor: u32,
    total: Total,
    keyless: AtomicUsize,
}

/// Where the candidates for a key come from.
#[derive(Debug)]
enum HashOrder {
    Ring(ConsistentHash),
    Maglev(Maglev),
}

/// How the requests in flight over the members that are up are counted.
#[derive(Debug)]
enum Total {
    /// The load balancer's running total, less the members that are down.
    Pool {
        pool: Arc<AtomicU64>,
        down: Vec<u32>,
    },
    /// Summed over the members that are up on each pick.
    Sum,
}

impl BoundedLoad {
    /// Bounded loads over a ring of 160 points per unit of weight, with a
    /// balance factor of [`DEFAULT_BALANCE_FACTOR`].
    ///
    /// # Errors
    ///
    /// As [`ConsistentHash::new`].
    pub fn new(members: &[Member]) -> Result<Self, Error> {
        Self::ring(
            members,
            super::consistent_hash::DEFAULT_VNODES,
            DEFAULT_BALANCE_FACTOR,
        )
    }

    /// Bounded loads over a ring of `vnodes` points per unit of weight;
    /// `balance_factor` is `100 × (1 + ε)`, as HAProxy's
    /// `hash-balance-factor` (125 caps each backend at 1.25 times its share).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a balance factor below 100 or above
    /// [`MAX_BALANCE_FACTOR`]; else as [`ConsistentHash::with_vnodes`].
    pub fn ring(members: &[Member], vnodes: u32, balance_factor: u32) -> Result<Self, Error> {
        check_balance_factor(balance_factor)?;
        let ring = ConsistentHash::with_vnodes(members, vnodes)?;
        Ok(Self::over(HashOrder::Ring(ring), members, balance_factor))
    }

    /// Bounded loads over a Maglev table of `table_size` slots (see
    /// [`Maglev::with_table_size`]).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a balance factor below 100 or above
    /// [`MAX_BALANCE_FACTOR`]; else as [`Maglev::with_table_size`].
    ///
    /// ```
    /// use tower_lb::{Balancer, BoundedLoad, Maglev, Member};
    ///
    /// let members = vec![Member::new("http://10.0.0.1".parse()?), Member::new("http://10.0.0.2".parse()?)];
    /// let bounded = BoundedLoad::maglev(&members, 65_537, 150)?;
    /// assert_eq!(bounded.pick(Some(b"k"))?, Maglev::new(&members)?.pick(Some(b"k"))?);
    /// assert!(BoundedLoad::maglev(&members, 65_537, 99).is_err());
    /// # Ok::<(), tower_lb::Error>(())
    /// ```
    pub fn maglev(members: &[Member], table_size: u32, balance_factor: u32) -> Result<Self, Error> {
        check_balance_factor(balance_factor)?;
        let maglev = Maglev::with_table_size(members, table_size)?;
        Ok(Self::over(
            HashOrder::Maglev(maglev),
            members,
            balance_factor,
        ))
    }

    fn over(order: HashOrder, members: &[Member], balance_factor: u32) -> Self {
        let up = members.iter().filter(|m| m.is_up());
        let first_pool = up.clone().next().and_then(|m| m.load().pool());
        let shared = first_pool.filter(|pool| {
            up.clone()
                .all(|m| m.load().pool().is_some_and(|p| Arc::ptr_eq(p, pool)))
        });
        let total = match shared {
            Some(pool) => Total::Pool {
                pool: Arc::clone(pool),
                down: members
                    .iter()
                    .enumerate()
                    .filter(|(_, m)| !m.is_up())
                    .map(|(i, _)| i as u32)
                    .collect(),
            },
            None => Total::Sum,
        };
        BoundedLoad {
            order,
            loads: members.iter().map(|m| Arc::clone(m.load())).collect(),
            weights: members
                .iter()
                .map(|m| u64::from(m.backend().weight()))
                .collect(),
            up_weight: up.map(|m| u64::from(m.backend().weight())).sum(),
            balance_factor,
            total,
            keyless: AtomicUsize::new(0),
        }
    }

    /// The balance factor, `100 × (1 + ε)`.
    pub fn balance_factor(&self) -> u32 {
        self.balance_factor
    }

    /// Requests in flight over the members that are up, as a pick sees them.
    pub fn in_flight(&self) -> u64 {
        match &self.total {
            Total::Pool { pool, down } => {
                let down: u64 = down
                    .iter()
                    .map(|&i| self.loads[i as usize].in_flight())
                    .sum();
                pool.load(Ordering::Relaxed).saturating_sub(down)
            }
            Total::Sum => self
                .up_list()
                .iter()
                .map(|&i| self.loads[i as usize].in_flight())
                .sum(),
        }
    }

    /// The cap of member `index` for the next pick: it may be chosen while
    /// its count of requests in flight is below this, `max(1, ⌈f × (T + 1) ×
    /// w / (100 × W)⌉)`. 0 for a member that is down or out of range.
    pub fn cap(&self, index: usize) -> u64 {
        if !self.up().get(index).copied().unwrap_or(false) {
            return 0;
        }
        self.cap_at(index, self.in_flight())
    }

    fn cap_at(&self, index: usize, total: u64) -> u64 {
        let numerator = u128::from(self.balance_factor)
            * u128::from(total + 1)
            * u128::from(self.weights[index]);
        let denominator = 100 * u128::from(self.up_weight.max(1));
        (numerator.div_ceil(denominator).min(u128::from(u64::MAX)) as u64).max(1)
    }

    /// `count < max(1, ⌈a / b⌉)`, which for an integer count is `count == 0
    /// || count × b < a`: no 128-bit division on the hot path.
    #[inline]
    fn under_cap(&self, index: usize, total: u64) -> bool {
        let count = self.loads[index].in_flight();
        count == 0
            || u128::from(count) * 100 * u128::from(self.up_weight.max(1))
                < u128::from(self.balance_factor)
                    * u128::from(total + 1)
                    * u128::from(self.weights[index])
    }

    fn up(&self) -> &[bool] {
        match &self.order {
            HashOrder::Ring(ring) => ring.up(),
            HashOrder::Maglev(maglev) => maglev.up(),
        }
    }

    fn up_list(&self) -> &[u32] {
        match &self.order {
            HashOrder::Ring(ring) => ring.up_list(),
            HashOrder::Maglev(maglev) => maglev.up_list(),
        }
    }

    /// The first candidate for `key` that `accept` takes, in hash order.
    fn find(&self, key: &[u8], accept: impl FnMut(&usize) -> bool) -> Option<usize> {
        match &self.order {
            HashOrder::Ring(ring) => ring.owners_for(ConsistentHash::hash_key(key)).find(accept),
            HashOrder::Maglev(maglev) => maglev.owners_for(Maglev::hash_key(key)).find(accept),
        }
    }
}

fn check_balance_factor(balance_factor: u32) -> Result<(), Error> {
    if !(100..=MAX_BALANCE_FACTOR).contains(&balance_factor) {
        return Err(Error::InvalidConfig {
            reason: format!(
                "the balance factor is 100 × (1 + ε), from 100 to {MAX_BALANCE_FACTOR} (125 caps each backend at 1.25 times its share); {balance_factor} is out of range"
            ),
        });
    }
    Ok(())
}

impl Balancer for BoundedLoad {
    fn pick(&self, key: Option<&[u8]>) -> Result<usize, Error> {
        let up_list = self.up_list();
        if up_list.is_empty() {
            return Err(no_pick_error(self.loads.len()));
        }
        let up = self.up();
        let Some(key) = key else {
            let total = self.in_flight();
            // Round robin from the ticket's member to the first under its cap.
            let ticket = self.keyless.fetch_add(1, Ordering::Relaxed);
            let n = up_list.len();
            let chosen = (0..n)
                .map(|step| up_list[(ticket + step) % n] as usize)
                .find(|&i| self.under_cap(i, total))
                .unwrap_or(up_list[ticket % n] as usize);
            return Ok(chosen);
        };
        // The caps add up to more than the total, so a walk finds a member
        // under its cap unless the counts grew while it read them (another
        // thread picked meanwhile): then it reads the total again.
        for _ in 0..STALE_WALKS {
            let total = self.in_flight();
            if let Some(chosen) = self.find(key, |&i| up[i] && self.under_cap(i, total)) {
                return Ok(chosen);
            }
        }
        // Still every member at its cap: the key's own member, as plain
        // consistent hashing picks.
        match &self.order {
            HashOrder::Ring(ring) => ring.pick(Some(key)),
            HashOrder::Maglev(maglev) => maglev.pick(Some(key)),
        }
    }

    /// The key's other candidates in hash order, those under their cap
    /// first; for no key, the round-robin order.
    fn failover(&self, key: Option<&[u8]>, first: usize) -> Vec<usize> {
        let order = match &self.order {
            HashOrder::Ring(ring) => ring.failover(key, first),
            HashOrder::Maglev(maglev) => maglev.failover(key, first),
        };
        let total = self.in_flight();
        let (mut under, over): (Vec<usize>, Vec<usize>) =
            order.into_iter().partition(|&i| self.under_cap(i, total));
        under.extend(over);
        under
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::test_members;

    #[test]
    fn caps_follow_haproxy() {
        let m = test_members(&[1, 1, 2]);
        let b = BoundedLoad::ring(&m, 16, 125).unwrap();
        // Idle: ⌈1.25 × 1 × 1/4⌉ = 1 and ⌈1.25 × 2/4⌉ = 1.
        assert_eq!([b.cap(0), b.cap(1), b.cap(2)], [1, 1, 1]);
        let _g: Vec<_> = (0..11).map(|_| Load::start(m[0].load())).collect();
        // T = 11: ⌈125 × 12 × 1 / 400⌉ = 4 and ⌈125 × 12 × 2 / 400⌉ = 8.
        assert_eq!([b.cap(0), b.cap(1), b.cap(2)], [4, 4, 8]);
        assert_eq!(b.in_flight(), 11);
    }

    #[test]
    fn down_members_count_neither_in_the_total_nor_the_weight() {
        let lb = crate::LoadBalancer::new(
            |m: &[Member]| BoundedLoad::new(m),
            ["http://a", "http://b", "http://c"],
        )
        .unwrap();
        let members = lb.members();
        let _busy: Vec<_> = (0..8).map(|_| Load::start(members[2].load())).collect();
        let _one = Load::start(members[0].load());
        let m: Vec<Member> = vec![
            Member::from_parts(
                Arc::clone(members[0].backend()),
                true,
                Arc::clone(members[0].load()),
                Arc::default(),
            ),
            Member::from_parts(
                Arc::clone(members[1].backend()),
                true,
                Arc::clone(members[1].load()),
                Arc::default(),
            ),
            Member::from_parts(
                Arc::clone(members[2].backend()),
                false,
                Arc::clone(members[2].load()),
                Arc::default(),
            ),
        ];
        let b = BoundedLoad::new(&m).unwrap();
        assert!(matches!(b.total, Total::Pool { .. }));
        assert_eq!(b.in_flight(), 1);
        // ⌈125 × 2 × 1 / 200⌉ = 2.
        assert_eq!(b.cap(0), 2);
        assert_eq!(b.cap(2), 0);
    }

    #[test]
    fn balance_factors_out_of_range_are_errors() {
        let m = test_members(&[1]);
        for f in [0, 99, MAX_BALANCE_FACTOR + 1] {
            assert!(matches!(
                BoundedLoad::ring(&m, 160, f),
                Err(Error::InvalidConfig { .. })
            ));
            assert!(matches!(
                BoundedLoad::maglev(&m, 65_537, f),
                Err(Error::InvalidConfig { .. })
            ));
        }
        assert_eq!(BoundedLoad::ring(&m, 1, 100).unwrap().balance_factor(), 100);
    }
}
