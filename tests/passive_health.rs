//! Passive health over real loopback sockets: a stopped backend is ejected
//! after the configured failures and comes back after a probe; a client
//! that aborts its upload never counts against the backend.

#[path = "../examples/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceBuilder;
use tower_lb::health::{BackendState, HealthPolicy, ManualClock};
use tower_lb::layer::{
    strip_hop_by_hop_response, DirectorLayer, LoadBalanceLayer, ModifyResponseLayer, ProxyDirector,
};
use tower_lb::{Backend, LoadBalancer, Strategy};

use support::stoppable::StoppableBackend;

async fn proxy_for(lb: LoadBalancer) -> SocketAddr {
    let stack = ServiceBuilder::new()
        .layer(ModifyResponseLayer::new(
            strip_hop_by_hop_response::<Incoming>,
        ))
        .layer(LoadBalanceLayer::new(lb))
        .layer(DirectorLayer::new(ProxyDirector::new()))
        .service(support::Upstream::new());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(support::serve_proxy(listener, stack));
    addr
}

/// Who answered each of `n` requests (`502`/`503` for errors).
async fn answers(proxy: SocketAddr, n: usize) -> Vec<String> {
    let client = support::client();
    let mut out = Vec::new();
    for i in 0..n {
        let req = Request::get(format!("http://{proxy}/r/{i}"))
            .body(Full::<Bytes>::default())
            .unwrap();
        let res = client.request(req).await.unwrap();
        let status = res.status();
        let backend = res
            .headers()
            .get("x-backend")
            .map(|v| v.to_str().unwrap().to_owned());
        let _ = res.into_body().collect().await;
        out.push(match backend {
            Some(b) if status == StatusCode::OK => b,
            _ => status.as_u16().to_string(),
        });
    }
    out
}

#[tokio::test]
async fn a_stopped_backend_is_ejected_after_max_fails_and_returns_after_restart() {
    let a = StoppableBackend::start("a").await.unwrap();
    let mut b = StoppableBackend::start("b").await.unwrap();
    let clock = ManualClock::new();
    let lb = LoadBalancer::new(
        Strategy::RoundRobin,
        [
            Backend::new(&format!("http://{}", a.addr()))
                .unwrap()
                .with_id("a")
                .unwrap(),
            Backend::new(&format!("http://{}", b.addr()))
                .unwrap()
                .with_id("b")
                .unwrap(),
        ],
    )
    .unwrap()
    .with_health_policy(HealthPolicy::default().max_fails(2).clock(clock.clone()));
    let proxy = proxy_for(lb.clone()).await;
    assert_eq!(answers(proxy, 4).await, ["a", "b", "a", "b"]);

    b.stop().await;
    // Two refused connections (max_fails = 2), then b is out.
    assert_eq!(answers(proxy, 4).await, ["a", "502", "a", "502"]);
    assert_eq!(lb.stats()[1].state, BackendState::Ejected);
    assert_eq!(answers(proxy, 4).await, ["a", "a", "a", "a"]);

    b.restart().await.unwrap();
    // Still ejected until fail_timeout passes; then the probe brings it back.
    assert_eq!(answers(proxy, 2).await, ["a", "a"]);
    clock.advance(Duration::from_secs(11));
    let back = answers(proxy, 6).await;
    assert_eq!(back.iter().filter(|x| *x == "b").count(), 3, "{back:?}");
    assert_eq!(lb.stats()[1].state, BackendState::Up);
    assert_eq!(lb.stats()[1].failures, 2);
}

/// Sends a `POST` announcing 100000 bytes, sends 10, and closes (with a
/// reset rather than a FIN when `reset`).
async fn aborted_upload(proxy: SocketAddr, reset: bool) {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    if reset {
        #[allow(deprecated)]
        s.set_linger(Some(Duration::ZERO)).unwrap();
    }
    s.write_all(b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n0123456789")
        .await
        .unwrap();
    s.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    drop(s);
}

#[tokio::test]
async fn a_client_aborting_its_upload_never_counts_against_the_backend() {
    let a = StoppableBackend::start("a").await.unwrap();
    let lb = LoadBalancer::new(
        Strategy::RoundRobin,
        [Backend::new(&format!("http://{}", a.addr()))
            .unwrap()
            .with_id("a")
            .unwrap()],
    )
    .unwrap()
    .with_health_policy(HealthPolicy::default());
    let proxy = proxy_for(lb.clone()).await;
    for i in 0..5 {
        aborted_upload(proxy, i % 2 == 1).await;
    }
    // Wait for the proxy to finish with all five exchanges.
    let load = lb.get("a").unwrap().load().clone();
    for _ in 0..200 {
        if load.started() == 5 && load.in_flight() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!((load.started(), load.in_flight()), (5, 0));
    assert_eq!((load.successes(), load.failures()), (0, 0));
    assert_eq!(lb.stats()[0].state, BackendState::Up);
    assert_eq!(answers(proxy, 2).await, ["a", "a"]);
}

/// Waits (up to a second) for `load` to show `n` requests in flight.
async fn in_flight_reaches(load: &tower_lb::Load, n: u64) -> u64 {
    for _ in 0..200 {
        if load.in_flight() == n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    load.in_flight()
}

#[tokio::test]
async fn an_open_websocket_counts_in_flight_until_it_closes() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let addr = support::spawn_ws_backend("game").await.unwrap();
    let lb = LoadBalancer::new(
        Strategy::LeastRequest,
        [Backend::new(&format!("http://{addr}"))
            .unwrap()
            .with_id("game")
            .unwrap()],
    )
    .unwrap();
    let proxy = proxy_for(lb.clone()).await;
    let load = lb.get("game").unwrap().load().clone();
    let loopback = std::net::IpAddr::from([127, 0, 0, 1]);

    let (mut ws, res) = support::ws_connect(proxy, loopback, None).await.unwrap();
    assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
    let hello = ws.next().await.unwrap().unwrap();
    assert_eq!(hello, Message::text("hello from game"));
    assert_eq!(
        in_flight_reaches(&load, 1).await,
        1,
        "the open tunnel counts"
    );
    ws.send(Message::text("ping")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("game: ping")
    );
    assert_eq!(load.in_flight(), 1);

    ws.close(None).await.unwrap();
    while ws.next().await.is_some() {}
    drop(ws); // the client closes its connection too
    assert_eq!(
        in_flight_reaches(&load, 0).await,
        0,
        "closed: no longer counted"
    );
}
