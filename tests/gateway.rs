//! The gateway stack over real loopback sockets: two (or three) hyper
//! backends, a hyper proxy built from the tower-lb layers, a hyper client.

#[path = "../examples/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_lb::layer::{DirectorLayer, LoadBalanceLayer, ProxyDirector};
use tower_lb::sticky::AffinityKey;
use tower_lb::{Backend, LoadBalancer, Strategy};

fn user_key(req: &Request<tower_lb::proxy::RequestBody>) -> Option<AffinityKey<'_>> {
    req.headers().get("x-user").map(|v| v.as_bytes().into())
}

/// Backends named a, b, c... with the given weights, and a proxy in front.
async fn gateway(strategy: Strategy, weights: &[u32]) -> (SocketAddr, LoadBalancer) {
    let mut backends = Vec::new();
    for (i, &w) in weights.iter().enumerate() {
        let name = ((b'a' + i as u8) as char).to_string();
        let addr = support::spawn_backend(&name).await.unwrap();
        backends.push(
            Backend::new(&format!("http://{addr}"))
                .unwrap()
                .with_id(name)
                .unwrap()
                .with_weight(w)
                .unwrap(),
        );
    }
    let lb = LoadBalancer::new(strategy, backends).unwrap();
    (proxy_for(lb.clone()).await, lb)
}

async fn proxy_for(lb: LoadBalancer) -> SocketAddr {
    // No response layer: the director strips hop-by-hop headers both ways.
    let stack = ServiceBuilder::new()
        .layer(LoadBalanceLayer::new(lb).key(user_key))
        .layer(DirectorLayer::new(ProxyDirector::new()))
        // What the gateway example runs.
        .service(support::WorkerUpstream::new());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(support::serve_proxy(listener, stack));
    addr
}

struct Answer {
    status: StatusCode,
    backend: String,
    body: String,
}

async fn get(proxy: SocketAddr, path: &str, user: Option<&str>) -> Answer {
    let mut req = Request::get(format!("http://{proxy}{path}"));
    if let Some(user) = user {
        req = req.header("x-user", user);
    }
    send(req.body(Full::default()).unwrap()).await
}

async fn send(req: Request<Full<Bytes>>) -> Answer {
    let res = support::client().request(req).await.unwrap();
    let status = res.status();
    let backend = res
        .headers()
        .get("x-backend")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        backend,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// Sends `request` as it is over a new connection; the whole answer, up to
/// the connection's close.
/// `request_line` (method and target) sent raw as HTTP/1.1 to host
/// `front.example`, asking the proxy to close after its answer: the answer.
async fn raw_closing(proxy: SocketAddr, request_line: &str) -> String {
    let request =
        format!("{request_line} HTTP/1.1\r\nHost: front.example\r\nConnection: close\r\n\r\n");
    raw(proxy, &request).await
}

async fn raw(proxy: SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

async fn sequence(proxy: SocketAddr, n: usize) -> String {
    let mut out = String::new();
    for i in 0..n {
        let a = get(proxy, &format!("/r/{i}"), None).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        out.push_str(&a.backend);
    }
    out
}

#[tokio::test]
async fn round_robin_alternates_over_real_sockets() {
    let (proxy, _lb) = gateway(Strategy::RoundRobin, &[1, 1]).await;
    assert_eq!(sequence(proxy, 8).await, "abababab");
}

#[tokio::test]
async fn weighted_round_robin_gives_nginx_sequence_over_real_sockets() {
    let (proxy, _lb) = gateway(Strategy::WeightedRoundRobin, &[5, 1, 1]).await;
    assert_eq!(sequence(proxy, 14).await, "aabacaaaabacaa");
}

#[tokio::test]
async fn random_spreads_within_bounds_over_real_sockets() {
    let (proxy, _lb) = gateway(Strategy::Random, &[1, 1]).await;
    let seq = sequence(proxy, 400).await;
    let a = seq.matches('a').count();
    // Binomial(400, 1/2): sd 10, so 200 ± 60 is a 6-sigma bound.
    assert!((140..=260).contains(&a), "a answered {a} of 400");
}

#[tokio::test]
async fn consistent_hash_keeps_each_user_on_one_backend_over_real_sockets() {
    let (proxy, _lb) = gateway(Strategy::consistent_hash(), &[1, 1]).await;
    let mut owner: HashMap<String, String> = HashMap::new();
    for round in 0..3 {
        for u in 0..20 {
            let user = format!("user-{u}");
            let a = get(proxy, &format!("/r/{round}"), Some(&user)).await;
            assert_eq!(a.status, StatusCode::OK);
            let first = owner.entry(user.clone()).or_insert(a.backend.clone());
            assert_eq!(*first, a.backend, "{user} moved");
        }
    }
    // 20 users over 2 backends: both get some (P(all on one) = 2^-19).
    let on_a = owner.values().filter(|b| *b == "a").count();
    assert!((1..20).contains(&on_a), "{on_a} of 20 users on a");
}

#[tokio::test]
async fn consistent_hash_moves_users_of_a_down_backend_and_back() {
    let (proxy, lb) = gateway(Strategy::consistent_hash(), &[1, 1, 1]).await;
    let mut before = HashMap::new();
    for u in 0..30 {
        let user = format!("user-{u}");
        before.insert(user.clone(), get(proxy, "/", Some(&user)).await.backend);
    }
    lb.mark_down("b").unwrap();
    for (user, backend) in &before {
        let now = get(proxy, "/", Some(user)).await.backend;
        if backend == "b" {
            assert_ne!(now, "b");
        } else {
            assert_eq!(&now, backend, "{user} moved though its backend is up");
        }
    }
    lb.mark_up("b").unwrap();
    for (user, backend) in &before {
        assert_eq!(&get(proxy, "/", Some(user)).await.backend, backend);
    }
}

#[tokio::test]
async fn all_backends_down_answers_503_without_naming_them() {
    let (proxy, lb) = gateway(Strategy::RoundRobin, &[1, 1]).await;
    lb.mark_down("a").unwrap();
    lb.mark_down("b").unwrap();
    let a = get(proxy, "/", None).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.body, "503 Service Unavailable: no backend is available\n");
}

#[tokio::test]
async fn a_dead_backend_answers_502_and_is_counted_as_a_failure() {
    // A port that was free a moment ago: nothing listens there.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let lb = LoadBalancer::new(Strategy::RoundRobin, [format!("http://{dead_addr}")]).unwrap();
    let proxy = proxy_for(lb.clone()).await;
    let a = get(proxy, "/", None).await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY);
    assert!(!a.body.contains(&dead_addr.to_string()), "{}", a.body);
    let member = lb.get(&dead_addr.to_string()).unwrap();
    assert_eq!(member.load().failures(), 1);
    assert_eq!(member.load().in_flight(), 0);
}

