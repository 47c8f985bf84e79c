//! Random: a uniformly random backend among those that are up, or weighted
//! by the backends' weights.
//!
//! Each thread draws from its own small, fast generator (rand's `SmallRng`,
//! seeded once per thread from the operating system), so picks share no
//! state and never contend. The range reduction is Lemire's multiply-shift,
//! whose bias (at most `n / 2^64`) is far below anything measurable. This is
//! not a cryptographic choice and need not be: a client cannot predict or
//! steer it to anything but a configured backend.

use std::cell::RefCell;

use rand::rngs::SmallRng;
use rand::Rng;

use crate::balancer::{rotation_after, up_indices};
use crate::{no_pick_error, Balancer, Error, Member};

thread_local! {
    static RNG: RefCell<SmallRng> = RefCell::new(rand::make_rng());
}

/// A random `u64` from this thread's generator.
#[inline]
fn next_u64() -> u64 {
    RNG.with(|rng| rng.borrow_mut().next_u64())
}

/// A random number in `0..n` (`n > 0`).
#[inline]
pub(crate) fn below(n: u64) -> u64 {
    ((u128::from(next_u64()) * u128::from(n)) >> 64) as u64
}

/// Two random numbers, in `0..n` and `0..m` (`n, m > 0`), from one draw:
/// the first is the high half of `r × n`, the second comes from the low
/// half, which is uniform to within `n / 2^64` and independent of the first
/// to that precision (the chaining that nearly-divisionless shuffles use).
#[inline]
pub(crate) fn two_below(n: u64, m: u64) -> (u64, u64) {
    let full = u128::from(next_u64()) * u128::from(n);
    let rest = u128::from(full as u64);
    ((full >> 64) as u64, ((rest * u128::from(m)) >> 64) as u64)
}

/// A random member among those that are up.
///
/// [`Random::new`] is uniform; [`Random::weighted`] picks each member with
/// probability proportional to its weight (a binary search over cumulative
/// weights, `O(log n)`).
///
/// ```
/// use tower_lb::{Balancer, Member, Random};
///
/// let members = vec![
///     Member::new("http://a".parse()?),
///     Member::new("http://b".parse()?).with_up(false),
/// ];
/// let random = Random::new(&members);
/// // The only member that is up is always the one picked.
/// assert!((0..100).all(|_| random.pick(None).unwrap() == 0));
/// # Ok::<(), tower_lb::Error>(())
/// ```
#[derive(Debug)]
pub struct Random {
    up: Vec<u32>,
    /// Cumulative weights of `up`, for the weighted variant.
    cumulative: Option<Vec<u64>>,
    total: usize,
}

impl Random {
    /// Uniform over the members that are up.
    pub fn new(members: &[Member]) -> Self {
        Random {
            up: up_indices(members),
            cumulative: None,
            total: members.len(),
        }
    }

    /// Proportional to weight over the members that are up.
    pub fn weighted(members: &[Member]) -> Self {
        let up = up_indices(members);
        let mut sum = 0u64;
        let cumulative = up
            .iter()
            .map(|&i| {
                sum += u64::from(members[i as usize].backend().weight());
                sum
            })
            .collect();
        Random {
            up,
            cumulative: Some(cumulative),
            total: members.len(),
        }
    }
}

impl Balancer for Random {
    #[inline]
    fn pick(&self, _key: Option<&[u8]>) -> Result<usize, Error> {
        let n = self.up.len();
        if n == 0 {
            return Err(no_pick_error(self.total));
        }
        let pos = match &self.cumulative {
            None => below(n as u64) as usize,
            Some(cumulative) => {
                let total = cumulative[n - 1];
                let ticket = below(total);
                cumulative.partition_point(|&c| c <= ticket)
            }
        };
        Ok(self.up[pos] as usize)
    }

    /// The other members that are up, in rotation order from a random start:
    /// a retry is spread as evenly as a first try.
    fn failover(&self, _key: Option<&[u8]>, first: usize) -> Vec<usize> {
        if self.up.is_empty() {
            return Vec::new();
        }
        let start = below(self.up.len() as u64) as usize;
        rotation_after(&self.up, start, first)
    }

    fn uses_key(&self) -> bool {
        false
    }
}
