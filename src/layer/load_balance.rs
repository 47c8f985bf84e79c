//! Pick a backend for each request.
//!
//! [`LoadBalance`] asks its [`KeyExtractor`] for the request's affinity key,
//! picks a backend from the [`LoadBalancer`] and inserts the chosen
//! [`Member`] into the request's extensions, where the
//! [director](crate::layer::director) and the inner service read it. It
//! counts the request as in flight on that backend until the response
//! arrives, and reports the outcome (passive feedback) according to its
//! [`FailurePolicy`].
//!
//! It does not send anything itself: the inner service does (for a proxy, a
//! client that sends to the URI the director wrote). Unlike
//! `tower::balance`, which balances over a set of inner services, this layer
//! balances over addresses for one inner client, as a reverse proxy does.
//!
//! When no backend can be picked the service answers
//! [`Error::NoBackends`] or [`Error::AllBackendsDown`] without calling the
//! inner service; [`Error::status_code`] turns them into `503 Service
//! Unavailable`:
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response, StatusCode};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use tower_lb::layer::LoadBalanceLayer;
//! use tower_lb::{LoadBalancer, Member, Strategy};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_lb::Error> {
//! let lb = LoadBalancer::new(Strategy::RoundRobin, ["http://10.0.0.1", "http://10.0.0.2"])?;
//! let mut svc = ServiceBuilder::new()
//!     .layer(LoadBalanceLayer::new(lb.clone()))
//!     .service_fn(|req: Request<()>| async move {
//!         // The inner service finds the pick in the extensions.
//!         let member = req.extensions().get::<Member>().unwrap();
//!         Ok::<_, Infallible>(Response::new(member.id().to_owned()))
//!     });
//!
//! let res = svc.ready().await?.call(Request::new(())).await?;
//! assert_eq!(res.body(), "10.0.0.1");
//!
//! lb.mark_down("10.0.0.1")?;
//! lb.mark_down("10.0.0.2")?;
//! let err = svc.ready().await?.call(Request::new(())).await.unwrap_err();
//! assert_eq!(err.status_code(), StatusCode::SERVICE_UNAVAILABLE);
//! # Ok(())
//! # }
//! ```
//!
//! # Sticky sessions
//!
//! With [`LoadBalanceLayer::sticky`] the layer keeps each client on one
//! backend by cookie insertion, as HAProxy's `cookie SRV insert indirect
//! nocache` with `option redispatch` does (see [`StickyCookie`]):
//!
//! * a request without a valid sticky cookie is balanced as usual, and the
//!   response gets `Set-Cookie` naming the chosen backend (a `101 Switching
//!   Protocols` too: a WebSocket reconnect then finds its backend again);
//! * a request whose cookie names a backend that is up goes to it, whatever
//!   the strategy or affinity key would pick, and the response gets no new
//!   cookie unless [`VerifiedCookie::should_reissue`](crate::sticky::VerifiedCookie::should_reissue)
//!   says so (previous secret, past half its lifetime, or outliving the
//!   `max_age` configured now);
//! * when that backend is down or no longer configured, the request is
//!   balanced as usual and the response re-issues the cookie for the new
//!   backend;
//! * a forged, tampered, expired or unreadable cookie counts as none: no
//!   cookie value can send a request anywhere but to a configured backend;
//! * the sticky cookie is removed from the request sent upstream
//!   ([`StickyCookie::strip_upstream`]);
//! * a response the [`FailurePolicy`] counts as a failure gets no cookie, so
//!   a client is not pinned to a backend that just failed it;
//! * a `Set-Cookie` of the sticky name from the backend itself is removed,
//!   unless the cookie is configured to [`preserve`](StickyCookie::preserve)
//!   it (then it stays, and no cookie is inserted).
//!
//! ```
//! use std::convert::Infallible;
//! use http::{header, Request, Response};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use tower_lb::layer::LoadBalanceLayer;
//! use tower_lb::sticky::{Secret, StickyCookie};
//! use tower_lb::{LoadBalancer, Member, Strategy};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_lb::Error> {
//! let lb = LoadBalancer::new(Strategy::RoundRobin, ["http://10.0.0.1", "http://10.0.0.2"])?;
//! let sticky = StickyCookie::new("lb", Secret::generate()?)?;
//! let mut svc = ServiceBuilder::new()
//!     .layer(LoadBalanceLayer::new(lb.clone()).sticky(sticky))
//!     .service_fn(|req: Request<()>| async move {
//!         let member = req.extensions().get::<Member>().unwrap();
//!         Ok::<_, Infallible>(Response::new(member.id().to_owned()))
//!     });
//!
//! // A new client: balanced, and given a cookie.
//! let res = svc.ready().await?.call(Request::new(())).await?;
//! assert_eq!(res.body(), "10.0.0.1");
//! let set_cookie = res.headers()[header::SET_COOKIE].to_str().unwrap();
//! let cookie = set_cookie.split(';').next().unwrap().to_owned();
//!
//! // It comes back with the cookie: the same backend, though round robin
//! // would pick the other one.
//! for _ in 0..3 {
//!     let req = Request::builder().header(header::COOKIE, &cookie).body(()).unwrap();
//!     let res = svc.ready().await?.call(req).await?;
//!     assert_eq!(res.body(), "10.0.0.1");
//!     assert!(res.headers().get(header::SET_COOKIE).is_none());
//! }
//!
//! // Its backend goes down: redispatched, with a new cookie.
//! lb.mark_down("10.0.0.1")?;
//! let req = Request::builder().header(header::COOKIE, &cookie).body(()).unwrap();
//! let res = svc.ready().await?.call(req).await?;
//! assert_eq!(res.body(), "10.0.0.2");
//! assert!(res.headers().contains_key(header::SET_COOKIE));
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower::Layer;
use tower_service::Service;