#[tokio::test]
async fn requests_that_cannot_be_forwarded_answer_4xx_and_are_not_counted() {
    let addr = support::spawn_backend("a").await.unwrap();
    let lb = LoadBalancer::new(
        Strategy::RoundRobin,
        [Backend::new(&format!("http://{addr}/api"))
            .unwrap()
            .with_id("a")
            .unwrap()],
    )
    .unwrap();
    let proxy = proxy_for(lb.clone()).await;

    let two_hosts = Request::get(format!("http://{proxy}/x"))
        .header("host", "front.example")
        .header("host", "evil.example")
        .body(Full::default())
        .unwrap();
    let a = send(two_hosts).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.body, "400 Bad Request: the request cannot be forwarded\n");

    let a = get(proxy, "/..%2f..%2fadmin", None).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);

    // 65,531 bytes: hyper takes it; "/api" makes it one byte too long. (A
    // client's absolute URI could not be that long, so it goes raw.)
    let long = format!("/{}", "a".repeat(65_530));
    let answer = raw(
        proxy,
        &format!("GET {long} HTTP/1.1\r\nhost: front\r\nconnection: close\r\n\r\n"),
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 414 URI Too Long\r\n"),
        "{answer}"
    );
    assert!(
        answer.ends_with("\r\n\r\n414 URI Too Long: shorten the path or query\n"),
        "{answer}"
    );

    let load = lb.get("a").unwrap().load().clone();
    assert_eq!(
        (load.in_flight(), load.successes(), load.failures()),
        (0, 0, 0)
    );
    assert_eq!(load.consecutive_failures(), 0);
    let ok = get(proxy, "/x", None).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.body, format!("a: GET /api/x host={proxy}\n"));
}

#[tokio::test]
async fn backend_status_is_forwarded_and_5xx_counts_as_failure() {
    let (proxy, lb) = gateway(Strategy::RoundRobin, &[1]).await;
    let a = get(proxy, "/status/503", None).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.body, "a\n");
    let b = get(proxy, "/status/404", None).await;
    assert_eq!(b.status, StatusCode::NOT_FOUND);
    let load = lb.get("a").unwrap().load().clone();
    assert_eq!((load.failures(), load.successes()), (1, 1));
}

#[tokio::test]
async fn bodies_stream_through_both_ways() {
    let (proxy, _lb) = gateway(Strategy::RoundRobin, &[1]).await;
    let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let req = Request::post(format!("http://{proxy}/echo"))
        .body(Full::from(payload.clone()))
        .unwrap();
    let res = support::client().request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), payload.len());
    assert!(body[..] == payload[..]);
}

#[tokio::test]
async fn trailers_pass_through_both_ways() {
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let (proxy, _lb) = gateway(Strategy::RoundRobin, &[1]).await;
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-checksum", "c0ffee".parse().unwrap());
    // A stream of frames has no known length, so it goes chunked, the only
    // HTTP/1.1 framing that carries trailers.
    let frames = [
        Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"hello"))),
        Ok(Frame::trailers(trailers)),
    ];
    let req = Request::post(format!("http://{proxy}/echo"))
        .header("trailer", "x-checksum")
        // hyper's server sends trailers only to a client that accepts them.
        .header("te", "trailers")
        .body(StreamBody::new(futures_util::stream::iter(frames)))
        .unwrap();
    let res = Client::builder(TokioExecutor::new())
        .build_http()
        .request(req)
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    // The backend got the request's trailer (it echoes what it received)...
    assert_eq!(res.headers()["trailer"], "x-checksum");
    // ...and the client gets the response's.
    let collected = res.into_body().collect().await.unwrap();
    let got = collected.trailers().cloned().unwrap_or_default();
    assert_eq!(got.len(), 1);
    assert_eq!(got["x-checksum"], "c0ffee");
    assert_eq!(collected.to_bytes(), "hello");
}

#[tokio::test]
async fn an_h2c_upgrade_is_not_forwarded() {
    let (proxy, _lb) = gateway(Strategy::RoundRobin, &[1]).await;
    let req = Request::get(format!("http://{proxy}/headers"))
        .header("connection", "Upgrade, HTTP2-Settings")
        .header("upgrade", "h2c")
        .header("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA")
        .body(Full::default())
        .unwrap();
    let a = send(req).await;
    assert_eq!(a.status, StatusCode::OK);
    let headers = a.body;
    for name in ["connection:", "upgrade:", "http2-settings:"] {
        assert!(
            !headers.lines().any(|l| l.starts_with(name)),
            "{name} reached the backend: {headers}"
        );
    }
}

