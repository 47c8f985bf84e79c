//! The standard director: what a reverse proxy does to a request on its way
//! to the picked backend.
//!
//! [`ProxyDirector`] follows Go's multi-host `httputil.ReverseProxy` and
//! nginx's `proxy_pass`:
//!
//! * the URI's scheme and authority become the backend's, whatever the
//!   request target said; the backend's path prefix and the request path are
//!   joined with exactly one slash (`/api/` + `/users` → `/api/users`, Go's
//!   `singleJoiningSlash`), after resolving `.` and `..` segments so that a
//!   path cannot climb out of the prefix (as nginx normalizes); the backend
//!   URI's query and the request's are merged with `&`;
//! * `Host` is kept as the client sent it (Go's default; an absolute-form
//!   target's `host[:port]` replaces it, never its userinfo) or set to the
//!   backend's authority (nginx's default, `proxy_set_header Host
//!   $proxy_host`), or to a fixed value — see [`HostHeader`];
//! * `X-Forwarded-For` gets the client's address (the [`ClientAddr`]
//!   extension the server fills): by default it *replaces* whatever the
//!   client sent, the safe choice at an edge; behind proxies of your own,
//!   [`ForwardedFor::TrustedHops`] keeps the entries they wrote and
//!   [`ForwardedFor::Append`] keeps everything (Go's and nginx's
//!   `$proxy_add_x_forwarded_for`). Without a [`ClientAddr`] an incoming
//!   `X-Forwarded-For` is dropped: it cannot be vouched for;
//!   `X-Forwarded-Host` and `X-Forwarded-Proto` are set, replacing whatever
//!   the client sent, the protocol from configuration
//!   ([`ProxyDirector::https`]), never from the request;
//! * an incoming RFC 7239 `Forwarded` header is removed (as Go's
//!   `ReverseProxy` does with its `Rewrite` hook since Go 1.20; with its
//!   `Director` hook, and in nginx, it passes through untouched), unless
//!   [`ProxyDirector::forwarded`] is on: then this hop's element is
//!   appended after the earlier ones [`ForwardedFor`] trusts when the
//!   [`ClientAddr`] is known, and replaces them (as `for=unknown`) when it
//!   is not, by `X-Forwarded-For`'s rule;
//! * hop-by-hop headers are removed as RFC 9110 §7.6.1 requires (the
//!   [`Director`](crate::layer::Director) layer has already removed the
//!   client's before any hook ran):
//!   `Connection` and every header it lists, `Keep-Alive`,
//!   `Proxy-Connection`, `Proxy-Authenticate`, `Proxy-Authorization`, `TE`,
//!   `Transfer-Encoding`, `Upgrade` and `HTTP2-Settings`, except that a
//!   WebSocket handshake keeps `Connection: upgrade` and `Upgrade:
//!   websocket`, and `TE: trailers` is kept (as Go does, for gRPC); `Host`
//!   is never removed because `Connection` lists it. `Trailer` is
//!   end-to-end and kept (unless `Connection` lists it): hyper's HTTP/1.1
//!   sends only the trailer fields it announces. No other upgrade than
//!   WebSocket is forwarded: see [Upgrades](ProxyDirector#upgrades).
//!
//! # Refused requests
//!
//! Some requests cannot be forwarded safely; the director then fails with a
//! client error ([`Error::status_code`] `4xx`), the inner service is not
//! called and [`LoadBalance`](crate::layer::LoadBalance) does not count it
//! against the backend:
//!
//! * an HTTP/1.1 request without `Host` (or with an empty one) and no
//!   authority in its target ([`Error::BadRequest`], `400`, RFC 9112
//!   §3.2): forwarded, it would reach the backend with the backend's own
//!   address as `Host`;
//! * more than one `Host` line ([`Error::BadRequest`], RFC 9112 §3.2): the
//!   backend might read one and `X-Forwarded-Host` say another; and a
//!   `Host` (or a target's authority) that is not exactly `host[:port]` —
//!   a name or bracketed IPv6 literal and at most one numeric port, no
//!   commas (`evil.example,trusted.example`), no second port, no
//!   percent-escapes, no userinfo, path or whitespace — which backends
//!   and caches would each read their own way;
//! * `CONNECT` and `TRACE` ([`Error::MethodNotAllowed`], `405`), unless
//!   allowed with [`ProxyDirector::allow_connect`] or
//!   [`ProxyDirector::allow_trace`];
//! * with a backend path prefix, a path that, once its `/`-delimited dot
//!   segments are resolved, still has a `.` or `..` segment (`%2e` counting
//!   as `.`) delimited by `\`, `%2F` or `%5C` (any case), as in
//!   `/..%2F..%2Fadmin` or `/..\admin` ([`Error::BadRequest`]): a backend
//!   that decodes `%2F` or reads `\` as `/` before resolving dots would
//!   climb out of the prefix. The same for a dot segment before `;`
//!   parameters (`/..;/admin`), which servlet containers such as Tomcat
//!   read as `..`. Encoded slashes without dot segments
//!   (`/projects/group%2Fname`) pass unchanged;
//! * a path and query that the backend's path prefix and query would make
//!   longer than `http` allows (65,534 bytes) ([`Error::UriTooLong`], `414
//!   URI Too Long`).
//!
//! `OPTIONS *` (a question about the server, not a resource) goes to the
//! backend as `OPTIONS *`: it is never rewritten to `OPTIONS /prefix/*`.
//!
//! # `Host` and `X-Forwarded-Host` poisoning
//!
//! With [`HostHeader::Preserve`] (the default, as Go's) the backend sees
//! the `Host` the client chose, validated as `host[:port]` but still
//! *any* host: a backend that builds absolute links, password-reset mails
//! or cache keys from `Host` or `X-Forwarded-Host` can be made to use an
//! attacker's domain. Either pin it — [`HostHeader::Backend`] (nginx's
//! `proxy_set_header Host $proxy_host`) or [`HostHeader::Fixed`] with your
//! public name — or make the backend check `Host` against its own list.
//! `X-Forwarded-Host` always carries what the client asked for (a client's
//! own `X-Forwarded-Host` is replaced, never passed on), so a backend must
//! not trust it more than `Host`.
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
//! // At an edge the client's own X-Forwarded-For is not believed.
//! assert_eq!(req.headers()["x-forwarded-for"], "192.0.2.7");
//! assert_eq!(req.headers()["x-forwarded-host"], "example.com");
//! assert_eq!(req.headers()["x-forwarded-proto"], "http");
//! assert!(req.headers().get("connection").is_none());
//! assert!(req.headers().get("x-secret").is_none());
//! # Ok::<(), tower_lb::Error>(())
//! ```

