//! Load balancing for [tower]: the four classic strategies, done to the
//! letter of nginx and HAProxy, and least request by the power of two
//! choices, behind one small pure trait; sticky sessions; and the layers
//! that make any HTTP client a reverse proxy.
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
//!   factory that builds any of them by name (nginx's and HAProxy's names
//!   included).
//! * [`LoadBalancer`] — the runtime handle: add, remove, reweight, mark down
//!   and up while requests pick, with linearizable snapshot swaps.
//! * [`discover`] — membership from service discovery: [`BackendChange`]s
//!   applied one by one or in batches of one rebuild, and (with the
//!   `discover` feature) a future that follows a `tower::discover::Discover`
//!   stream.
//! * Tower layers in [`layer`]: [`LoadBalanceLayer`](layer::LoadBalanceLayer)
//!   picks a backend per request and records outcomes,
//!   [`DirectorLayer`](layer::DirectorLayer) with
//!   [`ProxyDirector`](layer::ProxyDirector) rewrites the request for it as
//!   a reverse proxy must (Go's `ReverseProxy.Director`), and
//!   [`ModifyResponseLayer`](layer::ModifyResponseLayer) edits responses.
//! * Sticky sessions in [`sticky`]: affinity keys from a cookie, header,
//!   client IP, query or path for [`ConsistentHash`], and
//!   [`StickyCookie`](sticky::StickyCookie), HAProxy-style cookie insertion
//!   with an opaque, authenticated cookie.
//! * `proxy` (with the `proxy` feature) — the hyper/tokio pieces every
//!   reverse proxy needs: an upstream client with WebSocket passthrough and
//!   the serve loop that fills [`ClientAddr`](sticky::ClientAddr) and
//!   answers errors with [`Error::to_response`].
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
//! # The proxy recipe
//!
//! Outermost first: pick, then direct, then send. With the `proxy` feature
//! the sender and the server are ready-made (`tower_lb::proxy::Upstream`
//! and `tower_lb::proxy::serve`); without it, any client service does, as
//! here with a stand-in that answers with the URI it was asked for:
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use tower_lb::layer::{DirectorLayer, LoadBalanceLayer, ProxyDirector};
//! use tower_lb::sticky::{ClientAddr, Secret, StickyCookie};
//! use tower_lb::{LoadBalancer, Strategy};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_lb::Error> {
//! let lb = LoadBalancer::new(Strategy::RoundRobin, ["http://10.0.0.1:8080", "http://10.0.0.2:8080"])?;
//! // In production: the same secret on every replica, e.g. base64 from the environment.
//! let sticky = StickyCookie::new("lb", Secret::generate()?)?;
//! let mut proxy = ServiceBuilder::new()
//!     .layer(LoadBalanceLayer::new(lb).sticky(sticky))
//!     .layer(DirectorLayer::new(ProxyDirector::new()))
//!     .service_fn(|req: Request<()>| async move {
//!         let xff = req.headers()["x-forwarded-for"].clone();
//!         Ok::<_, Infallible>(Response::new(format!("{} for {}", req.uri(), xff.to_str().unwrap())))
//!     });
//!
//! let mut req = Request::builder().uri("/cart").header("host", "shop.example").body(()).unwrap();
//! req.extensions_mut().insert(ClientAddr("192.0.2.7:50000".parse().unwrap()));
//! let res = proxy.ready().await?.call(req).await?;
//! assert_eq!(res.body(), "http://10.0.0.1:8080/cart for 192.0.2.7");
//! assert!(res.headers().contains_key("set-cookie"));
//!
//! // A request the proxy must refuse never reaches a backend.
//! let no_host = Request::builder().uri("/cart").body(()).unwrap();
//! let err = proxy.ready().await?.call(no_host).await.unwrap_err();
//! assert_eq!(err.to_response::<String>().status(), 400);
//! # Ok(())
//! # }
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
mod http_date;
pub mod layer;
mod load_balancer;
#[cfg(feature = "proxy")]
#[cfg_attr(docsrs, doc(cfg(feature = "proxy")))]
pub mod proxy;
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
