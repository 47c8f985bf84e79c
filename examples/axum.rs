//! The tower-lb proxy behind axum: routes of your own first, everything else
//! balanced over the backends, with the client's address taken from
//! axum's `ConnectInfo` and errors answered by `Error::to_response`.
//!
//! ```text
//! cargo run --example axum            # two built-in backends, serve until Ctrl-C
//! cargo run --example axum -- --check # send a few requests, check the answers, exit
//! ```

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::error_handling::HandleErrorLayer;
use axum::extract::ConnectInfo;
use axum::routing::get;
use axum::Router;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::ServiceBuilder;
use tower_lb::layer::{
    client_addr_from, DirectorLayer, LoadBalanceLayer, ProxyDirector, ResponseTimeoutLayer,
};
use tower_lb::proxy::{TimerPool, Upstream};
use tower_lb::{LoadBalancer, Strategy};

/// The proxy as an axum service: `Error = Infallible`, as
/// `Router::fallback_service` requires.
fn proxy(lb: LoadBalancer) -> Router {
    let balanced = ServiceBuilder::new()
        // tower-lb's errors become responses whose text names no backend.
        .layer(HandleErrorLayer::new(|error: tower_lb::Error| async move {
            eprintln!("proxy error: {error}");
            error.to_response::<Body>()
        }))
        // axum puts the peer address in `ConnectInfo`; tower-lb reads
        // `ClientAddr` (for X-Forwarded-For and `ClientIp`).
        .layer(DirectorLayer::new(client_addr_from(
            |info: &ConnectInfo<SocketAddr>| info.0,
        )))
        .layer(LoadBalanceLayer::new(lb))
        // nginx's proxy_read_timeout for the response head: a backend that
        // accepts and never answers is a 504, counted against it.
        // (On tokio timers kept from one request to the next.)
        .layer(ResponseTimeoutLayer::new(
            Duration::from_secs(60),
            TimerPool,
        ))
        .layer(DirectorLayer::new(ProxyDirector::new()))
        .service(Upstream::<Body>::new());
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .fallback_service(balanced)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let check = std::env::args().any(|a| a == "--check");
    let a = support::spawn_backend("backend-1").await?;
    let b = support::spawn_backend("backend-2").await?;
    let lb = LoadBalancer::new(
        Strategy::RoundRobin,
        [format!("http://{a}"), format!("http://{b}")],
    )?;
    let app = proxy(lb.clone());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    println!("axum + tower-lb on http://{addr} (backends {a}, {b})");
    let server = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    );
    if !check {
        println!("try: curl -i http://{addr}/hello   (Ctrl-C to stop)");
        server.await?;
        return Ok(());
    }
    tokio::spawn(async move { server.await });

    let client = support::client();
    let ask = |path: &str| {
        let req = Request::get(format!("http://{addr}{path}"))
            .header("x-forwarded-for", "6.6.6.6")
            .body(Full::default());
        let client = client.clone();
        async move {
            let res = client.request(req?).await?;
            let status = res.status();
            let body = res.into_body().collect().await?.to_bytes();
            Ok::<_, Box<dyn std::error::Error>>((
                status,
                String::from_utf8_lossy(&body).into_owned(),
            ))
        }
    };
    let (status, body) = ask("/healthz").await?;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok\n"));
    let (status, headers) = ask("/headers").await?;
    assert_eq!(status, StatusCode::OK);
    // The client's own X-Forwarded-For is replaced by its address.
    assert!(
        headers.contains("x-forwarded-for: 127.0.0.1\n"),
        "{headers}"
    );
    println!("forwarded with x-forwarded-for: 127.0.0.1");
    lb.mark_down(&a.to_string())?;
    lb.mark_down(&b.to_string())?;
    let (status, body) = ask("/hello").await?;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, "503 Service Unavailable: no backend is available\n");
    println!("all backends down: {status}, {}", body.trim());
    Ok(())
}
