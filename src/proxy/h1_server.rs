//! The client side of [`serve_connection`](super::serve_connection): plain
//! requests read and answered here, everything else by hyper's server.
//!
//! A connection starts here. Each request head is parsed with httparse
//! (hyper's own parser) from the connection's buffer; a *plain* request is
//! turned into a [`Request`] with an empty [`RequestBody`], handed to the
//! stack, and its response written back in one write when it is short. A
//! plain request is an `HTTP/1.1` one whose head parsed whole, with no
//! `Content-Length`, `Transfer-Encoding`, `Upgrade` or `Expect` field, a
//! method other than `CONNECT`, at most [`MAX_FIELDS`] fields and a head of
//! at most [`MAX_HEAD`] bytes, whose names and values `http` accepts: a
//! `GET` from a browser or a load tester.
//!
//! Anything else (a body, an upgrade, `HTTP/1.0`, a malformed or unfinished
//! head, a response this side does not write) hands the connection to
//! hyper's server for the rest of its life: the bytes already read are
//! replayed to it ([`Replayed`]), so hyper parses that request itself, with
//! its own rules and its own error answers, and every request after it. A
//! response already obtained for a plain request whose framing this side
//! does not write (chunked, of unknown length, a `1xx`, an `HTTP/1.0`
//! answer, a `Trailer` field) goes out as hyper's answer to that same
//! request. What cannot be told apart from hyper's server is the point:
//! this side writes the response head byte for byte as hyper does (field
//! order, `content-length` and `date` added where hyper adds them,
//! `connection: close` when the request asked to close), closes after the
//! response when hyper would, stops watching the connection for a close
//! when hyper does, and times heads and writes with the same clocks.

use std::cell::Cell;
use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, EXPECT, TRAILER, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::Body;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::rt::{Read, ReadBuf, ReadBufCursor, Write};
use hyper::server::conn::http1;
use tower::ServiceExt;
use tower_service::Service;

use super::field_name::field_name;
use super::head_timer::HeadTimer;
use super::send_timeout::SendTimeout;
use super::timer_pool::Alarm;
use super::{close_if_unframed, ProxyBody, RequestBody, HEADER_READ_TIMEOUT, SEND_TIMEOUT};
use crate::layer::lists_token;
use crate::sticky::ClientAddr;
use crate::{BoxError, Error};

/// The longest head read here; a longer one goes to hyper (whose limit is
/// far higher).
pub(super) const MAX_HEAD: usize = 16 * 1024;

/// The most fields a head read here may have; one with more goes to hyper
/// (which takes 100).
pub(super) const MAX_FIELDS: usize = 32;

/// Fields a request's map has room for beyond its own.
const ROOM_FOR_DIRECTOR: usize = 6;

/// The read buffer's first size.
const FIRST_READ: usize = 4 * 1024;

/// The largest answer buffer a connection keeps between answers.
const KEPT_OUT: usize = 2 * 1024;

/// A response body up to this long goes out in the same write as its head.
const JOINED_BODY: usize = 16 * 1024;

