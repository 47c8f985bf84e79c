//! [`WorkerUpstream`]: the upstream client for one worker of a proxy that
//! runs a runtime per core (nginx's worker model), driving each backend
//! connection from the task that uses it.

use std::collections::{HashMap, VecDeque};
use std::future::{poll_fn, Future};
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use http::uri::{Authority, Scheme};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower_service::Service;

use super::h1_client::{self, Decoded, ExchangeError, Framing, H1Conn};
use super::stall::StallClock;
use crate::layer::{is_idempotent, is_upgrade, RequestSent};
use crate::BoxError;

/// How many idle connections one backend keeps in a worker's pool by
/// default: as nginx's `keepalive`, a cap on what is kept, not on what is
/// opened.
pub const DEFAULT_MAX_CONNECTIONS_PER_BACKEND: usize = 256;

/// How long an idle connection is kept by default: nginx's upstream
/// `keepalive_timeout`, 60 seconds.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a response body may go without a byte from the backend by
/// default: nginx's `proxy_read_timeout`, 60 seconds.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a TCP connect to a backend may take by default: nginx's
/// `proxy_connect_timeout`, 60 seconds.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a request body being sent may go without a byte from the
/// client by default: nginx's `client_body_timeout`, 60 seconds.
pub const DEFAULT_CLIENT_BODY_TIMEOUT: Duration = Duration::from_secs(60);

/// The upstream client for one worker thread: HTTP/1.1 over plain TCP with
/// a keep-alive pool of its own, and WebSocket passthrough as in
/// [`Upstream`](super::Upstream).
///
/// [`Upstream`](super::Upstream) wraps hyper-util's general client: one
/// pool shared by every thread, a task per backend connection that the
/// request hands its message to and gets its response back from, and a
/// task spawned per request to put the connection back once its response
/// body has been read. A proxy that runs one runtime per core, as nginx
/// runs one worker per core, does not need that generality. `WorkerUpstream`
/// drives each backend connection from the task that uses it, as nginx's
/// event loop does: the request's future writes the request and reads the
/// response head, and the response body ([`UpstreamBody`]) reads the rest
/// and puts the connection back in the pool when it ends. Nothing is
/// spawned per request or per connection (an upgraded connection aside),
/// no message crosses between tasks, and a connection stays on the thread
/// that uses it. An idle connection is looked at when it is next taken: one
/// the backend closed meanwhile is dropped then, and another is taken.
///
/// Most requests skip even hyper's client connection: one without a body,
/// or with a short body of known length that is all there when it is sent
/// (up to 16 KiB; one [`NextUpstream`](crate::layer::NextUpstream) buffered
/// is), is written to the socket with its head in one write, and its
/// response is read and framed here with hyper's client's rules (RFC 9112
/// §6.3). A response hyper would refuse fails with an `invalid HTTP
/// response from the backend` error, and a connection goes back to the
/// pool only when its response was read exactly to its end, with nothing
/// after it (and, as in nginx, never after an HTTP/1.0 response).
///
/// Build one per worker (a clone shares the pool). Only `http` URIs are
/// supported; the director writes the backend's absolute URI, which is sent
/// in origin form, with a `Host` header from it if the request has none.
/// A request that a reused connection closed before sending is tried once
/// more on a new connection, as hyper-util's client does. A connect that
/// fails is an `io::Error` in the error's source chain
/// (`ConnectionRefused`, or `TimedOut` past
/// [`connect_timeout`](Self::connect_timeout)), which the layers read:
/// [`NextUpstream`](crate::layer::NextUpstream) retries a refused
/// connection, and a timeout is answered `504`.
///
/// ```
/// use std::time::Duration;
/// use tower_lb::proxy::WorkerUpstream;
///
/// let upstream: WorkerUpstream = WorkerUpstream::new().connect_timeout(Duration::from_secs(2));
/// # let _ = upstream;
/// ```
#[derive(Debug)]
pub struct WorkerUpstream<B = Incoming> {
    pool: Arc<Pool<TimedBody<B>>>,
    connect_timeout: Option<Duration>,
    read_timeout: Option<Duration>,
    client_body_timeout: Option<Duration>,
}

impl<B> Clone for WorkerUpstream<B> {
    fn clone(&self) -> Self {
        WorkerUpstream {
            pool: Arc::clone(&self.pool),
            connect_timeout: self.connect_timeout,
            read_timeout: self.read_timeout,
            client_body_timeout: self.client_body_timeout,
        }
    }
}

/// The idle connections of every backend seen so far.
struct Pool<B> {
    by_backend: Mutex<Slots<B>>,
    max_per_backend: usize,
    idle_timeout: Duration,
}

struct Slots<B> {
    by_backend: SlotMap<B>,
    /// Look-ups so far: every [`SWEEP_SLOTS_EVERY`]th, and every new
    /// backend, sweeps the slots (a backend that left the set leaves no
    /// connections behind for long).
    lookups: usize,
}

/// The slots by backend address. Behind a balancer the keys are the
/// addresses of configured or discovered backends, not a client's choice,
/// so SipHash's resistance to chosen keys buys nothing here; FNV-1a hashes
/// an address in a third of the instructions (one look-up a request). (A
/// forward proxy that let clients name the address would face a sweep of
/// every slot per new address first, as before.)
type SlotMap<B> = HashMap<Box<str>, Arc<Slot<B>>, BuildHasherDefault<AddressHasher>>;

/// FNV-1a (64-bit), for [`SlotMap`].
struct AddressHasher(u64);

impl Default for AddressHasher {
    fn default() -> Self {
        AddressHasher(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for AddressHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// How often a slot look-up sweeps every slot for expired connections.
const SWEEP_SLOTS_EVERY: usize = 4096;

impl<B> std::fmt::Debug for Pool<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("max_per_backend", &self.max_per_backend)
            .finish_non_exhaustive()
    }
}

/// One backend's idle connections, newest last.
struct Slot<B> {
    idle: Mutex<Idle<B>>,
    max: usize,
    idle_timeout: Duration,
}

struct Idle<B> {
    /// hyper's client connections, for requests with a body.
    conns: Vec<Conn<B>>,
    /// Connections spoken to directly ([`h1_client`]), for requests
    /// without one.
    direct: Vec<H1Conn>,
    /// Check-ins so far: every [`SWEEP_EVERY`]th looks at the oldest idle
    /// connection, so that one the backend closed does not linger there.
    checkins: usize,
}

/// How often a check-in looks at the oldest idle connection of its slot.
const SWEEP_EVERY: usize = 32;

/// A backend connection: the handle requests are sent through, and the
/// connection itself, which whoever holds it polls.
struct Conn<B> {
    send: SendRequest<B>,
    /// When it was last put back in the pool.
    idle_since: Instant,
    /// The connection itself (hyper's `Connection`, boxed once per
    /// connection so that the types above need no bounds); `None` once it
    /// has ended (closed, or failed). Behind a `Mutex` only so that
    /// [`UpstreamBody`] is `Sync` as hyper's `Incoming` is (boxed bodies
    /// need it); it is only reached through `&mut` (`get_mut`, no lock).
    io: Option<Mutex<ConnectionFuture>>,
}

/// A backend connection, which reads and writes when polled.
type ConnectionFuture = Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while these locks are held.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<B> Default for WorkerUpstream<B> {
    fn default() -> Self {
        WorkerUpstream::with_max_connections_per_backend(DEFAULT_MAX_CONNECTIONS_PER_BACKEND)
    }
}

impl<B> WorkerUpstream<B> {
    /// A client keeping up to [`DEFAULT_MAX_CONNECTIONS_PER_BACKEND`] idle
    /// connections per backend, its connects timed out after
    /// [`DEFAULT_CONNECT_TIMEOUT`].
    pub fn new() -> Self {
        Self::default()
    }

