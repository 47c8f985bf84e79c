//! Pick a backend for each request.
//!
//! [`LoadBalance`] asks its [`KeyExtractor`] for the request's affinity key,
//! picks a backend from the [`LoadBalancer`] and inserts the chosen
//! [`Member`] into the request's extensions, where the
//! [director](crate::layer::director) and the inner service read it. It
//! counts the request as in flight on that backend until the response
//! arrives (or, with [`LoadBalanceLayer::count_until_exchange_ends`], until
//! the exchange really ends), reports the outcome (passive feedback, which
//! drives [health](crate::health)) according to its [`FailurePolicy`], and
//! names the backend in the response's [`PickedBackend`] extension.
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
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use http::{HeaderMap, Request, Response};
use pin_project_lite::pin_project;
use tower::Layer;
use tower_service::Service;

use crate::layer::upstream_error;
use crate::sticky::{AffinityKey, KeyExtractor, NoKey, StickyCookie};
use crate::{BoxError, Error, InFlight, LoadBalancer, Member, Outcome};

pub use crate::health::FailurePolicy;

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
    hold: bool,
}

impl LoadBalanceLayer {
    /// Balances over `lb`'s backends, without an affinity key.
    pub fn new(lb: LoadBalancer) -> Self {
        LoadBalanceLayer {
            lb,
            key: NoKey,
            policy: FailurePolicy::default(),
            sticky: None,
            hold: false,
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
            hold: self.hold,
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

    /// Sets which outcomes count as failures of the backend.
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

    /// Keeps each request counted in flight until the exchange really ends,
    /// not just until the response head: the count moves into an
    /// [`InFlightGuard`] in the response's extensions. Wrap the body with
    /// `InFlightBodyLayer` (feature `http-body`) to hold it until the body
    /// ends or is dropped, or move the guard into an upgraded connection's
    /// task (a WebSocket tunnel) to hold it until the tunnel closes. A gRPC
    /// response's outcome is then also read from its trailers.
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use http::{Request, Response};
    /// use tower::{ServiceBuilder, ServiceExt};
    /// use tower_lb::layer::{InFlightGuard, LoadBalanceLayer};
    /// use tower_lb::{LoadBalancer, Strategy};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_lb::Error> {
    /// let lb = LoadBalancer::new(Strategy::LeastRequest, ["http://10.0.0.1"])?;
    /// let svc = ServiceBuilder::new()
    ///     .layer(LoadBalanceLayer::new(lb.clone()).count_until_exchange_ends())
    ///     .service_fn(|_req: Request<()>| async { Ok::<_, Infallible>(Response::new(())) });
    /// let mut res = svc.oneshot(Request::new(())).await?;
    /// let tunnel = res.extensions_mut().remove::<InFlightGuard>().unwrap();
    /// assert_eq!(lb.get("10.0.0.1").unwrap().load().in_flight(), 1);
    /// drop(tunnel); // the tunnel closed
    /// assert_eq!(lb.get("10.0.0.1").unwrap().load().in_flight(), 0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn count_until_exchange_ends(mut self) -> Self {
        self.hold = true;
        self
    }
}

impl<S, K: Clone> Layer<S> for LoadBalanceLayer<K> {
    type Service = LoadBalance<S, K>;

    fn layer(&self, inner: S) -> Self::Service {
        LoadBalance {
            inner,
            key: self.key.clone(),
            ctx: Arc::new(Ctx {
                lb: self.lb.clone(),
                policy: self.policy.clone(),
                sticky: self.sticky.clone(),
                hold: self.hold,
            }),
        }
    }
}

/// What every request of one service shares: one `Arc` per request.
#[derive(Debug)]
struct Ctx {
    lb: LoadBalancer,
    policy: FailurePolicy,
    sticky: Option<Arc<StickyCookie>>,
    hold: bool,
}

/// Picks a backend for each request; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct LoadBalance<S, K = NoKey> {
    inner: S,
    key: K,
    ctx: Arc<Ctx>,
}

impl<S, K> LoadBalance<S, K> {
    /// The load balancer picks come from.
    pub fn load_balancer(&self) -> &LoadBalancer {
        &self.ctx.lb
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

/// The id of the backend that served a response, in the response's
/// extensions: for logging, tracing and metrics layers outside the stack.
///
/// ```
/// use std::convert::Infallible;
/// use http::{Request, Response};
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_lb::layer::{LoadBalanceLayer, PickedBackend};
/// use tower_lb::{LoadBalancer, Strategy};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_lb::Error> {
/// let lb = LoadBalancer::new(Strategy::RoundRobin, ["http://10.0.0.1"])?;
/// let svc = ServiceBuilder::new()
///     .layer(LoadBalanceLayer::new(lb))
///     .service_fn(|_req: Request<()>| async { Ok::<_, Infallible>(Response::new(())) });
/// let res = svc.oneshot(Request::new(())).await?;
/// assert_eq!(res.extensions().get::<PickedBackend>().unwrap().id(), "10.0.0.1");
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct PickedBackend {
    // The pick itself, handed on from the request's future: no count
    // taken on the id.
    member: Member,
}

impl PickedBackend {
    /// The backend's id.
    pub fn id(&self) -> &str {
        self.member.id()
    }
}

impl PartialEq for PickedBackend {
    fn eq(&self, other: &Self) -> bool {
        self.id() == other.id()
    }
}

impl Eq for PickedBackend {}

impl fmt::Debug for PickedBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PickedBackend")
            .field("id", &self.id())
            .finish()
    }
}

