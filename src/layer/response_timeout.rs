//! A deadline for each attempt's response head.
//!
//! [`ResponseTimeout`] fails a request with [`Error::Timeout`] (`504 Gateway
//! Timeout`) when the inner service has not answered with a response head
//! within the configured time, like nginx's `proxy_read_timeout` before the
//! first byte of the response, or Envoy's `per_try_timeout`. For a request
//! with a body, the clock starts once the body has been sent, if the client
//! says when ([`WorkerUpstream`](crate::proxy::WorkerUpstream) does; nginx
//! starts `proxy_read_timeout` after the request is sent): a slow upload is
//! then the client's delay (timed by the client's own body timeout), not a
//! backend failure. While the body goes out, the same limit is nginx's
//! `proxy_send_timeout`: an attempt whose backend takes nothing of the body
//! for that long fails with [`Error::Timeout`]. Other clients, and a `GET` or `HEAD` (taken to have no
//! body, without a look at its headers), get the clock from the start of
//! the attempt. The layer takes `http::Request`s. The connection
//! itself is timed by the client's connector (hyper-util's
//! `HttpConnector::set_connect_timeout`); [`LoadBalance`](super::LoadBalance)
//! turns the connector's `io::ErrorKind::TimedOut` into [`Error::Timeout`]
//! too.
//!
//! Place it *inside* [`LoadBalance`](super::LoadBalance) (between it and the
//! director), so that the timed-out attempt's outcome is recorded as a
//! failure of the backend it went to, and a
//! `NextUpstream` outside can retry it on another
//! backend.
//!
//! # Differences from `tower::timeout`
//!
//! `tower::timeout` needs tokio and fails with its own `Elapsed` error. This
//! layer takes the sleep from you (any `Fn(Duration) -> impl Future`, such
//! as `tokio::time::sleep`), so it works on any runtime, and fails with
//! [`Error::Timeout`], which [`Error::status_code`] answers `504` and the
//! failure policy counts against the backend.
//!
//! ```
//! use std::convert::Infallible;
//! use std::time::Duration;
//! use http::{Request, Response, StatusCode};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use tower_lb::layer::{LoadBalanceLayer, ResponseTimeoutLayer};
//! use tower_lb::{Error, LoadBalancer, Strategy};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Error> {
//! let lb = LoadBalancer::new(Strategy::RoundRobin, ["http://10.0.0.1"])?;
//! let mut svc = ServiceBuilder::new()
//!     .layer(LoadBalanceLayer::new(lb.clone()))
//!     .layer(ResponseTimeoutLayer::new(Duration::from_millis(10), tokio::time::sleep))
//!     // A backend that never answers.
//!     .service_fn(|_req: Request<()>| std::future::pending::<Result<Response<()>, Infallible>>());
//!
//! let err = svc.ready().await?.call(Request::new(())).await.unwrap_err();
//! assert!(matches!(&err, Error::Timeout { backend, .. } if backend == "10.0.0.1"));
//! assert_eq!(err.status_code(), StatusCode::GATEWAY_TIMEOUT);
//! assert_eq!(lb.get("10.0.0.1").unwrap().load().failures(), 1);
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{Method, Request};

use pin_project_lite::pin_project;
use tower::Layer;
use tower_service::Service;

use crate::layer::upstream_error;
use crate::{BoxError, Error};

/// A timer: a future that completes after a given time. Implemented for
/// every `Fn(Duration) -> impl Future<Output = ()>`, such as
/// `tokio::time::sleep`, so you pass your runtime's sleep as it is.
///
/// ```
/// use std::time::Duration;
/// use tower_lb::layer::{ResponseTimeoutLayer, Sleep};
///
/// // Any runtime's sleep works; this one never fires, for illustration.
/// let never = |_: Duration| std::future::pending::<()>();
/// let _timer = never.sleep(Duration::from_secs(1));
/// let layer = ResponseTimeoutLayer::new(Duration::from_secs(1), never);
/// # let _ = layer;
/// ```
pub trait Sleep {
    /// The future that completes once the time has passed.
    type Future: Future<Output = ()>;

    /// Starts a timer for `duration`.
    fn sleep(&self, duration: Duration) -> Self::Future;
}

