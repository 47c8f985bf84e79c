//! Keep a request counted in flight until its response body ends.
//!
//! [`LoadBalanceLayer::count_until_exchange_ends`](crate::layer::LoadBalanceLayer::count_until_exchange_ends)
//! moves each request's in-flight count into an [`InFlightGuard`] in the
//! response's extensions. [`InFlightBodyLayer`], placed outside
//! `LoadBalance`, moves that guard into the response body: the request stays
//! counted (for `least_request`, and in the stats) until the body has been
//! read to its end or dropped, and a gRPC response's `grpc-status` trailer
//! is reported as its outcome (a gRPC body that ends without trailers, breaks
//! off or is dropped early reports nothing: a client going away is not the
//! backend's failure, and a success is not proven). A `101 Switching Protocols` response keeps its
//! guard in the extensions, for the code that runs the upgraded connection
//! to hold until the tunnel closes.
//!
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_lb::layer::{InFlightBodyLayer, LoadBalanceLayer};
//! use tower_lb::{LoadBalancer, Strategy};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_lb::Error> {
//! let lb = LoadBalancer::new(Strategy::LeastRequest, ["http://10.0.0.1"])?;
//! let svc = ServiceBuilder::new()
//!     .layer(InFlightBodyLayer::new())
//!     .layer(LoadBalanceLayer::new(lb.clone()).count_until_exchange_ends())
//!     .service_fn(|_req: Request<()>| async {
//!         Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("hello"))))
//!     });
//! let res = svc.oneshot(Request::new(())).await?;
//! let load = lb.get("10.0.0.1").unwrap().load().clone();
//! assert_eq!(load.in_flight(), 1); // the body is still to be read
//! let body = res.into_body().collect().await.unwrap().to_bytes();
//! assert_eq!(body, "hello");
//! assert_eq!(load.in_flight(), 0);
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::{Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower::Layer;
use tower_service::Service;

use crate::layer::InFlightGuard;

/// Wraps response bodies in [`InFlightBody`]; see the [module docs](self).
#[derive(Debug, Clone, Copy, Default)]
pub struct InFlightBodyLayer {
    _priv: (),
}

impl InFlightBodyLayer {
    /// The layer.
    pub fn new() -> Self {
        InFlightBodyLayer { _priv: () }
    }
}

impl<S> Layer<S> for InFlightBodyLayer {
    type Service = InFlightBodyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        InFlightBodyService { inner }
    }
}

/// The service of [`InFlightBodyLayer`].
#[derive(Debug, Clone)]
pub struct InFlightBodyService<S> {
    inner: S,
}

impl<S, Req, B> Service<Req> for InFlightBodyService<S>
where
    S: Service<Req, Response = Response<B>>,
{
    type Response = Response<InFlightBody<B>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        ResponseFuture {
            future: self.inner.call(req),
        }
    }
}

pin_project! {
    /// Response future of [`InFlightBodyService`].
    pub struct ResponseFuture<F> {
        #[pin]
        future: F,
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<InFlightBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut res = ready!(self.project().future.poll(cx))?;
        // An upgrade's tunnel outlives the body: its guard stays for the
        // code that runs the tunnel.
        let guard = if res.status() == StatusCode::SWITCHING_PROTOCOLS {
            None
        } else {
            res.extensions_mut().remove::<InFlightGuard>()
        };
        Poll::Ready(Ok(res.map(|body| InFlightBody::new(body, guard))))
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

pin_project! {
    /// A response body that holds its request's [`InFlightGuard`] until it
    /// ends (or is dropped), and reports a gRPC status found in its trailers.
    pub struct InFlightBody<B> {
        #[pin]
        inner: B,
        guard: Option<InFlightGuard>,
    }
}

impl<B> InFlightBody<B> {
    /// `body`, holding `guard` (if any) until it ends.
    pub fn new(body: B, guard: Option<InFlightGuard>) -> Self {
        InFlightBody { inner: body, guard }
    }

    /// The wrapped body.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B: Body> Body for InFlightBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let (Some(trailers), Some(guard)) = (frame.trailers_ref(), &*this.guard) {
                    guard.trailers(trailers);
                }
            }
            // The end, or a broken body: the exchange is over.
            _ => *this.guard = None,
        }
        Poll::Ready(frame)
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> fmt::Debug for InFlightBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InFlightBody")
            .field("holds_guard", &self.guard.is_some())
            .finish_non_exhaustive()
    }
}