use crate::layer::upstream_error;
use crate::sticky::{AffinityKey, KeyExtractor, NoKey, StickyCookie};
use crate::{BoxError, Error, InFlight, Load, LoadBalancer, Member, Outcome};

/// Which responses count as a backend failure for passive feedback.
///
/// An inner-service error always counts. By default so do `502`, `503` and
/// `504` (the statuses nginx's `proxy_next_upstream http_502 http_503
/// http_504` and HAProxy's `observe layer7` treat as the server's fault);
/// any other status counts as a success.
///
/// A request that never reached the backend counts as neither: one a
/// director refused because of the request itself ([`Error::BadRequest`],
/// [`Error::UriTooLong`], any error whose [`Error::status_code`] is a
/// `4xx`), or whose hook failed ([`Error::Hook`],
/// [`Error::MissingExtension`]). Otherwise any client could push a
/// backend's failure counters with requests it knows will be refused.
///
/// ```
/// use http::StatusCode;
/// use tower_lb::layer::FailurePolicy;
///
/// let default = FailurePolicy::default();
/// assert!(default.is_failure(StatusCode::BAD_GATEWAY));
/// assert!(!default.is_failure(StatusCode::INTERNAL_SERVER_ERROR));
///
/// let all_5xx = FailurePolicy::new(|s| s.is_server_error());
/// assert!(all_5xx.is_failure(StatusCode::INTERNAL_SERVER_ERROR));
/// ```
#[derive(Clone, Copy)]
pub struct FailurePolicy {
    is_failure: fn(StatusCode) -> bool,
}

impl FailurePolicy {
    /// A policy from a predicate over the response status.
    pub fn new(is_failure: fn(StatusCode) -> bool) -> Self {
        FailurePolicy { is_failure }
    }

    /// Whether a response with this status counts as a failure.
    #[inline]
    pub fn is_failure(&self, status: StatusCode) -> bool {
        (self.is_failure)(status)
    }
}

