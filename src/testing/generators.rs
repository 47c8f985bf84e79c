//! proptest strategies for the inputs a balancer sees: backend sets,
//! affinity keys and membership changes.

use std::fmt;
use std::sync::Arc;

use proptest::collection::vec;
use proptest::prelude::{any, prop, Just, Strategy};
use proptest::prop_oneof;
use proptest::strategy::{BoxedStrategy, NewTree, ValueTree};
use proptest::test_runner::TestRunner;

use crate::{Backend, Load, Member, MAX_WEIGHT};

/// One backend of a generated set, as plain data: id, weight, up or down,
/// and how many requests it has in flight.
///
/// [`member`](BackendSpec::member) turns it into the [`Member`] a balancer
/// is built from.
///
/// ```
/// use tower_lb::testing::BackendSpec;
///
/// let spec = BackendSpec::new("b").with_weight(2).with_up(false).with_in_flight(3);
/// assert_eq!(spec.to_string(), "b (weight 2, down, 3 in flight)");
///
/// let member = spec.member();
/// assert_eq!(member.backend().id(), "b");
/// assert!(!member.is_up());
/// assert_eq!(member.load().in_flight(), 3);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendSpec {
    /// The backend id ([`Backend::id`]).
    pub id: String,
    /// The weight, 1 to [`MAX_WEIGHT`].
    pub weight: u32,
    /// Whether the member is up.
    pub up: bool,
    /// Requests in flight on the member when the balancer is built; they
    /// never finish.
    pub in_flight: u32,
}

impl BackendSpec {
    /// A backend with this id, weight 1, up, idle.
    pub fn new(id: impl Into<String>) -> Self {
        BackendSpec {
            id: id.into(),
            weight: 1,
            up: true,
            in_flight: 0,
        }
    }

    /// The same backend with another weight.
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// The same backend, up or down.
    pub fn with_up(mut self, up: bool) -> Self {
        self.up = up;
        self
    }

    /// The same backend with `in_flight` requests outstanding.
    pub fn with_in_flight(mut self, in_flight: u32) -> Self {
        self.in_flight = in_flight;
        self
    }

    /// The [`Member`] for this spec, with fresh counters showing
    /// `in_flight` requests.
    ///
    /// Its URI is `http://<id>.test` when the id is a valid host name, else
    /// `http://backend.test`: balancers go by id and weight, not by URI.
    ///
    /// # Panics
    ///
    /// When the id is empty or longer than [`MAX_ID_LEN`](crate::MAX_ID_LEN)
    /// bytes, or the weight is 0 or above [`MAX_WEIGHT`]. Generated specs
    /// never are.
    pub fn member(&self) -> Member {
        let host_safe = !self.id.is_empty()
            && self.id.len() <= 63
            && self
                .id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        let uri = if host_safe {
            format!("http://{}.test", self.id)
        } else {
            "http://backend.test".to_owned()
        };
        let backend = Backend::new(&uri)
            .and_then(|b| b.with_id(self.id.clone()))
            .and_then(|b| b.with_weight(self.weight))
            .unwrap_or_else(|e| panic!("backend spec `{self}` is not a valid backend: {e}"));
        Member::from_parts(
            Arc::new(backend),
            self.up,
            Arc::new(Load::with_in_flight(u64::from(self.in_flight))),
            Arc::default(),
        )
    }
}

impl fmt::Display for BackendSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = if self.up { "up" } else { "down" };
        write!(f, "{} (weight {}, {state}", self.id, self.weight)?;
        if self.in_flight > 0 {
            write!(f, ", {} in flight", self.in_flight)?;
        }
        f.write_str(")")
    }
}

/// A listing of backends, as a balancer is built from it.
///
/// Its `Debug` and `Display` both read as plain words, so that a failing
/// case reads `[a (weight 1, up), b (weight 2, down)]`.
///
/// ```
/// use tower_lb::testing::{BackendSet, BackendSpec};
///
/// let set = BackendSet::new([BackendSpec::new("a"), BackendSpec::new("b").with_up(false)]);
/// assert_eq!(set.to_string(), "[a (weight 1, up), b (weight 1, down)]");
/// assert_eq!(set.up_count(), 1);
/// assert_eq!(set.members().len(), 2);
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct BackendSet {
    backends: Vec<BackendSpec>,
}

impl BackendSet {
    /// A set listing these backends in this order.
    pub fn new(backends: impl IntoIterator<Item = BackendSpec>) -> Self {
        BackendSet {
            backends: backends.into_iter().collect(),
        }
    }

    /// The backends, in listing order.
    pub fn backends(&self) -> &[BackendSpec] {
        &self.backends
    }

