//! `proxy::serve_connection` answers plain requests itself and hands
//! everything else to hyper's server: the two must not be told apart on
//! the wire. Each test sends the same requests twice, once plain (served by
//! tower-lb's own side) and once with `Content-Length: 0` (an empty body
//! too, but hyper's to serve), and compares the bytes that come back.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower_lb::proxy::RequestBody;

type AnyBody = http_body_util::combinators::UnsyncBoxBody<Bytes, std::convert::Infallible>;

/// The answer the test stack gives `/case/N`: a spread of the shapes
/// hyper's server frames differently.
fn case(n: u32) -> Result<Response<AnyBody>, tower_lb::Error> {
    let full = |body: &'static str| Full::new(Bytes::from_static(body.as_bytes())).boxed_unsync();
    let mut res = Response::new(full("ok"));
    match n {
        0 => {}
        1 => {
            let h = res.headers_mut();
            h.insert("content-type", "text/plain".parse().unwrap());
            h.append("x-multi", "a".parse().unwrap());
            h.append("x-multi", "b".parse().unwrap());
            h.insert("x-last", "z".parse().unwrap());
        }
        2 => {
            *res.status_mut() = StatusCode::NOT_FOUND;
            *res.body_mut() = full("no such thing\n");
        }
        3 => {
            res.extensions_mut()
                .insert(hyper::ext::ReasonPhrase::from_static(b"Quite Fine"));
        }
        4 => {
            *res.status_mut() = StatusCode::NO_CONTENT;
            *res.body_mut() = full("");
        }
        5 => {
            *res.status_mut() = StatusCode::NOT_MODIFIED;
            res.headers_mut()
                .insert("content-length", "42".parse().unwrap());
            *res.body_mut() = full("");
        }
        6 => {
            let h = res.headers_mut();
            h.insert("date", "Sun, 06 Nov 1994 08:49:37 GMT".parse().unwrap());
            h.insert("content-length", "2".parse().unwrap());
            h.insert("server", "test".parse().unwrap());
        }
        7 => {
            res.headers_mut()
                .insert("connection", "close".parse().unwrap());
        }
        8 => {
            res.headers_mut()
                .append("connection", "x-custom".parse().unwrap());
            res.headers_mut().insert("x-after", "1".parse().unwrap());
        }
        9 => *res.body_mut() = full(""),
        10 => {
            return Err(tower_lb::Error::Upstream {
                backend: "b".into(),
                source: "refused".into(),
            })
        }
        11 => *res.status_mut() = StatusCode::from_u16(299).unwrap(),
        12 => {
            // Of unknown length (a mapped body has no size hint): hyper's
            // chunked framing.
            *res.body_mut() = full("one two").map_frame(|frame| frame).boxed_unsync();
        }
        13 => *res.version_mut() = http::Version::HTTP_10,
        14 => *res.body_mut() = full(LONG),
        15 => {
            res.headers_mut()
                .insert("content-length", "0".parse().unwrap());
            *res.body_mut() = full("");
        }
        16 => {
            let h = res.headers_mut();
            h.append("content-length", "5".parse().unwrap());
            h.append("content-length", "5".parse().unwrap());
            *res.body_mut() = full("");
        }
        17 => {
            *res.body_mut() = Short {
                given: false,
                says_ended: true,
            }
            .boxed_unsync()
        }
        18 => {
            *res.body_mut() = Short {
                given: false,
                says_ended: false,
            }
            .boxed_unsync()
        }
        _ => *res.status_mut() = StatusCode::IM_A_TEAPOT,
    }
    Ok(res)
}

const CASES: u32 = 20;

/// Longer than a joined write (16 KiB).
const LONG: &str = include_str!("../src/proxy/h1_server.rs");

/// A body that promises 10 bytes and gives 3; after them it says it has
/// ended (`is_end_stream`), or only ends.
struct Short {
    given: bool,
    says_ended: bool,
}

impl hyper::body::Body for Short {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        if self.given {
            return std::task::Poll::Ready(None);
        }
        self.given = true;
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(Bytes::from_static(
            b"abc",
        )))))
    }

    fn is_end_stream(&self) -> bool {
        self.given && self.says_ended
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(10)
    }
}

fn stack() -> impl tower::Service<
    Request<RequestBody>,
    Response = Response<AnyBody>,
    Error = tower_lb::Error,
    Future = impl Future<Output = Result<Response<AnyBody>, tower_lb::Error>> + Send,
> + Clone
       + Send
       + 'static {
    tower::service_fn(|req: Request<RequestBody>| async move {
        let n = req
            .uri()
            .path()
            .strip_prefix("/case/")
            .and_then(|n| n.parse().ok())
            .unwrap_or(u32::MAX);
        case(n)
    })
}

