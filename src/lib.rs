//! Load balancing for [tower]: the four classic strategies, done to the
//! letter of nginx and HAProxy, and least request by the power of two
//! choices, behind one small pure trait.
//!
//! * [`Balancer`] — the seam: built from a set of [`Member`]s, it picks one
//!   for an optional affinity key and lists failover candidates. No I/O, no
//!   async runtime, `&self` from any number of threads.
//! * Strategies in [`strategy`]: [`Random`], [`RoundRobin`], nginx's smooth
//!   [`WeightedRoundRobin`] (same sequence, `O(1)` picks),
//!   [`ConsistentHash`] (a SipHash ring with virtual nodes) and
//!   [`LeastRequest`] (the power of two choices over requests in flight),
//!   [`Maglev`] (a near-perfect spread with `O(1)` lookups) and
//!   [`BoundedLoad`] (consistent hashing that caps each backend at
//!   `1 + ε` times its share of requests in flight), and the [`Strategy`]
//!   factory that builds any of them by name.
//! * [`LoadBalancer`] — the runtime handle: add, remove, reweight, mark down
//!   and up while requests pick, with linearizable snapshot swaps.
//! * [`discover`] — membership from service discovery: [`BackendChange`]s
//!   applied one by one or in batches of one rebuild, and (with the
//!   `discover` feature) a future that follows a `tower::discover::Discover`
//!   stream.
//! * `testing` (with the `testing` feature) — the property-test kit: the
//!   conformance suite for the [`Balancer`] contract and proptest generators,
//!   to test a balancer of your own as thoroughly as these.
//!
//! # Quick start
//!
//! ```
//! use tower_lb::{LoadBalancer, Strategy};
//!
//! let strategy: Strategy = "weighted_round_robin".parse()?;
//! let lb = LoadBalancer::new(strategy, ["http://127.0.0.1:8081", "http://127.0.0.1:8082"])?;
//! let backend = lb.pick(None)?;
//! assert_eq!(backend.uri(), "http://127.0.0.1:8081/");
//! # Ok::<(), tower_lb::Error>(())
//! ```
//!
//! [tower]: https://docs.rs/tower

#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]
#![deny(missing_docs, rust_2018_idioms, unreachable_pub)]
#![warn(
    clippy::all,
    clippy::dbg_macro,
    clippy::todo,
    clippy::unimplemented,
    clippy::mem_forget,
    clippy::needless_borrow,
    clippy::inefficient_to_string
)]

mod backend;
mod balancer;
pub mod discover;
mod error;
pub mod health;
pub mod layer;
mod load_balancer;
pub mod sticky;
pub mod strategy;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;

#[doc(inline)]
pub use crate::{
    backend::{Backend, InFlight, Load, Member, Outcome, MAX_ID_LEN, MAX_WEIGHT},
    balancer::{no_pick_error, Balancer, BuildBalancer},
    discover::BackendChange,
    error::{BoxError, Error, HookStage},
    load_balancer::{IntoBackend, LoadBalancer, MAX_BACKENDS},
    strategy::{BoundedLoad, Maglev},
    strategy::{ConsistentHash, LeastRequest, Random, RoundRobin, Strategy, WeightedRoundRobin},
};

// The README's examples compile and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
