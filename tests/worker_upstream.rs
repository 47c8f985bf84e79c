//! `WorkerUpstream`'s pool over real loopback sockets: keep-alive to the
//! backend, a second connection only while the first is busy, a closed
//! connection replaced. (The whole gateway suite in tests/gateway.rs runs
//! over it too.)

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tower::{Service, ServiceExt};
use tower_lb::proxy::WorkerUpstream;

/// A keep-alive backend on loopback that counts the connections it
/// accepted; it answers `ok`, 4 MiB on `/big` (more than a connection
/// buffers, so the connection stays busy until the body is read), and
/// closes after one request on `/close`.
async fn counting_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let body = match req.uri().path() {
                        "/big" => Bytes::from(vec![b'x'; 4 << 20]),
                        _ => Bytes::from_static(b"ok"),
                    };
                    let mut res = Response::new(Full::new(body));
                    if req.uri().path() == "/close" {
                        res.headers_mut()
                            .insert(http::header::CONNECTION, "close".parse().unwrap());
                    }
                    Ok::<_, Infallible>(res)
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, accepted)
}

async fn get(
    upstream: &mut WorkerUpstream<Full<Bytes>>,
    addr: SocketAddr,
    path: &str,
) -> Response<hyper::body::Incoming> {
    let req = Request::get(format!("http://{addr}{path}"))
        .body(Full::default())
        .unwrap();
    upstream.ready().await.unwrap().call(req).await.unwrap()
}

#[tokio::test(flavor = "current_thread")]
async fn sequential_requests_share_one_backend_connection() {
    let (addr, accepted) = counting_backend().await;
    let mut upstream = WorkerUpstream::new();
    for _ in 0..20 {
        let res = get(&mut upstream, addr, "/").await;
        assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "ok");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "current_thread")]
async fn a_connection_still_reading_its_body_is_not_shared() {
    let (addr, accepted) = counting_backend().await;
    let mut upstream = WorkerUpstream::new();
    // Both response bodies unread: the second request needs a second
    // connection.
    let first = get(&mut upstream, addr, "/big").await;
    let second = get(&mut upstream, addr, "/big").await;
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    let first = first.into_body().collect().await.unwrap().to_bytes();
    let second = second.into_body().collect().await.unwrap().to_bytes();
    assert_eq!((first.len(), second.len()), (4 << 20, 4 << 20));
    // Both are back in the pool: more requests open nothing new.
    for _ in 0..10 {
        get(&mut upstream, addr, "/")
            .await
            .into_body()
            .collect()
            .await
            .unwrap();
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "current_thread")]
async fn a_connection_the_backend_closed_is_replaced() {
    let (addr, accepted) = counting_backend().await;
    let mut upstream = WorkerUpstream::new();
    let res = get(&mut upstream, addr, "/close").await;
    res.into_body().collect().await.unwrap();
    let res = get(&mut upstream, addr, "/").await;
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "ok");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "current_thread")]
async fn only_plain_http_backends_are_accepted() {
    let mut upstream = WorkerUpstream::<Full<Bytes>>::new();
    let req = Request::get("https://127.0.0.1:1/")
        .body(Full::default())
        .unwrap();
    let error = upstream.ready().await.unwrap().call(req).await.unwrap_err();
    assert!(error.to_string().contains("plain http"), "{error}");
}