use std::borrow::Cow;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::IpAddr;

use http::header::{
    Entry, CONNECTION, CONTENT_LENGTH, FORWARDED, HOST, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION,
    TE, TRANSFER_ENCODING, UPGRADE,
};
use http::uri::{Authority, PathAndQuery, Uri};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};

use crate::layer::{contains_token, Direct};
use crate::sticky::ClientAddr;
use crate::{Backend, BoxError, Error, Member};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// What the `Host` header of the outgoing request says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum HostHeader {
    /// The client's `Host` (or the request target's `host[:port]`, without
    /// userinfo): Go's default.
    #[default]
    Preserve,
    /// The backend's authority: nginx's default.
    Backend,
    /// A fixed value.
    Fixed(HeaderValue),
}

/// The standard reverse-proxy director; see the [module docs](self).
///
/// # Upgrades
///
/// Only WebSocket upgrades are forwarded. A request keeps `Connection:
/// upgrade` and `Upgrade` only when `Connection` names `upgrade` and
/// `Upgrade` names `websocket` (any case); the `Upgrade` sent on is then
/// `websocket` alone. Any other protocol, `h2c` above all, loses its
/// `Upgrade` header and its `upgrade` connection option, and
/// `HTTP2-Settings`, which exists only for the h2c upgrade, is always
/// removed. A backend that accepted a forwarded h2c upgrade would switch
/// the connection to HTTP/2, and the client could then send requests over
/// it that this proxy never sees, past whatever it checks (h2c smuggling).
///
/// ```
/// use tower_lb::layer::{HostHeader, ProxyDirector};
///
/// use tower_lb::layer::ForwardedFor;
///
/// let director = ProxyDirector::new()
///     .host(HostHeader::Backend)
///     .forwarded_for(ForwardedFor::TrustedHops(1))
///     .forwarded(true)
///     .https(true)
///     .allow_connect(false)
///     .allow_trace(false);
/// # let _ = director;
/// ```
#[derive(Debug, Clone)]
pub struct ProxyDirector {
    host: HostHeader,
    x_forwarded: bool,
    forwarded_for: ForwardedFor,
    forwarded: bool,
    https: bool,
    allow_connect: bool,
    allow_trace: bool,
}

/// How much of an incoming `X-Forwarded-For` (and, when
/// [`ProxyDirector::forwarded`] is on, of an incoming `Forwarded`) the
/// director keeps before it adds the client's address. The same trust
/// model as [`ClientIp::trusted_hops`](crate::sticky::ClientIp::trusted_hops):
/// a chain is worth only the entries that proxies of your own wrote.
///
/// Without a [`ClientAddr`] on the request nothing is kept in any mode:
/// the chain cannot be extended truthfully.
///
/// ```
/// use http::Request;
/// use tower_lb::layer::{Direct, ForwardedFor, ProxyDirector};
/// use tower_lb::sticky::ClientAddr;
/// use tower_lb::{Backend, Member};
///
/// let forward = |mode: ForwardedFor| -> Result<String, tower_lb::BoxError> {
///     let mut req = Request::builder()
///         .uri("/")
///         .header("host", "example.com")
///         .header("x-forwarded-for", "6.6.6.6, 203.0.113.9")
///         .body(())?;
///     req.extensions_mut().insert(Member::new(Backend::new("http://10.0.0.1")?));
///     req.extensions_mut().insert(ClientAddr("192.0.2.7:50000".parse()?));
///     ProxyDirector::new().forwarded_for(mode).direct(&mut req)?;
///     Ok(req.headers()["x-forwarded-for"].to_str()?.to_owned())
/// };
/// assert_eq!(forward(ForwardedFor::Overwrite)?, "192.0.2.7");
/// assert_eq!(forward(ForwardedFor::TrustedHops(1))?, "203.0.113.9, 192.0.2.7");
/// assert_eq!(forward(ForwardedFor::Append)?, "6.6.6.6, 203.0.113.9, 192.0.2.7");
/// # Ok::<(), tower_lb::BoxError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ForwardedFor {
    /// Only the client's address: whatever the client sent is dropped.
    /// The safe choice at an edge, where every client is untrusted (nginx's
    /// `proxy_set_header X-Forwarded-For $remote_addr`). The default.
    #[default]
    Overwrite,
    /// Keeps the right-most `n` entries, which `n` proxies of your own in
    /// front of this one appended, and appends the client's address (the
    /// last of those proxies). Entries further left were written by the
    /// client and are dropped. `TrustedHops(0)` is `Overwrite`.
    TrustedHops(usize),
    /// Keeps every entry and appends the client's address: Go's
    /// `ReverseProxy` and nginx's `$proxy_add_x_forwarded_for`. Only behind
    /// a proxy of your own that already overwrites the header: at an edge
    /// the backend would read what the client wrote.
    Append,
}

impl Default for ProxyDirector {
    fn default() -> Self {
        ProxyDirector::new()
    }
}

impl ProxyDirector {
    /// Preserve `Host`, set `X-Forwarded-*` (overwriting a client's
    /// `X-Forwarded-For`), no `Forwarded`, clients reach the proxy over plain
    /// `http`, `CONNECT` and `TRACE` refused.
    pub fn new() -> Self {
        ProxyDirector {
            host: HostHeader::Preserve,
            x_forwarded: true,
            forwarded_for: ForwardedFor::Overwrite,
            forwarded: false,
            https: false,
            allow_connect: false,
            allow_trace: false,
        }
    }