#[tokio::test]
async fn the_backend_sees_forwarding_headers_and_no_hop_by_hop_ones() {
    let (proxy, _lb) = gateway(Strategy::RoundRobin, &[1]).await;
    let req = Request::get(format!("http://{proxy}/headers"))
        .header("x-forwarded-for", "198.51.100.1")
        .header("x-forwarded-host", "forged.example")
        .header("forwarded", "for=6.6.6.6;host=forged.example;proto=https")
        .header("connection", "x-private")
        .header("x-private", "secret")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .body(Full::default())
        .unwrap();
    let a = send(req).await;
    assert_eq!(a.status, StatusCode::OK);
    let headers = a.body;
    assert!(
        // At an edge the client's own X-Forwarded-For is replaced.
        headers.contains("x-forwarded-for: 127.0.0.1\n"),
        "{headers}"
    );
    assert!(
        headers.contains(&format!("x-forwarded-host: {proxy}\n")),
        "{headers}"
    );
    assert!(headers.contains("x-forwarded-proto: http\n"), "{headers}");
    assert!(headers.contains(&format!("host: {proxy}\n")), "{headers}");
    assert!(!headers.contains("x-private"), "{headers}");
    assert!(!headers.contains("proxy-authorization"), "{headers}");
    assert!(
        !headers.lines().any(|l| l.starts_with("forwarded:")),
        "{headers}"
    );
}

/// The status line of a raw answer.
fn status_line(answer: &str) -> &str {
    answer.lines().next().unwrap_or_default()
}

#[tokio::test]
async fn an_http11_request_without_host_is_answered_400_over_a_socket() {
    let (proxy, lb) = gateway(Strategy::RoundRobin, &[1]).await;
    let answer = raw(proxy, "GET /hello HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert_eq!(status_line(&answer), "HTTP/1.1 400 Bad Request", "{answer}");
    assert!(!answer.contains("x-backend"), "{answer}");
    // Not the backend's fault.
    assert_eq!(lb.get("a").unwrap().load().failures(), 0);
    // HTTP/1.0 needs no Host.
    let answer = raw(proxy, "GET /hello HTTP/1.0\r\n\r\n").await;
    assert!(
        answer.starts_with("HTTP/1.0 200 OK") || answer.starts_with("HTTP/1.1 200 OK"),
        "{answer}"
    );
}

#[tokio::test]
async fn a_host_with_a_comma_or_a_second_port_is_answered_400_over_a_socket() {
    let (proxy, _lb) = gateway(Strategy::RoundRobin, &[1]).await;
    for host in [
        "evil.example,trusted.example",
        "front.example:80:81",
        "%65vil.example",
    ] {
        let answer = raw(
            proxy,
            &format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(
            status_line(&answer),
            "HTTP/1.1 400 Bad Request",
            "{host}: {answer}"
        );
        assert!(
            answer.ends_with("400 Bad Request: the request cannot be forwarded\n"),
            "{answer}"
        );
    }
}

#[tokio::test]
async fn connect_and_trace_are_answered_405_over_a_socket() {
    let (proxy, lb) = gateway(Strategy::RoundRobin, &[1]).await;
    for request in [
        "CONNECT internal.example:22 HTTP/1.1\r\nHost: internal.example:22\r\nConnection: close\r\n\r\n",
        "TRACE / HTTP/1.1\r\nHost: front.example\r\nConnection: close\r\n\r\n",
    ] {
        let answer = raw(proxy, request).await;
        assert_eq!(status_line(&answer), "HTTP/1.1 405 Method Not Allowed", "{answer}");
        assert!(answer.to_ascii_lowercase().contains("\r\nallow: get, head, post"), "{answer}");
    }
    assert_eq!(lb.get("a").unwrap().load().successes(), 0);
}

#[tokio::test]
async fn options_asterisk_reaches_the_backend_unrewritten_over_a_socket() {
    let addr = support::spawn_backend("a").await.unwrap();
    let backend = Backend::new(&format!("http://{addr}/api"))
        .unwrap()
        .with_id("a")
        .unwrap();
    let proxy = proxy_for(LoadBalancer::new(Strategy::RoundRobin, [backend]).unwrap()).await;
    let answer = raw_closing(proxy, "OPTIONS *").await;
    assert_eq!(status_line(&answer), "HTTP/1.1 200 OK", "{answer}");
    assert!(
        answer.contains("a: OPTIONS * host=front.example\n"),
        "{answer}"
    );
    // Any other path goes under the prefix.
    let answer = raw_closing(proxy, "GET /x").await;
    assert!(
        answer.contains("a: GET /api/x host=front.example\n"),
        "{answer}"
    );
}

#[tokio::test]
async fn a_backends_hop_by_hop_response_headers_never_reach_the_client() {
    let (proxy, _lb) = gateway(Strategy::RoundRobin, &[1]).await;
    let answer = raw_closing(proxy, "GET /hop-by-hop").await;
    assert_eq!(status_line(&answer), "HTTP/1.1 200 OK", "{answer}");
    let lower = answer.to_ascii_lowercase();
    for leaked in [
        "x-internal",
        "upgrade:",
        "h2c",
        "keep-alive",
        "connection: x-internal",
    ] {
        assert!(!lower.contains(leaked), "{leaked} leaked: {answer}");
    }
    assert!(lower.contains("x-backend: a"), "{answer}");
}

/// A backend that answers every request head with `response`, as it is,
/// and closes; the count of heads it has read.
async fn raw_backend(response: &'static str) -> (SocketAddr, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&heads);
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let counted = Arc::clone(&counted);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                counted.fetch_add(1, Ordering::SeqCst);
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (addr, heads)
}

/// The proxy in front of one [`raw_backend`].
async fn proxy_for_raw(response: &'static str) -> (SocketAddr, LoadBalancer, Arc<AtomicUsize>) {
    let (addr, heads) = raw_backend(response).await;
    let lb = LoadBalancer::new(
        Strategy::RoundRobin,
        [Backend::new(&format!("http://{addr}"))
            .unwrap()
            .with_id("raw")
            .unwrap()],
    )
    .unwrap();
    (proxy_for(lb.clone()).await, lb, heads)
}

#[tokio::test]
async fn a_response_with_both_content_length_and_chunked_is_forwarded_by_its_chunks() {
    // RFC 9112 §6.3: Transfer-Encoding wins, and the proxy removes the
    // Content-Length before forwarding. Kept, the first cut the body short
    // and the second left the client waiting for 95 bytes that never come.
    for claimed in ["2", "100"] {
        let response: &'static str = Box::leak(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {claimed}\r\nTransfer-Encoding: chunked\r\n\r\n\
                 5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
            )
            .into_boxed_str(),
        );
        let (proxy, _lb, _heads) = proxy_for_raw(response).await;
        let answer = raw_closing(proxy, "GET /x").await;
        assert_eq!(status_line(&answer), "HTTP/1.1 200 OK", "{answer}");
        let lower = answer.to_ascii_lowercase();
        assert!(!lower.contains("content-length"), "{answer}");
        assert!(lower.contains("transfer-encoding: chunked"), "{answer}");
        let a = get(proxy, "/x", None).await;
        assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, "hello world"));
    }
}

