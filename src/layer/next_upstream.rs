//! Retry a failed request on the next backend, when it is safe.
//!
//! [`NextUpstream`] does what nginx's `proxy_next_upstream` does (HAProxy's
//! `retries` with `option redispatch`, Envoy's retry policy): when an attempt
//! fails with an error, a timeout or a chosen status, the request is sent
//! again, to a backend not yet tried for it (see
//! [`LoadBalancer::pick_excluding`](crate::LoadBalancer::pick_excluding)):
//! without an affinity key the retry is a fresh pick that moves round
//! robin's rotation on, as nginx's does; with one, the next backend in
//! [`LoadBalancer::failover`](crate::LoadBalancer::failover)'s order (for
//! consistent hashing, the ring successor of the key's backend).
//!
//! It sits **outside** [`LoadBalance`](super::LoadBalance): every attempt
//! goes through `LoadBalance`, which picks its backend (skipping those in the
//! attempt's [`TriedBackends`]) and records its outcome, so each failed
//! attempt counts against its backend like any other request.
//!
//! ```text
//! ModifyResponse → NextUpstream → LoadBalance → ResponseTimeout → Director → client
//! ```
//!
//! # What is retried
//!
//! * an error of the inner service ([`Error::Upstream`]: connection refused
//!   or reset, the backend closed the connection), unless
//!   [`retry_on_error`](NextUpstreamLayer::retry_on_error)`(false)`;
//! * a timeout ([`Error::Timeout`], see
//!   [`ResponseTimeout`](super::ResponseTimeout)), unless
//!   [`retry_on_timeout`](NextUpstreamLayer::retry_on_timeout)`(false)`;
//! * a response whose status [`retry_on_status`](NextUpstreamLayer::retry_on_status)
//!   selects (none by default, as nginx: `http_502`, `http_503`, `http_504`
//!   are opt-in).
//!
//! A request refused for what it is (a `4xx` error), a hook's error, or "no
//! backend is up" is never retried.
//!
//! # When it is safe
//!
//! * A request that never reached a backend (its connection was refused,
//!   or whatever [`never_sent`](NextUpstreamLayer::never_sent) recognises,
//!   such as a connect timeout) is always retried.
//! * Otherwise only an idempotent method (`GET`, `HEAD`, `OPTIONS`, `TRACE`,
//!   `PUT`, `DELETE`, RFC 9110 §9.2.2) is, unless
//!   [`non_idempotent`](NextUpstreamLayer::non_idempotent)`(true)`, and never
//!   a protocol upgrade (a WebSocket handshake that reached its backend).
//! * A body is replayed only if it was buffered: a body whose length is
//!   known and at most [`buffer_limit`](NextUpstreamLayer::buffer_limit)
//!   (64 KiB by default, Envoy's per-request buffer limit) is read whole
//!   before the first attempt; a longer one, or one of unknown length
//!   (chunked), is streamed to the first backend and not retried.
//!
//! When a failure would have been retried but was not safe to, the error is
//! [`Error::NotRetried`], which says why (its status is the failure's own); a
//! failed response is passed on as it is.
//!
//! # Limits
//!
//! At most [`tries`](NextUpstreamLayer::tries) attempts in all (0, the
//! default, means one per backend, as nginx's `proxy_next_upstream_tries 0`;
//! without a `LoadBalance` inside to say which backend failed, 0 means no
//! retry),
//! and no new attempt once [`timeout`](NextUpstreamLayer::timeout) has passed
//! since the request arrived (`proxy_next_upstream_timeout`). When no
//! untried backend is left, the last failure is the answer.
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use bytes::Bytes;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use tower_lb::layer::{LoadBalanceLayer, NextUpstreamLayer};
//! use tower_lb::{LoadBalancer, Member, Strategy};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_lb::Error> {
//! let lb = LoadBalancer::new(Strategy::RoundRobin, ["http://10.0.0.1", "http://10.0.0.2"])?;
//! let mut proxy = ServiceBuilder::new()
//!     .layer(NextUpstreamLayer::new().tries(3).retry_on_status(|s| s.is_server_error()))
//!     .layer(LoadBalanceLayer::new(lb))
//!     // 10.0.0.1 is failing.
//!     .service_fn(|req: Request<_>| async move {
//!         let member = req.extensions().get::<Member>().unwrap().clone();
//!         let status = if member.id() == "10.0.0.1" { 503 } else { 200 };
//!         let res = Response::builder().status(status).body(member.id().to_owned()).unwrap();
//!         Ok::<_, Infallible>(res)
//!     });
//!
//! for _ in 0..4 {
//!     let req = Request::new(Full::new(Bytes::from_static(b"hello")));
//!     let res = proxy.ready().await?.call(req).await?;
//!     assert_eq!(res.status(), StatusCode::OK);
//!     assert_eq!(res.body(), "10.0.0.2");
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # `NextUpstream` or `tower::retry`?
//!
//! Use `NextUpstream` in a proxy: it knows which backend each attempt went
//! to and moves the retry to another one (a `tower::retry` placed outside
//! `LoadBalance` would let consistent hashing or a sticky cookie pick the
//! failed backend again), it decides safety from the method, the body and
//! whether the backend was reached, and it buffers the body. Use
//! `tower::retry` when you bring your own policy (retry budgets, backoff
//! between attempts, retrying the same backend): wrap `NextUpstream` (its
//! error is a [`tower_lb::Error`](crate::Error), its request any
//! `http::Request<B>`) or a single-backend client with it. Both compose; a
//! `tower::retry::Policy` that clones the request needs a `Clone` body:
//!
//! ```
//! use std::convert::Infallible;
//! use std::future::{ready, Ready};
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use bytes::Bytes;
//! use tower::retry::{Policy, RetryLayer};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use tower_lb::layer::{LoadBalanceLayer, NextUpstreamLayer};
//! use tower_lb::{Error, LoadBalancer, Strategy};
//!
//! /// Retries a request that found no backend up, once.
//! #[derive(Clone)]
//! struct OnceMore(bool);
//!
//! impl<Res> Policy<Request<Full<Bytes>>, Res, Error> for OnceMore {
//!     type Future = Ready<()>;
//!     fn retry(&mut self, _: &mut Request<Full<Bytes>>, r: &mut Result<Res, Error>) -> Option<Ready<()>> {
//!         let again = matches!(r, Err(Error::AllBackendsDown { .. })) && !self.0;
//!         self.0 = true;
//!         again.then(|| ready(()))
//!     }
//!     fn clone_request(&mut self, req: &Request<Full<Bytes>>) -> Option<Request<Full<Bytes>>> {
//!         let mut copy = Request::new(req.body().clone());
//!         *copy.uri_mut() = req.uri().clone();
//!         *copy.headers_mut() = req.headers().clone();
//!         Some(copy)
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Error> {
//! let lb = LoadBalancer::new(Strategy::RoundRobin, ["http://10.0.0.1"])?;
//! let mut svc = ServiceBuilder::new()
//!     .layer(RetryLayer::new(OnceMore(false)))
//!     .layer(NextUpstreamLayer::new())
//!     .layer(LoadBalanceLayer::new(lb))
//!     .service_fn(|_req: Request<_>| async { Ok::<_, Infallible>(Response::new("ok")) });
//! let res = svc.ready().await?.call(Request::new(Full::new(Bytes::new()))).await?;
//! assert_eq!(*res.body(), "ok");
//! # Ok(())
//! # }
//! ```
//!
//! [`TriedBackends`]: super::TriedBackends

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use http::header::{CONNECTION, UPGRADE};
use http::{
    Extensions, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri,
    Version,
};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower::Layer;
use tower_service::Service;

use crate::layer::load_balance::{PendingStatusFailure, RetryDecides};
use crate::layer::{has_io_error, upstream_error, TriedBackends};
use crate::sticky::ClientAddr;
use crate::{BoxError, Error, Member};

/// The default [`NextUpstreamLayer::buffer_limit`]: 64 KiB.
const DEFAULT_BUFFER_LIMIT: usize = 64 * 1024;

#[derive(Clone)]
struct Config {
    tries: usize,
    timeout: Option<Duration>,
    on_error: bool,
    never_sent: fn(&(dyn std::error::Error + 'static)) -> bool,
    on_timeout: bool,
    on_status: Option<fn(StatusCode) -> bool>,
    non_idempotent: bool,
    buffer_limit: usize,
    clock: fn() -> Instant,
    /// How long a body being read whole may wait for the client's next
    /// chunk, and the timer that says when.
    body_timeout: Option<(Duration, BoxSleep)>,
}

/// A timer from [`NextUpstreamLayer::body_timeout`]'s `sleep`, boxed: it is
/// made only while a buffered body waits on its client.
type BoxSleep = Arc<dyn Fn(Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Applies [`NextUpstream`] to a service; see the [module docs](self) for
/// what each setting does. Cheap to clone (one `Arc`).
///
/// ```
/// use std::time::Duration;
/// use http::StatusCode;
/// use tower_lb::layer::NextUpstreamLayer;
///
/// // nginx: proxy_next_upstream error timeout http_502 http_503 http_504;
/// //        proxy_next_upstream_tries 3; proxy_next_upstream_timeout 10s;
/// let layer = NextUpstreamLayer::new()
///     .retry_on_status(|s| matches!(s.as_u16(), 502..=504))
///     .tries(3)
///     .timeout(Duration::from_secs(10))
///     .buffer_limit(16 * 1024);
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct NextUpstreamLayer {
    config: Arc<Config>,
}

impl NextUpstreamLayer {
    /// Retries on errors and timeouts, on every backend once, without a time
    /// budget, idempotent requests (and any request that never reached its
    /// backend), with bodies of up to 64 KiB buffered.
    pub fn new() -> Self {
        NextUpstreamLayer {
            config: Arc::new(Config {
                tries: 0,
                timeout: None,
                on_error: true,
                never_sent: refused,
                on_timeout: true,
                on_status: None,
                non_idempotent: false,
                buffer_limit: DEFAULT_BUFFER_LIMIT,
                clock: Instant::now,
                body_timeout: None,
            }),
        }
    }

    fn edit(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(Arc::make_mut(&mut self.config));
        self
    }

    /// At most `tries` attempts per request, the first one included
    /// (`proxy_next_upstream_tries`); 0 means no limit but the number of
    /// backends, 1 turns retries off.
    pub fn tries(self, tries: usize) -> Self {
        self.edit(|c| c.tries = tries)
    }

    /// No new attempt once `timeout` has passed since the request arrived
    /// (`proxy_next_upstream_timeout`); an attempt under way is not cut short
    /// (give each a [`ResponseTimeout`](super::ResponseTimeout) for that).
    pub fn timeout(self, timeout: Duration) -> Self {
        self.edit(|c| c.timeout = Some(timeout))
    }

    /// Whether an error of the inner service (connection refused, reset or
    /// closed) is retried; on by default (nginx's `error`).
    pub fn retry_on_error(self, retry: bool) -> Self {
        self.edit(|c| c.on_error = retry)
    }

    /// Tells which inner errors mean the request never reached the backend,
    /// so that it may be retried whatever its method. By default: an
    /// `io::ErrorKind::ConnectionRefused` anywhere in the error's source
    /// chain. A client that says more can be asked, e.g. hyper-util's
    /// `|e| e.downcast_ref::<hyper_util::client::legacy::Error>().is_some_and(|e| e.is_connect())`,
    /// which also covers its connect timeout and DNS failures. The error given
    /// is the source of [`Error::Upstream`] or [`Error::Timeout`].
    ///
    /// ```
    /// use tower_lb::layer::NextUpstreamLayer;
    ///
    /// #[derive(Debug)]
    /// struct NoConnection;
    /// impl std::fmt::Display for NoConnection {
    ///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    ///         f.write_str("could not connect")
    ///     }
    /// }
    /// impl std::error::Error for NoConnection {}
    ///
    /// let layer = NextUpstreamLayer::new().never_sent(|e| e.is::<NoConnection>());
    /// # let _ = layer;
    /// ```
    pub fn never_sent(self, is_never_sent: fn(&(dyn std::error::Error + 'static)) -> bool) -> Self {
        self.edit(|c| c.never_sent = is_never_sent)
    }

    /// Whether an [`Error::Timeout`] is retried; on by default (nginx's
    /// `timeout`).
    pub fn retry_on_timeout(self, retry: bool) -> Self {
        self.edit(|c| c.on_timeout = retry)
    }

    /// Retries responses with a status for which `is_retried` is true (nginx's
    /// `http_502`, `http_503`, ...); none by default. The last response is
    /// passed on when no retry is left. Retry only statuses that
    /// `LoadBalance`'s [`FailurePolicy`](super::FailurePolicy) counts as
    /// failures (by default 502, 503 and 504): the backend of a failed
    /// response is known, and avoided by the retry, only then.
    ///
    /// As in nginx, such a status counts against its backend's passive
    /// health only when this layer moves on to another backend because of
    /// it; the response it passes on (the last, or one it may not retry, a
    /// `POST`'s) counts as a success, so a client cannot eject a healthy
    /// backend by asking for a page that fails.
    pub fn retry_on_status(self, is_retried: fn(StatusCode) -> bool) -> Self {
        self.edit(|c| c.on_status = Some(is_retried))
    }

    /// Whether a request with a non-idempotent method (`POST`, `PATCH`, ...)
    /// that reached its backend may be retried (nginx's `non_idempotent`);
    /// off by default. One that never reached it always may.
    pub fn non_idempotent(self, retry: bool) -> Self {
        self.edit(|c| c.non_idempotent = retry)
    }

    /// Bodies of known length up to `bytes` are buffered so that they can be
    /// replayed (64 KiB by default); longer ones and bodies of unknown
    /// length are streamed and not retried. 0 retries only bodiless requests.
    pub fn buffer_limit(self, bytes: usize) -> Self {
        self.edit(|c| c.buffer_limit = bytes)
    }

    /// The clock [`timeout`](Self::timeout) is measured with
    /// (`Instant::now` by default); tests inject their own.
    pub fn clock(self, now: fn() -> Instant) -> Self {
        self.edit(|c| c.clock = now)
    }

    /// Fails a request whose body, being read whole before the first
    /// attempt (see [`buffer_limit`](Self::buffer_limit)), waits `timeout`
    /// for the client's next chunk (nginx's `client_body_timeout`, between
    /// two reads): [`Error::RequestTimeout`] (`408`), before any backend is
    /// contacted. Timed by `sleep`, any runtime's (`tokio::time::sleep`);
    /// none by default, since the layer has no runtime of its own. A client
    /// that announces a short body and stops then holds its connection no
    /// longer than this. Bodies streamed to the backend are timed by the
    /// client that sends them
    /// (`proxy::WorkerUpstream::client_body_timeout`).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_lb::layer::NextUpstreamLayer;
    ///
    /// let layer = NextUpstreamLayer::new().body_timeout(Duration::from_secs(60), tokio::time::sleep);
    /// # let _ = layer;
    /// ```
    pub fn body_timeout<T>(self, timeout: Duration, sleep: T) -> Self
    where
        T: crate::layer::Sleep + Send + Sync + 'static,
        T::Future: Send + 'static,
    {
        let sleep: BoxSleep = Arc::new(move |d| Box::pin(sleep.sleep(d)));
        self.edit(|c| c.body_timeout = Some((timeout, sleep)))
    }
}

impl Default for NextUpstreamLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: Clone> Layer<S> for NextUpstreamLayer {
    type Service = NextUpstream<S>;

    fn layer(&self, inner: S) -> Self::Service {
        NextUpstream {
            shared: Arc::new(Shared {
                config: Arc::clone(&self.config),
                spare: Mutex::new(inner.clone()),
            }),
            inner,
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NextUpstreamLayer")
            .field("tries", &self.tries)
            .field("timeout", &self.timeout)
            .field("on_error", &self.on_error)
            .field("on_timeout", &self.on_timeout)
            .field("on_status", &self.on_status.is_some())
            .field("non_idempotent", &self.non_idempotent)
            .field("buffer_limit", &self.buffer_limit)
            .finish()
    }
}

impl fmt::Debug for NextUpstreamLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.config.fmt(f)
    }
}

/// Retries failed requests on the next backend; see the [module docs](self).
#[derive(Clone)]
pub struct NextUpstream<S> {
    inner: S,
    shared: Arc<Shared<S>>,
}

/// What the requests of a [`NextUpstream`] (and its clones) share: the
/// settings, and a clone of the inner service that a retry's service is
/// cloned from. A request's future holds this one count, not a clone of the
/// whole stack (a count on each of its parts, and their drops): only a
/// retry, which is rare, pays for the clone.
struct Shared<S> {
    config: Arc<Config>,
    /// Locked only to clone it for a retry.
    spare: Mutex<S>,
}

impl<S: Clone> Shared<S> {
    /// A service for a retry, made ready before it is called.
    fn service(&self) -> Box<S> {
        // A clone that panicked left nothing half-changed: the service in
        // the lock is still whole.
        let spare = self.spare.lock().unwrap_or_else(PoisonError::into_inner);
        Box::new(spare.clone())
    }
}

impl<S> NextUpstream<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: fmt::Debug> fmt::Debug for NextUpstream<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NextUpstream")
            .field("inner", &self.inner)
            .field("config", &self.shared.config)
            .finish()
    }
}

/// The parts of a request kept to build its retries.
struct Template {
    method: Method,
    uri: Uri,
    version: Version,
    /// The fields as the map yields them, their bytes copied one after
    /// the other (see [`Fields`]): one allocation, and no count taken on the
    /// head's bytes. This copy is made for every request that a retry could
    /// replay, while a retry, which rebuilds the map, is rare: a copy of the
    /// map takes two allocations, and a list of its fields one count a
    /// value (and one a name that is not a standard one), each an atomic
    /// operation, and as many again when it is dropped.
    fields: Vec<u8>,
    /// How many names the fields have (the map's entries).
    names: usize,
    extensions: KeptExtensions,
}

/// The request's extensions, as each retry gets them again.
enum KeptExtensions {
    /// Only what this crate put there itself: this layer's marker and the
    /// client's address (from the crate's own server). Rebuilt for a retry:
    /// a copy of the map takes an allocation for the map, one for its table
    /// and one per entry that is not empty, for every request, for a retry
    /// that rarely comes.
    Known { client: Option<ClientAddr> },
    /// Anything else: a copy of the map.
    Copied(Extensions),
}

impl KeptExtensions {
    fn of(extensions: &Extensions) -> Self {
        let client = extensions.get::<ClientAddr>().copied();
        let known = 1 + usize::from(client.is_some());
        if extensions.len() == known && extensions.get::<RetryDecides>().is_some() {
            KeptExtensions::Known { client }
        } else {
            KeptExtensions::Copied(extensions.clone())
        }
    }

    fn extensions(&self) -> Extensions {
        match self {
            KeptExtensions::Known { client } => {
                let mut extensions = Extensions::new();
                extensions.insert(RetryDecides);
                if let Some(client) = client {
                    extensions.insert(*client);
                }
                extensions
            }
            KeptExtensions::Copied(extensions) => extensions.clone(),
        }
    }
}

impl Template {
    fn of(parts: &http::request::Parts) -> Self {
        Template {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            fields: {
                let size = parts
                    .headers
                    .iter()
                    .map(|(name, value)| FIELD_LENGTHS + name.as_str().len() + value.len())
                    .sum();
                let mut fields = Vec::with_capacity(size);
                for (name, value) in &parts.headers {
                    let (name, value_bytes) = (name.as_str().as_bytes(), value.as_bytes());
                    fields.extend_from_slice(&name.len().to_ne_bytes());
                    fields.extend_from_slice(&value_bytes.len().to_ne_bytes());
                    fields.push(u8::from(value.is_sensitive()));
                    fields.extend_from_slice(name);
                    fields.extend_from_slice(value_bytes);
                }
                fields
            },
            names: parts.headers.keys_len(),
            extensions: KeptExtensions::of(&parts.extensions),
        }
    }

    fn request<B>(&self, body: B) -> Request<B> {
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        let headers = req.headers_mut();
        // Room for the names the request had, which its own map held: a
        // count of values could pass the map's limit, and `reserve` panics.
        headers.reserve(self.names);
        for (name, value, sensitive) in Fields(&self.fields) {
            // Copied from a `HeaderName` and a `HeaderValue`: they parse
            // again (only a value made with `from_maybe_shared_unchecked`
            // outside the rules, which `unsafe` code alone can make, would
            // not, and is left out).
            let (Ok(name), Ok(mut value)) =
                (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
            else {
                debug_assert!(false, "a field copied from the request no longer parses");
                continue;
            };
            value.set_sensitive(sensitive);
            headers.append(name, value);
        }
        *req.extensions_mut() = self.extensions.extensions();
        req
    }

    /// Whether the request asks to switch protocols
    /// ([`is_upgrade`](super::is_upgrade) on the fields kept).
    fn is_upgrade(&self) -> bool {
        Fields(&self.fields).any(|(name, ..)| name == UPGRADE.as_str().as_bytes())
            && Fields(&self.fields).any(|(name, value, _)| {
                name == CONNECTION.as_str().as_bytes() && super::lists_token_in(value, "upgrade")
            })
    }
}

/// The bytes before each field a [`Template`] copied: its name's length
/// and its value's (a `usize` each, in this machine's order), and whether
/// the value is sensitive (one byte).
const FIELD_LENGTHS: usize = 2 * WORD + 1;
const WORD: usize = std::mem::size_of::<usize>();

/// The fields a [`Template`] copied, read back: each [`FIELD_LENGTHS`],
/// then the name and the value.
struct Fields<'a>(&'a [u8]);

impl<'a> Iterator for Fields<'a> {
    /// The name, the value, and whether it is sensitive.
    type Item = (&'a [u8], &'a [u8], bool);

    fn next(&mut self) -> Option<Self::Item> {
        let (lengths, rest) = self.0.split_first_chunk::<FIELD_LENGTHS>()?;
        let length = |at: usize| {
            let mut word = [0; WORD];
            word.copy_from_slice(&lengths[at..at + WORD]);
            usize::from_ne_bytes(word)
        };
        let (name, rest) = rest.split_at_checked(length(0))?;
        let (value, rest) = rest.split_at_checked(length(WORD))?;
        self.0 = rest;
        Some((name, value, lengths[2 * WORD] != 0))
    }
}

/// A buffered body, shared by every attempt.
///
/// Each attempt gets its own copy: the chunks are refcounted (`Bytes`), and
/// the usual body of one chunk is copied without an allocation.
#[derive(Clone)]
struct Buffered<D> {
    first: Option<D>,
    rest: std::vec::IntoIter<D>,
    // Boxed: rare, and the future and each attempt's body stay small.
    trailers: Option<Box<HeaderMap>>,
    // The original body's size hint (`Buf::remaining` needs the `bytes`
    // crate, which the default build does not depend on).
    hint: SizeHint,
}

/// What each attempt's body is made from.
enum Replay<D> {
    /// No body: every attempt gets an empty one.
    Empty,
    /// Buffered whole: every attempt replays it.
    Buffered(Buffered<D>),
    /// Streamed to the first attempt: no retry can replay it.
    Streamed,
}

impl<D: Clone> Replay<D> {
    fn body<B: Body<Data = D>>(&self) -> Option<ReplayBody<B>> {
        match self {
            Replay::Empty => Some(ReplayBody { kind: Kind::Empty }),
            Replay::Buffered(buffer) => Some(ReplayBody {
                kind: Kind::Buffered {
                    buffer: Box::new(buffer.clone()),
                    started: false,
                },
            }),
            Replay::Streamed => None,
        }
    }
}

impl<S, B, ResBody> Service<Request<B>> for NextUpstream<S>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
    B: Body + Unpin,
    B::Data: Clone,
    B::Error: Into<BoxError>,
{
    type Response = Response<ResBody>;
    type Error = Error;
    type Future = ResponseFuture<S, B, ResBody>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(|e| upstream_error(e, ""))
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // A failing status counts against its backend only if this layer
        // moves on because of it (nginx's rule): `LoadBalance` leaves the
        // verdict here.
        req.extensions_mut().insert(RetryDecides);
        let shared = Arc::clone(&self.shared);
        let config = &shared.config;
        let started = config.timeout.map(|_| (config.clock)());
        // Nothing to retry on, or a single try: nothing to keep.
        let retries = config.tries != 1
            && (config.on_error || config.on_timeout || config.on_status.is_some());
        let (parts, body) = req.into_parts();
        let hint = body.size_hint();
        // The copy of the head retries are built from is kept only when a
        // retry can replay the request: a streamed body never can.
        let mut template = None;
        let (replay, state) = if body.is_end_stream() {
            if retries {
                template = Some(Template::of(&parts));
            }
            let req = Request::from_parts(parts, ReplayBody { kind: Kind::Empty });
            let future = self.inner.call(req);
            (Replay::Empty, State::Calling { future })
        } else if retries
            && hint
                .upper()
                .is_some_and(|upper| upper <= config.buffer_limit as u64)
        {
            template = Some(Template::of(&parts));
            // The body is read before the first attempt: the ready service
            // goes with the future, its clone takes its place.
            let clone = self.inner.clone();
            let service = std::mem::replace(&mut self.inner, clone);
            (
                Replay::Streamed,
                State::Buffering {
                    buffering: Some(Box::new(Buffering {
                        service,
                        parts,
                        body,
                        first: None,
                        chunks: Vec::new(),
                        trailers: None,
                        stall: None,
                    })),
                },
            )
        } else {
            let req = Request::from_parts(
                parts,
                ReplayBody {
                    kind: Kind::Streaming { body },
                },
            );
            let future = self.inner.call(req);
            (Replay::Streamed, State::Calling { future })
        };
        ResponseFuture {
            service: None,
            shared,
            retries,
            template,
            replay,
            hint,
            tried: TriedBackends::default(),
            attempts: 1,
            started,
            last: None,
            state,
        }
    }
}

pin_project! {
    /// Response future of [`NextUpstream`].
    pub struct ResponseFuture<S, B, ResBody>
    where
        S: Service<Request<ReplayBody<B>>, Response = Response<ResBody>>,
        B: Body,
    {
        // The service retries go to, cloned from the shared spare by the
        // first retry. Boxed: only retries pay for its room.
        service: Option<Box<S>>,
        shared: Arc<Shared<S>>,
        // Whether retries are on (`tries` is not 1).
        retries: bool,
        // The head retries are built from; none for a streamed body.
        template: Option<Template>,
        replay: Replay<B::Data>,
        hint: SizeHint,
        tried: TriedBackends,
        attempts: usize,
        started: Option<Instant>,
        // The latest failure, answered if no other backend is left.
        // Boxed: only failures pay for it.
        last: Option<Box<Result<Response<ResBody>, Error>>>,
        #[pin]
        state: State<S, S::Future, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, F, B: Body> {
        // Reading a short body whole before the first attempt. Boxed: only
        // such requests pay for the room, and every future stays small
        // (the future is moved several times on its way to the server).
        Buffering {
            buffering: Option<Box<Buffering<S, B>>>,
        },
        Calling {
            #[pin]
            future: F,
        },
        // Waiting for the inner service to be ready for a retry.
        Retrying,
        Done,
    }
}

/// A request whose body is being read whole before its first attempt.
struct Buffering<S, B: Body> {
    /// The service made ready for the first attempt.
    service: S,
    parts: http::request::Parts,
    body: B,
    // The body read so far.
    first: Option<B::Data>,
    chunks: Vec<B::Data>,
    trailers: Option<Box<HeaderMap>>,
    // Running while the body waits on the client (`body_timeout`).
    stall: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

/// How an attempt failed, for the retry decision.
enum Failed {
    /// It never reached the backend (see `NextUpstreamLayer::never_sent`).
    NotSent,
    /// It reached the backend, or may have.
    Sent,
}

impl<S, B, ResBody> Future for ResponseFuture<S, B, ResBody>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
    B: Body + Unpin,
    B::Data: Clone,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<ResBody>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Buffering { buffering } => {
                    let Some(reading) = buffering.as_mut() else {
                        panic!("ResponseFuture polled after completion");
                    };
                    let polled = match Pin::new(&mut reading.body).poll_frame(cx) {
                        Poll::Ready(polled) => {
                            reading.stall = None;
                            polled
                        }
                        Poll::Pending => {
                            if let Some((limit, sleep)) = &this.shared.config.body_timeout {
                                let stall = reading.stall.get_or_insert_with(|| sleep(*limit));
                                if stall.as_mut().poll(cx).is_ready() {
                                    let limit = *limit;
                                    this.state.set(State::Done);
                                    return Poll::Ready(Err(Error::RequestTimeout {
                                        reason: format!(
                                            "the client sent nothing of its request body for {limit:?}"
                                        ),
                                    }));
                                }
                            }
                            return Poll::Pending;
                        }
                    };
                    match polled {
                        Some(Ok(frame)) => match frame.into_data() {
                            Ok(data) => {
                                if reading.first.is_none() {
                                    reading.first = Some(data);
                                } else {
                                    reading.chunks.push(data);
                                }
                            }
                            Err(frame) => {
                                if let Ok(trailers) = frame.into_trailers() {
                                    reading.trailers = Some(Box::new(trailers));
                                }
                            }
                        },
                        Some(Err(error)) => {
                            this.state.set(State::Done);
                            return Poll::Ready(Err(Error::BadRequest {
                                reason: format!(
                                    "reading the request body failed: {}",
                                    Into::<BoxError>::into(error)
                                ),
                            }));
                        }
                        None => {
                            let mut read = *buffering.take().expect("checked above");
                            let parts = read.parts;
                            *this.replay = Replay::Buffered(Buffered {
                                first: read.first,
                                rest: read.chunks.into_iter(),
                                trailers: read.trailers,
                                hint: *this.hint,
                            });
                            let body = this.replay.body().expect("a buffered body replays");
                            let future = read.service.call(Request::from_parts(parts, body));
                            this.state.set(State::Calling { future });
                        }
                    }
                }
                StateProj::Calling { future } => {
                    let result = ready!(future.poll(cx));
                    let mut result = result.map_err(|e| upstream_error(e, ""));
                    let retry = match decide(
                        &this.shared.config,
                        &result,
                        *this.attempts,
                        *this.started,
                        *this.retries,
                        this.template.as_ref(),
                        this.replay,
                    ) {
                        Decision::Answer => None,
                        Decision::NotRetried(reason) => {
                            settle_answered(&mut result);
                            this.state.set(State::Done);
                            return Poll::Ready(match result {
                                Err(error) => Err(Error::NotRetried {
                                    reason,
                                    source: Box::new(error),
                                }),
                                ok => ok,
                            });
                        }
                        Decision::Retry(backend) => Some(backend),
                    };
                    match retry {
                        // An attempt that found no backend left to try
                        // answers with the failure before it.
                        None if this.last.is_some() && no_backend_left(&result) => {
                            this.state.set(State::Done);
                            return Poll::Ready(*this.last.take().expect("checked above"));
                        }
                        None => {
                            // Handed to the client: a success, as nginx
                            // counts a status it does not move on from.
                            settle_answered(&mut result);
                            this.state.set(State::Done);
                            return Poll::Ready(result);
                        }
                        Some(backend) => {
                            if let Some(backend) = backend {
                                this.tried.push(&backend);
                            }
                            *this.last = Some(Box::new(result));
                            this.state.set(State::Retrying);
                        }
                    }
                }
                StateProj::Retrying => {
                    let shared = &**this.shared;
                    let service = this.service.get_or_insert_with(|| shared.service());
                    if let Err(error) = ready!(service.poll_ready(cx)) {
                        this.state.set(State::Done);
                        return Poll::Ready(Err(upstream_error(error, "")));
                    }
                    let template = this.template.as_ref().expect("a retry has a template");
                    let body = this.replay.body().expect("a retry has a replayable body");
                    let mut req = template.request(body);
                    req.extensions_mut().insert(this.tried.clone());
                    // The failed attempt's status is judged by this retry's
                    // pick, at once: a backend found means it moved on.
                    if let Some(Ok(previous)) = this.last.as_deref_mut() {
                        if let Some(pending) =
                            previous.extensions_mut().remove::<PendingStatusFailure>()
                        {
                            req.extensions_mut().insert(pending);
                        }
                    }
                    *this.attempts += 1;
                    let future = service.call(req);
                    this.state.set(State::Calling { future });
                }
                StateProj::Done => panic!("ResponseFuture polled after completion"),
            }
        }
    }
}