    /// The members to build a balancer from, in listing order, each with
    /// fresh counters.
    ///
    /// # Panics
    ///
    /// As [`BackendSpec::member`].
    pub fn members(&self) -> Vec<Member> {
        self.backends.iter().map(BackendSpec::member).collect()
    }

    /// How many backends are listed, up or down.
    pub fn len(&self) -> usize {
        self.backends.len()
    }

    /// Whether no backend is listed.
    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }

    /// How many backends are up.
    pub fn up_count(&self) -> usize {
        self.backends.iter().filter(|b| b.up).count()
    }

    /// Whether two backends share an id.
    pub fn has_duplicate_ids(&self) -> bool {
        self.backends
            .iter()
            .enumerate()
            .any(|(i, b)| self.backends[..i].iter().any(|a| a.id == b.id))
    }

    /// Applies one membership change, as
    /// [`LoadBalancer`](crate::LoadBalancer) would, and says what changed;
    /// `None` when the operation changes nothing (the set is empty, the
    /// member is already in that state, the weight is the same).
    ///
    /// ```
    /// use tower_lb::testing::{BackendSet, BackendSpec, Change, MembershipOp};
    ///
    /// let mut set = BackendSet::new([BackendSpec::new("a"), BackendSpec::new("b")]);
    /// let change = set.apply(&MembershipOp::MarkDown(1)).unwrap();
    /// assert_eq!(change.to_string(), "mark b down");
    /// assert_eq!(set.apply(&MembershipOp::MarkDown(1)), None); // already down
    /// let added = set.apply(&MembershipOp::Add { weight: 3, up: true }).unwrap();
    /// assert_eq!(added, Change::Added(BackendSpec::new("c").with_weight(3)));
    /// ```
    pub fn apply(&mut self, op: &MembershipOp) -> Option<Change> {
        let len = self.backends.len();
        let at = |which: usize| which % len.max(1);
        match *op {
            MembershipOp::Add { weight, up } => {
                let id = (0..)
                    .map(base_name)
                    .find(|name| self.backends.iter().all(|b| &b.id != name))
                    .expect("an unbounded sequence of names has an unused one");
                let spec = BackendSpec::new(id).with_weight(weight).with_up(up);
                self.backends.push(spec.clone());
                Some(Change::Added(spec))
            }
            _ if len == 0 => None,
            MembershipOp::Remove(which) => Some(Change::Removed(self.backends.remove(at(which)))),
            MembershipOp::MarkDown(which) | MembershipOp::MarkUp(which) => {
                let up = matches!(op, MembershipOp::MarkUp(_));
                let spec = &mut self.backends[at(which)];
                if spec.up == up {
                    return None;
                }
                spec.up = up;
                let id = spec.id.clone();
                Some(if up {
                    Change::MarkedUp(id)
                } else {
                    Change::MarkedDown(id)
                })
            }
            MembershipOp::SetWeight(which, weight) => {
                let spec = &mut self.backends[at(which)];
                if spec.weight == weight {
                    return None;
                }
                let from = std::mem::replace(&mut spec.weight, weight);
                Some(Change::Reweighted {
                    id: spec.id.clone(),
                    from,
                    to: weight,
                })
            }
        }
    }

    /// The same backends listed in another order: `order[i]` is the
    /// position, in this set, of the `i`-th backend of the result.
    ///
    /// # Panics
    ///
    /// When `order` has a position out of range.
    pub fn reordered(&self, order: &[usize]) -> BackendSet {
        BackendSet::new(order.iter().map(|&i| self.backends[i].clone()))
    }
}

impl fmt::Display for BackendSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, b) in self.backends.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{b}")?;
        }
        f.write_str("]")
    }
}

impl fmt::Debug for BackendSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl From<Vec<BackendSpec>> for BackendSet {
    fn from(backends: Vec<BackendSpec>) -> Self {
        BackendSet { backends }
    }
}

/// The id of the backend at position `i` when no duplicate is asked for:
/// `a` to `z`, then `a1` to `z1`, and so on.
fn base_name(i: usize) -> String {
    let letter = char::from(b'a' + (i % 26) as u8);
    match i / 26 {
        0 => letter.to_string(),
        round => format!("{letter}{round}"),
    }
}