impl Default for FailurePolicy {
    fn default() -> Self {
        FailurePolicy::new(|s| {
            matches!(
                s,
                StatusCode::BAD_GATEWAY
                    | StatusCode::SERVICE_UNAVAILABLE
                    | StatusCode::GATEWAY_TIMEOUT
            )
        })
    }
}

impl fmt::Debug for FailurePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailurePolicy").finish_non_exhaustive()
    }
}

/// Applies [`LoadBalance`] to a service. Cheap to clone (one `Arc` and the
/// extractor).
///
/// ```
/// use tower_lb::layer::LoadBalanceLayer;
/// use tower_lb::sticky::AffinityKey;
/// use tower_lb::{LoadBalancer, Strategy};
///
/// let lb = LoadBalancer::new(Strategy::consistent_hash(), ["http://10.0.0.1", "http://10.0.0.2"])?;
/// // Affinity by a header: the same tenant always reaches the same backend.
/// fn tenant(req: &http::Request<String>) -> Option<AffinityKey<'_>> {
///     req.headers().get("x-tenant").map(|v| v.as_bytes().into())
/// }
/// let layer = LoadBalanceLayer::new(lb).key(tenant);
/// # let _ = layer;
/// # Ok::<(), tower_lb::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct LoadBalanceLayer<K = NoKey> {
    lb: LoadBalancer,
    key: K,
    policy: FailurePolicy,
    sticky: Option<Arc<StickyCookie>>,
}

impl LoadBalanceLayer {
    /// Balances over `lb`'s backends, without an affinity key.
    pub fn new(lb: LoadBalancer) -> Self {
        LoadBalanceLayer {
            lb,
            key: NoKey,
            policy: FailurePolicy::default(),
            sticky: None,
        }
    }
}

impl<K> LoadBalanceLayer<K> {
    /// Uses `key` to find each request's affinity key.
    pub fn key<K2>(self, key: K2) -> LoadBalanceLayer<K2> {
        LoadBalanceLayer {
            lb: self.lb,
            key,
            policy: self.policy,
            sticky: self.sticky,
        }
    }

    /// Uses a function or closure to find each request's affinity key.
    ///
    /// The same as [`key`](Self::key), with the bound that lets a closure
    /// return a key borrowed from the request without any annotation
    /// beyond its argument's type:
    ///
    /// ```
    /// use http::Request;
    /// use tower_lb::layer::LoadBalanceLayer;
    /// use tower_lb::{LoadBalancer, Strategy};
    ///
    /// let lb = LoadBalancer::new(Strategy::consistent_hash(), ["http://10.0.0.1", "http://10.0.0.2"])?;
    /// let layer = LoadBalanceLayer::new(lb).key_fn(|req: &Request<String>| {
    ///     req.headers().get("x-tenant").map(|v| v.as_bytes().into())
    /// });
    /// # let _ = layer;
    /// # Ok::<(), tower_lb::Error>(())
    /// ```
    pub fn key_fn<B, F>(self, key: F) -> LoadBalanceLayer<F>
    where
        F: for<'r> Fn(&'r Request<B>) -> Option<AffinityKey<'r>>,
    {
        self.key(key)
    }

    /// Sets which responses count as failures.
    pub fn failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Keeps each client on one backend with an inserted cookie; see
    /// [Sticky sessions](self#sticky-sessions).
    pub fn sticky(mut self, cookie: StickyCookie) -> Self {
        self.sticky = Some(Arc::new(cookie));
        self
    }
}

impl<S, K: Clone> Layer<S> for LoadBalanceLayer<K> {
    type Service = LoadBalance<S, K>;

    fn layer(&self, inner: S) -> Self::Service {
        LoadBalance {
            inner,
            lb: self.lb.clone(),
            key: self.key.clone(),
            policy: self.policy,
            sticky: self.sticky.clone(),
        }
    }
}