    /// How much of an incoming `X-Forwarded-For` chain (and `Forwarded`)
    /// to keep: see [`ForwardedFor`]. Default
    /// [`Overwrite`](ForwardedFor::Overwrite).
    pub fn forwarded_for(mut self, mode: ForwardedFor) -> Self {
        self.forwarded_for = mode;
        self
    }

    /// Whether `CONNECT` requests are forwarded (default `false`: they are
    /// refused with [`Error::MethodNotAllowed`], `405`, as Go's
    /// `ReverseProxy` users and nginx expect of a reverse proxy). Allowed,
    /// the tunnel is asked of the picked backend, never of the address the
    /// client named: the request target becomes the backend's authority.
    pub fn allow_connect(mut self, on: bool) -> Self {
        self.allow_connect = on;
        self
    }

    /// Whether `TRACE` requests are forwarded (default `false`: refused with
    /// [`Error::MethodNotAllowed`], `405`). A `TRACE` echoes the request
    /// the backend got, headers a proxy added included, back to the client.
    pub fn allow_trace(mut self, on: bool) -> Self {
        self.allow_trace = on;
        self
    }

    /// What `Host` to send.
    pub fn host(mut self, host: HostHeader) -> Self {
        self.host = host;
        self
    }

    /// Whether to set `X-Forwarded-For`, `-Host` and `-Proto` (default on).
    ///
    /// Off, incoming `X-Forwarded-*` headers are removed, as an incoming
    /// `Forwarded` is when [`forwarded`](Self::forwarded) is off: a client
    /// could have written them, and nothing here vouches for them.
    pub fn x_forwarded(mut self, on: bool) -> Self {
        self.x_forwarded = on;
        self
    }

    /// Whether to append an RFC 7239 `Forwarded` element (default off).
    ///
    /// Off, an incoming `Forwarded` header is removed: nothing here vouches
    /// for it. (Go's `ReverseProxy` removes it only with its `Rewrite` hook,
    /// Go 1.20 and later; its `Director` and nginx pass it through
    /// untouched.) On, the earlier elements that
    /// [`forwarded_for`](Self::forwarded_for) trusts are kept and this
    /// hop's appended when the request has a [`ClientAddr`]; without one
    /// they are dropped (as `X-Forwarded-For` is) and the header holds only
    /// this hop's element, `for=unknown`.
    pub fn forwarded(mut self, on: bool) -> Self {
        self.forwarded = on;
        self
    }

    /// Whether clients reach the proxy over TLS (default `false`): the
    /// `X-Forwarded-Proto` and `Forwarded` protocol. It is configuration,
    /// never read from the request, whose scheme a client chooses (an
    /// absolute-form target or HTTP/2's `:scheme`), as nginx's `$scheme` is
    /// the listener's and Go's comes from the TLS state.
    pub fn https(mut self, on: bool) -> Self {
        self.https = on;
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
        let method = req.method();
        if (*method == Method::CONNECT && !self.allow_connect)
            || (*method == Method::TRACE && !self.allow_trace)
        {
            return Err(Error::MethodNotAllowed {
                method: method.clone(),
            });
        }
        let mut hosts = req.headers().get_all(HOST).iter();
        let host = match (hosts.next(), hosts.next()) {
            // RFC 9112 §3.2: more than one Host line is a 400. Forwarded as
            // they are, the backend could read one and X-Forwarded-Host say
            // another.
            (_, Some(_)) => {
                return Err(Error::BadRequest {
                    reason: "the request has more than one Host header line".into(),
                })
            }
            (host, None) => host.filter(|h| !h.is_empty()),
        };
        // The host the client asked for: an authority in the request target
        // wins over Host (RFC 9112 §3.2.2). Whichever it is, it reaches the
        // backend and X-Forwarded-Host, so it must be `host[:port]` and
        // nothing else: `evil.example,trusted.example`, a second port or a
        // percent-escape would be read differently by different backends.
        let asked = match req.uri().authority() {
            Some(authority) => Some(host_and_port(authority).as_bytes()),
            None => host.map(HeaderValue::as_bytes),
        };
        match asked {
            Some(asked) if !is_host_and_port(asked) => {
                return Err(Error::BadRequest {
                    reason: "the request's Host header is not a host and port".into(),
                })
            }
            // RFC 9112 §3.2: an HTTP/1.1 request without Host is a 400.
            // Forwarded, it would reach the backend with the backend's own
            // address as Host.
            None if req.version() == Version::HTTP_11 => {
                return Err(Error::BadRequest {
                    reason: "the HTTP/1.1 request has no Host header".into(),
                })
            }
            _ => {}
        }
        let asterisk = *req.method() == Method::OPTIONS
            && req
                .uri()
                .path_and_query()
                .is_some_and(|pq| pq.as_str() == "*");
        let connect = *req.method() == Method::CONNECT;
        let client = req.extensions().get::<ClientAddr>().map(|c| c.0.ip());

        // RFC 9110 §2.5: an intermediary sends its own version. A 1.0
        // client's request goes on as HTTP/1.1 (as Go's and nginx's with
        // `proxy_http_version 1.1` do), so the backend connection stays
        // open for the next request; the client is still answered in 1.0.
        if matches!(req.version(), Version::HTTP_09 | Version::HTTP_10) {
            *req.version_mut() = Version::HTTP_11;
        }
        // The request URI is taken apart rather than copied: its path and
        // query move into the new URI.
        let original = std::mem::take(req.uri_mut()).into_parts();
        let proto = if self.https { "https" } else { "http" };
        let headers = req.headers_mut();
        // The Director layer removed them before any hook ran; a hook of
        // one's own may have added Connection since, and this director may
        // run alone (`Direct::direct`), so the framing is checked here too.
        remove_hop_by_hop_checked(headers, check_request_codings)?;

        // What the client asked for. An authority in the request target
        // (absolute form, HTTP/2) wins over a Host header, as RFC 9112
        // §3.2.2 requires, and becomes the Host header: its host and port,
        // never its userinfo (`user:password@`).
        if let Some(value) = original
            .authority
            .as_ref()
            .and_then(|a| HeaderValue::from_str(host_and_port(a)).ok())
        {
            headers.insert(HOST, value);
        }
        // The Host the client sent, moved out of the map when another takes
        // its place (a copy is a count on the head's bytes, and its drop
        // another). An empty Host (HTTP/1.0 may send one) names nothing to
        // forward.
        let mut original_host = match &self.host {
            HostHeader::Preserve => headers.get(HOST).cloned(),
            HostHeader::Backend => headers.insert(HOST, backend.host_header().clone()),
            HostHeader::Fixed(value) => headers.insert(HOST, value.clone()),
        }
        .filter(|h| !h.is_empty());
        if self.x_forwarded {
            match client {
                Some(ip) => set_forwarded_for(headers, ip, self.forwarded_for),
                // Without the peer address the chain cannot be extended
                // truthfully, and what the client sent cannot be vouched for.
                None => {
                    headers.remove(&X_FORWARDED_FOR);
                }
            }
            // Moved into X-Forwarded-Host unless Forwarded needs it too.
            let forwarded_host = if self.forwarded {
                original_host.clone()
            } else {
                original_host.take()
            };
            match forwarded_host {
                Some(host) => headers.insert(X_FORWARDED_HOST, host),
                None => headers.remove(X_FORWARDED_HOST),
            };
            headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
        } else {
            // Not managed here: what the client sent is not vouched for,
            // and goes (as `Forwarded` does when off).
            headers.remove(&X_FORWARDED_FOR);
            headers.remove(X_FORWARDED_HOST);
            headers.remove(X_FORWARDED_PROTO);
        }
        // Forwarded follows X-Forwarded-For's trust rule: what the client
        // sent is kept only when this hop's element extends it truthfully.
        if !self.forwarded || client.is_none() {
            // Go's ReverseProxy removes it too, with Rewrite (Go 1.20+).
            headers.remove(FORWARDED);
        }
        if self.forwarded {
            keep_trusted(headers, &FORWARDED, self.forwarded_for);
            append_forwarded(headers, client, original_host.as_ref(), proto);
        }

        let mut parts = http::uri::Parts::default();
        parts.authority = Some(backend.authority().clone());
        if connect {
            // Authority form: the tunnel goes to the picked backend, never
            // to the address the client named.
            *req.uri_mut() = Uri::from_parts(parts).map_err(|_| Error::InvalidBackendUri {
                uri: backend.uri().to_string(),
                reason: "its authority cannot be a CONNECT target",
            })?;
            return Ok(());
        }
        parts.scheme = Some(backend.scheme().clone());
        parts.path_and_query = Some(if asterisk {
            // `OPTIONS *` asks about the server, not a resource: a prefix
            // would turn it into a question about `/prefix/*`.
            PathAndQuery::from_static("*")
        } else {
            join_path_and_query(&backend, original.path_and_query)?
        });
        *req.uri_mut() = Uri::from_parts(parts).map_err(|_| Error::InvalidBackendUri {
            uri: backend.uri().to_string(),
            reason: "it cannot be combined with the request URI",
        })?;
        Ok(())
    }
}