/// Serves `io` until the client closes it: see the module docs.
pub(super) async fn serve<I, S, B, E>(
    io: I,
    peer: SocketAddr,
    mut stack: S,
    on_error: Arc<E>,
) -> Result<(), Error>
where
    I: Read + Write + Unpin + Send + 'static,
    S: Service<Request<RequestBody>, Response = Response<B>, Error = Error>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    E: Fn(&Error, SocketAddr) + Send + Sync + 'static,
{
    let mut conn = Conn::new(io);
    // The connection's own stack is made ready and called for each
    // request, as hyper's server does with its service: no clone (and no
    // drop) of the whole stack per request.
    loop {
        // The request is taken from where the parse built it, not moved
        // back out through the reads' futures: each move was a copy of the
        // request and its head, about 290 bytes (docs/benchmarks.md,
        // round 13).
        match conn.read_head(peer).await? {
            Head::Plain => {}
            Head::Closed => return conn.shutdown().await,
            Head::Other => return hand_over(conn, None, peer, stack, on_error).await,
        }
        let Some(Plain {
            request,
            head,
            method_is_head,
            keep_alive,
        }) = conn.parsed.take()
        else {
            // Not reached: `Head::Plain` is returned right after the parse
            // put the request there. Were it missing, its bytes are already
            // consumed: the connection ends rather than answer out of step.
            return conn.shutdown().await;
        };
        let res = {
            let ready = conn.watching(poll_fn(|cx| stack.poll_ready(cx))).await?;
            let answered = match ready {
                Ok(()) => {
                    // Pinned where it is made (the stack's future is large,
                    // and each move of it is a copy) and watched through
                    // its pin; dropped with this block, before the answer
                    // is written: what it holds (a concurrency permit,
                    // say) goes as soon as the answer is there.
                    let call = pin!(stack.call(request));
                    conn.watching(call).await?
                }
                Err(error) => Err(error),
            };
            match answered {
                Ok(res) => res.map(Either::Left),
                Err(error) => {
                    on_error(&error, peer);
                    error.to_response::<Full<Bytes>>().map(Either::Right)
                }
            }
        };
        let out = std::mem::take(&mut conn.out);
        let Some(encoded) = encode_head(&res, method_is_head, keep_alive, out) else {
            return hand_over(conn, Some((head, res)), peer, stack, on_error).await;
        };
        let close = encoded.close;
        let (mut parts, body) = res.into_parts();
        // The answer's field map, emptied, holds the next request's fields
        // (hyper's server keeps one the same way): no new map per request.
        let mut fields = std::mem::take(&mut parts.headers);
        // Its extension map too, for the next request's.
        let mut extensions = std::mem::take(&mut parts.extensions);
        drop(parts);
        fields.clear();
        extensions.clear();
        conn.spare = Some((fields, extensions));
        let cut_short = conn.write_response(encoded, body).await?;
        if close || cut_short {
            // As hyper ends a connection it answered for the last time.
            return conn.shutdown().await;
        }
    }
}

/// The connection to the client while this side serves it.
struct Conn<I> {
    io: SendTimeout<I>,
    /// Read bytes: `buf[start..end]` not yet parsed. Initialized once and
    /// reused, so a read needs no zeroing.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The clock on each head ([`HEADER_READ_TIMEOUT`]): set up to a second
    /// before the head's deadline (most heads of a busy connection come
    /// within a second of the last), moved on to it if it rings first, and
    /// not polled again by the task whose waker it holds.
    head_clock: Option<Alarm>,
    /// When the head being read must be in.
    head_deadline: Option<tokio::time::Instant>,
    /// An empty field map and extension map for the next request.
    spare: Option<(HeaderMap, http::Extensions)>,
    /// The plain request [`read_head`](Self::read_head) found.
    parsed: Option<Plain>,
    /// The buffer the last answer's head was written in, for the next.
    out: Vec<u8>,
}

/// `bytes` copied into a `Bytes` that its slices share. A head of up to
/// 1,000 bytes (nearly all) takes one allocation, its bytes and their
/// count together; `Bytes::copy_from_slice` takes two once the copy is
/// shared (the copy, then the count, made on its first slice).
fn shared_copy(bytes: &[u8]) -> Bytes {
    /// A short copy and its length, kept inline.
    struct Inline<const N: usize> {
        len: usize,
        bytes: [u8; N],
    }
    impl<const N: usize> AsRef<[u8]> for Inline<N> {
        fn as_ref(&self) -> &[u8] {
            &self.bytes[..self.len]
        }
    }
    fn inline<const N: usize>(from: &[u8]) -> Bytes {
        let mut bytes = [0u8; N];
        bytes[..from.len()].copy_from_slice(from);
        Bytes::from_owner(Inline {
            len: from.len(),
            bytes,
        })
    }
    // Sizes that, with `Bytes`' count and this length, stay within the
    // allocator's per-thread caches (256 and 1,024 bytes).
    match bytes.len() {
        0..=232 => inline::<232>(bytes),
        233..=1000 => inline::<1000>(bytes),
        _ => Bytes::copy_from_slice(bytes),
    }
}

