//! Shared by the examples and the loopback integration tests: small HTTP
//! and WebSocket backends, a WebSocket client, and the proxy pieces of
//! `tower_lb::proxy` (feature `proxy`) wired with logging.
#![allow(dead_code)]

pub mod policy;
pub mod tls;

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tower::Service;

pub mod retry;
pub mod stoppable;

/// What the proxy answers with: the backend's streamed body, or its own
/// short error text.
pub type ProxyBody<B = Incoming> = Either<B, Full<Bytes>>;

/// Starts a backend on an ephemeral loopback port. It answers every request
/// with `x-backend: NAME` and a body naming itself; `POST /echo` streams
/// the request body back (with its trailers, and the `Trailer` header that
/// announces them), `/headers` lists the request headers it got, and
/// `/status/CODE` answers with that status, `/hop-by-hop` answers with
/// hop-by-hop headers of its own (`Connection: x-internal`, `X-Internal`,
/// `Upgrade: h2c`, `Keep-Alive`).
pub async fn spawn_backend(name: &str) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let name: &'static str = Box::leak(name.to_owned().into_boxed_str());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| async move {
                    let res = if req.method() == http::Method::POST && req.uri().path() == "/echo" {
                        let mut res = Response::builder().header("x-backend", name);
                        if let Some(trailer) = req.headers().get(http::header::TRAILER) {
                            res = res.header(http::header::TRAILER, trailer);
                        }
                        res.body(Either::Left(req.into_body()))
                    } else if req.uri().path() == "/hop-by-hop" {
                        // A backend leaking its own hop-by-hop headers.
                        Response::builder()
                            .header("x-backend", name)
                            .header("connection", "x-internal")
                            .header("x-internal", "secret")
                            .header("upgrade", "h2c")
                            .header("keep-alive", "timeout=5")
                            .body(Either::Right(Full::from("hop-by-hop\n")))
                    } else if req.uri().path() == "/headers" {
                        let mut text = String::new();
                        for (k, v) in req.headers() {
                            text.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
                        }
                        Response::builder()
                            .header("x-backend", name)
                            .body(Either::Right(Full::from(text)))
                    } else if let Some(code) = req.uri().path().strip_prefix("/status/") {
                        let status = code
                            .parse::<u16>()
                            .ok()
                            .and_then(|c| StatusCode::from_u16(c).ok());
                        Response::builder()
                            .status(status.unwrap_or(StatusCode::BAD_REQUEST))
                            .header("x-backend", name)
                            .body(Either::Right(Full::from(format!("{name}\n"))))
                    } else {
                        let text = format!(
                            "{name}: {} {} host={}\n",
                            req.method(),
                            req.uri(),
                            req.headers()
                                .get("host")
                                .and_then(|h| h.to_str().ok())
                                .unwrap_or("-")
                        );
                        Response::builder()
                            .header("x-backend", name)
                            .body(Either::Right(Full::from(text)))
                    };
                    Ok::<_, Infallible>(res.expect("static response parts are valid"))
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// Starts a WebSocket echo backend on an ephemeral loopback port. On each
/// connection it first says `hello from NAME`; then it answers `cookies?`
/// with the `Cookie` header of the handshake it got (or `none`) and echoes
/// any other text as `NAME: TEXT`.
pub async fn spawn_ws_backend(name: &str) -> std::io::Result<SocketAddr> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::handshake::server::{
        Request as WsRequest, Response as WsResponse,
    };
    use tokio_tungstenite::tungstenite::Message;

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let name = name.to_owned();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let name = name.clone();
            tokio::spawn(async move {
                let mut cookies = String::from("none");
                // The callback's signature is tungstenite's.
                #[allow(clippy::result_large_err)]
                let record = |req: &WsRequest, res: WsResponse| {
                    let seen: Vec<&str> = req
                        .headers()
                        .get_all(http::header::COOKIE)
                        .iter()
                        .filter_map(|v| v.to_str().ok())
                        .collect();
                    if !seen.is_empty() {
                        cookies = seen.join("; ");
                    }
                    Ok(res)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, record).await else {
                    return;
                };
                if ws
                    .send(Message::text(format!("hello from {name}")))
                    .await
                    .is_err()
                {
                    return;
                }
                while let Some(Ok(message)) = ws.next().await {
                    let reply = match message {
                        Message::Text(text) if text.as_str() == "cookies?" => cookies.clone(),
                        Message::Text(text) => format!("{name}: {}", text.as_str()),
                        Message::Close(_) => break,
                        _ => continue,
                    };
                    if ws.send(Message::text(reply)).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// A WebSocket client connection to `proxy`, from the local address `from`
/// (any of 127.0.0.0/8 works on Linux: a client whose IP changed), with an
/// optional `Cookie` header. Returns the stream and the handshake response
/// (`101 Switching Protocols`, with any `Set-Cookie`).
pub async fn ws_connect(
    proxy: SocketAddr,
    from: std::net::IpAddr,
    cookie: Option<&str>,
) -> Result<
    (
        tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ),
    Box<dyn std::error::Error + Send + Sync>,
> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    let stream = socket.connect(proxy).await?;
    let mut request = format!("ws://{proxy}/play").into_client_request()?;
    if let Some(cookie) = cookie {
        request
            .headers_mut()
            .insert(http::header::COOKIE, cookie.parse()?);
    }
    Ok(tokio_tungstenite::client_async(request, stream).await?)
}

/// The `name=value` part of a `Set-Cookie` header, ready to send back as a
/// `Cookie` header.
pub fn cookie_pair<B>(res: &Response<B>) -> Option<String> {
    let set_cookie = res.headers().get(http::header::SET_COOKIE)?.to_str().ok()?;
    Some(set_cookie.split(';').next()?.trim().to_owned())
}

/// The innermost service of the proxy: the library's hyper client with
/// WebSocket passthrough.
#[allow(unused_imports)]
pub use tower_lb::proxy::Upstream;

/// The upstream client the gateway example runs: one pool per worker.
#[allow(unused_imports)]
pub use tower_lb::proxy::WorkerUpstream;

/// Serves `stack` on `listener` as a reverse proxy with the library's
/// accept loop ([`tower_lb::proxy::serve_with`]): each request gets the
/// client's address as a `ClientAddr`, and a tower-lb error becomes its
/// status with a short text that names no backend; the detail goes to
/// stderr.
pub async fn serve_proxy<S, B>(listener: TcpListener, stack: S)
where
    S: Service<
            Request<tower_lb::proxy::RequestBody>,
            Response = Response<B>,
            Error = tower_lb::Error,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tower_lb::proxy::serve_with(listener, stack, |error: &tower_lb::Error, peer| {
        eprintln!("proxy error for {peer}: {error}");
    })
    .await
}

/// A plain client for talking to the proxy.
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A `--backend` value: `URL` or `URL=WEIGHT` (a `=` inside the URL's
/// query is part of the URL).
pub fn parse_backend(arg: &str) -> Result<tower_lb::Backend, String> {
    let (uri, weight) = match arg.rsplit_once('=') {
        Some((uri, weight)) if !uri.contains('?') => {
            let weight = weight
                .parse::<u32>()
                .map_err(|_| format!("--backend {arg}: the weight after `=` must be a number"))?;
            (uri, weight)
        }
        _ => (arg, 1),
    };
    tower_lb::Backend::new(uri)
        .and_then(|b| b.with_weight(weight))
        .map_err(|e| format!("--backend {arg}: {e}"))
}