/// Whether `s` is `host[:port]` (RFC 9112 §3.2, RFC 3986 §3.2.2): a
/// bracketed IPv6 literal or a name of letters, digits, `-`, `.`, `_` and
/// `~`, then at most one `:` and 1 to 5 digits. No commas, no userinfo,
/// no path, no percent-escapes, no second port.
fn is_host_and_port(s: &[u8]) -> bool {
    let (host, rest) = if let [b'[', tail @ ..] = s {
        let Some(end) = tail.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = &tail[..end];
        let ipv6 = |b: &u8| b.is_ascii_hexdigit() || matches!(b, b':' | b'.');
        if !literal.iter().all(ipv6) {
            return false;
        }
        (literal, &tail[end + 1..])
    } else {
        let end = s.iter().position(|&b| b == b':').unwrap_or(s.len());
        let name = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~');
        if !s[..end].iter().all(name) {
            return false;
        }
        (&s[..end], &s[end..])
    };
    !host.is_empty()
        && match rest {
            [] => true,
            [b':', port @ ..] => {
                (1..=5).contains(&port.len()) && port.iter().all(u8::is_ascii_digit)
            }
            _ => false,
        }
}

/// Keeps the entries of a comma-separated forwarding header that `mode`
/// trusts: none, the right-most `n`, or all.
fn keep_trusted(headers: &mut HeaderMap, name: &HeaderName, mode: ForwardedFor) {
    let n = match mode {
        ForwardedFor::Append => return,
        ForwardedFor::Overwrite | ForwardedFor::TrustedHops(0) => {
            headers.remove(name);
            return;
        }
        ForwardedFor::TrustedHops(n) => n,
    };
    if !headers.contains_key(name) {
        return;
    }
    let mut entries: Vec<&str> = Vec::new();
    for line in headers.get_all(name) {
        match line.to_str() {
            Ok(line) => entries.extend(split_list(line)),
            // An entry that is not text cannot be vouched for, nor can
            // anything left of it.
            Err(_) => entries.clear(),
        }
    }
    let kept = entries[entries.len().saturating_sub(n)..].join(", ");
    match HeaderValue::try_from(kept) {
        Ok(value) if !value.is_empty() => {
            headers.insert(name, value);
        }
        _ => {
            headers.remove(name);
        }
    }
}