/// What [`Conn::read_head`] found.
enum Head {
    /// A plain request, in [`Conn::parsed`].
    Plain,
    /// The client closed the connection between requests.
    Closed,
    /// Not a plain request (or not one yet): hyper's to read.
    Other,
}

/// A plain request, ready for the stack.
struct Plain {
    request: Request<RequestBody>,
    /// The head's bytes, replayed to hyper if the response is left to it.
    head: Bytes,
    method_is_head: bool,
    keep_alive: bool,
}

impl<I: Read + Write + Unpin> Conn<I> {
    fn new(io: I) -> Self {
        Conn {
            io: SendTimeout::new(io, SEND_TIMEOUT),
            buf: vec![0; FIRST_READ],
            start: 0,
            end: 0,
            head_clock: None,
            head_deadline: None,
            spare: None,
            parsed: None,
            out: Vec::new(),
        }
    }

    /// Reads until a head is in and says what it is.
    async fn read_head(&mut self, peer: SocketAddr) -> Result<Head, Error> {
        // The clock starts when this head is first waited for.
        self.head_deadline = None;
        // How many of the unread bytes an attempt has already seen: after
        // a first one, as in hyper, the head is parsed again only once new
        // bytes may end it (a head sent a byte at a time costs one scan,
        // not one parse per byte).
        let mut seen = None;
        loop {
            let unread = &self.buf[self.start..self.end];
            if !unread.is_empty() && seen.is_none_or(|seen| may_end_head(unread, seen)) {
                seen = Some(unread.len());
                match parse_plain(unread, peer, &mut self.spare, &mut self.parsed) {
                    Parsed::Plain(len) => {
                        // (`poll_fill` moves an emptied buffer's ends back.)
                        self.start += len;
                        return Ok(Head::Plain);
                    }
                    Parsed::Partial if self.end - self.start < MAX_HEAD => {}
                    Parsed::Partial | Parsed::Other => return Ok(Head::Other),
                }
            } else if unread.len() >= MAX_HEAD {
                return Ok(Head::Other);
            }
            let read = poll_fn(|cx| self.poll_head_read(cx)).await?;
            if read == 0 {
                // The client closed: cleanly between requests, or mid-head,
                // which hyper reports as it does.
                return Ok(if self.start == self.end {
                    Head::Closed
                } else {
                    Head::Other
                });
            }
        }
    }

    /// One read for the head, on its clock.
    fn poll_head_read(&mut self, cx: &mut Context<'_>) -> Poll<Result<usize, Error>> {
        match self.poll_fill(cx) {
            Poll::Ready(Ok(n)) => Poll::Ready(Ok(n)),
            Poll::Ready(Err(e)) => Poll::Ready(Err(io_error("reading a request head failed", e))),
            Poll::Pending => {
                let deadline = match self.head_deadline {
                    Some(deadline) => deadline,
                    None => {
                        let deadline = super::clock::now() + HEADER_READ_TIMEOUT;
                        self.head_deadline = Some(deadline);
                        deadline
                    }
                };
                let clock = self.head_clock.get_or_insert_with(|| Alarm::new(deadline));
                ready!(clock.poll_until(deadline, cx));
                Poll::Ready(Err(Error::ClientConnection {
                    reason: "the request head did not arrive within the header read timeout",
                    timed_out: true,
                    source: None,
                }))
            }
        }
    }