/// A picked member, its request counted in flight on it until this is
/// dropped or [`finish`](Self::finish)ed: the count read through the
/// member's own reference, with none of its own taken (an [`InFlight`]
/// takes one on the counters).
struct Counted(Option<Member>);

impl Counted {
    fn start(member: Member) -> Self {
        member.load().begin();
        Counted(Some(member))
    }

    fn member(&self) -> &Member {
        self.0.as_ref().expect("counted until finished")
    }

    /// Counts the request as finished, and gives the member back.
    fn finish(mut self) -> Member {
        let member = self.0.take().expect("counted until finished");
        member.load().end();
        member
    }

    /// The member, and its request's count handed to a guard.
    fn into_in_flight(mut self) -> (Member, InFlight) {
        let member = self.0.take().expect("counted until finished");
        let in_flight = InFlight::adopt(Arc::clone(member.load()));
        (member, in_flight)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(member) = &self.0 {
            member.load().end();
        }
    }
}

/// Keeps one request counted in flight on its backend while any clone of it
/// lives; see [`LoadBalanceLayer::count_until_exchange_ends`].
#[derive(Clone, Debug)]
pub struct InFlightGuard {
    inner: Arc<GuardInner>,
}

#[derive(Debug)]
struct GuardInner {
    _in_flight: InFlight,
    /// A gRPC response whose outcome waits for its trailers.
    deferred: Mutex<Option<(Member, Arc<Ctx>)>>,
}

impl InFlightGuard {
    fn new(in_flight: InFlight, deferred: Option<(Member, Arc<Ctx>)>) -> Self {
        InFlightGuard {
            inner: Arc::new(GuardInner {
                _in_flight: in_flight,
                deferred: Mutex::new(deferred),
            }),
        }
    }

    /// Reports the outcome a gRPC response's trailers give, if the layer was
    /// waiting for them (a response body wrapper calls this).
    pub fn trailers(&self, trailers: &HeaderMap) {
        let deferred = self
            .inner
            .deferred
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some((member, ctx)) = deferred {
            if let Some(failed) = ctx.policy.grpc_failure(trailers) {
                ctx.lb.report(&member, outcome(failed));
            }
        }
    }
}

/// Put in a request by a retry layer outside
/// ([`NextUpstream`](crate::layer::NextUpstream)) that decides whether a
/// failing status counts against the backend: [`LoadBalance`] then leaves
/// the verdict to it, in a [`PendingStatusFailure`] on the response.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RetryDecides;

/// A response whose status the failure policy counts (a 502, 503, 504),
/// sent through a retry layer: a failure of its backend only if the retry
/// layer moves on to another backend because of it, as nginx counts a
/// status only when `proxy_next_upstream` passes the request on (a 5xx it
/// hands to the client, on the last try or for a POST, counts as a
/// success).
#[derive(Clone, Debug)]
pub(crate) struct PendingStatusFailure {
    verdict: Arc<PendingVerdict>,
}

/// The verdict itself; one never settled (a retry that could not start, a
/// request dropped on the way) counts as a success when it goes, as an
/// answer nginx did not move on from does.
#[derive(Debug)]
struct PendingVerdict(Mutex<Option<Verdict>>);

impl PendingVerdict {
    /// Reports the attempt, once: later calls find nothing to report.
    fn report(&self, failed: bool) {
        let verdict = self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((member, ctx)) = verdict {
            ctx.lb.report(&member, outcome(failed));
        }
    }
}

impl Drop for PendingVerdict {
    fn drop(&mut self) {
        self.report(false);
    }
}

/// Who a deferred report is about, and where it goes.
type Verdict = (Member, Arc<Ctx>);

impl PendingStatusFailure {
    /// Reports the attempt: a failure if the request moved on to another
    /// backend, a success if this answer goes to the client.
    pub(crate) fn settle(&self, moved_on: bool) {
        self.verdict.report(moved_on);
    }
}

