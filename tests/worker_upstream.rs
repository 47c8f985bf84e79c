//! `WorkerUpstream`'s pool over real loopback sockets: keep-alive to the
//! backend, a second connection only while the first is busy, a closed
//! connection replaced (closed with the response, or later while idle), a
//! bodiless response freeing its connection at once, the connect timeout.
//! (The whole gateway suite in tests/gateway.rs runs over it too.)

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
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tower::{Service, ServiceExt};
use tower_lb::proxy::{ConnectError, UpstreamBody, WorkerUpstream};
use tower_lb::BoxError;

/// A keep-alive backend on loopback that counts the connections it
/// accepted; it answers `ok`, 4 MiB on `/big` (more than a connection
/// buffers, so the connection stays busy until the body is read), and
/// closes after one request on `/close`.
async fn counting_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    let (addr, accepted, _closed) = counting_backend_with_closes().await;
    (addr, accepted)
}

/// [`counting_backend`], also counting the connections that were closed.
async fn counting_backend_with_closes() -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let closed = Arc::new(AtomicUsize::new(0));
    let closes = Arc::clone(&closed);
    let (addr, accepted) = raw_backend(move |stream| {
        let closes = Arc::clone(&closes);
        async move {
            let svc = service_fn(|req: Request<hyper::body::Incoming>| async move {
                if req.uri().path() == "/echo" {
                    // The whole request body back, once it has all come.
                    let got = req.into_body().collect().await.unwrap().to_bytes();
                    return Ok::<_, Infallible>(Response::new(Full::new(got)));
                }
                let body = match req.uri().path() {
                    "/big" => Bytes::from(vec![b'x'; 4 << 20]),
                    "/empty" => Bytes::new(),
                    _ => Bytes::from_static(b"ok"),
                };
                let mut res = Response::new(Full::new(body));
                if req.uri().path() == "/empty" {
                    *res.status_mut() = http::StatusCode::NO_CONTENT;
                }
                if req.uri().path() == "/close" {
                    res.headers_mut()
                        .insert(http::header::CONNECTION, "close".parse().unwrap());
                }
                Ok::<_, Infallible>(res)
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
            closes.fetch_add(1, Ordering::SeqCst);
        }
    })
    .await;
    (addr, accepted, closed)
}

async fn get(
    upstream: &mut WorkerUpstream<Full<Bytes>>,
    addr: SocketAddr,
    path: &str,
) -> Response<UpstreamBody<Full<Bytes>>> {
    send(upstream, Request::get(format!("http://{addr}{path}"))).await
}

/// A GET of `/`, answered `ok`.
async fn get_ok(upstream: &mut WorkerUpstream<Full<Bytes>>, addr: SocketAddr) {
    let res = get(upstream, addr, "/").await;
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "ok");
}

/// A request body streamed as it is sent: frames go in through the
/// sender, and the body ends when the sender is dropped.
type Frames = std::pin::Pin<
    Box<dyn futures_util::Stream<Item = Result<http_body::Frame<Bytes>, Infallible>> + Send>,
>;
type Streamed = http_body_util::StreamBody<Frames>;

fn streamed_body() -> (
    tokio::sync::mpsc::Sender<Result<http_body::Frame<Bytes>, Infallible>>,
    Streamed,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|frame| (frame, rx))
    });
    (tx, http_body_util::StreamBody::new(Box::pin(frames)))
}

async fn send(
    upstream: &mut WorkerUpstream<Full<Bytes>>,
    req: http::request::Builder,
) -> Response<UpstreamBody<Full<Bytes>>> {
    let req = req.body(Full::default()).unwrap();
    upstream.ready().await.unwrap().call(req).await.unwrap()
}

#[tokio::test(flavor = "current_thread")]
async fn sequential_requests_share_one_backend_connection() {
    let (addr, accepted) = counting_backend().await;
    let mut upstream = WorkerUpstream::new();
    for _ in 0..20 {
        get_ok(&mut upstream, addr).await;
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
    get_ok(&mut upstream, addr).await;
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

#[tokio::test(flavor = "current_thread")]
async fn a_response_without_a_body_frees_its_connection_at_once() {
    let (addr, accepted) = counting_backend().await;
    let mut upstream = WorkerUpstream::new();
    // Bodies never polled, as a server does not poll a body that has ended:
    // HEAD, 204. Each connection is back in the pool with the head.
    let mut kept = Vec::new();
    for _ in 0..5 {
        let head = send(&mut upstream, Request::head(format!("http://{addr}/"))).await;
        assert!(http_body::Body::is_end_stream(head.body()));
        kept.push(head);
        let empty = get(&mut upstream, addr, "/empty").await;
        assert_eq!(empty.status(), http::StatusCode::NO_CONTENT);
        kept.push(empty);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

/// A backend on raw sockets: `serve` handles each accepted connection on
/// a task of its own. Counts the connections.
async fn raw_backend<F, Fut>(serve: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(stream));
        }
    });
    (addr, accepted)
}

