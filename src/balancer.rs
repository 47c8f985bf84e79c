//! The seam every strategy implements.

use crate::{Error, Member};

/// A load-balancing algorithm over one fixed set of members.
///
/// A balancer is built from a slice of [`Member`]s (see [`BuildBalancer`]) and
/// answers with indices into that slice. It is pure: no I/O, no clock, no
/// async runtime, and it works through `&self` from many threads at once.
/// Membership changes do not mutate a balancer: the
/// [`LoadBalancer`](crate::LoadBalancer) builds a new one and swaps it in.
///
/// The contract, which the `testing` feature's conformance suite checks:
///
/// * [`pick`](Balancer::pick) returns the index of a member that
///   [takes new picks](Member::takes_new_picks) (up, weight above 0), or
///   [`Error::NoBackends`] when the set is empty and
///   [`Error::AllBackendsDown`] when no member is up. It never panics.
/// * [`failover`](Balancer::failover) lists every *other* member that takes
///   new picks, each once, in the order the strategy would try them.
/// * Neither panics on a member of weight 0 (draining).
///
/// A [`LoadBalancer`](crate::LoadBalancer) also checks the answer against
/// its [health](crate::health) state, so a balancer that picks a draining or
/// ejected member is corrected, not trusted.
///
/// ```
/// use tower_lb::{Balancer, Error, Member};
///
/// /// Always the first member that is up.
/// struct FirstUp(Vec<bool>);
///
/// impl Balancer for FirstUp {
///     fn pick(&self, _key: Option<&[u8]>) -> Result<usize, Error> {
///         self.0.iter().position(|&up| up).ok_or_else(|| tower_lb::no_pick_error(self.0.len()))
///     }
///     fn failover(&self, _key: Option<&[u8]>, first: usize) -> Vec<usize> {
///         (0..self.0.len()).filter(|&i| i != first && self.0[i]).collect()
///     }
/// }
///
/// let build = |members: &[Member]| Ok::<_, Error>(FirstUp(members.iter().map(Member::is_up).collect()));
/// let lb = tower_lb::LoadBalancer::new(build, ["http://10.0.0.1", "http://10.0.0.2"])?;
/// assert_eq!(lb.pick(None)?.id(), "10.0.0.1");
/// # Ok::<(), Error>(())
/// ```
pub trait Balancer: Send + Sync {
    /// Picks a member for a request, optionally by affinity key.
    ///
    /// # Errors
    ///
    /// [`Error::NoBackends`] or [`Error::AllBackendsDown`]; see
    /// [`no_pick_error`](crate::no_pick_error).
    fn pick(&self, key: Option<&[u8]>) -> Result<usize, Error>;

    /// After `first` failed, the other members that are up, each once, in the
    /// order to try them. A [`LoadBalancer`](crate::LoadBalancer) walks it
    /// when a pick that follows a key lands on a backend that is out, for a
    /// retry of such a pick, and for keyless picks and retries whose fresh
    /// draws (see [`uses_key`](Balancer::uses_key)) keep landing on
    /// backends that are out or already tried.
    fn failover(&self, key: Option<&[u8]>, first: usize) -> Vec<usize>;

    /// The first member of the [`failover`](Balancer::failover) order after
    /// `first` that `accept` takes, asking in that order. The default builds
    /// the list; a balancer that can walk its order without allocating (the
    /// ring) overrides it, since a pick whose backend is ejected calls it.
    fn failover_find(
        &self,
        key: Option<&[u8]>,
        first: usize,
        accept: &mut dyn FnMut(usize) -> bool,
    ) -> Option<usize> {
        self.failover(key, first).into_iter().find(|&i| accept(i))
    }

    /// Where a rotating balancer stands (how many picks it has handed out),
    /// so that the balancer built after a membership change can go on from
    /// there instead of restarting at the first member. `None` (the default)
    /// for balancers without a rotation.
    fn position(&self) -> Option<u64> {
        None
    }

    /// Continues the rotation from `position`, taken from the balancer this
    /// one replaces. The default ignores it.
    fn resume_at(&self, position: u64) {
        let _ = position;
    }

    /// Whether [`pick`](Balancer::pick) follows the affinity key. `true`
    /// (the default) for hashing strategies; `false` for those that ignore
    /// it (round robin, random, least request), whose picks a
    /// [`LoadBalancer`](crate::LoadBalancer) then treats as keyless even
    /// when a key extractor supplied one: a pick whose backend is out, or a
    /// retry, draws again rather than walking the failover order, and slow
    /// start applies.
    fn uses_key(&self) -> bool {
        true
    }
}

