//! The direct HTTP/1.1 exchange [`WorkerUpstream`](super::WorkerUpstream)
//! uses for a request without a body, or with a short one that is all
//! there: the request written straight to the socket, the response head
//! parsed with httparse, the body framed here.
//!
//! Most requests a proxy forwards have no body. For them hyper's client
//! connection is a dispatcher between two channels and a body channel that
//! the request's own task drives anyway: about a third of a proxied
//! request's instructions (docs/benchmarks.md, issue 16). Here the
//! exchange is a write, one read or a few, a parse, and the body's bytes
//! handed out of the same buffer. The semantics are hyper's client's, kept
//! so that nothing a backend sees or a client gets changes with the path
//! taken: the request head as hyper writes it (origin form, the headers in
//! the map's order, no `Transfer-Encoding` on a request without a body),
//! and the response read as hyper reads it (RFC 9112 §6.3: no body for
//! `HEAD`, `1xx`, `204` and `304`; `chunked` as the final transfer coding;
//! a `Content-Length` whose values all agree; else until the connection
//! closes; informational responses skipped; `Connection: close` heard).
//! Where hyper would fail the response, this fails it too, and a connection
//! is only reused when its response was read to the end, exactly, with
//! nothing after it, and, as nginx has it, never after an HTTP/1.0 answer.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::field_name::{common_value, field_name};
use crate::layer::lists_token;
use crate::BoxError;

/// The most bytes a response head may take: hyper's default read buffer
/// limit (8 KiB and 4 KiB per header for 100 headers).
const MAX_HEAD: usize = 8192 + 4096 * 100;
/// The most header fields a response head may have: hyper's default.
const MAX_HEADERS: usize = 100;
/// How much room a read asks for.
const READ_SIZE: usize = 8192;
/// The most bytes a chunk-size line may take, extensions included (hyper
/// allows 16 KiB of extensions over a whole body; a line is bounded here).
const MAX_CHUNK_LINE: usize = 4096;
/// The most bytes the trailer section of a chunked body may take.
const MAX_TRAILERS: usize = 16 * 1024;
/// A connection's buffer above this size is not kept while it is idle.
const KEEP_BUFFER: usize = 64 * 1024;

/// How long a pooled connection may have been idle and still be taken on
/// the runtime's word that it is quiet ([`H1Conn::is_open_and_quiet`]).
const ASK_THE_SOCKET_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// A backend connection spoken to directly: the socket and what has been
/// read from it and not yet handed out.
pub(super) struct H1Conn {
    stream: TcpStream,
    buf: BytesMut,
    /// When it was last put back in the pool.
    pub(super) idle_since: Instant,
}

/// How the body of a response is delimited (RFC 9112 §6.3).
#[derive(Debug)]
pub(super) enum Framing {
    /// `Content-Length`: this many bytes left (none: no body at all).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked(Chunked),
    /// Until the backend closes the connection.
    Close,
}

/// Where a chunked body stands.
#[derive(Debug)]
pub(super) enum Chunked {
    /// A chunk-size line is next.
    Size,
    /// This many bytes of chunk data are left.
    Data(u64),
    /// The CRLF after a chunk's data is next.
    DataEnd,
    /// The last chunk was read: the trailer section is next.
    Trailers,
    /// The body has ended.
    Done,
}

/// A response head, and how its body is read.
pub(super) struct Head {
    pub(super) response: Response<()>,
    pub(super) framing: Framing,
    /// Whether the connection may take another request once the body has
    /// been read.
    pub(super) keep_alive: bool,
}

/// What one step of reading a body gave.
pub(super) enum Decoded {
    Data(Bytes),
    Trailers(HeaderMap),
    End,
}

/// A response the backend sent that hyper's client would also refuse:
/// nothing of it reaches the client (a `502`), and the connection is
/// closed.
#[derive(Debug)]
pub(super) struct InvalidResponse {
    reason: String,
}

impl std::fmt::Display for InvalidResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid HTTP response from the backend: {}", self.reason)
    }
}

impl std::error::Error for InvalidResponse {}

fn invalid(reason: impl Into<String>) -> BoxError {
    Box::new(InvalidResponse {
        reason: reason.into(),
    })
}

/// Why a request could not be exchanged.
pub(super) enum ExchangeError {
    /// The connection failed before any byte of the request was written:
    /// the request may go out again on another connection.
    Unsent,
    /// The connection ended (closed, or reset) after the request was
    /// written, before a byte of the response: on a reused connection, the
    /// backend closing it while idle as the request went out.
    Unanswered(BoxError),
    /// Anything else.
    Failed(BoxError),
}

impl From<BoxError> for ExchangeError {
    fn from(error: BoxError) -> Self {
        ExchangeError::Failed(error)
    }
}