    /// Reads what the client sent into the buffer's free end: how many
    /// bytes (0: the client closed its side).
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else {
                let grown = (self.buf.len() * 2).min(MAX_HEAD);
                self.buf.resize(grown.max(self.buf.len() + 1), 0);
            }
        }
        let mut read = ReadBuf::new(&mut self.buf[self.end..]);
        match Pin::new(&mut self.io).poll_read(cx, read.unfilled()) {
            Poll::Ready(Ok(())) => {
                let n = read.filled().len();
                self.end += n;
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// `work` (the stack's answer, a response body's next frame), watching
    /// the client meanwhile as hyper's server does: while nothing unread is
    /// buffered, a close (or a reset) from the client ends the connection
    /// and drops `work`; bytes it sends early (a pipelined request) are
    /// kept, and the watch stops.
    async fn watching<F: Future>(&mut self, work: F) -> Result<F::Output, Error> {
        let mut work = pin!(work);
        poll_fn(|cx| {
            if let Poll::Ready(out) = work.as_mut().poll(cx) {
                return Poll::Ready(Ok(out));
            }
            if self.start == self.end {
                match self.poll_fill(cx) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(Error::ClientConnection {
                            reason: "the client closed the connection before its answer was sent",
                            timed_out: false,
                            source: None,
                        }))
                    }
                    Poll::Ready(Err(e)) => {
                        return Poll::Ready(Err(io_error("the client connection failed", e)))
                    }
                    Poll::Ready(Ok(_)) | Poll::Pending => {}
                }
            }
            Poll::Pending
        })
        .await
    }

    /// Writes the response: its head, then `body`'s bytes up to the length
    /// the head promised, by hyper's server's rules: bytes past the length
    /// are not sent; a body that says it has ended (`is_end_stream`) short
    /// of the length is sent as it is and the connection closed after it
    /// (`Ok(true)`); one that ends without saying so, fails, or gives
    /// trailers before its length ends the connection with an error, what
    /// waited to be sent with it dropped. `Ok(false)`: whole.
    async fn write_response<D>(&mut self, head: Encoded, body: D) -> Result<bool, Error>
    where
        D: Body<Data = Bytes>,
        D::Error: Into<BoxError>,
    {
        let Encoded {
            bytes: mut out,
            mut body_len,
            ..
        } = head;
        let mut body = pin!(body);
        let mut short = false;
        while body_len > 0 {
            // A frame at hand joins what is waiting to go; otherwise that
            // goes first, and the next frame is waited for.
            let polled = poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await;
            let frame = match polled {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    self.write_all(&out).await?;
                    out.clear();
                    self.flush().await?;
                    self.watching(poll_fn(|cx| body.as_mut().poll_frame(cx)))
                        .await?
                }
            };
            let data = match frame {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => data,
                    Err(_) => return Err(body_ended_short(None)),
                },
                Some(Err(error)) => return Err(body_ended_short(Some(error.into()))),
                None => return Err(body_ended_short(None)),
            };
            let take = usize::try_from(body_len).map_or(data.len(), |left| left.min(data.len()));
            body_len -= take as u64;
            if out.len() + take <= JOINED_BODY {
                out.extend_from_slice(&data[..take]);
            } else {
                self.write_all(&out).await?;
                out.clear();
                self.write_all(&data[..take]).await?;
            }
            if body_len > 0 && body.is_end_stream() {
                if take == 0 {
                    return Err(body_ended_short(None));
                }
                short = true;
                break;
            }
        }
        self.write_all(&out).await?;
        self.flush().await?;
        // Kept for the next answer's head if it is about a head's size (an
        // idle connection should not hold a joined body's room).
        if out.capacity() <= KEPT_OUT {
            self.out = out;
        }
        Ok(short)
    }

    async fn write_all(&mut self, mut bytes: &[u8]) -> Result<(), Error> {
        while !bytes.is_empty() {
            let n = poll_fn(|cx| Pin::new(&mut self.io).poll_write(cx, bytes))
                .await
                .map_err(|e| io_error("writing the response failed", e))?;
            if n == 0 {
                return Err(io_error(
                    "writing the response failed",
                    io::ErrorKind::WriteZero.into(),
                ));
            }
            bytes = &bytes[n..];
        }
        Ok(())
    }

    /// Ends the connection from this side (a TLS stream sends its
    /// `close_notify`), as hyper's server does.
    async fn shutdown(&mut self) -> Result<(), Error> {
        match poll_fn(|cx| Pin::new(&mut self.io).poll_shutdown(cx)).await {
            // The client is gone already: as good as closed (hyper too).
            Err(e) if e.kind() != io::ErrorKind::NotConnected => {
                Err(io_error("closing the connection failed", e))
            }
            _ => Ok(()),
        }
    }

    async fn flush(&mut self) -> Result<(), Error> {
        poll_fn(|cx| Pin::new(&mut self.io).poll_flush(cx))
            .await
            .map_err(|e| io_error("writing the response failed", e))
    }
}

