//! The standard director: what a reverse proxy does to a request on its way
//! to the picked backend.
//!
//! [`ProxyDirector`] follows Go's multi-host `httputil.ReverseProxy` and
//! nginx's `proxy_pass`:
//!
//! * the URI's scheme and authority become the backend's; the backend's path
//!   prefix and the request path are joined with exactly one slash
//!   (`/api/` + `/users` → `/api/users`, Go's `singleJoiningSlash`); the
//!   backend URI's query and the request's are merged with `&`;
//! * `Host` is kept as the client sent it (Go's default) or set to the
//!   backend's authority (nginx's default, `proxy_set_header Host
//!   $proxy_host`), or to a fixed value — see [`HostHeader`];
//! * the client's address (the [`ClientAddr`] extension the server fills) is
//!   appended to `X-Forwarded-For`; `X-Forwarded-Host` and
//!   `X-Forwarded-Proto` are set (replacing whatever the client sent);
//!   optionally an RFC 7239 `Forwarded` element is appended;
//! * hop-by-hop headers are removed as RFC 9110 §7.6.1 requires:
//!   `Connection` and every header it lists, `Keep-Alive`,
//!   `Proxy-Connection`, `Proxy-Authenticate`, `Proxy-Authorization`, `TE`,
//!   `Trailer`, `Transfer-Encoding` and `Upgrade`, except that an upgrade
//!   handshake (WebSocket) keeps `Connection: upgrade` and its `Upgrade`
//!   header, and `TE: trailers` is kept (as Go does, for gRPC).
//!
//! The pick must already be in the request's extensions: put
//! [`LoadBalanceLayer`](crate::layer::LoadBalanceLayer) outside the
//! director. Without it the director fails with
//! [`Error::MissingExtension`].
//!
//! ```
//! use http::Request;
//! use tower_lb::layer::{Direct, ProxyDirector};
//! use tower_lb::sticky::ClientAddr;
//! use tower_lb::{Backend, Member};
//!
//! let mut req = Request::builder()
//!     .uri("/users?page=2")
//!     .header("host", "example.com")
//!     .header("x-forwarded-for", "203.0.113.9")
//!     .header("connection", "keep-alive, x-secret")
//!     .header("x-secret", "hop-by-hop, must not leak")
//!     .body(())
//!     .unwrap();
//! req.extensions_mut().insert(Member::new(Backend::new("http://10.0.0.1:8080/api?v=1")?));
//! req.extensions_mut().insert(ClientAddr("192.0.2.7:50000".parse().unwrap()));
//!
//! ProxyDirector::new().direct(&mut req).unwrap();
//! assert_eq!(req.uri(), "http://10.0.0.1:8080/api/users?v=1&page=2");
//! assert_eq!(req.headers()["host"], "example.com");
//! assert_eq!(req.headers()["x-forwarded-for"], "203.0.113.9, 192.0.2.7");
//! assert_eq!(req.headers()["x-forwarded-host"], "example.com");
//! assert_eq!(req.headers()["x-forwarded-proto"], "http");
//! assert!(req.headers().get("connection").is_none());
//! assert!(req.headers().get("x-secret").is_none());
//! # Ok::<(), tower_lb::Error>(())
//! ```

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::IpAddr;

use http::header::{
    Entry, CONNECTION, FORWARDED, HOST, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER,
    TRANSFER_ENCODING, UPGRADE,
};
use http::uri::{PathAndQuery, Uri};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};

use crate::layer::Direct;
use crate::sticky::ClientAddr;
use crate::{Backend, BoxError, Error, Member};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// What the `Host` header of the outgoing request says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum HostHeader {
    /// The client's `Host` (or the request URI's authority): Go's default.
    #[default]
    Preserve,
    /// The backend's authority: nginx's default.
    Backend,
    /// A fixed value.
    Fixed(HeaderValue),
}

/// The standard reverse-proxy director; see the [module docs](self).
///
/// ```
/// use tower_lb::layer::{HostHeader, ProxyDirector};
///
/// let director = ProxyDirector::new()
///     .host(HostHeader::Backend)
///     .forwarded(true)
///     .proto("https");
/// # let _ = director;
/// ```
#[derive(Debug, Clone)]
pub struct ProxyDirector {
    host: HostHeader,
    x_forwarded: bool,
    forwarded: bool,
    proto: &'static str,
}