/// Reads up to the end of a request head; `None` if the client closed.
async fn read_head(stream: &mut tokio::net::TcpStream, buf: &mut [u8]) -> Option<Vec<u8>> {
    let mut seen = Vec::new();
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    Some(seen)
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

/// A backend that answers one keep-alive request per connection and closes
/// the connection `idle_close` later, as a backend's keep-alive timeout
/// does.
async fn closing_backend(idle_close: std::time::Duration) -> (SocketAddr, Arc<AtomicUsize>) {
    raw_backend(move |mut stream| async move {
        let mut buf = vec![0u8; 4096];
        if read_head(&mut stream, &mut buf).await.is_some() {
            let _ = stream.write_all(OK).await;
            tokio::time::sleep(idle_close).await;
            // Dropped: closed while idle in the client's pool.
        }
    })
    .await
}

#[tokio::test(flavor = "current_thread")]
async fn a_connection_the_backend_closed_while_idle_is_not_used() {
    let (addr, accepted) = closing_backend(std::time::Duration::from_millis(20)).await;
    let mut upstream = WorkerUpstream::new();
    for round in 1..=3 {
        get_ok(&mut upstream, addr).await;
        // Long enough for the backend to close the idle connection: the
        // next request sees that when it takes the connection, and opens
        // another instead of failing.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert_eq!(accepted.load(Ordering::SeqCst), round);
    }
}

#[test]
fn a_long_idle_connection_is_looked_at_in_the_socket() {
    // The backend runs on a thread and runtime of its own, so it closes
    // the idle connection while the client's runtime is blocked and hears
    // nothing of it: only a look at the socket itself can tell.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            tx.send(closing_backend(std::time::Duration::from_millis(20)).await)
                .unwrap();
            std::future::pending::<()>().await
        })
    });
    let (addr, accepted) = rx.recv().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut upstream = WorkerUpstream::new();
        get_ok(&mut upstream, addr).await;
        // Blocks this runtime: its I/O driver does not hear of the close.
        std::thread::sleep(std::time::Duration::from_millis(1200));
        // A POST is not sent again once written: it is answered only if
        // the closed connection was seen before the request went out.
        let post = Request::post(format!("http://{addr}/"))
            .body(Full::from("x"))
            .unwrap();
        let res = upstream.ready().await.unwrap().call(post).await.unwrap();
        assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    });
}

/// A listener that never accepts, its queue filled: the kernel drops
/// further SYNs, so a connect to it hangs. Keep all three alive.
async fn hanging_listener() -> (
    tokio::net::TcpListener,
    Vec<tokio::net::TcpStream>,
    SocketAddr,
) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        match tokio::time::timeout(
            std::time::Duration::from_millis(100),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            Ok(Ok(stream)) => fillers.push(stream),
            _ => break,
        }
    }
    (listener, fillers, addr)
}

/// Sends a request to `addr` and checks that it fails as a connect that
/// timed out.
async fn assert_connect_times_out(upstream: &mut WorkerUpstream<Full<Bytes>>, addr: SocketAddr) {
    let req = Request::get(format!("http://{addr}/"))
        .body(Full::default())
        .unwrap();
    let error: BoxError = upstream.ready().await.unwrap().call(req).await.unwrap_err();
    let connect = error
        .downcast_ref::<ConnectError>()
        .unwrap_or_else(|| panic!("not a ConnectError: {error}"));
    assert_eq!(connect.io_error().kind(), std::io::ErrorKind::TimedOut);
}

#[tokio::test(flavor = "current_thread")]
async fn a_connect_that_hangs_times_out_as_a_connect_error() {
    let (_listener, _fillers, addr) = hanging_listener().await;
    let mut upstream =
        WorkerUpstream::<Full<Bytes>>::new().connect_timeout(std::time::Duration::from_millis(200));
    let started = std::time::Instant::now();
    assert_connect_times_out(&mut upstream, addr).await;
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
}

