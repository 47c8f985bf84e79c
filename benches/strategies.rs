//! Criterion benchmarks for the strategies.
//!
//! Groups (one table row per group, one column per function):
//!
//! * `pick/{n}` for n = 3, 100, 1000, 10000 backends (weights 1..=5
//!   cycling), one thread: `baseline_atomic_mod` (a bare `AtomicUsize`
//!   `fetch_add(1) % n` indexing a `Vec`, the floor any rotation pays),
//!   `random`, `least_request` (power of two choices over backends of
//!   equal weight, every count 0) and `least_request_weighted` (the same
//!   over weights 1..=5), `round_robin`, `weighted_round_robin`, `consistent_hash`
//!   (16-byte keys, a different one each iteration from 1024 precomputed),
//!   `siphash_key_only` (just hashing that key: the floor for a keyed
//!   lookup), and `load_balancer_round_robin` / `load_balancer_consistent_hash`
//!   (the same picks through [`LoadBalancer::pick`]: read lock, snapshot,
//!   `Member` clone), and `load_balancer_round_robin_borrowed` (the pick
//!   through [`LoadBalancer::pick_with`], reading whether the member is
//!   up by reference: no `Member` clone).
//! * `pick_2threads/{n}`: the same balancers with two threads picking at
//!   once from one shared balancer. The time reported is **per pick per
//!   thread**: each thread does `iters` picks after a common start barrier,
//!   and the slower thread's elapsed time is returned (thread spawning is
//!   not timed). Aggregate throughput is two picks per reported time.
//! * `build/1000`: building each balancer for 1,000 backends: the ring with
//!   the default 160 virtual nodes per unit of weight, for weight 1
//!   (`consistent_hash`, 160,000 points) and weights 1..=5
//!   (`consistent_hash_weights_1_to_5`, 480,000 points); and
//!   `load_balancer_mark_down_up_consistent_hash` (two updates, each a
//!   snapshot swap; the ring is shared, not rebuilt, as its layout is
//!   unchanged).
//!
//! * `hash_pick/{n}` for n = 10, 100, 1000 backends of weight 1: the
//!   consistent-hash family side by side, one thread, the same 16-byte
//!   keys: `consistent_hash` (the ring, 160 points a backend, the
//!   baseline), `maglev` (65,537 slots), `bounded_load` (over the ring,
//!   ε = 0.25) and `maglev_bounded_load`, the bounded ones over a
//!   `LoadBalancer`'s members (the in-flight total read in `O(1)`) with
//!   every backend idle.
//! * `hash_build/{n}`: building the ring and the Maglev table for n
//!   backends (no sharing: each build is dropped before the next).
//! * `in_flight`: `Load::start` and dropping the guard, for a member built
//!   by hand (`unpooled`) and for a `LoadBalancer`'s member, whose count
//!   also goes into the balancer's total (`pooled`).
//!
//! Ring memory cannot be measured by criterion; it is printed to stderr
//! (from `ConsistentHash::heap_bytes`) before the `build` group runs.

use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use tower_lb::{
    Backend, Balancer, BoundedLoad, ConsistentHash, LeastRequest, Load, LoadBalancer, Maglev,
    Member, Random, RoundRobin, Strategy, WeightedRoundRobin,
};

const SIZES: [usize; 4] = [3, 100, 1_000, 10_000];
const KEYS: usize = 1024;

fn backend(i: usize, weight: u32) -> Backend {
    Backend::new(&format!(
        "http://10.{}.{}.{}:8080",
        i >> 16,
        (i >> 8) & 255,
        i & 255
    ))
    .unwrap()
    .with_weight(weight)
    .unwrap()
}

/// `n` backends with weights 1, 2, 3, 4, 5, 1, 2, ...
fn backends(n: usize) -> Vec<Backend> {
    (0..n).map(|i| backend(i, 1 + (i % 5) as u32)).collect()
}

