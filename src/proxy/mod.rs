//! Ready-made reverse-proxy pieces on hyper and tokio (feature `proxy`).
//!
//! The layers in [`layer`](crate::layer) need no runtime and work over any
//! client. What every reverse proxy on hyper also needs is here, so that a
//! proxy is a few lines of wiring:
//!
//! * [`Upstream`] — the innermost service: a hyper client that sends each
//!   request to the URI the director wrote, pools connections, and passes
//!   upgraded connections (WebSocket) through in both directions once the
//!   backend answers `101 Switching Protocols`;
//! * [`WorkerUpstream`] — the same for plain `http` backends, driving each
//!   backend connection from the task that uses it, as nginx's event loop
//!   does: no task per connection, nothing spawned per request, the
//!   connection back in its pool when the response body ([`UpstreamBody`])
//!   ends; what the gateway example runs, measured in `docs/benchmarks.md`;
//! * [`serve`] — the accept loop: an HTTP/1.1 server (upgrades enabled)
//!   that puts each connection's peer address on its requests as
//!   [`ClientAddr`](crate::sticky::ClientAddr) (what `X-Forwarded-For` and
//!   [`ClientIp`](crate::sticky::ClientIp) read), closes a connection whose
//!   request head takes longer than [`HEADER_READ_TIMEOUT`] (slowloris) or
//!   that takes no response bytes for [`SEND_TIMEOUT`] (slow read), and
//!   answers a tower-lb [`Error`] with [`Error::to_response`]: the right
//!   status and a short text that names no backend. [`serve_with`] also hands each error to a
//!   function of yours, for logging, and [`serve_connection`] serves one
//!   connection you accepted yourself ([`accept`] takes the next one as
//!   the loop does): a TLS stream, say.
//!
//! The runtime-free parts stay in the default build: [`ClientAddr`](crate::sticky::ClientAddr) is a
//! plain extension (from axum's `ConnectInfo`, the director hook
//! [`client_addr_from`](crate::layer::client_addr_from) copies it), and [`Error::to_response`] turns an error into a
//! response for any body type, axum's `HandleErrorLayer` included.
//!
//! ```no_run
//! use tokio::net::TcpListener;
//! use tower::ServiceBuilder;
//! use tower_lb::layer::{DirectorLayer, LoadBalanceLayer, ProxyDirector};
//! use tower_lb::proxy::{serve, Upstream};
//! use tower_lb::{LoadBalancer, Strategy};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let lb = LoadBalancer::new(Strategy::RoundRobin, ["http://127.0.0.1:8081", "http://127.0.0.1:8082"])?;
//! let proxy = ServiceBuilder::new()
//!     .layer(LoadBalanceLayer::new(lb))
//!     .layer(DirectorLayer::new(ProxyDirector::new()))
//!     .service(Upstream::new());
//! serve(TcpListener::bind("127.0.0.1:8080").await?, proxy).await;
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::rt::{Read, Write};
use hyper_util::client::legacy::connect::{Connect, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tower_service::Service;

use crate::{BoxError, Error};

mod clock;
mod field_name;
mod head_timer;
mod send_timeout;
mod stall;
mod tunnel;
use crate::layer::is_upgrade;
mod h1_client;
mod h1_server;
mod request_body;
mod timer_pool;
mod worker_upstream;

pub use self::clock::task_now;
pub use self::request_body::RequestBody;
pub use self::timer_pool::{PooledSleep, TimerPool};

pub use self::worker_upstream::{
    ConnectError, UpstreamBody, WorkerUpstream, DEFAULT_CLIENT_BODY_TIMEOUT,
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS_PER_BACKEND,
    DEFAULT_READ_TIMEOUT,
};

/// What [`serve`] answers with: the stack's own response body, or the short
/// text of an error.
pub type ProxyBody<B = Incoming> = Either<B, Full<Bytes>>;

/// The innermost service of a proxy: a pooled hyper HTTP/1.1 client that
/// sends each request to the URI the director wrote, and splices an
/// upgraded connection (WebSocket) to the backend's once it answers `101`.
///
/// Which upgrades reach it is the director's decision:
/// [`ProxyDirector`](crate::layer::ProxyDirector) forwards WebSocket only.
/// Its errors are `hyper_util` client errors; the layers outside turn them
/// into [`Error::Upstream`] (`502`).
///
/// ```
/// use tower_lb::proxy::Upstream;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let upstream: Upstream = Upstream::new();
/// # let _ = upstream;
/// # }
/// ```
///
/// The connector `C` is hyper-util's: plain [`HttpConnector`] by default, or
/// any [`Connect`] of yours, such as a TLS connector for `https://`
/// backends (hyper-rustls' `HttpsConnector` wrapping an `HttpConnector`).
/// tower-lb itself never links a TLS library; see
/// [`from_client`](Self::from_client).
#[derive(Debug)]
pub struct Upstream<B = RequestBody, C = HttpConnector> {
    client: Client<C, B>,
}

// Not derived: the body type need not be `Clone`.
impl<B, C: Clone> Clone for Upstream<B, C> {
    fn clone(&self) -> Self {
        Upstream {
            client: self.client.clone(),
        }
    }
}

impl<B> Upstream<B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    /// A client with `TCP_NODELAY`, hyper's default pool, and connects
    /// that give up after [`DEFAULT_CONNECT_TIMEOUT`] (nginx's
    /// `proxy_connect_timeout`, 60 s) rather than the operating system's
    /// two minutes or so. For other limits, see
    /// [`from_client`](Self::from_client).
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(DEFAULT_CONNECT_TIMEOUT));
        Upstream::from_client(Client::builder(TokioExecutor::new()).build(connector))
    }
}

