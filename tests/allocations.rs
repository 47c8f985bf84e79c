//! Heap allocations the full stack adds per request, counted with a counting
//! global allocator (this test binary only).
//!
//! The request arrives as a server hands it over: typical browser headers
//! and the client's address already in the extensions.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use http::{Request, Response};
use tower::{service_fn, Service};
use tower_lb::{LoadBalancer, Strategy};

#[path = "support/hot_path.rs"]
mod hot_path;
use hot_path::{full_stack, noop, now, request};

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
    let mut stack = full_stack(lb);
    // Warm up (thread-locals, first-use initialisation).
    count(&mut direct);
    count(&mut stack);

    let base = count(&mut direct);
    let added = count(&mut stack) - base;
    // What the stack allocates per request, and nothing else:
    // 1. the boxed `Member` extension (http's extensions box each value);
    // 2. to 4. the response's `PickedBackend` extension: the response's
    //    extension map (absent until then: its box and its table) and the
    //    boxed value.
    // The X-Forwarded-For value is none: the same client's, made on the
    // warm-up request, is shared (a count on its bytes).
    assert_eq!(added, 4, "the stack added {added} allocations per request");
    println!("allocations per request: direct {base}, stack adds {added}");
}

#[test]
fn verifying_a_sticky_cookie_allocates_only_for_ids_longer_than_the_inline_room() {
    use http::HeaderMap;
    use tower_lb::sticky::{Secret, Secrets, StickyCookie, INLINE_ID_LEN};

    let secrets = Secrets::new(Secret::generate().unwrap());
    let sticky = StickyCookie::new("lb", secrets.clone())
        .unwrap()
        .max_age(std::time::Duration::from_secs(3600))
        .unwrap();
    let headers_for = |id: &str| {
        let set = sticky.set_cookie(id).unwrap();
        let pair = set.to_str().unwrap().split(';').next().unwrap().to_owned();
        let mut h = HeaderMap::new();
        h.insert(
            "cookie",
            format!("_ga=GA1.2.3; theme=dark; {pair}; lang=fr")
                .parse()
                .unwrap(),
        );
        h
    };
    let verify_allocations = |headers: &HeaderMap, id: &str| {
        // Warm up the clock's per-thread cache first.
        assert_eq!(sticky.verify(headers).unwrap().id(), id);
        let before = allocations();
        let verified = sticky.verify(headers);
        let after = allocations();
        assert_eq!(verified.unwrap().id(), id);
        after - before
    };
    let short = "10.0.0.1:8080";
    let inline = "x".repeat(INLINE_ID_LEN);
    let long = "x".repeat(INLINE_ID_LEN + 1);
    assert_eq!(verify_allocations(&headers_for(short), short), 0);
    assert_eq!(verify_allocations(&headers_for(&inline), &inline), 0);
    assert_eq!(verify_allocations(&headers_for(&long), &long), 1);
    // After a rotation, once the thread has picked up the new keys,
    // cookies made with the previous secret verify without allocating too.
    let before_rotation = headers_for(short);
    secrets.rotate(Secret::generate().unwrap()).unwrap();
    assert_eq!(verify_allocations(&before_rotation, short), 0);
    assert_eq!(verify_allocations(&headers_for(short), short), 0);
}

#[test]
fn next_upstream_allocates_only_for_the_copy_it_keeps_for_a_retry() {
    use bytes::Bytes;
    use http_body_util::Full;
    use std::convert::Infallible;
    use std::future::{ready, Ready};
    use tower::ServiceBuilder;
    use tower_lb::layer::{
        strip_hop_by_hop_response, DirectorLayer, LoadBalanceLayer, ModifyResponseLayer,
        NextUpstreamLayer, ProxyDirector,
    };

    fn noop_any<B>(_req: Request<B>) -> Ready<Result<Response<()>, Infallible>> {
        ready(Ok(Response::new(())))
    }
    fn count_with<S>(svc: &mut S, body: Full<Bytes>) -> usize
    where
        S: Service<Request<Full<Bytes>>, Response = Response<()>>,
        S::Error: std::fmt::Debug,
    {
        let req = hot_path::request_with_body(body);
        let before = allocations();
        let res = now(svc.call(req));
        let after = allocations();
        assert!(res.is_ok());
        after - before
    }
    let lb = LoadBalancer::new(
        Strategy::RoundRobin,
        ["http://10.0.0.1:8080", "http://10.0.0.2:8080"],
    )
    .unwrap();
    let mut plain = ServiceBuilder::new()
        .layer(ModifyResponseLayer::new(strip_hop_by_hop_response::<()>))
        .layer(LoadBalanceLayer::new(lb.clone()))
        .layer(DirectorLayer::new(ProxyDirector::new()))
        .service_fn(noop_any);
    let mut retrying = ServiceBuilder::new()
        .layer(ModifyResponseLayer::new(strip_hop_by_hop_response::<()>))
        .layer(NextUpstreamLayer::new())
        .layer(LoadBalanceLayer::new(lb))
        .layer(DirectorLayer::new(ProxyDirector::new()))
        .service_fn(noop_any);
    let kib = || Full::new(Bytes::from_static(&[b'x'; 1024]));
    count_with(&mut plain, Full::default());
    count_with(&mut retrying, Full::default());
    let get = count_with(&mut retrying, Full::default()) - count_with(&mut plain, Full::default());
    let post = count_with(&mut retrying, kib()) - count_with(&mut plain, kib());
    println!("NextUpstream adds {get} allocations to a GET, {post} to a 1 KiB POST");
    // The kept copy of the head: the header fields (one list) and the path
    // (its bytes become shared on the first clone). The extensions, only the
    // client's address and the layer's own marker here, are kept as the
    // address alone and rebuilt for a retry, with no copy of the map.
    assert_eq!(get, 2, "NextUpstream added {get} allocations to a GET");
    // Buffering a body of one chunk allocates two more, both boxes that
    // keep every GET's future and request small: the reading state, and
    // the attempt's replayed body (the chunk itself goes by refcount).
    assert_eq!(
        post,
        get + 2,
        "NextUpstream added {post} allocations to a POST"
    );

    // A request no retry could replay keeps no copy: a body streamed past
    // the buffer limit, or retries turned off.
    let lb = LoadBalancer::new(Strategy::RoundRobin, ["http://10.0.0.1:8080"]).unwrap();
    let mut plain = ServiceBuilder::new()
        .layer(ModifyResponseLayer::new(strip_hop_by_hop_response::<()>))
        .layer(LoadBalanceLayer::new(lb.clone()))
        .layer(DirectorLayer::new(ProxyDirector::new()))
        .service_fn(noop_any);
    let stack = |layer: NextUpstreamLayer| {
        ServiceBuilder::new()
            .layer(ModifyResponseLayer::new(strip_hop_by_hop_response::<()>))
            .layer(layer)
            .layer(LoadBalanceLayer::new(lb.clone()))
            .layer(DirectorLayer::new(ProxyDirector::new()))
            .service_fn(noop_any)
    };
    let mut streaming = stack(NextUpstreamLayer::new().buffer_limit(512));
    let mut single_try = stack(NextUpstreamLayer::new().tries(1));
    count_with(&mut plain, kib());
    count_with(&mut streaming, kib());
    count_with(&mut single_try, Full::default());
    let streamed = count_with(&mut streaming, kib()) - count_with(&mut plain, kib());
    let untried =
        count_with(&mut single_try, Full::default()) - count_with(&mut plain, Full::default());
    assert_eq!(streamed, 0, "a streamed body cost {streamed} allocations");
    assert_eq!(untried, 0, "tries(1) cost {untried} allocations");
}
