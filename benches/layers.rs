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

criterion_group!(benches, bench_stack);
criterion_main!(benches);