impl<B, C> Upstream<B, C>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    C: Connect + Clone + Send + Sync + 'static,
{
    /// Wraps a client you configured: pool sizes, timeouts, or a connector
    /// that speaks TLS to `https://` backends.
    ///
    /// ```
    /// use hyper_util::client::legacy::{connect::HttpConnector, Client};
    /// use hyper_util::rt::TokioExecutor;
    /// use tower_lb::proxy::Upstream;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// // With a TLS connector (hyper-rustls' `HttpsConnector`, say) in
    /// // place of `HttpConnector`, `https://` backends work the same way.
    /// let client = Client::builder(TokioExecutor::new())
    ///     .pool_max_idle_per_host(32)
    ///     .build(HttpConnector::new());
    /// let upstream: Upstream<hyper::body::Incoming, _> = Upstream::from_client(client);
    /// # let _ = upstream;
    /// # }
    /// ```
    pub fn from_client(client: Client<C, B>) -> Self {
        Upstream { client }
    }
}

impl<B> Default for Upstream<B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    fn default() -> Self {
        Upstream::new()
    }
}

impl<B, C> Service<Request<B>> for Upstream<B, C>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    C: Connect + Clone + Send + Sync + 'static,
{
    type Response = Response<Incoming>;
    type Error = hyper_util::client::legacy::Error;
    // The client's own future is boxed too; the upgrade needs the response
    // before it is returned.
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    #[inline]
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let client_side = is_upgrade(req.headers()).then(|| hyper::upgrade::on(&mut req));
        // A tunnel stays counted in flight on its backend until it closes
        // (LoadBalance's own count ends with the 101): the WebSocket load
        // `least_request` must see.
        let tunnel_load = tunnel_load(&req, client_side.is_some());
        let sent = self.client.request(req);
        Box::pin(async move {
            let mut res = sent.await?;
            if let Some(client_side) = client_side {
                if res.status() == StatusCode::SWITCHING_PROTOCOLS {
                    splice_upgrade(client_side, hyper::upgrade::on(&mut res), tunnel_load, None);
                }
            }
            Ok(res)
        })
    }
}

/// Copies bytes both ways between the client's and the backend's upgraded
/// connections, on a task of its own; with `idle`, it closes both once
/// neither has sent a byte for that long.
fn splice_upgrade(
    client_side: hyper::upgrade::OnUpgrade,
    backend_side: hyper::upgrade::OnUpgrade,
    tunnel_load: Option<crate::InFlight>,
    idle: Option<Duration>,
) {
    tokio::spawn(async move {
        let _counted = tunnel_load;
        // The backend's side is ready now; the client's once hyper has sent
        // it the 101.
        let backend = backend_side.await;
        if let (Ok(client), Ok(backend)) = (client_side.await, backend) {
            tunnel::splice(TokioIo::new(client), TokioIo::new(backend), idle).await;
        }
    });
}

/// For an upgrade request, a count in flight on the picked backend that
/// the tunnel holds until it closes (LoadBalance's own count ends with the
/// 101): the WebSocket load `least_request` must see.
fn tunnel_load<B>(req: &Request<B>, upgrade: bool) -> Option<crate::InFlight> {
    if !upgrade {
        return None;
    }
    let member = req.extensions().get::<crate::Member>()?;
    Some(crate::Load::start(member.load()))
}

/// Serves `stack` on `listener` as a reverse proxy, until the task running
/// it is dropped: see the [module docs](self). Errors are answered and
/// otherwise ignored; [`serve_with`] reports them.
///
/// A failed `accept` (out of file descriptors, say) is retried after a
/// short pause instead of ending the loop or spinning.
pub async fn serve<S, B>(listener: TcpListener, stack: S)
where
    S: Service<Request<RequestBody>, Response = Response<B>, Error = Error>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    serve_with(listener, stack, |_error: &Error, _peer: SocketAddr| {}).await
}