/// Weights from 1 up to `max`: mostly small, sometimes up to 100, and
/// about one in 80 exactly `max` (the extreme; about one set in 20 has
/// one). Shrinks towards 1.
fn weights(max: u32) -> BoxedStrategy<u32> {
    let max = max.clamp(1, MAX_WEIGHT);
    prop_oneof![
        53 => 1..=max.min(4),
        26 => 1..=max.min(100),
        1 => Just(max),
    ]
    .boxed()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum States {
    Mixed,
    AtLeastOneUp,
    AllUp,
    AllDown,
}

/// Generates [`BackendSet`]s; see [`backend_sets`].
#[derive(Clone, Debug)]
#[must_use = "strategies do nothing unless used"]
pub struct BackendSets {
    min_len: usize,
    max_len: usize,
    max_weight: u32,
    duplicate_ids: bool,
    states: States,
    in_flight: bool,
}

/// Backend sets of 0 to `max_len` backends, covering what a balancer meets:
/// the empty set, weights from 1 to [`MAX_WEIGHT`] (the extremes included),
/// backends that are down (sometimes all of them), backends with requests in
/// flight, and occasionally two backends sharing an id. Cases shrink towards
/// fewer backends, weight 1, and plain ids (`a`, `b`, ...).
///
/// The builder methods narrow it down.
///
/// ```
/// use proptest::strategy::{Strategy, ValueTree};
/// use proptest::test_runner::TestRunner;
/// use tower_lb::testing::backend_sets;
///
/// let sets = backend_sets(8).min_len(1).max_weight(100).distinct_ids().all_up();
/// let mut runner = TestRunner::default();
/// let set = sets.new_tree(&mut runner).unwrap().current();
/// assert!((1..=8).contains(&set.len()));
/// assert_eq!(set.up_count(), set.len());
/// assert!(set.backends().iter().all(|b| b.weight <= 100));
/// ```
///
/// In a `proptest!` block, as any other strategy:
///
/// ```
/// use proptest::prelude::*;
/// use tower_lb::testing::backend_sets;
/// use tower_lb::{Balancer, RoundRobin};
///
/// proptest! {
///     # #![proptest_config(ProptestConfig::with_cases(16))]
///     // `#[test]` here, in a test file.
///     fn round_robin_picks_members_that_are_up(set in backend_sets(8)) {
///         let members = set.members();
///         if let Ok(i) = RoundRobin::new(&members).pick(None) {
///             prop_assert!(members[i].is_up());
///         }
///     }
/// }
/// # round_robin_picks_members_that_are_up();
/// ```
pub fn backend_sets(max_len: usize) -> BackendSets {
    BackendSets {
        min_len: 0,
        max_len,
        max_weight: MAX_WEIGHT,
        duplicate_ids: true,
        states: States::Mixed,
        in_flight: true,
    }
}

impl BackendSets {
    /// At least `min_len` backends (at most the maximum).
    pub fn min_len(mut self, min_len: usize) -> Self {
        self.min_len = min_len.min(self.max_len);
        self
    }

    /// Weights of at most `max_weight` (clamped to 1 to [`MAX_WEIGHT`]);
    /// `max_weight` itself stays the extreme value generated.
    pub fn max_weight(mut self, max_weight: u32) -> Self {
        self.max_weight = max_weight.clamp(1, MAX_WEIGHT);
        self
    }

    /// No two backends share an id, as in a
    /// [`LoadBalancer`](crate::LoadBalancer), which rejects duplicates.
    pub fn distinct_ids(mut self) -> Self {
        self.duplicate_ids = false;
        self
    }

    /// Every backend is up.
    pub fn all_up(mut self) -> Self {
        self.states = States::AllUp;
        self
    }

    /// Every backend is down (the set may still be empty).
    pub fn all_down(mut self) -> Self {
        self.states = States::AllDown;
        self
    }

    /// At least one backend is up (so the set is not empty either).
    pub fn at_least_one_up(mut self) -> Self {
        self.states = States::AtLeastOneUp;
        self.min_len = self.min_len.max(1).min(self.max_len.max(1));
        self.max_len = self.max_len.max(1);
        self
    }

    /// No backend has requests in flight.
    pub fn idle(mut self) -> Self {
        self.in_flight = false;
        self
    }

    fn strategy(&self) -> BoxedStrategy<BackendSet> {
        let up = match self.states {
            States::AllUp => Just(true).boxed(),
            States::AllDown => Just(false).boxed(),
            States::Mixed | States::AtLeastOneUp => prop::bool::weighted(0.8).boxed(),
        };
        let in_flight = if self.in_flight {
            prop_oneof![4 => Just(0u32), 1 => 1..=5u32].boxed()
        } else {
            Just(0u32).boxed()
        };
        // Most ids are plain letters; some carry a suffix, so that
        // hash-based balancers see more than one layout per set size.
        let suffix = prop::option::weighted(0.25, 0..1000u32);
        let duplicate = if self.duplicate_ids {
            prop::option::weighted(0.1, any::<prop::sample::Index>()).boxed()
        } else {
            Just(None).boxed()
        };
        let one = (suffix, weights(self.max_weight), up, in_flight, duplicate);
        let states = self.states;
        vec(one, self.min_len..=self.max_len)
            .prop_map(move |raw| {
                let mut backends: Vec<BackendSpec> = Vec::with_capacity(raw.len());
                for (i, (suffix, weight, up, in_flight, duplicate)) in raw.into_iter().enumerate() {
                    let id = match (duplicate, i) {
                        (Some(of), 1..) => backends[of.index(i)].id.clone(),
                        _ => match suffix {
                            Some(n) => format!("{}-{n}", base_name(i)),
                            None => base_name(i),
                        },
                    };
                    backends.push(BackendSpec {
                        id,
                        weight,
                        up,
                        in_flight,
                    });
                }
                if states == States::AtLeastOneUp && !backends.iter().any(|b| b.up) {
                    if let Some(first) = backends.first_mut() {
                        first.up = true;
                    }
                }
                BackendSet { backends }
            })
            .boxed()
    }
}

impl Strategy for BackendSets {
    type Tree = Box<dyn ValueTree<Value = BackendSet>>;
    type Value = BackendSet;

    fn new_tree(&self, runner: &mut TestRunner) -> NewTree<Self> {
        self.strategy().new_tree(runner)
    }
}

/// Affinity keys as requests carry them: session and user ids
/// (`user-42`), arbitrary bytes (not UTF-8, long, or empty). Shrinks towards
/// short readable keys.
///
/// ```
/// use proptest::prelude::*;
/// use tower_lb::testing::affinity_keys;
/// use tower_lb::ConsistentHash;
///
/// proptest! {
///     # #![proptest_config(ProptestConfig::with_cases(16))]
///     // `#[test]` here, in a test file.
///     fn hashing_a_key_is_a_pure_function(key in affinity_keys()) {
///         prop_assert_eq!(ConsistentHash::hash_key(&key), ConsistentHash::hash_key(&key));
///     }
/// }
/// # hashing_a_key_is_a_pure_function();
/// ```
pub fn affinity_keys() -> impl Strategy<Value = Vec<u8>> + Clone {
    prop_oneof![
        6 => "(user|session|tenant)-[0-9]{1,6}".prop_map(String::into_bytes),
        3 => vec(any::<u8>(), 0..=32),
        1 => Just(Vec::new()),
        1 => vec(any::<u8>(), 33..=256),
    ]
}

/// The key argument of [`Balancer::pick`](crate::Balancer::pick): no key a
/// quarter of the time, else one of [`affinity_keys`].
///
/// ```
/// use proptest::prelude::*;
/// use tower_lb::testing::optional_keys;
///
/// proptest! {
///     # #![proptest_config(ProptestConfig::with_cases(16))]
///     // `#[test]` here, in a test file.
///     fn keys_are_at_most_256_bytes(key in optional_keys()) {
///         prop_assert!(key.map_or(0, |k| k.len()) <= 256);
///     }
/// }
/// # keys_are_at_most_256_bytes();
/// ```
pub fn optional_keys() -> impl Strategy<Value = Option<Vec<u8>>> + Clone {
    prop::option::weighted(0.75, affinity_keys())
}

/// One change to a backend set, as a [`LoadBalancer`](crate::LoadBalancer)
/// makes them; see [`BackendSet::apply`].
///
/// A position is taken modulo the set's length, so any operation applies to
/// any non-empty set; on an empty set only `Add` does something.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MembershipOp {
    /// Adds a backend with the next unused plain id (`a`, `b`, ...).
    Add {
        /// Its weight.
        weight: u32,
        /// Whether it is up.
        up: bool,
    },
    /// Removes the backend at this position.
    Remove(usize),
    /// Marks the backend at this position down.
    MarkDown(usize),
    /// Marks the backend at this position up.
    MarkUp(usize),
    /// Sets the weight of the backend at this position.
    SetWeight(usize, u32),
}

