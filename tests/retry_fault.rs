//! The fault test: three loopback backends behind the gateway stack (with
//! retries and timeouts as the gateway example configures them), a bounded
//! load of GETs, one backend killed mid-run and restarted. No GET may fail
//! while a backend is up, and POSTs with small bodies all succeed when the
//! failure is a refused connection. The counts are printed (`cargo test
//! --test retry_fault -- --nocapture`).

#[path = "../examples/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_lb::health::HealthPolicy;
use tower_lb::layer::{DirectorLayer, LoadBalanceLayer, ProxyDirector};
use tower_lb::{Backend, LoadBalancer, Strategy};

use support::retry::KillableBackend;

/// The gateway example's stack, over `lb`, served on a loopback port.
async fn gateway(lb: LoadBalancer) -> SocketAddr {
    let retry = support::retry::RetryOptions::default();
    let stack = ServiceBuilder::new()
        .layer(retry.next_upstream())
        .layer(LoadBalanceLayer::new(lb))
        .layer(retry.response_timeout())
        .layer(DirectorLayer::new(ProxyDirector::new()))
        .service(retry.upstream());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(support::serve_proxy(listener, stack));
    addr
}

#[derive(Default)]
struct Counts {
    ok: AtomicUsize,
    failed: AtomicUsize,
}

/// `total` requests from `workers` concurrent clients; `body` makes them
/// POSTs (whose echo is checked). Calls `at(done)` after each answer.
async fn load(
    proxy: SocketAddr,
    total: usize,
    workers: usize,
    body: Option<&'static str>,
    counts: Arc<Counts>,
    at: Arc<dyn Fn(usize) + Send + Sync>,
) {
    let next = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for _ in 0..workers {
        let (next, counts, at) = (next.clone(), counts.clone(), at.clone());
        handles.push(tokio::spawn(async move {
            let client = support::client();
            while next.fetch_add(1, Ordering::SeqCst) < total {
                let req = match body {
                    Some(text) => Request::post(format!("http://{proxy}/order"))
                        .body(Full::new(Bytes::from_static(text.as_bytes()))),
                    None => Request::get(format!("http://{proxy}/item")).body(Full::default()),
                };
                let ok = match client.request(req.unwrap()).await {
                    Ok(res) if res.status() == StatusCode::OK => {
                        let got = res.into_body().collect().await.map(|b| b.to_bytes());
                        match (body, got) {
                            (Some(text), Ok(got)) => got == text.as_bytes(),
                            (None, Ok(got)) => got.starts_with(b"backend-"),
                            (_, Err(_)) => false,
                        }
                    }
                    Ok(res) => {
                        eprintln!("failed: {}", res.status());
                        false
                    }
                    Err(e) => {
                        eprintln!("failed: {e}");
                        false
                    }
                };
                let counter = if ok { &counts.ok } else { &counts.failed };
                counter.fetch_add(1, Ordering::SeqCst);
                at(counts.ok.load(Ordering::SeqCst) + counts.failed.load(Ordering::SeqCst));
            }
        }));
    }
    for handle in handles {
        handle.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_backend_under_load_loses_no_get_and_no_refused_post() {
    let names = ["backend-1", "backend-2", "backend-3"];
    let mut backends = Vec::new();
    for name in names {
        backends.push(Arc::new(KillableBackend::spawn(name).await.unwrap()));
    }
    let lb = LoadBalancer::new(
        Strategy::RoundRobin,
        backends.iter().map(|b| {
            Backend::new(&format!("http://{}", b.addr))
                .unwrap()
                .with_id(b.name)
                .unwrap()
        }),
    )
    .unwrap()
    // Passive ejection off: requests keep meeting the dead backend, so the
    // retries alone must keep every client whole (tests/passive_health.rs
    // covers ejection over sockets).
    .with_health_policy(HealthPolicy::off());
    let proxy = gateway(lb.clone()).await;
    let victim = Arc::clone(&backends[1]);

    // GETs: backend-2 dies after 200 answers, comes back after 400.
    const GETS: usize = 600;
    let gets = Arc::new(Counts::default());
    let (killed, restarted) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (restart_tx, mut restart_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let at: Arc<dyn Fn(usize) + Send + Sync> = {
        let (victim, killed, restarted) = (victim.clone(), killed.clone(), restarted.clone());
        Arc::new(move |done| {
            if done >= 200 && killed.fetch_add(1, Ordering::SeqCst) == 0 {
                victim.kill();
            }
            if done >= 400 && restarted.fetch_add(1, Ordering::SeqCst) == 0 {
                let _ = restart_tx.send(());
            }
        })
    };
    let restarter = {
        let victim = victim.clone();
        tokio::spawn(async move {
            if restart_rx.recv().await.is_some() {
                victim.start().await.unwrap();
            }
        })
    };
    load(proxy, GETS, 8, None, gets.clone(), at).await;
    restarter.await.unwrap();
    let failures_while_down = lb.get("backend-2").unwrap().load().failures();

    // POSTs while backend-2 is down: every third pick is refused, and retried.
    victim.kill();
    // Pooled connections to it see the reset first: the POSTs below meet
    // refused connections, not connections dying under them.
    tokio::time::sleep(Duration::from_millis(50)).await;
    const POSTS: usize = 90;
    let posts = Arc::new(Counts::default());
    let before = lb.get("backend-2").unwrap().load().failures();
    load(
        proxy,
        POSTS,
        4,
        Some("order #42: 3 apples"),
        posts.clone(),
        Arc::new(|_| {}),
    )
    .await;
    let refused = lb.get("backend-2").unwrap().load().failures() - before;
    victim.start().await.unwrap();

    // And backend-2 serves again once restarted.
    let after = Arc::new(Counts::default());
    load(proxy, 30, 2, None, after.clone(), Arc::new(|_| {})).await;

    let served: Vec<String> = names
        .iter()
        .map(|n| format!("{n} {}", lb.get(n).unwrap().load().successes()))
        .collect();
    println!(
        "fault test: GETs {} ok / {} failed (backend-2 killed at 200, restarted at 400, {} attempts on it failed); \
         POSTs while down {} ok / {} failed ({} refused attempts retried); after restart {} ok / {} failed; served: {}",
        gets.ok.load(Ordering::SeqCst),
        gets.failed.load(Ordering::SeqCst),
        failures_while_down,
        posts.ok.load(Ordering::SeqCst),
        posts.failed.load(Ordering::SeqCst),
        refused,
        after.ok.load(Ordering::SeqCst),
        after.failed.load(Ordering::SeqCst),
        served.join(", "),
    );
    assert_eq!(gets.failed.load(Ordering::SeqCst), 0);
    assert_eq!(gets.ok.load(Ordering::SeqCst), GETS);
    assert!(failures_while_down > 0, "the kill was never noticed");
    assert_eq!(posts.failed.load(Ordering::SeqCst), 0);
    assert_eq!(posts.ok.load(Ordering::SeqCst), POSTS);
    assert!(refused >= 10, "only {refused} POST attempts were refused");
    assert_eq!(after.failed.load(Ordering::SeqCst), 0);
}