fn members(n: usize) -> Vec<Member> {
    backends(n).into_iter().map(Member::new).collect()
}

/// 1024 pseudo-random 16-byte keys (SplitMix64), the same on every run.
fn keys() -> Vec<[u8; 16]> {
    let mut state = 0x5eed_u64;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    (0..KEYS)
        .map(|_| {
            let mut key = [0u8; 16];
            key[..8].copy_from_slice(&next().to_le_bytes());
            key[8..].copy_from_slice(&next().to_le_bytes());
            key
        })
        .collect()
}

/// The floor for any shared rotation: one relaxed `fetch_add`, a modulo
/// and an index, as `RoundRobin` does without the empty-set check.
struct Baseline {
    next: AtomicUsize,
    up: Vec<u32>,
}

impl Baseline {
    fn new(n: usize) -> Self {
        Baseline {
            next: AtomicUsize::new(0),
            up: (0..n as u32).collect(),
        }
    }

    #[inline]
    fn pick(&self) -> usize {
        self.up[self.next.fetch_add(1, Ordering::Relaxed) % self.up.len()] as usize
    }
}

/// Everything picked from, built once per size.
struct Fixture {
    baseline: Baseline,
    random: Random,
    least_request: LeastRequest,
    least_request_weighted: LeastRequest,
    round_robin: RoundRobin,
    weighted_round_robin: WeightedRoundRobin,
    consistent_hash: ConsistentHash,
    lb_round_robin: LoadBalancer,
    lb_consistent_hash: LoadBalancer,
    keys: Vec<[u8; 16]>,
}

impl Fixture {
    fn new(n: usize) -> Self {
        let members = members(n);
        Fixture {
            baseline: Baseline::new(n),
            random: Random::new(&members),
            least_request: LeastRequest::new(
                &(0..n)
                    .map(|i| Member::new(backend(i, 1)))
                    .collect::<Vec<_>>(),
            ),
            least_request_weighted: LeastRequest::new(&members),
            round_robin: RoundRobin::new(&members),
            weighted_round_robin: WeightedRoundRobin::new(&members),
            consistent_hash: ConsistentHash::new(&members).unwrap(),
            lb_round_robin: LoadBalancer::new(Strategy::RoundRobin, backends(n)).unwrap(),
            lb_consistent_hash: LoadBalancer::new(Strategy::consistent_hash(), backends(n))
                .unwrap(),
            keys: keys(),
        }
    }
}

fn pick_single_thread(c: &mut Criterion) {
    for n in SIZES {
        let f = Fixture::new(n);
        let mut group = c.benchmark_group(format!("pick/{n}"));
        group.bench_function("baseline_atomic_mod", |b| {
            b.iter(|| black_box(f.baseline.pick()))
        });
        group.bench_function("random", |b| {
            b.iter(|| black_box(f.random.pick(black_box(None))))
        });
        group.bench_function("least_request", |b| {
            b.iter(|| black_box(f.least_request.pick(black_box(None))))
        });
        group.bench_function("least_request_weighted", |b| {
            b.iter(|| black_box(f.least_request_weighted.pick(black_box(None))))
        });
        group.bench_function("round_robin", |b| {
            b.iter(|| black_box(f.round_robin.pick(black_box(None))))
        });
        group.bench_function("weighted_round_robin", |b| {
            b.iter(|| black_box(f.weighted_round_robin.pick(black_box(None))))
        });
        group.bench_function("consistent_hash", |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % KEYS;
                black_box(f.consistent_hash.pick(Some(black_box(&f.keys[i]))))
            })
        });
        group.bench_function("siphash_key_only", |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % KEYS;
                black_box(ConsistentHash::hash_key(black_box(&f.keys[i])))
            })
        });
        group.bench_function("load_balancer_round_robin", |b| {
            b.iter(|| black_box(f.lb_round_robin.pick(black_box(None))))
        });
        group.bench_function("load_balancer_consistent_hash", |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % KEYS;
                black_box(f.lb_consistent_hash.pick(Some(black_box(&f.keys[i]))))
            })
        });
        group.bench_function("load_balancer_round_robin_borrowed", |b| {
            b.iter(|| black_box(f.lb_round_robin.pick_with(black_box(None), |m| m.is_up())))
        });
        group.finish();
    }
}