impl<B: Balancer + ?Sized> Balancer for Box<B> {
    fn pick(&self, key: Option<&[u8]>) -> Result<usize, Error> {
        (**self).pick(key)
    }

    fn failover(&self, key: Option<&[u8]>, first: usize) -> Vec<usize> {
        (**self).failover(key, first)
    }

    fn failover_find(
        &self,
        key: Option<&[u8]>,
        first: usize,
        accept: &mut dyn FnMut(usize) -> bool,
    ) -> Option<usize> {
        (**self).failover_find(key, first, accept)
    }

    fn position(&self) -> Option<u64> {
        (**self).position()
    }

    fn resume_at(&self, position: u64) {
        (**self).resume_at(position)
    }

    fn uses_key(&self) -> bool {
        (**self).uses_key()
    }
}

/// Builds a [`Balancer`] for a set of members: what a strategy is.
///
/// [`Strategy`](crate::Strategy) implements it, and so does any closure
/// `Fn(&[Member]) -> Result<B, Error>` whose `B` is a [`Balancer`], so a
/// custom algorithm needs no builder type of its own.
///
/// ```
/// use tower_lb::{BuildBalancer, Member, RoundRobin, Strategy};
///
/// let members = vec![Member::new("http://10.0.0.1".parse()?)];
/// let from_enum = Strategy::RoundRobin.build(&members)?;
/// let from_closure = (|m: &[Member]| Ok(RoundRobin::new(m))).build(&members)?;
/// assert_eq!(from_enum.pick(None)?, from_closure.pick(None)?);
/// # Ok::<(), tower_lb::Error>(())
/// ```
pub trait BuildBalancer: Send + Sync {
    /// Builds the balancer for `members`.
    ///
    /// # Errors
    ///
    /// Whatever the strategy rejects, such as [`Error::RingTooLarge`]. An
    /// empty or all-down set is *not* an error here: the balancer reports it
    /// on `pick`, so that a set can shrink to nothing and grow again.
    fn build(&self, members: &[Member]) -> Result<Box<dyn Balancer>, Error>;
}

impl<F, B> BuildBalancer for F
where
    F: Fn(&[Member]) -> Result<B, Error> + Send + Sync,
    B: Balancer + 'static,
{
    fn build(&self, members: &[Member]) -> Result<Box<dyn Balancer>, Error> {
        Ok(Box::new(self(members)?))
    }
}

/// The error a balancer returns when it cannot pick: [`Error::NoBackends`]
/// for an empty set, else [`Error::AllBackendsDown`].
///
/// ```
/// assert!(matches!(tower_lb::no_pick_error(0), tower_lb::Error::NoBackends));
/// assert!(matches!(tower_lb::no_pick_error(3), tower_lb::Error::AllBackendsDown { count: 3 }));
/// ```
pub fn no_pick_error(members: usize) -> Error {
    if members == 0 {
        Error::NoBackends
    } else {
        Error::AllBackendsDown { count: members }
    }
}

/// The indices of the members that take new picks (up, weight above 0), in
/// listing order.
pub(crate) fn up_indices(members: &[Member]) -> Vec<u32> {
    members
        .iter()
        .enumerate()
        .filter(|(_, m)| m.takes_new_picks())
        .map(|(i, _)| i as u32)
        .collect()
}

/// The members that are up, starting after position `pos` of `up` and
/// wrapping around, skipping `first`.
pub(crate) fn rotation_after(up: &[u32], pos: usize, first: usize) -> Vec<usize> {
    let n = up.len();
    (1..=n)
        .map(|step| up[(pos + step) % n] as usize)
        .filter(|&i| i != first)
        .collect()
}

/// Collects failover candidates: distinct members other than the failed one,
/// until every other member that is up has been listed.
pub(crate) struct Distinct {
    seen: Vec<bool>,
    order: Vec<usize>,
    first: usize,
    wanted: usize,
}

impl Distinct {
    /// `up` lists the members that are up out of `total`.
    pub(crate) fn new(total: usize, up: &[u32], first: usize) -> Self {
        let wanted = up.iter().filter(|&&i| i as usize != first).count();
        Distinct {
            seen: vec![false; total],
            order: Vec::with_capacity(wanted),
            first,
            wanted,
        }
    }

    /// Takes `i` unless it is the failed member or already listed; returns
    /// whether the list is complete.
    pub(crate) fn take(&mut self, i: usize) -> bool {
        if i != self.first && !self.seen[i] {
            self.seen[i] = true;
            self.order.push(i);
        }
        self.is_complete()
    }

    pub(crate) fn is_complete(&self) -> bool {
        self.order.len() >= self.wanted
    }

    pub(crate) fn into_vec(self) -> Vec<usize> {
        self.order
    }
}
