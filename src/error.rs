//! The crate's one error type.

use std::fmt;

/// A boxed error from an inner service or a user hook.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in tower-lb.
///
/// Each message says what to change. The enum is `#[non_exhaustive]`: match
/// the variants you handle and keep a fallback arm.
///
/// ```
/// use tower_lb::{Backend, Error};
///
/// let err = Backend::new("not a uri").unwrap_err();
/// assert!(matches!(err, Error::InvalidBackendUri { .. }));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The backend set is empty.
    #[error("no backends are configured: add at least one backend before sending requests")]
    NoBackends,

    /// Every configured backend is marked down.
    #[error("all {count} backends are marked down: mark one up or add a healthy backend")]
    AllBackendsDown {
        /// How many backends are configured (all of them down).
        count: usize,
    },

    /// A backend URI could not be used.
    #[error("invalid backend URI `{uri}`: {reason}")]
    InvalidBackendUri {
        /// The input as given.
        uri: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A backend id is empty or too long.
    #[error("invalid backend id `{id}`: ids must be 1 to {max} bytes long (give a long host a short id with `Backend::with_id`)")]
    InvalidBackendId {
        /// The id as given.
        id: String,
        /// The longest id accepted.
        max: usize,
    },

    /// A weight is larger than [`MAX_WEIGHT`](crate::MAX_WEIGHT). (Weight 0
    /// is valid: it drains the backend.)
    #[error(
        "invalid weight {weight} for backend `{id}`: weights must be between 0 (drain) and {max}"
    )]
    InvalidWeight {
        /// The backend's id.
        id: String,
        /// The weight as given.
        weight: u64,
        /// The largest weight accepted.
        max: u32,
    },

    /// Two backends share one id.
    #[error("duplicate backend id `{id}`: give each backend a distinct id (`Backend::with_id`)")]
    DuplicateId {
        /// The id given twice.
        id: String,
    },

    /// No backend has this id.
    #[error("unknown backend id `{id}`: a backend's id is its `host:port` unless `Backend::with_id` named it")]
    UnknownBackend {
        /// The id asked for.
        id: String,
    },

    /// A strategy name is not one of the known ones.
    #[error("unknown strategy `{name}`: expected one of {}", crate::Strategy::NAMES.join(", "))]
    UnknownStrategy {
        /// The name as given.
        name: String,
    },

    /// A configuration value is out of range or malformed: a strategy's,
    /// a sticky cookie's (secret, name, path, domain, max-age) or a key
    /// extractor's (header or query name).
    #[error("invalid configuration: {reason}")]
    InvalidConfig {
        /// What is out of range and what is accepted.
        reason: String,
    },

    /// The consistent-hash ring would hold too many points.
    #[error(
        "the hash ring would hold {points} points (more than {max}): lower the virtual nodes per weight or the weights, or use maglev, whose size does not grow with the weights"
    )]
    RingTooLarge {
        /// Points the configuration asks for.
        points: u64,
        /// The most points a ring may hold.
        max: u64,
    },

    /// The inner (upstream) service failed; a proxy answers 502 Bad Gateway.
    #[error("upstream request{} failed: {source}", to_backend(backend))]
    Upstream {
        /// The id of the backend the request went to, or empty if none was picked.
        backend: String,
        /// The inner service's error.
        #[source]
        source: BoxError,
    },

    /// A director or modify-response hook failed; a proxy answers 502 Bad Gateway.
    #[error("{stage} hook failed: {source}")]
    Hook {
        /// Which hook: `director` or `modify_response`.
        stage: HookStage,
        /// The hook's error.
        #[source]
        source: BoxError,
    },

    /// A balancer failed the conformance suite of the `testing` feature; the
    /// [`Failure`](crate::testing::Failure) describes the smallest
    /// counter-example in words.
    #[cfg(feature = "testing")]
    #[error("{0}")]
    ConformanceFailed(Box<crate::testing::Failure>),

    /// The request lacks what a layer needs (for example the picked backend).
    #[error("the request has no {what}: {hint}")]
    MissingExtension {
        /// What is missing.
        what: &'static str,
        /// How to fix the stack.
        hint: &'static str,
    },

    /// The client's request cannot be forwarded as it is (for example it has
    /// more than one `Host` line); a proxy answers `400 Bad Request`. The
    /// request caused it, so it is not counted against the backend.
    #[error("bad request: {reason}")]
    BadRequest {
        /// What is wrong with the request.
        reason: String,
    },

    /// The client stopped sending its request body: nothing came for the
    /// body timeout (nginx's `client_body_timeout`); a proxy answers `408
    /// Request Timeout`, as nginx does. The request caused it, so it is not
    /// counted against the backend, nor retried.
    #[error("request timeout: {reason}")]
    RequestTimeout {
        /// What the client stopped sending.
        reason: String,
    },

    /// The request uses something the proxy does not implement: a transfer
    /// coding other than `chunked` (`Transfer-Encoding: gzip, chunked`),
    /// which it could only forward by removing the coding and so changing
    /// the body; a proxy answers `501 Not Implemented`, as nginx does (RFC
    /// 9112 §6.1). The request caused it, so it is not counted against the
    /// backend.
    #[error("not implemented: {reason}")]
    NotImplemented {
        /// What the request uses.
        reason: String,
    },

    /// The request target (path and query), rewritten for the backend, would
    /// be longer than `http` allows; a proxy answers `414 URI Too Long`. The
    /// request caused it, so it is not counted against the backend.
    #[error("the request target would be {len} bytes long once rewritten, more than the {max} allowed: shorten its path or query")]
    UriTooLong {
        /// The length of the rewritten path and query, in bytes.
        len: usize,
        /// The longest path and query accepted, in bytes.
        max: usize,
    },

    /// The request's method is not forwarded (`CONNECT` and `TRACE`, unless
    /// the director is told to allow them); a proxy answers `405 Method Not
    /// Allowed`. The request caused it, so it is not counted against the
    /// backend.
    #[error("method {method} is not forwarded: allow it on the director (ProxyDirector::allow_connect, allow_trace) if the backends expect it")]
    MethodNotAllowed {
        /// The refused method.
        method: http::Method,
    },

    /// A sticky-cookie secret is refused: too short, or plainly not random
    /// (a printable phrase, a few repeated values); the message says how to
    /// make a good one.
    #[error("sticky-cookie secret refused: {reason}")]
    InvalidSecret {
        /// What is wrong with it, and how to make a good one.
        reason: String,
    },

    /// A backend did not answer in time: the response head did not arrive
    /// within a [`ResponseTimeout`](crate::layer::ResponseTimeout), or the
    /// inner client reported a timeout (such as hyper-util's connect
    /// timeout, an `io::ErrorKind::TimedOut`); a proxy answers `504 Gateway
    /// Timeout`. It counts against the backend.
    #[error("timed out waiting for {waited_for}{}", from_backend(backend))]
    Timeout {
        /// The id of the backend the request went to, or empty if unknown.
        backend: String,
        /// What did not arrive in time: `the response head`, `the backend`.
        waited_for: &'static str,
        /// The client's own timeout error, when it reported one.
        #[source]
        source: Option<BoxError>,
    },

    /// An attempt failed in a way `NextUpstream` (feature `http-body`)
    /// would retry on the next backend, but retrying was not safe (the
    /// request had reached the backend and is not idempotent, or its body
    /// was streamed rather than buffered, or it was a protocol upgrade). The
    /// status is the failure's own ([`Error::status_code`] of `source`).
    #[error("not retried on another backend because {reason}: {source}")]
    NotRetried {
        /// Why retrying was not safe, and what to change if it should be.
        reason: &'static str,
        /// The attempt's failure.
        #[source]
        source: Box<Error>,
    },

    /// A client connection served by `proxy::serve_connection` (feature
    /// `proxy`) ended with an error rather than a close between requests:
    /// the client went away mid-request or sent a malformed head, one of
    /// the connection's timeouts ran out (the header read timeout, how most
    /// idle keep-alive connections end, or the send timeout), or a response
    /// body failed on its way out. Nothing more is answered on the
    /// connection; log it at a low level, if at all.
    #[error("client connection ended: {reason}")]
    ClientConnection {
        /// What ended it.
        reason: &'static str,
        /// Whether a timeout ended it (no request head in time, or a write
        /// the client took nothing of in time).
        timed_out: bool,
        /// The underlying error: hyper's, an I/O error, or the response
        /// body's.
        #[source]
        source: Option<BoxError>,
    },

    /// Every backend that takes new picks is ejected by passive health or
    /// failing its active checks; a proxy answers `503 Service
    /// Unavailable`. See [`health`](crate::health) for Envoy's panic mode
    /// instead.
    #[error("all {count} backends are ejected or failing their health checks: wait for a probe to succeed, or allow WhenAllEjected::UseAll")]
    AllBackendsEjected {
        /// How many backends are configured.
        count: usize,
    },
}