impl<F, Fut> Sleep for F
where
    F: Fn(Duration) -> Fut,
    Fut: Future<Output = ()>,
{
    type Future = Fut;

    #[inline]
    fn sleep(&self, duration: Duration) -> Fut {
        self(duration)
    }
}

/// Applies [`ResponseTimeout`] to a service. `Clone` and cheap when the
/// sleep is (a function item such as `tokio::time::sleep` is zero-sized).
///
/// ```
/// use std::time::Duration;
/// use tower_lb::layer::ResponseTimeoutLayer;
///
/// let layer = ResponseTimeoutLayer::new(Duration::from_secs(60), tokio::time::sleep);
/// assert_eq!(layer.timeout(), Duration::from_secs(60));
/// ```
#[derive(Clone, Copy)]
pub struct ResponseTimeoutLayer<T> {
    timeout: Duration,
    sleep: T,
}

impl<T> ResponseTimeoutLayer<T> {
    /// Fails an attempt whose response head has not arrived within
    /// `timeout`, timed by `sleep`.
    pub fn new(timeout: Duration, sleep: T) -> Self {
        ResponseTimeoutLayer { timeout, sleep }
    }

    /// The time each attempt may wait for its response head.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

impl<S, T: Clone> Layer<S> for ResponseTimeoutLayer<T> {
    type Service = ResponseTimeout<S, T>;

    fn layer(&self, inner: S) -> Self::Service {
        ResponseTimeout {
            inner,
            timeout: self.timeout,
            sleep: self.sleep.clone(),
        }
    }
}

impl<T> fmt::Debug for ResponseTimeoutLayer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseTimeoutLayer")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Fails a request whose response head does not arrive in time; see the
/// [module docs](self).
#[derive(Clone)]
pub struct ResponseTimeout<S, T> {
    inner: S,
    timeout: Duration,
    sleep: T,
}

impl<S, T> ResponseTimeout<S, T> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: fmt::Debug, T> fmt::Debug for ResponseTimeout<S, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseTimeout")
            .field("inner", &self.inner)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl<S, T, B> Service<Request<B>> for ResponseTimeout<S, T>
where
    S: Service<Request<B>>,
    S::Error: Into<BoxError>,
    T: Sleep + Clone,
{
    type Response = S::Response;
    type Error = Error;
    type Future = ResponseFuture<S::Future, T>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(|e| upstream_error(e, ""))
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if !has_body(&req) {
            return ResponseFuture {
                response: self.inner.call(req),
                clock: Clock::Running {
                    sleep: self.sleep.sleep(self.timeout),
                },
            };
        }
        // The clock starts once the body is sent, if the client says when
        // (`WorkerUpstream` does): a slow upload is not the backend's delay.
        // Until then it only watches the backend take the body.
        let sent = RequestSent::default();
        req.extensions_mut().insert(sent.clone());
        ResponseFuture {
            response: self.inner.call(req),
            clock: Clock::Sending {
                sent,
                factory: self.sleep.clone(),
                timeout: self.timeout,
                seen: 0,
                sleep: self.sleep.sleep(self.timeout),
            },
        }
    }
}

/// Whether a request's head announces a body (`Content-Length` other than
/// 0, or `Transfer-Encoding`). A `GET` or `HEAD` is taken to have none
/// without a look (one with a body gets the clock from the start): most
/// requests are, and two header look-ups are a measurable share of the
/// proxy's own work.
fn has_body<B>(req: &Request<B>) -> bool {
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        return false;
    }
    req.headers().contains_key(TRANSFER_ENCODING)
        || req
            .headers()
            .get(CONTENT_LENGTH)
            .is_some_and(|len| len.as_bytes() != b"0")
}

/// Put in a request with a body by [`ResponseTimeout`]; the client that
/// sends the body says it takes care of it ([`track`](Self::track)), how it
/// goes ([`waiting`](Self::waiting) on the client, or
/// [`progressed`](Self::progressed)), and when the body has been sent
/// ([`done`](Self::done)). The response head's clock starts then (nginx
/// starts `proxy_read_timeout` once the request is sent); while the body
/// goes out, the same limit is nginx's `proxy_send_timeout`: an attempt
/// fails if the backend takes nothing of it for that long, and a wait on
/// the client is the client's (its own body timeout). A client that does
/// not say so gets the clock from the start of the attempt, as before.
#[derive(Clone, Debug, Default)]
pub(crate) struct RequestSent {
    /// The phase in the low two bits, whether the body waits on the client
    /// in the next, and a count of the chunks taken above.
    state: Arc<AtomicU64>,
}