#[tokio::test(flavor = "current_thread")]
async fn by_default_a_connect_gives_up_after_nginxs_60_seconds() {
    // The queue is filled on the real clock, then the clock is paused so
    // the 60 s pass at once.
    let (_listener, fillers, addr) = hanging_listener().await;
    assert!(!fillers.is_empty());
    tokio::time::pause();
    let mut upstream = WorkerUpstream::<Full<Bytes>>::new();
    let started = tokio::time::Instant::now();
    assert_connect_times_out(&mut upstream, addr).await;
    let waited = started.elapsed();
    let limit = tower_lb::proxy::DEFAULT_CONNECT_TIMEOUT;
    assert!(
        waited >= limit && waited < limit + std::time::Duration::from_secs(1),
        "gave up after {waited:?}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_refused_connect_is_a_connect_error() {
    // A port nothing listens on: bound, then closed.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let mut upstream = WorkerUpstream::<Full<Bytes>>::new();
    let req = Request::get(format!("http://{addr}/"))
        .body(Full::default())
        .unwrap();
    let error = upstream.ready().await.unwrap().call(req).await.unwrap_err();
    let connect = error
        .downcast_ref::<ConnectError>()
        .expect("a ConnectError");
    assert_eq!(
        connect.io_error().kind(),
        std::io::ErrorKind::ConnectionRefused
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_large_body_read_slowly_arrives_whole_and_its_connection_is_reused() {
    let (addr, accepted) = counting_backend().await;
    let mut upstream = WorkerUpstream::new();
    let mut body = get(&mut upstream, addr, "/big").await.into_body();
    // A slow reader: the body drives the connection, frame by frame.
    let mut total = 0;
    let mut frames = 0;
    while let Some(frame) = body.frame().await {
        let data = frame.unwrap().into_data().unwrap();
        assert!(data.iter().all(|&b| b == b'x'));
        total += data.len();
        frames += 1;
        if frames % 16 == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }
    assert_eq!(total, 4 << 20);
    assert!(
        frames > 1,
        "read in one frame: the test reads nothing slowly"
    );
    get_ok(&mut upstream, addr).await;
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "current_thread")]
async fn a_request_body_streamed_over_time_reaches_the_backend_whole() {
    let (addr, accepted) = counting_backend().await;
    let mut upstream = WorkerUpstream::<Streamed>::new();
    let (tx, body) = streamed_body();
    let req = Request::post(format!("http://{addr}/echo"))
        .body(body)
        .unwrap();
    let sending = tokio::spawn(async move {
        for i in 0..50u8 {
            let chunk = Bytes::from(vec![b'a' + i % 26; 10_000]);
            tx.send(Ok(http_body::Frame::data(chunk))).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    });
    // The response waits for the whole body: the request's future must
    // keep writing it (the connection is driven from here, not a task).
    let res = upstream.ready().await.unwrap().call(req).await.unwrap();
    sending.await.unwrap();
    let echoed = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(echoed.len(), 500_000);
    for (i, chunk) in echoed.chunks(10_000).enumerate() {
        assert!(chunk.iter().all(|&b| b == b'a' + (i % 26) as u8));
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "current_thread")]
async fn an_upload_answered_early_keeps_going_while_the_response_body_is_read() {
    // The backend answers the head at once, reads the whole (chunked)
    // upload, then ends the body: the upload, fed from another task, must
    // keep moving after the response head was handed over, driven only by
    // the reading of the response body.
    let (addr, _) = raw_backend(|mut stream| async move {
        let mut buf = vec![0u8; 64 * 1024];
        let Some(mut seen) = read_head(&mut stream, &mut buf).await else {
            return;
        };
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            .await
            .unwrap();
        while !seen.ends_with(b"0\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
        stream.write_all(b"4\r\ndone\r\n0\r\n\r\n").await.unwrap();
    })
    .await;
    let mut upstream = WorkerUpstream::<Streamed>::new();
    let (tx, body) = streamed_body();
    let req = Request::post(format!("http://{addr}/upload"))
        .body(body)
        .unwrap();
    let sending = tokio::spawn(async move {
        for _ in 0..20 {
            let chunk = Bytes::from(vec![b'x'; 1_000]);
            tx.send(Ok(http_body::Frame::data(chunk))).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    });
    let limit = std::time::Duration::from_secs(10);
    let res = tokio::time::timeout(limit, async {
        upstream.ready().await.unwrap().call(req).await.unwrap()
    })
    .await
    .expect("the head arrives");
    assert!(
        !sending.is_finished(),
        "the head came before the upload ended"
    );
    let body = tokio::time::timeout(limit, res.into_body().collect())
        .await
        .expect("the upload went on and the body ended")
        .unwrap()
        .to_bytes();
    assert_eq!(&body[..], b"done");
    sending.await.unwrap();
}

/// A backend on raw sockets: a POST is answered `413` at once, before its
/// body is read, and the connection is kept open (its body never read); a
/// GET is answered `ok`.
async fn refusing_upload_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    raw_backend(|mut stream| async move {
        let mut buf = vec![0u8; 65536];
        while let Some(head) = read_head(&mut stream, &mut buf).await {
            if head.starts_with(b"POST") {
                let _ = stream
                    .write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n")
                    .await;
                // The upload is never read: the connection idles.
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                }
                return;
            }
            let _ = stream.write_all(OK).await;
        }
    })
    .await
}

#[tokio::test(flavor = "current_thread")]
async fn a_connection_still_writing_an_upload_is_not_pooled() {
    let (addr, accepted) = refusing_upload_backend().await;
    let (tx, body) = streamed_body();
    let mut uploads = WorkerUpstream::<Streamed>::new();
    let req = Request::post(format!("http://{addr}/upload"))
        .header("content-length", "1000000")
        .body(body)
        .unwrap();
    tx.send(Ok(http_body::Frame::data(Bytes::from(vec![b'u'; 1000]))))
        .await
        .unwrap();
    let refused = uploads.ready().await.unwrap().call(req).await.unwrap();
    // Answered before the upload ended (the sender is still open): the
    // connection is still writing it and must not be handed to the next
    // request, which would wait on that upload.
    assert_eq!(refused.status(), http::StatusCode::PAYLOAD_TOO_LARGE);
    let req = Request::get(format!("http://{addr}/"))
        .body(http_body_util::StreamBody::new(
            Box::pin(futures_util::stream::empty()) as Frames,
        ))
        .unwrap();
    let res = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        uploads.ready().await.unwrap().call(req),
    )
    .await
    .expect("the GET waited on a connection busy with another upload")
    .unwrap();
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "ok");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    drop(tx);
}

#[tokio::test(flavor = "current_thread")]
async fn a_chunked_response_with_trailers_frees_its_connection_at_the_trailers() {
    use http_body_util::StreamBody;

    let (addr, accepted) = raw_backend(|stream| async move {
        let svc = service_fn(|_req: Request<hyper::body::Incoming>| async move {
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().unwrap());
            let frames = vec![
                Ok::<_, Infallible>(http_body::Frame::data(Bytes::from_static(b"chunk"))),
                Ok(http_body::Frame::trailers(trailers)),
            ];
            let mut res = Response::new(StreamBody::new(futures_util::stream::iter(frames)));
            res.headers_mut()
                .insert(http::header::TRAILER, "grpc-status".parse().unwrap());
            Ok::<_, Infallible>(res)
        });
        let _ = http1::Builder::new()
            .serve_connection(TokioIo::new(stream), svc)
            .await;
    })
    .await;
    let mut upstream = WorkerUpstream::new();
    for _ in 0..5 {
        let req = Request::get(format!("http://{addr}/"))
            .header(http::header::TE, "trailers")
            .body(Full::<Bytes>::default())
            .unwrap();
        let mut body = upstream
            .ready()
            .await
            .unwrap()
            .call(req)
            .await
            .unwrap()
            .into_body();
        // Read as hyper's server reads: up to the trailers, then dropped.
        let mut saw_trailers = false;
        while let Some(frame) = body.frame().await {
            let frame = frame.unwrap();
            if let Some(trailers) = frame.trailers_ref() {
                assert_eq!(trailers["grpc-status"], "0");
                saw_trailers = true;
                break;
            }
        }
        assert!(saw_trailers);
        drop(body);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[test]
fn the_response_body_is_send_and_sync_as_hypers_is() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<UpstreamBody<Full<Bytes>>>();
    send_sync::<UpstreamBody<hyper::body::Incoming>>();
    fn unpin<T: Unpin>() {}
    unpin::<UpstreamBody<Full<Bytes>>>();
}

#[tokio::test(flavor = "current_thread")]
async fn an_idle_connection_past_the_idle_timeout_is_closed_not_reused() {
    let (addr, accepted, closed) = counting_backend_with_closes().await;
    let mut upstream = WorkerUpstream::new().idle_timeout(std::time::Duration::from_millis(50));
    for _ in 0..3 {
        get_ok(&mut upstream, addr).await;
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "reused within the timeout"
    );
    tokio::time::sleep(std::time::Duration::from_millis(120)).await;
    get_ok(&mut upstream, addr).await;
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "a new connection after the timeout"
    );
    assert_eq!(settled(&closed, 1).await, 1, "the expired one was closed");
}