/// Runs `pick(thread, iteration)` `iters` times on each of two threads that
/// start together; returns the slower thread's elapsed time.
fn two_threads(iters: u64, pick: impl Fn(usize, u64) + Sync) -> Duration {
    let start = Barrier::new(2);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..2)
            .map(|t| {
                let (start, pick) = (&start, &pick);
                scope.spawn(move || {
                    start.wait();
                    let began = Instant::now();
                    for i in 0..iters {
                        pick(t, i);
                    }
                    began.elapsed()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap())
            .max()
            .unwrap()
    })
}

fn pick_two_threads(c: &mut Criterion) {
    for n in SIZES {
        let f = Fixture::new(n);
        let key = |t: usize, i: u64| &f.keys[(i as usize + t * KEYS / 2) % KEYS];
        let mut group = c.benchmark_group(format!("pick_2threads/{n}"));
        group.bench_function("baseline_atomic_mod", |b| {
            b.iter_custom(|iters| {
                two_threads(iters, |_, _| {
                    black_box(f.baseline.pick());
                })
            })
        });
        group.bench_function("random", |b| {
            b.iter_custom(|iters| {
                two_threads(iters, |_, _| {
                    let _ = black_box(f.random.pick(black_box(None)));
                })
            })
        });
        group.bench_function("round_robin", |b| {
            b.iter_custom(|iters| {
                two_threads(iters, |_, _| {
                    let _ = black_box(f.round_robin.pick(black_box(None)));
                })
            })
        });
        group.bench_function("weighted_round_robin", |b| {
            b.iter_custom(|iters| {
                two_threads(iters, |_, _| {
                    let _ = black_box(f.weighted_round_robin.pick(black_box(None)));
                })
            })
        });
        group.bench_function("consistent_hash", |b| {
            b.iter_custom(|iters| {
                two_threads(iters, |t, i| {
                    let _ = black_box(f.consistent_hash.pick(Some(black_box(key(t, i)))));
                })
            })
        });
        group.bench_function("load_balancer_round_robin", |b| {
            b.iter_custom(|iters| {
                two_threads(iters, |_, _| {
                    let _ = black_box(f.lb_round_robin.pick(black_box(None)));
                })
            })
        });
        group.finish();
    }
}

/// Prints the ring's memory for a few sizes (criterion measures time only).
fn print_ring_memory() {
    for weight in [1u32, 3] {
        for n in [100usize, 1_000, 10_000] {
            let members: Vec<Member> = (0..n).map(|i| Member::new(backend(i, weight))).collect();
            let ring = ConsistentHash::new(&members).unwrap();
            eprintln!(
                "ring memory: {n} backends of weight {weight}: {} points, {} heap bytes, {:.0} bytes per backend, {:.1} bytes per point",
                ring.points(),
                ring.heap_bytes(),
                ring.heap_bytes() as f64 / n as f64,
                ring.heap_bytes() as f64 / ring.points() as f64,
            );
        }
    }
}