    /// A client keeping up to `max` idle connections per backend (at least
    /// 1); more are opened when all are busy, and closed after their
    /// request if the pool is full.
    pub fn with_max_connections_per_backend(max: usize) -> Self {
        WorkerUpstream {
            pool: Arc::new(Pool {
                by_backend: Mutex::new(Slots {
                    by_backend: SlotMap::default(),
                    lookups: 0,
                }),
                max_per_backend: max.max(1),
                idle_timeout: DEFAULT_IDLE_TIMEOUT,
            }),
            connect_timeout: Some(DEFAULT_CONNECT_TIMEOUT),
            read_timeout: Some(DEFAULT_READ_TIMEOUT),
            client_body_timeout: Some(DEFAULT_CLIENT_BODY_TIMEOUT),
        }
    }

    /// Closes a connection that has been idle for `timeout` (nginx's
    /// upstream `keepalive_timeout`; default [`DEFAULT_IDLE_TIMEOUT`]),
    /// instead of sending a request on it: a backend may have dropped it by
    /// then. Expired connections are closed when their backend is next
    /// used, and otherwise within a few thousand requests to other
    /// backends, so a backend that left the set leaves nothing open. Set it
    /// before cloning: the setting is the pool's, and a client already
    /// cloned gets a pool of its own.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tower_lb::proxy::WorkerUpstream;
    /// let upstream: WorkerUpstream = WorkerUpstream::new().idle_timeout(Duration::from_secs(4));
    /// # let _ = upstream;
    /// ```
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        match Arc::get_mut(&mut self.pool) {
            Some(pool) => pool.idle_timeout = timeout,
            None => {
                let max = self.pool.max_per_backend;
                let mut fresh = WorkerUpstream::<B>::with_max_connections_per_backend(max);
                if let Some(pool) = Arc::get_mut(&mut fresh.pool) {
                    pool.idle_timeout = timeout;
                }
                self.pool = fresh.pool;
            }
        }
        self
    }

    /// Gives up on a TCP connect after `timeout` (nginx's
    /// `proxy_connect_timeout`; default [`DEFAULT_CONNECT_TIMEOUT`], `None`
    /// for the operating system's limit) with an `io::ErrorKind::TimedOut`
    /// error, which [`ResponseTimeout`](crate::layer::ResponseTimeout) and
    /// [`NextUpstream`](crate::layer::NextUpstream) read as a timeout
    /// (`504`, and retried on the next backend).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tower_lb::proxy::WorkerUpstream;
    /// let upstream: WorkerUpstream = WorkerUpstream::new().connect_timeout(Duration::from_millis(500));
    /// # let _ = upstream;
    /// ```
    pub fn connect_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.connect_timeout = timeout.into();
        self
    }

    /// Ends a response body that has waited `timeout` for the backend's
    /// next byte (nginx's `proxy_read_timeout`; default
    /// [`DEFAULT_READ_TIMEOUT`], `None` for no limit, `Duration::ZERO` to
    /// fail on any wait): the body fails with an `io::ErrorKind::TimedOut`
    /// error, and the backend connection is dropped. Served by
    /// [`serve_connection`](super::serve_connection), the client's
    /// connection is then closed (its response cannot be completed), and
    /// the connection's result is a hyper error whose `is_user()` is true
    /// (the body's), with that `io::Error` as its source. A backend that
    /// hangs mid-response no longer holds the client, the connection and the
    /// request's place in flight for ever; it is not counted as a failure
    /// of the backend (the response has begun), as in nginx.
    ///
    /// The clock runs only while the body waits on the backend, not while
    /// the client is slow to take it; a consumer of the body that stops
    /// polling it after a `Pending` (a `select!` around it) leaves it
    /// running. Quiet streams (a long poll, server-sent events) that pause
    /// longer are cut: raise the limit for them. The response head is not
    /// timed here: add [`ResponseTimeout`](crate::layer::ResponseTimeout)
    /// (nginx's `proxy_read_timeout` covers the head too). A WebSocket
    /// tunnel is closed, both ways, once neither side has sent a byte for
    /// this long, as nginx closes one idle for `proxy_read_timeout` (nginx
    /// watches the backend's side; here a byte either way keeps it open):
    /// keep quiet sessions open with pings, or raise the limit. A zero limit
    /// closes a tunnel at once.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tower_lb::proxy::WorkerUpstream;
    /// let upstream: WorkerUpstream = WorkerUpstream::new().read_timeout(Duration::from_secs(300));
    /// let patient: WorkerUpstream = WorkerUpstream::new().read_timeout(None);
    /// # let _ = (upstream, patient);
    /// ```
    pub fn read_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.read_timeout = timeout.into();
        self
    }

    /// Fails a request body that has waited `timeout` for the client's
    /// next byte while it is sent to the backend (nginx's
    /// `client_body_timeout`, between two reads; default
    /// [`DEFAULT_CLIENT_BODY_TIMEOUT`], `None` for no limit): the request
    /// fails with [`Error::RequestTimeout`](crate::Error::RequestTimeout)
    /// (`408`, as nginx answers), not counted against the backend and not
    /// retried, and the backend connection is dropped. A client that
    /// starts an upload and stops (a slow POST) no longer holds a backend
    /// connection for ever. The clock runs only while the body waits on
    /// the client, not while the backend is slow to take it. A body that
    /// [`NextUpstream`](crate::layer::NextUpstream) reads whole before the
    /// first attempt (a short one of known length) is read before any
    /// backend is contacted, and is timed there instead
    /// ([`body_timeout`](crate::layer::NextUpstreamLayer::body_timeout)).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tower_lb::proxy::WorkerUpstream;
    /// let upstream: WorkerUpstream = WorkerUpstream::new().client_body_timeout(Duration::from_secs(10));
    /// # let _ = upstream;
    /// ```
    pub fn client_body_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.client_body_timeout = timeout.into();
        self
    }
}