/// Whether `bytes`, of which the first `seen` were looked at before,
/// may now hold the blank line that ends a head (`\n\n`, `\n\r\n`): hyper's
/// quick check before a parse.
fn may_end_head(bytes: &[u8], seen: usize) -> bool {
    let new = &bytes[seen.saturating_sub(3)..];
    new.windows(2).any(|w| w == b"\n\n") || new.windows(3).any(|w| w == b"\n\r\n")
}

/// A response body that failed, or ended before the length its head gave.
fn body_ended_short(source: Option<BoxError>) -> Error {
    Error::ClientConnection {
        reason: match source {
            Some(_) => "the response body failed",
            None => "the response body ended before its length",
        },
        timed_out: false,
        source,
    }
}

/// An I/O error on the client connection; a write that waited out
/// [`SEND_TIMEOUT`] is a timeout.
fn io_error(reason: &'static str, error: io::Error) -> Error {
    Error::ClientConnection {
        reason,
        timed_out: error.kind() == io::ErrorKind::TimedOut,
        source: Some(error.into()),
    }
}

/// What [`parse_plain`] made of the buffered bytes.
enum Parsed {
    /// A plain request, from the first `usize` bytes, put in the `out`
    /// [`parse_plain`] was given.
    Plain(usize),
    /// Not a whole head yet.
    Partial,
    /// Not a plain request: hyper's.
    Other,
}

/// Parses the head at the start of `buf`; a plain request is built in
/// `out`, with [`ClientAddr`]`(peer)` on it, its fields and extensions in
/// `spare`'s maps if there is one.
fn parse_plain(
    buf: &[u8],
    peer: SocketAddr,
    spare: &mut Option<(HeaderMap, http::Extensions)>,
    out: &mut Option<Plain>,
) -> Parsed {
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
    let mut req = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut req,
        buf,
        &mut fields,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        // Too many fields for here, or malformed: hyper answers.
        Err(_) => return Parsed::Other,
    };
    if req.version != Some(1) {
        return Parsed::Other;
    }
    let (Some(method), Some(path)) = (req.method, req.path) else {
        return Parsed::Other;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::Other;
    };
    if method == Method::CONNECT {
        return Parsed::Other;
    }
    // The head's own copy, which the target and the field values share;
    // httparse's slices point into `buf`, at the same offsets.
    let head = shared_copy(&buf[..len]);
    let base = buf.as_ptr() as usize;
    let in_head = |part: &[u8]| {
        let from = part.as_ptr() as usize - base;
        head.slice(from..from + part.len())
    };
    let Ok(uri) = http::Uri::from_maybe_shared(in_head(path.as_bytes())) else {
        return Parsed::Other;
    };
    // Room for what a director adds (the `X-Forwarded-*` fields, `Via`),
    // so that the map does not grow as the request goes through.
    let (mut headers, extensions) = spare.take().unwrap_or_default();
    headers.reserve(req.headers.len() + ROOM_FOR_DIRECTOR);
    let mut keep_alive = true;
    for field in req.headers.iter() {
        // (A name is compared as `from_bytes` made it: lower case.)
        let parsed = field_name(field.name.as_bytes())
            .ok()
            .filter(|name| {
                *name != CONTENT_LENGTH
                    && *name != TRANSFER_ENCODING
                    && *name != UPGRADE
                    && *name != EXPECT
            })
            .zip(HeaderValue::from_maybe_shared(in_head(field.value)).ok());
        let Some((name, value)) = parsed else {
            // hyper's to read; the maps are kept for the next one here.
            headers.clear();
            *spare = Some((headers, extensions));
            return Parsed::Other;
        };
        // hyper's reading: `close` among the values of a `Connection`
        // field that is text.
        if name == CONNECTION && lists_token(&value, "close") {
            keep_alive = false;
        }
        headers.append(name, value);
    }
    let method_is_head = method == Method::HEAD;
    let mut request = Request::new(RequestBody::empty());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    *request.extensions_mut() = extensions;
    request.extensions_mut().insert(ClientAddr(peer));
    *out = Some(Plain {
        request,
        head,
        method_is_head,
        keep_alive,
    });
    Parsed::Plain(len)
}