/// Writes `req` as hyper's client writes it: its head, and its `body` when
/// it has one, whole (no `Transfer-Encoding`: the caller sends only bodies
/// whose `Content-Length` is missing, invalid or right). Hands back its
/// header map emptied (for the response to reuse), and whether the request
/// lets the connection be kept: not if it says `Connection: close`, or is
/// HTTP/1.0 (which closes unless it asks otherwise, and is not worth
/// keeping when it does).
pub(super) fn encode_request(
    req: Request<()>,
    body: Option<&[Bytes]>,
    dst: &mut Vec<u8>,
) -> (HeaderMap, bool) {
    let (parts, ()) = req.into_parts();
    let mut headers = parts.headers;
    // hyper's `Content-Length` for a body of known length: the one given if
    // it is right, else its own.
    if let Some(chunks) = body {
        let len = chunks.iter().map(|c| c.len() as u64).sum::<u64>();
        if request_length(&headers) != Some(Some(len)) {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
        }
    }
    // What the fields say is read as they are written: no look-up.
    let mut close = false;
    dst.reserve(32 + headers.len() * 32);
    dst.extend_from_slice(parts.method.as_str().as_bytes());
    dst.push(b' ');
    // Origin form, as `Uri`'s `Display` writes it: a query without a path
    // gets the `/` path.
    match parts.uri.path_and_query() {
        Some(target) => {
            dst.extend_from_slice(target.path().as_bytes());
            if let Some(query) = target.query() {
                dst.push(b'?');
                dst.extend_from_slice(query.as_bytes());
            }
        }
        None => dst.push(b'/'),
    }
    dst.extend_from_slice(if parts.version == Version::HTTP_10 {
        b" HTTP/1.0\r\n"
    } else {
        b" HTTP/1.1\r\n"
    });
    for (name, value) in &headers {
        // A request without a body is sent without one, whatever it said.
        if body.is_none() && name == TRANSFER_ENCODING {
            continue;
        }
        close = close || (name == CONNECTION && lists_token(value, "close"));
        dst.extend_from_slice(name.as_str().as_bytes());
        dst.extend_from_slice(b": ");
        dst.extend_from_slice(value.as_bytes());
        dst.extend_from_slice(b"\r\n");
    }
    dst.extend_from_slice(b"\r\n");
    for chunk in body.unwrap_or_default() {
        dst.extend_from_slice(chunk);
    }
    headers.clear();
    (headers, parts.version != Version::HTTP_10 && !close)
}

/// A request's `Content-Length`: `None` without one, `Some(None)` if a
/// value is not a number or two differ.
pub(super) fn request_length(headers: &HeaderMap) -> Option<Option<u64>> {
    let mut delimiters = Delimiters::default();
    for value in headers.get_all(CONTENT_LENGTH) {
        delimiters.see_content_length(value);
    }
    delimiters.length
}

impl H1Conn {
    pub(super) fn new(stream: TcpStream) -> Self {
        H1Conn {
            stream,
            buf: BytesMut::new(),
            idle_since: super::clock::task_now(),
        }
    }

    /// Whether an idle connection can take a request: still open, with
    /// nothing unread. A backend that closed it (its keep-alive timeout)
    /// has left an end of file to read; one that sent anything unasked has
    /// broken the exchange.
    ///
    /// A connection back from a request less than [`ASK_THE_SOCKET_AFTER`]
    /// ago is taken on what the runtime has heard from epoll: no system
    /// call unless it reported the connection readable (see
    /// [`poll_fill`](Self::poll_fill)). One idle for longer, the kind a
    /// keep-alive timeout closes, is looked at in the socket itself
    /// (`MSG_PEEK`), so that a close the runtime has not yet heard of is
    /// seen before a request is written to it.
    /// `now` is the time the connection was taken from its pool.
    pub(super) fn is_open_and_quiet(&self, now: Instant) -> bool {
        let quiet = |read: io::Result<usize>| matches!(read, Err(e) if e.kind() == io::ErrorKind::WouldBlock);
        if now.saturating_duration_since(self.idle_since) >= ASK_THE_SOCKET_AFTER {
            let mut probe = [MaybeUninit::uninit(); 1];
            return quiet(socket2::SockRef::from(&self.stream).peek(&mut probe));
        }
        let mut probe = [0u8; 1];
        quiet(self.stream.try_read(&mut probe))
    }

    /// Ready to be pooled: the buffer emptied (a large one let go).
    pub(super) fn reset_for_idle(&mut self) {
        if self.buf.capacity() > KEEP_BUFFER {
            self.buf = BytesMut::new();
        } else {
            self.buf.clear();
        }
        self.idle_since = super::clock::task_now();
    }

    /// Whether a response read to its end left nothing behind it.
    pub(super) fn is_drained(&self) -> bool {
        self.buf.is_empty()
    }

