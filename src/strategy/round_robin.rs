//! Round robin: strict rotation over the backends that are up.
//!
//! One shared atomic counter, advanced with a single `fetch_add` per pick:
//! lock-free, and exact under any number of threads, since every pick takes a
//! distinct counter value. Over `n` consecutive picks each of `k` backends
//! that are up is chosen `⌊n/k⌋` or `⌈n/k⌉` times. Like nginx's default
//! upstream (all weights 1), the rotation starts at the first backend listed;
//! after a membership change a [`LoadBalancer`](crate::LoadBalancer) carries
//! the counter over, so the rotation goes on rather than restarting there.
//! Weights are ignored; see
//! [`WeightedRoundRobin`](crate::WeightedRoundRobin) for weighted rotation.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::balancer::{rotation_after, up_indices};
use crate::{no_pick_error, Balancer, Error, Member};

/// Strict rotation over the members that are up.
///
/// ```
/// use tower_lb::{Balancer, Member, RoundRobin};
///
/// let members: Vec<Member> = ["http://a", "http://b", "http://c"]
///     .into_iter()
///     .map(|u| Ok(Member::new(u.parse()?)))
///     .collect::<Result<_, tower_lb::Error>>()?;
/// let rr = RoundRobin::new(&members);
/// let picks: Vec<usize> = (0..4).map(|_| rr.pick(None)).collect::<Result<_, _>>()?;
/// assert_eq!(picks, [0, 1, 2, 0]);
/// # Ok::<(), tower_lb::Error>(())
/// ```
#[derive(Debug)]
pub struct RoundRobin {
    up: Vec<u32>,
    total: usize,
    next: AtomicUsize,
}

impl RoundRobin {
    /// Builds the rotation; down members are left out.
    pub fn new(members: &[Member]) -> Self {
        RoundRobin {
            up: up_indices(members),
            total: members.len(),
            next: AtomicUsize::new(0),
        }
    }
}

impl Balancer for RoundRobin {
    #[inline]
    fn pick(&self, _key: Option<&[u8]>) -> Result<usize, Error> {
        let n = self.up.len();
        if n == 0 {
            return Err(no_pick_error(self.total));
        }
        let ticket = self.next.fetch_add(1, Ordering::Relaxed);
        Ok(self.up[ticket % n] as usize)
    }

    fn failover(&self, _key: Option<&[u8]>, first: usize) -> Vec<usize> {
        let pos = self
            .up
            .iter()
            .position(|&i| i as usize == first)
            .unwrap_or(self.up.len().saturating_sub(1));
        if self.up.is_empty() {
            return Vec::new();
        }
        rotation_after(&self.up, pos, first)
    }

    fn position(&self) -> Option<u64> {
        Some(self.next.load(Ordering::Relaxed) as u64)
    }

    fn resume_at(&self, position: u64) {
        self.next.store(position as usize, Ordering::Relaxed);
    }

    fn uses_key(&self) -> bool {
        false
    }
}