#[tokio::test]
async fn a_response_in_a_transfer_coding_other_than_chunked_is_answered_502() {
    let (proxy, _lb, heads) = proxy_for_raw(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nxyz\r\n0\r\n\r\n",
    )
    .await;
    let a = get(proxy, "/x", None).await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY, "{}", a.body);
    assert_eq!(heads.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_request_in_a_transfer_coding_other_than_chunked_never_reaches_a_backend() {
    let (proxy, lb, heads) = proxy_for_raw("HTTP/1.1 204 No Content\r\n\r\n").await;
    let cases = [
        ("gzip, chunked", "HTTP/1.1 501 Not Implemented"),
        (
            "gzip\r\nTransfer-Encoding: chunked",
            "HTTP/1.1 501 Not Implemented",
        ),
        ("chunked, chunked", "HTTP/1.1 400 Bad Request"),
        ("Chunked", "HTTP/1.1 204 No Content"),
    ];
    for (coding, status) in cases {
        let answer = raw(
            proxy,
            &format!(
                "POST /up HTTP/1.1\r\nHost: front.example\r\nTransfer-Encoding: {coding}\r\n\
                 Connection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            ),
        )
        .await;
        assert_eq!(status_line(&answer), status, "{coding}: {answer}");
    }
    // Only the plain chunked one was sent, and nothing counted against it.
    assert_eq!(heads.load(Ordering::SeqCst), 1);
    assert_eq!(lb.get("raw").unwrap().load().failures(), 0);
}

#[tokio::test]
async fn an_http10_client_is_told_close_when_the_body_can_only_end_with_the_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    // Close-delimited at the backend, so of unknown length at the proxy.
    let (proxy, _lb, _heads) =
        proxy_for_raw("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end").await;
    let mut stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
    stream
        .write_all(b"GET /x HTTP/1.0\r\nHost: front.example\r\nConnection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    // The proxy closes after the body.
    let answer = read_to_close(&mut stream).await.to_ascii_lowercase();
    assert!(answer.starts_with("http/1.0 200 ok\r\n"), "{answer}");
    assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");
    assert!(!answer.contains("keep-alive"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nuntil the end"), "{answer}");

    // A body of known length keeps an HTTP/1.0 keep-alive connection open:
    // two requests, one connection.
    let (proxy, _lb) = gateway(Strategy::RoundRobin, &[1]).await;
    let mut stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let mut answers = String::new();
    for i in 0..2 {
        stream
            .write_all(
                format!(
                    "GET /k/{i} HTTP/1.0\r\nHost: front.example\r\nConnection: keep-alive\r\n\r\n"
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("an answer on the kept connection")
            .unwrap();
        answers.push_str(&String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase());
    }
    assert_eq!(answers.matches("http/1.0 200 ok").count(), 2, "{answers}");
    assert_eq!(
        answers.matches("connection: keep-alive").count(),
        2,
        "{answers}"
    );
    assert!(answers.contains("a: get /k/1 "), "{answers}");
}

#[tokio::test]
async fn a_malformed_chunk_in_a_request_body_is_answered_400_not_502() {
    let (proxy, lb) = gateway(Strategy::RoundRobin, &[1]).await;
    for chunk in ["0x5\r\nhello", "10000000000000005\r\nhello", "5\r\nhello!!"] {
        let answer = raw(
            proxy,
            &format!(
                "POST /up HTTP/1.1\r\nHost: front.example\r\nTransfer-Encoding: chunked\r\n\r\n\
                 {chunk}\r\n0\r\n\r\n"
            ),
        )
        .await;
        assert_eq!(
            status_line(&answer),
            "HTTP/1.1 400 Bad Request",
            "{chunk}: {answer}"
        );
    }
    // The client's fault, not the backend's.
    let load = lb.get("a").unwrap().load().clone();
    assert_eq!((load.failures(), load.consecutive_failures()), (0, 0));
    assert_eq!(get(proxy, "/x", None).await.status, StatusCode::OK);
}

#[tokio::test]
async fn gateway_backend_flags_balance_servers_it_did_not_start() {
    let a = support::spawn_backend("external-a").await.unwrap();
    let b = support::spawn_backend("external-b").await.unwrap();
    let backends = [
        support::parse_backend(&format!("http://{a}=3")).unwrap(),
        support::parse_backend(&format!("http://{b}")).unwrap(),
    ];
    assert_eq!(backends[0].weight(), 3);
    assert_eq!(backends[1].weight(), 1);
    assert!(support::parse_backend("http://x=heavy").is_err());
    assert_eq!(support::parse_backend("http://x/?w=2").unwrap().weight(), 1);
    // Round robin follows the weights, as nginx's does.
    let proxy = proxy_for(LoadBalancer::new(Strategy::RoundRobin, backends).unwrap()).await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(get(proxy, "/", None).await.backend);
    }
    assert_eq!(
        seen,
        ["external-a", "external-a", "external-b", "external-a"]
    );
}

#[tokio::test]
async fn a_websocket_session_passes_through_the_worker_upstream() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let addr = support::spawn_ws_backend("game-a").await.unwrap();
    let lb = LoadBalancer::new(Strategy::RoundRobin, [format!("http://{addr}")]).unwrap();
    let proxy = proxy_for(lb).await;
    let from = std::net::IpAddr::from([127, 0, 0, 1]);
    let (mut ws, res) = support::ws_connect(proxy, from, None).await.unwrap();
    assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
    let mut texts = Vec::new();
    ws.send(Message::text("ping")).await.unwrap();
    while texts.len() < 2 {
        let message = tokio::time::timeout(std::time::Duration::from_secs(5), ws.next())
            .await
            .expect("the backend answers within 5 s")
            .expect("the connection stays open")
            .expect("a valid frame");
        if let Message::Text(text) = message {
            texts.push(text.to_string());
        }
    }
    assert_eq!(texts, ["hello from game-a", "game-a: ping"]);
    ws.close(None).await.unwrap();
}

/// `serve_connection` over an in-memory pipe, on tokio's paused clock (which
/// jumps ahead whenever every task waits), with a stack that answers `ok`:
/// the client's end, and the connection's own task.
fn paused_connection() -> (
    tokio::io::DuplexStream,
    tokio::task::JoinHandle<Result<(), tower_lb::Error>>,
) {
    paused_connection_answering(Bytes::from_static(b"ok"))
}

/// [`paused_connection`], answering `body`; the pipe holds 64 KiB.
fn paused_connection_answering(
    body: Bytes,
) -> (
    tokio::io::DuplexStream,
    tokio::task::JoinHandle<Result<(), tower_lb::Error>>,
) {
    paused_connection_to(tower::service_fn(
        move |_req: Request<tower_lb::proxy::RequestBody>| {
            let body = body.clone();
            async move { Ok::<_, tower_lb::Error>(http::Response::new(Full::new(body))) }
        },
    ))
}

/// `serve_connection` of `stack` over an in-memory pipe of 64 KiB: the
/// client's end, and the connection's own task.
fn paused_connection_to<S, B>(
    stack: S,
) -> (
    tokio::io::DuplexStream,
    tokio::task::JoinHandle<Result<(), tower_lb::Error>>,
)
where
    S: tower::Service<
            Request<tower_lb::proxy::RequestBody>,
            Response = http::Response<B>,
            Error = tower_lb::Error,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<tower_lb::BoxError>,
{
    let (client_end, server_end) = tokio::io::duplex(64 * 1024);
    let peer: SocketAddr = "192.0.2.9:40000".parse().unwrap();
    let served = tokio::spawn(tower_lb::proxy::serve_connection(
        hyper_util::rt::TokioIo::new(server_end),
        peer,
        stack,
        |_: &tower_lb::Error, _| {},
    ));
    (client_end, served)
}

/// Whether a served connection ended on one of its timeouts.
fn timed_out(error: &tower_lb::Error) -> bool {
    matches!(
        error,
        tower_lb::Error::ClientConnection {
            timed_out: true,
            ..
        }
    )
}

/// That `at` has passed on the paused clock since `start`, by less than a
/// second.
#[track_caller]
fn assert_elapsed(start: tokio::time::Instant, at: std::time::Duration) {
    let waited = start.elapsed();
    assert!(
        waited >= at && waited < at + std::time::Duration::from_secs(1),
        "{waited:?}, not {at:?}"
    );
}

/// Reads until the server closes its end (within two minutes of the paused
/// clock, or the test fails): what it sent.
async fn read_to_close<R: tokio::io::AsyncRead + Unpin>(client: &mut R) -> String {
    use tokio::io::AsyncReadExt;
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(120),
        client.read_to_end(&mut answer),
    )
    .await
    .expect("the server closes the connection")
    .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(start_paused = true)]
async fn a_head_sent_too_slowly_is_cut_after_the_header_read_timeout() {
    use tokio::io::AsyncWriteExt;
    let start = tokio::time::Instant::now();
    let (mut client, served) = paused_connection();
    // Slowloris: most of a head, then nothing more.
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: a.example\r\nX-Slow: 1")
        .await
        .unwrap();
    let answer = read_to_close(&mut client).await;
    assert_elapsed(start, tower_lb::proxy::HEADER_READ_TIMEOUT);
    // Closed without an answer, as nginx's client_header_timeout does.
    assert_eq!(answer, "");
    let error = served.await.unwrap().unwrap_err();
    assert!(timed_out(&error), "{error}");
}

#[tokio::test(start_paused = true)]
async fn a_connection_that_sends_nothing_is_closed_after_the_header_read_timeout() {
    let start = tokio::time::Instant::now();
    let (mut client, served) = paused_connection();
    assert_eq!(read_to_close(&mut client).await, "");
    assert_elapsed(start, tower_lb::proxy::HEADER_READ_TIMEOUT);
    assert!(timed_out(&served.await.unwrap().unwrap_err()));
}

#[tokio::test(start_paused = true)]
async fn a_head_trickled_a_line_at_a_time_is_cut_at_the_header_read_timeout() {
    use tokio::io::AsyncWriteExt;
    let start = tokio::time::Instant::now();
    let (mut client, served) = paused_connection();
    client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    // Slowloris proper: a new header line every 10 s, so the connection is
    // never idle for long; what is timed is the whole head.
    let trickle = async {
        for i in 0.. {
            tokio::time::sleep(std::time::Duration::from_secs(10)).await;
            let line = format!("X-Trickle-{i}: 1\r\n");
            if client.write_all(line.as_bytes()).await.is_err() {
                break;
            }
        }
    };
    let error = tokio::select! {
        served = served => served.unwrap().unwrap_err(),
        () = trickle => panic!("the trickle stopped first"),
        () = tokio::time::sleep(std::time::Duration::from_secs(120)) => {
            panic!("the connection was not cut within 120 s")
        }
    };
    assert!(timed_out(&error), "{error}");
    assert_elapsed(start, tower_lb::proxy::HEADER_READ_TIMEOUT);
}

#[tokio::test(start_paused = true)]
async fn a_slow_head_within_the_timeout_is_served_and_the_idle_connection_closed_later() {
    use tokio::io::AsyncWriteExt;
    let start = tokio::time::Instant::now();
    let (mut client, served) = paused_connection();
    // The head in three pieces, 25 s apart: complete at 50 s, within 60 s.
    client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    for piece in [&b"Host: a.example\r\n"[..], b"\r\n"] {
        tokio::time::sleep(std::time::Duration::from_secs(25)).await;
        client.write_all(piece).await.unwrap();
    }
    // Answered; then the clock starts again for the next head, which never
    // comes: the keep-alive connection is closed 60 s after the answer.
    let answer = read_to_close(&mut client).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nok"), "{answer}");
    assert_elapsed(
        start,
        std::time::Duration::from_secs(50) + tower_lb::proxy::HEADER_READ_TIMEOUT,
    );
    assert!(timed_out(&served.await.unwrap().unwrap_err()));
}

#[tokio::test(start_paused = true)]
async fn a_client_that_stops_reading_is_cut_after_the_send_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let start = tokio::time::Instant::now();
    // 1 MiB: far more than the pipe holds, so the writes stall.
    let (mut client, served) = paused_connection_answering(Bytes::from(vec![b'x'; 1 << 20]));
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n")
        .await
        .unwrap();
    // The client reads nothing: the connection ends on its own.
    let error = tokio::time::timeout(std::time::Duration::from_secs(120), served)
        .await
        .expect("the connection ends")
        .unwrap()
        .unwrap_err();
    assert_elapsed(start, tower_lb::proxy::SEND_TIMEOUT);
    let io = std::error::Error::source(&error)
        .and_then(|e| e.downcast_ref::<std::io::Error>())
        .unwrap_or_else(|| panic!("an I/O error: {error:?}"));
    assert_eq!(io.kind(), std::io::ErrorKind::TimedOut, "{io}");
    // What was sent before is there, then the end: not the whole body.
    let mut got = Vec::new();
    client.read_to_end(&mut got).await.unwrap();
    assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert!(got.len() < 1 << 20, "{}", got.len());
}

#[tokio::test(start_paused = true)]
async fn a_slow_but_steady_reader_gets_the_whole_body() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = vec![b'y'; 512 * 1024];
    let (mut client, served) = paused_connection_answering(Bytes::from(body.clone()));
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    // 16 KiB every 50 s: 32 reads, 26 minutes in all, none 60 s apart.
    let mut got = Vec::new();
    let mut chunk = vec![0; 16 * 1024];
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(50)).await;
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), client.read(&mut chunk))
            .await
            .expect("data or the end within 5 s")
            .unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&chunk[..n]);
    }
    assert!(got.ends_with(&body), "{} bytes", got.len());
    served.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn each_head_on_a_keep_alive_connection_gets_its_own_header_read_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let start = tokio::time::Instant::now();
    let (mut client, served) = paused_connection();
    let mut answers = Vec::new();
    // Two quick requests, 30 s apart; each answer is read in full.
    for i in 0..2 {
        if i > 0 {
            tokio::time::sleep(std::time::Duration::from_secs(30)).await;
        }
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n")
            .await
            .unwrap();
        let mut chunk = [0u8; 1024];
        while !answers.ends_with(b"\r\n\r\nok") {
            let n = client.read(&mut chunk).await.unwrap();
            assert_ne!(n, 0, "closed early");
            answers.extend_from_slice(&chunk[..n]);
        }
        answers.clear();
    }
    // The second answer went at 30 s; 10 s later, most of a third head,
    // then nothing: the clock started when the answer went, not when the
    // third head began, so the connection is closed at 30 + 60 s.
    tokio::time::sleep(std::time::Duration::from_secs(10)).await;
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: a.")
        .await
        .unwrap();
    assert_eq!(read_to_close(&mut client).await, "");
    assert_elapsed(
        start,
        std::time::Duration::from_secs(30) + tower_lb::proxy::HEADER_READ_TIMEOUT,
    );
    assert!(timed_out(&served.await.unwrap().unwrap_err()));
}