impl<B> Pool<B> {
    /// `backend`'s slot, made on first use.
    fn slot(&self, backend: &str) -> Arc<Slot<B>> {
        let mut slots = lock(&self.by_backend);
        slots.lookups = slots.lookups.wrapping_add(1);
        let found = slots.by_backend.get(backend).map(Arc::clone);
        if found.is_none() || slots.lookups % SWEEP_SLOTS_EVERY == 0 {
            // A slot found is held here, so the sweep keeps it.
            self.sweep(&mut slots.by_backend);
        }
        if let Some(slot) = found {
            return slot;
        }
        let slot = Arc::new(Slot {
            idle: Mutex::new(Idle {
                conns: Vec::new(),
                direct: Vec::new(),
                checkins: 0,
            }),
            max: self.max_per_backend,
            idle_timeout: self.idle_timeout,
        });
        slots.by_backend.insert(backend.into(), Arc::clone(&slot));
        slot
    }

    /// Closes every expired idle connection, and forgets the slots left
    /// empty that no response holds.
    fn sweep(&self, by_backend: &mut SlotMap<B>) {
        let now = super::clock::task_now();
        by_backend.retain(|_, slot| {
            let mut idle = lock(&slot.idle);
            idle.expire(now, slot.idle_timeout);
            !idle.conns.is_empty() || !idle.direct.is_empty() || Arc::strong_count(slot) > 1
        });
    }
}

impl<B> Idle<B> {
    /// Drops the connections idle for `timeout` or longer: the oldest,
    /// first in line.
    fn expire(&mut self, now: Instant, timeout: Duration) {
        let expired = |idle_since: Instant| now.saturating_duration_since(idle_since) >= timeout;
        // Usually the oldest is still fresh, and so is every other one:
        // one compare, not a search.
        if self.conns.first().is_some_and(|c| expired(c.idle_since)) {
            let fresh = self.conns.partition_point(|c| expired(c.idle_since));
            self.conns.drain(..fresh);
        }
        if self.direct.first().is_some_and(|c| expired(c.idle_since)) {
            let fresh = self.direct.partition_point(|c| expired(c.idle_since));
            self.direct.drain(..fresh);
        }
    }
}

/// One of a slot's idle lists: hyper's connections or direct ones.
type IdleList<B, C> = fn(&mut Idle<B>) -> &mut Vec<C>;

impl<B> Slot<B> {
    /// The newest connection of an idle `list`, if any, with the time it
    /// was taken at (what its idle check measures from).
    fn take_idle<C>(&self, list: IdleList<B, C>) -> Option<(C, Instant)> {
        let mut idle = lock(&self.idle);
        if list(&mut idle).is_empty() {
            return None;
        }
        let now = super::clock::task_now();
        idle.expire(now, self.idle_timeout);
        list(&mut idle).pop().map(|conn| (conn, now))
    }

    /// Puts `conn` in an idle `list`, unless the slot holds its most.
    /// Every [`SWEEP_EVERY`]th check-in first looks at the list's oldest
    /// connection, the least likely to be taken soon, and drops it if
    /// `closed` finds its backend closed it meanwhile.
    fn keep_idle<C>(&self, conn: C, list: IdleList<B, C>, closed: impl FnOnce(&mut C) -> bool) {
        let mut idle = lock(&self.idle);
        idle.checkins = idle.checkins.wrapping_add(1);
        if idle.checkins % SWEEP_EVERY == 0 && list(&mut idle).first_mut().is_some_and(closed) {
            list(&mut idle).remove(0);
        }
        if idle.conns.len() + idle.direct.len() < self.max {
            list(&mut idle).push(conn);
        }
    }

    /// The newest idle direct connection, if any, and when it was taken.
    fn checkout_direct(&self) -> Option<(H1Conn, Instant)> {
        self.take_idle(|idle| &mut idle.direct)
    }

    /// Keeps a direct connection whose response was read to its end, if
    /// it may take another request (keep-alive, nothing unread).
    fn checkin_direct(&self, mut conn: H1Conn, keep_alive: bool) {
        if !keep_alive || !conn.is_drained() {
            return;
        }
        conn.reset_for_idle();
        self.keep_idle(
            conn,
            |idle| &mut idle.direct,
            |oldest| !oldest.is_open_and_quiet(super::clock::task_now()),
        );
    }
}

impl<B> Slot<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    fn checkout(&self) -> Option<Conn<B>> {
        self.take_idle(|idle| &mut idle.conns).map(|(conn, _)| conn)
    }

    /// Keeps `conn` for the next request if it can take one now: its
    /// response has been read and its request written. A connection still
    /// writing a request body (a backend may answer, 413 say, before
    /// reading it all) is dropped instead: pooled, nobody would drive it,
    /// and both that upload and the next request would wait on it.
    fn checkin(&self, mut conn: Conn<B>, cx: &mut Context<'_>) {
        if !conn.send.is_ready() {
            // The poll that ended the body may not have turned the
            // connection round yet: once more.
            conn.drive(cx);
        }
        if conn.io.is_none() || !conn.send.is_ready() {
            return;
        }
        conn.idle_since = super::clock::task_now();
        self.keep_idle(
            conn,
            |idle| &mut idle.conns,
            |oldest| {
                let mut noop = Context::from_waker(std::task::Waker::noop());
                !oldest.drive(&mut noop)
            },
        );
    }
}

impl<B> Conn<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// Polls the connection: reads and writes whatever it can. Returns
    /// whether it is still open.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        drive(&mut self.io, cx)
    }

    /// Waits until a request can be sent; `false` if the connection ended
    /// first.
    ///
    /// An idle connection is usually ready at once, so it is first polled
    /// with a waker that does nothing: hyper's connection keeps the waker
    /// it was last polled with, and the request [`send`](Self::send) then
    /// hands it wakes that waker. Were it this task's, the task would be
    /// polled once more for nothing right after it waits for the response
    /// (a whole pass down the stack: about a tenth of a request's cost).
    /// `send` polls the connection with this task's waker straight after.
    async fn ready(&mut self) -> bool {
        let at_once = self.poll_ready(&mut Context::from_waker(std::task::Waker::noop()));
        if let Poll::Ready(ready) = at_once {
            return ready;
        }
        poll_fn(|cx| self.poll_ready(cx)).await
    }

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        let open = self.drive(cx);
        match self.send.poll_ready(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(true),
            Poll::Ready(Err(_)) => Poll::Ready(false),
            Poll::Pending if open => Poll::Pending,
            Poll::Pending => Poll::Ready(false),
        }
    }

    /// Sends `req` and drives the connection until the response head.
    async fn send(
        &mut self,
        req: Request<B>,
    ) -> Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<B>>> {
        // The request's future borrows `send`: the connection is driven
        // through its own field.
        let mut sent = pin!(self.send.try_send_request(req));
        let io = &mut self.io;
        let mut first = true;
        poll_fn(|cx| {
            // Driven first with a waker that does nothing: when the
            // response is there, the connection hands it over (and the
            // body's first bytes, whose channel wakes the connection's
            // waker when the body is read) without waking this task, which
            // is running already; a wake would poll it once more for
            // nothing, a whole pass down the stack. Whatever still waits
            // (the response, or the rest of a body being sent) is driven
            // again with this task's waker before it returns `Pending`,
            // and a response body left to read is driven with the reader's
            // waker by `UpstreamBody`.
            let quiet = &mut Context::from_waker(std::task::Waker::noop());
            // `try_send_request` queued the request; the first drive writes
            // it, and has nothing to hand back yet, so it may as well
            // register this task at once.
            if let Poll::Ready(result) = sent.as_mut().poll(quiet) {
                return Poll::Ready(result);
            }
            if !std::mem::replace(&mut first, false) {
                drive(io, quiet);
                if let Poll::Ready(result) = sent.as_mut().poll(quiet) {
                    return Poll::Ready(result);
                }
            }
            drive(io, cx);
            // Whatever the connection did (wrote the request, read the
            // head, closed) the request's future may know now.
            sent.as_mut().poll(cx)
        })
        .await
    }
}