/// `counter` once it reaches `want`, or what it is after 2 s.
async fn settled(counter: &AtomicUsize, want: usize) -> usize {
    for _ in 0..200 {
        if counter.load(Ordering::SeqCst) >= want {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    counter.load(Ordering::SeqCst)
}

#[tokio::test(flavor = "current_thread")]
async fn a_backend_no_longer_used_is_left_no_open_connection() {
    let (gone, _, gone_closed) = counting_backend_with_closes().await;
    let (other, _, _) = counting_backend_with_closes().await;
    let mut upstream = WorkerUpstream::new().idle_timeout(std::time::Duration::from_millis(50));
    let res = get(&mut upstream, gone, "/").await;
    res.into_body().collect().await.unwrap();
    // `gone` leaves the set: nothing asks for it again. Past the idle
    // timeout, the next new backend the pool meets sweeps it.
    tokio::time::sleep(std::time::Duration::from_millis(120)).await;
    assert_eq!(gone_closed.load(Ordering::SeqCst), 0);
    let res = get(&mut upstream, other, "/").await;
    res.into_body().collect().await.unwrap();
    assert_eq!(settled(&gone_closed, 1).await, 1);
}

/// A backend that answers a request with a head promising ten bytes, and
/// five of them, then goes quiet (the connection stays open); the
/// connections it accepted.
async fn stalling_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    raw_backend(|mut stream| async move {
        let mut buf = [0u8; 4096];
        if read_head(&mut stream, &mut buf).await.is_some() {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello")
                .await;
            // Holds the connection open, silent, for an hour.
            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_backend_that_goes_quiet_mid_body_is_cut_after_the_read_timeout() {
    let (addr, accepted) = stalling_backend().await;
    let mut upstream = WorkerUpstream::new();
    let res = get(&mut upstream, addr, "/").await;
    let start = tokio::time::Instant::now();
    let mut body = res.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "hello");
    let error = tokio::time::timeout(std::time::Duration::from_secs(120), body.frame())
        .await
        .expect("the body ends before the test's own limit")
        .expect("an error, not the end")
        .unwrap_err();
    let waited = start.elapsed();
    let io = error
        .downcast_ref::<std::io::Error>()
        .unwrap_or_else(|| panic!("an I/O error: {error:?}"));
    assert_eq!(io.kind(), std::io::ErrorKind::TimedOut, "{io}");
    let limit = tower_lb::proxy::DEFAULT_READ_TIMEOUT;
    assert!(
        waited >= limit && waited < limit + std::time::Duration::from_secs(1),
        "{waited:?}"
    );
    // The connection went with the body: the next request opens another.
    drop(body);
    let _head = get(&mut upstream, addr, "/").await;
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn without_a_read_timeout_a_quiet_backend_is_waited_for() {
    let (addr, _accepted) = stalling_backend().await;
    let mut upstream = WorkerUpstream::new().read_timeout(None);
    let mut body = get(&mut upstream, addr, "/").await.into_body();
    assert_eq!(
        body.frame().await.unwrap().unwrap().into_data().unwrap(),
        "hello"
    );
    // Ten minutes of the paused clock later, still waiting.
    let waited = tokio::time::timeout(std::time::Duration::from_secs(600), body.frame()).await;
    assert!(waited.is_err(), "the body ended: {waited:?}");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_slow_but_steady_backend_body_is_not_cut() {
    // Each answer: ten chunks of a chunked body, 50 s apart: 500 s in all,
    // none 60 s apart.
    let (addr, accepted) = raw_backend(|mut stream| async move {
        let mut buf = [0u8; 4096];
        while read_head(&mut stream, &mut buf).await.is_some() {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                .await;
            for _ in 0..10 {
                tokio::time::sleep(std::time::Duration::from_secs(50)).await;
                let _ = stream.write_all(b"1\r\nx\r\n").await;
            }
            let _ = stream.write_all(b"0\r\n\r\n").await;
        }
    })
    .await;
    let mut upstream = WorkerUpstream::new();
    let res = get(&mut upstream, addr, "/").await;
    let body = tokio::time::timeout(
        std::time::Duration::from_secs(900),
        res.into_body().collect(),
    )
    .await
    .expect("the body ends")
    .expect("no error")
    .to_bytes();
    assert_eq!(body, "xxxxxxxxxx");
    // Waits under the limit leave the connection good for the next request.
    let _head = get(&mut upstream, addr, "/").await;
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_reader_that_pauses_is_not_cut_when_the_backend_has_sent_the_body() {
    let (addr, _accepted) = counting_backend().await;
    let mut upstream = WorkerUpstream::new();
    let mut body = get(&mut upstream, addr, "/big").await.into_body();
    let mut got = body
        .frame()
        .await
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap()
        .len();
    // The reader stops for twice the read timeout; the backend was not slow.
    tokio::time::sleep(tower_lb::proxy::DEFAULT_READ_TIMEOUT * 2).await;
    while let Some(frame) = tokio::time::timeout(std::time::Duration::from_secs(5), body.frame())
        .await
        .expect("a frame or the end within 5 s")
    {
        got += frame.expect("no error").into_data().unwrap().len();
    }
    assert_eq!(got, 4 << 20);
}

/// A keep-alive backend on raw sockets answering each request with the
/// canned bytes for its path, written in the pieces given (a pause between
/// them); `close` after the answer closes the connection.
async fn canned_backend(
    answers: &'static [(&'static str, &'static [&'static [u8]], bool)],
) -> (SocketAddr, Arc<AtomicUsize>) {
    raw_backend(move |mut stream| async move {
        let mut buf = vec![0u8; 4096];
        while let Some(head) = read_head(&mut stream, &mut buf).await {
            let line = String::from_utf8_lossy(&head)
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned();
            let Some((_, pieces, close)) = answers.iter().find(|(path, _, _)| line.contains(path))
            else {
                return;
            };
            for piece in *pieces {
                let _ = stream.write_all(piece).await;
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            if *close {
                return;
            }
        }
    })
    .await
}

async fn body_of(
    upstream: &mut WorkerUpstream<Full<Bytes>>,
    addr: SocketAddr,
    path: &str,
) -> (u16, Bytes) {
    // A framing misread waits for bytes that never come: fail, not hang.
    let exchange = async {
        let res = get(upstream, addr, path).await;
        let status = res.status().as_u16();
        (status, res.into_body().collect().await.unwrap().to_bytes())
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), exchange)
        .await
        .unwrap_or_else(|_| panic!("{path}: no whole answer within 10 s"))
}

#[tokio::test(flavor = "current_thread")]
async fn a_bodiless_request_reads_every_framing_a_backend_may_choose() {
    static ANSWERS: &[(&str, &[&[u8]], bool)] = &[
        // An informational head, then the answer, in one write.
        ("/early", &[b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nearly"], false),
        // Chunked, with an extension, split inside the size line and the data.
        ("/chunked", &[b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;x=", b"1\r\nchun", b"k\r\n3\r\ned!\r\n0\r\n\r\n"], false),
        // The head in two pieces, the body in a third.
        ("/slow-head", &[b"HTTP/1.1 200 OK\r\ncontent-le", b"ngth: 4\r\n\r\n", b"slow"], false),
        // Until the backend closes.
        ("/until-close", &[b"HTTP/1.1 200 OK\r\n\r\nall of ", b"it"], true),
        // HTTP/1.0 without keep-alive: the connection is not reused.
        ("/old", &[b"HTTP/1.0 200 OK\r\ncontent-length: 3\r\n\r\nold"], false),
    ];
    let (addr, accepted) = canned_backend(ANSWERS).await;
    let mut upstream = WorkerUpstream::new();
    assert_eq!(
        body_of(&mut upstream, addr, "/early").await,
        (200, Bytes::from("early"))
    );
    assert_eq!(
        body_of(&mut upstream, addr, "/chunked").await,
        (200, Bytes::from("chunked!"))
    );
    assert_eq!(
        body_of(&mut upstream, addr, "/slow-head").await,
        (200, Bytes::from("slow"))
    );
    // One connection so far, kept alive across the three.
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    assert_eq!(
        body_of(&mut upstream, addr, "/until-close").await,
        (200, Bytes::from("all of it"))
    );
    assert_eq!(
        body_of(&mut upstream, addr, "/slow-head").await,
        (200, Bytes::from("slow"))
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "a close-delimited body ends its connection"
    );
    assert_eq!(
        body_of(&mut upstream, addr, "/old").await,
        (200, Bytes::from("old"))
    );
    assert_eq!(
        body_of(&mut upstream, addr, "/slow-head").await,
        (200, Bytes::from("slow"))
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        3,
        "an HTTP/1.0 answer ends its connection"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_backend_that_breaks_the_exchange_is_refused_and_its_connection_dropped() {
    static ANSWERS: &[(&str, &[&[u8]], bool)] = &[
        // Bytes after the response: the next answer would be out of step.
        ("/extra", &[b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nforged"], false),
        ("/ok", &[OK], false),
        ("/conflict", &[b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok!"], false),
        ("/garbage", &[b"HTTP/1.1 2000 Nope\r\n\r\n"], false),
        ("/bad-chunk", &[b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"], false),
        ("/cut", &[b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"], true),
    ];
    let (addr, accepted) = canned_backend(ANSWERS).await;
    let mut upstream = WorkerUpstream::new();
    assert_eq!(
        body_of(&mut upstream, addr, "/extra").await,
        (200, Bytes::from("ok"))
    );
    assert_eq!(
        body_of(&mut upstream, addr, "/ok").await,
        (200, Bytes::from("ok"))
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "the connection with bytes left over is not reused"
    );
    for path in ["/conflict", "/garbage"] {
        let req = Request::get(format!("http://{addr}{path}"))
            .body(Full::default())
            .unwrap();
        let error = upstream.ready().await.unwrap().call(req).await.unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("invalid HTTP response from the backend"),
            "{path}: {error}"
        );
    }
    let res = get(&mut upstream, addr, "/bad-chunk").await;
    let error = res.into_body().collect().await.unwrap_err();
    assert!(error.to_string().contains("chunk size"), "{error}");
    let res = get(&mut upstream, addr, "/cut").await;
    let error = res.into_body().collect().await.unwrap_err();
    let io = error
        .downcast_ref::<std::io::Error>()
        .expect("an io::Error");
    assert_eq!(io.kind(), std::io::ErrorKind::UnexpectedEof);
    let before = accepted.load(Ordering::SeqCst);
    assert_eq!(
        body_of(&mut upstream, addr, "/ok").await,
        (200, Bytes::from("ok"))
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        before + 1,
        "no failed connection is reused"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_backend_sending_informational_heads_for_ever_is_cut_off() {
    // 100 Continue, again and again: more than a response head may take.
    let flood: &'static [u8] = Box::leak(
        b"HTTP/1.1 100 Continue\r\n\r\n"
            .repeat(20_000)
            .into_boxed_slice(),
    );
    let pieces: &'static [&'static [u8]] = Box::leak(vec![flood].into_boxed_slice());
    let answers: &'static [(&'static str, &'static [&'static [u8]], bool)] =
        Box::leak(vec![("/", pieces, false)].into_boxed_slice());
    let (addr, _) = canned_backend(answers).await;
    let mut upstream: WorkerUpstream<Full<Bytes>> = WorkerUpstream::new();
    let req = Request::get(format!("http://{addr}/"))
        .body(Full::default())
        .unwrap();
    let call = upstream.ready().await.unwrap().call(req);
    let error = tokio::time::timeout(std::time::Duration::from_secs(10), call)
        .await
        .expect("refused, not waited on for ever")
        .unwrap_err();
    assert!(error.to_string().contains("too large"), "{error}");
}

#[tokio::test(flavor = "current_thread")]
async fn a_request_that_asks_to_close_does_not_leave_its_connection_pooled() {
    let (addr, accepted) = counting_backend().await;
    let mut upstream = WorkerUpstream::new();
    for _ in 0..2 {
        let res = send(
            &mut upstream,
            Request::get(format!("http://{addr}/")).header("connection", "close"),
        )
        .await;
        assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "ok");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

/// The next request on a raw connection, head and `Content-Length` body,
/// as bytes; `pending` keeps what was read beyond it. `None` once the
/// client has closed.
async fn next_request(
    stream: &mut tokio::net::TcpStream,
    pending: &mut Vec<u8>,
) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 65536];
    let mut wanted = None;
    loop {
        if wanted.is_none() {
            if let Some(at) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&pending[..at]).into_owned();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .map_or(0, |v| v.trim().parse().unwrap());
                wanted = Some(at + 4 + len);
            }
        }
        if let Some(whole) = wanted.filter(|&whole| pending.len() >= whole) {
            return Some(pending.drain(..whole).collect());
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
        }
    }
}

/// A keep-alive backend on raw sockets that records every request it
/// reads (head and `Content-Length` body, as bytes) and answers `ok`.
async fn recording_backend() -> (
    SocketAddr,
    Arc<AtomicUsize>,
    Arc<std::sync::Mutex<Vec<String>>>,
) {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let (addr, accepted) = raw_backend(move |mut stream| {
        let log = Arc::clone(&log);
        async move {
            let mut pending = Vec::new();
            while let Some(request) = next_request(&mut stream, &mut pending).await {
                log.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&request).into_owned());
                if stream.write_all(OK).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    (addr, accepted, seen)
}

#[tokio::test(flavor = "current_thread")]
async fn a_short_body_that_is_all_there_goes_with_its_head_on_a_pooled_connection() {
    let (addr, accepted, seen) = recording_backend().await;
    let mut upstream = WorkerUpstream::new();
    for body in ["hello", ""] {
        let req = Request::post(format!("http://{addr}/form"))
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let res = upstream.ready().await.unwrap().call(req).await.unwrap();
        assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "ok");
    }
    get_ok(&mut upstream, addr).await;
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one connection for all three"
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen[0],
        format!("POST /form HTTP/1.1\r\nhost: {addr}\r\ncontent-length: 5\r\n\r\nhello")
    );
    // A body that says it has ended goes without one, as hyper sends it.
    assert_eq!(
        seen[1],
        format!("POST /form HTTP/1.1\r\nhost: {addr}\r\n\r\n")
    );
}

/// A body of a stated length whose frames come from a channel.
struct Announced {
    frames: Streamed,
    len: u64,
}

impl http_body::Body for Announced {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        std::pin::Pin::new(&mut self.frames).poll_frame(cx)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.len)
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_short_body_still_arriving_is_sent_whole_what_was_taken_first() {
    let (addr, _, seen) = recording_backend().await;
    let mut upstream: WorkerUpstream<Announced> = WorkerUpstream::new();
    let (tx, frames) = streamed_body();
    // The first part is there when the request is sent, the rest is not.
    tx.send(Ok(http_body::Frame::data(Bytes::from("first,"))))
        .await
        .unwrap();
    let req = Request::put(format!("http://{addr}/doc"))
        .header("content-length", "12")
        .body(Announced { frames, len: 12 })
        .unwrap();
    let call = upstream.ready().await.unwrap().call(req);
    let rest = async move {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        tx.send(Ok(http_body::Frame::data(Bytes::from("second"))))
            .await
            .unwrap();
    };
    let (res, ()) = tokio::join!(call, rest);
    assert_eq!(
        res.unwrap().into_body().collect().await.unwrap().to_bytes(),
        "ok"
    );
    assert_eq!(
        seen.lock().unwrap()[0],
        format!("PUT /doc HTTP/1.1\r\ncontent-length: 12\r\nhost: {addr}\r\n\r\nfirst,second")
    );
}

/// Answers each request on a raw keep-alive connection in the framing its
/// path names (`/<framing>/<id>`), the answer's body being the id, the
/// bytes written in a few pieces so that heads and bodies arrive split.
async fn framing_backend() -> SocketAddr {
    let (addr, _) = raw_backend(|mut stream| async move {
        let mut pending = Vec::new();
        while let Some(request) = next_request(&mut stream, &mut pending).await {
            let head = String::from_utf8_lossy(&request).into_owned();
            let line = head.lines().next().unwrap_or_default();
            let mut words = line.split(' ');
            let method = words.next().unwrap_or_default();
            let path = words.next().unwrap_or_default();
            let mut parts = path.trim_start_matches('/').split('/');
            let framing = parts.next().unwrap_or_default();
            let id = parts.next().unwrap_or_default();
            let (answer, close): (String, bool) = match framing {
                "length" => (format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{id}", id.len()), false),
                "chunked" => {
                    let (a, b) = id.split_at(id.len() / 2);
                    (format!("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{:x};n=1\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\nx-id: {id}\r\n\r\n", a.len(), b.len()), false)
                }
                "early" => (format!("HTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{id}", id.len()), false),
                "none" => ("HTTP/1.1 204 No Content\r\n\r\n".into(), false),
                "old" => (format!("HTTP/1.0 200 OK\r\ncontent-length: {}\r\n\r\n{id}", id.len()), false),
                _ => (format!("HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n{id}"), true),
            };
            let mut answer = answer.into_bytes();
            if method == "HEAD" {
                // The final head only, whatever it says of the body.
                let last = answer.windows(7).rposition(|w| w == b"HTTP/1.").unwrap();
                let end = last + answer[last..].windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                answer.truncate(end);
            }
            let third = answer.len() / 3;
            for piece in [&answer[..third], &answer[third..2 * third], &answer[2 * third..]] {
                if stream.write_all(piece).await.is_err() {
                    return;
                }
                tokio::task::yield_now().await;
            }
            if close || framing == "old" {
                return;
            }
        }
    })
    .await;
    addr
}

#[tokio::test(flavor = "current_thread")]
async fn many_mixed_exchanges_on_shared_connections_never_cross() {
    let addr = framing_backend().await;
    let upstream: WorkerUpstream<Full<Bytes>> = WorkerUpstream::new();
    let framings = ["length", "chunked", "early", "none", "old", "close"];
    let mut tasks = Vec::new();
    for task in 0..8u64 {
        let mut upstream = upstream.clone();
        tasks.push(tokio::spawn(async move {
            // A small linear congruential generator: the same mix every run.
            let mut seed = task * 7919 + 1;
            let mut next = move || {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (seed >> 33) as usize
            };
            for n in 0..150 {
                let framing = framings[next() % framings.len()];
                let id = format!("t{task}n{n}x{}", "y".repeat(next() % 40));
                let uri = format!("http://{addr}/{framing}/{id}");
                let req = match next() % 4 {
                    0 => Request::head(uri).body(Full::default()),
                    1 => Request::post(uri).body(Full::new(Bytes::from(id.clone()))),
                    _ => Request::get(uri).body(Full::default()),
                }
                .unwrap();
                let head = req.method() == http::Method::HEAD;
                let res = upstream.ready().await.unwrap().call(req).await.unwrap();
                let status = res.status();
                let body = res.into_body().collect().await.unwrap();
                let trailers = body.trailers().cloned();
                let body = body.to_bytes();
                if head || framing == "none" {
                    assert!(body.is_empty(), "{framing} {id}: {body:?}");
                } else {
                    assert_eq!(body, id.as_bytes(), "{framing} {status}");
                }
                if framing == "chunked" && !head {
                    assert_eq!(trailers.unwrap()["x-id"], id.as_str());
                }
            }
        }));
    }
    for task in tasks {
        tokio::time::timeout(std::time::Duration::from_secs(30), task)
            .await
            .expect("no exchange hangs")
            .unwrap();
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_repeatable_request_is_tried_again_when_a_reused_connection_closes_unanswered() {
    // Answers the first request of each connection, then reads the next
    // and closes without a word: as a backend's keep-alive timeout firing
    // just as the request went out.
    let (addr, accepted) = raw_backend(|mut stream| async move {
        let mut buf = vec![0u8; 4096];
        if read_head(&mut stream, &mut buf).await.is_some() {
            let _ = stream.write_all(OK).await;
            let _ = read_head(&mut stream, &mut buf).await;
        }
    })
    .await;
    let mut upstream = WorkerUpstream::new();
    for _ in 0..10 {
        get_ok(&mut upstream, addr).await;
    }
    // Each GET after the first met a closing connection and went again.
    assert_eq!(accepted.load(Ordering::SeqCst), 10);
    // A POST is not sent twice: the backend may have acted on it.
    let post = Request::post(format!("http://{addr}/"))
        .body(Full::new(Bytes::from("x")))
        .unwrap();
    let error = upstream
        .ready()
        .await
        .unwrap()
        .call(post)
        .await
        .unwrap_err();
    let io = error
        .downcast_ref::<std::io::Error>()
        .expect("an io::Error");
    assert_eq!(io.kind(), std::io::ErrorKind::UnexpectedEof);
}