    /// Writes `request` and reads the response's head; `sent` is called
    /// once the request is written. `headers` is an empty map to fill (the
    /// request's, reused).
    pub(super) async fn exchange(
        &mut self,
        request: &[u8],
        method: &Method,
        headers: HeaderMap,
        sent: impl FnOnce(),
    ) -> Result<Head, ExchangeError> {
        self.write_all(request).await?;
        sent();
        let mut headers = Some(headers);
        let mut skipped = 0;
        loop {
            if !self.buf.is_empty() {
                let map = headers.take().unwrap_or_default();
                match parse_head(&mut self.buf, method, map)? {
                    Parsed::Complete(head) => return Ok(head),
                    // Informational (`100 Continue`, `103 Early Hints`):
                    // skipped, as hyper's client does; the final head may
                    // be in the buffer already.
                    Parsed::Informational(map, len) => {
                        headers = Some(map);
                        skipped += len;
                        if skipped >= MAX_HEAD {
                            return Err(invalid("the response head is too large").into());
                        }
                        continue;
                    }
                    Parsed::Partial(map) => headers = Some(map),
                }
            }
            // Informational heads count too: a backend sending them for
            // ever would otherwise hold this task in its loop.
            if skipped + self.buf.len() >= MAX_HEAD {
                return Err(invalid("the response head is too large").into());
            }
            let read = poll_fn(|cx| self.poll_fill(cx)).await;
            let unanswered = skipped == 0 && self.buf.is_empty();
            match read {
                Ok(0) if unanswered => {
                    return Err(ExchangeError::Unanswered(Box::new(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the backend closed the connection before sending a response",
                    ))))
                }
                Ok(0) => {
                    return Err(ExchangeError::Failed(Box::new(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the backend closed the connection in the middle of the response head",
                    ))))
                }
                Ok(_) => {}
                Err(error)
                    if unanswered
                        && matches!(
                            error.kind(),
                            io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
                        ) =>
                {
                    return Err(ExchangeError::Unanswered(Box::new(error)))
                }
                Err(error) => return Err(ExchangeError::Failed(Box::new(error))),
            }
        }
    }

    async fn write_all(&mut self, mut request: &[u8]) -> Result<(), ExchangeError> {
        let mut written = 0;
        while !request.is_empty() {
            let wrote = poll_fn(|cx| loop {
                match self.stream.try_write(request) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if let Err(e) = std::task::ready!(self.stream.poll_write_ready(cx)) {
                            return Poll::Ready(Err(e));
                        }
                    }
                    other => return Poll::Ready(other),
                }
            })
            .await;
            match wrote {
                Ok(0) if written == 0 => return Err(ExchangeError::Unsent),
                Ok(0) => {
                    let error = io::Error::from(io::ErrorKind::WriteZero);
                    return Err(ExchangeError::Failed(Box::new(error)));
                }
                Ok(n) => {
                    written += n;
                    request = &request[n..];
                }
                Err(_) if written == 0 => return Err(ExchangeError::Unsent),
                // Part of it went before the connection was reset: the same
                // race as a reset before any answer.
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                    ) =>
                {
                    return Err(ExchangeError::Unanswered(Box::new(error)))
                }
                Err(error) => return Err(ExchangeError::Failed(Box::new(error))),
            }
        }
        Ok(())
    }

    /// Reads what the socket has into the buffer: the number of bytes, 0 at
    /// the end of the stream.
    ///
    /// A read that fills less than the room it was given has emptied the
    /// socket: the stream is then marked not readable, as tokio's own
    /// `poll_read` does (nginx too), so that the next read, or the idle
    /// check ([`is_open_and_quiet`](Self::is_open_and_quiet)), waits for
    /// the next readiness event instead of making a system call that finds
    /// nothing. The outer `try_io` takes the readiness before the read, so
    /// an event that comes after the read is never lost.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        loop {
            self.buf.reserve(READ_SIZE);
            let room = self.buf.capacity() - self.buf.len();
            let mut read = None;
            let (stream, buf) = (&self.stream, &mut self.buf);
            let outer = stream.try_io(Interest::READABLE, || {
                let result = stream.try_read_buf(buf);
                let emptied = matches!(result, Ok(n) if n > 0 && n < room);
                read = Some(result);
                if emptied {
                    Err(io::ErrorKind::WouldBlock.into())
                } else {
                    Ok(())
                }
            });
            match read.unwrap_or(outer.map(|()| 0)) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::task::ready!(self.stream.poll_read_ready(cx))?;
                }
                other => return Poll::Ready(other),
            }
        }
    }

    /// The next piece of a body framed by `framing`: `Pending` while the
    /// backend has sent nothing more.
    pub(super) fn poll_body(
        &mut self,
        framing: &mut Framing,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Decoded, BoxError>> {
        loop {
            if let Some(decoded) = decode(&mut self.buf, framing)? {
                return Poll::Ready(Ok(decoded));
            }
            match std::task::ready!(self.poll_fill(cx)) {
                Ok(0) => {
                    return Poll::Ready(match framing {
                        Framing::Close => {
                            *framing = Framing::Length(0);
                            Ok(Decoded::End)
                        }
                        _ => Err(Box::new(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the backend closed the connection before the end of the response body",
                        ))),
                    })
                }
                Ok(_) => {}
                Err(error) => return Poll::Ready(Err(Box::new(error))),
            }
        }
    }
}

