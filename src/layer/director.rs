//! Rewrite the outgoing request: Go's `httputil.ReverseProxy.Director`.
//!
//! [`Director`] runs a hook on each request before the inner service sends
//! it. The hook may change anything: URI, headers, extensions. A hook that
//! fails stops the request with [`Error::Hook`] (a proxy answers
//! `502 Bad Gateway`, as Go's `ReverseProxy` does when its `Rewrite` fails)
//! and the inner service is not called.
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

use http::Request;
use pin_project_lite::pin_project;
use tower::Layer;
use tower_service::Service;

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

impl<S, D, B> Service<Request<B>> for Director<S, D>
where
    S: Service<Request<B>>,
    S::Error: Into<BoxError>,
    D: Direct<B>,
{
    type Response = S::Response;
    type Error = Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(|e| upstream_error(e, ""))
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
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

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Called { future } => {
                Poll::Ready(ready!(future.poll(cx)).map_err(|e| upstream_error(e, "")))
            }
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