/// [`serve`], calling `on_error` with each error and the client's address
/// before it is answered (the error's `Display` may name a backend: log
/// it, do not send it).
///
/// ```no_run
/// # use tower_lb::{layer::*, proxy::*, LoadBalancer, Strategy};
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let lb = LoadBalancer::new(Strategy::RoundRobin, ["http://127.0.0.1:8081"])?;
/// # let stack = tower::ServiceBuilder::new().layer(LoadBalanceLayer::new(lb))
/// #     .layer(DirectorLayer::new(ProxyDirector::new())).service(Upstream::new());
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
/// serve_with(listener, stack, |error: &tower_lb::Error, peer| {
///     eprintln!("{peer}: {error}");
/// })
/// .await;
/// # Ok(())
/// # }
/// ```
pub async fn serve_with<S, B, E>(listener: TcpListener, stack: S, on_error: E)
where
    S: Service<Request<RequestBody>, Response = Response<B>, Error = Error>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    E: Fn(&Error, SocketAddr) + Send + Sync + 'static,
{
    let on_error = Arc::new(on_error);
    loop {
        let (stream, peer) = accept(&listener).await;
        let stack = stack.clone();
        let on_error = Arc::clone(&on_error);
        tokio::spawn(serve_connection(
            TokioIo::new(stream),
            peer,
            stack,
            move |error: &Error, peer| on_error(error, peer),
        ));
    }
}

