//! Heap allocations the full stack adds per request, counted with a counting
//! global allocator (this test binary only).
//!
//! The request arrives as a server hands it over: typical browser headers
//! and the client's address already in the extensions.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::convert::Infallible;
use std::future::{ready, Future, Ready};
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use tower::{service_fn, Service, ServiceBuilder};
use tower_lb::layer::{
    strip_hop_by_hop_response, DirectorLayer, LoadBalanceLayer, ModifyResponseLayer, ProxyDirector,
};
use tower_lb::sticky::ClientAddr;
use tower_lb::{LoadBalancer, Strategy};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; the counter is a thread-local
// `Cell`, which does not allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|a| a.set(a.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|a| a.set(a.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

/// A header value as hyper hands it over: a slice of the connection's
/// shared read buffer, so cloning it only bumps a count. (A value built
/// from a `&str` would allocate on its first clone instead.)
fn shared(value: &'static str) -> HeaderValue {
    HeaderValue::from_maybe_shared(Bytes::from_static(value.as_bytes())).unwrap()
}

fn request() -> Request<()> {
    let mut req = Request::builder()
        .uri("/api/users?page=2")
        .header("host", shared("gateway.example"))
        .header("user-agent", shared("test/1.0"))
        .header("accept", shared("*/*"))
        .header("connection", shared("keep-alive"))
        .body(())
        .unwrap();
    req.extensions_mut()
        .insert(ClientAddr("192.0.2.7:50000".parse().unwrap()));
    req
}

fn noop(_req: Request<()>) -> Ready<Result<Response<()>, Infallible>> {
    ready(Ok(Response::new(())))
}

fn now<F: Future>(f: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(f).poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => unreachable!(),
    }
}

/// Allocations made by one call of `svc`, the request built beforehand.
fn count<S>(svc: &mut S) -> usize
where
    S: Service<Request<()>, Response = Response<()>>,
    S::Error: std::fmt::Debug,
{
    let req = request();
    let before = allocations();
    let res = now(svc.call(req));
    let after = allocations();
    assert!(res.is_ok());
    after - before
}

#[test]
fn the_full_stack_allocates_only_for_header_edits_and_the_pick_extension() {
    let mut direct = service_fn(noop);
    let lb = LoadBalancer::new(
        Strategy::RoundRobin,
        ["http://10.0.0.1:8080", "http://10.0.0.2:8080"],
    )
    .unwrap();
    let mut stack = ServiceBuilder::new()
        .layer(ModifyResponseLayer::new(strip_hop_by_hop_response::<()>))
        .layer(LoadBalanceLayer::new(lb))
        .layer(DirectorLayer::new(ProxyDirector::new()))
        .service_fn(noop);
    // Warm up (thread-locals, first-use initialisation).
    count(&mut direct);
    count(&mut stack);

    let base = count(&mut direct);
    let added = count(&mut stack) - base;
    // What the stack allocates per request, and nothing else:
    // 1. the boxed `Member` extension (http's extensions box each value);
    // 2. the X-Forwarded-For line (one String of exact size, which the
    //    HeaderValue takes over without copying).
    assert_eq!(added, 2, "the stack added {added} allocations per request");
    println!("allocations per request: direct {base}, stack adds {added}");
}
