//! A property-test kit for balancers: the generators and the conformance
//! suite tower-lb tests its own strategies with, for yours.
//!
//! Enabled by the `testing` feature, as a dev-dependency:
//!
//! ```toml
//! [dev-dependencies]
//! tower-lb = { version = "0.1", features = ["testing"] }
//! ```
//!
//! * [`Conformance`] checks the contract of the [`Balancer`](crate::Balancer)
//!   trait in one call: picks are members that are up, the documented errors
//!   on empty and all-down sets, failover lists every other member that is
//!   up exactly once, picks from several threads are valid, and nothing
//!   panics. A strategy opts into what it promises besides: picks
//!   proportional to the weights, a key always picking the same backend,
//!   minimal disruption when membership changes.
//! * Generators, as proptest strategies, for your own properties:
//!   [`backend_sets`] (empty sets, extreme weights, duplicate ids, backends
//!   down or busy), [`affinity_keys`] and [`optional_keys`], and
//!   [`membership_ops`] (adds, removals, marking down and up, reweighting).
//!
//! Each check is a proptest run. On failure proptest shrinks the case to the
//! smallest it can find, and the suite describes it in words:
//!
//! ```text
//! `first up` failed the conformance check `failover` (failover lists every other member that is up, once):
//!     with backends [a (weight 1, up), b (weight 1, down)], failover(None, first = 0 (a)) returned [1 (b)]: it lists 1 (b), which is down
//! This is the smallest failing case proptest found in 64 cases; replay them with `.seed(0x5eed)`.
//! ```
//!
//! # Example
//!
//! A balancer written outside the crate, checked in a few lines:
//!
//! ```
//! use tower_lb::testing::Conformance;
//! use tower_lb::{no_pick_error, Balancer, Error, Member};
//!
//! /// The first member that is up, in listing order: primary and backups.
//! struct FirstUp(Vec<bool>);
//!
//! impl Balancer for FirstUp {
//!     fn pick(&self, _key: Option<&[u8]>) -> Result<usize, Error> {
//!         self.0.iter().position(|&up| up).ok_or_else(|| no_pick_error(self.0.len()))
//!     }
//!     fn failover(&self, _key: Option<&[u8]>, first: usize) -> Vec<usize> {
//!         (0..self.0.len()).filter(|&i| i != first && self.0[i]).collect()
//!     }
//! }
//!
//! // In a `#[test]` function:
//! Conformance::new(|m: &[Member]| Ok(FirstUp(m.iter().map(Member::is_up).collect())))
//!     .name("first up")
//!     .check();
//! ```
//!
//! Each check's own documentation on [`Conformance`] says what it means,
//! and a failing check's message names the property and the input that
//! broke it.

mod conformance;
mod generators;

pub use self::conformance::{
    Check, Conformance, Failure, Report, DEFAULT_CASES, DEFAULT_MAX_BACKENDS,
};
pub use self::generators::{
    affinity_keys, backend_sets, membership_ops, optional_keys, BackendSet, BackendSets,
    BackendSpec, Change, MembershipOp, MembershipOps,
};