impl Default for ProxyDirector {
    fn default() -> Self {
        ProxyDirector::new()
    }
}

impl ProxyDirector {
    /// Preserve `Host`, set `X-Forwarded-*`, no `Forwarded`, the client
    /// connection is plain `http`.
    pub fn new() -> Self {
        ProxyDirector {
            host: HostHeader::Preserve,
            x_forwarded: true,
            forwarded: false,
            proto: "http",
        }
    }

    /// What `Host` to send.
    pub fn host(mut self, host: HostHeader) -> Self {
        self.host = host;
        self
    }

    /// Whether to set `X-Forwarded-For`, `-Host` and `-Proto` (default on).
    pub fn x_forwarded(mut self, on: bool) -> Self {
        self.x_forwarded = on;
        self
    }

    /// Whether to append an RFC 7239 `Forwarded` element (default off).
    pub fn forwarded(mut self, on: bool) -> Self {
        self.forwarded = on;
        self
    }

    /// The protocol clients use to reach the proxy, `http` or `https`, for
    /// `X-Forwarded-Proto` and `Forwarded` when the request URI has no
    /// scheme (set `https` when the proxy terminates TLS).
    pub fn proto(mut self, proto: &'static str) -> Self {
        self.proto = proto;
        self
    }

    fn rewrite<B>(&self, req: &mut Request<B>) -> Result<(), Error> {
        let backend = match req.extensions().get::<Member>() {
            Some(member) => member.backend().clone(),
            None => {
                return Err(Error::MissingExtension {
                    what: "picked backend (a tower_lb::Member extension)",
                    hint: "put LoadBalanceLayer outside (before) DirectorLayer",
                })
            }
        };
        let client = req.extensions().get::<ClientAddr>().map(|c| c.0.ip());

        // The request URI is taken apart rather than copied: its path and
        // query move into the new URI.
        let original = std::mem::take(req.uri_mut()).into_parts();
        let proto = match original.scheme.as_ref().map(|s| s.as_str()) {
            Some("https") => "https",
            Some(_) => "http",
            None => self.proto,
        };
        let headers = req.headers_mut();
        remove_hop_by_hop_headers(headers);

        // What the client asked for: its Host header, or (HTTP/2, absolute
        // form) the URI's authority, which then becomes the Host header.
        if !headers.contains_key(HOST) {
            if let Some(value) = original
                .authority
                .as_ref()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            {
                headers.insert(HOST, value);
            }
        }
        let original_host = headers.get(HOST).cloned();
        match &self.host {
            HostHeader::Preserve => {}
            HostHeader::Backend => {
                headers.insert(HOST, backend.host_header().clone());
            }
            HostHeader::Fixed(value) => {
                headers.insert(HOST, value.clone());
            }
        }
        if self.x_forwarded {
            if let Some(ip) = client {
                append_forwarded_for(headers, ip);
            }
            match &original_host {
                Some(host) => headers.insert(X_FORWARDED_HOST, host.clone()),
                None => headers.remove(X_FORWARDED_HOST),
            };
            headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
        }
        if self.forwarded {
            append_forwarded(headers, client, original_host.as_ref(), proto);
        }

        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(backend.scheme().clone());
        parts.authority = Some(backend.authority().clone());
        parts.path_and_query = Some(join_path_and_query(&backend, original.path_and_query)?);
        *req.uri_mut() = Uri::from_parts(parts).map_err(|_| Error::InvalidBackendUri {
            uri: backend.uri().to_string(),
            reason: "it cannot be combined with the request URI",
        })?;
        Ok(())
    }
}

/// The backend's path prefix joined with the request path, and the backend's
/// query merged with the request's. Without a prefix or backend query the
/// request's own path and query are reused as they are.
fn join_path_and_query(
    backend: &Backend,
    requested: Option<PathAndQuery>,
) -> Result<PathAndQuery, Error> {
    let requested = requested.unwrap_or_else(|| PathAndQuery::from_static("/"));
    let prefix = backend.path_prefix();
    let has_prefix = !(prefix.is_empty() || prefix == "/");
    if !has_prefix && backend.query().is_none() {
        return Ok(requested);
    }
    let path = requested.path();
    let mut s = if has_prefix {
        join_paths(prefix, path)
    } else {
        path.to_owned()
    };
    match (backend.query(), requested.query()) {
        (Some(a), Some(b)) if !a.is_empty() && !b.is_empty() => {
            let _ = write!(s, "?{a}&{b}");
        }
        (Some(a), Some(b)) => {
            let _ = write!(s, "?{a}{b}");
        }
        (Some(q), None) | (None, Some(q)) => {
            let _ = write!(s, "?{q}");
        }
        (None, None) => {}
    }
    PathAndQuery::from_maybe_shared(s).map_err(|_| Error::InvalidBackendUri {
        uri: backend.uri().to_string(),
        reason: "joining its path with the request's gave an invalid URI",
    })
}

