//! Edit the response: Go's `httputil.ReverseProxy.ModifyResponse`.
//!
//! [`ModifyResponse`] runs a hook on each response from the inner service.
//! The hook gets the response by value and returns it, changed or not; it may
//! change the status and headers, and map the body to another type. A hook
//! that fails turns the response into [`Error::Hook`]: a proxy answers
//! `502 Bad Gateway`, as Go's `ReverseProxy` does when `ModifyResponse`
//! returns an error. Inner-service errors pass through untouched.
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response, StatusCode};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use tower_lb::layer::ModifyResponseLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_lb::Error> {
//! let mut svc = ServiceBuilder::new()
//!     .layer(ModifyResponseLayer::new(|res: Response<&'static str>| {
//!         if res.status() == StatusCode::IM_A_TEAPOT {
//!             return Err("backend is a teapot");
//!         }
//!         // Map the body to its length.
//!         Ok(res.map(|body| body.len()))
//!     }))
//!     .service_fn(|_req: Request<()>| async move {
//!         Ok::<_, Infallible>(Response::new("hello"))
//!     });
//! let res = svc.ready().await?.call(Request::new(())).await?;
//! assert_eq!(*res.body(), 5);
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

use crate::layer::director::hook_error;
use crate::layer::upstream_error;
use crate::{BoxError, Error, HookStage};

/// A hook over a response.
///
/// Implemented for every
/// `FnMut(Response<B>) -> Result<Response<B2>, E>` with `E: Into<BoxError>`.
pub trait ModifyResponseHook<B> {
    /// The body type of the response the hook returns.
    type Body;

    /// Edits or replaces the response.
    ///
    /// # Errors
    ///
    /// Whatever the hook reports; the caller gets [`Error::Hook`].
    fn modify(&mut self, res: Response<B>) -> Result<Response<Self::Body>, BoxError>;
}

impl<B, B2, F, E> ModifyResponseHook<B> for F
where
    F: FnMut(Response<B>) -> Result<Response<B2>, E>,
    E: Into<BoxError>,
{
    type Body = B2;

    fn modify(&mut self, res: Response<B>) -> Result<Response<B2>, BoxError> {
        self(res).map_err(Into::into)
    }
}

/// Applies [`ModifyResponse`] to a service.
///
/// ```
/// use std::convert::Infallible;
/// use tower_lb::layer::ModifyResponseLayer;
///
/// let layer = ModifyResponseLayer::new(|mut res: http::Response<()>| {
///     res.headers_mut().remove("server");
///     Ok::<_, Infallible>(res)
/// });
/// # let _ = layer;
/// ```
#[derive(Clone, Debug)]
pub struct ModifyResponseLayer<M> {
    hook: M,
}

impl<M> ModifyResponseLayer<M> {
    /// A layer running `hook` on every response.
    pub fn new(hook: M) -> Self {
        ModifyResponseLayer { hook }
    }
}

impl<S, M: Clone> Layer<S> for ModifyResponseLayer<M> {
    type Service = ModifyResponse<S, M>;

    fn layer(&self, inner: S) -> Self::Service {
        ModifyResponse {
            inner,
            hook: self.hook.clone(),
        }
    }
}

/// Runs a [`ModifyResponseHook`] on each response; see the
/// [module docs](self).
#[derive(Clone, Debug)]
pub struct ModifyResponse<S, M> {
    inner: S,
    hook: M,
}

impl<S, M> ModifyResponse<S, M> {
    /// Wraps `inner`.
    pub fn new(inner: S, hook: M) -> Self {
        ModifyResponse { inner, hook }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, M, ReqBody, ResBody> Service<Request<ReqBody>> for ModifyResponse<S, M>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    M: ModifyResponseHook<ResBody> + Clone,
{
    type Response = Response<M::Body>;
    type Error = Error;
    type Future = ResponseFuture<S::Future, M>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(|e| upstream_error(e, ""))
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        ResponseFuture {
            future: self.inner.call(req),
            hook: Some(self.hook.clone()),
        }
    }
}

pin_project! {
    /// Response future of [`ModifyResponse`].
    pub struct ResponseFuture<F, M> {
        #[pin]
        future: F,
        hook: Option<M>,
    }
}

impl<F, M, B, E> Future for ResponseFuture<F, M>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    M: ModifyResponseHook<B>,
{
    type Output = Result<Response<M::Body>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = ready!(this.future.poll(cx)).map_err(|e| upstream_error(e, ""))?;
        let mut hook = this
            .hook
            .take()
            .expect("ResponseFuture polled after completion");
        Poll::Ready(
            hook.modify(res)
                .map_err(|e| hook_error(HookStage::ModifyResponse, e)),
        )
    }
}

impl<F, M> fmt::Debug for ResponseFuture<F, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
