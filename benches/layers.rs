//! What the full stack (modify-response + load-balance + director) adds per
//! request over calling a no-op inner service directly.
//!
//! The inner service answers at once, so the futures complete on their first
//! poll and no runtime is needed: the figures are the layers' own cost.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use tower::{service_fn, Service};
use tower_lb::{LoadBalancer, Strategy};

#[path = "../tests/support/hot_path.rs"]
mod hot_path;
use hot_path::{full_stack, noop, now, request};

fn bench_stack(c: &mut Criterion) {
    let mut group = c.benchmark_group("stack");
    let mut direct = service_fn(noop);
    group.bench_function("baseline_noop_inner", |b| {
        b.iter_batched(
            request,
            |req| black_box(now(direct.call(req))),
            BatchSize::SmallInput,
        )
    });

    for strategy in [Strategy::RoundRobin, Strategy::consistent_hash()] {
        let lb = LoadBalancer::new(
            strategy,
            [
                "http://10.0.0.1:8080",
                "http://10.0.0.2:8080",
                "http://10.0.0.3:8080",
            ],
        )
        .unwrap();
        let mut stack = full_stack(lb);
        group.bench_function(format!("full_stack_{strategy}"), |b| {
            b.iter_batched(
                request,
                |req| black_box(now(stack.call(req))),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

/// What `NextUpstream` adds when nothing fails, and what buffering a 1 KiB
/// body for replay costs, against the same stack without it, in one group.
fn bench_retry(c: &mut Criterion) {
    use bytes::Bytes;
    use http::{Method, Request, Response};
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
    fn get() -> Request<Full<Bytes>> {
        hot_path::request_with_body(Full::default())
    }
    fn post_1kib() -> Request<Full<Bytes>> {
        static KIB: [u8; 1024] = [b'x'; 1024];
        let mut req = hot_path::request_with_body(Full::new(Bytes::from_static(&KIB)));
        *req.method_mut() = Method::POST;
        req
    }

    let lb = LoadBalancer::new(
        Strategy::RoundRobin,
        [
            "http://10.0.0.1:8080",
            "http://10.0.0.2:8080",
            "http://10.0.0.3:8080",
        ],
    )
    .unwrap();
    let mut group = c.benchmark_group("retry");
    let mut direct = service_fn(noop_any::<Full<Bytes>>);
    group.bench_function("baseline_noop_inner", |b| {
        b.iter_batched(
            get,
            |req| black_box(now(direct.call(req))),
            BatchSize::SmallInput,
        )
    });
    let mut plain = ServiceBuilder::new()
        .layer(ModifyResponseLayer::new(strip_hop_by_hop_response::<()>))
        .layer(LoadBalanceLayer::new(lb.clone()))
        .layer(DirectorLayer::new(ProxyDirector::new()))
        .service_fn(noop_any);
    let mut retrying = ServiceBuilder::new()
        .layer(ModifyResponseLayer::new(strip_hop_by_hop_response::<()>))
        .layer(NextUpstreamLayer::new())
        .layer(LoadBalanceLayer::new(lb.clone()))
        .layer(DirectorLayer::new(ProxyDirector::new()))
        .service_fn(noop_any);
    // The layer's bookkeeping alone: with one try it keeps no copy of the
    // head and no clone of the inner service.
    let mut single_try = ServiceBuilder::new()
        .layer(ModifyResponseLayer::new(strip_hop_by_hop_response::<()>))
        .layer(NextUpstreamLayer::new().tries(1))
        .layer(LoadBalanceLayer::new(lb))
        .layer(DirectorLayer::new(ProxyDirector::new()))
        .service_fn(noop_any);
    group.bench_function("full_stack_next_upstream_tries1_get", |b| {
        b.iter_batched(
            get,
            |req| black_box(now(single_try.call(req))),
            BatchSize::SmallInput,
        )
    });
    for (name, make) in [("get", get as fn() -> _), ("post_1kib", post_1kib)] {
        group.bench_function(format!("full_stack_{name}"), |b| {
            b.iter_batched(
                make,
                |req| black_box(now(plain.call(req))),
                BatchSize::SmallInput,
            )
        });
        group.bench_function(format!("full_stack_next_upstream_{name}"), |b| {
            b.iter_batched(
                make,
                |req| black_box(now(retrying.call(req))),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench_stack, bench_retry);
criterion_main!(benches);
