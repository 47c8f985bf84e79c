//! The gateway over TLS on loopback, with certificates made at run time:
//! HTTPS and WSS in front (the sticky cookie `Secure`, `X-Forwarded-Proto:
//! https`), the source article's reconnect over WSS, and `https://`
//! backends verified against a given CA; and `serve_connection` on a stream
//! that is not a TCP listener's.

#[path = "../examples/support/mod.rs"]
mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tower::ServiceBuilder;
use tower_lb::layer::{DirectorLayer, LoadBalanceLayer, ProxyDirector};
use tower_lb::sticky::{Secret, StickyCookie};
use tower_lb::{Backend, LoadBalancer, Strategy};

use support::tls;

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// A TLS gateway, wired as `examples/gateway.rs` wires it with
/// `--tls-cert --tls-key --sticky`, in front of `backends`; its clients
/// trust the returned configuration.
async fn tls_gateway(
    backends: Vec<Backend>,
    upstream_roots: rustls::RootCertStore,
) -> (SocketAddr, Arc<rustls::ClientConfig>) {
    let (server, client) = tls::loopback_pair();
    let lb = LoadBalancer::new(Strategy::RoundRobin, backends).unwrap();
    let sticky = StickyCookie::new("lb", Secret::generate().unwrap())
        .unwrap()
        .secure(true);
    let stack = ServiceBuilder::new()
        .layer(LoadBalanceLayer::new(lb).sticky(sticky))
        .layer(DirectorLayer::new(ProxyDirector::new().https(true)))
        .service(tls::upstream(upstream_roots).unwrap());
    let stack = support::policy::protect(Default::default(), stack);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(tls::serve_proxy_tls(listener, server, stack));
    (addr, client)
}

async fn ws_backends(names: &[&str]) -> Vec<Backend> {
    let mut backends = Vec::new();
    for name in names {
        let addr = support::spawn_ws_backend(name).await.unwrap();
        backends.push(
            Backend::new(&format!("http://{addr}"))
                .unwrap()
                .with_id(*name)
                .unwrap(),
        );
    }
    backends
}

/// The backend's greeting: `hello from NAME`.
async fn hello<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match ws.next().await {
        Some(Ok(Message::Text(text))) => text.as_str().to_owned(),
        other => panic!("expected the backend's greeting, got {other:?}"),
    }
}

#[tokio::test]
async fn a_wss_client_reconnecting_from_another_address_with_its_cookie_lands_on_the_same_backend()
{
    let (proxy, client) = tls_gateway(
        ws_backends(&["game-a", "game-b"]).await,
        rustls::RootCertStore::empty(),
    )
    .await;
    let mut first_backends = Vec::new();
    for player in 0..4u8 {
        // A first connection, from the player's Wi-Fi address.
        let (mut ws, res) = tls::wss_connect(proxy, loopback(10 + player), None, client.clone())
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
        let set_cookie = res.headers()["set-cookie"].to_str().unwrap().to_owned();
        assert!(set_cookie.starts_with("lb="), "{set_cookie}");
        assert!(set_cookie.contains("; Secure"), "{set_cookie}");
        let backend = hello(&mut ws).await;
        first_backends.push(backend.clone());
        drop(ws);

        // The network dropped; the game reconnects from its 4G address,
        // over TLS again, with the cookie of the 101.
        let cookie = support::cookie_pair(&res).unwrap();
        for attempt in 0..3u8 {
            let (mut ws, res) = tls::wss_connect(
                proxy,
                loopback(100 + player * 4 + attempt),
                Some(&cookie),
                client.clone(),
            )
            .await
            .unwrap();
            assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
            // An honoured cookie is not set again.
            assert!(!res.headers().contains_key("set-cookie"));
            assert_eq!(hello(&mut ws).await, backend, "player {player} moved");
            // The tunnel carries frames both ways over TLS.
            ws.send(Message::text("ping")).await.unwrap();
            let echo = match ws.next().await {
                Some(Ok(Message::Text(text))) => text.as_str().to_owned(),
                other => panic!("expected an echo, got {other:?}"),
            };
            assert_eq!(echo, format!("{}: ping", &backend["hello from ".len()..]));
        }
    }
    // Round robin spread the first connections, so landing again on the
    // same backend is the cookie's doing, not a one-backend coincidence.
    assert_eq!(
        first_backends,
        [
            "hello from game-a",
            "hello from game-b",
            "hello from game-a",
            "hello from game-b"
        ]
    );
}