/// A response head as hyper's server writes it, and what follows.
struct Encoded {
    bytes: Vec<u8>,
    /// How many body bytes go after it.
    body_len: u64,
    /// Whether the connection ends after this response.
    close: bool,
}

/// The head hyper's server writes for `res` (into `dst`, emptied first),
/// answering a plain (so
/// `HTTP/1.1`, not `CONNECT`) request, when it is one this side writes:
/// not a `1xx`, not `HTTP/1.0`, no `Transfer-Encoding` or `Trailer` field,
/// and a body that is empty or of known length. `None` otherwise.
fn encode_head<D: Body>(
    res: &Response<D>,
    method_is_head: bool,
    keep_alive: bool,
    mut dst: Vec<u8>,
) -> Option<Encoded> {
    let status = res.status();
    let headers = res.headers();
    // (`Transfer-Encoding` and `Trailer` are looked for as the fields are
    // written.)
    if status.is_informational() || res.version() != Version::HTTP_11 {
        return None;
    }
    // What hyper's dispatcher tells its encoder: no body, or its length.
    let known = if res.body().is_end_stream() {
        None
    } else {
        Some(res.body().size_hint().exact()?)
    };
    // The head, and a short body joined to it.
    let joined = known.map_or(0, |len| {
        usize::try_from(len).unwrap_or(usize::MAX).min(JOINED_BODY)
    });
    dst.clear();
    dst.reserve(128 + headers.len() * 48 + joined);
    let reason = res.extensions().get::<hyper::ext::ReasonPhrase>();
    if status == StatusCode::OK && reason.is_none() {
        dst.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        dst.extend_from_slice(b"HTTP/1.1 ");
        dst.extend_from_slice(status.as_str().as_bytes());
        dst.push(b' ');
        match reason {
            Some(reason) => dst.extend_from_slice(reason.as_bytes()),
            None => dst.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes()),
        }
        dst.extend_from_slice(b"\r\n");
    }
    // A request that asked to close gets `close` on the answer's
    // `Connection` field (appended to it, or a field of its own after the
    // others), as hyper adds it.
    let add_close = !keep_alive
        && !headers
            .get_all(CONNECTION)
            .iter()
            .any(|v| lists_token(v, "close"));
    let mut close = !keep_alive;
    let mut wrote_len = false;
    let mut wrote_date = false;
    let mut body_len = 0;
    // A line (`content-length`, `connection`) whose end is still to come.
    let mut open: Option<&HeaderName> = None;
    let mut current: Option<&HeaderName> = None;
    for (name, value) in headers {
        if current != Some(name) {
            if let Some(line) = open.take() {
                end_line(&mut dst, line == CONNECTION && add_close);
            }
            current = Some(name);
        }
        match *name {
            CONTENT_LENGTH => match known {
                Some(len) => {
                    // The first value, once; the body's length is what
                    // frames it.
                    if open.is_none() {
                        dst.extend_from_slice(b"content-length: ");
                        dst.extend_from_slice(value.as_bytes());
                        body_len = len;
                        wrote_len = true;
                        open = Some(name);
                    }
                    continue;
                }
                // No body: the field stays only on an answer to `HEAD`,
                // once (hyper refuses a second one: its answer, then).
                None if method_is_head && wrote_len => return None,
                None if method_is_head => wrote_len = true,
                None => continue,
            },
            CONNECTION => {
                if lists_token(value, "close") {
                    close = true;
                }
                if open.is_none() {
                    dst.extend_from_slice(b"connection: ");
                    open = Some(name);
                } else {
                    dst.extend_from_slice(b", ");
                }
                dst.extend_from_slice(value.as_bytes());
                continue;
            }
            DATE => wrote_date = true,
            TRANSFER_ENCODING | TRAILER => return None,
            _ => {}
        }
        dst.extend_from_slice(name.as_str().as_bytes());
        dst.extend_from_slice(b": ");
        dst.extend_from_slice(value.as_bytes());
        dst.extend_from_slice(b"\r\n");
    }
    if let Some(line) = open {
        end_line(&mut dst, line == CONNECTION && add_close);
    }
    if add_close && !headers.contains_key(CONNECTION) {
        dst.extend_from_slice(b"connection: close\r\n");
    }
    let no_content = matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED);
    if !wrote_len {
        match known {
            None | Some(0) => {
                if !no_content && !method_is_head {
                    dst.extend_from_slice(b"content-length: 0\r\n");
                }
            }
            Some(len) => {
                if !no_content {
                    dst.extend_from_slice(b"content-length: ");
                    dst.extend_from_slice(len.to_string().as_bytes());
                    dst.extend_from_slice(b"\r\n");
                    body_len = len;
                }
            }
        }
    }
    if method_is_head || no_content {
        body_len = 0;
    }
    if wrote_date {
        dst.extend_from_slice(b"\r\n");
    } else {
        dst.extend_from_slice(b"date: ");
        http_date(&mut dst);
        dst.extend_from_slice(b"\r\n\r\n");
    }
    Some(Encoded {
        bytes: dst,
        body_len,
        close,
    })
}