/// Polls a connection: it reads and writes whatever it can. Returns whether
/// it is still open; once it has ended (closed, or failed) it is dropped,
/// and the request in flight, if any, gets the error through its own
/// future.
///
/// The rule that keeps wake-ups from being lost: a connection polled with a
/// no-op waker (to spare the running task a wake; see [`Conn::ready`] and
/// [`Conn::send`]) must be polled with the task's own waker before anything
/// returns `Pending` while it still has work: in `send` itself, or, once the
/// response is handed over, by [`UpstreamBody`], which drives with its
/// reader's waker whenever its body waits. hyper re-registers everything it
/// waits on (socket, request body, response-body channel) on every poll, so
/// the last poll's waker is the one that counts.
fn drive(io: &mut Option<Mutex<ConnectionFuture>>, cx: &mut Context<'_>) -> bool {
    if let Some(conn) = io {
        let conn = conn
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if conn.as_mut().poll(cx).is_ready() {
            *io = None;
        }
    }
    io.is_some()
}

/// A new connection to `backend`, for the caller to drive.
async fn connect<B>(backend: Authority, timeout: Option<Duration>) -> Result<Conn<B>, BoxError>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let stream = connect_tcp(&backend, timeout).await?;
    let (send, io) = http1::handshake(TokioIo::new(stream)).await?;
    Ok(Conn {
        send,
        idle_since: super::clock::task_now(),
        io: Some(Mutex::new(Box::pin(io))),
    })
}

/// A TCP connection to `backend`, with `TCP_NODELAY`.
async fn connect_tcp(
    backend: &Authority,
    timeout: Option<Duration>,
) -> Result<TcpStream, ConnectError> {
    let port = backend.port_u16().unwrap_or(80);
    // An IPv6 literal is bracketed in the authority.
    let host = backend.host().trim_start_matches('[').trim_end_matches(']');
    let connecting = TcpStream::connect((host, port));
    let stream = match timeout {
        Some(limit) => match tokio::time::timeout(limit, connecting).await {
            Ok(connected) => connected,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
        },
        None => connecting.await,
    };
    let stream = stream.map_err(|source| ConnectError { source })?;
    stream
        .set_nodelay(true)
        .map_err(|source| ConnectError { source })?;
    Ok(stream)
}

/// [`WorkerUpstream`] could not connect to the backend (refused, timed out,
/// unreachable): nothing of the request was sent, so any request may be
/// tried on another backend, whatever its method. The `io::Error` is its
/// source.
///
/// ```
/// use tower_lb::layer::NextUpstreamLayer;
/// use tower_lb::proxy::ConnectError;
///
/// // Retried whatever the method: a connect timeout too, not only a refusal.
/// let retries = NextUpstreamLayer::new().never_sent(|e| e.is::<ConnectError>());
/// # let _ = retries;
/// ```
#[derive(Debug)]
pub struct ConnectError {
    source: io::Error,
}

impl ConnectError {
    /// What the connect failed with.
    pub fn io_error(&self) -> &io::Error {
        &self.source
    }
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "could not connect to the backend: {}", self.source)
    }
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// A new connection to `backend` on a task of its own, for an upgrade: the
/// connection then becomes the tunnel's, which outlives the response.
async fn connect_spawned<B>(
    backend: Authority,
    timeout: Option<Duration>,
) -> Result<SendRequest<B>, BoxError>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let stream = connect_tcp(&backend, timeout).await?;
    let (send, io) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        // Its errors reach the request that was using it.
        let _ = io.with_upgrades().await;
    });
    Ok(send)
}

/// The backend of a request the director addressed: its authority, and the
/// request rewritten to origin form with a `Host`.
fn prepare<B>(req: &mut Request<B>) -> Result<Authority, BoxError> {
    let uri = req.uri();
    if uri.scheme() != Some(&Scheme::HTTP) {
        return Err(format!("WorkerUpstream sends plain http only, not to {uri}").into());
    }
    // The target's parts are moved, not copied: a copy of each is a count
    // on its bytes, and another when the absolute target is dropped.
    let parts = std::mem::take(req.uri_mut()).into_parts();
    let Some(authority) = parts.authority else {
        return Err("a request to the upstream needs an absolute URI".into());
    };
    let origin = match parts.path_and_query {
        Some(path) => Uri::from(path),
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
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<UpstreamBody<B>>;
    type Error = BoxError;
    // The response head is awaited before it is returned, as in `Upstream`.
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    #[inline]
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let timeout = self.connect_timeout;
        let read_timeout = self.read_timeout;
        if is_upgrade(req.headers()) {
            return Box::pin(upgrade(req, timeout, read_timeout));
        }
        // What was taken of the body trying to send it directly, if that
        // could not be done: sent first by hyper's connection.
        let mut held = None;
        if req.method() != Method::CONNECT {
            if req.body().is_end_stream() {
                return boxed(direct(&self.pool, req, None, timeout, read_timeout));
            }
            let announced = req.body().size_hint();
            let (frames, inner_ended) = match take_whole(req.body_mut()) {
                Taken::Whole(chunks) if sendable_whole(req.headers(), &chunks) => {
                    return boxed(direct(&self.pool, req, Some(chunks), timeout, read_timeout));
                }
                Taken::Whole(chunks) => (as_frames(chunks), true),
                Taken::Ended(frames) => (frames, true),
                Taken::Part(frames) => (frames, false),
            };
            // Nothing taken from a body still going: nothing to hold.
            if inner_ended || !frames.is_empty() {
                held = Some(Held {
                    frames,
                    announced,
                    inner_ended,
                });
            }
        }
        let client_body_timeout = self.client_body_timeout;
        let pool = Arc::clone(&self.pool);
        Box::pin(async move {
            let backend = prepare(&mut req)?;
            // Only a body still to send has an end to report.
            let sent = if held.is_none() && req.body().is_end_stream() {
                None
            } else {
                req.extensions().get::<RequestSent>().cloned()
            };
            let req = req.map(|body| TimedBody::new(body, client_body_timeout, sent, held));
            let slot = pool.slot(backend.as_str());
            // The newest idle connection that is still open and ready.
            let mut reused = true;
            let mut conn = loop {
                match slot.checkout() {
                    Some(mut conn) => {
                        if conn.ready().await {
                            break conn;
                        }
                    }
                    None => {
                        reused = false;
                        break Box::pin(connect(backend.clone(), timeout)).await?;
                    }
                }
            };
            let res = match conn.send(req).await {
                Ok(res) => res,
                Err(mut error) => match error.take_message() {
                    // Closed under us before the request was written: once
                    // more, on a fresh connection.
                    Some(req) if reused => {
                        conn = Box::pin(connect(backend, timeout)).await?;
                        match conn.send(req).await {
                            Ok(res) => res,
                            Err(error) => return Err(unsent(error)),
                        }
                    }
                    Some(_) => return Err(Box::new(closed_before_sending())),
                    None => return Err(error.into_error().into()),
                },
            };
            let lease = Lease { conn, slot };
            Ok(res.map(|body| UpstreamBody::leased(body, lease, read_timeout)))
        })
    }
}