enum Decision {
    /// Pass the result on.
    Answer,
    /// Retryable, but not safe to retry: say why.
    NotRetried(&'static str),
    /// Retry; the failed attempt went to this backend, if known.
    Retry(Option<String>),
}

fn decide<R>(
    config: &Config,
    result: &Result<Response<R>, Error>,
    attempts: usize,
    started: Option<Instant>,
    retries: bool,
    template: Option<&Template>,
    replay: &Replay<impl Sized>,
) -> Decision {
    let (failed, backend) = match result {
        Ok(res) => match config.on_status {
            Some(is_retried) if is_retried(res.status()) => (
                Failed::Sent,
                res.extensions().get::<Member>().map(|m| m.id().to_owned()),
            ),
            _ => return Decision::Answer,
        },
        Err(Error::Upstream { backend, source }) if config.on_error => {
            let failed = if (config.never_sent)(&**source) {
                Failed::NotSent
            } else {
                Failed::Sent
            };
            (failed, Some(backend.clone()))
        }
        Err(Error::Timeout {
            backend, source, ..
        }) if config.on_timeout => {
            let failed = match source {
                Some(source) if (config.never_sent)(&**source) => Failed::NotSent,
                _ => Failed::Sent,
            };
            (failed, Some(backend.clone()))
        }
        Err(_) => return Decision::Answer,
    };
    if !retries || (config.tries != 0 && attempts >= config.tries) {
        return Decision::Answer;
    }
    if let (Some(budget), Some(started)) = (config.timeout, started) {
        if (config.clock)().saturating_duration_since(started) >= budget {
            return Decision::Answer;
        }
    }
    if matches!(replay, Replay::Streamed) {
        return Decision::NotRetried(
            "its body was streamed (longer than the buffer limit, or of unknown length) and \
             cannot be replayed: raise `NextUpstreamLayer::buffer_limit` to retry such requests",
        );
    }
    let Some(template) = template else {
        // Only a streamed body, handled above, goes without a template.
        return Decision::Answer;
    };
    if let Failed::Sent = failed {
        if template.is_upgrade() {
            return Decision::NotRetried(
                "it is a protocol upgrade (WebSocket) whose handshake reached the backend",
            );
        }
        if !config.non_idempotent && !is_idempotent(&template.method) {
            return Decision::NotRetried(
                "it reached the backend and its method is not idempotent: set \
                 `NextUpstreamLayer::non_idempotent(true)` to retry it anyway",
            );
        }
    }
    match backend.filter(|b| !b.is_empty()) {
        // Without a `LoadBalance` inside, nothing says when every backend
        // has been tried: only an explicit `tries` bounds the retries.
        None if config.tries == 0 => Decision::Answer,
        backend => Decision::Retry(backend),
    }
}

/// The default [`NextUpstreamLayer::never_sent`]: the connection was refused.
fn refused(error: &(dyn std::error::Error + 'static)) -> bool {
    has_io_error(error, std::io::ErrorKind::ConnectionRefused)
}

/// Reports a failing status's attempt whose answer goes to the client, if
/// its verdict was left to this layer (see `PendingStatusFailure`): a
/// success, as nginx counts a status it does not move on from. (A retry
/// hands the verdict to its own pick instead, which settles it.)
fn settle_answered<R>(result: &mut Result<Response<R>, Error>) {
    if let Ok(res) = result {
        if let Some(pending) = res.extensions_mut().remove::<PendingStatusFailure>() {
            pending.settle(false);
        }
    }
}

/// Whether an attempt failed only because no untried backend was left.
fn no_backend_left<R>(result: &Result<R, Error>) -> bool {
    matches!(
        result,
        Err(Error::NoBackends | Error::AllBackendsDown { .. })
    )
}

/// Whether a request may be sent twice to the same effect (RFC 9110
/// §9.2.2), as nginx's `proxy_next_upstream` reads it.
pub(crate) fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

impl<S, B, ResBody> fmt::Debug for ResponseFuture<S, B, ResBody>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResBody>>,
    B: Body,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("attempts", &self.attempts)
            .field("tried", &self.tried)
            .finish_non_exhaustive()
    }
}