/// A response body of two chunks 90 s apart: a long poll, or server-sent
/// events with a quiet spell.
struct Pausing {
    sent: u8,
    pause: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl hyper::body::Body for Pausing {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        use std::future::Future;
        use std::task::Poll;
        match self.sent {
            0 => {}
            1 => {
                if self.pause.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
            }
            _ => return Poll::Ready(None),
        }
        self.sent += 1;
        Poll::Ready(Some(Ok(hyper::body::Frame::data(Bytes::from_static(
            b"event\n",
        )))))
    }
}

#[tokio::test(start_paused = true)]
async fn a_response_that_pauses_longer_than_either_timeout_is_not_cut() {
    use tokio::io::AsyncWriteExt;
    let start = tokio::time::Instant::now();
    let pausing = tower::service_fn(|_req: Request<tower_lb::proxy::RequestBody>| async {
        let body = Pausing {
            sent: 0,
            pause: Box::pin(tokio::time::sleep(std::time::Duration::from_secs(90))),
        };
        Ok::<_, tower_lb::Error>(http::Response::new(body))
    });
    let (mut client, served) = paused_connection_to(pausing);
    client
        .write_all(b"GET /events HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = read_to_close(&mut client).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.ends_with("event\n\r\n0\r\n\r\n"), "{answer}");
    assert_eq!(answer.matches("event\n").count(), 2, "{answer}");
    assert!(start.elapsed() >= std::time::Duration::from_secs(90));
    served.await.unwrap().unwrap();
}

/// A loopback backend that switches every request to `websocket` and then
/// echoes what it reads; when its side of the tunnel closed, once it has.
async fn echoing_upgrade_backend() -> (
    SocketAddr,
    Arc<std::sync::Mutex<Option<tokio::time::Instant>>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let closed = Arc::new(std::sync::Mutex::new(None));
    let seen = Arc::clone(&closed);
    tokio::spawn(async move {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        stream
            .write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n")
            .await
            .unwrap();
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if stream.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
        *seen.lock().unwrap() = Some(tokio::time::Instant::now());
    });
    (addr, closed)
}

#[tokio::test(start_paused = true)]
async fn a_websocket_tunnel_quiet_both_ways_for_the_read_timeout_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (addr, backend_closed) = echoing_upgrade_backend().await;
    let lb = LoadBalancer::new(Strategy::RoundRobin, [format!("http://{addr}")]).unwrap();
    let stack = ServiceBuilder::new()
        .layer(LoadBalanceLayer::new(lb))
        .layer(DirectorLayer::new(ProxyDirector::new()))
        .service(tower_lb::proxy::WorkerUpstream::new());
    let (mut client, _served) = paused_connection_to(stack);
    client
        .write_all(b"GET /ws HTTP/1.1\r\nHost: front.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = client.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the 101");
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");

    // Traffic 50 s apart, 250 s in all: never quiet for 60 s, never cut.
    for i in 0..5u8 {
        tokio::time::sleep(std::time::Duration::from_secs(50)).await;
        client.write_all(&[b'a' + i]).await.unwrap();
        let n = client.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], &[b'a' + i], "echo {i}");
    }
    // Then silence: both sides are closed 60 s after the last byte.
    let last = tokio::time::Instant::now();
    assert_eq!(read_to_close(&mut client).await, "");
    assert_elapsed(last, tower_lb::proxy::DEFAULT_READ_TIMEOUT);
    for _ in 0..100 {
        if backend_closed.lock().unwrap().is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let closed = backend_closed
        .lock()
        .unwrap()
        .expect("the backend's side closed");
    assert!(
        closed.duration_since(last)
            < tower_lb::proxy::DEFAULT_READ_TIMEOUT + std::time::Duration::from_secs(1)
    );
}