/// Which user hook failed, in [`Error::Hook`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HookStage {
    /// The director, which rewrites the outgoing request.
    Director,
    /// The modify-response hook.
    ModifyResponse,
}

impl fmt::Display for HookStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HookStage::Director => "director",
            HookStage::ModifyResponse => "modify_response",
        })
    }
}

fn from_backend(backend: &str) -> String {
    if backend.is_empty() {
        String::new()
    } else {
        format!(" from `{backend}`")
    }
}

fn to_backend(backend: &str) -> String {
    if backend.is_empty() {
        String::new()
    } else {
        format!(" to `{backend}`")
    }
}

impl Error {
    /// The HTTP status a proxy should answer with for this error.
    ///
    /// `503 Service Unavailable` when no backend can take the request,
    /// `502 Bad Gateway` when the upstream or a hook failed, `504 Gateway
    /// Timeout` when a backend did not answer in time, `400 Bad
    /// Request` and `414 URI Too Long` when the client's request cannot be
    /// forwarded, `405 Method Not Allowed` for a method the director does
    /// not forward, `408 Request Timeout` for a request body that stopped
    /// arriving, `501 Not Implemented` for a transfer coding it does not
    /// forward, and `500 Internal Server Error` for configuration
    /// mistakes.
    ///
    /// ```
    /// use tower_lb::Error;
    ///
    /// assert_eq!(Error::NoBackends.status_code(), http::StatusCode::SERVICE_UNAVAILABLE);
    /// ```
    pub fn status_code(&self) -> http::StatusCode {
        use http::StatusCode;
        match self {
            Error::NoBackends | Error::AllBackendsDown { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Error::AllBackendsEjected { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Error::Upstream { .. } | Error::Hook { .. } => StatusCode::BAD_GATEWAY,
            Error::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Error::NotImplemented { .. } => StatusCode::NOT_IMPLEMENTED,
            Error::RequestTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Error::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            Error::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Error::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Error::NotRetried { source, .. } => source.status_code(),
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A short text for this error that is safe to show a client: what
    /// happened in general terms, never a backend's id or address, a hook's
    /// message or an upstream error's detail (log the error's `Display`
    /// for those).
    ///
    /// ```
    /// use tower_lb::Error;
    ///
    /// let err = Error::Upstream { backend: "10.0.0.7:8080".into(), source: "connection refused".into() };
    /// assert_eq!(err.client_message(), "502 Bad Gateway: the backend failed to answer\n");
    /// assert!(!err.client_message().contains("10.0.0.7"));
    /// ```
    pub fn client_message(&self) -> &'static str {
        use http::StatusCode;
        match self.status_code() {
            StatusCode::SERVICE_UNAVAILABLE => "503 Service Unavailable: no backend is available\n",
            StatusCode::BAD_GATEWAY => "502 Bad Gateway: the backend failed to answer\n",
            StatusCode::BAD_REQUEST => "400 Bad Request: the request cannot be forwarded\n",
            StatusCode::URI_TOO_LONG => "414 URI Too Long: shorten the path or query\n",
            StatusCode::METHOD_NOT_ALLOWED => "405 Method Not Allowed\n",
            StatusCode::REQUEST_TIMEOUT => {
                "408 Request Timeout: the request body stopped arriving\n"
            }
            StatusCode::NOT_IMPLEMENTED => {
                "501 Not Implemented: the request's transfer coding is not supported\n"
            }
            _ => "500 Internal Server Error: the proxy is misconfigured\n",
        }
    }

    /// The response a proxy answers this error with: its
    /// [`status_code`](Self::status_code), `Content-Type: text/plain` and
    /// the [`client_message`](Self::client_message) as the body (a `405`
    /// also gets the `Allow` header RFC 9110 §15.5.6 requires). Nothing in
    /// it names a backend.
    ///
    /// The body is any type made from a `&'static str`: `String`,
    /// `Full<Bytes>`, axum's `Body`. Runtime-free: use it from a hyper
    /// service, or from axum's `HandleErrorLayer`:
    ///
    /// ```
    /// use http::StatusCode;
    /// use tower_lb::Error;
    ///
    /// let res = Error::AllBackendsDown { count: 2 }.to_response::<String>();
    /// assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    /// assert_eq!(res.headers()["content-type"], "text/plain; charset=utf-8");
    /// assert_eq!(res.body(), "503 Service Unavailable: no backend is available\n");
    /// ```
    pub fn to_response<B: From<&'static str>>(&self) -> http::Response<B> {
        let mut res = http::Response::new(B::from(self.client_message()));
        *res.status_mut() = self.status_code();
        let headers = res.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if matches!(self, Error::MethodNotAllowed { .. }) {
            headers.insert(
                http::header::ALLOW,
                http::HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH"),
            );
        }
        res
    }
}