/// What a [`MembershipOp`] changed in a [`BackendSet`], naming backends by
/// id. `Display` writes it in words: `remove b`, `set b's weight from 2 to 5`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    /// This backend was added.
    Added(BackendSpec),
    /// This backend was removed.
    Removed(BackendSpec),
    /// The backend with this id was marked down.
    MarkedDown(String),
    /// The backend with this id was marked up.
    MarkedUp(String),
    /// A backend's weight changed.
    Reweighted {
        /// The backend's id.
        id: String,
        /// The weight before.
        from: u32,
        /// The weight after.
        to: u32,
    },
}

impl Change {
    /// The id of the backend the change is about.
    pub fn id(&self) -> &str {
        match self {
            Change::Added(spec) | Change::Removed(spec) => &spec.id,
            Change::MarkedDown(id) | Change::MarkedUp(id) | Change::Reweighted { id, .. } => id,
        }
    }

    /// Whether the backend gains share (added, marked up, weight raised):
    /// then keys may move only *to* it. Otherwise it loses share, and only
    /// keys it had may move.
    pub fn gains(&self) -> bool {
        match self {
            Change::Added(_) | Change::MarkedUp(_) => true,
            Change::Removed(_) | Change::MarkedDown(_) => false,
            Change::Reweighted { from, to, .. } => to > from,
        }
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Added(spec) => write!(f, "add {spec}"),
            Change::Removed(spec) => write!(f, "remove {}", spec.id),
            Change::MarkedDown(id) => write!(f, "mark {id} down"),
            Change::MarkedUp(id) => write!(f, "mark {id} up"),
            Change::Reweighted { id, from, to } => {
                write!(f, "set {id}'s weight from {from} to {to}")
            }
        }
    }
}