impl Framing {
    /// Whether the body has been read to its end.
    pub(super) fn is_done(&self) -> bool {
        matches!(self, Framing::Length(0) | Framing::Chunked(Chunked::Done))
    }
}

/// What the buffer holds of a body: a piece of it, or `None` if more must
/// be read first.
fn decode(buf: &mut BytesMut, framing: &mut Framing) -> Result<Option<Decoded>, BoxError> {
    match framing {
        Framing::Length(0) => Ok(Some(Decoded::End)),
        Framing::Length(left) => Ok(take_data(buf, left).map(Decoded::Data)),
        Framing::Close => {
            if buf.is_empty() {
                return Ok(None);
            }
            Ok(Some(Decoded::Data(buf.split().freeze())))
        }
        Framing::Chunked(state) => decode_chunked(buf, state),
    }
}

/// As much of the `left` bytes of a body as the buffer holds, counted
/// off; `None` if it holds none.
fn take_data(buf: &mut BytesMut, left: &mut u64) -> Option<Bytes> {
    if buf.is_empty() {
        return None;
    }
    let take = usize::try_from(*left).map_or(buf.len(), |left| left.min(buf.len()));
    *left -= take as u64;
    Some(buf.split_to(take).freeze())
}

fn decode_chunked(buf: &mut BytesMut, state: &mut Chunked) -> Result<Option<Decoded>, BoxError> {
    loop {
        match state {
            Chunked::Done => return Ok(Some(Decoded::End)),
            Chunked::Data(left) => {
                let data = take_data(buf, left);
                if *left == 0 {
                    *state = Chunked::DataEnd;
                }
                return Ok(data.map(Decoded::Data));
            }
            Chunked::DataEnd => {
                if buf.len() < 2 {
                    return Ok(None);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(invalid("a chunk's data is not followed by CRLF"));
                }
                buf.advance(2);
                *state = Chunked::Size;
            }
            Chunked::Size => {
                let Some(line) = line(buf, MAX_CHUNK_LINE)? else {
                    return Ok(None);
                };
                let size = chunk_size(&buf[..line])?;
                buf.advance(line + 2);
                *state = if size == 0 {
                    Chunked::Trailers
                } else {
                    Chunked::Data(size)
                };
            }
            Chunked::Trailers => {
                // An empty line ends the body at once; otherwise the whole
                // section, up to its empty line, is parsed in one go.
                if buf.len() < 2 {
                    return Ok(None);
                }
                if &buf[..2] == b"\r\n" {
                    buf.advance(2);
                    *state = Chunked::Done;
                    continue;
                }
                if buf[0] == b'\r' {
                    return Err(invalid("a bare CR in a chunked body"));
                }
                let Some(end) = trailers_end(buf)? else {
                    return Ok(None);
                };
                let section = buf.split_to(end + 4).freeze();
                *state = Chunked::Done;
                return Ok(Some(Decoded::Trailers(trailers(&section)?)));
            }
        }
    }
}

/// The length of the line at the start of `buf`, without its CRLF, once
/// all of it is there. A bare LF or CR, or a line longer than `limit`, is
/// refused.
fn line(buf: &[u8], limit: usize) -> Result<Option<usize>, BoxError> {
    let window = &buf[..buf.len().min(limit + 2)];
    match window.iter().position(|&b| b == b'\n') {
        Some(0) => Err(invalid("a bare LF in a chunked body")),
        Some(lf) if window[lf - 1] == b'\r' => {
            if window[..lf - 1].contains(&b'\r') {
                return Err(invalid("a bare CR in a chunked body"));
            }
            Ok(Some(lf - 1))
        }
        Some(_) => Err(invalid("a bare LF in a chunked body")),
        None if buf.len() > limit + 1 => Err(invalid("a chunk-size line is too long")),
        None => Ok(None),
    }
}

/// Where the CRLF CRLF that ends a trailer section starts in `buf`, once
/// it is there; a section longer than [`MAX_TRAILERS`] is refused.
fn trailers_end(buf: &[u8]) -> Result<Option<usize>, BoxError> {
    let window = &buf[..buf.len().min(MAX_TRAILERS)];
    match window.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(at) => Ok(Some(at)),
        None if buf.len() >= MAX_TRAILERS => Err(invalid("the trailer section is too large")),
        None => Ok(None),
    }
}