/// Everything the connection sends back for `requests`, written at once,
/// until it closes.
async fn transcript(requests: &str) -> (String, Result<(), tower_lb::Error>) {
    let (mut client, server) = tokio::io::duplex(1 << 20);
    let peer: SocketAddr = "192.0.2.9:40000".parse().unwrap();
    let served = tokio::spawn(tower_lb::proxy::serve_connection(
        hyper_util::rt::TokioIo::new(server),
        peer,
        stack(),
        |_: &tower_lb::Error, _| {},
    ));
    client.write_all(requests.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        client.read_to_end(&mut answer),
    )
    .await
    .expect("the connection closes")
    .unwrap();
    let served = served.await.unwrap();
    (without_dates(&String::from_utf8_lossy(&answer)), served)
}

/// `text` with each added `date:` value blanked (the two runs may straddle
/// a second).
fn without_dates(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("\r\ndate: ") {
        let end = at + "\r\ndate: ".len();
        out.push_str(&rest[..end]);
        out.push_str("<date>");
        rest = &rest[(end + 29).min(rest.len())..];
    }
    out.push_str(rest);
    out
}

/// Three requests for `path` on one connection, the last asking to close;
/// `extra` goes into each head.
fn three(method: &str, path: &str, extra: &str) -> String {
    let one = format!("{method} {path} HTTP/1.1\r\nHost: a.example\r\n{extra}");
    format!("{one}\r\n{one}\r\n{one}Connection: close\r\n\r\n")
}

#[tokio::test]
async fn plain_requests_are_answered_byte_for_byte_as_hyper_answers_them() {
    for method in ["GET", "HEAD"] {
        for n in 0..CASES {
            let path = format!("/case/{n}");
            let (own, own_end) = transcript(&three(method, &path, "")).await;
            let (hyper, hyper_end) =
                transcript(&three(method, &path, "Content-Length: 0\r\n")).await;
            assert_eq!(own, hyper, "{method} {path}");
            // Nothing goes out for a body that ends short without saying
            // so, nor for a `HEAD` answer with two `Content-Length` values
            // (hyper refuses it); everything else is answered.
            let refused = (method == "GET" && n == 18) || (method == "HEAD" && n == 16);
            assert_eq!(own.is_empty(), refused, "{method} {path}: {own}");
            assert_eq!(
                own_end.is_ok(),
                hyper_end.is_ok(),
                "{method} {path}: {own_end:?} / {hyper_end:?}"
            );
        }
    }
}

#[tokio::test]
async fn a_plain_answer_has_the_head_hyper_writes() {
    let (answer, end) = transcript(&three("GET", "/case/8", "")).await;
    end.unwrap();
    let first = answer.split("ok").next().unwrap();
    assert_eq!(
        first,
        "HTTP/1.1 200 OK\r\nconnection: x-custom\r\nx-after: 1\r\ncontent-length: 2\r\ndate: <date>\r\n\r\n"
    );
    // The request that asked to close gets `close` added to the field.
    assert!(
        answer.ends_with(
            "HTTP/1.1 200 OK\r\nconnection: x-custom, close\r\nx-after: 1\r\ncontent-length: 2\r\ndate: <date>\r\n\r\nok"
        ),
        "{answer}"
    );
    assert_eq!(answer.matches("HTTP/1.1 200 OK").count(), 3, "{answer}");
}

#[tokio::test]
async fn a_request_asking_to_close_gets_close_and_the_connection_ends() {
    let (answer, end) =
        transcript("GET /case/0 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET /case/0 HTTP/1.1\r\nHost: a\r\n\r\n")
            .await;
    end.unwrap();
    assert_eq!(
        answer,
        "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\ndate: <date>\r\n\r\nok"
    );
}

#[tokio::test]
async fn a_plain_request_then_one_with_a_body_then_plain_again_on_one_connection() {
    let requests = "GET /case/0 HTTP/1.1\r\nHost: a\r\n\r\n\
                    POST /case/2 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
                    GET /case/1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    let (answer, end) = transcript(requests).await;
    end.unwrap();
    let statuses: Vec<&str> = answer
        .match_indices("HTTP/1.1 ")
        .map(|(at, _)| answer[at..].split("\r\n").next().unwrap())
        .collect();
    assert_eq!(
        statuses,
        [
            "HTTP/1.1 200 OK",
            "HTTP/1.1 404 Not Found",
            "HTTP/1.1 200 OK"
        ]
    );
}

#[tokio::test]
async fn http10_an_upgrade_and_a_long_head_are_hyper_s_and_answered() {
    for requests in [
        "GET /case/0 HTTP/1.0\r\nHost: a\r\n\r\n".to_string(),
        "GET /case/0 HTTP/1.1\r\nHost: a\r\nConnection: close\r\nExpect: 100-continue\r\n\r\n"
            .to_string(),
        format!(
            "GET /case/0 HTTP/1.1\r\nHost: a\r\nCookie: {}\r\nConnection: close\r\n\r\n",
            "c".repeat(40 * 1024)
        ),
        format!(
            "GET /case/0 HTTP/1.1\r\nHost: a\r\n{}Connection: close\r\n\r\n",
            (0..60)
                .map(|i| format!("X-F{i}: {i}\r\n"))
                .collect::<String>()
        ),
    ] {
        let (answer, end) = transcript(&requests).await;
        assert!(answer.ends_with("\r\n\r\nok"), "{answer}");
        assert!(answer.starts_with("HTTP/1."), "{answer}");
        end.unwrap();
    }
}