/// The largest request body sent directly ([`h1_client`]): written with
/// its head in one go, which a socket's send buffer takes at once, so no
/// backend that answers before reading can leave the write waiting.
const DIRECT_BODY_LIMIT: u64 = 16 * 1024;

/// What [`take_whole`] got of a body.
enum Taken {
    /// All of it: its data, in order.
    Whole(Vec<Bytes>),
    /// What it gave before it had to wait, stopped at its limit, or sent
    /// trailers or an error: for hyper's connection to send first.
    Part(Taking),
    /// All of it, but not as it announced itself (more or fewer bytes):
    /// for hyper's connection to send, or fail, as it would have.
    Ended(Taking),
}

/// Takes a short body of known length whole, if it is all there already
/// (one [`NextUpstream`](crate::layer::NextUpstream) buffered, or one whose
/// bytes came with the head): polled with a waker that does nothing, and
/// whatever it gives is kept.
fn take_whole<B>(body: &mut B) -> Taken
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    let mut chunks = Vec::new();
    let Some(announced) = body.size_hint().exact().filter(|&n| n <= DIRECT_BODY_LIMIT) else {
        return Taken::Part(VecDeque::new());
    };
    // A body that gives more or less than it announced is left to hyper,
    // which sends what was announced (or fails).
    let whole = |chunks: Vec<Bytes>, len: u64| {
        if len == announced {
            Taken::Whole(chunks)
        } else {
            Taken::Ended(as_frames(chunks))
        }
    };
    let mut quiet = Context::from_waker(std::task::Waker::noop());
    let mut len = 0;
    loop {
        match Pin::new(&mut *body).poll_frame(&mut quiet) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(mut data) => {
                    let chunk = data.copy_to_bytes(data.remaining());
                    len += chunk.len() as u64;
                    chunks.push(chunk);
                    if len > DIRECT_BODY_LIMIT {
                        return Taken::Part(as_frames(chunks));
                    }
                    // A body that knows it has ended may not say so again.
                    if body.is_end_stream() {
                        return whole(chunks, len);
                    }
                }
                Err(frame) => {
                    let mut part = as_frames(chunks);
                    if let Ok(trailers) = frame.into_trailers() {
                        part.push_back(Ok(Frame::trailers(trailers)));
                    }
                    return Taken::Part(part);
                }
            },
            Poll::Ready(None) => return whole(chunks, len),
            Poll::Ready(Some(Err(error))) => {
                let mut part = as_frames(chunks);
                part.push_back(Err(error.into()));
                return Taken::Part(part);
            }
            Poll::Pending => return Taken::Part(as_frames(chunks)),
        }
    }
}

/// Taken chunks as the frames hyper's connection sends first.
fn as_frames(chunks: Vec<Bytes>) -> Taking {
    chunks.into_iter().map(|c| Ok(Frame::data(c))).collect()
}

/// Whether a whole body can go directly: framed by a `Content-Length`
/// that is missing or invalid (hyper writes its own then) or right, and
/// no `Transfer-Encoding` asked for (hyper would chunk it).
fn sendable_whole(headers: &HeaderMap, chunks: &[Bytes]) -> bool {
    let len = chunks.iter().map(|c| c.len() as u64).sum::<u64>();
    !headers.contains_key(http::header::TRANSFER_ENCODING)
        && h1_client::request_length(headers).is_none_or(|given| given.is_none_or(|n| n == len))
}

/// A request without a body, or with a short one taken whole (`body`),
/// exchanged directly ([`h1_client`]) on a connection of the pool's.
///
/// The request is encoded before the future is made, and only what the
/// exchange needs goes into it: an `async fn` keeps its arguments in its
/// state for its whole life, and the request's parts and body would make
/// every request's future too large for the allocator's fast sizes (it
/// was 1.5 KiB; the boxed retry below is kept out of it the same way).
fn direct<B>(
    pool: &Pool<TimedBody<B>>,
    mut req: Request<B>,
    body: Option<Vec<Bytes>>,
    timeout: Option<Duration>,
    read_timeout: Option<Duration>,
) -> Result<Pin<Box<impl Future<Output = Answer<B>>>>, BoxError>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let backend = prepare(&mut req)?;
    let method = req.method().clone();
    // A `ResponseTimeout` outside starts its clock once the body is sent.
    let sent = body
        .as_ref()
        .and_then(|_| req.extensions().get::<RequestSent>().cloned());
    if let Some(sent) = &sent {
        sent.track();
    }
    let (mut parts, _ended) = req.into_parts();
    // The request's extension map, emptied, holds the response's (what
    // `LoadBalance` puts there): no new map per response.
    let mut extensions = std::mem::take(&mut parts.extensions);
    extensions.clear();
    let mut request = RequestBytes::take();
    let (headers, request_keep_alive) = h1_client::encode_request(
        Request::from_parts(parts, ()),
        body.as_deref(),
        &mut request.0,
    );
    // The backend's slot is found here, so that the future holds it and
    // not a count on the whole pool.
    let slot = pool.slot(backend.as_str());
    // Boxed where it is made: the future is put in its box as it is built,
    // not built and then copied there.
    Ok(Box::pin(async move {
        let on_sent = || {
            if let Some(sent) = &sent {
                sent.progressed();
                sent.done();
            }
        };
        // The newest idle connection that is still open and quiet.
        let mut reused = true;
        let mut conn = loop {
            match slot.checkout_direct() {
                Some((conn, now)) if conn.is_open_and_quiet(now) => break conn,
                Some(_) => {}
                None => {
                    reused = false;
                    break H1Conn::new(Box::pin(connect_tcp(&backend, timeout)).await?);
                }
            }
        };
        let exchanged = conn.exchange(&request.0, &method, headers, on_sent).await;
        let (conn, answer) = match exchanged {
            Ok(answer) => (conn, answer),
            // Closed under us before a byte of the request was written, or,
            // for a request that may be repeated, before a byte of the answer
            // (the backend closing the connection while idle as the request
            // went out; nginx tries a cached connection's failure again, and
            // Go's client a reused one's for its safe methods): once more, on a
            // fresh connection.
            // (Boxed: rare, and its state would otherwise make every
            // request's future larger.)
            Err(ExchangeError::Unsent) if reused => {
                Box::pin(retry_fresh(&backend, timeout, &request.0, &method, on_sent)).await?
            }
            Err(ExchangeError::Unanswered(_)) if reused && is_idempotent(&method) => {
                Box::pin(retry_fresh(&backend, timeout, &request.0, &method, on_sent)).await?
            }
            Err(ExchangeError::Unsent) => return Err(closed_before_sending().into()),
            Err(ExchangeError::Unanswered(error) | ExchangeError::Failed(error)) => {
                return Err(error)
            }
        };
        let lease = DirectLease {
            conn,
            keep_alive: answer.keep_alive && request_keep_alive,
            slot,
        };
        let body = UpstreamBody::direct(answer.framing, lease, read_timeout);
        let mut response = answer.response;
        if response.extensions().is_empty() {
            *response.extensions_mut() = extensions;
        }
        Ok(response.map(|()| body))
    }))
}