/// A chunk-size line's size: hexadecimal digits, then optional blanks and
/// extensions (ignored), as hyper reads it.
fn chunk_size(line: &[u8]) -> Result<u64, BoxError> {
    let digits = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    if digits == 0 {
        return Err(invalid("a chunk size is not a hexadecimal number"));
    }
    // Leading zeros are no size; more than 16 digits after them would
    // overflow.
    let zeros = line[..digits].iter().take_while(|&&b| b == b'0').count();
    if digits - zeros > 16 {
        return Err(invalid("a chunk size is too large"));
    }
    let mut size = 0u64;
    for &b in &line[..digits] {
        // At most 16 digits: no overflow.
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => b - b'A' + 10,
        };
        size = size << 4 | u64::from(digit);
    }
    let rest = &line[digits..];
    let after_blanks = rest
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(rest.len());
    match rest.get(after_blanks) {
        None | Some(b';') => Ok(size),
        Some(_) => Err(invalid(
            "a chunk size is followed by something other than an extension",
        )),
    }
}

/// The fields of a trailer section (ending in its empty line).
fn trailers(section: &Bytes) -> Result<HeaderMap, BoxError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let parsed = httparse::parse_headers(section, &mut fields)
        .map_err(|e| invalid(format!("the trailer section: {e}")))?;
    let httparse::Status::Complete((_, fields)) = parsed else {
        return Err(invalid("the trailer section is incomplete"));
    };
    let mut map = HeaderMap::with_capacity(fields.len());
    for field in fields {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| invalid("a trailer field's name"))?;
        let value = HeaderValue::from_maybe_shared(section.slice_ref(field.value))
            .map_err(|_| invalid("a trailer field's value"))?;
        map.append(name, value);
    }
    Ok(map)
}

enum Parsed {
    Complete(Head),
    /// A `1xx` head of this many bytes was read and dropped; the map is
    /// handed back.
    Informational(HeaderMap, usize),
    /// More must be read; the map is handed back.
    Partial(HeaderMap),
}

/// How many header fields' places [`parse_head`] keeps on the stack.
const INLINE_FIELDS: usize = 24;

/// The byte ranges of a header field in the head.
#[derive(Clone, Copy, Default)]
struct FieldAt {
    name: (usize, usize),
    value: (usize, usize),
}

/// Parses a response head at the start of `buf`, consuming it if complete.
fn parse_head(
    buf: &mut BytesMut,
    method: &Method,
    mut headers: HeaderMap,
) -> Result<Parsed, BoxError> {
    // Most heads have a few fields: their places are kept on the stack,
    // and only a long head's spill to the heap.
    let mut inline = [FieldAt::default(); INLINE_FIELDS];
    let mut spilled = Vec::new();
    let (len, status, reason, version, count) = {
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut res = httparse::Response::new(&mut []);
        let bytes: &[u8] = buf;
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut res,
            bytes,
            &mut fields,
        ) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(Parsed::Partial(headers)),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(invalid("the response has too many header fields"))
            }
            Err(e) => return Err(invalid(format!("the response head: {e}"))),
        };
        let code = res.code.unwrap_or_default();
        let status =
            StatusCode::from_u16(code).map_err(|_| invalid("the response's status code"))?;
        let reason = res.reason.unwrap_or_default();
        let reason = (Some(reason) != status.canonical_reason()).then(|| reason.to_owned());
        let version = if res.version == Some(1) {
            Version::HTTP_11
        } else {
            Version::HTTP_10
        };
        let base = bytes.as_ptr() as usize;
        let place = |field: &httparse::Header<'_>| {
            let name = field.name.as_ptr() as usize - base;
            let value = field.value.as_ptr() as usize - base;
            FieldAt {
                name: (name, name + field.name.len()),
                value: (value, value + field.value.len()),
            }
        };
        if res.headers.len() <= INLINE_FIELDS {
            for (slot, field) in inline.iter_mut().zip(res.headers.iter()) {
                *slot = place(field);
            }
        } else {
            spilled = res.headers.iter().map(place).collect();
        }
        (len, status, reason, version, res.headers.len())
    };
    if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
        buf.advance(len);
        return Ok(Parsed::Informational(headers, len));
    }
    let at = if spilled.is_empty() {
        &inline[..count]
    } else {
        &spilled[..]
    };
    let head = buf.split_to(len).freeze();
    // nginx keeps no HTTP/1.0 upstream connection, whatever it says (hyper
    // would, downgrading the requests that follow); an answer that switched
    // protocols to a request that asked for nothing of the kind (hyper hands
    // it over with no body) leaves a connection nobody can read.
    let mut keep_alive = version == Version::HTTP_11 && status != StatusCode::SWITCHING_PROTOCOLS;
    let mut delimiters = Delimiters::default();
    headers.reserve(count);
    for field in at {
        let name = field_name(&head[field.name.0..field.name.1])
            .map_err(|_| invalid("a header field's name"))?;
        let bytes = &head[field.value.0..field.value.1];
        let value = match common_value(bytes) {
            Some(value) => value,
            None => HeaderValue::from_maybe_shared(head.slice(field.value.0..field.value.1))
                .map_err(|_| invalid("a header field's value"))?,
        };
        if name == CONNECTION {
            if lists_token(&value, "close") {
                keep_alive = false;
            }
        } else if name == TRANSFER_ENCODING {
            delimiters.see_transfer_encoding(&value);
        } else if name == CONTENT_LENGTH {
            delimiters.see_content_length(&value);
        }
        headers.append(name, value);
    }
    let framing = framing(status, method, version, delimiters)?;
    if matches!(framing, Framing::Close) {
        keep_alive = false;
    }
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = headers;
    if let Some(reason) = reason {
        if let Ok(reason) = hyper::ext::ReasonPhrase::try_from(reason.into_bytes()) {
            response.extensions_mut().insert(reason);
        }
    }
    Ok(Parsed::Complete(Head {
        response,
        framing,
        keep_alive,
    }))
}