fn build(c: &mut Criterion) {
    print_ring_memory();
    let n = 1_000;
    let members = members(n);
    let unit: Vec<Member> = (0..n).map(|i| Member::new(backend(i, 1))).collect();
    let mut group = c.benchmark_group(format!("build/{n}"));
    group.bench_function("consistent_hash", |b| {
        b.iter(|| black_box(ConsistentHash::new(black_box(&unit)).unwrap()))
    });
    group.bench_function("consistent_hash_weights_1_to_5", |b| {
        b.iter(|| black_box(ConsistentHash::new(black_box(&members)).unwrap()))
    });
    group.bench_function("weighted_round_robin", |b| {
        b.iter(|| black_box(WeightedRoundRobin::new(black_box(&members))))
    });
    group.bench_function("round_robin", |b| {
        b.iter(|| black_box(RoundRobin::new(black_box(&members))))
    });
    let lb = LoadBalancer::new(Strategy::consistent_hash(), backends(n)).unwrap();
    let id = lb.members()[n / 2].id().to_owned();
    group.bench_function("load_balancer_mark_down_up_consistent_hash", |b| {
        b.iter(|| {
            lb.mark_down(&id).unwrap();
            lb.mark_up(&id).unwrap();
        })
    });
    group.finish();
}

/// The CPU time this thread has used: on a shared machine, time spent
/// descheduled does not count.
fn thread_cpu_time() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid, writable timespec; the call only writes it.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// The ring as 0.1.0 built it, step for step, as the baseline of
/// `ring_build`: every point hashed from scratch (the id re-hashed for each
/// of its points), a comparison sort with ties broken by id, then the
/// positions, owners, lookup table and layout.
#[allow(clippy::type_complexity)]
fn ring_before(members: &[Member]) -> (Vec<u64>, Vec<u32>, Vec<u32>, Vec<(Box<str>, u32)>) {
    use std::hash::Hasher;
    let (k0, k1) = tower_lb::strategy::consistent_hash::RING_HASH_KEYS;
    let vnodes = tower_lb::strategy::consistent_hash::DEFAULT_VNODES;
    let points: usize = members
        .iter()
        .map(|m| (m.backend().weight() * vnodes) as usize)
        .sum();
    let mut ring: Vec<(u64, u32)> = Vec::with_capacity(points);
    for (index, member) in members.iter().enumerate() {
        let id = member.backend().id().as_bytes();
        for replica in 0..member.backend().weight() * vnodes {
            let mut h = siphasher::sip::SipHasher13::new_with_keys(k0, k1);
            h.write(&(id.len() as u64).to_le_bytes());
            h.write(id);
            h.write(&replica.to_le_bytes());
            ring.push((h.finish(), index as u32));
        }
    }
    ring.sort_unstable_by(|a, b| {
        a.0.cmp(&b.0).then_with(|| {
            members[a.1 as usize]
                .backend()
                .id()
                .cmp(members[b.1 as usize].backend().id())
        })
    });
    let (hashes, owners): (Vec<u64>, Vec<u32>) = ring.into_iter().unzip();
    let bits = (hashes.len().max(1).next_power_of_two().trailing_zeros()).clamp(4, 20);
    let shift = 64 - bits;
    let mut table = Vec::with_capacity((1 << bits) + 1);
    let mut pos = 0;
    for bucket in 0..(1u64 << bits) {
        while pos < hashes.len() && (hashes[pos] >> shift) < bucket {
            pos += 1;
        }
        table.push(pos as u32);
    }
    table.push(hashes.len() as u32);
    let layout = members
        .iter()
        .map(|m| (Box::from(m.backend().id()), m.backend().weight()))
        .collect();
    (hashes, owners, table, layout)
}

