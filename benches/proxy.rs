//! The proxy path over real loopback sockets, in one process on one thread
//! (a current-thread tokio runtime): a keep-alive client's GET straight to
//! a backend (the baseline), and through the gateway example's stack
//! (`tower_lb::proxy::serve` with `LoadBalance`, `ResponseTimeout`,
//! `ProxyDirector` over `WorkerUpstream`), without and with `NextUpstream`.
//!
//! What the proxy adds is `proxy − direct`; what retries add when nothing
//! fails is `proxy_next_upstream − proxy`, read as a share of what the
//! whole proxy adds (issue 11's measure). Every request crosses the kernel's
//! loopback twice more through the proxy, so these are the figures a
//! deployment pays, where `benches/layers.rs` isolates the layers' own cost
//! over a no-op inner service.
//!
//! `TOWER_LB_BENCH_REQUESTS=N TOWER_LB_BENCH_TARGET=proxy` skips criterion
//! and sends N requests to that one target, for instruction counts under
//! valgrind (run two values of N and subtract: the set-up cancels out).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tower::ServiceBuilder;
use tower_lb::layer::{
    DirectorLayer, LoadBalanceLayer, NextUpstreamLayer, ProxyDirector, ResponseTimeoutLayer,
};
use tower_lb::proxy::{serve, TimerPool, WorkerUpstream};
use tower_lb::{Backend, LoadBalancer, Strategy};

/// A backend answering every request with a short text, as the nginx
/// backends of `scripts/proxy-vs-nginx.sh` do.
async fn backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            stream.set_nodelay(true).unwrap();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"backend\n"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// The gateway's stack over two backends, round robin, served on a
/// loopback port; with `retries`, `NextUpstream` as the gateway sets it up
/// (3 tries, 502/503/504, a 10 s budget).
async fn proxy(backends: [SocketAddr; 2], retries: bool) -> SocketAddr {
    let members = backends
        .iter()
        .map(|addr| Backend::new(&format!("http://{addr}")).unwrap())
        .collect::<Vec<_>>();
    let lb = LoadBalancer::new(Strategy::RoundRobin, members).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let inner = ServiceBuilder::new()
        .layer(LoadBalanceLayer::new(lb))
        .layer(ResponseTimeoutLayer::new(
            Duration::from_secs(30),
            TimerPool,
        ))
        .layer(DirectorLayer::new(ProxyDirector::new()));
    if retries {
        let retry = NextUpstreamLayer::new()
            .tries(3)
            .retry_on_status(|s| matches!(s.as_u16(), 502..=504))
            .timeout(Duration::from_secs(10))
            .clock(tower_lb::proxy::task_now);
        let stack = ServiceBuilder::new()
            .layer(retry)
            .layer(inner)
            .service(WorkerUpstream::new());
        tokio::spawn(serve(listener, stack));
    } else {
        tokio::spawn(serve(listener, inner.service(WorkerUpstream::new())));
    }
    addr
}

/// A keep-alive HTTP/1.1 client connection to `addr`.
async fn client(addr: SocketAddr) -> SendRequest<Empty<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

/// One GET, its body read to the end.
async fn get(client: &mut SendRequest<Empty<Bytes>>) -> usize {
    client.ready().await.unwrap();
    let req = Request::get("/bench")
        .header("host", "bench.example")
        .header("user-agent", "criterion")
        .body(Empty::new())
        .unwrap();
    let res = client.send_request(req).await.unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    res.into_body().collect().await.unwrap().to_bytes().len()
}

/// The three targets' addresses.
fn targets(rt: &Runtime) -> Vec<(&'static str, SocketAddr)> {
    rt.block_on(async {
        let backends = [backend().await, backend().await];
        vec![
            ("direct", backends[0]),
            ("proxy", proxy(backends, false).await),
            ("proxy_next_upstream", proxy(backends, true).await),
        ]
    })
}

/// A client of `addr`, warmed by 100 requests. Opened just before it is
/// measured: a keep-alive connection left idle for a minute is closed by
/// the proxy (`proxy::HEADER_READ_TIMEOUT`), and the first two targets'
/// measurements can take that long.
fn warmed_client(rt: &Runtime, addr: SocketAddr) -> SendRequest<Empty<Bytes>> {
    rt.block_on(async {
        let mut send = client(addr).await;
        for _ in 0..100 {
            get(&mut send).await;
        }
        send
    })
}

fn bench_proxy(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let targets = targets(&rt);
    if let Some(n) = std::env::var("TOWER_LB_BENCH_REQUESTS")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
    {
        // Under valgrind: N requests to one target, nothing else.
        let wanted = std::env::var("TOWER_LB_BENCH_TARGET").unwrap_or_default();
        for &(name, addr) in &targets {
            if name == wanted {
                let mut send = warmed_client(&rt, addr);
                rt.block_on(async {
                    for _ in 0..n {
                        get(&mut send).await;
                    }
                });
            }
        }
        return;
    }
    let mut group = c.benchmark_group("proxy_loopback");
    group.measurement_time(Duration::from_secs(5));
    for &(name, addr) in &targets {
        let mut send = warmed_client(&rt, addr);
        group.bench_function(name, |b| b.iter(|| rt.block_on(get(&mut send))));
    }
    group.finish();
}

criterion_group!(benches, bench_proxy);
criterion_main!(benches);