/// What a head's fields say about where its body ends, gathered as the
/// fields are read.
#[derive(Default)]
struct Delimiters {
    /// Whether the last `Transfer-Encoding` value ends in `chunked`; `None`
    /// without one.
    chunked: Option<bool>,
    /// The `Content-Length`: `None` without one, `Some(None)` if a value is
    /// not a number or two differ.
    length: Option<Option<u64>>,
}

impl Delimiters {
    fn see_transfer_encoding(&mut self, value: &HeaderValue) {
        // `chunked` must be the final coding; only the last field counts.
        let last = value.to_str().ok().and_then(|v| v.rsplit(',').next());
        self.chunked = Some(last.is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked")));
    }

    /// Folds in one `Content-Length` field: every value, and every element
    /// of a list, must be the same number.
    fn see_content_length(&mut self, value: &HeaderValue) {
        let mut agreed = match self.length {
            Some(None) => return,
            Some(Some(n)) => Some(n),
            None => None,
        };
        let mut agree = |element: &[u8]| match decimal(element) {
            Some(n) if agreed.is_none_or(|a| a == n) => {
                agreed = Some(n);
                true
            }
            _ => false,
        };
        let bytes = value.as_bytes();
        // The usual value, one number, is read as it is: no list to split.
        let valid = if bytes.iter().all(u8::is_ascii_digit) {
            agree(bytes)
        } else {
            value.to_str().is_ok_and(|list| {
                list.split(',')
                    .all(|element| agree(element.trim().as_bytes()))
            })
        };
        self.length = Some(agreed.filter(|_| valid));
    }
}

/// A non-empty run of ASCII digits: a sign, a blank or an overflow is
/// refused, as hyper refuses them.
fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// How the body of a response is delimited, as hyper's client decides.
fn framing(
    status: StatusCode,
    method: &Method,
    version: Version,
    delimiters: Delimiters,
) -> Result<Framing, BoxError> {
    if status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || status == StatusCode::SWITCHING_PROTOCOLS
        || method == Method::HEAD
    {
        return Ok(Framing::Length(0));
    }
    if let Some(chunked) = delimiters.chunked {
        if version == Version::HTTP_10 {
            return Err(invalid("Transfer-Encoding in an HTTP/1.0 response"));
        }
        return Ok(if chunked {
            Framing::Chunked(Chunked::Size)
        } else {
            Framing::Close
        });
    }
    match delimiters.length {
        // hyper's largest body length.
        Some(Some(len)) if len <= u64::MAX - 2 => Ok(Framing::Length(len)),
        Some(_) => Err(invalid("the response's Content-Length")),
        None => Ok(Framing::Close),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &[u8], method: Method) -> Result<Parsed, BoxError> {
        parse_head(&mut BytesMut::from(raw), &method, HeaderMap::new())
    }

    fn head_of(raw: &[u8]) -> Result<Parsed, BoxError> {
        head(raw, Method::GET)
    }

    fn encoded(req: Request<()>, body: Option<&[Bytes]>) -> (String, bool) {
        let mut dst = Vec::new();
        let (emptied, keep_alive) = encode_request(req, body, &mut dst);
        assert!(emptied.is_empty());
        (String::from_utf8(dst).unwrap(), keep_alive)
    }

    #[test]
    fn a_request_is_written_with_its_fields_in_order_and_its_close_heard() {
        let get = Request::get("/a?b=1")
            .header("host", "backend")
            .header("transfer-encoding", "chunked")
            .header("connection", "keep-alive, Close")
            .header("x-a", "1")
            .body(())
            .unwrap();
        // No body: no Transfer-Encoding, whatever it said.
        assert_eq!(
            encoded(get, None),
            (
                "GET /a?b=1 HTTP/1.1\r\nhost: backend\r\nconnection: keep-alive, Close\r\nx-a: 1\r\n\r\n"
                    .to_owned(),
                false
            )
        );
        let post = Request::post("/")
            .header("host", "backend")
            .header("content-length", "9")
            .body(())
            .unwrap();
        // A wrong length is replaced by the body's; no close asked for.
        assert_eq!(
            encoded(post, Some(&[Bytes::from_static(b"abc")])),
            (
                "POST / HTTP/1.1\r\nhost: backend\r\ncontent-length: 3\r\n\r\nabc".to_owned(),
                true
            )
        );
        let old = Request::get("/")
            .version(Version::HTTP_10)
            .body(())
            .unwrap();
        assert_eq!(
            encoded(old, None),
            ("GET / HTTP/1.0\r\n\r\n".to_owned(), false)
        );
    }

    fn complete(raw: &[u8], method: Method) -> Head {
        match head(raw, method) {
            Ok(Parsed::Complete(head)) => head,
            Ok(_) => panic!("not a complete head"),
            Err(e) => panic!("refused: {e}"),
        }
    }

    fn body(
        raw: &[u8],
        mut framing: Framing,
    ) -> Result<(Vec<u8>, Option<HeaderMap>, usize), BoxError> {
        let mut buf = BytesMut::from(raw);
        let mut data = Vec::new();
        let mut trailers = None;
        loop {
            match decode(&mut buf, &mut framing)? {
                Some(Decoded::Data(bytes)) => data.extend_from_slice(&bytes),
                Some(Decoded::Trailers(map)) => trailers = Some(map),
                Some(Decoded::End) => return Ok((data, trailers, buf.len())),
                None => return Err(invalid("incomplete")),
            }
        }
    }

    #[test]
    fn a_request_head_is_written_as_hyper_writes_it() {
        let req = Request::builder()
            .method("GET")
            .uri("/a?b=c")
            .header("host", "backend:80")
            .header("x-a", "1")
            .header("transfer-encoding", "chunked")
            .header("x-a", "2")
            .body(())
            .unwrap();
        let mut out = Vec::new();
        let (map, keep_alive) = encode_request(req, None, &mut out);
        assert!(map.is_empty() && keep_alive);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /a?b=c HTTP/1.1\r\nhost: backend:80\r\nx-a: 1\r\nx-a: 2\r\n\r\n"
        );
    }