/// Building the ring for 1,000 backends of weight 1 (160,000 points), in
/// thread CPU time: `before` (the 0.1.0 algorithm, [`ring_before`]) and
/// `consistent_hash` (`ConsistentHash::new`, each ring dropped before the
/// next is built, so none is shared).
fn ring_build(c: &mut Criterion) {
    let n = 1_000;
    let unit: Vec<Member> = (0..n).map(|i| Member::new(backend(i, 1))).collect();
    let mut group = c.benchmark_group(format!("ring_build_cpu/{n}"));
    group.bench_function("before", |b| {
        b.iter_custom(|iters| {
            let start = thread_cpu_time();
            for _ in 0..iters {
                black_box(ring_before(black_box(&unit)));
            }
            thread_cpu_time() - start
        })
    });
    group.bench_function("consistent_hash", |b| {
        b.iter_custom(|iters| {
            let start = thread_cpu_time();
            for _ in 0..iters {
                black_box(ConsistentHash::new(black_box(&unit)).unwrap());
            }
            thread_cpu_time() - start
        })
    });
    // Pingora's ring (pingora-ketama's `Continuum`: 160 CRC32 points per
    // unit of weight, 32-bit positions, one comparison sort) over the same
    // number of backends, measured the same way.
    let buckets: Vec<pingora_ketama::Bucket> = (0..n)
        .map(|i| {
            let addr =
                std::net::SocketAddr::from(([10, (i / 250) as u8, (i % 250) as u8, 1], 8080));
            pingora_ketama::Bucket::new(addr, 1)
        })
        .collect();
    group.bench_function("pingora_ketama", |b| {
        b.iter_custom(|iters| {
            let start = thread_cpu_time();
            for _ in 0..iters {
                black_box(pingora_ketama::Continuum::new(black_box(&buckets)));
            }
            thread_cpu_time() - start
        })
    });
    group.finish();
}

const HASH_SIZES: [usize; 3] = [10, 100, 1_000];

fn unit_backends(n: usize) -> Vec<Backend> {
    (0..n).map(|i| backend(i, 1)).collect()
}

fn hash_pick(c: &mut Criterion) {
    let keys = keys();
    for n in HASH_SIZES {
        let members: Vec<Member> = unit_backends(n).into_iter().map(Member::new).collect();
        let ring = ConsistentHash::new(&members).unwrap();
        let maglev = Maglev::new(&members).unwrap();
        let lb = LoadBalancer::new(Strategy::consistent_hash(), unit_backends(n)).unwrap();
        let pooled = lb.members();
        let bounded = BoundedLoad::new(&pooled).unwrap();
        let maglev_bounded = BoundedLoad::maglev(&pooled, 65_537, 125).unwrap();
        let mut group = c.benchmark_group(format!("hash_pick/{n}"));
        let mut run = |name: &str, balancer: &dyn Balancer| {
            group.bench_function(name, |b| {
                let mut i = 0;
                b.iter(|| {
                    i = (i + 1) % KEYS;
                    black_box(balancer.pick(Some(black_box(&keys[i]))))
                })
            });
        };
        run("consistent_hash", &ring);
        run("maglev", &maglev);
        run("bounded_load", &bounded);
        run("maglev_bounded_load", &maglev_bounded);
        group.finish();
    }
}

fn hash_build(c: &mut Criterion) {
    for n in HASH_SIZES {
        let members: Vec<Member> = unit_backends(n).into_iter().map(Member::new).collect();
        let mut group = c.benchmark_group(format!("hash_build/{n}"));
        group.bench_function("consistent_hash", |b| {
            b.iter(|| black_box(ConsistentHash::new(black_box(&members)).unwrap()))
        });
        group.bench_function("maglev", |b| {
            b.iter(|| black_box(Maglev::new(black_box(&members)).unwrap()))
        });
        group.finish();
    }
}

fn in_flight(c: &mut Criterion) {
    let unpooled = Member::new(backend(0, 1));
    let lb = LoadBalancer::new(Strategy::RoundRobin, unit_backends(2)).unwrap();
    let pooled = lb.members().remove(0);
    let mut group = c.benchmark_group("in_flight");
    group.bench_function("unpooled", |b| {
        b.iter(|| drop(black_box(Load::start(unpooled.load()))))
    });
    group.bench_function("pooled", |b| {
        b.iter(|| drop(black_box(Load::start(pooled.load()))))
    });
    group.finish();
}

criterion_group!(
    benches,
    pick_single_thread,
    pick_two_threads,
    build,
    ring_build
);
criterion_group!(hash_family, hash_pick, hash_build, in_flight);
criterion_main!(benches, hash_family);