/// The next connection on `listener`, with `TCP_NODELAY` set, as
/// [`serve_with`] accepts them: a failed `accept` (out of file descriptors,
/// say) is retried after a short pause instead of ending the loop or
/// spinning. For an accept loop of your own, a TLS one say (see
/// [`serve_connection`]).
///
/// ```no_run
/// # #[tokio::main]
/// # async fn main() -> std::io::Result<()> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8443").await?;
/// loop {
///     let (stream, peer) = tower_lb::proxy::accept(&listener).await;
///     // A TLS handshake on `stream`, then `serve_connection`.
/// #   let _ = (stream, peer);
/// }
/// # }
/// ```
pub async fn accept(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                return (stream, peer);
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Serves one accepted connection `io` from `peer` as [`serve_with`] serves
/// each of its own, until the client closes it: for streams that are not a
/// bare [`TcpListener`]'s, such as a TLS stream (tokio-rustls, native-tls),
/// a Unix socket or an in-memory pipe. Run your accept loop (and TLS
/// handshake) and spawn this for each connection.
///
/// `io` is any hyper I/O ([`hyper::rt::Read`] + [`hyper::rt::Write`]):
/// wrap a tokio stream in [`TokioIo`]. The connection speaks HTTP/1.1 with
/// upgrades enabled, each request head must arrive within
/// [`HEADER_READ_TIMEOUT`], no write to the client may wait longer than
/// [`SEND_TIMEOUT`], every request gets [`ClientAddr`](crate::sticky::ClientAddr)`(peer)`, and an
/// [`Error`] goes to `on_error` and is answered with
/// [`Error::to_response`].
///
/// A plain request (`HTTP/1.1`, no body, no upgrade: most `GET`s) is read
/// and answered by tower-lb itself, which writes what hyper's server would
/// write; anything else hands the connection to hyper's server for the
/// rest of its life, replaying the bytes already read, so hyper answers a
/// body, an upgrade, `HTTP/1.0` or a malformed head by its own rules.
/// Either way the stack sees a [`RequestBody`]. One difference shows:
/// a response whose field names hyper's client kept in their original
/// case (its `preserve_header_case` option, through
/// [`Upstream::from_client`]) is written to a plain request's client with
/// lower-case names, as every response is by default.
///
/// The result is [`Error::ClientConnection`] when the connection ended
/// with an error: a client that went away mid-request, a malformed
/// request line, and also the two timeouts, which are how most keep-alive
/// connections end (one that idles past [`HEADER_READ_TIMEOUT`], or a
/// stalled write past [`SEND_TIMEOUT`], has `timed_out: true`; the write's
/// [`io::Error`](std::io::Error), of kind `TimedOut`, is its source). A
/// backend that went quiet mid-body past [`WorkerUpstream`]'s
/// [`read_timeout`](WorkerUpstream::read_timeout) ends it too, as `the
/// response body failed`. Log the
/// client-side ones at a low level, if at all.
///
/// ```no_run
/// # use tower_lb::{layer::*, proxy::*, LoadBalancer, Strategy};
/// use hyper_util::rt::TokioIo;
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let lb = LoadBalancer::new(Strategy::RoundRobin, ["http://127.0.0.1:8081"])?;
/// # let stack = tower::ServiceBuilder::new().layer(LoadBalanceLayer::new(lb))
/// #     .layer(DirectorLayer::new(ProxyDirector::new())).service(Upstream::new());
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8443").await?;
/// loop {
///     let (stream, peer) = accept(&listener).await;
///     // A TLS acceptor's handshake goes here, turning `stream` into a TLS stream.
///     tokio::spawn(serve_connection(
///         TokioIo::new(stream),
///         peer,
///         stack.clone(),
///         |error: &tower_lb::Error, peer| eprintln!("{peer}: {error}"),
///     ));
/// }
/// # }
/// ```
pub async fn serve_connection<I, S, B, E>(
    io: I,
    peer: SocketAddr,
    stack: S,
    on_error: E,
) -> Result<(), Error>
where
    I: Read + Write + Unpin + Send + 'static,
    S: Service<Request<RequestBody>, Response = Response<B>, Error = Error>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    E: Fn(&Error, SocketAddr) + Send + Sync + 'static,
{
    // Each poll of the connection's task reads the clock once at most.
    clock::Scoped::new(h1_server::serve(io, peer, stack, Arc::new(on_error))).await
}

/// An HTTP/1.0 client cannot be sent a body of unknown length except by
/// closing the connection after it (it has no chunked coding), but hyper
/// still answers one that asked for keep-alive with `Connection:
/// keep-alive` and then closes: the answer says `close`, as nginx's does
/// (RFC 9112 §9.3).
fn close_if_unframed<B: http_body::Body>(res: &mut Response<B>) {
    let bodiless = res.status().is_informational()
        || res.status() == StatusCode::NO_CONTENT
        || res.status() == StatusCode::NOT_MODIFIED;
    if !bodiless
        && !res.headers().contains_key(http::header::CONTENT_LENGTH)
        && res.body().size_hint().exact().is_none()
    {
        res.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
        // hyper adds `keep-alive` to an HTTP/1.1 head it sends a 1.0
        // client that asked for it; to a 1.0 head without it, nothing.
        *res.version_mut() = http::Version::HTTP_10;
    }
}

/// How long [`serve_connection`] (and so [`serve`]) waits for a request's
/// head, from the moment it starts waiting for one, before it closes the
/// connection without an answer: 60 seconds, nginx's
/// `client_header_timeout`.
///
/// A client that sends its head a byte at a time, or opens connections and
/// sends nothing (slowloris), holds each connection for this long at most.
/// The clock starts when [`serve_connection`] starts (after a TLS
/// handshake, which the caller times) and again once each response has been
/// written, and runs until the next head is complete: one budget for the
/// idle time between requests and the head, so an idle keep-alive
/// connection is closed after 60 s (nginx gives idle connections 75 s,
/// `keepalive_timeout`, and the head its own 60 s from its first byte).
/// Neither a request body nor a response is timed by it: a long poll is not
/// cut here (behind [`WorkerUpstream`], a response body that waits longer
/// than its [`read_timeout`](WorkerUpstream::read_timeout) is), and neither
/// is a slow upload (behind [`WorkerUpstream`], a request body that waits
/// longer than its
/// [`client_body_timeout`](WorkerUpstream::client_body_timeout) for the
/// client is answered `408`). Like the rest of this module it needs a runtime
/// with timers (tokio's `enable_all`, or `enable_time`).
///
/// ```
/// assert_eq!(tower_lb::proxy::HEADER_READ_TIMEOUT.as_secs(), 60);
/// ```
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a write to the client may wait before [`serve_connection`]
/// gives up on the connection: 60 seconds, nginx's `send_timeout`.
///
/// The clock runs only while a write cannot go through, and starts again
/// after each one that does, so a large download to a slow client is not
/// cut, but a client that stops reading (a slow-read attack, a peer that
/// vanished without a close) releases its connection, and the backend
/// connection its response was streaming from, after this long. A
/// WebSocket tunnel's writes to the client are timed the same way (an idle
/// tunnel is not: nothing waits to be written).
///
/// The clock runs from the first write, flush or shutdown that cannot go
/// through to the next one that does. An upgrade handler of your own that
/// gives up on a pending write (a `select!` around it) and writes again
/// later may find that clock already run out.
///
/// ```
/// assert_eq!(tower_lb::proxy::SEND_TIMEOUT.as_secs(), 60);
/// ```
pub const SEND_TIMEOUT: Duration = Duration::from_secs(60);