fn outcome(failed: bool) -> Outcome {
    if failed {
        Outcome::Failure
    } else {
        Outcome::Success
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
        let ctx = &self.ctx;
        let (picked, insert) = match &ctx.sticky {
            None => (self.pick(&req), false),
            Some(sticky) => {
                let (picked, insert) = match sticky.verify(req.headers()) {
                    Some(cookie) => match ctx.lb.get(cookie.id()) {
                        // Its backend, whatever the strategy would pick
                        // (draining included), unless it is down, ejected
                        // or failing its checks, or this is a retry and it
                        // failed already: the retry moves the client, and
                        // the response says so.
                        Some(member)
                            if !was_tried(&req, member.id()) && ctx.lb.admit_sticky(&member) =>
                        {
                            (Ok(member), cookie.should_reissue())
                        }
                        // Redispatch, and re-issue.
                        _ => (self.pick(&req), true),
                    },
                    None => {
                        let picked = self.pick(&req);
                        if let Ok(member) = &picked {
                            ctx.lb.count_sticky_miss(member);
                        }
                        (picked, true)
                    }
                };
                if picked.is_ok() && sticky.strips_upstream() {
                    sticky.strip(req.headers_mut());
                }
                (picked, insert)
            }
        };
        // A retry carries the verdict on its failed attempt's status: the
        // request moved on if this pick found a backend (nginx counts the
        // status when it passes the request on).
        if let Some(pending) = req.extensions_mut().remove::<PendingStatusFailure>() {
            pending.settle(!matches!(
                picked,
                Err(Error::NoBackends | Error::AllBackendsDown { .. })
            ));
        }
        let member = match picked {
            Ok(member) => member,
            Err(error) => return ResponseFuture::failed(error),
        };
        let retry_decides = req.extensions().get::<RetryDecides>().is_some();
        req.extensions_mut().insert(member.clone());
        // Counted before the inner service is called, as a pick on another
        // thread meanwhile must see it.
        let member = Counted::start(member);
        ResponseFuture {
            state: State::Called {
                future: self.inner.call(req),
                member,
                ctx: Arc::clone(ctx),
                insert,
                retry_decides,
            },
        }
    }
}

impl<S, K> LoadBalance<S, K> {
    /// A pick by the strategy, with the request's affinity key; for a retry,
    /// a backend not yet tried ([`LoadBalancer::pick_excluding`]).
    fn pick<B>(&self, req: &Request<B>) -> Result<Member, Error>
    where
        K: KeyExtractor<B>,
    {
        let key = self.key.extract(req);
        let key = key.as_ref().map(|k| k.as_bytes());
        match req.extensions().get::<TriedBackends>() {
            Some(tried) if !tried.is_empty() => {
                let ids: Vec<&str> = tried.ids().collect();
                self.ctx.lb.pick_excluding(key, &ids)
            }
            _ => self.ctx.lb.pick(key),
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
/// retry's extensions, and [`LoadBalance`] then picks a backend not in it
/// with [`LoadBalancer::pick_excluding`] (a fresh draw without a key, the
/// failover order with one); a sticky cookie naming a tried backend
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
    #[project_replace = StateProjReplace]
    enum State<F> {
        Called {
            #[pin]
            future: F,
            member: Counted,
            ctx: Arc<Ctx>,
            // Whether the response is to carry a fresh sticky cookie.
            insert: bool,
            // Whether a retry layer outside judges a failing status.
            retry_decides: bool,
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
        let mut state = self.project().state;
        let result = match state.as_mut().project() {
            StateProj::Called { future, .. } => ready!(future.poll(cx)),
            StateProj::Failed { error } => {
                return Poll::Ready(Err(error
                    .take()
                    .expect("ResponseFuture polled after completion")))
            }
        };
        // Done with the inner future: its state is let go, and what the
        // answer needs is taken out.
        let StateProjReplace::Called {
            member: counted,
            ctx,
            insert,
            retry_decides,
            ..
        } = state.project_replace(State::Failed { error: None })
        else {
            unreachable!("the state was `Called` above")
        };
        let member = counted.member();
        Poll::Ready(match result {
            Ok(mut res) => {
                let failed = ctx.policy.is_response_failure(&res);
                let deferred = ctx.hold && !failed && FailurePolicy::awaits_grpc_trailers(&res);
                // A failing status, not a gRPC error in the
                // headers (an HTTP 200 a retry never moves on from).
                if failed && retry_decides && ctx.policy.is_failure(res.status()) {
                    // The retry layer outside says whether this
                    // status counts (see `PendingStatusFailure`).
                    res.extensions_mut().insert(PendingStatusFailure {
                        verdict: Arc::new(PendingVerdict(Mutex::new(Some((
                            member.clone(),
                            Arc::clone(&ctx),
                        ))))),
                    });
                } else if !deferred {
                    ctx.lb.report(member, outcome(failed));
                }
                if failed {
                    // Where the failed attempt went, for a retry
                    // layer outside (see `TriedBackends`).
                    res.extensions_mut().insert(member.clone());
                }
                if let Some(sticky) = &ctx.sticky {
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
                let member = if ctx.hold {
                    let (member, in_flight) = counted.into_in_flight();
                    let deferred = deferred.then(|| (member.clone(), Arc::clone(&ctx)));
                    res.extensions_mut()
                        .insert(InFlightGuard::new(in_flight, deferred));
                    member
                } else {
                    // The request is finished.
                    counted.finish()
                };
                res.extensions_mut().insert(PickedBackend { member });
                Ok(res)
            }
            Err(error) => {
                let error = upstream_error(error, member.id());
                if ctx.policy.is_error_failure(&error) {
                    ctx.lb.report(member, Outcome::Failure);
                }
                Err(error)
            }
        })
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