impl<B> Direct<B> for ProxyDirector {
    fn direct(&mut self, req: &mut Request<B>) -> Result<(), BoxError> {
        self.rewrite(req).map_err(Into::into)
    }
}

/// `a` and `b` joined with exactly one slash between them.
fn join_paths(a: &str, b: &str) -> String {
    match (a.ends_with('/'), b.starts_with('/')) {
        (true, true) => [a, &b[1..]].concat(),
        (false, false) => [a, "/", b].concat(),
        _ => [a, b].concat(),
    }
}

/// Appends `ip` to `X-Forwarded-For`, folding earlier values into one line
/// (`a, b, ip`) as Go's `ReverseProxy` does.
fn append_forwarded_for(headers: &mut HeaderMap, ip: IpAddr) {
    // The address is formatted on the stack first so that the line is
    // allocated once, at its exact size.
    let mut ip_text = [0u8; 48];
    let ip_len = {
        let mut cursor = std::io::Cursor::new(&mut ip_text[..]);
        let _ = std::io::Write::write_fmt(&mut cursor, format_args!("{ip}"));
        cursor.position() as usize
    };
    let ip_text = std::str::from_utf8(&ip_text[..ip_len]).unwrap_or_default();
    let previous = headers.get_all(&X_FORWARDED_FOR);
    let len: usize = previous.iter().map(|v| v.len() + 2).sum::<usize>() + ip_text.len();
    let mut line = String::with_capacity(len);
    for value in previous {
        if let Ok(s) = value.to_str() {
            line.push_str(s);
            line.push_str(", ");
        }
    }
    line.push_str(ip_text);
    // From a String, the value takes over the buffer instead of copying it.
    if let Ok(value) = HeaderValue::try_from(line) {
        headers.insert(X_FORWARDED_FOR, value);
    }
}

/// Appends one RFC 7239 element: `for=...;host=...;proto=...`.
fn append_forwarded(
    headers: &mut HeaderMap,
    client: Option<IpAddr>,
    host: Option<&HeaderValue>,
    proto: &str,
) {
    let mut element = String::new();
    match client {
        Some(IpAddr::V4(ip)) => {
            let _ = write!(element, "for={ip}");
        }
        Some(IpAddr::V6(ip)) => {
            let _ = write!(element, "for=\"[{ip}]\"");
        }
        None => element.push_str("for=unknown"),
    }
    if let Some(host) = host.and_then(|h| h.to_str().ok()) {
        // A host with a port holds ':', which is not a token character.
        if host.bytes().all(is_token_char) {
            let _ = write!(element, ";host={host}");
        } else if !host.contains(['"', '\\']) {
            let _ = write!(element, ";host=\"{host}\"");
        }
    }
    let _ = write!(element, ";proto={proto}");
    let line = match headers.get(FORWARDED).and_then(|v| v.to_str().ok()) {
        Some(existing) => format!("{existing}, {element}"),
        None => element,
    };
    if let Ok(value) = HeaderValue::from_str(&line) {
        headers.insert(FORWARDED, value);
    }
}

fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whether a comma-separated header's values contain `token` (case-insensitive).
fn contains_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// Removes the hop-by-hop headers of RFC 9110 §7.6.1 from a request or
/// response: `Connection` and every header it names, `Keep-Alive`,
/// `Proxy-Connection`, `Proxy-Authenticate`, `Proxy-Authorization`, `TE`,
/// `Trailer`, `Transfer-Encoding` and `Upgrade`.
///
/// Two exceptions keep a proxy working: an upgrade (a `Connection` naming
/// `upgrade` and an `Upgrade` header, as in a WebSocket handshake) keeps
/// `Connection: upgrade` and its `Upgrade`, and a `TE` naming `trailers`
/// leaves `TE: trailers`.
///
/// ```
/// use http::HeaderMap;
/// use tower_lb::layer::remove_hop_by_hop_headers;
///
/// let mut headers = HeaderMap::new();
/// headers.insert("connection", "Upgrade, X-Private".parse().unwrap());
/// headers.insert("upgrade", "websocket".parse().unwrap());
/// headers.insert("x-private", "1".parse().unwrap());
/// headers.insert("keep-alive", "timeout=5".parse().unwrap());
/// remove_hop_by_hop_headers(&mut headers);
/// assert_eq!(headers["connection"], "upgrade");
/// assert_eq!(headers["upgrade"], "websocket");
/// assert!(headers.get("x-private").is_none() && headers.get("keep-alive").is_none());
/// ```
pub fn remove_hop_by_hop_headers(headers: &mut HeaderMap) {
    // One pass finds the hop-by-hop headers present (usually none, or just
    // Connection), so only those are removed.
    const MAX_FOUND: usize = 8;
    let mut found: [Option<HeaderName>; MAX_FOUND] = Default::default();
    let mut count = 0;
    for name in headers.keys() {
        if is_hop_by_hop(name) && !found[..count].iter().any(|f| f.as_ref() == Some(name)) {
            if count == MAX_FOUND {
                // More distinct names than the fixed list holds cannot
                // happen; stay correct regardless.
                count += 1;
                break;
            }
            found[count] = Some(name.clone());
            count += 1;
        }
    }
    if count == 0 {
        return;
    }
    let has = |name: &HeaderName| found.iter().any(|f| f.as_ref() == Some(name));
    let upgrade = if has(&CONNECTION) && contains_token(headers, &CONNECTION, "upgrade") {
        headers.get(UPGRADE).cloned()
    } else {
        None
    };
    let keep_trailers = has(&TE) && contains_token(headers, &TE, "trailers");

    // Headers named by Connection. A single Connection value (the usual
    // case) is moved out of the map and needs no allocation.
    let listed = |value: &HeaderValue, headers: &mut HeaderMap| {
        if let Ok(s) = value.to_str() {
            for token in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                headers.remove(token);
            }
        }
    };
    if headers.get_all(CONNECTION).iter().nth(1).is_none() {
        if let Some(value) = headers.remove(CONNECTION) {
            listed(&value, headers);
        }
    } else if let Entry::Occupied(entry) = headers.entry(CONNECTION) {
        let values: Vec<HeaderValue> = entry.remove_entry_mult().1.collect();
        for value in &values {
            listed(value, headers);
        }
    }
    if count > MAX_FOUND {
        for name in HOP_BY_HOP {
            headers.remove(name);
        }
        headers.remove(KEEP_ALIVE);
        headers.remove(PROXY_CONNECTION);
    } else {
        for name in found.into_iter().flatten() {
            headers.remove(name);
        }
    }

    if let Some(protocol) = upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, protocol);
    }
    if keep_trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
}

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const HOP_BY_HOP: [HeaderName; 7] = [
    CONNECTION,
    PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION,
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
];

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name) || *name == KEEP_ALIVE || *name == PROXY_CONNECTION
}

/// A modify-response hook that removes hop-by-hop headers from a backend's
/// response before it goes to the client (see
/// [`remove_hop_by_hop_headers`]); a `101 Switching Protocols` keeps its
/// upgrade headers.
///
/// ```
/// use tower_lb::layer::{strip_hop_by_hop_response, ModifyResponseLayer};
///
/// let layer = ModifyResponseLayer::new(strip_hop_by_hop_response::<()>);
/// let res = http::Response::builder().header("keep-alive", "timeout=5").body(()).unwrap();
/// let res = strip_hop_by_hop_response(res).unwrap();
/// assert!(res.headers().get("keep-alive").is_none());
/// # let _ = layer;
/// ```
pub fn strip_hop_by_hop_response<B>(mut res: Response<B>) -> Result<Response<B>, Infallible> {
    if res.status() == StatusCode::SWITCHING_PROTOCOLS {
        remove_hop_by_hop_headers(res.headers_mut());
    } else {
        // Only an upgrade answer may keep Connection: upgrade.
        res.headers_mut().remove(UPGRADE);
        remove_hop_by_hop_headers(res.headers_mut());
    }
    Ok(res)
}