/// Generates sequences of [`MembershipOp`]s; see [`membership_ops`].
#[derive(Clone, Debug)]
#[must_use = "strategies do nothing unless used"]
pub struct MembershipOps {
    max_len: usize,
    max_weight: u32,
}

/// Sequences of 0 to `max_len` membership changes (adds, removals, marking
/// down and up, reweighting) to apply to a set with [`BackendSet::apply`].
/// Weights follow the same distribution as in [`backend_sets`].
///
/// ```
/// use proptest::prelude::*;
/// use tower_lb::testing::{backend_sets, membership_ops};
///
/// proptest! {
///     # #![proptest_config(ProptestConfig::with_cases(16))]
///     // `#[test]` here, in a test file.
///     fn a_set_never_grows_by_more_than_the_adds(
///         mut set in backend_sets(4),
///         ops in membership_ops(6).max_weight(10),
///     ) {
///         let before = set.len();
///         for op in &ops {
///             set.apply(op);
///         }
///         prop_assert!(set.len() <= before + ops.len());
///     }
/// }
/// # a_set_never_grows_by_more_than_the_adds();
/// ```
pub fn membership_ops(max_len: usize) -> MembershipOps {
    MembershipOps {
        max_len,
        max_weight: MAX_WEIGHT,
    }
}

impl MembershipOps {
    /// Weights of at most `max_weight` (clamped to 1 to [`MAX_WEIGHT`]).
    pub fn max_weight(mut self, max_weight: u32) -> Self {
        self.max_weight = max_weight.clamp(1, MAX_WEIGHT);
        self
    }

    fn strategy(&self) -> BoxedStrategy<Vec<MembershipOp>> {
        let which = 0..16usize;
        let op = prop_oneof![
            (weights(self.max_weight), prop::bool::weighted(0.8))
                .prop_map(|(weight, up)| MembershipOp::Add { weight, up }),
            which.clone().prop_map(MembershipOp::Remove),
            which.clone().prop_map(MembershipOp::MarkDown),
            which.clone().prop_map(MembershipOp::MarkUp),
            (which, weights(self.max_weight)).prop_map(|(i, w)| MembershipOp::SetWeight(i, w)),
        ];
        vec(op, 0..=self.max_len).boxed()
    }
}

impl Strategy for MembershipOps {
    type Tree = Box<dyn ValueTree<Value = Vec<MembershipOp>>>;
    type Value = Vec<MembershipOp>;

    fn new_tree(&self, runner: &mut TestRunner) -> NewTree<Self> {
        self.strategy().new_tree(runner)
    }
}

/// An affinity key in words: `None`, or `Some(b"user-42")` with bytes that
/// are not printable ASCII escaped.
pub(crate) fn describe_key(key: Option<&[u8]>) -> String {
    match key {
        None => "None".to_owned(),
        Some(k) => format!("Some(b\"{}\")", k.escape_ascii()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_names_are_distinct() {
        let names: std::collections::HashSet<String> = (0..100).map(base_name).collect();
        assert_eq!(names.len(), 100);
        assert_eq!(base_name(0), "a");
        assert_eq!(base_name(27), "b1");
    }

    #[test]
    fn keys_are_described_as_byte_strings() {
        assert_eq!(describe_key(None), "None");
        assert_eq!(describe_key(Some(b"user-1")), "Some(b\"user-1\")");
        assert_eq!(describe_key(Some(&[0, 255])), "Some(b\"\\x00\\xff\")");
    }
}