/// Picks a backend for each request; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct LoadBalance<S, K = NoKey> {
    inner: S,
    lb: LoadBalancer,
    key: K,
    policy: FailurePolicy,
    sticky: Option<Arc<StickyCookie>>,
}

impl<S, K> LoadBalance<S, K> {
    /// The load balancer picks come from.
    pub fn load_balancer(&self) -> &LoadBalancer {
        &self.lb
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, K, ReqBody, ResBody> Service<Request<ReqBody>> for LoadBalance<S, K>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    K: KeyExtractor<ReqBody>,
{
    type Response = Response<ResBody>;
    type Error = Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(|e| upstream_error(e, ""))
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let (picked, sticky) = match &self.sticky {
            None => (self.pick(&req), None),
            Some(sticky) => {
                let (picked, insert) = match sticky.verify(req.headers()) {
                    Some(cookie) => match self.lb.get(cookie.id()) {
                        // Its backend, whatever the strategy would pick,
                        // unless this is a retry and it failed already: the
                        // retry moves the client, and the response says so.
                        Some(member) if member.is_up() && !was_tried(&req, member.id()) => {
                            (Ok(member), cookie.should_reissue())
                        }
                        // Down or removed: redispatch, and re-issue.
                        _ => (self.pick(&req), true),
                    },
                    None => (self.pick(&req), true),
                };
                if picked.is_ok() && sticky.strips_upstream() {
                    sticky.strip(req.headers_mut());
                }
                (picked, Some((Arc::clone(sticky), insert)))
            }
        };
        let member = match picked {
            Ok(member) => member,
            Err(error) => return ResponseFuture::failed(error),
        };
        let in_flight = Load::start(member.load());
        let picked = member.clone();
        req.extensions_mut().insert(member);
        ResponseFuture {
            state: State::Called {
                future: self.inner.call(req),
                member: picked,
                in_flight: Some(in_flight),
                policy: self.policy,
                sticky,
            },
        }
    }
}

impl<S, K> LoadBalance<S, K> {
    /// A pick by the strategy, with the request's affinity key; for a retry,
    /// the first backend of the failover order not yet tried.
    fn pick<B>(&self, req: &Request<B>) -> Result<Member, Error>
    where
        K: KeyExtractor<B>,
    {
        let key = self.key.extract(req);
        let key = key.as_ref().map(|k| k.as_bytes());
        match req.extensions().get::<TriedBackends>() {
            Some(tried) if !tried.is_empty() => {
                let ids: Vec<&str> = tried.ids().collect();
                self.lb.pick_excluding(key, &ids)
            }
            _ => self.lb.pick(key),
        }
    }
}

fn was_tried<B>(req: &Request<B>, id: &str) -> bool {
    req.extensions()
        .get::<TriedBackends>()
        .is_some_and(|tried| tried.contains(id))
}

/// The backends already tried for one request, oldest first: a retry layer
/// such as `NextUpstream` (feature `http-body`) puts it in each
/// retry's extensions, and [`LoadBalance`] then picks the first backend of
/// [`LoadBalancer::failover`] not in it (see
/// [`LoadBalancer::pick_excluding`]); a sticky cookie naming a tried backend
/// is overruled and re-issued for the backend that serves.
///
/// To learn where an attempt went, a retry layer reads the backend id of
/// [`Error::Upstream`] and [`Error::Timeout`], or the [`Member`] that
/// `LoadBalance` puts in the extensions of a response its
/// [`FailurePolicy`] counts as a failure.
///
/// ```
/// use std::convert::Infallible;
/// use http::{Request, Response};
/// use tower::{Service, ServiceBuilder, ServiceExt};
/// use tower_lb::layer::{LoadBalanceLayer, TriedBackends};
/// use tower_lb::{LoadBalancer, Member, Strategy};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_lb::Error> {
/// let lb = LoadBalancer::new(Strategy::consistent_hash(), ["http://10.0.0.1", "http://10.0.0.2"])?;
/// let mut svc = ServiceBuilder::new()
///     .layer(LoadBalanceLayer::new(lb.clone()))
///     .service_fn(|req: Request<()>| async move {
///         let member = req.extensions().get::<Member>().unwrap();
///         Ok::<_, Infallible>(Response::new(member.id().to_owned()))
///     });
///
/// let first = svc.ready().await?.call(Request::new(())).await?.into_body();
/// let mut retry = Request::new(());
/// let mut tried = TriedBackends::default();
/// tried.push(&first);
/// retry.extensions_mut().insert(tried);
/// let second = svc.ready().await?.call(retry).await?.into_body();
/// assert_ne!(first, second);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TriedBackends {
    ids: Vec<Arc<str>>,
}