async fn https_get(
    client: &support::tls::DemoClient,
    url: String,
    cookie: Option<&str>,
) -> (StatusCode, http::HeaderMap, String) {
    let mut req = Request::get(url);
    if let Some(cookie) = cookie {
        req = req.header("cookie", cookie);
    }
    let res = client
        .request(req.body(Full::<Bytes>::default()).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

fn http_backend(name: &str, addr: SocketAddr, scheme: &str, host: &str) -> Backend {
    Backend::new(&format!("{scheme}://{host}:{}", addr.port()))
        .unwrap()
        .with_id(name)
        .unwrap()
}

#[tokio::test]
async fn https_requests_get_a_secure_cookie_and_backends_see_forwarded_proto_https() {
    let a = support::spawn_backend("a").await.unwrap();
    let b = support::spawn_backend("b").await.unwrap();
    let (proxy, client) = tls_gateway(
        vec![
            http_backend("a", a, "http", "127.0.0.1"),
            http_backend("b", b, "http", "127.0.0.1"),
        ],
        rustls::RootCertStore::empty(),
    )
    .await;
    let client = tls::https_client(client);
    let url = format!("https://localhost:{}/headers", proxy.port());
    let (status, headers, body) = https_get(&client, url.clone(), None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("x-forwarded-proto: https\n"), "{body}");
    let set_cookie = headers["set-cookie"].to_str().unwrap();
    assert!(set_cookie.ends_with("; HttpOnly; Secure"), "{set_cookie}");
    let backend = headers["x-backend"].to_str().unwrap().to_owned();
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    for _ in 0..4 {
        let (status, headers, _) = https_get(&client, url.clone(), Some(&cookie)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["x-backend"], backend.as_str());
    }
}

#[tokio::test]
async fn a_plain_http_request_to_the_tls_port_is_refused_without_reaching_a_backend() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let a = support::spawn_backend("a").await.unwrap();
    let (proxy, _) = tls_gateway(
        vec![http_backend("a", a, "http", "127.0.0.1")],
        rustls::RootCertStore::empty(),
    )
    .await;
    let mut stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(!answer.contains("x-backend"), "{answer}");
    assert!(!answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn https_backends_are_verified_against_the_upstream_ca() {
    // The backend's certificate is its own, made now; the gateway trusts
    // it through `--upstream-ca FILE`.
    let (backend_tls, backend_cert) = tls::loopback_identity();
    let addr = tls::spawn_tls_backend("secure", backend_tls).await.unwrap();
    let ca_file = std::env::temp_dir().join(format!(
        "tower-lb-upstream-ca-{}-{}.pem",
        std::process::id(),
        addr.port()
    ));
    std::fs::write(&ca_file, &backend_cert).unwrap();
    let roots = tls::upstream_roots(Some(&ca_file), true);
    std::fs::remove_file(&ca_file).unwrap();
    let backend = || vec![http_backend("secure", addr, "https", "localhost")];

    let (proxy, client) = tls_gateway(backend(), roots.unwrap()).await;
    let url = format!("https://localhost:{}/headers", proxy.port());
    let (status, headers, body) = https_get(&tls::https_client(client), url, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers["x-backend"], "secure");
    assert!(
        body.contains(&format!("host: localhost:{}\n", proxy.port())),
        "{body}"
    );

    // A gateway that does not trust the backend's certificate does not
    // talk to it: 502, naming nothing.
    let (proxy, client) = tls_gateway(backend(), rustls::RootCertStore::empty()).await;
    let url = format!("https://localhost:{}/headers", proxy.port());
    let (status, headers, body) = https_get(&tls::https_client(client), url, None).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(!headers.contains_key("x-backend"));
    assert_eq!(body, "502 Bad Gateway: the backend failed to answer\n");
}

#[test]
fn upstream_ca_and_tls_files_that_hold_no_certificate_are_refused_clearly() {
    let empty = std::env::temp_dir().join(format!("tower-lb-empty-{}.pem", std::process::id()));
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let ca = tls::upstream_roots(Some(&empty), true).unwrap_err();
    let served = tls::server_config_from_files(&empty, &empty).unwrap_err();
    std::fs::remove_file(&empty).unwrap();
    assert!(ca.starts_with("--upstream-ca "), "{ca}");
    assert!(ca.ends_with("no usable CERTIFICATE in the file"), "{ca}");
    assert!(served.starts_with("--tls-cert "), "{served}");
    assert!(served.ends_with("no CERTIFICATE in the file"), "{served}");
    let missing = std::path::Path::new("/nonexistent/tower-lb.pem");
    assert!(tls::upstream_roots(Some(missing), true)
        .unwrap_err()
        .starts_with("--upstream-ca /nonexistent/tower-lb.pem: "));
}

#[tokio::test]
async fn serve_connection_serves_any_stream_an_in_memory_pipe_included() {
    use hyper_util::rt::TokioIo;

    let a = support::spawn_backend("a").await.unwrap();
    let lb = LoadBalancer::new(
        Strategy::RoundRobin,
        [http_backend("a", a, "http", "127.0.0.1")],
    )
    .unwrap();
    let stack = ServiceBuilder::new()
        .layer(LoadBalanceLayer::new(lb.clone()))
        .layer(DirectorLayer::new(ProxyDirector::new()))
        .service(support::Upstream::new());
    let (client_end, server_end) = tokio::io::duplex(64 * 1024);
    let peer: SocketAddr = "192.0.2.7:40000".parse().unwrap();
    let served = tokio::spawn(tower_lb::proxy::serve_connection(
        TokioIo::new(server_end),
        peer,
        stack,
        |_: &tower_lb::Error, _| {},
    ));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(client_end))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/headers")
        .header("host", "front.example")
        .body(Full::<Bytes>::default())
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8_lossy(&body);
    // The peer given for the stream is the client's address downstream.
    assert!(body.contains("x-forwarded-for: 192.0.2.7\n"), "{body}");
    assert!(body.contains("host: front.example\n"), "{body}");
    drop(sender);
    // The client hung up: the connection ends cleanly.
    served.await.unwrap().unwrap();
    assert_eq!(lb.get("a").unwrap().load().successes(), 1);
}