/// A loopback backend that reads a chunked upload to its end and answers
/// `200` with what it got; whether its connection was closed before the
/// upload ended.
async fn upload_backend() -> (SocketAddr, Arc<std::sync::atomic::AtomicBool>) {
    upload_backend_answering(true).await
}

/// [`upload_backend`], or one that never answers once it has the upload.
async fn upload_backend_answering(
    answers: bool,
) -> (SocketAddr, Arc<std::sync::atomic::AtomicBool>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = Arc::clone(&cut);
    tokio::spawn(async move {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.ends_with(b"0\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    seen.store(true, Ordering::SeqCst);
                    return;
                }
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        if !answers {
            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        }
        let body = format!("got {} bytes", got.len());
        let _ = stream
            .write_all(
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            )
            .await;
    });
    (addr, cut)
}

/// The gateway's stack with its 30 s response timeout (whose clock starts
/// once a request body is sent) in front of the backend at `addr`, served
/// over a paused in-memory connection.
fn paused_timed_gateway(addr: SocketAddr) -> (tokio::io::DuplexStream, LoadBalancer) {
    let lb = LoadBalancer::new(Strategy::RoundRobin, [format!("http://{addr}")]).unwrap();
    let stack = ServiceBuilder::new()
        .layer(LoadBalanceLayer::new(lb.clone()))
        .layer(tower_lb::layer::ResponseTimeoutLayer::new(
            std::time::Duration::from_secs(30),
            tokio::time::sleep,
        ))
        .layer(DirectorLayer::new(ProxyDirector::new()))
        .service(tower_lb::proxy::WorkerUpstream::new());
    let (client, _served) = paused_connection_to(stack);
    (client, lb)
}