/// The request body each attempt gets from [`NextUpstream`]: empty, a replay
/// of the buffered body, or the original body streamed once.
pub struct ReplayBody<B: Body> {
    kind: Kind<B>,
}

enum Kind<B: Body> {
    Empty,
    // Boxed: a request is moved many times on its way to the backend, and
    // only a replayed body needs the room.
    Buffered {
        buffer: Box<Buffered<B::Data>>,
        started: bool,
    },
    Streaming {
        body: B,
    },
}

// Nothing in a `ReplayBody` is ever pinned but the body it streams, and
// only through `Pin::new` on an `Unpin` body: the buffered chunks are moved
// out freely.
impl<B: Body + Unpin> Unpin for ReplayBody<B> {}

impl<B: Body> ReplayBody<B> {
    /// Whether this body can be sent again (it is empty or buffered).
    ///
    /// ```
    /// # let _ = |b: tower_lb::layer::ReplayBody<http_body_util::Full<bytes::Bytes>>| b.is_replayable();
    /// ```
    pub fn is_replayable(&self) -> bool {
        !matches!(self.kind, Kind::Streaming { .. })
    }
}

impl<B> Body for ReplayBody<B>
where
    B: Body + Unpin,
    B::Data: Clone,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match &mut self.get_mut().kind {
            Kind::Empty => Poll::Ready(None),
            Kind::Buffered { buffer, started } => {
                *started = true;
                let frame = match buffer.first.take().or_else(|| buffer.rest.next()) {
                    Some(chunk) => Frame::data(chunk),
                    None => match buffer.trailers.take() {
                        Some(trailers) => Frame::trailers(*trailers),
                        None => return Poll::Ready(None),
                    },
                };
                Poll::Ready(Some(Ok(frame)))
            }
            Kind::Streaming { body } => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Buffered { buffer, .. } => {
                buffer.first.is_none() && buffer.rest.len() == 0 && buffer.trailers.is_none()
            }
            Kind::Streaming { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Buffered { buffer, started } if !*started => buffer.hint,
            Kind::Buffered { buffer, .. } => {
                let mut hint = SizeHint::new();
                if let Some(upper) = buffer.hint.upper() {
                    hint.set_upper(upper);
                }
                hint
            }
            Kind::Streaming { body } => body.size_hint(),
        }
    }
}

impl<B: Body> fmt::Debug for ReplayBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.kind {
            Kind::Empty => "ReplayBody::Empty",
            Kind::Buffered { .. } => "ReplayBody::Buffered",
            Kind::Streaming { .. } => "ReplayBody::Streaming",
        })
    }
}
