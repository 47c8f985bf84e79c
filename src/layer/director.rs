//! Rewrite the outgoing request: Go's `httputil.ReverseProxy.Director`.
//!
//! [`Director`] runs a hook on each request before the inner service sends
//! it. The hook may change anything: URI, headers, extensions. A hook that
//! fails stops the request with [`Error::Hook`] and the inner service is not
//! called; a proxy answers `502 Bad Gateway`, what Go's `ReverseProxy`
//! answers for any failure between receiving the request and relaying the
//! response.
//!
//! Hop-by-hop headers (RFC 9110 §7.6.1) are handled here, around the hook,
//! not by it:
//!
//! * the request's are removed *before* the hook runs, as Go's `Rewrite`
//!   does (see [`remove_hop_by_hop_headers`](crate::layer::remove_hop_by_hop_headers)). A header the hook adds is
//!   then never removed because the client listed its name in
//!   `Connection` (with Go's older `Director` model, a client sending
//!   `Connection: x-gateway-tenant` deleted the header an outer director
//!   had set: golang/go#50580);
//! * the response's are removed before it goes back out
//!   ([`strip_hop_by_hop_response`](crate::layer::strip_hop_by_hop_response): a backend's `Connection: x-internal`
//!   takes its `X-Internal` with it; only a `101` switching to WebSocket
//!   keeps its `Upgrade`).
//!
//! [`ProxyDirector`](crate::layer::ProxyDirector) is the ready-made hook
//! that does what a reverse proxy does; any closure
//! `FnMut(&mut Request<B>) -> Result<(), E>` is a hook too:
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use tower_lb::layer::DirectorLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_lb::Error> {
//! let mut svc = ServiceBuilder::new()
//!     .layer(DirectorLayer::new(|req: &mut Request<()>| {
//!         req.headers_mut().insert("x-gateway", "tower-lb".parse().unwrap());
//!         Ok::<_, Infallible>(())
//!     }))
//!     .service_fn(|req: Request<()>| async move {
//!         Ok::<_, Infallible>(Response::new(req.headers()["x-gateway"].clone()))
//!     });
//! let res = svc.ready().await?.call(Request::new(())).await?;
//! assert_eq!(res.body(), "tower-lb");
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::Layer;
use tower_service::Service;

use crate::layer::proxy_director::{
    check_request_codings, check_response_codings, remove_hop_by_hop_checked,
    strip_hop_by_hop_response_checked,
};
use crate::layer::upstream_error;
use crate::{BoxError, Error, HookStage};

/// A hook that rewrites an outgoing request.
///
/// Implemented for [`ProxyDirector`](crate::layer::ProxyDirector) and for
/// every `FnMut(&mut Request<B>) -> Result<(), E>` with `E: Into<BoxError>`.
pub trait Direct<B> {
    /// Rewrites `req` in place.
    ///
    /// # Errors
    ///
    /// Whatever the hook reports; the request is then not sent.
    fn direct(&mut self, req: &mut Request<B>) -> Result<(), BoxError>;
}

impl<B, F, E> Direct<B> for F
where
    F: FnMut(&mut Request<B>) -> Result<(), E>,
    E: Into<BoxError>,
{
    fn direct(&mut self, req: &mut Request<B>) -> Result<(), BoxError> {
        self(req).map_err(Into::into)
    }
}

/// Applies [`Director`] to a service.
///
/// ```
/// use tower_lb::layer::{DirectorLayer, ProxyDirector};
///
/// let layer = DirectorLayer::new(ProxyDirector::new());
/// # let _ = layer;
/// ```
#[derive(Clone, Debug)]
pub struct DirectorLayer<D> {
    director: D,
}

impl<D> DirectorLayer<D> {
    /// A layer running `director` on every request.
    pub fn new(director: D) -> Self {
        DirectorLayer { director }
    }
}

impl<S, D: Clone> Layer<S> for DirectorLayer<D> {
    type Service = Director<S, D>;

    fn layer(&self, inner: S) -> Self::Service {
        Director {
            inner,
            director: self.director.clone(),
        }
    }
}

/// Runs a [`Direct`] hook on each request before the inner service; see the
/// [module docs](self).
#[derive(Clone, Debug)]
pub struct Director<S, D> {
    inner: S,
    director: D,
}

impl<S, D> Director<S, D> {
    /// Wraps `inner`.
    pub fn new(inner: S, director: D) -> Self {
        Director { inner, director }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, D, B, ResBody> Service<Request<B>> for Director<S, D>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    D: Direct<B>,
{
    type Response = Response<ResBody>;
    type Error = Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(|e| upstream_error(e, ""))
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // Before the hook: what the hook adds is end-to-end, whatever the
        // client's Connection header listed. The framing is checked first:
        // removing Transfer-Encoding drops its codings.
        if let Err(error) = remove_hop_by_hop_checked(req.headers_mut(), check_request_codings) {
            return ResponseFuture {
                state: State::Failed { error: Some(error) },
            };
        }
        match self.director.direct(&mut req) {
            Ok(()) => ResponseFuture {
                state: State::Called {
                    future: self.inner.call(req),
                },
            },
            Err(source) => ResponseFuture {
                state: State::Failed {
                    error: Some(hook_error(HookStage::Director, source)),
                },
            },
        }
    }
}

/// A hook's error as an [`Error`]: a tower-lb error passes through (the
/// standard director's [`Error::MissingExtension`]), anything else becomes
/// [`Error::Hook`].
pub(crate) fn hook_error(stage: HookStage, source: BoxError) -> Error {
    match source.downcast::<Error>() {
        Ok(error) => *error,
        Err(source) => Error::Hook { stage, source },
    }
}

pin_project! {
    /// Response future of [`Director`].
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Called { #[pin] future: F },
        Failed { error: Option<Error> },
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<ResBody>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Called { future } => Poll::Ready(match ready!(future.poll(cx)) {
                Ok(mut res) => strip_hop_by_hop_response_checked(&mut res, check_response_codings)
                    .map(|()| res),
                Err(e) => Err(upstream_error(e, "")),
            }),
            StateProj::Failed { error } => Poll::Ready(Err(error
                .take()
                .expect("ResponseFuture polled after completion"))),
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