/// Reads an answer's head (within two minutes of the paused clock).
async fn read_answer_head<R: tokio::io::AsyncRead + Unpin>(client: &mut R) -> String {
    use tokio::io::AsyncReadExt;
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(std::time::Duration::from_secs(120), client.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// That the answer, from now, is a `504` 30 s later (the response
/// timeout), counted against the backend.
async fn expect_counted_504_in_30s(client: &mut tokio::io::DuplexStream, lb: &LoadBalancer) {
    let sent = tokio::time::Instant::now();
    let answer = read_answer_head(client).await;
    assert_elapsed(sent, std::time::Duration::from_secs(30));
    assert!(
        answer.starts_with("HTTP/1.1 504 Gateway Timeout\r\n"),
        "{answer}"
    );
    assert_eq!(lb.stats()[0].failures, 1);
}

/// A loopback backend that reads until what it got ends with `until`, then
/// holds the connection for an hour without a word.
async fn silent_backend(until: &'static [u8]) -> SocketAddr {
    use tokio::io::AsyncReadExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        let mut got = Vec::new();
        let mut buf = [0u8; 1];
        while !got.ends_with(until) {
            if stream.read(&mut buf).await.unwrap_or(0) == 0 {
                return;
            }
            got.push(buf[0]);
        }
        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        drop(stream);
    });
    addr
}

/// The gateway's stack (with its 30 s response timeout) in front of one
/// [`upload_backend`], served over a paused in-memory connection.
async fn paused_upload() -> (
    tokio::io::DuplexStream,
    LoadBalancer,
    Arc<std::sync::atomic::AtomicBool>,
) {
    paused_upload_to(upload_backend().await).await
}

