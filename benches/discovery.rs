//! Criterion benchmarks for membership changes from discovery.
//!
//! Groups:
//!
//! * `rebuild/10000`: one membership change (`LoadBalancer::apply`, an
//!   insert or a remove, alternately) on a set of 10,000 backends of weight
//!   1, for each strategy. Every change rebuilds the snapshot (member list,
//!   id index) and the strategy's balancer. `round_robin`, whose balancer
//!   is built in `O(1)`, is the baseline: what any rebuild costs before a
//!   strategy adds its own work (the consistent-hash ring holds 1,600,000
//!   points here).
//! * `burst/1000`: a deploy that replaces 50 of 1,000 backends (50 removes
//!   and 50 inserts: 100 changes) under consistent hashing, applied as one
//!   batch (`apply_all`: one rebuild) against the same 100 changes applied
//!   one by one (`apply` each: 100 rebuilds). The baseline is
//!   `single_updates`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use tower_lb::{Backend, BackendChange, LoadBalancer, Strategy};

fn backend(i: usize) -> Backend {
    Backend::new(&format!(
        "http://10.{}.{}.{}:8080",
        i >> 16,
        (i >> 8) & 255,
        i & 255
    ))
    .unwrap()
}

fn insert(i: usize) -> BackendChange {
    BackendChange::Insert(format!("backend-{i}"), backend(i))
}

fn remove(i: usize) -> BackendChange {
    BackendChange::Remove(format!("backend-{i}"))
}

fn load_balancer(strategy: Strategy, n: usize) -> LoadBalancer {
    let lb = LoadBalancer::new(strategy, Vec::<Backend>::new()).unwrap();
    lb.apply_all((0..n).map(insert)).unwrap();
    lb
}

fn rebuild(c: &mut Criterion) {
    const N: usize = 10_000;
    let mut group = c.benchmark_group(format!("rebuild/{N}"));
    group.sample_size(10);
    for name in Strategy::NAMES {
        let strategy: Strategy = name.parse().unwrap();
        let lb = load_balancer(strategy, N);
        let mut present = false;
        group.bench_function(name, |b| {
            b.iter(|| {
                let change = if present { remove(N) } else { insert(N) };
                present = !present;
                lb.apply(black_box(change)).unwrap();
            })
        });
    }
    group.finish();
}

fn burst(c: &mut Criterion) {
    const N: usize = 1_000;
    let mut group = c.benchmark_group(format!("burst/{N}"));
    group.sample_size(10);
    // Alternates between replacing backends 0..50 with N..N+50 and back.
    let deploy = |forward: bool| -> Vec<BackendChange> {
        let (old, new) = if forward { (0, N) } else { (N, 0) };
        (old..old + 50)
            .map(remove)
            .chain((new..new + 50).map(insert))
            .collect()
    };
    let lb = load_balancer(Strategy::consistent_hash(), N);
    let mut forward = true;
    group.bench_function("single_updates", |b| {
        b.iter(|| {
            for change in deploy(forward) {
                lb.apply(change).unwrap();
            }
            forward = !forward;
        })
    });
    let lb = load_balancer(Strategy::consistent_hash(), N);
    let mut forward = true;
    group.bench_function("one_batch", |b| {
        b.iter(|| {
            lb.apply_all(deploy(forward)).unwrap();
            forward = !forward;
        })
    });
    group.finish();
}

criterion_group!(benches, rebuild, burst);
criterion_main!(benches);