fn end_line(dst: &mut Vec<u8>, add_close: bool) {
    if add_close {
        dst.extend_from_slice(b", close");
    }
    dst.extend_from_slice(b"\r\n");
}

/// Appends the current time as an HTTP date (`Sun, 06 Nov 1994 08:49:37
/// GMT`, RFC 9110 §5.6.7), formatted once a second per thread.
fn http_date(dst: &mut Vec<u8>) {
    thread_local! {
        static CACHED: Cell<(u64, [u8; 29])> = const { Cell::new((u64::MAX, [0; 29])) };
    }
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (secs, text) = CACHED.get();
    if secs == now {
        dst.extend_from_slice(&text);
        return;
    }
    let text = crate::http_date::imf_fixdate(now);
    CACHED.set((now, text));
    dst.extend_from_slice(&text);
}

/// The connection from here on is hyper's: the bytes read and not
/// answered are replayed to it first, and `answered` (a plain request's
/// head and the response the stack gave it) is hyper's answer to that
/// request when it reads it again.
async fn hand_over<I, S, B, E>(
    conn: Conn<I>,
    answered: Option<(Bytes, Response<ProxyBody<B>>)>,
    peer: SocketAddr,
    stack: S,
    on_error: Arc<E>,
) -> Result<(), Error>
where
    I: Read + Write + Unpin + Send + 'static,
    S: Service<Request<RequestBody>, Response = Response<B>, Error = Error>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    E: Fn(&Error, SocketAddr) + Send + Sync + 'static,
{
    let unread = &conn.buf[conn.start..conn.end];
    let (replay, first) = match answered {
        Some((head, res)) => {
            let mut replay = Vec::with_capacity(head.len() + unread.len());
            replay.extend_from_slice(&head);
            replay.extend_from_slice(unread);
            (Bytes::from(replay), Some(res))
        }
        None => (Bytes::copy_from_slice(unread), None),
    };
    // A head begun here keeps the deadline it had.
    let timer = match conn.head_deadline {
        Some(deadline) if first.is_none() => HeadTimer::first_by(deadline.into_std()),
        _ => HeadTimer::default(),
    };
    let io = Replayed {
        replay,
        io: conn.io,
    };
    let first = Cell::new(first);
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let answered = first.take();
        let mut req = req.map(RequestBody::from);
        req.extensions_mut().insert(ClientAddr(peer));
        let http10 = req.version() == Version::HTTP_10;
        let stack = stack.clone();
        let on_error = Arc::clone(&on_error);
        async move {
            if let Some(res) = answered {
                return Ok::<_, Infallible>(res);
            }
            Ok(match stack.oneshot(req).await {
                Ok(mut res) => {
                    if http10 {
                        close_if_unframed(&mut res);
                    }
                    res.map(Either::Left)
                }
                Err(error) => {
                    on_error(&error, peer);
                    error.to_response::<Full<Bytes>>().map(Either::Right)
                }
            })
        }
    });
    http1::Builder::new()
        .timer(timer)
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(io, svc)
        .with_upgrades()
        .await
        .map_err(hyper_error)
}