/// An encoded request, in a buffer kept per thread for the next one: no
/// allocation and no free per request once a thread has served as many at
/// once as it will.
struct RequestBytes(Vec<u8>);

thread_local! {
    static SPARE_REQUEST_BYTES: std::cell::RefCell<Vec<Vec<u8>>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

impl RequestBytes {
    /// At most this many buffers are kept per thread...
    const KEPT: usize = 256;
    /// ... each of at most this size (a larger one, a long head or a
    /// short body sent with it, is let go).
    const KEPT_CAPACITY: usize = 4 * 1024;

    /// An empty buffer, a kept one if there is one.
    fn take() -> Self {
        let kept = SPARE_REQUEST_BYTES
            .try_with(|spare| spare.borrow_mut().pop())
            .ok()
            .flatten();
        RequestBytes(kept.unwrap_or_default())
    }
}

impl Drop for RequestBytes {
    fn drop(&mut self) {
        if self.0.capacity() == 0 || self.0.capacity() > Self::KEPT_CAPACITY {
            return;
        }
        let mut bytes = std::mem::take(&mut self.0);
        bytes.clear();
        // At thread exit the list may be gone: the buffer is freed.
        let _ = SPARE_REQUEST_BYTES.try_with(|spare| {
            let mut spare = spare.borrow_mut();
            if spare.len() < Self::KEPT {
                spare.push(bytes);
            }
        });
    }
}

/// What a request to a backend comes to.
type Answer<B> = Result<Response<UpstreamBody<B>>, BoxError>;

/// [`direct`]'s future, or its error, boxed as [`WorkerUpstream`]'s.
fn boxed<F, T>(
    direct: Result<Pin<Box<F>>, BoxError>,
) -> Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>
where
    F: Future<Output = Result<T, BoxError>> + Send + 'static,
    T: Send + 'static,
{
    match direct {
        Ok(exchange) => exchange,
        Err(error) => Box::pin(std::future::ready(Err(error))),
    }
}

/// [`direct`]'s second try, on a new connection.
async fn retry_fresh(
    backend: &Authority,
    timeout: Option<Duration>,
    request: &[u8],
    method: &Method,
    on_sent: impl FnOnce(),
) -> Result<(H1Conn, h1_client::Head), BoxError> {
    let mut conn = H1Conn::new(Box::pin(connect_tcp(backend, timeout)).await?);
    match conn
        .exchange(request, method, HeaderMap::new(), on_sent)
        .await
    {
        Ok(answer) => Ok((conn, answer)),
        // "Never sent", though after an unanswered first try the backend
        // may have had it once: only a repeatable request gets here then.
        Err(ExchangeError::Unsent) => Err(Box::new(closed_before_sending())),
        Err(ExchangeError::Unanswered(error) | ExchangeError::Failed(error)) => Err(error),
    }
}

/// The error of a send on a new connection: a request the connection
/// closed before writing it was not sent at all, as when the connect fails.
fn unsent<B>(mut error: hyper::client::conn::TrySendError<Request<B>>) -> BoxError {
    match error.take_message() {
        Some(_) => Box::new(closed_before_sending()),
        None => Box::new(error.into_error()),
    }
}

fn closed_before_sending() -> ConnectError {
    ConnectError {
        source: io::Error::new(
            io::ErrorKind::ConnectionReset,
            "the backend closed a new connection before the request was written",
        ),
    }
}

/// An upgrade request: a connection of its own, on a task of its own, then
/// the tunnel if the backend switches protocols.
async fn upgrade<B>(
    mut req: Request<B>,
    timeout: Option<Duration>,
    read_timeout: Option<Duration>,
) -> Result<Response<UpstreamBody<B>>, BoxError>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let client_side = hyper::upgrade::on(&mut req);
    let tunnel_load = super::tunnel_load(&req, true);
    let backend = prepare(&mut req)?;
    let mut send = connect_spawned(backend, timeout).await?;
    let mut res = send.send_request(req).await?;
    if res.status() == StatusCode::SWITCHING_PROTOCOLS {
        super::splice_upgrade(
            client_side,
            hyper::upgrade::on(&mut res),
            tunnel_load,
            read_timeout,
        );
    }
    Ok(res.map(|body| UpstreamBody::plain(body, read_timeout)))
}

/// A request body as it is sent: a wait of `client_body_timeout` for the
/// client's next byte fails it (nginx's `client_body_timeout`).
struct TimedBody<B> {
    inner: B,
    // Boxed, and only for a body there is to wait on: every request is
    // moved several times on its way out, and most have no body.
    sending: Option<Box<Sending>>,
    /// Frames already taken from `inner` (by [`take_whole`], which could
    /// not send the body directly): sent first.
    taken: Option<Box<Taking>>,
    /// `inner` has ended (said so while frames were taken): not polled
    /// again.
    inner_ended: bool,
    /// With frames taken, the size `inner` announced before.
    announced: Option<SizeHint>,
}

/// What a body still being sent is watched by.
struct Sending {
    stall: StallClock,
    /// A `ResponseTimeout` outside, waiting to start its clock at the end.
    sent: Option<RequestSent>,
}

type Taking = VecDeque<Result<Frame<Bytes>, BoxError>>;