/// The elements of a comma-separated list (RFC 9110 §5.6.1), trimmed, empty
/// ones skipped; a comma inside a quoted string (RFC 7239 allows them) does
/// not split.
fn split_list(line: &str) -> impl Iterator<Item = &str> {
    let mut quoted = false;
    let mut escaped = false;
    let mut start = 0;
    let mut elements = Vec::new();
    for (i, b) in line.bytes().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b',' if !quoted => {
                elements.push(&line[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    elements.push(&line[start..]);
    elements
        .into_iter()
        .map(str::trim)
        .filter(|e| !e.is_empty())
}

/// The longest path and query `http` accepts (its `MAX_LEN`, which it does
/// not export; a test checks the two agree).
const MAX_PATH_AND_QUERY_LEN: usize = u16::MAX as usize - 1;

/// An authority without its userinfo: `host[:port]` (RFC 9112 §3.2.2). As
/// in `http`'s own parsing, the userinfo ends at the last `@`.
fn host_and_port(authority: &Authority) -> &str {
    let s = authority.as_str();
    s.rsplit_once('@').map_or(s, |(_userinfo, host)| host)
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
    if !has_prefix && backend.query().is_none_or(str::is_empty) {
        return Ok(requested);
    }
    let path = requested.path();
    let mut s = if has_prefix {
        // `..` must not climb out of the prefix (nginx normalizes the path
        // before proxy_pass; Go does not, and a prefix there is no boundary).
        let resolved = remove_dot_segments(path);
        // A dot segment left between encoded slashes or backslashes, or
        // before `;` parameters, would climb out on a backend that decodes
        // `%2F`, reads `\` as `/` or drops parameters before resolving dots;
        // it is refused rather than guessed at.
        if has_hidden_dot_segment(&resolved) {
            return Err(Error::BadRequest {
                reason: "the request path has a `.` or `..` segment that a backend could \
                         resolve out of its prefix (behind an encoded slash or a backslash, \
                         or before `;` parameters)"
                    .into(),
            });
        }
        join_paths(prefix, &resolved)
    } else {
        path.to_owned()
    };
    let target_query = backend.query().filter(|q| !q.is_empty());
    match (target_query, requested.query()) {
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
    // The backend's prefix and query can push a path and query that was
    // short enough past `http`'s limit. That is the request's doing, not
    // the backend's: 414, not a failure of the backend.
    if s.len() > MAX_PATH_AND_QUERY_LEN {
        return Err(Error::UriTooLong {
            len: s.len(),
            max: MAX_PATH_AND_QUERY_LEN,
        });
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

/// `path` with its `.` and `..` segments resolved as RFC 3986 §5.2.4 does
/// (`%2e` counts as `.`), never climbing above the root.
fn remove_dot_segments(path: &str) -> Cow<'_, str> {
    if !path.split('/').any(|seg| dots(seg.as_bytes()) > 0) {
        return Cow::Borrowed(path);
    }
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    for (i, seg) in segments.iter().enumerate() {
        match dots(seg.as_bytes()) {
            0 => out.push(seg),
            n => {
                if n == 2 {
                    out.pop();
                }
                if i == last {
                    out.push("");
                }
            }
        }
    }
    Cow::Owned(format!("/{}", out.join("/")))
}

/// 1 for a `.` segment, 2 for `..`, 0 for any other (`%2e`, in any case,
/// counts as `.`).
fn dots(segment: &[u8]) -> usize {
    let mut n = 0;
    let mut rest = segment;
    while n <= 2 {
        rest = match rest {
            [] => return n,
            [b'.', tail @ ..] => tail,
            [b'%', b'2', e, tail @ ..] if e.eq_ignore_ascii_case(&b'e') => tail,
            _ => return 0,
        };
        n += 1;
    }
    0
}

/// Whether a segment of `path` delimited by `/`, `\`, `%2F` or `%5C` (in
/// any case) is `.` or `..`, alone or before `;` path parameters (`..;x`,
/// which Tomcat and other servlet containers read as `..`). After
/// [`remove_dot_segments`] only segments behind an encoded slash or a
/// backslash, or carrying parameters, can be.
fn has_hidden_dot_segment(path: &str) -> bool {
    let bytes = path.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i <= bytes.len() {
        let delimiter = match &bytes[i..] {
            [] | [b'/' | b'\\', ..] => 1,
            [b'%', b'2', f, ..] if f.eq_ignore_ascii_case(&b'f') => 3,
            [b'%', b'5', c, ..] if c.eq_ignore_ascii_case(&b'c') => 3,
            _ => {
                i += 1;
                continue;
            }
        };
        let segment = &bytes[start..i];
        let before_parameters = segment.split(|&b| b == b';').next().unwrap_or_default();
        if dots(before_parameters) > 0 {
            return true;
        }
        i += delimiter;
        start = i;
    }
    false
}

/// `a` and `b` joined with exactly one slash between them.
fn join_paths(a: &str, b: &str) -> String {
    match (a.ends_with('/'), b.starts_with('/')) {
        (true, true) => [a, &b[1..]].concat(),
        (false, false) => [a, "/", b].concat(),
        _ => [a, b].concat(),
    }
}

/// Sets `X-Forwarded-For` to the entries `mode` trusts of what the client
/// sent, then `ip`, folded into one line (`a, b, ip`) as Go's
/// `ReverseProxy` does.
fn set_forwarded_for(headers: &mut HeaderMap, ip: IpAddr, mode: ForwardedFor) {
    let value = client_address_value(ip);
    match headers.entry(&X_FORWARDED_FOR) {
        // The usual case (a first hop): the address alone, in one look-up.
        http::header::Entry::Vacant(entry) => {
            entry.insert(value);
        }
        // Nothing the client sent is kept (the default): removed first, so
        // that the new field comes last, where it always has.
        http::header::Entry::Occupied(sent)
            if matches!(mode, ForwardedFor::Overwrite | ForwardedFor::TrustedHops(0)) =>
        {
            sent.remove_entry();
            headers.insert(&X_FORWARDED_FOR, value);
        }
        http::header::Entry::Occupied(_) => {
            keep_trusted(headers, &X_FORWARDED_FOR, mode);
            append_to_list(headers, X_FORWARDED_FOR, value.to_str().unwrap_or_default());
        }
    }
}

/// `ip` as a field value. The last one made on this thread is kept and
/// shared (a count on its bytes, no copy): the requests of one connection,
/// and of one client, come one after another.
fn client_address_value(ip: IpAddr) -> HeaderValue {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(IpAddr, HeaderValue)>> =
            const { std::cell::RefCell::new(None) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if let Some((last_ip, value)) = &*last {
            if *last_ip == ip {
                return value.clone();
            }
        }
        let value = format_client_address(ip);
        *last = Some((ip, value.clone()));
        value
    })
}

/// `ip` as a field value, formatted.
fn format_client_address(ip: IpAddr) -> HeaderValue {
    // The address is formatted on the stack first so that the value is
    // allocated once, at its exact size.
    let mut ip_text = [0u8; 48];
    let ip_len = match ip {
        // Every request of an IPv4 client: digits by hand, not through
        // `fmt` (a fifth of the director's cost when it was).
        IpAddr::V4(v4) => {
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    ip_text[len] = b'.';
                    len += 1;
                }
                if octet >= 100 {
                    ip_text[len] = b'0' + octet / 100;
                    len += 1;
                }
                if octet >= 10 {
                    ip_text[len] = b'0' + octet / 10 % 10;
                    len += 1;
                }
                ip_text[len] = b'0' + octet % 10;
                len += 1;
            }
            len
        }
        IpAddr::V6(_) => {
            let mut cursor = std::io::Cursor::new(&mut ip_text[..]);
            let _ = std::io::Write::write_fmt(&mut cursor, format_args!("{ip}"));
            cursor.position() as usize
        }
    };
    // Digits, dots and colons: always a valid value.
    HeaderValue::from_bytes(&ip_text[..ip_len]).unwrap_or(HeaderValue::from_static(""))
}

/// Appends `last` to a comma-separated list header, folding every earlier
/// line into one (`a, b, last`) in order: one allocation, of exact size,
/// which the header value takes over without copying.
fn append_to_list(headers: &mut HeaderMap, name: HeaderName, last: &str) {
    let previous = headers.get_all(&name);
    if previous.iter().next().is_none() {
        // Nothing to fold (the usual case: overwritten, or a first hop).
        if let Ok(value) = HeaderValue::from_str(last) {
            headers.insert(name, value);
        }
        return;
    }
    let len: usize = previous.iter().map(|v| v.len() + 2).sum::<usize>() + last.len();
    let mut line = String::with_capacity(len);
    for value in previous {
        if let Ok(s) = value.to_str() {
            line.push_str(s);
            line.push_str(", ");
        }
    }
    line.push_str(last);
    if let Ok(value) = HeaderValue::try_from(line) {
        headers.insert(name, value);
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
    // Earlier elements, from every Forwarded line, stay in order.
    append_to_list(headers, FORWARDED, &element);
}

fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Removes the hop-by-hop headers of RFC 9110 §7.6.1 from a request or
/// response: `Connection` and every header it names, `Keep-Alive`,
/// `Proxy-Connection`, `Proxy-Authenticate`, `Proxy-Authorization`, `TE`,
/// `Transfer-Encoding`, `Upgrade` and `HTTP2-Settings` (RFC 7540 §3.2.1:
/// it exists only for the h2c upgrade, which RFC 9113 deprecates).
///
/// `Trailer` is not among them (RFC 9110 §7.6.1 does not list it; it
/// announces end-to-end trailer fields) and stays unless `Connection` names
/// it: hyper's HTTP/1.1 sends only the trailer fields a `Trailer` header
/// announces, so removing it would drop them (a gRPC status, for one).
///
/// Two exceptions keep a proxy working: a WebSocket upgrade (a
/// `Connection` naming `upgrade` and an `Upgrade` naming `websocket`, in
/// any case) keeps `Connection: upgrade` and `Upgrade: websocket`, and a
/// `TE` naming `trailers` leaves `TE: trailers`. No other upgrade is kept:
/// an `h2c` one would open an HTTP/2 connection to the backend that the
/// proxy cannot see into (see [`ProxyDirector`](crate::layer::ProxyDirector#upgrades)).
///
/// A `Content-Length` beside a `Transfer-Encoding` goes too: the message
/// was framed by its chunks, and RFC 9112 §6.3 has a proxy remove the
/// length before forwarding (kept, it would frame the re-chunked body on
/// the next hop: cut short, or never ending). [`DirectorLayer`](crate::layer::DirectorLayer)
/// also refuses any transfer coding but `chunked` before it removes the
/// header: a request's with `501`
/// ([`Error::NotImplemented`]), a backend's
/// response's as a failed answer (`502`, as nginx answers it; retried like
/// one, and not counted against the backend, where nginx counts it and does
/// not retry it by default).
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
///
/// let mut h2c = HeaderMap::new();
/// h2c.insert("connection", "Upgrade, HTTP2-Settings".parse().unwrap());
/// h2c.insert("upgrade", "h2c".parse().unwrap());
/// h2c.insert("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA".parse().unwrap());
/// remove_hop_by_hop_headers(&mut h2c);
/// assert!(h2c.is_empty());
/// ```
pub fn remove_hop_by_hop_headers(headers: &mut HeaderMap) {
    let _ = remove_hop_by_hop_checked(headers, |_| Ok(()));
}

/// [`remove_hop_by_hop_headers`], with `check` run on a message that has a
/// `Transfer-Encoding`, before anything is removed (its codings are lost
/// with the header): an `Err` leaves the headers as they were. The one
/// pass over the names finds `Transfer-Encoding` for free, so a message
/// without one costs no look-up.
pub(crate) fn remove_hop_by_hop_checked(
    headers: &mut HeaderMap,
    check: impl FnOnce(&HeaderMap) -> Result<(), Error>,
) -> Result<(), Error> {
    remove_hop_by_hop_keeping(headers, check, true)
}

/// [`remove_hop_by_hop_checked`]; a WebSocket upgrade's `Connection` and
/// `Upgrade` are kept only if `websocket_allowed`.
fn remove_hop_by_hop_keeping(
    headers: &mut HeaderMap,
    check: impl FnOnce(&HeaderMap) -> Result<(), Error>,
    websocket_allowed: bool,
) -> Result<(), Error> {
    // One pass finds the hop-by-hop headers present (usually none, or just
    // Connection), so only those are removed: their places in
    // ALL_HOP_BY_HOP, in the order the map has them (nine bytes, not nine
    // names to set up and drop on every request and response).
    let mut order = [0u8; HOP_BY_HOP_NAMES];
    let mut count = 0;
    for name in headers.keys() {
        // `keys()` yields each name once, so `order` cannot overflow.
        if let Some(at) = hop_by_hop_index(name) {
            order[count] = at as u8;
            count += 1;
        }
    }
    if count == 0 {
        return Ok(());
    }
    let found = || {
        order[..count]
            .iter()
            .map(|&at| &ALL_HOP_BY_HOP[usize::from(at)])
    };
    let has = |name: &HeaderName| found().any(|known| known == name);
    // An `Upgrade` that may not stay goes first, as it always has (each
    // removal moves the last field into the gap: the order of what is left
    // depends on the order of removals).
    let upgrade_refused = !websocket_allowed && has(&UPGRADE);
    if upgrade_refused {
        headers.remove(UPGRADE);
    }
    let chunked = has(&TRANSFER_ENCODING);
    if chunked {
        check(headers)?;
    }
    // Only a WebSocket upgrade is kept (h2c smuggling: see ProxyDirector).
    let websocket = websocket_allowed
        && has(&CONNECTION)
        && has(&UPGRADE)
        && contains_token(headers, &CONNECTION, "upgrade")
        && contains_token(headers, &UPGRADE, "websocket");
    let keep_trailers = has(&TE) && contains_token(headers, &TE, "trailers");

    // Headers named by Connection. A single Connection value (the usual
    // case) is moved out of the map and needs no allocation.
    let listed = |value: &HeaderValue, headers: &mut HeaderMap| {
        // The usual value (nginx and most servers answer with it),
        // `keep-alive` alone, names only a header that is removed below
        // anyway: not parsing it saves ~560 instructions a response.
        // `close` is parsed: a header named `Close` goes, as in Go's
        // httputil.
        if value.as_bytes().eq_ignore_ascii_case(b"keep-alive") {
            return;
        }
        if let Ok(s) = value.to_str() {
            // Host is never a connection option (RFC 9110 §7.6.1): a
            // client cannot make the proxy drop it.
            for token in s.split(',').map(str::trim) {
                // A hop-by-hop name (`keep-alive`, the usual token) is
                // removed below if present: no look-up for it here.
                if !token.is_empty()
                    && !token.eq_ignore_ascii_case("host")
                    && !names_hop_by_hop(token)
                {
                    headers.remove(token);
                }
            }
        }
    };
    // One look-up finds the Connection lines and takes them out.
    if !has(&CONNECTION) {
        // Nothing listed.
    } else if let Entry::Occupied(entry) = headers.entry(CONNECTION) {
        if entry.iter().nth(1).is_none() {
            let value = entry.remove();
            listed(&value, headers);
        } else {
            let values: Vec<HeaderValue> = entry.remove_entry_mult().1.collect();
            for value in &values {
                listed(value, headers);
            }
        }
    }
    // RFC 9112 §6.3: Transfer-Encoding overrides Content-Length, and an
    // intermediary that forwards the message must remove the received
    // Content-Length first; kept, it would frame the re-chunked body on
    // the next hop (a short one cut, a long one never ending).
    if chunked {
        headers.remove(CONTENT_LENGTH);
    }
    // (`Connection` is gone already, and a refused `Upgrade`.)
    for name in found().filter(|name| *name != CONNECTION && !(upgrade_refused && *name == UPGRADE))
    {
        headers.remove(name);
    }

    if websocket {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    }
    if keep_trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
    Ok(())
}

/// Why a message's `Transfer-Encoding` cannot be forwarded (see
/// [`only_chunked`]).
struct Codings {
    /// The codings as received, for the error message.
    received: String,
    /// Whether one of them is not `chunked` (else `chunked` came twice).
    other: bool,
}

/// Whether a message's `Transfer-Encoding` lines name exactly one coding,
/// `chunked` (or there are none): the only framing a proxy can forward
/// without changing the body, since the coding is removed with the other
/// hop-by-hop headers and the body re-framed on the next hop.
fn only_chunked(headers: &HeaderMap) -> Result<(), Codings> {
    let mut lines = headers.get_all(TRANSFER_ENCODING).iter();
    if let (Some(line), None) = (lines.next(), lines.next()) {
        // The usual case, without splitting.
        if line.as_bytes().eq_ignore_ascii_case(b"chunked") {
            return Ok(());
        }
    }
    let mut chunked = 0;
    let mut other = false;
    for line in headers.get_all(TRANSFER_ENCODING) {
        let Ok(text) = line.to_str() else {
            other = true;
            continue;
        };
        for coding in split_list(text) {
            if coding.eq_ignore_ascii_case("chunked") {
                chunked += 1;
            } else {
                other = true;
            }
        }
    }
    if other || chunked > 1 {
        let received: Vec<&str> = headers
            .get_all(TRANSFER_ENCODING)
            .iter()
            .map(|v| v.to_str().unwrap_or("(not text)"))
            .collect();
        return Err(Codings {
            received: received.join(", "),
            other,
        });
    }
    Ok(())
}

/// RFC 9112 §6.1 and §7 for a request: `chunked` alone is forwarded; a
/// coding the proxy does not decode (`gzip, chunked`) is `501`, as nginx
/// answers, and `chunked` applied twice is `400`.
pub(crate) fn check_request_codings(headers: &HeaderMap) -> Result<(), Error> {
    only_chunked(headers).map_err(
        |Codings {
             received: codings,
             other,
         }| {
            if other {
                Error::NotImplemented {
                    reason: format!(
                    "the request's Transfer-Encoding `{codings}` is not supported, only chunked is"
                ),
                }
            } else {
                Error::BadRequest {
                    reason: format!(
                    "the request's Transfer-Encoding `{codings}` applies chunked more than once"
                ),
                }
            }
        },
    )
}

/// The same rule for a backend's response: anything but `chunked` alone
/// is an invalid response (nginx: "upstream sent unknown
/// Transfer-Encoding", 502), since forwarding it would hand the client a
/// body still in a coding nothing announces.
pub(crate) fn check_response_codings(headers: &HeaderMap) -> Result<(), Error> {
    only_chunked(headers).map_err(
        |Codings {
             received: codings, ..
         }| Error::Upstream {
            backend: String::new(),
            source: format!(
            "the backend answered with Transfer-Encoding `{codings}`; only chunked is forwarded"
        )
            .into(),
        },
    )
}

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");
/// How many names [`ALL_HOP_BY_HOP`] holds.
const HOP_BY_HOP_NAMES: usize = 9;

/// The hop-by-hop names: RFC 9110 §7.6.1's, the obsolete Keep-Alive and
/// Proxy-Connection, and HTTP2-Settings. Not `Trailer`: it is end-to-end.
/// (Go's list has it because net/http announces trailers itself, from
/// `Request.Trailer`; hyper does not.) A `static`, so a look-up does not
/// build the list.
static ALL_HOP_BY_HOP: [HeaderName; HOP_BY_HOP_NAMES] = [
    CONNECTION,
    PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION,
    TE,
    TRANSFER_ENCODING,
    UPGRADE,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    HTTP2_SETTINGS,
];

/// Where `name` is in [`ALL_HOP_BY_HOP`]. Written out: a standard name is
/// told by its tag, the other three by their text, which is only looked at
/// once no standard one matched.
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    let at = if *name == CONNECTION {
        0
    } else if *name == PROXY_AUTHENTICATE {
        1
    } else if *name == PROXY_AUTHORIZATION {
        2
    } else if *name == TE {
        3
    } else if *name == TRANSFER_ENCODING {
        4
    } else if *name == UPGRADE {
        5
    } else {
        match name.as_str() {
            "keep-alive" => 6,
            "proxy-connection" => 7,
            "http2-settings" => 8,
            _ => return None,
        }
    };
    Some(at)
}

/// Whether a `Connection` option names a header of [`ALL_HOP_BY_HOP`].
fn names_hop_by_hop(token: &str) -> bool {
    ALL_HOP_BY_HOP
        .iter()
        .any(|name| token.eq_ignore_ascii_case(name.as_str()))
}

/// A modify-response hook that removes hop-by-hop headers from a backend's
/// response before it goes to the client (see
/// [`remove_hop_by_hop_headers`]); a `101 Switching Protocols` keeps its
/// upgrade headers if it switches to WebSocket.
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
    let _ = strip_hop_by_hop_response_checked(&mut res, |_| Ok(()));
    Ok(res)
}

/// [`strip_hop_by_hop_response`], with `check` run as in
/// [`remove_hop_by_hop_checked`].
pub(crate) fn strip_hop_by_hop_response_checked<B>(
    res: &mut Response<B>,
    check: impl FnOnce(&HeaderMap) -> Result<(), Error>,
) -> Result<(), Error> {
    // Only an upgrade answer may keep its `Upgrade` (found, and removed
    // with the rest, by the one pass over the names).
    let upgraded = res.status() == StatusCode::SWITCHING_PROTOCOLS;
    remove_hop_by_hop_keeping(res.headers_mut(), check, upgraded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_option_names_a_hop_by_hop_header_exactly_when_the_header_is_one() {
        for token in [
            "Keep-Alive",
            "keep-alive",
            "CONNECTION",
            "te",
            "Transfer-Encoding",
            "upgrade",
            "proxy-connection",
            "Proxy-Authenticate",
            "proxy-authorization",
            "HTTP2-Settings",
            "close",
            "x-conn-a",
            "trailer",
            "keep-alive2",
            "host",
        ] {
            let name = HeaderName::from_bytes(token.to_ascii_lowercase().as_bytes()).unwrap();
            assert_eq!(
                names_hop_by_hop(token),
                hop_by_hop_index(&name).is_some(),
                "{token}"
            );
        }
    }

    #[test]
    fn each_hop_by_hop_name_is_found_at_its_place_in_the_list() {
        for (at, name) in ALL_HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name), Some(at), "{name}");
            let parsed = HeaderName::from_bytes(name.as_str().as_bytes()).unwrap();
            assert_eq!(hop_by_hop_index(&parsed), Some(at), "{name}");
        }
        for other in [
            "host",
            "trailer",
            "keep-alive2",
            "x-connection",
            "content-length",
        ] {
            let name = HeaderName::from_bytes(other.as_bytes()).unwrap();
            assert_eq!(hop_by_hop_index(&name), None, "{other}");
        }
    }

    /// `Connection: keep-alive` alone skips the option parsing; every other
    /// value still removes what it names, `close` included.
    #[test]
    fn a_lone_keep_alive_option_is_skipped_and_nothing_else_is() {
        let strip = |connection: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(CONNECTION, connection.parse().unwrap());
            for name in ["keep-alive", "close", "x-a", "x-b", "accept"] {
                headers.insert(name, "1".parse().unwrap());
            }
            remove_hop_by_hop_headers(&mut headers);
            let mut left: Vec<&str> = headers.keys().map(|n| n.as_str()).collect();
            left.sort_unstable();
            left.join(" ")
        };
        assert_eq!(strip("keep-alive"), "accept close x-a x-b");
        assert_eq!(strip("Keep-Alive"), "accept close x-a x-b");
        assert_eq!(strip("close"), "accept x-a x-b");
        assert_eq!(strip("keep-alive, x-a"), "accept close x-b");
        assert_eq!(strip("keep-alive,X-B"), "accept close x-a");
        assert_eq!(strip(" keep-alive"), "accept close x-a x-b");
    }
}