async fn paused_upload_to(
    (addr, cut): (SocketAddr, Arc<std::sync::atomic::AtomicBool>),
) -> (
    tokio::io::DuplexStream,
    LoadBalancer,
    Arc<std::sync::atomic::AtomicBool>,
) {
    use tokio::io::AsyncWriteExt;

    let (mut client, lb) = paused_timed_gateway(addr);
    client
        .write_all(b"POST /up HTTP/1.1\r\nHost: front.example\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        .await
        .unwrap();
    (client, lb, cut)
}

#[tokio::test(start_paused = true)]
async fn an_upload_that_stops_is_answered_408_after_the_client_body_timeout() {
    let start = tokio::time::Instant::now();
    let (mut client, lb, cut) = paused_upload().await;
    // Then nothing more: a slow POST.
    let answer = read_to_close(&mut client).await;
    assert_elapsed(start, tower_lb::proxy::DEFAULT_CLIENT_BODY_TIMEOUT);
    assert!(
        answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{answer}"
    );
    assert!(
        answer.ends_with("408 Request Timeout: the request body stopped arriving\n"),
        "{answer}"
    );
    // The backend connection it held is closed, and not counted against it.
    for _ in 0..100 {
        if cut.load(Ordering::SeqCst) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(
        cut.load(Ordering::SeqCst),
        "the backend connection is closed"
    );
    assert_eq!(lb.stats()[0].failures, 0);
}

#[tokio::test(start_paused = true)]
async fn a_slow_but_steady_upload_is_not_cut() {
    use tokio::io::AsyncWriteExt;

    let (mut client, _lb, cut) = paused_upload().await;
    // A chunk every 50 s for 250 s: never 60 s without a byte.
    for _ in 0..5 {
        tokio::time::sleep(std::time::Duration::from_secs(50)).await;
        client.write_all(b"1\r\nx\r\n").await.unwrap();
    }
    client.write_all(b"0\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&answer).contains("bytes") {
        let n = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            tokio::io::AsyncReadExt::read(&mut client, &mut buf),
        )
        .await
        .expect("an answer")
        .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..n]);
    }
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(!cut.load(Ordering::SeqCst));
}

#[tokio::test(start_paused = true)]
async fn the_response_timeout_starts_once_the_upload_is_sent() {
    use tokio::io::AsyncWriteExt;

    let (mut client, lb, _cut) = paused_upload_to(upload_backend_answering(false).await).await;
    // 100 s of upload, a chunk every 50 s; then the backend says nothing.
    for _ in 0..2 {
        tokio::time::sleep(std::time::Duration::from_secs(50)).await;
        client.write_all(b"1\r\nx\r\n").await.unwrap();
    }
    client.write_all(b"0\r\n\r\n").await.unwrap();
    // 30 s after the body, not after the start: the backend's delay.
    expect_counted_504_in_30s(&mut client, &lb).await;
}

#[tokio::test(start_paused = true)]
async fn a_backend_that_stops_taking_the_upload_is_cut_after_the_response_timeout() {
    use tokio::io::AsyncWriteExt;

    // Reads the head, then neither the body nor answers (nginx's
    // `proxy_send_timeout` case).
    let (client, lb) = paused_timed_gateway(silent_backend(b"\r\n\r\n").await);
    let (mut reader, mut writer) = tokio::io::split(client);
    // 64 MiB: more than the socket buffers between proxy and backend hold.
    const LEN: usize = 64 << 20;
    tokio::spawn(async move {
        let head =
            format!("PUT /up HTTP/1.1\r\nHost: front.example\r\nContent-Length: {LEN}\r\n\r\n");
        writer.write_all(head.as_bytes()).await.unwrap();
        let chunk = vec![b'x'; 64 << 10];
        for _ in 0..LEN / chunk.len() {
            if writer.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    let answer = read_answer_head(&mut reader).await;
    assert!(
        answer.starts_with("HTTP/1.1 504 Gateway Timeout\r\n"),
        "{answer}"
    );
    // The backend's stall: counted against it.
    assert_eq!(lb.stats()[0].failures, 1);
}

#[tokio::test(start_paused = true)]
async fn a_content_length_upload_starts_the_response_clock_at_its_end() {
    use tokio::io::AsyncWriteExt;

    // Reads a 10-byte body, then says nothing.
    let (mut client, lb) = paused_timed_gateway(silent_backend(b"0123456789").await);
    client
        .write_all(b"PUT /up HTTP/1.1\r\nHost: front.example\r\nContent-Length: 10\r\n\r\n01234")
        .await
        .unwrap();
    // The rest 40 s later: past the 30 s limit from the start, not from the end.
    tokio::time::sleep(std::time::Duration::from_secs(40)).await;
    client.write_all(b"56789").await.unwrap();
    expect_counted_504_in_30s(&mut client, &lb).await;
}

#[tokio::test(start_paused = true)]
async fn a_short_upload_that_stops_while_read_whole_is_answered_408() {
    use tokio::io::AsyncWriteExt;
    use tower_lb::layer::{NextUpstreamLayer, ReplayBody};

    let (addr, heads) = raw_backend("HTTP/1.1 204 No Content\r\n\r\n").await;
    let lb = LoadBalancer::new(Strategy::RoundRobin, [format!("http://{addr}")]).unwrap();
    // As the gateway: a short body is read whole before the first attempt.
    let stack = ServiceBuilder::new()
        .layer(NextUpstreamLayer::new().body_timeout(
            tower_lb::proxy::DEFAULT_CLIENT_BODY_TIMEOUT,
            tokio::time::sleep,
        ))
        .layer(LoadBalanceLayer::new(lb.clone()))
        .layer(DirectorLayer::new(ProxyDirector::new()))
        .service(tower_lb::proxy::WorkerUpstream::<
            ReplayBody<tower_lb::proxy::RequestBody>,
        >::new());
    let (mut client, _served) = paused_connection_to(stack);
    let start = tokio::time::Instant::now();
    client
        .write_all(
            b"POST /up HTTP/1.1\r\nHost: front.example\r\nContent-Length: 100\r\n\r\n0123456789",
        )
        .await
        .unwrap();
    let answer = read_to_close(&mut client).await;
    assert_elapsed(start, tower_lb::proxy::DEFAULT_CLIENT_BODY_TIMEOUT);
    assert!(
        answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{answer}"
    );
    // No backend was contacted, and none is blamed.
    assert_eq!(heads.load(Ordering::SeqCst), 0);
    assert_eq!(lb.stats()[0].failures, 0);
}