    #[test]
    fn a_query_without_a_path_gets_the_root_path_and_close_is_heard() {
        let head = |req: Request<()>| {
            let mut out = Vec::new();
            let (_, keep_alive) = encode_request(req, None, &mut out);
            let line = String::from_utf8(out)
                .unwrap()
                .lines()
                .next()
                .unwrap()
                .to_owned();
            (line, keep_alive)
        };
        let bare_query = Request::get("http://b?x=1").body(()).unwrap();
        assert_eq!(head(bare_query), ("GET /?x=1 HTTP/1.1".into(), true));
        let no_path = Request::get("http://b").body(()).unwrap();
        assert_eq!(head(no_path), ("GET / HTTP/1.1".into(), true));
        let closing = Request::get("/")
            .header("connection", "Close")
            .body(())
            .unwrap();
        assert_eq!(head(closing), ("GET / HTTP/1.1".into(), false));
        let old = Request::get("/")
            .version(Version::HTTP_10)
            .body(())
            .unwrap();
        assert_eq!(head(old), ("GET / HTTP/1.0".into(), false));
    }

    #[test]
    fn a_switch_of_protocols_nobody_asked_for_has_no_body_and_ends_the_connection() {
        let head = complete(
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n",
            Method::GET,
        );
        assert_eq!(head.response.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert!(head.framing.is_done());
        assert!(!head.keep_alive);
    }

    #[test]
    fn framing_follows_rfc_9112_as_hyper_reads_it() {
        let cases: [(&[u8], Method, &str); 9] = [
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                Method::GET,
                "Length(5)",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                Method::HEAD,
                "Length(0)",
            ),
            (b"HTTP/1.1 204 No Content\r\n\r\n", Method::GET, "Length(0)"),
            (
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
                Method::GET,
                "Length(0)",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
                Method::GET,
                "Chunked(Size)",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                Method::GET,
                "Chunked(Size)",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                Method::GET,
                "Close",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\nContent-Length: 7\r\n\r\n",
                Method::GET,
                "Length(7)",
            ),
            (b"HTTP/1.1 200 OK\r\n\r\n", Method::GET, "Close"),
        ];
        for (raw, method, want) in cases {
            let head = complete(raw, method);
            assert_eq!(
                format!("{:?}", head.framing),
                want,
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection() {
        let cases: [(&[u8], bool); 6] = [
            (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", true),
            (
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                false,
            ),
            (
                b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 0\r\n\r\n",
                false,
            ),
            (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false),
            (
                b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
                false,
            ),
            (b"HTTP/1.1 200 OK\r\n\r\n", false),
        ];
        for (raw, want) in cases {
            assert_eq!(
                complete(raw, Method::GET).keep_alive,
                want,
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn bad_heads_are_refused() {
        let cases: [&[u8]; 9] = [
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5,\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: x\r\nContent-Length: 5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX-A: b\r\n c\r\n\r\n",
        ];
        for raw in cases {
            assert!(
                head(raw, Method::GET).is_err(),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn informational_heads_are_skipped_and_partial_ones_wait() {
        let mut buf = BytesMut::from(&b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"[..]);
        let Ok(Parsed::Informational(map, _)) =
            parse_head(&mut buf, &Method::GET, HeaderMap::new())
        else {
            panic!("103 not skipped");
        };
        let Ok(Parsed::Complete(ok)) = parse_head(&mut buf, &Method::GET, map) else {
            panic!("200 not read");
        };
        assert_eq!(ok.response.status(), StatusCode::OK);
        assert!(ok.response.headers().get("link").is_none());
        assert!(buf.is_empty());
        assert!(matches!(
            head(b"HTTP/1.1 200 OK\r\nContent-Le", Method::GET),
            Ok(Parsed::Partial(_))
        ));
    }

    #[test]
    fn a_long_head_keeps_every_field_in_order() {
        let mut raw = String::from("HTTP/1.1 200 OK\r\n");
        for i in 0..60 {
            raw.push_str(&format!("x-f{}: v{i}\r\n", i % 40));
        }
        raw.push_str("Content-Length: 0\r\n\r\n");
        let head = complete(raw.as_bytes(), Method::GET);
        assert_eq!(head.response.headers().len(), 61);
        let again: Vec<_> = head.response.headers().get_all("x-f3").iter().collect();
        assert_eq!(again, ["v3", "v43"]);
        let mut too_many = String::from("HTTP/1.1 200 OK\r\n");
        for i in 0..101 {
            too_many.push_str(&format!("x-{i}: v\r\n"));
        }
        too_many.push_str("\r\n");
        assert!(head_of(too_many.as_bytes()).is_err());
    }

    #[test]
    fn a_reason_phrase_of_its_own_is_kept() {
        let head = complete(
            b"HTTP/1.1 200 Fine\r\nContent-Length: 0\r\n\r\n",
            Method::GET,
        );
        let reason = head
            .response
            .extensions()
            .get::<hyper::ext::ReasonPhrase>()
            .unwrap();
        assert_eq!(reason.as_bytes(), b"Fine");
        let canonical = complete(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", Method::GET);
        assert!(canonical
            .response
            .extensions()
            .get::<hyper::ext::ReasonPhrase>()
            .is_none());
    }

    #[test]
    fn chunked_sizes_may_have_leading_zeros() {
        let (data, _, left) = body(
            b"000000000000000000005\r\nhello\r\n0000\r\n\r\n",
            Framing::Chunked(Chunked::Size),
        )
        .unwrap();
        assert_eq!((data.as_slice(), left), (&b"hello"[..], 0));
    }

    #[test]
    fn chunked_bodies_decode_with_extensions_and_trailers() {
        let (data, trailers, left) = body(
            b"5;ext=1\r\nhello\r\n6 \r\n world\r\n0\r\nx-sum: 42\r\n\r\nNEXT",
            Framing::Chunked(Chunked::Size),
        )
        .unwrap();
        assert_eq!(data, b"hello world");
        assert_eq!(trailers.unwrap()["x-sum"], "42");
        assert_eq!(left, 4, "bytes after the body are left in the buffer");
        let (data, trailers, left) = body(
            b"A\r\n0123456789\r\n0\r\n\r\n",
            Framing::Chunked(Chunked::Size),
        )
        .unwrap();
        assert_eq!((data.len(), trailers.is_none(), left), (10, true, 0));
    }

    #[test]
    fn bad_chunked_bodies_are_refused() {
        let cases: [&[u8]; 8] = [
            b"0\r\n\rX",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"-5\r\nhello\r\n0\r\n\r\n",
            b"\r\nhello\r\n0\r\n\r\n",
            b"5 x\r\nhello\r\n0\r\n\r\n",
            b"11111111111111111\r\n",
            b"5\rx\r\nhello\r\n0\r\n\r\n",
        ];
        for raw in cases {
            assert!(
                body(raw, Framing::Chunked(Chunked::Size)).is_err(),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn a_length_body_stops_at_its_length() {
        let (data, _, left) = body(b"abcdefgh", Framing::Length(5)).unwrap();
        assert_eq!((data.as_slice(), left), (&b"abcde"[..], 3));
    }
}