const PHASE: u64 = 0b11;
const UNTRACKED: u64 = 0;
const SENDING: u64 = 1;
#[cfg_attr(not(feature = "proxy"), allow(dead_code))]
const SENT: u64 = 2;
const ON_CLIENT: u64 = 0b100;
const CHUNK: u64 = 0b1000;

#[cfg_attr(not(feature = "proxy"), allow(dead_code))]
impl RequestSent {
    /// The client will say when the body has been sent.
    pub(crate) fn track(&self) {
        let _ =
            self.state
                .compare_exchange(UNTRACKED, SENDING, Ordering::AcqRel, Ordering::Acquire);
    }

    /// The body waits on the client for its next chunk.
    pub(crate) fn waiting(&self) {
        self.state.fetch_or(ON_CLIENT, Ordering::AcqRel);
    }

    /// A chunk of the body went out.
    pub(crate) fn progressed(&self) {
        let _ = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                Some((s & !ON_CLIENT).wrapping_add(CHUNK))
            });
    }

    /// The whole body has been sent.
    pub(crate) fn done(&self) {
        let _ = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                Some((s & !PHASE) | SENT)
            });
    }

    fn load(&self) -> u64 {
        self.state.load(Ordering::Acquire)
    }
}

pin_project! {
    /// Response future of [`ResponseTimeout`].
    pub struct ResponseFuture<F, T: Sleep> {
        #[pin]
        response: F,
        #[pin]
        clock: Clock<T>,
    }
}

pin_project! {
    #[project = ClockProj]
    enum Clock<T: Sleep> {
        // The request body is still going out: `sleep` runs out if the
        // backend takes nothing of it for `timeout`.
        Sending {
            sent: RequestSent,
            factory: T,
            timeout: Duration,
            // The chunks taken when `sleep` was armed.
            seen: u64,
            #[pin]
            sleep: T::Future,
        },
        Running { #[pin] sleep: T::Future },
    }
}

impl<F, T, Res, E> Future for ResponseFuture<F, T>
where
    F: Future<Output = Result<Res, E>>,
    E: Into<BoxError>,
    T: Sleep,
{
    type Output = Result<Res, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(result) = this.response.poll(cx) {
            return Poll::Ready(result.map_err(|e| upstream_error(e, "")));
        }
        // The client sends the body as the response future is polled, so
        // its end is seen here, in the same poll.
        if let ClockProj::Sending {
            sent,
            factory,
            timeout,
            seen,
            mut sleep,
        } = this.clock.as_mut().project()
        {
            let state = sent.load();
            if state & PHASE == SENDING {
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                let state = sent.load();
                let chunks = state / CHUNK;
                if state & ON_CLIENT == 0 && chunks == *seen {
                    // Nothing of the body taken for `timeout`, and not for
                    // want of the client: the backend's stall.
                    return Poll::Ready(Err(Error::Timeout {
                        backend: String::new(),
                        waited_for: "the backend to take the request body",
                        source: None,
                    }));
                }
                // Once per poll: a timer that is ready at once (a zero
                // limit) yields instead of spinning here.
                *seen = chunks;
                sleep.set(factory.sleep(*timeout));
                if sleep.as_mut().poll(cx).is_ready() {
                    cx.waker().wake_by_ref();
                }
                return Poll::Pending;
            }
            // Sent (the head's clock starts now), or untracked (from the
            // first poll, about when the attempt started).
            let sleep = factory.sleep(*timeout);
            this.clock.set(Clock::Running { sleep });
        }
        let ClockProj::Running { sleep } = this.clock.project() else {
            return Poll::Pending;
        };
        match sleep.poll(cx) {
            // LoadBalance, outside, fills in the backend id.
            Poll::Ready(()) => Poll::Ready(Err(Error::Timeout {
                backend: String::new(),
                waited_for: "the response head",
                source: None,
            })),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<F, T: Sleep> fmt::Debug for ResponseFuture<F, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
