//! What health tracking costs.
//!
//! * `health_pick/100`: picks over 100 backends (weights 1..=5 cycling)
//!   through `LoadBalancer::pick`, with health off (`*_health_off`, the
//!   baseline) and with passive ejection on and every tenth backend ejected
//!   (`*_10pct_ejected`): a pick that lands on an ejected backend takes the
//!   slow path (lock, clock, redraw or failover walk).
//! * `in_flight_body`: one request through `LoadBalance` over an inner
//!   service answering a 5-byte body, the body then read to its end:
//!   `baseline_count_until_head` (the request stops counting at the
//!   response head) against `count_until_body_ends`
//!   (`count_until_exchange_ends` + `InFlightBodyLayer`).

use std::convert::Infallible;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use tower::{Service, ServiceBuilder};
use tower_lb::health::{HealthPolicy, ManualClock};
use tower_lb::layer::{InFlightBodyLayer, LoadBalanceLayer};
use tower_lb::{Backend, LoadBalancer, Outcome, Strategy};

fn backends(n: usize) -> Vec<Backend> {
    (0..n)
        .map(|i| {
            Backend::new(&format!("http://10.3.{}.{}:8080", i >> 8, i & 255))
                .unwrap()
                .with_weight(1 + (i % 5) as u32)
                .unwrap()
        })
        .collect()
}

fn pick(c: &mut Criterion) {
    let n = 100;
    let keys: Vec<[u8; 16]> = (0..1024u128).map(|k| k.to_le_bytes()).collect();
    let mut group = c.benchmark_group(format!("health_pick/{n}"));
    for strategy in [
        Strategy::RoundRobin,
        Strategy::WeightedRoundRobin,
        Strategy::Random,
        Strategy::consistent_hash(),
    ] {
        let off = LoadBalancer::new(strategy, backends(n)).unwrap();
        let on = LoadBalancer::new(strategy, backends(n))
            .unwrap()
            .with_health_policy(HealthPolicy::default().clock(ManualClock::new()));
        for m in on.members().iter().step_by(10) {
            on.report(m, Outcome::Failure);
        }
        let keyed = matches!(strategy, Strategy::ConsistentHash { .. });
        for (name, lb) in [("health_off", &off), ("10pct_ejected", &on)] {
            let mut i = 0usize;
            group.bench_function(format!("{strategy}_{name}"), |b| {
                b.iter(|| {
                    i = i.wrapping_add(1);
                    let key = keyed.then(|| &keys[i % keys.len()][..]);
                    black_box(lb.pick(black_box(key)).unwrap())
                })
            });
        }
    }
    group.finish();
}

fn now<F: std::future::Future>(f: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(f).poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => unreachable!("the inner service answers at once"),
    }
}

/// Reads a body that is ready at once to its end.
fn drain<B: Body>(body: B) {
    let mut cx = Context::from_waker(Waker::noop());
    let mut body = pin!(body);
    while let Poll::Ready(Some(frame)) = body.as_mut().poll_frame(&mut cx) {
        black_box(frame.ok());
    }
}

fn in_flight_body(c: &mut Criterion) {
    let mut group = c.benchmark_group("in_flight_body");
    let inner = || {
        tower::service_fn(|_req: Request<()>| {
            std::future::ready(Ok::<_, Infallible>(Response::new(Full::new(
                Bytes::from_static(b"hello"),
            ))))
        })
    };
    let lb =
        LoadBalancer::new(Strategy::RoundRobin, ["http://10.0.0.1", "http://10.0.0.2"]).unwrap();
    let mut head = ServiceBuilder::new()
        .layer(LoadBalanceLayer::new(lb.clone()))
        .service(inner());
    group.bench_function("baseline_count_until_head", |b| {
        b.iter(|| drain(now(head.call(Request::new(()))).unwrap().into_body()))
    });
    let mut body = ServiceBuilder::new()
        .layer(InFlightBodyLayer::new())
        .layer(LoadBalanceLayer::new(lb).count_until_exchange_ends())
        .service(inner());
    group.bench_function("count_until_body_ends", |b| {
        b.iter(|| drain(now(body.call(Request::new(()))).unwrap().into_body()))
    });
    group.finish();
}

criterion_group!(benches, pick, in_flight_body);
criterion_main!(benches);