/// hyper's connection error as the crate's.
fn hyper_error(error: hyper::Error) -> Error {
    let timed_out_io = std::error::Error::source(&error)
        .and_then(|e| e.downcast_ref::<io::Error>())
        .is_some_and(|e| e.kind() == io::ErrorKind::TimedOut);
    let (reason, timed_out) = if error.is_timeout() {
        (
            "the request head did not arrive within the header read timeout",
            true,
        )
    } else if error.is_user() {
        // The response body's error (a backend that went quiet past its
        // read timeout among them), or hyper refusing the response.
        ("the response body failed", false)
    } else if timed_out_io {
        ("writing the response failed", true)
    } else if error.is_incomplete_message() {
        ("the client closed the connection mid-request", false)
    } else if error.is_parse() || error.is_parse_too_large() {
        ("the request could not be parsed", false)
    } else {
        ("the HTTP/1.1 connection failed", false)
    };
    Error::ClientConnection {
        reason,
        timed_out,
        source: Some(error.into()),
    }
}

/// `io`, with bytes already read from it to be read again first.
struct Replayed<I> {
    replay: Bytes,
    io: I,
}

impl<I: Read + Unpin> Read for Replayed<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        if self.replay.is_empty() {
            return Pin::new(&mut self.io).poll_read(cx, buf);
        }
        let n = self.replay.len().min(buf.remaining());
        buf.put_slice(&self.replay[..n]);
        bytes::Buf::advance(&mut self.replay, n);
        Poll::Ready(Ok(()))
    }
}

impl<I: Write + Unpin> Write for Replayed<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_may_end_only_once_a_blank_line_can_be_there() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        // Whatever was seen before, the blank line is found (the three
        // bytes before the new ones are looked at again).
        for seen in 0..head.len() {
            assert!(may_end_head(head, seen), "{seen}");
        }
        assert!(may_end_head(b"GET / HTTP/1.1\nHost: a\n\n", 20));
        assert!(!may_end_head(b"GET / HTTP/1.1\r\nHost: a\r\n", 0));
        assert!(!may_end_head(b"GET / HTTP/1.1\r\nHost: a\r\nX: 1", 20));
    }

    #[test]
    fn a_shared_copy_holds_the_bytes_at_every_size() {
        for len in [0, 1, 46, 232, 233, 999, 1000, 1001, 16 * 1024] {
            let from: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let copy = shared_copy(&from);
            assert_eq!(&copy[..], &from[..], "{len}");
            if len > 10 {
                let slice = copy.slice(3..10);
                drop(copy);
                assert_eq!(&slice[..], &from[3..10], "{len}");
            }
        }
    }
}
