//! [`WorkerUpstream`]: the upstream client for one worker of a proxy that
//! runs a runtime per core (nginx's worker model).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower_service::Service;

use super::is_upgrade;
use crate::BoxError;

/// How many idle or busy connections one backend keeps in a worker's pool
/// by default: as nginx's `keepalive`, a cap on what is kept, not on what
/// is opened.
pub const DEFAULT_MAX_CONNECTIONS_PER_BACKEND: usize = 256;

/// The upstream client for one worker thread: HTTP/1.1 over plain TCP with
/// a keep-alive pool of its own, and WebSocket passthrough as in
/// [`Upstream`](super::Upstream).
///
/// [`Upstream`](super::Upstream) wraps hyper-util's general client: one
/// pool shared by every thread, a check-out that races a new connection
/// against an idle one, and a task spawned per request to put the
/// connection back once its response body has been read. A proxy that runs
/// one current-thread runtime per core (as nginx runs one worker per core)
/// does not need that generality: each worker keeps its own pool, takes the
/// first connection to the backend that is ready, and puts a connection
/// back as soon as the response head arrives; a connection still busy with
/// its body is skipped until hyper reports it ready again. Nothing is
/// spawned per request, and connections stay on the thread that uses them.
///
/// Build one per worker (a clone shares the pool). Only `http` URIs are
/// supported; the director writes the backend's absolute URI, which is sent
/// in origin form, with a `Host` header from it if the request has none.
/// A request that a reused connection closed before sending is tried once
/// more on a new connection, as hyper-util's client does.
///
/// ```
/// use tower_lb::proxy::WorkerUpstream;
///
/// let upstream: WorkerUpstream = WorkerUpstream::new();
/// # let _ = upstream;
/// ```
#[derive(Debug)]
pub struct WorkerUpstream<B = Incoming> {
    pool: Arc<Pool<B>>,
}

impl<B> Clone for WorkerUpstream<B> {
    fn clone(&self) -> Self {
        WorkerUpstream {
            pool: Arc::clone(&self.pool),
        }
    }
}

#[derive(Debug)]
struct Pool<B> {
    /// Per backend, the connections: ready ones are taken, busy ones wait
    /// there until hyper says they are ready (or closed).
    by_backend: Mutex<HashMap<Authority, Vec<SendRequest<B>>>>,
    max_per_backend: usize,
}

impl<B> Default for WorkerUpstream<B> {
    fn default() -> Self {
        WorkerUpstream::with_max_connections_per_backend(DEFAULT_MAX_CONNECTIONS_PER_BACKEND)
    }
}

impl<B> WorkerUpstream<B> {
    /// A client keeping up to [`DEFAULT_MAX_CONNECTIONS_PER_BACKEND`]
    /// connections per backend.
    pub fn new() -> Self {
        Self::default()
    }

    /// A client keeping up to `max` connections per backend (at least 1);
    /// more are opened when all are busy, and closed after their request.
    pub fn with_max_connections_per_backend(max: usize) -> Self {
        WorkerUpstream {
            pool: Arc::new(Pool {
                by_backend: Mutex::new(HashMap::new()),
                max_per_backend: max.max(1),
            }),
        }
    }
}

impl<B> Pool<B> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Authority, Vec<SendRequest<B>>>> {
        // Nothing panics while the lock is held.
        self.by_backend
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A ready connection to `backend`, dropping closed ones on the way.
    fn checkout(&self, backend: &Authority) -> Option<SendRequest<B>> {
        let mut pool = self.lock();
        let conns = pool.get_mut(backend)?;
        let mut i = conns.len();
        while i > 0 {
            i -= 1;
            if conns[i].is_closed() {
                conns.swap_remove(i);
            } else if conns[i].is_ready() {
                return Some(conns.swap_remove(i));
            }
        }
        None
    }

    fn checkin(&self, backend: Authority, conn: SendRequest<B>) {
        if conn.is_closed() {
            return;
        }
        let mut pool = self.lock();
        let conns = pool.entry(backend).or_default();
        if conns.len() < self.max_per_backend {
            conns.push(conn);
        }
    }
}

/// A new connection to `backend`, driven by a task on this runtime.
async fn connect<B>(backend: &Authority) -> Result<SendRequest<B>, BoxError>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let port = backend.port_u16().unwrap_or(80);
    // An IPv6 literal is bracketed in the authority.
    let host = backend.host().trim_start_matches('[').trim_end_matches(']');
    let stream = TcpStream::connect((host, port)).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        // Its errors reach the request that was using it.
        let _ = conn.with_upgrades().await;
    });
    Ok(sender)
}

/// The backend of a request the director addressed: its authority, and the
/// request rewritten to origin form with a `Host`.
fn prepare<B>(req: &mut Request<B>) -> Result<Authority, BoxError> {
    let uri = req.uri();
    if uri.scheme() != Some(&Scheme::HTTP) {
        return Err(format!("WorkerUpstream sends plain http only, not to {uri}").into());
    }
    let authority = uri
        .authority()
        .cloned()
        .ok_or("a request to the upstream needs an absolute URI")?;
    let origin = match uri.path_and_query() {
        Some(path) => Uri::from(path.clone()),
        None => Uri::from_static("/"),
    };
    *req.uri_mut() = origin;
    if !req.headers().contains_key(http::header::HOST) {
        let host = HeaderValue::from_str(authority.as_str())?;
        req.headers_mut().insert(http::header::HOST, host);
    }
    Ok(authority)
}

impl<B> Service<Request<B>> for WorkerUpstream<B>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<Incoming>;
    type Error = BoxError;
    // The response is awaited before it is returned (the connection goes
    // back to the pool then), as in `Upstream`.
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    #[inline]
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let client_side = is_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
        let tunnel_load = super::tunnel_load(&req, client_side.is_some());
        let pool = Arc::clone(&self.pool);
        Box::pin(async move {
            let backend = prepare(&mut req)?;
            let (mut conn, reused) = match pool.checkout(&backend) {
                Some(conn) => (conn, true),
                None => (connect(&backend).await?, false),
            };
            let mut res = match conn.try_send_request(req).await {
                Ok(res) => res,
                Err(mut error) => match error.take_message() {
                    // Closed under us before the request was written: once
                    // more, on a fresh connection.
                    Some(req) if reused => {
                        conn = connect(&backend).await?;
                        conn.send_request(req).await?
                    }
                    _ => return Err(error.into_error().into()),
                },
            };
            if client_side.is_none() {
                pool.checkin(backend, conn);
            }
            if let Some(client_side) = client_side {
                if res.status() == StatusCode::SWITCHING_PROTOCOLS {
                    super::splice_upgrade(client_side, hyper::upgrade::on(&mut res), tunnel_load);
                }
            }
            Ok(res)
        })
    }
}