#[tokio::test]
async fn a_head_sent_a_byte_at_a_time_is_answered() {
    let (mut client, server) = tokio::io::duplex(1 << 16);
    let served = tokio::spawn(tower_lb::proxy::serve_connection(
        hyper_util::rt::TokioIo::new(server),
        "192.0.2.9:40000".parse().unwrap(),
        stack(),
        |_: &tower_lb::Error, _| {},
    ));
    for byte in b"GET /case/0 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n" {
        client.write_all(&[*byte]).await.unwrap();
        tokio::task::yield_now().await;
    }
    let mut answer = Vec::new();
    client.read_to_end(&mut answer).await.unwrap();
    let answer = without_dates(&String::from_utf8_lossy(&answer));
    assert_eq!(
        answer,
        "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\ndate: <date>\r\n\r\nok"
    );
    served.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_malformed_head_gets_hyper_s_400() {
    let (answer, end) = transcript("GET /case/0 HTTP/1.1\r\nHost a\r\n\r\n").await;
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
    assert!(
        matches!(
            end,
            Err(tower_lb::Error::ClientConnection {
                timed_out: false,
                ..
            })
        ),
        "{end:?}"
    );
}

#[tokio::test]
async fn a_client_that_closes_before_its_answer_cancels_the_request() {
    // A stack that never answers, and says when its future is dropped.
    let dropped = Arc::new(AtomicBool::new(false));
    struct Flag(Arc<AtomicBool>);
    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let flag = Arc::clone(&dropped);
    let never = tower::service_fn(move |_req: Request<RequestBody>| {
        let guard = Flag(Arc::clone(&flag));
        async move {
            let _guard = guard;
            std::future::pending::<()>().await;
            Ok::<Response<Full<Bytes>>, tower_lb::Error>(Response::new(Full::default()))
        }
    });
    let (mut client, server) = tokio::io::duplex(1 << 16);
    let served = tokio::spawn(tower_lb::proxy::serve_connection(
        hyper_util::rt::TokioIo::new(server),
        "192.0.2.9:40000".parse().unwrap(),
        never,
        |_: &tower_lb::Error, _| {},
    ));
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(!dropped.load(Ordering::SeqCst));
    drop(client);
    let end = tokio::time::timeout(std::time::Duration::from_secs(5), served)
        .await
        .expect("the connection ends")
        .unwrap();
    assert!(
        matches!(
            end,
            Err(tower_lb::Error::ClientConnection {
                timed_out: false,
                ..
            })
        ),
        "{end:?}"
    );
    assert!(dropped.load(Ordering::SeqCst));
}

#[tokio::test]
async fn what_a_failed_request_holds_is_released_before_its_answer_is_written() {
    // A stack whose future holds a guard (a concurrency permit, say) and
    // fails; the client does not read, so the answer cannot be written.
    let dropped = Arc::new(AtomicBool::new(false));
    struct Flag(Arc<AtomicBool>);
    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    // A future that keeps its guard in a field, as tower's concurrency
    // limit keeps its permit: released when the future is dropped.
    struct Holding(#[allow(dead_code)] Flag);
    impl Future for Holding {
        type Output = Result<Response<Full<Bytes>>, tower_lb::Error>;
        fn poll(
            self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Self::Output> {
            std::task::Poll::Ready(Err(tower_lb::Error::Upstream {
                backend: "b".into(),
                source: "refused".into(),
            }))
        }
    }
    let flag = Arc::clone(&dropped);
    let failing =
        tower::service_fn(move |_req: Request<RequestBody>| Holding(Flag(Arc::clone(&flag))));
    // A pipe of 16 bytes: the answer's head does not fit.
    let (mut client, server) = tokio::io::duplex(16);
    let served = tokio::spawn(tower_lb::proxy::serve_connection(
        hyper_util::rt::TokioIo::new(server),
        "192.0.2.9:40000".parse().unwrap(),
        failing,
        |_: &tower_lb::Error, _| {},
    ));
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    // The answer waits on the client; the guard is gone already.
    let mut waited = 0;
    while !dropped.load(Ordering::SeqCst) && waited < 100 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        waited += 1;
    }
    assert!(
        dropped.load(Ordering::SeqCst),
        "still held while the answer waits"
    );
    assert!(!served.is_finished());
    let mut answer = Vec::new();
    client.read_to_end(&mut answer).await.unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 502 Bad Gateway\r\n"));
    served.await.unwrap().unwrap();
}