impl TriedBackends {
    /// Adds a backend id.
    pub fn push(&mut self, id: &str) {
        self.ids.push(Arc::from(id));
    }

    /// Whether this id was tried.
    pub fn contains(&self, id: &str) -> bool {
        self.ids.iter().any(|tried| &**tried == id)
    }

    /// The ids, oldest first.
    pub fn ids(&self) -> impl Iterator<Item = &str> + '_ {
        self.ids.iter().map(|id| &**id)
    }

    /// How many backends were tried.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether none was.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

pin_project! {
    /// Response future of [`LoadBalance`].
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Called {
            #[pin]
            future: F,
            member: Member,
            in_flight: Option<InFlight>,
            policy: FailurePolicy,
            // The sticky cookie, if configured, and whether the response
            // is to carry a fresh one.
            sticky: Option<(Arc<StickyCookie>, bool)>,
        },
        Failed {
            error: Option<Error>,
        },
    }
}

impl<F> ResponseFuture<F> {
    fn failed(error: Error) -> Self {
        ResponseFuture {
            state: State::Failed { error: Some(error) },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<B>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Called {
                future,
                member,
                in_flight,
                policy,
                sticky,
            } => {
                let result = ready!(future.poll(cx));
                // Dropping the guard counts the request as finished.
                let Some(in_flight) = in_flight.take() else {
                    panic!("ResponseFuture polled after completion");
                };
                let load = in_flight.load();
                Poll::Ready(match result {
                    Ok(mut res) => {
                        let failed = policy.is_failure(res.status());
                        load.record(if failed {
                            Outcome::Failure
                        } else {
                            Outcome::Success
                        });
                        if failed {
                            // Where the failed attempt went, for a retry
                            // layer outside (see `TriedBackends`).
                            res.extensions_mut().insert(member.clone());
                        }
                        if let Some((sticky, insert)) = sticky.take() {
                            // Only the balancer says where a client sticks
                            // (unless the cookie is configured to preserve
                            // a backend's own).
                            let kept = sticky.remove_backend_cookie(res.headers_mut());
                            // A client is not pinned to a backend that just
                            // failed it.
                            if insert && !failed && !kept {
                                // Ids are valid by construction; a failure
                                // only means no cookie this time.
                                let _ = sticky.insert(res.headers_mut(), member.id());
                            }
                        }
                        Ok(res)
                    }
                    Err(error) => {
                        let error = upstream_error(error, member.id());
                        if blames_backend(&error) {
                            load.record(Outcome::Failure);
                        }
                        Err(error)
                    }
                })
            }
            StateProj::Failed { error } => Poll::Ready(Err(error
                .take()
                .expect("ResponseFuture polled after completion"))),
        }
    }
}

/// Whether an error from inside counts as a failure of the picked backend:
/// not a hook's mistake, nor a request refused because of what it is (any
/// `4xx`, such as [`Error::BadRequest`] or [`Error::UriTooLong`]). See
/// [`FailurePolicy`].
fn blames_backend(error: &Error) -> bool {
    !(matches!(error, Error::Hook { .. } | Error::MissingExtension { .. })
        || error.status_code().is_client_error())
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