/// What [`take_whole`] took of a body that still goes through hyper's
/// connection.
struct Held {
    frames: Taking,
    /// The size the body announced before anything was taken.
    announced: SizeHint,
    /// Whether the body said it ended while frames were taken.
    inner_ended: bool,
}

impl<B: Body> TimedBody<B> {
    fn new(
        inner: B,
        limit: Option<Duration>,
        sent: Option<RequestSent>,
        held: Option<Held>,
    ) -> Self {
        let announced = held.as_ref().map(|h| h.announced);
        let inner_ended = held.as_ref().is_some_and(|h| h.inner_ended);
        // Held even if empty: a body taken to its end that still goes
        // through hyper must not look ended before hyper polls it (one whose
        // `Content-Length` disagrees fails there, as it would have).
        let taken = held.map(|h| Box::new(h.frames));
        let ended = taken.is_none() && inner.is_end_stream();
        if let Some(sent) = &sent {
            sent.track();
            if ended {
                sent.done();
            }
        }
        let watched = limit.is_some() || sent.is_some();
        let sending = (watched && !ended).then(|| {
            Box::new(Sending {
                stall: StallClock::new(limit),
                sent,
            })
        });
        TimedBody {
            inner,
            sending,
            taken,
            inner_ended,
            announced,
        }
    }
}

impl<B> TimedBody<B> {
    /// The body has ended: a `ResponseTimeout` outside starts its clock.
    fn ended(&self) {
        if let Some(Sending {
            sent: Some(sent), ..
        }) = self.sending.as_deref()
        {
            sent.done();
        }
    }
}

/// The error of a request body whose client went quiet for `limit`.
fn client_body_timed_out(limit: Duration) -> BoxError {
    Box::new(io::Error::new(
        io::ErrorKind::TimedOut,
        format!("the client sent nothing of its request body for {limit:?}"),
    ))
}

/// hyper drops a body once it has sent all of it, without always polling
/// it for its end (a `Content-Length` body that does not report its end
/// itself): the end is also when it goes.
impl<B> Drop for TimedBody<B> {
    fn drop(&mut self) {
        self.ended();
    }
}

impl<B> Body for TimedBody<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let first = this.taken.as_deref_mut().and_then(VecDeque::pop_front);
        if this.taken.as_deref().is_some_and(VecDeque::is_empty) {
            this.taken = None;
        }
        let polled = match first {
            Some(frame) => Poll::Ready(Some(frame)),
            None if this.inner_ended => Poll::Ready(None),
            None => Pin::new(&mut this.inner).poll_frame(cx).map(|frame| {
                frame.map(|f| {
                    f.map(|f| f.map_data(|mut data| data.copy_to_bytes(data.remaining())))
                        .map_err(Into::into)
                })
            }),
        };
        match polled {
            Poll::Ready(frame) => {
                if let Some(sending) = &mut this.sending {
                    sending.stall.stop();
                    if let Some(sent) = &sending.sent {
                        sent.progressed();
                    }
                }
                if frame.is_none() || this.is_end_stream() {
                    this.ended();
                }
                Poll::Ready(frame)
            }
            Poll::Pending => {
                if let Some(sending) = this.sending.as_deref_mut() {
                    if let Some(sent) = &sending.sent {
                        sent.waiting();
                    }
                    if sending.stall.expired(cx) {
                        let limit = sending.stall.limit();
                        return Poll::Ready(Some(Err(client_body_timed_out(limit))));
                    }
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let end = self.taken.is_none() && (self.inner_ended || self.inner.is_end_stream());
        if end {
            self.ended();
        }
        end
    }

    fn size_hint(&self) -> SizeHint {
        // What the body announced before anything was taken from it: what
        // hyper, which reads it once before sending, would have seen.
        match &self.announced {
            Some(announced) => *announced,
            None => self.inner.size_hint(),
        }
    }
}

/// A connection lent to one response: back to its slot when the body ends.
struct Lease<B> {
    conn: Conn<TimedBody<B>>,
    slot: Arc<Slot<TimedBody<B>>>,
}

/// A direct connection lent to one response: back to its slot when the
/// body has been read to its end, if it may be reused.
struct DirectLease<B> {
    conn: H1Conn,
    keep_alive: bool,
    slot: Arc<Slot<TimedBody<B>>>,
}

impl<B> DirectLease<B> {
    fn release(self) {
        self.slot.checkin_direct(self.conn, self.keep_alive);
    }
}

/// The response body of a [`WorkerUpstream`] request: the backend's body,
/// read by driving the backend connection, which goes back to the pool as
/// soon as the body has ended. Dropped before its end, it closes the
/// connection (what is left of the response is not read). A body that
/// waits longer than its `WorkerUpstream`'s
/// [`read_timeout`](WorkerUpstream::read_timeout) for the backend fails.
pub struct UpstreamBody<B> {
    /// Boxed: a response is moved once by each layer it goes back through,
    /// and with its body one pointer wide the moves are inline copies, not
    /// calls to `memcpy` (docs/benchmarks.md, round 13).
    state: Box<BodyState<B>>,
}

/// What an [`UpstreamBody`] reads from, and its clock.
struct BodyState<B> {
    from: Source<B>,
    stall: StallClock,
}

/// Where a response body is read from.
enum Source<B> {
    /// hyper's client connection (a request with a body, an upgrade).
    Hyper {
        inner: Incoming,
        lease: Option<Lease<B>>,
    },
    /// A direct exchange ([`h1_client`]): the body's framing, and the
    /// connection until the body ends or fails.
    Direct {
        framing: Framing,
        lease: Option<DirectLease<B>>,
    },
}

/// The error of a body whose backend went quiet for `limit`.
fn read_timed_out(limit: Duration) -> BoxError {
    Box::new(io::Error::new(
        io::ErrorKind::TimedOut,
        format!("the backend sent nothing of the response body for {limit:?}"),
    ))
}

impl<B> std::fmt::Debug for UpstreamBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.state.from {
            Source::Hyper { inner, lease } => f
                .debug_struct("UpstreamBody")
                .field("inner", inner)
                .field("pooled", &lease.is_some())
                .finish(),
            Source::Direct { framing, lease } => f
                .debug_struct("UpstreamBody")
                .field("framing", framing)
                .field("pooled", &lease.is_some())
                .finish(),
        }
    }
}

impl<B> UpstreamBody<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    fn leased(inner: Incoming, lease: Lease<B>, read_timeout: Option<Duration>) -> Self {
        let mut lease = Some(lease);
        // No body to read (HEAD, 204, 304, `Content-Length: 0`): the
        // connection is free now. A server may never poll such a body.
        if inner.is_end_stream() {
            let mut noop = Context::from_waker(std::task::Waker::noop());
            release(&mut lease, &mut noop);
        }
        UpstreamBody::new(Source::Hyper { inner, lease }, read_timeout)
    }

    fn plain(inner: Incoming, read_timeout: Option<Duration>) -> Self {
        UpstreamBody::new(Source::Hyper { inner, lease: None }, read_timeout)
    }
}

