//! The request, inner service and poller that `tests/allocations.rs` and
//! `benches/layers.rs` both measure the full stack with.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::{ready, Future, Ready};
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use tower::ServiceBuilder;
use tower_lb::layer::{
    strip_hop_by_hop_response, DirectorLayer, LoadBalanceLayer, ModifyResponseLayer, ProxyDirector,
};
use tower_lb::sticky::ClientAddr;
use tower_lb::{Error, LoadBalancer};

/// A header value as hyper hands it over: a slice of the connection's shared
/// read buffer, so cloning it only bumps a count (a value built from a
/// `&str` would allocate on its first clone instead).
pub fn shared(value: &'static str) -> HeaderValue {
    HeaderValue::from_maybe_shared(Bytes::from_static(value.as_bytes())).unwrap()
}

/// A request as a server hands it over: typical browser headers, and the
/// client's address already in the extensions.
pub fn request() -> Request<()> {
    request_with_body(())
}

/// [`request`] with a body.
pub fn request_with_body<B>(body: B) -> Request<B> {
    let mut req = Request::builder()
        .uri("/api/users?page=2")
        .header("host", shared("gateway.example"))
        .header("user-agent", shared("client/1.0"))
        .header("accept", shared("*/*"))
        .header("connection", shared("keep-alive"))
        .body(body)
        .unwrap();
    req.extensions_mut()
        .insert(ClientAddr("192.0.2.7:50000".parse().unwrap()));
    req
}

/// The no-op inner service: answers at once.
pub fn noop(_req: Request<()>) -> Ready<Result<Response<()>, Infallible>> {
    ready(Ok(Response::new(())))
}

/// The full stack over [`noop`], in the natural order.
pub fn full_stack(
    lb: LoadBalancer,
) -> impl tower::Service<Request<()>, Response = Response<()>, Error = Error> {
    ServiceBuilder::new()
        .layer(ModifyResponseLayer::new(strip_hop_by_hop_response::<()>))
        .layer(LoadBalanceLayer::new(lb))
        .layer(DirectorLayer::new(ProxyDirector::new()))
        .service_fn(noop)
}

/// Polls a future that is ready at once (no runtime needed).
pub fn now<F: Future>(f: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(f).poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => unreachable!("the inner service answers at once"),
    }
}
