//! What the full stack (modify-response + load-balance + director) adds per
//! request over calling a no-op inner service directly.
//!
//! The inner service answers at once, so the futures complete on their first
//! poll and no runtime is needed: the figures are the layers' own cost.

use std::convert::Infallible;
use std::future::{ready, Future, Ready};
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::{HeaderValue, Request, Response};
use tower::{service_fn, Service, ServiceBuilder};
use tower_lb::layer::{
    strip_hop_by_hop_response, DirectorLayer, LoadBalanceLayer, ModifyResponseLayer, ProxyDirector,
};
use tower_lb::sticky::ClientAddr;
use tower_lb::{LoadBalancer, Strategy};

/// A header value as hyper hands it over: a slice of a shared buffer.
fn shared(value: &'static str) -> HeaderValue {
    HeaderValue::from_maybe_shared(Bytes::from_static(value.as_bytes())).unwrap()
}

fn request() -> Request<()> {
    let mut req = Request::builder()
        .uri("/api/users?page=2")
        .header("host", shared("gateway.example"))
        .header("user-agent", shared("bench/1.0"))
        .header("accept", shared("*/*"))
        .header("connection", shared("keep-alive"))
        .body(())
        .unwrap();
    // The server puts the peer address in the extensions in any case.
    req.extensions_mut()
        .insert(ClientAddr("192.0.2.7:50000".parse().unwrap()));
    req
}

fn noop(_req: Request<()>) -> Ready<Result<Response<()>, Infallible>> {
    ready(Ok(Response::new(())))
}

/// Polls a future that is ready at once.
fn now<F: Future>(f: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(f).poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => unreachable!("the inner service answers at once"),
    }
}

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
        let mut stack = ServiceBuilder::new()
            .layer(ModifyResponseLayer::new(strip_hop_by_hop_response::<()>))
            .layer(LoadBalanceLayer::new(lb))
            .layer(DirectorLayer::new(ProxyDirector::new()))
            .service_fn(noop);
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

criterion_group!(benches, bench_stack);
criterion_main!(benches);