impl<B> UpstreamBody<B> {
    fn direct(framing: Framing, lease: DirectLease<B>, read_timeout: Option<Duration>) -> Self {
        // No body to read: the connection is free now, as in `leased`.
        let lease = if framing.is_done() {
            lease.release();
            None
        } else {
            Some(lease)
        };
        UpstreamBody::new(Source::Direct { framing, lease }, read_timeout)
    }

    fn new(from: Source<B>, read_timeout: Option<Duration>) -> Self {
        UpstreamBody {
            state: Box::new(BodyState {
                from,
                stall: StallClock::new(read_timeout),
            }),
        }
    }
}

/// Puts a lent connection back in its slot, if it can take a request.
fn release<B>(lease: &mut Option<Lease<B>>, cx: &mut Context<'_>)
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    if let Some(Lease { conn, slot }) = lease.take() {
        slot.checkin(conn, cx);
    }
}

type Polled = Poll<Option<Result<Frame<bytes::Bytes>, BoxError>>>;

/// The next frame of a body read through hyper's connection.
fn poll_hyper<B>(
    inner: &mut Incoming,
    lease: &mut Option<Lease<B>>,
    stall: &mut StallClock,
    cx: &mut Context<'_>,
) -> Polled
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let mut driven = false;
    loop {
        let polled = Pin::new(&mut *inner).poll_frame(cx);
        if polled.is_ready() {
            stall.stop();
        }
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                // The last frame: a server that sees the end does not
                // poll again, so the connection goes back now. Trailers
                // end a chunked body, which never reports its end
                // before; hyper's server stops polling after them.
                if frame.is_trailers() || inner.is_end_stream() {
                    release(lease, cx);
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            Poll::Ready(None) => {
                release(lease, cx);
                return Poll::Ready(None);
            }
            Poll::Ready(Some(Err(error))) => {
                *lease = None;
                return Poll::Ready(Some(Err(error.into())));
            }
            Poll::Pending => match lease {
                // Once: the connection, driven, may have just handed
                // the body its next frame.
                Some(held) if !driven => {
                    driven = true;
                    if !held.conn.drive(cx) {
                        // Closed mid-body: the body reports how.
                        *lease = None;
                    }
                }
                _ if stall.expired(cx) => {
                    // The backend went quiet mid-response: its
                    // connection cannot be reused.
                    *lease = None;
                    return Poll::Ready(Some(Err(read_timed_out(stall.limit()))));
                }
                _ => return Poll::Pending,
            },
        }
    }
}

/// The next frame of a body read directly from its connection.
fn poll_direct<B>(
    framing: &mut Framing,
    lease: &mut Option<DirectLease<B>>,
    stall: &mut StallClock,
    cx: &mut Context<'_>,
) -> Polled {
    let Some(held) = lease else {
        // Ended (or failed, which was reported).
        return Poll::Ready(None);
    };
    match held.conn.poll_body(framing, cx) {
        Poll::Ready(Ok(decoded)) => {
            stall.stop();
            let frame = match decoded {
                Decoded::Data(data) => Some(Frame::data(data)),
                Decoded::Trailers(trailers) => Some(Frame::trailers(trailers)),
                Decoded::End => None,
            };
            // The last frame: a server that sees the end does not poll
            // again, so the connection goes back now.
            if framing.is_done() {
                if let Some(held) = lease.take() {
                    held.release();
                }
            }
            Poll::Ready(frame.map(Ok))
        }
        Poll::Ready(Err(error)) => {
            *lease = None;
            Poll::Ready(Some(Err(error)))
        }
        Poll::Pending if stall.expired(cx) => {
            // The backend went quiet mid-response: its connection cannot
            // be reused.
            *lease = None;
            Poll::Ready(Some(Err(read_timed_out(stall.limit()))))
        }
        Poll::Pending => Poll::Pending,
    }
}

impl<B> Body for UpstreamBody<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Polled {
        let this = &mut *self.get_mut().state;
        match &mut this.from {
            Source::Hyper { inner, lease } => poll_hyper(inner, lease, &mut this.stall, cx),
            Source::Direct { framing, lease } => poll_direct(framing, lease, &mut this.stall, cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.state.from {
            Source::Hyper { inner, .. } => inner.is_end_stream(),
            Source::Direct { framing, .. } => framing.is_done(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state.from {
            Source::Hyper { inner, .. } => inner.size_hint(),
            Source::Direct { framing, .. } => match framing {
                Framing::Length(left) => SizeHint::with_exact(*left),
                Framing::Chunked(_) if framing.is_done() => SizeHint::with_exact(0),
                _ => SizeHint::default(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One chunk, then the end, announced as `announced` bytes; polled
    /// after its end, it panics (as some streams do).
    struct Once {
        chunk: Option<Bytes>,
        announced: u64,
        ended: bool,
    }

    impl Body for Once {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            assert!(!self.ended, "polled after its end");
            match self.chunk.take() {
                Some(chunk) => Poll::Ready(Some(Ok(Frame::data(chunk)))),
                None => {
                    self.ended = true;
                    Poll::Ready(None)
                }
            }
        }

        fn size_hint(&self) -> SizeHint {
            SizeHint::with_exact(self.announced)
        }
    }

    fn once(announced: u64) -> Once {
        Once {
            chunk: Some(Bytes::from_static(b"hello")),
            announced,
            ended: false,
        }
    }

    #[test]
    fn a_body_is_taken_whole_only_if_it_gives_what_it_announced() {
        assert!(matches!(take_whole(&mut once(5)), Taken::Whole(c) if c.len() == 1));
        assert!(matches!(take_whole(&mut once(12)), Taken::Ended(f) if f.len() == 1));
        assert!(
            matches!(take_whole(&mut once(DIRECT_BODY_LIMIT + 1)), Taken::Part(f) if f.is_empty())
        );
    }

    #[test]
    fn a_body_taken_to_its_end_is_not_polled_again() {
        let mut body = once(12);
        let Taken::Ended(frames) = take_whole(&mut body) else {
            panic!("not taken to its end");
        };
        let announced = SizeHint::with_exact(12);
        let held = Held {
            frames,
            announced,
            inner_ended: true,
        };
        let mut timed = TimedBody::new(body, None, None, Some(held));
        assert!(!timed.is_end_stream());
        assert_eq!(
            timed.size_hint().exact(),
            Some(12),
            "what the body announced"
        );
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let Poll::Ready(Some(Ok(first))) = Pin::new(&mut timed).poll_frame(&mut cx) else {
            panic!("the taken frame first");
        };
        assert_eq!(first.into_data().unwrap(), "hello");
        assert!(matches!(
            Pin::new(&mut timed).poll_frame(&mut cx),
            Poll::Ready(None)
        ));
        assert!(timed.is_end_stream());
    }
}
