//! Active health checks without I/O in the library: this example's probe
//! loop (tokio, hyper) checks three loopback backends every 100 ms and
//! reports each result with `LoadBalancer::report_check`; tower-lb applies
//! HAProxy's `rise`/`fall`. Traffic flows through a proxy meanwhile. One
//! backend is stopped, then started again: its traffic leaves after `fall`
//! failed checks and comes back after `rise` passed ones.
//!
//! ```text
//! cargo run --example active_health
//! ```

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_lb::health::{CheckResult, HealthPolicy};
use tower_lb::layer::{
    strip_hop_by_hop_response, DirectorLayer, LoadBalanceLayer, ModifyResponseLayer, ProxyDirector,
};
use tower_lb::{Backend, LoadBalancer, Strategy};

use support::stoppable::StoppableBackend;

const CHECK_EVERY: Duration = Duration::from_millis(100);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut backends = Vec::new();
    for name in ["a", "b", "c"] {
        backends.push(StoppableBackend::start(name).await?);
    }
    let lb = LoadBalancer::new(
        Strategy::RoundRobin,
        backends
            .iter()
            .zip(["a", "b", "c"])
            .map(|(b, name)| Backend::new(&format!("http://{}", b.addr()))?.with_id(name))
            .collect::<Result<Vec<_>, _>>()?,
    )?
    // HAProxy's `inter 100ms fall 2 rise 2`, and nginx's passive rules too.
    .with_health_policy(HealthPolicy::default().fall(2).rise(2));

    let checks = tokio::spawn(probe_loop(
        lb.clone(),
        backends
            .iter()
            .map(|b| b.addr())
            .zip(["a", "b", "c"])
            .collect(),
    ));

    let stack = ServiceBuilder::new()
        .layer(ModifyResponseLayer::new(
            strip_hop_by_hop_response::<Incoming>,
        ))
        .layer(LoadBalanceLayer::new(lb.clone()))
        .layer(DirectorLayer::new(ProxyDirector::new()))
        .service(support::Upstream::new());
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let proxy = listener.local_addr()?;
    tokio::spawn(support::serve_proxy(listener, stack));
    println!("gateway http://{proxy}, checks every {CHECK_EVERY:?}, fall 2, rise 2\n");

    traffic(proxy, &lb, "all three up").await?;
    backends[1].stop().await;
    println!("-- b stopped");
    traffic(proxy, &lb, "b stopped").await?;
    traffic(proxy, &lb, "b stopped, checks took it out").await?;
    backends[1].restart().await?;
    println!("-- b started again");
    traffic(proxy, &lb, "b back").await?;
    traffic(proxy, &lb, "b back, checks brought it in").await?;

    checks.abort();
    println!("\nstats:");
    for s in lb.stats() {
        println!(
            "  {}  {:<8} picks {:>3}  ok {:>3}  failed {:>2}  ejections {}",
            s.id,
            s.state.as_str(),
            s.picks,
            s.successes,
            s.failures,
            s.ejections
        );
    }
    Ok(())
}

/// Checks each backend's `/health` every `CHECK_EVERY` and reports it.
async fn probe_loop(lb: LoadBalancer, targets: Vec<(SocketAddr, &'static str)>) {
    let client = support::client();
    let mut tick = tokio::time::interval(CHECK_EVERY);
    loop {
        tick.tick().await;
        for &(addr, id) in &targets {
            let req = Request::get(format!("http://{addr}/health"))
                .body(Full::<Bytes>::default())
                .expect("a valid request");
            let passed = matches!(
                tokio::time::timeout(CHECK_EVERY, client.request(req)).await,
                Ok(Ok(res)) if res.status() == StatusCode::OK
            );
            let was_up = lb
                .stats()
                .iter()
                .any(|s| s.id == id && s.state.as_str() != "down");
            if let Ok(up) = lb.report_check(id, CheckResult::from(passed)) {
                if up != was_up {
                    println!("   check: {id} is now {}", if up { "UP" } else { "DOWN" });
                }
            }
        }
    }
}

/// Sends requests for 600 ms and prints who answered.
async fn traffic(
    proxy: SocketAddr,
    lb: &LoadBalancer,
    phase: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let client = support::client();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..30 {
        let req = Request::get(format!("http://{proxy}/r/{i}")).body(Full::<Bytes>::default())?;
        let res = client.request(req).await?;
        let who = match (res.status(), res.headers().get("x-backend")) {
            (StatusCode::OK, Some(b)) => b.to_str()?.to_owned(),
            (status, _) => status.as_u16().to_string(),
        };
        let _ = res.into_body().collect().await?;
        *counts.entry(who).or_default() += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let states: Vec<String> = lb
        .stats()
        .iter()
        .map(|s| format!("{}={}", s.id, s.state.as_str()))
        .collect();
    println!("{phase:<32} {counts:?}   [{}]", states.join(" "));
    Ok(())
}
