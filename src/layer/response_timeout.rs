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
//! backend failure. Other clients, and a `GET` or `HEAD` (taken to have no
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
use std::sync::atomic::{AtomicU8, Ordering};
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
        let sent = RequestSent::default();
        req.extensions_mut().insert(sent.clone());
        ResponseFuture {
            response: self.inner.call(req),
            clock: Clock::Sending {
                sent,
                sleep: self.sleep.clone(),
                timeout: self.timeout,
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
/// sends the body says it takes care of it ([`track`](Self::track)) and
/// when the body has been sent ([`done`](Self::done)), and the response
/// head's clock starts then (nginx starts `proxy_read_timeout` once the
/// request is sent). A client that does not say so gets the clock from the
/// start of the attempt, as before.
#[derive(Clone, Debug, Default)]
pub(crate) struct RequestSent {
    state: Arc<AtomicU8>,
}

#[cfg_attr(not(feature = "proxy"), allow(dead_code))]
const UNTRACKED: u8 = 0;
const SENDING: u8 = 1;
#[cfg_attr(not(feature = "proxy"), allow(dead_code))]
const SENT: u8 = 2;

impl RequestSent {
    /// The client will say when the body has been sent.
    #[cfg_attr(not(feature = "proxy"), allow(dead_code))]
    pub(crate) fn track(&self) {
        let _ =
            self.state
                .compare_exchange(UNTRACKED, SENDING, Ordering::AcqRel, Ordering::Acquire);
    }

    /// The whole body has been sent.
    #[cfg_attr(not(feature = "proxy"), allow(dead_code))]
    pub(crate) fn done(&self) {
        self.state.store(SENT, Ordering::Release);
    }

    fn sending(&self) -> bool {
        self.state.load(Ordering::Acquire) == SENDING
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
        // The request body is still going out.
        Sending { sent: RequestSent, sleep: T, timeout: Duration },
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
            sleep,
            timeout,
        } = this.clock.as_mut().project()
        {
            if sent.sending() {
                return Poll::Pending;
            }
            let sleep = sleep.sleep(*timeout);
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
